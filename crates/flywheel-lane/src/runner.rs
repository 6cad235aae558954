//! How current the image's GitHub Actions runner is. GitHub stops queueing jobs to a runner
//! below its minimum version, and to one started with updates disabled (as an image's must be:
//! its store is read-only) 30 days after a newer release. The image records its runner's
//! version and release date as labels (images/gpu-runner/runner.json); `lane check` and the
//! canary's bootstrap step warn before either happens.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The image label with the runner's version (`2.338.0`).
pub const LABEL_VERSION: &str = "dev.flywheel.runner.version";
/// The image label with the runner release's date (`2026-10-06`), when the image knows it.
pub const LABEL_RELEASED: &str = "dev.flywheel.runner.released";
/// Warn at this age: GitHub's 30 days, less time to build, test and roll out a new image.
pub const DEFAULT_MAX_AGE_DAYS: u32 = 25;
/// The oldest runner GitHub accepted when this was written (docs/runner-image.md).
pub const DEFAULT_MIN_VERSION: RunnerVersion = RunnerVersion(2, 329, 0);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunnerError {
    #[error("runner version {0:?}: expected MAJOR.MINOR.PATCH, such as 2.338.0")]
    Version(String),
    #[error("runner release date {date:?}: expected YYYY-MM-DD ({why})")]
    Date { date: String, why: String },
}

/// A runner version, `MAJOR.MINOR.PATCH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunnerVersion(pub u32, pub u32, pub u32);

impl RunnerVersion {
    pub fn parse(text: &str) -> Result<Self, RunnerError> {
        let bad = || RunnerError::Version(text.to_string());
        // At most 9 digits: always a u32.
        let number = |s: &str| {
            (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
                .ok_or_else(bad)
        };
        match text.trim().trim_start_matches('v').split('.').collect::<Vec<_>>().as_slice() {
            [a, b, c] => Ok(RunnerVersion(number(a)?, number(b)?, number(c)?)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for RunnerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// When to warn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunnerPolicy {
    pub max_age_days: u32,
    pub min_version: RunnerVersion,
}

impl Default for RunnerPolicy {
    fn default() -> Self {
        RunnerPolicy { max_age_days: DEFAULT_MAX_AGE_DAYS, min_version: DEFAULT_MIN_VERSION }
    }
}

/// What the labels say of the runner, and the warnings for `policy` on `today`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    pub version: String,
    /// The release date, `YYYY-MM-DD`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_days: Option<i64>,
    pub warnings: Vec<String>,
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
pub fn days_of(date: &str) -> Result<i64, RunnerError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(date.trim(), &format)
        .map_err(|e| RunnerError::Date { date: date.to_string(), why: e.to_string() })?;
    // 2440588 is the Julian day number of 1970-01-01.
    Ok(i64::from(d.to_julian_day()) - 2_440_588)
}

/// Today, in days since 1970-01-01 (UTC).
pub fn today() -> i64 {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    secs.div_euclid(86_400)
}

/// Assesses a runner `version` released on `released` (if known) on day `today`.
pub fn assess(
    version: &str,
    released: Option<&str>,
    today: i64,
    policy: &RunnerPolicy,
) -> Result<Freshness, RunnerError> {
    let v = RunnerVersion::parse(version)?;
    let mut warnings = Vec::new();
    if v < policy.min_version {
        warnings.push(format!(
            "the runner is {v}, below the minimum {} (GitHub does not queue jobs to runners below its minimum): bump images/gpu-runner/runner.json (docs/runner-image.md) and rebuild the image",
            policy.min_version
        ));
    }
    let age_days = match released {
        Some(date) => {
            let age = today - days_of(date)?;
            if age > i64::from(policy.max_age_days) {
                warnings.push(format!(
                    "the runner {v} was released {age} days ago ({date}), more than {} days: GitHub stops queueing jobs to a runner that cannot update itself 30 days after a newer release; bump images/gpu-runner/runner.json (docs/runner-image.md) and rebuild the image",
                    policy.max_age_days
                ));
            }
            Some(age)
        }
        None => None,
    };
    Ok(Freshness { version: v.to_string(), released: released.map(str::to_string), age_days, warnings })
}

/// The runner as an image's labels describe it; `None` when they name no runner version.
pub fn from_labels(
    labels: &std::collections::BTreeMap<String, String>,
    today: i64,
    policy: &RunnerPolicy,
) -> Option<Result<Freshness, RunnerError>> {
    let version = labels.get(LABEL_VERSION)?;
    Some(assess(version, labels.get(LABEL_RELEASED).map(String::as_str), today, policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dates_count_days_from_the_epoch() {
        assert_eq!(days_of("1970-01-01"), Ok(0));
        assert_eq!(days_of("2026-10-06").unwrap() - days_of("2026-09-06").unwrap(), 30);
        assert!(days_of("2026-13-01").is_err());
        assert!(days_of("06/10/2026").is_err());
    }

    #[test]
    fn an_old_or_too_low_runner_is_warned_about_and_a_current_one_is_not() {
        let p = RunnerPolicy::default();
        let released = days_of("2026-10-06").unwrap();
        let fresh = assess("2.338.0", Some("2026-10-06"), released + 25, &p).unwrap();
        assert_eq!((fresh.age_days, fresh.warnings.len()), (Some(25), 0));
        let old = assess("2.338.0", Some("2026-10-06"), released + 26, &p).unwrap();
        assert_eq!(old.warnings.len(), 1);
        assert!(old.warnings[0].contains("26 days ago"), "{:?}", old.warnings);
        let low = assess("2.328.9", None, released, &p).unwrap();
        assert_eq!((low.age_days, low.warnings.len()), (None, 1));
        assert!(low.warnings[0].contains("below the minimum 2.329.0"));
        let strict = RunnerPolicy { max_age_days: 3, min_version: RunnerVersion(2, 339, 0) };
        assert_eq!(assess("2.338.0", Some("2026-10-06"), released + 4, &strict).unwrap().warnings.len(), 2);
    }

    #[test]
    fn bad_versions_and_dates_are_refused_with_what_was_expected() {
        let p = RunnerPolicy::default();
        for bad in ["", "2.338", "2.338.0.1", "2.x.0", "2.338.-1", "2.338.0 beta"] {
            let e = assess(bad, None, 0, &p).unwrap_err().to_string();
            assert!(e.contains("MAJOR.MINOR.PATCH"), "{bad:?}: {e}");
        }
        assert!(assess("2.338.0", Some("yesterday"), 0, &p).unwrap_err().to_string().contains("YYYY-MM-DD"));
    }

    proptest! {
        #[test]
        fn versions_order_as_their_numbers(a in (0u32..5, 0u32..400, 0u32..20), b in (0u32..5, 0u32..400, 0u32..20)) {
            let (x, y) = (RunnerVersion(a.0, a.1, a.2), RunnerVersion(b.0, b.1, b.2));
            prop_assert_eq!(RunnerVersion::parse(&x.to_string()), Ok(x));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
        }
    }
}

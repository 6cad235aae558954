//! What a step is and what it reports: a name, a status, how long it took, what it saw, and for
//! a failure, what a person can do about it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The canary's steps, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepName {
    Bootstrap,
    Gpu,
    Cuda,
    Vulkan,
    Cache,
    Queue,
    Cleanup,
}

impl StepName {
    pub const ALL: [StepName; 7] = [
        StepName::Bootstrap,
        StepName::Gpu,
        StepName::Cuda,
        StepName::Vulkan,
        StepName::Cache,
        StepName::Queue,
        StepName::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Bootstrap => "bootstrap",
            StepName::Gpu => "gpu",
            StepName::Cuda => "cuda",
            StepName::Vulkan => "vulkan",
            StepName::Cache => "cache",
            StepName::Queue => "queue",
            StepName::Cleanup => "cleanup",
        }
    }

    /// What the step proves, for reports.
    pub fn title(self) -> &'static str {
        match self {
            StepName::Bootstrap => "runner environment: image, Nix, tools, disk, clock",
            StepName::Gpu => "NVIDIA GPUs through NVML: health, links, errors, processes",
            StepName::Cuda => "CUDA driver API: context, copies, bandwidth, a JIT-compiled kernel",
            StepName::Vulkan => "Vulkan loader and physical devices",
            StepName::Cache => "Nix binary cache: reachability, latency, signed pull, push",
            StepName::Queue => "time from the job's creation to its start",
            StepName::Cleanup => "nothing of the job left behind: GPU processes, files, memory",
        }
    }
}

impl fmt::Display for StepName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        StepName::ALL.into_iter().find(|n| n.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = StepName::ALL.iter().map(|n| n.as_str()).collect();
            format!("no step named {s:?} (steps: {})", names.join(", "))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something wrong that a step found, and what a person can do about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

/// A number a step measured. `name` follows Prometheus' conventions (unit suffix, base units);
/// labels tell devices apart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a check returns. The runner turns it into a [`StepResult`] with the step's name, whether
/// it was required, and the time it took.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Set when what the step needs is not there (no driver, no cache configured): the step
    /// fails when it is required and is skipped otherwise.
    pub unavailable: Option<Finding>,
    pub findings: Vec<Finding>,
    pub details: serde_json::Map<String, Value>,
    pub metrics: Vec<Metric>,
    /// Readable lines for the terminal and the job summary.
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn new() -> Self {
        Self::default()
    }

    /// The step cannot run here: `reason` says what is missing.
    pub fn unavailable(reason: impl Into<String>, remedy: impl Into<String>) -> Self {
        Outcome {
            unavailable: Some(Finding { message: reason.into(), remedy: Some(remedy.into()) }),
            ..Self::default()
        }
    }

    /// Records a problem; the step fails, and goes on checking the rest.
    pub fn fail(&mut self, message: impl Into<String>, remedy: impl Into<String>) {
        self.findings.push(Finding { message: message.into(), remedy: Some(remedy.into()) });
    }

    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        self.details.insert(key.to_string(), serde_json::to_value(value).unwrap_or(Value::Null));
    }

    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.push(Metric { name: name.to_string(), value, labels: BTreeMap::new() });
    }

    pub fn metric_with(&mut self, name: &str, value: f64, labels: &[(&str, &str)]) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.metrics.push(Metric { name: name.to_string(), value, labels });
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }

    pub fn failed(&self) -> bool {
        !self.findings.is_empty()
    }
}

/// One step's result, as the event stream records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub step: StepName,
    pub status: Status,
    pub required: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_ms: u64,
    /// Why it failed or was skipped, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(default)]
    pub details: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
}

impl StepResult {
    pub fn from_outcome(step: StepName, required: bool, started_at: String, duration_ms: u64, o: Outcome) -> Self {
        let (status, reason, remedy, findings) = match (o.unavailable, o.findings.is_empty()) {
            (Some(u), _) => {
                let status = if required { Status::Fail } else { Status::Skip };
                (status, Some(u.message.clone()), u.remedy.clone(), if required { vec![u] } else { vec![] })
            }
            (None, true) => (Status::Pass, None, None, vec![]),
            (None, false) => {
                let reason = o.findings.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ");
                let mut remedies: Vec<&str> = Vec::new();
                for r in o.findings.iter().filter_map(|f| f.remedy.as_deref()) {
                    if !remedies.contains(&r) {
                        remedies.push(r);
                    }
                }
                (Status::Fail, Some(reason), (!remedies.is_empty()).then(|| remedies.join(" ")), o.findings)
            }
        };
        StepResult {
            step,
            status,
            required,
            started_at,
            duration_ms,
            reason,
            remedy,
            findings,
            notes: o.notes,
            details: o.details,
            metrics: o.metrics,
        }
    }

    /// A step that was not run: `--skip`, or a limit that ran out before it.
    pub fn skipped(step: StepName, required: bool, started_at: String, reason: &str) -> Self {
        StepResult {
            step,
            status: Status::Skip,
            required,
            started_at,
            duration_ms: 0,
            reason: Some(reason.to_string()),
            remedy: None,
            findings: vec![],
            notes: vec![],
            details: Default::default(),
            metrics: vec![],
        }
    }

    /// Whether this result lets the run pass.
    pub fn ok(&self) -> bool {
        !self.required || self.status == Status::Pass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_fails_only_when_required() {
        let o = || Outcome::unavailable("libnvidia-ml.so.1 not found", "install the driver");
        let r = StepResult::from_outcome(StepName::Gpu, true, String::new(), 1, o());
        assert_eq!(r.status, Status::Fail);
        assert!(!r.ok());
        let r = StepResult::from_outcome(StepName::Gpu, false, String::new(), 1, o());
        assert_eq!(r.status, Status::Skip);
        assert!(r.ok());
        assert_eq!(r.reason.as_deref(), Some("libnvidia-ml.so.1 not found"));
    }

    #[test]
    fn findings_are_joined_and_remedies_deduplicated() {
        let mut o = Outcome::new();
        o.fail("a", "fix it");
        o.fail("b", "fix it");
        let r = StepResult::from_outcome(StepName::Gpu, false, String::new(), 1, o);
        assert_eq!(r.status, Status::Fail);
        assert_eq!(r.reason.as_deref(), Some("a; b"));
        assert_eq!(r.remedy.as_deref(), Some("fix it"));
        assert!(r.ok(), "not required: does not fail the run");
    }

    #[test]
    fn names_round_trip() {
        for n in StepName::ALL {
            assert_eq!(n.as_str().parse::<StepName>(), Ok(n));
            assert_eq!(serde_json::to_value(n).ok(), Some(Value::String(n.as_str().into())));
        }
        assert!("gpus".parse::<StepName>().is_err());
    }
}

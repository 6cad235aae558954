//! A table for the terminal, about 100 columns wide: a line per step, the remedies for the
//! failures under it, and the verdict last.

use std::fmt::Write as _;

use super::{missing_steps, required_counts, run_duration_ms, secs, verdict};
use crate::events::Run;
use crate::step::Status;

/// The table's width; the reason column takes what the others leave.
const WIDTH: usize = 100;
const STEP_W: usize = 10;
const STATUS_W: usize = 7;
const REQUIRED_W: usize = 9;
const DURATION_W: usize = 9;
/// Columns before the reason: the fixed ones and a space after each.
const REASON_AT: usize = STEP_W + STATUS_W + REQUIRED_W + DURATION_W + 4;
/// The most characters of a remedy line (a remedy is one line; longer ones are cut).
const REMEDY_MAX: usize = 400;

pub fn table(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<STEP_W$} {:<STATUS_W$} {:<REQUIRED_W$} {:>DURATION_W$} reason",
        "step", "status", "required", "duration"
    );
    let _ = writeln!(out, "{}", "-".repeat(WIDTH));
    for s in &run.steps {
        let reason = s.reason.as_deref().map(one_line).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<STEP_W$} {:<STATUS_W$} {:<REQUIRED_W$} {:>DURATION_W$} {}",
            s.step.as_str(),
            s.status.as_str().to_uppercase(),
            if s.required { "yes" } else { "no" },
            format!("{:.1} s", secs(s.duration_ms)),
            fit(&reason, WIDTH - REASON_AT),
        );
        // No trailing blanks where there is no reason.
        out.truncate(out.trim_end().len());
        out.push('\n');
    }
    for name in missing_steps(run) {
        let required = run.start.required.contains(&name);
        let _ = writeln!(
            out,
            "{:<STEP_W$} {:<STATUS_W$} {:<REQUIRED_W$} {:>DURATION_W$} no result: the run stopped before this step",
            name.as_str(),
            "-",
            if required { "yes" } else { "no" },
            "-",
        );
    }

    let failures: Vec<_> = run.steps.iter().filter(|s| s.status == Status::Fail && s.remedy.is_some()).collect();
    if !failures.is_empty() {
        out.push('\n');
        for s in failures {
            if let Some(remedy) = &s.remedy {
                let _ = writeln!(out, "{}: remedy: {}", s.step, fit(&one_line(remedy), REMEDY_MAX));
            }
        }
    }

    let (passed, required) = required_counts(run);
    out.push('\n');
    let _ = write!(
        out,
        "canary: {} ({passed} of {required} required steps passed) in {:.1} s",
        verdict(run),
        secs(run_duration_ms(run))
    );
    if run.end.is_none() {
        out.push_str(" (the run did not finish)");
    }
    out.push('\n');
    out
}

/// Newlines and tabs as spaces, other control characters dropped (a terminal would act on them).
fn one_line(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// At most `max` characters, the last an ellipsis when cut.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn table_of_a_failed_run() {
        let mut run = fixture::run();
        run.steps[1].reason = Some(format!("{} \u{1b}[2J end", "long reason ".repeat(30)));
        let t = table(&run);
        for line in t.lines().filter(|l| !l.contains("remedy:")) {
            assert!(line.chars().count() <= WIDTH, "too wide: {line:?}");
        }
        assert!(!t.contains('\u{1b}'));
        let gpu = t.lines().find(|l| l.starts_with("gpu ")).expect("gpu line");
        assert!(gpu.contains("FAIL") && gpu.contains("yes") && gpu.contains("2.5 s") && gpu.ends_with('…'), "{gpu}");
        assert!(t.contains("\ngpu: remedy: drain the node and file a hardware ticket\n"), "{t}");
        assert!(t.contains("queue      SKIP    no"), "{t}");
        assert!(t.contains("cleanup    -       yes"), "{t}");
        assert!(t.ends_with("canary: FAIL (1 of 3 required steps passed) in 10.0 s\n"), "{t}");
    }

    #[test]
    fn table_of_a_passing_run() {
        let t = table(&fixture::passing());
        assert!(t.ends_with("canary: PASS (1 of 1 required steps passed) in 10.0 s\n"), "{t}");
        assert!(!t.contains("remedy"));
    }
}

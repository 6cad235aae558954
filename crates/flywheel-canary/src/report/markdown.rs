//! The GitHub job summary: a heading with the verdict and host, a link to the run, a table of
//! the steps, then per step its notes, key metrics and details.
//!
//! GitHub refuses a step summary over 1 MiB, so every part is capped and the whole is built
//! within [`SUMMARY_LIMIT`]: a part that does not fit is shortened (details dropped first) or
//! left out, with a visible "(truncated)" marker. Parts are added whole, so a cut never leaves a
//! `<details>` block or a code fence open.

use std::fmt::Write as _;

use super::{missing_steps, number, required_counts, run_duration_ms, secs, truncate, verdict};
use crate::events::Run;
use crate::step::{Metric, Status, StepResult};

/// GitHub's limit on one step's summary, in bytes. [`summary_markdown`] always stays under it.
pub const SUMMARY_LIMIT: usize = 1 << 20;

/// What the summary may use: the limit, less room for the closing marker.
const BUDGET: usize = SUMMARY_LIMIT - 4096;
const CELL_LIMIT: usize = 600;
const HEADER_FIELD_LIMIT: usize = 200;
const NOTE_LIMIT: usize = 1000;
const NOTES_PER_STEP: usize = 50;
const METRICS_PER_STEP: usize = 25;
const FINDINGS_PER_STEP: usize = 25;
const DETAILS_LIMIT: usize = 64 << 10;
const TRUNCATED: &str =
    "\n\n**(truncated)**: the summary reached GitHub's 1 MiB limit; `events.jsonl` has everything.\n";

pub fn summary_markdown(run: &Run) -> String {
    let mut out = Summary { text: String::new(), full: false };

    out.push(&header(run));
    out.push(&table_head());
    for step in &run.steps {
        out.push(&table_row(step));
    }
    for name in missing_steps(run) {
        let required = run.start.required.contains(&name);
        out.push(&format!(
            "| `{name}` | ⚠️ no result | {} | – | the run stopped before this step |\n",
            yes_no(required)
        ));
    }
    out.push("\n");

    // Steps with something to show beyond their table row.
    let shown = run
        .steps
        .iter()
        .filter(|s| s.findings.len() > 1 || !s.notes.is_empty() || !s.metrics.is_empty() || !s.details.is_empty());
    for step in shown {
        if out.full {
            break;
        }
        // Whole, else without its details, else nothing (and the marker).
        let (full, short) = step_section(step);
        if !out.try_push(&full) {
            out.push(&short);
        }
    }

    out.finish()
}

struct Summary {
    text: String,
    /// A part did not fit: the marker is due, and nothing more goes in.
    full: bool,
}

impl Summary {
    fn try_push(&mut self, part: &str) -> bool {
        if self.full || self.text.len() + part.len() > BUDGET {
            return false;
        }
        self.text.push_str(part);
        true
    }

    fn push(&mut self, part: &str) {
        if !self.try_push(part) {
            self.full = true;
        }
    }

    fn finish(mut self) -> String {
        if self.full {
            self.text.push_str(TRUNCATED);
        }
        self.text
    }
}

fn header(run: &Run) -> String {
    let s = &run.start;
    let (passed, required) = required_counts(run);
    let emoji = if run.passed() { "✅" } else { "❌" };
    let mut h = format!(
        "## {emoji} flywheel canary: {} on `{}`\n\n",
        verdict(run),
        code_text(&truncate(&s.host, HEADER_FIELD_LIMIT))
    );
    if let Some(g) = &s.github {
        let attempt =
            if g.run_attempt.is_empty() { String::new() } else { format!(", attempt {}", inline(&g.run_attempt)) };
        let _ = write!(
            h,
            "[{} run {}{attempt}]({}) · workflow {} · job `{}` · runner `{}`\n\n",
            inline(&truncate(&g.repository, HEADER_FIELD_LIMIT)),
            inline(&truncate(&g.run_id, HEADER_FIELD_LIMIT)),
            truncate(&g.run_url(), 2 * HEADER_FIELD_LIMIT).replace([' ', ')', '\n', '\r'], ""),
            inline(&truncate(&g.workflow, HEADER_FIELD_LIMIT)),
            code_text(&truncate(&g.job, HEADER_FIELD_LIMIT)),
            code_text(&truncate(&g.runner_name, HEADER_FIELD_LIMIT)),
        );
    }
    let _ = writeln!(
        h,
        "{passed} of {required} required steps passed in {:.1} s · run `{}` · flywheel-canary {} · started {}",
        secs(run_duration_ms(run)),
        code_text(&truncate(&s.run_id, HEADER_FIELD_LIMIT)),
        inline(&truncate(&s.version, HEADER_FIELD_LIMIT)),
        inline(&truncate(&s.time, HEADER_FIELD_LIMIT)),
    );
    if run.end.is_none() {
        h.push_str("\n**The run did not finish** (no run-end event): it died or is still going.\n");
    }
    h.push('\n');
    h
}

fn table_head() -> String {
    "| step | status | required | duration | reason / remedy |\n| --- | --- | --- | --- | --- |\n".into()
}

fn table_row(step: &StepResult) -> String {
    let mut why = String::new();
    if let Some(reason) = &step.reason {
        why.push_str(&cell(reason));
    }
    if let Some(remedy) = &step.remedy {
        if !why.is_empty() {
            why.push_str("<br>");
        }
        why.push_str("**remedy:** ");
        why.push_str(&cell(remedy));
    }
    format!(
        "| `{}` | {} | {} | {:.1} s | {} |\n",
        step.step,
        status_cell(step.status),
        yes_no(step.required),
        secs(step.duration_ms),
        why
    )
}

fn status_cell(s: Status) -> &'static str {
    match s {
        Status::Pass => "✅ pass",
        Status::Fail => "❌ fail",
        Status::Skip => "⏭️ skip",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// A step's section, and the same without its details (for when the full one does not fit).
fn step_section(step: &StepResult) -> (String, String) {
    let mut s = format!("### {} `{}`: {}\n\n", status_cell(step.status), step.step, step.step.title());
    if step.findings.len() > 1 {
        for f in step.findings.iter().take(FINDINGS_PER_STEP) {
            let _ = writeln!(s, "- ❗ {}", inline(&truncate(&f.message, NOTE_LIMIT)));
        }
        more(&mut s, step.findings.len(), FINDINGS_PER_STEP, "findings");
        s.push('\n');
    }
    for n in step.notes.iter().take(NOTES_PER_STEP) {
        let _ = writeln!(s, "- {}", inline(&truncate(n, NOTE_LIMIT)));
    }
    more(&mut s, step.notes.len(), NOTES_PER_STEP, "notes");
    if !step.notes.is_empty() {
        s.push('\n');
    }
    if !step.metrics.is_empty() {
        s.push_str("Metrics: ");
        let shown: Vec<String> =
            step.metrics.iter().take(METRICS_PER_STEP).map(|m| format!("`{}`", code_text(&metric_text(m)))).collect();
        s.push_str(&shown.join(", "));
        if step.metrics.len() > METRICS_PER_STEP {
            let _ = write!(s, " and {} more (truncated)", step.metrics.len() - METRICS_PER_STEP);
        }
        s.push_str("\n\n");
    }
    let short = s.clone();
    if !step.details.is_empty() {
        let json = serde_json::to_string_pretty(&step.details).unwrap_or_default();
        let json = truncate(&json, DETAILS_LIMIT);
        let fence = "`".repeat(longest_backtick_run(&json).max(2) + 1);
        let _ = write!(
            s,
            "<details><summary>{} details</summary>\n\n{fence}json\n{json}\n{fence}\n\n</details>\n\n",
            step.step
        );
    }
    (s, short)
}

fn more(s: &mut String, n: usize, shown: usize, what: &str) {
    if n > shown {
        let _ = writeln!(s, "- … and {} more {what} (truncated)", n - shown);
    }
}

fn metric_text(m: &Metric) -> String {
    let mut t = truncate(&m.name, 100);
    if !m.labels.is_empty() {
        let labels: Vec<String> =
            m.labels.iter().take(10).map(|(k, v)| format!("{}=\"{}\"", truncate(k, 50), truncate(v, 100))).collect();
        t.push('{');
        t.push_str(&labels.join(","));
        t.push('}');
    }
    t.push_str(" = ");
    t.push_str(&number(m.value));
    t
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in s.chars() {
        if c == '`' {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    best
}

/// Text for a table cell: capped, HTML-escaped, `|` escaped and newlines as `<br>`.
fn cell(s: &str) -> String {
    inline(&truncate(s, CELL_LIMIT)).replace('|', "\\|")
}

/// Text on one line of Markdown: HTML-escaped, newlines as `<br>`.
fn inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' => out.push_str("<br>"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Text inside a code span: one line, no backticks (they would end it), no `|` (tables).
fn code_text(s: &str) -> String {
    s.replace(['\n', '\r'], " ").replace('`', "'").replace('|', "¦")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;
    use crate::step::StepName;
    use proptest::prelude::*;

    #[test]
    fn summary_of_a_failed_run() {
        let md = summary_markdown(&fixture::run());
        assert!(md.starts_with("## ❌ flywheel canary: FAIL on `gpu-node-7`"), "{md}");
        assert!(md.contains("(https://github.com/acme/flywheel/actions/runs/12345)"), "{md}");
        assert!(md.contains("1 of 3 required steps passed in 10.0 s"), "{md}");
        let gpu_row = md.lines().find(|l| l.starts_with("| `gpu`")).expect("gpu row");
        assert!(gpu_row.contains("❌ fail"), "{gpu_row}");
        assert!(gpu_row.contains("fell off the bus \\| Xid 79"), "| escaped: {gpu_row}");
        assert!(gpu_row.contains("drain the node<br>and file"), "newline escaped: {gpu_row}");
        assert_eq!(gpu_row.matches(" | ").count() + gpu_row.matches("\\|").count(), 4 + 1, "{gpu_row}");
        assert!(md.contains("| `queue` | ⏭️ skip | no |"), "{md}");
        assert!(md.contains("| `cleanup` | ⚠️ no result | yes |"), "{md}");
        assert!(md.contains("- image sha256:abc | driver 580.159.04"), "{md}");
        assert!(md.contains("NVIDIA H100 &lt;80GB&gt; &amp; more") || md.contains("NVIDIA H100 <80GB> & more"));
        assert!(md.contains("<details><summary>gpu details</summary>"), "{md}");
        assert!(md.contains("`gpu_temperature_celsius{gpu=\"0\",name=\"NVIDIA H100 80GB HBM3\"} = 71`"), "{md}");
        assert!(!md.contains("(truncated)"));
    }

    #[test]
    fn summary_of_a_passing_run() {
        let md = summary_markdown(&fixture::passing());
        assert!(md.starts_with("## ✅ flywheel canary: PASS on `gpu-node-7`"), "{md}");
        assert!(!md.contains("actions/runs"));
    }

    #[test]
    fn huge_inputs_stay_under_the_limit() {
        let mut run = fixture::run();
        let big = "x|y\n".repeat(300 << 10);
        let note = "n<&>|\n".repeat(4 << 10);
        run.start.host = big.clone();
        for s in &mut run.steps {
            s.reason = Some(big.clone());
            s.remedy = Some(big.clone());
            s.notes = vec![note.clone(); 100];
            s.details.insert("big".into(), serde_json::Value::String(big.clone()));
            s.details.insert("ticks".into(), serde_json::Value::String("`".repeat(10)));
        }
        let one = run.steps[0].clone();
        for _ in 0..10 {
            run.steps.push(one.clone());
        }
        let md = summary_markdown(&run);
        assert!(md.len() < SUMMARY_LIMIT, "{}", md.len());
        assert!(md.contains("(truncated)"));
        // Every opened block closed.
        assert_eq!(md.matches("<details>").count(), md.matches("</details>").count());
    }

    #[test]
    fn thousands_of_steps_stay_under_the_limit() {
        let mut run = fixture::run();
        let one = run.steps[1].clone();
        run.steps = vec![one; 20_000];
        let md = summary_markdown(&run);
        assert!(md.len() < SUMMARY_LIMIT);
        assert!(md.ends_with(TRUNCATED));
    }

    fn step_strategy() -> impl Strategy<Value = StepResult> {
        let text = prop_oneof![
            ".{0,40}",
            (any::<char>(), 0usize..(1200 << 10)).prop_map(|(c, n)| c.to_string().repeat(n)),
            (".{1,8}", 0usize..(300 << 10)).prop_map(|(s, n)| s.repeat(n)),
        ];
        (
            0usize..StepName::ALL.len(),
            prop_oneof![Just(Status::Pass), Just(Status::Fail), Just(Status::Skip)],
            proptest::option::of(text.clone()),
            proptest::option::of(text.clone()),
            proptest::collection::vec(text.clone(), 0..3),
            proptest::option::of(text),
        )
            .prop_map(|(i, status, reason, remedy, notes, detail)| {
                let mut s = fixture::run().steps[0].clone();
                s.step = StepName::ALL[i];
                s.status = status;
                s.reason = reason;
                s.remedy = remedy;
                s.notes = notes;
                if let Some(d) = detail {
                    s.details.insert("d".into(), serde_json::Value::String(d));
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
        #[test]
        fn never_reaches_the_limit(steps in proptest::collection::vec(step_strategy(), 0..8), host in ".{0,20}") {
            let mut run = fixture::run();
            run.start.host = host;
            run.steps = steps;
            let md = summary_markdown(&run);
            prop_assert!(md.len() < SUMMARY_LIMIT, "{} bytes", md.len());
            prop_assert_eq!(md.matches("<details>").count(), md.matches("</details>").count());
        }
    }
}

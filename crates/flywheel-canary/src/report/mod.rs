//! Reports made from a run's events ([`Run`]): JUnit XML for CI test views, a Markdown job
//! summary for GitHub, a Prometheus textfile for node_exporter, and a table for the terminal.
//! Each is a pure function of the run; [`write_reports`] and [`append_step_summary`] put them
//! where they go.

mod junit;
mod markdown;
mod prom;
mod table;

use std::io::{self, Write};
use std::path::Path;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::events::Run;
use crate::step::{Status, StepName, StepResult};

pub use junit::junit_xml;
pub use markdown::{summary_markdown, SUMMARY_LIMIT};
pub use prom::prometheus;
pub use table::table;

/// The files [`write_reports`] writes.
/// The event stream, which the CLI writes as the run goes (as `events.jsonl.partial` until it ends).
pub const EVENTS_FILE: &str = "events.jsonl";
pub const JUNIT_FILE: &str = "junit.xml";
pub const SUMMARY_FILE: &str = "summary.md";
pub const PROMETHEUS_FILE: &str = "canary.prom";

/// Writes `junit.xml`, `summary.md` and `canary.prom` into `dir` (made if missing). Each is
/// written to a temporary file in `dir` and renamed over the old one, so a reader (node_exporter's
/// textfile collector) sees the old file or the new one, never half of one. The files are made
/// readable by all (0644): the collector usually runs as another user.
pub fn write_reports(dir: &Path, run: &Run) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomically(dir, JUNIT_FILE, junit_xml(run).as_bytes())?;
    write_atomically(dir, SUMMARY_FILE, summary_markdown(run).as_bytes())?;
    write_atomically(dir, PROMETHEUS_FILE, prometheus(run).as_bytes())?;
    Ok(())
}

fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    // A leading dot: node_exporter's textfile collector reads only `*.prom`, and the temporary
    // name ends in random characters, never `.prom`.
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.flush()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

/// Appends [`summary_markdown`] to the job summary file (`$GITHUB_STEP_SUMMARY`), made if missing;
/// what is there already stays.
pub fn append_step_summary(path: &Path, run: &Run) -> io::Result<()> {
    let mut text = summary_markdown(run);
    let existing = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if existing > 0 {
        // Start a new block, whatever the last writer left.
        text.insert(0, '\n');
    }
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(path)?;
    f.write_all(text.as_bytes())?;
    f.flush()
}

// --- What the reports share. ---

/// Seconds from milliseconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The run's duration: from its end event, else the steps' durations added up.
fn run_duration_ms(run: &Run) -> u64 {
    match &run.end {
        Some(end) => end.duration_ms,
        None => run.steps.iter().map(|s| s.duration_ms).sum(),
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Required steps that passed, and all required steps: those the run planned as required and
/// those whose result says so. A required step without a result (the run died first) did not pass.
fn required_counts(run: &Run) -> (usize, usize) {
    let mut required: Vec<StepName> = run.start.required.clone();
    for s in run.steps.iter().filter(|s| s.required) {
        if !required.contains(&s.step) {
            required.push(s.step);
        }
    }
    let passed = required
        .iter()
        .filter(|name| {
            let results: Vec<&StepResult> = run.steps.iter().filter(|s| s.step == **name).collect();
            !results.is_empty() && results.iter().all(|s| s.status == Status::Pass)
        })
        .count();
    (passed, required.len())
}

/// Planned steps with no result: the run stopped (or died) before them.
fn missing_steps(run: &Run) -> Vec<StepName> {
    run.start.steps.iter().copied().filter(|n| run.step(*n).is_none()).collect()
}

/// `s` cut to at most `max` bytes (at a character boundary), with a visible marker when cut.
/// The result is never longer than `max` (the marker counts), unless `max` is shorter than the
/// marker itself, where the cut text is empty and only the marker's first `max` bytes are given.
fn truncate(s: &str, max: usize) -> String {
    const MARK: &str = "… (truncated)";
    if s.len() <= max {
        return s.to_string();
    }
    if max < MARK.len() {
        return MARK[..floor_char_boundary(MARK, max)].to_string();
    }
    let cut = floor_char_boundary(s, max - MARK.len());
    let mut out = String::with_capacity(max);
    out.push_str(&s[..cut]);
    out.push_str(MARK);
    out
}

/// The largest index `<= i` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A metric value as text: integers without a fraction, Prometheus' spellings of the specials.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// The run's overall verdict: PASS only when it ended and every required step passed.
fn verdict(run: &Run) -> &'static str {
    if run.passed() {
        "PASS"
    } else {
        "FAIL"
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    use std::collections::BTreeMap;

    use serde_json::json;

    use crate::events::{GithubJob, Run, RunEnd, RunStart};
    use crate::step::{Finding, Metric, Status, StepName, StepResult};

    fn step(step: StepName, status: Status, required: bool, ms: u64) -> StepResult {
        StepResult {
            step,
            status,
            required,
            started_at: "2025-03-04T05:06:07Z".into(),
            duration_ms: ms,
            reason: None,
            remedy: None,
            findings: vec![],
            notes: vec![],
            details: Default::default(),
            metrics: vec![],
        }
    }

    /// A run with a pass (with metrics whose labels need escaping), a required failure with a
    /// remedy, a skip, and a step that never ran.
    pub fn run() -> Run {
        let mut bootstrap = step(StepName::Bootstrap, Status::Pass, true, 1234);
        bootstrap.notes = vec!["image sha256:abc | driver 580.159.04".into(), "nix 2.24".into()];
        bootstrap.details.insert("disk_free_bytes".into(), json!(123456789));
        bootstrap.metrics = vec![
            Metric { name: "disk_free_bytes".into(), value: 1.5e10, labels: BTreeMap::new() },
            Metric {
                name: "tool-present".into(),
                value: 1.0,
                labels: [("tool".to_string(), "a \"quoted\\path\"\nnext | pipe".to_string())].into(),
            },
        ];
        let mut gpu = step(StepName::Gpu, Status::Fail, true, 2500);
        gpu.reason = Some("GPU 0: 3 uncorrected ECC errors; GPU 1: fell off the bus | Xid 79".into());
        gpu.remedy = Some("drain the node\nand file a hardware ticket".into());
        gpu.findings = vec![
            Finding { message: "GPU 0: 3 uncorrected ECC errors".into(), remedy: Some("drain the node".into()) },
            Finding { message: "GPU 1: fell off the bus | Xid 79".into(), remedy: None },
        ];
        gpu.metrics = vec![Metric {
            name: "gpu_temperature_celsius".into(),
            value: 71.0,
            labels: [("gpu".to_string(), "0".to_string()), ("name".to_string(), "NVIDIA H100 80GB HBM3".to_string())]
                .into(),
        }];
        gpu.details.insert("gpus".into(), json!([{"index": 0, "name": "NVIDIA H100 <80GB> & more"}]));
        let mut queue = step(StepName::Queue, Status::Skip, false, 0);
        queue.reason = Some("no GitHub job to have queued".into());
        Run {
            start: RunStart {
                run_id: "12345-1".into(),
                time: "2025-03-04T05:06:00Z".into(),
                host: "gpu-node-7".into(),
                version: "0.1.0".into(),
                steps: vec![StepName::Bootstrap, StepName::Gpu, StepName::Queue, StepName::Cleanup],
                required: vec![StepName::Bootstrap, StepName::Gpu, StepName::Cleanup],
                github: Some(GithubJob {
                    repository: "acme/flywheel".into(),
                    run_id: "12345".into(),
                    run_attempt: "1".into(),
                    job: "canary".into(),
                    workflow: "lane canary".into(),
                    runner_name: "gpu-node-7-runner".into(),
                    server_url: "https://github.com".into(),
                }),
            },
            steps: vec![bootstrap, gpu, queue],
            end: Some(RunEnd {
                time: "2025-03-04T05:06:10Z".into(),
                status: Status::Fail,
                duration_ms: 10_000,
                failed: vec![StepName::Gpu, StepName::Cleanup],
            }),
        }
    }

    /// A run where everything passed.
    pub fn passing() -> Run {
        let mut run = run();
        run.start.steps = vec![StepName::Bootstrap];
        run.start.required = vec![StepName::Bootstrap];
        run.start.github = None;
        run.steps.truncate(1);
        if let Some(end) = &mut run.end {
            end.status = Status::Pass;
            end.failed.clear();
        }
        run
    }

    /// Python 3 with `module` importable: `python3` on PATH, else Debian's own (a pyenv shim may
    /// come first on PATH without Debian's packages). Fails the test when there is none.
    pub fn python_with(module: &str) -> std::path::PathBuf {
        for cand in ["python3", "/usr/bin/python3"] {
            let ok = std::process::Command::new(cand)
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return cand.into();
            }
        }
        panic!(
            "no python3 with the {module} module: this test needs it (Debian: apt-get install python3 \
             python3-prometheus-client)"
        );
    }

    /// Runs python `code` with `input` on stdin; its stdout.
    pub fn python(module: &str, code: &str, input: &str) -> String {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let py = python_with(module);
        let mut child = Command::new(&py)
            .args(["-c", code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let mut stdin = child.stdin.take().expect("stdin");
        let owned = input.to_string();
        let writer = std::thread::spawn(move || stdin.write_all(owned.as_bytes()));
        let out = child.wait_with_output().expect("python3 ran");
        writer.join().expect("writer").expect("wrote stdin");
        assert!(
            out.status.success(),
            "python3 failed: {}\n--- input (start) ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            input.chars().take(4000).collect::<String>()
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_marks_and_bounds() {
        assert_eq!(truncate("short", 10), "short");
        let t = truncate(&"é".repeat(100), 51);
        assert!(t.len() <= 51 && t.ends_with("(truncated)"), "{t}");
        assert!(truncate("abcdefghijklmnopqrstuvwxyz", 5).len() <= 5);
    }

    #[test]
    fn counts_required_steps() {
        let run = fixture::run();
        // bootstrap passed; gpu failed; cleanup never ran.
        assert_eq!(required_counts(&run), (1, 3));
        assert_eq!(missing_steps(&run), vec![StepName::Cleanup]);
        assert_eq!(required_counts(&fixture::passing()), (1, 1));
    }

    #[test]
    fn write_reports_leaves_three_files_and_no_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("reports");
        let run = fixture::run();
        write_reports(&out, &run).expect("write");
        write_reports(&out, &run).expect("write again, over the old files");
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names, ["canary.prom", "junit.xml", "summary.md"]);
        assert_eq!(std::fs::read_to_string(out.join("canary.prom")).expect("prom"), prometheus(&run));
        assert_eq!(std::fs::read_to_string(out.join("junit.xml")).expect("junit"), junit_xml(&run));
        assert_eq!(std::fs::read_to_string(out.join("summary.md")).expect("md"), summary_markdown(&run));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("canary.prom")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn step_summary_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("summary");
        std::fs::write(&path, "# earlier step").expect("write");
        let run = fixture::run();
        append_step_summary(&path, &run).expect("append");
        append_step_summary(&path, &run).expect("append again");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("# earlier step\n"));
        assert_eq!(text.matches(&summary_markdown(&run)).count(), 2);

        let fresh = dir.path().join("fresh");
        append_step_summary(&fresh, &run).expect("create");
        assert_eq!(std::fs::read_to_string(&fresh).expect("read"), summary_markdown(&run));
    }
}

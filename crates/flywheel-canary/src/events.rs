//! The event stream (`events.jsonl`): one JSON object per line, `run-start`, a `step` per step
//! as it finishes, then `run-end`. Every other report is made from it (docs/canary.md has the
//! schema; docs/canary-events.schema.json checks it).

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::step::{Status, StepName, StepResult};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStart(RunStart),
    Step(StepResult),
    RunEnd(RunEnd),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStart {
    /// Unique per run: GitHub's run id and attempt when there are, else random.
    pub run_id: String,
    pub time: String,
    pub host: String,
    pub version: String,
    /// The steps to run, in order, and the ones that must pass.
    pub steps: Vec<StepName>,
    pub required: Vec<StepName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubJob>,
}

/// The job, as GitHub's runner environment describes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GithubJob {
    pub repository: String,
    pub run_id: String,
    pub run_attempt: String,
    pub job: String,
    pub workflow: String,
    pub runner_name: String,
    pub server_url: String,
}

impl GithubJob {
    /// From GITHUB_* and RUNNER_* variables, when a runner set them.
    pub fn from_env() -> Option<GithubJob> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        if var("GITHUB_ACTIONS") != "true" || var("GITHUB_RUN_ID").is_empty() {
            return None;
        }
        Some(GithubJob {
            repository: var("GITHUB_REPOSITORY"),
            run_id: var("GITHUB_RUN_ID"),
            run_attempt: var("GITHUB_RUN_ATTEMPT"),
            job: var("GITHUB_JOB"),
            workflow: var("GITHUB_WORKFLOW"),
            runner_name: var("RUNNER_NAME"),
            server_url: var("GITHUB_SERVER_URL"),
        })
    }

    /// The run's page, for reports.
    pub fn run_url(&self) -> String {
        format!("{}/{}/actions/runs/{}", self.server_url.trim_end_matches('/'), self.repository, self.run_id)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    pub time: String,
    /// `pass` when every required step passed.
    pub status: Status,
    pub duration_ms: u64,
    /// Required steps that did not pass.
    pub failed: Vec<StepName>,
}

/// A whole run, read back from its events.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub start: RunStart,
    pub steps: Vec<StepResult>,
    /// None while the run is still going (or if it died).
    pub end: Option<RunEnd>,
}

impl Run {
    pub fn passed(&self) -> bool {
        self.end.as_ref().is_some_and(|e| e.status == Status::Pass)
    }

    pub fn step(&self, name: StepName) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.step == name)
    }
}

pub fn write_event(out: &mut dyn Write, event: &Event) -> io::Result<()> {
    let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("line {line}: {message}")]
    Bad { line: usize, message: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Run {
    /// A run from its events, in order: one run-start first, then steps, then run-end.
    pub fn from_events(events: impl IntoIterator<Item = Event>) -> Result<Run, EventsError> {
        let mut start = None;
        let mut steps = Vec::new();
        let mut end = None;
        for (i, event) in events.into_iter().enumerate() {
            match event {
                Event::RunStart(s) if start.is_none() => start = Some(s),
                Event::RunStart(_) => {
                    return Err(EventsError::Bad { line: i + 1, message: "a second run-start".into() })
                }
                Event::Step(s) => steps.push(s),
                Event::RunEnd(e) => end = Some(e),
            }
        }
        let start = start.ok_or(EventsError::Bad { line: 0, message: "no run-start event".into() })?;
        Ok(Run { start, steps, end })
    }
}

/// Reads an event stream back into a run.
pub fn read_run(input: impl BufRead) -> Result<Run, EventsError> {
    let mut events = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str::<Event>(&line)
            .map_err(|e| EventsError::Bad { line: i + 1, message: e.to_string() })?;
        events.push(event);
    }
    Run::from_events(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{Outcome, StepResult};
    use proptest::prelude::*;

    fn start() -> RunStart {
        RunStart {
            run_id: "42-1".into(),
            time: "2026-11-25T01:00:00Z".into(),
            host: "gpu-1".into(),
            version: "0.1.0".into(),
            steps: StepName::ALL.to_vec(),
            required: vec![StepName::Gpu],
            github: None,
        }
    }

    proptest! {
        /// Whatever a step reports (any text, metrics, labels), the stream reads back the same.
        #[test]
        fn a_run_round_trips_through_its_event_stream(
            reason in ".{0,200}",
            note in ".{0,200}",
            value in proptest::num::f64::NORMAL,
            label in "[a-z]{1,8}",
            required in any::<bool>(),
        ) {
            let mut o = Outcome::new();
            o.fail(reason.clone(), "remedy");
            o.note(note);
            o.detail("k", &reason);
            o.metric_with("m_bytes", value, &[(&label, "v\"\n")]);
            let step = StepResult::from_outcome(StepName::Cuda, required, "2026-11-25T01:00:01Z".into(), 7, o);
            let end = RunEnd { time: "2026-11-25T01:00:02Z".into(), status: Status::Fail, duration_ms: 9, failed: vec![StepName::Cuda] };
            let events = [Event::RunStart(start()), Event::Step(step.clone()), Event::RunEnd(end.clone())];
            let mut out = Vec::new();
            for e in &events {
                write_event(&mut out, e).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 3, "one line per event");
            let run = read_run(out.as_slice()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(run.start, start());
            prop_assert_eq!(run.steps, vec![step]);
            prop_assert_eq!(run.end, Some(end));
        }
    }

    #[test]
    fn a_stream_without_its_start_or_with_a_bad_line_is_refused() {
        assert!(matches!(read_run(&b""[..]), Err(EventsError::Bad { line: 0, .. })));
        let mut out = Vec::new();
        write_event(&mut out, &Event::RunStart(start())).expect("write");
        out.extend_from_slice(b"{\"event\":\"step\"}\n");
        assert!(matches!(read_run(out.as_slice()), Err(EventsError::Bad { line: 2, .. })));
        // A run that died has no end: it reads back as unfinished, not as passed.
        let mut out = Vec::new();
        write_event(&mut out, &Event::RunStart(start())).expect("write");
        let run = read_run(out.as_slice()).expect("read");
        assert!(run.end.is_none() && !run.passed());
    }
}

//! JUnit XML: one testsuite, `flywheel-canary`, with a testcase per step (classname `canary`).
//! A failed step is a `<failure>` (message: the reason; text: the remedy and the findings), a
//! skipped one `<skipped>`, and a planned step with no result (the run died first) an `<error>`
//! when required, else skipped. Notes and details (JSON) go to the testcase's system-out.

use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use time::format_description::well_known::Rfc3339;

use super::{missing_steps, parse_time, run_duration_ms, truncate};
use crate::events::Run;
use crate::step::{Status, StepResult};

pub const SUITE: &str = "flywheel-canary";
const CLASSNAME: &str = "canary";
/// Most bytes of a step's system-out (notes and details), and of a failure's text.
const SYSTEM_OUT_LIMIT: usize = 64 << 10;
const TEXT_LIMIT: usize = 16 << 10;

pub fn junit_xml(run: &Run) -> String {
    let mut suite = TestSuite::new(SUITE);
    // quick-junit takes chrono's time for `timestamp`; the crate speaks `time`, so the attribute
    // goes in as text, formatted the same way (RFC 3339).
    if let Some(ts) = parse_time(&run.start.time).and_then(|t| t.format(&Rfc3339).ok()) {
        suite.extra.insert("timestamp".into(), ts.into());
    }
    suite.extra.insert("hostname".into(), run.start.host.as_str().into());
    suite.set_time(Duration::from_millis(run_duration_ms(run)));
    suite.add_properties(properties(run));

    for step in &run.steps {
        suite.add_test_case(test_case(step));
    }
    for name in missing_steps(run) {
        let required = run.start.required.contains(&name);
        let mut status =
            if required { TestCaseStatus::non_success(NonSuccessKind::Error) } else { TestCaseStatus::skipped() };
        status.set_message("no result: the run stopped before this step");
        let mut case = TestCase::new(name.as_str(), status);
        case.set_classname(CLASSNAME);
        case.add_property(Property::new("required", required.to_string()));
        suite.add_test_case(case);
    }

    let mut report = Report::new(SUITE);
    report.set_time(Duration::from_millis(run_duration_ms(run)));
    report.add_test_suite(suite);
    match report.to_string() {
        Ok(xml) => xml,
        Err(e) => fallback(&e.to_string()),
    }
}

fn properties(run: &Run) -> Vec<Property> {
    let s = &run.start;
    let mut props = vec![
        Property::new("run_id", s.run_id.as_str()),
        Property::new("host", s.host.as_str()),
        Property::new("version", s.version.as_str()),
        Property::new("status", super::verdict(run)),
    ];
    if let Some(g) = &s.github {
        props.push(Property::new("github_run_url", g.run_url()));
        props.push(Property::new("github_job", g.job.as_str()));
        props.push(Property::new("github_workflow", g.workflow.as_str()));
        props.push(Property::new("github_runner", g.runner_name.as_str()));
    }
    props
}

fn test_case(step: &StepResult) -> TestCase {
    let status = match step.status {
        Status::Pass => TestCaseStatus::success(),
        Status::Fail => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(truncate(step.reason.as_deref().unwrap_or("failed"), TEXT_LIMIT));
            status.set_type(if step.required { "required" } else { "optional" });
            status.set_description(truncate(&failure_text(step), TEXT_LIMIT));
            status
        }
        Status::Skip => {
            let mut status = TestCaseStatus::skipped();
            status.set_message(truncate(step.reason.as_deref().unwrap_or("skipped"), TEXT_LIMIT));
            status
        }
    };
    let mut case = TestCase::new(step.step.as_str(), status);
    case.set_classname(CLASSNAME);
    case.set_time(Duration::from_millis(step.duration_ms));
    case.add_property(Property::new("required", step.required.to_string()));
    case.add_property(Property::new("title", step.step.title()));
    if let Some(out) = system_out(step) {
        case.set_system_out(out);
    }
    case
}

fn failure_text(step: &StepResult) -> String {
    let mut text = String::new();
    if let Some(remedy) = &step.remedy {
        text.push_str("remedy: ");
        text.push_str(remedy);
        text.push('\n');
    }
    if !step.findings.is_empty() {
        text.push_str("findings:\n");
        for f in &step.findings {
            text.push_str("- ");
            text.push_str(&f.message);
            if let Some(r) = &f.remedy {
                text.push_str(" (remedy: ");
                text.push_str(r);
                text.push(')');
            }
            text.push('\n');
        }
    }
    text
}

/// Notes, then details as pretty JSON; at most [`SYSTEM_OUT_LIMIT`] bytes.
fn system_out(step: &StepResult) -> Option<String> {
    let mut out = String::new();
    for n in &step.notes {
        out.push_str(n);
        out.push('\n');
    }
    if !step.details.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&serde_json::to_string_pretty(&step.details).unwrap_or_default());
        out.push('\n');
    }
    (!out.is_empty()).then(|| truncate(&out, SYSTEM_OUT_LIMIT))
}

/// A report that says the real one could not be made (quick-junit writes to memory: not seen).
fn fallback(error: &str) -> String {
    let esc = error.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{SUITE}\" tests=\"1\" failures=\"0\" errors=\"1\">\n\
         <testsuite name=\"{SUITE}\" tests=\"1\" skipped=\"0\" failures=\"0\" errors=\"1\">\n\
         <testcase name=\"report\" classname=\"{CLASSNAME}\"><error message=\"could not write the JUnit report: {esc}\"/></testcase>\n\
         </testsuite>\n</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;

    #[test]
    fn round_trips_through_quick_junit() {
        let run = fixture::run();
        let xml = junit_xml(&run);
        let report = Report::deserialize_from_str(&xml).expect("valid JUnit XML");
        assert_eq!(report.test_suites.len(), 1);
        let suite = &report.test_suites[0];
        assert_eq!(suite.name.as_str(), SUITE);
        // bootstrap pass, gpu fail, queue skip, cleanup never ran (required: an error).
        assert_eq!(suite.tests, 4);
        assert_eq!(suite.failures, 1);
        assert_eq!(suite.skipped, 1);
        assert_eq!(suite.errors, 1);
        let ts = suite.timestamp.map(|t| t.to_rfc3339());
        assert_eq!(ts.as_deref(), Some("2025-03-04T05:06:00+00:00"));
        let gpu = suite.test_cases.iter().find(|c| c.name.as_str() == "gpu").expect("gpu case");
        assert_eq!(gpu.classname.as_ref().map(|c| c.as_str()), Some("canary"));
        assert_eq!(gpu.time, Some(Duration::from_millis(2500)));
        match &gpu.status {
            TestCaseStatus::NonSuccess { kind: NonSuccessKind::Failure, message, description, .. } => {
                assert!(message.as_ref().is_some_and(|m| m.as_str().contains("uncorrected ECC")));
                let d = description.as_ref().map(|d| d.as_str()).unwrap_or_default();
                assert!(d.contains("remedy: drain the node"), "{d}");
                assert!(d.contains("- GPU 1: fell off the bus"), "{d}");
            }
            other => panic!("gpu: {other:?}"),
        }
        let out = gpu.system_out.as_ref().map(|o| o.as_str()).unwrap_or_default();
        assert!(out.contains("NVIDIA H100 <80GB> & more"), "{out}");
        let queue = suite.test_cases.iter().find(|c| c.name.as_str() == "queue").expect("queue case");
        assert!(
            matches!(&queue.status, TestCaseStatus::Skipped { message: Some(m), .. } if m.as_str().contains("no GitHub job"))
        );
    }

    #[test]
    fn parses_as_xml_in_python() {
        let xml = junit_xml(&fixture::run());
        let code = "import sys, xml.etree.ElementTree as ET\n\
                    root = ET.fromstring(sys.stdin.read())\n\
                    s = root.find('testsuite')\n\
                    print(s.get('name'), s.get('tests'), s.get('failures'), s.get('skipped'), s.get('errors'), \
                    len(s.findall('testcase')), len(s.findall('testcase/failure')), len(s.findall('testcase/skipped')), \
                    s.get('timestamp'))";
        let out = fixture::python("xml.etree.ElementTree", code, &xml);
        assert_eq!(out.trim(), "flywheel-canary 4 1 1 1 4 1 1 2025-03-04T05:06:00Z");
    }

    #[test]
    fn system_out_is_bounded() {
        let mut run = fixture::run();
        run.steps[0].details.insert("huge".into(), serde_json::Value::String("x".repeat(1 << 20)));
        run.steps[0].notes.push("\u{1b}[31mred\u{1b}[0m and a \u{7} bell".into());
        let xml = junit_xml(&run);
        assert!(xml.len() < 200 << 10, "{} bytes", xml.len());
        assert!(xml.contains("(truncated)"));
        Report::deserialize_from_str(&xml).expect("still valid");
    }

    #[test]
    fn fallback_is_xml() {
        let xml = fallback("a <bad> \"thing\" & more");
        Report::deserialize_from_str(&xml).expect("valid");
    }
}

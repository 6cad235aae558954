//! The Prometheus text exposition format, for node_exporter's textfile collector
//! (`canary.prom`). Every family is a gauge, with its `# HELP` and `# TYPE` once and its samples
//! together:
//!
//! - `flywheel_canary_success`: 1 when the run passed (ended, every required step passed), else 0.
//! - `flywheel_canary_last_run_timestamp_seconds`: when the run ended (its start, when it did not).
//! - `flywheel_canary_duration_seconds`: the run's duration.
//! - `flywheel_canary_step_success{step}`: 1 pass, 0 fail. **A skipped step has no sample**: it
//!   neither passed nor failed, so `min(flywheel_canary_step_success) == 0` alerts only on real
//!   failures; `flywheel_canary_step_status` shows the skip.
//! - `flywheel_canary_step_status{step,status}`: one-hot over `pass`, `fail` and `skip`.
//! - `flywheel_canary_step_required{step}`: 1 when the step had to pass.
//! - `flywheel_canary_step_duration_seconds{step}`.
//! - each step's own metrics as `flywheel_canary_<name>{labels}`.
//!
//! Names are cut to `[a-zA-Z0-9_:]` and label names to `[a-zA-Z0-9_]` (others become `_`); label
//! values are escaped. A series (name and labels) that was already written is not written again
//! (the collector rejects a file with duplicates), so the first one wins.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::{number, parse_time, run_duration_ms, secs};
use crate::events::Run;
use crate::step::Status;

pub const PREFIX: &str = "flywheel_canary_";

pub fn prometheus(run: &Run) -> String {
    let mut x = Exposition::default();

    x.sample(
        "success",
        "1 when the canary's last run passed: every required step passed",
        &[],
        f64::from(u8::from(run.passed())),
    );
    let last = run.end.as_ref().and_then(|e| parse_time(&e.time)).or_else(|| parse_time(&run.start.time));
    if let Some(t) = last {
        x.sample(
            "last_run_timestamp_seconds",
            "when the canary's last run ended (Unix time)",
            &[],
            t.unix_timestamp_nanos() as f64 / 1e9,
        );
    }
    x.sample("duration_seconds", "how long the canary's last run took", &[], secs(run_duration_ms(run)));

    for s in &run.steps {
        let step = s.step.as_str();
        let success = match s.status {
            Status::Pass => Some(1.0),
            Status::Fail => Some(0.0),
            Status::Skip => None,
        };
        if let Some(v) = success {
            x.sample(
                "step_success",
                "1 when the step passed, 0 when it failed; skipped steps have no sample",
                &[("step", step)],
                v,
            );
        }
    }
    for s in &run.steps {
        for status in [Status::Pass, Status::Fail, Status::Skip] {
            x.sample(
                "step_status",
                "the step's status, one-hot: pass, fail or skip",
                &[("step", s.step.as_str()), ("status", status.as_str())],
                f64::from(u8::from(s.status == status)),
            );
        }
    }
    for s in &run.steps {
        x.sample(
            "step_required",
            "1 when the step had to pass for the run to pass",
            &[("step", s.step.as_str())],
            f64::from(u8::from(s.required)),
        );
    }
    for s in &run.steps {
        x.sample("step_duration_seconds", "how long the step took", &[("step", s.step.as_str())], secs(s.duration_ms));
    }

    for s in &run.steps {
        for m in &s.metrics {
            let help = format!("{} (measured by the canary's {} step)", m.name, s.step);
            let labels: Vec<(&str, &str)> = m.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            x.sample(&m.name, &help, &labels, m.value);
        }
    }

    x.render()
}

#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
    index: HashMap<String, usize>,
}

struct Family {
    name: String,
    help: String,
    /// Rendered `{labels}` (or empty) and the value.
    samples: Vec<(String, f64)>,
    seen: HashSet<String>,
}

impl Exposition {
    /// Adds a sample to family `PREFIX + name` (made, with `help`, on its first sample).
    fn sample(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let name = metric_name(name);
        let i = match self.index.get(&name) {
            Some(i) => *i,
            None => {
                self.families.push(Family {
                    name: name.clone(),
                    help: help.to_string(),
                    samples: Vec::new(),
                    seen: HashSet::new(),
                });
                self.index.insert(name, self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let family = &mut self.families[i];
        let labels = render_labels(labels);
        if family.seen.insert(labels.clone()) {
            family.samples.push((labels, value));
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} gauge", f.name);
            for (labels, value) in &f.samples {
                let _ = writeln!(out, "{}{labels} {}", f.name, number(*value));
            }
        }
        out
    }
}

/// `flywheel_canary_` and `name`, with anything outside `[a-zA-Z0-9_:]` as `_`.
fn metric_name(name: &str) -> String {
    let mut out = String::with_capacity(PREFIX.len() + name.len());
    out.push_str(PREFIX);
    out.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }));
    if name.is_empty() {
        out.push_str("unnamed");
    }
    out
}

/// A label name: `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__`-prefixed (reserved).
fn label_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    while out.starts_with("__") {
        out.remove(0);
    }
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "l_");
    }
    out
}

/// `{a="x",b="y"}`, in the order given; a label name met twice (after cleaning) keeps its first
/// value. Empty for no labels.
fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut names = BTreeMap::new();
    let mut out = String::from("{");
    for (k, v) in labels {
        let k = label_name(k);
        if names.insert(k.clone(), ()).is_some() {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    out.push('}');
    out
}

fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(h: &str) -> String {
    h.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture;
    use crate::step::{Metric, StepName};

    const PARSE: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [[s.name, s.labels, repr(float(s.value))] for s in f.samples]})
print(json.dumps(out))
"#;

    type Sample = (String, BTreeMap<String, String>, f64);

    /// Families as prometheus_client reads them: (name, type, help, samples).
    fn parse(text: &str) -> Vec<(String, String, String, Vec<Sample>)> {
        let out = fixture::python("prometheus_client", PARSE, text);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json from python");
        v.as_array()
            .expect("array")
            .iter()
            .map(|f| {
                let samples = f["samples"]
                    .as_array()
                    .expect("samples")
                    .iter()
                    .map(|s| {
                        let labels = s[1]
                            .as_object()
                            .expect("labels")
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().expect("str").to_string()))
                            .collect();
                        (
                            s[0].as_str().expect("name").to_string(),
                            labels,
                            s[2].as_str().expect("value").parse().expect("f64"),
                        )
                    })
                    .collect();
                let str_of = |k: &str| f[k].as_str().expect(k).to_string();
                (str_of("name"), str_of("type"), str_of("help"), samples)
            })
            .collect()
    }

    fn find<'a>(fams: &'a [(String, String, String, Vec<Sample>)], name: &str) -> &'a [Sample] {
        &fams.iter().find(|f| f.0 == name).unwrap_or_else(|| panic!("no family {name}")).3
    }

    fn value(samples: &[Sample], labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        samples.iter().find(|s| s.1 == want).map(|s| s.2)
    }

    #[test]
    fn parses_with_prometheus_client() {
        let run = fixture::run();
        let text = prometheus(&run);
        let fams = parse(&text);

        // One family per name, each a gauge with its help once.
        let mut names: Vec<&str> = fams.iter().map(|f| f.0.as_str()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "a family split in two: {text}");
        assert!(fams.iter().all(|f| f.1 == "gauge"));
        for f in &fams {
            assert_eq!(text.matches(&format!("# HELP {} ", f.0)).count(), 1, "{}", f.0);
            assert_eq!(text.matches(&format!("# TYPE {} gauge\n", f.0)).count(), 1, "{}", f.0);
        }

        assert_eq!(value(find(&fams, "flywheel_canary_success"), &[]), Some(0.0));
        assert_eq!(value(find(&fams, "flywheel_canary_last_run_timestamp_seconds"), &[]), Some(1741064770.0));
        assert_eq!(value(find(&fams, "flywheel_canary_duration_seconds"), &[]), Some(10.0));
        let success = find(&fams, "flywheel_canary_step_success");
        assert_eq!(value(success, &[("step", "bootstrap")]), Some(1.0));
        assert_eq!(value(success, &[("step", "gpu")]), Some(0.0));
        assert_eq!(value(success, &[("step", "queue")]), None, "skipped: no sample");
        let status = find(&fams, "flywheel_canary_step_status");
        assert_eq!(status.len(), 9);
        assert_eq!(value(status, &[("step", "queue"), ("status", "skip")]), Some(1.0));
        assert_eq!(value(status, &[("step", "queue"), ("status", "pass")]), Some(0.0));
        assert_eq!(value(status, &[("step", "gpu"), ("status", "fail")]), Some(1.0));
        assert_eq!(value(find(&fams, "flywheel_canary_step_duration_seconds"), &[("step", "gpu")]), Some(2.5));
        assert_eq!(value(find(&fams, "flywheel_canary_step_required"), &[("step", "queue")]), Some(0.0));

        assert_eq!(value(find(&fams, "flywheel_canary_disk_free_bytes"), &[]), Some(1.5e10));
        // Name sanitised, label value with quotes, backslash, newline and pipe intact.
        let tool = find(&fams, "flywheel_canary_tool_present");
        assert_eq!(value(tool, &[("tool", "a \"quoted\\path\"\nnext | pipe")]), Some(1.0), "{text}");
        let temp = find(&fams, "flywheel_canary_gpu_temperature_celsius");
        assert_eq!(value(temp, &[("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3")]), Some(71.0));
    }

    #[test]
    fn odd_names_values_and_duplicates() {
        let mut run = fixture::passing();
        let m = |name: &str, value: f64, labels: &[(&str, &str)]| Metric {
            name: name.into(),
            value,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        run.steps[0].metrics = vec![
            m("weird name.with-dots/é", f64::NAN, &[("9lives", "x"), ("__reserved", "y"), ("a-b", "1"), ("a_b", "2")]),
            m("inf", f64::INFINITY, &[]),
            m("ninf", f64::NEG_INFINITY, &[]),
            // Collides with the run's own family: the first sample wins.
            m("success", 7.0, &[]),
            m("dup", 1.0, &[("k", "v")]),
            m("dup", 2.0, &[("k", "v")]),
        ];
        let mut later = run.steps[0].clone();
        later.step = StepName::Cache;
        later.metrics = vec![m("dup", 3.0, &[("k", "w")]), m("inf", 1.0, &[("k", "v")])];
        run.steps.push(later);
        let text = prometheus(&run);
        let fams = parse(&text);
        let weird = find(&fams, "flywheel_canary_weird_name_with_dots__");
        assert_eq!(weird.len(), 1);
        assert!(weird[0].2.is_nan());
        let want: BTreeMap<String, String> = [("l_9lives", "x"), ("_reserved", "y"), ("a_b", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(weird[0].1, want);
        assert_eq!(value(find(&fams, "flywheel_canary_inf"), &[]), Some(f64::INFINITY));
        assert_eq!(value(find(&fams, "flywheel_canary_inf"), &[("k", "v")]), Some(1.0), "samples grouped: {text}");
        assert_eq!(value(find(&fams, "flywheel_canary_ninf"), &[]), Some(f64::NEG_INFINITY));
        assert_eq!(find(&fams, "flywheel_canary_success").len(), 1);
        assert_eq!(value(find(&fams, "flywheel_canary_success"), &[]), Some(1.0));
        let dup = find(&fams, "flywheel_canary_dup");
        assert_eq!(dup.len(), 2);
        assert_eq!(value(dup, &[("k", "v")]), Some(1.0));
        assert_eq!(value(dup, &[("k", "w")]), Some(3.0));
        // Grouped: a family's lines are contiguous in the text.
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("flywheel_canary_inf")).collect();
        let first = text.find("\nflywheel_canary_inf ").expect("inf");
        let block = &text[first + 1..];
        assert!(block.starts_with(&lines.join("\n")), "{text}");
    }
}

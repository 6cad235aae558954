//! Lane specs (TOML), as `flywheel lane check/render` read them (`LaneSpec::parse`, then
//! `validate::validate`):
//! - parsing and validation never panic, and every problem names a field, what is wrong and a fix;
//! - any parsed spec's TOML (`to_toml`, what `lane fmt` writes) parses back to an equal spec;
//! - a valid spec renders (twice, to the same bytes) to `values.yaml`, `NAME-canary.yml` and
//!   `README.md`, and each YAML file reads back as exactly the typed values it was rendered
//!   from: nothing from the spec (a chart version, a name) breaks out of the comment header or
//!   out of a YAML string.
#![no_main]

use flywheel_lane::render::{self, values, workflow};
use flywheel_lane::{validate, LaneSpec};
use libfuzzer_sys::fuzz_target;

fn yaml(name: &str, text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{name} is not YAML: {e}\n{text}"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = LaneSpec::parse(text, "lane.toml") else { return };

    let toml = spec.to_toml().expect("a parsed spec serializes");
    let again = LaneSpec::parse(&toml, "formatted")
        .unwrap_or_else(|e| panic!("the spec's own TOML does not parse: {e}\n{toml}"));
    assert_eq!(again, spec, "the spec's own TOML reads back different:\n{toml}");

    let problems = match validate::validate(&spec) {
        Ok(()) => Vec::new(),
        Err(problems) => problems,
    };
    for p in &problems {
        assert!(!p.field.is_empty() && !p.problem.is_empty() && !p.fix.is_empty(), "{p:?}");
    }
    assert_eq!(validate::validate(&again).is_ok(), problems.is_empty());
    if !problems.is_empty() {
        assert!(render::render(&spec).is_err(), "a spec with problems rendered");
        return;
    }

    let files = render::render(&spec).unwrap_or_else(|e| panic!("a valid spec does not render: {e}"));
    assert_eq!(render::render(&spec).ok().as_ref(), Some(&files), "rendering is not deterministic");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    let workflow_name = workflow::file_name(&spec);
    assert_eq!(names, ["values.yaml", workflow_name.as_str(), "README.md"]);
    assert!(!workflow_name.contains('/') && !workflow_name.starts_with('.'), "{workflow_name:?}");
    for f in &files {
        let text = std::str::from_utf8(&f.bytes).expect("rendered files are UTF-8");
        match f.name.as_str() {
            "values.yaml" => {
                let expected = serde_yaml_ng::to_value(values::values(&spec)).expect("values");
                assert_eq!(yaml(&f.name, text), expected, "values.yaml says more or other than its values");
            }
            "README.md" => {}
            _ => {
                let expected = serde_yaml_ng::to_value(workflow::workflow(&spec)).expect("workflow");
                assert_eq!(yaml(&f.name, text), expected, "the workflow says more or other than its values");
            }
        }
    }
});

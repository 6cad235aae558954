//! The lane's canary workflow: the canary issue's workflow (.github/workflows/gpu-canary.yml)
//! with the lane's label, schedule and time limit, running the canary the image carries, so
//! the repository it lives in needs no checkout of flywheel.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::LaneSpec;

#[derive(Serialize)]
pub struct Workflow {
    name: String,
    on: On,
    permissions: BTreeMap<&'static str, &'static str>,
    concurrency: Concurrency,
    jobs: BTreeMap<&'static str, Job>,
}

#[derive(Serialize)]
struct On {
    schedule: Vec<Cron>,
    workflow_dispatch: Dispatch,
}

#[derive(Serialize)]
struct Cron {
    cron: String,
}

#[derive(Serialize)]
struct Dispatch {
    inputs: BTreeMap<&'static str, Input>,
}

#[derive(Serialize)]
struct Input {
    description: String,
    required: bool,
    default: String,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct Concurrency {
    group: String,
    #[serde(rename = "cancel-in-progress")]
    cancel_in_progress: bool,
}

#[derive(Serialize)]
struct Job {
    name: String,
    #[serde(rename = "if")]
    condition: &'static str,
    #[serde(rename = "runs-on")]
    runs_on: String,
    #[serde(rename = "timeout-minutes")]
    timeout_minutes: u32,
    env: BTreeMap<&'static str, String>,
    steps: Vec<Step>,
}

#[derive(Serialize)]
struct Step {
    name: &'static str,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    condition: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shell: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uses: Option<&'static str>,
    #[serde(rename = "with", skip_serializing_if = "Option::is_none")]
    with: Option<BTreeMap<&'static str, String>>,
}

/// The file name the workflow is rendered to (and committed under .github/workflows/).
pub fn file_name(spec: &LaneSpec) -> String {
    format!("{}-canary.yml", spec.name)
}

const RUN: &str = r#"args=(--report-dir canary-report --cache "$FLYWHEEL_CACHE_URL" --trusted-key "$FLYWHEEL_CACHE_PUBLIC_KEY")
if [ -n "${CANARY_REQUIRE:-}" ]; then args+=(--require "$CANARY_REQUIRE"); fi
# With a canary token, the run goes to the status page of the cache's server as well.
if [ -n "${FLYWHEEL_CANARY_TOKEN:-}" ]; then args+=(--publish "${FLYWHEEL_CACHE_URL%/*}"); fi
flywheel canary "${args[@]}"
"#;

pub fn workflow(spec: &LaneSpec) -> Workflow {
    let default_require = spec.canary.require.join(",");
    let name = format!("{}-canary", spec.name);
    let env = BTreeMap::from([
        // The queue step reads this run's jobs (created_at, started_at) from the API.
        ("GITHUB_TOKEN", "${{ github.token }}".to_string()),
        ("CANARY_REQUIRE", format!("${{{{ inputs.require || '{default_require}' }}}}")),
        // The status page (flywheel canary --publish): the lane's runs under its name, sent
        // with a canary-scope token from the repository's secrets, when there is one.
        ("FLYWHEEL_LANE", spec.name.clone()),
        ("FLYWHEEL_CANARY_TOKEN", "${{ secrets.FLYWHEEL_CANARY_TOKEN }}".to_string()),
    ]);
    let upload = BTreeMap::from([
        ("name", format!("{name}-${{{{ github.run_id }}}}-${{{{ github.run_attempt }}}}")),
        ("path", "canary-report/".to_string()),
        ("if-no-files-found", "warn".to_string()),
        ("retention-days", "30".to_string()),
    ]);
    Workflow {
        name: name.clone(),
        on: On {
            schedule: vec![Cron { cron: spec.canary.schedule.clone() }],
            workflow_dispatch: Dispatch {
                inputs: BTreeMap::from([(
                    "require",
                    Input {
                        description: "Steps that must pass (comma-separated, or all); empty: the lane's default".into(),
                        required: false,
                        default: default_require.clone(),
                        kind: "string",
                    },
                )]),
            },
        },
        permissions: BTreeMap::from([("contents", "read"), ("actions", "read")]),
        // One canary at a time on the lane; a new one waits instead of cancelling one in progress.
        concurrency: Concurrency { group: name.clone(), cancel_in_progress: false },
        jobs: BTreeMap::from([(
            "canary",
            Job {
                name: format!("canary on {}", spec.name),
                // The lane's runners never run code from forks (no pull_request trigger either).
                condition: "github.event_name != 'pull_request'",
                runs_on: spec.scale_set_name().to_string(),
                timeout_minutes: spec.canary.timeout_minutes,
                env,
                steps: vec![
                    Step {
                        name: "canary",
                        condition: None,
                        shell: Some("bash"),
                        run: Some(RUN.to_string()),
                        uses: None,
                        with: None,
                    },
                    Step {
                        name: "upload the canary's reports",
                        condition: Some("always()"),
                        shell: None,
                        run: None,
                        uses: Some("actions/upload-artifact@v4"),
                        with: Some(upload),
                    },
                ],
            },
        )]),
    }
}

//! The lane spec: one TOML file that says what a shared GPU lane is (docs/lane.md has the
//! schema). Parsing only checks the shape; [`crate::validate`] checks the meaning.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::LaneError;

/// The chart the values are rendered for, and the only major.minor they are checked against.
pub const CHART: &str = "gha-runner-scale-set";
pub const CHART_VERSION: &str = "0.13.1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneSpec {
    /// The lane's name (`honey-gpu`): the Helm release, and the prefix of what it renders.
    pub name: String,
    /// Capability labels. The first is the runner scale set's name, which is what workflows
    /// put in `runs-on` (chart 0.13 registers a scale set under its name only).
    pub labels: Vec<String>,
    /// Words a label may be made of besides the built-in capability words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capability_words: Vec<String>,
    /// The Kubernetes namespace of the runners (ARC's `arc-runners`).
    pub namespace: String,
    /// The chart version the values are for.
    #[serde(default = "default_chart_version")]
    pub chart_version: String,
    pub github: Github,
    pub image: Image,
    pub runners: Runners,
    pub volumes: Volumes,
    pub cache: Cache,
    pub canary: Canary,
    pub owners: Owners,
}

fn default_chart_version() -> String {
    CHART_VERSION.to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Github {
    /// The organization or repository the runners register with.
    pub config_url: String,
    /// The Kubernetes secret holding the GitHub App's or PAT's credentials (ARC reads it).
    pub config_secret: SecretSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_group: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// `REGISTRY/REPO@sha256:...`: pinned by digest.
    pub reference: String,
    /// The NVIDIA driver version the image's userspace is for; must equal its
    /// `dev.flywheel.driver.version` label and the nodes' kernel module.
    pub driver_version: String,
    /// `lane check` and the canary warn when the image's runner was released more days ago
    /// than this (default 25: GitHub's 30, less a rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_max_age_days: Option<u32>,
    /// ... or is older than this version (default 2.329.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_min_version: Option<String>,
}

impl Image {
    /// The runner policy this spec sets; its version was validated.
    pub fn runner_policy(&self) -> Result<crate::runner::RunnerPolicy, crate::runner::RunnerError> {
        let mut p = crate::runner::RunnerPolicy::default();
        if let Some(days) = self.runner_max_age_days {
            p.max_age_days = days;
        }
        if let Some(v) = &self.runner_min_version {
            p.min_version = crate::runner::RunnerVersion::parse(v)?;
        }
        Ok(p)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runners {
    pub min: u32,
    pub max: u32,
    pub gpus: u32,
    /// The extended resource the GPUs are requested as.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
    pub runtime_class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory requests of the runner container (`cpu = "4"`, `memory = "16Gi"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// Extra environment for jobs. Never secrets: those come from `[cache]`'s secret sources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A CA the jobs trust beside the image's bundle (an internal CA), from a ConfigMap the
    /// runner pod mounts: the image's run.sh adds it to the bundle jobs use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_ca: Option<ExtraCa>,
    /// ARC's container mode. `kubernetes`: a job's `container:` and services run in pods of their
    /// own, made by the container hooks the image carries at /home/runner/k8s/index.js
    /// (mkRunnerImage's containerHooks); absent: steps run in the runner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_mode: Option<ContainerMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerMode {
    Kubernetes,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraCa {
    /// The ConfigMap, in the runners' namespace.
    pub config_map: String,
    /// Its key holding the PEM certificate(s).
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    pub key: String,
    #[serde(default = "default_operator")]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
}

fn default_operator() -> String {
    "Exists".to_string()
}

/// One volume per runner for each of /nix, `_work` and `.cache`: without them everything lands
/// in the container's writable layer, which the kubelet evicts at its limit (16Gi on honey).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volumes {
    pub nix: Volume,
    pub work: Volume,
    pub cache: Volume,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// A Kubernetes quantity (`60Gi`).
    pub size: String,
    /// With a storage class: a generic ephemeral volume (a PVC that lives and dies with the
    /// pod). Without: an `emptyDir` with this size limit on the node's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

impl Volumes {
    /// (name, mount path, volume) for each, in the order they are rendered.
    pub fn all(&self) -> [(&'static str, &'static str, &Volume); 3] {
        [
            ("nix", "/nix", &self.nix),
            ("work", "/home/runner/_work", &self.work),
            ("cache", "/home/runner/.cache", &self.cache),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// The cache's URL as Nix substitutes from it: `http://HOST[:PORT]/NAME`.
    pub url: String,
    /// The cache's name on its server (the URL's last segment).
    pub name: String,
    pub public_key: SecretSource,
    pub push_token: SecretSource,
}

/// Where a secret comes from: a key of a Kubernetes secret. A plain string in its place is an
/// inline secret, which the spec refuses (see [`crate::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SecretSource {
    Secret(SecretRef),
    Inline(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Cron, in UTC, five fields.
    pub schedule: String,
    #[serde(default = "default_timeout")]
    pub timeout_minutes: u32,
    /// Steps that must pass; empty: the canary's default (every step but queue).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
}

fn default_timeout() -> u32 {
    20
}

/// Who owns each part of the lane contract (docs/lane.md): a team, a person, a handle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    pub bootstrap: String,
    pub cache: String,
    pub traces: String,
    pub queue: String,
    pub cleanup: String,
}

impl Owners {
    pub fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("bootstrap", &self.bootstrap),
            ("cache", &self.cache),
            ("traces", &self.traces),
            ("queue", &self.queue),
            ("cleanup", &self.cleanup),
        ]
    }
}

impl LaneSpec {
    /// Parses a spec's text; `origin` names it in errors. Shape only: see [`Self::load`].
    pub fn parse(text: &str, origin: &str) -> Result<Self, LaneError> {
        toml::from_str(text)
            .map_err(|e| LaneError::Parse { origin: origin.to_string(), why: one_line_toml_error(&e, text) })
    }

    /// Reads, parses and validates a spec file.
    pub fn load(path: &Path) -> Result<Self, LaneError> {
        let text = std::fs::read_to_string(path).map_err(|e| LaneError::Io { path: path.to_path_buf(), source: e })?;
        let origin = path.display().to_string();
        let spec = Self::parse(&text, &origin)?;
        crate::validate::validate(&spec).map_err(|problems| LaneError::Invalid { origin, problems })?;
        Ok(spec)
    }

    /// The spec as TOML (what `parse` reads back to an equal spec).
    pub fn to_toml(&self) -> Result<String, LaneError> {
        toml::to_string(self).map_err(|e| LaneError::Serialize(e.to_string()))
    }

    /// The scale set's name: the label workflows use in `runs-on`.
    pub fn scale_set_name(&self) -> &str {
        self.labels.first().map_or("", String::as_str)
    }

    /// The image's digest (`sha256:...`), when the reference is pinned.
    pub fn image_digest(&self) -> Option<&str> {
        self.image.reference.rsplit_once('@').map(|(_, d)| d)
    }
}

/// toml's errors span several lines with a caret drawing; one line with the position instead.
fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Any text TOML can hold, quotes, backslashes, newlines and non-ASCII included.
    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9 \"\\\\\n\t'é中/:@.=-]{0,16}"
    }

    fn secret() -> impl Strategy<Value = SecretSource> {
        prop_oneof![
            (text(), proptest::option::of(text()))
                .prop_map(|(secret, key)| SecretSource::Secret(SecretRef { secret, key })),
            text().prop_map(SecretSource::Inline),
        ]
    }

    fn volume() -> impl Strategy<Value = Volume> {
        (text(), proptest::option::of(text())).prop_map(|(size, storage_class)| Volume { size, storage_class })
    }

    prop_compose! {
        fn runners()(min in any::<u32>(), max in any::<u32>(), gpus in any::<u32>(), gpu_resource in text(),
                     runtime_class in text(), priority_class in proptest::option::of(text()),
                     node_selector in proptest::collection::btree_map(text(), text(), 0..3),
                     tolerations in proptest::collection::vec((text(), text(), proptest::option::of(text()), proptest::option::of(text())), 0..3),
                     requests in proptest::collection::btree_map(text(), text(), 0..3),
                     env in proptest::collection::btree_map(text(), text(), 0..3),
                     extra_ca in proptest::option::of((text(), text())),
                     kubernetes in any::<bool>()) -> Runners {
            let tolerations = tolerations.into_iter().map(|(key, operator, value, effect)| Toleration { key, operator, value, effect }).collect();
            let extra_ca = extra_ca.map(|(config_map, key)| ExtraCa { config_map, key });
            let container_mode = kubernetes.then_some(ContainerMode::Kubernetes);
            Runners { min, max, gpus, gpu_resource, runtime_class, priority_class, node_selector, tolerations, requests, env, extra_ca, container_mode }
        }
    }

    prop_compose! {
        fn spec()(name in text(), labels in proptest::collection::vec(text(), 0..4),
                  capability_words in proptest::collection::vec(text(), 0..3), namespace in text(), chart_version in text(),
                  github in (text(), secret(), proptest::option::of(text())), image in (text(), text()),
                  runners in runners(), volumes in (volume(), volume(), volume()),
                  cache in (text(), text(), secret(), secret()),
                  canary in (text(), any::<u32>(), proptest::collection::vec(text(), 0..3)),
                  owners in (text(), text(), text(), text(), text())) -> LaneSpec {
            LaneSpec {
                name, labels, capability_words, namespace, chart_version,
                github: Github { config_url: github.0, config_secret: github.1, runner_group: github.2 },
                image: Image { reference: image.0, driver_version: image.1, runner_max_age_days: None, runner_min_version: None },
                runners,
                volumes: Volumes { nix: volumes.0, work: volumes.1, cache: volumes.2 },
                cache: Cache { url: cache.0, name: cache.1, public_key: cache.2, push_token: cache.3 },
                canary: Canary { schedule: canary.0, timeout_minutes: canary.1, require: canary.2 },
                owners: Owners { bootstrap: owners.0, cache: owners.1, traces: owners.2, queue: owners.3, cleanup: owners.4 },
            }
        }
    }

    proptest! {
        // Whatever the spec holds, valid or not, its TOML reads back to the same spec.
        #[test]
        fn specs_round_trip_through_toml(s in spec()) {
            let text = s.to_toml().expect("serializes");
            prop_assert_eq!(LaneSpec::parse(&text, "spec").expect("parses"), s);
        }

        // min > max is refused naming runners.min, whatever else the spec says.
        #[test]
        fn min_above_max_is_always_refused(s in spec(), a in 0u32..1000, b in 0u32..1000) {
            let mut s = s;
            s.runners.min = a.max(b) + 1;
            s.runners.max = a.min(b);
            let problems = crate::validate::validate(&s).expect_err("refused");
            prop_assert!(problems.iter().any(|p| p.field == "runners.min"));
        }
    }

    #[test]
    fn toml_errors_are_one_line_with_the_position() {
        let e = LaneSpec::parse("name = \"x\"\nlabels = [\n", "lane.toml").expect_err("bad TOML");
        let s = e.to_string();
        assert!(s.starts_with("lane.toml: line 3, column 1:"), "{s}");
        assert!(!s.contains('\n'), "{s}");
    }
}

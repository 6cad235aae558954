//! Helm values for actions-runner-controller's `gha-runner-scale-set` chart (0.13.x), where
//! `template.spec` is a plain Kubernetes pod spec. Typed, so the field order is the one a
//! person reads top to bottom and the bytes are the same on every render.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::spec::{ContainerMode, LaneSpec, SecretSource, Volume};

/// Where the image keeps the hooks (nix/lib's mkRunnerImage).
pub const HOOK_STARTED: &str = "/home/runner/hooks/job-started.sh";
pub const HOOK_COMPLETED: &str = "/home/runner/hooks/job-completed.sh";
pub const HOOK_SEED: &str = "/home/runner/hooks/seed-nix.sh";
/// The runner user ARC's own image uses, and mkRunnerImage's.
pub const RUNNER_UID: u32 = 1001;
/// Where the seed container mounts the lane's /nix volume.
const SEED_MOUNT: &str = "/nix-volume";
/// Where the lane's extra CA is mounted; the image's run.sh reads `FLYWHEEL_EXTRA_CA` there.
const EXTRA_CA_MOUNT: &str = "/etc/flywheel/extra-ca";
/// Where the image keeps the container hooks for kubernetes mode (mkRunnerImage's
/// containerHooks), as the actions-runner image does.
pub const CONTAINER_HOOKS: &str = "/home/runner/k8s/index.js";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Values {
    github_config_url: String,
    github_config_secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_group: Option<String>,
    runner_scale_set_name: String,
    /// Labels besides the name: read by chart 0.14 and later (on GitHub Enterprise Server with
    /// custom scale set labels on); 0.13 registers the name alone, and ignores this key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scale_set_labels: Vec<String>,
    min_runners: u32,
    max_runners: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_mode: Option<ContainerModeValues>,
    template: Template,
}

/// ARC's `containerMode`: with `kubernetes`, the chart gives the runner pods a service account
/// allowed to make the job's pods, and the hooks mount the work volume's claim into them.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerModeValues {
    #[serde(rename = "type")]
    kind: String,
    kubernetes_mode_work_volume_claim: serde_json::Value,
}

#[derive(Serialize)]
struct Template {
    metadata: Metadata,
    spec: PodSpec,
}

#[derive(Serialize)]
struct Metadata {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    runtime_class_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority_class_name: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    node_selector: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tolerations: Vec<serde_json::Value>,
    security_context: serde_json::Value,
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    volumes: Vec<serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    name: String,
    image: String,
    image_pull_policy: String,
    command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<serde_json::Value>,
    volume_mounts: Vec<serde_json::Value>,
}

fn secret_env(name: &str, source: &SecretSource) -> serde_json::Value {
    match source {
        SecretSource::Secret(r) => serde_json::json!({
            "name": name,
            "valueFrom": { "secretKeyRef": { "name": r.secret, "key": r.key.clone().unwrap_or_default() } }
        }),
        // Validation refuses inline values before anything is rendered.
        SecretSource::Inline(_) => serde_json::json!({ "name": name, "value": "" }),
    }
}

fn plain_env(name: &str, value: &str) -> serde_json::Value {
    serde_json::json!({ "name": name, "value": value })
}

fn volume(name: &str, v: &Volume) -> serde_json::Value {
    match &v.storage_class {
        // A generic ephemeral volume: a claim made for the pod and deleted with it.
        Some(class) => serde_json::json!({
            "name": name,
            "ephemeral": { "volumeClaimTemplate": { "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": class,
                "resources": { "requests": { "storage": v.size } }
            } } }
        }),
        None => serde_json::json!({ "name": name, "emptyDir": { "sizeLimit": v.size } }),
    }
}

pub fn values(spec: &LaneSpec) -> Values {
    let r = &spec.runners;
    let digest = spec.image_digest().unwrap_or_default().to_string();
    let mut env = vec![
        plain_env("FLYWHEEL_LANE", &spec.name),
        plain_env("FLYWHEEL_IMAGE_DIGEST", &digest),
        plain_env("FLYWHEEL_DRIVER_VERSION", &spec.image.driver_version),
        plain_env("FLYWHEEL_CACHE_URL", &spec.cache.url),
        secret_env("FLYWHEEL_CACHE_PUBLIC_KEY", &spec.cache.public_key),
        secret_env("FLYWHEEL_CACHE_TOKEN", &spec.cache.push_token),
        // Nix reads extra settings from NIX_CONFIG; $(VAR) is expanded by the kubelet from the
        // variables above it, so the key never appears in the values.
        plain_env(
            "NIX_CONFIG",
            &format!(
                "extra-substituters = {}\nextra-trusted-public-keys = $(FLYWHEEL_CACHE_PUBLIC_KEY)",
                spec.cache.url
            ),
        ),
        plain_env("ACTIONS_RUNNER_HOOK_JOB_STARTED", HOOK_STARTED),
        plain_env("ACTIONS_RUNNER_HOOK_JOB_COMPLETED", HOOK_COMPLETED),
    ];
    env.extend(r.env.iter().map(|(k, v)| plain_env(k, v)));
    if r.extra_ca.is_some() {
        env.push(plain_env("FLYWHEEL_EXTRA_CA", &format!("{EXTRA_CA_MOUNT}/ca.crt")));
    }
    // Kubernetes mode, as ARC's docs set it for a runner container of one's own: the hooks, the
    // pod they make job pods beside, and steps outside a `container:` still on the runner
    // (unless the spec's env says otherwise).
    let kubernetes = r.container_mode == Some(ContainerMode::Kubernetes);
    if kubernetes {
        env.push(plain_env("ACTIONS_RUNNER_CONTAINER_HOOKS", CONTAINER_HOOKS));
        env.push(serde_json::json!({
            "name": "ACTIONS_RUNNER_POD_NAME",
            "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } }
        }));
        if !r.env.contains_key("ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER") {
            env.push(plain_env("ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER", "false"));
        }
    }
    // The spec's runner policy, for the canary that runs in these pods (as `lane check` uses it).
    if let Some(days) = spec.image.runner_max_age_days {
        env.push(plain_env("FLYWHEEL_RUNNER_MAX_AGE_DAYS", &days.to_string()));
    }
    if let Some(v) = &spec.image.runner_min_version {
        env.push(plain_env("FLYWHEEL_RUNNER_MIN_VERSION", v));
    }

    let mut requests = serde_json::Map::new();
    for (k, v) in &r.requests {
        requests.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let gpus = serde_json::Value::String(r.gpus.to_string());
    let mut resources = serde_json::json!({ "limits": { r.gpu_resource.clone(): gpus } });
    if !requests.is_empty() {
        resources["requests"] = serde_json::Value::Object(requests);
    }

    let mut mounts: Vec<serde_json::Value> = spec
        .volumes
        .all()
        .iter()
        .map(|(name, path, _)| serde_json::json!({ "name": name, "mountPath": path }))
        .collect();
    if r.extra_ca.is_some() {
        mounts.push(serde_json::json!({ "name": "extra-ca", "mountPath": EXTRA_CA_MOUNT, "readOnly": true }));
    }
    let runner = Container {
        name: "runner".into(),
        image: spec.image.reference.clone(),
        image_pull_policy: "IfNotPresent".into(),
        command: vec!["/home/runner/run.sh".into()],
        env,
        resources: Some(resources),
        volume_mounts: mounts,
    };
    let seed = Container {
        name: "seed-nix".into(),
        image: spec.image.reference.clone(),
        image_pull_policy: "IfNotPresent".into(),
        // `flywheel lane seed-nix` through the image's script (mkRunnerImage), so the values need
        // not know where flywheel is in the image's store.
        command: vec![HOOK_SEED.into(), "--to".into(), SEED_MOUNT.into()],
        env: Vec::new(),
        resources: None,
        volume_mounts: vec![serde_json::json!({ "name": "nix", "mountPath": SEED_MOUNT })],
    };

    let tolerations = r
        .tolerations
        .iter()
        .map(|t| {
            let mut v = serde_json::json!({ "key": t.key, "operator": t.operator });
            if let Some(value) = &t.value {
                v["value"] = value.clone().into();
            }
            if let Some(effect) = &t.effect {
                v["effect"] = effect.clone().into();
            }
            v
        })
        .collect();

    let labels = BTreeMap::from([
        ("app.kubernetes.io/part-of".to_string(), "flywheel".to_string()),
        ("flywheel.dev/lane".to_string(), spec.name.clone()),
    ]);
    let annotations = BTreeMap::from([
        ("flywheel.dev/image".to_string(), spec.image.reference.clone()),
        ("flywheel.dev/driver-version".to_string(), spec.image.driver_version.clone()),
    ]);
    let secret_name = match &spec.github.config_secret {
        SecretSource::Secret(r) => r.secret.clone(),
        SecretSource::Inline(_) => String::new(),
    };

    Values {
        github_config_url: spec.github.config_url.clone(),
        github_config_secret: secret_name,
        runner_group: spec.github.runner_group.clone(),
        runner_scale_set_name: spec.scale_set_name().to_string(),
        scale_set_labels: spec.labels.iter().skip(1).cloned().collect(),
        min_runners: r.min,
        max_runners: r.max,
        container_mode: kubernetes.then(|| ContainerModeValues {
            kind: "kubernetes".into(),
            kubernetes_mode_work_volume_claim: serde_json::json!({
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": spec.volumes.work.storage_class.clone().unwrap_or_default(),
                "resources": { "requests": { "storage": spec.volumes.work.size } }
            }),
        }),
        template: Template {
            metadata: Metadata { labels, annotations },
            spec: PodSpec {
                runtime_class_name: r.runtime_class.clone(),
                priority_class_name: r.priority_class.clone(),
                node_selector: r.node_selector.clone(),
                tolerations,
                // The runner user owns the volumes (fsGroup), and nothing runs as root.
                security_context: serde_json::json!({
                    "runAsUser": RUNNER_UID, "runAsGroup": RUNNER_UID, "fsGroup": RUNNER_UID, "runAsNonRoot": true
                }),
                init_containers: vec![seed],
                containers: vec![runner],
                volumes: spec
                    .volumes
                    .all()
                    .iter()
                    .map(|(name, _, v)| volume(name, v))
                    .chain(r.extra_ca.iter().map(|ca| {
                        serde_json::json!({ "name": "extra-ca", "configMap": {
                            "name": ca.config_map, "items": [{ "key": ca.key, "path": "ca.crt" }]
                        } })
                    }))
                    .collect(),
            },
        },
    }
}

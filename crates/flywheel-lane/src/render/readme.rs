//! The operator's page for one lane: what it is, how to apply it, who owns what, and what to
//! check when it misbehaves. Short on purpose; docs/lane.md is the contract behind it.

use std::fmt::Write;

use crate::spec::{LaneSpec, SecretSource};

fn secret(source: &SecretSource) -> String {
    match source {
        SecretSource::Secret(r) => match &r.key {
            Some(k) => format!("secret `{}`, key `{k}`", r.secret),
            None => format!("secret `{}`", r.secret),
        },
        SecretSource::Inline(_) => "(refused: inline)".into(),
    }
}

pub fn readme(spec: &LaneSpec, spec_id: &str) -> String {
    let r = &spec.runners;
    let label = spec.scale_set_name();
    let workflow = super::workflow::file_name(spec);
    let mut s = String::new();
    let volumes: Vec<String> = spec
        .volumes
        .all()
        .iter()
        .map(|(_, path, v)| match &v.storage_class {
            Some(class) => format!("`{path}` {} ({class}, one claim per runner)", v.size),
            None => format!("`{path}` {} (emptyDir)", v.size),
        })
        .collect();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "<!-- Rendered by `flywheel lane render` from the lane spec {spec_id}. Do not edit: change the spec. -->\n\
# The {name} lane\n\n\
A shared GPU lane: GitHub Actions jobs with `runs-on: {label}` run on its runners, \
{gpus} × `{resource}` each, in namespace `{ns}`, from the image\n\n    {image}\n\n\
with NVIDIA userspace {driver}. The canary (`{workflow}`) proves it healthy every `{cron}` (UTC).\n\n",
        name = spec.name,
        gpus = r.gpus,
        resource = r.gpu_resource,
        ns = spec.namespace,
        image = spec.image.reference,
        driver = spec.image.driver_version,
        cron = spec.canary.schedule,
    );
    let _ = write!(
        s,
        "## Apply\n\n\
1. Check the image carries the driver the spec names: `flywheel lane check SPEC` (reads the registry).\n\
2. The secrets must exist in `{ns}`: the GitHub credentials ({gh}), the cache's public key ({pk}) and push token ({tok}). On the cache server, `flywheel cache info --cache {cache}` prints the key and `flywheel cache token create --cache {cache} --scope write` makes a token; put them in with `kubectl create secret generic`.\n\
3. `helm upgrade --install {name} oci://ghcr.io/actions/actions-runner-controller-charts/{chart} --version {version} --namespace {ns} --values values.yaml`\n\
4. Commit `{workflow}` under `.github/workflows/` of a repository the runners serve, and run it once by hand (workflow_dispatch).\n5. For the lane on the cache server's status page (`GET /` on the server), add a repository secret `FLYWHEEL_CANARY_TOKEN` made with `flywheel cache token create --cache {cache} --scope canary`: each run is then published under the lane's name.\n\n",
        ns = spec.namespace,
        gh = secret(&spec.github.config_secret),
        pk = secret(&spec.cache.public_key),
        tok = secret(&spec.cache.push_token),
        cache = spec.cache.name,
        name = spec.name,
        chart = crate::spec::CHART,
        version = spec.chart_version,
    );
    let extra_labels = if spec.labels.len() > 1 {
        format!(
            " The other labels ({}) are passed as `scaleSetLabels`, which chart 0.14 and later register (GitHub Enterprise Server only); 0.13 registers the name alone.",
            spec.labels[1..].join(", ")
        )
    } else {
        String::new()
    };
    let _ = write!(
        s,
        "## What each runner gets\n\n\
- `runs-on: {label}`: the runner scale set's name, the one label chart {version} registers.{extra_labels}\n\
- {min} to {max} runners (min: kept idle; max: at once); queued jobs wait beyond that.\n\
- runtimeClass `{rc}`{pc}; node selector {ns_sel}; {tol} toleration(s).\n\
- Volumes: {vols}. An init container copies the image's /nix into the /nix volume before the runner starts.\n\
- Cache: `{url}` as a Nix substituter (`NIX_CONFIG`), its public key from the secret; the job-completed hook pushes what the job built, never for pull requests.\n\
- Hooks: job-started checks the image's driver against the node's kernel module and refuses the job on a mismatch; job-completed pushes, removes the job's temporary files and checks the GPU is free. Each prints one line to the job log.\n{kube}\n",
        version = spec.chart_version,
        min = r.min,
        max = r.max,
        rc = r.runtime_class,
        pc = r.priority_class.as_ref().map(|p| format!(", priorityClass `{p}`")).unwrap_or_default(),
        ns_sel = if r.node_selector.is_empty() {
            "none".to_string()
        } else {
            r.node_selector.iter().map(|(k, v)| format!("`{k}={v}`")).collect::<Vec<_>>().join(", ")
        },
        tol = r.tolerations.len(),
        vols = volumes.join(", "),
        url = spec.cache.url,
        kube = if r.container_mode == Some(crate::spec::ContainerMode::Kubernetes) {
            format!(
                "- Container mode `kubernetes`: a job's `container:` and `services:` run in pods of their own, made by the image's container hooks (`{}`) through the service account the chart makes; they mount the runner's work volume claim, and get no GPU unless a hook template asks for one. Other steps run on the runner.\n",
                super::values::CONTAINER_HOOKS
            )
        } else {
            String::new()
        },
    );
    s.push_str("## Who owns what\n\n| Part | Owner | Proven by |\n|---|---|---|\n");
    for (part, who) in spec.owners.all() {
        let proof = match part {
            "bootstrap" => "canary steps bootstrap, gpu, cuda; the job-started hook",
            "cache" => "canary step cache; the job-completed hook's push line",
            "traces" => "the canary's report artifact (events.jsonl, junit.xml, summary.md, canary.prom)",
            "queue" => "canary step queue; the listener's gha_job_startup_duration_seconds",
            _ => "canary step cleanup; the job-completed hook's cleanup line",
        };
        let _ = writeln!(s, "| {part} | {who} | {proof} |");
    }
    let _ = write!(
        s,
        "\n## When it misbehaves\n\n\
- Jobs refused at start with a driver mismatch: the node's kernel module changed. Build the image for that driver, `flywheel lane check`, render, apply; or roll back by pinning the previous digest.\n\
- Jobs queue long: compare the canary's queue step with `maxRunners` ({max}) and the GPUs free on the nodes.\n\
- Pods evicted: a volume is too small; raise its size in the spec.\n\
- Everything else: the canary's last report artifact names the failed step and its remedy.\n",
        max = r.max,
    );
    s
}

//! What a lane spec must mean, beyond its shape. Every problem names the field and the fix, so
//! an operator can act on the message alone; a spec with any problem renders nothing.

use std::fmt;

use crate::labels;
use crate::spec::{LaneSpec, SecretSource, Volume};

/// One thing wrong with a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a TOML path (`image.reference`, `labels[1]`).
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; {}", self.field, self.problem, self.fix)
    }
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Problem { field: field.into(), problem: problem.into(), fix: fix.into() });
    }
}

/// All the problems of a spec, or none.
pub fn validate(spec: &LaneSpec) -> Result<(), Vec<Problem>> {
    let mut p = Problems(Vec::new());
    name(spec, &mut p);
    labels(spec, &mut p);
    dns_label(&mut p, "namespace", &spec.namespace, 63);
    chart(spec, &mut p);
    github(spec, &mut p);
    image(spec, &mut p);
    runners(spec, &mut p);
    volumes(spec, &mut p);
    cache(spec, &mut p);
    canary(spec, &mut p);
    owners(spec, &mut p);
    inline_secrets(spec, &mut p);
    if p.0.is_empty() {
        Ok(())
    } else {
        Err(p.0)
    }
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_label(p: &mut Problems, field: &str, value: &str, max: usize) {
    if !is_dns_label(value, max) {
        p.add(
            field,
            format!("{value:?} is not a Kubernetes name"),
            format!("use at most {max} lowercase letters, digits and '-', starting and ending with a letter or digit"),
        );
    }
}

fn name(spec: &LaneSpec, p: &mut Problems) {
    // ARC names the listener and runner pods after the scale set plus suffixes; 45 leaves room.
    dns_label(p, "name", &spec.name, 45);
}

fn labels(spec: &LaneSpec, p: &mut Problems) {
    if spec.labels.is_empty() {
        p.add("labels", "no labels", "give at least one capability label, such as labels = [\"gpu\"]");
        return;
    }
    for (i, label) in spec.labels.iter().enumerate() {
        let field = format!("labels[{i}]");
        if let Some(why) = labels::repo_named(label, &spec.capability_words) {
            p.add(
                field,
                format!("{label:?} is repo-named ({why}): a shared lane's labels say what its runners offer, so any repository's jobs can ask for them, and a repository's name in a label ties the lane to that repository"),
                format!("use capability words ({}), or list a word in capability_words if it names a capability", labels::EXAMPLES),
            );
        } else if !is_dns_label(label, 45) {
            p.add(field, format!("{label:?} is not a valid label"), "use lowercase letters, digits and '-'");
        }
        if spec.labels[..i].contains(label) {
            p.add(format!("labels[{i}]"), format!("{label:?} is listed twice"), "list each label once");
        }
    }
    for (i, w) in spec.capability_words.iter().enumerate() {
        if w.is_empty() || !w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            p.add(format!("capability_words[{i}]"), format!("{w:?} is not a word"), "use lowercase letters and digits");
        }
    }
}

fn chart(spec: &LaneSpec, p: &mut Problems) {
    if !spec.chart_version.starts_with("0.13.") {
        p.add(
            "chart_version",
            format!("{:?} is not a {} chart version flywheel renders for", spec.chart_version, crate::spec::CHART),
            format!("use {} (0.13.x: template.spec is a plain pod spec)", crate::spec::CHART_VERSION),
        );
    }
}

fn github(spec: &LaneSpec, p: &mut Problems) {
    let url = &spec.github.config_url;
    let path = url.strip_prefix("https://").and_then(|rest| rest.split_once('/')).map(|(_, path)| path);
    if !path.is_some_and(|path| !path.is_empty() && !path.contains(' ')) {
        p.add(
            "github.config_url",
            format!("{url:?} is not a GitHub organization or repository URL"),
            "use https://github.com/ORG (or https://github.com/ORG/REPO)",
        );
    }
    if let Some(group) = &spec.github.runner_group {
        if group.trim().is_empty() {
            p.add("github.runner_group", "empty", "name a runner group, or leave the field out for the default");
        }
    }
}

fn image(spec: &LaneSpec, p: &mut Problems) {
    let reference = &spec.image.reference;
    match flywheel_oci::registry::reference::Reference::parse(reference) {
        Err(e) => p.add("image.reference", format!("{reference:?}: {e}"), "use REGISTRY/REPOSITORY@sha256:DIGEST"),
        Ok(r) if r.digest.is_none() => p.add(
            "image.reference",
            format!("{reference:?} is not pinned by digest: a tag can be moved to another image, so runners would start whatever it points to on the day"),
            "pin it: REGISTRY/REPOSITORY@sha256:DIGEST (`flywheel image push` prints the digest; `skopeo inspect docker://REF` shows it)",
        ),
        Ok(_) => {}
    }
    if spec.image.driver_version.parse::<flywheel_driver::version::DriverVersion>().is_err() {
        p.add(
            "image.driver_version",
            format!("{:?} is not an NVIDIA driver version", spec.image.driver_version),
            "use the version the image's driver layer was built from, such as \"580.159.04\"",
        );
    }
    if let Some(v) = &spec.image.runner_min_version {
        if let Err(e) = crate::runner::RunnerVersion::parse(v) {
            p.add(
                "image.runner_min_version",
                e.to_string(),
                "use a runner version such as \"2.329.0\" (GitHub's minimum: docs/runner-image.md)",
            );
        }
    }
    if spec.image.runner_max_age_days == Some(0) {
        p.add(
            "image.runner_max_age_days",
            "0 would warn about every runner",
            "leave it out (25 days), or give the days a release may age before the image is rebuilt",
        );
    }
}

fn runners(spec: &LaneSpec, p: &mut Problems) {
    let r = &spec.runners;
    if r.gpus == 0 {
        p.add(
            "runners.gpus",
            "0 GPUs per runner: the lane's runners would start without a GPU",
            "request at least 1 (runners.gpus = 1); CPU-only runners belong to another lane",
        );
    }
    if r.max == 0 {
        p.add("runners.max", "0: the scale set could never start a runner", "set runners.max to at least 1");
    }
    if r.min > r.max {
        p.add(
            "runners.min",
            format!("min {} is more than max {}", r.min, r.max),
            "set runners.min to at most runners.max (min is the idle runners kept; max the most at once)",
        );
    }
    if !r.gpu_resource.contains('/') || r.gpu_resource.contains(' ') {
        p.add(
            "runners.gpu_resource",
            format!("{:?} is not an extended resource name", r.gpu_resource),
            "use the device plugin's resource, such as \"nvidia.com/gpu\"",
        );
    }
    dns_label(p, "runners.runtime_class", &r.runtime_class, 63);
    if let Some(pc) = &r.priority_class {
        dns_label(p, "runners.priority_class", pc, 253);
    }
    for (i, t) in r.tolerations.iter().enumerate() {
        let field = format!("runners.tolerations[{i}]");
        if !matches!(t.operator.as_str(), "Exists" | "Equal") {
            p.add(format!("{field}.operator"), format!("{:?}", t.operator), "use \"Exists\" or \"Equal\"");
        }
        if t.operator == "Exists" && t.value.is_some() {
            p.add(
                format!("{field}.value"),
                "a value with operator \"Exists\"",
                "drop the value, or use operator \"Equal\"",
            );
        }
        if let Some(e) = &t.effect {
            if !matches!(e.as_str(), "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                p.add(format!("{field}.effect"), format!("{e:?}"), "use NoSchedule, PreferNoSchedule or NoExecute");
            }
        }
    }
    for (k, v) in &r.requests {
        if !matches!(k.as_str(), "cpu" | "memory" | "ephemeral-storage") {
            p.add(
                format!("runners.requests.{k}"),
                "not a resource flywheel requests",
                "use cpu, memory or ephemeral-storage",
            );
        } else if !is_quantity(v) {
            p.add(
                format!("runners.requests.{k}"),
                format!("{v:?} is not a quantity"),
                "use a quantity such as \"4\", \"500m\" or \"16Gi\"",
            );
        }
    }
    for k in r.env.keys() {
        if k.is_empty()
            || k.as_bytes()[0].is_ascii_digit()
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            p.add(format!("runners.env.{k}"), "not an environment variable name", "use letters, digits and '_'");
        }
        if k.starts_with("FLYWHEEL_")
            || k.starts_with("ACTIONS_RUNNER_HOOK_")
            || k == "NIX_CONFIG"
            || k == "ACTIONS_RUNNER_CONTAINER_HOOKS"
            || k == "ACTIONS_RUNNER_POD_NAME"
        {
            p.add(format!("runners.env.{k}"), "set by the lane itself", "set it through the spec's own fields instead");
        }
    }
    // The hooks mount the runner's work volume claim into each job pod: an emptyDir cannot be.
    if r.container_mode == Some(crate::spec::ContainerMode::Kubernetes) && spec.volumes.work.storage_class.is_none() {
        p.add(
            "runners.container_mode",
            "\"kubernetes\" needs volumes.work.storage_class: the job's pods mount the runner's work volume claim",
            "give volumes.work a storage_class (a ReadWriteOnce class on the GPU nodes), or leave container_mode out",
        );
    }
    if let Some(ca) = &r.extra_ca {
        dns_label(p, "runners.extra_ca.config_map", &ca.config_map, 253);
        // A ConfigMap key: letters, digits, '-', '_' and '.'.
        if ca.key.is_empty()
            || ca.key.len() > 253
            || !ca.key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            p.add(
                "runners.extra_ca.key",
                format!("{:?} is not a ConfigMap key", ca.key),
                "use the key that holds the PEM certificate, such as \"ca.crt\"",
            );
        }
    }
}

/// A Kubernetes quantity: a decimal number with an optional binary or decimal suffix.
pub fn is_quantity(s: &str) -> bool {
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok_and(|n| n > 0.0)
        && matches!(suffix, "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei")
}

fn volumes(spec: &LaneSpec, p: &mut Problems) {
    for (name, mount, v) in spec.volumes.all() {
        volume(p, name, mount, v);
    }
}

fn volume(p: &mut Problems, name: &str, mount: &str, v: &Volume) {
    if !is_quantity(&v.size) || v.size.ends_with('m') {
        p.add(
            format!("volumes.{name}.size"),
            format!("{:?} is not a size", v.size),
            format!("give {mount}'s volume a size such as \"50Gi\""),
        );
    }
    if let Some(sc) = &v.storage_class {
        dns_label(p, &format!("volumes.{name}.storage_class"), sc, 253);
    }
}

fn cache(spec: &LaneSpec, p: &mut Problems) {
    let c = &spec.cache;
    let ok_scheme = c.url.starts_with("http://") || c.url.starts_with("https://");
    if !ok_scheme || c.url.contains(' ') {
        p.add("cache.url", format!("{:?} is not an http(s) URL", c.url), "use http://HOST[:PORT]/CACHE");
    } else if c.url.trim_end_matches('/').rsplit('/').next() != Some(c.name.as_str()) {
        p.add(
            "cache.name",
            format!("{:?} is not the last segment of cache.url {:?}", c.name, c.url),
            "a flywheel cache's URL is http://HOST[:PORT]/NAME: make the two agree",
        );
    }
    if c.name.is_empty() || !c.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        p.add("cache.name", format!("{:?} is not a cache name", c.name), "use letters, digits, '-' and '_'");
    }
}

fn canary(spec: &LaneSpec, p: &mut Problems) {
    let c = &spec.canary;
    let fields: Vec<&str> = c.schedule.split_whitespace().collect();
    let ok = fields.len() == 5 && fields.iter().all(|f| f.bytes().all(|b| b.is_ascii_digit() || b"*/,-".contains(&b)));
    if !ok {
        p.add(
            "canary.schedule",
            format!("{:?} is not a five-field cron schedule", c.schedule),
            "use minute hour day month weekday in UTC, such as \"17 */6 * * *\"",
        );
    }
    if c.timeout_minutes == 0 || c.timeout_minutes > 360 {
        p.add("canary.timeout_minutes", format!("{}", c.timeout_minutes), "use 1 to 360 minutes (GitHub's job limit)");
    }
    const STEPS: [&str; 7] = ["bootstrap", "gpu", "cuda", "vulkan", "cache", "queue", "cleanup"];
    for (i, s) in c.require.iter().enumerate() {
        if s != "all" && !STEPS.contains(&s.as_str()) {
            p.add(
                format!("canary.require[{i}]"),
                format!("{s:?} is not a canary step"),
                format!("use all or {}", STEPS.join(", ")),
            );
        }
    }
}

fn owners(spec: &LaneSpec, p: &mut Problems) {
    for (part, who) in spec.owners.all() {
        if who.trim().is_empty() {
            p.add(
                format!("owners.{part}"),
                "nobody owns it",
                "name the team or person who answers for it (docs/lane.md)",
            );
        }
    }
}

fn inline_secrets(spec: &LaneSpec, p: &mut Problems) {
    let sources = [
        ("github.config_secret", &spec.github.config_secret, None),
        ("cache.public_key", &spec.cache.public_key, Some("public-key")),
        ("cache.push_token", &spec.cache.push_token, Some("push-token")),
    ];
    for (field, source, default_key) in sources {
        match source {
            SecretSource::Inline(_) => p.add(
                field,
                "an inline value: secrets (and the cache's key, which has changed before) come from Kubernetes secrets, never from the spec, which is committed",
                match default_key {
                    Some(k) => format!("give {field} = {{ secret = \"NAME\", key = \"{k}\" }} and put the value in that secret"),
                    None => format!("give {field} = {{ secret = \"NAME\" }}, the secret ARC reads the GitHub App's credentials from"),
                },
            ),
            SecretSource::Secret(r) => {
                dns_label(p, &format!("{field}.secret"), &r.secret, 253);
                match (&r.key, default_key) {
                    (None, Some(_)) => p.add(format!("{field}.key"), "missing", "name the key in the secret that holds the value"),
                    (Some(_), None) => p.add(format!("{field}.key"), "ARC reads the whole secret", "drop the key"),
                    _ => {}
                }
            }
        }
    }
    for (k, v) in &spec.runners.env {
        let upper = k.to_ascii_uppercase();
        let secret_name = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE_KEY", "API_KEY"]
            .iter()
            .any(|w| upper.contains(w));
        if secret_name || looks_like_secret(v) {
            p.add(
                format!("runners.env.{k}"),
                "an inline secret: the spec is committed and rendered into plain values",
                "keep secrets in Kubernetes secrets; the lane passes the cache's key and token from [cache]'s secret sources",
            );
        }
    }
}

/// Values that are credentials whatever their name: GitHub tokens, JWTs, PEM keys, Nix secret keys.
pub fn looks_like_secret(v: &str) -> bool {
    let v = v.trim();
    const PREFIXES: [&str; 7] = ["ghp_", "gho_", "ghs_", "ghu_", "ghr_", "github_pat_", "-----BEGIN"];
    if PREFIXES.iter().any(|p| v.starts_with(p)) || v.contains("PRIVATE KEY") {
        return true;
    }
    if v.starts_with("eyJ") && v.matches('.').count() == 2 {
        return true;
    }
    // A Nix secret key is name:base64 of 64 bytes (88 characters).
    v.split_once(':').is_some_and(|(name, b64)| {
        !name.is_empty() && b64.len() == 88 && b64.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for q in ["1", "500m", "16Gi", "0.5", "60Gi", "2T"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "Gi", "lots", "16 Gi", "16GB", "-1", "0"] {
            assert!(!is_quantity(q), "{q}");
        }
    }

    #[test]
    fn secrets_are_recognised_by_their_shape() {
        let nix_secret = format!("cache-1:{}", "A".repeat(86) + "==");
        for s in [
            "ghp_abc",
            "github_pat_11AB",
            "eyJhbGciOi.eyJzdWIi.c2ln",
            "-----BEGIN OPENSSH PRIVATE KEY-----",
            &nix_secret,
        ] {
            assert!(looks_like_secret(s), "{s}");
        }
        for s in ["gpu", "http://cache:8080/main", "cache-1:6Vw6AfaXtv5dxLH9N1D2gfQgm8O1vzpX4aqdSyzR5Y0=", "eyJ"] {
            assert!(!looks_like_secret(s), "{s}");
        }
    }
}

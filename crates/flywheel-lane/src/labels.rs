//! Capability labels. A shared lane's labels say what its runners offer (`gpu`, `gpu-nvidia`,
//! `nix-heavy`), so any repository's jobs can ask for them; a label named after a repository
//! (`cmux-gpu`) ties the lane to one repository, the debt the team's runner guidance names.
//!
//! A label is capability-named when every '-'-separated word of it is a capability word: the
//! built-in ones below, GPU model and size words (`h100`, `80gb`, `sm90`), or the spec's own
//! `capability_words`.

/// Words that name what a runner offers.
const WORDS: &[&str] = &[
    // lanes the team's guidance names
    "gpu",
    "nix",
    "heavy",
    "dind",
    "kvm",
    "docker",
    "operator",
    // GPU vendors and APIs
    "nvidia",
    "amd",
    "intel",
    "cuda",
    "rocm",
    "vulkan",
    "opencl",
    "mesa",
    "webgpu",
    "dawn",
    "nvml",
    // GPU sharing and size
    "shared",
    "exclusive",
    "mig",
    "multi",
    "single",
    "large",
    "small",
    "medium",
    "xl",
    "big",
    // platform
    "linux",
    "x64",
    "amd64",
    "x86",
    "arm64",
    "aarch64",
    "self",
    "hosted",
    "ephemeral",
    // what a lane is for
    "ci",
    "build",
    "test",
    "bench",
    "canary",
    "lane",
    "runner",
    "runners",
    "compute",
    "graphics",
    "render",
    "ml",
];

/// Examples for messages.
pub const EXAMPLES: &str = "gpu, gpu-nvidia, gpu-nvidia-h100, nix-heavy";

/// Why `label` is repo-named, or None when it is made of capability words.
pub fn repo_named(label: &str, extra: &[String]) -> Option<String> {
    if label.contains('/') {
        return Some("it holds a '/', as OWNER/REPO does".to_string());
    }
    let unknown: Vec<&str> =
        label.split(['-', '_', '.']).filter(|w| !w.is_empty() && !is_capability_word(w, extra)).collect();
    match unknown.as_slice() {
        [] => None,
        [w] => Some(format!("{w:?} is not a capability word")),
        ws => Some(format!(
            "{} are not capability words",
            ws.iter().map(|w| format!("{w:?}")).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn is_capability_word(w: &str, extra: &[String]) -> bool {
    let w = w.to_ascii_lowercase();
    WORDS.contains(&w.as_str()) || extra.iter().any(|e| e.eq_ignore_ascii_case(&w)) || is_hardware_word(&w)
}

/// GPU models (`h100`, `a100`, `l40s`, `rtx4090`, `mi300x`), memory sizes (`80gb`, `24g`),
/// compute capabilities (`sm90`) and counts (`x2`, `2x`).
fn is_hardware_word(w: &str) -> bool {
    let letters_then_digits = |prefixes: &[&str]| {
        prefixes.iter().any(|p| {
            w.strip_prefix(p).is_some_and(|rest| {
                let digits = rest.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && rest.len() - digits.len() <= 2
            })
        })
    };
    let size = ["gb", "g", "gib"]
        .iter()
        .any(|s| w.strip_suffix(s).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())));
    let count = w
        .strip_prefix('x')
        .or_else(|| w.strip_suffix('x'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    size || count
        || letters_then_digits(&["h", "a", "l", "t", "v", "b", "gb", "rtx", "gtx", "mi", "rx", "arc", "sm", "p"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_labels_pass() {
        for l in [
            "gpu",
            "gpu-nvidia",
            "gpu-nvidia-h100",
            "nix-heavy",
            "gpu-80gb",
            "gpu-amd-mi300x",
            "gpu-x2",
            "gpu-sm90",
            "gpu-l40s",
        ] {
            assert_eq!(repo_named(l, &[]), None, "{l}");
        }
    }

    #[test]
    fn repo_named_labels_are_refused_with_the_word() {
        assert_eq!(repo_named("cmux-gpu", &[]).as_deref(), Some("\"cmux\" is not a capability word"));
        assert!(repo_named("jesssullivan/cmux", &[]).is_some_and(|w| w.contains("'/'")));
        assert!(repo_named("gloriousflywheel", &[]).is_some());
        assert!(repo_named("my-app-gpu", &[]).is_some_and(|w| w.contains("\"my\", \"app\"")));
    }

    #[test]
    fn the_spec_can_add_words() {
        assert_eq!(repo_named("gpu-rdma", &["rdma".to_string()]), None);
        assert!(repo_named("gpu-rdma", &[]).is_some());
    }
}

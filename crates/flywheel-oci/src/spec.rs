//! The image spec: the JSON document that says what an image holds, written by the Nix side
//! (`nix/lib` `mkImageSpec`) or assembled from `flywheel image build`'s options. Its schema is
//! documented in docs/image-spec.md; everything is checked here, before anything is built, so
//! a mistake fails with a message that names the field.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::closure::GraphEntry;
use crate::compress::Compression;
use crate::layering::Strategy;
use crate::oci::RuntimeConfig;
use crate::tar::Override;

/// The version of this document's layout. A spec of another version is refused.
pub const SPEC_VERSION: u32 = 1;
pub const DEFAULT_MAX_LAYERS: usize = 100;
/// overlayfs stacks at most 128 lower directories; Docker and containerd stay below that.
pub const LAYER_LIMIT: usize = 125;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageSpec {
    #[serde(rename = "flywheelImageSpec")]
    pub version: u32,
    /// Repository name, e.g. `flywheel/gpu-runner`: the docker-archive's RepoTags and the SBOM's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The tag in index.json's `org.opencontainers.image.ref.name` (default `latest`).
    #[serde(default = "default_tag")]
    pub tag: String,
    #[serde(default = "default_architecture")]
    pub architecture: String,
    #[serde(default = "default_os")]
    pub os: String,
    /// RFC 3339 UTC; by default the source date epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The mtime of every file in the layers (default: SOURCE_DATE_EPOCH from the environment
    /// of `flywheel image build`, else 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<u64>,
    #[serde(default)]
    pub config: RuntimeConfig,
    /// Annotations of the image manifest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Store paths whose closures the image holds.
    #[serde(default)]
    pub closure_roots: Vec<String>,
    /// The closure as `exportReferencesGraph` gives it; read from the Nix database when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closure_graph: Option<Vec<GraphEntry>>,
    /// Pinned layers, in order after the computed ones.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layering: Option<Strategy>,
    /// `zstd`, `zstd:N`, `gzip`, `gzip:N` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Who owns the store in the image, and whether the image carries a Nix database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nix_store: Option<NixStoreSpec>,
}

/// `nixStore`: for images whose user runs Nix itself (single-user Nix as a non-root user).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NixStoreSpec {
    /// Every entry of the store-path layers (and `/nix`, `/nix/store`) is owned by this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Adds the layer `nix-db`: `/nix/var/nix/{db,gcroots,profiles,temproots}` and
    /// `/nix/.flywheel-registration`, every store path of the image for `nix-store --load-db`.
    #[serde(default)]
    pub registration: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl NixStoreSpec {
    /// The owner as (uid, gid).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner.map(|o| (o.uid, o.gid))
    }
}

/// The layer name of the Nix database layer (`nixStore.registration`).
pub const NIX_DB_LAYER: &str = "nix-db";

/// A pinned layer: either store paths (exactly those, placed under the store directory) or a
/// directory tree placed at `prefix`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LayerSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A driver tree written by `flywheel driver collect`: placed at `/`, its manifest at
    /// /usr/share/flywheel/driver/manifest.json, and the image labelled with its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Where `source` goes in the image (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

impl LayerSpec {
    /// The directory tree the layer copies: its `source` or its `driver` tree.
    pub fn tree(&self) -> Option<&str> {
        self.source.as_deref().or(self.driver.as_deref())
    }
}

fn default_tag() -> String {
    "latest".to_string()
}
fn default_architecture() -> String {
    "amd64".to_string()
}
fn default_os() -> String {
    "linux".to_string()
}

#[derive(Debug, thiserror::Error)]
#[error("image spec: {0}")]
pub struct SpecError(pub String);

impl ImageSpec {
    /// An empty spec of the current version, with the defaults.
    pub fn new() -> Self {
        ImageSpec {
            version: SPEC_VERSION,
            name: None,
            tag: default_tag(),
            architecture: default_architecture(),
            os: default_os(),
            created: None,
            source_date_epoch: None,
            config: RuntimeConfig::default(),
            annotations: BTreeMap::new(),
            closure_roots: Vec::new(),
            closure_graph: None,
            layers: Vec::new(),
            max_layers: None,
            layering: None,
            compression: None,
            nix_store: None,
        }
    }

    /// The owner of the store-path layers' entries, when `nixStore.owner` is set.
    pub fn store_owner(&self) -> Option<(u32, u32)> {
        self.nix_store.and_then(|n| n.owner())
    }

    pub fn nix_registration(&self) -> bool {
        self.nix_store.is_some_and(|n| n.registration)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        // Read the version first, so a newer document gets a message about versions, not fields.
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| SpecError(format!("not JSON: {e}")))?;
        match value.get("flywheelImageSpec").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(SPEC_VERSION) => {}
            Some(v) => {
                return Err(SpecError(format!(
                    "version {v} is not supported (this flywheel reads version {SPEC_VERSION})"
                )))
            }
            None => {
                return Err(SpecError("\"flywheelImageSpec\": 1 is missing: is this a flywheel image spec?".into()))
            }
        }
        let spec: ImageSpec = serde_json::from_value(value).map_err(|e| SpecError(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn compression(&self) -> Result<Compression, SpecError> {
        match &self.compression {
            None => Ok(Compression::default()),
            Some(c) => Compression::parse(c).map_err(|e| SpecError(format!("compression: {e}"))),
        }
    }

    /// Whether the closure must be read from a Nix database: there is no `closureGraph` and the
    /// spec names store paths (roots, pinned paths, or a directory layer inside the store).
    pub fn needs_store_db(&self, store_dir: &str) -> bool {
        let in_store = |s: &str| s.strip_prefix(store_dir).is_some_and(|r| r.starts_with('/'));
        self.closure_graph.is_none()
            && (!self.closure_roots.is_empty()
                || self.layers.iter().any(|l| !l.paths.is_empty() || l.tree().is_some_and(in_store)))
    }

    pub fn max_layers(&self) -> usize {
        self.max_layers.unwrap_or(DEFAULT_MAX_LAYERS)
    }

    /// Every check that needs nothing but the document.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |m: String| Err(SpecError(m));
        if self.version != SPEC_VERSION {
            return err(format!(
                "version {} is not supported (this flywheel reads version {SPEC_VERSION})",
                self.version
            ));
        }
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return err(format!(
                    "name {name:?} is not a lowercase repository name such as \"flywheel/gpu-runner\""
                ));
            }
        }
        if !valid_tag(&self.tag) {
            return err(format!(
                "tag {:?} is not a tag (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')",
                self.tag
            ));
        }
        if !["amd64", "arm64"].contains(&self.architecture.as_str()) {
            return err(format!("architecture {:?} is not supported: use \"amd64\" or \"arm64\"", self.architecture));
        }
        if self.os != "linux" {
            return err(format!("os {:?} is not supported: only \"linux\"", self.os));
        }
        if let Some(created) = &self.created {
            parse_created(created).map_err(SpecError)?;
        }
        self.compression()?;
        let max = self.max_layers();
        if max == 0 || max > LAYER_LIMIT {
            return err(format!("maxLayers {max} is outside 1..={LAYER_LIMIT}"));
        }
        if let Some(bad) = self.config.env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
            return err(format!("config.Env entry {bad:?} is not NAME=VALUE"));
        }
        for (what, value) in [("config.WorkingDir", &self.config.working_dir)] {
            if let Some(v) = value {
                if !v.starts_with('/') {
                    return err(format!("{what} {v:?} is not an absolute path"));
                }
            }
        }
        let mut names = BTreeSet::new();
        for (i, l) in self.layers.iter().enumerate() {
            let what = format!("layers[{i}]");
            if l.name.is_empty() {
                return err(format!("{what}.name is empty"));
            }
            if self.nix_registration() && l.name == NIX_DB_LAYER {
                return err(format!(
                    "layer name {NIX_DB_LAYER:?} is taken by the Nix database layer (nixStore.registration)"
                ));
            }
            if !names.insert(l.name.as_str()) {
                return err(format!("layer name {:?} is used twice", l.name));
            }
            if l.driver.is_some() {
                if l.source.is_some() || !l.paths.is_empty() || l.prefix.is_some() || !l.overrides.is_empty() {
                    return err(format!(
                        "layer {:?}: a driver layer takes no paths, source, prefix or overrides",
                        l.name
                    ));
                }
                if self.layers[..i].iter().any(|o| o.driver.is_some()) {
                    return err(format!("layer {:?}: only one driver layer per image", l.name));
                }
                continue;
            }
            match (&l.source, l.paths.is_empty()) {
                (Some(_), false) => return err(format!("layer {:?} has both paths and a source: give one", l.name)),
                (None, true) => return err(format!("layer {:?} has neither paths nor a source", l.name)),
                (None, false) => {
                    if l.prefix.is_some() || !l.overrides.is_empty() {
                        return err(format!(
                            "layer {:?}: prefix and overrides apply to a source directory only",
                            l.name
                        ));
                    }
                }
                (Some(_), true) => {
                    if let Some(p) = &l.prefix {
                        normalize_prefix(p).map_err(|e| SpecError(format!("layer {:?}: {e}", l.name)))?;
                    }
                    for o in &l.overrides {
                        o.parsed_mode().map_err(|e| SpecError(format!("layer {:?}: {e}", l.name)))?;
                        if !o.path.starts_with('/') {
                            return err(format!("layer {:?}: override path {:?} is not absolute", l.name, o.path));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self::new()
    }
}

/// Lowercase repository path components as in the distribution spec.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|part| {
            !part.is_empty()
                && part
                    .split(['.', '_', '-'])
                    .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        })
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

/// `prefix` as a relative path without `.`/`..`/empty components (`/` gives an empty one).
pub fn normalize_prefix(prefix: &str) -> Result<Vec<u8>, String> {
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} is not absolute"));
    }
    let parts: Vec<&str> = prefix.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("prefix {prefix:?} holds . or .."));
    }
    Ok(parts.join("/").into_bytes())
}

/// Seconds since the epoch of an RFC 3339 timestamp, which must be in UTC (`Z`) so that
/// specs compare byte for byte.
pub fn parse_created(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("created {s:?} is not an RFC 3339 timestamp: {e}"))?;
    if !s.ends_with('Z') {
        return Err(format!("created {s:?} must be in UTC, ending in Z"));
    }
    Ok(t.unix_timestamp())
}

/// RFC 3339 UTC of seconds since the epoch: `1970-01-01T00:00:01Z`.
pub fn format_created(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(epoch).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z"))
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<ImageSpec, SpecError> {
        ImageSpec::from_json(json.to_string().as_bytes())
    }

    #[test]
    fn the_minimal_spec_gets_the_defaults() {
        let s = spec(serde_json::json!({ "flywheelImageSpec": 1 })).unwrap();
        assert_eq!((s.tag.as_str(), s.architecture.as_str(), s.os.as_str()), ("latest", "amd64", "linux"));
        assert_eq!(s.max_layers(), 100);
        assert_eq!(s.compression().unwrap(), Compression::Zstd { level: 3 });
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            (serde_json::json!({}), "flywheelImageSpec"),
            (serde_json::json!({ "flywheelImageSpec": 2 }), "version 2"),
            (serde_json::json!({ "flywheelImageSpec": 1, "nmae": "x" }), "nmae"),
            (serde_json::json!({ "flywheelImageSpec": 1, "config": { "env": [] } }), "env"),
            (serde_json::json!({ "flywheelImageSpec": 1, "config": { "Env": ["PATH"] } }), "NAME=VALUE"),
            (serde_json::json!({ "flywheelImageSpec": 1, "name": "Upper" }), "lowercase"),
            (serde_json::json!({ "flywheelImageSpec": 1, "tag": "-x" }), "tag"),
            (serde_json::json!({ "flywheelImageSpec": 1, "architecture": "x86_64" }), "architecture"),
            (serde_json::json!({ "flywheelImageSpec": 1, "created": "2025-01-01T00:00:00+01:00" }), "UTC"),
            (serde_json::json!({ "flywheelImageSpec": 1, "created": "yesterday" }), "RFC 3339"),
            (serde_json::json!({ "flywheelImageSpec": 1, "maxLayers": 0 }), "maxLayers"),
            (serde_json::json!({ "flywheelImageSpec": 1, "compression": "xz" }), "compression"),
            (serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a" }] }), "neither"),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a", "source": "/x" }, { "name": "a", "source": "/y" }] }),
                "twice",
            ),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a", "source": "/x", "prefix": "usr" }] }),
                "absolute",
            ),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a", "source": "/x", "prefix": "/usr/../etc" }] }),
                "..",
            ),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a", "paths": ["/nix/store/x"], "prefix": "/" }] }),
                "prefix",
            ),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a", "driver": "/x", "source": "/x" }] }),
                "driver layer takes no",
            ),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "layers": [{ "name": "a", "driver": "/x" }, { "name": "b", "driver": "/y" }] }),
                "one driver layer",
            ),
            (serde_json::json!({ "flywheelImageSpec": 1, "nixStore": { "ownr": {} } }), "ownr"),
            (serde_json::json!({ "flywheelImageSpec": 1, "nixStore": { "owner": { "uid": 1 } } }), "gid"),
            (serde_json::json!({ "flywheelImageSpec": 1, "nixStore": { "owner": { "uid": -1, "gid": 1 } } }), "u32"),
            (serde_json::json!({ "flywheelImageSpec": 1, "nixStore": { "registration": "yes" } }), "boolean"),
            (
                serde_json::json!({ "flywheelImageSpec": 1, "nixStore": { "registration": true }, "layers": [{ "name": "nix-db", "source": "/x" }] }),
                "nix-db",
            ),
        ];
        for (json, needle) in cases {
            let e = spec(json.clone()).expect_err(&json.to_string()).to_string();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }

    #[test]
    fn nix_store_is_read() {
        let s = spec(serde_json::json!({ "flywheelImageSpec": 1,
            "nixStore": { "owner": { "uid": 1001, "gid": 1002 }, "registration": true } }))
        .unwrap();
        assert_eq!((s.store_owner(), s.nix_registration()), (Some((1001, 1002)), true));
        let s = spec(serde_json::json!({ "flywheelImageSpec": 1 })).unwrap();
        assert_eq!((s.store_owner(), s.nix_registration()), (None, false));
        assert!(!serde_json::to_string(&s).unwrap().contains("nixStore"));
    }

    #[test]
    fn created_round_trips() {
        assert_eq!(format_created(1), "1970-01-01T00:00:01Z");
        assert_eq!(parse_created(&format_created(1_767_028_467)), Ok(1_767_028_467));
    }
}

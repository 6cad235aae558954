//! `flywheel image push`: an OCI distribution API client (see README.md in this directory).
//!
//! [`push`] sends an image from an OCI layout to a registry: its blobs (skipped when there,
//! mounted from another repository when known to be there, else uploaded), its manifest by tag
//! and by digest, and the SBOM artifact beside it with the referrers tag schema.
//!
//! - [`reference`](mod@reference) parses `HOST[:PORT]/REPO[:TAG][@DIGEST]`
//! - `auth`: Docker's config.json, `WWW-Authenticate` challenges, bearer tokens
//! - [`fetch`]: an image's config by digest, for `flywheel lane check`
//! - `client`: HTTP with retries; `upload`: blobs; `manifest`: manifests and referrers;
//!   `state`: which repository holds which blob, for mounts

mod auth;
mod client;
pub mod fetch;
mod manifest;
pub mod reference;
mod state;
mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, StatusCode};
use serde::Serialize;

use crate::digest::Digest;
use crate::oci::Manifest;
use crate::read::{LayoutImage, ReadError};
use client::{Client, Req};
use flywheel_nix::human_bytes;
use reference::Reference;
use state::BlobState;
use upload::{Blob, Ctx};

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Plain HTTP (and HTTPS without certificate checks).
    pub insecure: bool,
    /// Blobs uploaded at once.
    pub jobs: usize,
    /// Docker's config.json with `auths` (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    pub docker_config: Option<PathBuf>,
    /// Blobs larger than this are uploaded in chunks (PATCH); smaller ones in one PUT.
    pub chunk_size: u64,
    /// Where pushed blobs are remembered, for cross-repository mounts (None: not remembered).
    pub state_dir: Option<PathBuf>,
    /// Attempts per request on 5xx, 429 and connection errors.
    pub retries: u32,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { insecure: false, jobs: 4, docker_config: None, chunk_size: 64 << 20, state_dir: None, retries: 5 }
    }
}

/// What happened to one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobAction {
    /// The registry had it already (HEAD).
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobReport {
    pub digest: Digest,
    pub size: u64,
    pub action: BlobAction,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// `registry/repository:tag` as pushed.
    pub reference: String,
    /// The image manifest's digest.
    pub digest: Digest,
    /// The image's blobs (config first, then layers), in the manifest's order.
    pub blobs: Vec<BlobReport>,
    /// Bytes of the blobs uploaded, the SBOM artifact's included.
    pub bytes_uploaded: u64,
    /// The SBOM artifact's digest, when the layout had one and it was pushed.
    pub sbom: Option<Digest>,
    /// The SBOM artifact's blobs (its empty config and SPDX document), when it was pushed.
    pub sbom_blobs: Vec<BlobReport>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Layout(#[from] ReadError),
    #[error("{}: {why}", path.display())]
    LayoutBlob { path: PathBuf, why: String },
    #[error("bad image reference {reference:?}: {why}")]
    Reference { reference: String, why: String },
    #[error("docker config {}: {why}", path.display())]
    DockerConfig { path: PathBuf, why: String },
    /// The registry answered with an error status (`message`: what its error body said).
    #[error("{what}: registry answered {status} {reason}{}", status_detail(message, *attempts))]
    Status { what: String, status: u16, reason: String, message: String, attempts: u32, retry_after: Option<Duration> },
    /// No answer: the connection failed (after `attempts` tries).
    #[error("{what}: {method} {url}: {why}{}", attempts_detail(*attempts))]
    Connection { what: String, method: String, url: String, why: String, attempts: u32 },
    /// The token server of a registry using bearer tokens refused or failed.
    #[error("{what}: token server {realm}: {why}")]
    Token { what: String, realm: String, why: String },
    /// The registry answered something the distribution API does not allow.
    #[error("{what}: {why}")]
    Protocol { what: String, why: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

fn status_detail(message: &str, attempts: u32) -> String {
    let sep = if message.is_empty() { "" } else { ": " };
    format!("{sep}{message}{}", attempts_detail(attempts))
}

fn attempts_detail(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl RegistryError {
    /// Whether trying again may succeed: no connection, or a 5xx/408/429.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connection { .. } => true,
            RegistryError::Status { status, .. } => StatusCode::from_u16(*status).is_ok_and(client::is_retryable),
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status the registry answered with, for errors that are one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Pushes `image` to `reference` (`HOST[:PORT]/REPO[:TAG][@DIGEST]`). Without a tag or a
/// digest, the tag is the layout's (its `org.opencontainers.image.ref.name`), else `latest`.
///
/// Builds its own tokio runtime: call it from synchronous code, not from inside a runtime.
pub fn push(image: &LayoutImage, reference: &str, opts: &PushOptions) -> Result<PushReport, RegistryError> {
    let started = Instant::now();
    let layout_tag = image.descriptor.annotations.get(crate::oci::annotation::REF_NAME).map(String::as_str);
    let parsed = Reference::parse(reference)
        .map_err(|e| RegistryError::Reference { reference: reference.to_string(), why: e.0 })?
        .or_tag(layout_tag);
    if let Some(d) = parsed.digest {
        if d != image.descriptor.digest {
            return Err(RegistryError::Reference {
                reference: reference.to_string(),
                why: format!("it names digest {d}, but the layout's image is {}", image.descriptor.digest),
            });
        }
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(RegistryError::Other(
            "registry::push was called inside an async runtime; call it from synchronous code (e.g. spawn_blocking)"
                .into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("flywheel-push")
        .build()
        .map_err(|e| RegistryError::Other(format!("starting the async runtime: {e}")))?;
    let mut report = runtime.block_on(push_async(image, &parsed, opts))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn blobs_of(image: &LayoutImage, manifest: &Manifest) -> Vec<Blob> {
    let mut out: Vec<Blob> = Vec::new();
    for d in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if !out.iter().any(|b| b.digest == d.digest) {
            out.push(Blob { digest: d.digest, size: d.size, path: image.blob_path(&d.digest) });
        }
    }
    out
}

fn reports(blobs: &[Blob], actions: &HashMap<Digest, BlobAction>) -> Vec<BlobReport> {
    blobs
        .iter()
        .map(|b| BlobReport {
            digest: b.digest,
            size: b.size,
            action: actions.get(&b.digest).copied().unwrap_or(BlobAction::Existed),
        })
        .collect()
}

fn uploaded_bytes(r: &[BlobReport]) -> u64 {
    r.iter().filter(|b| b.action == BlobAction::Uploaded).map(|b| b.size).sum()
}

async fn push_async(
    image: &LayoutImage,
    reference: &Reference,
    opts: &PushOptions,
) -> Result<PushReport, RegistryError> {
    let config_path = auth::docker_config_path(opts.docker_config.as_deref());
    let creds = match &config_path {
        Some(p) => {
            if opts.docker_config.is_some() && !p.exists() {
                tracing::warn!("{}: no such docker config; pushing without credentials", p.display());
            }
            auth::load_credentials(p, reference)?
        }
        None => None,
    };
    let auth = auth::Auth::new(&reference.registry, creds, config_path, opts.retries);
    let client = Client::new(reference.api_host(), opts.insecure, auth, opts.retries)?;
    ping(&client, reference).await?;

    let state = opts.state_dir.as_deref().map(BlobState::load).unwrap_or_default();
    let ctx = Arc::new(Ctx {
        client,
        registry: reference.registry.clone(),
        repo: reference.repository.clone(),
        chunk_size: opts.chunk_size.max(1),
        state,
    });

    // The image: blobs, then the manifest by tag and by digest.
    let digest = image.descriptor.digest;
    let blobs = blobs_of(image, &image.manifest);
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    tracing::info!("pushing {digest} to {reference}: {} blobs, {}", blobs.len(), human_bytes(total));
    let actions = upload::push_blobs(&ctx, &blobs, opts.jobs).await?;
    let blob_reports = reports(&blobs, &actions);
    let media_type = image.manifest.media_type.clone().unwrap_or_else(|| image.descriptor.media_type.clone());
    if let Some(tag) = &reference.tag {
        let what = format!("pushing manifest {digest} as {}:{tag}", reference.repository);
        manifest::put_manifest(&ctx, tag, &media_type, &image.manifest_bytes, &digest, &what).await?;
    }
    let what = format!("pushing manifest {digest}");
    manifest::put_manifest(&ctx, &digest.to_string(), &media_type, &image.manifest_bytes, &digest, &what).await?;
    tracing::info!("pushed manifest {digest} to {reference}");

    // The SBOM artifact: the image is pushed, so a refusal here is only a warning.
    let (sbom, sbom_blobs) = match &image.sbom {
        Some((desc, bytes)) => match push_sbom(&ctx, image, desc, bytes, opts.jobs).await {
            Ok(r) => (Some(desc.digest), r),
            Err(e) => {
                tracing::warn!("the SBOM artifact {} was not pushed: {e}", desc.digest);
                (None, Vec::new())
            }
        },
        None => (None, Vec::new()),
    };

    if let Some(dir) = &opts.state_dir {
        let mut digests: Vec<Digest> = blobs.iter().map(|b| b.digest).collect();
        digests.extend(sbom_blobs.iter().map(|b| b.digest));
        match BlobState::save_pushed(dir, &reference.registry, &reference.repository, &digests) {
            Ok(p) => tracing::debug!("{}: recorded {} blobs in {}", p.display(), digests.len(), reference.repository),
            Err(e) => tracing::warn!("{}: cannot record pushed blobs: {e}", dir.display()),
        }
    }

    let bytes_uploaded = uploaded_bytes(&blob_reports) + uploaded_bytes(&sbom_blobs);
    Ok(PushReport {
        reference: reference.to_string(),
        digest,
        blobs: blob_reports,
        bytes_uploaded,
        sbom,
        sbom_blobs,
        seconds: 0.0,
    })
}

/// `GET /v2/`: checks the registry answers, and learns how it wants to be authorized.
async fn ping(client: &Client, reference: &Reference) -> Result<(), RegistryError> {
    let what = format!("connecting to registry {}", reference.registry);
    let mut req = Req::new(&what, Method::GET, client.url("/v2/")?, Vec::new());
    req.authorize = false;
    let (resp, attempts) = client.send(&req).await?;
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        let values: Vec<String> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        if client.auth.learn(&values).is_none() {
            tracing::debug!("{what}: 401 without a challenge this client knows: {values:?}");
        }
    } else if client::is_retryable(status) {
        return Err(client.status_error(&what, resp, attempts).await);
    } else if !status.is_success() {
        tracing::debug!("{what}: GET /v2/ answered {status}; going on");
    }
    Ok(())
}

/// Pushes the SBOM artifact manifest (`desc`, `bytes`) and its blobs, then lists it under the
/// image's referrers tag unless the registry indexes referrers itself.
async fn push_sbom(
    ctx: &Arc<Ctx>,
    image: &LayoutImage,
    desc: &crate::oci::Descriptor,
    bytes: &[u8],
    jobs: usize,
) -> Result<Vec<BlobReport>, RegistryError> {
    let what = format!("pushing SBOM artifact {}", desc.digest);
    let artifact: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| RegistryError::Protocol { what: what.clone(), why: format!("not a manifest: {e}") })?;
    let subject = artifact.subject.as_ref().map(|s| s.digest);
    if subject != Some(image.descriptor.digest) {
        return Err(RegistryError::Protocol {
            what,
            why: format!("its subject is {subject:?}, not the image {}", image.descriptor.digest),
        });
    }
    let blobs = blobs_of(image, &artifact);
    let actions = upload::push_blobs(ctx, &blobs, jobs).await?;
    let media_type = artifact.media_type.clone().unwrap_or_else(|| desc.media_type.clone());
    let headers =
        manifest::put_manifest(ctx, &desc.digest.to_string(), &media_type, bytes, &desc.digest, &what).await?;
    if headers.contains_key("oci-subject") {
        tracing::debug!("the registry indexes referrers itself");
    } else {
        let mut referrer = crate::oci::Descriptor::new(&media_type, desc.digest, bytes.len() as u64);
        referrer.artifact_type = artifact
            .artifact_type
            .clone()
            .or_else(|| Some(artifact.config.media_type.clone()).filter(|m| m != crate::oci::media_type::EMPTY))
            .or_else(|| desc.artifact_type.clone());
        referrer.annotations = artifact.annotations.clone();
        manifest::add_to_referrers_tag(ctx, &image.descriptor.digest, &referrer).await?;
    }
    tracing::info!("pushed SBOM artifact {} for {}", desc.digest, image.descriptor.digest);
    Ok(reports(&blobs, &actions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let e = RegistryError::Status {
            what: "pushing blob sha256:ab".into(),
            status: 403,
            reason: "Forbidden".into(),
            message: "DENIED: requested access to the resource is denied".into(),
            attempts: 1,
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "pushing blob sha256:ab: registry answered 403 Forbidden: DENIED: requested access to the resource is denied"
        );
        assert!(!e.is_transient());
        let e = RegistryError::Status {
            what: "x".into(),
            status: 503,
            reason: "Service Unavailable".into(),
            message: String::new(),
            attempts: 3,
            retry_after: None,
        };
        assert_eq!(e.to_string(), "x: registry answered 503 Service Unavailable (gave up after 3 attempts)");
        assert!(e.is_transient());
    }
}

//! Reading an image's config from a registry by digest: what `flywheel lane check` needs to
//! compare a lane's pinned image with its driver label, without pulling any layer.

use reqwest::header::ACCEPT;
use reqwest::{Method, StatusCode};

use super::client::{Client, Req};
use super::reference::Reference;
use super::{auth, RegistryError};
use crate::digest::Digest;
use crate::oci::{media_type, ImageConfig, Manifest};

/// The config of the image `reference` pins by digest, with the manifest's digest (checked
/// against the bytes the registry sent) and the config's bytes.
pub async fn image_config(
    reference: &Reference,
    insecure: bool,
    docker_config: Option<&std::path::Path>,
) -> Result<(Digest, ImageConfig), RegistryError> {
    let Some(digest) = reference.digest else {
        return Err(RegistryError::Reference {
            reference: reference.to_string(),
            why: "no digest: only an image pinned by digest can be checked".into(),
        });
    };
    let config_path = auth::docker_config_path(docker_config);
    let creds = match &config_path {
        Some(p) => auth::load_credentials(p, reference)?,
        None => None,
    };
    let auth = auth::Auth::new(&reference.registry, creds, config_path, 3);
    let client = Client::new(reference.api_host(), insecure, auth, 3)?;
    let scope = vec![format!("repository:{}:pull", reference.repository)];

    let what = format!("fetching manifest {digest} of {}", reference.repository);
    let url = client.url(&format!("/v2/{}/manifests/{digest}", reference.repository))?;
    let accept = [media_type::MANIFEST, media_type::DOCKER_MANIFEST].join(", ");
    let req = Req::new(&what, Method::GET, url, scope.clone()).header(ACCEPT, &accept);
    let bytes = body(&client, &req).await?;
    if Digest::of(&bytes) != digest {
        return Err(RegistryError::Protocol {
            what,
            why: format!("the registry sent a manifest whose digest is {}", Digest::of(&bytes)),
        });
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Protocol {
        what: what.clone(),
        why: format!("not an image manifest (an index or another artifact?): {e}"),
    })?;

    let config_digest = manifest.config.digest;
    let what = format!("fetching config {config_digest} of {}", reference.repository);
    let url = client.url(&format!("/v2/{}/blobs/{config_digest}", reference.repository))?;
    let bytes = body(&client, &Req::new(&what, Method::GET, url, scope)).await?;
    if Digest::of(&bytes) != config_digest {
        return Err(RegistryError::Protocol {
            what,
            why: format!("the registry sent a blob whose digest is {}", Digest::of(&bytes)),
        });
    }
    let config: ImageConfig = serde_json::from_slice(&bytes)
        .map_err(|e| RegistryError::Protocol { what, why: format!("not an image config: {e}") })?;
    Ok((digest, config))
}

async fn body(client: &Client, req: &Req) -> Result<Vec<u8>, RegistryError> {
    let resp = client.send_expect(req, &[StatusCode::OK]).await?;
    let bytes = resp.bytes().await.map_err(|e| RegistryError::Connection {
        what: req.what.clone(),
        method: req.method.to_string(),
        url: req.url.to_string(),
        why: super::client::error_chain(&e),
        attempts: 1,
    })?;
    Ok(bytes.to_vec())
}

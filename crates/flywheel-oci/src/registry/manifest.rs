//! Manifests: PUT as the exact bytes of the layout, and the referrers tag schema (OCI
//! distribution 1.1's fallback for registries without the referrers API).

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use super::client::{Body, Req};
use super::upload::{check_digest_header, Ctx};
use super::RegistryError;
use crate::digest::Digest;
use crate::oci::{media_type, Descriptor};

/// An index larger than this under the referrers tag is refused rather than read.
const MAX_INDEX_BYTES: usize = 4 << 20;

/// PUTs `bytes` as manifest `reference` (a tag or a digest) and checks the digest the registry
/// answers with. Returns the answer's headers.
pub async fn put_manifest(
    ctx: &Ctx,
    reference: &str,
    media_type: &str,
    bytes: &[u8],
    digest: &Digest,
    what: &str,
) -> Result<HeaderMap, RegistryError> {
    let url = ctx.client.url(&format!("/v2/{}/manifests/{reference}", ctx.repo))?;
    let req = Req::new(what, Method::PUT, url, vec![ctx.push_scope()])
        .header(CONTENT_TYPE, media_type)
        .body(Body::Bytes(bytes.to_vec()));
    let resp = ctx.client.send_expect(&req, &[StatusCode::CREATED, StatusCode::OK, StatusCode::ACCEPTED]).await?;
    check_digest_header(what, &resp, digest)?;
    Ok(resp.headers().clone())
}

/// The referrers tag of `subject`: `sha256-<hex>`.
pub fn referrers_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// Adds `referrer` to the index under `subject`'s referrers tag (creating it), unless it is
/// listed there already. Returns whether the index changed.
pub async fn add_to_referrers_tag(ctx: &Ctx, subject: &Digest, referrer: &Descriptor) -> Result<bool, RegistryError> {
    let tag = referrers_tag(subject);
    let what = format!("updating referrers tag {tag}");
    let url = ctx.client.url(&format!("/v2/{}/manifests/{tag}", ctx.repo))?;
    let req = Req::new(&what, Method::GET, url, vec![ctx.push_scope()]).header(ACCEPT, media_type::INDEX);
    let resp = ctx.client.send_expect(&req, &[StatusCode::OK, StatusCode::NOT_FOUND]).await?;
    let existing = if resp.status() == StatusCode::OK {
        let bytes = resp.bytes().await.map_err(|e| RegistryError::Protocol {
            what: what.clone(),
            why: format!("reading the index: {}", super::client::error_chain(&e)),
        })?;
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(RegistryError::Protocol { what, why: format!("the index is {} bytes", bytes.len()) });
        }
        Some(bytes.to_vec())
    } else {
        None
    };
    let Some(updated) = with_referrer(existing.as_deref(), referrer)
        .map_err(|why| RegistryError::Protocol { what: what.clone(), why })?
    else {
        tracing::debug!("{tag} already lists {}", referrer.digest);
        return Ok(false);
    };
    put_manifest(ctx, &tag, media_type::INDEX, &updated, &Digest::of(&updated), &what).await?;
    Ok(true)
}

/// The referrers index `existing` (None: none yet) with `referrer` added; None when it lists
/// `referrer` already. Unknown fields of the index are kept.
pub fn with_referrer(existing: Option<&[u8]>, referrer: &Descriptor) -> Result<Option<Vec<u8>>, String> {
    let mut index: serde_json::Value = match existing {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| format!("the index is not JSON: {e}"))?,
        None => serde_json::json!({ "schemaVersion": 2, "mediaType": media_type::INDEX, "manifests": [] }),
    };
    let obj = index.as_object_mut().ok_or("the index is not a JSON object")?;
    let manifests = obj.entry("manifests").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let list = manifests.as_array_mut().ok_or("the index's manifests is not a list")?;
    let digest = referrer.digest.to_string();
    if list.iter().any(|m| m.get("digest").and_then(|d| d.as_str()) == Some(digest.as_str())) {
        return Ok(None);
    }
    list.push(serde_json::to_value(referrer).map_err(|e| e.to_string())?);
    serde_json::to_vec(&index).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn referrer(bytes: &[u8]) -> Descriptor {
        let mut d = Descriptor::new(media_type::MANIFEST, Digest::of(bytes), bytes.len() as u64);
        d.artifact_type = Some(media_type::SPDX.into());
        d
    }

    #[test]
    fn referrers_index() {
        let (a, b) = (referrer(b"a"), referrer(b"bb"));
        let first = with_referrer(None, &a).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], media_type::INDEX);
        assert_eq!(v["manifests"][0]["digest"], a.digest.to_string());
        assert_eq!(v["manifests"][0]["artifactType"], media_type::SPDX);
        assert_eq!(v["manifests"][0]["size"], 1);
        assert_eq!(with_referrer(Some(&first), &a).unwrap(), None);
        let second = with_referrer(Some(&first), &b).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
        // Unknown fields stay.
        let odd = br#"{"schemaVersion":2,"annotations":{"x":"y"},"manifests":[]}"#;
        let v: serde_json::Value = serde_json::from_slice(&with_referrer(Some(odd), &a).unwrap().unwrap()).unwrap();
        assert_eq!(v["annotations"]["x"], "y");
        assert!(with_referrer(Some(b"[]"), &a).is_err());
        assert!(with_referrer(Some(b"{\"manifests\":3}"), &a).is_err());
        assert_eq!(referrers_tag(&Digest([0xab; 32])), format!("sha256-{}", "ab".repeat(32)));
    }
}

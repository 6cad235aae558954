//! Reading an OCI image layout back: the image a `DIR` or `DIR:TAG` argument names, its
//! manifest and config, and its blobs. Used by `image diff` and `image push`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::oci::{annotation, media_type, Descriptor, Index, Manifest, SBOM_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not an OCI image layout (no oci-layout and index.json)", .0.display())]
    NotALayout(PathBuf),
    #[error("{}: {what} is not valid JSON: {why}", path.display())]
    Json { path: PathBuf, what: String, why: String },
    #[error("{}: no image tagged {tag:?} (tags: {tags})", path.display())]
    NoSuchTag { path: PathBuf, tag: String, tags: String },
    #[error("{}: index.json lists {count} images; name one as DIR:TAG (tags: {tags})", path.display())]
    Ambiguous { path: PathBuf, count: usize, tags: String },
    #[error("{}: blob {digest} does not match its digest", path.display())]
    Corrupt { path: PathBuf, digest: Digest },
    #[error("{}: {digest} is a {media_type}, not an image manifest", path.display())]
    NotAnImage { path: PathBuf, digest: Digest, media_type: String },
}

/// An image in a layout.
#[derive(Clone, Debug)]
pub struct LayoutImage {
    pub dir: PathBuf,
    /// index.json's entry for the image.
    pub descriptor: Descriptor,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// The SBOM artifact manifest flywheel wrote beside the image, if any.
    pub sbom: Option<(Descriptor, Vec<u8>)>,
}

impl LayoutImage {
    /// Opens `DIR` (a layout holding one image) or `DIR:TAG`.
    pub fn open(arg: &str) -> Result<Self, ReadError> {
        let (dir, tag) = split_tag(arg);
        Self::open_dir(&dir, tag.as_deref())
    }

    pub fn open_dir(dir: &Path, tag: Option<&str>) -> Result<Self, ReadError> {
        if !dir.join("oci-layout").is_file() || !dir.join("index.json").is_file() {
            return Err(ReadError::NotALayout(dir.to_path_buf()));
        }
        let index_path = dir.join("index.json");
        let bytes = fs::read(&index_path).map_err(|e| ReadError::Io { path: index_path.clone(), source: e })?;
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| ReadError::Json {
            path: dir.to_path_buf(),
            what: "index.json".into(),
            why: e.to_string(),
        })?;
        let tags: Vec<String> =
            index.manifests.iter().filter_map(|m| m.annotations.get(annotation::REF_NAME).cloned()).collect();
        let tags_text = if tags.is_empty() { "none".to_string() } else { tags.join(", ") };
        let descriptor = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|m| m.annotations.get(annotation::REF_NAME).map(String::as_str) == Some(t))
                .ok_or_else(|| ReadError::NoSuchTag {
                    path: dir.to_path_buf(),
                    tag: t.to_string(),
                    tags: tags_text.clone(),
                })?,
            None if index.manifests.len() == 1 => &index.manifests[0],
            None => {
                return Err(ReadError::Ambiguous {
                    path: dir.to_path_buf(),
                    count: index.manifests.len(),
                    tags: tags_text,
                })
            }
        }
        .clone();
        if descriptor.media_type != media_type::MANIFEST && descriptor.media_type != media_type::DOCKER_MANIFEST {
            return Err(ReadError::NotAnImage {
                path: dir.to_path_buf(),
                digest: descriptor.digest,
                media_type: descriptor.media_type.clone(),
            });
        }
        let manifest_bytes = read_blob(dir, &descriptor.digest)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| ReadError::Json {
            path: dir.to_path_buf(),
            what: format!("manifest {}", descriptor.digest),
            why: e.to_string(),
        })?;
        let sbom = match descriptor.annotations.get(SBOM_ANNOTATION).map(|d| Digest::parse(d)) {
            Some(Ok(d)) => {
                let bytes = read_blob(dir, &d)?;
                let mut desc = Descriptor::new(media_type::MANIFEST, d, bytes.len() as u64);
                desc.artifact_type = Some(media_type::SPDX.to_string());
                Some((desc, bytes))
            }
            _ => None,
        };
        Ok(LayoutImage { dir: dir.to_path_buf(), descriptor, manifest, manifest_bytes, sbom })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.dir, digest)
    }
}

/// `DIR:TAG` -> (DIR, TAG), when what follows the last `:` is a tag and DIR is a layout;
/// otherwise the whole argument is the directory.
pub fn split_tag(arg: &str) -> (PathBuf, Option<String>) {
    if let Some((dir, tag)) = arg.rsplit_once(':') {
        let is_tag = !tag.is_empty() && !tag.contains('/') && tag.len() <= 128;
        if is_tag && !Path::new(arg).join("oci-layout").exists() {
            return (PathBuf::from(dir), Some(tag.to_string()));
        }
    }
    (PathBuf::from(arg), None)
}

pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs/sha256").join(digest.hex())
}

/// A small blob (a manifest or config), checked against its digest.
pub fn read_blob(dir: &Path, digest: &Digest) -> Result<Vec<u8>, ReadError> {
    let path = blob_path(dir, digest);
    let bytes = fs::read(&path).map_err(|e| ReadError::Io { path: path.clone(), source: e })?;
    if Digest::of(&bytes) != *digest {
        return Err(ReadError::Corrupt { path, digest: *digest });
    }
    Ok(bytes)
}

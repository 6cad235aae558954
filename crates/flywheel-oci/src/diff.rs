//! `flywheel image diff A B`: which layers two images share, and what a node that has A
//! downloads to run B.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::digest::Digest;
use crate::read::LayoutImage;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerRef {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSide {
    pub manifest: Digest,
    pub layers: usize,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDiff {
    pub a: ImageSide,
    pub b: ImageSide,
    pub shared_layers: usize,
    pub shared_bytes: u64,
    pub only_in_a: Vec<LayerRef>,
    pub only_in_b: Vec<LayerRef>,
    /// Bytes a node holding A downloads for B: B's layers that A lacks, with B's manifest and config.
    pub download_bytes: u64,
}

pub fn diff(a: &LayoutImage, b: &LayoutImage) -> ImageDiff {
    let set = |img: &LayoutImage| -> BTreeSet<Digest> { img.manifest.layers.iter().map(|l| l.digest).collect() };
    let (sa, sb) = (set(a), set(b));
    let only = |img: &LayoutImage, other: &BTreeSet<Digest>| -> Vec<LayerRef> {
        let mut seen = BTreeSet::new();
        img.manifest
            .layers
            .iter()
            .filter(|l| !other.contains(&l.digest) && seen.insert(l.digest))
            .map(|l| LayerRef { digest: l.digest, size: l.size })
            .collect()
    };
    let side = |img: &LayoutImage| ImageSide {
        manifest: img.descriptor.digest,
        layers: img.manifest.layers.len(),
        bytes: img.manifest.layers.iter().map(|l| l.size).sum(),
    };
    let shared: Vec<&crate::oci::Descriptor> = {
        let mut seen = BTreeSet::new();
        b.manifest.layers.iter().filter(|l| sa.contains(&l.digest) && seen.insert(l.digest)).collect()
    };
    let only_in_b = only(b, &sa);
    let config = if a.manifest.config.digest == b.manifest.config.digest { 0 } else { b.manifest.config.size };
    let manifest = if a.descriptor.digest == b.descriptor.digest { 0 } else { b.descriptor.size };
    ImageDiff {
        a: side(a),
        b: side(b),
        shared_layers: shared.len(),
        shared_bytes: shared.iter().map(|l| l.size).sum(),
        only_in_a: only(a, &sb),
        download_bytes: only_in_b.iter().map(|l| l.size).sum::<u64>() + config + manifest,
        only_in_b,
    }
}

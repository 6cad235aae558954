//! An SPDX 2.3 JSON SBOM of the store paths in an image: one package per store path (name and
//! version parsed from the store name as Nix does, NarHash as its SHA-256 checksum), the
//! references as DEPENDS_ON relationships. It depends only on the closure, not on the image,
//! so the image's config can record its digest.

use serde_json::{json, Value};

use crate::closure::Closure;

/// The name and version of a store name, as Nix's `parseDrvName`: the version starts after
/// the first `-` that is followed by something other than a letter.
pub fn parse_name(name: &str) -> (&str, Option<&str>) {
    let b = name.as_bytes();
    for i in 0..b.len() {
        if b[i] == b'-' && b.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&name[..i], Some(&name[i + 1..]));
        }
    }
    (name, None)
}

/// The SBOM document. `roots` are what the document describes (the closure's roots).
pub fn spdx(closure: &Closure, roots: &[usize], image_name: &str, created: &str) -> Value {
    let id = |i: usize| {
        let base = closure.objects[i].path.to_basename();
        format!("SPDXRef-StorePath-{}", &base[..32])
    };
    let hex = |h: &[u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let packages: Vec<Value> = (0..closure.len())
        .map(|i| {
            let o = &closure.objects[i];
            let (name, version) = parse_name(o.path.name());
            let mut p = json!({
                "SPDXID": id(i),
                "name": name,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "checksums": [{ "algorithm": "SHA256", "checksumValue": hex(&o.nar_hash) }],
                "sourceInfo": format!("Nix store path {} (NAR size {} bytes)", closure.render(i), o.nar_size),
            });
            if let Some(v) = version {
                p["versionInfo"] = json!(v);
            }
            p
        })
        .collect();
    let mut relationships: Vec<Value> = roots
        .iter()
        .map(|&r| json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": id(r) }))
        .collect();
    for (i, o) in closure.objects.iter().enumerate() {
        for &r in &o.references {
            relationships
                .push(json!({ "spdxElementId": id(i), "relationshipType": "DEPENDS_ON", "relatedSpdxElement": id(r) }));
        }
    }
    // A namespace unique to this content: the hash of every path and its NarHash.
    let mut identity = Vec::new();
    for (i, o) in closure.objects.iter().enumerate() {
        identity.extend_from_slice(closure.render(i).as_bytes());
        identity.push(b' ');
        identity.extend_from_slice(&o.nar_hash);
        identity.push(b'\n');
    }
    let namespace = format!(
        "https://flywheel.invalid/spdx/{}-{}",
        image_name.replace('/', "-"),
        crate::digest::Digest::of(&identity).hex()
    );
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_name,
        "documentNamespace": namespace,
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: flywheel-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_as_nix_splits_them() {
        assert_eq!(parse_name("hello-2.12.1"), ("hello", Some("2.12.1")));
        assert_eq!(parse_name("python3-3.11.7-env"), ("python3", Some("3.11.7-env")));
        assert_eq!(parse_name("glibc-2.40-66-bin"), ("glibc", Some("2.40-66-bin")));
        assert_eq!(parse_name("pkg-libc6"), ("pkg-libc6", None));
        assert_eq!(parse_name("nix-support"), ("nix-support", None));
        assert_eq!(parse_name("x-"), ("x-", None));
    }
}

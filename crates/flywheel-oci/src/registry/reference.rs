//! Image references as `image push` takes them: `HOST[:PORT]/REPO[:TAG][@DIGEST]`.
//!
//! As Docker reads them, the first path component is a registry host only when it contains a
//! `.` or a `:` or is `localhost`; otherwise the reference names Docker Hub (`docker.io`) and a
//! one-component repository gets the `library/` prefix.

use std::fmt;

use crate::digest::Digest;

/// Docker Hub's name in references and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` for Docker Hub).
    pub registry: String,
    /// `a/b/c`, lowercase.
    pub repository: String,
    /// The tag, if the reference names one (see [`Reference::or_tag`]).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReferenceError(pub String);

impl Reference {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |why: &str| ReferenceError(why.to_string());
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.contains("://") {
            return Err(bad("a reference has no scheme: write HOST[:PORT]/REPO[:TAG]"));
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|e| ReferenceError(e.to_string()))?;
                (rest, Some(digest))
            }
            None => (s, None),
        };
        // A tag is what follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(ReferenceError(format!(
                    "bad tag {t:?}: up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
                )));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                if !valid_host(first) {
                    return Err(ReferenceError(format!("bad registry host {first:?}")));
                }
                (first.to_string(), rest.to_string())
            }
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        if !valid_repository(&repository) {
            return Err(ReferenceError(format!(
                "bad repository {repository:?}: lowercase letters and digits, separated by '.', '_', '__', '-' or '/'"
            )));
        }
        Ok(Reference { registry, repository, tag: tag.map(str::to_string), digest })
    }

    /// The reference with `tag` when it names neither a tag nor a digest; `tag` is used only
    /// when it is a valid tag, `latest` otherwise.
    pub fn or_tag(mut self, tag: Option<&str>) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(tag.filter(|t| valid_tag(t)).unwrap_or("latest").to_string());
        }
        self
    }

    /// The host (and port) the distribution API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether a key of Docker's config `auths` names this registry (`host`, `host:port`,
    /// `https://host/v1/`, ...).
    pub fn matches_auth_key(&self, key: &str) -> bool {
        let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
        let host = key.split('/').next().unwrap_or(key);
        if self.registry == DOCKER_HUB {
            matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io")
        } else {
            host == self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.strip_prefix('[') {
        // [ipv6]:port
        Some(v6) => match v6.split_once(']') {
            Some((addr, rest)) => {
                if addr.is_empty() || !addr.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
                    return false;
                }
                match rest.strip_prefix(':') {
                    Some(p) => ("x", Some(p)),
                    None if rest.is_empty() => ("x", None),
                    None => return false,
                }
            }
            None => return false,
        },
        None => match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-']);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

/// `component(/component)*`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, 255 bytes at most.
fn valid_repository(r: &str) -> bool {
    r.len() <= 255 && r.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn host_port_repo_tag() {
        let r = p("127.0.0.1:5000/team/runner:v1.2");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/runner");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest, None);
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/runner:v1.2");
    }

    #[test]
    fn default_tag_and_hosts() {
        let r = p("registry.example.org/runner");
        assert_eq!(r.registry, "registry.example.org");
        assert_eq!(r.tag, None);
        assert_eq!(r.clone().or_tag(None).tag.as_deref(), Some("latest"));
        assert_eq!(r.clone().or_tag(Some("v2")).tag.as_deref(), Some("v2"));
        assert_eq!(r.clone().or_tag(Some("not/a tag")).tag.as_deref(), Some("latest"));
        assert_eq!(p("reg.io/a:t").or_tag(Some("v2")).tag.as_deref(), Some("t"));
        let r = p("localhost/a/b/c");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("localhost", "a/b/c"));
        let r = p("localhost:5000/x:y");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("localhost:5000", "x", Some("y")));
        let r = p("[::1]:5000/x");
        assert_eq!(r.registry, "[::1]:5000");
    }

    #[test]
    fn docker_hub() {
        let r = p("ubuntu");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), (DOCKER_HUB, "library/ubuntu"));
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = p("someone/tool:1");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), (DOCKER_HUB, "someone/tool"));
        assert!(r.matches_auth_key("https://index.docker.io/v1/"));
        assert!(r.matches_auth_key("docker.io"));
        assert!(!r.matches_auth_key("ghcr.io"));
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"x");
        let r = p(&format!("reg.io/a@{d}")).or_tag(Some("v1"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, Some(d));
        let r = p(&format!("reg.io:443/a:t@{d}"));
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.digest, Some(d));
        assert_eq!(r.to_string(), format!("reg.io:443/a:t@{d}"));
        assert!(Reference::parse("reg.io/a@sha256:abc").is_err());
    }

    #[test]
    fn auth_keys() {
        let r = p("127.0.0.1:5000/a");
        assert!(r.matches_auth_key("127.0.0.1:5000"));
        assert!(r.matches_auth_key("http://127.0.0.1:5000/v2/"));
        assert!(!r.matches_auth_key("127.0.0.1"));
        assert!(!r.matches_auth_key("127.0.0.1:5001"));
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            "https://reg.io/a",
            "reg.io/A",
            "reg.io/a//b",
            "reg.io/-a",
            "reg.io/a..b",
            "reg.io/a:",
            "reg.io/a:.x",
            "reg.io/a:b/c",
            "reg.io:port/a",
            "reg.io/",
            "reg.io/a:t:u",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Reference::parse("reg.io/a__b.c-d---e/f_g").is_ok());
    }
}

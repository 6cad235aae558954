//! Where a push goes, from the URL a user gives.

use std::path::PathBuf;

use crate::CacheError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `file:///DIR`: a cache in a local directory.
    File(PathBuf),
    /// `http(s)://HOST[:PORT]/CACHE`: a cache on a flywheel server.
    Http(String),
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, CacheError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(CacheError::BadTarget(format!(
                    "{url}: a file:// URL needs an absolute path (file:///var/cache/nix)"
                )));
            }
            if path.contains('?') {
                return Err(CacheError::BadTarget(format!("{url}: store parameters are not supported; use flags")));
            }
            return Ok(Target::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) {
            let cache = rest.trim_end_matches('/').split_once('/').map(|(_, c)| c).unwrap_or("");
            if cache.is_empty() || cache.contains('/') || url.contains('?') {
                return Err(CacheError::BadTarget(format!("{url}: expected http://HOST[:PORT]/CACHE")));
            }
            return Ok(Target::Http(url.trim_end_matches('/').to_string()));
        }
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or(url);
        Err(CacheError::BadTarget(format!(
            "{url}: unsupported cache URL scheme {scheme:?}; use file:///DIR or http://HOST:PORT/CACHE"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_http_urls() {
        assert_eq!(Target::parse("file:///tmp/c").unwrap(), Target::File("/tmp/c".into()));
        assert_eq!(
            Target::parse("http://127.0.0.1:5480/main/").unwrap(),
            Target::Http("http://127.0.0.1:5480/main".into())
        );
        assert!(Target::parse("http://127.0.0.1:5480").is_err());
        assert!(Target::parse("http://h/a/b").is_err());
        assert!(Target::parse("file://relative").is_err());
        assert!(Target::parse("s3://bucket").is_err());
        assert!(Target::parse("/tmp/c").is_err());
    }
}

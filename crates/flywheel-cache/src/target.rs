//! Where a push goes, from the URL a user gives.

use std::path::PathBuf;

use crate::CacheError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `file:///DIR`: a cache in a local directory.
    File(PathBuf),
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
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or(url);
        Err(CacheError::BadTarget(format!("{url}: unsupported cache URL scheme {scheme:?}; use file:///DIR")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_urls_only() {
        assert_eq!(Target::parse("file:///tmp/c").unwrap(), Target::File("/tmp/c".into()));
        assert!(Target::parse("file://relative").is_err());
        assert!(Target::parse("s3://bucket").is_err());
        assert!(Target::parse("/tmp/c").is_err());
    }
}

//! What a request's path names, decided before anything touches the index or the disk: every
//! name the server accepts is checked here, in one pure function the fuzzer drives
//! (fuzz/fuzz_targets/route_names.rs). Anything else is 400 (malformed) or 404 (unknown).

/// Which bytes are in the nix32 alphabet (`0123456789abcdfghijklmnpqrsvwxyz`): a table, since
/// every narinfo request checks 32 of them.
const NIX32: [bool; 256] = {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut table = [false; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = true;
        i += 1;
    }
    table
};

/// The longest path the server looks at: a NAR name is at most 128 bytes, a log's 255.
pub const MAX_PATH: usize = 512;

/// A request path, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Health,
    /// `/` (the page) or `/api/v1/status` (its JSON).
    Status {
        page: bool,
    },
    CanaryRuns,
    Metrics,
    /// `/<cache>` alone: what a person pastes into a browser.
    CacheRoot(&'a str),
    Cache {
        cache: &'a str,
        item: Item<'a>,
    },
}

/// Something under `/<cache>/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item<'a> {
    CacheInfo,
    UpstreamKeys,
    Pins,
    /// `api/v1/pins/<name>` (the pin name is checked by the index, which owns the rule).
    Pin(&'a str),
    Missing,
    /// `<hash>.narinfo`: the 32-character hash part.
    Narinfo(&'a str),
    /// `<hash>.ls`: the listing's file name, and the hash part.
    Listing {
        name: &'a str,
        hash: &'a str,
    },
    /// `log/<drv basename>`: the file name (`log/...`).
    Log(&'a str),
    /// `nar/<name>`: the name after `nar/`.
    Nar(&'a str),
}

/// Why a path names nothing the server has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// 400: the path is malformed.
    Malformed(String),
    /// 404.
    NotFound(String),
}

pub fn is_nix32(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| NIX32[b as usize])
}

/// Parses a request path (without its query).
pub fn parse(path: &str) -> Result<Route<'_>, Refused> {
    if path.len() > MAX_PATH {
        return Err(Refused::Malformed(format!("a path of {} bytes (at most {MAX_PATH})", path.len())));
    }
    match path {
        "/healthz" => return Ok(Route::Health),
        "/" => return Ok(Route::Status { page: true }),
        "/api/v1/status" => return Ok(Route::Status { page: false }),
        "/api/v1/canary/runs" => return Ok(Route::CanaryRuns),
        "/metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (cache, item) = match rest.split_once('/') {
        Some((cache, item)) => (cache, Some(item)),
        None => (rest, None),
    };
    if crate::data_dir::check_cache_name(cache).is_err() {
        return Err(if item.is_some() {
            Refused::Malformed(format!("malformed cache name {:?}", shown(cache)))
        } else {
            Refused::NotFound("not found: the cache's URL is http://HOST:PORT/CACHE".into())
        });
    }
    let Some(item) = item else { return Ok(Route::CacheRoot(cache)) };
    let item = parse_item(item)?;
    Ok(Route::Cache { cache, item: item.ok_or_else(|| Refused::NotFound("not found".into()))? })
}

/// `None`: a well-formed name the server does not serve.
fn parse_item(item: &str) -> Result<Option<Item<'_>>, Refused> {
    let malformed = |what: &str, name: &str| Err(Refused::Malformed(format!("malformed {what} {:?}", shown(name))));
    Ok(Some(match item {
        "" => return Ok(None),
        "nix-cache-info" => Item::CacheInfo,
        "api/v1/upstream-keys" => Item::UpstreamKeys,
        "api/v1/pins" => Item::Pins,
        "api/v1/missing" => Item::Missing,
        _ => {
            if let Some(pin) = item.strip_prefix("api/v1/pins/") {
                Item::Pin(pin)
            } else if let Some(hash) = item.strip_suffix(".narinfo") {
                if !is_nix32(hash, 32) {
                    return malformed("narinfo name", item);
                }
                Item::Narinfo(hash)
            } else if let Some(hash) = item.strip_suffix(".ls") {
                if !is_nix32(hash, 32) {
                    return malformed("listing name", item);
                }
                Item::Listing { name: item, hash }
            } else if let Some(drv) = item.strip_prefix("log/") {
                // A store path's base name, as Nix names build logs.
                let valid = drv.len() > 33
                    && drv.len() <= 255
                    && drv.is_char_boundary(32)
                    && is_nix32(&drv[..32], 32)
                    && drv.as_bytes()[32] == b'-'
                    && drv[33..].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
                    && !drv[33..].starts_with('.');
                if !valid {
                    return malformed("log name", drv);
                }
                Item::Log(item)
            } else if let Some(name) = item.strip_prefix("nar/") {
                let valid = !name.is_empty()
                    && name.len() <= 128
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.')
                    && !name.starts_with('.');
                if !valid {
                    return malformed("NAR name", name);
                }
                Item::Nar(name)
            } else {
                return Ok(None);
            }
        }
    }))
}

/// A name as an error message shows it: at most 80 characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn names_the_server_serves() {
        assert_eq!(parse("/healthz"), Ok(Route::Health));
        assert_eq!(parse("/"), Ok(Route::Status { page: true }));
        assert_eq!(parse("/main"), Ok(Route::CacheRoot("main")));
        let item = |i| Ok(Route::Cache { cache: "main", item: i });
        assert_eq!(parse("/main/nix-cache-info"), item(Item::CacheInfo));
        assert_eq!(parse(&format!("/main/{H}.narinfo")), item(Item::Narinfo(H)));
        let ls = format!("{H}.ls");
        assert_eq!(parse(&format!("/main/{ls}")), item(Item::Listing { name: &ls, hash: H }));
        let log = format!("log/{H}-hello-2.12.drv");
        assert_eq!(parse(&format!("/main/{log}")), item(Item::Log(&log)));
        assert_eq!(parse("/main/nar/abc.nar.zst"), item(Item::Nar("abc.nar.zst")));
        assert_eq!(parse("/main/api/v1/pins/release-24.11"), item(Item::Pin("release-24.11")));
    }

    #[test]
    fn malformed_names_are_400_and_unknown_ones_404() {
        for bad in [
            "/Main/x".to_string(),
            format!("/main/{}.narinfo", &H[1..]),
            "/main/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into(),
            "/main/log/x".into(),
            format!("/main/log/{H}-.hidden"),
            format!("/main/log/{H}-a/../b"),
            "/main/nar/../index.sqlite".into(),
            "/main/nar/".into(),
            "/main/nar/A.nar".into(),
            format!("/main/nar/{}", "a".repeat(129)),
            format!("/{}", "a".repeat(MAX_PATH)),
            // Not a character boundary where the hash part ends.
            format!("/main/log/{}é-x", &H[..31]),
        ] {
            assert!(matches!(parse(&bad), Err(Refused::Malformed(_))), "{bad}");
        }
        for unknown in ["/favicon.ico", "/main/", "/main/robots.txt", "/nix-cache-info.x"] {
            assert!(matches!(parse(unknown), Err(Refused::NotFound(_)) | Ok(Route::CacheRoot(_))), "{unknown}");
        }
        assert!(matches!(parse("/main/robots.txt"), Err(Refused::NotFound(_))));
    }

    #[test]
    fn an_error_shows_a_long_name_cut_short() {
        let Err(Refused::Malformed(m)) = parse(&format!("/main/nar/{}", "é".repeat(200))) else { panic!() };
        assert!(m.chars().count() < 120, "{m}");
    }
}

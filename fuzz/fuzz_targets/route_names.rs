//! Request paths, as the server parses them before anything touches the index or the disk
//! (`server::names::parse`):
//! - never panics, and refuses a path over `MAX_PATH` bytes;
//! - an accepted path is exactly its parts put back together: `/<cache>` or `/<cache>/<item>`;
//! - a cache name passes `check_cache_name` and keeps its rule on its own ([a-z0-9][a-z0-9_-]*,
//!   at most 63 bytes, none of the server's own routes);
//! - every name that becomes a file name (NAR, listing, log) is one path component, never `.`
//!   or `..`, of only the bytes its rule allows: NAR `[a-z0-9.]`, at most 128 bytes, not
//!   starting with `.`; listing `<32 nix32>.ls`; log `log/<32 nix32>-<name>` with a store-path
//!   name of `[A-Za-z0-9+-._?=]`, not starting with `.`, at most 255 bytes; narinfo hash 32 nix32;
//! - a refusal's message is one line, with the name cut short (80 characters, escaped).
#![no_main]

use std::path::{Component, Path};

use flywheel_cache::data_dir::check_cache_name;
use flywheel_cache::server::names::{parse, Item, Refused, Route, MAX_PATH};
use libfuzzer_sys::fuzz_target;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn nix32(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| NIX32.contains(&b))
}

/// One path component, neither `.` nor `..`, nothing a file system treats specially.
fn one_file_name(name: &str) {
    assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
    assert!(!name.contains(['/', '\\', '\0']), "{name:?}");
    let parts: Vec<Component> = Path::new(name).components().collect();
    assert!(matches!(parts.as_slice(), [Component::Normal(n)] if *n == name), "{name:?} is not one path component");
}

fn cache_name_rule(cache: &str) {
    assert!(check_cache_name(cache).is_ok(), "{cache:?}");
    let b = cache.as_bytes();
    assert!((1..=63).contains(&b.len()), "{cache:?}");
    assert!(b[0].is_ascii_lowercase() || b[0].is_ascii_digit(), "{cache:?}");
    assert!(b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'), "{cache:?}");
    assert!(!["nix-cache-info", "nar", "log", "api", "metrics", "healthz", "static"].contains(&cache), "{cache:?}");
    one_file_name(cache);
}

fn check_item(item: &Item<'_>) -> String {
    match *item {
        Item::CacheInfo => "nix-cache-info".into(),
        Item::UpstreamKeys => "api/v1/upstream-keys".into(),
        Item::Pins => "api/v1/pins".into(),
        Item::Missing => "api/v1/missing".into(),
        // Checked by the index (`check_pin_name`) when it is used.
        Item::Pin(pin) => format!("api/v1/pins/{pin}"),
        Item::Narinfo(hash) => {
            assert!(nix32(hash, 32), "narinfo {hash:?}");
            format!("{hash}.narinfo")
        }
        Item::Listing { name, hash } => {
            assert!(nix32(hash, 32), "listing {hash:?}");
            assert_eq!(name, format!("{hash}.ls"));
            one_file_name(name);
            name.into()
        }
        Item::Log(name) => {
            let drv = name.strip_prefix("log/").unwrap_or_else(|| panic!("log {name:?} not under log/"));
            assert!((34..=255).contains(&drv.len()), "log {drv:?}");
            assert!(nix32(&drv[..32], 32) && drv.as_bytes()[32] == b'-', "log {drv:?}");
            let rest = &drv[33..];
            assert!(!rest.starts_with('.'), "log {drv:?}");
            assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)), "log {drv:?}");
            one_file_name(drv);
            name.into()
        }
        Item::Nar(name) => {
            assert!((1..=128).contains(&name.len()) && !name.starts_with('.'), "NAR {name:?}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.'), "NAR {name:?}");
            one_file_name(name);
            format!("nar/{name}")
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let route = match parse(path) {
        Ok(route) => route,
        Err(Refused::Malformed(why) | Refused::NotFound(why)) => {
            assert!(!why.contains(['\n', '\r']), "a refusal of more than one line: {why:?}");
            // The name is cut to 80 characters, each escaped to at most 10 (`\u{10ffff}`).
            assert!(why.chars().count() <= 1000, "a refusal of {} characters", why.chars().count());
            return;
        }
    };
    assert!(path.len() <= MAX_PATH, "a path of {} bytes was accepted", path.len());
    // The server only sees paths that start with `/`; the parser also takes them without.
    let rest = path.strip_prefix('/').unwrap_or(path);
    let rebuilt = match route {
        Route::Health => "healthz".to_string(),
        Route::Status { page: true } => String::new(),
        Route::Status { page: false } => "api/v1/status".into(),
        Route::CanaryRuns => "api/v1/canary/runs".into(),
        Route::Metrics => "metrics".into(),
        Route::CacheRoot(cache) => {
            cache_name_rule(cache);
            cache.into()
        }
        Route::Cache { cache, item } => {
            cache_name_rule(cache);
            format!("{cache}/{}", check_item(&item))
        }
    };
    assert_eq!(rest, rebuilt, "{route:?} is not the path {path:?}");
});

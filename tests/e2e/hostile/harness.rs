//! What the hostile tests share: a raw HTTP client (so a request can be as malformed, slow or
//! half-finished as an attacker makes it), servers over either index backend, tokens, and
//! NARs, narinfos and compressed streams made by hand.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flywheel_fixture::postgres::PgCluster;
use flywheel_nix::narinfo::{Compression, NarInfo, TrustedPublicKey};
use flywheel_nix::{NixHash, StoreDir};

use crate::support::server::Server;
use crate::support::{flywheel, ok_str};

/// The index a server runs on: each test of something the index decides runs on both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BOTH: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A `flywheel cache serve` with its config file (and its PostgreSQL, when it has one).
pub struct Served {
    pub server: Server,
    pub config: PathBuf,
    pub data: PathBuf,
    _pg: Option<PgCluster>,
}

impl Served {
    /// A server over `backend` in `dir`, its config file made of `top` (top-level settings)
    /// and `tables` (`[caches.NAME]` and the like).
    pub fn start(dir: &Path, backend: Backend, top: &str, tables: &str) -> Served {
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgCluster::start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"))),
        };
        Served::start_on(dir, pg, top, tables)
    }

    /// The same over `dir/data` as it is (an existing data directory) and `pg` as it is.
    pub fn start_on(dir: &Path, pg: Option<PgCluster>, top: &str, tables: &str) -> Served {
        let data = dir.join("data");
        let index = match &pg {
            None => String::new(),
            Some(pg) => format!("index = \"postgres\"\n[postgres]\nurl = \"{}\"\npool-size = 4\n", pg.url()),
        };
        let config = dir.join("cache.toml");
        let text = format!("data = \"{}\"\n{top}\n{index}{tables}\n", data.display());
        std::fs::write(&config, text).expect("write the config");
        let server = Server::start(&data, &["--config", config.to_str().expect("utf-8")]);
        Served { server, config, data, _pg: pg }
    }

    /// `flywheel cache ARGS --config FILE`.
    pub fn cache(&self, args: &[&str]) -> Command {
        let mut c = flywheel();
        c.arg("cache").args(args).arg("--config").arg(&self.config);
        c
    }

    pub fn token(&self, cache: &str, scope: &str) -> String {
        ok_str(&mut self.cache(&["token", "create", "--cache", cache, "--scope", scope])).trim().to_string()
    }

    pub fn addr(&self) -> String {
        self.server.host_port().to_string()
    }

    /// The public key the server printed for `cache`.
    pub fn key(&self, cache: &str) -> TrustedPublicKey {
        let text = self
            .server
            .keys
            .iter()
            .find(|(n, _)| n == cache)
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| ok_str(&mut self.cache(&["info", "--cache", cache])).trim().to_string());
        flywheel_nix::keys::PublicKey::parse(&text).expect("a public key").0
    }

    pub fn verify(&self) -> serde_json::Value {
        let out = self.cache(&["verify", "--json"]).output().expect("verify");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("verify --json: {e}: {out:?}"))
    }
}

/// An HTTP reply as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on its own connection (`Connection: close`), the reply read to its end.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "PUT" | "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send the head");
    s.write_all(body).expect("send the body");
    read_reply(&mut s)
}

pub fn get(addr: &str, path: &str) -> Reply {
    request(addr, "GET", path, &[], b"")
}

/// `Authorization: Bearer TOKEN`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_reply(&raw).unwrap_or_else(|| panic!("not an HTTP reply: {:?}", String::from_utf8_lossy(&raw)))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..i]).ok()?.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(rest.get(i + 2..i + 2 + n)?);
            rest = rest.get(i + 4 + n..)?;
        }
        body = out;
    }
    Some(Reply { status, headers, body })
}

/// A store path of this name with a hash part of its own (what the server sees of an
/// input-addressed path: nothing ties it to its contents).
pub fn store_path(name: &str) -> String {
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    let hash: String = bytes.iter().map(|b| alphabet[(*b as usize) % 32] as char).collect();
    format!("/nix/store/{hash}-{name}")
}

pub fn hash_part(store_path: &str) -> &str {
    &store_path["/nix/store/".len().."/nix/store/".len() + 32]
}

fn getrandom(buf: &mut [u8]) {
    // Good enough for names in tests: the clock and a counter through SHA-256.
    use sha2::Digest;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = format!(
        "{:?}{}{}",
        std::time::SystemTime::now(),
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let h = sha2::Sha256::digest(seed.as_bytes());
    for (i, b) in buf.iter_mut().enumerate() {
        *b = h[i % 32];
    }
}

/// The NAR of one regular file holding `contents`, with its SHA-256 and size.
pub fn nar_of(contents: &[u8]) -> (Vec<u8>, [u8; 32]) {
    use sha2::Digest;
    let nar = crate::support::RawNar::new().tokens(&[b"(", b"type", b"regular", b"contents", contents, b")"]).0;
    let h: [u8; 32] = sha2::Sha256::digest(&nar).into();
    (nar, h)
}

pub fn nix32(h: &[u8; 32]) -> String {
    flywheel_nix::store_path::nixbase32::encode(h)
}

/// An unsigned narinfo as a client uploads it.
pub fn narinfo(store_path: &str, url: &str, compression: Compression, nar: &[u8], refs: &[&str]) -> Vec<u8> {
    use sha2::Digest;
    let sd = StoreDir::default();
    let parse = |p: &str| sd.parse_path(p.as_bytes()).expect("a store path");
    let h: [u8; 32] = sha2::Sha256::digest(nar).into();
    NarInfo::builder_in(sd.clone(), parse(store_path), url.to_string(), NixHash::Sha256(h), nar.len() as u64)
        .compression(compression)
        .references(refs.iter().map(|r| parse(r)))
        .build()
        .expect("a narinfo")
        .to_canonical_bytes()
}

/// A narinfo claiming `nar_hash` and `nar_size`, whatever was uploaded.
pub fn narinfo_claiming(store_path: &str, url: &str, nar_hash: [u8; 32], nar_size: u64) -> Vec<u8> {
    let sd = StoreDir::default();
    let p = sd.parse_path(store_path.as_bytes()).expect("a store path");
    NarInfo::builder_in(sd, p, url.to_string(), NixHash::Sha256(nar_hash), nar_size)
        .compression(Compression::None)
        .build()
        .expect("a narinfo")
        .to_canonical_bytes()
}

/// Uploads `nar` (plain) to `cache` and then its narinfo, as `nix copy` does: the two replies.
pub fn push_raw(addr: &str, cache: &str, token: &str, store_path: &str, nar: &[u8], refs: &[&str]) -> (Reply, Reply) {
    let auth = bearer(token);
    let name = format!("nar/{}.nar", nix32(&sha(nar)));
    let put = request(addr, "PUT", &format!("/{cache}/{name}"), &[("Authorization", &auth)], nar);
    let info = narinfo(store_path, &name, Compression::None, nar, refs);
    let narinfo = request(
        addr,
        "PUT",
        &format!("/{cache}/{}.narinfo", hash_part(store_path)),
        &[("Authorization", &auth)],
        &info,
    );
    (put, narinfo)
}

pub fn sha(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// A served narinfo, parsed, with whether `key` signed it.
pub fn served_narinfo(addr: &str, cache: &str, store_path: &str, key: &TrustedPublicKey) -> Option<(NarInfo, bool)> {
    let r = get(addr, &format!("/{cache}/{}.narinfo", hash_part(store_path)));
    if r.status != 200 {
        return None;
    }
    let sd = StoreDir::default();
    let info = NarInfo::parse_in(&sd, &r.body).expect("a narinfo");
    let signed = info.has_valid_signature(&sd, std::slice::from_ref(key));
    Some((info, signed))
}

/// The served NarHash of a narinfo, as 32 bytes.
pub fn nar_hash_of(info: &NarInfo) -> [u8; 32] {
    match info.nar_hash() {
        NixHash::Sha256(h) => *h,
        other => panic!("not sha256: {other:?}"),
    }
}

/// An xz stream of `data` whose block header declares a dictionary of 4 GiB (what the decoder
/// would allocate): made with a small dictionary, its filter properties then rewritten and the
/// header's CRC32 recomputed. LZMA2's uncompressed chunks decode with any dictionary.
pub fn xz_declaring_4gib(data: &[u8]) -> Vec<u8> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
    let mut opts = LzmaOptions::new_preset(0).expect("preset");
    opts.dict_size(4096);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let stream = Stream::new_stream_encoder(&filters, Check::Crc64).expect("encoder");
    let mut out = Vec::new();
    let mut enc = liblzma::read::XzEncoder::new_stream(data, stream);
    enc.read_to_end(&mut out).expect("xz");
    // Stream header: 12 bytes. Block header: its size byte, flags, the LZMA2 filter (id 0x21,
    // one property byte), padding, CRC32.
    let start = 12;
    let size = (out[start] as usize + 1) * 4;
    let header = &mut out[start..start + size];
    assert_eq!(&header[2..4], &[0x21, 0x01], "an LZMA2 filter with one property byte");
    header[4] = 40; // 4 GiB - 1: the largest LZMA2 dictionary
    let crc = crc32(&header[..size - 4]);
    header[size - 4..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zstd frame whose header declares a 2 GiB window, with a few raw bytes.
pub fn zstd_declaring_2gib() -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3];
    f.extend_from_slice(&[(5 << 3) | 1, 0, 0]);
    f.extend_from_slice(b"hello");
    f
}

/// A zstd frame that decompresses to a NAR of one file of `len` zero bytes, in 128 KiB RLE
/// blocks of 4 bytes each: a few KB that expand without end (with a `len` of 2^40, 1 TiB),
/// every byte of it a valid NAR until the end.
pub fn zstd_nar_bomb(len: u64, blocks: usize) -> Vec<u8> {
    let prefix = crate::support::RawNar::new().tokens(&[b"(", b"type", b"regular", b"contents"]).0;
    let mut prefix = prefix;
    prefix.extend_from_slice(&len.to_le_bytes());
    // Window 128 KiB (log 17): blocks of up to 128 KiB.
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    let raw = prefix.len() as u32;
    f.extend_from_slice(&(raw << 3).to_le_bytes()[..3]);
    f.extend_from_slice(&prefix);
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = ((128u32 << 10) << 3) | (1 << 1) | last;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

/// A zstd skippable frame holding `payload`.
pub fn zstd_skippable(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x50, 0x2a, 0x4d, 0x18];
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A connection from another local address (127.0.0.2: Linux routes all of 127/8 to lo), so
/// that the server counts it as another client.
pub fn connect_from(ip: [u8; 4], addr: &str) -> std::io::Result<TcpStream> {
    let to: SocketAddr = addr.parse().expect("an address");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((ip, 0)).into())?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

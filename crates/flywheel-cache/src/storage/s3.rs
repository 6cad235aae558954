//! NARs in an S3-compatible object store (AWS S3, MinIO, Garage, Ceph RGW), through
//! `object_store`'s S3 client: multipart uploads streamed from the server's scratch file,
//! downloads streamed as they arrive, retries with exponential backoff, credentials from the
//! usual `AWS_*` environment variables or the config.
//!
//! ```text
//! PREFIX/nar/<2 nix32 chars>/<nix32 NarHash>.nar.zst   stored NARs (as in the directory store)
//! PREFIX/tmp/<random>.nar.zst                          uploads being stored
//! ```
//!
//! A NAR is uploaded whole to a temporary key, then copied to its name (under the index's
//! store lock, so two servers never replace each other's bytes), then the temporary is deleted.
//! It is visible to clients only once the index names it; a server killed midway leaves a
//! temporary, which GC's sweep deletes, or an unnamed NAR, which GC's orphan sweep deletes.
//!
//! The client is asynchronous and runs on its own small runtime, so the synchronous trait can
//! block on it from any thread that is not an async worker (spawn_blocking, the CLI).

use std::future::Future;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{BackoffConfig, GetOptions, GetRange, ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Listing, NarSource, NarStorage};

/// `[s3]` in the server's config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Config {
    pub bucket: String,
    /// The store's URL (MinIO, Garage, Ceph RGW); AWS S3 when unset.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Keys go under this prefix.
    pub prefix: Option<String>,
    /// The endpoint is plain http.
    #[serde(default)]
    pub allow_http: bool,
    /// Otherwise `AWS_ACCESS_KEY_ID` from the environment.
    pub access_key_id: Option<String>,
    /// Otherwise `AWS_SECRET_ACCESS_KEY` from the environment.
    pub secret_access_key: Option<String>,
}

/// Parts of a multipart upload (S3 allows at most 10000 parts, so this covers 80 GiB; larger
/// NARs get larger parts).
const PART: usize = 8 << 20;
/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 4;

/// The client's runtime, shut down without waiting when dropped (a server drops its state
/// on an async thread, where waiting is not allowed).
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub struct S3Storage {
    store: Arc<dyn ObjectStore>,
    /// Empty, or ending in '/'.
    prefix: String,
    handle: tokio::runtime::Handle,
    _runtime: Runtime,
    label: String,
}

/// An object to stream to a client.
pub struct ObjectRef {
    store: Arc<dyn ObjectStore>,
    key: Key,
    handle: tokio::runtime::Handle,
}

pub(crate) fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
        other => io::Error::other(other.to_string().replace('\n', " ")),
    }
}

impl S3Storage {
    /// Connects and checks that the bucket can be listed, so a wrong endpoint, bucket or
    /// credential is reported at start, not on the first upload.
    pub fn connect(config: &S3Config) -> Result<Self, String> {
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 8,
                retry_timeout: Duration::from_secs(120),
            });
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &config.region {
            b = b.with_region(r);
        }
        if config.allow_http {
            b = b.with_allow_http(true);
        }
        if let Some(k) = &config.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &config.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        let prefix = match config.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => format!("{p}/"),
        };
        let label = format!("s3://{}/{prefix}", config.bucket);
        let store = b.build().map_err(|e| format!("{label}: {}", io_error(e)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flywheel-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("{label}: starting the client: {e}"))?;
        let s = S3Storage {
            store: Arc::new(store),
            handle: runtime.handle().clone(),
            _runtime: Runtime(Some(runtime)),
            prefix,
            label,
        };
        let probe = s.key("nar");
        let keyless = config.access_key_id.is_none() && std::env::var_os("AWS_ACCESS_KEY_ID").is_none();
        s.run(s.store.list_with_delimiter(Some(&probe))).map_err(|e| {
            // Without a key the client asks the cloud's instance metadata, whose error says little.
            let hint = if keyless {
                " (no access key given: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access-key-id and secret-access-key in [s3])"
            } else {
                ""
            };
            format!("{}: {}{hint}", s.label, io_error(e))
        })?;
        Ok(s)
    }

    fn run<F: Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    fn key(&self, rel: &str) -> Key {
        Key::from(format!("{}{rel}", self.prefix))
    }

    fn nar_key(&self, nar_hash: &[u8; 32]) -> Key {
        self.key(&format!("nar/{}", super::nar_name(nar_hash)))
    }

    /// Streams the file at `file` to `key`: one PUT when small, else a multipart upload
    /// (aborted on error).
    fn upload(&self, file: &Path, key: &Key) -> io::Result<()> {
        let mut f = std::fs::File::open(file)?;
        let len = f.metadata()?.len();
        let part = PART.max(usize::try_from(len / 9000).unwrap_or(usize::MAX));
        if len <= part as u64 {
            let mut body = Vec::with_capacity(len as usize);
            f.read_to_end(&mut body)?;
            return self.run(self.store.put(key, PutPayload::from(body))).map(drop).map_err(io_error);
        }
        self.run(async {
            let upload = self.store.put_multipart(key).await.map_err(io_error)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
            let mut buf = vec![0u8; part];
            let sent = loop {
                // The file is local: reading it here, on this blocking thread, is fine.
                let n = match read_full(&mut f, &mut buf) {
                    Ok(n) => n,
                    Err(e) => break Err(e),
                };
                if n == 0 {
                    break Ok(());
                }
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    break Err(io_error(e));
                }
                writer.write(&buf[..n]);
            };
            match sent {
                Ok(()) => writer.finish().await.map(drop).map_err(io_error),
                Err(e) => {
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        })
    }
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match f.read(&mut buf[at..]) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

fn random_name() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn system_time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl NarStorage for S3Storage {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn contains(&self, nar_hash: &[u8; 32]) -> io::Result<bool> {
        match self.run(self.store.head(&self.nar_key(nar_hash))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    fn put(&self, nar_hash: &[u8; 32], tmp: &Path) -> io::Result<bool> {
        let dest = self.nar_key(nar_hash);
        // Already stored (an earlier upload, another cache): nothing to send. The caller's store
        // lock keeps it so until this returns.
        if self.contains(nar_hash)? {
            std::fs::remove_file(tmp)?;
            return Ok(false);
        }
        let temp = self.key(&format!("tmp/{}.nar.zst", random_name()?));
        self.upload(tmp, &temp)?;
        let copied = self.run(self.store.copy(&temp, &dest)).map(|()| true);
        // A temporary left behind (the delete failing) is swept by GC.
        if let Err(e) = self.run(self.store.delete(&temp)) {
            tracing::warn!("{}: deleting the temporary {temp}: {}", self.label, io_error(e));
        }
        std::fs::remove_file(tmp)?;
        copied.map_err(io_error)
    }

    fn source(&self, nar_hash: &[u8; 32]) -> NarSource {
        NarSource::Object(ObjectRef {
            store: self.store.clone(),
            key: self.nar_key(nar_hash),
            handle: self.handle.clone(),
        })
    }

    fn open(&self, nar_hash: &[u8; 32]) -> io::Result<Box<dyn Read + Send>> {
        let object = ObjectRef { store: self.store.clone(), key: self.nar_key(nar_hash), handle: self.handle.clone() };
        let (_, rx) = self.run(object.fetch(None))?;
        Ok(Box::new(ChannelReader { rx, current: Bytes::new() }))
    }

    fn size(&self, nar_hash: &[u8; 32]) -> io::Result<u64> {
        self.run(self.store.head(&self.nar_key(nar_hash))).map(|m| m.size).map_err(io_error)
    }

    fn list(&self) -> io::Result<Listing> {
        let root = self.key("nar");
        let strip = format!("{root}/");
        let metas: Vec<_> = self.run(self.store.list(Some(&root)).collect::<Vec<_>>());
        let (mut nars, mut strays) = (Vec::new(), Vec::new());
        for meta in metas {
            let meta = meta.map_err(io_error)?;
            let name = meta.location.to_string();
            let parsed = name
                .strip_prefix(&strip)
                .and_then(|rel| rel.split_once('/'))
                .and_then(|(shard, file)| super::parse_nar_name(shard, file));
            match parsed {
                Some(h) => nars.push((h, meta.size)),
                None => strays.push(format!("{}{name}", self.label.trim_end_matches(&self.prefix))),
            }
        }
        nars.sort();
        Ok(Listing { nars, strays })
    }

    fn remove(&self, nar_hash: &[u8; 32]) -> io::Result<()> {
        // S3 deletes succeed for missing keys; GC relies on NotFound for what is already gone.
        if !self.contains(nar_hash)? {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such NAR"));
        }
        self.run(self.store.delete(&self.nar_key(nar_hash))).map_err(io_error)
    }

    fn modified(&self, nar_hash: &[u8; 32]) -> io::Result<SystemTime> {
        let meta = self.run(self.store.head(&self.nar_key(nar_hash))).map_err(io_error)?;
        Ok(system_time(meta.last_modified.timestamp()))
    }

    fn sweep_temporaries(&self, before: SystemTime) -> io::Result<(u64, u64)> {
        let cutoff = before.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let metas: Vec<_> = self.run(self.store.list(Some(&self.key("tmp"))).collect::<Vec<_>>());
        let (mut count, mut bytes) = (0, 0);
        for meta in metas {
            let meta = meta.map_err(io_error)?;
            if meta.last_modified.timestamp() < cutoff {
                self.run(self.store.delete(&meta.location)).map_err(io_error)?;
                count += 1;
                bytes += meta.size;
            }
        }
        Ok((count, bytes))
    }
}

impl ObjectRef {
    /// Starts a download (of `range`, else the whole object) on the client's runtime: the
    /// object's size, and its bytes as they arrive.
    pub async fn fetch(self, range: Option<Range<u64>>) -> io::Result<(u64, mpsc::Receiver<io::Result<Bytes>>)> {
        let (tx, rx) = mpsc::channel(8);
        let (size_tx, size_rx) = tokio::sync::oneshot::channel();
        self.handle.spawn(async move {
            let opts = GetOptions { range: range.map(GetRange::Bounded), ..GetOptions::default() };
            match self.store.get_opts(&self.key, opts).await {
                Err(e) => drop(size_tx.send(Err(io_error(e)))),
                Ok(got) => {
                    if size_tx.send(Ok(got.meta.size)).is_err() {
                        return;
                    }
                    let mut stream = got.into_stream();
                    while let Some(chunk) = stream.next().await {
                        if tx.send(chunk.map_err(io_error)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let size = size_rx.await.map_err(|_| io::Error::other("the object store client stopped"))??;
        Ok((size, rx))
    }
}

/// A download read synchronously (verify, migrate, hashing a kept NAR).
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use flywheel_fixture::garage::Garage;

    fn storage(g: &Garage, prefix: &str) -> S3Storage {
        S3Storage::connect(&S3Config {
            bucket: g.bucket().to_string(),
            endpoint: Some(g.endpoint()),
            region: Some(g.region().to_string()),
            prefix: Some(prefix.to_string()),
            allow_http: true,
            access_key_id: Some(g.access_key_id().to_string()),
            secret_access_key: Some(g.secret_access_key().to_string()),
        })
        .unwrap()
    }

    fn random_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, [u8; 32]) {
        let mut data = vec![0u8; len];
        getrandom::fill(&mut data).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &data).unwrap();
        let (hash, _) = crate::storage::hash_reader(data.as_slice()).unwrap();
        (path, hash)
    }

    /// Against a real Garage: a NAR larger than a part goes up in parts and comes back whole,
    /// by range too; a second writer of the same NAR keeps the first's bytes; a delete, the
    /// listing, and the sweep of temporaries.
    #[test]
    fn nars_go_up_in_parts_and_come_back_whole() {
        let g = Garage::start().unwrap();
        let s = storage(&g, "t");
        let dir = tempfile::tempdir().unwrap();
        let nar = [7u8; 32];
        let len = 2 * PART + 12345;
        let (file, hash) = random_file(dir.path(), "big", len);
        assert!(!s.contains(&nar).unwrap());
        assert!(s.put(&nar, &file).unwrap(), "stored");
        assert!(!file.exists(), "the scratch file is removed");
        assert_eq!(s.size(&nar).unwrap(), len as u64);
        assert_eq!(crate::storage::hash_reader(s.open(&nar).unwrap()).unwrap(), (hash, len as u64));

        // The same NAR again, other bytes: the first stays.
        let (other, _) = random_file(dir.path(), "other", 1000);
        assert!(!s.put(&nar, &other).unwrap());
        assert_eq!(s.size(&nar).unwrap(), len as u64);

        // A range, as the server asks for one.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let NarSource::Object(object) = s.source(&nar) else { panic!("an object") };
        let got = rt.block_on(async {
            let (size, mut rx) = object.fetch(Some(10..20)).await.unwrap();
            let mut out = Vec::new();
            while let Some(c) = rx.recv().await {
                out.extend_from_slice(&c.unwrap());
            }
            (size, out)
        });
        let all = {
            let mut v = Vec::new();
            s.open(&nar).unwrap().read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(got.0, len as u64);
        assert_eq!(got.1, all[10..20]);

        // A temporary an interrupted upload left, and a stray name.
        let temp = s.key("tmp/left-behind.nar.zst");
        s.run(s.store.put(&temp, PutPayload::from(vec![1u8; 10]))).unwrap();
        s.run(s.store.put(&s.key("nar/zz/junk"), PutPayload::from(vec![1u8; 3]))).unwrap();
        let listing = s.list().unwrap();
        assert_eq!(listing.nars, vec![(nar, len as u64)]);
        assert_eq!(listing.strays.len(), 1, "{:?}", listing.strays);
        assert_eq!(s.sweep_temporaries(SystemTime::now() - Duration::from_secs(3600)).unwrap(), (0, 0));
        assert_eq!(s.sweep_temporaries(SystemTime::now() + Duration::from_secs(5)).unwrap(), (1, 10));

        // Another prefix in the same bucket sees none of it.
        assert!(storage(&g, "elsewhere").list().unwrap().nars.is_empty());

        s.remove(&nar).unwrap();
        assert!(!s.contains(&nar).unwrap());
        assert_eq!(s.remove(&nar).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(s.open(&nar).err().map(|e| e.kind()), Some(io::ErrorKind::NotFound));
    }

    #[test]
    fn a_wrong_bucket_or_key_is_one_line_at_start() {
        let g = Garage::start().unwrap();
        let mut c = S3Config {
            bucket: "no-such-bucket".into(),
            endpoint: Some(g.endpoint()),
            region: Some(g.region().to_string()),
            prefix: None,
            allow_http: true,
            access_key_id: Some(g.access_key_id().to_string()),
            secret_access_key: Some(g.secret_access_key().to_string()),
        };
        let e = S3Storage::connect(&c).err().unwrap();
        assert!(e.starts_with("s3://no-such-bucket/") && !e.contains('\n'), "{e}");
        c.bucket = g.bucket().to_string();
        c.secret_access_key = Some("wrong".into());
        let e = S3Storage::connect(&c).err().unwrap();
        assert!(!e.contains('\n') && !e.contains("wrong"), "{e}");
    }
}

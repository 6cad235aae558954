//! One NAR download: the response body flows through a channel into a blocking reader that
//! decompresses it and hashes the NAR on the way to wherever it goes (the store, or a spool
//! file), so nothing is held in memory and nothing is trusted before its hash is checked.

use std::io::{self, Read};

use axum::body::Bytes;
use flywheel_nix::nar::{Digested, HashingReader};
use flywheel_nix::narinfo::Compression;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::http::{check, with_token, Failure};
use crate::ingest::decode::{self, Codec, DecodeLimits};

/// Reads the chunks a download task sends.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, io::Error>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => self.current = chunk?,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

fn codec(compression: &Compression) -> Result<Codec, String> {
    Ok(match compression {
        Compression::None => Codec::None,
        Compression::Xz => Codec::Xz,
        Compression::Zstd => Codec::Zstd,
        other => return Err(format!("NARs compressed with {other:?} are not supported (xz, zstd or none)")),
    })
}

/// One download's NAR digest and the bytes received.
pub(crate) struct Fetched {
    pub nar: Digested,
    pub file_bytes: u64,
}

/// What the signed narinfo promises about a download: no more than this is read or written.
#[derive(Clone, Debug)]
pub(crate) struct Expect {
    pub compression: Compression,
    /// The signed NarSize: the decompressed NAR may not be longer.
    pub nar_size: u64,
    /// Memory the decoder may use.
    pub decoder_memory: u64,
}

impl Expect {
    /// The most compressed bytes a NAR of `nar_size` takes: incompressible data grows by a few
    /// bytes per block in xz and zstd, far less than this allows.
    fn file_limit(&self) -> u64 {
        self.nar_size.saturating_add(self.nar_size / 64).saturating_add(64 << 10)
    }
}

/// GETs `url` and passes the decompressed NAR to `sink` on a blocking thread; the digest of
/// the whole NAR (what the sink read and anything it left) comes back. The token goes only to
/// the cache's own origin (the caller decides: `token` is None for any other). Nothing longer
/// than `expect` allows is read: the body stops at the bound on compressed bytes, the decoder at
/// the signed NarSize, so a lying server cannot fill the store. A NAR that fails to decode, is
/// malformed or too long is not worth retrying; a transfer that broke off is.
pub(crate) async fn download(
    http: &reqwest::Client,
    token: Option<&str>,
    url: &str,
    expect: &Expect,
    sink: impl FnOnce(&mut dyn Read) -> Result<(), String> + Send + 'static,
) -> Result<Fetched, Failure> {
    let codec = codec(&expect.compression).map_err(|message| Failure { message, retry: false })?;
    let file_limit = expect.file_limit();
    let resp = with_token(http.get(url), token)
        .send()
        .await
        .map_err(|e| Failure { message: format!("{url}: {e}"), retry: true })?;
    let resp = check(resp, url).await?;
    if resp.content_length().is_some_and(|n| n > file_limit) {
        return Err(Failure {
            message: format!(
                "{url}: {} bytes for a NAR of {} bytes (NarSize): refused",
                resp.content_length().unwrap_or(0),
                expect.nar_size
            ),
            retry: false,
        });
    }
    let limits = DecodeLimits::new(expect.decoder_memory, expect.nar_size);
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    let consumer = tokio::task::spawn_blocking(move || -> Result<Digested, String> {
        let input = io::BufReader::with_capacity(1 << 17, ChannelReader { rx, current: Bytes::new() });
        let mut nar = HashingReader::new(decode::decoder_declared(codec, input, limits));
        sink(&mut nar)?;
        // Whatever the sink left unread still counts: a NAR with trailing bytes must not match.
        io::copy(&mut nar, &mut io::sink()).map_err(|e| e.to_string())?;
        Ok(nar.finish().1)
    });
    let mut body = resp.bytes_stream();
    let mut file_bytes = 0u64;
    let mut cut = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // A body cut short (fewer bytes than its Content-Length) ends here, never as a
                // complete NAR.
                cut = Some(format!("{url}: the download broke off after {file_bytes} bytes: {e}"));
                let _ = tx.send(Err(io::Error::other("the download broke off"))).await;
                break;
            }
        };
        file_bytes += chunk.len() as u64;
        if file_bytes > file_limit {
            let _ = tx.send(Err(io::Error::other("too long"))).await;
            drop(tx);
            let _ = consumer.await;
            return Err(Failure {
                message: format!(
                    "{url}: more than {file_limit} bytes for a NAR of {} bytes (NarSize): refused",
                    expect.nar_size
                ),
                retry: false,
            });
        }
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let consumed = consumer.await.map_err(|e| Failure { message: e.to_string(), retry: false })?;
    if let Some(message) = cut {
        return Err(Failure { message, retry: true });
    }
    let nar = consumed.map_err(|e| Failure { message: format!("{url}: {e}"), retry: false })?;
    Ok(Fetched { nar, file_bytes })
}

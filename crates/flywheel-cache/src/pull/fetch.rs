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
use crate::ingest::Upload;

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

fn decoder<'a>(compression: &Compression, input: impl Read + Send + 'a) -> Result<Box<dyn Read + Send + 'a>, String> {
    let kind = match compression {
        Compression::None => Upload::None,
        Compression::Xz => Upload::Xz,
        Compression::Zstd => Upload::Zstd,
        other => return Err(format!("NARs compressed with {other:?} are not supported (xz, zstd or none)")),
    };
    crate::ingest::decoder(kind, input).map_err(|e| e.to_string())
}

/// One download's NAR digest and the bytes received.
pub(crate) struct Fetched {
    pub nar: Digested,
    pub file_bytes: u64,
}

/// GETs `url` and passes the decompressed NAR to `sink` on a blocking thread; the digest of
/// the whole NAR (what the sink read and anything it left) comes back.
pub(crate) async fn download(
    http: &reqwest::Client,
    token: Option<&str>,
    url: &str,
    compression: Compression,
    sink: impl FnOnce(&mut dyn Read) -> Result<(), String> + Send + 'static,
) -> Result<Fetched, Failure> {
    let resp = with_token(http.get(url), token)
        .send()
        .await
        .map_err(|e| Failure { message: format!("{url}: {e}"), retry: true })?;
    let resp = check(resp, url).await?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, io::Error>>(16);
    let consumer = tokio::task::spawn_blocking(move || -> Result<Digested, String> {
        let input = ChannelReader { rx, current: Bytes::new() };
        let mut nar = HashingReader::new(decoder(&compression, input)?);
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
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let consumed = consumer.await.map_err(|e| Failure { message: e.to_string(), retry: false })?;
    if let Some(message) = cut {
        return Err(Failure { message, retry: true });
    }
    let nar = consumed.map_err(|e| Failure { message: format!("{url}: {e}"), retry: true })?;
    Ok(Fetched { nar, file_bytes })
}

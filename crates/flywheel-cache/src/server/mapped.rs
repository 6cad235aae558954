//! A stored NAR sent from a memory map: the socket write copies straight from the page cache,
//! where reading into a buffer first would copy every byte twice (nginx uses sendfile for the
//! same reason). A blocking thread faults each chunk in before it is handed to the connection,
//! so a NAR that is not in memory yet never blocks an async worker on the disk.

use std::path::PathBuf;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use tokio::sync::mpsc;

const CHUNK: usize = 1 << 20;
const PAGE: usize = 4096;

pub async fn serve(path: PathBuf) -> std::io::Result<Response> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let (len_tx, len_rx) = tokio::sync::oneshot::channel::<std::io::Result<u64>>();
    tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => return drop(len_tx.send(Err(e))),
        };
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return drop(len_tx.send(Err(e))),
        };
        if len == 0 {
            return drop(len_tx.send(Ok(0)));
        }
        // SAFETY: stored NARs are written under a temporary name and renamed into place whole;
        // nothing writes to or truncates a stored file afterwards (GC unlinks it, which leaves
        // this mapping valid), so the mapped bytes cannot change under the reader.
        #[allow(unsafe_code)]
        let map = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(m) => m,
            Err(e) => return drop(len_tx.send(Err(e))),
        };
        let _ = map.advise(memmap2::Advice::Sequential);
        if len_tx.send(Ok(len)).is_err() {
            return;
        }
        let all = Bytes::from_owner(map);
        let mut at = 0;
        while at < all.len() {
            let chunk = all.slice(at..(at + CHUNK).min(all.len()));
            // One read per page brings the chunk into memory here, not in the async writer.
            let mut sum = 0u8;
            for i in (0..chunk.len()).step_by(PAGE) {
                sum = sum.wrapping_add(chunk[i]);
            }
            std::hint::black_box(sum);
            at += chunk.len();
            if tx.blocking_send(chunk).is_err() {
                return;
            }
        }
    });
    let len = len_rx.await.map_err(|_| std::io::Error::other("the NAR reader stopped"))??;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok::<_, std::io::Error>)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .body(Body::from_stream(stream))
        .map_err(std::io::Error::other)
}

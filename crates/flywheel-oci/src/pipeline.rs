//! Two threads per layer: one reads files and frames them as tar, the other hashes,
//! compresses and writes. Reading and hashing then overlap, which is what lets a layer's
//! tar and sha256 run at the speed of sha256 alone.

use std::io::{self, Write};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};

/// Bytes handed from one thread to the other at a time.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the threads.
const DEPTH: usize = 4;

/// Runs `produce` on this thread, writing through a channel to `sink` on another one, and
/// returns the sink with what `produce` returned. An error of the sink's wins over the
/// producer's (which then only sees the channel close).
pub fn pipelined<S, T, E, F>(sink: S, produce: F) -> Result<(S, T), E>
where
    S: Write + Send,
    F: FnOnce(&mut dyn Write) -> Result<T, E>,
    E: From<io::Error>,
{
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        let (free_tx, free_rx) = channel::<Vec<u8>>();
        let consumer = scope.spawn(move || -> io::Result<S> {
            let mut sink = sink;
            for mut chunk in rx {
                sink.write_all(&chunk)?;
                chunk.clear();
                let _ = free_tx.send(chunk);
            }
            Ok(sink)
        });
        let mut writer = ChunkWriter { buf: Vec::with_capacity(CHUNK), tx: Some(tx), free: free_rx };
        let produced = produce(&mut writer);
        let flushed = writer.close();
        let consumed = match consumer.join() {
            Ok(r) => r,
            Err(_) => Err(io::Error::other("the layer writer thread panicked")),
        };
        let sink = consumed?;
        let value = produced?;
        flushed?;
        Ok((sink, value))
    })
}

struct ChunkWriter {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let next = self.free.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(full).map_err(|_| closed())
    }

    /// Sends what is left and closes the channel, so the consumer finishes.
    fn close(&mut self) -> io::Result<()> {
        let sent = if self.buf.is_empty() { Ok(()) } else { self.send() };
        self.tx = None;
        sent
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the layer writer stopped")
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_arrives_in_order() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        let (sink, n) = pipelined(Vec::new(), |w| -> io::Result<usize> {
            for part in data.chunks(77_777) {
                w.write_all(part)?;
            }
            Ok(data.len())
        })
        .unwrap();
        assert_eq!(n, data.len());
        assert!(sink == data);
    }

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_sinks_error_is_reported() {
        let err = pipelined(Failing, |w| -> io::Result<()> {
            for _ in 0..100 {
                w.write_all(&[0; CHUNK])?;
            }
            Ok(())
        })
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "disk full");
    }
}

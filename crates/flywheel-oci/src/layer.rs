//! One layer, written once: tar entries -> sha256 (the diff_id) -> compressor -> sha256 (the
//! blob digest) -> a temporary file in the blob directory, renamed to its digest at the end.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use flywheel_nix::nar::HashingWriter;
use sha2::{Digest as _, Sha256};

use crate::compress::Compression;
use crate::digest::Digest;
use crate::pipeline::pipelined;
use crate::tar::{self, Entry, LayerError};

/// A written layer blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerBlob {
    /// Of the compressed blob.
    pub digest: Digest,
    pub size: u64,
    /// Of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Writes the layer of `entries` (sorted) into `blobs` (an OCI `blobs/sha256` directory).
pub fn write_blob(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    workers: u32,
    blobs: &Path,
) -> Result<LayerBlob, LayerError> {
    let io_error = |e: io::Error| LayerError::Fs { path: blobs.to_path_buf(), source: e };
    let tmp = tempfile::Builder::new().prefix(".layer-").tempfile_in(blobs).map_err(io_error)?;
    let file = tmp.as_file().try_clone().map_err(io_error)?;
    let hash_blob = !matches!(compression, Compression::None);
    let sink = BlobSink { file: BufWriter::with_capacity(1 << 20, file), hasher: hash_blob.then(Sha256::new), size: 0 };
    let encoder = compression.encoder(sink, workers).map_err(io_error)?;
    let (diff_writer, ()) =
        pipelined(HashingWriter::new(encoder), |w| tar::write_entries(entries, mtime, w)).map_err(|e| match e {
            LayerError::Write(e) => io_error(e),
            other => other,
        })?;
    let (encoder, diff) = diff_writer.finish();
    let sink = encoder.finish().map_err(io_error)?;
    let (digest, size) = match sink.hasher {
        Some(h) => (Digest(h.finalize().into()), sink.size),
        None => (Digest(diff.sha256), diff.size),
    };
    let file = sink.file.into_inner().map_err(|e| io_error(e.into_error()))?;
    file.sync_data().map_err(io_error)?;
    tmp.persist(blobs.join(digest.hex())).map_err(|e| io_error(e.error))?;
    Ok(LayerBlob { digest, size, diff_id: Digest(diff.sha256), uncompressed_size: diff.size })
}

/// The diff_id and size of the tar of `entries`, written nowhere: the tar and sha256 work of a
/// layer alone (the benchmarks compare it with `tar | openssl dgst -sha256`).
pub fn tar_digest(entries: &[Entry], mtime: u64) -> Result<flywheel_nix::nar::Digested, LayerError> {
    let (hashing, ()) = pipelined(HashingWriter::new(io::sink()), |w| tar::write_entries(entries, mtime, w))?;
    Ok(hashing.finish().1)
}

/// The end of the chain: the file, and the blob's hash when it differs from the diff_id.
struct BlobSink {
    file: BufWriter<File>,
    hasher: Option<Sha256>,
    size: u64,
}

impl Write for BlobSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Read;

    use super::*;
    use crate::tar::{entries, Modes};

    fn sample_entries(dir: &Path) -> Vec<Entry> {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/data"), vec![7u8; 3_000_000]).unwrap();
        std::fs::write(src.join("readme"), b"hello").unwrap();
        let mut list = entries::parents(b"nix/store", tar::DIR_MODE);
        entries::gather(&src, b"nix/store/aaaa-x", Modes::Nar, &mut list).unwrap();
        entries::sort_entries(&mut list, "t").unwrap();
        list
    }

    #[test]
    fn digests_match_the_files_and_the_decompressed_tar() {
        let tmp = tempfile::tempdir().unwrap();
        let list = sample_entries(tmp.path());
        let blobs = tmp.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        for c in [Compression::None, Compression::default(), Compression::GZIP_DEFAULT] {
            let blob = write_blob(&list, 1, c, 2, &blobs).unwrap();
            let bytes = std::fs::read(blobs.join(blob.digest.hex())).unwrap();
            assert_eq!(Digest::of(&bytes), blob.digest);
            assert_eq!(bytes.len() as u64, blob.size);
            let tar = match c {
                Compression::None => bytes,
                Compression::Gzip { .. } => {
                    let mut v = Vec::new();
                    flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut v).unwrap();
                    v
                }
                Compression::Zstd { .. } => zstd::decode_all(&bytes[..]).unwrap(),
            };
            assert_eq!(Digest::of(&tar), blob.diff_id);
            assert_eq!(tar.len() as u64, blob.uncompressed_size);
        }
        // Only the three blobs remain: no temporary files.
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 3);
    }

    #[test]
    fn a_failed_layer_leaves_no_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut list = sample_entries(tmp.path());
        std::fs::remove_file(tmp.path().join("src/readme")).unwrap();
        let blobs = tmp.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        assert!(write_blob(&list, 1, Compression::default(), 1, &blobs).is_err());
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
    }
}

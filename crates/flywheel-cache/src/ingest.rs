//! Turning an uploaded NAR into a stored one, in one pass: decompress what the client sent,
//! check the NAR's grammar and compute NarHash and NarSize, and recompress it to the stored
//! form (zstd) while hashing that too. Nothing the client claims is trusted; the narinfo that
//! follows must agree with what is computed here.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use flywheel_nix::nar::{self, HashingReader, HashingWriter};

use crate::index::NarRecord;

/// The compression of an upload, from its name's extension (as Nix names them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upload {
    None,
    Xz,
    Zstd,
}

impl Upload {
    /// `nar/<anything>.nar`, `.nar.xz`, `.nar.zst`.
    pub fn from_name(name: &str) -> Option<Upload> {
        if name.ends_with(".nar") {
            Some(Upload::None)
        } else if name.ends_with(".nar.xz") {
            Some(Upload::Xz)
        } else if name.ends_with(".nar.zst") {
            Some(Upload::Zstd)
        } else {
            None
        }
    }
}

/// `input` decompressed: what the server does with an upload, and the pull client with a
/// download.
pub fn decoder<'a>(kind: Upload, input: impl Read + Send + 'a) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match kind {
        Upload::None => Box::new(input),
        Upload::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(input)),
        Upload::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("not a valid NAR: {0}")]
    BadNar(String),
    #[error("cannot decompress the upload: {0}")]
    Decompress(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Copies what it reads to a writer, so one read drives the check, the hash and the recompression.
struct Tee<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Reads the upload at `raw`, writes the stored form to `out` (synced), and returns what was
/// computed. A zstd upload is already in the stored form: it is checked (decompressed, parsed,
/// hashed) and kept as sent, so the server spends no second compression on it.
pub fn ingest(raw: &Path, kind: Upload, out: &Path, level: i32) -> Result<NarRecord, IngestError> {
    if kind == Upload::Zstd {
        return check_zstd(raw, out);
    }
    let file = BufReader::with_capacity(1 << 20, File::open(raw)?);
    let decoded = decoder(kind, file).map_err(|e| IngestError::Decompress(e.to_string()))?;
    let stored = File::create(out)?;
    let encoder = zstd::stream::write::Encoder::new(HashingWriter::new(stored), level)?;
    let mut tee = Tee { inner: HashingReader::new(decoded), out: encoder };
    if let Err(e) = nar::validate(&mut tee) {
        return Err(classify(e));
    }
    let Tee { inner, out: encoder } = tee;
    let (_, nar) = inner.finish();
    let (stored, file) = encoder.finish()?.finish();
    stored.sync_all()?;
    Ok(stored_record(&nar, &file))
}

fn check_zstd(raw: &Path, out: &Path) -> Result<NarRecord, IngestError> {
    let file = HashingReader::new(BufReader::with_capacity(1 << 20, File::open(raw)?));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::new(file))
        .map_err(|e| IngestError::Decompress(e.to_string()))?;
    let mut nar_reader = HashingReader::new(&mut decoder);
    nar::validate(&mut nar_reader).map_err(classify)?;
    let (_, nar) = nar_reader.finish();
    // Trailing bytes after the zstd frames would be served as part of the file: refuse them.
    let mut rest = [0u8; 1];
    if decoder.read(&mut rest)? != 0 {
        return Err(IngestError::BadNar("data after the end of the NAR".into()));
    }
    let mut inner = decoder.finish().into_inner();
    io::copy(&mut inner, &mut io::sink())?;
    let (_, file) = inner.finish();
    std::fs::rename(raw, out)?;
    File::open(out)?.sync_all()?;
    Ok(stored_record(&nar, &file))
}

fn stored_record(nar: &nar::Digested, file: &nar::Digested) -> NarRecord {
    NarRecord {
        nar_hash: nar.sha256,
        nar_size: nar.size,
        file_hash: file.sha256,
        file_size: file.size,
        compression: "zstd".into(),
    }
}

fn classify(e: nar::NarError) -> IngestError {
    if e.is_malformed() {
        IngestError::BadNar(e.to_string())
    } else {
        // A read error below the NAR parser is the decompressor's (or the disk's).
        IngestError::Decompress(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_zstd_uploads_give_the_same_nar_and_junk_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).expect("mkdir");
        std::fs::write(tree.join("hello"), b"hello, cache\n").expect("write");
        let (plain, digest) = nar::write_nar_digested(&tree, Vec::new()).expect("nar");
        let raw = dir.path().join("up.nar");
        std::fs::write(&raw, &plain).expect("write");
        let a = ingest(&raw, Upload::None, &dir.path().join("a"), 3).expect("plain");
        assert_eq!((a.nar_hash, a.nar_size), (digest.sha256, digest.size));

        let zst = dir.path().join("up.nar.zst");
        std::fs::write(&zst, zstd::encode_all(plain.as_slice(), 19).expect("zstd")).expect("write");
        let sent_size = std::fs::metadata(&zst).expect("stat").len();
        let b = ingest(&zst, Upload::Zstd, &dir.path().join("b"), 3).expect("zstd");
        assert_eq!((b.nar_hash, b.nar_size), (digest.sha256, digest.size));
        assert_eq!(b.file_size, sent_size, "a zstd upload is kept as sent");
        assert_eq!(zstd::decode_all(std::fs::File::open(dir.path().join("b")).expect("open")).expect("decode"), plain);

        std::fs::write(&raw, b"nix-archive-1 and then nonsense").expect("write");
        assert!(matches!(ingest(&raw, Upload::None, &dir.path().join("c"), 3), Err(IngestError::BadNar(_))));
        std::fs::write(&zst, b"not zstd at all").expect("write");
        assert!(ingest(&zst, Upload::Zstd, &dir.path().join("d"), 3).is_err());
        assert_eq!(Upload::from_name("x.nar.bz2"), None);
    }
}

//! Turning an uploaded NAR into a stored one, in one pass: decompress what the client sent,
//! check the NAR's grammar and compute NarHash and NarSize, and recompress it to the stored
//! form (zstd) while hashing that too. Nothing the client claims is trusted; the narinfo that
//! follows must agree with what is computed here.

pub mod decode;

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::time::Instant;

use flywheel_nix::nar::{self, HashingReader, HashingWriter};

pub use decode::{Codec, DecodeError, DecodeLimits, DEFAULT_DECODER_MEMORY};

use crate::index::NarRecord;

/// The compression of an upload, from its name's extension (as Nix names them).
pub type Upload = Codec;

impl Codec {
    /// `nar/<anything>.nar`, `.nar.xz`, `.nar.zst`.
    pub fn from_name(name: &str) -> Option<Codec> {
        if name.ends_with(".nar") {
            Some(Codec::None)
        } else if name.ends_with(".nar.xz") {
            Some(Codec::Xz)
        } else if name.ends_with(".nar.zst") {
            Some(Codec::Zstd)
        } else {
            None
        }
    }
}

/// The request header in which a client may declare an upload's NarSize: the server then
/// decompresses no more than that (and the narinfo must say the same).
pub const NAR_SIZE_HEADER: &str = "x-nar-size";

/// How the server checks one upload.
#[derive(Clone, Copy, Debug)]
pub struct IngestOptions {
    /// zstd level of the stored form (for uploads not already zstd).
    pub level: i32,
    /// Decoder memory, and the NarSize bound: the server's `max-nar-size`, or the size the
    /// client declared (`X-Nar-Size`) when smaller.
    pub limits: DecodeLimits,
    /// Whether `limits.nar_size` is what the client declared.
    pub declared: bool,
    /// When the check is given up (a slow bomb must not hold an ingest slot for ever).
    pub deadline: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("not a valid NAR: {0}")]
    BadNar(String),
    #[error("cannot decompress the upload: {0}")]
    Decompress(String),
    /// 413: over the NarSize bound or the decoder's memory.
    #[error("{0}")]
    TooLarge(DecodeError),
    #[error("checking the upload took longer than the server allows ({0} s)")]
    TooSlow(u64),
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

/// The upload's bytes, read until `deadline`.
struct Timed<R> {
    inner: R,
    deadline: Option<Instant>,
    started: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error("deadline")]
struct PastDeadline(u64);

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            let seconds = self.deadline.map_or(0, |d| d.saturating_duration_since(self.started).as_secs());
            return Err(io::Error::new(io::ErrorKind::TimedOut, PastDeadline(seconds)));
        }
        self.inner.read(buf)
    }
}

fn raw_input(raw: &Path, opts: &IngestOptions) -> io::Result<BufReader<Timed<File>>> {
    let file = Timed { inner: File::open(raw)?, deadline: opts.deadline, started: Instant::now() };
    Ok(BufReader::with_capacity(1 << 20, file))
}

/// Reads the upload at `raw`, writes the stored form to `out` (synced), and returns what was
/// computed. A zstd upload is already in the stored form: it is checked (decompressed, parsed,
/// hashed, and found to hold nothing but data frames) and kept as sent, so the server spends no
/// second compression on it.
pub fn ingest(raw: &Path, kind: Upload, out: &Path, opts: &IngestOptions) -> Result<NarRecord, IngestError> {
    if kind == Codec::Zstd {
        return check_zstd(raw, out, opts);
    }
    let decoded = decoder(kind, raw_input(raw, opts)?, opts);
    let stored = File::create(out)?;
    let encoder = zstd::stream::write::Encoder::new(HashingWriter::new(stored), opts.level)?;
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

fn decoder<'a>(kind: Upload, input: impl io::BufRead + Send + 'a, opts: &IngestOptions) -> Box<dyn Read + Send + 'a> {
    if opts.declared {
        decode::decoder_declared(kind, input, opts.limits)
    } else {
        decode::decoder(kind, input, opts.limits)
    }
}

fn check_zstd(raw: &Path, out: &Path, opts: &IngestOptions) -> Result<NarRecord, IngestError> {
    let mut file = HashingReader::new(raw_input(raw, opts)?);
    let mut nar_reader = HashingReader::new(decoder(Codec::Zstd, io::BufReader::new(&mut file), opts));
    // The frame reader refuses anything after the last frame: what is kept is all checked.
    nar::validate(&mut nar_reader).map_err(classify)?;
    let (_, nar) = nar_reader.finish();
    let (_, file) = file.finish();
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
    match e {
        nar::NarError::Read(io) => {
            if let Some(PastDeadline(s)) = io.get_ref().and_then(|i| i.downcast_ref::<PastDeadline>()) {
                return IngestError::TooSlow(*s);
            }
            match DecodeError::of(&io) {
                Some(d @ (DecodeError::TooLarge { .. } | DecodeError::Memory { .. })) => {
                    IngestError::TooLarge(d.clone())
                }
                Some(DecodeError::Format(m)) => IngestError::Decompress(m.clone()),
                // A read error below the NAR parser that is not the decoder's is the disk's.
                None if io.kind() == io::ErrorKind::InvalidData => IngestError::Decompress(io.to_string()),
                None => IngestError::Io(io),
            }
        }
        e if e.is_malformed() => IngestError::BadNar(e.to_string()),
        e => IngestError::Decompress(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> IngestOptions {
        IngestOptions {
            level: 3,
            limits: DecodeLimits::new(DEFAULT_DECODER_MEMORY, 1 << 30),
            declared: false,
            deadline: None,
        }
    }

    #[test]
    fn plain_and_zstd_uploads_give_the_same_nar_and_junk_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).expect("mkdir");
        std::fs::write(tree.join("hello"), b"hello, cache\n").expect("write");
        let (plain, digest) = nar::write_nar_digested(&tree, Vec::new()).expect("nar");
        let raw = dir.path().join("up.nar");
        std::fs::write(&raw, &plain).expect("write");
        let a = ingest(&raw, Upload::None, &dir.path().join("a"), &opts()).expect("plain");
        assert_eq!((a.nar_hash, a.nar_size), (digest.sha256, digest.size));

        let zst = dir.path().join("up.nar.zst");
        std::fs::write(&zst, zstd::encode_all(plain.as_slice(), 19).expect("zstd")).expect("write");
        let sent_size = std::fs::metadata(&zst).expect("stat").len();
        let b = ingest(&zst, Upload::Zstd, &dir.path().join("b"), &opts()).expect("zstd");
        assert_eq!((b.nar_hash, b.nar_size), (digest.sha256, digest.size));
        assert_eq!(b.file_size, sent_size, "a zstd upload is kept as sent");
        assert_eq!(zstd::decode_all(std::fs::File::open(dir.path().join("b")).expect("open")).expect("decode"), plain);

        std::fs::write(&raw, b"nix-archive-1 and then nonsense").expect("write");
        assert!(matches!(ingest(&raw, Upload::None, &dir.path().join("c"), &opts()), Err(IngestError::BadNar(_))));
        std::fs::write(&zst, b"not zstd at all").expect("write");
        assert!(ingest(&zst, Upload::Zstd, &dir.path().join("d"), &opts()).is_err());
        assert_eq!(Upload::from_name("x.nar.bz2"), None);
    }

    #[test]
    fn a_check_past_its_deadline_is_given_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("f");
        std::fs::write(&tree, vec![7u8; 4 << 20]).expect("write");
        let (plain, _) = nar::write_nar_digested(&tree, Vec::new()).expect("nar");
        let raw = dir.path().join("up.nar");
        std::fs::write(&raw, &plain).expect("write");
        let late = IngestOptions { deadline: Some(std::time::Instant::now()), ..opts() };
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(matches!(ingest(&raw, Upload::None, &dir.path().join("a"), &late), Err(IngestError::TooSlow(_))));
        // Within the NarSize bound it declared, or one byte short of it.
        let exact = IngestOptions {
            limits: DecodeLimits::new(DEFAULT_DECODER_MEMORY, plain.len() as u64),
            declared: true,
            ..opts()
        };
        assert!(ingest(&raw, Upload::None, &dir.path().join("b"), &exact).is_ok());
        let short =
            IngestOptions { limits: DecodeLimits::new(DEFAULT_DECODER_MEMORY, plain.len() as u64 - 1), ..exact };
        assert!(matches!(
            ingest(&raw, Upload::None, &dir.path().join("c"), &short),
            Err(IngestError::TooLarge(DecodeError::TooLarge { declared: true, .. }))
        ));
    }
}

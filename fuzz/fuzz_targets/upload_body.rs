//! Upload bodies, as the server ingests `PUT /<cache>/nar/<name>.nar[.xz|.zst]`
//! (`ingest::ingest`, small limits: 8 MiB of decoder memory, 256 KiB of NAR), each input tried
//! as all three kinds:
//! - ingesting never panics, hangs, or allocates past its bound (short-run.sh adds a malloc limit);
//! - what it accepts is stored as zstd whose bytes have the returned FileHash and FileSize, and
//!   that decompresses (with libzstd's own decoder) to a valid NAR of exactly the returned
//!   NarHash and NarSize, within the NarSize bound;
//! - a plain upload is stored as exactly the NAR sent, and any valid NAR within the bound is
//!   accepted, also with its size declared (`X-Nar-Size`), and refused as too large with a
//!   declared size one byte short;
//! - an xz upload's NAR is what liblzma decodes of it;
//! - a zstd upload is kept as sent, and holds data frames only: no skippable frame, nothing
//!   after the last frame;
//! - the pull client's decoder (`decode::decoder_declared`, which `pull` reads downloads with)
//!   never gives more than the declared NarSize, and gives what the ingest stored.
#![no_main]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flywheel_cache::index::NarRecord;
use flywheel_cache::ingest::{decode, ingest, Codec, DecodeError, DecodeLimits, IngestError, IngestOptions};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const MEMORY: u64 = 8 << 20;
const NAR_SIZE: u64 = 256 << 10;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Where the uploads are written (`TMPDIR`: short-run.sh points it at memory, as ingest syncs
/// what it stores).
fn dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir")).path()
}

fn opts(nar_size: u64, declared: bool) -> IngestOptions {
    IngestOptions { level: 3, limits: DecodeLimits::new(MEMORY, nar_size), declared, deadline: None }
}

/// Ingests `data` as an upload of `kind`: the record and the stored bytes, or why not.
fn run(data: &[u8], kind: Codec, o: &IngestOptions) -> Result<(NarRecord, Vec<u8>), IngestError> {
    let raw: PathBuf = dir().join("upload");
    let out: PathBuf = dir().join("stored");
    std::fs::write(&raw, data).expect("write the upload");
    let _ = std::fs::remove_file(&out);
    let result = ingest(&raw, kind, &out, o);
    let stored = result.as_ref().ok().map(|_| std::fs::read(&out).expect("read what was stored"));
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&out);
    result.map(|r| (r, stored.unwrap_or_default()))
}

/// `data` decoded as the pull client decodes a download whose narinfo says NarSize `NAR_SIZE`.
fn pull_decode(kind: Codec, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let decoded = decode::decoder_declared(kind, data, DecodeLimits::new(MEMORY, NAR_SIZE)).read_to_end(&mut out);
    assert!(out.len() as u64 <= NAR_SIZE, "{kind:?}: the decoder gave {} bytes, over its bound", out.len());
    decoded.ok().map(|_| out)
}

/// At most `limit + 1` bytes of `r`: enough to tell that it is more than `limit`.
fn read_bounded(r: impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(limit + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// The stored form: zstd data frames, one after another, and nothing else.
fn data_frames_only(stored: &[u8]) {
    let mut pos = 0;
    assert!(!stored.is_empty(), "an empty stored NAR");
    while pos < stored.len() {
        assert_eq!(stored[pos..].get(..4), Some(&ZSTD_MAGIC[..]), "not a zstd data frame at byte {pos}");
        let len = zstd::zstd_safe::find_frame_compressed_size(&stored[pos..])
            .unwrap_or_else(|e| panic!("a broken zstd frame at byte {pos}: {}", zstd::zstd_safe::get_error_name(e)));
        assert!(len > 0);
        pos += len;
    }
}

/// What every accepted upload must be.
fn check_stored(kind: Codec, rec: &NarRecord, stored: &[u8], limit: u64) -> Vec<u8> {
    assert_eq!(rec.compression, "zstd");
    assert_eq!(rec.file_size, stored.len() as u64, "{kind:?}: FileSize is not the stored size");
    assert_eq!(rec.file_hash, <[u8; 32]>::from(Sha256::digest(stored)), "{kind:?}: FileHash is not the stored bytes'");
    data_frames_only(stored);
    let decoder = zstd::stream::read::Decoder::new(stored).expect("zstd decoder");
    let nar =
        read_bounded(decoder, limit).unwrap_or_else(|e| panic!("{kind:?}: the stored NAR does not decompress: {e}"));
    assert!(nar.len() as u64 <= limit, "{kind:?}: a NAR over the NarSize bound was accepted");
    assert_eq!(rec.nar_size, nar.len() as u64, "{kind:?}: NarSize is not the stored NAR's");
    assert_eq!(rec.nar_hash, <[u8; 32]>::from(Sha256::digest(&nar)), "{kind:?}: NarHash is not the stored NAR's");
    let valid = flywheel_nix::nar::validate(&nar[..]);
    assert_eq!(valid.ok(), Some(nar.len() as u64), "{kind:?}: the stored NAR is not one valid NAR");
    nar
}

fuzz_target!(|data: &[u8]| {
    let roomy = opts(NAR_SIZE, false);
    let is_nar = flywheel_nix::nar::validate(data).is_ok();
    let pulled = [Codec::None, Codec::Xz, Codec::Zstd].map(|kind| pull_decode(kind, data));

    // Plain.
    match run(data, Codec::None, &roomy) {
        Ok((rec, stored)) => {
            let nar = check_stored(Codec::None, &rec, &stored, NAR_SIZE);
            assert_eq!(nar, data, "a plain upload was stored as another NAR");
            assert_eq!(pulled[0].as_deref(), Some(data), "the pull client reads another NAR");
        }
        Err(e) => {
            assert!(!is_nar || data.len() as u64 > NAR_SIZE, "a valid NAR within the bound was refused: {e}");
            if matches!(e, IngestError::TooLarge(_)) {
                assert!(data.len() as u64 > NAR_SIZE, "refused as too large: {} bytes", data.len());
            }
        }
    }
    if is_nar && data.len() as u64 <= NAR_SIZE {
        let exact = data.len() as u64;
        let (rec, _) = run(data, Codec::None, &opts(exact, true))
            .unwrap_or_else(|e| panic!("a NAR of exactly its declared size was refused: {e}"));
        assert_eq!(rec.nar_size, exact);
        match run(data, Codec::None, &opts(exact - 1, true)) {
            Err(IngestError::TooLarge(DecodeError::TooLarge { limit, declared: true })) => assert_eq!(limit, exact - 1),
            other => panic!("a NAR one byte over its declared size: {other:?}"),
        }
    }

    // xz.
    if let Ok((rec, stored)) = run(data, Codec::Xz, &roomy) {
        let nar = check_stored(Codec::Xz, &rec, &stored, NAR_SIZE);
        let decoded = read_bounded(liblzma::read::XzDecoder::new_multi_decoder(data), NAR_SIZE)
            .unwrap_or_else(|e| panic!("an xz upload liblzma cannot decode was accepted: {e}"));
        assert_eq!(nar, decoded, "an xz upload was stored as another NAR than it holds");
        assert_eq!(pulled[1].as_ref(), Some(&nar), "the pull client reads another NAR");
    }

    // zstd: kept as sent.
    if let Ok((rec, stored)) = run(data, Codec::Zstd, &roomy) {
        assert_eq!(stored, data, "a zstd upload was not kept as sent");
        let nar = check_stored(Codec::Zstd, &rec, &stored, NAR_SIZE);
        assert_eq!(pulled[2].as_ref(), Some(&nar), "the pull client reads another NAR");
    }
});

//! Layer compression: zstd (the default), gzip, or none. The compressors are pinned to exact
//! versions in the workspace manifest, since a layer's digest is the hash of the compressed
//! bytes, and what produced them is recorded in the image's labels.
//!
//! zstd always runs in its multi-threaded mode, with at least one worker: those frames are
//! identical whatever the number of workers (they differ from single-threaded frames), so the
//! digest does not depend on `--threads`. gzip runs one stream per layer through zlib-rs,
//! whose output does not depend on the CPU's features (its SIMD paths only compare and slide).

use std::fmt;
use std::io::{self, Write};

use crate::oci::media_type;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip { level: u32 },
    Zstd { level: i32 },
}

/// The version of the zlib-rs crate (the `=` pin in Cargo.toml); a unit test keeps them equal.
pub const ZLIB_RS_VERSION: &str = "0.5.5";

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 3 }
    }
}

impl Compression {
    /// gzip at the level umoci and Go's compress/gzip use by default.
    pub const GZIP_DEFAULT: Compression = Compression::Gzip { level: 6 };

    /// Parses `none`, `zstd`, `zstd:LEVEL` (1-19), `gzip` or `gzip:LEVEL` (1-9).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let level_in = |range: std::ops::RangeInclusive<i64>, l: &str| -> Result<i64, String> {
            let v: i64 = l.parse().map_err(|_| format!("{name} level {l:?} is not a number"))?;
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(format!("{name} level {v} is outside {}..={}", range.start(), range.end()))
            }
        };
        match (name, level) {
            ("none", None) => Ok(Compression::None),
            ("zstd", None) => Ok(Compression::default()),
            ("zstd", Some(l)) => Ok(Compression::Zstd { level: level_in(1..=19, l)? as i32 }),
            ("gzip", None) => Ok(Compression::GZIP_DEFAULT),
            ("gzip", Some(l)) => Ok(Compression::Gzip { level: level_in(1..=9, l)? as u32 }),
            _ => Err(format!("unknown compression {s:?}: use zstd, zstd:LEVEL, gzip, gzip:LEVEL or none")),
        }
    }

    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::None => media_type::LAYER_TAR,
            Compression::Gzip { .. } => media_type::LAYER_GZIP,
            Compression::Zstd { .. } => media_type::LAYER_ZSTD,
        }
    }

    /// What made the bytes: the compressor, its exact version and its settings. Recorded in a
    /// label and part of the layer cache key.
    pub fn describe(&self) -> String {
        match self {
            Compression::None => "none".to_string(),
            Compression::Gzip { level } => format!("gzip level {level}, zlib-rs {ZLIB_RS_VERSION}"),
            Compression::Zstd { level } => {
                format!("zstd level {level}, multi-threaded frames, libzstd {}", zstd::zstd_safe::version_string())
            }
        }
    }

    /// Wraps `out` in the compressor; `workers` is zstd's worker count (at least 1).
    pub fn encoder<W: Write>(&self, out: W, workers: u32) -> io::Result<Encoder<W>> {
        Ok(match *self {
            Compression::None => Encoder::None(out),
            Compression::Gzip { level } => {
                // No name, no mtime, OS "unknown": the header is the same everywhere.
                let enc = flate2::GzBuilder::new().operating_system(255).write(out, flate2::Compression::new(level));
                Encoder::Gzip(enc)
            }
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.multithread(workers.max(1))?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip { level } => write!(f, "gzip:{level}"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Ends the compressed stream and returns the writer underneath.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Gzip(e) => e.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn compress(c: Compression, data: &[u8], workers: u32) -> Vec<u8> {
        let mut e = c.encoder(Vec::new(), workers).unwrap();
        for chunk in data.chunks(100_000) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        // Compressible but not trivial: 24 MiB, so zstd splits it into several jobs.
        (0..24u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 ^ (i >> 12) as u8).collect()
    }

    #[test]
    fn zstd_frames_do_not_depend_on_the_number_of_workers() {
        let data = sample();
        let one = compress(Compression::default(), &data, 1);
        assert_eq!(one, compress(Compression::default(), &data, 3));
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(&one[..]).unwrap().read_to_end(&mut back).unwrap();
        assert!(back == data);
    }

    #[test]
    fn gzip_round_trips_with_a_fixed_header() {
        let data = sample();
        let gz = compress(Compression::GZIP_DEFAULT, &data[..1 << 20], 1);
        // magic, deflate, no flags, mtime 0, xfl, OS 255
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert!(back == data[..1 << 20]);
    }

    #[test]
    fn parse_and_display() {
        for s in ["none", "zstd:3", "zstd:19", "gzip:6", "gzip:1"] {
            assert_eq!(Compression::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd { level: 3 }));
        assert_eq!(Compression::parse("gzip"), Ok(Compression::Gzip { level: 6 }));
        for bad in ["zstd:0", "zstd:20", "gzip:10", "xz", "zstd:x", "none:1"] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pinned_zlib_rs_version_is_the_one_in_the_lock_file() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
        let want = format!("name = \"zlib-rs\"\nversion = \"{ZLIB_RS_VERSION}\"");
        assert!(lock.contains(&want), "Cargo.lock does not pin zlib-rs {ZLIB_RS_VERSION}");
    }
}

//! How NARs are compressed in the cache. zstd is pinned to an exact version in the workspace
//! manifest: its output bytes, and so every FileHash, depend on it.

use std::io::{self, Write};

use flywheel_nix::narinfo::Compression as NarinfoCompression;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        // Level 3 is zstd's own default: several hundred MB/s per core, close to level 9's ratio on store paths.
        Compression::Zstd { level: 3 }
    }
}

impl Compression {
    /// Parses `none`, `zstd` or `zstd:LEVEL`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::default()),
            Some(("zstd", level)) => {
                let level: i32 = level.parse().map_err(|_| format!("zstd level {level:?} is not a number"))?;
                if !(1..=19).contains(&level) {
                    return Err(format!("zstd level {level} is outside 1..=19"));
                }
                Ok(Compression::Zstd { level })
            }
            _ => Err(format!("unknown compression {s:?}: use none, zstd or zstd:LEVEL")),
        }
    }

    /// The NAR file's extension after `.nar`.
    pub fn extension(&self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd { .. } => ".zst",
        }
    }

    pub fn narinfo(&self) -> NarinfoCompression {
        match self {
            Compression::None => NarinfoCompression::None,
            Compression::Zstd { .. } => NarinfoCompression::Zstd,
        }
    }

    /// Wraps `out` in the compressor. The frame carries a checksum, so a damaged NAR file is
    /// caught when it is decompressed, not only by its hash.
    pub fn encoder<'a, W: Write + 'a>(&self, out: W) -> io::Result<Encoder<'a, W>> {
        Ok(match *self {
            Compression::None => Encoder::None(out),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.include_checksum(true)?;
                Encoder::Zstd(enc)
            }
        })
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

pub enum Encoder<'a, W: Write> {
    None(W),
    Zstd(zstd::stream::write::Encoder<'a, W>),
}

impl<W: Write> Encoder<'_, W> {
    /// Ends the stream (writing zstd's last frame) and returns the output.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.write_all(buf),
            Encoder::Zstd(e) => e.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_levels() {
        assert_eq!(Compression::parse("none"), Ok(Compression::None));
        assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd { level: 3 }));
        assert_eq!(Compression::parse("zstd:19"), Ok(Compression::Zstd { level: 19 }));
        assert!(Compression::parse("zstd:0").is_err());
        assert!(Compression::parse("xz").is_err());
    }

    #[test]
    fn zstd_round_trips_and_is_deterministic() {
        let data = b"nix-archive-1 ".repeat(10_000);
        let compress = || {
            let mut e = Compression::default().encoder(Vec::new()).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let a = compress();
        assert_eq!(a, compress());
        assert!(a.len() < data.len() / 10);
        assert_eq!(zstd::decode_all(&a[..]).unwrap(), data);
    }
}

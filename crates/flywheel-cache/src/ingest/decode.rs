//! Decompressing a NAR someone else compressed, within bounds set before the first byte is
//! read: the server's uploads and the pull client's downloads both come from the network.
//!
//! - Memory: xz's decoder gets a memory limit (liblzma refuses a stream whose dictionary needs
//!   more, instead of allocating it); zstd's gets the largest window it may use.
//! - Size: at most `nar_size` bytes come out (the signed NarSize on a pull; the declared size
//!   or the server's limit on an upload), so a small bomb cannot fill a disk or hold a slot.
//! - Shape: a zstd stream is one or more data frames and nothing else. Skippable frames (which
//!   libzstd would pass over silently) and bytes after the last frame are refused: the server
//!   keeps a zstd upload as sent, and it must not serve bytes nobody checked.

use std::io::{self, BufRead, Read};

/// What decoding one NAR may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Memory one decoder may use: xz's memory limit, and the largest zstd window (the power of
    /// two at or below it).
    pub memory: u64,
    /// The most NAR bytes that may come out.
    pub nar_size: u64,
}

/// What zstd level 22 and `xz -9` need (a 128 MiB window; a 64 MiB dictionary), and zstd's own
/// default limit: every NAR Nix or flywheel writes decodes within it.
pub const DEFAULT_DECODER_MEMORY: u64 = 128 << 20;

impl DecodeLimits {
    pub fn new(memory: u64, nar_size: u64) -> DecodeLimits {
        DecodeLimits { memory, nar_size }
    }

    /// log2 of the largest zstd window allowed, within what libzstd accepts (10 to 31).
    fn zstd_window_log(&self) -> u32 {
        (63 - self.memory.max(1).leading_zeros()).clamp(10, 31)
    }
}

/// Why a decoder refused its input: the server answers 400 or 413 with this line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the NAR is larger than {limit} bytes{}", if *.declared { " (its declared NarSize)" } else { "" })]
    TooLarge { limit: u64, declared: bool },
    #[error("decompressing it needs more than {limit} bytes of memory (the server's limit): {detail}")]
    Memory { limit: u64, detail: String },
    #[error("{0}")]
    Format(String),
}

impl DecodeError {
    fn io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// The decoder's refusal inside an I/O error, if that is what it is.
    pub fn of(e: &io::Error) -> Option<&DecodeError> {
        e.get_ref().and_then(|inner| inner.downcast_ref::<DecodeError>())
    }
}

/// The compression of a NAR, as its name's extension or a narinfo's `Compression:` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Xz,
    Zstd,
}

/// `input` decompressed within `limits`.
pub fn decoder<'a>(codec: Codec, input: impl BufRead + Send + 'a, limits: DecodeLimits) -> Box<dyn Read + Send + 'a> {
    bounded(codec, input, limits, false)
}

/// [`decoder`], where the NarSize bound is a size someone declared (a narinfo's, an upload
/// header's): a longer NAR is refused as not matching it.
pub fn decoder_declared<'a>(
    codec: Codec,
    input: impl BufRead + Send + 'a,
    limits: DecodeLimits,
) -> Box<dyn Read + Send + 'a> {
    bounded(codec, input, limits, true)
}

fn bounded<'a>(
    codec: Codec,
    input: impl BufRead + Send + 'a,
    limits: DecodeLimits,
    declared: bool,
) -> Box<dyn Read + Send + 'a> {
    let inner: Box<dyn Read + Send + 'a> = match codec {
        Codec::None => Box::new(input),
        Codec::Xz => Box::new(XzReader::new(input, limits.memory)),
        Codec::Zstd => Box::new(ZstdFrames::new(input, limits)),
    };
    Box::new(Bounded { inner, left: limits.nar_size, limit: limits.nar_size, declared })
}

/// Ends with an error once more than `limit` bytes would come out.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
    declared: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // One byte more than allowed is enough to know.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(DecodeError::TooLarge { limit: self.limit, declared: self.declared }.io()),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// liblzma's decoder with a memory limit, concatenated streams allowed (as `xz -d` does).
struct XzReader<R: BufRead> {
    inner: liblzma::bufread::XzDecoder<R>,
    memory: u64,
}

impl<R: BufRead> XzReader<R> {
    fn new(input: R, memory: u64) -> Self {
        // Only fails for bad flags or when liblzma cannot allocate its small state.
        let stream = liblzma::stream::Stream::new_stream_decoder(memory, liblzma::stream::CONCATENATED);
        let inner = match stream {
            Ok(s) => liblzma::bufread::XzDecoder::new_stream(input, s),
            Err(_) => liblzma::bufread::XzDecoder::new_multi_decoder(input),
        };
        XzReader { inner, memory }
    }
}

impl<R: BufRead> Read for XzReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let cause = e.get_ref().and_then(|i| i.downcast_ref::<liblzma::stream::Error>()).cloned();
            match cause {
                Some(liblzma::stream::Error::MemLimit) => {
                    DecodeError::Memory { limit: self.memory, detail: "the xz stream's dictionary is larger".into() }
                        .io()
                }
                Some(other) => DecodeError::Format(format!("not a valid xz stream: {other}")).io(),
                None => e,
            }
        })
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const INPUT_CHUNK: usize = 1 << 17;

/// zstd data frames, one after another, and nothing else.
struct ZstdFrames<R> {
    input: R,
    dctx: zstd_safe::DCtx<'static>,
    /// Input taken from `input`, not yet given to the decoder: `buf[pos..]`.
    buf: Vec<u8>,
    pos: usize,
    in_frame: bool,
    frames: u64,
    /// Compressed bytes before `buf`, for messages.
    offset: u64,
    memory: u64,
}

impl<R: Read> ZstdFrames<R> {
    fn new(input: R, limits: DecodeLimits) -> Self {
        let mut dctx = zstd_safe::DCtx::create();
        // An out-of-range value is clamped by window_log(); this cannot fail.
        let _ = dctx.set_parameter(zstd_safe::DParameter::WindowLogMax(limits.zstd_window_log()));
        ZstdFrames {
            input,
            dctx,
            buf: Vec::with_capacity(2 * INPUT_CHUNK),
            pos: 0,
            in_frame: false,
            frames: 0,
            offset: 0,
            memory: limits.memory,
        }
    }

    /// Makes at least `want` bytes available in `buf[pos..]` unless the input ends first
    /// (then false).
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        if self.buf.len() - self.pos >= want {
            return Ok(true);
        }
        self.offset += self.pos as u64;
        self.buf.drain(..self.pos);
        self.pos = 0;
        while self.buf.len() < want {
            let len = self.buf.len();
            self.buf.resize(len + INPUT_CHUNK, 0);
            let read = self.input.read(&mut self.buf[len..]);
            let n = *read.as_ref().unwrap_or(&0);
            self.buf.truncate(len + n);
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.buf.len() >= want)
    }

    fn at(&self) -> u64 {
        self.offset + self.pos as u64
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                // A frame boundary: the next four bytes say what comes.
                if !self.fill(4)? {
                    let left = self.buf.len() - self.pos;
                    return match (left, self.frames) {
                        (0, 0) => Err(DecodeError::Format("an empty zstd stream".into()).io()),
                        (0, _) => Ok(0),
                        _ => Err(DecodeError::Format(format!(
                            "{left} bytes after the last zstd frame, at byte {}",
                            self.at()
                        ))
                        .io()),
                    };
                }
                let magic = &self.buf[self.pos..self.pos + 4];
                if magic == ZSTD_MAGIC {
                    self.in_frame = true;
                } else if magic[1..] == [0x2a, 0x4d, 0x18] && magic[0] & 0xf0 == 0x50 {
                    return Err(DecodeError::Format(format!(
                        "a zstd skippable frame at byte {}: only data frames are accepted",
                        self.at()
                    ))
                    .io());
                } else if self.frames == 0 {
                    return Err(DecodeError::Format("not a zstd stream (no zstd frame header)".into()).io());
                } else {
                    return Err(
                        DecodeError::Format(format!("data after the last zstd frame, at byte {}", self.at())).io()
                    );
                }
            }
            if self.pos == self.buf.len() && !self.fill(1)? {
                return Err(
                    DecodeError::Format(format!("the zstd stream ends inside a frame, at byte {}", self.at())).io()
                );
            }
            let mut input = zstd_safe::InBuffer::around(&self.buf[self.pos..]);
            let mut output = zstd_safe::OutBuffer::around(&mut *out);
            let hint = self.dctx.decompress_stream(&mut output, &mut input).map_err(|code| {
                let name = zstd_safe::get_error_name(code);
                if name.contains("Frame requires too much memory") {
                    DecodeError::Memory { limit: self.memory, detail: format!("zstd: {name}") }.io()
                } else {
                    DecodeError::Format(format!("not a valid zstd stream: {name}")).io()
                }
            })?;
            self.pos += input.pos();
            let produced = output.pos();
            if hint == 0 {
                // The frame is complete (and its checksum, when it has one, matched).
                self.in_frame = false;
                self.frames += 1;
            }
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(codec: Codec, data: &[u8], limits: DecodeLimits) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(codec, data, limits).read_to_end(&mut out)?;
        Ok(out)
    }

    fn refusal(r: io::Result<Vec<u8>>) -> DecodeError {
        let e = r.expect_err("refused");
        DecodeError::of(&e).cloned().unwrap_or_else(|| panic!("not a decoder's refusal: {e}"))
    }

    const ROOMY: DecodeLimits = DecodeLimits { memory: DEFAULT_DECODER_MEMORY, nar_size: 1 << 30 };

    #[test]
    fn zstd_frames_decode_and_anything_else_is_refused() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let one = zstd::encode_all(&data[..], 3).expect("zstd");
        assert_eq!(decode(Codec::Zstd, &one, ROOMY).expect("one frame"), data);
        let mut two = one.clone();
        two.extend_from_slice(&zstd::encode_all(&b"more"[..], 1).expect("zstd"));
        let mut both = data.clone();
        both.extend_from_slice(b"more");
        assert_eq!(decode(Codec::Zstd, &two, ROOMY).expect("two frames"), both);

        // A skippable frame (magic 0x184D2A5?, length, payload), first or between frames.
        let mut skippable = vec![0x53, 0x2a, 0x4d, 0x18, 6, 0, 0, 0];
        skippable.extend_from_slice(b"<html>");
        for bad in [[skippable.clone(), one.clone()].concat(), [one.clone(), skippable.clone(), one.clone()].concat()] {
            assert!(
                matches!(refusal(decode(Codec::Zstd, &bad, ROOMY)), DecodeError::Format(m) if m.contains("skippable"))
            );
        }
        for tail in [&b"x"[..], b"junk after", &[0, 0, 0, 0, 0]] {
            let bad = [one.as_slice(), tail].concat();
            assert!(
                matches!(refusal(decode(Codec::Zstd, &bad, ROOMY)), DecodeError::Format(m) if m.contains("after the last"))
            );
        }
        assert!(matches!(refusal(decode(Codec::Zstd, b"", ROOMY)), DecodeError::Format(_)));
        assert!(matches!(refusal(decode(Codec::Zstd, &one[..one.len() - 3], ROOMY)), DecodeError::Format(_)));
    }

    #[test]
    fn a_window_or_dictionary_over_the_memory_limit_is_refused_before_it_is_allocated() {
        let data = vec![7u8; 3 << 20];
        // A frame that declares an 8 MiB window (long mode), against a 1 MiB limit.
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.long_distance_matching(true).expect("ldm");
        enc.window_log(23).expect("window");
        std::io::Write::write_all(&mut enc, &data).expect("write");
        let big_window = enc.finish().expect("finish");
        let small = DecodeLimits { memory: 1 << 20, nar_size: 1 << 30 };
        assert!(matches!(refusal(decode(Codec::Zstd, &big_window, small)), DecodeError::Memory { .. }));
        assert_eq!(decode(Codec::Zstd, &big_window, ROOMY).expect("within the default"), data);

        let xz9 = {
            let mut out = Vec::new();
            let mut enc = liblzma::read::XzEncoder::new(&data[..], 9);
            enc.read_to_end(&mut out).expect("xz");
            out
        };
        assert!(matches!(refusal(decode(Codec::Xz, &xz9, small)), DecodeError::Memory { .. }));
        assert_eq!(decode(Codec::Xz, &xz9, ROOMY).expect("within the default"), data);
        assert!(matches!(refusal(decode(Codec::Xz, b"not xz at all", ROOMY)), DecodeError::Format(_)));
    }

    #[test]
    fn no_more_than_the_nar_size_comes_out() {
        let data = vec![0u8; 1 << 20];
        let bomb = zstd::encode_all(&data[..], 19).expect("zstd");
        assert!(bomb.len() < 1000);
        for codec_data in [(Codec::Zstd, bomb.clone()), (Codec::None, data.clone())] {
            let limits = DecodeLimits { memory: DEFAULT_DECODER_MEMORY, nar_size: (1 << 20) - 1 };
            let r = refusal(decode(codec_data.0, &codec_data.1, limits));
            assert_eq!(r, DecodeError::TooLarge { limit: (1 << 20) - 1, declared: false });
            let exact = DecodeLimits { memory: DEFAULT_DECODER_MEMORY, nar_size: 1 << 20 };
            assert_eq!(decode(codec_data.0, &codec_data.1, exact).expect("exactly the limit").len(), 1 << 20);
        }
        let mut out = Vec::new();
        let limits = DecodeLimits { memory: DEFAULT_DECODER_MEMORY, nar_size: 10 };
        let e = decoder_declared(Codec::Zstd, &bomb[..], limits).read_to_end(&mut out).expect_err("too large");
        assert!(e.to_string().contains("declared NarSize"), "{e}");
    }
}

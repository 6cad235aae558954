//! SHA-256 and byte count of a stream, taken as it passes through: NarHash and NarSize
//! (or FileHash and FileSize) in the same pass that writes the bytes.

use std::io::{self, Read, Write};

use nix_derivation::NixHash;
use sha2::{Digest, Sha256};

/// The SHA-256 and length of a byte stream, as a narinfo's NarHash/NarSize or FileHash/FileSize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Digested {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl Digested {
    pub fn hash(&self) -> NixHash {
        NixHash::Sha256(self.sha256)
    }

    /// `sha256:<nix32>`, as in narinfo files and `nix-store --query --hash`.
    pub fn to_nix32(&self) -> String {
        self.hash().to_nix_nixbase32_string()
    }

    /// `sha256-<base64>`, as in `nix path-info --json`.
    pub fn to_sri(&self) -> String {
        self.hash().to_sri_string()
    }

    /// The 52-character nix32 digest alone, as in `nar/<filehash>.nar.zst`.
    pub fn nix32_digest(&self) -> String {
        nix_derivation::nixbase32::encode(&self.sha256)
    }
}

/// A writer that hashes and counts what it passes to `inner`.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    pub fn finish(self) -> (W, Digested) {
        (self.inner, Digested { sha256: self.hasher.finalize().into(), size: self.size })
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), size: 0 }
    }

    pub fn finish(self) -> (R, Digested) {
        (self.inner, Digested { sha256: self.hasher.finalize().into(), size: self.size })
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_with_sha256() {
        let data = b"hello world".repeat(1000);
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (out, d) = w.finish();
        assert_eq!(out, data);
        assert_eq!(d.size, data.len() as u64);
        let expected: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(d.sha256, expected);

        let mut r = HashingReader::new(&data[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish().1, d);
    }

    #[test]
    fn empty_input_hash_in_nix32() {
        let w = HashingWriter::new(io::sink());
        let (_, d) = w.finish();
        // sha256 of "" in Nix's base32, as `nix-hash --type sha256 --to-base32` prints it.
        assert_eq!(d.to_nix32(), "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
    }
}

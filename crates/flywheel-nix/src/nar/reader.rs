//! A streaming NAR parser that checks everything Nix checks, and a little more.
//!
//! The parser pulls from any `Read` and hands each node to a [`Visitor`]; file contents are
//! streamed to the visitor, never held in memory. It is iterative, so a deep NAR cannot
//! overflow the stack, and it refuses, with the byte offset: a wrong magic or token, strings
//! longer than their limits, non-zero padding, entry names that are empty, `.`, `..` or contain
//! `/` or NUL, entries that are unsorted or duplicated, truncated input, and (through
//! [`read_nar_to_end`]) trailing bytes.

use std::io::{self, Read};

use super::wire::{self, show};
use super::{Malformed, NarError};

/// Receives the nodes of a NAR in order. `name` is `None` for the root node.
pub trait Visitor {
    /// A regular file; `contents` yields exactly `size` bytes. Unread bytes are skipped.
    fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), NarError>;
    fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> Result<(), NarError>;
    /// A directory starts; its entries follow, then [`Visitor::leave_directory`].
    fn enter_directory(&mut self, name: Option<&[u8]>) -> Result<(), NarError>;
    fn leave_directory(&mut self) -> Result<(), NarError>;
}

/// A visitor that only lets the parser check the NAR.
pub struct Validate;

impl Visitor for Validate {
    fn file(&mut self, _: Option<&[u8]>, _: bool, _: u64, _: &mut dyn Read) -> Result<(), NarError> {
        Ok(())
    }
    fn symlink(&mut self, _: Option<&[u8]>, _: &[u8]) -> Result<(), NarError> {
        Ok(())
    }
    fn enter_directory(&mut self, _: Option<&[u8]>) -> Result<(), NarError> {
        Ok(())
    }
    fn leave_directory(&mut self) -> Result<(), NarError> {
        Ok(())
    }
}

/// Parses one NAR from `input`, leaving whatever follows it unread.
pub fn read_nar<R: Read, V: Visitor + ?Sized>(input: R, visitor: &mut V) -> Result<u64, NarError> {
    let mut p = Parser { input, offset: 0 };
    p.archive(visitor)?;
    Ok(p.offset)
}

/// Parses one NAR from `input` and requires the input to end right after it.
pub fn read_nar_to_end<R: Read, V: Visitor + ?Sized>(input: R, visitor: &mut V) -> Result<u64, NarError> {
    let mut p = Parser { input, offset: 0 };
    p.archive(visitor)?;
    let mut byte = [0u8; 1];
    loop {
        match p.input.read(&mut byte) {
            Ok(0) => return Ok(p.offset),
            Ok(_) => return Err(p.malformed(Malformed::TrailingData)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NarError::Read(e)),
        }
    }
}

/// Checks that `input` is exactly one well-formed NAR.
pub fn validate<R: Read>(input: R) -> Result<u64, NarError> {
    read_nar_to_end(input, &mut Validate)
}

struct Parser<R> {
    input: R,
    offset: u64,
}

/// A structural token: tokens are short, so they live on the stack.
struct Token {
    buf: [u8; 16],
    len: usize,
}

impl std::ops::Deref for Token {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// One open directory: the last entry name seen, to check order.
struct Frame {
    previous: Option<Vec<u8>>,
}

impl<R: Read> Parser<R> {
    fn archive<V: Visitor + ?Sized>(&mut self, v: &mut V) -> Result<(), NarError> {
        self.expect(wire::MAGIC)?;
        let mut stack: Vec<Frame> = Vec::new();
        let mut name: Option<Vec<u8>> = None;
        loop {
            // A node: a file or symlink is complete after this, a directory opens a frame.
            let mut complete = self.node(v, name.as_deref(), &mut stack)?;
            loop {
                if complete {
                    if stack.is_empty() {
                        return Ok(());
                    }
                    self.expect(wire::CLOSE)?; // closes the "entry" around the node
                }
                let token = self.token()?;
                if *token == *wire::CLOSE {
                    stack.pop();
                    v.leave_directory()?;
                    complete = true;
                    continue;
                }
                if *token != *wire::ENTRY {
                    return Err(self.unexpected("\"entry\" or \")\"", &token));
                }
                self.expect(wire::OPEN)?;
                self.expect(wire::NAME)?;
                let entry = self.string(wire::MAX_NAME_LEN, "entry name")?;
                if let Err(why) = wire::check_entry_name(&entry) {
                    return Err(self.malformed(Malformed::BadName { name: show(&entry), why }));
                }
                let frame = stack.last_mut().expect("entries are read only inside a directory");
                if let Some(previous) = &frame.previous {
                    if entry.as_slice() <= previous.as_slice() {
                        let (previous, entry) = (show(previous), show(&entry));
                        return Err(self.malformed(Malformed::NotSorted { previous, entry }));
                    }
                }
                frame.previous = Some(entry.clone());
                self.expect(wire::NODE)?;
                name = Some(entry);
                break;
            }
        }
    }

    /// Reads a node up to its end, or up to the start of its entries for a directory.
    fn node<V: Visitor + ?Sized>(
        &mut self,
        v: &mut V,
        name: Option<&[u8]>,
        stack: &mut Vec<Frame>,
    ) -> Result<bool, NarError> {
        self.expect(wire::OPEN)?;
        self.expect(wire::TYPE)?;
        let kind = self.token()?;
        match &*kind {
            wire::REGULAR => {
                let mut token = self.token()?;
                let executable = *token == *wire::EXECUTABLE;
                if executable {
                    self.expect(b"")?;
                    token = self.token()?;
                }
                if *token != *wire::CONTENTS {
                    return Err(self.unexpected("\"contents\"", &token));
                }
                let size = self.u64()?;
                let mut contents = Contents { parser: self, remaining: size, truncated: false };
                let visited = v.file(name, executable, size, &mut contents);
                // Skip what the visitor left, so the stream stays in step.
                let drained = match visited {
                    Ok(()) => io::copy(&mut contents, &mut io::sink()).map(drop),
                    Err(_) => Ok(()),
                };
                // A NAR that ends inside a file is malformed, whatever the visitor made of it.
                if contents.truncated {
                    return Err(self.malformed(Malformed::Truncated));
                }
                visited?;
                drained.map_err(NarError::Read)?;
                self.padding(size)?;
                self.expect(wire::CLOSE)?;
                Ok(true)
            }
            wire::SYMLINK => {
                self.expect(wire::TARGET)?;
                let target = self.string(wire::MAX_TARGET_LEN, "symlink target")?;
                if target.is_empty() || target.contains(&0) {
                    return Err(self.malformed(Malformed::BadSymlinkTarget(show(&target))));
                }
                v.symlink(name, &target)?;
                self.expect(wire::CLOSE)?;
                Ok(true)
            }
            wire::DIRECTORY => {
                if stack.len() >= wire::MAX_DEPTH {
                    return Err(self.malformed(Malformed::TooDeep));
                }
                v.enter_directory(name)?;
                stack.push(Frame { previous: None });
                Ok(false)
            }
            _ => Err(self.unexpected("\"regular\", \"symlink\" or \"directory\"", &kind)),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        match self.input.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.malformed(Malformed::Truncated)),
            Err(e) => Err(NarError::Read(e)),
        }
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let n = wire::padding(len);
        let mut pad = [0u8; 8];
        self.read_exact(&mut pad[..n])?;
        if pad[..n].iter().any(|&b| b != 0) {
            return Err(self.malformed(Malformed::BadPadding));
        }
        Ok(())
    }

    fn string(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, NarError> {
        let len = self.u64()?;
        if len > max as u64 {
            return Err(self.malformed(Malformed::TooLong { what, len, max }));
        }
        let mut s = vec![0u8; len as usize];
        self.read_exact(&mut s)?;
        self.padding(len)?;
        Ok(s)
    }

    fn token(&mut self) -> Result<Token, NarError> {
        let len = self.u64()?;
        if len > 16 {
            return Err(self.malformed(Malformed::TooLong { what: "token", len, max: 16 }));
        }
        let mut t = Token { buf: [0; 16], len: len as usize };
        self.read_exact(&mut t.buf[..t.len])?;
        self.padding(len)?;
        Ok(t)
    }

    fn expect(&mut self, want: &[u8]) -> Result<(), NarError> {
        let start = self.offset;
        let got = self.token()?;
        if *got != *want {
            self.offset = start;
            return Err(self.unexpected(&show(want), &got));
        }
        Ok(())
    }

    fn unexpected(&self, expected: &str, found: &[u8]) -> NarError {
        self.malformed(Malformed::UnexpectedToken { expected: expected.to_string(), found: show(found) })
    }

    fn malformed(&self, what: Malformed) -> NarError {
        NarError::Malformed { offset: self.offset, what }
    }
}

/// The contents of one file, read through the parser so offsets stay right.
struct Contents<'a, R> {
    parser: &'a mut Parser<R>,
    remaining: u64,
    truncated: bool,
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.parser.input.read(&mut buf[..want])?;
        if n == 0 {
            self.truncated = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "NAR ends inside a file's contents"));
        }
        self.remaining -= n as u64;
        self.parser.offset += n as u64;
        Ok(n)
    }
}

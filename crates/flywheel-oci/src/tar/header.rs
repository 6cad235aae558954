//! Tar headers from a fixed policy: POSIX ustar headers, with a PAX extended header (`x`)
//! before an entry only when a value does not fit its ustar field (a name or link target over
//! 100 bytes, a size of 8 GiB or more). No GNU extensions, no prefix-field splitting, no
//! uname/gname, device numbers zero: the same entry always gives the same bytes.

use std::io::{self, Write};

pub const BLOCK: usize = 512;

/// The name of every PAX extended header: fixed, unlike GNU tar's default, which holds a PID.
const PAX_NAME: &[u8] = b"././@PaxHeader";

/// What kind of entry a header introduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    File { size: u64 },
    Dir,
    Symlink { target: &'a [u8] },
}

/// One entry's metadata. `path` is relative (no leading `/`), without a trailing `/`.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    pub path: &'a [u8],
    pub kind: Kind<'a>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

/// Largest values of the ustar numeric fields (11 and 7 octal digits).
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
const MAX_OCTAL_7: u64 = 0o7_777_777;

/// Writes the header block(s) of `h`: a PAX header first when one is needed, then the ustar
/// header. File contents and their padding are the caller's to write.
pub fn write_header<W: Write + ?Sized>(out: &mut W, h: &Header<'_>) -> io::Result<()> {
    let mut name = h.path.to_vec();
    if h.kind == Kind::Dir {
        name.push(b'/');
    }
    let size = match h.kind {
        Kind::File { size } => size,
        _ => 0,
    };
    let target: &[u8] = match h.kind {
        Kind::Symlink { target } => target,
        _ => b"",
    };

    let mut pax: Vec<(&str, Vec<u8>)> = Vec::new();
    if name.len() > 100 {
        pax.push(("path", name.clone()));
    }
    if target.len() > 100 {
        pax.push(("linkpath", target.to_vec()));
    }
    if size > MAX_OCTAL_11 {
        pax.push(("size", size.to_string().into_bytes()));
    }
    if u64::from(h.uid) > MAX_OCTAL_7 {
        pax.push(("uid", h.uid.to_string().into_bytes()));
    }
    if u64::from(h.gid) > MAX_OCTAL_7 {
        pax.push(("gid", h.gid.to_string().into_bytes()));
    }
    if h.mtime > MAX_OCTAL_11 {
        pax.push(("mtime", h.mtime.to_string().into_bytes()));
    }
    if !pax.is_empty() {
        // Records are sorted by key, so the same values always give the same bytes.
        pax.sort_by(|a, b| a.0.cmp(b.0));
        let mut records = Vec::new();
        for (key, value) in &pax {
            records.extend_from_slice(&pax_record(key, value));
        }
        let block = ustar_block(PAX_NAME, b'x', 0o644, 0, 0, records.len() as u64, h.mtime.min(MAX_OCTAL_11), b"");
        out.write_all(&block)?;
        out.write_all(&records)?;
        out.write_all(&ZEROS[..padding(records.len() as u64)])?;
    }

    let typeflag = match h.kind {
        Kind::File { .. } => b'0',
        Kind::Dir => b'5',
        Kind::Symlink { .. } => b'2',
    };
    let block = ustar_block(
        &name[..name.len().min(100)],
        typeflag,
        h.mode & 0o7777,
        u64::from(h.uid).min(MAX_OCTAL_7),
        u64::from(h.gid).min(MAX_OCTAL_7),
        size.min(MAX_OCTAL_11),
        h.mtime.min(MAX_OCTAL_11),
        &target[..target.len().min(100)],
    );
    out.write_all(&block)
}

/// Zero bytes that pad a file's contents to a whole block.
pub fn write_padding<W: Write + ?Sized>(out: &mut W, size: u64) -> io::Result<()> {
    out.write_all(&ZEROS[..padding(size)])
}

/// The end of an archive: two zero blocks.
pub fn write_end<W: Write + ?Sized>(out: &mut W) -> io::Result<()> {
    out.write_all(&ZEROS)?;
    out.write_all(&ZEROS)
}

pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// `"<length> <key>=<value>\n"`, where the length counts the whole record, its own digits included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    linkname: &[u8],
) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = typeflag;
    b[157..157 + linkname.len()].copy_from_slice(linkname);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], 0);
    octal(&mut b[337..345], 0);
    // The checksum is summed with its own field as spaces, then written as 6 digits, NUL, space.
    b[148..156].copy_from_slice(b"        ");
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

/// Zero-padded octal digits filling the field but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(path: &[u8], kind: Kind<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, &Header { path, kind, mode: 0o644, uid: 0, gid: 0, mtime: 1 }).unwrap();
        out
    }

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        // "9 a=bcde\n" is 9 bytes long, its length digit included.
        assert_eq!(pax_record("a", b"bcde"), b"9 a=bcde\n");
        // Crossing a digit boundary: 98 bytes besides the length would make 100 with two
        // digits, which needs three, so the record is 101 bytes long.
        let rec = pax_record("path", &[b'x'; 91]);
        assert_eq!(rec.len(), 101);
        assert!(rec.starts_with(b"101 path="));
    }

    #[test]
    fn short_names_take_one_block_and_long_names_get_a_pax_header() {
        assert_eq!(header(b"nix/store", Kind::Dir).len(), BLOCK);
        let long = vec![b'n'; 150];
        let out = header(&long, Kind::File { size: 3 });
        assert_eq!(out.len(), 3 * BLOCK);
        assert_eq!(out[156], b'x');
        assert_eq!(out[2 * BLOCK + 156], b'0');
    }

    #[test]
    fn checksum_is_the_sum_of_the_block() {
        let out = header(b"a", Kind::Symlink { target: b"b" });
        let stored = u64::from_str_radix(std::str::from_utf8(&out[148..154]).unwrap(), 8).unwrap();
        let mut copy = out.clone();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|&x| u64::from(x)).sum::<u64>());
    }
}

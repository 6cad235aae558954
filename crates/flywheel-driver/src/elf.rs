//! What flywheel needs from an ELF shared library: its class and machine (the 32-bit compat
//! libraries next to the 64-bit ones must be told apart) and its SONAME (the link the dynamic
//! loader opens). Read lazily through [`ReadCache`], so a 100 MB libcuda costs a few pages.

use std::fs::File;
use std::path::Path;

use object::elf::{FileHeader32, FileHeader64, DT_SONAME, DT_STRSZ, DT_STRTAB, PT_DYNAMIC, PT_LOAD};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::read::{ReadCache, ReadRef, StringTable};
use object::{Endianness, FileKind};

/// The machines flywheel builds images for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }

    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => object::elf::EM_X86_64,
            Arch::Arm64 => object::elf::EM_AARCH64,
        }
    }

    /// The Debian multiarch triplet, which names the library folder.
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(format!("unknown architecture {s:?} (amd64 or arm64)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    pub is_64: bool,
    pub machine: u16,
    pub soname: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an ELF file")]
    NotElf,
    #[error("malformed ELF: {0}")]
    Malformed(String),
}

pub fn read(path: &Path) -> Result<ElfInfo, ElfError> {
    let file = File::open(path)?;
    let cache = ReadCache::new(file);
    let data = &cache;
    match FileKind::parse(data) {
        Ok(FileKind::Elf64) => parse::<FileHeader64<Endianness>, _>(data, true),
        Ok(FileKind::Elf32) => parse::<FileHeader32<Endianness>, _>(data, false),
        _ => Err(ElfError::NotElf),
    }
}

fn parse<'d, H: FileHeader<Endian = Endianness>, R: ReadRef<'d>>(data: R, is_64: bool) -> Result<ElfInfo, ElfError> {
    let bad = |e: object::read::Error| ElfError::Malformed(e.to_string());
    let header = H::parse(data).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    let machine = header.e_machine(endian);
    let soname = soname_from_sections(header, endian, data)?
        .map_or_else(|| soname_from_segments(header, endian, data), |s| Ok(Some(s)))?;
    Ok(ElfInfo { is_64, machine, soname })
}

fn soname_from_sections<'d, H: FileHeader<Endian = Endianness>, R: ReadRef<'d>>(
    header: &H,
    endian: Endianness,
    data: R,
) -> Result<Option<String>, ElfError> {
    let bad = |e: object::read::Error| ElfError::Malformed(e.to_string());
    let sections = header.sections(endian, data).map_err(bad)?;
    let Some((dyns, link)) = sections.dynamic(endian, data).map_err(bad)? else {
        return Ok(None);
    };
    let strings = sections.strings(endian, data, link).map_err(bad)?;
    find_soname(dyns, endian, strings)
}

/// For libraries stripped of their section headers: PT_DYNAMIC, with DT_STRTAB's address
/// mapped to a file offset through the PT_LOAD segments.
fn soname_from_segments<'d, H: FileHeader<Endian = Endianness>, R: ReadRef<'d>>(
    header: &H,
    endian: Endianness,
    data: R,
) -> Result<Option<String>, ElfError> {
    let bad = |e: object::read::Error| ElfError::Malformed(e.to_string());
    let segments = header.program_headers(endian, data).map_err(bad)?;
    let Some(dynamic) = segments.iter().find(|s| s.p_type(endian) == PT_DYNAMIC) else {
        return Ok(None);
    };
    let Some(dyns) = dynamic.dynamic(endian, data).map_err(bad)? else {
        return Ok(None);
    };
    let value = |tag: u32| -> Option<u64> {
        dyns.iter().find(|d| d.tag32(endian) == Some(tag)).map(|d| d.d_val(endian).into())
    };
    let (Some(addr), Some(size)) = (value(DT_STRTAB), value(DT_STRSZ)) else {
        return Ok(None);
    };
    let offset = segments.iter().filter(|s| s.p_type(endian) == PT_LOAD).find_map(|s| {
        let vaddr: u64 = s.p_vaddr(endian).into();
        let filesz: u64 = s.p_filesz(endian).into();
        let off: u64 = s.p_offset(endian).into();
        (addr >= vaddr && addr < vaddr + filesz).then(|| off + (addr - vaddr))
    });
    let Some(offset) = offset else {
        return Err(ElfError::Malformed("DT_STRTAB lies outside every loaded segment".into()));
    };
    find_soname(dyns, endian, StringTable::new(data, offset, offset + size))
}

fn find_soname<'d, D: Dyn<Endian = Endianness>, R: ReadRef<'d>>(
    dyns: &[D],
    endian: Endianness,
    strings: StringTable<'d, R>,
) -> Result<Option<String>, ElfError> {
    for d in dyns {
        if d.tag32(endian) == Some(DT_SONAME) {
            let offset: u64 = d.d_val(endian).into();
            let offset = u32::try_from(offset).map_err(|_| ElfError::Malformed("DT_SONAME out of range".into()))?;
            let name =
                strings.get(offset).map_err(|()| ElfError::Malformed("DT_SONAME outside the string table".into()))?;
            return Ok(Some(String::from_utf8_lossy(name).into_owned()));
        }
    }
    Ok(None)
}

/// Whether the library exports every one of `symbols` (checked before a library is loaded
/// through bindings that panic on a missing function).
pub fn exports_all(path: &Path, symbols: &[&str]) -> bool {
    use object::{Object, ObjectSymbol};
    let Ok(file) = File::open(path) else { return false };
    let cache = ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else { return false };
    let exported: std::collections::HashSet<&[u8]> =
        obj.dynamic_symbols().filter(|s| s.is_definition()).filter_map(|s| s.name_bytes().ok()).collect();
    symbols.iter().all(|s| exported.contains(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machines_libc() {
        // Every Linux machine that builds flywheel has a glibc with a SONAME.
        let candidates = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/libc.so.6", "/lib64/libc.so.6"];
        let Some(libc) = candidates.iter().map(Path::new).find(|p| p.exists()) else {
            return;
        };
        let info = read(libc).expect("libc parses");
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
        assert!(info.is_64);
        assert_eq!(info.machine, Arch::host().elf_machine());
    }

    #[test]
    fn refuses_what_is_not_elf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("libcuda.so.1.2.3");
        std::fs::write(&p, b"#!/bin/sh\necho not a library\n").expect("write");
        assert!(matches!(read(&p), Err(ElfError::NotElf)));
    }
}

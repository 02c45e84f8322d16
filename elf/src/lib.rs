//! Validation of static ELF64 executables, shared by the kernel (the root
//! task) and user space (`keel_rt::process` loads the programs it spawns),
//! and of static position-independent ones (`ET_DYN` with only relative
//! relocations, for user space). Portable and host-tested; `no_std`, no
//! allocation.
//!
//! Only what loading such an executable needs is read: the file header,
//! the `PT_LOAD`, `PT_TLS` and `PT_DYNAMIC` program headers (and where the
//! headers lie, for the auxiliary vector), and of the dynamic section only
//! where its `Elf64_Rela` table is ([`rela_table`], [`relative`]). Written by hand
//! rather than with an ELF crate because this subset is small and every
//! field is untrusted: each one is range-checked here, so the loader can
//! trust an [`Image`].
//!
//! Invariants of an [`Image`]: every segment lies in `[USER_IMAGE_MIN,
//! USER_END)`, its file bytes lie inside the file, `file_size <= mem_size`,
//! no segment is both writable and executable, segments do not share a
//! page, the entry point lies in an executable segment, and the TLS
//! template and dynamic section lie in a segment's file part; every
//! address in it has the load bias added.
#![no_std]
#![forbid(unsafe_code)]

use arrayvec::ArrayVec;
use keel_abi::boot::USER_IMAGE_MIN;

/// Most loadable segments accepted.
pub const MAX_SEGMENTS: usize = 8;
const PAGE: usize = 4096;
use keel_abi::boot::USER_END;

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// User virtual address of the segment's first byte (`p_vaddr`; not
    /// necessarily page-aligned, but congruent to `offset` modulo 4 KiB).
    pub vaddr: usize,
    /// Bytes the segment occupies in memory (`p_memsz`, nonzero); the part
    /// past `file_size` is zero-filled.
    pub mem_size: usize,
    /// Byte offset of the segment's file contents in the file (`p_offset`).
    pub offset: usize,
    /// Bytes copied from the file (`p_filesz`, at most `mem_size`).
    pub file_size: usize,
    /// Mapped writable (`PF_W`); never together with `exec`.
    pub write: bool,
    /// Mapped executable (`PF_X`); never together with `write`.
    pub exec: bool,
}

impl Segment {
    /// First page and the number of pages the segment covers.
    pub fn pages(&self) -> (usize, usize) {
        let first = self.vaddr & !(PAGE - 1);
        let end = (self.vaddr + self.mem_size).next_multiple_of(PAGE);
        (first, (end - first) / PAGE)
    }
}

/// A validated executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// User virtual address of the first instruction (`e_entry`), inside an
    /// executable segment.
    pub entry: usize,
    /// The `PT_LOAD` segments, at least one, sorted by `vaddr`, no two
    /// sharing a page.
    pub segments: ArrayVec<Segment, MAX_SEGMENTS>,
    /// The thread-local storage template (`PT_TLS`), if any: its bytes
    /// lie inside a loaded segment.
    pub tls: Option<Tls>,
    /// File offset, entry size and count of the program headers (for the
    /// auxiliary vector's `AT_PHDR`/`AT_PHENT`/`AT_PHNUM`).
    pub phdrs: (usize, usize, usize),
    /// What was added to every address of a position-independent
    /// executable; 0 for a static one.
    pub bias: usize,
    /// The dynamic section (`PT_DYNAMIC`) of a position-independent
    /// executable: its address and bytes, inside a segment's file part (a
    /// static executable's is not read).
    pub dynamic: Option<(usize, usize)>,
}

/// A thread-local storage template: each thread's block starts as
/// `file_size` bytes from `vaddr`, then zeros up to `mem_size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tls {
    pub vaddr: usize,
    pub file_size: usize,
    pub mem_size: usize,
    /// Alignment of the block (a power of two, at least 1).
    pub align: usize,
}

/// Why a file is not a loadable executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian ELF64 file of the current version.
    NotElf64,
    /// Not an executable (`ET_EXEC`) for this machine.
    WrongKind,
    /// A header or segment lies outside the file.
    Truncated,
    /// A segment outside user space, overlapping another, misaligned, or
    /// with its file part larger than its memory part.
    BadSegment,
    /// A segment both writable and executable.
    WriteExec,
    /// More than [`MAX_SEGMENTS`] loadable segments, or none.
    SegmentCount,
    /// The entry point is not in an executable segment.
    BadEntry,
    /// A `PT_TLS` template outside the loaded segments, with its file part
    /// larger than its memory part, or with an alignment that is not a
    /// power of two; or two of them.
    BadTls,
    /// A dynamic section outside the loaded segments, or two; a relocation
    /// table that is not `DT_RELA` of 24-byte entries, text relocations,
    /// or a relocation other than `R_*_RELATIVE` without a symbol.
    BadDynamic,
}

fn read<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    data.get(at..at.checked_add(N).ok_or(ElfError::Truncated)?)
        .and_then(|b| b.try_into().ok())
        .ok_or(ElfError::Truncated)
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, ElfError> {
    read::<2>(data, at).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, ElfError> {
    read::<4>(data, at).map(u32::from_le_bytes)
}

fn usize_at(data: &[u8], at: usize) -> Result<usize, ElfError> {
    read::<8>(data, at).map(|b| u64::from_le_bytes(b) as usize)
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Validates `data` as a static executable for `machine` (`e_machine`).
pub fn parse(data: &[u8], machine: u16) -> Result<Image, ElfError> {
    parse_headers(data, data.len(), machine)
}

/// [`parse_headers`] that also accepts a position-independent executable
/// (`ET_DYN`), loaded `bias` bytes up (page-aligned): every address of
/// the [`Image`] has `bias` added, and [`Image::bias`] says so.
pub fn parse_headers_at(
    data: &[u8],
    file_len: usize,
    machine: u16,
    bias: usize,
) -> Result<Image, ElfError> {
    parse_any(data, file_len, machine, Some(bias))
}

/// Where the relocation table of the dynamic section `dynamic` (its
/// bytes) lies: its unbiased address and number of `Elf64_Rela` entries;
/// `None` if it has none. Refused: `DT_REL`, `DT_RELR` and `DT_TEXTREL`
/// tables, entries of another size, a table without its size.
pub fn rela_table(dynamic: &[u8]) -> Result<Option<(usize, usize)>, ElfError> {
    const DT_RELA: usize = 7;
    const DT_RELASZ: usize = 8;
    const DT_RELAENT: usize = 9;
    const REFUSED: [usize; 3] = [17, 22, 36]; // DT_REL, DT_TEXTREL, DT_RELR
    let (mut rela, mut size, mut ent) = (None, None, 24);
    for e in dynamic.chunks_exact(16) {
        let (tag, value) = (usize_at(e, 0)?, usize_at(e, 8)?);
        match tag {
            0 => break,
            DT_RELA => rela = Some(value),
            DT_RELASZ => size = Some(value),
            DT_RELAENT => ent = value,
            t if REFUSED.contains(&t) => return Err(ElfError::BadDynamic),
            _ => {}
        }
    }
    match (rela, size) {
        (None, _) => Ok(None),
        (Some(at), Some(n)) if ent == 24 && n % 24 == 0 => Ok(Some((at, n / 24))),
        _ => Err(ElfError::BadDynamic),
    }
}

/// One `Elf64_Rela` entry (24 bytes) of a position-independent
/// executable for `machine`: `(offset, addend)` of an `R_*_RELATIVE`
/// without a symbol, the only kind accepted. The loader sets the word at
/// `bias + offset` to `bias + addend`.
pub fn relative(entry: &[u8], machine: u16) -> Result<(usize, usize), ElfError> {
    let relative_type = relative_type(machine).ok_or(ElfError::BadDynamic)?;
    let (offset, info, addend) = (
        usize_at(entry, 0)?,
        usize_at(entry, 8)?,
        usize_at(entry, 16)?,
    );
    if info != relative_type {
        return Err(ElfError::BadDynamic);
    }
    Ok((offset, addend))
}

/// `r_info` of a relative relocation without a symbol on `machine`.
pub const fn relative_type(machine: u16) -> Option<usize> {
    match machine {
        62 => Some(8),     // R_X86_64_RELATIVE
        183 => Some(1027), // R_AARCH64_RELATIVE
        243 => Some(3),    // R_RISCV_RELATIVE
        _ => None,
    }
}

/// Whether `[addr, addr + len)` lies in the file part of one of `segments`.
fn in_file_part(segments: &[Segment], addr: usize, len: usize) -> bool {
    file_segment(segments, addr, len).is_some()
}

/// The segment of `segments` whose file part holds `[addr, addr + len)`
/// (where a loader finds those bytes in the file).
pub fn file_segment(segments: &[Segment], addr: usize, len: usize) -> Option<&Segment> {
    let end = addr.checked_add(len);
    segments
        .iter()
        .find(|s| addr >= s.vaddr && end.is_some_and(|e| e <= s.vaddr + s.file_size))
}

/// Bytes from the start of the file that hold its file header and program
/// headers (what [`parse_headers`] reads), if the file header is there.
pub fn headers_len(head: &[u8]) -> Result<usize, ElfError> {
    let phoff = usize_at(head, 32)?;
    let table = usize::from(u16_at(head, 54)?) * usize::from(u16_at(head, 56)?);
    let end = phoff.checked_add(table).ok_or(ElfError::Truncated)?;
    Ok(end.max(64))
}

/// [`parse`] of a file of `file_len` bytes of which only the first
/// `head.len()` are at hand (at least [`headers_len`] of them): a loader
/// need not map more of the file than the headers to check it.
pub fn parse_headers(data: &[u8], file_len: usize, machine: u16) -> Result<Image, ElfError> {
    parse_any(data, file_len, machine, None)
}

/// The parser: `pie_bias` is the bias of an `ET_DYN` file (`None`: only
/// `ET_EXEC` is accepted).
fn parse_any(
    data: &[u8],
    file_len: usize,
    machine: u16,
    pie_bias: Option<usize>,
) -> Result<Image, ElfError> {
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT.
    if read::<7>(data, 0)? != [0x7f, b'E', b'L', b'F', 2, 1, 1] {
        return Err(ElfError::NotElf64);
    }
    let (pie, bias) = match (u16_at(data, 16)?, pie_bias) {
        (ET_EXEC, _) => (false, 0),
        (ET_DYN, Some(b)) if b % PAGE == 0 => (true, b),
        _ => return Err(ElfError::WrongKind),
    };
    if u16_at(data, 18)? != machine {
        return Err(ElfError::WrongKind);
    }
    let addr_at = |at| {
        usize_at(data, at)?
            .checked_add(bias)
            .ok_or(ElfError::BadSegment)
    };
    let entry = addr_at(24)?;
    let phoff = usize_at(data, 32)?;
    let phentsize = usize::from(u16_at(data, 54)?);
    let phnum = usize::from(u16_at(data, 56)?);
    if phentsize < 56 {
        return Err(ElfError::Truncated);
    }
    let (mut segments, mut tls) = (ArrayVec::<Segment, MAX_SEGMENTS>::new(), None);
    let mut dynamic = None;
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(ElfError::Truncated)?;
        let kind = u32_at(data, at)?;
        if kind == PT_TLS {
            let t = Tls {
                vaddr: addr_at(at + 16)?,
                file_size: usize_at(data, at + 32)?,
                mem_size: usize_at(data, at + 40)?,
                align: usize_at(data, at + 48)?.max(1),
            };
            let ok = tls.is_none() && t.file_size <= t.mem_size && t.align.is_power_of_two();
            tls = Some(t).filter(|_| ok).ok_or(ElfError::BadTls).map(Some)?;
        }
        if kind == PT_DYNAMIC && pie {
            let d = (addr_at(at + 16)?, usize_at(data, at + 32)?);
            dynamic = Some(d)
                .filter(|_| dynamic.is_none())
                .ok_or(ElfError::BadDynamic)
                .map(Some)?;
        }
        if kind != PT_LOAD {
            continue;
        }
        let flags = u32_at(data, at + 4)?;
        let seg = Segment {
            offset: usize_at(data, at + 8)?,
            vaddr: addr_at(at + 16)?,
            file_size: usize_at(data, at + 32)?,
            mem_size: usize_at(data, at + 40)?,
            write: flags & PF_W != 0,
            exec: flags & PF_X != 0,
        };
        check_segment(&seg, file_len)?;
        segments.try_push(seg).map_err(|_| ElfError::SegmentCount)?;
    }
    if segments.is_empty() {
        return Err(ElfError::SegmentCount);
    }
    segments.sort_unstable_by_key(|s| s.vaddr);
    for pair in segments.windows(2) {
        if let [a, b] = pair {
            let (a_first, a_pages) = a.pages();
            if a_first + a_pages * PAGE > b.vaddr & !(PAGE - 1) {
                return Err(ElfError::BadSegment);
            }
        }
    }
    if !segments
        .iter()
        .any(|s| s.exec && (s.vaddr..s.vaddr + s.mem_size).contains(&entry))
    {
        return Err(ElfError::BadEntry);
    }
    if tls.is_some_and(|t| !in_file_part(&segments, t.vaddr, t.file_size)) {
        return Err(ElfError::BadTls);
    }
    if dynamic.is_some_and(|(at, len)| !in_file_part(&segments, at, len)) {
        return Err(ElfError::BadDynamic);
    }
    let phdrs = (phoff, phentsize, phnum);
    Ok(Image {
        entry,
        segments,
        tls,
        phdrs,
        bias,
        dynamic,
    })
}

fn check_segment(s: &Segment, file_len: usize) -> Result<(), ElfError> {
    if s.write && s.exec {
        return Err(ElfError::WriteExec);
    }
    let file_end = s
        .offset
        .checked_add(s.file_size)
        .ok_or(ElfError::Truncated)?;
    if file_end > file_len {
        return Err(ElfError::Truncated);
    }
    let mem_end = s
        .vaddr
        .checked_add(s.mem_size)
        .ok_or(ElfError::BadSegment)?;
    if s.mem_size == 0
        || s.file_size > s.mem_size
        || s.vaddr < USER_IMAGE_MIN
        || mem_end > USER_END
        || s.vaddr % PAGE != s.offset % PAGE
    {
        return Err(ElfError::BadSegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::{vec, vec::Vec};

    /// A minimal executable: header, `n` program headers, then data.
    fn build(machine: u16, entry: u64, phdrs: &[(u32, u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &(ty, flags, offset, vaddr, filesz, memsz) in phdrs {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&ty.to_le_bytes());
            p[4..8].copy_from_slice(&flags.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            f.extend(p);
        }
        f.resize(0x3000, 0xcc);
        f
    }

    const TEXT: (u32, u32, u64, u64, u64, u64) = (PT_LOAD, 5, 0x1000, 0x40_1000, 0x800, 0x800);
    const DATA: (u32, u32, u64, u64, u64, u64) = (PT_LOAD, 6, 0x2000, 0x40_2000, 0x100, 0x5000);

    #[test]
    fn the_headers_alone_check_a_file() {
        let f = build(62, 0x40_1010, &[TEXT, DATA]);
        let n = headers_len(&f).unwrap();
        assert_eq!(n, 64 + 2 * 56);
        assert_eq!(parse_headers(&f[..n], f.len(), 62), parse(&f, 62));
        assert_eq!(
            parse_headers(&f[..n], 0x2000, 62),
            Err(ElfError::Truncated),
            "a segment past the file's end"
        );
        assert_eq!(
            parse_headers(&f[..n - 16], f.len(), 62),
            Err(ElfError::Truncated)
        );
        assert_eq!(headers_len(&f[..32]), Err(ElfError::Truncated));
    }

    #[test]
    fn accepts_a_static_executable() {
        let f = build(62, 0x40_1010, &[TEXT, (6, 4, 0, 0, 0, 0), DATA]);
        let img = parse(&f, 62).unwrap();
        assert_eq!(img.entry, 0x40_1010);
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.segments[1].pages(), (0x40_2000, 5));
        assert!(img.segments[0].exec && !img.segments[0].write);
    }

    #[test]
    fn refuses_bad_files() {
        let ok = |phdrs: &[_], entry| parse(&build(62, entry, phdrs), 62);
        assert_eq!(parse(b"\x7fELF", 62), Err(ElfError::Truncated));
        assert_eq!(parse(&[0u8; 64], 62), Err(ElfError::NotElf64));
        assert_eq!(
            parse(&build(62, 0x40_1000, &[TEXT]), 183),
            Err(ElfError::WrongKind)
        );
        assert_eq!(
            ok(&[(PT_LOAD, 7, 0x1000, 0x40_1000, 0x10, 0x10)], 0x40_1000),
            Err(ElfError::WriteExec)
        );
        assert_eq!(
            ok(&[(PT_LOAD, 5, 0x2f00, 0x40_1f00, 0x200, 0x200)], 0x40_1f00),
            Err(ElfError::Truncated)
        );
        assert_eq!(
            ok(&[(PT_LOAD, 5, 0x1000, 0x1000, 0x10, 0x10)], 0x1000),
            Err(ElfError::BadSegment),
            "below the image floor"
        );
        assert_eq!(
            ok(
                &[(PT_LOAD, 5, 0x1000, 0xffff_8000_0000_0000, 0x10, 0x10)],
                0x1000
            ),
            Err(ElfError::BadSegment),
            "kernel half"
        );
        assert_eq!(
            ok(&[(PT_LOAD, 5, 0x1000, u64::MAX - 4, 0x10, 0x10)], 0x1000),
            Err(ElfError::BadSegment),
            "wraps"
        );
        assert_eq!(
            ok(&[(PT_LOAD, 5, 0x1000, 0x40_1000, 0x20, 0x10)], 0x40_1000),
            Err(ElfError::BadSegment),
            "file > mem"
        );
        assert_eq!(
            ok(&[(PT_LOAD, 5, 0x1001, 0x40_1000, 0x10, 0x10)], 0x40_1000),
            Err(ElfError::BadSegment),
            "misaligned"
        );
        assert_eq!(
            ok(
                &[TEXT, (PT_LOAD, 6, 0x1000, 0x40_1800, 0x10, 0x10)],
                0x40_1000
            ),
            Err(ElfError::BadSegment),
            "shared page"
        );
        assert_eq!(
            ok(&[TEXT, DATA], 0x40_2000),
            Err(ElfError::BadEntry),
            "entry in data"
        );
        assert_eq!(ok(&[], 0x40_1000), Err(ElfError::SegmentCount));
        assert_eq!(ok(&[TEXT; 9], 0x40_1000), Err(ElfError::SegmentCount));
    }

    #[test]
    fn reads_the_tls_template_and_refuses_a_bad_one() {
        let tls = |vaddr, filesz, memsz, align: u64| {
            let mut f = build(
                62,
                0x40_1010,
                &[TEXT, (PT_TLS, 4, 0x2000, vaddr, filesz, memsz), DATA],
            );
            f[64 + 56 + 48..64 + 56 + 56].copy_from_slice(&align.to_le_bytes());
            parse(&f, 62).map(|i| i.tls)
        };
        let t = tls(0x40_2010, 0x10, 0x30, 8u64).unwrap().unwrap();
        assert_eq!(
            (t.vaddr, t.file_size, t.mem_size, t.align),
            (0x40_2010, 0x10, 0x30, 8)
        );
        assert_eq!(
            parse(&build(62, 0x40_1010, &[TEXT]), 62).unwrap().phdrs,
            (64, 56, 1)
        );
        assert_eq!(
            tls(0x40_2010, 0x40, 0x30, 8),
            Err(ElfError::BadTls),
            "file > mem"
        );
        assert_eq!(
            tls(0x40_2010, 0x10, 0x30, 6),
            Err(ElfError::BadTls),
            "alignment"
        );
        assert_eq!(
            tls(0x40_20f8, 0x10, 0x30, 8),
            Err(ElfError::BadTls),
            "past the file part"
        );
        assert_eq!(tls(0x10, 0x10, 0x30, 8), Err(ElfError::BadTls), "outside");
        assert_eq!(
            tls(u64::MAX - 4, 0x10, 0x30, 8),
            Err(ElfError::BadTls),
            "wraps"
        );
    }

    proptest! {
        /// Arbitrary bytes never panic the parser, and whatever it accepts
        /// keeps the documented invariants.
        #[test]
        fn never_panics_on_garbage(mut f in prop::collection::vec(any::<u8>(), 0..600), patch in any::<bool>()) {
            if patch && f.len() >= 64 {
                f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
                f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
                f[18..20].copy_from_slice(&62u16.to_le_bytes());
            }
            if let Ok(img) = parse(&f, 62) {
                for s in &img.segments {
                    prop_assert!(s.offset + s.file_size <= f.len());
                    prop_assert!(s.vaddr >= USER_IMAGE_MIN && s.vaddr + s.mem_size <= USER_END);
                    prop_assert!(!(s.write && s.exec));
                }
            }
        }

        #[test]
        fn position_independent_parsing_never_panics(
            mut f in prop::collection::vec(any::<u8>(), 0..600),
            bias in prop_oneof![Just(0usize), Just(0x40_0000), any::<usize>()],
        ) {
            if f.len() >= 64 {
                f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
                f[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
                f[18..20].copy_from_slice(&62u16.to_le_bytes());
            }
            if let Ok(img) = parse_headers_at(&f, f.len(), 62, bias) {
                for s in &img.segments {
                    prop_assert!(s.vaddr >= USER_IMAGE_MIN && s.vaddr + s.mem_size <= USER_END);
                }
            }
            let _ = rela_table(&f);
            for e in f.chunks(24) {
                let _ = relative(e, 62);
            }
        }
    }

    /// `build`, made position-independent (`ET_DYN`).
    fn build_dyn(entry: u64, phdrs: &[(u32, u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut f = build(62, entry, phdrs);
        f[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        f
    }

    const PIE_TEXT: (u32, u32, u64, u64, u64, u64) = (PT_LOAD, 5, 0x1000, 0x1000, 0x800, 0x800);
    const PIE_DATA: (u32, u32, u64, u64, u64, u64) = (PT_LOAD, 6, 0x2000, 0x2000, 0x100, 0x5000);
    const PIE_DYNAMIC: (u32, u32, u64, u64, u64, u64) = (PT_DYNAMIC, 6, 0x2040, 0x2040, 0x40, 0x40);

    #[test]
    fn a_position_independent_executable_is_loaded_at_its_bias() {
        let f = build_dyn(0x1010, &[PIE_TEXT, PIE_DATA, PIE_DYNAMIC]);
        assert_eq!(parse(&f, 62), Err(ElfError::WrongKind), "static only");
        let img = parse_headers_at(&f, f.len(), 62, 0x40_0000).unwrap();
        assert_eq!((img.bias, img.entry), (0x40_0000, 0x40_1010));
        assert_eq!(img.segments[0].vaddr, 0x40_1000);
        assert_eq!(img.segments[1].pages(), (0x40_2000, 5));
        assert_eq!(img.dynamic, Some((0x40_2040, 0x40)));
        assert_eq!(
            parse_headers_at(&f, f.len(), 62, 0x40_0800),
            Err(ElfError::WrongKind),
            "a bias not page-aligned"
        );
        assert_eq!(
            parse_headers_at(&f, f.len(), 62, 0),
            Err(ElfError::BadSegment),
            "below the lowest user image address"
        );
        assert_eq!(
            parse_headers_at(&f, f.len(), 62, usize::MAX & !0xfff),
            Err(ElfError::BadSegment),
            "a bias that wraps"
        );
        let outside = (PT_DYNAMIC, 6, 0x2100, 0x2100, 0x40, 0x40);
        let two = [PIE_TEXT, PIE_DATA, PIE_DYNAMIC, PIE_DYNAMIC];
        for phdrs in [&[PIE_TEXT, PIE_DATA, outside][..], &two[..]] {
            let f = build_dyn(0x1010, phdrs);
            let got = parse_headers_at(&f, f.len(), 62, 0x40_0000);
            assert_eq!(got, Err(ElfError::BadDynamic));
        }
        // A static executable's dynamic section is not read.
        let f = build(62, 0x40_1010, &[TEXT, DATA, (PT_DYNAMIC, 6, 0, 0, 0, 0)]);
        assert_eq!(parse(&f, 62).map(|i| i.dynamic), Ok(None));
    }

    /// A dynamic section of `(tag, value)` entries.
    fn dynamic(entries: &[(u64, u64)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|&(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect()
    }

    #[test]
    fn only_relative_rela_relocations_are_accepted() {
        let table = dynamic(&[(7, 0x2080), (8, 72), (9, 24), (0, 0), (17, 0)]);
        assert_eq!(rela_table(&table), Ok(Some((0x2080, 3))));
        assert_eq!(rela_table(&dynamic(&[(1, 5), (0, 0)])), Ok(None));
        for bad in [
            &[(7, 0x2080), (8, 72), (17, 0x3000)][..], // DT_REL
            &[(36, 0x3000)],                           // DT_RELR
            &[(22, 0)],                                // DT_TEXTREL
            &[(7, 0x2080), (8, 72), (9, 16)],          // entry size
            &[(7, 0x2080), (8, 70)],                   // not whole entries
            &[(7, 0x2080)],                            // no size
        ] {
            assert_eq!(
                rela_table(&dynamic(bad)),
                Err(ElfError::BadDynamic),
                "{bad:?}"
            );
        }
        let rela = |off: u64, info: u64, addend: u64| -> Vec<u8> {
            [off, info, addend]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect()
        };
        assert_eq!(relative(&rela(0x2000, 8, 0x1010), 62), Ok((0x2000, 0x1010)));
        assert_eq!(relative(&rela(0x2000, 1027, 8), 183), Ok((0x2000, 8)));
        assert_eq!(relative(&rela(0x2000, 3, 8), 243), Ok((0x2000, 8)));
        let refused = [
            relative(&rela(0x2000, 1, 0), 62),             // R_X86_64_64
            relative(&rela(0x2000, (1 << 32) | 8, 0), 62), // with a symbol
            relative(&rela(0x2000, 8, 0), 183),            // another machine's type
            relative(&rela(0x2000, 8, 0), 40),             // an unknown machine
        ];
        assert!(refused.iter().all(|r| *r == Err(ElfError::BadDynamic)));
        assert_eq!(relative(&[0; 20], 62), Err(ElfError::Truncated));
    }
}

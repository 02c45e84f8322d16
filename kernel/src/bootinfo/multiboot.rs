//! Multiboot 1 and Multiboot 2 boot-information parsing (x86 boot loaders:
//! QEMU's `-kernel`, GRUB), into the portable [`MemoryMap`] and command line.
//!
//! The information lives in physical memory; it is read only through a
//! [`PhysReader`], so host unit tests feed byte buffers and the kernel reads
//! through its direct map. Every structure is bounds-checked against what
//! the reader can supply and against its own length fields: malformed input
//! gives a [`BootInfoError`], never a panic, an unbounded loop or an
//! out-of-range read.
//!
//! The blobs the kernel may still want (the information structure, the
//! memory-map array, command-line strings, the module list) are reserved as
//! [`RegionKind::BootInfo`]; modules as [`RegionKind::BootModule`].

use super::BootInfoError::{self, Malformed, Missing, Truncated};
use super::{MAX_REGIONS, MemoryMap, MemoryRegion, PhysReader, RegionKind, push, u32_at, u64_at};
use crate::mm::kref::ensure;
use arrayvec::ArrayVec;
use core::ffi::CStr;
use keel_fb::Mode;

/// `eax` at entry from a Multiboot 1 loader.
pub const MB1_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// `eax` at entry from a Multiboot 2 loader.
pub const MB2_BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

/// Longest NUL-terminated string (command line, module name) accepted.
pub const MAX_STRING: usize = 4096;
/// Most boot modules accepted.
pub const MAX_MODULES: usize = 32;
/// Largest Multiboot 2 information blob accepted.
pub const MAX_MB2_INFO: u64 = 1 << 20;

/// What the Multiboot information says, in portable terms.
#[derive(Clone, Debug)]
pub struct Multiboot<'a> {
    /// "multiboot1" or "multiboot2".
    pub protocol: &'static str,
    /// Firmware memory map with the kernel, boot-information and module
    /// reservations carved out.
    pub memory: MemoryMap,
    /// The kernel's own arguments (for Multiboot 1 without the image path
    /// the loader puts first).
    pub cmdline: &'a str,
    /// Physical address of a copy of the ACPI RSDP (Multiboot 2 tags 14
    /// and 15), if the loader supplied one.
    pub rsdp: Option<u64>,
    /// A direct-RGB, 32-bit framebuffer (Multiboot 2 tag 8).
    pub framebuffer: Option<(u64, Mode)>,
}

type RawRegions = ArrayVec<MemoryRegion, { 2 * MAX_REGIONS }>;
const UNTERMINATED: BootInfoError = Malformed("string not NUL-terminated");
const NOT_MULTIBOOT: BootInfoError =
    Missing("Multiboot magic (not started by a Multiboot boot loader)");

/// Parses the information a Multiboot loader left at physical `info` and
/// signalled with `magic`. `kernel` is the kernel image's physical range,
/// reserved in the resulting map.
pub fn parse<'a>(
    magic: u32,
    info: u64,
    mem: &impl PhysReader<'a>,
    kernel: MemoryRegion,
) -> Result<Multiboot<'a>, BootInfoError> {
    if info == 0 && (magic == MB1_BOOTLOADER_MAGIC || magic == MB2_BOOTLOADER_MAGIC) {
        return Err(Missing("Multiboot information pointer is null"));
    }
    let mut raw = RawRegions::new();
    push(&mut raw, kernel)?;
    let (protocol, (cmdline, rsdp, framebuffer)) = match magic {
        MB1_BOOTLOADER_MAGIC => ("multiboot1", (parse_mb1(info, mem, &mut raw)?, None, None)),
        MB2_BOOTLOADER_MAGIC => ("multiboot2", parse_mb2(info, mem, &mut raw)?),
        _ => return Err(NOT_MULTIBOOT),
    };
    let cmdline = core::str::from_utf8(cmdline).map_err(|_| BootInfoError::CmdlineNotUtf8)?;
    Ok(Multiboot {
        protocol,
        memory: MemoryMap::build(raw)?,
        cmdline,
        rsdp,
        framebuffer,
    })
}

fn reserve(raw: &mut RawRegions, start: u64, len: u64) -> Result<(), BootInfoError> {
    let r = MemoryRegion::from_len(start, len, RegionKind::BootInfo)
        .ok_or(Malformed("boot information range wraps"))?;
    push(raw, r)
}

/// A firmware memory-map type (the same codes in Multiboot 1, 2 and E820).
fn region_kind(ty: u32) -> RegionKind {
    match ty {
        1 => RegionKind::Usable,
        3 => RegionKind::AcpiReclaimable,
        4 => RegionKind::AcpiNvs,
        5 => RegionKind::Bad,
        _ => RegionKind::Reserved,
    }
}

/// The NUL-terminated string at physical `addr` (without the NUL), read
/// at most [`MAX_STRING`] bytes far; reserves it (with the NUL).
fn c_string<'a>(
    mem: &impl PhysReader<'a>,
    addr: u64,
    raw: &mut RawRegions,
) -> Result<&'a [u8], BootInfoError> {
    const UNREADABLE: BootInfoError = Truncated("string runs off readable memory");
    for len in 0..MAX_STRING as u64 {
        let at = addr
            .checked_add(len)
            .ok_or(Truncated("string runs off the address space"))?;
        if mem.bytes(at, 1).ok_or(UNREADABLE)?.first() == Some(&0) {
            let s = mem.bytes(addr, len).ok_or(UNREADABLE)?;
            reserve(raw, addr, len + 1)?;
            return Ok(s);
        }
    }
    Err(UNTERMINATED)
}

/// Drops the first word (the kernel image path) of a Multiboot 1 command
/// line. QEMU's `-kernel` (and GRUB Legacy, SYSLINUX) pass
/// "<image> <arguments>"; GRUB 2's `multiboot` command passes only the
/// arguments, so the caller skips this for it.
fn strip_image_path(cmdline: &[u8]) -> &[u8] {
    let rest = cmdline.splitn(2, |&c| c == b' ').nth(1).unwrap_or_default();
    let start = rest.iter().position(|&c| c != b' ').unwrap_or(rest.len());
    rest.get(start..).unwrap_or_default()
}

// Multiboot 1 information structure: flag bits and field offsets.
const MB1_MEM: u32 = 1 << 0;
const MB1_CMDLINE: u32 = 1 << 2;
const MB1_MODS: u32 = 1 << 3;
const MB1_MMAP: u32 = 1 << 6;
const MB1_LOADER_NAME: u32 = 1 << 9;
/// For each flag bit, the end offset of the fields it makes valid.
const MB1_FIELD_END: [u64; 13] = [12, 16, 20, 28, 44, 44, 52, 60, 64, 68, 72, 88, 116];

fn parse_mb1<'a>(
    info: u64,
    mem: &impl PhysReader<'a>,
    raw: &mut RawRegions,
) -> Result<&'a [u8], BootInfoError> {
    let flags = mem
        .bytes(info, 4)
        .and_then(|b| u32_at(b, 0))
        .ok_or(Truncated("Multiboot information unreadable"))?;
    let len = MB1_FIELD_END
        .iter()
        .enumerate()
        .filter(|&(bit, _)| flags & (1 << bit) != 0)
        .map(|(_, &end)| end)
        .max()
        .unwrap_or(4);
    let mbi = mem
        .bytes(info, len)
        .ok_or(Truncated("Multiboot information structure"))?;
    reserve(raw, info, len)?;
    let field = |off| u32_at(mbi, off).map(u64::from).ok_or(Truncated("field"));

    if flags & MB1_MMAP != 0 {
        let (length, addr) = (field(44)?, field(48)?);
        mb1_mmap(mem, addr, length, raw)?;
    } else if flags & MB1_MEM != 0 {
        push_meminfo(raw, field(4)?, field(8)?)?;
    } else {
        return Err(Missing("Multiboot 1 memory map (flags bits 0 and 6 clear)"));
    }

    if flags & MB1_MODS != 0 {
        let (count, addr) = (field(20)?, field(24)?);
        ensure(count <= MAX_MODULES as u64, BootInfoError::TooManyRegions)?;
        let list = mem
            .bytes(addr, count * 16)
            .ok_or(Truncated("Multiboot 1 module list"))?;
        reserve(raw, addr, count * 16)?;
        for m in list.chunks_exact(16) {
            let field = |at| u64::from(u32_at(m, at).unwrap_or_default());
            push_module(raw, field(0), field(4))?;
            if field(8) != 0 {
                c_string(mem, field(8), raw)?;
            }
        }
    }

    let mut loader: &[u8] = &[];
    if flags & MB1_LOADER_NAME != 0 {
        loader = c_string(mem, field(64)?, raw)?;
    }
    if flags & MB1_CMDLINE == 0 {
        return Ok(&[]);
    }
    let cmdline = c_string(mem, field(16)?, raw)?;
    if loader.starts_with(b"GRUB 2") {
        Ok(cmdline)
    } else {
        Ok(strip_image_path(cmdline))
    }
}

/// The basic memory information (Multiboot 1 flag bit 0, Multiboot 2 tag
/// 4): KiB of RAM below 1 MiB, and from 1 MiB up.
fn push_meminfo(raw: &mut RawRegions, lower_kib: u64, upper_kib: u64) -> Result<(), BootInfoError> {
    for (start, kib) in [(0, lower_kib), (1 << 20, upper_kib)] {
        let r = MemoryRegion::from_len(start, kib * 1024, RegionKind::Usable)
            .ok_or(Malformed("memory region wraps"))?;
        push(raw, r)?;
    }
    Ok(())
}

fn push_module(raw: &mut RawRegions, start: u64, end: u64) -> Result<(), BootInfoError> {
    ensure(end >= start, Malformed("module ends before it starts"))?;
    let kind = RegionKind::BootModule;
    push(raw, MemoryRegion { start, end, kind })
}

/// Multiboot 1 memory map: entries of `size: u32` (not counting itself),
/// `base: u64`, `length: u64`, `type: u32`, packed back to back.
fn mb1_mmap<'a>(
    mem: &impl PhysReader<'a>,
    addr: u64,
    length: u64,
    raw: &mut RawRegions,
) -> Result<(), BootInfoError> {
    let map = mem
        .bytes(addr, length)
        .ok_or(Truncated("Multiboot 1 memory map runs off readable memory"))?;
    reserve(raw, addr, length)?;
    let mut off = 0usize;
    while off < map.len() {
        let size = u32_at(map, off).ok_or(Truncated("Multiboot 1 memory-map entry header"))?;
        let size = size as usize;
        ensure(size >= 20, Malformed("Multiboot 1 memory-map entry size"))?;
        let entry = off
            .checked_add(4)
            .and_then(|s| map.get(s..s.checked_add(size)?))
            .ok_or(Truncated("Multiboot 1 memory-map entry"))?;
        push_firmware(raw, entry)?;
        off += 4 + size;
    }
    Ok(())
}

/// A memory-map entry of Multiboot 1 or 2: `base: u64`, `length: u64`,
/// `type: u32`.
fn push_firmware(raw: &mut RawRegions, entry: &[u8]) -> Result<(), BootInfoError> {
    let start = u64_at(entry, 0).unwrap_or_default();
    let len = u64_at(entry, 8).unwrap_or_default();
    let kind = region_kind(u32_at(entry, 16).unwrap_or_default());
    // A region running past the top of the address space is clipped there.
    let end = start.saturating_add(len);
    push(raw, MemoryRegion { start, end, kind })
}

// Multiboot 2 tag types.
const MB2_TAG_END: u32 = 0;
const MB2_TAG_CMDLINE: u32 = 1;
const MB2_TAG_MODULE: u32 = 3;
const MB2_TAG_BASIC_MEMINFO: u32 = 4;
const MB2_TAG_MMAP: u32 = 6;
const MB2_TAG_FRAMEBUFFER: u32 = 8;
const MB2_TAG_ACPI_OLD: u32 = 14;
const MB2_TAG_ACPI_NEW: u32 = 15;

type Mb2Parsed<'a> = (&'a [u8], Option<u64>, Option<(u64, Mode)>);

fn parse_mb2<'a>(
    info: u64,
    mem: &impl PhysReader<'a>,
    raw: &mut RawRegions,
) -> Result<Mb2Parsed<'a>, BootInfoError> {
    if !info.is_multiple_of(8) {
        return Err(Malformed("Multiboot 2 information not 8-byte aligned"));
    }
    let total = mem
        .bytes(info, 8)
        .and_then(|b| u32_at(b, 0))
        .map(u64::from)
        .ok_or(Truncated("Multiboot 2 information unreadable"))?;
    if !(16..=MAX_MB2_INFO).contains(&total) {
        return Err(Malformed("Multiboot 2 information total size"));
    }
    let blob = mem.bytes(info, total).ok_or(Truncated(
        "Multiboot 2 information runs off readable memory",
    ))?;
    reserve(raw, info, total)?;

    let (mut cmdline, mut rsdp, mut have_mmap, mut fb) = (&[][..], None, false, None);
    let mut meminfo = None;
    let mut modules = 0usize;
    let mut off = 8usize;
    loop {
        let (ty, size) = u32_at(blob, off)
            .zip(u32_at(blob, off + 4))
            .ok_or(Malformed("Multiboot 2 information has no end tag"))?;
        let size = size as usize;
        let tag = (size >= 8)
            .then(|| blob.get(off..off.checked_add(size)?))
            .flatten()
            .ok_or(Malformed("Multiboot 2 tag size"))?;
        match ty {
            MB2_TAG_END => break,
            MB2_TAG_CMDLINE => {
                let s = CStr::from_bytes_until_nul(tag.get(8..).unwrap_or_default());
                cmdline = s.map_err(|_| UNTERMINATED)?.to_bytes();
            }
            MB2_TAG_MODULE => {
                modules += 1;
                ensure(modules <= MAX_MODULES, BootInfoError::TooManyRegions)?;
                let (start, end) = u32_at(tag, 8)
                    .zip(u32_at(tag, 12))
                    .ok_or(Malformed("Multiboot 2 module tag too short"))?;
                push_module(raw, start.into(), end.into())?;
            }
            MB2_TAG_BASIC_MEMINFO => meminfo = u32_at(tag, 8).zip(u32_at(tag, 12)),
            MB2_TAG_MMAP => {
                mb2_mmap(tag, raw)?;
                have_mmap = true;
            }
            // The tag holds a copy of the RSDP; prefer the ACPI 2.0+ one.
            MB2_TAG_ACPI_OLD | MB2_TAG_ACPI_NEW
                if size >= 8 + 20 && (rsdp.is_none() || ty == MB2_TAG_ACPI_NEW) =>
            {
                rsdp = Some(info + off as u64 + 8);
            }
            MB2_TAG_FRAMEBUFFER => fb = mb2_framebuffer(tag),
            _ => {}
        }
        off = off
            .checked_add(size.next_multiple_of(8))
            .ok_or(Malformed("Multiboot 2 tag size"))?;
    }
    if !have_mmap {
        let (lower_kib, upper_kib) =
            meminfo.ok_or(Missing("Multiboot 2 memory map (tags 4 and 6)"))?;
        push_meminfo(raw, lower_kib.into(), upper_kib.into())?;
    }
    Ok((cmdline, rsdp, fb))
}

/// Multiboot 2 framebuffer tag: `addr: u64` at 8, `pitch`, `width`,
/// `height: u32`, `bpp: u8` at 28, `type: u8` (1: direct RGB), then the
/// red, green and blue positions and sizes. Only 32-bit pixels of 8-bit
/// colours are drawn on; anything else is ignored, not an error.
fn mb2_framebuffer(tag: &[u8]) -> Option<(u64, Mode)> {
    let b = |i: usize| tag.get(i).copied();
    let mode = Mode {
        pitch: u32_at(tag, 16)?,
        width: u32_at(tag, 20)?,
        height: u32_at(tag, 24)?,
        shifts: [b(32)?, b(34)?, b(36)?],
    };
    let direct = (b(28)?, b(29)?, [b(33)?, b(35)?, b(37)?]) == (32, 1, [8, 8, 8]);
    (direct && mode.is_valid()).then_some((u64_at(tag, 8)?, mode))
}

/// Multiboot 2 memory-map tag: `entry_size: u32`, `entry_version: u32` at
/// offset 8, then entries of `base: u64`, `length: u64`, `type: u32`,
/// `reserved: u32` (at least 24 bytes each).
fn mb2_mmap(tag: &[u8], raw: &mut RawRegions) -> Result<(), BootInfoError> {
    let entry_size = u32_at(tag, 8).ok_or(Malformed("Multiboot 2 memory-map tag too short"))?;
    if entry_size < 24 {
        return Err(Malformed("Multiboot 2 memory-map entry size"));
    }
    let entries = tag.get(16..).unwrap_or_default();
    entries
        .chunks_exact(entry_size as usize)
        .try_for_each(|e| push_firmware(raw, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Physical memory as one buffer starting at `base`.
    struct Buf {
        base: u64,
        data: Vec<u8>,
    }

    impl<'a> PhysReader<'a> for &'a Buf {
        fn bytes(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
            let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            self.data.get(start..end)
        }
    }

    const BASE: u64 = 0x9000;
    const KERNEL: MemoryRegion = MemoryRegion {
        start: 0x10_0000,
        end: 0x18_0000,
        kind: RegionKind::Kernel,
    };

    impl Buf {
        fn new() -> Buf {
            Buf {
                base: BASE,
                data: vec![0; 0x1000],
            }
        }
        fn put(&mut self, addr: u64, bytes: &[u8]) {
            let at = (addr - self.base) as usize;
            self.data[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn put32(&mut self, addr: u64, v: u32) {
            self.put(addr, &v.to_le_bytes());
        }
        fn put64(&mut self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }
    }

    /// Writes a Multiboot 1 mmap entry at `addr` and returns the next one's.
    fn mb1_entry(b: &mut Buf, addr: u64, base: u64, len: u64, ty: u32) -> u64 {
        b.put32(addr, 20);
        b.put64(addr + 4, base);
        b.put64(addr + 12, len);
        b.put32(addr + 20, ty);
        addr + 24
    }

    /// A QEMU-like Multiboot 1 info: info at BASE, mmap at BASE+0x100,
    /// cmdline at BASE+0x200, one module described at BASE+0x300.
    fn mb1_good() -> Buf {
        let mut b = Buf::new();
        b.put32(BASE, MB1_MEM | MB1_CMDLINE | MB1_MODS | MB1_MMAP);
        b.put32(BASE + 4, 639);
        b.put32(BASE + 8, 129920);
        b.put32(BASE + 16, (BASE + 0x200) as u32);
        b.put32(BASE + 20, 1);
        b.put32(BASE + 24, (BASE + 0x300) as u32);
        let mut e = BASE + 0x100;
        e = mb1_entry(&mut b, e, 0, 0x9fc00, 1);
        e = mb1_entry(&mut b, e, 0x9fc00, 0x400, 2);
        e = mb1_entry(&mut b, e, 0xf0000, 0x10000, 2);
        e = mb1_entry(&mut b, e, 0x10_0000, 0x7ee_0000, 1);
        e = mb1_entry(&mut b, e, 0x7fe_0000, 0x2_0000, 2);
        e = mb1_entry(&mut b, e, 0xfffc_0000, 0x4_0000, 2);
        b.put32(BASE + 44, (e - (BASE + 0x100)) as u32);
        b.put32(BASE + 48, (BASE + 0x100) as u32);
        b.put(BASE + 0x200, b"/path/to/keel log=debug ktest=trap\0");
        b.put32(BASE + 0x300, 0x20_0000);
        b.put32(BASE + 0x304, 0x20_1234);
        b.put32(BASE + 0x308, (BASE + 0x310) as u32);
        b.put(BASE + 0x310, b"initrd\0");
        b
    }

    fn parse_buf(magic: u32, b: &Buf) -> Result<Multiboot<'_>, BootInfoError> {
        parse(magic, BASE, &b, KERNEL)
    }

    fn kind_at(mb: &Multiboot<'_>, addr: u64) -> Option<RegionKind> {
        mb.memory
            .regions()
            .iter()
            .find(|r| r.start <= addr && addr < r.end)
            .map(|r| r.kind)
    }

    #[test]
    fn mb1_good_info() {
        let b = mb1_good();
        let mb = parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(mb.protocol, "multiboot1");
        assert_eq!(mb.cmdline, "log=debug ktest=trap");
        assert_eq!(mb.rsdp, None);
        assert_eq!(kind_at(&mb, 0x1000), Some(RegionKind::Usable));
        assert_eq!(kind_at(&mb, BASE), Some(RegionKind::BootInfo));
        assert_eq!(kind_at(&mb, BASE + 0x100), Some(RegionKind::BootInfo));
        assert_eq!(kind_at(&mb, 0x9fc00), Some(RegionKind::Reserved));
        assert_eq!(kind_at(&mb, 0x10_0000), Some(RegionKind::Kernel));
        assert_eq!(kind_at(&mb, 0x20_1000), Some(RegionKind::BootModule));
        assert_eq!(kind_at(&mb, 0x20_2000), Some(RegionKind::Usable));
        assert_eq!(kind_at(&mb, 0xfffc_0000), Some(RegionKind::Reserved));
        assert_eq!(kind_at(&mb, 0x800_0000), None);
        // 128 MiB of RAM minus the reserved bits, plus the kernel etc.
        assert!(mb.memory.usable_bytes() > 120 << 20);
    }

    #[test]
    fn mb1_cmdline_variants() {
        for (raw, want) in [
            (&b"keel\0"[..], ""),
            (b"\0", ""),
            (b"keel   a=b  \0", "a=b  "),
            (b"/k log=off\0", "log=off"),
        ] {
            let mut b = mb1_good();
            b.put(BASE + 0x200, raw);
            assert_eq!(parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap().cmdline, want);
        }
        // GRUB 2 passes the arguments without the image path; QEMU with it.
        for (loader, want) in [
            (&b"GRUB 2.06-13+deb12u1\0"[..], "/k log=off"),
            (b"qemu\0", "log=off"),
        ] {
            let mut b = mb1_good();
            b.put32(BASE, MB1_MEM | MB1_CMDLINE | MB1_MMAP | MB1_LOADER_NAME);
            b.put32(BASE + 64, (BASE + 0x380) as u32);
            b.put(BASE + 0x380, loader);
            b.put(BASE + 0x200, b"/k log=off\0");
            let mb = parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap();
            assert_eq!(mb.cmdline, want);
            assert_eq!(kind_at(&mb, BASE + 0x380), Some(RegionKind::BootInfo));
        }
        // No cmdline flag: empty command line.
        let mut b = mb1_good();
        b.put32(BASE, MB1_MEM | MB1_MODS | MB1_MMAP);
        assert_eq!(parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap().cmdline, "");
        // Not UTF-8.
        let mut b = mb1_good();
        b.put(BASE + 0x200, b"keel log=\xff\0");
        assert_eq!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap_err(),
            BootInfoError::CmdlineNotUtf8
        );
    }

    #[test]
    fn bad_magic_or_null_pointer() {
        let b = mb1_good();
        assert!(matches!(
            parse_buf(0x1234_5678, &b),
            Err(BootInfoError::Missing(_))
        ));
        assert!(matches!(
            parse(MB1_BOOTLOADER_MAGIC, 0, &&b, KERNEL),
            Err(BootInfoError::Missing(_))
        ));
        assert!(matches!(
            parse(MB2_BOOTLOADER_MAGIC, 0, &&b, KERNEL),
            Err(BootInfoError::Missing(_))
        ));
        // Pointer outside readable memory.
        assert!(matches!(
            parse(MB1_BOOTLOADER_MAGIC, 0x1_0000_0000, &&b, KERNEL),
            Err(BootInfoError::Truncated(_))
        ));
    }

    #[test]
    fn mb1_missing_mmap_falls_back_to_mem_fields() {
        let mut b = mb1_good();
        b.put32(BASE, MB1_MEM | MB1_CMDLINE);
        let mb = parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(kind_at(&mb, 0x9e000), Some(RegionKind::Usable));
        assert_eq!(kind_at(&mb, 0xa0000), None);
        assert_eq!(kind_at(&mb, 0x10_0000), Some(RegionKind::Kernel));
        assert_eq!(kind_at(&mb, 0x100_0000), Some(RegionKind::Usable));
        // Neither mmap nor mem fields.
        b.put32(BASE, MB1_CMDLINE);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Missing(_))
        ));
    }

    #[test]
    fn mb1_mmap_running_off_the_end() {
        let mut b = mb1_good();
        b.put32(BASE + 44, 0x1000);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Truncated(_))
        ));
        b.put32(BASE + 44, u32::MAX);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Truncated(_))
        ));
        // Length cutting the last entry in half.
        let mut b = mb1_good();
        b.put32(BASE + 44, 6 * 24 - 10);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Truncated(_))
        ));
    }

    #[test]
    fn mb1_mmap_bad_entry_size() {
        for size in [0, 4, 19] {
            let mut b = mb1_good();
            b.put32(BASE + 0x100 + 24, size);
            assert!(
                matches!(
                    parse_buf(MB1_BOOTLOADER_MAGIC, &b),
                    Err(BootInfoError::Malformed(_))
                ),
                "size {size}"
            );
        }
        // A larger size is allowed (future fields) and skips the extra bytes.
        let mut b = mb1_good();
        b.put32(BASE + 44, 24 + 28);
        b.put32(BASE + 0x100, 24);
        mb1_entry(&mut b, BASE + 0x100 + 28, 0x10_0000, 0x100_0000, 1);
        let mb = parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(kind_at(&mb, 0x80_0000), Some(RegionKind::Usable));
    }

    #[test]
    fn mb1_unterminated_cmdline() {
        let mut b = mb1_good();
        let end = BASE + b.data.len() as u64;
        b.put32(BASE + 16, (end - 4) as u32);
        b.put(end - 4, b"abcd");
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Truncated(_))
        ));
        // Unterminated within MAX_STRING.
        let mut b = Buf {
            base: BASE,
            data: vec![b'x'; 2 * MAX_STRING],
        };
        let good = mb1_good();
        b.data[..0x400].copy_from_slice(&good.data[..0x400]);
        b.put32(BASE + 16, (BASE + 0x1000) as u32);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Malformed(_))
        ));
    }

    #[test]
    fn mb1_too_many_regions() {
        let mut b = Buf {
            base: BASE,
            data: vec![0; 0x4000],
        };
        let good = mb1_good();
        b.data[..0x400].copy_from_slice(&good.data[..0x400]);
        let mut e = BASE + 0x400;
        for i in 0..300u64 {
            e = mb1_entry(&mut b, e, i * 0x2000, 0x1000, 1);
        }
        b.put32(BASE + 44, (e - (BASE + 0x400)) as u32);
        b.put32(BASE + 48, (BASE + 0x400) as u32);
        assert_eq!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap_err(),
            BootInfoError::TooManyRegions
        );
        // Too many modules.
        let mut b = mb1_good();
        b.put32(BASE + 20, 1000);
        assert_eq!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b).unwrap_err(),
            BootInfoError::TooManyRegions
        );
    }

    #[test]
    fn mb1_bad_modules() {
        let mut b = mb1_good();
        b.put32(BASE + 0x304, 0x1f_0000);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Malformed(_))
        ));
        let mut b = mb1_good();
        b.put32(BASE + 24, (BASE + 0xff8) as u32);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Truncated(_))
        ));
    }

    #[test]
    fn mb1_info_struct_truncated() {
        let mut b = mb1_good();
        // The flags claim a framebuffer, so the structure is 116 bytes,
        // but only 60 are readable.
        b.put32(BASE, MB1_MMAP | (1 << 12));
        b.data.truncate(60);
        assert!(matches!(
            parse_buf(MB1_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Truncated(_))
        ));
    }

    /// Builds a Multiboot 2 blob at BASE from (type, payload) tags.
    fn mb2(tags: &[(u32, Vec<u8>)]) -> Buf {
        let mut blob = vec![0u8; 8];
        for (ty, payload) in tags {
            blob.extend_from_slice(&ty.to_le_bytes());
            blob.extend_from_slice(&(8 + payload.len() as u32).to_le_bytes());
            blob.extend_from_slice(payload);
            blob.resize(blob.len().next_multiple_of(8), 0);
        }
        blob.extend_from_slice(&[0, 0, 0, 0, 8, 0, 0, 0]);
        let total = blob.len() as u32;
        blob[..4].copy_from_slice(&total.to_le_bytes());
        let mut b = Buf::new();
        b.data.resize(b.data.len().max(blob.len()), 0);
        b.put(BASE, &blob);
        b
    }

    fn mmap_tag(entry_size: u32, entries: &[(u64, u64, u32)]) -> (u32, Vec<u8>) {
        let mut p = Vec::new();
        p.extend_from_slice(&entry_size.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        for &(base, len, ty) in entries {
            let mut e = vec![0u8; entry_size as usize];
            e[..8].copy_from_slice(&base.to_le_bytes());
            e[8..16].copy_from_slice(&len.to_le_bytes());
            e[16..20].copy_from_slice(&ty.to_le_bytes());
            p.extend_from_slice(&e);
        }
        (MB2_TAG_MMAP, p)
    }

    fn module_tag(start: u32, end: u32) -> (u32, Vec<u8>) {
        let mut p = Vec::new();
        p.extend_from_slice(&start.to_le_bytes());
        p.extend_from_slice(&end.to_le_bytes());
        p.extend_from_slice(b"initrd\0");
        (MB2_TAG_MODULE, p)
    }

    fn mb2_good_tags() -> Vec<(u32, Vec<u8>)> {
        vec![
            (MB2_TAG_CMDLINE, b"log=debug\0".to_vec()),
            (2, b"GRUB 2.06\0".to_vec()),
            (
                MB2_TAG_BASIC_MEMINFO,
                [639u32.to_le_bytes(), 129920u32.to_le_bytes()].concat(),
            ),
            module_tag(0x20_0000, 0x20_1234),
            mmap_tag(
                24,
                &[
                    (0, 0x9fc00, 1),
                    (0x9fc00, 0x400, 2),
                    (0x10_0000, 0x7ee_0000, 1),
                ],
            ),
            (MB2_TAG_ACPI_OLD, vec![0xaa; 20]),
        ]
    }

    #[test]
    fn mb2_good_info() {
        let b = mb2(&mb2_good_tags());
        let mb = parse_buf(MB2_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(mb.protocol, "multiboot2");
        assert_eq!(mb.cmdline, "log=debug");
        assert_eq!(kind_at(&mb, BASE), Some(RegionKind::BootInfo));
        assert_eq!(kind_at(&mb, 0x10_0000), Some(RegionKind::Kernel));
        assert_eq!(kind_at(&mb, 0x20_0000), Some(RegionKind::BootModule));
        assert_eq!(kind_at(&mb, 0x9fc00), Some(RegionKind::Reserved));
        assert_eq!(kind_at(&mb, 0x300_0000), Some(RegionKind::Usable));
        let rsdp = mb.rsdp.unwrap();
        assert_eq!((&b).bytes(rsdp, 20).unwrap(), &[0xaa; 20]);
    }

    /// A framebuffer tag: `bpp`, type `kind`, 8-bit colours at `shifts`.
    fn fb_tag(bpp: u8, kind: u8, shifts: [u8; 3]) -> (u32, Vec<u8>) {
        let mut t = 0x8000_0000u64.to_le_bytes().to_vec();
        for v in [1280u32 * 4 + 64, 1280, 800] {
            t.extend(v.to_le_bytes());
        }
        t.extend([bpp, kind, 0, 0]);
        t.extend(shifts.iter().flat_map(|&s| [s, 8]));
        (MB2_TAG_FRAMEBUFFER, t)
    }

    #[test]
    fn mb2_framebuffer_of_32_bit_direct_colour_is_taken() {
        let mut tags = mb2_good_tags();
        tags.push(fb_tag(32, 1, [16, 8, 0]));
        let b = mb2(&tags);
        let mb = parse_buf(MB2_BOOTLOADER_MAGIC, &b).unwrap();
        let mode = Mode {
            width: 1280,
            height: 800,
            pitch: 1280 * 4 + 64,
            shifts: [16, 8, 0],
        };
        assert_eq!(mb.framebuffer, Some((0x8000_0000, mode)));
        // Other depths, indexed or text modes, odd colour layouts and a
        // short tag are ignored; the rest of the information still counts.
        let (ty, full) = fb_tag(32, 1, [16, 8, 0]);
        for other in [
            fb_tag(24, 1, [16, 8, 0]),
            fb_tag(32, 0, [16, 8, 0]),
            fb_tag(32, 2, [16, 8, 0]),
            fb_tag(32, 1, [16, 8, 4]),
            (ty, full[..full.len() - 1].to_vec()),
        ] {
            let mut tags = mb2_good_tags();
            tags.push(other);
            let b = mb2(&tags);
            let mb = parse_buf(MB2_BOOTLOADER_MAGIC, &b).unwrap();
            assert_eq!(mb.framebuffer, None);
            assert_eq!(mb.cmdline, "log=debug");
        }
        let b = mb2(&mb2_good_tags());
        let mb = parse_buf(MB2_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(mb.framebuffer, None);
    }

    #[test]
    fn mb2_without_cmdline_or_mmap() {
        let tags: Vec<_> = mb2_good_tags()
            .into_iter()
            .filter(|(t, _)| *t != MB2_TAG_CMDLINE && *t != MB2_TAG_MMAP)
            .collect();
        let b = mb2(&tags);
        let mb = parse_buf(MB2_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(mb.cmdline, "");
        assert_eq!(kind_at(&mb, 0x300_0000), Some(RegionKind::Usable));
        let tags: Vec<_> = tags
            .into_iter()
            .filter(|(t, _)| *t != MB2_TAG_BASIC_MEMINFO)
            .collect();
        assert!(matches!(
            parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)),
            Err(BootInfoError::Missing(_))
        ));
    }

    #[test]
    fn mb2_malformed() {
        // Total size too small, too large, past the readable end.
        for total in [0u32, 8, 0x2000, u32::MAX] {
            let mut b = mb2(&mb2_good_tags());
            b.put32(BASE, total);
            assert!(
                parse_buf(MB2_BOOTLOADER_MAGIC, &b).is_err(),
                "total {total}"
            );
        }
        // Misaligned pointer.
        let b = mb2(&mb2_good_tags());
        assert!(matches!(
            parse(MB2_BOOTLOADER_MAGIC, BASE + 4, &&b, KERNEL),
            Err(BootInfoError::Malformed(_))
        ));
        // A tag of size 0 (would loop forever if trusted) and one running
        // past the total size.
        for size in [0u32, 4, 0x800] {
            let mut b = mb2(&mb2_good_tags());
            b.put32(BASE + 12, size);
            assert!(
                matches!(
                    parse_buf(MB2_BOOTLOADER_MAGIC, &b),
                    Err(BootInfoError::Malformed(_))
                ),
                "size {size}"
            );
        }
        // No end tag: total size stops short of it.
        let mut b = mb2(&mb2_good_tags());
        let total = u32_at(&b.data, 0).unwrap();
        b.put32(BASE, total - 8);
        assert!(matches!(
            parse_buf(MB2_BOOTLOADER_MAGIC, &b),
            Err(BootInfoError::Malformed(_))
        ));
        // Unterminated command line.
        let mut tags = mb2_good_tags();
        tags[0].1 = b"log=debug".to_vec();
        assert!(matches!(
            parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)),
            Err(BootInfoError::Malformed(_))
        ));
        // Memory-map entry size 0 and too small.
        for es in [0, 8, 16] {
            let mut tags = mb2_good_tags();
            tags[4] = mmap_tag(24, &[(0x10_0000, 0x100_0000, 1)]);
            tags[4].1[..4].copy_from_slice(&(es as u32).to_le_bytes());
            assert!(
                matches!(
                    parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)),
                    Err(BootInfoError::Malformed(_))
                ),
                "entry size {es}"
            );
        }
        // Module ending before it starts; module tag too short.
        let mut tags = mb2_good_tags();
        tags[3] = module_tag(0x20_0000, 0x10_0000);
        assert!(parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)).is_err());
        tags[3] = (MB2_TAG_MODULE, vec![0; 4]);
        assert!(parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)).is_err());
    }

    #[test]
    fn mb2_larger_entry_size_and_too_many_regions() {
        let mut tags = mb2_good_tags();
        tags[4] = mmap_tag(32, &[(0, 0x9fc00, 1), (0x10_0000, 0x100_0000, 1)]);
        let b = mb2(&tags);
        let mb = parse_buf(MB2_BOOTLOADER_MAGIC, &b).unwrap();
        assert_eq!(kind_at(&mb, 0x80_0000), Some(RegionKind::Usable));

        let many: Vec<_> = (0..300u64).map(|i| (i * 0x2000, 0x1000, 1)).collect();
        let mut tags = mb2_good_tags();
        tags[4] = mmap_tag(24, &many);
        assert_eq!(
            parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)).unwrap_err(),
            BootInfoError::TooManyRegions
        );

        let mut tags = mb2_good_tags();
        for _ in 0..=MAX_MODULES {
            tags.push(module_tag(0x30_0000, 0x30_1000));
        }
        assert_eq!(
            parse_buf(MB2_BOOTLOADER_MAGIC, &mb2(&tags)).unwrap_err(),
            BootInfoError::TooManyRegions
        );
    }

    proptest::proptest! {
        /// Corrupting any bytes of good information never panics, whatever
        /// the result.
        #[test]
        fn corrupted_info_never_panics(
            mb2_format: bool,
            edits in proptest::collection::vec((0usize..0x400, proptest::num::u8::ANY), 1..12),
        ) {
            let (magic, mut b) = if mb2_format {
                (MB2_BOOTLOADER_MAGIC, mb2(&mb2_good_tags()))
            } else {
                (MB1_BOOTLOADER_MAGIC, mb1_good())
            };
            for (at, v) in edits {
                b.data[at] = v;
            }
            let _ = parse_buf(magic, &b);
        }
    }
}

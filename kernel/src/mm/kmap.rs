//! The kernel's own page tables, built once at boot from the memory map
//! and replacing the boot page tables (which map the first 4 GiB with
//! coarse permissions):
//! - a direct map of all RAM at `arch::DIRECT_MAP_BASE`, read-write and
//!   never executable, in the largest pages the CPU offers, plus the device
//!   windows the kernel uses, as device memory;
//! - the kernel image section by section, W^X (text read-execute, rodata
//!   read-only, data and bss read-write), leaving the guard pages under the
//!   kernel stacks unmapped, so an overflow faults.
//!
//! Invariant: every root entry of the kernel half that will ever be used
//! exists after [`init`]; user trees copy them once, at creation, so no
//! kernel mapping may later need a new root entry.

use super::KernelTables;
use super::paging::{Attr, MapError, PageSize, PageTable};
use crate::arch::{self, PageFormat};
use crate::bootinfo::{MemoryMap, RegionKind};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

/// What [`init`] mapped.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMapStats {
    /// Direct-map pages by size: 4 KiB, 2 MiB, 1 GiB.
    pub direct: [u64; 3],
    /// Bytes of RAM in the direct map.
    pub direct_bytes: u64,
    /// 4 KiB pages of the kernel image.
    pub image_pages: u64,
}

/// Builds the kernel page tables and switches to them: the direct map of
/// RAM, the architecture's device windows and `devices` (the interrupt
/// controller's registers, the framebuffer) as device memory, and the
/// kernel image.
pub fn init(
    map: &MemoryMap,
    devices: impl Iterator<Item = (u64, u64)>,
) -> Result<KernelMapStats, MapError> {
    let mut t = KernelTables;
    let mut k = PageTable::<PageFormat>::new(&mut t)?;
    let mut stats = KernelMapStats::default();
    // RAM regions rounded out to pages and merged where they touch.
    let mut ram: Vec<(u64, u64)> = Vec::new();
    let ram_kind = |k: RegionKind| !matches!(k, RegionKind::Reserved | RegionKind::Bad);
    for r in map.regions().iter().filter(|r| ram_kind(r.kind)) {
        let (s, e) = (r.start & !0xfff, r.end.next_multiple_of(0x1000));
        match ram.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => ram
                .try_reserve(1)
                .map(|()| ram.push((s, e)))
                .map_err(|_| MapError::OutOfMemory)?,
        }
    }
    let data = Attr::WRITE | Attr::GLOBAL;
    for &(s, e) in &ram {
        map_direct(&mut k, s, e, data, &mut stats)?;
        stats.direct_bytes += e - s;
    }
    for (base, len) in arch::device_windows().iter().copied().chain(devices) {
        let (s, e) = (base & !0xfff, (base + len).next_multiple_of(0x1000));
        map_direct(&mut k, s, e, data | Attr::DEVICE, &mut stats)?;
    }
    for (range, attr) in arch::kernel_image_layout() {
        for va in range.step_by(0x1000) {
            let pa = arch::kernel_virt_to_phys(va);
            k.map(&mut t, va, pa, PageSize::Size4K, attr)?;
            stats.image_pages += 1;
        }
    }
    // SAFETY: the new tree maps everything the kernel touches from here
    // on: all RAM (so every frame, the heap and the allocator metadata),
    // the device windows and the whole image except the stack guard pages.
    unsafe { arch::load_kernel_root(k.root()) };
    Ok(stats)
}

/// The framebuffer at physical `[pa, pa + len)` as bytes, the first time
/// it is asked for: through the direct map, where the boot tables map the
/// first 4 GiB and [`init`] maps it as a device window. `None` above that,
/// on memory the map lists as anything but reserved (which the kernel may
/// use), or when asked again.
pub fn framebuffer(map: &MemoryMap, pa: u64, len: u64) -> Option<&'static mut [u8]> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let end = pa
        .checked_add(len)
        .filter(|&e| e <= super::DIRECT_MAP_BOOT_LIMIT)?;
    let mut regions = map.regions().iter();
    let clash = regions.any(|r| r.kind != RegionKind::Reserved && r.start < end && pa < r.end);
    if clash || TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: the range is mapped at its direct-map address (above), is
    // not memory the kernel allocates from, and this is its only reference.
    Some(unsafe {
        core::slice::from_raw_parts_mut(arch::phys_to_virt(pa) as *mut u8, len as usize)
    })
}

/// Maps physical `[s, e)` at its direct-map address in the largest pages
/// that fit.
fn map_direct(
    k: &mut PageTable<PageFormat>,
    s: u64,
    e: u64,
    attr: Attr,
    stats: &mut KernelMapStats,
) -> Result<(), MapError> {
    let max = arch::max_page_size();
    let mut pa = s;
    while pa < e {
        let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
            .into_iter()
            .find(|z| *z <= max && pa.is_multiple_of(z.bytes()) && pa + z.bytes() <= e)
            .unwrap_or(PageSize::Size4K);
        match k.map(&mut KernelTables, arch::phys_to_virt(pa), pa, size, attr) {
            // Two device windows may share a page.
            Ok(()) | Err(MapError::AlreadyMapped) => {}
            Err(err) => return Err(err),
        }
        if let Some(n) = stats.direct.get_mut(size.level()) {
            *n += 1;
        }
        pa += size.bytes();
    }
    Ok(())
}

crate::ktest!(
    fn kernel_image_is_mapped_w_xor_x() {
        // SAFETY: the current kernel root; only read.
        let k = unsafe { PageTable::<PageFormat>::from_root(arch::kernel_root()) };
        let attr = |va: usize| k.translate(&KernelTables, va).map(|m| m.attr);
        let text = kernel_image_is_mapped_w_xor_x as fn() -> crate::ktest::TestResult as usize;
        static RODATA: [u8; 4] = *b"keel";
        static DATA: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
        let ro = (&raw const RODATA) as usize;
        let rw = (&raw const DATA) as usize;
        let exec = |a: Option<Attr>| a.is_some_and(|a| a.contains(Attr::EXEC));
        let write = |a: Option<Attr>| a.is_some_and(|a| a.contains(Attr::WRITE));
        kassert!(exec(attr(text)) && !write(attr(text)), "text is RX");
        kassert!(
            attr(ro).is_some() && !exec(attr(ro)) && !write(attr(ro)),
            "rodata is R"
        );
        kassert!(write(attr(rw)) && !exec(attr(rw)), "data is RW");
        for (range, a) in arch::kernel_image_layout() {
            kassert!(!a.contains(Attr::WRITE | Attr::EXEC), "no section is W+X");
            kassert_eq!(attr(range.start), Some(a));
        }
        let frame = super::alloc_frames(0, super::frame::ZoneRequest::Any);
        kassert!(frame.is_some());
        let direct = attr(arch::phys_to_virt(frame.unwrap_or(0)));
        kassert!(write(direct) && !exec(direct), "direct map is RW, never X");
        kassert_eq!(super::free_frames(frame.unwrap_or(0), 0), Ok(()));
        Ok(())
    }
);

crate::ktest!(
    fn a_framebuffer_on_memory_the_kernel_uses_or_above_4_gib_is_refused() {
        use crate::bootinfo::MemoryRegion;
        let region = |start, len, kind| MemoryRegion::from_len(start, len, kind);
        let usable = RegionKind::Usable;
        let regions = [
            region(0x100_0000, 0x100_0000, usable),
            region(0x1_0000_0000, 0x100_0000, usable),
        ];
        let map = kexpect!(
            MemoryMap::build(regions.into_iter().flatten()),
            "a memory map"
        );
        for (pa, len) in [
            (0x180_0000, 0x1000),       // inside RAM
            (0x1ff_f000, 0x2000),       // runs from RAM into a hole
            (0xffff_f000, 0x2000),      // crosses 4 GiB
            (0x1_8000_0000, 0x1000),    // above 4 GiB
            (u64::MAX - 0xfff, 0x2000), // wraps
        ] {
            kassert!(framebuffer(&map, pa, len).is_none(), "{:#x}+{:#x}", pa, len);
        }
        Ok(())
    }
);

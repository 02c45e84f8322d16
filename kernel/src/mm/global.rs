//! The kernel's global frame allocator, built at boot from the memory map
//! and the firmware's NUMA ranges.
//!
//! Invariants: after [`init`], `FRAMES` holds an allocator whose metadata
//! lives in physical memory that the allocator itself never hands out, and
//! `NUMA` holds the NUMA ranges and the node plan every range handed to the
//! allocator is split by: each piece goes to the zones of its node after
//! [`NumaMap::zone_plan`] (so the zones fit `MAX_ZONES` and same-kind zones
//! of different nodes never have overlapping spans); memory outside every
//! NUMA range is node 0.

use super::frame::{
    DMA_LIMIT, FRAME_SIZE, FrameAllocator, FrameMeta, FreeError, InitError, MAX_ZONES, Pfn,
    ZoneRequest,
};
use crate::bootinfo::MemoryMap;
use crate::bootinfo::numa::{NodePlan, NumaMap};
use spin::Mutex;

/// The boot page tables map this much physical memory in the direct map;
/// RAM above it is left unused until the kernel builds its own tables.
pub const DIRECT_MAP_BOOT_LIMIT: u64 = 4 << 30;

static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// The NUMA ranges from the firmware and how the allocator folds nodes.
struct NumaLayout {
    map: NumaMap,
    plan: NodePlan,
}

static NUMA: spin::Once<NumaLayout> = spin::Once::new();

/// Adds `[start, end)` to `alloc`, each NUMA piece on its planned node.
fn add_free_by_node(
    alloc: &mut FrameAllocator<'_>,
    numa: &NumaLayout,
    start: u64,
    end: u64,
) -> Result<(), InitError> {
    for piece in numa.map.split(start, end) {
        alloc.add_free(piece.start, piece.end, numa.plan.node(piece.node))?;
    }
    Ok(())
}

/// Why the frame allocator could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmInitError {
    /// No usable region is large enough for the allocator's metadata.
    NoRoomForMetadata,
    /// The allocator rejected the memory map.
    Allocator(InitError),
}

/// Builds the global frame allocator from `map`, tagging memory with the
/// NUMA nodes of `numa` (empty: all node 0). Called once, at boot.
/// Only RAM below [`DIRECT_MAP_BOOT_LIMIT`] is handed out until
/// [`add_memory_above_boot_limit`], after the kernel's own page tables map
/// all of it.
pub fn init(map: &MemoryMap, numa: &NumaMap) -> Result<(), MmInitError> {
    let numa = NUMA.call_once(|| NumaLayout {
        plan: numa.zone_plan(map, DMA_LIMIT, MAX_ZONES),
        map: numa.clone(),
    });
    for (from, into) in numa.plan.folds() {
        log::info!(
            "NUMA: node {from} shares node {into}'s zones (interleaved memory or zone limit)"
        );
    }
    let all = || map.usable().map(|r| (r.start, r.end));
    let low = || {
        all()
            .filter(|(s, _)| *s < DIRECT_MAP_BOOT_LIMIT)
            .map(|(s, e)| (s, e.min(DIRECT_MAP_BOOT_LIMIT)))
    };
    let lo = all().map(|(s, _)| s).min().unwrap_or(0) / FRAME_SIZE;
    let hi = all().map(|(_, e)| e).max().unwrap_or(0) / FRAME_SIZE;
    let frames = hi.saturating_sub(lo);
    let (meta_len, bitmap_len) = FrameAllocator::metadata_len(frames);
    let meta_bytes = (meta_len * FrameMeta::SIZE).next_multiple_of(8);
    let need = ((meta_bytes + bitmap_len * 8) as u64).next_multiple_of(FRAME_SIZE);
    let (carve_start, _) = low()
        .find(|(s, e)| e - s >= need)
        .ok_or(MmInitError::NoRoomForMetadata)?;
    let base = crate::arch::phys_to_virt(carve_start);
    // SAFETY: `[carve_start, carve_start + need)` is usable RAM from the
    // firmware memory map, below the boot direct-map limit, so it is mapped
    // read-write at `base`. Nothing else uses it: it is excluded from the
    // allocator below, and `init` runs once at boot before any other
    // allocation. `base` is page-aligned, so both slices are aligned for
    // their element types (FrameMeta needs 4, u64 needs 8, and `meta_bytes`
    // is a multiple of 8).
    let (meta, bitmap) = unsafe {
        (
            core::slice::from_raw_parts_mut(base as *mut FrameMeta, meta_len),
            core::slice::from_raw_parts_mut((base + meta_bytes) as *mut u64, bitmap_len),
        )
    };
    let mut alloc = FrameAllocator::new(lo, meta, bitmap).map_err(MmInitError::Allocator)?;
    for (s, e) in low() {
        // Skip the metadata carve-out.
        let s = if s == carve_start { s + need } else { s };
        add_free_by_node(&mut alloc, numa, s, e).map_err(MmInitError::Allocator)?;
    }
    *FRAMES.lock() = Some(alloc);
    Ok(())
}

/// Hands RAM above [`DIRECT_MAP_BOOT_LIMIT`] to the allocator, once the
/// kernel's page tables map it (`mm::kmap`).
pub fn add_memory_above_boot_limit(map: &MemoryMap) -> Result<(), MmInitError> {
    let mut guard = FRAMES.lock();
    let (Some(alloc), Some(numa)) = (guard.as_mut(), NUMA.get()) else {
        return Ok(());
    };
    for r in map.usable().filter(|r| r.end > DIRECT_MAP_BOOT_LIMIT) {
        add_free_by_node(alloc, numa, r.start.max(DIRECT_MAP_BOOT_LIMIT), r.end)
            .map_err(MmInitError::Allocator)?;
    }
    Ok(())
}

/// The hot list this CPU uses: its own.
fn cpu() -> usize {
    crate::arch::cpu_index()
}

/// Allocates `2^order` contiguous frames; returns the first frame's
/// physical address. Single frames come from this CPU's hot list.
#[inline]
pub fn alloc_frames(order: usize, zone: ZoneRequest) -> Option<u64> {
    let mut guard = FRAMES.lock();
    let a = guard.as_mut()?;
    let pfn = if order == 0 && zone == ZoneRequest::Any {
        a.alloc_hot(cpu())
    } else {
        a.alloc(order, zone, None)
    };
    pfn.map(|pfn| pfn * FRAME_SIZE)
}

/// Runs `f` on the allocator and the frame number of `phys`
/// (`OutOfRange` before [`init`]).
fn with_frame<R>(
    phys: u64,
    f: impl FnOnce(&mut FrameAllocator<'static>, Pfn) -> Result<R, FreeError>,
) -> Result<R, FreeError> {
    let pfn: Pfn = phys / FRAME_SIZE;
    FRAMES
        .lock()
        .as_mut()
        .map_or(Err(FreeError::OutOfRange), |a| f(a, pfn))
}

/// Frees a block from [`alloc_frames`].
#[inline]
pub fn free_frames(phys: u64, order: usize) -> Result<(), FreeError> {
    with_frame(phys, |a, pfn| match order {
        0 => a.free_hot(cpu(), pfn),
        _ => a.free(pfn, order),
    })
}

/// Adds a copy-on-write reference to the allocated single frame at `phys`.
pub fn share_frame(phys: u64) -> Result<u32, FreeError> {
    with_frame(phys, |a, pfn| a.share(pfn))
}

/// Drops a reference to the single frame at `phys`; the last one frees it.
pub fn release_frame(phys: u64) -> Result<bool, FreeError> {
    with_frame(phys, |a, pfn| a.release(cpu(), pfn))
}

/// References to the single frame at `phys` (0 if it is not allocated).
pub fn frame_refs(phys: u64) -> u32 {
    FRAMES
        .lock()
        .as_mut()
        .map_or(0, |a| a.refs(phys / FRAME_SIZE))
}

/// Page tables in frames from the global allocator, reached through the
/// direct map.
pub struct KernelTables;

// SAFETY: tables are whole frames from the global allocator, zeroed here,
// owned by the tree that allocated them until `free_table`; the direct map
// maps all allocatable RAM read-write at `phys_to_virt`.
unsafe impl super::paging::TableMemory for KernelTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = alloc_frames(0, ZoneRequest::Any)?;
        let table = self.table(pa);
        // SAFETY: `pa` is a frame we now own, mapped by the direct map.
        unsafe { table.write([0; super::paging::ENTRIES]) };
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        if let Err(e) = free_frames(pa, 0) {
            log::error!("page table {pa:#x} freed twice: {e:?}");
        }
    }

    fn table(&self, pa: u64) -> *mut [u64; super::paging::ENTRIES] {
        crate::arch::phys_to_virt(pa) as *mut _
    }
}

/// `(total, free, peak used)` frames, or `None` before [`init`].
pub fn frame_stats() -> Option<(u64, u64, u64)> {
    let guard = FRAMES.lock();
    let a = guard.as_ref()?;
    Some((a.total_frames(), a.free_frames(), a.peak_used_frames()))
}

/// Prints the allocator's statistics: the NUMA ranges (if the firmware
/// gave any), totals, per zone, per order.
pub fn print_stats() {
    let guard = FRAMES.lock();
    let Some(a) = guard.as_ref() else { return };
    if let Some(numa) = NUMA.get().filter(|n| !n.map.is_empty()) {
        kprint!("NUMA ranges:");
        for (i, r) in numa.map.ranges().iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            kprint!("{sep} {:#x}-{:#x} node {}", r.start, r.end, r.node);
        }
        kprintln!();
    }
    kprintln!(
        "frames: {} total ({} MiB), {} free ({} on per-CPU hot lists), peak used {}",
        a.total_frames(),
        (a.total_frames() * FRAME_SIZE) >> 20,
        a.free_frames(),
        a.hot_frames(),
        a.peak_used_frames()
    );
    for z in a.zone_stats() {
        kprint!(
            "  zone {:?} node {}: {} frames, {} free; free blocks by order:",
            z.kind,
            z.node,
            z.total_frames,
            z.free_frames
        );
        for n in z.free_blocks {
            kprint!(" {n}");
        }
        kprintln!();
    }
}

crate::ktest!(
    fn freed_frame_is_reusable() {
        let Some((_, free_before, _)) = frame_stats() else {
            kassert!(false, "frame allocator not initialised");
            return Ok(());
        };
        let a = alloc_frames(0, ZoneRequest::Any);
        kassert!(a.is_some());
        let a = a.unwrap_or(0);
        kassert_eq!(frame_stats().map(|s| s.1), Some(free_before - 1));
        // The frame is real memory: write and read it through the direct map.
        let va = crate::arch::phys_to_virt(a) as *mut u64;
        // SAFETY: `a` is a frame we own, mapped read-write by the direct map.
        unsafe {
            va.write_volatile(0x1234_5678_9abc_def0);
            kassert_eq!(va.read_volatile(), 0x1234_5678_9abc_def0);
        }
        kassert_eq!(free_frames(a, 0), Ok(()));
        kassert_eq!(
            free_frames(a, 0),
            Err(super::frame::FreeError::NotAllocated)
        );
        kassert_eq!(frame_stats().map(|s| s.1), Some(free_before));
        kassert_eq!(alloc_frames(0, ZoneRequest::Any), Some(a));
        kassert_eq!(free_frames(a, 0), Ok(()));
        Ok(())
    }
);

crate::ktest!(
    fn dma_zone_and_large_blocks() {
        let d = alloc_frames(2, ZoneRequest::Dma);
        kassert!(d.is_some_and(|p| p + 4 * FRAME_SIZE <= super::frame::DMA_LIMIT) || d.is_none());
        if let Some(d) = d {
            kassert_eq!(free_frames(d, 2), Ok(()));
        }
        let big = alloc_frames(super::frame::MAX_ORDER, ZoneRequest::Any);
        kassert!(big.is_some_and(|p| p % (FRAME_SIZE << super::frame::MAX_ORDER) == 0));
        kassert_eq!(
            free_frames(big.unwrap_or(0), super::frame::MAX_ORDER),
            Ok(())
        );
        Ok(())
    }
);

crate::ktest!(
    fn node_preferring_alloc_follows_numa_ranges() {
        let Some(numa) = NUMA.get() else {
            kassert!(false, "NUMA layout not initialised");
            return Ok(());
        };
        let mut guard = FRAMES.lock();
        let Some(a) = guard.as_mut() else {
            kassert!(false, "frame allocator not initialised");
            return Ok(());
        };
        let mut nodes = [false; crate::bootinfo::numa::MAX_NODES];
        for z in a.zone_stats().filter(|z| z.free_frames > 0) {
            if let Some(seen) = nodes.get_mut(usize::from(z.node)) {
                *seen = true;
            }
        }
        // A frame allocated preferring a node that has free memory lies in
        // that node's NUMA ranges (after folding).
        for node in (0..nodes.len() as u8).filter(|&n| nodes[usize::from(n)]) {
            let pfn = a.alloc(0, ZoneRequest::Any, Some(node));
            kassert!(pfn.is_some(), "node {node}");
            let pa = pfn.unwrap_or(0) * FRAME_SIZE;
            let firmware = numa
                .map
                .split(pa, pa + FRAME_SIZE)
                .next()
                .map_or(0, |p| p.node);
            kassert_eq!(numa.plan.node(firmware), node);
            kassert_eq!(a.free(pfn.unwrap_or(0), 0), Ok(()));
        }
        Ok(())
    }
);

crate::kbench!(
    fn frame_alloc_free_order0(iters: u64) {
        for _ in 0..iters {
            if let Some(p) = alloc_frames(0, ZoneRequest::Any) {
                let _ = free_frames(core::hint::black_box(p), 0);
            }
        }
    },
    iters = 500
);

crate::kbench!(
    fn frame_alloc_free_order4(iters: u64) {
        for _ in 0..iters {
            if let Some(p) = alloc_frames(4, ZoneRequest::Any) {
                let _ = free_frames(core::hint::black_box(p), 4);
            }
        }
    },
    iters = 500
);

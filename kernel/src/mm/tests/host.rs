//! The host stand-in for the global frame allocator (`global`), built for
//! host tests (`cargo test`; a test double) under the same names, so that
//! `mm::user` (the kernel's `Machine`) builds and runs in host tests.
//!
//! A frame is a 4 KiB-aligned host allocation and its "physical address"
//! is its host address (`arch::host` maps physical to virtual by the
//! identity). Invariants:
//! - Each host thread has its own frame source (tests run on threads of
//!   their own): a frame is freed by the thread that allocated it.
//! - A block is a live allocation exactly while it is in `Frames::blocks`;
//!   its reference count is at least 1 there. New frames are filled with
//!   `0x5a`, not zeroed, as the machine gives no guarantee either.
//! - Blocks of order `n` are `2^n` contiguous frames aligned to 4 KiB only
//!   (no code on the host needs the buddy allocator's natural alignment).

extern crate std;

use super::frame::{FRAME_SIZE, FreeError, ZoneRequest};
use super::paging::{ENTRIES, TableMemory};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::cell::RefCell;

/// Frames reported as the total by [`frame_stats`] when no limit is set.
const DEFAULT_TOTAL: u64 = 1 << 20;

/// One frame of host memory.
#[derive(Clone)]
#[repr(C, align(4096))]
struct Page([u8; FRAME_SIZE as usize]);

struct Block {
    /// Owns the allocation (from `Box::into_raw`).
    pages: *mut [Page],
    refs: u32,
}

#[derive(Default)]
struct Frames {
    /// Live blocks by physical (host) address of their first frame.
    blocks: BTreeMap<u64, Block>,
    /// Frames allocated now, and at most so far.
    in_use: u64,
    peak: u64,
    /// Allocations fail at this many frames in use.
    limit: Option<u64>,
}

std::thread_local! {
    static FRAMES: RefCell<Frames> = RefCell::new(Frames::default());
}

fn with<R>(f: impl FnOnce(&mut Frames) -> R) -> R {
    FRAMES.with(|s| f(&mut s.borrow_mut()))
}

/// Allocates `2^order` contiguous frames (the zone is ignored); `None` at
/// the limit set by [`set_frame_limit`].
pub fn alloc_frames(order: usize, _zone: ZoneRequest) -> Option<u64> {
    let count = 1u64.checked_shl(u32::try_from(order).ok()?)?;
    with(|s| {
        let in_use = s.in_use.checked_add(count)?;
        if s.limit.is_some_and(|l| in_use > l) {
            return None;
        }
        let len = usize::try_from(count).ok()?;
        let pages =
            Box::into_raw(alloc::vec![Page([0x5a; FRAME_SIZE as usize]); len].into_boxed_slice());
        let pa = pages as *mut Page as u64;
        s.blocks.insert(pa, Block { pages, refs: 1 });
        s.in_use = in_use;
        s.peak = s.peak.max(in_use);
        Some(pa)
    })
}

/// Frees a block from [`alloc_frames`] of the same `order`, whatever its
/// reference count.
pub fn free_frames(phys: u64, order: usize) -> Result<(), FreeError> {
    with(|s| {
        let block = s.blocks.get(&phys).ok_or(FreeError::NotAllocated)?;
        let len = u32::try_from(order)
            .ok()
            .and_then(|o| 1usize.checked_shl(o));
        if Some(block.pages.len()) != len {
            return Err(FreeError::WrongBlock);
        }
        let Some(block) = s.blocks.remove(&phys) else {
            return Err(FreeError::NotAllocated);
        };
        s.in_use -= block.pages.len() as u64;
        // SAFETY: `pages` came from `Box::into_raw` in `alloc_frames` and
        // was in `blocks` until now, so it is freed exactly once.
        drop(unsafe { Box::from_raw(block.pages) });
        Ok(())
    })
}

/// Adds a reference to the single frame at `phys`; returns the count.
pub fn share_frame(phys: u64) -> Result<u32, FreeError> {
    with(|s| {
        let block = s.blocks.get_mut(&phys).ok_or(FreeError::NotAllocated)?;
        if block.pages.len() != 1 {
            return Err(FreeError::WrongBlock);
        }
        block.refs = block.refs.checked_add(1).ok_or(FreeError::WrongBlock)?;
        Ok(block.refs)
    })
}

/// Drops a reference to the single frame at `phys`; the last one frees it.
/// Returns whether it was freed.
pub fn release_frame(phys: u64) -> Result<bool, FreeError> {
    let last = with(|s| {
        let block = s.blocks.get_mut(&phys).ok_or(FreeError::NotAllocated)?;
        if block.pages.len() != 1 {
            return Err(FreeError::WrongBlock);
        }
        block.refs -= 1;
        Ok(block.refs == 0)
    })?;
    if last {
        free_frames(phys, 0)?;
    }
    Ok(last)
}

/// References to the block starting at `phys` (0 if none starts there).
pub fn frame_refs(phys: u64) -> u32 {
    with(|s| s.blocks.get(&phys).map_or(0, |b| b.refs))
}

/// `(total, free, peak used)` frames of this thread's frame source; the
/// total is the limit, if one is set.
pub fn frame_stats() -> Option<(u64, u64, u64)> {
    Some(with(|s| {
        let total = s.limit.unwrap_or(DEFAULT_TOTAL);
        (total, total.saturating_sub(s.in_use), s.peak)
    }))
}

/// Frames this thread has allocated and not freed.
pub fn frames_in_use() -> u64 {
    with(|s| s.in_use)
}

/// Makes allocations fail once `limit` frames are in use (`None`: no
/// limit), to test running out of memory.
pub fn set_frame_limit(limit: Option<u64>) {
    with(|s| s.limit = limit);
}

/// Page tables in host frames, reached by their host address.
pub struct KernelTables;

// SAFETY: tables are whole frames from `alloc_frames`, zeroed here, owned
// by the tree that allocated them until `free_table`; a frame's physical
// address is its host address, valid for reads and writes while allocated.
unsafe impl TableMemory for KernelTables {
    fn alloc_table(&mut self) -> Option<u64> {
        let pa = alloc_frames(0, ZoneRequest::Any)?;
        // SAFETY: `pa` is a frame we now own, a live host allocation of
        // one page, aligned for a table.
        unsafe { self.table(pa).write([0; ENTRIES]) };
        Some(pa)
    }

    fn free_table(&mut self, pa: u64) {
        if let Err(e) = free_frames(pa, 0) {
            log::error!("page table {pa:#x} freed twice: {e:?}");
        }
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        crate::arch::phys_to_virt(pa) as *mut _
    }
}

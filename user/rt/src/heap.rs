//! The global allocator: a bump allocator over a static arena, so `alloc`
//! (`String`, `Vec`, `format!`) works without any system call; once the
//! arena is used up, it goes on in memory from the process's own pool,
//! mapped a chunk at a time at [`GROW_BASE`] (a program that never needs
//! more than the arena makes no system call and is charged nothing). The
//! chunks are eager: their frames and page tables are charged when they
//! are mapped, not later at first touch.
//!
//! Freeing gives memory back only when it is the most recent allocation
//! of its region (stack-like use, which is what formatting a message and
//! dropping it does); anything else stays used until the program ends.
//! Exhaustion returns null, so fallible allocation (`try_reserve`)
//! reports it.
//!
//! Invariants: `next` is an offset into `ARENA` and `grown` one into the
//! grown region, each only ever moved by a successful compare-exchange, so
//! allocations never overlap even when threads allocate at once; `mapped`
//! bytes from `GROW_BASE` are mapped, and only grow, under `growing`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use keel_abi::syscall::{MEM_EAGER, PROT_WRITE};

/// Size of the arena (in `.bss`, so demand-zero memory).
const ARENA_BYTES: usize = 256 * 1024;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: the bytes are only reached through pointers `BumpHeap` hands
// out, which never overlap.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Where the heap grows, how far at most, and by how much at a time.
const GROW_BASE: usize = 0x3c_0000_0000;
const GROW_MAX: usize = 1 << 32;
const GROW_CHUNK: usize = 1 << 20;

/// Bumps `next` (an offset into the region at `base` of `size` bytes) past
/// a block for `layout`; its address, or `None` if it does not fit.
fn bump(next: &AtomicUsize, base: usize, size: usize, layout: Layout) -> Option<usize> {
    let mut cur = next.load(Ordering::Relaxed);
    loop {
        let start = (base + cur).checked_next_multiple_of(layout.align())?;
        let end = start.checked_add(layout.size())?;
        if end > base + size {
            return None;
        }
        match next.compare_exchange_weak(cur, end - base, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(start),
            Err(now) => cur = now,
        }
    }
}

struct BumpHeap {
    next: AtomicUsize,
    grown: AtomicUsize,
    mapped: AtomicUsize,
    growing: AtomicBool,
}

impl BumpHeap {
    fn base() -> usize {
        ARENA.0.get() as usize
    }

    /// Maps more of the grown region, so that `bytes` from `GROW_BASE`
    /// are mapped; false if the process's pool cannot give them.
    fn grow(&self, bytes: usize) -> bool {
        if bytes > GROW_MAX {
            return false;
        }
        while self.growing.swap(true, Ordering::Acquire) {
            core::hint::spin_loop();
        }
        let have = self.mapped.load(Ordering::Acquire);
        let mut ok = have >= bytes;
        if !ok && let Some((aspace, pool)) = crate::process::own_spaces() {
            let pages = (bytes - have).next_multiple_of(GROW_CHUNK) / 4096;
            ok = crate::syscall::mem_create(pool, pages, MEM_EAGER).is_ok_and(|mem| {
                let at = GROW_BASE + have;
                let mapped = crate::syscall::map(aspace, mem, at, 0, pages, PROT_WRITE);
                let _ = crate::syscall::cap_delete(mem);
                mapped.is_ok()
            });
            if ok {
                self.mapped.store(have + pages * 4096, Ordering::Release);
            }
        }
        self.growing.store(false, Ordering::Release);
        ok
    }
}

// SAFETY: `alloc` returns disjoint, suitably aligned blocks inside the
// arena or the mapped part of the grown region (each offset only moves
// forward past a block by compare-exchange, and back only over the block
// being freed when it is the last one), or null.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(at) = bump(&self.next, Self::base(), ARENA_BYTES, layout) {
            return at as *mut u8;
        }
        loop {
            let mapped = self.mapped.load(Ordering::Acquire);
            if let Some(at) = bump(&self.grown, GROW_BASE, mapped, layout) {
                return at as *mut u8;
            }
            let need = self.grown.load(Ordering::Relaxed) + layout.size() + layout.align();
            if !self.grow(need) {
                return core::ptr::null_mut();
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (next, start) = match (ptr as usize).checked_sub(GROW_BASE) {
            Some(off) => (&self.grown, off),
            None => (&self.next, ptr as usize - Self::base()),
        };
        // Only the last block can be given back; if another allocation
        // came after it, this fails and the block stays used.
        let _ = next.compare_exchange(
            start + layout.size(),
            start,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

#[global_allocator]
static HEAP: BumpHeap = BumpHeap {
    next: AtomicUsize::new(0),
    grown: AtomicUsize::new(0),
    mapped: AtomicUsize::new(0),
    growing: AtomicBool::new(false),
};

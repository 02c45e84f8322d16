//! The global allocator: a bump allocator over a static arena, so `alloc`
//! (`String`, `Vec`, `format!`) works without any system call.
//!
//! Freeing gives memory back only when it is the most recent allocation
//! (stack-like use, which is what formatting a message and dropping it
//! does); anything else stays used until the program ends. Exhaustion
//! returns null, so fallible allocation (`try_reserve`) reports it.
//!
//! Invariant: `next` is an offset into `ARENA`, only ever moved by a
//! successful compare-exchange, so allocations never overlap even when
//! threads allocate at once.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Size of the arena (in `.bss`, so demand-zero memory).
const ARENA_BYTES: usize = 256 * 1024;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: the bytes are only reached through pointers `BumpHeap` hands
// out, which never overlap.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

struct BumpHeap {
    next: AtomicUsize,
}

impl BumpHeap {
    fn base() -> usize {
        ARENA.0.get() as usize
    }
}

// SAFETY: `alloc` returns disjoint, suitably aligned blocks inside the
// arena (the offset only moves forward past a block by compare-exchange,
// and back only over the block being freed when it is the last one), or
// null.
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = Self::base();
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let Some(start) = (base + cur).checked_next_multiple_of(layout.align()) else {
                return core::ptr::null_mut();
            };
            let Some(end) = start.checked_add(layout.size()) else {
                return core::ptr::null_mut();
            };
            if end > base + ARENA_BYTES {
                return core::ptr::null_mut();
            }
            match self.next.compare_exchange_weak(
                cur,
                end - base,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return start as *mut u8,
                Err(now) => cur = now,
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let start = ptr as usize - Self::base();
        // Only the last block can be given back; if another allocation
        // came after it, this fails and the block stays used.
        let _ = self.next.compare_exchange(
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
};

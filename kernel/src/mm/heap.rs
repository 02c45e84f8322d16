//! The kernel heap: the `#[global_allocator]`, a [`SlabAllocator`] whose
//! pages come from the frame allocator through the direct map.
//!
//! Allocation failure returns null (so `try_reserve`-style callers get an
//! error); nothing here panics on exhaustion. The slab allocator keeps
//! per-CPU object caches, each CPU using its own; one lock still
//! serialises the heap (nearly always taken under the kernel lock, so it
//! is uncontended; see `smp`).

use super::frame::ZoneRequest;
use super::slab::{PageSource, SlabAllocator};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use spin::Mutex;

/// The CPU whose object caches this CPU uses: its own.
fn cpu() -> usize {
    crate::arch::cpu_index()
}

/// Pages for the slab allocator: frames, addressed through the direct map.
pub struct FramePages;

impl PageSource for FramePages {
    fn alloc_pages(&mut self, order: usize) -> Option<NonNull<u8>> {
        let phys = super::alloc_frames(order, ZoneRequest::Any)?;
        NonNull::new(crate::arch::phys_to_virt(phys) as *mut u8)
    }

    unsafe fn free_pages(&mut self, page: NonNull<u8>, order: usize) {
        let phys = page.as_ptr() as usize - crate::arch::DIRECT_MAP_BASE;
        // Cannot fail for a block from `alloc_pages`; a failure would be a
        // heap bug, and leaking the block is the safe response.
        if super::free_frames(phys as u64, order).is_err() {
            log::error!("heap: frame {phys:#x} order {order} refused by the frame allocator");
        }
    }
}

/// The kernel's global allocator.
pub struct KernelHeap(Mutex<SlabAllocator<FramePages>>);

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(Mutex::new(SlabAllocator::new(FramePages)));

// SAFETY: `alloc` returns blocks of at least `layout.size()` bytes aligned to
// `layout.align()` (the slab allocator's contract, property-tested on the
// host) or null; `dealloc` hands the same layout back; the lock makes the
// allocator's state exclusive.
unsafe impl GlobalAlloc for KernelHeap {
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .alloc(cpu(), layout.size(), layout.align())
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with
            // this layout.
            unsafe { self.0.lock().free(cpu(), p, layout.size(), layout.align()) }
        }
    }
}

crate::ktest!(
    fn heap_box_and_vec_round_trip() {
        use alloc::boxed::Box;
        use alloc::vec::Vec;
        let before = super::frame_stats().map(|s| s.1);
        let b = Box::new(0x55aa_u64);
        kassert_eq!(*b, 0x55aa);
        let mut v: Vec<u32> = Vec::new();
        kassert!(v.try_reserve(10_000).is_ok(), "40 KB vector");
        v.extend(0..10_000);
        kassert_eq!(v.iter().map(|&x| u64::from(x)).sum::<u64>(), 49_995_000);
        drop(v);
        drop(b);
        // Large blocks went back to the frame allocator (at most one cached
        // empty slab per class may stay).
        let after = super::frame_stats().map(|s| s.1);
        kassert!(after >= before.map(|b| b.saturating_sub(super::slab::CLASSES.len() as u64)));
        Ok(())
    }
);

crate::ktest!(
    fn heap_reports_exhaustion_instead_of_panicking() {
        let mut v: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
        // Far more than the machine has: must fail cleanly.
        kassert!(v.try_reserve(1 << 40).is_err());
        Ok(())
    }
);

crate::kbench!(
    fn slab_alloc_free_64(iters: u64) {
        let layout = Layout::from_size_align(64, 8).unwrap_or(Layout::new::<u64>());
        for _ in 0..iters {
            // SAFETY: non-zero size; freed with the same layout.
            unsafe {
                let p = HEAP.alloc(layout);
                HEAP.dealloc(core::hint::black_box(p), layout);
            }
        }
    },
    iters = 1000
);

crate::kbench!(
    fn slab_alloc_free_1k(iters: u64) {
        let layout = Layout::from_size_align(1024, 8).unwrap_or(Layout::new::<u64>());
        for _ in 0..iters {
            // SAFETY: as above.
            unsafe {
                let p = HEAP.alloc(layout);
                HEAP.dealloc(core::hint::black_box(p), layout);
            }
        }
    },
    iters = 1000
);

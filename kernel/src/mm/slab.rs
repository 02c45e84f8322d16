//! The slab allocator behind the kernel heap: size classes of 32 B to
//! 2,016 B carved out of 4 KiB pages, written by hand (kernel core
//! competence). Larger requests go straight to the page source (the buddy
//! allocator in the kernel).
//!
//! Layout: each slab is one page; its first [`HEADER`] bytes hold a
//! [`SlabHeader`], the rest is an array of equal objects. Free objects form
//! an intrusive singly linked list inside the slab. A class keeps a doubly
//! linked list of *partial* slabs (at least one free object); full slabs are
//! on no list and rejoin it when an object is freed. A slab that becomes
//! empty is returned to the page source unless it is the class's only
//! partial slab (one empty slab is kept to avoid thrashing).
//!
//! In front of the slabs, each CPU has a small cache (a magazine) of free
//! objects per class: alloc pops from it and free pushes to it, refilled
//! from and flushed to the slabs half a magazine at a time, so the common
//! alloc/free pair touches no slab list.
//!
//! Invariants: a slab header's `class` never changes while the page is a
//! slab; `in_use` equals the number of objects handed out from it
//! (including those sitting in CPU caches); an
//! object is either on its slab's free list or handed out, never both.
//! Freeing a pointer that is not the start of an in-use object of this
//! allocator is undefined behaviour, as for any `GlobalAlloc`; the kernel
//! only frees what it allocated.

use arrayvec::ArrayVec;
use core::ptr::{self, NonNull};

/// Page (and slab) size.
pub const PAGE: usize = 4096;
/// Bytes reserved at the start of each slab for its header.
pub const HEADER: usize = 64;
/// Object sizes served from slabs; larger requests take whole pages (a
/// 4 KiB request is one frame from the frame allocator's per-CPU hot list).
/// The largest is two to a slab after its header (a 2 KiB class held one).
pub const CLASSES: [usize; 7] = [32, 64, 128, 256, 512, 1024, (PAGE - HEADER) / 2];
/// CPUs with object caches of their own.
pub const MAX_CPUS: usize = super::frame::MAX_CPUS;
/// Objects one CPU caches per class.
const MAGAZINE: usize = 16;

/// One CPU's cache of free objects of one class.
type Magazine = ArrayVec<*mut u8, MAGAZINE>;

/// Where slabs' pages come from.
pub trait PageSource {
    /// A page-aligned block of `2^order` pages, or `None` when out of memory.
    fn alloc_pages(&mut self, order: usize) -> Option<NonNull<u8>>;
    /// Returns a block from `alloc_pages` with the same order.
    ///
    /// # Safety
    /// `page` must come from `alloc_pages(order)` and not be used afterwards.
    unsafe fn free_pages(&mut self, page: NonNull<u8>, order: usize);
}

#[repr(C)]
struct SlabHeader {
    class: usize,
    in_use: usize,
    free: *mut FreeObject,
    prev: *mut SlabHeader,
    next: *mut SlabHeader,
}

#[repr(C)]
struct FreeObject {
    next: *mut FreeObject,
}

/// Statistics of one size class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Bytes per object in this class (one of [`CLASSES`]).
    pub object_size: usize,
    /// Pages currently held as slabs of this class.
    pub slabs: usize,
    /// Handed out to callers.
    pub objects_in_use: usize,
    /// Free, in CPU caches.
    pub cached: usize,
    /// Allocations served from this class since the allocator was made.
    pub allocs: u64,
    /// Frees to this class since the allocator was made.
    pub frees: u64,
}

#[derive(Clone, Copy)]
struct Class {
    partial: *mut SlabHeader,
    /// Its statistics (`object_size` filled in when they are read).
    stats: ClassStats,
}

/// A slab allocator over a [`PageSource`]. Not thread-safe by itself; the
/// kernel wraps it in a lock.
pub struct SlabAllocator<S: PageSource> {
    source: S,
    classes: [Class; CLASSES.len()],
    caches: [[Magazine; CLASSES.len()]; MAX_CPUS],
    large_pages: usize,
}

// SAFETY: the raw pointers refer to pages owned exclusively by this
// allocator; moving it to another CPU moves that ownership with it.
unsafe impl<S: PageSource + Send> Send for SlabAllocator<S> {}

/// The size class index for a request, or `None` for a page-level request.
pub fn class_of(size: usize, align: usize) -> Option<usize> {
    if align > PAGE {
        return None;
    }
    // Object offsets in a page are HEADER + k*N: aligned to the largest
    // power of two dividing both (above that, a whole page).
    let size = size.max(align);
    let class = CLASSES.iter().position(|&c| c >= size)?;
    if align > HEADER.min(1 << CLASSES[class].trailing_zeros()) {
        return None;
    }
    Some(class)
}

/// The buddy order that holds `size` bytes in whole pages.
pub fn pages_order(size: usize) -> usize {
    let pages = size.div_ceil(PAGE).max(1);
    pages.next_power_of_two().trailing_zeros() as usize
}

impl<S: PageSource> SlabAllocator<S> {
    /// An allocator with no slabs yet, taking pages from `source` on
    /// demand.
    pub const fn new(source: S) -> Self {
        const EMPTY: Class = Class {
            partial: ptr::null_mut(),
            stats: ClassStats {
                object_size: 0,
                slabs: 0,
                objects_in_use: 0,
                cached: 0,
                allocs: 0,
                frees: 0,
            },
        };
        const CPU: [Magazine; CLASSES.len()] = [const { Magazine::new_const() }; CLASSES.len()];
        SlabAllocator {
            source,
            classes: [EMPTY; CLASSES.len()],
            caches: [CPU; MAX_CPUS],
            large_pages: 0,
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two) on CPU
    /// `cpu`.
    #[inline(always)]
    pub fn alloc(&mut self, cpu: usize, size: usize, align: usize) -> Option<NonNull<u8>> {
        match class_of(size, align) {
            Some(c) => {
                let cpu = cpu % MAX_CPUS;
                if self.caches[cpu][c].is_empty() {
                    self.refill(cpu, c);
                }
                let obj = self.caches[cpu][c].pop()?;
                let st = &mut self.classes[c].stats;
                st.cached -= 1;
                st.objects_in_use += 1;
                st.allocs += 1;
                NonNull::new(obj)
            }
            None if align <= PAGE => {
                let order = pages_order(size);
                let p = self.source.alloc_pages(order)?;
                self.large_pages += 1 << order;
                Some(p)
            }
            None => None,
        }
    }

    /// Frees memory from [`Self::alloc`] with the same size and alignment,
    /// on any CPU.
    ///
    /// # Safety
    /// `ptr` must come from `self.alloc(_, size, align)` and not be freed
    /// yet.
    #[inline(always)]
    pub unsafe fn free(&mut self, cpu: usize, ptr: NonNull<u8>, size: usize, align: usize) {
        match class_of(size, align) {
            Some(c) => {
                let cpu = cpu % MAX_CPUS;
                if self.caches[cpu][c].is_full() {
                    // SAFETY: the magazine holds in-use objects of class `c`.
                    unsafe { self.flush(cpu, c, MAGAZINE / 2) };
                }
                self.caches[cpu][c].push(ptr.as_ptr());
                let st = &mut self.classes[c].stats;
                st.cached += 1;
                st.objects_in_use -= 1;
                st.frees += 1;
            }
            None => {
                let order = pages_order(size);
                self.large_pages -= 1 << order;
                // SAFETY: forwarded caller contract: `ptr` came from
                // `alloc_pages(order)` in `alloc`.
                unsafe { self.source.free_pages(ptr, order) }
            }
        }
    }

    /// Moves up to half a magazine of objects from the slabs into `cpu`'s
    /// cache of class `c`. Out of line, so the magazine fast path stays
    /// small.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, cpu: usize, c: usize) {
        for _ in 0..MAGAZINE / 2 {
            let Some(obj) = self.alloc_object(c) else {
                return;
            };
            self.caches[cpu][c].push(obj.as_ptr());
            self.classes[c].stats.cached += 1;
        }
    }

    /// Returns `n` objects of `cpu`'s cache of class `c` to their slabs.
    /// Out of line, like `refill`.
    ///
    /// # Safety
    /// The cache must hold only in-use objects of class `c` (it does: only
    /// `free` and `refill` fill it).
    #[cold]
    #[inline(never)]
    unsafe fn flush(&mut self, cpu: usize, c: usize, n: usize) {
        for _ in 0..n {
            let Some(obj) = self.caches[cpu][c].pop() else {
                return;
            };
            self.classes[c].stats.cached -= 1;
            if let Some(obj) = NonNull::new(obj) {
                // SAFETY: by the function's contract.
                unsafe { self.free_object(c, obj) };
            }
        }
    }

    /// Returns every cached object to its slab (so empty slabs go back
    /// to the page source).
    pub fn flush_caches(&mut self) {
        for cpu in 0..MAX_CPUS {
            for c in 0..CLASSES.len() {
                // SAFETY: caches hold only in-use objects of their class.
                unsafe { self.flush(cpu, c, MAGAZINE) };
            }
        }
    }

    fn alloc_object(&mut self, c: usize) -> Option<NonNull<u8>> {
        if self.classes[c].partial.is_null() && self.new_slab(c).is_none() {
            // Out of pages: give back what CPU caches hold, then retry.
            self.flush_caches();
            if self.classes[c].partial.is_null() {
                self.new_slab(c)?;
            }
        }
        let slab = self.classes[c].partial;
        // SAFETY: `slab` is a live slab header on this class's partial list,
        // so it has at least one free object and exclusive access is ours.
        unsafe {
            let obj = (*slab).free;
            (*slab).free = (*obj).next;
            (*slab).in_use += 1;
            if (*slab).free.is_null() {
                self.unlink(c, slab);
            }
            NonNull::new(obj.cast())
        }
    }

    /// # Safety
    /// `ptr` must be an in-use object of class `c` from this allocator.
    unsafe fn free_object(&mut self, c: usize, ptr: NonNull<u8>) {
        let slab = (ptr.as_ptr() as usize & !(PAGE - 1)) as *mut SlabHeader;
        // SAFETY: objects live in page-aligned slabs whose first bytes are
        // the header; the caller guarantees `ptr` is an in-use object.
        unsafe {
            debug_assert_eq!((*slab).class, c);
            let was_full = (*slab).free.is_null();
            let obj = ptr.as_ptr().cast::<FreeObject>();
            (*obj).next = (*slab).free;
            (*slab).free = obj;
            (*slab).in_use -= 1;
            if was_full {
                self.push(c, slab);
            }
            if (*slab).in_use == 0 && !((*slab).prev.is_null() && (*slab).next.is_null()) {
                // Empty and not the only partial slab: give the page back.
                self.unlink(c, slab);
                self.classes[c].stats.slabs -= 1;
                self.source
                    .free_pages(NonNull::new_unchecked(slab.cast()), 0);
            }
        }
    }

    fn new_slab(&mut self, c: usize) -> Option<()> {
        let page = self.source.alloc_pages(0)?.as_ptr();
        let size = CLASSES[c];
        let count = (PAGE - HEADER) / size;
        // SAFETY: `page` is a fresh, exclusively owned, page-aligned 4 KiB
        // block: the header fits in its first HEADER bytes and `count`
        // objects of `size` bytes fit after it.
        unsafe {
            let mut free: *mut FreeObject = ptr::null_mut();
            for i in (0..count).rev() {
                let obj = page.add(HEADER + i * size).cast::<FreeObject>();
                (*obj).next = free;
                free = obj;
            }
            let slab = page.cast::<SlabHeader>();
            slab.write(SlabHeader {
                class: c,
                in_use: 0,
                free,
                prev: ptr::null_mut(),
                next: ptr::null_mut(),
            });
            self.push(c, slab);
        }
        self.classes[c].stats.slabs += 1;
        Some(())
    }

    /// # Safety
    /// `slab` is a live slab header of class `c` on no list.
    unsafe fn push(&mut self, c: usize, slab: *mut SlabHeader) {
        let head = self.classes[c].partial;
        // SAFETY: `slab` and `head` (if non-null) are live headers we own.
        unsafe {
            (*slab).prev = ptr::null_mut();
            (*slab).next = head;
            if !head.is_null() {
                (*head).prev = slab;
            }
        }
        self.classes[c].partial = slab;
    }

    /// # Safety
    /// `slab` is a live slab header on class `c`'s partial list.
    unsafe fn unlink(&mut self, c: usize, slab: *mut SlabHeader) {
        // SAFETY: list members are live headers we own.
        unsafe {
            let (prev, next) = ((*slab).prev, (*slab).next);
            if prev.is_null() {
                self.classes[c].partial = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*slab).prev = ptr::null_mut();
            (*slab).next = ptr::null_mut();
        }
    }

    /// Per-class statistics.
    #[cfg(test)]
    pub fn class_stats(&self) -> impl Iterator<Item = ClassStats> + '_ {
        let sizes = CLASSES.into_iter();
        (self.classes.iter().zip(sizes)).map(|(c, object_size)| ClassStats {
            object_size,
            ..c.stats
        })
    }

    /// Pages held by requests larger than the biggest class.
    #[cfg(test)]
    pub fn large_pages(&self) -> usize {
        self.large_pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::alloc::Layout;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct HostPages {
        live: usize,
    }

    impl PageSource for HostPages {
        fn alloc_pages(&mut self, order: usize) -> Option<NonNull<u8>> {
            self.live += 1 << order;
            let layout = Layout::from_size_align(PAGE << order, PAGE).ok()?;
            // SAFETY: non-zero size.
            NonNull::new(unsafe { std::alloc::alloc(layout) })
        }
        unsafe fn free_pages(&mut self, page: NonNull<u8>, order: usize) {
            self.live -= 1 << order;
            let layout = Layout::from_size_align(PAGE << order, PAGE).unwrap();
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(page.as_ptr(), layout) }
        }
    }

    #[test]
    fn classes_and_orders() {
        assert_eq!(class_of(1, 1), Some(0));
        assert_eq!(class_of(33, 8), Some(1));
        assert_eq!(class_of(2016, 8), Some(6));
        assert_eq!(class_of(2017, 8), None);
        assert_eq!(class_of(2000, 64), None, "2016-byte objects are 32-aligned");
        assert_eq!(class_of(2000, 32), Some(6));
        assert_eq!(class_of(64, 128), None, "128-byte alignment needs a page");
        assert_eq!(pages_order(1), 0);
        assert_eq!(pages_order(4097), 1);
        assert_eq!(pages_order(3 * 4096), 2);
    }

    #[test]
    fn empty_slabs_return_to_the_source() {
        let mut s = SlabAllocator::new(HostPages::default());
        let ptrs: Vec<_> = (0..500).map(|_| s.alloc(0, 64, 8).unwrap()).collect();
        assert!(s.source.live >= 500 * 64 / PAGE);
        for p in ptrs {
            // SAFETY: allocated above with the same layout.
            unsafe { s.free(1, p, 64, 8) };
        }
        let st = s.class_stats().nth(1).unwrap();
        assert_eq!(
            (st.objects_in_use, st.cached, st.allocs, st.frees),
            (0, MAGAZINE, 500, 500)
        );
        s.flush_caches();
        // At most one empty slab is kept per class.
        assert!(s.source.live <= 1);
        assert_eq!(s.class_stats().nth(1).unwrap().cached, 0);
    }

    #[test]
    fn cpu_caches_serve_the_common_pair() {
        let mut s = SlabAllocator::new(HostPages::default());
        let a = s.alloc(0, 64, 8).unwrap();
        // SAFETY: allocated above.
        unsafe { s.free(0, a, 64, 8) };
        let b = s.alloc(0, 64, 8).unwrap();
        assert_eq!(a, b, "the object just freed comes back first");
        let c = s.alloc(1, 64, 8).unwrap();
        assert_ne!(b, c, "another CPU's cache is separate");
    }

    proptest! {
        /// Random sequences never hand out overlapping memory, respect
        /// alignment, keep data intact, and give every page back.
        #[test]
        fn no_overlap_and_no_leak(ops in prop::collection::vec((0usize..6000, 0u32..4, any::<bool>(), 0usize..3), 1..400)) {
            let mut s = SlabAllocator::new(HostPages::default());
            let mut live: BTreeMap<usize, (usize, usize, u8)> = BTreeMap::new();
            for (i, (size, align_log, free, cpu)) in ops.into_iter().enumerate() {
                if free && !live.is_empty() {
                    let key = *live.keys().nth(i % live.len()).unwrap();
                    let (size, align, tag) = live.remove(&key).unwrap();
                    // SAFETY: the block is live and `size` bytes long.
                    let ok = unsafe { std::slice::from_raw_parts(key as *const u8, size) }.iter().all(|&b| b == tag);
                    prop_assert!(ok, "contents clobbered");
                    // SAFETY: allocated with this size and alignment.
                    unsafe { s.free(cpu, NonNull::new(key as *mut u8).unwrap(), size, align) };
                    continue;
                }
                let size = size.max(1);
                let align = 8usize << align_log;
                let p = s.alloc(cpu, size, align).unwrap().as_ptr() as usize;
                prop_assert_eq!(p % align, 0);
                if let Some((&q, &(qs, _, _))) = live.range(..p + size).next_back() {
                    prop_assert!(q + qs <= p, "overlap");
                }
                let tag = i as u8;
                // SAFETY: fresh allocation of `size` bytes.
                unsafe { std::ptr::write_bytes(p as *mut u8, tag, size) };
                live.insert(p, (size, align, tag));
            }
            for (p, (size, align, _)) in std::mem::take(&mut live) {
                // SAFETY: as above.
                unsafe { s.free(0, NonNull::new(p as *mut u8).unwrap(), size, align) };
            }
            s.flush_caches();
            prop_assert!(s.source.live <= CLASSES.len(), "{} pages leaked", s.source.live);
            prop_assert_eq!(s.large_pages(), 0);
        }
    }
}

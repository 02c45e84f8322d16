//! The physical frame allocator: a per-frame allocation bitmap plus a buddy
//! allocator for naturally aligned power-of-two blocks of 4 KiB frames
//! (orders 0..=[`MAX_ORDER`], 4 KiB to 4 MiB). Written by hand: it is the
//! kernel's core competence.
//!
//! Memory is split into zones (DMA below 16 MiB, normal above), each tagged
//! with a NUMA node; a block never spans zones. Each zone has one free list
//! per order. Lists are intrusive doubly linked lists threaded through a
//! per-frame metadata array (`next`/`prev` frame indices), so unlinking a
//! buddy when coalescing is O(1).
//!
//! Invariants:
//! - `bitmap` bit `i` is set iff frame `i` is allocated (or was never free:
//!   holes and reservations are permanently allocated).
//! - Every free block is on exactly one list, that of its zone and order;
//!   its first frame's `info` is `FREE_HEAD | order`, its other frames' `0`.
//! - An allocated block's first frame's `info` is `ALLOC_HEAD | order`; this
//!   is how `free` detects a double free, a free of a never-allocated frame,
//!   or a free with the wrong order — all reported as errors, with the
//!   state left untouched.
//! - Two free buddies of the same order in the same zone never coexist (they
//!   are merged on free).
//! - Single frames are cached per CPU on hot lists ([`FrameAllocator::alloc_hot`],
//!   [`FrameAllocator::free_hot`]), refilled from and drained to the buddy
//!   lists in batches, so the common alloc/free pair does not split and
//!   merge a large block each time. A hot frame's bitmap bit stays set (the
//!   buddy lists cannot see it) and its `info` is `HOT`; it counts as free in
//!   [`FrameAllocator::free_frames`] but not in the zone statistics.

use super::kref::ensure;
use arrayvec::ArrayVec;

/// Frame size in bytes.
pub const FRAME_SIZE: u64 = 4096;
/// Largest block order: 2^10 frames = 4 MiB.
pub const MAX_ORDER: usize = 10;
/// Orders are 0..=MAX_ORDER.
pub const ORDERS: usize = MAX_ORDER + 1;
/// Frames below this physical address form the DMA zone.
pub const DMA_LIMIT: u64 = 16 << 20;
/// Most zones (node × kind) supported.
pub const MAX_ZONES: usize = 8;

/// CPUs with a hot list of their own.
pub const MAX_CPUS: usize = crate::bootinfo::MAX_CPUS;
/// Frames a hot list holds at most, and moves to or from the buddy lists
/// at once.
const HOT_MAX: usize = 64;
const HOT_BATCH: usize = 32;

const NONE: u32 = u32::MAX;
const FREE_HEAD: u8 = 0x80;
const ALLOC_HEAD: u8 = 0x40;
const HOT: u8 = 0x20;

/// A physical frame number (physical address / 4 KiB).
pub type Pfn = u64;

/// Per-frame metadata: free-list links (valid only for free block heads),
/// head flags, and for an allocated single frame the number of extra
/// references to it (copy-on-write sharing).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct FrameMeta {
    next: u32,
    prev: u32,
    info: u8,
    extra_refs: u16,
}

impl FrameMeta {
    /// Metadata bytes needed per frame, for sizing the boot-time carve-out.
    pub const SIZE: usize = core::mem::size_of::<FrameMeta>();
    /// A frame on no list, heading no block.
    const UNLINKED: FrameMeta = FrameMeta {
        next: NONE,
        prev: NONE,
        info: 0,
        extra_refs: 0,
    };
}

/// The kind of a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneKind {
    /// Below 16 MiB: for devices with 24-bit DMA.
    Dma,
    /// Everything else.
    Normal,
}

/// Where an allocation may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneRequest {
    /// Only the DMA zone.
    Dma,
    /// Normal zones first, DMA as a last resort.
    Any,
}

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The frame is outside the managed range.
    OutOfRange,
    /// The frame is free already (double free).
    NotAllocated,
    /// The frame is allocated but is not the start of a block of this order.
    WrongBlock,
}

/// Why construction failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The metadata or bitmap slice is smaller than the span needs.
    MetadataTooSmall,
    /// More zones than [`MAX_ZONES`].
    TooManyZones,
    /// The managed span has more frames than frame indices can name.
    SpanTooLarge,
}

/// Statistics of one zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneStats {
    /// DMA or normal.
    pub kind: ZoneKind,
    /// The NUMA node the zone's memory is on.
    pub node: u8,
    /// Frames given to the zone as free memory (holes and reservations
    /// inside its span are not counted).
    pub total_frames: u64,
    /// Frames on the zone's buddy lists; frames cached on per-CPU hot
    /// lists count as allocated here.
    pub free_frames: u64,
    /// Free blocks per order.
    pub free_blocks: [u32; ORDERS],
}

#[derive(Clone, Copy, Debug)]
struct Zone {
    /// Frame-index range `[start, end)` relative to the allocator's base.
    start: u32,
    end: u32,
    heads: [u32; ORDERS],
    stats: ZoneStats,
}

/// The allocator. Metadata lives in caller-provided slices (carved out of
/// RAM at boot; a `Vec` in host tests).
pub struct FrameAllocator<'m> {
    base: Pfn,
    meta: &'m mut [FrameMeta],
    bitmap: &'m mut [u64],
    zones: ArrayVec<Zone, MAX_ZONES>,
    total_frames: u64,
    free_frames: u64,
    peak_used: u64,
    hot: [ArrayVec<u32, HOT_MAX>; MAX_CPUS],
}

impl<'m> FrameAllocator<'m> {
    /// Metadata entries and bitmap words needed to manage `frames` frames.
    pub const fn metadata_len(frames: u64) -> (usize, usize) {
        (frames as usize, frames.div_ceil(64) as usize)
    }

    /// An allocator for frames `[base, base + meta.len())`, all initially
    /// allocated (unavailable); hand free memory over with [`Self::add_free`].
    pub fn new(
        base: Pfn,
        meta: &'m mut [FrameMeta],
        bitmap: &'m mut [u64],
    ) -> Result<Self, InitError> {
        ensure(meta.len() < NONE as usize, InitError::SpanTooLarge)?;
        let room = bitmap.len() >= meta.len().div_ceil(64);
        ensure(room, InitError::MetadataTooSmall)?;
        meta.fill(FrameMeta::UNLINKED);
        bitmap.fill(u64::MAX);
        Ok(FrameAllocator {
            base,
            meta,
            bitmap,
            zones: ArrayVec::new(),
            total_frames: 0,
            free_frames: 0,
            peak_used: 0,
            hot: core::array::from_fn(|_| ArrayVec::new()),
        })
    }

    /// Adds the physical range `[start, end)` (page-aligned inwards) as free
    /// memory on NUMA `node`. Ranges must not overlap each other.
    pub fn add_free(&mut self, start: u64, end: u64, node: u8) -> Result<(), InitError> {
        let span_end = self.base + self.meta.len() as u64;
        let mut lo = start.div_ceil(FRAME_SIZE).max(self.base);
        let hi = (end / FRAME_SIZE).min(span_end);
        let dma_end = DMA_LIMIT / FRAME_SIZE;
        while lo < hi {
            let (kind, piece_end) = if lo < dma_end {
                (ZoneKind::Dma, hi.min(dma_end))
            } else {
                (ZoneKind::Normal, hi)
            };
            let z = self.zone_for(kind, node, lo, piece_end)?;
            let (a, b) = ((lo - self.base) as u32, (piece_end - self.base) as u32);
            let zone = &mut self.zones[z];
            zone.start = zone.start.min(a);
            zone.end = zone.end.max(b);
            zone.stats.total_frames += u64::from(b - a);
            self.total_frames += u64::from(b - a);
            // Free in the largest naturally aligned blocks that fit.
            let mut i = a;
            while i < b {
                let fits = |o: usize| {
                    (u64::from(i) + self.base).is_multiple_of(1 << o) && i + (1 << o) <= b
                };
                let order = (1..=MAX_ORDER).rev().find(|&o| fits(o)).unwrap_or(0);
                self.set_bits(i, order, false);
                self.free_frames += 1 << order;
                self.zones[z].stats.free_frames += 1 << order;
                self.push(z, i, order);
                i += 1 << order;
            }
            lo = piece_end;
        }
        Ok(())
    }

    fn zone_for(&mut self, kind: ZoneKind, node: u8, lo: Pfn, hi: Pfn) -> Result<usize, InitError> {
        let same = |z: &Zone| z.stats.kind == kind && z.stats.node == node;
        if let Some(i) = self.zones.iter().position(same) {
            return Ok(i);
        }
        let (a, b) = ((lo - self.base) as u32, (hi - self.base) as u32);
        self.zones
            .try_push(Zone {
                start: a,
                end: b,
                heads: [NONE; ORDERS],
                stats: ZoneStats {
                    kind,
                    node,
                    total_frames: 0,
                    free_frames: 0,
                    free_blocks: [0; ORDERS],
                },
            })
            .map_err(|_| InitError::TooManyZones)?;
        Ok(self.zones.len() - 1)
    }

    /// Allocates a block of `2^order` frames, preferring NUMA `node`;
    /// returns its first frame number.
    pub fn alloc(&mut self, order: usize, zone: ZoneRequest, node: Option<u8>) -> Option<Pfn> {
        if order > MAX_ORDER {
            return None;
        }
        // The first zone with a large enough block in preference order:
        // preferred node first, normal before DMA unless DMA was asked for.
        let dma = |z: &Zone| z.stats.kind == ZoneKind::Dma;
        let any = zone == ZoneRequest::Any;
        let zones = self.zones.iter().enumerate();
        let (z, _) = zones
            .filter(|(_, z)| (any || dma(z)) && (order..ORDERS).any(|o| z.heads[o] != NONE))
            .min_by_key(|(_, z)| {
                u8::from(node.is_some_and(|n| n != z.stats.node)) * 2 + u8::from(dma(z) && any)
            })?;
        let mut o = (order..ORDERS).find(|&o| self.zones[z].heads[o] != NONE)?;
        let block = self.zones[z].heads[o];
        self.unlink(z, block, o);
        // Split down, returning upper halves to the lists.
        while o > order {
            o -= 1;
            self.push(z, block + (1 << o), o);
        }
        self.set_bits(block, order, true);
        self.meta[block as usize].info = ALLOC_HEAD | order as u8;
        self.zones[z].stats.free_frames -= 1 << order;
        self.free_frames -= 1 << order;
        self.peak_used = self.peak_used.max(self.total_frames - self.free_frames);
        Some(self.base + u64::from(block))
    }

    /// Frees a block returned by [`Self::alloc`] with the same `order`.
    pub fn free(&mut self, pfn: Pfn, order: usize) -> Result<(), FreeError> {
        let idx = self.allocated(pfn, order)?;
        let z = self
            .zones
            .iter()
            .position(|z| z.start <= idx && idx < z.end)
            .ok_or(FreeError::OutOfRange)?;
        self.meta[idx as usize].info = 0;
        self.set_bits(idx, order, false);
        self.zones[z].stats.free_frames += 1 << order;
        self.free_frames += 1 << order;
        // Coalesce with free buddies of equal order in the same zone.
        let (mut block, mut o) = (idx, order);
        while o < MAX_ORDER {
            let buddy_pfn = (self.base + u64::from(block)) ^ (1 << o);
            let Some(buddy) = buddy_pfn.checked_sub(self.base).map(|b| b as u32) else {
                break;
            };
            let zone = &self.zones[z];
            if buddy < zone.start
                || buddy >= zone.end
                || self.meta[buddy as usize].info != FREE_HEAD | o as u8
            {
                break;
            }
            self.unlink(z, buddy, o);
            block = block.min(buddy);
            o += 1;
        }
        self.push(z, block, o);
        Ok(())
    }

    /// The index of `pfn`, which must be the first frame of an allocated
    /// block of `order`: not free, not on a hot list (`NotAllocated`), and
    /// not inside or of another order (`WrongBlock`).
    fn allocated(&self, pfn: Pfn, order: usize) -> Result<u32, FreeError> {
        let idx = pfn
            .checked_sub(self.base)
            .filter(|i| *i < self.meta.len() as u64)
            .ok_or(FreeError::OutOfRange)? as u32;
        let info = self.meta[idx as usize].info;
        ensure(self.bit(idx) && info != HOT, FreeError::NotAllocated)?;
        let head = order <= MAX_ORDER && info == ALLOC_HEAD | order as u8;
        ensure(head, FreeError::WrongBlock)?;
        Ok(idx)
    }

    /// The metadata of the allocated single frame `pfn`.
    fn single(&mut self, pfn: Pfn) -> Result<&mut FrameMeta, FreeError> {
        let idx = self.allocated(pfn, 0)?;
        Ok(&mut self.meta[idx as usize])
    }

    /// Adds a reference to the allocated single frame `pfn` (it is shared
    /// copy-on-write); returns the new reference count.
    pub fn share(&mut self, pfn: Pfn) -> Result<u32, FreeError> {
        let m = self.single(pfn)?;
        m.extra_refs = m.extra_refs.checked_add(1).ok_or(FreeError::WrongBlock)?;
        Ok(u32::from(m.extra_refs) + 1)
    }

    /// Drops a reference to the single frame `pfn`, freeing it to `cpu`'s
    /// hot list with the last one; returns whether it was freed.
    pub fn release(&mut self, cpu: usize, pfn: Pfn) -> Result<bool, FreeError> {
        let m = self.single(pfn)?;
        if m.extra_refs > 0 {
            m.extra_refs -= 1;
            return Ok(false);
        }
        self.free_hot(cpu, pfn).map(|()| true)
    }

    /// Allocates a single frame from `cpu`'s hot list, refilling it from
    /// the buddy lists (normal zones first) when empty.
    pub fn alloc_hot(&mut self, cpu: usize) -> Option<Pfn> {
        let cpu = cpu % MAX_CPUS;
        if self.hot[cpu].is_empty() {
            self.refill(cpu);
        }
        let idx = self.hot[cpu].pop()?;
        self.meta[idx as usize].info = ALLOC_HEAD;
        self.meta[idx as usize].extra_refs = 0;
        self.free_frames -= 1;
        self.peak_used = self.peak_used.max(self.total_frames - self.free_frames);
        Some(self.base + u64::from(idx))
    }

    /// Frees a single frame onto `cpu`'s hot list, first draining a batch
    /// to the buddy lists if the list is full. Errors as [`Self::free`].
    pub fn free_hot(&mut self, cpu: usize, pfn: Pfn) -> Result<(), FreeError> {
        let cpu = cpu % MAX_CPUS;
        let idx = self.allocated(pfn, 0)?;
        if self.hot[cpu].is_full() {
            self.drain(cpu, HOT_BATCH);
        }
        self.meta[idx as usize].info = HOT;
        self.hot[cpu].push(idx);
        self.free_frames += 1;
        Ok(())
    }

    /// Moves a batch of single frames from the buddy lists to `cpu`'s hot
    /// list. Out of line, so the hot-list fast path stays small.
    #[cold]
    #[inline(never)]
    fn refill(&mut self, cpu: usize) {
        let peak = self.peak_used;
        for _ in 0..HOT_BATCH {
            let Some(pfn) = self.alloc(0, ZoneRequest::Any, None) else {
                break;
            };
            let idx = (pfn - self.base) as u32;
            self.meta[idx as usize].info = HOT;
            if self.hot[cpu].try_push(idx).is_err() {
                break;
            }
            self.free_frames += 1;
        }
        self.peak_used = peak;
    }

    /// Returns up to `n` frames of `cpu`'s hot list to the buddy lists.
    #[cold]
    #[inline(never)]
    fn drain(&mut self, cpu: usize, n: usize) {
        for _ in 0..n {
            let Some(idx) = self.hot[cpu].pop() else {
                return;
            };
            self.meta[idx as usize].info = ALLOC_HEAD;
            self.free_frames -= 1;
            // Cannot fail: the frame is an allocated single frame.
            let _ = self.free(self.base + u64::from(idx), 0);
        }
    }

    /// Returns every hot-list frame to the buddy lists.
    #[cfg(test)]
    pub fn drain_hot(&mut self) {
        for cpu in 0..MAX_CPUS {
            self.drain(cpu, HOT_MAX);
        }
    }

    /// Frames on hot lists.
    pub fn hot_frames(&self) -> u64 {
        self.hot.iter().map(|h| h.len() as u64).sum()
    }

    /// References to the allocated single frame `pfn` (0 if it is not one).
    pub fn refs(&mut self, pfn: Pfn) -> u32 {
        self.single(pfn).map_or(0, |m| u32::from(m.extra_refs) + 1)
    }

    /// Whether the frame is allocated (or never was free).
    #[cfg(test)]
    pub fn is_allocated(&self, pfn: Pfn) -> bool {
        match pfn.checked_sub(self.base) {
            Some(i) if i < self.meta.len() as u64 => {
                self.bit(i as u32) && self.meta[i as usize].info != HOT
            }
            _ => true,
        }
    }

    /// Frames managed (ever handed over as free).
    pub fn total_frames(&self) -> u64 {
        self.total_frames
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free_frames
    }

    /// Most frames ever allocated at once.
    pub fn peak_used_frames(&self) -> u64 {
        self.peak_used
    }

    /// Per-zone statistics.
    pub fn zone_stats(&self) -> impl Iterator<Item = ZoneStats> + '_ {
        self.zones.iter().map(|z| z.stats)
    }

    fn push(&mut self, z: usize, block: u32, order: usize) {
        let head = self.zones[z].heads[order];
        self.meta[block as usize] = FrameMeta {
            next: head,
            prev: NONE,
            info: FREE_HEAD | order as u8,
            extra_refs: 0,
        };
        if head != NONE {
            self.meta[head as usize].prev = block;
        }
        self.zones[z].heads[order] = block;
        self.zones[z].stats.free_blocks[order] += 1;
    }

    fn unlink(&mut self, z: usize, block: u32, order: usize) {
        let FrameMeta { next, prev, .. } = self.meta[block as usize];
        if prev == NONE {
            self.zones[z].heads[order] = next;
        } else {
            self.meta[prev as usize].next = next;
        }
        if next != NONE {
            self.meta[next as usize].prev = prev;
        }
        self.meta[block as usize] = FrameMeta::UNLINKED;
        self.zones[z].stats.free_blocks[order] -= 1;
    }

    fn bit(&self, i: u32) -> bool {
        self.bitmap[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Sets (`on`) or clears the bits of the block of `order` at `block`.
    fn set_bits(&mut self, block: u32, order: usize, on: bool) {
        for i in block..block + (1 << order) {
            let (word, bit) = (&mut self.bitmap[(i / 64) as usize], 1 << (i % 64));
            *word = if on { *word | bit } else { *word & !bit };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    struct Fixture {
        meta: Vec<FrameMeta>,
        bitmap: Vec<u64>,
    }

    impl Fixture {
        fn new(frames: u64) -> Fixture {
            let (m, b) = FrameAllocator::metadata_len(frames);
            Fixture {
                meta: vec![FrameMeta::default(); m],
                bitmap: vec![0; b],
            }
        }

        /// 64 MiB at physical 0 with a hole and a reserved kernel: DMA and
        /// normal zones, unaligned edges.
        fn allocator(&mut self) -> FrameAllocator<'_> {
            let mut a = FrameAllocator::new(0, &mut self.meta, &mut self.bitmap).unwrap();
            a.add_free(0x1000, 0x9f000, 0).unwrap();
            a.add_free(0x10_0000, 0x20_0000, 0).unwrap();
            a.add_free(0x40_0000, 0x400_0000 - 0x3000, 0).unwrap();
            a
        }
    }

    fn initial_free() -> u64 {
        (0x9f000 - 0x1000) / FRAME_SIZE + 0x100 + (0x400_0000 - 0x3000 - 0x40_0000) / FRAME_SIZE
    }

    #[test]
    fn counts_and_zones() {
        let mut f = Fixture::new(0x4000);
        let a = f.allocator();
        assert_eq!(a.total_frames(), initial_free());
        assert_eq!(a.free_frames(), initial_free());
        let zones: Vec<_> = a.zone_stats().collect();
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[0].kind, ZoneKind::Dma);
        assert_eq!(zones[1].kind, ZoneKind::Normal);
        assert_eq!(
            zones[0].total_frames + zones[1].total_frames,
            initial_free()
        );
        assert!(a.is_allocated(0));
        assert!(a.is_allocated(0xa0));
        assert!(!a.is_allocated(1));
    }

    #[test]
    fn shared_frames_are_freed_with_the_last_reference() {
        let mut f = Fixture::new(0x4000);
        let mut a = f.allocator();
        let p = a.alloc(0, ZoneRequest::Any, None).unwrap();
        assert_eq!(a.refs(p), 1);
        assert_eq!(a.share(p), Ok(2));
        assert_eq!(a.share(p), Ok(3));
        assert_eq!(a.release(0, p), Ok(false));
        assert_eq!(a.release(0, p), Ok(false));
        assert!(a.is_allocated(p));
        assert_eq!(a.release(0, p), Ok(true));
        assert!(!a.is_allocated(p));
        assert_eq!(a.release(0, p), Err(FreeError::NotAllocated));
        assert_eq!(a.share(p), Err(FreeError::NotAllocated));
        assert_eq!(a.refs(p), 0);
        let big = a.alloc(2, ZoneRequest::Any, None).unwrap();
        assert_eq!(
            a.share(big),
            Err(FreeError::WrongBlock),
            "only single frames"
        );
        assert_eq!(a.share(big + 1), Err(FreeError::WrongBlock));
        assert_eq!(a.share(0), Err(FreeError::WrongBlock), "reserved");
        assert_eq!(a.free(big, 2), Ok(()));
        // A reused frame starts with one reference again.
        let q = a.alloc(0, ZoneRequest::Any, None).unwrap();
        assert_eq!(a.refs(q), 1);
        assert_eq!(a.release(0, q), Ok(true));
        assert_eq!(a.free_frames(), initial_free());
    }

    #[test]
    fn freed_frame_is_reusable_and_double_free_is_refused() {
        let mut f = Fixture::new(0x4000);
        let mut a = f.allocator();
        let p = a.alloc(0, ZoneRequest::Any, None).unwrap();
        assert!(a.is_allocated(p));
        assert_eq!(a.free(p, 0), Ok(()));
        assert_eq!(a.free(p, 0), Err(FreeError::NotAllocated));
        // The same frame comes back first (LIFO at order 0 after merging
        // splits it off the same block again).
        let q = a.alloc(0, ZoneRequest::Any, None).unwrap();
        assert_eq!(q, p);
        assert_eq!(
            a.free(0, 0),
            Err(FreeError::WrongBlock),
            "reserved frame was never allocated"
        );
        assert_eq!(a.free(1 << 40, 0), Err(FreeError::OutOfRange));
        let big = a.alloc(4, ZoneRequest::Any, None).unwrap();
        assert_eq!(big % 16, 0);
        assert_eq!(a.free(big + 1, 0), Err(FreeError::WrongBlock));
        assert_eq!(a.free(big, 3), Err(FreeError::WrongBlock));
        assert_eq!(a.free(big, 4), Ok(()));
        assert_eq!(a.free(q, 0), Ok(()));
        assert_eq!(a.free_frames(), initial_free());
    }

    #[test]
    fn dma_requests_stay_below_16_mib_and_normal_prefers_high() {
        let mut f = Fixture::new(0x4000);
        let mut a = f.allocator();
        let d = a.alloc(2, ZoneRequest::Dma, None).unwrap();
        assert!(d * FRAME_SIZE < DMA_LIMIT);
        let n = a.alloc(0, ZoneRequest::Any, None).unwrap();
        assert!(n * FRAME_SIZE >= DMA_LIMIT);
    }

    #[test]
    fn exhaustion_returns_none_then_recovers() {
        let mut f = Fixture::new(0x4000);
        let mut a = f.allocator();
        let mut got = Vec::new();
        while let Some(p) = a.alloc(0, ZoneRequest::Any, None) {
            got.push(p);
        }
        assert_eq!(got.len() as u64, initial_free());
        assert_eq!(a.free_frames(), 0);
        assert_eq!(a.alloc(0, ZoneRequest::Any, None), None);
        assert_eq!(a.peak_used_frames(), initial_free());
        for p in got {
            a.free(p, 0).unwrap();
        }
        // Fully coalesced: a 4 MiB block is available again.
        assert!(a.alloc(MAX_ORDER, ZoneRequest::Any, None).is_some());
    }

    #[test]
    fn numa_node_preference() {
        let mut f = Fixture::new(0x8000);
        let mut a = FrameAllocator::new(0, &mut f.meta, &mut f.bitmap).unwrap();
        a.add_free(0x100_0000, 0x400_0000, 0).unwrap();
        a.add_free(0x400_0000, 0x800_0000, 1).unwrap();
        let p = a.alloc(0, ZoneRequest::Any, Some(1)).unwrap();
        assert!(p * FRAME_SIZE >= 0x400_0000);
        let p = a.alloc(0, ZoneRequest::Any, Some(0)).unwrap();
        assert!(p * FRAME_SIZE < 0x400_0000);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(usize, bool),
        Free(usize),
        /// A single frame through CPU `n`'s hot list.
        AllocHot(usize),
        FreeHot(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..=MAX_ORDER, any::<bool>()).prop_map(|(o, d)| Op::Alloc(o % 5 + if o == MAX_ORDER { 5 } else { 0 }, d)),
            2 => any::<usize>().prop_map(Op::Free),
            2 => (0usize..3).prop_map(Op::AllocHot),
            2 => (0usize..3, any::<usize>()).prop_map(|(c, i)| Op::FreeHot(c, i)),
        ]
    }

    proptest! {
        /// Random alloc/free sequences never hand out overlapping or
        /// reserved frames, keep counts exact, reject double frees, and
        /// coalesce back to the initial state.
        #[test]
        fn matches_model(ops in prop::collection::vec(op(), 1..300)) {
            let mut f = Fixture::new(0x4000);
            let mut a = f.allocator();
            let initial: Vec<ZoneStats> = a.zone_stats().collect();
            let mut live: BTreeMap<u64, usize> = BTreeMap::new();
            let mut freed: Vec<(u64, usize)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(order, dma) => {
                        let req = if dma { ZoneRequest::Dma } else { ZoneRequest::Any };
                        if let Some(p) = a.alloc(order, req, None) {
                            prop_assert_eq!(p % (1 << order), 0, "natural alignment");
                            if dma { prop_assert!((p + (1 << order)) * FRAME_SIZE <= DMA_LIMIT); }
                            // No overlap with any live block.
                            if let Some((&q, &qo)) = live.range(..p + (1 << order)).next_back() {
                                prop_assert!(q + (1 << qo) <= p, "overlap {:#x}/{} with {:#x}/{}", p, order, q, qo);
                            }
                            // Never a reserved or hole frame.
                            for fr in p..p + (1 << order) {
                                let addr = fr * FRAME_SIZE;
                                prop_assert!((0x1000..0x9f000).contains(&addr) || (0x10_0000..0x20_0000).contains(&addr) || (0x40_0000..0x400_0000 - 0x3000).contains(&addr));
                            }
                            live.insert(p, order);
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (&p, &o) = live.iter().nth(i % live.len()).unwrap();
                        prop_assert_eq!(a.free(p, o), Ok(()));
                        live.remove(&p);
                        freed.push((p, o));
                    }
                    Op::Free(_) => {}
                    Op::AllocHot(cpu) => {
                        if let Some(p) = a.alloc_hot(cpu) {
                            prop_assert!(!live.contains_key(&p), "hot frame handed out twice");
                            if let Some((&q, &qo)) = live.range(..p + 1).next_back() {
                                prop_assert!(q + (1 << qo) <= p, "overlap");
                            }
                            live.insert(p, 0);
                        }
                    }
                    Op::FreeHot(cpu, i) => {
                        let single: Vec<u64> = live.iter().filter(|e| *e.1 == 0).map(|e| *e.0).collect();
                        if !single.is_empty() {
                            let p = single[i % single.len()];
                            prop_assert_eq!(a.free_hot(cpu, p), Ok(()));
                            prop_assert_eq!(a.free_hot(cpu, p), Err(FreeError::NotAllocated), "double free");
                            prop_assert_eq!(a.free(p, 0), Err(FreeError::NotAllocated), "double free");
                            prop_assert!(!a.is_allocated(p));
                            live.remove(&p);
                        }
                    }
                }
                let used: u64 = live.values().map(|o| 1u64 << o).sum();
                prop_assert_eq!(a.free_frames(), initial_free() - used);
            }
            // Double frees are refused (unless the frame was reallocated).
            for (p, o) in freed.iter().rev().take(5) {
                if !live.contains_key(p) && !live.iter().any(|(&q, &qo)| q <= *p && *p < q + (1 << qo)) {
                    prop_assert_eq!(a.free(*p, *o), Err(FreeError::NotAllocated));
                }
            }
            for (p, o) in std::mem::take(&mut live) {
                prop_assert_eq!(a.free(p, o), Ok(()));
            }
            a.drain_hot();
            prop_assert_eq!(a.hot_frames(), 0);
            let end: Vec<ZoneStats> = a.zone_stats().collect();
            prop_assert_eq!(end, initial, "fully coalesced back to the initial state");
        }
    }
}

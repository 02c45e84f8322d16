//! One capability space: a two-level table of slots, written by hand (core
//! competence of the kernel).
//!
//! The L1 table is a vector of L2 pages of [`CapSpace::L2_SLOTS`] slots each
//! (as many as fit in one 4 KiB frame, at most 64); slot `i` lives in page
//! `i / L2_SLOTS` at offset `i % L2_SLOTS`. Pages are allocated on
//! demand, fallibly, and never freed before the space is destroyed (a
//! slot's generation must outlive its emptiness). Lookup is a straight line:
//! index L1, index L2, compare the slot's tag with the token.
//!
//! Free slots are found in O(1), lowest index first, through a three-level
//! bitmap: `top` bit `w` says summary word `w` is non-zero; summary bit `p`
//! says page `p` has a free slot or is not allocated yet; each page's
//! `free` mask says which of its slots are free.
//!
//! Invariants:
//! - A slot's `tag` is the token of the capability it holds (generation,
//!   type, index); an empty slot's tag has type code 0 and the generation
//!   its next capability will get. A slot is occupied iff `cap.is_some()`.
//! - A page's `used` bit is set iff its slot is occupied, its `free` bit iff
//!   the slot is empty, below `max_slots`, and its generation not exhausted
//!   (a slot whose generation would wrap is retired: neither bit).
//! - Summary and `top` bits exactly mirror the level below (an unallocated
//!   page below `max_slots` counts as having free slots).
//! - `live` counts occupied slots; `live <= max_slots <= MAX_SLOTS`.

use super::tree::Links;
use super::{Cap, Dest};
use crate::mm::kref::{ensure, oom};
use alloc::vec::Vec;
use keel_abi::Error;
use keel_abi::cap::CapToken;

/// Bytes an L2 page may take: one frame, so the kernel heap serves it
/// without waste.
const L2_BYTES: usize = 4096;

/// One slot. Tree links are here so a capability needs no other memory.
pub(super) struct Slot<O> {
    pub tag: u64,
    pub cap: Option<Cap<O>>,
    pub links: Links,
}

/// An L2 page and its occupancy masks (`slots` is empty until allocated).
struct Page<O> {
    free: u64,
    used: u64,
    slots: Vec<Slot<O>>,
}

/// A capability space. Obtained from [`super::CapSystem::space`] for fast
/// lookups; every change goes through the [`super::CapSystem`].
pub struct CapSpace<O> {
    l1: Vec<Page<O>>,
    summary: Vec<u64>,
    top: u64,
    max_slots: u32,
    live: u32,
    /// `Some(next page to empty)` once destruction has started; a dying
    /// space accepts no new capabilities.
    pub(super) dying: Option<u32>,
    /// The first thread of the kernel's list of the threads running in it.
    pub(super) members: Option<crate::arena::Id>,
}

/// The low `n` bits set.
fn low_bits(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1 << n) - 1 }
}

impl<O> CapSpace<O> {
    /// Slots per L2 page: as many as fit in one 4 KiB frame, at most 64 (one
    /// `u64` of free bits per page).
    pub const L2_SLOTS: u32 = {
        let n = L2_BYTES / core::mem::size_of::<Slot<O>>();
        if n > 64 {
            64
        } else if n == 0 {
            1
        } else {
            n as u32
        }
    };
    /// Most slots one space can have: 64 summary words of 64 pages.
    pub const MAX_SLOTS: u32 = Self::L2_SLOTS * 64 * 64;

    /// The most pages a space of `max_slots` slots can take, derived from
    /// the real sizes: its L2 pages (one frame each), its L1 vector (which
    /// may grow to twice its final length) and summary words, rounded up,
    /// plus one for its entry in the space table. This is what creating the
    /// space is charged to a pool.
    pub const fn charge_pages(max_slots: u32) -> u64 {
        let l2 = max_slots.div_ceil(Self::L2_SLOTS) as u64;
        let words = l2.div_ceil(64);
        let bookkeeping = 2 * l2 * core::mem::size_of::<Page<O>>() as u64 + words * 8;
        l2 + bookkeeping.div_ceil(L2_BYTES as u64) + 1
    }

    /// Bytes the space has allocated now (for tests of the charge).
    #[cfg(test)]
    pub(super) fn footprint(&self) -> usize {
        let slot = core::mem::size_of::<Slot<O>>();
        let l2: usize = self.l1.iter().map(|p| p.slots.capacity() * slot).sum();
        l2 + self.l1.capacity() * core::mem::size_of::<Page<O>>() + self.summary.capacity() * 8
    }

    /// An empty space for up to `max_slots` capabilities.
    pub(super) fn new(max_slots: u32) -> Result<Self, Error> {
        let valid = (1..=Self::MAX_SLOTS).contains(&max_slots);
        ensure(valid, Error::InvalidArgument)?;
        let pages = max_slots.div_ceil(Self::L2_SLOTS);
        let words = pages.div_ceil(64);
        let mut summary = Vec::new();
        summary.try_reserve_exact(words as usize).map_err(oom)?;
        summary.extend((0..words).map(|w| low_bits(pages - w * 64)));
        Ok(CapSpace {
            l1: Vec::new(),
            summary,
            top: low_bits(words),
            max_slots,
            live: 0,
            dying: None,
            members: None,
        })
    }

    /// The capability `token` names, if it is live: the whole check is one
    /// comparison of the slot's tag with the token.
    #[inline]
    pub fn lookup(&self, token: CapToken) -> Result<&Cap<O>, Error> {
        let slot = self.slot(token.index()).filter(|s| s.tag == token.raw());
        slot.and_then(|s| s.cap.as_ref())
            .ok_or(Error::InvalidCapability)
    }

    /// Live capabilities.
    pub fn live(&self) -> u32 {
        self.live
    }

    /// The quota: most capabilities this space can hold.
    pub fn max_slots(&self) -> u32 {
        self.max_slots
    }

    /// Tokens of all live capabilities, in slot order.
    pub fn tokens(&self) -> impl Iterator<Item = CapToken> + '_ {
        self.l1
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter(|s| s.cap.is_some())
            .map(|s| CapToken::from_raw(s.tag))
    }

    #[inline]
    pub(super) fn slot(&self, index: u32) -> Option<&Slot<O>> {
        let page = self.l1.get((index / Self::L2_SLOTS) as usize)?;
        page.slots.get((index % Self::L2_SLOTS) as usize)
    }

    pub(super) fn slot_mut(&mut self, index: u32) -> Option<&mut Slot<O>> {
        let page = self.l1.get_mut((index / Self::L2_SLOTS) as usize)?;
        page.slots.get_mut((index % Self::L2_SLOTS) as usize)
    }

    /// Reserves a slot for a new capability (lowest free one, or the one
    /// asked for) and returns its index; the caller must [`Self::fill`] it.
    /// Fails without changing anything.
    pub(super) fn take(&mut self, dest: Dest) -> Result<u32, Error> {
        ensure(self.dying.is_none(), Error::InvalidState)?;
        let index = match dest {
            Dest::Any => self.find_free()?,
            Dest::At(index) => {
                ensure(index < self.max_slots, Error::InvalidArgument)?;
                let free = self.ensure_page(index / Self::L2_SLOTS)?;
                if free & (1 << (index % Self::L2_SLOTS)) == 0 {
                    let occupied = self.slot(index).is_some_and(|s| s.cap.is_some());
                    ensure(!occupied, Error::AlreadyExists)?;
                    // Not occupied: the slot's generations are exhausted.
                    return Err(Error::OutOfMemory);
                }
                index
            }
        };
        self.set_free(index, false);
        self.live += 1;
        Ok(index)
    }

    /// The lowest free slot, its page allocated, without taking it: a
    /// [`Dest::At`] of it cannot then fail for room.
    pub(super) fn find_free(&mut self) -> Result<u32, Error> {
        ensure(self.dying.is_none(), Error::InvalidState)?;
        ensure(self.top != 0, Error::OutOfMemory)?;
        let w = self.top.trailing_zeros();
        let word = self.summary.get(w as usize).copied().unwrap_or_default();
        let page = w * 64 + word.trailing_zeros();
        let free = self.ensure_page(page)?;
        ensure(free != 0, Error::OutOfMemory)?;
        Ok(page * Self::L2_SLOTS + free.trailing_zeros())
    }

    /// Puts `cap` with `links` into the slot [`Self::take`] reserved and
    /// returns its token.
    pub(super) fn fill(&mut self, index: u32, cap: Cap<O>, links: Links) -> CapToken {
        let Some(slot) = self.slot_mut(index) else {
            return CapToken::NULL;
        };
        let token = CapToken::new(index, (slot.tag >> 32) as u32, cap.ty);
        *slot = Slot {
            tag: token.raw(),
            cap: Some(cap),
            links,
        };
        token
    }

    /// Empties an occupied slot and returns its capability; advances the
    /// slot's generation (or retires the slot if it would wrap).
    pub(super) fn release(&mut self, index: u32) -> Option<Cap<O>> {
        let slot = self.slot_mut(index)?;
        let cap = slot.cap.take()?;
        let generation = (slot.tag >> 32) as u32;
        let next = generation.checked_add(1);
        slot.tag = (u64::from(next.unwrap_or(generation)) << 32) | u64::from(index);
        slot.links = Links::NONE;
        self.live -= 1;
        if let Some(page) = self.l1.get_mut((index / Self::L2_SLOTS) as usize) {
            page.used &= !(1 << (index % Self::L2_SLOTS));
        }
        if next.is_some() {
            self.set_free(index, true);
        }
        Some(cap)
    }

    /// Index of the lowest occupied slot in page `page`.
    pub(super) fn first_used_in(&self, page: u32) -> Option<u32> {
        let used = self.l1.get(page as usize)?.used;
        (used != 0).then(|| page * Self::L2_SLOTS + used.trailing_zeros())
    }

    /// Pages in the L1 table (allocated or not).
    pub(super) fn pages(&self) -> u32 {
        self.l1.len() as u32
    }

    /// Makes sure page `page` is allocated; returns its free mask.
    fn ensure_page(&mut self, page: u32) -> Result<u64, Error> {
        let pages = self.max_slots.div_ceil(Self::L2_SLOTS);
        ensure(page < pages, Error::OutOfMemory)?;
        let p = page as usize;
        if self.l1.len() <= p {
            self.l1.try_reserve(p + 1 - self.l1.len()).map_err(oom)?;
            self.l1.resize_with(p + 1, || Page {
                free: 0,
                used: 0,
                slots: Vec::new(),
            });
        }
        // The last page holds only the slots left (a small space's one page
        // is as small as the space).
        let n = (self.max_slots - page * Self::L2_SLOTS).min(Self::L2_SLOTS);
        let entry = self.l1.get_mut(p).ok_or(Error::OutOfMemory)?;
        if entry.slots.is_empty() {
            let mut slots = Vec::new();
            slots.try_reserve_exact(n as usize).map_err(oom)?;
            slots.extend((0..n).map(|i| Slot {
                tag: u64::from(page * Self::L2_SLOTS + i),
                cap: None,
                links: Links::NONE,
            }));
            entry.slots = slots;
            entry.free = low_bits(n);
        }
        Ok(entry.free)
    }

    /// Marks slot `index` free or taken in all three bitmap levels.
    fn set_free(&mut self, index: u32, free: bool) {
        let (page, bit) = (index / Self::L2_SLOTS, 1u64 << (index % Self::L2_SLOTS));
        let (w, page_bit) = (page / 64, 1u64 << (page % 64));
        let (Some(entry), Some(word)) = (
            self.l1.get_mut(page as usize),
            self.summary.get_mut(w as usize),
        ) else {
            return;
        };
        if free {
            entry.free |= bit;
            *word |= page_bit;
            self.top |= 1 << w;
        } else {
            entry.free &= !bit;
            entry.used |= bit;
            if entry.free == 0 {
                *word &= !page_bit;
                if *word == 0 {
                    self.top &= !(1 << w);
                }
            }
        }
    }

    /// Checks every invariant in the module documentation (tests only).
    #[cfg(test)]
    pub(super) fn check(&self) {
        let pages = self.max_slots.div_ceil(Self::L2_SLOTS);
        assert!(self.l1.len() as u32 <= pages);
        let mut live = 0;
        for p in 0..pages {
            let entry = self.l1.get(p as usize);
            let allocated = entry.is_some_and(|e| !e.slots.is_empty());
            if let Some(e) = entry.filter(|_| allocated) {
                let n = (self.max_slots - p * Self::L2_SLOTS).min(Self::L2_SLOTS);
                assert_eq!(e.slots.len(), n as usize, "slots of page {p}");
                let beyond = !low_bits(n);
                assert_eq!((e.free | e.used) & beyond, 0, "bits beyond page {p}");
                for i in 0..n {
                    let (s, bit) = (&e.slots[i as usize], 1u64 << i);
                    let index = p * Self::L2_SLOTS + i;
                    assert_eq!(s.tag as u32 & keel_abi::cap::MAX_INDEX, index);
                    let occupied = s.cap.is_some();
                    live += u32::from(occupied);
                    assert_eq!(e.used & bit != 0, occupied);
                    let retired = (s.tag >> 32) as u32 == u32::MAX;
                    let free = !occupied && index < self.max_slots && !retired;
                    assert_eq!(e.free & bit != 0, free, "free bit of slot {index}");
                    if occupied {
                        let ty = s.cap.as_ref().map(|c| c.ty as u64);
                        assert_eq!(Some((s.tag >> 24) & 0xff), ty);
                    } else {
                        assert_eq!((s.tag >> 24) & 0xff, 0);
                    }
                }
            }
            let has_free = !allocated || entry.is_some_and(|e| e.free != 0);
            let word = self.summary[(p / 64) as usize];
            assert_eq!(word & (1 << (p % 64)) != 0, has_free, "summary bit {p}");
        }
        for (w, word) in self.summary.iter().enumerate() {
            assert_eq!(self.top & (1 << w) != 0, *word != 0);
        }
        assert_eq!(live, self.live);
    }
}

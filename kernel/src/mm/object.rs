//! Memory objects: the frames behind user mappings. Written by hand: core
//! competence.
//!
//! An anonymous object owns its frames, allocated eagerly or on first touch
//! (demand-zero), one reference each in the frame allocator's per-frame
//! count. A physical object names a fixed physical range (device registers,
//! boot modules) that it does not own. [`MemObject::cow_clone`] makes a
//! second anonymous object sharing every present frame (one more reference
//! each); whichever object writes a shared page first gets its own copy
//! ([`MemObject::unshare`]).
//!
//! Invariants:
//! - A frame with more than one reference lies only in objects marked
//!   `cow`, and a `cow` object is mapped by at most one address space (see
//!   `aspace`), so replacing a page never leaves a stale mapping elsewhere.
//! - Dropping an anonymous object drops one reference to each of its
//!   present frames.

use super::kref::{KArc, ensure, oom};
use super::machine::Machine;
use super::pool::MemoryPool;
use keel_abi::Error;
use spin::Mutex;

/// Bytes per page.
pub const PAGE: usize = 4096;
/// Marks a page of an anonymous object that has no frame yet.
const ABSENT: u64 = u64::MAX;

/// What backs an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Frames of its own, zero-filled.
    Anonymous,
    /// The physical range starting at this address; `device` if it is
    /// device memory (mapped uncached).
    Physical {
        /// Physical address of page 0 (page-aligned).
        base: u64,
        /// Whether the range is device memory.
        device: bool,
    },
}

struct State {
    /// Frame of each page (anonymous objects), or `ABSENT`.
    frames: alloc::vec::Vec<u64>,
    /// Address spaces with a mapping of this object.
    spaces: usize,
    /// Shares frames copy-on-write with another object (ever).
    cow: bool,
}

/// A memory object.
pub struct MemObject<M: Machine> {
    backing: Backing,
    pages: usize,
    /// The pool this object's pages are charged to, credited on drop.
    pool: Option<KArc<MemoryPool>>,
    state: Mutex<State>,
    _machine: core::marker::PhantomData<M>,
}

impl<M: Machine> MemObject<M> {
    /// [`Self::anonymous_charged`] to no pool.
    #[cfg(any(test, feature = "ktest", feature = "bench"))]
    pub fn anonymous(pages: usize, eager: bool) -> Result<KArc<Self>, Error> {
        Self::anonymous_charged(pages, eager, None)
    }

    /// An anonymous object of `pages` pages, charged to `pool` for its
    /// lifetime; `eager` allocates and zeroes every frame now, otherwise
    /// pages are allocated on first touch.
    pub fn anonymous_charged(
        pages: usize,
        eager: bool,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<Self>, Error> {
        let valid = pages > 0 && pages <= isize::MAX as usize / PAGE;
        ensure(valid, Error::InvalidArgument)?;
        let mut frames = alloc::vec::Vec::new();
        frames.try_reserve_exact(pages).map_err(oom)?;
        // Charged last: from here on the object's drop credits it back.
        if let Some(q) = &pool {
            q.charge(pages as u64)?;
        }
        frames.resize(pages, ABSENT);
        // On failure the dropped value credits the pool back.
        let obj = Self::make(Backing::Anonymous, pages, pool, frames, false)?;
        if eager {
            // On failure `obj` drops and releases what was allocated.
            for i in 0..pages {
                obj.frame(i)?;
            }
        }
        Ok(obj)
    }

    /// An object naming `pages` pages of physical memory at `base`.
    pub fn physical(base: u64, pages: usize, device: bool) -> Result<KArc<Self>, Error> {
        let len = (pages as u64).checked_mul(PAGE as u64);
        let fits = len.and_then(|l| base.checked_add(l)).is_some();
        let valid = pages > 0 && base.is_multiple_of(PAGE as u64) && fits;
        ensure(valid, Error::InvalidArgument)?;
        let backing = Backing::Physical { base, device };
        Self::make(backing, pages, None, alloc::vec::Vec::new(), false)
    }

    /// A new object of `pages` pages backed by `backing` (and `frames`, if
    /// anonymous), charged to `pool`.
    fn make(
        backing: Backing,
        pages: usize,
        pool: Option<KArc<MemoryPool>>,
        frames: alloc::vec::Vec<u64>,
        cow: bool,
    ) -> Result<KArc<Self>, Error> {
        KArc::try_new(MemObject {
            backing,
            pages,
            pool,
            state: Mutex::new(State {
                frames,
                spaces: 0,
                cow,
            }),
            _machine: core::marker::PhantomData,
        })
    }

    /// Size in pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// What backs the object: its own zero-filled frames or a fixed
    /// physical range.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The frame of page `i`, allocating a zeroed one if it has none yet.
    pub fn frame(&self, i: usize) -> Result<u64, Error> {
        ensure(i < self.pages, Error::InvalidArgument)?;
        let mut st = self.state.lock();
        match self.backing {
            Backing::Physical { base, .. } => Ok(base + (i * PAGE) as u64),
            Backing::Anonymous => {
                let slot = st.frames.get_mut(i).ok_or(Error::InvalidArgument)?;
                if *slot == ABSENT {
                    let pa = M::alloc_frame().ok_or(Error::OutOfMemory)?;
                    M::zero_frame(pa);
                    *slot = pa;
                }
                Ok(*slot)
            }
        }
    }

    /// The frame of page `i` if it has one (no allocation).
    pub fn present(&self, i: usize) -> Option<u64> {
        match self.backing {
            Backing::Physical { base, .. } => (i < self.pages).then(|| base + (i * PAGE) as u64),
            Backing::Anonymous => self
                .state
                .lock()
                .frames
                .get(i)
                .copied()
                .filter(|&f| f != ABSENT),
        }
    }

    /// Whether page `i`'s frame is shared copy-on-write with another object.
    pub fn is_shared(&self, i: usize) -> bool {
        self.backing == Backing::Anonymous && self.present(i).is_some_and(|f| M::frame_refs(f) > 1)
    }

    /// Gives page `i` a frame of its own, copying the shared one; returns
    /// the frame and whether it changed.
    pub fn unshare(&self, i: usize) -> Result<(u64, bool), Error> {
        let old = self.frame(i)?;
        if self.backing != Backing::Anonymous || M::frame_refs(old) <= 1 {
            return Ok((old, false));
        }
        let new = M::alloc_frame().ok_or(Error::OutOfMemory)?;
        M::copy_frame(new, old);
        let mut st = self.state.lock();
        if let Some(slot) = st.frames.get_mut(i) {
            *slot = new;
        }
        M::release_frame(old);
        Ok((new, true))
    }

    /// A new anonymous object with the same contents, sharing every
    /// present frame copy-on-write, charged its pages to `pool`. Both
    /// objects become `cow`.
    pub fn cow_clone(&self, pool: Option<KArc<MemoryPool>>) -> Result<KArc<Self>, Error> {
        ensure(self.backing == Backing::Anonymous, Error::InvalidState)?;
        let mut frames = alloc::vec::Vec::new();
        frames.try_reserve_exact(self.pages).map_err(oom)?;
        if let Some(q) = &pool {
            q.charge(self.pages as u64)?;
        }
        let mut st = self.state.lock();
        frames.extend_from_slice(&st.frames);
        // On failure the dropped value credits the pool back.
        let copy = Self::make(Backing::Anonymous, self.pages, pool, frames, true)?;
        st.cow = true;
        for &f in st.frames.iter().filter(|&&f| f != ABSENT) {
            M::share_frame(f);
        }
        Ok(copy)
    }

    /// A new anonymous object of pages `offset..offset + pages` of this
    /// one, charged `pages` to `pool`: with `take` their frames move to it
    /// (this object's pages become absent, demand-zero again); otherwise
    /// it shares them copy-on-write and both objects become `cow`.
    pub fn split_off(
        &self,
        offset: usize,
        pages: usize,
        take: bool,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<Self>, Error> {
        let end = offset.checked_add(pages).ok_or(Error::InvalidArgument)?;
        let valid = self.backing == Backing::Anonymous && pages > 0 && end <= self.pages;
        ensure(valid, Error::InvalidArgument)?;
        let new = Self::anonymous_charged(pages, false, pool)?;
        let mut st = self.state.lock();
        let mut nst = new.state.lock();
        let (Some(from), Some(to)) = (st.frames.get_mut(offset..end), nst.frames.get_mut(..))
        else {
            return Err(Error::InvalidArgument);
        };
        for (f, t) in from.iter_mut().zip(to.iter_mut()) {
            if take {
                *t = core::mem::replace(f, ABSENT);
            } else if *f != ABSENT {
                M::share_frame(*f);
                *t = *f;
            }
        }
        nst.cow = st.cow || !take;
        st.cow |= !take;
        drop(nst);
        Ok(new)
    }

    /// Records that one more address space maps this object; refused for
    /// a copy-on-write object already mapped by another space.
    pub(super) fn add_space(&self) -> Result<(), Error> {
        let mut st = self.state.lock();
        ensure(!st.cow || st.spaces == 0, Error::InvalidState)?;
        st.spaces += 1;
        Ok(())
    }

    pub(super) fn remove_space(&self) {
        let mut st = self.state.lock();
        st.spaces = st.spaces.saturating_sub(1);
    }

    /// Address spaces mapping this object.
    pub fn spaces(&self) -> usize {
        self.state.lock().spaces
    }
}

impl<M: Machine> Drop for MemObject<M> {
    fn drop(&mut self) {
        if let Some(q) = &self.pool {
            q.credit(self.pages as u64);
        }
        if self.backing == Backing::Anonymous {
            for &f in self.state.get_mut().frames.iter().filter(|&&f| f != ABSENT) {
                M::release_frame(f);
            }
        }
    }
}

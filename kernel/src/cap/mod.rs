//! The capability system: every capability space in the machine and the
//! derivation tree between their capabilities. Hand-written, as core
//! competence of the kernel; portable, and tested on the host.
//!
//! One [`CapSystem`] holds an arena of [`CapSpace`]s named by [`CSpaceId`]
//! (index + generation, so a destroyed space's id is never confused with a
//! new one). The kernel wraps it in its lock. It is generic over the object
//! payload `O` each capability carries (the kernel's enum of refcounted
//! object pointers); it never looks inside `O`. Copying a capability
//! clones `O`; every capability that goes away hands its `O` back to the
//! caller (returned, or passed to a `dropped` callback), never dropped here,
//! so the kernel can destroy an object outside this module when `O`'s
//! reference count says the last capability (or other reference) is gone.
//!
//! Operations and their rules:
//! - **insert**: the original capability of a new object (a tree root).
//! - **derive**: a child in the same space with a subset of the rights and,
//!   on an unbadged capability only, a badge.
//! - **grant**: a child in another (or the same) space with a subset of the
//!   rights; needs [`Rights::GRANT`].
//! - **delegate**: moves a capability to another slot or space, keeping its
//!   place in the tree; crossing spaces needs [`Rights::GRANT`].
//! - **inherit**: fork's copy of every capability with [`Rights::INHERIT`]
//!   into the same slot of another space with the same token, as children.
//! - **delete**: removes one capability. Its children survive, re-parented
//!   to its parent (seL4-style): deleting your copy never destroys what
//!   others hold; revoke does.
//! - **revoke**: removes every descendant, across spaces, at most `budget`
//!   per call ([`Progress::More`] until done). Needs [`Rights::REVOKE`].
//!   Each step removes the revoked capability's first child and splices the
//!   grandchildren into its place, so after every step the tree is
//!   well-formed and every remaining capability valid. While a revoke is
//!   unfinished the capability is marked: deriving, granting or delegating
//!   from it fails with `InvalidState`; a call that finishes clears the mark
//!   (an abandoned revoke leaves it until someone finishes it). If the
//!   capability itself is deleted meanwhile, the next call fails with
//!   `InvalidCapability` and its remaining children survive, as for delete.
//!   Convergence: between two calls, other CPUs can still derive from
//!   descendants, but each such call takes the kernel lock and adds at most
//!   a few capabilities, while each revoke call removes `budget`; with a
//!   fair lock and a budget larger than that, the subtree shrinks every
//!   round, so the revoke terminates.
//! - **destroy_space**: deletes every capability of a space (bounded, like
//!   revoke), then frees it. A dying space accepts no new capabilities.
//!
//! Invariants: each live capability sits in exactly one slot and has
//! exactly one `O`, cloned when it was derived or granted and handed back
//! exactly once when it goes; tree links name live slots only (see `tree`);
//! a space's arena entry changes generation when the space is destroyed and
//! is then on the free list (unless its generation is exhausted).
//!
//! Every operation validates everything before changing anything, and
//! every allocation (L1 growth, L2 pages, the space arena) is fallible:
//! errors, never panics. Tokens, rights and object types are defined in
//! `keel_abi::cap`.
#![forbid(unsafe_code)]

mod space;
mod tree;

#[cfg(test)]
mod tests;

use crate::arena::{Arena, Id};
use crate::mm::kref::ensure;
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
pub use space::CapSpace;
use space::Slot;
use tree::{Links, NIL, slot_ref};

/// Names a capability space; stale once the space is destroyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CSpaceId(Id);

impl CSpaceId {
    fn index(self) -> u32 {
        self.0.index()
    }
}

/// A capability space made by [`CapSystem::prepare_space`], not yet in the
/// system.
pub struct NewSpace<O> {
    id: CSpaceId,
    space: CapSpace<O>,
}

impl<O> NewSpace<O> {
    /// The id it will have once installed.
    pub fn id(&self) -> CSpaceId {
        self.id
    }
}

/// Where a new capability goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// The lowest free slot.
    Any,
    /// This slot, which must be free and below the space's quota.
    At(u32),
}

/// What a bounded operation achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Finished.
    Done,
    /// Budget used up; call again to continue.
    More,
}

/// A capability: an object reference with a type, rights and a badge.
#[derive(Debug)]
pub struct Cap<O> {
    object: O,
    ty: ObjectType,
    rights: Rights,
    badge: u64,
    /// A revoke of this capability's descendants is unfinished.
    revoking: bool,
}

impl<O> Cap<O> {
    fn new(object: O, ty: ObjectType, rights: Rights, badge: u64) -> Cap<O> {
        Cap {
            object,
            ty,
            rights,
            badge,
            revoking: false,
        }
    }

    /// The object.
    pub fn object(&self) -> &O {
        &self.object
    }

    /// The object's type.
    pub fn object_type(&self) -> ObjectType {
        self.ty
    }

    /// The rights.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// The badge ([`NO_BADGE`] if none).
    pub fn badge(&self) -> u64 {
        self.badge
    }
}

/// All capability spaces and the derivation tree. See the module docs.
pub struct CapSystem<O> {
    spaces: Arena<CapSpace<O>>,
}

impl<O> Default for CapSystem<O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<O> CapSystem<O> {
    /// No spaces yet.
    pub const fn new() -> Self {
        CapSystem {
            // Index u32::MAX is never used: links reserve it.
            spaces: Arena::with_limit(u32::MAX - 1),
        }
    }

    /// Creates an empty space that can hold up to `max_slots` capabilities
    /// (1..=[`CapSpace::MAX_SLOTS`]).
    pub fn create_space(&mut self, max_slots: u32) -> Result<CSpaceId, Error> {
        let space = CapSpace::new(max_slots)?;
        self.spaces.insert(space).map(CSpaceId)
    }

    /// A new space of `max_slots` slots, made and with room for it in the
    /// table, to be added by [`Self::install_space`] (which cannot then
    /// fail if no space is created in between).
    pub fn prepare_space(&mut self, max_slots: u32) -> Result<NewSpace<O>, Error> {
        let space = CapSpace::new(max_slots)?;
        self.spaces.reserve()?;
        Ok(NewSpace {
            id: CSpaceId(self.spaces.next_id()),
            space,
        })
    }

    /// Adds a space made by [`Self::prepare_space`]; returns its id (the one
    /// [`NewSpace::id`] predicted).
    pub fn install_space(&mut self, new: NewSpace<O>) -> Result<CSpaceId, Error> {
        self.spaces.insert(new.space).map(CSpaceId)
    }

    /// The space `id` names, for lookups ([`CapSpace::lookup`]).
    pub fn space(&self, id: CSpaceId) -> Result<&CapSpace<O>, Error> {
        self.spaces.get(id.0).ok_or(Error::InvalidArgument)
    }

    /// The first thread of space `id`'s list (see `Kernel::add_thread`).
    pub fn members(&mut self, id: CSpaceId) -> Result<&mut Option<crate::arena::Id>, Error> {
        self.spaces
            .get_mut(id.0)
            .map(|s| &mut s.members)
            .ok_or(Error::InvalidArgument)
    }

    fn space_mut(&mut self, index: u32) -> Result<&mut CapSpace<O>, Error> {
        self.spaces
            .at_mut(index)
            .map(|(_, s)| s)
            .ok_or(Error::InvalidArgument)
    }

    /// The capability `token` names in space `id`.
    pub fn lookup(&self, id: CSpaceId, token: CapToken) -> Result<&Cap<O>, Error> {
        self.space(id)?.lookup(token)
    }

    /// Like [`Self::lookup`], for a call that needs an object of type `ty`
    /// and the rights `needed`.
    pub fn lookup_as(
        &self,
        id: CSpaceId,
        token: CapToken,
        ty: ObjectType,
        needed: Rights,
    ) -> Result<&Cap<O>, Error> {
        ensure(token.type_code() == ty as u8, Error::WrongObjectType)?;
        let cap = self.lookup(id, token)?;
        ensure(cap.rights.contains(needed), Error::AccessDenied)?;
        Ok(cap)
    }

    /// Inserts the original capability to a new object.
    pub fn insert(
        &mut self,
        id: CSpaceId,
        dest: Dest,
        object: O,
        ty: ObjectType,
        rights: Rights,
        badge: u64,
    ) -> Result<CapToken, Error> {
        self.space(id)?;
        self.place(id.index(), dest, Cap::new(object, ty, rights, badge), NIL)
    }

    /// Mints a child of `src` in the same space with `rights` (a subset of
    /// `src`'s) and, if `badge != NO_BADGE`, that badge (only on an
    /// unbadged `src`; otherwise the child keeps `src`'s badge). (System
    /// calls go through [`Self::copy`].)
    #[cfg(any(test, feature = "bench"))]
    pub fn derive(
        &mut self,
        id: CSpaceId,
        src: CapToken,
        dest: Dest,
        rights: Rights,
        badge: u64,
    ) -> Result<CapToken, Error>
    where
        O: Clone,
    {
        self.copy(id, src, id, dest, rights, badge, Rights::NONE)
    }

    /// Copies `src` into space `to` as its child with `rights` (a subset of
    /// `src`'s). `src` must have [`Rights::GRANT`].
    pub fn grant(
        &mut self,
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        dest: Dest,
        rights: Rights,
    ) -> Result<CapToken, Error>
    where
        O: Clone,
    {
        self.copy(from, src, to, dest, rights, NO_BADGE, Rights::GRANT)
    }

    /// [`Self::derive`] (`from == to`, no `needed` right) or [`Self::grant`]
    /// (`needed` = [`Rights::GRANT`], no badge) of `src` into space `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn copy(
        &mut self,
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        dest: Dest,
        rights: Rights,
        badge: u64,
        needed: Rights,
    ) -> Result<CapToken, Error>
    where
        O: Clone,
    {
        self.check_copy(from, src, to, rights, badge, needed)?;
        let parent = self.lookup(from, src)?;
        let badge = if badge == NO_BADGE {
            parent.badge
        } else {
            badge
        };
        let child = Cap::new(parent.object.clone(), parent.ty, rights, badge);
        self.place(to.index(), dest, child, slot_ref(from.index(), src.index()))
    }

    /// Checks that [`Self::derive`] (`from == to`, no `needed` right) or
    /// [`Self::grant`] (`needed` = [`Rights::GRANT`], no badge) of `src`
    /// with `rights` and `badge` into space `to` would succeed given a free
    /// slot, without changing anything.
    pub fn check_copy(
        &self,
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        rights: Rights,
        badge: u64,
        needed: Rights,
    ) -> Result<(), Error> {
        let parent = self.lookup(from, src)?;
        let allowed = parent.rights.contains(rights) && parent.rights.contains(needed);
        ensure(allowed, Error::AccessDenied)?;
        let badged = badge != NO_BADGE && parent.badge != NO_BADGE;
        ensure(!parent.revoking && !badged, Error::InvalidState)?;
        self.space(to).map(|_| ())
    }

    /// Checks that [`Self::delegate`] of `src` into space `to` would
    /// succeed given a free slot, without changing anything.
    pub fn check_delegate(&self, from: CSpaceId, src: CapToken, to: CSpaceId) -> Result<(), Error> {
        let cap = self.lookup(from, src)?;
        let allowed = from == to || cap.rights.contains(Rights::GRANT);
        ensure(allowed, Error::AccessDenied)?;
        ensure(!cap.revoking, Error::InvalidState)?;
        self.space(to).map(|_| ())
    }

    /// Finds a free slot in space `id` and allocates its page, without
    /// taking it: an operation into [`Dest::At`] it cannot then fail for
    /// room (if nothing else takes it first).
    pub fn reserve_slot(&mut self, id: CSpaceId) -> Result<u32, Error> {
        self.space(id)?;
        self.space_mut(id.index())?.find_free()
    }

    /// Takes a slot in space `space` and puts `cap` there as a child of
    /// `parent` (or a root if `NIL`). Nothing changes on error.
    fn place(
        &mut self,
        space: u32,
        dest: Dest,
        cap: Cap<O>,
        parent: u64,
    ) -> Result<CapToken, Error> {
        let sp = self.space_mut(space)?;
        let index = sp.take(dest)?;
        let token = sp.fill(index, cap, Links::NONE);
        if parent != NIL {
            self.attach(parent, slot_ref(space, index));
        }
        Ok(token)
    }

    /// Copies each capability of space `from` in slots `start..start + n`
    /// that has [`Rights::INHERIT`] and that `allow` lets go into `to` into
    /// the same slot of `to` with the same token, as a child of the
    /// original. A slot of `to` that is occupied or past that generation is
    /// `AlreadyExists` (with the slots before it copied). Returns where to
    /// go on, `None` at the end of `from`.
    pub fn inherit(
        &mut self,
        from: CSpaceId,
        to: CSpaceId,
        start: u32,
        n: u32,
        allow: impl Fn(&O) -> bool,
    ) -> Result<Option<u32>, Error>
    where
        O: Clone,
    {
        let max = self.space(from)?.max_slots();
        let end = max.min(start.saturating_add(n));
        for index in start..end {
            let Some((tag, cap)) = self.space(from)?.slot(index).and_then(|s| {
                let c = s
                    .cap
                    .as_ref()
                    .filter(|c| c.rights.contains(Rights::INHERIT));
                Some((s.tag, c.filter(|c| !c.revoking && allow(&c.object))?))
            }) else {
                continue;
            };
            let child = Cap::new(cap.object.clone(), cap.ty, cap.rights, cap.badge);
            let dst = self.space_mut(to.index())?;
            let old = dst.slot(index).map_or(0, |s| s.tag);
            ensure(old >> 32 <= tag >> 32, Error::AlreadyExists)?;
            dst.take(Dest::At(index))?;
            if let Some(s) = dst.slot_mut(index) {
                s.tag = tag; // the generation only moves forward
            }
            dst.fill(index, child, Links::NONE);
            self.attach(slot_ref(from.index(), index), slot_ref(to.index(), index));
        }
        Ok((end < max).then_some(end))
    }

    /// Moves `src` to space `to` (or another slot of its own space); its
    /// place in the derivation tree moves with it. Returns the new token;
    /// the old one is stale.
    pub fn delegate(
        &mut self,
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        dest: Dest,
    ) -> Result<CapToken, Error> {
        self.check_delegate(from, src, to)?;
        let index = self.space_mut(to.index())?.take(dest)?;
        let links = self.links(slot_ref(from.index(), src.index()));
        let Some(cap) = self.space_mut(from.index())?.release(src.index()) else {
            return Err(Error::InvalidCapability); // unreachable: looked up above
        };
        let token = self.space_mut(to.index())?.fill(index, cap, links);
        self.relocate(links, slot_ref(to.index(), index));
        Ok(token)
    }

    /// Deletes one capability and returns its object. Its children survive,
    /// re-parented to its parent.
    pub fn delete(&mut self, id: CSpaceId, token: CapToken) -> Result<O, Error> {
        self.lookup(id, token)?;
        self.remove(slot_ref(id.index(), token.index()))
            .ok_or(Error::InvalidCapability)
    }

    /// Removes the capability in slot `r` from the tree and its space.
    fn remove(&mut self, r: u64) -> Option<O> {
        self.detach(r);
        let space = self.space_mut((r >> 32) as u32).ok()?;
        space.release(r as u32).map(|cap| cap.object)
    }

    /// Removes up to `budget` descendants of `token` (in any space), passing
    /// each one's object to `dropped`. [`Progress::Done`] once it has no
    /// descendants left; otherwise call again (the capability stays marked
    /// as being revoked until then).
    pub fn revoke(
        &mut self,
        id: CSpaceId,
        token: CapToken,
        budget: usize,
        dropped: &mut impl FnMut(O),
    ) -> Result<Progress, Error> {
        ensure(budget > 0, Error::InvalidArgument)?;
        let rights = self.lookup(id, token)?.rights;
        ensure(rights.contains(Rights::REVOKE), Error::AccessDenied)?;
        let root = slot_ref(id.index(), token.index());
        for _ in 0..budget {
            let child = self.links(root).first;
            if child == NIL {
                break;
            }
            if let Some(object) = self.remove(child) {
                dropped(object);
            }
        }
        let more = self.links(root).first != NIL;
        if let Some(cap) = self.slot_at_mut(root).and_then(|s| s.cap.as_mut()) {
            cap.revoking = more;
        }
        Ok(if more { Progress::More } else { Progress::Done })
    }

    /// Destroys space `id`: deletes its capabilities (children elsewhere
    /// survive, as for [`Self::delete`]), passing each object to `dropped`;
    /// when none are left, frees the space and returns [`Progress::Done`],
    /// after which `id` is stale. Each capability removed and each L2 page
    /// scanned costs one unit of `budget`. From the first call on, the space
    /// accepts no new capabilities.
    pub fn destroy_space(
        &mut self,
        id: CSpaceId,
        budget: usize,
        dropped: &mut impl FnMut(O),
    ) -> Result<Progress, Error> {
        ensure(budget > 0, Error::InvalidArgument)?;
        self.space(id)?;
        let mut work = budget;
        loop {
            let sp = self.space_mut(id.index())?;
            let page = sp.dying.unwrap_or(0);
            sp.dying = Some(page);
            if page >= sp.pages() {
                break;
            }
            if work == 0 {
                return Ok(Progress::More);
            }
            work -= 1;
            match sp.first_used_in(page) {
                Some(index) => {
                    if let Some(object) = self.remove(slot_ref(id.index(), index)) {
                        dropped(object);
                    }
                }
                None => sp.dying = Some(page + 1),
            }
        }
        self.spaces.remove(id.0).ok_or(Error::InvalidArgument)?;
        Ok(Progress::Done)
    }

    fn slot_at(&self, r: u64) -> Option<&Slot<O>> {
        self.spaces.at((r >> 32) as u32)?.1.slot(r as u32)
    }

    fn slot_at_mut(&mut self, r: u64) -> Option<&mut Slot<O>> {
        self.spaces.at_mut((r >> 32) as u32)?.1.slot_mut(r as u32)
    }

    /// Every occupied slot in the system (tests only).
    #[cfg(test)]
    fn all_refs(&self) -> impl Iterator<Item = u64> + '_ {
        self.spaces
            .iter()
            .flat_map(|(id, s)| s.tokens().map(move |t| slot_ref(id.index(), t.index())))
    }

    /// The parent of a capability as (space, token) (tests only).
    #[cfg(test)]
    fn parent_of(&self, id: CSpaceId, token: CapToken) -> Option<(CSpaceId, CapToken)> {
        let p = self.parent_ref(slot_ref(id.index(), token.index()));
        let (id, _) = self.spaces.at((p >> 32) as u32)?;
        let slot = self.slot_at(p)?;
        Some((CSpaceId(id), CapToken::from_raw(slot.tag)))
    }

    /// Checks every invariant of every space and of the tree (tests only).
    #[cfg(test)]
    fn check(&self) {
        for (_, s) in self.spaces.iter() {
            s.check();
        }
        self.check_tree();
    }
}

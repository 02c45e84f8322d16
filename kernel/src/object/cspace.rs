//! The capability-space object: what capabilities to a capability space
//! hold. A capability space is a process: its threads run in it and die
//! with it.
//!
//! The space lives while any capability to it does; when the last goes, it
//! is queued to be destroyed together with every thread running in it
//! (threads do not keep their space alive), and its pool charge is
//! credited.
//!
//! Spaces are ranked by `depth`: the root task's is 0, a space made by a
//! thread of a depth-`d` space has `d + 1`. A capability to a space may only
//! be put into a space of lower rank ([`CSpaceRef::may_go_into`]), so the
//! references between spaces all point down and can never form a cycle
//! that keeps spaces alive. Threads hold no capability, so capabilities to
//! threads cannot close a cycle either.

use super::{Orphan, OrphanSlot, Orphans};
use crate::cap::CSpaceId;
use crate::mm::kref::KArc;
use crate::mm::pool::MemoryPool;
use keel_abi::Error;

/// A capability's reference to a capability space.
pub struct CSpaceRef {
    id: CSpaceId,
    depth: u32,
    charge: Option<(KArc<MemoryPool>, u64)>,
    slot: OrphanSlot,
}

impl CSpaceRef {
    /// A reference to space `id` of rank `depth`, whose tables are already
    /// charged (`pages` of `pool`); the charge is credited when the
    /// reference goes, or at once if this fails.
    pub fn new(
        orphans: &KArc<Orphans>,
        id: CSpaceId,
        depth: u32,
        charge: Option<(KArc<MemoryPool>, u64)>,
    ) -> Result<KArc<CSpaceRef>, Error> {
        let slot = Orphans::reserve(orphans).inspect_err(|_| {
            if let Some((pool, pages)) = &charge {
                pool.credit(*pages);
            }
        })?;
        KArc::try_new(CSpaceRef {
            id,
            depth,
            charge,
            slot,
        })
    }

    /// The space (stale once it is destroyed).
    pub fn id(&self) -> CSpaceId {
        self.id
    }

    /// The space's rank (see the module docs).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether a capability to this space may be put into `dest`.
    pub fn may_go_into(&self, dest: &CSpaceRef) -> bool {
        dest.depth < self.depth
    }

    /// What a thread running in this space keeps of it.
    pub fn home(&self) -> Home {
        Home {
            id: self.id,
            depth: self.depth,
            pool: self.charge.as_ref().map(|(p, _)| p.clone()),
        }
    }
}

impl Drop for CSpaceRef {
    fn drop(&mut self) {
        if let Some((pool, pages)) = &self.charge {
            pool.credit(*pages);
        }
        self.slot.queue(Orphan::CSpace(self.id));
    }
}

/// The capability space a thread runs in, as the thread keeps it: its id
/// and rank, and the pool its TCB is charged to. It does not keep the
/// space alive.
#[derive(Clone)]
pub struct Home {
    id: CSpaceId,
    depth: u32,
    pool: Option<KArc<MemoryPool>>,
}

impl Home {
    /// The capability space.
    pub fn id(&self) -> CSpaceId {
        self.id
    }

    /// Its rank (module docs).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The pool its threads are charged to (none for kernel-owned spaces).
    pub fn pool(&self) -> Option<&KArc<MemoryPool>> {
        self.pool.as_ref()
    }
}

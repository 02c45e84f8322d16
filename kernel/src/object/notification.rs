//! The notification object: a word of signal bits (DESIGN.md §4), and the
//! references capabilities hold to it. Written by hand: core competence.
//!
//! `Signal` ORs bits into the word and never blocks; `Wait` blocks until
//! the word is non-zero, then returns and clears it; `Poll` returns and
//! clears it at once. Waiters queue through their TCBs, as on an endpoint
//! (`object::endpoint::Waiting`). A notification may be bound to one
//! thread: a signal then also ends that thread's `Recv` on any endpoint
//! (so a server waits on its endpoint and its notification at once).
//!
//! Ownership as for endpoints: charged `ENDPOINT_PAGES` to its pool, ended
//! when its last reference goes (waiters woken with `Disconnected`, the
//! bound thread unbound).

use super::endpoint::{ENDPOINT_PAGES, Waiting};
use super::{Orphan, OrphanSlot, Orphans, ThreadId};
use crate::arena::Id;
use crate::mm::kref::KArc;
use crate::mm::pool::MemoryPool;
use keel_abi::Error;

/// Names a notification; stale once it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotificationId(pub(crate) Id);

/// A notification (see the module docs).
#[derive(Default)]
pub struct Notification {
    /// The pending signal bits.
    pub word: u64,
    /// Threads blocked in `Wait`.
    pub waiters: Waiting,
    /// The thread bound to it, if any.
    pub bound: Option<ThreadId>,
}

/// A capability's reference to a notification.
pub struct NotificationRef {
    id: NotificationId,
    pool: Option<KArc<MemoryPool>>,
    slot: OrphanSlot,
}

impl NotificationRef {
    /// A reference to notification `id`, already charged to `pool` (the
    /// charge is credited when the reference goes, or at once on failure).
    pub fn new(
        orphans: &KArc<Orphans>,
        id: NotificationId,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<NotificationRef>, Error> {
        let slot = Orphans::reserve(orphans).inspect_err(|_| {
            if let Some(p) = &pool {
                p.credit(ENDPOINT_PAGES);
            }
        })?;
        KArc::try_new(NotificationRef { id, pool, slot })
    }

    /// The notification (stale once it is gone).
    pub fn id(&self) -> NotificationId {
        self.id
    }
}

impl Drop for NotificationRef {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.credit(ENDPOINT_PAGES);
        }
        self.slot.queue(Orphan::Notification(self.id));
    }
}

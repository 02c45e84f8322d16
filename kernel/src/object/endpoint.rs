//! The endpoint object: a rendezvous point for synchronous messages
//! (DESIGN.md §4), and the references capabilities hold to it. Written by
//! hand: core competence.
//!
//! An endpoint is a queue of threads waiting on it: senders (callers, and
//! threads whose fault it handles) or receivers, never both at once. The
//! queue is intrusive — its links live in the threads' TCBs ([`Waiting`])
//! — so blocking never allocates. It is ordered by priority, FIFO within
//! one. The message protocol over it is `task::kernel::ipc`.
//!
//! Ownership: an endpoint lives in the kernel's endpoint table while a
//! capability (or a thread's fault-handler link) to it does; its pool is
//! charged [`ENDPOINT_PAGES`]. When the last reference goes it is queued as
//! an orphan and ended: every thread still waiting on it is woken with
//! `Disconnected`.

use super::{Orphan, OrphanSlot, Orphans, ThreadId};
use crate::arena::Id;
use crate::mm::kref::KArc;
use crate::mm::pool::MemoryPool;
use keel_abi::Error;

/// What an endpoint or a notification is charged to its pool: its table
/// entry and bookkeeping, rounded up to a page.
pub const ENDPOINT_PAGES: u64 = 1;

/// Names an endpoint; stale once it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointId(pub(crate) Id);

/// A queue of waiting threads, linked through their TCBs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// First (next to be served).
    pub head: Option<ThreadId>,
    /// Last.
    pub tail: Option<ThreadId>,
}

impl Waiting {
    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }
}

/// Who waits on an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    /// Nobody.
    #[default]
    Idle,
    /// Senders (and callers, and faulted threads).
    Send,
    /// Receivers.
    Recv,
}

/// An endpoint (see the module docs).
#[derive(Default)]
pub struct Endpoint {
    /// The waiting threads.
    pub queue: Waiting,
    /// Which side they are on (`Idle` iff the queue is empty).
    pub side: Side,
}

/// A capability's reference to an endpoint.
pub struct EndpointRef {
    id: EndpointId,
    pool: Option<KArc<MemoryPool>>,
    slot: OrphanSlot,
}

impl EndpointRef {
    /// A reference to endpoint `id`, which is charged to `pool` already;
    /// the charge is credited when the reference goes (or at once if this
    /// fails).
    pub fn new(
        orphans: &KArc<Orphans>,
        id: EndpointId,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<EndpointRef>, Error> {
        let credit = |pool: &Option<KArc<MemoryPool>>| {
            if let Some(p) = pool {
                p.credit(ENDPOINT_PAGES);
            }
        };
        let slot = Orphans::reserve(orphans).inspect_err(|_| credit(&pool))?;
        KArc::try_new(EndpointRef { id, pool, slot })
    }

    /// The endpoint (stale once it is gone).
    pub fn id(&self) -> EndpointId {
        self.id
    }
}

impl Drop for EndpointRef {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.credit(ENDPOINT_PAGES);
        }
        self.slot.queue(Orphan::Endpoint(self.id));
    }
}

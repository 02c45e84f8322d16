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

use super::{Orphan, ThreadId};
use crate::arena::Id;

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

/// A capability's reference to an endpoint (see [`super::TableRef`]).
pub type EndpointRef = super::TableRef<EndpointId>;

impl From<EndpointId> for Orphan {
    fn from(id: EndpointId) -> Orphan {
        Orphan::Endpoint(id)
    }
}

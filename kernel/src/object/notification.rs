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

use super::endpoint::Waiting;
use super::{Orphan, ThreadId};
use crate::arena::Id;

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

/// A capability's reference to a notification (see [`super::TableRef`]).
pub type NotificationRef = super::TableRef<NotificationId>;

impl From<NotificationId> for Orphan {
    fn from(id: NotificationId) -> Orphan {
        Orphan::Notification(id)
    }
}

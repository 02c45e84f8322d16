//! The timer object: a one-shot or periodic deadline on the monotonic
//! clock that signals a notification when it passes (user-space time
//! without a thread sleeping for it). Armed timers wait in the kernel's
//! deadline heap of timers (`task::kernel::clock`). Written by hand: core
//! competence.
//!
//! Ownership as for notifications: charged `ENDPOINT_PAGES` to its pool,
//! ended (taken out of the heap) when its last reference goes. It holds a
//! reference to its notification, which so lives at least as long.

use super::{NotificationRef, Orphan};
use crate::arena::Id;
use crate::mm::kref::KArc;

/// Names a timer; stale once it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(pub(crate) Id);

impl crate::sched::Slot for TimerId {
    fn slot(&self) -> usize {
        self.0.index() as usize
    }
}

/// A timer (see the module docs).
pub struct Timer {
    /// Signalled with `bits` when the deadline passes.
    pub notification: KArc<NotificationRef>,
    /// The notification capability's badge (1 if it had none).
    pub bits: u64,
    /// Ticks between firings (0: one-shot).
    pub period: u64,
}

/// A capability's reference to a timer (see [`super::TableRef`]).
pub type TimerRef = super::TableRef<TimerId>;

impl From<TimerId> for Orphan {
    fn from(id: TimerId) -> Orphan {
        Orphan::Timer(id)
    }
}

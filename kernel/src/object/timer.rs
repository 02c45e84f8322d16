//! The timer object: a one-shot or periodic deadline on the monotonic
//! clock that signals a notification when it passes (user-space time
//! without a thread sleeping for it). Armed timers wait in the kernel's
//! deadline heap of timers (`task::kernel::clock`). Written by hand: core
//! competence.
//!
//! Ownership as for notifications: charged `ENDPOINT_PAGES` to its pool,
//! ended (taken out of the heap) when its last reference goes. It holds a
//! reference to its notification, which so lives at least as long.

use super::endpoint::ENDPOINT_PAGES;
use super::{NotificationRef, Orphan, OrphanSlot, Orphans};
use crate::arena::Id;
use crate::mm::kref::KArc;
use crate::mm::pool::MemoryPool;
use keel_abi::Error;

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

/// A capability's reference to a timer.
pub struct TimerRef {
    id: TimerId,
    pool: Option<KArc<MemoryPool>>,
    slot: OrphanSlot,
}

impl TimerRef {
    /// A reference to timer `id`, already charged to `pool` (credited when
    /// the reference goes, or at once on failure).
    pub fn new(
        orphans: &KArc<Orphans>,
        id: TimerId,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<TimerRef>, Error> {
        let slot = Orphans::reserve(orphans).inspect_err(|_| {
            if let Some(p) = &pool {
                p.credit(ENDPOINT_PAGES);
            }
        })?;
        KArc::try_new(TimerRef { id, pool, slot })
    }

    /// The timer (stale once it is gone).
    pub fn id(&self) -> TimerId {
        self.id
    }
}

impl Drop for TimerRef {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.credit(ENDPOINT_PAGES);
        }
        self.slot.queue(Orphan::Timer(self.id));
    }
}

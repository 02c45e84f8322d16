//! Time in the kernel: time slices, deadlines of blocked threads (sleep
//! and IPC timeouts) and the one-shot timer, which is armed for the
//! earliest moment something has to happen and for nothing else — no
//! periodic tick (tickless). Hand-written, portable, host-tested.
//!
//! All times here are in clock ticks (`arch::clock_ticks`); user deadlines
//! in nanoseconds are converted once, when a call is made
//! ([`crate::time::ns_to_ticks`]).
//!
//! Invariants: a thread is in `deadlines` only while `Blocked` (every way
//! out of `Blocked` goes through `unqueue`, which takes it out); `armed` is
//! what the hardware timer was last set to (`None` after it fired).

use super::Kernel;
use crate::object::ThreadId;
use crate::object::thread::{Blocked, State};
use crate::sched::After;
use crate::sched::heap::SlotHeap;
use keel_abi::Error;

/// The round-robin time slice among ready threads of equal priority.
pub const SLICE_NS: u64 = 5_000_000;

/// This CPU's time-keeping.
#[derive(Default)]
pub struct Clock {
    /// What the hardware timer is armed with.
    armed: Option<u64>,
    /// When the running thread's time slice ends.
    slice_end: u64,
    /// [`SLICE_NS`] in ticks.
    slice: u64,
    /// Blocked threads with a deadline, earliest first.
    pub(super) deadlines: SlotHeap<ThreadId>,
}

impl Clock {
    /// Sets the slice length for a clock of `hz` ticks per second.
    pub fn new(hz: u64) -> Clock {
        Clock {
            slice: crate::time::ns_to_ticks_at(SLICE_NS, hz).max(1),
            ..Clock::default()
        }
    }
}

impl Kernel {
    /// Starts a new time slice at `now` (a thread was switched in).
    pub(super) fn new_slice(&mut self, now: u64) {
        self.clock.slice_end = now.saturating_add(self.clock.slice);
    }

    /// When the timer must next fire: the earliest deadline, and the end
    /// of the running thread's slice if another thread of its priority is
    /// ready (a higher one would already run).
    pub fn next_deadline(&self) -> Option<u64> {
        let first = self.clock.deadlines.peek().map(|(_, at)| at);
        let contended = self
            .current()
            .and_then(|c| self.thread(c).ok())
            .filter(|t| t.state() == State::Running)
            .is_some_and(|t| self.sched.highest().is_some_and(|h| h >= t.priority()));
        let slice = contended.then_some(self.clock.slice_end);
        match (first, slice) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Arms the hardware timer for [`Self::next_deadline`] if that changed.
    pub fn program_timer(&mut self) {
        let want = self.next_deadline();
        if want != self.clock.armed {
            crate::arch::timer_arm(want);
            self.clock.armed = want;
        }
    }

    /// The timer fired at `now`: wakes the threads whose deadline passed
    /// (a sleeper returns 0, a blocked IPC `TimedOut`) and says whether the
    /// running thread's slice is over.
    pub fn on_timer(&mut self, now: u64) -> After {
        self.clock.armed = None;
        while let Some((id, at)) = self.clock.deadlines.peek() {
            if at > now {
                break;
            }
            let sleeping = self
                .thread(id)
                .is_ok_and(|t| t.ipc.blocked == Some(Blocked::Sleep));
            if sleeping {
                self.unqueue(id);
                if let Ok(t) = self.thread_mut(id) {
                    t.regs_mut().set_result(0);
                }
                self.wake(id);
            } else {
                self.fail(id, Error::TimedOut);
            }
            // `unqueue` took it out; make sure, so the loop ends.
            self.clock.deadlines.remove(id);
        }
        if now < self.clock.slice_end {
            return After::Continue;
        }
        // Over: a fresh slice, whether it keeps the CPU or the next thread
        // gets it.
        self.new_slice(now);
        After::Yield
    }

    /// Blocks `cur` until tick `deadline`; `Yield` if it has passed.
    pub fn sleep(&mut self, cur: ThreadId, deadline: u64, now: u64) -> After {
        if deadline <= now {
            return After::Yield;
        }
        self.block(cur, Blocked::Sleep);
        self.set_deadline(cur, deadline);
        After::Block
    }

    /// Gives blocked thread `id` a deadline (its room in the heap was made
    /// with the thread, so this cannot fail).
    pub(super) fn set_deadline(&mut self, id: ThreadId, deadline: u64) {
        let _ = self.clock.deadlines.push(id, deadline);
    }

    /// Whether the run must wait for time or an interrupt rather than end
    /// when no thread is ready.
    pub(super) fn waits_for_events(&self) -> bool {
        !self.clock.deadlines.is_empty()
    }
}

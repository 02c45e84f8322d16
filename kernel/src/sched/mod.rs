//! Scheduling: which thread runs next. Written by hand: core competence.
//! Portable and host-tested.
//!
//! Today one CPU and one class: fixed priorities 0 (lowest) … 31, FIFO
//! within a priority ([`runq`]). The scheduler keeps the run queue and the
//! running thread; the thread table keeps each thread's state and
//! priority (`task::Kernel` moves threads between the two, keeping the
//! invariants below). Per-CPU queues, the CFS-like class, balancing and
//! preemption by timer build on this.
//!
//! Invariants (with `task::Kernel`): every `Ready` thread is queued once,
//! at its priority; `Suspended` and `Running` threads are not queued;
//! `current` is the `Running` thread, or `None` right after it died.
#![forbid(unsafe_code)]

pub mod fair;
pub mod heap;
pub mod runq;

use keel_abi::Error;
use runq::RunQueue;
pub use runq::{PRIORITIES, Slot};

/// What the scheduler should do after a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Keep running the current thread if it still can.
    Continue,
    /// Put the current thread behind others of its priority.
    Yield,
    /// The current thread blocked (its result is written when it wakes).
    Block,
}

/// The run queue and the running thread of a CPU.
pub struct Scheduler<T> {
    runq: RunQueue<T>,
    current: Option<T>,
}

impl<T: PartialEq + Copy + Slot> Default for Scheduler<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PartialEq + Copy + Slot> Scheduler<T> {
    /// Nothing queued, nothing running.
    pub const fn new() -> Self {
        Scheduler {
            runq: RunQueue::new(),
            current: None,
        }
    }

    /// The running thread.
    pub fn current(&self) -> Option<T> {
        self.current
    }

    /// Records the running thread (`None`: it just died).
    pub fn set_current(&mut self, t: Option<T>) {
        self.current = t;
    }

    /// Queues a ready thread (`OutOfMemory` if the queue cannot grow).
    pub fn enqueue(&mut self, prio: u8, t: T) -> Result<(), Error> {
        self.runq.push(prio, t)
    }

    /// Makes room for a thread with table index `slot`, so queueing it
    /// never allocates.
    pub fn reserve_slot(&mut self, slot: usize) -> Result<(), Error> {
        self.runq.reserve_slot(slot)
    }

    /// The highest priority of a ready thread.
    pub fn highest(&self) -> Option<u8> {
        self.runq.highest()
    }

    /// Takes a thread out of the queue (it stopped being ready).
    pub fn dequeue(&mut self, prio: u8, t: T) {
        self.runq.remove(prio, t);
    }

    /// Moves a queued thread to another priority.
    pub fn requeue(&mut self, old: u8, new: u8, t: T) -> Result<(), Error> {
        self.runq.remove(old, t);
        self.runq.push(new, t)
    }

    /// Whether a running thread of priority `prio` keeps the CPU: after a
    /// yield only if no other thread of its priority or higher is ready,
    /// otherwise unless a higher-priority thread is.
    pub fn keeps_cpu(&self, after: After, prio: u8) -> bool {
        match (after, self.runq.highest()) {
            (After::Block, _) => false,
            (_, None) => true,
            (After::Yield, Some(h)) => h < prio,
            (After::Continue, Some(h)) => h <= prio,
        }
    }

    /// Takes the next thread to run: the first of the highest priority.
    pub fn pick(&mut self) -> Option<T> {
        self.runq.pop().map(|(_, t)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yield_gives_way_to_equal_priority_and_continue_only_to_higher() {
        let mut s = Scheduler::new();
        s.reserve_slot(25).unwrap();
        assert!(s.keeps_cpu(After::Yield, 5), "nothing else is ready");
        s.enqueue(5, 'a').unwrap();
        assert!(!s.keeps_cpu(After::Yield, 5));
        assert!(s.keeps_cpu(After::Continue, 5));
        assert!(s.keeps_cpu(After::Yield, 6));
        s.enqueue(9, 'b').unwrap();
        assert!(!s.keeps_cpu(After::Continue, 5));
        assert_eq!(s.pick(), Some('b'));
        s.requeue(5, 20, 'a').unwrap();
        assert!(!s.keeps_cpu(After::Continue, 10));
        s.dequeue(20, 'a');
        assert_eq!(s.pick(), None);
    }
}

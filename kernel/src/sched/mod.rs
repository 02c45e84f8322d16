//! Scheduling: which thread runs next. Written by hand: core competence.
//! Portable and host-tested.
//!
//! One [`Scheduler`] per CPU (its run queues and running thread);
//! `task::Kernel` places woken threads, steals for idle CPUs and balances
//! between them. Three classes, each only running when the ones above have
//! nothing ready:
//! - real time ([`Class::RoundRobin`], [`Class::Fifo`]): fixed priorities
//!   0 (lowest) … 31, FIFO within a priority ([`runq`], an O(1) bitmap); a
//!   round-robin thread gives way to its equals when its slice ends, a
//!   FIFO thread only when it blocks or yields; a higher priority woken
//!   preempts at once;
//! - normal ([`Class::Normal`]): CFS-like, by virtual run time weighted by
//!   the nice value ([`fair`], O(log n)), each thread's slice its weight's
//!   share of the latency period; a thread woken with a virtual time more
//!   than the wake-up granularity below the running one's preempts it;
//! - idle ([`Class::Idle`]): round-robin when nothing else is ready.
//!
//! New threads are round-robin at priority 10 ([`Params::default`]), so
//! threads that never ask are scheduled as fixed-priority threads, as in
//! seL4. The scheduler keeps the run queues and the running thread; the
//! thread table keeps each thread's state and [`Params`] (`task::Kernel`
//! moves threads between the two, keeping the invariants below).
//!
//! Invariants (with `task::Kernel`): every `Ready` thread is queued once,
//! in its class's queue (at its priority for real time); `Suspended` and
//! `Running` threads are not queued; `current` is the `Running` thread, or
//! `None` right after it died.
#![forbid(unsafe_code)]

pub mod fair;
pub mod heap;
pub mod runq;

use fair::FairQueue;
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

/// A scheduling class (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Real time, fixed priority, time-sliced among equals.
    RoundRobin,
    /// Real time, fixed priority, runs until it blocks or yields.
    Fifo,
    /// CFS-like, by weighted virtual run time.
    Normal,
    /// Only when nothing else is ready.
    Idle,
}

/// Default priority of new threads.
pub const DEFAULT_PRIORITY: u8 = 10;
/// Default round-robin slice.
pub const RR_SLICE_NS: u64 = 5_000_000;
/// The shortest round-robin slice a thread may ask for.
pub const MIN_SLICE_NS: u64 = 100_000;
/// The longest.
pub const MAX_SLICE_NS: u64 = 1_000_000_000;

/// A thread's scheduling parameters and virtual run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Its class.
    pub class: Class,
    /// Real-time priority, 0 … 31 (kept, unused, in the other classes).
    pub prio: u8,
    /// Nice value, -20 … 19 (normal class).
    pub nice: i8,
    /// Round-robin slice in ns.
    pub slice_ns: u64,
    /// Virtual run time in ns (normal class).
    pub vruntime: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            class: Class::RoundRobin,
            prio: DEFAULT_PRIORITY,
            nice: 0,
            slice_ns: RR_SLICE_NS,
            vruntime: 0,
        }
    }
}

impl Params {
    /// Whether it is real time.
    pub fn real_time(&self) -> bool {
        matches!(self.class, Class::RoundRobin | Class::Fifo)
    }

    /// The priority IPC queues order it by: its real-time priority, 0 in
    /// the other classes.
    pub fn ipc_priority(&self) -> u8 {
        if self.real_time() { self.prio } else { 0 }
    }
}

/// The run queues and the running thread of a CPU.
pub struct Scheduler<T> {
    rt: RunQueue<T>,
    fair: FairQueue<T>,
    idle: RunQueue<T>,
    current: Option<T>,
    queued: usize,
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
            rt: RunQueue::new(),
            fair: FairQueue::new(),
            idle: RunQueue::new(),
            current: None,
            queued: 0,
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

    /// Makes room for a thread with table index `slot`, so queueing it
    /// never allocates.
    pub fn reserve_slot(&mut self, slot: usize) -> Result<(), Error> {
        self.rt.reserve_slot(slot)?;
        self.fair.reserve_slot(slot)?;
        self.idle.reserve_slot(slot)
    }

    /// Queues a ready thread in its class; a normal thread `waking` (new,
    /// resumed or woken, not preempted) is placed against the queue's
    /// virtual time first.
    pub fn enqueue(&mut self, t: T, p: &mut Params, waking: bool) -> Result<(), Error> {
        self.queued += 1;
        let r = match p.class {
            Class::RoundRobin | Class::Fifo => self.rt.push(p.prio, t),
            Class::Normal => {
                p.vruntime = self.fair.place(p.vruntime, waking);
                self.fair.push(t, p.vruntime, p.nice)
            }
            Class::Idle => self.idle.push(0, t),
        };
        self.queued -= usize::from(r.is_err());
        r
    }

    /// Takes a thread out of its queue (it stopped being ready).
    pub fn dequeue(&mut self, t: T, p: &Params) {
        let gone = match p.class {
            Class::RoundRobin | Class::Fifo => self.rt.remove(p.prio, t),
            Class::Normal => self.fair.remove(t),
            Class::Idle => self.idle.remove(0, t),
        };
        self.queued -= usize::from(gone);
    }

    /// Takes the next thread to run: real time by priority, then the
    /// normal thread with the least virtual time, then idle.
    pub fn pick(&mut self) -> Option<T> {
        let t = match self.rt.pop() {
            Some((_, t)) => Some(t),
            None => match self.fair.pop_min() {
                Some((t, _)) => Some(t),
                None => self.idle.pop().map(|(_, t)| t),
            },
        };
        self.queued -= usize::from(t.is_some());
        t
    }

    /// Threads queued.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// The queued threads in about the order they would run (real time by
    /// priority, normal, idle), for another CPU to steal one.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.rt
            .iter()
            .chain(self.fair.iter())
            .chain(self.idle.iter())
    }

    /// Whether a running thread with `p` keeps the CPU: after a yield only
    /// if nothing that ranks with it or above is ready, otherwise unless
    /// something above it is.
    #[inline(always)]
    pub fn keeps_cpu(&self, after: After, p: &Params) -> bool {
        let yielding = match after {
            After::Block => return false,
            After::Yield => true,
            After::Continue => false,
        };
        let rt = self.rt.highest();
        match p.class {
            Class::RoundRobin | Class::Fifo => match rt {
                None => true,
                Some(h) => h < p.prio || (!yielding && h == p.prio),
            },
            // A normal thread gives way to one woken with a virtual time
            // well below its own (CFS's wake-up preemption).
            Class::Normal => {
                rt.is_none()
                    && match self.fair.peek_min() {
                        None => true,
                        Some(_) if yielding => false,
                        Some((_, v)) => !fair::should_preempt(p.vruntime, v),
                    }
            }
            Class::Idle => {
                rt.is_none() && self.fair.is_empty() && (!yielding || self.idle.highest().is_none())
            }
        }
    }

    /// The slice of a running thread with `p`, in ns (`u64::MAX`: FIFO,
    /// unlimited).
    pub fn slice_ns(&self, p: &Params) -> u64 {
        match p.class {
            Class::Fifo => u64::MAX,
            Class::RoundRobin => p.slice_ns,
            Class::Normal => self.fair.slice_ns(p.nice),
            Class::Idle => RR_SLICE_NS,
        }
    }

    /// Whether a ready thread takes the CPU from a running thread with `p`
    /// when its slice ends.
    pub fn contended(&self, p: &Params) -> bool {
        p.class != Class::Fifo && !self.keeps_cpu(After::Yield, p)
    }

    /// Charges a running thread with `p` for `ran_ns` of CPU (its virtual
    /// run time, in the normal class).
    pub fn charge(&mut self, p: &mut Params, ran_ns: u64) {
        if p.class == Class::Normal {
            p.vruntime = fair::charge(p.vruntime, ran_ns, p.nice);
            self.fair.update_min(Some(p.vruntime));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rr(prio: u8) -> Params {
        Params {
            prio,
            ..Params::default()
        }
    }

    fn class(class: Class) -> Params {
        Params {
            class,
            ..Params::default()
        }
    }

    #[test]
    fn a_yield_gives_way_to_equal_priority_and_continue_only_to_higher() {
        let mut s = Scheduler::new();
        s.reserve_slot(25).unwrap();
        assert!(s.keeps_cpu(After::Yield, &rr(5)), "nothing else is ready");
        s.enqueue('a', &mut rr(5), true).unwrap();
        assert!(!s.keeps_cpu(After::Yield, &rr(5)));
        assert!(s.keeps_cpu(After::Continue, &rr(5)));
        assert!(s.keeps_cpu(After::Yield, &rr(6)));
        assert!(s.contended(&rr(5)), "sliced among equals");
        assert!(!s.contended(&rr(6)), "alone at its priority");
        assert_eq!(s.slice_ns(&rr(5)), RR_SLICE_NS);
        assert_eq!(s.slice_ns(&class(Class::Fifo)), u64::MAX);
        assert!(!s.contended(&Params {
            prio: 5,
            ..class(Class::Fifo)
        }));
        s.enqueue('b', &mut rr(9), true).unwrap();
        assert!(!s.keeps_cpu(After::Continue, &rr(5)));
        assert_eq!(s.pick(), Some('b'));
        s.dequeue('a', &rr(5));
        assert_eq!(s.pick(), None);
    }

    #[test]
    fn real_time_beats_normal_beats_idle() {
        let mut s = Scheduler::new();
        s.reserve_slot(25).unwrap();
        s.enqueue('i', &mut class(Class::Idle), true).unwrap();
        assert!(!s.keeps_cpu(After::Yield, &class(Class::Idle)));
        assert!(s.keeps_cpu(After::Continue, &class(Class::Idle)));
        assert!(s.keeps_cpu(After::Yield, &class(Class::Normal)));
        s.enqueue('n', &mut class(Class::Normal), true).unwrap();
        assert!(
            !s.keeps_cpu(After::Continue, &class(Class::Idle)),
            "normal preempts idle"
        );
        assert!(
            s.keeps_cpu(After::Continue, &class(Class::Normal)),
            "equal virtual times"
        );
        assert!(!s.keeps_cpu(After::Yield, &class(Class::Normal)));
        assert!(s.contended(&class(Class::Normal)));
        s.enqueue('r', &mut rr(0), true).unwrap();
        assert!(
            !s.keeps_cpu(After::Continue, &class(Class::Normal)),
            "real time preempts normal"
        );
        assert!(s.keeps_cpu(After::Yield, &rr(1)));
        assert_eq!(
            (s.pick(), s.pick(), s.pick(), s.pick()),
            (Some('r'), Some('n'), Some('i'), None)
        );
    }

    #[test]
    fn a_normal_thread_woken_well_behind_preempts() {
        let mut s = Scheduler::new();
        s.reserve_slot(25).unwrap();
        let mut cur = class(Class::Normal);
        s.charge(&mut cur, 10_000_000);
        // Placed 3 ms (the sleeper credit) below the floor of 10 ms.
        let mut sleeper = class(Class::Normal);
        s.enqueue('s', &mut sleeper, true).unwrap();
        assert_eq!(sleeper.vruntime, 10_000_000 - fair::SLEEPER_CREDIT_NS);
        assert!(!s.keeps_cpu(After::Continue, &cur), "woken 3 ms behind");
        s.dequeue('s', &sleeper);
        let mut close = Params {
            vruntime: 9_500_000,
            ..class(Class::Normal)
        };
        s.enqueue('c', &mut close, false).unwrap();
        assert!(s.keeps_cpu(After::Continue, &cur), "within the granularity");
        assert!(!s.keeps_cpu(After::Yield, &cur));
    }

    #[test]
    fn normal_threads_run_least_virtual_time_first_and_are_charged_by_weight() {
        let mut s = Scheduler::new();
        s.reserve_slot(25).unwrap();
        let (mut a, mut b) = (
            class(Class::Normal),
            Params {
                nice: 5,
                ..class(Class::Normal)
            },
        );
        s.charge(&mut a, 1_000_000);
        s.charge(&mut b, 1_000_000);
        assert_eq!(a.vruntime, 1_000_000);
        assert!(b.vruntime > 3 * a.vruntime, "nice 5 weighs about a third");
        s.enqueue('b', &mut b, false).unwrap();
        s.enqueue('a', &mut a, false).unwrap();
        assert_eq!(s.pick(), Some('a'));
        assert_eq!(s.pick(), Some('b'));
        assert_eq!(a.ipc_priority(), 0);
        assert_eq!(rr(7).ipc_priority(), 7);
    }
}

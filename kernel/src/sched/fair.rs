//! The run queue of the normal (CFS-like) class: ready threads ordered by
//! virtual run time, so the thread that has had the least CPU, scaled by
//! its weight, runs next. Written by hand: core competence. Portable and
//! host-tested.
//!
//! A thread's weight comes from its nice value ([`weight`], Linux's
//! table); running for `t` ns adds `t * 1024 / weight` to its virtual run
//! time ([`charge`]), so over time threads get CPU in proportion to their
//! weights. The queue keeps `min_vruntime`, a monotonic floor that new and
//! woken threads are placed against ([`FairQueue::place`]), and the sum
//! of queued weights, so a slice ([`FairQueue::slice_ns`]) is O(1).
//!
//! The order is a [`SlotHeap`] keyed by virtual time (FIFO among equal
//! times), indexed by the thread's table slot ([`Slot`]):
//! [`FairQueue::reserve_slot`] makes room when a thread is made, so
//! `push`, `remove` and `pop_min` never allocate and never fail for room.
//! Push, remove (of any queued thread) and pop are O(log n); the rest
//! O(1).
//!
//! Invariants: `total_weight` is the sum of `weights[slot]` over the
//! queued slots; `min_vruntime` never decreases. Virtual times saturate at `u64::MAX`
//! (centuries at nice 0, years at nice 19) rather than wrap.

use super::heap::SlotHeap;
use super::runq::Slot;
use crate::mm::kref::oom;
use alloc::vec::Vec;
use keel_abi::Error;

/// The period over which every ready thread should run once, in ns.
pub const LATENCY_NS: u64 = 6_000_000;
/// The shortest slice, in ns: past `LATENCY_NS / MIN_GRANULARITY_NS`
/// threads the period stretches instead.
pub const MIN_GRANULARITY_NS: u64 = 750_000;
/// How much smaller a woken thread's virtual time must be than the
/// running one's for it to preempt, in ns.
pub const WAKEUP_GRANULARITY_NS: u64 = 1_000_000;
/// The most virtual time a new or woken thread is placed below
/// `min_vruntime`: a sleeper gets a little credit, never a bank of it.
pub const SLEEPER_CREDIT_NS: u64 = LATENCY_NS / 2;
/// The weight of nice 0.
pub const NICE_0_WEIGHT: u32 = 1024;

/// Linux's `sched_prio_to_weight`, nice -20 ..= 19: each step is about
/// 1.25×, so one nice level is about 10% of CPU between two threads.
const WEIGHTS: [u32; 40] = [
    88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916, // -20
    9548, 7620, 6100, 4904, 3906, 3121, 2501, 1991, 1586, 1277, // -10
    1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, // 0
    110, 87, 70, 56, 45, 36, 29, 23, 18, 15, // 10
];

/// The weight of nice `nice`, clamped to -20 ..= 19.
pub fn weight(nice: i8) -> u32 {
    WEIGHTS[(nice.clamp(-20, 19) + 20) as usize]
}

/// `vruntime` after running `ran_ns` at nice `nice` (saturating).
pub fn charge(vruntime: u64, ran_ns: u64, nice: i8) -> u64 {
    let delta = u128::from(ran_ns) * u128::from(NICE_0_WEIGHT) / u128::from(weight(nice));
    vruntime.saturating_add(u64::try_from(delta).unwrap_or(u64::MAX))
}

/// Whether a thread woken with `woken_vruntime` should preempt the running
/// one: its virtual time is smaller by more than [`WAKEUP_GRANULARITY_NS`].
pub fn should_preempt(current_vruntime: u64, woken_vruntime: u64) -> bool {
    current_vruntime.saturating_sub(woken_vruntime) > WAKEUP_GRANULARITY_NS
}

/// Ready threads of the normal class by virtual run time (see the module
/// docs).
pub struct FairQueue<T> {
    heap: SlotHeap<T>,
    /// The weight each queued slot was pushed with.
    weights: Vec<u32>,
    min_vruntime: u64,
    total_weight: u64,
}

impl<T: PartialEq + Copy + Slot> FairQueue<T> {
    /// An empty queue with `min_vruntime` 0.
    pub const fn new() -> Self {
        FairQueue {
            heap: SlotHeap::new(),
            weights: Vec::new(),
            min_vruntime: 0,
            total_weight: 0,
        }
    }

    /// Makes room for a thread with table index `slot` (done when a thread
    /// is made, so that queueing it never needs memory).
    pub fn reserve_slot(&mut self, slot: usize) -> Result<(), Error> {
        self.heap.reserve_slot(slot)?;
        let more = (slot + 1).saturating_sub(self.weights.len());
        self.weights.try_reserve(more).map_err(oom)?;
        self.weights.resize(self.weights.len() + more, 0);
        Ok(())
    }

    /// Queues `t` with virtual time `vruntime` at nice `nice`
    /// (`OutOfMemory` if its slot was never reserved, `InvalidState` if it
    /// is queued already). Use [`Self::place`] for `vruntime` first.
    pub fn push(&mut self, t: T, vruntime: u64, nice: i8) -> Result<(), Error> {
        let w = self.weights.get_mut(t.slot()).ok_or(Error::OutOfMemory)?;
        self.heap.push(t, vruntime)?;
        *w = weight(nice);
        self.total_weight += u64::from(*w);
        Ok(())
    }

    /// Takes `t` out of the queue; whether it was queued.
    pub fn remove(&mut self, t: T) -> bool {
        if !self.heap.remove(t) {
            return false;
        }
        if let Some(w) = self.weights.get(t.slot()) {
            self.total_weight -= u64::from(*w);
        }
        true
    }

    /// The thread with the smallest virtual time (first queued among
    /// equals), and that time.
    pub fn peek_min(&self) -> Option<(T, u64)> {
        self.heap.peek()
    }

    /// The queued threads, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.heap.iter()
    }

    /// Takes the thread [`Self::peek_min`] names.
    pub fn pop_min(&mut self) -> Option<(T, u64)> {
        let (t, v) = self.peek_min()?;
        self.remove(t).then_some((t, v))
    }

    /// The number of queued threads.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The floor new and woken threads are placed against.
    pub fn min_vruntime(&self) -> u64 {
        self.min_vruntime
    }

    /// The sum of the queued threads' weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Advances `min_vruntime` to the smaller of the queue head's and the
    /// running thread's (`current`) virtual time, never backwards.
    pub fn update_min(&mut self, current: Option<u64>) {
        let head = self.peek_min().map(|(_, v)| v);
        let floor = match (head, current) {
            (Some(h), Some(c)) => h.min(c),
            (Some(v), None) | (None, Some(v)) => v,
            (None, None) => return,
        };
        self.min_vruntime = self.min_vruntime.max(floor);
    }

    /// The virtual time to queue a thread with: a new or woken
    /// (`waking`) thread gets at most [`SLEEPER_CREDIT_NS`] below
    /// `min_vruntime`; a preempted thread keeps its own.
    pub fn place(&self, vruntime: u64, waking: bool) -> u64 {
        if waking {
            vruntime.max(self.min_vruntime.saturating_sub(SLEEPER_CREDIT_NS))
        } else {
            vruntime
        }
    }

    /// The slice of the running thread, of nice `nice` and not queued:
    /// its weight's share of a period of [`LATENCY_NS`] (stretched to
    /// [`MIN_GRANULARITY_NS`] per runnable thread), at least
    /// [`MIN_GRANULARITY_NS`].
    pub fn slice_ns(&self, nice: i8) -> u64 {
        let running = self.len() as u64 + 1;
        let period = LATENCY_NS.max(running.saturating_mul(MIN_GRANULARITY_NS));
        let w = u64::from(weight(nice));
        let share = u128::from(period) * u128::from(w) / u128::from(self.total_weight + w);
        // `share <= period` since `w <= total`.
        (share as u64).max(MIN_GRANULARITY_NS)
    }
}

impl<T: PartialEq + Copy + Slot> Default for FairQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use proptest::prelude::*;

    fn queue() -> FairQueue<char> {
        let mut q = FairQueue::new();
        q.reserve_slot(25).unwrap();
        q
    }

    /// Checks the weight invariant of the module docs (the heap's own are
    /// tested in `heap`).
    fn check<T: PartialEq + Copy + Slot + core::fmt::Debug>(q: &FairQueue<T>) {
        let sum: u64 = (0..q.weights.len())
            .filter(|&s| q.heap.contains(s))
            .map(|s| u64::from(q.weights[s]))
            .sum();
        assert_eq!(sum, q.total_weight());
    }

    fn drain(q: &mut FairQueue<char>) -> Vec<(char, u64)> {
        core::iter::from_fn(|| q.pop_min()).collect()
    }

    #[test]
    fn pops_in_vruntime_order_with_fifo_ties() {
        let mut q = queue();
        let pushes = [5, 3, 5, 0, 9, 3, 5, 1, 0, 7, 5, 2];
        let mut model = Vec::new();
        for (i, v) in pushes.into_iter().enumerate() {
            let t = char::from(b'a' + i as u8);
            q.push(t, v, 0).unwrap();
            model.push((t, v));
            check(&q);
        }
        model.sort_by_key(|&(_, v)| v); // stable: equal times in push order
        assert_eq!(q.peek_min(), Some(model[0]));
        assert_eq!(q.len(), pushes.len());
        assert_eq!(drain(&mut q), model);
        assert!(q.is_empty());
        assert_eq!(q.total_weight(), 0);
    }

    #[test]
    fn removal_from_the_middle_and_refusals() {
        let mut q = queue();
        for (t, v) in [('a', 10), ('b', 20), ('c', 30), ('d', 40), ('e', 50)] {
            q.push(t, v, 0).unwrap();
        }
        assert_eq!(q.push('c', 1, 0), Err(Error::InvalidState), "queued twice");
        assert!(q.remove('c'));
        assert!(!q.remove('c'));
        assert!(q.remove('b'));
        assert!(!q.remove('z'), "reserved, never queued");
        check(&q);
        q.push('b', 45, 3).unwrap();
        assert_eq!(q.total_weight(), 3 * 1024 + u64::from(weight(3)));
        assert_eq!(drain(&mut q), [('a', 10), ('d', 40), ('b', 45), ('e', 50)]);
        let mut small = FairQueue::new();
        assert_eq!(small.push('c', 0, 0), Err(Error::OutOfMemory));
        assert!(!small.remove('c'));
        small.reserve_slot(2).unwrap();
        small.push('c', 0, 0).unwrap();
        assert_eq!(
            small.reserve_slot(u32::MAX as usize),
            Err(Error::OutOfMemory)
        );
        check(&small);
    }

    #[test]
    fn weights_follow_linux_and_charge_scales_by_them() {
        assert_eq!((weight(0), weight(-20), weight(19)), (1024, 88761, 15));
        assert_eq!((weight(i8::MIN), weight(i8::MAX)), (88761, 15), "clamped");
        for n in -20..19 {
            let ratio = f64::from(weight(n)) / f64::from(weight(n + 1));
            assert!((1.15..1.3).contains(&ratio), "nice {n}: {ratio}");
        }
        assert_eq!(charge(0, 1_000_000, 0), 1_000_000);
        assert_eq!(charge(7, 1_000_000, 0), 1_000_007);
        assert!(charge(0, 1_000_000, -5) < 1_000_000);
        assert_eq!(charge(0, 1_000_000, 19), 1_000_000 * 1024 / 15);
        assert_eq!(charge(u64::MAX - 5, u64::MAX, 19), u64::MAX, "saturates");
        assert!(should_preempt(10_000_000, 8_000_000));
        assert!(!should_preempt(10_000_000, 9_500_000));
        assert!(!should_preempt(8_000_000, 10_000_000));
    }

    #[test]
    fn slices_share_the_period_by_weight() {
        let mut q = queue();
        assert_eq!(q.slice_ns(0), LATENCY_NS, "alone");
        assert_eq!(q.slice_ns(19), LATENCY_NS, "alone");
        q.push('a', 0, 0).unwrap();
        assert_eq!(q.slice_ns(0), LATENCY_NS / 2);
        q.push('b', 0, -20).unwrap();
        assert_eq!(q.slice_ns(19), MIN_GRANULARITY_NS, "floored");
        assert!(q.slice_ns(-20) > q.slice_ns(0));
        let mut q = queue();
        for i in 0..10 {
            q.push(char::from(b'a' + i), 0, 0).unwrap();
        }
        assert_eq!(
            q.slice_ns(0),
            MIN_GRANULARITY_NS,
            "period stretched to 11 × 0.75 ms"
        );
    }

    /// Runs the queue for `total_ns` of CPU as a one-CPU scheduler would:
    /// pick the minimum, run it for its slice, charge it, put it back.
    /// Returns each thread's CPU time.
    fn simulate(q: &mut FairQueue<char>, nice: &[i8], total_ns: u64) -> Vec<u64> {
        let mut cpu = vec![0; nice.len()];
        let mut now = 0;
        while now < total_ns {
            let (t, v) = q.pop_min().unwrap();
            let i = t.slot();
            q.update_min(Some(v));
            let ran = q.slice_ns(nice[i]);
            cpu[i] += ran;
            now += ran;
            let v = charge(v, ran, nice[i]);
            q.update_min(Some(v));
            q.push(t, q.place(v, false), nice[i]).unwrap();
            check(q);
        }
        cpu
    }

    #[test]
    fn hogs_share_cpu_by_weight() {
        let mut q = queue();
        q.push('a', 0, 0).unwrap();
        q.push('b', 0, 5).unwrap();
        let cpu = simulate(&mut q, &[0, 5], 10_000_000_000);
        let ratio = cpu[0] as f64 / cpu[1] as f64;
        let want = f64::from(weight(0)) / f64::from(weight(5));
        assert!((ratio / want - 1.0).abs() < 0.05, "{ratio} vs {want}");

        let mut q = queue();
        let nice = [7, 7, 7];
        for t in ['a', 'b', 'c'] {
            q.push(t, 0, 7).unwrap();
        }
        let cpu = simulate(&mut q, &nice, 10_000_000_000);
        let (lo, hi) = (cpu.iter().min().unwrap(), cpu.iter().max().unwrap());
        assert!((hi - lo) as f64 / *hi as f64 <= 0.01, "{cpu:?}");
    }

    #[test]
    fn a_sleeper_gets_at_most_the_credit() {
        let mut q = queue();
        q.push('a', 0, 0).unwrap();
        // 'b' ran a little, then slept while 'a' ran alone for 1 s.
        simulate(&mut q, &[0, 0], 1_000_000_000);
        let min = q.min_vruntime();
        assert!(min >= 990_000_000, "{min}");
        q.update_min(Some(0));
        assert_eq!(q.min_vruntime(), min, "monotonic");
        let placed = q.place(1_000_000, true);
        assert_eq!(placed, min - SLEEPER_CREDIT_NS);
        assert_eq!(q.place(min + 5, true), min + 5, "keeps a later time");
        assert_eq!(q.place(1_000_000, false), 1_000_000, "preempted: own time");
        let (_, hog) = q.peek_min().unwrap();
        assert!(should_preempt(hog, placed));
        q.push('b', placed, 0).unwrap();
        // From now on 'b' is never more than the credit ahead of 'a'.
        let (mut cpu, mut most) = ([0, 0], 0);
        for _ in 0..1000 {
            let ran = simulate(&mut q, &[0, 0], 1);
            cpu = [cpu[0] + ran[0], cpu[1] + ran[1]];
            most = most.max(cpu[1].saturating_sub(cpu[0]));
        }
        assert_eq!(most, SLEEPER_CREDIT_NS, "{cpu:?}");
        assert!(cpu[0].abs_diff(cpu[1]) <= SLEEPER_CREDIT_NS, "{cpu:?}");
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Tid(usize);

    impl Slot for Tid {
        fn slot(&self) -> usize {
            self.0
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(usize, u64, i8),
        Remove(usize),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..24usize, 0..8u64, -25..25i8).prop_map(|(s, v, n)| Op::Push(s, v, n)),
            (0..24usize).prop_map(Op::Remove),
            Just(Op::Pop),
        ]
    }

    proptest! {
        /// Against a model keyed by `(vruntime, push order)`: the same
        /// threads leave in the same order, refusals agree, and the
        /// invariants hold after every step.
        #[test]
        fn behaves_like_an_ordered_map(ops in proptest::collection::vec(op(), 1..300)) {
            let mut q = FairQueue::new();
            q.reserve_slot(19).unwrap();
            let mut model: BTreeMap<(u64, u64), (usize, u32)> = BTreeMap::new();
            let mut key_of: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Push(s, v, n) => {
                        let want = if s >= 20 {
                            Err(Error::OutOfMemory)
                        } else if key_of.contains_key(&s) {
                            Err(Error::InvalidState)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(q.push(Tid(s), v, n), want);
                        if want.is_ok() {
                            model.insert((v, seq), (s, weight(n)));
                            key_of.insert(s, (v, seq));
                            seq += 1;
                        }
                    }
                    Op::Remove(s) => {
                        let k = key_of.remove(&s);
                        prop_assert_eq!(q.remove(Tid(s)), k.is_some());
                        k.map(|k| model.remove(&k));
                    }
                    Op::Pop => {
                        let want = model.pop_first().map(|((v, _), (s, _))| (Tid(s), v));
                        prop_assert_eq!(q.pop_min(), want);
                        want.map(|(t, _)| key_of.remove(&t.0));
                    }
                }
                check(&q);
                prop_assert_eq!(q.len(), model.len());
                let sum: u64 = model.values().map(|&(_, w)| u64::from(w)).sum();
                prop_assert_eq!(q.total_weight(), sum);
                let head = model.first_key_value().map(|(&(v, _), &(s, _))| (Tid(s), v));
                prop_assert_eq!(q.peek_min(), head);
            }
        }
    }
}

//! Host tests of time-keeping (`clock.rs`): sleepers wake in deadline
//! order, the tickless timer, suspended and killed sleepers, time slices,
//! statistics, the normal class, and the deadline-heap invariant under
//! random operations.
//!
//! The host clock is real (1 GHz), so deadlines are set far in the future
//! (`BASE`) and `on_timer`/`sleep` get explicit times; what `schedule`
//! reads from the real clock only ever lies before `BASE`.

use super::super::*;
use crate::cap::Dest;
use crate::mm::pool::MemoryPool;
use crate::object::thread::Blocked;
use crate::object::{CSpaceRef, ThreadRef};
use crate::sched::{MAX_SLICE_NS, MIN_SLICE_NS, RR_SLICE_NS, Slot};
use crate::syscall::dispatch;
use keel_abi::Syscall;
use keel_abi::cap::{NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::{SchedClass, ThreadInfoKey};
use proptest::prelude::*;

/// A moment the host clock does not reach during the tests (~13 days).
const BASE: u64 = 1 << 50;

struct World {
    k: Kernel,
    cs: CSpaceId,
    home: Home,
    space: KArc<AddressSpaceObject>,
}

fn world() -> World {
    crate::time::init(Some(1_000_000_000));
    crate::arch::host::TIMER.with(|t| t.set(None));
    let mut k = Kernel::new(1).unwrap();
    let pool = KArc::try_new(MemoryPool::new(64)).unwrap();
    let cs = k.caps.create_space(64).unwrap();
    let r = CSpaceRef::new(k.orphans(), cs, 0, None).unwrap();
    let home = r.home();
    insert(&mut k, cs, KObject::CSpace(r), ObjectType::CapSpace);
    let space = AddressSpaceObject::new(0, Some(pool)).unwrap();
    World { k, cs, home, space }
}

fn insert(k: &mut Kernel, cs: CSpaceId, o: KObject, ty: ObjectType) -> usize {
    let tok = k.caps.insert(cs, Dest::Any, o, ty, Rights::ALL, NO_BADGE);
    tok.unwrap().raw() as usize
}

/// Scheduling parameters (no virtual time yet).
fn params(class: Class, prio: u8, nice: i8, slice_ns: u64) -> Params {
    let vruntime = 0;
    Params {
        class,
        prio,
        nice,
        slice_ns,
        vruntime,
    }
}

fn rr(prio: u8) -> Params {
    params(Class::RoundRobin, prio, 0, RR_SLICE_NS)
}

fn fifo(prio: u8) -> Params {
    params(Class::Fifo, prio, 0, RR_SLICE_NS)
}

fn timer() -> Option<u64> {
    crate::arch::host::TIMER.with(|t| t.get())
}

/// The one-shot timer fires at `now`: the architecture disarms it, then
/// tells the kernel.
fn fire(k: &mut Kernel, now: u64) -> After {
    crate::arch::timer_arm(None);
    k.on_timer(now)
}

impl World {
    /// A new ready thread with `p`; returns it and its capability's token.
    fn thread(&mut self, p: Params) -> (ThreadId, usize) {
        let k = &mut self.k;
        let t = k
            .create_thread(self.space.clone(), self.home.clone(), 0x1000, 0x8000, 0)
            .unwrap();
        let r = ThreadRef::new(k.orphans(), t).unwrap();
        let tok = insert(k, self.cs, KObject::Thread(r), ObjectType::Thread);
        k.set_sched(t, p).unwrap();
        k.resume(t).unwrap();
        (t, tok)
    }

    /// Thread `t` makes system call `call`, as `entry::on_syscall` runs it;
    /// its result if the call returned.
    fn sys(&mut self, t: ThreadId, call: Syscall, a: &[usize]) -> Option<Result<usize, Error>> {
        make_current(&mut self.k, t);
        let mut args = [0; 6];
        args[..a.len()].copy_from_slice(a);
        let o = dispatch(&mut self.k, t, self.cs, call as usize, args);
        let v = o.value.map_or_else(Error::to_return_value, |v| v as isize);
        if self.k.return_to(t, v, o.after).is_none() {
            let _ = self.k.schedule(o.after);
        }
        result(&self.k, t)
    }
}

/// Makes ready thread `t` the running one, as if the scheduler had picked
/// it (the running thread goes back to the run queue).
fn make_current(k: &mut Kernel, t: ThreadId) {
    let th = k.thread(t).unwrap();
    if k.current() == Some(t) && th.state() == State::Running {
        return;
    }
    assert_eq!(th.state(), State::Ready, "thread {t} cannot run");
    if let Some(cur) = k.current()
        && k.thread(cur).is_ok_and(|c| c.state() == State::Running)
    {
        k.make_ready(cur, false).unwrap();
    }
    k.dequeue(t);
    k.switch_to(t);
}

/// `t`'s system-call result, unless it is blocked or gone.
fn result(k: &Kernel, t: ThreadId) -> Option<Result<usize, Error>> {
    let th = k.thread(t).ok()?;
    if th.state() == State::Blocked {
        return None;
    }
    Error::from_return_value(th.regs().result())
}

fn state(k: &Kernel, t: ThreadId) -> Option<State> {
    k.thread(t).ok().map(Thread::state)
}

fn sleeping(k: &Kernel, t: ThreadId) -> bool {
    k.thread(t)
        .is_ok_and(|th| th.state() == State::Blocked && th.ipc.blocked == Some(Blocked::Sleep))
}

fn info(k: &Kernel, t: ThreadId, key: ThreadInfoKey) -> usize {
    k.thread_info(t, key).unwrap()
}

#[test]
fn sleepers_wake_in_deadline_order_and_the_timer_is_armed_for_the_earliest() {
    let mut w = world();
    let ts: Vec<ThreadId> = (0..3).map(|_| w.thread(rr(10)).0).collect();
    let (a, b, c) = (ts[0], ts[1], ts[2]);
    for (t, off) in [(a, 300), (b, 100), (c, 200)] {
        w.k.thread_mut(t).unwrap().regs_mut().set_result(0x5a);
        let at = (BASE + off) as usize;
        assert_eq!(w.sys(t, Syscall::Sleep, &[at]), None, "blocks");
        assert!(sleeping(&w.k, t));
    }
    assert_eq!(w.k.clock.deadlines.len(), 3);
    assert!(w.k.cpu().clock.idle(), "nothing left to run");
    w.k.program_timer();
    assert_eq!(timer(), Some(BASE + 100));

    assert_eq!(fire(&mut w.k, BASE + 150), After::Continue, "idle");
    assert_eq!(state(&w.k, b), Some(State::Ready));
    assert_eq!(result(&w.k, b), Some(Ok(0)));
    assert!(sleeping(&w.k, a) && sleeping(&w.k, c));
    w.k.program_timer();
    assert_eq!(timer(), Some(BASE + 200));

    let _ = fire(&mut w.k, BASE + 1000);
    let woken = (Some(State::Ready), Some(Ok(0)));
    for t in [a, c] {
        assert_eq!((state(&w.k, t), result(&w.k, t)), woken);
    }
    assert!(w.k.clock.deadlines.is_empty());
    w.k.program_timer();
    assert_eq!(timer(), None, "tickless: nothing pending, nothing running");

    // Woken in deadline order: b, then c, then a.
    let mut order = Vec::new();
    while let Next::Run(t) = w.k.schedule(After::Continue) {
        if order.is_empty() {
            w.k.program_timer();
            assert_eq!(timer(), Some(w.k.cpu().clock.slice_end), "contended");
        }
        order.push(t);
        w.k.kill(t).unwrap();
    }
    assert_eq!(order, [b, c, a]);
    // The timer may stay armed for the slice that no longer matters
    // (deadlines only move it earlier); once it fires, nothing re-arms it.
    let _ = fire(&mut w.k, u64::MAX / 2);
    w.k.program_timer();
    assert_eq!(timer(), None, "tickless once nothing is pending");
}

#[test]
fn sleeping_until_a_past_deadline_yields_and_blocks_nothing() {
    let mut w = world();
    let (a, _) = w.thread(rr(10));
    make_current(&mut w.k, a);
    assert_eq!(w.k.sleep(a, 100, 200), After::Yield);
    assert_eq!(w.k.sleep(a, 200, 200), After::Yield, "now has passed");
    assert_eq!(state(&w.k, a), Some(State::Running));
    assert!(w.k.clock.deadlines.is_empty());
    // Through the system call: deadline 0 has passed; alone, it keeps the CPU.
    while crate::arch::clock_ticks() == 0 {}
    assert_eq!(w.sys(a, Syscall::Sleep, &[0]), Some(Ok(0)));
    assert_eq!(state(&w.k, a), Some(State::Running));
    assert!(w.k.clock.deadlines.is_empty());
}

#[test]
fn suspending_or_killing_a_sleeper_takes_its_deadline() {
    let mut w = world();
    let (a, _) = w.thread(rr(10));
    let (b, _) = w.thread(rr(10));
    for t in [a, b] {
        make_current(&mut w.k, t);
        assert_eq!(w.k.sleep(t, BASE + 100, BASE), After::Block);
        let _ = w.k.schedule(After::Block);
        assert!(w.k.clock.deadlines.contains(t.slot()));
    }
    w.k.suspend(a).unwrap();
    assert!(!w.k.clock.deadlines.contains(a.slot()));
    assert_eq!(w.k.suspend(a), Err(Error::InvalidState), "twice");
    assert_eq!(result(&w.k, a), Some(Err(Error::InvalidState)));
    w.k.kill(b).unwrap();
    assert!(w.k.clock.deadlines.is_empty());
    assert_eq!(w.k.kill(b), Err(Error::InvalidState), "gone");
    assert_eq!(w.k.on_timer(BASE + 1000), After::Continue);
    assert_eq!(state(&w.k, a), Some(State::Suspended), "not woken");
    assert_eq!(result(&w.k, a), Some(Err(Error::InvalidState)));
    w.k.resume(a).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    assert_eq!(result(&w.k, a), Some(Err(Error::InvalidState)));
}

#[test]
fn a_slice_ends_only_when_an_equal_waits_for_the_cpu() {
    let mut w = world();
    let (a, _) = w.thread(rr(10));
    let (b, _) = w.thread(rr(10));
    let t0 = crate::arch::clock_ticks();
    make_current(&mut w.k, a);
    let t1 = crate::arch::clock_ticks();
    let end = w.k.next_deadline().expect("b waits for a's slice");
    assert!(t0 + RR_SLICE_NS <= end && end <= t1 + RR_SLICE_NS);
    w.k.set_priority(b, 5).unwrap();
    assert_eq!(w.k.next_deadline(), None, "below: it never takes over");
    w.k.set_sched(b, fifo(10)).unwrap();
    assert_eq!(w.k.next_deadline(), Some(end), "round-robin a yields");
    w.k.set_sched(a, fifo(10)).unwrap();
    assert_eq!(w.k.next_deadline(), None, "FIFO runs until it yields");
    // A sleeper's deadline counts whatever the slice.
    let (c, _) = w.thread(rr(10));
    w.k.block(c, Blocked::Sleep);
    w.k.dequeue(c);
    w.k.set_deadline(c, BASE);
    assert_eq!(w.k.next_deadline(), Some(BASE));
}

#[test]
fn a_running_fifo_thread_made_round_robin_gets_a_finite_slice() {
    let mut w = world();
    let (a, _) = w.thread(fifo(10));
    make_current(&mut w.k, a);
    let _ = w.thread(rr(10));
    w.k.set_sched(a, rr(10)).unwrap();
    let now = crate::arch::clock_ticks();
    let d = w.k.next_deadline().expect("b waits");
    assert!(d <= now + RR_SLICE_NS, "slice end {d} at {now}");
}

#[test]
fn the_timer_ends_a_slice_at_its_end_and_not_before() {
    let mut w = world();
    let (a, _) = w.thread(rr(10));
    let (b, _) = w.thread(rr(10));
    make_current(&mut w.k, a);
    let end = w.k.cpu().clock.slice_end;
    assert_eq!(w.k.on_timer(end - 1), After::Continue);
    assert_eq!(w.k.on_timer(end), After::Yield);
    assert_eq!(
        w.k.cpu().clock.slice_end,
        end + RR_SLICE_NS,
        "a fresh slice"
    );
    assert_eq!(info(&w.k, a, ThreadInfoKey::RunNs), RR_SLICE_NS as usize);
    assert_eq!(w.k.schedule(After::Yield), Next::Run(b));
    assert_eq!(w.k.on_timer(end + 1), After::Continue, "b's new slice");
}

#[test]
fn switches_and_idle_time_are_counted() {
    let mut w = world();
    let (a, tok) = w.thread(rr(10));
    let (b, _) = w.thread(rr(10));
    assert_eq!(info(&w.k, a, ThreadInfoKey::Switches), 0);
    make_current(&mut w.k, a);
    assert_eq!(w.k.schedule(After::Yield), Next::Run(b));
    assert_eq!(w.k.schedule(After::Yield), Next::Run(a));
    assert_eq!(info(&w.k, a, ThreadInfoKey::Switches), 2);
    assert_eq!(info(&w.k, b, ThreadInfoKey::Switches), 1);
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a), "no switch");
    assert_eq!(info(&w.k, a, ThreadInfoKey::Switches), 2);
    assert_eq!(w.sys(a, Syscall::ThreadInfo, &[tok, 1]), Some(Ok(2)));
    let bad_key = w.sys(a, Syscall::ThreadInfo, &[tok, 99]);
    assert_eq!(bad_key, Some(Err(Error::InvalidArgument)));
    use ThreadInfoKey::{Class as C, Nice, Priority};
    let rr_no = SchedClass::RoundRobin as usize;
    assert_eq!(
        [C, Priority, Nice].map(|k| info(&w.k, a, k)),
        [rr_no, 10, 20]
    );

    w.k.kill(b).unwrap();
    let gone = w.k.thread_info(b, ThreadInfoKey::Switches);
    assert_eq!(gone, Err(Error::InvalidState));
    assert_eq!(w.k.sleep(a, BASE + 100, BASE), After::Block);
    assert_eq!(w.k.schedule(After::Block), Next::Idle);
    let t0 = BASE;
    w.k.go_idle(t0);
    let before = w.k.idle_ticks(t0);
    assert_eq!(w.k.idle_ticks(t0 + 500), before + 500);
    assert_eq!(w.k.on_timer(t0 + 600), After::Continue);
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    assert_eq!(info(&w.k, a, ThreadInfoKey::Switches), 3, "back from idle");
    assert!(!w.k.cpu().clock.idle());
    let after = w.k.idle_ticks(t0 + 10_000);
    assert_eq!(w.k.idle_ticks(t0 + 20_000), after, "no longer idle");
}

#[test]
fn a_ready_thread_moves_to_the_normal_class_and_bad_parameters_change_nothing() {
    let mut w = world();
    let (a, _) = w.thread(rr(10));
    let (b, tok) = w.thread(rr(10));
    make_current(&mut w.k, a);
    let normal = params(Class::Normal, 10, 5, RR_SLICE_NS);
    w.k.set_sched(b, normal).unwrap();
    assert_eq!(state(&w.k, b), Some(State::Ready));
    let normal_no = SchedClass::Normal as usize;
    assert_eq!(info(&w.k, b, ThreadInfoKey::Class), normal_no);
    assert_eq!(info(&w.k, b, ThreadInfoKey::Nice), 25);
    assert_eq!(w.k.schedule(After::Yield), Next::Run(a), "real time first");

    let before = *w.k.thread(b).unwrap().sched();
    for bad in [
        params(Class::Normal, 10, 20, RR_SLICE_NS),
        params(Class::Normal, 10, -21, RR_SLICE_NS),
        rr(32),
        params(Class::RoundRobin, 10, 0, MIN_SLICE_NS - 1),
        params(Class::RoundRobin, 10, 0, MAX_SLICE_NS + 1),
    ] {
        assert_eq!(w.k.set_sched(b, bad), Err(Error::InvalidArgument));
        assert_eq!(*w.k.thread(b).unwrap().sched(), before);
        assert_eq!(state(&w.k, b), Some(State::Ready));
    }
    let rr_no = SchedClass::RoundRobin as usize;
    let bad_calls = [[tok, 0, 20, 0], [tok, rr_no, 32, 0], [tok, rr_no, 5, 99]];
    for bad in [[tok, 0, 5, 1000], [tok, 9, 0, 0]].iter().chain(&bad_calls) {
        let r = w.sys(a, Syscall::ThreadSetSched, bad);
        assert_eq!(r, Some(Err(Error::InvalidArgument)), "{bad:?}");
        assert_eq!(*w.k.thread(b).unwrap().sched(), before);
    }
    w.k.suspend(a).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(b), "no real time");
    assert_eq!(state(&w.k, b), Some(State::Running));
    // Back to real time through the system call.
    let back = w.sys(b, Syscall::ThreadSetSched, &[tok, rr_no, 7, 0]);
    assert_eq!(back, Some(Ok(0)));
    assert_eq!(info(&w.k, b, ThreadInfoKey::Priority), 7);
}

#[derive(Clone, Debug)]
enum Op {
    Sleep(usize, u64),
    Timer(u64),
    Suspend(usize),
    Resume(usize),
    Kill(usize),
    Run(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..60u64).prop_map(|(i, d)| Op::Sleep(i, d)),
        3 => (0..50u64).prop_map(Op::Timer),
        2 => (0..4usize).prop_map(Op::Suspend),
        2 => (0..4usize).prop_map(Op::Resume),
        1 => (0..4usize).prop_map(Op::Kill),
        2 => (0..4usize).prop_map(Op::Run),
    ]
}

proptest! {
    #[test]
    fn a_thread_has_a_deadline_iff_it_sleeps(ops in proptest::collection::vec(op(), 1..80)) {
        let mut w = world();
        let ts: Vec<ThreadId> = (0..4).map(|i| w.thread(rr(9 + (i % 2) as u8)).0).collect();
        let mut now = BASE;
        for op in ops {
            let k = &mut w.k;
            let runnable = |k: &Kernel, t| matches!(state(k, t), Some(State::Ready | State::Running));
            match op {
                Op::Sleep(i, d) if runnable(k, ts[i]) => {
                    make_current(k, ts[i]);
                    let after = k.sleep(ts[i], now + d, now);
                    prop_assert_eq!(after == After::Block, d > 0);
                    let _ = k.schedule(after);
                }
                Op::Run(i) if runnable(k, ts[i]) => make_current(k, ts[i]),
                Op::Sleep(..) | Op::Run(_) => {}
                Op::Timer(dt) => {
                    now += dt;
                    let after = k.on_timer(now);
                    prop_assert!(k.clock.deadlines.peek().is_none_or(|(_, at)| at > now));
                    let _ = k.schedule(after);
                }
                Op::Suspend(i) => {
                    let was = state(k, ts[i]);
                    let r = k.suspend(ts[i]);
                    prop_assert_eq!(r.is_ok(), !matches!(was, None | Some(State::Suspended)));
                    if was == Some(State::Blocked) {
                        prop_assert_eq!(result(k, ts[i]), Some(Err(Error::InvalidState)));
                    }
                    let _ = k.schedule(After::Continue);
                }
                Op::Resume(i) => {
                    let was = state(k, ts[i]);
                    prop_assert_eq!(k.resume(ts[i]).is_ok(), was == Some(State::Suspended));
                }
                Op::Kill(i) => {
                    let alive = state(k, ts[i]).is_some();
                    prop_assert_eq!(k.kill(ts[i]).is_ok(), alive);
                    let _ = k.schedule(After::Continue);
                }
            }
            let sleepers = ts.iter().filter(|&&t| sleeping(&w.k, t)).count();
            prop_assert_eq!(w.k.clock.deadlines.len(), sleepers);
            for &t in &ts {
                prop_assert_eq!(w.k.clock.deadlines.contains(t.slot()), sleeping(&w.k, t), "{}", t);
            }
        }
    }
}

//! Host tests of the portable core over the host stand-in of the arch
//! layer: the thread state machine against a model, system-call decoding
//! (every refusal leaves no trace), and ownership (objects end with their
//! last capability, and give back their charge).

use super::*;
use crate::cap::CapSpace;
use crate::mm::pool::MemoryPool;
use crate::object::thread::TCB_PAGES;
use crate::object::{CSpaceRef, ThreadRef};
use crate::syscall::dispatch;
use keel_abi::Syscall;
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::SystemInfoKey;
use proptest::prelude::*;

const POOL_PAGES: u64 = 4096;

/// A kernel with a root-like process: a capability space holding a pool,
/// an address space, itself and a running thread.
struct World {
    k: Kernel,
    me: ThreadId,
    cs: CSpaceId,
    pool: KArc<MemoryPool>,
    t_pool: usize,
    t_aspace: usize,
    t_cspace: usize,
    space: KArc<AddressSpaceObject>,
    home: Home,
}

fn world() -> World {
    let mut k = Kernel::new(1).unwrap();
    let pool = KArc::try_new(MemoryPool::new(POOL_PAGES)).unwrap();
    let cs = k.caps.create_space(256).unwrap();
    k.set_root(cs);
    let r = CSpaceRef::new(k.orphans(), cs, 0, None).unwrap();
    let home = r.home();
    let space = AddressSpaceObject::new(0, Some(pool.clone())).unwrap();
    let ins = |k: &mut Kernel, o: KObject, ty| {
        k.caps
            .insert(cs, crate::cap::Dest::Any, o, ty, Rights::ALL, NO_BADGE)
            .unwrap()
            .raw() as usize
    };
    let t_pool = ins(&mut k, KObject::Pool(pool.clone()), ObjectType::MemoryPool);
    let t_aspace = ins(
        &mut k,
        KObject::AddressSpace(space.clone()),
        ObjectType::AddressSpace,
    );
    let t_cspace = ins(&mut k, KObject::CSpace(r), ObjectType::CapSpace);
    let me = k
        .create_thread(space.clone(), home.clone(), 0x1000, 0x8000, 0)
        .unwrap();
    let tr = ThreadRef::new(k.orphans(), me).unwrap();
    ins(&mut k, KObject::Thread(tr), ObjectType::Thread);
    k.resume(me).unwrap();
    assert_eq!(k.schedule(After::Continue), Next::Run(me));
    World {
        k,
        me,
        cs,
        pool,
        t_pool,
        t_aspace,
        t_cspace,
        space,
        home,
    }
}

impl World {
    fn call(&mut self, call: Syscall, args: [usize; 6]) -> Result<usize, Error> {
        dispatch(&mut self.k, self.me, self.cs, call as usize, args).value
    }

    /// What a refused call must leave as it was.
    fn trace(&self) -> (u64, u32, usize) {
        (
            self.pool.available(),
            self.k.caps.space(self.cs).map_or(0, |s| s.live()),
            self.k.threads.len(),
        )
    }
}

fn args(a: &[usize]) -> [usize; 6] {
    let mut out = [0; 6];
    for (o, v) in out.iter_mut().zip(a) {
        *o = *v;
    }
    out
}

#[test]
fn refused_calls_leave_no_trace() {
    let mut w = world();
    let before = w.trace();
    let weak_pool = w
        .call(
            Syscall::CapDerive,
            args(&[w.t_pool, Rights::READ.bits() as usize]),
        )
        .unwrap();
    let mid = w.trace();
    let stale = CapToken::from_raw(w.t_pool as u64).raw() as usize ^ (1 << 40);
    let huge = crate::syscall::USER_CSPACE_MAX_SLOTS + 1;
    let refused: &[(Syscall, [usize; 6], Error)] = &[
        (
            Syscall::MemCreate,
            args(&[weak_pool, 4]),
            Error::AccessDenied,
        ),
        (
            Syscall::MemCreate,
            args(&[w.t_aspace, 4]),
            Error::WrongObjectType,
        ),
        (
            Syscall::MemCreate,
            args(&[w.t_pool, 0]),
            Error::InvalidArgument,
        ),
        (
            Syscall::MemCreate,
            args(&[w.t_pool, 1, 0x80]),
            Error::InvalidArgument,
        ),
        (
            Syscall::MemCreate,
            args(&[w.t_pool, 2 * POOL_PAGES as usize]),
            Error::OutOfMemory,
        ),
        (
            Syscall::MemCreate,
            args(&[w.t_pool, usize::MAX]),
            Error::InvalidArgument,
        ),
        (
            Syscall::MemCreate,
            args(&[stale, 1]),
            Error::InvalidCapability,
        ),
        (
            Syscall::CapSpaceCreate,
            args(&[w.t_pool, 0]),
            Error::InvalidArgument,
        ),
        (
            Syscall::CapSpaceCreate,
            args(&[w.t_pool, huge]),
            Error::InvalidArgument,
        ),
        (
            Syscall::CapSpaceCreate,
            args(&[weak_pool, 16]),
            Error::AccessDenied,
        ),
        (
            Syscall::AspaceCreate,
            args(&[w.t_cspace]),
            Error::WrongObjectType,
        ),
        (
            Syscall::ThreadCreate,
            args(&[w.t_aspace, 0, usize::MAX, 0, 0]),
            Error::InvalidArgument,
        ),
        (
            Syscall::ThreadCreate,
            args(&[w.t_pool, 0, 0x1000, 0x2000, 0]),
            Error::WrongObjectType,
        ),
        (
            Syscall::CapDerive,
            args(&[weak_pool, Rights::ALL.bits() as usize]),
            Error::AccessDenied,
        ),
        (
            Syscall::CapDerive,
            args(&[w.t_pool, 1 << 31]),
            Error::InvalidArgument,
        ),
        (
            Syscall::CapGrant,
            args(&[w.t_cspace, w.t_cspace, 1]),
            Error::InvalidArgument,
        ),
        (
            Syscall::Map,
            args(&[w.t_aspace, w.t_pool, 0x40_0000, 0, 1, 0]),
            Error::WrongObjectType,
        ),
        (
            Syscall::Map,
            args(&[w.t_aspace, 0, 0x40_0000, 0, 1, 0xff]),
            Error::InvalidArgument,
        ),
        (
            Syscall::ThreadSetPriority,
            args(&[w.t_pool, 1]),
            Error::WrongObjectType,
        ),
        (Syscall::SystemInfo, args(&[999]), Error::InvalidArgument),
        (Syscall::CapRevoke, args(&[weak_pool]), Error::AccessDenied),
    ];
    for (call, a, expected) in refused {
        assert_eq!(w.call(*call, *a), Err(*expected), "{call:?} {a:x?}");
        assert_eq!(w.trace(), mid, "{call:?} left a trace");
    }
    assert_eq!(
        dispatch(&mut w.k, w.me, w.cs, 0x7ff, [0; 6]).value,
        Err(Error::NoSuchSyscall)
    );
    w.call(Syscall::CapDelete, args(&[weak_pool])).unwrap();
    assert_eq!(w.trace(), before);
}

#[test]
fn objects_end_with_their_last_capability_and_return_their_charge() {
    let mut w = world();
    let start = w.pool.available();
    let cs = w
        .call(Syscall::CapSpaceCreate, args(&[w.t_pool, 16]))
        .unwrap();
    let cs_pages = CapSpace::<KObject>::charge_pages(16);
    assert_eq!(w.pool.available(), start - cs_pages);
    let aspace = w.call(Syscall::AspaceCreate, args(&[w.t_pool])).unwrap();
    let after_aspace = w.pool.available();
    let t = w
        .call(
            Syscall::ThreadCreate,
            args(&[aspace, cs, 0x1000, 0x2000, 0]),
        )
        .unwrap();
    assert_eq!(w.pool.available(), after_aspace - TCB_PAGES, "TCB charged");
    assert_eq!(w.k.threads.len(), 2);
    // A derived capability keeps the thread; the last one ends it.
    let t2 = w
        .call(Syscall::CapDerive, args(&[t, Rights::READ.bits() as usize]))
        .unwrap();
    w.call(Syscall::CapDelete, args(&[t])).unwrap();
    assert_eq!(w.k.threads.len(), 2);
    w.call(Syscall::CapDelete, args(&[t2])).unwrap();
    assert_eq!(w.k.threads.len(), 1, "the last thread capability ended it");
    assert_eq!(w.pool.available(), after_aspace);
    // Deleting a process's space ends its threads.
    let t3 = w
        .call(
            Syscall::ThreadCreate,
            args(&[aspace, cs, 0x1000, 0x2000, 0]),
        )
        .unwrap();
    w.call(Syscall::CapDelete, args(&[cs])).unwrap();
    assert_eq!(w.k.threads.len(), 1);
    assert_eq!(
        w.call(Syscall::ThreadResume, args(&[t3])),
        Err(Error::InvalidState)
    );
    w.call(Syscall::CapDelete, args(&[t3])).unwrap();
    w.call(Syscall::CapDelete, args(&[aspace])).unwrap();
    assert_eq!(w.pool.available(), start);
}

#[test]
fn capability_spaces_cannot_hold_each_other() {
    let mut w = world();
    let start = w.pool.available();
    let a = w
        .call(Syscall::CapSpaceCreate, args(&[w.t_pool, 16]))
        .unwrap();
    let b = w
        .call(Syscall::CapSpaceCreate, args(&[w.t_pool, 16]))
        .unwrap();
    let all = Rights::ALL.bits() as usize;
    assert_eq!(
        w.call(Syscall::CapGrant, args(&[a, b, all])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        w.call(Syscall::CapGrant, args(&[b, a, all])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        w.call(Syscall::CapDelegate, args(&[a, b])),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        w.call(Syscall::CapGrant, args(&[w.t_cspace, a, all])),
        Err(Error::InvalidArgument),
        "the root's own space into one it made"
    );
    // Anything else may go into either.
    let m = w.call(Syscall::MemCreate, args(&[w.t_pool, 1])).unwrap();
    assert!(w.call(Syscall::CapGrant, args(&[m, a, all])).is_ok());
    w.call(Syscall::CapDelete, args(&[m])).unwrap();
    w.call(Syscall::CapDelete, args(&[a])).unwrap();
    w.call(Syscall::CapDelete, args(&[b])).unwrap();
    assert_eq!(
        w.pool.available(),
        start,
        "both spaces and the object are gone"
    );
}

#[test]
fn a_process_dies_with_exactly_its_own_threads() {
    let mut w = world();
    let spaces = [(); 2].map(|_| {
        let cs = w.k.caps.create_space(16).unwrap();
        let r = CSpaceRef::new(w.k.orphans(), cs, 1, None).unwrap();
        (cs, r.home())
    });
    // Interleaved, so that each space's list runs through the other's.
    let mut made = [Vec::new(), Vec::new()];
    for i in 0..6 {
        let (_, home) = &spaces[i % 2];
        let t =
            w.k.create_thread(w.space.clone(), home.clone(), 0x1000, 0x8000, 0);
        made[i % 2].push(t.unwrap());
    }
    // One from the middle of the second list first, by itself.
    w.k.kill(made[1][1]).unwrap();
    w.k.kill_process(spaces[0].0);
    let alive = |k: &Kernel, t: &ThreadId| k.thread(*t).is_ok();
    assert!(
        !made[0].iter().any(|t| alive(&w.k, t)),
        "the first space's all gone"
    );
    assert!(
        alive(&w.k, &made[1][0]) && alive(&w.k, &made[1][2]),
        "the others stay"
    );
    assert!(alive(&w.k, &w.me));
    w.k.kill_process(spaces[1].0);
    assert!(!made[1].iter().any(|t| alive(&w.k, t)));
    assert_eq!(w.k.threads.len(), 1, "only the root thread is left");
}

#[test]
fn exit_of_the_last_root_thread_ends_the_run() {
    let mut w = world();
    assert_eq!(
        w.call(
            Syscall::SystemInfo,
            args(&[SystemInfoKey::CpuCount as usize])
        ),
        Ok(1)
    );
    w.call(Syscall::ThreadExit, args(&[7])).unwrap();
    assert_eq!(w.k.root_exit(), 7);
    assert_eq!(w.k.current(), None);
    assert_eq!(
        w.k.schedule(After::Continue),
        Next::Done("the root task exited")
    );
    let _ = (&w.space, &w.home);
}

/// One step of the thread state machine.
#[derive(Clone, Debug)]
enum Op {
    Create,
    Resume(usize),
    Suspend(usize),
    Kill(usize),
    SetPriority(usize, u8),
    Schedule(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Create),
        3 => any::<usize>().prop_map(Op::Resume),
        1 => any::<usize>().prop_map(Op::Suspend),
        1 => any::<usize>().prop_map(Op::Kill),
        2 => (any::<usize>(), 0u8..40).prop_map(|(i, p)| Op::SetPriority(i, p)),
        3 => any::<bool>().prop_map(Op::Schedule),
    ]
}

/// The model: every thread's state and priority, the ready queue in
/// order, and the running thread.
#[derive(Default)]
struct Model {
    threads: Vec<(ThreadId, State, u8)>,
    queue: Vec<ThreadId>,
    current: Option<ThreadId>,
}

impl Model {
    fn find(&mut self, id: ThreadId) -> Option<&mut (ThreadId, State, u8)> {
        self.threads.iter_mut().find(|t| t.0 == id)
    }

    fn prio(&self, id: ThreadId) -> u8 {
        self.threads.iter().find(|t| t.0 == id).map_or(0, |t| t.2)
    }

    fn highest(&self) -> Option<u8> {
        self.queue.iter().map(|&id| self.prio(id)).max()
    }

    fn pick(&mut self) -> Option<ThreadId> {
        let h = self.highest()?;
        let i = self.queue.iter().position(|&id| self.prio(id) == h)?;
        Some(self.queue.remove(i))
    }
}

proptest! {
    /// Random lifecycle operations agree with the model, step by step, and
    /// the scheduler always runs the first ready thread of the highest
    /// priority.
    #[test]
    fn the_thread_state_machine_follows_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut w = world();
        // The world's own thread is left out: suspend it so it never runs.
        w.k.suspend(w.me).unwrap();
        w.k.cpu_mut().sched.set_current(None);
        let mut m = Model::default();
        let pick = |m: &Model, i: usize| (!m.threads.is_empty()).then(|| m.threads[i % m.threads.len()].0);
        for op in ops {
            match op {
                Op::Create => {
                    let id = w.k.create_thread(w.space.clone(), w.home.clone(), 0x1000, 0x2000, 0).unwrap();
                    m.threads.push((id, State::Suspended, DEFAULT));
                }
                Op::Resume(i) => if let Some(id) = pick(&m, i) {
                    let r = w.k.resume(id);
                    let t = m.find(id).unwrap();
                    if t.1 == State::Suspended {
                        prop_assert_eq!(r, Ok(()));
                        t.1 = State::Ready;
                        m.queue.push(id);
                    } else {
                        prop_assert_eq!(r, Err(Error::InvalidState));
                    }
                },
                Op::Suspend(i) => if let Some(id) = pick(&m, i) {
                    let r = w.k.suspend(id);
                    let t = m.find(id).unwrap();
                    match t.1 {
                        State::Suspended => prop_assert_eq!(r, Err(Error::InvalidState)),
                        s => {
                            prop_assert_eq!(r, Ok(()));
                            t.1 = State::Suspended;
                            if s == State::Ready {
                                m.queue.retain(|&q| q != id);
                            }
                        }
                    }
                },
                Op::Kill(i) => if let Some(id) = pick(&m, i) {
                    prop_assert_eq!(w.k.kill(id), Ok(()));
                    m.threads.retain(|t| t.0 != id);
                    m.queue.retain(|&q| q != id);
                    if m.current == Some(id) {
                        m.current = None;
                    }
                    prop_assert_eq!(w.k.kill(id), Err(Error::InvalidState), "dead stays dead");
                },
                Op::SetPriority(i, p) => if let Some(id) = pick(&m, i) {
                    let r = w.k.set_priority(id, p);
                    if usize::from(p) >= PRIORITIES {
                        prop_assert_eq!(r, Err(Error::InvalidArgument));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        let t = m.find(id).unwrap();
                        t.2 = p;
                        if t.1 == State::Ready {
                            m.queue.retain(|&q| q != id);
                            m.queue.push(id);
                        }
                    }
                },
                Op::Schedule(yields) => {
                    let after = if yields { After::Yield } else { After::Continue };
                    let got = w.k.schedule(after);
                    let running = m.current.filter(|&c| m.threads.iter().any(|t| t.0 == c && t.1 == State::Running));
                    let expected = 'e: {
                        if let Some(cur) = running {
                            let prio = m.prio(cur);
                            let keeps = match (after, m.highest()) {
                                (After::Block, _) => false,
                                (_, None) => true,
                                (After::Yield, Some(h)) => h < prio,
                                (After::Continue, Some(h)) => h <= prio,
                            };
                            if keeps {
                                break 'e Next::Run(cur);
                            }
                            m.find(cur).unwrap().1 = State::Ready;
                            m.queue.push(cur);
                        }
                        match m.pick() {
                            Some(next) => {
                                m.find(next).unwrap().1 = State::Running;
                                m.current = Some(next);
                                Next::Run(next)
                            }
                            None => Next::Done("no runnable threads are left"),
                        }
                    };
                    prop_assert_eq!(got, expected);
                }
            }
            // The kernel's view agrees with the model's.
            for &(id, state, prio) in &m.threads {
                let t = w.k.thread(id).unwrap();
                prop_assert_eq!((t.state(), t.priority()), (state, prio));
            }
            prop_assert_eq!(w.k.threads.len(), m.threads.len() + 1);
        }
    }
}

const DEFAULT: u8 = crate::sched::DEFAULT_PRIORITY;

//! Host tests of placement, stealing, remote kills and hotplug over four
//! simulated CPUs: each step plays one CPU (`Kernel::enter`, and the host
//! stand-in's `CPU` for the memory layer), and the stand-in records IPIs.

use super::super::{Kernel, Next};
use crate::arch::host::{CPU, IPIS};
use crate::cap::CSpaceId;
use crate::mm::kref::KArc;
use crate::mm::pool::MemoryPool;
use crate::object::{AddressSpaceObject, CSpaceRef, Home, ThreadId};
use crate::sched::After;
use keel_abi::Error;
use keel_abi::syscall::ThreadInfoKey;

struct Smp {
    k: Kernel,
    pool: KArc<MemoryPool>,
    space: KArc<AddressSpaceObject>,
    home: Home,
    _cs: CSpaceId,
}

fn smp(cpus: usize) -> Smp {
    let mut k = Kernel::new(cpus).unwrap();
    let pool = KArc::try_new(MemoryPool::new(4096)).unwrap();
    let cs = k.caps.create_space(64).unwrap();
    let home = CSpaceRef::new(k.orphans(), cs, 0, Some((pool.clone(), 0)))
        .unwrap()
        .home();
    let space = AddressSpaceObject::new(0, Some(pool.clone())).unwrap();
    k.start_cpus();
    Smp {
        k,
        pool,
        space,
        home,
        _cs: cs,
    }
}

impl Smp {
    /// Plays CPU `cpu` from now on.
    fn on(&mut self, cpu: usize) -> &mut Kernel {
        CPU.with(|c| c.set(cpu));
        self.k.enter(cpu);
        &mut self.k
    }

    fn thread(&mut self) -> ThreadId {
        self.k
            .create_thread(self.space.clone(), self.home.clone(), 0x1000, 0x8000, 0)
            .unwrap()
    }

    fn cpu_of(&self, t: ThreadId) -> usize {
        self.k.thread_info(t, ThreadInfoKey::Cpu).unwrap()
    }
}

fn take_ipis() -> u64 {
    IPIS.with(|i| i.replace(0))
}

#[test]
fn woken_threads_spread_over_idle_cpus_each_told_by_ipi() {
    let mut w = smp(4);
    let ts: [ThreadId; 4] = core::array::from_fn(|_| w.thread());
    w.on(0);
    take_ipis();
    for &t in &ts {
        w.k.resume(t).unwrap();
    }
    // The first stays with its creator (CPU 0); the rest go to idle CPUs.
    let cpus: [usize; 4] = core::array::from_fn(|i| w.cpu_of(ts[i]));
    assert_eq!(cpus, [0, 1, 2, 3]);
    assert_eq!(take_ipis(), 0b1110, "CPUs 1-3 told; never this one");
    for (cpu, &t) in ts.iter().enumerate() {
        assert_eq!(w.on(cpu).schedule(After::Continue), Next::Run(t));
    }
    assert_eq!(w.k.online_mask(), 0b1111);
}

#[test]
fn an_idle_cpu_steals_queued_work_but_never_a_pinned_thread() {
    let mut w = smp(2);
    let (a, b) = (w.thread(), w.thread());
    w.on(0).resume(a).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    // `b` may only run on CPU 0: it waits behind `a` there.
    w.k.set_affinity(b, 0b01).unwrap();
    w.k.resume(b).unwrap();
    assert_eq!(w.cpu_of(b), 0);
    assert_eq!(
        w.on(1).schedule(After::Continue),
        Next::Idle,
        "pinned: not stolen"
    );
    // Unpinned, it is: CPU 0 kicks idle CPU 1, which takes it.
    w.on(0).set_affinity(b, u64::MAX).unwrap();
    take_ipis();
    w.k.share_work();
    assert_eq!(take_ipis(), 0b10);
    assert_eq!(w.on(1).schedule(After::Continue), Next::Run(b));
    assert_eq!(w.cpu_of(b), 1);
}

#[test]
fn affinity_moves_a_queued_thread_and_a_running_one_at_its_next_entry() {
    let mut w = smp(3);
    let (a, b) = (w.thread(), w.thread());
    w.on(0).resume(a).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    w.k.resume(b).unwrap();
    assert_eq!(w.cpu_of(b), 0, "next on the waker's CPU");
    w.k.set_affinity(b, 0b100).unwrap();
    assert_eq!(w.cpu_of(b), 2, "moved before it ran");
    // `a` runs on CPU 0 and is sent away: CPU 0 is told, and gives it up.
    take_ipis();
    w.on(2);
    w.k.set_affinity(a, 0b010).unwrap();
    assert_eq!(take_ipis(), 0b001);
    w.on(0);
    assert_eq!(w.k.schedule(After::Continue), Next::Idle);
    assert_eq!(w.cpu_of(a), 1);
    assert_eq!(w.on(1).schedule(After::Continue), Next::Run(a));
}

#[test]
fn a_thread_killed_while_running_on_another_cpu_is_freed_before_the_kill_returns() {
    let mut w = smp(2);
    let before = w.pool.available();
    let (a, b) = (w.thread(), w.thread());
    w.on(0).resume(a).unwrap();
    w.k.resume(b).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    assert_eq!(w.on(1).schedule(After::Continue), Next::Run(b));
    let held = w.pool.available();
    // (The shootdown that makes CPU 1 leave it is answered at once here:
    // the host stand-in has no other CPU started.)
    w.on(0).kill(b).unwrap();
    assert_eq!(w.k.thread(b).err(), Some(Error::InvalidState), "gone");
    assert!(
        w.pool.available() > held,
        "its memory is given back at once"
    );
    assert_eq!(w.on(1).schedule(After::Continue), Next::Idle);
    w.on(0).kill(a).unwrap();
    assert_eq!(w.pool.available(), before);
}

#[test]
fn an_offline_cpu_hands_its_threads_over_and_the_boot_cpu_stays_online() {
    let mut w = smp(3);
    let (a, b, c) = (w.thread(), w.thread(), w.thread());
    w.on(0).set_affinity(a, 0b100).unwrap();
    w.k.set_affinity(b, 0b100).unwrap();
    w.k.resume(a).unwrap();
    w.k.resume(b).unwrap();
    w.k.resume(c).unwrap();
    assert_eq!(w.on(2).schedule(After::Continue), Next::Run(a));
    assert_eq!(w.k.set_online(0, false), Err(Error::InvalidArgument));
    assert_eq!(w.k.set_online(3, false), Err(Error::InvalidArgument));
    w.k.set_online(2, false).unwrap();
    assert_eq!(w.k.set_online(2, false), Err(Error::InvalidState));
    assert_eq!(w.k.online_mask(), 0b011);
    assert_ne!(w.cpu_of(b), 2, "its queued thread left at once");
    // Its running thread leaves when it next enters the kernel.
    assert_eq!(w.on(2).schedule(After::Continue), Next::Idle);
    assert_ne!(w.cpu_of(a), 2, "affinity is broken rather than lose it");
    w.on(0).set_online(2, true).unwrap();
    assert_eq!(w.k.online_mask(), 0b111);
}

#[test]
fn a_cpu_with_threads_waiting_pushes_one_to_a_cpu_with_two_fewer() {
    let mut w = smp(2);
    let (a, b, c, d) = (w.thread(), w.thread(), w.thread(), w.thread());
    w.on(0);
    for t in [a, b, c] {
        w.k.set_affinity(t, 0b01).unwrap();
        w.k.resume(t).unwrap();
    }
    w.k.set_affinity(d, 0b10).unwrap();
    w.k.resume(d).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    assert_eq!(w.on(1).schedule(After::Continue), Next::Run(d));
    w.on(0).set_affinity(c, u64::MAX).unwrap();
    w.k.balance();
    assert_eq!((w.cpu_of(b), w.cpu_of(c)), (0, 1), "the one that may move");
    w.k.balance();
    assert_eq!(w.cpu_of(b), 0, "2 against 2: balanced");
}

#[test]
fn the_tls_of_a_thread_running_on_another_cpu_is_refused_until_it_stops() {
    let mut w = smp(2);
    let (a, b) = (w.thread(), w.thread());
    w.on(0).resume(a).unwrap();
    w.k.resume(b).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(a));
    assert_eq!(w.on(1).schedule(After::Continue), Next::Run(b));
    assert_eq!(w.on(0).set_tls(b, 0x5000), Err(Error::InvalidState));
    assert_eq!(w.k.set_tls(a, 0x5000), Ok(()), "its own CPU's thread");
    w.k.suspend(b).unwrap();
    assert_eq!(w.on(1).schedule(After::Continue), Next::Idle);
    assert_eq!(w.on(0).set_tls(b, 0x6000), Ok(()), "stopped");
}

#[test]
fn an_idle_cpu_does_not_keep_a_dead_process_address_space() {
    let mut w = smp(2);
    let busy = w.thread();
    w.on(0).resume(busy).unwrap();
    assert_eq!(w.k.schedule(After::Continue), Next::Run(busy));
    let before = w.pool.available();
    let space = AddressSpaceObject::new(0, Some(w.pool.clone())).unwrap();
    let t =
        w.k.create_thread(space.clone(), w.home.clone(), 0x1000, 0x8000, 0)
            .unwrap();
    w.on(1).resume(t).unwrap();
    assert_eq!(
        w.k.schedule(After::Continue),
        Next::Run(t),
        "its space loaded"
    );
    w.k.suspend(t).unwrap();
    assert_eq!(w.k.schedule(After::Block), Next::Idle);
    w.on(0).kill(t).unwrap();
    drop(space);
    assert_eq!(w.pool.available(), before, "its page tables came back");
}

//! Threads and the kernel state behind one lock: the capability system,
//! the thread table, the run queue. Event-driven (DESIGN.md §1.2): a
//! thread's whole kernel-visible state is its [`Thread`] (saved registers,
//! FP/SIMD state, TLS base); every entry from user mode runs to completion
//! on the CPU's kernel stack and ends by entering user mode with the
//! registers of whichever thread runs next. No kernel code sleeps.
//!
//! Invariants:
//! - `current` names a live thread in state `Running`, or is `None` when
//!   the running thread has just died; every `Ready` thread is in the run
//!   queue exactly once; `Suspended` threads are in no queue.
//! - A thread's `Box` never moves while it lives, so the architecture can
//!   save user registers straight into `regs`.
//! - `loaded` holds the address space whose tree is loaded, keeping it
//!   alive.
//! - A process is, for now, the set of threads sharing a capability space;
//!   killing it kills those threads and destroys the capability space,
//!   which drops every object only it referred to.

use super::runq::{PRIORITIES, RunQueue};
use crate::arch::{self, FpuState, UserRegs};
use crate::cap::{CapSystem, Progress, SpaceId};
use crate::mm::kref::{KArc, try_box};
use crate::mm::quota::Quota;
use crate::mm::user::{UserObject, UserSpace};
use crate::trap::UserFault;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use keel_abi::Error;
use keel_abi::harness::{EXIT_FAIL, EXIT_PASS};
use spin::Mutex;

/// An address space as a kernel object: the space behind a lock. The space
/// charges its page tables to the pool it was made from (`mm::aspace`).
pub struct SpaceCell {
    pub space: Mutex<UserSpace>,
}

impl SpaceCell {
    pub fn new(asid: u16, charge: Option<KArc<Quota>>) -> Result<KArc<SpaceCell>, Error> {
        // On failure the dropped space credits its charge back.
        KArc::try_new(SpaceCell {
            space: Mutex::new(UserSpace::new(asid, charge)?),
        })
    }

    /// The pool the space's page tables are charged to.
    pub fn pool(&self) -> Option<KArc<Quota>> {
        self.space.lock().pool().cloned()
    }
}

/// A capability's reference to a capability space (a process). The space
/// lives while any capability to it does; when the last goes, it is
/// queued ([`Kernel::collect`]) to be destroyed together with every thread
/// running in it (threads do not keep their space alive), and its pool
/// charge is credited.
///
/// Spaces are ranked by `depth` (the root task's is 0, a space made by a
/// thread of a depth-`d` space has `d + 1`), and a capability to a space
/// may only be put into a space of lower rank: references between spaces
/// all point down, so they can never form a cycle that keeps spaces alive.
/// Threads hold no capability, so capabilities to threads cannot close a
/// cycle either.
pub struct CSpaceRef {
    pub id: SpaceId,
    depth: u32,
    charge: Option<(KArc<Quota>, u64)>,
    _orphan: OrphanSlot,
}

impl CSpaceRef {
    /// A reference to space `id` of rank `depth`, whose tables are charged
    /// (`pages` of `pool`) already; credited when the reference goes.
    pub fn new(
        id: SpaceId,
        depth: u32,
        charge: Option<(KArc<Quota>, u64)>,
    ) -> Result<KArc<CSpaceRef>, Error> {
        let slot = OrphanSlot::reserve().inspect_err(|_| {
            if let Some((pool, pages)) = &charge {
                pool.credit(*pages);
            }
        })?;
        KArc::try_new(CSpaceRef {
            id,
            depth,
            charge,
            _orphan: slot,
        })
    }

    /// The space's rank (see the type's docs).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// What a thread running in this space keeps of it.
    pub fn home(&self) -> Home {
        Home {
            id: self.id,
            depth: self.depth,
            pool: self.charge.as_ref().map(|(p, _)| p.clone()),
        }
    }
}

/// The capability space a thread runs in, as the thread keeps it: its id
/// and rank, and the pool its TCB is charged to. It does not keep the
/// space alive.
#[derive(Clone)]
pub struct Home {
    pub id: SpaceId,
    pub depth: u32,
    pool: Option<KArc<Quota>>,
}

impl Drop for CSpaceRef {
    fn drop(&mut self) {
        if let Some((pool, pages)) = &self.charge {
            pool.credit(*pages);
        }
        ORPHANS.lock().push_reserved(Orphan::CSpace(self.id));
    }
}

/// A capability's reference to a thread. A thread lives while any
/// capability to it does (or until it exits or is killed); when the last
/// goes, the thread is queued to be ended ([`Kernel::collect`]), so a
/// thread can never outlive every way to reach it.
pub struct ThreadRef {
    pub id: ThreadId,
    _orphan: OrphanSlot,
}

impl ThreadRef {
    pub fn new(id: ThreadId) -> Result<KArc<ThreadRef>, Error> {
        let slot = OrphanSlot::reserve()?;
        KArc::try_new(ThreadRef { id, _orphan: slot })
    }
}

impl Drop for ThreadRef {
    fn drop(&mut self) {
        ORPHANS.lock().push_reserved(Orphan::Thread(self.id));
    }
}

/// An object whose last reference went, waiting for [`Kernel::collect`]
/// (it cannot be destroyed from inside a capability operation).
#[derive(Clone, Copy)]
enum Orphan {
    CSpace(SpaceId),
    Thread(ThreadId),
}

/// The queue of orphans. Room for one entry is reserved for every live
/// [`OrphanSlot`] (every `CSpaceRef` and `ThreadRef`, and every queued
/// entry not yet collected), so queueing from `Drop` never allocates and
/// never fails.
struct Orphans {
    queue: Vec<Orphan>,
    /// Live slots plus queued entries: the capacity `queue` must have.
    owed: usize,
}

impl Orphans {
    fn push_reserved(&mut self, o: Orphan) {
        // The capacity was reserved by the `OrphanSlot` that is dropping.
        if self.queue.len() < self.queue.capacity() {
            self.queue.push(o);
            ORPHANS_QUEUED.store(true, Ordering::Release);
        }
    }
}

/// Whether [`ORPHANS`] may be non-empty: one load on every system call's
/// path instead of a lock.
static ORPHANS_QUEUED: AtomicBool = AtomicBool::new(false);

static ORPHANS: Mutex<Orphans> = Mutex::new(Orphans {
    queue: Vec::new(),
    owed: 0,
});

/// Room reserved in the orphan queue for one object's last reference.
struct OrphanSlot(());

impl OrphanSlot {
    fn reserve() -> Result<OrphanSlot, Error> {
        let mut o = ORPHANS.lock();
        let owed = o.owed + 1;
        let more = owed.saturating_sub(o.queue.len());
        o.queue.try_reserve(more).map_err(|_| Error::OutOfMemory)?;
        o.owed = owed;
        Ok(OrphanSlot(()))
    }
}

/// What a capability refers to.
#[derive(Clone)]
pub enum KObject {
    Mem(KArc<UserObject>),
    Space(KArc<SpaceCell>),
    Thread(KArc<ThreadRef>),
    CapSpace(KArc<CSpaceRef>),
    Pool(KArc<Quota>),
}

/// Names a thread; stale once the thread is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadId {
    index: u32,
    generation: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Suspended,
    Ready,
    Running,
}

/// Default priority of new threads.
pub const DEFAULT_PRIORITY: u8 = 10;

/// A thread control block.
pub struct Thread {
    pub regs: UserRegs,
    fpu: FpuState,
    tls: usize,
    pub state: State,
    pub priority: u8,
    pub affinity: u64,
    pub space: KArc<SpaceCell>,
    pub cspace: SpaceId,
    /// The capability space the thread runs in; the TCB is charged
    /// ([`TCB_PAGES`]) to its pool.
    home: Home,
}

/// What a thread is charged to its capability space's pool: its TCB (about
/// 1 KiB with the FP/SIMD state) and its slot in the thread table, rounded
/// up to one page.
pub const TCB_PAGES: u64 = 1;
const _: () = assert!(core::mem::size_of::<Thread>() <= 4096);

impl Thread {
    /// The capability space the thread runs in.
    pub fn home(&self) -> &Home {
        &self.home
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(pool) = &self.home.pool {
            pool.credit(TCB_PAGES);
        }
    }
}

struct ThreadSlot {
    generation: u32,
    thread: Option<Box<Thread>>,
}

/// What the scheduler should do after a system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Keep running the current thread if it still can.
    Continue,
    /// Put the current thread behind others of its priority.
    Yield,
}

/// How a run of the root task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Halt when the root task is done.
    Normal,
    /// Exit QEMU with the verdict: pass if the in-kernel tests and the root
    /// task (exit code 0) both passed.
    Test { kernel_failed: usize },
    /// Exit QEMU with `EXIT_PASS` when done (benchmarks).
    Bench,
}

pub struct Kernel {
    pub caps: CapSystem<KObject>,
    threads: Vec<ThreadSlot>,
    free_threads: Vec<u32>,
    runq: RunQueue<ThreadId>,
    current: Option<ThreadId>,
    loaded: Option<KArc<SpaceCell>>,
    pub root_cspace: Option<SpaceId>,
    /// The root task's last thread is gone: the run is over.
    root_done: bool,
    pub mode: RunMode,
    pub cpu_count: usize,
}

pub static KERNEL: Mutex<Option<Kernel>> = Mutex::new(None);

impl Kernel {
    pub fn new(mode: RunMode, cpu_count: usize) -> Kernel {
        Kernel {
            caps: CapSystem::new(),
            threads: Vec::new(),
            free_threads: Vec::new(),
            runq: RunQueue::new(),
            current: None,
            loaded: None,
            root_cspace: None,
            root_done: false,
            mode,
            cpu_count,
        }
    }

    pub fn current(&self) -> Option<ThreadId> {
        self.current
    }

    pub fn thread(&self, id: ThreadId) -> Result<&Thread, Error> {
        self.threads
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.thread.as_deref())
            .ok_or(Error::InvalidState)
    }

    pub fn thread_mut(&mut self, id: ThreadId) -> Result<&mut Thread, Error> {
        self.threads
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.thread.as_deref_mut())
            .ok_or(Error::InvalidState)
    }

    /// A new, suspended thread.
    pub fn create_thread(
        &mut self,
        space: KArc<SpaceCell>,
        home: Home,
        entry: usize,
        stack: usize,
        arg: usize,
    ) -> Result<ThreadId, Error> {
        if entry >= crate::mm::aspace::USER_END || stack > crate::mm::aspace::USER_END {
            return Err(Error::InvalidArgument);
        }
        if let Some(pool) = &home.pool {
            pool.charge(TCB_PAGES)?;
        }
        // From here the charge is the thread's: its `Drop` credits it.
        let thread = try_box(Thread {
            regs: UserRegs::new(entry, stack, arg),
            fpu: FpuState::default(),
            tls: 0,
            state: State::Suspended,
            priority: DEFAULT_PRIORITY,
            affinity: u64::MAX,
            space,
            cspace: home.id,
            home,
        })?;
        let index = match self.free_threads.pop() {
            Some(i) => i,
            None => {
                self.threads
                    .try_reserve(1)
                    .map_err(|_| Error::OutOfMemory)?;
                self.free_threads
                    .try_reserve(self.threads.len() + 1)
                    .map_err(|_| Error::OutOfMemory)?;
                self.threads.push(ThreadSlot {
                    generation: 0,
                    thread: None,
                });
                (self.threads.len() - 1) as u32
            }
        };
        let slot = self
            .threads
            .get_mut(index as usize)
            .ok_or(Error::InvalidState)?;
        slot.thread = Some(thread);
        Ok(ThreadId {
            index,
            generation: slot.generation,
        })
    }

    /// Makes a suspended thread runnable.
    pub fn resume(&mut self, id: ThreadId) -> Result<(), Error> {
        let t = self.thread_mut(id)?;
        if t.state != State::Suspended {
            return Err(Error::InvalidState);
        }
        let prio = t.priority;
        self.runq.push(prio, id)?;
        self.thread_mut(id)?.state = State::Ready;
        Ok(())
    }

    /// Stops a thread until resumed.
    pub fn suspend(&mut self, id: ThreadId) -> Result<(), Error> {
        let t = self.thread_mut(id)?;
        match t.state {
            State::Suspended => return Err(Error::InvalidState),
            State::Ready => {
                let prio = t.priority;
                self.runq.remove(prio, id);
            }
            State::Running => {}
        }
        self.thread_mut(id)?.state = State::Suspended;
        Ok(())
    }

    /// Changes a thread's priority (re-queueing it if it is ready).
    pub fn set_priority(&mut self, id: ThreadId, prio: u8) -> Result<(), Error> {
        if usize::from(prio) >= PRIORITIES {
            return Err(Error::InvalidArgument);
        }
        let t = self.thread_mut(id)?;
        let (old, state) = (t.priority, t.state);
        if state == State::Ready {
            self.runq.push(prio, id)?;
            self.runq.remove(old, id);
        }
        self.thread_mut(id)?.priority = prio;
        Ok(())
    }

    /// Sets a thread's TLS base (taking effect now if it is running).
    pub fn set_tls(&mut self, id: ThreadId, value: usize) -> Result<(), Error> {
        if value >= crate::mm::aspace::USER_END {
            return Err(Error::InvalidArgument);
        }
        let running = self.current == Some(id);
        let t = self.thread_mut(id)?;
        t.tls = value;
        t.regs.set_tls(value);
        if running {
            arch::load_tls(value);
        }
        Ok(())
    }

    /// Removes a thread for good.
    pub fn kill(&mut self, id: ThreadId) -> Result<(), Error> {
        let t = self.thread(id)?;
        let (state, prio, cspace) = (t.state, t.priority, t.cspace);
        if state == State::Ready {
            self.runq.remove(prio, id);
        }
        let slot = self
            .threads
            .get_mut(id.index as usize)
            .ok_or(Error::InvalidState)?;
        let dead = slot.thread.take();
        // A slot whose generation would wrap is retired, so a stale thread
        // capability can never name a new thread.
        if let Some(generation) = slot.generation.checked_add(1) {
            slot.generation = generation;
            // Cannot fail: reserved when the slot was made.
            if self.free_threads.try_reserve(1).is_ok() {
                self.free_threads.push(id.index);
            }
        }
        if self.current == Some(id) {
            self.current = None;
        }
        drop(dead);
        // Checked here, once per thread death, not on every scheduling.
        if Some(cspace) == self.root_cspace && !self.process_alive(cspace) {
            self.root_done = true;
        }
        Ok(())
    }

    /// Kills every thread of the process using capability space `cspace`
    /// and destroys that space.
    pub fn kill_process(&mut self, cspace: SpaceId) {
        // In place, without allocating: this runs when memory may be short.
        for index in 0..self.threads.len() {
            let Some(slot) = self.threads.get(index) else {
                break;
            };
            if slot.thread.as_ref().is_some_and(|t| t.cspace == cspace) {
                let id = ThreadId {
                    index: index as u32,
                    generation: slot.generation,
                };
                let _ = self.kill(id);
            }
        }
        self.destroy_cspace(cspace);
    }

    /// Destroys capability space `cspace`, dropping every object only it
    /// referred to.
    pub fn destroy_cspace(&mut self, cspace: SpaceId) {
        // Bounded steps; this is a preemption point once the kernel has
        // preemption.
        while let Ok(Progress::More) = self.caps.destroy_space(cspace, 1024, &mut drop) {}
    }

    /// Ends the threads and destroys the capability spaces whose last
    /// reference went (which may release references to more).
    pub fn collect(&mut self) {
        if !ORPHANS_QUEUED.load(Ordering::Acquire) {
            return;
        }
        loop {
            let orphan = {
                let mut o = ORPHANS.lock();
                let Some(orphan) = o.queue.pop() else {
                    ORPHANS_QUEUED.store(false, Ordering::Release);
                    return;
                };
                o.owed = o.owed.saturating_sub(1);
                orphan
            };
            match orphan {
                Orphan::CSpace(id) => self.kill_process(id),
                // Gone already if it exited or was killed.
                Orphan::Thread(id) => {
                    let _ = self.kill(id);
                }
            }
        }
    }

    /// Whether any thread uses capability space `cspace`.
    fn process_alive(&self, cspace: SpaceId) -> bool {
        self.threads
            .iter()
            .any(|s| s.thread.as_ref().is_some_and(|t| t.cspace == cspace))
    }

    /// Picks the thread to run next and makes it current; returns its
    /// registers to enter user mode with.
    pub fn schedule(&mut self, after: After) -> *const UserRegs {
        let running = self
            .current
            .and_then(|cur| Some((cur, self.thread(cur).ok()?)))
            .filter(|(_, t)| t.state == State::Running)
            .map(|(cur, t)| (cur, t.priority));
        if let Some((cur, prio)) = running {
            let preempt = match after {
                After::Yield => self.runq.highest().is_some_and(|h| h >= prio),
                After::Continue => self.runq.highest().is_some_and(|h| h > prio),
            };
            if !preempt {
                return self.regs_of(cur);
            }
            if self.runq.push(prio, cur).is_err() {
                // No room to queue it: it keeps the CPU rather than being lost.
                return self.regs_of(cur);
            }
            if let Ok(t) = self.thread_mut(cur) {
                t.state = State::Ready;
            }
        }
        if self.root_done {
            self.finish("the root task exited");
        }
        let Some((_, next)) = self.runq.pop() else {
            self.finish("no runnable threads are left");
        };
        self.switch_to(next);
        self.regs_of(next)
    }

    /// The saved registers of a live thread.
    fn regs_of(&mut self, id: ThreadId) -> *const UserRegs {
        match self.thread(id) {
            Ok(t) => &raw const t.regs,
            Err(_) => self.finish("the scheduler picked a dead thread"),
        }
    }

    fn switch_to(&mut self, next: ThreadId) {
        if let Some(cur) = self.current
            && cur != next
            && let Ok(t) = self.thread_mut(cur)
        {
            t.fpu.save();
            t.tls = arch::save_tls(t.tls);
            if t.state == State::Running {
                t.state = State::Ready;
            }
        }
        let Ok(n) = self.thread_mut(next) else {
            return;
        };
        n.fpu.restore();
        arch::load_tls(n.tls);
        n.state = State::Running;
        let space = n.space.clone();
        self.current = Some(next);
        if !self
            .loaded
            .as_ref()
            .is_some_and(|l| KArc::ptr_eq(l, &space))
        {
            crate::mm::user::load(&mut space.space.lock());
            self.loaded = Some(space);
        }
    }

    /// Ends the run: the verdict in a test build, a halt otherwise.
    fn finish(&mut self, why: &str) -> ! {
        kprintln!("keel: {why}");
        crate::mm::user::unload();
        self.loaded = None;
        match self.mode {
            RunMode::Normal => {
                kprintln!("keel: nothing left to run; halting (Ctrl-A X leaves QEMU)");
                arch::halt()
            }
            RunMode::Bench => arch::exit(EXIT_PASS),
            RunMode::Test { kernel_failed } => {
                let code = ROOT_EXIT.load(core::sync::atomic::Ordering::Relaxed);
                kprintln!("keel: root task exit code {code}");
                arch::exit(if kernel_failed == 0 && code == 0 {
                    EXIT_PASS
                } else {
                    EXIT_FAIL
                })
            }
        }
    }

    /// The calling thread ends with `code`.
    pub fn exit_current(&mut self, code: isize) {
        let Some(cur) = self.current else { return };
        let Ok(cspace) = self.thread(cur).map(|t| t.cspace) else {
            return;
        };
        if Some(cspace) == self.root_cspace {
            // The root task's verdict is the exit code of its last thread.
            ROOT_EXIT.store(code, core::sync::atomic::Ordering::Relaxed);
        }
        let _ = self.end_thread(cur);
    }

    /// Kills a thread; if nothing else refers to its capability space
    /// (no other thread, no capability), the space goes too.
    pub fn end_thread(&mut self, id: ThreadId) -> Result<(), Error> {
        self.kill(id)?;
        self.collect();
        Ok(())
    }
}

/// Exit code of the root task's last thread to exit (-1 if none has).
static ROOT_EXIT: core::sync::atomic::AtomicIsize = core::sync::atomic::AtomicIsize::new(-1);

fn with_kernel<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    let mut guard = KERNEL.lock();
    match guard.as_mut() {
        Some(k) => f(k),
        None => {
            kprintln!("keel: entry from user mode before the kernel state exists");
            arch::exit(keel_abi::harness::EXIT_CRASH)
        }
    }
}

/// Called by the architecture after a system-call instruction, with the
/// caller's registers saved in its [`Thread`]; returns the registers to
/// enter user mode with.
pub fn on_syscall() -> *const UserRegs {
    with_kernel(|k| {
        let Some(cur) = k.current else {
            return k.schedule(After::Continue);
        };
        let Ok((number, args, cspace)) = k
            .thread(cur)
            .map(|t| (t.regs.syscall_args(), t.cspace))
            .map(|((n, a), c)| (n, a, c))
        else {
            return k.schedule(After::Continue);
        };
        let (result, after) = crate::syscall::dispatch(k, cur, cspace, number, args);
        let value = match result {
            Ok(v) => v as isize,
            Err(e) => e.to_return_value(),
        };
        // Fast path: the caller keeps the CPU unless it yielded, stopped,
        // or woke a thread of higher priority.
        let highest = k.runq.highest();
        let keeps_cpu = after == After::Continue && k.current == Some(cur);
        if let Ok(t) = k.thread_mut(cur) {
            t.regs.set_result(value);
            // The call may have changed the caller's own priority.
            if keeps_cpu && t.state == State::Running && highest.is_none_or(|h| h <= t.priority) {
                return &raw const t.regs;
            }
        }
        k.schedule(after)
    })
}

/// Called by the architecture after a synchronous exception in user mode.
/// Page faults the address space can resolve (demand-zero, copy-on-write)
/// resume the thread; any other fault kills its process and is reported.
pub fn on_user_fault(fault: UserFault) -> *const UserRegs {
    with_kernel(|k| {
        let Some(cur) = k.current else {
            return k.schedule(After::Continue);
        };
        let Ok(t) = k.thread(cur) else {
            return k.schedule(After::Continue);
        };
        let regs: *const UserRegs = &raw const t.regs;
        if let UserFault::PageFault { addr, access } = fault
            && t.space.space.lock().fault(addr, access).is_ok()
        {
            return regs;
        }
        let (pc, cspace) = (t.regs.pc(), t.cspace);
        kprintln!(
            "keel: user fault in thread {}:{}: {} at pc {:#x}; killing its process",
            cur.index,
            cur.generation,
            fault,
            pc
        );
        if Some(cspace) == k.root_cspace {
            ROOT_EXIT.store(
                -(fault_code(&fault) as isize),
                core::sync::atomic::Ordering::Relaxed,
            );
        }
        k.kill_process(cspace);
        k.collect();
        k.schedule(After::Continue)
    })
}

fn fault_code(f: &UserFault) -> usize {
    match f {
        UserFault::PageFault { .. } => 14,
        UserFault::IllegalInstruction => 6,
        UserFault::DivideError => 0,
        UserFault::Breakpoint => 3,
        UserFault::Alignment { .. } => 17,
        UserFault::Other(c) => *c as usize,
    }
}

/// Installs the kernel state and runs the first thread.
pub fn start(kernel: Kernel) -> ! {
    let regs = {
        let mut guard = KERNEL.lock();
        *guard = Some(kernel);
        match guard.as_mut() {
            Some(k) => k.schedule(After::Continue),
            None => arch::halt(),
        }
    };
    // SAFETY: `regs` points into the boxed thread `schedule` made current;
    // it stays valid until the next kernel entry, which saves into it.
    unsafe { arch::enter_user(regs) }
}

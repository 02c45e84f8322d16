//! The thread object: a thread control block (TCB) and the references
//! capabilities hold to it.
//!
//! A TCB is the thread's whole kernel-visible state (DESIGN.md §1.2): saved
//! user registers, FP/SIMD state, TLS base, scheduling state, the address
//! space it runs in and its home capability space. Its `Box` never moves
//! while it lives, so the architecture saves user registers straight into
//! it. It is charged [`TCB_PAGES`] to its home space's pool.
//!
//! Lifecycle (the state machine the scheduler keeps, host-tested in
//! `task`): new threads are `Suspended`; `resume` makes them `Ready`
//! (queued); the scheduler makes one `Running`; `suspend` takes a `Ready`
//! or `Running` thread back to `Suspended`; killing (exit, kill, its
//! process's end, its last capability going) removes it from every queue
//! and the thread table.

use super::{Home, Orphan, OrphanSlot, Orphans};
use crate::arch::{FpuState, UserRegs};
use crate::arena::Id;
use crate::mm::kref::KArc;
use crate::object::{AddressSpaceObject, EndpointId, EndpointRef, NotificationId, NotificationRef};
use keel_abi::Error;

/// Names a thread; stale once the thread is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ThreadId(pub(crate) Id);

impl core::fmt::Display for ThreadId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.0.index(), self.0.generation())
    }
}

/// Scheduling state (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not runnable until resumed (new threads start here).
    Suspended,
    /// Runnable, in the run queue.
    Ready,
    /// On the CPU.
    Running,
    /// Waiting in IPC ([`Ipc::blocked`] says on what).
    Blocked,
}

/// What a `Blocked` thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// To hand its message to a receiver of `ep` (`call`: then to wait for
    /// the reply; a faulted thread is always a caller).
    Send {
        /// The endpoint.
        ep: EndpointId,
        /// Whether it waits for a reply after.
        call: bool,
    },
    /// A message on `ep`.
    Recv {
        /// The endpoint.
        ep: EndpointId,
    },
    /// The reply of `server`, which holds its reply capability.
    Reply {
        /// The thread that received its call.
        server: ThreadId,
    },
    /// Signal bits of `n`.
    Wait {
        /// The notification.
        n: NotificationId,
    },
    /// Its deadline (`Sleep`).
    Sleep,
    /// Nothing: its fault cannot be answered (its handler went away), and
    /// its process is killed when the current call is done (in the
    /// kernel's doomed queue until then; killing it at once, in the middle
    /// of an IPC operation, could strand that operation's threads).
    Doomed,
}

/// A fault waiting to be delivered to, or answered by, a fault handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultMsg {
    /// `trap::UserFault::code`.
    pub code: u64,
    /// The faulting address (0 if none).
    pub addr: u64,
    /// The faulting instruction.
    pub pc: u64,
}

/// A thread's IPC state (the protocol is `task::kernel::ipc`).
#[derive(Default)]
pub struct Ipc {
    /// What it waits for while `Blocked`.
    pub blocked: Option<Blocked>,
    /// Links of the endpoint or notification queue it waits in.
    pub next: Option<ThreadId>,
    /// See `next`.
    pub prev: Option<ThreadId>,
    /// Badge of the endpoint capability it sends through.
    pub badge: u64,
    /// Whether that capability has `GRANT` (it may transfer capabilities).
    pub grant: bool,
    /// The one-shot reply capability: the caller it received last.
    pub reply_to: Option<ThreadId>,
    /// The deadline (clock ticks) of the operation it is in: it fails
    /// with `TimedOut` if still blocked then.
    pub timeout: Option<u64>,
    /// The deadline `IpcTimeout` armed for its next system call.
    pub next_timeout: Option<u64>,
    /// Its IPC buffer page (0: none).
    pub buffer: usize,
    /// Where its faults go: the endpoint and the badge of the capability
    /// it was set from.
    pub fault_handler: Option<(KArc<EndpointRef>, u64)>,
    /// The notification bound to it.
    pub bound: Option<KArc<NotificationRef>>,
    /// The fault it reported, until the handler answers.
    pub fault: Option<FaultMsg>,
}

/// What a thread is charged to its home space's pool: its TCB (about 1 KiB
/// with the FP/SIMD state) and its thread-table slot, rounded up to a page.
pub const TCB_PAGES: u64 = 1;
const _: () = assert!(core::mem::size_of::<Thread>() <= 4096);

impl crate::sched::Slot for ThreadId {
    fn slot(&self) -> usize {
        self.0.index() as usize
    }
}

/// A thread control block.
pub struct Thread {
    regs: UserRegs,
    fpu: FpuState,
    tls: usize,
    pub(crate) state: State,
    /// Scheduling class, priority, nice, virtual run time.
    pub(crate) sched: crate::sched::Params,
    /// CPU time used, in clock ticks.
    pub(crate) run_ticks: u64,
    /// Times it was switched in.
    pub(crate) switches: u64,
    /// The CPU it runs or is queued on, else the one it ran on last.
    pub(crate) cpu: usize,
    affinity: u64,
    space: KArc<AddressSpaceObject>,
    home: Home,
    /// The threads before and after it in its home space's list.
    pub(crate) peers: [Option<ThreadId>; 2],
    /// IPC state.
    pub ipc: Ipc,
}

impl Thread {
    /// A suspended thread of default priority, charged to `home`'s pool
    /// (`OutOfMemory` if it has no room); the charge is the thread's from
    /// then on and its `Drop` credits it.
    pub fn new(
        space: KArc<AddressSpaceObject>,
        home: Home,
        entry: usize,
        stack: usize,
        arg: usize,
    ) -> Result<Thread, Error> {
        if let Some(pool) = home.pool() {
            pool.charge(TCB_PAGES)?;
        }
        Ok(Thread {
            regs: UserRegs::new(entry, stack, arg),
            fpu: FpuState::default(),
            tls: 0,
            state: State::Suspended,
            sched: crate::sched::Params::default(),
            run_ticks: 0,
            switches: 0,
            cpu: 0,
            affinity: u64::MAX,
            space,
            home,
            peers: [None; 2],
            ipc: Ipc::default(),
        })
    }

    /// The saved user registers.
    pub fn regs(&self) -> &UserRegs {
        &self.regs
    }

    /// The saved user registers, to change.
    pub fn regs_mut(&mut self) -> &mut UserRegs {
        &mut self.regs
    }

    /// Its scheduling state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The priority its IPC queues order it by (its real-time priority,
    /// 0 … 31; 0 in the normal and idle classes).
    pub fn priority(&self) -> u8 {
        self.sched.ipc_priority()
    }

    /// Its scheduling parameters.
    pub fn sched(&self) -> &crate::sched::Params {
        &self.sched
    }

    /// The CPUs it may run on, one bit each.
    pub fn affinity(&self) -> u64 {
        self.affinity
    }

    /// Sets the CPUs it may run on (checked by the caller).
    pub fn set_affinity(&mut self, mask: u64) {
        self.affinity = mask;
    }

    /// The address space it runs in.
    pub fn space(&self) -> &KArc<AddressSpaceObject> {
        &self.space
    }

    /// The capability space it runs in.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Sets the TLS base (the caller loads it if the thread is running).
    pub fn set_tls(&mut self, value: usize) {
        self.tls = value;
        self.regs.set_tls(value);
    }

    /// Its registers, FP/SIMD state and TLS base (saved: not running).
    pub fn cpu_state(&self) -> (UserRegs, FpuState, usize) {
        (self.regs.clone(), self.fpu.clone(), self.tls)
    }

    /// Takes another thread's [`Self::cpu_state`], except that the system
    /// call it was in returns 0 here (fork's child).
    pub fn set_cpu_state(&mut self, (regs, fpu, tls): (UserRegs, FpuState, usize)) {
        (self.regs, self.fpu, self.tls) = (regs, fpu, tls);
        self.regs.set_result(0);
    }

    /// Saves the CPU's FP/SIMD and TLS state into the TCB (switching away).
    pub fn save_cpu_state(&mut self) {
        self.fpu.save();
        self.tls = crate::arch::save_tls(self.tls);
    }

    /// Loads the TCB's FP/SIMD and TLS state into the CPU (switching in).
    pub fn load_cpu_state(&self) {
        self.fpu.restore();
        crate::arch::load_tls(self.tls);
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(pool) = self.home.pool() {
            pool.credit(TCB_PAGES);
        }
    }
}

/// A capability's reference to a thread. A thread lives while any
/// capability to it does (or until it exits or is killed); when the last
/// goes, the thread is queued to be ended, so a thread can never outlive
/// every way to reach it.
pub struct ThreadRef {
    id: ThreadId,
    slot: OrphanSlot,
}

impl ThreadRef {
    /// A reference to thread `id`, with room reserved in `orphans` for
    /// queueing the thread when the last reference goes.
    pub fn new(orphans: &KArc<Orphans>, id: ThreadId) -> Result<KArc<ThreadRef>, Error> {
        let slot = Orphans::reserve(orphans)?;
        KArc::try_new(ThreadRef { id, slot })
    }

    /// The thread (stale once it is gone).
    pub fn id(&self) -> ThreadId {
        self.id
    }
}

impl Drop for ThreadRef {
    fn drop(&mut self) {
        self.slot.queue(Orphan::Thread(self.id));
    }
}

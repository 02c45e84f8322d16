//! The kernel's state behind the kernel lock — capabilities, the thread
//! table, the scheduler — and the thread lifecycle over it.
//!
//! A process is, for now, a capability space and the threads running in
//! it: killing it kills those threads and destroys the space, which drops
//! every object only it referred to.
//!
//! Invariants (with `sched`'s): a thread is in the table iff it is alive;
//! `loaded` holds the address space whose tree is loaded, keeping it alive;
//! `root_done` is set once the root task's last thread is gone.

use crate::arch::UserRegs;
use crate::arena::Arena;
use crate::cap::{CSpaceId, CapSystem, Progress};
use crate::mm::kref::{KArc, ensure, try_box};
use crate::object::endpoint::Waiting;
use crate::object::{
    AddressSpaceObject, Endpoint, EndpointId, Home, KObject, Notification, NotificationId, Orphan,
    Orphans, Thread, ThreadId, Timer, thread::State,
};
use crate::sched::{After, Class, PRIORITIES, Params};
use alloc::boxed::Box;
use keel_abi::Error;

/// The kernel's state: capabilities, threads, the scheduler.
pub struct Kernel {
    /// Every capability space and the derivation tree.
    pub caps: CapSystem<KObject>,
    threads: Arena<Box<Thread>>,
    endpoints: Arena<Endpoint>,
    notifications: Arena<Notification>,
    timers: Arena<Timer>,
    orphans: KArc<Orphans>,
    /// Faulted threads whose processes die after the current call.
    doomed: Waiting,
    root: Option<CSpaceId>,
    /// Live threads of the root task.
    root_threads: usize,
    /// The root task's last thread is gone: the run is over.
    root_done: bool,
    /// Exit code of the root task's last thread to exit (-1 if none has).
    root_exit: isize,
    clock: clock::Clock,
    /// Each CPU's state (see `cpu`), one per CPU that came up.
    cpus: alloc::vec::Vec<cpu::Cpu>,
    /// The CPU this entry runs on.
    this: usize,
    devices: device::Devices,
}

/// What runs next on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// This thread, now current.
    Run(ThreadId),
    /// Nothing now: wait for the timer or an interrupt.
    Idle,
    /// Nothing: the run is over, for this reason.
    Done(&'static str),
}

impl Kernel {
    /// No threads, no capability spaces; `cpu_count` CPUs (at least one,
    /// at most `bootinfo::MAX_CPUS`), all offline until `start_cpus`
    /// but this one (CPU 0).
    pub fn new(cpu_count: usize) -> Result<Kernel, Error> {
        let n = cpu_count.clamp(1, crate::bootinfo::MAX_CPUS);
        let mut cpus = alloc::vec::Vec::new();
        cpus.try_reserve_exact(n).map_err(|_| Error::OutOfMemory)?;
        cpus.resize_with(n, cpu::Cpu::default);
        cpus[0].online = true;
        Ok(Kernel {
            caps: CapSystem::new(),
            threads: Arena::new(),
            endpoints: Arena::new(),
            notifications: Arena::new(),
            timers: Arena::new(),
            orphans: Orphans::new()?,
            doomed: Waiting::default(),
            root: None,
            root_threads: 0,
            root_done: false,
            root_exit: -1,
            clock: clock::Clock::new(crate::time::hz()),
            cpus,
            this: 0,
            devices: device::Devices::default(),
        })
    }

    /// The orphan queue the kernel's thread and capability-space
    /// references report to.
    pub fn orphans(&self) -> &KArc<Orphans> {
        &self.orphans
    }

    /// CPUs the kernel runs on (those that came up).
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// Names the root task's capability space (its end ends the run).
    pub fn set_root(&mut self, cspace: CSpaceId) {
        self.root = Some(cspace);
    }

    /// The root task's verdict: its last exit code (-1 if none).
    pub fn root_exit(&self) -> isize {
        self.root_exit
    }

    /// Records the root task's exit code if `cspace` is the root task's.
    pub fn note_exit(&mut self, cspace: CSpaceId, code: isize) {
        if Some(cspace) == self.root {
            self.root_exit = code;
        }
    }

    /// The thread running on this CPU.
    pub fn current(&self) -> Option<ThreadId> {
        self.cpu().sched.current()
    }

    /// The live thread `id` (`InvalidState` once it is gone).
    pub fn thread(&self, id: ThreadId) -> Result<&Thread, Error> {
        self.threads
            .get(id.0)
            .map(|b| &**b)
            .ok_or(Error::InvalidState)
    }

    /// [`Self::thread`], to change.
    pub fn thread_mut(&mut self, id: ThreadId) -> Result<&mut Thread, Error> {
        self.threads
            .get_mut(id.0)
            .map(|b| &mut **b)
            .ok_or(Error::InvalidState)
    }

    /// Makes sure the next [`Self::add_thread`] cannot fail for room.
    pub fn reserve_thread(&mut self) -> Result<(), Error> {
        self.threads.reserve()?;
        let slot = self.threads.next_id().index() as usize;
        self.clock.deadlines.reserve_slot(slot)?;
        self.cpus
            .iter_mut()
            .try_for_each(|c| c.sched.reserve_slot(slot))
    }

    /// The id the next [`Self::add_thread`] will return.
    pub fn next_thread_id(&self) -> ThreadId {
        ThreadId(self.threads.next_id())
    }

    /// Puts a new (suspended) thread into the table, first in its home
    /// space's list (which `kill_process` walks).
    pub fn add_thread(&mut self, mut thread: Box<Thread>) -> Result<ThreadId, Error> {
        let home = thread.home().id();
        let root = Some(home) == self.root;
        (thread.cpu, thread.peers) = (self.this, [None, self.caps.members(home)?.map(ThreadId)]);
        self.reserve_thread()?;
        let next = thread.peers[1];
        let id = self.threads.insert(thread).map(ThreadId)?;
        *self.caps.members(home)? = Some(id.0);
        self.set_peer(next, 0, Some(id));
        self.root_threads += usize::from(root);
        Ok(id)
    }

    /// Sets peer `side` (0: previous, 1: next) of thread `id`, if any.
    fn set_peer(&mut self, id: Option<ThreadId>, side: usize, to: Option<ThreadId>) {
        let t = id.and_then(|id| self.threads.get_mut(id.0));
        if let Some(p) = t.and_then(|t| t.peers.get_mut(side)) {
            *p = to;
        }
    }

    /// A new, suspended thread in `space` and capability space `home`.
    pub fn create_thread(
        &mut self,
        space: KArc<AddressSpaceObject>,
        home: Home,
        entry: usize,
        stack: usize,
        arg: usize,
    ) -> Result<ThreadId, Error> {
        let thread = try_box(Thread::new(space, home, entry, stack, arg)?)?;
        self.add_thread(thread)
    }

    /// Makes room for a new endpoint; returns the id the next
    /// [`Self::add_endpoint`] will give it.
    pub fn reserve_endpoint(&mut self) -> Result<EndpointId, Error> {
        self.endpoints.reserve()?;
        Ok(EndpointId(self.endpoints.next_id()))
    }

    /// Puts a new endpoint into the table.
    pub fn add_endpoint(&mut self) -> Result<EndpointId, Error> {
        self.endpoints.insert(Endpoint::default()).map(EndpointId)
    }

    /// Makes room for a new notification; returns the id the next
    /// [`Self::add_notification`] will give it.
    pub fn reserve_notification(&mut self) -> Result<NotificationId, Error> {
        self.notifications.reserve()?;
        Ok(NotificationId(self.notifications.next_id()))
    }

    /// Puts a new notification into the table.
    pub fn add_notification(&mut self) -> Result<NotificationId, Error> {
        self.notifications
            .insert(Notification::default())
            .map(NotificationId)
    }

    /// Notification `n`, if it exists.
    pub fn notification(&self, n: NotificationId) -> Result<&Notification, Error> {
        self.notifications.get(n.0).ok_or(Error::InvalidState)
    }

    /// Makes a suspended thread runnable.
    pub fn resume(&mut self, id: ThreadId) -> Result<(), Error> {
        let suspended = self.thread(id)?.state() == State::Suspended;
        ensure(suspended, Error::InvalidState)?;
        self.make_ready(id, true)
    }

    /// Stops a thread until resumed.
    pub fn suspend(&mut self, id: ThreadId) -> Result<(), Error> {
        let t = self.thread(id)?;
        match t.state() {
            State::Suspended => return Err(Error::InvalidState),
            State::Ready => self.dequeue(id),
            State::Running => self.recheck(id),
            State::Blocked => self.cancel_ipc(id),
        }
        self.thread_mut(id)?.state = State::Suspended;
        Ok(())
    }

    /// Makes a thread real time at priority `prio` (round-robin unless it
    /// is FIFO already).
    pub fn set_priority(&mut self, id: ThreadId, prio: u8) -> Result<(), Error> {
        let old = *self.thread(id)?.sched();
        let class = if old.class == Class::Fifo {
            Class::Fifo
        } else {
            Class::RoundRobin
        };
        self.set_sched(id, Params { class, prio, ..old })
    }

    /// Changes a thread's scheduling parameters (`InvalidArgument` for a
    /// priority, nice value or slice out of range), re-queueing it if it is
    /// ready or waits in an IPC queue.
    pub fn set_sched(&mut self, id: ThreadId, new: Params) -> Result<(), Error> {
        let slices = crate::sched::MIN_SLICE_NS..=crate::sched::MAX_SLICE_NS;
        let valid = usize::from(new.prio) < PRIORITIES
            && (-20..=19).contains(&new.nice)
            && slices.contains(&new.slice_ns);
        ensure(valid, Error::InvalidArgument)?;
        let t = self.thread(id)?;
        let (state, old) = (t.state(), *t.sched());
        if state == State::Ready {
            self.dequeue(id);
        }
        // A thread entering the normal class starts from the queue's
        // virtual time (`make_ready` places it).
        let fresh = new.class == Class::Normal && old.class != Class::Normal;
        self.thread_mut(id)?.sched = new;
        match state {
            State::Ready => self.make_ready(id, fresh)?,
            State::Blocked => self.requeue_waiter(id),
            // Its slice follows its new class from now (on its CPU).
            State::Running if self.current() == Some(id) => {
                self.new_slice(crate::arch::clock_ticks(), id)
            }
            State::Running => self.recheck(id),
            State::Suspended => {}
        }
        Ok(())
    }

    /// Sets a thread's TLS base (taking effect now if it is running).
    pub fn set_tls(&mut self, id: ThreadId, value: usize) -> Result<(), Error> {
        ensure(value < crate::mm::aspace::USER_END, Error::InvalidArgument)?;
        // Another CPU holds its TLS register, and would save over a new value.
        ensure(!self.running_elsewhere(id), Error::InvalidState)?;
        let running = self.current() == Some(id);
        self.thread_mut(id)?.set_tls(value);
        if running {
            crate::arch::load_tls(value);
        }
        Ok(())
    }

    /// Removes a thread for good.
    pub fn kill(&mut self, id: ThreadId) -> Result<(), Error> {
        let t = self.thread(id)?;
        let (state, cspace, [prev, next]) = (t.state(), t.home().id(), t.peers);
        match (prev, self.caps.members(cspace)) {
            (None, Ok(first)) => *first = next.map(|n| n.0),
            _ => self.set_peer(prev, 1, next),
        }
        self.set_peer(next, 0, prev);
        if state == State::Ready {
            self.dequeue(id);
        }
        let _ = self.arm_next_timeout(id, None);
        self.end_ipc(id);
        if let Some(dead) = self.threads.remove(id.0) {
            self.bury(id, dead);
        }
        // Counted here, once per thread death, not on every scheduling.
        if Some(cspace) == self.root {
            self.root_threads = self.root_threads.saturating_sub(1);
            self.root_done |= self.root_threads == 0;
        }
        Ok(())
    }

    /// Kills every thread of the process of capability space `cspace` and
    /// destroys that space.
    pub fn kill_process(&mut self, cspace: CSpaceId) {
        // Through its list, without allocating: memory may be short.
        while let Some(Some(first)) = self.caps.members(cspace).ok().map(|m| *m) {
            if self.kill(ThreadId(first)).is_err() {
                break;
            }
        }
        // Bounded steps; a preemption point once the kernel has preemption.
        while let Ok(Progress::More) = self.caps.destroy_space(cspace, 1024, &mut drop) {}
    }

    /// Ends the threads and processes whose last capability went (which
    /// may release the last references to more).
    #[inline]
    pub fn collect(&mut self) {
        if self.orphans.pending() || self.doomed.head.is_some() {
            self.collect_all();
        }
    }

    #[inline(never)]
    fn collect_all(&mut self) {
        loop {
            // Ending either may queue more of the other.
            self.kill_doomed();
            let Some(orphan) = self.orphans.next() else {
                if self.doomed.head.is_none() {
                    return;
                }
                continue;
            };
            match orphan {
                Orphan::CSpace(id) => self.kill_process(id),
                // Gone already if it exited or was killed.
                Orphan::Thread(id) => {
                    let _ = self.kill(id);
                }
                Orphan::Endpoint(id) => self.destroy_endpoint(id),
                Orphan::Notification(id) => self.destroy_notification(id),
                Orphan::Irq(line, serial) => self.irq_release(line, serial),
                Orphan::Timer(id) => self.destroy_timer(id),
            }
        }
    }

    /// The calling thread ends with `code` (the system-call dispatcher then
    /// collects what that orphaned).
    pub fn exit_current(&mut self, code: isize) {
        let Some(cur) = self.current() else { return };
        let Ok(cspace) = self.thread(cur).map(|t| t.home().id()) else {
            return;
        };
        // The root task's verdict is the exit code of its last thread.
        self.note_exit(cspace, code);
        let _ = self.kill(cur);
    }

    /// Writes `value` as the result of `cur`'s system call; returns its
    /// registers if it goes on running after a call that asked for
    /// `after` (the fast path back to user mode), else `None` (schedule).
    pub fn return_to(
        &mut self,
        cur: ThreadId,
        value: isize,
        after: After,
    ) -> Option<*const UserRegs> {
        if after == After::Block {
            return None;
        }
        let running = self.current() == Some(cur);
        let (online, bit) = (self.online(), 1 << self.this);
        let c = &self.cpus[self.this];
        let t = self.threads.get_mut(cur.0)?;
        t.regs_mut().set_result(value);
        let here = online && t.affinity() & bit != 0;
        (running && t.state == State::Running && here && c.sched.keeps_cpu(after, &t.sched))
            .then(|| core::ptr::from_ref(t.regs()))
    }

    /// Picks the thread to run next and makes it current.
    pub fn schedule(&mut self, after: After) -> Next {
        if self.root_done {
            return Next::Done("the root task exited");
        }
        if !self.online() {
            self.park();
            return Next::Idle;
        }
        let running = self
            .current()
            .and_then(|cur| Some((cur, self.thread(cur).ok()?)))
            .filter(|(_, t)| t.state() == State::Running)
            .map(|(cur, t)| (cur, *t.sched(), t.affinity() & (1 << self.this) != 0));
        if let Some((cur, params, here)) = running {
            if here && self.cpu().sched.keeps_cpu(after, &params) {
                return Next::Run(cur);
            }
            // Its virtual time must be current before it is queued.
            if params.class == Class::Normal {
                self.charge_current(crate::arch::clock_ticks());
            }
            if self.make_ready(cur, false).is_err() {
                // No room to queue it: it keeps the CPU rather than being lost.
                return Next::Run(cur);
            }
        }
        let Some(next) = self.pick() else {
            if self.waits_for_events() || self.others_busy() {
                self.go_idle(crate::arch::clock_ticks());
                return Next::Idle;
            }
            return Next::Done("no runnable threads are left");
        };
        self.switch_to(next);
        Next::Run(next)
    }

    /// The saved registers of live thread `id`, for the architecture to
    /// enter user mode with.
    pub fn regs_of(&self, id: ThreadId) -> Option<*const UserRegs> {
        self.thread(id).ok().map(|t| core::ptr::from_ref(t.regs()))
    }

    fn switch_to(&mut self, next: ThreadId) {
        self.switch_cpu(next, true);
    }

    /// [`Self::switch_to`]; `slice`: `next` starts a fresh time slice (the
    /// IPC fast path passes `false`: the partner runs on the rest of the
    /// caller's slice, time donation).
    fn switch_cpu(&mut self, next: ThreadId, slice: bool) {
        let c = &mut self.cpus[self.this];
        let cur = c.sched.current();
        let fresh = cur != Some(next) || c.clock.idle();
        let now = crate::arch::clock_ticks();
        // The CPU changes hands: the last thread is charged (or the idle
        // stretch counted), `next` gets a fresh slice. One lookup each.
        let ran = if fresh { c.clock.start_run(now) } else { 0 };
        if let Some(cu) = cur
            && let Some(t) = self.threads.get_mut(cu.0)
        {
            if cu != next {
                t.save_cpu_state();
                if t.state == State::Running {
                    t.state = State::Ready;
                }
            }
            self.clock.charge(&mut c.sched, t, ran);
        }
        let Some(n) = self.threads.get_mut(next.0) else {
            return;
        };
        n.load_cpu_state();
        n.state = State::Running;
        n.cpu = self.this;
        if fresh {
            n.switches += 1;
            if slice {
                let ticks = self.clock.slice_ticks(&c.sched, &n.sched);
                c.clock.set_slice(now, ticks);
            }
        }
        let same = c
            .loaded
            .as_ref()
            .is_some_and(|l| KArc::ptr_eq(l, n.space()));
        let space = (!same).then(|| n.space().clone());
        c.sched.set_current(Some(next));
        if let Some(space) = space {
            crate::mm::user::load(&mut space.lock());
            c.loaded = Some(space);
        }
    }

    /// Leaves no user address space loaded on this CPU (it idles, or the
    /// run is over).
    pub fn unload(&mut self) {
        crate::mm::user::unload();
        self.cpu_mut().loaded = None;
    }
}

mod clock;
mod cpu;
mod device;
mod fastpath;
mod ipc;

pub use ipc::{IpcOutcome, NOTIFICATION_BITS};

#[cfg(test)]
mod tests;

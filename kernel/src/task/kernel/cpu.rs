//! Each CPU's share of the kernel state — its run queues and running
//! thread, its timer and slice, its loaded address space — and the
//! decisions between CPUs: where a woken thread runs, stealing work for an
//! idle CPU, periodic balancing, reschedule IPIs and hotplug. Written by
//! hand (core competence), portable, host-tested over the host stand-in
//! (`arch::host::CPU` plays the CPU, `IPIS` records the IPIs).
//!
//! Invariants (with `Kernel`'s): a thread runs only on the CPU whose
//! `current` it is, and is queued on at most one CPU (`Thread::cpu` says
//! which, and which CPU it last ran on). A CPU going idle saves its
//! thread's state and has no `current`, so a blocked thread's registers
//! are never live in a CPU and it may wake anywhere. A thread killed while
//! it runs on another CPU is freed only once that CPU has entered the
//! kernel (`bury`).
//! An offline CPU runs nothing, queues nothing and has its timer
//! disarmed; the boot CPU, which takes the device interrupts, is never
//! offline.

use super::Kernel;
use super::clock::CpuClock;
use crate::bootinfo::MAX_CPUS;
use crate::mm::kref::{KArc, ensure};
use crate::object::thread::State;
use crate::object::{AddressSpaceObject, Thread, ThreadId};
use crate::sched::Scheduler;
use alloc::boxed::Box;
use keel_abi::Error;

/// One CPU's part of the kernel state.
#[derive(Default)]
pub struct Cpu {
    /// Its run queues and running thread.
    pub(super) sched: Scheduler<ThreadId>,
    /// Its timer, slice and idle time.
    pub(super) clock: CpuClock,
    /// The address space its page-table root holds, kept alive.
    pub(super) loaded: Option<KArc<AddressSpaceObject>>,
    /// Taking part in scheduling.
    pub(super) online: bool,
    /// An IPI is on its way (cleared when it enters the kernel).
    kicked: bool,
}

/// A CPU's load for balancing: its queued threads, plus one if it runs one.
fn load(c: &Cpu) -> usize {
    c.sched.queued() + usize::from(c.sched.current().is_some())
}

impl Kernel {
    /// This CPU's state.
    #[inline]
    pub(super) fn cpu(&self) -> &Cpu {
        &self.cpus[self.this]
    }

    /// [`Self::cpu`], to change.
    #[inline]
    pub(super) fn cpu_mut(&mut self) -> &mut Cpu {
        &mut self.cpus[self.this]
    }

    /// The kernel is entered on CPU `cpu`. Called first by every entry.
    #[inline]
    pub fn enter(&mut self, cpu: usize) {
        self.this = cpu.min(self.cpus.len() - 1);
        self.cpu_mut().kicked = false;
    }

    /// Bit mask of the online CPUs.
    pub fn online_mask(&self) -> u64 {
        (self.cpus.iter().enumerate())
            .filter(|(_, c)| c.online)
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Brings every CPU that came up online (the run starts).
    pub fn start_cpus(&mut self) {
        for c in &mut self.cpus {
            c.online = true;
        }
    }

    /// Sends CPU `cpu` a reschedule IPI unless it is this one or has one
    /// coming.
    pub(super) fn kick(&mut self, cpu: usize) {
        if cpu == self.this {
            return;
        }
        if let Some(c) = self.cpus.get_mut(cpu)
            && !core::mem::replace(&mut c.kicked, true)
        {
            crate::arch::send_ipi(cpu);
        }
    }

    /// The CPU a thread made ready runs on: where it ran last if it may
    /// and that CPU idles, or is this one with nothing queued (a partner
    /// woken by IPC runs next, on a warm cache, when its waker blocks),
    /// else an idle CPU it may use, else where it ran last, else the least
    /// loaded CPU it may use.
    fn place(&self, t: &Thread) -> usize {
        let online = self.online_mask();
        let allowed = match t.affinity() & online {
            0 => online,
            a => a,
        };
        let ok = |i: usize| allowed & (1 << i) != 0;
        let idle = |i: usize| self.cpus.get(i).is_some_and(|c| load(c) == 0);
        let last = t.cpu;
        let free = |i: usize| i == self.this && self.cpu().sched.queued() == 0;
        if ok(last) && (free(last) || idle(last)) {
            return last;
        }
        let candidates = || (0..self.cpus.len()).filter(|&i| ok(i));
        if let Some(i) = candidates().find(|&i| idle(i)) {
            return i;
        }
        if ok(last) {
            return last;
        }
        candidates()
            .min_by_key(|&i| self.cpus.get(i).map_or(usize::MAX, load))
            .unwrap_or(self.this)
    }

    /// Queues thread `id` on the CPU [`Self::place`] picks and makes it
    /// `Ready`; a thread still running on a CPU (suspended and resumed
    /// before that CPU switched away) just goes on running there.
    pub(crate) fn make_ready(&mut self, id: ThreadId, waking: bool) -> Result<(), Error> {
        if self.running_elsewhere(id) {
            self.thread_mut(id)?.state = State::Running;
            return Ok(());
        }
        let t = self.threads.get(id.0).ok_or(Error::InvalidState)?;
        let here = t.affinity() & (1 << self.this) != 0 && self.online();
        let cpu = if t.state == State::Running && here {
            // Preempted: back into its own CPU's queue.
            self.this
        } else {
            self.place(t)
        };
        let (Some(t), Some(c)) = (self.threads.get_mut(id.0), self.cpus.get_mut(cpu)) else {
            return Err(Error::InvalidState);
        };
        c.sched.enqueue(id, &mut t.sched, waking)?;
        t.state = State::Ready;
        t.cpu = cpu;
        // A ready thread may make the running one's slice end matter.
        c.clock.touch();
        self.kick(cpu);
        Ok(())
    }

    /// Takes a ready thread out of its CPU's queue.
    pub(super) fn dequeue(&mut self, id: ThreadId) {
        if let Some(t) = self.threads.get(id.0)
            && let Some(c) = self.cpus.get_mut(t.cpu)
        {
            c.sched.dequeue(id, &t.sched);
        }
    }

    /// Moves a queued thread of CPU `from` that may run on CPU `to` there;
    /// whether one moved.
    fn migrate(&mut self, from: usize, to: usize) -> bool {
        let threads = &self.threads;
        let Some(id) = self.cpus.get(from).and_then(|c| {
            (c.sched.iter()).find(|id| {
                threads
                    .get(id.0)
                    .is_some_and(|t| t.affinity() & (1 << to) != 0)
            })
        }) else {
            return false;
        };
        self.dequeue(id);
        let (Some(t), Some(c)) = (self.threads.get_mut(id.0), self.cpus.get_mut(to)) else {
            return false;
        };
        t.cpu = to;
        let _ = c.sched.enqueue(id, &mut t.sched, false);
        c.clock.touch();
        self.kick(to);
        true
    }

    /// Periodic balancing, at the end of a time slice (so on a CPU with
    /// threads waiting): pushes one to the least loaded other online CPU
    /// if that has at least two fewer.
    pub(super) fn balance(&mut self) {
        let (mine, cpus) = (load(self.cpu()), &self.cpus);
        let others = (0..cpus.len()).filter(|&i| i != self.this && cpus[i].online);
        if let Some(to) = others.min_by_key(|&i| load(&cpus[i]))
            && load(&cpus[to]) + 2 <= mine
        {
            self.migrate(self.this, to);
        }
    }

    /// The next thread for this CPU from its own queue, else stolen from
    /// another CPU's, the busiest first (idle balancing).
    pub(super) fn pick(&mut self) -> Option<ThreadId> {
        if let Some(id) = self.cpu_mut().sched.pick() {
            return Some(id);
        }
        let me = self.this;
        let mut from: arrayvec::ArrayVec<usize, MAX_CPUS> = (0..self.cpus.len())
            .filter(|&i| i != me && self.cpus[i].sched.queued() > 0)
            .collect();
        from.sort_unstable_by_key(|&i| core::cmp::Reverse(load(&self.cpus[i])));
        let stolen = from.into_iter().any(|f| self.migrate(f, me));
        stolen.then(|| self.cpu_mut().sched.pick())?
    }

    /// After an entry: if threads wait in this CPU's queue while another
    /// CPU idles, that CPU is kicked to come and take one.
    pub fn share_work(&mut self) {
        if self.cpu().sched.queued() == 0 {
            return;
        }
        let idle = (self.cpus.iter().enumerate())
            .find(|&(i, c)| i != self.this && c.online && load(c) == 0 && !c.kicked)
            .map(|(i, _)| i);
        if let Some(i) = idle {
            self.kick(i);
        }
    }

    /// Whether another CPU runs a thread or has one queued.
    pub(super) fn others_busy(&self) -> bool {
        (self.cpus.iter().enumerate()).any(|(i, c)| i != self.this && load(c) > 0)
    }

    /// Frees thread `id`, just taken out of the table. If it runs on
    /// another CPU, that CPU is first made to enter the kernel (a
    /// shootdown: it answers once its entry has saved the thread's
    /// registers, and takes the kernel lock before it touches any thread
    /// again), so the memory is given back before this call returns.
    pub(super) fn bury(&mut self, id: ThreadId, dead: Box<Thread>) {
        let cpu = dead.cpu;
        if let Some(c) = self
            .cpus
            .get_mut(cpu)
            .filter(|c| c.sched.current() == Some(id))
        {
            c.sched.set_current(None);
            if cpu != self.this {
                crate::smp::shootdown(1 << cpu);
            }
        }
        drop(dead);
    }

    /// Tells the CPU running thread `id` (if another one) to look again at
    /// what it runs (it was suspended, or its parameters changed).
    pub(super) fn recheck(&mut self, id: ThreadId) {
        if let Some(cpu) = self.running_on(id) {
            self.kick(cpu);
        }
    }

    /// The CPU thread `id` runs on, if it runs.
    fn running_on(&self, id: ThreadId) -> Option<usize> {
        let cpu = self.threads.get(id.0)?.cpu;
        (self.cpus.get(cpu)?.sched.current() == Some(id)).then_some(cpu)
    }

    /// Whether thread `id` runs on another CPU (its registers are live
    /// there).
    pub(super) fn running_elsewhere(&self, id: ThreadId) -> bool {
        self.running_on(id).is_some_and(|c| c != self.this)
    }

    /// Takes CPU `cpu` offline (`online` false) or brings it back:
    /// `InvalidArgument` for a CPU that did not come up or for the boot
    /// CPU (it takes the device interrupts), `InvalidState` if it already
    /// is. An offline CPU's queued threads move to the others now; its
    /// running thread when it takes the IPI.
    pub fn set_online(&mut self, cpu: usize, online: bool) -> Result<(), Error> {
        ensure(cpu != 0 && cpu < self.cpus.len(), Error::InvalidArgument)?;
        let c = &mut self.cpus[cpu];
        ensure(c.online != online, Error::InvalidState)?;
        c.online = online;
        if !online {
            while let Some(id) = self.cpus[cpu].sched.pick() {
                let _ = self.make_ready(id, false);
            }
        }
        // Back online: the threads that left it may go back (every CPU
        // looks again at what it runs).
        for i in 0..self.cpus.len() {
            if i == cpu || online {
                self.kick(i);
            }
        }
        Ok(())
    }

    /// This CPU is offline: it idles (`go_idle`), its thread goes
    /// elsewhere, its timer stops.
    pub(super) fn park(&mut self) {
        let cur = self.current();
        self.go_idle(crate::arch::clock_ticks());
        if let Some(cur) = cur
            && self
                .threads
                .get(cur.0)
                .is_some_and(|t| t.state == State::Running)
        {
            let _ = self.make_ready(cur, true);
        }
        crate::arch::timer_arm(None);
        self.cpu_mut().clock.disarm();
    }

    /// Sets the CPUs thread `id` may run on (the caller checked that the
    /// mask names a CPU); a thread queued or running elsewhere moves.
    pub fn set_affinity(&mut self, id: ThreadId, mask: u64) -> Result<(), Error> {
        let t = self.thread_mut(id)?;
        t.set_affinity(mask);
        let (state, cpu) = (t.state, t.cpu);
        match state {
            State::Ready if mask & (1 << cpu) == 0 => {
                self.dequeue(id);
                self.make_ready(id, false)?;
            }
            State::Running if mask & (1 << cpu) == 0 => self.recheck(id),
            _ => {}
        }
        Ok(())
    }

    /// Whether this CPU is online.
    pub(super) fn online(&self) -> bool {
        self.cpu().online
    }
}

#[cfg(test)]
mod tests;

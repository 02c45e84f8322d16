//! Time in the kernel: time slices, deadlines of blocked threads (sleep
//! and IPC timeouts) and the one-shot timer, which is armed for the
//! earliest moment something has to happen and for nothing else — no
//! periodic tick (tickless). Hand-written, portable, host-tested.
//!
//! All times here are in clock ticks (`arch::clock_ticks`); user deadlines
//! in nanoseconds are converted once, when a call is made
//! ([`crate::time::ns_to_ticks`]).
//!
//! It also keeps the statistics: each thread's CPU time and switches, and
//! the CPU's idle time, charged whenever the CPU changes hands
//! (`Kernel::switch_to`).
//!
//! Invariants: a thread is in `deadlines` only while `Blocked` (every way
//! out of `Blocked` goes through `unqueue`, which takes it out); `armed` is
//! what the hardware timer was last set to (`None` after it fired);
//! `run_start` is when the running thread (or, with `idle_since` set, the
//! idle stretch) was last charged up to.

use super::Kernel;
use crate::object::thread::{Blocked, State};
use crate::object::{Thread, ThreadId, Timer, TimerId};
use crate::sched::heap::SlotHeap;
use crate::sched::{After, Class, Params, Scheduler};
use keel_abi::Error;
use keel_abi::syscall::{SchedClass, ThreadInfoKey};

/// The kernel's time-keeping, shared by every CPU.
#[derive(Default)]
pub struct Clock {
    /// The default round-robin slice in ticks.
    rr_ticks: u64,
    /// Clock ticks per nanosecond, 32.32 fixed point (0: no clock).
    ticks_per_ns: u64,
    /// Nanoseconds per tick, 32.32 ([`crate::time::mult_for`]).
    ns_per_tick: u64,
    /// Blocked threads with a deadline, earliest first.
    pub(super) deadlines: SlotHeap<ThreadId>,
    /// Armed timer objects, earliest first.
    timers: SlotHeap<TimerId>,
    /// Threads with an `IpcTimeout` deadline for their next call.
    next_timeouts: usize,
}

/// One CPU's time-keeping: its timer, slice and idle time. Every CPU arms
/// its own timer for its slice end; the boot CPU's also for the earliest
/// shared deadline ([`Kernel::next_deadline`]). A CPU whose timer fires
/// serves the shared deadlines that are due (one that finds nothing due
/// is just armed again).
#[derive(Default)]
pub struct CpuClock {
    /// What the hardware timer is armed with: it fires no later.
    armed: Option<u64>,
    /// Something happened that may want the timer earlier (a deadline, a
    /// ready thread, a new slice).
    dirty: bool,
    /// When the running thread's time slice ends.
    slice_end: u64,
    /// When the running thread (or the idle stretch) started.
    run_start: u64,
    /// Since when the CPU idles, if it does.
    idle_since: Option<u64>,
    /// Ticks spent idle.
    idle_ticks: u64,
}

impl Clock {
    /// Time-keeping for a clock of `hz` ticks per second (0: none, so
    /// slices never end).
    pub fn new(hz: u64) -> Clock {
        let mut c = Clock {
            ticks_per_ns: u64::try_from((u128::from(hz) << 32) / 1_000_000_000).unwrap_or(0),
            ns_per_tick: crate::time::mult_for(hz),
            ..Clock::default()
        };
        c.rr_ticks = c.ticks(crate::sched::RR_SLICE_NS);
        c
    }

    /// `ns` in ticks (saturating; never without a clock).
    fn ticks(&self, ns: u64) -> u64 {
        if self.ticks_per_ns == 0 {
            return u64::MAX;
        }
        u64::try_from((u128::from(ns) * u128::from(self.ticks_per_ns)) >> 32).unwrap_or(u64::MAX)
    }

    /// Charges thread `t` for `ran` ticks on the CPU: its run time and,
    /// in the normal class, its virtual run time.
    pub(super) fn charge(&self, sched: &mut Scheduler<ThreadId>, t: &mut Thread, ran: u64) {
        t.run_ticks += ran;
        if t.sched.class == Class::Normal {
            sched.charge(
                &mut t.sched,
                crate::time::ticks_to_ns(ran, self.ns_per_tick),
            );
        }
    }

    /// The slice of a thread with `p` in ticks.
    pub(super) fn slice_ticks(&self, sched: &Scheduler<ThreadId>, p: &Params) -> u64 {
        if p.class == Class::RoundRobin && p.slice_ns == crate::sched::RR_SLICE_NS {
            return self.rr_ticks;
        }
        self.ticks(sched.slice_ns(p))
    }
}

impl CpuClock {
    /// Notes that the running thread's slice end may now matter (a thread
    /// became ready, or the slice is new): the timer may be wanted
    /// earlier ([`Kernel::program_timer`]), unless it fires by then anyway.
    #[inline]
    pub fn touch(&mut self) {
        self.dirty |= self.armed.is_none_or(|a| a > self.slice_end);
    }

    /// Whether the CPU idles.
    pub fn idle(&self) -> bool {
        self.idle_since.is_some()
    }

    /// A new stretch on the CPU starts at `now`: the ticks the running
    /// thread had since the last one (0 if the CPU idled: that time is
    /// counted as idle).
    pub(super) fn start_run(&mut self, now: u64) -> u64 {
        let ran = now.saturating_sub(self.run_start);
        self.run_start = now;
        match self.idle_since.take() {
            Some(since) => {
                self.idle_ticks += now.saturating_sub(since);
                0
            }
            None => ran,
        }
    }

    /// Starts a slice of `ticks` at `now`.
    pub(super) fn set_slice(&mut self, now: u64, ticks: u64) {
        self.slice_end = now.saturating_add(ticks);
        self.touch();
    }

    /// Disarmed (the timer fired, or the CPU goes offline).
    pub(super) fn disarm(&mut self) {
        self.armed = None;
        self.dirty = true;
    }
}

impl Kernel {
    /// Charges the running thread for its CPU time up to `now` (its run
    /// time and, in the normal class, its virtual run time), or the CPU
    /// for its idle time.
    pub(super) fn charge_current(&mut self, now: u64) {
        let c = &mut self.cpus[self.this];
        let idle = c.clock.idle();
        let ran = c.clock.start_run(now);
        if idle {
            // Still idle: `start_run` counted the stretch so far.
            c.clock.idle_since = Some(now);
            return;
        }
        if let Some(t) = c.sched.current().and_then(|id| self.threads.get_mut(id.0)) {
            self.clock.charge(&mut c.sched, t, ran);
        }
    }

    /// Starts a slice of thread `id`'s class at `now`.
    pub(super) fn new_slice(&mut self, now: u64, id: ThreadId) {
        let c = &mut self.cpus[self.this];
        let ticks = self
            .threads
            .get(id.0)
            .map_or(u64::MAX, |t| self.clock.slice_ticks(&c.sched, &t.sched));
        c.clock.set_slice(now, ticks);
    }

    /// This CPU goes idle at `now`: its thread's state is saved (it may
    /// wake on another CPU), and its address space let go (it may be a
    /// dead process's, which an idle CPU would keep from being freed).
    pub(super) fn go_idle(&mut self, now: u64) {
        self.charge_current(now);
        let c = &mut self.cpus[self.this];
        if let Some(t) = c.sched.current().and_then(|id| self.threads.get_mut(id.0)) {
            t.save_cpu_state();
        }
        c.sched.set_current(None);
        c.clock.idle_since = Some(now);
        self.unload();
    }

    /// Ticks this CPU has idled, up to `now`.
    pub fn idle_ticks(&self, now: u64) -> u64 {
        let c = &self.cpu().clock;
        let open = c.idle_since.map_or(0, |s| now.saturating_sub(s));
        c.idle_ticks + open
    }

    /// A statistic of thread `id`.
    pub fn thread_info(&self, id: ThreadId, key: ThreadInfoKey) -> Result<usize, Error> {
        let t = self.thread(id)?;
        let p = t.sched();
        Ok(match key {
            ThreadInfoKey::RunNs => {
                crate::time::ticks_to_ns(t.run_ticks, self.clock.ns_per_tick) as usize
            }
            ThreadInfoKey::Switches => t.switches as usize,
            ThreadInfoKey::Class => {
                (match p.class {
                    Class::Normal => SchedClass::Normal,
                    Class::RoundRobin => SchedClass::RoundRobin,
                    Class::Fifo => SchedClass::Fifo,
                    Class::Idle => SchedClass::Idle,
                }) as usize
            }
            ThreadInfoKey::Priority => usize::from(p.prio),
            ThreadInfoKey::Nice => (i16::from(p.nice) + 20) as usize,
            ThreadInfoKey::Cpu => t.cpu,
        })
    }

    /// When this CPU's timer must next fire: the end of the running
    /// thread's slice if a ready thread takes over then, and, on the boot
    /// CPU (which keeps time: it is never offline), the earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        let keeper = self.this == 0;
        let thread = self
            .clock
            .deadlines
            .peek()
            .filter(|_| keeper)
            .map(|(_, at)| at);
        let timer = self
            .clock
            .timers
            .peek()
            .filter(|_| keeper)
            .map(|(_, at)| at);
        let c = self.cpu();
        let contended = self
            .current()
            .and_then(|id| self.thread(id).ok())
            .filter(|t| t.state() == State::Running)
            .is_some_and(|t| c.sched.contended(t.sched()));
        let slice = contended.then_some(c.clock.slice_end);
        [thread, timer, slice].into_iter().flatten().min()
    }

    /// Arms the hardware timer for [`Self::next_deadline`] if that is
    /// earlier than what it is armed for. A timer armed too early just
    /// fires and is armed again (`on_timer`), so moving a deadline later
    /// costs nothing now: a thread switching in (a later slice end) does
    /// not reprogram the hardware.
    #[inline]
    pub fn program_timer(&mut self) {
        if !self.cpu().clock.dirty || !self.online() {
            return;
        }
        let want = self.next_deadline();
        let c = &mut self.cpu_mut().clock;
        c.dirty = false;
        if want.is_some_and(|w| c.armed.is_none_or(|a| w < a)) {
            crate::arch::timer_arm(want);
            c.armed = want;
        }
    }

    /// The timer fired at `now`: wakes the threads whose deadline passed
    /// (a sleeper returns 0, a blocked IPC `TimedOut`) and says whether the
    /// running thread's slice is over.
    pub fn on_timer(&mut self, now: u64) -> After {
        self.cpu_mut().clock.disarm();
        while let Some((id, at)) = self.clock.deadlines.peek() {
            if at > now {
                break;
            }
            let sleeping = self
                .thread(id)
                .is_ok_and(|t| t.ipc.blocked == Some(Blocked::Sleep));
            if sleeping {
                self.unqueue(id);
                if let Ok(t) = self.thread_mut(id) {
                    t.regs_mut().set_result(0);
                }
                self.wake(id);
            } else {
                self.fail(id, Error::TimedOut);
            }
            // `unqueue` took it out; make sure, so the loop ends.
            self.clock.deadlines.remove(id);
        }
        while let Some((id, at)) = self.clock.timers.peek().filter(|&(_, at)| at <= now) {
            self.clock.timers.pop();
            let Some(t) = self.timers.get(id.0) else {
                continue;
            };
            let (n, bits, period) = (t.notification.id(), t.bits, t.period);
            let _ = self.signal(n, bits);
            if period > 0 {
                // The next period after now (missed ones are skipped).
                let next = at.saturating_add(period);
                let next = if next > now {
                    next
                } else {
                    now.saturating_add(period)
                };
                let _ = self.clock.timers.push(id, next);
            }
        }
        let c = &self.cpu().clock;
        if now < c.slice_end || c.idle() {
            return After::Continue;
        }
        // Over: a fresh slice, whether it keeps the CPU or the next thread
        // gets it (then `switch_to` starts another); time to balance.
        if let Some(cur) = self.current() {
            self.charge_current(now);
            self.new_slice(now, cur);
        }
        self.balance();
        After::Yield
    }

    /// Blocks `cur` until tick `deadline`; `Yield` if it has passed.
    pub fn sleep(&mut self, cur: ThreadId, deadline: u64, now: u64) -> After {
        if deadline <= now {
            return After::Yield;
        }
        self.block(cur, Blocked::Sleep);
        self.set_deadline(cur, deadline);
        After::Block
    }

    /// Arms (or, with `None`, disarms) a deadline for `id`'s next call.
    pub fn arm_next_timeout(&mut self, id: ThreadId, deadline: Option<u64>) -> Result<(), Error> {
        let t = self.threads.get_mut(id.0).ok_or(Error::InvalidState)?;
        let before = core::mem::replace(&mut t.ipc.next_timeout, deadline).is_some();
        self.clock.next_timeouts =
            self.clock.next_timeouts + usize::from(deadline.is_some()) - usize::from(before);
        Ok(())
    }

    /// A call of `id` starts: the deadline armed for it becomes the
    /// call's; whether there is one. One load when no thread armed any.
    #[inline]
    pub fn start_timeout(&mut self, id: ThreadId) -> bool {
        if self.clock.next_timeouts == 0 {
            return false;
        }
        let Some(t) = self.threads.get_mut(id.0) else {
            return false;
        };
        t.ipc.timeout = t.ipc.next_timeout.take();
        let timed = t.ipc.timeout.is_some();
        self.clock.next_timeouts -= usize::from(timed);
        timed
    }

    /// The call of `id` ended without blocking: its deadline is spent.
    pub fn end_timeout(&mut self, id: ThreadId) {
        if let Some(t) = self.threads.get_mut(id.0) {
            t.ipc.timeout = None;
        }
    }

    /// Gives blocked thread `id` a deadline (its room in the heap was made
    /// with the thread, so this cannot fail).
    pub(super) fn set_deadline(&mut self, id: ThreadId, deadline: u64) {
        let _ = self.clock.deadlines.push(id, deadline);
        self.keep_time(deadline);
    }

    /// A deadline at tick `at` was set: the boot CPU, which keeps time, is
    /// told if its timer fires later than that.
    fn keep_time(&mut self, at: u64) {
        let c = &mut self.cpus[0].clock;
        if c.armed.is_none_or(|a| a > at) {
            c.dirty = true;
            self.kick(0);
        }
    }

    /// Whether the run must wait for time or an interrupt rather than end
    /// when no thread is ready.
    pub(super) fn waits_for_events(&self) -> bool {
        !self.clock.deadlines.is_empty() || !self.clock.timers.is_empty() || self.has_irq_handlers()
    }

    /// Makes room for a new timer; returns the id the next
    /// [`Self::add_timer`] will give it.
    pub fn reserve_timer(&mut self) -> Result<TimerId, Error> {
        self.timers.reserve()?;
        let id = TimerId(self.timers.next_id());
        self.clock.timers.reserve_slot(id.0.index() as usize)?;
        Ok(id)
    }

    /// Puts a new, disarmed timer into the table.
    pub fn add_timer(&mut self, timer: Timer) -> Result<TimerId, Error> {
        self.timers.insert(timer).map(TimerId)
    }

    /// Arms timer `id` for tick `deadline` and then every `period` ticks
    /// (0: once), or disarms it (`deadline` `None`).
    pub fn set_timer(
        &mut self,
        id: TimerId,
        deadline: Option<u64>,
        period: u64,
    ) -> Result<(), Error> {
        let t = self.timers.get_mut(id.0).ok_or(Error::InvalidState)?;
        t.period = period;
        self.clock.timers.remove(id);
        if let Some(d) = deadline {
            self.clock.timers.push(id, d)?;
            self.keep_time(d);
        }
        Ok(())
    }

    /// Ends timer `id` (its last capability went).
    pub(super) fn destroy_timer(&mut self, id: TimerId) {
        self.clock.timers.remove(id);
        self.timers.remove(id.0);
    }
}

#[cfg(test)]
mod tests;

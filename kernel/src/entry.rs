//! Kernel entry from user mode: the only place the architecture calls into
//! the portable kernel after boot. Event-driven (DESIGN.md §1.2): every
//! entry runs to completion on the CPU's kernel stack under the kernel
//! lock and ends by entering user mode with the registers of whichever
//! thread runs next. No kernel code sleeps.
//!
//! Layering: arch → entry → {syscall, task, sched, object} → {cap, mm};
//! nothing below calls back up. When no thread is left to run, the run
//! ends here with its verdict ([`RunMode`]).
//!
//! Lock order: [`KERNEL`] first, then (inside) an address space, a memory
//! object, the frame allocator and heap; an orphan queue is a leaf.

use crate::arch::{self, UserRegs};
use crate::object::thread::FaultMsg;
use crate::sched::After;
use crate::smp::BigLock;
use crate::task::{Kernel, Next};
use crate::trap::{Interrupt, UserFault};
use keel_abi::harness::{EXIT_CRASH, EXIT_FAIL, EXIT_PASS};

/// How a run of the root task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Halt when the root task is done.
    Normal,
    /// Exit QEMU with the verdict: pass if the in-kernel tests and the root
    /// task (exit code 0) both passed.
    Test {
        /// In-kernel tests that failed before the root task started.
        kernel_failed: usize,
    },
    /// Exit QEMU with `EXIT_PASS` when done (benchmarks).
    Bench,
}

/// The kernel state and how the run ends, behind the kernel lock.
struct Running {
    kernel: Kernel,
    mode: RunMode,
}

static KERNEL: BigLock<Option<Running>> = BigLock::new(None);

fn with_kernel<R>(f: impl FnOnce(&mut Running) -> R) -> R {
    let mut guard = KERNEL.lock();
    match guard.as_mut() {
        Some(r) => {
            r.kernel.enter(arch::cpu_index());
            f(r)
        }
        None => {
            kprintln!("keel: entry from user mode before the kernel state exists");
            arch::exit(EXIT_CRASH)
        }
    }
}

impl Running {
    /// Runs the next thread: its registers for `enter_user`, null to
    /// idle, or the end of the run. Arms the timer for what comes next.
    fn next(&mut self, after: After) -> *const UserRegs {
        let next = self.kernel.schedule(after);
        self.kernel.program_timer();
        self.kernel.share_work();
        match next {
            Next::Run(id) => match self.kernel.regs_of(id) {
                Some(regs) => regs,
                None => self.finish("the scheduler picked a dead thread"),
            },
            Next::Idle => core::ptr::null(),
            Next::Done(why) => self.finish(why),
        }
    }

    /// Ends the run: the verdict in a test build, a halt otherwise.
    fn finish(&mut self, why: &str) -> ! {
        kprintln!("keel: {why}");
        self.kernel.unload();
        match self.mode {
            RunMode::Normal => {
                kprintln!("keel: nothing left to run; halting (Ctrl-A X leaves QEMU)");
                arch::halt()
            }
            RunMode::Bench => arch::exit(EXIT_PASS),
            RunMode::Test { kernel_failed } => {
                let code = self.kernel.root_exit();
                kprintln!("keel: root task exit code {code}");
                arch::exit(if kernel_failed == 0 && code == 0 {
                    EXIT_PASS
                } else {
                    EXIT_FAIL
                })
            }
        }
    }
}

/// What an entry returns to the architecture: `regs` to enter, or (null,
/// from [`Running::next`], with the kernel lock released) this CPU idles
/// until an interrupt.
#[inline]
fn resume(regs: *const UserRegs) -> *const UserRegs {
    if regs.is_null() {
        arch::idle()
    }
    regs
}

/// The register-only path (taken before [`on_syscall`], without the
/// kernel lock): a call that needs no kernel state is answered from the
/// caller's registers alone; false if it needs the kernel.
pub fn on_light_syscall(regs: &mut UserRegs) -> bool {
    let (number, args) = regs.syscall_args();
    match crate::syscall::light(number, args) {
        Some(v) => {
            regs.set_result(v);
            true
        }
        None => false,
    }
}

/// Called by the architecture after a system-call instruction, with the
/// caller's registers saved in its TCB (`number` and `args` read from
/// them); returns the registers to enter user mode with.
pub fn on_syscall(number: usize, args: [usize; 6]) -> *const UserRegs {
    resume(with_kernel(|r| {
        let k = &mut r.kernel;
        let Some(cur) = k.current() else {
            return r.next(After::Continue);
        };
        if let Some(regs) = k.fastpath(cur, number, args) {
            return regs;
        }
        let Ok(cspace) = k.thread(cur).map(|t| t.home().id()) else {
            return r.next(After::Continue);
        };
        let outcome = crate::syscall::dispatch(k, cur, cspace, number, args);
        let value = match outcome.value {
            Ok(v) => v as isize,
            Err(e) => e.to_return_value(),
        };
        // Fast path: the caller keeps the CPU unless it yielded, stopped,
        // or woke a thread of higher priority.
        if let Some(regs) = k.return_to(cur, value, outcome.after) {
            // The call may have readied a thread of the caller's priority.
            k.program_timer();
            k.share_work();
            return regs;
        }
        r.next(outcome.after)
    }))
}

/// Called by the architecture after a synchronous exception in user mode.
/// Page faults the address space can resolve (demand-zero, copy-on-write)
/// resume the thread; any other fault kills its process and is reported.
pub fn on_user_fault(fault: UserFault) -> *const UserRegs {
    resume(with_kernel(|r| {
        let k = &mut r.kernel;
        let Some(cur) = k.current() else {
            return r.next(After::Continue);
        };
        let Ok(t) = k.thread(cur) else {
            return r.next(After::Continue);
        };
        if let UserFault::PageFault { addr, access } = fault
            && t.space().lock().fault(addr, access).is_ok()
        {
            return core::ptr::from_ref(t.regs());
        }
        let (pc, cspace) = (t.regs().pc(), t.home().id());
        let addr = match fault {
            UserFault::PageFault { addr, .. } | UserFault::Alignment { addr } => addr,
            _ => 0,
        };
        let msg = FaultMsg {
            code: fault.code() as u64,
            addr: addr as u64,
            pc: pc as u64,
        };
        if k.send_fault(cur, msg) {
            k.collect();
            return r.next(After::Block);
        }
        kprintln!("keel: user fault in thread {cur}: {fault} at pc {pc:#x}; killing its process");
        k.note_exit(cspace, -(fault.code() as isize));
        k.kill_process(cspace);
        k.collect();
        r.next(After::Continue)
    }))
}

/// Called by the architecture for an interrupt, taken in user mode (the
/// thread's registers saved in its TCB) or while idle: the timer wakes
/// the threads whose deadline passed and ends time slices; a thread of
/// higher priority woken takes the CPU at once.
pub fn on_interrupt(irq: Interrupt) -> *const UserRegs {
    if irq == Interrupt::Ipi {
        crate::smp::on_ipi();
    }
    // Before the run starts, other CPUs only answer IPIs.
    if !crate::smp::running() && arch::cpu_index() != 0 {
        arch::idle()
    }
    resume(with_kernel(|r| {
        let k = &mut r.kernel;
        let after = match irq {
            Interrupt::Timer => k.on_timer(arch::clock_ticks()),
            Interrupt::Line(n) => {
                k.irq_fired(n);
                After::Continue
            }
            Interrupt::Ipi => After::Continue,
        };
        k.collect();
        r.next(after)
    }))
}

/// Installs the kernel state and runs the first thread.
pub fn start(kernel: Kernel, mode: RunMode) -> ! {
    let regs = {
        let mut guard = KERNEL.lock();
        *guard = Some(Running { kernel, mode });
        match guard.as_mut() {
            Some(r) => {
                r.kernel.start_cpus();
                crate::smp::start_running();
                r.next(After::Continue)
            }
            None => arch::halt(),
        }
    };
    let regs = resume(regs);
    // SAFETY: `regs` points into the boxed thread `schedule` made current;
    // it stays valid until the next kernel entry, which saves into it.
    unsafe { arch::enter_user(regs) }
}

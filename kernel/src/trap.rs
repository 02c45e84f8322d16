//! Portable trap bookkeeping: what the architecture's trap handlers report,
//! and the fatal path for traps the kernel cannot handle.
//!
//! The arch trap handler classifies each trap into a [`TrapCause`] and either
//! resumes (breakpoints; faults at a PC listed in the exception-fixup table)
//! after calling [`record`], or calls [`fatal`], which never returns.

use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Mutex;

/// Why the CPU trapped, in portable terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapCause {
    /// A breakpoint instruction (int3, brk, ebreak).
    Breakpoint,
    /// A memory access to an unmapped or protected address.
    PageFault {
        /// The virtual address whose access faulted.
        addr: usize,
        /// The access was a store.
        write: bool,
        /// The access was an instruction fetch.
        exec: bool,
    },
    /// An undefined or illegal instruction.
    IllegalInstruction,
    /// Integer division by zero (x86 only; other arches do not trap on it).
    DivideError,
    /// A double fault, NMI or other machine-level fault.
    Machine(&'static str),
    /// Anything else: the raw architecture-specific cause code.
    Other(u64),
}

impl core::fmt::Display for TrapCause {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TrapCause::PageFault { addr, write, exec } => {
                let access = match (write, exec) {
                    (_, true) => "execute",
                    (true, _) => "write",
                    _ => "read",
                };
                write!(f, "page fault ({access}) at address {addr:#x}")
            }
            TrapCause::Breakpoint => f.write_str("breakpoint"),
            TrapCause::IllegalInstruction => f.write_str("illegal instruction"),
            TrapCause::DivideError => f.write_str("divide error"),
            TrapCause::Machine(what) => f.write_str(what),
            TrapCause::Other(code) => write!(f, "trap with cause code {code:#x}"),
        }
    }
}

/// An interrupt, as the architecture reports it to
/// `crate::entry::on_interrupt` (after acknowledging it at the controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interrupt {
    /// This CPU's one-shot timer fired; it is disarmed until armed again.
    Timer,
    /// Device line `n` (x86 GSI, GIC INTID, PLIC source).
    Line(u32),
    /// Another CPU called `arch::send_ipi` for this one.
    Ipi,
}

/// A synchronous exception taken in user mode. The thread's registers
/// (and so its PC) were saved before the handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserFault {
    /// A page fault (or access fault) at `addr`.
    PageFault {
        /// The user virtual address whose access faulted.
        addr: usize,
        /// Whether it was a load, a store or an instruction fetch.
        access: crate::mm::aspace::Access,
    },
    /// An undefined or illegal instruction.
    IllegalInstruction,
    /// Integer division by zero (x86 only; other arches do not trap on it).
    DivideError,
    /// A breakpoint instruction (int3, brk, ebreak).
    Breakpoint,
    /// A misaligned access the CPU refuses.
    Alignment {
        /// The misaligned address accessed.
        addr: usize,
    },
    /// Anything else, with the architecture's cause code.
    Other(u64),
}

impl UserFault {
    /// A portable code for the fault (the root task's verdict is its
    /// negation when it dies of one): 1 page fault, 2 illegal instruction,
    /// 3 divide error, 4 breakpoint, 5 misaligned access, 6 anything else.
    pub fn code(&self) -> usize {
        match self {
            UserFault::PageFault { .. } => 1,
            UserFault::IllegalInstruction => 2,
            UserFault::DivideError => 3,
            UserFault::Breakpoint => 4,
            UserFault::Alignment { .. } => 5,
            UserFault::Other(_) => 6,
        }
    }
}

impl core::fmt::Display for UserFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            UserFault::PageFault { addr, access } => {
                write!(f, "page fault ({access:?}) at {addr:#x}")
            }
            UserFault::IllegalInstruction => f.write_str("illegal instruction"),
            UserFault::DivideError => f.write_str("divide error"),
            UserFault::Breakpoint => f.write_str("breakpoint"),
            UserFault::Alignment { addr } => write!(f, "misaligned access at {addr:#x}"),
            UserFault::Other(code) => write!(f, "exception with cause code {code:#x}"),
        }
    }
}

/// A trap as seen by its handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapRecord {
    /// Why the CPU trapped.
    pub cause: TrapCause,
    /// The program counter of the trapping instruction.
    pub pc: usize,
}

static LAST: Mutex<Option<TrapRecord>> = Mutex::new(None);
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Records a trap the kernel handled and resumed from.
pub fn record(trap: TrapRecord) {
    *LAST.lock() = Some(trap);
    COUNT.fetch_add(1, Ordering::Relaxed);
}

/// The most recent handled trap, and the number handled since boot.
pub fn last() -> (Option<TrapRecord>, usize) {
    (*LAST.lock(), COUNT.load(Ordering::Relaxed))
}

/// Reports a trap the kernel cannot recover from and stops with
/// `EXIT_CRASH`. `dump_registers` prints the architecture's register file;
/// `backtrace` prints the frames of the interrupted code.
pub fn fatal(trap: TrapRecord, dump_registers: impl FnOnce(), backtrace: impl FnOnce()) -> ! {
    if crate::console::enter_fatal() {
        kprintln!(
            "\nKERNEL FAULT while reporting a fault: {} at pc {:#x}",
            trap.cause,
            trap.pc
        );
        crate::arch::exit(keel_abi::harness::EXIT_CRASH);
    }
    kprintln!();
    if let TrapCause::PageFault { addr, .. } = trap.cause
        && crate::arch::in_stack_guard(addr)
    {
        kprintln!("KERNEL FAULT: kernel stack overflow (guard page {addr:#x} touched)");
    }
    kprintln!("KERNEL FAULT: {} at pc {:#x}", trap.cause, trap.pc);
    dump_registers();
    kprintln!("backtrace:");
    kprintln!("  {}0 {:#x}", keel_abi::harness::FRAME_PREFIX, trap.pc);
    backtrace();
    crate::arch::exit(keel_abi::harness::EXIT_CRASH)
}

/// An address in the kernel half that no architecture maps.
pub const UNMAPPED_KERNEL_ADDR: usize = 0xffff_a000_0000_1000;

crate::ktest!(
    fn breakpoint_is_caught_and_resumed() {
        let (_, before) = last();
        crate::arch::breakpoint();
        let (rec, after) = last();
        kassert_eq!(after, before + 1);
        kassert_eq!(
            rec,
            Some(TrapRecord {
                cause: TrapCause::Breakpoint,
                pc: crate::arch::breakpoint_site()
            })
        );
        Ok(())
    }
);

crate::ktest!(
    fn page_fault_on_unmapped_address_is_reported() {
        let rec = crate::arch::probe_read(UNMAPPED_KERNEL_ADDR);
        let Err(rec) = rec else {
            kassert!(
                false,
                "read of unmapped {:#x} succeeded",
                UNMAPPED_KERNEL_ADDR
            );
            return Ok(());
        };
        kassert_eq!(
            rec.cause,
            TrapCause::PageFault {
                addr: UNMAPPED_KERNEL_ADDR,
                write: false,
                exec: false
            }
        );
        kassert_eq!(last().0, Some(rec));
        Ok(())
    }
);

crate::ktest!(
    fn probe_of_mapped_memory_reads_the_byte() {
        static BYTES: [u8; 2] = [0x5a, 0xa5];
        kassert_eq!(
            crate::arch::probe_read(core::ptr::addr_of!(BYTES[1]) as usize),
            Ok(0xa5)
        );
        Ok(())
    }
);

crate::ktest!(
    fn cycle_counter_advances() {
        let a = crate::arch::cycle_counter();
        let mut x = 0u64;
        for i in 0..1000 {
            x = core::hint::black_box(x + i);
        }
        let b = crate::arch::cycle_counter();
        kassert!(b > a, "counter went from {} to {}", a, b);
        Ok(())
    }
);

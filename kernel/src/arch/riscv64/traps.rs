//! RISC-V trap entry (`stvec`, direct mode) and the Rust trap dispatcher.
//!
//! `keel_trap_entry` saves every general-purpose register plus `sepc`,
//! `sstatus`, `scause` and `stval` into a [`TrapFrame`] on the kernel stack,
//! calls [`trap_dispatch`] with it, restores the (possibly modified) frame and
//! returns with `sret`.
//!
//! `sscratch` convention (the shape user-mode traps will need):
//! - while the CPU runs kernel code, `sscratch` = 0;
//! - while it runs user code, `sscratch` = top of this CPU's kernel stack.
//!
//! The entry swaps `sp` with `sscratch`; a zero result means the trap came
//! from the kernel and the kernel `sp` is taken back. Either way the
//! interrupted `sp` is saved in the frame and `sscratch` is 0 while the
//! dispatcher runs. On the way out, a return to user mode (`SPP` = 0) sets
//! `sscratch` to the kernel stack top again. No user mode exists yet.
//!
//! Kernel stack overflow: every kernel stack is at most
//! [`KERNEL_STACK_ALIGN`]` / 2` bytes with its bottom aligned to
//! [`KERNEL_STACK_ALIGN`] and an unmapped guard page below it (linker.ld), so
//! bit [`STACK_CHECK_BIT`] of an address in a stack is 0 and of an address
//! up to half an alignment below it is 1. On a trap from the kernel the
//! entry checks that bit of `sp - STACK_RESERVE` using `sp` alone (the
//! interrupted `sp` is kept in `sscratch` meanwhile); if it is set, saving
//! the frame would run into the guard page (or already has), so the entry
//! switches to the emergency stack and the handler runs there: a fault in a
//! guard page is reported as a stack overflow by [`crate::trap::fatal`], a
//! fault with a fixup resumes as usual. (One emergency stack: per-CPU ones
//! come with SMP.)
//!
//! `sstatus.SUM` is cleared while the handler runs and restored by `sret`
//! from the saved `sstatus`.
//!
//! Floating-point registers are not saved: the kernel takes only
//! synchronous traps (interrupts stay masked in the kernel), at sites that
//! declare the caller-saved FP registers clobbered (`clobber_abi("C")`), and
//! the dispatcher, an `extern "C"` function, preserves the callee-saved ones.
//!
//! Exception-fixup table (`__ex_table`, see linker.ld): pairs of
//! `(fault_pc, fixup_pc)` u64s. A page or access fault taken in S-mode at a
//! listed `fault_pc` is recorded with [`crate::trap::record`] and resumed at
//! `fixup_pc` with `a0` = `stval`, `a1` = `scause` (never 0 for a fault) and
//! `a2` = the faulting PC; every other register is as it was.

use crate::trap::{TrapCause, TrapRecord};

/// Register state saved by `keel_trap_entry`. `x[0]` is unused (x0 is
/// hard-wired to zero); `x[2]` is the interrupted `sp`.
#[repr(C)]
pub struct TrapFrame {
    pub x: [usize; 32],
    pub sepc: usize,
    pub sstatus: usize,
    pub scause: usize,
    pub stval: usize,
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const _: () = assert!(
    FRAME_SIZE.is_multiple_of(16),
    "the trap frame keeps sp 16-byte aligned"
);

/// `sstatus.SPP`: the trap came from S-mode.
const SSTATUS_SPP: usize = 1 << 8;

/// Alignment of every kernel stack's bottom, twice the largest kernel stack
/// (`KERNEL_STACK_ALIGN` in linker.ld).
pub const KERNEL_STACK_ALIGN: usize = 128 * 1024;
/// The address bit that is 0 inside a kernel stack and 1 just below it.
const STACK_CHECK_BIT: u32 = KERNEL_STACK_ALIGN.trailing_zeros() - 1;
/// Stack the entry wants to find below the interrupted `sp`: the trap frame
/// plus room for the dispatcher (the largest `addi` immediate).
const STACK_RESERVE: usize = 2048;
const _: () = assert!(STACK_RESERVE >= FRAME_SIZE + 1024);

/// `scause` interrupt bit.
const SCAUSE_INTERRUPT: usize = 1 << 63;

// Exception codes (privileged spec, table "Supervisor cause register").
const INSTRUCTION_ACCESS_FAULT: usize = 1;
const ILLEGAL_INSTRUCTION: usize = 2;
const BREAKPOINT: usize = 3;
const LOAD_ACCESS_FAULT: usize = 5;
const STORE_ACCESS_FAULT: usize = 7;
const INSTRUCTION_PAGE_FAULT: usize = 12;
const LOAD_PAGE_FAULT: usize = 13;
const STORE_PAGE_FAULT: usize = 15;

core::arch::global_asm!(
    r#"
    .section .text.trap, "ax"
    .balign 4
    .globl keel_trap_entry
keel_trap_entry:
    csrrw   sp, sscratch, sp
    bnez    sp, 1f                  # from user: sp = kernel stack top
    csrr    sp, sscratch            # from kernel: the kernel sp (sscratch keeps it)
    addi    sp, sp, -{stack_reserve}
    srli    sp, sp, {stack_check_bit}
    andi    sp, sp, 1
    bnez    sp, 3f                  # would reach the guard page
    csrr    sp, sscratch
1:  addi    sp, sp, -{frame_size}
    sd      x1, 1 * 8(sp)
    .irp n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    sd      x\n, \n * 8(sp)
    .endr
    csrrw   t0, sscratch, zero      # interrupted sp, and sscratch = 0
    sd      t0, 2 * 8(sp)
    csrr    t0, sepc
    sd      t0, {sepc}(sp)
    csrr    t0, sstatus
    sd      t0, {sstatus}(sp)
    csrr    t0, scause
    sd      t0, {scause}(sp)
    csrr    t0, stval
    sd      t0, {stval}(sp)
    li      t0, {sstatus_sum}
    csrc    sstatus, t0

    mv      a0, sp
    call    {dispatch}

    ld      t0, {sepc}(sp)
    csrw    sepc, t0
    ld      t0, {sstatus}(sp)
    csrw    sstatus, t0
    andi    t0, t0, {spp}
    bnez    t0, 2f
    addi    t0, sp, {frame_size}    # back to user: arm sscratch
    csrw    sscratch, t0
2:  ld      x1, 1 * 8(sp)
    .irp n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    ld      x\n, \n * 8(sp)
    .endr
    ld      sp, 2 * 8(sp)
    sret

3:  lla     sp, __emergency_stack_top
    j       1b
    "#,
    frame_size = const FRAME_SIZE,
    sepc = const core::mem::offset_of!(TrapFrame, sepc),
    sstatus = const core::mem::offset_of!(TrapFrame, sstatus),
    scause = const core::mem::offset_of!(TrapFrame, scause),
    stval = const core::mem::offset_of!(TrapFrame, stval),
    spp = const SSTATUS_SPP,
    stack_reserve = const STACK_RESERVE,
    stack_check_bit = const STACK_CHECK_BIT,
    sstatus_sum = const super::mm::SSTATUS_SUM,
    dispatch = sym trap_dispatch,
);

unsafe extern "C" {
    /// The trap vector (only its address is used, for `stvec`).
    pub fn keel_trap_entry();
}

/// Translates an exception code and `stval` into a portable cause.
pub fn classify(scause: usize, stval: usize) -> TrapCause {
    if scause & SCAUSE_INTERRUPT != 0 {
        return TrapCause::Other(scause as u64);
    }
    match scause {
        INSTRUCTION_ACCESS_FAULT | INSTRUCTION_PAGE_FAULT => TrapCause::PageFault {
            addr: stval,
            write: false,
            exec: true,
        },
        LOAD_ACCESS_FAULT | LOAD_PAGE_FAULT => TrapCause::PageFault {
            addr: stval,
            write: false,
            exec: false,
        },
        STORE_ACCESS_FAULT | STORE_PAGE_FAULT => TrapCause::PageFault {
            addr: stval,
            write: true,
            exec: false,
        },
        ILLEGAL_INSTRUCTION => TrapCause::IllegalInstruction,
        BREAKPOINT => TrapCause::Breakpoint,
        other => TrapCause::Other(other as u64),
    }
}

/// Length in bytes of the instruction whose low half-word is `low`: 4 when
/// its two low bits are `11`, else 2 (compressed). Longer encodings are
/// not used by RV64GC.
const fn instruction_len(low: u16) -> usize {
    if low & 0b11 == 0b11 { 4 } else { 2 }
}

/// The one Rust trap handler, called by `keel_trap_entry`.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let from_kernel = frame.sstatus & SSTATUS_SPP != 0;
    let cause = classify(frame.scause, frame.stval);
    let record = TrapRecord {
        cause,
        pc: frame.sepc,
    };
    match cause {
        TrapCause::Breakpoint if from_kernel => {
            // SAFETY: the CPU just fetched and executed the instruction at
            // `sepc` in S-mode, so its (2-byte-aligned) first half-word is
            // mapped and readable kernel text.
            let low = unsafe { (frame.sepc as *const u16).read_volatile() };
            crate::trap::record(record);
            frame.sepc += instruction_len(low);
            return;
        }
        TrapCause::PageFault { .. } if from_kernel => {
            if let Some(fixup) = crate::arch::fixup_for(frame.sepc) {
                crate::trap::record(record);
                frame.x[10] = frame.stval;
                frame.x[11] = frame.scause;
                frame.x[12] = frame.sepc;
                frame.sepc = fixup;
                return;
            }
        }
        _ => {}
    }
    crate::trap::fatal(
        record,
        || dump_registers(frame),
        || super::backtrace_from(frame.x[8], 1),
    )
}

/// ABI names of x0..x31.
const REG_NAMES: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];

fn dump_registers(frame: &TrapFrame) {
    kprintln!(
        "  sepc    {:#018x}  sstatus {:#018x}  scause  {:#018x}",
        frame.sepc,
        frame.sstatus,
        frame.scause
    );
    kprintln!(
        "  stval   {:#018x}  satp    {:#018x}",
        frame.stval,
        riscv::register::satp::read().bits()
    );
    for (i, (name, value)) in REG_NAMES.iter().zip(&frame.x).enumerate().skip(1) {
        kprint!("  {name:>4}/x{i:<2} {value:#018x}");
        if i.is_multiple_of(4) || i == 31 {
            kprintln!();
        }
    }
}

//! RISC-V trap entry (`stvec`, direct mode) and the Rust trap dispatcher.
//!
//! `keel_trap_entry` saves every general-purpose register plus `sepc`,
//! `sstatus`, `scause` and `stval` into a [`TrapFrame`] on the kernel stack,
//! calls [`trap_dispatch`] with it, restores the (possibly modified) frame and
//! returns with `sret`.
//!
//! Traps from U-mode take a second path through the same vector (see
//! `user` for the user-side types and invariants): the user registers go
//! into the thread's `UserRegs`, not onto a stack, and the Rust handler
//! (`user::user_trap`) runs from the top of this CPU's kernel stack and
//! returns the `UserRegs` to enter next, which `keel_enter_user` restores
//! before `sret`.
//!
//! `sscratch` convention (see `user`):
//! - while the CPU runs kernel code, `sscratch` = 0 and `tp` = this CPU's
//!   `PerCpu` block;
//! - while it runs user code, `sscratch` = that block (`keel_enter_user`
//!   sets it just before `sret`).
//!
//! The entry swaps `sp` with `sscratch`; a zero result means the trap came
//! from the kernel and the kernel `sp` is taken back. From user mode, `sp`
//! is the block: the entry parks the user `tp` there, points `tp` at the
//! block, takes the user `sp` out of `sscratch` (leaving 0) and loads the
//! kernel stack top into `sp`; until then it stores only into the block,
//! which is always mapped. From that (seventh) instruction on the CPU is in
//! the kernel convention, so a fault while saving into the `UserRegs` would
//! be reported as a kernel fault.
//!
//! Kernel stack overflow: every CPU's kernel stack has an unmapped guard
//! page below it, and above it (with its own guard page) the CPU's
//! emergency stack (`mm::cpu_stacks`). An entry from the kernel compares
//! the interrupted `sp` with the block's `stack_floor`, [`STACK_RESERVE`]
//! above the kernel stack's bottom (`t0` is parked in the block
//! meanwhile): below it, saving the frame would run into the guard page
//! (or already has), so the entry switches to the top of the CPU's
//! emergency stack and the handler runs there: a fault in a guard page is
//! reported as a stack overflow by [`crate::trap::fatal`], a fault with a
//! fixup resumes as usual. A trap taken on the emergency stack itself is
//! above the floor and saves its frame there.
//!
//! `sstatus.SUM` is cleared while the handler runs and restored by `sret`
//! from the saved `sstatus`. An entry from user mode also turns `sstatus.FS`
//! off: the kernel runs with the FP unit off (see `user`).
//!
//! Floating-point registers are not saved: the kernel never uses them
//! (`sstatus.FS` is Off in the kernel, so an FP instruction would trap), and
//! a trap from the kernel is taken with FS off too.
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
    /// `x0`..`x31`, indexed by register number.
    pub x: [usize; 32],
    /// The interrupted PC.
    pub sepc: usize,
    /// `sstatus` at the trap (SPP says which mode was interrupted).
    pub sstatus: usize,
    /// The trap cause (interrupt bit and exception code).
    pub scause: usize,
    /// The faulting address or instruction bits, by cause.
    pub stval: usize,
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
// The trap frame keeps sp 16-byte aligned.
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

use super::user::{
    ECALL_FROM_U, PerCpu, SSTATUS_FS_INITIAL, SSTATUS_FS_MASK, SSTATUS_SIE, SSTATUS_SPIE,
    SSTATUS_SPP, UserRegs,
};
use core::mem::offset_of;

/// Stack the entry wants to find below the interrupted `sp`: the trap frame
/// plus room for the dispatcher.
pub(super) const STACK_RESERVE: usize = 2048;
const _: () = assert!(STACK_RESERVE >= FRAME_SIZE + 1024);

/// `scause` interrupt bit.
pub(super) const SCAUSE_INTERRUPT: usize = 1 << 63;

// Exception codes (privileged spec, table "Supervisor cause register").
pub(super) const INSTRUCTION_ACCESS_FAULT: usize = 1;
pub(super) const ILLEGAL_INSTRUCTION: usize = 2;
pub(super) const BREAKPOINT: usize = 3;
pub(super) const LOAD_ADDRESS_MISALIGNED: usize = 4;
pub(super) const LOAD_ACCESS_FAULT: usize = 5;
pub(super) const STORE_ADDRESS_MISALIGNED: usize = 6;
pub(super) const STORE_ACCESS_FAULT: usize = 7;
pub(super) const INSTRUCTION_PAGE_FAULT: usize = 12;
pub(super) const LOAD_PAGE_FAULT: usize = 13;
pub(super) const STORE_PAGE_FAULT: usize = 15;

/// `sstatus` bits an entry from user mode clears for the kernel: user
/// memory closed (SUM) and the FP unit off (FS).
const KERNEL_SSTATUS_CLEAR: usize = super::mm::SSTATUS_SUM as usize | SSTATUS_FS_MASK;
/// `sstatus` bits `keel_enter_user` keeps from the kernel's `sstatus`
/// (everything but the previous mode, interrupt enable, SUM and FS).
const USER_SSTATUS_KEEP: usize =
    !(SSTATUS_SPP | SSTATUS_SIE | super::mm::SSTATUS_SUM as usize | SSTATUS_FS_MASK);

core::arch::global_asm!(
    r#"
    .section .text.trap, "ax"
    .balign 4
    .globl keel_trap_entry
keel_trap_entry:
    csrrw   sp, sscratch, sp
    bnez    sp, .Lfrom_user         # from user: sp = this CPU's PerCpu
    sd      t0, {cpu_kernel_scratch}(tp)
    csrr    sp, sscratch            # from kernel: the kernel sp (sscratch keeps it)
    ld      t0, {cpu_stack_floor}(tp)
    bgeu    sp, t0, 1f
    ld      sp, {cpu_emergency_sp}(tp) # would reach the guard page
1:  ld      t0, {cpu_kernel_scratch}(tp)
    addi    sp, sp, -{frame_size}
    sd      x1, 1 * 8(sp)
    .irp n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    sd      x\n, \n * 8(sp)
    .endr
    csrrw   t0, sscratch, zero      # interrupted sp, and sscratch = 0
    sd      t0, 2 * 8(sp)
    .set    .Ltrap_csr_at, {sepc}       # sepc, sstatus, scause, stval: in order
    .irp    csr, sepc, sstatus, scause, stval
    csrr    t0, \csr
    sd      t0, .Ltrap_csr_at(sp)
    .set    .Ltrap_csr_at, .Ltrap_csr_at + 8
    .endr
    li      t0, {sstatus_sum}
    csrc    sstatus, t0

    mv      a0, sp
    call    {dispatch}

    # Back to the interrupted kernel code (a trap from the kernel always
    # returns to the kernel; sscratch stays 0).
    ld      t0, {sepc}(sp)
    csrw    sepc, t0
    ld      t0, {sstatus}(sp)
    csrw    sstatus, t0
    ld      x1, 1 * 8(sp)
    .irp n, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    ld      x\n, \n * 8(sp)
    .endr
    ld      sp, 2 * 8(sp)
    sret

.Lfrom_user:                        # sp = PerCpu, sscratch = user sp
    sd      tp, {cpu_scratch} + 0(sp)
    mv      tp, sp
    csrrw   sp, sscratch, zero      # sp = user sp, sscratch = 0
    sd      sp, {cpu_scratch} + 8(tp)
    ld      sp, {cpu_kernel_sp}(tp) # the top of this CPU's kernel stack
    sd      t0, {cpu_scratch} + 16(tp)
    ld      t0, {cpu_user_regs}(tp)
    sd      x1, 1 * 8(t0)
    sd      x3, 3 * 8(t0)
    .irp n, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    sd      x\n, \n * 8(t0)
    .endr
    ld      t1, {cpu_scratch} + 0(tp)
    sd      t1, 4 * 8(t0)
    ld      t1, {cpu_scratch} + 8(tp)
    sd      t1, 2 * 8(t0)
    ld      t1, {cpu_scratch} + 16(tp)
    sd      t1, 5 * 8(t0)
    csrr    a0, scause
    csrr    a1, stval
    csrr    t1, sepc
    li      t2, {ecall_from_u}
    bne     a0, t2, 4f
    addi    t1, t1, 4               # a system call resumes after its ecall
4:  sd      t1, {regs_sepc}(t0)
    csrr    t1, sstatus
    sd      t1, {regs_sstatus}(t0)
    li      t1, {kernel_sstatus_clear}
    csrc    sstatus, t1
    li      s0, 0                   # backtraces stop here
    call    {user_trap}
    # a0 = the UserRegs to enter next; fall through.

    # keel_enter_user(regs: a0), with tp = this CPU's PerCpu: restores
    # *regs and returns to U-mode. The thread's sstatus contributes only
    # its FS field (Off becomes Initial); SPP = 0 and SPIE = 1 are forced.
    .globl keel_enter_user
keel_enter_user:
    sd      a0, {cpu_user_regs}(tp)
    ld      t0, {regs_sepc}(a0)
    csrw    sepc, t0
    ld      t0, {regs_sstatus}(a0)
    li      t1, {fs_mask}
    and     t0, t0, t1
    bnez    t0, 5f
    li      t0, {fs_initial}
5:  csrr    t1, sstatus
    li      t2, {user_sstatus_keep}
    and     t1, t1, t2
    or      t1, t1, t0
    ori     t1, t1, {spie}
    csrw    sstatus, t1
    csrw    sscratch, tp            # from here on a trap counts as from user
    ld      x1, 1 * 8(a0)
    .irp n, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31
    ld      x\n, \n * 8(a0)
    .endr
    ld      a0, 10 * 8(a0)
    sret
    "#,
    frame_size = const FRAME_SIZE,
    sepc = const offset_of!(TrapFrame, sepc),
    sstatus = const offset_of!(TrapFrame, sstatus),
    cpu_kernel_scratch = const offset_of!(PerCpu, kernel_scratch),
    cpu_stack_floor = const offset_of!(PerCpu, stack_floor),
    cpu_emergency_sp = const offset_of!(PerCpu, emergency_sp),
    sstatus_sum = const super::mm::SSTATUS_SUM,
    dispatch = sym trap_dispatch,
    cpu_kernel_sp = const offset_of!(PerCpu, kernel_sp),
    cpu_user_regs = const offset_of!(PerCpu, user_regs),
    cpu_scratch = const offset_of!(PerCpu, scratch),
    regs_sepc = const offset_of!(UserRegs, sepc),
    regs_sstatus = const offset_of!(UserRegs, sstatus),
    ecall_from_u = const ECALL_FROM_U,
    kernel_sstatus_clear = const KERNEL_SSTATUS_CLEAR,
    user_trap = sym super::user::user_trap,
    fs_mask = const SSTATUS_FS_MASK,
    fs_initial = const SSTATUS_FS_INITIAL,
    user_sstatus_keep = const USER_SSTATUS_KEEP as isize,
    spie = const SSTATUS_SPIE,
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
    let fault = |write, exec| TrapCause::PageFault {
        addr: stval,
        write,
        exec,
    };
    match scause {
        INSTRUCTION_ACCESS_FAULT | INSTRUCTION_PAGE_FAULT => fault(false, true),
        LOAD_ACCESS_FAULT | LOAD_PAGE_FAULT => fault(false, false),
        STORE_ACCESS_FAULT | STORE_PAGE_FAULT => fault(true, false),
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

/// The Rust handler of traps from S-mode, called by `keel_trap_entry`.
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let from_kernel = frame.sstatus & SSTATUS_SPP != 0;
    // Interrupts are enabled in the kernel only in `irq::idle`.
    if from_kernel
        && frame.scause & SCAUSE_INTERRUPT != 0
        && let Some(irq) = super::irq::interrupt(frame.scause)
    {
        // SAFETY: `on_interrupt` hands out only valid thread registers
        // with their address space loaded; this abandons the idle stack.
        unsafe { super::enter_user(crate::entry::on_interrupt(irq)) }
    }
    let (cause, pc) = (classify(frame.scause, frame.stval), frame.sepc);
    let record = TrapRecord { cause, pc };
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
                frame.x[10..13].copy_from_slice(&[frame.stval, frame.scause, frame.sepc]);
                frame.sepc = fixup;
                return;
            }
        }
        _ => {}
    }
    crate::trap::fatal(
        record,
        || dump_registers(frame),
        || crate::arch::print_frames(frame.x[8], 1, super::frame_record),
    )
}

/// ABI names of x0..x31.
const REG_NAMES: [&str; 32] = [
    "zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6",
];

fn dump_registers(frame: &TrapFrame) {
    let TrapFrame {
        sepc,
        sstatus,
        scause,
        stval,
        ..
    } = *frame;
    let satp = riscv::register::satp::read().bits();
    kprintln!("  sepc    {sepc:#018x}  sstatus {sstatus:#018x}  scause  {scause:#018x}");
    kprintln!("  stval   {stval:#018x}  satp    {satp:#018x}");
    if scause == ILLEGAL_INSTRUCTION && is_fp_instruction(stval) {
        kprintln!("  (an FP instruction: the kernel runs with sstatus.FS off and must not use FP)");
    }
    dump_gprs(&frame.x);
}

/// Whether the instruction bits `insn` (as `stval` reports them for an
/// illegal instruction) encode an F/D instruction: the LOAD-FP, STORE-FP,
/// fused multiply-add and OP-FP major opcodes, or a compressed FP load or
/// store (`c.fld`, `c.fsd`, `c.fldsp`, `c.fsdsp`).
fn is_fp_instruction(insn: usize) -> bool {
    if insn & 0b11 == 0b11 {
        matches!(insn & 0x7f, 0x07 | 0x27 | 0x43 | 0x47 | 0x4b | 0x4f | 0x53)
    } else {
        let quadrant = insn & 0b11;
        let funct3 = (insn >> 13) & 0b111;
        quadrant != 0b01 && (funct3 == 0b001 || funct3 == 0b101)
    }
}

/// Prints `x1`..`x31` from `x` (indexed by register number), four a line.
pub(super) fn dump_gprs(x: &[usize; 32]) {
    for (i, (name, value)) in REG_NAMES.iter().zip(x).enumerate().skip(1) {
        kprint!("  {name:>4}/x{i:<2} {value:#018x}");
        if i.is_multiple_of(4) || i == 31 {
            kprintln!();
        }
    }
}

crate::ktest!(
    fn fp_instructions_are_recognised() {
        // fmv.d.x f1, zero; fld f0, 0(a0); fsd f0, 0(a0); fmadd.d; c.fld;
        // c.fsdsp; against ld, sd, c.ld, c.addi, ecall and 0.
        for insn in [
            0xf200_00d3,
            0x0005_3007,
            0x0005_3027,
            0x0200_0043,
            0x2100,
            0xa002,
        ] {
            crate::kassert!(is_fp_instruction(insn), "{:#x}", insn);
        }
        for insn in [0x0005_3503, 0x00a5_3023, 0x6108, 0x0505, 0x0000_0073, 0] {
            crate::kassert!(!is_fp_instruction(insn), "{:#x}", insn);
        }
        Ok(())
    }
);

//! AArch64 user mode: a thread's saved registers ([`UserRegs`]) and FP/SIMD
//! state ([`FpuState`]), the TLS register, the per-CPU block, and the two
//! ways between EL1 and EL0: [`enter_user`] (`eret` into a thread) and the
//! lower-EL synchronous vector (`keel_user_sync_entry`, reached from the
//! vector table in `exception`), which saves the thread's registers and
//! hands the SVC or fault to the portable side (`crate::task`).
//!
//! Per-CPU blocks ([`PerCpu`], one per CPU index in `KEEL_CPUS`; the entry
//! code points TPIDR_EL1 at this CPU's before any Rust code runs, so
//! [`cpu_index`] is the block's index): offset 0 `stack_top` (the top of
//! this CPU's kernel stack; CPU 0: the boot stack), offset 8 `user_regs`
//! (the [`UserRegs`] the next entry from EL0 saves into), offset 16
//! `overflow_top` (the top of its overflow stack, `exception`).
//!
//! [`UserRegs`] layout (bytes): x0–x30 at `8 * n`, SP_EL0 at 248, the PC
//! (ELR_EL1) at 256, PSTATE (SPSR_EL1) at 264.
//!
//! Entry from EL0 (synchronous exceptions only; IRQ, FIQ and SError from EL0
//! take the kernel's generic path and are fatal, as no interrupt source is
//! enabled yet): SP_EL1 is the stack top (see below), and the CPU has
//! masked DAIF and set PAN. The stub pushes x0/x1,
//! finds `user_regs` through TPIDR_EL1, stores x2–x30, then x0/x1 from the
//! stack (so SP is back at the top), SP_EL0, ELR_EL1 and SPSR_EL1 into it,
//! clears x29/x30 (the frame-pointer chain ends there) and calls
//! `keel_user_sync(esr, far)`, which calls `common::syscall` (then `crate::entry::on_syscall`) for
//! an SVC (ESR.EC 0x15; ELR already points past the `svc`) and
//! `crate::entry::on_user_fault` for anything else. Both return the
//! registers to enter next, and the stub falls through into
//! `keel_enter_user`.
//!
//! `keel_enter_user(regs)`: records `regs` in `user_regs`, sets SP_EL1 to
//! `stack_top` (nothing on the kernel stack survives), loads ELR_EL1, SPSR_EL1
//! (only NZCV, DIT and SSBS from the saved PSTATE; everything else is EL0t
//! with D, A, I, F clear), SP_EL0 and all of x0–x30 from `regs`, and `eret`s.
//! ERET clears the local exclusive monitor (Armv8), so a thread switch cannot
//! complete another thread's exclusive pair.
//!
//! Invariants:
//! - System calls clobber nothing but x0 (the result): every other general
//!   register, SP, NZCV, TPIDR_EL0 and the FP/SIMD registers come back as
//!   they were (if another thread ran in between, the portable side saved
//!   and restored the FP/SIMD state and TLS around it).
//! - No kernel value reaches EL0: `keel_enter_user` loads every general
//!   register from `UserRegs`; TPIDRRO_EL0 is zero (set at boot, never
//!   written again except by a fatal stack-overflow report); TPIDR_EL0 is the
//!   thread's TLS ([`load_tls`]); FP/SIMD registers hold user state only.
//! - The kernel is built for `aarch64-unknown-none-softfloat` and never uses
//!   FP/SIMD registers: user FP/SIMD state stays live in them while the
//!   kernel runs. Only `keel_fpu_save`/`keel_fpu_restore` (and the tests'
//!   helpers) touch them; check with `llvm-objdump -d`.

use super::exception::{EC_BRK, EC_UNKNOWN};
use crate::bootinfo::MAX_CPUS;
use crate::mm::aspace::Access;
use crate::trap::UserFault;
use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

/// `e_machine` of AArch64 ELF files (EM_AARCH64).
pub const ELF_MACHINE: u16 = 183;

/// A user thread's saved registers (layout fixed for the entry assembly).
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// x0–x30.
    x: [u64; 31],
    /// SP_EL0.
    sp: u64,
    /// Where `eret` resumes (ELR_EL1).
    pc: u64,
    /// PSTATE as saved in SPSR_EL1.
    pstate: u64,
}

const OFF_X30: usize = 30 * 8;
const OFF_SP: usize = core::mem::offset_of!(UserRegs, sp);
const OFF_PC: usize = core::mem::offset_of!(UserRegs, pc);
const _: () = assert!(OFF_SP == OFF_X30 + 8);
const _: () = assert!(core::mem::offset_of!(UserRegs, pstate) == OFF_PC + 8);
const _: () = assert!(core::mem::size_of::<UserRegs>() == 272);

/// SPSR for EL0t (AArch64, EL0, SP_EL0) with D, A, I and F unmasked.
const SPSR_EL0T: u64 = 0;
/// The PSTATE bits a thread keeps across `eret`: NZCV (31:28), DIT (24),
/// SSBS (12). The mode and mask bits are always EL0t, unmasked.
const SPSR_USER_MASK: u64 = 0xf100_1000;

impl UserRegs {
    /// A thread about to run at `entry` with stack pointer `stack` and
    /// `arg` in x0, at EL0 with interrupts unmasked.
    pub fn new(entry: usize, stack: usize, arg: usize) -> UserRegs {
        let mut x = [0; 31];
        x[0] = arg as u64;
        let (sp, pc, pstate) = (stack as u64, entry as u64, SPSR_EL0T);
        UserRegs { x, sp, pc, pstate }
    }

    /// The system-call number (x8) and arguments (x0–x5).
    pub fn syscall_args(&self) -> (usize, [usize; 6]) {
        let x = &self.x;
        let args = [x[0], x[1], x[2], x[3], x[4], x[5]].map(|v| v as usize);
        (x[8] as usize, args)
    }

    /// Sets the system-call result (x0).
    pub fn set_result(&mut self, value: isize) {
        self.x[0] = value as u64;
    }

    /// Delivers a message (`keel_abi::ipc`): `info` as the result (x0),
    /// the badge in x1, the words in x2–x5.
    pub fn set_message(&mut self, info: usize, badge: usize, words: [usize; 4]) {
        let [w0, w1, w2, w3] = words.map(|w| w as u64);
        self.x[..6].copy_from_slice(&[info as u64, badge as u64, w0, w1, w2, w3]);
    }

    /// The user PC: where the thread resumes (after an SVC), or the
    /// faulting instruction.
    pub fn pc(&self) -> usize {
        self.pc as usize
    }

    /// TLS lives in TPIDR_EL0, outside the saved registers: see
    /// [`save_tls`] / [`load_tls`].
    pub fn set_tls(&mut self, _value: usize) {}
}

/// A thread's FP/SIMD state: q0–q31, FPCR, FPSR (layout fixed for the
/// save/restore assembly). The default is all registers zero, FPCR 0
/// (round to nearest, no traps, no flush to zero, default NaN off) and FPSR
/// 0 (no flags).
#[repr(C, align(16))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    /// q0–q31 as (low, high) 64-bit halves.
    q: [[u64; 2]; 32],
    fpcr: u64,
    fpsr: u64,
}

const _: () = assert!(core::mem::offset_of!(FpuState, fpcr) == 512);
const _: () = assert!(core::mem::offset_of!(FpuState, fpsr) == 520);

impl FpuState {
    /// Saves this CPU's FP/SIMD registers into `self`.
    pub fn save(&mut self) {
        // SAFETY: `keel_fpu_save` stores exactly `size_of::<FpuState>()`
        // bytes at its argument, which `self` is (16-byte aligned), and
        // changes no register but x1/x2 (caller-saved).
        unsafe { keel_fpu_save(self) }
    }

    /// Loads `self` into this CPU's FP/SIMD registers.
    pub fn restore(&self) {
        // SAFETY: `keel_fpu_restore` only reads `*self` and writes FP/SIMD
        // registers, which kernel code never uses (softfloat target).
        unsafe { keel_fpu_restore(self) }
    }
}

/// The thread's TLS base: TPIDR_EL0, which user code may have changed, so
/// it is read back rather than `current` returned.
pub fn save_tls(_current: usize) -> usize {
    read_sysreg!("tpidr_el0", nomem) as usize
}

/// Sets the TLS base register (TPIDR_EL0) for the thread about to run.
pub fn load_tls(value: usize) {
    // SAFETY: TPIDR_EL0 is a scratch register for EL0; the kernel does not
    // use it (except the fatal stack-overflow report).
    unsafe { asm!("msr tpidr_el0, {}", in(reg) value, options(nomem, nostack, preserves_flags)) };
}

/// Returns to user mode with the registers `*regs`, on a fresh kernel
/// stack; the next entry from EL0 saves into `*regs`.
///
/// # Safety
/// `regs` must point to a valid `UserRegs` that stays valid (and is not
/// otherwise written) until the next entry from EL0 on this CPU has
/// returned it to the portable side. The user address space the thread runs
/// in must be loaded (or the thread faults at once). Nothing on the current
/// kernel stack may be used again: the stack is reset.
pub unsafe fn enter_user(regs: *const UserRegs) -> ! {
    // SAFETY: guaranteed by the caller; TPIDR_EL1 points at this CPU's
    // block since the entry code.
    unsafe { keel_enter_user(regs) }
}

/// A CPU's kernel stacks and current user registers, reached through
/// TPIDR_EL1 by the entry assembly.
#[repr(C, align(64))]
pub(super) struct PerCpu {
    /// The top of this CPU's kernel stack: SP_EL1 at every entry from EL0.
    stack_top: AtomicUsize,
    /// The `UserRegs` of the thread running at EL0 (written by
    /// `keel_enter_user`).
    user_regs: AtomicUsize,
    /// The top of this CPU's overflow stack.
    overflow_top: AtomicUsize,
}

pub(super) const CPU_STACK_TOP: usize = core::mem::offset_of!(PerCpu, stack_top);
const CPU_USER_REGS: usize = core::mem::offset_of!(PerCpu, user_regs);
pub(super) const CPU_OVERFLOW_TOP: usize = core::mem::offset_of!(PerCpu, overflow_top);
/// log2 of the size of a block: `KEEL_CPUS + (index << CPU_BLOCK_SHIFT)`.
pub(super) const CPU_BLOCK_SHIFT: u32 = 6;
const _: () = assert!(core::mem::size_of::<PerCpu>() == 1 << CPU_BLOCK_SHIFT);

/// The per-CPU blocks, by CPU index (the boot CPU's stacks are filled in
/// by `entry`'s assembly, the others' by [`set_stacks`]).
#[unsafe(no_mangle)]
static KEEL_CPUS: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        stack_top: AtomicUsize::new(0),
        user_regs: AtomicUsize::new(0),
        overflow_top: AtomicUsize::new(0),
    }
}; MAX_CPUS];

/// TPIDR_EL1: this CPU's block.
fn this_cpu_addr() -> usize {
    read_sysreg!("tpidr_el1", nomem) as usize
}

/// This CPU's block.
fn this_cpu() -> &'static PerCpu {
    &KEEL_CPUS[cpu_index()]
}

/// This CPU's index: that of its block, which TPIDR_EL1 points at.
#[inline]
pub fn cpu_index() -> usize {
    this_cpu_addr().wrapping_sub(KEEL_CPUS.as_ptr() as usize) >> CPU_BLOCK_SHIFT
}

/// Records the stacks CPU `index` will run on (before it starts).
pub(super) fn set_stacks(index: usize, stack_top: usize, overflow_top: usize) {
    if let Some(cpu) = KEEL_CPUS.get(index) {
        cpu.stack_top.store(stack_top, Ordering::Relaxed);
        cpu.overflow_top.store(overflow_top, Ordering::Relaxed);
    }
}

/// The top of this CPU's kernel stack.
pub(super) fn kernel_stack_top() -> usize {
    this_cpu().stack_top.load(Ordering::Relaxed)
}

/// An IRQ taken at EL0 (the common stub saved the user state in `frame`):
/// saves it into the running thread's `UserRegs`, then runs what
/// `entry::on_interrupt` says (the same thread after a spurious one).
pub(super) fn user_interrupt(
    frame: &super::exception::TrapFrame,
    irq: Option<crate::trap::Interrupt>,
) -> ! {
    let regs = this_cpu().user_regs.load(Ordering::Relaxed) as *mut UserRegs;
    let (x, sp, pc, pstate) = (frame.x, frame.sp, frame.elr, frame.spsr);
    // SAFETY: `regs` is what the last `enter_user` on this CPU ran, which
    // the portable side keeps valid and unaliased until this entry has
    // saved into it (the contract of `enter_user`).
    unsafe { regs.write(UserRegs { x, sp, pc, pstate }) };
    let next = match irq {
        Some(irq) => crate::entry::on_interrupt(irq),
        None => regs.cast_const(),
    };
    // SAFETY: `next` comes from the portable side (valid registers, address
    // space loaded); the stack is abandoned.
    unsafe { enter_user(next) }
}

/// MDSCR_EL1 for user mode: TDCC (EL0 access to the debug communication
/// channel traps); software step, kernel debug and monitor debug events off.
const MDSCR_USER: u64 = 1 << 12;

/// Called on every CPU before any user code runs (TPIDR_EL1 and the
/// stacks are set by then): the EL0 thread-ID registers start at zero;
/// debug state is known (MDSCR_EL1).
pub(super) fn init_cpu() {
    // SAFETY: zeroing the EL0 thread-ID registers only affects what user
    // code reads there; MDSCR_EL1 only controls debug events (none are set
    // up) and EL0's access to the debug channel.
    unsafe {
        asm!(
            "msr tpidrro_el0, xzr",
            "msr tpidr_el0, xzr",
            "msr mdscr_el1, {mdscr}",
            "isb",
            mdscr = in(reg) MDSCR_USER,
            options(nomem, nostack, preserves_flags),
        );
    }
}

// ESR_EL1.EC values of exceptions from EL0 (and `EC_UNKNOWN`, `EC_BRK`).
const EC_SVC64: u64 = 0x15;
const EC_INSTRUCTION_ABORT_LOWER: u64 = 0x20;
const EC_PC_ALIGNMENT: u64 = 0x22;
const EC_DATA_ABORT_LOWER: u64 = 0x24;
const EC_SP_ALIGNMENT: u64 = 0x26;
/// ISS of data aborts: WnR (the access was a write) and CM (a cache
/// maintenance instruction, reported with WnR set: a read for us).
const ISS_WNR: u64 = 1 << 6;
const ISS_CM: u64 = 1 << 8;
/// Fault status codes (ISS 5:0) up to this one are MMU faults: address
/// size, translation, access flag and permission, at levels 0–3.
const FSC_LAST_MMU: u64 = 0x0f;
/// Fault status code of an alignment fault.
const FSC_ALIGNMENT: u64 = 0x21;

/// Decodes a synchronous exception from EL0 other than an SVC. `sp` is the
/// user stack pointer (FAR is not set for an SP alignment fault).
fn user_fault(esr: u64, far: u64, sp: u64) -> UserFault {
    let ec = (esr >> 26) & 0x3f;
    let fsc = esr & 0x3f;
    let addr = far as usize;
    let access = match ec {
        EC_INSTRUCTION_ABORT_LOWER => Access::Exec,
        _ if esr & ISS_WNR != 0 && esr & ISS_CM == 0 => Access::Write,
        _ => Access::Read,
    };
    match ec {
        EC_DATA_ABORT_LOWER | EC_INSTRUCTION_ABORT_LOWER if fsc <= FSC_LAST_MMU => {
            UserFault::PageFault { addr, access }
        }
        EC_DATA_ABORT_LOWER if fsc == FSC_ALIGNMENT => UserFault::Alignment { addr },
        EC_UNKNOWN => UserFault::IllegalInstruction,
        EC_BRK => UserFault::Breakpoint,
        EC_PC_ALIGNMENT => UserFault::Alignment { addr },
        EC_SP_ALIGNMENT => UserFault::Alignment { addr: sp as usize },
        _ => UserFault::Other(ec),
    }
}

/// Called by `keel_user_sync_entry` on this CPU's kernel stack, with the
/// thread's registers saved, for every synchronous exception from EL0.
/// Returns the registers to enter next.
#[unsafe(no_mangle)]
extern "C" fn keel_user_sync(esr: u64, far: u64) -> *const UserRegs {
    if (esr >> 26) & 0x3f == EC_SVC64 {
        return crate::arch::common::syscall(this_cpu().user_regs.load(Ordering::Relaxed));
    }
    // SP_EL0 is still the user's stack pointer.
    let sp = read_sysreg!("sp_el0", nomem);
    crate::entry::on_user_fault(user_fault(esr, far, sp))
}

unsafe extern "C" {
    fn keel_enter_user(regs: *const UserRegs) -> !;
    fn keel_fpu_save(state: *mut FpuState);
    fn keel_fpu_restore(state: *const FpuState);
}

core::arch::global_asm!(
    asm_pairs!(),
    r#"
    .section .text.keel_user_entry, "ax"
    // Reached from the lower-EL synchronous vector with every register
    // the user's and SP_EL1 = this CPU's stack top.
    .global keel_user_sync_entry
    .type keel_user_sync_entry, %function
keel_user_sync_entry:
    stp     x0, x1, [sp, #-16]!
    mrs     x0, tpidr_el1
    ldr     x0, [x0, #{cpu_user_regs}]
    pairs   stp, x0, 16, 16, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15
    pairs   stp, x0, 128, 16, x16, x17, x18, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, x29
    ldp     x2, x3, [sp], #16
    stp     x2, x3, [x0]
    mrs     x2, sp_el0
    stp     x30, x2, [x0, #{off_x30}]
    mrs     x3, elr_el1
    mrs     x4, spsr_el1
    stp     x3, x4, [x0, #{off_pc}]
    mrs     x0, esr_el1
    mrs     x1, far_el1
    mov     x29, xzr
    mov     x30, xzr
    bl      keel_user_sync
    // Fall through with x0 = the registers to enter.
    .size keel_user_sync_entry, . - keel_user_sync_entry

    // keel_enter_user(x0 = regs): never returns.
    .global keel_enter_user
    .type keel_enter_user, %function
keel_enter_user:
    mrs     x1, tpidr_el1
    str     x0, [x1, #{cpu_user_regs}]
    ldr     x2, [x1, #{cpu_stack_top}]
    mov     sp, x2
    ldp     x2, x3, [x0, #{off_pc}]
    ldr     x4, [x0, #{off_sp}]
    movz    x5, #{mask_hi}, lsl #16
    movk    x5, #{mask_lo}
    and     x3, x3, x5
    msr     elr_el1, x2
    msr     spsr_el1, x3
    msr     sp_el0, x4
    pairs   ldp, x0, 16, 16, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15
    pairs   ldp, x0, 128, 16, x16, x17, x18, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, x29
    ldr     x30, [x0, #{off_x30}]
    ldp     x0, x1, [x0]
    eret
    .size keel_enter_user, . - keel_enter_user
    .purgem pairs
"#,
    cpu_user_regs = const CPU_USER_REGS,
    cpu_stack_top = const CPU_STACK_TOP,
    off_x30 = const OFF_X30,
    off_sp = const OFF_SP,
    off_pc = const OFF_PC,
    mask_hi = const SPSR_USER_MASK >> 16,
    mask_lo = const SPSR_USER_MASK & 0xffff,
);

// The only kernel code that touches FP/SIMD registers. The assembler needs
// the FP and SIMD extensions named: the softfloat target disables them.
core::arch::global_asm!(
    asm_pairs!(),
    r#"
    .section .text.keel_fpu, "ax"
    .arch_extension fp
    .arch_extension simd

    // keel_fpu_save(x0 = &mut FpuState)
    .global keel_fpu_save
    .type keel_fpu_save, %function
keel_fpu_save:
    pairs   stp, x0, 0, 32, q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15
    pairs   stp, x0, 256, 32, q16, q17, q18, q19, q20, q21, q22, q23, q24, q25, q26, q27, q28, q29, q30, q31
    mrs     x1, fpcr
    mrs     x2, fpsr
    str     x1, [x0, #512]
    str     x2, [x0, #520]
    ret
    .size keel_fpu_save, . - keel_fpu_save

    // keel_fpu_restore(x0 = &FpuState)
    .global keel_fpu_restore
    .type keel_fpu_restore, %function
keel_fpu_restore:
    pairs   ldp, x0, 0, 32, q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15
    pairs   ldp, x0, 256, 32, q16, q17, q18, q19, q20, q21, q22, q23, q24, q25, q26, q27, q28, q29, q30, q31
    ldr     x1, [x0, #512]
    ldr     x2, [x0, #520]
    msr     fpcr, x1
    msr     fpsr, x2
    ret
    .size keel_fpu_restore, . - keel_fpu_restore

    .purgem pairs
    .arch_extension nosimd
    .arch_extension nofp
"#
);

// Test helpers: set and read v7 and FPCR.
#[cfg(feature = "ktest")]
core::arch::global_asm!(
    r#"
    .section .text.keel_test_fp, "ax"
    .arch_extension fp
    .arch_extension simd
    // keel_test_fp_set(x0 = low, x1 = high, x2 = fpcr): v7 = high:low.
    .global keel_test_fp_set
    .type keel_test_fp_set, %function
keel_test_fp_set:
    fmov    d7, x0
    mov     v7.d[1], x1
    msr     fpcr, x2
    ret
    .size keel_test_fp_set, . - keel_test_fp_set

    // keel_test_fp_get(x0 = out): out = [v7 low, v7 high, fpcr].
    .global keel_test_fp_get
    .type keel_test_fp_get, %function
keel_test_fp_get:
    fmov    x1, d7
    mov     x2, v7.d[1]
    stp     x1, x2, [x0]
    mrs     x1, fpcr
    str     x1, [x0, #16]
    ret
    .size keel_test_fp_get, . - keel_test_fp_get
    .arch_extension nosimd
    .arch_extension nofp
"#
);

#[cfg(feature = "ktest")]
mod tests {
    use super::super::entry;
    use super::*;

    /// v7 (low, high) and FPCR, as `keel_test_fp_get` stores them.
    #[repr(C)]
    #[derive(Debug, Default, PartialEq, Eq)]
    struct FpProbe {
        low: u64,
        high: u64,
        fpcr: u64,
    }

    unsafe extern "C" {
        fn keel_test_fp_set(low: u64, high: u64, fpcr: u64);
        fn keel_test_fp_get(out: *mut FpProbe);
    }

    fn fp_set(low: u64, high: u64, fpcr: u64) {
        // SAFETY: writes v7 and FPCR only; kernel code keeps nothing in
        // FP/SIMD registers, and no user thread runs during the tests.
        unsafe { keel_test_fp_set(low, high, fpcr) }
    }

    fn fp_get() -> FpProbe {
        let mut probe = FpProbe::default();
        // SAFETY: reads v7 and FPCR and stores them (24 bytes) in `probe`.
        unsafe { keel_test_fp_get(&mut probe) };
        probe
    }

    /// FPCR.RMode = round towards zero, and FZ.
    const TEST_FPCR: u64 = (0b11 << 22) | (1 << 24);

    crate::ktest!(
        fn user_regs_use_the_syscall_registers() {
            // The portable side of `UserRegs` is checked on every
            // architecture (`arch::tests`); here, which AArch64
            // register is which.
            let mut r = UserRegs::new(0x40_1000, 0x7fff_ffff_0000, 0x20_0000);
            kassert_eq!(r.pc, 0x40_1000);
            kassert_eq!(r.sp, 0x7fff_ffff_0000);
            kassert_eq!(r.x[0], 0x20_0000);
            kassert_eq!(r.pstate, SPSR_EL0T);
            kassert!(r.x[1..].iter().all(|&v| v == 0));
            for (i, v) in r.x.iter_mut().enumerate() {
                *v = 0x1000 + i as u64;
            }
            kassert_eq!(
                r.syscall_args(),
                (0x1008, [0x1000, 0x1001, 0x1002, 0x1003, 0x1004, 0x1005])
            );
            r.set_result(-22);
            kassert_eq!(r.x[0], (-22i64) as u64);
            // TLS is TPIDR_EL0, outside `UserRegs`.
            let before = r.clone();
            r.set_tls(0x1234);
            kassert_eq!(r, before);
            kassert_eq!(ELF_MACHINE, 183);
            Ok(())
        }
    );

    crate::ktest!(
        fn fpu_state_save_restore() {
            let mut outer = FpuState::default();
            outer.save();
            fp_set(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210, TEST_FPCR);
            let mut saved = FpuState::default();
            saved.save();
            kassert_eq!(saved.q[7], [0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]);
            kassert_eq!(saved.fpcr, TEST_FPCR);
            // Clobber, then restore.
            fp_set(1, 2, 0);
            kassert_eq!(
                fp_get(),
                FpProbe {
                    low: 1,
                    high: 2,
                    fpcr: 0
                }
            );
            saved.restore();
            kassert_eq!(
                fp_get(),
                FpProbe {
                    low: 0x0123_4567_89ab_cdef,
                    high: 0xfedc_ba98_7654_3210,
                    fpcr: TEST_FPCR
                }
            );
            // The default state is all zero with the default FPCR.
            FpuState::default().restore();
            kassert_eq!(
                fp_get(),
                FpProbe {
                    low: 0,
                    high: 0,
                    fpcr: 0
                }
            );
            outer.restore();
            Ok(())
        }
    );

    crate::ktest!(
        fn user_faults_are_decoded() {
            let esr = |ec: u64, iss: u64| (ec << 26) | (1 << 25) | iss;
            let far = 0x40_2008;
            let cases = [
                // Data abort, translation fault level 3, read.
                (
                    esr(EC_DATA_ABORT_LOWER, 0x07),
                    UserFault::PageFault {
                        addr: far as usize,
                        access: Access::Read,
                    },
                ),
                // Permission fault on a write (WnR).
                (
                    esr(EC_DATA_ABORT_LOWER, ISS_WNR | 0x0f),
                    UserFault::PageFault {
                        addr: far as usize,
                        access: Access::Write,
                    },
                ),
                // Cache maintenance (CM, WnR) counts as a read.
                (
                    esr(EC_DATA_ABORT_LOWER, ISS_CM | ISS_WNR | 0x06),
                    UserFault::PageFault {
                        addr: far as usize,
                        access: Access::Read,
                    },
                ),
                (
                    esr(EC_DATA_ABORT_LOWER, FSC_ALIGNMENT),
                    UserFault::Alignment { addr: far as usize },
                ),
                // Synchronous external abort: not a page fault.
                (
                    esr(EC_DATA_ABORT_LOWER, 0x10),
                    UserFault::Other(EC_DATA_ABORT_LOWER),
                ),
                (
                    esr(EC_INSTRUCTION_ABORT_LOWER, 0x0b),
                    UserFault::PageFault {
                        addr: far as usize,
                        access: Access::Exec,
                    },
                ),
                (esr(EC_UNKNOWN, 0), UserFault::IllegalInstruction),
                (esr(EC_BRK, 0x1234), UserFault::Breakpoint),
                (
                    esr(EC_PC_ALIGNMENT, 0),
                    UserFault::Alignment { addr: far as usize },
                ),
                (
                    esr(EC_SP_ALIGNMENT, 0),
                    UserFault::Alignment { addr: 0x7fff_0004 },
                ),
                // MSR/MRS trap, WFI/WFE trap.
                (esr(0x18, 0), UserFault::Other(0x18)),
                (esr(0x01, 0), UserFault::Other(0x01)),
            ];
            for (esr, want) in cases {
                let got = user_fault(esr, far, 0x7fff_0004);
                kassert!(got == want, "ESR {:#x}: {:?}, want {:?}", esr, got, want);
            }
            Ok(())
        }
    );

    crate::ktest!(
        fn per_cpu_block_is_installed() {
            kassert_eq!(this_cpu_addr(), &raw const KEEL_CPUS[0] as usize);
            kassert_eq!(cpu_index(), 0);
            kassert_eq!(kernel_stack_top(), entry::boot_stack().end);
            let overflow = KEEL_CPUS[0].overflow_top.load(Ordering::Relaxed);
            kassert_eq!(overflow, entry::overflow_stack().end);
            kassert_eq!((CPU_STACK_TOP, CPU_USER_REGS, CPU_OVERFLOW_TOP), (0, 8, 16));
            Ok(())
        }
    );
}

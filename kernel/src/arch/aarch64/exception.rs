//! AArch64 exceptions: the vector table, the trap frame, the Rust
//! dispatcher, the exception-fixup table and the small assembly routines
//! whose traps the dispatcher knows about (`probe_read`, the breakpoint and
//! the semihosting call).
//!
//! Every vector (16 entries of 0x80 bytes, 2 KiB aligned, at VBAR_EL1) but
//! one pushes a [`TrapFrame`] on the current kernel stack (SP_EL1) and
//! enters one common stub, which saves x0–x30, the interrupted SP (SP_EL0
//! for traps from a lower EL), ELR, SPSR, ESR and FAR, links a frame record
//! {x29, ELR} into the frame-pointer chain so backtraces pass through the
//! trap, calls [`keel_trap_dispatch`], and restores everything from the
//! (possibly edited) frame before `eret`. The dispatcher either resumes —
//! with ELR advanced past a breakpoint, or redirected to an exception-fixup
//! address — or ends the kernel through [`crate::trap::fatal`]. The
//! exception is the lower-EL synchronous vector (SVC and faults from user
//! mode), which branches to `keel_user_sync_entry` in `user`: it saves the
//! user registers into the thread's `UserRegs` instead. IRQ, FIQ and SError
//! from user mode take the common stub (on the CPU's kernel stack, whose top
//! SP_EL1 is at EL0); an IRQ (from user mode, or in the kernel while idle)
//! goes to `gic` and `crate::entry::on_interrupt`, the rest are fatal.
//!
//! Before storing anything, each vector checks (without a free register, by
//! folding x0 into SP and back) that the new frame lies on the stack and not
//! in the guard below it (see `entry::KERNEL_STACK_SHIFT`). If not — a kernel
//! stack overflow, or a trap taken with the stack nearly full — it switches
//! to this CPU's overflow stack (its per-CPU block's `overflow_top`, see
//! `user`; itself above an unmapped guard), builds the frame there (kind [`OVERFLOW_KIND`]; the EL0
//! thread-ID registers are clobbered as scratch) and the dispatcher reports
//! a kernel stack overflow through [`crate::trap::fatal`]: as the page fault
//! in the guard when that is what trapped (so `fatal` names the guard page),
//! else as `Machine("kernel stack overflow")`.
//!
//! The fixup table (`__ex_table`, bounded by `__ex_table_start/_end`) holds
//! [`crate::arch::FixupEntry`] pairs of (faulting PC, resume PC); only kernel
//! code that is expected to fault (`keel_probe_read`, `keel_user_copy` in
//! `mm`) adds entries, from assembly.

use crate::trap::{TrapCause, TrapRecord};

/// Register state saved by the vector stub; laid out for the assembly below
/// (offsets in bytes are fixed by the `const` operands).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// x0–x30.
    pub x: [u64; 31],
    /// The interrupted stack pointer (SP_EL1 for traps from EL1, SP_EL0 for
    /// traps from EL0).
    pub sp: u64,
    /// Exception link register: where `eret` resumes.
    pub elr: u64,
    /// Saved program status.
    pub spsr: u64,
    /// Exception syndrome.
    pub esr: u64,
    /// Fault address (valid for aborts and alignment faults).
    pub far: u64,
    /// Vector index 0–15 (see [`VectorKind`]), or [`OVERFLOW_KIND`].
    pub kind: u64,
    _pad: u64,
    /// Frame record {x29, elr} that x29 points at during the dispatch.
    frame_record: [u64; 2],
}

const FRAME_SIZE: usize = core::mem::size_of::<TrapFrame>();
const OFF_SP: usize = core::mem::offset_of!(TrapFrame, sp);
const OFF_SPSR: usize = core::mem::offset_of!(TrapFrame, spsr);
const OFF_FAR: usize = core::mem::offset_of!(TrapFrame, far);
const OFF_RECORD: usize = core::mem::offset_of!(TrapFrame, frame_record);
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));
const _: () = assert!(OFF_SP == 31 * 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, elr) == OFF_SP + 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, esr) == OFF_SPSR + 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, kind) == OFF_FAR + 8);

/// The four vector groups, each with Synchronous, IRQ, FIQ, SError entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VectorKind {
    /// Current EL with SP_EL0 (never used: the kernel always runs on SP_EL1).
    CurrentSp0,
    /// Current EL with SP_ELx: traps taken by kernel code.
    CurrentSpx,
    /// Lower EL, AArch64: IRQ, FIQ and SError from user mode (synchronous
    /// exceptions go to `user`).
    Lower64,
    /// Lower EL, AArch32 (not supported).
    Lower32,
}

// ESR_EL1.EC values handled here (`EC_UNKNOWN` and `EC_BRK` also for EL0,
// in `user`).
pub(super) const EC_UNKNOWN: u64 = 0x00;
const EC_INSTRUCTION_ABORT_SAME_EL: u64 = 0x21;
const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
pub(super) const EC_BRK: u64 = 0x3c;
/// ESR_EL1.ISS.WnR for data aborts: the access was a write.
const ESR_WNR: u64 = 1 << 6;

core::arch::global_asm!(
    asm_pairs!(),
    r#"
    .section .text.keel_vectors, "ax"
    .balign 2048
    .global keel_vectors
keel_vectors:
    .macro trap_vector kind
    .balign 0x80
    sub     sp, sp, #{frame_size}
    // Stack check without a free register: sp += x0; x0 = the new frame's
    // address; test its guard bit; undo.
    add     sp, sp, x0
    sub     x0, sp, x0
    tbnz    x0, #{stack_shift}, keel_stack_overflow
    sub     x0, sp, x0
    sub     sp, sp, x0
    stp     x0, x1, [sp]
    mov     x0, #\kind
    b       keel_trap_common
    .endm
    .irp kind, 0,1,2,3,4,5,6,7
    trap_vector \kind
    .endr
    // Lower EL, AArch64, synchronous: SVC and user faults (user.rs).
    .balign 0x80
    b       keel_user_sync_entry
    .irp kind, 9,10,11,12,13,14,15
    trap_vector \kind
    .endr

    // The trap frame would land in a stack guard: sp = frame + x0, x0 =
    // frame. Stash both in the EL0 thread registers (the kernel is ending
    // anyway) and report from the overflow stack as vector {overflow_kind}.
    .type keel_stack_overflow, %function
keel_stack_overflow:
    msr     tpidrro_el0, x0
    sub     x0, sp, x0
    msr     tpidr_el0, x0
    mrs     x0, tpidr_el1
    ldr     x0, [x0, #{cpu_overflow_top}]
    mov     sp, x0
    sub     sp, sp, #{frame_size}
    mrs     x0, tpidr_el0
    stp     x0, x1, [sp]
    mov     x0, #{overflow_kind}
    b       keel_trap_common
    .size keel_stack_overflow, . - keel_stack_overflow

    .type keel_trap_common, %function
keel_trap_common:
    pairs   stp, sp, 16, 16, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15
    pairs   stp, sp, 128, 16, x16, x17, x18, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, x29
    str     x30, [sp, #240]
    cmp     x0, #8
    b.hs    1f
    add     x1, sp, #{frame_size}
    b       2f
1:  mrs     x1, sp_el0
    cmp     x0, #{overflow_kind}
    b.ne    2f
    mrs     x1, tpidrro_el0         // the overflowing frame's address
    add     x1, x1, #{frame_size}
2:  mrs     x2, elr_el1
    stp     x1, x2, [sp, #{off_sp}]
    mrs     x3, spsr_el1
    mrs     x4, esr_el1
    stp     x3, x4, [sp, #{off_spsr}]
    mrs     x5, far_el1
    stp     x5, x0, [sp, #{off_far}]
    stp     x29, x2, [sp, #{off_record}]
    add     x29, sp, #{off_record}
    mov     x0, sp
    bl      keel_trap_dispatch

    ldp     x1, x2, [sp, #{off_sp}]
    ldr     x3, [sp, #{off_spsr}]
    msr     elr_el1, x2
    msr     spsr_el1, x3
    ldr     x4, [sp, #{off_far} + 8]
    cmp     x4, #8
    b.lo    3f
    cmp     x4, #{overflow_kind}
    b.hs    3f
    msr     sp_el0, x1
3:  ldp     x0, x1, [sp]
    pairs   ldp, sp, 16, 16, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15
    pairs   ldp, sp, 128, 16, x16, x17, x18, x19, x20, x21, x22, x23, x24, x25, x26, x27, x28, x29
    ldr     x30, [sp, #240]
    add     sp, sp, #{frame_size}
    eret
    .size keel_trap_common, . - keel_trap_common

    // probe_read: x0 = address; returns x0 = the byte, x1 = 0, or, if the
    // load faults, x0 = 0, x1 = 1 (the dispatcher recorded the fault).
    .section .text.keel_probe_read, "ax"
    .global keel_probe_read
    .type keel_probe_read, %function
keel_probe_read:
1:  ldrb    w0, [x0]
    mov     x1, #0
    ret
2:  mov     x0, #0
    mov     x1, #1
    ret
    .size keel_probe_read, . - keel_probe_read
    .pushsection __ex_table, "a"
    .balign 8
    .quad   1b, 2b
    .popsection

    .section .text.keel_breakpoint, "ax"
    .global keel_breakpoint, keel_breakpoint_site
    .type keel_breakpoint, %function
keel_breakpoint:
keel_breakpoint_site:
    brk     #0
    ret
    .size keel_breakpoint, . - keel_breakpoint

    // Semihosting call: w0 = operation, x1 = parameter; returns x0. Without
    // `-semihosting` HLT is undefined; the dispatcher then skips it and x0
    // comes back unchanged.
    .section .text.keel_semihost, "ax"
    .global keel_semihost, keel_semihost_site
    .type keel_semihost, %function
keel_semihost:
keel_semihost_site:
    hlt     #0xf000
    ret
    .size keel_semihost, . - keel_semihost
    .purgem pairs
"#,
    frame_size = const FRAME_SIZE,
    off_sp = const OFF_SP,
    off_spsr = const OFF_SPSR,
    off_far = const OFF_FAR,
    off_record = const OFF_RECORD,
    stack_shift = const super::entry::KERNEL_STACK_SHIFT,
    overflow_kind = const OVERFLOW_KIND,
    cpu_overflow_top = const super::user::CPU_OVERFLOW_TOP,
);

/// The `kind` of a trap frame built on this CPU's overflow stack because
/// the interrupted stack had no room for it.
const OVERFLOW_KIND: u64 = 16;

/// The value pair `keel_probe_read` returns in x0/x1.
#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

unsafe extern "C" {
    static keel_breakpoint_site: u8;
    static keel_semihost_site: u8;
    fn keel_probe_read(addr: usize) -> ProbeResult;
    fn keel_breakpoint();
    fn keel_semihost(op: u64, param: usize) -> u64;
}

/// See [`crate::arch`]: reads one byte, or reports the fault it caused.
pub fn probe_read(addr: usize) -> Result<u8, TrapRecord> {
    // SAFETY: `keel_probe_read` performs a single byte load whose faults are
    // fixed up via the exception table; it touches no other memory and
    // follows the C ABI.
    let r = unsafe { keel_probe_read(addr) };
    if r.faulted == 0 {
        return Ok(r.value as u8);
    }
    // The dispatcher recorded the fault just before resuming at the fixup.
    let (cause, pc) = (TrapCause::Other(0), 0);
    Err(crate::trap::last().0.unwrap_or(TrapRecord { cause, pc }))
}

/// See [`crate::arch`]: executes `brk #0` at [`breakpoint_site`].
pub fn breakpoint() {
    // SAFETY: `keel_breakpoint` is `brk #0; ret`; the dispatcher records the
    // breakpoint and resumes after it with every register restored.
    unsafe { keel_breakpoint() }
}

/// The address of the `brk` instruction [`breakpoint`] executes.
pub fn breakpoint_site() -> usize {
    (&raw const keel_breakpoint_site) as usize
}

/// Issues a semihosting call (`hlt #0xf000`). Returns `op` unchanged when
/// QEMU runs without `-semihosting`.
///
/// # Safety
/// `param` must be what the semihosting operation `op` expects (for most
/// operations, the address of a readable parameter block).
pub unsafe fn semihost(op: u64, param: usize) -> u64 {
    // SAFETY: the routine is `hlt #0xf000; ret`; the caller guarantees the
    // parameter block; without semihosting the dispatcher skips the HLT.
    unsafe { keel_semihost(op, param) }
}

/// Entered from `keel_trap_common` with the saved frame of every exception.
/// Edits to `frame` (ELR, registers) take effect on return.
#[unsafe(no_mangle)]
extern "C" fn keel_trap_dispatch(frame: &mut TrapFrame) {
    let overflow = frame.kind == OVERFLOW_KIND;
    let group = match frame.kind / 4 {
        _ if overflow => VectorKind::CurrentSpx,
        0 => VectorKind::CurrentSp0,
        1 => VectorKind::CurrentSpx,
        2 => VectorKind::Lower64,
        _ => VectorKind::Lower32,
    };
    // IRQs: from user mode, or in the kernel only while idle.
    if frame.kind % 4 == 1 && matches!(group, VectorKind::CurrentSpx | VectorKind::Lower64) {
        let irq = super::gic::interrupt();
        if group == VectorKind::Lower64 {
            super::user::user_interrupt(frame, irq)
        }
        match irq {
            // SAFETY: `on_interrupt` hands out only valid thread registers
            // with their address space loaded; this abandons the idle stack.
            Some(irq) => unsafe { super::enter_user(crate::entry::on_interrupt(irq)) },
            None => return,
        }
    }
    let pc = frame.elr as usize;
    // `trap::fatal` adds the "kernel stack overflow" line to a fault in a
    // stack guard.
    let in_guard = overflow
        && (frame.esr >> 26) & 0x3f == EC_DATA_ABORT_SAME_EL
        && super::in_stack_guard(frame.far as usize);
    let cause = match (group, frame.kind % 4) {
        _ if in_guard => abort(frame, false),
        _ if overflow => TrapCause::Machine("kernel stack overflow"),
        (VectorKind::CurrentSpx, 0) => match classify_sync(frame) {
            Some(cause) => cause,
            None => return,
        },
        (_, 0) => TrapCause::Other(frame.esr),
        (_, 1) => TrapCause::Machine("unexpected IRQ"),
        (_, 2) => TrapCause::Machine("unexpected FIQ"),
        _ => TrapCause::Machine("SError"),
    };
    let record = TrapRecord { cause, pc };
    if group == VectorKind::CurrentSpx
        && frame.kind.is_multiple_of(4)
        && !overflow
        && let Some(fixup) = crate::arch::fixup_for(frame.elr as usize).map(|f| f as u64)
    {
        crate::trap::record(record);
        frame.elr = fixup;
        return;
    }
    let frame = &*frame;
    crate::trap::fatal(
        record,
        || dump_registers(frame, group),
        || trap_backtrace(frame, cause),
    )
}

/// Prints the frames of the code a trap interrupted (frame #0, the trapping
/// PC, is printed by `trap::fatal`).
fn trap_backtrace(frame: &TrapFrame, cause: TrapCause) {
    // A jump to a bad address: the caller never set up a frame record, but
    // its return address is still in the link register.
    let jumped = matches!(cause, TrapCause::PageFault { exec: true, .. });
    if jumped {
        crate::arch::print_frame(1, frame.x[30] as usize);
    }
    let first = 1 + usize::from(jumped);
    crate::arch::print_frames(frame.x[29] as usize, first, super::read_frame_record);
}

/// Decodes a synchronous exception taken from EL1. Returns `None` when it
/// has been handled and the kernel should resume at `frame.elr`.
fn classify_sync(frame: &mut TrapFrame) -> Option<TrapCause> {
    match (frame.esr >> 26) & 0x3f {
        EC_BRK => {
            let (cause, pc) = (TrapCause::Breakpoint, frame.elr as usize);
            crate::trap::record(TrapRecord { cause, pc });
            frame.elr += 4;
            None
        }
        EC_DATA_ABORT_SAME_EL => Some(abort(frame, false)),
        EC_INSTRUCTION_ABORT_SAME_EL => Some(abort(frame, true)),
        EC_UNKNOWN if frame.elr as usize == (&raw const keel_semihost_site) as usize => {
            // `hlt #0xf000` without `-semihosting`: skip it.
            frame.elr += 4;
            None
        }
        EC_UNKNOWN => Some(TrapCause::IllegalInstruction),
        _ => Some(TrapCause::Other(frame.esr)),
    }
}

/// The page fault an instruction (`exec`) or data abort taken from EL1
/// reports.
fn abort(frame: &TrapFrame, exec: bool) -> TrapCause {
    let (addr, write) = (frame.far as usize, !exec && frame.esr & ESR_WNR != 0);
    TrapCause::PageFault { addr, write, exec }
}

fn dump_registers(frame: &TrapFrame, group: VectorKind) {
    let (kind, ec) = (frame.kind, (frame.esr >> 26) & 0x3f);
    kprintln!("vector {kind} ({group:?}), ESR_EL1.EC {ec:#04x}");
    for (i, regs) in frame.x.chunks(4).enumerate() {
        for (j, value) in regs.iter().enumerate() {
            kprint!("  x{:<2} {value:#018x}", i * 4 + j);
        }
        kprintln!();
    }
    let (sp, elr, spsr, esr, far) = (frame.sp, frame.elr, frame.spsr, frame.esr, frame.far);
    kprintln!("  sp  {sp:#018x}  elr {elr:#018x}  spsr {spsr:#010x}");
    kprintln!("  esr {esr:#018x}  far {far:#018x}");
}

// A routine whose undefined instruction is listed in the fixup table, so the
// tests can check how the dispatcher decodes an undefined instruction.
#[cfg(feature = "ktest")]
core::arch::global_asm!(
    r#"
    .section .text.keel_test_udf, "ax"
    .global keel_test_udf
    .type keel_test_udf, %function
keel_test_udf:
1:  udf     #0
    mov     x0, #0
    ret
2:  mov     x0, #1
    ret
    .size keel_test_udf, . - keel_test_udf
    .pushsection __ex_table, "a"
    .balign 8
    .quad   1b, 2b
    .popsection
"#
);

#[cfg(feature = "ktest")]
unsafe extern "C" {
    /// Returns 1 after its `udf` was fixed up, 0 if it did not trap.
    fn keel_test_udf() -> u64;
}

crate::ktest!(
    fn undefined_instruction_is_decoded() {
        // SAFETY: the routine's only effect is the trap at its `udf`, which
        // the fixup table turns into a return of 1.
        let fixed_up = unsafe { keel_test_udf() };
        crate::kassert_eq!(fixed_up, 1);
        let rec = crate::trap::last().0;
        crate::kassert!(
            matches!(rec, Some(TrapRecord { cause: TrapCause::IllegalInstruction, pc })
                if pc == keel_test_udf as *const () as usize),
            "recorded {:?}",
            rec
        );
        Ok(())
    }
);

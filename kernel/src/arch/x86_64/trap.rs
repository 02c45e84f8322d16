//! Traps: the IDT, the assembly entry stubs, the trap frame, and the one
//! Rust dispatcher every vector goes through. Also the exception-fixup
//! table, the breakpoint and probe routines, and frame-pointer backtraces.
//!
//! Every one of the 256 vectors has a 16-byte stub that pushes a zero
//! error code where the CPU pushes none, then the vector number, and jumps
//! to `keel_trap_common`, which saves all general-purpose registers into a
//! [`TrapFrame`] on the stack and calls [`keel_trap_dispatch`]. Whatever the
//! dispatcher leaves in the frame is restored by `iretq`, so a handler
//! resumes elsewhere by editing `frame.rip` (the fixup table) and the
//! syscall / user-mode work can reuse the same frame.
//!
//! Invariants: all gates are interrupt gates (interrupts stay masked in
//! handlers) to ring 0; only #BP's (vector 3) may be raised by user code
//! (`int3`, DPL 3), any other `int n` from ring 3 is a #GP; double faults
//! run on IST1 and NMIs on IST2 (see `cpu.rs`); every handler runs with
//! user-memory access closed (`clac` on entry when SMAP is on; `iretq`
//! restores the interrupted code's AC); the backtrace reads a frame record
//! only after checking that it lies inside a known kernel stack, so a
//! corrupt chain cannot fault.
//!
//! Traps from ring 3 (the saved CS has RPL 3) arrive on TSS.RSP0, the top
//! of the CPU's kernel stack; the common stub executes `swapgs` for them
//! only (see `user.rs` for the GS invariant), and the dispatcher hands them
//! to `user::user_trap`, which never returns here. An NMI, double fault or
//! machine check from ring 0 may have interrupted ring 0 running with the
//! user's GS: the dispatcher restores the kernel's first (they are fatal,
//! so nothing needs to swap back).
//!
//! A kernel stack overflow touches the guard page under the stack; the CPU
//! cannot push the page fault's frame there either, so the fault becomes a
//! double fault on IST1, which the dispatcher reports as the page fault on
//! the guard address (CR2) that it is.

use super::cpu::{IST_DOUBLE_FAULT, IST_NMI, KERNEL_CS};
use super::user::UserRegs;
use crate::trap::{TrapCause, TrapRecord};
use spin::{Mutex, Once};
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::registers::control::{Cr0, Cr4};
use x86_64::structures::DescriptorTablePointer;

/// The registers saved on every trap, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// The general-purpose registers, saved by the common trap entry in
    /// `UserRegs` layout. Its `rsp`, `rip` and `rflags` slots hold no
    /// register (the CPU saved those in the fields below).
    pub regs: UserRegs,
    /// Keeps the stack 16-byte aligned.
    padding: u64,
    /// The vector number, pushed by the stub.
    pub vector: u64,
    /// Pushed by the CPU, or 0 by the stub.
    pub error_code: u64,
    /// The interrupt frame the CPU pushed: RIP of the interrupted code,
    /// then the fields below.
    pub rip: u64,
    /// CS of the interrupted code (its privilege level in the low bits).
    pub cs: u64,
    /// RFLAGS of the interrupted code.
    pub rflags: u64,
    /// RSP of the interrupted code.
    pub rsp: u64,
    /// SS of the interrupted code.
    pub ss: u64,
}

core::arch::global_asm!(
    ".section .text.keel_trap, \"ax\"",
    ".balign 16",
    ".global keel_trap_stubs",
    "keel_trap_stubs:",
    ".set keel_vec, 0",
    ".rept 256",
    ".balign 16",
    // Push a zero unless the CPU pushes an error code for this vector.
    ".if !(keel_vec == 8 || (keel_vec >= 10 && keel_vec <= 14) || keel_vec == 17 || keel_vec == 21 || keel_vec == 29 || keel_vec == 30)",
    "pushq $0",
    ".endif",
    "pushq $keel_vec",
    "jmp keel_trap_common",
    ".set keel_vec, keel_vec + 1",
    ".endr",
    // Fails to assemble (.org cannot move backwards) if a stub outgrew its
    // 16 bytes; the IDT relies on stub N being at keel_trap_stubs + 16 * N.
    ".balign 16",
    ".org keel_trap_stubs + 256 * 16",
    //
    "keel_trap_common:",
    // From ring 3 (CS at 24(%rsp), above the vector and error code):
    // switch to the kernel's GS base.
    "testb $3, 24(%rsp)",
    "jz 1f",
    "swapgs",
    "1:",
    // Close user-memory access (the CPU saved RFLAGS.AC in the frame).
    "cmpb $0, {smap}(%rip)",
    "je 1f",
    "clac",
    "1:",
    // `TrapFrame::regs` and the padding: the slots of RIP, RFLAGS and the
    // padding are left as they are, RSP's gets the kernel's (unused).
    "subq $24, %rsp",
    ".irp reg, r15, r14, r13, r12, r11, r10, r9, r8, rsp, rbp, rdi, rsi, rdx, rcx, rbx, rax",
    "pushq %\\reg",
    ".endr",
    "cld",
    // The CPU aligned the stack to 16 before pushing its 5-word frame;
    // with the 2 stub words and 19 more rsp is 16-byte aligned again.
    "movq %rsp, %rdi",
    "call {dispatch}",
    ".irp reg, rax, rbx, rcx, rdx, rsi, rdi, rbp",
    "popq %\\reg",
    ".endr",
    "addq $8, %rsp",                            // the RSP slot
    ".irp reg, r8, r9, r10, r11, r12, r13, r14, r15",
    "popq %\\reg",
    ".endr",
    "addq $40, %rsp",                           // 3 slots, the vector, the error code
    // Back to ring 3 (only if a handler ever returns there): user GS.
    "testb $3, 8(%rsp)",
    "jz 1f",
    "swapgs",
    "1:",
    "iretq",
    //
    // `int3; ret`: the in-kernel breakpoint (see `arch::breakpoint`).
    ".global keel_breakpoint",
    ".global keel_breakpoint_site",
    "keel_breakpoint:",
    "keel_breakpoint_site:",
    "int3",
    "ret",
    //
    // u64 keel_probe_read(addr): the byte at addr, or u64::MAX on a fault.
    ".global keel_probe_read",
    "keel_probe_read:",
    "1:",
    "movzbl (%rdi), %eax",
    "ret",
    "2:",
    "movq $-1, %rax",
    "ret",
    ".pushsection __ex_table, \"a\"",
    ".balign 8",
    ".quad 1b, 2b",
    ".popsection",
    dispatch = sym keel_trap_dispatch,
    smap = sym super::mm::SMAP_ENABLED,
    options(att_syntax),
);

unsafe extern "C" {
    static keel_trap_stubs: u8;
}

/// One IDT gate descriptor.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Present, DPL 0, 64-bit interrupt gate (clears IF on entry).
const INTERRUPT_GATE: u8 = 0x8e;
/// The same with DPL 3: user code may raise it with `int`.
const USER_INTERRUPT_GATE: u8 = 0xee;

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

/// Builds and loads the IDT: every vector goes to its stub.
pub fn init() {
    let idt = IDT.call_once(|| {
        let stubs = (&raw const keel_trap_stubs) as u64;
        Idt(core::array::from_fn(|vector| {
            let handler = stubs + 16 * vector as u64;
            let ist = match vector {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                _ => 0,
            };
            let type_attr = match vector as u64 {
                VEC_BREAKPOINT => USER_INTERRUPT_GATE,
                _ => INTERRUPT_GATE,
            };
            Gate {
                offset_low: handler as u16,
                selector: KERNEL_CS,
                ist,
                type_attr,
                offset_mid: (handler >> 16) as u16,
                offset_high: (handler >> 32) as u32,
                reserved: 0,
            }
        }))
    });
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::from_ptr(idt),
    };
    // SAFETY: the IDT lives in a static for the rest of the run and each
    // gate points at a stub in the kernel's code segment.
    unsafe { lidt(&ptr) };
}

/// The last fault resumed through the fixup table (what `probe_read`
/// returns as its error).
static LAST_FIXUP: Mutex<TrapRecord> = Mutex::new(TrapRecord {
    cause: TrapCause::Other(0),
    pc: 0,
});

/// The last fault resumed through the fixup table.
pub fn last_fixup() -> TrapRecord {
    *LAST_FIXUP.lock()
}

pub(super) const VEC_DIVIDE: u64 = 0;
const VEC_NMI: u64 = 2;
pub(super) const VEC_BREAKPOINT: u64 = 3;
pub(super) const VEC_INVALID_OPCODE: u64 = 6;
const VEC_DOUBLE_FAULT: u64 = 8;
const VEC_GENERAL_PROTECTION: u64 = 13;
pub(super) const VEC_PAGE_FAULT: u64 = 14;
const VEC_MACHINE_CHECK: u64 = 18;

/// Page-fault error code bits.
pub(super) const PF_WRITE: u64 = 1 << 1;
pub(super) const PF_USER: u64 = 1 << 2;
pub(super) const PF_INSTRUCTION: u64 = 1 << 4;

/// Called by `keel_trap_common` for every trap, with the saved registers.
extern "C" fn keel_trap_dispatch(frame: &mut TrapFrame) {
    // Read CR2 first: nothing below may fault, but be certain.
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let from_user = frame.cs & 3 != 0;
    let fatal = matches!(frame.vector, VEC_NMI | VEC_DOUBLE_FAULT | VEC_MACHINE_CHECK);
    if fatal && !from_user {
        super::user::ensure_kernel_gs();
    }
    if from_user && !fatal {
        let fault = super::user::classify(frame.vector, frame.error_code, cr2);
        super::user::user_trap(frame, fault);
    }
    if frame.vector >= super::user::FIRST_INTERRUPT {
        // Interrupts are enabled in the kernel only in `apic::idle`.
        let Some(irq) = super::apic::interrupt(frame.vector) else {
            return;
        };
        // SAFETY: `on_interrupt` hands out only valid thread registers
        // with their address space loaded; this abandons the idle stack.
        unsafe { super::enter_user(crate::entry::on_interrupt(irq)) }
    }
    // #BP is a trap: rip is after the one-byte int3.
    let breakpoint = frame.vector == VEC_BREAKPOINT;
    let pc = (frame.rip as usize).wrapping_sub(usize::from(breakpoint));
    // A double fault may be a page fault whose frame could not be pushed
    // because the stack pointer was in a guard page: CR2 is the guard
    // address the push hit, next to the interrupted stack pointer.
    let overflow = frame.vector == VEC_DOUBLE_FAULT
        && super::in_stack_guard(cr2 as usize)
        && cr2.abs_diff(frame.rsp) <= 4096;
    let cause = match frame.vector {
        VEC_BREAKPOINT => TrapCause::Breakpoint,
        // The push that overflowed is a write (a double fault's error code
        // is 0).
        v if v == VEC_PAGE_FAULT || overflow => TrapCause::PageFault {
            addr: cr2 as usize,
            write: overflow || frame.error_code & PF_WRITE != 0,
            exec: frame.error_code & PF_INSTRUCTION != 0,
        },
        VEC_DIVIDE => TrapCause::DivideError,
        VEC_INVALID_OPCODE => TrapCause::IllegalInstruction,
        VEC_NMI => TrapCause::Machine("NMI"),
        VEC_DOUBLE_FAULT => TrapCause::Machine("double fault"),
        VEC_MACHINE_CHECK => TrapCause::Machine("machine check"),
        v => TrapCause::Other(v),
    };
    let record = TrapRecord { cause, pc };
    if breakpoint {
        crate::trap::record(record);
        return;
    }
    // Faults at a listed kernel PC (a #PF, or a #GP from a non-canonical
    // address) resume at the fixup.
    if !from_user
        && matches!(frame.vector, VEC_PAGE_FAULT | VEC_GENERAL_PROTECTION)
        && let Some(fixup) = crate::arch::fixup_for(frame.rip as usize).map(|f| f as u64)
    {
        *LAST_FIXUP.lock() = record;
        crate::trap::record(record);
        frame.rip = fixup;
        return;
    }
    let frame = &*frame;
    crate::trap::fatal(
        record,
        || dump_registers(frame, cr2),
        || super::super::print_frames(frame.regs.rbp as usize, 1, frame_record),
    )
}

fn dump_registers(f: &TrapFrame, cr2: u64) {
    let (cr0, cr3, cr4) = (Cr0::read_raw(), super::mm::read_cr3(), Cr4::read_raw());
    let efer = x86_64::registers::model_specific::Efer::read_raw();
    kprintln!("vector {} error code {:#x}", f.vector, f.error_code);
    let names = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let r = &f.regs;
    let values = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, f.rsp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    // Four a line.
    for (i, (name, v)) in names.iter().zip(values).enumerate() {
        kprint!("{name:<3} {v:#018x}{}", if i % 4 == 3 { "\n" } else { " " });
    }
    let (rip, rflags, cs, ss) = (f.rip, f.rflags, f.cs, f.ss);
    kprintln!("rip {rip:#018x} rflags {rflags:#010x} cs {cs:#06x} ss {ss:#06x}");
    kprintln!("cr0 {cr0:#010x} cr2 {cr2:#018x} cr3 {cr3:#010x} cr4 {cr4:#010x} efer {efer:#x}");
}

/// Whether `[addr, addr + 16)` lies inside one of this CPU's stacks.
fn on_kernel_stack(addr: usize) -> bool {
    let end = addr.checked_add(16);
    let stacks = super::boot::cpu_stacks(super::user::cpu_index());
    stacks
        .iter()
        .any(|s| s.bottom <= addr && end.is_some_and(|end| end <= s.top))
}

/// Reads the frame record `{caller rbp, return address}` at `fp`, if it
/// lies inside one of this CPU's stacks.
fn frame_record(fp: usize) -> Option<(usize, usize)> {
    if !on_kernel_stack(fp) {
        return None;
    }
    let record = fp as *const usize;
    // SAFETY: `fp..fp + 16` is inside a kernel stack (checked just
    // above), which is always mapped and readable; the values read
    // are only printed, never trusted as pointers without the same
    // check.
    Some(unsafe { (record.read(), record.add(1).read()) })
}

/// Prints the current call chain (used by the panic handler).
pub fn print_backtrace() {
    let fp: usize;
    // SAFETY: copying rbp into a register has no side effects.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    super::super::print_frames(fp, 0, frame_record);
}

crate::ktest!(
    fn only_the_breakpoint_gate_is_open_to_user_mode() {
        let Some(idt) = IDT.get() else {
            kassert!(false, "no IDT");
            return Ok(());
        };
        for (vector, gate) in idt.0.iter().enumerate() {
            let dpl = (gate.type_attr >> 5) & 3;
            kassert_eq!(dpl, if vector == 3 { 3 } else { 0 });
            kassert_eq!(gate.selector, KERNEL_CS);
        }
        Ok(())
    }
);

crate::ktest!(
    fn probe_of_non_canonical_address_is_reported() {
        // A non-canonical address raises #GP (vector 13), not #PF.
        let rec = crate::arch::probe_read(0x8000_0000_0000_0000);
        kassert_eq!(rec.map_err(|r| r.cause), Err(TrapCause::Other(13)));
        Ok(())
    }
);

crate::ktest!(
    fn every_kernel_stack_has_a_guard_below_it() {
        // The running (boot) stack's guard is checked on every architecture
        // (`arch::tests`); here the layout and the stacks the portable
        // test cannot name: the IST stacks for #DF and NMI, and the stacks
        // of the other CPUs (mapped once started).
        let boot = super::boot::cpu_stacks(0)[0];
        kassert!(boot.top - boot.bottom >= 64 * 1024);
        for s in super::boot::kernel_stacks() {
            kassert_eq!(s.guard + super::boot::GUARD_SIZE, s.bottom);
            kassert!(crate::arch::in_stack_guard(s.guard));
            kassert!(!crate::arch::in_stack_guard(s.guard - 1));
        }
        let started = crate::smp::started_mask();
        let cpus = (0..crate::bootinfo::MAX_CPUS).filter(|&c| started & (1 << c) != 0);
        for s in cpus.flat_map(super::boot::cpu_stacks) {
            if s.bottom == boot.bottom {
                continue;
            }
            for addr in [s.guard, s.bottom - 8] {
                let want = TrapCause::PageFault {
                    addr,
                    write: false,
                    exec: false,
                };
                kassert_eq!(
                    crate::arch::probe_read(addr).map_err(|r| r.cause),
                    Err(want)
                );
                kassert!(crate::arch::in_stack_guard(addr));
            }
            kassert!(!crate::arch::in_stack_guard(s.bottom));
            kassert!(crate::arch::probe_read(s.bottom).is_ok());
        }
        Ok(())
    }
);

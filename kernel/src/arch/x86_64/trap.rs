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
//! to `user::user_trap`, which never returns here.
//!
//! A kernel stack overflow touches the guard page under the stack; the CPU
//! cannot push the page fault's frame there either, so the fault becomes a
//! double fault on IST1, which the dispatcher reports as the page fault on
//! the guard address (CR2) that it is.

use super::cpu::{IST_DOUBLE_FAULT, IST_NMI, KERNEL_CS};
use crate::trap::{TrapCause, TrapRecord};
use spin::{Mutex, Once};
use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

/// The registers saved on every trap, lowest address first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrapFrame {
    /// R15, saved by the common trap entry.
    pub r15: u64,
    /// R14, saved by the common trap entry.
    pub r14: u64,
    /// R13, saved by the common trap entry.
    pub r13: u64,
    /// R12, saved by the common trap entry.
    pub r12: u64,
    /// R11, saved by the common trap entry.
    pub r11: u64,
    /// R10, saved by the common trap entry.
    pub r10: u64,
    /// R9, saved by the common trap entry.
    pub r9: u64,
    /// R8, saved by the common trap entry.
    pub r8: u64,
    /// RBP, saved by the common trap entry.
    pub rbp: u64,
    /// RDI, saved by the common trap entry.
    pub rdi: u64,
    /// RSI, saved by the common trap entry.
    pub rsi: u64,
    /// RDX, saved by the common trap entry.
    pub rdx: u64,
    /// RCX, saved by the common trap entry.
    pub rcx: u64,
    /// RBX, saved by the common trap entry.
    pub rbx: u64,
    /// RAX, saved by the common trap entry.
    pub rax: u64,
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
    "pushq %rax",
    "pushq %rbx",
    "pushq %rcx",
    "pushq %rdx",
    "pushq %rsi",
    "pushq %rdi",
    "pushq %rbp",
    "pushq %r8",
    "pushq %r9",
    "pushq %r10",
    "pushq %r11",
    "pushq %r12",
    "pushq %r13",
    "pushq %r14",
    "pushq %r15",
    "cld",
    // The CPU aligned the stack to 16 before pushing its 5-word frame;
    // with the 2 stub words and 15 registers rsp is 16-byte aligned again.
    "movq %rsp, %rdi",
    "call {dispatch}",
    "popq %r15",
    "popq %r14",
    "popq %r13",
    "popq %r12",
    "popq %r11",
    "popq %r10",
    "popq %r9",
    "popq %r8",
    "popq %rbp",
    "popq %rdi",
    "popq %rsi",
    "popq %rdx",
    "popq %rcx",
    "popq %rbx",
    "popq %rax",
    "addq $16, %rsp",
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

impl Gate {
    fn new(handler: u64, ist: u8, type_attr: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            type_attr,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

/// Builds and loads the IDT: every vector goes to its stub.
pub fn init() {
    let idt = IDT.call_once(|| {
        let stubs = (&raw const keel_trap_stubs) as u64;
        Idt(core::array::from_fn(|vector| {
            let ist = match vector {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                _ => 0,
            };
            let type_attr = if vector as u64 == VEC_BREAKPOINT {
                USER_INTERRUPT_GATE
            } else {
                INTERRUPT_GATE
            };
            Gate::new(stubs + 16 * vector as u64, ist, type_attr)
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
    if from_user && !matches!(frame.vector, VEC_NMI | VEC_DOUBLE_FAULT | VEC_MACHINE_CHECK) {
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
    let pc = frame.rip as usize;
    let cause = match frame.vector {
        VEC_BREAKPOINT => {
            // #BP is a trap: rip is after the one-byte int3.
            let pc = pc.wrapping_sub(1);
            crate::trap::record(TrapRecord {
                cause: TrapCause::Breakpoint,
                pc,
            });
            return;
        }
        VEC_PAGE_FAULT => TrapCause::PageFault {
            addr: cr2 as usize,
            write: frame.error_code & PF_WRITE != 0,
            exec: frame.error_code & PF_INSTRUCTION != 0,
        },
        // A page fault whose frame could not be pushed because the stack
        // pointer was in a guard page: CR2 is the guard address the push
        // hit, next to the interrupted stack pointer. The push is a write.
        VEC_DOUBLE_FAULT
            if super::in_stack_guard(cr2 as usize) && cr2.abs_diff(frame.rsp) <= 4096 =>
        {
            TrapCause::PageFault {
                addr: cr2 as usize,
                write: true,
                exec: false,
            }
        }
        VEC_DIVIDE => TrapCause::DivideError,
        VEC_INVALID_OPCODE => TrapCause::IllegalInstruction,
        VEC_NMI => TrapCause::Machine("NMI"),
        VEC_DOUBLE_FAULT => TrapCause::Machine("double fault"),
        VEC_MACHINE_CHECK => TrapCause::Machine("machine check"),
        v => TrapCause::Other(v),
    };
    let record = TrapRecord { cause, pc };
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
        || backtrace_from(frame.rbp as usize, 1),
    )
}

fn dump_registers(f: &TrapFrame, cr2: u64) {
    let (cr0, cr3, cr4): (u64, u64, u64);
    // SAFETY: reading control registers at CPL 0 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack));
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack));
    }
    let efer = x86_64::registers::model_specific::Efer::read_raw();
    kprintln!("vector {} error code {:#x}", f.vector, f.error_code);
    kprintln!(
        "rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}",
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx
    );
    kprintln!(
        "rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}",
        f.rsi,
        f.rdi,
        f.rbp,
        f.rsp
    );
    kprintln!(
        "r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}",
        f.r8,
        f.r9,
        f.r10,
        f.r11
    );
    kprintln!(
        "r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}",
        f.r12,
        f.r13,
        f.r14,
        f.r15
    );
    kprintln!(
        "rip {:#018x} rflags {:#010x} cs {:#06x} ss {:#06x}",
        f.rip,
        f.rflags,
        f.cs,
        f.ss
    );
    kprintln!("cr0 {cr0:#010x} cr2 {cr2:#018x} cr3 {cr3:#010x} cr4 {cr4:#010x} efer {efer:#x}");
}

/// Whether `[addr, addr + 16)` lies inside one of the kernel's stacks.
fn on_kernel_stack(addr: usize) -> bool {
    let Some(end) = addr.checked_add(16) else {
        return false;
    };
    super::boot::kernel_stacks()
        .iter()
        .any(|s| s.bottom <= addr && end <= s.top)
}

/// Prints the frame-pointer chain starting at `fp`, numbering from `first`.
fn backtrace_from(fp: usize, first: usize) {
    let mut i = first;
    super::super::walk_frames(
        fp,
        |fp| {
            if !on_kernel_stack(fp) {
                return None;
            }
            let record = fp as *const usize;
            // SAFETY: `fp..fp + 16` is inside a kernel stack (checked just
            // above), which is always mapped and readable; the values read
            // are only printed, never trusted as pointers without the same
            // check.
            Some(unsafe { (record.read(), record.add(1).read()) })
        },
        |ret| {
            kprintln!("  {}{} {:#x}", keel_abi::harness::FRAME_PREFIX, i, ret);
            i += 1;
        },
    );
}

/// Prints the current call chain (used by the panic handler).
pub fn print_backtrace() {
    let fp: usize;
    // SAFETY: copying rbp into a register has no side effects.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    backtrace_from(fp, 0);
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
        // (`arch::tests`); here the layout and the stacks the
        // portable test cannot name: the IST stacks for #DF and NMI.
        let boot = super::boot::boot_stack();
        kassert!(boot.top - boot.bottom >= 64 * 1024);
        for s in super::boot::kernel_stacks() {
            kassert_eq!(s.guard + super::boot::GUARD_SIZE, s.bottom);
            kassert!(!crate::arch::in_stack_guard(s.guard - 1));
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

//! User mode on x86_64: the saved user registers ([`UserRegs`]), the
//! FP/SIMD state ([`FpuState`]), the TLS base (FS base), the `syscall`
//! entry, the way back to ring 3 ([`enter_user`]) and the classification
//! of exceptions taken in ring 3.
//!
//! Per-CPU block ([`PerCpu`], one per CPU, 64-byte aligned), reached in
//! the kernel through the GS base:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `kernel_stack_top` | top of this CPU's kernel stack (= TSS.RSP0) |
//! | 8 | `user_rsp` | scratch: the user RSP during the `syscall` entry |
//! | 16 | `regs` | the `*mut UserRegs` being run (set by `enter_user`) |
//! | 24 | `index` | the CPU's index ([`cpu_index`]; constant once set) |
//!
//! GS invariant: in ring 0 the GS base (MSR `IA32_GS_BASE`) is this CPU's
//! block and `IA32_KERNEL_GS_BASE` holds the user's GS base; in ring 3
//! the other way round. The boot code sets the GS base before the first
//! Rust code runs on each CPU (`boot.rs`, `smp.rs`). Every entry from
//! ring 3 (`syscall`, and the trap stubs when the saved CS has RPL 3)
//! executes `swapgs` first, every exit to ring 3 last. Traps taken in
//! ring 0 do not `swapgs` in the stub; of those, only an NMI, double
//! fault or machine check can arrive in the few instructions where ring
//! 0 runs with the user's GS (entry and exit), and they are fatal: the
//! dispatcher puts the kernel's GS back for them ([`ensure_kernel_gs`])
//! before anything reads the block. CR4.FSGSBASE stays off: user code
//! cannot write the FS or GS base directly (loading a segment selector
//! can only set it to 0), so the user's GS base is never a kernel
//! address.
//!
//! Entry from ring 3:
//! - `syscall` (LSTAR = `keel_syscall_entry`, FMASK clears IF, TF, DF,
//!   IOPL, NT and AC, so interrupts stay off, string ops go forward, SMAP
//!   stays closed and a kernel `iretq` cannot task-switch): `swapgs`, park
//!   the user RSP in the per-CPU block, store every register into
//!   `*regs` (RCX = the return RIP, R11 = the user RFLAGS: the CPU has
//!   already replaced the user's RCX and R11 with them), switch to the top
//!   of the kernel stack and call `common::syscall` (then
//!   `crate::entry::on_syscall`).
//! - An exception or interrupt from ring 3 arrives through the IDT on
//!   TSS.RSP0 (the top of the same kernel stack; NMI and #DF on their IST
//!   stacks) and the common trap stub, which swaps GS when the saved CS is
//!   ring 3 and calls the dispatcher, which calls [`user_trap`]: the
//!   registers go into `*regs` and synchronous exceptions become
//!   `crate::entry::on_user_fault(fault)`.
//! - Both then `enter_user` whatever thread the portable side returns.
//!   Nothing stays on the kernel stack across `enter_user`: it starts at
//!   the top again on every entry.
//!
//! Exit (`keel_enter_user`): RFLAGS is sanitised (only the arithmetic
//! flags, TF, DF, AC and ID are the user's; IF is always set, IOPL 0). A
//! PC outside the canonical lower half is never loaded (SYSRET with a
//! non-canonical RCX faults in ring 0 on Intel, IRETQ likewise): it is
//! reported to `on_user_fault` as an execute page fault at that address
//! instead. SYSRET is used when it restores the registers exactly (saved
//! RCX = RIP, saved R11 = the sanitised RFLAGS, TF clear: after a system
//! call); otherwise IRETQ (after an exception, for a new thread).
//!
//! System-call register use: number in RAX, arguments in RDI, RSI, RDX,
//! R10, R8, R9, result in RAX. The `syscall` instruction itself clobbers
//! RCX (becomes the return address) and R11 (becomes RFLAGS); every other
//! register, and the FP/SIMD state, comes back unchanged. No kernel value
//! reaches user registers: every register is reloaded from `*regs`.

use super::trap::{
    PF_INSTRUCTION, PF_USER, PF_WRITE, TrapFrame, VEC_BREAKPOINT, VEC_DIVIDE, VEC_INVALID_OPCODE,
    VEC_PAGE_FAULT,
};
use crate::bootinfo::MAX_CPUS;
use crate::mm::aspace::Access;
use crate::trap::UserFault;
use core::mem::offset_of;
use core::sync::atomic::{AtomicUsize, Ordering};
use x86_64::VirtAddr;
use x86_64::registers::model_specific::{
    Efer, FsBase, GsBase, KernelGsBase, LStar, Msr, SFMask, Star,
};
use x86_64::registers::rflags::RFlags;

/// `e_machine` of x86_64 ELF files (`EM_X86_64`).
pub const ELF_MACHINE: u16 = 62;

/// A thread's user registers, as saved on entry to the kernel and restored
/// by [`enter_user`]. CS and SS are always the user segments (0x2b, 0x23).
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// RAX: the system-call number on entry, its result on return.
    pub rax: u64,
    /// RBX (callee-saved in the SysV ABI).
    pub rbx: u64,
    /// RCX; `syscall` overwrites it with the return address.
    pub rcx: u64,
    /// RDX: the third system-call argument.
    pub rdx: u64,
    /// RSI: the second system-call argument.
    pub rsi: u64,
    /// RDI: the first system-call argument and a new thread's argument.
    pub rdi: u64,
    /// RBP: the frame pointer.
    pub rbp: u64,
    /// RSP: the user stack pointer.
    pub rsp: u64,
    /// R8: the fifth system-call argument.
    pub r8: u64,
    /// R9: the sixth system-call argument.
    pub r9: u64,
    /// R10: the fourth system-call argument (RCX is taken by `syscall`).
    pub r10: u64,
    /// R11; `syscall` overwrites it with RFLAGS.
    pub r11: u64,
    /// R12 (callee-saved in the SysV ABI).
    pub r12: u64,
    /// R13 (callee-saved in the SysV ABI).
    pub r13: u64,
    /// R14 (callee-saved in the SysV ABI).
    pub r14: u64,
    /// R15 (callee-saved in the SysV ABI).
    pub r15: u64,
    /// RIP: where the thread resumes.
    pub rip: u64,
    /// RFLAGS, sanitised on return to user mode (IF set, IOPL 0).
    pub rflags: u64,
}

/// RFLAGS bits.
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_DF: u64 = 1 << 10;
const RFLAGS_IOPL: u64 = 3 << 12;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_AC: u64 = 1 << 18;
/// The flags user code owns: CF, PF, AF, ZF, SF, TF, DF, OF, AC, ID.
const RFLAGS_USER: u64 = 0x0024_0dd5;
/// Cleared on `syscall` (IA32_FMASK).
const SYSCALL_FMASK: u64 = RFLAGS_IF | RFLAGS_TF | RFLAGS_DF | RFLAGS_IOPL | RFLAGS_NT | RFLAGS_AC;

/// Lowest address that is not a user PC: the canonical lower half ends at
/// 2^47, and SYSRET/IRETQ to anything else would fault in ring 0.
const USER_PC_END: u64 = 1 << 47;

impl UserRegs {
    /// A new thread's registers: it starts at `entry` with `stack` as its
    /// stack pointer and `arg` in RDI (the first argument register), all
    /// other registers zero, interrupts enabled.
    pub fn new(entry: usize, stack: usize, arg: usize) -> UserRegs {
        UserRegs {
            rip: entry as u64,
            rsp: stack as u64,
            rdi: arg as u64,
            rflags: RFLAGS_IF | RFLAGS_FIXED,
            ..UserRegs::default()
        }
    }

    /// The system-call number (RAX) and arguments (RDI, RSI, RDX, R10, R8,
    /// R9), as `keel_abi::Syscall` documents.
    pub fn syscall_args(&self) -> (usize, [usize; 6]) {
        let args = [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9];
        (self.rax as usize, args.map(|r| r as usize))
    }

    /// Sets the system call's result (RAX).
    pub fn set_result(&mut self, value: isize) {
        self.rax = value as u64;
    }

    /// Delivers a message (`keel_abi::ipc`): `info` as the result (RAX),
    /// the badge in argument 1 (RSI), the words in arguments 2–5 (RDX,
    /// R10, R8, R9).
    pub fn set_message(&mut self, info: usize, badge: usize, words: [usize; 4]) {
        self.rax = info as u64;
        self.rsi = badge as u64;
        [self.rdx, self.r10, self.r8, self.r9] = words.map(|w| w as u64);
    }

    /// The user program counter.
    pub fn pc(&self) -> usize {
        self.rip as usize
    }

    /// The TLS base is the FS base, outside the saved registers (see
    /// [`save_tls`] / [`load_tls`]): nothing to do here.
    pub fn set_tls(&mut self, _value: usize) {}
}

/// The FP/SIMD state in the FXSAVE64 format: x87, MMX, XMM0–15, MXCSR.
/// (AVX is not enabled: CR4.OSXSAVE is off, so AVX instructions are
/// undefined in user mode and the FXSAVE area is the whole state.)
#[repr(C, align(16))]
#[derive(Clone, PartialEq, Eq)]
pub struct FpuState([u8; 512]);

/// Byte offsets in the FXSAVE area.
const FX_FCW: usize = 0;
const FX_MXCSR: usize = 24;
#[cfg(feature = "ktest")]
const FX_XMM0: usize = 160;

impl Default for FpuState {
    /// The state after `fninit` with the default MXCSR: FCW 0x37F (all x87
    /// exceptions masked, extended precision), empty tags, MXCSR 0x1F80
    /// (all SIMD exceptions masked), all registers zero.
    fn default() -> FpuState {
        let mut area = [0u8; 512];
        area[FX_FCW..FX_FCW + 2].copy_from_slice(&0x037fu16.to_le_bytes());
        area[FX_MXCSR..FX_MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        FpuState(area)
    }
}

impl core::fmt::Debug for FpuState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FpuState").finish_non_exhaustive()
    }
}

impl FpuState {
    /// Saves this CPU's FP/SIMD registers into `self`.
    pub fn save(&mut self) {
        // SAFETY: CR4.OSFXSR is set at boot and CR0.EM/TS are clear, so
        // fxsave64 is valid; it writes exactly the 512 bytes of `self`,
        // which is 16-byte aligned.
        unsafe {
            core::arch::asm!("fxsave64 [{}]", in(reg) self.0.as_mut_ptr(), options(nostack, preserves_flags))
        };
    }

    /// Loads `self` into this CPU's FP/SIMD registers.
    pub fn restore(&self) {
        // SAFETY: as for `save`; the area came from `default` or `save`,
        // so MXCSR has no reserved bits set and fxrstor64 cannot fault.
        // The kernel itself uses no FP/SIMD register, so replacing them
        // affects only user state.
        unsafe {
            core::arch::asm!("fxrstor64 [{}]", in(reg) self.0.as_ptr(), options(nostack, preserves_flags, readonly))
        };
    }
}

const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSENTER_CS: u32 = 0x174;
const EFER_SCE: u64 = 1;

/// The thread-local-storage base of the thread that ran last on this CPU:
/// the FS base, read back because user code can change it (loading FS
/// with a selector sets the base to 0). `current` is ignored.
pub fn save_tls(_current: usize) -> usize {
    FsBase::read().as_u64() as usize
}

/// Sets the FS base for the next thread. A non-canonical value (which the
/// MSR refuses with #GP) loads 0 instead.
pub fn load_tls(value: usize) {
    // A canonical FS base; the kernel does not use FS.
    FsBase::write(VirtAddr::try_new(value as u64).unwrap_or(VirtAddr::zero()));
}

/// A CPU's block, reached through the GS base in ring 0 (layout in the
/// module documentation; the assembly uses the field offsets).
#[repr(C, align(64))]
pub struct PerCpu {
    kernel_stack_top: AtomicUsize,
    user_rsp: AtomicUsize,
    regs: AtomicUsize,
    index: AtomicUsize,
}

/// Every CPU's block, by CPU index (set by [`init`]).
pub(super) static PER_CPU: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        kernel_stack_top: AtomicUsize::new(0),
        user_rsp: AtomicUsize::new(0),
        regs: AtomicUsize::new(0),
        index: AtomicUsize::new(0),
    }
}; MAX_CPUS];

/// This CPU's index: one load from its block.
#[inline]
pub fn cpu_index() -> usize {
    let index;
    // SAFETY: in ring 0 the GS base is this CPU's block (the GS
    // invariant, which holds from the first Rust code on every CPU and
    // which the dispatcher restores for the traps that may find it
    // broken); `index` is set by `init` before anything on the CPU reads
    // it and never changes, and kernel code never moves to another CPU,
    // so the load is pure.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr gs:[{off}]",
            out(reg) index,
            off = const offset_of!(PerCpu, index),
            options(nostack, pure, readonly, preserves_flags)
        )
    };
    index
}

/// Restores the GS invariant for a trap taken in ring 0 that may have
/// interrupted the instructions around a `swapgs` (NMI, double fault,
/// machine check, all fatal: nothing swaps back). The blocks are in the
/// kernel half, the user's GS base never is.
pub fn ensure_kernel_gs() {
    if (GsBase::read().as_u64() as i64) >= 0 {
        // SAFETY: the GS base is the user's, so `IA32_KERNEL_GS_BASE`
        // holds this CPU's block: swapping them establishes the invariant.
        unsafe { core::arch::asm!("swapgs", options(nostack, preserves_flags)) };
    }
}

/// This CPU's block.
fn this_cpu() -> &'static PerCpu {
    &PER_CPU[cpu_index()]
}

/// The top of this CPU's kernel stack (also TSS.RSP0), on which every
/// entry from user mode starts.
pub fn kernel_stack_top() -> usize {
    this_cpu().kernel_stack_top.load(Ordering::Relaxed)
}

/// Sets up user-mode entry on CPU `index`: its per-CPU block (with
/// `stack_top`, = TSS.RSP0) and GS bases, the SYSCALL MSRs, the initial
/// FP/SIMD state. Called once per CPU after its GDT, TSS and IDT are
/// loaded.
pub fn init(index: usize, stack_top: usize) {
    let block = &PER_CPU[index];
    block.kernel_stack_top.store(stack_top, Ordering::Relaxed);
    block.index.store(index, Ordering::Relaxed);
    let entry = VirtAddr::new(keel_syscall_entry as *const () as u64);
    // GS base = the block (already so since the entry code) and
    // KERNEL_GS_BASE = 0 (the user's GS base until user code changes it)
    // establish the module's GS invariant in ring 0. LSTAR is the entry
    // below, which runs with the flags FMASK leaves (interrupts off).
    GsBase::write(VirtAddr::from_ptr(block));
    KernelGsBase::write(VirtAddr::zero());
    LStar::write(entry);
    SFMask::write(RFlags::from_bits_retain(SYSCALL_FMASK));
    // SAFETY: STAR names the GDT's kernel code/data pair (0x08, 0x10) for
    // `syscall` and its user data / 64-bit code pair at 0x18 + 8 and + 16
    // for `sysretq`; EFER.SCE only enables the instructions, whose MSRs
    // are all set. User code cannot run in compatibility mode (the GDT
    // has no 32-bit code segment), so CSTAR is never used; it names the
    // same entry rather than address 0, whatever happens. SYSENTER_CS = 0
    // makes `sysenter` a #GP.
    unsafe {
        Star::write_raw(super::cpu::USER_BASE_SELECTOR, super::cpu::KERNEL_CS);
        Msr::new(MSR_CSTAR).write(entry.as_u64());
        Msr::new(MSR_SYSENTER_CS).write(0);
        Efer::write_raw(Efer::read_raw() | EFER_SCE);
    }
    FpuState::default().restore();
}

core::arch::global_asm!(
    ".section .text.keel_user, \"ax\"",
    ".balign 16",
    // `.Lur_<reg>`: the offset of each `UserRegs` field (declaration order,
    // 8 bytes each; checked below).
    ".set .Lur_at, 0",
    ".irp reg, rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags",
    ".set .Lur_\\reg, .Lur_at",
    ".set .Lur_at, .Lur_at + 8",
    ".endr",
    // ---------------------------------------------------------------
    // syscall: RCX = user RIP, R11 = user RFLAGS, RSP = user RSP, ring 0
    // with interrupts off; GS is still the user's.
    // ---------------------------------------------------------------
    ".global keel_syscall_entry",
    "keel_syscall_entry:",
    "swapgs",
    "mov qword ptr gs:[{pc_user_rsp}], rsp",
    "mov rsp, qword ptr gs:[{pc_regs}]",
    ".irp reg, rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15",
    "mov [rsp + .Lur_\\reg], \\reg",
    ".endr",
    "mov [rsp + .Lur_rip], rcx",
    "mov [rsp + .Lur_rflags], r11",
    "mov rax, qword ptr gs:[{pc_user_rsp}]",
    "mov [rsp + .Lur_rsp], rax",
    "mov rsp, qword ptr gs:[{pc_stack_top}]",
    "xor ebp, ebp",                             // ends the frame-pointer chain
    "call {on_syscall}",
    "mov rdi, rax",
    // Fall through.
    // ---------------------------------------------------------------
    // keel_enter_user(regs: rdi), ring 0 with the kernel's GS.
    // ---------------------------------------------------------------
    ".global keel_enter_user",
    "keel_enter_user:",
    "mov rsp, qword ptr gs:[{pc_stack_top}]",
    "xor ebp, ebp",
    "2:",
    "mov rcx, [rdi + .Lur_rip]",
    "mov rax, rcx",
    "shr rax, {user_pc_bits}",
    "jnz 5f",                                   // not a user PC
    "mov qword ptr gs:[{pc_regs}], rdi",
    "mov r11, [rdi + .Lur_rflags]",
    "mov rax, {rflags_user}",
    "and r11, rax",
    "or r11, {rflags_forced}",
    // SYSRET leaves RCX = RIP and R11 = RFLAGS: only right if the saved
    // registers say so; it also cannot single-step like IRETQ.
    "cmp rcx, [rdi + .Lur_rcx]",
    "jne 3f",
    "cmp r11, [rdi + .Lur_r11]",
    "jne 3f",
    "test r11, {rflags_tf}",
    "jnz 3f",
    ".irp reg, rax, rbx, rdx, rsi, rbp, r8, r9, r10, r12, r13, r14, r15",
    "mov \\reg, [rdi + .Lur_\\reg]",
    ".endr",
    "mov rsp, [rdi + .Lur_rsp]",
    "mov rdi, [rdi + .Lur_rdi]",
    "swapgs",
    "sysretq",
    // IRETQ: the full frame, then every register.
    "3:",
    "push {user_ss}",
    "push qword ptr [rdi + .Lur_rsp]",
    "push r11",
    "push {user_cs}",
    "push rcx",
    ".irp reg, rax, rbx, rcx, rdx, rsi, rbp, r8, r9, r10, r11, r12, r13, r14, r15",
    "mov \\reg, [rdi + .Lur_\\reg]",
    ".endr",
    "mov rdi, [rdi + .Lur_rdi]",
    "swapgs",
    "iretq",
    // A PC user mode cannot run: a fault of the thread, not of the kernel.
    "5:",
    "call {bad_pc}",
    "mov rdi, rax",
    "jmp 2b",
    pc_user_rsp = const offset_of!(PerCpu, user_rsp),
    pc_regs = const offset_of!(PerCpu, regs),
    pc_stack_top = const offset_of!(PerCpu, kernel_stack_top),
    user_pc_bits = const USER_PC_END.trailing_zeros(),
    rflags_user = const RFLAGS_USER,
    rflags_forced = const RFLAGS_IF | RFLAGS_FIXED,
    rflags_tf = const RFLAGS_TF,
    user_cs = const super::cpu::USER_CS,
    user_ss = const super::cpu::USER_SS,
    on_syscall = sym keel_on_syscall,
    bad_pc = sym keel_bad_user_pc,
);

/// The assembly's `.Lur_*` offsets: 18 fields, in order, 8 bytes each.
const _: () = assert!(
    offset_of!(UserRegs, rsp) == 7 * 8
        && offset_of!(UserRegs, r8) == 8 * 8
        && offset_of!(UserRegs, rflags) == 17 * 8
        && size_of::<UserRegs>() == 18 * 8
);

unsafe extern "C" {
    /// The `syscall` entry (LSTAR).
    fn keel_syscall_entry();
    /// Restores `*regs` and returns to user mode (see `enter_user`).
    fn keel_enter_user(regs: *const UserRegs) -> !;
}

/// Called by `keel_syscall_entry` on the kernel stack with the caller's
/// registers saved: the portable system-call path.
extern "C" fn keel_on_syscall() -> *const UserRegs {
    crate::arch::common::syscall(this_cpu().regs.load(Ordering::Relaxed))
}

/// Called by `keel_enter_user` when `regs` holds a PC that is not a
/// canonical user address (user code cannot get there itself: a jump to it
/// faults at the jump): the thread faults as if it had fetched from there.
extern "C" fn keel_bad_user_pc(regs: *const UserRegs) -> *const UserRegs {
    // SAFETY: `regs` is what the portable side handed to `enter_user`,
    // valid for reading (the contract of `enter_user`).
    let pc = unsafe { (*regs).rip } as usize;
    this_cpu().regs.store(regs as usize, Ordering::Relaxed);
    crate::entry::on_user_fault(UserFault::PageFault {
        addr: pc,
        access: Access::Exec,
    })
}

/// Restores `*regs` and returns to user mode on this CPU, starting this
/// CPU's kernel stack afresh; the next entry from user mode (system call,
/// exception) saves the thread's registers into `*regs`. The FS base and
/// the FP/SIMD registers are not touched: they are the caller's business
/// ([`load_tls`], [`FpuState::restore`]).
///
/// # Safety
/// `regs` must point to a `UserRegs` that stays valid, writable and
/// otherwise unaliased until the next entry from user mode has finished
/// with it, and the user address space the thread runs in must be loaded.
/// Everything on the kernel stack is abandoned.
pub unsafe fn enter_user(regs: *const UserRegs) -> ! {
    // SAFETY: called in ring 0 with the kernel's GS (the module invariant);
    // `regs` is valid (the caller's guarantee).
    unsafe { keel_enter_user(regs) }
}

/// First vector that is not a CPU exception (external interrupts).
pub(super) const FIRST_INTERRUPT: u64 = 32;

/// What an exception taken in user mode means for the thread, or `None`
/// for an interrupt, which only interrupts it.
pub fn classify(vector: u64, error_code: u64, cr2: u64) -> Option<UserFault> {
    Some(match vector {
        // An implicit supervisor access (descriptor tables) made for user
        // code: no user mapping can resolve it. (QEMU also reports far
        // returns' stack reads this way when SMAP is on.)
        VEC_PAGE_FAULT if error_code & PF_USER == 0 => UserFault::Other(vector),
        VEC_PAGE_FAULT => UserFault::PageFault {
            addr: cr2 as usize,
            access: if error_code & PF_INSTRUCTION != 0 {
                Access::Exec
            } else if error_code & PF_WRITE != 0 {
                Access::Write
            } else {
                Access::Read
            },
        },
        VEC_DIVIDE => UserFault::DivideError,
        // #BP is a trap: the saved PC is after the `int3`.
        VEC_BREAKPOINT => UserFault::Breakpoint,
        VEC_INVALID_OPCODE => UserFault::IllegalInstruction,
        // #GP (13: privileged instruction, non-canonical address, `int n`
        // to a ring-0 gate), #DB (1: single-step), #MF/#XM (16/19: unmasked
        // FP exceptions), #SS, #AC and the rest.
        v if v < FIRST_INTERRUPT => UserFault::Other(v),
        _ => return None,
    })
}

/// Handles an exception or interrupt taken in user mode (not NMI, #DF or
/// #MC, which are fatal) on the kernel stack: saves the thread's registers
/// from `frame` into the `UserRegs` being run, then runs what the portable
/// side says (`fault`, from [`classify`]) or, for an interrupt, the same
/// thread again.
pub fn user_trap(frame: &TrapFrame, fault: Option<UserFault>) -> ! {
    let regs = this_cpu().regs.load(Ordering::Relaxed) as *mut UserRegs;
    let mut saved = frame.regs.clone();
    [saved.rsp, saved.rip, saved.rflags] = [frame.rsp, frame.rip, frame.rflags];
    // SAFETY: `regs` is the pointer the last `enter_user` on this CPU ran,
    // which the portable side keeps valid and unaliased until this entry
    // has saved into it (the contract of `enter_user`); user mode only
    // runs after an `enter_user`, so it is set.
    unsafe { regs.write(saved) };
    let next = match fault {
        Some(fault) => crate::entry::on_user_fault(fault),
        None => match super::apic::interrupt(frame.vector) {
            Some(irq) => crate::entry::on_interrupt(irq),
            None => regs.cast_const(),
        },
    };
    // SAFETY: `next` comes from the portable side, which hands out only
    // valid thread registers with their address space loaded; this
    // abandons the stack, on which nothing needing a drop lives.
    unsafe { enter_user(next) }
}

crate::ktest!(
    fn user_regs_use_the_syscall_registers() {
        // The portable side of `UserRegs` is checked on every architecture
        // (`arch::tests`); here, which x86 register is which.
        let mut r = UserRegs::new(0x40_1000, 0x7fff_ffff_0000, 0x20_0000);
        kassert_eq!(r.rip, 0x40_1000);
        kassert_eq!(r.rsp, 0x7fff_ffff_0000);
        kassert_eq!(r.rdi, 0x20_0000);
        kassert_eq!(r.rflags, RFLAGS_IF | RFLAGS_FIXED);
        r.rax = 0x26;
        r.rdi = 1;
        r.rsi = 2;
        r.rdx = 3;
        r.r10 = 4;
        r.r8 = 5;
        r.r9 = 6;
        r.rcx = 7; // clobbered by `syscall`, not an argument
        kassert_eq!(r.syscall_args(), (0x26, [1, 2, 3, 4, 5, 6]));
        r.set_result(-3);
        kassert_eq!(r.rax, (-3i64) as u64);
        // TLS is the FS base, outside `UserRegs`.
        let before = r.clone();
        r.set_tls(0x1234);
        kassert_eq!(r, before);
        kassert_eq!(ELF_MACHINE, 62);
        Ok(())
    }
);

crate::ktest!(
    fn user_faults_are_classified() {
        let pf = |err| classify(VEC_PAGE_FAULT, err, 0x1000);
        let fault = |access| {
            Some(UserFault::PageFault {
                addr: 0x1000,
                access,
            })
        };
        // U/S set in all three: user-mode accesses.
        kassert_eq!(pf(0b0_0100), fault(Access::Read));
        kassert_eq!(pf(0b0_0110), fault(Access::Write));
        kassert_eq!(pf(0b1_0101), fault(Access::Exec));
        // A supervisor access on the thread's behalf: not resolvable.
        kassert_eq!(pf(0b0_0001), Some(UserFault::Other(14)));
        kassert_eq!(classify(0, 0, 0), Some(UserFault::DivideError));
        kassert_eq!(classify(3, 0, 0), Some(UserFault::Breakpoint));
        kassert_eq!(classify(6, 0, 0), Some(UserFault::IllegalInstruction));
        kassert_eq!(classify(13, 0, 0), Some(UserFault::Other(13)));
        kassert_eq!(classify(32, 0, 0), None);
        Ok(())
    }
);

crate::ktest!(
    fn syscall_msrs_and_per_cpu_block_are_set() {
        let entry = keel_syscall_entry as *const () as u64;
        kassert!(Efer::read_raw() & EFER_SCE != 0);
        kassert_eq!(LStar::read().as_u64(), entry);
        kassert_eq!(Star::read_raw(), (0x18, 0x08));
        kassert_eq!(SFMask::read().bits(), SYSCALL_FMASK);
        let (cstar, sysenter_cs) =
            // SAFETY: reading these MSRs (architectural) has no side effects.
            unsafe { (Msr::new(MSR_CSTAR).read(), Msr::new(MSR_SYSENTER_CS).read()) };
        kassert_eq!(cstar, entry);
        kassert_eq!(sysenter_cs, 0);
        let cpu = this_cpu();
        kassert_eq!(cpu as *const PerCpu, &raw const PER_CPU[0]);
        kassert_eq!(GsBase::read().as_u64(), &raw const PER_CPU[0] as u64);
        kassert_eq!(cpu_index(), 0);
        let top = super::boot::cpu_stacks(0)[0].top;
        kassert_eq!(kernel_stack_top(), top);
        kassert!(top.is_multiple_of(16));
        kassert_eq!(super::cpu::rsp0(), top);
        // User code cannot write the FS/GS bases (CR4.FSGSBASE, bit 16).
        let cr4: u64;
        // SAFETY: reading CR4 at CPL 0 has no side effects.
        unsafe {
            core::arch::asm!("mov {}, cr4", out(reg) cr4, options(nomem, nostack, preserves_flags))
        };
        kassert_eq!(cr4 & (1 << 16), 0);
        Ok(())
    }
);

crate::ktest!(
    fn non_canonical_tls_base_loads_as_zero() {
        let old = save_tls(0);
        // Non-canonical values would #GP in the MSR write: 0 instead.
        load_tls(0x8000_0000_0000_0000);
        kassert_eq!(save_tls(0x8000_0000_0000_0000), 0);
        load_tls(old);
        Ok(())
    }
);

#[cfg(feature = "ktest")]
mod fpu_tests {
    use super::*;

    fn set_xmm0(v: u64) {
        // SAFETY: writes xmm0 only; the kernel keeps no value in FP/SIMD
        // registers (soft-float target), so no compiled code is disturbed.
        unsafe {
            core::arch::asm!("movq xmm0, {}", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    }

    fn xmm0() -> u64 {
        let v;
        // SAFETY: reads xmm0 only.
        unsafe {
            core::arch::asm!("movq {}, xmm0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    fn mxcsr() -> u32 {
        let mut v = 0u32;
        // SAFETY: stmxcsr writes the 4 bytes of `v`.
        unsafe {
            core::arch::asm!("stmxcsr [{}]", in(reg) &raw mut v, options(nostack, preserves_flags))
        };
        v
    }

    fn fcw() -> u16 {
        let mut v = 0u16;
        // SAFETY: fnstcw writes the 2 bytes of `v`.
        unsafe {
            core::arch::asm!("fnstcw [{}]", in(reg) &raw mut v, options(nostack, preserves_flags))
        };
        v
    }

    crate::ktest!(
        fn fpu_state_save_clobber_restore() {
            let mut original = FpuState::default();
            original.save();

            set_xmm0(0x1122_3344_5566_7788);
            let mut a = FpuState::default();
            a.save();
            kassert_eq!(
                a.0[FX_XMM0..FX_XMM0 + 8],
                0x1122_3344_5566_7788u64.to_le_bytes()
            );

            // Another "thread" with the default state.
            FpuState::default().restore();
            kassert_eq!(xmm0(), 0);
            kassert_eq!(mxcsr(), 0x1f80);
            kassert_eq!(fcw(), 0x037f);
            set_xmm0(0xdead_beef);

            a.restore();
            kassert_eq!(xmm0(), 0x1122_3344_5566_7788);
            let mut b = FpuState::default();
            b.save();
            kassert_eq!(b.0[..], a.0[..]);

            original.restore();
            Ok(())
        }
    );
}

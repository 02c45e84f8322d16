//! RISC-V user mode: the saved user registers ([`UserRegs`]), the FP state
//! ([`FpuState`]), the per-CPU block the trap entry reaches through
//! `sscratch`, and the Rust side of entries from U-mode. The assembly (the
//! U-mode half of the trap vector and `keel_enter_user`) is in `traps`,
//! next to the kernel-mode half it shares the vector with.
//!
//! Invariants:
//! - Every CPU has its own [`PerCpu`] block (in [`CPUS`], by CPU index).
//!   While a CPU runs the kernel, from its first instruction in the higher
//!   half on and in every trap handler, `tp` holds its block and
//!   `sscratch` is 0; while it runs user code, `sscratch` holds the block
//!   and `tp` is the user's (its TLS). So [`cpu_index`] is one load
//!   through `tp`. (Rust code never uses `tp` or `gp`: LLVM reserves them,
//!   and the kernel has no thread-locals and no `__global_pointer$`.)
//! - Every entry from U-mode saves all user registers into the
//!   [`UserRegs`] that the last [`enter_user`] on this CPU restored, then
//!   runs the handler from the top of this CPU's kernel stack: nothing is
//!   kept on that stack across [`enter_user`].
//! - An `ecall` is saved with `sepc` already past it (4 bytes: `ecall`
//!   has no compressed form), so [`UserRegs::pc`] of a thread in a system
//!   call is where it resumes, as on the other architectures.
//! - The kernel runs with `sstatus.FS` = Off: a kernel FP instruction traps
//!   (illegal instruction, a fatal kernel fault) instead of silently
//!   clobbering the user FP registers, which stay live while the kernel
//!   runs. [`FpuState::save`] and [`FpuState::restore`] turn FS on only
//!   for their own instructions. The thread's FS field lives in its saved
//!   `sstatus`; `enter_user` makes sure it is not Off.
//! - User `sstatus` is never taken from [`UserRegs`] as is: `enter_user`
//!   keeps only the thread's FS field and forces U-mode (`SPP` = 0) with
//!   interrupts enabled after `sret` (`SPIE` = 1).
//! - TLS is `tp`, a saved register: [`UserRegs::set_tls`] writes it and
//!   [`save_tls`]/[`load_tls`] have nothing to do.

use crate::bootinfo::MAX_CPUS;
use crate::mm::aspace::Access;
use crate::trap::{TrapCause, TrapRecord, UserFault};
use core::arch::asm;
use core::sync::atomic::{AtomicUsize, Ordering};

/// `e_machine` of RISC-V ELF files (`EM_RISCV`).
pub const ELF_MACHINE: u16 = 243;

// `sstatus` bits (privileged spec, "Supervisor Status Register").
pub(super) const SSTATUS_SIE: usize = 1 << 1;
pub(super) const SSTATUS_SPIE: usize = 1 << 5;
pub(super) const SSTATUS_SPP: usize = 1 << 8;
/// The FP unit status field, bits 14:13: Off 0, Initial 1, Clean 2, Dirty 3.
pub(super) const SSTATUS_FS_MASK: usize = 3 << 13;
pub(super) const SSTATUS_FS_INITIAL: usize = 1 << 13;

/// `scause` of an `ecall` from U-mode.
pub(super) const ECALL_FROM_U: usize = 8;

// Registers by number (x0..x31).
const SP: usize = 2;
const TP: usize = 4;
const A0: usize = 10;
const A7: usize = 17;

/// A thread's user registers, saved by the trap entry and restored by
/// [`enter_user`]. The layout is used by the assembly in `traps`.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// `x0`..`x31` by register number; `x[0]` is unused (x0 is zero).
    pub x: [usize; 32],
    /// Where the thread resumes.
    pub sepc: usize,
    /// `sstatus` at the last entry; only its FS field is used on return.
    pub sstatus: usize,
}

impl UserRegs {
    /// A thread about to run its first instruction at `entry` with stack
    /// pointer `stack` and `arg` in `a0`; U-mode, interrupts enabled, FP
    /// state Initial, every other register zero.
    pub fn new(entry: usize, stack: usize, arg: usize) -> UserRegs {
        let mut regs = UserRegs {
            sepc: entry,
            sstatus: SSTATUS_SPIE | SSTATUS_FS_INITIAL,
            ..UserRegs::default()
        };
        regs.x[SP] = stack;
        regs.x[A0] = arg;
        regs
    }

    /// The system-call number (`a7`) and arguments (`a0`..`a5`).
    pub fn syscall_args(&self) -> (usize, [usize; 6]) {
        (self.x[A7], core::array::from_fn(|i| self.x[A0 + i]))
    }

    /// Sets the system-call result (`a0`).
    pub fn set_result(&mut self, value: isize) {
        self.x[A0] = value as usize;
    }

    /// Delivers a message (`keel_abi::ipc`): `info` as the result (`a0`),
    /// the badge in `a1`, the words in `a2`–`a5`.
    pub fn set_message(&mut self, info: usize, badge: usize, words: [usize; 4]) {
        let [w0, w1, w2, w3] = words;
        self.x[A0..A0 + 6].copy_from_slice(&[info, badge, w0, w1, w2, w3]);
    }

    /// Where the thread resumes (after the `ecall` of a system call).
    pub fn pc(&self) -> usize {
        self.sepc
    }

    /// Sets the thread pointer, RISC-V's TLS base.
    pub fn set_tls(&mut self, value: usize) {
        self.x[TP] = value;
    }
}

/// The TLS base outside [`UserRegs`]: none on RISC-V (`tp` is saved with
/// the other registers), so this returns `current` unchanged.
pub fn save_tls(current: usize) -> usize {
    current
}

/// Installs a TLS base outside [`UserRegs`]: nothing to do on RISC-V.
pub fn load_tls(_value: usize) {}

/// A thread's FP state: `f0`..`f31` (64 bits each, the D extension) and
/// `fcsr`. The default is the reset state: all zero, which is rounding to
/// nearest-even and no exception flags.
#[repr(C, align(16))]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FpuState {
    /// `f0`..`f31`, as raw 64-bit patterns.
    pub f: [u64; 32],
    /// The FP control and status register: rounding mode `frm` (bits 7:5)
    /// and accrued exception flags `fflags` (bits 4:0).
    pub fcsr: u64,
}

/// `f0`..`f31` and `fcsr` moved between the CPU and the `FpuState` at
/// `p` by `$each` (`fsd`/`fld` f\n) and `$csr` (the `fcsr` word at 256),
/// with FS on for the FP instructions and back to Off (module invariant).
macro_rules! fp_regs {
    ($p:expr, $each:literal, $csr:literal, $($opt:ident),*) => {
        asm!(
            ".option push",
            ".option arch, +d",
            "csrs sstatus, {fs}",
            ".irp n, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31",
            $each,
            ".endr",
            $csr,
            "csrc sstatus, {fs_mask}",
            ".option pop",
            p = in(reg) $p,
            fs = in(reg) SSTATUS_FS_INITIAL,
            fs_mask = in(reg) SSTATUS_FS_MASK,
            t = out(reg) _,
            options($($opt),*),
        )
    };
}

impl FpuState {
    /// Saves this CPU's FP registers and `fcsr` into `self`.
    pub fn save(&mut self) {
        // SAFETY: the stores write exactly `self.f` (32 × 8 bytes from
        // offset 0) and `self.fcsr` (offset 256), which `&mut self` owns;
        // nothing else changes.
        unsafe {
            fp_regs!(
                self as *mut FpuState,
                "fsd f\\n, \\n * 8({p})",
                "frcsr {t}\nsd {t}, 32 * 8({p})",
                nostack
            )
        };
    }

    /// Loads `self` into this CPU's FP registers and `fcsr`.
    pub fn restore(&self) {
        // SAFETY: the loads read exactly `self.f` and `self.fcsr`; the FP
        // registers belong to the user thread about to run (the kernel
        // never uses them, module invariant).
        unsafe {
            fp_regs!(
                self as *const FpuState,
                "fld f\\n, \\n * 8({p})",
                "ld {t}, 32 * 8({p})\nfscsr {t}",
                nostack,
                readonly
            )
        };
    }
}

/// What the trap entry needs to know about a CPU, reached through `tp` in
/// the kernel and through `sscratch` in user mode; one per CPU index
/// ([`CPUS`]). The offsets are used by the assembly in `traps` and `boot`.
#[repr(C, align(64))]
pub(super) struct PerCpu {
    /// Top of this CPU's kernel stack, where every entry from U-mode
    /// starts.
    pub kernel_sp: AtomicUsize,
    /// The [`UserRegs`] the next entry from U-mode saves into (the last
    /// one `enter_user` restored).
    pub user_regs: AtomicUsize,
    /// The user's `tp`, `sp` and `t0` while the entry frees registers.
    pub scratch: [AtomicUsize; 3],
    /// `t0` while an entry from the kernel checks the interrupted `sp`.
    pub kernel_scratch: AtomicUsize,
    /// The lowest interrupted `sp` an entry from the kernel saves its frame
    /// below: the kernel stack's bottom plus `traps::STACK_RESERVE`.
    pub stack_floor: AtomicUsize,
    /// Top of this CPU's emergency stack, where an entry from the kernel
    /// below `stack_floor` runs.
    pub emergency_sp: AtomicUsize,
    /// This CPU's index ([`cpu_index`]).
    pub index: AtomicUsize,
    /// This CPU's hart id ([`cpu_hw_id`]).
    pub hart_id: AtomicUsize,
}

/// `log2` of the size of a [`PerCpu`] block (the entry code indexes
/// [`CPUS`] by shifting).
pub(super) const PER_CPU_SIZE_LOG2: u32 = size_of::<PerCpu>().trailing_zeros();
const _: () = assert!(size_of::<PerCpu>().is_power_of_two());

impl PerCpu {
    /// Makes this the block of CPU `index`, hart `hart_id`, with the stacks
    /// `mm::cpu_stacks(index)`. Runs before the CPU does (`cpu_start`) or
    /// as its first Rust code (the boot CPU).
    pub(super) fn set_up(&self, index: usize, hart_id: usize) {
        let [kernel, emergency] = super::mm::cpu_stacks(index);
        let reserve = super::traps::STACK_RESERVE;
        for (field, value) in [
            (&self.kernel_sp, kernel.end),
            (&self.stack_floor, kernel.start + reserve),
            (&self.emergency_sp, emergency.end),
            (&self.index, index),
            (&self.hart_id, hart_id),
        ] {
            field.store(value, Ordering::Relaxed);
        }
    }
}

/// The per-CPU blocks, by CPU index. `boot::_start` points `tp` at the
/// boot CPU's (index 0), `cpu_start`'s CPUs at theirs.
pub(super) static CPUS: [PerCpu; MAX_CPUS] = [const {
    PerCpu {
        kernel_sp: AtomicUsize::new(0),
        user_regs: AtomicUsize::new(0),
        scratch: [const { AtomicUsize::new(0) }; 3],
        kernel_scratch: AtomicUsize::new(0),
        stack_floor: AtomicUsize::new(0),
        emergency_sp: AtomicUsize::new(0),
        index: AtomicUsize::new(0),
        hart_id: AtomicUsize::new(0),
    }
}; MAX_CPUS];

/// This CPU's block.
pub(super) fn this_cpu() -> &'static PerCpu {
    let tp: usize;
    // SAFETY: reads `tp`, which in the kernel always holds this CPU's
    // `PerCpu` (module invariant), a static that lives forever.
    unsafe {
        asm!("mv {}, tp", out(reg) tp, options(nomem, nostack, preserves_flags));
        &*(tp as *const PerCpu)
    }
}

/// This CPU's index: 0 on the boot CPU.
pub fn cpu_index() -> usize {
    this_cpu().index.load(Ordering::Relaxed)
}

/// This CPU's hart id (`a0` at its entry).
pub fn cpu_hw_id() -> u64 {
    this_cpu().hart_id.load(Ordering::Relaxed) as u64
}

/// Restores `*regs` and returns to user mode. This CPU's kernel stack is
/// abandoned: the next entry from user mode starts at its top and saves the
/// user state into `*regs`.
///
/// # Safety
/// `regs` must point to a `UserRegs` that stays valid, and is not otherwise
/// accessed, until the next entry from user mode on this CPU has saved into
/// it and handed it to the portable side; its `sepc`/`x[2]` are user
/// addresses of a thread whose address space is loaded. Nothing on the
/// current kernel stack may be needed again.
pub unsafe fn enter_user(regs: *const UserRegs) -> ! {
    // SAFETY: `keel_enter_user` (traps) restores `*regs` and executes
    // `sret` to U-mode; by the caller's guarantee the pointer is valid and
    // nothing on the kernel stack is still in use. `tail` clobbers `t1`
    // only, which no longer matters.
    unsafe { asm!("tail keel_enter_user", in("a0") regs, options(noreturn)) }
}

/// The portable meaning of a synchronous exception from U-mode (`scause`
/// without the interrupt bit; `stval` as the CPU set it).
pub(super) fn classify_user(scause: usize, stval: usize) -> UserFault {
    use super::traps::*;
    let page_fault = |access| UserFault::PageFault {
        addr: stval,
        access,
    };
    match scause {
        INSTRUCTION_PAGE_FAULT => page_fault(Access::Exec),
        LOAD_PAGE_FAULT => page_fault(Access::Read),
        STORE_PAGE_FAULT => page_fault(Access::Write),
        ILLEGAL_INSTRUCTION => UserFault::IllegalInstruction,
        BREAKPOINT => UserFault::Breakpoint,
        LOAD_ADDRESS_MISALIGNED | STORE_ADDRESS_MISALIGNED => UserFault::Alignment { addr: stval },
        // Access faults (PMP, bus errors, some misaligned atomics) cannot be
        // resolved by mapping a page: they must never reach the demand
        // pager, which would resume the thread into the same fault forever.
        other => UserFault::Other(other as u64),
    }
}

/// Called by the trap entry for every trap from U-mode, on the top of this
/// CPU's kernel stack, after the user registers were saved into this CPU's
/// current [`UserRegs`]. Returns the registers to enter next.
pub(super) extern "C" fn user_trap(scause: usize, stval: usize) -> *const crate::arch::UserRegs {
    if scause & super::traps::SCAUSE_INTERRUPT != 0 {
        return match super::irq::interrupt(scause) {
            Some(irq) => crate::entry::on_interrupt(irq),
            None => unexpected_user_trap(scause, stval),
        };
    }
    if scause == ECALL_FROM_U {
        crate::arch::common::syscall(this_cpu().user_regs.load(Ordering::Relaxed))
    } else {
        crate::entry::on_user_fault(classify_user(scause, stval))
    }
}

/// Reports a trap from U-mode the kernel has no handler for: a kernel bug.
fn unexpected_user_trap(scause: usize, stval: usize) -> ! {
    let regs = this_cpu().user_regs.load(Ordering::Relaxed) as *const UserRegs;
    // SAFETY: the entry just saved the user state into this `UserRegs`,
    // which `enter_user`'s caller keeps valid until the entry hands it on.
    let regs = unsafe { &*regs };
    crate::trap::fatal(
        TrapRecord {
            cause: TrapCause::Other(scause as u64),
            pc: regs.sepc,
        },
        || {
            kprintln!("  from user mode; stval {stval:#018x}");
            super::traps::dump_gprs(&regs.x);
        },
        || {},
    )
}

#[cfg(feature = "ktest")]
mod checks {
    use super::*;

    fn sstatus() -> usize {
        let s: usize;
        // SAFETY: reads `sstatus` only.
        unsafe { asm!("csrr {}, sstatus", out(reg) s, options(nomem, nostack)) };
        s
    }

    /// Writes `value` into `f7` (FS on only for the write).
    fn set_f7(value: u64) {
        // SAFETY: changes only `f7`, which no kernel code uses, and turns
        // FS back off.
        unsafe {
            asm!(
                ".option push",
                ".option arch, +d",
                "csrs sstatus, {fs}",
                "fmv.d.x f7, {v}",
                "csrc sstatus, {fs_mask}",
                ".option pop",
                v = in(reg) value,
                fs = in(reg) SSTATUS_FS_INITIAL,
                fs_mask = in(reg) SSTATUS_FS_MASK,
                options(nomem, nostack),
            )
        };
    }

    /// Reads `f7`.
    fn get_f7() -> u64 {
        let value: u64;
        // SAFETY: reads `f7` only, and turns FS back off.
        unsafe {
            asm!(
                ".option push",
                ".option arch, +d",
                "csrs sstatus, {fs}",
                "fmv.x.d {v}, f7",
                "csrc sstatus, {fs_mask}",
                ".option pop",
                v = out(reg) value,
                fs = in(reg) SSTATUS_FS_INITIAL,
                fs_mask = in(reg) SSTATUS_FS_MASK,
                options(nomem, nostack),
            )
        };
        value
    }

    crate::ktest!(
        fn user_regs_use_the_syscall_registers() {
            // The portable side of `UserRegs` is checked on every
            // architecture (`arch::tests`); here, which RISC-V
            // register is which.
            let regs = UserRegs::new(0x40_1000, 0x7fff_ffff_0000, 0x20_0000);
            kassert_eq!(regs.sepc, 0x40_1000);
            kassert_eq!(regs.x[SP], 0x7fff_ffff_0000);
            kassert_eq!(regs.x[A0], 0x20_0000);
            // U-mode with interrupts on after `sret`, FP usable.
            kassert_eq!(regs.sstatus & SSTATUS_SPP, 0);
            kassert!(regs.sstatus & SSTATUS_SPIE != 0);
            kassert_eq!(regs.sstatus & SSTATUS_FS_MASK, SSTATUS_FS_INITIAL);
            let others = regs
                .x
                .iter()
                .enumerate()
                .filter(|(i, _)| ![SP, A0].contains(i));
            kassert!(others.clone().all(|(_, v)| *v == 0));

            let mut regs = UserRegs::default();
            for (i, x) in regs.x.iter_mut().enumerate() {
                *x = 0x1000 + i;
            }
            let before = regs.clone();
            kassert_eq!(
                regs.syscall_args(),
                (0x1000 + 17, core::array::from_fn(|i| 0x1000 + 10 + i))
            );
            regs.set_result(-22);
            kassert_eq!(regs.x[A0], (-22isize) as usize);
            // TLS is `tp`, a saved user register.
            regs.set_tls(0xdead_beef);
            kassert_eq!(regs.x[TP], 0xdead_beef);
            // Nothing else changed.
            for i in (0..32).filter(|i| ![A0, TP].contains(i)) {
                kassert_eq!(regs.x[i], before.x[i]);
            }
            kassert_eq!(regs.x[1], 0x1000 + 1);
            Ok(())
        }
    );

    crate::ktest!(
        fn user_regs_layout_matches_the_trap_entry() {
            kassert_eq!(core::mem::offset_of!(UserRegs, x), 0);
            kassert_eq!(core::mem::offset_of!(UserRegs, sepc), 32 * 8);
            kassert_eq!(core::mem::offset_of!(UserRegs, sstatus), 33 * 8);
            kassert_eq!(core::mem::offset_of!(FpuState, fcsr), 32 * 8);
            kassert_eq!(ELF_MACHINE, 243);
            Ok(())
        }
    );

    crate::ktest!(
        fn fpu_state_save_clobber_restore() {
            kassert_eq!(
                sstatus() & SSTATUS_FS_MASK,
                0,
                "the kernel runs with FS off"
            );
            let state = FpuState {
                f: core::array::from_fn(|i| 0x4000_0000_0000_0000 | (i as u64) << 32 | 0x5a5a),
                // frm = 1 (round towards zero), fflags = 0b10101.
                fcsr: 1 << 5 | 0b10101,
            };
            state.restore();
            kassert_eq!(sstatus() & SSTATUS_FS_MASK, 0);
            kassert_eq!(get_f7(), state.f[7]);
            // What `save` reads is what the registers hold.
            set_f7(0x1234_5678_9abc_def0);
            let mut saved = FpuState::default();
            saved.save();
            kassert_eq!(sstatus() & SSTATUS_FS_MASK, 0);
            kassert_eq!(saved.f[7], 0x1234_5678_9abc_def0);
            kassert_eq!(saved.fcsr, state.fcsr);
            for i in (0..32).filter(|&i| i != 7) {
                kassert_eq!(saved.f[i], state.f[i]);
            }
            // Clobber everything, then restore: the values come back.
            FpuState::default().restore();
            kassert_eq!(get_f7(), 0);
            let mut zero = FpuState {
                f: [1; 32],
                fcsr: 1,
            };
            zero.save();
            kassert_eq!(zero, FpuState::default());
            state.restore();
            kassert_eq!(get_f7(), state.f[7]);
            let mut again = FpuState::default();
            again.save();
            kassert_eq!(again, state);
            FpuState::default().restore();
            Ok(())
        }
    );

    crate::ktest!(
        fn user_faults_are_classified() {
            let addr = 0x1234;
            let pf = |access| UserFault::PageFault { addr, access };
            let cases = [
                (0, UserFault::Other(0)),
                (1, UserFault::Other(1)),
                (2, UserFault::IllegalInstruction),
                (3, UserFault::Breakpoint),
                (4, UserFault::Alignment { addr }),
                (5, UserFault::Other(5)),
                (6, UserFault::Alignment { addr }),
                (7, UserFault::Other(7)),
                (12, pf(Access::Exec)),
                (13, pf(Access::Read)),
                (15, pf(Access::Write)),
                (24, UserFault::Other(24)),
            ];
            for (scause, want) in cases {
                kassert_eq!((scause, classify_user(scause, addr)), (scause, want));
            }
            Ok(())
        }
    );

    crate::ktest!(
        fn per_cpu_block_is_set_up() {
            let cpu = this_cpu();
            kassert!(core::ptr::eq(cpu, &CPUS[0]));
            kassert_eq!(cpu_index(), 0);
            let [kernel, emergency] = super::super::mm::cpu_stacks(0);
            kassert_eq!(cpu.kernel_sp.load(Ordering::Relaxed), kernel.end);
            kassert_eq!(cpu.emergency_sp.load(Ordering::Relaxed), emergency.end);
            let sscratch: usize;
            // SAFETY: reads `sscratch` only.
            unsafe { asm!("csrr {}, sscratch", out(reg) sscratch, options(nomem, nostack)) };
            kassert_eq!(sscratch, 0, "sscratch is 0 in the kernel");
            // Every other CPU that came up has its own block and stacks.
            for (i, other) in CPUS.iter().enumerate().take(crate::smp::count()).skip(1) {
                kassert_eq!(other.index.load(Ordering::Relaxed), i);
                let top = other.kernel_sp.load(Ordering::Relaxed);
                kassert_eq!(top, super::super::mm::cpu_stacks(i)[0].end);
                kassert!(!kernel.contains(&(top - 1)));
            }
            Ok(())
        }
    );
}

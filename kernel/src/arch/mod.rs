//! The architecture layer: the only place that selects code by
//! `target_arch`. Each architecture module presents the same set of names,
//! listed here; the rest of the kernel calls them as `crate::arch::NAME`.
//!
//! # Contract every architecture implements
//! Boot:
//! - An entry point (named by its `linker.ld`) that brings the CPU to a
//!   64-bit higher-half kernel with a stack, FP/SIMD enabled, the trap vector
//!   installed and the console usable, parses the boot information into
//!   [`crate::bootinfo::BootInfo`] and calls [`crate::boot::kernel_main`].
//!
//! Items (all `pub` in the arch module):
//! - `NAME: &str` — "x86_64", "aarch64" or "riscv64".
//! - `fn console_write(bytes: &[u8])` — polled serial output.
//! - `fn exit(status: i32) -> !` — power off with `status` as QEMU's exit
//!   status (see `keel_abi::harness`); halts forever where no exit device is.
//! - `fn halt() -> !` — masks interrupts and stops this CPU forever.
//! - `fn cycle_counter() -> u64` — a cheap monotonic counter that advances
//!   once per guest instruction under QEMU `-icount shift=0` (TSC, PMCCNTR_EL0,
//!   `instret`).
//! - `fn breakpoint()` — executes the architecture's breakpoint instruction
//!   at [`breakpoint_site`]; the trap handler records a
//!   [`crate::trap::TrapCause::Breakpoint`] with `crate::trap::record` and
//!   resumes after it.
//! - `fn breakpoint_site() -> usize` — the address of that instruction.
//! - `fn probe_read(addr: usize) -> Result<u8, crate::trap::TrapRecord>` —
//!   reads one byte; if that faults, the trap handler finds the faulting PC in
//!   the exception-fixup table, records the fault and resumes at the fixup,
//!   and this returns the record instead of crashing.
//! - `fn print_backtrace()` — prints the current call chain, one
//!   `frame #<i> <addr>` line per frame (frame-pointer walk, bounded).
//! - `fn in_stack_guard(addr: usize) -> bool` — whether `addr` lies in the
//!   unmapped guard page under a kernel stack (boot stack, exception and
//!   emergency stacks). A fault there is reported as a kernel stack overflow;
//!   the architecture makes sure the fault handler still has a stack to run on
//!   (x86 #DF on an IST stack, a separate stack on AArch64 and RISC-V).
//!
//! Memory management (see `crate::mm::paging`):
//! - `type PageFormat` — the architecture's [`crate::mm::paging::PteFormat`].
//! - `const KERNEL_ROOT_ENTRIES: Range<usize>` — root-table entries owned by
//!   the kernel and shared into every user tree (`256..512` where one root
//!   serves both halves; empty on AArch64, whose kernel half has its own root
//!   in TTBR1).
//! - `const FLUSH_NEW_ENTRIES: bool` — whether the TLB may cache invalid
//!   entries, so that a new mapping must be flushed too (RISC-V).
//! - `fn max_page_size() -> PageSize` — the largest leaf this CPU supports.
//! - `fn kernel_image_layout() -> ArrayVec<(Range<usize>, Attr), 8>` — the kernel
//!   image's sections with their attributes (text RX, rodata R, data/bss RW),
//!   excluding stack guard pages, from linker-script symbols.
//! - `fn kernel_virt_to_phys(va: usize) -> u64` — for addresses in the image.
//! - `fn device_windows() -> &'static [(u64, u64)]` — physical `(start,
//!   len)` ranges of device registers the kernel reaches through the direct map.
//! - `unsafe fn load_kernel_root(root: u64)` / `fn kernel_root() -> u64` —
//!   install / read the kernel's page-table root (CR3, TTBR1_EL1, satp) and
//!   flush the TLB.
//! - `unsafe fn load_user_root(root: u64, asid: u16, flush: bool)` — make the
//!   user tree `root` current with address-space id `asid` (PCID, ASID in
//!   TTBR0_EL1, ASID in satp); `flush` drops the TLB entries tagged `asid`
//!   first. `fn unload_user_root()` returns to no user mappings.
//! - `fn asid_count() -> usize` — usable address-space ids (1 when the CPU has
//!   none, which means every switch flushes).
//! - `fn flush_page(asid: u16, va: usize)` (a page of the current user
//!   tree), `fn flush_kernel_page(va: usize)`, `fn flush_all()` — local TLB
//!   invalidation (shootdowns to other CPUs are `crate::mm::tlb`'s job).
//! - an assembly routine `keel_user_copy(dst, src, len) -> CopyResult` (C
//!   ABI) that copies with user-memory access opened (SMAP `stac`/`clac`,
//!   PAN, SUM) for the duration; every load and store is in the
//!   exception-fixup table, so a fault returns `(1, fault address)`.
//!   [`user_copy`] wraps it.
//!
//! User mode (see `crate::task`; one kernel stack per CPU, event-driven):
//! - `struct UserRegs` (`#[repr(C)]`, `Clone`, `Default`) — a thread's saved
//!   user registers: all general-purpose registers, the user PC, SP and
//!   flags. Methods: `fn new(entry: usize, stack: usize, arg: usize) ->
//!   UserRegs` (user mode, interrupts enabled, `arg` in the first argument
//!   register); `fn syscall_args(&self) -> (usize, [usize; 6])` (number and
//!   arguments, in the registers `keel_abi::Syscall` documents); `fn
//!   set_result(&mut self, value: isize)`; `fn pc(&self) -> usize`; `fn
//!   set_tls(&mut self, value: usize)` (RISC-V keeps TLS in `tp`, a saved
//!   register; a no-op elsewhere).
//! - `struct FpuState` (`Default` = the initial FP/SIMD state, with default
//!   control registers) with `fn save(&mut self)` and `fn restore(&self)`:
//!   all FP/SIMD registers and control/status. The kernel itself never
//!   touches FP/SIMD registers, so user state stays live in them while the
//!   kernel runs, and is saved and restored only when threads switch.
//! - `fn save_tls(current: usize) -> usize` / `fn load_tls(value: usize)` —
//!   the TLS base register outside `UserRegs` (x86 FS base, AArch64
//!   TPIDR_EL0, which user code can change, so it is read back on switch).
//! - `unsafe fn enter_user(regs: *const UserRegs) -> !` — restores `*regs`
//!   and returns to user mode, resetting this CPU's kernel stack; the next
//!   entry from user mode saves the user state into the same `*regs`.
//! - On a system-call instruction the entry code saves the user state into
//!   that `UserRegs`, switches to the CPU's kernel stack and calls
//!   `crate::entry::on_syscall()`; a synchronous exception from user mode
//!   calls `crate::entry::on_user_fault(crate::trap::UserFault)`. Both return
//!   the `*const UserRegs` to `enter_user` next (maybe another thread's).
//! - `const ELF_MACHINE: u16` — `e_machine` of this architecture's ELF files.
//!
//! - Unexpected traps print the cause, the faulting address, a register dump
//!   and a backtrace, then `exit(EXIT_CRASH)` (via [`crate::trap::fatal`]).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;

#[cfg(target_arch = "riscv64")]
mod riscv64;
#[cfg(target_arch = "riscv64")]
pub use self::riscv64::*;

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

use crate::bench::KBench;
use crate::bootinfo::PhysReader;
use crate::ktest::KTest;

unsafe extern "C" {
    // Defined by every architecture's linker.ld around `.ktests` and
    // `.kbenches` (both KEEP, 8-byte aligned).
    // Declared as bytes: only their addresses are used.
    static __ktests_start: u8;
    static __ktests_end: u8;
    static __kbenches_start: u8;
    static __kbenches_end: u8;
    // Bounds of the exception-fixup table, `__ex_table` (8-byte aligned).
    static __ex_table_start: u8;
    static __ex_table_end: u8;
}

/// One exception-fixup table entry, emitted by assembly into the
/// `__ex_table` section next to an instruction that may fault: a kernel-mode
/// fault at `fault_pc` resumes at `fixup_pc`.
#[repr(C)]
pub struct FixupEntry {
    pub fault_pc: usize,
    pub fixup_pc: usize,
}

/// All exception-fixup entries.
pub fn fixup_table() -> &'static [FixupEntry] {
    // SAFETY: every architecture's linker script gathers all `__ex_table`
    // contributions (pairs of 8-byte code addresses) between these symbols,
    // in read-only memory that lives for the whole run.
    unsafe {
        linker_array(
            (&raw const __ex_table_start).cast(),
            (&raw const __ex_table_end).cast(),
        )
    }
}

/// The resume address registered for a kernel fault at `pc`, if any.
pub fn fixup_for(pc: usize) -> Option<usize> {
    fixup_table()
        .iter()
        .find(|e| e.fault_pc == pc)
        .map(|e| e.fixup_pc)
}

/// What every architecture's `keel_user_copy` routine returns, in its two
/// return registers.
#[repr(C)]
struct CopyResult {
    faulted: u64,
    addr: u64,
}

unsafe extern "C" {
    fn keel_user_copy(dst: *mut u8, src: *const u8, len: usize) -> CopyResult;
}

/// Copies `len` bytes from `src` to `dst` with user-memory access open; a
/// fault on either side stops the copy and returns the address that could
/// not be read or written (the bytes before it were copied). The caller
/// checks that the user side lies in the user half.
///
/// # Safety
/// One of `dst`/`src` is a user address range (anything: faults are
/// caught); the other is kernel memory valid for `len` bytes, for writing
/// if it is `dst`; the two do not overlap.
pub unsafe fn user_copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), usize> {
    // SAFETY: each architecture's routine follows the C ABI and touches only
    // `[src, src + len)` and `[dst, dst + len)`; every instruction that
    // does is in the fixup table, so a fault returns instead of crashing;
    // the kernel side is valid (the caller's guarantee).
    let r = unsafe { keel_user_copy(dst, src, len) };
    if r.faulted == 0 {
        Ok(())
    } else {
        Err(r.addr as usize)
    }
}

/// All tests registered in the `.ktests` section by [`crate::ktest!`].
pub fn registered_tests() -> &'static [KTest] {
    // SAFETY: the linker script places every `KTest` static emitted by
    // `ktest!` contiguously between these two symbols, so the range is a
    // valid, immutable array of `KTest`s that lives for the whole run.
    unsafe {
        linker_array(
            (&raw const __ktests_start).cast(),
            (&raw const __ktests_end).cast(),
        )
    }
}

/// All benchmarks registered in the `.kbenches` section by
/// [`crate::kbench!`].
pub fn registered_benches() -> &'static [KBench] {
    // SAFETY: as for `registered_tests`, for the `.kbenches` section.
    unsafe {
        linker_array(
            (&raw const __kbenches_start).cast(),
            (&raw const __kbenches_end).cast(),
        )
    }
}

/// # Safety
/// `start..end` must bound an array of initialised, immutable `T`s that
/// lives for the rest of the run.
unsafe fn linker_array<T>(start: *const T, end: *const T) -> &'static [T] {
    let len = (end as usize - start as usize) / core::mem::size_of::<T>();
    // SAFETY: guaranteed by the caller.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Walks a frame-pointer chain starting at `fp`, calling `f` with each return
/// address. `next(fp)` returns `(caller_fp, return_address)` read from the
/// frame record, or `None` when the record is not readable; the walk stops
/// after 32 frames, on a null or non-increasing frame pointer.
pub fn walk_frames(
    mut fp: usize,
    next: impl Fn(usize) -> Option<(usize, usize)>,
    mut f: impl FnMut(usize),
) {
    for _ in 0..32 {
        if fp == 0 || !fp.is_multiple_of(core::mem::align_of::<usize>()) {
            return;
        }
        let Some((caller_fp, ret)) = next(fp) else {
            return;
        };
        if ret == 0 {
            return;
        }
        f(ret);
        if caller_fp <= fp {
            return;
        }
        fp = caller_fp;
    }
}

/// Physical memory read through the boot direct map, each page of a range
/// first probed with `probe_read`, so an address that is not backed yields
/// `None` rather than a fault. For boot information whose address comes from
/// the loader (the device tree).
pub struct ProbedDirectMap {
    /// Lowest physical address read: below it lie device registers, where
    /// even a read may have side effects.
    pub floor: u64,
}

impl PhysReader<'static> for ProbedDirectMap {
    fn bytes(&self, addr: u64, len: u64) -> Option<&'static [u8]> {
        let end = addr.checked_add(len)?;
        if addr < self.floor || end > crate::mm::DIRECT_MAP_BOOT_LIMIT {
            return None;
        }
        // One byte per page, and the last byte.
        let mut at = addr;
        while at < end {
            probe_read(phys_to_virt(at)).ok()?;
            at = (at | 0xfff) + 1;
        }
        if len > 0 {
            probe_read(phys_to_virt(end - 1)).ok()?;
        }
        // SAFETY: `[addr, end)` lies below the boot direct-map limit, which
        // every architecture's boot page tables map readable at
        // `phys_to_virt` for the kernel's whole run, and every page of it was
        // just read without a fault, so it is backed. Boot information is
        // reserved in the memory map, so nothing writes it while shared.
        Some(unsafe { core::slice::from_raw_parts(phys_to_virt(addr) as *const u8, len as usize) })
    }
}

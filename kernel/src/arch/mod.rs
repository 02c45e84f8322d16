//! The architecture layer: the only place that selects code by
//! `target_arch`. Each architecture module, and the host stand-in `host`
//! (selected instead in host test builds, `cargo test`), presents the same
//! set of names. The list in `contract!`
//! below *is* the contract: it is re-exported from the selected module and
//! nothing else is, so an architecture that lacks an item fails to compile
//! and the rest of the kernel, which calls them as `crate::arch::NAME`,
//! cannot reach anything outside it. The `const` block after it checks the
//! type of every item, for every architecture and the host stand-in alike.
//!
//! # Contract every architecture implements
//! Boot (bare metal only):
//! - An entry point (named by its `linker.ld`) that brings the CPU to a
//!   64-bit higher-half kernel with a stack, FP/SIMD enabled, the trap vector
//!   installed and the console usable, parses the boot information into
//!   [`crate::bootinfo::BootInfo`] and calls `crate::boot::kernel_main`.
//!
//! Items:
//! - `NAME: &str` — "x86_64", "aarch64", "riscv64" (or "host").
//! - `fn console_write(bytes: &[u8])` — polled serial output.
//! - `fn exit(status: i32) -> !` — power off with `status` as QEMU's exit
//!   status (see `keel_abi::harness`); halts forever where no exit device is.
//! - `fn halt() -> !` — masks interrupts and stops this CPU forever.
//! - `fn cycle_counter() -> u64` — a cheap monotonic counter that advances
//!   once per guest instruction under QEMU `-icount shift=0` (TSC, PMCCNTR_EL0,
//!   `instret`).
//! - `fn clock_ticks() -> u64` — the monotonic clock counter, advancing at
//!   a constant rate whatever the CPU does (TSC, CNTVCT_EL0, the `time`
//!   CSR); `fn clock_hz(info) -> Option<u64>` — its rate in Hz, from the
//!   CPU (CPUID leaves 0x15/0x16, CNTFRQ_EL0), the firmware
//!   (`BootInfo::timebase_hz`) or a measurement (against the x86 PIT);
//!   called once at boot, before any interrupt source is enabled.
//! - `fn irq_init(info) -> Result<(), &str>` — sets up the interrupt
//!   controller the firmware describes (`BootInfo::irq`, whose register
//!   windows the kernel page tables map as device memory) and this CPU's
//!   one-shot timer, disarmed, every device line masked; called once at
//!   boot after `mm::kmap` and the clock. `fn timer_arm(deadline:
//!   Option<u64>)` — fire the timer once at clock tick `deadline` (at
//!   once if it has passed), or disarm it.
//! - Device lines (x86 GSIs through the I/O APICs, GIC SPIs, PLIC
//!   sources): `fn irq_line_ok(line: u32) -> bool` — whether user space
//!   may claim it (it exists and is not the kernel's); `fn irq_mask(line,
//!   masked: bool)` — mask it, or route it to this CPU unmasked. A line is
//!   masked when it fires, before it is reported as
//!   `Interrupt::Line(line)`, so a level-triggered device does not
//!   interrupt again before its driver has served it.
//! - Device access for drivers: `fn console_uart() -> (usize, u64)` —
//!   the console UART's kind (`keel_abi::boot::CONSOLE_*`) and register
//!   base; x86 I/O ports: `fn io_ports_ok(base: u32, count: u32) ->
//!   Result<(), keel_abi::Error>` (`NotSupported` without I/O ports,
//!   `InvalidArgument` for ports past 0xffff or that the kernel drives),
//!   `fn port_io(port: u16, width: u8, value: Option<u32>) ->
//!   Option<u32>` (read, or write `value`; widths 1, 2, 4; `None` without
//!   I/O ports or for a bad width).
//! - Interrupts are masked in the kernel except in `fn idle() -> !`,
//!   which restarts this CPU's kernel stack and waits for interrupts
//!   (`hlt`, `wfi`). An interrupt, from user mode (after saving the user
//!   state as for a system call) or in `idle`, is acknowledged and handed
//!   to `crate::entry::on_interrupt(crate::trap::Interrupt)`, which returns
//!   the registers to `enter_user` (or itself goes to `idle`); the timer is
//!   disarmed when it is reported. Spurious interrupts resume what they
//!   interrupted.
//! - SMP (CPU indices `0..bootinfo::MAX_CPUS`, 0 the boot CPU):
//!   `fn cpu_index() -> usize` — this CPU's index, from its per-CPU
//!   register (x86 GS block, AArch64 TPIDR_EL1, RISC-V `sscratch` block),
//!   cheap and valid from the first Rust code on every CPU. `fn
//!   cpu_hw_id() -> u64` — this CPU's hardware id as
//!   `BootInfo::cpu_ids` lists it (local APIC id, MPIDR affinity, hart
//!   id). `fn cpu_start(info, index, hw_id) -> Result<(), &str>` — starts
//!   the CPU `hw_id` as CPU `index` (x86 INIT-SIPI-SIPI through a
//!   real-mode trampoline below 1 MiB, AArch64 PSCI `CPU_ON` through
//!   `info.psci`, RISC-V SBI HSM `hart_start`) on a kernel stack of its
//!   own with a guard page under it (and its own exception stacks;
//!   `in_stack_guard` knows them all). The new CPU loads the kernel page
//!   tables, enables FP/SIMD and its trap vector as the boot CPU does,
//!   sets up its interrupt-controller interface (local APIC, GIC CPU
//!   interface or redistributor, PLIC context) with its timer disarmed
//!   and IPIs enabled, and calls `crate::smp::cpu_main(index) -> !` with
//!   interrupts masked. `Err` when the hardware or firmware refuses at
//!   once; it does not wait for the CPU (the caller waits, bounded, for
//!   `cpu_main` to check in). `fn send_ipi(index: usize)` — interrupts
//!   CPU `index`, which reports `Interrupt::Ipi` to `entry::on_interrupt`
//!   when it takes it (in user mode or idle; IPIs not yet taken may
//!   coalesce). Device lines are routed to the boot CPU, whichever CPU
//!   unmasks them. `fn spin_wait()` — one round of a busy wait that lets
//!   other CPUs (and QEMU's `-icount`, which runs them in turn) go on.
//! - `fn breakpoint()` — executes the architecture's breakpoint instruction
//!   at `breakpoint_site`; the trap handler records a
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
//! - `const DIRECT_MAP_BASE: usize` / `fn phys_to_virt(pa: u64) -> usize`
//!   — the direct map of physical memory: physical `pa` is readable and
//!   writable by the kernel at `DIRECT_MAP_BASE + pa` (all RAM once
//!   `mm::kmap` has run; the first 4 GiB before).
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
//!   tree), `fn flush_all()` — local TLB invalidation (shootdowns to other
//!   CPUs come with SMP).
//! - `unsafe fn user_copy(dst: *mut u8, src: *const u8, len: usize) ->
//!   Result<(), usize>` — copies with user-memory access opened (SMAP
//!   `stac`/`clac`, PAN, SUM) for the duration; a fault on either side stops
//!   the copy and returns the address that faulted. Every bare-metal
//!   architecture implements it with the shared wrapper in `common` around
//!   its assembly routine `keel_user_copy(dst, src, len) -> CopyResult` (C
//!   ABI), every load and store of which is in the exception-fixup table.
//!
//! User mode (see `crate::task`; one kernel stack per CPU, event-driven):
//! - `struct UserRegs` (`#[repr(C)]`, `Clone`, `Default`, `Debug`, `Eq`) — a
//!   thread's saved user registers: all general-purpose registers, the user
//!   PC, SP and flags. Methods: `fn new(entry: usize, stack: usize, arg:
//!   usize) -> UserRegs` (user mode, interrupts enabled, `arg` in the first
//!   argument register); `fn syscall_args(&self) -> (usize, [usize; 6])`
//!   (number and arguments, in the registers `keel_abi::Syscall`
//!   documents); `fn set_result(&mut self, value: isize)`; `fn
//!   set_message(&mut self, info: usize, badge: usize, words: [usize; 4])`
//!   (a received message: `info` as the result, the badge and words in
//!   arguments 1–5, `keel_abi::ipc`); `fn pc(&self) ->
//!   usize`; `fn set_tls(&mut self, value: usize)` (RISC-V keeps TLS in
//!   `tp`, a saved register; a no-op elsewhere).
//! - `struct FpuState` (`Clone`, `Debug`, `Eq`, `Default` = the initial FP/SIMD
//!   state, with default control registers) with `fn save(&mut self)` and
//!   `fn restore(&self)`: all FP/SIMD registers and control/status. The
//!   kernel itself never touches FP/SIMD registers, so user state stays live
//!   in them while the kernel runs, and is saved and restored only when
//!   threads switch.
//! - `fn save_tls(current: usize) -> usize` / `fn load_tls(value: usize)` —
//!   the TLS base register outside `UserRegs` (x86 FS base, AArch64
//!   TPIDR_EL0, which user code can change, so it is read back on switch).
//! - `unsafe fn enter_user(regs: *const UserRegs) -> !` — restores `*regs`
//!   and returns to user mode, resetting this CPU's kernel stack; the next
//!   entry from user mode saves the user state into the same `*regs`.
//! - On a system-call instruction the entry code saves the user state into
//!   that `UserRegs`, switches to the CPU's kernel stack and calls
//!   `common::syscall(regs)` (the register-only path, then
//!   `crate::entry::on_syscall(number, args)`); a synchronous exception from user mode
//!   calls `crate::entry::on_user_fault(crate::trap::UserFault)`. Both return
//!   the `*const UserRegs` to `enter_user` next (maybe another thread's).
//! - `const ELF_MACHINE: u16` — `e_machine` of this architecture's ELF files.
//!
//! - Unexpected traps print the cause, the faulting address, a register dump
//!   and a backtrace, then `exit(EXIT_CRASH)` (via [`crate::trap::fatal`]).
//!
//! The host stand-in (`host`) implements every item with the simplest
//! faithful behaviour for host tests: see its header.

/// Re-exports the contract's items from the selected module `$m`: the one
/// list of the names the rest of the kernel may use.
macro_rules! contract {
    ($m:ident) => {
        pub use self::$m::{
            // Memory management.
            DIRECT_MAP_BASE,
            // User mode.
            ELF_MACHINE,
            FLUSH_NEW_ENTRIES,
            FpuState,
            KERNEL_ROOT_ENTRIES,
            // Boot, console, traps.
            NAME,
            PageFormat,
            UserRegs,
            asid_count,
            breakpoint,
            breakpoint_site,
            clock_hz,
            clock_ticks,
            console_uart,
            console_write,
            cpu_hw_id,
            cpu_index,
            cpu_start,
            cycle_counter,
            device_windows,
            enter_user,
            exit,
            flush_all,
            flush_page,
            halt,
            idle,
            in_stack_guard,
            io_ports_ok,
            irq_init,
            irq_line_ok,
            irq_mask,
            kernel_image_layout,
            kernel_root,
            kernel_virt_to_phys,
            load_kernel_root,
            load_tls,
            load_user_root,
            max_page_size,
            phys_to_virt,
            port_io,
            print_backtrace,
            probe_read,
            save_tls,
            send_ipi,
            timer_arm,
            unload_user_root,
            user_copy,
        };
    };
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod aarch64;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
contract!(aarch64);

#[cfg(all(target_os = "none", target_arch = "riscv64"))]
mod riscv64;
#[cfg(all(target_os = "none", target_arch = "riscv64"))]
contract!(riscv64);

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
mod x86_64;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
contract!(x86_64);

// The host stand-in exists for host tests only (test support, so it
// lives with the tests).
#[cfg(test)]
#[path = "tests/host.rs"]
pub mod host;
#[cfg(test)]
contract!(host);

/// Shared by the bare-metal architectures; private to `arch/`.
#[cfg(target_os = "none")]
mod common;

/// The contract's in-kernel tests, written once for every architecture.
// Only bare-metal builds enable `ktest`.
#[cfg(feature = "ktest")]
mod tests;
/// One round of a busy wait (shared by the bare-metal architectures).
#[cfg(target_os = "none")]
pub use self::common::spin_wait;
#[cfg(target_os = "none")]
use self::common::*;
#[cfg(test)]
pub use self::host::spin_wait;

// The type of every item of the contract, checked for whichever module is
// selected.
const _: () = {
    use crate::mm::paging::{Attr, PageSize, PteFormat};
    use core::fmt::Debug;
    use core::ops::Range;

    const fn page_format<T: PteFormat>() {}
    const fn user_regs<T: Clone + Default + Debug + Eq + Send + Sync>() {}
    const fn fpu_state<T: Clone + Default + Debug + Eq + Send + Sync>() {}

    // Boot, console, traps.
    let _: &str = NAME;
    let _: fn(&[u8]) = console_write;
    let _: fn(i32) -> ! = exit;
    let _: fn() -> ! = halt;
    let _: fn() -> u64 = cycle_counter;
    let _: fn() -> u64 = clock_ticks;
    let _: fn(&crate::bootinfo::BootInfo<'_>) -> Option<u64> = clock_hz;
    let _: fn(&crate::bootinfo::BootInfo<'_>) -> Result<(), &'static str> = irq_init;
    let _: fn(Option<u64>) = timer_arm;
    let _: fn() -> ! = idle;
    let _: fn(u32) -> bool = irq_line_ok;
    let _: fn(u32, bool) = irq_mask;
    let _: fn() -> (usize, u64) = console_uart;
    let _: fn(u32, u32) -> Result<(), keel_abi::Error> = io_ports_ok;
    let _: fn(u16, u8, Option<u32>) -> Option<u32> = port_io;
    let _: fn() -> usize = cpu_index;
    let _: fn() -> u64 = cpu_hw_id;
    let _: fn(&crate::bootinfo::BootInfo<'_>, usize, u64) -> Result<(), &'static str> = cpu_start;
    let _: fn(usize) = send_ipi;
    let _: fn() = spin_wait;
    let _: fn() = breakpoint;
    let _: fn() -> usize = breakpoint_site;
    let _: fn(usize) -> Result<u8, crate::trap::TrapRecord> = probe_read;
    let _: fn() = print_backtrace;
    let _: fn(usize) -> bool = in_stack_guard;

    // Memory management.
    page_format::<PageFormat>();
    let _: Range<usize> = KERNEL_ROOT_ENTRIES;
    let _: bool = FLUSH_NEW_ENTRIES;
    let _: usize = DIRECT_MAP_BASE;
    let _: fn(u64) -> usize = phys_to_virt;
    let _: fn() -> PageSize = max_page_size;
    let _: fn() -> arrayvec::ArrayVec<(Range<usize>, Attr), 8> = kernel_image_layout;
    let _: fn(usize) -> u64 = kernel_virt_to_phys;
    let _: fn() -> &'static [(u64, u64)] = device_windows;
    let _: unsafe fn(u64) = load_kernel_root;
    let _: fn() -> u64 = kernel_root;
    let _: unsafe fn(u64, u16, bool) = load_user_root;
    let _: fn() = unload_user_root;
    let _: fn() -> usize = asid_count;
    let _: fn(u16, usize) = flush_page;
    let _: fn() = flush_all;
    let _: unsafe fn(*mut u8, *const u8, usize) -> Result<(), usize> = user_copy;

    // User mode.
    user_regs::<UserRegs>();
    let _: fn(usize, usize, usize) -> UserRegs = UserRegs::new;
    let _: fn(&UserRegs) -> (usize, [usize; 6]) = UserRegs::syscall_args;
    let _: fn(&mut UserRegs, isize) = UserRegs::set_result;
    let _: fn(&mut UserRegs, usize, usize, [usize; 4]) = UserRegs::set_message;
    let _: fn(&UserRegs) -> usize = UserRegs::pc;
    let _: fn(&mut UserRegs, usize) = UserRegs::set_tls;
    fpu_state::<FpuState>();
    let _: fn(&mut FpuState) = FpuState::save;
    let _: fn(&FpuState) = FpuState::restore;
    let _: fn(usize) -> usize = save_tls;
    let _: fn(usize) = load_tls;
    let _: unsafe fn(*const UserRegs) -> ! = enter_user;
    let _: u16 = ELF_MACHINE;
};

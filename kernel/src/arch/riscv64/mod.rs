//! The RISC-V (RV64GC, S-mode under OpenSBI, QEMU `virt`) architecture
//! layer: the items listed in `arch/mod.rs`, implemented with the 16550
//! UART, the `sifive_test` exit device, `instret`, `ebreak` and a
//! frame-pointer walker; the memory-management items (Sv48 or Sv39, ASIDs,
//! `sfence.vma`, `user_copy`) are in `mm`; user mode (`UserRegs`,
//! `FpuState`, `enter_user` and the U-mode trap path) in `user` and `traps`;
//! the timer, IPIs and the idle loop in `irq`; starting the other CPUs in
//! `boot`.
//!
//! Invariants: everything here runs after `boot::_start` (or
//! `keel_ap_entry`) switched to the higher half, so devices are reached
//! through the direct map (the first 4 GiB of physical space at
//! [`DIRECT_MAP_BASE`]); the kernel runs with interrupts masked, except
//! in `irq::idle`; in the kernel `tp` holds this CPU's per-CPU block
//! (`user::PerCpu`), which gives [`cpu_index`].

mod boot;
mod irq;
mod mm;
mod traps;
mod user;

pub use self::boot::cpu_start;
pub use self::irq::{
    idle, init as irq_init, line_mask as irq_mask, line_ok as irq_line_ok, send_ipi, timer_arm,
};
pub use self::mm::{
    FLUSH_NEW_ENTRIES, KERNEL_ROOT_ENTRIES, PageFormat, asid_count, device_windows, flush_all,
    flush_page, in_stack_guard, kernel_image_layout, kernel_root, kernel_virt_to_phys,
    load_kernel_root, load_user_root, max_page_size, unload_user_root,
};
pub use self::user::{
    ELF_MACHINE, FpuState, UserRegs, cpu_hw_id, cpu_index, enter_user, load_tls, save_tls,
};
pub use super::common::user_copy;
pub use super::common::{io_ports_ok, port_io};

use crate::trap::TrapRecord;
use core::arch::asm;

/// Architecture name printed in the boot banner.
pub const NAME: &str = "riscv64";

/// Start of the direct map: physical `p` is at `DIRECT_MAP_BASE + p`. The
/// bottom of Sv39's upper half, so one layout serves Sv48 and Sv39: the
/// direct map holds up to 254 GiB, below the kernel image.
pub const DIRECT_MAP_BASE: usize = 0xFFFF_FFC0_0000_0000;
/// Virtual minus physical address of every byte of the kernel image
/// (linked at `0xFFFF_FFFF_8000_0000 + (phys - 0x8000_0000)`).
pub const KERNEL_VIRT_OFFSET: u64 = 0xFFFF_FFFF_8000_0000 - 0x8000_0000;

/// The console UART: the memory-mapped 16550.
pub fn console_uart() -> (usize, u64) {
    (keel_abi::boot::CONSOLE_NS16550_MMIO, UART_PHYS)
}

/// Physical address of the 16550 UART on QEMU `virt`.
const UART_PHYS: u64 = 0x1000_0000;
/// Physical address of QEMU's `sifive_test` exit device.
const SIFIVE_TEST_PHYS: u64 = 0x10_0000;

/// The direct-map virtual address of physical address `p` (only meaningful
/// for `p` below [`crate::mm::DIRECT_MAP_BOOT_LIMIT`], which the boot page
/// tables map, until the memory manager maps more).
pub fn phys_to_virt(p: u64) -> usize {
    DIRECT_MAP_BASE + p as usize
}

// 16550 registers (byte offsets) and line-status bits.
const UART_THR: usize = 0;
const UART_LSR: usize = 5;
const UART_LSR_THR_EMPTY: u8 = 1 << 5;

/// Writes `bytes` to the UART, polling for room before each byte. OpenSBI
/// has already programmed the line settings.
pub fn console_write(bytes: &[u8]) {
    let base = phys_to_virt(UART_PHYS) as *mut u8;
    for &b in bytes {
        // SAFETY: the UART's registers lie in the first GiB of physical
        // space, which the boot page tables direct-map for the kernel's
        // whole life; byte-wide volatile accesses are what a 16550 expects.
        unsafe {
            while base.add(UART_LSR).read_volatile() & UART_LSR_THR_EMPTY == 0 {
                core::hint::spin_loop();
            }
            base.add(UART_THR).write_volatile(b);
        }
    }
}

/// Makes QEMU exit with `status` through the `sifive_test` device
/// (`(status << 16) | 0x3333` = FAIL with code; 0x5555 = PASS, exit 0).
pub fn exit(status: i32) -> ! {
    let value: u32 = match status {
        0 => 0x5555,
        _ => ((status as u32) << 16) | 0x3333,
    };
    // SAFETY: the test device lies in the direct-mapped first GiB; a 32-bit
    // store to its only register is its documented interface.
    unsafe { (phys_to_virt(SIFIVE_TEST_PHYS) as *mut u32).write_volatile(value) };
    halt()
}

/// Masks interrupts and waits forever.
pub fn halt() -> ! {
    loop {
        // SAFETY: clearing `sstatus.SIE` and waiting touch no memory.
        unsafe { asm!("csrci sstatus, 2", "wfi", options(nomem, nostack)) };
    }
}

/// The clock counter: the `time` CSR.
pub fn clock_ticks() -> u64 {
    riscv::register::time::read() as u64
}

/// The clock's rate: the device tree's `timebase-frequency`.
pub fn clock_hz(info: &crate::bootinfo::BootInfo<'_>) -> Option<u64> {
    info.timebase_hz
}

/// The `instret` counter: retired instructions, which under QEMU
/// `-icount shift=0` is also the virtual clock. OpenSBI enables S-mode
/// access in `mcounteren`.
pub fn cycle_counter() -> u64 {
    riscv::register::instret::read() as u64
}

core::arch::global_asm!(
    r#"
    .section .text.keel_breakpoint, "ax"
    .balign 4
    .globl keel_breakpoint
keel_breakpoint:
    .option push
    .option norvc
    .globl keel_breakpoint_site
keel_breakpoint_site:
    ebreak
    .option pop
    ret
    "#
);

unsafe extern "C" {
    /// `ebreak; ret` (uncompressed, so the site is a fixed 4-byte
    /// instruction). Only its address is used, and it is only called from
    /// [`breakpoint`]'s `asm!`.
    fn keel_breakpoint_site();
}

/// Executes `ebreak` at [`breakpoint_site`]; the trap handler records it and
/// resumes after it.
pub fn breakpoint() {
    // SAFETY: `keel_breakpoint` only traps (the handler resumes after the
    // `ebreak`, restoring every GPR) and returns; the call clobbers `ra`,
    // covered by `clobber_abi("C")`.
    unsafe { asm!("call keel_breakpoint", clobber_abi("C")) };
}

/// Address of the `ebreak` that [`breakpoint`] executes.
pub fn breakpoint_site() -> usize {
    keel_breakpoint_site as *const () as usize
}

/// Reads the byte at `addr`. A page or access fault is caught through the
/// exception-fixup table and returned as its [`TrapRecord`].
pub fn probe_read(addr: usize) -> Result<u8, TrapRecord> {
    let (value, scause, pc): (usize, usize, usize);
    // SAFETY: the load at label 1 is listed in `__ex_table`: if it faults,
    // the trap handler resumes at label 2 with a0 = stval, a1 = scause,
    // a2 = faulting PC (see `traps`); otherwise a1 stays 0. A successful
    // load reads memory that is mapped, and a byte read has no side effect
    // the kernel relies on.
    unsafe {
        asm!(
            "li a1, 0",
            "1: lbu a0, 0(a0)",
            "2:",
            ".pushsection __ex_table, \"a\"",
            ".balign 8",
            ".dword 1b, 2b",
            ".popsection",
            inlateout("a0") addr => value,
            lateout("a1") scause,
            lateout("a2") pc,
            // No `nostack`: a fault pushes a trap frame below `sp`.
            clobber_abi("C"),
        )
    };
    let cause = traps::classify(scause, value);
    match scause {
        0 => Ok(value as u8),
        _ => Err(TrapRecord { cause, pc }),
    }
}

unsafe extern "C" {
    // The whole image (linker.ld); the kernel stacks lie inside it, in .bss.
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// Reads the frame record `(caller_fp, return_address)` below frame
/// pointer `fp`, if the kernel may read it (`mm::image_readable`: in the
/// image, which holds the kernel stacks, outside the guard pages and
/// other CPUs' stacks). The RISC-V frame layout keeps `ra` at `fp - 8` and
/// the caller's `fp` at `fp - 16`.
fn frame_record(fp: usize) -> Option<(usize, usize)> {
    let record = fp.checked_sub(16)?;
    if !mm::image_readable(record) || !mm::image_readable(fp - 8) {
        return None;
    }
    // SAFETY: `[fp - 16, fp)` lies in mapped kernel memory that stays
    // mapped for the kernel's whole life; `print_frames` only passes
    // 8-byte-aligned values.
    unsafe {
        let caller_fp = (record as *const usize).read_volatile();
        let ret = ((fp - 8) as *const usize).read_volatile();
        Some((caller_fp, ret))
    }
}

/// Prints the current call chain.
pub fn print_backtrace() {
    let fp: usize;
    // SAFETY: reads the frame-pointer register only.
    unsafe { asm!("mv {}, s0", out(reg) fp, options(nomem, nostack, preserves_flags)) };
    super::print_frames(fp, 0, frame_record);
}

crate::ktest!(
    fn probe_of_unbacked_physical_memory_reports_an_access_fault() {
        // Nothing backs physical 0x80_0000 on QEMU virt (a hole between the RTC
        // and the CLINT); OpenSBI redirects the undelegated load access fault
        // to S-mode.
        let addr = phys_to_virt(0x80_0000);
        let rec = probe_read(addr);
        crate::kassert_eq!(
            rec.map_err(|r| r.cause),
            Err(crate::trap::TrapCause::PageFault {
                addr,
                write: false,
                exec: false
            })
        );
        // Firmware memory is PMP-protected from S-mode.
        let addr = phys_to_virt(0x8000_0000);
        crate::kassert_eq!(
            probe_read(addr).map_err(|r| r.cause),
            Err(crate::trap::TrapCause::PageFault {
                addr,
                write: false,
                exec: false
            })
        );
        Ok(())
    }
);

//! The AArch64 architecture layer (QEMU `virt`; `-cpu cortex-a76` for
//! FEAT_PAN, also runs on Cortex-A72 without it, and on `max`).
//!
//! Submodules: `entry` (boot from EL2/EL1 to the higher half, device-tree
//! discovery), `exception` (vector table, trap frame, dispatcher, fixup
//! table), `gic` (interrupt controller, virtual timer, IPIs, idle loop),
//! `mm` (page-table format, TLB and translation-register operations, user
//! copies, the kernel image layout), `pl011` (console UART), `smp`
//! (starting the other CPUs), `user` (user registers, FP/SIMD state, TLS,
//! the per-CPU blocks, entry to and from EL0). This file holds the
//! remaining items of the [`crate::arch`] contract.
//!
//! Address-space invariants after boot (see `entry` and `mm`): TTBR0 holds
//! an empty table with the reserved ASID 0 until a user tree is loaded, so
//! the whole lower half faults; TTBR1 maps the first 4 GiB of physical
//! space ([`crate::mm::DIRECT_MAP_BOOT_LIMIT`]) at [`DIRECT_MAP_BASE`] (the
//! first GiB as device memory) and the kernel image at
//! [`entry::KERNEL_VIRT_BASE`] + (phys - [`entry::KERNEL_PHYS_BASE`]) section
//! by section with 4 KiB pages (text RX, rodata R, data/bss and stacks RW),
//! leaving the guards below the boot and overflow stacks unmapped, and the
//! stacks of each started CPU (`smp`) above unmapped guards; nothing else
//! is mapped.

/// The assembler macro `pairs op, base, offset, step, r0, r1, …` for the
/// `global_asm!` blocks that save and restore register files: `op r0, r1,
/// [base, #offset]`, then the next two registers at `offset + step`, and so
/// on. A block that uses it starts with `asm_pairs!()` and ends with
/// `.purgem pairs`, so each block defines it once.
macro_rules! asm_pairs {
    () => {
        r"
    .macro pairs op, base, off, step, a, b, rest:vararg
    \op     \a, \b, [\base, #(\off)]
    .ifnb \rest
    pairs   \op, \base, (\off + \step), \step, \rest
    .endif
    .endm
"
    };
}

/// Reads the system register `$reg` (`mrs`), one whose read has no side
/// effects. With `nomem`, the compiler may move memory accesses across the
/// read; without it (the counters), it may not.
macro_rules! read_sysreg {
    ($reg:literal $(, $nomem:ident)?) => {{
        let v: u64;
        // SAFETY: the macro's callers name only registers whose read has no
        // side effects.
        unsafe {
            core::arch::asm!(
                concat!("mrs {}, ", $reg),
                out(reg) v,
                options($($nomem,)? nostack, preserves_flags)
            )
        };
        v
    }};
}

mod entry;
mod exception;
mod gic;
mod mm;
mod pl011;
mod smp;
mod user;

pub use self::exception::{breakpoint, breakpoint_site, probe_read};
pub use self::gic::{
    idle, init as irq_init, line_mask as irq_mask, line_ok as irq_line_ok, send_ipi, timer_arm,
};
pub use self::mm::{
    FLUSH_NEW_ENTRIES, KERNEL_ROOT_ENTRIES, PageFormat, asid_count, device_windows, flush_all,
    flush_page, kernel_image_layout, kernel_root, kernel_virt_to_phys, load_kernel_root,
    load_user_root, max_page_size, unload_user_root,
};
pub use self::smp::cpu_start;
pub use self::user::{ELF_MACHINE, FpuState, UserRegs, cpu_index, enter_user, load_tls, save_tls};
pub use super::common::{io_ports_ok, port_io, user_copy};

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// Architecture name printed in the boot banner.
pub const NAME: &str = "aarch64";

/// Virtual address of physical address 0 in the direct map.
pub const DIRECT_MAP_BASE: usize = 0xFFFF_8000_0000_0000;

/// The direct-map virtual address of physical address `p`. Only addresses
/// below [`crate::mm::DIRECT_MAP_BOOT_LIMIT`] are mapped until the memory
/// manager maps more.
pub fn phys_to_virt(p: u64) -> usize {
    DIRECT_MAP_BASE.wrapping_add(p as usize)
}

/// The console UART: the PL011.
pub fn console_uart() -> (usize, u64) {
    (keel_abi::boot::CONSOLE_PL011, pl011::PL011_PHYS)
}

/// Polled output on the PL011 UART.
pub fn console_write(bytes: &[u8]) {
    super::write_crlf(bytes, pl011::put);
}

/// Semihosting operation SYS_EXIT_EXTENDED.
const SYS_EXIT_EXTENDED: u64 = 0x20;
/// Semihosting exit reason ADP_Stopped_ApplicationExit.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;

/// Ends the QEMU run with `status` as its exit status, through semihosting
/// (QEMU needs `-semihosting`); without it, halts.
pub fn exit(status: i32) -> ! {
    let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, status as u32 as u64];
    // SAFETY: SYS_EXIT_EXTENDED takes the address of a two-word block
    // {reason, status}, which `block` is and which outlives the call.
    unsafe { exception::semihost(SYS_EXIT_EXTENDED, block.as_ptr() as usize) };
    halt()
}

/// Masks all interrupts and stops this CPU forever.
pub fn halt() -> ! {
    // SAFETY: masking DAIF only affects this CPU's interrupt delivery.
    unsafe { asm!("msr daifset, #0xf", options(nomem, nostack)) };
    loop {
        // SAFETY: `wfi` waits for an interrupt and has no other effect.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}

/// Whether PMCCNTR_EL0 counts (the CPU has PMUv3 and it was enabled).
static PMU_CYCLES: AtomicBool = AtomicBool::new(false);

/// Enables the PMU cycle counter for EL0 and EL1 (not EL2), from zero. On a
/// CPU without PMUv3, [`cycle_counter`] falls back to the generic timer.
fn enable_cycle_counter() {
    let pmu_version = (read_sysreg!("id_aa64dfr0_el1", nomem) >> 8) & 0xf;
    if pmu_version == 0 || pmu_version == 0xf {
        return;
    }
    // PMCR_EL0: E (enable), C (reset the cycle counter), LC (64-bit
    // overflow). PMCCFILTR_EL0 = 0: count at EL0 and EL1, not at EL2.
    // PMCNTENSET_EL0 bit 31: enable the cycle counter. PMUSERENR_EL0 = 0:
    // EL0 has no access to the PMU (user code reads the counter through
    // `SystemInfo`).
    // SAFETY: PMUv3 is implemented (checked above) and EL1 owns it (the boot
    // code gave EL1 all counters when it came from EL2); these writes only
    // configure performance counting.
    unsafe {
        asm!(
            "mrs {t}, pmcr_el0",
            "mov {u}, #((1 << 0) | (1 << 2) | (1 << 6))",
            "orr {t}, {t}, {u}",
            "msr pmcr_el0, {t}",
            "msr pmccfiltr_el0, xzr",
            "mov {t}, #(1 << 31)",
            "msr pmcntenset_el0, {t}",
            "msr pmuserenr_el0, xzr",
            "isb",
            t = out(reg) _,
            u = out(reg) _,
            options(nomem, nostack),
        );
    }
    PMU_CYCLES.store(true, Ordering::Relaxed);
}

/// The clock counter: the virtual count (CNTVCT_EL0).
pub fn clock_ticks() -> u64 {
    let v: u64;
    // SAFETY: CNTVCT_EL0 is readable at EL1 (CNTHCTL_EL2 set at boot).
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) v, options(nostack, preserves_flags)) };
    v
}

/// The clock's rate: CNTFRQ_EL0, which firmware sets (0 if it did not).
pub fn clock_hz(_info: &crate::bootinfo::BootInfo<'_>) -> Option<u64> {
    Some(read_sysreg!("cntfrq_el0", nomem)).filter(|&hz| hz != 0)
}

/// The PMU cycle counter (PMCCNTR_EL0), which QEMU advances once per guest
/// instruction under `-icount shift=0`; the generic-timer count on CPUs
/// without a PMU.
#[inline]
pub fn cycle_counter() -> u64 {
    // The cycle counter is enabled at boot if there is one; CNTVCT_EL0 is
    // readable at EL1 (CNTHCTL_EL2 set at boot).
    if PMU_CYCLES.load(Ordering::Relaxed) {
        read_sysreg!("pmccntr_el0")
    } else {
        read_sysreg!("cntvct_el0")
    }
}

/// This CPU's MPIDR_EL1 affinity fields (Aff3, Aff2, Aff1, Aff0), as the
/// device tree's `/cpus` `reg` gives them.
pub fn cpu_hw_id() -> u64 {
    read_sysreg!("mpidr_el1", nomem) & 0xff_00ff_ffff
}

/// Whether `addr` lies in the unmapped guard below a kernel or overflow
/// stack of any CPU.
pub fn in_stack_guard(addr: usize) -> bool {
    entry::stacks().any(|(guard, _)| guard.contains(&addr))
}

/// Reads the frame record `{caller x29, return address}` at `fp`, if it lies
/// inside one mapped part of the kernel image (data) or one stack.
fn read_frame_record(fp: usize) -> Option<(usize, usize)> {
    let end = fp.checked_add(16)?;
    let mapped = (entry::image_sections().into_iter().map(|(r, _)| r))
        .chain(entry::stacks().map(|(_, s)| s))
        .any(|r| r.start <= fp && end <= r.end);
    if !mapped || !fp.is_multiple_of(8) {
        return None;
    }
    let p = fp as *const usize;
    // SAFETY: `fp..fp + 16` is 8-aligned and inside one part of the kernel
    // image or one stack, which the kernel page tables map readable for the
    // whole run.
    Some(unsafe { (p.read_volatile(), p.add(1).read_volatile()) })
}

/// Prints the current call chain (frame-pointer walk).
#[inline(never)]
pub fn print_backtrace() {
    let fp: usize;
    // SAFETY: reads x29, the frame pointer (kept by `force-frame-pointers`).
    unsafe { asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags)) };
    super::print_frames(fp, 0, read_frame_record);
}

crate::ktest!(
    fn overflow_stack_guard_and_guard_bits() {
        const STACK_SIZE: usize = 1 << entry::KERNEL_STACK_SHIFT;
        let boot = entry::boot_stack();
        crate::kassert_eq!(boot.len(), STACK_SIZE);
        let sp: usize;
        // SAFETY: reads SP; no side effects.
        unsafe { asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
        crate::kassert!(boot.contains(&sp), "sp {:#x} not in {:#x?}", sp, boot);
        // The running (boot) stack's guard is checked on every architecture
        // (`arch::tests`); here the overflow stack's.
        let stack = entry::overflow_stack();
        let guard = stack.start - 8;
        let rec = probe_read(guard);
        crate::kassert!(
            matches!(rec, Err(crate::trap::TrapRecord {
                cause: crate::trap::TrapCause::PageFault { addr, write: false, exec: false },
                ..
            }) if addr == guard),
            "probe of guard {:#x} gave {:?}",
            guard,
            rec
        );
        crate::kassert!(in_stack_guard(guard));
        crate::kassert!(!in_stack_guard(stack.start));
        crate::kassert!(probe_read(stack.start).is_ok());
        crate::kassert!(probe_read(stack.end - 1).is_ok());
        // The whole 64 KiB below the boot stack is unmapped, and the vector
        // entry's guard bit is set there and clear on both stacks.
        let guard = entry::boot_stack().start - STACK_SIZE;
        crate::kassert!(probe_read(guard).is_err() && in_stack_guard(guard));
        crate::kassert!(guard & STACK_SIZE != 0);
        crate::kassert!(entry::boot_stack().start & STACK_SIZE == 0);
        crate::kassert!((entry::boot_stack().end - 1) & STACK_SIZE == 0);
        crate::kassert!(entry::overflow_stack().start & STACK_SIZE == 0);
        crate::kassert!((entry::overflow_stack().end - 1) & STACK_SIZE == 0);
        Ok(())
    }
);

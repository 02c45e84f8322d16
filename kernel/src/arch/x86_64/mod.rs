//! The x86_64 architecture layer: Multiboot entry and the 32→64-bit
//! trampoline (`boot`), GDT/TSS (`cpu`), IDT and trap dispatch (`trap`),
//! paging hardware and TLB control (`mm`), user-memory copies
//! (`usercopy`), user mode: `syscall` entry, return to ring 3, saved
//! registers and FP state (`user`), the COM1 console (`serial`) and the
//! CPU count and NUMA map from ACPI (`acpi`), interrupts, the timer,
//! IPIs and the idle loop (`apic`), starting the other CPUs (`smp`).
//!
//! Memory layout kept by this module (48-bit virtual addresses):
//! - physical `P` in the first [`BOOT_DIRECT_MAP_SIZE`] bytes is mapped
//!   read/write, no-execute at [`DIRECT_MAP_BASE`]` + P`;
//! - the kernel image, loaded at physical 1 MiB, runs at
//!   [`KERNEL_VMA_OFFSET`]` + P` with `.text` read/execute, `.rodata`
//!   read-only and `.data`/`.bss` read/write no-execute, except the guard
//!   page under each kernel stack (every CPU's kernel, double-fault and
//!   NMI stacks), which stays unmapped (and each other CPU's stacks until
//!   it is started);
//! - nothing else is mapped in the kernel half; the lower half is empty
//!   once the boot trampoline has left its identity mapping, and belongs
//!   to the user address space loaded later.
//!
//! Interrupts stay masked in the kernel (it is not preemptible) except in
//! the idle loop (`apic`); exceptions arrive through the IDT set up before
//! any Rust code beyond the entry runs. Each CPU has its own GDT, TSS,
//! stacks and per-CPU block (GS base); [`cpu_index`] reads the block. User code runs with interrupts
//! enabled: the local APIC's one-shot timer and device lines (`apic`; the
//! legacy PICs are masked).

/// The three descriptors both start-up trampolines load (the boot one
/// and the other CPUs' one, which is copied below 1 MiB and so cannot use
/// the boot one's): null, 64-bit ring-0 code at 0x08, ring-0 data at 0x10,
/// accessed bits preset so the CPU never writes them.
macro_rules! trampoline_gdt {
    () => {
        ".quad 0\n.quad 0x00AF9B000000FFFF\n.quad 0x00CF93000000FFFF"
    };
}

mod acpi;
mod apic;
mod boot;
mod cpu;
mod mm;
mod serial;
mod smp;
mod trap;
mod user;
mod usercopy;

pub use super::common::user_copy;
pub use apic::{
    cpu_hw_id, idle, init as irq_init, io_ports_ok, line_mask as irq_mask, line_ok as irq_line_ok,
    port_io, send_ipi, timer_arm,
};
pub use mm::{
    FLUSH_NEW_ENTRIES, KERNEL_ROOT_ENTRIES, PageFormat, asid_count, device_windows, flush_all,
    flush_page, kernel_image_layout, kernel_root, kernel_virt_to_phys, load_kernel_root,
    load_user_root, max_page_size, unload_user_root,
};
pub use smp::cpu_start;
pub use trap::print_backtrace;
pub use user::{ELF_MACHINE, FpuState, UserRegs, cpu_index, enter_user, load_tls, save_tls};

/// Architecture name printed in the boot banner.
pub const NAME: &str = "x86_64";

/// Virtual address of physical address 0 in the direct map.
pub const DIRECT_MAP_BASE: usize = 0xffff_8000_0000_0000;
/// How much physical address space the boot page tables direct-map.
pub const BOOT_DIRECT_MAP_SIZE: u64 = 4 << 30;
/// Virtual minus physical address of the kernel image.
pub const KERNEL_VMA_OFFSET: usize = 0xffff_ffff_8000_0000;
/// Physical address the kernel image is linked to be loaded at.
pub const KERNEL_LOAD_PHYS: u64 = 0x10_0000;

/// The direct-map address of physical address `p` (meaningful for
/// `p < BOOT_DIRECT_MAP_SIZE` until the memory manager maps more).
pub const fn phys_to_virt(p: u64) -> usize {
    DIRECT_MAP_BASE + p as usize
}

/// The console UART: a 16550 at I/O port 0x3f8 (COM1).
pub fn console_uart() -> (usize, u64) {
    (keel_abi::boot::CONSOLE_NS16550_PORT, serial::COM1.into())
}

/// Writes bytes to the serial console (polled).
pub fn console_write(bytes: &[u8]) {
    super::write_crlf(bytes, serial::put);
}

/// I/O port of QEMU's `isa-debug-exit` device
/// (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Makes QEMU exit with `status` (odd: the device exits with
/// `(value << 1) | 1`); halts if the device is absent.
pub fn exit(status: i32) -> ! {
    let value = (status as u32).wrapping_sub(1) / 2;
    let mut port = x86_64::instructions::port::Port::<u32>::new(DEBUG_EXIT_PORT);
    // SAFETY: port 0xf4 is QEMU's debug-exit device, or unused on other
    // machines; a write has no effect on memory.
    unsafe { port.write(value) };
    halt()
}

/// Masks interrupts and stops this CPU forever.
pub fn halt() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops the CPU; nothing wakes it but an
        // NMI, after which the loop halts again.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// The clock counter: the TSC (invariant on the CPUs Keel targets, and in
/// QEMU).
pub fn clock_ticks() -> u64 {
    cycle_counter()
}

/// The TSC's rate: CPUID leaf 0x15 (crystal clock and TSC ratio) or 0x16
/// (base frequency) where the CPU reports them, else measured against the
/// PIT (channel 2, gated through port 0x61, ~10 ms; the PIT is unused
/// otherwise and left stopped).
pub fn clock_hz(_info: &crate::bootinfo::BootInfo<'_>) -> Option<u64> {
    let max = core::arch::x86_64::__cpuid(0).eax;
    if max >= 0x15 {
        let l = core::arch::x86_64::__cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax));
        }
    }
    if max >= 0x16 {
        let mhz = core::arch::x86_64::__cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    pit_measure()
}

/// Counts TSC ticks over 11,932 PIT ticks (10.0 ms at 1,193,182 Hz).
fn pit_measure() -> Option<u64> {
    use x86_64::instructions::port::Port;
    const PIT_HZ: u64 = 1_193_182;
    const COUNT: u16 = 11_932;
    let [mut gate, mut mode, mut ch2] = [0x61, 0x43, 0x42].map(Port::<u8>::new);
    // SAFETY: ports 0x61 (speaker/gate), 0x43 (PIT mode) and 0x42 (PIT
    // channel 2) belong to the PIT, which nothing else uses; the speaker
    // output stays off.
    unsafe {
        let g = gate.read();
        gate.write((g & !0x02) | 0x01);
        mode.write(0b1011_0000); // channel 2, lo/hi byte, mode 0, binary
        ch2.write((COUNT & 0xff) as u8);
        ch2.write((COUNT >> 8) as u8);
        let start = cycle_counter();
        // OUT2 (bit 5) rises when the count reaches zero.
        let risen = (0..100_000_000).any(|_| gate.read() & 0x20 != 0);
        let ticks = cycle_counter().wrapping_sub(start);
        gate.write(g);
        risen.then(|| ticks * PIT_HZ / u64::from(COUNT))
    }
}

/// The time-stamp counter: once per guest instruction under QEMU
/// `-icount shift=0`.
#[inline]
pub fn cycle_counter() -> u64 {
    // SAFETY: rdtsc only reads the TSC (CR4.TSD is clear, and we are at
    // CPL 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

unsafe extern "C" {
    /// `int3; ret` (in `trap.rs`'s assembly).
    fn keel_breakpoint();
    /// The `int3` instruction inside `keel_breakpoint`.
    static keel_breakpoint_site: u8;
    /// Returns the byte at `addr` zero-extended, or `u64::MAX` if reading
    /// it faulted (the load is listed in the exception-fixup table).
    fn keel_probe_read(addr: usize) -> u64;
}

/// Executes `int3` at [`breakpoint_site`]; the trap handler records it and
/// resumes after it.
pub fn breakpoint() {
    // SAFETY: `keel_breakpoint` clobbers nothing (it is `int3; ret`, and
    // the #BP handler preserves every register) and follows the C ABI.
    unsafe { keel_breakpoint() }
}

/// The address of the `int3` that [`breakpoint`] executes.
pub fn breakpoint_site() -> usize {
    (&raw const keel_breakpoint_site) as usize
}

/// Whether `addr` is in the unmapped guard page under one of the kernel
/// stacks (every CPU's kernel, double-fault and NMI stacks).
pub fn in_stack_guard(addr: usize) -> bool {
    boot::kernel_stacks().any(|s| (s.guard..s.bottom).contains(&addr))
}

/// Reads the byte at `addr`; a fault is recorded and returned instead of
/// crashing the kernel.
pub fn probe_read(addr: usize) -> Result<u8, crate::trap::TrapRecord> {
    // SAFETY: the routine's only load is listed in the exception-fixup
    // table, so any fault on it resumes at the fixup, which returns
    // u64::MAX; it follows the C ABI.
    let value = unsafe { keel_probe_read(addr) };
    // On a fault the trap handler recorded it before resuming at the fixup.
    u8::try_from(value).map_err(|_| trap::last_fixup())
}

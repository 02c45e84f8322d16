//! Interrupts on x86_64: the legacy PICs remapped out of the exception
//! vectors and masked, the local APICs (xAPIC registers, found from the
//! MADT, mapped uncached through the direct map; every CPU sees its own
//! at the same address) with their timers in one-shot mode, calibrated
//! once against the clock (the TSC), IPIs, and the idle loop.
//!
//! Device lines (GSIs) go through the I/O APICs the MADT lists, each
//! redirection entry masked until user space claims and acknowledges the
//! line, and routed to the boot CPU; the kernel masks a line when it fires
//! (so a level-triggered one does not fire again before its driver has
//! served the device).
//!
//! Vectors: 32 the timer, [`VEC_LINE_BASE`]` + n` device line (GSI) `n`
//! (below [`VEC_IPI`]), [`VEC_IPI`] the inter-processor interrupt, 255
//! the APIC's spurious vector (never acknowledged). The timer's count
//! is relative, so [`timer_arm`] converts the absolute TSC deadline with
//! the measured ratio; a deadline past what the 32-bit count reaches fires
//! early and the portable side simply re-arms.

use super::{clock_ticks, phys_to_virt};
use crate::bootinfo::{BootInfo, Controller, Line, MAX_CPUS, Trigger};
use crate::mm::kref::ensure;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use x86_64::instructions::port::Port;

/// The timer's vector.
pub const VEC_TIMER: u64 = 32;
/// Device line (GSI) `n` arrives on vector `VEC_LINE_BASE + n`.
pub const VEC_LINE_BASE: u64 = 48;
/// The inter-processor interrupt's vector.
pub const VEC_IPI: u64 = 0xf0;
/// The APIC's spurious-interrupt vector.
pub const VEC_SPURIOUS: u64 = 255;

const REG_ID: usize = 0x20;
const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_ICR_LOW: usize = 0x300;
const REG_ICR_HIGH: usize = 0x310;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_ERROR: usize = 0x370;
const REG_TIMER_INIT: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// ICR: INIT and STARTUP delivery modes, send pending, level assert.
const ICR_INIT: u32 = 5 << 8;
const ICR_STARTUP: u32 = 6 << 8;
const ICR_PENDING: u32 = 1 << 12;
const ICR_ASSERT: u32 = 1 << 14;
/// Divide configuration 0b1011: count at the full APIC timer rate.
const DIVIDE_BY_1: u32 = 0b1011;

/// GSIs with a vector (`VEC_LINE_BASE + gsi < VEC_IPI`).
const MAX_GSI: u32 = (VEC_IPI - VEC_LINE_BASE) as u32;

/// An I/O APIC: direct-map address of its window (0: none), first GSI,
/// number of redirection entries.
struct IoApic {
    base: AtomicUsize,
    gsi_base: AtomicU32,
    count: AtomicU32,
}

static IOAPICS: [IoApic; 4] = [const {
    IoApic {
        base: AtomicUsize::new(0),
        gsi_base: AtomicU32::new(0),
        count: AtomicU32::new(0),
    }
}; 4];
/// The console UART's line as the firmware describes it (GSI, level,
/// active low), packed; `u32::MAX`: none.
static UART_LINE: AtomicU32 = AtomicU32::new(u32::MAX);

/// Direct-map address of the local APIC's registers (0: not set up).
static LAPIC: AtomicUsize = AtomicUsize::new(0);
/// APIC timer counts per TSC tick, 32.32 fixed point.
static COUNTS_PER_TICK: AtomicU64 = AtomicU64::new(0);
/// The local APIC id of each CPU index ([`NO_CPU`]: none).
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_CPU) }; MAX_CPUS];
const NO_CPU: u32 = u32::MAX;

fn read(reg: usize) -> u32 {
    let base = LAPIC.load(Ordering::Relaxed);
    // SAFETY: `base` is the direct-map address of the local APIC's
    // register page, mapped as device memory by the kernel page tables
    // (it is one of `BootInfo::irq`'s windows); `reg` is a register
    // offset inside it, 16-byte aligned.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    let base = LAPIC.load(Ordering::Relaxed);
    // SAFETY: as in `read`; writing these registers affects only the
    // interrupt hardware of this CPU.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) }
}

/// Remaps the legacy PICs to vectors 32–47 (so a stray one is never taken
/// for an exception) and masks every line.
fn mask_pics() {
    for (port, base, cascade) in [(0x20, 32, 4), (0xa0, 40, 2)] {
        let (mut cmd, mut data) = (Port::<u8>::new(port), Port::<u8>::new(port + 1));
        // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the two 8259 PICs; the
        // ICW1–4 sequence reprograms their vector bases, then all lines are
        // masked. Only interrupt delivery changes.
        unsafe {
            cmd.write(0x11);
            data.write(base);
            data.write(cascade);
            data.write(0x01);
            data.write(0xff);
        }
    }
}

/// Reads I/O APIC register `reg` through the window at `base`.
fn ioapic_read(base: usize, reg: u32) -> u32 {
    // SAFETY: `base` is the direct-map address of an I/O APIC window the
    // MADT names, mapped as device memory (one of `BootInfo::irq`'s
    // windows); IOREGSEL (+0) selects the register IOWIN (+0x10) reads.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::read_volatile((base + 0x10) as *const u32)
    }
}

fn ioapic_write(base: usize, reg: u32, value: u32) {
    // SAFETY: as in `ioapic_read`; redirection entries only route
    // interrupts.
    unsafe {
        core::ptr::write_volatile(base as *mut u32, reg);
        core::ptr::write_volatile((base + 0x10) as *mut u32, value);
    }
}

/// The I/O APIC window and entry index serving `gsi`.
fn ioapic_of(gsi: u32) -> Option<(usize, u32)> {
    IOAPICS.iter().find_map(|io| {
        let base = io.base.load(Ordering::Relaxed);
        let n = gsi.checked_sub(io.gsi_base.load(Ordering::Relaxed))?;
        (base != 0 && n < io.count.load(Ordering::Relaxed)).then_some((base, n))
    })
}

/// How `gsi` signals: as the firmware says for the UART's, else ISA
/// (below 16: edge, active high) or PCI (level, active low).
fn trigger_of(gsi: u32) -> Trigger {
    let uart = UART_LINE.load(Ordering::Relaxed);
    let (level, active_low) = if uart != u32::MAX && uart & 0xffff == gsi {
        (uart & (1 << 16) != 0, uart & (1 << 17) != 0)
    } else {
        (gsi >= 16, gsi >= 16)
    };
    Trigger { level, active_low }
}

/// Whether user space may claim device line `gsi`: any an I/O APIC
/// serves, but GSI 0 (the legacy PICs' input) and 2 (the PIT's, ISA IRQ
/// 0 on PCs).
pub fn line_ok(gsi: u32) -> bool {
    gsi < MAX_GSI && gsi != 0 && gsi != 2 && ioapic_of(gsi).is_some()
}

/// Masks (`true`) or routes to the boot CPU, unmasked, device line `gsi`.
pub fn line_mask(gsi: u32, masked: bool) {
    let Some((base, n)) = ioapic_of(gsi).filter(|_| gsi < MAX_GSI) else {
        return;
    };
    let t = trigger_of(gsi);
    let low = (VEC_LINE_BASE as u32 + gsi)
        | (u32::from(t.active_low) << 13)
        | (u32::from(t.level) << 15)
        | (u32::from(masked) << 16);
    // Destination: the boot CPU's local APIC (physical mode).
    let boot_cpu = APIC_IDS[0].load(Ordering::Relaxed);
    ioapic_write(base, 0x11 + 2 * n, boot_cpu << 24);
    ioapic_write(base, 0x10 + 2 * n, low);
}

/// Finds the I/O APICs and masks every redirection entry.
fn init_ioapics(info: &BootInfo<'_>) {
    let Some(Controller::Apic { ioapics, .. }) = &info.irq.controller else {
        return;
    };
    for (slot, io) in IOAPICS.iter().zip(ioapics) {
        let base = phys_to_virt(io.base);
        let count = ((ioapic_read(base, 1) >> 16) & 0xff) + 1;
        slot.base.store(base, Ordering::Relaxed);
        slot.gsi_base.store(io.gsi_base, Ordering::Relaxed);
        slot.count.store(count, Ordering::Relaxed);
        for n in 0..count {
            ioapic_write(base, 0x10 + 2 * n, 1 << 16);
        }
    }
    if let Some(Line { number, trigger }) = info.irq.uart.filter(|l| l.number <= 0xffff) {
        let packed =
            number | (u32::from(trigger.level) << 16) | (u32::from(trigger.active_low) << 17);
        UART_LINE.store(packed, Ordering::Relaxed);
    }
}

/// Sets up interrupts on the boot CPU: PICs masked, the I/O APICs' lines
/// masked, the local APIC enabled with its timer stopped ([`init_local`]),
/// the timer calibrated.
pub fn init(info: &BootInfo<'_>) -> Result<(), &'static str> {
    mask_pics();
    let Some(Controller::Apic { lapic: phys, .. }) = info.irq.controller else {
        return Err("the ACPI MADT describes no local APIC");
    };
    init_ioapics(info);
    let (_, msr) = x86_64::registers::model_specific::ApicBase::read_raw();
    let enabled = msr & (1 << 11) != 0;
    ensure(enabled, "the local APIC is disabled (IA32_APIC_BASE)")?;
    LAPIC.store(phys_to_virt(phys), Ordering::Relaxed);
    init_local();
    APIC_IDS[0].store(cpu_hw_id() as u32, Ordering::Relaxed);
    // Calibrate: count down from the top for 1 ms of the clock.
    if crate::time::hz() == 0 {
        return Err("no clock rate to calibrate the APIC timer against");
    }
    write(REG_TIMER_INIT, u32::MAX);
    let start = clock_ticks();
    delay_us(1000);
    let counted = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
    let ticks = clock_ticks().wrapping_sub(start).max(1);
    write(REG_TIMER_INIT, 0);
    ensure(counted != 0, "the APIC timer does not count")?;
    COUNTS_PER_TICK.store((counted << 32) / ticks, Ordering::Relaxed);
    let mhz = counted / 1000;
    log::info!("interrupts: local APIC at {phys:#x}, timer {mhz} MHz");
    Ok(())
}

/// Enables this CPU's local APIC: the spurious vector, every priority
/// accepted (TPR 0), the error interrupt masked, the timer one-shot at
/// the full rate, masked and stopped. IPIs can arrive from here on.
pub fn init_local() {
    write(REG_SVR, SVR_ENABLE | VEC_SPURIOUS as u32);
    write(REG_TPR, 0);
    write(REG_LVT_ERROR, LVT_MASKED);
    write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
    write(REG_LVT_TIMER, LVT_MASKED | VEC_TIMER as u32);
    write(REG_TIMER_INIT, 0);
}

/// Spins for `us` microseconds of the clock.
fn delay_us(us: u64) {
    let (start, ticks) = (clock_ticks(), crate::time::hz() * us / 1_000_000);
    while clock_ticks().wrapping_sub(start) < ticks {
        core::hint::spin_loop();
    }
}

/// This CPU's local APIC id (the MADT's name for it). After [`init`].
pub fn cpu_hw_id() -> u64 {
    u64::from(read(REG_ID) >> 24)
}

/// Sends the interrupt command `low` to the local APIC `apic_id`
/// (physical destination); whether the APIC took it (not still pending
/// after a while).
fn send(apic_id: u32, low: u32) -> bool {
    // What this CPU wrote before reaches the target first: x86 keeps
    // stores in order, the uncached ICR write included, and the fence
    // keeps the compiler from moving them after it.
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    write(REG_ICR_HIGH, apic_id << 24);
    write(REG_ICR_LOW, low);
    (0..1_000_000).any(|_| read(REG_ICR_LOW) & ICR_PENDING == 0)
}

/// Interrupts CPU `index` with [`VEC_IPI`] (nothing if it was never
/// started).
pub fn send_ipi(index: usize) {
    let id = APIC_IDS.get(index).map(|id| id.load(Ordering::Relaxed));
    if let Some(id) = id.filter(|&id| id != NO_CPU) {
        send(id, ICR_ASSERT | VEC_IPI as u32);
    }
}

/// Starts the CPU whose local APIC id is `apic_id` as CPU `index` at the
/// real-mode code in the page at `page` (below 1 MiB): INIT, 10 ms,
/// STARTUP, 200 µs, STARTUP, as Intel's MP specification says. Does not
/// wait for the CPU; `Err` if the local APIC does not take a command.
pub fn start_cpu(index: usize, apic_id: u32, page: u64) -> Result<(), &'static str> {
    APIC_IDS[index].store(apic_id, Ordering::Relaxed);
    let startup = ICR_STARTUP | ICR_ASSERT | (page >> 12) as u32;
    let init = ICR_INIT | ICR_ASSERT;
    // Each command after the delay in microseconds.
    for (delay, low) in [(0, init), (10_000, startup), (200, startup)] {
        delay_us(delay);
        if !send(apic_id, low) {
            return Err("the local APIC did not take INIT-SIPI-SIPI");
        }
    }
    Ok(())
}

/// Arms the timer to fire once at clock tick `deadline`, or stops it.
pub fn timer_arm(deadline: Option<u64>) {
    let Some(deadline) = deadline else {
        write(REG_TIMER_INIT, 0);
        return;
    };
    let delta = deadline.saturating_sub(clock_ticks());
    let counts = (u128::from(delta) * u128::from(COUNTS_PER_TICK.load(Ordering::Relaxed))) >> 32;
    let counts = u32::try_from(counts).unwrap_or(u32::MAX).max(1);
    write(REG_LVT_TIMER, VEC_TIMER as u32);
    write(REG_TIMER_INIT, counts);
}

/// Signals the end of the interrupt being handled.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// What an interrupt vector means, after acknowledging it (a device line
/// masked first); `None`: spurious, to be ignored.
pub fn interrupt(vector: u64) -> Option<crate::trap::Interrupt> {
    use crate::trap::Interrupt;
    let irq = match vector {
        VEC_SPURIOUS => return None,
        VEC_TIMER => Interrupt::Timer,
        VEC_IPI => Interrupt::Ipi,
        v if (VEC_LINE_BASE..VEC_IPI).contains(&v) => {
            let gsi = (v - VEC_LINE_BASE) as u32;
            line_mask(gsi, true);
            Interrupt::Line(gsi)
        }
        // A legacy PIC vector (masked, but one may have been in flight).
        _ => return None,
    };
    eoi();
    Some(irq)
}

/// Ports the kernel drives: the PICs, the PIT and its gate, QEMU's exit
/// device.
const KERNEL_PORTS: [(u32, u32); 5] = [(0x20, 2), (0xa0, 2), (0x40, 4), (0x61, 1), (0xf4, 4)];

/// Whether a driver may have ports `[base, base + count)`.
pub fn io_ports_ok(base: u32, count: u32) -> Result<(), keel_abi::Error> {
    match base
        .checked_add(count)
        .filter(|&e| count > 0 && e <= 0x1_0000)
    {
        Some(end) if !KERNEL_PORTS.iter().any(|&(s, n)| base < s + n && s < end) => Ok(()),
        _ => Err(keel_abi::Error::InvalidArgument),
    }
}

/// Reads (`value` `None`) or writes `width` (1, 2 or 4) bytes at I/O
/// port `port`; the value read, or 0 after a write (`None`: bad width).
pub fn port_io(port: u16, width: u8, value: Option<u32>) -> Option<u32> {
    // SAFETY: the caller (the system-call decoder) checked that the port
    // range belongs to the calling driver's I/O-port capability, whose
    // ranges exclude the ports the kernel drives; port I/O touches no
    // kernel memory. The truncating casts keep the width's low bytes.
    unsafe {
        match (width, value) {
            (1, Some(v)) => Port::<u8>::new(port).write(v as u8),
            (2, Some(v)) => Port::<u16>::new(port).write(v as u16),
            (4, Some(v)) => Port::<u32>::new(port).write(v),
            (1, None) => return Some(u32::from(Port::<u8>::new(port).read())),
            (2, None) => return Some(u32::from(Port::<u16>::new(port).read())),
            (4, None) => return Some(Port::<u32>::new(port).read()),
            _ => return None,
        }
    }
    Some(0)
}

/// Waits for interrupts forever on this CPU's fresh kernel stack, with interrupts
/// enabled; each one is handled (`trap`) and leaves through `enter_user`
/// or another `idle`, never returning here.
pub fn idle() -> ! {
    // SAFETY: switches to the top of this CPU's kernel stack (nothing on
    // the old one is used again: this never returns) and halts with
    // interrupts enabled; `sti; hlt` cannot lose a wake-up (the
    // instruction after `sti` runs before any interrupt). An interrupt
    // taken here is handled by `trap::keel_trap_dispatch`, which never
    // returns into this loop except for spurious vectors.
    unsafe {
        core::arch::asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "2:",
            "sti",
            "hlt",
            "jmp 2b",
            top = in(reg) super::user::kernel_stack_top(),
            options(noreturn)
        )
    }
}

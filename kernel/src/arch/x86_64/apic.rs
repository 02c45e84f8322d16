//! Interrupts on x86_64: the legacy PICs remapped out of the exception
//! vectors and masked, the local APIC (xAPIC registers, found from the
//! MADT, mapped uncached through the direct map) with its timer in one-shot
//! mode, calibrated against the clock (the TSC), and the idle loop.
//!
//! Device lines (GSIs) go through the I/O APICs the MADT lists, each
//! redirection entry masked until user space claims and acknowledges the
//! line; the kernel masks a line when it fires (so a level-triggered one
//! does not fire again before its driver has served the device).
//!
//! Vectors: 32 the timer, [`VEC_LINE_BASE`]` + n` device line (GSI) `n`,
//! 255 the APIC's spurious vector (never acknowledged). The timer's count
//! is relative, so [`timer_arm`] converts the absolute TSC deadline with
//! the measured ratio; a deadline past what the 32-bit count reaches fires
//! early and the portable side simply re-arms.

use super::{clock_ticks, phys_to_virt};
use crate::bootinfo::{BootInfo, Controller, Line, Trigger};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use x86_64::instructions::port::Port;

/// The timer's vector.
pub const VEC_TIMER: u64 = 32;
/// Device line (GSI) `n` arrives on vector `VEC_LINE_BASE + n`.
pub const VEC_LINE_BASE: u64 = 48;
/// The APIC's spurious-interrupt vector.
pub const VEC_SPURIOUS: u64 = 255;

const REG_TPR: usize = 0x80;
const REG_EOI: usize = 0xb0;
const REG_SVR: usize = 0xf0;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_ERROR: usize = 0x370;
const REG_TIMER_INIT: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3e0;
const SVR_ENABLE: u32 = 1 << 8;
const LVT_MASKED: u32 = 1 << 16;
/// Divide configuration 0b1011: count at the full APIC timer rate.
const DIVIDE_BY_1: u32 = 0b1011;
const MSR_APIC_BASE: u32 = 0x1b;

/// GSIs with a vector (`VEC_LINE_BASE + gsi < VEC_SPURIOUS`).
const MAX_GSI: u32 = (VEC_SPURIOUS - VEC_LINE_BASE) as u32;

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
    let (mut c1, mut d1, mut c2, mut d2) = (
        Port::<u8>::new(0x20),
        Port::<u8>::new(0x21),
        Port::<u8>::new(0xa0),
        Port::<u8>::new(0xa1),
    );
    // SAFETY: ports 0x20/0x21/0xa0/0xa1 are the two 8259 PICs; the ICW1–4
    // sequence reprograms their vector bases, then all lines are masked.
    // Only interrupt delivery changes.
    unsafe {
        for (cmd, data, base, cascade) in [(&mut c1, &mut d1, 32, 4), (&mut c2, &mut d2, 40, 2)] {
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
        let (base, first) = (
            io.base.load(Ordering::Relaxed),
            io.gsi_base.load(Ordering::Relaxed),
        );
        let n = gsi.checked_sub(first)?;
        (base != 0 && n < io.count.load(Ordering::Relaxed)).then_some((base, n))
    })
}

/// How `gsi` signals: as the firmware says for the UART's, else ISA
/// (below 16: edge, active high) or PCI (level, active low).
fn trigger_of(gsi: u32) -> Trigger {
    let uart = UART_LINE.load(Ordering::Relaxed);
    if uart != u32::MAX && uart & 0xffff == gsi {
        return Trigger {
            level: uart & (1 << 16) != 0,
            active_low: uart & (1 << 17) != 0,
        };
    }
    let pci = gsi >= 16;
    Trigger {
        level: pci,
        active_low: pci,
    }
}

/// Whether user space may claim device line `gsi`: any an I/O APIC
/// serves, but GSI 0 (the legacy PICs' input) and 2 (the PIT's, ISA IRQ
/// 0 on PCs).
pub fn line_ok(gsi: u32) -> bool {
    gsi < MAX_GSI && gsi != 0 && gsi != 2 && ioapic_of(gsi).is_some()
}

/// Masks (`true`) or routes to this CPU, unmasked, device line `gsi`.
pub fn line_mask(gsi: u32, masked: bool) {
    let Some((base, n)) = ioapic_of(gsi).filter(|_| gsi < MAX_GSI) else {
        return;
    };
    let t = trigger_of(gsi);
    let low = (VEC_LINE_BASE as u32 + gsi)
        | (u32::from(t.active_low) << 13)
        | (u32::from(t.level) << 15)
        | (u32::from(masked) << 16);
    // Destination: the boot CPU's local APIC (ID 0, physical mode).
    ioapic_write(base, 0x11 + 2 * n, 0);
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
/// masked, the local APIC enabled with its timer stopped, the timer
/// calibrated.
pub fn init(info: &BootInfo<'_>) -> Result<(), &'static str> {
    mask_pics();
    let phys = match &info.irq.controller {
        Some(Controller::Apic { lapic, .. }) => *lapic,
        _ => return Err("the ACPI MADT describes no local APIC"),
    };
    init_ioapics(info);
    // SAFETY: reading IA32_APIC_BASE has no side effects.
    let msr = unsafe { x86_64::registers::model_specific::Msr::new(MSR_APIC_BASE).read() };
    if msr & (1 << 11) == 0 {
        return Err("the local APIC is disabled (IA32_APIC_BASE)");
    }
    LAPIC.store(phys_to_virt(phys), Ordering::Relaxed);
    write(REG_SVR, SVR_ENABLE | VEC_SPURIOUS as u32);
    write(REG_TPR, 0);
    write(REG_LVT_ERROR, LVT_MASKED);
    write(REG_TIMER_DIVIDE, DIVIDE_BY_1);
    write(REG_LVT_TIMER, LVT_MASKED | VEC_TIMER as u32);
    // Calibrate: count down from the top for 1 ms of the clock.
    let hz = crate::time::hz();
    if hz == 0 {
        return Err("no clock rate to calibrate the APIC timer against");
    }
    write(REG_TIMER_INIT, u32::MAX);
    let start = clock_ticks();
    while clock_ticks().wrapping_sub(start) < hz / 1000 {
        core::hint::spin_loop();
    }
    let counted = u64::from(u32::MAX - read(REG_TIMER_CURRENT));
    let ticks = clock_ticks().wrapping_sub(start).max(1);
    write(REG_TIMER_INIT, 0);
    if counted == 0 {
        return Err("the APIC timer does not count");
    }
    COUNTS_PER_TICK.store((counted << 32) / ticks, Ordering::Relaxed);
    log::info!(
        "interrupts: local APIC at {phys:#x}, timer {} MHz",
        counted / 1000
    );
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
        v if v >= VEC_LINE_BASE => {
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
    let end = base
        .checked_add(count)
        .filter(|&e| count > 0 && e <= 0x1_0000);
    match end {
        Some(end) if !KERNEL_PORTS.iter().any(|&(s, n)| base < s + n && s < end) => Ok(()),
        _ => Err(keel_abi::Error::InvalidArgument),
    }
}

/// Reads (`value` `None`) or writes `width` (1, 2 or 4) bytes at I/O
/// port `port`; the value read, or 0 after a write (`None`: bad width).
pub fn port_io(port: u16, width: u8, value: Option<u32>) -> Option<u32> {
    use x86_64::instructions::port::Port;
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

/// Waits for interrupts forever on a fresh kernel stack, with interrupts
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

//! Interrupts on AArch64: the GIC (v2 through its memory-mapped CPU
//! interface, v3 through the ICC system registers and this CPU's
//! redistributor), found from the device tree and mapped as device memory
//! through the direct map; the EL1 virtual timer (CNTV, compared against
//! CNTVCT_EL0, the clock), whose PPI the device tree names; shared
//! peripheral interrupts (SPIs) for user-space drivers, routed to this CPU
//! when claimed and disabled when they fire until acknowledged; and the
//! idle loop. PSTATE.I stays set in the kernel except while idle.

use super::phys_to_virt;
use crate::bootinfo::{BootInfo, Controller};
use crate::trap::Interrupt;
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

const GICD_CTLR: usize = 0x000;
const GICD_TYPER: usize = 0x004;
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
const GICD_ITARGETSR: usize = 0x800;
const GICD_IROUTER: usize = 0x6000;
const GICC_CTLR: usize = 0x000;
const GICC_PMR: usize = 0x004;
const GICC_IAR: usize = 0x00c;
const GICC_EOIR: usize = 0x010;
const GICR_WAKER: usize = 0x014;
/// The SGI/PPI frame follows each redistributor's control frame.
const GICR_SGI: usize = 0x1_0000;
const GICR_IGROUPR0: usize = 0x080;
/// Banked per CPU: SGIs and PPIs (GICD for v2, GICR's SGI frame for v3).
const ISENABLER0: usize = 0x100;
const IPRIORITYR: usize = 0x400;
/// Priority of every enabled line (below the mask, so all are taken).
const PRIORITY: u8 = 0xa0;
const PRIORITY_MASK: u32 = 0xf0;
const SPURIOUS: u32 = 1023;

/// Direct-map address of the distributor (0: not set up).
static DIST: AtomicUsize = AtomicUsize::new(0);
/// GICv2: the CPU interface; GICv3: 0 (system registers instead).
static CPU_IF: AtomicUsize = AtomicUsize::new(0);
/// The virtual timer's INTID.
static TIMER_INTID: AtomicU32 = AtomicU32::new(u32::MAX);
/// INTIDs the distributor implements (SPIs are 32 up to this).
static LINES: AtomicU32 = AtomicU32::new(0);

fn reg(base: usize, off: usize) -> *mut u32 {
    (base + off) as *mut u32
}

/// Writes a GIC register.
///
/// # Safety
/// `base + off` is a register of a GIC window the kernel page tables map
/// as device memory.
unsafe fn write(base: usize, off: usize, v: u32) {
    // SAFETY: the caller's guarantee; the access is aligned.
    unsafe { core::ptr::write_volatile(reg(base, off), v) }
}

/// Reads a GIC register (same safety as [`write`]).
unsafe fn read(base: usize, off: usize) -> u32 {
    // SAFETY: the caller's guarantee.
    unsafe { core::ptr::read_volatile(reg(base, off)) }
}

/// Sets up the GIC the device tree describes and the virtual timer,
/// disarmed; every shared line stays disabled.
pub fn init(info: &BootInfo<'_>) -> Result<(), &'static str> {
    let timer = info
        .irq
        .timer
        .ok_or("the device tree names no virtual timer interrupt")?;
    let intid = timer.number;
    if !(16..32).contains(&intid) {
        return Err("the virtual timer's interrupt is not a PPI");
    }
    TIMER_INTID.store(intid, Ordering::Relaxed);
    timer_arm(None);
    let (dist, banked, v3) = match &info.irq.controller {
        Some(Controller::GicV2 { dist, cpu }) => {
            let c = phys_to_virt(cpu.0);
            CPU_IF.store(c, Ordering::Relaxed);
            (phys_to_virt(dist.0), phys_to_virt(dist.0), false)
        }
        Some(Controller::GicV3 { dist, redist }) => {
            (phys_to_virt(dist.0), phys_to_virt(redist.0), true)
        }
        _ => return Err("the device tree describes no GICv2 or GICv3"),
    };
    DIST.store(dist, Ordering::Relaxed);
    // SAFETY: `dist`, `banked` and `CPU_IF` are the direct-map addresses of
    // the GIC windows in `BootInfo::irq`, which the kernel page tables map
    // as device memory; the offsets are the architected registers. The
    // system-register writes configure only this CPU's interrupt delivery.
    unsafe {
        let lines = (((read(dist, GICD_TYPER) & 0x1f) + 1) * 32).min(1020);
        LINES.store(lines, Ordering::Relaxed);
        for n in 1..lines.div_ceil(32) {
            write(dist, GICD_ICENABLER + 4 * n as usize, u32::MAX);
        }
        let ppis = if v3 {
            // Affinity routing, non-secure group 1; this CPU's (the first)
            // redistributor awake.
            write(dist, GICD_CTLR, (1 << 4) | (1 << 1) | 1);
            let waker = read(banked, GICR_WAKER) & !(1 << 1);
            write(banked, GICR_WAKER, waker);
            let mut spins = 0;
            while read(banked, GICR_WAKER) & (1 << 2) != 0 && spins < 1_000_000 {
                spins += 1;
            }
            write(banked + GICR_SGI, GICR_IGROUPR0, u32::MAX);
            asm!(
                "mrs {t}, S3_0_C12_C12_5", // ICC_SRE_EL1
                "orr {t}, {t}, #1",
                "msr S3_0_C12_C12_5, {t}",
                "isb",
                "msr S3_0_C4_C6_0, {pmr}", // ICC_PMR_EL1
                "msr S3_0_C12_C12_7, {one}", // ICC_IGRPEN1_EL1
                "isb",
                t = out(reg) _,
                pmr = in(reg) u64::from(PRIORITY_MASK),
                one = in(reg) 1u64,
                options(nostack)
            );
            banked + GICR_SGI
        } else {
            write(dist, GICD_CTLR, 1);
            let c = CPU_IF.load(Ordering::Relaxed);
            write(c, GICC_PMR, PRIORITY_MASK);
            write(c, GICC_CTLR, 1);
            dist
        };
        let prio = reg(ppis, IPRIORITYR).cast::<u8>().add(intid as usize);
        core::ptr::write_volatile(prio, PRIORITY);
        write(ppis, ISENABLER0, 1 << intid);
    }
    log::info!(
        "interrupts: GICv{} at {:#x}, virtual timer INTID {intid}",
        if v3 { 3 } else { 2 },
        dist - phys_to_virt(0)
    );
    Ok(())
}

/// Whether user space may claim INTID `line` (an SPI the GIC has).
pub fn line_ok(line: u32) -> bool {
    (32..LINES.load(Ordering::Relaxed)).contains(&line)
}

/// Disables SPI `line`, or routes it to this CPU (group 1) and enables
/// it.
pub fn line_mask(line: u32, masked: bool) {
    if !line_ok(line) {
        return;
    }
    let dist = DIST.load(Ordering::Relaxed);
    let (word, bit) = (4 * (line / 32) as usize, 1u32 << (line % 32));
    let byte = line as usize;
    // SAFETY: `dist` is the distributor's direct-map address (`init`), and
    // `line` one of its SPIs, so every register offset is inside its
    // window; these registers only route and enable interrupts.
    unsafe {
        if masked {
            write(dist, GICD_ICENABLER + word, bit);
            return;
        }
        core::ptr::write_volatile(reg(dist, IPRIORITYR).cast::<u8>().add(byte), PRIORITY);
        if CPU_IF.load(Ordering::Relaxed) == 0 {
            let group = read(dist, GICD_IGROUPR + word);
            write(dist, GICD_IGROUPR + word, group | bit);
            let route = reg(dist, GICD_IROUTER + 8 * byte).cast::<u64>();
            core::ptr::write_volatile(route, 0);
        } else {
            core::ptr::write_volatile(reg(dist, GICD_ITARGETSR).cast::<u8>().add(byte), 1);
        }
        write(dist, GICD_ISENABLER + word, bit);
    }
}

/// Arms the virtual timer to fire once at CNTVCT_EL0 = `deadline`, or
/// disables it.
pub fn timer_arm(deadline: Option<u64>) {
    // SAFETY: the EL1 virtual timer's registers affect only its interrupt.
    unsafe {
        match deadline {
            Some(d) => asm!(
                "msr cntv_cval_el0, {d}",
                "msr cntv_ctl_el0, {on}",
                "isb",
                d = in(reg) d,
                on = in(reg) 1u64,
                options(nostack)
            ),
            None => asm!("msr cntv_ctl_el0, xzr", "isb", options(nostack)),
        }
    }
}

/// Acknowledges the pending interrupt and says what it was (`None`:
/// spurious, or a line nothing enabled).
pub fn interrupt() -> Option<Interrupt> {
    let cpu = CPU_IF.load(Ordering::Relaxed);
    let iar = if cpu == 0 {
        let v: u64;
        // SAFETY: reading ICC_IAR1_EL1 acknowledges the interrupt (GICv3).
        unsafe { asm!("mrs {}, S3_0_C12_C12_0", out(reg) v, options(nostack)) };
        v as u32
    } else {
        // SAFETY: as in `init` (the GICv2 CPU interface).
        unsafe { read(cpu, GICC_IAR) }
    };
    let intid = iar & 0xff_ffff;
    if intid >= SPURIOUS {
        return None;
    }
    let irq = if intid == TIMER_INTID.load(Ordering::Relaxed) {
        // Level-triggered: drop it before the end of interrupt.
        timer_arm(None);
        Interrupt::Timer
    } else {
        line_mask(intid, true);
        Interrupt::Line(intid)
    };
    if cpu == 0 {
        // SAFETY: writing ICC_EOIR1_EL1 ends the interrupt just taken.
        unsafe { asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) u64::from(iar), options(nostack)) };
    } else {
        // SAFETY: as in `init`.
        unsafe { write(cpu, GICC_EOIR, iar) };
    }
    Some(irq)
}

/// Waits for interrupts forever on a fresh kernel stack with IRQs
/// unmasked; each one is handled by the trap dispatcher, which leaves
/// through `enter_user` or another `idle`, never returning here.
pub fn idle() -> ! {
    let top = super::user::kernel_stack_top();
    // SAFETY: switches to the top of this CPU's kernel stack (nothing on
    // the old one is used again: this never returns) and waits with IRQs
    // unmasked; `wfi` returning early just loops.
    unsafe {
        asm!(
            "mov sp, {top}",
            "mov x29, xzr",
            "2:",
            "msr daifclr, #2",
            "wfi",
            "b 2b",
            top = in(reg) top,
            options(noreturn)
        )
    }
}

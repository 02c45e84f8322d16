//! Interrupts on AArch64: the GIC (v2 through its memory-mapped CPU
//! interface, v3 through the ICC system registers and each CPU's
//! redistributor, found by its affinity), found from the device tree and
//! mapped as device memory through the direct map; each CPU's EL1 virtual
//! timer (CNTV, compared against CNTVCT_EL0, the clock), whose PPI the
//! device tree names; IPIs as SGI [`IPI_INTID`]; shared peripheral
//! interrupts (SPIs) for user-space drivers, routed to the boot CPU when
//! claimed and disabled when they fire until acknowledged; and the idle
//! loop. PSTATE.I stays set in the kernel except while idle.

use super::phys_to_virt;
use crate::bootinfo::{BootInfo, Controller, MAX_CPUS};
use crate::trap::Interrupt;
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

const GICD_CTLR: usize = 0x000;
const GICD_TYPER: usize = 0x004;
const GICD_IGROUPR: usize = 0x080;
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
const GICD_ITARGETSR: usize = 0x800;
const GICD_SGIR: usize = 0xf00;
const GICD_IROUTER: usize = 0x6000;
const GICC_CTLR: usize = 0x000;
const GICC_PMR: usize = 0x004;
const GICC_IAR: usize = 0x00c;
const GICC_EOIR: usize = 0x010;
const GICR_TYPER: usize = 0x008;
const GICR_WAKER: usize = 0x014;
/// GICR_TYPER: VLPIS (GICv4: two more 64 KiB frames per redistributor)
/// and Last (the region's last redistributor).
const GICR_TYPER_VLPIS: u32 = 1 << 1;
const GICR_TYPER_LAST: u32 = 1 << 4;
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
/// The SGI that carries IPIs.
const IPI_INTID: u32 = 0;

/// Direct-map address of the distributor (0: not set up).
static DIST: AtomicUsize = AtomicUsize::new(0);
/// GICv2: the CPU interface; GICv3: 0 (system registers instead).
static CPU_IF: AtomicUsize = AtomicUsize::new(0);
/// GICv3: the redistributor region, `[REDIST, REDIST_END)`.
static REDIST: AtomicUsize = AtomicUsize::new(0);
static REDIST_END: AtomicUsize = AtomicUsize::new(0);
/// The virtual timer's INTID.
static TIMER_INTID: AtomicU32 = AtomicU32::new(u32::MAX);
/// INTIDs the distributor implements (SPIs are 32 up to this).
static LINES: AtomicU32 = AtomicU32::new(0);
/// How to reach each CPU (by index; set by its [`init_cpu`]): GICv2 its
/// CPU-interface bit (for GICD_SGIR and GICD_ITARGETSR), GICv3 its MPIDR
/// affinity (for ICC_SGI1R_EL1 and GICD_IROUTER).
static TARGETS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Writes a GIC register (of 8, 32 or 64 bits: `T`).
///
/// # Safety
/// `base + off` is a `T`-aligned register of that size in a GIC window
/// the kernel page tables map as device memory.
unsafe fn write<T>(base: usize, off: usize, v: T) {
    // SAFETY: the caller's guarantee.
    unsafe { core::ptr::write_volatile((base + off) as *mut T, v) }
}

/// Reads a GIC register (same safety as [`write`]).
unsafe fn read<T>(base: usize, off: usize) -> T {
    // SAFETY: the caller's guarantee.
    unsafe { core::ptr::read_volatile((base + off) as *const T) }
}

/// Sets up the GIC the device tree describes and, on the boot CPU, its
/// interface and the virtual timer, disarmed; every shared line stays
/// disabled.
pub fn init(info: &BootInfo<'_>) -> Result<(), &'static str> {
    let no_timer = "the device tree names no virtual timer interrupt";
    let intid = info.irq.timer.ok_or(no_timer)?.number;
    if !(16..32).contains(&intid) {
        return Err("the virtual timer's interrupt is not a PPI");
    }
    TIMER_INTID.store(intid, Ordering::Relaxed);
    let (dist, v3) = match &info.irq.controller {
        Some(Controller::GicV2 { dist, cpu }) => {
            CPU_IF.store(phys_to_virt(cpu.0), Ordering::Relaxed);
            (phys_to_virt(dist.0), false)
        }
        Some(Controller::GicV3 { dist, redist }) => {
            REDIST.store(phys_to_virt(redist.0), Ordering::Relaxed);
            REDIST_END.store(phys_to_virt(redist.0 + redist.1), Ordering::Relaxed);
            (phys_to_virt(dist.0), true)
        }
        _ => return Err("the device tree describes no GICv2 or GICv3"),
    };
    DIST.store(dist, Ordering::Relaxed);
    // SAFETY: `dist` is the direct-map address of the distributor in
    // `BootInfo::irq`, which the kernel page tables map as device memory;
    // the offsets are the architected registers.
    unsafe {
        let lines = (((read::<u32>(dist, GICD_TYPER) & 0x1f) + 1) * 32).min(1020);
        LINES.store(lines, Ordering::Relaxed);
        for n in 1..lines.div_ceil(32) {
            write(dist, GICD_ICENABLER + 4 * n as usize, u32::MAX);
        }
        // GICv3: affinity routing, non-secure group 1.
        let ctlr: u32 = if v3 { (1 << 4) | (1 << 1) | 1 } else { 1 };
        write(dist, GICD_CTLR, ctlr);
    }
    init_cpu()?;
    let (version, base) = (if v3 { 3 } else { 2 }, dist - phys_to_virt(0));
    log::info!("interrupts: GICv{version} at {base:#x}, virtual timer INTID {intid}");
    Ok(())
}

/// GICv3: the redistributor of the CPU with MPIDR affinity `aff`: the
/// one whose GICR_TYPER names it.
fn redistributor(aff: u64) -> Option<usize> {
    let want = ((aff >> 8) & 0xff00_0000) | (aff & 0xff_ffff);
    let mut rd = REDIST.load(Ordering::Relaxed);
    let end = REDIST_END.load(Ordering::Relaxed);
    while rd < end {
        let (typer, typer_aff): (u32, u32) =
            // SAFETY: `rd` is a redistributor's control frame inside the
            // region `init` recorded, which the kernel page tables map as
            // device memory.
            unsafe { (read(rd, GICR_TYPER), read(rd, GICR_TYPER + 4)) };
        if u64::from(typer_aff) == want {
            return Some(rd);
        }
        if typer & GICR_TYPER_LAST != 0 {
            break;
        }
        rd += if typer & GICR_TYPER_VLPIS != 0 { 4 } else { 2 } * 0x1_0000;
    }
    None
}

/// This CPU's side of the GIC (on every CPU, after `init` on the boot
/// CPU): its CPU interface (v2) or redistributor and system registers
/// (v3), the IPI's SGI and the timer's PPI enabled, the timer disarmed;
/// records how to reach it.
pub fn init_cpu() -> Result<(), &'static str> {
    timer_arm(None);
    let intid = TIMER_INTID.load(Ordering::Relaxed);
    let cpu = CPU_IF.load(Ordering::Relaxed);
    // SAFETY: `cpu`, the distributor and the redistributor are GIC
    // windows `init` recorded, which the kernel page tables map as device
    // memory; the offsets are the architected registers, the banked ones
    // this CPU's. The system-register writes configure only this CPU's
    // interrupt delivery.
    let target = unsafe {
        let (ppis, target) = if cpu == 0 {
            let aff = super::cpu_hw_id();
            let rd = redistributor(aff).ok_or("no GICv3 redistributor for this CPU")?;
            write(rd, GICR_WAKER, read::<u32>(rd, GICR_WAKER) & !(1 << 1));
            // Wait (a bounded number of reads) for ChildrenAsleep to clear.
            let _awake = (0..=1_000_000).any(|_| read::<u32>(rd, GICR_WAKER) & (1 << 2) == 0);
            write(rd + GICR_SGI, GICR_IGROUPR0, u32::MAX);
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
            (rd + GICR_SGI, aff)
        } else {
            write(cpu, GICC_PMR, PRIORITY_MASK);
            write(cpu, GICC_CTLR, 1u32);
            // GICD_ITARGETSR0's bytes read as this CPU's own bit (zero on a
            // uniprocessor GIC, which delivers everything to its one CPU).
            let dist = DIST.load(Ordering::Relaxed);
            let me: u8 = read(dist, GICD_ITARGETSR);
            (dist, u64::from(me.max(1)))
        };
        for id in [IPI_INTID, intid] {
            write(ppis, IPRIORITYR + id as usize, PRIORITY);
        }
        write::<u32>(ppis, ISENABLER0, (1 << IPI_INTID) | (1 << intid));
        target
    };
    TARGETS[super::cpu_index()].store(target, Ordering::Release);
    Ok(())
}

/// Sends the IPI SGI to CPU `index` (once its `init_cpu` has run).
pub fn send_ipi(index: usize) {
    let Some(target) = TARGETS.get(index).map(|t| t.load(Ordering::Acquire)) else {
        return;
    };
    let cpu = CPU_IF.load(Ordering::Relaxed);
    // SAFETY: the barrier orders this CPU's earlier stores before the
    // IPI; writing ICC_SGI1R_EL1 (v3) or GICD_SGIR (v2, the distributor
    // `init` recorded) only raises the SGI at the target; `yield` is a
    // hint.
    unsafe {
        asm!("dsb ishst", options(nostack, preserves_flags));
        if cpu == 0 {
            // Aff3, RS (Aff0 / 16), Aff2, INTID, Aff1, target list (bit
            // Aff0 % 16).
            let aff0 = target & 0xff;
            let sgi = (((target >> 32) & 0xff) << 48)
                | ((aff0 >> 4) << 44)
                | (((target >> 16) & 0xff) << 32)
                | (u64::from(IPI_INTID) << 24)
                | (((target >> 8) & 0xff) << 16)
                | (1 << (aff0 & 0xf));
            asm!("msr S3_0_C12_C11_5, {}", "isb", in(reg) sgi, options(nostack));
        } else {
            let dist = DIST.load(Ordering::Relaxed);
            write(dist, GICD_SGIR, ((target as u32 & 0xff) << 16) | IPI_INTID);
        }
        // Under QEMU's one-thread TCG (`-icount`) a CPU runs until the next
        // timer deadline unless it yields, so the target would not run
        // while this one waits for its answer.
        asm!("yield", options(nomem, nostack, preserves_flags));
    }
}

/// Whether user space may claim INTID `line` (an SPI the GIC has).
pub fn line_ok(line: u32) -> bool {
    (32..LINES.load(Ordering::Relaxed)).contains(&line)
}

/// Disables SPI `line`, or routes it to the boot CPU (group 1) and
/// enables it.
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
        write(dist, IPRIORITYR + byte, PRIORITY);
        let boot_cpu = TARGETS[0].load(Ordering::Relaxed);
        if CPU_IF.load(Ordering::Relaxed) == 0 {
            let group: u32 = read(dist, GICD_IGROUPR + word);
            write(dist, GICD_IGROUPR + word, group | bit);
            write(dist, GICD_IROUTER + 8 * byte, boot_cpu);
        } else {
            write(dist, GICD_ITARGETSR + byte, boot_cpu as u8);
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
    // GICv2 puts the sending CPU of an SGI in bits 12:10.
    let intid = iar & if cpu == 0 { 0xff_ffff } else { 0x3ff };
    if intid >= SPURIOUS {
        return None;
    }
    let irq = if intid == TIMER_INTID.load(Ordering::Relaxed) {
        // Level-triggered: drop it before the end of interrupt.
        timer_arm(None);
        Interrupt::Timer
    } else if intid == IPI_INTID {
        Interrupt::Ipi
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

//! Interrupts on RISC-V: the supervisor timer through the SBI (`set_timer`
//! takes an absolute `time` value, so a deadline in clock ticks is armed
//! as is; it is per hart), IPIs through the SBI IPI extension (a
//! supervisor software interrupt on the target hart), device lines
//! through the PLIC the device tree describes (the boot hart's supervisor
//! context only, whichever CPU unmasks a line, so only the boot CPU
//! enables external interrupts; a source is disabled when it is claimed
//! until its driver acknowledges it), all enabled in `sie`, and the idle
//! loop. `sstatus.SIE` stays clear in the kernel except while idle.

use super::phys_to_virt;
use super::user::this_cpu;
use crate::bootinfo::Controller;
use crate::trap::Interrupt;
use core::arch::asm;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// `scause` of the supervisor software interrupt (an IPI), with the
/// interrupt bit.
const SOFTWARE: usize = super::traps::SCAUSE_INTERRUPT | 1;
/// `scause` of the supervisor timer interrupt.
const TIMER: usize = super::traps::SCAUSE_INTERRUPT | 5;
/// `scause` of the supervisor external interrupt.
const EXTERNAL: usize = super::traps::SCAUSE_INTERRUPT | 9;
/// `sie.SSIE` (also `sip.SSIP`), `sie.STIE`, `sie.SEIE`.
const SIE_SSIE: usize = 1 << 1;
const SIE_STIE: usize = 1 << 5;
const SIE_SEIE: usize = 1 << 9;

/// Direct-map address of the PLIC (0: none).
static PLIC: AtomicUsize = AtomicUsize::new(0);
/// Its number of sources and the boot hart's S-mode context.
static SOURCES: AtomicU32 = AtomicU32::new(0);
static CONTEXT: AtomicU32 = AtomicU32::new(0);
/// Serialises changes to the enable bits: any CPU unmasks lines (system
/// calls), the boot CPU masks them as they fire, outside the kernel lock.
static ENABLES: spin::Mutex<()> = spin::Mutex::new(());

/// A PLIC register: priority of source `n` at `4n`, the context's enable
/// bits at `0x2000 + 0x80 ctx`, its threshold and claim/complete at
/// `0x20_0000 + 0x1000 ctx` (+0, +4).
fn plic(off: usize) -> *mut u32 {
    (PLIC.load(Ordering::Relaxed) + off) as *mut u32
}

fn context_base() -> usize {
    0x20_0000 + 0x1000 * CONTEXT.load(Ordering::Relaxed) as usize
}

/// Whether user space may claim PLIC source `line`.
pub fn line_ok(line: u32) -> bool {
    PLIC.load(Ordering::Relaxed) != 0 && (1..=SOURCES.load(Ordering::Relaxed)).contains(&line)
}

/// Disables source `line` for the boot hart, or enables it at priority 1
/// (for the boot hart only, whichever CPU calls this).
pub fn line_mask(line: u32, masked: bool) {
    if !line_ok(line) {
        return;
    }
    let enable =
        0x2000 + 0x80 * CONTEXT.load(Ordering::Relaxed) as usize + 4 * (line / 32) as usize;
    let bit = 1u32 << (line % 32);
    let _guard = ENABLES.lock();
    // SAFETY: the PLIC's window is mapped as device memory (one of
    // `BootInfo::irq`'s windows) and `line` is one of its sources, so the
    // offsets are inside it; these registers only route interrupts.
    unsafe {
        if !masked {
            plic(4 * line as usize).write_volatile(1);
        }
        let bits = plic(enable).read_volatile();
        plic(enable).write_volatile(if masked { bits & !bit } else { bits | bit });
    }
}

/// Sets up the PLIC and the boot CPU's interrupts ([`init_cpu`]).
pub fn init(info: &crate::bootinfo::BootInfo<'_>) -> Result<(), &'static str> {
    if sbi_rt::probe_extension(sbi_rt::Timer).is_unavailable() {
        return Err("the SBI has no timer extension");
    }
    let plic = if let Some(Controller::Plic {
        regs,
        sources,
        context,
        contexts,
    }) = &info.irq.controller
    {
        let me = info.cpu_ids.iter().position(|&h| h == super::cpu_hw_id());
        let mine = me.and_then(|i| contexts.get(i).copied().flatten());
        PLIC.store(phys_to_virt(regs.0), Ordering::Relaxed);
        SOURCES.store((*sources).min(1023), Ordering::Relaxed);
        CONTEXT.store(mine.unwrap_or(*context), Ordering::Relaxed);
        for line in 1..=SOURCES.load(Ordering::Relaxed) {
            line_mask(line, true);
        }
        // SAFETY: as in `line_mask`: threshold 0 lets every enabled
        // source through.
        unsafe { plic(context_base()).write_volatile(0) };
        log::info!("interrupts: SBI timer and IPIs, PLIC at {:#x}", regs.0);
        true
    } else {
        log::info!("interrupts: SBI timer and IPIs (no PLIC)");
        false
    };
    init_cpu(plic);
    Ok(())
}

/// This CPU's interrupts: its timer disarmed; the timer, IPIs and, with
/// `external` (the boot CPU, which the PLIC lines are routed to), device
/// interrupts enabled in `sie`.
pub(super) fn init_cpu(external: bool) {
    timer_arm(None);
    let sie = SIE_STIE | SIE_SSIE | if external { SIE_SEIE } else { 0 };
    // SAFETY: setting `sie` bits only lets those interrupts be taken where
    // `sstatus.SIE` is set (user mode and `idle`), which the trap entry
    // handles.
    unsafe { asm!("csrs sie, {}", in(reg) sie, options(nomem, nostack)) };
}

/// Interrupts CPU `index` (a supervisor software interrupt on its hart,
/// through the SBI).
pub fn send_ipi(index: usize) {
    if let Some(cpu) = super::user::CPUS.get(index) {
        let hart = cpu.hart_id.load(Ordering::Relaxed);
        let _ = sbi_rt::send_ipi(sbi_rt::HartMask::from_mask_base(1, hart));
    }
}

/// Arms this CPU's timer to fire once at `time` value `deadline`, or
/// disarms it.
pub fn timer_arm(deadline: Option<u64>) {
    // `u64::MAX` is never reached: disarmed (and `sip.STIP` cleared).
    let _ = sbi_rt::set_timer(deadline.unwrap_or(u64::MAX));
}

/// What an interrupt `scause` means, after acknowledging it (`None`: not
/// one the kernel enabled, ignored).
pub fn interrupt(scause: usize) -> Option<Interrupt> {
    match scause {
        SOFTWARE => {
            // SAFETY: clearing `sip.SSIP` acknowledges the IPI; IPIs that
            // arrive meanwhile coalesce with it.
            unsafe { asm!("csrc sip, {}", in(reg) SIE_SSIE, options(nomem, nostack)) };
            Some(Interrupt::Ipi)
        }
        TIMER => {
            timer_arm(None);
            Some(Interrupt::Timer)
        }
        EXTERNAL if PLIC.load(Ordering::Relaxed) != 0 => {
            let claim = plic(context_base() + 4);
            // SAFETY: as in `line_mask`: reading claims the highest pending
            // source, writing it back completes it.
            let line = unsafe { claim.read_volatile() };
            if line == 0 {
                return None;
            }
            line_mask(line, true);
            // SAFETY: as above.
            unsafe { claim.write_volatile(line) };
            Some(Interrupt::Line(line))
        }
        _ => None,
    }
}

/// Waits for interrupts forever on a fresh kernel stack with `sstatus.SIE`
/// set; each one is handled by the trap dispatcher, which leaves through
/// `enter_user` or another `idle`, never returning here.
pub fn idle() -> ! {
    let top = this_cpu().kernel_sp.load(Ordering::Relaxed);
    // SAFETY: switches to the top of this CPU's kernel stack (nothing on
    // the old one is used again: this never returns), with `sscratch` = 0
    // so a trap counts as from the kernel, and waits with interrupts
    // enabled; a `wfi` that returns early just loops.
    unsafe {
        asm!(
            "mv sp, {top}",
            "li s0, 0",
            "csrw sscratch, zero",
            "2:",
            "csrsi sstatus, 2",
            "wfi",
            "j 2b",
            top = in(reg) top,
            options(noreturn)
        )
    }
}

//! Interrupts on RISC-V: the supervisor timer through the SBI (`set_timer`
//! takes an absolute `time` value, so a deadline in clock ticks is armed
//! as is), enabled in `sie`, and the idle loop. `sstatus.SIE` stays clear
//! in the kernel except while idle.

use super::user::this_cpu;
use crate::trap::Interrupt;
use core::arch::asm;
use core::sync::atomic::Ordering;

/// `scause` of the supervisor timer interrupt (with the interrupt bit).
const TIMER: usize = super::traps::SCAUSE_INTERRUPT | 5;
/// `sie.STIE`.
const SIE_STIE: usize = 1 << 5;

/// Enables the supervisor timer interrupt, disarmed.
pub fn init(_info: &crate::bootinfo::BootInfo<'_>) -> Result<(), &'static str> {
    if sbi_rt::probe_extension(sbi_rt::Timer).is_unavailable() {
        return Err("the SBI has no timer extension");
    }
    timer_arm(None);
    // SAFETY: setting `sie.STIE` only lets the timer interrupt be taken
    // where `sstatus.SIE` is set (user mode and `idle`), which the trap
    // entry handles.
    unsafe { asm!("csrs sie, {}", in(reg) SIE_STIE, options(nomem, nostack)) };
    log::info!("interrupts: SBI timer");
    Ok(())
}

/// Arms the timer to fire once at `time` value `deadline`, or disarms it.
pub fn timer_arm(deadline: Option<u64>) {
    // `u64::MAX` is never reached: disarmed (and `sip.STIP` cleared).
    let _ = sbi_rt::set_timer(deadline.unwrap_or(u64::MAX));
}

/// What an interrupt `scause` means, after acknowledging it (`None`: not
/// one the kernel enabled, ignored).
pub fn interrupt(scause: usize) -> Option<Interrupt> {
    match scause {
        TIMER => {
            timer_arm(None);
            Some(Interrupt::Timer)
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

//! The kernel panic handler: report, backtrace, exit with `EXIT_CRASH`.

use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if crate::console::enter_fatal() {
        kprintln!("\nKERNEL PANIC while reporting a fault: {}", info.message());
        crate::arch::exit(keel_abi::harness::EXIT_CRASH);
    }
    kprintln!();
    match info.location() {
        Some(loc) => kprintln!(
            "KERNEL PANIC at {}:{}:{}: {}",
            loc.file(),
            loc.line(),
            loc.column(),
            info.message()
        ),
        None => kprintln!("KERNEL PANIC: {}", info.message()),
    }
    kprintln!("backtrace:");
    crate::arch::print_backtrace();
    crate::arch::exit(keel_abi::harness::EXIT_CRASH)
}

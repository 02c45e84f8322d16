//! The kernel console: formatted output to the architecture's serial port
//! and to the firmware's framebuffer if there is one, the
//! `kprint!`/`kprintln!` macros, and the `log` facade's backend.
//!
//! Output is serialised by one spin lock so lines from different CPUs do not
//! interleave. The fatal paths (panic, unexpected trap) call
//! [`enter_fatal`] first; from then on output bypasses the lock, so a fault
//! taken while printing cannot deadlock the report.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use spin::Mutex;

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        crate::arch::console_write(s.as_bytes());
        // Held only by a fault while drawing, which is reported without it.
        if let Some(mut screen) = SCREEN.try_lock() {
            screen.write_bytes(s.as_bytes());
        }
        Ok(())
    }
}

/// The console on the firmware's framebuffer, once [`attach_screen`] gave
/// it one (`keel_fb` draws the text).
static SCREEN: Mutex<keel_fb::Console<'static>> = Mutex::new(keel_fb::Console::new());

/// Draws the console on `fb`, laid out as `mode`, as well, from the next
/// line on (nothing if the mode does not fit it).
pub fn attach_screen(fb: &'static mut [u8], mode: keel_fb::Mode) {
    SCREEN.lock().attach(fb, mode);
}

static CONSOLE: Mutex<Serial> = Mutex::new(Serial);
static FATAL: AtomicBool = AtomicBool::new(false);

#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Writing to the serial port cannot fail.
    if FATAL.load(Ordering::Relaxed) {
        let _ = Serial.write_fmt(args);
    } else {
        let _ = CONSOLE.lock().write_fmt(args);
    }
}

/// The CPU reporting a fatal error (`usize::MAX`: none).
static FATAL_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Switches the console to lock-free output for a report that ends the
/// kernel, and stops every other CPU (`smp::stop_others`), so one CPU
/// prints one report. Returns `true` if this CPU was already on a fatal
/// path (a fault inside the fault report), in which case the caller
/// should stop at once; a second CPU failing meanwhile just halts.
pub fn enter_fatal() -> bool {
    let me = crate::arch::cpu_index();
    match FATAL_CPU.compare_exchange(usize::MAX, me, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            crate::smp::stop_others();
            FATAL.store(true, Ordering::Release);
            false
        }
        Err(cpu) if cpu == me => true,
        Err(_) => crate::arch::halt(),
    }
}

/// Prints to the kernel console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the kernel console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            kprintln!("[{:5}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the console as the `log` backend with the given level.
pub fn init_logger(level: crate::cmdline::LogLevel) {
    use crate::cmdline::LogLevel;
    // Fails only if a logger is already set, which is harmless.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match level {
        LogLevel::Trace => log::LevelFilter::Trace,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Off => log::LevelFilter::Off,
    });
}

//! Program start and end: the Rust side of `_start`, the program's `main`
//! (declared with [`entry!`](crate::entry!)), and the panic handler.
//!
//! `_start` (assembly in `arch/`) calls [`start`] with the address of the
//! information page: the kernel's `RootInfo` for the root task, the
//! process server's `ProcInfo` for a process it started (told apart by
//! their magic). `start` checks the address is plausible, remembers it for
//! [`root_info`] or [`crate::process::info`], runs `main` (or the
//! program's child `main`), and ends the process with its return value.
//!
//! Invariant: `ROOT_INFO` is 0 or the address of a `RootInfo` the kernel
//! maps read-only for the life of the task.

use crate::syscall::thread_exit;
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_abi::boot::RootInfo;
use keel_abi::process::{PROC_INFO_MAGIC, ProcInfo};

/// Exit code of a thread that panicked.
pub const PANIC_EXIT_CODE: isize = 101;
/// Exit code when the kernel passed no usable information-page address.
pub const BAD_START_EXIT_CODE: isize = 102;

static ROOT_INFO: AtomicUsize = AtomicUsize::new(0);

/// Exit code of a process started by the process server when the program
/// has no child `main` (see [`entry!`](crate::entry!)).
pub const NO_CHILD_MAIN_EXIT_CODE: i32 = 103;

unsafe extern "Rust" {
    /// The program's `main`, defined by [`entry!`](crate::entry!).
    safe fn keel_main(info: &'static RootInfo) -> i32;
    /// Its `main` as a process the process server started.
    safe fn keel_child_main(info: &'static ProcInfo) -> i32;
}

/// Declares the program's `main`: `fn(&'static RootInfo) -> i32`, whose
/// return value becomes the first thread's exit code, and optionally its
/// `main` when the process server starts it (spawn, exec):
/// `fn(&'static ProcInfo) -> i32`, whose return value is the process's
/// exit status.
///
/// ```ignore
/// keel_rt::entry!(main);
/// fn main(info: &'static keel_abi::boot::RootInfo) -> i32 { 0 }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        $crate::entry!($main, |_| $crate::entry::NO_CHILD_MAIN_EXIT_CODE);
    };
    ($main:path, $child:expr) => {
        #[unsafe(no_mangle)]
        fn keel_main(info: &'static $crate::abi::boot::RootInfo) -> i32 {
            let main: fn(&'static $crate::abi::boot::RootInfo) -> i32 = $main;
            main(info)
        }
        #[unsafe(no_mangle)]
        fn keel_child_main(info: &'static $crate::abi::process::ProcInfo) -> i32 {
            let main: fn(&'static $crate::abi::process::ProcInfo) -> i32 = $child;
            main(info)
        }
    };
}

/// The information page, once [`start`] has checked its address.
pub fn root_info() -> Option<&'static RootInfo> {
    let addr = ROOT_INFO.load(Ordering::Acquire);
    if addr == 0 {
        return None;
    }
    // SAFETY: `start` stored an aligned, non-null address the kernel maps
    // read-only for the life of the task.
    Some(unsafe { &*(addr as *const RootInfo) })
}

/// Called by `_start` with the first argument register.
pub(crate) extern "C" fn start(info: usize) -> ! {
    if info == 0 || !info.is_multiple_of(align_of::<RootInfo>()) {
        println!("keel-rt: bad root information address {info:#x}");
        thread_exit(BAD_START_EXIT_CODE);
    }
    // SAFETY: both pages start with a magic word; the address is aligned
    // and the kernel or process server maps the page before starting us.
    if unsafe { (info as *const u64).read() } == PROC_INFO_MAGIC {
        let Some(info) = crate::process::set_info(info) else {
            thread_exit(BAD_START_EXIT_CODE)
        };
        crate::process::exit(keel_child_main(info))
    }
    ROOT_INFO.store(info, Ordering::Release);
    let Some(info) = root_info() else {
        thread_exit(BAD_START_EXIT_CODE)
    };
    let code = keel_main(info);
    thread_exit(code as isize)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("\nuser panic: {info}");
    thread_exit(PANIC_EXIT_CODE)
}

//! The portable half of boot: everything after the architecture has parsed
//! the boot information. Prints the banner, then runs the tests (`ktest`
//! build) or the benchmarks (`bench` build), then starts the root task from
//! the boot module.

use crate::bootinfo::{BootInfo, BootInfoError};
use crate::cmdline::Cmdline;
use crate::entry::RunMode;
use crate::task::Kernel;
use crate::task::root::RootError;
use keel_abi::boot::{ROOT_FLAG_BENCH, ROOT_FLAG_TEST};
use keel_abi::harness::{EXIT_BOOT_ERROR, EXIT_FAIL, EXIT_PASS};

/// Called once by the architecture's boot code on the boot CPU.
pub fn kernel_main(info: Result<BootInfo<'_>, BootInfoError>) -> ! {
    // The screen, if the kernel can use it: its window goes into the
    // kernel page tables below.
    let screen = info.as_ref().ok().and_then(|info| {
        let (pa, mode) = info.framebuffer?;
        let fb = crate::mm::kmap::framebuffer(&info.memory, pa, mode.size())?;
        crate::console::attach_screen(fb, mode);
        Some((pa, mode.size()))
    });
    kprintln!();
    kprintln!(
        "Keel {} ({}) booting",
        env!("CARGO_PKG_VERSION"),
        crate::arch::NAME
    );
    let info = match info {
        Ok(info) => info,
        Err(e) => boot_error(format_args!("{e}")),
    };
    let cmdline = match Cmdline::parse(info.cmdline) {
        Ok(c) => c,
        Err(e) => boot_error(format_args!("bad kernel command line: {e}")),
    };
    crate::console::init_logger(cmdline.log_level);
    print_banner(&info);
    if let Err(e) = crate::mm::init(&info.memory, &info.numa) {
        boot_error(format_args!("cannot set up the frame allocator: {e:?}"));
    }
    match crate::mm::kmap::init(&info.memory, info.irq.windows().into_iter().chain(screen)) {
        Ok(s) => kprintln!(
            "kernel page tables: direct map {} MiB in {} 1G + {} 2M + {} 4K pages, image {} pages (W^X)",
            s.direct_bytes >> 20,
            s.direct[2],
            s.direct[1],
            s.direct[0],
            s.image_pages
        ),
        Err(e) => boot_error(format_args!("cannot build the kernel page tables: {e:?}")),
    }
    if let Err(e) = crate::mm::add_memory_above_boot_limit(&info.memory) {
        boot_error(format_args!("cannot add memory above 4 GiB: {e:?}"));
    }
    crate::mm::user::init();
    crate::mm::print_stats();
    crate::time::init(crate::arch::clock_hz(&info));
    match crate::time::hz() {
        0 => kprintln!("clock: rate unknown; the monotonic clock reads 0"),
        hz => kprintln!("clock: {}.{:03} MHz", hz / 1_000_000, hz / 1_000 % 1_000),
    }
    if let Err(e) = crate::arch::irq_init(&info) {
        boot_error(format_args!("cannot set up interrupts: {e}"));
    }
    crate::smp::start_cpus(&info);

    if cfg!(feature = "ktest") && cmdline.crash_stack {
        kprintln!("overflowing the kernel stack on purpose (crash=stack)");
        overflow_stack(0);
    }
    let mode = if cfg!(feature = "ktest") {
        let (passed, failed) = crate::ktest::run_all(cmdline.test_filter);
        kprintln!("{passed} passed, {failed} failed");
        if cmdline.test_filter.is_some() {
            // A filtered run is for the in-kernel tests only.
            crate::arch::exit(if failed == 0 { EXIT_PASS } else { EXIT_FAIL });
        }
        RunMode::Test {
            kernel_failed: failed,
        }
    } else if cfg!(feature = "bench") {
        crate::bench::run_all();
        kprintln!("benchmarks done");
        RunMode::Bench
    } else {
        RunMode::Normal
    };
    start_root_task(&info, mode)
}

/// Loads the root task from the boot module and runs it; without one,
/// ends the run the way `mode` says.
fn start_root_task(info: &BootInfo<'_>, mode: RunMode) -> ! {
    let flags = match mode {
        RunMode::Test { .. } => ROOT_FLAG_TEST,
        RunMode::Bench => ROOT_FLAG_BENCH,
        RunMode::Normal => 0,
    };
    let loaded = Kernel::new(crate::smp::count())
        .map_err(RootError::Kernel)
        .and_then(|mut k| {
            crate::task::root::load(&mut k, info, flags)?;
            Ok(k)
        });
    match loaded {
        Ok(kernel) => crate::entry::start(kernel, mode),
        Err(e) => {
            let failed = match e {
                RootError::NoModule => {
                    kprintln!("keel: no boot module, so no root task to run");
                    false
                }
                e => {
                    kprintln!("keel: cannot start the root task: {e:?}");
                    true
                }
            };
            match mode {
                RunMode::Test { kernel_failed } => {
                    crate::arch::exit(if kernel_failed == 0 && !failed {
                        EXIT_PASS
                    } else {
                        EXIT_FAIL
                    })
                }
                RunMode::Bench => crate::arch::exit(if failed { EXIT_FAIL } else { EXIT_PASS }),
                RunMode::Normal => {
                    log::info!("boot complete; nothing to run, halting (Ctrl-A X leaves QEMU)");
                    crate::arch::halt()
                }
            }
        }
    }
}

/// Recurses until the stack runs into its guard page.
fn overflow_stack(depth: u64) -> u64 {
    let frame = core::hint::black_box([depth; 64]);
    if core::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    overflow_stack(depth + 1) + frame[depth as usize % 64]
}

fn boot_error(msg: core::fmt::Arguments<'_>) -> ! {
    kprintln!("BOOT ERROR: {msg}");
    kprintln!("Keel cannot start; check the boot loader configuration.");
    crate::arch::exit(EXIT_BOOT_ERROR)
}

fn print_banner(info: &BootInfo<'_>) {
    kprintln!(
        "boot protocol: {}; command line: \"{}\"",
        info.protocol,
        info.cmdline
    );
    kprintln!("physical memory map:");
    for r in info.memory.regions() {
        kprintln!(
            "  {:#014x}-{:#014x} {:>10} KiB {}",
            r.start,
            r.end,
            r.len() / 1024,
            r.kind.name()
        );
    }
    kprintln!(
        "RAM: {} MiB total, {} MiB usable; CPUs: {}",
        info.memory.ram_bytes() >> 20,
        info.memory.usable_bytes() >> 20,
        info.cpu_count
    );
}

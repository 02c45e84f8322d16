//! `systest`: Keel's system test suite, run as the root task.
//!
//! The kernel starts it with the root-task information page. In a test run
//! (and in a normal run, where it is the only program there is) it runs
//! every test of [`tests::ALL`] from user mode, printing
//! `test user::<module>::<name> ... ok|FAILED` per test and
//! `N passed, N failed` at the end, the same lines as the in-kernel tests,
//! and exits with the number of failed tests (0 = pass). In a benchmark run
//! (`ROOT_FLAG_BENCH`) it runs the user-mode benchmarks instead. In a
//! normal run (neither flag), after the tests it becomes the console's
//! user-space driver ([`echo_console`]) and never exits.
//!
//! Only the bare-metal build is the program; the host build (clippy,
//! `cargo test --workspace`) is a stub.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![cfg_attr(target_os = "none", deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg(target_os = "none")]
#[macro_use]
mod harness;

#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
mod bench_smp;
#[cfg(target_os = "none")]
mod bench_time;
#[cfg(target_os = "none")]
mod mirror;
#[cfg(target_os = "none")]
mod tests;

#[cfg(target_os = "none")]
keel_rt::entry!(root_main, tests::processes::child_main);

#[cfg(target_os = "none")]
fn root_main(info: &'static keel_abi::boot::RootInfo) -> i32 {
    // Processes are started through it (tests::processes, the benchmarks).
    if let Err(e) = keel_rt::process::server::start(info) {
        keel_rt::println!("process server did not start: {e:?}");
    }
    if info.flags & keel_abi::boot::ROOT_FLAG_BENCH != 0 {
        // One CPU: the instruction-count rows; several: the SMP rows.
        if info.cpu_count > 1 {
            bench_smp::run_all();
        } else {
            bench::run_all();
        }
        return 0;
    }
    tests::record_baseline();
    let failed = harness::run_all(tests::ALL);
    if info.flags & keel_abi::boot::ROOT_FLAG_TEST == 0 {
        // Returns only if the driver cannot start or the device fails.
        if let Err(e) = echo_console(info) {
            keel_rt::println!("uart: console driver stopped: {e:?}");
        }
    }
    i32::try_from(failed).unwrap_or(i32::MAX)
}

/// The console's user-space driver: claims its interrupt line, enables
/// receive interrupts and echoes every byte typed (`\r` as `\r\n`),
/// forever. Errors only if a system call fails.
#[cfg(target_os = "none")]
fn echo_console(info: &'static keel_abi::boot::RootInfo) -> Result<(), keel_abi::Error> {
    use keel_abi::cap::CapToken;
    use keel_rt::device::{irq_ack, irq_handler_create};
    use keel_rt::ipc::{notification_create, wait};
    use keel_rt::uart::{Hw, Uart, console_line};

    /// Echoes what has been received; reading empties the receiver, which
    /// lowers the UART's interrupt request.
    fn echo(uart: &mut Uart<Hw>) -> Result<(), keel_abi::Error> {
        let mut buf = [0u8; 64];
        loop {
            let n = uart.read_available(&mut buf)?;
            for &b in &buf[..n] {
                match b {
                    b'\r' => uart.write_bytes(b"\r\n")?,
                    b => uart.write_byte(b)?,
                }
            }
            if n < buf.len() {
                return uart.clear_rx_interrupt();
            }
        }
    }

    let dc = CapToken::from_raw(info.device_control);
    let line = console_line(info).ok_or(keel_abi::Error::NotSupported)?;
    let mut uart = Uart::open(info, dc, tests::next_va(1))?;
    let ntfn = notification_create(CapToken::from_raw(info.pool))?;
    let handler = irq_handler_create(dc, line, ntfn)?;
    uart.enable_rx_interrupts()?;
    keel_rt::println!("uart: echoing console input (user-space driver, line {line})");
    loop {
        wait(ntfn)?;
        echo(&mut uart)?;
        irq_ack(handler)?;
        // Bytes that arrived between the read and the ack: an
        // edge-triggered line (x86) will not fire again for them.
        echo(&mut uart)?;
    }
}

/// Host builds (clippy, `cargo build --workspace`) produce this stub.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("systest runs as Keel's root task; use `cargo xtask test`");
}

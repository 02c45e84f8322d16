//! `systest`: Keel's system test suite, run as the root task.
//!
//! The kernel starts it with the root-task information page. In a test run
//! (and in a normal run, where it is the only program there is) it runs
//! every test of [`tests::ALL`] from user mode, printing
//! `test user::<module>::<name> ... ok|FAILED` per test and
//! `N passed, N failed` at the end, the same lines as the in-kernel tests,
//! and exits with the number of failed tests (0 = pass). In a benchmark run
//! (`ROOT_FLAG_BENCH`) it runs the user-mode benchmarks instead.
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
mod mirror;
#[cfg(target_os = "none")]
mod tests;

#[cfg(target_os = "none")]
keel_rt::entry!(root_main);

#[cfg(target_os = "none")]
fn root_main(info: &'static keel_abi::boot::RootInfo) -> i32 {
    if info.flags & keel_abi::boot::ROOT_FLAG_BENCH != 0 {
        bench::run_all();
        return 0;
    }
    tests::record_baseline();
    let failed = harness::run_all(tests::ALL);
    i32::try_from(failed).unwrap_or(i32::MAX)
}

/// Host builds (clippy, `cargo build --workspace`) produce this stub.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("systest runs as Keel's root task; use `cargo xtask test`");
}

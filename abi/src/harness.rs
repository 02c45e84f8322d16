//! The protocol between a Keel kernel built for testing or benchmarking and
//! the host runner (`cargo xtask`): QEMU exit statuses and the shape of the
//! lines the kernel prints.
//!
//! Every architecture's exit device is driven so that QEMU's own exit status
//! equals one of these values. All are odd and non-zero because on x86 the
//! `isa-debug-exit` device can only produce `(v << 1) | 1`, and a triple fault
//! with `-no-reboot` makes QEMU exit 0: 0 is therefore never success.

/// All tests passed (or a benchmark run completed).
pub const EXIT_PASS: i32 = 33;
/// At least one test failed; the kernel itself is healthy.
pub const EXIT_FAIL: i32 = 35;
/// The kernel panicked or took an unexpected exception.
pub const EXIT_CRASH: i32 = 37;
/// The boot information (memory map, device tree, command line) was missing
/// or malformed; the kernel refused to start.
pub const EXIT_BOOT_ERROR: i32 = 39;

/// Prefix of a benchmark result line:
/// `bench <name> median=<n> min=<n> iters=<n> batches=<n>` where the figures
/// are cycle-counter ticks per operation (guest instructions under
/// `-icount shift=0`).
pub const BENCH_PREFIX: &str = "bench ";
/// Prefix of a benchmark figure that is not ticks per operation (memory,
/// totals): `bench-note <free text>`, shown and recorded as it is.
pub const BENCH_NOTE_PREFIX: &str = "bench-note ";
/// Prefix of a test result line: `test <path> ... ok` or `... FAILED`.
pub const TEST_PREFIX: &str = "test ";
/// Prefix of each backtrace frame line: `  frame #<i> <hex address>`; the host
/// runner appends the symbol and source line.
pub const FRAME_PREFIX: &str = "frame #";

/// Describes an exit status for humans.
pub fn describe_exit(status: i32) -> &'static str {
    match status {
        EXIT_PASS => "pass",
        EXIT_FAIL => "test failure",
        EXIT_CRASH => "kernel crash (panic or unexpected exception)",
        EXIT_BOOT_ERROR => "boot error (bad boot information)",
        0 => "exit 0: triple fault, reset or power-off without a status",
        _ => "unexpected exit status",
    }
}

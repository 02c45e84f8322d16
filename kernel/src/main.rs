//! The Keel kernel image. All code lives in the `kernel` library; this file
//! only links it into a bare-metal executable whose entry point is the
//! architecture's boot code (`kernel/src/arch/<arch>/boot`).
#![cfg_attr(target_os = "none", no_std, no_main)]

use kernel as _;

/// Host builds (clippy, `cargo build --workspace`) produce this stub binary;
/// the kernel itself is built by `cargo xtask build` for a bare-metal target.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("keel: the kernel runs on bare metal; use `cargo xtask run`");
}

//! `keel-rt`: the runtime every Keel user program links.
//!
//! It provides the program entry (`_start`, which hands the root-task
//! information page to the program's `main`, declared with [`entry!`], and
//! ends the thread with `main`'s return value), the system calls (raw
//! `syscall0`..`syscall6` and one typed wrapper per `keel_abi::Syscall`;
//! the IPC calls, which return more than one register, in [`ipc`]),
//! `print!`/`println!` over the debug console, a panic handler, a small heap
//! (so `alloc` works), and threads of the same process.
//!
//! Invariants: all architecture-specific code (inline assembly) lives in
//! `arch/`; everything else is portable. Nothing here panics on a system
//! call's result: errors come back as `keel_abi::Error`.
//!
//! The runtime only exists for Keel's bare-metal targets; on the host (where
//! `cargo clippy --workspace` and `cargo test --workspace` also build it)
//! the crate holds only the portable cores of [`channel`] (the ring) and
//! [`registry`] (the name table and protocol), which are unit-tested there.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", deny(clippy::unwrap_used, clippy::expect_used))]

extern crate alloc;

#[cfg(target_os = "none")]
pub use keel_abi as abi;

#[cfg(target_os = "none")]
#[macro_use]
pub mod console;

#[cfg(target_os = "none")]
mod arch;
pub mod channel;
#[cfg(target_os = "none")]
pub mod device;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
mod heap;
#[cfg(target_os = "none")]
pub mod ipc;
#[cfg(target_os = "none")]
pub mod probe;
pub mod process;
pub mod registry;
#[cfg(target_os = "none")]
pub mod sync;
#[cfg(target_os = "none")]
pub mod syscall;
#[cfg(target_os = "none")]
pub mod thread;
pub mod uart;

#[cfg(target_os = "none")]
pub use entry::root_info;

/// The architecture this program runs on: its name and ELF `e_machine`.
#[cfg(target_os = "none")]
pub use arch::{ELF_MACHINE, NAME as ARCH, minimal_pie_program, minimal_program};

/// Address of the program entry (`_start`), which the ELF header's
/// `e_entry` names.
#[cfg(target_os = "none")]
pub fn entry_address() -> usize {
    arch::_start as *const () as usize
}

//! Keel: a capability-based microkernel.
//!
//! The crate is split in two. Portable logic (boot-information parsing, the
//! command line, allocators, page tables, address spaces, capability spaces,
//! run queues, ELF validation) builds
//! for the host too and is unit-tested there with `cargo test`. Everything
//! that touches hardware (`arch`, the console, the boot path, the test and
//! benchmark runners) builds only for bare-metal targets (`target_os =
//! "none"`).
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

extern crate alloc;

// First, so its macros are visible in every module below.
#[cfg(target_os = "none")]
#[macro_use]
pub mod console;
#[cfg(target_os = "none")]
#[macro_use]
pub mod ktest;

pub mod arena;
pub mod bootinfo;
pub mod cap;
pub mod cmdline;
pub mod mm;
pub mod sched;
pub mod task;

#[cfg(target_os = "none")]
pub mod arch;
#[cfg(target_os = "none")]
pub mod bench;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
pub mod object;
#[cfg(target_os = "none")]
mod panic;
#[cfg(target_os = "none")]
pub mod syscall;
#[cfg(target_os = "none")]
pub mod trap;

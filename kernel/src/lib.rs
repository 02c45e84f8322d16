//! Keel: a capability-based microkernel.
//!
//! The crate is split in two. Portable logic (boot-information parsing, the
//! command line, allocators, page tables, address spaces, capability spaces,
//! run queues, ELF validation, user memory over `mm::user`, kernel objects,
//! the thread lifecycle and scheduler, system-call decoding) builds
//! for the host too and is unit-tested there with `cargo test`. It reaches
//! the hardware only through `arch`, whose contract the host build
//! implements with a stand-in (`arch::host`: a console buffer, host memory
//! as "physical" memory, no user mode). The boot path, the entry points from
//! user mode, the root-task loader, the panic handler and the test and
//! benchmark runners build only for bare-metal targets (`target_os =
//! "none"`).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

extern crate alloc;

// First, so its macros are visible in every module below.
#[macro_use]
pub mod console;
#[macro_use]
pub mod ktest;

pub mod arch;
pub mod arena;
pub mod bench;
pub mod bootinfo;
pub mod cap;
pub mod cmdline;
pub mod mm;
pub mod object;
pub mod sched;
pub mod syscall;
pub mod task;
pub mod trap;

#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
mod panic;

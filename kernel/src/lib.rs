//! Keel: a capability-based microkernel.
//!
//! The crate is split in two. Portable logic (boot-information parsing, the
//! command line, allocators, page tables, address spaces, capability spaces,
//! run queues, ELF validation, user memory over `mm::user`, kernel objects,
//! the thread lifecycle and scheduler, system-call decoding) builds for the
//! host too and is unit-tested there with `cargo test`. It reaches the
//! hardware only through `arch`, whose contract host tests implement with a
//! stand-in (`arch::host`: a console buffer, host memory as "physical"
//! memory, no user mode) compiled only into them. The boot path, the entry
//! points from user mode, the root-task loader, the panic handler and the
//! test and benchmark runners build only for bare-metal targets
//! (`target_os = "none"`).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

extern crate alloc;

// First, so its macros are visible in every module below.
#[cfg(any(test, target_os = "none"))]
#[macro_use]
pub mod console;
#[macro_use]
pub mod ktest;

#[cfg(any(test, target_os = "none"))]
pub mod arch;
pub mod arena;
pub mod bench;
pub mod bootinfo;
pub mod cap;
pub mod cmdline;
pub mod mm;
// The kernel core below reaches the hardware through `arch`: it builds for
// the kernel and, over the host stand-in, for host tests.
#[cfg(any(test, target_os = "none"))]
pub mod object;
pub mod sched;
#[cfg(any(test, target_os = "none"))]
pub mod smp;
#[cfg(any(test, target_os = "none"))]
pub mod syscall;
pub mod task;
#[cfg(any(test, target_os = "none"))]
pub mod time;
#[cfg(any(test, target_os = "none"))]
pub mod trap;

#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod entry;
#[cfg(target_os = "none")]
mod panic;

//! Threads, processes and the root task.
//!
//! Portable and host-tested: ELF validation ([`elf`]) and the run queue
//! ([`runq`]). On the machine: the thread table, scheduler and user-mode
//! entry points (`kernel`), and loading the root task (`root`).

pub mod elf;
pub mod runq;

#[cfg(target_os = "none")]
mod kernel;
#[cfg(target_os = "none")]
pub mod root;
#[cfg(target_os = "none")]
pub use kernel::*;

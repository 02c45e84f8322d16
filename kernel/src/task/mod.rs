//! Threads and processes: the kernel state and the thread lifecycle
//! ([`Kernel`]), loading the root task ([`root`]) and validating its ELF
//! image ([`elf`], portable and host-tested).

pub mod elf;
#[cfg(any(test, target_os = "none"))]
mod kernel;
#[cfg(target_os = "none")]
pub mod root;

#[cfg(any(test, target_os = "none"))]
pub use kernel::{IpcOutcome, Kernel, NOTIFICATION_BITS, Next};

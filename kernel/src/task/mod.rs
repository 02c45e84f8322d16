//! Threads and processes: the kernel state and the thread lifecycle
//! ([`Kernel`]) and loading the root task ([`root`]; its ELF image is
//! validated by the `keel-elf` crate, shared with user space).

#[cfg(any(test, target_os = "none"))]
mod kernel;
#[cfg(target_os = "none")]
pub mod root;

#[cfg(any(test, target_os = "none"))]
pub use kernel::{IpcOutcome, Kernel, NOTIFICATION_BITS, Next};

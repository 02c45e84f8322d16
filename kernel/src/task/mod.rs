//! Threads and processes: the kernel state and the thread lifecycle
//! ([`Kernel`]), loading the root task ([`root`]) and validating its ELF
//! image ([`elf`], portable and host-tested).

pub mod elf;
mod kernel;
#[cfg(target_os = "none")]
pub mod root;

pub use kernel::{Kernel, Next};

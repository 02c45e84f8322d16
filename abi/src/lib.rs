//! The Keel ABI: everything the kernel and user space (and the host runner)
//! must agree on, in one small `no_std` crate that both sides depend on.
//!
//! Invariants: every numeric value here is part of the stable ABI and is
//! documented in `docs/abi.md`; conversions from raw numbers are checked
//! (`TryFrom`), never transmuted.
#![no_std]

pub mod boot;
pub mod cap;
pub mod error;
pub mod harness;
pub mod ipc;
pub mod process;
pub mod syscall;

pub use cap::{CapToken, ObjectType, Rights};
pub use error::Error;
pub use syscall::Syscall;

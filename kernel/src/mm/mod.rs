//! Memory management: the physical frame allocator (and, as the
//! memory-management work lands, page tables, the kernel heap and user
//! address spaces).
//!
//! [`init`] builds the global frame allocator from the boot memory map. Its
//! metadata (about 13 bytes per frame) is carved out of the first usable
//! region large enough, and reached through the direct map.

pub mod frame;
pub mod slab;

#[cfg(target_os = "none")]
mod global;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub use global::*;

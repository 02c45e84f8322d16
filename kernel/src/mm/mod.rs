//! Memory management.
//!
//! Portable, host-tested: the frame allocator ([`frame`]), the slab
//! allocator ([`slab`]), page tables behind one interface ([`paging`]),
//! address-space ids ([`asid`]), memory objects ([`object`]) and user
//! address spaces ([`aspace`]) over a [`machine::Machine`].
//! User memory with the checked copy helpers (`user`) is the kernel's
//! machine: on bare metal over the global frame allocator (`global`), on
//! the host (for host tests) over a stand-in frame source (`host`, host
//! memory under the same names: `alloc_frames`, `frame_stats`,
//! `KernelTables`, ...). Only on the machine: the kernel heap (`heap`) and
//! the kernel's page tables (`kmap`).
//!
//! Boot order: [`init`] builds the global frame allocator from the boot
//! memory map (its metadata, 12 bytes per frame, is carved out of the
//! first usable region large enough and reached through the direct map);
//! `kmap::init` then replaces the boot page tables, after which RAM above
//! the boot direct map's 4 GiB is added and user spaces can be made.

pub mod asid;
pub mod aspace;
pub mod frame;
pub mod kref;
pub mod machine;
pub mod object;
pub mod paging;
pub mod pool;
pub mod slab;
#[cfg(any(test, target_os = "none"))]
pub mod user;

#[cfg(target_os = "none")]
mod global;
#[cfg(target_os = "none")]
pub mod heap;
#[cfg(target_os = "none")]
pub mod kmap;
#[cfg(target_os = "none")]
pub use global::*;

// In host tests, the frame allocator's stand-in under the same names
// (test support, so it lives with the tests).
#[cfg(test)]
#[path = "tests/host.rs"]
mod host;
#[cfg(test)]
pub use host::*;

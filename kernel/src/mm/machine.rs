//! The services address spaces and memory objects need from the machine:
//! frames with reference counts, page-table memory, the kernel's root and
//! TLB invalidation. The kernel implements [`Machine`] over the global frame
//! allocator and the architecture layer (`mm::KernelMachine`); host tests
//! implement it over host memory, which is what keeps `aspace` and `object`
//! portable and tested on the host.

use super::paging::{PteFormat, TableMemory};

/// Frames, page-table memory and TLB maintenance for address spaces and
/// memory objects; implemented by the kernel (`mm::KernelMachine`) and by
/// host-test stand-ins.
pub trait Machine: 'static + Sized {
    /// The page-table entry format.
    type Format: PteFormat;
    /// Where page tables live.
    type Tables: TableMemory;
    /// Root-table entries owned by the kernel and shared into every user
    /// tree (empty where the kernel has a root of its own).
    const KERNEL_ENTRIES: core::ops::Range<usize>;
    /// Whether a new mapping must be flushed from the TLB (the TLB may
    /// cache invalid entries).
    const FLUSH_NEW_ENTRIES: bool;

    /// The page-table memory new trees are allocated from and walked in.
    fn tables() -> Self::Tables;
    /// Physical address of the kernel's root table.
    fn kernel_root() -> u64;
    /// A single frame, contents undefined, with one reference.
    fn alloc_frame() -> Option<u64>;
    /// Fills the 4 KiB frame at `pa` with zeros.
    fn zero_frame(pa: u64);
    /// Copies the 4 KiB frame at `src` into the frame at `dst` (distinct
    /// frames; `dst` is owned by the caller).
    fn copy_frame(dst: u64, src: u64);
    /// Adds a reference to an allocated frame.
    fn share_frame(pa: u64);
    /// Drops a reference; the last one frees the frame.
    fn release_frame(pa: u64);
    /// References to an allocated frame.
    fn frame_refs(pa: u64) -> u32;
    /// Whether the tree at `root` is loaded (so the TLB may cache it).
    fn is_loaded(root: u64) -> bool;
    /// Invalidates the translation of `va` in the loaded address space
    /// `asid` (on every CPU that may cache it).
    fn flush_page(asid: u16, va: usize);
    /// Invalidates everything the TLB may cache for the loaded address
    /// space `asid`, cached walks through its page tables included (after
    /// some of its tables were freed).
    fn flush_space(asid: u16);
    /// Invalidates the TLBs of the CPUs of mask `cpus` (bit per CPU) other
    /// than this one that have the tree at `root` loaded, and waits until
    /// they have (SMP shootdown); returns the CPUs of `cpus` that have it
    /// loaded. The caller keeps only those in the space's mask: the others
    /// flush its id when they next load it.
    fn shootdown(cpus: u64, root: u64) -> u64;
    /// Called before the tree at `root` is freed: the kernel stops using
    /// it (switches away if it is loaded).
    fn release_root(root: u64);
}

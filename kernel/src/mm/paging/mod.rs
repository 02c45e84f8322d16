//! Page tables behind one architecture-neutral interface. Written by hand:
//! it is the kernel's core competence.
//!
//! All three architectures use the same shape: a radix tree of 4 KiB tables
//! of 512 eight-byte entries, four levels deep for 48-bit virtual addresses
//! (x86_64 4-level paging, AArch64 4 KiB granule, RISC-V Sv48), three for
//! 39-bit ones (RISC-V Sv39, where a CPU has no Sv48). What differs is only
//! the bit layout of an entry and the depth ([`PteFormat::levels`]), so the
//! walker here is generic over a [`PteFormat`], and the three formats
//! ([`X86`], [`Arm`], [`RiscV`]) are pure functions, host-tested. The architecture layer picks one as
//! `arch::PageFormat` and provides the hardware operations (loading a root,
//! TLB invalidation) that the walker does not need.
//!
//! Levels are numbered from the leaf: level 0 maps 4 KiB pages, level 1
//! 2 MiB blocks, level 2 1 GiB blocks, level 3 is the root (level 2 in a
//! three-level tree, whose root entries may then be gigapages).
//!
//! Invariants:
//! - The walker never creates a mapping that is both writable and
//!   executable (W^X), for the kernel or for user space.
//! - Every table reachable from a root was allocated from the
//!   [`TableMemory`] the tree is used with, and is freed by
//!   [`PageTable::destroy`] or, once it maps nothing, by
//!   [`PageTable::free_table`] (never the root). A failed `map` frees the tables
//!   it made, so it leaves the tree as it was.
//! - The walker never invalidates TLBs: the caller does, after `unmap` and
//!   `protect`, and after `free_table` also the cached walks through the
//!   freed tables.

mod formats;
pub use formats::{Arm, RiscV, X86};

use crate::mm::kref::ensure;

/// Entries per table.
pub const ENTRIES: usize = 512;

bitflags::bitflags! {
    /// Architecture-neutral mapping attributes. Every mapping is readable.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Attr: u8 {
        /// Writable.
        const WRITE = 1 << 0;
        /// Executable.
        const EXEC = 1 << 1;
        /// Accessible from user mode.
        const USER = 1 << 2;
        /// The same in every address space (kernel mappings): survives
        /// address-space switches in the TLB.
        const GLOBAL = 1 << 3;
        /// Device memory (uncached, no speculation) rather than normal
        /// write-back memory.
        const DEVICE = 1 << 4;
    }
}

/// A page or block size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PageSize {
    /// A 4 KiB page, mapped at level 0.
    Size4K = 0,
    /// A 2 MiB block, mapped at level 1.
    Size2M = 1,
    /// A 1 GiB block, mapped at level 2.
    Size1G = 2,
}

impl PageSize {
    /// The level whose entries map pages of this size.
    pub const fn level(self) -> usize {
        self as usize
    }

    /// Bytes in one page of this size.
    pub const fn bytes(self) -> u64 {
        1 << (12 + 9 * self as u32)
    }

    fn at_level(level: usize) -> Option<PageSize> {
        [PageSize::Size4K, PageSize::Size2M, PageSize::Size1G]
            .get(level)
            .copied()
    }
}

/// A decoded page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Not valid: maps nothing.
    Empty,
    /// Points to the next-level table at this physical address.
    Table(u64),
    /// Maps a page or block.
    Leaf {
        /// Physical address of the page or block (aligned to its size).
        pa: u64,
        /// The mapping's attributes.
        attr: Attr,
    },
}

/// The bit layout of one architecture's page-table entries.
pub trait PteFormat {
    /// Entries at levels above this one cannot be leaves.
    const MAX_LEAF_LEVEL: usize;
    /// Levels of a tree: 4 for 48-bit addresses, 3 for 39-bit ones.
    fn levels() -> usize {
        4
    }
    /// An entry pointing to the table at `pa`; `user` if the subtree maps
    /// user pages.
    fn table(pa: u64, user: bool) -> u64;
    /// A leaf entry at `level` mapping `pa` with `attr`.
    fn leaf(pa: u64, attr: Attr, level: usize) -> u64;
    /// Decodes an entry found at `level`.
    fn decode(pte: u64, level: usize) -> Entry;
}

/// Where page tables live: allocation of zeroed table frames and access to
/// them by physical address.
///
/// # Safety
/// `table` must return a pointer to a valid, exclusively usable 4 KiB table
/// for every `pa` returned by `alloc_table` and not yet passed to
/// `free_table` (and for the root a [`PageTable`] is built over with
/// [`PageTable::from_root`]). `alloc_table` must return zeroed frames.
pub unsafe trait TableMemory {
    /// Physical address of a new zeroed 4 KiB table frame, or `None` when
    /// out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Returns a table frame from `alloc_table`; it must no longer be
    /// referenced by any tree.
    fn free_table(&mut self, pa: u64);
    /// A pointer through which the kernel can access the table at `pa`.
    fn table(&self, pa: u64) -> *mut [u64; ENTRIES];
}

/// Why a page-table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// An address is not aligned to the page size, or the size is not
    /// available on this architecture.
    Misaligned,
    /// The attributes ask for writable and executable at once.
    WriteExec,
    /// Something is mapped there already.
    AlreadyMapped,
    /// Nothing is mapped there.
    NotMapped,
    /// The address is covered by a larger page than the one asked for.
    LargePage,
    /// No frame for a new table.
    OutOfMemory,
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Physical address of `va` itself (not of the page).
    pub pa: u64,
    /// Size of the page or block that maps `va`.
    pub size: PageSize,
    /// Attributes of that page or block.
    pub attr: Attr,
}

/// One page-table tree, identified by the physical address of its root.
pub struct PageTable<F: PteFormat> {
    root: u64,
    _format: core::marker::PhantomData<F>,
}

fn index(va: usize, level: usize) -> usize {
    (va >> (12 + 9 * level)) % ENTRIES
}

impl<F: PteFormat> PageTable<F> {
    /// A new, empty tree.
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        // SAFETY: a fresh zeroed table from `mem` is an empty tree that
        // nothing else uses.
        Ok(unsafe { Self::from_root(root) })
    }

    /// The tree whose root table is at `root`.
    ///
    /// # Safety
    /// `root` and every table reachable from it must be valid tables
    /// reachable through the [`TableMemory`] this tree is used with, and no
    /// other `PageTable` may modify the same tree concurrently.
    pub unsafe fn from_root(root: u64) -> Self {
        PageTable {
            root,
            _format: core::marker::PhantomData,
        }
    }

    /// Physical address of the root table.
    pub fn root(&self) -> u64 {
        self.root
    }

    fn get(mem: &impl TableMemory, table: u64, i: usize) -> u64 {
        // SAFETY: `table` is the root or was decoded from a table entry this
        // walker wrote, so by `TableMemory`'s contract it is a valid table
        // that only this tree uses, and `i % ENTRIES` is in bounds.
        unsafe { (*mem.table(table))[i % ENTRIES] }
    }

    fn set(mem: &impl TableMemory, table: u64, i: usize, value: u64) {
        // SAFETY: as for `get`; callers hold `&mut` to the tree, so no other
        // access to the table is in progress.
        unsafe { (*mem.table(table))[i % ENTRIES] = value }
    }

    /// The table at `level` covering `va`, creating missing tables on the
    /// way down.
    fn walk(
        &mut self,
        mem: &mut impl TableMemory,
        va: usize,
        level: usize,
        user: bool,
    ) -> Result<u64, MapError> {
        let mut table = self.root;
        // The highest entry this walk filled: (table, level, new table).
        let mut made = None;
        for l in (level + 1..F::levels()).rev() {
            table = match F::decode(Self::get(mem, table, index(va, l)), l) {
                Entry::Table(pa) => pa,
                Entry::Leaf { .. } => return Err(MapError::LargePage),
                Entry::Empty => {
                    let Some(pa) = mem.alloc_table() else {
                        // Undo: the tables made lie on one path below `made`.
                        if let Some((parent, pl, first)) = made {
                            Self::set(mem, parent, index(va, pl), 0);
                            Self::free_subtree(mem, first, pl - 1);
                        }
                        return Err(MapError::OutOfMemory);
                    };
                    Self::set(mem, table, index(va, l), F::table(pa, user));
                    made = made.or(Some((table, l, pa)));
                    pa
                }
            };
        }
        Ok(table)
    }

    /// Maps the page of `size` at `va` to `pa`.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        va: usize,
        pa: u64,
        size: PageSize,
        attr: Attr,
    ) -> Result<(), MapError> {
        let write_exec = attr.contains(Attr::WRITE | Attr::EXEC);
        ensure(!write_exec, MapError::WriteExec)?;
        let align = size.bytes();
        let fits = size.level() <= F::MAX_LEAF_LEVEL;
        let aligned = (va as u64).is_multiple_of(align) && pa.is_multiple_of(align);
        ensure(fits && aligned, MapError::Misaligned)?;
        let table = self.walk(mem, va, size.level(), attr.contains(Attr::USER))?;
        let i = index(va, size.level());
        match F::decode(Self::get(mem, table, i), size.level()) {
            Entry::Empty => {
                Self::set(mem, table, i, F::leaf(pa, attr, size.level()));
                Ok(())
            }
            Entry::Table(_) => Err(MapError::LargePage),
            Entry::Leaf { .. } => Err(MapError::AlreadyMapped),
        }
    }

    /// The leaf entry mapping `va`: the table it is in, its level and what
    /// it maps (`LargePage` for a leaf in the root).
    fn leaf(&self, mem: &impl TableMemory, va: usize) -> Result<(u64, usize, Mapping), MapError> {
        let mut table = self.root;
        for l in (0..F::levels()).rev() {
            match F::decode(Self::get(mem, table, index(va, l)), l) {
                Entry::Table(pa) => table = pa,
                Entry::Leaf { pa, attr } => {
                    let size = PageSize::at_level(l).ok_or(MapError::LargePage)?;
                    return Ok((table, l, Mapping { pa, size, attr }));
                }
                Entry::Empty => break,
            }
        }
        Err(MapError::NotMapped)
    }

    /// Removes the mapping of the page at `va` (4 KiB-aligned, or aligned
    /// to the large page that maps it); returns its physical address and
    /// size. The caller invalidates the TLB.
    pub fn unmap(
        &mut self,
        mem: &mut impl TableMemory,
        va: usize,
    ) -> Result<(u64, PageSize), MapError> {
        let (table, level, Mapping { pa, size, .. }) = self.leaf(mem, va)?;
        let aligned = (va as u64).is_multiple_of(size.bytes());
        ensure(aligned, MapError::LargePage)?;
        Self::set(mem, table, index(va, level), 0);
        Ok((pa, size))
    }

    /// Frees the table at `level` (0: the lowest, covering 2 MiB) on the
    /// way to `va`, if there is one and it is not the root, unlinking it
    /// from its parent; whether one was freed. The caller knows it maps
    /// nothing: its whole block lies outside every mapping (address spaces
    /// know this from their regions, without reading the table), and its
    /// lower tables were freed first.
    pub fn free_table(&mut self, mem: &mut impl TableMemory, va: usize, level: usize) -> bool {
        if level + 1 >= F::levels() {
            return false;
        }
        let mut parent = self.root;
        for l in (level + 1..F::levels()).rev() {
            let Entry::Table(child) = F::decode(Self::get(mem, parent, index(va, l)), l) else {
                return false;
            };
            if l == level + 1 {
                Self::set(mem, parent, index(va, l), 0);
                mem.free_table(child);
                return true;
            }
            parent = child;
        }
        false
    }

    /// Changes the attributes of the page mapping `va`; returns its size.
    /// The caller invalidates the TLB.
    pub fn protect(
        &mut self,
        mem: &mut impl TableMemory,
        va: usize,
        attr: Attr,
    ) -> Result<PageSize, MapError> {
        let write_exec = attr.contains(Attr::WRITE | Attr::EXEC);
        ensure(!write_exec, MapError::WriteExec)?;
        let (table, level, Mapping { pa, size, .. }) = self.leaf(mem, va)?;
        Self::set(mem, table, index(va, level), F::leaf(pa, attr, level));
        Ok(size)
    }

    /// How `va` is mapped, if it is.
    pub fn translate(&self, mem: &impl TableMemory, va: usize) -> Option<Mapping> {
        let (.., m) = self.leaf(mem, va).ok()?;
        let offset = va as u64 & (m.size.bytes() - 1);
        Some(Mapping {
            pa: m.pa + offset,
            ..m
        })
    }

    /// Copies root entries `range` from `other`, so both trees share those
    /// subtrees (the kernel half, on architectures with one root for both
    /// halves). Shared subtrees are never freed through this tree.
    pub fn share_root_entries(
        &mut self,
        mem: &mut impl TableMemory,
        other: &PageTable<F>,
        range: core::ops::Range<usize>,
    ) {
        for i in range {
            Self::set(mem, self.root, i, Self::get(mem, other.root, i));
        }
    }

    /// Frees every table of the tree reachable through root entries
    /// `owned` and the root itself. Leaves are not touched: the frames
    /// they map belong to their memory objects.
    pub fn destroy(self, mem: &mut impl TableMemory, owned: core::ops::Range<usize>) {
        for i in owned {
            if let Entry::Table(pa) = F::decode(Self::get(mem, self.root, i), F::levels() - 1) {
                Self::free_subtree(mem, pa, F::levels() - 2);
            }
        }
        mem.free_table(self.root);
    }

    fn free_subtree(mem: &mut impl TableMemory, table: u64, level: usize) {
        if level > 0 {
            for i in 0..ENTRIES {
                if let Entry::Table(pa) = F::decode(Self::get(mem, table, i), level) {
                    Self::free_subtree(mem, pa, level - 1);
                }
            }
        }
        mem.free_table(table);
    }
}

#[cfg(test)]
mod tests;

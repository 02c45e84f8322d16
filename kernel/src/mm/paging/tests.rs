//! Host tests of the walker against each real entry format, over tables
//! kept in host memory.

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

/// Tables in boxes, named by fake physical addresses.
#[derive(Default)]
struct HostTables {
    tables: HashMap<u64, Box<[u64; ENTRIES]>>,
    next: u64,
    limit: Option<usize>,
}

// SAFETY: every address handed out names a live boxed table until freed;
// freeing an unknown or already freed address panics (a test failure).
unsafe impl TableMemory for HostTables {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.limit.is_some_and(|l| self.tables.len() >= l) {
            return None;
        }
        self.next += 4096;
        self.tables.insert(self.next, Box::new([0; ENTRIES]));
        Some(self.next)
    }

    fn free_table(&mut self, pa: u64) {
        assert!(self.tables.remove(&pa).is_some(), "freed {pa:#x} twice");
    }

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        let t: &[u64; ENTRIES] = &self.tables[&pa];
        (t as *const [u64; ENTRIES]).cast_mut()
    }
}

/// Levels of the four-level formats.
const LEVELS: usize = 4;
const RW: Attr = Attr::WRITE;
const USER_RW: Attr = Attr::WRITE.union(Attr::USER);

fn basic<F: PteFormat>() {
    let mut mem = HostTables::default();
    let mut pt = PageTable::<F>::new(&mut mem).unwrap();
    let va = 0x4000_1000;
    assert_eq!(pt.translate(&mem, va), None);
    pt.map(&mut mem, va, 0x8_0000, PageSize::Size4K, USER_RW)
        .unwrap();
    // Root, and one table per lower level.
    assert_eq!(mem.tables.len(), 4);
    let m = pt.translate(&mem, va + 0x123).unwrap();
    assert_eq!(m.pa, 0x8_0123);
    assert_eq!(m.size, PageSize::Size4K);
    assert_eq!(m.attr, USER_RW);
    assert_eq!(
        pt.map(&mut mem, va, 0x9_0000, PageSize::Size4K, RW),
        Err(MapError::AlreadyMapped)
    );
    assert_eq!(
        pt.map(
            &mut mem,
            va + 0x1000,
            0x9_0000,
            PageSize::Size4K,
            RW | Attr::EXEC
        ),
        Err(MapError::WriteExec)
    );
    assert_eq!(
        pt.map(&mut mem, va + 0x10, 0x9_0000, PageSize::Size4K, RW),
        Err(MapError::Misaligned)
    );
    assert_eq!(
        pt.map(&mut mem, 0x20_0000, 0x9_0000, PageSize::Size2M, RW),
        Err(MapError::Misaligned)
    );
    // Protect to read-only + exec.
    let rx = Attr::USER | Attr::EXEC;
    assert_eq!(pt.protect(&mut mem, va, rx), Ok(PageSize::Size4K));
    assert_eq!(pt.translate(&mem, va).unwrap().attr, rx);
    assert_eq!(
        pt.protect(&mut mem, va, RW | Attr::EXEC),
        Err(MapError::WriteExec)
    );
    assert_eq!(pt.unmap(&mut mem, va), Ok((0x8_0000, PageSize::Size4K)));
    assert_eq!(pt.unmap(&mut mem, va), Err(MapError::NotMapped));
    assert_eq!(pt.protect(&mut mem, va, RW), Err(MapError::NotMapped));
    assert_eq!(pt.translate(&mem, va), None);
    // Large pages: a 2 MiB block, then a 1 GiB one.
    pt.map(&mut mem, 0x20_0000, 0x40_0000, PageSize::Size2M, RW)
        .unwrap();
    let m = pt.translate(&mem, 0x20_0000 + 0x1234).unwrap();
    assert_eq!((m.pa, m.size), (0x40_1234, PageSize::Size2M));
    assert_eq!(
        pt.map(&mut mem, 0x20_1000, 0x1000, PageSize::Size4K, RW),
        Err(MapError::LargePage)
    );
    assert_eq!(pt.unmap(&mut mem, 0x20_1000), Err(MapError::LargePage));
    pt.map(&mut mem, 1 << 39, 1 << 30, PageSize::Size1G, Attr::GLOBAL)
        .unwrap();
    let m = pt.translate(&mem, (1 << 39) + 5).unwrap();
    assert_eq!(
        (m.pa, m.size, m.attr),
        ((1 << 30) + 5, PageSize::Size1G, Attr::GLOBAL)
    );
    assert_eq!(pt.unmap(&mut mem, 1 << 39), Ok((1 << 30, PageSize::Size1G)));
    // Kernel-half address (sign-extended).
    let kva = 0xffff_8000_0000_0000usize + 0x1000;
    pt.map(&mut mem, kva, 0x1000, PageSize::Size4K, RW | Attr::GLOBAL)
        .unwrap();
    assert_eq!(pt.translate(&mem, kva).unwrap().pa, 0x1000);
    pt.destroy(&mut mem, 0..ENTRIES);
    assert!(mem.tables.is_empty(), "every table freed");
}

#[test]
fn x86_basic() {
    basic::<X86>();
}

#[test]
fn arm_basic() {
    basic::<Arm>();
}

#[test]
fn riscv_basic() {
    basic::<RiscV>();
}

fn out_of_memory<F: PteFormat>() {
    let mut mem = HostTables {
        limit: Some(2),
        ..Default::default()
    };
    let mut pt = PageTable::<F>::new(&mut mem).unwrap();
    assert_eq!(
        pt.map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, RW),
        Err(MapError::OutOfMemory)
    );
    // The failed map freed the table it made on the way down.
    assert_eq!(mem.tables.len(), 1);
    // One level further, then a failure below an existing table.
    mem.limit = Some(3);
    assert_eq!(
        pt.map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, RW),
        Err(MapError::OutOfMemory)
    );
    assert_eq!(mem.tables.len(), 1, "both new tables freed");
    mem.limit = Some(4);
    pt.map(&mut mem, 0x1000, 0x1000, PageSize::Size4K, RW)
        .unwrap();
    mem.limit = Some(5);
    assert_eq!(
        pt.map(&mut mem, 0x4000_0000, 0x1000, PageSize::Size4K, RW),
        Err(MapError::OutOfMemory),
        "needs two new tables, one allowed"
    );
    assert_eq!(mem.tables.len(), 4);
    assert_eq!(pt.translate(&mem, 0x1000).map(|m| m.pa), Some(0x1000));
    pt.destroy(&mut mem, 0..ENTRIES);
    assert!(mem.tables.is_empty());
}

#[test]
fn out_of_memory_is_an_error() {
    out_of_memory::<X86>();
    out_of_memory::<Arm>();
    out_of_memory::<RiscV>();
}

#[test]
fn shared_root_entries_are_not_freed() {
    let mut mem = HostTables::default();
    let mut kernel = PageTable::<X86>::new(&mut mem).unwrap();
    kernel
        .map(
            &mut mem,
            0xffff_8000_0000_0000,
            0,
            PageSize::Size2M,
            RW | Attr::GLOBAL,
        )
        .unwrap();
    let mut user = PageTable::<X86>::new(&mut mem).unwrap();
    user.share_root_entries(&mut mem, &kernel, 256..512);
    assert_eq!(
        user.translate(&mem, 0xffff_8000_0000_0042).unwrap().pa,
        0x42
    );
    user.map(&mut mem, 0x1000, 0x5000, PageSize::Size4K, USER_RW)
        .unwrap();
    let before = mem.tables.len();
    user.destroy(&mut mem, 0..256);
    // The user root and its three lower tables went; the kernel's stay.
    assert_eq!(mem.tables.len(), before - 4);
    assert_eq!(
        kernel.translate(&mem, 0xffff_8000_0000_0042).unwrap().pa,
        0x42
    );
}

fn free_table_unlinks_one_table<F: PteFormat>() {
    let mut mem = HostTables::default();
    let mut pt = PageTable::<F>::new(&mut mem).unwrap();
    let (a, b) = (0x4000_0000, 0x4000_1000);
    pt.map(&mut mem, a, 0x1000, PageSize::Size4K, USER_RW)
        .unwrap();
    pt.map(&mut mem, b, 0x2000, PageSize::Size4K, USER_RW)
        .unwrap();
    pt.map(&mut mem, 0x20_0000, 0x20_0000, PageSize::Size2M, USER_RW)
        .unwrap();
    // Root, one 512 GiB table, two 1 GiB ones, one 2 MiB one.
    assert_eq!(mem.tables.len(), 5);
    pt.unmap(&mut mem, a).unwrap();
    pt.unmap(&mut mem, b).unwrap();
    assert!(pt.free_table(&mut mem, b, 0), "the 2 MiB table of `b`");
    assert!(!pt.free_table(&mut mem, b, 0), "gone already");
    assert!(pt.free_table(&mut mem, b, 1), "then its 1 GiB table");
    assert_eq!(mem.tables.len(), 3);
    assert!(
        !pt.free_table(&mut mem, 0x20_0000, 0),
        "a 2 MiB page, no table"
    );
    assert!(!pt.free_table(&mut mem, 0, LEVELS - 1), "never the root");
    assert_eq!(
        pt.unmap(&mut mem, 0x20_0000),
        Ok((0x20_0000, PageSize::Size2M))
    );
    assert!(pt.free_table(&mut mem, 0x20_0000, 1));
    assert!(pt.free_table(&mut mem, 0x20_0000, 2));
    assert_eq!(mem.tables.len(), 1, "only the root is left");
    assert_eq!(pt.translate(&mem, 0x20_0000), None);
    // The tree is usable again.
    pt.map(&mut mem, a, 0x1000, PageSize::Size4K, USER_RW)
        .unwrap();
    assert_eq!(pt.translate(&mem, a).map(|m| m.pa), Some(0x1000));
    pt.destroy(&mut mem, 0..ENTRIES);
    assert!(mem.tables.is_empty());
}

#[test]
fn free_table_unlinks_exactly_one_table() {
    free_table_unlinks_one_table::<X86>();
    free_table_unlinks_one_table::<Arm>();
    free_table_unlinks_one_table::<RiscV>();
}

/// Tables a tree mapping the 4 KiB pages `vas` needs: the root, and one
/// per distinct 512 GiB, 1 GiB and 2 MiB block.
fn tables_for<'a>(vas: impl Iterator<Item = &'a usize> + Clone) -> usize {
    1 + (1..LEVELS)
        .map(|l| {
            let shift = 12 + 9 * l;
            vas.clone()
                .map(|va| va >> shift)
                .collect::<std::collections::HashSet<_>>()
                .len()
        })
        .sum::<usize>()
}

fn attrs() -> impl Strategy<Value = Attr> {
    (0u8..32).prop_map(Attr::from_bits_truncate)
}

fn roundtrip<F: PteFormat>(pa: u64, attr: Attr, level: usize, ignore: Attr) {
    let pa = pa & !((1u64 << (12 + 9 * level)) - 1);
    let e = F::leaf(pa, attr, level);
    assert_eq!(
        F::decode(e, level),
        Entry::Leaf {
            pa,
            attr: attr - ignore
        }
    );
    let t = F::table(pa & !0xfff, attr.contains(Attr::USER));
    if level > 0 {
        assert_eq!(F::decode(t, level), Entry::Table(pa & !0xfff));
    }
    assert_eq!(F::decode(0, level), Entry::Empty);
}

proptest! {
    #[test]
    fn entries_round_trip(pa in 0u64..(1 << 48), attr in attrs(), level in 0usize..3) {
        roundtrip::<X86>(pa, attr, level, Attr::empty());
        roundtrip::<Arm>(pa, attr, level, Attr::empty());
        roundtrip::<RiscV>(pa, attr, level, Attr::DEVICE);
    }

    /// Random map/unmap sequences, with the tables the model says are empty
    /// freed after each unmap (lowest first) and a table
    /// allowance that sometimes runs out, agree with a model map; the
    /// tree holds exactly the tables the model's pages need.
    #[test]
    fn walker_matches_model(
        ops in prop::collection::vec((0usize..64, any::<bool>(), attrs()), 1..200),
        limit in prop::option::of(1usize..16),
    ) {
        let mut mem = HostTables { limit, ..Default::default() };
        let mut pt = PageTable::<RiscV>::new(&mut mem).unwrap();
        let mut model = HashMap::new();
        for (page, map, attr) in ops {
            // Spread pages over several tables at every level.
            let va = page * 0x1000 + (page % 4) * (1 << 30) + (page % 3) * (1 << 39);
            let attr = attr - Attr::DEVICE;
            if map {
                let r = pt.map(&mut mem, va, page as u64 * 0x1000, PageSize::Size4K, attr);
                let needed = tables_for(model.keys().chain([&va]));
                let want = if attr.contains(Attr::WRITE | Attr::EXEC) {
                    Err(MapError::WriteExec)
                } else if model.contains_key(&va) {
                    Err(MapError::AlreadyMapped)
                } else if limit.is_some_and(|l| needed > l) {
                    Err(MapError::OutOfMemory)
                } else {
                    Ok(())
                };
                prop_assert_eq!(r, want);
                if want.is_ok() {
                    model.insert(va, attr);
                }
            } else {
                let r = pt.unmap(&mut mem, va);
                let had = model.remove(&va);
                // Free each table on the way to `va` whose block no mapped
                // page of the model is in.
                let mut freed = 0;
                for level in 0..LEVELS - 1 {
                    let shift = 21 + 9 * level;
                    if !model.keys().any(|k| k >> shift == va >> shift) {
                        freed += usize::from(pt.free_table(&mut mem, va, level));
                    }
                }
                match had {
                    Some(_) => prop_assert_eq!(r, Ok((page as u64 * 0x1000, PageSize::Size4K))),
                    None => {
                        prop_assert_eq!(r, Err(MapError::NotMapped));
                        prop_assert_eq!(freed, 0);
                    }
                }
            }
            prop_assert_eq!(mem.tables.len(), tables_for(model.keys()));
            for (&va, &attr) in &model {
                prop_assert_eq!(pt.translate(&mem, va).map(|m| m.attr), Some(attr));
            }
        }
        pt.destroy(&mut mem, 0..ENTRIES);
        prop_assert!(mem.tables.is_empty(), "every table freed");
    }
}

/// RISC-V's entries in a three-level tree, as `RiscV` is after
/// `RiscV::use_sv39` (without touching that global switch).
struct Sv39;

impl PteFormat for Sv39 {
    const MAX_LEAF_LEVEL: usize = RiscV::MAX_LEAF_LEVEL;
    fn levels() -> usize {
        3
    }
    fn table(pa: u64, user: bool) -> u64 {
        RiscV::table(pa, user)
    }
    fn leaf(pa: u64, attr: Attr, level: usize) -> u64 {
        RiscV::leaf(pa, attr, level)
    }
    fn decode(pte: u64, level: usize) -> Entry {
        RiscV::decode(pte, level)
    }
}

#[test]
fn sv39_trees_are_a_level_shallower_with_gigapages_in_the_root() {
    let mut mem = HostTables::default();
    let mut pt = PageTable::<Sv39>::new(&mut mem).unwrap();
    let (user, kernel) = (0x40_0000usize, 0xffff_ffc0_0000_0000usize);
    pt.map(&mut mem, user, 0x8_0000, PageSize::Size4K, USER_RW)
        .unwrap();
    // The root, a 1 GiB table and a 2 MiB one: one fewer than Sv48.
    assert_eq!(mem.tables.len(), 3);
    // The kernel half's 1 GiB pages are root entries (256 and up).
    let global = RW | Attr::GLOBAL;
    pt.map(&mut mem, kernel, 0, PageSize::Size1G, global)
        .unwrap();
    assert_eq!(mem.tables.len(), 3);
    let root = *mem.tables[&pt.root()];
    let leaf = Entry::Leaf {
        pa: 0,
        attr: global,
    };
    assert_eq!(RiscV::decode(root[256], 2), leaf);
    assert!(matches!(RiscV::decode(root[0], 2), Entry::Table(_)));
    let m = pt.translate(&mem, kernel + 0x42).unwrap();
    assert_eq!((m.pa, m.size), (0x42, PageSize::Size1G));
    assert_eq!(pt.translate(&mem, user + 5).map(|m| m.pa), Some(0x8_0005));
    assert!(!pt.free_table(&mut mem, user, 2), "never the root");
    // Sv48 puts the same two mappings under root entries 0 and 511.
    let mut mem48 = HostTables::default();
    let mut pt48 = PageTable::<RiscV>::new(&mut mem48).unwrap();
    pt48.map(&mut mem48, kernel, 0, PageSize::Size1G, global)
        .unwrap();
    let root48 = *mem48.tables[&pt48.root()];
    assert!(matches!(RiscV::decode(root48[511], 3), Entry::Table(_)));
    assert_eq!(
        pt48.translate(&mem48, kernel + 0x42).map(|m| m.pa),
        Some(0x42)
    );
    // Destroying the user half frees its two tables and the root, not the
    // kernel's gigapage (a leaf).
    assert_eq!(pt.unmap(&mut mem, user), Ok((0x8_0000, PageSize::Size4K)));
    pt.destroy(&mut mem, 0..256);
    assert!(mem.tables.is_empty());
}

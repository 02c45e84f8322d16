//! The page-table entry layouts of the three architectures, as pure
//! functions (host-tested). Each architecture's `arch` module names its
//! format as `arch::PageFormat`. The one state is RISC-V's depth, set once
//! at boot ([`RiscV::use_sv39`]).
//!
//! Every leaf is created with its accessed (and, where writable, dirty) bit
//! already set, so no architecture needs hardware or software A/D updates.

use super::{Attr, Entry, PteFormat};
use core::sync::atomic::{AtomicBool, Ordering};

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// x86_64 4-level paging (Intel SDM vol. 3 §4.5). Device memory uses
/// PCD|PWT, which is uncached with the default PAT.
pub struct X86;

mod x86 {
    pub const P: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    pub const U: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const A: u64 = 1 << 5;
    pub const D: u64 = 1 << 6;
    pub const PS: u64 = 1 << 7;
    pub const G: u64 = 1 << 8;
    pub const NX: u64 = 1 << 63;
}

impl PteFormat for X86 {
    const MAX_LEAF_LEVEL: usize = 2;

    fn table(pa: u64, user: bool) -> u64 {
        (pa & ADDR_MASK) | x86::P | x86::W | if user { x86::U } else { 0 }
    }

    fn leaf(pa: u64, attr: Attr, level: usize) -> u64 {
        let mut e = (pa & ADDR_MASK) | x86::P | x86::A | x86::D;
        let bits = [
            (Attr::WRITE, x86::W),
            (Attr::USER, x86::U),
            (Attr::GLOBAL, x86::G),
            (Attr::DEVICE, x86::PCD | x86::PWT),
        ];
        for (_, b) in bits.into_iter().filter(|&(a, _)| attr.contains(a)) {
            e |= b;
        }
        if !attr.contains(Attr::EXEC) {
            e |= x86::NX;
        }
        if level > 0 {
            e |= x86::PS;
        }
        e
    }

    fn decode(pte: u64, level: usize) -> Entry {
        if pte & x86::P == 0 {
            return Entry::Empty;
        }
        if level > 0 && pte & x86::PS == 0 {
            return Entry::Table(pte & ADDR_MASK);
        }
        let mut attr = Attr::empty();
        attr.set(Attr::WRITE, pte & x86::W != 0);
        attr.set(Attr::USER, pte & x86::U != 0);
        attr.set(Attr::GLOBAL, pte & x86::G != 0);
        attr.set(Attr::DEVICE, pte & x86::PCD != 0);
        attr.set(Attr::EXEC, pte & x86::NX == 0);
        // Large pages keep their PAT bit at bit 12; the address is aligned.
        let mask = ADDR_MASK & !(u64::from(level > 0) << 12);
        Entry::Leaf {
            pa: pte & mask,
            attr,
        }
    }
}

/// AArch64 stage-1 translation, 4 KiB granule (Arm ARM D8.3). Memory
/// attribute index 0 is Device-nGnRE and 1 Normal write-back, as the boot
/// code programs MAIR_EL1. User pages are never executable by the kernel
/// (PXN); kernel pages never by user space (UXN).
pub struct Arm;

mod arm {
    pub const VALID: u64 = 1 << 0;
    /// Table at levels 3..1, page at level 0; clear for a block.
    pub const TABLE_OR_PAGE: u64 = 1 << 1;
    pub const ATTR_NORMAL: u64 = 1 << 2;
    /// AP[1]: EL0 access.
    pub const AP_USER: u64 = 1 << 6;
    /// AP[2]: read-only.
    pub const AP_RO: u64 = 1 << 7;
    pub const SH_INNER: u64 = 0b11 << 8;
    pub const AF: u64 = 1 << 10;
    pub const NG: u64 = 1 << 11;
    pub const PXN: u64 = 1 << 53;
    pub const UXN: u64 = 1 << 54;
}

impl PteFormat for Arm {
    const MAX_LEAF_LEVEL: usize = 2;

    fn table(pa: u64, _user: bool) -> u64 {
        (pa & ADDR_MASK) | arm::VALID | arm::TABLE_OR_PAGE
    }

    fn leaf(pa: u64, attr: Attr, level: usize) -> u64 {
        let mut e = (pa & ADDR_MASK) | arm::VALID | arm::AF;
        if level == 0 {
            e |= arm::TABLE_OR_PAGE;
        }
        if !attr.contains(Attr::DEVICE) {
            e |= arm::ATTR_NORMAL | arm::SH_INNER;
        }
        if !attr.contains(Attr::WRITE) {
            e |= arm::AP_RO;
        }
        if !attr.contains(Attr::GLOBAL) {
            e |= arm::NG;
        }
        // Never executable by the other level; by its own unless `EXEC`.
        let (own, other) = if attr.contains(Attr::USER) {
            e |= arm::AP_USER;
            (arm::UXN, arm::PXN)
        } else {
            (arm::PXN, arm::UXN)
        };
        if !attr.contains(Attr::EXEC) {
            e |= own;
        }
        e | other
    }

    fn decode(pte: u64, level: usize) -> Entry {
        if pte & arm::VALID == 0 {
            return Entry::Empty;
        }
        let page_bit = pte & arm::TABLE_OR_PAGE != 0;
        if level > 0 && page_bit {
            return Entry::Table(pte & ADDR_MASK);
        }
        if level == 0 && !page_bit {
            // Reserved encoding: treat as invalid.
            return Entry::Empty;
        }
        let user = pte & arm::AP_USER != 0;
        let mut attr = Attr::empty();
        attr.set(Attr::WRITE, pte & arm::AP_RO == 0);
        attr.set(Attr::USER, user);
        attr.set(Attr::GLOBAL, pte & arm::NG == 0);
        attr.set(Attr::DEVICE, pte & arm::ATTR_NORMAL == 0);
        let xn = if user { arm::UXN } else { arm::PXN };
        attr.set(Attr::EXEC, pte & xn == 0);
        Entry::Leaf {
            pa: pte & ADDR_MASK,
            attr,
        }
    }
}

/// RISC-V Sv48, or Sv39 after [`RiscV::use_sv39`] (privileged spec §4.4,
/// §4.5: the same entries, one level fewer). Without Svpbmt there is no
/// memory type in the entry: [`Attr::DEVICE`] is carried by the physical
/// memory attributes of the platform, so it does not round-trip.
pub struct RiscV;

static SV39: AtomicBool = AtomicBool::new(false);

impl RiscV {
    /// From now on trees are Sv39 (three levels): the boot code found no
    /// Sv48, before any tree is built.
    pub fn use_sv39() {
        SV39.store(true, Ordering::Relaxed);
    }
}

mod rv {
    pub const V: u64 = 1 << 0;
    pub const R: u64 = 1 << 1;
    pub const W: u64 = 1 << 2;
    pub const X: u64 = 1 << 3;
    pub const U: u64 = 1 << 4;
    pub const G: u64 = 1 << 5;
    pub const A: u64 = 1 << 6;
    pub const D: u64 = 1 << 7;
    pub const PPN_SHIFT: u32 = 10;
    pub const PPN_MASK: u64 = (1 << 44) - 1;
}

fn rv_pa(pte: u64) -> u64 {
    ((pte >> rv::PPN_SHIFT) & rv::PPN_MASK) << 12
}

fn rv_ppn(pa: u64) -> u64 {
    ((pa >> 12) & rv::PPN_MASK) << rv::PPN_SHIFT
}

impl PteFormat for RiscV {
    const MAX_LEAF_LEVEL: usize = 2;

    fn levels() -> usize {
        if SV39.load(Ordering::Relaxed) { 3 } else { 4 }
    }

    fn table(pa: u64, _user: bool) -> u64 {
        rv_ppn(pa) | rv::V
    }

    fn leaf(pa: u64, attr: Attr, _level: usize) -> u64 {
        let mut e = rv_ppn(pa) | rv::V | rv::R | rv::A;
        let bits = [
            (Attr::WRITE, rv::W | rv::D),
            (Attr::EXEC, rv::X),
            (Attr::USER, rv::U),
            (Attr::GLOBAL, rv::G),
        ];
        for (_, b) in bits.into_iter().filter(|&(a, _)| attr.contains(a)) {
            e |= b;
        }
        e
    }

    fn decode(pte: u64, _level: usize) -> Entry {
        if pte & rv::V == 0 {
            return Entry::Empty;
        }
        if pte & (rv::R | rv::W | rv::X) == 0 {
            return Entry::Table(rv_pa(pte));
        }
        let mut attr = Attr::empty();
        attr.set(Attr::WRITE, pte & rv::W != 0);
        attr.set(Attr::EXEC, pte & rv::X != 0);
        attr.set(Attr::USER, pte & rv::U != 0);
        attr.set(Attr::GLOBAL, pte & rv::G != 0);
        Entry::Leaf {
            pa: rv_pa(pte),
            attr,
        }
    }
}

//! Boot information: what the firmware or boot loader tells the kernel, in
//! one typed form whatever the boot protocol (Multiboot and ACPI on x86, a
//! device tree on AArch64 and RISC-V).
//!
//! Invariants of a [`MemoryMap`]: regions are sorted by start address, never
//! overlap, are never empty, and adjacent regions of the same kind are merged.
//! Usable regions are page-aligned (shrunk inwards); everything the kernel
//! must not hand out (its own image, the boot-information blobs, boot modules,
//! firmware reservations) is carved out of the usable regions.
//!
//! All parsing here treats its input as untrusted: malformed input yields a
//! [`BootInfoError`], never a panic. No `unsafe` here: memory is read only
//! through the architecture's [`PhysReader`].
#![forbid(unsafe_code)]

pub mod acpi;
pub mod dtb;
pub mod multiboot;
pub mod numa;

pub use numa::{NumaMap, NumaRange};

use arrayvec::ArrayVec;

/// Size of the smallest page on every supported architecture.
pub const PAGE_SIZE: u64 = 4096;
/// Most regions a memory map holds. Real firmware reports a few dozen.
pub const MAX_REGIONS: usize = 128;

/// Read access to physical memory holding boot information. The kernel
/// reads through its direct map; host tests feed byte buffers.
pub trait PhysReader<'a> {
    /// The `len` bytes at physical address `addr`, or `None` if any of them
    /// cannot be read (outside RAM the reader covers, or the range wraps).
    fn bytes(&self, addr: u64, len: u64) -> Option<&'a [u8]>;
}

/// What a physical region holds. Ordered by precedence: when two input
/// regions overlap, the output takes the kind that compares greater, so any
/// reservation wins over `Usable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RegionKind {
    /// Free RAM the kernel may allocate.
    Usable,
    /// ACPI tables the OS may reclaim once it has read them.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Reserved by firmware or hardware (including device-tree
    /// `/memreserve/` entries and `/reserved-memory` nodes).
    Reserved,
    /// RAM reported defective.
    Bad,
    /// The boot-information blob itself (device tree, Multiboot structures).
    BootInfo,
    /// A module or initial RAM disk loaded by the boot loader.
    BootModule,
    /// The kernel image.
    Kernel,
}

impl RegionKind {
    /// A short lower-case name for the boot banner.
    pub const fn name(self) -> &'static str {
        match self {
            RegionKind::Usable => "usable",
            RegionKind::AcpiReclaimable => "acpi-reclaim",
            RegionKind::AcpiNvs => "acpi-nvs",
            RegionKind::Reserved => "reserved",
            RegionKind::Bad => "bad",
            RegionKind::BootInfo => "boot-info",
            RegionKind::BootModule => "boot-module",
            RegionKind::Kernel => "kernel",
        }
    }
}

/// A physical address range `[start, end)` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    /// First physical address in the region (inclusive).
    pub start: u64,
    /// Physical address just past the region (exclusive).
    pub end: u64,
    /// What the region holds.
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// A region from a start address and a length; `None` if it wraps.
    pub fn from_len(start: u64, len: u64, kind: RegionKind) -> Option<MemoryRegion> {
        let end = start.checked_add(len)?;
        Some(MemoryRegion { start, end, kind })
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the region is empty.
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Why boot information could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// No boot-information pointer, or the boot loader's magic value is wrong.
    Missing(&'static str),
    /// The blob is shorter than its own header says, or a structure in it
    /// runs past its end.
    Truncated(&'static str),
    /// A structure has an impossible value.
    Malformed(&'static str),
    /// The firmware reported no usable RAM at all.
    NoMemoryMap,
    /// More regions than [`MAX_REGIONS`].
    TooManyRegions,
    /// The command line is not valid UTF-8.
    CmdlineNotUtf8,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Missing(what) => write!(f, "boot information missing: {what}"),
            Self::Truncated(what) => write!(f, "boot information truncated: {what}"),
            Self::Malformed(what) => write!(f, "boot information malformed: {what}"),
            Self::NoMemoryMap => write!(f, "no usable memory reported by the firmware"),
            Self::TooManyRegions => write!(f, "memory map has more than {MAX_REGIONS} regions"),
            Self::CmdlineNotUtf8 => write!(f, "kernel command line is not UTF-8"),
        }
    }
}

/// The little-endian `u32` at `off` in `b`, if it lies inside.
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The little-endian `u64` at `off` in `b`, if it lies inside.
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Appends `r` to `regions`; [`BootInfoError::TooManyRegions`] if full.
fn push<const N: usize>(
    regions: &mut ArrayVec<MemoryRegion, N>,
    r: MemoryRegion,
) -> Result<(), BootInfoError> {
    regions
        .try_push(r)
        .map_err(|_| BootInfoError::TooManyRegions)
}

/// The elementary intervals `(start, end)` of `ranges`, in address order:
/// the pieces between consecutive distinct boundaries, over each of which
/// the set of covering ranges is constant. `N` holds every boundary.
fn elementary<const N: usize>(
    ranges: impl Iterator<Item = (u64, u64)>,
) -> impl Iterator<Item = (u64, u64)> {
    let mut bounds: ArrayVec<u64, N> = ranges.flat_map(|(start, end)| [start, end]).collect();
    bounds.sort_unstable();
    (1..bounds.len())
        .map(move |i| (bounds[i - 1], bounds[i]))
        .filter(|(lo, hi)| lo != hi)
}

/// The normalised physical memory map (see the module invariants).
#[derive(Clone, Debug, Default)]
pub struct MemoryMap {
    regions: ArrayVec<MemoryRegion, MAX_REGIONS>,
}

impl MemoryMap {
    /// Builds the map from raw firmware regions plus the kernel's own
    /// reservations. Input regions may overlap and come in any order; empty
    /// ones are ignored. Where regions overlap, the greater [`RegionKind`]
    /// wins. Fails with [`BootInfoError::NoMemoryMap`] when no usable page
    /// remains and [`BootInfoError::TooManyRegions`] when the result or the
    /// input does not fit.
    pub fn build(raw: impl IntoIterator<Item = MemoryRegion>) -> Result<MemoryMap, BootInfoError> {
        let mut input: ArrayVec<MemoryRegion, { 2 * MAX_REGIONS }> = ArrayVec::new();
        for r in raw.into_iter().filter(|r| !r.is_empty()) {
            push(&mut input, r)?;
        }
        let mut map = MemoryMap::default();
        let bounds = input.iter().map(|r| (r.start, r.end));
        for (start, end) in elementary::<{ 4 * MAX_REGIONS }>(bounds) {
            let covering = input.iter().filter(|r| r.start <= start && end <= r.end);
            if let Some(kind) = covering.map(|r| r.kind).max() {
                map.push_merged(MemoryRegion { start, end, kind })?;
            }
        }
        map.align_usable();
        if map.usable_bytes() == 0 {
            return Err(BootInfoError::NoMemoryMap);
        }
        Ok(map)
    }

    fn push_merged(&mut self, r: MemoryRegion) -> Result<(), BootInfoError> {
        if let Some(last) = self.regions.last_mut()
            && last.end == r.start
            && last.kind == r.kind
        {
            last.end = r.end;
            return Ok(());
        }
        push(&mut self.regions, r)
    }

    /// Shrinks usable regions to whole pages; a usable region with no whole
    /// page left is dropped (its bytes are simply not reported).
    fn align_usable(&mut self) {
        for r in self.regions.iter_mut() {
            if r.kind == RegionKind::Usable {
                let start = r.start.checked_next_multiple_of(PAGE_SIZE);
                (r.start, r.end) = (start.unwrap_or(u64::MAX), r.end / PAGE_SIZE * PAGE_SIZE);
            }
        }
        self.regions.retain(|r| r.start < r.end);
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions
    }

    /// Usable regions only.
    pub fn usable(&self) -> impl Iterator<Item = &MemoryRegion> {
        self.regions.iter().filter(|r| r.kind == RegionKind::Usable)
    }

    /// Total usable bytes.
    pub fn usable_bytes(&self) -> u64 {
        self.usable().map(MemoryRegion::len).sum()
    }

    /// Total RAM: usable plus every kind that occupies RAM (kernel, modules,
    /// boot info, reclaimable ACPI), excluding firmware/device reservations.
    pub fn ram_bytes(&self) -> u64 {
        self.regions
            .iter()
            .filter(|r| {
                matches!(
                    r.kind,
                    RegionKind::Usable
                        | RegionKind::AcpiReclaimable
                        | RegionKind::BootInfo
                        | RegionKind::BootModule
                        | RegionKind::Kernel
                )
            })
            .map(MemoryRegion::len)
            .sum()
    }
}

/// Everything the portable kernel needs to know from the boot path.
#[derive(Clone, Debug)]
pub struct BootInfo<'a> {
    /// Which protocol delivered this information, e.g. "multiboot1".
    pub protocol: &'static str,
    /// The normalised physical memory map.
    pub memory: MemoryMap,
    /// The raw kernel command line (parsed by [`crate::cmdline`]).
    pub cmdline: &'a str,
    /// Number of CPUs the firmware describes (at least 1).
    pub cpu_count: usize,
    /// Hardware ids of the enabled CPUs the firmware describes, in its
    /// order, at most [`MAX_CPUS`] (x86 local APIC ids from the MADT,
    /// AArch64 MPIDR affinity values and RISC-V hart ids from the device
    /// tree's `/cpus/cpu@*` `reg`); empty when the firmware lists none.
    pub cpu_ids: ArrayVec<u64, MAX_CPUS>,
    /// How to call PSCI (AArch64: the device tree's `/psci` `method`).
    pub psci: Option<Psci>,
    /// NUMA node of each memory range (ACPI SRAT, device-tree
    /// `numa-node-id`); empty when the firmware describes none (one node).
    pub numa: NumaMap,
    /// Frequency of the architecture's clock counter in Hz, where the
    /// firmware states it (device tree `/cpus/timebase-frequency`, which
    /// RISC-V's `time` counter runs at); `None` otherwise.
    pub timebase_hz: Option<u64>,
    /// The interrupt hardware the firmware describes (ACPI MADT, device
    /// tree); `Default` (nothing) when it describes none.
    pub irq: InterruptHw,
    /// A 32-bit direct-colour framebuffer the firmware set up (Multiboot 2
    /// tag 8, a device tree's `/chosen/framebuffer`): its physical address
    /// and layout. The kernel log is drawn on it (`console`).
    pub framebuffer: Option<(u64, keel_fb::Mode)>,
}

/// The most CPUs Keel runs on (more are reported and left off).
pub const MAX_CPUS: usize = 16;

/// The PSCI conduit (AArch64 firmware calls for CPU bring-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Psci {
    /// `hvc #0` (firmware in EL2, QEMU's default at EL1).
    Hvc,
    /// `smc #0` (firmware in EL3).
    Smc,
}

/// A physical register window: `(base, length)` in bytes.
pub type Window = (u64, u64);

/// The interrupt controller the firmware describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Controller {
    /// x86: the local APIC's physical base (the MADT's, or its 64-bit
    /// override entry) and the I/O APICs.
    Apic {
        /// Local APIC register page.
        lapic: u64,
        /// I/O APICs: register window base and first GSI.
        ioapics: ArrayVec<IoApic, 4>,
    },
    /// AArch64 GICv2: distributor and CPU interface.
    GicV2 {
        /// Distributor (GICD).
        dist: Window,
        /// CPU interface (GICC).
        cpu: Window,
    },
    /// AArch64 GICv3: distributor and the redistributor region.
    GicV3 {
        /// Distributor (GICD).
        dist: Window,
        /// Redistributors (GICR), 128 KiB per CPU.
        redist: Window,
    },
    /// RISC-V PLIC.
    Plic {
        /// The register window.
        regs: Window,
        /// Number of interrupt sources (`riscv,ndev`).
        sources: u32,
        /// The first supervisor external interrupt context (the boot
        /// hart's, unless the tree says otherwise: `contexts`).
        context: u32,
        /// Each CPU's supervisor external context, in `cpu_ids` order
        /// (OpenSBI boots on any hart).
        contexts: [Option<u32>; MAX_CPUS],
    },
}

/// One x86 I/O APIC (MADT type 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// Physical base of its register window (4 KiB).
    pub base: u64,
    /// The first global system interrupt it serves.
    pub gsi_base: u32,
}

/// How an interrupt line signals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trigger {
    /// Level-triggered (else edge).
    pub level: bool,
    /// Active low (else active high).
    pub active_low: bool,
}

/// An interrupt line: its number in the controller's space (x86 GSI, GIC
/// INTID, PLIC source) and how it signals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// x86 GSI, GIC INTID (PPI n is 16 + n, SPI n is 32 + n), PLIC source.
    pub number: u32,
    /// Edge or level, polarity.
    pub trigger: Trigger,
}

/// The interrupt hardware the firmware describes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterruptHw {
    /// The interrupt controller, if one is described.
    pub controller: Option<Controller>,
    /// AArch64: the EL1 virtual timer's interrupt (the third entry of the
    /// device tree's `/timer` `interrupts`); `None` elsewhere.
    pub timer: Option<Line>,
    /// The console UART's receive interrupt: x86 ISA IRQ 4 after the
    /// MADT's source overrides, the PL011's or the 16550's device-tree
    /// `interrupts`.
    pub uart: Option<Line>,
}

impl InterruptHw {
    /// The controller's register windows, for the kernel's page tables.
    pub fn windows(&self) -> ArrayVec<Window, 8> {
        let mut out = ArrayVec::new();
        match &self.controller {
            Some(Controller::Apic { lapic, ioapics }) => {
                let bases =
                    core::iter::once(*lapic).chain(ioapics.iter().take(7).map(|io| io.base));
                out.extend(bases.map(|base| (base, PAGE_SIZE)));
            }
            Some(Controller::GicV2 { dist, cpu }) => out.extend([*dist, *cpu]),
            Some(Controller::GicV3 { dist, redist }) => out.extend([*dist, *redist]),
            Some(Controller::Plic { regs, .. }) => out.push(*regs),
            None => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg(start: u64, end: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion { start, end, kind }
    }

    #[test]
    fn carves_reservations_out_of_usable() {
        let map = MemoryMap::build([
            reg(0, 0x9f000, RegionKind::Usable),
            reg(0x100000, 0x8000000, RegionKind::Usable),
            reg(0x200000, 0x300123, RegionKind::Kernel),
            reg(0x7fe0000, 0x8000000, RegionKind::Reserved),
        ])
        .unwrap();
        assert_eq!(
            map.regions(),
            &[
                reg(0, 0x9f000, RegionKind::Usable),
                reg(0x100000, 0x200000, RegionKind::Usable),
                reg(0x200000, 0x300123, RegionKind::Kernel),
                reg(0x301000, 0x7fe0000, RegionKind::Usable),
                reg(0x7fe0000, 0x8000000, RegionKind::Reserved),
            ]
        );
        assert_eq!(
            map.usable_bytes(),
            0x9f000 + 0x100000 + (0x7fe0000 - 0x301000)
        );
    }

    #[test]
    fn no_usable_memory_is_an_error() {
        assert_eq!(
            MemoryMap::build([reg(0, 0x1000, RegionKind::Reserved)]).unwrap_err(),
            BootInfoError::NoMemoryMap
        );
        assert_eq!(
            MemoryMap::build([]).unwrap_err(),
            BootInfoError::NoMemoryMap
        );
        // Usable, but less than one whole page.
        assert_eq!(
            MemoryMap::build([reg(0x10, 0xff0, RegionKind::Usable)]).unwrap_err(),
            BootInfoError::NoMemoryMap
        );
    }

    #[test]
    fn too_many_regions_is_an_error() {
        let many = (0..300u64).map(|i| reg(i * 0x2000, i * 0x2000 + 0x1000, RegionKind::Usable));
        assert_eq!(
            MemoryMap::build(many).unwrap_err(),
            BootInfoError::TooManyRegions
        );
    }

    #[test]
    fn region_at_top_of_address_space() {
        let map = MemoryMap::build([reg(u64::MAX - 0x2fff, u64::MAX, RegionKind::Usable)]).unwrap();
        assert_eq!(map.usable_bytes(), 0x2000);
        assert!(MemoryRegion::from_len(u64::MAX, 2, RegionKind::Usable).is_none());
    }

    fn kind_strategy() -> impl Strategy<Value = RegionKind> {
        prop_oneof![
            4 => Just(RegionKind::Usable),
            1 => Just(RegionKind::Reserved),
            1 => Just(RegionKind::Kernel),
            1 => Just(RegionKind::AcpiNvs),
        ]
    }

    proptest! {
        /// Output is sorted, disjoint, merged, page-aligned where usable, and
        /// every address gets the greatest kind of the inputs covering it.
        #[test]
        fn normalisation_matches_model(
            raw in prop::collection::vec(
                (0u64..0x40, 1u64..0x10, kind_strategy())
                    .prop_map(|(s, l, k)| reg(s * 0x800, (s + l) * 0x800, k)),
                1..20)
        ) {
            let Ok(map) = MemoryMap::build(raw.iter().copied()) else {
                // Only legitimate failure: no whole usable page.
                let model_usable = (0..0x50 * 2u64).any(|p| (0..2).all(|h| {
                    let a = p * 0x1000 + h * 0x800;
                    raw.iter().filter(|r| r.start <= a && a < r.end).map(|r| r.kind).max()
                        == Some(RegionKind::Usable)
                }));
                prop_assert!(!model_usable);
                return Ok(());
            };
            let rs = map.regions();
            for w in rs.windows(2) {
                prop_assert!(w[0].end <= w[1].start);
                prop_assert!(!(w[0].end == w[1].start && w[0].kind == w[1].kind));
            }
            for r in map.usable() {
                prop_assert_eq!(r.start % PAGE_SIZE, 0);
                prop_assert_eq!(r.end % PAGE_SIZE, 0);
            }
            // Check every half-page granule against the model.
            for g in 0..0x50u64 {
                let a = g * 0x800;
                let model = raw.iter().filter(|r| r.start <= a && a < r.end).map(|r| r.kind).max();
                let got = rs.iter().find(|r| r.start <= a && a < r.end).map(|r| r.kind);
                match model {
                    Some(RegionKind::Usable) => {
                        // Either kept, or dropped by page alignment.
                        prop_assert!(got == Some(RegionKind::Usable) || got.is_none());
                    }
                    other => prop_assert_eq!(got, other),
                }
            }
        }
    }
}

/// Physical memory for the parsers' host tests.
#[cfg(test)]
pub(crate) mod test_ram {
    use super::PhysReader;

    /// Physical memory holding `data` at `base`, readable nowhere else.
    pub(crate) struct Ram {
        pub(crate) base: u64,
        pub(crate) data: Vec<u8>,
    }

    impl<'a> PhysReader<'a> for &'a Ram {
        fn bytes(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
            let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            self.data.get(start..end)
        }
    }

    impl Ram {
        /// Writes `bytes` at physical address `addr`.
        pub(crate) fn put(&mut self, addr: u64, bytes: &[u8]) {
            let at = (addr - self.base) as usize;
            self.data[at..at + bytes.len()].copy_from_slice(bytes);
        }
    }
}

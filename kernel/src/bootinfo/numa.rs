//! NUMA memory affinity: which node each physical range belongs to, from the
//! ACPI SRAT (x86_64) or the device tree's `numa-node-id` properties
//! (AArch64, RISC-V), and how the frame allocator folds nodes so its zones
//! stay within its limits.
//!
//! Invariants of a [`NumaMap`]: ranges are sorted by start address, never
//! empty, never overlap, adjacent ranges of the same node are merged, and
//! every node is below [`MAX_NODES`]. An empty map means one node: all
//! memory is node 0. Addresses no range covers also belong to node 0.
//!
//! Firmware input is untrusted: overlapping ranges are resolved (the one
//! listed first wins), and too many ranges or an impossible node give a
//! [`NumaError`], never a panic. Callers treat an error as "one node".

use super::MemoryMap;
use arrayvec::ArrayVec;

/// Most NUMA nodes the kernel distinguishes. Firmware node numbers and
/// proximity domains beyond this share node `MAX_NODES - 1`.
pub const MAX_NODES: usize = 8;
/// Most ranges a [`NumaMap`] holds after merging.
pub const MAX_NUMA_RANGES: usize = 16;
/// Most raw ranges [`NumaMap::build`] accepts.
pub const MAX_RAW_NUMA_RANGES: usize = 4 * MAX_NUMA_RANGES;

/// Physical range `[start, end)` on NUMA node `node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumaRange {
    /// First physical address in the range (inclusive).
    pub start: u64,
    /// Physical address just past the range (exclusive).
    pub end: u64,
    /// Kernel node number, below [`MAX_NODES`] (see [`cap_node`] and
    /// [`DomainNumbering`] for how firmware numbers map to it).
    pub node: u8,
}

/// Why firmware NUMA information was not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumaError {
    /// More than [`MAX_RAW_NUMA_RANGES`] input ranges, or more than
    /// [`MAX_NUMA_RANGES`] after merging.
    TooManyRanges,
    /// A node number of [`MAX_NODES`] or more.
    BadNode,
}

/// Firmware node numbers, capped: `id` if below [`MAX_NODES`], else the
/// last node.
pub fn cap_node(id: u32) -> u8 {
    id.min(MAX_NODES as u32 - 1) as u8
}

/// Numbers ACPI proximity domains 0, 1, … in order of first appearance;
/// domains after the [`MAX_NODES`]th share the last node.
#[derive(Clone, Debug, Default)]
pub struct DomainNumbering {
    seen: ArrayVec<u32, MAX_NODES>,
}

impl DomainNumbering {
    /// The node of proximity domain `domain`.
    pub fn node(&mut self, domain: u32) -> u8 {
        if let Some(i) = self.seen.iter().position(|&d| d == domain) {
            return i as u8;
        }
        // Once `seen` is full, its last entry's node: MAX_NODES - 1.
        let _ = self.seen.try_push(domain);
        (self.seen.len() - 1) as u8
    }
}

/// The normalised NUMA ranges (see the module invariants).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NumaMap {
    ranges: ArrayVec<NumaRange, MAX_NUMA_RANGES>,
}

impl NumaMap {
    /// Builds the map from firmware ranges in any order. Empty ranges are
    /// dropped; where ranges overlap, the one listed first wins.
    pub fn build(raw: impl IntoIterator<Item = NumaRange>) -> Result<NumaMap, NumaError> {
        let mut input: ArrayVec<NumaRange, MAX_RAW_NUMA_RANGES> = ArrayVec::new();
        for r in raw.into_iter().filter(|r| r.start < r.end) {
            if usize::from(r.node) >= MAX_NODES {
                return Err(NumaError::BadNode);
            }
            input.try_push(r).map_err(|_| NumaError::TooManyRanges)?;
        }
        let mut map = NumaMap::default();
        let bounds = input.iter().map(|r| (r.start, r.end));
        for (start, end) in super::elementary::<{ 2 * MAX_RAW_NUMA_RANGES }>(bounds) {
            let Some(first) = input.iter().find(|r| r.start <= start && end <= r.end) else {
                continue;
            };
            let node = first.node;
            match map.ranges.last_mut() {
                Some(last) if last.end == start && last.node == node => last.end = end,
                _ => map
                    .ranges
                    .try_push(NumaRange { start, end, node })
                    .map_err(|_| NumaError::TooManyRanges)?,
            }
        }
        Ok(map)
    }

    /// The ranges, sorted by address.
    pub fn ranges(&self) -> &[NumaRange] {
        &self.ranges
    }

    /// Whether the firmware described no NUMA ranges (one node).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Splits `[start, end)` into consecutive pieces, each on one node:
    /// pieces inside a NUMA range get its node, the gaps node 0. The pieces
    /// cover `[start, end)` exactly, in address order.
    pub fn split(&self, start: u64, end: u64) -> Split<'_> {
        Split {
            ranges: &self.ranges,
            pos: start,
            end,
        }
    }

    /// Decides which allocator node each firmware node's memory joins, for
    /// the usable memory of `memory`. The frame allocator keeps one zone per
    /// (kind, node), the kinds split at physical `split_at` (DMA below,
    /// normal above), at most `max_zones` of them, and finds a frame's zone
    /// by the zone's address span, so:
    /// - when two nodes' zones of one kind would have overlapping spans
    ///   (interleaved memory), the higher-numbered node is folded into the
    ///   lower;
    /// - while there are more than `max_zones` zones, the highest-numbered
    ///   node is folded into the next lower node that has memory.
    ///
    /// Each fold removes one node, so this ends; one node alone always fits
    /// (two zones).
    pub fn zone_plan(&self, memory: &MemoryMap, split_at: u64, max_zones: usize) -> NodePlan {
        let mut plan = NodePlan::IDENTITY;
        loop {
            // spans[kind][allocator node] = (lowest start, highest end).
            let mut spans = [[None::<(u64, u64)>; MAX_NODES]; 2];
            for piece in memory.usable().flat_map(|r| self.split(r.start, r.end)) {
                let node = usize::from(plan.node(piece.node));
                let low = (0, piece.start, piece.end.min(split_at));
                let high = (1, piece.start.max(split_at), piece.end);
                for (kind, a, b) in [low, high] {
                    if a < b
                        && let Some(span) = spans[kind].get_mut(node)
                    {
                        *span = Some(span.map_or((a, b), |(lo, hi)| (lo.min(a), hi.max(b))));
                    }
                }
            }
            match fold_needed(&spans, max_zones) {
                Some((from, into)) => plan.fold(from, into),
                None => return plan,
            }
        }
    }
}

/// The next fold [`NumaMap::zone_plan`] must make, as `(from, into)`.
fn fold_needed(spans: &[[Option<(u64, u64)>; MAX_NODES]; 2], max_zones: usize) -> Option<(u8, u8)> {
    for kind in spans {
        for (a, x) in kind.iter().enumerate() {
            for (b, y) in kind.iter().enumerate().skip(a + 1) {
                if let (Some(x), Some(y)) = (x, y)
                    && x.0 < y.1
                    && y.0 < x.1
                {
                    return Some((b as u8, a as u8));
                }
            }
        }
    }
    let zones = spans.iter().flatten().filter(|s| s.is_some()).count();
    if zones <= max_zones {
        return None;
    }
    let mut present = (0..MAX_NODES)
        .rev()
        .filter(|&n| spans.iter().any(|k| k[n].is_some()));
    Some((present.next()? as u8, present.next()? as u8))
}

/// Firmware node → the node whose zones the frame allocator puts its
/// memory in (see [`NumaMap::zone_plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePlan {
    map: [u8; MAX_NODES],
}

impl NodePlan {
    /// Every node keeps its own zones.
    pub const IDENTITY: NodePlan = NodePlan {
        map: [0, 1, 2, 3, 4, 5, 6, 7],
    };

    /// The allocator node of firmware node `node` (node 0 if out of range).
    pub fn node(&self, node: u8) -> u8 {
        self.map.get(usize::from(node)).copied().unwrap_or(0)
    }

    /// The folded nodes, as `(firmware node, allocator node)`.
    pub fn folds(&self) -> impl Iterator<Item = (u8, u8)> + '_ {
        (0..MAX_NODES as u8)
            .map(|n| (n, self.node(n)))
            .filter(|(n, m)| n != m)
    }

    fn fold(&mut self, from: u8, into: u8) {
        for m in self.map.iter_mut().filter(|m| **m == from) {
            *m = into;
        }
    }
}

/// Iterator of [`NumaMap::split`].
#[derive(Clone, Debug)]
pub struct Split<'a> {
    ranges: &'a [NumaRange],
    pos: u64,
    end: u64,
}

impl Iterator for Split<'_> {
    type Item = NumaRange;

    fn next(&mut self) -> Option<NumaRange> {
        if self.pos >= self.end {
            return None;
        }
        let (start, next) = (self.pos, self.ranges.iter().find(|r| r.end > self.pos));
        let (end, node) = match next {
            Some(r) if r.start <= start => (r.end.min(self.end), r.node),
            Some(r) => (r.start.min(self.end), 0),
            None => (self.end, 0),
        };
        self.pos = end;
        Some(NumaRange { start, end, node })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootinfo::{MemoryRegion, RegionKind};
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn nr(start: u64, end: u64, node: u8) -> NumaRange {
        NumaRange { start, end, node }
    }

    fn usable(ranges: &[(u64, u64)]) -> MemoryMap {
        MemoryMap::build(ranges.iter().map(|&(start, end)| MemoryRegion {
            start,
            end,
            kind: RegionKind::Usable,
        }))
        .unwrap()
    }

    #[test]
    fn build_sorts_merges_and_resolves_overlaps() {
        let map = NumaMap::build([
            nr(0x2000_0000, 0x3000_0000, 1),
            nr(0, 0xa_0000, 0),
            nr(0x10_0000, 0x1000_0000, 0),
            nr(0x1000_0000, 0x2000_0000, 0),
            nr(5, 5, 3),                     // empty: dropped
            nr(0x2800_0000, 0x3800_0000, 2), // overlaps node 1: node 1 wins
        ])
        .unwrap();
        assert_eq!(
            map.ranges(),
            &[
                nr(0, 0xa_0000, 0),
                nr(0x10_0000, 0x2000_0000, 0),
                nr(0x2000_0000, 0x3000_0000, 1),
                nr(0x3000_0000, 0x3800_0000, 2),
            ]
        );
        assert!(NumaMap::build([]).unwrap().is_empty());
    }

    #[test]
    fn build_rejects_bad_nodes_and_too_many_ranges() {
        assert_eq!(
            NumaMap::build([nr(0, 0x1000, MAX_NODES as u8)]),
            Err(NumaError::BadNode)
        );
        let many = (0..MAX_RAW_NUMA_RANGES as u64 + 1).map(|i| nr(i * 2, i * 2 + 1, 0));
        assert_eq!(NumaMap::build(many), Err(NumaError::TooManyRanges));
        // Few enough inputs, but too many after merging (alternating nodes).
        let alternating = (0..MAX_NUMA_RANGES as u64 + 1).map(|i| nr(i, i + 1, (i % 2) as u8));
        assert_eq!(NumaMap::build(alternating), Err(NumaError::TooManyRanges));
    }

    #[test]
    fn domains_are_numbered_in_order_of_first_appearance() {
        let mut d = DomainNumbering::default();
        assert_eq!(d.node(7), 0);
        assert_eq!(d.node(3), 1);
        assert_eq!(d.node(7), 0);
        for dom in 10..16 {
            d.node(dom);
        }
        assert_eq!(d.node(15), 7);
        // The ninth domain and later share the last node.
        assert_eq!(d.node(99), 7);
        assert_eq!(d.node(u32::MAX), 7);
        assert_eq!(cap_node(1), 1);
        assert_eq!(cap_node(8), 7);
        assert_eq!(cap_node(u32::MAX), 7);
    }

    #[test]
    fn split_table() {
        let map = NumaMap::build([nr(0x1000, 0x3000, 1), nr(0x5000, 0x6000, 2)]).unwrap();
        let cases: &[((u64, u64), &[NumaRange])] = &[
            ((0, 0x1000), &[nr(0, 0x1000, 0)]),
            ((0, 0x2000), &[nr(0, 0x1000, 0), nr(0x1000, 0x2000, 1)]),
            (
                (0x2000, 0x8000),
                &[
                    nr(0x2000, 0x3000, 1),
                    nr(0x3000, 0x5000, 0),
                    nr(0x5000, 0x6000, 2),
                    nr(0x6000, 0x8000, 0),
                ],
            ),
            ((0x1800, 0x1900), &[nr(0x1800, 0x1900, 1)]),
            ((0x7000, 0x9000), &[nr(0x7000, 0x9000, 0)]),
            ((0x3000, 0x3000), &[]),
        ];
        for &((s, e), want) in cases {
            assert_eq!(map.split(s, e).collect::<Vec<_>>(), want, "{s:#x}-{e:#x}");
        }
        // No NUMA information: one piece on node 0.
        assert_eq!(
            NumaMap::default().split(0, u64::MAX).collect::<Vec<_>>(),
            [nr(0, u64::MAX, 0)]
        );
    }

    #[test]
    fn plan_keeps_separate_nodes() {
        // QEMU q35 with two 256 MiB nodes.
        let numa = NumaMap::build([
            nr(0, 0xa_0000, 0),
            nr(0x10_0000, 256 * MIB, 0),
            nr(256 * MIB, 512 * MIB, 1),
        ])
        .unwrap();
        let mem = usable(&[(0, 0x9_f000), (0x10_0000, 512 * MIB)]);
        assert_eq!(numa.zone_plan(&mem, 16 * MIB, 8), NodePlan::IDENTITY);
    }

    #[test]
    fn plan_folds_interleaved_nodes() {
        // Node 1 sits between two ranges of node 0: their normal zones
        // would overlap, so node 1 joins node 0; node 2 is separate.
        let numa = NumaMap::build([
            nr(0, 256 * MIB, 0),
            nr(256 * MIB, 512 * MIB, 1),
            nr(512 * MIB, 768 * MIB, 0),
            nr(768 * MIB, 1024 * MIB, 2),
        ])
        .unwrap();
        let mem = usable(&[(0, 1024 * MIB)]);
        let plan = numa.zone_plan(&mem, 16 * MIB, 8);
        assert_eq!((0..3).map(|n| plan.node(n)).collect::<Vec<_>>(), [0, 0, 2]);
        assert_eq!(plan.folds().collect::<Vec<_>>(), [(1, 0)]);
        // Interleaving outside usable memory does not matter.
        let mem = usable(&[(0, 512 * MIB)]);
        assert_eq!(numa.zone_plan(&mem, 16 * MIB, 8), NodePlan::IDENTITY);
    }

    #[test]
    fn plan_folds_highest_nodes_to_fit_the_zone_limit() {
        // Eight nodes of 256 MiB: node 0 has DMA and normal zones, the
        // others normal only: 9 zones for a limit of 8, so node 7 joins 6.
        let numa = NumaMap::build((0..8).map(|n| nr(n * 256 * MIB, (n + 1) * 256 * MIB, n as u8)))
            .unwrap();
        let mem = usable(&[(0, 2048 * MIB)]);
        let plan = numa.zone_plan(&mem, 16 * MIB, 8);
        assert_eq!(plan.folds().collect::<Vec<_>>(), [(7, 6)]);
        // A limit of 4 zones: nodes 0 (two zones), 1 and 2 remain; 3..7 join 2.
        let plan = numa.zone_plan(&mem, 16 * MIB, 4);
        assert_eq!(
            (0..8).map(|n| plan.node(n)).collect::<Vec<_>>(),
            [0, 1, 2, 2, 2, 2, 2, 2]
        );
        // Gaps in the node numbers: the next lower node that has memory.
        let numa = NumaMap::build([nr(0, 512 * MIB, 0), nr(512 * MIB, 1024 * MIB, 5)]).unwrap();
        let plan = numa.zone_plan(&usable(&[(0, 1024 * MIB)]), 16 * MIB, 2);
        assert_eq!(plan.folds().collect::<Vec<_>>(), [(5, 0)]);
    }

    fn numa_strategy() -> impl Strategy<Value = Vec<NumaRange>> {
        prop::collection::vec(
            (0u64..0x40, 1u64..0x10, 0u8..MAX_NODES as u8)
                .prop_map(|(s, l, n)| nr(s * 0x1000, (s + l) * 0x1000, n)),
            0..12,
        )
    }

    proptest! {
        /// The map is normalised and every address gets the node of the
        /// first input range covering it (node 0 if none); splitting any
        /// range covers it exactly with pieces that agree with that model.
        #[test]
        fn build_and_split_match_model(raw in numa_strategy(), s in 0u64..0x60, l in 0u64..0x30) {
            let Ok(map) = NumaMap::build(raw.iter().copied()) else {
                // Only possible failure here: too many ranges after merging.
                return Ok(());
            };
            for w in map.ranges().windows(2) {
                prop_assert!(w[0].end <= w[1].start);
                prop_assert!(!(w[0].end == w[1].start && w[0].node == w[1].node));
            }
            let model = |a: u64| raw.iter().find(|r| r.start <= a && a < r.end).map_or(0, |r| r.node);
            let (start, end) = (s * 0x800, (s + l) * 0x800);
            let pieces: Vec<_> = map.split(start, end).collect();
            let mut at = start;
            for p in &pieces {
                prop_assert_eq!(p.start, at);
                prop_assert!(p.start < p.end);
                at = p.end;
                let mut a = p.start;
                while a < p.end {
                    prop_assert_eq!(p.node, model(a));
                    a += 0x800;
                }
            }
            prop_assert_eq!(at, end.max(start));
        }

        /// Whatever the layout, the plan leaves at most `max` zones whose
        /// spans of one kind never overlap.
        #[test]
        fn plan_fits_and_never_overlaps(raw in numa_strategy(), max in 2usize..=8) {
            let Ok(numa) = NumaMap::build(raw) else { return Ok(()) };
            let mem = usable(&[(0, 0x18_000), (0x20_000, 0x50_000)]);
            let split_at = 0x10_000;
            let plan = numa.zone_plan(&mem, split_at, max);
            let mut spans: Vec<(usize, u8, u64, u64)> = Vec::new();
            for r in mem.usable() {
                for p in numa.split(r.start, r.end) {
                    let node = plan.node(p.node);
                    for (kind, a, b) in [(0, p.start, p.end.min(split_at)), (1, p.start.max(split_at), p.end)] {
                        if a >= b { continue; }
                        match spans.iter_mut().find(|z| z.0 == kind && z.1 == node) {
                            Some(z) => { z.2 = z.2.min(a); z.3 = z.3.max(b); }
                            None => spans.push((kind, node, a, b)),
                        }
                    }
                }
            }
            prop_assert!(spans.len() <= max);
            for (i, x) in spans.iter().enumerate() {
                for y in &spans[i + 1..] {
                    prop_assert!(x.0 != y.0 || x.3 <= y.2 || y.3 <= x.2, "{:?} {:?}", x, y);
                }
            }
        }
    }
}

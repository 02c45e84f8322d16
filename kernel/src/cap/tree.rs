//! The derivation tree, written by hand (core competence of the kernel):
//! which capability was derived (or granted) from which, across all spaces.
//!
//! Each capability's slot holds its [`Links`]; a link names a slot anywhere
//! in the system as `space index << 32 | slot index` ([`NIL`] for none).
//! Children form a doubly linked sibling list (`prev`/`next`) with the
//! parent's `first`/`last` at its ends. Only the *ends* of a sibling list
//! know their parent (`up`); middle children do not. That is what makes
//! every tree edit O(1): removing a node splices its whole child list into
//! its place (children survive and are re-parented to their grandparent
//! without touching each child), and moving a node to another slot updates
//! at most six neighbours.
//!
//! Invariants (checked by `check_tree` in tests):
//! - Links only name occupied slots; `prev`/`next` are mutual.
//! - `up` is set on exactly the first and last child of a parent, and names
//!   that parent, whose `first`/`last` name them back; a sibling list
//!   without a parent (the children of a deleted root) has `up == NIL`
//!   at both ends and forms a parentless group of roots.
//! - The tree is acyclic.

use super::CapSystem;

/// No slot.
pub(super) const NIL: u64 = u64::MAX;

/// A slot anywhere in the system: its space's arena index and slot index.
pub(super) fn slot_ref(space: u32, slot: u32) -> u64 {
    (u64::from(space) << 32) | u64::from(slot)
}

/// Derivation-tree links of one capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Links {
    pub first: u64,
    pub last: u64,
    pub prev: u64,
    pub next: u64,
    /// The parent, on the first and last child only.
    pub up: u64,
}

impl Links {
    /// Unlinked: a root with no children.
    pub const NONE: Links = Links {
        first: NIL,
        last: NIL,
        prev: NIL,
        next: NIL,
        up: NIL,
    };
}

impl<O> CapSystem<O> {
    /// The links of the slot `r` names (all `NIL` if none).
    pub(super) fn links(&self, r: u64) -> Links {
        self.slot_at(r).map_or(Links::NONE, |s| s.links)
    }

    /// Applies `f` to the links of the slot `r` names, if any.
    fn edit(&mut self, r: u64, f: impl FnOnce(&mut Links)) {
        if let Some(slot) = self.slot_at_mut(r) {
            f(&mut slot.links);
        }
    }

    /// Makes the unlinked node `child` the last child of `parent`.
    pub(super) fn attach(&mut self, parent: u64, child: u64) {
        let old_last = self.links(parent).last;
        if old_last == NIL {
            self.edit(parent, |l| l.first = child);
        } else {
            self.edit(old_last, |l| {
                l.next = child;
                if l.prev != NIL {
                    l.up = NIL; // it was last, now it is a middle child
                }
            });
        }
        self.edit(parent, |l| l.last = child);
        self.edit(child, |l| {
            *l = Links {
                prev: old_last,
                up: parent,
                ..Links::NONE
            }
        });
    }

    /// Unlinks `node`; its children take its place among its siblings (so
    /// they become children of its parent, or roots). Leaves `node`
    /// unlinked.
    pub(super) fn detach(&mut self, node: u64) {
        let n = self.links(node);
        let (is_first, is_last) = (n.prev == NIL, n.next == NIL);
        // What fills the gap: the child list, or nothing.
        let (head, tail) = if n.first != NIL {
            let single = n.first == n.last;
            // A child at an end of the new sibling list knows the parent.
            let up = |end: bool| if end { n.up } else { NIL };
            self.edit(n.first, |l| {
                l.prev = n.prev;
                l.up = up(is_first || (single && is_last));
            });
            self.edit(n.last, |l| {
                l.next = n.next;
                l.up = up(is_last || (single && is_first));
            });
            (n.first, n.last)
        } else {
            // The neighbours that become ends learn the parent.
            if is_first {
                self.edit(n.next, |l| l.up = n.up);
            }
            if is_last {
                self.edit(n.prev, |l| l.up = n.up);
            }
            (n.next, n.prev)
        };
        self.point_neighbours(n, head, tail);
        self.edit(node, |l| *l = Links::NONE);
    }

    /// The node with links `n` has moved from its old slot to `to` (which
    /// already holds `n`): points its neighbours at `to`.
    pub(super) fn relocate(&mut self, n: Links, to: u64) {
        self.point_neighbours(n, to, to);
        self.edit(n.first, |l| l.up = to);
        self.edit(n.last, |l| l.up = to);
    }

    /// Points what led to the node with links `n` at `head` instead (its
    /// previous sibling, or its parent if it is first) and what led back
    /// to it at `tail` (its next sibling, or its parent if it is last).
    fn point_neighbours(&mut self, n: Links, head: u64, tail: u64) {
        if n.prev == NIL {
            self.edit(n.up, |l| l.first = head);
        } else {
            self.edit(n.prev, |l| l.next = head);
        }
        if n.next == NIL {
            self.edit(n.up, |l| l.last = tail);
        } else {
            self.edit(n.next, |l| l.prev = tail);
        }
    }

    /// The parent of `node` (walks to the head of its sibling list; tests
    /// and diagnostics only, O(siblings)).
    #[cfg(test)]
    pub(super) fn parent_ref(&self, node: u64) -> u64 {
        let mut n = node;
        while self.links(n).prev != NIL {
            n = self.links(n).prev;
        }
        self.links(n).up
    }

    /// Checks the tree invariants over every live capability (tests only).
    #[cfg(test)]
    pub(super) fn check_tree(&self) {
        let live: std::collections::BTreeSet<u64> = self.all_refs().collect();
        let ok = |r: u64| r == NIL || live.contains(&r);
        for &r in &live {
            let l = self.links(r);
            for x in [l.first, l.last, l.prev, l.next, l.up] {
                assert!(ok(x), "link from {r:#x} to a dead slot {x:#x}");
            }
            if l.next != NIL {
                assert_eq!(self.links(l.next).prev, r);
            }
            if l.prev != NIL {
                assert_eq!(self.links(l.prev).next, r);
            }
            assert_eq!(l.first == NIL, l.last == NIL);
            if l.first != NIL {
                assert_eq!(self.links(l.first).prev, NIL);
                assert_eq!(self.links(l.first).up, r);
                assert_eq!(self.links(l.last).next, NIL);
                assert_eq!(self.links(l.last).up, r);
            }
            if l.prev != NIL && l.next != NIL {
                assert_eq!(l.up, NIL, "middle child {r:#x} has up");
            }
            if l.up != NIL {
                let p = self.links(l.up);
                assert!(p.first == r || p.last == r);
            }
            // Acyclic: walking up terminates.
            let (mut a, mut steps) = (self.parent_ref(r), 0);
            while a != NIL {
                assert_ne!(a, r, "cycle through {r:#x}");
                a = self.parent_ref(a);
                steps += 1;
                assert!(steps <= live.len());
            }
        }
    }
}

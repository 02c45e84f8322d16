//! A min-heap of items with small dense table indices ([`Slot`]), keyed by
//! a `u64` (a deadline, a virtual run time), FIFO among equal keys, with
//! removal of any item by its slot in O(log n). Written by hand: core
//! competence. Portable and host-tested.
//!
//! Room is reserved per slot ([`SlotHeap::reserve_slot`], done when a
//! thread or timer is made), so `push`, `remove` and `pop` never allocate
//! and never fail for room.
//!
//! Invariants: `heap[i].key <= heap[2i+1].key, heap[2i+2].key` (ties
//! broken by the push sequence number); `pos[s] == Some(i)` iff
//! `heap[i]` holds the item with slot `s`.

use super::runq::Slot;
use crate::mm::kref::ensure;
use alloc::vec::Vec;
use keel_abi::Error;

#[derive(Clone, Copy)]
struct Entry<T> {
    key: u64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn before(&self, other: &Self) -> bool {
        (self.key, self.seq) < (other.key, other.seq)
    }
}

/// The heap (see the module docs).
pub struct SlotHeap<T> {
    heap: Vec<Entry<T>>,
    pos: Vec<Option<u32>>,
    seq: u64,
}

impl<T: Copy + Slot> Default for SlotHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Slot> SlotHeap<T> {
    /// An empty heap.
    pub const fn new() -> Self {
        SlotHeap {
            heap: Vec::new(),
            pos: Vec::new(),
            seq: 0,
        }
    }

    /// Makes room for an item with table index `slot`.
    pub fn reserve_slot(&mut self, slot: usize) -> Result<(), Error> {
        ensure(slot < u32::MAX as usize, Error::OutOfMemory)?;
        let more = (slot + 1).saturating_sub(self.pos.len());
        self.pos.try_reserve(more).map_err(|_| Error::OutOfMemory)?;
        self.pos.resize(self.pos.len() + more, None);
        let want = self.pos.len().saturating_sub(self.heap.len());
        self.heap.try_reserve(want).map_err(|_| Error::OutOfMemory)
    }

    /// The items, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.heap.iter().map(|e| e.item)
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Whether the item with table index `slot` is queued.
    pub fn contains(&self, slot: usize) -> bool {
        self.pos.get(slot).is_some_and(Option::is_some)
    }

    /// The least item and its key.
    pub fn peek(&self) -> Option<(T, u64)> {
        self.heap.first().map(|e| (e.item, e.key))
    }

    /// Queues `t` with `key`, after the items of equal key
    /// (`InvalidState` if it is queued, `OutOfMemory` if its slot was
    /// never reserved).
    pub fn push(&mut self, t: T, key: u64) -> Result<(), Error> {
        match self.pos.get(t.slot()) {
            None => return Err(Error::OutOfMemory),
            Some(Some(_)) => return Err(Error::InvalidState),
            Some(None) => {}
        }
        ensure(self.heap.len() != self.heap.capacity(), Error::OutOfMemory)?;
        self.seq += 1;
        let i = self.heap.len();
        self.heap.push(Entry {
            key,
            seq: self.seq,
            item: t,
        });
        self.up(i);
        Ok(())
    }

    /// Takes the least item.
    pub fn pop(&mut self) -> Option<(T, u64)> {
        let (t, key) = self.peek()?;
        self.take(0);
        Some((t, key))
    }

    /// Takes `t` out; false if it was not queued.
    pub fn remove(&mut self, t: T) -> bool {
        match self.pos.get(t.slot()).copied().flatten() {
            Some(i) => {
                self.take(i as usize);
                true
            }
            None => false,
        }
    }

    fn take(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.heap.swap(i, last);
        if let Some(gone) = self.heap.pop()
            && let Some(p) = self.pos.get_mut(gone.item.slot())
        {
            *p = None;
        }
        if i < self.heap.len() {
            self.set_pos(i);
            self.up(i);
            self.down(i);
        }
    }

    fn set_pos(&mut self, i: usize) {
        if let Some(p) = self
            .heap
            .get(i)
            .and_then(|e| self.pos.get_mut(e.item.slot()))
        {
            *p = Some(i as u32);
        }
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.heap[i].before(&self.heap[parent]) {
                break;
            }
            self.heap.swap(i, parent);
            self.set_pos(i);
            i = parent;
        }
        self.set_pos(i);
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let mut least = i;
            for child in [2 * i + 1, 2 * i + 2] {
                if child < self.heap.len() && self.heap[child].before(&self.heap[least]) {
                    least = child;
                }
            }
            if least == i {
                break;
            }
            self.heap.swap(i, least);
            self.set_pos(i);
            i = least;
        }
        self.set_pos(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Slot for u8 {
        fn slot(&self) -> usize {
            usize::from(*self)
        }
    }

    #[test]
    fn pops_by_key_fifo_among_equals_and_refuses_bad_pushes() {
        let mut h = SlotHeap::new();
        assert_eq!(h.push(3u8, 1), Err(Error::OutOfMemory));
        h.reserve_slot(9).unwrap();
        for (t, k) in [(1u8, 50), (2, 10), (3, 50), (4, 5), (5, 10)] {
            h.push(t, k).unwrap();
        }
        assert_eq!(h.push(1, 7), Err(Error::InvalidState));
        assert!(h.remove(4) && !h.remove(4) && !h.remove(9));
        let order: Vec<_> = core::iter::from_fn(|| h.pop()).collect();
        assert_eq!(order, [(2, 10), (5, 10), (1, 50), (3, 50)]);
        assert!(h.is_empty());
    }

    proptest! {
        #[test]
        fn matches_a_sorted_model(ops in proptest::collection::vec((0u8..3, 0u8..32, 0u64..20), 0..200)) {
            let mut h = SlotHeap::new();
            h.reserve_slot(31).unwrap();
            let mut model: Vec<(u64, u64, u8)> = Vec::new();
            let mut seq = 0;
            for (op, t, key) in ops {
                match op {
                    0 => {
                        let queued = model.iter().any(|e| e.2 == t);
                        prop_assert_eq!(h.push(t, key).is_ok(), !queued);
                        if !queued {
                            seq += 1;
                            model.push((key, seq, t));
                        }
                    }
                    1 => {
                        let at = model.iter().position(|e| e.2 == t);
                        prop_assert_eq!(h.remove(t), at.is_some());
                        if let Some(at) = at {
                            model.remove(at);
                        }
                    }
                    _ => {
                        model.sort_unstable();
                        let want = (!model.is_empty()).then(|| model.remove(0));
                        prop_assert_eq!(h.pop(), want.map(|e| (e.2, e.0)));
                    }
                }
                prop_assert_eq!(h.len(), model.len());
                for t in 0..32u8 {
                    prop_assert_eq!(h.contains(usize::from(t)), model.iter().any(|e| e.2 == t));
                }
            }
        }
    }
}

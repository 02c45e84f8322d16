//! A generational arena: the one table type for kernel objects named by
//! index (capability spaces, threads). Written by hand: core competence.
//! Portable and host-tested.
//!
//! An [`Id`] is a slot index and the generation the slot had when the
//! value went in. Removing a value bumps the slot's generation, so an old
//! id never names a newer value; a slot whose generation would wrap is
//! retired instead of reused. Every operation is O(1); nothing allocates
//! except [`Arena::insert`] when no slot is free, and that fails with
//! `OutOfMemory` rather than aborting.
//!
//! Invariants: a slot holds a value iff it is not on the free list; the
//! free list holds each empty, non-retired slot once; `live` counts the
//! slots holding values; no index reaches `u32::MAX` (free for "none").
#![forbid(unsafe_code)]

use crate::mm::kref::{ensure, oom};
use alloc::vec::Vec;
use keel_abi::Error;

/// Names a value in an [`Arena`]; stale once that value is removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id {
    index: u32,
    generation: u32,
}

impl Id {
    /// The slot index (unique among live values, reused after removal).
    pub fn index(self) -> u32 {
        self.index
    }

    /// The slot's generation when the value was inserted.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// An id made up by hand (tests of stale and forged ids).
    #[cfg(test)]
    pub(crate) fn forged(index: u32, generation: u32) -> Id {
        Id { index, generation }
    }
}

/// No slot: the end of the free list.
const NONE: u32 = u32::MAX;

struct Slot<T> {
    generation: u32,
    /// The next free slot, while this one is free.
    next_free: u32,
    value: Option<T>,
}

impl<T> Slot<T> {
    /// The id of the value in this slot, which is slot `index`.
    fn id(&self, index: u32) -> Id {
        Id {
            index,
            generation: self.generation,
        }
    }
}

/// A table of `T`s named by generation-checked [`Id`]s.
pub struct Arena<T> {
    slots: Vec<Slot<T>>,
    free_head: u32,
    live: u32,
    /// Most slots the arena may have (at most `u32::MAX`).
    limit: u32,
}

impl<T> Default for Arena<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Arena<T> {
    /// An empty arena.
    pub const fn new() -> Self {
        Self::with_limit(NONE)
    }

    /// An empty arena of at most `limit` slots (tests use small limits).
    pub const fn with_limit(limit: u32) -> Self {
        Arena {
            slots: Vec::new(),
            free_head: NONE,
            live: 0,
            limit,
        }
    }

    /// Makes sure the next [`Self::insert`] finds room without allocating.
    pub fn reserve(&mut self) -> Result<(), Error> {
        if self.free_head != NONE {
            return Ok(());
        }
        ensure(self.slots.len() < self.limit as usize, Error::OutOfMemory)?;
        self.slots.try_reserve(1).map_err(oom)
    }

    /// The id the next [`Self::insert`] will return, if it succeeds.
    pub fn next_id(&self) -> Id {
        match self.slots.get(self.free_head as usize) {
            Some(s) => s.id(self.free_head),
            None => Id {
                index: self.slots.len() as u32,
                generation: 0,
            },
        }
    }

    /// Stores `value`; `OutOfMemory` if no slot is free and the table
    /// cannot grow (the value is dropped).
    pub fn insert(&mut self, value: T) -> Result<Id, Error> {
        self.reserve()?;
        if self.free_head == NONE {
            self.free_head = self.slots.len() as u32;
            self.slots.push(Slot {
                generation: 0,
                next_free: NONE,
                value: None,
            });
        }
        let index = self.free_head;
        let slot = self
            .slots
            .get_mut(index as usize)
            .ok_or(Error::OutOfMemory)?;
        self.free_head = slot.next_free;
        slot.next_free = NONE;
        slot.value = Some(value);
        self.live += 1;
        Ok(slot.id(index))
    }

    /// The value `id` names, if it is still there.
    #[inline]
    pub fn get(&self, id: Id) -> Option<&T> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.value.as_ref())
    }

    /// The value `id` names, if it is still there.
    #[inline]
    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.value.as_mut())
    }

    /// The live value in slot `index` and its id, whatever its generation
    /// (for links that store bare indices).
    pub fn at(&self, index: u32) -> Option<(Id, &T)> {
        let s = self.slots.get(index as usize)?;
        Some((s.id(index), s.value.as_ref()?))
    }

    /// [`Self::at`], mutably.
    pub fn at_mut(&mut self, index: u32) -> Option<(Id, &mut T)> {
        let s = self.slots.get_mut(index as usize)?;
        Some((s.id(index), s.value.as_mut()?))
    }

    /// Takes the value `id` names out; the slot's generation moves on, so
    /// `id` is stale from now on.
    pub fn remove(&mut self, id: Id) -> Option<T> {
        let slot = self
            .slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.value.is_some())?;
        let value = slot.value.take();
        self.live -= 1;
        // A slot whose generation would wrap is retired, so a stale id can
        // never name a new value.
        if let Some(generation) = slot.generation.checked_add(1) {
            slot.generation = generation;
            slot.next_free = self.free_head;
            self.free_head = id.index;
        }
        value
    }

    /// Live values.
    pub fn len(&self) -> usize {
        self.live as usize
    }

    /// Whether no value is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every live value with its id, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Id, &T)> {
        let slots = self.slots.iter().zip(0..);
        slots.filter_map(|(s, i)| Some((s.id(i), s.value.as_ref()?)))
    }

    /// A test hook: sets the generation of empty slot `index` (to reach
    /// the wrap-around without 2^32 insertions).
    #[cfg(test)]
    fn set_generation(&mut self, index: u32, generation: u32) {
        if let Some(s) = self.slots.get_mut(index as usize) {
            s.generation = generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn stale_ids_never_name_new_values() {
        let mut a = Arena::new();
        let x = a.insert("x").unwrap();
        assert_eq!(a.get(x), Some(&"x"));
        assert_eq!(a.remove(x), Some("x"));
        assert_eq!(a.get(x), None);
        assert_eq!(a.remove(x), None, "a second remove finds nothing");
        let y = a.insert("y").unwrap();
        assert_eq!(y.index(), x.index(), "the slot is reused");
        assert_ne!(y, x);
        assert_eq!(a.get(x), None);
        assert_eq!(a.get_mut(x), None);
        assert_eq!(a.get(y), Some(&"y"));
        assert_eq!(a.at(y.index()).map(|(id, v)| (id, *v)), Some((y, "y")));
    }

    #[test]
    fn next_id_predicts_insert_and_reserve_makes_room() {
        let mut a = Arena::with_limit(3);
        for _ in 0..2 {
            let predicted = a.next_id();
            a.reserve().unwrap();
            assert_eq!(a.insert(()).unwrap(), predicted);
        }
        let x = a.insert(()).unwrap();
        assert_eq!(a.reserve(), Err(Error::OutOfMemory));
        a.remove(x);
        let predicted = a.next_id();
        assert_eq!(predicted.index(), x.index());
        assert_ne!(predicted, x);
        a.reserve().unwrap();
        assert_eq!(a.insert(()).unwrap(), predicted);
    }

    #[test]
    fn a_slot_whose_generation_would_wrap_is_retired() {
        let mut a = Arena::new();
        let x = a.insert(1).unwrap();
        a.remove(x);
        a.set_generation(x.index(), u32::MAX);
        let last = a.insert(2).unwrap();
        assert_eq!(last.generation(), u32::MAX);
        a.remove(last);
        let next = a.insert(3).unwrap();
        assert_ne!(next.index(), last.index(), "the exhausted slot is retired");
        assert_eq!(a.get(last), None);
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn a_full_arena_refuses_and_drops_nothing_it_holds() {
        let mut a = Arena::with_limit(2);
        let x = a.insert(10).unwrap();
        let _y = a.insert(20).unwrap();
        assert_eq!(a.insert(30), Err(Error::OutOfMemory));
        assert_eq!(a.len(), 2);
        a.remove(x);
        assert!(a.insert(40).is_ok(), "a freed slot is reusable");
        assert_eq!(a.insert(50), Err(Error::OutOfMemory));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16),
        Remove(usize),
        Get(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u16>().prop_map(Op::Insert),
            any::<usize>().prop_map(Op::Remove),
            any::<usize>().prop_map(Op::Get),
        ]
    }

    proptest! {
        /// Against a model: every id ever handed out names exactly the value
        /// the model says (or nothing once removed), counts agree, and
        /// `iter` lists exactly the live values.
        #[test]
        fn behaves_like_a_map_of_unique_ids(ops in proptest::collection::vec(op(), 1..300)) {
            let mut a = Arena::with_limit(16);
            let mut model: HashMap<Id, u16> = HashMap::new();
            let mut ever: Vec<Id> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(v) => match a.insert(v) {
                        Ok(id) => {
                            prop_assert!(!ever.contains(&id), "ids are never reused");
                            model.insert(id, v);
                            ever.push(id);
                        }
                        Err(_) => prop_assert_eq!(model.len(), 16),
                    },
                    Op::Remove(i) if !ever.is_empty() => {
                        let id = ever[i % ever.len()];
                        prop_assert_eq!(a.remove(id), model.remove(&id));
                    }
                    Op::Get(i) if !ever.is_empty() => {
                        let id = ever[i % ever.len()];
                        prop_assert_eq!(a.get(id), model.get(&id));
                    }
                    _ => {}
                }
                prop_assert_eq!(a.len(), model.len());
            }
            let listed: HashMap<Id, u16> = a.iter().map(|(id, v)| (id, *v)).collect();
            prop_assert_eq!(listed, model);
        }
    }
}

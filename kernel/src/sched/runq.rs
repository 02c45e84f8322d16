//! A run queue: one FIFO per priority (0 lowest … 31 highest) and a bitmap
//! of the non-empty ones, so picking the next thread is a find-first-set.
//! Written by hand: core competence. Portable and host-tested. The full
//! scheduler (classes, per-CPU queues, balancing) builds on this.
//!
//! The FIFOs are intrusive doubly linked lists through a table of links
//! indexed by the thread's table slot ([`Slot`]): the table grows when a
//! thread is made ([`RunQueue::reserve_slot`]), so queueing, unqueueing
//! and picking never allocate and never fail for room. Every operation is
//! O(1).
//!
//! Invariants: bit `p` of `bitmap` is set iff FIFO `p` is non-empty; a
//! link is `queued` iff its item is in exactly one FIFO, at the priority
//! recorded in the link.

use crate::mm::kref::{ensure, oom};
use alloc::vec::Vec;
use keel_abi::Error;

/// Number of priority levels.
pub const PRIORITIES: usize = 32;

/// Something with a small, dense table index (a thread's arena slot).
pub trait Slot {
    /// The index; at most one live item has it at a time.
    fn slot(&self) -> usize;
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Link<T> {
    item: Option<T>,
    prio: u8,
    next: u32,
    prev: u32,
}

/// Ready threads by priority (see the module docs).
pub struct RunQueue<T> {
    /// `(head, tail)` slot of each priority's FIFO.
    ends: [(u32, u32); PRIORITIES],
    links: Vec<Link<T>>,
    bitmap: u32,
}

impl<T: PartialEq + Copy + Slot> RunQueue<T> {
    /// An empty queue.
    pub const fn new() -> Self {
        RunQueue {
            ends: [(NIL, NIL); PRIORITIES],
            links: Vec::new(),
            bitmap: 0,
        }
    }

    /// Makes room for an item with table index `slot` (done when a thread
    /// is made, so that queueing it never needs memory).
    pub fn reserve_slot(&mut self, slot: usize) -> Result<(), Error> {
        ensure(slot < NIL as usize, Error::OutOfMemory)?;
        let more = (slot + 1).saturating_sub(self.links.len());
        self.links.try_reserve(more).map_err(oom)?;
        self.links.resize(
            self.links.len() + more,
            Link {
                item: None,
                prio: 0,
                next: NIL,
                prev: NIL,
            },
        );
        Ok(())
    }

    /// Queues `t` last at `prio` (`InvalidArgument` for a priority out of
    /// range, `OutOfMemory` if its slot was never reserved, `InvalidState`
    /// if it is queued already).
    pub fn push(&mut self, prio: u8, t: T) -> Result<(), Error> {
        let p = usize::from(prio);
        let (_, tail) = *self.ends.get(p).ok_or(Error::InvalidArgument)?;
        let s = t.slot();
        let link = self.links.get_mut(s).ok_or(Error::OutOfMemory)?;
        ensure(link.item.is_none(), Error::InvalidState)?;
        *link = Link {
            item: Some(t),
            prio,
            next: NIL,
            prev: tail,
        };
        let s = s as u32;
        match self.links.get_mut(tail as usize) {
            Some(prev) => prev.next = s,
            None => self.ends[p].0 = s,
        }
        self.ends[p].1 = s;
        self.bitmap |= 1 << prio;
        Ok(())
    }

    /// The highest priority with a queued thread.
    pub fn highest(&self) -> Option<u8> {
        (self.bitmap != 0).then(|| 31 - self.bitmap.leading_zeros() as u8)
    }

    /// Takes the first thread of the highest priority.
    pub fn pop(&mut self) -> Option<(u8, T)> {
        let prio = self.highest()?;
        let head = self.ends.get(usize::from(prio))?.0;
        let t = self.links.get(head as usize)?.item?;
        self.remove(prio, t).then_some((prio, t))
    }

    /// Takes `t` out of the FIFO of `prio`; whether it was there.
    pub fn remove(&mut self, prio: u8, t: T) -> bool {
        let s = t.slot();
        let Some(link) = self.links.get(s).copied() else {
            return false;
        };
        if link.item != Some(t) || link.prio != prio {
            return false;
        }
        let p = usize::from(prio);
        match self.links.get_mut(link.prev as usize) {
            Some(prev) => prev.next = link.next,
            None => self.ends[p].0 = link.next,
        }
        match self.links.get_mut(link.next as usize) {
            Some(next) => next.prev = link.prev,
            None => self.ends[p].1 = link.prev,
        }
        if let Some(l) = self.links.get_mut(s) {
            l.item = None;
        }
        if self.ends[p].0 == NIL {
            self.bitmap &= !(1 << prio);
        }
        true
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bitmap == 0
    }

    /// The queued threads, highest priority first, FIFO within one.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.ends.iter().rev().flat_map(move |&(head, _)| {
            let mut s = head;
            core::iter::from_fn(move || {
                let l = self.links.get(s as usize)?;
                s = l.next;
                l.item
            })
        })
    }
}

impl<T: PartialEq + Copy + Slot> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
impl Slot for char {
    fn slot(&self) -> usize {
        *self as usize - 'a' as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> RunQueue<char> {
        let mut q = RunQueue::new();
        q.reserve_slot(25).unwrap();
        q
    }

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut q = queue();
        q.push(3, 'a').unwrap();
        q.push(7, 'b').unwrap();
        q.push(3, 'c').unwrap();
        q.push(31, 'd').unwrap();
        assert_eq!(q.push(32, 'x'), Err(Error::InvalidArgument));
        assert_eq!(q.push(3, 'a'), Err(Error::InvalidState), "queued twice");
        assert_eq!(q.highest(), Some(31));
        assert_eq!(q.pop(), Some((31, 'd')));
        assert_eq!(q.pop(), Some((7, 'b')));
        assert!(q.remove(3, 'a'));
        assert!(!q.remove(3, 'a'));
        assert_eq!(q.pop(), Some((3, 'c')));
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
        q.push(0, 'z').unwrap();
        assert_eq!(q.pop(), Some((0, 'z')));
    }

    #[test]
    fn removal_from_the_middle_keeps_order_and_unreserved_slots_are_refused() {
        let mut q = queue();
        for t in ['a', 'b', 'c', 'd'] {
            q.push(5, t).unwrap();
        }
        assert!(q.remove(5, 'c'));
        assert!(!q.remove(4, 'b'), "wrong priority");
        assert!(q.remove(5, 'a'));
        q.push(5, 'a').unwrap();
        let order: Vec<_> = core::iter::from_fn(|| q.pop().map(|(_, t)| t)).collect();
        assert_eq!(order, ['b', 'd', 'a']);
        let mut small = RunQueue::new();
        assert_eq!(small.push(1, 'c'), Err(Error::OutOfMemory));
        small.reserve_slot(2).unwrap();
        small.push(1, 'c').unwrap();
    }
}

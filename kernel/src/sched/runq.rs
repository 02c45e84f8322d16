//! A run queue: one FIFO per priority (0 lowest … 31 highest) and a bitmap
//! of the non-empty ones, so picking the next thread is a find-first-set.
//! Written by hand: core competence. Portable and host-tested. The full
//! scheduler (classes, per-CPU queues, balancing) builds on this.
//!
//! Invariant: bit `p` of `bitmap` is set iff `queues[p]` is non-empty.

use alloc::collections::VecDeque;
use keel_abi::Error;

/// Number of priority levels.
pub const PRIORITIES: usize = 32;

/// Ready threads by priority (see the module docs).
pub struct RunQueue<T> {
    queues: [VecDeque<T>; PRIORITIES],
    bitmap: u32,
}

impl<T: PartialEq + Copy> RunQueue<T> {
    /// An empty queue.
    pub const fn new() -> Self {
        RunQueue {
            queues: [const { VecDeque::new() }; PRIORITIES],
            bitmap: 0,
        }
    }

    /// Makes room for one more thread at priority `prio`.
    pub fn reserve(&mut self, prio: u8) -> Result<(), Error> {
        self.queues
            .get_mut(usize::from(prio))
            .ok_or(Error::InvalidArgument)?
            .try_reserve(1)
            .map_err(|_| Error::OutOfMemory)
    }

    /// Queues `t` at the back of priority `prio` (`OutOfMemory` if the
    /// queue cannot grow; `InvalidArgument` for a bad priority).
    pub fn push(&mut self, prio: u8, t: T) -> Result<(), Error> {
        let q = self
            .queues
            .get_mut(usize::from(prio))
            .ok_or(Error::InvalidArgument)?;
        q.try_reserve(1).map_err(|_| Error::OutOfMemory)?;
        q.push_back(t);
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
        let q = self.queues.get_mut(usize::from(prio))?;
        let t = q.pop_front()?;
        if q.is_empty() {
            self.bitmap &= !(1 << prio);
        }
        Some((prio, t))
    }

    /// Removes `t` from priority `prio`'s queue; whether it was there.
    pub fn remove(&mut self, prio: u8, t: T) -> bool {
        let Some(q) = self.queues.get_mut(usize::from(prio)) else {
            return false;
        };
        let Some(i) = q.iter().position(|x| *x == t) else {
            return false;
        };
        q.remove(i);
        if q.is_empty() {
            self.bitmap &= !(1 << prio);
        }
        true
    }

    /// Whether no thread is queued.
    pub fn is_empty(&self) -> bool {
        self.bitmap == 0
    }
}

impl<T: PartialEq + Copy> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_priority_first_then_fifo() {
        let mut q = RunQueue::new();
        q.push(3, 'a').unwrap();
        q.push(7, 'b').unwrap();
        q.push(3, 'c').unwrap();
        q.push(31, 'd').unwrap();
        assert_eq!(q.push(32, 'x'), Err(Error::InvalidArgument));
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
}

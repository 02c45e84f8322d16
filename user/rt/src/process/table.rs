//! The process table of the process server: process ids, parents and
//! children, zombies, reaping and orphans. Portable (generic over what the
//! server keeps per process) and host-tested; written by hand.
//!
//! A pid is `generation << 32 | (slot + 1)`: lookup is one index, and a
//! slot's generation advances each time it is freed, so a stale pid never
//! names a later process (a slot whose generation would wrap is retired).
//! The root task is slot 0, generation 0: pid 1.
//!
//! Invariants: every live or zombie entry but the root's has a parent
//! entry whose list of children holds it, and only that list; a zombie holds no
//! payload (the server released it when the process ended); the
//! children of an ending process go to the root as `adopted`, and an
//! adopted process is removed as soon as it ends (nobody waits for it).

use alloc::vec::Vec;
use keel_abi::Error;
use keel_abi::process::ROOT_PID;

/// A process id (never 0).
pub type Pid = u64;

/// Most processes at once.
pub const MAX_PROCESSES: usize = 1 << 20;

/// One process as the table keeps it.
pub struct Entry<T> {
    pub parent: Pid,
    /// Its children, as a list through their `next`/`prev` (0: none).
    first_child: Pid,
    next: Pid,
    prev: Pid,
    /// Its status once it has ended (a zombie until reaped).
    pub ended: Option<u64>,
    /// Reparented to the root after its parent ended.
    pub adopted: bool,
    /// What the server keeps for a live process (none for a zombie).
    pub data: Option<T>,
}

impl<T> Entry<T> {
    fn new(parent: Pid, data: T) -> Entry<T> {
        Entry {
            parent,
            first_child: 0,
            next: 0,
            prev: 0,
            ended: None,
            adopted: false,
            data: Some(data),
        }
    }
}

struct Slot<T> {
    generation: u32,
    entry: Option<Entry<T>>,
}

/// The table. Nothing but its slot and free vectors allocates (they grow
/// to the most processes alive at once), so a runtime with a simple heap
/// can keep it.
pub struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    retired: usize,
}

fn split(pid: Pid) -> (usize, u32) {
    (((pid as u32) as usize).wrapping_sub(1), (pid >> 32) as u32)
}

impl<T> Table<T> {
    /// A table holding only the root task (pid 1), with `data`, with room
    /// for `capacity` processes before it grows.
    pub fn new(data: T, capacity: usize) -> Table<T> {
        let mut slots = Vec::with_capacity(capacity);
        slots.push(Slot {
            generation: 0,
            entry: Some(Entry::new(0, data)),
        });
        Table {
            slots,
            free: Vec::with_capacity(capacity),
            retired: 0,
        }
    }

    /// The entry of `pid` (live or zombie).
    pub fn get(&self, pid: Pid) -> Option<&Entry<T>> {
        let (i, g) = split(pid);
        let s = self.slots.get(i).filter(|s| s.generation == g)?;
        s.entry.as_ref()
    }

    fn get_mut(&mut self, pid: Pid) -> Option<&mut Entry<T>> {
        let (i, g) = split(pid);
        let s = self.slots.get_mut(i).filter(|s| s.generation == g)?;
        s.entry.as_mut()
    }

    /// The payload of a live process.
    pub fn data(&self, pid: Pid) -> Option<&T> {
        self.get(pid)?.data.as_ref()
    }

    pub fn data_mut(&mut self, pid: Pid) -> Option<&mut T> {
        self.get_mut(pid)?.data.as_mut()
    }

    /// Processes in the table (live and zombies).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len() - self.retired
    }

    /// Whether the table holds only the root task.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// The children of `pid`.
    pub fn children(&self, pid: Pid) -> impl Iterator<Item = Pid> + '_ {
        let first = self.get(pid).map_or(0, |e| e.first_child);
        core::iter::successors(Some(first).filter(|&c| c != 0), |&c| {
            self.get(c).map(|e| e.next).filter(|&n| n != 0)
        })
    }

    /// The pid a new process will get (for its information page before it
    /// is inserted); `OutOfMemory` if the table is full.
    pub fn next_pid(&self) -> Result<Pid, Error> {
        match self.free.last() {
            Some(&i) => {
                let g = self.slots.get(i as usize).map_or(0, |s| s.generation);
                Ok((u64::from(g) << 32) | (u64::from(i) + 1))
            }
            None if self.slots.len() < MAX_PROCESSES => Ok(self.slots.len() as u64 + 1),
            None => Err(Error::OutOfMemory),
        }
    }

    /// A new live child of live `parent`, holding `data`; its pid is
    /// [`Self::next_pid`]'s.
    pub fn insert(&mut self, parent: Pid, data: T) -> Result<Pid, Error> {
        let pid = self.next_pid()?;
        if self.get(parent).is_none_or(|e| e.ended.is_some()) {
            return Err(Error::InvalidArgument);
        }
        let (i, g) = split(pid);
        let entry = Some(Entry::new(parent, data));
        if let Some(s) = self.slots.get_mut(i) {
            self.free.pop();
            *s = Slot {
                generation: g,
                entry,
            };
        } else {
            self.slots.try_reserve(1).map_err(|_| Error::OutOfMemory)?;
            self.free
                .try_reserve(self.slots.len() + 1)
                .map_err(|_| Error::OutOfMemory)?;
            self.slots.push(Slot {
                generation: g,
                entry,
            });
        }
        self.link(parent, pid);
        Ok(pid)
    }

    /// Puts `c` first in `parent`'s children.
    fn link(&mut self, parent: Pid, c: Pid) {
        let Some(p) = self.get_mut(parent) else {
            return;
        };
        let old = core::mem::replace(&mut p.first_child, c);
        if let Some(o) = self.get_mut(old) {
            o.prev = c;
        }
        if let Some(e) = self.get_mut(c) {
            (e.parent, e.next, e.prev) = (parent, old, 0);
        }
    }

    /// Takes `c` out of its parent's children.
    fn unlink(&mut self, c: Pid) {
        let Some(&Entry {
            parent, next, prev, ..
        }) = self.get(c)
        else {
            return;
        };
        if let Some(n) = self.get_mut(next) {
            n.prev = prev;
        }
        match self.get_mut(prev) {
            Some(p) => p.next = next,
            None => {
                if let Some(p) = self.get_mut(parent) {
                    p.first_child = next;
                }
            }
        }
    }

    /// `pid` (live) ends with `status`: returns its payload to release.
    /// Its children go to the root (adopted; those that already ended are
    /// removed). An adopted process is removed at once; any other stays a
    /// zombie until its parent reaps it. Returns the payload and the pid
    /// to tell (the parent, unless the process was removed).
    pub fn end(&mut self, pid: Pid, status: u64) -> Option<(T, Option<Pid>)> {
        if pid == ROOT_PID {
            return None;
        }
        let e = self.get_mut(pid).filter(|e| e.ended.is_none())?;
        e.ended = Some(status);
        let (data, adopted, parent) = (e.data.take()?, e.adopted, e.parent);
        while let Some(c) = self.get(pid).map(|e| e.first_child).filter(|&c| c != 0) {
            self.unlink(c);
            if self.get(c).is_some_and(|e| e.ended.is_some()) {
                self.free_slot(c);
            } else {
                self.link(ROOT_PID, c);
                if let Some(e) = self.get_mut(c) {
                    e.adopted = true;
                }
            }
        }
        if adopted {
            self.unlink(pid);
            self.free_slot(pid);
            return Some((data, None));
        }
        Some((data, Some(parent)))
    }

    /// Empties `pid`'s slot (already unlinked).
    fn free_slot(&mut self, pid: Pid) {
        let (i, g) = split(pid);
        if let Some(s) = self.slots.get_mut(i).filter(|s| s.generation == g) {
            s.entry = None;
            match g.checked_add(1) {
                Some(next) => {
                    s.generation = next;
                    // Room was reserved when the slot was made.
                    self.free.push(i as u32);
                }
                None => self.retired += 1,
            }
        }
    }

    /// Reaps an ended child of `parent` (`which`, or any): its pid and
    /// status. `WouldBlock` if the children asked for live on,
    /// `InvalidArgument` if there is no such child.
    /// A given child is found by its pid; any child, by a walk of them.
    pub fn reap(&mut self, parent: Pid, which: Option<Pid>) -> Result<(Pid, u64), Error> {
        let mut any = false;
        let found = match which {
            Some(w) => self.get(w).filter(|e| e.parent == parent).and_then(|e| {
                any = true;
                e.ended.map(|_| w)
            }),
            None => self.children(parent).find(|&c| {
                any = true;
                self.get(c).is_some_and(|e| e.ended.is_some())
            }),
        };
        let Some(pid) = found else {
            return Err(if any {
                Error::WouldBlock
            } else {
                Error::InvalidArgument
            });
        };
        let status = self.get(pid).and_then(|e| e.ended).unwrap_or(0);
        self.unlink(pid);
        self.free_slot(pid);
        Ok((pid, status))
    }

    /// Whether `a` is `b` or one of its ancestors.
    pub fn is_ancestor(&self, a: Pid, b: Pid) -> bool {
        let mut at = b;
        // Parents are made before their children and a pid never names
        // another process, so the walk ends; the bound is for safety.
        for _ in 0..=self.slots.len() {
            if at == a {
                return true;
            }
            match self.get(at) {
                Some(e) if e.parent != 0 => at = e.parent,
                _ => return false,
            }
        }
        false
    }

    /// The live processes' pids.
    pub fn live(&self) -> impl Iterator<Item = Pid> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.entry.as_ref()?.data.as_ref()?;
            Some((u64::from(s.generation) << 32) | (i as u64 + 1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_end_are_reaped_and_ids_are_not_reused() {
        let mut t = Table::new('r', 4);
        let a = t.insert(ROOT_PID, 'a').unwrap();
        let b = t.insert(ROOT_PID, 'b').unwrap();
        assert_eq!(t.next_pid().unwrap(), 4);
        assert_eq!(t.reap(ROOT_PID, None), Err(Error::WouldBlock));
        assert_eq!(t.reap(a, None), Err(Error::InvalidArgument), "no children");
        assert_eq!(t.end(a, 7), Some(('a', Some(ROOT_PID))));
        assert_eq!(t.end(a, 8), None, "ends once");
        assert_eq!(t.data(a), None, "a zombie keeps only its status");
        assert_eq!(t.reap(ROOT_PID, Some(b)), Err(Error::WouldBlock));
        assert_eq!(t.reap(ROOT_PID, None), Ok((a, 7)));
        assert!(t.get(a).is_none());
        let c = t.insert(ROOT_PID, 'c').unwrap();
        assert_eq!(c as u32, a as u32, "the slot is reused");
        assert_ne!(c, a, "with a new generation");
        assert!(t.get(a).is_none() && t.data(c) == Some(&'c'));
        assert_eq!(
            t.reap(ROOT_PID, Some(a)),
            Err(Error::InvalidArgument),
            "stale pid"
        );
        assert_eq!(t.end(ROOT_PID, 0), None, "the root never ends");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn orphans_go_to_the_root_and_are_removed_when_they_end() {
        let mut t = Table::new(0, 4);
        let p = t.insert(ROOT_PID, 1).unwrap();
        let live = t.insert(p, 2).unwrap();
        let dead = t.insert(p, 3).unwrap();
        let grandchild = t.insert(live, 4).unwrap();
        assert!(t.is_ancestor(ROOT_PID, grandchild) && t.is_ancestor(p, grandchild));
        assert!(!t.is_ancestor(dead, grandchild) && !t.is_ancestor(grandchild, p));
        t.end(dead, 0).unwrap();
        assert_eq!(t.end(p, 0), Some((1, Some(ROOT_PID))));
        assert!(t.get(dead).is_none(), "an ended orphan is removed");
        let e = t.get(live).unwrap();
        assert!(e.adopted && e.parent == ROOT_PID);
        assert!(t.children(ROOT_PID).any(|c| c == live));
        assert_eq!(t.end(live, 5), Some((2, None)), "nobody to tell");
        assert!(t.get(live).is_none());
        assert_eq!(t.get(grandchild).unwrap().parent, ROOT_PID);
        assert_eq!(t.reap(ROOT_PID, None), Ok((p, 0)));
        assert_eq!(t.live().collect::<Vec<_>>(), [ROOT_PID, grandchild]);
    }

    #[test]
    fn a_dead_parent_cannot_have_children() {
        let mut t = Table::new((), 4);
        let p = t.insert(ROOT_PID, ()).unwrap();
        t.end(p, 0).unwrap();
        assert_eq!(t.insert(p, ()), Err(Error::InvalidArgument));
        assert_eq!(t.insert(p + (1 << 32), ()), Err(Error::InvalidArgument));
    }
}

//! Address-space ids (PCIDs on x86_64, ASIDs on AArch64 and RISC-V) by
//! generations, so switching address spaces does not flush the TLB.
//! Written by hand: core competence.
//!
//! Ids are handed out in order within a generation and never reused in
//! it. When they run out, the generation advances, the whole TLB is
//! flushed once, and every space gets a fresh id the next time it is
//! loaded. A space's tag is `generation << 16 | id`; tag 0 (the state of a
//! new space) is never current, since generations start at 1. Id 0 belongs
//! to the kernel. With a single id (the CPU has none), every load flushes.
//!
//! Invariant: no two spaces hold the same id in the current generation, and
//! an id handed out in the current generation has no TLB entries left from
//! an earlier one (the rollover flushed them).

/// What the caller must flush before loading the space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Nothing: the id's entries are this space's.
    None,
    /// The entries tagged with this space's id.
    Asid,
    /// The whole (non-global) TLB: a new generation began.
    All,
}

/// The id allocator (one, behind the kernel lock; per-CPU generations come
/// with SMP shootdowns).
#[derive(Debug)]
pub struct Asids {
    count: u32,
    next: u32,
    generation: u64,
}

impl Asids {
    /// An allocator for `count` ids (`0..count`, `0` reserved).
    pub const fn new(count: u32) -> Asids {
        Asids {
            count: if count > 1 << 16 { 1 << 16 } else { count },
            next: 1,
            generation: 1,
        }
    }

    /// The tag a space with tag `tag` must use now, and what to flush.
    pub fn assign(&mut self, tag: u64) -> (u64, Flush) {
        if self.count <= 1 {
            return (0, Flush::Asid);
        }
        if tag >> 16 == self.generation {
            return (tag, Flush::None);
        }
        let mut flush = Flush::None;
        if self.next >= self.count {
            self.generation += 1;
            self.next = 1;
            flush = Flush::All;
        }
        let id = self.next;
        self.next += 1;
        ((self.generation << 16) | u64::from(id), flush)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn ids_are_unique_within_a_generation_and_roll_over() {
        let mut a = Asids::new(4);
        let (t1, f1) = a.assign(0);
        let (t2, f2) = a.assign(0);
        let (t3, f3) = a.assign(0);
        assert_eq!((f1, f2, f3), (Flush::None, Flush::None, Flush::None));
        assert_eq!([t1 as u16, t2 as u16, t3 as u16], [1, 2, 3]);
        assert_eq!(a.assign(t2), (t2, Flush::None), "still current");
        let (t4, f4) = a.assign(0);
        assert_eq!((t4 as u16, f4), (1, Flush::All), "rollover");
        let (t1b, f) = a.assign(t1);
        assert_eq!((t1b as u16, f), (2, Flush::None), "old tags get new ids");
        assert_eq!(a.assign(t4), (t4, Flush::None));
    }

    #[test]
    fn without_ids_every_load_flushes() {
        let mut a = Asids::new(1);
        assert_eq!(a.assign(0), (0, Flush::Asid));
        assert_eq!(a.assign(0), (0, Flush::Asid));
    }

    #[test]
    fn random_loads_never_share_an_id() {
        let mut a = Asids::new(7);
        let mut tags = [0u64; 20];
        let mut seed = 12345u64;
        for _ in 0..5000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let i = (seed >> 33) as usize % tags.len();
            let (t, f) = a.assign(tags[i]);
            tags[i] = t;
            if f == Flush::All {
                // Everyone else's tag is stale now.
                assert!(
                    tags.iter()
                        .enumerate()
                        .all(|(j, &x)| j == i || x >> 16 != t >> 16)
                );
            }
            let mut current: HashMap<u16, usize> = HashMap::new();
            for (j, &x) in tags.iter().enumerate() {
                if x >> 16 == t >> 16 {
                    assert!(current.insert(x as u16, j).is_none(), "id shared");
                    assert_ne!(x as u16, 0);
                }
            }
        }
    }
}

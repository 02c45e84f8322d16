//! Page tables are charged to the pool of the address space they belong
//! to, and given back when unmapping empties them. Regression test for a
//! fuzzing find: one page mapped at one address per GiB took every free
//! frame while its pool was charged for the root table only.

use super::{PAGE, root};
use crate::harness::{Ctx, TestResult};
use keel_abi::Error;
use keel_abi::cap::CapToken;
use keel_abi::syscall::{MEM_EAGER, PROT_WRITE, SystemInfoKey};
use keel_rt::syscall::{
    aspace_create, cap_delete, map, mem_create, pool_available, system_info, unmap,
};

const GIB: usize = 1 << 30;
/// Pool pages left for page tables.
const LEFT: usize = 64;
/// Bound on the maps tried (the pool runs out after about `LEFT / 2`).
const MAX_MAPS: usize = 100_000;

pub fn one_page_per_gib_exhausts_the_pool_not_memory() -> TestResult {
    let r = root()?;
    let start = pool_available(r.pool).ctx("pool_available")?;
    let space = aspace_create(r.pool).ctx("aspace_create")?;
    let page = mem_create(r.pool, 1, MEM_EAGER).ctx("mem_create")?;
    let avail = pool_available(r.pool).ctx("pool_available")?;
    // A lazily allocated object takes all but `LEFT` pages of the pool
    // without taking frames, so the pool runs out long before memory.
    let filler = mem_create(r.pool, avail.saturating_sub(LEFT), 0);
    let result = match filler {
        Ok(_) => fill_with_tables(r.pool, space, page),
        Err(e) => Err(alloc::format!("mem_create (filler): {e:?}")),
    };
    // Clean up whatever happened, so a failure cannot starve later tests.
    if let Ok(f) = filler {
        let _ = cap_delete(f);
    }
    let _ = cap_delete(space);
    let _ = cap_delete(page);
    result?;
    ensure_eq!(
        pool_available(r.pool),
        Ok(start),
        "deleting the space gave every table back"
    );
    Ok(())
}

/// Maps `page` at one address per GiB of `space` until the pool has no
/// room for tables, then unmaps everything and maps some again.
fn fill_with_tables(pool: CapToken, space: CapToken, page: CapToken) -> TestResult {
    ensure_eq!(pool_available(pool), Ok(LEFT));
    // The first map needs a table per level below the root: three, or two
    // under RISC-V's Sv39. An address space keeps that path to its last
    // emptied 2 MiB block for reuse (docs/memory.md).
    map(space, page, GIB, 0, 1, PROT_WRITE).ctx("first map")?;
    let path = LEFT - pool_available(pool).ctx("pool_available")?;
    ensure!(path == 2 || path == 3, "the first map took {} tables", path);
    let mut mapped = 1;
    let result = loop {
        if mapped == MAX_MAPS {
            break Ok(());
        }
        match map(space, page, (mapped + 1) * GIB, 0, 1, PROT_WRITE) {
            Ok(()) => mapped += 1,
            Err(e) => break Err(e),
        }
    };
    ensure_eq!(result, Err(Error::OutOfMemory), "after {} maps", mapped);
    // Every other map needs two (a 1 GiB and a 2 MiB table): the pool paid
    // for each.
    ensure_eq!(mapped, (LEFT - path) / 2 + 1);
    let left = pool_available(pool).ctx("pool_available")?;
    ensure!(
        left < 2,
        "{} pages left: the pool, not memory, ran out",
        left
    );
    let free = system_info(SystemInfoKey::FreeFrames).ctx("system_info")?;
    ensure!(free > 1000, "only {} free frames", free);
    for i in 0..mapped {
        // SAFETY: not the caller's address space.
        unsafe { unmap(space, (i + 1) * GIB, 1) }.ctx("unmap")?;
    }
    // Every table comes back but the path to the last emptied block,
    // which the space keeps (still charged) for the next map there.
    ensure_eq!(
        pool_available(pool),
        Ok(LEFT - path),
        "unmapping gave every other table back"
    );
    ensure_eq!(
        system_info(SystemInfoKey::FreeFrames),
        Ok(free + 2 * mapped - 2),
        "and every other table frame"
    );
    // Leave some mapped: deleting the space must give those back too.
    for i in 0..8 {
        map(space, page, (i + 1) * GIB + PAGE, 0, 1, PROT_WRITE).ctx("map again")?;
    }
    ensure_eq!(pool_available(pool), Ok(LEFT - path - 2 * 8));
    Ok(())
}

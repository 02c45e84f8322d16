//! Memory objects, address spaces and mappings: create, map, access,
//! protect, unmap, pool accounting, rights, W^X, and the boot image.

use super::{PAGE, next_va, root, stale};
use crate::harness::{Ctx, TestResult};
use keel_abi::Error;
use keel_abi::boot::{ROOT_INFO_ADDR, USER_END, USER_IMAGE_MIN};
use keel_abi::cap::{NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::{MEM_EAGER, PROT_EXEC, PROT_WRITE, SystemInfoKey};
use keel_rt::syscall::{
    aspace_create, cap_delete, cap_derive, cap_identify, map, mem_create, mem_size, pool_available,
    protect, system_info, unmap,
};

/// Writes a word at `va`, which the calling test mapped writable.
fn write_word(va: usize, value: u64) {
    // SAFETY: tests call this only on pages they mapped writable and have
    // not unmapped.
    unsafe { (va as *mut u64).write_volatile(value) }
}

/// Reads the word at `va`, which the calling test mapped.
fn read_word(va: usize) -> u64 {
    // SAFETY: tests call this only on pages they mapped and have not
    // unmapped.
    unsafe { (va as *const u64).read_volatile() }
}

fn word_for(page: usize, at: usize) -> u64 {
    0x5eed_0000_0000_0000 | ((page as u64) << 16) | at as u64
}

pub fn map_write_read_unmap() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 4, 0).ctx("mem_create")?;
    ensure_eq!(mem.object_type(), Some(ObjectType::MemoryObject));
    ensure_eq!(mem_size(mem), Ok(4));
    let va = next_va(4);
    map(r.aspace, mem, va, 0, 4, PROT_WRITE).ctx("map")?;
    for page in 0..4 {
        let base = va + page * PAGE;
        ensure_eq!(read_word(base), 0, "fresh memory is zero");
        write_word(base, word_for(page, 0));
        write_word(base + PAGE - 8, word_for(page, PAGE - 8));
    }
    for page in 0..4 {
        let base = va + page * PAGE;
        ensure_eq!(read_word(base), word_for(page, 0));
        ensure_eq!(read_word(base + PAGE - 8), word_for(page, PAGE - 8));
    }
    // SAFETY: nothing uses the range any more.
    unsafe { unmap(r.aspace, va, 4) }.ctx("unmap")?;
    // The object keeps its contents: map it again, read-only, elsewhere,
    // from its second page.
    let va2 = next_va(3);
    map(r.aspace, mem, va2, 1, 3, 0).ctx("map again")?;
    for page in 1..4 {
        ensure_eq!(read_word(va2 + (page - 1) * PAGE), word_for(page, 0));
    }
    // SAFETY: nothing uses the range any more.
    unsafe { unmap(r.aspace, va2, 3) }.ctx("unmap again")?;
    // The first range is free again.
    map(r.aspace, mem, va, 0, 1, 0).ctx("map at the old address")?;
    // SAFETY: nothing uses the range any more.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap old address")?;
    cap_delete(mem).ctx("delete")?;
    Ok(())
}

pub fn same_object_mapped_twice_shares_memory() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 2, 0).ctx("mem_create")?;
    let (a, b) = (next_va(2), next_va(2));
    map(r.aspace, mem, a, 0, 2, PROT_WRITE).ctx("map a")?;
    map(r.aspace, mem, b, 0, 2, 0).ctx("map b")?;
    write_word(a + PAGE + 16, 0xfeed_f00d);
    ensure_eq!(read_word(b + PAGE + 16), 0xfeed_f00d);
    // SAFETY: nothing uses the ranges any more.
    unsafe { unmap(r.aspace, a, 2) }.ctx("unmap a")?;
    ensure_eq!(read_word(b + PAGE + 16), 0xfeed_f00d);
    // SAFETY: as above.
    unsafe { unmap(r.aspace, b, 2) }.ctx("unmap b")?;
    cap_delete(mem).ctx("delete")?;
    Ok(())
}

pub fn mem_create_charges_the_pool() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool_available")?;
    ensure!(before as u64 <= r.info.pool_pages);
    let eager = mem_create(r.pool, 8, MEM_EAGER).ctx("eager")?;
    ensure_eq!(pool_available(r.pool), Ok(before - 8));
    let lazy = mem_create(r.pool, 8, 0).ctx("lazy")?;
    ensure_eq!(pool_available(r.pool), Ok(before - 16));
    cap_delete(eager).ctx("delete eager")?;
    cap_delete(lazy).ctx("delete lazy")?;
    ensure_eq!(pool_available(r.pool), Ok(before));
    Ok(())
}

pub fn eager_mem_create_allocates_frames() -> TestResult {
    let r = root()?;
    let free = || system_info(SystemInfoKey::FreeFrames).ctx("FreeFrames");
    let before = free()?;
    let eager = mem_create(r.pool, 32, MEM_EAGER).ctx("eager")?;
    let after = free()?;
    ensure!(after + 32 <= before, "free frames {before} -> {after}");
    cap_delete(eager).ctx("delete")?;
    ensure!(free()? + 8 >= before, "frames given back");
    Ok(())
}

pub fn mem_create_rejects_bad_arguments() -> TestResult {
    let r = root()?;
    ensure_eq!(mem_create(r.pool, 0, 0), Err(Error::InvalidArgument));
    ensure_eq!(mem_create(r.pool, 1, 2), Err(Error::InvalidArgument));
    ensure_eq!(
        mem_create(r.pool, 1, usize::MAX),
        Err(Error::InvalidArgument)
    );
    let avail = pool_available(r.pool).ctx("pool_available")?;
    ensure_eq!(mem_create(r.pool, avail + 1, 0), Err(Error::OutOfMemory));
    // An absurd size may be refused as such or as more than the pool has.
    let huge = mem_create(r.pool, usize::MAX / PAGE, 0);
    ensure!(
        matches!(huge, Err(Error::InvalidArgument | Error::OutOfMemory)),
        "{huge:?}"
    );
    ensure_eq!(
        pool_available(r.pool),
        Ok(avail),
        "a refused request charges nothing"
    );
    let ro = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure_eq!(mem_create(ro, 1, 0), Err(Error::AccessDenied));
    cap_delete(ro).ctx("delete")?;
    ensure_eq!(
        mem_create(stale(r.pool), 1, 0),
        Err(Error::InvalidCapability)
    );
    Ok(())
}

pub fn map_refuses_write_and_execute() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 1, 0).ctx("mem_create")?;
    let va = next_va(1);
    ensure_eq!(
        map(r.aspace, mem, va, 0, 1, PROT_WRITE | PROT_EXEC),
        Err(Error::InvalidArgument)
    );
    for prot in [4, 8, usize::MAX] {
        ensure_eq!(
            map(r.aspace, mem, va, 0, 1, prot),
            Err(Error::InvalidArgument),
            "prot {prot}"
        );
    }
    // Executable alone is fine (and so is writable alone).
    map(r.aspace, mem, va, 0, 1, PROT_EXEC).ctx("map executable")?;
    // ... but it cannot be made writable afterwards.
    // SAFETY: nothing uses the range.
    let widen = unsafe { protect(r.aspace, va, 1, PROT_WRITE) };
    ensure!(widen.is_err(), "protect X -> W: {widen:?}");
    // SAFETY: nothing uses the range.
    let both = unsafe { protect(r.aspace, va, 1, PROT_WRITE | PROT_EXEC) };
    ensure_eq!(both, Err(Error::InvalidArgument));
    // SAFETY: nothing uses the range.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    Ok(())
}

pub fn map_checks_the_range() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 2, 0).ctx("mem_create")?;
    let va = next_va(2);
    let invalid = [
        (va + 8, 0, 1),
        (0, 0, 1),
        (0x10, 0, 1),
        (0xffff_8000_0000_0000, 0, 1),
        (0xffff_ffff_8000_0000, 0, 1),
        (USER_END - PAGE, 0, 2),
        (USER_END, 0, 1),
        (va, 0, 0),
        (va, 1, 2),
        (va, 2, 1),
        (va, usize::MAX, 1),
        (va, 0, usize::MAX),
    ];
    for (at, offset, pages) in invalid {
        ensure_eq!(
            map(r.aspace, mem, at, offset, pages, 0),
            Err(Error::InvalidArgument),
            "va {at:#x} offset {offset} pages {pages}"
        );
    }
    // Over existing mappings: the program's own image, the information
    // page, and a partial overlap with a fresh mapping.
    ensure_eq!(
        map(r.aspace, mem, USER_IMAGE_MIN, 0, 1, 0),
        Err(Error::AlreadyExists)
    );
    ensure_eq!(
        map(r.aspace, mem, ROOT_INFO_ADDR, 0, 1, 0),
        Err(Error::AlreadyExists)
    );
    map(r.aspace, mem, va, 0, 2, 0).ctx("map")?;
    ensure_eq!(
        map(r.aspace, mem, va + PAGE, 0, 1, 0),
        Err(Error::AlreadyExists)
    );
    ensure_eq!(
        map(r.aspace, mem, va - PAGE, 0, 2, 0),
        Err(Error::AlreadyExists)
    );
    // SAFETY: nothing uses the range.
    unsafe { unmap(r.aspace, va, 2) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    Ok(())
}

pub fn map_needs_rights() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 1, 0).ctx("mem_create")?;
    let va = next_va(1);
    let ro = cap_derive(mem, Rights::READ, NO_BADGE).ctx("derive ro")?;
    ensure_eq!(
        map(r.aspace, ro, va, 0, 1, PROT_WRITE),
        Err(Error::AccessDenied)
    );
    ensure_eq!(
        map(r.aspace, ro, va, 0, 1, PROT_EXEC),
        Err(Error::AccessDenied)
    );
    let rw = cap_derive(mem, Rights::READ | Rights::WRITE, NO_BADGE).ctx("derive rw")?;
    ensure_eq!(
        map(r.aspace, rw, va, 0, 1, PROT_EXEC),
        Err(Error::AccessDenied)
    );
    let none = cap_derive(mem, Rights::NONE, NO_BADGE).ctx("derive none")?;
    ensure_eq!(map(r.aspace, none, va, 0, 1, 0), Err(Error::AccessDenied));
    // The boot image is read-only.
    ensure_eq!(
        map(r.aspace, r.boot_image, va, 0, 1, PROT_WRITE),
        Err(Error::AccessDenied)
    );
    // An address-space capability without WRITE cannot map.
    let space_ro = cap_derive(r.aspace, Rights::READ, NO_BADGE).ctx("derive aspace")?;
    ensure_eq!(map(space_ro, mem, va, 0, 1, 0), Err(Error::AccessDenied));
    // SAFETY: the call is refused; nothing is unmapped.
    ensure_eq!(unsafe { unmap(space_ro, va, 1) }, Err(Error::AccessDenied));
    // Wrong types.
    ensure_eq!(
        map(r.aspace, r.pool, va, 0, 1, 0),
        Err(Error::WrongObjectType)
    );
    ensure_eq!(map(r.pool, mem, va, 0, 1, 0), Err(Error::WrongObjectType));
    // With READ, a read-only mapping works.
    map(r.aspace, ro, va, 0, 1, 0).ctx("map read-only")?;
    ensure_eq!(read_word(va), 0);
    // SAFETY: nothing uses the range any more.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap")?;
    for c in [space_ro, none, rw, ro, mem] {
        cap_delete(c).ctx("delete")?;
    }
    Ok(())
}

pub fn protect_changes_permissions() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 2, 0).ctx("mem_create")?;
    let va = next_va(2);
    map(r.aspace, mem, va, 0, 2, PROT_WRITE).ctx("map")?;
    write_word(va, 1);
    write_word(va + PAGE, 2);
    // SAFETY: the test only reads the range while it is read-only.
    unsafe { protect(r.aspace, va, 2, 0) }.ctx("protect read-only")?;
    ensure_eq!((read_word(va), read_word(va + PAGE)), (1, 2));
    // Back to what it was mapped with: allowed.
    // SAFETY: widening takes nothing away.
    unsafe { protect(r.aspace, va + PAGE, 1, PROT_WRITE) }.ctx("protect writable")?;
    write_word(va + PAGE, 3);
    ensure_eq!(read_word(va + PAGE), 3);
    // SAFETY: each of these is refused and changes nothing.
    unsafe {
        ensure_eq!(
            protect(r.aspace, va, 2, PROT_EXEC),
            Err(Error::AccessDenied)
        );
        ensure_eq!(
            protect(r.aspace, va, 2, PROT_WRITE | PROT_EXEC),
            Err(Error::InvalidArgument)
        );
        ensure_eq!(protect(r.aspace, va + 8, 1, 0), Err(Error::InvalidArgument));
        ensure_eq!(protect(r.aspace, va, 0, 0), Err(Error::InvalidArgument));
        ensure_eq!(protect(r.aspace, va, 3, 0), Err(Error::BadAddress));
        ensure_eq!(protect(r.aspace, next_va(1), 1, 0), Err(Error::BadAddress));
    }
    // SAFETY: nothing uses the range any more.
    unsafe { unmap(r.aspace, va, 2) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    Ok(())
}

pub fn unmap_checks_arguments() -> TestResult {
    let r = root()?;
    let va = next_va(1);
    // SAFETY: none of these ranges is in use (they are refused or empty).
    unsafe {
        ensure_eq!(unmap(r.aspace, va + 8, 1), Err(Error::InvalidArgument));
        ensure_eq!(unmap(r.aspace, va, 0), Err(Error::InvalidArgument));
        ensure_eq!(unmap(r.aspace, 0, 1), Err(Error::InvalidArgument));
        ensure_eq!(
            unmap(r.aspace, 0xffff_8000_0000_0000, 1),
            Err(Error::InvalidArgument)
        );
        ensure_eq!(
            unmap(r.aspace, USER_END - PAGE, 2),
            Err(Error::InvalidArgument)
        );
        ensure_eq!(unmap(r.pool, va, 1), Err(Error::WrongObjectType));
        // Nothing mapped there: nothing to do.
        ensure_eq!(unmap(r.aspace, va, 1), Ok(()));
    }
    Ok(())
}

pub fn aspace_create_charges_and_maps() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool_available")?;
    let space = aspace_create(r.pool).ctx("aspace_create")?;
    ensure_eq!(space.object_type(), Some(ObjectType::AddressSpace));
    ensure_eq!(
        cap_identify(space).map(|i| i.object_type()),
        Ok(Some(ObjectType::AddressSpace))
    );
    ensure_eq!(pool_available(r.pool), Ok(before - 1));
    let mem = mem_create(r.pool, 1, 0).ctx("mem_create")?;
    // The new space is empty: addresses used in ours are free there.
    map(space, mem, USER_IMAGE_MIN, 0, 1, PROT_WRITE).ctx("map")?;
    ensure_eq!(
        map(space, mem, USER_IMAGE_MIN, 0, 1, 0),
        Err(Error::AlreadyExists)
    );
    // SAFETY: not the caller's address space.
    unsafe { unmap(space, USER_IMAGE_MIN, 1) }.ctx("unmap")?;
    map(space, mem, ROOT_INFO_ADDR, 0, 1, 0).ctx("map, left mapped")?;
    cap_delete(space).ctx("delete space")?;
    cap_delete(mem).ctx("delete mem")?;
    ensure_eq!(pool_available(r.pool), Ok(before));
    ensure_eq!(aspace_create(r.aspace), Err(Error::WrongObjectType));
    let ro = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?;
    ensure_eq!(aspace_create(ro), Err(Error::AccessDenied));
    cap_delete(ro).ctx("delete ro")?;
    Ok(())
}

pub fn boot_image_is_the_elf_file() -> TestResult {
    let r = root()?;
    let pages = mem_size(r.boot_image).ctx("mem_size")?;
    let bytes = r.info.boot_image_bytes as usize;
    ensure_eq!(pages, bytes.div_ceil(PAGE));
    let va = next_va(pages);
    map(r.aspace, r.boot_image, va, 0, pages, 0).ctx("map")?;
    // SAFETY: the whole file is mapped readable at `va`.
    let header = unsafe { core::slice::from_raw_parts(va as *const u8, 64) };
    let u16_at = |i: usize| u16::from_le_bytes([header[i], header[i + 1]]);
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    ensure_eq!(&header[..4], b"\x7fELF");
    ensure_eq!(header[4], 2, "ELFCLASS64");
    ensure_eq!(u16_at(16), 2, "ET_EXEC");
    ensure_eq!(u16_at(18), keel_rt::ELF_MACHINE);
    ensure_eq!(
        u64_at(24),
        keel_rt::entry_address() as u64,
        "e_entry is _start"
    );
    // SAFETY: nothing uses the range any more.
    unsafe { unmap(r.aspace, va, pages) }.ctx("unmap")?;
    Ok(())
}

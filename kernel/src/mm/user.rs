//! User memory on the real machine: the kernel's [`Machine`] (global frame
//! allocator, direct map, architecture TLB operations), loading a user
//! address space with its address-space id, and the checked copy helpers
//! through which alone the kernel touches user memory.
//!
//! Copy helpers first resolve every page of the user range in the address
//! space (checking the region allows the access, faulting in demand-zero
//! pages and breaking copy-on-write sharing), then copy. When the space is
//! the loaded one they copy through the user addresses with
//! `arch::user_copy`, which opens user access (SMAP, PAN, SUM) only for the
//! copy and turns a fault into an error through the exception-fixup table;
//! otherwise they copy through the direct map.
//!
//! On a hosted target (host tests) the same code runs over the host
//! stand-ins of the frame allocator (`mm::host`) and the architecture
//! (`arch::host`): frames are host pages, the direct map is the identity,
//! and copies always go through the direct map (see [`is_loaded`]).

use super::asid::{Asids, Flush};
pub use super::aspace::UserAddr;
use super::aspace::{Access, AddressSpace, USER_BASE, USER_END};
use super::frame::ZoneRequest;
use super::machine::Machine;
use super::object::{MemObject, PAGE};
use super::{KernelTables, alloc_frames, frame_refs, kref::ensure, release_frame, share_frame};
use crate::arch;
use crate::bootinfo::MAX_CPUS;
use core::sync::atomic::{AtomicU64, Ordering};
use keel_abi::Error;
use spin::Mutex;

/// The machine under the kernel.
pub struct KernelMachine;

impl Machine for KernelMachine {
    type Format = arch::PageFormat;
    type Tables = KernelTables;
    const KERNEL_ENTRIES: core::ops::Range<usize> = arch::KERNEL_ROOT_ENTRIES;
    const FLUSH_NEW_ENTRIES: bool = arch::FLUSH_NEW_ENTRIES;

    fn tables() -> KernelTables {
        KernelTables
    }

    fn kernel_root() -> u64 {
        arch::kernel_root()
    }

    fn alloc_frame() -> Option<u64> {
        alloc_frames(0, ZoneRequest::Any)
    }

    fn zero_frame(pa: u64) {
        // SAFETY: `pa` is a frame the caller owns, mapped read-write by
        // the direct map.
        unsafe { core::ptr::write_bytes(arch::phys_to_virt(pa) as *mut u8, 0, PAGE) };
    }

    fn copy_frame(dst: u64, src: u64) {
        // SAFETY: both are whole frames in the direct map; `dst` is owned
        // by the caller and distinct from `src`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                arch::phys_to_virt(src) as *const u8,
                arch::phys_to_virt(dst) as *mut u8,
                PAGE,
            )
        };
    }

    fn share_frame(pa: u64) {
        if let Err(e) = share_frame(pa) {
            log::error!("sharing frame {pa:#x}: {e:?}");
        }
    }

    fn release_frame(pa: u64) {
        if let Err(e) = release_frame(pa) {
            log::error!("releasing frame {pa:#x}: {e:?}");
        }
    }

    fn frame_refs(pa: u64) -> u32 {
        frame_refs(pa)
    }

    fn is_loaded(root: u64) -> bool {
        loaded().load(Ordering::Relaxed) == root
    }

    fn flush_page(asid: u16, va: usize) {
        arch::flush_page(asid, va);
    }

    fn shootdown(cpus: u64, root: u64) -> u64 {
        let on = LOADED
            .iter()
            .enumerate()
            .filter(|(_, r)| r.load(Ordering::Relaxed) == root);
        let on = on.fold(0, |m, (c, _)| m | 1 << c) & cpus;
        crate::smp::shootdown(on);
        on
    }

    fn flush_space(_asid: u16) {
        // Rare (a table was freed): the whole local TLB, as the
        // architecture layer has no flush of one id's walk caches.
        arch::flush_all();
    }

    fn release_root(root: u64) {
        if loaded().load(Ordering::Relaxed) == root {
            unload();
        }
    }
}

/// A user address space.
pub type UserSpace = AddressSpace<KernelMachine>;
/// A memory object.
pub type MemoryObject = MemObject<KernelMachine>;

static ASIDS: Mutex<Asids> = Mutex::new(Asids::new(1));
/// Root of the user space each CPU has loaded, 0 for none.
static LOADED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The id generation each CPU's TLB last flushed for (`mm::asid`).
static GENERATION: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// This CPU's slot of a per-CPU table.
fn this_cpu<T>(table: &[T; MAX_CPUS]) -> &T {
    &table[arch::cpu_index() % MAX_CPUS]
}

/// The root this CPU has loaded.
fn loaded() -> &'static AtomicU64 {
    this_cpu(&LOADED)
}

/// Sets up address-space ids; called once at boot.
pub fn init() {
    *ASIDS.lock() = Asids::new(u32::try_from(arch::asid_count()).unwrap_or(u32::MAX));
}

/// Makes `space` the current user address space.
pub fn load(space: &mut UserSpace) {
    let (tag, flush) = ASIDS.lock().assign(space.tag());
    space.set_tag(tag);
    let new = space.loaded_on(1 << (arch::cpu_index() % MAX_CPUS));
    // A new generation (begun here or on another CPU) hands out ids that
    // this CPU's TLB may still hold entries of.
    let fresh = this_cpu(&GENERATION).swap(tag >> 16, Ordering::Relaxed) != tag >> 16;
    if flush == Flush::All || (fresh && tag != 0) {
        arch::flush_all();
    }
    // SAFETY: `space` shares the kernel half of the current kernel root
    // (or the kernel has a root of its own), and before its tables are
    // freed `release_root` unloads it.
    unsafe { arch::load_user_root(space.root(), space.asid(), flush == Flush::Asid || new) };
    loaded().store(space.root(), Ordering::Relaxed);
}

/// Leaves no user address space loaded.
pub fn unload() {
    arch::unload_user_root();
    loaded().store(0, Ordering::Relaxed);
}

/// Calls `f(offset, user_addr, len, phys)` for each page-bounded chunk of
/// the user range `[addr, addr + len)`, after resolving it for `access`.
fn chunks(
    space: &mut UserSpace,
    addr: UserAddr,
    len: usize,
    access: Access,
    mut f: impl FnMut(usize, usize, usize, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    let addr = addr.get();
    let end = addr.checked_add(len).ok_or(Error::BadAddress)?;
    if len == 0 {
        return Ok(());
    }
    ensure(addr >= USER_BASE && end <= USER_END, Error::BadAddress)?;
    let mut at = addr;
    while at < end {
        let n = (end.min((at | (PAGE - 1)) + 1)) - at;
        let pa = space.resolve(at, access)?;
        f(at - addr, at, n, pa)?;
        at += n;
    }
    Ok(())
}

/// Copies `len` bytes from `src` to `dst`, one of which is user memory:
/// its user address if `loaded`, else its direct-map address.
///
/// # Safety
/// The kernel side must be valid for `len` bytes; a direct-map user side
/// must lie in a resolved user frame.
unsafe fn copy_chunk(loaded: bool, dst: *mut u8, src: *const u8, len: usize) -> Result<(), Error> {
    if loaded {
        // SAFETY: the kernel side is valid (caller); the user side is a
        // user address of the loaded space, and a fault there is caught by
        // the fixup table and returned as an error.
        unsafe { arch::user_copy(dst, src, len) }.map_err(|_| Error::BadAddress)
    } else {
        // SAFETY: see the function's contract.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
        Ok(())
    }
}

/// Whether `space` is loaded, and so reachable through user addresses.
/// Never on a hosted target: there the host stand-in of the architecture
/// has no user mode, and copies go through the direct map.
fn is_loaded(space: &UserSpace) -> bool {
    cfg!(target_os = "none") && loaded().load(Ordering::Relaxed) == space.root()
}

fn user_side(loaded: bool, user: usize, pa: u64) -> usize {
    if loaded { user } else { arch::phys_to_virt(pa) }
}

/// Copies user memory at `src` of `space` into `dst`.
pub fn copy_from_user(space: &mut UserSpace, src: UserAddr, dst: &mut [u8]) -> Result<(), Error> {
    let loaded = is_loaded(space);
    let base = dst.as_mut_ptr();
    chunks(space, src, dst.len(), Access::Read, |off, user, n, pa| {
        let from = user_side(loaded, user, pa) as *const u8;
        // SAFETY: `off + n <= dst.len()`; `from` is resolved user memory.
        unsafe { copy_chunk(loaded, base.add(off), from, n) }
    })
}

/// Copies `src` into user memory at `dst` of `space`.
pub fn copy_to_user(space: &mut UserSpace, dst: UserAddr, src: &[u8]) -> Result<(), Error> {
    let loaded = is_loaded(space);
    let base = src.as_ptr();
    chunks(space, dst, src.len(), Access::Write, |off, user, n, pa| {
        let to = user_side(loaded, user, pa) as *mut u8;
        // SAFETY: `off + n <= src.len()`; `to` is resolved writable user
        // memory.
        unsafe { copy_chunk(loaded, to, base.add(off), n) }
    })
}

/// Which side of a copy between address spaces failed ([`copy_between`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyFault {
    /// The source range (not readable).
    Source(Error),
    /// The destination range (not writable).
    Destination(Error),
}

/// Copies `len` bytes from `src` in `from` to `dst` in `to` (`None`: in
/// `from` too), frame to frame through the direct map, without a bounce
/// buffer: IPC's long messages. Each page is resolved first (the
/// destination before the source, faulting pages in and breaking
/// copy-on-write sharing as a user access would); a range that cannot be
/// resolved stops the copy there and names its side.
pub fn copy_between(
    from: &mut UserSpace,
    src: UserAddr,
    mut to: Option<&mut UserSpace>,
    dst: UserAddr,
    len: usize,
) -> Result<(), CopyFault> {
    let (src, dst) = (src.get(), dst.get());
    let in_user = |a: usize| a >= USER_BASE && a.checked_add(len).is_some_and(|e| e <= USER_END);
    if len == 0 {
        return Ok(());
    }
    ensure(in_user(dst), CopyFault::Destination(Error::BadAddress))?;
    ensure(in_user(src), CopyFault::Source(Error::BadAddress))?;
    let mut at = 0;
    while at < len {
        let (s, d) = (src + at, dst + at);
        let n = (len - at).min(PAGE - s % PAGE).min(PAGE - d % PAGE);
        let pd = match to.as_deref_mut() {
            Some(t) => t.resolve(d, Access::Write),
            None => from.resolve(d, Access::Write),
        }
        .map_err(CopyFault::Destination)?;
        let ps = from.resolve(s, Access::Read).map_err(CopyFault::Source)?;
        // SAFETY: both are resolved user frames (resolution checked the
        // region allows the access), reached through the direct map; `n`
        // stays within each page. They may be the same frame: `copy` allows
        // overlap.
        unsafe {
            core::ptr::copy(
                arch::phys_to_virt(ps) as *const u8,
                arch::phys_to_virt(pd) as *mut u8,
                n,
            )
        };
        at += n;
    }
    Ok(())
}

/// Copies a NUL-terminated string from user memory at `src` into `buf`;
/// returns its length (without the NUL). `InvalidArgument` if there is no
/// NUL within `buf.len()` bytes.
pub fn copy_str_from_user(
    space: &mut UserSpace,
    src: UserAddr,
    buf: &mut [u8],
) -> Result<usize, Error> {
    let mut done = 0;
    while done < buf.len() {
        // Never read past the page holding the next byte: the string may
        // end just before an unmapped page.
        let at = src.offset(done).ok_or(Error::BadAddress)?;
        let n = (PAGE - at.get() % PAGE).min(buf.len() - done);
        let chunk = buf.get_mut(done..done + n).ok_or(Error::InvalidArgument)?;
        copy_from_user(space, at, chunk)?;
        if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            return Ok(done + nul);
        }
        done += n;
    }
    Err(Error::InvalidArgument)
}

/// Copies `bytes` into `object` from byte `offset` on, through the direct
/// map, allocating its frames as needed.
pub fn write_object(object: &MemoryObject, offset: usize, bytes: &[u8]) -> Result<(), Error> {
    let mut done = 0;
    while done < bytes.len() {
        let at = offset.checked_add(done).ok_or(Error::InvalidArgument)?;
        let n = (PAGE - at % PAGE).min(bytes.len() - done);
        let frame = object.frame(at / PAGE)?;
        let src = bytes.get(done..done + n).ok_or(Error::InvalidArgument)?;
        // SAFETY: `frame` is a frame of `object` (owned RAM, in the direct
        // map); `at % PAGE + n <= PAGE` keeps the copy inside it.
        unsafe {
            core::ptr::copy_nonoverlapping(
                src.as_ptr(),
                (arch::phys_to_virt(frame) + at % PAGE) as *mut u8,
                n,
            )
        };
        done += n;
    }
    Ok(())
}

/// The contents of a boot module, which the memory map keeps reserved
/// (never handed out), through the direct map.
pub fn boot_module_bytes(region: &crate::bootinfo::MemoryRegion) -> Option<&'static [u8]> {
    if region.kind != crate::bootinfo::RegionKind::BootModule {
        return None;
    }
    let len = usize::try_from(region.len()).ok()?;
    // SAFETY: boot modules are RAM the memory map reserves for the whole
    // run (the frame allocator never hands them out, so nothing writes
    // them), and the kernel's direct map maps every RAM region.
    Some(unsafe { core::slice::from_raw_parts(arch::phys_to_virt(region.start) as *const u8, len) })
}

/// Free frames now.
#[cfg(feature = "ktest")]
fn free_frames_now() -> u64 {
    super::frame_stats().map_or(0, |s| s.1)
}

/// A space with `pages` lazily allocated read-write pages at `BASE`.
#[cfg(any(feature = "ktest", feature = "bench"))]
fn space_with(pages: usize) -> Result<UserSpace, Error> {
    let mut s = UserSpace::new(0, None)?;
    s.map(
        BASE,
        MemoryObject::anonymous(pages, false)?,
        0,
        pages,
        super::paging::Attr::WRITE,
    )?;
    Ok(s)
}

#[cfg(any(feature = "ktest", feature = "bench"))]
const BASE: usize = 0x40_0000;

/// Runs `f` twice and checks the second run leaves the free-frame count
/// unchanged (the first warms the heap's slabs).
#[cfg(feature = "ktest")]
fn leaks_nothing(mut f: impl FnMut() -> crate::ktest::TestResult) -> crate::ktest::TestResult {
    f()?;
    let before = free_frames_now();
    f()?;
    kassert_eq!(free_frames_now(), before, "every frame returned");
    Ok(())
}

crate::ktest!(
    fn user_copy_round_trip_and_errors() {
        leaks_nothing(|| {
            let mut s = kexpect!(space_with(2), "creating a space");
            for loaded in [false, true] {
                if loaded {
                    load(&mut s);
                }
                let data: [u8; 32] = core::array::from_fn(|i| i as u8 + u8::from(loaded));
                // Straddles the page boundary.
                let at = BASE + PAGE - 16;
                kassert_eq!(copy_to_user(&mut s, UserAddr::new(at), &data), Ok(()));
                let mut back = [0u8; 32];
                kassert_eq!(copy_from_user(&mut s, UserAddr::new(at), &mut back), Ok(()));
                kassert_eq!(back, data);
                let mut b = [0u8; 8];
                let bad = Err(Error::BadAddress);
                kassert_eq!(
                    copy_from_user(&mut s, UserAddr::new(BASE + 2 * PAGE), &mut b),
                    bad,
                    "unmapped"
                );
                kassert_eq!(
                    copy_from_user(&mut s, UserAddr::new(BASE + 2 * PAGE - 4), &mut b),
                    bad,
                    "runs off"
                );
                kassert_eq!(
                    copy_from_user(&mut s, UserAddr::new(0), &mut b),
                    bad,
                    "null"
                );
                let kernel = arch::phys_to_virt(0x1000);
                kassert_eq!(
                    copy_from_user(&mut s, UserAddr::new(kernel), &mut b),
                    bad,
                    "kernel address"
                );
                kassert_eq!(
                    copy_to_user(&mut s, UserAddr::new(usize::MAX - 3), &b),
                    bad,
                    "wraps"
                );
                kassert_eq!(
                    copy_to_user(&mut s, UserAddr::new(USER_END - 4), &b),
                    bad,
                    "past the user half"
                );
                kassert_eq!(copy_from_user(&mut s, UserAddr::new(BASE), &mut []), Ok(()));
                // Strings.
                kassert_eq!(copy_to_user(&mut s, UserAddr::new(at), b"hello\0"), Ok(()));
                let mut buf = [0u8; 16];
                kassert_eq!(
                    copy_str_from_user(&mut s, UserAddr::new(at), &mut buf),
                    Ok(5)
                );
                kassert_eq!(&buf[..5], b"hello");
                kassert_eq!(
                    copy_str_from_user(&mut s, UserAddr::new(at), &mut buf[..3]),
                    Err(Error::InvalidArgument)
                );
                kassert_eq!(
                    copy_str_from_user(&mut s, UserAddr::new(BASE + 2 * PAGE), &mut buf),
                    Err(Error::BadAddress)
                );
                // Read-only pages refuse writes but allow reads.
                kassert_eq!(s.protect(BASE, 2, super::paging::Attr::empty()), Ok(()));
                kassert_eq!(
                    copy_to_user(&mut s, UserAddr::new(BASE), &b),
                    bad,
                    "read-only"
                );
                kassert_eq!(copy_from_user(&mut s, UserAddr::new(BASE), &mut b), Ok(()));
                kassert_eq!(s.protect(BASE, 2, super::paging::Attr::WRITE), Ok(()));
                kassert_eq!(s.unmap(BASE, 1), Ok(()));
                kassert_eq!(
                    copy_from_user(&mut s, UserAddr::new(BASE), &mut b),
                    bad,
                    "unmapped again"
                );
                let obj = kexpect!(MemoryObject::anonymous(1, true), "allocating an object");
                kassert_eq!(s.map(BASE, obj, 0, 1, super::paging::Attr::WRITE), Ok(()));
            }
            unload();
            Ok(())
        })
    }
);

crate::ktest!(
    fn copy_on_write_break_keeps_the_parent_intact() {
        leaks_nothing(|| {
            let mut parent = kexpect!(space_with(4), "creating a space");
            kassert_eq!(
                copy_to_user(&mut parent, UserAddr::new(BASE), b"parent"),
                Ok(())
            );
            let free = free_frames_now();
            let mut child = kexpect!(parent.clone_cow(0, None), "cloning");
            // The clone copies no data frames (only page tables).
            kassert!(free - free_frames_now() < 8);
            load(&mut child);
            let mut b = [0u8; 6];
            kassert_eq!(
                copy_from_user(&mut child, UserAddr::new(BASE), &mut b),
                Ok(())
            );
            kassert_eq!(&b, b"parent");
            kassert_eq!(
                copy_to_user(&mut child, UserAddr::new(BASE), b"child!"),
                Ok(())
            );
            load(&mut parent);
            kassert_eq!(
                copy_from_user(&mut parent, UserAddr::new(BASE), &mut b),
                Ok(())
            );
            kassert_eq!(&b, b"parent", "the parent does not see the child's write");
            kassert_eq!(
                copy_from_user(&mut child, UserAddr::new(BASE), &mut b),
                Ok(())
            );
            kassert_eq!(&b, b"child!");
            unload();
            Ok(())
        })
    }
);

crate::ktest!(
    fn teardown_returns_every_frame() {
        leaks_nothing(|| {
            let mut s = kexpect!(space_with(64), "creating a space");
            // Touch pages far apart so several page tables are needed too.
            for i in 0..64 {
                kassert_eq!(
                    copy_to_user(&mut s, UserAddr::new(BASE + i * PAGE), &[1]),
                    Ok(())
                );
            }
            let far = 0x3f_0000_0000;
            let obj = kexpect!(MemoryObject::anonymous(3, true), "allocating");
            kassert_eq!(s.map(far, obj, 0, 3, super::paging::Attr::empty()), Ok(()));
            load(&mut s);
            drop(s);
            // Dropping the loaded space unloaded it.
            kassert_eq!(loaded().load(Ordering::Relaxed), 0);
            Ok(())
        })
    }
);

crate::ktest!(
    fn page_tables_are_charged_and_given_back() {
        leaks_nothing(|| {
            let pool = kexpect!(
                super::kref::KArc::try_new(super::pool::MemoryPool::new(64)),
                "allocating a pool"
            );
            let mut s = kexpect!(UserSpace::new(0, Some(pool.clone())), "creating a space");
            let obj = kexpect!(MemoryObject::anonymous(1, true), "allocating an object");
            load(&mut s);
            let free = free_frames_now();
            // One page per GiB: the first needs a table per level below
            // the root (3; 2 under Sv39), every other 2.
            let path = <crate::arch::PageFormat as super::paging::PteFormat>::levels() as u64 - 1;
            for i in 0..8 {
                let va = BASE + (i << 30);
                kassert_eq!(
                    s.map(va, obj.clone(), 0, 1, super::paging::Attr::WRITE),
                    Ok(())
                );
                kassert_eq!(
                    copy_to_user(&mut s, UserAddr::new(va), &[1]),
                    Ok(()),
                    "loaded, so flushed"
                );
            }
            kassert_eq!(pool.available(), 64 - 1 - path - 2 * 7);
            for i in 0..8 {
                kassert_eq!(s.unmap(BASE + (i << 30), 1), Ok(()));
            }
            // Every emptied table is given back but the path to the last
            // emptied block, kept (charged) for the next map there.
            kassert_eq!(pool.available(), 63 - path);
            kassert_eq!(free_frames_now(), free - path, "every other table freed");
            unload();
            drop(s);
            kassert_eq!(pool.available(), 64);
            Ok(())
        })
    }
);

crate::kbench!(
    fn map_unmap_4k_user_page(iters: u64) {
        let (Ok(mut s), Ok(obj)) = (UserSpace::new(0, None), MemoryObject::anonymous(1, true))
        else {
            return;
        };
        load(&mut s);
        for _ in 0..iters {
            let _ = s.map(BASE, obj.clone(), 0, 1, super::paging::Attr::WRITE);
            let _ = s.unmap(BASE, 1);
        }
        unload();
    },
    iters = 200
);

crate::kbench!(
    fn cow_fault(iters: u64) -> ticks {
        let Ok(mut parent) = space_with(1) else {
            return 0;
        };
        let _ = copy_to_user(&mut parent, UserAddr::new(BASE), b"x");
        let mut ticks = 0;
        for _ in 0..iters {
            let Ok(mut child) = parent.clone_cow(0, None) else {
                return 0;
            };
            load(&mut child);
            let t0 = arch::cycle_counter();
            let _ = core::hint::black_box(child.fault(BASE, Access::Write));
            ticks += arch::cycle_counter() - t0;
            unload();
        }
        ticks
    },
    iters = 50
);

const _: () = assert!(super::frame::FRAME_SIZE as usize == PAGE);

#[cfg(test)]
mod tests;

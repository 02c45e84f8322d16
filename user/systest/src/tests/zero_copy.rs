//! Zero-copy transfer of a page range (`MemFromRange`): pages of the root
//! task's address space become a memory object — moved (the range leaves
//! the root task) or shared copy-on-write — whose capability travels in a
//! message to a receiver thread, which maps it and reads it. And every
//! refusal of `MemFromRange`.

use super::ipc::{IpcPage, Owned};
use super::{PAGE, WAIT_YIELDS, next_va, root};
use crate::harness::{Ctx, TestResult};
use core::sync::atomic::{AtomicU64, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, Rights};
use keel_abi::syscall::{PROT_WRITE, RANGE_COW, RANGE_MOVE};
use keel_rt::ipc::{MsgInfo, call, endpoint_create, recv, reply};
use keel_rt::syscall::{
    aspace_create, cap_delete, cap_derive, map, mem_create, mem_from_range, pool_available,
    protect, unmap,
};
use keel_rt::thread::Thread;

/// The receiver's endpoint and its IPC buffer (set before it starts).
static EP: AtomicU64 = AtomicU64::new(0);
static BUFFER: AtomicU64 = AtomicU64::new(0);
/// Where the receiver maps what it gets.
static WINDOW: AtomicU64 = AtomicU64::new(0);

fn read(va: usize) -> u64 {
    // SAFETY: callers pass a mapped, readable, 8-byte aligned address.
    unsafe { (va as *const u64).read_volatile() }
}

fn write(va: usize, value: u64) {
    // SAFETY: callers pass a mapped, writable, 8-byte aligned address.
    unsafe { (va as *mut u64).write_volatile(value) }
}

/// Receives calls carrying one memory capability; maps it read-only at
/// [`WINDOW`], answers with its first word (or `u64::MAX` if it cannot),
/// and lets it go again. A call with label 1 ends it.
fn receiver(_: usize) -> i32 {
    let Ok(r) = root() else { return 1 };
    let ep = CapToken::from_raw(EP.load(Ordering::Acquire));
    // SAFETY: the page was registered as this thread's IPC buffer.
    let buf = unsafe { keel_rt::ipc::Buffer::at(BUFFER.load(Ordering::Acquire) as usize) };
    let va = WINDOW.load(Ordering::Acquire) as usize;
    loop {
        let Ok(m) = recv(ep, 0) else { return 2 };
        if m.info.label() == 1 {
            let _ = reply(MsgInfo::new(0, 0, 0), [0; 4]);
            return 0;
        }
        let mem = buf.received(0);
        let value = match map(r.aspace, mem, va, 0, 1, 0) {
            Ok(_) => {
                let v = read(va);
                // SAFETY: the window was mapped just above, for this read.
                let _ = unsafe { unmap(r.aspace, va, 1) };
                v
            }
            Err(_) => u64::MAX,
        };
        let _ = cap_delete(mem);
        let _ = reply(MsgInfo::new(0, 1, 0), [value, 0, 0, 0]);
    }
}

/// Sends `mem` to the receiver; its first word as the receiver read it.
fn send_away(buf: keel_rt::ipc::Buffer, ep: CapToken, mem: CapToken) -> Result<u64, Error> {
    buf.set_caps(&[mem]);
    call(ep, MsgInfo::new(0, 0, 1), [0; 4]).map(|m| m.words[0])
}

pub fn page_ranges_move_and_share_through_ipc() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool")?;
    let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
    let t = Thread::create(receiver, 0).ctx("receiver")?;
    let their = IpcPage::new(&r, t.token()).ctx("receiver buffer")?;
    let mine = IpcPage::new(&r, r.thread).ctx("root buffer")?;
    EP.store(ep.0.raw(), Ordering::Release);
    BUFFER.store(their.buffer().address() as u64, Ordering::Release);
    WINDOW.store(next_va(1) as u64, Ordering::Release);
    t.resume().ctx("resume")?;

    let mem = Owned(mem_create(r.pool, 2, 0).ctx("mem")?);
    let va = next_va(2);
    map(r.aspace, mem.0, va, 0, 2, PROT_WRITE).ctx("map")?;
    write(va, 0xa1);
    write(va + PAGE, 0xb2);

    // Copy-on-write share of page 0: the receiver sees the data as it was
    // shared, the sender's later write stays its own.
    // SAFETY: a copy-on-write share leaves the range mapped here.
    let cow = unsafe { mem_from_range(r.aspace, va, 1, RANGE_COW, r.pool) }.ctx("cow")?;
    write(va, 0xa3);
    ensure_eq!(read(va), 0xa3);
    ensure_eq!(send_away(mine.buffer(), ep.0, cow), Ok(0xa1), "shared copy");
    ensure_eq!(cap_delete(cow), Ok(()));

    // Move of page 1: it leaves this address space, the receiver has it.
    // SAFETY: nothing here uses the moved page again.
    let moved =
        unsafe { mem_from_range(r.aspace, va + PAGE, 1, RANGE_MOVE, r.pool) }.ctx("move")?;
    // SAFETY: protecting an unmapped range only fails.
    let gone = unsafe { protect(r.aspace, va + PAGE, 1, 0) };
    ensure_eq!(gone, Err(Error::BadAddress), "the sender lost the page");
    ensure_eq!(
        send_away(mine.buffer(), ep.0, moved),
        Ok(0xb2),
        "moved page"
    );
    ensure_eq!(cap_delete(moved), Ok(()));

    ensure_eq!(
        call(ep.0, MsgInfo::new(1, 0, 0), [0; 4]).map(|_| ()),
        Ok(())
    );
    ensure_eq!(t.join(WAIT_YIELDS), Some(0), "receiver");
    // SAFETY: the test's own mapping.
    let _ = unsafe { unmap(r.aspace, va, 2) };
    drop((mem, mine, their, ep));
    ensure_eq!(pool_available(r.pool), Ok(before), "every page came back");
    Ok(())
}

pub fn page_range_transfer_refuses_bad_arguments() -> TestResult {
    let r = root()?;
    let va = next_va(4);
    let mem = Owned(mem_create(r.pool, 2, 0).ctx("mem")?);
    // Unmapping makes `va`'s 2 MiB block the one whose page tables the
    // root space keeps (and frees the tables of the block kept before,
    // wherever earlier tests left it); from here on unmapping there
    // frees and keeps nothing more, so the pool level below is exact.
    map(r.aspace, mem.0, va, 0, 2, PROT_WRITE).ctx("map")?;
    // SAFETY: the test's own mapping, not used.
    unsafe { unmap(r.aspace, va, 2) }.ctx("unmap")?;
    let before = pool_available(r.pool).ctx("pool")?;
    map(r.aspace, mem.0, va, 0, 2, PROT_WRITE).ctx("map")?;
    let weak_pool = Owned(cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive")?);
    let try_ = |aspace: CapToken, va: usize, pages: usize, mode: usize, pool: CapToken| {
        // SAFETY: every call here is refused and changes nothing.
        unsafe { mem_from_range(aspace, va, pages, mode, pool) }.map(|_| ())
    };
    ensure_eq!(
        try_(r.aspace, va, 1, 0, r.pool),
        Err(Error::InvalidArgument),
        "mode 0"
    );
    ensure_eq!(
        try_(r.aspace, va, 1, 3, r.pool),
        Err(Error::InvalidArgument),
        "mode 3"
    );
    ensure_eq!(
        try_(r.aspace, va, 0, RANGE_MOVE, r.pool),
        Err(Error::InvalidArgument),
        "no pages"
    );
    ensure_eq!(
        try_(r.aspace, va + 1, 1, RANGE_MOVE, r.pool),
        Err(Error::InvalidArgument),
        "unaligned"
    );
    ensure_eq!(
        try_(r.aspace, va + 2 * PAGE, 1, RANGE_MOVE, r.pool),
        Err(Error::BadAddress),
        "unmapped"
    );
    ensure_eq!(
        try_(r.aspace, va + PAGE, 2, RANGE_COW, r.pool),
        Err(Error::BadAddress),
        "past the mapping"
    );
    ensure_eq!(
        try_(mem.0, va, 1, RANGE_MOVE, r.pool),
        Err(Error::WrongObjectType),
        "not an aspace"
    );
    ensure_eq!(
        try_(r.aspace, va, 1, RANGE_MOVE, weak_pool.0),
        Err(Error::AccessDenied),
        "pool without WRITE"
    );
    // Memory another address space shares cannot be taken from under it.
    let other = Owned(aspace_create(r.pool).ctx("aspace")?);
    map(other.0, mem.0, va, 0, 1, PROT_WRITE).ctx("map in the other space")?;
    ensure_eq!(
        try_(r.aspace, va, 1, RANGE_COW, r.pool),
        Err(Error::InvalidState),
        "shared object"
    );
    // SAFETY: the test's own mapping.
    let _ = unsafe { unmap(r.aspace, va, 2) };
    drop((other, weak_pool));
    ensure_eq!(pool_available(r.pool), Ok(before), "nothing was charged");
    drop(mem);
    Ok(())
}

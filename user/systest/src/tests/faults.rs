//! User faults: a thread that dereferences NULL, executes an illegal
//! instruction, writes to code, ... must be killed with its process, and
//! nothing else. Each faulting thread runs in the root task's address space
//! but with its own capability space, so it is a process of its own.
//!
//! The thread records that it reached the faulting instruction, faults, and
//! would record that it survived if it did. Disabled (each test passes
//! without running) when [`super::FAULT_TESTS`] is false.

use super::{FAULT_TESTS, next_va, root, wait_until};
use crate::harness::{Ctx, TestResult};
use core::sync::atomic::{AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::boot::ROOT_INFO_ADDR;
use keel_abi::syscall::{PROT_WRITE, ThreadInfoKey};
use keel_rt::probe;
use keel_rt::syscall::{
    cap_delete, cap_space_create, map, mem_create, protect, thread_info, thread_resume, unmap,
};
use keel_rt::thread::Thread;

static REACHED: AtomicUsize = AtomicUsize::new(0);
static SURVIVED: AtomicUsize = AtomicUsize::new(0);
/// Address the `Load`/`Store` kinds access.
static TARGET: AtomicUsize = AtomicUsize::new(0);

/// What the faulting thread does (its argument).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Load = 1,
    Store = 2,
    Illegal = 3,
    Breakpoint = 4,
}

const LOAD: usize = Kind::Load as usize;
const STORE: usize = Kind::Store as usize;
const ILLEGAL: usize = Kind::Illegal as usize;
const BREAKPOINT: usize = Kind::Breakpoint as usize;

fn fault(kind: usize) -> i32 {
    REACHED.store(kind, Ordering::Release);
    let target = TARGET.load(Ordering::Acquire);
    match kind {
        // SAFETY: the thread is alone in its process; the fault is the
        // point (the root thread chose an address that is not readable).
        LOAD => unsafe {
            core::hint::black_box(probe::load_u64(target));
        },
        // SAFETY: as above, an address that is not writable.
        STORE => unsafe { probe::store_u64(target, 0x0bad) },
        ILLEGAL => probe::illegal_instruction(),
        BREAKPOINT => probe::breakpoint(),
        _ => {}
    }
    SURVIVED.store(kind, Ordering::Release);
    0
}

/// Runs `fault(kind)` at `target` in a new process and checks that it
/// reached the fault, did not survive it, and is gone.
fn expect_killed(kind: Kind, target: usize) -> TestResult {
    if !FAULT_TESTS {
        return Ok(());
    }
    let r = root()?;
    REACHED.store(0, Ordering::Release);
    SURVIVED.store(0, Ordering::Release);
    TARGET.store(target, Ordering::Release);
    let cs = cap_space_create(r.pool, 8).ctx("cap_space_create")?;
    let t = Thread::create_in(cs, fault, kind as usize).ctx("create")?;
    t.resume().ctx("resume")?;
    // It faults right after it gets there, and is then gone.
    wait_until(|| REACHED.load(Ordering::Acquire) != 0);
    wait_until(|| thread_info(t.token(), ThreadInfoKey::Cpu).is_err());
    ensure_eq!(
        REACHED.load(Ordering::Acquire),
        kind as usize,
        "the thread never ran"
    );
    ensure_eq!(
        SURVIVED.load(Ordering::Acquire),
        0,
        "the thread survived its fault"
    );
    ensure_eq!(t.finished(), None);
    ensure_eq!(
        thread_resume(t.token()),
        Err(Error::InvalidState),
        "the thread still exists"
    );
    drop(t);
    let _ = cap_delete(cs);
    Ok(())
}

pub fn null_dereference_kills_only_its_process() -> TestResult {
    expect_killed(Kind::Load, 0)
}

pub fn kernel_address_read_kills_only_its_process() -> TestResult {
    expect_killed(Kind::Load, 0xffff_8000_0000_0000)
}

pub fn illegal_instruction_kills_only_its_process() -> TestResult {
    expect_killed(Kind::Illegal, 0)
}

pub fn breakpoint_kills_only_its_process() -> TestResult {
    expect_killed(Kind::Breakpoint, 0)
}

pub fn write_to_code_kills_only_its_process() -> TestResult {
    expect_killed(Kind::Store, keel_rt::entry_address())
}

pub fn write_to_root_info_kills_only_its_process() -> TestResult {
    expect_killed(Kind::Store, ROOT_INFO_ADDR)
}

pub fn access_after_unmap_faults() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 1, 0).ctx("mem_create")?;
    let va = next_va(1);
    map(r.aspace, mem, va, 0, 1, PROT_WRITE).ctx("map")?;
    // SAFETY: the page is mapped writable.
    unsafe { (va as *mut u64).write_volatile(1) };
    // SAFETY: nothing in this thread uses the page any more.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    expect_killed(Kind::Load, va)
}

pub fn write_after_protect_faults() -> TestResult {
    let r = root()?;
    let mem = mem_create(r.pool, 1, 0).ctx("mem_create")?;
    let va = next_va(1);
    map(r.aspace, mem, va, 0, 1, PROT_WRITE).ctx("map")?;
    // SAFETY: the page is mapped writable.
    unsafe { (va as *mut u64).write_volatile(1) };
    // SAFETY: this thread only reads the page from now on.
    unsafe { protect(r.aspace, va, 1, 0) }.ctx("protect")?;
    let result = expect_killed(Kind::Store, va + 8);
    // SAFETY: mapped, readable.
    let first = unsafe { (va as *const u64).read_volatile() };
    // SAFETY: nothing uses the page any more.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    result?;
    ensure_eq!(first, 1);
    Ok(())
}

//! System calls: raw (`syscall0`..`syscall6`, any number, decoded result)
//! and one typed wrapper per `keel_abi::Syscall`.
//!
//! Arguments and results are described in `docs/abi.md`. Wrappers whose
//! call can only fail or change kernel objects are safe; those that can
//! take memory away from the running program (`unmap`, `protect`) or start
//! code at an arbitrary address (`thread_create`) are `unsafe`.
//!
//! Invariant: every wrapper decodes the result with [`decode`]; a negative
//! value the ABI does not define (a kernel bug) comes back as
//! `Err(Error::NotSupported)`, and the raw value is still available from
//! the `raw` functions.

use crate::arch;
use keel_abi::cap::{CapToken, ObjectType, Rights};
use keel_abi::syscall::{SchedClass, SystemInfoKey, ThreadInfoKey};
use keel_abi::{Error, Syscall};

/// A system call's decoded result.
pub type SysResult = Result<usize, Error>;

/// Decodes a raw result register: `Ok(v)` for `v >= 0`, the error for a
/// defined negative code, `NotSupported` for an undefined one.
pub fn decode(raw: isize) -> SysResult {
    Error::from_return_value(raw).unwrap_or(Err(Error::NotSupported))
}

pub use arch::{raw0, raw1, raw2, raw3, raw4, raw5, raw6};

/// System call `number` without arguments.
///
/// # Safety
/// As [`raw0`]: the call must not break memory the program relies on.
pub unsafe fn syscall0(number: usize) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw0(number) })
}

/// System call `number` with one argument.
///
/// # Safety
/// As [`raw1`].
pub unsafe fn syscall1(number: usize, a0: usize) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw1(number, a0) })
}

/// System call `number` with two arguments.
///
/// # Safety
/// As [`raw2`].
pub unsafe fn syscall2(number: usize, a0: usize, a1: usize) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw2(number, a0, a1) })
}

/// System call `number` with three arguments.
///
/// # Safety
/// As [`raw3`].
pub unsafe fn syscall3(number: usize, a0: usize, a1: usize, a2: usize) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw3(number, a0, a1, a2) })
}

/// System call `number` with four arguments.
///
/// # Safety
/// As [`raw4`].
pub unsafe fn syscall4(number: usize, a0: usize, a1: usize, a2: usize, a3: usize) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw4(number, a0, a1, a2, a3) })
}

/// System call `number` with five arguments.
///
/// # Safety
/// As [`raw5`].
pub unsafe fn syscall5(
    number: usize,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw5(number, a0, a1, a2, a3, a4) })
}

/// System call `number` with six arguments.
///
/// # Safety
/// As [`raw6`].
pub unsafe fn syscall6(
    number: usize,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    a4: usize,
    a5: usize,
) -> SysResult {
    // SAFETY: forwarded from the caller.
    decode(unsafe { raw6(number, a0, a1, a2, a3, a4, a5) })
}

fn tok(t: CapToken) -> usize {
    t.raw() as usize
}

fn token(v: usize) -> CapToken {
    CapToken::from_raw(v as u64)
}

fn unit(r: SysResult) -> Result<(), Error> {
    r.map(|_| ())
}

// ---- debug and system information ----

/// Writes `bytes` to the kernel debug console; returns how many were
/// written. At most 64 KiB per call.
pub fn debug_write(bytes: &[u8]) -> SysResult {
    debug_write_raw(bytes.as_ptr() as usize, bytes.len())
}

/// `DebugWrite` with any pointer: the kernel only reads the range, through
/// its checked copy, so a bad range is an error, never a fault here.
pub fn debug_write_raw(ptr: usize, len: usize) -> SysResult {
    // SAFETY: the kernel only reads user memory for this call.
    unsafe { syscall2(Syscall::DebugWrite as usize, ptr, len) }
}

/// Reads a system-information value.
pub fn system_info(key: SystemInfoKey) -> SysResult {
    system_info_raw(key as usize)
}

/// `SystemInfo` with any key number.
pub fn system_info_raw(key: usize) -> SysResult {
    // SAFETY: `SystemInfo` does not touch user memory.
    unsafe { syscall1(Syscall::SystemInfo as usize, key) }
}

/// The cycle counter (guest instructions under QEMU `-icount shift=0`).
pub fn cycles() -> u64 {
    system_info(SystemInfoKey::Cycles).map_or(0, |v| v as u64)
}

// ---- capabilities ----

/// What `CapIdentify` says about a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapIdentity {
    /// The raw object-type code.
    pub type_code: u8,
    /// The raw rights bits.
    pub rights_bits: u32,
}

impl CapIdentity {
    /// The object type, if the code names one.
    pub fn object_type(self) -> Option<ObjectType> {
        ObjectType::try_from(self.type_code).ok()
    }

    /// The rights, if every bit is defined.
    pub fn rights(self) -> Option<Rights> {
        Rights::from_bits(self.rights_bits)
    }
}

/// The object type and rights of `cap`.
pub fn cap_identify(cap: CapToken) -> Result<CapIdentity, Error> {
    // SAFETY: capability calls do not touch user memory.
    let v = unsafe { syscall1(Syscall::CapIdentify as usize, tok(cap)) }?;
    Ok(CapIdentity {
        type_code: (v >> 8) as u8,
        rights_bits: (v & 0xff) as u32,
    })
}

/// A child of `cap` in the caller's space with `rights` (a subset of
/// `cap`'s) and, on an unbadged capability, `badge`.
pub fn cap_derive(cap: CapToken, rights: Rights, badge: u64) -> Result<CapToken, Error> {
    cap_derive_raw(cap, rights.bits() as usize, badge as usize)
}

/// `CapDerive` with raw rights bits.
pub fn cap_derive_raw(cap: CapToken, rights: usize, badge: usize) -> Result<CapToken, Error> {
    // SAFETY: capability calls do not touch user memory.
    unsafe { syscall3(Syscall::CapDerive as usize, tok(cap), rights, badge) }.map(token)
}

/// A child of `cap` with `rights` in capability space `cspace`; the token
/// names it in that space.
pub fn cap_grant(cap: CapToken, cspace: CapToken, rights: Rights) -> Result<CapToken, Error> {
    // SAFETY: capability calls do not touch user memory.
    unsafe {
        syscall3(
            Syscall::CapGrant as usize,
            tok(cap),
            tok(cspace),
            rights.bits() as usize,
        )
    }
    .map(token)
}

/// Moves `cap` into `cspace`; its old token becomes stale.
pub fn cap_delegate(cap: CapToken, cspace: CapToken) -> Result<CapToken, Error> {
    // SAFETY: capability calls do not touch user memory.
    unsafe { syscall2(Syscall::CapDelegate as usize, tok(cap), tok(cspace)) }.map(token)
}

/// Deletes one capability (its children survive, re-parented).
pub fn cap_delete(cap: CapToken) -> Result<(), Error> {
    // SAFETY: capability calls do not touch user memory. (Mappings hold
    // their own references, so deleting a memory capability unmaps
    // nothing.)
    unit(unsafe { syscall1(Syscall::CapDelete as usize, tok(cap)) })
}

/// One bounded step of revoking `cap`'s descendants: `Ok(true)` when done,
/// `Ok(false)` when more work remains.
pub fn cap_revoke_step(cap: CapToken) -> Result<bool, Error> {
    // SAFETY: capability calls do not touch user memory.
    unsafe { syscall1(Syscall::CapRevoke as usize, tok(cap)) }.map(|v| v == 0)
}

/// Revokes every descendant of `cap`, calling again until done.
pub fn cap_revoke(cap: CapToken) -> Result<(), Error> {
    while !cap_revoke_step(cap)? {}
    Ok(())
}

/// A new capability space of at most `slots` slots, charged to `pool`.
pub fn cap_space_create(pool: CapToken, slots: usize) -> Result<CapToken, Error> {
    // SAFETY: capability calls do not touch user memory.
    unsafe { syscall2(Syscall::CapSpaceCreate as usize, tok(pool), slots) }.map(token)
}

// ---- threads ----

/// A new, suspended thread running in `aspace` with capability space
/// `cspace` (`CapToken::NULL`: the caller's), starting at `entry` with
/// stack pointer `stack` and `arg` in the first argument register.
///
/// # Safety
/// If `aspace` is the caller's, `entry` and `stack` must be code and a
/// stack fit to run there (the stack owned by the new thread).
pub unsafe fn thread_create(
    aspace: CapToken,
    cspace: CapToken,
    entry: usize,
    stack: usize,
    arg: usize,
) -> Result<CapToken, Error> {
    // SAFETY: the caller vouches for `entry` and `stack`.
    unsafe {
        syscall5(
            Syscall::ThreadCreate as usize,
            tok(aspace),
            tok(cspace),
            entry,
            stack,
            arg,
        )
    }
    .map(token)
}

/// Makes a new or suspended thread runnable.
pub fn thread_resume(thread: CapToken) -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe { syscall1(Syscall::ThreadResume as usize, tok(thread)) })
}

/// Stops a thread until it is resumed.
pub fn thread_suspend(thread: CapToken) -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe { syscall1(Syscall::ThreadSuspend as usize, tok(thread)) })
}

/// Ends the calling thread with `code`. If the kernel returns (it must
/// not), the thread stops itself with an illegal instruction.
pub fn thread_exit(code: isize) -> ! {
    // SAFETY: ending the thread takes nothing from other threads.
    let _ = unsafe { raw1(Syscall::ThreadExit as usize, code as usize) };
    arch::illegal_instruction()
}

/// Sets a thread's priority, 0 (lowest) to 31.
pub fn thread_set_priority(thread: CapToken, priority: usize) -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe { syscall2(Syscall::ThreadSetPriority as usize, tok(thread), priority) })
}

/// Sets a thread's scheduling class: real-time priority (round-robin with
/// `slice_ns`, 0 for the default, or FIFO), nice value (normal) or idle;
/// `param` is the priority or the nice value, 0 for idle.
pub fn thread_set_sched(
    thread: CapToken,
    class: SchedClass,
    param: isize,
    slice_ns: u64,
) -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe {
        syscall4(
            Syscall::ThreadSetSched as usize,
            tok(thread),
            class as usize,
            param as usize,
            slice_ns as usize,
        )
    })
}

/// Reads a statistic or parameter of a thread.
pub fn thread_info(thread: CapToken, key: ThreadInfoKey) -> SysResult {
    // SAFETY: does not touch user memory.
    unsafe { syscall2(Syscall::ThreadInfo as usize, tok(thread), key as usize) }
}

/// Sets the CPUs a thread may run on (bit `i` = CPU `i`).
pub fn thread_set_affinity(thread: CapToken, mask: usize) -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe { syscall2(Syscall::ThreadSetAffinity as usize, tok(thread), mask) })
}

/// The index of the CPU the caller runs on (answered without the kernel
/// lock).
pub fn current_cpu() -> usize {
    system_info(SystemInfoKey::CurrentCpu).unwrap_or(0)
}

/// Takes CPU `cpu` offline or brings it back (needs the device-control
/// capability).
pub fn cpu_set_online(device_control: CapToken, cpu: usize, online: bool) -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe {
        syscall3(
            Syscall::CpuSetOnline as usize,
            tok(device_control),
            cpu,
            usize::from(online),
        )
    })
}

/// Sets a thread's thread-local storage base (FS base, `TPIDR_EL0`, `tp`).
/// The runtime itself keeps nothing there.
pub fn thread_set_tls(thread: CapToken, base: usize) -> Result<(), Error> {
    // SAFETY: does not touch user memory; Rust code here uses no
    // thread-local storage.
    unit(unsafe { syscall2(Syscall::ThreadSetTls as usize, tok(thread), base) })
}

/// Lets another runnable thread of equal or higher priority run.
pub fn yield_now() -> Result<(), Error> {
    // SAFETY: does not touch user memory.
    unit(unsafe { syscall0(Syscall::Yield as usize) })
}

/// The monotonic clock in nanoseconds since boot (0 if the kernel has no
/// clock rate).
pub fn now_ns() -> u64 {
    system_info(SystemInfoKey::MonotonicNs).map_or(0, |v| v as u64)
}

/// Blocks until the monotonic clock ([`now_ns`]) reaches `deadline_ns`;
/// returns at once (after a yield) if it has.
pub fn sleep_until(deadline_ns: u64) -> Result<(), Error> {
    // SAFETY: `Sleep` does not touch user memory.
    unit(unsafe { syscall1(Syscall::Sleep as usize, deadline_ns as usize) })
}

/// Blocks for at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) -> Result<(), Error> {
    sleep_until(now_ns().saturating_add(ns))
}

/// A disarmed timer charged to `pool` that signals `ntfn` (with that
/// capability's badge, or 1) when it fires.
pub fn timer_create(pool: CapToken, ntfn: CapToken) -> Result<CapToken, Error> {
    // SAFETY: `TimerCreate` does not touch user memory.
    unsafe { syscall2(Syscall::TimerCreate as usize, tok(pool), tok(ntfn)) }
        .map(|v| CapToken::from_raw(v as u64))
}

/// Arms `timer` for `deadline_ns` on the monotonic clock and then every
/// `period_ns` (0: once); `deadline_ns` 0 disarms it.
pub fn timer_set(timer: CapToken, deadline_ns: u64, period_ns: u64) -> Result<(), Error> {
    // SAFETY: `TimerSet` does not touch user memory.
    unit(unsafe {
        syscall3(
            Syscall::TimerSet as usize,
            tok(timer),
            deadline_ns as usize,
            period_ns as usize,
        )
    })
}

/// Kills a thread.
pub fn thread_kill(thread: CapToken) -> Result<(), Error> {
    // SAFETY: does not touch the caller's memory (a killed thread's stack
    // is simply no longer used).
    unit(unsafe { syscall1(Syscall::ThreadKill as usize, tok(thread)) })
}

// ---- memory ----

/// A new anonymous memory object of `pages` pages charged to `pool`
/// (`flags`: `keel_abi::syscall::MEM_EAGER` to allocate every frame now).
pub fn mem_create(pool: CapToken, pages: usize, flags: usize) -> Result<CapToken, Error> {
    // SAFETY: does not touch user memory.
    unsafe { syscall3(Syscall::MemCreate as usize, tok(pool), pages, flags) }.map(token)
}

/// A new, empty address space charged to `pool`.
pub fn aspace_create(pool: CapToken) -> Result<CapToken, Error> {
    // SAFETY: does not touch user memory.
    unsafe { syscall1(Syscall::AspaceCreate as usize, tok(pool)) }.map(token)
}

/// Maps `pages` pages of `mem`, from its page `offset`, at `va` in
/// `aspace` with `prot` (`PROT_WRITE` or `PROT_EXEC`, never both; readable
/// always). The kernel refuses to map over an existing mapping, so this
/// cannot take memory away from the program.
pub fn map(
    aspace: CapToken,
    mem: CapToken,
    va: usize,
    offset: usize,
    pages: usize,
    prot: usize,
) -> Result<(), Error> {
    // SAFETY: mapping only adds memory at a range that was unmapped.
    unit(unsafe {
        syscall6(
            Syscall::Map as usize,
            tok(aspace),
            tok(mem),
            va,
            offset,
            pages,
            prot,
        )
    })
}

/// Removes the mappings in `[va, va + pages * page size)` of `aspace`.
///
/// # Safety
/// If `aspace` is the caller's, nothing may use the range any more.
pub unsafe fn unmap(aspace: CapToken, va: usize, pages: usize) -> Result<(), Error> {
    // SAFETY: the caller no longer uses the range.
    unit(unsafe { syscall3(Syscall::Unmap as usize, tok(aspace), va, pages) })
}

/// Changes the protection of mapped pages (at most what they were mapped
/// with).
///
/// # Safety
/// If `aspace` is the caller's, nothing may access the range in a way the
/// new protection forbids.
pub unsafe fn protect(aspace: CapToken, va: usize, pages: usize, prot: usize) -> Result<(), Error> {
    // SAFETY: the caller respects the new protection.
    unit(unsafe { syscall4(Syscall::Protect as usize, tok(aspace), va, pages, prot) })
}

/// A new memory object (charged to `pool`) with the `pages` pages mapped
/// at `va` in `aspace`: `RANGE_MOVE` moves them (they disappear from
/// `aspace`), `RANGE_COW` shares them copy-on-write. Send its capability
/// in a message for a zero-copy transfer.
///
/// # Safety
/// With `RANGE_MOVE` the range is unmapped from `aspace`: nothing may use
/// it afterwards if `aspace` is the caller's.
pub unsafe fn mem_from_range(
    aspace: CapToken,
    va: usize,
    pages: usize,
    mode: usize,
    pool: CapToken,
) -> Result<CapToken, Error> {
    // SAFETY: forwarded from the caller.
    let r = unsafe {
        syscall5(
            Syscall::MemFromRange as usize,
            tok(aspace),
            va,
            pages,
            mode,
            tok(pool),
        )
    };
    r.map(|t| CapToken::from_raw(t as u64))
}

/// Size of a memory object in pages.
pub fn mem_size(mem: CapToken) -> SysResult {
    // SAFETY: does not touch user memory.
    unsafe { syscall1(Syscall::MemSize as usize, tok(mem)) }
}

/// Pages `pool` can still hand out.
pub fn pool_available(pool: CapToken) -> SysResult {
    // SAFETY: does not touch user memory.
    unsafe { syscall1(Syscall::PoolAvailable as usize, tok(pool)) }
}

// ---- processes (the kernel's part; `process` is the rest) ----

/// A new pool of `pages` pages carved out of `pool` (which is charged
/// them until the new pool's last capability goes).
pub fn pool_create(pool: CapToken, pages: usize) -> Result<CapToken, Error> {
    // SAFETY: does not touch user memory.
    unsafe { syscall2(Syscall::PoolCreate as usize, tok(pool), pages) }.map(token)
}

/// A copy-on-write copy of `aspace` (fork), charged to `pool`.
pub fn aspace_fork(aspace: CapToken, pool: CapToken) -> Result<CapToken, Error> {
    // SAFETY: write-protecting private pages until they are written does
    // not change what the program sees.
    unsafe { syscall2(Syscall::AspaceFork as usize, tok(aspace), tok(pool)) }.map(token)
}

/// Copies the capabilities of `src` with `Rights::INHERIT` into the same
/// slots of `dst`, all of them (the kernel does a window per call).
pub fn cap_space_inherit(src: CapToken, dst: CapToken) -> Result<(), Error> {
    let mut start = 0;
    loop {
        // SAFETY: capability calls do not touch user memory.
        let next =
            unsafe { syscall3(Syscall::CapSpaceInherit as usize, tok(src), tok(dst), start) }?;
        if next == 0 {
            return Ok(());
        }
        start = next;
    }
}

/// Gives the suspended thread `dst` the registers, FP state and TLS base of
/// the stopped thread `src`, its system call returning 0 (fork's child).
pub fn thread_copy(src: CapToken, dst: CapToken) -> Result<(), Error> {
    // SAFETY: changes only `dst`'s saved state, which is not running.
    unit(unsafe { syscall2(Syscall::ThreadCopy as usize, tok(src), tok(dst)) })
}

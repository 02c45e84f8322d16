//! Threads running a Rust function in the caller's address space.
//!
//! Stacks come from a fixed pool of [`STACKS`] static stacks of
//! [`STACK_BYTES`] each (in `.bss`). A thread's start block — the function,
//! its argument, the exit code and a `done` word — sits at the top of its
//! stack. The assembly thread entry (`arch/`) calls [`thread_main`], then
//! sets `done` and ends the thread without touching the stack again, so a
//! stack can be reused as soon as `done` is seen.
//!
//! Invariants: a stack slot is owned by at most one [`Thread`]; it returns
//! to the pool only once its thread can no longer run (it finished, or
//! `ThreadKill` / the kernel removed it), otherwise it is leaked. Waiting
//! ([`Thread::join`]) yields, then sleeps (the thread may run on another
//! CPU).

use crate::arch;
use crate::syscall::{self, cap_delete, thread_kill, thread_resume, yield_now};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use keel_abi::Error;
use keel_abi::cap::CapToken;

/// Bytes per thread stack.
pub const STACK_BYTES: usize = 16 * 1024;
/// Stacks in the pool (threads that can exist at once, plus leaked ones).
pub const STACKS: usize = 32;

#[repr(C, align(16))]
struct Stack(UnsafeCell<[u8; STACK_BYTES]>);

struct StackPool {
    stacks: [Stack; STACKS],
    /// Bit `i` set: stack `i` is owned by a `Thread`.
    used: AtomicU32,
}

// SAFETY: a stack is only touched by the thread that owns its slot (and
// by `Thread::create`, which owns the slot before the thread starts).
unsafe impl Sync for StackPool {}

const _: () = assert!(STACKS <= 32);

static POOL: StackPool = StackPool {
    stacks: [const { Stack(UnsafeCell::new([0; STACK_BYTES])) }; STACKS],
    used: AtomicU32::new(0),
};

fn take_stack() -> Option<usize> {
    let mut used = POOL.used.load(Ordering::Relaxed);
    loop {
        let free = (!used).trailing_zeros() as usize;
        if free >= STACKS {
            return None;
        }
        match POOL.used.compare_exchange_weak(
            used,
            used | (1 << free),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(free),
            Err(now) => used = now,
        }
    }
}

fn release_stack(slot: usize) {
    POOL.used.fetch_and(!(1 << slot), Ordering::Release);
}

/// Stacks not owned by any thread.
pub fn free_stacks() -> usize {
    STACKS - POOL.used.load(Ordering::Relaxed).count_ones() as usize
}

/// What a new thread runs; at the top of its stack.
#[repr(C, align(16))]
pub(crate) struct StartBlock {
    /// Set to 1 by the assembly entry after `thread_main` returned. Must
    /// stay the first field.
    done: AtomicU32,
    code: AtomicI32,
    func: fn(usize) -> i32,
    arg: usize,
}

const _: () = assert!(core::mem::offset_of!(StartBlock, done) == 0);

/// Runs a thread's function; called by the assembly thread entry.
pub(crate) extern "C" fn thread_main(block: *const StartBlock) -> i32 {
    // SAFETY: `Thread::create` wrote the block before the thread could
    // run, and the stack it lives on stays owned until `done` is set.
    let b = unsafe { &*block };
    let code = (b.func)(b.arg);
    b.code.store(code, Ordering::Relaxed);
    code
}

/// Creates a suspended thread running `func(arg)` on the stack ending at
/// `top` (16-aligned), its start block at the top.
///
/// # Safety
/// The stack below `top` is the new thread's alone for as long as it runs.
unsafe fn start_on(
    aspace: CapToken,
    cspace: CapToken,
    top: usize,
    func: fn(usize) -> i32,
    arg: usize,
) -> Result<(CapToken, *const StartBlock), Error> {
    let block = (top - size_of::<StartBlock>()) as *mut StartBlock;
    // SAFETY: the block lies at the top of the stack the caller gave this
    // thread, aligned (the top and the block are 16-aligned).
    unsafe {
        block.write(StartBlock {
            done: AtomicU32::new(0),
            code: AtomicI32::new(0),
            func,
            arg,
        })
    };
    let entry = arch::__keel_thread_entry as *const () as usize;
    // SAFETY: `entry` is the runtime's thread entry and the stack below
    // the block is the new thread's.
    let token =
        unsafe { syscall::thread_create(aspace, cspace, entry, block as usize, block as usize) }?;
    Ok((token, block))
}

/// Starts a thread of this program running `func(arg)` on the caller's
/// stack ending at `top` (16-aligned), for programs that need more
/// threads than the pool has stacks; returns its capability. The caller
/// kills it (or sees it finish) and deletes the capability.
///
/// # Safety
/// The stack below `top` is the new thread's alone until it can no longer
/// run.
pub unsafe fn spawn_on(top: usize, func: fn(usize) -> i32, arg: usize) -> Result<CapToken, Error> {
    let aspace = crate::process::own_aspace().ok_or(Error::InvalidState)?;
    // SAFETY: the caller's promise.
    let (token, _) = unsafe { start_on(aspace, CapToken::NULL, top, func, arg) }?;
    if let Err(e) = thread_resume(token) {
        let _ = cap_delete(token);
        return Err(e);
    }
    Ok(token)
}

/// A thread of this program, running `func(arg)` on a pool stack. Dropping
/// it kills the thread if it has not finished, and frees its capability.
pub struct Thread {
    token: CapToken,
    slot: Option<usize>,
    block: *const StartBlock,
}

impl Thread {
    /// A new, suspended thread in the program's own address space and
    /// capability space.
    pub fn create(func: fn(usize) -> i32, arg: usize) -> Result<Thread, Error> {
        Self::create_in(CapToken::NULL, func, arg)
    }

    /// A new, suspended thread in the program's address space, with
    /// capability space `cspace` (`CapToken::NULL`: the caller's). A thread
    /// with its own capability space is its own process: a fault kills it
    /// and not the caller.
    pub fn create_in(
        cspace: CapToken,
        func: fn(usize) -> i32,
        arg: usize,
    ) -> Result<Thread, Error> {
        let aspace = crate::process::own_aspace().ok_or(Error::InvalidState)?;
        let slot = take_stack().ok_or(Error::OutOfMemory)?;
        let stack = POOL.stacks.get(slot).ok_or(Error::InvalidState)?;
        let top = stack.0.get() as usize + STACK_BYTES;
        // SAFETY: the stack slot is this call's, and no thread runs on it.
        match unsafe { start_on(aspace, cspace, top, func, arg) } {
            Ok((token, block)) => Ok(Thread {
                token,
                slot: Some(slot),
                block,
            }),
            Err(e) => {
                release_stack(slot);
                Err(e)
            }
        }
    }

    /// A new thread, already resumed.
    pub fn spawn(func: fn(usize) -> i32, arg: usize) -> Result<Thread, Error> {
        let t = Self::create(func, arg)?;
        thread_resume(t.token)?;
        Ok(t)
    }

    /// The thread's capability.
    pub fn token(&self) -> CapToken {
        self.token
    }

    /// Makes the (new or suspended) thread runnable.
    pub fn resume(&self) -> Result<(), Error> {
        thread_resume(self.token)
    }

    /// The function's return value, once it has returned.
    pub fn finished(&self) -> Option<i32> {
        // After `kill` the slot (and the block on it) is no longer ours.
        self.slot?;
        // SAFETY: the block stays valid while `self` owns the stack slot.
        let b = unsafe { &*self.block };
        (b.done.load(Ordering::Acquire) != 0).then(|| b.code.load(Ordering::Relaxed))
    }

    /// Waits until the thread has finished: yields at most `max_yields`
    /// times, then (it may be running on another CPU) sleeps in 1 ms steps
    /// for up to `max_yields` ms more; the function's return value, or
    /// `None` if it has not finished. A finished thread is gone (with
    /// what it held) when this returns: it may still have been on its way
    /// out on another CPU, so it is killed.
    pub fn join(&self, max_yields: usize) -> Option<i32> {
        for i in 0..2 * max_yields {
            if self.finished().is_some() {
                break;
            }
            let _ = if i < max_yields {
                yield_now()
            } else {
                syscall::sleep_ns(1_000_000)
            };
        }
        let code = self.finished();
        if code.is_some() {
            let _ = thread_kill(self.token);
        }
        code
    }

    /// Kills the thread if it still exists. Afterwards it cannot run, so
    /// its stack returns to the pool.
    pub fn kill(&mut self) -> Result<(), Error> {
        let r = match thread_kill(self.token) {
            // Gone already: killed with its process by a fault.
            Ok(()) | Err(Error::InvalidState) => Ok(()),
            Err(e) => Err(e),
        };
        if r.is_ok()
            && let Some(slot) = self.slot.take()
        {
            release_stack(slot);
        }
        r
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // Finished or not, the thread is made to be gone before its
        // capability is (a finished one may still be on its way out on
        // another CPU). If the kill fails the slot stays taken (leaked):
        // the thread might still run on it.
        let _ = self.kill();
        let _ = cap_delete(self.token);
    }
}

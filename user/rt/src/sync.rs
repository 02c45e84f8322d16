//! Blocking locks between the threads of a program — [`Mutex`] and
//! [`Semaphore`] — futex-style over notifications. The state is an atomic
//! word: taking or giving back an uncontended lock makes no system call;
//! a thread that has to wait blocks in `Wait` on the lock's notification,
//! and a thread that lets go signals it when someone may wait.
//!
//! A signal wakes one waiting thread, or stays pending for the next
//! `Wait`, and two pending signals are one. So a woken thread re-checks
//! the word (a spurious wake-up costs a loop), and a [`Semaphore`] waiter
//! that got a permit passes a wake-up on while permits and waiters remain.
//!
//! Invariants: a `Mutex`'s state is 0 (free), 1 (held, nobody waits) or 2
//! (held, someone may wait), and unlocking signals exactly when it was 2.
//! A `Semaphore`'s `waiting` counts the threads between announcing a wait
//! and leaving it; a release signals when it is not zero. Each lock owns
//! its notification and deletes it when dropped.

use crate::ipc::{notification_create, signal, wait};
use crate::syscall::cap_delete;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::cap::CapToken;

/// How often a contended lock is looked at again before the thread blocks
/// (a holder on another CPU may be about to let go).
const SPINS: usize = 64;

/// A mutual-exclusion lock around a `T`.
pub struct Mutex<T> {
    state: AtomicU32,
    note: CapToken,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a `MutexGuard`, and the state
// word lets one guard exist at a time.
unsafe impl<T: Send> Sync for Mutex<T> {}

/// The lock held; unlocks when dropped.
pub struct MutexGuard<'a, T> {
    mutex: &'a Mutex<T>,
}

impl<T> Mutex<T> {
    /// A free lock around `value`, its notification charged to `pool`.
    pub fn new(pool: CapToken, value: T) -> Result<Self, Error> {
        Ok(Mutex {
            state: AtomicU32::new(0),
            note: notification_create(pool)?,
            value: UnsafeCell::new(value),
        })
    }

    /// The lock, if it is free.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let free = self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed);
        free.ok().map(|_| MutexGuard { mutex: self })
    }

    /// Waits for the lock. Fails only if waiting does (its notification
    /// was taken away).
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, Error> {
        for _ in 0..SPINS {
            if let Some(guard) = self.try_lock() {
                return Ok(guard);
            }
            core::hint::spin_loop();
        }
        // Marked contended: whoever holds it signals when it lets go.
        while self.state.swap(2, Ordering::Acquire) != 0 {
            wait(self.note)?;
        }
        Ok(MutexGuard { mutex: self })
    }
}

impl<T> Drop for Mutex<T> {
    fn drop(&mut self) {
        let _ = cap_delete(self.note);
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (module invariant).
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        if self.mutex.state.swap(0, Ordering::Release) == 2 {
            let _ = signal(self.mutex.note, 1);
        }
    }
}

/// A counting semaphore: `acquire` takes a permit, waiting for one if
/// none is left; `release` gives one (back).
pub struct Semaphore {
    permits: AtomicUsize,
    waiting: AtomicUsize,
    note: CapToken,
}

impl Semaphore {
    /// A semaphore with `permits`, its notification charged to `pool`.
    pub fn new(pool: CapToken, permits: usize) -> Result<Self, Error> {
        Ok(Semaphore {
            permits: AtomicUsize::new(permits),
            waiting: AtomicUsize::new(0),
            note: notification_create(pool)?,
        })
    }

    /// Takes a permit if one is left.
    pub fn try_acquire(&self) -> bool {
        let take = |p: usize| p.checked_sub(1);
        (self
            .permits
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take))
        .is_ok()
    }

    /// Takes a permit, waiting for one. Fails only if waiting does.
    pub fn acquire(&self) -> Result<(), Error> {
        while !self.try_acquire() {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            // A release before the announcement saw nobody waiting, and
            // left its permit for this check (sequentially consistent).
            let waited = match self.permits.load(Ordering::SeqCst) {
                0 => wait(self.note).map(|_| ()),
                _ => Ok(()),
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            waited?;
        }
        // Wake-ups coalesce: pass one on while there is more to take.
        if self.permits.load(Ordering::SeqCst) > 0 && self.waiting.load(Ordering::SeqCst) > 0 {
            let _ = signal(self.note, 1);
        }
        Ok(())
    }

    /// Gives a permit; wakes a waiter if there is one.
    pub fn release(&self) {
        self.permits.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _ = signal(self.note, 1);
        }
    }

    /// Permits left now.
    pub fn available(&self) -> usize {
        self.permits.load(Ordering::SeqCst)
    }
}

impl Drop for Semaphore {
    fn drop(&mut self) {
        let _ = cap_delete(self.note);
    }
}

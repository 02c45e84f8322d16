//! Blocking synchronization between the threads of a program — [`Mutex`]
//! and [`Semaphore`], futex-style over notifications, and over those a
//! [`Condvar`], a [`RwLock`] and a [`Barrier`]. The state is an atomic
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
//! its notification and deletes it when dropped. A `Condvar`'s `waiting`
//! counts waiters not yet notified; each notification hands one of them
//! a permit of `wake` and waits (on `taken`) until a waiter took it, so a
//! thread that starts waiting later cannot take it instead (Birrell's
//! handshake) — which holds as long as notifiers hold the mutex.

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

/// A condition variable: [`Condvar::wait`] gives up a [`Mutex`] and
/// sleeps until notified, then takes the mutex again. Waiters check their
/// condition in a loop; notifiers hold the mutex while they notify.
pub struct Condvar {
    waiting: AtomicUsize,
    wake: Semaphore,
    taken: Semaphore,
}

impl Condvar {
    /// A condition variable, its notification charged to `pool`.
    pub fn new(pool: CapToken) -> Result<Self, Error> {
        Ok(Condvar {
            waiting: AtomicUsize::new(0),
            wake: Semaphore::new(pool, 0)?,
            taken: Semaphore::new(pool, 0)?,
        })
    }

    /// Unlocks `guard`'s mutex, waits for a notification, locks it again.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> Result<MutexGuard<'a, T>, Error> {
        let mutex = guard.mutex;
        // Counted before the unlock: a notifier that then takes the mutex
        // sees this waiter, and its permit waits for it.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        let woken = self.wake.acquire();
        self.taken.release();
        let relocked = mutex.lock();
        woken.and(relocked)
    }

    /// Wakes one waiter, if any (call it with the mutex held).
    pub fn notify_one(&self) {
        let one = |w: usize| w.checked_sub(1);
        if self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, one)
            .is_ok()
        {
            self.hand_over(1);
        }
    }

    /// Wakes every waiter (call it with the mutex held).
    pub fn notify_all(&self) {
        self.hand_over(self.waiting.swap(0, Ordering::SeqCst));
    }

    /// Gives `n` waiters a wake-up each, and waits until they took them.
    fn hand_over(&self, n: usize) {
        for _ in 0..n {
            self.wake.release();
        }
        for _ in 0..n {
            let _ = self.taken.acquire();
        }
    }
}

/// Who holds a [`RwLock`].
#[derive(Default)]
struct RwState {
    readers: usize,
    writer: bool,
    writers_waiting: usize,
}

/// A readers-writer lock around a `T`: many readers or one writer; a
/// waiting writer keeps new readers out, so writers are not starved.
pub struct RwLock<T> {
    state: Mutex<RwState>,
    readable: Condvar,
    writable: Condvar,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through the guards, which the state
// lets exist as many readers or one writer.
unsafe impl<T: Send + Sync> Sync for RwLock<T> {}

/// Read access; given back when dropped.
pub struct ReadGuard<'a, T> {
    lock: &'a RwLock<T>,
}

/// Write access; given back when dropped.
pub struct WriteGuard<'a, T> {
    lock: &'a RwLock<T>,
}

impl<T> RwLock<T> {
    /// A free lock around `value`, its notifications charged to `pool`.
    pub fn new(pool: CapToken, value: T) -> Result<Self, Error> {
        Ok(RwLock {
            state: Mutex::new(pool, RwState::default())?,
            readable: Condvar::new(pool)?,
            writable: Condvar::new(pool)?,
            value: UnsafeCell::new(value),
        })
    }

    /// Waits until no writer holds or waits for it, then reads.
    pub fn read(&self) -> Result<ReadGuard<'_, T>, Error> {
        let mut s = self.state.lock()?;
        while s.writer || s.writers_waiting > 0 {
            s = self.readable.wait(s)?;
        }
        s.readers += 1;
        Ok(ReadGuard { lock: self })
    }

    /// Waits until nobody holds it, then writes.
    pub fn write(&self) -> Result<WriteGuard<'_, T>, Error> {
        let mut s = self.state.lock()?;
        s.writers_waiting += 1;
        while s.writer || s.readers > 0 {
            match self.writable.wait(s) {
                Ok(next) => s = next,
                Err(e) => {
                    // The state's mutex is lost with the error; try again
                    // to take this writer back out.
                    if let Ok(mut s) = self.state.lock() {
                        s.writers_waiting -= 1;
                    }
                    return Err(e);
                }
            }
        }
        s.writers_waiting -= 1;
        s.writer = true;
        Ok(WriteGuard { lock: self })
    }

    /// Gives back read or write access: the next writer, else every
    /// reader, may go on.
    fn leave(&self, writer: bool) {
        let Ok(mut s) = self.state.lock() else { return };
        if writer {
            s.writer = false;
        } else {
            s.readers -= 1;
        }
        if s.readers == 0 && s.writers_waiting > 0 {
            self.writable.notify_one();
        } else if s.writers_waiting == 0 {
            self.readable.notify_all();
        }
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: no writer holds the lock while a reader does.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.leave(false);
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer holds the lock alone.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.leave(true);
    }
}

/// A barrier for `n` threads: each [`Barrier::wait`] returns once `n`
/// have called it; it can be used again at once.
pub struct Barrier {
    n: usize,
    /// Arrived in this round, and the round.
    state: Mutex<(usize, u64)>,
    all_in: Condvar,
}

impl Barrier {
    /// A barrier for `n` threads (at least 1), charged to `pool`.
    pub fn new(pool: CapToken, n: usize) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(Barrier {
            n,
            state: Mutex::new(pool, (0, 0))?,
            all_in: Condvar::new(pool)?,
        })
    }

    /// Waits for the round's other threads; true for the one that came
    /// last (the leader).
    pub fn wait(&self) -> Result<bool, Error> {
        let mut s = self.state.lock()?;
        let round = s.1;
        s.0 += 1;
        if s.0 == self.n {
            *s = (0, round.wrapping_add(1));
            self.all_in.notify_all();
            return Ok(true);
        }
        while s.1 == round {
            s = self.all_in.wait(s)?;
        }
        Ok(false)
    }
}

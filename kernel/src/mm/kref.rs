//! `KArc`: an atomically reference-counted pointer whose allocation fails
//! with an error instead of aborting, for kernel objects allocated on behalf
//! of user space (`alloc::sync::Arc` has no stable fallible constructor).
//!
//! Invariant: `ptr` points to a live `Inner<T>` allocated with
//! `Layout::new::<Inner<T>>()`, whose `count` equals the number of `KArc`s
//! pointing to it; the last one to drop frees it.
//!
//! With it, the small helpers of the kernel's fallible paths: [`try_box`],
//! [`oom`] and [`ensure`].

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering, fence};
use keel_abi::Error;

struct Inner<T> {
    count: AtomicUsize,
    value: T,
}

/// A shared, reference-counted kernel object.
pub struct KArc<T> {
    ptr: NonNull<Inner<T>>,
}

// SAFETY: like `Arc`: the count is atomic, and `T` is only shared by
// reference, so sending or sharing a `KArc<T>` is safe when `T` is
// `Send + Sync`.
unsafe impl<T: Send + Sync> Send for KArc<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for KArc<T> {}

impl<T> KArc<T> {
    /// Moves `value` to the heap; `Err(OutOfMemory)` if the heap is full.
    pub fn try_new(value: T) -> Result<Self, Error> {
        let layout = Layout::new::<Inner<T>>();
        // SAFETY: `layout` has a non-zero size (it holds the counter).
        let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<Inner<T>>();
        let ptr = NonNull::new(raw).ok_or(Error::OutOfMemory)?;
        // SAFETY: `ptr` is a fresh allocation of the right layout.
        unsafe {
            ptr.as_ptr().write(Inner {
                count: AtomicUsize::new(1),
                value,
            })
        };
        Ok(KArc { ptr })
    }

    /// Whether both point to the same object.
    pub fn ptr_eq(a: &Self, b: &Self) -> bool {
        a.ptr == b.ptr
    }

    /// The number of `KArc`s to this object.
    pub fn count(this: &Self) -> usize {
        this.inner().count.load(Ordering::Acquire)
    }

    fn inner(&self) -> &Inner<T> {
        // SAFETY: by the type invariant, `ptr` is live while `self` is.
        unsafe { self.ptr.as_ref() }
    }
}

/// Moves `value` into a `Box`; `Err(OutOfMemory)` if the heap is full
/// (`Box::new` would abort).
pub fn try_box<T>(value: T) -> Result<alloc::boxed::Box<T>, Error> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        return Ok(alloc::boxed::Box::new(value));
    }
    // SAFETY: `layout` has a non-zero size.
    let raw = unsafe { alloc::alloc::alloc(layout) }.cast::<T>();
    let ptr = NonNull::new(raw).ok_or(Error::OutOfMemory)?;
    // SAFETY: `ptr` is a fresh allocation of `T`'s layout from the global
    // allocator, which is what `Box::from_raw` requires; it is initialised
    // before the box is made.
    unsafe {
        ptr.as_ptr().write(value);
        Ok(alloc::boxed::Box::from_raw(ptr.as_ptr()))
    }
}

/// `OutOfMemory` for a failed fallible allocation (`Vec::try_reserve`).
pub fn oom<E>(_: E) -> Error {
    Error::OutOfMemory
}

/// `Err(e)` unless `ok`: one check of an argument or a state.
pub fn ensure<E>(ok: bool, e: E) -> Result<(), E> {
    if ok { Ok(()) } else { Err(e) }
}

impl<T> Clone for KArc<T> {
    fn clone(&self) -> Self {
        // Each clone is a live object of at least a pointer's size, so the
        // count cannot overflow before memory runs out.
        self.inner().count.fetch_add(1, Ordering::Relaxed);
        KArc { ptr: self.ptr }
    }
}

impl<T> core::ops::Deref for KArc<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner().value
    }
}

impl<T> Drop for KArc<T> {
    fn drop(&mut self) {
        if self.inner().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: this was the last reference: nobody else can reach the
        // object, which was allocated by `try_new` with this layout.
        unsafe {
            core::ptr::drop_in_place(self.ptr.as_ptr());
            alloc::alloc::dealloc(self.ptr.as_ptr().cast(), Layout::new::<Inner<T>>());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_drops_once() {
        let dropped = std::rc::Rc::new(std::cell::Cell::new(0));
        struct D(std::rc::Rc<std::cell::Cell<u32>>);
        impl Drop for D {
            fn drop(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let a = KArc::try_new(D(dropped.clone())).unwrap();
        let b = a.clone();
        assert!(KArc::ptr_eq(&a, &b));
        assert_eq!(KArc::count(&a), 2);
        drop(a);
        assert_eq!(dropped.get(), 0);
        assert_eq!(KArc::count(&b), 1);
        drop(b);
        assert_eq!(dropped.get(), 1);
    }
}

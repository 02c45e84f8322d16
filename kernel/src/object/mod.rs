//! Kernel objects as capabilities see them, one module each (seL4's
//! layout): [`thread`] (TCBs and the references capabilities hold to them),
//! [`cspace`] (capability spaces as objects: a process), [`aspace`]
//! (address spaces as objects); memory objects and pools are `mm`'s
//! [`MemoryObject`] and [`MemoryPool`]. [`KObject`] is what a capability
//! refers to.
//!
//! Ownership: every object lives while a capability to it does. Threads
//! and capability spaces are named by index in kernel tables, so their
//! capabilities hold a reference (`ThreadRef`, `CSpaceRef`) whose last
//! drop queues the object as an orphan on its kernel's [`Orphans`];
//! [`crate::task::Kernel::collect`] then ends it (it cannot be destroyed
//! from inside a capability operation, which holds the tables). Queueing
//! never allocates: each reference reserves its entry when it is made
//! ([`OrphanSlot`]).
//!
//! Lock order: the kernel lock (`entry::KERNEL`) → an address space →
//! a memory object → the frame allocator and heap. An orphan queue's lock
//! is a leaf: taken with any of those held, it takes none.

pub mod aspace;
pub mod cspace;
pub mod device;
pub mod endpoint;
pub mod notification;
pub mod thread;
pub mod timer;

pub use aspace::AddressSpaceObject;
pub use cspace::{CSpaceRef, Home};
pub use device::{DeviceControl, IoPorts, IrqRef};
pub use endpoint::{Endpoint, EndpointId, EndpointRef};
pub use notification::{Notification, NotificationId, NotificationRef};
pub use thread::{Thread, ThreadId, ThreadRef};
pub use timer::{Timer, TimerId, TimerRef};

use crate::cap::CSpaceId;
use crate::mm::kref::{KArc, oom};
use crate::mm::pool::MemoryPool;
use crate::mm::user::MemoryObject;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use keel_abi::Error;
use keel_abi::cap::ObjectType;
use spin::Mutex;

/// What a capability refers to.
#[derive(Clone)]
pub enum KObject {
    /// A memory object (frames that can be mapped).
    Memory(KArc<MemoryObject>),
    /// A user address space.
    AddressSpace(KArc<AddressSpaceObject>),
    /// A thread, through the reference that keeps it alive.
    Thread(KArc<ThreadRef>),
    /// A capability space (a process), through the reference that keeps it.
    CSpace(KArc<CSpaceRef>),
    /// A memory pool that allocations are charged to.
    Pool(KArc<MemoryPool>),
    /// An IPC endpoint.
    Endpoint(KArc<EndpointRef>),
    /// A notification.
    Notification(KArc<NotificationRef>),
    /// The right to claim hardware for drivers.
    DeviceControl(KArc<DeviceControl>),
    /// The handler of an interrupt line.
    Irq(KArc<IrqRef>),
    /// A range of x86 I/O ports.
    IoPorts(KArc<IoPorts>),
    /// A timer.
    Timer(KArc<TimerRef>),
}

/// A kernel object type a capability's object can be taken as: the one
/// typed accessor of the system-call decoder.
pub trait Object: Sized {
    /// The ABI type of its capabilities.
    const TYPE: ObjectType;
    /// The object, if `o` is one.
    fn from_object(o: &KObject) -> Option<Self>;
}

macro_rules! object {
    ($t:ty, $variant:ident, $abi:ident) => {
        impl Object for KArc<$t> {
            const TYPE: ObjectType = ObjectType::$abi;
            fn from_object(o: &KObject) -> Option<Self> {
                match o {
                    KObject::$variant(x) => Some(x.clone()),
                    _ => None,
                }
            }
        }
    };
}
object!(MemoryObject, Memory, MemoryObject);
object!(AddressSpaceObject, AddressSpace, AddressSpace);
object!(ThreadRef, Thread, Thread);
object!(CSpaceRef, CSpace, CapSpace);
object!(MemoryPool, Pool, MemoryPool);
object!(EndpointRef, Endpoint, Endpoint);
object!(NotificationRef, Notification, Notification);
object!(DeviceControl, DeviceControl, DeviceControl);
object!(IrqRef, Irq, IrqHandler);
object!(IoPorts, IoPorts, IoPortRange);
object!(TimerRef, Timer, Timer);

/// A capability's reference to an object in one of the kernel's tables
/// (endpoints, notifications, timers, interrupt handlers: `I` is its id),
/// charged [`endpoint::ENDPOINT_PAGES`] to a pool if it has one: when the
/// last reference goes, the pages are credited and the object is queued as
/// an orphan.
pub struct TableRef<I: Copy + Into<Orphan>> {
    id: I,
    pool: Option<KArc<MemoryPool>>,
    slot: OrphanSlot,
}

impl<I: Copy + Into<Orphan>> TableRef<I> {
    /// A reference to object `id`, which is charged to `pool` already;
    /// the charge is credited when the reference goes (or at once if this
    /// fails).
    pub fn new(
        orphans: &KArc<Orphans>,
        id: I,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<Self>, Error> {
        let slot = Orphans::reserve(orphans).inspect_err(|_| {
            if let Some(p) = &pool {
                p.credit(endpoint::ENDPOINT_PAGES);
            }
        })?;
        KArc::try_new(TableRef { id, pool, slot })
    }

    /// The object (stale once it is gone).
    pub fn id(&self) -> I {
        self.id
    }
}

impl<I: Copy + Into<Orphan>> Drop for TableRef<I> {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            p.credit(endpoint::ENDPOINT_PAGES);
        }
        self.slot.queue(self.id.into());
    }
}

/// An object whose last reference went, waiting for
/// [`crate::task::Kernel::collect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orphan {
    /// A capability space (process) to destroy with its threads.
    CSpace(CSpaceId),
    /// A thread to kill.
    Thread(ThreadId),
    /// An endpoint to end.
    Endpoint(EndpointId),
    /// A notification to end.
    Notification(NotificationId),
    /// An interrupt line whose handler (this serial) is gone: mask it and
    /// free it.
    Irq(u32, u64),
    /// A timer to disarm and end.
    Timer(TimerId),
}

/// The queue of orphans of one kernel. Room for one entry is reserved for
/// every live [`OrphanSlot`] and every queued entry not yet taken, so
/// queueing from `Drop` never allocates and never fails.
#[derive(Default)]
pub struct Orphans {
    queue: Mutex<OrphanQueue>,
    /// Whether `queue` may be non-empty: one load on every system call's
    /// path instead of a lock.
    queued: AtomicBool,
}

#[derive(Default)]
struct OrphanQueue {
    entries: Vec<Orphan>,
    /// Live slots plus queued entries: the capacity `entries` must have.
    owed: usize,
}

impl Orphans {
    /// An empty queue.
    pub fn new() -> Result<KArc<Orphans>, Error> {
        KArc::try_new(Orphans::default())
    }

    /// Reserves room in `orphans` for one object's last reference.
    pub fn reserve(orphans: &KArc<Orphans>) -> Result<OrphanSlot, Error> {
        let mut q = orphans.queue.lock();
        let owed = q.owed + 1;
        let more = owed.saturating_sub(q.entries.len());
        q.entries.try_reserve(more).map_err(oom)?;
        q.owed = owed;
        Ok(OrphanSlot {
            orphans: orphans.clone(),
        })
    }

    /// Whether an orphan may be queued (one atomic load).
    #[inline]
    pub fn pending(&self) -> bool {
        self.queued.load(Ordering::Acquire)
    }

    /// The next orphan to end, if any (one atomic load when there is none).
    pub fn next(&self) -> Option<Orphan> {
        if !self.queued.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.queue.lock();
        match q.entries.pop() {
            Some(orphan) => {
                q.owed = q.owed.saturating_sub(1);
                Some(orphan)
            }
            None => {
                self.queued.store(false, Ordering::Release);
                None
            }
        }
    }
}

/// Room reserved in an orphan queue for one object's last reference;
/// [`OrphanSlot::queue`] uses it.
pub struct OrphanSlot {
    orphans: KArc<Orphans>,
}

impl OrphanSlot {
    /// Queues `orphan` in the room this slot reserved.
    pub fn queue(&self, orphan: Orphan) {
        let mut q = self.orphans.queue.lock();
        // Cannot be full: this slot's entry is part of `owed`.
        if q.entries.len() < q.entries.capacity() {
            q.entries.push(orphan);
            self.orphans.queued.store(true, Ordering::Release);
        }
    }
}

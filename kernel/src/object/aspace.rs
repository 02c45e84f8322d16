//! The address-space object: a user address space (`mm::aspace`) behind
//! its lock, as capabilities and threads refer to it. The space charges
//! its page tables to the pool it was made from.

use crate::mm::kref::KArc;
use crate::mm::pool::MemoryPool;
use crate::mm::user::UserSpace;
use keel_abi::Error;
use spin::{Mutex, MutexGuard};

/// A user address space as a kernel object.
pub struct AddressSpaceObject {
    space: Mutex<UserSpace>,
}

impl AddressSpaceObject {
    /// An empty space with address-space id `asid` (0: assigned when it is
    /// first loaded), its page tables charged to `pool`.
    pub fn new(
        asid: u16,
        pool: Option<KArc<MemoryPool>>,
    ) -> Result<KArc<AddressSpaceObject>, Error> {
        // On failure the dropped space credits its charge back.
        Self::from_space(UserSpace::new(asid, pool)?)
    }

    /// `space` as an object.
    pub fn from_space(space: UserSpace) -> Result<KArc<AddressSpaceObject>, Error> {
        KArc::try_new(AddressSpaceObject {
            space: Mutex::new(space),
        })
    }

    /// The space, locked (lock order: after the kernel lock, before its
    /// memory objects).
    pub fn lock(&self) -> MutexGuard<'_, UserSpace> {
        self.space.lock()
    }
}

//! Capabilities as user space sees them: the 64-bit token layout, the
//! object-type numbers and the rights bits.
//!
//! A token is what a system call takes to name a capability in the caller's
//! own capability space:
//!
//! ```text
//!  63                              32 31        24 23                     0
//! +----------------------------------+------------+------------------------+
//! |            generation            |    type    |       slot index       |
//! +----------------------------------+------------+------------------------+
//! ```
//!
//! The kernel accepts a token only if the slot holds a live capability whose
//! generation and object type both equal the token's; each time a slot is
//! emptied its generation advances, so a stale token (deleted, revoked or
//! moved capability) or a forged one is refused with
//! [`crate::Error::InvalidCapability`].
//!
//! Invariants: every number here is stable ABI (`docs/abi.md`); type code 0
//! is never a valid object type, so the all-zero token is the null token;
//! rights values built from raw numbers are checked (`from_bits`).

use core::ops::{BitAnd, BitOr};

/// Bits of the slot index (bits 0..24).
pub const INDEX_BITS: u32 = 24;
/// Largest slot index a token can carry.
pub const MAX_INDEX: u32 = (1 << INDEX_BITS) - 1;
/// Position of the object-type code (bits 24..32).
pub const TYPE_SHIFT: u32 = 24;
/// Position of the generation counter (bits 32..64).
pub const GENERATION_SHIFT: u32 = 32;
/// The badge of a capability that has none. A badge, once set to anything
/// else, can never be changed on that capability or its descendants.
pub const NO_BADGE: u64 = 0;

/// A user-visible capability handle. See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct CapToken(u64);

impl CapToken {
    /// The null token: names nothing (type code 0).
    pub const NULL: CapToken = CapToken(0);

    /// Packs a token; `index` is truncated to [`INDEX_BITS`].
    pub const fn new(index: u32, generation: u32, ty: ObjectType) -> CapToken {
        CapToken(
            ((generation as u64) << GENERATION_SHIFT)
                | ((ty as u64) << TYPE_SHIFT)
                | (index & MAX_INDEX) as u64,
        )
    }

    /// A token from the raw register value user space passed.
    pub const fn from_raw(raw: u64) -> CapToken {
        CapToken(raw)
    }

    /// The raw value, as passed in a register.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The slot index.
    pub const fn index(self) -> u32 {
        (self.0 as u32) & MAX_INDEX
    }

    /// The generation counter.
    pub const fn generation(self) -> u32 {
        (self.0 >> GENERATION_SHIFT) as u32
    }

    /// The raw object-type code (0 for the null token).
    pub const fn type_code(self) -> u8 {
        (self.0 >> TYPE_SHIFT) as u8
    }

    /// The object type, if the code names one.
    pub fn object_type(self) -> Option<ObjectType> {
        ObjectType::try_from(self.type_code()).ok()
    }
}

/// The kind of kernel object a capability names. Code 0 is reserved for
/// "null / invalid" and is not a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ObjectType {
    /// Synchronous IPC endpoint.
    Endpoint = 1,
    /// Notification: a word of signal bits.
    Notification = 2,
    /// Memory object: a set of physical frames that can be mapped.
    MemoryObject = 3,
    /// User address space.
    AddressSpace = 4,
    /// Thread.
    Thread = 5,
    /// Process.
    Process = 6,
    /// Capability space.
    CapSpace = 7,
    /// Handler for one interrupt line.
    IrqHandler = 8,
    /// One-shot reply capability created by a call.
    Reply = 9,
    /// Range of x86 I/O ports.
    IoPortRange = 10,
    /// Device MMIO region.
    MmioRegion = 11,
    /// A quota of physical memory that memory objects, address spaces and
    /// capability spaces are allocated from.
    MemoryPool = 12,
    /// The right to claim interrupt lines, I/O ports and device memory
    /// (the root task's, for drivers).
    DeviceControl = 13,
    /// A one-shot or periodic timer signalling a notification.
    Timer = 14,
}

impl ObjectType {
    /// Every object type, in numeric order.
    pub const ALL: [ObjectType; 14] = [
        ObjectType::Endpoint,
        ObjectType::Notification,
        ObjectType::MemoryObject,
        ObjectType::AddressSpace,
        ObjectType::Thread,
        ObjectType::Process,
        ObjectType::CapSpace,
        ObjectType::IrqHandler,
        ObjectType::Reply,
        ObjectType::IoPortRange,
        ObjectType::MmioRegion,
        ObjectType::MemoryPool,
        ObjectType::DeviceControl,
        ObjectType::Timer,
    ];
}

impl TryFrom<u8> for ObjectType {
    type Error = crate::Error;

    fn try_from(code: u8) -> Result<Self, Self::Error> {
        ObjectType::ALL
            .iter()
            .copied()
            .find(|t| *t as u8 == code)
            .ok_or(crate::Error::InvalidArgument)
    }
}

/// The rights a capability carries. Derived capabilities can only have a
/// subset of their parent's rights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Rights(u32);

impl Rights {
    /// No rights.
    pub const NONE: Rights = Rights(0);
    /// Read: receive on an endpoint, wait on a notification, map readable.
    pub const READ: Rights = Rights(1 << 0);
    /// Write: send on an endpoint, signal a notification, map writable,
    /// modify the object.
    pub const WRITE: Rights = Rights(1 << 1);
    /// Execute / map: map a memory object executable; for other objects,
    /// the object-specific "use" right (e.g. run a thread, map a region).
    pub const EXECUTE: Rights = Rights(1 << 2);
    /// Grant: the capability may be copied or moved to another capability
    /// space (including by IPC).
    pub const GRANT: Rights = Rights(1 << 3);
    /// Revoke: the holder may destroy all descendants of this capability.
    pub const REVOKE: Rights = Rights(1 << 4);
    /// Inherit: copied into a forked child's capability space
    /// (`CapSpaceInherit`).
    pub const INHERIT: Rights = Rights(1 << 5);
    /// Every right.
    pub const ALL: Rights = Rights(0x3f);

    /// Rights from a raw value; `None` if an undefined bit is set.
    pub const fn from_bits(bits: u32) -> Option<Rights> {
        if bits & !Rights::ALL.0 == 0 {
            Some(Rights(bits))
        } else {
            None
        }
    }

    /// The raw value.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every right in `other` is also in `self`.
    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether no right is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// `self` without the rights in `other`.
    pub const fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }
}

impl BitOr for Rights {
    type Output = Rights;
    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl BitAnd for Rights {
    type Output = Rights;
    fn bitand(self, rhs: Rights) -> Rights {
        Rights(self.0 & rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_round_trip() {
        let t = CapToken::new(0xab_cdef, 0xdead_beef, ObjectType::MmioRegion);
        assert_eq!(t.index(), 0xab_cdef);
        assert_eq!(t.generation(), 0xdead_beef);
        assert_eq!(t.object_type(), Some(ObjectType::MmioRegion));
        assert_eq!(t.raw(), 0xdead_beef_0bab_cdef);
        assert_eq!(CapToken::from_raw(t.raw()), t);
        // The index is truncated, never spills into the type.
        let t = CapToken::new(u32::MAX, 0, ObjectType::Endpoint);
        assert_eq!(t.index(), MAX_INDEX);
        assert_eq!(t.object_type(), Some(ObjectType::Endpoint));
        assert_eq!(CapToken::NULL.object_type(), None);
        assert_eq!(CapToken::from_raw(0xff << TYPE_SHIFT).object_type(), None);
    }

    #[test]
    fn object_type_codes_are_dense_and_stable() {
        for (i, t) in ObjectType::ALL.iter().enumerate() {
            assert_eq!(*t as u8 as usize, i + 1);
            assert_eq!(ObjectType::try_from(*t as u8), Ok(*t));
        }
        assert_eq!(ObjectType::try_from(0), Err(crate::Error::InvalidArgument));
        assert_eq!(ObjectType::try_from(15), Err(crate::Error::InvalidArgument));
    }

    #[test]
    fn rights_algebra() {
        assert_eq!(Rights::from_bits(0x3f), Some(Rights::ALL));
        assert_eq!(Rights::from_bits(0x40), None);
        let rw = Rights::READ | Rights::WRITE;
        assert!(rw.contains(Rights::READ));
        assert!(!rw.contains(Rights::GRANT));
        assert!(Rights::ALL.contains(rw));
        assert!(rw.contains(Rights::NONE));
        assert_eq!(rw & Rights::WRITE, Rights::WRITE);
        assert_eq!(rw.without(Rights::READ), Rights::WRITE);
        assert!(Rights::NONE.is_empty());
        assert_eq!(
            [
                Rights::READ,
                Rights::WRITE,
                Rights::EXECUTE,
                Rights::GRANT,
                Rights::REVOKE
            ]
            .map(Rights::bits),
            [1, 2, 4, 8, 16]
        );
    }
}

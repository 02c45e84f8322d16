//! Device access for user-space drivers: the device-control capability
//! (the root task's right to claim hardware), interrupt handlers (one per
//! line, delivering the line as a notification signal) and x86 I/O-port
//! ranges. Device memory is a `MemoryObject` with physical, uncached
//! backing (`mm::object`).
//!
//! An interrupt handler's capabilities share an [`IrqRef`]; when the last
//! goes, the line is queued as an orphan and the kernel masks it and frees
//! it for another driver (so killing a driver releases its lines).

use super::{NotificationRef, Orphan, OrphanSlot, Orphans};
use crate::mm::kref::KArc;
use keel_abi::Error;

/// The right to claim interrupt lines, I/O ports and device memory.
pub struct DeviceControl;

/// A capability's reference to the handler of one interrupt line.
pub struct IrqRef {
    line: u32,
    /// Tells this handler from a later one of the same line.
    serial: u64,
    slot: OrphanSlot,
}

impl IrqRef {
    /// A reference to the handler of `line` with `serial`.
    pub fn new(orphans: &KArc<Orphans>, line: u32, serial: u64) -> Result<KArc<IrqRef>, Error> {
        let slot = Orphans::reserve(orphans)?;
        KArc::try_new(IrqRef { line, serial, slot })
    }

    /// The line.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// Its serial number.
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

impl Drop for IrqRef {
    fn drop(&mut self) {
        self.slot.queue(Orphan::Irq(self.line, self.serial));
    }
}

/// What a claimed line does when it fires.
pub struct IrqBinding {
    /// The handler it belongs to.
    pub serial: u64,
    /// Signalled with `bits`.
    pub notification: KArc<NotificationRef>,
    /// The bits (the notification capability's badge, or 1).
    pub bits: u64,
}

/// A range of x86 I/O ports.
pub struct IoPorts {
    /// First port.
    pub base: u16,
    /// Ports in the range (at least 1).
    pub count: u16,
}

impl IoPorts {
    /// Whether `width` bytes at `port` lie inside the range.
    pub fn covers(&self, port: usize, width: usize) -> bool {
        let (base, end) = (
            usize::from(self.base),
            usize::from(self.base) + usize::from(self.count),
        );
        port >= base && port.checked_add(width).is_some_and(|e| e <= end)
    }
}

//! Device access for user-space drivers: the device-control capability
//! (the root task's right to claim hardware), interrupt handlers (one per
//! line, delivering the line as a notification signal) and x86 I/O-port
//! ranges. Device memory is a `MemoryObject` with physical, uncached
//! backing (`mm::object`).
//!
//! An interrupt handler's capabilities share an [`IrqRef`]; when the last
//! goes, the line is queued as an orphan and the kernel masks it and frees
//! it for another driver (so killing a driver releases its lines).

use super::{NotificationRef, Orphan};
use crate::mm::kref::KArc;

/// The right to claim interrupt lines, I/O ports and device memory.
pub struct DeviceControl;

/// Names the handler of an interrupt line: the line, and the serial
/// number that tells it from a later handler of the same line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqId {
    /// The line.
    pub line: u32,
    /// The handler's serial number.
    pub serial: u64,
}

impl From<IrqId> for Orphan {
    fn from(id: IrqId) -> Orphan {
        Orphan::Irq(id.line, id.serial)
    }
}

/// A capability's reference to the handler of one interrupt line
/// (uncharged: [`super::TableRef`] with no pool).
pub type IrqRef = super::TableRef<IrqId>;

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
        let base = usize::from(self.base);
        let end = base + usize::from(self.count);
        port >= base && port.checked_add(width).is_some_and(|e| e <= end)
    }
}

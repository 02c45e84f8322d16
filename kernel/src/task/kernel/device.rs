//! Interrupt lines and device ranges in the kernel: which line has which
//! handler, delivering a line that fired to its notification, and the
//! physical ranges no driver may map. Hand-written, portable, host-tested.
//!
//! Invariants: `irqs[line]` is `Some` iff a live handler capability names
//! `line` with that binding's serial; a line without a binding is masked;
//! a line with one is masked from when it fires until its handler is
//! acknowledged.

use super::Kernel;
use crate::mm::kref::ensure;
use crate::object::device::IrqBinding;
use alloc::vec::Vec;
use keel_abi::Error;

/// Interrupt lines and device limits.
#[derive(Default)]
pub struct Devices {
    irqs: Vec<Option<IrqBinding>>,
    serial: u64,
    /// Physical ranges `(start, end)` drivers may not map: RAM and the
    /// interrupt controller.
    forbidden: Vec<(u64, u64)>,
}

impl Kernel {
    /// Records the physical ranges drivers may not map.
    pub fn set_forbidden(&mut self, ranges: Vec<(u64, u64)>) {
        self.devices.forbidden = ranges;
    }

    /// Whether a driver may map `[start, start + len)`.
    pub fn device_range_ok(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let forbidden = &self.devices.forbidden;
        len > 0 && !forbidden.iter().any(|&(s, e)| start < e && s < end)
    }

    /// Checks that `line` may get a handler (`InvalidArgument`: no such
    /// line for user space; `AlreadyExists`: it has one) and makes room
    /// for it; returns the new handler's serial.
    pub fn irq_reserve(&mut self, line: u32) -> Result<u64, Error> {
        ensure(crate::arch::irq_line_ok(line), Error::InvalidArgument)?;
        let (i, irqs) = (line as usize, &mut self.devices.irqs);
        let taken = irqs.get(i).is_some_and(Option::is_some);
        ensure(!taken, Error::AlreadyExists)?;
        let more = (i + 1).saturating_sub(irqs.len());
        irqs.try_reserve(more).map_err(|_| Error::OutOfMemory)?;
        irqs.resize_with(irqs.len() + more, || None);
        self.devices.serial += 1;
        Ok(self.devices.serial)
    }

    /// Binds reserved `line` ([`Self::irq_reserve`]) and unmasks it.
    pub fn irq_bind(&mut self, line: u32, binding: IrqBinding) {
        if let Some(b) = self.devices.irqs.get_mut(line as usize) {
            *b = Some(binding);
            crate::arch::irq_mask(line, false);
        }
    }

    /// The handler `serial` of `line` is done with the device: unmask it
    /// (`InvalidState` if the handler is gone).
    pub fn irq_ack(&mut self, line: u32, serial: u64) -> Result<(), Error> {
        match self.devices.irqs.get(line as usize) {
            Some(Some(b)) if b.serial == serial => {
                crate::arch::irq_mask(line, false);
                Ok(())
            }
            _ => Err(Error::InvalidState),
        }
    }

    /// The handler `serial` of `line` is gone: mask the line and free it.
    pub(super) fn irq_release(&mut self, line: u32, serial: u64) {
        if let Some(b) = self.devices.irqs.get_mut(line as usize)
            && b.as_ref().is_some_and(|b| b.serial == serial)
        {
            *b = None;
            crate::arch::irq_mask(line, true);
        }
    }

    /// `line` fired (the architecture masked it): signal its handler's
    /// notification; a line without one stays masked.
    pub fn irq_fired(&mut self, line: u32) {
        let binding = self
            .devices
            .irqs
            .get(line as usize)
            .and_then(Option::as_ref);
        match binding.map(|b| (b.notification.id(), b.bits)) {
            Some((n, bits)) => {
                let _ = self.signal(n, bits);
            }
            None => kprintln!("keel: interrupt line {line} has no handler; masked"),
        }
    }

    /// Whether a handler waits for an interrupt (the run must idle, not
    /// end, while it does).
    pub(super) fn has_irq_handlers(&self) -> bool {
        self.devices.irqs.iter().any(Option::is_some)
    }
}

//! Device access for user-space drivers: typed wrappers of the interrupt,
//! I/O-port and device-memory system calls (`IrqHandlerCreate` …
//! `MemFromDevice`).
//!
//! Every call that claims hardware takes the device-control capability
//! (`RootInfo::device_control`, or a child of it) and needs `WRITE` on it.
//!
//! - Interrupts: [`irq_handler_create`] binds a line (x86 GSI, GIC INTID,
//!   PLIC source) to a notification. Each time the line fires the kernel
//!   masks it and signals the notification with that capability's badge
//!   (1 if it has none); the driver waits with [`crate::ipc::wait`], serves
//!   the device, then unmasks the line with [`irq_ack`]. Deleting the
//!   handler's last capability (or the capability space holding it) masks
//!   the line and frees it for another driver.
//! - I/O ports (x86 only, `NotSupported` elsewhere): [`io_port_create`]
//!   claims a range, [`io_port_in`]/[`io_port_out`] access 1, 2 or 4 bytes
//!   inside it.
//! - Device memory: [`mem_from_device`] names physical registers as a
//!   memory object, which [`crate::syscall::map`] maps uncached. RAM and
//!   the kernel's interrupt controller are refused.
//!
//! Invariant: as in [`crate::syscall`], every result is decoded with
//! [`crate::syscall::decode`]; none of these calls touches user memory.

use crate::syscall::{SysResult, syscall1, syscall3, syscall4};
use keel_abi::cap::CapToken;
use keel_abi::{Error, Syscall};

fn tok(t: CapToken) -> usize {
    t.raw() as usize
}

fn token(v: usize) -> CapToken {
    CapToken::from_raw(v as u64)
}

/// A handler capability for interrupt line `line`, signalling
/// `notification` (which needs `WRITE`) each time the line fires.
/// `InvalidArgument` for a line user space cannot have (0, the timer's,
/// one the controller does not have), `AlreadyExists` if the line has a
/// handler.
pub fn irq_handler_create(
    device_control: CapToken,
    line: usize,
    notification: CapToken,
) -> Result<CapToken, Error> {
    // SAFETY: device calls do not touch user memory.
    unsafe {
        syscall3(
            Syscall::IrqHandlerCreate as usize,
            tok(device_control),
            line,
            tok(notification),
        )
    }
    .map(token)
}

/// The device behind `handler`'s line was served: unmask the line so it
/// can fire again.
pub fn irq_ack(handler: CapToken) -> Result<(), Error> {
    // SAFETY: device calls do not touch user memory.
    unsafe { syscall1(Syscall::IrqAck as usize, tok(handler)) }.map(|_| ())
}

/// A capability to the x86 I/O ports `[base, base + count)`.
/// `NotSupported` on architectures without I/O ports; `InvalidArgument`
/// for an empty range, one past port 0xffff, or one overlapping ports the
/// kernel drives.
pub fn io_port_create(
    device_control: CapToken,
    base: usize,
    count: usize,
) -> Result<CapToken, Error> {
    // SAFETY: device calls do not touch user memory.
    unsafe {
        syscall3(
            Syscall::IoPortCreate as usize,
            tok(device_control),
            base,
            count,
        )
    }
    .map(token)
}

/// Reads `width` (1, 2 or 4) bytes from I/O port `port` of `ports`
/// (`READ`); `InvalidArgument` outside the range or for another width.
pub fn io_port_in(ports: CapToken, port: usize, width: usize) -> SysResult {
    // SAFETY: a port read does not touch user memory.
    unsafe { syscall3(Syscall::IoPortIn as usize, tok(ports), port, width) }
}

/// Writes `width` (1, 2 or 4) bytes of `value` to I/O port `port` of
/// `ports` (`WRITE`).
pub fn io_port_out(ports: CapToken, port: usize, width: usize, value: u32) -> Result<(), Error> {
    // SAFETY: a port write does not touch user memory.
    unsafe {
        syscall4(
            Syscall::IoPortOut as usize,
            tok(ports),
            port,
            width,
            value as usize,
        )
    }
    .map(|_| ())
}

/// A memory object naming `pages` pages of device registers at physical
/// `phys` (page-aligned), mapped uncached. `InvalidArgument` for an
/// unaligned or empty range or one that overlaps RAM or the interrupt
/// controller.
pub fn mem_from_device(
    device_control: CapToken,
    phys: usize,
    pages: usize,
) -> Result<CapToken, Error> {
    // SAFETY: device calls do not touch user memory.
    unsafe {
        syscall3(
            Syscall::MemFromDevice as usize,
            tok(device_control),
            phys,
            pages,
        )
    }
    .map(token)
}

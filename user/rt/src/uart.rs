//! A small user-space driver for the console UART: a 16550 (x86 I/O
//! ports, or memory-mapped byte registers) or an Arm PL011.
//!
//! The register logic ([`Uart`]) is generic over [`Registers`], so the
//! host tests drive it against simulated devices; on Keel, [`Uart::open`]
//! claims the real registers with the device-control capability (I/O
//! ports on x86, a [`crate::device::mem_from_device`] mapping elsewhere).
//!
//! The driver never takes the interrupt line itself: a driver binds
//! `RootInfo::console_irq` with [`crate::device::irq_handler_create`],
//! calls [`Uart::enable_rx_interrupts`], and on each signal reads with
//! [`Uart::read_available`], then [`Uart::clear_rx_interrupt`] and
//! [`crate::device::irq_ack`]. The kernel keeps writing its own output to
//! the same UART, polled; both only wait for room in the transmitter.
//!
//! Invariants: every wait for the device is bounded ([`MAX_SPINS`]), so a
//! missing or wedged UART slows a driver down but never hangs it; dropping
//! a [`Uart`] turns its interrupts off (and, on Keel, releases the
//! registers).

use keel_abi::Error;

/// The two register layouts Keel's consoles use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A 16550: byte registers at consecutive offsets.
    Ns16550,
    /// An Arm PL011: 32-bit registers.
    Pl011,
}

/// Register access for one UART: `offset` is the register's byte offset
/// (16550 registers are one byte wide; PL011 registers 32 bits).
pub trait Registers {
    /// Reads the register at `offset`.
    fn read(&mut self, offset: usize) -> Result<u32, Error>;
    /// Writes `value` to the register at `offset`.
    fn write(&mut self, offset: usize, value: u32) -> Result<(), Error>;
}

/// 16550 registers and bits.
mod ns {
    pub const RBR_THR: usize = 0;
    pub const IER: usize = 1;
    pub const MCR: usize = 4;
    pub const LSR: usize = 5;
    /// IER: received-data-available (and character timeout) interrupt.
    pub const IER_RX: u32 = 1 << 0;
    /// MCR: OUT2, which gates the interrupt output on PC-style boards.
    pub const MCR_OUT2: u32 = 1 << 3;
    /// MCR: loopback (the transmitter feeds the receiver).
    pub const MCR_LOOP: u32 = 1 << 4;
    /// LSR: data ready.
    pub const LSR_DR: u32 = 1 << 0;
    /// LSR: transmit holding register empty.
    pub const LSR_THRE: u32 = 1 << 5;
}

/// PL011 registers and bits.
mod pl {
    pub const DR: usize = 0x00;
    pub const FR: usize = 0x18;
    pub const IMSC: usize = 0x38;
    pub const ICR: usize = 0x44;
    /// FR: receive FIFO empty.
    pub const FR_RXFE: u32 = 1 << 4;
    /// FR: transmit FIFO full.
    pub const FR_TXFF: u32 = 1 << 5;
    /// IMSC/ICR: receive and receive-timeout interrupts.
    pub const RX: u32 = (1 << 4) | (1 << 6);
}

/// Polls of the transmitter's status before a byte is written anyway.
pub const MAX_SPINS: usize = 10_000;

/// A console UART behind registers `R`.
pub struct Uart<R: Registers> {
    regs: R,
    kind: Kind,
}

impl<R: Registers> Uart<R> {
    /// A driver for a UART of `kind` at `regs`; touches no register.
    pub fn new(kind: Kind, regs: R) -> Self {
        Uart { regs, kind }
    }

    /// The register layout.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The registers (for device-specific access and tests).
    pub fn registers(&mut self) -> &mut R {
        &mut self.regs
    }

    fn update(&mut self, offset: usize, set: u32, clear: u32) -> Result<(), Error> {
        let v = self.regs.read(offset)?;
        self.regs.write(offset, (v & !clear) | set)
    }

    /// Makes received data raise the UART's interrupt (16550: IER receive
    /// bit and MCR OUT2; PL011: receive and receive-timeout bits of IMSC,
    /// after clearing any stale one).
    pub fn enable_rx_interrupts(&mut self) -> Result<(), Error> {
        match self.kind {
            Kind::Ns16550 => {
                self.update(ns::MCR, ns::MCR_OUT2, 0)?;
                self.update(ns::IER, ns::IER_RX, 0)
            }
            Kind::Pl011 => {
                self.regs.write(pl::ICR, pl::RX)?;
                self.update(pl::IMSC, pl::RX, 0)
            }
        }
    }

    /// Turns the UART's interrupts off (16550: IER cleared, OUT2 off;
    /// PL011: the receive bits of IMSC).
    pub fn disable_interrupts(&mut self) -> Result<(), Error> {
        match self.kind {
            Kind::Ns16550 => {
                self.regs.write(ns::IER, 0)?;
                self.update(ns::MCR, 0, ns::MCR_OUT2)
            }
            Kind::Pl011 => self.update(pl::IMSC, 0, pl::RX),
        }
    }

    /// Whether a received byte is waiting.
    pub fn rx_ready(&mut self) -> Result<bool, Error> {
        Ok(match self.kind {
            Kind::Ns16550 => self.regs.read(ns::LSR)? & ns::LSR_DR != 0,
            Kind::Pl011 => self.regs.read(pl::FR)? & pl::FR_RXFE == 0,
        })
    }

    /// Reads received bytes into `buf` until the receiver is empty or
    /// `buf` is full; returns how many. Reading the data register is what
    /// clears a 16550's receive interrupt.
    pub fn read_available(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let data = match self.kind {
            Kind::Ns16550 => ns::RBR_THR,
            Kind::Pl011 => pl::DR,
        };
        let mut n = 0;
        while n < buf.len() && self.rx_ready()? {
            buf[n] = self.regs.read(data)? as u8;
            n += 1;
        }
        Ok(n)
    }

    /// Clears the receive interrupt (PL011: ICR; a 16550's clears itself
    /// when its data has been read).
    pub fn clear_rx_interrupt(&mut self) -> Result<(), Error> {
        match self.kind {
            Kind::Ns16550 => Ok(()),
            Kind::Pl011 => self.regs.write(pl::ICR, pl::RX),
        }
    }

    /// Sends one byte once the transmitter has room (waiting at most
    /// [`MAX_SPINS`] polls, then sending anyway).
    pub fn write_byte(&mut self, byte: u8) -> Result<(), Error> {
        let (status, ready, want, data) = match self.kind {
            Kind::Ns16550 => (ns::LSR, ns::LSR_THRE, ns::LSR_THRE, ns::RBR_THR),
            Kind::Pl011 => (pl::FR, pl::FR_TXFF, 0, pl::DR),
        };
        for _ in 0..MAX_SPINS {
            if self.regs.read(status)? & ready == want {
                break;
            }
            core::hint::spin_loop();
        }
        self.regs.write(data, u32::from(byte))
    }

    /// Sends `bytes` with [`Self::write_byte`].
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        bytes.iter().try_for_each(|&b| self.write_byte(b))
    }

    /// Turns the 16550's loopback on or off: while on, transmitted bytes
    /// are received instead of sent (and so is the kernel's output).
    /// `NotSupported` on a PL011.
    pub fn set_loopback(&mut self, on: bool) -> Result<(), Error> {
        match (self.kind, on) {
            (Kind::Ns16550, true) => self.update(ns::MCR, ns::MCR_LOOP, 0),
            (Kind::Ns16550, false) => self.update(ns::MCR, 0, ns::MCR_LOOP),
            (Kind::Pl011, _) => Err(Error::NotSupported),
        }
    }

    /// Turns interrupts off and releases the UART (see [`Drop`]),
    /// reporting whether the device took the last writes.
    pub fn close(mut self) -> Result<(), Error> {
        self.disable_interrupts()
    }
}

impl<R: Registers> Drop for Uart<R> {
    fn drop(&mut self) {
        let _ = self.disable_interrupts();
    }
}

#[cfg(target_os = "none")]
pub use self::keel::{Hw, console_line};

/// The registers of a real UART, claimed from the kernel.
#[cfg(target_os = "none")]
mod keel {
    use super::{Kind, Registers, Uart};
    use crate::device::{io_port_create, io_port_in, io_port_out, mem_from_device};
    use crate::syscall::{cap_delete, map, unmap};
    use keel_abi::Error;
    use keel_abi::boot::{
        CONSOLE_NS16550_MMIO, CONSOLE_NS16550_PORT, CONSOLE_PL011, NO_LINE, RootInfo,
    };
    use keel_abi::cap::CapToken;
    use keel_abi::syscall::PROT_WRITE;

    const PAGE: usize = 4096;

    /// How the registers are reached.
    enum Access {
        /// x86 I/O ports from `base`, through an I/O-port capability.
        Ports(u16),
        /// Memory-mapped byte registers at this address.
        Bytes(usize),
        /// Memory-mapped 32-bit registers at this address.
        Words(usize),
    }

    /// A claimed UART: an I/O-port range, or one uncached page of device
    /// memory mapped in the caller's address space. Dropping it unmaps
    /// the page and deletes the capability.
    pub struct Hw {
        access: Access,
        /// The I/O-port or memory-object capability.
        cap: CapToken,
        aspace: CapToken,
        /// The mapped page (0 for I/O ports).
        va: usize,
    }

    impl Registers for Hw {
        fn read(&mut self, offset: usize) -> Result<u32, Error> {
            match self.access {
                Access::Ports(base) => {
                    io_port_in(self.cap, usize::from(base) + offset, 1).map(|v| v as u32)
                }
                Access::Bytes(addr) => {
                    // SAFETY: `addr` is the start of the registers in the
                    // page this `Hw` mapped (and unmaps only when dropped);
                    // the drivers only use offsets of registers inside it.
                    let v = unsafe { ((addr + offset) as *const u8).read_volatile() };
                    Ok(u32::from(v))
                }
                Access::Words(addr) => {
                    // SAFETY: as above; PL011 offsets are 4-aligned.
                    let v = unsafe { ((addr + offset) as *const u32).read_volatile() };
                    Ok(v)
                }
            }
        }

        fn write(&mut self, offset: usize, value: u32) -> Result<(), Error> {
            match self.access {
                Access::Ports(base) => io_port_out(self.cap, usize::from(base) + offset, 1, value),
                Access::Bytes(addr) => {
                    // SAFETY: as in `read`; the page is mapped writable.
                    unsafe { ((addr + offset) as *mut u8).write_volatile(value as u8) };
                    Ok(())
                }
                Access::Words(addr) => {
                    // SAFETY: as in `read`; the page is mapped writable.
                    unsafe { ((addr + offset) as *mut u32).write_volatile(value) };
                    Ok(())
                }
            }
        }
    }

    impl Drop for Hw {
        fn drop(&mut self) {
            if self.va != 0 {
                // SAFETY: the page is this `Hw`'s own mapping, which
                // nothing uses once it is dropped.
                let _ = unsafe { unmap(self.aspace, self.va, 1) };
            }
            let _ = cap_delete(self.cap);
        }
    }

    /// The console's interrupt line, if the kernel named one.
    pub fn console_line(info: &RootInfo) -> Option<usize> {
        (info.console_irq != NO_LINE).then_some(info.console_irq as usize)
    }

    impl Uart<Hw> {
        /// Claims the console UART that `info` describes with
        /// `device_control`: its I/O ports (x86), or its register page,
        /// mapped at the free page-aligned address `va` of `info`'s
        /// address space. Interrupts stay as they were.
        /// `NotSupported` for a console kind this driver does not know.
        pub fn open(info: &RootInfo, device_control: CapToken, va: usize) -> Result<Self, Error> {
            let base = usize::try_from(info.console_base).map_err(|_| Error::InvalidArgument)?;
            let aspace = CapToken::from_raw(info.aspace);
            let kind = usize::try_from(info.console_kind).map_err(|_| Error::NotSupported)?;
            if kind == CONSOLE_NS16550_PORT {
                let port = u16::try_from(base).map_err(|_| Error::InvalidArgument)?;
                let cap = io_port_create(device_control, base, 8)?;
                let hw = Hw {
                    access: Access::Ports(port),
                    cap,
                    aspace,
                    va: 0,
                };
                return Ok(Uart::new(Kind::Ns16550, hw));
            }
            let (kind, wide) = match kind {
                CONSOLE_NS16550_MMIO => (Kind::Ns16550, false),
                CONSOLE_PL011 => (Kind::Pl011, true),
                _ => return Err(Error::NotSupported),
            };
            if !va.is_multiple_of(PAGE) {
                return Err(Error::InvalidArgument);
            }
            let cap = mem_from_device(device_control, base & !(PAGE - 1), 1)?;
            if let Err(e) = map(aspace, cap, va, 0, 1, PROT_WRITE) {
                let _ = cap_delete(cap);
                return Err(e);
            }
            let regs = va + base % PAGE;
            let access = if wide {
                Access::Words(regs)
            } else {
                Access::Bytes(regs)
            };
            Ok(Uart::new(
                kind,
                Hw {
                    access,
                    cap,
                    aspace,
                    va,
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A simulated UART: a register file, a receive queue (loopback and
    /// "wire" input) and what was transmitted.
    struct Sim {
        kind: Kind,
        regs: [u32; 0x48],
        rx: VecDeque<u8>,
        tx: Vec<u8>,
        /// Status polls the transmitter stays busy for.
        busy: usize,
        /// Bytes written while it was busy.
        overruns: usize,
    }

    impl Sim {
        fn new(kind: Kind) -> Sim {
            Sim {
                kind,
                regs: [0; 0x48],
                rx: VecDeque::new(),
                tx: Vec::new(),
                busy: 0,
                overruns: 0,
            }
        }
    }

    impl Registers for Sim {
        fn read(&mut self, offset: usize) -> Result<u32, Error> {
            let busy = self.busy > 0;
            self.busy = self.busy.saturating_sub(1);
            Ok(match (self.kind, offset) {
                (Kind::Ns16550, ns::RBR_THR) | (Kind::Pl011, pl::DR) => {
                    self.rx.pop_front().map_or(0, u32::from)
                }
                (Kind::Ns16550, ns::LSR) => {
                    u32::from(!self.rx.is_empty()) | if busy { 0 } else { ns::LSR_THRE }
                }
                (Kind::Pl011, pl::FR) => {
                    (if self.rx.is_empty() { pl::FR_RXFE } else { 0 })
                        | if busy { pl::FR_TXFF } else { 0 }
                }
                (_, o) => *self.regs.get(o).ok_or(Error::InvalidArgument)?,
            })
        }

        fn write(&mut self, offset: usize, value: u32) -> Result<(), Error> {
            match (self.kind, offset) {
                (Kind::Ns16550, ns::RBR_THR) | (Kind::Pl011, pl::DR) => {
                    self.overruns += usize::from(self.busy > 0);
                    let loopback =
                        self.kind == Kind::Ns16550 && self.regs[ns::MCR] & ns::MCR_LOOP != 0;
                    if loopback {
                        self.rx.push_back(value as u8);
                    } else {
                        self.tx.push(value as u8);
                    }
                }
                (_, o) => *self.regs.get_mut(o).ok_or(Error::InvalidArgument)? = value,
            }
            Ok(())
        }
    }

    #[test]
    fn ns16550_interrupts_loopback_and_teardown() {
        let mut u = Uart::new(Kind::Ns16550, Sim::new(Kind::Ns16550));
        u.registers().regs[ns::MCR] = 0x03;
        u.enable_rx_interrupts().unwrap();
        assert_eq!(u.registers().regs[ns::IER], ns::IER_RX);
        assert_eq!(u.registers().regs[ns::MCR], 0x0b, "DTR and RTS kept");
        u.set_loopback(true).unwrap();
        u.write_bytes(b"hi").unwrap();
        assert!(u.registers().tx.is_empty());
        let mut buf = [0; 1];
        assert_eq!(u.read_available(&mut buf).unwrap(), 1, "bounded by buf");
        assert_eq!(&buf, b"h");
        let mut buf = [0; 8];
        assert_eq!(u.read_available(&mut buf).unwrap(), 1);
        assert_eq!(&buf[..1], b"i");
        assert_eq!(u.read_available(&mut buf).unwrap(), 0);
        u.set_loopback(false).unwrap();
        u.write_byte(b'x').unwrap();
        assert_eq!(u.registers().tx, b"x");
        u.clear_rx_interrupt().unwrap();
        u.disable_interrupts().unwrap();
        assert_eq!(u.registers().regs[ns::IER], 0);
        assert_eq!(u.registers().regs[ns::MCR], 0x03);
    }

    #[test]
    fn pl011_interrupts_and_fifo() {
        let mut u = Uart::new(Kind::Pl011, Sim::new(Kind::Pl011));
        u.enable_rx_interrupts().unwrap();
        assert_eq!(u.registers().regs[pl::IMSC], pl::RX);
        assert_eq!(
            u.registers().regs[pl::ICR],
            pl::RX,
            "stale interrupt cleared"
        );
        u.registers().regs[pl::ICR] = 0;
        u.registers().rx.extend(b"abc");
        assert!(u.rx_ready().unwrap());
        let mut buf = [0; 8];
        assert_eq!(u.read_available(&mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        u.clear_rx_interrupt().unwrap();
        assert_eq!(u.registers().regs[pl::ICR], pl::RX);
        assert_eq!(u.set_loopback(true), Err(Error::NotSupported));
        u.registers().busy = 5;
        u.write_bytes(b"ok").unwrap();
        assert_eq!(u.registers().tx, b"ok");
        assert_eq!(u.registers().overruns, 0, "waited for room");
        u.registers().regs[pl::IMSC] |= 1;
        u.disable_interrupts().unwrap();
        assert_eq!(
            u.registers().regs[pl::IMSC],
            1,
            "other interrupts untouched"
        );
    }

    #[test]
    fn a_wedged_transmitter_does_not_hang() {
        let mut u = Uart::new(Kind::Ns16550, Sim::new(Kind::Ns16550));
        u.registers().busy = usize::MAX;
        u.write_byte(b'z').unwrap();
        assert_eq!(u.registers().tx, b"z");
        assert_eq!(u.registers().overruns, 1);
    }
}

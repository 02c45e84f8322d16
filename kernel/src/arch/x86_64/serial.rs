//! The boot console: the COM1 16550 UART at I/O port 0x3f8, polled.
//!
//! Set up once by [`init`] (115200 baud, 8N1, FIFOs on, interrupts off).
//! [`write`] waits, boundedly, for the transmit holding register before each
//! byte, so a missing or wedged UART slows output down but never hangs the
//! kernel. `\n` goes out as `\r\n` for terminals in raw mode.

use x86_64::instructions::port::Port;

pub(super) const COM1: u16 = 0x3f8;
/// Line status register bit: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Polls of the line status register before giving up on one byte.
const MAX_SPINS: u32 = 100_000;

/// Programs the UART. Harmless to call again.
pub fn init() {
    let regs: [(u16, u8); 7] = [
        (1, 0x00), // IER: no interrupts
        (3, 0x80), // LCR: DLAB on to reach the divisor
        (0, 0x01), // DLL: divisor 1 = 115200 baud
        (1, 0x00), // DLM
        (3, 0x03), // LCR: 8 data bits, no parity, 1 stop bit, DLAB off
        (2, 0xc7), // FCR: enable and clear FIFOs, 14-byte threshold
        (4, 0x03), // MCR: DTR, RTS (OUT2 off: no IRQ line)
    ];
    for (reg, value) in regs {
        // SAFETY: these ports belong to COM1, which only the console
        // drives; writes to them do not touch memory.
        unsafe { Port::<u8>::new(COM1 + reg).write(value) };
    }
}

/// Sends one byte, waiting (boundedly) for the transmitter to be empty.
pub(super) fn put(byte: u8) {
    let mut lsr = Port::<u8>::new(COM1 + 5);
    for _ in 0..MAX_SPINS {
        // SAFETY: reading COM1's line status register has no side effect.
        if unsafe { lsr.read() } & LSR_THRE != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    // SAFETY: writing COM1's transmit register sends one byte.
    unsafe { Port::<u8>::new(COM1).write(byte) };
}

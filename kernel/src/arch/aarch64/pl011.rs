//! Polled output on the PL011 UART of QEMU `virt` (physical 0x0900_0000),
//! reached through the direct map; usable only once the MMU is on, which is
//! before any Rust code runs.
//!
//! The UART is used as the firmware (or QEMU) left it: enabled, 8N1; the
//! kernel only waits for room in the transmit FIFO and writes bytes.
//! Writes from several CPUs are serialised by the console lock above.

use super::phys_to_virt;

/// Physical base of the PL011 on QEMU `virt`.
pub(super) const PL011_PHYS: u64 = 0x0900_0000;
/// Data register.
const UARTDR: usize = 0x00;
/// Flag register.
const UARTFR: usize = 0x18;
/// UARTFR.TXFF: the transmit FIFO is full.
const FR_TXFF: u32 = 1 << 5;

/// Sends one byte, waiting for room in the transmit FIFO.
pub(super) fn put(byte: u8) {
    let base = phys_to_virt(PL011_PHYS);
    // SAFETY: the direct map covers GiB 0 as Device-nGnRE memory, where the
    // PL011's registers sit; reading UARTFR and writing UARTDR have no
    // effect besides transmitting.
    unsafe {
        while core::ptr::read_volatile((base + UARTFR) as *const u32) & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        core::ptr::write_volatile((base + UARTDR) as *mut u32, u32::from(byte));
    }
}

//! System-call numbers.
//!
//! Numbers are grouped in blocks of 16 by subsystem so each subsystem can
//! grow without renumbering the others. A number not listed here is
//! answered with [`crate::Error::NoSuchSyscall`].
//!
//! | block | subsystem |
//! |---|---|
//! | 0x00–0x0f | debug and system information |
//! | 0x10–0x1f | capabilities |
//! | 0x20–0x2f | threads and scheduling |
//! | 0x30–0x3f | address spaces and memory objects |
//! | 0x40–0x4f | IPC: endpoints and notifications (reserved) |
//! | 0x50–0x5f | processes (reserved) |
//! | 0x60–0x6f | interrupts and time (reserved) |

/// A system call, identified by the number user space puts in the
/// architecture's syscall-number register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
#[non_exhaustive]
pub enum Syscall {
    /// Write bytes to the kernel debug console.
    DebugWrite = 0x00,
    /// Read a system-information value (CPU count, memory statistics, time).
    SystemInfo = 0x01,
}

impl Syscall {
    /// Every assigned system call.
    pub const ALL: [Syscall; 2] = [Syscall::DebugWrite, Syscall::SystemInfo];
}

impl TryFrom<usize> for Syscall {
    type Error = crate::Error;

    fn try_from(number: usize) -> Result<Self, Self::Error> {
        Syscall::ALL
            .iter()
            .copied()
            .find(|s| *s as usize == number)
            .ok_or(crate::Error::NoSuchSyscall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_convert_back() {
        for s in Syscall::ALL {
            assert_eq!(Syscall::try_from(s as usize), Ok(s));
        }
        assert_eq!(Syscall::try_from(0xffff), Err(crate::Error::NoSuchSyscall));
    }
}

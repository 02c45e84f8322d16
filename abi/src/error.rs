//! System-call error codes.
//!
//! A system call returns a non-negative value on success and `-(code)` on
//! failure, where `code` is one of [`Error`]'s discriminants.

/// Why a system call failed. Values are stable ABI (see `docs/abi.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Error {
    /// The system-call number is not assigned.
    NoSuchSyscall = 1,
    /// An argument is out of range or malformed.
    InvalidArgument = 2,
    /// The capability token does not name a live capability (stale, forged,
    /// revoked or empty slot).
    InvalidCapability = 3,
    /// The capability names an object of the wrong type for this call.
    WrongObjectType = 4,
    /// The capability lacks a right this call requires.
    AccessDenied = 5,
    /// A user pointer or range is not mapped with the rights needed.
    BadAddress = 6,
    /// The kernel could not allocate memory for this request, or the
    /// caller's quota is exhausted.
    OutOfMemory = 7,
    /// The target slot, range or object is already in use.
    AlreadyExists = 8,
    /// The operation would block and a non-blocking variant was asked for.
    WouldBlock = 9,
    /// The object is in a state that does not allow the operation.
    InvalidState = 10,
    /// The operation is recognised but not supported on this machine.
    NotSupported = 11,
    /// The other side of an IPC went away: the server died (or took
    /// another call) before replying, the caller waiting for a reply is
    /// gone, or the endpoint or notification was destroyed.
    Disconnected = 12,
    /// The deadline of a blocking call passed before it could complete.
    TimedOut = 13,
}

impl Error {
    /// All error codes, in numeric order.
    pub const ALL: [Error; 13] = [
        Error::NoSuchSyscall,
        Error::InvalidArgument,
        Error::InvalidCapability,
        Error::WrongObjectType,
        Error::AccessDenied,
        Error::BadAddress,
        Error::OutOfMemory,
        Error::AlreadyExists,
        Error::WouldBlock,
        Error::InvalidState,
        Error::NotSupported,
        Error::Disconnected,
        Error::TimedOut,
    ];

    /// The value a failing system call returns in its result register.
    pub const fn to_return_value(self) -> isize {
        -(self as isize)
    }

    /// Decodes a system-call return value: `Ok(v)` for `v >= 0`, the error
    /// for a known negative code, `None` for an unknown negative code.
    pub fn from_return_value(value: isize) -> Option<Result<usize, Error>> {
        if value >= 0 {
            return Some(Ok(value as usize));
        }
        let code = value.unsigned_abs();
        Error::ALL
            .iter()
            .find(|e| **e as usize == code)
            .map(|e| Err(*e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_round_trip() {
        for e in Error::ALL {
            assert_eq!(Error::from_return_value(e.to_return_value()), Some(Err(e)));
        }
        assert_eq!(Error::from_return_value(0), Some(Ok(0)));
        assert_eq!(Error::from_return_value(42), Some(Ok(42)));
        assert_eq!(Error::from_return_value(-1000), None);
    }

    #[test]
    fn codes_are_dense_and_ordered() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i + 1);
        }
    }
}

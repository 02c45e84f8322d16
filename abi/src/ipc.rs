//! IPC: the message-info word, the per-thread IPC buffer, fault messages.
//!
//! Register convention of the message calls (`Send`, `Recv`, `Call`,
//! `Reply`, `ReplyRecv`), in the system-call argument registers:
//!
//! | register | on entry | on return (received message) |
//! |---|---|---|
//! | result (`rax`, `x0`, `a0`) | — | [`MsgInfo`] (≥ 0) or `-error` |
//! | argument 0 | endpoint capability | (the result, on AArch64/RISC-V) |
//! | argument 1 | [`MsgInfo`] | badge of the sender's capability |
//! | arguments 2–5 | message words 0–3 | message words 0–3 |
//!
//! Words 4 and up travel in the thread's IPC buffer ([`IpcBuffer`], set by
//! `ThreadSetIpcBuffer`), at the same index; so do the capabilities sent
//! (`caps`) and received (`received`). On x86_64 the result is `rax` and
//! argument 0 is `rdi`, which the kernel leaves as it was.

/// Message words carried in registers.
pub const REGISTER_WORDS: usize = 4;
/// Most words in one message (registers plus IPC buffer).
pub const MAX_WORDS: usize = 504;
/// Most capabilities transferred by one message.
pub const MAX_CAPS: usize = 3;

/// Label of a fault message ([`MsgInfo::FAULT`] set): the fault's code
/// (1 page fault, 2 illegal instruction, 3 divide error, 4 breakpoint,
/// 5 misaligned access, 6 other); words: code, address (0 if none), pc.
pub const FAULT_WORDS: usize = 3;
/// Reply label that resumes a faulted thread (it retries the instruction).
pub const FAULT_RESUME: u64 = 0;
/// Reply label that kills a faulted thread's process.
pub const FAULT_KILL: u64 = 1;

/// The message-info word: length, capabilities, flags, label.
///
/// | bits | field |
/// |---|---|
/// | 0–9 | length in words (≤ [`MAX_WORDS`]) |
/// | 10–11 | capabilities transferred (≤ [`MAX_CAPS`]) |
/// | 12 | [`MsgInfo::NONBLOCK`]: fail with `WouldBlock` instead of waiting |
/// | 13 | [`MsgInfo::SLOWPATH`]: skip the fast path (tests) |
/// | 14 | [`MsgInfo::NOTIFICATION`] (received only): a bound notification's bits, in the badge |
/// | 15 | [`MsgInfo::FAULT`] (received only): a fault message |
/// | 16–31 | reserved, zero |
/// | 32–62 | label, free for the protocol (31 bits, so the word is non-negative) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MsgInfo(pub u64);

impl MsgInfo {
    /// Non-blocking send or receive.
    pub const NONBLOCK: u64 = 1 << 12;
    /// Take the general path even where the fast path applies.
    pub const SLOWPATH: u64 = 1 << 13;
    /// Set by the kernel: the message is a notification's bits.
    pub const NOTIFICATION: u64 = 1 << 14;
    /// Set by the kernel: the message describes a fault.
    pub const FAULT: u64 = 1 << 15;
    /// Flags a sender or receiver may set.
    pub const USER_FLAGS: u64 = Self::NONBLOCK | Self::SLOWPATH;
    const LEN_MASK: u64 = 0x3ff;
    const CAPS_SHIFT: u32 = 10;
    const LABEL_SHIFT: u32 = 32;
    /// Largest label.
    pub const MAX_LABEL: u64 = (1 << 31) - 1;

    /// A message of `len` words and `caps` capabilities with `label`
    /// (callers keep them in range; [`MsgInfo::check`] is the kernel's test).
    pub const fn new(label: u64, len: usize, caps: usize) -> MsgInfo {
        MsgInfo(
            ((label & Self::MAX_LABEL) << Self::LABEL_SHIFT)
                | ((caps as u64 & 3) << Self::CAPS_SHIFT)
                | (len as u64 & Self::LEN_MASK),
        )
    }

    /// With `flag` set.
    pub const fn with(self, flag: u64) -> MsgInfo {
        MsgInfo(self.0 | flag)
    }

    /// Words in the message.
    pub const fn len(self) -> usize {
        (self.0 & Self::LEN_MASK) as usize
    }

    /// Whether the message has no words.
    pub const fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Capabilities in the message.
    pub const fn caps(self) -> usize {
        ((self.0 >> Self::CAPS_SHIFT) & 3) as usize
    }

    /// The label.
    pub const fn label(self) -> u64 {
        self.0 >> Self::LABEL_SHIFT
    }

    /// Whether `flag` is set.
    pub const fn has(self, flag: u64) -> bool {
        self.0 & flag != 0
    }

    /// Whether a sender's (or receiver's) word is well formed: length and
    /// capabilities in range, only user flags, label in range.
    pub const fn check(self) -> bool {
        let reserved = !(Self::LEN_MASK | (3 << Self::CAPS_SHIFT) | Self::USER_FLAGS)
            & ((1 << Self::LABEL_SHIFT) - 1);
        self.0 & reserved == 0
            && self.len() <= MAX_WORDS
            && self.caps() <= MAX_CAPS
            && self.label() <= Self::MAX_LABEL
    }
}

/// The IPC buffer: one page per thread, named by `ThreadSetIpcBuffer`.
/// `words[i]` for `i >= REGISTER_WORDS` carries message word `i` (the
/// first ones travel in registers and their entries are unused). The
/// sender lists the capabilities it transfers in `caps`; the kernel writes
/// the receiver's tokens for them into `received`.
#[repr(C)]
pub struct IpcBuffer {
    /// Message words.
    pub words: [u64; MAX_WORDS],
    /// Tokens (in the sender's space) of the capabilities to transfer.
    pub caps: [u64; 4],
    /// Tokens (in the receiver's space) of the capabilities received.
    pub received: [u64; 4],
}

/// Byte offset of [`IpcBuffer::caps`].
pub const CAPS_OFFSET: usize = MAX_WORDS * 8;
/// Byte offset of [`IpcBuffer::received`].
pub const RECEIVED_OFFSET: usize = CAPS_OFFSET + 32;
const _: () = assert!(core::mem::size_of::<IpcBuffer>() == 4096);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_round_trip_and_check() {
        let i = MsgInfo::new(77, 12, 2);
        assert_eq!((i.label(), i.len(), i.caps()), (77, 12, 2));
        assert!(i.check() && i.with(MsgInfo::NONBLOCK).check());
        assert!(
            !MsgInfo(i.0 | MsgInfo::FAULT).check(),
            "kernel flags are refused"
        );
        assert!(!MsgInfo(1 << 20).check(), "reserved bits are refused");
        assert!(!MsgInfo::new(0, MAX_WORDS + 1, 0).check());
        assert!(!MsgInfo::new(0, 0, 3).with(0).check() || MAX_CAPS >= 3);
        assert!(
            !MsgInfo(1 << 63).check(),
            "a label above 31 bits is refused"
        );
        assert!((MsgInfo::new(MsgInfo::MAX_LABEL, MAX_WORDS, 3).0 as i64) >= 0);
    }
}

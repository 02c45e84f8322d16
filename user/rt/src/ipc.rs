//! IPC: typed wrappers of the endpoint, notification, IPC-buffer and
//! fault-handler system calls (0x40–0x4c), and access to a thread's IPC
//! buffer page.
//!
//! The contract these wrappers rely on (`keel_abi::ipc`, `docs/abi.md`):
//!
//! - Registers: on entry argument 0 is the endpoint capability, argument 1
//!   the [`MsgInfo`], arguments 2–5 message words 0–3; on return the
//!   result register holds the received message's [`MsgInfo`] (≥ 0) or
//!   `-error`, argument 1 the badge of the sender's capability, arguments
//!   2–5 words 0–3. [`Message`] is that return, decoded.
//! - Rights: `send`/`call` need `WRITE` on the endpoint (and `GRANT` to
//!   transfer capabilities), `recv` needs `READ`; `signal` needs `WRITE`,
//!   `wait`/`poll` `READ` on the notification.
//! - `call` sends, then blocks for the reply; the receiver holds a
//!   one-shot reply capability implicitly (in its thread), which `reply`
//!   or `reply_recv` uses. `reply` with nothing to answer is
//!   `InvalidState`; with the caller gone, `Disconnected`. `reply_recv`
//!   answers the last call if there is one (a failed reply is ignored),
//!   then receives.
//! - [`MsgInfo::NONBLOCK`]: `WouldBlock` instead of waiting for a partner.
//!   [`MsgInfo::SLOWPATH`]: the kernel's general path even where its fast
//!   path applies (results must be identical).
//! - Words 4 and up, and capabilities, travel in the IPC buffer
//!   ([`Buffer`], one page set with [`thread_set_ipc_buffer`]): word `i`
//!   at `words[i]`, capabilities to send in `caps[..n]`, the receiver's
//!   new tokens in `received[..n]` (with `info.caps() == n`). A message of
//!   more than four words or with capabilities but no buffer, longer than
//!   `MAX_WORDS`, or with reserved bits set is `InvalidArgument` and
//!   changes nothing. Capabilities need `GRANT` on the endpoint and on
//!   each one sent (`AccessDenied`).
//! - A thread blocked in IPC that is killed or suspended, whose partner
//!   dies, or whose endpoint goes, returns an error (`Disconnected`,
//!   `InvalidState`, `InvalidCapability`); it never hangs.
//! - Notifications: `signal` ORs its bits and the capability's badge into
//!   the word; `wait` blocks until it is non-zero, `poll` does not; both
//!   return the word and clear it. A notification bound to a thread
//!   ([`notification_bind`]) makes that thread's `recv` also return its
//!   signals: [`MsgInfo::NOTIFICATION`] set, the bits in the badge.
//! - Faults: a thread with a fault handler ([`thread_set_fault_handler`])
//!   that takes a fault the kernel cannot resolve sends a message on the
//!   handler endpoint: [`MsgInfo::FAULT`], label = fault code, three
//!   words (code, address, pc), badge of the handler capability; it stays
//!   stopped until the handler replies [`FAULT_RESUME`] (retry the
//!   instruction) or [`FAULT_KILL`].
//!
//! Invariant: every wrapper decodes the result register with
//! [`crate::syscall::decode`], so an undefined negative value comes back
//! as `Err(Error::NotSupported)`. The calls only write user memory in the
//! calling thread's registered IPC buffer, whose registration is the one
//! `unsafe` step ([`thread_set_ipc_buffer`]).

use crate::arch;
use crate::syscall::decode;
use keel_abi::cap::CapToken;
use keel_abi::{Error, Syscall};

pub use keel_abi::ipc::{
    FAULT_KILL, FAULT_RESUME, FAULT_WORDS, IpcBuffer, MAX_CAPS, MAX_WORDS, MsgInfo, REGISTER_WORDS,
};

/// A received message: its info word, the badge of the capability it was
/// sent through (or a notification's bits, or a fault handler's badge),
/// and its first [`REGISTER_WORDS`] words (the rest are in the IPC
/// buffer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Message {
    /// Label, length, capabilities and kernel flags.
    pub info: MsgInfo,
    /// The sender capability's badge; the bits of a bound notification
    /// ([`MsgInfo::NOTIFICATION`]).
    pub badge: u64,
    /// Message words 0–3 (only the first `info.len()` are meaningful).
    pub words: [u64; REGISTER_WORDS],
}

impl Message {
    /// Whether the message carries a bound notification's bits.
    pub fn is_notification(&self) -> bool {
        self.info.has(MsgInfo::NOTIFICATION)
    }

    /// Whether the message describes a fault.
    pub fn is_fault(&self) -> bool {
        self.info.has(MsgInfo::FAULT)
    }
}

fn tok(t: CapToken) -> usize {
    t.raw() as usize
}

/// One IPC call: `(cap, info, words)` in, the decoded message out.
fn ipc(
    number: Syscall,
    cap: usize,
    info: u64,
    words: [u64; REGISTER_WORDS],
) -> Result<Message, Error> {
    let args = [
        cap,
        info as usize,
        words[0] as usize,
        words[1] as usize,
        words[2] as usize,
        words[3] as usize,
    ];
    // SAFETY: IPC calls write user memory only in the calling thread's IPC
    // buffer, which `thread_set_ipc_buffer`'s caller gave to the kernel for
    // exactly that; everything else they change is kernel state.
    let (ret, out) = unsafe { arch::raw_ipc(number as usize, args) };
    let info = decode(ret)?;
    Ok(Message {
        info: MsgInfo(info as u64),
        badge: out[0] as u64,
        words: [out[1] as u64, out[2] as u64, out[3] as u64, out[4] as u64],
    })
}

// ---- objects ----

/// A new endpoint charged to `pool` (one page; needs `WRITE` on `pool`).
pub fn endpoint_create(pool: CapToken) -> Result<CapToken, Error> {
    ipc(Syscall::EndpointCreate, tok(pool), 0, [0; 4]).map(|m| CapToken::from_raw(m.info.0))
}

/// A new notification charged to `pool` (one page; needs `WRITE` on
/// `pool`).
pub fn notification_create(pool: CapToken) -> Result<CapToken, Error> {
    ipc(Syscall::NotificationCreate, tok(pool), 0, [0; 4]).map(|m| CapToken::from_raw(m.info.0))
}

// ---- messages ----

/// Sends `info.len()` words (the first four from `words`, the rest from the
/// IPC buffer) and `info.caps()` capabilities (listed in the IPC buffer)
/// on `ep`; blocks until a receiver takes it, unless `info` has
/// [`MsgInfo::NONBLOCK`] (`WouldBlock` when no receiver waits).
pub fn send(ep: CapToken, info: MsgInfo, words: [u64; REGISTER_WORDS]) -> Result<(), Error> {
    ipc(Syscall::Send, tok(ep), info.0, words).map(|_| ())
}

/// Receives a message on `ep`; `flags` may hold [`MsgInfo::NONBLOCK`]
/// and [`MsgInfo::SLOWPATH`]. If the message was sent by `call`, the
/// calling thread now holds its reply capability.
pub fn recv(ep: CapToken, flags: u64) -> Result<Message, Error> {
    ipc(Syscall::Recv, tok(ep), flags, [0; 4])
}

/// Sends like [`send`], then waits for the reply, which is returned.
pub fn call(ep: CapToken, info: MsgInfo, words: [u64; REGISTER_WORDS]) -> Result<Message, Error> {
    ipc(Syscall::Call, tok(ep), info.0, words)
}

/// Answers the last call received (`InvalidState` if there is none,
/// `Disconnected` if its caller is gone); never blocks.
pub fn reply(info: MsgInfo, words: [u64; REGISTER_WORDS]) -> Result<(), Error> {
    ipc(Syscall::Reply, 0, info.0, words).map(|_| ())
}

/// Answers the last call received, if any (a failed reply is ignored),
/// then receives on `ep` like [`recv`] (with `info`'s flags).
pub fn reply_recv(
    ep: CapToken,
    info: MsgInfo,
    words: [u64; REGISTER_WORDS],
) -> Result<Message, Error> {
    ipc(Syscall::ReplyRecv, tok(ep), info.0, words)
}

// ---- notifications ----

/// ORs `bits` and the capability's badge into the notification's word;
/// never blocks.
pub fn signal(ntfn: CapToken, bits: u64) -> Result<(), Error> {
    ipc(Syscall::Signal, tok(ntfn), bits, [0; 4]).map(|_| ())
}

/// Waits until the notification's word is non-zero, then returns and
/// clears it.
pub fn wait(ntfn: CapToken) -> Result<u64, Error> {
    ipc(Syscall::Wait, tok(ntfn), 0, [0; 4]).map(|m| m.info.0)
}

/// Makes the caller's next system call fail with `TimedOut` if it is
/// still blocked in IPC when the monotonic clock reaches `deadline_ns`
/// (0: no deadline).
pub fn ipc_timeout(deadline_ns: u64) -> Result<(), Error> {
    ipc(Syscall::IpcTimeout, deadline_ns as usize, 0, [0; 4]).map(|_| ())
}

/// [`recv`] that gives up with `TimedOut` at `deadline_ns`.
pub fn recv_until(ep: CapToken, flags: u64, deadline_ns: u64) -> Result<Message, Error> {
    ipc_timeout(deadline_ns)?;
    recv(ep, flags)
}

/// [`call`] that gives up with `TimedOut` at `deadline_ns` (sending or
/// waiting for the reply).
pub fn call_until(
    ep: CapToken,
    info: MsgInfo,
    words: [u64; REGISTER_WORDS],
    deadline_ns: u64,
) -> Result<Message, Error> {
    ipc_timeout(deadline_ns)?;
    call(ep, info, words)
}

/// [`wait`] that gives up with `TimedOut` at `deadline_ns`.
pub fn wait_until(ntfn: CapToken, deadline_ns: u64) -> Result<u64, Error> {
    ipc_timeout(deadline_ns)?;
    wait(ntfn)
}

/// Returns and clears the notification's word (0 if nothing was
/// signalled); never blocks.
pub fn poll(ntfn: CapToken) -> Result<u64, Error> {
    ipc(Syscall::Poll, tok(ntfn), 0, [0; 4]).map(|m| m.info.0)
}

/// Binds `ntfn` to `thread` (`CapToken::NULL`: unbinds), so that the
/// thread's `recv` also returns the notification's signals. Needs `WRITE`
/// on the thread and `READ` on the notification.
pub fn notification_bind(thread: CapToken, ntfn: CapToken) -> Result<(), Error> {
    ipc(
        Syscall::NotificationBind,
        tok(thread),
        tok(ntfn) as u64,
        [0; 4],
    )
    .map(|_| ())
}

// ---- threads ----

/// Sets `thread`'s IPC buffer to the page at `va` (page-aligned; 0: none).
///
/// # Safety
/// While it is set, the kernel writes the page whenever the thread
/// receives (words 4 and up, received capability tokens): if it is mapped
/// writable in the thread's address space, nothing there may use it for
/// anything else, and the program may only reach it through [`Buffer`].
pub unsafe fn thread_set_ipc_buffer(thread: CapToken, va: usize) -> Result<(), Error> {
    ipc(Syscall::ThreadSetIpcBuffer, tok(thread), va as u64, [0; 4]).map(|_| ())
}

/// Sends `thread`'s unresolved faults as messages on `ep`
/// (`CapToken::NULL`: none; a fault kills the thread's process). Needs
/// `WRITE` on both.
pub fn thread_set_fault_handler(thread: CapToken, ep: CapToken) -> Result<(), Error> {
    ipc(
        Syscall::ThreadSetFaultHandler,
        tok(thread),
        tok(ep) as u64,
        [0; 4],
    )
    .map(|_| ())
}

// ---- the IPC buffer ----

/// The calling thread's IPC buffer page, accessed with volatile loads and
/// stores (the kernel writes it during the thread's IPC calls, so no Rust
/// reference to it is ever held across one). Indices out of range are
/// ignored on writes and read as 0.
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    page: *mut IpcBuffer,
}

impl Buffer {
    /// The IPC buffer at `va`.
    ///
    /// # Safety
    /// `va` must be a page mapped readable and writable for as long as the
    /// `Buffer` (and its copies) are used, registered (or about to be) as
    /// the IPC buffer of the threads that use it with
    /// [`thread_set_ipc_buffer`], and not used by anything else.
    pub unsafe fn at(va: usize) -> Buffer {
        Buffer {
            page: va as *mut IpcBuffer,
        }
    }

    /// The page's address.
    pub fn address(self) -> usize {
        self.page as usize
    }

    fn word_ptr(self, i: usize) -> Option<*mut u64> {
        // SAFETY: `at`'s caller guarantees the page; `i` is in bounds, so
        // the pointer stays inside it.
        (i < MAX_WORDS).then(|| unsafe { (&raw mut (*self.page).words).cast::<u64>().add(i) })
    }

    /// Message word `i` (meaningful for `i >= REGISTER_WORDS`).
    pub fn word(self, i: usize) -> u64 {
        // SAFETY: in the page, aligned (see `word_ptr` and `at`).
        self.word_ptr(i).map_or(0, |p| unsafe { p.read_volatile() })
    }

    /// Sets message word `i`.
    pub fn set_word(self, i: usize, value: u64) {
        if let Some(p) = self.word_ptr(i) {
            // SAFETY: in the page, aligned, writable (see `at`).
            unsafe { p.write_volatile(value) }
        }
    }

    /// Stores the words of `msg` beyond the registers (`msg[4..]`) at their
    /// indices, and returns the first four for the registers.
    pub fn store_message(self, msg: &[u64]) -> [u64; REGISTER_WORDS] {
        for (i, &w) in msg.iter().enumerate().skip(REGISTER_WORDS) {
            self.set_word(i, w);
        }
        core::array::from_fn(|i| msg.get(i).copied().unwrap_or(0))
    }

    /// Words `0..out.len()` of a received message: the first four from
    /// `msg`, the rest from the buffer.
    pub fn load_message(self, msg: &Message, out: &mut [u64]) {
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = match msg.words.get(i) {
                Some(&w) => w,
                None => self.word(i),
            };
        }
    }

    /// Lists the capabilities to send (at most [`MAX_CAPS`]; more are
    /// ignored).
    pub fn set_caps(self, caps: &[CapToken]) {
        for (i, cap) in caps.iter().take(MAX_CAPS).enumerate() {
            // SAFETY: `i < MAX_CAPS < 4`: inside `caps`, in the page.
            unsafe { (&raw mut (*self.page).caps[i]).write_volatile(cap.raw()) }
        }
    }

    /// Token `i` of the capabilities received with the last message
    /// (`CapToken::NULL` for `i >= MAX_CAPS`).
    pub fn received(self, i: usize) -> CapToken {
        if i >= MAX_CAPS {
            return CapToken::NULL;
        }
        // SAFETY: `i < 4`: inside `received`, in the page.
        CapToken::from_raw(unsafe { (&raw const (*self.page).received[i]).read_volatile() })
    }

    /// Clears the received tokens (so a later check sees only new ones).
    pub fn clear_received(self) {
        for i in 0..MAX_CAPS {
            // SAFETY: `i < 4`: inside `received`, in the page.
            unsafe { (&raw mut (*self.page).received[i]).write_volatile(0) }
        }
    }
}

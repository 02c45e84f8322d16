//! IPC from user mode: endpoints (send, recv, call, reply, reply-recv),
//! long messages through IPC buffers, capability transfer, badges, queue
//! order, blocked threads that are killed, suspended or lose their
//! endpoint, notifications (signal, wait, poll, bound to a thread), fault
//! handlers, memory shared between address spaces through a transferred
//! capability, and every call's error paths.
//!
//! The contract tested is the one `keel_rt::ipc` documents. Every test of
//! a message call runs twice, without and with `MsgInfo::SLOWPATH`, and
//! requires both runs to observe the same thing ([`on_both_paths`]).
//!
//! Helper threads run in the root task's address space (and, where a test
//! needs another process, in a capability space of their own); they take
//! their endpoint and flags from the statics below, which each test sets
//! first, and report what their calls returned in [`SLOTS`]. There is no
//! preemption: a thread runs until it blocks or yields, so a blocked root
//! thread is what lets a helper run. A helper left blocked by a failed test
//! is killed when its [`Thread`] is dropped.
//!
//! [`ServerProcess`] (a stackless server in a second address space) and
//! [`server`] (a Rust server thread) are also what the IPC benchmarks use.

use super::{FAULT_TESTS, PAGE, Root, WAIT_YIELDS, next_va, root, stale, yield_n};
use crate::harness::{Ctx, TestResult};
use crate::mirror::text_segment;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Debug;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::{PROT_EXEC, PROT_WRITE};
use keel_rt::ipc::{
    Buffer, FAULT_KILL, FAULT_RESUME, FAULT_WORDS, MAX_WORDS, Message, MsgInfo, REGISTER_WORDS,
    call, endpoint_create, notification_bind, notification_create, poll, recv, reply, reply_recv,
    send, signal, thread_set_fault_handler, thread_set_ipc_buffer, wait,
};
use keel_rt::probe;
use keel_rt::syscall::{
    aspace_create, cap_delete, cap_derive, cap_grant, cap_identify, cap_revoke, cap_space_create,
    map, mem_create, mem_size, pool_available, thread_create, thread_kill, thread_resume,
    thread_set_priority, thread_suspend, unmap, yield_now,
};
use keel_rt::thread::Thread;

// ---- helpers: owned objects, pages, IPC buffers ----

/// A capability deleted when dropped.
pub struct Owned(pub CapToken);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = cap_delete(self.0);
    }
}

/// A fresh page mapped writable in the root task's address space;
/// unmapped and its memory object deleted when dropped.
pub struct Page {
    va: usize,
    mem: CapToken,
    aspace: CapToken,
}

impl Page {
    pub fn new(r: &Root) -> Result<Page, Error> {
        let mem = mem_create(r.pool, 1, 0)?;
        let va = next_va(1);
        if let Err(e) = map(r.aspace, mem, va, 0, 1, PROT_WRITE) {
            let _ = cap_delete(mem);
            return Err(e);
        }
        Ok(Page {
            va,
            mem,
            aspace: r.aspace,
        })
    }

    pub fn va(&self) -> usize {
        self.va
    }
}

impl Drop for Page {
    fn drop(&mut self) {
        // SAFETY: the page belongs to this value; nothing uses it once it
        // is dropped (an IPC buffer on it was unregistered first).
        let _ = unsafe { unmap(self.aspace, self.va, 1) };
        let _ = cap_delete(self.mem);
    }
}

/// A page registered as `thread`'s IPC buffer; unregistered, unmapped and
/// freed when dropped.
pub struct IpcPage {
    thread: CapToken,
    page: Page,
}

impl IpcPage {
    pub fn new(r: &Root, thread: CapToken) -> Result<IpcPage, Error> {
        let page = Page::new(r)?;
        // SAFETY: the page is mapped writable, fresh, and only reached
        // through `Buffer` until it is unregistered in `drop`.
        unsafe { thread_set_ipc_buffer(thread, page.va()) }?;
        Ok(IpcPage { thread, page })
    }

    pub fn buffer(&self) -> Buffer {
        // SAFETY: the page is mapped and registered while `self` lives.
        unsafe { Buffer::at(self.page.va()) }
    }
}

impl Drop for IpcPage {
    fn drop(&mut self) {
        // SAFETY: unregistering takes the page away from the kernel.
        let _ = unsafe { thread_set_ipc_buffer(self.thread, 0) };
    }
}

/// Runs `run` without and with `MsgInfo::SLOWPATH` (the flags it gets)
/// and requires the same outcome.
fn on_both_paths<T: PartialEq + Debug>(run: impl Fn(u64) -> Result<T, String>) -> TestResult {
    let fast = run(0).map_err(|e| alloc::format!("without SLOWPATH: {e}"))?;
    let slow = run(MsgInfo::SLOWPATH).map_err(|e| alloc::format!("with SLOWPATH: {e}"))?;
    ensure_eq!(fast, slow, "the fast and slow paths disagree");
    Ok(())
}

/// What a test compares of a received message: label, length, number of
/// capabilities, badge, and the register words within the length.
type Seen = (u64, usize, usize, u64, Vec<u64>);

fn seen(m: &Message) -> Seen {
    let n = m.info.len().min(REGISTER_WORDS);
    (
        m.info.label(),
        m.info.len(),
        m.info.caps(),
        m.badge,
        m.words[..n].to_vec(),
    )
}

// ---- helper threads and their reports ----

/// What a helper thread's IPC call returned.
struct Slot {
    /// 0 empty, 1 a message, 2 an error (its return value in `info`).
    state: AtomicU64,
    info: AtomicU64,
    badge: AtomicU64,
    words: [AtomicU64; REGISTER_WORDS],
}

const SLOT_COUNT: usize = 8;
static SLOTS: [Slot; SLOT_COUNT] = [const {
    Slot {
        state: AtomicU64::new(0),
        info: AtomicU64::new(0),
        badge: AtomicU64::new(0),
        words: [const { AtomicU64::new(0) }; REGISTER_WORDS],
    }
}; SLOT_COUNT];

fn put(slot: usize, r: Result<Message, Error>) {
    let Some(s) = SLOTS.get(slot) else { return };
    match r {
        Ok(m) => {
            s.info.store(m.info.0, Ordering::Relaxed);
            s.badge.store(m.badge, Ordering::Relaxed);
            for (w, v) in s.words.iter().zip(m.words) {
                w.store(v, Ordering::Relaxed);
            }
            s.state.store(1, Ordering::Release);
        }
        Err(e) => {
            s.info.store(e.to_return_value() as u64, Ordering::Relaxed);
            s.state.store(2, Ordering::Release);
        }
    }
}

fn get(slot: usize) -> Option<Result<Message, Error>> {
    let s = SLOTS.get(slot)?;
    match s.state.load(Ordering::Acquire) {
        1 => Some(Ok(Message {
            info: MsgInfo(s.info.load(Ordering::Relaxed)),
            badge: s.badge.load(Ordering::Relaxed),
            words: core::array::from_fn(|i| s.words[i].load(Ordering::Relaxed)),
        })),
        2 => {
            let raw = s.info.load(Ordering::Relaxed) as isize;
            Some(Err(Error::from_return_value(raw)
                .and_then(|r| r.err())
                .unwrap_or(Error::NotSupported)))
        }
        _ => None,
    }
}

/// Yields until slot `slot` has a report (at most `WAIT_YIELDS` times).
fn wait_for(slot: usize) -> Option<Result<Message, Error>> {
    for _ in 0..WAIT_YIELDS {
        if let Some(r) = get(slot) {
            return Some(r);
        }
        let _ = yield_now();
    }
    get(slot)
}

/// Endpoint (or notification) and flags the helpers use; one endpoint per
/// client for the badge test.
static HELPER_CAPS: [AtomicU64; SLOT_COUNT] = [const { AtomicU64::new(0) }; SLOT_COUNT];
static HELPER_FLAGS: AtomicU64 = AtomicU64::new(0);
/// Steps a helper has reached (tests that wait for "received").
static PROGRESS: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicUsize = AtomicUsize::new(0);

/// Resets the reports and sets every helper's capability to `cap` and
/// their flags to `flags`.
fn reset(cap: CapToken, flags: u64) {
    for s in &SLOTS {
        s.state.store(0, Ordering::Release);
    }
    for c in &HELPER_CAPS {
        c.store(cap.raw(), Ordering::Release);
    }
    HELPER_FLAGS.store(flags, Ordering::Release);
    PROGRESS.store(0, Ordering::Release);
    STOP.store(0, Ordering::Release);
}

fn helper_cap(i: usize) -> CapToken {
    CapToken::from_raw(HELPER_CAPS.get(i).map_or(0, |c| c.load(Ordering::Acquire)))
}

fn flags() -> u64 {
    HELPER_FLAGS.load(Ordering::Acquire)
}

/// Receives one message on helper capability `slot`; reports it there.
fn receive_one(slot: usize) -> i32 {
    put(slot, recv(helper_cap(slot), flags()));
    0
}

/// Sends one message labelled `slot`, of one word `slot * 10`.
fn send_one(slot: usize) -> i32 {
    let info = MsgInfo::new(slot as u64, 1, 0).with(flags());
    let r = send(helper_cap(slot), info, [slot as u64 * 10, 0, 0, 0]);
    put(slot, r.map(|()| Message::default()));
    0
}

/// Calls with one message labelled `slot`, of one word `slot * 100`;
/// reports the reply.
fn call_one(slot: usize) -> i32 {
    let info = MsgInfo::new(slot as u64, 1, 0).with(flags());
    put(
        slot,
        call(helper_cap(slot), info, [slot as u64 * 100, 0, 0, 0]),
    );
    0
}

/// Waits on the notification in helper capability `slot`; reports the
/// bits as the badge.
fn wait_one(slot: usize) -> i32 {
    let r = wait(helper_cap(slot)).map(|bits| Message {
        badge: bits,
        ..Message::default()
    });
    put(slot, r);
    0
}

/// Receives a call, reports it in slot 0 and never answers: yields until
/// [`STOP`] (or until killed).
fn receive_and_hold(_: usize) -> i32 {
    put(0, recv(helper_cap(0), flags()));
    PROGRESS.store(1, Ordering::Release);
    while STOP.load(Ordering::Acquire) == 0 {
        let _ = yield_now();
    }
    0
}

/// Receives a call and exits without answering.
fn receive_and_exit(_: usize) -> i32 {
    put(0, recv(helper_cap(0), flags()));
    PROGRESS.store(1, Ordering::Release);
    0
}

/// Waits until a helper reached its first step, then kills the thread
/// whose token is `thread`.
fn kill_when_received(thread: usize) -> i32 {
    while PROGRESS.load(Ordering::Acquire) == 0 {
        let _ = yield_now();
    }
    put(
        1,
        thread_kill(CapToken::from_raw(thread as u64)).map(|()| Message::default()),
    );
    0
}

// ---- the server thread (also used by the benchmarks) ----

/// What [`server`] does with a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u64)]
pub enum ServerMode {
    /// Answers with the same label, length and words.
    Echo = 0,
    /// Answers with label + 1 and every word + 1 (buffer words too).
    Transform = 1,
}

/// Label of the message that makes [`server`] answer and return.
pub const SERVER_STOP: u64 = 0x7fff_0000;

static SERVER_EP: AtomicU64 = AtomicU64::new(0);
static SERVER_FLAGS: AtomicU64 = AtomicU64::new(0);
static SERVER_MODE: AtomicU64 = AtomicU64::new(0);
/// Address of the server's IPC buffer (0: none).
static SERVER_BUFFER: AtomicUsize = AtomicUsize::new(0);
/// Messages it served; capabilities it received (and deleted).
pub static SERVED: AtomicUsize = AtomicUsize::new(0);
pub static SERVER_CAPS: AtomicUsize = AtomicUsize::new(0);

/// Sets up [`server`]: endpoint, flags for its calls, mode and IPC
/// buffer address (0: none).
pub fn server_config(ep: CapToken, flags: u64, mode: ServerMode, buffer: usize) {
    SERVER_EP.store(ep.raw(), Ordering::Release);
    SERVER_FLAGS.store(flags, Ordering::Release);
    SERVER_MODE.store(mode as u64, Ordering::Release);
    SERVER_BUFFER.store(buffer, Ordering::Release);
    SERVED.store(0, Ordering::Release);
    SERVER_CAPS.store(0, Ordering::Release);
}

/// A server thread in this address space: `recv`, then `reply_recv` in a
/// loop, as [`server_config`] says; every capability received is
/// deleted. Returns 0 after answering [`SERVER_STOP`], or
/// the negated error code of a failed call.
pub fn server(_: usize) -> i32 {
    let ep = CapToken::from_raw(SERVER_EP.load(Ordering::Acquire));
    let flags = SERVER_FLAGS.load(Ordering::Acquire);
    let transform = SERVER_MODE.load(Ordering::Acquire) == ServerMode::Transform as u64;
    let va = SERVER_BUFFER.load(Ordering::Acquire);
    // SAFETY: `server_config`'s caller registered the page at `va` as this
    // thread's IPC buffer.
    let buffer = (va != 0).then(|| unsafe { Buffer::at(va) });
    let mut next = recv(ep, flags);
    loop {
        let m = match next {
            Ok(m) => m,
            Err(e) => return e.to_return_value() as i32,
        };
        SERVED.fetch_add(1, Ordering::AcqRel);
        if let Some(b) = buffer {
            for i in 0..m.info.caps() {
                if cap_delete(b.received(i)).is_ok() {
                    SERVER_CAPS.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        let (label, len) = (m.info.label(), m.info.len());
        if label == SERVER_STOP {
            let _ = reply(MsgInfo::new(label, 0, 0).with(flags), [0; 4]);
            return 0;
        }
        let mut words = m.words;
        let mut out_label = label;
        if transform {
            out_label = label + 1;
            words = words.map(|w| w.wrapping_add(1));
            if let Some(b) = buffer {
                for i in REGISTER_WORDS..len {
                    b.set_word(i, b.word(i).wrapping_add(1));
                }
            }
        }
        next = reply_recv(ep, MsgInfo::new(out_label, len, 0).with(flags), words);
    }
}

/// A running [`server`] with its endpoint and IPC buffers (the root
/// thread's and its own, when `buffers`); stopped and cleaned up by
/// [`Session::stop`] or, forcibly, when dropped.
pub struct Session {
    pub ep: CapToken,
    thread: Thread,
    // Dropped after the thread: the buffers outlive any use.
    root_buffer: Option<IpcPage>,
    _server_buffer: Option<IpcPage>,
    _ep: Owned,
}

impl Session {
    pub fn start(r: &Root, flags: u64, mode: ServerMode, buffers: bool) -> Result<Session, Error> {
        let ep = Owned(endpoint_create(r.pool)?);
        let thread = Thread::create(server, 0)?;
        let (root_buffer, server_buffer) = if buffers {
            (
                Some(IpcPage::new(r, r.thread)?),
                Some(IpcPage::new(r, thread.token())?),
            )
        } else {
            (None, None)
        };
        let va = server_buffer.as_ref().map_or(0, |b| b.buffer().address());
        server_config(ep.0, flags, mode, va);
        thread.resume()?;
        Ok(Session {
            ep: ep.0,
            thread,
            root_buffer,
            _server_buffer: server_buffer,
            _ep: ep,
        })
    }

    /// The root thread's IPC buffer (when started with buffers).
    pub fn buffer(&self) -> Option<Buffer> {
        self.root_buffer.as_ref().map(IpcPage::buffer)
    }

    /// Sends [`SERVER_STOP`] and waits for the server to return; its exit
    /// code.
    pub fn stop(self, flags: u64) -> Result<i32, Error> {
        call(self.ep, MsgInfo::new(SERVER_STOP, 0, 0).with(flags), [0; 4])?;
        self.thread.join(WAIT_YIELDS).ok_or(Error::InvalidState)
    }
}

// ---- a server in another address space (also used by the benchmarks) ----

/// Where this program's text segment maps: (address, first page of the
/// boot image, pages). Found as `crate::mirror` does.
fn text_pages(r: &Root) -> Result<(usize, usize, usize), Error> {
    let pages = mem_size(r.boot_image)?;
    let bytes = usize::try_from(r.info.boot_image_bytes)
        .unwrap_or(usize::MAX)
        .min(pages.saturating_mul(PAGE));
    let va = next_va(pages);
    map(r.aspace, r.boot_image, va, 0, pages, 0)?;
    let segment = {
        // SAFETY: `bytes` at `va` are mapped readable until the unmap
        // below, after this borrow ends; nothing writes them.
        let elf = unsafe { core::slice::from_raw_parts(va as *const u8, bytes) };
        text_segment(elf)
    };
    // SAFETY: nothing refers to the range any more.
    unsafe { unmap(r.aspace, va, pages) }?;
    let s = segment.ok_or(Error::InvalidArgument)?;
    if s.offset % PAGE != s.vaddr % PAGE || s.memsz == 0 || s.memsz > s.filesz {
        return Err(Error::InvalidArgument);
    }
    let pages = (s.vaddr % PAGE + s.memsz).div_ceil(PAGE);
    Ok((s.vaddr - s.vaddr % PAGE, s.offset / PAGE, pages))
}

/// A process of its own: a new address space holding only this program's
/// text (at the same addresses), a capability space holding one endpoint
/// capability, and one stackless thread running a `keel_rt::probe` IPC
/// server routine with the endpoint's token (in its space) as argument.
/// Killed and deleted when dropped.
pub struct ServerProcess {
    aspace: CapToken,
    text: (usize, usize),
    cspace: CapToken,
    thread: CapToken,
}

impl ServerProcess {
    /// Starts `entry` (a probe IPC server) with `ep` (granted with READ and
    /// WRITE) at `priority`.
    pub fn start(
        r: &Root,
        ep: CapToken,
        entry: usize,
        priority: usize,
    ) -> Result<ServerProcess, Error> {
        let (va, first, pages) = text_pages(r)?;
        let mut p = ServerProcess {
            aspace: aspace_create(r.pool)?,
            text: (va, 0),
            cspace: CapToken::NULL,
            thread: CapToken::NULL,
        };
        map(p.aspace, r.boot_image, va, first, pages, PROT_EXEC)?;
        p.text.1 = pages;
        p.cspace = cap_space_create(r.pool, 4)?;
        let ep_there = cap_grant(ep, p.cspace, Rights::READ | Rights::WRITE)?;
        // SAFETY: the thread runs in another address space, at code that
        // needs no stack.
        p.thread = unsafe { thread_create(p.aspace, p.cspace, entry, 0, ep_there.raw() as usize) }?;
        thread_set_priority(p.thread, priority)?;
        thread_resume(p.thread)?;
        Ok(p)
    }

    /// The process's address space.
    pub fn aspace(&self) -> CapToken {
        self.aspace
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.thread != CapToken::NULL {
            let _ = thread_kill(self.thread);
            let _ = cap_delete(self.thread);
        }
        if self.cspace != CapToken::NULL {
            let _ = cap_delete(self.cspace);
        }
        if self.text.1 != 0 {
            // SAFETY: not this program's address space.
            let _ = unsafe { unmap(self.aspace, self.text.0, self.text.1) };
        }
        let _ = cap_delete(self.aspace);
    }
}

/// The root thread's priority (the kernel default).
const ROOT_PRIORITY: usize = 10;

// ---- objects and error paths ----

pub fn objects_are_created_and_charged() -> TestResult {
    let r = root()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    let ep = endpoint_create(r.pool).ctx("endpoint_create")?;
    ensure_eq!(ep.object_type(), Some(ObjectType::Endpoint));
    let ntfn = notification_create(r.pool).ctx("notification_create")?;
    ensure_eq!(ntfn.object_type(), Some(ObjectType::Notification));
    for cap in [ep, ntfn] {
        let id = cap_identify(cap).ctx("identify")?;
        ensure_eq!(id.object_type(), cap.object_type());
        ensure_eq!(id.rights(), Some(Rights::ALL), "{cap:?}");
    }
    ensure_eq!(pool_available(r.pool), Ok(before - 2), "one page each");
    let pool_ro = cap_derive(r.pool, Rights::READ, NO_BADGE).ctx("derive pool")?;
    for create in [endpoint_create, notification_create] {
        ensure_eq!(create(pool_ro), Err(Error::AccessDenied));
        ensure_eq!(create(ep), Err(Error::WrongObjectType));
        ensure_eq!(create(CapToken::NULL), Err(Error::WrongObjectType));
        ensure_eq!(create(stale(r.pool)), Err(Error::InvalidCapability));
    }
    cap_delete(pool_ro).ctx("delete")?;
    cap_delete(ep).ctx("delete ep")?;
    cap_delete(ntfn).ctx("delete ntfn")?;
    ensure_eq!(pool_available(r.pool), Ok(before), "returned on delete");
    Ok(())
}

pub fn calls_check_capabilities() -> TestResult {
    let r = root()?;
    let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
    let ntfn = Owned(notification_create(r.pool).ctx("notification")?);
    // A revoked child: its token is stale.
    let revoked = cap_derive(ep.0, Rights::READ | Rights::WRITE, NO_BADGE).ctx("derive")?;
    cap_revoke(ep.0).ctx("revoke")?;
    let ep_ro = Owned(cap_derive(ep.0, Rights::READ, NO_BADGE).ctx("derive")?);
    let ep_wo = Owned(cap_derive(ep.0, Rights::WRITE, NO_BADGE).ctx("derive")?);
    let ntfn_ro = Owned(cap_derive(ntfn.0, Rights::READ, NO_BADGE).ctx("derive")?);
    let ntfn_wo = Owned(cap_derive(ntfn.0, Rights::WRITE, NO_BADGE).ctx("derive")?);
    use Error::{AccessDenied, InvalidCapability, WouldBlock, WrongObjectType};
    on_both_paths(|flags| {
        let nb = MsgInfo::new(0, 0, 0).with(flags | MsgInfo::NONBLOCK);
        let mut out = Vec::new();
        // (what, capability, error of send/call, error of recv/reply_recv);
        // WouldBlock where the capability is good (nobody waits).
        for (what, cap, send_err, recv_err) in [
            ("notification", ntfn.0, WrongObjectType, WrongObjectType),
            ("pool", r.pool, WrongObjectType, WrongObjectType),
            ("null", CapToken::NULL, WrongObjectType, WrongObjectType),
            ("read-only", ep_ro.0, AccessDenied, WouldBlock),
            ("write-only", ep_wo.0, WouldBlock, AccessDenied),
            ("stale", stale(ep.0), InvalidCapability, InvalidCapability),
            ("revoked", revoked, InvalidCapability, InvalidCapability),
        ] {
            let s = send(cap, nb, [1, 2, 3, 4]);
            let c = call(cap, nb, [1, 2, 3, 4]).map(|_| ());
            let v = recv(cap, nb.0).map(|_| ());
            let rr = reply_recv(cap, nb, [0; 4]).map(|_| ());
            ensure_eq!(s, Err(send_err), "send on {what}");
            ensure_eq!(c, Err(send_err), "call on {what}");
            ensure_eq!(v, Err(recv_err), "recv on {what}");
            ensure_eq!(rr, Err(recv_err), "reply_recv on {what}");
            out.push((s, c, v, rr));
        }
        Ok(out)
    })?;
    // (what, capability, error of signal, error of poll/wait; None: allowed)
    for (what, cap, signal_err, wait_err) in [
        (
            "endpoint",
            ep.0,
            Some(WrongObjectType),
            Some(WrongObjectType),
        ),
        ("pool", r.pool, Some(WrongObjectType), Some(WrongObjectType)),
        ("read-only", ntfn_ro.0, Some(AccessDenied), None),
        ("write-only", ntfn_wo.0, None, Some(AccessDenied)),
        (
            "stale",
            stale(ntfn.0),
            Some(InvalidCapability),
            Some(InvalidCapability),
        ),
    ] {
        match signal_err {
            Some(e) => ensure_eq!(signal(cap, 1), Err(e), "signal on {what}"),
            None => {
                ensure_eq!(signal(cap, 1), Ok(()), "signal on {what}");
                ensure_eq!(poll(ntfn.0), Ok(1), "poll after signal on {what}");
            }
        }
        match wait_err {
            Some(e) => {
                ensure_eq!(poll(cap), Err(e), "poll on {what}");
                ensure_eq!(wait(cap), Err(e), "wait on {what}");
            }
            None => ensure_eq!(poll(cap), Ok(0), "poll on {what}"),
        }
    }
    drop((ep_ro, ep_wo, ntfn_ro, ntfn_wo));
    Ok(())
}

pub fn malformed_messages_are_refused() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        // SAFETY: unregistering takes no memory from anyone.
        unsafe { thread_set_ipc_buffer(r.thread, 0) }.ctx("no IPC buffer")?;
        reset(ep.0, flags);
        let t = Thread::spawn(receive_one, 0).ctx("spawn receiver")?;
        yield_n(3);
        let bad_without_buffer = [
            ("5 words without a buffer", MsgInfo::new(1, 5, 0)),
            ("a capability without a buffer", MsgInfo::new(1, 0, 1)),
            ("reserved bit", MsgInfo(1 << 20)),
            ("FAULT flag", MsgInfo(MsgInfo::FAULT)),
            ("NOTIFICATION flag", MsgInfo(MsgInfo::NOTIFICATION)),
            ("label bit 63", MsgInfo(1 << 63)),
            ("505 words", MsgInfo::new(1, MAX_WORDS + 1, 0)),
        ];
        for (what, info) in bad_without_buffer {
            let info = info.with(flags);
            ensure_eq!(
                send(ep.0, info, [9; 4]),
                Err(Error::InvalidArgument),
                "send {what}"
            );
            ensure_eq!(
                send(ep.0, info.with(MsgInfo::NONBLOCK), [9; 4]),
                Err(Error::InvalidArgument),
                "non-blocking send {what}"
            );
            ensure_eq!(
                call(ep.0, info, [9; 4]).map(|_| ()),
                Err(Error::InvalidArgument),
                "call {what}"
            );
        }
        // With a buffer, too long is still too long.
        let page = IpcPage::new(&r, r.thread).ctx("root IPC buffer")?;
        ensure_eq!(
            send(ep.0, MsgInfo::new(1, MAX_WORDS + 1, 0).with(flags), [9; 4]),
            Err(Error::InvalidArgument)
        );
        drop(page);
        // Nothing reached the waiting receiver; the next good message does.
        ensure_eq!(get(0), None, "a refused message was delivered");
        send(ep.0, MsgInfo::new(77, 2, 0).with(flags), [5, 6, 0, 0]).ctx("good send")?;
        let got = wait_for(0).ctx("receiver report")?.ctx("receiver")?;
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        Ok(seen(&got))
    })
}

pub fn nonblocking_calls_would_block() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let nb = MsgInfo::new(3, 2, 0).with(flags | MsgInfo::NONBLOCK);
        let out = (
            send(ep.0, nb, [1, 2, 0, 0]),
            call(ep.0, nb, [1, 2, 0, 0]).map(|_| ()),
            recv(ep.0, flags | MsgInfo::NONBLOCK).map(|_| ()),
            reply_recv(ep.0, MsgInfo(flags | MsgInfo::NONBLOCK), [0; 4]).map(|_| ()),
        );
        ensure_eq!(
            out,
            (
                Err(Error::WouldBlock),
                Err(Error::WouldBlock),
                Err(Error::WouldBlock),
                Err(Error::WouldBlock)
            )
        );
        Ok(out)
    })
}

pub fn reply_without_a_call_is_refused() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        ensure_eq!(
            reply(MsgInfo::new(1, 1, 0).with(flags), [1, 0, 0, 0]),
            Err(Error::InvalidState),
            "nothing received"
        );
        // A message that came by `send` leaves nothing to answer either.
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let t = Thread::spawn(send_one, 1).ctx("spawn sender")?;
        let m = recv(ep.0, flags).ctx("recv")?;
        let again = reply(MsgInfo::new(1, 0, 0).with(flags), [0; 4]);
        ensure_eq!(again, Err(Error::InvalidState), "reply to a send");
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        ensure_eq!(get(1), Some(Ok(Message::default())), "the send succeeded");
        Ok(seen(&m))
    })
}

// ---- messages ----

pub fn call_reply_register_words() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let s = Session::start(&r, flags, ServerMode::Transform, false).ctx("server")?;
        let mut out = Vec::new();
        for len in 0..=REGISTER_WORDS {
            let words = [10, 20, 30, u64::MAX];
            let m = call(
                s.ep,
                MsgInfo::new(7 + len as u64, len, 0).with(flags),
                words,
            )
            .ctx("call")?;
            ensure_eq!(m.info.label(), 8 + len as u64);
            ensure_eq!(m.info.len(), len);
            ensure_eq!(m.info.caps(), 0);
            ensure!(!m.is_fault() && !m.is_notification(), "{m:?}");
            let want: Vec<u64> = words[..len].iter().map(|w| w.wrapping_add(1)).collect();
            ensure_eq!(m.words[..len], want[..], "len {len}");
            out.push(seen(&m));
        }
        ensure_eq!(SERVED.load(Ordering::Acquire), REGISTER_WORDS + 1);
        ensure_eq!(s.stop(flags), Ok(0), "server exit");
        Ok(out)
    })
}

/// A call of `n` words through IPC buffers: the server adds 1 to each.
fn long_call(n: usize) -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let s = Session::start(&r, flags, ServerMode::Transform, true).ctx("server")?;
        let buf = s.buffer().ctx("root buffer")?;
        let msg: Vec<u64> = (0..n as u64).map(|i| i * 3 + 0x1000).collect();
        let regs = buf.store_message(&msg);
        let m = call(s.ep, MsgInfo::new(40, n, 0).with(flags), regs).ctx("call")?;
        ensure_eq!(m.info.label(), 41);
        ensure_eq!(m.info.len(), n);
        let mut got = vec![0; n];
        buf.load_message(&m, &mut got);
        let want: Vec<u64> = msg.iter().map(|w| w + 1).collect();
        ensure!(
            got == want,
            "first difference at word {:?}",
            got.iter().zip(&want).position(|(a, b)| a != b)
        );
        ensure_eq!(s.stop(flags), Ok(0), "server exit");
        Ok((seen(&m), got))
    })
}

pub fn call_reply_64_words_through_buffers() -> TestResult {
    long_call(64)
}

pub fn call_reply_504_words_through_buffers() -> TestResult {
    long_call(MAX_WORDS)
}

pub fn send_recv_one_way() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        // The receiver waits first; the message goes straight to it.
        let t = Thread::spawn(receive_one, 2).ctx("spawn receiver")?;
        yield_n(3);
        send(ep.0, MsgInfo::new(11, 3, 0).with(flags), [4, 5, 6, 7]).ctx("send")?;
        let got = wait_for(2).ctx("report")?.ctx("receiver")?;
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        ensure_eq!(
            (got.info.label(), got.info.len(), got.badge),
            (11, 3, NO_BADGE)
        );
        ensure_eq!(got.words[..3], [4, 5, 6]);
        // The sender blocks first; the receiver takes the queued message.
        let t = Thread::spawn(send_one, 3).ctx("spawn sender")?;
        yield_n(3);
        ensure_eq!(get(3), None, "the send completed without a receiver");
        let m = recv(ep.0, flags).ctx("recv")?;
        ensure_eq!((m.info.label(), m.info.len(), m.words[0]), (3, 1, 30));
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        ensure_eq!(get(3), Some(Ok(Message::default())));
        Ok((seen(&got), seen(&m)))
    })
}

pub fn reply_recv_serves_many_calls() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let s = Session::start(&r, flags, ServerMode::Transform, false).ctx("server")?;
        let mut sum = 0;
        for i in 0..50u64 {
            let m = call(s.ep, MsgInfo::new(i, 1, 0).with(flags), [i * i, 0, 0, 0]).ctx("call")?;
            ensure_eq!((m.info.label(), m.words[0]), (i + 1, i * i + 1));
            sum += m.words[0];
        }
        ensure_eq!(SERVED.load(Ordering::Acquire), 50);
        ensure_eq!(s.stop(flags), Ok(0));
        Ok(sum)
    })
}

pub fn call_reply_across_address_spaces() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let p = ServerProcess::start(&r, ep.0, probe::ipc_echo_forever_address(), ROOT_PRIORITY)
            .ctx("server process")?;
        let mut out = Vec::new();
        for len in 0..=REGISTER_WORDS {
            let words = [0x1111, 0x2222, 0x3333, 0x4444];
            let m = call(
                ep.0,
                MsgInfo::new(100 + len as u64, len, 0).with(flags),
                words,
            )
            .ctx("call")?;
            ensure_eq!((m.info.label(), m.info.len()), (100 + len as u64, len));
            ensure_eq!(m.words[..len], words[..len]);
            out.push(seen(&m));
        }
        drop(p);
        Ok(out)
    })
}

pub fn queued_senders_are_served_in_order() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let mut threads = Vec::new();
        for i in [3, 1, 2] {
            threads.push(Thread::spawn(send_one, i).ctx("spawn")?);
            // Let it run and block before the next one queues.
            yield_n(3);
        }
        let mut labels = Vec::new();
        for _ in 0..3 {
            let m = recv(ep.0, flags | MsgInfo::NONBLOCK).ctx("recv")?;
            labels.push((m.info.label(), m.words[0]));
        }
        ensure_eq!(labels, [(3, 30), (1, 10), (2, 20)]);
        ensure_eq!(
            recv(ep.0, flags | MsgInfo::NONBLOCK).map(|_| ()),
            Err(Error::WouldBlock)
        );
        for t in &threads {
            ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        }
        Ok(labels)
    })
}

pub fn badges_identify_clients() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let a = Owned(cap_derive(ep.0, Rights::WRITE, 0xa).ctx("badge a")?);
        let b = Owned(cap_derive(ep.0, Rights::WRITE | Rights::GRANT, 0xb).ctx("badge b")?);
        reset(ep.0, flags);
        HELPER_CAPS[1].store(a.0.raw(), Ordering::Release);
        HELPER_CAPS[2].store(b.0.raw(), Ordering::Release);
        // Client 3 uses the unbadged endpoint.
        let clients = [
            Thread::spawn(call_one, 1).ctx("spawn")?,
            Thread::spawn(call_one, 2).ctx("spawn")?,
            Thread::spawn(call_one, 3).ctx("spawn")?,
        ];
        let mut served = Vec::new();
        for _ in 0..3 {
            let m = recv(ep.0, flags).ctx("recv")?;
            served.push((m.info.label(), m.badge));
            reply(MsgInfo::new(0, 1, 0).with(flags), [m.badge, 0, 0, 0]).ctx("reply")?;
        }
        served.sort_unstable();
        ensure_eq!(served, [(1, 0xa), (2, 0xb), (3, NO_BADGE)]);
        for (i, want) in [(1, 0xa), (2, 0xb), (3, NO_BADGE)] {
            let got = wait_for(i).ctx("client report")?.ctx("client call")?;
            ensure_eq!(got.words[0], want, "client {i} got its own badge back");
        }
        for t in &clients {
            ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        }
        Ok(served)
    })
}

// ---- capability transfer ----

/// The notification the capability server was sent signals this bit.
const CAP_SERVER_BIT: u64 = 0x20;

/// A server in its own capability space: receives one message with a
/// capability, signals the notification it names, reports the received
/// token and the signal's result in slot 4, and answers with the token's
/// type and rights.
fn cap_server(_: usize) -> i32 {
    let ep = helper_cap(0);
    let flags = flags();
    let va = HELPER_CAPS[5].load(Ordering::Acquire) as usize;
    // SAFETY: the root thread registered the page at `va` as this thread's
    // IPC buffer.
    let buf = unsafe { Buffer::at(va) };
    let m = match recv(ep, flags) {
        Ok(m) => m,
        Err(e) => {
            put(4, Err(e));
            return 1;
        }
    };
    let cap = buf.received(0);
    let signalled = signal(cap, CAP_SERVER_BIT);
    let id = cap_identify(cap)
        .map(|id| (u64::from(id.type_code) << 8) | u64::from(id.rights_bits))
        .unwrap_or(0);
    put(
        4,
        Ok(Message {
            info: m.info,
            badge: cap.raw(),
            words: [id, u64::from(signalled.is_ok()), 0, 0],
        }),
    );
    let _ = reply(MsgInfo::new(0, 1, 0).with(flags), [id, 0, 0, 0]);
    0
}

pub fn capabilities_are_transferred() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let ntfn = Owned(notification_create(r.pool).ctx("notification")?);
        let sent_rights = Rights::WRITE | Rights::GRANT;
        let ntfn_sent = Owned(cap_derive(ntfn.0, sent_rights, NO_BADGE).ctx("derive")?);
        let cs = Owned(cap_space_create(r.pool, 16).ctx("cap space")?);
        let ep_there = cap_grant(ep.0, cs.0, Rights::READ).ctx("grant ep")?;
        let root_page = IpcPage::new(&r, r.thread).ctx("root buffer")?;
        let buf = root_page.buffer();

        // Refused first: no GRANT on the endpoint, no GRANT on the cap,
        // a stale cap. Nothing is delivered (nobody is waiting anyway).
        let ep_nogrant = Owned(cap_derive(ep.0, Rights::WRITE, NO_BADGE).ctx("derive")?);
        let ntfn_nogrant = Owned(cap_derive(ntfn.0, Rights::WRITE, NO_BADGE).ctx("derive")?);
        let one_cap = MsgInfo::new(5, 0, 1).with(flags | MsgInfo::NONBLOCK);
        buf.set_caps(&[ntfn_sent.0]);
        ensure_eq!(
            send(ep_nogrant.0, one_cap, [0; 4]),
            Err(Error::AccessDenied)
        );
        buf.set_caps(&[ntfn_nogrant.0]);
        ensure_eq!(send(ep.0, one_cap, [0; 4]), Err(Error::AccessDenied));
        buf.set_caps(&[stale(ntfn.0)]);
        ensure_eq!(send(ep.0, one_cap, [0; 4]), Err(Error::InvalidCapability));

        // The server, in its own capability space, with its own buffer.
        reset(ep_there, flags);
        let t = Thread::create_in(cs.0, cap_server, 0).ctx("create server")?;
        let server_page = IpcPage::new(&r, t.token()).ctx("server buffer")?;
        HELPER_CAPS[5].store(server_page.buffer().address() as u64, Ordering::Release);
        t.resume().ctx("resume")?;
        buf.set_caps(&[ntfn_sent.0]);
        let m = call(ep.0, MsgInfo::new(5, 0, 1).with(flags), [0; 4]).ctx("call")?;
        let want_id =
            (u64::from(ObjectType::Notification as u8) << 8) | u64::from(sent_rights.bits());
        ensure_eq!(m.words[0], want_id, "type and rights the server saw");
        let report = wait_for(4).ctx("server report")?.ctx("server recv")?;
        ensure_eq!(report.info.caps(), 1, "info.caps()");
        ensure_eq!(report.info.label(), 5);
        ensure_eq!(report.words[1], 1, "the server could signal with the cap");
        let received = CapToken::from_raw(report.badge);
        ensure_eq!(received.object_type(), Some(ObjectType::Notification));
        ensure_eq!(poll(ntfn.0), Ok(CAP_SERVER_BIT), "the signal arrived");
        // The sender keeps its own capability.
        ensure_eq!(
            cap_identify(ntfn_sent.0).map(|id| id.rights()),
            Ok(Some(sent_rights))
        );
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        drop(server_page);
        drop(t);
        Ok((seen(&m), report.info.caps(), report.words))
    })
}

/// A server in its own capability space: receives a memory object and an
/// address space, maps the object (one page, writable) at the address in
/// word 0, deletes both capabilities, answers with 0 or the error.
fn map_server(_: usize) -> i32 {
    let ep = helper_cap(0);
    let flags = flags();
    let va = HELPER_CAPS[5].load(Ordering::Acquire) as usize;
    // SAFETY: the root thread registered the page at `va` as this thread's
    // IPC buffer.
    let buf = unsafe { Buffer::at(va) };
    let Ok(m) = recv(ep, flags) else { return 1 };
    let (mem, aspace) = (buf.received(0), buf.received(1));
    let mapped = map(aspace, mem, m.words[0] as usize, 0, 1, PROT_WRITE);
    let _ = cap_delete(mem);
    let _ = cap_delete(aspace);
    let code = mapped.err().map_or(0, |e| e.to_return_value() as u64);
    let _ = reply(
        MsgInfo::new(0, 1, 0).with(flags),
        [code, m.info.caps() as u64, 0, 0],
    );
    0
}

pub fn memory_is_shared_through_ipc() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        // Process B: an address space with a load server in it.
        let load_ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let b = ServerProcess::start(
            &r,
            load_ep.0,
            probe::ipc_load_server_address(),
            ROOT_PRIORITY,
        )
        .ctx("process B")?;
        // The memory, mapped here and written.
        let shared = Page::new(&r).ctx("page")?;
        // SAFETY: the page is mapped writable.
        unsafe { ((shared.va() + 16) as *mut u64).write_volatile(0x5ca1_ab1e) };
        // The mapper, in its own capability space, gets the memory object
        // and B's address space by IPC and maps the one into the other.
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let cs = Owned(cap_space_create(r.pool, 16).ctx("cap space")?);
        let ep_there = cap_grant(ep.0, cs.0, Rights::READ).ctx("grant ep")?;
        reset(ep_there, flags);
        let mapper = Thread::create_in(cs.0, map_server, 0).ctx("create mapper")?;
        let mapper_page = IpcPage::new(&r, mapper.token()).ctx("mapper buffer")?;
        HELPER_CAPS[5].store(mapper_page.buffer().address() as u64, Ordering::Release);
        mapper.resume().ctx("resume")?;
        let root_page = IpcPage::new(&r, r.thread).ctx("root buffer")?;
        root_page.buffer().set_caps(&[shared.mem, b.aspace()]);
        let va_b = next_va(1);
        let m = call(
            ep.0,
            MsgInfo::new(1, 1, 2).with(flags),
            [va_b as u64, 0, 0, 0],
        )
        .ctx("call mapper")?;
        ensure_eq!(m.words[..2], [0, 2], "map result and capabilities received");
        ensure_eq!(mapper.join(WAIT_YIELDS), Some(0));
        // B reads what we wrote, and then what we write next.
        let load = |addr: usize| {
            call(
                load_ep.0,
                MsgInfo::new(0, 1, 0).with(flags),
                [addr as u64, 0, 0, 0],
            )
            .map(|m| m.words[0])
        };
        let first = load(va_b + 16).ctx("load 1")?;
        // SAFETY: as above.
        unsafe { ((shared.va() + 16) as *mut u64).write_volatile(0xfeed_beef) };
        let second = load(va_b + 16).ctx("load 2")?;
        ensure_eq!((first, second), (0x5ca1_ab1e, 0xfeed_beef));
        drop(root_page);
        drop(b);
        Ok((first, second))
    })
}

// ---- blocked threads that lose their partner or endpoint ----

pub fn blocked_sender_killed_leaves_the_queue() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let mut t = Thread::spawn(send_one, 1).ctx("spawn")?;
        yield_n(3);
        ensure_eq!(get(1), None, "the sender did not block");
        t.kill().ctx("kill")?;
        let after = recv(ep.0, flags | MsgInfo::NONBLOCK).map(|_| ());
        ensure_eq!(
            after,
            Err(Error::WouldBlock),
            "a killed sender's message stayed queued"
        );
        Ok(after)
    })
}

pub fn blocked_receiver_suspended_returns_an_error() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let t = Thread::spawn(receive_one, 1).ctx("spawn")?;
        yield_n(3);
        ensure_eq!(get(1), None, "the receiver did not block");
        thread_suspend(t.token()).ctx("suspend")?;
        // A suspended thread is no longer waiting.
        let nb = MsgInfo::new(1, 0, 0).with(flags | MsgInfo::NONBLOCK);
        ensure_eq!(send(ep.0, nb, [0; 4]), Err(Error::WouldBlock));
        thread_resume(t.token()).ctx("resume")?;
        let got = wait_for(1).ctx("report")?;
        ensure!(
            matches!(got, Err(Error::InvalidState)),
            "recv of a suspended thread returned {got:?}"
        );
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        Ok(got.map(|m| seen(&m)))
    })
}

pub fn caller_killed_before_the_reply() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let mut t = Thread::spawn(call_one, 1).ctx("spawn")?;
        let m = recv(ep.0, flags).ctx("recv")?;
        t.kill().ctx("kill the caller")?;
        let answered = reply(MsgInfo::new(0, 0, 0).with(flags), [0; 4]);
        ensure_eq!(answered, Err(Error::Disconnected));
        // The reply capability is used up.
        ensure_eq!(
            reply(MsgInfo::new(0, 0, 0).with(flags), [0; 4]),
            Err(Error::InvalidState)
        );
        Ok((seen(&m), answered))
    })
}

pub fn server_killed_mid_call_disconnects_the_caller() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let mut server = Thread::spawn(receive_and_hold, 0).ctx("spawn server")?;
        let killer =
            Thread::spawn(kill_when_received, server.token().raw() as usize).ctx("spawn killer")?;
        let got = call(ep.0, MsgInfo::new(9, 1, 0).with(flags), [1, 0, 0, 0]).map(|_| ());
        ensure_eq!(got, Err(Error::Disconnected));
        ensure_eq!(killer.join(WAIT_YIELDS), Some(0));
        ensure_eq!(get(1), Some(Ok(Message::default())), "the kill succeeded");
        server.kill().ctx("release")?;
        // A server that exits without answering: the same.
        reset(ep.0, flags);
        let server = Thread::spawn(receive_and_exit, 0).ctx("spawn server")?;
        let exited = call(ep.0, MsgInfo::new(9, 1, 0).with(flags), [1, 0, 0, 0]).map(|_| ());
        ensure_eq!(exited, Err(Error::Disconnected));
        ensure_eq!(server.join(WAIT_YIELDS), Some(0));
        Ok((got, exited))
    })
}

pub fn endpoint_deleted_under_blocked_threads() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let mut out = Vec::new();
        for (what, func) in [
            ("receiver", receive_one as fn(usize) -> i32),
            ("sender", send_one),
            ("caller", call_one),
        ] {
            let ep = endpoint_create(r.pool).ctx("endpoint")?;
            reset(ep, flags);
            let t = Thread::spawn(func, 1).ctx("spawn")?;
            yield_n(3);
            ensure_eq!(get(1), None, "the {what} did not block");
            cap_delete(ep).ctx("delete the endpoint")?;
            let got = wait_for(1).ctx("report")?.map(|_| ());
            ensure!(
                matches!(got, Err(Error::Disconnected)),
                "the blocked {what} got {got:?}"
            );
            ensure_eq!(t.join(WAIT_YIELDS), Some(0));
            out.push(got);
        }
        Ok(out)
    })
}

// ---- IPC buffers ----

pub fn ipc_buffer_is_checked() -> TestResult {
    let r = root()?;
    let page = Page::new(&r).ctx("page")?;
    let thread_ro = Owned(cap_derive(r.thread, Rights::READ, NO_BADGE).ctx("derive")?);
    let set = |thread: CapToken, va: usize| {
        // SAFETY: every case below is refused, or names `page`, which
        // nothing else uses, or 0 (none).
        unsafe { thread_set_ipc_buffer(thread, va) }
    };
    ensure_eq!(
        set(r.thread, page.va() + 8),
        Err(Error::InvalidArgument),
        "unaligned"
    );
    for va in [1 << 47, usize::MAX & !(PAGE - 1), 0xffff_8000_0000_0000] {
        let got = set(r.thread, va);
        ensure!(
            matches!(got, Err(Error::InvalidArgument | Error::BadAddress)),
            "non-user address {va:#x}: {got:?}"
        );
    }
    ensure_eq!(set(r.pool, page.va()), Err(Error::WrongObjectType));
    ensure_eq!(
        set(stale(r.thread), page.va()),
        Err(Error::InvalidCapability)
    );
    ensure_eq!(set(thread_ro.0, page.va()), Err(Error::AccessDenied));
    ensure_eq!(set(r.thread, page.va()), Ok(()));
    ensure_eq!(set(r.thread, 0), Ok(()), "unset");
    // A page that is not mapped: refused when set, or when a long message
    // is sent from it (to a waiting receiver, which gets nothing).
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        reset(ep.0, flags);
        let receiver = Thread::create(receive_one, 1).ctx("create")?;
        let receiver_page = IpcPage::new(&r, receiver.token()).ctx("receiver buffer")?;
        receiver.resume().ctx("resume")?;
        yield_n(3);
        let unmapped = next_va(1);
        let at_set = set(r.thread, unmapped);
        let got = match at_set {
            Ok(()) => send(ep.0, MsgInfo::new(1, 8, 0).with(flags), [0; 4]),
            Err(e) => Err(e),
        };
        let _ = set(r.thread, 0);
        ensure_eq!(
            got,
            Err(Error::BadAddress),
            "long message from an unmapped buffer"
        );
        ensure_eq!(get(1), None, "the receiver got a message");
        send(ep.0, MsgInfo::new(2, 0, 0).with(flags), [0; 4]).ctx("good send")?;
        ensure_eq!(wait_for(1).map(|r| r.map(|m| m.info.label())), Some(Ok(2)));
        ensure_eq!(receiver.join(WAIT_YIELDS), Some(0));
        drop(receiver_page);
        Ok((at_set.is_ok(), got))
    })?;
    Ok(())
}

// ---- notifications ----

pub fn notifications_signal_wait_poll() -> TestResult {
    let r = root()?;
    let ntfn = Owned(notification_create(r.pool).ctx("notification")?);
    ensure_eq!(poll(ntfn.0), Ok(0), "nothing signalled");
    signal(ntfn.0, 0b101).ctx("signal")?;
    signal(ntfn.0, 0b011).ctx("signal")?;
    ensure_eq!(poll(ntfn.0), Ok(0b111), "bits are ORed");
    ensure_eq!(poll(ntfn.0), Ok(0), "poll clears");
    // A badged capability ORs its badge in.
    let badged = Owned(cap_derive(ntfn.0, Rights::WRITE, 0x100).ctx("badge")?);
    signal(badged.0, 0).ctx("signal badged")?;
    signal(badged.0, 1).ctx("signal badged")?;
    ensure_eq!(poll(ntfn.0), Ok(0x101));
    // Wait returns at once when bits are pending.
    signal(ntfn.0, 1 << 40).ctx("signal")?;
    ensure_eq!(wait(ntfn.0), Ok(1 << 40));
    ensure_eq!(poll(ntfn.0), Ok(0), "wait clears");
    // Wait blocks until a signal.
    reset(ntfn.0, 0);
    let t = Thread::spawn(wait_one, 1).ctx("spawn waiter")?;
    yield_n(5);
    ensure_eq!(get(1), None, "wait returned without a signal");
    signal(badged.0, 0x40).ctx("signal")?;
    let got = wait_for(1).ctx("report")?.ctx("wait")?;
    ensure_eq!(got.badge, 0x140);
    ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    ensure_eq!(poll(ntfn.0), Ok(0), "the waiter took the bits");
    // A waiter whose notification is deleted is not left hanging.
    let gone = notification_create(r.pool).ctx("notification")?;
    reset(gone, 0);
    let t = Thread::spawn(wait_one, 2).ctx("spawn waiter")?;
    yield_n(3);
    cap_delete(gone).ctx("delete")?;
    let got = wait_for(2).ctx("report after delete")?;
    ensure!(
        got.is_err(),
        "wait on a deleted notification returned {got:?}"
    );
    ensure_eq!(t.join(WAIT_YIELDS), Some(0));
    Ok(())
}

pub fn bound_notification_wakes_recv() -> TestResult {
    let r = root()?;
    on_both_paths(|flags| {
        let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
        let ntfn = Owned(notification_create(r.pool).ctx("notification")?);
        let ntfn_wo = Owned(cap_derive(ntfn.0, Rights::WRITE, NO_BADGE).ctx("derive")?);
        let thread_ro = Owned(cap_derive(r.thread, Rights::READ, NO_BADGE).ctx("derive")?);
        ensure_eq!(
            notification_bind(r.pool, ntfn.0),
            Err(Error::WrongObjectType)
        );
        ensure_eq!(
            notification_bind(r.thread, ep.0),
            Err(Error::WrongObjectType)
        );
        ensure_eq!(
            notification_bind(r.thread, ntfn_wo.0),
            Err(Error::AccessDenied)
        );
        ensure_eq!(
            notification_bind(thread_ro.0, ntfn.0),
            Err(Error::AccessDenied)
        );
        ensure_eq!(
            notification_bind(stale(r.thread), ntfn.0),
            Err(Error::InvalidCapability)
        );
        // A blocked receiver is woken by a signal.
        reset(ep.0, flags);
        let t = Thread::create(receive_one, 1).ctx("create")?;
        notification_bind(t.token(), ntfn.0).ctx("bind")?;
        t.resume().ctx("resume")?;
        yield_n(3);
        ensure_eq!(get(1), None, "recv returned without a message");
        signal(ntfn.0, 0x9).ctx("signal")?;
        let woken = wait_for(1).ctx("report")?.ctx("recv")?;
        ensure!(woken.is_notification(), "{woken:?}");
        ensure_eq!(woken.badge, 0x9);
        ensure_eq!(t.join(WAIT_YIELDS), Some(0));
        ensure_eq!(poll(ntfn.0), Ok(0), "recv took the bits");
        // Pending bits make a recv return at once (a second notification:
        // the first stays bound to the helper until its thread is gone).
        let ntfn2 = Owned(notification_create(r.pool).ctx("notification")?);
        notification_bind(r.thread, ntfn2.0).ctx("bind root")?;
        signal(ntfn2.0, 0x30).ctx("signal")?;
        let pending = recv(ep.0, flags | MsgInfo::NONBLOCK).ctx("recv pending")?;
        ensure!(pending.is_notification(), "{pending:?}");
        ensure_eq!(pending.badge, 0x30);
        // Unbound: a recv no longer sees them; they stay pending.
        notification_bind(r.thread, CapToken::NULL).ctx("unbind")?;
        ensure_eq!(
            notification_bind(r.thread, CapToken::NULL),
            Err(Error::InvalidState),
            "unbind twice"
        );
        signal(ntfn2.0, 0x2).ctx("signal")?;
        ensure_eq!(
            recv(ep.0, flags | MsgInfo::NONBLOCK).map(|_| ()),
            Err(Error::WouldBlock)
        );
        ensure_eq!(poll(ntfn2.0), Ok(0x2));
        Ok((seen(&woken), woken.is_notification(), seen(&pending)))
    })
}

// ---- fault handlers ----

static FAULT_REACHED: AtomicUsize = AtomicUsize::new(0);
static FAULT_SEEN: AtomicU64 = AtomicU64::new(0);

/// Loads the word at `addr` (unmapped at first) and records it.
fn load_after_fault(addr: usize) -> i32 {
    FAULT_REACHED.store(1, Ordering::Release);
    // SAFETY: the thread is alone in its process; the fault is the point,
    // and its handler either maps the page or kills the process.
    let v = unsafe { probe::load_u64(addr) };
    FAULT_SEEN.store(v, Ordering::Release);
    0
}

/// Runs [`load_after_fault`] in a process of its own with a fault handler
/// (a badged endpoint); receives the fault message and answers with
/// `answer` (mapping a page there first if it is `FAULT_RESUME`). Returns
/// the fault message, the thread's exit code, and what it loaded.
fn fault_to_handler(flags: u64, answer: u64) -> Result<(Seen, u64, Option<i32>, u64), String> {
    let r = root()?;
    FAULT_REACHED.store(0, Ordering::Release);
    FAULT_SEEN.store(0, Ordering::Release);
    let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
    let handler = Owned(cap_derive(ep.0, Rights::READ | Rights::WRITE, 0xfa).ctx("badge")?);
    let cs = Owned(cap_space_create(r.pool, 8).ctx("cap space")?);
    let target = next_va(1) + 0x18;
    let t = Thread::create_in(cs.0, load_after_fault, target).ctx("create")?;
    ensure_eq!(
        thread_set_fault_handler(r.pool, handler.0),
        Err(Error::WrongObjectType)
    );
    ensure_eq!(
        thread_set_fault_handler(t.token(), r.pool),
        Err(Error::WrongObjectType)
    );
    ensure_eq!(
        thread_set_fault_handler(t.token(), stale(ep.0)),
        Err(Error::InvalidCapability)
    );
    thread_set_fault_handler(t.token(), handler.0).ctx("set handler")?;
    t.resume().ctx("resume")?;
    let m = recv(ep.0, flags).ctx("recv the fault")?;
    ensure_eq!(FAULT_REACHED.load(Ordering::Acquire), 1, "the thread ran");
    ensure!(m.is_fault(), "not a fault message: {m:?}");
    ensure_eq!(m.info.label(), 1, "page fault");
    ensure_eq!(m.info.len(), FAULT_WORDS);
    ensure_eq!(m.badge, 0xfa);
    ensure_eq!(m.words[..2], [1, target as u64], "code and address");
    ensure!(m.words[2] != 0, "no pc");
    let mut page = None;
    if answer == FAULT_RESUME {
        let mem = Owned(mem_create(r.pool, 1, 0).ctx("mem")?);
        let base = target & !(PAGE - 1);
        map(r.aspace, mem.0, base, 0, 1, PROT_WRITE).ctx("map")?;
        // SAFETY: just mapped writable; only the faulting thread reads it.
        unsafe { (target as *mut u64).write_volatile(0xabcd_0123) };
        page = Some((mem, base));
    }
    reply(MsgInfo::new(answer, 0, 0).with(flags), [0; 4]).ctx("reply")?;
    let code = t.join(WAIT_YIELDS);
    let loaded = FAULT_SEEN.load(Ordering::Acquire);
    if answer == FAULT_KILL {
        ensure_eq!(
            thread_resume(t.token()),
            Err(Error::InvalidState),
            "the thread still exists"
        );
    }
    drop(t);
    if let Some((_mem, base)) = page {
        // SAFETY: the thread has finished; nothing uses the page.
        unsafe { unmap(r.aspace, base, 1) }.ctx("unmap")?;
    }
    Ok((
        seen(&m),
        m.words[1].wrapping_sub(target as u64),
        code,
        loaded,
    ))
}

pub fn fault_handler_maps_and_resumes() -> TestResult {
    if !FAULT_TESTS {
        return Ok(());
    }
    on_both_paths(|flags| {
        let out = fault_to_handler(flags, FAULT_RESUME)?;
        ensure_eq!(
            (out.2, out.3),
            (Some(0), 0xabcd_0123),
            "exit code and loaded word"
        );
        // The pc differs per build; compare the rest.
        Ok((out.0.0, out.0.1, out.0.3, out.1, out.2, out.3))
    })
}

pub fn fault_handler_kills() -> TestResult {
    if !FAULT_TESTS {
        return Ok(());
    }
    on_both_paths(|flags| {
        let out = fault_to_handler(flags, FAULT_KILL)?;
        ensure_eq!((out.2, out.3), (None, 0), "the thread did not survive");
        Ok((out.0.0, out.0.1, out.0.3, out.1, out.2, out.3))
    })
}

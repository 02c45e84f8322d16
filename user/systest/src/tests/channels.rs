//! Channels, the name registry and fairness under flooding, on the real
//! kernel: a channel ring (`keel_rt::channel`) between two threads over a
//! memory object mapped twice (as two processes would map it), with
//! notification wake-ups, batches and back-pressure; the registry server
//! (`keel_rt::registry`) in a process of its own, with endpoint
//! capabilities sent to it and back; and a server flooded by one client's
//! threads that must still serve another client within a bounded number of
//! iterations, without the flood consuming memory.
//!
//! Also the channel benchmarks ([`channel_stream`],
//! [`channel_stream_batched`], [`channel_ring_only`]), with the signature
//! of `bench.rs`'s table, so they can be added to it as rows.
//!
//! There is no preemption and one CPU: a thread runs until it blocks or
//! yields, so the tests can say exactly when a producer must be blocked.
//! Helper threads read their set-up from a value on the root thread's
//! stack that outlives them (each test joins or kills its threads before
//! returning, and declares them after what they use, so they are dropped —
//! killed — first), and report through the statics below.

use super::{PAGE, Root, WAIT_YIELDS, next_va, root, wait_until, yield_n};
use crate::harness::{Ctx, TestResult};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::{PROT_WRITE, SystemInfoKey};
use keel_rt::channel::{
    self, ChannelError, ChannelStats, Consumer, Geometry, NotificationWakeup, Producer, words_at,
};
use keel_rt::ipc::{
    Buffer, MsgInfo, call, endpoint_create, notification_create, recv, reply, reply_recv, signal,
    thread_set_ipc_buffer, wait,
};
use keel_rt::registry::{self, Name, RegistryError, RegistryServer};
use keel_rt::syscall::{
    cap_delete, cap_derive, cap_grant, cap_identify, cap_space_create, cycles, map, mem_create,
    pool_available, system_info, thread_set_priority, unmap,
};
use keel_rt::thread::Thread;

/// Priority of every thread here (and of the root thread): the kernel's
/// default.
const PRIORITY: usize = 10;

// ---- owned objects ----

/// A capability deleted when dropped.
struct Owned(CapToken);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = cap_delete(self.0);
    }
}

/// A memory object of `pages` pages mapped writable at two addresses of the
/// root task's address space: the producer's view and the consumer's, as
/// two processes would each map it. Unmapped and deleted when dropped.
struct SharedRegion {
    mem: CapToken,
    aspace: CapToken,
    views: [usize; 2],
    pages: usize,
}

impl SharedRegion {
    fn new(r: &Root, bytes: usize) -> Result<SharedRegion, Error> {
        let pages = bytes.div_ceil(PAGE);
        let mut region = SharedRegion {
            mem: mem_create(r.pool, pages, 0)?,
            aspace: r.aspace,
            views: [0; 2],
            pages,
        };
        for view in 0..2 {
            let va = next_va(pages);
            map(r.aspace, region.mem, va, 0, pages, PROT_WRITE)?;
            region.views[view] = va;
        }
        Ok(region)
    }

    /// The words of view `view` (0 or 1).
    fn words(&self, view: usize) -> &[AtomicU64] {
        // SAFETY: the view is mapped writable and page-aligned while
        // `self` lives, and is only accessed through `AtomicU64`s (here
        // and in the helper threads, via `words_at`).
        unsafe { words_at(self.views[view], self.pages * PAGE) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        for va in self.views {
            if va != 0 {
                // SAFETY: the threads using the view were joined or killed
                // (they are dropped before the region).
                let _ = unsafe { unmap(self.aspace, va, self.pages) };
            }
        }
        let _ = cap_delete(self.mem);
    }
}

/// A fresh page mapped writable, to be some thread's IPC buffer;
/// unregistered, unmapped and freed when dropped.
struct IpcPage {
    thread: Option<CapToken>,
    aspace: CapToken,
    /// The page's memory object, deleted (after the unmap) when dropped.
    _mem: Owned,
    va: usize,
}

impl IpcPage {
    fn new(r: &Root) -> Result<IpcPage, Error> {
        let mem = Owned(mem_create(r.pool, 1, 0)?);
        let va = next_va(1);
        map(r.aspace, mem.0, va, 0, 1, PROT_WRITE)?;
        Ok(IpcPage {
            thread: None,
            aspace: r.aspace,
            _mem: mem,
            va,
        })
    }

    /// A new page registered as `thread`'s IPC buffer.
    fn for_thread(r: &Root, thread: CapToken) -> Result<IpcPage, Error> {
        let mut page = IpcPage::new(r)?;
        page.register(thread)?;
        Ok(page)
    }

    /// Registers the page as `thread`'s IPC buffer.
    fn register(&mut self, thread: CapToken) -> Result<(), Error> {
        // SAFETY: the page is mapped writable, fresh, and only reached
        // through `Buffer` until it is unregistered in `drop`.
        unsafe { thread_set_ipc_buffer(thread, self.va) }?;
        self.thread = Some(thread);
        Ok(())
    }

    fn buffer(&self) -> Buffer {
        // SAFETY: the page is mapped while `self` lives, and used only as
        // an IPC buffer.
        unsafe { Buffer::at(self.va) }
    }
}

impl Drop for IpcPage {
    fn drop(&mut self) {
        if let Some(thread) = self.thread {
            // SAFETY: unregistering takes the page away from the kernel.
            let _ = unsafe { thread_set_ipc_buffer(thread, 0) };
        }
        // SAFETY: nothing uses the page any more (its thread was
        // unregistered above, or is gone).
        let _ = unsafe { unmap(self.aspace, self.va, 1) };
        // `mem` is deleted after this, with the fields.
    }
}

// ---- a channel between two threads ----

/// A ring in a [`SharedRegion`] and a notification for each side.
struct TestChannel {
    region: SharedRegion,
    geo: Geometry,
    producer_ntfn: Owned,
    consumer_ntfn: Owned,
}

impl TestChannel {
    fn new(r: &Root, geo: Geometry) -> Result<TestChannel, Error> {
        let region = SharedRegion::new(r, geo.bytes())?;
        channel::init(region.words(0), geo)?;
        Ok(TestChannel {
            region,
            geo,
            producer_ntfn: Owned(notification_create(r.pool)?),
            consumer_ntfn: Owned(notification_create(r.pool)?),
        })
    }

    fn producer_wakeup(&self) -> NotificationWakeup {
        NotificationWakeup {
            peer: self.consumer_ntfn.0,
            bits: 1,
            own: self.producer_ntfn.0,
        }
    }

    fn consumer_wakeup(&self) -> NotificationWakeup {
        NotificationWakeup {
            peer: self.producer_ntfn.0,
            bits: 1,
            own: self.consumer_ntfn.0,
        }
    }

    /// The producer, on view 0.
    fn producer(&self) -> Result<Producer<'_, NotificationWakeup>, ChannelError> {
        Producer::attach(self.region.words(0), self.producer_wakeup())
    }

    /// The consumer, on view 1.
    fn consumer(&self) -> Result<Consumer<'_, NotificationWakeup>, ChannelError> {
        Consumer::attach(self.region.words(1), self.consumer_wakeup())
    }

    /// What a helper thread needs to run one side on `view`.
    fn side(&self, view: usize, wakeup: NotificationWakeup, messages: u64, batch: usize) -> Side {
        Side {
            va: self.region.views[view],
            bytes: self.geo.bytes(),
            wakeup,
            messages,
            batch,
            done: CapToken::NULL,
        }
    }
}

/// A helper thread's side of a channel: its view, its wake-up, how many
/// messages, in batches of how many (1: one at a time), and a notification
/// to signal when done (`NULL`: none).
#[derive(Clone, Copy)]
struct Side {
    va: usize,
    bytes: usize,
    wakeup: NotificationWakeup,
    messages: u64,
    batch: usize,
    done: CapToken,
}

impl Side {
    fn arg(&self) -> usize {
        self as *const Side as usize
    }

    /// The side a helper thread was started with.
    ///
    /// # Safety
    /// `arg` must come from [`Side::arg`] of a `Side` that outlives the
    /// thread, whose region stays mapped as long.
    unsafe fn load(arg: usize) -> (Side, &'static [AtomicU64]) {
        // SAFETY: per the contract, `arg` points at a live `Side`.
        let side = unsafe { *(arg as *const Side) };
        // SAFETY: the region is mapped (and only used atomically) for the
        // thread's life.
        (side, unsafe { words_at(side.va, side.bytes) })
    }
}

/// Message `n`: up to four words, all derived from `n`.
fn pattern(n: u64) -> [u64; 4] {
    [n, !n, n.rotate_left(17), n ^ 0x5555_aaaa]
}

/// Length of message `n` in words: 1 to 4.
fn msg_len(n: u64) -> usize {
    (n % 4) as usize + 1
}

/// What the helper thread's side did, stored when it finishes.
static HELPER_STATS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Messages the helper producer has sent so far.
static HELPER_SENT: AtomicU64 = AtomicU64::new(0);

fn store_stats(s: ChannelStats) {
    for (slot, v) in HELPER_STATS
        .iter()
        .zip([s.messages, s.batches, s.wakeups_sent, s.sleeps])
    {
        slot.store(v, Ordering::Release);
    }
}

fn helper_stats() -> ChannelStats {
    let v: [u64; 4] = core::array::from_fn(|i| HELPER_STATS[i].load(Ordering::Acquire));
    ChannelStats {
        messages: v[0],
        batches: v[1],
        wakeups_sent: v[2],
        sleeps: v[3],
    }
}

fn reset_helper() {
    store_stats(ChannelStats::default());
    HELPER_SENT.store(0, Ordering::Release);
}

/// Receives `side.messages` messages ([`pattern`]), one at a time or in
/// batches, checking each. 0 when all arrived intact and in order.
fn consumer_thread(arg: usize) -> i32 {
    // SAFETY: started by the tests below with a `Side` that outlives us.
    let (side, mem) = unsafe { Side::load(arg) };
    let Ok(mut c) = Consumer::attach(mem, side.wakeup) else {
        return 1;
    };
    let mut expect = 0u64;
    while expect < side.messages {
        if side.batch <= 1 {
            let mut out = [0u64; 4];
            match c.recv(&mut out) {
                Ok(len) if len == msg_len(expect) && out[..len] == pattern(expect)[..len] => {
                    expect += 1
                }
                Ok(_) => return 2,
                Err(_) => return 3,
            }
        } else {
            let mut bad = false;
            let r = c.recv_batch(side.batch, |s| {
                let mut out = [0u64; 4];
                let n = s.read_words(&mut out);
                bad |= n != 4 || out != pattern(expect);
                expect += 1;
            });
            if r.is_err() || bad {
                return 4;
            }
        }
    }
    store_stats(c.stats());
    if side.done != CapToken::NULL && signal(side.done, 1).is_err() {
        return 5;
    }
    0
}

/// Sends `side.messages` messages ([`pattern`]) one at a time, counting
/// them in [`HELPER_SENT`]. 0 when all were sent.
fn producer_thread(arg: usize) -> i32 {
    // SAFETY: started by the tests below with a `Side` that outlives us.
    let (side, mem) = unsafe { Side::load(arg) };
    let Ok(mut p) = Producer::attach(mem, side.wakeup) else {
        return 1;
    };
    for n in 0..side.messages {
        if p.send(&pattern(n)[..msg_len(n)]).is_err() {
            return 2;
        }
        HELPER_SENT.fetch_add(1, Ordering::AcqRel);
    }
    store_stats(p.stats());
    0
}

pub fn channel_transfers_messages_between_threads() -> TestResult {
    const N: u64 = 2000;
    let r = root()?;
    let geo = Geometry::new(16, 4).ctx("geometry")?;
    let ch = TestChannel::new(&r, geo).ctx("channel")?;
    reset_helper();
    let side = ch.side(1, ch.consumer_wakeup(), N, 1);
    let mut p = ch.producer().ctx("attach producer")?;
    let t = Thread::spawn(consumer_thread, side.arg()).ctx("spawn consumer")?;
    for n in 0..N {
        p.send(&pattern(n)[..msg_len(n)]).ctx("send")?;
    }
    ensure_eq!(t.join(WAIT_YIELDS), Some(0), "consumer result");
    let (ps, cs) = (p.stats(), helper_stats());
    ensure_eq!(cs.messages, N);
    // Sixteen slots for 2000 messages: the producer slept when the ring
    // was full, the consumer when it was empty, each woken by the other.
    ensure!(
        ps.sleeps > 0 && cs.sleeps > 0,
        "producer {ps:?}, consumer {cs:?}"
    );
    ensure!(
        ps.sleeps <= cs.wakeups_sent && cs.sleeps <= ps.wakeups_sent,
        "every sleep needs a wake-up: producer {ps:?}, consumer {cs:?}"
    );
    // The kernel is entered for wake-ups only, not per message.
    ensure!(
        ps.wakeups_sent + cs.wakeups_sent <= N / 4,
        "producer {ps:?}, consumer {cs:?}"
    );
    Ok(())
}

pub fn channel_batches_wake_once_per_batch() -> TestResult {
    const N: u64 = 1024;
    const BATCH: usize = 8;
    let r = root()?;
    let geo = Geometry::new(32, 4).ctx("geometry")?;
    let ch = TestChannel::new(&r, geo).ctx("channel")?;
    reset_helper();
    let side = ch.side(1, ch.consumer_wakeup(), N, 16);
    let mut p = ch.producer().ctx("attach producer")?;
    let t = Thread::spawn(consumer_thread, side.arg()).ctx("spawn consumer")?;
    let mut n = 0u64;
    while n < N {
        let msgs: [[u64; 4]; BATCH] = core::array::from_fn(|i| pattern(n + i as u64));
        let refs: [&[u64]; BATCH] = core::array::from_fn(|i| &msgs[i][..]);
        p.send_batch(&refs).ctx("send_batch")?;
        n += BATCH as u64;
    }
    ensure_eq!(t.join(WAIT_YIELDS), Some(0), "consumer result");
    let (ps, cs) = (p.stats(), helper_stats());
    ensure_eq!(cs.messages, N);
    // One publication (and at most one signal) per batch, or fewer when
    // the ring had room for part of one only.
    ensure!(ps.batches <= 2 * N / BATCH as u64, "producer {ps:?}");
    ensure!(ps.wakeups_sent <= ps.batches, "producer {ps:?}");
    // Each time the consumer ran it took whole batches: on average at
    // least a batch per release.
    ensure!(cs.messages >= BATCH as u64 * cs.batches, "consumer {cs:?}");
    ensure!(
        cs.sleeps >= 1 && ps.wakeups_sent >= 1,
        "producer {ps:?}, consumer {cs:?}"
    );
    Ok(())
}

pub fn channel_back_pressure_blocks_the_producer_until_drained() -> TestResult {
    const N: u64 = 40;
    let r = root()?;
    let geo = Geometry::new(4, 4).ctx("geometry")?;
    let ch = TestChannel::new(&r, geo).ctx("channel")?;
    let mut c = ch.consumer().ctx("attach consumer")?;
    let mut out = [0u64; 4];

    // Non-blocking: a full ring refuses the message.
    {
        let mut p = ch.producer().ctx("attach producer")?;
        for i in 0..4 {
            p.try_send(&[i]).ctx("try_send")?;
        }
        ensure_eq!(p.try_send(&[4]), Err(ChannelError::Full));
        ensure_eq!(Error::from(ChannelError::Full), Error::WouldBlock);
        for i in 0..4 {
            ensure_eq!(c.try_recv(&mut out), Ok(1));
            ensure_eq!(out[0], i);
        }
        ensure_eq!(c.try_recv(&mut out), Err(ChannelError::Empty));
    }

    // Blocking: a producer thread fills the ring and sleeps.
    reset_helper();
    let side = ch.side(0, ch.producer_wakeup(), N, 1);
    let t = Thread::spawn(producer_thread, side.arg()).ctx("spawn producer")?;
    wait_until(|| HELPER_SENT.load(Ordering::Acquire) == 4);
    ensure_eq!(
        HELPER_SENT.load(Ordering::Acquire),
        4,
        "sent before blocking"
    );
    yield_n(20);
    ensure_eq!(HELPER_SENT.load(Ordering::Acquire), 4, "still blocked");
    ensure!(t.finished().is_none());
    // One free slot of four is below the wake-up mark: it stays asleep.
    ensure_eq!(c.try_recv(&mut out), Ok(msg_len(0)));
    yield_n(5);
    ensure_eq!(HELPER_SENT.load(Ordering::Acquire), 4, "one slot free");
    // Half the ring free: woken, it fills the ring again and sleeps.
    ensure_eq!(c.try_recv(&mut out), Ok(msg_len(1)));
    wait_until(|| HELPER_SENT.load(Ordering::Acquire) == 6);
    ensure_eq!(HELPER_SENT.load(Ordering::Acquire), 6, "two slots free");
    ensure_eq!(c.stats().wakeups_sent, 1);
    // Drain the rest, sleeping when it is empty: everything arrives.
    for n in 2..N {
        let len = c.recv(&mut out).ctx("recv")?;
        ensure_eq!(len, msg_len(n));
        ensure_eq!(out[..len], pattern(n)[..len], "message {n}");
    }
    ensure_eq!(t.join(WAIT_YIELDS), Some(0), "producer result");
    let ps = helper_stats();
    ensure_eq!(ps.messages, N);
    ensure!(ps.sleeps >= 2, "producer {ps:?}");
    ensure_eq!(c.try_recv(&mut out), Err(ChannelError::Empty));
    Ok(())
}

// ---- the registry ----

/// Badge of the registry's administrator capability (may shut it down).
const ADMIN: u64 = 0xad;
/// Badges of two registry clients.
const CLIENT_A: u64 = 0xa;
const CLIENT_B: u64 = 0xb;
/// Label that stops [`echo_thread`].
const ECHO_STOP: u64 = 99;

/// The registry server thread's set-up: its endpoint (a token in its own
/// capability space) and its IPC buffer.
#[derive(Clone, Copy)]
struct RegistryConfig {
    ep: CapToken,
    buffer: usize,
}

/// Runs a [`RegistryServer`]; returns the requests it served, or minus
/// the error that stopped it.
fn registry_thread(arg: usize) -> i32 {
    // SAFETY: the test passes a `RegistryConfig` that outlives us.
    let cfg = unsafe { *(arg as *const RegistryConfig) };
    // SAFETY: the page is mapped and registered as our IPC buffer.
    let buf = unsafe { Buffer::at(cfg.buffer) };
    let mut server = RegistryServer::new(cfg.ep, buf, ADMIN);
    match server.run() {
        Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
        Err(e) => -(e as i32),
    }
}

/// Answers each call on the endpoint `arg` with its word 0 plus one, until
/// a call labelled [`ECHO_STOP`].
fn echo_thread(arg: usize) -> i32 {
    let ep = CapToken::from_raw(arg as u64);
    let Ok(mut msg) = recv(ep, 0) else {
        return 1;
    };
    loop {
        if msg.info.label() == ECHO_STOP {
            return if reply(MsgInfo::new(0, 0, 0), [0; 4]).is_ok() {
                0
            } else {
                2
            };
        }
        let answer = [msg.words[0].wrapping_add(1), 0, 0, 0];
        match reply_recv(ep, MsgInfo::new(0, 1, 0), answer) {
            Ok(m) => msg = m,
            Err(_) => return 3,
        }
    }
}

fn name(s: &str) -> Result<Name, alloc::string::String> {
    Name::new(s.as_bytes()).ctx("name")
}

/// Deletes `cap` if it is still there: whether a capability sent in a
/// message stays with the sender is the kernel's transfer rule.
fn delete_if_present(cap: CapToken) {
    let _ = cap_delete(cap);
}

pub fn registry_register_lookup_unregister() -> TestResult {
    let r = root()?;
    let reg_ep = Owned(endpoint_create(r.pool).ctx("registry endpoint")?);
    // The registry is a process of its own: a capability space holding its
    // endpoint and whatever it is sent.
    let cs = Owned(cap_space_create(r.pool, 64).ctx("cap_space_create")?);
    let server_ep = cap_grant(reg_ep.0, cs.0, Rights::READ | Rights::WRITE | Rights::GRANT)
        .ctx("grant the endpoint to the registry")?;
    let client = |badge| cap_derive(reg_ep.0, Rights::WRITE | Rights::GRANT, badge);
    let admin = Owned(client(ADMIN).ctx("admin capability")?);
    let a = Owned(client(CLIENT_A).ctx("client A capability")?);
    let b = Owned(client(CLIENT_B).ctx("client B capability")?);
    let svc = Owned(endpoint_create(r.pool).ctx("service endpoint")?);
    let root_buf = IpcPage::for_thread(&r, r.thread).ctx("root IPC buffer")?;
    let buf = root_buf.buffer();
    let mut server_buf = IpcPage::new(&r).ctx("registry IPC buffer")?;
    let cfg = RegistryConfig {
        ep: server_ep,
        buffer: server_buf.va,
    };
    let server = Thread::create_in(cs.0, registry_thread, &cfg as *const _ as usize)
        .ctx("registry thread")?;
    server_buf
        .register(server.token())
        .ctx("registry IPC buffer")?;
    thread_set_priority(server.token(), PRIORITY).ctx("priority")?;
    server.resume().ctx("resume registry")?;
    let echo = Thread::spawn(echo_thread, svc.0.raw() as usize).ctx("echo thread")?;

    // Register: the service endpoint, callable (WRITE) and passable on
    // (GRANT), through client A.
    let echo_name = name("echo")?;
    let offered = cap_derive(svc.0, Rights::WRITE | Rights::GRANT, NO_BADGE).ctx("derive")?;
    ensure_eq!(registry::register(a.0, buf, &echo_name, offered), Ok(()));
    delete_if_present(offered);
    // The same name again: refused (and the capability sent is not kept).
    let again = cap_derive(svc.0, Rights::WRITE | Rights::GRANT, NO_BADGE).ctx("derive")?;
    ensure_eq!(
        registry::register(b.0, buf, &echo_name, again),
        Err(RegistryError::AlreadyExists)
    );
    delete_if_present(again);
    // Something that is not an endpoint: refused by the registry.
    let ntfn = Owned(notification_create(r.pool).ctx("notification")?);
    let not_ep = cap_derive(ntfn.0, Rights::WRITE | Rights::GRANT, NO_BADGE).ctx("derive")?;
    ensure_eq!(
        registry::register(a.0, buf, &name("ntfn")?, not_ep),
        Err(RegistryError::BadCapability)
    );
    delete_if_present(not_ep);
    // An endpoint without GRANT cannot even be sent.
    let no_grant = cap_derive(svc.0, Rights::WRITE, NO_BADGE).ctx("derive")?;
    let refused = registry::register(a.0, buf, &name("nogrant")?, no_grant);
    ensure!(
        matches!(
            refused,
            Err(RegistryError::Kernel(Error::AccessDenied)) | Err(RegistryError::BadCapability)
        ),
        "{refused:?}"
    );
    delete_if_present(no_grant);

    // Lookup through client B: a capability of its own, which works.
    let found =
        Owned(registry::lookup(b.0, buf, &echo_name).map_err(|e| alloc::format!("lookup: {e:?}"))?);
    let id = cap_identify(found.0).ctx("identify the looked-up capability")?;
    ensure_eq!(id.object_type(), Some(ObjectType::Endpoint));
    ensure_eq!(id.rights(), Some(Rights::WRITE | Rights::GRANT));
    let answer = call(found.0, MsgInfo::new(1, 1, 0), [41, 0, 0, 0]).ctx("call the service")?;
    ensure_eq!(answer.words[0], 42);
    ensure_eq!(
        registry::lookup(b.0, buf, &name("missing")?),
        Err(RegistryError::NotFound)
    );

    // Unregister: only through the badge that registered it.
    ensure_eq!(
        registry::unregister(b.0, &echo_name),
        Err(RegistryError::NotAllowed)
    );
    ensure_eq!(registry::unregister(a.0, &echo_name), Ok(()));
    ensure_eq!(
        registry::lookup(b.0, buf, &echo_name),
        Err(RegistryError::NotFound)
    );
    ensure_eq!(
        registry::unregister(a.0, &echo_name),
        Err(RegistryError::NotFound)
    );
    // What was looked up before stays usable: deleting the registry's copy
    // keeps the copies made from it.
    let answer = call(found.0, MsgInfo::new(1, 1, 0), [7, 0, 0, 0]).ctx("call after unregister")?;
    ensure_eq!(answer.words[0], 8);

    // Shut down: only the administrator may.
    ensure_eq!(registry::shutdown(a.0), Err(RegistryError::NotAllowed));
    ensure_eq!(registry::shutdown(admin.0), Ok(()));
    let served = server.join(WAIT_YIELDS).ctx("registry finished")?;
    // Eleven requests reached it (twelve if the kernel let the endpoint
    // without GRANT through and the registry refused it).
    ensure!(served == 11 || served == 12, "requests served: {served}");
    call(svc.0, MsgInfo::new(ECHO_STOP, 0, 0), [0; 4]).ctx("stop echo")?;
    ensure_eq!(echo.join(WAIT_YIELDS), Some(0));
    Ok(())
}

// ---- a flooded server ----

/// Flooding threads (one client process).
const FLOODERS: usize = 4;
/// Calls the other client makes while the flood goes on.
const VICTIM_CALLS: u64 = 40;
/// Flooding calls after which the flooders give up: a watchdog, so that a
/// kernel that lets the flood starve the other client fails the test
/// instead of hanging the suite (the other client needs far fewer).
const FLOOD_LIMIT: u64 = 20_000;
/// Label of a flooding call, of the other client's, and of the call that
/// stops the server.
const FLOOD: u64 = 1;
const VICTIM: u64 = 2;
const SERVER_STOP: u64 = 3;

/// Messages the flooded server has handled (it counts before answering).
static SERVER_ITERATIONS: AtomicU64 = AtomicU64::new(0);
/// Flooding calls answered.
static FLOOD_CALLS: AtomicU64 = AtomicU64::new(0);
/// Set to end the flood.
static FLOOD_STOP: AtomicBool = AtomicBool::new(false);
/// Message flags of the flooding calls (`MsgInfo::SLOWPATH` or 0).
static FLOOD_FLAGS: AtomicU64 = AtomicU64::new(0);
/// Whether a flooder yields after each call (as a preempted thread would).
static FLOOD_YIELDS: AtomicBool = AtomicBool::new(false);
/// The first error a flooder saw (as `-code`), 0 if none.
static FLOOD_ERROR: AtomicI64 = AtomicI64::new(0);

/// Serves calls on endpoint `arg`, answering each with the server's
/// iteration number at the time, until a [`SERVER_STOP`] call.
fn counting_server(arg: usize) -> i32 {
    let ep = CapToken::from_raw(arg as u64);
    let Ok(mut msg) = recv(ep, 0) else {
        return 1;
    };
    loop {
        let iteration = SERVER_ITERATIONS.fetch_add(1, Ordering::AcqRel) + 1;
        if msg.info.label() == SERVER_STOP {
            return if reply(MsgInfo::new(0, 0, 0), [0; 4]).is_ok() {
                0
            } else {
                2
            };
        }
        match reply_recv(ep, MsgInfo::new(0, 1, 0), [iteration, 0, 0, 0]) {
            Ok(m) => msg = m,
            Err(_) => return 3,
        }
    }
}

/// Calls endpoint `arg` (a token in its own capability space) as fast as
/// it can until [`FLOOD_STOP`], or until the flood reached
/// [`FLOOD_LIMIT`] calls.
fn flooder(arg: usize) -> i32 {
    let ep = CapToken::from_raw(arg as u64);
    let info = MsgInfo::new(FLOOD, 1, 0).with(FLOOD_FLAGS.load(Ordering::Acquire));
    let yields = FLOOD_YIELDS.load(Ordering::Acquire);
    while !FLOOD_STOP.load(Ordering::Acquire) {
        match call(ep, info, [0; 4]) {
            Ok(_) => {
                if FLOOD_CALLS.fetch_add(1, Ordering::AcqRel) + 1 >= FLOOD_LIMIT {
                    return 0;
                }
            }
            Err(e) => {
                FLOOD_ERROR.store(-(e as i64), Ordering::Release);
                return 1;
            }
        }
        if yields {
            let _ = keel_rt::syscall::yield_now();
        }
    }
    0
}

/// Memory in use, as the pool and the kernel see it.
fn memory_level(r: &Root) -> Result<(usize, usize), alloc::string::String> {
    Ok((
        pool_available(r.pool).ctx("pool_available")?,
        system_info(SystemInfoKey::FreeFrames).ctx("FreeFrames")?,
    ))
}

/// [`FLOODERS`] threads of one client process call a server back to back
/// while the root thread, another client, makes [`VICTIM_CALLS`] calls;
/// every call with `flags`, and every client yielding between its calls if
/// `yields`. Every call of the
/// other client must be served within `FLOODERS + 1` server iterations of
/// being made (the flooders each have at most one call queued ahead of
/// it), while the flood goes on, and the flood must not change the pool's
/// or the kernel's free memory.
fn flood(flags: u64, yields: bool) -> TestResult {
    let r = root()?;
    SERVER_ITERATIONS.store(0, Ordering::Release);
    FLOOD_CALLS.store(0, Ordering::Release);
    FLOOD_STOP.store(false, Ordering::Release);
    FLOOD_ERROR.store(0, Ordering::Release);
    FLOOD_FLAGS.store(flags, Ordering::Release);
    FLOOD_YIELDS.store(yields, Ordering::Release);
    thread_set_priority(r.thread, PRIORITY).ctx("root priority")?;
    let ep = Owned(endpoint_create(r.pool).ctx("endpoint")?);
    let victim = Owned(cap_derive(ep.0, Rights::WRITE, VICTIM).ctx("victim capability")?);
    // The flooding client: a process of its own, whose threads all call
    // through one badged capability.
    let flood_cs = Owned(cap_space_create(r.pool, 16).ctx("flooder capability space")?);
    let badged =
        Owned(cap_derive(ep.0, Rights::WRITE | Rights::GRANT, FLOOD).ctx("flooder capability")?);
    let flood_ep = cap_grant(badged.0, flood_cs.0, Rights::WRITE).ctx("grant to the flooder")?;

    let server = Thread::create(counting_server, ep.0.raw() as usize).ctx("server")?;
    thread_set_priority(server.token(), PRIORITY).ctx("priority")?;
    server.resume().ctx("resume server")?;
    let mut flooders: [Option<Thread>; FLOODERS] = [const { None }; FLOODERS];
    for f in flooders.iter_mut() {
        let t = Thread::create_in(flood_cs.0, flooder, flood_ep.raw() as usize).ctx("flooder")?;
        thread_set_priority(t.token(), PRIORITY).ctx("priority")?;
        t.resume().ctx("resume flooder")?;
        *f = Some(t);
    }
    // Let every flooder queue its first call, and warm up our own path
    // (stack pages, the kernel's caches) before taking the memory level.
    yield_n(FLOODERS + 2);
    for _ in 0..3 {
        call(victim.0, MsgInfo::new(VICTIM, 1, 0), [0; 4]).ctx("warm-up call")?;
    }
    let level_before = memory_level(&r)?;
    let flood_before = FLOOD_CALLS.load(Ordering::Acquire);

    let mut worst = 0;
    let victim_info = MsgInfo::new(VICTIM, 1, 0).with(flags);
    for _ in 0..VICTIM_CALLS {
        if yields {
            yield_n(1);
        }
        // No preemption: nothing runs between this load and the call.
        let before = SERVER_ITERATIONS.load(Ordering::Acquire);
        let m = call(victim.0, victim_info, [0; 4]).ctx("victim call")?;
        let waited = m.words[0].wrapping_sub(before);
        ensure!(
            waited >= 1,
            "served at iteration {} before {before}",
            m.words[0]
        );
        worst = worst.max(waited);
    }
    let flood_after = FLOOD_CALLS.load(Ordering::Acquire);
    let level_after = memory_level(&r)?;

    FLOOD_STOP.store(true, Ordering::Release);
    for t in flooders.iter().flatten() {
        ensure_eq!(t.join(WAIT_YIELDS), Some(0), "flooder result");
    }
    call(ep.0, MsgInfo::new(SERVER_STOP, 0, 0), [0; 4]).ctx("stop the server")?;
    ensure_eq!(server.join(WAIT_YIELDS), Some(0), "server result");

    ensure_eq!(FLOOD_ERROR.load(Ordering::Acquire), 0, "flooder error");
    // The other client got the CPU while the flood went on: the flooders
    // did not run to their limit first.
    ensure!(
        flood_after < FLOOD_LIMIT,
        "starved: the flood made all its {FLOOD_LIMIT} calls (the last {} of them \
         after the other client's warm-up) before the other client's \
         {VICTIM_CALLS} calls were done",
        flood_after - flood_before
    );
    // The flood really went on meanwhile, and every call of the other
    // client was served behind at most one call of each flooding thread.
    let flood_during = flood_after - flood_before;
    ensure!(
        flood_during >= VICTIM_CALLS,
        "only {flood_during} flooding calls served during {VICTIM_CALLS} victim calls"
    );
    ensure!(
        worst <= FLOODERS as u64 + 1,
        "a call waited {worst} server iterations (flooders: {FLOODERS})"
    );
    // Blocked callers cost nothing: neither the pool nor the kernel's
    // free memory moved.
    ensure_eq!(level_after, level_before, "(pool pages, free frames)");
    Ok(())
}

/// Calls back to back, the kernel free to use its fast path: the case
/// that matters (a client does not choose the path).
pub fn a_flooding_client_cannot_starve_another() -> TestResult {
    flood(0, false)
}

/// The same, every call on the kernel's general path.
pub fn a_flooding_client_cannot_starve_another_slow_path() -> TestResult {
    flood(MsgInfo::SLOWPATH, false)
}

/// The same, fast path allowed, every client yielding between calls (as
/// a timer would preempt them): the endpoint's queue order alone.
pub fn a_yielding_flooding_client_cannot_starve_another() -> TestResult {
    flood(0, true)
}

// ---- benchmarks (rows for bench.rs) ----

/// Ticks for `iters` one-word messages through a 64-slot channel from the
/// root thread to a consumer thread, blocking sends and receives, batches
/// of `batch` (1: one at a time): per message, the ring operations plus the
/// wake-ups and thread switches (one of each per ring-full, amortised).
/// Setting up the channel and thread is not timed; the time ends when the
/// consumer has received everything (it signals a notification).
fn channel_transfer(iters: u64, batch: usize) -> Result<Option<u64>, Error> {
    let r = root().map_err(|_| Error::InvalidState)?;
    let geo = Geometry::new(64, 1).ok_or(Error::InvalidArgument)?;
    let ch = TestChannel::new(&r, geo)?;
    let done = Owned(notification_create(r.pool)?);
    let mut side = ch.side(1, ch.consumer_wakeup(), iters, batch);
    side.done = done.0;
    let mut p = ch.producer()?;
    let t = Thread::spawn(bench_consumer, side.arg())?;
    let t0 = cycles();
    let mut n = 0;
    while n < iters {
        if batch <= 1 {
            p.send(&[n])?;
            n += 1;
        } else {
            let k = (batch as u64).min(iters - n).min(16) as usize;
            let msgs: [[u64; 1]; 16] = core::array::from_fn(|i| [n + i as u64]);
            let refs: [&[u64]; 16] = core::array::from_fn(|i| &msgs[i][..]);
            p.send_batch(&refs[..k])?;
            n += k as u64;
        }
    }
    wait(done.0)?;
    let ticks = cycles().wrapping_sub(t0);
    match t.join(WAIT_YIELDS) {
        Some(0) => Ok(Some(ticks)),
        _ => Err(Error::InvalidState),
    }
}

/// The benchmark consumer: receives `side.messages` one-word messages
/// numbered from 0, then signals `side.done`.
fn bench_consumer(arg: usize) -> i32 {
    // SAFETY: started by `channel_transfer` with a `Side` that outlives us.
    let (side, mem) = unsafe { Side::load(arg) };
    let Ok(mut c) = Consumer::attach(mem, side.wakeup) else {
        return 1;
    };
    let mut expect = 0u64;
    let mut bad = false;
    while expect < side.messages {
        let r = c.recv_batch(side.batch.max(1), |s| {
            bad |= s.word(0) != expect;
            expect += 1;
        });
        if r.is_err() {
            return 2;
        }
    }
    if bad {
        return 3;
    }
    if signal(side.done, 1).is_err() {
        return 4;
    }
    0
}

/// Bench row: one-word messages one at a time between two threads.
pub fn channel_stream(iters: u64) -> Result<Option<u64>, Error> {
    channel_transfer(iters, 1)
}

/// Bench row: one-word messages in batches of 16 between two threads.
pub fn channel_stream_batched(iters: u64) -> Result<Option<u64>, Error> {
    channel_transfer(iters, 16)
}

/// Bench row: the ring alone, one thread: a non-blocking send and a
/// non-blocking receive of a one-word message per operation, never
/// entering the kernel.
pub fn channel_ring_only(iters: u64) -> Result<Option<u64>, Error> {
    let r = root().map_err(|_| Error::InvalidState)?;
    let geo = Geometry::new(64, 1).ok_or(Error::InvalidArgument)?;
    let ch = TestChannel::new(&r, geo)?;
    let mut p = ch.producer()?;
    let mut c = ch.consumer()?;
    let mut out = [0u64; 1];
    let t0 = cycles();
    for n in 0..iters {
        p.try_send(&[n])?;
        c.try_recv(&mut out)?;
        core::hint::black_box(out);
    }
    Ok(Some(cycles().wrapping_sub(t0)))
}

pub fn channel_benchmarks_run() -> TestResult {
    // Ticks here are the cycle counter's (instructions only under the
    // benchmark run's -icount); printed for information.
    for (label, f, iters) in [
        ("channel_stream", channel_stream as fn(u64) -> _, 2000u64),
        ("channel_stream_batched", channel_stream_batched, 2000),
        ("channel_ring_only", channel_ring_only, 2000),
    ] {
        let ticks = f(iters).ctx(label)?.ctx(label)?;
        keel_rt::println!(
            "    channels: {label}: {}.{} ticks/message",
            ticks / iters,
            ticks * 10 / iters % 10
        );
    }
    Ok(())
}

//! Channels: asynchronous single-producer single-consumer message rings in
//! shared memory, with notification wake-ups, batching and back-pressure.
//!
//! A channel is a memory region (a memory object mapped into both parties,
//! at any address in each) holding a [`Geometry`]-sized ring of fixed-size
//! slots, plus one notification per side for wake-ups. Messages never go
//! through the kernel: the kernel is entered only to wake a sleeping peer
//! ([`Wakeup::wake_peer`], `Signal`) or to sleep ([`Wakeup::sleep`],
//! `Wait`), and only when the ring's state says it is needed.
//!
//! # Layout (64-bit words)
//!
//! | words | written by | contents |
//! |---|---|---|
//! | line 0 | creator ([`init`]), then read-only | magic, version, slots, slot words |
//! | line 1 | producer | `head` (messages ever published), `producer_waiting` |
//! | line 2 | consumer | `tail` (messages ever consumed), `consumer_sleeping` |
//! | from line 3 | producer (slot contents) | `slots` slots of `1 + slot_words` words: byte length, payload |
//!
//! A line is [`LINE_WORDS`] words (128 bytes: a cache line on every
//! machine Keel runs on, and the pair x86 prefetches together), so the
//! producer's and the consumer's indices never share a line. `head` and
//! `tail` are free-running counters; message `n` lives in slot
//! `n mod slots` (`slots` is a power of two). The ring is empty when
//! `head == tail` and full when `head - tail == slots`.
//!
//! # Who owns what
//!
//! - The producer alone writes `head`, the slots in `[head, tail + slots)`
//!   (the free ones) and `producer_waiting`; the consumer alone writes
//!   `tail` and `consumer_sleeping` and reads the slots in `[tail, head)`.
//!   The one exception: the side that wakes its peer clears the peer's
//!   flag (compare-exchange 1 → 0), so that one sleep costs one signal.
//! - Each side keeps its own index in private memory and a cached copy of
//!   the other's, and re-reads the shared one only when the cache says the
//!   ring is full (producer) or empty (consumer). The geometry is read once,
//!   at attach, and kept privately, so a peer rewriting line 0 later cannot
//!   move any access outside the region.
//!
//! # Memory ordering
//!
//! - **Data.** The producer writes a slot (relaxed stores), then publishes
//!   it with `head.store(Release)`. The consumer reads `head` with
//!   `Acquire` before it reads the slot, so the slot's contents
//!   happen-before its reads. Symmetrically, the consumer frees slots with
//!   `tail.store(Release)` after reading them, and the producer reads
//!   `tail` with `Acquire` before it overwrites them: the consumer's reads
//!   happen-before the producer's new writes, so no message is torn.
//! - **Sleeping (no lost wake-up).** A consumer about to sleep stores
//!   `consumer_sleeping = 1`, issues a `SeqCst` fence and re-reads `head`;
//!   a producer stores `head`, issues a `SeqCst` fence and reads
//!   `consumer_sleeping`. The two fences are totally ordered, so at least
//!   one side sees the other's store: either the consumer sees the new
//!   message and does not sleep, or the producer sees the flag and
//!   signals. A signal sent before the consumer reaches `Wait` is kept in
//!   the notification's word, so `Wait` returns at once. The producer's
//!   sleep when the ring is full (`producer_waiting`, `tail`) is the mirror
//!   image.
//! - Every shared word, slot contents included, is an [`AtomicU64`]. A
//!   peer that breaks the protocol (or writes garbage) can therefore only
//!   make this side see wrong values, never cause undefined behaviour; the
//!   indices and lengths it reads are checked ([`ChannelError::Corrupt`]).
//!
//! # Wake-up policy
//!
//! The producer signals the consumer only when the consumer announced it is
//! sleeping, which it does only after finding the ring empty: so at most
//! one signal per transition from empty to non-empty, and none while the
//! consumer keeps up. A batch ([`Producer::try_send_batch`]) publishes all
//! its messages with one `head` store and at most one signal. The consumer
//! signals a waiting producer only once at least half the ring is free (or
//! the ring is empty), so a blocked producer wakes to room for a batch
//! rather than for one message.
//!
//! # Invariants
//!
//! - `0 <= head - tail <= slots` (wrapping arithmetic); a violation seen
//!   from either side is [`ChannelError::Corrupt`] and nothing is changed.
//! - A slot's length word is at most `slot_words * 8` bytes.
//! - At most one [`Producer`] and one [`Consumer`] are attached to a ring;
//!   attaching more breaks the protocol (garbage messages), never memory
//!   safety.
//!
//! The ring itself ([`init`], [`Producer`], [`Consumer`]) is portable and
//! unit-tested on the host, with a two-thread stress test; the Keel
//! wake-up over notifications ([`NotificationWakeup`]) and the view of a
//! mapping ([`words_at`]) exist only on Keel.

use core::sync::atomic::{AtomicU64, Ordering, fence};
use keel_abi::Error;

/// Words per cache line of the header (128 bytes).
pub const LINE_WORDS: usize = 16;
/// Most slots in one ring.
pub const MAX_SLOTS: usize = 1 << 20;
/// Most payload words in one slot.
pub const MAX_SLOT_WORDS: usize = 512;

/// `KEELRING`, little-endian: line 0, word 0 of an initialised ring.
const MAGIC: u64 = u64::from_le_bytes(*b"KEELRING");
const VERSION: u64 = 1;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_SLOTS: usize = 2;
const H_SLOT_WORDS: usize = 3;
const P_HEAD: usize = LINE_WORDS;
const P_WAITING: usize = LINE_WORDS + 1;
const C_TAIL: usize = 2 * LINE_WORDS;
const C_SLEEPING: usize = 2 * LINE_WORDS + 1;
const SLOTS_START: usize = 3 * LINE_WORDS;

/// Why a channel operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The ring is full (non-blocking send): back-pressure.
    Full,
    /// The ring is empty (non-blocking receive).
    Empty,
    /// The message is longer than a slot, or than the buffer given to
    /// receive it (the message then stays in the ring).
    TooLong,
    /// The region is too small, or not (or not validly) initialised.
    BadGeometry,
    /// The peer broke the protocol: an index or length out of range.
    Corrupt,
    /// Waking the peer or sleeping failed.
    Kernel(Error),
}

impl From<ChannelError> for Error {
    /// `Full` and `Empty` are `WouldBlock`; a message too long and a bad
    /// geometry are `InvalidArgument`; a corrupt ring is `InvalidState`.
    fn from(e: ChannelError) -> Error {
        match e {
            ChannelError::Full | ChannelError::Empty => Error::WouldBlock,
            ChannelError::TooLong | ChannelError::BadGeometry => Error::InvalidArgument,
            ChannelError::Corrupt => Error::InvalidState,
            ChannelError::Kernel(e) => e,
        }
    }
}

/// The shape of a ring: how many slots, how many payload words each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    slots: usize,
    slot_words: usize,
}

impl Geometry {
    /// `slots` (a power of two, at most [`MAX_SLOTS`]) slots of
    /// `slot_words` (1 to [`MAX_SLOT_WORDS`]) payload words each.
    pub const fn new(slots: usize, slot_words: usize) -> Option<Geometry> {
        if slots == 0
            || !slots.is_power_of_two()
            || slots > MAX_SLOTS
            || slot_words == 0
            || slot_words > MAX_SLOT_WORDS
        {
            return None;
        }
        Some(Geometry { slots, slot_words })
    }

    /// Slots in the ring.
    pub const fn slots(self) -> usize {
        self.slots
    }

    /// Payload words per slot.
    pub const fn slot_words(self) -> usize {
        self.slot_words
    }

    /// Largest message in bytes.
    pub const fn slot_bytes(self) -> usize {
        self.slot_words * 8
    }

    /// Words the region must have.
    pub const fn words(self) -> usize {
        SLOTS_START + self.slots * (1 + self.slot_words)
    }

    /// Bytes the region must have.
    pub const fn bytes(self) -> usize {
        self.words() * 8
    }

    /// Index of the length word of message number `n`.
    fn slot_base(self, n: u64) -> usize {
        SLOTS_START + (n as usize & (self.slots - 1)) * (1 + self.slot_words)
    }
}

/// Formats `mem` as an empty ring of `geo`: geometry, zero indices and
/// flags, and the magic word last (with `Release`), so a side that sees the
/// magic with [`attach`]'s `Acquire` sees the rest.
pub fn init(mem: &[AtomicU64], geo: Geometry) -> Result<(), ChannelError> {
    if mem.len() < geo.words() {
        return Err(ChannelError::BadGeometry);
    }
    mem[H_MAGIC].store(0, Ordering::Relaxed);
    mem[H_VERSION].store(VERSION, Ordering::Relaxed);
    mem[H_SLOTS].store(geo.slots as u64, Ordering::Relaxed);
    mem[H_SLOT_WORDS].store(geo.slot_words as u64, Ordering::Relaxed);
    for i in [P_HEAD, P_WAITING, C_TAIL, C_SLEEPING] {
        mem[i].store(0, Ordering::Relaxed);
    }
    mem[H_MAGIC].store(MAGIC, Ordering::Release);
    Ok(())
}

/// Reads and checks the geometry of an initialised ring in `mem`.
pub fn attach(mem: &[AtomicU64]) -> Result<Geometry, ChannelError> {
    if mem.len() < SLOTS_START || mem[H_MAGIC].load(Ordering::Acquire) != MAGIC {
        return Err(ChannelError::BadGeometry);
    }
    if mem[H_VERSION].load(Ordering::Relaxed) != VERSION {
        return Err(ChannelError::BadGeometry);
    }
    let slots = usize::try_from(mem[H_SLOTS].load(Ordering::Relaxed)).unwrap_or(0);
    let words = usize::try_from(mem[H_SLOT_WORDS].load(Ordering::Relaxed)).unwrap_or(0);
    let geo = Geometry::new(slots, words).ok_or(ChannelError::BadGeometry)?;
    if mem.len() < geo.words() {
        return Err(ChannelError::BadGeometry);
    }
    Ok(geo)
}

/// How a side of a channel wakes its peer and sleeps. On Keel, signalling
/// the peer's notification and waiting on its own
/// ([`NotificationWakeup`]).
pub trait Wakeup {
    /// Wakes the peer; never blocks.
    fn wake_peer(&self) -> Result<(), Error>;
    /// Blocks until the peer woke this side (returns at once if it already
    /// did since the last sleep). May return spuriously: callers re-check.
    fn sleep(&self) -> Result<(), Error>;
}

/// A side that never sleeps and wakes nobody: for a ring polled by both
/// sides (or both ends in one thread), with the non-blocking calls only.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoWakeup;

impl Wakeup for NoWakeup {
    fn wake_peer(&self) -> Result<(), Error> {
        Ok(())
    }

    fn sleep(&self) -> Result<(), Error> {
        Err(Error::WouldBlock)
    }
}

/// What one side did, for tests and tuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Messages sent or received.
    pub messages: u64,
    /// Times this side published (producer) or released (consumer) slots.
    pub batches: u64,
    /// Times this side woke its peer.
    pub wakeups_sent: u64,
    /// Times this side slept.
    pub sleeps: u64,
}

/// Stores `bytes` into `words` little-endian, zero-padding the last word.
fn store_bytes(words: &[AtomicU64], bytes: &[u8]) {
    for (w, chunk) in words.iter().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// A message to send: words or bytes.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'m> {
    /// Whole words (length `8 * len` bytes).
    Words(&'m [u64]),
    /// Bytes, packed little-endian into words.
    Bytes(&'m [u8]),
}

impl Payload<'_> {
    fn len_bytes(&self) -> usize {
        match self {
            Payload::Words(w) => w.len() * 8,
            Payload::Bytes(b) => b.len(),
        }
    }

    fn store(&self, words: &[AtomicU64]) {
        match self {
            Payload::Words(src) => {
                for (w, v) in words.iter().zip(src.iter()) {
                    w.store(*v, Ordering::Relaxed);
                }
            }
            Payload::Bytes(b) => store_bytes(words, b),
        }
    }
}

/// The producing side of a ring.
pub struct Producer<'a, W: Wakeup> {
    mem: &'a [AtomicU64],
    geo: Geometry,
    /// Messages published (authoritative; `mem[P_HEAD]` is its copy).
    head: u64,
    /// Last `tail` read from the consumer's line.
    tail_seen: u64,
    wakeup: W,
    stats: ChannelStats,
}

impl<'a, W: Wakeup> Producer<'a, W> {
    /// The producer of the ring in `mem` (initialised by [`init`]), waking
    /// and sleeping through `wakeup`. It continues from the ring's current
    /// `head`.
    pub fn attach(mem: &'a [AtomicU64], wakeup: W) -> Result<Self, ChannelError> {
        let geo = attach(mem)?;
        let head = mem[P_HEAD].load(Ordering::Relaxed);
        let tail = mem[C_TAIL].load(Ordering::Acquire);
        if head.wrapping_sub(tail) > geo.slots as u64 {
            return Err(ChannelError::Corrupt);
        }
        Ok(Producer {
            mem,
            geo,
            head,
            tail_seen: tail,
            wakeup,
            stats: ChannelStats::default(),
        })
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// What this side did so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    /// Free slots according to the last `tail` seen.
    fn free_cached(&self) -> usize {
        self.geo.slots - self.head.wrapping_sub(self.tail_seen) as usize
    }

    /// Re-reads `tail` (`Acquire`: the consumer is done with the slots it
    /// freed) and returns the free slots.
    fn refresh(&mut self) -> Result<usize, ChannelError> {
        let tail = self.mem[C_TAIL].load(Ordering::Acquire);
        let used = self.head.wrapping_sub(tail);
        // `tail` may only move forward, and never past `head`.
        if used > self.geo.slots as u64 || tail.wrapping_sub(self.tail_seen) > self.geo.slots as u64
        {
            return Err(ChannelError::Corrupt);
        }
        self.tail_seen = tail;
        Ok(self.free_cached())
    }

    /// Free slots now (re-reads `tail`).
    pub fn free_slots(&mut self) -> Result<usize, ChannelError> {
        self.refresh()
    }

    /// Free slots, re-reading `tail` only if the cache shows fewer than
    /// `want`.
    fn free_for(&mut self, want: usize) -> Result<usize, ChannelError> {
        let free = self.free_cached();
        if free >= want {
            Ok(free)
        } else {
            self.refresh()
        }
    }

    fn write(&mut self, msg: &Payload<'_>) {
        let base = self.geo.slot_base(self.head);
        let words = &self.mem[base + 1..base + 1 + self.geo.slot_words];
        msg.store(words);
        self.mem[base].store(msg.len_bytes() as u64, Ordering::Relaxed);
        self.head = self.head.wrapping_add(1);
    }

    /// Makes every written message visible, and wakes the consumer if it
    /// announced it is sleeping.
    fn publish(&mut self) -> Result<(), ChannelError> {
        self.mem[P_HEAD].store(self.head, Ordering::Release);
        self.stats.batches += 1;
        // Pairs with the consumer's fence between setting its flag and
        // re-reading `head` (module docs: no lost wake-up).
        fence(Ordering::SeqCst);
        let flag = &self.mem[C_SLEEPING];
        if flag.load(Ordering::Relaxed) != 0
            && flag
                .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.stats.wakeups_sent += 1;
            self.wakeup.wake_peer().map_err(ChannelError::Kernel)?;
        }
        Ok(())
    }

    fn check(&self, msg: &Payload<'_>) -> Result<(), ChannelError> {
        if msg.len_bytes() > self.geo.slot_bytes() {
            Err(ChannelError::TooLong)
        } else {
            Ok(())
        }
    }

    /// Sends one message of words without blocking: `Full` if there is no
    /// room.
    pub fn try_send(&mut self, msg: &[u64]) -> Result<(), ChannelError> {
        self.try_send_payload(Payload::Words(msg))
    }

    /// Sends one message of bytes without blocking.
    pub fn try_send_bytes(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.try_send_payload(Payload::Bytes(msg))
    }

    /// Sends one message without blocking.
    pub fn try_send_payload(&mut self, msg: Payload<'_>) -> Result<(), ChannelError> {
        self.check(&msg)?;
        if self.free_for(1)? == 0 {
            return Err(ChannelError::Full);
        }
        self.write(&msg);
        self.stats.messages += 1;
        self.publish()
    }

    /// Sends as many of `msgs` (from the first) as there is room for, with
    /// one publication and at most one wake-up; returns how many. `Full`
    /// if there was room for none; `TooLong` (and nothing sent) if any
    /// message is longer than a slot.
    pub fn try_send_batch(&mut self, msgs: &[&[u64]]) -> Result<usize, ChannelError> {
        if msgs.iter().any(|m| m.len() > self.geo.slot_words) {
            return Err(ChannelError::TooLong);
        }
        if msgs.is_empty() {
            return Ok(0);
        }
        let n = self.free_for(msgs.len())?.min(msgs.len());
        if n == 0 {
            return Err(ChannelError::Full);
        }
        for m in &msgs[..n] {
            self.write(&Payload::Words(m));
        }
        self.stats.messages += n as u64;
        self.publish()?;
        Ok(n)
    }

    /// Sleeps until the consumer frees room, unless it already has.
    fn wait_for_room(&mut self) -> Result<(), ChannelError> {
        let flag = &self.mem[P_WAITING];
        flag.store(1, Ordering::Relaxed);
        // Pairs with the consumer's fence between storing `tail` and
        // reading this flag.
        fence(Ordering::SeqCst);
        if self.refresh()? > 0 {
            flag.store(0, Ordering::Relaxed);
            return Ok(());
        }
        self.stats.sleeps += 1;
        let r = self.wakeup.sleep();
        flag.store(0, Ordering::Relaxed);
        r.map_err(ChannelError::Kernel)
    }

    /// Sends one message, sleeping while the ring is full.
    pub fn send(&mut self, msg: &[u64]) -> Result<(), ChannelError> {
        self.send_payload(Payload::Words(msg))
    }

    /// Sends one message of bytes, sleeping while the ring is full.
    pub fn send_bytes(&mut self, msg: &[u8]) -> Result<(), ChannelError> {
        self.send_payload(Payload::Bytes(msg))
    }

    /// Sends one message, sleeping while the ring is full.
    pub fn send_payload(&mut self, msg: Payload<'_>) -> Result<(), ChannelError> {
        loop {
            match self.try_send_payload(msg) {
                Err(ChannelError::Full) => self.wait_for_room()?,
                r => return r,
            }
        }
    }

    /// Sends every message of `msgs`, in order, as few publications as
    /// room allows, sleeping while the ring is full.
    pub fn send_batch(&mut self, mut msgs: &[&[u64]]) -> Result<(), ChannelError> {
        while !msgs.is_empty() {
            match self.try_send_batch(msgs) {
                Ok(n) => msgs = &msgs[n..],
                Err(ChannelError::Full) => self.wait_for_room()?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A message in the ring, seen by the consumer during
/// [`Consumer::try_recv_batch`]. Its length is checked.
pub struct Slot<'r> {
    words: &'r [AtomicU64],
    bytes: usize,
}

impl Slot<'_> {
    /// Length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// Length in words (bytes rounded up).
    pub fn len_words(&self) -> usize {
        self.bytes.div_ceil(8)
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Word `i` (0 beyond the message).
    pub fn word(&self, i: usize) -> u64 {
        if i < self.len_words() {
            self.words[i].load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Copies the message's words into `out` (as many as fit); returns the
    /// number copied.
    pub fn read_words(&self, out: &mut [u64]) -> usize {
        let n = self.len_words().min(out.len());
        for (o, w) in out[..n].iter_mut().zip(self.words) {
            *o = w.load(Ordering::Relaxed);
        }
        n
    }

    /// Copies the message's bytes into `out` (as many as fit); returns the
    /// number copied.
    pub fn read_bytes(&self, out: &mut [u8]) -> usize {
        let n = self.bytes.min(out.len());
        for (chunk, w) in out[..n].chunks_mut(8).zip(self.words) {
            let b = w.load(Ordering::Relaxed).to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        n
    }
}

/// The consuming side of a ring.
pub struct Consumer<'a, W: Wakeup> {
    mem: &'a [AtomicU64],
    geo: Geometry,
    /// Messages consumed (authoritative; `mem[C_TAIL]` is its copy).
    tail: u64,
    /// Last `head` read from the producer's line.
    head_seen: u64,
    /// Free slots at which a waiting producer is woken.
    wake_at: usize,
    wakeup: W,
    stats: ChannelStats,
}

impl<'a, W: Wakeup> Consumer<'a, W> {
    /// The consumer of the ring in `mem` (initialised by [`init`]), waking
    /// and sleeping through `wakeup`. It continues from the ring's current
    /// `tail`.
    pub fn attach(mem: &'a [AtomicU64], wakeup: W) -> Result<Self, ChannelError> {
        let geo = attach(mem)?;
        let tail = mem[C_TAIL].load(Ordering::Relaxed);
        let head = mem[P_HEAD].load(Ordering::Acquire);
        if head.wrapping_sub(tail) > geo.slots as u64 {
            return Err(ChannelError::Corrupt);
        }
        Ok(Consumer {
            mem,
            geo,
            tail,
            head_seen: head,
            wake_at: (geo.slots / 2).max(1),
            wakeup,
            stats: ChannelStats::default(),
        })
    }

    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// What this side did so far.
    pub fn stats(&self) -> ChannelStats {
        self.stats
    }

    fn available_cached(&self) -> usize {
        self.head_seen.wrapping_sub(self.tail) as usize
    }

    /// Re-reads `head` (`Acquire`: the slots it covers are written) and
    /// returns the messages available.
    fn refresh(&mut self) -> Result<usize, ChannelError> {
        let head = self.mem[P_HEAD].load(Ordering::Acquire);
        // `head` may only move forward, and at most `slots` past `tail`.
        if head.wrapping_sub(self.tail) > self.geo.slots as u64
            || head.wrapping_sub(self.head_seen) > self.geo.slots as u64
        {
            return Err(ChannelError::Corrupt);
        }
        self.head_seen = head;
        Ok(self.available_cached())
    }

    /// Messages waiting now (re-reads `head`).
    pub fn available(&mut self) -> Result<usize, ChannelError> {
        self.refresh()
    }

    fn slot(&self, n: u64) -> Result<Slot<'a>, ChannelError> {
        let base = self.geo.slot_base(n);
        let bytes = self.mem[base].load(Ordering::Relaxed);
        if bytes > self.geo.slot_bytes() as u64 {
            return Err(ChannelError::Corrupt);
        }
        Ok(Slot {
            words: &self.mem[base + 1..base + 1 + self.geo.slot_words],
            bytes: bytes as usize,
        })
    }

    /// Frees the slots consumed up to `self.tail`, and wakes the producer
    /// if it waits for room and there is now enough.
    fn release(&mut self) -> Result<(), ChannelError> {
        self.mem[C_TAIL].store(self.tail, Ordering::Release);
        self.stats.batches += 1;
        // Pairs with the producer's fence between setting its flag and
        // re-reading `tail`.
        fence(Ordering::SeqCst);
        let flag = &self.mem[P_WAITING];
        if flag.load(Ordering::Relaxed) != 0 {
            // Room the producer can see: at least what we freed. Wake it
            // once half the ring is free, or when we have nothing left
            // (then we will not release again until it sends).
            let free = self.geo.slots - self.available_cached();
            if (free >= self.wake_at || self.available_cached() == 0)
                && flag
                    .compare_exchange(1, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.stats.wakeups_sent += 1;
                self.wakeup.wake_peer().map_err(ChannelError::Kernel)?;
            }
        }
        Ok(())
    }

    /// Hands up to `max` waiting messages, oldest first, to `f`, then frees
    /// their slots with one release; returns how many. `Empty` if there
    /// were none. Does not block.
    pub fn try_recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Slot<'_>),
    ) -> Result<usize, ChannelError> {
        let mut avail = self.available_cached();
        if avail < max {
            avail = self.refresh()?;
        }
        let n = avail.min(max);
        if n == 0 {
            return Err(ChannelError::Empty);
        }
        // Check every length first, so a corrupt slot consumes nothing.
        for i in 0..n as u64 {
            self.slot(self.tail.wrapping_add(i))?;
        }
        for _ in 0..n {
            f(self.slot(self.tail)?);
            self.tail = self.tail.wrapping_add(1);
        }
        self.stats.messages += n as u64;
        self.release()?;
        Ok(n)
    }

    /// Receives one message of words into `out` without blocking; returns
    /// its length in words. `TooLong` (and the message stays) if `out` is
    /// too short.
    pub fn try_recv(&mut self, out: &mut [u64]) -> Result<usize, ChannelError> {
        self.try_recv_one(|s| (s.len_words() <= out.len()).then(|| s.read_words(out)))
    }

    /// Receives one message of bytes into `out` without blocking; returns
    /// its length in bytes. `TooLong` (and the message stays) if `out` is
    /// too short.
    pub fn try_recv_bytes(&mut self, out: &mut [u8]) -> Result<usize, ChannelError> {
        self.try_recv_one(|s| (s.len_bytes() <= out.len()).then(|| s.read_bytes(out)))
    }

    /// Takes the oldest message if `take` returns `Some`.
    fn try_recv_one(
        &mut self,
        take: impl FnOnce(&Slot<'_>) -> Option<usize>,
    ) -> Result<usize, ChannelError> {
        if self.available_cached() == 0 && self.refresh()? == 0 {
            return Err(ChannelError::Empty);
        }
        let slot = self.slot(self.tail)?;
        let len = take(&slot).ok_or(ChannelError::TooLong)?;
        self.tail = self.tail.wrapping_add(1);
        self.stats.messages += 1;
        self.release()?;
        Ok(len)
    }

    /// Sleeps until the producer publishes, unless it already has.
    fn wait_for_message(&mut self) -> Result<(), ChannelError> {
        let flag = &self.mem[C_SLEEPING];
        flag.store(1, Ordering::Relaxed);
        // Pairs with the producer's fence between storing `head` and
        // reading this flag.
        fence(Ordering::SeqCst);
        if self.refresh()? > 0 {
            flag.store(0, Ordering::Relaxed);
            return Ok(());
        }
        self.stats.sleeps += 1;
        let r = self.wakeup.sleep();
        flag.store(0, Ordering::Relaxed);
        r.map_err(ChannelError::Kernel)
    }

    /// Receives one message of words into `out`, sleeping while the ring
    /// is empty; returns its length in words.
    pub fn recv(&mut self, out: &mut [u64]) -> Result<usize, ChannelError> {
        loop {
            match self.try_recv(out) {
                Err(ChannelError::Empty) => self.wait_for_message()?,
                r => return r,
            }
        }
    }

    /// Receives one message of bytes into `out`, sleeping while the ring
    /// is empty; returns its length in bytes.
    pub fn recv_bytes(&mut self, out: &mut [u8]) -> Result<usize, ChannelError> {
        loop {
            match self.try_recv_bytes(out) {
                Err(ChannelError::Empty) => self.wait_for_message()?,
                r => return r,
            }
        }
    }

    /// Like [`Consumer::try_recv_batch`], but sleeps while the ring is
    /// empty: hands at least one message to `f`.
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Slot<'_>),
    ) -> Result<usize, ChannelError> {
        loop {
            match self.try_recv_batch(max, &mut f) {
                Err(ChannelError::Empty) => self.wait_for_message()?,
                r => return r,
            }
        }
    }
}

/// Keel's wake-up: signal the peer's notification, wait on our own. Each
/// side of a channel should have a notification of its own (a `Wait`
/// clears every bit, so bits of other users of a shared notification would
/// be lost to them).
#[cfg(target_os = "none")]
#[derive(Clone, Copy, Debug)]
pub struct NotificationWakeup {
    /// The peer's notification (`WRITE`).
    pub peer: keel_abi::cap::CapToken,
    /// Bits signalled to the peer.
    pub bits: u64,
    /// This side's notification (`READ`).
    pub own: keel_abi::cap::CapToken,
}

#[cfg(target_os = "none")]
impl Wakeup for NotificationWakeup {
    fn wake_peer(&self) -> Result<(), Error> {
        crate::ipc::signal(self.peer, self.bits)
    }

    fn sleep(&self) -> Result<(), Error> {
        crate::ipc::wait(self.own).map(|_| ())
    }
}

/// The words of a mapping at `va`, `bytes` long, as a ring region.
///
/// # Safety
/// `[va, va + bytes)` must be mapped writable, 8-byte aligned, for as long
/// as the returned slice (and any [`Producer`] or [`Consumer`] over it) is
/// used, and nothing may access it except through atomic operations (other
/// mappings of the same memory included).
#[cfg(target_os = "none")]
pub unsafe fn words_at<'a>(va: usize, bytes: usize) -> &'a [AtomicU64] {
    // SAFETY: the caller guarantees the range is mapped, aligned and only
    // accessed atomically for 'a; AtomicU64 has the size and alignment of
    // u64.
    unsafe { core::slice::from_raw_parts(va as *const AtomicU64, bytes / 8) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Condvar, Mutex};
    use std::vec::Vec;

    fn region(geo: Geometry) -> Vec<AtomicU64> {
        let mem: Vec<AtomicU64> = (0..geo.words()).map(|_| AtomicU64::new(0xdead)).collect();
        init(&mem, geo).unwrap();
        mem
    }

    /// A notification stand-in: a word of bits under a lock.
    #[derive(Default)]
    struct Bell {
        bits: Mutex<u64>,
        cv: Condvar,
    }

    impl Bell {
        fn signal(&self) {
            *self.bits.lock().unwrap() |= 1;
            self.cv.notify_all();
        }

        fn wait(&self) {
            let mut b = self.bits.lock().unwrap();
            while *b == 0 {
                b = self.cv.wait(b).unwrap();
            }
            *b = 0;
        }
    }

    /// Host wake-up: the peer's bell and our own.
    #[derive(Clone)]
    struct HostWakeup {
        peer: Arc<Bell>,
        own: Arc<Bell>,
    }

    impl Wakeup for HostWakeup {
        fn wake_peer(&self) -> Result<(), Error> {
            self.peer.signal();
            Ok(())
        }

        fn sleep(&self) -> Result<(), Error> {
            self.own.wait();
            Ok(())
        }
    }

    fn host_pair() -> (HostWakeup, HostWakeup) {
        let (p, c) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
        (
            HostWakeup {
                peer: c.clone(),
                own: p.clone(),
            },
            HostWakeup { peer: p, own: c },
        )
    }

    /// Counts wake-ups and refuses to sleep.
    #[derive(Default)]
    struct Counting(core::cell::Cell<u64>);

    impl Wakeup for &Counting {
        fn wake_peer(&self) -> Result<(), Error> {
            self.0.set(self.0.get() + 1);
            Ok(())
        }

        fn sleep(&self) -> Result<(), Error> {
            Err(Error::WouldBlock)
        }
    }

    #[test]
    fn geometry_is_checked() {
        assert!(Geometry::new(0, 1).is_none());
        assert!(Geometry::new(3, 1).is_none());
        assert!(Geometry::new(4, 0).is_none());
        assert!(Geometry::new(4, MAX_SLOT_WORDS + 1).is_none());
        assert!(Geometry::new(MAX_SLOTS * 2, 1).is_none());
        let g = Geometry::new(8, 3).unwrap();
        assert_eq!(g.words(), 3 * LINE_WORDS + 8 * 4);
        assert_eq!(g.bytes(), g.words() * 8);
        assert_eq!(g.slot_bytes(), 24);
        // The producer's and the consumer's words are on different lines.
        assert_ne!(P_HEAD / LINE_WORDS, C_TAIL / LINE_WORDS);
        assert_ne!(P_HEAD / LINE_WORDS, H_MAGIC / LINE_WORDS);
    }

    #[test]
    fn attach_refuses_bad_regions() {
        let g = Geometry::new(4, 2).unwrap();
        let small: Vec<AtomicU64> = (0..g.words() - 1).map(|_| AtomicU64::new(0)).collect();
        assert_eq!(init(&small, g), Err(ChannelError::BadGeometry));
        assert_eq!(attach(&small), Err(ChannelError::BadGeometry), "no magic");
        let mem = region(g);
        assert_eq!(attach(&mem), Ok(g));
        // A header claiming more than the region holds.
        mem[H_SLOTS].store(1 << 10, Ordering::Relaxed);
        assert_eq!(attach(&mem).err(), Some(ChannelError::BadGeometry));
        mem[H_SLOTS].store(3, Ordering::Relaxed);
        assert_eq!(attach(&mem).err(), Some(ChannelError::BadGeometry));
        mem[H_SLOTS].store(4, Ordering::Relaxed);
        mem[H_VERSION].store(9, Ordering::Relaxed);
        assert!(Producer::attach(&mem, NoWakeup).is_err());
    }

    #[test]
    fn fills_to_full_and_drains_in_order_across_wraps() {
        let g = Geometry::new(4, 2).unwrap();
        let mem = region(g);
        let mut p = Producer::attach(&mem, NoWakeup).unwrap();
        let mut c = Consumer::attach(&mem, NoWakeup).unwrap();
        let mut out = [0u64; 2];
        assert_eq!(c.try_recv(&mut out), Err(ChannelError::Empty));
        let mut next_sent = 0u64;
        let mut next_seen = 0u64;
        for round in 0..50 {
            while p.try_send(&[next_sent, !next_sent]).is_ok() {
                next_sent += 1;
            }
            assert_eq!(p.try_send(&[1]), Err(ChannelError::Full));
            assert_eq!(p.free_slots(), Ok(0));
            assert_eq!(c.available(), Ok(4));
            // Drain a varying amount, so the indices wrap at every offset.
            for _ in 0..(round % 4) + 1 {
                assert_eq!(c.try_recv(&mut out), Ok(2));
                assert_eq!(out, [next_seen, !next_seen]);
                next_seen += 1;
            }
        }
        while c.try_recv(&mut out).is_ok() {
            assert_eq!(out, [next_seen, !next_seen]);
            next_seen += 1;
        }
        assert_eq!(next_seen, next_sent);
        assert_eq!(p.stats().messages, next_sent);
        assert_eq!(c.stats().messages, next_seen);
    }

    #[test]
    fn byte_messages_of_every_length_round_trip() {
        let g = Geometry::new(2, 3).unwrap();
        let mem = region(g);
        let mut p = Producer::attach(&mem, NoWakeup).unwrap();
        let mut c = Consumer::attach(&mem, NoWakeup).unwrap();
        let data: Vec<u8> = (0..24u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for len in 0..=24 {
            p.try_send_bytes(&data[..len]).unwrap();
            let mut out = [0xffu8; 24];
            assert_eq!(c.try_recv_bytes(&mut out), Ok(len));
            assert_eq!(&out[..len], &data[..len]);
            assert!(out[len..].iter().all(|&b| b == 0xff), "nothing beyond");
        }
        assert_eq!(p.try_send_bytes(&[0; 25]), Err(ChannelError::TooLong));
        assert_eq!(p.try_send(&[0; 4]), Err(ChannelError::TooLong));
        assert_eq!(p.stats().messages, 25);
    }

    #[test]
    fn a_buffer_too_small_leaves_the_message() {
        let g = Geometry::new(2, 4).unwrap();
        let mem = region(g);
        let mut p = Producer::attach(&mem, NoWakeup).unwrap();
        let mut c = Consumer::attach(&mem, NoWakeup).unwrap();
        p.try_send(&[1, 2, 3]).unwrap();
        let mut small = [0u64; 2];
        assert_eq!(c.try_recv(&mut small), Err(ChannelError::TooLong));
        let mut small_bytes = [0u8; 23];
        assert_eq!(
            c.try_recv_bytes(&mut small_bytes),
            Err(ChannelError::TooLong)
        );
        let mut big = [0u64; 4];
        assert_eq!(c.try_recv(&mut big), Ok(3));
        assert_eq!(big, [1, 2, 3, 0]);
    }

    #[test]
    fn batches_publish_once_and_send_what_fits() {
        let g = Geometry::new(8, 1).unwrap();
        let mem = region(g);
        let bell = Counting::default();
        let mut p = Producer::attach(&mem, &bell).unwrap();
        let mut c = Consumer::attach(&mem, NoWakeup).unwrap();
        let msgs: Vec<[u64; 1]> = (0..12).map(|i| [i]).collect();
        let refs: Vec<&[u64]> = msgs.iter().map(|m| &m[..]).collect();
        assert_eq!(p.try_send_batch(&refs[..5]), Ok(5));
        assert_eq!(p.try_send_batch(&refs[5..]), Ok(3), "room for 3 more");
        assert_eq!(p.try_send_batch(&refs[8..]), Err(ChannelError::Full));
        assert_eq!(p.try_send_batch(&[]), Ok(0));
        assert_eq!(p.try_send_batch(&[&[1, 2]]), Err(ChannelError::TooLong));
        assert_eq!(p.stats().batches, 2);
        let mut seen = Vec::new();
        assert_eq!(c.try_recv_batch(6, |s| seen.push(s.word(0))), Ok(6));
        assert_eq!(
            c.try_recv_batch(usize::MAX, |s| seen.push(s.word(0))),
            Ok(2)
        );
        assert_eq!(seen, (0..8).collect::<Vec<u64>>());
        assert_eq!(c.stats().batches, 2);
        assert_eq!(
            c.try_recv_batch(4, |_| unreachable!()),
            Err(ChannelError::Empty)
        );
        assert_eq!(bell.0.get(), 0, "the consumer never slept: no signals");
    }

    #[test]
    fn one_signal_per_sleep_of_the_consumer() {
        let g = Geometry::new(8, 1).unwrap();
        let mem = region(g);
        let bell = Counting::default();
        let mut p = Producer::attach(&mem, &bell).unwrap();
        let mut c = Consumer::attach(&mem, &bell).unwrap();
        // The consumer finds the ring empty and announces it sleeps (its
        // sleep returns at once here).
        let mut out = [0u64; 1];
        assert_eq!(
            c.recv(&mut out),
            Err(ChannelError::Kernel(Error::WouldBlock))
        );
        assert_eq!(mem[C_SLEEPING].load(Ordering::Relaxed), 0);
        mem[C_SLEEPING].store(1, Ordering::Relaxed);
        for i in 0..5 {
            p.try_send(&[i]).unwrap();
        }
        assert_eq!(bell.0.get(), 1, "only the first send signals");
        assert_eq!(p.stats().wakeups_sent, 1);
        assert_eq!(c.try_recv_batch(8, |_| {}), Ok(5));
        assert_eq!(bell.0.get(), 1, "no producer waited: no signal back");
    }

    #[test]
    fn a_waiting_producer_is_woken_once_half_the_ring_is_free() {
        let g = Geometry::new(8, 1).unwrap();
        let mem = region(g);
        let bell = Counting::default();
        let mut p = Producer::attach(&mem, &bell).unwrap();
        let mut c = Consumer::attach(&mem, &bell).unwrap();
        for i in 0..8 {
            p.try_send(&[i]).unwrap();
        }
        // The blocking send announces it waits, then "sleeps" (fails).
        assert_eq!(p.send(&[8]), Err(ChannelError::Kernel(Error::WouldBlock)));
        mem[P_WAITING].store(1, Ordering::Relaxed);
        let mut out = [0u64; 1];
        for _ in 0..3 {
            c.try_recv(&mut out).unwrap();
        }
        assert_eq!(bell.0.get(), 0, "3 of 8 free: not yet");
        c.try_recv(&mut out).unwrap();
        assert_eq!(bell.0.get(), 1, "4 of 8 free: woken");
        c.try_recv(&mut out).unwrap();
        assert_eq!(bell.0.get(), 1, "once");
        assert_eq!(mem[P_WAITING].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_corrupt_peer_is_detected_not_trusted() {
        let g = Geometry::new(4, 1).unwrap();
        let mem = region(g);
        let mut p = Producer::attach(&mem, NoWakeup).unwrap();
        let mut c = Consumer::attach(&mem, NoWakeup).unwrap();
        p.try_send(&[7]).unwrap();
        // A length beyond the slot.
        let base = g.slot_base(0);
        mem[base].store(1 << 40, Ordering::Relaxed);
        let mut out = [0u64; 1];
        assert_eq!(c.try_recv(&mut out), Err(ChannelError::Corrupt));
        assert_eq!(c.try_recv_batch(4, |_| {}), Err(ChannelError::Corrupt));
        mem[base].store(8, Ordering::Relaxed);
        assert_eq!(c.try_recv(&mut out), Ok(1));
        // A head far beyond the tail.
        mem[P_HEAD].store(1000, Ordering::Relaxed);
        assert_eq!(c.try_recv(&mut out), Err(ChannelError::Corrupt));
        mem[P_HEAD].store(1, Ordering::Relaxed);
        // A tail beyond the head.
        mem[C_TAIL].store(5, Ordering::Relaxed);
        for _ in 0..3 {
            p.try_send(&[1]).unwrap();
        }
        assert_eq!(p.try_send(&[1]), Err(ChannelError::Corrupt));
        mem[C_TAIL].store(u64::MAX, Ordering::Relaxed);
        assert_eq!(p.free_slots(), Err(ChannelError::Corrupt));
    }

    /// Two threads, a small ring, both sides blocking: every message
    /// arrives once, in order, intact, and both sides really slept.
    fn stress(batch: usize, slots: usize, messages: u64) {
        let g = Geometry::new(slots, 4).unwrap();
        let mem = region(g);
        let (pw, cw) = host_pair();
        let (ps, cs) = std::thread::scope(|s| {
            let mem = &mem;
            let producer = s.spawn(move || {
                let mut p = Producer::attach(mem, pw).unwrap();
                let mut n = 0u64;
                let mut bufs = [[0u64; 4]; 16];
                while n < messages {
                    let k = (batch as u64).min(messages - n) as usize;
                    for (i, b) in bufs[..k].iter_mut().enumerate() {
                        let v = n + i as u64;
                        *b = [v, v.wrapping_mul(0x9e37_79b9_7f4a_7c15), !v, v ^ 0xff];
                    }
                    if batch == 1 {
                        // Lengths 1..=4 words, varying.
                        p.send(&bufs[0][..(n % 4) as usize + 1]).unwrap();
                    } else {
                        let refs: Vec<&[u64]> = bufs[..k].iter().map(|b| &b[..]).collect();
                        p.send_batch(&refs).unwrap();
                    }
                    n += k as u64;
                }
                p.stats()
            });
            let consumer = s.spawn(move || {
                let mut c = Consumer::attach(mem, cw).unwrap();
                let mut expect = 0u64;
                while expect < messages {
                    if batch == 1 {
                        let mut out = [0u64; 4];
                        let len = c.recv(&mut out).unwrap();
                        let v = expect;
                        assert_eq!(len, (v % 4) as usize + 1);
                        let want = [v, v.wrapping_mul(0x9e37_79b9_7f4a_7c15), !v, v ^ 0xff];
                        assert_eq!(out[..len], want[..len]);
                        expect += 1;
                    } else {
                        c.recv_batch(batch, |s| {
                            let v = expect;
                            assert_eq!(s.len_words(), 4);
                            assert_eq!(s.word(0), v);
                            assert_eq!(s.word(1), v.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                            assert_eq!(s.word(2), !v);
                            assert_eq!(s.word(3), v ^ 0xff);
                            expect += 1;
                        })
                        .unwrap();
                    }
                }
                c.stats()
            });
            (producer.join().unwrap(), consumer.join().unwrap())
        });
        assert_eq!(ps.messages, messages);
        assert_eq!(cs.messages, messages);
        // Every sleep was ended by a signal from the other side (or found
        // its signal already there): no side sleeps more than it was woken
        // plus the signals it raced with.
        assert!(ps.sleeps <= cs.wakeups_sent, "{ps:?} {cs:?}");
        assert!(cs.sleeps <= ps.wakeups_sent, "{ps:?} {cs:?}");
    }

    #[test]
    fn two_threads_one_message_at_a_time() {
        stress(1, 4, 200_000);
    }

    #[test]
    fn two_threads_in_batches() {
        stress(7, 16, 200_000);
    }

    #[test]
    fn two_threads_ring_of_one() {
        stress(1, 1, 20_000);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send(Vec<u64>),
        Batch(Vec<Vec<u64>>),
        Recv,
        RecvBatch(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let msg = proptest::collection::vec(any::<u64>(), 0..=3);
        prop_oneof![
            msg.clone().prop_map(Op::Send),
            proptest::collection::vec(msg, 0..6).prop_map(Op::Batch),
            Just(Op::Recv),
            (0usize..6).prop_map(Op::RecvBatch),
        ]
    }

    proptest! {
        /// Any sequence of sends and receives behaves like a bounded
        /// queue of capacity `slots`.
        #[test]
        fn ring_matches_a_bounded_queue(ops in proptest::collection::vec(op(), 1..200)) {
            let g = Geometry::new(4, 3).unwrap();
            let mem = region(g);
            let mut p = Producer::attach(&mem, NoWakeup).unwrap();
            let mut c = Consumer::attach(&mem, NoWakeup).unwrap();
            let mut model: VecDeque<Vec<u64>> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Send(m) => {
                        let r = p.try_send(&m);
                        if model.len() == 4 {
                            prop_assert_eq!(r, Err(ChannelError::Full));
                        } else {
                            prop_assert_eq!(r, Ok(()));
                            model.push_back(m);
                        }
                    }
                    Op::Batch(ms) => {
                        let refs: Vec<&[u64]> = ms.iter().map(|m| &m[..]).collect();
                        let room = 4 - model.len();
                        let r = p.try_send_batch(&refs);
                        if ms.is_empty() {
                            prop_assert_eq!(r, Ok(0));
                        } else if room == 0 {
                            prop_assert_eq!(r, Err(ChannelError::Full));
                        } else {
                            let n = room.min(ms.len());
                            prop_assert_eq!(r, Ok(n));
                            model.extend(ms.into_iter().take(n));
                        }
                    }
                    Op::Recv => {
                        let mut out = [0u64; 3];
                        match model.pop_front() {
                            None => prop_assert_eq!(c.try_recv(&mut out), Err(ChannelError::Empty)),
                            Some(m) => {
                                prop_assert_eq!(c.try_recv(&mut out), Ok(m.len()));
                                prop_assert_eq!(&out[..m.len()], &m[..]);
                            }
                        }
                    }
                    Op::RecvBatch(max) => {
                        let mut got = Vec::new();
                        let r = c.try_recv_batch(max, |s| {
                            let mut w = [0u64; 3];
                            let n = s.read_words(&mut w);
                            got.push(w[..n].to_vec());
                        });
                        let n = model.len().min(max);
                        if n == 0 {
                            prop_assert_eq!(r, Err(ChannelError::Empty));
                        } else {
                            prop_assert_eq!(r, Ok(n));
                            let want: Vec<Vec<u64>> = model.drain(..n).collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
}

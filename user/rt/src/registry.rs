//! The name registry: a user-space server mapping names (1 to
//! [`MAX_NAME`] bytes) to endpoint capabilities, its client calls, and the
//! fixed-capacity hash table it keeps them in.
//!
//! # Protocol
//!
//! Every request is a `Call` on the registry's endpoint. The label packs
//! the operation (bits 0–7, [`Op`]) and the name's length in bytes (bits
//! 8–15); the name travels in the four register words, little-endian
//! ([`Name::to_words`]). The reply's label is 0 on success or a
//! [`RegistryError`] code.
//!
//! | op | request | reply |
//! |---|---|---|
//! | `Register` | name; one capability (an endpoint with `GRANT`) | — |
//! | `Lookup` | name | one capability: a copy of the registered endpoint |
//! | `Unregister` | name | — (only the badge that registered it may) |
//! | `Shutdown` | — (only the administrator's badge) | — ; the server deletes every capability it holds and returns |
//!
//! Capabilities travel through the IPC buffers ([`crate::ipc::Buffer`]):
//! the sender lists them in `caps`, the receiver finds its new tokens in
//! `received`. The registry owns the capability it was sent; on `Lookup`
//! it derives a child of it (same rights) and sends that, and deletes the
//! child after the reply if the kernel's transfer left it there, so the
//! registry works whether transfer copies or moves.
//!
//! # The table
//!
//! [`NameTable`] is open addressing with linear probing over `N` slots
//! (`N` a power of two), FNV-1a hashing, and tombstones for removed
//! entries. Invariants:
//! - at most [`NameTable::CAPACITY`] (3/4 of `N`) live entries, and live
//!   entries plus tombstones never exceed it either (an insert that would
//!   break that first rebuilds the table in place, dropping every
//!   tombstone), so there is always an empty slot and every probe ends
//!   after an expected O(1) steps;
//! - every live entry is reachable from its home slot through non-empty
//!   slots (removal leaves a tombstone, or an empty slot when the next
//!   slot is empty, which then also empties the tombstones just before);
//! - no name is in the table twice.
//!
//! The table and the protocol encoding are portable and unit-tested on
//! the host; the server and client calls exist only on Keel.

/// Longest name, in bytes (four message words).
pub const MAX_NAME: usize = 32;

/// A registry name: 1 to [`MAX_NAME`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    len: u8,
    bytes: [u8; MAX_NAME],
}

impl Name {
    /// The name `bytes`, if it is 1 to [`MAX_NAME`] bytes long.
    pub fn new(bytes: &[u8]) -> Option<Name> {
        if bytes.is_empty() || bytes.len() > MAX_NAME {
            return None;
        }
        let mut b = [0u8; MAX_NAME];
        b[..bytes.len()].copy_from_slice(bytes);
        Some(Name {
            len: bytes.len() as u8,
            bytes: b,
        })
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: a name has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name as four message words, little-endian, zero-padded.
    pub fn to_words(&self) -> [u64; 4] {
        core::array::from_fn(|i| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&self.bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        })
    }

    /// The name of `len` bytes in `words` (bytes beyond `len` ignored).
    pub fn from_words(words: &[u64; 4], len: usize) -> Option<Name> {
        if len == 0 || len > MAX_NAME {
            return None;
        }
        let mut b = [0u8; MAX_NAME];
        for (i, w) in words.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        Name::new(&b[..len])
    }

    /// FNV-1a over the bytes.
    fn hash(&self) -> u64 {
        self.as_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            })
    }
}

/// Why a table operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The name is already in the table.
    AlreadyExists,
    /// The table holds [`NameTable::CAPACITY`] names.
    Full,
}

#[derive(Clone, Copy, Debug)]
enum Entry<V> {
    Empty,
    Tombstone,
    Live(Name, V),
}

/// A map from names to `V` in `N` slots (a power of two): open
/// addressing, linear probing, tombstones (module docs).
pub struct NameTable<V: Copy, const N: usize> {
    slots: [Entry<V>; N],
    live: usize,
    tombstones: usize,
}

impl<V: Copy, const N: usize> Default for NameTable<V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy, const N: usize> NameTable<V, N> {
    /// Most names the table holds: 3/4 of its slots.
    pub const CAPACITY: usize = N - N / 4;
    const CHECK: () = assert!(N.is_power_of_two() && N >= 4);

    /// An empty table.
    pub const fn new() -> Self {
        let () = Self::CHECK;
        NameTable {
            slots: [Entry::Empty; N],
            live: 0,
            tombstones: 0,
        }
    }

    /// Names in the table.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Tombstones in the table.
    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    fn home(name: &Name) -> usize {
        name.hash() as usize & (N - 1)
    }

    /// The slot holding `name`, if any.
    fn find(&self, name: &Name) -> Option<usize> {
        let mut i = Self::home(name);
        for _ in 0..N {
            match &self.slots[i] {
                Entry::Empty => return None,
                Entry::Live(n, _) if n == name => return Some(i),
                _ => {}
            }
            i = (i + 1) & (N - 1);
        }
        None
    }

    /// The value of `name`.
    pub fn get(&self, name: &Name) -> Option<&V> {
        match &self.slots[self.find(name)?] {
            Entry::Live(_, v) => Some(v),
            _ => None,
        }
    }

    /// Adds `name` → `value`.
    pub fn insert(&mut self, name: Name, value: V) -> Result<(), TableError> {
        if self.find(&name).is_some() {
            return Err(TableError::AlreadyExists);
        }
        if self.live >= Self::CAPACITY {
            return Err(TableError::Full);
        }
        let slot = match self.free_slot(&name) {
            (Some(tomb), _) => {
                self.tombstones -= 1;
                tomb
            }
            (None, empty) if self.live + self.tombstones < Self::CAPACITY => empty,
            (None, _) => {
                // Using an empty slot would leave too few: drop the
                // tombstones and probe again (now one is empty).
                self.rebuild();
                self.free_slot(&name).1
            }
        };
        self.slots[slot] = Entry::Live(name, value);
        self.live += 1;
        Ok(())
    }

    /// The first tombstone and the first empty slot on `name`'s probe
    /// path (there is always an empty one).
    fn free_slot(&self, name: &Name) -> (Option<usize>, usize) {
        let mut i = Self::home(name);
        let mut tomb = None;
        loop {
            match self.slots[i] {
                Entry::Empty => return (tomb, i),
                Entry::Tombstone if tomb.is_none() => tomb = Some(i),
                _ => {}
            }
            i = (i + 1) & (N - 1);
        }
    }

    /// Removes `name`; its value.
    pub fn remove(&mut self, name: &Name) -> Option<V> {
        let i = self.find(name)?;
        let Entry::Live(_, v) = self.slots[i] else {
            return None;
        };
        self.live -= 1;
        if matches!(self.slots[(i + 1) & (N - 1)], Entry::Empty) {
            // No probe path continues past the next slot: this one, and
            // the tombstones just before it, can be empty.
            self.slots[i] = Entry::Empty;
            let mut j = i.wrapping_sub(1) & (N - 1);
            while matches!(self.slots[j], Entry::Tombstone) {
                self.slots[j] = Entry::Empty;
                self.tombstones -= 1;
                j = j.wrapping_sub(1) & (N - 1);
            }
        } else {
            self.slots[i] = Entry::Tombstone;
            self.tombstones += 1;
        }
        Some(v)
    }

    /// Calls `f` on every entry.
    pub fn for_each(&self, mut f: impl FnMut(&Name, &V)) {
        for e in &self.slots {
            if let Entry::Live(n, v) = e {
                f(n, v);
            }
        }
    }

    /// Removes every entry, calling `f` on each.
    pub fn drain(&mut self, mut f: impl FnMut(Name, V)) {
        for e in self.slots.iter_mut() {
            if let Entry::Live(n, v) = *e {
                f(n, v);
            }
            *e = Entry::Empty;
        }
        self.live = 0;
        self.tombstones = 0;
    }

    /// Drops every tombstone and re-places every entry, in place.
    ///
    /// Tombstones become empty slots; then, scanning from just after a
    /// slot that was empty before (there is one, since live entries plus
    /// tombstones never fill the table, and no probe path crosses it),
    /// each entry is taken out and re-inserted from its home slot. It lands
    /// between its home and where it was, and everything taken out later
    /// lies beyond that, so its probe path stays unbroken.
    fn rebuild(&mut self) {
        let start = self
            .slots
            .iter()
            .position(|e| matches!(e, Entry::Empty))
            .unwrap_or(0);
        for e in self.slots.iter_mut() {
            if matches!(e, Entry::Tombstone) {
                *e = Entry::Empty;
            }
        }
        self.tombstones = 0;
        for k in 1..=N {
            let i = (start + k) & (N - 1);
            if let Entry::Live(name, v) = self.slots[i] {
                self.slots[i] = Entry::Empty;
                let j = self.free_slot(&name).1;
                self.slots[j] = Entry::Live(name, v);
            }
        }
    }
}

/// A registry operation (bits 0–7 of a request's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// Add a name with the endpoint sent.
    Register = 1,
    /// Get a copy of a name's endpoint.
    Lookup = 2,
    /// Remove a name (only its registrant).
    Unregister = 3,
    /// Stop the server (only its administrator).
    Shutdown = 4,
}

impl Op {
    fn from_code(code: u64) -> Option<Op> {
        [Op::Register, Op::Lookup, Op::Unregister, Op::Shutdown]
            .into_iter()
            .find(|op| *op as u64 == code)
    }
}

/// Why a registry request failed; reply labels 1 and up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryError {
    /// No such name.
    NotFound,
    /// The name is registered already.
    AlreadyExists,
    /// The registry holds as many names as it can.
    Full,
    /// The name is empty or too long.
    BadName,
    /// Unknown operation, or a malformed message.
    BadRequest,
    /// `Register` without an endpoint capability that has `GRANT`.
    BadCapability,
    /// `Unregister` or `Shutdown` by a client that may not.
    NotAllowed,
    /// The reply carried no capability, or the server could not make one.
    NoCapability,
    /// The IPC itself failed (the client side's system call).
    Kernel(keel_abi::Error),
}

impl RegistryError {
    const CODES: [RegistryError; 8] = [
        RegistryError::NotFound,
        RegistryError::AlreadyExists,
        RegistryError::Full,
        RegistryError::BadName,
        RegistryError::BadRequest,
        RegistryError::BadCapability,
        RegistryError::NotAllowed,
        RegistryError::NoCapability,
    ];

    /// The reply label for this error (`Kernel` errors are never sent).
    pub fn code(self) -> u64 {
        Self::CODES
            .iter()
            .position(|e| *e == self)
            .map_or(Self::CODES.len() as u64 + 1, |i| i as u64 + 1)
    }

    /// A reply label as a result: 0 is success.
    pub fn check(label: u64) -> Result<(), RegistryError> {
        if label == 0 {
            return Ok(());
        }
        Err(usize::try_from(label - 1)
            .ok()
            .and_then(|i| Self::CODES.get(i).copied())
            .unwrap_or(RegistryError::BadRequest))
    }
}

/// A request's label: the operation and the name's length.
pub fn request_label(op: Op, name: Option<&Name>) -> u64 {
    op as u64 | (name.map_or(0, |n| n.len() as u64) << 8)
}

/// A request's label and words decoded: the operation and the name (for
/// the operations that take one).
pub fn decode_request(label: u64, words: &[u64; 4]) -> Result<(Op, Option<Name>), RegistryError> {
    let op = Op::from_code(label & 0xff).ok_or(RegistryError::BadRequest)?;
    if label >> 16 != 0 {
        return Err(RegistryError::BadRequest);
    }
    let len = ((label >> 8) & 0xff) as usize;
    if op == Op::Shutdown {
        return Ok((op, None));
    }
    let name = Name::from_words(words, len).ok_or(RegistryError::BadName)?;
    Ok((op, Some(name)))
}

#[cfg(target_os = "none")]
pub use self::keel::*;

#[cfg(target_os = "none")]
mod keel {
    //! The server loop and the client calls, over Keel IPC.

    use super::*;
    use crate::ipc::{Buffer, Message, MsgInfo, call, recv, reply, reply_recv};
    use crate::syscall::{cap_delete, cap_derive, cap_identify};
    use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};

    /// Slots of the server's table: up to 48 names.
    pub const TABLE_SLOTS: usize = 64;

    /// What the registry keeps per name.
    #[derive(Clone, Copy, Debug)]
    pub struct Registered {
        /// The registry's own capability to the endpoint.
        pub cap: CapToken,
        /// Its rights (a lookup hands out a child with the same).
        pub rights: Rights,
        /// Badge of the capability the registrant called through.
        pub owner: u64,
    }

    /// A reply: label, capabilities.
    struct Answer {
        label: u64,
        cap: Option<CapToken>,
    }

    impl Answer {
        fn ok() -> Answer {
            Answer {
                label: 0,
                cap: None,
            }
        }

        fn err(e: RegistryError) -> Answer {
            Answer {
                label: e.code(),
                cap: None,
            }
        }
    }

    /// The registry server: its endpoint, its thread's IPC buffer, the
    /// badge allowed to shut it down, and its table.
    pub struct RegistryServer {
        ep: CapToken,
        buf: Buffer,
        admin: u64,
        table: NameTable<Registered, TABLE_SLOTS>,
        /// A child handed out by the last `Lookup`, deleted after the
        /// reply if the transfer left it here.
        handed_out: Option<CapToken>,
        /// Requests handled so far.
        requests: u64,
    }

    impl RegistryServer {
        /// A server receiving on `ep` (needs `READ`), with `buf` the IPC
        /// buffer of the thread that will run it; requests with badge
        /// `admin` (non-zero) may shut it down.
        pub fn new(ep: CapToken, buf: Buffer, admin: u64) -> RegistryServer {
            RegistryServer {
                ep,
                buf,
                admin,
                table: NameTable::new(),
                handed_out: None,
                requests: 0,
            }
        }

        /// Names registered.
        pub fn len(&self) -> usize {
            self.table.len()
        }

        /// Whether no name is registered.
        pub fn is_empty(&self) -> bool {
            self.table.is_empty()
        }

        /// Serves requests until a `Shutdown` from the administrator (then
        /// returns the number of requests served, having deleted every
        /// capability it held), or until receiving fails.
        pub fn run(&mut self) -> Result<u64, keel_abi::Error> {
            self.buf.clear_received();
            let mut msg = recv(self.ep, 0)?;
            loop {
                self.forget_handed_out();
                self.requests += 1;
                let (answer, stop) = self.handle(&msg);
                let caps = match answer.cap {
                    Some(c) => {
                        self.buf.set_caps(&[c]);
                        self.handed_out = Some(c);
                        1
                    }
                    None => 0,
                };
                let info = MsgInfo::new(answer.label, 0, caps);
                if stop {
                    self.shut_down();
                    reply(info, [0; 4])?;
                    return Ok(self.requests);
                }
                self.buf.clear_received();
                msg = reply_recv(self.ep, info, [0; 4])?;
            }
        }

        fn forget_handed_out(&mut self) {
            if let Some(c) = self.handed_out.take() {
                // Stale already if the transfer moved it.
                let _ = cap_delete(c);
            }
        }

        fn shut_down(&mut self) {
            self.forget_handed_out();
            self.table.drain(|_, r| {
                let _ = cap_delete(r.cap);
            });
        }

        /// One request: the answer, and whether to stop. Capabilities the
        /// request carried that are not kept are deleted.
        fn handle(&mut self, msg: &Message) -> (Answer, bool) {
            let sent = msg.info.caps().min(crate::ipc::MAX_CAPS);
            let mut caps = [CapToken::NULL; crate::ipc::MAX_CAPS];
            for (i, c) in caps.iter_mut().enumerate().take(sent) {
                *c = self.buf.received(i);
            }
            let mut keep = None;
            let mut stop = false;
            let answer = match decode_request(msg.info.label(), &msg.words) {
                Err(e) => Answer::err(e),
                Ok((Op::Register, Some(name))) => {
                    if sent != 1 {
                        Answer::err(RegistryError::BadCapability)
                    } else {
                        match self.register(name, caps[0], msg.badge) {
                            Ok(()) => {
                                keep = Some(caps[0]);
                                Answer::ok()
                            }
                            Err(e) => Answer::err(e),
                        }
                    }
                }
                Ok((Op::Lookup, Some(name))) => match self.table.get(&name) {
                    None => Answer::err(RegistryError::NotFound),
                    Some(r) => match cap_derive(r.cap, r.rights, NO_BADGE) {
                        Ok(child) => Answer {
                            label: 0,
                            cap: Some(child),
                        },
                        Err(_) => Answer::err(RegistryError::NoCapability),
                    },
                },
                Ok((Op::Unregister, Some(name))) => match self.table.get(&name) {
                    None => Answer::err(RegistryError::NotFound),
                    Some(r) if r.owner != msg.badge => Answer::err(RegistryError::NotAllowed),
                    Some(_) => {
                        if let Some(r) = self.table.remove(&name) {
                            let _ = cap_delete(r.cap);
                        }
                        Answer::ok()
                    }
                },
                Ok((Op::Shutdown, _)) => {
                    if self.admin != NO_BADGE && msg.badge == self.admin {
                        stop = true;
                        Answer::ok()
                    } else {
                        Answer::err(RegistryError::NotAllowed)
                    }
                }
                Ok(_) => Answer::err(RegistryError::BadRequest),
            };
            for c in caps.iter().take(sent) {
                if Some(*c) != keep && *c != CapToken::NULL {
                    let _ = cap_delete(*c);
                }
            }
            (answer, stop)
        }

        fn register(&mut self, name: Name, cap: CapToken, owner: u64) -> Result<(), RegistryError> {
            let id = cap_identify(cap).map_err(|_| RegistryError::BadCapability)?;
            let rights = id.rights().ok_or(RegistryError::BadCapability)?;
            if id.object_type() != Some(ObjectType::Endpoint) || !rights.contains(Rights::GRANT) {
                return Err(RegistryError::BadCapability);
            }
            self.table
                .insert(name, Registered { cap, rights, owner })
                .map_err(|e| match e {
                    TableError::AlreadyExists => RegistryError::AlreadyExists,
                    TableError::Full => RegistryError::Full,
                })
        }
    }

    fn request(
        ep: CapToken,
        op: Op,
        name: Option<&Name>,
        caps: usize,
    ) -> Result<Message, RegistryError> {
        let words = name.map_or([0; 4], Name::to_words);
        let info = MsgInfo::new(request_label(op, name), 4, caps);
        let m = call(ep, info, words).map_err(RegistryError::Kernel)?;
        RegistryError::check(m.info.label())?;
        Ok(m)
    }

    /// Registers `cap` (an endpoint with `GRANT`) as `name` with the
    /// registry at `ep` (needs `WRITE` and `GRANT`); `buf` is the calling
    /// thread's IPC buffer. Whether the caller keeps its own `cap` is the
    /// kernel's transfer rule.
    pub fn register(
        ep: CapToken,
        buf: Buffer,
        name: &Name,
        cap: CapToken,
    ) -> Result<(), RegistryError> {
        buf.set_caps(&[cap]);
        request(ep, Op::Register, Some(name), 1).map(|_| ())
    }

    /// A new capability to the endpoint registered as `name`, in the
    /// caller's space; `buf` is the calling thread's IPC buffer.
    pub fn lookup(ep: CapToken, buf: Buffer, name: &Name) -> Result<CapToken, RegistryError> {
        buf.clear_received();
        let m = request(ep, Op::Lookup, Some(name), 0)?;
        let cap = buf.received(0);
        if m.info.caps() != 1 || cap == CapToken::NULL {
            return Err(RegistryError::NoCapability);
        }
        Ok(cap)
    }

    /// Removes `name` (only through a capability with the badge it was
    /// registered through).
    pub fn unregister(ep: CapToken, name: &Name) -> Result<(), RegistryError> {
        request(ep, Op::Unregister, Some(name), 0).map(|_| ())
    }

    /// Stops the registry (only through the administrator's badge).
    pub fn shutdown(ep: CapToken) -> Result<(), RegistryError> {
        request(ep, Op::Shutdown, None, 0).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::format;
    use std::vec::Vec;

    fn name(s: &str) -> Name {
        Name::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn names_are_checked_and_round_trip_through_words() {
        assert!(Name::new(b"").is_none());
        assert!(Name::new(&[b'x'; 33]).is_none());
        let long = Name::new(&[b'y'; 32]).unwrap();
        assert_eq!(Name::from_words(&long.to_words(), 32), Some(long));
        let n = name("console");
        assert_eq!(n.len(), 7);
        assert_eq!(Name::from_words(&n.to_words(), 7), Some(n));
        assert_eq!(n.to_words()[1..], [0, 0, 0]);
        assert_eq!(Name::from_words(&n.to_words(), 0), None);
        assert_eq!(Name::from_words(&n.to_words(), 33), None);
        // Bytes beyond the length are ignored.
        let mut w = n.to_words();
        w[3] = u64::MAX;
        assert_eq!(Name::from_words(&w, 7), Some(n));
    }

    #[test]
    fn requests_and_status_codes_round_trip() {
        let n = name("fs");
        let (op, got) = decode_request(request_label(Op::Lookup, Some(&n)), &n.to_words()).unwrap();
        assert_eq!((op, got), (Op::Lookup, Some(n)));
        assert_eq!(
            decode_request(request_label(Op::Shutdown, None), &[0; 4]),
            Ok((Op::Shutdown, None))
        );
        assert_eq!(decode_request(9, &[0; 4]), Err(RegistryError::BadRequest));
        assert_eq!(decode_request(1, &[0; 4]), Err(RegistryError::BadName));
        assert_eq!(
            decode_request(1 | 33 << 8, &[0; 4]),
            Err(RegistryError::BadName)
        );
        assert_eq!(
            decode_request(1 | 1 << 16, &[0; 4]),
            Err(RegistryError::BadRequest)
        );
        assert_eq!(RegistryError::check(0), Ok(()));
        for e in RegistryError::CODES {
            assert!(e.code() > 0 && e.code() <= keel_abi::ipc::MsgInfo::MAX_LABEL);
            assert_eq!(RegistryError::check(e.code()), Err(e));
        }
        assert_eq!(RegistryError::check(999), Err(RegistryError::BadRequest));
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t: NameTable<u32, 16> = NameTable::new();
        assert!(t.is_empty());
        t.insert(name("a"), 1).unwrap();
        t.insert(name("b"), 2).unwrap();
        assert_eq!(t.insert(name("a"), 3), Err(TableError::AlreadyExists));
        assert_eq!(t.get(&name("a")), Some(&1));
        assert_eq!(t.get(&name("b")), Some(&2));
        assert_eq!(t.get(&name("c")), None);
        assert_eq!(t.remove(&name("a")), Some(1));
        assert_eq!(t.remove(&name("a")), None);
        assert_eq!(t.get(&name("a")), None);
        assert_eq!(t.len(), 1);
        t.insert(name("a"), 4).unwrap();
        assert_eq!(t.get(&name("a")), Some(&4));
    }

    #[test]
    fn fills_to_capacity_then_refuses() {
        let mut t: NameTable<usize, 16> = NameTable::new();
        assert_eq!(NameTable::<usize, 16>::CAPACITY, 12);
        for i in 0..12 {
            t.insert(name(&format!("n{i}")), i).unwrap();
        }
        assert_eq!(t.insert(name("one-more"), 99), Err(TableError::Full));
        assert_eq!(t.insert(name("n3"), 99), Err(TableError::AlreadyExists));
        for i in 0..12 {
            assert_eq!(t.get(&name(&format!("n{i}"))), Some(&i));
        }
        assert_eq!(t.get(&name("absent")), None, "a miss ends at an empty slot");
        t.remove(&name("n5")).unwrap();
        t.insert(name("one-more"), 99).unwrap();
        assert_eq!(t.len(), 12);
    }

    /// Names that all hash to one home slot of a 16-slot table.
    fn colliding(count: usize) -> Vec<Name> {
        let home = name("k0").hash() & 15;
        (0..)
            .map(|i| name(&format!("k{i}")))
            .filter(|n| n.hash() & 15 == home)
            .take(count)
            .collect()
    }

    #[test]
    fn tombstones_keep_probe_paths_and_are_reused() {
        let mut t: NameTable<usize, 16> = NameTable::new();
        let ks = colliding(4);
        for (i, k) in ks.iter().enumerate() {
            t.insert(*k, i).unwrap();
        }
        // Removing the first of a chain leaves a tombstone: the others are
        // still found past it.
        assert_eq!(t.remove(&ks[0]), Some(0));
        assert_eq!(t.tombstones(), 1);
        for (i, k) in ks.iter().enumerate().skip(1) {
            assert_eq!(t.get(k), Some(&i));
        }
        // An insert reuses the tombstone.
        let extra = colliding(5)[4];
        t.insert(extra, 40).unwrap();
        assert_eq!(t.tombstones(), 0);
        assert_eq!(t.get(&extra), Some(&40));
        // Removing the end of a chain empties it and the tombstones before.
        assert_eq!(t.remove(&ks[2]), Some(2));
        assert_eq!(t.remove(&ks[1]), Some(1));
        assert_eq!(t.tombstones(), 2);
        assert_eq!(t.remove(&ks[3]), Some(3));
        assert_eq!(t.tombstones(), 0, "the chain's tail emptied back");
        assert_eq!(t.get(&extra), Some(&40));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tombstones_never_fill_the_table() {
        let mut t: NameTable<usize, 16> = NameTable::new();
        // Churn: every insert is removed again, with a long-lived entry
        // in between so removals leave tombstones.
        t.insert(name("keep"), 0).unwrap();
        for i in 0..1000 {
            let n = name(&format!("t{i}"));
            t.insert(n, i).unwrap();
            t.insert(name(&format!("u{i}")), i).unwrap();
            assert_eq!(t.remove(&n), Some(i));
            assert_eq!(t.remove(&name(&format!("u{i}"))), Some(i));
            assert!(t.len() + t.tombstones() <= NameTable::<usize, 16>::CAPACITY);
            assert_eq!(t.get(&name("keep")), Some(&0));
            assert_eq!(t.get(&name("absent")), None);
        }
    }

    #[test]
    fn a_table_of_tombstones_is_rebuilt_in_place() {
        let mut t: NameTable<usize, 16> = NameTable::new();
        let ks = colliding(12);
        for (i, k) in ks.iter().enumerate() {
            t.insert(*k, i).unwrap();
        }
        // Each removal but the last leaves a tombstone (a live entry
        // follows it): live + tombstones = 12, the most allowed.
        for k in &ks[..11] {
            t.remove(k).unwrap();
        }
        assert_eq!((t.len(), t.tombstones()), (1, 11));
        // A name whose path meets no tombstone needs an empty slot: the
        // table is rebuilt first.
        let home = ks[0].hash() as usize & 15;
        let outside = (0..)
            .map(|i| name(&format!("o{i}")))
            .find(|n| (n.hash() as usize).wrapping_sub(home) & 15 >= 12)
            .unwrap();
        t.insert(outside, 100).unwrap();
        assert_eq!(t.tombstones(), 0);
        assert_eq!(t.get(&ks[11]), Some(&11));
        assert_eq!(t.get(&outside), Some(&100));
        for k in &ks[..11] {
            assert_eq!(t.get(k), None);
        }
    }

    #[test]
    fn drain_visits_everything() {
        let mut t: NameTable<usize, 8> = NameTable::new();
        for i in 0..6 {
            t.insert(name(&format!("d{i}")), i).unwrap();
        }
        let mut seen = Vec::new();
        t.for_each(|_, v| seen.push(*v));
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        let mut drained = 0;
        t.drain(|_, _| drained += 1);
        assert_eq!(drained, 6);
        assert!(t.is_empty());
        assert_eq!(t.get(&name("d1")), None);
    }

    proptest! {
        /// Any sequence of inserts and removes over a small name set
        /// behaves like a map with a capacity.
        #[test]
        fn table_matches_a_map(ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u16>()), 1..400)) {
            let mut t: NameTable<u16, 32> = NameTable::new();
            let mut model: HashMap<u8, u16> = HashMap::new();
            for (insert, key, value) in ops {
                let n = name(&format!("name-{key}"));
                if insert {
                    let r = t.insert(n, value);
                    if model.contains_key(&key) {
                        prop_assert_eq!(r, Err(TableError::AlreadyExists));
                    } else if model.len() == NameTable::<u16, 32>::CAPACITY {
                        prop_assert_eq!(r, Err(TableError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        model.insert(key, value);
                    }
                } else {
                    prop_assert_eq!(t.remove(&n), model.remove(&key));
                }
                prop_assert_eq!(t.len(), model.len());
                prop_assert!(t.len() + t.tombstones() <= NameTable::<u16, 32>::CAPACITY);
                for k in 0u8..40 {
                    prop_assert_eq!(t.get(&name(&format!("name-{k}"))), model.get(&k));
                }
            }
        }
    }
}

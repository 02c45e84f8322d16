//! The IPC protocol (DESIGN.md §4): endpoints, the one-shot reply
//! capability, notifications and fault messages, as the general path the
//! system calls invoke. Written by hand: core competence; portable and
//! host-tested (`tests.rs`). The fast path (`fastpath.rs`) gives the same
//! results for the common case.
//!
//! A message is read from its sender when it is delivered, never copied
//! in between: a blocked sender's message waits in its saved registers
//! (`info`, words 0–3) and its IPC buffer (words 4 and up, the capabilities
//! it sends), or in its TCB for a fault. Delivery writes the receiver's
//! registers (`UserRegs::set_message`) and buffer. Blocking queues the
//! thread through its TCB (intrusive, priority-ordered, FIFO within a
//! priority), and waking queues it in the run queue, whose room was made
//! when the thread was: no IPC operation allocates kernel memory, so a
//! sender cannot make the kernel allocate for it (apart from the
//! capabilities it transfers, which go into the receiver's space, whose
//! pool paid for its slots).
//!
//! Errors are reported to whichever side caused them: a sender whose
//! buffer or capabilities are bad gets the error and the receiver keeps
//! waiting; a receiver whose buffer is bad or whose space is full gets it
//! and so does the sender (the message could not be delivered). A thread
//! whose partner goes away is woken with `Disconnected`; a faulted thread
//! that cannot be answered dies with its process instead, as it would
//! without a handler.
//!
//! Invariants (with `Kernel`'s): a thread is `Blocked` iff `ipc.blocked`
//! is set; it is linked into the queue of the endpoint or notification
//! named there (none for `Reply`); an endpoint's `side` is `Idle` iff its
//! queue is empty; `reply_to` of a server names a caller that may be gone
//! or waiting elsewhere, so every use checks that the caller is still
//! `Blocked` on `Reply { server }` of this server.

use super::Kernel;
use crate::cap::{CSpaceId, Dest};
use crate::mm::kref::{KArc, ensure};
use crate::mm::user::{CopyFault, UserAddr, copy_between, copy_from_user, copy_to_user};
use crate::object::endpoint::{Side, Waiting};
use crate::object::thread::{Blocked, FaultMsg, State};
use crate::object::{EndpointId, KObject, NotificationId, NotificationRef, ThreadId};
use crate::sched::After;
use arrayvec::ArrayVec;
use keel_abi::Error;
use keel_abi::cap::{CapToken, ObjectType, Rights};
use keel_abi::ipc::{
    CAPS_OFFSET, FAULT_KILL, FAULT_WORDS, MAX_CAPS, MsgInfo, RECEIVED_OFFSET, REGISTER_WORDS,
};

/// Bits a notification word holds (63, so a returned word is never
/// mistaken for an error).
pub const NOTIFICATION_BITS: u64 = u64::MAX >> 1;

/// A queue of waiting threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Queue {
    Endpoint(EndpointId),
    Notification(NotificationId),
    /// Faulted threads whose processes die after the current call.
    Doomed,
}

/// Which side of a delivery failed.
enum Fail {
    /// The sender's message (buffer, capabilities).
    Sender(Error),
    /// The receiver's buffer or capability space.
    Receiver(Error),
}

/// A message as it leaves its sender.
struct Message {
    info: MsgInfo,
    badge: u64,
    words: [usize; REGISTER_WORDS],
    /// It may carry capabilities.
    grant: bool,
    fault: bool,
}

/// The result of an IPC call for its caller, and what the scheduler does.
pub type IpcOutcome = (Result<usize, Error>, After);

impl Kernel {
    // ---- Queues -------------------------------------------------------

    fn waiting(&mut self, q: Queue) -> Option<&mut Waiting> {
        match q {
            Queue::Endpoint(ep) => self.endpoints.get_mut(ep.0).map(|e| &mut e.queue),
            Queue::Notification(n) => self.notifications.get_mut(n.0).map(|n| &mut n.waiters),
            Queue::Doomed => Some(&mut self.doomed),
        }
    }

    fn prio(&self, id: ThreadId) -> u8 {
        self.thread(id).map_or(0, |t| t.priority())
    }

    /// Links `id` into `q` behind every thread of its priority or higher;
    /// an endpoint's queue then holds `side`.
    fn link(&mut self, q: Queue, side: Side, id: ThreadId) {
        if let Queue::Endpoint(ep) = q
            && let Some(e) = self.endpoints.get_mut(ep.0)
        {
            e.side = side;
        }
        let prio = self.prio(id);
        let Some(w) = self.waiting(q).copied() else {
            return;
        };
        let mut after = w.tail;
        while let Some(a) = after
            && self.prio(a) < prio
        {
            after = self.thread(a).ok().and_then(|t| t.ipc.prev);
        }
        let before = match after {
            Some(a) => self.thread(a).ok().and_then(|t| t.ipc.next),
            None => w.head,
        };
        if let Ok(t) = self.thread_mut(id) {
            t.ipc.prev = after;
            t.ipc.next = before;
        }
        if let Some(a) = after.and_then(|a| self.thread_mut(a).ok()) {
            a.ipc.next = Some(id);
        } else if let Some(w) = self.waiting(q) {
            w.head = Some(id);
        }
        if let Some(b) = before.and_then(|b| self.thread_mut(b).ok()) {
            b.ipc.prev = Some(id);
        } else if let Some(w) = self.waiting(q) {
            w.tail = Some(id);
        }
    }

    /// Takes `id` out of `q`.
    pub(super) fn unlink(&mut self, q: Queue, id: ThreadId) {
        let Ok(t) = self.thread_mut(id) else { return };
        let (prev, next) = (t.ipc.prev.take(), t.ipc.next.take());
        if let Some(p) = prev.and_then(|p| self.thread_mut(p).ok()) {
            p.ipc.next = next;
        } else if let Some(w) = self.waiting(q) {
            w.head = next;
        }
        if let Some(n) = next.and_then(|n| self.thread_mut(n).ok()) {
            n.ipc.prev = prev;
        } else if let Some(w) = self.waiting(q) {
            w.tail = prev;
        }
        if let Queue::Endpoint(ep) = q
            && let Some(e) = self.endpoints.get_mut(ep.0)
            && e.queue.is_empty()
        {
            e.side = Side::Idle;
        }
    }

    /// The first thread waiting in `q`.
    fn head(&mut self, q: Queue) -> Option<ThreadId> {
        self.waiting(q).and_then(|w| w.head)
    }

    /// The first thread waiting in endpoint `ep`'s queue, if they wait on
    /// `side`.
    fn head_on(&mut self, ep: EndpointId, side: Side) -> Option<ThreadId> {
        self.endpoints.get(ep.0).filter(|e| e.side == side)?;
        self.head(Queue::Endpoint(ep))
    }

    // ---- Blocking and waking ------------------------------------------

    /// Blocks the running thread `id` on `why` (queueing it where `why`
    /// says); the scheduler then runs another.
    pub(super) fn block(&mut self, id: ThreadId, why: Blocked) {
        let Ok(t) = self.thread_mut(id) else { return };
        t.state = State::Blocked;
        t.ipc.blocked = Some(why);
        let (q, side) = match why {
            Blocked::Send { ep, .. } => (Queue::Endpoint(ep), Side::Send),
            Blocked::Recv { ep } => (Queue::Endpoint(ep), Side::Recv),
            Blocked::Wait { n } => (Queue::Notification(n), Side::Idle),
            Blocked::Doomed => (Queue::Doomed, Side::Idle),
            Blocked::Reply { .. } => return self.arm_timeout(id),
            Blocked::Sleep => return,
        };
        self.link(q, side, id);
        self.arm_timeout(id);
    }

    /// Gives a thread blocking in IPC the deadline of its operation.
    fn arm_timeout(&mut self, id: ThreadId) {
        if let Some(d) = self.thread(id).ok().and_then(|t| t.ipc.timeout) {
            self.set_deadline(id, d);
        }
    }

    /// Makes a blocked thread ready (its result already written).
    pub(super) fn wake(&mut self, id: ThreadId) {
        let Ok(t) = self.thread_mut(id) else { return };
        if t.state != State::Blocked {
            return;
        }
        t.ipc.blocked = None;
        t.ipc.timeout = None;
        // Cannot fail: the thread's run-queue room was made with it.
        let _ = self.make_ready(id, true);
    }

    /// Takes a thread out of whatever queue it waits in, and its deadline
    /// (it stays `Blocked` until its caller changes its state).
    pub(super) fn unqueue(&mut self, id: ThreadId) {
        let Some(why) = self.thread(id).ok().and_then(|t| t.ipc.blocked) else {
            return;
        };
        self.clock.deadlines.remove(id);
        match why {
            Blocked::Send { ep, .. } | Blocked::Recv { ep } => self.unlink(Queue::Endpoint(ep), id),
            Blocked::Wait { n } => self.unlink(Queue::Notification(n), id),
            Blocked::Doomed => self.unlink(Queue::Doomed, id),
            Blocked::Reply { .. } | Blocked::Sleep => {}
        }
    }

    /// Ends a blocked thread's IPC with error `e`; a faulted thread,
    /// whose registers are not a system call's, dies with its process.
    pub(super) fn fail(&mut self, id: ThreadId, e: Error) {
        self.unqueue(id);
        let Ok(t) = self.thread_mut(id) else { return };
        if t.ipc.fault.is_some() {
            kprintln!("keel: fault of thread {id} unanswered ({e:?}); killing its process");
            self.doom(id);
            return;
        }
        t.regs_mut().set_result(e.to_return_value());
        self.wake(id);
    }

    /// Queues faulted thread `id` (out of every other queue) for the
    /// death of its process after the current call (`collect`).
    fn doom(&mut self, id: ThreadId) {
        self.unqueue(id);
        self.block(id, Blocked::Doomed);
    }

    /// Kills the processes of the doomed threads (see [`Blocked::Doomed`]).
    pub(super) fn kill_doomed(&mut self) {
        while let Some(t) = self.doomed.head {
            let Ok(th) = self.thread(t) else {
                // Cannot happen: a dying thread leaves the queue.
                self.doomed = Waiting::default();
                return;
            };
            let (cspace, code) = (th.home().id(), th.ipc.fault.map_or(6, |f| f.code));
            self.note_exit(cspace, -(code as isize));
            self.kill_process(cspace);
            if self.doomed.head == Some(t) {
                self.unlink(Queue::Doomed, t);
            }
        }
    }

    /// Cancels the IPC of a thread being suspended: it leaves its queue,
    /// and its call returns `InvalidState` when resumed (a faulted thread
    /// retries the instruction and faults again instead).
    pub(super) fn cancel_ipc(&mut self, id: ThreadId) {
        self.unqueue(id);
        let Ok(t) = self.thread_mut(id) else { return };
        t.ipc.blocked = None;
        if t.ipc.fault.take().is_none() {
            t.regs_mut()
                .set_result(Error::InvalidState.to_return_value());
        }
    }

    /// What the IPC state of a dying thread leaves behind: it leaves its
    /// queue, its caller (if it was a server mid-call) gets
    /// `Disconnected`, its notification is unbound.
    pub(super) fn end_ipc(&mut self, id: ThreadId) {
        self.unqueue(id);
        let Ok(t) = self.thread_mut(id) else { return };
        let caller = t.ipc.reply_to.take();
        let bound = t.ipc.bound.take();
        if let Some(n) = bound
            && let Some(n) = self.notifications.get_mut(n.id().0)
        {
            n.bound = None;
        }
        if let Some(c) = caller
            && self.waits_reply_of(c, id)
        {
            self.fail(c, Error::Disconnected);
        }
    }

    fn waits_reply_of(&self, caller: ThreadId, server: ThreadId) -> bool {
        self.thread(caller)
            .is_ok_and(|t| t.ipc.blocked == Some(Blocked::Reply { server }))
    }

    /// Gives `server` the reply capability to `caller`; a caller it still
    /// held (it never replied) gets `Disconnected`.
    fn set_reply(&mut self, server: ThreadId, caller: ThreadId) {
        let Ok(s) = self.thread_mut(server) else {
            return;
        };
        let old = s.ipc.reply_to.replace(caller);
        if let Some(old) = old
            && old != caller
            && self.waits_reply_of(old, server)
        {
            self.fail(old, Error::Disconnected);
        }
        if let Ok(c) = self.thread_mut(caller) {
            c.state = State::Blocked;
            c.ipc.blocked = Some(Blocked::Reply { server });
        }
        // A call that found its receiver waiting has no deadline armed yet
        // (one that waited to be received keeps the one it had).
        self.arm_timeout(caller);
    }

    // ---- Delivery -----------------------------------------------------

    fn message_of(&self, s: ThreadId) -> Result<Message, Error> {
        let t = self.thread(s)?;
        if let Some(f) = t.ipc.fault {
            let label = f.code & MsgInfo::MAX_LABEL;
            return Ok(Message {
                info: MsgInfo::new(label, FAULT_WORDS, 0).with(MsgInfo::FAULT),
                badge: t.ipc.badge,
                words: [f.code as usize, f.addr as usize, f.pc as usize, 0],
                grant: false,
                fault: true,
            });
        }
        let (_, [_, info, w0, w1, w2, w3]) = t.regs().syscall_args();
        Ok(Message {
            info: MsgInfo(info as u64),
            badge: t.ipc.badge,
            words: [w0, w1, w2, w3],
            grant: t.ipc.grant,
            fault: false,
        })
    }

    /// Delivers `msg` from `s` to `r` (badge `badge`); returns the info
    /// word `r` got.
    fn deliver(
        &mut self,
        s: ThreadId,
        r: ThreadId,
        msg: &Message,
        badge: u64,
    ) -> Result<MsgInfo, Fail> {
        let (len, ncaps) = (msg.info.len(), msg.info.caps());
        let mut received = ArrayVec::<u64, MAX_CAPS>::new();
        if len > REGISTER_WORDS || ncaps > 0 {
            let (sb, rb) = match (self.thread(s), self.thread(r)) {
                (Ok(st), Ok(rt)) => (st.ipc.buffer, rt.ipc.buffer),
                _ => return Err(Fail::Sender(Error::InvalidState)),
            };
            ensure(sb != 0, Fail::Sender(Error::InvalidArgument))?;
            ensure(rb != 0, Fail::Receiver(Error::InvalidArgument))?;
            self.copy_words(s, sb, r, rb, len)?;
            if ncaps > 0 {
                received = self.transfer_caps(s, r, rb, ncaps, msg.grant)?;
            }
        }
        let mut info = MsgInfo::new(msg.info.label(), len, received.len());
        if msg.fault {
            info = info.with(MsgInfo::FAULT);
        }
        if let Ok(t) = self.thread_mut(r) {
            t.regs_mut()
                .set_message(info.0 as usize, badge as usize, msg.words);
        }
        Ok(info)
    }

    /// Copies words `REGISTER_WORDS..len` between IPC buffers, frame to
    /// frame.
    fn copy_words(
        &mut self,
        s: ThreadId,
        sb: usize,
        r: ThreadId,
        rb: usize,
        len: usize,
    ) -> Result<(), Fail> {
        let (Ok(from), Ok(to)) = (self.thread(s), self.thread(r)) else {
            return Err(Fail::Sender(Error::InvalidState));
        };
        let (from, to) = (from.space().clone(), to.space().clone());
        let at = REGISTER_WORDS * 8;
        let n = len.saturating_sub(REGISTER_WORDS) * 8;
        let (src, dst) = (UserAddr::new(sb + at), UserAddr::new(rb + at));
        let copied = if KArc::ptr_eq(&from, &to) {
            copy_between(&mut from.lock(), src, None, dst, n)
        } else {
            copy_between(&mut from.lock(), src, Some(&mut to.lock()), dst, n)
        };
        copied.map_err(|f| match f {
            CopyFault::Source(e) => Fail::Sender(e),
            CopyFault::Destination(e) => Fail::Receiver(e),
        })
    }

    /// Grants the capabilities listed in the sender's buffer into the
    /// receiver's space and writes their new tokens into its buffer; all
    /// or none.
    fn transfer_caps(
        &mut self,
        s: ThreadId,
        r: ThreadId,
        rb: usize,
        n: usize,
        grant: bool,
    ) -> Result<ArrayVec<u64, MAX_CAPS>, Fail> {
        ensure(grant, Fail::Sender(Error::AccessDenied))?;
        let (Ok(st), Ok(rt)) = (self.thread(s), self.thread(r)) else {
            return Err(Fail::Sender(Error::InvalidState));
        };
        let (from, to) = (st.home().id(), rt.home().id());
        let (to_depth, to_space) = (rt.home().depth(), rt.space().clone());
        let tokens = self.sent_caps(s, n).map_err(Fail::Sender)?;
        // The receiver's buffer must take the tokens before anything moves.
        copy_to_user(
            &mut to_space.lock(),
            UserAddr::new(rb + RECEIVED_OFFSET),
            &[0; 8 * MAX_CAPS],
        )
        .map_err(Fail::Receiver)?;
        let mut out = ArrayVec::<u64, MAX_CAPS>::new();
        for token in tokens {
            match self.grant_one(from, token, to, to_depth) {
                Ok(t) => out.push(t.raw()),
                Err(f) => {
                    for t in &out {
                        let _ = self.caps.delete(to, CapToken::from_raw(*t));
                    }
                    return Err(f);
                }
            }
        }
        let mut bytes = [0u8; 8 * MAX_CAPS];
        for (chunk, t) in bytes.chunks_exact_mut(8).zip(&out) {
            chunk.copy_from_slice(&t.to_ne_bytes());
        }
        // Cannot fail: the same range was written above.
        let _ = copy_to_user(
            &mut to_space.lock(),
            UserAddr::new(rb + RECEIVED_OFFSET),
            &bytes,
        );
        Ok(out)
    }

    /// The tokens of the `n` capabilities thread `t` lists in its IPC
    /// buffer to send.
    pub fn sent_caps(&self, t: ThreadId, n: usize) -> Result<ArrayVec<CapToken, MAX_CAPS>, Error> {
        let th = self.thread(t)?;
        let mut raw = [0u8; 8 * MAX_CAPS];
        let bytes = raw.get_mut(..8 * n).ok_or(Error::InvalidArgument)?;
        let at = UserAddr::new(th.ipc.buffer + CAPS_OFFSET);
        copy_from_user(&mut th.space().lock(), at, bytes)?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                CapToken::from_raw(u64::from_ne_bytes(b))
            })
            .collect())
    }

    fn grant_one(
        &mut self,
        from: CSpaceId,
        token: CapToken,
        to: CSpaceId,
        to_depth: u32,
    ) -> Result<CapToken, Fail> {
        let cap = self.caps.lookup(from, token).map_err(Fail::Sender)?;
        let grant = cap.rights().contains(Rights::GRANT);
        ensure(grant, Fail::Sender(Error::AccessDenied))?;
        if let KObject::CSpace(c) = cap.object()
            && c.depth() <= to_depth
        {
            return Err(Fail::Sender(Error::InvalidArgument));
        }
        let rights = cap.rights();
        self.caps
            .grant(from, token, to, Dest::Any, rights)
            .map_err(|e| match e {
                Error::OutOfMemory | Error::AlreadyExists | Error::InvalidArgument => {
                    Fail::Receiver(e)
                }
                e => Fail::Sender(e),
            })
    }

    // ---- Endpoints ----------------------------------------------------

    /// `cur` sends its message (in its registers, buffer or fault record)
    /// on `ep` with `badge`; `call`: then waits for the reply.
    pub fn send(
        &mut self,
        cur: ThreadId,
        ep: EndpointId,
        badge: u64,
        grant: bool,
        call: bool,
        nonblock: bool,
    ) -> IpcOutcome {
        if let Ok(t) = self.thread_mut(cur) {
            t.ipc.badge = badge;
            t.ipc.grant = grant;
        }
        let q = Queue::Endpoint(ep);
        let Some(r) = self.head_on(ep, Side::Recv) else {
            if nonblock {
                return (Err(Error::WouldBlock), After::Continue);
            }
            self.block(cur, Blocked::Send { ep, call });
            return (Ok(0), After::Block);
        };
        let msg = match self.message_of(cur) {
            Ok(m) => m,
            Err(e) => return (Err(e), After::Continue),
        };
        match self.deliver(cur, r, &msg, badge) {
            Ok(_) => {
                self.unlink(q, r);
                if call {
                    self.set_reply(r, cur);
                }
                self.wake(r);
                (Ok(0), if call { After::Block } else { After::Continue })
            }
            Err(Fail::Sender(e)) => (Err(e), After::Continue),
            Err(Fail::Receiver(e)) => {
                self.fail(r, e);
                (Err(e), After::Continue)
            }
        }
    }

    /// `cur` receives on `ep` (or its bound notification's bits).
    pub fn recv(&mut self, cur: ThreadId, ep: EndpointId, nonblock: bool) -> IpcOutcome {
        if let Some(info) = self.take_bound_signal(cur) {
            return (Ok(info), After::Continue);
        }
        let q = Queue::Endpoint(ep);
        loop {
            let Some(s) = self.head_on(ep, Side::Send) else {
                if nonblock {
                    return (Err(Error::WouldBlock), After::Continue);
                }
                self.block(cur, Blocked::Recv { ep });
                return (Ok(0), After::Block);
            };
            let call = self
                .thread(s)
                .is_ok_and(|t| matches!(t.ipc.blocked, Some(Blocked::Send { call: true, .. })));
            let msg = match self.message_of(s) {
                Ok(m) => m,
                Err(_) => {
                    self.unlink(q, s);
                    continue;
                }
            };
            match self.deliver(s, cur, &msg, msg.badge) {
                Ok(info) => {
                    self.unlink(q, s);
                    if call {
                        self.set_reply(cur, s);
                    } else {
                        if let Ok(t) = self.thread_mut(s) {
                            t.regs_mut().set_result(0);
                        }
                        self.wake(s);
                    }
                    return (Ok(info.0 as usize), After::Continue);
                }
                Err(Fail::Sender(e)) => self.fail(s, e),
                Err(Fail::Receiver(e)) => {
                    self.fail(s, e);
                    return (Err(e), After::Continue);
                }
            }
        }
    }

    /// `cur` answers the last call it received, with the message in its
    /// registers (a fault's answer is its label: resume or kill).
    pub fn reply(&mut self, cur: ThreadId) -> Result<usize, Error> {
        let caller = self.thread_mut(cur)?.ipc.reply_to.take();
        let c = caller.ok_or(Error::InvalidState)?;
        ensure(self.waits_reply_of(c, cur), Error::Disconnected)?;
        let msg = self.message_of(cur)?;
        if self.thread(c)?.ipc.fault.is_some() {
            if msg.info.label() == FAULT_KILL {
                // Killed after this call: it may be this thread's own
                // process, and a `ReplyRecv` goes on to receive.
                self.doom(c);
            } else {
                self.thread_mut(c)?.ipc.fault = None;
                self.wake(c);
            }
            return Ok(0);
        }
        let msg = Message { grant: true, ..msg };
        match self.deliver(cur, c, &msg, 0) {
            Ok(_) => {
                self.wake(c);
                Ok(0)
            }
            Err(Fail::Sender(e)) => {
                self.thread_mut(cur)?.ipc.reply_to = Some(c);
                Err(e)
            }
            Err(Fail::Receiver(e)) => {
                self.fail(c, e);
                Err(e)
            }
        }
    }

    /// Reply (if there is a call to answer; its failure is not reported),
    /// then receive.
    pub fn reply_recv(&mut self, cur: ThreadId, ep: EndpointId, nonblock: bool) -> IpcOutcome {
        if self.thread(cur).is_ok_and(|t| t.ipc.reply_to.is_some()) {
            let _ = self.reply(cur);
        }
        self.recv(cur, ep, nonblock)
    }

    /// Delivers a fault of the running thread `cur` to its fault handler;
    /// false if it has none (or it is gone).
    pub fn send_fault(&mut self, cur: ThreadId, fault: FaultMsg) -> bool {
        let Ok(t) = self.thread_mut(cur) else {
            return false;
        };
        let Some((ep, badge)) = t.ipc.fault_handler.as_ref().map(|(r, b)| (r.id(), *b)) else {
            return false;
        };
        if self.endpoints.get(ep.0).is_none() {
            return false;
        }
        if let Ok(t) = self.thread_mut(cur) {
            t.ipc.fault = Some(fault);
            // A fault waits for its handler without a deadline.
            t.ipc.timeout = None;
        }
        let (sent, _) = self.send(cur, ep, badge, false, true, false);
        if sent.is_err()
            && let Ok(t) = self.thread_mut(cur)
        {
            t.ipc.fault = None;
            return false;
        }
        true
    }

    /// Puts a waiting thread whose priority changed at its new place in
    /// its queue.
    pub(super) fn requeue_waiter(&mut self, id: ThreadId) {
        let (q, side) = match self.thread(id).ok().and_then(|t| t.ipc.blocked) {
            Some(Blocked::Send { ep, .. }) => (Queue::Endpoint(ep), Side::Send),
            Some(Blocked::Recv { ep }) => (Queue::Endpoint(ep), Side::Recv),
            Some(Blocked::Wait { n }) => (Queue::Notification(n), Side::Idle),
            _ => return,
        };
        self.unlink(q, id);
        self.link(q, side, id);
    }

    /// Ends endpoint `ep` (its last reference went): every waiter gets
    /// `Disconnected`.
    pub(super) fn destroy_endpoint(&mut self, ep: EndpointId) {
        while let Some(t) = self.head(Queue::Endpoint(ep)) {
            self.fail(t, Error::Disconnected);
        }
        self.endpoints.remove(ep.0);
    }

    /// Wakes, with `InvalidCapability`, the threads waiting on `ep` or `n`
    /// through a capability that no longer exists (deleted or revoked
    /// while they waited).
    /// The object is dropped first (and ended if that was its last
    /// reference: then its waiters get `Disconnected` instead).
    pub fn recheck_waiters(&mut self, q: KObject) {
        let (queue, ty) = match &q {
            KObject::Endpoint(r) => (Queue::Endpoint(r.id()), ObjectType::Endpoint),
            KObject::Notification(r) => (Queue::Notification(r.id()), ObjectType::Notification),
            _ => return,
        };
        drop(q);
        self.collect();
        let mut next = self.head(queue);
        while let Some(t) = next {
            next = self.thread(t).ok().and_then(|x| x.ipc.next);
            let Ok(th) = self.thread(t) else { continue };
            if th.ipc.fault.is_some() {
                continue;
            }
            let (cs, token) = (
                th.home().id(),
                CapToken::from_raw(th.regs().syscall_args().1[0] as u64),
            );
            let alive = self
                .caps
                .lookup(cs, token)
                .is_ok_and(|c| c.object_type() == ty);
            if !alive {
                self.fail(t, Error::InvalidCapability);
            }
        }
    }

    // ---- Notifications -------------------------------------------------

    /// ORs `bits` into notification `n`, waking a waiter or the bound
    /// thread's `Recv`.
    pub fn signal(&mut self, n: NotificationId, bits: u64) -> Result<usize, Error> {
        let q = Queue::Notification(n);
        let (word, bound) = {
            let note = self.notifications.get_mut(n.0).ok_or(Error::InvalidState)?;
            note.word |= bits & NOTIFICATION_BITS;
            (note.word, note.bound)
        };
        if word == 0 {
            return Ok(0);
        }
        if let Some(w) = self.head(q) {
            self.unlink(q, w);
            if let Some(note) = self.notifications.get_mut(n.0) {
                note.word = 0;
            }
            if let Ok(t) = self.thread_mut(w) {
                t.regs_mut().set_result(word as isize);
            }
            self.wake(w);
        } else if let Some(b) = bound
            && self
                .thread(b)
                .is_ok_and(|t| matches!(t.ipc.blocked, Some(Blocked::Recv { .. })))
        {
            self.unqueue(b);
            if let Some(note) = self.notifications.get_mut(n.0) {
                note.word = 0;
            }
            let info = MsgInfo(MsgInfo::NOTIFICATION);
            if let Ok(t) = self.thread_mut(b) {
                t.regs_mut()
                    .set_message(info.0 as usize, word as usize, [0; 4]);
            }
            self.wake(b);
        }
        Ok(0)
    }

    /// `cur` takes `n`'s bits, waiting for some unless `nonblock` (then
    /// 0 if there are none).
    pub fn wait(&mut self, cur: ThreadId, n: NotificationId, nonblock: bool) -> IpcOutcome {
        let Some(note) = self.notifications.get_mut(n.0) else {
            return (Err(Error::InvalidState), After::Continue);
        };
        let word = core::mem::take(&mut note.word);
        if word != 0 || nonblock {
            return (Ok(word as usize), After::Continue);
        }
        self.block(cur, Blocked::Wait { n });
        (Ok(0), After::Block)
    }

    /// The pending bits of `cur`'s bound notification, as a received
    /// message's info (the bits in the badge register), if there are any.
    fn take_bound_signal(&mut self, cur: ThreadId) -> Option<usize> {
        let n = self.thread(cur).ok()?.ipc.bound.as_ref()?.id();
        let note = self.notifications.get_mut(n.0)?;
        let word = core::mem::take(&mut note.word);
        if word == 0 {
            return None;
        }
        let info = MsgInfo(MsgInfo::NOTIFICATION).0 as usize;
        self.thread_mut(cur)
            .ok()?
            .regs_mut()
            .set_message(info, word as usize, [0; 4]);
        Some(info)
    }

    /// Binds notification `n` to thread `t`, or unbinds `t`'s (`None`):
    /// `AlreadyExists` if either is bound already, `InvalidState` if there
    /// is nothing to unbind.
    pub fn bind(&mut self, t: ThreadId, n: Option<KArc<NotificationRef>>) -> Result<usize, Error> {
        let Some(r) = n else {
            let old = self
                .thread_mut(t)?
                .ipc
                .bound
                .take()
                .ok_or(Error::InvalidState)?;
            if let Some(note) = self.notifications.get_mut(old.id().0) {
                note.bound = None;
            }
            return Ok(0);
        };
        let note = self
            .notifications
            .get(r.id().0)
            .ok_or(Error::InvalidState)?;
        let unbound = note.bound.is_none() && self.thread(t)?.ipc.bound.is_none();
        ensure(unbound, Error::AlreadyExists)?;
        if let Some(note) = self.notifications.get_mut(r.id().0) {
            note.bound = Some(t);
        }
        self.thread_mut(t)?.ipc.bound = Some(r);
        Ok(0)
    }

    /// Ends notification `n`: waiters get `Disconnected`.
    pub(super) fn destroy_notification(&mut self, n: NotificationId) {
        while let Some(t) = self.head(Queue::Notification(n)) {
            self.fail(t, Error::Disconnected);
        }
        self.notifications.remove(n.0);
    }
}

#[cfg(test)]
mod tests;

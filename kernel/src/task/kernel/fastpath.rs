//! The IPC fast path (seL4's fastpath): `Call` and `ReplyRecv` with a
//! register-only message (at most four words, no capabilities, no flags)
//! when the partner already waits and no ready thread has its priority or
//! a higher one (so the general path, which queues the woken partner
//! behind the threads ready at its priority, would run it next too; an
//! IPC is thus a round-robin point among equal priorities, and a client
//! and server calling each other cannot starve other threads of their
//! priority). It hands the message over in registers, moves
//! the reply capability, and switches straight to the partner (time
//! donation), without the scheduler's general path, the system-call
//! decoder or a run-queue operation. Anything else returns `None` and
//! takes the general path (`ipc.rs`), which gives the same results: the
//! system tests run every message test both ways (`MsgInfo::SLOWPATH`).

use super::Kernel;
use crate::arch::UserRegs;
use crate::object::Endpoint;
use crate::object::endpoint::{Side, Waiting};
use crate::object::thread::{Blocked, State};
use crate::object::{KObject, ThreadId};
use crate::sched::After;
use keel_abi::Syscall;
use keel_abi::cap::{CapToken, ObjectType, Rights};
use keel_abi::ipc::{MsgInfo, REGISTER_WORDS};

impl Kernel {
    /// Runs `Call` or `ReplyRecv` of the running thread `cur` (arguments
    /// `args`) on the fast path if it applies; returns the registers to
    /// enter user mode with (the partner's).
    #[inline]
    pub fn fastpath(
        &mut self,
        cur: ThreadId,
        number: usize,
        args: [usize; 6],
    ) -> Option<*const UserRegs> {
        let call = if number == Syscall::Call as usize {
            true
        } else if number == Syscall::ReplyRecv as usize {
            false
        } else {
            return None;
        };
        self.fastpath_ipc(cur, call, args)
    }

    #[inline(never)]
    fn fastpath_ipc(
        &mut self,
        cur: ThreadId,
        call: bool,
        args: [usize; 6],
    ) -> Option<*const UserRegs> {
        let [ep_raw, info_raw, w0, w1, w2, w3] = args;
        let info = MsgInfo(info_raw as u64);
        if !info.check()
            || info.len() > REGISTER_WORDS
            || info.caps() != 0
            || info.0 & MsgInfo::USER_FLAGS != 0
        {
            return None;
        }
        let t = self.threads.get(cur.0)?;
        if t.ipc.next_timeout.is_some() {
            return None;
        }
        let needed = if call { Rights::WRITE } else { Rights::READ };
        let cap = self
            .caps
            .lookup_as(
                t.home().id(),
                CapToken::from_raw(ep_raw as u64),
                ObjectType::Endpoint,
                needed,
            )
            .ok()?;
        let KObject::Endpoint(r) = cap.object() else {
            return None;
        };
        let (ep, badge) = (r.id(), cap.badge());
        let e = self.endpoints.get_mut(ep.0)?;
        let out = MsgInfo::new(info.label(), info.len(), 0).0 as usize;
        let words = [w0, w1, w2, w3];
        if call {
            // A receiver waits, holds no other caller, and may run now.
            if e.side != Side::Recv {
                return None;
            }
            let server = e.queue.head?;
            let s = self.threads.get_mut(server.0)?;
            let here = &self.cpus[self.this];
            if s.ipc.reply_to.is_some()
                || s.affinity() & (1 << self.this) == 0
                || !here.sched.keeps_cpu(After::Yield, &s.sched)
            {
                return None;
            }
            // Take it off the front of the queue (usually it is alone).
            match s.ipc.next.take() {
                None => *e = Endpoint::default(),
                Some(n) => {
                    e.queue.head = Some(n);
                    self.threads.get_mut(n.0)?.ipc.prev = None;
                }
            }
            let s = self.threads.get_mut(server.0)?;
            s.ipc.blocked = None;
            s.ipc.reply_to = Some(cur);
            s.regs_mut().set_message(out, badge as usize, words);
            let c = self.threads.get_mut(cur.0)?;
            c.ipc.badge = badge;
            c.state = State::Blocked;
            c.ipc.blocked = Some(Blocked::Reply { server });
            self.switch_cpu(server, false);
            return self.regs_of(server);
        }
        // ReplyRecv: the caller waits for this reply, no sender waits on
        // `ep` (so this thread blocks there), and no notification is bound.
        let t = self.threads.get(cur.0)?;
        let caller = t.ipc.reply_to?;
        if e.side == Side::Send || t.ipc.bound.is_some() {
            return None;
        }
        let alone = e.queue.is_empty();
        let c = self.threads.get_mut(caller.0)?;
        let here = &self.cpus[self.this];
        if !matches!(c.ipc.blocked, Some(Blocked::Reply { server }) if server == cur)
            || c.ipc.fault.is_some()
            || c.affinity() & (1 << self.this) == 0
            || !here.sched.keeps_cpu(After::Yield, &c.sched)
        {
            return None;
        }
        c.ipc.blocked = None;
        c.regs_mut().set_message(out, 0, words);
        let t = self.threads.get_mut(cur.0)?;
        t.ipc.reply_to = None;
        if alone {
            // The first receiver: the queue is just this thread.
            t.state = State::Blocked;
            t.ipc.blocked = Some(Blocked::Recv { ep });
            t.ipc.prev = None;
            t.ipc.next = None;
            let e = self.endpoints.get_mut(ep.0)?;
            e.queue = Waiting {
                head: Some(cur),
                tail: Some(cur),
            };
            e.side = Side::Recv;
        } else {
            self.block(cur, Blocked::Recv { ep });
        }
        self.switch_cpu(caller, false);
        self.regs_of(caller)
    }
}

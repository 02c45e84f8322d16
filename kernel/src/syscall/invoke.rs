//! Invoking decoded calls (see the parent module for what can still fail).

use super::decode::Call;
use super::{Outcome, REVOKE_BUDGET};
use crate::cap::{Dest, Progress};
use crate::mm::user::copy_from_user;
use crate::object::{KObject, ThreadId};
use crate::sched::After;
use crate::task::Kernel;
use keel_abi::Error;
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::SystemInfoKey;

/// Does `call` (for the thread that made it, the current one).
pub(super) fn invoke(k: &mut Kernel, caller: ThreadId, call: Call) -> Outcome {
    let value = match call {
        Call::Value(v) => Ok(v),
        Call::Yield => {
            return Outcome {
                value: Ok(0),
                after: After::Yield,
            };
        }
        Call::SystemInfo(key) => Ok(system_info(k, key)),
        Call::DebugWrite { space, at, len } => {
            let mut buf = [0u8; 256];
            let mut done = 0;
            let mut result = Ok(len);
            while done < len {
                let n = (len - done).min(buf.len());
                let (Some(chunk), Some(from)) = (buf.get_mut(..n), at.offset(done)) else {
                    result = Err(Error::BadAddress);
                    break;
                };
                if let Err(e) = copy_from_user(&mut space.lock(), from, chunk) {
                    result = Err(e);
                    break;
                }
                crate::arch::console_write(chunk);
                done += n;
            }
            result
        }
        Call::Copy {
            from,
            src,
            to,
            slot,
            rights,
            badge,
            grant,
        } => if grant {
            k.caps.grant(from, src, to, Dest::At(slot), rights)
        } else {
            k.caps.derive(from, src, Dest::At(slot), rights, badge)
        }
        .map(token_value),
        Call::Delegate {
            from,
            src,
            to,
            slot,
        } => match k.caps.delegate(from, src, to, Dest::At(slot)) {
            Ok(t) => {
                // A thread waiting through the moved token waits no more.
                if let Ok(o) = k.caps.lookup(to, t).map(|c| c.object().clone()) {
                    k.recheck_waiters(o);
                }
                Ok(token_value(t))
            }
            Err(e) => Err(e),
        },
        Call::Delete(cspace, t) => k.caps.delete(cspace, t).map(|object| {
            k.recheck_waiters(object);
            0
        }),
        Call::Revoke(cspace, t) => {
            // Waiters on the revoked capabilities' endpoints and
            // notifications are checked after (one object: revocation
            // removes descendants of one capability).
            let mut seen: Option<KObject> = None;
            let r = k.caps.revoke(cspace, t, REVOKE_BUDGET, &mut |o: KObject| {
                if matches!(o, KObject::Endpoint(_) | KObject::Notification(_)) {
                    seen = Some(o);
                }
            });
            if let Some(o) = seen {
                k.recheck_waiters(o);
            }
            match r {
                Ok(Progress::Done) => Ok(0),
                Ok(Progress::More) => Ok(1),
                Err(e) => Err(e),
            }
        }
        Call::Insert {
            cspace,
            slot,
            object,
            ty,
        } => insert(k, cspace, slot, object, ty),
        Call::CSpaceCreate {
            cspace,
            slot,
            new,
            reference,
        } => match k.caps.install_space(*new) {
            Ok(id) if id == reference.id() => insert(
                k,
                cspace,
                slot,
                KObject::CSpace(reference),
                ObjectType::CapSpace,
            ),
            // Cannot happen: decode reserved the entry and predicted the id.
            _ => Err(Error::InvalidState),
        },
        Call::ThreadCreate {
            cspace,
            slot,
            thread,
            reference,
        } => match k.add_thread(thread) {
            Ok(id) if id == reference.id() => insert(
                k,
                cspace,
                slot,
                KObject::Thread(reference),
                ObjectType::Thread,
            ),
            // Cannot happen: decode reserved the slot and predicted the id.
            Ok(id) => k.kill(id).and(Err(Error::InvalidState)),
            Err(e) => Err(e),
        },
        Call::Resume(t) => k.resume(t).map(|()| 0),
        Call::Suspend(t) => k.suspend(t).map(|()| 0),
        Call::Exit(code) => {
            k.exit_current(code);
            Ok(0)
        }
        Call::SetPriority(t, prio) => k.set_priority(t, prio).map(|()| 0),
        Call::SetAffinity(t, mask) => k.thread_mut(t).map(|t| {
            t.set_affinity(mask);
            0
        }),
        Call::SetTls(t, value) => k.set_tls(t, value).map(|()| 0),
        Call::Kill(t) => k.kill(t).map(|()| 0),
        Call::IpcObject {
            cspace,
            slot,
            object,
        } => {
            let (made, ty) = match &object {
                KObject::Endpoint(r) => (
                    k.add_endpoint().map(|id| id == r.id()),
                    ObjectType::Endpoint,
                ),
                KObject::Notification(r) => (
                    k.add_notification().map(|id| id == r.id()),
                    ObjectType::Notification,
                ),
                _ => (Ok(false), ObjectType::Endpoint),
            };
            match made {
                Ok(true) => insert(k, cspace, slot, object, ty),
                // Cannot happen: decode reserved the entry and predicted the id.
                _ => Err(Error::InvalidState),
            }
        }
        Call::Send {
            ep,
            badge,
            grant,
            call,
            nonblock,
        } => return ipc(k.send(caller, ep, badge, grant, call, nonblock)),
        Call::Recv {
            ep,
            reply,
            nonblock,
        } => {
            return ipc(if reply {
                k.reply_recv(caller, ep, nonblock)
            } else {
                k.recv(caller, ep, nonblock)
            });
        }
        Call::Reply => k.reply(caller),
        Call::Signal(n, bits) => k.signal(n, bits),
        Call::Wait(n, nonblock) => return ipc(k.wait(caller, n, nonblock)),
        Call::Bind(t, n) => k.bind(t, n),
        Call::SetIpcBuffer(t, va) => k.thread_mut(t).map(|t| {
            t.ipc.buffer = va;
            0
        }),
        Call::SetFaultHandler(t, handler) => k.thread_mut(t).map(|t| {
            t.ipc.fault_handler = handler;
            0
        }),
        Call::Map {
            space,
            object,
            va,
            offset,
            pages,
            attr,
        } => space
            .lock()
            .map(va.get(), object, offset, pages, attr)
            .map(|()| 0),
        Call::FromRange {
            cspace,
            slot,
            space,
            pool,
            va,
            pages,
            take,
        } => match space.lock().split_off(va.get(), pages, take, Some(pool)) {
            Ok(obj) => insert(
                k,
                cspace,
                slot,
                KObject::Memory(obj),
                ObjectType::MemoryObject,
            ),
            Err(e) => Err(e),
        },
        Call::Unmap { space, va, pages } => space.lock().unmap(va.get(), pages).map(|()| 0),
        Call::Protect {
            space,
            va,
            pages,
            attr,
        } => space.lock().protect(va.get(), pages, attr).map(|()| 0),
    };
    Outcome {
        value,
        after: After::Continue,
    }
}

fn ipc((value, after): crate::task::IpcOutcome) -> Outcome {
    Outcome { value, after }
}

fn token_value(t: CapToken) -> usize {
    t.raw() as usize
}

/// The original capability to a new object, into the slot decode reserved.
pub(super) fn insert(
    k: &mut Kernel,
    cspace: crate::cap::CSpaceId,
    slot: u32,
    object: KObject,
    ty: ObjectType,
) -> Result<usize, Error> {
    k.caps
        .insert(cspace, Dest::At(slot), object, ty, Rights::ALL, NO_BADGE)
        .map(token_value)
}

fn system_info(k: &Kernel, key: SystemInfoKey) -> usize {
    let stats = || crate::mm::frame_stats().unwrap_or((0, 0, 0));
    match key {
        SystemInfoKey::CpuCount => k.cpu_count(),
        SystemInfoKey::TotalFrames => stats().0 as usize,
        SystemInfoKey::FreeFrames => stats().1 as usize,
        SystemInfoKey::Cycles => crate::arch::cycle_counter() as usize,
        SystemInfoKey::PageSize => crate::mm::object::PAGE,
        SystemInfoKey::MonotonicNs => crate::time::now_ns() as usize,
        SystemInfoKey::IdleNs => {
            let idle = k.idle_ticks(crate::arch::clock_ticks());
            crate::time::ticks_to_ns(idle, crate::time::mult_for(crate::time::hz())) as usize
        }
    }
}

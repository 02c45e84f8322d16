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
        Call::Yield => return ipc((Ok(0), After::Yield)),
        Call::SystemInfo(key) => Ok(system_info(k, key)),
        Call::DebugWrite { space, at, len } => {
            let mut buf = [0u8; 256];
            let step = buf.len();
            (0..len)
                .step_by(step)
                .try_for_each(|done| {
                    let n = (len - done).min(step);
                    let chunk = buf.get_mut(..n).ok_or(Error::BadAddress)?;
                    let from = at.offset(done).ok_or(Error::BadAddress)?;
                    copy_from_user(&mut space.lock(), from, chunk)?;
                    crate::arch::console_write(chunk);
                    Ok(())
                })
                .map(|()| len)
        }
        Call::Copy {
            from,
            src,
            to,
            slot,
            rights,
            badge,
            needed,
        } => k
            .caps
            .copy(from, src, to, Dest::At(slot), rights, badge, needed)
            .map(token_value),
        Call::Delegate {
            from,
            src,
            to,
            slot,
        } => k.caps.delegate(from, src, to, Dest::At(slot)).map(|t| {
            // A thread waiting through the moved token waits no more.
            if let Ok(o) = k.caps.lookup(to, t).map(|c| c.object().clone()) {
                k.recheck_waiters(o);
            }
            token_value(t)
        }),
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
            r.map(|p| usize::from(p == Progress::More))
        }
        Call::Insert(cspace, slot, object, ty) => match &object {
            // A new endpoint or notification first takes the table entry
            // decode reserved (cannot fail: it also predicted the id).
            KObject::Endpoint(r) if k.add_endpoint() != Ok(r.id()) => Err(Error::InvalidState),
            KObject::Notification(r) if k.add_notification() != Ok(r.id()) => {
                Err(Error::InvalidState)
            }
            _ => insert(k, cspace, slot, object, ty),
        },
        Call::CSpaceCreate {
            cspace,
            slot,
            new,
            reference,
        } => match k.caps.install_space(*new) {
            Ok(id) if id == reference.id() => {
                let object = KObject::CSpace(reference);
                insert(k, cspace, slot, object, ObjectType::CapSpace)
            }
            // Cannot happen: decode reserved the entry and predicted the id.
            _ => Err(Error::InvalidState),
        },
        Call::ThreadCreate {
            cspace,
            slot,
            thread,
            reference,
        } => match k.add_thread(thread) {
            Ok(id) if id == reference.id() => {
                let object = KObject::Thread(reference);
                insert(k, cspace, slot, object, ObjectType::Thread)
            }
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
        Call::SetAffinity(t, mask) => k.set_affinity(t, mask).map(|()| 0),
        Call::SetTls(t, value) => k.set_tls(t, value).map(|()| 0),
        Call::Kill(t) => k.kill(t).map(|()| 0),
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
        Call::FromRange(cspace, slot, space, pool, va, pages, take) => {
            let obj = space.lock().split_off(va.get(), pages, take, Some(pool));
            let ty = ObjectType::MemoryObject;
            obj.and_then(|o| insert(k, cspace, slot, KObject::Memory(o), ty))
        }
        Call::Unmap { space, va, pages } => space.lock().unmap(va.get(), pages).map(|()| 0),
        Call::Protect {
            space,
            va,
            pages,
            attr,
        } => space.lock().protect(va.get(), pages, attr).map(|()| 0),
    };
    Outcome::value(value)
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
        SystemInfoKey::IdleNs => {
            let idle = k.idle_ticks(crate::arch::clock_ticks());
            crate::time::ticks_to_ns(idle, crate::time::mult_for(crate::time::hz())) as usize
        }
        SystemInfoKey::OnlineCpus => k.online_mask() as usize,
        _ => super::light_info(key).unwrap_or(0),
    }
}

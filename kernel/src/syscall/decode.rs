//! Decoding: every argument, capability, right and resource of a call
//! checked and reserved, with no visible effect (see the parent module).

use super::{DEBUG_WRITE_MAX, USER_CSPACE_MAX_SLOTS};
use crate::cap::{CSpaceId, Cap, CapSpace, NewSpace};
use crate::mm::aspace::USER_END;
use crate::mm::kref::{KArc, ensure, try_box};
use crate::mm::paging::Attr;
use crate::mm::pool::MemoryPool;
use crate::mm::user::{MemoryObject, UserAddr, copy_from_user};
use crate::object::endpoint::ENDPOINT_PAGES;
use crate::object::thread::State;
use crate::object::{
    AddressSpaceObject, CSpaceRef, EndpointId, EndpointRef, KObject, NotificationId,
    NotificationRef, Object, Thread, ThreadId, ThreadRef,
};
use crate::sched::PRIORITIES;
use crate::task::Kernel;
use crate::task::NOTIFICATION_BITS;
use alloc::boxed::Box;
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::ipc::{MsgInfo, REGISTER_WORDS};
use keel_abi::syscall::{MEM_EAGER, PROT_EXEC, PROT_WRITE, RANGE_COW, RANGE_MOVE, SystemInfoKey};
use keel_abi::{Error, Syscall};

/// The six argument registers of a call, as user space left them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Args(pub(super) [usize; 6]);

/// A decoded call: checked, its objects resolved, its resources reserved.
pub(super) enum Call {
    /// A query answered by decoding it (identify, sizes, pool levels).
    Value(usize),
    SystemInfo(SystemInfoKey),
    DebugWrite {
        space: KArc<AddressSpaceObject>,
        at: UserAddr,
        len: usize,
    },
    /// Derive (`needed` empty, same space) or grant into a reserved slot.
    Copy {
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        slot: u32,
        rights: Rights,
        badge: u64,
        needed: Rights,
    },
    Delegate {
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        slot: u32,
    },
    Delete(CSpaceId, CapToken),
    Revoke(CSpaceId, CapToken),
    /// A new object's original capability into a reserved slot (a new
    /// endpoint or notification has its table room reserved and its pool
    /// charged).
    Insert(CSpaceId, u32, KObject, ObjectType),
    CSpaceCreate {
        cspace: CSpaceId,
        slot: u32,
        /// Boxed: it is the largest variant by far.
        new: Box<NewSpace<KObject>>,
        reference: KArc<CSpaceRef>,
    },
    ThreadCreate {
        cspace: CSpaceId,
        slot: u32,
        thread: Box<Thread>,
        reference: KArc<ThreadRef>,
    },
    Resume(ThreadId),
    Suspend(ThreadId),
    Exit(isize),
    SetPriority(ThreadId, u8),
    SetAffinity(ThreadId, u64),
    SetTls(ThreadId, usize),
    Yield,
    Kill(ThreadId),
    /// Send or call (`call`) on an endpoint.
    Send {
        ep: EndpointId,
        badge: u64,
        grant: bool,
        call: bool,
        nonblock: bool,
    },
    /// Receive; after a reply to the last call if `reply`.
    Recv {
        ep: EndpointId,
        reply: bool,
        nonblock: bool,
    },
    Reply,
    Signal(NotificationId, u64),
    Wait(NotificationId, bool),
    Bind(ThreadId, Option<KArc<NotificationRef>>),
    SetIpcBuffer(ThreadId, usize),
    SetFaultHandler(ThreadId, Option<(KArc<EndpointRef>, u64)>),
    /// A memory object (charged to `.3`) of `.5` pages at `.4` of `.2`,
    /// taken if `.6`, its capability into slot `.1` of `.0`.
    FromRange(
        CSpaceId,
        u32,
        KArc<AddressSpaceObject>,
        KArc<MemoryPool>,
        UserAddr,
        usize,
        bool,
    ),
    Map {
        space: KArc<AddressSpaceObject>,
        object: KArc<MemoryObject>,
        va: UserAddr,
        offset: usize,
        pages: usize,
        attr: Attr,
    },
    Unmap {
        space: KArc<AddressSpaceObject>,
        va: UserAddr,
        pages: usize,
    },
    Protect {
        space: KArc<AddressSpaceObject>,
        va: UserAddr,
        pages: usize,
        attr: Attr,
    },
}

pub(super) fn token(raw: usize) -> CapToken {
    CapToken::from_raw(raw as u64)
}

fn rights(raw: usize) -> Result<Rights, Error> {
    u32::try_from(raw)
        .ok()
        .and_then(Rights::from_bits)
        .ok_or(Error::InvalidArgument)
}

fn prot(raw: usize) -> Result<Attr, Error> {
    ensure(raw & !(PROT_WRITE | PROT_EXEC) == 0, Error::InvalidArgument)?;
    let mut a = Attr::empty();
    a.set(Attr::WRITE, raw & PROT_WRITE != 0);
    a.set(Attr::EXEC, raw & PROT_EXEC != 0);
    Ok(a)
}

/// Rights a mapping with `attr` needs on the memory object.
fn rights_for(attr: Attr) -> Rights {
    [(Attr::WRITE, Rights::WRITE), (Attr::EXEC, Rights::EXECUTE)]
        .into_iter()
        .filter(|&(a, _)| attr.contains(a))
        .fold(Rights::READ, |r, (_, x)| r | x)
}

/// The object `raw` names in `cspace`, which must be a `T` with `needed`.
pub(super) fn cap<T: Object>(
    k: &Kernel,
    cspace: CSpaceId,
    raw: usize,
    needed: Rights,
) -> Result<T, Error> {
    cap_and(k, cspace, raw, needed).map(|(o, _)| o)
}

/// Like [`cap`], with the capability itself (for its badge and rights).
pub(super) fn cap_and<T: Object>(
    k: &Kernel,
    cspace: CSpaceId,
    raw: usize,
    needed: Rights,
) -> Result<(T, &Cap<KObject>), Error> {
    let c = k.caps.lookup_as(cspace, token(raw), T::TYPE, needed)?;
    Ok((T::from_object(c.object()).ok_or(Error::WrongObjectType)?, c))
}

/// A live thread `raw` names, with the right to control it.
pub(super) fn thread(
    k: &Kernel,
    cspace: CSpaceId,
    raw: usize,
) -> Result<(ThreadId, &Thread), Error> {
    let id = cap::<KArc<ThreadRef>>(k, cspace, raw, Rights::WRITE)?.id();
    Ok((id, k.thread(id)?))
}

/// The capability space `dest` names, if a capability `raw` may be put
/// there: a capability to a space only into a space of lower rank
/// (`object::cspace`), so no cycle can keep spaces alive.
fn destination(k: &Kernel, cspace: CSpaceId, raw: usize, dest: usize) -> Result<CSpaceId, Error> {
    let to = cap::<KArc<CSpaceRef>>(k, cspace, dest, Rights::WRITE)?;
    if let KObject::CSpace(r) = k.caps.lookup(cspace, token(raw))?.object() {
        ensure(r.may_go_into(&to), Error::InvalidArgument)?;
    }
    Ok(to.id())
}

/// The message-info word of a sender: well formed, and a message longer
/// than the registers (or with capabilities) needs a readable IPC buffer.
fn message_info(k: &Kernel, caller: ThreadId, raw: usize) -> Result<MsgInfo, Error> {
    let info = MsgInfo(raw as u64);
    ensure(info.check(), Error::InvalidArgument)?;
    if info.len() > REGISTER_WORDS || info.caps() > 0 {
        let t = k.thread(caller)?;
        let buffer = t.ipc.buffer;
        ensure(buffer != 0, Error::InvalidArgument)?;
        // One byte proves the page (the whole buffer) readable.
        copy_from_user(&mut t.space().lock(), UserAddr::new(buffer), &mut [0u8; 1])?;
    }
    Ok(info)
}

/// The `n` capabilities a sender lists in its IPC buffer (none read if
/// `n` is 0): each must exist and have `GRANT`.
fn check_caps(k: &Kernel, caller: ThreadId, cs: CSpaceId, n: usize) -> Result<(), Error> {
    if n == 0 {
        return Ok(());
    }
    for token in k.sent_caps(caller, n)? {
        let c = k.caps.lookup(cs, token)?;
        ensure(c.rights().contains(Rights::GRANT), Error::AccessDenied)?;
    }
    Ok(())
}

/// Decodes call `number` with `args` from thread `caller`, whose capability
/// space is `cs`.
pub(super) fn decode(
    k: &mut Kernel,
    caller: ThreadId,
    cs: CSpaceId,
    number: usize,
    args: Args,
) -> Result<Call, Error> {
    let call = Syscall::try_from(number).map_err(|_| Error::NoSuchSyscall)?;
    // Each call names its argument registers (docs/abi.md) and converts
    // them to typed values before anything else.
    let Args(a) = args;
    Ok(match call {
        Syscall::DebugWrite => {
            let [ptr, len, ..] = a;
            ensure(len <= DEBUG_WRITE_MAX, Error::InvalidArgument)?;
            let space = k.thread(caller)?.space().clone();
            Call::DebugWrite {
                space,
                at: UserAddr::new(ptr),
                len,
            }
        }
        Syscall::SystemInfo => Call::SystemInfo(SystemInfoKey::try_from(a[0])?),
        Syscall::CapIdentify => {
            let c = k.caps.lookup(cs, token(a[0]))?;
            Call::Value(((c.object_type() as usize) << 8) | c.rights().bits() as usize)
        }
        Syscall::CapDerive | Syscall::CapGrant => {
            // Derive: (cap, rights, badge); grant: (cap, space, rights).
            let grant = call == Syscall::CapGrant;
            let [cap_raw, b, c, ..] = a;
            let (src, rights) = (token(cap_raw), rights(if grant { c } else { b })?);
            let (to, badge, needed) = if grant {
                (destination(k, cs, cap_raw, b)?, NO_BADGE, Rights::GRANT)
            } else {
                (cs, c as u64, Rights::NONE)
            };
            k.caps.check_copy(cs, src, to, rights, badge, needed)?;
            let slot = k.caps.reserve_slot(to)?;
            Call::Copy {
                from: cs,
                src,
                to,
                slot,
                rights,
                badge,
                needed,
            }
        }
        Syscall::CapDelegate => {
            let [cap_raw, dest, ..] = a;
            let src = token(cap_raw);
            let to = destination(k, cs, cap_raw, dest)?;
            k.caps.check_delegate(cs, src, to)?;
            let slot = k.caps.reserve_slot(to)?;
            Call::Delegate {
                from: cs,
                src,
                to,
                slot,
            }
        }
        Syscall::CapDelete => {
            let src = token(a[0]);
            k.caps.lookup(cs, src)?;
            Call::Delete(cs, src)
        }
        Syscall::CapRevoke => {
            let src = token(a[0]);
            let revoke = k.caps.lookup(cs, src)?.rights().contains(Rights::REVOKE);
            ensure(revoke, Error::AccessDenied)?;
            Call::Revoke(cs, src)
        }
        Syscall::CapSpaceCreate => {
            let [pool, slots, ..] = a;
            let pool = cap::<KArc<MemoryPool>>(k, cs, pool, Rights::WRITE)?;
            let valid = (1..=USER_CSPACE_MAX_SLOTS).contains(&slots);
            ensure(valid, Error::InvalidArgument)?;
            let depth = k.thread(caller)?.home().depth();
            let depth = depth.checked_add(1).ok_or(Error::InvalidArgument)?;
            let slot = k.caps.reserve_slot(cs)?;
            let pages = CapSpace::<KObject>::charge_pages(slots as u32);
            pool.charge(pages)?;
            let new = k
                .caps
                .prepare_space(slots as u32)
                .and_then(try_box)
                .inspect_err(|_| pool.credit(pages))?;
            // Made last: from here on only `invoke` or a drop (which
            // credits the pool) ends the charge.
            let reference = CSpaceRef::new(k.orphans(), new.id(), depth, Some((pool, pages)))?;
            Call::CSpaceCreate {
                cspace: cs,
                slot,
                new,
                reference,
            }
        }
        Syscall::ThreadCreate => {
            let [aspace, cspace, entry, stack, arg, ..] = a;
            let space = cap::<KArc<AddressSpaceObject>>(k, cs, aspace, Rights::WRITE)?;
            let home = if cspace == 0 {
                k.thread(caller)?.home().clone()
            } else {
                cap::<KArc<CSpaceRef>>(k, cs, cspace, Rights::WRITE)?.home()
            };
            // A killed process's space is gone even while references remain.
            k.caps.space(home.id())?;
            let valid = entry < USER_END && stack <= USER_END;
            ensure(valid, Error::InvalidArgument)?;
            let slot = k.caps.reserve_slot(cs)?;
            k.reserve_thread()?;
            let mut thread = try_box(Thread::new(space, home, entry, stack, arg)?)?;
            // It may run where its creator may (as Linux's threads inherit),
            // and in its creator's process its faults go where the
            // creator's do (to the process server, say).
            let creator = k.thread(caller)?;
            thread.set_affinity(creator.affinity());
            if creator.home().id() == thread.home().id() {
                thread.ipc.fault_handler = creator.ipc.fault_handler.clone();
            }
            // Names the thread `invoke` will add (the kernel lock is held
            // from here to there, so no other thread can take its slot).
            let reference = ThreadRef::new(k.orphans(), k.next_thread_id())?;
            Call::ThreadCreate {
                cspace: cs,
                slot,
                thread,
                reference,
            }
        }
        Syscall::ThreadResume | Syscall::ThreadSuspend => {
            let (id, t) = thread(k, cs, a[0])?;
            // Only a suspended thread resumes, and only another suspends.
            match (call, t.state() == State::Suspended) {
                (Syscall::ThreadResume, true) => Call::Resume(id),
                (Syscall::ThreadSuspend, false) => Call::Suspend(id),
                _ => return Err(Error::InvalidState),
            }
        }
        Syscall::ThreadExit => Call::Exit(a[0] as isize),
        Syscall::ThreadSetPriority => {
            let [thread_raw, prio, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            let prio = u8::try_from(prio)
                .ok()
                .filter(|&p| usize::from(p) < PRIORITIES)
                .ok_or(Error::InvalidArgument)?;
            Call::SetPriority(id, prio)
        }
        Syscall::ThreadSetAffinity => {
            let [thread_raw, mask, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            let cpus = k.cpu_count().min(64) as u32;
            let online = 1u64.checked_shl(cpus).map_or(u64::MAX, |b| b - 1);
            ensure(mask as u64 & online != 0, Error::InvalidArgument)?;
            Call::SetAffinity(id, mask as u64)
        }
        Syscall::ThreadSetTls => {
            let [thread_raw, base, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            ensure(base < USER_END, Error::InvalidArgument)?;
            Call::SetTls(id, base)
        }
        Syscall::Yield => Call::Yield,
        Syscall::ThreadKill => Call::Kill(thread(k, cs, a[0])?.0),
        Syscall::MemCreate => {
            let [pool, pages, flags, ..] = a;
            let pool = cap::<KArc<MemoryPool>>(k, cs, pool, Rights::WRITE)?;
            let valid = flags & !MEM_EAGER == 0 && pages != 0;
            ensure(valid, Error::InvalidArgument)?;
            let slot = k.caps.reserve_slot(cs)?;
            let obj = MemoryObject::anonymous_charged(pages, flags & MEM_EAGER != 0, Some(pool))?;
            Call::Insert(cs, slot, KObject::Memory(obj), ObjectType::MemoryObject)
        }
        Syscall::AspaceCreate => {
            let pool = cap::<KArc<MemoryPool>>(k, cs, a[0], Rights::WRITE)?;
            let slot = k.caps.reserve_slot(cs)?;
            let space = AddressSpaceObject::new(0, Some(pool))?;
            Call::Insert(
                cs,
                slot,
                KObject::AddressSpace(space),
                ObjectType::AddressSpace,
            )
        }
        Syscall::Map => {
            let [aspace, mem, va, offset, pages, prot_bits] = a;
            let attr = prot(prot_bits)?;
            Call::Map {
                space: cap(k, cs, aspace, Rights::WRITE)?,
                object: cap(k, cs, mem, rights_for(attr))?,
                va: UserAddr::new(va),
                offset,
                pages,
                attr,
            }
        }
        Syscall::Unmap => {
            let [aspace, va, pages, ..] = a;
            Call::Unmap {
                space: cap(k, cs, aspace, Rights::WRITE)?,
                va: UserAddr::new(va),
                pages,
            }
        }
        Syscall::Protect => {
            let [aspace, va, pages, prot_bits, ..] = a;
            let attr = prot(prot_bits)?;
            Call::Protect {
                space: cap(k, cs, aspace, Rights::WRITE)?,
                va: UserAddr::new(va),
                pages,
                attr,
            }
        }
        Syscall::MemFromRange => {
            let [aspace, va, pages, mode, pool, _] = a;
            let take = match mode {
                RANGE_MOVE => true,
                RANGE_COW => false,
                _ => return Err(Error::InvalidArgument),
            };
            let space = cap(k, cs, aspace, Rights::WRITE)?;
            let pool = cap(k, cs, pool, Rights::WRITE)?;
            let slot = k.caps.reserve_slot(cs)?;
            Call::FromRange(cs, slot, space, pool, UserAddr::new(va), pages, take)
        }
        Syscall::MemSize => {
            Call::Value(cap::<KArc<MemoryObject>>(k, cs, a[0], Rights::NONE)?.pages())
        }
        Syscall::PoolAvailable => {
            Call::Value(cap::<KArc<MemoryPool>>(k, cs, a[0], Rights::READ)?.available() as usize)
        }
        Syscall::EndpointCreate | Syscall::NotificationCreate => {
            let pool = cap::<KArc<MemoryPool>>(k, cs, a[0], Rights::WRITE)?;
            let slot = k.caps.reserve_slot(cs)?;
            // Each reference owns the charge from when it is made.
            let (object, ty) = if call == Syscall::EndpointCreate {
                let id = k.reserve_endpoint()?;
                pool.charge(ENDPOINT_PAGES)?;
                let r = EndpointRef::new(k.orphans(), id, Some(pool))?;
                (KObject::Endpoint(r), ObjectType::Endpoint)
            } else {
                let id = k.reserve_notification()?;
                pool.charge(ENDPOINT_PAGES)?;
                let r = NotificationRef::new(k.orphans(), id, Some(pool))?;
                (KObject::Notification(r), ObjectType::Notification)
            };
            Call::Insert(cs, slot, object, ty)
        }
        Syscall::Send | Syscall::Call => {
            let [ep_raw, info_raw, ..] = a;
            let info = message_info(k, caller, info_raw)?;
            let (ep, c) = cap_and::<KArc<EndpointRef>>(k, cs, ep_raw, Rights::WRITE)?;
            let (badge, grant) = (c.badge(), c.rights().contains(Rights::GRANT));
            ensure(grant || info.caps() == 0, Error::AccessDenied)?;
            check_caps(k, caller, cs, info.caps())?;
            Call::Send {
                ep: ep.id(),
                badge,
                grant,
                call: call == Syscall::Call,
                nonblock: info.has(MsgInfo::NONBLOCK),
            }
        }
        Syscall::Recv | Syscall::ReplyRecv => {
            let [ep_raw, info_raw, ..] = a;
            let reply = call == Syscall::ReplyRecv;
            let info = if reply {
                let info = message_info(k, caller, info_raw)?;
                check_caps(k, caller, cs, info.caps())?;
                info
            } else {
                MsgInfo(info_raw as u64)
            };
            let flags = reply || info.0 & !MsgInfo::USER_FLAGS == 0;
            ensure(info.check() && flags, Error::InvalidArgument)?;
            Call::Recv {
                ep: cap::<KArc<EndpointRef>>(k, cs, ep_raw, Rights::READ)?.id(),
                reply,
                nonblock: info.has(MsgInfo::NONBLOCK),
            }
        }
        Syscall::Reply => {
            let info = message_info(k, caller, a[1])?;
            check_caps(k, caller, cs, info.caps())?;
            Call::Reply
        }
        Syscall::Signal => {
            let [n_raw, bits, ..] = a;
            let bits = bits as u64;
            ensure(bits & !NOTIFICATION_BITS == 0, Error::InvalidArgument)?;
            let (n, c) = cap_and::<KArc<NotificationRef>>(k, cs, n_raw, Rights::WRITE)?;
            Call::Signal(n.id(), bits | c.badge())
        }
        Syscall::Wait | Syscall::Poll => {
            let n = cap::<KArc<NotificationRef>>(k, cs, a[0], Rights::READ)?.id();
            Call::Wait(n, call == Syscall::Poll)
        }
        Syscall::NotificationBind => {
            let [thread_raw, n_raw, ..] = a;
            let (id, t) = thread(k, cs, thread_raw)?;
            let bound = t.ipc.bound.is_some();
            if n_raw == 0 {
                ensure(bound, Error::InvalidState)?;
                Call::Bind(id, None)
            } else {
                let n = cap::<KArc<NotificationRef>>(k, cs, n_raw, Rights::READ)?;
                let free = !bound && k.notification(n.id())?.bound.is_none();
                ensure(free, Error::AlreadyExists)?;
                Call::Bind(id, Some(n))
            }
        }
        Syscall::ThreadSetIpcBuffer => {
            let [thread_raw, va, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            let aligned = va.is_multiple_of(crate::mm::object::PAGE);
            ensure(aligned && va < USER_END, Error::InvalidArgument)?;
            Call::SetIpcBuffer(id, va)
        }
        Syscall::ThreadSetFaultHandler => {
            let [thread_raw, ep_raw, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            let handler = match ep_raw {
                0 => None,
                raw => Some(cap_and(k, cs, raw, Rights::WRITE).map(|(ep, c)| (ep, c.badge()))?),
            };
            Call::SetFaultHandler(id, handler)
        }
        // Assigned numbers of subsystems that are not built yet.
        _ => return Err(Error::NoSuchSyscall),
    })
}

const _: () = assert!(core::mem::size_of::<Call>() <= 64);

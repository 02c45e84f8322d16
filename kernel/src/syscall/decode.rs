//! Decoding: every argument, capability, right and resource of a call
//! checked and reserved, with no visible effect (see the parent module).

use super::{DEBUG_WRITE_MAX, USER_CSPACE_MAX_SLOTS};
use crate::cap::{CSpaceId, CapSpace, NewSpace};
use crate::mm::aspace::USER_END;
use crate::mm::kref::{KArc, try_box};
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
        grant: bool,
    },
    Delegate {
        from: CSpaceId,
        src: CapToken,
        to: CSpaceId,
        slot: u32,
    },
    Delete(CSpaceId, CapToken),
    Revoke(CSpaceId, CapToken),
    /// A new object's original capability into a reserved slot.
    Insert {
        cspace: CSpaceId,
        slot: u32,
        object: KObject,
        ty: ObjectType,
    },
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
    /// A new endpoint or notification (its table room reserved, its pool
    /// charged, its capability's slot reserved).
    IpcObject {
        cspace: CSpaceId,
        slot: u32,
        object: KObject,
    },

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
    FromRange {
        cspace: CSpaceId,
        slot: u32,
        space: KArc<AddressSpaceObject>,
        pool: KArc<MemoryPool>,
        va: UserAddr,
        pages: usize,
        take: bool,
    },
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
    if raw & !(PROT_WRITE | PROT_EXEC) != 0 {
        return Err(Error::InvalidArgument);
    }
    let mut a = Attr::empty();
    a.set(Attr::WRITE, raw & PROT_WRITE != 0);
    a.set(Attr::EXEC, raw & PROT_EXEC != 0);
    Ok(a)
}

/// Rights a mapping with `attr` needs on the memory object.
fn rights_for(attr: Attr) -> Rights {
    let mut r = Rights::READ;
    if attr.contains(Attr::WRITE) {
        r = r | Rights::WRITE;
    }
    if attr.contains(Attr::EXEC) {
        r = r | Rights::EXECUTE;
    }
    r
}

/// The object `raw` names in `cspace`, which must be a `T` with `needed`.
pub(super) fn cap<T: Object>(
    k: &Kernel,
    cspace: CSpaceId,
    raw: usize,
    needed: Rights,
) -> Result<T, Error> {
    let c = k.caps.lookup_as(cspace, token(raw), T::TYPE, needed)?;
    T::from_object(c.object()).ok_or(Error::WrongObjectType)
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
    if let KObject::CSpace(r) = k.caps.lookup(cspace, token(raw))?.object()
        && !r.may_go_into(&to)
    {
        return Err(Error::InvalidArgument);
    }
    Ok(to.id())
}

/// The message-info word of a sender: well formed, and a message longer
/// than the registers (or with capabilities) needs a readable IPC buffer.
fn message_info(k: &Kernel, caller: ThreadId, raw: usize) -> Result<MsgInfo, Error> {
    let info = MsgInfo(raw as u64);
    if !info.check() {
        return Err(Error::InvalidArgument);
    }
    if info.len() > REGISTER_WORDS || info.caps() > 0 {
        let t = k.thread(caller)?;
        let buffer = t.ipc.buffer;
        if buffer == 0 {
            return Err(Error::InvalidArgument);
        }
        // One byte proves the page (the whole buffer) readable.
        copy_from_user(&mut t.space().lock(), UserAddr::new(buffer), &mut [0u8; 1])?;
    }
    Ok(info)
}

/// The capabilities a sender lists in its IPC buffer: each must exist and
/// have `GRANT`.
fn check_caps(k: &Kernel, caller: ThreadId, cs: CSpaceId, n: usize) -> Result<(), Error> {
    for token in k.sent_caps(caller, n)? {
        let c = k.caps.lookup(cs, token)?;
        if !c.rights().contains(Rights::GRANT) {
            return Err(Error::AccessDenied);
        }
    }
    Ok(())
}

fn endpoint(o: &KObject) -> Result<EndpointId, Error> {
    match o {
        KObject::Endpoint(r) => Ok(r.id()),
        _ => Err(Error::WrongObjectType),
    }
}

fn notification(o: &KObject) -> Result<NotificationId, Error> {
    match o {
        KObject::Notification(r) => Ok(r.id()),
        _ => Err(Error::WrongObjectType),
    }
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
            if len > DEBUG_WRITE_MAX {
                return Err(Error::InvalidArgument);
            }
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
        Syscall::CapDerive => {
            let [cap_raw, rights_raw, badge, ..] = a;
            let (src, rights) = (token(cap_raw), rights(rights_raw)?);
            let badge = badge as u64;
            k.caps
                .check_copy(cs, src, cs, rights, badge, Rights::NONE)?;
            let slot = k.caps.reserve_slot(cs)?;
            Call::Copy {
                from: cs,
                src,
                to: cs,
                slot,
                rights,
                badge,
                grant: false,
            }
        }
        Syscall::CapGrant => {
            let [cap_raw, dest, rights_raw, ..] = a;
            let (src, rights) = (token(cap_raw), rights(rights_raw)?);
            let to = destination(k, cs, cap_raw, dest)?;
            k.caps
                .check_copy(cs, src, to, rights, NO_BADGE, Rights::GRANT)?;
            let slot = k.caps.reserve_slot(to)?;
            Call::Copy {
                from: cs,
                src,
                to,
                slot,
                rights,
                badge: NO_BADGE,
                grant: true,
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
            if !k.caps.lookup(cs, src)?.rights().contains(Rights::REVOKE) {
                return Err(Error::AccessDenied);
            }
            Call::Revoke(cs, src)
        }
        Syscall::CapSpaceCreate => {
            let [pool, slots, ..] = a;
            let pool = cap::<KArc<MemoryPool>>(k, cs, pool, Rights::WRITE)?;
            if slots == 0 || slots > USER_CSPACE_MAX_SLOTS {
                return Err(Error::InvalidArgument);
            }
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
            if entry >= USER_END || stack > USER_END {
                return Err(Error::InvalidArgument);
            }
            let slot = k.caps.reserve_slot(cs)?;
            k.reserve_thread()?;
            let thread = try_box(Thread::new(space, home, entry, stack, arg)?)?;
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
        Syscall::ThreadResume => {
            let (id, t) = thread(k, cs, a[0])?;
            if t.state() != State::Suspended {
                return Err(Error::InvalidState);
            }
            Call::Resume(id)
        }
        Syscall::ThreadSuspend => {
            let (id, t) = thread(k, cs, a[0])?;
            if t.state() == State::Suspended {
                return Err(Error::InvalidState);
            }
            Call::Suspend(id)
        }
        Syscall::ThreadExit => Call::Exit(a[0] as isize),
        Syscall::ThreadSetPriority => {
            let [thread_raw, prio, ..] = a;
            let (id, t) = thread(k, cs, thread_raw)?;
            let prio = u8::try_from(prio)
                .ok()
                .filter(|&p| usize::from(p) < PRIORITIES)
                .ok_or(Error::InvalidArgument)?;
            let _ = t;
            Call::SetPriority(id, prio)
        }
        Syscall::ThreadSetAffinity => {
            let [thread_raw, mask, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            let cpus = k.cpu_count().min(64);
            let online = if cpus >= 64 {
                u64::MAX
            } else {
                (1u64 << cpus) - 1
            };
            if mask as u64 & online == 0 {
                return Err(Error::InvalidArgument);
            }
            Call::SetAffinity(id, mask as u64)
        }
        Syscall::ThreadSetTls => {
            let [thread_raw, base, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            if base >= USER_END {
                return Err(Error::InvalidArgument);
            }
            Call::SetTls(id, base)
        }
        Syscall::Yield => Call::Yield,
        Syscall::ThreadKill => Call::Kill(thread(k, cs, a[0])?.0),
        Syscall::MemCreate => {
            let [pool, pages, flags, ..] = a;
            let pool = cap::<KArc<MemoryPool>>(k, cs, pool, Rights::WRITE)?;
            if flags & !MEM_EAGER != 0 || pages == 0 {
                return Err(Error::InvalidArgument);
            }
            let slot = k.caps.reserve_slot(cs)?;
            let obj = MemoryObject::anonymous_charged(pages, flags & MEM_EAGER != 0, Some(pool))?;
            Call::Insert {
                cspace: cs,
                slot,
                object: KObject::Memory(obj),
                ty: ObjectType::MemoryObject,
            }
        }
        Syscall::AspaceCreate => {
            let pool = cap::<KArc<MemoryPool>>(k, cs, a[0], Rights::WRITE)?;
            let slot = k.caps.reserve_slot(cs)?;
            let space = AddressSpaceObject::new(0, Some(pool))?;
            Call::Insert {
                cspace: cs,
                slot,
                object: KObject::AddressSpace(space),
                ty: ObjectType::AddressSpace,
            }
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
            Call::FromRange {
                cspace: cs,
                slot: k.caps.reserve_slot(cs)?,
                space,
                pool,
                va: UserAddr::new(va),
                pages,
                take,
            }
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
            let object = if call == Syscall::EndpointCreate {
                let id = k.reserve_endpoint()?;
                pool.charge(ENDPOINT_PAGES)?;
                KObject::Endpoint(EndpointRef::new(k.orphans(), id, Some(pool))?)
            } else {
                let id = k.reserve_notification()?;
                pool.charge(ENDPOINT_PAGES)?;
                KObject::Notification(NotificationRef::new(k.orphans(), id, Some(pool))?)
            };
            Call::IpcObject {
                cspace: cs,
                slot,
                object,
            }
        }
        Syscall::Send | Syscall::Call => {
            let [ep_raw, info_raw, ..] = a;
            let info = message_info(k, caller, info_raw)?;
            let c = k
                .caps
                .lookup_as(cs, token(ep_raw), ObjectType::Endpoint, Rights::WRITE)?;
            let (badge, grant) = (c.badge(), c.rights().contains(Rights::GRANT));
            let ep = endpoint(c.object())?;
            if info.caps() > 0 {
                if !grant {
                    return Err(Error::AccessDenied);
                }
                check_caps(k, caller, cs, info.caps())?;
            }
            Call::Send {
                ep,
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
                if info.caps() > 0 {
                    check_caps(k, caller, cs, info.caps())?;
                }
                info
            } else {
                MsgInfo(info_raw as u64)
            };
            if !info.check() || (!reply && info.0 & !MsgInfo::USER_FLAGS != 0) {
                return Err(Error::InvalidArgument);
            }
            let c = k
                .caps
                .lookup_as(cs, token(ep_raw), ObjectType::Endpoint, Rights::READ)?;
            Call::Recv {
                ep: endpoint(c.object())?,
                reply,
                nonblock: info.has(MsgInfo::NONBLOCK),
            }
        }
        Syscall::Reply => {
            let info = message_info(k, caller, a[1])?;
            if info.caps() > 0 {
                check_caps(k, caller, cs, info.caps())?;
            }
            Call::Reply
        }
        Syscall::Signal => {
            let [n_raw, bits, ..] = a;
            if bits as u64 & !NOTIFICATION_BITS != 0 {
                return Err(Error::InvalidArgument);
            }
            let c = k
                .caps
                .lookup_as(cs, token(n_raw), ObjectType::Notification, Rights::WRITE)?;
            let badge = c.badge();
            let n = notification(c.object())?;
            Call::Signal(n, bits as u64 | badge)
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
                if !bound {
                    return Err(Error::InvalidState);
                }
                Call::Bind(id, None)
            } else {
                let n = cap::<KArc<NotificationRef>>(k, cs, n_raw, Rights::READ)?;
                if bound || k.notification(n.id())?.bound.is_some() {
                    return Err(Error::AlreadyExists);
                }
                Call::Bind(id, Some(n))
            }
        }
        Syscall::ThreadSetIpcBuffer => {
            let [thread_raw, va, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            if va % crate::mm::object::PAGE != 0 || va >= USER_END {
                return Err(Error::InvalidArgument);
            }
            Call::SetIpcBuffer(id, va)
        }
        Syscall::ThreadSetFaultHandler => {
            let [thread_raw, ep_raw, ..] = a;
            let (id, _) = thread(k, cs, thread_raw)?;
            let handler = if ep_raw == 0 {
                None
            } else {
                let c = k
                    .caps
                    .lookup_as(cs, token(ep_raw), ObjectType::Endpoint, Rights::WRITE)?;
                let badge = c.badge();
                Some((
                    KArc::<EndpointRef>::from_object(c.object()).ok_or(Error::WrongObjectType)?,
                    badge,
                ))
            };
            Call::SetFaultHandler(id, handler)
        }
        // Assigned numbers of subsystems that are not built yet.
        _ => return Err(Error::NoSuchSyscall),
    })
}

const _: () = assert!(core::mem::size_of::<Call>() <= 64);

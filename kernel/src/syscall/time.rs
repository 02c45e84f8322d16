//! System calls of scheduling, interrupts and time (the 0x60 block and
//! `ThreadSetSched`/`ThreadInfo`): sleeping, IPC deadlines, timers,
//! scheduling classes and statistics, CPU hotplug, interrupt lines, I/O
//! ports and device memory.
//! Decode, then invoke, as in the rest of `syscall`; kept in their own
//! [`TimeCall`] so that the common calls' decoded form stays small (every
//! system call moves it).
#![forbid(unsafe_code)]

use super::Outcome;
use super::decode::{Args, cap, cap_and, thread};
use super::invoke::insert;
use crate::cap::CSpaceId;
use crate::mm::kref::{KArc, ensure};
use crate::mm::pool::MemoryPool;
use crate::mm::user::MemoryObject;
use crate::object::device::{IrqBinding, IrqId};
use crate::object::endpoint::ENDPOINT_PAGES;
use crate::object::{DeviceControl, IoPorts, IrqRef, KObject, ThreadId, Timer, TimerId, TimerRef};
use crate::object::{NotificationRef, ThreadRef};
use crate::sched::PRIORITIES;
use crate::task::{Kernel, NOTIFICATION_BITS};
use keel_abi::cap::{NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::ThreadInfoKey;
use keel_abi::{Error, Syscall};

/// Whether system call `n` is decoded here: `ThreadSetSched`,
/// `ThreadInfo` and the 0x60 block.
pub(super) fn handles(n: usize) -> bool {
    (0x60..0x70).contains(&n) || (0x29..=0x2a).contains(&n)
}

/// The notification `raw` names (needs `WRITE`) and the bits it is
/// signalled with: its capability's badge, or 1.
fn signal_target(
    k: &Kernel,
    cs: CSpaceId,
    raw: usize,
) -> Result<(KArc<NotificationRef>, u64), Error> {
    let (n, c) = cap_and::<KArc<NotificationRef>>(k, cs, raw, Rights::WRITE)?;
    let bits = match c.badge() {
        NO_BADGE => 1,
        b => b & NOTIFICATION_BITS,
    };
    Ok((n, bits))
}

/// Decodes and invokes a call of the block (kept out of line: the common
/// calls' path stays as lean as it was).
#[inline(never)]
pub(super) fn dispatch(
    k: &mut Kernel,
    caller: ThreadId,
    cs: CSpaceId,
    number: usize,
    args: Args,
) -> Outcome {
    match decode(k, caller, cs, number, args) {
        Ok(call) => invoke(k, caller, call),
        Err(e) => Outcome::value(Err(e)),
    }
}

/// A decoded call of the block.
pub(super) enum TimeCall {
    /// Block until this clock tick.
    Sleep(u64),
    /// Arm (or not) a deadline for the caller's next call.
    IpcTimeout(Option<u64>),
    /// A handler for `line` (reserved), bound as `binding`.
    IrqHandler {
        cspace: CSpaceId,
        slot: u32,
        object: KObject,
        line: u32,
        binding: IrqBinding,
    },
    IrqAck(u32, u64),
    /// A new timer (its table room reserved, its pool charged, its
    /// capability's slot reserved).
    Timer {
        cspace: CSpaceId,
        slot: u32,
        object: KObject,
        timer: Timer,
    },
    SetTimer(TimerId, Option<u64>, u64),
    SetSched(ThreadId, crate::sched::Params),
    /// Take a CPU offline or bring it back.
    SetOnline(usize, bool),
    ThreadInfo(ThreadId, ThreadInfoKey),
    /// Read (`None`) or write an I/O port.
    Port(u16, u8, Option<u32>),
    /// A new capability to `object` in the reserved slot.
    Insert(CSpaceId, u32, KObject, ObjectType),
}

/// Checks a call of the block (see `decode`).
pub(super) fn decode(
    k: &mut Kernel,
    _caller: ThreadId,
    cs: CSpaceId,
    number: usize,
    args: Args,
) -> Result<TimeCall, Error> {
    let call = Syscall::try_from(number).map_err(|_| Error::NoSuchSyscall)?;
    let Args(a) = args;
    Ok(match call {
        Syscall::IpcTimeout => match (a[0], crate::time::hz()) {
            (0, _) => TimeCall::IpcTimeout(None),
            (_, 0) => return Err(Error::NotSupported),
            (ns, _) => TimeCall::IpcTimeout(Some(crate::time::ns_to_ticks(ns as u64))),
        },
        Syscall::Sleep => match crate::time::hz() {
            0 => return Err(Error::NotSupported),
            _ => TimeCall::Sleep(crate::time::ns_to_ticks(a[0] as u64)),
        },
        Syscall::IrqHandlerCreate => {
            let [dc, line, n_raw, ..] = a;
            cap::<KArc<DeviceControl>>(k, cs, dc, Rights::WRITE)?;
            let line = u32::try_from(line).map_err(|_| Error::InvalidArgument)?;
            let (notification, bits) = signal_target(k, cs, n_raw)?;
            let slot = k.caps.reserve_slot(cs)?;
            let serial = k.irq_reserve(line)?;
            TimeCall::IrqHandler {
                cspace: cs,
                slot,
                object: KObject::Irq(IrqRef::new(k.orphans(), IrqId { line, serial }, None)?),
                line,
                binding: IrqBinding {
                    serial,
                    notification,
                    bits,
                },
            }
        }
        Syscall::TimerCreate => {
            let [pool_raw, n_raw, ..] = a;
            let pool = cap::<KArc<MemoryPool>>(k, cs, pool_raw, Rights::WRITE)?;
            let (notification, bits) = signal_target(k, cs, n_raw)?;
            let slot = k.caps.reserve_slot(cs)?;
            let id = k.reserve_timer()?;
            pool.charge(ENDPOINT_PAGES)?;
            TimeCall::Timer {
                cspace: cs,
                slot,
                object: KObject::Timer(TimerRef::new(k.orphans(), id, Some(pool))?),
                timer: Timer {
                    notification,
                    bits,
                    period: 0,
                },
            }
        }
        Syscall::TimerSet => {
            let [timer_raw, deadline, period, ..] = a;
            let id = cap::<KArc<TimerRef>>(k, cs, timer_raw, Rights::WRITE)?.id();
            ensure(crate::time::hz() != 0, Error::NotSupported)?;
            let period_ok = period == 0 || period as u64 >= crate::sched::MIN_SLICE_NS;
            ensure(period_ok, Error::InvalidArgument)?;
            let deadline = (deadline != 0).then(|| crate::time::ns_to_ticks(deadline as u64));
            TimeCall::SetTimer(id, deadline, crate::time::ns_to_ticks(period as u64))
        }
        Syscall::IrqAck => {
            let r = cap::<KArc<IrqRef>>(k, cs, a[0], Rights::WRITE)?;
            TimeCall::IrqAck(r.id().line, r.id().serial)
        }
        Syscall::IoPortCreate => {
            let [dc, base, count, ..] = a;
            cap::<KArc<DeviceControl>>(k, cs, dc, Rights::WRITE)?;
            let (Ok(base), Ok(count)) = (u32::try_from(base), u32::try_from(count)) else {
                return Err(Error::InvalidArgument);
            };
            crate::arch::io_ports_ok(base, count)?;
            let ports = IoPorts {
                base: u16::try_from(base).map_err(|_| Error::InvalidArgument)?,
                count: u16::try_from(count).map_err(|_| Error::InvalidArgument)?,
            };
            let slot = k.caps.reserve_slot(cs)?;
            TimeCall::Insert(
                cs,
                slot,
                KObject::IoPorts(KArc::try_new(ports)?),
                ObjectType::IoPortRange,
            )
        }
        Syscall::IoPortIn | Syscall::IoPortOut => {
            let [ports, port, width, value, ..] = a;
            let write = call == Syscall::IoPortOut;
            let rights = if write { Rights::WRITE } else { Rights::READ };
            let p = cap::<KArc<IoPorts>>(k, cs, ports, rights)?;
            let ok = matches!(width, 1 | 2 | 4) && p.covers(port, width);
            ensure(ok, Error::InvalidArgument)?;
            let value = match write {
                true => Some(u32::try_from(value).map_err(|_| Error::InvalidArgument)?),
                false => None,
            };
            TimeCall::Port(port as u16, width as u8, value)
        }
        Syscall::MemFromDevice => {
            let [dc, phys, pages, ..] = a;
            cap::<KArc<DeviceControl>>(k, cs, dc, Rights::WRITE)?;
            let len = pages
                .checked_mul(crate::mm::object::PAGE)
                .ok_or(Error::InvalidArgument)?;
            let ok =
                phys % crate::mm::object::PAGE == 0 && k.device_range_ok(phys as u64, len as u64);
            ensure(ok, Error::InvalidArgument)?;
            let slot = k.caps.reserve_slot(cs)?;
            TimeCall::Insert(
                cs,
                slot,
                KObject::Memory(MemoryObject::physical(phys as u64, pages, true)?),
                ObjectType::MemoryObject,
            )
        }
        Syscall::CpuSetOnline => {
            let [dc, cpu, online, ..] = a;
            cap::<KArc<DeviceControl>>(k, cs, dc, Rights::WRITE)?;
            ensure(online <= 1, Error::InvalidArgument)?;
            TimeCall::SetOnline(cpu, online == 1)
        }
        Syscall::ThreadSetSched => {
            let [thread_raw, class, param, slice, ..] = a;
            let (id, t) = thread(k, cs, thread_raw)?;
            TimeCall::SetSched(id, sched_params(*t.sched(), class, param, slice)?)
        }
        Syscall::ThreadInfo => {
            let [thread_raw, key, ..] = a;
            let id = cap::<KArc<ThreadRef>>(k, cs, thread_raw, Rights::READ)?.id();
            k.thread(id)?;
            TimeCall::ThreadInfo(id, ThreadInfoKey::try_from(key)?)
        }
        _ => return Err(Error::NoSuchSyscall),
    })
}

/// The scheduling parameters `ThreadSetSched` asks for (`old` keeps the
/// thread's virtual time and what the class leaves alone).
fn sched_params(
    old: crate::sched::Params,
    class: usize,
    param: usize,
    slice: usize,
) -> Result<crate::sched::Params, Error> {
    use crate::sched::{Class, MAX_SLICE_NS, MIN_SLICE_NS, RR_SLICE_NS};
    use keel_abi::syscall::SchedClass;
    let prio = || {
        u8::try_from(param)
            .ok()
            .filter(|&p| usize::from(p) < PRIORITIES)
            .ok_or(Error::InvalidArgument)
    };
    let p = match SchedClass::try_from(class)? {
        SchedClass::RoundRobin => crate::sched::Params {
            class: Class::RoundRobin,
            prio: prio()?,
            slice_ns: match slice as u64 {
                0 => RR_SLICE_NS,
                s if (MIN_SLICE_NS..=MAX_SLICE_NS).contains(&s) => s,
                _ => return Err(Error::InvalidArgument),
            },
            ..old
        },
        SchedClass::Fifo if slice == 0 => crate::sched::Params {
            class: Class::Fifo,
            prio: prio()?,
            ..old
        },
        SchedClass::Normal if slice == 0 => {
            let nice = i8::try_from(param as isize)
                .ok()
                .filter(|n| (-20..=19).contains(n))
                .ok_or(Error::InvalidArgument)?;
            crate::sched::Params {
                class: Class::Normal,
                nice,
                ..old
            }
        }
        SchedClass::Idle if slice == 0 && param == 0 => crate::sched::Params {
            class: Class::Idle,
            ..old
        },
        // A slice for a class without one, or a parameter for `Idle`.
        _ => return Err(Error::InvalidArgument),
    };
    Ok(p)
}

/// Does a decoded call of the block.
pub(super) fn invoke(k: &mut Kernel, caller: ThreadId, call: TimeCall) -> Outcome {
    let value = match call {
        TimeCall::IpcTimeout(deadline) => k.arm_next_timeout(caller, deadline).map(|()| 0),
        TimeCall::Sleep(deadline) => {
            return Outcome {
                value: Ok(0),
                after: k.sleep(caller, deadline, crate::arch::clock_ticks()),
            };
        }
        TimeCall::IrqHandler {
            cspace,
            slot,
            object,
            line,
            binding,
        } => {
            k.irq_bind(line, binding);
            insert(k, cspace, slot, object, ObjectType::IrqHandler)
        }
        TimeCall::Timer {
            cspace,
            slot,
            object,
            timer,
        } => match (&object, k.add_timer(timer)) {
            (KObject::Timer(r), Ok(id)) if id == r.id() => {
                insert(k, cspace, slot, object, ObjectType::Timer)
            }
            // Cannot happen: decode reserved the entry and predicted the id.
            _ => Err(Error::InvalidState),
        },
        TimeCall::SetTimer(id, deadline, period) => k.set_timer(id, deadline, period).map(|()| 0),
        TimeCall::IrqAck(line, serial) => k.irq_ack(line, serial).map(|()| 0),
        TimeCall::Port(port, width, value) => crate::arch::port_io(port, width, value)
            .map(|v| v as usize)
            .ok_or(Error::NotSupported),
        TimeCall::SetSched(t, params) => k.set_sched(t, params).map(|()| 0),
        TimeCall::SetOnline(cpu, online) => k.set_online(cpu, online).map(|()| 0),
        TimeCall::ThreadInfo(t, key) => k.thread_info(t, key),
        TimeCall::Insert(cspace, slot, object, ty) => insert(k, cspace, slot, object, ty),
    };
    Outcome::value(value)
}

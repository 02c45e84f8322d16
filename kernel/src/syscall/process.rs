//! System calls of the 0x50 block, the kernel's part of processes (the
//! process server in user space does the rest, docs/processes.md): nested
//! pools, fork of an address space, inheritance of capabilities, and a
//! thread's copy of another's registers. Decode, then invoke, as in the
//! rest of `syscall`; `AspaceFork` and `CapSpaceInherit` may still fail
//! for lack of memory when invoked (nothing visible is left half done but
//! the capabilities copied so far).
#![forbid(unsafe_code)]

use super::Outcome;
use super::decode::{Args, cap, thread};
use super::invoke::insert;
use crate::cap::CSpaceId;
use crate::mm::kref::{KArc, ensure};
use crate::mm::pool::MemoryPool;
use crate::object::thread::State;
use crate::object::{AddressSpaceObject, CSpaceRef, KObject, ThreadId, ThreadRef};
use crate::task::Kernel;
use keel_abi::cap::{ObjectType, Rights};
use keel_abi::{Error, Syscall};

/// Capability slots one `CapSpaceInherit` looks at.
pub const INHERIT_WINDOW: u32 = 256;

/// Whether system call `n` is decoded here.
pub(super) fn handles(n: usize) -> bool {
    (0x50..0x60).contains(&n)
}

/// A decoded call of the block.
enum ProcessCall {
    /// A new object's capability into a reserved slot.
    Insert(CSpaceId, u32, KObject, ObjectType),
    /// Fork `.2` charged to `.3`, its capability into slot `.1` of `.0`.
    Fork(CSpaceId, u32, KArc<AddressSpaceObject>, KArc<MemoryPool>),
    Inherit {
        from: CSpaceId,
        to: KArc<CSpaceRef>,
        start: u32,
    },
    Copy(ThreadId, ThreadId),
}

/// Decodes and invokes a call of the block.
#[inline(never)]
pub(super) fn dispatch(k: &mut Kernel, cs: CSpaceId, number: usize, args: Args) -> Outcome {
    let value = decode(k, cs, number, args).and_then(|call| invoke(k, call));
    Outcome::value(value)
}

fn decode(
    k: &mut Kernel,
    cs: CSpaceId,
    number: usize,
    Args(a): Args,
) -> Result<ProcessCall, Error> {
    let call = Syscall::try_from(number).map_err(|_| Error::NoSuchSyscall)?;
    Ok(match call {
        Syscall::PoolCreate => {
            let [pool, pages, ..] = a;
            let pool = cap::<KArc<MemoryPool>>(k, cs, pool, Rights::WRITE)?;
            ensure(pages > 0, Error::InvalidArgument)?;
            let slot = k.caps.reserve_slot(cs)?;
            let new = MemoryPool::carve(&pool, pages as u64)?;
            ProcessCall::Insert(cs, slot, KObject::Pool(new), ObjectType::MemoryPool)
        }
        Syscall::AspaceFork => {
            let [aspace, pool, ..] = a;
            let space = cap(k, cs, aspace, Rights::WRITE)?;
            let pool = cap(k, cs, pool, Rights::WRITE)?;
            ProcessCall::Fork(cs, k.caps.reserve_slot(cs)?, space, pool)
        }
        Syscall::CapSpaceInherit => {
            let [src, dst, start, ..] = a;
            let from = cap::<KArc<CSpaceRef>>(k, cs, src, Rights::READ)?.id();
            let to = cap::<KArc<CSpaceRef>>(k, cs, dst, Rights::WRITE)?;
            // A killed process's space is gone even while references remain.
            k.caps.space(to.id())?;
            let start = u32::try_from(start).map_err(|_| Error::InvalidArgument)?;
            ensure(
                start < k.caps.space(from)?.max_slots(),
                Error::InvalidArgument,
            )?;
            ProcessCall::Inherit { from, to, start }
        }
        Syscall::ThreadCopy => {
            let [src, dst, ..] = a;
            let from = cap::<KArc<ThreadRef>>(k, cs, src, Rights::READ)?.id();
            let running = k.thread(from)?.state() == State::Running;
            let (to, t) = thread(k, cs, dst)?;
            // Only a stopped thread's registers are in its TCB, and only a
            // suspended thread may have them replaced.
            ensure(
                !running && t.state() == State::Suspended,
                Error::InvalidState,
            )?;
            ensure(from != to, Error::InvalidArgument)?;
            ProcessCall::Copy(from, to)
        }
        _ => return Err(Error::NoSuchSyscall),
    })
}

fn invoke(k: &mut Kernel, call: ProcessCall) -> Result<usize, Error> {
    match call {
        ProcessCall::Insert(cspace, slot, object, ty) => insert(k, cspace, slot, object, ty),
        ProcessCall::Fork(cspace, slot, space, pool) => {
            let copy = space.lock().clone_cow(0, Some(pool))?;
            let object = KObject::AddressSpace(AddressSpaceObject::from_space(copy)?);
            insert(k, cspace, slot, object, ObjectType::AddressSpace)
        }
        ProcessCall::Inherit { from, to, start } => {
            // A capability to a space only into one of lower rank.
            let allow = |o: &KObject| !matches!(o, KObject::CSpace(r) if !r.may_go_into(&to));
            let next = k
                .caps
                .inherit(from, to.id(), start, INHERIT_WINDOW, allow)?;
            Ok(next.map_or(0, |n| n as usize))
        }
        ProcessCall::Copy(from, to) => {
            let state = k.thread(from)?.cpu_state();
            k.thread_mut(to)?.set_cpu_state(state);
            Ok(0)
        }
    }
}

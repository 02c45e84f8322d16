//! The system-call dispatcher: decode → check → invoke.
//!
//! Every call first decodes and validates all of its arguments (numbers,
//! ranges, flags, capability tokens with their object types and rights)
//! without side effects, and only then acts. Any failure is an error code
//! returned to the caller (`keel_abi::Error`); nothing a user passes can
//! panic the kernel. User memory is only read or written through
//! `mm::user`'s checked copy helpers. Numbers and argument layouts are in
//! `keel_abi::Syscall` and `docs/abi.md`.

use crate::cap::CapSpace;
use crate::cap::{Dest, Progress, SpaceId};
use crate::mm::kref::KArc;
use crate::mm::paging::Attr;
use crate::mm::quota::Quota;
use crate::mm::user::{UserObject, copy_from_user};
use crate::task::{After, CSpaceRef, KObject, Kernel, SpaceCell, ThreadId, ThreadRef};
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::{MEM_EAGER, PROT_EXEC, PROT_WRITE, SystemInfoKey};
use keel_abi::{Error, Syscall};

/// Most bytes one `DebugWrite` prints.
pub const DEBUG_WRITE_MAX: usize = 64 * 1024;
/// Capability descendants removed per `CapRevoke` call.
pub const REVOKE_BUDGET: usize = 256;
/// Most slots of a capability space made by `CapSpaceCreate`.
pub const USER_CSPACE_MAX_SLOTS: usize = 1 << 16;

type SysResult = Result<usize, Error>;

/// Runs system call `number` for thread `caller` (whose capability space
/// is `cspace`); returns the result and what the scheduler should do next.
pub fn dispatch(
    k: &mut Kernel,
    caller: ThreadId,
    cspace: SpaceId,
    number: usize,
    a: [usize; 6],
) -> (SysResult, After) {
    let Ok(call) = Syscall::try_from(number) else {
        return (Err(Error::NoSuchSyscall), After::Continue);
    };
    let mut cx = Cx { k, caller, cspace };
    let result = match call {
        Syscall::DebugWrite => cx.debug_write(a[0], a[1]),
        Syscall::SystemInfo => cx.system_info(a[0]),
        Syscall::CapIdentify => cx.cap_identify(a[0]),
        Syscall::CapDerive => cx.cap_derive(a[0], a[1], a[2]),
        Syscall::CapGrant => cx.cap_grant(a[0], a[1], a[2]),
        Syscall::CapDelegate => cx.cap_delegate(a[0], a[1]),
        Syscall::CapDelete => cx.cap_delete(a[0]),
        Syscall::CapRevoke => cx.cap_revoke(a[0]),
        Syscall::CapSpaceCreate => cx.cspace_create(a[0], a[1]),
        Syscall::ThreadCreate => cx.thread_create(a[0], a[1], a[2], a[3], a[4]),
        Syscall::ThreadResume => cx.thread(a[0]).and_then(|t| cx.k.resume(t).map(|()| 0)),
        Syscall::ThreadSuspend => cx.thread(a[0]).and_then(|t| cx.k.suspend(t).map(|()| 0)),
        Syscall::ThreadExit => {
            cx.k.exit_current(a[0] as isize);
            Ok(0)
        }
        Syscall::ThreadSetPriority => cx.thread_set_priority(a[0], a[1]),
        Syscall::ThreadSetAffinity => cx.thread_set_affinity(a[0], a[1]),
        Syscall::ThreadSetTls => cx
            .thread(a[0])
            .and_then(|t| cx.k.set_tls(t, a[1]).map(|()| 0)),
        Syscall::Yield => return (Ok(0), After::Yield),
        Syscall::ThreadKill => cx.thread(a[0]).and_then(|t| cx.k.end_thread(t).map(|()| 0)),
        Syscall::MemCreate => cx.mem_create(a[0], a[1], a[2]),
        Syscall::AspaceCreate => cx.aspace_create(a[0]),
        Syscall::Map => cx.map(a[0], a[1], a[2], a[3], a[4], a[5]),
        Syscall::Unmap => cx
            .space(a[0], Rights::WRITE)
            .and_then(|s| s.space.lock().unmap(a[1], a[2]).map(|()| 0)),
        Syscall::Protect => cx.protect(a[0], a[1], a[2], a[3]),
        Syscall::MemSize => cx.mem(a[0], Rights::NONE).map(|m| m.pages()),
        Syscall::PoolAvailable => cx.pool(a[0], Rights::READ).map(|p| p.available() as usize),
        // Assigned numbers of subsystems that are not built yet.
        _ => Err(Error::NoSuchSyscall),
    };
    // End what lost its last reference in the call (one load if nothing).
    cx.k.collect();
    (result, After::Continue)
}

/// One call's context: the kernel, the calling thread and its capability
/// space.
struct Cx<'k> {
    k: &'k mut Kernel,
    caller: ThreadId,
    cspace: SpaceId,
}

fn token(raw: usize) -> CapToken {
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

impl Cx<'_> {
    /// The object behind `raw`, which must be of type `ty` with `needed`.
    fn object(&self, raw: usize, ty: ObjectType, needed: Rights) -> Result<&KObject, Error> {
        self.k
            .caps
            .lookup_as(self.cspace, token(raw), ty, needed)
            .map(|c| c.object())
    }

    fn mem(&self, raw: usize, needed: Rights) -> Result<KArc<UserObject>, Error> {
        match self.object(raw, ObjectType::MemoryObject, needed)? {
            KObject::Mem(m) => Ok(m.clone()),
            _ => Err(Error::WrongObjectType),
        }
    }

    fn space(&self, raw: usize, needed: Rights) -> Result<KArc<SpaceCell>, Error> {
        match self.object(raw, ObjectType::AddressSpace, needed)? {
            KObject::Space(s) => Ok(s.clone()),
            _ => Err(Error::WrongObjectType),
        }
    }

    fn pool(&self, raw: usize, needed: Rights) -> Result<KArc<Quota>, Error> {
        match self.object(raw, ObjectType::MemoryPool, needed)? {
            KObject::Pool(p) => Ok(p.clone()),
            _ => Err(Error::WrongObjectType),
        }
    }

    fn cspace_of(&self, raw: usize, needed: Rights) -> Result<KArc<CSpaceRef>, Error> {
        match self.object(raw, ObjectType::CapSpace, needed)? {
            KObject::CapSpace(s) => Ok(s.clone()),
            _ => Err(Error::WrongObjectType),
        }
    }

    /// A thread capability with the right to control it.
    fn thread(&self, raw: usize) -> Result<ThreadId, Error> {
        match self.object(raw, ObjectType::Thread, Rights::WRITE)? {
            KObject::Thread(t) => {
                self.k.thread(t.id)?;
                Ok(t.id)
            }
            _ => Err(Error::WrongObjectType),
        }
    }

    fn debug_write(&mut self, ptr: usize, len: usize) -> SysResult {
        if len > DEBUG_WRITE_MAX {
            return Err(Error::InvalidArgument);
        }
        let space = self.k.thread(self.caller)?.space.clone();
        let mut buf = [0u8; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len());
            let chunk = buf.get_mut(..n).ok_or(Error::InvalidArgument)?;
            let at = ptr.checked_add(done).ok_or(Error::BadAddress)?;
            copy_from_user(&mut space.space.lock(), at, chunk)?;
            crate::arch::console_write(chunk);
            done += n;
        }
        Ok(len)
    }

    fn system_info(&self, key: usize) -> SysResult {
        let stats = || crate::mm::frame_stats().unwrap_or((0, 0, 0));
        Ok(match SystemInfoKey::try_from(key)? {
            SystemInfoKey::CpuCount => self.k.cpu_count,
            SystemInfoKey::TotalFrames => stats().0 as usize,
            SystemInfoKey::FreeFrames => stats().1 as usize,
            SystemInfoKey::Cycles => crate::arch::cycle_counter() as usize,
            SystemInfoKey::PageSize => crate::mm::object::PAGE,
        })
    }

    fn cap_identify(&self, raw: usize) -> SysResult {
        let cap = self.k.caps.lookup(self.cspace, token(raw))?;
        Ok(((cap.object_type() as usize) << 8) | cap.rights().bits() as usize)
    }

    fn cap_derive(&mut self, raw: usize, r: usize, badge: usize) -> SysResult {
        let r = rights(r)?;
        self.k
            .caps
            .derive(self.cspace, token(raw), Dest::Any, r, badge as u64)
            .map(|t| t.raw() as usize)
    }

    /// The capability space `dest` names, refusing to put a capability to
    /// a space into a space that does not rank below it (`CSpaceRef`'s
    /// docs): references between spaces point down, so no cycle can keep
    /// spaces alive forever.
    fn destination(&self, raw: usize, dest: usize) -> Result<SpaceId, Error> {
        let to = self.cspace_of(dest, Rights::WRITE)?;
        if let KObject::CapSpace(r) = self.k.caps.lookup(self.cspace, token(raw))?.object()
            && r.depth() <= to.depth()
        {
            return Err(Error::InvalidArgument);
        }
        Ok(to.id)
    }

    fn cap_grant(&mut self, raw: usize, dest: usize, r: usize) -> SysResult {
        let r = rights(r)?;
        let to = self.destination(raw, dest)?;
        self.k
            .caps
            .grant(self.cspace, token(raw), to, Dest::Any, r)
            .map(|t| t.raw() as usize)
    }

    fn cap_delegate(&mut self, raw: usize, dest: usize) -> SysResult {
        let to = self.destination(raw, dest)?;
        self.k
            .caps
            .delegate(self.cspace, token(raw), to, Dest::Any)
            .map(|t| t.raw() as usize)
    }

    fn cap_delete(&mut self, raw: usize) -> SysResult {
        let object = self.k.caps.delete(self.cspace, token(raw))?;
        drop(object);
        Ok(0)
    }

    fn cap_revoke(&mut self, raw: usize) -> SysResult {
        match self
            .k
            .caps
            .revoke(self.cspace, token(raw), REVOKE_BUDGET, &mut drop)?
        {
            Progress::Done => Ok(0),
            Progress::More => Ok(1),
        }
    }

    fn cspace_create(&mut self, pool: usize, slots: usize) -> SysResult {
        let pool = self.pool(pool, Rights::WRITE)?;
        if slots == 0 || slots > USER_CSPACE_MAX_SLOTS {
            return Err(Error::InvalidArgument);
        }
        let depth = self
            .k
            .thread(self.caller)?
            .home()
            .depth
            .checked_add(1)
            .ok_or(Error::InvalidArgument)?;
        let pages = CapSpace::<KObject>::charge_pages(slots as u32);
        pool.charge(pages)?;
        let id = match self.k.caps.create_space(slots as u32) {
            Ok(id) => id,
            Err(e) => {
                pool.credit(pages);
                return Err(e);
            }
        };
        // On failure the reference credits the pool; a dropped one also
        // queues the space for destruction.
        let r = match CSpaceRef::new(id, depth, Some((pool, pages))) {
            Ok(r) => r,
            Err(e) => {
                self.k.destroy_cspace(id);
                return Err(e);
            }
        };
        self.insert(KObject::CapSpace(r), ObjectType::CapSpace)
    }

    /// The original capability to a new object, in the caller's space.
    fn insert(&mut self, object: KObject, ty: ObjectType) -> SysResult {
        self.k
            .caps
            .insert(self.cspace, Dest::Any, object, ty, Rights::ALL, NO_BADGE)
            .map(|t| t.raw() as usize)
    }

    fn thread_create(
        &mut self,
        aspace: usize,
        cspace: usize,
        entry: usize,
        stack: usize,
        arg: usize,
    ) -> SysResult {
        let space = self.space(aspace, Rights::WRITE)?;
        let home = if cspace == 0 {
            self.k.thread(self.caller)?.home().clone()
        } else {
            self.cspace_of(cspace, Rights::WRITE)?.home()
        };
        // A killed process's space is gone even while references remain.
        self.k.caps.space(home.id)?;
        let t = self.k.create_thread(space, home, entry, stack, arg)?;
        // Without a capability the thread could never be reached: a
        // dropped `ThreadRef` ends it (at the next `collect`).
        let r = ThreadRef::new(t).inspect_err(|_| {
            let _ = self.k.kill(t);
        })?;
        self.insert(KObject::Thread(r), ObjectType::Thread)
    }

    fn thread_set_priority(&mut self, raw: usize, prio: usize) -> SysResult {
        let t = self.thread(raw)?;
        let prio = u8::try_from(prio).map_err(|_| Error::InvalidArgument)?;
        self.k.set_priority(t, prio).map(|()| 0)
    }

    fn thread_set_affinity(&mut self, raw: usize, mask: usize) -> SysResult {
        let t = self.thread(raw)?;
        let cpus = self.k.cpu_count.min(64);
        let online = if cpus >= 64 {
            u64::MAX
        } else {
            (1u64 << cpus) - 1
        };
        if mask as u64 & online == 0 {
            return Err(Error::InvalidArgument);
        }
        self.k.thread_mut(t)?.affinity = mask as u64;
        Ok(0)
    }

    fn mem_create(&mut self, pool: usize, pages: usize, flags: usize) -> SysResult {
        let pool = self.pool(pool, Rights::WRITE)?;
        if flags & !MEM_EAGER != 0 || pages == 0 {
            return Err(Error::InvalidArgument);
        }
        let obj = UserObject::anonymous_charged(pages, flags & MEM_EAGER != 0, Some(pool))?;
        self.insert(KObject::Mem(obj), ObjectType::MemoryObject)
    }

    fn aspace_create(&mut self, pool: usize) -> SysResult {
        let pool = self.pool(pool, Rights::WRITE)?;
        let cell = SpaceCell::new(0, Some(pool))?;
        self.insert(KObject::Space(cell), ObjectType::AddressSpace)
    }

    fn map(
        &mut self,
        aspace: usize,
        mem: usize,
        va: usize,
        offset: usize,
        pages: usize,
        p: usize,
    ) -> SysResult {
        let attr = prot(p)?;
        let space = self.space(aspace, Rights::WRITE)?;
        let obj = self.mem(mem, rights_for(attr))?;
        space
            .space
            .lock()
            .map(va, obj, offset, pages, attr)
            .map(|()| 0)
    }

    fn protect(&mut self, aspace: usize, va: usize, pages: usize, p: usize) -> SysResult {
        let attr = prot(p)?;
        let space = self.space(aspace, Rights::WRITE)?;
        space.space.lock().protect(va, pages, attr).map(|()| 0)
    }
}

/// A capability system with one space holding one thread capability.
#[cfg(feature = "bench")]
fn one_cap() -> Option<(crate::cap::CapSystem<u64>, SpaceId, CapToken)> {
    let mut caps = crate::cap::CapSystem::<u64>::new();
    let space = caps.create_space(64).ok()?;
    let t = caps
        .insert(
            space,
            Dest::Any,
            7,
            ObjectType::Thread,
            Rights::ALL,
            NO_BADGE,
        )
        .ok()?;
    Some((caps, space, t))
}

crate::kbench!(
    fn cap_lookup(iters: u64) {
        let Some((caps, space, t)) = one_cap() else {
            return;
        };
        for _ in 0..iters {
            let c = caps.lookup_as(
                core::hint::black_box(space),
                core::hint::black_box(t),
                ObjectType::Thread,
                Rights::WRITE,
            );
            core::hint::black_box(c.map(|c| *c.object()).ok());
        }
    },
    iters = 1000
);

crate::kbench!(
    fn cap_derive_delete(iters: u64) {
        let Some((mut caps, space, t)) = one_cap() else {
            return;
        };
        for _ in 0..iters {
            if let Ok(child) = caps.derive(space, t, Dest::Any, Rights::READ, NO_BADGE) {
                let _ = core::hint::black_box(caps.delete(space, child));
            }
        }
    },
    iters = 1000
);

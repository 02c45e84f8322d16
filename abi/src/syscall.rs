//! System-call numbers.
//!
//! Numbers are grouped in blocks of 16 by subsystem so each subsystem can
//! grow without renumbering the others. A number not listed here is
//! answered with [`crate::Error::NoSuchSyscall`].
//!
//! | block | subsystem |
//! |---|---|
//! | 0x00–0x0f | debug and system information |
//! | 0x10–0x1f | capabilities |
//! | 0x20–0x2f | threads and scheduling |
//! | 0x30–0x3f | address spaces and memory objects |
//! | 0x40–0x4f | IPC: endpoints, notifications, IPC buffers, fault handlers |
//! | 0x50–0x5f | processes: pools, fork of spaces, inheritance, thread copies |
//! | 0x60–0x6f | interrupts and time |

/// A system call, identified by the number user space puts in the
/// architecture's syscall-number register (`rax`, `x8`, `a7`); arguments
/// go in the first six argument registers (`rdi rsi rdx r10 r8 r9`,
/// `x0..x5`, `a0..a5`) and the result comes back in the first (`rax`,
/// `x0`, `a0`): non-negative on success, `-(error code)` on failure.
/// See `docs/abi.md` for each call's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
#[non_exhaustive]
pub enum Syscall {
    /// `(ptr, len)`: write bytes to the kernel debug console.
    DebugWrite = 0x00,
    /// `(key)`: read a [`SystemInfoKey`] value.
    SystemInfo = 0x01,

    /// `(cap)`: `type << 8 | rights` of a capability.
    CapIdentify = 0x10,
    /// `(cap, rights, badge)`: a child capability in the same space.
    CapDerive = 0x11,
    /// `(cap, cspace, rights)`: a child copy in another capability space.
    CapGrant = 0x12,
    /// `(cap, cspace)`: move a capability to another capability space.
    CapDelegate = 0x13,
    /// `(cap)`: delete one capability.
    CapDelete = 0x14,
    /// `(cap)`: delete every descendant; returns 0 when done, 1 when more
    /// work remains (call again).
    CapRevoke = 0x15,
    /// `(pool, slots)`: a new capability space of at most `slots` slots.
    CapSpaceCreate = 0x16,

    /// `(aspace, cspace, entry, stack, arg)`: a new thread running in
    /// `aspace` with capability space `cspace` (0: the caller's); created
    /// suspended. Threads sharing a capability space form a process: a
    /// fault that kills one kills them all.
    ThreadCreate = 0x20,
    /// `(thread)`: make a new or suspended thread runnable.
    ThreadResume = 0x21,
    /// `(thread)`: stop a thread until resumed.
    ThreadSuspend = 0x22,
    /// `(code)`: end the calling thread.
    ThreadExit = 0x23,
    /// `(thread, priority)`: 0 (lowest) to 31.
    ThreadSetPriority = 0x24,
    /// `(thread, cpu mask)`: the CPUs the thread may run on.
    ThreadSetAffinity = 0x25,
    /// `(thread, value)`: the thread-local storage base (FS base,
    /// TPIDR_EL0, `tp`).
    ThreadSetTls = 0x26,
    /// `()`: let another runnable thread of equal or higher priority run.
    Yield = 0x27,
    /// `(thread)`: kill a thread.
    ThreadKill = 0x28,
    /// `(thread, class, param, slice_ns)`: set the thread's scheduling
    /// class ([`SchedClass`]): real time with `param` its priority 0–31
    /// and, round-robin only, `slice_ns` its slice (0: the default 5 ms;
    /// else 100 µs – 1 s); normal with `param` its nice value -20–19 (two's
    /// complement); idle with `param` 0. Needs `WRITE` on the thread.
    ThreadSetSched = 0x29,
    /// `(thread, key)`: read a [`ThreadInfoKey`] value of the thread (its
    /// CPU time, switches, class…). Needs `READ` on the thread.
    ThreadInfo = 0x2a,

    /// `(pool, pages, flags)`: a new anonymous memory object
    /// ([`MEM_EAGER`]: allocate all frames now).
    MemCreate = 0x30,
    /// `(pool)`: a new, empty address space.
    AspaceCreate = 0x31,
    /// `(aspace, mem, va, offset, pages, prot)`: map `pages` pages of
    /// `mem` from page `offset` at `va` with [`PROT_WRITE`] /
    /// [`PROT_EXEC`] (never both). Needs `READ` on `mem`, plus `WRITE` /
    /// `EXECUTE` for those protections, and `WRITE` on `aspace`.
    Map = 0x32,
    /// `(aspace, va, pages)`: remove mappings.
    Unmap = 0x33,
    /// `(aspace, va, pages, prot)`: change permissions of mapped pages,
    /// never beyond those they were mapped with.
    Protect = 0x34,
    /// `(mem)`: size of a memory object in pages.
    MemSize = 0x35,
    /// `(pool)`: pages the pool can still hand out.
    PoolAvailable = 0x36,
    /// `(aspace, va, pages, mode, pool)`: a new memory object (charged
    /// `pages` to `pool`) with the pages mapped at `va`, which must lie in
    /// one mapping of an anonymous object only `aspace` maps: [`RANGE_MOVE`]
    /// moves them (the range is unmapped from `aspace`), [`RANGE_COW`]
    /// shares them copy-on-write. Zero-copy transfer: send its capability
    /// in a message. Needs `WRITE` on `aspace` and on `pool`.
    MemFromRange = 0x37,

    /// `(pool)`: a new endpoint (charged one page).
    EndpointCreate = 0x40,
    /// `(pool)`: a new notification (charged one page).
    NotificationCreate = 0x41,
    /// `(ep, info, m0..m3)`: send a message (needs `WRITE`; `GRANT` to
    /// transfer capabilities); blocks until received unless
    /// `MsgInfo::NONBLOCK`. See `keel_abi::ipc` for the registers.
    Send = 0x42,
    /// `(ep, info)`: receive a message (needs `READ`); `info` carries only
    /// flags. Returns the message's info, badge and words.
    Recv = 0x43,
    /// `(ep, info, m0..m3)`: send, then wait for the reply through the
    /// one-shot reply capability the receiver gets.
    Call = 0x44,
    /// `(_, info, m0..m3)`: answer the last call received.
    Reply = 0x45,
    /// `(ep, info, m0..m3)`: reply to the last call (if any), then receive.
    ReplyRecv = 0x46,
    /// `(ntfn, bits)`: OR `bits` and the capability's badge into the
    /// notification's word (needs `WRITE`); never blocks.
    Signal = 0x47,
    /// `(ntfn)`: wait until the word is non-zero; returns and clears it
    /// (needs `READ`).
    Wait = 0x48,
    /// `(ntfn)`: return and clear the word without waiting (needs `READ`).
    Poll = 0x49,
    /// `(thread, ntfn)`: bind a notification to a thread (0: unbind), so
    /// that a `Recv` of the thread also returns its signals. Needs `WRITE`
    /// on the thread and `READ` on the notification.
    NotificationBind = 0x4a,
    /// `(thread, va)`: the thread's IPC buffer page (0: none).
    ThreadSetIpcBuffer = 0x4b,
    /// `(thread, ep)`: where the thread's unresolved faults go as messages
    /// (0: none; the fault kills the process). Needs `WRITE` on both.
    ThreadSetFaultHandler = 0x4c,
    /// `(deadline_ns)`: block until the monotonic clock
    /// ([`SystemInfoKey::MonotonicNs`]) reaches `deadline_ns`; returns at
    /// once (after a yield) if it has.
    Sleep = 0x60,
    /// `(device_control, line, notification)`: a handler capability for
    /// interrupt line `line` (x86 GSI, GIC INTID, PLIC source): each time
    /// the line fires the kernel masks it and signals `notification` with
    /// that capability's badge (1 if it has none) until the handler is
    /// acknowledged. `InvalidArgument` for a line user space cannot have,
    /// `AlreadyExists` if the line has a handler. Deleting the handler's
    /// last capability masks the line and frees it.
    IrqHandlerCreate = 0x61,
    /// `(handler)`: the device was served: unmask the line.
    IrqAck = 0x62,
    /// `(device_control, base, count)`: a capability to the x86 I/O ports
    /// `[base, base + count)` (`NotSupported` elsewhere; ports the kernel
    /// drives are refused).
    IoPortCreate = 0x63,
    /// `(ports, port, width)`: read 1, 2 or 4 bytes from an I/O port of
    /// the capability (`READ`).
    IoPortIn = 0x64,
    /// `(ports, port, width, value)`: write to one (`WRITE`).
    IoPortOut = 0x65,
    /// `(device_control, phys, pages)`: a memory object naming device
    /// registers at physical `phys`, mapped uncached (device memory);
    /// ranges that overlap RAM or the kernel's interrupt controller are
    /// refused.
    MemFromDevice = 0x66,
    /// `(deadline_ns)`: the caller's next system call, if it blocks in IPC
    /// (`Send`, `Call` until the reply, `Recv`, `ReplyRecv`, `Wait`),
    /// fails with `TimedOut` once the monotonic clock reaches
    /// `deadline_ns`; 0 arms nothing.
    IpcTimeout = 0x67,
    /// `(pool, notification)`: a timer (one page of `pool`, `WRITE`)
    /// that signals `notification` (`WRITE`) with that capability's badge
    /// (1 if it has none) when it fires; created disarmed.
    TimerCreate = 0x68,
    /// `(timer, deadline_ns, period_ns)`: fire at `deadline_ns` on the
    /// monotonic clock, then every `period_ns` (0: once; else at least
    /// 100 µs); `deadline_ns` 0 disarms. Needs `WRITE`.
    TimerSet = 0x69,
    /// `(device_control, cpu, online)`: takes CPU `cpu` offline (`online`
    /// 0: its threads move to the other CPUs, it takes no interrupts) or
    /// brings it back (1). `InvalidArgument` for the boot CPU (it takes
    /// the device interrupts, so it is never offline) or a CPU that did
    /// not come up, `InvalidState` if it already is. Needs `WRITE`.
    CpuSetOnline = 0x6a,

    /// `(pool, pages)`: a new pool of `pages` pages carved out of `pool`
    /// (charged `pages` until the new pool's last capability goes): the
    /// memory limit of a process. Needs `WRITE` on `pool`.
    PoolCreate = 0x50,
    /// `(aspace, pool)`: a copy-on-write copy of `aspace` for fork (its
    /// private memory charged to `pool` in full, as `MemFromRange` does,
    /// and its page tables as they are made). Needs `WRITE` on both.
    AspaceFork = 0x51,
    /// `(src cspace, dst cspace, start)`: copies every capability of
    /// `src` in slots `start..start + 256` that has [`crate::cap::Rights::INHERIT`]
    /// into the same slot of `dst`, with the same token; returns the next
    /// slot to continue from, or 0 when done. Needs `READ` on `src`,
    /// `WRITE` on `dst`.
    CapSpaceInherit = 0x52,
    /// `(src thread, dst thread)`: `dst` (suspended) gets `src`'s
    /// registers, FP state and TLS base, except that its system call
    /// returns 0 (fork's child). `src` must not be running. Needs `READ`
    /// on `src`, `WRITE` on `dst`.
    ThreadCopy = 0x53,
}

/// Modes of [`Syscall::MemFromRange`].
pub const RANGE_MOVE: usize = 1;
pub const RANGE_COW: usize = 2;

/// Flag of [`Syscall::MemCreate`]: allocate every frame now.
pub const MEM_EAGER: usize = 1;
/// Protection bits of [`Syscall::Map`] and [`Syscall::Protect`]; readable
/// is implied.
pub const PROT_WRITE: usize = 1;
pub const PROT_EXEC: usize = 2;

/// What [`Syscall::SystemInfo`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum SystemInfoKey {
    CpuCount = 0,
    TotalFrames = 1,
    FreeFrames = 2,
    /// The cycle counter (instructions under QEMU `-icount`).
    Cycles = 3,
    PageSize = 4,
    /// The monotonic clock in nanoseconds since boot (0 if the kernel
    /// found no clock rate).
    MonotonicNs = 5,
    /// Nanoseconds this CPU has spent idle, waiting for an interrupt.
    IdleNs = 6,
    /// The online CPUs, one bit per CPU index (`CpuCount` counts those
    /// that came up at boot, online or not).
    OnlineCpus = 7,
    /// The index of the CPU the caller runs on.
    CurrentCpu = 8,
}

/// A scheduling class ([`Syscall::ThreadSetSched`]); each runs only when
/// the ones above have nothing ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum SchedClass {
    /// Fair share by virtual run time weighted by nice (like Linux's CFS).
    Normal = 0,
    /// Real time, fixed priority, time-sliced among equals (the default:
    /// priority 10).
    RoundRobin = 1,
    /// Real time, fixed priority, runs until it blocks or yields.
    Fifo = 2,
    /// Only when nothing else is ready.
    Idle = 3,
}

impl TryFrom<usize> for SchedClass {
    type Error = crate::Error;

    fn try_from(v: usize) -> Result<Self, Self::Error> {
        [
            SchedClass::Normal,
            SchedClass::RoundRobin,
            SchedClass::Fifo,
            SchedClass::Idle,
        ]
        .get(v)
        .copied()
        .ok_or(crate::Error::InvalidArgument)
    }
}

/// What [`Syscall::ThreadInfo`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ThreadInfoKey {
    /// CPU time used, in nanoseconds.
    RunNs = 0,
    /// Times it was switched onto a CPU.
    Switches = 1,
    /// Its [`SchedClass`].
    Class = 2,
    /// Its real-time priority.
    Priority = 3,
    /// Its nice value plus 20, 0–39 (results are never negative).
    Nice = 4,
    /// The CPU it runs or is queued on, else the one it ran on last.
    Cpu = 5,
}

impl TryFrom<usize> for ThreadInfoKey {
    type Error = crate::Error;

    fn try_from(v: usize) -> Result<Self, Self::Error> {
        [
            ThreadInfoKey::RunNs,
            ThreadInfoKey::Switches,
            ThreadInfoKey::Class,
            ThreadInfoKey::Priority,
            ThreadInfoKey::Nice,
            ThreadInfoKey::Cpu,
        ]
        .get(v)
        .copied()
        .ok_or(crate::Error::InvalidArgument)
    }
}

impl SystemInfoKey {
    pub const ALL: [SystemInfoKey; 9] = [
        SystemInfoKey::CpuCount,
        SystemInfoKey::TotalFrames,
        SystemInfoKey::FreeFrames,
        SystemInfoKey::Cycles,
        SystemInfoKey::PageSize,
        SystemInfoKey::MonotonicNs,
        SystemInfoKey::IdleNs,
        SystemInfoKey::OnlineCpus,
        SystemInfoKey::CurrentCpu,
    ];
}

impl TryFrom<usize> for SystemInfoKey {
    type Error = crate::Error;

    fn try_from(v: usize) -> Result<Self, Self::Error> {
        SystemInfoKey::ALL
            .get(v)
            .copied()
            .filter(|k| *k as usize == v)
            .ok_or(crate::Error::InvalidArgument)
    }
}

/// Numbers reserved for the rest of processes and of interrupts and time;
/// today they answer [`crate::Error::NoSuchSyscall`].
pub const RESERVED: [core::ops::Range<usize>; 2] = [0x54..0x60, 0x6b..0x70];

impl Syscall {
    /// Every assigned system call.
    pub const ALL: [Syscall; 56] = [
        Syscall::DebugWrite,
        Syscall::SystemInfo,
        Syscall::CapIdentify,
        Syscall::CapDerive,
        Syscall::CapGrant,
        Syscall::CapDelegate,
        Syscall::CapDelete,
        Syscall::CapRevoke,
        Syscall::CapSpaceCreate,
        Syscall::ThreadCreate,
        Syscall::ThreadResume,
        Syscall::ThreadSuspend,
        Syscall::ThreadExit,
        Syscall::ThreadSetPriority,
        Syscall::ThreadSetAffinity,
        Syscall::ThreadSetTls,
        Syscall::Yield,
        Syscall::ThreadKill,
        Syscall::ThreadSetSched,
        Syscall::ThreadInfo,
        Syscall::MemCreate,
        Syscall::AspaceCreate,
        Syscall::Map,
        Syscall::Unmap,
        Syscall::Protect,
        Syscall::MemSize,
        Syscall::PoolAvailable,
        Syscall::MemFromRange,
        Syscall::EndpointCreate,
        Syscall::NotificationCreate,
        Syscall::Send,
        Syscall::Recv,
        Syscall::Call,
        Syscall::Reply,
        Syscall::ReplyRecv,
        Syscall::Signal,
        Syscall::Wait,
        Syscall::Poll,
        Syscall::NotificationBind,
        Syscall::ThreadSetIpcBuffer,
        Syscall::ThreadSetFaultHandler,
        Syscall::Sleep,
        Syscall::IrqHandlerCreate,
        Syscall::IrqAck,
        Syscall::IoPortCreate,
        Syscall::IoPortIn,
        Syscall::IoPortOut,
        Syscall::MemFromDevice,
        Syscall::IpcTimeout,
        Syscall::TimerCreate,
        Syscall::TimerSet,
        Syscall::CpuSetOnline,
        Syscall::PoolCreate,
        Syscall::AspaceFork,
        Syscall::CapSpaceInherit,
        Syscall::ThreadCopy,
    ];
}

impl TryFrom<usize> for Syscall {
    type Error = crate::Error;

    fn try_from(number: usize) -> Result<Self, Self::Error> {
        // A table indexed by number, built at compile time from `ALL`, so
        // decoding is one bounds check and one load on the syscall path.
        const TABLE: [Option<Syscall>; 0x70] = {
            let mut t = [None; 0x70];
            let mut i = 0;
            while i < Syscall::ALL.len() {
                t[Syscall::ALL[i] as usize] = Some(Syscall::ALL[i]);
                i += 1;
            }
            t
        };
        TABLE
            .get(number)
            .copied()
            .flatten()
            .ok_or(crate::Error::NoSuchSyscall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_convert_back() {
        for s in Syscall::ALL {
            assert_eq!(Syscall::try_from(s as usize), Ok(s));
        }
        assert_eq!(Syscall::try_from(0xffff), Err(crate::Error::NoSuchSyscall));
        for r in RESERVED {
            for n in r {
                assert_eq!(Syscall::try_from(n), Err(crate::Error::NoSuchSyscall));
            }
        }
        for k in SystemInfoKey::ALL {
            assert_eq!(SystemInfoKey::try_from(k as usize), Ok(k));
        }
        assert!(SystemInfoKey::try_from(SystemInfoKey::ALL.len()).is_err());
    }
}

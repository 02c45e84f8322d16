//! Processes: the process server (run by the root task, [`server`]) and
//! what every program calls to use it: spawn, fork, exec, exit, wait, kill
//! and terminate (docs/processes.md). Policy lives here, in user space; the
//! kernel gives the mechanism (pools, address spaces and their fork,
//! capability spaces and inheritance, threads and their copy).
//!
//! A process is a capability space, an address space, a memory pool and a
//! first thread, all made by the server, which keeps their capabilities
//! and the process table ([`table`]). A process talks to the server over
//! an endpoint capability badged with its pid ([`ProcInfo::server`]).
//!
//! Invariants: `INFO` is 0 or the address of a `ProcInfo` the server maps
//! read-only for the life of the process; `LINK` is set once (by
//! [`set_info`] or [`server::start`]) before any request is made.

pub mod minimal;
pub mod table;

#[cfg(target_os = "none")]
pub mod server;

#[cfg(target_os = "none")]
pub use client::*;

#[cfg(target_os = "none")]
mod client {
    use crate::ipc::{Buffer, Message, call, poll, thread_set_ipc_buffer, wait as ntfn_wait};
    use crate::syscall::thread_exit;
    use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use keel_abi::Error;
    use keel_abi::cap::CapToken;
    use keel_abi::ipc::{MsgInfo, REGISTER_WORDS};
    use keel_abi::process::{
        ExitStatus, PROC_ARGS_MAX, PROC_ARGS_OFFSET, PROC_INFO_VERSION, PROC_PASSED_CAPS, ProcInfo,
        label,
    };

    pub use super::table::Pid;
    pub use keel_abi::process::Limits;

    static INFO: AtomicUsize = AtomicUsize::new(0);
    /// Server endpoint, child-event notification, first thread, IPC buffer.
    static LINK: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

    /// This process's information page, if the process server started it.
    pub fn info() -> Option<&'static ProcInfo> {
        let addr = INFO.load(Ordering::Acquire);
        // SAFETY: `set_info` stored the address of a page mapped read-only
        // for the life of the process.
        (addr != 0).then(|| unsafe { &*(addr as *const ProcInfo) })
    }

    /// Checks and records the information page at `addr` (start-up).
    pub(crate) fn set_info(addr: usize) -> Option<&'static ProcInfo> {
        // SAFETY: the caller saw the page's magic at this aligned address.
        let info = unsafe { &*(addr as *const ProcInfo) };
        if info.version < PROC_INFO_VERSION || info.args_bytes as usize > PROC_ARGS_MAX {
            return None;
        }
        INFO.store(addr, Ordering::Release);
        set_link(
            info.server,
            info.child_events,
            info.thread,
            keel_abi::process::PROC_IPC_BUFFER,
        );
        Some(info)
    }

    pub(super) fn set_link(server: u64, events: u64, thread: u64, buffer: usize) {
        for (slot, v) in LINK.iter().zip([server, events, thread, buffer as u64]) {
            slot.store(v, Ordering::Release);
        }
    }

    fn link(i: usize) -> CapToken {
        CapToken::from_raw(LINK.get(i).map_or(0, |l| l.load(Ordering::Acquire)))
    }

    /// The process's own address space (the root task's, or this
    /// process's), for the runtime's own use.
    pub fn own_aspace() -> Option<CapToken> {
        own_spaces().map(|(aspace, _)| aspace)
    }

    /// The process's own address space and memory pool.
    pub(crate) fn own_spaces() -> Option<(CapToken, CapToken)> {
        let (a, p) = match (info(), crate::root_info()) {
            (Some(i), _) => (i.aspace, i.pool),
            (None, Some(r)) => (r.aspace, r.pool),
            (None, None) => return None,
        };
        Some((CapToken::from_raw(a), CapToken::from_raw(p)))
    }

    /// The arguments this process was started with, then its environment
    /// (`argc` + `envc` strings); empty for the root task.
    pub fn args() -> impl Iterator<Item = &'static str> {
        let strings = info().map_or(&[][..], |i| {
            let base = i as *const ProcInfo as usize + PROC_ARGS_OFFSET;
            let len = (i.args_bytes as usize).min(PROC_ARGS_MAX);
            // SAFETY: the page is mapped and read-only; the range is in it.
            unsafe { core::slice::from_raw_parts(base as *const u8, len) }
        });
        strings
            .split(|&b| b == 0)
            .take(info().map_or(0, |i| (i.argc + i.envc) as usize))
            .map(|s| core::str::from_utf8(s).unwrap_or(""))
    }

    /// One request to the server: `words` (any length up to a message's),
    /// `caps` transferred; the reply, or the error it carries.
    fn request(lab: u64, words: &[u64], caps: &[CapToken]) -> Result<Message, Error> {
        let long = words.len() > REGISTER_WORDS || !caps.is_empty();
        let regs = if long {
            // Registered before each such call: a test may have moved it.
            let va = link(3).raw() as usize;
            // SAFETY: the page at `va` is this process's IPC buffer, made
            // for the first thread by the server (or `server::start`).
            unsafe { thread_set_ipc_buffer(link(2), va) }?;
            // SAFETY: as above; registered just now.
            let buf = unsafe { Buffer::at(va) };
            buf.set_caps(caps);
            buf.store_message(words)
        } else {
            core::array::from_fn(|i| words.get(i).copied().unwrap_or(0))
        };
        let info = MsgInfo::new(lab, words.len(), caps.len());
        let reply = call(link(0), info, regs)?;
        match reply.info.label() {
            0 => Ok(reply),
            e => match Error::from_return_value(-(e as isize)) {
                Some(Err(e)) => Err(e),
                _ => Err(Error::InvalidState),
            },
        }
    }

    /// Packs `args` then `env` as NUL-terminated strings after the four
    /// header words `[limits, argc, envc, bytes]`.
    fn pack(
        limits: Limits,
        args: &[&str],
        env: &[&str],
        out: &mut [u64; 4 + PROC_ARGS_MAX / 8],
    ) -> Result<usize, Error> {
        let mut bytes = [0u8; PROC_ARGS_MAX];
        let mut at = 0;
        for s in args.iter().chain(env) {
            let end = at + s.len();
            if s.as_bytes().contains(&0) || end >= PROC_ARGS_MAX {
                return Err(Error::InvalidArgument);
            }
            bytes[at..end].copy_from_slice(s.as_bytes());
            at = end + 1;
        }
        out[..4].copy_from_slice(&[
            limits.encode(),
            args.len() as u64,
            env.len() as u64,
            at as u64,
        ]);
        for (w, chunk) in out[4..].iter_mut().zip(bytes[..at].chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_le_bytes(b);
        }
        Ok(4 + at.div_ceil(8))
    }

    fn image_request(
        lab: u64,
        image: CapToken,
        limits: Limits,
        args: &[&str],
        env: &[&str],
        pass: &[CapToken],
    ) -> Result<Message, Error> {
        if pass.len() > PROC_PASSED_CAPS {
            return Err(Error::InvalidArgument);
        }
        let mut words = [0u64; 4 + PROC_ARGS_MAX / 8];
        let n = pack(limits, args, env, &mut words)?;
        let mut caps = [image; 1 + PROC_PASSED_CAPS];
        caps[1..=pass.len()].copy_from_slice(pass);
        request(lab, &words[..n], &caps[..=pass.len()])
    }

    /// Starts a child process from the ELF executable in memory object
    /// `image` (mappable readable and executable), with its own pool of
    /// `pages` pages carved from this process's, the arguments `args`,
    /// the environment `env` and the capabilities `pass` (at most two,
    /// each with `GRANT`; found in its `ProcInfo::passed`). Returns its pid.
    /// Call from the first thread. (More than `u32::MAX` pages asks for
    /// more than any pool has: `OutOfMemory`.)
    pub fn spawn(
        image: CapToken,
        pages: usize,
        args: &[&str],
        env: &[&str],
        pass: &[CapToken],
    ) -> Result<Pid, Error> {
        let pages = Limits::pages(u32::try_from(pages).unwrap_or(u32::MAX));
        spawn_with(image, pages, args, env, pass)
    }

    /// As [`spawn`], with the child's stack and capability-space sizes as
    /// well as its pool's set by `limits`.
    pub fn spawn_with(
        image: CapToken,
        limits: Limits,
        args: &[&str],
        env: &[&str],
        pass: &[CapToken],
    ) -> Result<Pid, Error> {
        image_request(label::SPAWN, image, limits, args, env, pass).map(|m| m.words[0])
    }

    /// Replaces this process's program with the ELF executable `image`
    /// (same pid, parent and children; only capabilities with
    /// `Rights::INHERIT` stay, at the same tokens); returns only on failure.
    pub fn exec(image: CapToken, args: &[&str], env: &[&str], pass: &[CapToken]) -> Error {
        match image_request(label::EXEC, image, Limits::default(), args, env, pass) {
            Ok(_) => Error::InvalidState,
            Err(e) => e,
        }
    }

    /// A copy-on-write copy of this process, with a pool of `pages` pages
    /// (0: half of what this process's pool has left): `Some(child's pid)`
    /// here, `None` in the child. Call from the first thread.
    pub fn fork(pages: usize) -> Result<Option<Pid>, Error> {
        let reply = request(label::FORK, &[pages as u64], &[])?;
        if reply.info.is_empty() {
            // The child: its own information page (same place, new tokens).
            let addr = INFO.load(Ordering::Acquire);
            set_info(addr).ok_or(Error::InvalidState)?;
            return Ok(None);
        }
        Ok(Some(reply.words[0]))
    }

    /// Ends this process with `status` (its parent's `wait` sees it).
    pub fn exit(status: i32) -> ! {
        let _ = request(label::EXIT, &[status as u32 as u64], &[]);
        // No server (the root task): only this thread can end.
        thread_exit(status as isize)
    }

    /// Reaps a child that ended (`pid`, or any): its pid and status. With
    /// `block`, waits until one ends; otherwise `WouldBlock` if none has.
    /// `InvalidArgument` if there is no such child.
    pub fn wait(pid: Option<Pid>, block: bool) -> Result<(Pid, ExitStatus), Error> {
        loop {
            match request(label::WAIT, &[pid.unwrap_or(0)], &[]) {
                Ok(m) => {
                    let status = ExitStatus::decode(m.words[1]).ok_or(Error::InvalidState)?;
                    return Ok((m.words[0], status));
                }
                // Signals stay until taken, so an end reported between
                // the answer and this wait is not missed.
                Err(Error::WouldBlock) if block => {
                    ntfn_wait(link(1))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Ends process `pid` (a descendant) at once.
    pub fn kill(pid: Pid) -> Result<(), Error> {
        request(label::KILL, &[pid], &[]).map(|_| ())
    }

    /// Asks process `pid` (a descendant) to end ([`terminate_requested`]).
    pub fn terminate(pid: Pid) -> Result<(), Error> {
        request(label::TERMINATE, &[pid], &[]).map(|_| ())
    }

    /// Whether someone asked this process to end since the last look.
    pub fn terminate_requested() -> bool {
        info().is_some_and(|i| poll(CapToken::from_raw(i.terminate)).is_ok_and(|b| b != 0))
    }

    /// Waits until someone asks this process to end.
    pub fn wait_for_terminate() -> Result<(), Error> {
        let i = info().ok_or(Error::InvalidState)?;
        ntfn_wait(CapToken::from_raw(i.terminate)).map(|_| ())
    }
}

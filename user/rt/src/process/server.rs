//! The process server: a thread of the root task that makes, copies,
//! replaces and ends processes and keeps the process table. Written by
//! hand (the policy half of processes; the kernel has the mechanism).
//!
//! Each process is made of objects charged to its own pool, carved from
//! its parent's: an address space, a capability space and a stack of the
//! sizes its spawn asked for ([`Limits`]), a first thread whose faults come here, two
//! notifications (its children ended; someone asks it to terminate), an
//! information page and an endpoint capability badged with its pid. The
//! server keeps one capability to each ([`Proc`]); ending a process
//! deletes them, so the kernel destroys the capability space with every
//! thread in it, and everything else goes with its last capability.
//!
//! ELF images are checked by `keel-elf` (the kernel's checker for the root
//! task) from their headers, the only part mapped here for it. Segments
//! that are neither writable nor longer in memory than in the file are
//! mapped straight from the image's memory object (shared by every process
//! running it); the others are copied into fresh memory (their file part
//! alone mapped here). A position-independent executable is loaded at
//! [`PIE_BASE`]; its segments other than text are copied, and its
//! relative relocations (the only kind accepted) applied to the copies;
//! one that lands in no copied segment fails the load.
//!
//! Invariants: the scratch windows of the root task's address space are
//! unmapped whenever a request is done; a capability received with a
//! request is deleted once the request is done (what was passed on holds
//! its own copy).

use super::table::{Pid, Table};
use crate::ipc::{
    Buffer, Message, endpoint_create, notification_create, recv, reply, signal,
    thread_set_fault_handler, thread_set_ipc_buffer,
};
use crate::syscall::{
    aspace_create, aspace_fork, cap_delete, cap_derive, cap_grant, cap_identify, cap_space_create,
    cap_space_inherit, map, mem_create, mem_size, pool_available, pool_create, thread_copy,
    thread_create, thread_resume, unmap,
};
use keel_abi::Error;
use keel_abi::boot::RootInfo;
use keel_abi::cap::{CapToken, Rights};
use keel_abi::ipc::MsgInfo;
use keel_abi::process::{
    ExitStatus, Limits, PROC_ARGS_MAX, PROC_ARGS_OFFSET, PROC_INFO_ADDR, PROC_INFO_MAGIC,
    PROC_INFO_VERSION, PROC_IPC_BUFFER, PROC_PASSED_CAPS, PROC_STACK_MAX_PAGES, PROC_STACK_TOP,
    ProcInfo, ROOT_PID, label,
};
use keel_abi::syscall::{MEM_EAGER, PROT_EXEC, PROT_WRITE};

const PAGE: usize = 4096;
/// Windows of the root task's address space the server maps through:
/// an image, a segment being filled; and where it keeps every process's
/// information page mapped (a page per table slot), so that the page is
/// never private to the process: fork shares it instead of copying it
/// (a copy-on-write page could not be mapped here any more).
const IMAGE_WINDOW: usize = 0x30_0000_0000;
const SEGMENT_WINDOW: usize = 0x38_0000_0000;
/// The relocation table (and the dynamic section before it) of a
/// position-independent image.
const RELA_WINDOW: usize = 0x34_0000_0000;
/// Where a position-independent executable is loaded (its bias).
const PIE_BASE: usize = keel_abi::boot::USER_IMAGE_MIN;
/// The largest dynamic section and relocation table accepted (pages).
const DYNAMIC_MAX_PAGES: usize = 64;
const INFO_WINDOWS: usize = 0x2f_0000_0000;

/// Where process `pid`'s information page is kept mapped.
fn info_window(pid: Pid) -> usize {
    INFO_WINDOWS + ((pid as u32 as usize).saturating_sub(1) % super::table::MAX_PROCESSES) * PAGE
}

/// The root task's first thread's IPC buffer (for its requests), the
/// server thread's, and its stack: all in one 2 MiB block, with unmapped
/// guard pages between (the page after the root task's information page
/// stays unmapped).
const ROOT_BUFFER: usize = 0x2d_0000_0000;
const SERVER_BUFFER: usize = ROOT_BUFFER + 2 * PAGE;
const SERVER_STACK: usize = ROOT_BUFFER + 4 * PAGE;
const SERVER_STACK_PAGES: usize = 16;

/// Processes the table has room for from the start (about 3 MiB, taken
/// from the heap now, where it grows past the runtime's arena; the table
/// grows beyond this if needed): the root task's pool does not change
/// when many processes come and go.
const TABLE_RESERVE: usize = 16 * 1024;

/// What the server keeps of a live process: one capability to each of
/// its objects (`CapToken::NULL`: none).
#[derive(Clone, Copy, Default)]
struct Proc {
    cspace: CapToken,
    aspace: CapToken,
    pool: CapToken,
    thread: CapToken,
    events: CapToken,
    terminate: CapToken,
    /// The server endpoint badged with its pid (its faults come here).
    ep: CapToken,
    /// Its information page, and where it is mapped here (0: not).
    info: CapToken,
    window: usize,
    /// Its stack and capability-space sizes (its fork children's too).
    limits: Limits,
}

impl Proc {
    /// Deletes the capabilities: the capability space (with its threads)
    /// first, the pool last.
    fn release(&self, root: CapToken) {
        if self.window != 0 {
            // SAFETY: the window is the server's; nothing uses it after this.
            let _ = unsafe { unmap(root, self.window, 1) };
        }
        for c in [
            self.cspace,
            self.thread,
            self.aspace,
            self.ep,
            self.events,
            self.terminate,
            self.info,
            self.pool,
        ] {
            if c != CapToken::NULL {
                let _ = cap_delete(c);
            }
        }
    }
}

struct Server {
    ep: CapToken,
    /// The root task's address space (for the windows).
    aspace: CapToken,
    table: Table<Proc>,
    buffer: Buffer,
}

/// Starts the process server in the root task (`root`'s capabilities) and
/// makes the root task process 1. Call once, from the root task's first
/// thread (whose IPC buffer for requests it maps at `ROOT_BUFFER`).
pub fn start(root: &RootInfo) -> Result<(), Error> {
    let tok = CapToken::from_raw;
    let (pool, aspace, thread) = (tok(root.pool), tok(root.aspace), tok(root.thread));
    let ep = endpoint_create(pool)?;
    for (va, pages) in [
        (ROOT_BUFFER, 1),
        (SERVER_BUFFER, 1),
        (SERVER_STACK, SERVER_STACK_PAGES),
    ] {
        // Eager: mapping then builds the page tables now, so that none is
        // charged to the root pool later, when the server first touches
        // its pages (the root task's leak checks compare against now).
        let mem = mem_create(pool, pages, MEM_EAGER)?;
        map(aspace, mem, va, 0, pages, PROT_WRITE)?;
        cap_delete(mem)?;
    }
    let me = Proc {
        cspace: tok(root.cspace),
        aspace,
        pool,
        thread,
        events: notification_create(pool)?,
        terminate: notification_create(pool)?,
        ep: cap_derive(ep, Rights::WRITE | Rights::GRANT, ROOT_PID)?,
        info: CapToken::NULL,
        window: 0,
        limits: Limits::default(),
    };
    super::set_link(me.ep.raw(), me.events.raw(), thread.raw(), ROOT_BUFFER);
    let server = alloc::boxed::Box::new(Server {
        ep,
        aspace,
        table: Table::new(me, TABLE_RESERVE),
        // SAFETY: mapped above, writable, this thread's alone from here.
        buffer: unsafe { Buffer::at(SERVER_BUFFER) },
    });
    let arg = alloc::boxed::Box::into_raw(server) as usize;
    let top = SERVER_STACK + SERVER_STACK_PAGES * PAGE;
    // SAFETY: the stack was mapped above for this thread alone; it serves
    // for the life of the root task.
    let t = unsafe { crate::thread::spawn_on(top, serve, arg) }?;
    // SAFETY: the page was mapped above for the server thread only (a
    // message that needs it cannot come before `start` returns).
    unsafe { thread_set_ipc_buffer(t, SERVER_BUFFER) }
}

fn serve(arg: usize) -> i32 {
    // SAFETY: `start` leaked the box for this thread alone.
    let s = unsafe { &mut *(arg as *mut Server) };
    loop {
        s.buffer.clear_received();
        let Ok(msg) = recv(s.ep, 0) else { continue };
        let received: [CapToken; 3] = core::array::from_fn(|i| {
            if i < msg.info.caps() {
                s.buffer.received(i)
            } else {
                CapToken::NULL
            }
        });
        let answer = if msg.is_fault() {
            s.end(msg.badge, ExitStatus::Faulted(msg.info.label() as u32));
            None
        } else {
            s.handle(msg.badge, &msg, &received)
        };
        for c in received.into_iter().filter(|&c| c != CapToken::NULL) {
            let _ = cap_delete(c);
        }
        let words = match answer {
            None => continue,
            Some(Ok(w)) => w,
            Some(Err(e)) => {
                let _ = reply(MsgInfo::new(e as u64, 0, 0), [0; 4]);
                continue;
            }
        };
        let _ = reply(MsgInfo::new(0, 2, 0), [words[0], words[1], 0, 0]);
    }
}

impl Server {
    /// One request from process `pid`; `None`: no reply (the caller is gone).
    fn handle(
        &mut self,
        pid: Pid,
        msg: &Message,
        caps: &[CapToken; 3],
    ) -> Option<Result<[u64; 2], Error>> {
        let Some(&me) = self.table.data(pid) else {
            return Some(Err(Error::InvalidState));
        };
        let w = msg.words;
        Some(match msg.info.label() {
            label::SPAWN => self.spawn(pid, me, msg, caps).map(|p| [p, 0]),
            label::EXEC => match self.exec(pid, me, msg, caps) {
                Ok(()) => return None,
                Err(e) => Err(e),
            },
            label::FORK => self.fork(pid, me, w[0] as usize).map(|p| [p, 0]),
            label::EXIT => {
                self.end(pid, ExitStatus::Exited(w[0] as u32 as i32));
                return None;
            }
            label::WAIT => self
                .table
                .reap(pid, Some(w[0]).filter(|&p| p != 0))
                .map(|(p, s)| [p, s]),
            label::KILL | label::TERMINATE => {
                let target = w[0];
                if target == ROOT_PID || !self.table.is_ancestor(pid, target) {
                    return Some(Err(Error::InvalidArgument));
                }
                match self.table.data(target) {
                    None => Ok([0, 0]), // ended already
                    Some(t) if msg.info.label() == label::TERMINATE => {
                        signal(t.terminate, 1).map(|()| [0, 0])
                    }
                    Some(_) => {
                        self.end(target, ExitStatus::Killed);
                        // Killing itself: nobody to answer.
                        if target == pid {
                            return None;
                        }
                        Ok([0, 0])
                    }
                }
            }
            _ => Err(Error::InvalidArgument),
        })
    }

    /// Process `pid` ends with `status`: its objects go, its parent hears.
    fn end(&mut self, pid: Pid, status: ExitStatus) {
        let Some((p, tell)) = self.table.end(pid, status.encode()) else {
            return;
        };
        p.release(self.aspace);
        if let Some(parent) = tell.and_then(|t| self.table.data(t)) {
            let _ = signal(parent.events, 1);
        }
    }

    fn spawn(
        &mut self,
        pid: Pid,
        me: Proc,
        msg: &Message,
        caps: &[CapToken; 3],
    ) -> Result<Pid, Error> {
        let (limits, args) = self.arguments(msg)?;
        let new = self.table.next_pid()?;
        let pool = pool_create(me.pool, limits.pages as usize)?;
        let p = self.build(new, pid, pool, None, caps, &args, limits);
        let p = p.inspect_err(|_| {
            let _ = cap_delete(pool);
        })?;
        self.table
            .insert(pid, p)
            .inspect_err(|_| p.release(self.aspace))?;
        thread_resume(p.thread).map(|()| new)
    }

    fn exec(
        &mut self,
        pid: Pid,
        me: Proc,
        msg: &Message,
        caps: &[CapToken; 3],
    ) -> Result<(), Error> {
        let (limits, args) = self.arguments(msg)?;
        let parent = self.table.get(pid).map_or(ROOT_PID, |e| e.parent);
        // The new information page takes the old one's window.
        // SAFETY: the window is the server's.
        unsafe { unmap(self.aspace, me.window, 1) }?;
        let built = self.build(pid, parent, me.pool, Some(me.cspace), caps, &args, limits);
        let mut p = built.inspect_err(|_| {
            let _ = map(self.aspace, me.info, me.window, 0, 1, PROT_WRITE);
        })?;
        // The pool stays; everything else of the old image goes.
        let old = Proc {
            pool: CapToken::NULL,
            window: 0,
            ..me
        };
        old.release(self.aspace);
        let Some(slot) = self.table.data_mut(pid) else {
            p.pool = CapToken::NULL;
            p.release(self.aspace);
            return Err(Error::InvalidState);
        };
        *slot = p;
        thread_resume(p.thread)
    }

    fn fork(&mut self, pid: Pid, me: Proc, pages: usize) -> Result<Pid, Error> {
        let pages = match pages {
            0 => pool_available(me.pool)? / 2,
            n => n,
        };
        let new = self.table.next_pid()?;
        // Read first: once forked, the page is copy-on-write, and such a
        // page cannot be mapped into a second space.
        let (mut info, args) = read_info(me.window);
        let mut p = Proc {
            pool: pool_create(me.pool, pages)?,
            limits: me.limits,
            ..Proc::default()
        };
        let made = (|| {
            p.aspace = aspace_fork(me.aspace, p.pool)?;
            p.cspace = cap_space_create(p.pool, me.limits.slot_count())?;
            cap_space_inherit(me.cspace, p.cspace)?;
            // SAFETY: the child's space, not this one.
            unsafe { unmap(p.aspace, PROC_INFO_ADDR, 1) }?;
            p.thread = thread_create_raw(p.aspace, p.cspace, 0)?;
            thread_copy(me.thread, p.thread)?;
            self.finish(&mut p, new, pid, &args.data[..args.bytes], &mut info)
        })();
        made.inspect_err(|_| p.release(self.aspace))?;
        self.table
            .insert(pid, p)
            .inspect_err(|_| p.release(self.aspace))?;
        thread_resume(p.thread).map(|()| new)
    }

    /// The limits and argument bytes of a `SPAWN`/`EXEC` request.
    fn arguments(&self, msg: &Message) -> Result<(Limits, Args), Error> {
        let len = msg.info.len();
        let [limits, argc, envc, bytes] = msg.words;
        let (limits, bytes) = (Limits::decode(limits), bytes as usize);
        let fits = bytes <= PROC_ARGS_MAX && len >= 4 && bytes.div_ceil(8) <= len - 4;
        let bad_args = !fits || argc.saturating_add(envc) > bytes as u64;
        if bad_args || limits.stack() > PROC_STACK_MAX_PAGES {
            return Err(Error::InvalidArgument);
        }
        let mut a = Args {
            argc,
            envc,
            bytes,
            data: [0; PROC_ARGS_MAX],
        };
        for (i, chunk) in a.data[..bytes].chunks_mut(8).enumerate() {
            let b = self.buffer.word(4 + i).to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        Ok((limits, a))
    }

    /// A new process `pid` (child of `parent`) running the image in
    /// `caps[0]`, its objects charged to `pool`, with the inheritable
    /// capabilities of `inherit` and the rest of `caps` passed on.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        pid: Pid,
        parent: Pid,
        pool: CapToken,
        inherit: Option<CapToken>,
        caps: &[CapToken; 3],
        args: &Args,
        limits: Limits,
    ) -> Result<Proc, Error> {
        let mut p = Proc {
            pool,
            limits,
            ..Proc::default()
        };
        let made = (|| {
            p.aspace = aspace_create(pool)?;
            p.cspace = cap_space_create(pool, limits.slot_count())?;
            if let Some(old) = inherit {
                cap_space_inherit(old, p.cspace)?;
            }
            let mut info = self.load(caps[0], p.aspace, pool)?;
            let pages = limits.stack();
            let stack = mem_create(pool, pages, 0)?;
            let at = PROC_STACK_TOP - pages * PAGE;
            let mapped = map(p.aspace, stack, at, 0, pages, PROT_WRITE);
            cap_delete(stack)?;
            mapped?;
            let buffer = mem_create(pool, 1, 0)?;
            let mapped = map(p.aspace, buffer, PROC_IPC_BUFFER, 0, 1, PROT_WRITE);
            cap_delete(buffer)?;
            mapped?;
            p.thread = thread_create_raw(p.aspace, p.cspace, info.entry as usize)?;
            for (i, &c) in caps[1..]
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != CapToken::NULL)
            {
                let rights = cap_identify(c)?.rights().ok_or(Error::InvalidArgument)?;
                info.passed[i] = cap_grant(c, p.cspace, rights)?.raw();
            }
            (info.argc, info.envc, info.args_bytes) = (args.argc, args.envc, args.bytes as u64);
            self.finish(&mut p, pid, parent, &args.data[..args.bytes], &mut info)
        })();
        made.inspect_err(|_| {
            Proc {
                pool: CapToken::NULL,
                ..p
            }
            .release(self.aspace)
        })?;
        Ok(p)
    }

    /// The objects every process gets (notifications, server endpoint,
    /// information page with `args`), granted into its space; the thread's
    /// IPC buffer and fault handler.
    fn finish(
        &mut self,
        p: &mut Proc,
        pid: Pid,
        parent: Pid,
        args: &[u8],
        info: &mut ProcInfo,
    ) -> Result<(), Error> {
        p.events = notification_create(p.pool)?;
        p.terminate = notification_create(p.pool)?;
        p.ep = cap_derive(self.ep, Rights::WRITE | Rights::GRANT, pid)?;
        let rw = Rights::READ | Rights::WRITE;
        info.magic = PROC_INFO_MAGIC;
        info.version = PROC_INFO_VERSION;
        (info.pid, info.parent) = (pid, parent);
        info.server = cap_grant(p.ep, p.cspace, Rights::WRITE | Rights::GRANT)?.raw();
        info.aspace = cap_grant(p.aspace, p.cspace, rw)?.raw();
        info.pool = cap_grant(p.pool, p.cspace, rw)?.raw();
        info.thread = cap_grant(p.thread, p.cspace, rw)?.raw();
        info.child_events = cap_grant(p.events, p.cspace, Rights::READ)?.raw();
        info.terminate = cap_grant(p.terminate, p.cspace, Rights::READ)?.raw();
        p.info = mem_create(p.pool, 1, 0)?;
        let window = info_window(pid);
        map(self.aspace, p.info, window, 0, 1, PROT_WRITE)?;
        p.window = window;
        // SAFETY: the window is mapped writable, one page, ours alone.
        unsafe {
            (window as *mut ProcInfo).write(*info);
            let at = (window + PROC_ARGS_OFFSET) as *mut u8;
            core::ptr::copy_nonoverlapping(args.as_ptr(), at, args.len().min(PROC_ARGS_MAX));
        }
        map(p.aspace, p.info, PROC_INFO_ADDR, 0, 1, 0)?;
        // SAFETY: the child's page, mapped writable above (or inherited).
        unsafe { thread_set_ipc_buffer(p.thread, PROC_IPC_BUFFER) }?;
        thread_set_fault_handler(p.thread, p.ep)
    }

    /// Maps the ELF executable in `image` into `aspace` (copies charged to
    /// `pool`); the auxiliary part of its information page.
    fn load(
        &mut self,
        image: CapToken,
        aspace: CapToken,
        pool: CapToken,
    ) -> Result<ProcInfo, Error> {
        let pages = mem_size(image)?;
        let bad = |_| Error::InvalidArgument;
        // Only the headers are mapped to check the file (its first page,
        // or as many as its program headers need), then only the file
        // part of each segment that is copied.
        let mut head = 1;
        let img = loop {
            let w = Window::map(self.aspace, (image, 0), IMAGE_WINDOW, head, 0)?;
            // SAFETY: the window maps `head` readable pages while it lives.
            let bytes = unsafe { core::slice::from_raw_parts(w.va as *const u8, head * PAGE) };
            let need = keel_elf::headers_len(bytes).map_err(bad)?.div_ceil(PAGE);
            if need <= head || need > pages {
                break keel_elf::parse_headers_at(
                    bytes,
                    pages * PAGE,
                    crate::ELF_MACHINE,
                    PIE_BASE,
                )
                .map_err(bad)?;
            }
            head = need;
        };
        let relocs = self.relocations(image, &img)?;
        let mut applied = 0;
        for s in &img.segments {
            let (first, n) = s.pages();
            let prot = if s.exec {
                PROT_EXEC
            } else if s.write {
                PROT_WRITE
            } else {
                0
            };
            let relocated = relocs.is_some() && !s.exec;
            if !s.write && s.file_size == s.mem_size && !relocated {
                map(aspace, image, first, s.offset / PAGE, n, prot)?;
                continue;
            }
            let mem = mem_create(pool, n, 0)?;
            let copied = self.copy_in(image, s, mem, n, relocs.as_ref().filter(|_| relocated));
            let mapped = copied.and_then(|k| map(aspace, mem, first, 0, n, prot).map(|()| k));
            cap_delete(mem)?;
            applied += mapped?;
        }
        if relocs.is_some_and(|r| r.count != applied) {
            return Err(Error::InvalidArgument);
        }
        let phdr = img.segments.iter().find_map(|s| {
            let off = img.phdrs.0.checked_sub(s.offset)?;
            (off < s.file_size).then_some(s.vaddr + off)
        });
        let t = img.tls.map_or([0; 4], |t| {
            [
                t.vaddr as u64,
                t.file_size as u64,
                t.mem_size as u64,
                t.align as u64,
            ]
        });
        Ok(ProcInfo {
            entry: img.entry as u64,
            phdr: phdr.unwrap_or(0) as u64,
            phent: img.phdrs.1 as u64,
            phnum: img.phdrs.2 as u64,
            tls: t,
            ..ProcInfo::default()
        })
    }

    /// Copies segment `s`'s bytes from `image` into the fresh `n`-page
    /// object `mem` (the rest stays zero), then applies the relocations of
    /// `relocs` that land in it; how many did.
    fn copy_in(
        &self,
        image: CapToken,
        s: &keel_elf::Segment,
        mem: CapToken,
        n: usize,
        relocs: Option<&Relocs>,
    ) -> Result<usize, Error> {
        if s.file_size == 0 && relocs.is_none() {
            return Ok(0);
        }
        let dst = Window::map(self.aspace, (mem, 0), SEGMENT_WINDOW, n, PROT_WRITE)?;
        if s.file_size > 0 {
            let from = s.offset / PAGE;
            let file_pages = (s.offset + s.file_size).div_ceil(PAGE) - from;
            let src = Window::map(self.aspace, (image, from), IMAGE_WINDOW, file_pages, 0)?;
            // SAFETY: the windows map the segment's file pages (readable)
            // and `n` writable pages covering it, which starts `vaddr %
            // PAGE` bytes into its first page as in the file.
            unsafe {
                let from = (src.va + s.offset % PAGE) as *const u8;
                let to = (dst.va + s.vaddr % PAGE) as *mut u8;
                core::ptr::copy_nonoverlapping(from, to, s.file_size);
            }
        }
        let Some(r) = relocs else { return Ok(0) };
        let mut applied = 0;
        for e in r.table().chunks_exact(24) {
            let (offset, addend) =
                keel_elf::relative(e, crate::ELF_MACHINE).map_err(|_| Error::InvalidArgument)?;
            let at = r.bias.checked_add(offset).ok_or(Error::InvalidArgument)?;
            let inside =
                at >= s.vaddr && at.checked_add(8).is_some_and(|e| e <= s.vaddr + s.mem_size);
            if inside {
                let value = r.bias.wrapping_add(addend) as u64;
                // SAFETY: the word lies in the segment, all of which the
                // writable window maps (its first page at `dst.va`).
                unsafe {
                    ((dst.va + at - (s.vaddr & !(PAGE - 1))) as *mut u64).write_unaligned(value)
                };
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// The relocation table of a position-independent `img` (from the
    /// file in `image`), mapped for the load; `None` for a static image or
    /// one without relocations.
    fn relocations(&self, image: CapToken, img: &keel_elf::Image) -> Result<Option<Relocs>, Error> {
        let bad = |_| Error::InvalidArgument;
        let Some((at, len)) = img.dynamic else {
            return Ok(None);
        };
        let (window, va) = self.file_window(image, img, at, len)?;
        // SAFETY: `file_window` maps the `len` bytes at `va` readable.
        let bytes = unsafe { core::slice::from_raw_parts(va as *const u8, len) };
        let table = keel_elf::rela_table(bytes).map_err(bad)?;
        drop(window);
        let Some((at, count)) = table else {
            return Ok(None);
        };
        let len = count.checked_mul(24).ok_or(Error::InvalidArgument)?;
        let at = img.bias.checked_add(at).ok_or(Error::InvalidArgument)?;
        let (window, va) = self.file_window(image, img, at, len)?;
        Ok(Some(Relocs {
            _window: window,
            va,
            count,
            bias: img.bias,
        }))
    }

    /// Maps the `len` file bytes that `img` loads at `addr` (which must lie
    /// in a segment's file part) at `RELA_WINDOW`; the window, and where
    /// the bytes start in it.
    fn file_window(
        &self,
        image: CapToken,
        img: &keel_elf::Image,
        addr: usize,
        len: usize,
    ) -> Result<(Window, usize), Error> {
        let s = keel_elf::file_segment(&img.segments, addr, len).ok_or(Error::InvalidArgument)?;
        let off = s.offset + (addr - s.vaddr);
        let pages = (off % PAGE + len).div_ceil(PAGE).max(1);
        if pages > DYNAMIC_MAX_PAGES {
            return Err(Error::InvalidArgument);
        }
        let w = Window::map(self.aspace, (image, off / PAGE), RELA_WINDOW, pages, 0)?;
        let va = w.va + off % PAGE;
        Ok((w, va))
    }
}

/// The relocation table of the image being loaded, mapped while it lives.
struct Relocs {
    _window: Window,
    va: usize,
    count: usize,
    bias: usize,
}

impl Relocs {
    fn table(&self) -> &[u8] {
        // SAFETY: the window maps the `count` entries at `va`, readable,
        // as long as `self` lives.
        unsafe { core::slice::from_raw_parts(self.va as *const u8, self.count * 24) }
    }
}

/// Arguments of a request: `argc` + `envc` NUL-terminated strings.
struct Args {
    argc: u64,
    envc: u64,
    bytes: usize,
    data: [u8; PROC_ARGS_MAX],
}

/// A memory object mapped into the root task for a moment.
struct Window {
    aspace: CapToken,
    va: usize,
    pages: usize,
}

impl Window {
    /// `pages` pages of `mem` from its page `offset`, at `va`.
    fn map(
        aspace: CapToken,
        (mem, offset): (CapToken, usize),
        va: usize,
        pages: usize,
        prot: usize,
    ) -> Result<Window, Error> {
        map(aspace, mem, va, offset, pages, prot)?;
        Ok(Window { aspace, va, pages })
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: nothing refers to the window once it is dropped.
        let _ = unsafe { unmap(self.aspace, self.va, self.pages) };
    }
}

/// A process's information page and arguments as they are, from its
/// window (0: none, the root task), for fork to copy.
fn read_info(window: usize) -> (ProcInfo, Args) {
    let mut args = Args {
        argc: 0,
        envc: 0,
        bytes: 0,
        data: [0; PROC_ARGS_MAX],
    };
    if window == 0 {
        return (ProcInfo::default(), args);
    }
    // SAFETY: the server keeps the page mapped there while the process
    // lives; the arguments lie in the page.
    let i = unsafe {
        let at = (window + PROC_ARGS_OFFSET) as *const u8;
        core::ptr::copy_nonoverlapping(at, args.data.as_mut_ptr(), PROC_ARGS_MAX);
        (window as *const ProcInfo).read()
    };
    args.bytes = (i.args_bytes as usize).min(PROC_ARGS_MAX);
    (i, args)
}

/// A suspended thread in another process's spaces starting at `entry`
/// with the standard stack and information page.
fn thread_create_raw(aspace: CapToken, cspace: CapToken, entry: usize) -> Result<CapToken, Error> {
    // SAFETY: `aspace` is not the caller's.
    unsafe { thread_create(aspace, cspace, entry, PROC_STACK_TOP, PROC_INFO_ADDR) }
}

const _: () = assert!(PROC_PASSED_CAPS == 2);

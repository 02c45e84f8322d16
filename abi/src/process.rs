//! Processes: what the process server (`keel_rt::process`, run by the root
//! task) hands every process it starts, and the protocol spoken with it.
//! The kernel knows none of this; its part is in the 0x50 system calls
//! (docs/processes.md).
//!
//! Invariants: the layout of [`ProcInfo`] is stable ABI; new fields are
//! only appended, with `version` raised. Labels are never renumbered.

/// Value of [`ProcInfo::magic`] ("KEELPROC").
pub const PROC_INFO_MAGIC: u64 = 0x434f_5250_4c45_454b;
/// Current [`ProcInfo::version`].
pub const PROC_INFO_VERSION: u64 = 1;
/// Where a process's information page is mapped, read-only (its address
/// also arrives in the first argument register of its first thread).
pub const PROC_INFO_ADDR: usize = 0x20_0000;
/// The first thread's IPC buffer (one page, writable).
pub const PROC_IPC_BUFFER: usize = 0x20_1000;
/// Top of the first thread's stack, and its size in pages (demand-zero).
pub const PROC_STACK_TOP: usize = 0x3f_0000;
pub const PROC_STACK_PAGES: usize = 64;
/// The most stack pages a spawn may ask for ([`Limits::stack_pages`]).
pub const PROC_STACK_MAX_PAGES: usize = 256;
/// Slots of a process's capability space unless its spawn asks otherwise.
pub const PROC_SLOTS: usize = 256;
/// Where the arguments start in the information page (bytes), and the
/// most bytes they may take.
pub const PROC_ARGS_OFFSET: usize = 512;
pub const PROC_ARGS_MAX: usize = 4096 - PROC_ARGS_OFFSET;
/// Capabilities a spawn or exec can pass besides the image.
pub const PROC_PASSED_CAPS: usize = 2;
/// The root task's process id.
pub const ROOT_PID: u64 = 1;

/// A process's information page. Capability fields are tokens in the
/// process's own capability space (0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub magic: u64,
    pub version: u64,
    /// Its process id and its parent's (at start).
    pub pid: u64,
    pub parent: u64,
    /// Endpoint to the process server (badged with the pid).
    pub server: u64,
    /// Its own address space, memory pool and first thread.
    pub aspace: u64,
    pub pool: u64,
    pub thread: u64,
    /// Signalled when one of its children ends (`WAIT` then finds it).
    pub child_events: u64,
    /// Signalled (bit 0) when someone asks it to terminate.
    pub terminate: u64,
    /// The capabilities its creator passed (spawn, exec), in order.
    pub passed: [u64; PROC_PASSED_CAPS],
    /// Auxiliary vector: entry point, program headers (address, entry
    /// size, count; address 0 if not loaded), and the TLS template
    /// (address, file bytes, memory bytes, alignment; all 0 if none).
    pub entry: u64,
    pub phdr: u64,
    pub phent: u64,
    pub phnum: u64,
    pub tls: [u64; 4],
    /// How many NUL-terminated arguments, then environment strings, lie
    /// at [`PROC_ARGS_OFFSET`], and their bytes.
    pub argc: u64,
    pub envc: u64,
    pub args_bytes: u64,
}

/// Labels of the requests to the process server. Each request is a call
/// on [`ProcInfo::server`]; the reply's label is 0 or an
/// [`crate::Error`] code.
pub mod label {
    /// caps `[image, passed…]`, words `[limits, argc, envc, bytes,
    /// argument bytes…]` (`limits`: [`super::Limits`]): a new child from
    /// an ELF image; replies its pid. `InvalidArgument` for a stack larger
    /// than [`super::PROC_STACK_MAX_PAGES`].
    pub const SPAWN: u64 = 1;
    /// words `[status]`: the caller's process ends (no reply).
    pub const EXIT: u64 = 2;
    /// words `[pid or 0 for any]`: reaps an ended child; replies `[pid,
    /// status]`. `WouldBlock` if none has ended yet (the server never
    /// blocks: wait for `child_events`, then ask again), `InvalidArgument`
    /// if there is no such child.
    pub const WAIT: u64 = 3;
    /// words `[pid]`: ends a child (or any descendant) at once.
    pub const KILL: u64 = 4;
    /// words `[pid]`: asks a child (or descendant) to end: signals its
    /// `terminate` notification.
    pub const TERMINATE: u64 = 5;
    /// words `[pool pages]`: a copy-on-write copy of the caller's process
    /// (whose first thread must be the caller); replies the child's pid,
    /// and the child's call returns an empty message (label 0, no words).
    pub const FORK: u64 = 6;
    /// as `SPAWN`, but the caller's process takes the new image (same
    /// pid, parent and children; only inheritable capabilities stay).
    pub const EXEC: u64 = 7;
}

/// The first word of a `SPAWN` or `EXEC` request: the sizes of the new
/// process's pool, stack and capability space, packed as `pages |
/// stack_pages << 32 | slots << 48`. A capability space of `slots` slots
/// is the process's limit on capabilities; its pool, on memory and kernel
/// objects (threads included), each charged in pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Pages of its pool, carved from its parent's (`EXEC` keeps the pool
    /// and ignores this).
    pub pages: u32,
    /// Pages of its first thread's stack (0: [`PROC_STACK_PAGES`]; at most
    /// [`PROC_STACK_MAX_PAGES`]).
    pub stack_pages: u16,
    /// Slots of its capability space (0: [`PROC_SLOTS`]).
    pub slots: u16,
}

impl Limits {
    /// A pool of `pages` pages and the default stack and slots.
    pub const fn pages(pages: u32) -> Limits {
        Limits {
            pages,
            stack_pages: 0,
            slots: 0,
        }
    }

    pub const fn encode(self) -> u64 {
        self.pages as u64 | (self.stack_pages as u64) << 32 | (self.slots as u64) << 48
    }

    pub const fn decode(word: u64) -> Limits {
        Limits {
            pages: word as u32,
            stack_pages: (word >> 32) as u16,
            slots: (word >> 48) as u16,
        }
    }

    /// The stack's pages, the default put in.
    pub const fn stack(self) -> usize {
        match self.stack_pages {
            0 => PROC_STACK_PAGES,
            n => n as usize,
        }
    }

    /// The capability space's slots, the default put in.
    pub const fn slot_count(self) -> usize {
        match self.slots {
            0 => PROC_SLOTS,
            n => n as usize,
        }
    }
}

/// How a process ended, as `WAIT` reports it: `kind << 32 | code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed.
    Killed,
    /// A fault nobody handled ended it (the fault code, docs/abi.md).
    Faulted(u32),
}

impl ExitStatus {
    pub const fn encode(self) -> u64 {
        match self {
            ExitStatus::Exited(c) => c as u32 as u64,
            ExitStatus::Killed => 1 << 32,
            ExitStatus::Faulted(c) => (2 << 32) | c as u64,
        }
    }

    pub const fn decode(raw: u64) -> Option<ExitStatus> {
        let code = raw as u32;
        match raw >> 32 {
            0 => Some(ExitStatus::Exited(code as i32)),
            1 if code == 0 => Some(ExitStatus::Killed),
            2 => Some(ExitStatus::Faulted(code)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_garbage_is_refused() {
        for s in [
            ExitStatus::Exited(0),
            ExitStatus::Exited(-1),
            ExitStatus::Exited(i32::MAX),
            ExitStatus::Killed,
            ExitStatus::Faulted(1),
        ] {
            assert_eq!(ExitStatus::decode(s.encode()), Some(s));
        }
        assert_eq!(ExitStatus::decode(3 << 32), None);
        assert_eq!(ExitStatus::decode((1 << 32) | 5), None);
    }

    #[test]
    fn limits_round_trip_and_zero_means_the_defaults() {
        let l = Limits {
            pages: u32::MAX,
            stack_pages: 3,
            slots: u16::MAX,
        };
        assert_eq!(Limits::decode(l.encode()), l);
        assert_eq!((l.stack(), l.slot_count()), (3, u16::MAX as usize));
        let d = Limits::decode(Limits::pages(7).encode());
        assert_eq!(
            (d.pages, d.stack(), d.slot_count()),
            (7, PROC_STACK_PAGES, PROC_SLOTS)
        );
    }

    const _: () = {
        assert!(core::mem::size_of::<ProcInfo>() <= PROC_ARGS_OFFSET);
        assert!(PROC_IPC_BUFFER + 2 * 4096 <= PROC_STACK_TOP - PROC_STACK_MAX_PAGES * 4096);
        assert!(PROC_STACK_PAGES <= PROC_STACK_MAX_PAGES);
        assert!(PROC_STACK_TOP <= crate::boot::USER_IMAGE_MIN);
    };
}

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
    /// caps `[image, passed…]`, words `[pool pages, argc, envc, bytes,
    /// argument bytes…]`: a new child from an ELF image; replies its pid.
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

    const _: () = {
        assert!(core::mem::size_of::<ProcInfo>() <= PROC_ARGS_OFFSET);
        assert!(PROC_IPC_BUFFER + 4096 <= PROC_STACK_TOP - PROC_STACK_PAGES * 4096);
        assert!(PROC_STACK_TOP <= crate::boot::USER_IMAGE_MIN);
    };
}

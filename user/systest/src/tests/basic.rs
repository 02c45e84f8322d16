//! The root-task information page, `DebugWrite`, `SystemInfo`, unassigned
//! system-call numbers, and what a system call preserves.

use super::{PAGE, root};
use crate::harness::{Ctx, TestResult};
use keel_abi::Error;
use keel_abi::boot::{
    ROOT_FLAG_BENCH, ROOT_FLAG_TEST, ROOT_INFO_ADDR, ROOT_INFO_MAGIC, ROOT_INFO_VERSION, USER_END,
};
use keel_abi::cap::ObjectType;
use keel_abi::syscall::{RESERVED, SystemInfoKey};
use keel_rt::syscall::{debug_write, debug_write_raw, raw0, system_info, system_info_raw};

/// Most bytes one `DebugWrite` takes.
const DEBUG_WRITE_MAX: usize = 64 * 1024;

pub fn root_info_is_valid() -> TestResult {
    let r = root()?;
    let info = r.info;
    ensure_eq!(info as *const _ as usize, ROOT_INFO_ADDR);
    ensure_eq!(info.magic, ROOT_INFO_MAGIC);
    ensure_eq!(info.version, ROOT_INFO_VERSION);
    ensure!(info.cpu_count >= 1);
    ensure!(info.pool_pages > 0);
    ensure!(info.boot_image_bytes > 0);
    ensure_eq!(info.flags & !(ROOT_FLAG_TEST | ROOT_FLAG_BENCH), 0);
    Ok(())
}

pub fn root_info_tokens_have_their_types() -> TestResult {
    let r = root()?;
    ensure_eq!(r.pool.object_type(), Some(ObjectType::MemoryPool));
    ensure_eq!(r.boot_image.object_type(), Some(ObjectType::MemoryObject));
    ensure_eq!(r.aspace.object_type(), Some(ObjectType::AddressSpace));
    ensure_eq!(r.cspace.object_type(), Some(ObjectType::CapSpace));
    ensure_eq!(r.thread.object_type(), Some(ObjectType::Thread));
    Ok(())
}

pub fn debug_write_works() -> TestResult {
    let line = b"systest: DebugWrite from user mode\n";
    ensure_eq!(debug_write(line), Ok(line.len()));
    ensure_eq!(debug_write(b""), Ok(0));
    // A buffer on the stack and one in the heap.
    let stack = *b"systest: from the stack\n";
    ensure_eq!(debug_write(&stack), Ok(stack.len()));
    let heap = alloc::format!("systest: from the heap ({} bytes)\n", 36);
    ensure_eq!(debug_write(heap.as_bytes()), Ok(heap.len()));
    // A zero-length write at a bad address touches nothing.
    ensure_eq!(debug_write_raw(0, 0), Ok(0));
    Ok(())
}

pub fn debug_write_rejects_bad_buffers() -> TestResult {
    let bad = [
        (0, 1),
        (0x10, 8),
        (0xffff_8000_0000_0000, 16),
        (0xffff_ffff_8000_0000, 16),
        (0x8000_0000_0000_0000, 1),
        (0x5000_0000_0000, 8),
        (USER_END - 1, 2),
        (usize::MAX, 2),
        // Starts in the (mapped) information page, runs into the unmapped
        // page after it.
        (ROOT_INFO_ADDR + PAGE - 8, 16),
    ];
    for (ptr, len) in bad {
        ensure_eq!(
            debug_write_raw(ptr, len),
            Err(Error::BadAddress),
            "at {ptr:#x}+{len}"
        );
    }
    let text = b"x";
    ensure_eq!(
        debug_write_raw(text.as_ptr() as usize, DEBUG_WRITE_MAX + 1),
        Err(Error::InvalidArgument)
    );
    ensure_eq!(
        debug_write_raw(text.as_ptr() as usize, usize::MAX),
        Err(Error::InvalidArgument)
    );
    Ok(())
}

pub fn system_info_reads_every_key() -> TestResult {
    let r = root()?;
    let cpus = system_info(SystemInfoKey::CpuCount).ctx("CpuCount")?;
    ensure_eq!(cpus as u64, r.info.cpu_count);
    let total = system_info(SystemInfoKey::TotalFrames).ctx("TotalFrames")?;
    let free = system_info(SystemInfoKey::FreeFrames).ctx("FreeFrames")?;
    ensure!(total > 0);
    ensure!(free > 0 && free <= total, "free {free}, total {total}");
    ensure_eq!(system_info(SystemInfoKey::PageSize), Ok(PAGE));
    let c0 = system_info(SystemInfoKey::Cycles).ctx("Cycles")?;
    for _ in 0..100 {
        let _ = system_info(SystemInfoKey::PageSize);
    }
    let c1 = system_info(SystemInfoKey::Cycles).ctx("Cycles")?;
    ensure!(c1 > c0, "cycle counter went from {c0} to {c1}");
    Ok(())
}

pub fn monotonic_clock_runs_forward() -> TestResult {
    let t0 = system_info(SystemInfoKey::MonotonicNs).ctx("MonotonicNs")?;
    ensure!(t0 > 0, "the kernel found no clock rate");
    let mut last = t0;
    for _ in 0..1000 {
        let t = system_info(SystemInfoKey::MonotonicNs).ctx("MonotonicNs")?;
        ensure!(t >= last, "the clock went back from {last} to {t}");
        last = t;
    }
    ensure!(last > t0, "1,000 system calls took no time ({t0})");
    // Since boot: more than nothing, less than the test run's limit.
    ensure!(t0 < 3_600_000_000_000, "an hour since boot? {t0} ns");
    Ok(())
}

pub fn system_info_rejects_bad_keys() -> TestResult {
    for key in [9, 10, 0x100, usize::MAX] {
        ensure_eq!(
            system_info_raw(key),
            Err(Error::InvalidArgument),
            "key {key}"
        );
    }
    Ok(())
}

pub fn unknown_syscalls_are_refused() -> TestResult {
    let want = Error::NoSuchSyscall.to_return_value();
    let singles = [
        0x02,
        0x0f,
        0x17,
        0x1f,
        0x2b,
        0x2f,
        0x38,
        0x4d,
        0x3f,
        0x70,
        0xff,
        0x100,
        0xffff,
        usize::MAX,
    ];
    let reserved = RESERVED.iter().flat_map(|r| r.clone());
    for number in singles.into_iter().chain(reserved) {
        // SAFETY: an unassigned number has no effect.
        let got = unsafe { raw0(number) };
        ensure_eq!(got, want, "number {number:#x}");
    }
    Ok(())
}

pub fn syscall_preserves_registers() -> TestResult {
    let bad = keel_rt::probe::syscall_register_mismatches(PAGE as u64);
    ensure!(
        bad.is_empty(),
        "registers changed by the call (name, expected, found): {bad:x?}"
    );
    Ok(())
}

//! Code every bare-metal architecture shares, reached only from inside
//! `arch/` (`arch/mod.rs` imports it privately): the exception-fixup
//! table, the user-copy wrapper around each architecture's
//! `keel_user_copy`, the console's line endings, the frame-pointer
//! backtrace and the probed direct-map reader for untrusted boot
//! information.
//!
//! Invariant: every architecture's linker script bounds `__ex_table` with
//! `__ex_table_start`/`__ex_table_end`, and every instruction listed there
//! resumes at its fixup instead of crashing the kernel.

#[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
use super::{phys_to_virt, probe_read};
#[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
use crate::bootinfo::PhysReader;

unsafe extern "C" {
    // Bounds of the exception-fixup table, `__ex_table` (8-byte aligned),
    // defined by every architecture's linker.ld.
    // Declared as bytes: only their addresses are used.
    static __ex_table_start: u8;
    static __ex_table_end: u8;
}

/// One exception-fixup table entry, emitted by assembly into the
/// `__ex_table` section next to an instruction that may fault: a kernel-mode
/// fault at `fault_pc` resumes at `fixup_pc`.
#[repr(C)]
pub struct FixupEntry {
    /// The address of the instruction that may fault.
    pub fault_pc: usize,
    /// Where execution resumes when it does.
    pub fixup_pc: usize,
}

/// All exception-fixup entries.
pub fn fixup_table() -> &'static [FixupEntry] {
    let start = (&raw const __ex_table_start).cast::<FixupEntry>();
    let end = (&raw const __ex_table_end).cast::<FixupEntry>();
    let len = (end as usize - start as usize) / core::mem::size_of::<FixupEntry>();
    // SAFETY: every architecture's linker script gathers all `__ex_table`
    // contributions (pairs of 8-byte code addresses) between these symbols,
    // in read-only memory that lives for the whole run.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// The resume address registered for a kernel fault at `pc`, if any.
pub fn fixup_for(pc: usize) -> Option<usize> {
    fixup_table()
        .iter()
        .find(|e| e.fault_pc == pc)
        .map(|e| e.fixup_pc)
}

/// What every architecture's `keel_user_copy` routine returns, in its two
/// return registers.
#[repr(C)]
pub struct CopyResult {
    faulted: u64,
    addr: u64,
}

unsafe extern "C" {
    /// Each architecture's assembly routine (C ABI): copies with user
    /// access open; every load and store is in the fixup table.
    pub fn keel_user_copy(dst: *mut u8, src: *const u8, len: usize) -> CopyResult;
}

/// Copies `len` bytes from `src` to `dst` with user-memory access open; a
/// fault on either side stops the copy and returns the address that could
/// not be read or written (the bytes before it were copied). The caller
/// checks that the user side lies in the user half.
///
/// # Safety
/// One of `dst`/`src` is a user address range (anything: faults are
/// caught); the other is kernel memory valid for `len` bytes, for writing
/// if it is `dst`; the two do not overlap.
pub unsafe fn user_copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), usize> {
    // SAFETY: each architecture's routine follows the C ABI and touches only
    // `[src, src + len)` and `[dst, dst + len)`; every instruction that
    // does is in the fixup table, so a fault returns instead of crashing;
    // the kernel side is valid (the caller's guarantee).
    let r = unsafe { keel_user_copy(dst, src, len) };
    if r.faulted == 0 {
        Ok(())
    } else {
        Err(r.addr as usize)
    }
}

/// Writes `bytes` with `put`, translating `\n` to `\r\n` (QEMU's
/// `-nographic` puts the terminal in raw mode).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn write_crlf(bytes: &[u8], put: impl Fn(u8)) {
    for &b in bytes {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

/// Prints one backtrace line.
pub fn print_frame(index: usize, addr: usize) {
    kprintln!("  {}{index} {addr:#x}", keel_abi::harness::FRAME_PREFIX);
}

/// Walks a frame-pointer chain starting at `fp`, printing each return
/// address as a backtrace line numbered from `first`. `next(fp)` returns
/// `(caller_fp, return_address)` read from the frame record, or `None` when
/// the record is not readable; the walk stops after 32 frames, on a null or
/// non-increasing frame pointer.
pub fn print_frames(mut fp: usize, first: usize, next: impl Fn(usize) -> Option<(usize, usize)>) {
    for i in first..first + 32 {
        if fp == 0 || !fp.is_multiple_of(core::mem::align_of::<usize>()) {
            return;
        }
        let Some((caller_fp, ret)) = next(fp) else {
            return;
        };
        if ret == 0 {
            return;
        }
        print_frame(i, ret);
        if caller_fp <= fp {
            return;
        }
        fp = caller_fp;
    }
}

/// Physical memory read through the boot direct map, each page of a range
/// first probed with `probe_read`, so an address that is not backed yields
/// `None` rather than a fault. For boot information whose address comes from
/// the loader (the device tree, so only the architectures that boot with
/// one).
#[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
pub struct ProbedDirectMap {
    /// Lowest physical address read: below it lie device registers, where
    /// even a read may have side effects.
    pub floor: u64,
}

#[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
impl PhysReader<'static> for ProbedDirectMap {
    fn bytes(&self, addr: u64, len: u64) -> Option<&'static [u8]> {
        let end = addr.checked_add(len)?;
        if addr < self.floor || end > crate::mm::DIRECT_MAP_BOOT_LIMIT {
            return None;
        }
        // One byte per page, and the last byte.
        let mut at = addr;
        while at < end {
            probe_read(phys_to_virt(at)).ok()?;
            at = (at | 0xfff) + 1;
        }
        if len > 0 {
            probe_read(phys_to_virt(end - 1)).ok()?;
        }
        // SAFETY: `[addr, end)` lies below the boot direct-map limit, which
        // every architecture's boot page tables map readable at
        // `phys_to_virt` for the kernel's whole run, and every page of it was
        // just read without a fault, so it is backed. Boot information is
        // reserved in the memory map, so nothing writes it while shared.
        Some(unsafe { core::slice::from_raw_parts(phys_to_virt(addr) as *const u8, len as usize) })
    }
}

crate::ktest!(
    fn probe_read_faults_through_its_fixup() {
        let Err(rec) = super::probe_read(crate::trap::UNMAPPED_KERNEL_ADDR) else {
            kassert!(false, "read of an unmapped kernel address succeeded");
            return Ok(());
        };
        // The faulting load is listed, and resumes elsewhere.
        let fixup = fixup_for(rec.pc);
        kassert!(
            fixup.is_some_and(|f| f != rec.pc),
            "fault at {:#x}: fixup {:?}",
            rec.pc,
            fixup
        );
        Ok(())
    }
);

crate::ktest!(
    fn unlisted_pc_has_no_fixup() {
        kassert_eq!(
            fixup_for(super::print_backtrace as *const () as usize),
            None
        );
        kassert_eq!(fixup_for(0), None);
        Ok(())
    }
);

crate::ktest!(
    fn user_copy_is_in_the_fixup_table() {
        // Four entries: word and byte, load and store, each resuming inside
        // the routine.
        let base = keel_user_copy as *const () as usize;
        let routine = base..base + 256;
        let entries = || {
            fixup_table()
                .iter()
                .filter(|e| routine.contains(&e.fault_pc))
        };
        kassert_eq!(entries().count(), 4);
        kassert!(entries().all(|e| routine.contains(&e.fixup_pc)));
        Ok(())
    }
);

/// A system call of the running thread, whose saved registers are at
/// `regs` (the pointer `enter_user` recorded for this CPU, filled by the
/// entry stub): a call that needs no kernel state is answered from the
/// registers alone, without the kernel lock (`entry::on_light_syscall`);
/// the rest go to `entry::on_syscall`. Returns the registers to enter.
pub(crate) fn syscall(regs: usize) -> *const super::UserRegs {
    // SAFETY: `regs` names the running thread's saved registers in its
    // TCB, which lives while the thread runs. Only this CPU touches them
    // while it is in the kernel for that thread, and the reference ends
    // before `on_syscall` takes the kernel lock, so it aliases nothing.
    let r = unsafe { &mut *(regs as *mut super::UserRegs) };
    if crate::entry::on_light_syscall(r) {
        return regs as *const super::UserRegs;
    }
    let (number, args) = r.syscall_args();
    crate::entry::on_syscall(number, args)
}

/// One round of a busy wait: lets the CPU (or QEMU's `-icount` mode,
/// which runs the CPUs in turn) go on with another CPU's work: AArch64
/// `yield` (Rust's `spin_loop` is `isb` there, which does not end the
/// turn), `pause` elsewhere.
pub fn spin_wait() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `yield` is a hint with no effect on memory or registers.
    unsafe {
        core::arch::asm!("yield", options(nomem, nostack, preserves_flags))
    };
    #[cfg(not(target_arch = "aarch64"))]
    core::hint::spin_loop();
}

/// No I/O ports outside x86.
#[cfg(not(target_arch = "x86_64"))]
pub fn io_ports_ok(_base: u32, _count: u32) -> Result<(), keel_abi::Error> {
    Err(keel_abi::Error::NotSupported)
}

/// No I/O ports outside x86.
#[cfg(not(target_arch = "x86_64"))]
pub fn port_io(_port: u16, _width: u8, _value: Option<u32>) -> Option<u32> {
    None
}

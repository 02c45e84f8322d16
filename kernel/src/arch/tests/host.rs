//! The host stand-in for the architecture layer, selected by `arch/mod.rs`
//! when the kernel's host tests are built (`cargo test`; a test double,
//! compiled into no kernel). It implements the same contract, checked by the same signature
//! block, with the simplest faithful behaviour, so that portable code that
//! calls `crate::arch` (and `crate::mm::user` above it) runs in host tests.
//!
//! Invariants and conventions:
//! - "Physical" memory is host memory: a physical address is the host
//!   address of a page the host frame source (`mm::host`) handed out, and
//!   the direct map is the identity (`DIRECT_MAP_BASE` is 0).
//! - Machine state that a CPU would hold is per host thread (each test runs
//!   on its own): the console output ([`take_console`]), the TLS base
//!   register ([`tls_register`]), the live FP/SIMD state
//!   ([`fpu_register`]), the loaded user root ([`loaded_user_root`]), the
//!   kernel root and TLB-flush counts ([`tlb_flushes`]).
//! - There is no user mode: [`enter_user`] panics. [`exit`] and [`halt`]
//!   panic too, with the status in the message, so tests can
//!   `#[should_panic]` on them.
//! - [`user_copy`] copies plain memory: on the host, `mm::user` copies
//!   through the direct map only, never through a user address.

extern crate std;

use crate::mm::paging::{Attr, PageSize};
use crate::trap::{TrapCause, TrapRecord};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

/// Architecture name printed in the boot banner.
pub const NAME: &str = "host";

/// `e_machine` accepted for user programs: x86-64, matching [`PageFormat`].
pub const ELF_MACHINE: u16 = 62;

/// Host page tables use the x86-64 entry format.
pub type PageFormat = crate::mm::paging::X86;
/// As on x86-64: one root serves both halves.
pub const KERNEL_ROOT_ENTRIES: Range<usize> = 256..512;
/// As on x86-64.
pub const FLUSH_NEW_ENTRIES: bool = false;
/// The direct map is the identity: a physical address is a host address.
pub const DIRECT_MAP_BASE: usize = 0;

/// A kernel root table: a page of its own, empty (nothing of the kernel is
/// mapped on the host).
#[repr(C, align(4096))]
struct RootTable([u64; 512]);

std::thread_local! {
    static CONSOLE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static TLS: Cell<usize> = const { Cell::new(0) };
    static FPU: Cell<u64> = const { Cell::new(0) };
    static USER_ROOT: Cell<Option<(u64, u16)>> = const { Cell::new(None) };
    // Leaked: one page per thread that asks for it.
    static KERNEL_ROOT: Cell<u64> =
        Cell::new(Box::leak(Box::new(RootTable([0; 512]))) as *mut RootTable as u64);
    static FLUSHES: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The physical (host) address of `p`: itself.
pub const fn phys_to_virt(p: u64) -> usize {
    p as usize
}

/// Appends `bytes` to this thread's console buffer.
pub fn console_write(bytes: &[u8]) {
    CONSOLE.with(|c| c.borrow_mut().extend_from_slice(bytes));
}

/// Takes everything written to this thread's console so far.
pub fn take_console() -> Vec<u8> {
    CONSOLE.with(|c| core::mem::take(&mut *c.borrow_mut()))
}

/// Panics with `status`: a test ends where the kernel would power off.
pub fn exit(status: i32) -> ! {
    panic!("arch::exit({status})")
}

/// Panics: a test ends where the CPU would stop.
pub fn halt() -> ! {
    panic!("arch::halt()")
}

/// Advances by one on every read (shared by all threads), so it is
/// monotonic and strictly increasing.
pub fn cycle_counter() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed) + 1
}

/// A clock of 1 GHz: nanoseconds since the first read, from the host.
pub fn clock_ticks() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// The host clock's rate: 1 GHz.
pub fn clock_hz(_info: &crate::bootinfo::BootInfo<'_>) -> Option<u64> {
    Some(1_000_000_000)
}

/// Nothing to set up on the host.
pub fn irq_init(_info: &crate::bootinfo::BootInfo<'_>) -> Result<(), &'static str> {
    Ok(())
}

std::thread_local! {
    /// The deadline the last [`timer_arm`] on this test thread set.
    pub static TIMER: core::cell::Cell<Option<u64>> = const { core::cell::Cell::new(None) };
}

/// Records the deadline, for tests to read from [`TIMER`].
pub fn timer_arm(deadline: Option<u64>) {
    TIMER.with(|t| t.set(deadline));
}

std::thread_local! {
    /// Lines unmasked by [`irq_mask`] on this test thread (bit per line).
    pub static UNMASKED: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Lines 1–63 exist on the host stand-in; 0 is the kernel's.
pub fn irq_line_ok(line: u32) -> bool {
    (1..64).contains(&line)
}

/// Records the line's mask in [`UNMASKED`].
pub fn irq_mask(line: u32, masked: bool) {
    let bit = 1u64.checked_shl(line).unwrap_or(0);
    UNMASKED.with(|u| {
        u.set(if masked {
            u.get() & !bit
        } else {
            u.get() | bit
        })
    });
}

/// A 16550 at port 0x3f8, as on x86.
pub fn console_uart() -> (usize, u64) {
    (keel_abi::boot::CONSOLE_NS16550_PORT, 0x3f8)
}

/// No I/O ports on the host stand-in.
pub fn io_ports_ok(_base: u32, _count: u32) -> Result<(), keel_abi::Error> {
    Err(keel_abi::Error::NotSupported)
}

/// No I/O ports.
pub fn port_io(_port: u16, _width: u8, _value: Option<u32>) -> Option<u32> {
    None
}

std::thread_local! {
    /// The CPU index this test thread plays ([`cpu_index`]), set by tests.
    pub static CPU: Cell<usize> = const { Cell::new(0) };
    /// IPIs sent on this test thread, by target CPU (bit per CPU).
    pub static IPIS: Cell<u64> = const { Cell::new(0) };
}

/// The CPU this test thread plays ([`CPU`]).
pub fn cpu_index() -> usize {
    CPU.with(Cell::get)
}

/// The hardware id of CPU `n` is `n` on the host.
pub fn cpu_hw_id() -> u64 {
    cpu_index() as u64
}

/// The host has no other CPUs to start.
pub fn cpu_start(
    _info: &crate::bootinfo::BootInfo<'_>,
    _index: usize,
    _hw_id: u64,
) -> Result<(), &'static str> {
    Err("no CPUs to start on the host")
}

/// A spin-loop hint.
pub fn spin_wait() {
    core::hint::spin_loop();
}

/// Records the IPI in [`IPIS`].
pub fn send_ipi(index: usize) {
    IPIS.with(|i| i.set(i.get() | 1u64.checked_shl(index as u32).unwrap_or(0)));
}

/// Panics: a test ends where the CPU would wait for an interrupt.
pub fn idle() -> ! {
    panic!("arch::idle()")
}

/// Records a breakpoint trap at [`breakpoint_site`] and returns, as the
/// trap handler does on the machine.
pub fn breakpoint() {
    crate::trap::record(TrapRecord {
        cause: TrapCause::Breakpoint,
        pc: breakpoint_site(),
    });
}

/// Where [`breakpoint`] "traps": its own address.
pub fn breakpoint_site() -> usize {
    breakpoint as fn() as usize
}

/// Reads the byte at `addr` if it lies in a frame the host frame source
/// handed out (and is not yet freed); anything else is recorded and
/// returned as a read page fault.
pub fn probe_read(addr: usize) -> Result<u8, TrapRecord> {
    let page = (addr & !0xfff) as u64;
    if crate::mm::frame_refs(page) > 0 {
        // SAFETY: `page` is a live 4 KiB host allocation of the frame
        // source (it has references), and `addr` lies inside it.
        return Ok(unsafe { (addr as *const u8).read_volatile() });
    }
    let rec = TrapRecord {
        cause: TrapCause::PageFault {
            addr,
            write: false,
            exec: false,
        },
        pc: probe_read as fn(usize) -> Result<u8, TrapRecord> as usize,
    };
    crate::trap::record(rec);
    Err(rec)
}

/// Prints nothing: host tests get backtraces from the host's panic.
pub fn print_backtrace() {}

/// There are no kernel stack guard pages on the host.
pub fn in_stack_guard(_addr: usize) -> bool {
    false
}

/// As on x86-64 without 1 GiB pages.
pub fn max_page_size() -> PageSize {
    PageSize::Size2M
}

/// There is no kernel image to map on the host.
pub fn kernel_image_layout() -> arrayvec::ArrayVec<(Range<usize>, Attr), 8> {
    arrayvec::ArrayVec::new()
}

/// The identity, like [`phys_to_virt`].
pub fn kernel_virt_to_phys(va: usize) -> u64 {
    va as u64
}

/// No devices.
pub fn device_windows() -> &'static [(u64, u64)] {
    &[]
}

/// This thread's kernel root: an empty root table of its own until
/// [`load_kernel_root`] sets another.
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.with(Cell::get)
}

/// Makes `root` this thread's kernel root.
///
/// # Safety
/// None on the host (`unsafe` as on the machine); `root` must be a table
/// for code that walks the kernel root afterwards.
pub unsafe fn load_kernel_root(root: u64) {
    KERNEL_ROOT.with(|r| r.set(root));
}

/// Records `(root, asid)` as this thread's loaded user tree (`flush` is
/// counted as a full flush).
///
/// # Safety
/// None on the host (`unsafe` as on the machine).
pub unsafe fn load_user_root(root: u64, asid: u16, flush: bool) {
    if flush {
        flush_all();
    }
    USER_ROOT.with(|r| r.set(Some((root, asid))));
}

/// Records that no user tree is loaded.
pub fn unload_user_root() {
    USER_ROOT.with(|r| r.set(None));
}

/// The user tree this thread loaded last, with its address-space id.
pub fn loaded_user_root() -> Option<(u64, u16)> {
    USER_ROOT.with(Cell::get)
}

/// A small number, so tests can exhaust the ids and see them recycled.
pub fn asid_count() -> usize {
    16
}

/// Counts a page flush (nothing is cached).
pub fn flush_page(_asid: u16, _va: usize) {
    FLUSHES.with(|f| f.set((f.get().0 + 1, f.get().1)));
}

/// Counts a full flush (nothing is cached).
pub fn flush_all() {
    FLUSHES.with(|f| f.set((f.get().0, f.get().1 + 1)));
}

/// `(page flushes, full flushes)` on this thread so far.
pub fn tlb_flushes() -> (u64, u64) {
    FLUSHES.with(Cell::get)
}

/// Copies `len` bytes from `src` to `dst` as plain memory; never fails.
///
/// # Safety
/// Both sides are host memory valid for `len` bytes (`dst` for writing)
/// and do not overlap: on the host the "user" side is a direct-map (host)
/// address, never a user address.
pub unsafe fn user_copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), usize> {
    // SAFETY: the caller's guarantee.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, len) };
    Ok(())
}

/// A thread's saved user registers: the PC and SP, the system-call number,
/// its six arguments and result, and the TLS base.
#[repr(C)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    /// Where the thread resumes.
    pub pc: usize,
    /// The user stack pointer.
    pub sp: usize,
    /// The system-call number, as the thread left it.
    pub number: usize,
    /// The six system-call arguments; `args[0]` is also the first argument
    /// a new thread starts with.
    pub args: [usize; 6],
    /// The result the kernel set last ([`UserRegs::set_result`]).
    pub result: isize,
    /// The TLS base ([`UserRegs::set_tls`]).
    pub tls: usize,
}

impl UserRegs {
    /// Registers to start at `entry` with stack `stack` and `arg` as the
    /// first argument.
    pub fn new(entry: usize, stack: usize, arg: usize) -> UserRegs {
        let mut args = [0; 6];
        args[0] = arg;
        UserRegs {
            pc: entry,
            sp: stack,
            args,
            ..UserRegs::default()
        }
    }

    /// Registers as a thread leaves them when it makes system call
    /// `number` with `args`.
    pub fn with_syscall(number: usize, args: [usize; 6]) -> UserRegs {
        UserRegs {
            number,
            args,
            ..UserRegs::default()
        }
    }

    /// The system-call number and arguments.
    pub fn syscall_args(&self) -> (usize, [usize; 6]) {
        (self.number, self.args)
    }

    /// Sets the system call's result.
    pub fn set_result(&mut self, value: isize) {
        self.result = value;
    }

    /// Delivers a message: `info` as the result, the badge and the words
    /// in arguments 1–5.
    pub fn set_message(&mut self, info: usize, badge: usize, words: [usize; 4]) {
        self.result = info as isize;
        let [w0, w1, w2, w3] = words;
        self.args[1..6].copy_from_slice(&[badge, w0, w1, w2, w3]);
    }

    /// The result set last.
    pub fn result(&self) -> isize {
        self.result
    }

    /// The user program counter.
    pub fn pc(&self) -> usize {
        self.pc
    }

    /// Sets the TLS base the thread starts with.
    pub fn set_tls(&mut self, value: usize) {
        self.tls = value;
    }
}

/// Saved FP/SIMD state: the value of this thread's stand-in FP register
/// ([`fpu_register`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FpuState(pub u64);

impl FpuState {
    /// Saves the live FP register into `self`.
    pub fn save(&mut self) {
        self.0 = fpu_register();
    }

    /// Makes `self` the live FP register.
    pub fn restore(&self) {
        set_fpu_register(self.0);
    }
}

/// This thread's stand-in FP/SIMD register, which user code would change.
pub fn fpu_register() -> u64 {
    FPU.with(Cell::get)
}

/// Sets the stand-in FP/SIMD register, as running user code would.
pub fn set_fpu_register(value: u64) {
    FPU.with(|f| f.set(value));
}

/// Reads the TLS base register (which user code may have changed).
pub fn save_tls(_current: usize) -> usize {
    tls_register()
}

/// Sets the TLS base register.
pub fn load_tls(value: usize) {
    TLS.with(|t| t.set(value));
}

/// This thread's TLS base register.
pub fn tls_register() -> usize {
    TLS.with(Cell::get)
}

/// There is no user mode on the host.
///
/// # Safety
/// None on the host (`unsafe` as on the machine); it always panics.
pub unsafe fn enter_user(_regs: *const UserRegs) -> ! {
    panic!("arch::enter_user: no user mode on the host")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_output_is_captured_per_thread() {
        take_console();
        crate::kprint!("a{}", 1);
        console_write(b"b");
        assert_eq!(take_console(), b"a1b");
        assert!(take_console().is_empty());
    }

    #[test]
    #[should_panic(expected = "arch::exit(3)")]
    fn exit_panics_with_the_status() {
        exit(3)
    }

    #[test]
    fn user_registers_carry_syscalls_and_results() {
        let r = UserRegs::new(0x1000, 0x8000, 7);
        assert_eq!((r.pc(), r.sp, r.syscall_args().1[0]), (0x1000, 0x8000, 7));
        let mut r = UserRegs::with_syscall(5, [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.syscall_args(), (5, [1, 2, 3, 4, 5, 6]));
        r.set_result(-2);
        assert_eq!(r.result(), -2);
        r.set_tls(9);
        assert_eq!(r.tls, 9);
    }

    #[test]
    fn fpu_and_tls_registers_switch() {
        set_fpu_register(1);
        let mut a = FpuState::default();
        a.save();
        set_fpu_register(2);
        a.restore();
        assert_eq!(fpu_register(), 1);
        load_tls(0x77);
        assert_eq!(save_tls(0), 0x77);
    }

    #[test]
    fn probes_and_breakpoints_are_recorded() {
        let (_, before) = crate::trap::last();
        breakpoint();
        assert!(crate::trap::last().1 > before);
        let r = probe_read(0x10);
        assert!(matches!(
            r,
            Err(TrapRecord {
                cause: TrapCause::PageFault { addr: 0x10, .. },
                ..
            })
        ));
        let pa = crate::mm::alloc_frames(0, crate::mm::frame::ZoneRequest::Any).unwrap();
        assert_eq!(probe_read(phys_to_virt(pa) + 5), Ok(0x5a));
        assert_eq!(crate::mm::free_frames(pa, 0), Ok(()));
        assert!(probe_read(phys_to_virt(pa)).is_err(), "freed");
    }

    #[test]
    fn cycle_counter_advances() {
        assert!(cycle_counter() < cycle_counter());
    }
}

//! What the kernel hands the root task: where its image and stack are, and
//! the read-only information page whose address arrives in the first
//! argument register of its first thread.
//!
//! Invariants: the layout of [`RootInfo`] is stable ABI (`docs/abi.md`);
//! new fields are only ever appended, with `version` raised.

/// Value of [`RootInfo::magic`] ("KEELROOT").
pub const ROOT_INFO_MAGIC: u64 = 0x544f_4f52_4c45_454b;
/// Current [`RootInfo::version`].
pub const ROOT_INFO_VERSION: u64 = 2;
/// Where the information page is mapped (read-only) in the root task.
pub const ROOT_INFO_ADDR: usize = 0x20_0000;
/// Lowest address a user ELF image may load at (below it: the null page
/// and the information page).
pub const USER_IMAGE_MIN: usize = 0x40_0000;
/// End (exclusive) of user space: user addresses are `[0x1000, USER_END)`.
/// 256 GiB on every architecture: the lower half of RISC-V's Sv39, the
/// smallest of the paging modes Keel runs on.
pub const USER_END: usize = 1 << 38;
/// Top of the root task's first stack; it grows down, demand-zero, for
/// [`ROOT_STACK_PAGES`] pages.
pub const ROOT_STACK_TOP: usize = 0x3f_ffff_0000;
pub const ROOT_STACK_PAGES: usize = 256;

/// The root task's information page. Capability fields are raw tokens in
/// the root task's capability space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootInfo {
    pub magic: u64,
    pub version: u64,
    /// Memory pool: all memory the kernel did not keep.
    pub pool: u64,
    /// Read-only memory object holding the boot image (the root task's
    /// ELF file).
    pub boot_image: u64,
    /// The root task's own address space, capability space and thread.
    pub aspace: u64,
    pub cspace: u64,
    pub thread: u64,
    /// Size of the boot image in bytes.
    pub boot_image_bytes: u64,
    /// Pages in the pool.
    pub pool_pages: u64,
    pub cpu_count: u64,
    /// Bit 0 ([`ROOT_FLAG_TEST`]): the kernel is a test build (the root
    /// task runs the system tests and its exit status is the run's
    /// verdict). Bit 1 ([`ROOT_FLAG_BENCH`]): a benchmark build.
    pub flags: u64,
    /// Version 2: the device-control capability (claims interrupt lines,
    /// I/O ports and device memory).
    pub device_control: u64,
    /// The console UART, for a user-space driver: its kind
    /// (`CONSOLE_*`), register base (I/O port or physical address) and
    /// receive interrupt line ([`NO_LINE`] if the firmware names none).
    pub console_kind: u64,
    pub console_base: u64,
    pub console_irq: u64,
}

/// [`RootInfo::console_kind`]: a 16550 on x86 I/O ports.
pub const CONSOLE_NS16550_PORT: usize = 1;
/// A memory-mapped 16550 (byte registers, stride 1).
pub const CONSOLE_NS16550_MMIO: usize = 2;
/// An Arm PL011.
pub const CONSOLE_PL011: usize = 3;
/// [`RootInfo::console_irq`]: no interrupt line.
pub const NO_LINE: u64 = u64::MAX;

/// [`RootInfo::flags`]: test build.
pub const ROOT_FLAG_TEST: u64 = 1;
/// [`RootInfo::flags`]: benchmark build (the root task runs the user-mode
/// benchmarks).
pub const ROOT_FLAG_BENCH: u64 = 2;

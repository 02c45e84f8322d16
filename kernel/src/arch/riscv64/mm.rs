//! RISC-V memory-management hardware: Sv48 or Sv39 `satp` (whichever the
//! boot code enabled) with ASIDs, `sfence.vma`,
//! the kernel image's per-section layout, stack guard pages, and the
//! user-copy routine that opens user memory with `sstatus.SUM`.
//!
//! Invariants:
//! - The kernel's own mappings are global (`G`) and live under ASID 0; user
//!   trees share root entries [`KERNEL_ROOT_ENTRIES`] with the kernel root,
//!   so the kernel stays mapped whichever tree `satp` names.
//! - [`init`] (boot, before any other Rust code) replaces the boot
//!   gigapage over the image with 4 KiB pages per section from
//!   [`kernel_image_layout`]: text RX, read-only data R, data and stacks RW,
//!   the stack guard pages unmapped. Those tables come from a static pool
//!   in `.bss` and are never freed.
//! - Every CPU has a kernel stack and, above it, an emergency stack, each
//!   with an unmapped guard page below it ([`cpu_stacks`]). The boot
//!   CPU's are in the layout; the other CPUs' ([`AP_STACKS`]) are not,
//!   and [`map_cpu_stacks`] maps each CPU's into the kernel tree when it
//!   is started.
//! - `sstatus.SUM` is set only inside `keel_user_copy`, whose every load and
//!   store is in the exception-fixup table; the trap entry clears it for the
//!   handler.

use super::{SIFIVE_TEST_PHYS, UART_PHYS};
use crate::bootinfo::MAX_CPUS;
use crate::mm::KernelTables;
use crate::mm::paging::{
    Attr, ENTRIES, MapError, PageSize, PageTable, PteFormat, RiscV, TableMemory,
};
use arrayvec::ArrayVec;
use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The page-table entry format: Sv48, or Sv39 ([`RiscV::use_sv39`]).
pub type PageFormat = RiscV;

/// Root entries for the upper half (the direct map and the kernel image),
/// shared into every user tree.
pub const KERNEL_ROOT_ENTRIES: Range<usize> = 256..512;

/// Whether a page that becomes mapped must be flushed from the TLB too.
/// The MMU may cache invalid entries (privileged spec §4.2.1), so a new
/// mapping needs an `sfence.vma` as well.
pub const FLUSH_NEW_ENTRIES: bool = true;

/// `sstatus.SUM`: S-mode may access U-mode pages.
pub(super) const SSTATUS_SUM: u64 = 1 << 18;

const SATP_MODE_SHIFT: u32 = 60;
/// `satp.MODE` of an Sv39 tree (Sv48: 9).
const SATP_MODE_SV39: u64 = 8;
const SATP_ASID_SHIFT: u32 = 44;
const SATP_ASID_MASK: u64 = 0xffff;
const SATP_PPN_MASK: u64 = (1 << 44) - 1;
const PAGE: usize = 4096;

/// Physical address of the kernel's root table (what [`kernel_root`]
/// returns; `satp` names a user tree while one is loaded).
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);
/// Writable `satp.ASID` bits, probed at boot.
static ASID_BITS: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    // linker.ld; every one is 4 KiB-aligned.
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __boot_stack_bottom: u8;
    static __boot_stack_top: u8;
    static __emergency_stack_bottom: u8;
    static __emergency_stack_top: u8;
}

/// The kernel stack of every CPU but the boot CPU (whose stack is the
/// 64 KiB boot stack, linker.ld).
const AP_STACK_SIZE: usize = 32 * 1024;
/// The emergency stack of every CPU but the boot CPU (the same size as the
/// boot CPU's, linker.ld).
const AP_EMERGENCY_STACK_SIZE: usize = 16 * 1024;
/// One such CPU's stacks: guard page, kernel stack, guard page, emergency
/// stack.
const AP_SLOT: usize = PAGE + AP_STACK_SIZE + PAGE + AP_EMERGENCY_STACK_SIZE;

/// The stacks of CPUs `1..MAX_CPUS`, one [`AP_SLOT`] each, in `.bss`. They
/// are left out of [`kernel_image_layout`] (which has no room for their
/// guard pages) and mapped, without the guard pages, by
/// [`map_cpu_stacks`] when the CPU is started.
#[repr(C, align(4096))]
struct ApStacks(core::cell::UnsafeCell<[[u8; AP_SLOT]; MAX_CPUS - 1]>);

// SAFETY: the kernel only takes the address of `AP_STACKS`; each slot's
// memory is used only as stacks by the one CPU it belongs to.
unsafe impl Sync for ApStacks {}

static AP_STACKS: ApStacks = ApStacks(core::cell::UnsafeCell::new([[0; AP_SLOT]; MAX_CPUS - 1]));

/// The range [`AP_STACKS`] occupies.
fn ap_stacks() -> Range<usize> {
    let start = AP_STACKS.0.get() as usize;
    start..start + (MAX_CPUS - 1) * AP_SLOT
}

/// CPU `index`'s (below `MAX_CPUS`) kernel stack and emergency stack. Each
/// has an unmapped guard page right below it, and the emergency stack lies
/// above the kernel stack (the trap entry relies on both, see `traps`).
pub(super) fn cpu_stacks(index: usize) -> [Range<usize>; 2] {
    if index == 0 {
        return [
            &raw const __boot_stack_bottom as usize..&raw const __boot_stack_top as usize,
            &raw const __emergency_stack_bottom as usize..&raw const __emergency_stack_top as usize,
        ];
    }
    let kernel = ap_stacks().start + (index - 1) * AP_SLOT + PAGE;
    let emergency = kernel + AP_STACK_SIZE + PAGE;
    [
        kernel..kernel + AP_STACK_SIZE,
        emergency..emergency + AP_EMERGENCY_STACK_SIZE,
    ]
}

/// Maps CPU `index`'s stacks (not their guard pages) into the kernel tree,
/// which every user tree shares. Called on the boot CPU by `cpu_start`
/// only, before that CPU runs; the boot CPU's stacks are in the layout.
pub(super) fn map_cpu_stacks(index: usize) -> Result<(), MapError> {
    // SAFETY: the kernel tree's tables are frames of the global allocator
    // (`mm::kmap`), which `KernelTables` reaches through the direct map;
    // only the boot CPU changes the kernel tree's image part, here, while
    // no other CPU touches these pages.
    let mut tree = unsafe { PageTable::<RiscV>::from_root(kernel_root()) };
    for stack in cpu_stacks(index) {
        for va in stack.step_by(PAGE) {
            let pa = kernel_virt_to_phys(va);
            let rw = Attr::WRITE | Attr::GLOBAL;
            match tree.map(&mut KernelTables, va, pa, PageSize::Size4K, rw) {
                // A CPU whose start failed may be started again.
                Ok(()) | Err(MapError::AlreadyMapped) => {}
                Err(e) => return Err(e),
            }
        }
    }
    flush_all();
    Ok(())
}

/// Whether the kernel may read `addr`: it lies in the image, not in a
/// guard page, and among the APs' stacks only in this CPU's own.
pub(super) fn image_readable(addr: usize) -> bool {
    let image = &raw const super::__kernel_start as usize..&raw const super::__kernel_end as usize;
    let own = cpu_stacks(super::cpu_index());
    image.contains(&addr)
        && !in_stack_guard(addr)
        && (!ap_stacks().contains(&addr) || own.iter().any(|s| s.contains(&addr)))
}

/// The largest leaf: Sv48 and Sv39 have gigapages.
pub fn max_page_size() -> PageSize {
    PageSize::Size1G
}

/// The kernel image's sections (virtual, 4 KiB-aligned) with their
/// attributes, without the stack guard pages and the APs' stacks.
pub fn kernel_image_layout() -> ArrayVec<(Range<usize>, Attr), 8> {
    let text = &raw const __text_start as usize..&raw const __text_end as usize;
    let rodata = &raw const __rodata_start as usize..&raw const __rodata_end as usize;
    let [boot, emergency] = cpu_stacks(0);
    let aps = ap_stacks();
    let end = &raw const super::__kernel_end as usize;
    let rw = Attr::WRITE | Attr::GLOBAL;
    let mut out = ArrayVec::new();
    for section in [
        (text, Attr::EXEC | Attr::GLOBAL),
        (rodata, Attr::GLOBAL),
        // .data and .bss around the APs' stacks (a .bss static) and up to
        // the boot stack's guard page, the boot stack up to the emergency
        // stack's guard page, and the emergency stack to the end.
        (&raw const __data_start as usize..aps.start, rw),
        (aps.end..boot.start - PAGE, rw),
        (boot.start..emergency.start - PAGE, rw),
        (emergency.start..end, rw),
    ] {
        if !section.0.is_empty() {
            out.push(section);
        }
    }
    out
}

/// Physical address of `va` in the kernel image.
pub fn kernel_virt_to_phys(va: usize) -> u64 {
    (va as u64).wrapping_sub(super::KERNEL_VIRT_OFFSET)
}

/// Device registers the kernel reaches through the direct map: the UART
/// and the `sifive_test` exit device.
pub fn device_windows() -> &'static [(u64, u64)] {
    &[(UART_PHYS, 0x1000), (SIFIVE_TEST_PHYS, 0x1000)]
}

/// Whether `addr` lies in the guard page under a CPU's kernel or
/// emergency stack.
pub fn in_stack_guard(addr: usize) -> bool {
    (0..MAX_CPUS)
        .flat_map(cpu_stacks)
        .any(|stack| (stack.start - PAGE..stack.start).contains(&addr))
}

fn satp_read() -> u64 {
    riscv::register::satp::read().bits() as u64
}

/// The `satp` value for the tree `root` under ASID `asid`: Sv39 (mode 8)
/// for three levels, Sv48 (mode 9) for four.
fn satp(root: u64, asid: u16) -> u64 {
    (RiscV::levels() as u64 + 5) << SATP_MODE_SHIFT
        | ((u64::from(asid) & SATP_ASID_MASK) << SATP_ASID_SHIFT)
        | ((root >> 12) & SATP_PPN_MASK)
}

/// Physical address of the kernel's root page table.
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
}

/// Makes `root` the kernel's tree (ASID 0) and flushes the whole TLB.
///
/// # Safety
/// `root` must be a valid root (of the paging mode in use) that maps the
/// kernel image, the kernel stacks and the direct map as the current tree
/// does.
pub unsafe fn load_kernel_root(root: u64) {
    KERNEL_ROOT.store(root, Ordering::Relaxed);
    // SAFETY: the caller's guarantee.
    unsafe { use_kernel_root() }
}

/// Points this CPU's `satp` at the kernel tree (ASID 0) and flushes its
/// whole TLB, global entries included.
///
/// # Safety
/// The kernel tree must map the kernel image, this CPU's stacks and the
/// direct map as the current tree does.
pub(super) unsafe fn use_kernel_root() {
    let satp = satp(kernel_root(), 0);
    // SAFETY: by the caller's guarantee the kernel stays mapped; the fences
    // order earlier page-table stores before the switch and drop every
    // stale translation after it.
    unsafe { asm!("sfence.vma", "csrw satp, {}", "sfence.vma", in(reg) satp, options(nostack)) };
}

/// Makes the user tree `root` current under ASID `asid`; with `flush`,
/// drops the TLB entries tagged `asid` first.
///
/// # Safety
/// `root` must be a valid root (of the mode in use) whose entries [`KERNEL_ROOT_ENTRIES`]
/// are those of the kernel root, `asid` below [`asid_count`], and without
/// `flush` the TLB entries tagged `asid` must belong to this tree.
pub unsafe fn load_user_root(root: u64, asid: u16, flush: bool) {
    let satp = satp(root, asid);
    // SAFETY: the kernel half is shared, so the kernel keeps running; the
    // fence after the switch removes stale entries of this ASID (global
    // kernel entries are kept).
    unsafe {
        if flush {
            asm!("csrw satp, {}", "sfence.vma zero, {}", in(reg) satp, in(reg) asid as u64,
                options(nostack));
        } else {
            asm!("csrw satp, {}", in(reg) satp, options(nostack));
        }
    }
}

/// Returns to the kernel tree, which maps nothing in the lower half. The
/// non-global entries of ASID 0 are dropped, since a user tree may have
/// run under ASID 0 when the CPU has no others.
pub fn unload_user_root() {
    let satp = satp(kernel_root(), 0);
    // SAFETY: the kernel root maps the kernel (it is what boot installed or
    // `load_kernel_root` was given); a register holding 0 as `rs2` names
    // ASID 0, which leaves the global kernel entries alone.
    unsafe {
        asm!("csrw satp, {}", "sfence.vma zero, {}", in(reg) satp, in(reg) 0u64, options(nostack))
    };
}

/// Usable ASIDs: `2^ASIDLEN`, 1 when `satp.ASID` is not writable.
pub fn asid_count() -> usize {
    1 << ASID_BITS.load(Ordering::Relaxed)
}

/// Invalidates the TLB entry for user page `va` of address space `asid`.
pub fn flush_page(asid: u16, va: usize) {
    // SAFETY: a TLB invalidation only affects translation caching.
    unsafe { asm!("sfence.vma {}, {}", in(reg) va, in(reg) asid as u64, options(nostack)) };
}

/// Invalidates the whole TLB of this CPU.
pub fn flush_all() {
    // SAFETY: as for `flush_page`.
    unsafe { asm!("sfence.vma zero, zero", options(nostack)) };
}

core::arch::global_asm!(
    r#"
    .section .text.keel_user_copy, "ax"
    .balign 4
    .globl keel_user_copy
    # a0 = dst, a1 = src, a2 = len. Returns arch::CopyResult in a0/a1:
    # (0, 0), or on a fault (1, faulting address) — the trap handler puts
    # the address in a0 (and scause in a1) and resumes at 9f. Words while
    # both pointers are 8-byte aligned, then bytes.
keel_user_copy:
    li      t0, {sum}
    csrs    sstatus, t0
    or      t1, a0, a1
    andi    t1, t1, 7
    bnez    t1, 3f
    li      t2, 8
1:  bltu    a2, t2, 3f
10: ld      t1, 0(a1)
11: sd      t1, 0(a0)
    addi    a0, a0, 8
    addi    a1, a1, 8
    addi    a2, a2, -8
    j       1b
3:  beqz    a2, 4f
12: lbu     t1, 0(a1)
13: sb      t1, 0(a0)
    addi    a0, a0, 1
    addi    a1, a1, 1
    addi    a2, a2, -1
    j       3b
4:  csrc    sstatus, t0
    li      a0, 0
    li      a1, 0
    ret
9:  li      t0, {sum}
    csrc    sstatus, t0
    mv      a1, a0
    li      a0, 1
    ret

    .pushsection __ex_table, "a"
    .balign 8
    .dword 10b, 9b
    .dword 11b, 9b
    .dword 12b, 9b
    .dword 13b, 9b
    .popsection
    "#,
    sum = const SSTATUS_SUM,
);

/// Tables for the per-section kernel mapping, before the frame allocator
/// exists. Enough for the root, one L1, one L2 and L3 tables for a 10 MiB
/// image.
const BOOT_POOL_TABLES: usize = 8;

#[repr(C, align(4096))]
struct BootPool(core::cell::UnsafeCell<[[u64; ENTRIES]; BOOT_POOL_TABLES]>);

// SAFETY: only `init` allocates from the pool, once, on the boot CPU before
// any other CPU runs; afterwards the tables are reached only by physical
// address through page-table code.
unsafe impl Sync for BootPool {}

static BOOT_POOL: BootPool = BootPool(core::cell::UnsafeCell::new(
    [[0; ENTRIES]; BOOT_POOL_TABLES],
));

/// A bump allocator over [`BOOT_POOL`]; tables are never freed.
struct BootTables {
    used: usize,
}

// SAFETY: pool tables are zero (.bss, never handed out twice) and reached
// through the direct map, which covers the kernel image read-write; the boot
// tables of `_start` (the root that `init` reads) are in the image too.
unsafe impl TableMemory for BootTables {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.used == BOOT_POOL_TABLES {
            return None;
        }
        let pool = BOOT_POOL.0.get().cast::<[u64; ENTRIES]>();
        let table = pool.wrapping_add(self.used);
        self.used += 1;
        Some(kernel_virt_to_phys(table as usize))
    }

    fn free_table(&mut self, _pa: u64) {}

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        super::phys_to_virt(pa) as *mut _
    }
}

/// Boot-time set-up, before [`crate::boot::kernel_main`]: takes the
/// paging mode the boot code enabled, probes the ASID width and maps the
/// kernel image per section. A failure is a boot error.
pub(super) fn init() {
    if satp_read() >> SATP_MODE_SHIFT == SATP_MODE_SV39 {
        RiscV::use_sv39();
    }
    // SAFETY: the kernel mappings are global, so they stay valid under any
    // ASID; the original `satp` is written back at once. The writable ASID
    // bits read back as ones (privileged spec, `satp`).
    let bits = unsafe {
        let satp = satp_read();
        asm!("csrw satp, {}", in(reg) satp | (SATP_ASID_MASK << SATP_ASID_SHIFT), options(nostack));
        let probed = satp_read();
        asm!("csrw satp, {}", "sfence.vma", in(reg) satp, options(nostack));
        ((probed >> SATP_ASID_SHIFT) & SATP_ASID_MASK).count_ones()
    };
    ASID_BITS.store(bits, Ordering::Relaxed);
    match map_kernel_image() {
        // SAFETY: the new tree maps the whole image (minus the guard pages,
        // which nothing but an overflowing stack touches) at the same
        // addresses, and shares the boot tree's direct map.
        Ok(root) => unsafe { load_kernel_root(root) },
        Err(e) => {
            kprintln!("BOOT ERROR: cannot map the kernel image per section: {e:?}");
            super::exit(keel_abi::harness::EXIT_BOOT_ERROR)
        }
    }
}

/// A new kernel tree: the boot tree's direct map (4 GiB in gigapages) and
/// the image page by page from the layout.
fn map_kernel_image() -> Result<u64, MapError> {
    let mut mem = BootTables { used: 0 };
    let mut tree = PageTable::<RiscV>::new(&mut mem)?;
    let direct = Attr::WRITE | Attr::GLOBAL;
    for pa in (0..crate::mm::DIRECT_MAP_BOOT_LIMIT).step_by(1 << 30) {
        tree.map(
            &mut mem,
            super::phys_to_virt(pa),
            pa,
            PageSize::Size1G,
            direct,
        )?;
    }
    for (range, attr) in kernel_image_layout() {
        for va in range.step_by(PAGE) {
            let pa = kernel_virt_to_phys(va);
            tree.map(&mut mem, va, pa, PageSize::Size4K, attr)?;
        }
    }
    Ok(tree.root())
}

/// In-kernel tests and benchmarks (compiled only in those builds).
#[cfg(any(feature = "ktest", feature = "bench"))]
mod checks {
    use super::*;
    #[cfg(feature = "ktest")]
    use crate::arch::tests::with_user_page;
    #[cfg(feature = "bench")]
    use crate::mm::alloc_frames;
    #[cfg(feature = "bench")]
    use crate::mm::frame::ZoneRequest;
    #[cfg(feature = "ktest")]
    use crate::trap::TrapCause;

    /// A user address for the tests: page-aligned, in the lower half.
    pub const USER_VA: usize = 0x40_0000;

    #[cfg(feature = "ktest")]
    fn fault(addr: usize, write: bool) -> TrapCause {
        TrapCause::PageFault {
            addr,
            write,
            exec: false,
        }
    }

    crate::ktest!(
        fn the_paging_mode_is_sv48_or_the_sv39_fallback() {
            // The `sv39` build skips Sv48 (QEMU 7.2 cannot turn it off).
            let (mode, levels) = if cfg!(feature = "sv39") {
                (8, 3)
            } else {
                (9, 4)
            };
            kassert_eq!(satp_read() >> SATP_MODE_SHIFT, mode);
            kassert_eq!(RiscV::levels(), levels);
            // The kernel half, the direct map included, is in root entries
            // 256.. in both: a direct-map address translates in the kernel
            // tree, and Sv39's user half ends at USER_END.
            // SAFETY: the kernel root's tables are allocator frames,
            // reachable through the direct map; only read here.
            let kernel = unsafe { PageTable::<PageFormat>::from_root(kernel_root()) };
            let pa = kernel_virt_to_phys(&raw const __data_start as usize);
            let m = kernel.translate(&KernelTables, super::super::phys_to_virt(pa));
            kassert_eq!(m.map(|m| m.pa), Some(pa));
            kassert_eq!(keel_abi::boot::USER_END, 1 << 38, "Sv39's lower half");
            Ok(())
        }
    );

    crate::ktest!(
        fn every_started_cpu_has_guarded_kernel_and_emergency_stacks() {
            // The running (boot) stack's guard is checked on every
            // architecture (`arch::tests`); here both stacks of every CPU
            // that came up, in the order the trap entry relies on.
            // SAFETY: the kernel root's tables are allocator frames,
            // reachable through the direct map; only read here.
            let kernel = unsafe { PageTable::<PageFormat>::from_root(kernel_root()) };
            let aps = ap_stacks();
            let [boot, _] = cpu_stacks(0);
            kassert!(&raw const __data_start as usize <= aps.start && aps.end < boot.start);
            for cpu in 0..crate::smp::count() {
                let [stack, emergency] = cpu_stacks(cpu);
                kassert!(stack.end < emergency.start, "cpu {}", cpu);
                for s in [stack, emergency] {
                    let guard = s.start - PAGE;
                    kassert!(kernel.translate(&KernelTables, guard).is_none());
                    kassert!(kernel.translate(&KernelTables, s.start).is_some());
                    kassert!(kernel.translate(&KernelTables, s.end - PAGE).is_some());
                    for addr in [guard, s.start - 1] {
                        kassert_eq!(probe_cause(addr), Some(fault(addr, false)));
                        kassert!(in_stack_guard(addr));
                    }
                    kassert!(!in_stack_guard(guard - 1) && !in_stack_guard(s.start));
                }
            }
            // The current stack lies in the boot stack.
            let sp: usize;
            // SAFETY: reads the stack pointer only.
            unsafe { asm!("mv {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
            kassert!(boot.contains(&sp));
            Ok(())
        }
    );

    crate::ktest!(
        fn trap_with_sp_at_or_below_a_stack_bottom_runs_on_the_emergency_stack() {
            let [boot, emergency] = cpu_stacks(0);
            let (boot, frame_top) = (boot.start, emergency.end);
            let target = crate::trap::UNMAPPED_KERNEL_ADDR;
            // Near the bottom of the boot stack, and inside its guard page.
            for low_sp in [boot + 256, boot - 64] {
                // SAFETY: the last word of the emergency stack is unused
                // while no trap is being handled.
                unsafe { ((frame_top - 8) as *mut usize).write_volatile(0) };
                let scause: usize;
                // SAFETY: while `sp` is moved, the code between the labels
                // touches no stack and only the load at 1 traps; it is in
                // the fixup table, and the entry saves the frame on the
                // emergency stack (the boot stack below `low_sp` is not
                // written). `t0` holds the real `sp`; the handler restores
                // it and changes only a0..a2.
                unsafe {
                    asm!(
                        "mv t0, sp",
                        "mv sp, {low}",
                        "li a1, 0",
                        "1: lbu a0, 0(a0)",
                        "2: mv sp, t0",
                        ".pushsection __ex_table, \"a\"",
                        ".balign 8",
                        ".dword 1b, 2b",
                        ".popsection",
                        low = in(reg) low_sp,
                        inlateout("a0") target => _,
                        lateout("a1") scause,
                        lateout("a2") _,
                        out("t0") _,
                        clobber_abi("C"),
                    )
                };
                kassert!(scause != 0, "load at {:#x} did not fault", target);
                kassert_eq!(
                    crate::trap::last().0.map(|r| r.cause),
                    Some(fault(target, false))
                );
                // The frame's last word is `stval`.
                // SAFETY: as above.
                let stval = unsafe { ((frame_top - 8) as *const usize).read_volatile() };
                kassert_eq!(stval, target);
            }
            Ok(())
        }
    );

    #[cfg(feature = "ktest")]
    fn probe_cause(addr: usize) -> Option<TrapCause> {
        crate::arch::probe_read(addr).err().map(|r| r.cause)
    }

    #[cfg(feature = "ktest")]
    fn sum_is_clear() -> bool {
        let sstatus: u64;
        // SAFETY: reads `sstatus` only.
        unsafe { asm!("csrr {}, sstatus", out(reg) sstatus, options(nomem, nostack)) };
        sstatus & SSTATUS_SUM == 0
    }

    crate::ktest!(
        fn sum_is_set_only_inside_user_copy() {
            // User copies through the page tables are checked on every
            // architecture (`arch::tests`); here `sstatus.SUM`.
            with_user_page(USER_VA, 1, |_, _| {
                let mut back = [0u8; 16];
                kassert!(sum_is_clear());
                let r =
                    // SAFETY: a local array and a user address.
                    unsafe { crate::arch::user_copy(back.as_mut_ptr(), USER_VA as *const u8, 8) };
                kassert_eq!(r, Ok(()));
                kassert!(sum_is_clear());
                // A copy that faults half-way clears it too.
                let next = USER_VA + PAGE;
                // SAFETY: as above.
                let r = unsafe {
                    crate::arch::user_copy(back.as_mut_ptr(), (next - 8) as *const u8, 16)
                };
                kassert_eq!(r, Err(next));
                kassert!(sum_is_clear());
                // Outside `user_copy` the kernel cannot touch user pages.
                kassert_eq!(probe_cause(USER_VA), Some(fault(USER_VA, false)));
                Ok(())
            })
        }
    );

    crate::kbench!(
        fn map_unmap_user_page(iters: u64) {
            // One user tree for all batches; its intermediate tables stay
            // after the first map, so this measures map + unmap + flush.
            static TREE: spin::Once<Option<(u64, u64)>> = spin::Once::new();
            let setup = || {
                let tree = PageTable::<PageFormat>::new(&mut KernelTables).ok()?;
                Some((tree.root(), alloc_frames(0, ZoneRequest::Any)?))
            };
            let Some((root, frame)) = *TREE.call_once(setup) else {
                return;
            };
            let mut mem = KernelTables;
            // SAFETY: `root` is the bench's own tree, used by nothing else.
            let mut tree = unsafe { PageTable::<PageFormat>::from_root(root) };
            for _ in 0..iters {
                let _ = tree.map(
                    &mut mem,
                    USER_VA,
                    frame,
                    PageSize::Size4K,
                    Attr::USER | Attr::WRITE,
                );
                let _ = core::hint::black_box(tree.unmap(&mut mem, USER_VA));
                flush_page(1, USER_VA);
            }
        },
        iters = 200
    );
}

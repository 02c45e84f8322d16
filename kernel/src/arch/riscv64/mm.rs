//! RISC-V memory-management hardware: Sv48 `satp` with ASIDs, `sfence.vma`,
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
//! - `sstatus.SUM` is set only inside `keel_user_copy`, whose every load and
//!   store is in the exception-fixup table; the trap entry clears it for the
//!   handler.

use crate::mm::paging::{Attr, ENTRIES, MapError, PageSize, PageTable, RiscV, TableMemory};
use arrayvec::ArrayVec;
use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The page-table entry format: Sv48.
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

const SATP_MODE_SV48: u64 = 9 << 60;
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

/// Bottoms of the kernel stacks; each has a guard page below it.
fn stack_bottoms() -> [usize; 2] {
    [
        &raw const __boot_stack_bottom as usize,
        &raw const __emergency_stack_bottom as usize,
    ]
}

/// Tops of the kernel stacks, in the order of [`stack_bottoms`].
#[cfg(feature = "ktest")]
fn stack_tops() -> [usize; 2] {
    [
        &raw const __boot_stack_top as usize,
        &raw const __emergency_stack_top as usize,
    ]
}

/// The largest leaf: Sv48 has gigapages.
pub fn max_page_size() -> PageSize {
    PageSize::Size1G
}

/// The kernel image's sections (virtual, 4 KiB-aligned) with their
/// attributes, without the stack guard pages.
pub fn kernel_image_layout() -> ArrayVec<(Range<usize>, Attr), 8> {
    let text = &raw const __text_start as usize..&raw const __text_end as usize;
    let rodata = &raw const __rodata_start as usize..&raw const __rodata_end as usize;
    let [boot, emergency] = stack_bottoms();
    let end = &raw const super::__kernel_end as usize;
    let rw = Attr::WRITE | Attr::GLOBAL;
    let mut out = ArrayVec::new();
    for section in [
        (text, Attr::EXEC | Attr::GLOBAL),
        (rodata, Attr::GLOBAL),
        // .data and .bss up to the boot stack's guard page, the boot stack
        // (and what follows it) up to the emergency stack's guard page, and
        // the emergency stack to the end.
        (&raw const __data_start as usize..boot - PAGE, rw),
        (boot..emergency - PAGE, rw),
        (emergency..end, rw),
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
    &[
        (super::UART_PHYS, 0x1000),
        (super::SIFIVE_TEST_PHYS, 0x1000),
    ]
}

/// Whether `addr` lies in the guard page under the boot or the emergency
/// stack.
pub fn in_stack_guard(addr: usize) -> bool {
    stack_bottoms()
        .iter()
        .any(|&bottom| (bottom - PAGE..bottom).contains(&addr))
}

fn satp_read() -> u64 {
    let satp: u64;
    // SAFETY: reading `satp` has no side effects.
    unsafe { asm!("csrr {}, satp", out(reg) satp, options(nomem, nostack, preserves_flags)) };
    satp
}

/// Physical address of the kernel's root page table.
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
}

/// Makes `root` the kernel's tree (Sv48, ASID 0) and flushes the whole TLB.
///
/// # Safety
/// `root` must be a valid Sv48 root that maps the kernel image, the kernel
/// stacks and the direct map as the current tree does.
pub unsafe fn load_kernel_root(root: u64) {
    KERNEL_ROOT.store(root, Ordering::Relaxed);
    let satp = SATP_MODE_SV48 | ((root >> 12) & SATP_PPN_MASK);
    // SAFETY: by the caller's guarantee the kernel stays mapped; the fences
    // order earlier page-table stores before the switch and drop every
    // stale translation after it.
    unsafe { asm!("sfence.vma", "csrw satp, {}", "sfence.vma", in(reg) satp, options(nostack)) };
}

/// Makes the user tree `root` current under ASID `asid`; with `flush`,
/// drops the TLB entries tagged `asid` first.
///
/// # Safety
/// `root` must be a valid Sv48 root whose entries [`KERNEL_ROOT_ENTRIES`]
/// are those of the kernel root, `asid` below [`asid_count`], and without
/// `flush` the TLB entries tagged `asid` must belong to this tree.
pub unsafe fn load_user_root(root: u64, asid: u16, flush: bool) {
    let satp = SATP_MODE_SV48
        | ((asid as u64 & SATP_ASID_MASK) << SATP_ASID_SHIFT)
        | ((root >> 12) & SATP_PPN_MASK);
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
    let satp = SATP_MODE_SV48 | ((kernel_root() >> 12) & SATP_PPN_MASK);
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
        let table = BOOT_POOL
            .0
            .get()
            .cast::<[u64; ENTRIES]>()
            .wrapping_add(self.used);
        self.used += 1;
        Some(kernel_virt_to_phys(table as usize))
    }

    fn free_table(&mut self, _pa: u64) {}

    fn table(&self, pa: u64) -> *mut [u64; ENTRIES] {
        super::phys_to_virt(pa) as *mut _
    }
}

/// Boot-time set-up, before [`crate::boot::kernel_main`]: probes the ASID
/// width and maps the kernel image per section. A failure is a boot error.
pub(super) fn init() {
    let boot_root = (satp_read() & SATP_PPN_MASK) << 12;
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
    match map_kernel_image(boot_root) {
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

/// A new kernel tree: the boot tree's upper-half entries except the one
/// holding the image, which is mapped page by page from the layout.
fn map_kernel_image(boot_root: u64) -> Result<u64, MapError> {
    let mut mem = BootTables { used: 0 };
    // SAFETY: `boot_root` is the root `_start` built in the image, reachable
    // through the direct map; it is only read.
    let boot = unsafe { PageTable::<RiscV>::from_root(boot_root) };
    let mut tree = PageTable::<RiscV>::new(&mut mem)?;
    let image_slot = (&raw const __text_start as usize >> 39) % ENTRIES;
    tree.share_root_entries(&mut mem, &boot, KERNEL_ROOT_ENTRIES.start..image_slot);
    tree.share_root_entries(&mut mem, &boot, image_slot + 1..KERNEL_ROOT_ENTRIES.end);
    for (range, attr) in kernel_image_layout() {
        for va in range.step_by(PAGE) {
            tree.map(
                &mut mem,
                va,
                kernel_virt_to_phys(va),
                PageSize::Size4K,
                attr,
            )?;
        }
    }
    Ok(tree.root())
}

/// In-kernel tests and benchmarks (compiled only in those builds).
#[cfg(any(feature = "ktest", feature = "bench"))]
mod checks {
    use super::*;
    use crate::mm::frame::ZoneRequest;
    use crate::mm::{KernelTables, alloc_frames};
    #[cfg(feature = "ktest")]
    use crate::mm::{frame_stats, free_frames};
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
        fn kernel_image_is_mapped_per_section() {
            // SAFETY: the kernel root's tables are boot-pool or allocator
            // frames, reachable through the direct map; only read here.
            let kernel = unsafe { PageTable::<PageFormat>::from_root(kernel_root()) };
            let layout = kernel_image_layout();
            for (range, attr) in &layout {
                kassert!(range.start % PAGE == 0 && range.end % PAGE == 0);
                kassert!(!attr.contains(Attr::WRITE | Attr::EXEC));
                for va in range.clone().step_by(PAGE) {
                    let m = kernel.translate(&KernelTables, va);
                    kassert_eq!(
                        m.map(|m| (m.pa, m.attr)),
                        Some((kernel_virt_to_phys(va), *attr))
                    );
                }
            }
            // Text is not writable, data not executable: this function, a
            // read-only table, a writable static and the stack.
            static WRITABLE: AtomicU64 = AtomicU64::new(1);
            static READ_ONLY: [u8; 4] = [1, 2, 3, 4];
            let local = 0u8;
            let cases = [
                (
                    kernel_image_is_mapped_per_section as *const () as usize,
                    Attr::EXEC,
                ),
                (READ_ONLY.as_ptr() as usize, Attr::empty()),
                (&raw const WRITABLE as usize, Attr::WRITE),
                (&raw const local as usize, Attr::WRITE),
            ];
            for (va, want) in cases {
                let attr = kernel.translate(&KernelTables, va).map(|m| m.attr);
                kassert_eq!((va, attr), (va, Some(want | Attr::GLOBAL)));
            }
            for bottom in stack_bottoms() {
                kassert!(kernel.translate(&KernelTables, bottom - PAGE).is_none());
                kassert!(kernel.translate(&KernelTables, bottom).is_some());
            }
            Ok(())
        }
    );

    crate::ktest!(
        fn stack_guard_pages_fault_and_are_recognised() {
            let align = super::super::traps::KERNEL_STACK_ALIGN;
            for (bottom, top) in stack_bottoms().into_iter().zip(stack_tops()) {
                // The trap entry's overflow check relies on these.
                kassert_eq!(bottom % align, 0);
                kassert!(top - bottom <= align / 2);
                let guard = bottom - PAGE;
                for addr in [guard, bottom - 1] {
                    kassert_eq!(probe_cause(addr), Some(fault(addr, false)));
                    kassert!(in_stack_guard(addr));
                }
                kassert!(!in_stack_guard(bottom));
                kassert!(!in_stack_guard(guard - 1));
            }
            // The current stack lies in the boot stack.
            let sp: usize;
            // SAFETY: reads the stack pointer only.
            unsafe { asm!("mv {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
            let [boot, emergency] = stack_bottoms();
            kassert!((boot..emergency - PAGE).contains(&sp));
            Ok(())
        }
    );

    crate::ktest!(
        fn trap_with_sp_at_or_below_a_stack_bottom_runs_on_the_emergency_stack() {
            let [boot, _] = stack_bottoms();
            let [_, frame_top] = stack_tops();
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

    #[cfg(feature = "ktest")]
    /// A user tree sharing the kernel half, with one fresh frame mapped at
    /// `va` (user, writable); `body` runs with the tree loaded under ASID
    /// `asid`. Everything is undone afterwards, even when `body` fails.
    fn with_user_page(
        va: usize,
        asid: u16,
        body: impl FnOnce(&mut PageTable<PageFormat>, u64) -> crate::ktest::TestResult,
    ) -> crate::ktest::TestResult {
        let mut mem = KernelTables;
        let Ok(mut tree) = PageTable::<PageFormat>::new(&mut mem) else {
            kassert!(false, "no frame for a root table");
            return Ok(());
        };
        // SAFETY: as in `kernel_image_is_mapped_per_section`.
        let kernel = unsafe { PageTable::<PageFormat>::from_root(kernel_root()) };
        tree.share_root_entries(&mut mem, &kernel, KERNEL_ROOT_ENTRIES);
        let frame = alloc_frames(0, ZoneRequest::Any);
        let result = match frame {
            Some(frame) => {
                match tree.map(
                    &mut mem,
                    va,
                    frame,
                    PageSize::Size4K,
                    Attr::USER | Attr::WRITE,
                ) {
                    Ok(()) => {
                        // SAFETY: the tree shares the kernel half; ASID
                        // `asid` is flushed first.
                        unsafe { load_user_root(tree.root(), asid, true) };
                        body(&mut tree, frame)
                    }
                    Err(e) => {
                        kprintln!("\n    map failed: {e:?}");
                        Err(crate::ktest::TestFailed)
                    }
                }
            }
            None => {
                kprintln!("\n    no frame for the user page");
                Err(crate::ktest::TestFailed)
            }
        };
        unload_user_root();
        // The test unmaps the page itself or leaves it; either way the tree
        // goes, and with it the translation.
        let _ = tree.unmap(&mut mem, va);
        flush_page(asid, va);
        tree.destroy(&mut mem, 0..KERNEL_ROOT_ENTRIES.start);
        if let Some(frame) = frame {
            kassert_eq!(free_frames(frame, 0), Ok(()));
        }
        result
    }

    crate::ktest!(
        fn user_copy_honours_user_mappings() {
            let free_before = frame_stats().map(|s| s.1);
            with_user_page(USER_VA, 1, |tree, frame| {
                let mut mem = KernelTables;
                let out: [u8; 61] = core::array::from_fn(|i| i as u8 ^ 0x5a);
                let mut back = [0u8; 61];
                let copy_out = |va: usize, bytes: &[u8]| {
                    // SAFETY: a local array and a user address.
                    unsafe { crate::arch::user_copy(va as *mut u8, bytes.as_ptr(), bytes.len()) }
                };
                // Aligned (words then bytes) and unaligned (bytes).
                for offset in [0, 3] {
                    let va = USER_VA + 0x100 + offset;
                    kassert_eq!(copy_out(va, &out), Ok(()));
                    back.fill(0);
                    // SAFETY: a local array and a user address.
                    let r = unsafe {
                        crate::arch::user_copy(back.as_mut_ptr(), va as *const u8, back.len())
                    };
                    kassert_eq!(r, Ok(()));
                    kassert_eq!(back, out);
                    // It is the frame's memory.
                    let direct = crate::arch::phys_to_virt(frame) + 0x100 + offset;
                    // SAFETY: the frame is ours and direct-mapped.
                    kassert_eq!(unsafe { (direct as *const u8).read_volatile() }, out[0]);
                }
                kassert!(sum_is_clear());
                // Unmapped user memory: the fault address comes back, also
                // in the middle of a copy.
                let next = USER_VA + PAGE;
                // SAFETY: a local array and a user address.
                unsafe {
                    kassert_eq!(
                        crate::arch::user_copy(back.as_mut_ptr(), next as *const u8, 8),
                        Err(next)
                    );
                    kassert_eq!(
                        crate::arch::user_copy(back.as_mut_ptr(), (next - 8) as *const u8, 16),
                        Err(next)
                    );
                    kassert_eq!(
                        crate::arch::user_copy(back.as_mut_ptr(), (next - 3) as *const u8, 8),
                        Err(next)
                    );
                }
                kassert_eq!(copy_out(next - 5, &out), Err(next));
                kassert!(sum_is_clear());
                // Outside `user_copy` the kernel cannot touch user pages
                // (SUM clear).
                kassert_eq!(probe_cause(USER_VA), Some(fault(USER_VA, false)));
                // A read-only user page is read-only for the kernel too.
                kassert_eq!(
                    tree.protect(&mut mem, USER_VA, Attr::USER),
                    Ok(PageSize::Size4K)
                );
                flush_page(1, USER_VA);
                kassert_eq!(copy_out(USER_VA, &out), Err(USER_VA));
                // SAFETY: a local array and a user address.
                let r =
                    unsafe { crate::arch::user_copy(back.as_mut_ptr(), USER_VA as *const u8, 8) };
                kassert_eq!(r, Ok(()));
                // Unmapped: reads fault too.
                kassert_eq!(tree.unmap(&mut mem, USER_VA), Ok((frame, PageSize::Size4K)));
                flush_page(1, USER_VA);
                // SAFETY: a local array and a user address.
                let r =
                    unsafe { crate::arch::user_copy(back.as_mut_ptr(), USER_VA as *const u8, 8) };
                kassert_eq!(r, Err(USER_VA));
                kassert!(sum_is_clear());
                Ok(())
            })?;
            kassert_eq!(frame_stats().map(|s| s.1), free_before);
            Ok(())
        }
    );

    crate::ktest!(
        fn user_trees_switch_by_asid() {
            let count = asid_count();
            kassert!(
                count.is_power_of_two() && count <= 1 << 16,
                "{} ASIDs",
                count
            );
            let free_before = frame_stats().map(|s| s.1);
            // Two trees map the same address to different frames; switching
            // back to the first without a flush (when ASIDs exist) must see
            // its own page again.
            let asids: [u16; 2] = if count > 2 { [1, 2] } else { [0, 0] };
            let read = || {
                let mut b = [0u8; 1];
                // SAFETY: a local array and a user address.
                unsafe { crate::arch::user_copy(b.as_mut_ptr(), USER_VA as *const u8, 1) }
                    .map(|()| b[0])
            };
            with_user_page(USER_VA, asids[0], |first, frame_a| {
                // SAFETY: the frame is ours and direct-mapped.
                unsafe { (crate::arch::phys_to_virt(frame_a) as *mut u8).write_volatile(0xaa) };
                kassert_eq!(read(), Ok(0xaa));
                let first_root = first.root();
                with_user_page(USER_VA, asids[1], |_, frame_b| {
                    // SAFETY: as above.
                    unsafe { (crate::arch::phys_to_virt(frame_b) as *mut u8).write_volatile(0xbb) };
                    kassert_eq!(read(), Ok(0xbb));
                    // SAFETY: `first` is alive and shares the kernel half;
                    // without distinct ASIDs, flush.
                    unsafe { load_user_root(first_root, asids[0], asids[0] == asids[1]) };
                    kassert_eq!(read(), Ok(0xaa));
                    Ok(())
                })
            })?;
            kassert_eq!(frame_stats().map(|s| s.1), free_before);
            Ok(())
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

//! AArch64 memory-management hardware: the page-table format, the kernel
//! image layout, the translation registers (TTBR0/TTBR1 with ASIDs), TLB
//! maintenance, and `user_copy` with PAN opened only for its duration.
//!
//! Invariants:
//! - The kernel half has its own root in TTBR1_EL1; user trees go in
//!   TTBR0_EL1, so no root entries are shared (`KERNEL_ROOT_ENTRIES` is
//!   empty) and a user tree owns all 512 of its root entries.
//! - ASID 0 is reserved: TTBR0 holds [`EMPTY_TABLE`] with ASID 0 whenever no
//!   user tree is loaded (after [`init`] and [`unload_user_root`]), and no
//!   user tree is ever loaded with ASID 0, so no TLB entry is ever tagged 0.
//!   User trees use ASIDs `1..asid_count()`.
//! - TCR_EL1.EPD0 is clear after [`init`] (TTBR0 walks enabled; the empty
//!   table faults every lower-half address) and TCR_EL1.AS selects 16-bit
//!   ASIDs when the CPU has them.
//! - When the CPU has FEAT_PAN, PSTATE.PAN is set in all kernel code
//!   (SCTLR_EL1.SPAN is clear, so every exception entry sets it again)
//!   except inside `keel_user_copy`, which clears it around the copy and sets
//!   it again on every way out, including the fault fixups.
//! - TLB maintenance is preceded by `dsb ishst`, so page-table writes are
//!   visible to the walkers. [`flush_page`] and [`flush_all`] invalidate
//!   this CPU's TLB only (`dsb nsh; isb` after; other CPUs are shot down
//!   by IPI, `crate::smp::shootdown`); switching roots uses the
//!   inner-shareable (broadcast) forms, followed by `dsb ish; isb`.

use super::entry;
use crate::mm::paging::{Attr, PageSize};
use arrayvec::ArrayVec;
use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// The AArch64 stage-1 descriptor format, 4 KiB granule.
pub type PageFormat = crate::mm::paging::Arm;

/// No root entries are shared: the kernel half has its own root (TTBR1).
pub const KERNEL_ROOT_ENTRIES: Range<usize> = 0..0;

/// Whether a page that becomes mapped must be flushed from the TLB too.
/// Invalid entries are never cached (Arm ARM D8.13).
pub const FLUSH_NEW_ENTRIES: bool = false;

/// The physical-address bits of a translation-table base register.
const TTBR_BADDR: u64 = 0x0000_ffff_ffff_f000;
/// The ASID field of TTBR0_EL1 (and of TLBI operands).
const ASID_SHIFT: u32 = 48;
/// TLBI operands carry VA[55:12] in bits 43:0.
const TLBI_VA_MASK: u64 = (1 << 44) - 1;

const TCR_EPD0: u64 = 1 << 7;
const TCR_AS: u64 = 1 << 36;
/// SCTLR_EL1.SPAN: when clear, exception entry to EL1 sets PSTATE.PAN.
const SCTLR_SPAN: u64 = 1 << 23;

/// Physical base and size of the PL011 UART (QEMU `virt`).
static DEVICE_WINDOWS: [(u64, u64); 1] = [(super::pl011::PL011_PHYS, 0x1000)];

/// Whether the CPU has FEAT_PAN; read by `keel_user_copy` (as a byte).
#[unsafe(no_mangle)]
static KEEL_HAS_PAN: AtomicU8 = AtomicU8::new(0);
/// Whether TCR_EL1.AS is set (16-bit ASIDs).
static ASID_16: AtomicBool = AtomicBool::new(false);

/// A translation table with no valid entries.
#[repr(C, align(4096))]
struct Table([u64; 512]);

/// What TTBR0 points at when no user tree is loaded.
static EMPTY_TABLE: Table = Table([0; 512]);

fn empty_table_phys() -> u64 {
    entry::image_virt_to_phys((&raw const EMPTY_TABLE) as usize)
}

/// Called on every CPU before any other Rust code: points TTBR0 at
/// the empty table with ASID 0 and enables TTBR0 walks, selects 16-bit ASIDs
/// if implemented, and turns on PAN if implemented.
pub(super) fn init() {
    let mmfr0 = read_sysreg!("id_aa64mmfr0_el1", nomem);
    let mmfr1 = read_sysreg!("id_aa64mmfr1_el1", nomem);
    // ID_AA64MMFR0_EL1.ASIDBits (7:4): 0b0010 = 16 bits, else 8.
    let asid16 = (mmfr0 >> 4) & 0xf == 0b0010;
    // ID_AA64MMFR1_EL1.PAN (23:20): non-zero = FEAT_PAN.
    let pan = (mmfr1 >> 20) & 0xf != 0;
    ASID_16.store(asid16, Ordering::Relaxed);
    let as_bit = if asid16 { TCR_AS } else { 0 };
    // SAFETY: TTBR0 gets a valid (empty) table before its walks are enabled,
    // so every lower-half access faults, as before; the kernel half (TTBR1)
    // is untouched. Changing TCR.AS is followed by invalidating the whole
    // local TLB, before any ASID-tagged entry exists.
    unsafe {
        asm!(
            "msr ttbr0_el1, {empty}",
            "isb",
            "mrs {t}, tcr_el1",
            "bic {t}, {t}, #{epd0}",
            "orr {t}, {t}, {as_bit}",
            "msr tcr_el1, {t}",
            "isb",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            empty = in(reg) empty_table_phys(),
            as_bit = in(reg) as_bit,
            epd0 = const TCR_EPD0,
            t = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
    if pan {
        // SAFETY: FEAT_PAN is implemented (checked above), so SPAN is a real
        // control bit and `msr pan, #1` (encoded by hand: the assembler
        // wants `+pan` for the mnemonic) exists. With PAN set, kernel loads
        // and stores to user-accessible pages fault; the kernel reaches user
        // memory only through `keel_user_copy`, which clears it.
        unsafe {
            asm!(
                "mrs {t}, sctlr_el1",
                "bic {t}, {t}, #{span}",
                "msr sctlr_el1, {t}",
                "isb",
                ".inst 0xd500419f // msr pan, #1",
                t = out(reg) _,
                span = const SCTLR_SPAN,
                options(nostack, preserves_flags),
            );
        }
        KEEL_HAS_PAN.store(1, Ordering::Relaxed);
    }
}

/// The 4 KiB granule has 1 GiB blocks at level 1 on every AArch64 CPU.
pub fn max_page_size() -> PageSize {
    PageSize::Size1G
}

/// The mapped parts of the kernel image and their attributes (text RX,
/// rodata R, data/bss RW, and the boot and overflow stacks RW); the stack
/// guards are not in the list. The boot page tables map exactly these.
pub fn kernel_image_layout() -> ArrayVec<(Range<usize>, Attr), 8> {
    entry::image_sections().into_iter().collect()
}

/// The physical address of a kernel-image virtual address (meaningless for
/// other addresses).
pub fn kernel_virt_to_phys(va: usize) -> u64 {
    entry::image_virt_to_phys(va)
}

/// Device registers the kernel uses through the direct map: the PL011.
pub fn device_windows() -> &'static [(u64, u64)] {
    &DEVICE_WINDOWS
}

/// The physical address of the kernel's root table (TTBR1_EL1).
pub fn kernel_root() -> u64 {
    read_sysreg!("ttbr1_el1", nomem) & TTBR_BADDR
}

/// Installs `root` as the kernel's root table (TTBR1_EL1) and invalidates
/// the TLB (all ASIDs, all CPUs in the inner-shareable domain).
///
/// # Safety
/// `root` must be a valid level-0 table that maps the kernel image, the
/// stacks in use, the direct map and the device windows as the current one
/// does, with the code running now at the same virtual addresses. (The old
/// and new trees may map the same address with different block sizes for a
/// moment; QEMU does not model TLB conflict aborts, hardware may.)
pub unsafe fn load_kernel_root(root: u64) {
    // SAFETY: guaranteed by the caller; the barriers make the new tables
    // visible to the walker first and drop every cached translation after.
    unsafe {
        asm!(
            "dsb ishst",
            "msr ttbr1_el1, {r}",
            "isb",
            "tlbi vmalle1is",
            "dsb ish",
            "isb",
            r = in(reg) root & TTBR_BADDR,
            options(nostack, preserves_flags),
        );
    }
}

/// Makes the user tree `root` current in TTBR0_EL1 with ASID `asid`; if
/// `flush`, drops every entry of this CPU's TLB tagged `asid` (after the
/// switch, so no entry of an older tree with that ASID survives).
///
/// # Safety
/// `root` must be a valid level-0 table that stays valid (and is not
/// freed) until another root is loaded or [`unload_user_root`] runs; `asid`
/// must be in `1..asid_count()` and, unless `flush`, must not have TLB
/// entries from another tree.
pub unsafe fn load_user_root(root: u64, asid: u16, flush: bool) {
    debug_assert!(asid != 0 && usize::from(asid) < asid_count());
    let ttbr0 = (root & TTBR_BADDR) | (u64::from(asid) << ASID_SHIFT);
    // SAFETY: guaranteed by the caller; TTBR0 only affects the lower half.
    unsafe {
        asm!(
            "dsb ishst",
            "msr ttbr0_el1, {t}",
            "isb",
            t = in(reg) ttbr0,
            options(nostack, preserves_flags),
        );
    }
    if flush {
        // SAFETY: invalidating TLB entries only drops cached translations.
        unsafe {
            asm!(
                "tlbi aside1, {a}",
                "dsb nsh",
                "isb",
                a = in(reg) u64::from(asid) << ASID_SHIFT,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Returns to no user mappings: TTBR0 = the empty table with the reserved
/// ASID 0, whose TLB entries cannot exist.
pub fn unload_user_root() {
    // SAFETY: the empty table is valid for the whole run; every lower-half
    // access faults afterwards, which is the point.
    unsafe {
        asm!(
            "msr ttbr0_el1, {t}",
            "isb",
            t = in(reg) empty_table_phys(),
            options(nostack, preserves_flags),
        );
    }
}

/// Usable ASIDs (ASID 0 is reserved for "no user tree"): 256 or 65536.
pub fn asid_count() -> usize {
    let wide = ASID_16.load(Ordering::Relaxed);
    1 << if wide { 16 } else { 8 }
}

fn tlbi_va(va: usize) -> u64 {
    (va as u64 >> 12) & TLBI_VA_MASK
}

/// Invalidates this CPU's translation of the user page at `va` tagged
/// `asid`.
pub fn flush_page(asid: u16, va: usize) {
    let arg = tlbi_va(va) | (u64::from(asid) << ASID_SHIFT);
    // SAFETY: invalidating TLB entries only drops cached translations.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vae1, {a}",
            "dsb nsh",
            "isb",
            a = in(reg) arg,
            options(nostack, preserves_flags),
        );
    }
}

/// Invalidates every translation of this CPU (all ASIDs, kernel and
/// user).
pub fn flush_all() {
    // SAFETY: as for `flush_page`.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi vmalle1",
            "dsb nsh",
            "isb",
            options(nostack, preserves_flags)
        );
    }
}

core::arch::global_asm!(
    r#"
    // keel_user_copy(dst x0, src x1, len x2): copies len bytes, 8 at a time
    // while both pointers are 8-aligned, else byte by byte, with PAN clear
    // (when KEEL_HAS_PAN; w4 holds that flag throughout). Returns x0 = 0 on
    // success, or x0 = 1 and x1 = the address whose access faulted (the
    // first byte of the word or byte not copied; an aligned word never
    // crosses a page). Every load and store is in __ex_table.
    .section .text.keel_user_copy, "ax"
    .global keel_user_copy
    .type keel_user_copy, %function
keel_user_copy:
    adrp    x4, KEEL_HAS_PAN
    ldrb    w4, [x4, :lo12:KEEL_HAS_PAN]
    cbz     w4, 1f
    .inst   0xd500409f              // msr pan, #0
1:  orr     x5, x0, x1
    tst     x5, #7
    b.ne    3f
2:  cmp     x2, #8
    b.lo    3f
10: ldr     x3, [x1]
11: str     x3, [x0]
    add     x1, x1, #8
    add     x0, x0, #8
    sub     x2, x2, #8
    b       2b
3:  cbz     x2, 4f
12: ldrb    w3, [x1]
13: strb    w3, [x0]
    add     x1, x1, #1
    add     x0, x0, #1
    sub     x2, x2, #1
    b       3b
4:  mov     x0, #0
    mov     x1, #0
    b       6f
20: mov     x0, #1                  // a load faulted: x1 is the address
    b       6f
21: mov     x1, x0                  // a store faulted: x0 is the address
    mov     x0, #1
6:  cbz     w4, 7f
    .inst   0xd500419f              // msr pan, #1
7:  ret
    .size keel_user_copy, . - keel_user_copy
    .pushsection __ex_table, "a"
    .balign 8
    .quad   10b, 20b
    .quad   11b, 21b
    .quad   12b, 20b
    .quad   13b, 21b
    .popsection
"#
);

#[cfg(any(feature = "ktest", feature = "bench"))]
mod checks {
    //! In-kernel tests and benchmarks of the memory-management hardware
    //! operations, through the portable walker and the global frame
    //! allocator.

    use super::*;
    use crate::mm::KernelTables;
    #[cfg(feature = "bench")]
    use crate::mm::frame::ZoneRequest;
    use crate::mm::paging::PageTable;
    #[cfg(feature = "bench")]
    use crate::mm::{alloc_frames, free_frames};

    /// All root entries of a user tree belong to it.
    #[cfg(feature = "bench")]
    const USER_ROOT_ENTRIES: Range<usize> = 0..512;

    #[cfg(feature = "ktest")]
    use crate::arch::tests::{USER_VA, with_user_page};
    #[cfg(feature = "ktest")]
    use crate::trap::{TrapCause, TrapRecord};

    #[cfg(feature = "ktest")]
    const TEST_ASID: u16 = 1;

    /// Whether PAN is implemented and enabled (user pages are out of reach
    /// of plain kernel loads and stores).
    #[cfg(feature = "ktest")]
    fn has_pan() -> bool {
        KEEL_HAS_PAN.load(Ordering::Relaxed) != 0
    }

    #[cfg(feature = "ktest")]
    fn is_fault_at(rec: Result<u8, TrapRecord>, at: usize) -> bool {
        matches!(rec, Err(TrapRecord { cause: TrapCause::PageFault { addr, .. }, .. }) if addr == at)
    }

    crate::ktest!(
        fn pan_keeps_user_pages_from_plain_kernel_access() {
            // User copies through the page tables are checked on every
            // architecture (`arch::tests`); here PAN.
            with_user_page(USER_VA, TEST_ASID, |_, _| {
                let mut byte = [0u8; 1];
                // SAFETY: a user address (faults are returned) and a kernel
                // buffer of 1 byte.
                let r = unsafe {
                    crate::arch::user_copy(byte.as_mut_ptr(), (USER_VA + 1024) as *const u8, 1)
                };
                kassert_eq!(r, Ok(()));
                if has_pan() {
                    let rec = crate::arch::probe_read(USER_VA + 1024);
                    kassert!(
                        is_fault_at(rec, USER_VA + 1024),
                        "plain read gave {:?}",
                        rec
                    );
                } else {
                    kprintln!("\n    (no FEAT_PAN on this CPU: plain-access check skipped)");
                }
                Ok(())
            })
        }
    );

    crate::ktest!(
        fn image_gaps_are_unmapped_and_device_windows_are_device_memory() {
            // That each section is mapped as described is checked on every
            // architecture (`arch::tests`); here that every other
            // page of the image (the stack guards, the gap in `.stacks`) is
            // unmapped, and device windows are Device memory.
            // SAFETY: the kernel root is a valid tree of frames reached
            // through the direct map (KernelTables); only read here.
            let kernel = unsafe { PageTable::<PageFormat>::from_root(kernel_root()) };
            let mem = KernelTables;
            let layout = kernel_image_layout();
            let (image_start, image_end) = entry::kernel_image_range();
            for (range, _) in &layout {
                kassert!(image_start <= range.start && range.end <= image_end);
            }
            for va in (image_start..image_end).step_by(4096) {
                if !layout.iter().any(|(r, _)| r.contains(&va)) {
                    kassert!(kernel.translate(&mem, va).is_none(), "{:#x} mapped", va);
                }
            }
            for (g, _) in entry::stacks() {
                kassert!(kernel.translate(&mem, g.start).is_none());
                kassert!(kernel.translate(&mem, g.end - 1).is_none());
            }
            // The device windows in the direct map are Device memory.
            for &(pa, _) in device_windows() {
                let m = kernel.translate(&mem, crate::arch::phys_to_virt(pa));
                kassert!(m.is_some_and(|m| m.pa == pa && m.attr.contains(Attr::DEVICE)));
            }
            Ok(())
        }
    );

    crate::ktest!(
        fn asids_and_roots() {
            let n = asid_count();
            kassert!(n == 256 || n == 65536, "asid_count {}", n);
            kassert_eq!(read_sysreg!("ttbr0_el1", nomem), empty_table_phys());
            kassert_eq!(max_page_size(), PageSize::Size1G);
            Ok(())
        }
    );

    /// Benchmark address and ASID.
    #[cfg(feature = "bench")]
    const BENCH_VA: usize = 0x7f_0000_0000;
    #[cfg(feature = "bench")]
    const BENCH_ASID: u16 = 2;

    crate::kbench!(
        fn user_page_map_unmap_flush(iters: u64) {
            let mut mem = KernelTables;
            let Ok(mut tree) = PageTable::<PageFormat>::new(&mut mem) else {
                return;
            };
            let Some(frame) = alloc_frames(0, ZoneRequest::Any) else {
                tree.destroy(&mut mem, USER_ROOT_ENTRIES);
                return;
            };
            let attr = Attr::USER | Attr::WRITE;
            // The first map creates the intermediate tables, which stay.
            let _ = tree.map(&mut mem, BENCH_VA, frame, PageSize::Size4K, attr);
            let _ = tree.unmap(&mut mem, BENCH_VA);
            for _ in 0..iters {
                let va = core::hint::black_box(BENCH_VA);
                let _ = tree.map(&mut mem, va, frame, PageSize::Size4K, attr);
                let _ = tree.unmap(&mut mem, va);
                flush_page(BENCH_ASID, va);
            }
            tree.destroy(&mut mem, USER_ROOT_ENTRIES);
            let _ = free_frames(frame, 0);
        },
        iters = 1000
    );

    crate::kbench!(
        fn user_copy_4k(iters: u64) {
            let mut mem = KernelTables;
            let Ok(mut tree) = PageTable::<PageFormat>::new(&mut mem) else {
                return;
            };
            // Frame 0 is the user page, frame 1 the kernel source.
            let Some(frames) = alloc_frames(1, ZoneRequest::Any) else {
                tree.destroy(&mut mem, USER_ROOT_ENTRIES);
                return;
            };
            let src = crate::arch::phys_to_virt(frames + 4096) as *const u8;
            if tree
                .map(
                    &mut mem,
                    BENCH_VA,
                    frames,
                    PageSize::Size4K,
                    Attr::USER | Attr::WRITE,
                )
                .is_ok()
            {
                // SAFETY: the tree stays alive until it is unloaded below.
                unsafe { load_user_root(tree.root(), BENCH_ASID, true) };
                for _ in 0..iters {
                    // SAFETY: `src` is our second frame through the direct
                    // map (4 KiB, readable); the user side is the first.
                    let _ = unsafe {
                        crate::arch::user_copy(
                            core::hint::black_box(BENCH_VA) as *mut u8,
                            src,
                            4096,
                        )
                    };
                }
                unload_user_root();
            }
            let _ = tree.unmap(&mut mem, BENCH_VA);
            tree.destroy(&mut mem, USER_ROOT_ENTRIES);
            flush_all();
            let _ = free_frames(frames, 1);
        },
        iters = 100
    );
}

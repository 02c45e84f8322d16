//! The x86_64 memory-management hardware: CPU paging features (SMEP, SMAP,
//! PCID, global pages, 1 GiB pages), the kernel image's layout for the page
//! tables, loading page-table roots into CR3, and TLB invalidation.
//!
//! Invariants:
//! - [`init`] runs once on the boot CPU before anything here is used. It
//!   enables CR4.PGE (kernel mappings are global), CR4.SMEP and CR4.SMAP
//!   when the CPU has them (then [`SMAP_ENABLED`] is set, and user memory
//!   is reachable only inside `user_copy`'s `stac`/`clac` window), and
//!   CR4.PCIDE when the CPU has PCIDs. CR0.WP is set, so the kernel honours
//!   read-only pages, user pages included.
//! - The kernel runs with PCID 0; user trees get their address-space id as
//!   the PCID. Every kernel mapping is global, so TLB entries for the
//!   kernel half are shared by all PCIDs and `invlpg` drops them whatever
//!   PCID is current.
//! - [`kernel_root`] is the tree whose kernel half every user tree shares
//!   (root entries [`KERNEL_ROOT_ENTRIES`]); it is what CR3 holds whenever
//!   no user tree is loaded.

use super::boot::image_holes;
use crate::mm::paging::{Attr, PageSize};
use core::arch::x86_64::{__cpuid, __cpuid_count};
use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use x86_64::registers::control::{Cr0, Cr4};

/// The page-table entry layout.
pub type PageFormat = crate::mm::paging::X86;

/// PML4 entries of the kernel half, shared into every user tree.
pub const KERNEL_ROOT_ENTRIES: Range<usize> = 256..512;

/// Whether a page that becomes mapped must be flushed from the TLB too.
/// Non-present entries are never cached (SDM vol. 3 §4.10.2.3).
pub const FLUSH_NEW_ENTRIES: bool = false;

/// Whether CR4.SMAP is on; the assembly in `usercopy.rs` and `trap.rs`
/// executes `stac`/`clac` only when it is (they are #UD without SMAP).
pub static SMAP_ENABLED: AtomicBool = AtomicBool::new(false);
static SMEP_ENABLED: AtomicBool = AtomicBool::new(false);
static PCID_ENABLED: AtomicBool = AtomicBool::new(false);
static PGE_ENABLED: AtomicBool = AtomicBool::new(false);
static PAGES_1G: AtomicBool = AtomicBool::new(false);
/// Physical address of the kernel's PML4.
static KERNEL_ROOT: AtomicU64 = AtomicU64::new(0);

const CR0_WP: u64 = 1 << 16;
const CR4_PGE: u64 = 1 << 7;
const CR4_PCIDE: u64 = 1 << 17;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
/// CR3 bit 63 (with CR4.PCIDE): keep the new PCID's TLB entries.
const CR3_NO_FLUSH: u64 = 1 << 63;
const CR3_PCID_MASK: u64 = 0xfff;
const CR3_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Number of PCIDs (12 bits).
const PCID_COUNT: usize = 4096;

pub(super) fn read_cr3() -> u64 {
    let (root, low) = x86_64::registers::control::Cr3::read_raw();
    root.start_address().as_u64() | u64::from(low)
}

/// # Safety
/// `v` must be a valid CR3 value: the physical address of a PML4 whose
/// kernel half maps the running kernel (code, stack, data) as it is mapped
/// now; PCID bits only with CR4.PCIDE set.
unsafe fn write_cr3(v: u64) {
    // SAFETY: guaranteed by the caller; a CR3 write is a memory barrier
    // for the page tables, so it is not `nomem`.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Detects and enables the paging features of the boot CPU and records the
/// kernel root. Called once, early in the Rust entry.
pub fn init() {
    let max_leaf = __cpuid(0).eax;
    let leaf1 = __cpuid(1);
    let leaf7_ebx = (max_leaf >= 7).then(|| __cpuid_count(7, 0).ebx);
    let ext1 = (__cpuid(0x8000_0000).eax >= 0x8000_0001).then(|| __cpuid(0x8000_0001).edx);
    let (leaf7_ebx, ext1_edx) = (leaf7_ebx.unwrap_or(0), ext1.unwrap_or(0));
    let pge = leaf1.edx & (1 << 13) != 0;
    let pcid = leaf1.ecx & (1 << 17) != 0;
    let smep = leaf7_ebx & (1 << 7) != 0;
    let smap = leaf7_ebx & (1 << 20) != 0;
    PAGES_1G.store(ext1_edx & (1 << 26) != 0, Ordering::Relaxed);

    let cr3 = read_cr3();
    KERNEL_ROOT.store(cr3 & CR3_ADDR_MASK, Ordering::Relaxed);
    let mut cr4 = Cr4::read_raw();
    for (has, bit) in [
        (pge, CR4_PGE),
        (smep, CR4_SMEP),
        (smap, CR4_SMAP),
        // PCIDE may only be set while CR3's PCID is 0; the boot CR3 is the
        // page-aligned PML4 with no flags.
        (pcid && cr3 & CR3_PCID_MASK == 0, CR4_PCIDE),
    ] {
        if has {
            cr4 |= bit;
        }
    }
    // SAFETY: every bit set is supported (CPUID said so) and compatible
    // with the boot page tables: kernel pages are supervisor-only (SMEP,
    // SMAP), their global bits are meant, CR3's PCID is 0 (PCIDE). No user
    // memory is accessed before `SMAP_ENABLED` is set just below, and
    // nothing runs concurrently (one CPU, interrupts masked).
    unsafe { Cr4::write_raw(cr4) };
    let cr4 = Cr4::read_raw();
    PGE_ENABLED.store(cr4 & CR4_PGE != 0, Ordering::Relaxed);
    SMEP_ENABLED.store(cr4 & CR4_SMEP != 0, Ordering::Relaxed);
    SMAP_ENABLED.store(cr4 & CR4_SMAP != 0, Ordering::Relaxed);
    PCID_ENABLED.store(cr4 & CR4_PCIDE != 0, Ordering::Relaxed);
    // The trampoline sets WP; the kernel depends on it for read-only user
    // pages (copy-on-write), so check rather than assume.
    let cr0 = Cr0::read_raw();
    if cr0 & CR0_WP == 0 {
        // SAFETY: setting CR0.WP only makes the CPU honour read-only
        // pages for the kernel too; every page the kernel writes is
        // mapped writable.
        unsafe { Cr0::write_raw(cr0 | CR0_WP) };
    }
}

/// Prints which paging features are on (after the console logger is up).
pub fn log_features() {
    let on = |b: &AtomicBool| ["off", "on"][usize::from(b.load(Ordering::Relaxed))];
    log::info!(
        "x86_64 paging: SMEP {}, SMAP {}, PCID {}, global pages {}, 1 GiB pages {}",
        on(&SMEP_ENABLED),
        on(&SMAP_ENABLED),
        on(&PCID_ENABLED),
        on(&PGE_ENABLED),
        on(&PAGES_1G)
    );
}

/// The largest leaf this CPU supports: 1 GiB pages if CPUID says
/// `pdpe1gb`, else 2 MiB.
pub fn max_page_size() -> PageSize {
    if PAGES_1G.load(Ordering::Relaxed) {
        PageSize::Size1G
    } else {
        PageSize::Size2M
    }
}

unsafe extern "C" {
    // linker.ld: page-aligned section boundaries of the image (virtual).
    static __kernel_start: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __kernel_end: u8;
}

/// The kernel image's sections as virtual ranges with their attributes:
/// `.text` executable, `.rodata` (with `.ktests`, `.kbenches` and
/// `__ex_table`) read-only, `.data` and `.bss` writable, all global; left
/// out are the guard pages under the boot CPU's stacks and the whole area
/// of the other CPUs' stacks (`boot::image_holes`: their guards would not
/// fit in the list; `cpu_start` maps a CPU's stacks, without guards, when
/// it starts it). The ranges are page-aligned, in address order, and with
/// the holes they cover the image exactly.
pub fn kernel_image_layout() -> arrayvec::ArrayVec<(Range<usize>, Attr), 8> {
    let start = (&raw const __kernel_start) as usize;
    let text_end = (&raw const __text_end) as usize;
    let rodata_end = (&raw const __rodata_end) as usize;
    let end = (&raw const __kernel_end) as usize;
    let mut out = arrayvec::ArrayVec::new();
    // At most 2 + 4 + 1 = 7 entries: `push` cannot overflow the 8.
    out.push((start..text_end, Attr::EXEC | Attr::GLOBAL));
    out.push((text_end..rodata_end, Attr::GLOBAL));
    let mut from = rodata_end;
    // Writable between the holes, up to the end (an empty last hole).
    for hole in image_holes().into_iter().chain(core::iter::once(end..end)) {
        if from < hole.start {
            out.push((from..hole.start, Attr::WRITE | Attr::GLOBAL));
        }
        from = hole.end;
    }
    out
}

/// The physical address of `va`, an address in the kernel image.
pub fn kernel_virt_to_phys(va: usize) -> u64 {
    va.wrapping_sub(super::KERNEL_VMA_OFFSET) as u64
}

/// Device registers the kernel reaches through the direct map: none yet
/// (the console is port I/O).
pub fn device_windows() -> &'static [(u64, u64)] {
    &[]
}

/// Physical address of the kernel's PML4 (the boot tables until
/// [`load_kernel_root`] installs others).
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
}

/// Installs `root` as the kernel's PML4 (PCID 0) and flushes the whole TLB,
/// global entries included.
///
/// # Safety
/// `root` must be the physical address of a PML4 that maps the kernel
/// image (at least as [`kernel_image_layout`] describes it), the kernel
/// stacks and the direct map where the running kernel uses them, and that
/// stays valid while it is the kernel root.
pub unsafe fn load_kernel_root(root: u64) {
    let root = root & CR3_ADDR_MASK;
    KERNEL_ROOT.store(root, Ordering::Relaxed);
    // SAFETY: by the caller's guarantee the kernel keeps running on the
    // new tree; PCID 0 with bit 63 clear is valid with or without PCIDE.
    unsafe { write_cr3(root) };
    flush_all();
}

/// Makes the user tree `root` current with address-space id `asid` (the
/// PCID; the kernel itself uses PCID 0). With `flush`, the TLB entries
/// tagged `asid` are dropped first; without, they are kept, which is only
/// right if they still describe `root`. Without PCIDs every load flushes.
///
/// # Safety
/// `root` must be the physical address of a PML4 whose kernel half (root
/// entries [`KERNEL_ROOT_ENTRIES`]) is shared with [`kernel_root`]'s, that
/// stays valid while loaded; `asid < asid_count()`.
pub unsafe fn load_user_root(root: u64, asid: u16, flush: bool) {
    let mut cr3 = root & CR3_ADDR_MASK;
    if PCID_ENABLED.load(Ordering::Relaxed) {
        cr3 |= u64::from(asid) & CR3_PCID_MASK;
        if !flush {
            cr3 |= CR3_NO_FLUSH;
        }
    }
    // SAFETY: the kernel half of `root` is the kernel's (caller), so the
    // kernel keeps running; the PCID bits are set only with CR4.PCIDE.
    unsafe { write_cr3(cr3) };
}

/// Returns to the kernel root: no user mappings (flushing PCID 0's
/// non-global entries, of which there are none unless a user tree ran with
/// address-space id 0).
pub fn unload_user_root() {
    // SAFETY: the kernel root maps the kernel (the invariant of
    // `KERNEL_ROOT`); PCID 0, bit 63 clear.
    unsafe { write_cr3(kernel_root()) };
}

/// Address-space ids usable with [`load_user_root`]: the 4096 PCIDs, or 1
/// without PCIDs (every switch flushes).
pub fn asid_count() -> usize {
    if PCID_ENABLED.load(Ordering::Relaxed) {
        PCID_COUNT
    } else {
        1
    }
}

fn invlpg(va: usize) {
    // SAFETY: invlpg only drops TLB entries; it faults on nothing.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// Drops the TLB entry for `va` of the current user tree, whose
/// address-space id is `asid` (`invlpg` acts on the current PCID only;
/// entries of trees that are not loaded are dropped by loading them with
/// `flush`).
pub fn flush_page(_asid: u16, va: usize) {
    invlpg(va);
}

/// Drops every TLB entry on this CPU: global ones and those of every PCID
/// (toggling CR4.PGE does all of that).
pub fn flush_all() {
    let cr4 = Cr4::read_raw();
    if cr4 & CR4_PGE != 0 {
        // SAFETY: clearing and restoring PGE changes no mapping; the CPU
        // flushes all TLB entries of all PCIDs on each write.
        unsafe {
            Cr4::write_raw(cr4 & !CR4_PGE);
            Cr4::write_raw(cr4);
        }
    } else {
        // SAFETY: reloading the current CR3 (with bit 63 clear) keeps the
        // same tree; without PGE there are no global entries to keep.
        unsafe { write_cr3(read_cr3() & !CR3_NO_FLUSH) };
    }
}

/// A user address for the benchmarks: nothing else maps the user half.
#[cfg(feature = "bench")]
const TEST_USER_VA: usize = 0x40_0000;

/// A fresh user tree sharing the kernel half, for the benchmarks.
#[cfg(feature = "bench")]
fn test_user_tree(
    mem: &mut crate::mm::KernelTables,
) -> Option<crate::mm::paging::PageTable<PageFormat>> {
    use crate::mm::paging::PageTable;
    let mut tree = PageTable::<PageFormat>::new(mem).ok()?;
    // SAFETY: the kernel root and its tables are frames reached through the
    // direct map (the boot tables lie in the image, which the direct map
    // covers); this only reads it.
    let kernel = unsafe { PageTable::<PageFormat>::from_root(kernel_root()) };
    tree.share_root_entries(mem, &kernel, KERNEL_ROOT_ENTRIES);
    Some(tree)
}

#[cfg(feature = "ktest")]
mod tests {
    use super::super::boot::kernel_stacks;
    use super::*;
    use crate::arch::tests::{USER_VA, with_user_page};
    use crate::mm::KernelTables;
    use crate::mm::paging::PageTable;
    use crate::trap::TrapCause;

    /// The kernel root's tree, for reading.
    fn current_kernel_tree() -> PageTable<PageFormat> {
        // SAFETY: the kernel root and its tables are frames reached through
        // the direct map; only read here.
        unsafe { PageTable::<PageFormat>::from_root(kernel_root()) }
    }

    crate::ktest!(
        fn smap_keeps_user_pages_from_plain_kernel_access() {
            // User copies through the page tables are checked on every
            // architecture (`arch::tests`); here SMAP and x86's
            // non-canonical addresses.
            let pattern = *b"smap";
            with_user_page(USER_VA, 1, |_, frame| {
                // SAFETY: the frame is the test's, mapped by the direct map.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        pattern.as_ptr(),
                        super::super::phys_to_virt(frame) as *mut u8,
                        4,
                    )
                };
                let mut back = [0u8; 4];
                let r =
                    // SAFETY: a user address (faults are returned) and a kernel
                    // buffer of 4 bytes.
                    unsafe { crate::arch::user_copy(back.as_mut_ptr(), USER_VA as *const u8, 4) };
                kassert_eq!(r, Ok(()));
                kassert_eq!(back, pattern);
                let probe = crate::arch::probe_read(USER_VA).map_err(|r| r.cause);
                if SMAP_ENABLED.load(Ordering::Relaxed) {
                    kassert_eq!(
                        probe,
                        Err(TrapCause::PageFault {
                            addr: USER_VA,
                            write: false,
                            exec: false
                        })
                    );
                } else {
                    kprint!("(no SMAP on this CPU: kernel reads of user pages not checked) ");
                    kassert_eq!(probe, Ok(pattern[0]));
                }
                // A non-canonical source faults (#GP) at its first byte.
                let bad = 0x8000_0000_0000_0000usize;
                // SAFETY: as above.
                let r = unsafe { crate::arch::user_copy(back.as_mut_ptr(), bad as *const u8, 4) };
                kassert_eq!(r, Err(bad));
                Ok(())
            })
        }
    );

    crate::ktest!(
        fn kernel_image_layout_covers_the_image_but_the_stack_guards() {
            // That each section is mapped as described is checked on every
            // architecture (`arch::tests`); here that the sections
            // cover the whole image except exactly the holes: the boot
            // CPU's guard pages and the other CPUs' stacks.
            let layout = kernel_image_layout();
            let tree = current_kernel_tree();
            let mem = KernelTables;
            let start = (&raw const __kernel_start) as usize;
            let end = (&raw const __kernel_end) as usize;
            let mut at = start;
            let mut holes = image_holes().into_iter();
            for (range, _) in &layout {
                if range.start != at {
                    let hole = holes.next();
                    kassert_eq!(Some(at..range.start), hole);
                }
                // In 4 KiB pages.
                for va in range.clone().step_by(4096) {
                    let got = tree.translate(&mem, va);
                    kassert!(
                        got.is_some_and(|m| m.size == PageSize::Size4K),
                        "{:#x} is mapped as {:?}",
                        va,
                        got
                    );
                }
                at = range.end;
            }
            kassert_eq!(at, end);
            kassert_eq!(holes.next(), None);
            for s in kernel_stacks() {
                kassert_eq!(tree.translate(&mem, s.guard), None);
            }
            Ok(())
        }
    );

    crate::ktest!(
        fn paging_features_are_consistent() {
            let pcid = PCID_ENABLED.load(Ordering::Relaxed);
            kassert_eq!(asid_count(), if pcid { 4096 } else { 1 });
            kassert!(Cr0::read_raw() & CR0_WP != 0);
            kassert!(device_windows().is_empty());
            // Reloading the kernel root is checked on every architecture
            // (`arch::tests`); here that CR3 holds it.
            kassert_eq!(read_cr3() & CR3_ADDR_MASK, kernel_root());
            // A kernel page (global: `invlpg` drops it for every PCID).
            invlpg(super::super::phys_to_virt(0x1000));
            kassert!(crate::arch::probe_read(super::super::phys_to_virt(0x1000)).is_ok());
            Ok(())
        }
    );
}

#[cfg(feature = "bench")]
mod benches {
    use super::*;
    use crate::mm::KernelTables;
    use crate::mm::frame::ZoneRequest;

    crate::kbench!(
        fn user_map_unmap_4k(iters: u64) {
            // Includes making and destroying the tree (4 tables) once per
            // batch of `iters`.
            let mut mem = KernelTables;
            let Some(mut tree) = test_user_tree(&mut mem) else {
                return;
            };
            if let Some(frame) = crate::mm::alloc_frames(0, ZoneRequest::Any) {
                // SAFETY: `tree` shares the kernel half of the kernel root
                // and is unloaded below before it is destroyed.
                unsafe { load_user_root(tree.root(), 1, true) };
                for _ in 0..iters {
                    let _ = tree.map(
                        &mut mem,
                        TEST_USER_VA,
                        frame,
                        PageSize::Size4K,
                        Attr::USER | Attr::WRITE,
                    );
                    let _ = tree.unmap(&mut mem, TEST_USER_VA);
                    flush_page(1, TEST_USER_VA);
                }
                unload_user_root();
                let _ = crate::mm::free_frames(frame, 0);
            }
            tree.destroy(&mut mem, 0..KERNEL_ROOT_ENTRIES.start);
        },
        iters = 1000
    );
}

//! In-kernel tests of the architecture contract, written once and run on
//! every architecture: they reach the hardware only through the contract's
//! names (`crate::arch::NAME`, the list in `arch/mod.rs`) and the portable
//! page-table code, and take every architecture-specific expectation (which
//! register holds what, where TLS lives) from the contract's own methods.
//! Checks that need architecture-internal names or values stay next to the
//! architecture's code; they may borrow [`with_user_page`] from here.
//!
//! Invariant: each test leaves the machine as it found it (no user tree
//! loaded, every frame it took freed, the FP/SIMD and TLS registers
//! restored), even when an assertion fails half-way.

use crate::arch::{
    FpuState, KERNEL_ROOT_ENTRIES, PageFormat, UserRegs, asid_count, device_windows, flush_all,
    flush_page, in_stack_guard, kernel_image_layout, kernel_root, kernel_virt_to_phys,
    load_kernel_root, load_tls, load_user_root, max_page_size, phys_to_virt, probe_read, save_tls,
    unload_user_root, user_copy,
};
use crate::ktest::{TestFailed, TestResult};
use crate::mm::frame::ZoneRequest;
use crate::mm::paging::{Attr, ENTRIES, MapError, PageSize, PageTable};
use crate::mm::{KernelTables, alloc_frames, frame_stats, free_frames};
use crate::trap::TrapCause;
use core::sync::atomic::{AtomicU64, Ordering};

/// The page size every architecture maps with.
const PAGE: usize = 4096;

/// A page-aligned user address for the tests, in the lower half on every
/// architecture and mapped by nothing else while the tests run.
pub(super) const USER_VA: usize = 0x40_0000;

/// A user address no test maps.
const UNMAPPED_USER_VA: usize = 0x80_0000;

/// A read of `addr` that faulted, as `probe_read` reports it.
fn read_fault(addr: usize) -> Result<u8, TrapCause> {
    Err(TrapCause::PageFault {
        addr,
        write: false,
        exec: false,
    })
}

/// `probe_read` with only the fault's cause.
fn probe(addr: usize) -> Result<u8, TrapCause> {
    probe_read(addr).map_err(|r| r.cause)
}

/// Free frames now, to check that a test gave back what it took.
fn free_frame_count() -> Option<u64> {
    frame_stats().map(|s| s.1)
}

/// ASID `want` if the CPU has that many, else 0 (every switch flushes).
fn test_asid(want: u16) -> u16 {
    if usize::from(want) < asid_count() {
        want
    } else {
        0
    }
}

/// The kernel's page tables, for reading.
fn kernel_tree() -> PageTable<PageFormat> {
    // SAFETY: the kernel root is a valid tree of frames reached through the
    // direct map (`KernelTables`); the tests only read it.
    unsafe { PageTable::<PageFormat>::from_root(kernel_root()) }
}

/// The root entries a user tree owns (the rest are the kernel's, shared).
fn user_root_entries() -> core::ops::Range<usize> {
    if KERNEL_ROOT_ENTRIES.is_empty() {
        0..ENTRIES
    } else {
        0..KERNEL_ROOT_ENTRIES.start
    }
}

/// Runs `body` with a fresh user tree loaded under `asid` (flushed first):
/// the kernel half shared, and one fresh frame mapped at `va` (user,
/// writable), passed to `body` with the tree. Afterwards the user tree is
/// unloaded and destroyed and the frame freed, even when `body` failed or
/// unmapped the page itself.
pub(super) fn with_user_page(
    va: usize,
    asid: u16,
    body: impl FnOnce(&mut PageTable<PageFormat>, u64) -> TestResult,
) -> TestResult {
    let mut mem = KernelTables;
    let Ok(mut tree) = PageTable::<PageFormat>::new(&mut mem) else {
        kassert!(false, "no frame for a user root table");
        return Ok(());
    };
    tree.share_root_entries(&mut mem, &kernel_tree(), KERNEL_ROOT_ENTRIES);
    let frame = alloc_frames(0, ZoneRequest::Any);
    let result = match frame {
        Some(frame) => match tree.map(
            &mut mem,
            va,
            frame,
            PageSize::Size4K,
            Attr::USER | Attr::WRITE,
        ) {
            Ok(()) => {
                // SAFETY: the tree shares the kernel half and stays alive
                // until after `unload_user_root` below; `asid` is flushed.
                unsafe { load_user_root(tree.root(), asid, true) };
                body(&mut tree, frame)
            }
            Err(e) => {
                kprintln!("\n    map failed: {e:?}");
                Err(TestFailed)
            }
        },
        None => {
            kprintln!("\n    no frame for the user page");
            Err(TestFailed)
        }
    };
    unload_user_root();
    let _ = tree.unmap(&mut mem, va);
    flush_page(asid, va);
    tree.destroy(&mut mem, user_root_entries());
    // Drop any walk-cache entries of the freed tables.
    flush_all();
    if let Some(frame) = frame {
        kassert_eq!(free_frames(frame, 0), Ok(()));
    }
    result
}

/// Copies `src` to user address `dst`.
fn copy_to_user(dst: usize, src: &[u8]) -> Result<(), usize> {
    // SAFETY: `dst` is a user address (faults are caught and returned);
    // `src` is a kernel buffer valid for its length.
    unsafe { user_copy(dst as *mut u8, src.as_ptr(), src.len()) }
}

/// Copies from user address `src` into `dst`.
fn copy_from_user(dst: &mut [u8], src: usize) -> Result<(), usize> {
    // SAFETY: `src` is a user address (faults are caught and returned);
    // `dst` is a kernel buffer valid for writing its length.
    unsafe { user_copy(dst.as_mut_ptr(), src as *const u8, dst.len()) }
}

/// The byte at offset `offset` of frame `frame`, through the direct map.
fn frame_byte(frame: u64, offset: usize) -> u8 {
    // SAFETY: the frame belongs to the test and the direct map covers it.
    unsafe { ((phys_to_virt(frame) + offset) as *const u8).read_volatile() }
}

crate::ktest!(
    fn user_regs_new_sets_pc_and_first_argument() {
        let r = UserRegs::new(0x40_1000, 0x7fff_ffff_0000, 0x20_0000);
        kassert_eq!(r.pc(), 0x40_1000);
        // `arg` is in the first argument register, which is also the first
        // system-call argument; everything else starts at zero.
        kassert_eq!(r.syscall_args(), (0, [0x20_0000, 0, 0, 0, 0, 0]));
        kassert_eq!(r.clone(), r);
        kassert!(r != UserRegs::default());
        kassert!(UserRegs::new(0x40_2000, 0x7fff_ffff_0000, 0x20_0000) != r);
        kassert!(UserRegs::new(0x40_1000, 0x7fff_fffe_0000, 0x20_0000) != r);
        Ok(())
    }
);

crate::ktest!(
    fn user_regs_set_result_writes_one_system_call_register() {
        let mut r = UserRegs::new(0x40_1000, 0x7fff_ffff_0000, 0x20_0000);
        let slots = |r: &UserRegs| {
            let (number, args) = r.syscall_args();
            let mut all = [number; 7];
            all[1..].copy_from_slice(&args);
            all
        };
        let before = slots(&r);
        r.set_result(-3);
        let after = slots(&r);
        // The result register is one of the system-call registers (RAX is
        // the number on x86, x0/a0 the first argument elsewhere): exactly
        // that one changed.
        let changed: arrayvec::ArrayVec<usize, 7> =
            (0..7).filter(|&i| before[i] != after[i]).collect();
        kassert_eq!(changed.len(), 1, "set_result changes one register");
        let slot = changed[0];
        kassert_eq!(after[slot], (-3isize) as usize);
        for value in [42, isize::MAX, isize::MIN, 0] {
            r.set_result(value);
            let now = slots(&r);
            kassert_eq!(now[slot], value as usize);
            kassert!((0..7).filter(|&i| i != slot).all(|i| now[i] == before[i]));
        }
        kassert_eq!(r.pc(), 0x40_1000);
        Ok(())
    }
);

crate::ktest!(
    fn user_regs_set_tls_touches_no_other_register() {
        let r = UserRegs::new(0x40_1000, 0x7fff_ffff_0000, 0x20_0000);
        let mut a = r.clone();
        a.set_tls(0x1234);
        kassert_eq!(a.pc(), r.pc());
        kassert_eq!(a.syscall_args(), r.syscall_args());
        // The last value set wins, whatever came before.
        a.set_tls(0x7fff_1234_5000);
        let mut b = r.clone();
        b.set_tls(0x7fff_1234_5000);
        kassert_eq!(a, b);
        Ok(())
    }
);

crate::ktest!(
    fn tls_base_round_trips_in_its_register_or_in_user_regs() {
        const VALUE: usize = 0x7fff_1234_5670;
        let mut probe_regs = UserRegs::default();
        probe_regs.set_tls(VALUE);
        if probe_regs != UserRegs::default() {
            // The TLS base is a saved user register (RISC-V `tp`): there is
            // no other register, so saving hands back what the caller has
            // and loading changes nothing.
            kassert_eq!(save_tls(0x1234), 0x1234);
            load_tls(VALUE);
            kassert_eq!(save_tls(0x99), 0x99);
        } else {
            // A register outside `UserRegs`: saving reads it, whatever the
            // caller's value.
            let old = save_tls(0);
            load_tls(VALUE);
            kassert_eq!(save_tls(0), VALUE);
            kassert_eq!(save_tls(0x99), VALUE);
            load_tls(old);
            kassert_eq!(save_tls(0x99), old);
        }
        Ok(())
    }
);

crate::ktest!(
    fn fpu_state_save_and_restore_round_trip() {
        let mut outer = FpuState::default();
        outer.save();
        // The default state can be loaded, and what is saved then loads
        // and saves back the same. (Only states that were saved are
        // compared: a save may fill in what `Default` leaves open, such as
        // x86's MXCSR_MASK.)
        FpuState::default().restore();
        let mut zero = FpuState::default();
        zero.save();
        zero.restore();
        let mut zero_again = FpuState::default();
        zero_again.save();
        kassert_eq!(zero_again, zero);
        // Restoring a saved state and saving again gives the same state,
        // however often.
        outer.restore();
        let mut again = FpuState::default();
        again.save();
        kassert_eq!(again, outer);
        again.restore();
        again.save();
        kassert_eq!(again, outer);
        // Saving does not change the registers.
        let mut twice = FpuState::default();
        twice.save();
        kassert_eq!(twice, outer);
        outer.restore();
        Ok(())
    }
);

crate::ktest!(
    fn user_copy_between_kernel_buffers() {
        let src: [u8; 19] = core::array::from_fn(|i| i as u8 + 1);
        let mut dst = [0u8; 19];
        // SAFETY: both are kernel buffers of 19 bytes (user-access
        // protection guards only user pages, so opening it changes nothing
        // for them).
        let r = unsafe { user_copy(dst.as_mut_ptr(), src.as_ptr(), src.len()) };
        kassert_eq!(r, Ok(()));
        kassert_eq!(dst, src);
        // SAFETY: as above, with no bytes.
        let r = unsafe { user_copy(dst.as_mut_ptr(), src.as_ptr(), 0) };
        kassert_eq!(r, Ok(()));
        Ok(())
    }
);

crate::ktest!(
    fn user_copy_honours_user_mappings() {
        let free_before = free_frame_count();
        with_user_page(USER_VA, test_asid(1), |tree, frame| {
            let mut mem = KernelTables;
            let pattern: [u8; 256] =
                core::array::from_fn(|i| (i as u8).wrapping_mul(7).wrapping_add(3));
            let mut back = [0u8; 256];
            // Round trips: aligned (words, then bytes) and unaligned
            // (bytes), and of nothing.
            for (offset, len) in [(0x100, 61), (0x203, 61), (101, 100), (1024, 256)] {
                let va = USER_VA + offset;
                kassert_eq!(copy_to_user(va, &pattern[..len]), Ok(()));
                back.fill(0);
                kassert_eq!(copy_from_user(&mut back[..len], va), Ok(()));
                kassert!(back[..len] == pattern[..len], "copy at +{:#x}", offset);
                // It is the frame's memory.
                kassert_eq!(frame_byte(frame, offset + 5), pattern[5]);
            }
            kassert_eq!(copy_from_user(&mut back[..0], USER_VA), Ok(()));

            // Running off the end of the page stops at its first unmapped
            // byte; what came before it was copied.
            let end = USER_VA + PAGE;
            let mut sixteen = [0u8; 16];
            kassert_eq!(copy_from_user(&mut sixteen, end - 8), Err(end));
            for (i, &b) in sixteen[..8].iter().enumerate() {
                kassert_eq!(b, frame_byte(frame, PAGE - 8 + i));
            }
            kassert_eq!(copy_from_user(&mut back[..5], end - 3), Err(end));
            kassert_eq!(copy_to_user(end - 5, &pattern[..61]), Err(end));
            // An unmapped page: the first byte faults.
            kassert_eq!(
                copy_from_user(&mut back[..8], UNMAPPED_USER_VA),
                Err(UNMAPPED_USER_VA)
            );
            kassert_eq!(
                copy_to_user(UNMAPPED_USER_VA + 3, &pattern[..8]),
                Err(UNMAPPED_USER_VA + 3)
            );

            // A read-only user page is read-only for the kernel too.
            kassert_eq!(
                tree.protect(&mut mem, USER_VA, Attr::USER),
                Ok(PageSize::Size4K)
            );
            flush_page(test_asid(1), USER_VA);
            kassert_eq!(copy_to_user(USER_VA + 8, &pattern[..8]), Err(USER_VA + 8));
            kassert_eq!(copy_from_user(&mut back[..8], USER_VA + 1024), Ok(()));
            kassert!(back[..8] == pattern[..8]);

            // Unmapped (and flushed): every access faults.
            kassert_eq!(tree.unmap(&mut mem, USER_VA), Ok((frame, PageSize::Size4K)));
            flush_page(test_asid(1), USER_VA);
            kassert_eq!(
                copy_from_user(&mut back[..8], USER_VA + 1024),
                Err(USER_VA + 1024)
            );
            kassert_eq!(copy_to_user(USER_VA, &pattern[..8]), Err(USER_VA));
            kassert_eq!(tree.unmap(&mut mem, USER_VA), Err(MapError::NotMapped));
            Ok(())
        })?;
        // With no user tree loaded, nothing in the lower half is reachable.
        let mut back = [0u8; 8];
        kassert_eq!(copy_from_user(&mut back, USER_VA), Err(USER_VA));
        kassert_eq!(free_frame_count(), free_before);
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
        let free_before = free_frame_count();
        // Two trees map the same address to different frames; switching
        // back to the first without a flush (when ASIDs exist) must see its
        // own page again.
        let asids = if count > 2 { [1, 2] } else { [0, 0] };
        let read = || {
            let mut b = [0u8; 1];
            copy_from_user(&mut b, USER_VA).map(|()| b[0])
        };
        with_user_page(USER_VA, asids[0], |first, frame_a| {
            // SAFETY: the frame is the test's and direct-mapped.
            unsafe { (phys_to_virt(frame_a) as *mut u8).write_volatile(0xaa) };
            kassert_eq!(read(), Ok(0xaa));
            let first_root = first.root();
            with_user_page(USER_VA, asids[1], |_, frame_b| {
                // SAFETY: as above.
                unsafe { (phys_to_virt(frame_b) as *mut u8).write_volatile(0xbb) };
                kassert_eq!(read(), Ok(0xbb));
                // SAFETY: `first` is alive and shares the kernel half;
                // without distinct ASIDs, flush.
                unsafe { load_user_root(first_root, asids[0], asids[0] == asids[1]) };
                kassert_eq!(read(), Ok(0xaa));
                Ok(())
            })
        })?;
        kassert_eq!(free_frame_count(), free_before);
        Ok(())
    }
);

crate::ktest!(
    fn kernel_image_is_mapped_as_its_layout_says() {
        let kernel = kernel_tree();
        let mem = KernelTables;
        let layout = kernel_image_layout();
        kassert!(!layout.is_empty());
        let mut previous_end = 0;
        for (range, attr) in &layout {
            kassert!(range.start.is_multiple_of(PAGE) && range.end.is_multiple_of(PAGE));
            kassert!(previous_end <= range.start && range.start < range.end);
            kassert!(!attr.contains(Attr::WRITE | Attr::EXEC));
            for va in range.clone().step_by(PAGE) {
                let m = kernel.translate(&mem, va);
                kassert_eq!(
                    (va, m.map(|m| (m.pa, m.attr))),
                    (va, Some((kernel_virt_to_phys(va), *attr)))
                );
            }
            previous_end = range.end;
        }
        // Text is not writable, data is not executable: this function, a
        // read-only table, a writable static and the stack.
        static READ_ONLY: [u8; 4] = *b"keel";
        static WRITABLE: AtomicU64 = AtomicU64::new(1);
        let local = 0u8;
        let cases = [
            (
                kernel_image_is_mapped_as_its_layout_says as *const () as usize,
                Attr::EXEC,
            ),
            (READ_ONLY.as_ptr() as usize, Attr::empty()),
            (&raw const WRITABLE as usize, Attr::WRITE),
            (&raw const local as usize, Attr::WRITE),
        ];
        for (va, want) in cases {
            let attr = kernel.translate(&mem, va).map(|m| m.attr);
            kassert_eq!((va, attr), (va, Some(want | Attr::GLOBAL)));
        }
        WRITABLE.store(2, Ordering::Relaxed);
        // The direct map is writable, never executable, and covers the
        // device windows (with device attributes where the page-table
        // format has them: checked per architecture).
        let direct = phys_to_virt(kernel_virt_to_phys(&raw const WRITABLE as usize));
        let attr = kernel.translate(&mem, direct).map(|m| m.attr);
        kassert!(
            attr.is_some_and(|a| a.contains(Attr::WRITE) && !a.contains(Attr::EXEC)),
            "direct map of data: {:?}",
            attr
        );
        for &(pa, _) in device_windows() {
            let m = kernel.translate(&mem, phys_to_virt(pa));
            kassert!(
                m.is_some_and(|m| m.pa == pa
                    && m.attr.contains(Attr::WRITE)
                    && !m.attr.contains(Attr::EXEC)),
                "device window {:#x}: {:?}",
                pa,
                m
            );
        }
        Ok(())
    }
);

crate::ktest!(
    fn direct_map_aliases_the_kernel_image_and_the_identity_map_is_gone() {
        static MARKER: [u8; 4] = *b"Keel";
        let virt = core::ptr::addr_of!(MARKER[2]) as usize;
        let phys = kernel_virt_to_phys(virt);
        kassert_eq!(probe(phys_to_virt(phys)), Ok(b'e'));
        kassert_eq!(probe(phys_to_virt(phys + 1)), Ok(b'l'));
        // The image's physical addresses were identity-mapped during boot
        // only.
        let identity = phys as usize;
        kassert_eq!(probe(identity), read_fault(identity));
        Ok(())
    }
);

crate::ktest!(
    fn kernel_root_reloads_and_tlb_flushes_keep_the_kernel_running() {
        static BYTE: u8 = 0x3c;
        let root = kernel_root();
        // SAFETY: the current kernel root maps the kernel.
        unsafe { load_kernel_root(root) };
        kassert_eq!(kernel_root(), root);
        flush_all();
        kassert_eq!(probe(&raw const BYTE as usize), Ok(0x3c));
        kassert_eq!(
            probe(phys_to_virt(kernel_virt_to_phys(&raw const BYTE as usize))),
            Ok(0x3c)
        );
        kassert!(max_page_size() >= PageSize::Size2M);
        Ok(())
    }
);

crate::ktest!(
    fn the_running_stack_has_a_recognised_guard_below_it() {
        let local = 0u8;
        let sp = &raw const local as usize;
        kassert!(!in_stack_guard(sp));
        // The lowest mapped page of this stack: at most a few dozen pages
        // down.
        let mut bottom = sp & !(PAGE - 1);
        let mut pages = 0;
        while probe(bottom - PAGE).is_ok() {
            bottom -= PAGE;
            pages += 1;
            kassert!(pages < 256, "no guard within 1 MiB below {:#x}", sp);
            kassert!(!in_stack_guard(bottom));
        }
        // Below it: the guard, which faults and is recognised.
        for addr in [bottom - PAGE, bottom - 8, bottom - 1] {
            kassert_eq!(probe(addr), read_fault(addr));
            kassert!(in_stack_guard(addr), "{:#x} below the stack", addr);
        }
        kassert!(!in_stack_guard(bottom));
        kassert!(probe(bottom).is_ok());
        Ok(())
    }
);

crate::ktest!(
    fn the_clock_has_a_plausible_rate_and_runs_forward() {
        let hz = crate::time::hz();
        kassert!(
            (1_000_000..=10_000_000_000).contains(&hz),
            "clock rate {hz} Hz"
        );
        let (a, ta) = (crate::arch::clock_ticks(), crate::time::now_ns());
        let mut spin = 0u64;
        while crate::arch::clock_ticks() == a {
            spin += 1;
            kassert!(spin < 100_000_000, "the clock counter does not advance");
        }
        let tb = crate::time::now_ns();
        kassert!(tb >= ta, "now_ns went back from {ta} to {tb}");
        Ok(())
    }
);

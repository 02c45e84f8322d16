//! Starting the other CPUs: their stacks, PSCI `CPU_ON`, and their first
//! Rust code.
//!
//! CPU `i` (1 ≤ i < `MAX_CPUS`) runs on a 48 KiB kernel stack starting at
//! `AP_STACKS + i * 128 KiB` (an even multiple of 64 KiB, as the vector
//! entry's stack check needs, see `entry::KERNEL_STACK_SHIFT`), with the
//! unmapped 64 KiB below it as its guard, and a 12 KiB overflow stack
//! above a 4 KiB guard over it, both in one 64 KiB block of frames that
//! [`cpu_start`] maps into the kernel's tables the first time it starts
//! that index. Only the boot CPU, one CPU at a time, calls it.
//!
//! The started CPU enters `keel_ap_start` (`entry`) at the same exception
//! level the boot CPU did, MMU off, `x0` = its index, and reaches
//! `keel_aarch64_ap_main` on its own stack with TPIDR_EL1 = its per-CPU
//! block and the kernel's page tables and trap vector loaded.

use super::entry::{self, KERNEL_STACK_SHIFT};
use crate::bootinfo::{BootInfo, MAX_CPUS, Psci};
use crate::mm::kref::ensure;
use crate::mm::paging::{Attr, PageSize, PageTable};
use crate::mm::{KernelTables, alloc_frames, frame::ZoneRequest};
use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Where the started CPUs' stacks are mapped: the last GiB of the address
/// space, which nothing else uses.
const AP_STACKS: usize = 0xFFFF_FFFF_C000_0000;
const AP_STACK_SIZE: usize = 48 << 10;
const AP_OVERFLOW_SIZE: usize = 12 << 10;
/// The 64 KiB above each stack's start hold its stack, a guard page and
/// its overflow stack; the 64 KiB below it are its guard.
const STACK_BLOCK: usize = 1 << KERNEL_STACK_SHIFT;
const _: () = assert!(AP_STACK_SIZE + 4096 + AP_OVERFLOW_SIZE == STACK_BLOCK);

/// CPU indices whose stacks are mapped (bit per index).
static MAPPED: AtomicU32 = AtomicU32::new(0);

/// The kernel's root table (TTBR1) for the CPU being started; read by
/// `keel_ap_start` with the MMU off.
#[unsafe(no_mangle)]
static KEEL_AP_TTBR1: AtomicU64 = AtomicU64::new(0);

/// PSCI `CPU_ON`, SMC64 calling convention.
const PSCI_CPU_ON: u64 = 0xC400_0003;

/// CPU `index`'s `(guard, stack)` pairs: its kernel and overflow stacks.
fn layout(index: usize) -> [(Range<usize>, Range<usize>); 2] {
    let bottom = AP_STACKS + index * 2 * STACK_BLOCK;
    let top = bottom + AP_STACK_SIZE;
    let overflow = bottom + STACK_BLOCK - AP_OVERFLOW_SIZE;
    [
        (bottom - STACK_BLOCK..bottom, bottom..top),
        (top..overflow, overflow..bottom + STACK_BLOCK),
    ]
}

/// The mapped stacks of the started CPUs, as `(guard, stack)`.
pub fn ap_stacks() -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    let mapped = MAPPED.load(Ordering::Acquire);
    (1..MAX_CPUS)
        .filter(move |i| mapped & (1 << i) != 0)
        .flat_map(layout)
}

/// Maps CPU `index`'s stacks (once) and records them in its block.
fn map_stacks(index: usize) -> Result<(), &'static str> {
    if MAPPED.load(Ordering::Acquire) & (1 << index) != 0 {
        return Ok(());
    }
    let [(_, stack), (_, overflow)] = layout(index);
    let frames = alloc_frames(4, ZoneRequest::Any).ok_or("no memory for its stacks")?;
    // SAFETY: the kernel's root is a tree of frames reached through
    // `KernelTables`; only the boot CPU changes it, and it is here.
    let mut tree = unsafe { PageTable::<super::PageFormat>::from_root(super::kernel_root()) };
    let attr = Attr::WRITE | Attr::GLOBAL;
    for va in stack.clone().chain(overflow.clone()).step_by(4096) {
        let pa = frames + (va - stack.start) as u64;
        tree.map(&mut KernelTables, va, pa, PageSize::Size4K, attr)
            .map_err(|_| "cannot map its stacks")?;
    }
    super::user::set_stacks(index, stack.end, overflow.end);
    MAPPED.fetch_or(1 << index, Ordering::AcqRel);
    Ok(())
}

/// Starts the CPU whose MPIDR affinity is `hw_id` as CPU `index` through
/// PSCI `CPU_ON`; does not wait for it.
pub fn cpu_start(info: &BootInfo<'_>, index: usize, hw_id: u64) -> Result<(), &'static str> {
    ensure((1..MAX_CPUS).contains(&index), "CPU index out of range")?;
    let conduit = info.psci.ok_or("the device tree names no PSCI conduit")?;
    map_stacks(index)?;
    KEEL_AP_TTBR1.store(super::kernel_root(), Ordering::Relaxed);
    unsafe extern "C" {
        fn keel_ap_start();
    }
    let entry = entry::image_virt_to_phys(keel_ap_start as *const () as usize);
    let args = [PSCI_CPU_ON, hw_id, entry, index as u64];
    // SAFETY: cleaning a cache line to the point of coherency only writes
    // it back (the new CPU reads `KEEL_AP_TTBR1` with its MMU and caches
    // off); the barrier completes that and every store it will read (its
    // block, its stacks' page tables) before the call.
    unsafe {
        asm!(
            "dc cvac, {a}",
            "dsb ish",
            a = in(reg) (&raw const KEEL_AP_TTBR1) as usize,
            options(nostack, preserves_flags),
        );
    }
    // PSCI's codes: -1 not supported, -2 invalid parameters, -3 denied,
    // -4 already on, -5 on pending, -6 internal failure, -9 bad address.
    match psci_call(conduit, args) as i64 {
        0 => Ok(()),
        e => {
            kprintln!("smp: PSCI CPU_ON of {hw_id:#x} returned {e}");
            Err("PSCI CPU_ON failed")
        }
    }
}

/// An SMCCC call (function id and three arguments) through `conduit`;
/// returns x0.
fn psci_call(conduit: Psci, [fid, a1, a2, a3]: [u64; 4]) -> u64 {
    let ret;
    macro_rules! call {
        ($insn:literal) => {
            asm!(
                $insn,
                inlateout("x0") fid => ret,
                inlateout("x1") a1 => _,
                inlateout("x2") a2 => _,
                inlateout("x3") a3 => _,
                clobber_abi("C"),
                options(nostack),
            )
        };
    }
    // SAFETY: a firmware call, which changes no memory of ours and no
    // register but x0–x17 (SMCCC).
    unsafe {
        match conduit {
            Psci::Hvc => call!("hvc #0"),
            Psci::Smc => call!("smc #0"),
        }
    }
    ret
}

/// The first Rust code on a started CPU (from `keel_ap_start`), on its
/// own stack with interrupts masked.
#[unsafe(no_mangle)]
extern "C" fn keel_aarch64_ap_main(index: usize) -> ! {
    entry::init_cpu();
    if let Err(why) = super::gic::init_cpu() {
        kprintln!("smp: cpu {index}: {why}");
        super::halt()
    }
    crate::smp::cpu_main(index)
}

crate::ktest!(
    fn started_cpus_have_guarded_stacks() {
        for (guard, stack) in ap_stacks() {
            kassert!(super::in_stack_guard(guard.end - 8) && !super::in_stack_guard(stack.start));
            kassert!(super::probe_read(guard.end - 8).is_err());
            kassert!(
                super::probe_read(stack.start).is_ok() && super::probe_read(stack.end - 1).is_ok()
            );
            kassert!(stack.start & STACK_BLOCK == 0 && (stack.end - 1) & STACK_BLOCK == 0);
        }
        Ok(())
    }
);

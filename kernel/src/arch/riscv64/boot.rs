//! RISC-V boot: the `_start` entry OpenSBI jumps to, the boot page tables,
//! the switch to the higher half, the device-tree hand-off to
//! [`crate::boot::kernel_main`], and the start of the other harts
//! ([`cpu_start`], through `keel_ap_entry`).
//!
//! Entry state (OpenSBI 1.1 `fw_dynamic`/`fw_jump` on QEMU virt, and SBI
//! HSM `hart_start` alike): S-mode, MMU off (`satp` = 0), `a0` = hart id,
//! `a1` = physical address of the device tree (`_start`) or the CPU index
//! (`keel_ap_entry`, the `opaque` of `hart_start`), interrupts off. Until
//! the jump to the higher half the code runs at its physical address and
//! uses only PC-relative addressing (`lla`), so every symbol it names
//! resolves to its physical address. OpenSBI may boot the kernel on any
//! hart: that one is CPU 0 whatever its hart id.
//!
//! Invariants established before any Rust code runs on a CPU:
//! - exactly one hart (the first to claim `BOOT_HART_CLAIMED`) enters
//!   through `_start` and continues; any other hart that enters there
//!   parks in a `wfi` loop with interrupts off. The others enter through
//!   `keel_ap_entry`, which shares every step below except the claim, the
//!   `.bss` clearing and the building of the boot tables;
//! - `sstatus.FS` = Off: the kernel never uses the FP registers, which
//!   belong to user threads (see `user`; FP instructions in the kernel
//!   trap as illegal);
//! - `.bss` is zero (cleared by the boot hart);
//! - `satp` is Sv48 over the boot tables, or Sv39 where the Sv48 mode does
//!   not stick (or the kernel was built with the `sv39` feature, which
//!   tests that path on CPUs with Sv48): the first 4 GiB of physical space
//!   at [`super::DIRECT_MAP_BASE`] (RW, global), the 1 GiB holding the
//!   kernel at `0xFFFF_FFFF_8000_0000` (RWX, global), and the identity map
//!   of that GiB (not global) used for the switch. All three lie in one
//!   L1 table, which is the Sv39 root and, under Sv48, what root entries 0
//!   and 511 point to (the layout is Sv39's: the upper half is its top
//!   256 GiB). The boot tables are
//!   never changed again, so every hart takes the same way in; each CPU
//!   then moves to the kernel tree with a full TLB flush (`mm::init` on
//!   the boot CPU, `keel_riscv_main` on the others), which maps nothing in
//!   the lower half;
//! - `tp` = this CPU's `PerCpu` block (`user::CPUS[index]`), `sp` the top
//!   of its kernel stack (the boot stack on CPU 0; `cpu_start` set up the
//!   others' blocks), `s0` = `ra` = 0 so frame-pointer walks stop there,
//!   `stvec` points at the trap entry, `sscratch` = 0 (the "in the kernel"
//!   convention of the trap entry), and `sstatus.SUM` = 0 (no kernel
//!   access to user pages outside `user_copy`).
//!
//! `keel_riscv_main` then, on the boot CPU, replaces the gigapage over the
//! image with per-section 4 KiB mappings (`mm::init`):
//! text RX, read-only data R, data RW, and the stack guard pages unmapped.
//! On another CPU it enables that CPU's interrupts and calls
//! [`crate::smp::cpu_main`].
//!
//! A CPU with neither (the `satp` writes do not stick) gets a clear
//! message on the UART and QEMU exits with `EXIT_BOOT_ERROR`.

use super::{__kernel_end, __kernel_start, KERNEL_VIRT_OFFSET};
use crate::bootinfo::{BootInfo, BootInfoError, MemoryRegion, RegionKind, dtb};
use keel_abi::harness::EXIT_BOOT_ERROR;

// Page-table entry bits (privileged spec, Sv39/48/57).
const PTE_V: u64 = 1 << 0;
const PTE_R: u64 = 1 << 1;
const PTE_W: u64 = 1 << 2;
const PTE_X: u64 = 1 << 3;
const PTE_G: u64 = 1 << 5;
const PTE_A: u64 = 1 << 6;
const PTE_D: u64 = 1 << 7;
/// Direct-map gigapages: data only.
const PTE_DIRECT: u64 = PTE_V | PTE_R | PTE_W | PTE_A | PTE_D | PTE_G;
/// The kernel image's gigapage, used by each CPU only until it moves to the
/// kernel tree, which maps the image per section (W^X, guard pages left
/// out).
const PTE_KERNEL: u64 = PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D | PTE_G;
/// The identity gigapage (not global: only the switch to the higher half
/// uses it).
const PTE_IDENTITY: u64 = PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D;

/// Physical base of the gigapage that holds the kernel image.
const KERNEL_PHYS_BASE: u64 = 0x8000_0000;
const GIB: u64 = 1 << 30;

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .balign 4
    .globl _start
_start:
    .option push
    .option norelax
    .option norvc
    .option arch, +a
    # Linux RISC-V Image header (boot-image-header.rst), for U-Boot's booti
    # (load at RAM base + text_offset, a0 = hart id, a1 = device tree).
    j       0f                      # code0 (code1 is 0)
    .word   0
    .dword  0x200000, KERNEL_IMAGE_SIZE, 0 # text_offset, image_size, flags
    .word   2, 0                    # version 0.2, res1
    .dword  0
    .ascii  "RISCV\0\0\0RSC\x05"    # magic, magic2
    .word   0
0:  mv      s2, a1                  # device tree (physical)
    li      s3, 0                   # CPU index
    j       1f

    # hart_start's entry for the other CPUs (`cpu_start`).
    .globl keel_ap_entry
keel_ap_entry:
    li      s2, 0
    mv      s3, a1                  # CPU index
1:  mv      s1, a0                  # hart id
    csrw    sie, zero
    csrci   sstatus, 2              # SIE = 0
    li      t0, {sstatus_fs_mask} | {sstatus_sum}
    csrc    sstatus, t0             # FP unit off, no access to user pages
    bnez    s3, .Lpaging            # the boot hart built the tables

    # The first hart to arrive boots; any other parks.
    lla     t0, keel_boot_hart_claimed
    li      t1, 1
    amoswap.w.aq t1, t1, (t0)
    bnez    t1, .Lpark

    # Zero .bss (8-byte aligned bounds, see linker.ld).
    lla     t0, __bss_start
    lla     t1, __bss_end
1:  bgeu    t0, t1, 2f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
2:
    # One L1 table: the Sv39 root, and under Sv48 both halves' L1 (root
    # entries 0 and 511): [2] identity, [256..259] direct map, [510] kernel.
    lla     t1, keel_boot_l1
    srli    t1, t1, 12
    slli    t1, t1, 10
    ori     t1, t1, {pte_v}
    lla     t2, keel_boot_l0
    sd      t1, 0(t2)
    lla     t2, keel_boot_l0 + 511 * 8
    sd      t1, 0(t2)

    # Direct map: physical [0, 4 GiB) as four RW gigapages.
    lla     t0, keel_boot_l1 + 256 * 8
    li      t1, {pte_direct}
    li      t2, {gib_pte_step}
    li      t3, 4
3:  sd      t1, 0(t0)
    add     t1, t1, t2
    addi    t0, t0, 8
    addi    t3, t3, -1
    bnez    t3, 3b

    # Kernel gigapage at 0xFFFF_FFFF_8000_0000 (L1 index 510) and the
    # identity gigapage at the same physical address (L1 index 2).
    lla     t0, keel_boot_l1 + 510 * 8
    li      t1, {pte_kernel}
    sd      t1, 0(t0)
    lla     t0, keel_boot_l1
    li      t1, {pte_identity}
    sd      t1, {id_index} * 8(t0)

    # Order the table stores before the walks, then enable Sv48, or Sv39
    # where the Sv48 mode does not stick (or the `sv39` build asks).
.Lpaging:
    sfence.vma
    .if {force_sv39} == 0
    lla     t0, keel_boot_l0
    li      t1, 9
    call    .Lsatp
    beqz    t2, .Lmapped
    .endif
    lla     t0, keel_boot_l1
    li      t1, 8
    call    .Lsatp
    bnez    t2, .Lno_paging

.Lmapped:
    # Jump to the higher-half alias of .Lhigh.
    li      t0, {virt_offset}
    lla     t1, .Lhigh
    add     t1, t1, t0
    jr      t1

.Lhigh:
    lla     tp, {cpus}
    slli    t0, s3, {cpu_size_log2}
    add     tp, tp, t0              # this CPU's PerCpu
    ld      sp, {cpu_kernel_sp}(tp)
    bnez    s3, 2f
    lla     sp, __boot_stack_top    # the boot CPU's block is set up in Rust
2:  lla     t0, {trap_entry}
    csrw    stvec, t0
    csrw    sscratch, zero
    li      s0, 0
    li      ra, 0
    mv      a0, s1
    mv      a1, s2
    mv      a2, s3
    call    {main}
    j       .Lpark

    # satp = mode t1 over the root at t0; t2 = 0 if the mode stuck.
.Lsatp:
    srli    t0, t0, 12
    slli    t2, t1, 60
    or      t0, t0, t2
    csrw    satp, t0
    sfence.vma
    csrr    t2, satp
    srli    t2, t2, 60
    sub     t2, t2, t1
    ret

.Lno_paging:
    # Still running physical with satp = Bare: UART and test device are
    # reachable at their physical addresses.
    lla     a0, .Lno_paging_msg
    li      t0, {uart_phys}
4:  lbu     t1, 0(a0)
    beqz    t1, 6f
5:  lbu     t2, 5(t0)               # LSR
    andi    t2, t2, 0x20            # THR empty
    beqz    t2, 5b
    sb      t1, 0(t0)
    addi    a0, a0, 1
    j       4b
6:  li      t0, {test_phys}
    li      t1, ({boot_error} << 16) | 0x3333
    sw      t1, 0(t0)

.Lpark:
    csrci   sstatus, 2
    wfi
    j       .Lpark
    .option pop

    .section .rodata.boot_msg, "a"
.Lno_paging_msg:
    .asciz "\r\nBOOT ERROR: this CPU supports neither Sv48 nor Sv39 paging (satp mode 9 or 8).\r\n"

    .section .data.boot_hart, "aw"
    .balign 4
keel_boot_hart_claimed:
    .word 0

    .section .bss.boot_page_tables, "aw", @nobits
    .balign 4096
keel_boot_l0:
    .space 4096
keel_boot_l1:
    .space 4096
    "#,
    trap_entry = sym super::traps::keel_trap_entry,
    main = sym keel_riscv_main,
    sstatus_fs_mask = const super::user::SSTATUS_FS_MASK,
    cpus = sym super::user::CPUS,
    cpu_size_log2 = const super::user::PER_CPU_SIZE_LOG2,
    cpu_kernel_sp = const core::mem::offset_of!(super::user::PerCpu, kernel_sp),
    sstatus_sum = const super::mm::SSTATUS_SUM,
    pte_v = const PTE_V,
    pte_direct = const PTE_DIRECT,
    pte_kernel = const PTE_KERNEL | ((KERNEL_PHYS_BASE >> 12) << 10),
    pte_identity = const PTE_IDENTITY | ((KERNEL_PHYS_BASE >> 12) << 10),
    id_index = const KERNEL_PHYS_BASE / GIB,
    gib_pte_step = const (GIB >> 12) << 10,
    virt_offset = const KERNEL_VIRT_OFFSET as i64,
    uart_phys = const super::UART_PHYS,
    test_phys = const super::SIFIVE_TEST_PHYS,
    boot_error = const EXIT_BOOT_ERROR,
    force_sv39 = const cfg!(feature = "sv39") as u8,
);

/// The first Rust code on every CPU, in the higher half with the
/// invariants listed in the module documentation: CPU `index` on hart
/// `hart_id`, with the device tree's address on the boot CPU (index 0).
extern "C" fn keel_riscv_main(hart_id: usize, dtb_phys: usize, index: usize) -> ! {
    if index != 0 {
        // SAFETY: the kernel tree maps the image, the direct map and this
        // CPU's stacks (`cpu_start` mapped them before starting it).
        unsafe { super::mm::use_kernel_root() };
        super::irq::init_cpu(false);
        crate::smp::cpu_main(index)
    }
    super::user::CPUS[0].set_up(0, hart_id);
    super::mm::init();
    crate::boot::kernel_main(boot_info(dtb_phys as u64))
}

unsafe extern "C" {
    /// Where a hart started by [`cpu_start`] enters (physical; only its
    /// address is used).
    fn keel_ap_entry();
}

/// Starts hart `hw_id` as CPU `index` through the SBI HSM extension: its
/// stacks are mapped and its `PerCpu` block set up first; it enters at
/// `keel_ap_entry` with `a1` = `index`. Does not wait for it (but yields
/// to it, `irq::yield_cpu`).
pub fn cpu_start(_info: &BootInfo<'_>, index: usize, hw_id: u64) -> Result<(), &'static str> {
    let cpu = super::user::CPUS.get(index).filter(|_| index != 0);
    let cpu = cpu.ok_or("no such CPU index")?;
    super::mm::map_cpu_stacks(index).map_err(|_| "no memory for its stacks' page tables")?;
    cpu.set_up(index, hw_id as usize);
    // The block and the page tables before the hart runs.
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    let entry = super::kernel_virt_to_phys(keel_ap_entry as *const () as usize);
    // SBI error codes (SBI specification, "Standard SBI Errors").
    match sbi_rt::hart_start(hw_id as usize, entry as usize, index).error as isize {
        0 => Ok(()),
        -2 => Err("the SBI has no HSM extension"),
        -3 => Err("SBI hart_start: no such hart"),
        -5 => Err("SBI hart_start: entry address refused"),
        -6 => Err("SBI hart_start: the hart is already started"),
        _ => Err("SBI hart_start failed"),
    }
}

/// Parses the device tree OpenSBI passed in `a1`. It must lie in RAM (at or
/// above the RAM base; below it are device registers) and every page of it
/// must be readable, so a bogus pointer gives an error rather than a fault.
fn boot_info(dtb_phys: u64) -> Result<BootInfo<'static>, BootInfoError> {
    let ram = crate::arch::ProbedDirectMap {
        floor: KERNEL_PHYS_BASE,
    };
    // The kernel image's physical range.
    let kernel = MemoryRegion {
        start: super::kernel_virt_to_phys(&raw const __kernel_start as usize),
        end: super::kernel_virt_to_phys(&raw const __kernel_end as usize),
        kind: RegionKind::Kernel,
    };
    dtb::parse_at(dtb_phys, &ram, kernel)
}

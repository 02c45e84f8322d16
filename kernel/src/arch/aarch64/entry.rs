//! AArch64 boot: from the loader's hand-off to [`crate::boot::kernel_main`].
//!
//! `_start` is entered on the boot CPU with the MMU and caches off, at EL2
//! (`-M virt,virtualization=on`) or EL1, with `x0` = the device tree's
//! physical address for an Image boot (the flat image, which starts with a
//! Linux arm64 Image header; QEMU then also loads `-initrd` and describes it
//! in the device tree) or 0 for an ELF boot (QEMU ignores `-initrd` for ELF
//! kernels and puts the device tree at the RAM base). It runs at the
//! physical load address, so until it has jumped to the higher half it uses
//! only PC-relative addressing (`adr`/`adrp`) and touches no stack. In order:
//! 1. mask DAIF; at EL2, configure EL1 as AArch64 with untrapped timers,
//!    FP/SIMD and PMU, and `eret` to EL1h (`keel_cpu_el1`);
//! 2. make SCTLR_EL1 known (MMU, caches and alignment checks off) and enable
//!    FP/SIMD (CPACR_EL1.FPEN) for user threads and `FpuState` — the kernel
//!    itself is built soft-float and never uses FP/SIMD registers;
//! 3. zero `.bss` (which holds the boot stack and the boot page tables);
//! 4. build the boot page tables (4 KiB granule, 48-bit VAs):
//!    TTBR1: the first 4 GiB of physical space at [`DIRECT_MAP_BASE`] in
//!    1 GiB blocks (GiB 0 Device-nGnRE, GiB 1–3 Normal write-back, never
//!    executable), and the kernel image at [`KERNEL_VIRT_BASE`] + (phys -
//!    [`KERNEL_PHYS_BASE`]) with 4 KiB pages, section by section (see
//!    [`image_sections`]): text read-only executable, rodata read-only,
//!    data/bss and the two stacks read-write, never executable; the stack
//!    guards and the rest of `.stacks` stay unmapped;
//!    TTBR0: a temporary identity map of the GiB holding the image;
//! 5. program MAIR/TCR/TTBRs, turn on the MMU and caches and jump to the
//!    image's virtual address;
//! 6. in the higher half (`keel_cpu_high`): set SP to the top of the boot
//!    stack (recorded, with the overflow stack's, in CPU 0's per-CPU block,
//!    see `super::user`), TPIDR_EL1 to that block and VBAR_EL1, disable
//!    TTBR0 walks (TCR_EL1.EPD0) and invalidate the TLB, so no low mapping
//!    remains;
//! 7. call [`keel_aarch64_main`] with the saved `x0`, which sets up this
//!    CPU ([`init_cpu`]), parses the device tree and never returns.
//!
//! A CPU started later (`super::smp::cpu_start`, PSCI CPU_ON) enters
//! `keel_ap_start` at its physical address with `x0` = its index and
//! shares steps 1–2 (`keel_cpu_el1`), 5 (`keel_mmu_on`, with the boot
//! identity map, which stays in `.bss`, in TTBR0 and the kernel's root
//! from `KEEL_AP_TTBR1` in TTBR1) and 6 (with its own block and stack),
//! then calls `super::smp`'s `keel_aarch64_ap_main`.
//!
//! The page tables are written with the data cache off. QEMU does not model
//! caches; on hardware this relies on the loader leaving no dirty cache lines
//! over the image (as the Linux arm64 boot protocol requires).

use super::DIRECT_MAP_BASE;
use crate::bootinfo::{BootInfo, BootInfoError, MemoryRegion, RegionKind, dtb};
use crate::mm::paging::Attr;
use core::ops::Range;

/// Physical address the virtual address `KERNEL_VIRT_BASE` maps to; the image
/// is linked for, and must be loaded within, the 1 GiB block starting here.
pub const KERNEL_PHYS_BASE: u64 = 0x4000_0000;
/// Virtual address of `KERNEL_PHYS_BASE` in the kernel-image mapping.
pub const KERNEL_VIRT_BASE: usize = 0xFFFF_FFFF_8000_0000;

/// Where QEMU `virt` puts the device tree for an ELF boot (the RAM base).
const DTB_DEFAULT_PHYS: u64 = 0x4000_0000;

const GIB: u64 = 1 << 30;

// Memory attribute indices (MAIR_EL1 fields).
const MAIR_DEVICE_NGNRE: u64 = 0x04;
const MAIR_NORMAL_WB: u64 = 0xff;
const MAIR_NORMAL_NC: u64 = 0x44;
const ATTR_DEVICE: u64 = 0;
const ATTR_NORMAL: u64 = 1;
/// MAIR_EL1: index 0 Device-nGnRE, 1 Normal WB RA/WA, 2 Normal non-cacheable.
const MAIR: u64 = MAIR_DEVICE_NGNRE | (MAIR_NORMAL_WB << 8) | (MAIR_NORMAL_NC << 16);

// Stage-1 descriptor bits (4 KiB granule).
const DESC_BLOCK: u64 = 0b01;
const DESC_TABLE: u64 = 0b11;
const DESC_PAGE: u64 = 0b11;
const DESC_SH_INNER: u64 = 0b11 << 8;
const DESC_AF: u64 = 1 << 10;
const DESC_PXN: u64 = 1 << 53;
const DESC_UXN: u64 = 1 << 54;
/// AP[2:1] = 00: read/write at EL1, no access at EL0.
const DESC_AP_KERNEL_RW: u64 = 0;
/// AP[2:1] = 10: read-only at EL1, no access at EL0.
const DESC_AP_KERNEL_RO: u64 = 0b10 << 6;

/// A 1 GiB Device-nGnRE block, never executable.
const BLOCK_DEVICE: u64 =
    DESC_BLOCK | (ATTR_DEVICE << 2) | DESC_AP_KERNEL_RW | DESC_AF | DESC_PXN | DESC_UXN;
/// A 1 GiB Normal write-back inner-shareable block, never executable.
const BLOCK_RAM: u64 = (BLOCK_DEVICE & !(0b111 << 2)) | (ATTR_NORMAL << 2) | DESC_SH_INNER;
/// A 1 GiB Normal block executable at EL1 (the temporary identity map).
const BLOCK_IDENT: u64 = BLOCK_RAM & !DESC_PXN;
/// A 4 KiB Normal write-back page, read-write, never executable (L3
/// descriptor): data, bss, stacks.
const PAGE_RW: u64 = (BLOCK_RAM & !DESC_BLOCK) | DESC_PAGE;
/// A read-only, never executable page: rodata.
const PAGE_RO: u64 = PAGE_RW | DESC_AP_KERNEL_RO;
/// A read-only page executable at EL1: text.
const PAGE_TEXT: u64 = PAGE_RO & !DESC_PXN;

// TCR_EL1 fields for TTBR0; TTBR1's (T1SZ, IRGN1, ORGN1, SH1, TG1) are the
// same 16 bits higher, except that TG1 encodes 4 KiB differently. IPS (bits
// 34:32) is filled in from ID_AA64MMFR0_EL1.
const TCR_T0SZ: u64 = 16;
const TCR_EPD0: u64 = 1 << 7;
const TCR_IRGN0_WBWA: u64 = 0b01 << 8;
const TCR_ORGN0_WBWA: u64 = 0b01 << 10;
const TCR_SH0_INNER: u64 = 0b11 << 12;
const TCR_TG0_4K: u64 = 0b00 << 14;
const TCR_TG1_4K: u64 = 0b10 << 30;
const TCR_HALF: u64 = TCR_T0SZ | TCR_IRGN0_WBWA | TCR_ORGN0_WBWA | TCR_SH0_INNER | TCR_TG0_4K;
const TCR: u64 = TCR_HALF | (TCR_HALF << 16) | TCR_TG1_4K;

/// SCTLR_EL1 bits that are RES1 in ARMv8.0 (11, 20, 22, 23, 28, 29); with
/// everything else clear: MMU, caches and alignment checks off, little-endian.
const SCTLR_RES1: u64 = 0x30d0_0800;
const SCTLR_M: u64 = 1 << 0;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_I: u64 = 1 << 12;
/// SA0: a load or store at EL0 through a stack pointer that is not 16-byte
/// aligned faults (an SP alignment fault, reported to the portable side as
/// an alignment fault; QEMU 7.2 does not model this check).
const SCTLR_SA0: u64 = 1 << 4;
/// MMU and both caches on, EL0 stack-alignment checks on; alignment checking
/// (A) and WXN stay off. EL0 may not touch DAIF (UMA), CTR_EL0 (UCT), `dc
/// zva` (DZE) or cache maintenance (UCI), and WFI/WFE at EL0 trap (nTWI,
/// nTWE clear): all these bits are clear.
const SCTLR_MMU_ON: u64 = SCTLR_RES1 | SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_SA0;

/// CPACR_EL1.FPEN = 0b11: FP/SIMD not trapped at EL0 or EL1.
const CPACR_FPEN: u64 = 0b11 << 20;

/// HCR_EL2: RW (EL1 is AArch64), APK|API (pointer-auth keys and
/// instructions not trapped); no stage 2, no traps.
const HCR_EL2: u64 = (1 << 31) | (1 << 41) | (1 << 40);
/// CNTHCTL_EL2: EL1PCTEN|EL1PCEN (physical counter and timer usable at EL1).
const CNTHCTL_EL2: u64 = 0b11;
/// CPTR_EL2 with its RES1 bits (13:12, 9:0) and TFP clear: no FP traps.
const CPTR_EL2: u64 = 0x33ff;
/// SPSR for the `eret` into EL1: EL1h with D, A, I and F masked.
const SPSR_EL1H_MASKED: u64 = 0x3c5;

/// Flags of the Image header: little-endian (bit 0 clear), 4 KiB pages
/// (bits 2:1 = 1), placed at `text_offset` from the 2 MiB-aligned base
/// nearest the start of RAM (bit 3 clear).
const IMAGE_FLAGS: u64 = 0b010;

/// L0/L1 indices of the mappings built at boot.
const L0_DIRECT_MAP: usize = (DIRECT_MAP_BASE >> 39) & 0x1ff;
const L0_KERNEL: usize = (KERNEL_VIRT_BASE >> 39) & 0x1ff;
const L1_KERNEL: usize = (KERNEL_VIRT_BASE >> 30) & 0x1ff;
/// L3 tables for the kernel image, contiguous in `.bss`, each mapping
/// 2 MiB from the 2 MiB boundary at or below `__kernel_start` (so
/// `16 MiB - (load address % 2 MiB)` of image; linker.ld checks the fit).
const IMAGE_L3_TABLES: usize = 8;

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
    .type _start, %function
_start:
    // Linux arm64 Image header (Documentation/arch/arm64/booting.rst), so
    // the flat image (`cargo xtask` makes it from this ELF) boots like
    // Linux: loaded at RAM base + text_offset, with x0 = the device tree
    // and any -initrd described in it. The first word branches over it.
    b       8f                      // code0
    .word   0                       // code1
    .quad   KERNEL_TEXT_OFFSET      // text_offset (linker.ld)
    .quad   KERNEL_IMAGE_SIZE       // image_size, .bss and stacks included
    .quad   {image_flags}           // flags
    .quad   0, 0, 0                 // res2-res4
    .ascii  "ARM\x64"               // magic
    .word   0                       // res5 (no PE header)
8:  mov     x19, x0
    bl      keel_cpu_el1

    // Zero .bss (16-byte aligned at both ends; plain stores, the MMU is
    // off so memory is Device-nGnRnE and DC ZVA would fault).
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
4:  cmp     x9, x10
    b.hs    5f
    stp     xzr, xzr, [x9], #16
    b       4b
5:
    // TTBR1: L0 -> direct-map L1 and kernel L1.
    adrp    x0, keel_boot_l0_high
    adrp    x1, keel_boot_l1_direct
    orr     x2, x1, #{table}
    str     x2, [x0, #{l0_direct} * 8]
    adrp    x3, keel_boot_l1_kernel
    orr     x2, x3, #{table}
    str     x2, [x0, #{l0_kernel} * 8]

    // Direct map: GiB 0 device, GiB 1-3 normal RAM.
    ldr     x2, ={block_device}
    str     x2, [x1]
    ldr     x2, ={block_ram}
    mov     x4, #{gib}
    .irp    off, 8, 16, 24
    add     x2, x2, x4
    str     x2, [x1, #\off]
    .endr

    // Kernel image: L1 -> L2 -> the contiguous L3 tables, which map
    // 2 MiB each from x20 = the 2 MiB boundary at or below the image's
    // physical start (virtual and physical addresses agree modulo 1 GiB).
    adrp    x4, keel_boot_l2_kernel
    orr     x2, x4, #{table}
    str     x2, [x3, #{l1_kernel} * 8]
    adrp    x20, __kernel_start
    and     x20, x20, #0xffffffffffe00000
    ubfx    x6, x20, #21, #9        // L2 index of the first L3 table
    add     x5, x4, x6, lsl #3
    adrp    x21, keel_boot_l3_kernel
    orr     x2, x21, #{table}
    mov     x7, #{image_l3_tables}
7:  str     x2, [x5], #8
    add     x2, x2, #4096
    subs    x7, x7, #1
    b.ne    7b

    // map_pages start, end, attrs: L3 entries for the physical pages
    // [start, end) (page-aligned symbols, physical under `adrp` here).
    .macro map_pages start, end, attrs
    adrp    x9, \start
    adrp    x10, \end
    ldr     x11, =\attrs
    sub     x12, x9, x20
    add     x12, x21, x12, lsr #9   // &L3[(pa - x20) / 4 KiB]
71: cmp     x9, x10
    b.hs    72f
    orr     x13, x11, x9
    str     x13, [x12], #8
    add     x9, x9, #4096
    b       71b
72:
    .endm
    map_pages __kernel_start, __text_end, {page_text}
    map_pages __text_end, __rodata_end, {page_ro}
    map_pages __rodata_end, __data_end, {page_rw}
    map_pages __overflow_stack_bottom, __overflow_stack_top, {page_rw}
    map_pages __boot_stack_bottom, __boot_stack_top, {page_rw}

    // TTBR0: identity map of the GiB holding _start.
    adrp    x0, keel_boot_l0_low
    adrp    x1, keel_boot_l1_ident
    orr     x2, x1, #{table}
    adr     x3, _start
    lsr     x4, x3, #39             // L0 index (0 unless loaded above 512 GiB)
    str     x2, [x0, x4, lsl #3]
    lsr     x5, x3, #30             // GiB number
    and     x6, x5, #0x1ff          // L1 index
    ldr     x2, ={block_ident}
    orr     x2, x2, x5, lsl #30
    str     x2, [x1, x6, lsl #3]

    adrp    x1, keel_boot_l0_high
    bl      keel_mmu_on
    ldr     x9, =keel_boot_high
    br      x9
    .ltorg
    .size _start, . - _start

    // keel_cpu_el1: from EL2 or EL1 with the MMU off to EL1h with DAIF
    // masked, SCTLR_EL1 known and FP/SIMD enabled; returns to x30 (at
    // EL1). Clobbers x9.
    .type keel_cpu_el1, %function
keel_cpu_el1:
    msr     daifset, #0xf
    mrs     x9, CurrentEL
    ubfx    x9, x9, #2, #2
    cmp     x9, #1
    b.eq    3f
    cmp     x9, #2
    b.eq    2f
1:  wfe                             // EL3/EL0 entry is not supported
    b       1b

2:  // EL2 -> EL1.
    ldr     x9, ={hcr}
    msr     hcr_el2, x9
    mov     x9, #{cnthctl}
    msr     cnthctl_el2, x9
    msr     cntvoff_el2, xzr
    mov     x9, #{cptr}
    msr     cptr_el2, x9
    msr     hstr_el2, xzr
    mrs     x9, pmcr_el0            // MDCR_EL2.HPMN = all counters to EL1,
    ubfx    x9, x9, #11, #5         // no PMU or debug traps
    msr     mdcr_el2, x9
    mrs     x9, midr_el1
    msr     vpidr_el2, x9
    mrs     x9, mpidr_el1
    msr     vmpidr_el2, x9
    msr     vttbr_el2, xzr
    ldr     x9, ={sctlr_res1}
    msr     sctlr_el1, x9
    mov     x9, #{spsr}
    msr     spsr_el2, x9
    adr     x9, 3f
    msr     elr_el2, x9
    isb
    eret

3:  // EL1, MMU off.
    ldr     x9, ={sctlr_res1}
    msr     sctlr_el1, x9
    ldr     x9, ={cpacr}
    msr     cpacr_el1, x9
    isb
    ret
    .ltorg
    .size keel_cpu_el1, . - keel_cpu_el1

    // keel_mmu_on(x0 = TTBR0, x1 = TTBR1): programs the translation regime
    // and turns on the MMU and caches; returns to x30, which x0 must map
    // (identity). Clobbers x9-x11.
    .type keel_mmu_on, %function
keel_mmu_on:
    ldr     x9, ={mair}
    msr     mair_el1, x9
    mrs     x10, id_aa64mmfr0_el1   // IPS = PARange, at most 48 bits
    and     x10, x10, #0xf
    mov     x11, #5
    cmp     x10, x11
    csel    x10, x10, x11, ls
    ldr     x9, ={tcr}
    orr     x9, x9, x10, lsl #32
    msr     tcr_el1, x9
    msr     ttbr0_el1, x0
    msr     ttbr1_el1, x1
    dsb     ish
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    ldr     x9, ={sctlr_on}
    msr     sctlr_el1, x9
    isb
    ret
    .ltorg
    .size keel_mmu_on, . - keel_mmu_on

    // A CPU started by `cpu_start` (PSCI CPU_ON) arrives here at its
    // physical address, MMU off, x0 = its index; it reuses the boot
    // identity map (TTBR0) to turn the MMU on with the kernel's root.
    .global keel_ap_start
    .type keel_ap_start, %function
keel_ap_start:
    mov     x19, x0
    bl      keel_cpu_el1
    adrp    x0, keel_boot_l0_low
    adrp    x1, KEEL_AP_TTBR1
    ldr     x1, [x1, :lo12:KEEL_AP_TTBR1]
    bl      keel_mmu_on
    ldr     x21, =KEEL_CPUS
    add     x21, x21, x19, lsl #{cpu_shift}
    ldr     x22, =keel_aarch64_ap_main
    ldr     x9, =keel_cpu_high
    br      x9
    .ltorg
    .size keel_ap_start, . - keel_ap_start

    .section .text.keel_boot_high, "ax"
    .type keel_boot_high, %function
keel_boot_high:
    ldr     x21, =KEEL_CPUS
    ldr     x9, =__boot_stack_top
    str     x9, [x21, #{cpu_stack_top}]
    ldr     x9, =__overflow_stack_top
    str     x9, [x21, #{cpu_overflow_top}]
    ldr     x22, =keel_aarch64_main
    // Fall through.

    // keel_cpu_high: in the higher half, x21 = this CPU's per-CPU block
    // (its stacks filled in), x22 = the Rust function to call with x19.
keel_cpu_high:
    ldr     x9, [x21, #{cpu_stack_top}]
    mov     sp, x9
    msr     tpidr_el1, x21
    adrp    x9, keel_vectors
    add     x9, x9, :lo12:keel_vectors
    msr     vbar_el1, x9
    // Drop the identity map: no more TTBR0 walks, then flush its entries.
    mrs     x9, tcr_el1
    orr     x9, x9, #{epd0}
    msr     tcr_el1, x9
    msr     ttbr0_el1, xzr
    isb
    tlbi    vmalle1
    dsb     nsh
    isb
    mov     x29, xzr
    mov     x30, xzr
    mov     x0, x19
    blr     x22
6:  wfe
    b       6b
    .ltorg
    .size keel_boot_high, . - keel_boot_high

    .section .bss.keel_boot_page_tables, "aw", %nobits
    .balign 4096
    .global keel_boot_l0_high
keel_boot_l0_high:   .space 4096
keel_boot_l1_direct: .space 4096
keel_boot_l1_kernel: .space 4096
keel_boot_l0_low:    .space 4096
keel_boot_l1_ident:  .space 4096
keel_boot_l2_kernel: .space 4096
    .global keel_boot_l3_kernel, keel_boot_l3_kernel_end
keel_boot_l3_kernel: .space 4096 * {image_l3_tables}
keel_boot_l3_kernel_end:
"#,
    hcr = const HCR_EL2,
    cnthctl = const CNTHCTL_EL2,
    cptr = const CPTR_EL2,
    sctlr_res1 = const SCTLR_RES1,
    spsr = const SPSR_EL1H_MASKED,
    cpacr = const CPACR_FPEN,
    table = const DESC_TABLE,
    l0_direct = const L0_DIRECT_MAP,
    l0_kernel = const L0_KERNEL,
    l1_kernel = const L1_KERNEL,
    block_device = const BLOCK_DEVICE,
    block_ram = const BLOCK_RAM,
    block_ident = const BLOCK_IDENT,
    image_l3_tables = const IMAGE_L3_TABLES,
    page_text = const PAGE_TEXT,
    page_ro = const PAGE_RO,
    page_rw = const PAGE_RW,
    gib = const GIB,
    mair = const MAIR,
    tcr = const TCR,
    sctlr_on = const SCTLR_MMU_ON,
    epd0 = const TCR_EPD0,
    image_flags = const IMAGE_FLAGS,
    cpu_shift = const super::user::CPU_BLOCK_SHIFT,
    cpu_stack_top = const super::user::CPU_STACK_TOP,
    cpu_overflow_top = const super::user::CPU_OVERFLOW_TOP,
);

/// log2 of the size of a kernel stack (the boot stack: 64 KiB, linker.ld's
/// `BOOT_STACK_SIZE`).
///
/// Kernel stacks are mapped with 4 KiB pages. Each starts at an even
/// multiple of 64 KiB, so every stack address has bit `KERNEL_STACK_SHIFT`
/// clear, and the 64 KiB below it (its guard) is never mapped and has that
/// bit set. The vector entry tests the bit to detect a trap frame that would
/// not fit on the stack (it cannot push anything to find out). Every kernel
/// stack keeps this shape (the other CPUs' too, `super::smp`).
pub const KERNEL_STACK_SHIFT: u32 = 16;

unsafe extern "C" {
    // Linker-script symbols (virtual, page-aligned); only their addresses
    // are used.
    static __kernel_start: u8;
    static __kernel_end: u8;
    static __text_end: u8;
    static __rodata_end: u8;
    static __data_end: u8;
    static __overflow_stack_guard: u8;
    static __overflow_stack_bottom: u8;
    static __overflow_stack_top: u8;
    static __boot_stack_guard: u8;
    static __boot_stack_bottom: u8;
    static __boot_stack_top: u8;
}

/// The kernel image's virtual range `[start, end)`, including `.bss`, the
/// stacks and their guards, and the boot page tables.
pub fn kernel_image_range() -> (usize, usize) {
    let (start, end) = (&raw const __kernel_start, &raw const __kernel_end);
    (start as usize, end as usize)
}

/// The boot CPU's stack.
pub fn boot_stack() -> Range<usize> {
    (&raw const __boot_stack_bottom) as usize..(&raw const __boot_stack_top) as usize
}

/// The boot CPU's overflow stack, where the vector entry switches when a
/// trap frame would not fit on the interrupted stack.
pub fn overflow_stack() -> Range<usize> {
    (&raw const __overflow_stack_bottom) as usize..(&raw const __overflow_stack_top) as usize
}

/// Every kernel stack in use as `(guard, stack)`, the unmapped guard below
/// each: the boot CPU's kernel and overflow stacks, then those of the CPUs
/// `cpu_start` prepared.
pub fn stacks() -> impl Iterator<Item = (Range<usize>, Range<usize>)> {
    let (boot, overflow) = (boot_stack(), overflow_stack());
    let boot_guard = (&raw const __boot_stack_guard) as usize..boot.start;
    let overflow_guard = (&raw const __overflow_stack_guard) as usize..overflow.start;
    let boot_cpu = [(boot_guard, boot), (overflow_guard, overflow)];
    boot_cpu.into_iter().chain(super::smp::ap_stacks())
}

/// The mapped parts of the kernel image with their attributes, exactly as
/// the boot code maps them (`map_pages` above): every page of the image
/// except the stack guards and the unused rest of `.stacks`.
pub fn image_sections() -> [(Range<usize>, Attr); 5] {
    let start = (&raw const __kernel_start) as usize;
    let text_end = (&raw const __text_end) as usize;
    let rodata_end = (&raw const __rodata_end) as usize;
    let data_end = (&raw const __data_end) as usize;
    [
        (start..text_end, Attr::EXEC | Attr::GLOBAL),
        (text_end..rodata_end, Attr::GLOBAL),
        (rodata_end..data_end, Attr::WRITE | Attr::GLOBAL),
        (overflow_stack(), Attr::WRITE | Attr::GLOBAL),
        (boot_stack(), Attr::WRITE | Attr::GLOBAL),
    ]
}

/// The physical address of a kernel-image virtual address.
pub fn image_virt_to_phys(v: usize) -> u64 {
    (v.wrapping_sub(KERNEL_VIRT_BASE) as u64).wrapping_add(KERNEL_PHYS_BASE)
}

/// First Rust code on the boot CPU, called by `keel_boot_high` on the boot
/// stack with the MMU on and the trap vector installed. `x0` is the value
/// the loader left in `x0`.
#[unsafe(no_mangle)]
extern "C" fn keel_aarch64_main(x0: u64) -> ! {
    init_cpu();
    crate::boot::kernel_main(boot_info(x0))
}

/// The first Rust code on every CPU: the memory-management hardware
/// (`super::mm::init`: TTBR0 on an empty table, ASID size, PAN), the EL0
/// and debug registers, the cycle counter.
pub fn init_cpu() {
    super::mm::init();
    super::user::init_cpu();
    super::enable_cycle_counter();
}

/// Finds, validates and parses the device tree: at `x0` if non-zero, else
/// at the RAM base. The blob must lie in RAM (above GiB 0, where probing
/// device registers could have side effects) and every page of it must be
/// readable, so a bogus pointer gives an error rather than a fault.
fn boot_info(x0: u64) -> Result<BootInfo<'static>, BootInfoError> {
    let phys = if x0 != 0 { x0 } else { DTB_DEFAULT_PHYS };
    let (kind, (start, end)) = (RegionKind::Kernel, kernel_image_range());
    let (start, end) = (image_virt_to_phys(start), image_virt_to_phys(end));
    let kernel = MemoryRegion { start, end, kind };
    dtb::parse_at(phys, &crate::arch::ProbedDirectMap { floor: GIB }, kernel)
}

//! Boot: the Multiboot 1 and 2 headers, the 32-bit entry, the trampoline to
//! 64-bit long mode in the higher half, and the Rust entry that sets up the
//! CPU and hands the parsed boot information to [`crate::boot::kernel_main`].
//!
//! The loader (QEMU `-kernel`: Multiboot 1 with the a.out kludge; GRUB:
//! Multiboot 2 with the address and entry tags) copies the image to physical
//! [`KERNEL_LOAD_PHYS`], zeroes `.bss` and jumps to `keel_entry32` in 32-bit
//! protected mode with paging off, `eax` = the loader's magic and `ebx` =
//! the physical address of its information. The 32-bit code:
//! 1. checks for long mode and NX (else prints a message and exits with
//!    `EXIT_BOOT_ERROR`);
//! 2. zeroes `.bss` again (a loader may not have);
//! 3. builds the boot page tables (all in `.bss.keel_boot`):
//!    - PML4[256] → the direct map: physical 0..4 GiB in 2 MiB pages,
//!      read/write, no-execute, global (the `qemu64` CPU has no 1 GiB
//!      pages);
//!    - PML4[511] → PDPT[510] → one PD → four page tables mapping the
//!      kernel image (4 KiB pages, global, per-section permissions, the
//!      page under each of the boot CPU's stacks — boot, double-fault and
//!      NMI — left unmapped as a guard, and so are the other CPUs' stacks:
//!      exactly the ranges of `super::mm::kernel_image_layout`);
//!    - PML4[0] → the same PD: the image identity-mapped, only to survive
//!      turning paging on;
//! 4. enables PAE, LME, NXE, paging and write protection, loads a minimal
//!    64-bit GDT and far-returns into 64-bit code.
//!
//! The 64-bit code jumps to the higher half, switches to the boot stack,
//! reloads the GDT through its higher-half address, removes the identity
//! mapping (PML4[0]), points the GS base at CPU 0's per-CPU block (so
//! `cpu_index` works from the first Rust code) and calls [`keel_boot64`].
//!
//! Stacks (all in `.bss.keel_boot`, each over an unmapped guard page):
//! the boot CPU's kernel, double-fault and NMI stacks, then those of CPUs
//! 1 to `MAX_CPUS - 1` ([`cpu_stacks`]), which `smp::cpu_start` maps.

use super::{KERNEL_LOAD_PHYS, KERNEL_VMA_OFFSET};
use crate::bootinfo::multiboot;
use crate::bootinfo::{BootInfo, BootInfoError, MemoryRegion, RegionKind};
use crate::bootinfo::{MAX_CPUS, PhysReader};
use keel_abi::harness::EXIT_BOOT_ERROR;

/// Size of the boot CPU's kernel stack.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;
/// Size of each interrupt stack (double faults, NMIs).
pub const IST_STACK_SIZE: usize = 16 * 1024;
/// Size of the kernel stack of each CPU but the boot CPU.
pub const CPU_STACK_SIZE: usize = 32 * 1024;
/// Size of the unmapped guard under each kernel stack.
pub const GUARD_SIZE: usize = 4096;
/// One CPU's stacks with their guards (CPUs 1 and up).
const CPU_STACKS_SIZE: usize = 3 * GUARD_SIZE + CPU_STACK_SIZE + 2 * IST_STACK_SIZE;

core::arch::global_asm!(
    // ---------------------------------------------------------------
    // Multiboot headers (first in the image: within the first 8 KiB).
    // ---------------------------------------------------------------
    ".section .multiboot, \"a\"",
    ".balign 8",
    "keel_mb1_header:",
    ".long 0x1BADB002",                         // magic
    ".long 0x00010003",                         // page-align modules, memory info, a.out kludge
    ".long -(0x1BADB002 + 0x00010003)",         // checksum
    ".long keel_mb1_header - {koff}",           // header_addr
    ".long __kernel_start_phys",                // load_addr
    ".long __load_end_phys",                    // load_end_addr
    ".long __kernel_end_phys",                  // bss_end_addr
    ".long keel_entry32 - {koff}",              // entry_addr
    ".balign 8",
    "keel_mb2_header:",
    ".long 0xE85250D6",                         // magic
    ".long 0",                                  // architecture: i386 protected mode
    ".long keel_mb2_header_end - keel_mb2_header",
    ".long -(0xE85250D6 + (keel_mb2_header_end - keel_mb2_header))",
    // Address tag: load the file like the a.out kludge above.
    ".short 2, 0",
    ".long 24",
    ".long keel_mb2_header - {koff}",
    ".long __kernel_start_phys",
    ".long __load_end_phys",
    ".long __kernel_end_phys",
    // Entry address tag.
    ".short 3, 0",
    ".long 12",
    ".long keel_entry32 - {koff}",
    ".long 0",                                  // pad to 8 bytes
    // Module alignment tag: page-align modules.
    ".short 6, 0",
    ".long 8",
    // End tag.
    ".short 0, 0",
    ".long 8",
    "keel_mb2_header_end:",
    //
    // ---------------------------------------------------------------
    // Boot-time data: the trampoline GDT (accessed bits preset, so the
    // CPU never writes to this read-only page) and the messages.
    // ---------------------------------------------------------------
    ".section .rodata.keel_boot, \"a\"",
    ".balign 16",
    "keel_boot_gdt:",
    trampoline_gdt!(),
    "keel_boot_gdt_end:",
    ".balign 8",
    ".short 0",
    "keel_boot_gdt_ptr32:",
    ".short keel_boot_gdt_end - keel_boot_gdt - 1",
    ".long keel_boot_gdt - {koff}",
    ".balign 8",
    ".short 0, 0, 0",
    "keel_boot_gdt_ptr64:",
    ".short keel_boot_gdt_end - keel_boot_gdt - 1",
    ".quad keel_boot_gdt",
    "keel_boot_no_long_mode:",
    ".asciz \"\\r\\nKeel: this CPU lacks 64-bit long mode or NX; cannot start.\\r\\n\"",
    //
    // ---------------------------------------------------------------
    // Boot page tables and the boot stack (zeroed; page-aligned).
    // ---------------------------------------------------------------
    ".section .bss.keel_boot, \"aw\", @nobits",
    ".balign 4096",
    ".global keel_boot_pml4",
    "keel_boot_pml4: .skip 4096",
    "keel_boot_pdpt_ident: .skip 4096",
    "keel_boot_pdpt_direct: .skip 4096",
    "keel_boot_pdpt_kernel: .skip 4096",
    "keel_boot_pd_direct: .skip 4 * 4096",
    "keel_boot_pd_kernel: .skip 4096",
    "keel_boot_pt_kernel: .skip 4 * 4096",
    // Each stack sits on an unmapped guard page (sizes are page multiples).
    ".global keel_boot_stack_guard, keel_cpu_stacks, keel_cpu_stacks_end",
    "keel_boot_stack_guard: .skip {guard_size}",
    "keel_boot_stack_bottom: .skip {stack_size}",
    "keel_boot_stack_top:",
    "keel_df_stack_guard: .skip {guard_size}",
    "keel_df_stack_bottom: .skip {ist_size}",
    "keel_df_stack_top:",
    "keel_nmi_stack_guard: .skip {guard_size}",
    "keel_nmi_stack_bottom: .skip {ist_size}",
    "keel_nmi_stack_top:",
    "keel_cpu_stacks: .skip {cpu_stacks_size}",
    "keel_cpu_stacks_end:",
    //
    // ---------------------------------------------------------------
    // 32-bit entry (protected mode, paging off, physical addresses).
    // ebp = loader magic, esi = information address until the Rust call.
    // ---------------------------------------------------------------
    ".section .text.keel_boot32, \"ax\"",
    ".code32",
    ".global keel_entry32",
    "keel_entry32:",
    "cli",
    "cld",
    "mov ebp, eax",
    "mov esi, ebx",
    // Long mode and NX are required.
    "mov eax, 0x80000000",
    "cpuid",
    "cmp eax, 0x80000001",
    "jb 90f",
    "mov eax, 0x80000001",
    "cpuid",
    "test edx, 1 << 29",
    "jz 90f",
    "test edx, 1 << 20",
    "jz 90f",
    // Zero .bss (page tables and stack included).
    "mov edi, offset __bss_start_phys",
    "mov ecx, offset __kernel_end_phys",
    "sub ecx, edi",
    "shr ecx, 2",
    "xor eax, eax",
    "rep stosd",
    // PML4: [0] identity (temporary), [256] direct map, [511] kernel.
    "mov eax, offset keel_boot_pdpt_ident - {koff} + 3",
    "mov dword ptr [keel_boot_pml4 - {koff}], eax",
    "mov eax, offset keel_boot_pdpt_direct - {koff} + 3",
    "mov dword ptr [keel_boot_pml4 - {koff} + 256 * 8], eax",
    "mov eax, offset keel_boot_pdpt_kernel - {koff} + 3",
    "mov dword ptr [keel_boot_pml4 - {koff} + 511 * 8], eax",
    // The kernel PD serves both the identity map (PDPT_ident[0]) and the
    // higher half (PDPT_kernel[510]): both are physical + constant.
    "mov eax, offset keel_boot_pd_kernel - {koff} + 3",
    "mov dword ptr [keel_boot_pdpt_ident - {koff}], eax",
    "mov dword ptr [keel_boot_pdpt_kernel - {koff} + 510 * 8], eax",
    // `count` entries from edi on: low word eax + i * step, high word
    // `high`.
    ".macro keel_boot_fill count, step, high",
    "mov ecx, \\count",
    "1:",
    "mov dword ptr [edi], eax",
    "mov dword ptr [edi + 4], \\high",
    "add eax, \\step",
    "add edi, 8",
    "dec ecx",
    "jnz 1b",
    ".endm",
    // Direct map: PDPT_direct[0..4] → four PDs of 2 MiB pages, RW, NX.
    "mov eax, offset keel_boot_pd_direct - {koff} + 3",
    "mov edi, offset keel_boot_pdpt_direct - {koff}",
    "keel_boot_fill 4, 4096, 0",
    "mov eax, 0x183",                           // present, writable, 2 MiB page, global
    "mov edi, offset keel_boot_pd_direct - {koff}",
    "keel_boot_fill 2048, 0x200000, 0x80000000", // NX
    // Kernel PD[0..4] → the four page tables.
    "mov eax, offset keel_boot_pt_kernel - {koff} + 3",
    "mov edi, offset keel_boot_pd_kernel - {koff}",
    "keel_boot_fill 4, 4096, 0",
    // Kernel image pages: eax = physical page, edi = its PTE.
    "mov eax, offset __kernel_start_phys",
    "mov edi, eax",
    "shr edi, 9",
    "add edi, offset keel_boot_pt_kernel - {koff}",
    "2:",
    "cmp eax, offset __kernel_end_phys",
    "jae 5f",
    // The guard pages and the other CPUs' stacks stay unmapped.
    "cmp eax, offset keel_cpu_stacks - {koff}",
    "jb 6f",
    "cmp eax, offset keel_cpu_stacks_end - {koff}",
    "jb 4f",
    "6:",
    "cmp eax, offset keel_boot_stack_guard - {koff}",
    "je 4f",
    "cmp eax, offset keel_df_stack_guard - {koff}",
    "je 4f",
    "cmp eax, offset keel_nmi_stack_guard - {koff}",
    "je 4f",
    "mov edx, eax",
    "or edx, 0x101",                            // present, global
    "xor ebx, ebx",
    "cmp eax, offset __text_end_phys",
    "jb 3f",                                    // .text: read + execute
    "mov ebx, 0x80000000",                      // NX
    "cmp eax, offset __rodata_end_phys",
    "jb 3f",                                    // .rodata: read-only
    "or edx, 2",                                // .data, .bss: writable
    "3:",
    "mov dword ptr [edi], edx",
    "mov dword ptr [edi + 4], ebx",
    "4:",
    "add eax, 4096",
    "add edi, 8",
    "jmp 2b",
    "5:",
    // Paging on: CR3, CR4.PAE|OSFXSR|OSXMMEXCPT, EFER.LME|NXE,
    // CR0.PG|WP|NE|MP|PE with EM clear.
    "mov eax, offset keel_boot_pml4 - {koff}",
    "mov cr3, eax",
    "mov eax, cr4",
    "or eax, (1 << 5) | (1 << 9) | (1 << 10)",
    "mov cr4, eax",
    "mov ecx, 0xC0000080",
    "rdmsr",
    "or eax, (1 << 8) | (1 << 11)",
    "wrmsr",
    "mov eax, cr0",
    "and eax, ~(1 << 2)",
    "or eax, (1 << 31) | (1 << 16) | (1 << 5) | (1 << 1) | 1",
    "mov cr0, eax",
    // Now in compatibility mode, running on the identity map.
    "lgdt [keel_boot_gdt_ptr32 - {koff}]",
    "mov esp, offset keel_boot_stack_top - {koff}",
    "mov eax, offset keel_entry64_low - {koff}",
    "push 0x08",
    "push eax",
    "retf",
    // No long mode: say so on COM1 and exit QEMU with EXIT_BOOT_ERROR.
    "90:",
    "mov esi, offset keel_boot_no_long_mode - {koff}",
    "mov dx, 0x3f8",
    "91:",
    "lodsb",
    "test al, al",
    "jz 92f",
    "out dx, al",
    "jmp 91b",
    "92:",
    "mov dx, 0xf4",
    "mov eax, {boot_error_exit}",
    "out dx, eax",
    "93:",
    "hlt",
    "jmp 93b",
    //
    // ---------------------------------------------------------------
    // 64-bit code, first on the identity map, then in the higher half.
    // ---------------------------------------------------------------
    ".code64",
    "keel_entry64_low:",
    "mov ax, 0x10",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "xor eax, eax",
    "mov fs, ax",
    "mov gs, ax",
    "movabs rax, offset keel_entry64_high",
    "jmp rax",
    "keel_entry64_high:",
    "lea rsp, [rip + keel_boot_stack_top]",
    "lgdt [rip + keel_boot_gdt_ptr64]",
    // Drop the identity map and flush it from the TLB.
    "mov qword ptr [rip + keel_boot_pml4], 0",
    "mov rax, cr3",
    "mov cr3, rax",
    // GS base (MSR 0xC0000101) = CPU 0's per-CPU block.
    "lea rax, [rip + {per_cpu}]",
    "mov rdx, rax",
    "shr rdx, 32",
    "mov ecx, 0xC0000101",
    "wrmsr",
    "mov edi, ebp",                             // magic (zero-extended)
    "mov esi, esi",                             // information address
    "xor ebp, ebp",                             // ends the frame-pointer chain
    "call {entry}",
    "ud2",
    koff = const KERNEL_VMA_OFFSET,
    stack_size = const BOOT_STACK_SIZE,
    ist_size = const IST_STACK_SIZE,
    guard_size = const GUARD_SIZE,
    boot_error_exit = const (EXIT_BOOT_ERROR - 1) / 2,
    cpu_stacks_size = const (MAX_CPUS - 1) * CPU_STACKS_SIZE,
    per_cpu = sym super::user::PER_CPU,
    entry = sym keel_boot64,
);

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
    static keel_boot_pml4: u8;
    static keel_boot_stack_guard: u8;
    static keel_cpu_stacks: u8;
    static keel_cpu_stacks_end: u8;
}

/// A kernel stack in `.bss.keel_boot`: `[bottom, top)`, with the unmapped
/// page `[guard, bottom)` under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelStack {
    /// The lowest address of the unmapped guard page.
    pub guard: usize,
    /// The lowest address of the stack itself.
    pub bottom: usize,
    /// One past the highest address: the initial stack pointer.
    pub top: usize,
}

/// CPU `index`'s kernel, double-fault (IST1) and NMI (IST2) stacks (each
/// CPU's three lie one after the other, each over its guard page).
pub fn cpu_stacks(index: usize) -> [KernelStack; 3] {
    let others = &raw const keel_cpu_stacks as usize;
    let (mut at, kernel_size) = match index {
        0 => (&raw const keel_boot_stack_guard as usize, BOOT_STACK_SIZE),
        _ => (others + (index - 1) * CPU_STACKS_SIZE, CPU_STACK_SIZE),
    };
    [kernel_size, IST_STACK_SIZE, IST_STACK_SIZE].map(|size| {
        let s = KernelStack {
            guard: at,
            bottom: at + GUARD_SIZE,
            top: at + GUARD_SIZE + size,
        };
        at = s.top;
        s
    })
}

/// Every CPU's stacks, in address order.
pub fn kernel_stacks() -> impl Iterator<Item = KernelStack> {
    (0..MAX_CPUS).flat_map(cpu_stacks)
}

/// The parts of the image the kernel page tables leave unmapped, in
/// address order: the boot CPU's three guard pages, then the other CPUs'
/// stacks (mapped, but for their guards, as each CPU starts).
pub fn image_holes() -> [core::ops::Range<usize>; 4] {
    let [a, b, c] = cpu_stacks(0).map(|s| s.guard..s.bottom);
    let cpus = (&raw const keel_cpu_stacks) as usize..(&raw const keel_cpu_stacks_end) as usize;
    [a, b, c, cpus]
}

/// Physical memory read through the boot direct map, for the boot
/// information and the firmware tables. Reads nothing once the boot page
/// tables are replaced (the kernel's own direct map leaves out reserved
/// memory, where firmware tables live).
pub struct DirectMap;

impl PhysReader<'static> for DirectMap {
    fn bytes(&self, addr: u64, len: u64) -> Option<&'static [u8]> {
        let end = addr.checked_add(len)?;
        let boot_pml4 = (&raw const keel_boot_pml4) as usize - KERNEL_VMA_OFFSET;
        if end > super::BOOT_DIRECT_MAP_SIZE || super::mm::kernel_root() != boot_pml4 as u64 {
            return None;
        }
        // SAFETY: the boot page tables are the kernel's (checked above) and
        // map all of [0, BOOT_DIRECT_MAP_SIZE) readable at DIRECT_MAP_BASE +
        // physical, so the whole range is mapped. The slices are only used for the firmware and boot-loader
        // structures, which nothing writes to while the kernel reads them
        // (their memory is reserved as boot information in the memory map).
        Some(unsafe {
            core::slice::from_raw_parts(super::phys_to_virt(addr) as *const u8, len as usize)
        })
    }
}

/// The Rust entry, called once by the trampoline on the boot stack with
/// the loader's `magic` and the physical address of its information.
extern "C" fn keel_boot64(magic: u32, info: u32) -> ! {
    super::serial::init();
    super::cpu::init(0);
    super::mm::init();
    // Early warnings (e.g. from the ACPI scan) are printed at the default
    // level; `kernel_main` applies the command line's `log=` later.
    crate::console::init_logger(crate::cmdline::LogLevel::Info);
    super::mm::log_features();
    crate::boot::kernel_main(boot_info(magic, info).and_then(super::smp::reserve_start_page))
}

fn boot_info(magic: u32, info: u32) -> Result<BootInfo<'static>, BootInfoError> {
    // The kernel image: code, data and `.bss`.
    let kernel = MemoryRegion {
        start: super::kernel_virt_to_phys(&raw const __kernel_start as usize),
        end: super::kernel_virt_to_phys(&raw const __kernel_end as usize),
        kind: RegionKind::Kernel,
    };
    debug_assert_eq!(kernel.start, KERNEL_LOAD_PHYS);
    let mb = multiboot::parse(magic, info.into(), &DirectMap, kernel)?;
    let ((cpu_count, cpu_ids), numa) = super::acpi::topology(&DirectMap, mb.rsdp);
    Ok(BootInfo {
        protocol: mb.protocol,
        memory: mb.memory,
        cmdline: mb.cmdline,
        cpu_count,
        cpu_ids,
        psci: None,
        numa,
        timebase_hz: None,
        irq: super::acpi::interrupt_hw(&DirectMap, mb.rsdp),
        framebuffer: mb.framebuffer,
    })
}

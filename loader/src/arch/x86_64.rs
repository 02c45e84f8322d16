//! x86_64: from UEFI's long mode (identity-mapped, interrupts on) to the
//! state Multiboot 2 promises the kernel's 32-bit entry: protected mode,
//! paging off, flat 32-bit code and data segments, interrupts off,
//! `eax` = the boot loader magic, `ebx` = the information's address.
//!
//! [`TRAMPOLINE`] is position-independent code the loader copies into a
//! page below 4 GiB (so that it still runs at the same address once paging
//! is off): it loads a GDT the loader put in the same page, far-returns
//! into its 32-bit code segment, turns paging and long mode off, loads the
//! data segments and jumps to the entry.

use core::arch::global_asm;

/// The three GDT entries: null, 32-bit code (selector 8), 32-bit data (16).
pub const GDT: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

global_asm!(
    ".pushsection .rdata.keel_trampoline, \"dr\"",
    ".globl keel_trampoline_start",
    ".globl keel_trampoline_end",
    "keel_trampoline_start:",
    ".code64",
    // rdi = entry, rsi = information, rdx = the GDT register's image.
    "    cli",
    "    lgdt [rdx]",
    "    lea rax, [rip + 2f]",
    "    push 8",
    "    push rax",
    "    retfq",
    ".code32",
    "2:  mov ax, 16",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    mov ss, ax",
    "    mov eax, cr0",
    "    and eax, 0x7fffffff",
    "    mov cr0, eax",
    "    mov ecx, 0xc0000080",
    "    rdmsr",
    "    and eax, 0xfffffeff",
    "    wrmsr",
    "    mov eax, {magic}",
    "    mov ebx, esi",
    "    jmp edi",
    ".code64",
    "keel_trampoline_end:",
    ".popsection",
    magic = const crate::multiboot::BOOTLOADER_MAGIC,
);

unsafe extern "C" {
    static keel_trampoline_start: u8;
    static keel_trampoline_end: u8;
}

/// The trampoline's code.
pub fn trampoline() -> &'static [u8] {
    let start = &raw const keel_trampoline_start;
    let len = (&raw const keel_trampoline_end as usize) - start as usize;
    // SAFETY: the two symbols surround the code, in read-only data.
    unsafe { core::slice::from_raw_parts(start, len) }
}

/// Runs the trampoline copied at `code` (identity-mapped, below 4 GiB,
/// executable) with the GDT register image at `gdtr`: enters the kernel at
/// `entry` with the information at `info`.
///
/// # Safety
/// Boot services have ended; `code`, `gdtr` and the GDT it names, the
/// kernel and the information are in place below 4 GiB.
pub unsafe fn enter(code: u64, gdtr: u64, entry: u32, info: u32) -> ! {
    // SAFETY: the caller's promise; the trampoline never returns.
    unsafe {
        core::arch::asm!(
            "jmp rax",
            in("rax") code,
            in("rdi") u64::from(entry),
            in("rsi") u64::from(info),
            in("rdx") gdtr,
            options(noreturn),
        )
    }
}

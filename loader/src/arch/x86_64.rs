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

use crate::efi::{PAGE, framebuffer, pages, place};
use crate::multiboot::{self, Layout, Writer};
use core::arch::global_asm;
use uefi::boot::{self, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::prelude::*;
use uefi::table::cfg::{ACPI_GUID, ACPI2_GUID};
use uefi::{CStr16, cstr16, println};

/// The kernel's file: its ELF, whose Multiboot 2 header says the rest.
pub const KERNEL_FILE: &CStr16 = cstr16!("\\keel\\kernel.elf");
/// Room for the boot information (the memory map is most of it).
const INFO_PAGES: usize = 16;

/// Loads the kernel where its Multiboot 2 header says (`.bss` zeroed) and
/// the root task below 4 GiB, ends boot services, writes the Multiboot 2
/// information and enters the kernel.
pub fn boot(kernel: &[u8], root: &[u8], cmdline: &[u8]) -> Result<Status, &'static str> {
    let l: Layout = multiboot::layout(kernel)?;
    let span = (l.bss_end - l.load) as usize;
    let dst = pages(
        Some(u64::from(l.load)),
        span.div_ceil(PAGE),
        MemoryType::LOADER_DATA,
    )?;
    let file = &kernel[l.offset..l.offset + (l.load_end - l.load) as usize];
    // SAFETY: the pages were just allocated for this, `span` bytes.
    unsafe {
        core::ptr::write_bytes(dst, 0, span);
        core::ptr::copy_nonoverlapping(file.as_ptr(), dst, file.len());
    }
    let module = place(root)?;
    let (rsdp, fb) = (find_rsdp(), framebuffer());
    let info = pages(None, INFO_PAGES, MemoryType::LOADER_DATA)?;
    // The trampoline, its GDT and GDT register in one executable page.
    let code = pages(None, 1, MemoryType::LOADER_CODE)?;
    let tramp = trampoline();
    let gdt_at = code as u64 + 0x800;
    // SAFETY: the page is ours; the trampoline is far smaller than 2 KiB.
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), code, tramp.len());
        (gdt_at as *mut [u64; 3]).write(GDT);
        let gdtr = (gdt_at + 24) as *mut u8;
        gdtr.cast::<u16>().write_unaligned(23);
        gdtr.add(2).cast::<u64>().write_unaligned(gdt_at);
    }
    println!(
        "keel-loader: kernel at {:#x}, entry {:#x}; exiting boot services",
        l.load, l.entry
    );
    // SAFETY: nothing of boot services is used from here on.
    let map = unsafe { boot::exit_boot_services(None) };
    // SAFETY: `info` has INFO_PAGES pages, ours.
    let buf = unsafe { core::slice::from_raw_parts_mut(info, INFO_PAGES * PAGE) };
    let mut w = Writer::new(buf);
    w.cmdline(cmdline);
    w.module(
        module as u32,
        module as u32 + root.len() as u32,
        b"root.elf",
    );
    w.memory_map(map.entries().map(|d| {
        let ty = multiboot::memory_type(d.ty.0);
        (d.phys_start, d.page_count * PAGE as u64, ty)
    }));
    if let Some(fb) = fb {
        w.framebuffer(&fb);
    }
    if let Some((at, len)) = rsdp {
        // SAFETY: the firmware's RSDP, `len` bytes at `at`.
        w.rsdp(unsafe { core::slice::from_raw_parts(at as *const u8, len) });
    }
    if w.finish().is_none() {
        // Boot services are gone: nothing to report to but a halt.
        loop {
            core::hint::spin_loop();
        }
    }
    // SAFETY: everything is in place below 4 GiB (the allocations asked
    // for that; the kernel's address comes from its 32-bit header).
    unsafe { enter(code as u64, gdt_at + 24, l.entry, info as u32) }
}

/// The three GDT entries: null, 32-bit code (selector 8), 32-bit data (16).
const GDT: [u64; 3] = [0, 0x00cf_9a00_0000_ffff, 0x00cf_9200_0000_ffff];

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
fn trampoline() -> &'static [u8] {
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
unsafe fn enter(code: u64, gdtr: u64, entry: u32, info: u32) -> ! {
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

/// The ACPI RSDP (2.0 if there is one): its address and length.
fn find_rsdp() -> Option<(u64, usize)> {
    uefi::system::with_config_table(|t| {
        let find = |g| t.iter().find(|e| e.guid == g).map(|e| e.address as u64);
        find(ACPI2_GUID)
            .map(|a| (a, 36))
            .or_else(|| find(ACPI_GUID).map(|a| (a, 20)))
    })
}

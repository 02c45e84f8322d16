//! keel-loader: Keel's UEFI boot loader (an EFI application, PE32+). It
//! reads the kernel, the root task and the command line from the EFI
//! system partition it was started from (`\keel\kernel.elf`,
//! `\keel\root.elf`, `\keel\cmdline`), loads the kernel where its
//! Multiboot 2 header says, finds the ACPI RSDP and the framebuffer, exits
//! boot services and enters the kernel's Multiboot 2 entry, exactly as
//! GRUB would: the kernel has one entry for every x86 boot path.
//!
//! The Multiboot 2 work (the kernel's header, the information structure,
//! the memory-type mapping) is portable and tested on the host
//! ([`multiboot`]); the UEFI part ([`efi`]) and the switch from long mode
//! to the 32-bit entry (`arch/`) run only in firmware.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod arch;
#[cfg(target_os = "uefi")]
mod efi;
#[cfg_attr(not(target_os = "uefi"), allow(dead_code))]
mod multiboot;

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("keel-loader is an EFI application: `cargo xtask` builds it for UEFI");
}

//! keel-loader: Keel's UEFI boot loader (an EFI application, PE32+), for
//! x86_64 and AArch64. It reads the kernel, the root task and the command
//! line from the EFI system partition it was started from
//! (`\keel\kernel.elf` or `\keel\kernel.img`, `\keel\root.elf`,
//! `\keel\cmdline`) and enters the kernel the way its other boot paths
//! do, so the kernel has no UEFI code:
//! - x86_64: loads the kernel where its Multiboot 2 header says, finds the
//!   ACPI RSDP and the framebuffer, exits boot services, writes the
//!   Multiboot 2 information and enters the 32-bit entry, as GRUB would;
//! - AArch64: loads the flat Image at the start of RAM plus its
//!   `text_offset`, adds the root task (as initrd) and the command line to
//!   the firmware's device tree, exits boot services and enters it with
//!   the MMU off, as U-Boot's `booti` would.
//!
//! The Multiboot 2 and device-tree work ([`multiboot`], [`fdt`]) is
//! portable and tested on the host; the UEFI part ([`efi`]) and the
//! architectures' hand-over (`arch/`) run only in firmware.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod arch;
#[cfg(target_os = "uefi")]
mod efi;
// Used by the AArch64 loader (and the host tests) only.
#[allow(dead_code)]
mod fdt;
// Used by the x86_64 loader (and the host tests) only.
#[allow(dead_code)]
mod multiboot;

#[cfg(not(target_os = "uefi"))]
fn main() {
    eprintln!("keel-loader is an EFI application: `cargo xtask` builds it for UEFI");
}

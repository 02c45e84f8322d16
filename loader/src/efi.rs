//! The UEFI part common to the architectures: the entry, files from the
//! boot partition, memory (below 4 GiB unless an address is asked for);
//! `arch::boot` loads the kernel its way, ends boot services and jumps.

extern crate alloc;

use uefi::boot::{self, AllocateType, MemoryType};
use uefi::prelude::*;
use uefi::{CStr16, cstr16, println};

pub const PAGE: usize = 4096;
/// Below this, 32-bit code reaches everything.
const LOW: u64 = 0xffff_f000;

#[entry]
fn main() -> Status {
    match boot_keel() {
        Ok(never) => never,
        Err(why) => {
            println!("keel-loader: {why}");
            Status::LOAD_ERROR
        }
    }
}

/// The file at `path` of the partition this loader came from.
pub fn read(path: &CStr16) -> Result<alloc::vec::Vec<u8>, &'static str> {
    let fs = boot::get_image_file_system(boot::image_handle()).map_err(|_| "no file system")?;
    uefi::fs::FileSystem::new(fs)
        .read(path)
        .map_err(|_| "a file is missing")
}

/// `pages` pages of `ty` memory, at `at` or anywhere below 4 GiB.
pub fn pages(at: Option<u64>, pages: usize, ty: MemoryType) -> Result<*mut u8, &'static str> {
    let how = at.map_or(AllocateType::MaxAddress(LOW), AllocateType::Address);
    boot::allocate_pages(how, ty, pages)
        .map(|p| p.as_ptr())
        .map_err(|_| "memory for the kernel is taken by the firmware")
}

fn boot_keel() -> Result<Status, &'static str> {
    let kernel = read(crate::arch::KERNEL_FILE).map_err(|_| "the kernel file is missing")?;
    let root = read(cstr16!("\\keel\\root.elf")).map_err(|_| "\\keel\\root.elf is missing")?;
    let cmdline = read(cstr16!("\\keel\\cmdline")).unwrap_or_default();
    let cmdline = cmdline.strip_suffix(b"\n").unwrap_or(&cmdline);
    crate::arch::boot(&kernel, &root, cmdline)
}

/// Copies `bytes` into fresh pages below 4 GiB; their address.
pub fn place(bytes: &[u8]) -> Result<*mut u8, &'static str> {
    let at = pages(
        None,
        bytes.len().div_ceil(PAGE).max(1),
        MemoryType::LOADER_DATA,
    )?;
    // SAFETY: the pages were just allocated, at least `bytes.len()` long.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len()) };
    Ok(at)
}

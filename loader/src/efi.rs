//! The UEFI part common to the architectures: the entry, files from the
//! boot partition, memory (below 4 GiB unless an address is asked for);
//! `arch::boot` loads the kernel its way, ends boot services and jumps.

extern crate alloc;

use crate::multiboot::Framebuffer;
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::prelude::*;
use uefi::proto::console::gop::{GraphicsOutput, ModeInfo, PixelFormat};
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

/// The largest screen the loader switches to (the kernel's console uses
/// at most this much, `keel_fb::MAX_COLUMNS` by `MAX_ROWS` cells).
const SCREEN_MAX: (usize, usize) = (1920, 1200);

/// The graphics output's framebuffer in a direct 32-bit colour mode: the
/// largest such mode up to [`SCREEN_MAX`] (so the kernel's log has room),
/// set if it is not the current one. `None` without such a mode.
pub fn framebuffer() -> Option<Framebuffer> {
    let handle = boot::get_handle_for_protocol::<GraphicsOutput>().ok()?;
    let mut gop = boot::open_protocol_exclusive::<GraphicsOutput>(handle).ok()?;
    let shifts = |m: &ModeInfo| match m.pixel_format() {
        PixelFormat::Rgb => Some([0, 8, 16]),
        PixelFormat::Bgr => Some([16, 8, 0]),
        _ => None,
    };
    let fits = |(w, h): (usize, usize)| w <= SCREEN_MAX.0 && h <= SCREEN_MAX.1;
    let best = gop
        .modes()
        .filter(|m| shifts(m.info()).is_some() && fits(m.info().resolution()))
        .max_by_key(|m| m.info().resolution().0 * m.info().resolution().1);
    if let Some(m) = best
        && m.info() != &gop.current_mode_info()
    {
        // On failure the current mode stays, and is checked below.
        let _ = gop.set_mode(&m);
    }
    let mode = gop.current_mode_info();
    let (width, height) = mode.resolution();
    let addr = gop.frame_buffer().as_mut_ptr() as u64;
    Some(Framebuffer {
        addr,
        pitch: mode.stride() as u32 * 4,
        width: width as u32,
        height: height as u32,
        shifts: shifts(&mode)?,
    })
}

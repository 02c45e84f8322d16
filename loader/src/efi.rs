//! The UEFI part: files from the boot partition, memory below 4 GiB, the
//! RSDP and the framebuffer from the firmware, then the end of boot
//! services and the jump (see the crate docs).

extern crate alloc;

use crate::multiboot::{self, Framebuffer, Layout, Writer};
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::prelude::*;
use uefi::proto::console::gop::{GraphicsOutput, PixelFormat};
use uefi::table::cfg::{ACPI_GUID, ACPI2_GUID};
use uefi::{CStr16, cstr16, println};

const PAGE: usize = 4096;
/// Room for the boot information (the memory map is most of it).
const INFO_PAGES: usize = 16;
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
fn read(path: &CStr16) -> Result<alloc::vec::Vec<u8>, &'static str> {
    let fs = boot::get_image_file_system(boot::image_handle()).map_err(|_| "no file system")?;
    uefi::fs::FileSystem::new(fs)
        .read(path)
        .map_err(|_| "a file is missing")
}

/// `pages` pages of `ty` memory, at `at` or anywhere below 4 GiB.
fn pages(at: Option<u64>, pages: usize, ty: MemoryType) -> Result<*mut u8, &'static str> {
    let how = at.map_or(AllocateType::MaxAddress(LOW), AllocateType::Address);
    boot::allocate_pages(how, ty, pages)
        .map(|p| p.as_ptr())
        .map_err(|_| "memory for the kernel is taken by the firmware")
}

fn boot_keel() -> Result<Status, &'static str> {
    let kernel =
        read(cstr16!("\\keel\\kernel.elf")).map_err(|_| "\\keel\\kernel.elf is missing")?;
    let root = read(cstr16!("\\keel\\root.elf")).map_err(|_| "\\keel\\root.elf is missing")?;
    let cmdline = read(cstr16!("\\keel\\cmdline")).unwrap_or_default();
    let l: Layout = multiboot::layout(&kernel)?;
    // The kernel where its header says, .bss zeroed.
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
    // The root task, page-aligned below 4 GiB.
    let module = pages(None, root.len().div_ceil(PAGE), MemoryType::LOADER_DATA)?;
    // SAFETY: as above.
    unsafe { core::ptr::copy_nonoverlapping(root.as_ptr(), module, root.len()) };
    let rsdp = find_rsdp();
    let fb = framebuffer();
    let info = pages(None, INFO_PAGES, MemoryType::LOADER_DATA)?;
    // The trampoline, its GDT and GDT register in one executable page.
    let code = pages(None, 1, MemoryType::LOADER_CODE)?;
    let tramp = crate::arch::trampoline();
    let gdt_at = code as u64 + 0x800;
    // SAFETY: the page is ours; the trampoline is far smaller than 2 KiB.
    unsafe {
        core::ptr::copy_nonoverlapping(tramp.as_ptr(), code, tramp.len());
        (gdt_at as *mut [u64; 3]).write(crate::arch::GDT);
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
    w.cmdline(cmdline.strip_suffix(b"\n").unwrap_or(&cmdline));
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
    unsafe { crate::arch::enter(code as u64, gdt_at + 24, l.entry, info as u32) }
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

/// The GOP framebuffer, if there is one in a direct 32-bit RGB mode.
fn framebuffer() -> Option<Framebuffer> {
    let handle = boot::get_handle_for_protocol::<GraphicsOutput>().ok()?;
    let mut gop = boot::open_protocol_exclusive::<GraphicsOutput>(handle).ok()?;
    let mode = gop.current_mode_info();
    let shifts = match mode.pixel_format() {
        PixelFormat::Rgb => [0, 8, 16],
        PixelFormat::Bgr => [16, 8, 0],
        _ => return None,
    };
    let (width, height) = mode.resolution();
    let addr = gop.frame_buffer().as_mut_ptr() as u64;
    Some(Framebuffer {
        addr,
        pitch: mode.stride() as u32 * 4,
        width: width as u32,
        height: height as u32,
        shifts,
    })
}

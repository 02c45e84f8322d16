//! AArch64: the kernel's flat Image, started as the Linux arm64 boot
//! protocol says (and as U-Boot's `booti` does): at the 2 MiB-aligned
//! start of RAM plus the header's `text_offset`, with `x0` = a device tree
//! (the firmware's, with the root task as its initrd and the command line
//! as `bootargs` in `/chosen`), the MMU and data cache off and what the
//! kernel reads cleaned to the point of coherency. The graphics output's
//! framebuffer, if there is one, is a `simple-framebuffer` node in
//! `/chosen`, reserved in the tree's memory reservation block.

use crate::efi::{PAGE, framebuffer, pages, place};
use crate::fdt::{Edit, Prop};
use crate::multiboot::Framebuffer;
use core::arch::global_asm;
use uefi::boot::{self, MemoryType};
use uefi::mem::memory_map::MemoryMap;
use uefi::prelude::*;
use uefi::{CStr16, Guid, cstr16, guid, println};

/// The kernel's file: its flat Image.
pub const KERNEL_FILE: &CStr16 = cstr16!("\\keel\\kernel.img");
/// The configuration table holding the device tree.
const FDT_GUID: Guid = guid!("b1b621d5-f19c-41a5-830b-d9152c69aae0");
const TWO_MIB: u64 = 2 << 20;

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Loads the Image and the root task, writes the device tree, ends boot
/// services and enters the kernel.
pub fn boot(kernel: &[u8], root: &[u8], cmdline: &[u8]) -> Result<Status, &'static str> {
    if kernel.get(56..60) != Some(b"ARM\x64") {
        return Err("the kernel image has no arm64 Image header");
    }
    let bad = "truncated Image header";
    let (text_offset, size) = (le64(kernel, 8).ok_or(bad)?, le64(kernel, 16).ok_or(bad)?);
    let size = (size as usize).max(kernel.len());
    // The start of RAM: the lowest memory the firmware lets programs use.
    let map = boot::memory_map(MemoryType::LOADER_DATA).map_err(|_| "no memory map")?;
    let usable = [
        MemoryType::CONVENTIONAL,
        MemoryType::LOADER_CODE,
        MemoryType::LOADER_DATA,
    ];
    let ram = map
        .entries()
        .filter(|d| usable.contains(&d.ty))
        .map(|d| d.phys_start)
        .min();
    let at = (ram.ok_or("no RAM in the memory map")? & !(TWO_MIB - 1)) + text_offset;
    drop(map);
    let dst = pages(Some(at), size.div_ceil(PAGE), MemoryType::LOADER_DATA)?;
    // SAFETY: the pages were just allocated, `size` bytes.
    unsafe {
        core::ptr::write_bytes(dst, 0, size);
        core::ptr::copy_nonoverlapping(kernel.as_ptr(), dst, kernel.len());
    }
    let initrd = place(root)? as u64;
    let fdt = uefi::system::with_config_table(|t| {
        t.iter()
            .find(|e| e.guid == FDT_GUID)
            .map(|e| e.address as u64)
    });
    let fdt = fdt.ok_or("the firmware has no device tree (ACPI only?)")?;
    // SAFETY: the firmware's tree: its header, then `total` bytes.
    let total = u32::from_be_bytes(unsafe { *((fdt + 4) as *const [u8; 4]) }) as usize;
    // SAFETY: as above.
    let tree = unsafe { core::slice::from_raw_parts(fdt as *const u8, total) };
    let room = total + 2 * PAGE + cmdline.len();
    let out = pages(None, room.div_ceil(PAGE), MemoryType::LOADER_DATA)?;
    // SAFETY: `room` bytes just allocated.
    let buf = unsafe { core::slice::from_raw_parts_mut(out, room) };
    let mut args = alloc::vec::Vec::from(cmdline);
    args.push(0);
    let (start, end) = (
        initrd.to_be_bytes(),
        (initrd + root.len() as u64).to_be_bytes(),
    );
    let props: [Prop<'_>; 3] = [
        ("linux,initrd-start", &start),
        ("linux,initrd-end", &end),
        ("bootargs", &args),
    ];
    // The screen, as a `simple-framebuffer` node and a reservation (so
    // the kernel keeps it out of its allocator).
    let fb = framebuffer().filter(|fb| fb.shifts == [16, 8, 0]);
    let Framebuffer {
        addr,
        pitch,
        width,
        height,
        ..
    } = fb.unwrap_or_default();
    let len = u64::from(pitch) * u64::from(height);
    let name = alloc::format!("framebuffer@{addr:x}");
    // Two address cells and one size cell: `/chosen` sets no others.
    let reg = [addr.to_be_bytes().as_slice(), &(len as u32).to_be_bytes()].concat();
    let (w, h, stride) = (
        width.to_be_bytes(),
        height.to_be_bytes(),
        pitch.to_be_bytes(),
    );
    let node: [Prop<'_>; 6] = [
        ("compatible", b"simple-framebuffer\0"),
        ("reg", &reg),
        ("width", &w),
        ("height", &h),
        ("stride", &stride),
        ("format", b"a8r8g8b8\0"),
    ];
    let reserve = [(addr, len)];
    let edit = Edit {
        chosen: &props,
        child: fb.map(|_| (name.as_str(), node.as_slice())),
        reserve: &reserve[..usize::from(fb.is_some())],
    };
    let len = crate::fdt::edit(tree, &edit, buf)?;
    println!(
        "keel-loader: Image at {at:#x}, device tree at {:#x}; exiting boot services",
        out as u64
    );
    let ranges = [
        [at, size as u64],
        [out as u64, len as u64],
        [initrd, root.len() as u64],
    ];
    // SAFETY: nothing of boot services is used from here on.
    let _ = unsafe { boot::exit_boot_services(None) };
    // SAFETY: the Image, its device tree and initrd are in place.
    unsafe { keel_enter(out as u64, at, ranges.as_ptr(), ranges.len()) }
}

extern crate alloc;

unsafe extern "C" {
    /// Cleans `ranges` to the point of coherency, turns the MMU and caches
    /// off (at EL1 or EL2) and jumps to `entry` with `x0` = `dtb`.
    fn keel_enter(dtb: u64, entry: u64, ranges: *const [u64; 2], count: usize) -> !;
}

global_asm!(
    ".globl keel_enter",
    "keel_enter:",
    "    mrs x9, ctr_el0",
    "    ubfx x9, x9, #16, #4",
    "    mov x10, #4",
    "    lsl x10, x10, x9",
    "    sub x11, x10, #1",
    "1:  cbz x3, 4f",
    "    ldp x4, x5, [x2], #16",
    "    add x5, x4, x5",
    "    bic x4, x4, x11",
    "2:  cmp x4, x5",
    "    b.hs 3f",
    "    dc cvac, x4",
    "    add x4, x4, x10",
    "    b 2b",
    "3:  sub x3, x3, #1",
    "    b 1b",
    "4:  dsb sy",
    "    mrs x9, CurrentEL",
    "    cmp x9, #8",
    "    b.eq 5f",
    "    mrs x9, sctlr_el1",
    "    bic x9, x9, #1",
    "    bic x9, x9, #4",
    "    bic x9, x9, #0x1000",
    "    msr sctlr_el1, x9",
    "    b 6f",
    "5:  mrs x9, sctlr_el2",
    "    bic x9, x9, #1",
    "    bic x9, x9, #4",
    "    bic x9, x9, #0x1000",
    "    msr sctlr_el2, x9",
    "6:  isb",
    "    ic iallu",
    "    dsb sy",
    "    isb",
    "    mov x9, x1",
    "    mov x1, xzr",
    "    mov x2, xzr",
    "    mov x3, xzr",
    "    br x9",
);

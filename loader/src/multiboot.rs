//! Multiboot 2, the loader's side: reading the kernel's header (where to
//! load it, where to enter) and writing the boot-information structure the
//! kernel's `bootinfo::multiboot` parses. Portable, no allocation.

/// `eax` at the kernel's entry.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
const HEADER_MAGIC: u32 = 0xe852_50d6;
/// The header lies 8-aligned in the file's first 32 KiB.
const SEARCH: usize = 32 * 1024;

/// Where the kernel's header says to load and enter it (its address and
/// entry tags; the a.out-kludge layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// File offset of the byte loaded at `load`.
    pub offset: usize,
    /// Physical range loaded from the file, then zeroed up to `bss_end`.
    pub load: u32,
    pub load_end: u32,
    pub bss_end: u32,
    /// Physical entry point (32-bit protected mode).
    pub entry: u32,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The kernel file's Multiboot 2 header, checked against the file.
pub fn layout(kernel: &[u8]) -> Result<Layout, &'static str> {
    let head = &kernel[..kernel.len().min(SEARCH)];
    let at = (0..head.len())
        .step_by(8)
        .find(|&i| {
            let w = |k: usize| u32_at(head, i + 4 * k).unwrap_or(0);
            w(0) == HEADER_MAGIC
                && w(1) == 0
                && [w(0), w(1), w(2), w(3)]
                    .iter()
                    .fold(0u32, |a, x| a.wrapping_add(*x))
                    == 0
        })
        .ok_or("the kernel has no Multiboot 2 header")?;
    let len = u32_at(head, at + 8).ok_or("truncated header")? as usize;
    let (mut addr, mut entry) = (None, None);
    let mut tag = at + 16;
    while tag + 8 <= at + len {
        let ty = u32_at(head, tag).ok_or("truncated header")? & 0xffff;
        let size = u32_at(head, tag + 4).ok_or("truncated header")? as usize;
        let word = |k: usize| u32_at(head, tag + 8 + 4 * k).ok_or("truncated header tag");
        match ty {
            0 => break,
            2 => addr = Some([word(0)?, word(1)?, word(2)?, word(3)?]),
            3 => entry = Some(word(0)?),
            _ => {}
        }
        tag += size.max(8).next_multiple_of(8);
    }
    let [header, load, load_end, bss_end] = addr.ok_or("the header has no address tag")?;
    let entry = entry.ok_or("the header has no entry tag")?;
    let before = header
        .checked_sub(load)
        .ok_or("the header lies before the load address")?;
    let offset = (at as u32)
        .checked_sub(before)
        .ok_or("the load address is before the file")?;
    let load_end = if load_end == 0 {
        load + (kernel.len() as u32 - offset)
    } else {
        load_end
    };
    let ok = load_end >= load
        && offset as usize + (load_end - load) as usize <= kernel.len()
        && (bss_end == 0 || bss_end >= load_end)
        && (load..bss_end.max(load_end)).contains(&entry);
    if !ok {
        return Err("the header's addresses do not fit the file");
    }
    Ok(Layout {
        offset: offset as usize,
        load,
        load_end,
        bss_end: bss_end.max(load_end),
        entry,
    })
}

/// Multiboot 2 memory types.
pub const AVAILABLE: u32 = 1;
pub const RESERVED: u32 = 2;
pub const ACPI_RECLAIMABLE: u32 = 3;
pub const NVS: u32 = 4;
pub const BAD: u32 = 5;

/// The Multiboot 2 type of UEFI memory type `efi`: what the loader and
/// boot services used is free once the kernel runs (the kernel carves out
/// its image, the information and the module itself).
pub fn memory_type(efi: u32) -> u32 {
    match efi {
        1..=4 | 7 => AVAILABLE, // loader and boot-services code/data, conventional
        9 => ACPI_RECLAIMABLE,
        10 => NVS,
        8 => BAD,
        _ => RESERVED, // runtime services, MMIO, reserved, ...
    }
}

/// A framebuffer (Multiboot 2 tag 8, direct RGB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framebuffer {
    pub addr: u64,
    pub pitch: u32,
    pub width: u32,
    pub height: u32,
    /// Bit position of red, green and blue (8 bits each, 32 bits a pixel).
    pub shifts: [u8; 3],
}

/// Writes tags into a buffer: each 8-aligned, sizes filled in.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    /// Starts the structure (its size and reserved words come at `finish`).
    pub fn new(buf: &'a mut [u8]) -> Writer<'a> {
        Writer {
            buf,
            at: 8,
            overflow: false,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.at..self.at + bytes.len()) {
            Some(d) => d.copy_from_slice(bytes),
            None => self.overflow = true,
        }
        self.at += bytes.len();
    }

    /// One tag of type `ty` whose body `body` writes.
    pub fn tag(&mut self, ty: u32, body: impl FnOnce(&mut Self)) {
        let start = self.at;
        self.put(&ty.to_le_bytes());
        self.put(&0u32.to_le_bytes());
        body(self);
        let size = (self.at - start) as u32;
        if let Some(d) = self.buf.get_mut(start + 4..start + 8) {
            d.copy_from_slice(&size.to_le_bytes());
        }
        while !self.at.is_multiple_of(8) {
            self.put(&[0]);
        }
    }

    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.put(b);
    }

    /// The command line tag.
    pub fn cmdline(&mut self, cmdline: &[u8]) {
        self.tag(1, |w| {
            w.bytes(cmdline);
            w.bytes(&[0]);
        });
    }

    /// A module tag: physical `[start, end)` and its name.
    pub fn module(&mut self, start: u32, end: u32, name: &[u8]) {
        self.tag(3, |w| {
            w.u32(start);
            w.u32(end);
            w.bytes(name);
            w.bytes(&[0]);
        });
    }

    /// The memory-map tag: `(base, length, Multiboot type)` ranges.
    pub fn memory_map(&mut self, ranges: impl Iterator<Item = (u64, u64, u32)>) {
        self.tag(6, |w| {
            w.u32(24);
            w.u32(0);
            for (base, len, ty) in ranges {
                w.u64(base);
                w.u64(len);
                w.u32(ty);
                w.u32(0);
            }
        });
    }

    /// The framebuffer tag.
    pub fn framebuffer(&mut self, fb: &Framebuffer) {
        self.tag(8, |w| {
            w.u64(fb.addr);
            w.u32(fb.pitch);
            w.u32(fb.width);
            w.u32(fb.height);
            w.bytes(&[32, 1, 0, 0]); // bpp, direct RGB, reserved
            for s in fb.shifts {
                w.bytes(&[s, 8]);
            }
        });
    }

    /// The ACPI RSDP tag: a copy of the RSDP (new: version 2, 36 bytes).
    pub fn rsdp(&mut self, rsdp: &[u8]) {
        self.tag(if rsdp.len() >= 36 { 15 } else { 14 }, |w| w.bytes(rsdp));
    }

    /// Ends the structure; its length, or `None` if it did not fit.
    pub fn finish(mut self) -> Option<usize> {
        self.tag(0, |_| {});
        let total = self.at as u32;
        let head = self.buf.get_mut(..8)?;
        head[..4].copy_from_slice(&total.to_le_bytes());
        head[4..].fill(0);
        (!self.overflow).then_some(self.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel file: padding, then a header with address and entry tags.
    fn kernel(header_at: usize, load: u32, entry: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x3000];
        let words: Vec<u32> = {
            let tags = [
                2u32,
                24,
                load + header_at as u32,
                load,
                0,
                load + 0x5000,
                3,
                12,
                entry,
                0,
                0,
                8,
            ];
            let len = 16 + 4 * tags.len() as u32;
            let mut w = vec![
                HEADER_MAGIC,
                0,
                len,
                0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(len)),
            ];
            w.extend(tags);
            w
        };
        for (i, w) in words.iter().enumerate() {
            f[header_at + 4 * i..header_at + 4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        f
    }

    #[test]
    fn the_header_says_where_the_kernel_goes() {
        let f = kernel(0x1000, 0x10_0000, 0x10_0100);
        let l = layout(&f).unwrap();
        assert_eq!(
            l,
            Layout {
                offset: 0,
                load: 0x10_0000,
                load_end: 0x10_3000,
                bss_end: 0x10_5000,
                entry: 0x10_0100
            }
        );
        assert_eq!(
            layout(&[0; 64]),
            Err("the kernel has no Multiboot 2 header")
        );
        assert!(
            layout(&kernel(0x1000, 0x10_0000, 0x20_0000)).is_err(),
            "entry outside"
        );
        let mut bad = f.clone();
        bad[0x1008] ^= 1; // the length no longer sums with the checksum
        assert!(layout(&bad).is_err());
    }

    #[test]
    fn efi_memory_types_map_to_multiboot_ones() {
        assert_eq!(memory_type(7), AVAILABLE);
        assert_eq!(memory_type(4), AVAILABLE);
        assert_eq!(memory_type(9), ACPI_RECLAIMABLE);
        assert_eq!(memory_type(10), NVS);
        assert_eq!(memory_type(5), RESERVED, "runtime services code stays");
        assert_eq!(memory_type(11), RESERVED);
    }

    #[test]
    fn the_information_is_tagged_aligned_and_sized() {
        let mut buf = [0xffu8; 512];
        let mut w = Writer::new(&mut buf);
        w.cmdline(b"log=debug");
        w.module(0x20_0000, 0x20_1000, b"root");
        w.memory_map([(0, 0x9f000, AVAILABLE), (0x10_0000, 0x700_0000, AVAILABLE)].into_iter());
        w.rsdp(&[0xaa; 36]);
        let len = w.finish().unwrap();
        assert_eq!(u32_at(&buf, 0), Some(len as u32));
        let mut at = 8;
        let mut seen = Vec::new();
        loop {
            let (ty, size) = (u32_at(&buf, at).unwrap(), u32_at(&buf, at + 4).unwrap());
            seen.push((ty, size));
            if ty == 0 {
                break;
            }
            at += (size as usize).next_multiple_of(8);
        }
        assert_eq!(seen, [(1, 18), (3, 21), (6, 16 + 48), (15, 44), (0, 8)]);
        assert_eq!(at + 8, len);
        assert_eq!(
            Writer::new(&mut [0u8; 16]).finish(),
            Some(16),
            "just the end tag"
        );
        let mut small = [0u8; 24];
        let mut w = Writer::new(&mut small);
        w.cmdline(b"far too long for the buffer");
        assert_eq!(w.finish(), None);
    }
}

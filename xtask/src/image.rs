//! Flat boot images: the kernel ELF's loadable bytes laid out by physical
//! address, as `objcopy -O binary` would write them.
//!
//! AArch64 boots the flat image (it starts with a Linux arm64 Image header,
//! see `kernel/src/arch/aarch64/entry.rs`): QEMU ignores `-initrd` for ELF
//! kernels on Arm, but loads it, and describes it in the device tree, for an
//! Image. The ELF stays the file the symbolizer and GDB read.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Largest flat image accepted (a sanity bound on the ELF's addresses).
const MAX_FLAT_BYTES: u64 = 64 << 20;

/// `PT_LOAD`.
const PT_LOAD: u32 = 1;

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The bytes of every `PT_LOAD` segment with file contents, placed at its
/// physical address relative to the lowest one; gaps are zero.
pub fn flatten(elf: &[u8]) -> Result<Vec<u8>> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a little-endian ELF64 file");
    }
    let bad = || anyhow::anyhow!("truncated ELF header or program headers");
    let phoff = read_u64(elf, 0x20).ok_or_else(bad)? as usize;
    let phentsize = read_u16(elf, 0x36).ok_or_else(bad)? as usize;
    let phnum = read_u16(elf, 0x38).ok_or_else(bad)? as usize;
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if read_u32(elf, ph).ok_or_else(bad)? != PT_LOAD {
            continue;
        }
        let offset = read_u64(elf, ph + 8).ok_or_else(bad)? as usize;
        let paddr = read_u64(elf, ph + 24).ok_or_else(bad)?;
        let filesz = read_u64(elf, ph + 32).ok_or_else(bad)? as usize;
        if filesz == 0 {
            continue;
        }
        let bytes = elf
            .get(offset..offset + filesz)
            .context("a segment lies outside the file")?;
        segments.push((paddr, bytes));
    }
    let base = segments
        .iter()
        .map(|s| s.0)
        .min()
        .context("no loadable segments")?;
    let end = segments
        .iter()
        .map(|(p, b)| p + b.len() as u64)
        .max()
        .unwrap_or(base);
    if end - base > MAX_FLAT_BYTES {
        bail!("segments span {:#x} bytes", end - base);
    }
    let mut flat = vec![0u8; (end - base) as usize];
    for (paddr, bytes) in segments {
        let at = (paddr - base) as usize;
        flat[at..at + bytes.len()].copy_from_slice(bytes);
    }
    Ok(flat)
}

/// The flat image's path next to the ELF `elf` (`.bin`).
pub fn flat_path(elf: &Path) -> PathBuf {
    elf.with_extension("bin")
}

/// Writes the flat image of the ELF file `elf` to [`flat_path`].
pub fn write_flat(elf: &Path) -> Result<PathBuf> {
    let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let flat = flatten(&bytes).with_context(|| format!("flattening {}", elf.display()))?;
    let out = flat_path(elf);
    std::fs::write(&out, flat).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 header and `segs` program headers `(type, offset, paddr,
    /// filesz)`, followed by `payload` at offset 0x200.
    fn elf(segs: &[(u32, u64, u64, u64)], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(ty, off, paddr, filesz)) in segs.iter().enumerate() {
            let ph = 0x40 + i * 56;
            f[ph..ph + 4].copy_from_slice(&ty.to_le_bytes());
            f[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            f[ph + 16..ph + 24].copy_from_slice(&(paddr | 0xffff_0000_0000_0000).to_le_bytes());
            f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
            f[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn segments_land_at_their_physical_offsets() {
        let f = elf(
            &[
                (PT_LOAD, 0x200, 0x4020_0000, 4),
                (4, 0, 0, 0),
                (PT_LOAD, 0x204, 0x4020_0008, 2),
                (PT_LOAD, 0, 0x4030_0000, 0),
            ],
            b"abcdef",
        );
        assert_eq!(flatten(&f).unwrap(), b"abcd\0\0\0\0ef");
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(flatten(b"\x7fELF\x01\x01").is_err());
        assert!(flatten(&elf(&[], b"")).is_err());
        assert!(flatten(&elf(&[(PT_LOAD, 0x200, 0, 16)], b"short")).is_err());
        let far = elf(
            &[(PT_LOAD, 0x200, 0, 1), (PT_LOAD, 0x201, 1 << 40, 1)],
            b"ab",
        );
        assert!(flatten(&far).is_err());
    }
}

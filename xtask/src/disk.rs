//! Bootable disk images: an MBR partition table with one FAT partition
//! (type 0xEF, an EFI system partition, marked active), written with the
//! `fatfs` crate. UEFI firmware boots `EFI/BOOT/BOOT*.EFI` from it, and
//! U-Boot's distro boot reads `extlinux/extlinux.conf` from it; the same
//! image can be written to a USB stick.

use anyhow::{Context, Result, bail};
use std::io::{Cursor, Write};
use std::path::Path;

/// Bytes per sector.
const SECTOR: usize = 512;
/// Where the partition starts (sectors: 1 MiB, as partitioning tools do).
const START: usize = 2048;
/// Room left in the file system beyond the files (bytes).
const SLACK: usize = 8 << 20;
/// Smallest partition (bytes): FAT16 needs at least 4,085 clusters.
const MIN_PART: usize = 32 << 20;

/// A disk image holding `files` (path in the file system, contents).
pub fn build(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let data: usize = files
        .iter()
        .map(|(_, b)| b.len().next_multiple_of(4096))
        .sum();
    let part = (data + SLACK).max(MIN_PART).next_multiple_of(1 << 20);
    let mut disk = vec![0u8; START * SECTOR + part];
    let sectors = u32::try_from(part / SECTOR).context("disk image too large")?;
    // MBR: one active partition entry of type 0xEF, CHS fields unused.
    let entry = &mut disk[446..462];
    entry[0] = 0x80;
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = 0xef;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&(START as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    let volume = &mut disk[START * SECTOR..];
    let label = *b"KEEL       ";
    let options = fatfs::FormatVolumeOptions::new().volume_label(label);
    fatfs::format_volume(Cursor::new(&mut *volume), options).context("formatting FAT")?;
    let fs = fatfs::FileSystem::new(Cursor::new(&mut *volume), fatfs::FsOptions::new())?;
    for (path, bytes) in files {
        let root = fs.root_dir();
        let mut dir = root.clone();
        let parts: Vec<&str> = path.split('/').collect();
        let Some((name, dirs)) = parts.split_last() else {
            bail!("empty path in the disk image");
        };
        for d in dirs {
            dir = match dir.open_dir(d) {
                Ok(existing) => existing,
                Err(_) => dir.create_dir(d)?,
            };
        }
        let mut f = dir
            .create_file(name)
            .with_context(|| format!("creating {path}"))?;
        f.truncate()?;
        f.write_all(bytes)
            .with_context(|| format!("writing {path}"))?;
    }
    fs.unmount()?;
    Ok(disk)
}

/// Writes [`build`]'s image of `files` to `out`.
pub fn write(out: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    let disk = build(files)?;
    std::fs::write(out, disk).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn files_come_back_from_the_partition() {
        let big = vec![0x5a; 100_000];
        let files: [(&str, &[u8]); 3] = [
            ("EFI/BOOT/BOOTX64.EFI", b"MZ loader"),
            ("extlinux/extlinux.conf", b"default keel\n"),
            ("keel/big.bin", &big),
        ];
        let disk = build(&files).unwrap();
        assert_eq!(&disk[510..512], &[0x55, 0xaa]);
        assert_eq!((disk[446], disk[450]), (0x80, 0xef), "active ESP");
        let start = u32::from_le_bytes(disk[454..458].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(disk[458..462].try_into().unwrap()) as usize;
        assert_eq!(start, START);
        assert_eq!(
            (start + len) * SECTOR,
            disk.len(),
            "the partition fills the disk"
        );
        let mut volume = disk[start * SECTOR..].to_vec();
        let fs =
            fatfs::FileSystem::new(Cursor::new(&mut volume[..]), fatfs::FsOptions::new()).unwrap();
        for (path, bytes) in files {
            let mut got = Vec::new();
            let mut f = fs.root_dir().open_file(path).unwrap();
            f.read_to_end(&mut got).unwrap();
            assert_eq!(got, bytes, "{path}");
        }
    }
}

//! Firmware boot paths. `direct` is QEMU loading the kernel itself
//! (Multiboot on x86_64, an Image on AArch64, OpenSBI's jump on RISC-V);
//! `uboot` is Debian's U-Boot for QEMU's virt machine (`u-boot-qemu`)
//! booting the kernel's Image (its Linux Image header: `booti`) and the
//! root task from a disk image ([`crate::disk`]) through distro boot's
//! `extlinux/extlinux.conf`, as on a board: on RISC-V U-Boot runs in S-mode
//! after OpenSBI.

use crate::arch::Arch;
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use std::path::{Path, PathBuf};

/// How the kernel is booted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Firmware {
    /// QEMU loads the kernel (the fastest).
    #[default]
    Direct,
    /// U-Boot boots the kernel's Image from a disk (AArch64, RISC-V).
    Uboot,
}

/// Debian's U-Boot builds for QEMU's virt machine.
const UBOOT_AARCH64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const UBOOT_RISCV64: &str = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin";

/// Every firmware file a boot path uses, with the package that has it.
pub const FILES: [(&str, &str); 2] = [
    (UBOOT_AARCH64, "u-boot-qemu"),
    (UBOOT_RISCV64, "u-boot-qemu"),
];

/// The U-Boot image that boots `arch`, if there is one.
pub fn uboot(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::Aarch64 => Some(UBOOT_AARCH64),
        Arch::Riscv64 => Some(UBOOT_RISCV64),
        Arch::X86_64 => None,
    }
}

/// Offset and value of the magic of `arch`'s Linux Image header, which
/// U-Boot's `booti` checks.
fn image_magic(arch: Arch) -> Option<(usize, &'static [u8])> {
    match arch {
        Arch::Aarch64 => Some((56, b"ARM\x64")),
        Arch::Riscv64 => Some((56, b"RSC\x05")),
        Arch::X86_64 => None,
    }
}

/// Refuses a flat kernel image that `booti` would not boot.
pub fn check_image(arch: Arch, flat: &[u8]) -> Result<()> {
    let Some((at, magic)) = image_magic(arch) else {
        bail!(
            "U-Boot boots AArch64 and RISC-V; {} has no U-Boot path",
            arch.name()
        );
    };
    if flat.get(at..at + magic.len()) != Some(magic) {
        bail!(
            "the {} kernel image has no Linux Image header (magic {:?} at byte {at}): U-Boot's booti would refuse it",
            arch.name(),
            String::from_utf8_lossy(magic)
        );
    }
    Ok(())
}

/// The files of a U-Boot disk: `extlinux/extlinux.conf` naming the
/// kernel's flat image and the root task, with `cmdline` as bootargs.
pub fn uboot_files<'a>(
    kernel: &'a [u8],
    root: &'a [u8],
    cmdline: &str,
) -> Vec<(&'static str, std::borrow::Cow<'a, [u8]>)> {
    let mut conf = String::from("default keel\ntimeout 0\nlabel keel\n");
    conf += "    kernel /keel/kernel.img\n    initrd /keel/root.elf\n";
    if !cmdline.is_empty() {
        conf += &format!("    append {cmdline}\n");
    }
    vec![
        ("extlinux/extlinux.conf", conf.into_bytes().into()),
        ("keel/kernel.img", kernel.into()),
        ("keel/root.elf", root.into()),
    ]
}

/// Writes the U-Boot disk of kernel ELF `kernel` and root task `root`
/// next to the kernel (`<kernel>.uboot.img`); its path. Fails in one line
/// if the firmware or the kernel's Image header is missing.
pub fn uboot_disk(arch: Arch, kernel: &Path, root: &Path, cmdline: &str) -> Result<PathBuf> {
    let name = arch.name();
    require(uboot(arch).with_context(|| format!("U-Boot boots AArch64 and RISC-V, not {name}"))?)?;
    let elf = std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let flat = crate::image::flatten(&elf)?;
    check_image(arch, &flat)?;
    let root = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
    let files = uboot_files(&flat, &root, cmdline);
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, b)| (*p, &b[..])).collect();
    let out = kernel.with_extension("uboot.img");
    crate::disk::write(&out, &files)?;
    Ok(out)
}

/// The firmware file `path`, or one error line saying what is missing.
pub fn require(path: &str) -> Result<&str> {
    if !Path::new(path).is_file() {
        let package = FILES.iter().find(|(p, _)| *p == path).map_or("?", |f| f.1);
        bail!(
            "firmware {path} is missing (Debian package {package}; `cargo xtask setup` installs it)"
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_image_with_its_header_is_written() {
        let mut flat = vec![0u8; 64];
        flat[56..60].copy_from_slice(b"ARM\x64");
        assert!(check_image(Arch::Aarch64, &flat).is_ok());
        let e = check_image(Arch::Riscv64, &flat).unwrap_err().to_string();
        assert!(e.contains("no Linux Image header"), "{e}");
        assert!(
            check_image(Arch::Aarch64, &flat[..40]).is_err(),
            "truncated"
        );
        assert!(check_image(Arch::X86_64, &flat).is_err());
    }

    #[test]
    fn extlinux_names_the_kernel_the_root_task_and_the_command_line() {
        let files = uboot_files(b"K", b"R", "log=debug");
        let conf = String::from_utf8(files[0].1.to_vec()).unwrap();
        assert!(conf.contains("kernel /keel/kernel.img"));
        assert!(conf.contains("initrd /keel/root.elf"));
        assert!(conf.contains("append log=debug"));
        let bare = uboot_files(b"K", b"R", "");
        assert!(
            !String::from_utf8(bare[0].1.to_vec())
                .unwrap()
                .contains("append")
        );
    }

    #[test]
    fn a_missing_firmware_file_is_one_clear_line() {
        let e = require("/nonexistent/u-boot.bin").unwrap_err().to_string();
        assert!(
            e.starts_with("firmware /nonexistent/u-boot.bin is missing"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }
}

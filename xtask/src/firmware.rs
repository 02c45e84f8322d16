//! Firmware boot paths. `direct` is QEMU loading the kernel itself
//! (Multiboot on x86_64, an Image on AArch64, OpenSBI's jump on RISC-V);
//! `uboot` is Debian's U-Boot for QEMU's virt machine (`u-boot-qemu`)
//! booting the kernel's Image (its Linux Image header: `booti`) and the
//! root task from a disk image ([`crate::disk`]) through distro boot's
//! `extlinux/extlinux.conf`, as on a board: on RISC-V U-Boot runs in S-mode
//! after OpenSBI. `uefi` is Debian's OVMF (x86_64) or AAVMF (AArch64,
//! `qemu-efi-aarch64`, started with ACPI off so that it hands over the
//! device tree) starting Keel's own loader (`loader/`, the disk's
//! `EFI/BOOT/BOOT*.EFI`), which loads the kernel and the root task from
//! the same partition and enters the kernel: its Multiboot 2 entry on
//! x86_64, its Image entry with a device tree on AArch64.

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
    /// UEFI firmware starts Keel's loader from a disk (x86_64, AArch64).
    Uefi,
}

/// Debian's U-Boot builds for QEMU's virt machine.
const UBOOT_AARCH64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const UBOOT_RISCV64: &str = "/usr/lib/u-boot/qemu-riscv64_smode/u-boot.bin";

/// Debian's UEFI firmware for x86_64 (OVMF) and AArch64 (AAVMF): code,
/// and the variables each boot copies.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
/// The loader's UEFI targets.
pub const UEFI_TARGETS: [&str; 2] = ["x86_64-unknown-uefi", "aarch64-unknown-uefi"];

/// Every firmware file a boot path uses, with the package that has it.
pub const FILES: [(&str, &str); 6] = [
    (UBOOT_AARCH64, "u-boot-qemu"),
    (UBOOT_RISCV64, "u-boot-qemu"),
    (OVMF_CODE, "ovmf"),
    (OVMF_VARS, "ovmf"),
    (AAVMF_CODE, "qemu-efi-aarch64"),
    (AAVMF_VARS, "qemu-efi-aarch64"),
];

/// What UEFI needs for an architecture: the loader's target, the
/// firmware's code and variables, the loader's name on the disk.
pub struct Uefi {
    pub target: &'static str,
    pub code: &'static str,
    vars: &'static str,
    boot_file: &'static str,
}

/// UEFI for `arch`, if Keel boots that way there.
pub fn uefi(arch: Arch) -> Option<Uefi> {
    match arch {
        Arch::X86_64 => Some(Uefi {
            target: UEFI_TARGETS[0],
            code: OVMF_CODE,
            vars: OVMF_VARS,
            boot_file: "EFI/BOOT/BOOTX64.EFI",
        }),
        Arch::Aarch64 => Some(Uefi {
            target: UEFI_TARGETS[1],
            code: AAVMF_CODE,
            vars: AAVMF_VARS,
            boot_file: "EFI/BOOT/BOOTAA64.EFI",
        }),
        Arch::Riscv64 => None,
    }
}

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

/// The bytes of the file at `path`.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The flat Image of kernel ELF `elf`, refused without its Linux Image
/// header (what U-Boot's `booti` and the AArch64 UEFI loader start).
fn booti_image(arch: Arch, elf: &[u8]) -> Result<Vec<u8>> {
    let flat = crate::image::flatten(elf)?;
    check_image(arch, &flat)?;
    Ok(flat)
}

/// Where the U-Boot disk holds the kernel's flat image and the root task.
const UBOOT_KERNEL: &str = "keel/kernel.img";
const UBOOT_ROOT: &str = "keel/root.elf";

/// `extlinux/extlinux.conf` of a U-Boot disk: the kernel and the root
/// task, with `cmdline` as bootargs.
fn extlinux_conf(cmdline: &str) -> String {
    let mut conf = String::from("default keel\ntimeout 0\nlabel keel\n");
    conf += &format!("    kernel /{UBOOT_KERNEL}\n    initrd /{UBOOT_ROOT}\n");
    if !cmdline.is_empty() {
        conf += &format!("    append {cmdline}\n");
    }
    conf
}

/// Writes the U-Boot disk of kernel ELF `kernel` and root task `root`
/// next to the kernel (`<kernel>.uboot.img`); its path. Fails in one line
/// if the firmware or the kernel's Image header is missing.
pub fn uboot_disk(arch: Arch, kernel: &Path, root: &Path, cmdline: &str) -> Result<PathBuf> {
    let name = arch.name();
    require(uboot(arch).with_context(|| format!("U-Boot boots AArch64 and RISC-V, not {name}"))?)?;
    let flat = booti_image(arch, &read(kernel)?)?;
    let root = read(root)?;
    let conf = extlinux_conf(cmdline);
    let files: [(&str, &[u8]); 3] = [
        ("extlinux/extlinux.conf", conf.as_bytes()),
        (UBOOT_KERNEL, &flat),
        (UBOOT_ROOT, &root),
    ];
    let out = kernel.with_extension("uboot.img");
    crate::disk::write(&out, &files)?;
    Ok(out)
}

/// Writes the UEFI disk of kernel ELF `kernel` and root task `root` with
/// the loader at `EFI/BOOT/BOOT*.EFI`, and a fresh copy of the firmware's
/// variables for the boot to write; the paths of both. Fails in one line
/// if the firmware is missing or the kernel lacks the header the loader
/// reads (Multiboot 2 on x86_64, the Image header on AArch64).
pub fn uefi_disk(
    arch: Arch,
    kernel: &Path,
    root: &Path,
    cmdline: &str,
) -> Result<(PathBuf, PathBuf)> {
    let name = arch.name();
    let u = uefi(arch)
        .with_context(|| format!("Keel's UEFI loader boots x86_64 and AArch64, not {name}"))?;
    require(u.code)?;
    let loader = crate::toolchain::build_loader(u.target)?;
    let (efi, elf, root) = (read(&loader)?, read(kernel)?, read(root)?);
    let (kernel_file, kernel_bytes) = if arch == Arch::X86_64 {
        let magic = 0xe852_50d6u32.to_le_bytes();
        if !elf.windows(4).take(32 * 1024).any(|w| w == magic) {
            bail!(
                "the {name} kernel image has no Multiboot 2 header: the UEFI loader would refuse it"
            );
        }
        ("keel/kernel.elf", elf)
    } else {
        ("keel/kernel.img", booti_image(arch, &elf)?)
    };
    let files: [(&str, &[u8]); 4] = [
        (u.boot_file, &efi),
        (kernel_file, &kernel_bytes),
        ("keel/root.elf", &root),
        ("keel/cmdline", cmdline.as_bytes()),
    ];
    let out = kernel.with_extension("uefi.img");
    crate::disk::write(&out, &files)?;
    let vars = kernel.with_extension("uefi-vars.fd");
    std::fs::copy(require(u.vars)?, &vars).context("copying the UEFI variables")?;
    Ok((out, vars))
}

/// The disk image (and UEFI variables) `firmware` boots `arch` from; none
/// for the direct path.
pub fn disk(
    firmware: Firmware,
    arch: Arch,
    kernel: &Path,
    root: &Path,
    cmdline: &str,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    Ok(match firmware {
        Firmware::Direct => (None, None),
        Firmware::Uboot => (Some(uboot_disk(arch, kernel, root, cmdline)?), None),
        Firmware::Uefi => {
            let (disk, vars) = uefi_disk(arch, kernel, root, cmdline)?;
            (Some(disk), Some(vars))
        }
    })
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
        let conf = extlinux_conf("log=debug");
        assert!(conf.contains("kernel /keel/kernel.img"));
        assert!(conf.contains("initrd /keel/root.elf"));
        assert!(conf.contains("append log=debug"));
        assert!(!extlinux_conf("").contains("append"));
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

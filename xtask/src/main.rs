//! `cargo xtask`: builds, runs, tests and benchmarks Keel.
//!
//! Every subcommand first checks the machine (`setup`) and installs what is
//! missing, so each works on a fresh Debian machine. Kernel images are built
//! with Debian's Rust toolchain and build-std (see `toolchain`), host crates
//! with the toolchain that runs this program.

mod arch;
mod bench;
mod disk;
mod firmware;
mod image;
mod qemu;
mod screen;
mod setup;
mod symbolize;
mod test;
mod toolchain;

use anyhow::Result;
use arch::Arch;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark Keel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How QEMU executes guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    /// Software emulation (the default; deterministic with -icount).
    Tcg,
    /// Hardware virtualisation (only where /dev/kvm is real KVM).
    Kvm,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build needs (Debian packages), if missing.
    Setup,
    /// Build the kernel image and the root task.
    Build {
        #[arg(long, value_enum, default_value = "x86_64")]
        arch: Arch,
        #[arg(long)]
        release: bool,
    },
    /// Boot Keel in QEMU with its console on this terminal.
    Run {
        #[arg(long, value_enum, default_value = "x86_64")]
        arch: Arch,
        #[arg(long)]
        release: bool,
        /// Number of CPUs.
        #[arg(long, default_value_t = 1)]
        smp: u32,
        /// Guest RAM, in QEMU's syntax (e.g. 256M, 2G).
        #[arg(long, default_value = "256M")]
        mem: String,
        /// Start QEMU halted, waiting for GDB on localhost:1234.
        #[arg(long)]
        gdb: bool,
        /// How the kernel is booted: QEMU loads it (`direct`), U-Boot boots
        /// it from a disk image (`uboot`: AArch64, RISC-V), or UEFI starts
        /// Keel's loader from one (`uefi`: x86_64).
        #[arg(long, value_enum, default_value = "direct")]
        firmware: firmware::Firmware,
        #[arg(long, value_enum, default_value = "tcg")]
        accel: Accel,
        /// Extra kernel command-line words (after `--`).
        #[arg(last = true)]
        cmdline: Vec<String>,
    },
    /// Write a bootable disk image (MBR, one FAT partition) of the kernel
    /// and the root task: for a PC's UEFI (`EFI/BOOT/BOOTX64.EFI`) or a
    /// board's U-Boot (`extlinux/extlinux.conf`), on a USB stick.
    Image {
        #[arg(long, value_enum, default_value = "x86_64")]
        arch: Arch,
        /// `uefi` (x86_64) or `uboot` (AArch64, RISC-V).
        #[arg(long, value_enum, default_value = "uefi")]
        firmware: firmware::Firmware,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// Check formatting and lints, run host tests, and boot every
    /// architecture's test kernel; prints `N passed, N failed` last.
    Test {
        /// `all` or one architecture.
        #[arg(long, default_value = "all")]
        arch: String,
    },
    /// Run the in-kernel benchmarks under QEMU -icount (instructions/op).
    Bench {
        /// `all` or one architecture.
        #[arg(long, default_value = "all")]
        arch: String,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::ensure(true),
        Command::Build { arch, release } => {
            setup::ensure(false)?;
            let image = toolchain::build_kernel(arch, toolchain::Flavor::Run, release)?;
            let root = toolchain::build_root_task(arch)?;
            println!("{}", image.display());
            println!("{}", root.display());
            Ok(())
        }
        Command::Run {
            arch,
            release,
            smp,
            mem,
            gdb,
            firmware,
            accel,
            cmdline,
        } => {
            setup::ensure(false)?;
            let image = toolchain::build_kernel(arch, toolchain::Flavor::Run, release)?;
            let root = toolchain::build_root_task(arch)?;
            let cmdline = cmdline.join(" ");
            let boot = qemu::Boot::headless(arch, &image, smp, &mem, &cmdline);
            let (disk, vars) = firmware::disk(firmware, arch, &image, &root, &cmdline)?;
            qemu::run_interactive(&qemu::Boot {
                accel,
                gdb,
                ..boot.with_initrd(Some(&root)).with_firmware(
                    firmware,
                    disk.as_deref(),
                    vars.as_deref(),
                )
            })
        }
        Command::Image {
            arch,
            firmware,
            cmdline,
        } => {
            setup::ensure(false)?;
            let image = toolchain::build_kernel(arch, toolchain::Flavor::Run, true)?;
            let root = toolchain::build_root_task(arch)?;
            match firmware::disk(firmware, arch, &image, &root, &cmdline)? {
                (Some(disk), _) => println!("{}", disk.display()),
                (None, _) => {
                    anyhow::bail!("--firmware direct has no disk image (QEMU loads the kernel)")
                }
            }
            Ok(())
        }
        Command::Test { arch } => {
            setup::ensure(false)?;
            let ok = test::run(&Arch::parse_list(&arch)?)?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Bench { arch } => {
            setup::ensure(false)?;
            bench::run(&Arch::parse_list(&arch)?)
        }
    }
}

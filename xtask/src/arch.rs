//! The architectures Keel supports and how QEMU boots each.

use anyhow::{Result, bail};
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
    #[value(name = "riscv64")]
    Riscv64,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::X86_64, Arch::Aarch64, Arch::Riscv64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// `all` or a single architecture name.
    pub fn parse_list(s: &str) -> Result<Vec<Arch>> {
        if s == "all" {
            return Ok(Arch::ALL.to_vec());
        }
        match Arch::ALL.iter().find(|a| a.name() == s) {
            Some(a) => Ok(vec![*a]),
            None => bail!("unknown architecture `{s}` (expected all, x86_64, aarch64 or riscv64)"),
        }
    }

    /// The kernel's target. AArch64 uses the soft-float target so that the
    /// kernel never touches FP/SIMD registers, which hold the running
    /// thread's state while the kernel runs (user programs use
    /// [`Arch::user_target`]).
    pub fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none-softfloat",
            Arch::Riscv64 => "riscv64gc-unknown-none-elf",
        }
    }

    /// The target of user programs (FP/SIMD available).
    pub fn user_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-none",
            Arch::Aarch64 => "aarch64-unknown-none",
            Arch::Riscv64 => "riscv64gc-unknown-none-elf",
        }
    }

    /// Whether QEMU boots the flat image (`crate::image`) rather than the
    /// ELF: on AArch64 only an Image boot gets `-initrd` and the device tree
    /// in x0.
    pub fn boots_flat_image(self) -> bool {
        self == Arch::Aarch64
    }

    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
            Arch::Riscv64 => "qemu-system-riscv64",
        }
    }

    /// A machine property that swaps the interrupt controller, whose test
    /// run repeats the system tests there: AArch64's GICv3 (GICv2 is
    /// QEMU's default).
    pub fn alternate_machine(self) -> Option<&'static str> {
        match self {
            Arch::Aarch64 => Some("gic-version=3"),
            _ => None,
        }
    }

    /// Machine, CPU and exit-device arguments (without memory, CPUs, the
    /// image or the command line).
    pub fn qemu_machine_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[
                "-machine",
                "q35",
                "-cpu",
                "qemu64,+smep,+smap",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ],
            Arch::Aarch64 => &["-machine", "virt", "-cpu", "cortex-a76", "-semihosting"],
            Arch::Riscv64 => &["-machine", "virt", "-bios", "default"],
        }
    }

    /// The GDB that understands this architecture.
    pub fn gdb(self) -> &'static str {
        match self {
            Arch::X86_64 => "gdb",
            _ => "gdb-multiarch",
        }
    }
}

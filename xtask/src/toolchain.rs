//! Runs Debian's Rust toolchain for bare-metal builds: the kernel and the
//! user programs (the root task).
//!
//! `cargo xtask` itself runs under rustup's toolchain, which has no library
//! source for bare-metal targets. Kernel builds therefore call `/usr/bin/cargo`
//! with build-std, and must not inherit rustup's choice of `rustc`: the
//! environment is scrubbed of `RUSTUP_TOOLCHAIN` and cargo's own variables,
//! `/usr/bin` goes first on PATH, and `RUSTC`/`RUSTDOC` point at Debian's.

use crate::arch::Arch;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which kernel to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The kernel proper.
    Run,
    /// Runs the in-kernel tests at boot and exits.
    Test,
    /// The test kernel with RISC-V's Sv39 paging even where Sv48 is there.
    TestSv39,
    /// Runs the in-kernel benchmarks at boot and exits.
    Bench,
}

impl Flavor {
    fn feature(self) -> Option<&'static str> {
        match self {
            Flavor::Run => None,
            Flavor::Test => Some("ktest"),
            Flavor::TestSv39 => Some("ktest,sv39"),
            Flavor::Bench => Some("bench"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Flavor::Run => "run",
            Flavor::Test => "test",
            Flavor::TestSv39 => "test-sv39",
            Flavor::Bench => "bench",
        }
    }
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Debian's cargo (package `cargo-web`), which runs every bare-metal build.
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// Debian's rustc (package `rustc-web`), the compiler of those builds.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// Debian's clippy driver (package `rust-web-clippy`).
pub const DEBIAN_CLIPPY: &str = "/usr/bin/clippy-driver";
/// A file of the library source build-std compiles (package `rust-web-src`).
pub const RUST_SRC_MARKER: &str = "/usr/lib/rustlib/src/rust/library/core/Cargo.toml";

/// `PATH` as the bare-metal builds see it: Debian's `/usr/bin` first.
pub fn build_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("/usr/bin:/bin:{path}")
}

/// Debian's rustc, for queries (`--print`, `-vV`), unstable flags allowed.
pub fn rustc() -> Command {
    let mut cmd = Command::new(DEBIAN_RUSTC);
    cmd.env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// `/usr/bin/cargo SUBCOMMAND` with an environment fit for build-std.
pub fn debian_cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.arg(subcommand).current_dir(workspace_root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().to_string();
        if key.starts_with("RUSTUP_") && key != "RUSTUP_HOME"
            || key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key == "CARGO"
            || key.starts_with("RUSTC")
            || key == "RUSTDOC"
            || key == "RUSTFLAGS"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("PATH", build_path())
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTDOC", "/usr/bin/rustdoc")
        .env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// The arguments that select a bare-metal kernel build.
pub fn kernel_build_args(arch: Arch) -> Vec<String> {
    [
        "-p",
        "keel-kernel",
        "--bin",
        "keel",
        "--target",
        arch.target(),
        "--target-dir",
        "target/kernel",
        "-Zbuild-std=core,alloc,compiler_builtins",
        "-Zbuild-std-features=compiler-builtins-mem",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Builds a kernel image and returns the path of a copy named for its
/// architecture and flavour (`target/keel/<arch>-<flavor>.elf`), so test,
/// bench and run images can coexist.
pub fn build_kernel(arch: Arch, flavor: Flavor, release: bool) -> Result<PathBuf> {
    let mut cmd = debian_cargo("build");
    cmd.args(kernel_build_args(arch));
    if release {
        cmd.arg("--release");
    }
    if let Some(f) = flavor.feature() {
        cmd.args(["--features", f]);
    }
    let status = cmd.status().context("starting /usr/bin/cargo")?;
    if !status.success() {
        bail!("kernel build for {} failed ({status})", arch.name());
    }
    let root = workspace_root();
    let profile = if release { "release" } else { "debug" };
    let built = root
        .join("target/kernel")
        .join(arch.target())
        .join(profile)
        .join("keel");
    let out_dir = root.join("target/keel");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{}-{}.elf", arch.name(), flavor.name()));
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    if arch.boots_flat_image() {
        crate::image::write_flat(&out)?;
    }
    Ok(out)
}

/// Code-generation flags of user programs: static, non-PIE code (the user
/// linker script, `user/linker.ld`, places them at fixed addresses) with
/// frame pointers. Passed as `RUSTFLAGS`, which replaces the kernel's
/// per-target flags from `.cargo/config.toml` (such as x86's
/// `code-model=kernel`) for these builds only.
const USER_RUSTFLAGS: &str = "-C relocation-model=static -C force-frame-pointers=yes";

/// `/usr/bin/cargo SUBCOMMAND` for the user crates (`user/rt`,
/// `user/systest`) of `arch`: release profile, build-std, their own target
/// directory (`target/user`).
pub fn user_cargo(subcommand: &str, arch: Arch) -> Command {
    let mut cmd = debian_cargo(subcommand);
    cmd.env("RUSTFLAGS", USER_RUSTFLAGS).args([
        "-p",
        "keel-rt",
        "-p",
        "keel-systest",
        "--release",
        "--target",
        arch.user_target(),
        "--target-dir",
        "target/user",
        "-Zbuild-std=core,alloc,compiler_builtins",
        "-Zbuild-std-features=compiler-builtins-mem",
    ]);
    cmd
}

/// `/usr/bin/cargo SUBCOMMAND` for the UEFI boot loader (`loader/`), an
/// EFI application for `target`: release, build-std, `target/loader`.
pub fn loader_cargo(subcommand: &str, target: &str) -> Command {
    let mut cmd = debian_cargo(subcommand);
    cmd.args([
        "-p",
        "keel-loader",
        "--release",
        "--target",
        target,
        "--target-dir",
        "target/loader",
        "-Zbuild-std=core,alloc,compiler_builtins",
        "-Zbuild-std-features=compiler-builtins-mem",
    ]);
    cmd
}

/// Builds the UEFI boot loader for `target`; the path of the EFI file.
pub fn build_loader(target: &str) -> Result<PathBuf> {
    let status = loader_cargo("build", target)
        .status()
        .context("starting /usr/bin/cargo")?;
    if !status.success() {
        bail!("UEFI loader build for {target} failed ({status})");
    }
    Ok(workspace_root()
        .join("target/loader")
        .join(target)
        .join("release/keel-loader.efi"))
}

/// Builds the root task (`user/systest`) and returns the path of a copy
/// named for its architecture (`target/keel/<arch>-root.elf`), which QEMU
/// loads as the boot module.
pub fn build_root_task(arch: Arch) -> Result<PathBuf> {
    let status = user_cargo("build", arch)
        .status()
        .context("starting /usr/bin/cargo")?;
    if !status.success() {
        bail!("root task build for {} failed ({status})", arch.name());
    }
    let root = workspace_root();
    let built = root
        .join("target/user")
        .join(arch.user_target())
        .join("release")
        .join("systest");
    let out_dir = root.join("target/keel");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{}-root.elf", arch.name()));
    std::fs::copy(&built, &out).with_context(|| format!("copying {}", built.display()))?;
    Ok(out)
}

//! `cargo xtask test`: every check Keel has, one tally.
//!
//! In order: rustfmt, host clippy, host unit tests, and for each
//! architecture: clippy on the kernel target and on the user programs, the
//! root task's build, the in-kernel test suite booted in QEMU followed by
//! the root task's system tests (`user/systest`, passed as the boot
//! module), boots that must fail in a controlled way (bad command line,
//! kernel stack overflow), and the normal run's console, echoed by the
//! root task's user-space UART driver. Each check and each individual test (host,
//! kernel or user) counts once; the last line printed is
//! `N passed, N failed`.

use crate::arch::Arch;
use crate::firmware::{self, Firmware};
use crate::qemu::{self, Boot};
use crate::screen;
use crate::toolchain::{self, Flavor};
use anyhow::{Context, Result};
use keel_abi::harness::{EXIT_BOOT_ERROR, EXIT_CRASH, EXIT_PASS, TEST_PREFIX, describe_exit};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How long one test boot may take before it counts as hung.
const BOOT_LIMIT: Duration = Duration::from_secs(180);
/// How long the normal run may take to run its tests and start the
/// console driver, and then to echo a line.
const ECHO_LIMITS: (Duration, Duration) = (Duration::from_secs(120), Duration::from_secs(10));

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
}

impl Tally {
    fn record(&mut self, name: &str, ok: bool) {
        println!("check {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failures.push(name.to_string());
        }
    }
}

/// Runs everything for `arches`; returns whether all passed.
pub fn run(arches: &[Arch]) -> Result<bool> {
    let mut tally = Tally::default();
    let root = toolchain::workspace_root();

    section("formatting");
    let ok = run_status(
        Command::new("cargo")
            .args(["fmt", "--all", "--check"])
            .current_dir(&root),
    );
    tally.record("rustfmt", ok);

    section("host clippy");
    let ok = run_status(
        Command::new("cargo")
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root),
    );
    tally.record("clippy (host)", ok);

    section("host tests");
    host_tests(&mut tally, &root);

    for &arch in arches {
        section(&format!("{} kernel", arch.name()));
        let mut clippy = toolchain::debian_cargo("clippy");
        clippy.args(toolchain::kernel_build_args(arch)).args([
            "--features",
            "ktest,bench",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]);
        tally.record(
            &format!("clippy ({})", arch.name()),
            run_status(&mut clippy),
        );
        let mut user_clippy = toolchain::user_cargo("clippy", arch);
        user_clippy.args(["--quiet", "--", "-D", "warnings"]);
        tally.record(
            &format!("clippy user programs ({})", arch.name()),
            run_status(&mut user_clippy),
        );

        if let Some(u) = firmware::uefi(arch) {
            let mut loader_clippy = toolchain::loader_cargo("clippy", u.target);
            loader_clippy.args(["--quiet", "--", "-D", "warnings"]);
            let name = format!("clippy UEFI loader ({})", arch.name());
            tally.record(&name, run_status(&mut loader_clippy));
        }
        let root = match toolchain::build_root_task(arch) {
            Ok(path) => Some(path),
            Err(e) => {
                println!("{e:#}");
                tally.record(&format!("build root task ({})", arch.name()), false);
                None
            }
        };
        let root = root.as_deref();
        match toolchain::build_kernel(arch, Flavor::Test, false) {
            Ok(image) => {
                for smp in [1, 2, 4] {
                    kernel_tests(&mut tally, arch, &image, root, None, smp, None)?;
                }
                // The other interrupt controller of the same machine.
                if let Some(m) = arch.alternate_machine() {
                    let variant = (m, &["-machine", m][..]);
                    kernel_tests(&mut tally, arch, &image, root, Some(variant), 4, None)?;
                }
                // Booted by firmware from a disk image, as on a machine:
                // U-Boot on AArch64 and RISC-V, UEFI on x86_64 and AArch64.
                let uboot = firmware::uboot(arch).map(|_| Firmware::Uboot);
                let uefi = firmware::uefi(arch).map(|_| Firmware::Uefi);
                for via in [uboot, uefi].into_iter().flatten() {
                    let Some(r) = root else { break };
                    match firmware::disk(via, arch, &image, r, "") {
                        Ok((Some(disk), vars)) => {
                            let boot = (via, disk.as_path(), vars.as_deref());
                            kernel_tests(&mut tally, arch, &image, root, None, 1, Some(boot))?
                        }
                        other => {
                            if let Err(e) = other {
                                println!("{e:#}");
                            }
                            tally.record(&format!("{} {via:?} disk image", arch.name()), false);
                        }
                    }
                }
                // RISC-V's Sv39 fallback, forced on a CPU that has Sv48.
                if arch == Arch::Riscv64 {
                    match toolchain::build_kernel(arch, Flavor::TestSv39, false) {
                        Ok(sv39) => {
                            let variant = ("Sv39", &[][..]);
                            kernel_tests(&mut tally, arch, &sv39, root, Some(variant), 2, None)?
                        }
                        Err(e) => {
                            println!("{e:#}");
                            tally.record("build Sv39 test kernel (riscv64)", false);
                        }
                    }
                }
                bad_cmdline_refused(&mut tally, arch, &image, root)?;
                stack_overflow_reported(&mut tally, arch, &image, root)?;
                memory_above_4g_used(&mut tally, arch, &image, root)?;
                numa_nodes_used(&mut tally, arch, &image)?;
            }
            Err(e) => {
                println!("{e:#}");
                tally.record(&format!("build test kernel ({})", arch.name()), false);
            }
        }
        console_echoed(&mut tally, arch, root)?;
        if firmware::uefi(arch).is_some() {
            screen_shows_the_banner(&mut tally, arch, root)?;
        }
    }

    section("summary");
    for f in &tally.failures {
        println!("FAILED: {f}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(tally.failed == 0)
}

fn section(name: &str) {
    println!("\n==== {name} ====");
}

fn run_status(cmd: &mut Command) -> bool {
    match cmd.status() {
        Ok(s) => s.success(),
        Err(e) => {
            println!("cannot start {cmd:?}: {e}");
            false
        }
    }
}

/// `cargo test --workspace` on the host; counts each test.
fn host_tests(tally: &mut Tally, root: &Path) {
    let out = Command::new("cargo")
        .args(["test", "--workspace"])
        .current_dir(root)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("cannot start cargo test: {e}");
            tally.record("host tests", false);
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counted = 0;
    for line in text.lines() {
        if line.starts_with("test ") && (line.ends_with(" ... ok") || line.ends_with(" ... FAILED"))
        {
            println!("{line}");
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim()
                            .strip_suffix(word)
                            .and_then(|n| n.trim().split(' ').next_back()?.parse::<usize>().ok())
                    })
                    .unwrap_or(0)
            };
            let (p, f) = (num("passed"), num("failed"));
            tally.passed += p;
            tally.failed += f;
            counted += p + f;
        }
    }
    for line in text.lines().filter(|l| l.ends_with(" ... FAILED")) {
        tally.failures.push(format!("host {line}"));
    }
    if !out.status.success() {
        // Compilation errors or a test binary that crashed: show why.
        println!("{}", String::from_utf8_lossy(&out.stderr));
        tally.record("host tests ran to completion", false);
    } else {
        println!("host tests: {counted} run");
    }
}

/// `N passed, M failed` as `(N, M)`.
fn parse_summary(line: &str) -> Option<(usize, usize)> {
    let (passed, rest) = line.trim().split_once(" passed, ")?;
    let failed = rest.strip_suffix(" failed")?;
    Some((passed.parse().ok()?, failed.parse().ok()?))
}

/// Boots the test kernel with the root task and counts each test: the
/// in-kernel tests, then the root task's system tests (same line format).
/// A `variant` names the boot and adds QEMU arguments.
/// Each suite ends with its own `N passed, N failed`; those must add up
/// to the lines counted.
fn kernel_tests(
    tally: &mut Tally,
    arch: Arch,
    image: &Path,
    root: Option<&Path>,
    variant: Option<(&str, &[&str])>,
    smp: u32,
    via: Option<(Firmware, &Path, Option<&Path>)>,
) -> Result<()> {
    let name = match (variant, via) {
        (Some((v, _)), _) => format!("{} ({v}) -smp {smp}", arch.name()),
        (None, Some((Firmware::Uefi, ..))) => {
            format!("{} (UEFI, keel-loader) -smp {smp}", arch.name())
        }
        (None, Some(_)) => format!("{} (U-Boot, distro boot, booti) -smp {smp}", arch.name()),
        (None, None) => format!("{} -smp {smp}", arch.name()),
    };
    let (firmware, disk, vars) = match via {
        Some((f, d, v)) => (f, Some(d), v),
        None => (Firmware::Direct, None, None),
    };
    let extra = variant.map_or(&[][..], |v| v.1);
    // One CPU runs under -icount, where the clock is the instruction
    // count: time slices, sleeps and fairness are the same on every run
    // and every host. Several run as multi-threaded TCG, in parallel on
    // the host's cores (-icount runs them in turn on one thread, where a
    // CPU that spins can keep the others from running at all).
    let boot = Boot {
        icount: smp == 1,
        ..Boot::headless(arch, image, smp, "256M", "")
            .with_initrd(root)
            .with_firmware(firmware, disk, vars)
    };
    let outcome = qemu::run_captured_with(&boot, extra, BOOT_LIMIT, true)?;
    let online = format!("smp: {smp} CPUs online");
    tally.record(
        &format!("{name}: every CPU came up"),
        outcome.lines.iter().any(|l| l == &online),
    );
    let (mut passed, mut failed) = (0, 0);
    for line in &outcome.lines {
        let Some(rest) = line.strip_prefix(TEST_PREFIX) else {
            continue;
        };
        if rest.ends_with(" ... ok") {
            passed += 1;
        } else if let Some(test) = rest.strip_suffix(" ... FAILED") {
            failed += 1;
            tally.failures.push(format!("{name} test {test}"));
        }
    }
    tally.passed += passed;
    tally.failed += failed;
    let summaries: Vec<(usize, usize)> = outcome
        .lines
        .iter()
        .filter_map(|l| parse_summary(l))
        .collect();
    // The kernel's summary, then (with a root task) the root task's.
    let suites = if root.is_some() { 2 } else { 1 };
    let sums = summaries
        .iter()
        .fold((0, 0), |(p, f), s| (p + s.0, f + s.1));
    let saw_summary = summaries.len() == suites && sums == (passed, failed);
    if !saw_summary {
        println!(
            "{}: expected {suites} summary lines adding up to {passed} passed, {failed} failed; found {summaries:?}",
            name
        );
    }
    let summary = summaries
        .iter()
        .map(|(p, f)| format!("{p} passed, {f} failed"))
        .collect::<Vec<_>>()
        .join(" + ");
    let banner = outcome.lines.iter().any(|l| l.starts_with("RAM: "));
    let module = root.is_none() || outcome.lines.iter().any(|l| l.ends_with(" boot-module"));
    tally.record(
        &format!(
            "{} boot banner with memory map{}",
            name,
            if root.is_some() {
                " and boot module"
            } else {
                ""
            }
        ),
        banner && module,
    );
    let clean = match outcome.status {
        Some(s) if s == EXIT_PASS => failed == 0,
        Some(s) => {
            println!(
                "{}: QEMU exited with status {s} ({})",
                name,
                describe_exit(s)
            );
            false
        }
        None => {
            println!("{}: no exit within {BOOT_LIMIT:?} (hung)", name);
            false
        }
    };
    tally.record(
        &format!(
            "{} {} test run completed ({summary}, exit status matches)",
            name,
            if root.is_some() {
                "kernel + root task"
            } else {
                "kernel"
            }
        ),
        clean && saw_summary && passed > 0,
    );
    Ok(())
}

/// A malformed command line must stop the boot with a clear message and
/// the boot-error status.
fn bad_cmdline_refused(
    tally: &mut Tally,
    arch: Arch,
    image: &Path,
    root: Option<&Path>,
) -> Result<()> {
    let boot = Boot::headless(arch, image, 1, "128M", "log=bogus").with_initrd(root);
    let outcome = qemu::run_captured(&boot, BOOT_LIMIT, false)?;
    let message = outcome
        .lines
        .iter()
        .any(|l| l.starts_with("BOOT ERROR: bad kernel command line"));
    tally.record(
        &format!(
            "{} refuses a bad command line (BOOT ERROR, exit {EXIT_BOOT_ERROR})",
            arch.name()
        ),
        message && outcome.status == Some(EXIT_BOOT_ERROR),
    );
    Ok(())
}

/// Overflowing the kernel stack (`crash=stack`) must hit the guard page and
/// give a "kernel stack overflow" report and the crash status, not a hang
/// or a reset.
fn stack_overflow_reported(
    tally: &mut Tally,
    arch: Arch,
    image: &Path,
    root: Option<&Path>,
) -> Result<()> {
    let boot = Boot::headless(arch, image, 1, "128M", "crash=stack").with_initrd(root);
    let outcome = qemu::run_captured(&boot, BOOT_LIMIT, false)?;
    let report = outcome
        .lines
        .iter()
        .any(|l| l.contains("kernel stack overflow"));
    let frames = outcome.lines.iter().any(|l| l.contains("frame #1"));
    tally.record(
        &format!(
            "{} reports a kernel stack overflow (guard page, backtrace, exit {EXIT_CRASH})",
            arch.name()
        ),
        report && frames && outcome.status == Some(EXIT_CRASH),
    );
    Ok(())
}

/// With 5 GiB of RAM, memory above the boot direct map's 4 GiB must be
/// mapped and handed out, and the memory tests must still pass.
fn memory_above_4g_used(
    tally: &mut Tally,
    arch: Arch,
    image: &Path,
    root: Option<&Path>,
) -> Result<()> {
    let boot = Boot::headless(arch, image, 1, "5G", "ktest=mm::").with_initrd(root);
    let outcome = qemu::run_captured(&boot, BOOT_LIMIT, false)?;
    // "RAM: 5119 MiB total, ..." and "frames: N total (M MiB), ...".
    let number_after = |prefix: &str, marker: &str| {
        outcome.lines.iter().find_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let at = rest.find(marker)? + marker.len();
            rest[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    let ram = number_after("RAM: ", "").unwrap_or(0);
    let managed = number_after("frames: ", "(").unwrap_or(0);
    let ok = outcome.status == Some(EXIT_PASS) && ram >= 5000 && managed + 64 >= ram;
    if !ok {
        println!(
            "{}: 5 GiB boot: RAM {ram} MiB, frame allocator {managed} MiB, status {:?}",
            arch.name(),
            outcome.status
        );
    }
    tally.record(
        &format!(
            "{} maps and uses RAM above 4 GiB (5 GiB boot, memory tests pass)",
            arch.name()
        ),
        ok,
    );
    Ok(())
}

/// Two NUMA nodes of 128 MiB (one CPU each): the firmware's NUMA
/// description (ACPI SRAT on x86_64, device-tree `numa-node-id` elsewhere)
/// must reach the frame allocator, which then has a zone on node 1, and
/// the memory tests must still pass.
fn numa_nodes_used(tally: &mut Tally, arch: Arch, image: &Path) -> Result<()> {
    const NUMA: &[&str] = &[
        "-object",
        "memory-backend-ram,id=m0,size=128M",
        "-object",
        "memory-backend-ram,id=m1,size=128M",
        "-numa",
        "node,memdev=m0,cpus=0",
        "-numa",
        "node,memdev=m1,cpus=1",
    ];
    let boot = Boot::headless(arch, image, 2, "256M", "ktest=mm::");
    let outcome = qemu::run_captured_with(&boot, NUMA, BOOT_LIMIT, false)?;
    // "  zone Normal node 1: N frames, ...".
    let node1 = outcome
        .lines
        .iter()
        .any(|l| l.trim_start().starts_with("zone ") && l.contains(" node 1: "));
    let ok = outcome.status == Some(EXIT_PASS) && node1;
    if !ok {
        println!(
            "{}: 2-node NUMA boot: zone on node 1 {}, status {:?}",
            arch.name(),
            if node1 { "found" } else { "missing" },
            outcome.status
        );
    }
    tally.record(
        &format!(
            "{} uses firmware NUMA nodes (2-node boot, zone on node 1, memory tests pass)",
            arch.name()
        ),
        ok,
    );
    Ok(())
}

/// The normal run (`cargo xtask run`'s kernel and root task): once the
/// root task's user-space console driver says it is listening, a line typed
/// on the serial console must come back.
/// Boots the `run` kernel through UEFI, as `cargo xtask run --firmware
/// uefi` does, and checks a screenshot taken when the root task starts:
/// the banner must be on the framebuffer, glyph for glyph. The screenshot
/// stays in `target/keel/screen-<arch>.ppm`.
fn screen_shows_the_banner(tally: &mut Tally, arch: Arch, root: Option<&Path>) -> Result<()> {
    const STARTED: &str = "root task: entry";
    let banner = format!(
        "Keel {} ({}) booting",
        env!("CARGO_PKG_VERSION"),
        arch.name()
    );
    let name = format!("{} UEFI framebuffer shows \"{banner}\"", arch.name());
    let prepared = (|| -> Result<_> {
        let root = root.context("no root task")?;
        let image = toolchain::build_kernel(arch, Flavor::Run, false)?;
        let (disk, vars) = firmware::disk(Firmware::Uefi, arch, &image, root, "")?;
        let (disk, vars) = disk.zip(vars).context("no UEFI disk image")?;
        Ok((image, disk, vars))
    })();
    let (image, disk, vars) = match prepared {
        Ok(p) => p,
        Err(e) => {
            println!("{e:#}");
            tally.record(&name, false);
            return Ok(());
        }
    };
    let boot = Boot::headless(arch, &image, 1, "256M", "").with_firmware(
        Firmware::Uefi,
        Some(&disk),
        Some(&vars),
    );
    let file = toolchain::workspace_root().join(format!("target/keel/screen-{}.ppm", arch.name()));
    let (started, lines) = qemu::screenshot(&boot, STARTED, ECHO_LIMITS.0, &file)?;
    let found = match std::fs::read(&file).map_err(anyhow::Error::from) {
        Ok(ppm) if started => screen::Image::from_ppm(&ppm).map(|shot| shot.find_line(&banner)),
        Ok(_) => Ok(None),
        Err(e) => Err(e),
    };
    let ok = matches!(found, Ok(Some(_)));
    if !ok {
        for line in lines.iter().rev().take(20).rev() {
            println!("    {line}");
        }
        match found {
            Err(e) => println!("{}: screenshot: {e:#}", arch.name()),
            _ if !started => println!("{}: the root task did not start", arch.name()),
            _ => println!(
                "{}: the banner is not on the screen ({})",
                arch.name(),
                file.display()
            ),
        }
    }
    tally.record(&name, ok);
    Ok(())
}

fn console_echoed(tally: &mut Tally, arch: Arch, root: Option<&Path>) -> Result<()> {
    const READY: &str = "uart: echoing console input";
    const TYPED: &str = "keel echo test";
    let name = format!(
        "{} echoes console input through the user-space UART driver",
        arch.name()
    );
    let Some(root) = root else {
        tally.record(&name, false);
        return Ok(());
    };
    let image = match toolchain::build_kernel(arch, Flavor::Run, false) {
        Ok(image) => image,
        Err(e) => {
            println!("{e:#}");
            tally.record(&name, false);
            return Ok(());
        }
    };
    // As `cargo xtask run` boots it.
    let boot = Boot::headless(arch, &image, 1, "256M", "").with_initrd(Some(root));
    let input = format!("{TYPED}\r");
    let talk = qemu::run_conversation(&boot, READY, input.as_bytes(), TYPED, ECHO_LIMITS)?;
    if !talk.answered {
        for line in talk.lines.iter().rev().take(20).rev() {
            println!("    {line}");
        }
        println!(
            "{}: {}",
            arch.name(),
            if talk.triggered {
                format!("the typed line was not echoed within {:?}", ECHO_LIMITS.1)
            } else {
                format!(
                    "the console driver did not start within {:?}",
                    ECHO_LIMITS.0
                )
            }
        );
    }
    tally.record(&name, talk.answered);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary_lines() {
        assert_eq!(parse_summary("16 passed, 0 failed"), Some((16, 0)));
        assert_eq!(parse_summary("  3 passed, 2 failed\r"), Some((3, 2)));
        assert_eq!(parse_summary("test x ... ok"), None);
        assert_eq!(parse_summary("x passed, 0 failed"), None);
        assert_eq!(parse_summary("1 passed, 0 failed, 2 skipped"), None);
    }
}

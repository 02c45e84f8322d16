//! Machine set-up: finds every external program the build runs, installs
//! the Debian packages that provide the missing ones (apt-get, as root or
//! through sudo), and refuses to go on while any is still missing.
//!
//! What is checked is derived from what the build runs, not kept by hand:
//! - Debian's `cargo` and `rustc` ([`toolchain::DEBIAN_CARGO`],
//!   [`toolchain::DEBIAN_RUSTC`]), clippy's driver and the library source
//!   that build-std compiles;
//! - for every kernel and user target ([`Arch::target`],
//!   [`Arch::user_target`]), the linker rustc will run: `target.T.linker`
//!   from Cargo's configuration if set, else the target's default from
//!   `rustc --print target-spec-json`, looked up where rustc looks (its
//!   sysroot's tool directories, then `PATH` as the build sees it);
//! - each architecture's QEMU ([`Arch::qemu_binary`]) on `PATH`.
//!
//! The bare-metal targets link with `ld.lld-22` and the UEFI loader with
//! `lld-link-22` (`.cargo/config.toml`), which the package `lld-22`
//! provides; the firmware of the boot paths comes from `u-boot-qemu`,
//! `ovmf` and `qemu-efi-aarch64` (`crate::firmware::FILES`). rustc's default for them,
//! `rust-lld`, is in `rust-web-llvm`, which would also pull in all of
//! `llvm-22` (about 90 MB) for the same lld.
//!
//! QEMU 7.2 (bookworm) conflicts with a newer `qemu-utils` that some images
//! ship, so that package is pinned back to bookworm's 7.2.
//!
//! Every error ends in one line that says what to install by hand.

use crate::arch::Arch;
use crate::toolchain;
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Something the build needs that is not there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The program (or file) that was looked for.
    pub program: String,
    /// Why the build needs it.
    pub used_for: String,
    /// The Debian package that provides it, if known.
    pub package: Option<&'static str>,
}

impl Missing {
    fn describe(&self) -> String {
        let pkg = match self.package {
            Some(p) => format!("package {p}"),
            None => "no known Debian package".to_string(),
        };
        format!("`{}` ({}; {pkg})", self.program, self.used_for)
    }
}

/// The Debian package that provides `program` (a name or a path), if known.
pub fn package_for(program: &str) -> Option<&'static str> {
    let name = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    Some(match name {
        "cargo" => "cargo-web",
        "rustc" | "rustdoc" => "rustc-web",
        "clippy-driver" => "rust-web-clippy",
        "rust-lld" => "rust-web-llvm",
        "ld.lld-22" | "lld-link-22" => "lld-22",
        "ld.lld" => "lld",
        "cc" | "gcc" => "gcc",
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-system-aarch64" => "qemu-system-arm",
        "qemu-system-riscv64" => "qemu-system-misc",
        _ if program == toolchain::RUST_SRC_MARKER => "rust-web-src",
        _ if let Some((_, p)) = crate::firmware::FILES.iter().find(|f| f.0 == program) => p,
        _ => return None,
    })
}

/// Finds `program` as `Command` (and rustc, for its linker) would: a name
/// with a `/` is a path; a bare name is looked for in `dirs`, then in each
/// directory of `path_var`. Only executable regular files count.
pub fn find_program(program: &str, dirs: &[PathBuf], path_var: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    dirs.iter()
        .cloned()
        .chain(std::env::split_paths(path_var))
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The `linker` of a target from `rustc --print target-spec-json`; targets
/// that name none link with `cc`.
pub fn spec_linker(spec_json: &str) -> Result<String> {
    let spec: serde_json::Value =
        serde_json::from_str(spec_json).context("parsing rustc's target spec")?;
    Ok(spec
        .get("linker")
        .and_then(|v| v.as_str())
        .unwrap_or("cc")
        .to_string())
}

/// The value printed by `cargo config get --format json-value KEY`: a JSON
/// string, or `None` when the key is unset (cargo then fails).
pub fn config_value(stdout: &str, success: bool) -> Option<String> {
    if !success {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(stdout.trim())
        .ok()?
        .as_str()
        .map(str::to_string)
}

/// The directories rustc searches for its linker before `PATH`:
/// `<sysroot>/lib/rustlib/<host>/bin` and its `gcc-ld`.
pub fn rustc_tool_dirs(sysroot: &str, version_verbose: &str) -> Vec<PathBuf> {
    let Some(host) = version_verbose
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
    else {
        return Vec::new();
    };
    let bin = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host.trim())
        .join("bin");
    vec![bin.join("gcc-ld"), bin]
}

/// Everything the build needs that is missing now.
fn missing_now() -> Result<Vec<Missing>> {
    let build_path = toolchain::build_path();
    let own_path = std::env::var("PATH").unwrap_or_default();
    let mut out = Vec::new();
    let mut need = |program: &str, used_for: &str, found: bool| {
        if found {
            return;
        }
        if let Some(m) = out.iter_mut().find(|m: &&mut Missing| m.program == program) {
            m.used_for = format!("{}, {used_for}", m.used_for);
        } else {
            out.push(Missing {
                program: program.to_string(),
                used_for: used_for.to_string(),
                package: package_for(program),
            });
        }
    };
    let toolchain_files = [
        (toolchain::DEBIAN_CARGO, "bare-metal builds"),
        (toolchain::DEBIAN_RUSTC, "bare-metal builds"),
        (toolchain::DEBIAN_CLIPPY, "bare-metal clippy"),
    ];
    for (program, used_for) in toolchain_files {
        need(program, used_for, is_executable(Path::new(program)));
    }
    need(
        toolchain::RUST_SRC_MARKER,
        "build-std's library source",
        Path::new(toolchain::RUST_SRC_MARKER).is_file(),
    );
    for (file, _) in crate::firmware::FILES {
        need(file, "firmware boot paths", Path::new(file).is_file());
    }
    for arch in Arch::ALL {
        let q = arch.qemu_binary();
        let used = format!("booting {}", arch.name());
        need(q, &used, find_program(q, &[], &own_path).is_some());
    }
    // The linkers, as Debian's rustc and cargo will pick them. Before those
    // are installed, the toolchain running this program predicts them (it
    // reads the same Cargo configuration and built-in target specs), so one
    // install gets everything; the next round checks with Debian's own.
    let debian = [toolchain::DEBIAN_CARGO, toolchain::DEBIAN_RUSTC]
        .iter()
        .all(|p| is_executable(Path::new(p)));
    let dirs = if debian {
        rustc_tool_dirs(
            &capture(toolchain::rustc().arg("--print").arg("sysroot"))?,
            &capture(toolchain::rustc().arg("-vV"))?,
        )
    } else {
        Vec::new()
    };
    for target in targets() {
        let linker = match linker_for(target, debian) {
            Ok(l) => l,
            // A prediction that cannot be made waits for Debian's toolchain.
            Err(_) if !debian => continue,
            Err(e) => return Err(e),
        };
        let used = format!("linking {target}");
        need(
            &linker,
            &used,
            find_program(&linker, &dirs, &build_path).is_some(),
        );
    }
    Ok(out)
}

/// Every target the build compiles for, once each.
fn targets() -> BTreeSet<&'static str> {
    Arch::ALL
        .iter()
        .flat_map(|a| [a.target(), a.user_target()])
        .chain(crate::firmware::UEFI_TARGETS)
        .collect()
}

/// The linker rustc runs for `target` in this workspace, asked of Debian's
/// cargo and rustc if `debian`, else of the ones on `PATH`.
fn linker_for(target: &str, debian: bool) -> Result<String> {
    let key = format!("target.{target}.linker");
    let mut cargo = if debian {
        toolchain::debian_cargo("-Zunstable-options")
    } else {
        let mut c = Command::new("cargo");
        c.arg("-Zunstable-options")
            .current_dir(toolchain::workspace_root())
            .env("RUSTC_BOOTSTRAP", "1");
        c
    };
    let out = cargo
        .args(["config", "get", "--format", "json-value", &key])
        .output()
        .context("running cargo config get")?;
    if let Some(linker) = config_value(&String::from_utf8_lossy(&out.stdout), out.status.success())
    {
        // Cargo resolves a configured path relative to the directory
        // holding `.cargo/`; a bare name is looked up on PATH.
        return Ok(if linker.contains('/') && !linker.starts_with('/') {
            toolchain::workspace_root()
                .join(linker)
                .to_string_lossy()
                .into_owned()
        } else {
            linker
        });
    }
    let mut rustc = if debian {
        toolchain::rustc()
    } else {
        let mut c = Command::new("rustc");
        c.env("RUSTC_BOOTSTRAP", "1");
        c
    };
    let spec = capture(rustc.args([
        "-Zunstable-options",
        "--print",
        "target-spec-json",
        "--target",
        target,
    ]))?;
    spec_linker(&spec)
}

fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure everything the build runs is present, installing what is
/// missing. With `verbose`, also reports when nothing was missing.
pub fn ensure(verbose: bool) -> Result<()> {
    // Two rounds: the first installs the toolchain, from which the second
    // learns the linkers.
    let mut installed_any = false;
    for round in 0..2 {
        let missing = missing_now()?;
        if missing.is_empty() {
            if verbose || installed_any {
                println!("setup: everything Keel's build runs is installed");
            }
            return Ok(());
        }
        let list = missing
            .iter()
            .map(Missing::describe)
            .collect::<Vec<_>>()
            .join(", ");
        println!("setup: missing {list}");
        let packages: BTreeSet<&str> = missing.iter().filter_map(|m| m.package).collect();
        if let Some(m) = missing.iter().find(|m| m.package.is_none()) {
            bail!(
                "setup: {} is missing and no Debian package is known for it: install it by hand so that it is on PATH",
                m.describe()
            );
        }
        install(&packages.into_iter().collect::<Vec<_>>(), round == 0)?;
        installed_any = true;
    }
    let missing = missing_now()?;
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "setup: still missing after installing: {}; install by hand, as root: apt-get install {}",
        missing
            .iter()
            .map(Missing::describe)
            .collect::<Vec<_>>()
            .join(", "),
        missing
            .iter()
            .filter_map(|m| m.package)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The one line that ends every failed install: what went wrong and the
/// command to run by hand.
pub fn by_hand(reason: &str, install_args: &[String]) -> String {
    format!(
        "setup: {reason}; install by hand, as root: apt-get {}",
        install_args.join(" ")
    )
}

/// apt-get's arguments to install `packages`, with the qemu-utils pin when
/// QEMU is among them and a newer qemu-utils is installed.
fn install_args(packages: &[&str]) -> std::result::Result<Vec<String>, String> {
    let mut args: Vec<String> = ["install", "-y", "-q", "--no-install-recommends"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if packages.iter().any(|p| p.starts_with("qemu-system")) {
        // QEMU 7.2 needs its own qemu-utils; an image with a newer one from
        // backports must be downgraded, or apt refuses the install.
        if let Some(pin) = qemu_utils_pin().map_err(|e| format!("{e:#}"))? {
            println!("setup: pinning {pin} (QEMU 7.2 conflicts with the installed qemu-utils)");
            args.push("--allow-downgrades".into());
            args.push(pin);
        }
    }
    args.extend(packages.iter().map(|s| s.to_string()));
    Ok(args)
}

/// Installs `packages` with apt-get, after `apt-get update` if `update`.
fn install(packages: &[&str], update: bool) -> Result<()> {
    let plain = || {
        let mut a = vec!["install".to_string()];
        a.extend(packages.iter().map(|s| s.to_string()));
        a
    };
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!(by_hand(
            "apt-get not found (not a Debian machine?)",
            &plain()
        ));
    }
    let args = match install_args(packages) {
        Ok(a) => a,
        Err(e) => bail!(by_hand(&e, &plain())),
    };
    let Some(sudo) = privilege_prefix() else {
        bail!(by_hand("not root and no sudo", &args));
    };
    println!("setup: installing Debian packages: {}", packages.join(" "));
    if update {
        apt(&sudo, &["update", "-q"]).map_err(|e| anyhow::anyhow!(by_hand(&e, &args)))?;
    }
    for p in packages {
        if !available(p) {
            bail!(by_hand(
                &format!(
                    "package {p} is not available from this machine's apt sources (Keel needs Debian 12 bookworm with its updates)"
                ),
                &args
            ));
        }
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    apt(&sudo, &argv).map_err(|e| anyhow::anyhow!(by_hand(&e, &args)))
}

/// Whether apt knows an installable version of `package`.
fn available(package: &str) -> bool {
    let Ok(out) = Command::new("apt-cache").args(["policy", package]).output() else {
        return false;
    };
    candidate(&String::from_utf8_lossy(&out.stdout)).is_some()
}

/// The candidate version in `apt-cache policy` output, if any.
pub fn candidate(policy: &str) -> Option<&str> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
}

/// `Some([])` when root, `Some(["sudo"])` when sudo exists, else `None`.
fn privilege_prefix() -> Option<Vec<&'static str>> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return Some(vec![]);
    }
    find_program("sudo", &[], &std::env::var("PATH").unwrap_or_default()).map(|_| vec!["sudo"])
}

/// Runs apt-get; the error is one line.
fn apt(sudo: &[&str], args: &[&str]) -> std::result::Result<(), String> {
    let (cmd, rest) = match sudo.first() {
        Some(s) => (*s, [&["apt-get"], args].concat()),
        None => ("apt-get", args.to_vec()),
    };
    println!("setup: {cmd} {}", rest.join(" "));
    match Command::new(cmd)
        .args(&rest)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("apt-get {} failed ({s})", args.join(" "))),
        Err(e) => Err(format!("cannot start {cmd}: {e}")),
    }
}

/// `qemu-utils=<bookworm 7.2 version>` if a qemu-utils other than 7.2 is
/// installed, else `None`.
fn qemu_utils_pin() -> Result<Option<String>> {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "qemu-utils"])
        .output()
        .context("running dpkg-query")?;
    let version = String::from_utf8_lossy(&installed.stdout)
        .trim()
        .to_string();
    if !installed.status.success() || version.is_empty() || version.starts_with("1:7.2") {
        return Ok(None);
    }
    let madison = Command::new("apt-cache")
        .args(["madison", "qemu-utils"])
        .output()
        .context("running apt-cache")?;
    let text = String::from_utf8_lossy(&madison.stdout);
    let pin = text
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(str::trim))
        .find(|v| v.starts_with("1:7.2"))
        .map(|v| format!("qemu-utils={v}"));
    if pin.is_none() {
        bail!(
            "qemu-utils {version} is installed and no QEMU 7.2 qemu-utils is available to pin (remove qemu-utils first)"
        );
    }
    Ok(pin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-setup-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn touch(p: &Path, mode: u32) {
        std::fs::write(p, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn finds_programs_where_rustc_looks_first() {
        let tools = scratch("tools");
        let bin = scratch("bin");
        touch(&bin.join("ld.lld-22"), 0o755);
        let path = bin.to_string_lossy().into_owned();
        assert_eq!(
            find_program("ld.lld-22", std::slice::from_ref(&tools), &path),
            Some(bin.join("ld.lld-22"))
        );
        touch(&tools.join("ld.lld-22"), 0o755);
        assert_eq!(
            find_program("ld.lld-22", std::slice::from_ref(&tools), &path),
            Some(tools.join("ld.lld-22")),
            "the sysroot's tool directory comes before PATH"
        );
        assert_eq!(
            find_program("rust-lld", std::slice::from_ref(&tools), &path),
            None
        );
    }

    #[test]
    fn a_file_that_is_not_executable_or_a_directory_is_not_a_program() {
        let bin = scratch("noexec");
        touch(&bin.join("rust-lld"), 0o644);
        std::fs::create_dir_all(bin.join("ld.lld")).unwrap();
        let path = bin.to_string_lossy().into_owned();
        assert_eq!(find_program("rust-lld", &[], &path), None);
        assert_eq!(find_program("ld.lld", &[], &path), None);
        let abs = bin.join("rust-lld").to_string_lossy().into_owned();
        assert_eq!(find_program(&abs, &[], ""), None);
        touch(&bin.join("rust-lld"), 0o755);
        assert_eq!(find_program(&abs, &[], ""), Some(bin.join("rust-lld")));
    }

    #[test]
    fn the_linker_comes_from_the_target_spec_or_defaults_to_cc() {
        let spec = r#"{"arch":"x86_64","linker":"rust-lld","linker-flavor":"gnu-lld"}"#;
        assert_eq!(spec_linker(spec).unwrap(), "rust-lld");
        assert_eq!(spec_linker(r#"{"arch":"x86_64"}"#).unwrap(), "cc");
        assert!(spec_linker("not json").is_err());
    }

    #[test]
    fn a_configured_linker_overrides_the_spec_only_when_set() {
        assert_eq!(
            config_value("\"ld.lld-22\"\n", true),
            Some("ld.lld-22".to_string())
        );
        assert_eq!(config_value("", false), None);
        assert_eq!(config_value("\"ld.lld-22\"", false), None);
    }

    #[test]
    fn rustc_tool_dirs_follow_the_host_triple() {
        let vv = "rustc 1.96.0\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.96.0\n";
        let dirs = rustc_tool_dirs("/usr\n", vv);
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld"),
                PathBuf::from("/usr/lib/rustlib/x86_64-unknown-linux-gnu/bin"),
            ]
        );
        assert!(rustc_tool_dirs("/usr", "garbage").is_empty());
    }

    #[test]
    fn missing_programs_name_their_package() {
        assert_eq!(package_for("rust-lld"), Some("rust-web-llvm"));
        assert_eq!(package_for("ld.lld-22"), Some("lld-22"));
        assert_eq!(package_for("/usr/bin/cargo"), Some("cargo-web"));
        assert_eq!(package_for("qemu-system-riscv64"), Some("qemu-system-misc"));
        assert_eq!(
            package_for(toolchain::RUST_SRC_MARKER),
            Some("rust-web-src")
        );
        assert_eq!(package_for("frobnicate-ld"), None);
        let m = Missing {
            program: "rust-lld".into(),
            used_for: "linking x86_64-unknown-none".into(),
            package: package_for("rust-lld"),
        };
        let text = m.describe();
        assert!(text.contains("rust-lld") && text.contains("rust-web-llvm"));
    }

    #[test]
    fn every_target_and_qemu_the_build_uses_has_a_known_package() {
        for arch in Arch::ALL {
            assert!(package_for(arch.qemu_binary()).is_some());
        }
        assert!(targets().contains("aarch64-unknown-none-softfloat"));
        assert!(targets().contains("aarch64-unknown-none"));
        assert!(
            targets().contains("x86_64-unknown-uefi") && targets().contains("aarch64-unknown-uefi")
        );
        for (file, package) in crate::firmware::FILES {
            assert_eq!(package_for(file), Some(package), "{file}");
        }
        // Every linker the workspace configures can be installed (a fresh
        // machine lacked `lld-link-22` once: no package was known for it).
        let config =
            std::fs::read_to_string(toolchain::workspace_root().join(".cargo/config.toml"));
        let config = config.expect("reading .cargo/config.toml");
        let linkers: Vec<&str> = config
            .lines()
            .filter_map(|l| l.trim().strip_prefix("linker = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .collect();
        assert!(linkers.contains(&"lld-link-22"), "{linkers:?}");
        for linker in linkers {
            assert!(package_for(linker).is_some(), "no package for {linker}");
        }
    }

    #[test]
    fn install_errors_are_one_line_naming_the_packages() {
        let args = ["install", "lld-22", "qemu-system-arm"].map(String::from);
        let line = by_hand("not root and no sudo", &args);
        assert!(!line.contains('\n'));
        assert!(line.starts_with("setup: not root and no sudo;"));
        assert!(line.ends_with("apt-get install lld-22 qemu-system-arm"));
    }

    #[test]
    fn apt_policy_candidate() {
        let have = "lld-22:\n  Installed: (none)\n  Candidate: 1:22.1.8-1~deb12u1\n";
        assert_eq!(candidate(have), Some("1:22.1.8-1~deb12u1"));
        let none = "foo:\n  Installed: (none)\n  Candidate: (none)\n";
        assert_eq!(candidate(none), None);
        assert_eq!(candidate(""), None);
    }
}

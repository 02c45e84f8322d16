//! Machine set-up: finds what the build needs and installs what is missing
//! with apt-get (as root, or through sudo).
//!
//! What Keel needs (see `shared/PLATFORM.md`): Debian's Rust toolchain with
//! library source and clippy (`rustc-web cargo-web rust-web-src
//! rust-web-clippy`), its linker (`lld-22`), and QEMU 7.2 for the three
//! architectures. Debian bookworm's QEMU conflicts with a newer `qemu-utils`
//! some images ship, so that package is pinned back to bookworm's 7.2.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

struct Need {
    /// A file whose presence shows the need is met.
    path: &'static str,
    /// The Debian package that provides it.
    package: &'static str,
}

const NEEDS: &[Need] = &[
    Need {
        path: "/usr/bin/rustc",
        package: "rustc-web",
    },
    Need {
        path: "/usr/bin/cargo",
        package: "cargo-web",
    },
    Need {
        path: "/usr/lib/rustlib/src/rust/library/core/Cargo.toml",
        package: "rust-web-src",
    },
    Need {
        path: "/usr/bin/clippy-driver",
        package: "rust-web-clippy",
    },
    Need {
        path: "/usr/bin/ld.lld-22",
        package: "lld-22",
    },
    Need {
        path: "/usr/bin/qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Need {
        path: "/usr/bin/qemu-system-aarch64",
        package: "qemu-system-arm",
    },
    Need {
        path: "/usr/bin/qemu-system-riscv64",
        package: "qemu-system-misc",
    },
];

/// Makes sure everything in `NEEDS` is present; installs the missing
/// packages. With `verbose`, also reports when nothing was missing.
pub fn ensure(verbose: bool) -> Result<()> {
    let missing: Vec<&Need> = NEEDS
        .iter()
        .filter(|n| !Path::new(n.path).exists())
        .collect();
    if missing.is_empty() {
        if verbose {
            println!("setup: everything Keel needs is installed");
        }
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|n| n.package.to_string()).collect();
    println!(
        "setup: missing {}; installing Debian packages: {}",
        missing
            .iter()
            .map(|n| n.path)
            .collect::<Vec<_>>()
            .join(", "),
        packages.join(" ")
    );
    let sudo = privilege_prefix()?;
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("apt-get not found: install {} by hand", packages.join(" "));
    }
    apt(&sudo, &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    if packages.iter().any(|p| p.starts_with("qemu-system")) {
        // QEMU 7.2 needs its own qemu-utils; an image with a newer one from
        // backports must be downgraded, or apt refuses the install.
        if let Some(pin) = qemu_utils_pin()? {
            println!("setup: pinning {pin} (QEMU 7.2 conflicts with the installed qemu-utils)");
            packages.push(pin);
            args.push("--allow-downgrades");
        }
    }
    let mut all: Vec<&str> = args;
    all.extend(packages.iter().map(String::as_str));
    apt(&sudo, &all)?;
    let still: Vec<&str> = NEEDS
        .iter()
        .filter(|n| !Path::new(n.path).exists())
        .map(|n| n.path)
        .collect();
    if !still.is_empty() {
        bail!("setup: still missing after install: {}", still.join(", "));
    }
    println!("setup: done");
    Ok(())
}

/// `[]` when root, `["sudo"]` when sudo exists, else an error.
fn privilege_prefix() -> Result<Vec<&'static str>> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return Ok(vec![]);
    }
    if Path::new("/usr/bin/sudo").exists() {
        return Ok(vec!["sudo"]);
    }
    bail!(
        "setup: packages are missing and this user is not root and has no sudo; install them as root (cargo xtask setup)"
    )
}

fn apt(sudo: &[&str], args: &[&str]) -> Result<()> {
    let (cmd, rest) = match sudo.first() {
        Some(s) => (*s, [&["apt-get"], args].concat()),
        None => ("apt-get", args.to_vec()),
    };
    println!("setup: {cmd} {}", rest.join(" "));
    let status = Command::new(cmd)
        .args(&rest)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("starting {cmd}"))?;
    if !status.success() {
        bail!("setup: apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
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
            "setup: qemu-utils {version} is installed and no QEMU 7.2 qemu-utils is available to pin"
        );
    }
    Ok(pin)
}

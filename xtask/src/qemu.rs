//! Starting QEMU: interactively (`run`) or as a bounded, captured run whose
//! exit status and output the test and bench drivers inspect.

use crate::Accel;
use crate::arch::Arch;
use crate::firmware::Firmware;
use crate::symbolize::Symbolizer;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use wait_timeout::ChildExt;

/// Options for one QEMU boot.
pub struct Boot<'a> {
    pub arch: Arch,
    pub image: &'a Path,
    pub smp: u32,
    pub mem: &'a str,
    pub cmdline: &'a str,
    pub accel: Accel,
    /// `-icount shift=0,sleep=off` and a fixed virtual RTC.
    pub icount: bool,
    pub gdb: bool,
    /// The boot module (the root task's ELF file), passed with `-initrd`:
    /// the kernel finds it in the Multiboot module list or the device
    /// tree's `/chosen` `linux,initrd-start/end`.
    pub initrd: Option<&'a Path>,
    /// How the kernel is booted, and the disk the firmware boots it from
    /// (`crate::firmware`).
    pub firmware: Firmware,
    pub disk: Option<&'a Path>,
    /// UEFI's variable store (a copy the boot may write).
    pub vars: Option<&'a Path>,
}

impl<'a> Boot<'a> {
    /// A non-interactive TCG boot: no GDB stub, no -icount.
    pub fn headless(arch: Arch, image: &'a Path, smp: u32, mem: &'a str, cmdline: &'a str) -> Self {
        Boot {
            arch,
            image,
            smp,
            mem,
            cmdline,
            accel: Accel::Tcg,
            icount: false,
            gdb: false,
            initrd: None,
            firmware: Firmware::Direct,
            disk: None,
            vars: None,
        }
    }

    /// The same boot through `firmware`, from `disk` (with UEFI's
    /// variables `vars`).
    pub fn with_firmware(
        self,
        firmware: Firmware,
        disk: Option<&'a Path>,
        vars: Option<&'a Path>,
    ) -> Self {
        Boot {
            firmware,
            disk,
            vars,
            ..self
        }
    }

    /// The same boot with `module` as the boot module.
    pub fn with_initrd(self, module: Option<&'a Path>) -> Self {
        Boot {
            initrd: module,
            ..self
        }
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.arch.qemu_binary());
        cmd.args(self.arch.qemu_machine_args());
        cmd.args(["-m", self.mem, "-smp", &self.smp.to_string()]);
        cmd.args(["-nographic", "-no-reboot"]);
        match self.accel {
            Accel::Tcg => cmd.args(["-accel", "tcg"]),
            Accel::Kvm => cmd.args(["-accel", "kvm"]),
        };
        if self.icount {
            cmd.args([
                "-icount",
                "shift=0,sleep=off",
                "-rtc",
                "base=2024-01-01T00:00:00,clock=vm",
            ]);
        }
        if self.gdb {
            cmd.args(["-s", "-S"]);
        }
        if let (Firmware::Uboot, Some(disk)) = (self.firmware, self.disk) {
            // U-Boot finds the kernel, the root task and the command line
            // on the disk. On RISC-V OpenSBI (`-bios default`) starts it.
            let uboot = crate::firmware::uboot(self.arch).unwrap_or_default();
            match self.arch {
                Arch::Riscv64 => cmd.arg("-kernel").arg(uboot),
                _ => cmd.arg("-bios").arg(uboot),
            };
            let drive = format!("if=none,format=raw,id=keel,file={}", disk.display());
            cmd.args(["-drive", &drive, "-device", "virtio-blk-device,drive=keel"]);
            return cmd;
        }
        if let (Firmware::Uefi, Some(disk), Some(vars)) = (self.firmware, self.disk, self.vars) {
            // The firmware, its variables (a copy per boot), the disk.
            let code = crate::firmware::uefi(self.arch).map_or("", |u| u.code);
            let code = format!("if=pflash,format=raw,readonly=on,file={code}");
            let vars = format!("if=pflash,format=raw,file={}", vars.display());
            cmd.args(["-drive", &code, "-drive", &vars]);
            if self.arch == Arch::X86_64 {
                cmd.args(["-drive", &format!("format=raw,file={}", disk.display())]);
            } else {
                // Without ACPI tables AAVMF hands over the device tree;
                // `ramfb` gives it a framebuffer that needs no driver.
                let drive = format!("if=none,format=raw,id=keel,file={}", disk.display());
                cmd.args(["-machine", "acpi=off", "-device", "ramfb", "-drive", &drive]);
                cmd.args(["-device", "virtio-blk-device,drive=keel"]);
            }
            return cmd;
        }
        if self.arch.boots_flat_image() {
            cmd.arg("-kernel").arg(crate::image::flat_path(self.image));
        } else {
            cmd.arg("-kernel").arg(self.image);
        }
        if let Some(module) = self.initrd {
            cmd.arg("-initrd").arg(module);
        }
        // Always pass -append so QEMU's command line (and so the kernel's)
        // is exactly what we say.
        cmd.args(["-append", self.cmdline]);
        cmd
    }
}

/// What a bounded boot produced.
pub struct Outcome {
    /// QEMU's exit status; `None` if it was killed at the time limit.
    pub status: Option<i32>,
    pub lines: Vec<String>,
}

/// Boots and waits at most `limit`, echoing symbolized output when `echo`.
pub fn run_captured(boot: &Boot<'_>, limit: Duration, echo: bool) -> Result<Outcome> {
    run_captured_with(boot, &[], limit, echo)
}

/// [`run_captured`] with `extra` QEMU arguments (e.g. `-numa` options).
pub fn run_captured_with(
    boot: &Boot<'_>,
    extra: &[&str],
    limit: Duration,
    echo: bool,
) -> Result<Outcome> {
    let mut session = Session::start(boot, extra)?;
    let deadline = std::time::Instant::now() + limit;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    // Lines until QEMU closes its output (it ended) or time is up.
    while let Ok(line) = session.rx.recv_timeout(left()) {
        if echo {
            println!("{line}");
        }
        session.lines.push(line);
    }
    let wait = left().max(Duration::from_secs(1));
    let status = session.child.wait_timeout(wait)?.and_then(|s| s.code());
    let shown = session.lines.len();
    let lines = session.end();
    if echo {
        lines.iter().skip(shown).for_each(|l| println!("{l}"));
    }
    Ok(Outcome { status, lines })
}

/// What a scripted console session ([`run_conversation`]) saw.
pub struct Conversation {
    /// Every output line (QEMU's stderr last, prefixed `qemu: `).
    pub lines: Vec<String>,
    /// Whether the trigger line appeared (and the input was sent).
    pub triggered: bool,
    /// Whether a line containing the expected text followed.
    pub answered: bool,
}

/// A running QEMU whose serial output arrives line by line (symbolized),
/// with its standard input piped to the serial console.
struct Session {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    rx: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    err_reader: std::thread::JoinHandle<String>,
    lines: Vec<String>,
}

impl Session {
    fn start(boot: &Boot<'_>, extra: &[&str]) -> Result<Session> {
        let symbols = Symbolizer::new(boot.image);
        let mut child = boot
            .command()
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", boot.arch.qemu_binary()))?;
        let stdin = child.stdin.take().context("QEMU stdin")?;
        let stdout = child.stdout.take().context("QEMU stdout")?;
        let stderr = child.stderr.take().context("QEMU stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(|l| l.ok()) {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(symbols.annotate(&text)).is_err() {
                    break;
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        Ok(Session {
            child,
            stdin,
            rx,
            reader,
            err_reader,
            lines: Vec::new(),
        })
    }

    /// Whether a line containing `text` comes within `limit` (before QEMU
    /// ends); every line is kept.
    fn wait_for(&mut self, text: &str, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = self.rx.recv_timeout(left) else {
                return false; // time is up, or QEMU ended
            };
            let found = line.contains(text);
            self.lines.push(line);
            if found {
                return true;
            }
        }
    }

    /// Kills QEMU; every output line, QEMU's stderr last (`qemu: `).
    fn end(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.stdin);
        self.lines.extend(self.rx.iter());
        let _ = self.reader.join();
        let errors = self.err_reader.join().unwrap_or_default();
        let errors = errors.lines().filter(|l| !l.trim().is_empty());
        self.lines.extend(errors.map(|l| format!("qemu: {l}")));
        self.lines
    }
}

/// Boots with QEMU's standard input piped to the serial console: once an
/// output line contains `trigger` (within `limit`), writes `input` to it,
/// then waits (at most `reply_limit` more) for a line containing `expect`.
/// QEMU is killed when that line comes or time is up.
pub fn run_conversation(
    boot: &Boot<'_>,
    trigger: &str,
    input: &[u8],
    expect: &str,
    (limit, reply_limit): (Duration, Duration),
) -> Result<Conversation> {
    let mut session = Session::start(boot, &[])?;
    let triggered = session.wait_for(trigger, limit);
    let mut answered = false;
    if triggered {
        session.stdin.write_all(input)?;
        session.stdin.flush()?;
        answered = session.wait_for(expect, reply_limit);
    }
    Ok(Conversation {
        lines: session.end(),
        triggered,
        answered,
    })
}

/// Boots with a monitor socket; once an output line contains `trigger`
/// (within `limit`), saves the screen to `file` (QEMU's `screendump`, a
/// binary PPM). Whether the trigger came, and every output line.
pub fn screenshot(
    boot: &Boot<'_>,
    trigger: &str,
    limit: Duration,
    file: &Path,
) -> Result<(bool, Vec<String>)> {
    let socket = file.with_extension("monitor");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(file);
    let monitor = format!("unix:{},server=on,wait=off", socket.display());
    let mut session = Session::start(boot, &["-monitor", &monitor])?;
    let triggered = session.wait_for(trigger, limit);
    let shot = if triggered {
        screendump(&socket, file)
    } else {
        Ok(())
    };
    let lines = session.end();
    let _ = std::fs::remove_file(&socket);
    shot.map(|()| (triggered, lines))
}

/// Asks the QEMU monitor at `socket` to save the screen to `file`.
fn screendump(socket: &Path, file: &Path) -> Result<()> {
    let mut monitor = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to QEMU's monitor at {}", socket.display()))?;
    monitor.set_read_timeout(Some(Duration::from_secs(30)))?;
    let prompt = |m: &mut std::os::unix::net::UnixStream| -> Result<String> {
        let (mut seen, mut buf) = (Vec::new(), [0u8; 512]);
        while !seen.ends_with(b"(qemu) ") {
            let n = std::io::Read::read(m, &mut buf).context("reading QEMU's monitor")?;
            if n == 0 {
                bail!("QEMU's monitor closed");
            }
            seen.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&seen).into_owned())
    };
    prompt(&mut monitor)?;
    writeln!(monitor, "screendump {}", file.display())?;
    let reply = prompt(&mut monitor)?;
    if !file.is_file() {
        bail!("QEMU saved no screenshot: {}", reply.trim());
    }
    Ok(())
}

/// `cargo xtask run`: QEMU owns the terminal's input; its output passes
/// through the symbolizer.
pub fn run_interactive(boot: &Boot<'_>) -> Result<()> {
    let (arch, image) = (boot.arch, boot.image);
    if boot.gdb {
        println!("QEMU is waiting for GDB on localhost:1234. In another terminal run:");
        println!(
            "  {} -ex 'set architecture {}' -ex 'file {}' -ex 'target remote localhost:1234'",
            arch.gdb(),
            match arch {
                Arch::X86_64 => "i386:x86-64",
                Arch::Aarch64 => "aarch64",
                Arch::Riscv64 => "riscv:rv64",
            },
            image.display()
        );
    }
    println!("Booting Keel ({}); leave QEMU with Ctrl-A X.", arch.name());
    let symbols = Symbolizer::new(image);
    let mut child = boot
        .command()
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", arch.qemu_binary()))?;
    let stdout = child.stdout.take().context("QEMU stdout")?;
    let mut out = std::io::stdout();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    // Pass bytes through as they come (a prompt has no newline); after a
    // whole line that carries a code address, print where that code is.
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        out.write_all(chunk)?;
        for &b in chunk {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&line);
                if let Some(desc) = symbols.describe_line(text.trim_end_matches('\r')) {
                    write!(out, "      <- {desc}\r\n")?;
                }
                line.clear();
            } else {
                line.push(b);
            }
        }
        let n = chunk.len();
        reader.consume(n);
        out.flush()?;
    }
    let status = child.wait()?;
    let code = status.code().unwrap_or(-1);
    println!(
        "QEMU exited with status {code} ({})",
        keel_abi::harness::describe_exit(code)
    );
    if code != 0 && code != keel_abi::harness::EXIT_PASS {
        bail!("kernel exited with status {code}");
    }
    Ok(())
}

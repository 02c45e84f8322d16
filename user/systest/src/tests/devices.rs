//! Device access from user mode: interrupt handlers (binding, rights,
//! release when the last capability goes, delivery as a notification,
//! masking until acknowledged), x86 I/O ports and device memory, driven
//! through `keel_rt::device` and the console driver `keel_rt::uart`.
//!
//! Interrupts are made to happen with devices QEMU emulates on every
//! machine: the console 16550's loopback mode (x86_64, RISC-V: a byte
//! written to the transmitter is received, raising the console line) and,
//! as QEMU's PL011 has no loopback, the PL031 real-time clock's match
//! alarm on AArch64 (`virt`: registers at 0x0901_0000, SPI 2 = INTID 34,
//! level-triggered; read from QEMU's device tree). Every wait is bounded by
//! a watchdog thread, so a broken kernel fails the test instead of hanging
//! the run. While the 16550 loops back nothing may print (the kernel's
//! output would be received too).

use super::{PAGE, Root, next_va, root, stale, yield_n};
use crate::harness::{Ctx, TestResult};
use alloc::string::String;
use keel_abi::Error;
use keel_abi::boot::{CONSOLE_NS16550_MMIO, CONSOLE_NS16550_PORT, CONSOLE_PL011};
use keel_abi::cap::{CapToken, NO_BADGE, ObjectType, Rights};
use keel_abi::syscall::PROT_WRITE;
use keel_rt::device::{
    io_port_create, io_port_in, io_port_out, irq_ack, irq_handler_create, mem_from_device,
};
use keel_rt::ipc::{notification_create, poll, signal, wait};
use keel_rt::syscall::{
    cap_delete, cap_derive, cap_grant, cap_identify, cap_space_create, map, mem_size,
    pool_available, sleep_ns, unmap,
};
use keel_rt::thread::Thread;
use keel_rt::uart::{Hw, Uart, console_line};

/// The badge of the notification capability handlers signal through.
const IRQ_BADGE: u64 = 0x50;
/// Signalled by the watchdog when an interrupt does not come in time.
const TIMEOUT_BIT: u64 = 1 << 60;
/// How long a test waits for an interrupt (the PL031 alarm needs up to a
/// second of virtual time).
const WAIT_LIMIT_NS: u64 = 3_000_000_000;

/// The physical addresses each machine's tests use.
struct Platform {
    /// A RAM address.
    ram: usize,
    /// A page of the interrupt controller the kernel drives (I/O APIC,
    /// GIC distributor, PLIC).
    irq_controller: usize,
    /// A harmless device page to map (x86: the HPET, else the console).
    device: usize,
}

fn platform() -> Result<Platform, String> {
    Ok(match keel_rt::ARCH {
        "x86_64" => Platform {
            ram: 0,
            irq_controller: 0xfec0_0000,
            device: 0xfed0_0000,
        },
        "aarch64" => Platform {
            ram: 0x4000_0000,
            irq_controller: 0x0800_0000,
            device: 0x0900_0000,
        },
        "riscv64" => Platform {
            ram: 0x8000_0000,
            irq_controller: 0x0c00_0000,
            device: 0x1000_0000,
        },
        other => return Err(alloc::format!("no platform addresses for {other}")),
    })
}

/// The root task's capabilities, its device-control capability and the
/// console's interrupt line.
fn setup() -> Result<(Root, CapToken, usize), String> {
    let r = root()?;
    let dc = CapToken::from_raw(r.info.device_control);
    let line = console_line(r.info).ctx("console interrupt line")?;
    Ok((r, dc, line))
}

fn watchdog(ntfn: usize) -> i32 {
    let _ = sleep_ns(WAIT_LIMIT_NS);
    let _ = signal(CapToken::from_raw(ntfn as u64), TIMEOUT_BIT);
    0
}

/// Blocks in `wait` on `ntfn` until an interrupt signals it (at most
/// [`WAIT_LIMIT_NS`]); returns the bits.
fn wait_bounded(ntfn: CapToken) -> Result<u64, String> {
    let dog = Thread::spawn(watchdog, ntfn.raw() as usize).ctx("spawn watchdog")?;
    let bits = wait(ntfn).ctx("wait");
    drop(dog);
    let bits = bits?;
    ensure!(
        bits & TIMEOUT_BIT == 0,
        "no interrupt within {} ms",
        WAIT_LIMIT_NS / 1_000_000
    );
    Ok(bits)
}

/// A notification, a badged capability to it and a handler of `line`
/// signalling that; deleted again by [`release`].
struct Binding {
    ntfn: CapToken,
    badged: CapToken,
    handler: CapToken,
}

fn bind(r: &Root, dc: CapToken, line: usize) -> Result<Binding, String> {
    let ntfn = notification_create(r.pool).ctx("notification_create")?;
    let badged = cap_derive(ntfn, Rights::READ | Rights::WRITE, IRQ_BADGE).ctx("badge")?;
    match irq_handler_create(dc, line, badged) {
        Ok(handler) => Ok(Binding {
            ntfn,
            badged,
            handler,
        }),
        Err(e) => {
            let _ = cap_delete(badged);
            let _ = cap_delete(ntfn);
            Err(alloc::format!("irq_handler_create({line}): {e:?}"))
        }
    }
}

fn release(b: Binding) -> TestResult {
    cap_delete(b.handler).ctx("delete handler")?;
    cap_delete(b.badged).ctx("delete badged notification")?;
    cap_delete(b.ntfn).ctx("delete notification")?;
    Ok(())
}

/// Tries to bind each of `lines`; every one must be refused with
/// `InvalidArgument` (a handler made by mistake is deleted again).
fn refuses_lines(lines: &[usize]) -> TestResult {
    let (r, dc, _) = setup()?;
    let n = notification_create(r.pool).ctx("notification_create")?;
    let results: alloc::vec::Vec<_> = lines
        .iter()
        .map(|&line| (line, irq_handler_create(dc, line, n)))
        .collect();
    for (_, res) in &results {
        if let Ok(h) = res {
            cap_delete(*h).ctx("delete handler made by mistake")?;
        }
    }
    cap_delete(n).ctx("delete notification")?;
    for (line, res) in results {
        ensure_eq!(res, Err(Error::InvalidArgument), "line {line}");
    }
    Ok(())
}

pub fn irq_handler_create_rejects_bad_lines() -> TestResult {
    let huge = [
        1_000_000,
        u32::MAX as usize,
        u32::MAX as usize + 1,
        usize::MAX,
    ];
    refuses_lines(&huge)?;
    if keel_rt::ARCH == "aarch64" {
        // Private lines (SGIs, PPIs), among them the timer's (27, 30).
        refuses_lines(&[1, 15, 16, 27, 30, 31])?;
    }
    Ok(())
}

/// Line 0 is no device's line on any machine (x86: GSI 0 is the legacy
/// PIC's ExtINT input, which QEMU never drives; GIC: SGI 0; PLIC: "no
/// interrupt"); on x86 GSI 2, the PIT's, is the kernel's too.
pub fn line_zero_is_refused() -> TestResult {
    refuses_lines(&[0])?;
    if keel_rt::root_info().is_some_and(|i| i.console_kind == 1) {
        refuses_lines(&[2])?;
    }
    Ok(())
}

pub fn irq_handler_create_needs_rights() -> TestResult {
    let (r, dc, line) = setup()?;
    let n = notification_create(r.pool).ctx("notification_create")?;
    let dc_read = cap_derive(dc, Rights::READ | Rights::GRANT, NO_BADGE).ctx("derive dc")?;
    let n_read = cap_derive(n, Rights::READ, NO_BADGE).ctx("derive notification")?;
    ensure_eq!(
        irq_handler_create(dc_read, line, n),
        Err(Error::AccessDenied)
    );
    ensure_eq!(
        irq_handler_create(dc, line, n_read),
        Err(Error::AccessDenied)
    );
    ensure_eq!(
        irq_handler_create(stale(dc), line, n),
        Err(Error::InvalidCapability)
    );
    ensure_eq!(
        irq_handler_create(dc, line, stale(n)),
        Err(Error::InvalidCapability)
    );
    // Another object's capability as the device control or notification.
    ensure!(irq_handler_create(r.pool, line, n).is_err());
    ensure!(irq_handler_create(dc, line, r.pool).is_err());
    // The other device calls need WRITE on the device control too.
    ensure_eq!(io_port_create(dc_read, 0x3f8, 8), Err(Error::AccessDenied));
    ensure_eq!(
        mem_from_device(dc_read, platform()?.device, 1),
        Err(Error::AccessDenied)
    );
    // None of the refusals left the line bound.
    let b = bind(&r, dc, line)?;
    release(b)?;
    for c in [n_read, dc_read, n] {
        cap_delete(c).ctx("delete")?;
    }
    Ok(())
}

pub fn irq_line_is_bound_once_and_freed_with_its_last_capability() -> TestResult {
    let (r, dc, line) = setup()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    let b = bind(&r, dc, line)?;
    let id = cap_identify(b.handler).ctx("identify handler")?;
    ensure_eq!(id.object_type(), Some(ObjectType::IrqHandler));
    ensure!(id.rights().is_some_and(|x| x.contains(Rights::WRITE)));
    // Acknowledging a line that has not fired is harmless.
    irq_ack(b.handler).ctx("ack before any interrupt")?;
    // One handler per line, whatever the notification.
    let other = notification_create(r.pool).ctx("second notification")?;
    ensure_eq!(
        irq_handler_create(dc, line, other),
        Err(Error::AlreadyExists)
    );
    ensure_eq!(
        irq_handler_create(dc, line, b.ntfn),
        Err(Error::AlreadyExists)
    );
    // Acknowledging needs WRITE on the handler.
    let read_only = cap_derive(b.handler, Rights::READ, NO_BADGE).ctx("derive handler")?;
    ensure_eq!(irq_ack(read_only), Err(Error::AccessDenied));
    // A child keeps the line bound after the original goes.
    let child = cap_derive(b.handler, Rights::ALL, NO_BADGE).ctx("derive child")?;
    let handler = b.handler;
    cap_delete(handler).ctx("delete handler")?;
    ensure_eq!(irq_ack(handler), Err(Error::InvalidCapability));
    ensure_eq!(
        irq_handler_create(dc, line, other),
        Err(Error::AlreadyExists),
        "a child of the handler still holds the line"
    );
    irq_ack(child).ctx("ack through the child")?;
    cap_delete(child).ctx("delete child")?;
    cap_delete(read_only).ctx("delete read-only child")?;
    ensure_eq!(irq_ack(child), Err(Error::InvalidCapability));
    // The last capability is gone: the line is free again.
    let again = irq_handler_create(dc, line, other).ctx("bind again")?;
    cap_delete(again).ctx("delete second handler")?;
    cap_delete(other).ctx("delete second notification")?;
    cap_delete(b.badged).ctx("delete badged")?;
    cap_delete(b.ntfn).ctx("delete notification")?;
    ensure_eq!(pool_available(r.pool), Ok(before), "everything was freed");
    Ok(())
}

pub fn killing_a_driver_releases_its_irq() -> TestResult {
    let (r, dc, line) = setup()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    let b = bind(&r, dc, line)?;
    // The "driver": a capability space that holds the only handler
    // capability.
    let cs = cap_space_create(r.pool, 16).ctx("cap_space_create")?;
    cap_grant(b.handler, cs, Rights::ALL).ctx("grant handler")?;
    cap_delete(b.handler).ctx("delete root's handler")?;
    ensure_eq!(
        irq_handler_create(dc, line, b.ntfn),
        Err(Error::AlreadyExists),
        "the driver's space holds the line"
    );
    cap_delete(cs).ctx("destroy the driver's space")?;
    let again = irq_handler_create(dc, line, b.ntfn).ctx("bind after the driver died")?;
    cap_delete(again).ctx("delete handler")?;
    cap_delete(b.badged).ctx("delete badged")?;
    cap_delete(b.ntfn).ctx("delete notification")?;
    ensure_eq!(pool_available(r.pool), Ok(before), "everything was freed");
    Ok(())
}

pub fn io_ports_are_x86_only_and_checked() -> TestResult {
    let (r, dc, _) = setup()?;
    if r.info.console_kind != CONSOLE_NS16550_PORT as u64 {
        ensure_eq!(io_port_create(dc, 0x3f8, 8), Err(Error::NotSupported));
        return Ok(());
    }
    let base = r.info.console_base as usize;
    // Ranges that are empty, run past port 0xffff, or touch ports the
    // kernel drives (PIC, PIT, speaker, exit device).
    for (b, n) in [
        (base, 0),
        (0xffff, 2),
        (0x1_0000, 1),
        (usize::MAX, 1),
        (base, usize::MAX),
        (0x20, 2),
        (0x1f, 2),
        (0xa1, 1),
        (0x40, 4),
        (0x43, 1),
        (0x61, 1),
        (0xf4, 4),
        (0xf7, 1),
        (0, 0x1_0000),
    ] {
        ensure_eq!(
            io_port_create(dc, b, n),
            Err(Error::InvalidArgument),
            "ports {b:#x}+{n}"
        );
    }
    let p = io_port_create(dc, base, 8).ctx("io_port_create COM1")?;
    ensure_eq!(p.object_type(), Some(ObjectType::IoPortRange));
    let lsr = io_port_in(p, base + 5, 1).ctx("read LSR")?;
    ensure!(lsr <= 0xff, "LSR {lsr:#x}");
    // The scratch register keeps what is written to it.
    let scratch = io_port_in(p, base + 7, 1).ctx("read SCR")? as u32;
    io_port_out(p, base + 7, 1, 0xa5).ctx("write SCR")?;
    ensure_eq!(io_port_in(p, base + 7, 1), Ok(0xa5));
    io_port_out(p, base + 7, 1, scratch).ctx("restore SCR")?;
    ensure!(io_port_in(p, base + 6, 2).is_ok(), "16-bit read at the end");
    for (port, width) in [
        (base - 1, 1),
        (base + 8, 1),
        (base + 7, 2),
        (base + 6, 4),
        (base, 0),
        (base, 3),
        (base, 8),
        (usize::MAX, 1),
    ] {
        ensure_eq!(
            io_port_in(p, port, width),
            Err(Error::InvalidArgument),
            "in {port:#x} width {width}"
        );
        ensure_eq!(
            io_port_out(p, port, width, 0),
            Err(Error::InvalidArgument),
            "out {port:#x} width {width}"
        );
    }
    // Reading needs READ, writing WRITE.
    let ro = cap_derive(p, Rights::READ, NO_BADGE).ctx("derive read-only")?;
    ensure!(io_port_in(ro, base + 5, 1).is_ok());
    ensure_eq!(io_port_out(ro, base + 7, 1, 0), Err(Error::AccessDenied));
    let wo = cap_derive(p, Rights::WRITE, NO_BADGE).ctx("derive write-only")?;
    ensure_eq!(io_port_in(wo, base + 5, 1), Err(Error::AccessDenied));
    for c in [wo, ro, p] {
        cap_delete(c).ctx("delete")?;
    }
    ensure_eq!(io_port_in(p, base + 5, 1), Err(Error::InvalidCapability));
    Ok(())
}

pub fn mem_from_device_refuses_ram_and_the_interrupt_controller() -> TestResult {
    let (r, dc, _) = setup()?;
    let pf = platform()?;
    let mut refused = alloc::vec![
        (pf.ram, 1),
        (pf.ram + 16 * PAGE, 4),
        (pf.irq_controller, 1),
        (pf.device + 1, 1),
        (pf.device + PAGE / 2, 1),
        (pf.device, 0),
        (pf.device, usize::MAX),
        (pf.device, usize::MAX / PAGE),
        (usize::MAX & !(PAGE - 1), 2),
    ];
    if pf.ram >= PAGE {
        // Starts below RAM, ends in it.
        refused.push((pf.ram - PAGE, 2));
    }
    for (phys, pages) in refused {
        ensure_eq!(
            mem_from_device(dc, phys, pages),
            Err(Error::InvalidArgument),
            "{pages} pages at {phys:#x}"
        );
    }
    let before = pool_available(r.pool).ctx("pool before")?;
    let mem = mem_from_device(dc, pf.device, 1).ctx("mem_from_device")?;
    ensure_eq!(mem.object_type(), Some(ObjectType::MemoryObject));
    ensure_eq!(mem_size(mem), Ok(1));
    let va = next_va(1);
    map(r.aspace, mem, va, 0, 1, PROT_WRITE).ctx("map device page")?;
    let checked = check_device_page(r.info.console_kind as usize, va);
    // SAFETY: nothing uses the page any more.
    unsafe { unmap(r.aspace, va, 1) }.ctx("unmap")?;
    cap_delete(mem).ctx("delete")?;
    checked?;
    ensure!(
        pool_available(r.pool).ctx("pool after")? + 3 >= before,
        "the device page did not stay charged"
    );
    Ok(())
}

/// Reads (and on a 16550 writes) the device page [`Platform::device`]
/// mapped at `va`.
fn check_device_page(console_kind: usize, va: usize) -> TestResult {
    match console_kind {
        // The HPET's capabilities: vendor 0x8086 in bits 16..32.
        CONSOLE_NS16550_PORT => {
            // SAFETY: `va` maps the HPET's first page; its capability
            // register at offset 0 is read-only and reading it has no effect.
            let id = unsafe { (va as *const u32).read_volatile() };
            ensure_eq!(id >> 16, 0x8086, "HPET capabilities {id:#x}");
        }
        // The 16550's scratch register.
        CONSOLE_NS16550_MMIO => {
            let scr = (va + 7) as *mut u8;
            // SAFETY: `va` maps the console 16550's registers; only the
            // driver-private scratch register is touched.
            let (old, new) = unsafe {
                let old = scr.read_volatile();
                scr.write_volatile(0x5a);
                let new = scr.read_volatile();
                scr.write_volatile(old);
                (old, new)
            };
            ensure_eq!(new, 0x5a, "scratch register (was {old:#x})");
        }
        // The PL011's peripheral and PrimeCell identification.
        CONSOLE_PL011 => {
            // SAFETY: `va` maps the PL011's registers; the identification
            // registers are read-only.
            let (periph, cell) = unsafe {
                (
                    ((va + 0xfe0) as *const u32).read_volatile(),
                    ((va + 0xff0) as *const u32).read_volatile(),
                )
            };
            ensure_eq!((periph, cell), (0x11, 0x0d), "PL011 identification");
        }
        other => return Err(alloc::format!("unknown console kind {other}")),
    }
    Ok(())
}

/// Twice: the device raises its line, a thread blocked in `wait` wakes with
/// the handler's badge, no further signal comes before the ack (the kernel
/// masked the line), the driver serves the device and acks; the second
/// round proves the ack unmasked the line. Then everything is released.
pub fn interrupts_reach_user_space_until_acknowledged() -> TestResult {
    let (r, dc, line) = setup()?;
    let before = pool_available(r.pool).ctx("pool before")?;
    if r.info.console_kind == CONSOLE_PL011 as u64 {
        rtc_alarms(&r, dc)?;
    } else {
        uart_loopback(&r, dc, line)?;
    }
    ensure!(
        pool_available(r.pool).ctx("pool after")? + 3 >= before,
        "pool pages were not returned"
    );
    Ok(())
}

/// No signal arrives for a while: the line stays masked until acked,
/// though the device still asks for service.
fn stays_masked(ntfn: CapToken) -> TestResult {
    sleep_ns(2_000_000).ctx("sleep")?;
    yield_n(10);
    ensure_eq!(poll(ntfn), Ok(0), "signalled again before the ack");
    Ok(())
}

/// x86_64 and RISC-V: the console 16550 in loopback mode.
fn uart_loopback(r: &Root, dc: CapToken, line: usize) -> TestResult {
    let b = bind(r, dc, line)?;
    let mut uart = match Uart::open(r.info, dc, next_va(1)) {
        Ok(u) => u,
        Err(e) => {
            release(b)?;
            return Err(alloc::format!("open the console UART: {e:?}"));
        }
    };
    let mut stale_bytes = [0; 64];
    let served = uart
        .read_available(&mut stale_bytes)
        .ctx("drain")
        .and_then(|_| loopback_rounds(&mut uart, &b));
    // Whatever happened: loopback off, interrupts off, line released.
    let off = uart.set_loopback(false).ctx("loopback off");
    let closed = uart.close().ctx("close");
    release(b)?;
    served?;
    off?;
    closed
}

fn loopback_rounds(uart: &mut Uart<Hw>, b: &Binding) -> TestResult {
    uart.set_loopback(true).ctx("loopback on")?;
    uart.enable_rx_interrupts().ctx("enable interrupts")?;
    ensure_eq!(poll(b.ntfn), Ok(0), "no interrupt before a byte was sent");
    for (round, byte) in [b'K', b'q'].into_iter().enumerate() {
        uart.write_byte(byte).ctx("send")?;
        ensure_eq!(wait_bounded(b.ntfn)?, IRQ_BADGE, "round {round}");
        stays_masked(b.ntfn)?;
        let mut got = [0; 16];
        let n = uart.read_available(&mut got).ctx("receive")?;
        ensure!(
            n >= 1 && got[0] == byte,
            "round {round}: received {:?}",
            &got[..n]
        );
        irq_ack(b.handler).ctx("ack")?;
    }
    Ok(())
}

/// AArch64: the PL031 real-time clock of QEMU `virt`.
mod pl031 {
    pub const BASE: usize = 0x0901_0000;
    pub const LINE: usize = 34;
    pub const DR: usize = 0x00;
    pub const MR: usize = 0x04;
    pub const IMSC: usize = 0x10;
    pub const ICR: usize = 0x1c;
}

/// Reads a PL031 register of the page mapped at `va`.
fn rtc_read(va: usize, reg: usize) -> u32 {
    // SAFETY: `va` maps the PL031's register page; `reg` is one of its
    // registers, 4-aligned.
    unsafe { ((va + reg) as *const u32).read_volatile() }
}

fn rtc_write(va: usize, reg: usize, value: u32) {
    // SAFETY: as in `rtc_read`; the page is mapped writable and nothing
    // else (the kernel included) uses the RTC.
    unsafe { ((va + reg) as *mut u32).write_volatile(value) }
}

fn rtc_alarms(r: &Root, dc: CapToken) -> TestResult {
    let b = bind(r, dc, pl031::LINE)?;
    let mem = mem_from_device(dc, pl031::BASE, 1).ctx("mem_from_device PL031");
    let va = next_va(1);
    let mapped = mem.and_then(|m| {
        map(r.aspace, m, va, 0, 1, PROT_WRITE)
            .ctx("map PL031")
            .map(|()| m)
    });
    let result = mapped.as_ref().map_err(String::clone).and_then(|_| {
        let rounds = rtc_rounds(va, &b);
        rtc_write(va, pl031::IMSC, 0);
        rtc_write(va, pl031::ICR, 1);
        rounds
    });
    if let Ok(m) = mapped {
        // SAFETY: nothing uses the page any more.
        unsafe { unmap(r.aspace, va, 1) }.ctx("unmap PL031")?;
        cap_delete(m).ctx("delete PL031 memory")?;
    }
    release(b)?;
    result
}

fn rtc_rounds(va: usize, b: &Binding) -> TestResult {
    rtc_write(va, pl031::IMSC, 0);
    rtc_write(va, pl031::ICR, 1);
    irq_ack(b.handler).ctx("ack")?;
    ensure_eq!(poll(b.ntfn), Ok(0), "no interrupt before the alarm was set");
    // First the next second (the thread blocks until the alarm), then the
    // current one (the alarm is due at once).
    for (round, ahead) in [1, 0].into_iter().enumerate() {
        let now = rtc_read(va, pl031::DR);
        rtc_write(va, pl031::MR, now.wrapping_add(ahead));
        rtc_write(va, pl031::IMSC, 1);
        ensure_eq!(wait_bounded(b.ntfn)?, IRQ_BADGE, "round {round}");
        stays_masked(b.ntfn)?;
        rtc_write(va, pl031::ICR, 1);
        irq_ack(b.handler).ctx("ack")?;
    }
    Ok(())
}

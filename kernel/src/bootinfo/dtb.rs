//! A validating reader for flattened device trees (DTB), hand-written
//! because it parses untrusted firmware input at boot: every offset, length
//! and string is bounds-checked, and malformed input gives a
//! [`BootInfoError`], never a panic. (The `fdt` crate panics on several
//! malformed inputs, which the kernel must not.)
//!
//! Extracted: memory nodes (`/memory*`, or any top-level node with
//! `device_type = "memory"`), `/memreserve/` entries, `/reserved-memory`
//! children, `/chosen` `bootargs` and `linux,initrd-start/end`, the CPU
//! count (`/cpus/cpu*` whose `status` is absent or "okay") and their ids
//! (`reg`: one address of `/cpus` `#address-cells`, 1 or 2; a CPU whose
//! `reg` is missing or not that is counted but not listed), the PSCI
//! conduit (`method` of an `arm,psci*` node: "hvc" or "smc"), and the NUMA
//! node of each memory range (a memory node's `numa-node-id`, a 32-bit
//! node number, tags all of its `reg` ranges; numbers of
//! [`numa::MAX_NODES`] or more share the last node). NUMA information is
//! optional: a malformed `numa-node-id` (not 4 bytes) leaves that node's
//! ranges untagged (node 0), and more ranges than [`NumaMap`] holds drop
//! the NUMA information altogether; neither is an error.
//!
//! The interrupt hardware ([`InterruptHw`]) follows the standard bindings:
//! the first GICv2/GICv3 or PLIC node (its own `reg`, `phandle`,
//! `#interrupt-cells`, and for the PLIC `riscv,ndev` and the context of the
//! first supervisor external interrupt in `interrupts-extended`), the
//! virtual timer (third `interrupts` entry of `arm,armv8-timer`), and the
//! console UART: the node `/chosen` `stdout-path` names (through `/aliases`
//! if it is an alias), else the first PL011 or 16550. A line whose
//! `interrupt-parent` (its own, else the root's) is not the controller is
//! ignored. Malformed interrupt information leaves that part `None`; it
//! never fails the parse.

use super::BootInfoError::{self, Malformed, Missing, Truncated};
use super::numa::{self, NumaMap, NumaRange};
use super::{
    BootInfo, Controller, InterruptHw, Line, MAX_CPUS, MAX_REGIONS, MemoryMap, MemoryRegion,
    PhysReader, Psci, RegionKind, Trigger, Window, push,
};
use crate::mm::kref::ensure;
use arrayvec::ArrayVec;
use core::ffi::CStr;
use keel_fb::Mode;

const MAGIC: u32 = 0xd00d_feed;
const HEADER_LEN: usize = 40;
const TOKEN_BEGIN_NODE: u32 = 1;
const TOKEN_END_NODE: u32 = 2;
const TOKEN_PROP: u32 = 3;
const TOKEN_NOP: u32 = 4;
const TOKEN_END: u32 = 9;
/// Largest device tree accepted (QEMU's are 1 MiB, padding included).
pub const MAX_SIZE: u64 = 2 << 20;
/// Deepest node nesting accepted; real trees are a handful of levels deep.
const MAX_DEPTH: usize = 16;
type RawRegions = ArrayVec<MemoryRegion, { 2 * MAX_REGIONS }>;

fn be32(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be64(data: &[u8], off: usize) -> Option<u64> {
    Some(u64::from(be32(data, off)?) << 32 | u64::from(be32(data, off + 4)?))
}

/// Validates the header at the start of `header` (at least 40 bytes) and
/// returns the blob's total size, so the caller knows how much memory to
/// hand to [`parse`].
pub fn total_size(header: &[u8]) -> Result<usize, BootInfoError> {
    ensure(header.len() >= HEADER_LEN, Truncated("device tree header"))?;
    if be32(header, 0) != Some(MAGIC) {
        return Err(Missing("device tree (bad magic)"));
    }
    let size = be32(header, 4).ok_or(Truncated("device tree header"))? as usize;
    if size < HEADER_LEN {
        return Err(Malformed("device tree totalsize smaller than its header"));
    }
    Ok(size)
}

/// A checked view of the blob's blocks.
#[derive(Clone, Copy)]
struct Blob<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
    rsvmap: &'a [u8],
}

impl<'a> Blob<'a> {
    fn new(blob: &'a [u8]) -> Result<Blob<'a>, BootInfoError> {
        let size = total_size(blob)?;
        let blob = blob
            .get(..size)
            .ok_or(Truncated("device tree shorter than its totalsize"))?;
        let field = |i: usize| be32(blob, 4 * i).map(|v| v as usize).unwrap_or(usize::MAX);
        let (off_struct, off_strings, off_rsvmap, version) =
            (field(2), field(3), field(4), field(5));
        if version < 17 {
            return Err(Malformed("device tree version older than 17"));
        }
        let (size_strings, size_struct) = (field(8), field(9));
        let block = |off: usize, len: usize, what| {
            off.checked_add(len)
                .and_then(|end| blob.get(off..end))
                .ok_or(Truncated(what))
        };
        Ok(Blob {
            structs: block(off_struct, size_struct, "device tree structure block")?,
            strings: block(off_strings, size_strings, "device tree strings block")?,
            rsvmap: blob
                .get(off_rsvmap..)
                .ok_or(Truncated("device tree reservation map"))?,
        })
    }

    /// The structure block's tokens up to `FDT_END`; stops after an error.
    fn tokens(self) -> impl Iterator<Item = Result<Tok<'a>, BootInfoError>> {
        let mut pos = Some(0);
        core::iter::from_fn(move || {
            let tok = self.token(pos.as_mut()?);
            pos = pos.filter(|_| matches!(tok, Ok(Some(_))));
            tok.transpose()
        })
    }

    /// The token at `*pos` (NOPs skipped), moving `*pos` past it.
    fn token(&self, pos: &mut usize) -> Result<Option<Tok<'a>>, BootInfoError> {
        let s = self.structs;
        let align = |n: usize, what| n.checked_next_multiple_of(4).ok_or(Malformed(what));
        loop {
            let token = be32(s, *pos).ok_or(Truncated("structure block ends without FDT_END"))?;
            let at = *pos + 4;
            *pos = at;
            return match token {
                TOKEN_BEGIN_NODE => {
                    let name = s.get(at..).and_then(cstr).ok_or(Malformed("node name"))?;
                    *pos = align(at + name.len() + 1, "node name")?;
                    Ok(Some(Tok::Begin(name)))
                }
                TOKEN_END_NODE => Ok(Some(Tok::End)),
                TOKEN_PROP => {
                    let len = be32(s, at).ok_or(Truncated("property"))? as usize;
                    let name_off = be32(s, at + 4).ok_or(Truncated("property"))? as usize;
                    let start = at + 8;
                    let value = start
                        .checked_add(len)
                        .and_then(|end| s.get(start..end))
                        .ok_or(Truncated("property value"))?;
                    *pos = align(start + len, "property length")?;
                    let name = self.strings.get(name_off..);
                    let name = name.ok_or(Malformed("property name offset"))?;
                    let name = cstr(name).ok_or(Malformed("property name"))?;
                    Ok(Some(Tok::Prop(name, value)))
                }
                TOKEN_NOP => continue,
                TOKEN_END => Ok(None),
                _ => Err(Malformed("unknown structure token")),
            };
        }
    }
}

/// A structure-block token (NOPs skipped).
enum Tok<'a> {
    Begin(&'a str),
    End,
    Prop(&'a str, &'a [u8]),
}

/// The NUL-terminated UTF-8 string at the start of `data`.
fn cstr(data: &[u8]) -> Option<&str> {
    CStr::from_bytes_until_nul(data).ok()?.to_str().ok()
}

/// What a node is, for the few nodes the kernel cares about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Other,
    Root,
    /// A top-level node that may be memory (decided at its end).
    TopLevel,
    Chosen,
    Cpus,
    Cpu,
    ReservedMemory,
    ReservedChild,
}

#[derive(Clone, Copy)]
struct Node<'a> {
    role: Role,
    /// `#address-cells` / `#size-cells` for this node's children.
    child_cells: (u32, u32),
    is_memory_type: bool,
    enabled: bool,
    reg: Option<&'a [u8]>,
    /// A well-formed `numa-node-id`.
    numa_node: Option<u32>,
    /// The PSCI node's `method`.
    method: Option<&'a str>,
    /// A CPU's interrupt controller's phandle (RISC-V: its child node).
    intc: Option<u32>,
    dev: Dev<'a>,
}

impl Node<'_> {
    fn new(role: Role, name: &str) -> Self {
        Node {
            role,
            child_cells: (2, 1),
            is_memory_type: role == Role::TopLevel && name.starts_with("memory"),
            enabled: true,
            reg: None,
            numa_node: None,
            method: None,
            intc: None,
            dev: Dev::default(),
        }
    }
}

/// A node's interrupt-related properties.
#[derive(Clone, Copy, Default)]
struct Dev<'a> {
    compatible: &'a [u8],
    interrupts: Option<&'a [u8]>,
    interrupt_parent: Option<u32>,
    phandle: Option<u32>,
    interrupt_cells: Option<u32>,
    ndev: Option<u32>,
    interrupts_extended: Option<&'a [u8]>,
}

const GIC_V2: &[&str] = &[
    "arm,cortex-a15-gic",
    "arm,gic-400",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
];
const GIC_V3: &[&str] = &["arm,gic-v3"];
const PLIC: &[&str] = &["riscv,plic0", "sifive,plic-1.0.0"];
const CPU_INTC: &[&str] = &["riscv,cpu-intc"];
const TIMER: &[&str] = &["arm,armv8-timer", "arm,armv7-timer"];
const UART: &[&str] = &["arm,pl011", "ns16550a", "ns16550"];
/// RISC-V supervisor external interrupt (in `interrupts-extended`).
const IRQ_S_EXT: u32 = 9;
/// How PLIC sources signal.
const LEVEL_HIGH: Trigger = Trigger {
    level: true,
    active_low: false,
};

impl<'a> Dev<'a> {
    fn prop(&mut self, name: &str, value: &'a [u8]) {
        let cell = (value.len() == 4).then(|| be32(value, 0)).flatten();
        match name {
            "compatible" => self.compatible = value,
            "interrupts" => self.interrupts = Some(value),
            "interrupt-parent" => self.interrupt_parent = cell,
            "phandle" => self.phandle = cell,
            "#interrupt-cells" => self.interrupt_cells = cell,
            "riscv,ndev" => self.ndev = cell,
            "interrupts-extended" => self.interrupts_extended = Some(value),
            _ => {}
        }
    }

    fn is(&self, names: &[&str]) -> bool {
        let mut compatible = self.compatible.split(|&b| b == 0);
        compatible.any(|c| names.iter().any(|n| n.as_bytes() == c))
    }

    /// Entry `index` of `interrupts`, read as `ctl`'s specifier.
    fn line(&self, ctl: &IrqController, root_parent: Option<u32>, index: usize) -> Option<Line> {
        let parent = self.interrupt_parent.or(root_parent);
        if parent.is_some() && ctl.dev.phandle.is_some() && parent != ctl.dev.phandle {
            return None;
        }
        let ints = self.interrupts?;
        let plic = matches!(ctl.hw, Controller::Plic { .. });
        let cells = ctl.dev.interrupt_cells.unwrap_or(if plic { 1 } else { 3 });
        let valid = if plic { 1..=1 } else { 3..=4 };
        if !valid.contains(&cells) || !ints.len().is_multiple_of(4 * cells as usize) {
            return None;
        }
        let cell = |i: usize| be32(ints, 4 * (index * cells as usize + i));
        if plic {
            let trigger = LEVEL_HIGH;
            return cell(0)
                .filter(|&n| n != 0)
                .map(|number| Line { number, trigger });
        }
        let number = match (cell(0)?, cell(1)?) {
            (0, n) if n < 988 => 32 + n,
            (1, n) if n < 16 => 16 + n,
            _ => return None,
        };
        let (level, active_low) = match cell(2)? & 0xf {
            1 => (false, false),
            2 => (false, true),
            4 => (true, false),
            8 => (true, true),
            _ => return None,
        };
        let trigger = Trigger { level, active_low };
        Some(Line { number, trigger })
    }
}

/// The interrupt controller found, with its node's properties.
struct IrqController<'a> {
    hw: Controller,
    dev: Dev<'a>,
}

/// Interrupt information gathered during the pass, resolved at its end.
#[derive(Default)]
struct IrqScan<'a> {
    controller: Option<IrqController<'a>>,
    timer: Option<Dev<'a>>,
    /// The first PL011 or 16550.
    uart: Option<Dev<'a>>,
    stdout: Option<&'a str>,
    root_parent: Option<u32>,
    /// Something was present but malformed.
    bad: bool,
}

impl<'a> IrqScan<'a> {
    /// Looks at a node at its end; `cells` are its parent's.
    fn node(&mut self, node: &Node<'a>, cells: (u32, u32)) {
        let dev = node.dev;
        if node.role == Role::Root {
            self.root_parent = dev.interrupt_parent;
        }
        if !node.enabled {
            return;
        }
        let win = |i| {
            node.reg
                .and_then(|reg| reg_entry(reg, cells, i))
                .filter(|&(base, len): &Window| len > 0 && base.checked_add(len).is_some())
        };
        let (w0, w01) = (win(0), win(0).zip(win(1)));
        let hw = if dev.is(GIC_V2) {
            Some(w01.map(|(dist, cpu)| Controller::GicV2 { dist, cpu }))
        } else if dev.is(GIC_V3) {
            Some(w01.map(|(dist, redist)| Controller::GicV3 { dist, redist }))
        } else if dev.is(PLIC) {
            let context = match dev.interrupts_extended {
                None => Some(1),
                Some(ext) if ext.len().is_multiple_of(8) => (0..ext.len() / 8)
                    .position(|i| be32(ext, 8 * i + 4) == Some(IRQ_S_EXT))
                    .and_then(|c| u32::try_from(c).ok()),
                Some(_) => None,
            };
            let plic = w0.zip(dev.ndev).zip(context);
            Some(plic.map(|((regs, sources), context)| Controller::Plic {
                regs,
                sources,
                context,
                contexts: [None; MAX_CPUS],
            }))
        } else {
            None
        };
        match hw {
            Some(Some(hw)) if self.controller.is_none() => {
                self.controller = Some(IrqController { hw, dev })
            }
            Some(None) => self.bad = true,
            _ if dev.is(TIMER) => self.timer = self.timer.or(Some(dev)),
            _ if dev.is(UART) => self.uart = self.uart.or(Some(dev)),
            _ => {}
        }
    }

    /// `intcs`: each CPU's interrupt controller, to find its PLIC context.
    fn finish(self, dt: Blob<'a>, intcs: &[Option<u32>]) -> InterruptHw {
        let Some(mut ctl) = self.controller else {
            if self.bad {
                log::warn!("device tree: malformed interrupt controller; ignored");
            }
            return InterruptHw::default();
        };
        let line = |dev: Option<Dev<'a>>, index| {
            let line = dev.and_then(|d| d.line(&ctl, self.root_parent, index));
            (line.is_some() || dev.is_none()).then_some(line)
        };
        let uart = self
            .stdout
            .and_then(|path| stdout_node(dt, path))
            .or(self.uart);
        let (timer, uart) = (line(self.timer, 2), line(uart, 0));
        if self.bad || timer.is_none() || uart.is_none() {
            log::warn!("device tree: malformed interrupt information; partly ignored");
        }
        if let Controller::Plic { contexts, .. } = &mut ctl.hw {
            let ext = ctl.dev.interrupts_extended.unwrap_or_default();
            let entry = |i: usize| (be32(ext, 8 * i), be32(ext, 8 * i + 4));
            for (slot, intc) in contexts.iter_mut().zip(intcs) {
                let of =
                    |p| (0..ext.len() / 8).position(|i| entry(i) == (Some(p), Some(IRQ_S_EXT)));
                *slot = intc.and_then(of).and_then(|c| u32::try_from(c).ok());
            }
        }
        InterruptHw {
            timer: timer.flatten(),
            uart: uart.flatten(),
            controller: Some(ctl.hw),
        }
    }
}

/// The console node `stdout-path` names (`path[:options]`, or an alias
/// in `/aliases`), if the tree has it.
fn stdout_node<'a>(dt: Blob<'a>, stdout: &'a str) -> Option<Dev<'a>> {
    let mut path = stdout.split(':').next().unwrap_or(stdout);
    if !path.starts_with('/') {
        let alias = core::mem::take(&mut path);
        node_props(dt, "/aliases", |name, value| {
            if name == alias {
                path = cstr(value).unwrap_or("");
            }
        });
    }
    let mut dev = Dev::default();
    node_props(dt, path, |name, value| dev.prop(name, value)).then_some(dev)
}

/// Calls `f` with each property of the first node at `path` (an absolute
/// path; a component may omit the unit address); `false` if there is none.
fn node_props<'a>(dt: Blob<'a>, path: &str, mut f: impl FnMut(&'a str, &'a [u8])) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    let parts = || path.split('/').filter(|p| !p.is_empty());
    let want = parts().count() + 1;
    // Open nodes, and how many of them lie on `path`.
    let (mut depth, mut on_path) = (0usize, 0);
    for tok in dt.tokens() {
        match tok {
            Ok(Tok::Begin(name)) => {
                let base = name.split('@').next();
                let is = |p: &str| p == name || Some(p) == base;
                if on_path == depth
                    && depth < want
                    && (depth == 0 || parts().nth(depth - 1).is_some_and(is))
                {
                    on_path += 1;
                }
                depth += 1;
            }
            Ok(Tok::End) if on_path == want && depth == want => return true,
            Ok(Tok::End) => {
                depth = depth.saturating_sub(1);
                on_path = on_path.min(depth);
            }
            Ok(Tok::Prop(name, value)) if on_path == want && depth == want => f(name, value),
            Ok(Tok::Prop(..)) => {}
            Err(_) => return false,
        }
    }
    false
}

/// The length in bytes of a `reg` entry of `(address, size)` cells;
/// `None` for cells other than 1–2 address and 0–2 size cells.
fn reg_len((ac, sc): (u32, u32)) -> Option<usize> {
    ((1..=2).contains(&ac) && sc <= 2).then_some(4 * (ac + sc) as usize)
}

/// Entry `i` of a `reg` property as `(address, size)`; `None` past its end
/// or for unsupported cells (see [`reg_len`]).
fn reg_entry(reg: &[u8], (ac, sc): (u32, u32), i: usize) -> Option<(u64, u64)> {
    let off = i.checked_mul(reg_len((ac, sc))?)?;
    let read = |off: usize, cells| match cells {
        0 => Some(0),
        1 => be32(reg, off).map(u64::from),
        _ => be64(reg, off),
    };
    Some((read(off, ac)?, read(off.checked_add(4 * ac as usize)?, sc)?))
}

/// Decodes a `reg` property into `(address, size)` pairs.
fn push_reg(
    reg: &[u8],
    cells: (u32, u32),
    kind: RegionKind,
    out: &mut RawRegions,
) -> Result<(), BootInfoError> {
    let entry = reg_len(cells).ok_or(Malformed("unsupported #address-cells/#size-cells"))?;
    if !reg.len().is_multiple_of(entry) {
        return Err(Malformed("reg length is not a whole number of entries"));
    }
    for i in 0..reg.len() / entry {
        let (addr, size) = reg_entry(reg, cells, i).ok_or(Truncated("reg"))?;
        let region =
            MemoryRegion::from_len(addr, size, kind).ok_or(Malformed("reg range wraps around"))?;
        push(out, region)?;
    }
    Ok(())
}

fn prop_u32_or_u64(value: &[u8]) -> Option<u64> {
    match value.len() {
        4 => be32(value, 0).map(u64::from),
        8 => be64(value, 0),
        _ => None,
    }
}

/// Finds the device tree a boot loader left at physical `phys`, checks it,
/// and parses it, reserving the `kernel` image and the blob itself. `mem`
/// decides which addresses may be read; an unreadable header means there is
/// no device tree there, an unreadable body that it is truncated.
pub fn parse_at<'a>(
    phys: u64,
    mem: &impl PhysReader<'a>,
    kernel: MemoryRegion,
) -> Result<BootInfo<'a>, BootInfoError> {
    const MISSING: BootInfoError = Missing("device tree");
    // The specification requires 8-byte alignment.
    if phys == 0 || !phys.is_multiple_of(8) {
        return Err(MISSING);
    }
    let header = mem.bytes(phys, HEADER_LEN as u64).ok_or(MISSING)?;
    let size = total_size(header)? as u64;
    ensure(size <= MAX_SIZE, Malformed("device tree larger than 2 MiB"))?;
    let blob = mem
        .bytes(phys, size)
        .ok_or(Truncated("device tree runs into unreadable memory"))?;
    let (start, end, kind) = (phys, phys + size, RegionKind::BootInfo);
    let reserved = [kernel, MemoryRegion { start, end, kind }];
    parse(blob, "devicetree", &reserved)
}

/// Parses a device tree. `reserved` lists regions the caller must keep
/// (kernel image, the blob itself) and is merged into the memory map.
pub fn parse<'a>(
    blob: &'a [u8],
    protocol: &'static str,
    reserved: &[MemoryRegion],
) -> Result<BootInfo<'a>, BootInfoError> {
    let dt = Blob::new(blob)?;
    let mut regions: RawRegions = ArrayVec::new();
    for r in reserved {
        push(&mut regions, *r)?;
    }

    // Memory reservation block: (address, size) pairs ending in (0, 0).
    for off in (0..).step_by(16) {
        let entry = be64(dt.rsvmap, off).zip(be64(dt.rsvmap, off + 8));
        let (addr, size) = entry.ok_or(Truncated("reservation map"))?;
        if (addr, size) == (0, 0) {
            break;
        }
        let r = MemoryRegion::from_len(addr, size, RegionKind::Reserved)
            .ok_or(Malformed("reservation wraps around"))?;
        push(&mut regions, r)?;
    }

    let mut stack: ArrayVec<Node<'a>, MAX_DEPTH> = ArrayVec::new();
    let mut cmdline = "";
    let (mut initrd_start, mut initrd_end) = (None, None);
    let (mut cpus, mut cpu_ids, mut psci) = (0usize, ArrayVec::new(), None);
    let mut cpu_intcs: ArrayVec<Option<u32>, MAX_CPUS> = ArrayVec::new();
    let mut timebase_hz = None;
    // `None` once there were too many NUMA ranges to keep.
    let mut numa_raw: Option<ArrayVec<NumaRange, { numa::MAX_RAW_NUMA_RANGES }>> =
        Some(ArrayVec::new());
    let mut irq = IrqScan::default();
    let cells = |value: &[u8], what| be32(value, 0).ok_or(Malformed(what));
    for tok in dt.tokens() {
        match tok? {
            Tok::Begin(name) => {
                let parent = stack.last().map(|n| n.role);
                let base = name.split('@').next().unwrap_or(name);
                let role = match (parent, base) {
                    (None, _) => Role::Root,
                    (Some(Role::Root), "chosen") => Role::Chosen,
                    (Some(Role::Root), "cpus") => Role::Cpus,
                    (Some(Role::Root), "reserved-memory") => Role::ReservedMemory,
                    (Some(Role::Root), _) => Role::TopLevel,
                    (Some(Role::Cpus), "cpu") => Role::Cpu,
                    (Some(Role::ReservedMemory), _) => Role::ReservedChild,
                    _ => Role::Other,
                };
                stack
                    .try_push(Node::new(role, base))
                    .map_err(|_| Malformed("device tree nested too deeply"))?;
            }
            Tok::End => {
                let node = stack.pop().ok_or(Malformed("unbalanced end of node"))?;
                if let Some(cpu) = stack.last_mut().filter(|p| p.role == Role::Cpu)
                    && node.dev.is(CPU_INTC)
                {
                    cpu.intc = node.dev.phandle;
                }
                let parent_cells = stack.last().map_or((2, 1), |p| p.child_cells);
                let kind = match node.role {
                    Role::TopLevel if node.is_memory_type => Some(RegionKind::Usable),
                    Role::ReservedChild => Some(RegionKind::Reserved),
                    _ => None,
                };
                if let (Some(kind), Some(reg), true) = (kind, node.reg, node.enabled) {
                    let first = regions.len();
                    push_reg(reg, parent_cells, kind, &mut regions)?;
                    if kind == RegionKind::Usable
                        && let (Some(id), Some(raw)) = (node.numa_node, numa_raw.as_mut())
                    {
                        let node = numa::cap_node(id);
                        let new = regions.get(first..).unwrap_or_default().iter();
                        let tag = |&MemoryRegion { start, end, .. }| NumaRange { start, end, node };
                        if new.map(tag).try_for_each(|r| raw.try_push(r)).is_err() {
                            numa_raw = None;
                        }
                    }
                }
                if node.role == Role::Cpu && node.enabled {
                    cpus += 1;
                    let one = reg_len(parent_cells);
                    if let Some(reg) = node.reg.filter(|r| Some(r.len()) == one)
                        && let Some((id, _)) = reg_entry(reg, parent_cells, 0)
                        && cpu_ids.try_push(id).is_ok()
                    {
                        let _ = cpu_intcs.try_push(node.intc);
                    }
                }
                let mut compatible = node.dev.compatible.split(|&b| b == 0);
                if node.enabled && compatible.any(|c| c.starts_with(b"arm,psci")) {
                    psci = psci.or(match node.method {
                        Some("hvc") => Some(Psci::Hvc),
                        Some("smc") => Some(Psci::Smc),
                        _ => None,
                    });
                }
                irq.node(&node, parent_cells);
            }
            Tok::Prop(name, value) => {
                let node = stack
                    .last_mut()
                    .ok_or(Malformed("property outside a node"))?;
                let (top, chosen) = (node.role == Role::TopLevel, node.role == Role::Chosen);
                match name {
                    "#address-cells" => node.child_cells.0 = cells(value, "#address-cells")?,
                    "#size-cells" => node.child_cells.1 = cells(value, "#size-cells")?,
                    "reg" => node.reg = Some(value),
                    "method" => node.method = cstr(value),
                    "numa-node-id" => {
                        node.numa_node = (value.len() == 4).then(|| be32(value, 0)).flatten();
                        if node.numa_node.is_none() && top {
                            log::warn!("device tree: numa-node-id is not 4 bytes; ignored");
                        }
                    }
                    "device_type" => node.is_memory_type |= top && cstr(value) == Some("memory"),
                    "status" => node.enabled = matches!(cstr(value), Some("okay" | "ok")),
                    // In `/cpus` (or, on some boards, each `cpu`): the
                    // first one found is taken.
                    "timebase-frequency" if matches!(node.role, Role::Cpus | Role::Cpu) => {
                        timebase_hz = timebase_hz.or(prop_u32_or_u64(value)).filter(|&hz| hz > 0);
                    }
                    "bootargs" if chosen => {
                        let text = value.split(|&b| b == 0).next().unwrap_or(&[]);
                        cmdline = core::str::from_utf8(text)
                            .map_err(|_| BootInfoError::CmdlineNotUtf8)?;
                    }
                    "linux,initrd-start" if chosen => initrd_start = prop_u32_or_u64(value),
                    "linux,initrd-end" if chosen => initrd_end = prop_u32_or_u64(value),
                    "stdout-path" if chosen => irq.stdout = cstr(value),
                    _ => node.dev.prop(name, value),
                }
            }
        }
    }
    ensure(stack.is_empty(), Malformed("FDT_END inside a node"))?;
    if let (Some(start), Some(end)) = (initrd_start, initrd_end)
        && start < end
    {
        let kind = RegionKind::BootModule;
        push(&mut regions, MemoryRegion { start, end, kind })?;
    }
    let numa = match numa_raw.map(NumaMap::build) {
        Some(Ok(map)) => map,
        Some(Err(e)) => {
            log::warn!("device tree: NUMA ranges ignored ({e:?})");
            NumaMap::default()
        }
        None => {
            log::warn!("device tree: too many NUMA ranges; ignored");
            NumaMap::default()
        }
    };
    Ok(BootInfo {
        protocol,
        memory: MemoryMap::build(regions)?,
        cmdline,
        cpu_count: cpus.max(1),
        cpu_ids,
        psci,
        numa,
        timebase_hz,
        irq: irq.finish(dt, &cpu_intcs),
        framebuffer: framebuffer(dt),
    })
}

/// The `simple-framebuffer` node `/chosen/framebuffer@…` (where keel-loader
/// and Linux's boot loaders put it): `reg` of two address cells,
/// `width`, `height`, `stride` and `format` "a8r8g8b8" or "x8r8g8b8". Any
/// other framebuffer is ignored, not an error.
fn framebuffer(dt: Blob<'_>) -> Option<(u64, Mode)> {
    let (mut addr, mut simple, mut xrgb) = (None, false, false);
    let mut mode = Mode {
        shifts: [16, 8, 0],
        ..Mode::default()
    };
    node_props(dt, "/chosen/framebuffer", |name, value| {
        let cell = be32(value, 0).unwrap_or(0);
        match name {
            "compatible" => simple = value.split(|&b| b == 0).any(|c| c == b"simple-framebuffer"),
            "reg" => addr = be64(value, 0),
            "width" => mode.width = cell,
            "height" => mode.height = cell,
            "stride" => mode.pitch = cell,
            "format" => xrgb = matches!(value, b"a8r8g8b8\0" | b"x8r8g8b8\0"),
            _ => {}
        }
    });
    (simple && xrgb && mode.is_valid()).then_some((addr?, mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_fdt::{FdtReserveEntry, FdtWriter};

    const KERNEL: MemoryRegion = MemoryRegion {
        start: 0x4020_0000,
        end: 0x4030_0000,
        kind: RegionKind::Kernel,
    };

    /// A tree shaped like QEMU's `virt` machine: 2 CPUs, 256 MiB at 1 GiB,
    /// a reserved-memory child, a /memreserve/ entry, bootargs, a GICv2
    /// with a child, the timer, and the PL011 as `stdout-path` via an alias.
    fn virt_like(cpus: u32, with_memory: bool) -> Vec<u8> {
        let mut w =
            FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x4800_0000, 0x1000).unwrap()])
                .unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_u32("interrupt-parent", 0x8003).unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("bootargs", "log=debug").unwrap();
        w.property_u64("linux,initrd-start", 0x4400_0000).unwrap();
        w.property_u64("linux,initrd-end", 0x4410_0000).unwrap();
        w.property_string("stdout-path", "serial0:115200n8")
            .unwrap();
        w.end_node(chosen).unwrap();
        let aliases = w.begin_node("aliases").unwrap();
        w.property_string("serial0", "/pl011@9000000").unwrap();
        w.end_node(aliases).unwrap();
        gic(
            &mut w,
            "arm,cortex-a15-gic",
            &[0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000],
        );
        let timer = w.begin_node("timer").unwrap();
        w.property_string_list("compatible", vec!["arm,armv8-timer".into()])
            .unwrap();
        w.property_array_u32("interrupts", &[1, 13, 0x304, 1, 14, 0x304, 1, 11, 0x304])
            .unwrap();
        w.end_node(timer).unwrap();
        if with_memory {
            let mem = w.begin_node("memory@40000000").unwrap();
            w.property_string("device_type", "memory").unwrap();
            w.property_array_u64("reg", &[0x4000_0000, 0x1000_0000])
                .unwrap();
            w.end_node(mem).unwrap();
        }
        let resv = w.begin_node("reserved-memory").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let fw = w.begin_node("mmode_resv0@4f000000").unwrap();
        w.property_array_u64("reg", &[0x4f00_0000, 0x20_0000])
            .unwrap();
        w.end_node(fw).unwrap();
        w.end_node(resv).unwrap();
        let cpus_node = w.begin_node("cpus").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 0).unwrap();
        w.property_u32("timebase-frequency", 10_000_000).unwrap();
        for i in 0..cpus {
            let cpu = w.begin_node(&format!("cpu@{i}")).unwrap();
            w.property_string("device_type", "cpu").unwrap();
            w.property_u32("reg", i).unwrap();
            w.end_node(cpu).unwrap();
        }
        // A disabled CPU is not counted.
        let off = w.begin_node("cpu@99").unwrap();
        w.property_string("status", "disabled").unwrap();
        w.end_node(off).unwrap();
        w.end_node(cpus_node).unwrap();
        let uart = w.begin_node("pl011@9000000").unwrap();
        w.property_array_u64("reg", &[0x900_0000, 0x1000]).unwrap();
        w.property_string_list(
            "compatible",
            vec!["arm,pl011".into(), "arm,primecell".into()],
        )
        .unwrap();
        w.property_array_u32("interrupts", &[0, 1, 4]).unwrap();
        w.end_node(uart).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    /// A GIC node with phandle 0x8003 and an MSI-frame child, like QEMU's.
    fn gic(w: &mut FdtWriter, compatible: &str, reg: &[u64]) {
        let intc = w.begin_node("intc@8000000").unwrap();
        w.property_u32("phandle", 0x8003).unwrap();
        w.property_array_u64("reg", reg).unwrap();
        w.property_string("compatible", compatible).unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_u32("#interrupt-cells", 3).unwrap();
        let v2m = w.begin_node("v2m@8020000").unwrap();
        w.property_array_u64("reg", &[0x802_0000, 0x1000]).unwrap();
        w.property_string("compatible", "arm,gic-v2m-frame")
            .unwrap();
        w.end_node(v2m).unwrap();
        w.end_node(intc).unwrap();
    }

    /// A root with 2/2 cells, interrupt parent 0x8003, 256 MiB of memory,
    /// and the nodes `body` adds.
    fn tree(body: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_u32("interrupt-parent", 0x8003).unwrap();
        let mem = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 0x1000_0000])
            .unwrap();
        w.end_node(mem).unwrap();
        body(&mut w);
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    /// A node `name` with string `compatible` and cell-array `props`.
    fn node(w: &mut FdtWriter, name: &str, compatible: &str, props: &[(&str, &[u32])]) {
        let n = w.begin_node(name).unwrap();
        if !compatible.is_empty() {
            w.property_string("compatible", compatible).unwrap();
        }
        for (prop, cells) in props {
            w.property_array_u32(prop, cells).unwrap();
        }
        w.end_node(n).unwrap();
    }

    /// A tree with a framebuffer node at `/<parent>/framebuffer@…`.
    fn with_framebuffer(parent: &str, compatible: &str, stride: u32, format: &str) -> Vec<u8> {
        tree(|w| {
            let p = w.begin_node(parent).unwrap();
            let fb = w.begin_node("framebuffer@4c430000").unwrap();
            w.property_string("compatible", compatible).unwrap();
            w.property_array_u32("reg", &[0, 0x4c43_0000, 0x30_0000])
                .unwrap();
            for (name, v) in [("width", 1024), ("height", 768), ("stride", stride)] {
                w.property_u32(name, v).unwrap();
            }
            w.property_string("format", format).unwrap();
            w.end_node(fb).unwrap();
            w.end_node(p).unwrap();
        })
    }

    #[test]
    fn a_simple_framebuffer_in_chosen_is_taken() {
        let fb = |blob: Vec<u8>| parse(&blob, "devicetree", &[]).unwrap().framebuffer;
        let mode = Mode {
            width: 1024,
            height: 768,
            pitch: 4096,
            shifts: [16, 8, 0],
        };
        let simple = "simple-framebuffer";
        assert_eq!(
            fb(with_framebuffer("chosen", simple, 4096, "a8r8g8b8")),
            Some((0x4c43_0000, mode))
        );
        assert_eq!(
            fb(with_framebuffer("chosen", simple, 4096, "x8r8g8b8")),
            Some((0x4c43_0000, mode))
        );
        // Other pixel formats, bindings or places, and a stride shorter
        // than a line, are ignored.
        for blob in [
            with_framebuffer("chosen", simple, 4096, "r5g6b5"),
            with_framebuffer("chosen", "vendor,fb", 4096, "a8r8g8b8"),
            with_framebuffer("soc", simple, 4096, "a8r8g8b8"),
            with_framebuffer("chosen", simple, 4092, "a8r8g8b8"),
        ] {
            assert_eq!(fb(blob), None);
        }
    }

    fn irq_of(blob: &[u8]) -> InterruptHw {
        parse(blob, "devicetree", &[]).unwrap().irq
    }

    const fn line(number: u32, trigger: Trigger) -> Option<Line> {
        Some(Line { number, trigger })
    }

    const QEMU_GICV2: &[u8] = include_bytes!("testdata/qemu-virt-aarch64-gicv2.dtb");
    const QEMU_GICV3: &[u8] = include_bytes!("testdata/qemu-virt-aarch64-gicv3.dtb");
    const QEMU_RISCV: &[u8] = include_bytes!("testdata/qemu-virt-riscv64.dtb");

    #[test]
    fn qemu_virt_interrupt_hardware() {
        // QEMU 7.2 `-M virt[,gic-version=3] -cpu cortex-a72 -m 128M -smp 2`.
        let v2 = irq_of(QEMU_GICV2);
        let gic = Controller::GicV2 {
            dist: (0x800_0000, 0x1_0000),
            cpu: (0x801_0000, 0x1_0000),
        };
        assert_eq!(v2.controller, Some(gic));
        assert_eq!(v2.timer, line(27, LEVEL_HIGH));
        assert_eq!(v2.uart, line(33, LEVEL_HIGH));
        let v3 = irq_of(QEMU_GICV3);
        let gic = Controller::GicV3 {
            dist: (0x800_0000, 0x1_0000),
            redist: (0x80a_0000, 0xf6_0000),
        };
        assert_eq!(v3.controller, Some(gic));
        assert_eq!((v3.timer, v3.uart), (v2.timer, v2.uart));
        // `-M virt -m 128M -smp 2`: the UART is /soc/serial@10000000.
        let rv = irq_of(QEMU_RISCV);
        // Each hart's S-mode context: 2 hart + 1, found by its phandle.
        let mut contexts = [None; MAX_CPUS];
        contexts[..2].copy_from_slice(&[Some(1), Some(3)]);
        let plic = Controller::Plic {
            regs: (0xc00_0000, 0x60_0000),
            sources: 96,
            context: 1,
            contexts,
        };
        assert_eq!(rv.controller, Some(plic));
        assert_eq!(rv.timer, None);
        assert_eq!(rv.uart, line(10, LEVEL_HIGH));
    }

    #[test]
    fn console_uart_is_found_by_stdout_path_or_compatible() {
        let uarts = |w: &mut FdtWriter| {
            gic(
                w,
                "arm,gic-400",
                &[0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000],
            );
            let soc = w.begin_node("soc").unwrap();
            node(w, "serial@1000", "ns16550a", &[("interrupts", &[0, 5, 1])]);
            node(w, "serial@2000", "ns16550a", &[("interrupts", &[0, 6, 8])]);
            node(w, "serial@3000", "ns16550a", &[]);
            w.end_node(soc).unwrap();
        };
        let with_stdout = |path: &str| {
            irq_of(&tree(|w| {
                uarts(w);
                let chosen = w.begin_node("chosen").unwrap();
                w.property_string("stdout-path", path).unwrap();
                w.end_node(chosen).unwrap();
            }))
            .uart
        };
        let edge = Trigger::default();
        let low = Trigger {
            level: true,
            active_low: true,
        };
        // No stdout-path: the first UART.
        assert_eq!(irq_of(&tree(uarts)).uart, line(37, edge));
        assert_eq!(with_stdout("/soc/serial@2000"), line(38, low));
        // The unit address may be left out; the first match wins.
        assert_eq!(with_stdout("/soc/serial:9600"), line(37, edge));
        // A path or alias not in the tree: the first UART.
        assert_eq!(with_stdout("/soc/serial@4000"), line(37, edge));
        assert_eq!(with_stdout("serial1"), line(37, edge));
        // The console has no interrupt.
        assert_eq!(with_stdout("/soc/serial@3000"), None);
    }

    #[test]
    fn virt_like_interrupt_hardware() {
        let irq = irq_of(&virt_like(2, true));
        assert_eq!(
            irq.controller,
            Some(Controller::GicV2 {
                dist: (0x800_0000, 0x1_0000),
                cpu: (0x801_0000, 0x1_0000),
            })
        );
        assert_eq!(irq.timer, line(27, LEVEL_HIGH));
        assert_eq!(irq.uart, line(33, LEVEL_HIGH));
    }

    #[test]
    fn plic_context_comes_from_interrupts_extended() {
        let plic = |ext: Option<&[u32]>, ndev: &[u32]| {
            irq_of(&tree(|w| {
                let soc = w.begin_node("soc").unwrap();
                w.property_u32("#address-cells", 2).unwrap();
                w.property_u32("#size-cells", 2).unwrap();
                let mut props: Vec<(&str, &[u32])> = vec![
                    ("reg", &[0, 0xc00_0000, 0, 0x60_0000]),
                    ("riscv,ndev", ndev),
                    ("phandle", &[5]),
                ];
                props.extend(ext.map(|e| ("interrupts-extended", e)));
                node(w, "plic@c000000", "riscv,plic0", &props);
                let uart = [("interrupts", &[10][..]), ("interrupt-parent", &[5])];
                node(w, "serial@10000000", "ns16550", &uart);
                w.end_node(soc).unwrap();
            }))
        };
        let ctx = |irq: InterruptHw| match irq.controller {
            Some(Controller::Plic { context, .. }) => Some(context),
            _ => None,
        };
        // Hart 0 M and S, hart 1 M and S; and hart 1's S first.
        assert_eq!(ctx(plic(Some(&[4, 11, 4, 9, 2, 11, 2, 9]), &[95])), Some(1));
        assert_eq!(ctx(plic(Some(&[2, 9, 4, 11]), &[95])), Some(0));
        assert_eq!(ctx(plic(None, &[95])), Some(1));
        assert_eq!(plic(None, &[95]).uart, line(10, LEVEL_HIGH));
        // No S-mode context, odd cells, no `riscv,ndev`: no controller.
        for irq in [
            plic(Some(&[4, 11]), &[95]),
            plic(Some(&[4, 9, 2]), &[95]),
            plic(None, &[]),
        ] {
            assert_eq!(irq, InterruptHw::default());
        }
    }

    #[test]
    fn malformed_interrupt_information_is_ignored() {
        let gic_reg = [0x800_0000, 0x1_0000, 0x801_0000, 0x1_0000];
        let with = |reg: &[u64], timer: &[u32], uart: &[(&str, &[u32])]| {
            irq_of(&tree(|w| {
                gic(w, "arm,gic-v3", reg);
                node(w, "timer", "arm,armv7-timer", &[("interrupts", timer)]);
                node(w, "pl011@9000000", "arm,pl011", uart);
            }))
        };
        let timer = [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4];
        let good = with(&gic_reg, &timer, &[("interrupts", &[0, 1, 4])]);
        assert!(matches!(good.controller, Some(Controller::GicV3 { .. })));
        assert_eq!(
            (good.timer, good.uart),
            (line(27, LEVEL_HIGH), line(33, LEVEL_HIGH))
        );
        // One window only, an empty or wrapping one: no controller, so no lines.
        for reg in [&gic_reg[..2], &[0x800_0000, 0, 1, 1], &[u64::MAX, 2, 1, 1]] {
            assert_eq!(with(reg, &timer, &[]), InterruptHw::default());
        }
        // Bad timer specifiers: too short, PPI out of range, bad flags, SPI
        // type 2, cells not a multiple of 3.
        for t in [
            &timer[..6],
            &[1, 13, 4, 1, 14, 4, 1, 16, 4],
            &[1, 13, 4, 1, 14, 4, 1, 11, 3],
            &[1, 13, 4, 1, 14, 4, 2, 11, 4],
            &timer[..10],
        ] {
            let irq = with(&gic_reg, t, &[]);
            assert!(irq.controller.is_some() && irq.timer.is_none(), "{t:?}");
        }
        // The UART on another interrupt controller, or SPI 988.
        let other = with(
            &gic_reg,
            &timer,
            &[("interrupts", &[0, 1, 4]), ("interrupt-parent", &[7])],
        );
        assert_eq!((other.timer, other.uart), (good.timer, None));
        let spi = with(&gic_reg, &timer, &[("interrupts", &[0, 988, 4])]);
        assert_eq!(spi.uart, None);
    }

    #[test]
    fn cpu_ids_and_psci_conduit() {
        let blobs = [QEMU_GICV2, QEMU_GICV3, QEMU_RISCV, &virt_like(2, true)];
        let psci = [Some(Psci::Hvc), Some(Psci::Hvc), None, None];
        for (blob, psci) in blobs.into_iter().zip(psci) {
            let info = parse(blob, "devicetree", &[]).unwrap();
            assert_eq!((&info.cpu_ids[..], info.psci), (&[0, 1][..], psci));
        }
        // Two-cell MPIDRs; a disabled CPU; CPUs without a `reg`, with a
        // short or an oversized one (counted, not listed); PSCI by `smc`,
        // and a `method` on a node that is not PSCI.
        let cpus = |w: &mut FdtWriter, cells: u32, cpus: &[(&str, &[u32])]| {
            let n = w.begin_node("cpus").unwrap();
            w.property_u32("#address-cells", cells).unwrap();
            w.property_u32("#size-cells", 0).unwrap();
            for (name, reg) in cpus {
                let cpu = w.begin_node(name).unwrap();
                if name.ends_with("off") {
                    w.property_string("status", "disabled").unwrap();
                }
                if !reg.is_empty() {
                    w.property_array_u32("reg", reg).unwrap();
                }
                w.end_node(cpu).unwrap();
            }
            w.end_node(n).unwrap();
        };
        let blob = tree(|w| {
            for (name, compatible, method) in [("x", "y", "hvc"), ("psci", "arm,psci-0.2", "smc")] {
                let n = w.begin_node(name).unwrap();
                w.property_string("compatible", compatible).unwrap();
                w.property_string("method", method).unwrap();
                w.end_node(n).unwrap();
            }
            #[rustfmt::skip]
            cpus(w, 2, &[("cpu@0", &[0, 0]), ("cpu@off", &[0, 7]), ("cpu@1", &[]),
                ("cpu@2", &[2]), ("cpu@3", &[0, 3, 0]), ("cpu@100000100", &[1, 0x100])]);
        });
        let info = parse(&blob, "devicetree", &[]).unwrap();
        assert_eq!(info.cpu_count, 5);
        assert_eq!(&info.cpu_ids[..], &[0, 0x1_0000_0100]);
        assert_eq!(info.psci, Some(Psci::Smc));
        // Ids of more than two cells are not listed either.
        let blob = tree(|w| cpus(w, 3, &[("cpu@0", &[0, 0, 1])]));
        let info = parse(&blob, "devicetree", &[]).unwrap();
        assert_eq!(
            (info.cpu_count, info.cpu_ids.len(), info.psci),
            (1, 0, None)
        );
    }

    fn kinds_at(info: &BootInfo<'_>, addr: u64) -> Option<RegionKind> {
        info.memory
            .regions()
            .iter()
            .find(|r| r.start <= addr && addr < r.end)
            .map(|r| r.kind)
    }

    #[test]
    fn parses_virt_like_tree() {
        let blob = virt_like(2, true);
        assert_eq!(total_size(&blob).unwrap(), blob.len());
        let info = parse(&blob, "devicetree", &[KERNEL]).unwrap();
        assert_eq!(info.cmdline, "log=debug");
        assert_eq!(info.cpu_count, 2);
        assert_eq!(info.timebase_hz, Some(10_000_000));
        assert_eq!(kinds_at(&info, 0x4000_0000), Some(RegionKind::Usable));
        assert_eq!(kinds_at(&info, 0x4020_0000), Some(RegionKind::Kernel));
        assert_eq!(kinds_at(&info, 0x4400_0000), Some(RegionKind::BootModule));
        assert_eq!(kinds_at(&info, 0x4800_0000), Some(RegionKind::Reserved));
        assert_eq!(kinds_at(&info, 0x4f10_0000), Some(RegionKind::Reserved));
        assert_eq!(kinds_at(&info, 0x4f20_0000), Some(RegionKind::Usable));
        // The UART's reg is not memory.
        assert_eq!(kinds_at(&info, 0x900_0000), None);
        assert_eq!(info.memory.ram_bytes(), 0x1000_0000 - 0x1000 - 0x20_0000);
    }

    #[test]
    fn no_memory_node_is_an_error() {
        let blob = virt_like(1, false);
        assert_eq!(
            parse(&blob, "devicetree", &[]).unwrap_err(),
            BootInfoError::NoMemoryMap
        );
    }

    #[test]
    fn bad_magic_and_short_header_are_errors() {
        let mut blob = virt_like(1, true);
        assert!(matches!(
            total_size(&blob[..10]),
            Err(BootInfoError::Truncated(_))
        ));
        blob[0] = 0;
        assert!(matches!(total_size(&blob), Err(BootInfoError::Missing(_))));
        assert!(matches!(
            parse(&blob, "devicetree", &[]),
            Err(BootInfoError::Missing(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let blob = virt_like(2, true);
        for len in 0..blob.len() {
            assert!(parse(&blob[..len], "devicetree", &[]).is_err(), "len {len}");
        }
    }

    #[test]
    fn non_utf8_bootargs_is_an_error() {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property("bootargs", &[0xff, 0xfe, 0]).unwrap();
        w.end_node(chosen).unwrap();
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        assert_eq!(
            parse(&blob, "devicetree", &[]).unwrap_err(),
            BootInfoError::CmdlineNotUtf8
        );
    }

    use crate::bootinfo::test_ram::Ram;

    #[test]
    fn parse_at_finds_checks_and_reserves_the_blob() {
        let blob = virt_like(2, true);
        let ram = Ram {
            base: 0x4000_0000,
            data: blob.clone(),
        };
        let info = parse_at(0x4000_0000, &&ram, KERNEL).unwrap();
        assert_eq!(info.cpu_count, 2);
        assert_eq!(kinds_at(&info, 0x4000_0000), Some(RegionKind::BootInfo));
        assert_eq!(kinds_at(&info, 0x4020_0000), Some(RegionKind::Kernel));
        let missing = Err(BootInfoError::Missing("device tree"));
        assert_eq!(parse_at(0, &&ram, KERNEL).map(|_| ()), missing);
        assert_eq!(parse_at(0x4000_0004, &&ram, KERNEL).map(|_| ()), missing);
        assert_eq!(parse_at(0x3000_0000, &&ram, KERNEL).map(|_| ()), missing);
        // Header readable, body not.
        let short = Ram {
            base: 0x4000_0000,
            data: blob[..blob.len() / 2].to_vec(),
        };
        assert!(matches!(
            parse_at(0x4000_0000, &&short, KERNEL),
            Err(BootInfoError::Truncated(_))
        ));
        // A header claiming more than MAX_SIZE.
        let mut big = blob.clone();
        big[4..8].copy_from_slice(&(3u32 << 20).to_be_bytes());
        let big = Ram {
            base: 0x4000_0000,
            data: big,
        };
        assert!(matches!(
            parse_at(0x4000_0000, &&big, KERNEL),
            Err(BootInfoError::Malformed(_))
        ));
    }

    /// Two memory nodes like QEMU's `-numa node,memdev=…` ×2 (node 1 first,
    /// as QEMU writes them), the second with two `reg` ranges; `numa` gives
    /// each node's `numa-node-id` property value (`None`: absent).
    fn two_node_tree(numa: [Option<&[u8]>; 2]) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let nodes: [(&str, &[u64]); 2] = [
            ("memory@50000000", &[0x5000_0000, 0x1000_0000]),
            (
                "memory@40000000",
                &[0x4000_0000, 0x800_0000, 0x4800_0000, 0x800_0000],
            ),
        ];
        for ((name, reg), id) in nodes.into_iter().zip(numa) {
            let mem = w.begin_node(name).unwrap();
            w.property_string("device_type", "memory").unwrap();
            w.property_array_u64("reg", reg).unwrap();
            if let Some(id) = id {
                w.property("numa-node-id", id).unwrap();
            }
            w.end_node(mem).unwrap();
        }
        // A non-memory node's numa-node-id says nothing about memory.
        let pci = w.begin_node("pcie@10000000").unwrap();
        w.property_array_u64("reg", &[0x1000_0000, 0x1000_0000])
            .unwrap();
        w.property_u32("numa-node-id", 1).unwrap();
        w.end_node(pci).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn numa_node_ids_tag_memory_ranges() {
        let blob = two_node_tree([Some(&1u32.to_be_bytes()), Some(&0u32.to_be_bytes())]);
        let info = parse(&blob, "devicetree", &[]).unwrap();
        let nr = |start, end, node| NumaRange { start, end, node };
        assert_eq!(
            info.numa.ranges(),
            &[
                nr(0x4000_0000, 0x5000_0000, 0),
                nr(0x5000_0000, 0x6000_0000, 1)
            ]
        );
        assert_eq!(info.memory.usable_bytes(), 0x2000_0000);
    }

    #[test]
    fn numa_without_ids_is_one_node() {
        let blob = two_node_tree([None, None]);
        assert!(parse(&blob, "devicetree", &[]).unwrap().numa.is_empty());
        let blob = virt_like(2, true);
        assert!(parse(&blob, "devicetree", &[]).unwrap().numa.is_empty());
    }

    #[test]
    fn malformed_numa_node_id_is_ignored() {
        // Wrong length on node 1's memory: its range is untagged (node 0);
        // the other memory node keeps its id. The boot goes on.
        let blob = two_node_tree([Some(&[0, 1]), Some(&0u32.to_be_bytes())]);
        let info = parse(&blob, "devicetree", &[]).unwrap();
        assert_eq!(
            info.numa.ranges(),
            &[NumaRange {
                start: 0x4000_0000,
                end: 0x5000_0000,
                node: 0
            }]
        );
        let blob = two_node_tree([Some(&[0; 8]), Some(&[])]);
        assert!(parse(&blob, "devicetree", &[]).unwrap().numa.is_empty());
        // Node numbers past the limit share the last node.
        let blob = two_node_tree([Some(&1000u32.to_be_bytes()), None]);
        let info = parse(&blob, "devicetree", &[]).unwrap();
        assert_eq!(
            info.numa.ranges(),
            &[NumaRange {
                start: 0x5000_0000,
                end: 0x6000_0000,
                node: numa::MAX_NODES as u8 - 1
            }]
        );
    }

    #[test]
    fn too_many_numa_ranges_drop_numa_only() {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        for i in 0..(numa::MAX_RAW_NUMA_RANGES as u64 + 1) {
            let mem = w
                .begin_node(&format!("memory@{:x}", 0x4000_0000 + i * 0x20_0000))
                .unwrap();
            w.property_string("device_type", "memory").unwrap();
            w.property_array_u64("reg", &[0x4000_0000 + i * 0x20_0000, 0x10_0000])
                .unwrap();
            w.property_u32("numa-node-id", (i % 2) as u32).unwrap();
            w.end_node(mem).unwrap();
        }
        w.end_node(root).unwrap();
        let blob = w.finish().unwrap();
        let info = parse(&blob, "devicetree", &[]).unwrap();
        assert!(info.numa.is_empty());
        assert_eq!(
            info.memory.usable_bytes(),
            (numa::MAX_RAW_NUMA_RANGES as u64 + 1) * 0x10_0000
        );
    }

    proptest! {
        /// Corrupting any bytes of a valid tree never panics the parser.
        #[test]
        fn corrupted_trees_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut blob = virt_like(2, true);
            for (i, b) in edits.iter().copied() {
                let at = i.index(blob.len());
                blob[at] = b;
            }
            let _ = parse(&blob, "devicetree", &[KERNEL]);
            for qemu in [QEMU_GICV2, QEMU_GICV3, QEMU_RISCV] {
                let mut blob = qemu.to_vec();
                for &(i, b) in &edits {
                    let at = i.index(blob.len());
                    blob[at] = b;
                }
                let _ = parse(&blob, "devicetree", &[]);
            }
        }
    }
}

//! ACPI table parsing: the CPU count, the interrupt hardware and NUMA
//! memory affinity. Find the RSDP (the copy the boot loader handed over, or
//! by scanning the EBDA and the BIOS area 0xE0000–0xFFFFF as PC firmware
//! places it), follow the XSDT or RSDT to the MADT and count (and list the
//! ids of) the enabled processor Local APIC / x2APIC entries and read the
//! APIC addresses and interrupt source overrides, and to the SRAT and read
//! its enabled memory affinity entries.
//!
//! The tables are firmware input and are treated as untrusted: every table
//! is checksummed and length-checked, every read goes through a
//! [`PhysReader`] that refuses ranges it does not cover, and loops are
//! bounded by table lengths that only ever shrink the remaining work. A
//! problem yields an `Err` describing it (the caller then assumes one CPU,
//! or one NUMA node). Portable and free of `unsafe`: the architecture
//! supplies only the reader.

use super::numa::{self, DomainNumbering, NumaMap, NumaRange};
use super::{Controller, InterruptHw, IoApic, Line, MAX_CPUS, PhysReader, Trigger, u32_at, u64_at};
use crate::mm::kref::ensure;
use arrayvec::ArrayVec;

/// Largest system description table accepted.
const MAX_TABLE_LEN: u32 = 1 << 20;
const SDT_HEADER_LEN: usize = 36;
/// MADT: header, then local APIC address and flags, then entries.
const MADT_ENTRIES_OFFSET: usize = 44;
/// SRAT: header, then 12 reserved bytes, then entries.
const SRAT_ENTRIES_OFFSET: usize = 48;
/// SRAT memory affinity structure: type and length.
const SRAT_MEMORY: u8 = 1;
const SRAT_MEMORY_LEN: usize = 40;

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |sum, &x| sum.wrapping_add(x)) == 0
}

/// The enabled CPUs the MADT describes: how many, and the local APIC ids
/// of the first [`MAX_CPUS`] in table order. `rsdp` is the address of an
/// RSDP copy the boot loader handed over, if any; if it is absent or
/// invalid the BIOS areas are scanned.
pub fn cpus<'a>(mem: &impl PhysReader<'a>, rsdp: Option<u64>) -> Result<Cpus, &'static str> {
    match enabled_cpus(madt(mem, rsdp)?)? {
        (0, _) => Err("MADT lists no enabled CPU"),
        cpus => Ok(cpus),
    }
}

/// A CPU count and the APIC ids of the first [`MAX_CPUS`] CPUs.
pub type Cpus = (usize, ArrayVec<u64, MAX_CPUS>);

/// The interrupt hardware the MADT describes: the local APIC (the 64-bit
/// address override, type 5, if present), the I/O APICs (type 1; the first
/// four), and the UART's line: ISA IRQ 4 through its interrupt source
/// override (type 2) if any, else GSI 4, edge-triggered, active high; the
/// UART is `None` if the override's flags use a reserved value. `rsdp` as
/// for [`cpus`].
pub fn interrupt_hw<'a>(
    mem: &impl PhysReader<'a>,
    rsdp: Option<u64>,
) -> Result<InterruptHw, &'static str> {
    let madt = madt(mem, rsdp)?;
    let lapic = u32_at(madt, SDT_HEADER_LEN).ok_or("MADT shorter than its header")?;
    let (mut lapic, mut ioapics) = (u64::from(lapic), ArrayVec::new());
    let short = "MADT entry too short";
    let (number, trigger) = (4, Trigger::default()); // ISA: edge, active high
    let mut uart = Some(Line { number, trigger });
    let mut overridden = false;
    for entry in madt_entries(madt) {
        let entry = entry?;
        let field = |at| u32_at(entry, at).ok_or(short);
        match (entry.first(), entry.len()) {
            (Some(1), 12..) => {
                let (base, gsi_base) = (field(4)?.into(), field(8)?);
                let _ = ioapics.try_push(IoApic { base, gsi_base });
            }
            // An override of bus 0 (ISA) IRQ 4; the first one counts.
            (Some(2), 10..) if entry.get(2..4) == Some(&[0, 4]) && !overridden => {
                overridden = true;
                // Polarity (bits 0–1), trigger mode (bits 2–3): 0 is the
                // ISA default, 1 high/edge, 3 low/level, 2 reserved.
                let flags = entry.get(8).copied().unwrap_or_default();
                let bits = |shift: u8| match flags >> shift & 3 {
                    0 | 1 => Some(false),
                    3 => Some(true),
                    _ => None,
                };
                let gsi = field(4)?;
                uart = bits(0).zip(bits(2)).map(|(active_low, level)| Line {
                    number: gsi,
                    trigger: Trigger { level, active_low },
                });
            }
            (Some(5), 12..) => lapic = u64_at(entry, 4).ok_or(short)?,
            (Some(1 | 5), _) | (Some(2), ..10) => return Err(short),
            _ => {}
        }
    }
    Ok(InterruptHw {
        controller: Some(Controller::Apic { lapic, ioapics }),
        timer: None,
        uart,
    })
}

/// The NUMA node of each memory range the SRAT describes, or `Ok(None)`
/// when there is no SRAT (one node). `rsdp` as for [`cpus`].
pub fn numa_map<'a>(
    mem: &impl PhysReader<'a>,
    rsdp: Option<u64>,
) -> Result<Option<NumaMap>, &'static str> {
    let rsdp = rsdp_of(mem, rsdp)?;
    let srat = find_table(mem, rsdp, b"SRAT", "SRAT has a bad checksum or length")?;
    srat.map(memory_affinity).transpose()
}

/// The MADT, through the RSDP as for [`cpus`].
fn madt<'a>(mem: &impl PhysReader<'a>, rsdp: Option<u64>) -> Result<&'a [u8], &'static str> {
    let rsdp = rsdp_of(mem, rsdp)?;
    find_table(mem, rsdp, b"APIC", "MADT has a bad checksum or length")?.ok_or("no MADT")
}

/// The RSDP the boot loader handed over if valid, else one found in the
/// BIOS areas.
fn rsdp_of<'a>(mem: &impl PhysReader<'a>, hint: Option<u64>) -> Result<&'a [u8], &'static str> {
    hint.and_then(|addr| valid_rsdp(mem, addr))
        .or_else(|| find_rsdp(mem))
        .ok_or("no valid RSDP from the boot loader or in the BIOS areas")
}

/// The RSDP at `addr` if its signature and checksums are right.
fn valid_rsdp<'a>(mem: &impl PhysReader<'a>, addr: u64) -> Option<&'a [u8]> {
    let v1 = mem.bytes(addr, 20)?;
    if v1.get(..8)? != b"RSD PTR " || !checksum_ok(v1) {
        return None;
    }
    if *v1.get(15)? < 2 {
        return Some(v1);
    }
    // ACPI 2.0+: 36 bytes with an extended checksum over all of them.
    let v2 = mem.bytes(addr, 36)?;
    checksum_ok(v2).then_some(v2)
}

/// Scans the first KiB of the EBDA, then 0xE0000–0xFFFFF, on 16-byte
/// boundaries.
fn find_rsdp<'a>(mem: &impl PhysReader<'a>) -> Option<&'a [u8]> {
    // The BIOS data area holds the EBDA's real-mode segment at 0x40e.
    let ebda = mem
        .bytes(0x40e, 2)
        .and_then(|b| b.try_into().ok())
        .map(|b: [u8; 2]| u64::from(u16::from_le_bytes(b)) << 4);
    let ebda_range = ebda
        .filter(|e| (0x8_0000..0xa_0000).contains(e))
        .map(|e| (e, e + 1024));
    ebda_range
        .into_iter()
        .chain([(0xe_0000, 0x10_0000)])
        .flat_map(|(lo, hi)| (lo..hi).step_by(16))
        .find_map(|addr| valid_rsdp(mem, addr))
}

/// A checksummed system description table at `addr`.
fn table<'a>(mem: &impl PhysReader<'a>, addr: u64) -> Option<&'a [u8]> {
    let header = mem.bytes(addr, SDT_HEADER_LEN as u64)?;
    let len = u32_at(header, 4)?;
    if (len as usize) < SDT_HEADER_LEN || len > MAX_TABLE_LEN {
        return None;
    }
    let t = mem.bytes(addr, len.into())?;
    checksum_ok(t).then_some(t)
}

/// The first valid table with `signature` the root table lists; `Ok(None)`
/// if it lists none, `Err(invalid)` if it lists only invalid ones.
fn find_table<'a>(
    mem: &impl PhysReader<'a>,
    rsdp: &[u8],
    signature: &[u8; 4],
    invalid: &'static str,
) -> Result<Option<&'a [u8]>, &'static str> {
    let xsdt = u64_at(rsdp, 24).filter(|&a| a != 0);
    let rsdt = u32_at(rsdp, 16).map(u64::from);
    let (root, entry_len, root_signature) = match xsdt {
        Some(addr) => (addr, 8, b"XSDT"),
        None => (rsdt.ok_or("RSDP too short")?, 4, b"RSDT"),
    };
    let root = table(mem, root).ok_or("root table (RSDT/XSDT) invalid")?;
    if root.get(..4) != Some(&root_signature[..]) {
        return Err("root table has the wrong signature");
    }
    let entries = root.get(SDT_HEADER_LEN..).unwrap_or_default();
    let mut candidates = entries
        .chunks_exact(entry_len)
        .filter_map(|e| match entry_len {
            8 => u64_at(e, 0),
            _ => u32_at(e, 0).map(u64::from),
        })
        .filter(|&addr| mem.bytes(addr, 4) == Some(&signature[..]))
        .peekable();
    if candidates.peek().is_none() {
        return Ok(None);
    }
    candidates
        .find_map(|addr| table(mem, addr))
        .map(Some)
        .ok_or(invalid)
}

/// Reads the enabled memory affinity structures (type 1: proximity domain
/// at 2, base at 8, length at 16, flags at 28, bit 0 = enabled) of a
/// checksummed SRAT. Proximity domains become nodes 0, 1, … in order of
/// first appearance. Disabled and empty entries are skipped; other entry
/// types are stepped over by their length.
fn memory_affinity(srat: &[u8]) -> Result<NumaMap, &'static str> {
    let mut domains = DomainNumbering::default();
    let mut ranges: ArrayVec<NumaRange, { numa::MAX_RAW_NUMA_RANGES }> = ArrayVec::new();
    let mut off = SRAT_ENTRIES_OFFSET;
    ensure(srat.len() >= off, "SRAT shorter than its header")?;
    while off < srat.len() {
        let (Some(&ty), Some(&len)) = (srat.get(off), srat.get(off + 1)) else {
            return Err("SRAT entry header runs past the table");
        };
        let len = usize::from(len);
        let Some(entry) = srat.get(off..off + len).filter(|_| len >= 2) else {
            return Err("SRAT entry length invalid");
        };
        off += len;
        if ty != SRAT_MEMORY {
            continue;
        }
        if len != SRAT_MEMORY_LEN {
            return Err("SRAT memory affinity entry has the wrong length");
        }
        let field = |at, what| u32_at(entry, at).ok_or(what);
        let (domain, flags) = (field(2, "SRAT domain")?, field(28, "SRAT flags")?);
        let start = u64_at(entry, 8).ok_or("SRAT base")?;
        let size = u64_at(entry, 16).ok_or("SRAT length")?;
        if flags & 1 == 0 || size == 0 {
            continue;
        }
        let end = start
            .checked_add(size)
            .ok_or("SRAT memory range wraps around")?;
        let node = domains.node(domain);
        ranges
            .try_push(NumaRange { start, end, node })
            .map_err(|_| "SRAT has too many memory ranges")?;
    }
    NumaMap::build(ranges).map_err(|_| "SRAT memory ranges do not fit")
}

/// The MADT's entries (type at 0, length at 1), ending with an error if
/// one runs past the table or is shorter than its header.
fn madt_entries(madt: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> {
    let mut off = MADT_ENTRIES_OFFSET;
    core::iter::from_fn(move || {
        if off >= madt.len() {
            return None;
        }
        let Some(&len) = madt.get(off + 1) else {
            off = usize::MAX;
            return Some(Err("MADT entry header runs past the table"));
        };
        let len = usize::from(len);
        let Some(entry) = madt.get(off..off + len).filter(|_| len >= 2) else {
            off = usize::MAX;
            return Some(Err("MADT entry length invalid"));
        };
        off += len;
        Some(Ok(entry))
    })
}

/// Counts the enabled (flags bit 0) Processor Local APIC (type 0: id at
/// 3, flags at 4) and Local x2APIC (type 9: id at 4, flags at 8) entries
/// and lists their ids.
fn enabled_cpus(madt: &[u8]) -> Result<Cpus, &'static str> {
    let (mut count, mut ids) = (0, ArrayVec::new());
    for entry in madt_entries(madt) {
        let entry = entry?;
        let cpu = match (entry.first(), entry.len()) {
            (Some(0), 8..) => entry.get(3).map(|&id| u32::from(id)).zip(u32_at(entry, 4)),
            (Some(9), 16..) => u32_at(entry, 4).zip(u32_at(entry, 8)),
            _ => None,
        };
        if let Some((id, _)) = cpu.filter(|&(_, flags)| flags & 1 != 0) {
            count += 1;
            let _ = ids.try_push(id.into());
        }
    }
    Ok((count, ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::bootinfo::test_ram::Ram;

    const RSDP: u64 = 0x1000;
    const ROOT: u64 = 0x1100;
    /// Where the `i`th table the root lists is placed.
    const fn table_addr(i: usize) -> u64 {
        0x2000 + 0x1000 * i as u64
    }

    /// Sets byte `at` so that all of `b` sums to zero.
    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        b[at] = 0u8.wrapping_sub(sum);
    }

    /// A system description table: header, zeroes up to `entries_offset`,
    /// then `entries`, with its length and checksum set.
    fn sdt(signature: &[u8; 4], entries_offset: usize, entries: &[&[u8]]) -> Vec<u8> {
        let mut t = vec![0u8; entries_offset];
        t.extend(entries.iter().flat_map(|e| e.iter().copied()));
        t[..4].copy_from_slice(signature);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    /// An RSDP: ACPI 1.0 pointing at an RSDT, or 2.0 pointing at an XSDT.
    fn rsdp(root: u64, xsdt: bool) -> Vec<u8> {
        let mut r = vec![0u8; if xsdt { 36 } else { 20 }];
        r[..8].copy_from_slice(b"RSD PTR ");
        if xsdt {
            r[15] = 2;
            r[20..24].copy_from_slice(&36u32.to_le_bytes());
            r[24..32].copy_from_slice(&root.to_le_bytes());
        } else {
            r[16..20].copy_from_slice(&(root as u32).to_le_bytes());
        }
        fix_checksum(&mut r[..20], 8);
        if xsdt {
            fix_checksum(&mut r, 32);
        }
        r
    }

    /// Memory at 0x1000 holding an RSDP, a root table (XSDT or RSDT) and
    /// `tables`, which the root lists in order.
    fn machine(xsdt: bool, tables: &[Vec<u8>]) -> Ram {
        let mut ram = Ram {
            base: RSDP,
            data: vec![0; 0x1000 * (tables.len() + 1)],
        };
        ram.put(RSDP, &rsdp(ROOT, xsdt));
        let ptrs: Vec<Vec<u8>> = (0..tables.len())
            .map(|i| match xsdt {
                true => table_addr(i).to_le_bytes().to_vec(),
                false => (table_addr(i) as u32).to_le_bytes().to_vec(),
            })
            .collect();
        let refs: Vec<&[u8]> = ptrs.iter().map(Vec::as_slice).collect();
        let sig = if xsdt { b"XSDT" } else { b"RSDT" };
        ram.put(ROOT, &sdt(sig, SDT_HEADER_LEN, &refs));
        for (i, t) in tables.iter().enumerate() {
            ram.put(table_addr(i), t);
        }
        ram
    }

    fn madt(entries: &[&[u8]]) -> Vec<u8> {
        sdt(b"APIC", MADT_ENTRIES_OFFSET, entries)
    }

    fn srat(entries: &[&[u8]]) -> Vec<u8> {
        sdt(b"SRAT", SRAT_ENTRIES_OFFSET, entries)
    }

    fn cpu_count(mem: &&Ram, rsdp: Option<u64>) -> Result<usize, &'static str> {
        super::cpus(mem, rsdp).map(|(n, _)| n)
    }

    fn cpus(ram: &Ram) -> Result<usize, &'static str> {
        cpu_count(&ram, Some(RSDP))
    }

    fn nodes(ram: &Ram) -> Result<Option<NumaMap>, &'static str> {
        numa_map(&ram, Some(RSDP))
    }

    const LAPIC_ON: [u8; 8] = [0, 8, 0, 0, 1, 0, 0, 0];
    const LAPIC_OFF: [u8; 8] = [0, 8, 1, 1, 0, 0, 0, 0];
    const X2APIC_ON: [u8; 16] = [9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    const IOAPIC: [u8; 12] = [1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
    /// An SRAT processor local APIC affinity structure (domain 1).
    const SRAT_CPU: [u8; 16] = [0, 16, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const MIB: u64 = 1 << 20;

    /// An SRAT memory affinity structure.
    fn srat_memory(domain: u32, base: u64, len: u64, flags: u32) -> [u8; SRAT_MEMORY_LEN] {
        let mut e = [0u8; SRAT_MEMORY_LEN];
        e[0] = SRAT_MEMORY;
        e[1] = SRAT_MEMORY_LEN as u8;
        e[2..6].copy_from_slice(&domain.to_le_bytes());
        e[8..16].copy_from_slice(&base.to_le_bytes());
        e[16..24].copy_from_slice(&len.to_le_bytes());
        e[28..32].copy_from_slice(&flags.to_le_bytes());
        e
    }

    #[test]
    fn madt_counts_enabled_cpus_through_rsdt_and_xsdt() {
        let m = madt(&[&LAPIC_ON, &IOAPIC, &LAPIC_OFF, &X2APIC_ON, &LAPIC_ON]);
        for xsdt in [false, true] {
            // Other tables before the MADT are skipped.
            let ram = machine(xsdt, &[srat(&[]), m.clone()]);
            assert_eq!(cpus(&ram), Ok(3), "xsdt: {xsdt}");
        }
    }

    /// A Local APIC (type 0) or, if `id` does not fit a byte, a Local
    /// x2APIC (type 9) entry.
    fn apic(id: u32, flags: u32) -> Vec<u8> {
        let mut e = match u8::try_from(id) {
            Ok(id) => vec![0, 8, 0, id],
            Err(_) => [&[9, 16, 0, 0][..], &id.to_le_bytes()].concat(),
        };
        e.extend(flags.to_le_bytes());
        e.resize(e[1].into(), 0);
        e
    }

    #[test]
    fn madt_lists_the_ids_of_enabled_cpus() {
        let ids = |entries: &[Vec<u8>]| {
            let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
            let (n, ids) = super::cpus(&&machine(true, &[madt(&refs)]), Some(RSDP)).unwrap();
            (n, ids.to_vec())
        };
        // Online-capable (bit 1) but not enabled: neither counted nor listed.
        let got = ids(&[
            apic(0, 1),
            IOAPIC.into(),
            apic(7, 2),
            apic(0x100, 1),
            apic(3, 3),
        ]);
        assert_eq!(got, (3, vec![0, 0x100, 3]));
        let got = ids(&[X2APIC_ON.into(), LAPIC_OFF.into(), apic(u32::MAX, 1)]);
        assert_eq!(got, (2, vec![0x100, 0xffff_ffff]));
        // Past MAX_CPUS, counted but not listed.
        let many: Vec<Vec<u8>> = (0..20).map(|i| apic(i * 2, 1)).collect();
        let (n, listed) = ids(&many);
        assert_eq!(n, 20);
        assert_eq!(listed, (0..16).map(|i| i * 2).collect::<Vec<u64>>());
    }

    #[test]
    fn malformed_madt_is_refused() {
        let bad_entries: [&[u8]; 4] = [
            &[0, 0],                    // length 0: would loop forever if trusted
            &[0, 1],                    // length 1: shorter than its header
            &[0, 40, 0, 0, 1, 0, 0, 0], // runs past the table
            &[0],                       // entry header cut by the table end
        ];
        for bad in bad_entries {
            let ram = machine(false, &[madt(&[&LAPIC_ON, bad])]);
            assert!(cpus(&ram).is_err(), "{bad:?}");
        }
        let ram = machine(false, &[madt(&[&LAPIC_OFF])]);
        assert_eq!(cpus(&ram), Err("MADT lists no enabled CPU"));
        let ram = machine(false, &[srat(&[])]);
        assert_eq!(cpus(&ram), Err("no MADT"));
        // A bad checksum.
        let mut m = madt(&[&LAPIC_ON]);
        m[9] ^= 1;
        let ram = machine(false, &[m]);
        assert_eq!(cpus(&ram), Err("MADT has a bad checksum or length"));
    }

    #[test]
    fn bad_lengths_and_pointers_are_refused() {
        let m = madt(&[&LAPIC_ON]);
        let with = |f: &dyn Fn(&mut Ram)| {
            let mut ram = machine(false, core::slice::from_ref(&m));
            f(&mut ram);
            cpus(&ram)
        };
        assert_eq!(with(&|_| ()), Ok(1));
        // MADT length: absurd, shorter than a header, past the end of memory.
        for len in [u32::MAX, MAX_TABLE_LEN + 1, 10, 0x2000] {
            let got = with(&|ram| ram.put(table_addr(0) + 4, &len.to_le_bytes()));
            assert!(got.is_err(), "{len:#x}");
        }
        // Root table length past the end of memory, or absurd.
        for len in [0x10_0000u32, u32::MAX] {
            let got = with(&|ram| ram.put(ROOT + 4, &len.to_le_bytes()));
            assert_eq!(got, Err("root table (RSDT/XSDT) invalid"), "{len:#x}");
        }
        // Root pointing outside memory, root with the wrong signature.
        let mut bad_root = rsdp(0xdead_0000, false);
        let got = with(&|ram| ram.put(RSDP, &bad_root));
        assert_eq!(got, Err("root table (RSDT/XSDT) invalid"));
        bad_root = rsdp(ROOT, true); // an XSDT pointer to the RSDT
        let got = with(&|ram| ram.put(RSDP, &bad_root));
        assert_eq!(got, Err("root table has the wrong signature"));
        // A root entry pointing outside memory or at the top of the
        // address space: not a candidate.
        for ptr in [0x9000_0000u32, u32::MAX] {
            let got = with(&|ram| {
                ram.put(ROOT + 36, &ptr.to_le_bytes());
                fix_checksum(&mut ram.data[0x100..0x100 + 40], 9);
            });
            assert_eq!(got, Err("no MADT"), "{ptr:#x}");
        }
        // Memory ending in the middle of the MADT.
        let mut ram = machine(false, core::slice::from_ref(&m));
        ram.data.truncate(0x1000 + m.len() - 1);
        assert_eq!(cpus(&ram), Err("MADT has a bad checksum or length"));
        // An RSDP hint outside memory, with nothing in the BIOS areas.
        assert!(
            cpu_count(
                &&machine(false, core::slice::from_ref(&m)),
                Some(u64::MAX - 3)
            )
            .is_err()
        );
    }

    #[test]
    fn bad_rsdp_is_refused() {
        let m = madt(&[&LAPIC_ON]);
        // Signature, v1 checksum, v2 extended checksum.
        for (xsdt, at) in [(false, 0), (false, 8), (true, 32)] {
            let mut ram = machine(xsdt, core::slice::from_ref(&m));
            ram.data[at] ^= 0x40;
            assert_eq!(
                cpus(&ram),
                Err("no valid RSDP from the boot loader or in the BIOS areas")
            );
        }
    }

    #[test]
    fn first_valid_copy_of_a_table_wins() {
        let mut bad = madt(&[&LAPIC_ON]);
        bad[9] ^= 1;
        let good = madt(&[&LAPIC_ON, &LAPIC_ON]);
        let ram = machine(true, &[bad.clone(), good]);
        assert_eq!(cpus(&ram), Ok(2));
        let ram = machine(true, &[bad.clone(), bad]);
        assert_eq!(cpus(&ram), Err("MADT has a bad checksum or length"));
    }

    #[test]
    fn rsdp_is_found_in_the_ebda_and_bios_area() {
        // The first MiB, with the tables at 0x2000….
        let tables = machine(false, &[madt(&[&LAPIC_ON, &X2APIC_ON])]);
        let mut ram = Ram {
            base: 0,
            data: vec![0; 0x10_0000],
        };
        ram.put(0x1000, &tables.data);
        let low = rsdp(ROOT, false);
        // Nothing in the BIOS areas: an invalid hint is not enough.
        ram.put(0x1000, &[0; 20]);
        assert!(cpu_count(&&ram, Some(0x1000)).is_err());
        // In the BIOS area, on a 16-byte boundary, with or without a hint.
        ram.put(0xf_5a30, &low);
        assert_eq!(cpu_count(&&ram, None), Ok(2));
        assert_eq!(cpu_count(&&ram, Some(0x1000)), Ok(2));
        assert_eq!(cpu_count(&&ram, Some(u64::MAX)), Ok(2));
        // Not on a 16-byte boundary: not found.
        ram.put(0xf_5a30, &[0; 20]);
        ram.put(0xf_5a38, &low);
        assert!(cpu_count(&&ram, None).is_err());
        // In the first KiB of the EBDA (segment at 0x40e), which is
        // searched first; an EBDA segment outside 0x80000–0x9ffff is ignored.
        ram.put(0x9_fc10, &rsdp(ROOT, false));
        ram.put(0x40e, &0x9fc0u16.to_le_bytes());
        assert_eq!(cpu_count(&&ram, None), Ok(2));
        ram.put(0x40e, &0x5000u16.to_le_bytes());
        assert!(cpu_count(&&ram, None).is_err());
        // Memory that does not cover the BIOS area at all.
        assert!(cpu_count(&&tables, None).is_err());
    }

    #[test]
    fn srat_memory_affinity_gives_numa_nodes() {
        // Like QEMU's: domains 5 then 2, a disabled padding entry, a CPU.
        let ram = machine(
            true,
            &[
                madt(&[&LAPIC_ON]),
                srat(&[
                    &SRAT_CPU,
                    &srat_memory(5, 0, 0xa_0000, 1),
                    &srat_memory(5, MIB, 255 * MIB, 1),
                    &srat_memory(2, 256 * MIB, 256 * MIB, 3),
                    &srat_memory(9, 0, 0, 0),
                    &srat_memory(9, 2048 * MIB, 256 * MIB, 0),
                ]),
            ],
        );
        let nr = |start, end, node| NumaRange { start, end, node };
        let map = nodes(&ram).unwrap().unwrap();
        assert_eq!(
            map.ranges(),
            &[
                nr(0, 0xa_0000, 0),
                nr(MIB, 256 * MIB, 0),
                nr(256 * MIB, 512 * MIB, 1)
            ]
        );
        // No SRAT (only a MADT): one node, not an error.
        let ram = machine(false, &[madt(&[&LAPIC_ON])]);
        assert_eq!(nodes(&ram), Ok(None));
    }

    #[test]
    fn malformed_srat_is_refused() {
        let good = srat_memory(0, 0x10_0000, 0x10_0000, 1);
        let mut short = [0u8; 24];
        short.copy_from_slice(&good[..24]);
        short[1] = 24;
        let wraps = srat_memory(0, u64::MAX - 0xfff, 0x2000, 1);
        let bad: [&[u8]; 6] = [&[1, 0], &[0, 1], &[1, 200, 0, 0], &short, &wraps, &[1]];
        for b in bad {
            let ram = machine(false, &[srat(&[&good, b])]);
            assert!(nodes(&ram).is_err(), "{b:?}");
        }
        // Shorter than its header.
        let ram = machine(false, &[sdt(b"SRAT", SDT_HEADER_LEN, &[])]);
        assert_eq!(nodes(&ram), Err("SRAT shorter than its header"));
        // A bad checksum.
        let mut t = srat(&[&good]);
        t[9] ^= 1;
        let ram = machine(false, &[t]);
        assert_eq!(nodes(&ram), Err("SRAT has a bad checksum or length"));
        // Too many ranges for the NUMA map (alternating domains never merge).
        let many: Vec<[u8; SRAT_MEMORY_LEN]> = (0..20)
            .map(|i| srat_memory(i % 2, u64::from(i) * 0x2000, 0x1000, 1))
            .collect();
        let refs: Vec<&[u8]> = many.iter().map(|e| &e[..]).collect();
        let ram = machine(false, &[srat(&refs)]);
        assert_eq!(nodes(&ram), Err("SRAT memory ranges do not fit"));
    }

    /// An interrupt source override: ISA `irq` to `gsi` with `flags`.
    fn source_override(bus: u8, irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
        let mut e = [2, 10, bus, irq, 0, 0, 0, 0, 0, 0];
        e[4..8].copy_from_slice(&gsi.to_le_bytes());
        e[8..].copy_from_slice(&flags.to_le_bytes());
        e
    }

    /// A MADT with local APIC address `lapic` and `entries`.
    fn madt_with_lapic(lapic: u32, entries: &[&[u8]]) -> Vec<u8> {
        let mut t = madt(entries);
        t[36..40].copy_from_slice(&lapic.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    fn irq(entries: &[&[u8]]) -> Result<InterruptHw, &'static str> {
        let ram = machine(true, &[madt_with_lapic(0xfee0_0000, entries)]);
        interrupt_hw(&&ram, Some(RSDP))
    }

    const fn line(number: u32, level: bool, active_low: bool) -> Option<Line> {
        Some(Line {
            number,
            trigger: Trigger { level, active_low },
        })
    }

    #[test]
    fn madt_describes_interrupt_hardware() {
        // Like QEMU's: one I/O APIC, IRQ 0 → GSI 2, no override for IRQ 4.
        let irq0 = source_override(0, 0, 2, 0);
        let hw = irq(&[&LAPIC_ON, &IOAPIC, &irq0]).unwrap();
        let ioapic = IoApic {
            base: 0xfec0_0000,
            gsi_base: 0,
        };
        let ioapics = ArrayVec::from_iter([ioapic]);
        assert_eq!(
            hw.controller,
            Some(Controller::Apic {
                lapic: 0xfee0_0000,
                ioapics,
            })
        );
        assert_eq!((hw.timer, hw.uart), (None, line(4, false, false)));
        // A 64-bit local APIC override, a second I/O APIC, an override of
        // IRQ 4 (level, active low) after ones for other buses and IRQs.
        let mut lapic64 = [5, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        lapic64[4..].copy_from_slice(&0x1_fee0_0000u64.to_le_bytes());
        let mut io2 = IOAPIC;
        io2[4..12].copy_from_slice(&[0, 0x10, 0xc0, 0xfe, 24, 0, 0, 0]);
        let hw = irq(&[
            &IOAPIC,
            &source_override(1, 4, 7, 0),
            &source_override(0, 3, 8, 0),
            &source_override(0, 4, 20, 0b1111),
            &source_override(0, 4, 21, 0),
            &io2,
            &lapic64,
        ])
        .unwrap();
        let Some(Controller::Apic { lapic, ioapics }) = hw.controller else {
            panic!("{hw:?}");
        };
        assert_eq!(lapic, 0x1_fee0_0000);
        assert_eq!(
            ioapics[1],
            IoApic {
                base: 0xfec0_1000,
                gsi_base: 24
            }
        );
        assert_eq!(hw.uart, line(20, true, true));
        // Explicit edge / active high; a reserved polarity or trigger mode.
        let uart = |flags| irq(&[&source_override(0, 4, 4, flags)]).unwrap().uart;
        assert_eq!(uart(0b0101), line(4, false, false));
        assert_eq!(uart(0b1100), line(4, true, false));
        assert_eq!(uart(0b0010), None);
        assert_eq!(uart(0b1000), None);
        // Only the first four I/O APICs are kept.
        let hw = irq(&[&IOAPIC[..]; 6]).unwrap();
        assert!(
            matches!(hw.controller, Some(Controller::Apic { ioapics, .. }) if ioapics.len() == 4)
        );
    }

    #[test]
    fn malformed_madt_interrupt_entries_are_refused() {
        let short: [&[u8]; 3] = [
            &IOAPIC[..8],
            &[2, 8, 0, 4, 0, 0, 0, 0],
            &[5, 8, 0, 0, 0, 0, 0xe0, 0xfe],
        ];
        for e in short {
            let mut e = e.to_vec();
            e[1] = e.len() as u8;
            assert_eq!(irq(&[&LAPIC_ON, &e]), Err("MADT entry too short"), "{e:?}");
        }
        // An entry running past the table; a truncated entry header.
        assert_eq!(irq(&[&IOAPIC[..11]]), Err("MADT entry length invalid"));
        assert_eq!(irq(&[&[1]]), Err("MADT entry header runs past the table"));
        // A MADT too short for the local APIC address; no MADT.
        let ram = machine(false, &[sdt(b"APIC", SDT_HEADER_LEN, &[])]);
        assert_eq!(
            interrupt_hw(&&ram, Some(RSDP)),
            Err("MADT shorter than its header")
        );
        let ram = machine(false, &[srat(&[])]);
        assert_eq!(interrupt_hw(&&ram, Some(RSDP)), Err("no MADT"));
    }

    proptest! {
        /// Random bytes where the tables should be never panic the parser.
        #[test]
        fn random_memory_never_panics(
            data in prop::collection::vec(any::<u8>(), 0..0x300),
            hint in prop_oneof![Just(RSDP), any::<u64>()],
        ) {
            let mut ram = Ram { base: RSDP, data };
            if let Some(head) = ram.data.get_mut(..8) {
                head.copy_from_slice(b"RSD PTR ");
            }
            let _ = cpu_count(&&ram, Some(hint));
            let _ = numa_map(&&ram, Some(hint));
            let _ = interrupt_hw(&&ram, Some(hint));
        }

        /// MADT and SRAT bodies of random entries (with valid checksums, so
        /// the entry loops are reached) never panic, and never count more
        /// CPUs than entries fit in the table.
        #[test]
        fn random_entries_never_panic(
            madt_body in prop::collection::vec(any::<u8>(), 0..200),
            srat_body in prop::collection::vec(any::<u8>(), 0..400),
            xsdt in any::<bool>(),
        ) {
            let ram = machine(xsdt, &[madt(&[&madt_body]), srat(&[&srat_body])]);
            if let Ok(n) = cpus(&ram) {
                prop_assert!(n <= madt_body.len() / 2);
            }
            let _ = nodes(&ram);
            let _ = interrupt_hw(&&ram, Some(RSDP));
        }
    }
}

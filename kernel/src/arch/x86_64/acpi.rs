//! The CPU count and NUMA memory affinity from ACPI: find the RSDP (from
//! the boot loader, or by scanning the EBDA and the BIOS area
//! 0xE0000–0xFFFFF), follow the XSDT or RSDT to the MADT and count the
//! enabled processor Local APIC / x2APIC entries, and to the SRAT and read
//! its enabled memory affinity entries.
//!
//! The tables are firmware input and are treated as untrusted: every table
//! is checksummed and length-checked, every read goes through a
//! [`PhysReader`] that refuses ranges it does not cover, and loops are
//! bounded by table lengths that only ever shrink the remaining work. A
//! problem yields an `Err` describing it (the caller then assumes one CPU,
//! or one NUMA node).

use crate::bootinfo::PhysReader;
use crate::bootinfo::numa::{self, DomainNumbering, NumaMap, NumaRange};
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

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |sum, &x| sum.wrapping_add(x)) == 0
}

/// What [`cpu_count`] found at boot, over the boot direct map (the
/// firmware tables lie in reserved memory, which the kernel's own page
/// tables do not map).
pub static BOOT_CPU_COUNT: spin::Once<Result<usize, &'static str>> = spin::Once::new();

/// Counts the enabled CPUs the MADT describes. `rsdp` is the address of an
/// RSDP copy the boot loader handed over, if any; if it is absent or
/// invalid the BIOS areas are scanned.
pub fn cpu_count<'a>(mem: &impl PhysReader<'a>, rsdp: Option<u64>) -> Result<usize, &'static str> {
    let rsdp = rsdp_of(mem, rsdp)?;
    let madt =
        find_table(mem, rsdp, b"APIC", "MADT has a bad checksum or length")?.ok_or("no MADT")?;
    match count_enabled_cpus(madt)? {
        0 => Err("MADT lists no enabled CPU"),
        n => Ok(n),
    }
}

/// The NUMA node of each memory range the SRAT describes, or `Ok(None)`
/// when there is no SRAT (one node). `rsdp` as for [`cpu_count`].
pub fn numa_map<'a>(
    mem: &impl PhysReader<'a>,
    rsdp: Option<u64>,
) -> Result<Option<NumaMap>, &'static str> {
    let rsdp = rsdp_of(mem, rsdp)?;
    match find_table(mem, rsdp, b"SRAT", "SRAT has a bad checksum or length")? {
        Some(srat) => memory_affinity(srat).map(Some),
        None => Ok(None),
    }
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
    let (root, entry_len, root_signature) = match xsdt {
        Some(addr) => (addr, 8, b"XSDT"),
        None => (
            u32_at(rsdp, 16).map(u64::from).ok_or("RSDP too short")?,
            4,
            b"RSDT",
        ),
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
    if srat.len() < off {
        return Err("SRAT shorter than its header");
    }
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
        let base = u64_at(entry, 8).ok_or("SRAT base")?;
        let size = u64_at(entry, 16).ok_or("SRAT length")?;
        if flags & 1 == 0 || size == 0 {
            continue;
        }
        let end = base
            .checked_add(size)
            .ok_or("SRAT memory range wraps around")?;
        let node = domains.node(domain);
        ranges
            .try_push(NumaRange {
                start: base,
                end,
                node,
            })
            .map_err(|_| "SRAT has too many memory ranges")?;
    }
    NumaMap::build(ranges).map_err(|_| "SRAT memory ranges do not fit")
}

/// Counts enabled Processor Local APIC (type 0) and Local x2APIC (type 9)
/// entries.
fn count_enabled_cpus(madt: &[u8]) -> Result<usize, &'static str> {
    let mut count = 0;
    let mut off = MADT_ENTRIES_OFFSET;
    while off < madt.len() {
        let (Some(&ty), Some(&len)) = (madt.get(off), madt.get(off + 1)) else {
            return Err("MADT entry header runs past the table");
        };
        let len = usize::from(len);
        let Some(entry) = madt.get(off..off + len).filter(|_| len >= 2) else {
            return Err("MADT entry length invalid");
        };
        let flags = match ty {
            0 if len >= 8 => u32_at(entry, 4),
            9 if len >= 16 => u32_at(entry, 8),
            _ => None,
        };
        if flags.is_some_and(|f| f & 1 != 0) {
            count += 1;
        }
        off += len;
    }
    Ok(count)
}

/// Physical memory made of one byte buffer, for the tests below.
#[cfg(feature = "ktest")]
struct Buf<'a> {
    base: u64,
    data: &'a [u8],
}

#[cfg(feature = "ktest")]
impl<'a> PhysReader<'a> for Buf<'a> {
    fn bytes(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.data.get(start..end)
    }
}

/// Builds RSDP (at 0x1000) → RSDT (0x1100) → MADT (0x1200) with `entries`.
#[cfg(feature = "ktest")]
fn fake_tables(buf: &mut [u8; 0x800], entries: &[&[u8]]) {
    fake_table(buf, b"APIC", MADT_ENTRIES_OFFSET, entries);
}

/// Builds RSDP (at 0x1000) → RSDT (0x1100) → a table with `signature`
/// (0x1200) whose `entries` start at `entries_offset`.
#[cfg(feature = "ktest")]
fn fake_table(
    buf: &mut [u8; 0x800],
    signature: &[u8; 4],
    entries_offset: usize,
    entries: &[&[u8]],
) {
    fn fix_checksum(b: &mut [u8], at: usize) {
        b[at] = 0;
        let sum = b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        b[at] = 0u8.wrapping_sub(sum);
    }
    buf.fill(0);
    let rsdp = &mut buf[0..20];
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    rsdp[16..20].copy_from_slice(&0x1100u32.to_le_bytes());
    fix_checksum(rsdp, 8);
    let rsdt = &mut buf[0x100..0x100 + 40];
    rsdt[..4].copy_from_slice(b"RSDT");
    rsdt[4..8].copy_from_slice(&40u32.to_le_bytes());
    rsdt[36..40].copy_from_slice(&0x1200u32.to_le_bytes());
    fix_checksum(rsdt, 9);
    let mut len = entries_offset;
    for e in entries {
        buf[0x200 + len..0x200 + len + e.len()].copy_from_slice(e);
        len += e.len();
    }
    let t = &mut buf[0x200..0x200 + len];
    t[..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    fix_checksum(t, 9);
}

#[cfg(feature = "ktest")]
const LAPIC_ON: [u8; 8] = [0, 8, 0, 0, 1, 0, 0, 0];
#[cfg(feature = "ktest")]
const LAPIC_OFF: [u8; 8] = [0, 8, 1, 1, 0, 0, 0, 0];
#[cfg(feature = "ktest")]
const X2APIC_ON: [u8; 16] = [9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
#[cfg(feature = "ktest")]
const IOAPIC: [u8; 12] = [1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];

crate::ktest!(
    fn madt_counts_enabled_cpus() {
        let mut buf = [0u8; 0x800];
        fake_tables(
            &mut buf,
            &[&LAPIC_ON, &IOAPIC, &LAPIC_OFF, &X2APIC_ON, &LAPIC_ON],
        );
        let mem = Buf {
            base: 0x1000,
            data: &buf,
        };
        kassert_eq!(cpu_count(&mem, Some(0x1000)), Ok(3));
        Ok(())
    }
);

crate::ktest!(
    fn madt_malformed_is_an_error() {
        let mut buf = [0u8; 0x800];
        let mem_of = |buf: &[u8; 0x800]| -> Result<usize, &'static str> {
            cpu_count(
                &Buf {
                    base: 0x1000,
                    data: buf,
                },
                Some(0x1000),
            )
        };
        // An entry of length 0 (would loop forever if trusted) and 1.
        for bad in [[0u8, 0], [0, 1]] {
            fake_tables(&mut buf, &[&LAPIC_ON, &bad]);
            kassert!(mem_of(&buf).is_err());
        }
        // An entry running past the table.
        fake_tables(&mut buf, &[&LAPIC_ON, &[0, 40, 0, 0, 1, 0, 0, 0]]);
        kassert!(mem_of(&buf).is_err());
        // No enabled CPU.
        fake_tables(&mut buf, &[&LAPIC_OFF]);
        kassert!(mem_of(&buf).is_err());
        // Bad checksums, bad signature, absurd length.
        fake_tables(&mut buf, &[&LAPIC_ON]);
        buf[0x200 + 9] ^= 1;
        kassert!(mem_of(&buf).is_err());
        fake_tables(&mut buf, &[&LAPIC_ON]);
        buf[0] = b'X';
        kassert!(mem_of(&buf).is_err());
        fake_tables(&mut buf, &[&LAPIC_ON]);
        buf[0x100 + 4..0x100 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        kassert!(mem_of(&buf).is_err());
        // Pointer outside the readable range.
        fake_tables(&mut buf, &[&LAPIC_ON]);
        kassert!(
            cpu_count(
                &Buf {
                    base: 0x1000,
                    data: &buf
                },
                Some(0x5000)
            )
            .is_err()
        );
        Ok(())
    }
);

crate::ktest!(
    fn machine_reports_at_least_one_cpu() {
        let n = BOOT_CPU_COUNT.get();
        kassert!(matches!(n, Some(Ok(1..))), "{:?}", n);
        Ok(())
    }
);

/// An SRAT memory affinity structure.
#[cfg(feature = "ktest")]
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

/// An SRAT processor local APIC affinity structure (domain 1).
#[cfg(feature = "ktest")]
const SRAT_CPU: [u8; 16] = [0, 16, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[cfg(feature = "ktest")]
fn srat_of(buf: &[u8; 0x800]) -> Result<Option<NumaMap>, &'static str> {
    numa_map(
        &Buf {
            base: 0x1000,
            data: buf,
        },
        Some(0x1000),
    )
}

crate::ktest!(
    fn srat_memory_affinity_gives_numa_nodes() {
        const MIB: u64 = 1 << 20;
        let mut buf = [0u8; 0x800];
        // Like QEMU's: domains 5 then 2, a disabled padding entry, a CPU.
        fake_table(
            &mut buf,
            b"SRAT",
            SRAT_ENTRIES_OFFSET,
            &[
                &SRAT_CPU,
                &srat_memory(5, 0, 0xa_0000, 1),
                &srat_memory(5, MIB, 255 * MIB, 1),
                &srat_memory(2, 256 * MIB, 256 * MIB, 3),
                &srat_memory(9, 0, 0, 0),
                &srat_memory(9, 2048 * MIB, 256 * MIB, 0),
            ],
        );
        let map = srat_of(&buf);
        let nr = |start, end, node| NumaRange { start, end, node };
        kassert_eq!(
            map.as_ref().map(|m| m.as_ref().map(NumaMap::ranges)),
            Ok(Some(
                &[
                    nr(0, 0xa_0000, 0),
                    nr(MIB, 256 * MIB, 0),
                    nr(256 * MIB, 512 * MIB, 1)
                ][..]
            ))
        );
        // No SRAT (only a MADT): one node, not an error.
        fake_tables(&mut buf, &[&LAPIC_ON]);
        kassert_eq!(srat_of(&buf), Ok(None));
        Ok(())
    }
);

crate::ktest!(
    fn srat_malformed_is_an_error() {
        let mut buf = [0u8; 0x800];
        let good = srat_memory(0, 0x10_0000, 0x10_0000, 1);
        let mut short = [0u8; 24];
        short.copy_from_slice(&good[..24]);
        short[1] = 24;
        let wraps = srat_memory(0, u64::MAX - 0xfff, 0x2000, 1);
        let bad: [&[u8]; 5] = [&[1, 0], &[0, 1], &[1, 200, 0, 0], &short, &wraps];
        for b in bad {
            fake_table(&mut buf, b"SRAT", SRAT_ENTRIES_OFFSET, &[&good, b]);
            kassert!(srat_of(&buf).is_err(), "{:?}", b);
        }
        // Shorter than its header.
        fake_table(&mut buf, b"SRAT", SDT_HEADER_LEN, &[]);
        kassert!(srat_of(&buf).is_err());
        // A bad checksum.
        fake_table(&mut buf, b"SRAT", SRAT_ENTRIES_OFFSET, &[&good]);
        buf[0x200 + 9] ^= 1;
        kassert_eq!(srat_of(&buf), Err("SRAT has a bad checksum or length"));
        // Too many ranges for the NUMA map (alternating domains never merge).
        let many: [[u8; SRAT_MEMORY_LEN]; 20] =
            core::array::from_fn(|i| srat_memory(i as u32 % 2, i as u64 * 0x2000, 0x1000, 1));
        let refs: [&[u8]; 20] = core::array::from_fn(|i| &many[i][..]);
        let mut big = [0u8; 0x800];
        fake_table(&mut big, b"SRAT", SRAT_ENTRIES_OFFSET, &refs);
        kassert!(srat_of(&big).is_err());
        Ok(())
    }
);

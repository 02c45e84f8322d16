//! The CPU count, NUMA map and interrupt hardware from ACPI at boot: reads
//! the tables through the boot direct map (they lie in reserved memory,
//! which the kernel's own page tables do not map) with the portable,
//! host-tested parser in [`crate::bootinfo::acpi`], and falls back to one
//! CPU, one NUMA node or no interrupt information, with a warning, when the
//! tables are missing or malformed.

use crate::bootinfo::{InterruptHw, NumaMap, PhysReader, acpi};

/// What [`acpi::cpu_count`] found at boot.
pub static BOOT_CPU_COUNT: spin::Once<Result<usize, &'static str>> = spin::Once::new();

/// The CPU count (at least 1) and NUMA map the ACPI tables describe.
/// `rsdp` is the RSDP copy the boot loader handed over, if any.
pub fn topology<'a>(mem: &impl PhysReader<'a>, rsdp: Option<u64>) -> (usize, NumaMap) {
    let cpu_count = match *BOOT_CPU_COUNT.call_once(|| acpi::cpu_count(mem, rsdp)) {
        Ok(n) => n,
        Err(why) => {
            log::warn!("ACPI: {why}; assuming 1 CPU");
            1
        }
    };
    let numa = match acpi::numa_map(mem, rsdp) {
        Ok(map) => map.unwrap_or_default(),
        Err(why) => {
            log::warn!("ACPI SRAT ignored: {why}; assuming one NUMA node");
            NumaMap::default()
        }
    };
    (cpu_count, numa)
}

/// The interrupt hardware the MADT describes (nothing, with a warning, if
/// it is missing or malformed). `rsdp` as for [`topology`].
pub fn interrupt_hw<'a>(mem: &impl PhysReader<'a>, rsdp: Option<u64>) -> InterruptHw {
    acpi::interrupt_hw(mem, rsdp).unwrap_or_else(|why| {
        log::warn!("ACPI MADT interrupt information ignored: {why}");
        InterruptHw::default()
    })
}

crate::ktest!(
    fn machine_reports_at_least_one_cpu() {
        let n = BOOT_CPU_COUNT.get();
        kassert!(matches!(n, Some(Ok(1..))), "{:?}", n);
        Ok(())
    }
);

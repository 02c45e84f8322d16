//! The CPUs, NUMA map and interrupt hardware from ACPI at boot: reads the
//! tables through the boot direct map (they lie in reserved memory, which
//! the kernel's own page tables do not map) with the portable, host-tested
//! parser in [`crate::bootinfo::acpi`], and falls back to one CPU (with no
//! ids listed), one NUMA node or no interrupt information, with a warning,
//! when the tables are missing or malformed.

use crate::bootinfo::{InterruptHw, NumaMap, PhysReader, acpi};

/// What [`acpi::cpus`] found at boot.
pub static BOOT_CPUS: spin::Once<Result<acpi::Cpus, &'static str>> = spin::Once::new();

/// The CPU count (at least 1), the CPUs' APIC ids and the NUMA map the
/// ACPI tables describe. `rsdp` is the RSDP copy the boot loader handed
/// over, if any.
pub fn topology<'a>(mem: &impl PhysReader<'a>, rsdp: Option<u64>) -> (acpi::Cpus, NumaMap) {
    let cpus = BOOT_CPUS.call_once(|| acpi::cpus(mem, rsdp));
    let cpus = cpus.clone().unwrap_or_else(|why| {
        log::warn!("ACPI: {why}; assuming 1 CPU");
        (1, Default::default())
    });
    let numa = acpi::numa_map(mem, rsdp).unwrap_or_else(|why| {
        log::warn!("ACPI SRAT ignored: {why}; assuming one NUMA node");
        None
    });
    (cpus, numa.unwrap_or_default())
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
        let cpus = BOOT_CPUS.get();
        let ok = matches!(cpus, Some(Ok((n @ 1.., ids))) if ids.len() == (*n).min(ids.capacity()));
        kassert!(ok, "{:?}", cpus);
        Ok(())
    }
);

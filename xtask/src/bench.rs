//! `cargo xtask bench`: boots each architecture's benchmark kernel, with
//! the root task as boot module (it runs the user-mode benchmarks), under
//! QEMU `-icount shift=0,sleep=off`, where the cycle counter advances once
//! per guest instruction, and reports instructions per operation as a table
//! and as `target/bench/<arch>.json`.

use crate::arch::Arch;
use crate::qemu::{self, Boot};
use crate::toolchain::{self, Flavor};
use anyhow::{Result, bail};
use keel_abi::harness::{BENCH_NOTE_PREFIX, BENCH_PREFIX, EXIT_PASS};
use serde_json::json;
use std::time::Duration;

/// Guest memory of the benchmark runs: the scale run keeps 10,000
/// processes alive at once in it (the 1 GiB).
const BENCH_MEMORY: &str = "1G";

struct Row {
    name: String,
    median: f64,
    min: f64,
    iters: u64,
    batches: u64,
}

/// Parses `bench <name> median=<x> min=<y> iters=<n> batches=<b>`.
fn parse_line(line: &str) -> Option<Row> {
    let rest = line.strip_prefix(BENCH_PREFIX)?;
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let mut row = Row {
        name,
        median: f64::NAN,
        min: f64::NAN,
        iters: 0,
        batches: 0,
    };
    for w in words {
        let (k, v) = w.split_once('=')?;
        match k {
            "median" => row.median = v.parse().ok()?,
            "min" => row.min = v.parse().ok()?,
            "iters" => row.iters = v.parse().ok()?,
            "batches" => row.batches = v.parse().ok()?,
            _ => {}
        }
    }
    (!row.median.is_nan() && !row.min.is_nan()).then_some(row)
}

pub fn run(arches: &[Arch]) -> Result<()> {
    let out_dir = toolchain::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut failed = Vec::new();
    for &arch in arches {
        let image = toolchain::build_kernel(arch, Flavor::Bench, true)?;
        let root = toolchain::build_root_task(arch)?;
        let boot = Boot {
            icount: true,
            ..Boot::headless(arch, &image, 1, BENCH_MEMORY, "").with_initrd(Some(&root))
        };
        let start = std::time::Instant::now();
        let outcome = qemu::run_captured(&boot, Duration::from_secs(600), false)?;
        let wall = start.elapsed();
        let rows: Vec<Row> = outcome.lines.iter().filter_map(|l| parse_line(l)).collect();
        let notes: Vec<&str> = outcome
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix(BENCH_NOTE_PREFIX))
            .collect();
        if outcome.status != Some(EXIT_PASS) || rows.is_empty() {
            for l in &outcome.lines {
                println!("{l}");
            }
            failed.push(arch.name());
            continue;
        }
        println!(
            "\n{} — guest instructions per operation (QEMU TCG -icount shift=0), boot+run {:.1}s wall",
            arch.name(),
            wall.as_secs_f64()
        );
        println!(
            "{:<52} {:>12} {:>12} {:>8}",
            "benchmark", "median", "min", "iters"
        );
        for r in &rows {
            println!(
                "{:<52} {:>12.1} {:>12.1} {:>8}",
                r.name, r.median, r.min, r.iters
            );
        }
        for n in &notes {
            println!("{n}");
        }
        // Several CPUs: -icount runs them in turn on one clock, so these
        // rows are multi-threaded TCG wall time.
        let smp = Boot::headless(arch, &image, 4, BENCH_MEMORY, "").with_initrd(Some(&root));
        let outcome = qemu::run_captured(&smp, Duration::from_secs(600), false)?;
        let smp_rows: Vec<Row> = outcome.lines.iter().filter_map(|l| parse_line(l)).collect();
        if outcome.status != Some(EXIT_PASS) || smp_rows.is_empty() {
            for l in &outcome.lines {
                println!("{l}");
            }
            failed.push(arch.name());
        }
        println!(
            "\n{} -smp 4 — TCG wall-clock ns per operation (multi-threaded TCG, no -icount)",
            arch.name()
        );
        for r in &smp_rows {
            println!(
                "{:<52} {:>12.1} {:>12.1} {:>8}",
                r.name, r.median, r.min, r.iters
            );
        }
        let table = |rows: &[Row]| {
            rows.iter()
                .map(|r| {
                    json!({
                        "name": r.name, "median": r.median, "min": r.min,
                        "iters": r.iters, "batches": r.batches,
                    })
                })
                .collect::<Vec<_>>()
        };
        let doc = json!({
            "arch": arch.name(),
            "unit": "guest instructions per operation",
            "method": "QEMU TCG -icount shift=0,sleep=off; median and min over batches",
            "qemu_args": format!("{:?}", boot.command()),
            "benchmarks": table(&rows),
            "notes": notes,
            "smp": {
                "unit": "TCG wall-clock ns per operation",
                "method": "QEMU multi-threaded TCG, -smp 4, no -icount; median and min over batches",
                "qemu_args": format!("{:?}", smp.command()),
                "benchmarks": table(&smp_rows),
            },
        });
        let path = out_dir.join(format!("{}.json", arch.name()));
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        println!("wrote {}", path.display());
    }
    if !failed.is_empty() {
        bail!("benchmark run failed on {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bench_lines() {
        let r = parse_line("bench kernel::bench::empty median=4.0 min=3.9 iters=1000 batches=15")
            .unwrap();
        assert_eq!(r.name, "kernel::bench::empty");
        assert_eq!((r.median, r.min, r.iters, r.batches), (4.0, 3.9, 1000, 15));
        assert!(parse_line("bench x median=abc min=1").is_none());
        assert!(parse_line("test x ... ok").is_none());
    }
}

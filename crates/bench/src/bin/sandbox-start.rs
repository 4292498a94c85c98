//! How long starting a sandbox server takes, per PostgreSQL version: cold (running
//! `initdb` and building the version's template, the baseline) and warm (copying the
//! cached template), side by side.
//!
//! Usage: `cargo run --release -p pgkill-bench --bin sandbox-start [WARM_RUNS]`

use std::time::Duration;

use anyhow::Context;
use pgkill_bench::{median, ms};
use pgkill_sandbox::{Installation, Options, Sandbox};

fn main() -> anyhow::Result<()> {
    let warm_runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("WARM_RUNS must be a whole number")?,
        None => 5,
    };
    let versions = Installation::discover();
    anyhow::ensure!(
        !versions.is_empty(),
        "no PostgreSQL found: run scripts/fetch-postgres"
    );
    // A private template cache, so that the first start of each version is really cold.
    let cache = tempfile::tempdir()?;
    std::env::set_var("PGKILL_SANDBOX_CACHE", cache.path());

    println!("sandbox start time (ms), {warm_runs} warm runs each");
    println!(
        "{:<8} {:>11} {:>12} {:>12} {:>9} {:>10} {:>10} {:>9}",
        "version",
        "cold total",
        "cold initdb",
        "warm median",
        "warm min",
        "warm copy",
        "warm start",
        "speed-up"
    );
    for inst in &versions {
        let cold = Sandbox::start(inst, &Options::default())?;
        let cold_timing = cold.timing();
        drop(cold);
        let mut warm: Vec<Duration> = Vec::with_capacity(warm_runs);
        let (mut copy, mut start) = (Vec::new(), Vec::new());
        for _ in 0..warm_runs {
            let sb = Sandbox::start(inst, &Options::default())?;
            anyhow::ensure!(sb.timing().template_build.is_none(), "template was rebuilt");
            warm.push(sb.timing().total);
            copy.push(sb.timing().copy);
            start.push(sb.timing().start);
        }
        let min = warm.iter().min().copied().unwrap_or_default();
        let med = median(&mut warm);
        println!(
            "{:<8} {:>11} {:>12} {:>12} {:>9} {:>10} {:>10} {:>8.1}x",
            inst.version.to_string(),
            ms(cold_timing.total),
            ms(cold_timing.template_build.unwrap_or_default()),
            ms(med),
            ms(min),
            ms(median(&mut copy)),
            ms(median(&mut start)),
            cold_timing.total.as_secs_f64() / med.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

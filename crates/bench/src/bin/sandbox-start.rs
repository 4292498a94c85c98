//! How long starting a sandbox server takes, per PostgreSQL version: cold (running
//! `initdb` and building the version's template, the baseline) and warm (copying the
//! cached template), side by side, with the parts of a warm start: copying, starting
//! `postgres` until it is ready, and giving the roles their passwords; and how long until
//! a first query has run (start, then an admin connection and `SELECT 1`), which is what
//! every user of a sandbox waits for (the server's first connection also builds its
//! relation-cache files, whichever connection that is).
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
        "{:<8} {:>11} {:>12} {:>12} {:>9} {:>10} {:>10} {:>10} {:>9} {:>10}",
        "version",
        "cold total",
        "cold initdb",
        "warm median",
        "warm min",
        "warm copy",
        "warm start",
        "warm pw",
        "speed-up",
        "1st query"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for inst in &versions {
        let cold = Sandbox::start(inst, &Options::default())?;
        let cold_timing = cold.timing();
        drop(cold);
        let mut warm: Vec<Duration> = Vec::with_capacity(warm_runs);
        let (mut copy, mut start, mut passwords) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..warm_runs {
            let sb = Sandbox::start(inst, &Options::default())?;
            anyhow::ensure!(sb.timing().template_build.is_none(), "template was rebuilt");
            warm.push(sb.timing().total);
            copy.push(sb.timing().copy);
            start.push(sb.timing().start);
            passwords.push(sb.timing().passwords);
        }
        // Start until a first query has run, separately (connecting would change the above).
        let mut first_query = Vec::with_capacity(warm_runs);
        for _ in 0..warm_runs {
            let began = std::time::Instant::now();
            let sb = Sandbox::start(inst, &Options::default())?;
            runtime.block_on(async {
                let admin = sb.admin("postgres").await?;
                admin.simple_query("SELECT 1").await?;
                anyhow::Ok(())
            })?;
            first_query.push(began.elapsed());
        }
        let min = warm.iter().min().copied().unwrap_or_default();
        let med = median(&mut warm);
        println!(
            "{:<8} {:>11} {:>12} {:>12} {:>9} {:>10} {:>10} {:>10} {:>8.1}x {:>10}",
            inst.version.to_string(),
            ms(cold_timing.total),
            ms(cold_timing.template_build.unwrap_or_default()),
            ms(med),
            ms(min),
            ms(median(&mut copy)),
            ms(median(&mut start)),
            ms(median(&mut passwords)),
            cold_timing.total.as_secs_f64() / med.as_secs_f64().max(1e-9),
            ms(median(&mut first_query))
        );
    }
    Ok(())
}

//! `pgkill watch` reaction latency (issue 13), side by side in one run on one sandbox
//! server with PostgreSQL's own `idle_in_transaction_session_timeout` for the same
//! threshold (the floor): sessions open a transaction and go idle; the figure is the
//! time from crossing the threshold (BEGIN answered + threshold) until the session saw
//! its end. The sessions start spread over one interval, so every phase of the
//! daemon's period is sampled. Goal: p99 of watch ≤ p99 of the server + interval + 100 ms.
//!
//! ```sh
//! cargo build --release -p pgkill
//! cargo run --release -p pgkill-bench --bin watch-latency [-- --sessions 40 --threshold-ms 1000 --interval-ms 1000]
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};
use tokio::task::JoinSet;

const DB: &str = "bench";
const SERVER_ROLE: &str = "bench_server_timeout";
const WATCH_ROLE: &str = "bench_watch";
const SLACK: Duration = Duration::from_millis(100);

/// Reaction latency of `pgkill watch` against the server's own timeout.
#[derive(Debug, clap::Parser)]
#[command(name = "watch-latency")]
struct Args {
    /// Sessions per side.
    #[arg(long, default_value_t = 40)]
    sessions: usize,
    /// The idle-in-transaction threshold, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    threshold_ms: u64,
    /// The daemon's interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// PostgreSQL major version (default: the newest installed).
    #[arg(long, value_name = "MAJOR")]
    pg_version: Option<u32>,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i.min(samples.len() - 1)]
}

/// Opens `n` idle transactions as `role`, spread over `spread`, and returns how long
/// after `threshold` each one ended.
async fn latencies(
    sb: &Sandbox,
    role: &str,
    n: usize,
    threshold: Duration,
    spread: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut set = JoinSet::new();
    for i in 0..n {
        let config = sb.config(DB, role);
        let delay = spread.mul_f64(i as f64 / n as f64);
        set.spawn(async move {
            tokio::time::sleep(delay).await;
            let s = sim::idle_in_transaction(&config, None).await?;
            let crossed = Instant::now() + threshold;
            let ended = s.wait_ended(threshold + Duration::from_secs(30)).await;
            anyhow::ensure!(ended.is_some(), "a session as {} was never ended", s.pid());
            Ok::<_, anyhow::Error>(Instant::now().saturating_duration_since(crossed))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    if let Some(code) = pgkill_bench::launcher_main() {
        std::process::exit(code);
    }
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    let threshold = Duration::from_millis(args.threshold_ms);
    let interval = Duration::from_millis(args.interval_ms);
    let pgkill = pgkill_bench::find_pgkill(args.pgkill.as_deref())?;
    let inst = match args.pg_version {
        Some(major) => Installation::for_major(major)?,
        None => Installation::newest()?,
    };
    sim::raise_fd_limit();
    let max = u32::try_from(args.sessions * 2 + 50)
        .unwrap_or(u32::MAX)
        .max(100);
    let sb = Sandbox::start(&inst, &Options::default().max_connections(max))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        sb.create_database(DB, None).await?;
        sb.create_role(SERVER_ROLE, "LOGIN").await?;
        sb.create_role(WATCH_ROLE, "LOGIN").await?;
        let admin = sb.admin("postgres").await?;
        admin
            .batch_execute(&format!(
                "ALTER ROLE {SERVER_ROLE} SET idle_in_transaction_session_timeout = '{}ms'",
                args.threshold_ms
            ))
            .await?;
        anyhow::Ok(())
    })?;
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "interval = \"{}ms\"\n[[rule]]\nname = \"idle-in-transaction\"\naction = \"terminate\"\nmatch = {{ db = \"{DB}\", user = \"{WATCH_ROLE}\", state = \"idle-in-transaction\", idle_for = \"{}ms\" }}\n",
            args.interval_ms, args.threshold_ms
        ),
    )?;
    let mut daemon = Command::new(&pgkill)
        .env("PGPASSFILE", sb.passfile())
        .args([
            "-h",
            sb.host(),
            "-p",
            &sb.port().to_string(),
            "-U",
            roles::ADMIN,
        ])
        .args(["watch", "--policy"])
        .arg(&policy)
        .arg("--audit")
        .arg(dir.path().join("audit.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgkill watch")?;
    let result = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (server, watch) = tokio::join!(
            latencies(&sb, SERVER_ROLE, args.sessions, threshold, interval),
            latencies(&sb, WATCH_ROLE, args.sessions, threshold, interval),
        );
        anyhow::Ok((server?, watch?))
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let (mut server, mut watch) = result?;
    println!(
        "watch-latency: PostgreSQL {}, {} sessions per side, threshold {} ms, interval {} ms",
        sb.version(),
        args.sessions,
        args.threshold_ms,
        args.interval_ms
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "time from threshold to ended (ms)", "p50", "p99", "max"
    );
    let row = |name: &str, s: &mut Vec<Duration>| {
        let (p50, p99, max) = (percentile(s, 0.5), percentile(s, 0.99), percentile(s, 1.0));
        println!(
            "{:<44} {:>9} {:>9} {:>9}",
            name,
            pgkill_bench::ms(p50),
            pgkill_bench::ms(p99),
            pgkill_bench::ms(max)
        );
        p99
    };
    let floor = row("idle_in_transaction_session_timeout (floor)", &mut server);
    let ours = row("pgkill watch", &mut watch);
    let goal = floor + interval + SLACK;
    println!(
        "goal: watch p99 <= floor p99 + interval + 100 ms = {} ms: {}",
        pgkill_bench::ms(goal),
        if ours <= goal { "met" } else { "NOT met" }
    );
    Ok(())
}

//! `pgkill top` against pg_activity with 1,000 real client sessions (issue 5), side by
//! side in one run on one sandbox server, each tool refreshing every second for the same
//! time in its own detached tmux session (200x50), one after the other:
//!
//! - client CPU time: utime + stime of the tool's process and its descendants (plus the
//!   children it already reaped), from `/proc/PID/stat`, sampled just before quitting;
//! - peak RSS: `VmHWM` of the tool's process (and the largest of its descendants), from
//!   `/proc/PID/status`, sampled just before quitting;
//! - server time per refresh: from `pg_stat_statements` (reset before each tool), the sum
//!   of `total_exec_time` (`total_time` on ≤ 12) of every statement the tool ran (role
//!   `postgres`; the benchmark's own queries run as another role), divided by the number
//!   of refreshes (the calls of the tool's most-called statement on `pg_stat_activity`).
//!
//! Sessions (in database `bench`, role `sandbox_plain`): every tenth idle in transaction,
//! one in 200 active (`pg_sleep` for longer than the run), the others idle.
//!
//! Usage (pgkill's release binary first; it is looked for beside this one; pg_activity is
//! installed with pip when `pg_activity --version` fails, or install it yourself with
//! `python3 -m pip install pg_activity 'psycopg[binary]'`; tmux must be installed):
//!
//! ```sh
//! cargo build --release -p pgkill
//! cargo run --release -p pgkill-bench --bin top-vs-pg-activity [-- --sessions 1000 --seconds 60 --pg-version 15]
//! ```

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};

const DB: &str = "bench";
/// Every tenth session holds an open transaction.
const IN_TRANSACTION_EVERY: usize = 10;
/// One session in this many runs `pg_sleep`.
const ACTIVE_EVERY: usize = 200;
const CPU_RATIO_TARGET: f64 = 0.2;
const RSS_TARGET_MB: f64 = 25.0;
const POLL_LIMIT: Duration = Duration::from_secs(60);

const CLIENTS: &str = "SELECT count(*) FROM pg_stat_activity \
WHERE datname = 'bench' AND backend_type = 'client backend'";

/// pgkill top and pg_activity side by side on 1,000 sessions: client CPU, peak RSS and
/// server time per refresh. pg_activity is installed with
/// `python3 -m pip install --quiet pg_activity 'psycopg[binary]'` when missing.
#[derive(Debug, clap::Parser)]
#[command(name = "top-vs-pg-activity")]
struct Args {
    /// Client sessions to open.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// How long each tool runs (refreshing every second).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// PostgreSQL major version (default: the newest installed).
    #[arg(long, value_name = "MAJOR")]
    pg_version: Option<u32>,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
    /// The pg_activity program.
    #[arg(long, value_name = "PATH")]
    pg_activity: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    use clap::Parser;
    let args = Args::parse();
    anyhow::ensure!(
        args.sessions > 0 && args.seconds > 0,
        "--sessions and --seconds must be at least 1"
    );
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let pgkill = pgkill_bench::find_pgkill(args.pgkill.as_deref())?;
    let pg_activity = find_pg_activity(args.pg_activity.clone())?;
    let pg_activity_version = version_of(&pg_activity)?;
    anyhow::ensure!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux not found: install it (e.g. apt-get install tmux)"
    );
    let inst = match args.pg_version {
        Some(major) => Installation::for_major(major)?,
        None => Installation::newest()?,
    };

    sim::raise_fd_limit();
    let max_connections = u32::try_from(args.sessions + 200)
        .unwrap_or(u32::MAX)
        .max(1200);
    let options = Options::default()
        .max_connections(max_connections)
        .setting("shared_preload_libraries", "pg_stat_statements")
        .setting("pg_stat_statements.track", "all");
    let sandbox = Sandbox::start(&inst, &options)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = run(
        &sandbox,
        &rt,
        &args,
        &pgkill,
        &pg_activity,
        &pg_activity_version,
    );
    drop(rt);
    drop(sandbox);
    result
}

/// pg_activity: `--pg-activity`, else `pg_activity` on `PATH`, installed with pip first
/// when `pg_activity --version` fails.
fn find_pg_activity(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let program = PathBuf::from("pg_activity");
    if version_of(&program).is_ok() {
        return Ok(program);
    }
    eprintln!(
        "pg_activity not found: python3 -m pip install --quiet pg_activity 'psycopg[binary]'"
    );
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "pg_activity",
            "psycopg[binary]",
        ])
        .status()
        .context("running python3 -m pip")?;
    anyhow::ensure!(status.success(), "installing pg_activity failed ({status})");
    version_of(&program).context("pg_activity still does not run after pip install")?;
    Ok(program)
}

fn version_of(program: &std::path::Path) -> anyhow::Result<String> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", program.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} --version failed",
        program.display()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What one tool's run produced.
struct Figures {
    cpu: Duration,
    rss_kib: u64,
    refreshes: i64,
    server_ms: f64,
    statements: Vec<(i64, f64, String)>,
}

impl Figures {
    fn server_ms_per_refresh(&self) -> f64 {
        self.server_ms / (self.refreshes.max(1) as f64)
    }
    fn rss_mb(&self) -> f64 {
        self.rss_kib as f64 * 1024.0 / 1e6
    }
}

fn run(
    sandbox: &Sandbox,
    rt: &tokio::runtime::Runtime,
    args: &Args,
    pgkill: &std::path::Path,
    pg_activity: &std::path::Path,
    pg_activity_version: &str,
) -> anyhow::Result<()> {
    let n = args.sessions;
    // The benchmark's own connection: another superuser, so that the tools' statements
    // (role `postgres`) can be told apart in pg_stat_statements.
    let own = pgkill_bench::with_stat_statements(rt, sandbox, DB)?;

    let began = Instant::now();
    let sessions = open_sessions(sandbox, rt, &own, n, args.seconds)?;
    let setup = began.elapsed();

    let port = sandbox.port().to_string();
    let host = sandbox.host();
    let mut problems = Vec::new();
    // Both log in with the sandbox's password file.
    let passfile = pgkill_bench::tmux::shell_quote(&sandbox.passfile().to_string_lossy());
    let pgkill_cmd = format!(
        "exec env PGPASSFILE={passfile} {} -h {host} -p {port} -U {} top -i 1s",
        pgkill_bench::tmux::shell_quote(&pgkill.to_string_lossy()),
        roles::ADMIN
    );
    let pg_activity_cmd = format!(
        "exec env PGPASSFILE={passfile} {} -h {host} -p {port} -U {} -d postgres --refresh 1",
        pgkill_bench::tmux::shell_quote(&pg_activity.to_string_lossy()),
        roles::ADMIN
    );
    let a = run_tool(rt, &own, "pgkill", &pgkill_cmd, args.seconds, &mut problems)?;
    let b = run_tool(
        rt,
        &own,
        "pg_activity",
        &pg_activity_cmd,
        args.seconds,
        &mut problems,
    )?;
    let still = count_clients(rt, &own)?;
    if still != n as i64 {
        problems.push(format!(
            "{still} client sessions in {DB} at the end, expected {n}"
        ));
    }
    drop(sessions);

    println!(
        "top-vs-pg-activity: PostgreSQL {} · {n} client sessions in database {DB} ({} idle in transaction, {} active, the rest idle; opened in {:.1} s) · refresh 1 s for {} s each, tmux 200x50",
        sandbox.version(),
        n / IN_TRANSACTION_EVERY,
        n.div_ceil(ACTIVE_EVERY),
        setup.as_secs_f64(),
        args.seconds,
    );
    println!(
        "pgkill: {} · pg_activity: {} ({pg_activity_version})",
        pgkill.display(),
        pg_activity.display()
    );
    println!("| figure | pgkill top | pg_activity | ratio | target | |");
    println!("|---|---:|---:|---:|---|---|");
    let cpu_ratio = a.cpu.as_secs_f64() / b.cpu.as_secs_f64().max(1e-9);
    row(
        &format!("client CPU time (user+sys, {} s)", args.seconds),
        &format!("{:.2} s", a.cpu.as_secs_f64()),
        &format!("{:.2} s", b.cpu.as_secs_f64()),
        cpu_ratio,
        &format!("< {CPU_RATIO_TARGET}x pg_activity"),
        Some(cpu_ratio < CPU_RATIO_TARGET),
    );
    row(
        "peak RSS (VmHWM)",
        &format!("{:.1} MB", a.rss_mb()),
        &format!("{:.1} MB", b.rss_mb()),
        a.rss_mb() / b.rss_mb().max(1e-9),
        &format!("pgkill < {RSS_TARGET_MB:.0} MB"),
        Some(a.rss_mb() < RSS_TARGET_MB),
    );
    let (sa, sb) = (a.server_ms_per_refresh(), b.server_ms_per_refresh());
    row(
        "server time per refresh (pg_stat_statements)",
        &format!("{sa:.2} ms"),
        &format!("{sb:.2} ms"),
        sa / sb.max(1e-9),
        "≤ pg_activity",
        Some(sa <= sb),
    );
    row(
        "refreshes (calls of the activity query)",
        &a.refreshes.to_string(),
        &b.refreshes.to_string(),
        a.refreshes as f64 / (b.refreshes.max(1) as f64),
        "(for reference)",
        None,
    );
    row(
        "server time, all statements",
        &format!("{:.1} ms", a.server_ms),
        &format!("{:.1} ms", b.server_ms),
        a.server_ms / b.server_ms.max(1e-9),
        "(for reference)",
        None,
    );
    println!("(MB = 10^6 bytes; server time = total_exec_time, planning not tracked)");
    for (tool, f) in [("pgkill top", &a), ("pg_activity", &b)] {
        println!("{tool} statements (calls, total ms, query):");
        for (calls, ms, query) in f.statements.iter().take(8) {
            println!("  {calls:>6} {ms:>10.1}  {query}");
        }
    }
    pgkill_bench::end(&problems, "problem(s) during the run")
}

fn row(name: &str, a: &str, b: &str, ratio: f64, target: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "",
    };
    println!("| {name} | {a} | {b} | {ratio:.2}x | {target} | {verdict} |");
}

fn open_sessions(
    sandbox: &Sandbox,
    rt: &tokio::runtime::Runtime,
    own: &tokio_postgres::Client,
    n: usize,
    seconds: u64,
) -> anyhow::Result<Vec<sim::Session>> {
    let mix = pgkill_bench::Mix {
        sessions: n,
        in_transaction_every: IN_TRANSACTION_EVERY,
        active_every: ACTIVE_EVERY,
        // Active sessions sleep well past both runs.
        sleep: Duration::from_secs(seconds * 4 + 600),
    };
    let config = sandbox.config(DB, roles::PLAIN);
    let sessions = pgkill_bench::open_mix(rt, &config, "bench-client", &mix)?;
    let began = Instant::now();
    loop {
        let now = count_clients(rt, own)?;
        if now == n as i64 {
            return Ok(sessions);
        }
        anyhow::ensure!(
            began.elapsed() < POLL_LIMIT,
            "{DB} has {now} client sessions, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count_clients(
    rt: &tokio::runtime::Runtime,
    own: &tokio_postgres::Client,
) -> anyhow::Result<i64> {
    Ok(rt
        .block_on(own.query_one(CLIENTS, &[]))
        .context("counting client sessions")?
        .get(0))
}

/// Runs one tool in its own tmux server for `seconds`, samples its CPU time and peak
/// RSS, quits it with `q` and reads its statements from pg_stat_statements.
fn run_tool(
    rt: &tokio::runtime::Runtime,
    own: &tokio_postgres::Client,
    name: &str,
    command: &str,
    seconds: u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<Figures> {
    rt.block_on(own.batch_execute("SELECT pg_stat_statements_reset()"))
        .context("pg_stat_statements_reset()")?;
    let (cpu, rss_kib) =
        pgkill_bench::tmux::run_in_tmux(name, command, (200, 50), seconds, problems)?;
    let statements = pgkill_bench::tmux::statements_of(rt, own, roles::ADMIN, "")?;
    let server_ms = statements.iter().map(|s| s.ms).sum();
    // The number of refreshes: calls of the most-called statement on pg_stat_activity.
    let refreshes = statements
        .iter()
        .filter(|s| s.on_activity)
        .map(|s| s.calls)
        .max()
        .unwrap_or(0);
    let statements = statements
        .into_iter()
        .map(|s| (s.calls, s.ms, s.query))
        .collect();
    if refreshes == 0 {
        problems.push(format!("{name}: no statement on pg_stat_activity recorded"));
    }
    Ok(Figures {
        cpu,
        rss_kib,
        refreshes,
        server_ms,
        statements,
    })
}

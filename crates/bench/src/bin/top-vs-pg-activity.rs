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

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};
use tokio::task::JoinSet;

const DB: &str = "bench";
/// Sessions opened at once while setting up.
const BATCH: usize = 100;
/// Every tenth session holds an open transaction.
const IN_TRANSACTION_EVERY: usize = 10;
/// One session in this many runs `pg_sleep`.
const ACTIVE_EVERY: usize = 200;
const CPU_RATIO_TARGET: f64 = 0.2;
const RSS_TARGET_MB: f64 = 25.0;
/// How long a tool may take to quit after `q`.
const QUIT_LIMIT: Duration = Duration::from_secs(10);
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
    let own = rt.block_on(async {
        sandbox.create_database(DB, None).await?;
        let admin = sandbox.admin("postgres").await?;
        admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .context("CREATE EXTENSION pg_stat_statements")?;
        drop(admin);
        anyhow::Ok(sandbox.connect("postgres", roles::SUPERUSER).await?)
    })?;

    let began = Instant::now();
    let sessions = open_sessions(sandbox, rt, &own, n, args.seconds)?;
    let setup = began.elapsed();

    let port = sandbox.port().to_string();
    let host = sandbox.host();
    let mut problems = Vec::new();
    // Both log in with the sandbox's password file.
    let passfile = shell_quote(&sandbox.passfile().to_string_lossy());
    let pgkill_cmd = format!(
        "exec env PGPASSFILE={passfile} {} -h {host} -p {port} -U {} top -i 1s",
        shell_quote(&pgkill.to_string_lossy()),
        roles::ADMIN
    );
    let pg_activity_cmd = format!(
        "exec env PGPASSFILE={passfile} {} -h {host} -p {port} -U {} -d postgres --refresh 1",
        shell_quote(&pg_activity.to_string_lossy()),
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
    if problems.is_empty() {
        Ok(())
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
        anyhow::bail!("{} problem(s) during the run", problems.len())
    }
}

fn row(name: &str, a: &str, b: &str, ratio: f64, target: &str, ok: Option<bool>) {
    let verdict = match ok {
        Some(true) => "ok",
        Some(false) => "MISS",
        None => "",
    };
    println!("| {name} | {a} | {b} | {ratio:.2}x | {target} | {verdict} |");
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Opens the sessions in `bench` (as a plain role), `BATCH` at a time, and waits until
/// the server shows them all.
fn open_sessions(
    sandbox: &Sandbox,
    rt: &tokio::runtime::Runtime,
    own: &tokio_postgres::Client,
    n: usize,
    seconds: u64,
) -> anyhow::Result<Vec<sim::Session>> {
    let mut config = sandbox.config(DB, roles::PLAIN);
    config.application_name("bench-client");
    // Active sessions sleep well past both runs.
    let sleep = Duration::from_secs(seconds * 4 + 600);
    let sessions = rt.block_on(async {
        let mut sessions = Vec::with_capacity(n);
        for first in (0..n).step_by(BATCH) {
            let mut batch = JoinSet::new();
            for i in first..(first + BATCH).min(n) {
                let config = config.clone();
                batch.spawn(async move {
                    if i % ACTIVE_EVERY == 0 {
                        sim::active(&config, sleep).await
                    } else if i % IN_TRANSACTION_EVERY == IN_TRANSACTION_EVERY - 1 {
                        sim::idle_in_transaction(&config, None).await
                    } else {
                        sim::idle(&config).await
                    }
                });
            }
            while let Some(session) = batch.join_next().await {
                sessions.push(session.context("opening a session")??);
            }
        }
        anyhow::Ok(sessions)
    })?;
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
    let socket = format!("pgkill-bench-{}-{name}", std::process::id());
    let tmux = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L").arg(&socket).args(args);
        // Only the connection settings given on the command line.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("PG") {
                cmd.env_remove(var);
            }
        }
        cmd.output().context("running tmux")
    };
    let out = tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        command,
        ";",
        // Keep the pane (and its last screen) when the tool exits early.
        "set-option",
        "-g",
        "remain-on-exit",
        "on",
    ])?;
    anyhow::ensure!(
        out.status.success(),
        "tmux new-session for {name} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let result = measure_pane(&tmux, name, seconds, problems);
    let _ = tmux(&["kill-server"]);
    let (cpu, rss_kib) = result?;

    let statements = rt
        .block_on(own.query(
            "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s \
             JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 ORDER BY 2 DESC",
            &[&roles::ADMIN],
        ))
        .or_else(|_| {
            rt.block_on(own.query(
                "SELECT s.calls, s.total_time, s.query FROM pg_stat_statements s \
                 JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 ORDER BY 2 DESC",
                &[&roles::ADMIN],
            ))
        })
        .context("reading pg_stat_statements")?;
    let statements: Vec<(i64, f64, String, bool)> = statements
        .iter()
        .map(|r| {
            let query: String = r.get(2);
            let short: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
            let activity = query.contains("pg_stat_activity");
            (
                r.get(0),
                r.get(1),
                short.chars().take(100).collect(),
                activity,
            )
        })
        .collect();
    let server_ms = statements.iter().map(|s| s.1).sum();
    // The number of refreshes: calls of the most-called statement on pg_stat_activity.
    let refreshes = statements
        .iter()
        .filter(|s| s.3)
        .map(|s| s.0)
        .max()
        .unwrap_or(0);
    let statements = statements
        .into_iter()
        .map(|(calls, ms, query, _)| (calls, ms, query))
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

type Tmux<'a> = dyn Fn(&[&str]) -> anyhow::Result<std::process::Output> + 'a;

/// Waits `seconds`, samples the tool's CPU time and peak RSS, then quits it.
fn measure_pane(
    tmux: &Tmux<'_>,
    name: &str,
    seconds: u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<(Duration, u64)> {
    let out = tmux(&["list-panes", "-F", "#{pane_pid}"])?;
    let pane_pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("pane pid of {name}"))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let dead = tmux(&["list-panes", "-F", "#{pane_dead}"])?;
    let screen = tmux(&["capture-pane", "-p"])?;
    let screen = String::from_utf8_lossy(&screen.stdout).into_owned();
    anyhow::ensure!(
        String::from_utf8_lossy(&dead.stdout).trim() != "1",
        "{name} exited before the end of the run; its screen:\n{screen}"
    );
    // The tool: the pane's process, or its only child when the pane runs a shell.
    let tool = match comm(pane_pid).as_deref() {
        Some("sh" | "bash" | "dash") => descendants(pane_pid).first().copied().unwrap_or(pane_pid),
        _ => pane_pid,
    };
    let mut cpu_ticks = 0u64;
    let mut rss_kib = 0u64;
    for (i, pid) in std::iter::once(tool).chain(descendants(tool)).enumerate() {
        let (own_ticks, reaped_ticks) = cpu_ticks_of(pid)?;
        cpu_ticks += own_ticks + if i == 0 { reaped_ticks } else { 0 };
        rss_kib = rss_kib.max(hwm_kib(pid)?);
    }
    if screen.trim().is_empty() {
        problems.push(format!("{name}: empty screen at the end of the run"));
    }
    tmux(&["send-keys", "q"])?;
    let began = Instant::now();
    loop {
        let dead = tmux(&["list-panes", "-F", "#{pane_dead}"])?;
        if !dead.status.success() || String::from_utf8_lossy(&dead.stdout).trim() == "1" {
            break;
        }
        if began.elapsed() > QUIT_LIMIT {
            problems.push(format!("{name} did not quit within {QUIT_LIMIT:?} of `q`"));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((Duration::from_secs_f64(cpu_ticks as f64 / hz), rss_kib))
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Fields of `/proc/PID/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// (utime + stime, cutime + cstime) in clock ticks.
fn cpu_ticks_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let f = stat_fields(pid)?;
    // utime=14, stime=15, cutime=16, cstime=17 (1-based) → indexes 11..=14.
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok((get(11) + get(12), get(13) + get(14)))
}

fn hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// Every live descendant of `root` (children first).
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(f) = stat_fields(pid) {
            // ppid is field 4 → index 1.
            if let Some(&ppid) = f.get(1) {
                parent_of.insert(pid, ppid as u32);
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        let mut kids: Vec<u32> = parent_of
            .iter()
            .filter(|(_, &pp)| pp == p)
            .map(|(&c, _)| c)
            .collect();
        kids.sort_unstable();
        found.extend(kids);
        i += 1;
    }
    found.remove(0);
    found
}

//! What `pgkill watch` costs (issue 13), with the shipped sample policy
//! (`packaging/policy.toml`: three rules, none of which matches the steady state here),
//! in one run:
//!
//! 1. **Server cost per evaluation** with 1,000 client sessions on one sandbox server,
//!    side by side with `pgkill top`'s refresh on the same server: each runs for the same
//!    time at a 1 s period (`watch --dry-run`, then `top -i 1s` in a detached 200x50 tmux
//!    session); from `pg_stat_statements` (reset before each), the sum of
//!    `total_exec_time` of every statement the tool ran, divided by its evaluations (the
//!    calls of watch's evaluation statement) or refreshes (the calls of top's most-called
//!    statement on pg_stat_activity). Also printed: statements per evaluation (goal: one).
//!    Goal: watch ≤ 0.5× top.
//! 2. **One daemon watching 50 servers** (each with 20 idle sessions and 2 idle in
//!    transaction) at a 1 s interval for 60 s: the daemon's CPU time (user + system, from
//!    `wait4`) as a share of one core over its wall time, and its peak RSS. Goals: under
//!    5 % of one core, under 60 MB.
//!
//! Sessions of part 1 (database `bench`, role `sandbox_plain`): every tenth idle in
//! transaction, one in 200 active, the rest idle, as in `top-vs-pg-activity`.
//!
//! ```sh
//! cargo build --release -p pgkill
//! cargo run --release -p pgkill-bench --bin watch-cost [-- --sessions 1000 --seconds 30 --servers 50 --fleet-seconds 60]
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_bench::tmux::{run_in_tmux, statements_of, without_pg_env, Statement};
use pgkill_bench::{measure, Mix};
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};

const DB: &str = "bench";
/// Text only watch's evaluation statement contains.
const EVALUATION_MARKER: &str = "listed AS";
const COST_RATIO_GOAL: f64 = 0.5;
const CPU_GOAL_PERCENT: f64 = 5.0;
const RSS_GOAL_MB: f64 = 60.0;
const POLL_LIMIT: Duration = Duration::from_secs(60);

/// Server cost per evaluation against `pgkill top`, and one daemon over many servers.
#[derive(Debug, clap::Parser)]
#[command(name = "watch-cost")]
struct Args {
    /// Client sessions on the server of part 1.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// How long watch and top each run in part 1.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Servers the daemon of part 2 watches.
    #[arg(long, default_value_t = 50)]
    servers: usize,
    /// How long the daemon of part 2 runs.
    #[arg(long, default_value_t = 60)]
    fleet_seconds: u64,
    /// Servers started at once in part 2.
    #[arg(long, default_value_t = 4)]
    start_parallel: usize,
    /// Skip part 1.
    #[arg(long)]
    no_cost: bool,
    /// Skip part 2.
    #[arg(long)]
    no_fleet: bool,
    /// PostgreSQL major version (default: the newest installed).
    #[arg(long, value_name = "MAJOR")]
    pg_version: Option<u32>,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    if let Some(code) = pgkill_bench::launcher_main() {
        std::process::exit(code);
    }
    use clap::Parser;
    let args = Args::parse();
    anyhow::ensure!(
        args.sessions > 0 && args.seconds > 0 && args.servers > 0 && args.fleet_seconds > 0,
        "--sessions, --seconds, --servers and --fleet-seconds must be at least 1"
    );
    let pgkill = pgkill_bench::find_pgkill(args.pgkill.as_deref())?;
    let inst = match args.pg_version {
        Some(major) => Installation::for_major(major)?,
        None => Installation::newest()?,
    };
    let sample = std::fs::read_to_string(sample_policy())
        .with_context(|| format!("reading {}", sample_policy().display()))?;
    sim::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "watch-cost: pgkill {} · policy {}",
        pgkill.display(),
        sample_policy().display()
    );
    let mut problems = Vec::new();
    if !args.no_cost {
        cost(&rt, &inst, &args, &pgkill, &sample, &mut problems)?;
    }
    if !args.no_fleet {
        fleet(&rt, &inst, &args, &pgkill, &sample, &mut problems)?;
    }
    pgkill_bench::end(&problems, "problem(s) during the run")
}

fn sample_policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/policy.toml")
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `pgkill -h … -p … -U admin` with the sandbox's password file and no other `PG*`.
fn pgkill_command(pgkill: &Path, sb: &Sandbox) -> Command {
    let mut cmd = Command::new(pgkill);
    without_pg_env(&mut cmd)
        .env("PGPASSFILE", sb.passfile())
        .args(["-h", sb.host(), "-p", &sb.port().to_string()])
        .args(["-U", roles::ADMIN]);
    cmd
}

/// Part 1: server time per evaluation against top's per refresh.
fn cost(
    rt: &tokio::runtime::Runtime,
    inst: &Installation,
    args: &Args,
    pgkill: &Path,
    sample: &str,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let n = args.sessions;
    let options = Options::default()
        .max_connections(u32::try_from(n + 200).unwrap_or(u32::MAX).max(1200))
        .setting("shared_preload_libraries", "pg_stat_statements")
        .setting("pg_stat_statements.track", "all");
    let sb = Sandbox::start(inst, &options)?;
    let own = pgkill_bench::with_stat_statements(rt, &sb, DB)?;
    let mix = Mix {
        sessions: n,
        in_transaction_every: 10,
        active_every: 200,
        sleep: Duration::from_secs(args.seconds * 4 + 600),
    };
    let sessions = pgkill_bench::open_mix(rt, &sb.config(DB, roles::PLAIN), "bench-client", &mix)?;
    let count = || -> anyhow::Result<i64> {
        Ok(rt
            .block_on(own.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench' AND backend_type = 'client backend'",
                &[],
            ))?
            .get(0))
    };
    let began = Instant::now();
    while count()? != n as i64 {
        anyhow::ensure!(
            began.elapsed() < POLL_LIMIT,
            "the sessions did not all show up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // watch, as a daemon in a dry run, for `seconds`.
    let dir = tempfile::tempdir()?;
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, sample)?;
    let audit = dir.path().join("audit.log");
    rt.block_on(own.batch_execute("SELECT pg_stat_statements_reset()"))?;
    let mut watch = pgkill_command(pgkill, &sb);
    watch
        .arg("watch")
        .arg("--policy")
        .arg(&policy)
        .arg("--dry-run")
        .arg("--audit")
        .arg(&audit)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = watch.spawn().context("starting pgkill watch")?;
    std::thread::sleep(Duration::from_secs(args.seconds));
    // SAFETY: plain syscall on our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output()?;
    if !out.status.success() {
        problems.push(format!(
            "watch exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let w = statements_of(rt, &own, roles::ADMIN, EVALUATION_MARKER)?;
    let evaluations = w.iter().filter(|s| s.marked).map(|s| s.calls).sum::<i64>();
    if evaluations == 0 {
        problems.push("watch: no evaluation statement recorded".into());
    }

    // top, refreshing every second, for `seconds`.
    rt.block_on(own.batch_execute("SELECT pg_stat_statements_reset()"))?;
    let top_cmd = format!(
        "exec env PGPASSFILE={} {} -h {} -p {} -U {} top -i 1s",
        pgkill_bench::tmux::shell_quote(&sb.passfile().to_string_lossy()),
        pgkill_bench::tmux::shell_quote(&pgkill.to_string_lossy()),
        sb.host(),
        sb.port(),
        roles::ADMIN
    );
    run_in_tmux("pgkill-top", &top_cmd, (200, 50), args.seconds, problems)?;
    let t = statements_of(rt, &own, roles::ADMIN, "")?;
    let refreshes = t
        .iter()
        .filter(|s| s.on_activity)
        .map(|s| s.calls)
        .max()
        .unwrap_or(0);
    if refreshes == 0 {
        problems.push("top: no statement on pg_stat_activity recorded".into());
    }
    drop(sessions);

    let total = |s: &[Statement]| s.iter().map(|s| s.ms).sum::<f64>();
    // Statements run more than once: those of every pass (connecting runs its own once).
    let every_pass = |s: &[Statement]| {
        s.iter()
            .filter(|s| s.calls > 1)
            .map(|s| s.calls)
            .sum::<i64>()
    };
    let per_eval = total(&w) / evaluations.max(1) as f64;
    let per_refresh = total(&t) / refreshes.max(1) as f64;
    let ratio = per_eval / per_refresh.max(1e-9);
    println!(
        "part 1: PostgreSQL {} · {n} client sessions in {DB} ({} idle in transaction, {} active, the rest idle) · each tool {} s at a 1 s period",
        sb.version(),
        n / 10,
        n.div_ceil(200),
        args.seconds
    );
    println!("| figure | pgkill watch (evaluation) | pgkill top (refresh) | ratio | goal | |");
    println!("|---|---:|---:|---:|---|---|");
    println!(
        "| server time per evaluation / refresh | {per_eval:.2} ms | {per_refresh:.2} ms | {ratio:.2}x | ≤ {COST_RATIO_GOAL}x top | {} |",
        if ratio <= COST_RATIO_GOAL { "ok" } else { "MISS" }
    );
    println!("| evaluations / refreshes | {evaluations} | {refreshes} | | (for reference) | |");
    println!(
        "| statements per evaluation / refresh (after connecting) | {:.2} | {:.2} | | watch: 1 | {} |",
        every_pass(&w) as f64 / evaluations.max(1) as f64,
        every_pass(&t) as f64 / refreshes.max(1) as f64,
        if every_pass(&w) == evaluations { "ok" } else { "MISS" }
    );
    for (tool, s) in [("pgkill watch", &w), ("pgkill top", &t)] {
        println!("{tool} statements (calls, total ms, query):");
        for st in s.iter().take(6) {
            println!("  {:>6} {:>10.1}  {}", st.calls, st.ms, st.query);
        }
    }
    Ok(())
}

/// Part 2: one daemon over `servers` servers.
fn fleet(
    rt: &tokio::runtime::Runtime,
    inst: &Installation,
    args: &Args,
    pgkill: &Path,
    sample: &str,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let began = Instant::now();
    let servers = pgkill_bench::start_sandboxes(
        inst,
        &Options::default(),
        args.servers,
        args.start_parallel,
    )?;
    let mix = Mix {
        sessions: 22,
        in_transaction_every: 11,
        active_every: 0,
        sleep: Duration::ZERO,
    };
    let mut sessions = Vec::new();
    for sb in &servers {
        let mut some =
            pgkill_bench::open_mix(rt, &sb.config("postgres", roles::PLAIN), "bench-app", &mix)?;
        sessions.append(&mut some);
    }
    let setup = began.elapsed();
    let dir = tempfile::tempdir()?;
    let mut policy = sample.to_owned();
    for (i, sb) in servers.iter().enumerate() {
        let conninfo = format!(
            "host={} port={} user={} passfile={}",
            sb.host(),
            sb.port(),
            roles::ADMIN,
            sb.passfile().display()
        );
        write!(
            policy,
            "\n[[target]]\nname = \"server-{i:02}\"\nconninfo = {}\n",
            toml_string(&conninfo)
        )?;
    }
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy)?;
    let audit = dir.path().join("audit.log");
    let mut cmd = Command::new(pgkill);
    without_pg_env(&mut cmd)
        .arg("watch")
        .arg("--policy")
        .arg(&path)
        .arg("--dry-run")
        .arg("--audit")
        .arg(&audit);
    let m = measure(&cmd, Duration::from_secs(args.fleet_seconds))?;
    let connected = m.stderr.matches("connected to PostgreSQL").count();
    if connected != servers.len() {
        problems.push(format!(
            "the daemon connected to {connected} of {} servers:\n{}",
            servers.len(),
            m.stderr.trim()
        ));
    }
    if m.wall < Duration::from_secs(args.fleet_seconds) {
        problems.push(format!(
            "the daemon exited after {:.1} s ({}):\n{}",
            m.wall.as_secs_f64(),
            m.status,
            m.stderr.trim()
        ));
    }
    let cpu_percent = 100.0 * m.cpu.as_secs_f64() / m.wall.as_secs_f64().max(1e-9);
    let rss = m.max_rss_mb();
    drop(sessions);
    println!(
        "part 2: PostgreSQL {} · one daemon, {} servers (each 20 idle sessions and 2 idle in transaction; started in {:.1} s) · interval 1 s · {} s",
        inst.version,
        servers.len(),
        setup.as_secs_f64(),
        args.fleet_seconds
    );
    println!("| figure | pgkill watch | goal | |");
    println!("|---|---:|---|---|");
    println!(
        "| client CPU (user+sys) | {:.2} s = {cpu_percent:.2} % of one core | < {CPU_GOAL_PERCENT} % | {} |",
        m.cpu.as_secs_f64(),
        if cpu_percent < CPU_GOAL_PERCENT { "ok" } else { "MISS" }
    );
    println!(
        "| peak RSS (ru_maxrss) | {rss:.1} MB | < {RSS_GOAL_MB} MB | {} |",
        if rss < RSS_GOAL_MB { "ok" } else { "MISS" }
    );
    println!("(MB = 10^6 bytes; the CPU time includes connecting to every server)");
    Ok(())
}

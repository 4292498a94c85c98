//! Drain and unfence of a database behind PgBouncer under a committing workload (issue
//! 11): what the applications see, three methods side by side in one run, for each
//! PgBouncer version on one PostgreSQL server:
//!
//! 1. `pgkill --pgbouncer … drain shop_db --grace 5s --then-unfence -y`: pgkill pauses the
//!    alias, drains, unfences and resumes in one process;
//! 2. the same drain without `--pgbouncer`: the pooler's server connections are terminated
//!    under it, and while the database is fenced its logins fail, after which PgBouncer
//!    waits `server_login_retry` before trying again (expected: errors and a long stall);
//! 3. by hand: `PAUSE shop` on the admin console, `pgkill drain shop_db --grace 5s -y`,
//!    `pgkill unfence shop_db`, `RESUME shop`;
//!
//! and, for reference, runs with no operation at all (the workload alone: the floor under
//! every stall, since 8 writers share 5 server connections).
//!
//! Database `shop_db` sits behind alias `shop` in transaction mode (`default_pool_size`
//! 5). Each run starts a fresh PgBouncer and a fresh workload of 8 writers committing
//! `BEGIN; INSERT …; SELECT pg_sleep(0.02); COMMIT` through it over the simple protocol,
//! reconnecting after an error; the operation starts once they have committed for a
//! while, and they go on until every writer has committed again after it, and one more
//! second. Per run: the application errors by SQLSTATE, the stall (the longest any single
//! transaction attempt answered after the operation started waited for its answer,
//! success or error, including the connect when it needed one), the longest gap between
//! two commits of one writer ending after it started, the wall time
//! of the operation, the time until every writer committed again after it, and whether
//! every acknowledged commit is stored.
//!
//! Usage (pgkill's release binary first; it is looked for beside this one):
//!
//! ```sh
//! cargo build --release -p pgkill
//! cargo run --release -p pgkill-bench --bin pgbouncer-drain [-- --runs 5 --pg-version 15 --bouncer 1.24.1]
//! ```
//!
//! Exits non-zero only when the harness itself failed (a server or pooler that would not
//! start, a lost connection of its own); a missed goal is printed, not an exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_bench::{measure, median, ms};
use pgkill_sandbox::{
    roles, Bouncer, BouncerOptions, BouncerVersion, Console, Installation, Options, PoolMode,
    Sandbox,
};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;

const DB: &str = "shop_db";
const ALIAS: &str = "shop";
const POOL_SIZE: u32 = 5;
const WRITERS: usize = 8;
/// How long the writers commit before the operation starts.
const WARM_UP: Duration = Duration::from_millis(700);
/// How long the writers go on once every one of them has committed after the operation.
const AFTER: Duration = Duration::from_secs(1);
/// How long the writers may take to commit again after the operation.
const RECOVERY_LIMIT: Duration = Duration::from_secs(40);
/// A pgkill run (or a console command) is given up after this long.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// How long the writers may take to stop once told (each finishes its transaction).
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// pgkill --pgbouncer's median stall must be at most this many times the by-hand recipe's.
const RATIO_TARGET: f64 = 1.2;

/// The three methods, in the order of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Pooler,
    NoPooler,
    ByHand,
    /// No operation: the workload alone, the floor under every stall.
    Baseline,
}

const METHODS: [Method; 4] = [
    Method::Pooler,
    Method::NoPooler,
    Method::ByHand,
    Method::Baseline,
];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pooler => "pgkill --pgbouncer drain --then-unfence",
            Method::NoPooler => "pgkill drain --then-unfence (no --pgbouncer)",
            Method::ByHand => "PAUSE; pgkill drain; pgkill unfence; RESUME",
            Method::Baseline => "(reference) no operation, the workload alone",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Method::Pooler => "pgbouncer",
            Method::NoPooler => "plain",
            Method::ByHand => "by-hand",
            Method::Baseline => "baseline",
        }
    }

    fn index(self) -> usize {
        match self {
            Method::Pooler => 0,
            Method::NoPooler => 1,
            Method::ByHand => 2,
            Method::Baseline => 3,
        }
    }
}

/// Drain + unfence behind PgBouncer under a committing workload: pgkill --pgbouncer,
/// pgkill without it and PAUSE/RESUME by hand, side by side.
#[derive(Debug, clap::Parser)]
#[command(name = "pgbouncer-drain")]
struct Args {
    /// Runs per PgBouncer version and method (median and max are printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// PostgreSQL major version.
    #[arg(long, value_name = "MAJOR", default_value_t = 15)]
    pg_version: u32,
    /// Only this PgBouncer version (1.18 or 1.24.1; default: both).
    #[arg(long, value_name = "VERSION", value_parser = parse_bouncer)]
    bouncer: Option<BouncerVersion>,
    /// PgBouncer's `server_login_retry` in seconds (its default is 15).
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    login_retry: f64,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
}

fn parse_bouncer(s: &str) -> Result<BouncerVersion, String> {
    BouncerVersion::ALL
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("{s:?}: expected 1.18 or 1.24.1"))
}

fn parse_args() -> anyhow::Result<Args> {
    use clap::Parser;
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        args.login_retry.is_finite() && args.login_retry > 0.0,
        "--login-retry must be a positive number of seconds"
    );
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    if let Some(code) = pgkill_bench::launcher_main() {
        std::process::exit(code);
    }
    let args = parse_args()?;
    let pgkill = pgkill_bench::find_pgkill(args.pgkill.as_deref())?;
    let inst = Installation::for_major(args.pg_version)?;
    let versions: Vec<BouncerVersion> = match args.bouncer {
        Some(v) => vec![v],
        None => BouncerVersion::ALL.to_vec(),
    };
    let state_dir = tempfile::tempdir().context("creating pgkill's state directory")?;
    let home = tempfile::tempdir().context("creating an empty HOME for pgkill")?;
    let rt = Runtime::new().context("starting the tokio runtime")?;
    let sandbox = Sandbox::start(&inst, &Options::default()).context("starting the sandbox")?;
    let bench = Bench {
        rt: &rt,
        sandbox: &sandbox,
        pgkill: &pgkill,
        state_dir: state_dir.path(),
        home: home.path(),
        login_retry: Duration::from_secs_f64(args.login_retry),
    };
    let result = bench.run_all(&versions, args.runs);
    // Every bouncer was dropped inside; the server goes before the runtime.
    drop(sandbox);
    drop(rt);
    result
}

/// What the writers of one run saw.
#[derive(Debug, Default)]
struct Seen {
    acknowledged: u64,
    errors: BTreeMap<String, u64>,
    /// The longest single transaction attempt (until its answer, success or error) of
    /// those answered once the operation had started.
    stall: Duration,
    /// The longest time between two commits of one writer (or its start and its first),
    /// the later one once the operation had started.
    gap: Duration,
    /// When the operation started; set by the harness. Only what is answered from then on
    /// counts towards `stall` and `gap`: the pool's first logins during the warm-up are
    /// not the operation's.
    op_start: Option<Instant>,
    /// When the operation ended; set by the harness.
    op_end: Option<Instant>,
    /// Per writer: its first commit acknowledged after `op_end`.
    back: Vec<Option<Instant>>,
}

/// The figures of one run of one method.
#[derive(Debug, Clone)]
struct RunFigures {
    errors: BTreeMap<String, u64>,
    stall: Duration,
    gap: Duration,
    wall: Duration,
    /// From the end of the operation until every writer had committed again.
    back: Option<Duration>,
    commits: u64,
    /// Acknowledged commits not in the table (or extra ones).
    lost: i64,
    /// Why the operation itself failed (pgkill's exit, a console error); empty if it did not.
    failure: String,
}

struct Bench<'a> {
    rt: &'a Runtime,
    sandbox: &'a Sandbox,
    pgkill: &'a Path,
    state_dir: &'a Path,
    home: &'a Path,
    login_retry: Duration,
}

impl Bench<'_> {
    fn run_all(&self, versions: &[BouncerVersion], runs: usize) -> anyhow::Result<()> {
        self.rt.block_on(async {
            self.sandbox.create_database(DB, None).await?;
            let admin = self.sandbox.admin(DB).await?;
            admin
                .batch_execute(&format!(
                    "CREATE TABLE writes (writer int, seq bigint, PRIMARY KEY (writer, seq)); \
                     GRANT INSERT, SELECT ON writes TO {}",
                    roles::PLAIN
                ))
                .await?;
            anyhow::Ok(())
        })?;
        let mut results: Vec<(String, [Vec<RunFigures>; 4])> = Vec::new();
        let mut harness_errors = Vec::new();
        for &version in versions {
            let mut figures: [Vec<RunFigures>; 4] = Default::default();
            let mut reported = version.as_str().to_owned();
            let outcome = (|| -> anyhow::Result<()> {
                for run in 0..runs {
                    // Rotate the order so that no method always runs first.
                    let mut order = METHODS;
                    order.rotate_left(run % METHODS.len());
                    for method in order {
                        let (f, rep) = self
                            .run_one(version, method)
                            .with_context(|| format!("run {} of {}", run + 1, method.short()))?;
                        reported = rep;
                        eprintln!(
                            "PgBouncer {reported} run {} {:<9} stall {:>7} ms, gap {:>7} ms, wall {:>7} ms, back after {:>7} ms, {} commits, errors {}{}",
                            run + 1,
                            method.short(),
                            ms(f.stall),
                            ms(f.gap),
                            ms(f.wall),
                            f.back.map(ms).unwrap_or_else(|| "never".into()),
                            f.commits,
                            errors_cell(&f.errors),
                            if f.failure.is_empty() { String::new() } else { format!(" · FAILED: {}", f.failure) },
                        );
                        figures[method.index()].push(f);
                    }
                }
                Ok(())
            })();
            if let Err(e) = outcome {
                eprintln!("PgBouncer {}: {e:#}", version.as_str());
                harness_errors.push(format!("PgBouncer {}: {e:#}", version.as_str()));
            }
            results.push((reported, figures));
        }
        self.print_table(&results, runs);
        for e in &harness_errors {
            println!("harness error: {e}");
        }
        anyhow::ensure!(
            harness_errors.is_empty(),
            "{} PgBouncer version(s) could not be measured to the end",
            harness_errors.len()
        );
        Ok(())
    }

    /// One run: a fresh PgBouncer and workload, the operation, recovery, the checks.
    /// Returns the figures and the version PgBouncer reports.
    fn run_one(
        &self,
        version: BouncerVersion,
        method: Method,
    ) -> anyhow::Result<(RunFigures, String)> {
        let sb = self.sandbox;
        self.rt.block_on(async {
            sb.admin(DB).await?.batch_execute("TRUNCATE writes").await?;
            anyhow::Ok(())
        })?;
        let mut options = BouncerOptions::new(version, PoolMode::Transaction).database(ALIAS, DB);
        options.default_pool_size = POOL_SIZE;
        options.server_login_retry = self.login_retry;
        let bouncer = Bouncer::start(sb, &options).context("starting PgBouncer")?;
        let reported = bouncer.reported_version().to_owned();
        let console = self
            .rt
            .block_on(bouncer.admin(roles::ADMIN))
            .context("logging in to PgBouncer's console")?;

        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen {
            back: vec![None; WRITERS],
            ..Seen::default()
        }));
        let writers = {
            let _guard = self.rt.enter();
            workload(
                bouncer.config(ALIAS, roles::PLAIN),
                stop.clone(),
                seen.clone(),
            )
        };
        std::thread::sleep(WARM_UP);

        let began = Instant::now();
        lock(&seen).op_start = Some(began);
        let failure = match method {
            Method::Pooler => self.pgkill_drain(Some(&self.console_conninfo(&bouncer)), true)?,
            Method::NoPooler => self.pgkill_drain(None, true)?,
            Method::ByHand => self.by_hand(&console)?,
            Method::Baseline => String::new(),
        };
        let op_end = Instant::now();
        let wall = op_end - began;
        lock(&seen).op_end = Some(op_end);

        // Recovery: every writer commits again, then one more second.
        while lock(&seen).back.iter().any(Option::is_none) && op_end.elapsed() < RECOVERY_LIMIT {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(AFTER);
        stop.store(true, Ordering::Relaxed);
        let mut failure = failure;
        let mut writers = writers;
        match self
            .rt
            .block_on(async { tokio::time::timeout(STOP_LIMIT, &mut writers).await })
        {
            Ok(joined) => joined.context("a writer task failed")?,
            Err(_) => {
                // Dropping the writers' JoinSet aborts them.
                writers.abort();
                failure.push_str(&format!(
                    "{}writers were still waiting for an answer {} s after the end",
                    sep(&failure),
                    STOP_LIMIT.as_secs()
                ));
            }
        }
        let seen = std::mem::take(&mut *lock(&seen));

        // Never leave the next run a fenced database (a failed operation may have).
        let (stored, allowed) = self.rt.block_on(async {
            let admin = sb.admin("postgres").await?;
            let allowed: bool = admin
                .query_one(
                    "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = $1",
                    &[&DB],
                )
                .await?
                .get(0);
            let stored: i64 = if allowed {
                sb.admin(DB)
                    .await?
                    .query_one("SELECT count(*) FROM writes", &[])
                    .await?
                    .get(0)
            } else {
                -1
            };
            anyhow::Ok((stored, allowed))
        })?;
        let mut stored = stored;
        if !allowed {
            let m = measure(&self.pgkill(&["unfence", DB]), RUN_LIMIT)?;
            anyhow::ensure!(
                m.status.success(),
                "{DB} was left fenced and `pgkill unfence` failed: {}",
                m.stderr.trim()
            );
            failure.push_str(&format!("{}{DB} was left fenced", sep(&failure)));
            stored = self.rt.block_on(async {
                let n: i64 = sb
                    .admin(DB)
                    .await?
                    .query_one("SELECT count(*) FROM writes", &[])
                    .await?
                    .get(0);
                anyhow::Ok(n)
            })?;
        }
        drop(console);
        drop(bouncer);
        let back = seen
            .back
            .iter()
            .map(|b| b.map(|t| t.saturating_duration_since(op_end)))
            .collect::<Option<Vec<_>>>()
            .and_then(|b| b.into_iter().max());
        Ok((
            RunFigures {
                errors: seen.errors,
                stall: seen.stall,
                gap: seen.gap,
                wall,
                back,
                commits: seen.acknowledged,
                lost: i64::try_from(seen.acknowledged).unwrap_or(i64::MAX) - stored,
                failure,
            },
            reported,
        ))
    }

    /// `--pgbouncer` conninfo of the console, as the bootstrap superuser with its password
    /// (the sandbox's password file names the server's port, not the pooler's).
    fn console_conninfo(&self, bouncer: &Bouncer) -> String {
        format!(
            "host={} port={} user={} password={}",
            bouncer.host(),
            bouncer.port(),
            roles::ADMIN,
            self.sandbox.password(roles::ADMIN).unwrap_or_default()
        )
    }

    /// `pgkill -h … -p <server> -U postgres ARGS…` with only the sandbox's password file,
    /// an empty HOME and a state directory of its own.
    fn pgkill(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.pgkill);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") && name != "PGKILL_LOG" {
                cmd.env_remove(name);
            }
        }
        let port = self.sandbox.port().to_string();
        cmd.env("PGPASSFILE", self.sandbox.passfile())
            .env("PGKILL_STATE_DIR", self.state_dir)
            .env("HOME", self.home)
            .env("NO_COLOR", "1")
            .args(["-h", self.sandbox.host(), "-p", &port, "-U", roles::ADMIN])
            .args(args);
        cmd
    }

    /// Runs pgkill; returns why it failed (empty when it exited 0).
    fn run_pgkill(&self, args: &[&str]) -> anyhow::Result<String> {
        let m = measure(&self.pgkill(args), RUN_LIMIT)?;
        Ok(if m.status.success() {
            String::new()
        } else {
            format!(
                "pgkill {} exited with {}: {}",
                args.iter()
                    .find(|a| ["drain", "unfence"].contains(a))
                    .unwrap_or(&"?"),
                m.status,
                m.stderr.lines().last().unwrap_or_default().trim()
            )
        })
    }

    fn pgkill_drain(&self, pooler: Option<&str>, then_unfence: bool) -> anyhow::Result<String> {
        let mut args = Vec::new();
        if let Some(conninfo) = pooler {
            args.extend(["--pgbouncer", conninfo]);
        }
        args.extend(["drain", DB, "--grace", "5s"]);
        if then_unfence {
            args.push("--then-unfence");
        }
        args.push("-y");
        self.run_pgkill(&args)
    }

    /// PAUSE, drain, unfence, RESUME. A failed step is reported; RESUME is always sent.
    fn by_hand(&self, console: &Console) -> anyhow::Result<String> {
        let sql = |q: String| {
            self.rt.block_on(async {
                match tokio::time::timeout(RUN_LIMIT, console.simple_query(&q)).await {
                    Ok(Ok(_)) => String::new(),
                    Ok(Err(e)) => format!("{q}: {e}"),
                    Err(_) => format!("{q}: no answer within {} s", RUN_LIMIT.as_secs()),
                }
            })
        };
        let mut failure = sql(format!("PAUSE {ALIAS}"));
        if failure.is_empty() {
            failure = self.pgkill_drain(None, false)?;
            let unfence = self.run_pgkill(&["unfence", DB])?;
            if !unfence.is_empty() {
                failure.push_str(&format!("{}{unfence}", sep(&failure)));
            }
        }
        let resume = sql(format!("RESUME {ALIAS}"));
        if !resume.is_empty() {
            failure.push_str(&format!("{}{resume}", sep(&failure)));
        }
        Ok(failure)
    }

    fn print_table(&self, results: &[(String, [Vec<RunFigures>; 4])], runs: usize) {
        println!(
            "pgbouncer-drain: PostgreSQL {} · {WRITERS} writers through alias {ALIAS} → {DB}, transaction pooling, default_pool_size {POOL_SIZE}, server_login_retry {} s · {runs} run(s) per method, each on a fresh PgBouncer and workload",
            self.sandbox.version(),
            self.login_retry.as_secs_f64()
        );
        println!(
            "workload: BEGIN; INSERT; SELECT pg_sleep(0.02); COMMIT over the simple protocol, reconnecting after errors · pgkill: {}",
            self.pgkill.display()
        );
        println!("stall: the longest any single transaction answered after the operation started waited for its answer (ms; the warm-up's first pool logins are not counted) · gap: the longest between two commits of one writer · back: from the end of the operation until every writer committed again");
        println!("| PgBouncer | method | stall median | stall max | gap max | errors (SQLSTATE: count) | wall median | back median | commits lost | failed runs | stall vs by hand |");
        println!("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|");
        let mut goal = true;
        let mut verdicts = Vec::new();
        for (version, figures) in results {
            let by_hand = median(&mut stalls(&figures[Method::ByHand.index()]));
            for method in METHODS {
                let f = &figures[method.index()];
                let mut stall = stalls(f);
                let stall_median = median(&mut stall);
                let stall_max = stall.iter().max().copied().unwrap_or_default();
                let gap_max = f.iter().map(|r| r.gap).max().unwrap_or_default();
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                for r in f {
                    for (code, n) in &r.errors {
                        *errors.entry(code.clone()).or_default() += n;
                    }
                }
                let mut walls: Vec<Duration> = f.iter().map(|r| r.wall).collect();
                let mut backs: Vec<Duration> = f.iter().filter_map(|r| r.back).collect();
                let never = f.iter().filter(|r| r.back.is_none()).count();
                let lost: i64 = f.iter().map(|r| r.lost).sum();
                let failed = f.iter().filter(|r| !r.failure.is_empty()).count();
                let ratio_cell = if method == Method::Pooler {
                    let ratio = stall_median.as_secs_f64() / by_hand.as_secs_f64().max(1e-9);
                    let ok = ratio <= RATIO_TARGET;
                    if !ok {
                        verdicts.push(format!(
                            "PgBouncer {version}: pgkill --pgbouncer's median stall is {ratio:.2}x the by-hand recipe's (target ≤ {RATIO_TARGET}x)"
                        ));
                    }
                    goal &= ok;
                    format!("{ratio:.2}x")
                } else {
                    String::new()
                };
                if matches!(method, Method::Pooler | Method::ByHand) {
                    let total: u64 = errors.values().sum();
                    if total > 0 || lost != 0 || failed > 0 || f.len() < runs {
                        goal = false;
                        verdicts.push(format!(
                            "PgBouncer {version}, {}: {total} application error(s), {lost} commit(s) lost, {failed} failed run(s), {} of {runs} run(s) measured",
                            method.short(),
                            f.len()
                        ));
                    }
                }
                println!(
                    "| {version} | {} | {} | {} | {} | {} | {} | {}{} | {lost} | {failed} | {ratio_cell} |",
                    method.name(),
                    ms(stall_median),
                    ms(stall_max),
                    ms(gap_max),
                    errors_cell(&errors),
                    ms(median(&mut walls)),
                    if backs.is_empty() { "–".to_owned() } else { ms(median(&mut backs)) },
                    if never > 0 { format!(" ({never} never)") } else { String::new() },
                );
            }
        }
        for (version, figures) in results {
            for method in METHODS {
                for (i, r) in figures[method.index()].iter().enumerate() {
                    if !r.failure.is_empty() {
                        println!(
                            "failed: PgBouncer {version}, {} run {}: {}",
                            method.short(),
                            i + 1,
                            r.failure
                        );
                    }
                }
            }
        }
        if goal && !results.is_empty() {
            println!("goal met: 0 application errors for pgkill --pgbouncer and by hand, and pgkill --pgbouncer's median stall ≤ {RATIO_TARGET}x by hand's on every PgBouncer version");
        } else {
            println!(
                "goal MISSED (0 application errors for pgkill --pgbouncer and by hand, median stall ≤ {RATIO_TARGET}x by hand's): {}",
                if verdicts.is_empty() { "nothing was measured".to_owned() } else { verdicts.join("; ") }
            );
        }
    }
}

fn stalls(f: &[RunFigures]) -> Vec<Duration> {
    f.iter().map(|r| r.stall).collect()
}

fn sep(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        "; "
    }
}

fn errors_cell(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        "0".to_owned()
    } else {
        errors
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// `WRITERS` applications committing short transactions through the pooler until `stop`
/// (simple protocol, as pooled applications do), reconnecting after an error. Must be
/// called inside the runtime.
fn workload(
    config: tokio_postgres::Config,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let (config, stop, seen) = (config.clone(), stop.clone(), seen.clone());
            tasks.spawn(async move {
                let mut seq = 0i64;
                let mut client: Option<tokio_postgres::Client> = None;
                let mut last_commit = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let c = match &client {
                        Some(c) => c,
                        None => match config.connect(NoTls).await {
                            Ok((c, conn)) => {
                                tokio::spawn(conn);
                                client.insert(c)
                            }
                            Err(e) => {
                                {
                                    let mut s = lock(&seen);
                                    if s.op_start.is_some() {
                                        s.stall = s.stall.max(began.elapsed());
                                    }
                                    *s.errors.entry(sqlstate(&e, "connect")).or_default() += 1;
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        },
                    };
                    seq += 1;
                    let sql = format!(
                        "BEGIN; INSERT INTO writes VALUES ({w}, {seq}); SELECT pg_sleep(0.02); COMMIT"
                    );
                    let result = c.simple_query(&sql).await;
                    let now = Instant::now();
                    let mut s = lock(&seen);
                    let counts = s.op_start.is_some();
                    if counts {
                        s.stall = s.stall.max(now - began);
                    }
                    match result {
                        Ok(_) => {
                            s.acknowledged += 1;
                            if counts {
                                s.gap = s.gap.max(now - last_commit);
                            }
                            last_commit = now;
                            if s.op_end.is_some_and(|end| began >= end) {
                                let back = &mut s.back[w];
                                back.get_or_insert(now);
                            }
                        }
                        Err(e) => {
                            *s.errors.entry(sqlstate(&e, "closed")).or_default() += 1;
                            client = None;
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    })
}

/// The error's SQLSTATE, else `otherwise` (a connection closed without one, a timeout).
fn sqlstate(e: &tokio_postgres::Error, otherwise: &str) -> String {
    e.code()
        .map_or_else(|| otherwise.to_owned(), |c| c.code().to_owned())
}

//! pgkill across a fleet (issue 14's benchmark), side by side in one run: many sandbox
//! servers, each with its client sessions, and three ways of working on all of them:
//!
//! - `pgkill --targets FILE ls --json` against a sequential psql loop over the same
//!   servers (`while read c; do psql -X -A -t -d "$c" -c …; done`) and against
//!   `xargs -P N psql` (N = `--parallel`, pgkill's `--parallel` too), each running the
//!   `pg_stat_activity` query pgkill's `ls` answers;
//! - `pgkill --targets FILE kill --db batch -y` against the same loop and `xargs` of
//!   `SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'batch'`.
//!   The `batch` sessions are opened again before every run (not timed). pgkill waits until
//!   the sessions it terminated are gone; `pg_terminate_backend` only sends the signal, so
//!   the table also shows, for every method, how long until the bench saw no `batch`
//!   session left on any server (polled over its own connections);
//! - pgkill's peak RSS (and that of the psql processes, through the shell or `xargs`).
//!
//! Every server keeps its other sessions (in database `app`) throughout; a run that ends
//! any of them, leaves a `batch` session, or exits with an error is a harness failure
//! (exit 1). Goals that are missed are printed, not an exit code.
//!
//! Usage (pgkill's release binary first; it is looked for beside this one):
//!
//! ```sh
//! cargo build --release -p pgkill -p pgkill-bench
//! cargo run --release -p pgkill-bench --bin fleet [-- --servers 50 --sessions 100 --runs 5]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_bench::{find_psql, measure, median, ms, output_of, Measured};
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_postgres::Client;

/// The database whose sessions every server keeps.
const APP_DB: &str = "app";
/// The database whose sessions `kill` ends.
const BATCH_DB: &str = "batch";
/// Sessions being opened at once, over all servers.
const OPENING_AT_ONCE: usize = 64;
/// `max_connections` above the client sessions: the bench's admin connection, pgkill, psql.
const SPARE_CONNECTIONS: u32 = 50;
/// A measured program is killed after this long.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// How long the servers may take to show the sessions the bench expects.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// The most pgkill may take, against `xargs -P N psql`, for `ls` and for `kill`.
const RATIO_GOAL: f64 = 1.2;
const LS_LIMIT: Duration = Duration::from_secs(1);
const RSS_GOAL_MB: f64 = 40.0;

/// What pgkill's `ls` shows, from `pg_stat_activity`: the client sessions but psql's own.
const PSQL_LS: &str = "SELECT pid, backend_start, datname, usename, application_name, \
client_addr, client_port, state, wait_event_type, wait_event, backend_type, xact_start, \
query_start, state_change, query FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() \
ORDER BY backend_start, pid";
/// The usual fleet one-liner (psql connects to `postgres`, so its own session is not in `batch`).
const PSQL_TERMINATE: &str =
    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'batch'";
/// The simulated clients per database, as the bench's admin connections see them.
const CLIENTS: &str = "SELECT count(*) FILTER (WHERE datname = 'app'), \
count(*) FILTER (WHERE datname = 'batch') FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND usename = 'sandbox_plain'";

/// `ls` and `kill` over many servers: pgkill vs a psql loop vs `xargs -P`, peak RSS.
#[derive(Debug, clap::Parser)]
#[command(name = "fleet")]
struct Args {
    /// Sandbox servers to start.
    #[arg(long, default_value_t = 50)]
    servers: usize,
    /// Client sessions per server.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Of those, sessions per server in database `batch` (what `kill --db batch` ends).
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Timed runs of each method (median and max are printed), after one warm-up.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// pgkill's `--parallel` and `xargs -P`.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Servers started at once while setting up.
    #[arg(long, default_value_t = 8)]
    start_parallel: usize,
    /// PostgreSQL major version (default: the newest installed).
    #[arg(long, value_name = "MAJOR")]
    pg_version: Option<u32>,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
    /// The psql binary (default: the installation's, else the distribution's newest).
    #[arg(long, value_name = "PATH")]
    psql: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    use clap::Parser;
    let args = Args::parse();
    anyhow::ensure!(
        args.servers > 0 && args.runs > 0 && args.parallel > 0 && args.start_parallel > 0,
        "--servers, --runs, --parallel and --start-parallel must be at least 1"
    );
    anyhow::ensure!(
        args.batch > 0 && args.batch <= args.sessions,
        "--batch must be between 1 and --sessions"
    );
    anyhow::ensure!(args.parallel <= 1000, "--parallel must be at most 1000");
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    if let Some(code) = pgkill_bench::launcher_main() {
        std::process::exit(code);
    }
    let args = parse_args()?;
    let pgkill = pgkill_bench::find_pgkill(args.pgkill.as_deref())?;
    let inst = match args.pg_version {
        Some(major) => Installation::for_major(major)?,
        None => Installation::newest()?,
    };
    let psql = find_psql(args.psql.as_deref(), &inst)?;
    let psql_version = output_of(Command::new(&psql).arg("--version"))?;
    let xargs_version = output_of(Command::new("xargs").arg("--version"))?;
    let xargs_version = xargs_version.lines().next().unwrap_or_default().to_owned();
    sim::raise_fd_limit();

    let began = Instant::now();
    let max_connections = u32::try_from(args.sessions)
        .unwrap_or(u32::MAX)
        .saturating_add(SPARE_CONNECTIONS);
    let sandboxes = pgkill_bench::start_sandboxes(
        &inst,
        &Options::default().max_connections(max_connections),
        args.servers,
        args.start_parallel,
    )?;
    let servers_took = began.elapsed();
    let rt = Runtime::new().context("starting the tokio runtime")?;
    let files = tempfile::tempdir().context("creating the targets' directory")?;
    let result = (|| {
        let fleet = rt.block_on(Fleet::connect(&sandboxes))?;
        let opened = Instant::now();
        let app = rt.block_on(fleet.open(APP_DB, args.sessions - args.batch))?;
        let batch = rt.block_on(fleet.open(BATCH_DB, args.batch))?;
        rt.block_on(fleet.settle(args.sessions - args.batch, args.batch))?;
        let sessions_took = opened.elapsed();
        println!(
            "fleet: {} PostgreSQL {} servers × {} client sessions ({} in {APP_DB}, {} in {BATCH_DB}; max_connections {max_connections}) · setup {:.1} s (servers {:.1} s, {} at a time; sessions {:.1} s) · {} runs after a warm-up, median and max",
            args.servers,
            inst.version,
            args.sessions,
            args.sessions - args.batch,
            args.batch,
            began.elapsed().as_secs_f64(),
            servers_took.as_secs_f64(),
            args.start_parallel,
            sessions_took.as_secs_f64(),
            args.runs,
        );
        println!(
            "pgkill: {} (--parallel {}) · psql: {} ({psql_version}) · {xargs_version} -P {} · output to a pipe",
            pgkill.display(),
            args.parallel,
            psql.display(),
            args.parallel
        );
        let bench = Bench {
            rt: &rt,
            fleet: &fleet,
            pgkill,
            psql,
            dir: files.path(),
            args: &args,
        };
        bench.write_targets(&sandboxes)?;
        let outcome = bench.run(batch);
        drop(app);
        outcome
    })();
    drop(rt);
    let stop = Instant::now();
    drop(sandboxes);
    eprintln!(
        "fleet: servers stopped in {:.1} s",
        stop.elapsed().as_secs_f64()
    );
    result
}

/// Starts the servers, `--start-parallel` at a time (the first one alone, so that the
/// version's template is built once).
/// The bench's own connections to every server, and how to open client sessions there.
struct Fleet {
    admins: Vec<Arc<Client>>,
    configs: Vec<(tokio_postgres::Config, tokio_postgres::Config)>,
}

impl Fleet {
    async fn connect(sandboxes: &[Sandbox]) -> anyhow::Result<Fleet> {
        let mut admins = Vec::with_capacity(sandboxes.len());
        let mut configs = Vec::with_capacity(sandboxes.len());
        for sb in sandboxes {
            for db in [APP_DB, BATCH_DB] {
                sb.create_database(db, None).await?;
            }
            admins.push(Arc::new(sb.admin("postgres").await?));
            // A plain role: pgkill protects superusers' sessions.
            let config = |db: &str| {
                let mut c = sb.config(db, roles::PLAIN);
                c.application_name("fleet-client");
                c
            };
            configs.push((config(APP_DB), config(BATCH_DB)));
        }
        Ok(Fleet { admins, configs })
    }

    /// Opens `per_server` idle sessions in `db` on every server.
    async fn open(&self, db: &str, per_server: usize) -> anyhow::Result<Vec<sim::Session>> {
        let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
        let mut opening = JoinSet::new();
        for (app, batch) in &self.configs {
            let config = if db == APP_DB { app } else { batch };
            for _ in 0..per_server {
                let (config, gate) = (config.clone(), Arc::clone(&gate));
                opening.spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    anyhow::Ok(sim::idle(&config).await?)
                });
            }
        }
        let mut sessions = Vec::with_capacity(self.configs.len() * per_server);
        while let Some(session) = opening.join_next().await {
            sessions.push(session.context("opening a session")??);
        }
        Ok(sessions)
    }

    /// Every server's (app, batch) client sessions.
    async fn counts(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut asking = JoinSet::new();
        for (i, admin) in self.admins.iter().enumerate() {
            let admin = Arc::clone(admin);
            asking.spawn(async move {
                let row = admin.query_one(CLIENTS, &[]).await?;
                anyhow::Ok((i, (row.try_get(0)?, row.try_get(1)?)))
            });
        }
        let mut counts = vec![(0, 0); self.admins.len()];
        while let Some(r) = asking.join_next().await {
            let (i, c) = r.context("counting sessions")??;
            counts[i] = c;
        }
        Ok(counts)
    }

    /// Waits until every server shows `app` sessions in `app` and `batch` in `batch`.
    async fn settle(&self, app: usize, batch: usize) -> anyhow::Result<()> {
        let began = Instant::now();
        let want = (app as i64, batch as i64);
        loop {
            let counts = self.counts().await?;
            let Some((i, off)) = counts.iter().enumerate().find(|(_, c)| **c != want) else {
                return Ok(());
            };
            anyhow::ensure!(
                began.elapsed() < SETTLE_LIMIT,
                "server {i} shows {} {APP_DB} and {} {BATCH_DB} sessions, expected {app} and {batch}",
                off.0,
                off.1
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no server shows a `batch` session; fails if an `app` one went.
    async fn batch_gone(&self, app: usize) -> anyhow::Result<()> {
        let began = Instant::now();
        loop {
            let counts = self.counts().await?;
            if let Some((i, c)) = counts.iter().enumerate().find(|(_, c)| c.0 != app as i64) {
                anyhow::bail!(
                    "server {i} has {} {APP_DB} sessions left of {app}: more than {BATCH_DB} was ended",
                    c.0
                );
            }
            if counts.iter().all(|c| c.1 == 0) {
                return Ok(());
            }
            let left: i64 = counts.iter().map(|c| c.1).sum();
            anyhow::ensure!(
                began.elapsed() < SETTLE_LIMIT,
                "{left} {BATCH_DB} sessions still there after {SETTLE_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Pgkill,
    PsqlLoop,
    Xargs,
}

const METHODS: [Method; 3] = [Method::Pgkill, Method::PsqlLoop, Method::Xargs];

/// The figures of one method in one case.
#[derive(Default)]
struct Samples {
    wall: Vec<Duration>,
    /// From the start until the bench saw the sessions gone (kill only).
    gone: Vec<Duration>,
    rss_kib: Vec<u64>,
}

struct Bench<'a> {
    rt: &'a Runtime,
    fleet: &'a Fleet,
    pgkill: PathBuf,
    psql: PathBuf,
    dir: &'a Path,
    args: &'a Args,
}

impl Bench<'_> {
    fn targets_file(&self) -> PathBuf {
        self.dir.join("targets.toml")
    }

    fn conninfo_file(&self) -> PathBuf {
        self.dir.join("conninfo.txt")
    }

    /// The same servers twice: `[[target]]` tables for pgkill, one connection string a
    /// line for the shell loop and `xargs`. The passwords stay in each sandbox's password
    /// file (`passfile=`).
    fn write_targets(&self, sandboxes: &[Sandbox]) -> anyhow::Result<()> {
        let mut toml = String::new();
        let mut lines = String::new();
        for (i, sb) in sandboxes.iter().enumerate() {
            let conninfo = sb.conninfo("postgres", roles::ADMIN);
            anyhow::ensure!(
                !conninfo.contains('\n'),
                "a connection string with a line break"
            );
            toml.push_str(&format!(
                "[[target]]\nname = \"s{:02}\"\nconninfo = {}\n\n",
                i + 1,
                toml_string(&conninfo)
            ));
            lines.push_str(&conninfo);
            lines.push('\n');
        }
        for (path, text) in [(self.targets_file(), toml), (self.conninfo_file(), lines)] {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn run(&self, mut batch: Vec<sim::Session>) -> anyhow::Result<()> {
        let (n, runs) = (self.args.servers, self.args.runs);
        let (app, per_batch) = (self.args.sessions - self.args.batch, self.args.batch);
        let mut problems: Vec<String> = Vec::new();

        // ls: the same sessions every run, the methods' order turning from run to run.
        let mut ls: [Samples; 3] = Default::default();
        // Every server's client sessions and the bench's own admin connection.
        let expected_rows = (n * (self.args.sessions + 1)) as u64;
        for run in 0..=runs {
            for m in rotated(run) {
                let r = measure(&self.command(m, PSQL_LS, &["ls", "--json"]), RUN_LIMIT)?;
                check_exit(&mut problems, m, "ls", &r);
                if m != Method::Pgkill && r.stdout_lines != expected_rows {
                    problems.push(format!(
                        "{} ls printed {} rows, expected {expected_rows}",
                        name(m),
                        r.stdout_lines
                    ));
                }
                if run > 0 {
                    ls[m as usize].wall.push(r.wall);
                    ls[m as usize].rss_kib.push(r.max_rss_kib);
                }
            }
        }
        let listed = self.pgkill_listed()?;
        if listed != expected_rows as usize {
            problems.push(format!(
                "pgkill ls --json listed {listed} sessions, expected {expected_rows}"
            ));
        }

        // kill: the batch sessions opened again before every run (not timed).
        let mut kill: [Samples; 3] = Default::default();
        let mut reopen = Duration::ZERO;
        for run in 0..=runs {
            for m in rotated(run) {
                if batch.is_empty() {
                    let began = Instant::now();
                    batch = self.rt.block_on(self.fleet.open(BATCH_DB, per_batch))?;
                    self.rt.block_on(self.fleet.settle(app, per_batch))?;
                    reopen = reopen.max(began.elapsed());
                }
                let began = Instant::now();
                let r = measure(
                    &self.command(m, PSQL_TERMINATE, &["kill", "--db", BATCH_DB, "-y"]),
                    RUN_LIMIT,
                )?;
                let gone = self.rt.block_on(self.fleet.batch_gone(app));
                let until_gone = began.elapsed();
                check_exit(&mut problems, m, "kill", &r);
                if let Err(e) = gone {
                    problems.push(format!("{} kill: {e:#}", name(m)));
                    self.rt.block_on(self.fleet.settle(app, 0))?;
                }
                batch.clear();
                if run > 0 {
                    kill[m as usize].wall.push(r.wall);
                    kill[m as usize].gone.push(until_gone);
                    kill[m as usize].rss_kib.push(r.max_rss_kib);
                }
            }
        }

        self.print(&mut ls, &mut kill, reopen);
        pgkill_bench::end(&problems, "run(s) did not do what they should")
    }

    fn print(&self, ls: &mut [Samples; 3], kill: &mut [Samples; 3], reopen: Duration) {
        let p = self.args.parallel;
        println!(
            "| case | method | median ms | max ms | until gone, median (max) ms | peak RSS MB |"
        );
        println!("|---|---|---:|---:|---:|---:|");
        for (case, samples) in [("ls", &mut *ls), ("kill", &mut *kill)] {
            for m in METHODS {
                let s = &mut samples[m as usize];
                let gone = if s.gone.is_empty() {
                    String::new()
                } else {
                    let max = s.gone.iter().max().copied().unwrap_or_default();
                    format!("{} ({})", ms(median(&mut s.gone)), ms(max))
                };
                let max = s.wall.iter().max().copied().unwrap_or_default();
                println!(
                    "| {case} | {} | {} | {} | {gone} | {:.1} |",
                    method_label(m, case, p),
                    ms(median(&mut s.wall)),
                    ms(max),
                    max_mb(&s.rss_kib)
                );
            }
        }
        println!(
            "(peak RSS: the highest of the runs; for psql, the largest psql process (or sh/xargs); the {BATCH_DB} sessions were reopened in at most {:.1} s between kill runs)",
            reopen.as_secs_f64()
        );

        let pgkill_ls = median(&mut ls[Method::Pgkill as usize].wall);
        let xargs_ls = median(&mut ls[Method::Xargs as usize].wall);
        let loop_ls = median(&mut ls[Method::PsqlLoop as usize].wall);
        let ratio = pgkill_ls.as_secs_f64() / xargs_ls.as_secs_f64().max(1e-9);
        let rss = max_mb(&ls[Method::Pgkill as usize].rss_kib)
            .max(max_mb(&kill[Method::Pgkill as usize].rss_kib));
        let pgkill_kill = median(&mut kill[Method::Pgkill as usize].wall);
        let xargs_kill = median(&mut kill[Method::Xargs as usize].wall);
        // Like for like: until the bench sees the sessions gone, for both (psql's
        // pg_terminate_backend returns before they are).
        let pgkill_gone = median(&mut kill[Method::Pgkill as usize].gone);
        let xargs_gone = median(&mut kill[Method::Xargs as usize].gone);
        let kill_ratio = pgkill_gone.as_secs_f64() / xargs_gone.as_secs_f64().max(1e-9);
        println!("goals (issue 14):");
        goal(
            &format!("ls: pgkill ≤ {RATIO_GOAL}× xargs -P {p} psql (median)"),
            &format!("{ratio:.2}× ({} vs {} ms)", ms(pgkill_ls), ms(xargs_ls)),
            ratio <= RATIO_GOAL,
        );
        goal(
            &format!("ls: pgkill under {} ms (median)", LS_LIMIT.as_millis()),
            &format!("{} ms", ms(pgkill_ls)),
            pgkill_ls < LS_LIMIT,
        );
        goal(
            &format!(
                "kill: pgkill ≤ {RATIO_GOAL}× xargs -P {p} psql until the sessions are gone (median)"
            ),
            &format!(
                "{kill_ratio:.2}× ({} vs {} ms)",
                ms(pgkill_gone),
                ms(xargs_gone)
            ),
            kill_ratio <= RATIO_GOAL,
        );
        goal(
            &format!("pgkill peak RSS under {RSS_GOAL_MB:.0} MB (ls and kill)"),
            &format!("{rss:.1} MB"),
            rss < RSS_GOAL_MB,
        );
        println!(
            "for reference: ls pgkill vs the psql loop {:.2}×; kill pgkill's own time vs xargs -P {p} {:.2}× (pgkill's includes waiting until the sessions are gone, psql's does not)",
            pgkill_ls.as_secs_f64() / loop_ls.as_secs_f64().max(1e-9),
            pgkill_kill.as_secs_f64() / xargs_kill.as_secs_f64().max(1e-9),
        );
    }

    /// How many sessions `pgkill ls --json` lists (one untimed run, output parsed by
    /// counting its `"pid":` keys, one per session).
    fn pgkill_listed(&self) -> anyhow::Result<usize> {
        let out = self
            .command(Method::Pgkill, "", &["ls", "--json"])
            .output()
            .context("running pgkill")?;
        anyhow::ensure!(
            out.status.success(),
            "pgkill ls --json exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .matches("\"pid\":")
            .count())
    }

    /// The command of method `m`: pgkill with `pgkill_args` over the targets file, else
    /// psql running `sql` on every server (one after the other, or `xargs -P`). No `PG*`
    /// variable from this environment reaches them.
    fn command(&self, m: Method, sql: &str, pgkill_args: &[&str]) -> Command {
        let p = self.args.parallel.to_string();
        let psql = self.psql.display().to_string();
        let mut cmd = match m {
            Method::Pgkill => {
                let mut cmd = Command::new(&self.pgkill);
                cmd.arg("--targets")
                    .arg(self.targets_file())
                    .args(["--parallel", &p])
                    .args(pgkill_args);
                cmd
            }
            Method::PsqlLoop => {
                let mut cmd = Command::new("sh");
                cmd.args([
                    "-c",
                    r#"while IFS= read -r c; do "$FLEET_PSQL" -X -A -t -d "$c" -c "$FLEET_SQL" || exit 1; done < "$1""#,
                    "psql-loop",
                ])
                .arg(self.conninfo_file());
                cmd
            }
            Method::Xargs => {
                let mut cmd = Command::new("xargs");
                cmd.arg("-a")
                    .arg(self.conninfo_file())
                    .args(["-d", "\n", "-P", &p, "-I", "{}"])
                    .args([&psql, "-X", "-A", "-t", "-d", "{}", "-c", sql]);
                cmd
            }
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") && key != "PGKILL_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.env("FLEET_PSQL", &psql)
            .env("FLEET_SQL", sql)
            .env("PGKILL_STATE_DIR", self.dir.join("state"));
        cmd
    }
}

/// The methods in a different order every run, so none always goes first.
fn rotated(run: usize) -> [Method; 3] {
    let mut m = METHODS;
    m.rotate_left(run % 3);
    m
}

fn name(m: Method) -> &'static str {
    match m {
        Method::Pgkill => "pgkill",
        Method::PsqlLoop => "psql loop",
        Method::Xargs => "xargs psql",
    }
}

fn method_label(m: Method, case: &str, parallel: usize) -> String {
    match (m, case) {
        (Method::Pgkill, "ls") => format!("pgkill --targets FILE --parallel {parallel} ls --json"),
        (Method::Pgkill, _) => {
            format!("pgkill --targets FILE --parallel {parallel} kill --db {BATCH_DB} -y")
        }
        (Method::PsqlLoop, _) => "sequential psql loop".into(),
        (Method::Xargs, _) => format!("xargs -P {parallel} psql"),
    }
}

/// A run that failed (the programs' documented success: 0; xargs: 0 when every psql was).
fn check_exit(problems: &mut Vec<String>, m: Method, case: &str, r: &Measured) {
    if !r.status.success() {
        problems.push(format!(
            "{} {case} exited with {}: {}",
            name(m),
            r.status,
            r.stderr.trim()
        ));
    }
}

fn goal(what: &str, figure: &str, met: bool) {
    println!("- {what}: {figure}: {}", if met { "met" } else { "MISSED" });
}

fn max_mb(kib: &[u64]) -> f64 {
    kib.iter().max().copied().unwrap_or_default() as f64 * 1024.0 / 1e6
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

//! Dropping a database while a pool of superuser clients reconnects within 1 ms (issue 4),
//! the case `REVOKE CONNECT` cannot stop. Three methods side by side in one run, on one
//! sandbox server per PostgreSQL version, each on a fresh database with a fresh pool:
//!
//! 1. `pgkill drop DB -y` (the release binary beside this one), whole process timed;
//! 2. `DROP DATABASE … WITH (FORCE)` on an open admin connection (13+ only);
//! 3. the common recipe on an open admin connection: `SELECT pg_catalog.pg_terminate_backend(pid) …`,
//!    then `DROP DATABASE` as a separate statement (expected to fail with 55006 after
//!    the server's ~5 s wait, on every version).
//!
//! A trial succeeds when the method reports success and, for pgkill, the database is
//! really gone from `pg_database`. Leftovers are dropped (fence, terminate, drop) before
//! the next trial, outside the timing.
//!
//! Usage (pgkill's release binary first; it is looked for beside this one):
//!
//! ```sh
//! cargo build --release -p pgkill
//! cargo run --release -p pgkill-bench --bin drop-storm [-- --trials 5 --clients 50 --versions 10,13,18]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_bench::{measure, median, ms};
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};
use tokio::runtime::Runtime;
use tokio_postgres::Client;

/// The server's `max_connections`: the pool plus the admin connection and pgkill.
const MAX_CONNECTIONS: u32 = 200;
/// How soon a pool client reconnects, as connection pools do.
const RECONNECT_DELAY: Duration = Duration::from_millis(1);
/// A pgkill run is killed after this long.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How long cleaning up a leftover database may take.
const CLEANUP_LIMIT: Duration = Duration::from_secs(60);
/// pgkill's median must be at most this many times FORCE's.
const RATIO_TARGET: f64 = 1.5;
/// The first version with `DROP DATABASE … WITH (FORCE)`.
const FORCE_SINCE: u32 = 13;

const EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)";
const RECIPE_TERMINATE: &str = "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_stat_activity \
WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()";

/// `pgkill drop` under a reconnect storm of superuser clients, side by side with
/// `DROP … WITH (FORCE)` (13+) and terminate-then-DROP, per version.
#[derive(Debug, clap::Parser)]
#[command(name = "drop-storm")]
struct Args {
    /// Trials per version and method.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Superuser clients reconnecting within 1 ms.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Major versions to run (default: every one installed), e.g. 10,13,18.
    #[arg(long, value_delimiter = ',')]
    versions: Option<Vec<u32>>,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
    /// Pause in ms between the recipe's terminate and its DROP (default 0: back to back on
    /// one connection, as `psql -c … -c …` runs them).
    #[arg(long = "recipe-gap", value_name = "MS", default_value = "0",
          value_parser = |s: &str| s.parse::<u64>().map(Duration::from_millis).map_err(|e| e.to_string()))]
    recipe_gap: Duration,
    /// Diagnostics: keep each pgkill run's stderr (set PGKILL_LOG=debug for more) and each
    /// server's log with every statement's duration (slows things a little).
    #[arg(long = "log-dir", value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    use clap::Parser;
    let args = Args::parse();
    anyhow::ensure!(
        args.trials > 0 && args.clients > 0,
        "--trials and --clients must be at least 1"
    );
    anyhow::ensure!(
        args.clients + 10 <= MAX_CONNECTIONS as usize,
        "--clients must leave room for the admin connections (at most {})",
        MAX_CONNECTIONS - 10
    );
    Ok(args)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Pgkill,
    Force,
    Recipe,
}

const METHODS: [Method; 3] = [Method::Pgkill, Method::Force, Method::Recipe];

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pgkill => "pgkill drop -y",
            Method::Force => "DROP … WITH (FORCE)",
            Method::Recipe => "terminate, then DROP",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Method::Pgkill => "pgkill",
            Method::Force => "force",
            Method::Recipe => "recipe",
        }
    }

    fn index(self) -> usize {
        match self {
            Method::Pgkill => 0,
            Method::Force => 1,
            Method::Recipe => 2,
        }
    }
}

/// One timed run of one method.
#[derive(Debug, Clone)]
struct Trial {
    wall: Duration,
    ok: bool,
    /// Why it failed (a SQLSTATE or a short reason); empty on success.
    failure: String,
}

/// Every trial of every method on one server version.
#[derive(Debug)]
struct VersionRun {
    version: String,
    trials: [Vec<Trial>; 3],
}

fn main() -> anyhow::Result<()> {
    if let Some(code) = pgkill_bench::launcher_main() {
        std::process::exit(code);
    }
    let args = parse_args()?;
    let pgkill = pgkill_bench::find_pgkill(args.pgkill.as_deref())?;
    let installations = pick_versions(args.versions.as_deref())?;
    if let Some(dir) = &args.log_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    sim::raise_fd_limit();
    let state_dir = tempfile::tempdir().context("creating pgkill's state directory")?;
    let rt = Runtime::new().context("starting the tokio runtime")?;
    let bench = Bench {
        rt: &rt,
        pgkill: &pgkill,
        state_dir: state_dir.path(),
        clients: args.clients,
        recipe_gap: args.recipe_gap,
        log_dir: args.log_dir.as_deref(),
    };

    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for inst in &installations {
        eprintln!(
            "== PostgreSQL {} ({})",
            inst.version,
            inst.bin_dir.display()
        );
        match bench.run_version(inst, args.trials) {
            Ok(run) => runs.push(run),
            Err(e) => {
                eprintln!("PostgreSQL {}: {e:#}", inst.version);
                errors.push(format!("PostgreSQL {}: {e:#}", inst.version));
            }
        }
    }

    let problems = print_table(&runs, &args, &pgkill);
    for e in &errors {
        println!("error: {e}");
    }
    for p in &problems {
        println!("problem: {p}");
    }
    anyhow::ensure!(
        errors.is_empty() && problems.is_empty(),
        "{} version(s) could not be measured, {} run(s) did not do what they should",
        errors.len(),
        problems.len()
    );
    Ok(())
}

/// The installations to measure: `--versions`, else every one found.
fn pick_versions(wanted: Option<&[u32]>) -> anyhow::Result<Vec<Installation>> {
    let found = Installation::discover();
    let installed = || {
        found
            .iter()
            .map(|i| i.version.major.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(wanted) = wanted else {
        anyhow::ensure!(
            !found.is_empty(),
            "no PostgreSQL 10–18 found: run scripts/fetch-postgres (or set PGKILL_PG_BIN)"
        );
        return Ok(found);
    };
    let mut picked = Vec::new();
    for major in wanted {
        let inst = found
            .iter()
            .find(|i| i.version.major == *major)
            .with_context(|| {
                format!(
                    "PostgreSQL {major} is not installed (found: {}); run scripts/fetch-postgres",
                    installed()
                )
            })?;
        picked.push(inst.clone());
    }
    Ok(picked)
}

struct Bench<'a> {
    rt: &'a Runtime,
    pgkill: &'a Path,
    state_dir: &'a Path,
    clients: usize,
    recipe_gap: Duration,
    log_dir: Option<&'a Path>,
}

impl Bench<'_> {
    fn run_version(&self, inst: &Installation, trials: usize) -> anyhow::Result<VersionRun> {
        let mut options = Options::default().max_connections(MAX_CONNECTIONS);
        if self.log_dir.is_some() {
            options = options
                .setting("log_min_duration_statement", "0")
                .setting("log_line_prefix", "%m [%p] %a: ");
        }
        let sandbox = Sandbox::start(inst, &options).context("starting the sandbox")?;
        let major = sandbox.version().major;
        let admin = self
            .rt
            .block_on(sandbox.admin("postgres"))
            .context("connecting to postgres as the admin")?;
        let mut run = VersionRun {
            version: sandbox.version().to_string(),
            trials: [Vec::new(), Vec::new(), Vec::new()],
        };
        for trial in 0..trials {
            // Rotate the order so that no method always runs first.
            let mut order = METHODS;
            order.rotate_left(trial % METHODS.len());
            for method in order {
                if method == Method::Force && major < FORCE_SINCE {
                    continue;
                }
                let db = format!("storm_{}_{trial}", method.short());
                let result = self.trial(&sandbox, &admin, method, &db, trial)?;
                run.trials[method.index()].push(result);
            }
        }
        if let Some(dir) = self.log_dir {
            let file = dir.join(format!("pg{major}-server.log"));
            std::fs::copy(sandbox.log_file(), &file)
                .with_context(|| format!("copying the server log to {}", file.display()))?;
        }
        Ok(run)
    }

    /// Creates `db`, starts the pool in it, times `method`, stops the pool and drops
    /// whatever is left.
    fn trial(
        &self,
        sandbox: &Sandbox,
        admin: &Client,
        method: Method,
        db: &str,
        trial: usize,
    ) -> anyhow::Result<Trial> {
        let major = sandbox.version().major;
        self.rt
            .block_on(cleanup(admin, db, major))
            .with_context(|| format!("removing an old {db}"))?;
        self.rt
            .block_on(admin.batch_execute(&format!("CREATE DATABASE {}", quote_ident(db))))
            .with_context(|| format!("creating {db}"))?;
        let pool = self
            .rt
            .block_on(sim::pool(
                &sandbox.config(db, roles::SUPERUSER),
                sim::PoolOptions {
                    clients: self.clients,
                    reconnect_delay: RECONNECT_DELAY,
                },
            ))
            .with_context(|| format!("starting {} superuser clients in {db}", self.clients))?;
        let before = pool.stats();

        let result = match method {
            Method::Pgkill => self.pgkill_drop(sandbox, admin, db, trial)?,
            Method::Force => {
                let sql = format!("DROP DATABASE {} WITH (FORCE)", quote_ident(db));
                let began = Instant::now();
                let r = self.rt.block_on(admin.batch_execute(&sql));
                statement_trial(began.elapsed(), r)
            }
            Method::Recipe => {
                let drop = format!("DROP DATABASE {}", quote_ident(db));
                let began = Instant::now();
                let r = self.rt.block_on(async {
                    admin.query(RECIPE_TERMINATE, &[&db]).await?;
                    if !self.recipe_gap.is_zero() {
                        tokio::time::sleep(self.recipe_gap).await;
                    }
                    admin.batch_execute(&drop).await
                });
                statement_trial(began.elapsed(), r)
            }
        };

        let after = self.rt.block_on(pool.stop());
        eprintln!(
            "pg{major} trial {} {:<7} {:>8} ms {:<4}{} · pool during and after: {} connects, ended {}, refused {}",
            trial + 1,
            method.short(),
            ms(result.wall),
            if result.ok { "ok" } else { "FAIL" },
            if result.ok { String::new() } else { format!(" ({})", result.failure) },
            after.connects - before.connects,
            counts(&after.ended),
            counts(&after.refused),
        );
        self.rt
            .block_on(cleanup(admin, db, major))
            .with_context(|| format!("dropping what is left of {db}"))?;
        Ok(result)
    }

    fn pgkill_drop(
        &self,
        sandbox: &Sandbox,
        admin: &Client,
        db: &str,
        trial: usize,
    ) -> anyhow::Result<Trial> {
        let mut cmd = Command::new(self.pgkill);
        // Only the given connection settings, none from the environment.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") && name != "PGKILL_LOG" {
                cmd.env_remove(name);
            }
        }
        let port = sandbox.port().to_string();
        cmd.env("PGKILL_STATE_DIR", self.state_dir)
            .env("PGPASSFILE", sandbox.passfile())
            .args(["-h", sandbox.host(), "-p", &port, "-U", roles::ADMIN])
            .args(["drop", db, "-y"]);
        let started = unix_now();
        let m = measure(&cmd, RUN_LIMIT)?;
        if let Some(dir) = self.log_dir {
            let file = dir.join(format!(
                "pg{}-trial{}.log",
                sandbox.version().major,
                trial + 1
            ));
            let text = format!(
                "launched at {started} (Unix s), wall {} ms, {}\n{}",
                ms(m.wall),
                m.status,
                m.stderr
            );
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        }
        let gone = !self.rt.block_on(exists(admin, db))?;
        let failure = match (m.status.code(), gone) {
            (Some(0), true) => String::new(),
            (Some(0), false) => "exit 0 but the database is still there".to_owned(),
            _ => format!(
                "{}: {}",
                m.status,
                m.stderr.lines().last().unwrap_or_default().trim()
            ),
        };
        Ok(Trial {
            wall: m.wall,
            ok: failure.is_empty(),
            failure,
        })
    }
}

/// Now in Unix seconds with microseconds, to line pgkill runs up with the server log.
fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:06}", now.as_secs(), now.subsec_micros())
}

fn statement_trial(wall: Duration, result: Result<(), tokio_postgres::Error>) -> Trial {
    match result {
        Ok(()) => Trial {
            wall,
            ok: true,
            failure: String::new(),
        },
        Err(e) => Trial {
            wall,
            ok: false,
            failure: e
                .code()
                .map(|c| c.code().to_owned())
                .unwrap_or_else(|| e.to_string()),
        },
    }
}

async fn exists(admin: &Client, db: &str) -> anyhow::Result<bool> {
    Ok(admin
        .query_one(EXISTS, &[&db])
        .await
        .context("looking the database up in pg_database")?
        .try_get(0)?)
}

/// Drops `db` if it exists: fence it, then terminate its sessions and drop it until the
/// drop goes through (no client reconnects once fenced).
async fn cleanup(admin: &Client, db: &str, major: u32) -> anyhow::Result<()> {
    if !exists(admin, db).await? {
        return Ok(());
    }
    let name = quote_ident(db);
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .context("fencing")?;
    let drop = if major >= FORCE_SINCE {
        format!("DROP DATABASE {name} WITH (FORCE)")
    } else {
        format!("DROP DATABASE {name}")
    };
    let began = Instant::now();
    loop {
        admin
            .query(RECIPE_TERMINATE, &[&db])
            .await
            .context("terminating")?;
        match admin.batch_execute(&drop).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && began.elapsed() < CLEANUP_LIMIT =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e).context("dropping"),
        }
    }
}

/// A double-quoted SQL identifier (the names here are generated, but still).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "-".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median and max of all trials (failures included); a figure taken from a failed
/// trial is marked ✗.
fn stats(trials: &[Trial]) -> (Duration, String, String) {
    let mut sorted: Vec<&Trial> = trials.iter().collect();
    sorted.sort_by_key(|t| t.wall);
    let cell = |t: Option<&&Trial>| match t {
        Some(t) if t.ok => ms(t.wall),
        Some(t) => format!("{} ✗", ms(t.wall)),
        None => "-".to_owned(),
    };
    // The same element `median` picks (the upper middle).
    let mid = sorted.get(sorted.len() / 2);
    let mut walls: Vec<Duration> = trials.iter().map(|t| t.wall).collect();
    (median(&mut walls), cell(mid), cell(sorted.last()))
}

/// Prints the table; returns the runs that did not do what they should (pgkill or FORCE
/// failing; the recipe failing is expected).
fn print_table(runs: &[VersionRun], args: &Args, pgkill: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let versions = runs
        .iter()
        .map(|r| r.version.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "drop-storm: PostgreSQL {versions} · {} superuser clients reconnecting within {} ms · {} trials per method · {cpus} CPUs",
        args.clients,
        RECONNECT_DELAY.as_millis(),
        args.trials
    );
    let gap = if args.recipe_gap.is_zero() {
        "back to back".to_owned()
    } else {
        format!("{} ms apart", args.recipe_gap.as_millis())
    };
    println!(
        "pgkill: {} (whole process: start, connect, preflight, fence, drain, drop) · FORCE and recipe (terminate and DROP {gap}): statements on an open admin connection · ms, median / max of all trials, ✗ = from a failed trial",
        pgkill.display()
    );
    println!("| PG | method | success | median | max | failures | vs FORCE | ≤ {RATIO_TARGET}× FORCE | 100 % success |");
    println!("|---|---|---:|---:|---:|---|---:|---|---|");
    for run in runs {
        let force = &run.trials[Method::Force.index()];
        let force_median = (!force.is_empty()).then(|| stats(force).0);
        for method in METHODS {
            let trials = &run.trials[method.index()];
            if trials.is_empty() {
                println!(
                    "| {} | {} | n/a | n/a | n/a | (PostgreSQL {FORCE_SINCE}+) | | | |",
                    run.version,
                    method.name()
                );
                continue;
            }
            let ok = trials.iter().filter(|t| t.ok).count();
            let (med, med_cell, max_cell) = stats(trials);
            let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
            for t in trials.iter().filter(|t| !t.ok) {
                *failures.entry(t.failure.as_str()).or_default() += 1;
            }
            let failures = failures
                .iter()
                .map(|(f, n)| format!("{f} ×{n}"))
                .collect::<Vec<_>>()
                .join("; ");
            let (ratio, ratio_ok, success_ok) = match method {
                Method::Pgkill => {
                    let (ratio, ratio_ok) = match force_median {
                        Some(f) => {
                            let r = med.as_secs_f64() / f.as_secs_f64().max(1e-9);
                            (format!("{r:.2}×"), verdict(r <= RATIO_TARGET).to_owned())
                        }
                        None => ("n/a".to_owned(), "n/a (no FORCE)".to_owned()),
                    };
                    (ratio, ratio_ok, verdict(ok == trials.len()).to_owned())
                }
                _ => (String::new(), String::new(), String::new()),
            };
            if ok < trials.len() && method != Method::Recipe {
                for (i, t) in trials.iter().enumerate().filter(|(_, t)| !t.ok) {
                    problems.push(format!(
                        "PostgreSQL {} {} trial {}: {}",
                        run.version,
                        method.name(),
                        i + 1,
                        t.failure
                    ));
                }
            }
            println!(
                "| {} | {} | {ok}/{} | {med_cell} | {max_cell} | {failures} | {ratio} | {ratio_ok} | {success_ok} |",
                run.version,
                method.name(),
                trials.len(),
            );
        }
    }
    problems
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

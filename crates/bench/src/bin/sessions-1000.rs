//! pgkill against the psql recipe with 1,000 real client sessions (issue 3), side by side
//! in one run on one sandbox server:
//!
//! - `pgkill ls` (table and `--json`) against `psql -Atc` running the equivalent
//!   `pg_stat_activity` query: wall time, median and min over the runs;
//! - `pgkill kill -y --db bench` (which waits until every target is gone) against the
//!   one-liner `SELECT count(pg_catalog.pg_terminate_backend(pid)) …` followed by polling with psql
//!   until no session is left; the sessions are opened anew before every run (not timed);
//! - the peak RSS of the pgkill and psql processes (see [`pgkill_bench::measure`]).
//!
//! Usage (pgkill's release binary first; it is looked for beside this one):
//!
//! ```sh
//! cargo build --release -p pgkill
//! cargo run --release -p pgkill-bench --bin sessions-1000 [-- --sessions 1000 --runs 5 --pg-version 15]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgkill_bench::{find_psql, measure, median, output_of, Measured};
use pgkill_sandbox::{roles, sim, Installation, Options, Sandbox};

const DB: &str = "bench";
/// Every tenth session holds an open transaction; the others are idle.
const IN_TRANSACTION_EVERY: usize = 10;
/// A measured program is killed after this long.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How long the psql baseline may poll before the run counts as failed.
const POLL_LIMIT: Duration = Duration::from_secs(60);
const LS_RATIO_TARGET: f64 = 1.2;
const KILL_LIMIT: Duration = Duration::from_millis(1000);
const RSS_TARGET_MB: f64 = 20.0;

/// What pgkill shows, from `pg_stat_activity`, for the client sessions of `bench`.
const PSQL_LS: &str = "SELECT pid, backend_start, datname, usename, application_name, \
client_addr, client_port, state, wait_event_type, wait_event, backend_type, xact_start, \
query_start, state_change, query FROM pg_stat_activity \
WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid() AND datname = 'bench' \
ORDER BY backend_start, pid";
const PSQL_TERMINATE: &str =
    "SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM pg_stat_activity \
WHERE datname = 'bench' AND pid <> pg_catalog.pg_backend_pid()";
const PSQL_POLL: &str = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench'";
const CLIENTS_LEFT: &str = "SELECT count(*) FROM pg_stat_activity \
WHERE datname = 'bench' AND backend_type = 'client backend'";

/// `ls` and `kill` of 1,000 sessions, side by side with psql, and pgkill's peak RSS.
#[derive(Debug, clap::Parser)]
#[command(name = "sessions-1000")]
struct Args {
    /// Client sessions to open.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Runs of each measurement (median and min are printed).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// PostgreSQL major version (default: the newest installed).
    #[arg(long, value_name = "MAJOR")]
    pg_version: Option<u32>,
    /// The pgkill binary (default: beside this program).
    #[arg(long, value_name = "PATH")]
    pgkill: Option<PathBuf>,
    /// The psql binary.
    #[arg(long, value_name = "PATH")]
    psql: Option<PathBuf>,
    /// Once the sessions are open, print how to connect and wait SECS seconds before
    /// measuring (to look at pgkill by hand).
    #[arg(long, value_name = "SECS")]
    hold: Option<u64>,
}

fn parse_args() -> anyhow::Result<Args> {
    use clap::Parser;
    let args = Args::parse();
    anyhow::ensure!(
        args.sessions > 0 && args.runs > 0,
        "--sessions and --runs must be at least 1"
    );
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

    sim::raise_fd_limit();
    let max_connections = u32::try_from(args.sessions + 200)
        .unwrap_or(u32::MAX)
        .max(1200);
    let sandbox = Sandbox::start(&inst, &Options::default().max_connections(max_connections))?;
    let rt = tokio::runtime::Runtime::new()?;
    let bench = Bench {
        sandbox: &sandbox,
        rt: &rt,
        pgkill,
        psql,
        sessions: args.sessions,
    };
    let result = bench.run(args.runs, args.hold, &psql_version);
    drop(rt);
    drop(sandbox);
    result
}

struct Bench<'a> {
    sandbox: &'a Sandbox,
    rt: &'a tokio::runtime::Runtime,
    pgkill: PathBuf,
    psql: PathBuf,
    sessions: usize,
}

/// Figures of one comparison row.
#[derive(Default)]
struct Samples {
    pgkill: Vec<Duration>,
    psql: Vec<Duration>,
    pgkill_rss: Vec<u64>,
    psql_rss: Vec<u64>,
}

impl Bench<'_> {
    fn run(&self, runs: usize, hold: Option<u64>, psql_version: &str) -> anyhow::Result<()> {
        let n = self.sessions;
        let admin = self.rt.block_on(async {
            self.sandbox.create_database(DB, None).await?;
            self.sandbox.admin("postgres").await
        })?;
        let mut problems: Vec<String> = Vec::new();

        let began = Instant::now();
        let sessions = self.open_sessions(&admin)?;
        let setup = began.elapsed();
        if let Some(secs) = hold {
            eprintln!(
                "holding {n} sessions for {secs} s: PGPASSFILE={} {} -h {} -p {} -U {} ls --db {DB}",
                self.sandbox.passfile().display(),
                self.pgkill.display(),
                self.sandbox.host(),
                self.sandbox.port(),
                roles::ADMIN
            );
            std::thread::sleep(Duration::from_secs(secs));
        }

        // ls: the same sessions for every run; one untimed warm-up of each.
        let (mut table, mut json) = (Samples::default(), Samples::default());
        let mut lines = (0, 0, 0);
        for run in 0..=runs {
            let timed = run > 0;
            let order = if run % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
            for which in order {
                let m = match which {
                    0 => self.pgkill_ls(false)?,
                    1 => self.pgkill_ls(true)?,
                    _ => self.psql_ls()?,
                };
                let what = ["pgkill ls", "pgkill ls --json", "psql ls"][which];
                if !m.status.success() {
                    problems.push(format!(
                        "{what} exited with {}: {}",
                        m.status,
                        m.stderr.trim()
                    ));
                }
                if !timed {
                    continue;
                }
                match which {
                    0 => {
                        lines.0 = m.stdout_lines;
                        table.pgkill.push(m.wall);
                        table.pgkill_rss.push(m.max_rss_kib);
                    }
                    1 => {
                        lines.1 = m.stdout_lines;
                        json.pgkill.push(m.wall);
                        json.pgkill_rss.push(m.max_rss_kib);
                    }
                    _ => {
                        lines.2 = m.stdout_lines;
                        for s in [&mut table, &mut json] {
                            s.psql.push(m.wall);
                            s.psql_rss.push(m.max_rss_kib);
                        }
                    }
                }
            }
        }
        if (lines.0 as usize) < n || lines.2 as usize != n {
            problems.push(format!(
                "ls printed {} lines (pgkill table) and {} (psql) for {n} sessions",
                lines.0, lines.2
            ));
        }
        drop(sessions);
        self.wait_clients(&admin, 0)?;

        // kill: new sessions before every run (not timed), pgkill and psql alternating first.
        let mut kill = Samples::default();
        let mut terminate_only = Vec::new();
        let mut polls = Vec::new();
        for run in 0..runs {
            for pgkill_turn in [run % 2 == 0, run % 2 != 0] {
                let sessions = self.open_sessions(&admin)?;
                if pgkill_turn {
                    let m = self.pgkill_kill()?;
                    let left = self.clients_left(&admin)?;
                    if m.status.code() != Some(0) || left != 0 {
                        problems.push(format!(
                            "pgkill kill run {}: exit {}, {left} client sessions left in {DB}: {}",
                            run + 1,
                            m.status,
                            m.stderr.trim()
                        ));
                    }
                    kill.pgkill.push(m.wall);
                    kill.pgkill_rss.push(m.max_rss_kib);
                } else {
                    let (one_liner, total, n_polls) = self.psql_kill(&mut problems)?;
                    kill.psql.push(total);
                    kill.psql_rss.push(one_liner.max_rss_kib);
                    terminate_only.push(one_liner.wall);
                    polls.push(n_polls);
                }
                // Every session was terminated: drop the handles.
                drop(sessions);
                self.wait_clients(&admin, 0)?;
            }
        }

        polls.sort_unstable();
        let polls = polls.get(polls.len() / 2).copied().unwrap_or_default();
        println!(
            "sessions-1000: PostgreSQL {} · {n} client sessions in database {DB} ({} idle, {} idle in transaction; opened in {:.1} s) · {runs} runs, median (min)",
            self.sandbox.version(),
            n - n / IN_TRANSACTION_EVERY,
            n / IN_TRANSACTION_EVERY,
            setup.as_secs_f64(),
        );
        println!(
            "pgkill: {} · psql: {} ({psql_version}) · output to a pipe",
            self.pgkill.display(),
            self.psql.display()
        );
        println!("| case | pgkill | psql | ratio | target | |");
        println!("|---|---:|---:|---:|---|---|");
        let ls_row = |name: &str, s: &mut Samples| {
            let (p, q) = (median(&mut s.pgkill), median(&mut s.psql));
            let ratio = ratio(p, q);
            row(
                name,
                &time_cell(p, &s.pgkill),
                &time_cell(q, &s.psql),
                ratio,
                &format!("≤ {LS_RATIO_TARGET}x psql"),
                ratio <= LS_RATIO_TARGET,
            );
        };
        ls_row("ls (table)", &mut table);
        ls_row("ls --json", &mut json);
        let (p, q) = (median(&mut kill.pgkill), median(&mut kill.psql));
        row(
            &format!("kill {n} (psql: terminate, then polls until 0: {polls})"),
            &time_cell(p, &kill.pgkill),
            &time_cell(q, &kill.psql),
            ratio(p, q),
            &format!("≤ psql and < {} ms", KILL_LIMIT.as_millis()),
            p <= q && p < KILL_LIMIT && problems.iter().all(|e| !e.starts_with("pgkill kill")),
        );
        let t = median(&mut terminate_only);
        println!(
            "| psql terminate one-liner alone | | {} | {:.2}x | (for reference) | |",
            time_cell(t, &terminate_only),
            ratio(p, t)
        );
        for (name, s) in [
            ("peak RSS ls (table)", &table),
            ("peak RSS ls --json", &json),
            ("peak RSS kill", &kill),
        ] {
            let (p, q) = (max_mb(&s.pgkill_rss), max_mb(&s.psql_rss));
            row(
                name,
                &format!("{p:.1} MB"),
                &format!("{q:.1} MB"),
                p / q.max(1e-9),
                &format!("pgkill < {RSS_TARGET_MB:.0} MB"),
                p < RSS_TARGET_MB,
            );
        }
        println!(
            "(times: median (min) in ms; RSS: highest of the runs; ls printed {} lines (table), {} (json), {} (psql))",
            lines.0, lines.1, lines.2
        );
        pgkill_bench::end(&problems, "run(s) did not do what they should")
    }

    /// Opens the sessions in `bench` (as a plain role: pgkill protects superusers' sessions)
    /// and waits until the server shows them all.
    fn open_sessions(&self, admin: &tokio_postgres::Client) -> anyhow::Result<Vec<sim::Session>> {
        let n = self.sessions;
        let mix = pgkill_bench::Mix {
            sessions: n,
            in_transaction_every: IN_TRANSACTION_EVERY,
            active_every: 0,
            sleep: Duration::ZERO,
        };
        let config = self.sandbox.config(DB, roles::PLAIN);
        let sessions = pgkill_bench::open_mix(self.rt, &config, "bench-client", &mix)?;
        self.wait_clients(admin, n)?;
        Ok(sessions)
    }

    fn clients_left(&self, admin: &tokio_postgres::Client) -> anyhow::Result<usize> {
        let n: i64 = self
            .rt
            .block_on(admin.query_one(CLIENTS_LEFT, &[]))
            .context("counting client sessions")?
            .get(0);
        Ok(n as usize)
    }

    /// Waits until `bench` has exactly `n` client sessions.
    fn wait_clients(&self, admin: &tokio_postgres::Client, n: usize) -> anyhow::Result<()> {
        let began = Instant::now();
        loop {
            let now = self.clients_left(admin)?;
            if now == n {
                return Ok(());
            }
            anyhow::ensure!(
                began.elapsed() < POLL_LIMIT,
                "{DB} has {now} client sessions, expected {n}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A command with only the given connection settings (no `PG*` from the environment).
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") && name != "PGKILL_LOG" {
                cmd.env_remove(name);
            }
        }
        let port = self.sandbox.port().to_string();
        // The sandbox's password file, the same way for pgkill and psql.
        cmd.env("PGPASSFILE", self.sandbox.passfile()).args([
            "-h",
            self.sandbox.host(),
            "-p",
            &port,
            "-U",
            roles::ADMIN,
        ]);
        cmd
    }

    fn pgkill_ls(&self, json: bool) -> anyhow::Result<Measured> {
        let mut cmd = self.command(&self.pgkill);
        cmd.args(["ls", "--db", DB]);
        if json {
            cmd.arg("--json");
        }
        measure(&cmd, RUN_LIMIT)
    }

    fn psql(&self, sql: &str) -> Command {
        let mut cmd = self.command(&self.psql);
        cmd.args(["-X", "-d", "postgres", "-Atc", sql]);
        cmd
    }

    fn psql_ls(&self) -> anyhow::Result<Measured> {
        measure(&self.psql(PSQL_LS), RUN_LIMIT)
    }

    fn pgkill_kill(&self) -> anyhow::Result<Measured> {
        let mut cmd = self.command(&self.pgkill);
        cmd.args(["kill", "-y", "--db", DB]);
        measure(&cmd, RUN_LIMIT)
    }

    /// The psql recipe: the one-liner (measured), then `psql -Atc` polls back to back
    /// until one prints 0. Returns the one-liner's run, the total (one-liner + polling)
    /// and the number of polls.
    fn psql_kill(&self, problems: &mut Vec<String>) -> anyhow::Result<(Measured, Duration, usize)> {
        let one_liner = measure(&self.psql(PSQL_TERMINATE), RUN_LIMIT)?;
        if !one_liner.status.success() {
            problems.push(format!(
                "psql terminate exited with {}: {}",
                one_liner.status,
                one_liner.stderr.trim()
            ));
        }
        let began = Instant::now();
        let mut poll = self.psql(PSQL_POLL);
        let mut polls = 0;
        loop {
            polls += 1;
            let out = poll.output().context("running psql")?;
            if !out.status.success() {
                anyhow::bail!(
                    "psql poll exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if String::from_utf8_lossy(&out.stdout).trim() == "0" {
                break;
            }
            anyhow::ensure!(
                began.elapsed() < POLL_LIMIT,
                "sessions still in {DB} after {POLL_LIMIT:?} of polling"
            );
        }
        let total = one_liner.wall + began.elapsed();
        Ok((one_liner, total, polls))
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn time_cell(median: Duration, samples: &[Duration]) -> String {
    let min = samples.iter().min().copied().unwrap_or_default();
    format!("{} ({})", pgkill_bench::ms(median), pgkill_bench::ms(min))
}

fn max_mb(kib: &[u64]) -> f64 {
    kib.iter().max().copied().unwrap_or_default() as f64 * 1024.0 / 1e6
}

fn row(name: &str, pgkill: &str, psql: &str, ratio: f64, target: &str, ok: bool) {
    println!(
        "| {name} | {pgkill} | {psql} | {ratio:.2}x | {target} | {} |",
        if ok { "ok" } else { "MISS" }
    );
}

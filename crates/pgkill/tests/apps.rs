//! pgkill against applications nobody here wrote: a `psycopg_pool.ConnectionPool` and a
//! SQLAlchemy engine (psycopg 3 underneath), from PyPI at pinned versions
//! (`scripts/fetch-python`), running `tests/apps/pool_app.py` as child processes, through
//! real PgBouncer processes (1.18 and 1.24.1, transaction pooling) and straight to the
//! server, on every PostgreSQL version. The applications count their acknowledged commits
//! and their errors by SQLSTATE; the tests check them against the server's table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgkill_sandbox::{
    cases, roles, Bouncer, BouncerOptions, BouncerVersion, Installation, Options, PoolMode, Sandbox,
};
use serde_json::Value;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        drain_through_the_pooler_with_psycopg_pool_and_sqlalchemy_apps,
        ls_through_the_pooler_lists_each_app_s_connections,
        drop_while_a_psycopg_pool_reconnects_to_the_server,
        drain_then_unfence_and_a_psycopg_pool_recovers,
    ]);
}

/// Which library the application pools its connections with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PsycopgPool,
    SqlAlchemy,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::PsycopgPool => "psycopg_pool",
            Kind::SqlAlchemy => "sqlalchemy",
        }
    }
}

/// Where and as whom an application connects, and how big its pool is.
struct AppSpec<'a> {
    kind: Kind,
    host: &'a str,
    port: u16,
    dbname: &'a str,
    user: &'a str,
    password: String,
    name: &'a str,
    pool_size: u32,
    workers: u32,
    /// The `writer` numbers of its workers start here (unique across the applications).
    writer_base: i32,
    /// psycopg's `prepare_threshold`: `none`, `default` (psycopg's own) or a number.
    prepare_threshold: &'a str,
}

/// The virtual environment `scripts/fetch-python` fills: `$PGKILL_PYTHON_CACHE`, default
/// `.cache/python` in the repository.
fn python() -> Result<PathBuf> {
    let venv = match std::env::var_os("PGKILL_PYTHON_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/python"),
    };
    let python = venv.join("bin/python");
    let hint = format!(
        "run `scripts/fetch-python` (creates {} with psycopg[binary], psycopg-pool and SQLAlchemy from PyPI), \
         or set PGKILL_PYTHON_CACHE to such a virtual environment",
        venv.display()
    );
    ensure!(python.is_file(), "{} not found: {hint}", python.display());
    let check = Command::new(&python)
        .args(["-c", "import psycopg, psycopg_pool, sqlalchemy"])
        .output()
        .with_context(|| format!("running {}: {hint}", python.display()))?;
    ensure!(
        check.status.success(),
        "{} cannot import psycopg, psycopg_pool and sqlalchemy ({}): {hint}",
        python.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    Ok(python)
}

/// A running application (a child process). Dropping it kills it, so a failing or
/// panicking test leaves no Python process behind.
struct App {
    name: String,
    kind: Kind,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

/// What an application reported.
#[derive(Debug, Clone, Default)]
struct Report {
    commits: usize,
    errors: BTreeMap<String, u64>,
    last_errors: Vec<String>,
    longest_wait_ms: f64,
    ports: BTreeSet<u16>,
    acknowledged: Vec<(i32, i64)>,
    /// The pool's own figures (psycopg_pool's `get_stats()`, SQLAlchemy's status line).
    pool: Value,
}

impl Report {
    fn parse(doc: &Value) -> Result<Report> {
        let errors = doc["errors"]
            .as_object()
            .ok_or_else(|| anyhow!("no errors in {doc}"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or_default()))
            .collect();
        let acknowledged = doc["acknowledged"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let w = a[0].as_i64().and_then(|w| i32::try_from(w).ok());
                let s = a[1].as_i64();
                w.zip(s).ok_or_else(|| anyhow!("bad commit {a}"))
            })
            .collect::<Result<_>>()?;
        Ok(Report {
            commits: doc["commits"]
                .as_u64()
                .and_then(|c| usize::try_from(c).ok())
                .ok_or_else(|| anyhow!("no commits in {doc}"))?,
            errors,
            last_errors: doc["last_errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect(),
            longest_wait_ms: doc["longest_wait_ms"].as_f64().unwrap_or_default(),
            ports: doc["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_u64().and_then(|p| u16::try_from(p).ok()))
                .collect(),
            acknowledged,
            pool: doc["pool"].clone(),
        })
    }
}

impl App {
    /// Starts `tests/apps/pool_app.py` and waits until its pool is open.
    fn start(spec: &AppSpec<'_>) -> Result<App> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/pool_app.py");
        let mut cmd = Command::new(python()?);
        support::clean_env(&mut cmd);
        cmd.env("PGPASSWORD", &spec.password)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(&script)
            .args(["--kind", spec.kind.as_str()])
            .args(["--host", spec.host])
            .args(["--port", &spec.port.to_string()])
            .args(["--dbname", spec.dbname])
            .args(["--user", spec.user])
            .args(["--application-name", spec.name])
            .args(["--pool-size", &spec.pool_size.to_string()])
            .args(["--workers", &spec.workers.to_string()])
            .args(["--writer-base", &spec.writer_base.to_string()])
            .args(["--prepare-threshold", spec.prepare_threshold])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = App {
            name: spec.name.to_owned(),
            kind: spec.kind,
            stdin: child.stdin.take(),
            child,
            lines,
        };
        let ready = app.next_line(Duration::from_secs(60))?;
        ensure!(
            ready.get("ready").is_some(),
            "{}: expected ready, got {ready}",
            app.name
        );
        Ok(app)
    }

    /// The next JSON line the application prints.
    fn next_line(&mut self, within: Duration) -> Result<Value> {
        let line = match self.lines.recv_timeout(within) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait()?;
                bail!(
                    "{} ({}) printed nothing for {within:?} (exit status {status:?})",
                    self.name,
                    self.kind.as_str()
                );
            }
        };
        serde_json::from_str(&line).with_context(|| format!("{}: {line}", self.name))
    }

    /// Commits, errors and ports so far.
    fn status(&mut self) -> Result<Report> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stopped"))?;
        stdin.write_all(b"status\n")?;
        stdin.flush()?;
        Report::parse(&self.next_line(Duration::from_secs(10))?)
    }

    /// Waits until the application has committed more than `after` transactions.
    fn wait_commits(&mut self, after: usize, within: Duration) -> Result<Report> {
        let began = Instant::now();
        loop {
            let report = self.status()?;
            if report.commits > after {
                return Ok(report);
            }
            ensure!(
                began.elapsed() < within,
                "{} ({}) committed nothing more than {after} in {within:?}; errors {:?}, last {:?}",
                self.name,
                self.kind.as_str(),
                report.errors,
                report.last_errors
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes its standard input (the signal to stop) and returns its final report.
    fn stop(mut self) -> Result<Report> {
        drop(self.stdin.take());
        let began = Instant::now();
        loop {
            let doc = self.next_line(Duration::from_secs(60))?;
            if doc["final"] == true {
                let report = Report::parse(&doc)?;
                while self.child.try_wait()?.is_none() {
                    ensure!(
                        began.elapsed() < Duration::from_secs(60),
                        "{} did not exit",
                        self.name
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(report);
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `shop_db` with the table the applications write to, writable by `sandbox_plain`.
async fn shop(sb: &Sandbox) -> Result<()> {
    sb.create_database("shop_db", None).await?;
    sb.admin("shop_db")
        .await?
        .batch_execute(&format!(
            "CREATE TABLE writes (writer int, seq bigint, PRIMARY KEY (writer, seq));
             GRANT INSERT, SELECT ON writes TO {}",
            roles::PLAIN
        ))
        .await?;
    Ok(())
}

/// Empties `writes` for the next round of applications (whose numbers start again).
async fn empty_writes(sb: &Sandbox) -> Result<()> {
    sb.admin("shop_db")
        .await?
        .batch_execute("TRUNCATE writes")
        .await?;
    Ok(())
}

/// The commits stored in `writes`.
async fn stored(sb: &Sandbox) -> Result<BTreeSet<(i32, i64)>> {
    Ok(sb
        .admin("shop_db")
        .await?
        .query("SELECT writer, seq FROM writes", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// The backends connected to `shop_db` now: (pid, backend_start as text).
async fn backends(sb: &Sandbox) -> Result<BTreeSet<(i32, String)>> {
    Ok(sb
        .admin("postgres")
        .await?
        .query(
            "SELECT pid, backend_start::text FROM pg_catalog.pg_stat_activity WHERE datname = 'shop_db'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Every commit the application was told about is in the table.
fn all_stored(report: &Report, stored: &BTreeSet<(i32, i64)>, who: &str) -> Result<()> {
    let lost: Vec<_> = report
        .acknowledged
        .iter()
        .filter(|a| !stored.contains(a))
        .collect();
    ensure!(
        lost.is_empty(),
        "{who}: {} of {} acknowledged commits are not in the table: {:?}",
        lost.len(),
        report.acknowledged.len(),
        &lost[..lost.len().min(10)]
    );
    Ok(())
}

/// `pgkill --pgbouncer CONSOLE ARGS…` as the bootstrap superuser on the server itself:
/// exit code, stdout, stderr.
fn pgkill_via(sb: &Sandbox, bouncer: &Bouncer, args: &[&str]) -> Result<(i32, String, String)> {
    let console = format!(
        "host={} port={} user={} password={}",
        bouncer.host(),
        bouncer.port(),
        roles::ADMIN,
        sb.password(roles::ADMIN).unwrap_or_default()
    );
    let mut all = vec!["--pgbouncer", &console];
    all.extend_from_slice(args);
    support::run(support::pgkill(sb, roles::ADMIN, &all))
}

/// PgBouncer `version` in transaction mode with `shop` an alias of `shop_db` (pools of
/// `server_connections`), and both applications through it, committing.
fn apps_through_the_pooler(
    sb: &Sandbox,
    version: BouncerVersion,
    server_connections: u32,
) -> Result<(Bouncer, App, App)> {
    let mut options =
        BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
    options.default_pool_size = server_connections;
    let bouncer = Bouncer::start(sb, &options)?;
    let (mut pool, mut engine) = both_apps(sb, &bouncer)?;
    pool.wait_commits(20, Duration::from_secs(30))?;
    engine.wait_commits(20, Duration::from_secs(30))?;
    Ok((bouncer, pool, engine))
}

/// A psycopg_pool application and a SQLAlchemy one through the pooler's alias `shop`,
/// configured as their users must for that PgBouncer: before 1.21 psycopg may not
/// prepare statements (`prepare_threshold=None`); 1.22+ tracks them
/// (`max_prepared_statements`, 200 by default), so psycopg's default stays.
fn both_apps(sb: &Sandbox, bouncer: &Bouncer) -> Result<(App, App)> {
    let password = sb.password(roles::PLAIN).unwrap_or_default();
    let prepare_threshold = match bouncer.version() {
        BouncerVersion::V1_18 => "none",
        BouncerVersion::V1_24_1 => "default",
    };
    let spec = |kind, name, writer_base| AppSpec {
        kind,
        host: bouncer.host(),
        port: bouncer.port(),
        dbname: "shop",
        user: roles::PLAIN,
        password: password.clone(),
        name,
        pool_size: 4,
        workers: 4,
        writer_base,
        prepare_threshold,
    };
    let pool = App::start(&spec(Kind::PsycopgPool, "orders-psycopg-pool", 100))?;
    let engine = App::start(&spec(Kind::SqlAlchemy, "billing-sqlalchemy", 200))?;
    Ok((pool, engine))
}

/// Both applications through PgBouncer in transaction mode, and
/// `pgkill --pgbouncer CONSOLE drain shop_db --grace 5s --then-unfence -y`: the alias is
/// paused (the applications' queries queue), the database drained and unfenced, the alias
/// resumed. Every backend the pooler had is gone, yet the applications see no error, every
/// commit they were told about is stored, and they commit again after the drain.
async fn drain_through_the_pooler_with_psycopg_pool_and_sqlalchemy_apps(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    shop(&sb).await?;
    for version in BouncerVersion::ALL {
        empty_writes(&sb).await?;
        let (bouncer, mut pool, mut engine) = apps_through_the_pooler(&sb, version, 4)?;
        let before = backends(&sb).await?;
        let (code, out, err) = pgkill_via(
            &sb,
            &bouncer,
            &["drain", "shop_db", "--grace", "5s", "--then-unfence", "-y"],
        )?;
        let v = version.as_str();
        ensure!(
            code == 0
                && out.contains("Paused at PgBouncer: shop (")
                && out.contains("(applications' queries queued there instead of failing)")
                && out.contains("Resumed at PgBouncer: shop ("),
            "PgBouncer {v}: drain exit {code}\n{out}\n{err}"
        );
        let left = backends(&sb).await?;
        ensure!(
            before.is_disjoint(&left),
            "PgBouncer {v}: backends {before:?} were not drained (after: {left:?})"
        );
        let paused_line = out
            .lines()
            .find(|l| l.starts_with("Paused at PgBouncer"))
            .unwrap_or_default()
            .to_owned();
        // They go on after the unfence.
        let after = (pool.status()?.commits, engine.status()?.commits);
        pool.wait_commits(after.0 + 20, Duration::from_secs(20))?;
        engine.wait_commits(after.1 + 20, Duration::from_secs(20))?;

        let pool = pool.stop()?;
        let engine = engine.stop()?;
        let table = stored(&sb).await?;
        for (who, report) in [("psycopg_pool", &pool), ("SQLAlchemy", &engine)] {
            ensure!(
                report.errors.is_empty(),
                "PgBouncer {v}: the {who} application saw errors {:?}: {:?}",
                report.errors,
                report.last_errors
            );
            all_stored(report, &table, &format!("PgBouncer {v}, {who}"))?;
        }
        let row = support::db_row(&sb.admin("postgres").await?, "shop_db").await?;
        ensure!(
            row.as_ref().is_some_and(|r| r.0 && r.4.is_none()),
            "PgBouncer {v}: shop_db was left fenced: {row:?}"
        );
        eprintln!(
            "PgBouncer {v}: psycopg_pool {} commits (longest {} ms), SQLAlchemy {} commits \
             (longest {} ms), 0 errors; {paused_line}",
            pool.commits, pool.longest_wait_ms, engine.commits, engine.longest_wait_ms
        );
    }
    Ok(())
}

/// The application connections PgBouncer's `SHOW CLIENTS` has for `name`: their ports.
async fn clients_of(bouncer: &Bouncer, name: &str) -> Result<BTreeSet<u16>> {
    let console = bouncer.admin(roles::ADMIN).await?;
    console
        .simple_query("SHOW CLIENTS")
        .await?
        .iter()
        .filter(|r| r.get("application_name") == Some(name) && r.get("database") == Some("shop"))
        .map(|r| {
            r.get("port")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("SHOW CLIENTS row without a port"))
        })
        .collect()
}

/// `pgkill --pgbouncer CONSOLE ls --json` with both applications running through the
/// pooler: each application's connections are rows with the application's
/// `application_name` and their real client ports (the ones the application's own sockets
/// have), as many as PgBouncer's `SHOW CLIENTS` has for it.
async fn ls_through_the_pooler_lists_each_app_s_connections(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    shop(&sb).await?;
    for version in BouncerVersion::ALL {
        empty_writes(&sb).await?;
        let v = version.as_str();
        let (bouncer, mut pool, mut engine) = apps_through_the_pooler(&sb, version, 3)?;
        let mut last = String::new();
        let mut agreed = false;
        // The pools may still open a connection between the two reads: a few tries.
        for _ in 0..10 {
            let before = [
                clients_of(&bouncer, &pool.name).await?,
                clients_of(&bouncer, &engine.name).await?,
            ];
            let (code, out, err) = pgkill_via(&sb, &bouncer, &["ls", "--json", "--db", "shop_db"])?;
            ensure!(code == 0, "PgBouncer {v}: ls exit {code}\n{out}\n{err}");
            let doc: Value = serde_json::from_str(&out)?;
            let after = [
                clients_of(&bouncer, &pool.name).await?,
                clients_of(&bouncer, &engine.name).await?,
            ];
            let mut listed = [BTreeSet::new(), BTreeSet::new()];
            let mut rows = [0usize, 0];
            for row in doc["sessions"].as_array().into_iter().flatten() {
                let client = &row["pooler"]["client"];
                let Some(name) = client["application_name"].as_str() else {
                    continue;
                };
                let i = if name == pool.name {
                    0
                } else if name == engine.name {
                    1
                } else {
                    continue;
                };
                ensure!(
                    row["database"] == "shop_db"
                        && row["user"] == roles::PLAIN
                        && row["pooler"]["alias"] == "shop"
                        && row["pooler"]["pool_mode"] == "transaction"
                        && (row["kind"] == "backend" || row["kind"] == "pooled"),
                    "PgBouncer {v}: {row}"
                );
                let port = client["port"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| anyhow!("no client port: {row}"))?;
                listed[i].insert(port);
                rows[i] += 1;
            }
            let own = [pool.status()?.ports, engine.status()?.ports];
            last = format!(
                "SHOW CLIENTS before {before:?}, after {after:?}; ls listed {listed:?} in \
                 {rows:?} rows; the applications' own ports {own:?}"
            );
            if before != after {
                continue;
            }
            for i in 0..2 {
                ensure!(
                    rows[i] == listed[i].len() && listed[i] == after[i] && !listed[i].is_empty(),
                    "PgBouncer {v}: {last}"
                );
                ensure!(
                    listed[i].is_subset(&own[i]),
                    "PgBouncer {v}: ports that are not the application's own: {last}"
                );
            }
            ensure!(
                listed[0].len() == 4,
                "PgBouncer {v}: the psycopg_pool pool of 4 holds {} connections: {last}",
                listed[0].len()
            );
            agreed = true;
            break;
        }
        ensure!(agreed, "PgBouncer {v}: the pools never held still: {last}");
        eprintln!("PgBouncer {v}: {last}");
        for app in [pool, engine] {
            let name = app.name.clone();
            let report = app.stop()?;
            ensure!(
                report.errors.is_empty(),
                "{name}: errors {:?}: {:?}",
                report.errors,
                report.last_errors
            );
        }
    }
    Ok(())
}

/// A psycopg_pool application straight to the server (no pooler).
fn direct_app(sb: &Sandbox, user: &str, name: &str, size: u32) -> Result<App> {
    App::start(&AppSpec {
        kind: Kind::PsycopgPool,
        host: sb.host(),
        port: sb.port(),
        dbname: "shop_db",
        user,
        password: sb.password(user).unwrap_or_default(),
        name,
        pool_size: size,
        workers: size,
        writer_base: 0,
        prepare_threshold: "default",
    })
}

/// `pgkill drop shop_db -y` (no pooler) while a psycopg_pool application of superusers
/// keeps its pool full (min_size = max_size: every connection that is ended is replaced
/// at once): the drop succeeds, the database is gone.
async fn drop_while_a_psycopg_pool_reconnects_to_the_server(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    shop(&sb).await?;
    let mut app = direct_app(&sb, roles::SUPERUSER, "storefront", 10)?;
    app.wait_commits(50, Duration::from_secs(30))?;
    let began = Instant::now();
    let (code, out, err) = support::run(support::pgkill(
        &sb,
        roles::ADMIN,
        &["drop", "shop_db", "-y"],
    ))?;
    let took = began.elapsed();
    ensure!(code == 0, "drop exit {code}\n{out}\n{err}");
    let exists: bool = sb
        .admin("postgres")
        .await?
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_database WHERE datname = 'shop_db')",
            &[],
        )
        .await?
        .get(0);
    ensure!(!exists, "shop_db still exists after: {out}");
    let report = app.stop()?;
    // It was connected and kept trying: its connections were ended (57P01, or a socket
    // closed under it), and it went on opening new ones (refused, the database being
    // fenced, then gone).
    let failed_attempts = report.pool["connections_errors"].as_u64().unwrap_or(0);
    ensure!(
        (report.errors.contains_key("57P01") || report.errors.contains_key("OperationalError"))
            && failed_attempts > 0,
        "the pool was not ended, or did not try again: {report:?}"
    );
    eprintln!(
        "PostgreSQL {}: dropped in {took:?} while psycopg_pool reconnected; the application \
         committed {} and saw {:?}; the pool: {}",
        sb.version(),
        report.commits,
        report.errors,
        report.pool
    );
    Ok(())
}

/// `pgkill drain shop_db --then-unfence -y` (no pooler) under a psycopg_pool application:
/// its backends are ended (none is left), and once the database is unfenced the pool
/// reconnects by itself and commits again; every commit it was told about is stored.
async fn drain_then_unfence_and_a_psycopg_pool_recovers(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    shop(&sb).await?;
    let mut app = direct_app(&sb, roles::PLAIN, "storefront", 6)?;
    app.wait_commits(50, Duration::from_secs(30))?;
    let before = backends(&sb).await?;
    let (code, out, err) = support::run(support::pgkill(
        &sb,
        roles::ADMIN,
        &["drain", "shop_db", "--grace", "5s", "--then-unfence", "-y"],
    ))?;
    ensure!(code == 0, "drain exit {code}\n{out}\n{err}");
    let drained = Instant::now();
    let left = backends(&sb).await?;
    ensure!(
        before.len() >= 6 && before.is_disjoint(&left),
        "the pool's backends {before:?} were not drained (after: {left:?})"
    );
    let at_drain = app.status()?;
    let again = app.wait_commits(at_drain.commits + 50, Duration::from_secs(30))?;
    let recovered = drained.elapsed();
    let report = app.stop()?;
    all_stored(&report, &stored(&sb).await?, "psycopg_pool")?;
    eprintln!(
        "PostgreSQL {}: after the drain the pool committed {} more within {recovered:?} \
         (errors during the drain: {:?}, longest wait {} ms; the pool: {})",
        sb.version(),
        again.commits - at_drain.commits,
        report.errors,
        report.longest_wait_ms,
        report.pool
    );
    Ok(())
}

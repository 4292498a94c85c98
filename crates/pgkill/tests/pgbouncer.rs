//! pgkill and PgBouncer, through the real binary against real PgBouncer processes (1.18
//! and 1.24.1, session and transaction pooling) in front of every PostgreSQL version
//! (issue 11). Pointed at the pooler's port by mistake, pgkill says in one line that
//! this is PgBouncer (and its version), not PostgreSQL, and exits 2, whether the pooler
//! refuses pgkill's startup options, drops them (`ignore_startup_parameters = options`),
//! or is its admin console; and it never changes a setting on a pooled server
//! connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::{
    cases, roles, Bouncer, BouncerOptions, BouncerVersion, Installation, Options, PoolMode, Sandbox,
};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

mod support;

use support::{console, shop_is_paused, shop_state, works};
#[path = "support/tmux.rs"]
mod tmux;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        pointed_at_pgbouncer_it_says_so,
        ls_shows_the_applications_behind_the_pooler,
        an_unreachable_pooler_stops_every_command,
        free_slot_through_the_pooler_ends_what_serves_nobody_first,
        drain_through_the_pooler_costs_the_applications_nothing,
        a_pooler_that_refuses_stops_the_drain_before_any_change,
        kill_through_the_pooler_ends_what_the_user_meant,
        cancel_through_the_pooler_cancels_the_application_s_statement,
        a_transaction_that_outlasts_the_grace_at_the_pooler,
        kill_9_during_a_pooler_drain_then_unfence,
        drop_and_rename_through_the_pooler,
        drop_and_rename_through_the_pooler_are_undone,
        top_ends_applications_at_the_pooler,
        aliases_are_matched_to_the_server_by_address,
    ]);
}

async fn pointed_at_pgbouncer_it_says_so(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    for version in BouncerVersion::ALL {
        for mode in [PoolMode::Session, PoolMode::Transaction] {
            for ignore_options in [false, true] {
                let mut options = BouncerOptions::new(version, mode);
                options.default_pool_size = 1;
                if ignore_options {
                    options = options.ignore_startup_parameter("options");
                }
                let bouncer = Bouncer::start(&sb, &options)?;
                let through = support::Target {
                    host: bouncer.host().to_owned(),
                    port: bouncer.port(),
                    passfile: sb.passfile().to_path_buf(),
                };
                // The sandbox's password file names the server's port: give the password.
                let password = sb.password(roles::ADMIN).unwrap_or_default();
                for db in ["postgres", "pgbouncer"] {
                    let mut cmd =
                        support::pgkill_at(&through, roles::ADMIN, &["--maintenance-db", db, "ls"]);
                    cmd.env("PGPASSWORD", &password);
                    let (code, out, err) = support::run(cmd)?;
                    let case = format!(
                        "PgBouncer {} {mode:?}, ignore options {ignore_options}, dbname={db}",
                        version.as_str()
                    );
                    ensure!(
                        code == 2
                            && out.is_empty()
                            && err.lines().count() == 1
                            && err
                                .contains(&format!("is PgBouncer {}", bouncer.reported_version()))
                            && err.contains("a connection pooler, not PostgreSQL")
                            && err.contains(&format!(
                                "--pgbouncer 'host=127.0.0.1 port={} user={} dbname=pgbouncer'",
                                bouncer.port(),
                                roles::ADMIN
                            )),
                        "{case}: exit {code}\n{out}\n{err}"
                    );
                }
                // Nothing pgkill sent changed a pooled server connection: an
                // application through the pooler (one server connection per pool, so
                // the very one pgkill's statements ran on) finds the server's defaults.
                let app = bouncer.connect("postgres", roles::ADMIN).await?;
                let path: String = app.query_one("SHOW search_path", &[]).await?.get(0);
                let timeout: String = app.query_one("SHOW statement_timeout", &[]).await?.get(0);
                ensure!(
                    path == "\"$user\", public" && timeout == "0",
                    "PgBouncer {} {mode:?}: a pooled server connection has search_path {path:?}, statement_timeout {timeout:?}",
                    version.as_str()
                );
            }
        }
    }
    Ok(())
}

/// An application connection through the pooler on a socket of the test's own, so that
/// its port is known independently of what PgBouncer says.
async fn app(bouncer: &Bouncer, alias: &str, name: &str) -> Result<(Client, u16)> {
    let stream = tokio::net::TcpStream::connect((bouncer.host(), bouncer.port())).await?;
    let port = stream.local_addr()?.port();
    let mut config = bouncer.config(alias, roles::PLAIN);
    config.application_name(name);
    let (client, connection) = config
        .connect_raw(stream, NoTls)
        .await
        .with_context(|| format!("{name} through the pooler"))?;
    tokio::spawn(connection);
    Ok((client, port))
}

/// `pgkill --pgbouncer … ls --json`, as the bootstrap superuser, on the server itself.
fn ls(sb: &Sandbox, bouncer: &Bouncer, args: &[&str]) -> Result<Value> {
    let console = console(sb, bouncer);
    let mut all = vec!["--pgbouncer", &console, "ls", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = support::run(support::pgkill(sb, roles::ADMIN, &all))?;
    ensure!(code <= 1, "ls --pgbouncer: exit {code}\n{out}\n{err}");
    Ok(serde_json::from_str(&out)?)
}

/// Rows of `doc` that have an application behind the pooler: application name to
/// (kind, client port).
fn applications(doc: &Value) -> BTreeMap<String, (String, u16)> {
    let mut out = BTreeMap::new();
    for row in doc["sessions"].as_array().into_iter().flatten() {
        let client = &row["pooler"]["client"];
        if let (Some(name), Some(port)) = (
            client["application_name"].as_str(),
            client["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ) {
            out.insert(
                name.to_owned(),
                (row["kind"].as_str().unwrap_or("").to_owned(), port),
            );
        }
    }
    out
}

/// 20 applications through 5 server connections in transaction mode (3 of them in a
/// transaction, so linked to a backend), behind an alias whose server database has
/// another name: `ls --pgbouncer` lists 20 application rows with their real ports and
/// names (3 as backends, 17 pooled, under the server's database name), plus the pool's
/// server connections; `--app` and `--client` select on the applications. In session
/// mode, every application is its backend's row.
async fn ls_shows_the_applications_behind_the_pooler(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    let admin = sb.admin("postgres").await?;
    for version in BouncerVersion::ALL {
        // Transaction mode.
        let mut options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        options.default_pool_size = 5;
        let bouncer = Bouncer::start(&sb, &options)?;
        let mut apps = BTreeMap::new();
        let mut clients = Vec::new();
        for i in 0..20 {
            let name = format!("web-{i:02}");
            let (client, port) = app(&bouncer, "shop", &name).await?;
            client.simple_query("SELECT 1").await?;
            if i < 3 {
                client.batch_execute("BEGIN; SELECT 1").await?;
            }
            apps.insert(name, port);
            clients.push(client);
        }
        let doc = ls(&sb, &bouncer, &[])?;
        let seen = applications(&doc);
        let want: BTreeMap<String, (String, u16)> = apps
            .iter()
            .enumerate()
            .map(|(i, (name, port))| {
                let kind = if i < 3 { "backend" } else { "pooled" };
                (name.clone(), (kind.to_owned(), *port))
            })
            .collect();
        ensure!(
            seen == want,
            "PgBouncer {}: applications seen\n{seen:?}\nwanted\n{want:?}\n{doc}",
            version.as_str()
        );
        let rows = doc["sessions"].as_array().ok_or_else(|| anyhow!("{doc}"))?;
        for row in rows.iter().filter(|r| r["kind"] == "pooled") {
            ensure!(
                row["pid"].is_null()
                    && row["database"] == "shop_db"
                    && row["pooler"]["alias"] == "shop"
                    && row["pooler"]["pool_mode"] == "transaction"
                    && row["user"] == roles::PLAIN,
                "{row}"
            );
        }
        // The server's side: every backend the pooler opened is a row of its own.
        let backends: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop_db'",
                &[],
            )
            .await?
            .get(0);
        let pool_rows = rows
            .iter()
            .filter(|r| r["kind"] == "backend" && !r["pooler"].is_null())
            .count();
        ensure!(
            i64::try_from(pool_rows)? == backends && (3..=5).contains(&backends),
            "{pool_rows} pooler backend rows, the server has {backends}: {doc}"
        );
        // The table for people says so too.
        let console = console(&sb, &bouncer);
        let (code, table, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &["--pgbouncer", &console, "ls", "--db", "shop_db"],
        ))?;
        let web_05 = format!("127.0.0.1:{} via pgbouncer (transaction)", apps["web-05"]);
        ensure!(
            code == 0
                && table.starts_with(&format!("Pooler: PgBouncer {}", bouncer.reported_version()))
                && table.lines().any(|l| l.trim_start().starts_with("- ")
                    && l.contains("web-05")
                    && l.contains(&web_05)),
            "exit {code}\n{table}\n{err}"
        );
        // Filters select on the applications.
        let one = applications(&ls(&sb, &bouncer, &["--app", "web-07"])?);
        ensure!(
            one.keys().collect::<Vec<_>>() == ["web-07"],
            "--app web-07 selected {one:?}"
        );
        let linked = applications(&ls(&sb, &bouncer, &["--app", "web-01"])?);
        ensure!(
            linked.get("web-01").map(|(k, _)| k.as_str()) == Some("backend"),
            "--app web-01 (in a transaction) selected {linked:?}"
        );
        let all = applications(&ls(
            &sb,
            &bouncer,
            &["--client", "127.0.0.1/32", "--db", "shop_db"],
        )?);
        ensure!(
            all.len() == 20,
            "--client 127.0.0.1/32 selected {} applications",
            all.len()
        );
        let none = applications(&ls(&sb, &bouncer, &["--client", "10.0.0.0/8"])?);
        ensure!(none.is_empty(), "--client 10.0.0.0/8 selected {none:?}");
        // Exclusions apply to the applications too, backends and pooled rows alike, and
        // win over inclusions.
        let names = |doc: &Value| applications(doc).into_keys().collect::<Vec<_>>();
        let rest = names(&ls(
            &sb,
            &bouncer,
            &[
                "--db",
                "shop_db",
                "--exclude-app",
                "web-01",
                "--exclude-app",
                "web-1*",
            ],
        )?);
        let want: Vec<String> = (0..10)
            .filter(|i| *i != 1)
            .map(|i| format!("web-{i:02}"))
            .collect();
        ensure!(rest == want, "--exclude-app kept {rest:?}");
        let none = names(&ls(
            &sb,
            &bouncer,
            &["--app", "web-0*", "--exclude-app", "web-0*"],
        )?);
        ensure!(none.is_empty(), "--exclude-app web-0* kept {none:?}");
        let none = names(&ls(
            &sb,
            &bouncer,
            &["--db", "shop_db", "--exclude-client", "127.0.0.1"],
        )?);
        ensure!(none.is_empty(), "--exclude-client 127.0.0.1 kept {none:?}");
        let others = names(&ls(
            &sb,
            &bouncer,
            &["--db", "shop_db", "--exclude-user", roles::PLAIN],
        )?);
        ensure!(others.is_empty(), "--exclude-user kept {others:?}");
        // Filters that need a backend select no pooled row.
        for args in [&["--holding-xmin"][..], &["--blocking-for", "0s"][..]] {
            let doc = ls(&sb, &bouncer, args)?;
            ensure!(
                doc["sessions"]
                    .as_array()
                    .is_some_and(|rows| rows.iter().all(|r| r["kind"] != "pooled")),
                "{args:?} selected pooled rows: {doc}"
            );
        }
        drop(clients);
        drop(bouncer);

        // Session mode: each application is its backend's row.
        let options = BouncerOptions::new(version, PoolMode::Session).database("shop", "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        let mut apps = BTreeMap::new();
        let mut clients = Vec::new();
        for i in 0..5 {
            let name = format!("job-{i}");
            let (client, port) = app(&bouncer, "shop", &name).await?;
            client.simple_query("SELECT 1").await?;
            apps.insert(name, ("backend".to_owned(), port));
            clients.push(client);
        }
        let doc = ls(&sb, &bouncer, &["--db", "shop_db"])?;
        let seen = applications(&doc);
        ensure!(
            seen == apps,
            "PgBouncer {} session mode: seen {seen:?}, wanted {apps:?}\n{doc}",
            version.as_str()
        );
        drop(clients);
    }
    Ok(())
}

/// Every command that takes poolers stops before acting when one cannot be reached
/// (exit 2: a listing without it would miss applications), named on the command line or
/// in `PGKILL_PGBOUNCER`.
async fn an_unreachable_pooler_stops_every_command(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let victim = pgkill_sandbox::sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let pid = victim.pid().to_string();
    sb.create_database("scratch", None).await?;
    for args in [
        &["kill", "--pid", &pid, "-y"][..],
        &["cancel", "--pid", &pid, "-y"],
        &["free-slot", roles::PLAIN, "-y"],
        &["drop", "scratch", "-y"],
        &["rename", "scratch", "scratch2", "-y"],
        &["drain", "scratch", "-y"],
        &["top"],
    ] {
        for from_env in [false, true] {
            let mut cmd = if from_env {
                let mut cmd = support::pgkill(&sb, roles::ADMIN, args);
                cmd.env(
                    "PGKILL_PGBOUNCER",
                    "host=127.0.0.1 port=1 connect_timeout=2",
                );
                cmd
            } else {
                let mut all = vec!["--pgbouncer", "host=127.0.0.1 port=1 connect_timeout=2"];
                all.extend_from_slice(args);
                support::pgkill(&sb, roles::ADMIN, &all)
            };
            cmd.stdin(std::process::Stdio::null());
            let (code, out, err) = support::run(cmd)?;
            ensure!(
                code == 2,
                "{args:?} with an unreachable pooler (from the environment: {from_env}): exit {code}\n{out}\n{err}"
            );
            ensure!(
                victim.is_connected(),
                "{args:?} acted though the pooler was unreachable"
            );
        }
    }
    ensure!(
        sb.admin("postgres")
            .await?
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'scratch' AND datallowconn",
                &[]
            )
            .await?
            .is_some(),
        "scratch was changed"
    );
    Ok(())
}

/// `free-slot ROLE --pgbouncer`: the pooler's server connections serving no application
/// go first (ending them ends nobody's connection, and the applications' next queries get
/// new ones), before a session of the role's own; in the plan they say so.
async fn free_slot_through_the_pooler_ends_what_serves_nobody_first(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    let admin = sb.admin("postgres").await?;
    for version in BouncerVersion::ALL {
        let v = version.as_str();
        let options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        let mut apps = Vec::new();
        for i in 0..3 {
            apps.push(app(&bouncer, "shop", &format!("web-{i}")).await?.0);
        }
        // At once, so that each gets a server connection of its own.
        let sleep = "SELECT pg_sleep(0.3)";
        let (a, b, c) = tokio::join!(
            apps[0].simple_query(sleep),
            apps[1].simple_query(sleep),
            apps[2].simple_query(sleep)
        );
        a?;
        b?;
        c?;
        let own = pgkill_sandbox::sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let pool: Vec<i32> = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'shop_db' AND usename = $1 AND state = 'idle'",
                &[&roles::PLAIN],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure!(
            pool.len() == 3,
            "PgBouncer {v}: {} pool connections",
            pool.len()
        );
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console(&sb, &bouncer),
                "free-slot",
                roles::PLAIN,
                "--count",
                "2",
                "-y",
            ],
        ))?;
        ensure!(
            code == 0 && out.matches("serving no application").count() == 2,
            "PgBouncer {v}: free-slot exit {code}\n{out}\n{err}"
        );
        ensure!(
            own.is_connected(),
            "PgBouncer {v}: the role's own session was ended first"
        );
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pool],
            )
            .await?
            .get(0);
        ensure!(
            left == 1,
            "PgBouncer {v}: {left} of the 3 pool connections left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        for (i, a) in apps.iter().enumerate() {
            ensure!(
                works(a).await,
                "PgBouncer {v}: application web-{i} lost its connection"
            );
        }
        drop(own);
    }
    Ok(())
}

/// `cancel --pgbouncer --app X` in transaction pooling: X's running statement is
/// cancelled through its backend (X sees 57014), another application's is not; pooled
/// connections are named and left alone.
async fn cancel_through_the_pooler_cancels_the_application_s_statement(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    for version in BouncerVersion::ALL {
        let mut options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        options.default_pool_size = 3;
        let bouncer = Bouncer::start(&sb, &options)?;
        let (x, _) = app(&bouncer, "shop", "report-x").await?;
        let (y, _) = app(&bouncer, "shop", "report-y").await?;
        let (idle, _) = app(&bouncer, "shop", "idle-app").await?;
        idle.simple_query("SELECT 1").await?;
        let x_query =
            tokio::spawn(async move { x.simple_query("SELECT pg_sleep(30)").await.map(drop) });
        let y_query =
            tokio::spawn(async move { y.simple_query("SELECT pg_sleep(2)").await.map(drop) });
        // Both statements running on their backends.
        let admin = sb.admin("postgres").await?;
        let began = std::time::Instant::now();
        while admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'shop_db' AND state = 'active'", &[])
            .await?
            .get::<_, i64>(0)
            < 2
        {
            ensure!(began.elapsed() < std::time::Duration::from_secs(10), "the statements never started");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let console = console(&sb, &bouncer);
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console,
                "cancel",
                "--app",
                "report-x",
                "-y",
                "--json",
            ],
        ))?;
        let doc: Value =
            serde_json::from_str(&out).with_context(|| format!("exit {code}\n{out}\n{err}"))?;
        ensure!(
            code == 0
                && doc["outcomes"]
                    .as_array()
                    .is_some_and(|o| o.len() == 1 && o[0]["outcome"] == "cancelled"),
            "PgBouncer {}: exit {code}: {doc}\n{err}",
            version.as_str()
        );
        let x_result = x_query.await?;
        let cancelled = match &x_result {
            Err(e) => e.code().map(|c| c.code().to_owned()),
            Ok(()) => None,
        };
        ensure!(
            cancelled.as_deref() == Some("57014"),
            "report-x: {x_result:?}"
        );
        ensure!(
            y_query.await?.is_ok(),
            "report-y's statement was cancelled too"
        );
        ensure!(works(&idle).await, "the idle application was hit");
    }
    Ok(())
}

/// What the applications of a workload through the pooler saw.
#[derive(Debug, Default)]
struct Seen {
    acknowledged: Vec<(i32, i64)>,
    errors: BTreeMap<String, usize>,
    longest_wait: std::time::Duration,
}

/// `writers` applications committing short transactions through the pooler (simple
/// protocol, as pooled applications do) until `stop`, reconnecting after an error.
fn workload(
    bouncer: &Bouncer,
    alias: &str,
    writers: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    tokio::task::JoinHandle<Seen>,
    std::sync::Arc<std::sync::Mutex<Seen>>,
) {
    let config = bouncer.config(alias, roles::ADMIN);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let shared = seen.clone();
    let handle = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (config, stop, seen) = (config.clone(), stop.clone(), seen.clone());
            tasks.push(tokio::spawn(async move {
                let mut seq = 0i64;
                let mut client = None;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if client.is_none() {
                        match config.connect(NoTls).await {
                            Ok((c, conn)) => {
                                tokio::spawn(conn);
                                client = Some(c);
                            }
                            Err(e) => {
                                let code = e.code().map_or("connect".to_owned(), |c| c.code().to_owned());
                                *seen.lock().unwrap().errors.entry(code).or_default() += 1;
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    seq += 1;
                    let began = std::time::Instant::now();
                    let sql = format!("BEGIN; INSERT INTO writes VALUES ({w}, {seq}); SELECT pg_sleep(0.02); COMMIT");
                    match client.as_ref().unwrap().simple_query(&sql).await {
                        Ok(_) => {
                            let mut s = seen.lock().unwrap();
                            s.acknowledged.push((w, seq));
                            s.longest_wait = s.longest_wait.max(began.elapsed());
                        }
                        Err(e) => {
                            let code = e.code().map_or("closed".to_owned(), |c| c.code().to_owned());
                            *seen.lock().unwrap().errors.entry(code).or_default() += 1;
                            client = None;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let taken = std::mem::take(&mut *seen.lock().unwrap());
        taken
    });
    (handle, shared)
}

/// `drain --pgbouncer DB --grace 5s --then-unfence` under a committing workload through
/// PgBouncer in transaction mode: the alias is paused first (queries queue), the database
/// drained and unfenced, the alias resumed: 0 application errors, every acknowledged
/// commit stored, the applications go on after it. Then a drain that leaves the fence up
/// keeps the alias paused, and `pgkill unfence` (finding the pooler in the fence record)
/// resumes it: still 0 errors.
async fn drain_through_the_pooler_costs_the_applications_nothing(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    sb.admin("shop_db")
        .await?
        .batch_execute("CREATE TABLE writes (writer int, seq bigint, PRIMARY KEY (writer, seq))")
        .await?;
    for version in BouncerVersion::ALL {
        sb.admin("shop_db")
            .await?
            .batch_execute("TRUNCATE writes")
            .await?;
        let mut options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        options.default_pool_size = 3;
        let bouncer = Bouncer::start(&sb, &options)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (apps, progress) = workload(&bouncer, "shop", 6, stop.clone());
        let acks = || progress.lock().unwrap().acknowledged.len();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;

        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console(&sb, &bouncer),
                "drain",
                "shop_db",
                "--grace",
                "5s",
                "--then-unfence",
                "-y",
            ],
        ))?;
        ensure!(
            code == 0
                && out.contains("Paused at PgBouncer: shop (")
                && out.contains("Resumed at PgBouncer: shop ("),
            "PgBouncer {}: drain exit {code}\n{out}\n{err}",
            version.as_str()
        );
        // The held drain: the alias stays paused until unfence.
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console(&sb, &bouncer),
                "drain",
                "shop_db",
                "--grace",
                "5s",
                "-y",
            ],
        ))?;
        ensure!(
            code == 0 && out.contains("Paused at PgBouncer: shop ("),
            "drain exit {code}\n{out}\n{err}"
        );
        ensure!(
            shop_is_paused(&bouncer).await?,
            "shop is not paused after a held drain"
        );
        let before = acks();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        ensure!(
            acks() == before,
            "commits went on while shop was paused and shop_db fenced"
        );
        // Unfence from the record alone: the console's address is in it, the password
        // comes from the environment as libpq would take it.
        let mut cmd = support::pgkill(&sb, roles::ADMIN, &["unfence", "shop_db"]);
        cmd.env("PGPASSWORD", sb.password(roles::ADMIN).unwrap_or_default());
        let (code, out, err) = support::run(cmd)?;
        ensure!(
            code == 0 && out.contains("Resumed at PgBouncer: shop"),
            "unfence exit {code}\n{out}\n{err}"
        );
        let began = std::time::Instant::now();
        while acks() <= before + 6 {
            ensure!(
                began.elapsed() < std::time::Duration::from_secs(10),
                "the applications did not go on after unfence"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = apps.await?;
        ensure!(
            seen.errors.is_empty(),
            "PgBouncer {}: the applications saw errors {:?}",
            version.as_str(),
            seen.errors
        );
        let admin = sb.admin("shop_db").await?;
        let stored: i64 = admin
            .query_one("SELECT count(*) FROM writes", &[])
            .await?
            .get(0);
        ensure!(
            stored == i64::try_from(seen.acknowledged.len())?,
            "{} commits acknowledged, {stored} stored",
            seen.acknowledged.len()
        );
        let allow: bool = admin
            .query_one(
                "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = 'shop_db'",
                &[],
            )
            .await?
            .get(0);
        ensure!(allow, "shop_db was left fenced");
        eprintln!(
            "PgBouncer {}: {} commits, longest wait {:?}",
            version.as_str(),
            seen.acknowledged.len(),
            seen.longest_wait
        );
    }
    Ok(())
}

/// A console whose user may not pause (a stats user), or a pooler that cannot be
/// reached: the drain stops before changing anything, exit 2.
async fn a_pooler_that_refuses_stops_the_drain_before_any_change(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    let options = BouncerOptions::new(BouncerVersion::V1_18, PoolMode::Transaction)
        .database("shop", "shop_db")
        .stats_user(roles::PLAIN);
    let bouncer = Bouncer::start(&sb, &options)?;
    let stats = format!(
        "host={} port={} user={} password={}",
        bouncer.host(),
        bouncer.port(),
        roles::PLAIN,
        sb.password(roles::PLAIN).unwrap_or_default()
    );
    for (how, conninfo) in [
        ("a stats user", stats),
        (
            "nothing listening",
            "host=127.0.0.1 port=1 connect_timeout=2".to_owned(),
        ),
    ] {
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &["--pgbouncer", &conninfo, "drain", "shop_db", "-y"],
        ))?;
        ensure!(
            code == 2 && err.contains("nothing was changed"),
            "{how}: exit {code}\n{out}\n{err}"
        );
        let admin = sb.admin("postgres").await?;
        let row = admin
            .query_one("SELECT datallowconn, description FROM pg_catalog.pg_database d LEFT JOIN pg_catalog.pg_shdescription s ON s.objoid = d.oid WHERE datname = 'shop_db'", &[])
            .await?;
        let (allow, comment): (bool, Option<String>) = (row.get(0), row.get(1));
        ensure!(
            allow && comment.is_none(),
            "{how}: shop_db was changed: {allow} {comment:?}"
        );
    }
    Ok(())
}

/// `pgkill --pgbouncer … kill ARGS -y --json` as the bootstrap superuser: exit code and
/// the document.
fn kill(sb: &Sandbox, bouncer: &Bouncer, args: &[&str]) -> Result<(i32, Value, String)> {
    let console = console(sb, bouncer);
    let mut all = vec!["--pgbouncer", &console, "kill"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-y", "--json"]);
    let (code, out, err) = support::run(support::pgkill(sb, roles::ADMIN, &all))?;
    let doc = serde_json::from_str(&out).with_context(|| format!("exit {code}\n{out}\n{err}"))?;
    Ok((code, doc, err))
}

/// `kill --pgbouncer --app X`: in transaction pooling PgBouncer 1.24 ends exactly X's
/// application connection at the pooler (KILL_CLIENT; verified gone from SHOW CLIENTS,
/// and X's next query fails) while the others go on; 1.18 cannot end one client there:
/// `not_permitted` with the reason, exit 3, nothing ended. In session pooling X's backend
/// is terminated and the pooler closes X, on both versions.
async fn kill_through_the_pooler_ends_what_the_user_meant(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    for version in BouncerVersion::ALL {
        let mut options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        options.default_pool_size = 2;
        let bouncer = Bouncer::start(&sb, &options)?;
        let mut apps = Vec::new();
        for i in 0..6 {
            let (client, _) = app(&bouncer, "shop", &format!("web-{i}")).await?;
            client.simple_query("SELECT 1").await?;
            apps.push(client);
        }
        let (code, doc, err) = kill(&sb, &bouncer, &["--app", "web-3"])?;
        let outcomes = doc["pooler_outcomes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        ensure!(
            outcomes.len() == 1 && doc["outcomes"].as_array().is_some_and(Vec::is_empty),
            "PgBouncer {}: {doc}\n{err}",
            version.as_str()
        );
        let o = &outcomes[0];
        ensure!(o["client"]["application_name"] == "web-3", "{o}");
        if version == BouncerVersion::V1_24_1 {
            ensure!(
                code == 0 && o["outcome"] == "terminated",
                "exit {code}: {doc}\n{err}"
            );
            ensure!(!works(&apps[3]).await, "web-3 still works after its kill");
            ensure!(
                err.contains("CVE-2026-6667"),
                "no warning about KILL_CLIENT on 1.24.1: {err}"
            );
            // A superuser's application connection is protected behind the pooler too.
            let stream = tokio::net::TcpStream::connect((bouncer.host(), bouncer.port())).await?;
            let mut config = bouncer.config("shop", roles::ADMIN);
            config.application_name("boss");
            let (boss, connection) = config.connect_raw(stream, NoTls).await?;
            tokio::spawn(connection);
            boss.simple_query("SELECT 1").await?;
            let (code, doc, err) = kill(&sb, &bouncer, &["--app", "boss"])?;
            ensure!(
                code == 3
                    && doc["pooler_outcomes"][0]["outcome"] == "not_permitted"
                    && doc["pooler_outcomes"][0]["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("superuser")),
                "exit {code}: {doc}\n{err}"
            );
            ensure!(works(&boss).await, "the superuser's connection was ended");
        } else {
            ensure!(
                code == 3
                    && o["outcome"] == "not_permitted"
                    && o["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("KILL_CLIENT needs PgBouncer 1.24")),
                "exit {code}: {doc}\n{err}"
            );
            ensure!(works(&apps[3]).await, "web-3 was ended on 1.18");
        }
        for (i, a) in apps.iter().enumerate().filter(|(i, _)| *i != 3) {
            ensure!(works(a).await, "web-{i} was hit by the kill of web-3");
        }
        drop(apps);
        drop(bouncer);

        let options = BouncerOptions::new(version, PoolMode::Session).database("shop", "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        let mut apps = Vec::new();
        for i in 0..3 {
            let (client, _) = app(&bouncer, "shop", &format!("job-{i}")).await?;
            client.simple_query("SELECT 1").await?;
            apps.push(client);
        }
        let (code, doc, err) = kill(&sb, &bouncer, &["--app", "job-1"])?;
        ensure!(
            code == 0
                && doc["outcomes"]
                    .as_array()
                    .is_some_and(|o| o.len() == 1 && o[0]["outcome"] == "terminated")
                && doc["pooler_outcomes"]
                    .as_array()
                    .is_some_and(|o| o.len() == 1
                        && o[0]["outcome"] == "terminated"
                        && o[0]["client"]["application_name"] == "job-1"),
            "PgBouncer {} session mode: exit {code}: {doc}\n{err}",
            version.as_str()
        );
        ensure!(!works(&apps[1]).await, "job-1 still works after its kill");
        ensure!(
            works(&apps[0]).await && works(&apps[2]).await,
            "another job was hit"
        );
    }
    Ok(())
}

/// Starts a pooler in transaction mode in front of `shop_db` (alias `shop`) and a
/// committing workload of 4 applications through it, plus one application idle in a
/// transaction (it holds a server connection, so a `PAUSE` waits for it).
async fn pooler_with_a_long_transaction(
    sb: &Sandbox,
    version: BouncerVersion,
) -> Result<(
    Bouncer,
    Client,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<Seen>,
)> {
    let mut options =
        BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
    options.default_pool_size = 4;
    let bouncer = Bouncer::start(sb, &options)?;
    let (long, _) = app(&bouncer, "shop", "long-tx").await?;
    long.batch_execute("BEGIN; SELECT 1").await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (apps, _) = workload(&bouncer, "shop", 4, stop.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok((bouncer, long, stop, apps))
}

async fn shop_db_is_as_it_was(sb: &Sandbox) -> Result<()> {
    let admin = sb.admin("postgres").await?;
    let row = admin
        .query_one("SELECT datallowconn, description FROM pg_catalog.pg_database d LEFT JOIN pg_catalog.pg_shdescription s ON s.objoid = d.oid WHERE datname = 'shop_db'", &[])
        .await?;
    let (allow, comment): (bool, Option<String>) = (row.get(0), row.get(1));
    ensure!(
        allow && comment.is_none(),
        "shop_db was left changed: allow_connections {allow}, comment {comment:?}"
    );
    Ok(())
}

/// A transaction through the pooler that outlasts `--grace`: PgBouncer 1.24 ends that
/// application at the pooler (KILL_CLIENT) so the pause completes, and the drain goes on
/// (the others see no error); 1.18 cannot: the drain stops (exit 2), resumes the alias and
/// puts the database back, and nobody sees an error.
async fn a_transaction_that_outlasts_the_grace_at_the_pooler(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    sb.admin("shop_db")
        .await?
        .batch_execute("CREATE TABLE writes (writer int, seq bigint, PRIMARY KEY (writer, seq))")
        .await?;
    for version in BouncerVersion::ALL {
        let (bouncer, long, stop, apps) = pooler_with_a_long_transaction(&sb, version).await?;
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console(&sb, &bouncer),
                "drain",
                "shop_db",
                "--grace",
                "1s",
                "--then-unfence",
                "-y",
            ],
        ))?;
        if version == BouncerVersion::V1_24_1 {
            ensure!(
                code == 0
                    && out.contains(
                        "Ended at PgBouncer, still in a transaction when --grace ran out: long-tx"
                    ),
                "1.24.1: exit {code}\n{out}\n{err}"
            );
            ensure!(!works(&long).await, "long-tx was not ended");
        } else {
            ensure!(
                code == 2
                    && err.contains("did not pause within 2s (--grace, at least 2s)")
                    && err.contains("KILL_CLIENT needs 1.24"),
                "1.18: exit {code}\n{out}\n{err}"
            );
            ensure!(works(&long).await, "long-tx was hit on 1.18");
        }
        ensure!(!shop_is_paused(&bouncer).await?, "shop was left paused");
        shop_db_is_as_it_was(&sb).await?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = apps.await?;
        ensure!(
            seen.errors.is_empty() && !seen.acknowledged.is_empty(),
            "PgBouncer {}: the applications saw {:?} ({} commits)",
            version.as_str(),
            seen.errors,
            seen.acknowledged.len()
        );
        sb.admin("shop_db")
            .await?
            .batch_execute("TRUNCATE writes")
            .await?;
    }
    Ok(())
}

/// `kill -9` of a `drain --pgbouncer` while its PAUSE waits for a transaction: the fence
/// record already names the alias, and `pgkill unfence` puts the database back and makes
/// sure the alias is not left paused; the applications then go on without an error.
async fn kill_9_during_a_pooler_drain_then_unfence(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    sb.admin("shop_db")
        .await?
        .batch_execute("CREATE TABLE writes (writer int, seq bigint, PRIMARY KEY (writer, seq))")
        .await?;
    for version in BouncerVersion::ALL {
        let (bouncer, long, stop, apps) = pooler_with_a_long_transaction(&sb, version).await?;
        let console = console(&sb, &bouncer);
        let mut drain = support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console,
                "drain",
                "shop_db",
                "--grace",
                "60s",
                "--then-unfence",
                "-y",
            ],
        );
        drain
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = drain.spawn()?;
        let admin = sb.admin("postgres").await?;
        let began = std::time::Instant::now();
        loop {
            let comment: Option<String> = admin
                .query_one("SELECT pg_catalog.shobj_description(d.oid, 'pg_database') FROM pg_catalog.pg_database d WHERE datname = 'shop_db'", &[])
                .await?
                .get(0);
            if comment.is_some_and(|c| c.contains("\"poolers\"")) {
                break;
            }
            ensure!(
                began.elapsed() < std::time::Duration::from_secs(10),
                "the drain never recorded the alias"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Let the PAUSE reach the pooler, then kill pgkill mid-way.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        child.kill()?;
        child.wait()?;
        let mut unfence = support::pgkill(
            &sb,
            roles::ADMIN,
            &["--pgbouncer", &console, "unfence", "shop_db"],
        );
        unfence.stdin(std::process::Stdio::null());
        let (code, out, err) = support::run(unfence)?;
        ensure!(
            code == 0 && out.contains("Unfenced"),
            "PgBouncer {}: unfence exit {code}\n{out}\n{err}",
            version.as_str()
        );
        ensure!(
            !shop_is_paused(&bouncer).await?,
            "shop was left paused after unfence"
        );
        shop_db_is_as_it_was(&sb).await?;
        drop(long);
        // The applications go on.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = apps.await?;
        ensure!(
            seen.errors.is_empty(),
            "PgBouncer {}: the applications saw {:?}",
            version.as_str(),
            seen.errors
        );
        sb.admin("shop_db")
            .await?
            .batch_execute("TRUNCATE writes")
            .await?;
    }
    Ok(())
}

/// `drop --pgbouncer`: the aliases are disabled and their connections dropped at the
/// pooler first, and pgkill says which `[databases]` entries to remove. `rename
/// --pgbouncer`: the aliases are paused and stay paused (pgkill says which entries to
/// point at the new name), or are resumed with `--resume`.
async fn drop_and_rename_through_the_pooler(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    for version in BouncerVersion::ALL {
        sb.create_database("shop_db", None).await?;
        let options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        let console = console(&sb, &bouncer);
        let (app1, _) = app(&bouncer, "shop", "web-1").await?;
        app1.simple_query("SELECT 1").await?;
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &["--pgbouncer", &console, "drop", "shop_db", "-y"],
        ))?;
        ensure!(
            code == 0
                && out.contains("Dropped shop_db")
                && out.contains("Remove these [databases] entries")
                && out.contains("shop (PgBouncer at"),
            "PgBouncer {} drop: exit {code}\n{out}\n{err}",
            version.as_str()
        );
        ensure!(
            shop_state(&bouncer).await? == (true, true),
            "shop is not disabled and paused after the drop"
        );
        ensure!(
            !works(&app1).await,
            "the application's connection survived the drop"
        );
        let gone = sb
            .admin("postgres")
            .await?
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'shop_db'",
                &[],
            )
            .await?
            .is_none();
        ensure!(gone, "shop_db was not dropped");
        drop(bouncer);

        sb.create_database("shop_db", None).await?;
        let bouncer = Bouncer::start(&sb, &options)?;
        let console = crate::console(&sb, &bouncer);
        let (app2, _) = app(&bouncer, "shop", "web-2").await?;
        app2.simple_query("SELECT 1").await?;
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console,
                "rename",
                "shop_db",
                "shop_new",
                "-y",
            ],
        ))?;
        ensure!(
            code == 0
                && out.contains("Renamed shop_db to shop_new")
                && out.contains("Point these [databases] entries at shop_new")
                && out.contains("shop (PgBouncer at"),
            "PgBouncer {} rename: exit {code}\n{out}\n{err}",
            version.as_str()
        );
        ensure!(
            shop_state(&bouncer).await? == (true, false),
            "shop is not paused after the rename"
        );
        // Back, with --resume this time (the alias leads to shop_db again).
        bouncer
            .admin(roles::ADMIN)
            .await?
            .simple_query("RESUME shop")
            .await?;
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console,
                "rename",
                "shop_new",
                "shop_db",
                "-y",
            ],
        ))?;
        ensure!(code == 0, "rename back: exit {code}\n{out}\n{err}");
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console,
                "rename",
                "shop_db",
                "shop_new",
                "--resume",
                "-y",
            ],
        ))?;
        ensure!(
            code == 0 && out.contains("Resumed at PgBouncer: shop ("),
            "rename --resume: exit {code}\n{out}\n{err}"
        );
        ensure!(
            shop_state(&bouncer).await? == (false, false),
            "shop is still paused after rename --resume"
        );
        sb.admin("postgres")
            .await?
            .batch_execute("DROP DATABASE shop_new")
            .await?;
    }
    Ok(())
}

/// `top --pgbouncer`, as `kill --pgbouncer` does: the header names each pooler, a pooler
/// backend shows the application linked to it, an application connection holding no
/// backend is a row of its own; terminating either from the view ends that application
/// at the pooler (KILL_CLIENT, verified gone there) on PgBouncer 1.24 while the other
/// application goes on, and is refused in the confirmation on 1.18 (nothing ended).
async fn top_ends_applications_at_the_pooler(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    let admin = sb.admin("postgres").await?;
    for version in BouncerVersion::ALL {
        let v = version.as_str();
        let options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        let (tx_app, _) = app(&bouncer, "shop", "web-tx").await?;
        tx_app.batch_execute("BEGIN; SELECT 1").await?;
        let (idle_app, _) = app(&bouncer, "shop", "web-idle").await?;
        idle_app.simple_query("SELECT 1").await?;
        let (other, _) = app(&bouncer, "shop", "web-other").await?;
        other.simple_query("SELECT 1").await?;
        let pid: i32 = admin
            .query_one(
                "SELECT pid FROM pg_stat_activity WHERE datname = 'shop_db' AND state = 'idle in transaction'",
                &[],
            )
            .await?
            .get(0);
        let tmux = tmux::Tmux {
            socket: format!(
                "pgkill-pgbouncer-top-{}-{}-{}",
                std::process::id(),
                pg.version.major,
                v
            ),
        };
        let line = format!(
            "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD TERM=xterm PGPASSFILE={} {} -h {} -p {} -U {} --pgbouncer '{}' top; echo PGKILL_TOP_EXIT=$?; sleep 60",
            sb.passfile().display(),
            env!("CARGO_BIN_EXE_pgkill"),
            sb.host(),
            sb.port(),
            roles::ADMIN,
            console(&sb, &bouncer),
        );
        tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "200",
            "-y",
            "40",
            &line,
        ])?;
        let screen = tmux
            .wait_for(&format!("port={} (transaction)", bouncer.port()))
            .await?;
        ensure!(
            screen.lines().any(|l| l.contains(&pid.to_string())
                && l.contains("web-tx")
                && l.contains("pgb:127.0.0.1")),
            "PgBouncer {v}: the pooler backend does not show its application:\n{screen}"
        );
        ensure!(
            screen
                .lines()
                .any(|l| l.contains("web-idle") && l.contains("(pooled)") && l.contains(" - ")),
            "PgBouncer {v}: the application holding no backend is not a row:\n{screen}"
        );
        // The pooled application connection.
        tmux.keys(&["/", "app:web-idle", "Enter"])?;
        tmux.wait_for("shown 1/").await?;
        tmux.keys(&["k"])?;
        if version == BouncerVersion::V1_18 {
            // The dialog's last line: the whole dialog is drawn.
            let dialog = tmux.wait_for("nothing to signal").await?;
            ensure!(
                dialog.contains("Terminate 0 session(s)?")
                    && dialog.contains("cannot end one application connection"),
                "1.18: the confirmation does not refuse it:\n{dialog}"
            );
            tmux.keys(&["y"])?;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            ensure!(
                works(&idle_app).await && works(&tx_app).await,
                "1.18: an application was ended from top"
            );
        } else {
            let dialog = tmux.wait_for("y: yes").await?;
            ensure!(
                dialog.contains("Terminate 1 session(s)?")
                    && dialog.contains("ended at the pooler (KILL_CLIENT)")
                    && dialog.contains("web-idle@127.0.0.1"),
                "{v}: the confirmation does not name the application:\n{dialog}"
            );
            tmux.keys(&["y"])?;
            tmux.wait_for("terminated at the pooler").await?;
            ensure!(!works(&idle_app).await, "{v}: web-idle was not ended");
            // The transaction-pooled backend: its application is ended at the pooler.
            tmux.keys(&["/"])?;
            tmux.keys(&["BSpace"; 14])?;
            tmux.keys(&[&format!("pid:{pid}"), "Enter"])?;
            tmux.wait_for("shown 1/").await?;
            tmux.keys(&["k"])?;
            let dialog = tmux.wait_for("y: yes").await?;
            ensure!(
                dialog.contains("ended at the pooler (KILL_CLIENT)")
                    && dialog.contains("web-tx@127.0.0.1"),
                "{v}: the confirmation does not name web-tx:\n{dialog}"
            );
            tmux.keys(&["y"])?;
            let began = std::time::Instant::now();
            while works(&tx_app).await {
                ensure!(
                    began.elapsed() < std::time::Duration::from_secs(5),
                    "{v}: web-tx was not ended"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        ensure!(
            works(&other).await,
            "PgBouncer {v}: an application nobody selected was hit"
        );
        tmux.keys(&["Escape", "q"])?;
        let screen = tmux.wait_for("PGKILL_TOP_EXIT=").await?;
        ensure!(screen.contains("PGKILL_TOP_EXIT=0"), "{screen}");
        drop(bouncer);
    }
    Ok(())
}

/// Waits until the fence record of `shop_db` names its aliases (pgkill is past the
/// journal, at the pooler or beyond) and the database is fenced.
async fn wait_pooler_fence(sb: &Sandbox) -> Result<()> {
    let admin = sb.admin("postgres").await?;
    let began = std::time::Instant::now();
    loop {
        let row = admin
            .query_opt("SELECT d.datallowconn, pg_catalog.shobj_description(d.oid, 'pg_database') FROM pg_catalog.pg_database d WHERE datname = 'shop_db'", &[])
            .await?;
        let (allow, comment): (bool, Option<String>) = match &row {
            Some(r) => (r.get(0), r.get(1)),
            None => (true, None),
        };
        if !allow && comment.is_some_and(|c| c.contains("\"poolers\"")) {
            return Ok(());
        }
        ensure!(
            began.elapsed() < std::time::Duration::from_secs(20),
            "pgkill never fenced shop_db with its aliases in the record"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `drop` and `rename` through the pooler that do not get to the end put the aliases back
/// exactly as they were (enabled, not paused) with the database, and a new application
/// connection works: Ctrl-C while the drop waits for a session (the aliases are already
/// disabled and killed), a rename whose new name was taken meanwhile (it fails at the
/// `ALTER DATABASE`, after the pause), and `kill -9` of either, then `pgkill unfence`.
async fn drop_and_rename_through_the_pooler_are_undone(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    let admin = sb.admin("postgres").await?;
    for version in BouncerVersion::ALL {
        let options =
            BouncerOptions::new(version, PoolMode::Transaction).database("shop", "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        let console = console(&sb, &bouncer);
        let v = version.as_str();
        for (op, how) in [
            ("drop", "ctrl-c"),
            ("rename", "taken"),
            ("drop", "kill-9"),
            ("rename", "kill-9"),
        ] {
            let (app1, _) = app(&bouncer, "shop", "web-1").await?;
            app1.simple_query("SELECT 1").await?;
            // A transaction on the server itself keeps the drain waiting for --grace.
            let holder = sb.admin("shop_db").await?;
            holder.batch_execute("BEGIN; SELECT 1").await?;
            let holder_pid: i32 = holder
                .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
                .await?
                .get(0);
            let mut args = vec!["--pgbouncer", &console, op, "shop_db"];
            if op == "rename" {
                args.push("shop_new");
            }
            args.extend_from_slice(&["--grace", "60s", "-y"]);
            let mut cmd = support::pgkill(&sb, roles::ADMIN, &args);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn()?;
            wait_pooler_fence(&sb).await?;
            let (_, disabled) = shop_state(&bouncer).await?;
            ensure!(
                disabled == (op == "drop"),
                "PgBouncer {v} {op}: alias disabled = {disabled} while it waits"
            );
            match how {
                "ctrl-c" | "taken" => {
                    if how == "ctrl-c" {
                        nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(child.id() as i32),
                            nix::sys::signal::Signal::SIGINT,
                        )?;
                    } else {
                        admin.batch_execute("CREATE DATABASE shop_new").await?;
                        admin
                            .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&holder_pid])
                            .await?;
                    }
                    let out = child.wait_with_output()?;
                    let err = String::from_utf8_lossy(&out.stderr);
                    let expected = if how == "ctrl-c" {
                        "interrupted"
                    } else {
                        "already exists"
                    };
                    let put_back = if op == "drop" {
                        "its aliases at PgBouncer enabled and resumed"
                    } else {
                        "its aliases at PgBouncer resumed"
                    };
                    ensure!(
                        out.status.code() == Some(2)
                            && err.contains(expected)
                            && err.contains(put_back),
                        "PgBouncer {v} {op} ({how}): {}\n{}\n{err}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout)
                    );
                    if how == "taken" {
                        admin.batch_execute("DROP DATABASE shop_new").await?;
                    }
                }
                _ => {
                    child.kill()?;
                    child.wait()?;
                    ensure!(
                        shop_state(&bouncer).await?.0,
                        "PgBouncer {v} {op}: the alias is not paused after kill -9"
                    );
                    let mut unfence = support::pgkill(
                        &sb,
                        roles::ADMIN,
                        &["--pgbouncer", &console, "unfence", "shop_db"],
                    );
                    unfence.stdin(std::process::Stdio::null());
                    let (code, out, err) = support::run(unfence)?;
                    ensure!(
                        code == 0 && out.contains("Unfenced"),
                        "PgBouncer {v} {op}: unfence after kill -9: exit {code}\n{out}\n{err}"
                    );
                }
            }
            ensure!(
                shop_state(&bouncer).await? == (false, false),
                "PgBouncer {v} {op} ({how}): the alias was not put back (paused, disabled) = {:?}",
                shop_state(&bouncer).await?
            );
            shop_db_is_as_it_was(&sb).await?;
            let (app2, _) = app(&bouncer, "shop", "web-2").await?;
            ensure!(
                works(&app2).await,
                "PgBouncer {v} {op} ({how}): a new application connection fails"
            );
            if op == "rename" {
                ensure!(
                    works(&app1).await,
                    "PgBouncer {v} rename ({how}): the paused application did not go on"
                );
            }
            drop(holder);
        }
    }
    Ok(())
}

/// Which `[databases]` entries lead to the database being drained is told by address, not
/// by name and port alone: an entry at an address this server does not listen on
/// (127.0.0.2, another server on the same port) is left alone and pgkill says why; one
/// through the server's Unix socket (the pooler runs on its machine) is this server's and
/// is paused with the plain one.
async fn aliases_are_matched_to_the_server_by_address(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop_db", None).await?;
    let socket = sb.socket_dir().display().to_string();
    for version in BouncerVersion::ALL {
        let options = BouncerOptions::new(version, PoolMode::Transaction)
            .database("shop", "shop_db")
            .database_at("shop_far", "127.0.0.2", "shop_db")
            .database_at("shop_sock", &socket, "shop_db");
        let bouncer = Bouncer::start(&sb, &options)?;
        // (The sandbox's servers take socket logins by peer authentication only: no
        // application goes through shop_sock, its entry is matched by its host alone.)
        let (plain, _) = app(&bouncer, "shop", "web-plain").await?;
        plain.simple_query("SELECT 1").await?;
        let (code, out, err) = support::run(support::pgkill(
            &sb,
            roles::ADMIN,
            &[
                "--pgbouncer",
                &console(&sb, &bouncer),
                "drain",
                "shop_db",
                "--then-unfence",
                "-y",
            ],
        ))?;
        let v = version.as_str();
        let paused = out
            .lines()
            .find(|l| l.starts_with("Paused at PgBouncer:"))
            .unwrap_or_default();
        ensure!(
            code == 0
                && paused.contains("shop (")
                && paused.contains("shop_sock (")
                && !paused.contains("shop_far"),
            "PgBouncer {v}: exit {code}, paused line {paused:?}\n{out}\n{err}"
        );
        ensure!(
            err.contains("alias shop_far (its host 127.0.0.2 (127.0.0.2) is not one of this server's addresses")
                && err.contains("left alone"),
            "PgBouncer {v}: no note on shop_far:\n{err}"
        );
        ensure!(
            works(&plain).await,
            "PgBouncer {v}: an application did not go on after the drain"
        );
    }
    Ok(())
}

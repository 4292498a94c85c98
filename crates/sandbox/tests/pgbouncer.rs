//! A real PgBouncer in front of a sandbox, on every PostgreSQL version: for each PgBouncer
//! version (1.18, 1.24.1) and pool mode (session, transaction), an application connection
//! through the pooler reaches the database its alias names, on a backend PgBouncer
//! reports as its server; the admin console reports the expected version; a stats user
//! can `SHOW CLIENTS` but not `PAUSE`; and once the bouncer is dropped its process is
//! gone, its clients are cut off, its port is free and its directory removed, also when
//! the test holding it panics.

#![allow(clippy::panic)] // a test harness: one case panics on purpose

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgkill_sandbox::{
    cases, roles, Bouncer, BouncerOptions, BouncerVersion, Installation, Options, PoolMode, Sandbox,
};
use tokio_postgres::SimpleQueryMessage;

const HOLD_ENV: &str = "PGKILL_BOUNCER_TEST_HOLD";

fn main() {
    // Re-executed by `bouncer_dies_with_its_process`: start bouncers, say where, hang.
    if let Ok(bin_dir) = std::env::var(HOLD_ENV) {
        hold(std::path::PathBuf::from(bin_dir));
    }
    pgkill_sandbox::matrix::main(cases![
        pgbouncer_1_18_session,
        pgbouncer_1_18_transaction,
        pgbouncer_1_24_1_session,
        pgbouncer_1_24_1_transaction,
        teardown_on_panic_leaves_nothing,
        bouncer_dies_with_its_process,
    ]);
}

const APP_DB: &str = "bouncer_target";
const ALIAS: &str = "app";
const APP_ROLE: &str = roles::PLAIN;
const STATS_ROLE: &str = roles::SIGNALLER;

async fn pgbouncer_1_18_session(pg: Installation) -> Result<()> {
    through_the_pooler(pg, BouncerVersion::V1_18, PoolMode::Session).await
}

async fn pgbouncer_1_18_transaction(pg: Installation) -> Result<()> {
    through_the_pooler(pg, BouncerVersion::V1_18, PoolMode::Transaction).await
}

async fn pgbouncer_1_24_1_session(pg: Installation) -> Result<()> {
    through_the_pooler(pg, BouncerVersion::V1_24_1, PoolMode::Session).await
}

async fn pgbouncer_1_24_1_transaction(pg: Installation) -> Result<()> {
    through_the_pooler(pg, BouncerVersion::V1_24_1, PoolMode::Transaction).await
}

/// The first row of a simple query's result, as text.
fn first_row(messages: &[SimpleQueryMessage]) -> Result<Vec<Option<String>>> {
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok((0..row.len())
                .map(|i| row.get(i).map(str::to_owned))
                .collect());
        }
    }
    bail!("the query returned no row")
}

async fn through_the_pooler(
    pg: Installation,
    version: BouncerVersion,
    mode: PoolMode,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database(APP_DB, None).await?;
    let options = BouncerOptions::new(version, mode)
        .database(ALIAS, APP_DB)
        .stats_user(STATS_ROLE);
    let bouncer = Bouncer::start(&sb, &options)?;
    ensure!(
        version.matches(bouncer.reported_version()),
        "started {} for {version}",
        bouncer.reported_version()
    );

    // It runs as the servers' OS user (not root), with a private directory, and in the
    // mode asked for, on 127.0.0.1 only.
    let server_uid = std::fs::metadata(sb.data_dir())?.uid();
    let bouncer_uid = std::fs::metadata(format!("/proc/{}", bouncer.pid()))?.uid();
    ensure!(
        bouncer_uid == server_uid,
        "pgbouncer runs as uid {bouncer_uid}, the server as {server_uid}"
    );
    let dir_mode = std::fs::metadata(bouncer.dir())?.permissions().mode() & 0o777;
    ensure!(dir_mode == 0o700, "its directory has mode {dir_mode:o}");

    // An application connection: the alias leads to the right database, as the right
    // role, on the sandbox server; the backend is one PgBouncer lists as its server.
    // Simple queries, as transaction pooling wants (no prepared statements).
    let app = bouncer
        .connect(ALIAS, APP_ROLE)
        .await
        .context("application connection through the pooler")?;
    let row = first_row(
        &app.simple_query(
            "SELECT pg_catalog.current_database(), current_user, \
             pg_catalog.inet_server_port()::text, pg_catalog.pg_backend_pid()::text",
        )
        .await?,
    )?;
    let want_port = sb.port().to_string();
    ensure!(
        row[0].as_deref() == Some(APP_DB)
            && row[1].as_deref() == Some(APP_ROLE)
            && row[2].as_deref() == Some(want_port.as_str()),
        "through alias {ALIAS} as {APP_ROLE}: got {row:?}, wanted {APP_DB}, {APP_ROLE}, port {want_port}"
    );
    let backend_pid: i32 = row[3].as_deref().unwrap_or_default().parse()?;
    let direct = sb.admin("postgres").await?;
    let seen = direct
        .query_opt(
            "SELECT datname::text, usename::text, host(client_addr) FROM pg_catalog.pg_stat_activity \
             WHERE pid = $1",
            &[&backend_pid],
        )
        .await?
        .ok_or_else(|| anyhow!("backend {backend_pid} is not on the sandbox server"))?;
    let seen: (String, String, Option<String>) = (seen.get(0), seen.get(1), seen.get(2));
    ensure!(
        seen == (APP_DB.into(), APP_ROLE.into(), Some("127.0.0.1".into())),
        "the backend on the server: {seen:?}"
    );

    // The admin console (simple query protocol only) reports the version.
    let admin = bouncer.admin(roles::ADMIN).await?;
    let shown = admin.simple_query("SHOW VERSION").await?;
    let shown = shown
        .first()
        .and_then(|r| r.get("version"))
        .ok_or_else(|| anyhow!("SHOW VERSION gave no version: {shown:?}"))?
        .to_owned();
    ensure!(
        shown == format!("PgBouncer {}", bouncer.reported_version()),
        "SHOW VERSION said {shown:?}, the binary {}",
        bouncer.reported_version()
    );
    let config = admin.simple_query("SHOW CONFIG").await?;
    let setting = |key: &str| {
        config
            .iter()
            .find(|r| r.get("key") == Some(key))
            .and_then(|r| r.get("value"))
            .map(str::to_owned)
    };
    ensure!(
        setting("pool_mode").as_deref() == Some(mode.as_str())
            && setting("listen_addr").as_deref() == Some("127.0.0.1"),
        "SHOW CONFIG: pool_mode {:?}, listen_addr {:?}",
        setting("pool_mode"),
        setting("listen_addr")
    );
    let servers = admin.simple_query("SHOW SERVERS").await?;
    ensure!(
        servers.iter().any(|s| s.get("database") == Some(ALIAS)
            && s.get("user") == Some(APP_ROLE)
            && s.get("remote_pid") == Some(backend_pid.to_string().as_str())),
        "SHOW SERVERS does not list backend {backend_pid}: {servers:?}"
    );

    // A stats user sees the clients but may not pause.
    let stats = bouncer.admin(STATS_ROLE).await?;
    let clients = stats.simple_query("SHOW CLIENTS").await?;
    ensure!(
        clients
            .iter()
            .any(|c| c.get("database") == Some(ALIAS) && c.get("user") == Some(APP_ROLE)),
        "SHOW CLIENTS (as stats user) does not list the application: {clients:?}"
    );
    let denied = match stats.simple_query("PAUSE").await {
        Ok(rows) => bail!("a stats user could PAUSE: {rows:?}"),
        Err(e) => e,
    };
    let refusal = match &denied {
        pgkill_sandbox::Error::Sql { source, .. } => source.as_db_error(),
        _ => None,
    }
    .ok_or_else(|| {
        anyhow!("PAUSE as stats user failed, but not with an error from PgBouncer: {denied:#}")
    })?;
    ensure!(
        refusal.message().contains("admin access needed"),
        "PAUSE as stats user was refused otherwise: {} {}",
        refusal.code().code(),
        refusal.message()
    );
    let databases = admin.simple_query("SHOW DATABASES").await?;
    let paused = databases
        .iter()
        .find(|d| d.get("name") == Some(ALIAS))
        .and_then(|d| d.get("paused"))
        .ok_or_else(|| anyhow!("SHOW DATABASES has no {ALIAS}: {databases:?}"))?;
    ensure!(
        paused == "0",
        "{ALIAS} is paused ({paused}) after a refused PAUSE"
    );
    let row = first_row(&app.simple_query("SELECT 1").await?)?;
    ensure!(
        row[0].as_deref() == Some("1"),
        "the application after the refused PAUSE: {row:?}"
    );

    // Dropping the bouncer: its process goes, its clients are cut off, its port is free,
    // its directory removed.
    let (pid, port, dir) = (bouncer.pid(), bouncer.port(), bouncer.dir().to_path_buf());
    ensure!(
        pgkill_sandbox::process_alive(pid),
        "pgbouncer {pid} is not running"
    );
    let dropping = Instant::now();
    drop(bouncer);
    // SIGKILL would only come after 10 s: this was the immediate shutdown.
    ensure!(
        dropping.elapsed() < Duration::from_secs(5),
        "dropping the bouncer took {:?}",
        dropping.elapsed()
    );
    ensure!(
        !pgkill_sandbox::process_alive(pid),
        "pgbouncer {pid} survived its drop"
    );
    ensure!(!dir.exists(), "{} survived the drop", dir.display());
    TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .with_context(|| format!("port {port} is still taken after the drop"))?;
    ensure!(
        app.simple_query("SELECT 1").await.is_err(),
        "the application connection still works after the bouncer went"
    );
    // Its server connection goes too (PgBouncer closed it), on the server's own time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = direct
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1",
                &[&backend_pid],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "backend {backend_pid} still there 10 s after the bouncer went"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A test that panics while holding a bouncer (of each version) leaves no process, no
/// directory and no taken port behind.
async fn teardown_on_panic_leaves_nothing(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    for version in BouncerVersion::ALL {
        let options = BouncerOptions::new(version, PoolMode::Session);
        let (tx, rx) = std::sync::mpsc::channel();
        let joined = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let bouncer = Bouncer::start(&sb, &options);
                    let held = bouncer
                        .as_ref()
                        .map(|b| (b.pid(), b.port(), b.dir().to_path_buf()))
                        .map_err(|e| format!("{e:#}"));
                    let _ = tx.send(held);
                    panic!("on purpose, holding a PgBouncer {version}");
                })
                .join()
        });
        ensure!(joined.is_err(), "the thread did not panic");
        let (pid, port, dir) = rx.recv()?.map_err(|e| anyhow!("starting {version}: {e}"))?;
        ensure!(
            !pgkill_sandbox::process_alive(pid),
            "pgbouncer {version} ({pid}) survived the panic"
        );
        ensure!(!dir.exists(), "{} survived the panic", dir.display());
        TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("port {port} of pgbouncer {version} is still taken"))?;
    }
    Ok(())
}

/// The body of the process `bouncer_dies_with_its_process` kills: a sandbox with one
/// bouncer of each version; prints `pid dir` of each on one line, then waits to be killed.
fn hold(bin_dir: std::path::PathBuf) -> ! {
    let held = || -> Result<(Sandbox, Vec<Bouncer>)> {
        let inst = Installation::probe(&bin_dir, pgkill_sandbox::Source::Explicit)
            .ok_or_else(|| anyhow!("no installation in {}", bin_dir.display()))?;
        let sb = Sandbox::start(&inst, &Options::default())?;
        let mut bouncers = Vec::new();
        for version in BouncerVersion::ALL {
            bouncers.push(Bouncer::start(
                &sb,
                &BouncerOptions::new(version, PoolMode::Transaction),
            )?);
        }
        Ok((sb, bouncers))
    };
    let code = match held() {
        Ok((_sb, bouncers)) => {
            let line: Vec<String> = bouncers
                .iter()
                .map(|b| format!("{} {}", b.pid(), b.dir().display()))
                .collect();
            println!("{}", line.join(" "));
            std::thread::sleep(Duration::from_secs(600));
            0
        }
        Err(e) => {
            println!("error {e:#}");
            1
        }
    };
    std::process::exit(code)
}

/// When the process holding a bouncer is killed outright (no destructor runs), PgBouncer
/// goes with it (parent-death signal: its immediate shutdown), and its directory, inside
/// the sandbox's, is swept with the sandbox's by the next sandbox started.
async fn bouncer_dies_with_its_process(pg: Installation) -> Result<()> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(HOLD_ENV, &pg.bin_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        words.len() == 2 * BouncerVersion::ALL.len() && words[0] != "error",
        "the holder said {line:?}"
    );
    let mut held = Vec::new();
    for pair in words.chunks(2) {
        let pid: u32 = pair[0].parse().with_context(|| line.clone())?;
        ensure!(
            pgkill_sandbox::process_alive(pid),
            "pgbouncer {pid} is not running"
        );
        held.push((pid, std::path::PathBuf::from(pair[1])));
    }

    child.kill()?; // SIGKILL: no destructor runs
    child.wait()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while held
        .iter()
        .any(|(pid, _)| pgkill_sandbox::process_alive(*pid))
    {
        ensure!(
            Instant::now() < deadline,
            "pgbouncer outlived its owner by 10 s: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _next = Sandbox::start(&pg, &Options::default())?;
    for (_, dir) in &held {
        ensure!(!dir.exists(), "stale {} was not swept", dir.display());
    }
    Ok(())
}

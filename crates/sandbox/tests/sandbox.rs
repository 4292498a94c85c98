//! The sandbox itself, on every PostgreSQL version: servers start with the settings and
//! roles asked for, only the OS user who started them can log in (fresh passwords, private
//! files, no `trust`), every simulated session kind shows up on the server as it should
//! and records how it was ended, pools reconnect, teardown leaves nothing behind, and the
//! sweep of stale sandboxes never touches another user's.

#![allow(clippy::panic)] // a test harness: one case panics on purpose

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::sim::{self, PoolOptions, Statement, WriterOptions};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};

const HOLD_ENV: &str = "PGKILL_SANDBOX_TEST_HOLD";

fn main() {
    // Re-executed by `server_dies_with_its_process`: start a sandbox, say where it is, hang.
    if let Ok(bin_dir) = std::env::var(HOLD_ENV) {
        hold(PathBuf::from(bin_dir));
    }
    pgkill_sandbox::matrix::main(cases![
        starts_with_settings_and_roles,
        passwords_are_checked,
        only_its_own_user_gets_in,
        sweep_spares_other_users_dirs,
        session_kinds_show_up,
        sessions_record_how_they_ended,
        killing_lock_holder_releases_waiters,
        writer_commits_survive_termination,
        pool_reconnects_after_terminate,
        teardown_leaves_no_process_and_no_directory,
        teardown_on_panic_leaves_nothing,
        server_dies_with_its_process,
        standby_replays_the_primary,
    ]);
}

const WAIT: Duration = Duration::from_secs(10);

async fn scalar_text(client: &tokio_postgres::Client, sql: &str) -> Result<String> {
    Ok(client
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_owned())?
        .get(0))
}

/// `state` and `wait_event_type` of a backend as pg_stat_activity shows it.
async fn activity(
    client: &tokio_postgres::Client,
    pid: i32,
) -> Result<(Option<String>, Option<String>)> {
    let row = client
        .query_opt(
            "SELECT state, wait_event_type FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .ok_or_else(|| anyhow!("pid {pid} is not in pg_stat_activity"))?;
    Ok((row.get(0), row.get(1)))
}

async fn backend_exists(client: &tokio_postgres::Client, pid: i32) -> Result<bool> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .get(0);
    Ok(n > 0)
}

async fn starts_with_settings_and_roles(pg: Installation) -> Result<()> {
    let options = Options::default()
        .max_connections(1200)
        .logical_wal()
        .setting("application_name", "from-sandbox");
    let sb = Sandbox::start(&pg, &options)?;
    let admin = sb.admin("postgres").await?;
    let num: i32 = scalar_text(&admin, "SHOW server_version_num")
        .await?
        .parse()?;
    ensure!(
        num as u32 / 10_000 == pg.version.major,
        "server says {num}, expected major {}",
        pg.version.major
    );
    ensure!(scalar_text(&admin, "SHOW max_connections").await? == "1200");
    ensure!(scalar_text(&admin, "SHOW wal_level").await? == "logical");
    ensure!(scalar_text(&admin, "SHOW max_prepared_transactions").await? == "10");
    ensure!(scalar_text(&admin, "SHOW listen_addresses").await? == "127.0.0.1");
    ensure!(scalar_text(&admin, "SHOW server_encoding").await? == "UTF8");

    let rows = admin
        .query(
            "SELECT rolname, rolsuper, rolcreatedb, rolcanlogin,
                    pg_has_role(oid, 'pg_signal_backend', 'MEMBER')
             FROM pg_roles WHERE rolname = ANY($1) ORDER BY rolname",
            &[&roles::ALL.to_vec()],
        )
        .await?;
    let got: Vec<(String, bool, bool, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    let want = vec![
        (roles::ADMIN.to_owned(), true, true, true, true),
        (roles::OWNER.to_owned(), false, true, true, false),
        (roles::PLAIN.to_owned(), false, false, true, false),
        (roles::SIGNALLER.to_owned(), false, false, true, true),
        (roles::SUPERUSER.to_owned(), true, false, true, true),
    ];
    ensure!(got == want, "roles: {got:?}");

    // Every role can log in over TCP and over the Unix socket.
    for role in roles::ALL {
        let c = sb.connect("postgres", role).await?;
        ensure!(scalar_text(&c, "SELECT current_user::text").await? == role);
    }
    let (c, conn) = sb
        .socket_config("postgres", roles::PLAIN)
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    let addr: Option<String> = c
        .query_one(
            "SELECT client_addr::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        addr.is_none(),
        "a Unix-socket session has no client address, got {addr:?}"
    );
    ensure!(sb
        .socket_dir()
        .join(format!(".s.PGSQL.{}", sb.port()))
        .exists());
    Ok(())
}

/// The SQLSTATE of a failed login, or why it did not fail.
async fn login_error(config: &tokio_postgres::Config) -> Result<Option<String>> {
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => Err(anyhow!("logged in: {config:?}")),
        Err(e) => Ok(e.code().map(|c| c.code().to_owned())),
    }
}

async fn passwords_are_checked(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.connect("postgres", roles::PLAIN)
        .await
        .context("right password")?;
    // Over TCP: a wrong password, the old public one, and none at all are refused.
    for (what, password) in [
        ("a wrong password", Some("not-the-password".to_owned())),
        (
            "the old public password",
            Some(format!("{}-password", roles::PLAIN)),
        ),
        ("no password", None),
    ] {
        let mut config = tokio_postgres::Config::new();
        config
            .host(sb.host())
            .port(sb.port())
            .user(roles::PLAIN)
            .dbname("postgres");
        if let Some(p) = &password {
            config.password(p.as_str());
        }
        let code = login_error(&config).await.context(what)?;
        ensure!(
            code.as_deref() == Some("28P01") || (password.is_none() && code.is_none()),
            "{what}: {code:?}"
        );
    }
    // A role made later has a password of its own, over TCP and over the socket.
    sb.create_role("made_later", "LOGIN").await?;
    let password = sb
        .password("made_later")
        .ok_or_else(|| anyhow!("no password for made_later"))?;
    ensure!(password != sb.password(roles::PLAIN).unwrap_or_default());
    let c = sb.connect("postgres", "made_later").await?;
    ensure!(scalar_text(&c, "SELECT current_user::text").await? == "made_later");
    let (c, conn) = sb
        .socket_config("postgres", "made_later")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    ensure!(scalar_text(&c, "SELECT current_user::text").await? == "made_later");
    let mut wrong = sb.socket_config("postgres", "made_later");
    wrong.password("not-the-password");
    ensure!(login_error(&wrong).await?.as_deref() == Some("28P01"));
    Ok(())
}

fn mode_of(path: &Path) -> Result<u32> {
    Ok(std::fs::symlink_metadata(path)
        .with_context(|| path.display().to_string())?
        .permissions()
        .mode()
        & 0o7777)
}

async fn only_its_own_user_gets_in(pg: Installation) -> Result<()> {
    let a = Sandbox::start(&pg, &Options::default())?;
    let b = Sandbox::start(&pg, &Options::default())?;

    // pg_hba.conf trusts nobody: every line is peer (socket, with the map) or SCRAM.
    let hba = std::fs::read_to_string(a.data_dir().join("pg_hba.conf"))?;
    let rules: Vec<&str> = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    ensure!(!rules.is_empty(), "empty pg_hba.conf");
    for rule in &rules {
        let fields: Vec<&str> = rule.split_whitespace().collect();
        ensure!(!fields.contains(&"trust"), "trust in pg_hba.conf: {rule}");
        let method = match fields[0] {
            "local" => fields.get(3),
            _ => fields.get(4),
        };
        ensure!(
            matches!(method, Some(&"scram-sha-256"))
                || (fields[0] == "local"
                    && method == Some(&"peer")
                    && rule.ends_with("map=pgkill")),
            "unexpected rule {rule}"
        );
    }
    let admin = a.admin("postgres").await?;
    let hba_file = scalar_text(&admin, "SHOW hba_file").await?;
    ensure!(
        Path::new(&hba_file) == a.data_dir().join("pg_hba.conf"),
        "{hba_file}"
    );
    ensure!(scalar_text(&admin, "SHOW unix_socket_permissions").await? == "0700");
    ensure!(scalar_text(&admin, "SHOW password_encryption").await? == "scram-sha-256");
    // Every role's password is stored as SCRAM.
    let stored: Vec<(String, Option<String>)> = admin
        .query(
            "SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid WHERE rolname = ANY($1)",
            &[&roles::ALL.to_vec()],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    ensure!(stored.len() == roles::ALL.len(), "{stored:?}");
    for (role, secret) in &stored {
        ensure!(
            secret
                .as_deref()
                .is_some_and(|s| s.starts_with("SCRAM-SHA-256$")),
            "{role} stores {secret:?}"
        );
    }

    // Private directories and files.
    let euid = nix::unistd::Uid::effective().as_raw();
    let socket = a.socket_dir().join(format!(".s.PGSQL.{}", a.port()));
    for (path, want) in [
        (a.socket_dir().to_path_buf(), 0o700),
        (a.data_dir(), 0o700),
        (socket, 0o700),
        (a.passfile().to_path_buf(), 0o600),
    ] {
        let mode = mode_of(&path)?;
        ensure!(
            mode == want,
            "{} has mode {mode:o}, want {want:o}",
            path.display()
        );
    }
    let pass_dir = a
        .passfile()
        .parent()
        .ok_or_else(|| anyhow!("passfile has no directory"))?;
    ensure!(mode_of(pass_dir)? == 0o700, "{} mode", pass_dir.display());
    for path in [pass_dir, a.passfile()] {
        let owner = std::fs::metadata(path)?.uid();
        ensure!(
            owner == euid,
            "{} is owned by {owner}, not {euid}",
            path.display()
        );
    }

    // The template cache is ours and private too.
    let cache = std::env::var_os("PGKILL_SANDBOX_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pgkill-sandbox-cache-{euid}")));
    ensure!(mode_of(&cache)? == 0o700, "{} mode", cache.display());
    ensure!(
        std::fs::metadata(&cache)?.uid() == euid,
        "{} owner",
        cache.display()
    );

    // Two sandboxes, different passwords for every role; none is the old public one, and
    // one sandbox's password does not open the other.
    for role in roles::ALL {
        let (pa, pb) = (a.password(role), b.password(role));
        ensure!(
            pa.is_some() && pb.is_some() && pa != pb,
            "{role}: {pa:?} vs {pb:?}"
        );
        ensure!(
            pa != Some(format!("{role}-password")),
            "{role} has the old password"
        );
        let passfile = std::fs::read_to_string(a.passfile())?;
        let line = format!("127.0.0.1:{}:*:{role}:{}", a.port(), pa.unwrap_or_default());
        ensure!(
            passfile.lines().any(|l| l == line),
            "{role} not in the passfile"
        );
        let mut cross = b.config("postgres", role);
        cross.password(a.password(role).unwrap_or_default());
        ensure!(
            login_error(&cross).await?.as_deref() == Some("28P01"),
            "{role}"
        );
    }

    // The password file is what a libpq client needs: psql reads it.
    let out = Command::new(psql()?)
        .env_clear()
        .envs(a.client_env())
        .args([
            "-w",
            "-X",
            "-At",
            "-U",
            roles::PLAIN,
            "-d",
            "postgres",
            "-c",
        ])
        .arg("SELECT pg_catalog.current_user()")
        .output()?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).trim() == roles::PLAIN,
        "psql with the passfile: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `psql`, from the distribution (a client: any version talks to every server).
fn psql() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin/psql")).collect())
        .unwrap_or_default();
    candidates.push("/usr/bin/psql".into());
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!("psql not found: install the PostgreSQL client programs (apt-get install postgresql-client)")
    })
}

/// Runs `script` with `sh -c` as the OS user `nobody`; fails loudly unless we are root.
fn as_nobody(script: &str) -> Result<std::process::Output> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "this test acts as a second OS user (nobody) and needs root; run it as root (CI does)"
    );
    let nobody =
        nix::unistd::User::from_name("nobody")?.ok_or_else(|| anyhow!("no OS user nobody"))?;
    let out = Command::new("sh")
        .args(["-c", script])
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .current_dir("/")
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// A process id that is not running (a child that has exited and been reaped).
fn dead_pid() -> Result<u32> {
    let mut child = Command::new("true").spawn()?;
    let pid = child.id();
    child.wait()?;
    Ok(pid)
}

async fn sweep_spares_other_users_dirs(pg: Installation) -> Result<()> {
    // A sandbox root of this test's own, world-writable and sticky like /dev/shm: the
    // planted directories below are a trap for any sweep that trusts what it finds (older
    // pgkill builds on this machine sweep /dev/shm), so they must not lie where other
    // runs sweep.
    let root_dir = tempfile::Builder::new()
        .prefix("pgkill-sweep-test-")
        .tempdir()?;
    std::fs::set_permissions(root_dir.path(), std::fs::Permissions::from_mode(0o1777))?;
    let options = Options::default().sandbox_dir(root_dir.path());
    let victim = Sandbox::start(&pg, &options)?;
    let postmaster = victim.postmaster_pid();
    let root = root_dir.path().to_path_buf();
    let victim_name = victim
        .passfile()
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("no sandbox name"))?
        .to_owned();
    let dead = dead_pid()?;
    // Planted by nobody in the sandbox root, each naming the victim's postmaster as the
    // server of a sandbox whose owner is gone: a prefix of the victim's directory name
    // (its command line contains it), a directory of the exact form (client and server
    // directory), and a symlink to the victim's own directories.
    let prefix = victim_name[..victim_name.len() - 1].to_owned();
    let tag = std::process::id() % 100_000;
    let form = format!("pgkill-sandbox-f{tag:05}");
    let link = format!("pgkill-sandbox-l{tag:05}");
    let planted: Vec<PathBuf> = [&prefix, &form, &format!("{form}.server"), &link]
        .iter()
        .map(|n| root.join(n))
        .collect();
    let plant = |dir: &Path| {
        format!(
            "mkdir -p {d}/data && echo {dead} > {d}/owner.pid && echo {postmaster} > {d}/server.pid \
             && printf '{postmaster}\n{d}/data\n' > {d}/data/postmaster.pid",
            d = dir.display()
        )
    };
    let script = format!(
        "umask 077; {} && {} && {} && ln -s {} {}",
        plant(&planted[0]),
        plant(&planted[1]),
        plant(&planted[2]),
        victim.socket_dir().display(),
        planted[3].display()
    );
    let result = async {
        as_nobody(&script)?;
        // A new sandbox sweeps the root.
        let _next = Sandbox::start(&pg, &options)?;
        ensure!(
            pgkill_sandbox::process_alive(postmaster),
            "the victim's postmaster {postmaster} was killed by the sweep"
        );
        let admin = victim
            .admin("postgres")
            .await
            .context("the victim still serves")?;
        ensure!(scalar_text(&admin, "SELECT 'alive'").await? == "alive");
        for path in &planted {
            ensure!(
                std::fs::symlink_metadata(path).is_ok(),
                "the sweep removed {} (not ours)",
                path.display()
            );
        }
        ensure!(
            planted[1].join("owner.pid").is_file()
                && planted[2].join("data/postmaster.pid").is_file()
        );
        Ok(())
    }
    .await;
    for path in &planted {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            let _ = std::fs::remove_dir_all(path);
        } else {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

async fn session_kinds_show_up(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", Some(roles::OWNER)).await?;
    let admin = sb.admin("postgres").await?;
    let cfg = sb.config("app", roles::OWNER);

    let idle = sim::idle(&cfg).await?;
    let in_tx = sim::idle_in_transaction(&cfg, Some("SELECT 1")).await?;
    let active = sim::active(&cfg, Duration::from_secs(60)).await?;
    let chain = sim::lock_chain(&cfg, "locked", 3).await?;
    let prepared = sim::prepared(&cfg, "sandbox-gid'1", None).await?;
    let writer = sim::committing_writer(&cfg, WriterOptions::default()).await?;
    let pool = sim::pool(
        &cfg,
        PoolOptions {
            clients: 4,
            ..PoolOptions::default()
        },
    )
    .await?;

    ensure!(activity(&admin, idle.pid()).await?.0.as_deref() == Some("idle"));
    ensure!(activity(&admin, in_tx.pid()).await?.0.as_deref() == Some("idle in transaction"));
    ensure!(
        activity(&admin, active.pid()).await? == (Some("active".into()), Some("Timeout".into()))
    );
    ensure!(
        activity(&admin, chain.holder.pid()).await?.0.as_deref() == Some("idle in transaction")
    );
    for w in &chain.waiters {
        ensure!(activity(&admin, w.pid()).await? == (Some("active".into()), Some("Lock".into())));
        let blockers: Vec<i32> = admin
            .query_one("SELECT pg_blocking_pids($1)", &[&w.pid()])
            .await?
            .get(0);
        ensure!(
            blockers.contains(&chain.holder.pid()),
            "waiter {} blocked by {blockers:?}",
            w.pid()
        );
    }
    let gids: Vec<String> = admin
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = 'app'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(gids == ["sandbox-gid'1"], "prepared transactions: {gids:?}");
    ensure!(activity(&admin, prepared.pid()).await?.0.as_deref() == Some("idle"));

    let began = Instant::now();
    while writer.log().acknowledged.len() < 3 {
        ensure!(
            began.elapsed() < WAIT,
            "writer committed nothing: {:?}",
            writer.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = activity(&admin, writer.pid()).await?.0;
    ensure!(
        matches!(
            state.as_deref(),
            Some("active" | "idle in transaction" | "idle")
        ),
        "writer state {state:?}"
    );

    let pool_sessions: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND usename = $1 AND state = 'idle'", &[&roles::OWNER])
        .await?
        .get(0);
    ensure!(
        pool_sessions >= 4 + 2,
        "pool (4) + idle + prepared sessions idle: {pool_sessions}"
    );
    ensure!(pool.stats().connected == 4);
    let app = sb.admin("app").await?;
    app.batch_execute("ROLLBACK PREPARED 'sandbox-gid''1'")
        .await?;
    Ok(())
}

async fn sessions_record_how_they_ended(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    admin.batch_execute("CREATE TABLE t (v text)").await?;
    let cfg = sb.config("postgres", roles::PLAIN);
    admin
        .batch_execute(&format!("GRANT ALL ON t TO {}", roles::PLAIN))
        .await?;

    let idle = sim::idle(&cfg).await?;
    let in_tx =
        sim::idle_in_transaction(&cfg, Some("INSERT INTO t VALUES ('uncommitted')")).await?;
    let active = sim::active(&cfg, Duration::from_secs(60)).await?;

    // Cancel: the statement fails with 57014 and the session stays.
    let cancelled: bool = admin
        .query_one("SELECT pg_cancel_backend($1)", &[&active.pid()])
        .await?
        .get(0);
    ensure!(cancelled);
    match active.wait_statement(WAIT).await {
        Statement::Failed(e) => ensure!(
            e.sqlstate.as_deref() == Some("57014"),
            "cancelled with {e:?}"
        ),
        other => return Err(anyhow!("cancelled statement: {other:?}")),
    }
    ensure!(active.is_connected() && active.ended().is_none());
    ensure!(backend_exists(&admin, active.pid()).await?);
    // A simple query: an extended-protocol one would leave a statement `Close` in
    // flight that could swallow the FATAL message sent at the termination below.
    let rows = active.client().simple_query("SELECT 'still here'").await?;
    let answered = rows.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("still here"),
        _ => false,
    });
    ensure!(answered, "the cancelled session does not answer: {rows:?}");

    // Terminate: idle sessions and open transactions get FATAL 57P01 and the work is rolled back.
    for s in [&idle, &in_tx, &active] {
        let ok: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&s.pid()])
            .await?
            .get(0);
        ensure!(ok);
    }
    for s in [&idle, &in_tx, &active] {
        let ending = s
            .wait_ended(WAIT)
            .await
            .ok_or_else(|| anyhow!("{} session {} did not end", s.kind(), s.pid()))?;
        ensure!(
            ending.sqlstate.as_deref() == Some("57P01"),
            "{} session ended with {ending:?}",
            s.kind()
        );
    }
    let rows: i64 = admin.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
    ensure!(rows == 0, "the terminated transaction's row is visible");
    Ok(())
}

async fn killing_lock_holder_releases_waiters(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"hot table\" (id int); GRANT ALL ON \"hot table\" TO {}",
            roles::PLAIN
        ))
        .await?;
    let chain = sim::lock_chain(&sb.config("postgres", roles::PLAIN), "hot table", 2).await?;
    for w in &chain.waiters {
        ensure!(w.statement() == Statement::Running);
    }
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&chain.holder.pid()])
        .await?;
    ensure!(
        chain
            .holder
            .wait_ended(WAIT)
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01")
    );
    for w in &chain.waiters {
        let done = w.wait_statement(WAIT).await;
        ensure!(done == Statement::Completed, "waiter {}: {done:?}", w.pid());
        ensure!(w.is_connected());
    }
    Ok(())
}

async fn writer_commits_survive_termination(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let options = WriterOptions {
        table: "ledger".into(),
        transaction_time: Duration::from_millis(50),
        pause: Duration::from_millis(5),
    };
    let mut writer =
        sim::committing_writer(&sb.config("postgres", roles::SUPERUSER), options).await?;
    let began = Instant::now();
    while writer.log().acknowledged.len() < 5 {
        ensure!(began.elapsed() < WAIT, "writer stalled: {:?}", writer.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&writer.pid()])
        .await?;
    ensure!(
        writer.wait_finished(WAIT).await,
        "writer did not notice its termination"
    );
    let log = writer.log();
    let failed = log
        .failed
        .clone()
        .ok_or_else(|| anyhow!("writer saw no failure: {log:?}"))?;
    // A writer that was sending its next statement when the backend exited can see the
    // connection reset (the server closed a socket with unread input) before the FATAL
    // message: that is what a real client sees too. Anything else is a bug.
    ensure!(
        matches!(failed.ending.sqlstate.as_deref(), Some("57P01") | None),
        "{failed:?}"
    );
    let stored: Vec<i64> = admin
        .query(
            "SELECT seq FROM ledger WHERE writer = $1 ORDER BY seq",
            &[&writer.id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if failed.failed_in_commit {
        // The commit may or may not have happened; everything acknowledged must be there.
        ensure!(
            stored.starts_with(&log.acknowledged),
            "stored {stored:?} vs acknowledged {:?}",
            log.acknowledged
        );
    } else {
        ensure!(
            stored == log.acknowledged,
            "stored {stored:?} vs acknowledged {:?}",
            log.acknowledged
        );
    }
    Ok(())
}

async fn pool_reconnects_after_terminate(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    // Superuser clients: the case that REVOKE CONNECT cannot stop.
    let mut cfg = sb.config("postgres", roles::SUPERUSER);
    cfg.application_name("sandbox-pool");
    let pool = sim::pool(
        &cfg,
        PoolOptions {
            clients: 20,
            ..PoolOptions::default()
        },
    )
    .await?;
    let pids_sql = "SELECT array_agg(pid ORDER BY pid) FROM pg_stat_activity WHERE application_name = 'sandbox-pool'";
    let before: Vec<i32> = admin.query_one(pids_sql, &[]).await?.get(0);
    ensure!(before.len() == 20, "pool sessions: {before:?}");

    let signalled: i64 = admin
        .query_one("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'sandbox-pool'", &[])
        .await?
        .get(0);
    ensure!(signalled == 20);
    ensure!(
        pool.wait_for(WAIT, |s| s.ended.get("57P01") == Some(&20)
            && s.connected == 20)
            .await,
        "pool did not reconnect: {:?}",
        pool.stats()
    );
    let began = Instant::now();
    let after: Vec<i32> = loop {
        let pids: Option<Vec<i32>> = admin.query_one(pids_sql, &[]).await?.get(0);
        let pids = pids.unwrap_or_default();
        if pids.len() == 20 && pids.iter().all(|p| !before.contains(p)) {
            break pids;
        }
        ensure!(
            began.elapsed() < WAIT,
            "pool sessions after terminate: {pids:?}"
        );
        admin
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await?;
    };
    ensure!(after.iter().all(|p| !before.contains(p)));
    let stats = pool.stop().await;
    ensure!(stats.connects >= 40, "{stats:?}");
    Ok(())
}

/// Every process of the server: the postmaster and each backend and auxiliary process.
async fn server_pids(sb: &Sandbox) -> Result<Vec<u32>> {
    let admin = sb.admin("postgres").await?;
    let mut pids: Vec<u32> = admin
        .query("SELECT pid FROM pg_stat_activity", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, i32>(0) as u32)
        .collect();
    pids.extend(children_of(sb.postmaster_pid()));
    pids.push(sb.postmaster_pid());
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
                })
                .flatten()
                .is_some_and(|ppid| ppid == parent.to_string())
        })
        .collect()
}

fn alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|p| pgkill_sandbox::process_alive(*p))
        .collect()
}

async fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let began = Instant::now();
    loop {
        let left = alive(pids);
        if left.is_empty() || began.elapsed() > timeout {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn teardown_leaves_no_process_and_no_directory(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let _idle = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let _active = sim::active(
        &sb.config("postgres", roles::PLAIN),
        Duration::from_secs(600),
    )
    .await?;
    let pool = sim::pool(
        &sb.config("postgres", roles::SUPERUSER),
        PoolOptions {
            clients: 5,
            ..Default::default()
        },
    )
    .await?;
    let pids = server_pids(&sb).await?;
    ensure!(
        pids.len() >= 8,
        "expected postmaster, auxiliaries and 8 clients: {pids:?}"
    );
    let dirs = [
        sb.socket_dir().to_path_buf(),
        sb.passfile()
            .parent()
            .ok_or_else(|| anyhow!("no client directory"))?
            .to_path_buf(),
    ];
    drop(sb); // clients still connected and reconnecting: shutdown must not wait for them
    for dir in dirs {
        ensure!(!dir.exists(), "{} still exists", dir.display());
    }
    let left = alive(&pids);
    ensure!(
        left.is_empty(),
        "server processes still alive after drop: {left:?}"
    );
    drop(pool);
    Ok(())
}

async fn teardown_on_panic_leaves_nothing(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let pids = server_pids(&sb).await?;
    let dir = sb.socket_dir().to_path_buf();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _sb = sb;
        panic!("a test failing while its sandbox runs");
    }));
    ensure!(outcome.is_err());
    ensure!(
        !dir.exists(),
        "{} still exists after the panic",
        dir.display()
    );
    let left = alive(&pids);
    ensure!(
        left.is_empty(),
        "server processes still alive after the panic: {left:?}"
    );
    Ok(())
}

fn hold(bin_dir: PathBuf) -> ! {
    let code = match Installation::probe(&bin_dir, pgkill_sandbox::Source::Explicit)
        .ok_or_else(|| anyhow!("no installation in {}", bin_dir.display()))
        .and_then(|inst| Ok(Sandbox::start(&inst, &Options::default())?))
    {
        Ok(sb) => {
            let client_dir = sb.passfile().parent().unwrap_or(Path::new("/nonexistent"));
            println!(
                "{} {} {}",
                sb.postmaster_pid(),
                sb.socket_dir().display(),
                client_dir.display()
            );
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

async fn server_dies_with_its_process(pg: Installation) -> Result<()> {
    use std::io::BufRead;
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env(HOLD_ENV, &pg.bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let postmaster: u32 = parts
        .next()
        .ok_or_else(|| anyhow!("holder said {line:?}"))?
        .parse()
        .with_context(|| line.clone())?;
    let mut dir = || -> Result<PathBuf> {
        Ok(PathBuf::from(
            parts
                .next()
                .ok_or_else(|| anyhow!("holder said {line:?}"))?,
        ))
    };
    let (server_dir, client_dir) = (dir()?, dir()?);
    let mut pids = children_of(postmaster);
    pids.push(postmaster);
    ensure!(pgkill_sandbox::process_alive(postmaster));

    child.kill()?; // SIGKILL: no destructor runs
    child.wait()?;
    let left = wait_gone(&pids, Duration::from_secs(10)).await;
    ensure!(
        left.is_empty(),
        "server processes outlived their owner: {left:?}"
    );

    // The directory it left behind is removed by the next sandbox started here (or by
    // one that a test running in parallel started first: either way it must be gone).
    let _next = Sandbox::start(&pg, &Options::default())?;
    for dir in [server_dir, client_dir] {
        ensure!(!dir.exists(), "stale {} was not swept", dir.display());
    }
    Ok(())
}

/// A standby started from a running primary is in recovery, streams from the primary
/// (a row committed there shows up) and refuses writes.
async fn standby_replays_the_primary(pg: Installation) -> Result<()> {
    let primary = Sandbox::start(&pg, &Options::default())?;
    let admin = primary.admin("postgres").await?;
    admin
        .batch_execute("CREATE TABLE before_copy (n int); INSERT INTO before_copy VALUES (1)")
        .await?;
    let standby = primary.start_standby(&Options::default())?;
    ensure!(standby.port() != primary.port(), "same port");
    let replica = standby.admin("postgres").await?;
    ensure!(
        scalar_text(&replica, "SELECT pg_catalog.pg_is_in_recovery()::text").await? == "true",
        "the standby is not in recovery"
    );
    ensure!(
        scalar_text(&admin, "SELECT pg_catalog.pg_is_in_recovery()::text").await? == "false",
        "the primary is in recovery"
    );
    ensure!(
        scalar_text(&replica, "SELECT n::text FROM before_copy").await? == "1",
        "the row committed before the copy is missing"
    );
    admin
        .batch_execute("CREATE TABLE after_copy (n int); INSERT INTO after_copy VALUES (42)")
        .await?;
    let began = Instant::now();
    loop {
        let seen = replica
            .query_opt("SELECT n::text FROM after_copy", &[])
            .await
            .ok()
            .flatten()
            .map(|row| row.get::<_, String>(0));
        if seen.as_deref() == Some("42") {
            break;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(30),
            "the row committed on the primary never reached the standby (log: {})",
            standby.log_file().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = replica
        .batch_execute("CREATE TABLE nope (n int)")
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_owned()));
    ensure!(
        err.as_deref() == Some("25006"),
        "a write on the standby: {err:?}"
    );
    // Its own password file works too.
    let plain = standby.connect("postgres", roles::PLAIN).await?;
    ensure!(scalar_text(&plain, "SELECT current_user::text").await? == roles::PLAIN);
    Ok(())
}

//! `pgkill drop`, `rename`, `drain` and `unfence` on the real binary against real servers,
//! every PostgreSQL version: they beat reconnecting pools (superusers included), refuse
//! up front with nothing changed, keep committed work, and never leave a database
//! locked out (settings restored exactly on failure, Ctrl-C, or after a crash).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::sim::{self, PoolOptions, WriterOptions};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};

mod support;

use support::{customise, db_row, recvlogical, wait_fenced, wait_no_sessions};

fn main() {
    pgkill_sandbox::matrix::main(cases![
        drop_beats_a_pool_of_superusers,
        rename_beats_a_pool_and_keeps_settings,
        prepared_transaction_refuses_until_rolled_back,
        template_refused_unless_allowed,
        owner_cannot_drop_under_superuser_session,
        drain_with_grace_keeps_acknowledged_commits,
        crash_leaves_fence_that_unfence_restores,
        interrupt_restores_settings,
        hostile_names,
        active_logical_slot_refused_until_walsenders_may_go,
        unfence_leaves_changes_made_by_others,
        invalid_database_can_only_be_dropped,
        subscription_refuses_drop_with_instructions,
    ]);
}

/// A journal directory of this test's own, and the binary with the sandbox's flags.
struct Cli {
    state: tempfile::TempDir,
    target: support::Target,
}

impl Cli {
    fn new(sb: &Sandbox) -> Result<Cli> {
        Ok(Cli {
            state: tempfile::tempdir()?,
            target: support::Target::of(sb),
        })
    }

    fn cmd(&self, role: &str, args: &[&str]) -> Command {
        let mut cmd = support::pgkill_at(&self.target, role, args);
        cmd.env("PGKILL_STATE_DIR", self.state.path());
        cmd
    }

    fn run(&self, role: &str, args: &[&str]) -> Result<(i32, String, String)> {
        support::run(self.cmd(role, args))
    }

    /// pgkill keeps its fence records on the server and writes no local file.
    fn local_files(&self) -> Result<usize> {
        Ok(std::fs::read_dir(self.state.path())?.count())
    }
}

fn storm() -> PoolOptions {
    PoolOptions {
        clients: 50,
        reconnect_delay: Duration::from_millis(1),
    }
}

async fn drop_beats_a_pool_of_superusers(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default().max_connections(150))?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    for (db, role) in [("supers", roles::SUPERUSER), ("plains", roles::PLAIN)] {
        sb.create_database(db, None).await?;
        let pool = sim::pool(&sb.config(db, role), storm()).await?;
        let (code, out, err) = cli.run(roles::ADMIN, &["drop", db, "-y"])?;
        ensure!(code == 0, "drop {db}: exit {code}\n{out}\n{err}");
        ensure!(out.contains(&format!("Dropped {db}")), "{out}");
        ensure!(db_row(&admin, db).await?.is_none(), "{db} still exists");
        // The pool keeps trying and is refused: the database is really gone.
        ensure!(
            pool.wait_for(Duration::from_secs(10), |s| s.connected == 0
                && !s.refused.is_empty())
                .await,
            "{:?}",
            pool.stats()
        );
        ensure!(cli.local_files()? == 0, "journal left behind");
        pool.stop().await;
    }
    Ok(())
}

async fn rename_beats_a_pool_and_keeps_settings(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default().max_connections(150))?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("old name", None).await?;
    customise(&admin, "old name").await?;
    let before = db_row(&admin, "old name")
        .await?
        .ok_or_else(|| anyhow!("no database"))?;
    let pool = sim::pool(&sb.config("old name", roles::SUPERUSER), storm()).await?;
    let (code, out, err) = cli.run(roles::ADMIN, &["rename", "old name", "New Name", "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    pool.stop().await;
    ensure!(db_row(&admin, "old name").await?.is_none());
    let after = db_row(&admin, "New Name")
        .await?
        .ok_or_else(|| anyhow!("renamed database missing: {out}"))?;
    ensure!(after == before, "settings {after:?} != {before:?}");
    ensure!(cli.local_files()? == 0);
    Ok(())
}

async fn prepared_transaction_refuses_until_rolled_back(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("ledger", None).await?;
    let _prep = sim::prepared(&sb.config("ledger", roles::ADMIN), "pay-42", None).await?;
    let before = db_row(&admin, "ledger").await?;
    for args in [
        vec!["drop", "ledger", "-y"],
        vec!["rename", "ledger", "ledger2", "-y"],
    ] {
        let (code, out, err) = cli.run(roles::ADMIN, &args)?;
        ensure!(code == 2, "{args:?}: exit {code}\n{out}");
        ensure!(
            err.contains("\"pay-42\"")
                && err.contains("--rollback-prepared")
                && err.contains("nothing was changed"),
            "{err}"
        );
        ensure!(
            db_row(&admin, "ledger").await? == before,
            "settings changed by a refused {args:?}"
        );
    }
    let (code, out, err) = cli.run(
        roles::ADMIN,
        &["drop", "ledger", "--rollback-prepared", "-y"],
    )?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(out.contains("pay-42"), "{out}");
    ensure!(db_row(&admin, "ledger").await?.is_none());
    let left: i64 = admin
        .query_one("SELECT count(*) FROM pg_prepared_xacts", &[])
        .await?
        .get(0);
    ensure!(left == 0);
    Ok(())
}

async fn template_refused_unless_allowed(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("tmpl", None).await?;
    admin
        .batch_execute("ALTER DATABASE tmpl IS_TEMPLATE true")
        .await?;
    let before = db_row(&admin, "tmpl").await?;
    let (code, _, err) = cli.run(roles::ADMIN, &["drop", "tmpl", "-y"])?;
    ensure!(
        code == 2 && err.contains("--allow-template"),
        "exit {code}: {err}"
    );
    ensure!(db_row(&admin, "tmpl").await? == before);
    let (code, out, err) = cli.run(roles::ADMIN, &["drop", "tmpl", "--allow-template", "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(db_row(&admin, "tmpl").await?.is_none());
    Ok(())
}

async fn owner_cannot_drop_under_superuser_session(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("owned", Some(roles::OWNER)).await?;
    let su = sim::idle(&sb.config("owned", roles::SUPERUSER)).await?;
    let before = db_row(&admin, "owned").await?;
    let (code, out, err) = cli.run(roles::OWNER, &["drop", "owned", "-y"])?;
    ensure!(code == 2, "exit {code}\n{out}\n{err}");
    ensure!(
        err.contains("superuser session") && err.contains("nothing was changed"),
        "{err}"
    );
    ensure!(db_row(&admin, "owned").await? == before && su.is_connected());
    drop(su);
    wait_no_sessions(&admin, "owned").await?;
    // Another role's session the owner cannot signal is refused up front too.
    let plain = sim::idle(&sb.config("owned", roles::PLAIN)).await?;
    let (code, _, err) = cli.run(roles::OWNER, &["drop", "owned", "-y"])?;
    ensure!(
        code == 2 && err.contains(roles::PLAIN) && err.contains("cannot signal"),
        "exit {code}: {err}"
    );
    ensure!(plain.is_connected());
    drop(plain);
    wait_no_sessions(&admin, "owned").await?;
    // Its own sessions the owner may end.
    let _own = sim::idle(&sb.config("owned", roles::OWNER)).await?;
    let (code, out, err) = cli.run(roles::OWNER, &["drop", "owned", "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(db_row(&admin, "owned").await?.is_none());
    Ok(())
}

async fn drain_with_grace_keeps_acknowledged_commits(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("orders", None).await?;
    let options = WriterOptions {
        table: "ledger".into(),
        transaction_time: Duration::from_millis(200),
        pause: Duration::from_millis(20),
    };
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(
            sim::committing_writer(&sb.config("orders", roles::SUPERUSER), options.clone()).await?,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let (code, out, err) = cli.run(
        roles::ADMIN,
        &["drain", "orders", "--grace", "5s", "--then-unfence", "-y"],
    )?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(
        out.contains("0 open transaction(s) rolled back"),
        "every writer should have been caught between transactions: {out}"
    );
    let check = sb.admin("orders").await?;
    for w in &mut writers {
        ensure!(
            w.wait_finished(Duration::from_secs(10)).await,
            "writer {} still running",
            w.id
        );
        let log = w.log();
        let stored: Vec<i64> = check
            .query(
                "SELECT seq FROM ledger WHERE writer = $1 ORDER BY seq",
                &[&w.id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        ensure!(
            stored.starts_with(&log.acknowledged) && stored.len() <= log.acknowledged.len() + 1,
            "writer {}: stored {stored:?}, acknowledged {:?}",
            w.id,
            log.acknowledged
        );
        if let Some(failed) = &log.failed {
            ensure!(
                failed.began >= started,
                "writer {} lost a transaction begun before the fence: {failed:?}",
                w.id
            );
        }
    }
    ensure!(
        db_row(&admin, "orders").await?.is_some_and(|r| r.0),
        "--then-unfence left it fenced"
    );
    drop(writers);

    // Without grace the open transactions are rolled back, and the report says how many.
    let _w = sim::idle_in_transaction(&sb.config("orders", roles::PLAIN), None).await?;
    let _x = sim::idle_in_transaction(&sb.config("orders", roles::PLAIN), None).await?;
    let (code, out, _) = cli.run(roles::ADMIN, &["drain", "orders", "--then-unfence", "-y"])?;
    ensure!(
        code == 0 && out.contains("2 open transaction(s) rolled back"),
        "exit {code}: {out}"
    );
    Ok(())
}

async fn crash_leaves_fence_that_unfence_restores(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("busy", None).await?;
    customise(&admin, "busy").await?;
    let before = db_row(&admin, "busy")
        .await?
        .ok_or_else(|| anyhow!("no db"))?;
    // A transaction that never finishes keeps the drain in its grace period.
    let _open = sim::idle_in_transaction(&sb.config("busy", roles::PLAIN), None).await?;
    let mut child = cli
        .cmd(roles::ADMIN, &["drain", "busy", "--grace", "60s", "-y"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_fenced(&admin, "busy").await?;
    child.kill()?; // SIGKILL: nothing of pgkill runs any more
    child.wait()?;
    let fenced = db_row(&admin, "busy")
        .await?
        .ok_or_else(|| anyhow!("no db"))?;
    ensure!(
        !fenced.0 && (fenced.1, &fenced.2, fenced.3) == (before.1, &before.2, before.3),
        "{fenced:?}"
    );
    // Any command against this server now says so.
    let (_, _, err) = cli.run(roles::ADMIN, &["ls"])?;
    ensure!(
        err.contains("left fenced") && err.contains("pgkill unfence busy"),
        "{err}"
    );
    let (code, out, err) = cli.run(roles::ADMIN, &["unfence", "busy"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(
        db_row(&admin, "busy").await? == Some(before.clone()),
        "not exactly restored"
    );
    let (code, out, _) = cli.run(roles::ADMIN, &["unfence", "busy"])?;
    ensure!(
        code == 0 && out.contains("nothing to do"),
        "second unfence: {code} {out}"
    );
    ensure!(db_row(&admin, "busy").await? == Some(before));
    Ok(())
}

async fn interrupt_restores_settings(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("calm", None).await?;
    customise(&admin, "calm").await?;
    let before = db_row(&admin, "calm").await?;
    let _open = sim::idle_in_transaction(&sb.config("calm", roles::PLAIN), None).await?;
    let child = cli
        .cmd(roles::ADMIN, &["drop", "calm", "--grace", "60s", "-y"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_fenced(&admin, "calm").await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8(out.stderr)?;
    ensure!(out.status.code() == Some(2), "{} {err}", out.status);
    ensure!(
        err.contains("interrupted") && err.contains("restored"),
        "{err}"
    );
    ensure!(
        db_row(&admin, "calm").await? == before,
        "settings not restored after Ctrl-C"
    );
    ensure!(cli.local_files()? == 0);
    Ok(())
}

async fn hostile_names(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    // A role with a hostile name owns the database and does the work.
    let role = r#"Ünï "role"; --"#;
    sb.create_role(role, "LOGIN CREATEDB").await?;
    let name = r#"Shop "Ü"; DROP DATABASE postgres; --"#;
    let renamed = "naïve 'db' \\ x";
    sb.create_database(name, Some(role)).await?;
    let _s = sim::idle(&sb.config(name, role)).await?;
    let (code, out, err) = cli.run(role, &["rename", name, renamed, "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(db_row(&admin, renamed).await?.is_some_and(|r| r.0));
    let (code, out, err) = cli.run(roles::ADMIN, &["drop", renamed, "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(
        db_row(&admin, renamed).await?.is_none() && db_row(&admin, "postgres").await?.is_some()
    );
    Ok(())
}

async fn active_logical_slot_refused_until_walsenders_may_go(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default().logical_wal())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("repl", None).await?;
    sb.admin("repl")
        .await?
        .batch_execute("SELECT pg_create_logical_replication_slot('pgkill_slot', 'test_decoding')")
        .await?;
    let mut consumer = recvlogical(&sb, roles::ADMIN, "repl", "pgkill_slot")?.spawn()?;
    let result = async {
        let began = Instant::now();
        let walsender: i32 = loop {
            let row = admin
                .query_one("SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = 'pgkill_slot'", &[])
                .await?;
            if row.get::<_, bool>(0) {
                break row.get(1);
            }
            ensure!(began.elapsed() < Duration::from_secs(20), "pg_recvlogical never started streaming");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let before = db_row(&admin, "repl").await?;
        let (code, _, err) = cli.run(roles::ADMIN, &["drop", "repl", "-y"])?;
        ensure!(code == 2, "exit {code}: {err}");
        ensure!(err.contains(&format!("walsender pid {walsender}")) && err.contains("--terminate-walsenders"), "{err}");
        ensure!(db_row(&admin, "repl").await? == before, "a refused drop changed the settings");
        let (code, out, err) = cli.run(roles::ADMIN, &["drop", "repl", "--terminate-walsenders", "-y"])?;
        ensure!(code == 0, "exit {code}\n{out}\n{err}");
        ensure!(db_row(&admin, "repl").await?.is_none());
        let slots: i64 = admin.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await?.get(0);
        ensure!(slots == 0, "the slot outlived its database");
        Ok(())
    }
    .await;
    let _ = consumer.kill();
    let _ = consumer.wait();
    result
}

async fn unfence_leaves_changes_made_by_others(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("shared", None).await?;
    let (code, out, err) = cli.run(roles::ADMIN, &["drain", "shared", "-y"])?;
    ensure!(
        code == 0 && out.contains("stays fenced"),
        "exit {code}\n{out}\n{err}"
    );
    ensure!(db_row(&admin, "shared").await?.is_some_and(|r| !r.0));
    // Meanwhile a colleague lowers the connection limit: unfence reopens the database
    // (what pgkill changed) and leaves the limit (what they changed).
    admin
        .batch_execute("ALTER DATABASE shared CONNECTION LIMIT 3")
        .await?;
    let (code, out, err) = cli.run(roles::ADMIN, &["unfence", "shared"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(
        out.contains("left alone") && out.contains("connection limit is 3"),
        "{out}"
    );
    let row = db_row(&admin, "shared")
        .await?
        .ok_or_else(|| anyhow!("gone"))?;
    ensure!(row.0 && row.1 == 3, "{row:?}");

    // A colleague who re-opened the database already: unfence changes nothing.
    let (code, _, _) = cli.run(roles::ADMIN, &["drain", "shared", "-y"])?;
    ensure!(code == 0);
    admin
        .batch_execute("ALTER DATABASE shared ALLOW_CONNECTIONS true")
        .await?;
    let (code, out, _) = cli.run(roles::ADMIN, &["unfence", "shared"])?;
    ensure!(code == 0 && out.contains("already as they were"), "{out}");
    ensure!(db_row(&admin, "shared").await?.is_some_and(|r| r.0));
    Ok(())
}

async fn invalid_database_can_only_be_dropped(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("half_dropped", None).await?;
    // What an interrupted DROP DATABASE leaves behind.
    admin
        .batch_execute("UPDATE pg_database SET datconnlimit = -2 WHERE datname = 'half_dropped'")
        .await?;
    let (code, _, err) = cli.run(roles::ADMIN, &["rename", "half_dropped", "whole", "-y"])?;
    ensure!(
        code == 2 && err.contains("invalid") && err.contains("pgkill drop half_dropped"),
        "exit {code}: {err}"
    );
    let (code, out, err) = cli.run(roles::ADMIN, &["drop", "half_dropped", "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(db_row(&admin, "half_dropped").await?.is_none());
    ensure!(cli.local_files()? == 0);
    Ok(())
}

async fn subscription_refuses_drop_with_instructions(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let cli = Cli::new(&sb)?;
    sb.create_database("subscriber", None).await?;
    let inside = sb.admin("subscriber").await?;
    // A subscription that never connects (nothing needs to run on the other side).
    inside
        .batch_execute(
            "CREATE SUBSCRIPTION pgkill_sub CONNECTION 'host=127.0.0.1 dbname=nowhere' PUBLICATION p
             WITH (connect = false)",
        )
        .await?;
    drop(inside);
    wait_no_sessions(&admin, "subscriber").await?;
    let before = db_row(&admin, "subscriber").await?;
    let (code, _, err) = cli.run(roles::ADMIN, &["drop", "subscriber", "-y"])?;
    ensure!(
        code == 2 && err.contains("pgkill_sub") && err.contains("DROP SUBSCRIPTION"),
        "exit {code}: {err}"
    );
    ensure!(db_row(&admin, "subscriber").await? == before);
    // Following the instructions clears the way.
    let inside = sb.admin("subscriber").await?;
    inside
        .batch_execute(
            "ALTER SUBSCRIPTION pgkill_sub DISABLE; ALTER SUBSCRIPTION pgkill_sub SET (slot_name = NONE);
             DROP SUBSCRIPTION pgkill_sub",
        )
        .await?;
    drop(inside);
    let (code, out, err) = cli.run(roles::ADMIN, &["drop", "subscriber", "-y"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(db_row(&admin, "subscriber").await?.is_none());
    Ok(())
}

//! `drain` and `rename` end logical replication only when told to, and every preflight
//! and question says how many superuser sessions and walsenders will be ended (issue 8,
//! finding 9: `drain` terminated a `pg_recvlogical` without a word), on every PostgreSQL
//! version, with a real `pg_recvlogical` streaming from a slot of the database.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use tokio_postgres::Client;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        drain_refuses_to_end_a_walsender_unless_allowed,
        rename_refuses_to_end_a_walsender_unless_allowed,
    ]);
}

const DB: &str = "repl";
const SLOT: &str = "pgkill_slot";
/// What the preflight and the question say of the sessions connected to DB: the
/// walsender, a superuser's session and a plain one (and maybe an autovacuum worker).
const COUNTS: &str =
    "sessions will be ended (1 superuser session, 1 walsender of slot pgkill_slot)";

/// `pg_recvlogical` streaming from SLOT of DB, and the pid of its walsender.
struct Consumer {
    child: Child,
    walsender: i32,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn streaming(sb: &Sandbox, admin: &Client) -> Result<Consumer> {
    sb.create_database(DB, None).await?;
    sb.admin(DB)
        .await?
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{SLOT}', 'test_decoding')"
        ))
        .await?;
    let child = support::recvlogical(sb, roles::ADMIN, DB, SLOT)?.spawn()?;
    let mut consumer = Consumer {
        child,
        walsender: 0,
    };
    let began = Instant::now();
    consumer.walsender = loop {
        if let Some(pid) = active_pid(admin).await? {
            break pid;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(20),
            "pg_recvlogical never started streaming"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok(consumer)
}

async fn active_pid(admin: &Client) -> Result<Option<i32>> {
    let row = admin
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&SLOT],
        )
        .await;
    Ok(row.ok().map(|r| r.get(0)))
}

async fn backend_alive(admin: &Client, pid: i32) -> Result<bool> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .get::<_, i64>(0)
        == 1)
}

async fn wait_gone(admin: &Client, pid: i32) -> Result<()> {
    let began = Instant::now();
    while backend_alive(admin, pid).await? {
        ensure!(
            began.elapsed() < Duration::from_secs(10),
            "walsender {pid} is still there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `datallowconn` and `datconnlimit` of `name`, if it exists.
async fn settings(admin: &Client, name: &str) -> Result<Option<(bool, i32)>> {
    Ok(admin
        .query_opt(
            "SELECT datallowconn, datconnlimit FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
}

/// `op` (drain or rename, with `extra` arguments) refuses on a pipe and on a terminal,
/// says the counts in its dry run and question, changes nothing and leaves the walsender
/// alive; then goes ahead with `--terminate-walsenders`, ending it. Returns the sandbox
/// and an admin connection to check the result.
async fn refuses_then_ends(
    pg: Installation,
    op: &str,
    extra: &[&str],
) -> Result<(Sandbox, Client)> {
    let sb = Sandbox::start(&pg, &Options::default().logical_wal())?;
    let admin = sb.admin("postgres").await?;
    let state = tempfile::tempdir()?;
    let consumer = streaming(&sb, &admin).await?;
    let _superuser = sim::idle(&sb.config(DB, roles::SUPERUSER)).await?;
    let _plain = sim::idle(&sb.config(DB, roles::PLAIN)).await?;
    let before = settings(&admin, DB).await?;
    let args = |more: &[&str]| -> Vec<String> {
        [op, DB]
            .iter()
            .chain(extra)
            .chain(more)
            .map(|a| (*a).to_owned())
            .collect()
    };
    let cmd = |more: &[&str]| {
        let args = args(more);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = support::pgkill(&sb, roles::ADMIN, &args);
        cmd.env("PGKILL_STATE_DIR", state.path());
        cmd
    };
    let walsender = consumer.walsender;
    let named = format!("slot {SLOT} (walsender pid {walsender})");

    // The dry run names the counts, and the refusal.
    let (code, out, err) = support::run(cmd(&["--dry-run"]))?;
    ensure!(code == 2, "{op} --dry-run: exit {code}\n{out}\n{err}");
    ensure!(out.contains(COUNTS), "{op} --dry-run:\n{out}");
    ensure!(
        err.contains(&named) && err.contains("--terminate-walsenders"),
        "{err}"
    );
    let (code, out, err) = support::run(cmd(&["--dry-run", "--terminate-walsenders"]))?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    ensure!(
        out.contains(COUNTS) && out.contains("Dry run: nothing was changed."),
        "{out}"
    );

    // Refused: nothing changed, the walsender still streams.
    let (code, out, err) = support::run(cmd(&["-y"]))?;
    ensure!(code == 2, "{op}: exit {code}\n{out}\n{err}");
    ensure!(
        err.contains(&named) && err.contains("nothing was changed"),
        "{op}: {err}"
    );
    ensure!(
        settings(&admin, DB).await? == before,
        "a refused {op} changed the settings"
    );
    ensure!(
        active_pid(&admin).await? == Some(walsender) && backend_alive(&admin, walsender).await?,
        "a refused {op} ended the walsender"
    );

    // The question says the counts; declining changes nothing.
    let (code, out) = support::on_terminal(&cmd(&["--terminate-walsenders"]), "n\n")?;
    let out = String::from_utf8_lossy(&out);
    ensure!(
        code == 2 && out.contains("Nothing was changed."),
        "exit {code}: {out}"
    );
    let verb = format!("{}{}", op[..1].to_uppercase(), &op[1..]);
    ensure!(
        out.contains(&format!("{verb} {DB}? 3 {COUNTS}."))
            || out.contains(&format!("{verb} {DB}? 4 {COUNTS}.")),
        "the question does not say who will be ended:\n{out}"
    );
    ensure!(
        backend_alive(&admin, walsender).await?,
        "a declined {op} ended the walsender"
    );

    // Allowed: done, and the walsender is gone.
    let (code, out, err) = support::run(cmd(&["--terminate-walsenders", "-y"]))?;
    ensure!(
        code == 0,
        "{op} --terminate-walsenders: exit {code}\n{out}\n{err}"
    );
    wait_gone(&admin, walsender).await?;
    drop(consumer);
    Ok((sb, admin))
}

async fn drain_refuses_to_end_a_walsender_unless_allowed(pg: Installation) -> Result<()> {
    let (_sb, admin) = refuses_then_ends(pg, "drain", &[]).await?;
    ensure!(
        settings(&admin, DB).await?.is_some_and(|(allow, _)| !allow),
        "drain left {DB} open"
    );
    Ok(())
}

async fn rename_refuses_to_end_a_walsender_unless_allowed(pg: Installation) -> Result<()> {
    let (_sb, admin) = refuses_then_ends(pg, "rename", &["renamed"]).await?;
    ensure!(settings(&admin, DB).await?.is_none(), "{DB} still exists");
    ensure!(
        settings(&admin, "renamed")
            .await?
            .is_some_and(|(allow, _)| allow),
        "renamed is missing or left fenced"
    );
    Ok(())
}

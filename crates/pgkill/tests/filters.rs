//! The filters of issue 12 through the real binary on every PostgreSQL version:
//! exclusions win over inclusions (also when signalling), `--holding-xmin` picks the
//! session with the old snapshot and says what else holds the horizon (a prepared
//! transaction, a replication slot), and `--blocking-for` selects a lock holder only once
//! its waiter has waited that long (by the server's clock).

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        an_exclusion_wins_over_an_inclusion,
        holding_xmin_picks_the_oldest_snapshot,
        holding_xmin_says_what_else_holds_the_horizon,
        holding_xmin_names_a_standby_s_feedback,
        blocking_for_waits_for_the_waiters_clock,
    ]);
}

/// Runs pgkill as the bootstrap superuser.
fn run(sb: &Sandbox, args: &[&str]) -> Result<(i32, String, String)> {
    support::run(support::pgkill(sb, roles::ADMIN, args))
}

/// The pids `ls ARGS --json` lists (exit 0 or 1), and the document.
fn listed(sb: &Sandbox, args: &[&str]) -> Result<(Vec<i64>, Value, String)> {
    let mut all = args.to_vec();
    all.extend(["--json"]);
    let (code, out, err) = run(sb, &all)?;
    let doc: Value = serde_json::from_str(&out)
        .map_err(|e| anyhow!("ls {args:?}: exit {code}, not JSON ({e}):\n{out}\n{err}"))?;
    let mut pids: Vec<i64> = doc["sessions"]
        .as_array()
        .ok_or_else(|| anyhow!("no sessions in {doc}"))?
        .iter()
        .filter_map(|s| s["pid"].as_i64())
        .collect();
    pids.sort_unstable();
    ensure!(
        code == if pids.is_empty() { 1 } else { 0 },
        "ls {args:?}: exit {code} for {pids:?}: {err}"
    );
    Ok((pids, doc, err))
}

fn pids(sessions: &[&sim::Session]) -> Vec<i64> {
    let mut p: Vec<i64> = sessions.iter().map(|s| i64::from(s.pid())).collect();
    p.sort_unstable();
    p
}

async fn an_exclusion_wins_over_an_inclusion(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("a", None).await?;
    sb.create_database("b", None).await?;
    let with_app = |db: &str, role: &str, app: &str| {
        let mut c = sb.config(db, role);
        c.application_name(app);
        c
    };
    let web = sim::idle(&with_app("a", roles::PLAIN, "web-1")).await?;
    let cron = sim::idle(&with_app("a", roles::PLAIN, "cron-nightly")).await?;
    let owner = sim::idle(&with_app("a", roles::OWNER, "web-2")).await?;
    let other_db = sim::idle(&with_app("b", roles::PLAIN, "web-3")).await?;

    let all_a = pids(&[&web, &cron, &owner]);
    ensure!(listed(&sb, &["ls", "--db", "a"])?.0 == all_a);
    let cases: [(&[&str], Vec<i64>); 7] = [
        (
            &["ls", "--db", "a", "--exclude-user", roles::OWNER],
            pids(&[&web, &cron]),
        ),
        (
            &[
                "ls",
                "--db",
                "a",
                "--user",
                roles::OWNER,
                "--exclude-user",
                roles::OWNER,
            ],
            vec![],
        ),
        (
            &[
                "ls",
                "--user",
                roles::PLAIN,
                "--exclude-db",
                "b",
                "--exclude-db",
                "postgres",
            ],
            pids(&[&web, &cron]),
        ),
        (
            &["ls", "--db", "a", "--app", "*", "--exclude-app", "cron-*"],
            pids(&[&web, &owner]),
        ),
        (
            &[
                "ls",
                "--db",
                "a",
                "--db",
                "b",
                "--exclude-app",
                "web-?",
                "--exclude-app",
                "x",
            ],
            pids(&[&cron]),
        ),
        // The sandbox's clients come over loopback TCP.
        (
            &["ls", "--db", "a", "--exclude-client", "127.0.0.0/8"],
            vec![],
        ),
        (
            &[
                "ls",
                "--db",
                "b",
                "--exclude-client",
                "local",
                "--exclude-client",
                "10.0.0.0/8",
            ],
            pids(&[&other_db]),
        ),
    ];
    for (args, want) in cases {
        let (got, _, err) = listed(&sb, args)?;
        ensure!(
            got == want,
            "{args:?}: listed {got:?}, want {want:?}\n{err}"
        );
    }

    // Signalling re-checks the exclusions and never touches the excluded session.
    let (code, out, err) = run(
        &sb,
        &[
            "kill",
            "--db",
            "a",
            "--user",
            roles::PLAIN,
            "--exclude-app",
            "cron-*",
            "-y",
            "--json",
        ],
    )?;
    ensure!(code == 0, "exit {code}: {out}\n{err}");
    let ended = web.wait_ended(Duration::from_secs(10)).await;
    ensure!(
        ended.and_then(|e| e.sqlstate).as_deref() == Some("57P01"),
        "web-1 survived:\n{out}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        cron.is_connected() && owner.is_connected() && other_db.is_connected(),
        "kill --exclude-app cron-* hit an excluded session:\n{out}"
    );

    // A role that may not see other roles' client addresses: they may be in the excluded
    // network, so --exclude-client leaves them out too (and, signalling, alone).
    let as_signaller = |args: &[&str]| -> Result<Vec<i64>> {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = support::run(support::pgkill(&sb, roles::SIGNALLER, &all))?;
        let doc: Value = serde_json::from_str(&out)
            .map_err(|e| anyhow!("{args:?}: exit {code} ({e}):\n{out}\n{err}"))?;
        let mut pids: Vec<i64> = doc["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["pid"].as_i64())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    };
    ensure!(as_signaller(&["ls", "--db", "a"])? == pids(&[&cron, &owner]));
    let hidden = as_signaller(&["ls", "--db", "a", "--exclude-client", "10.0.0.0/8"])?;
    ensure!(
        hidden.is_empty(),
        "hidden addresses were not excluded: {hidden:?}"
    );

    // Bad input: a clear message, exit 2.
    for (args, says) in [
        (
            &["ls", "--exclude-client", "nonsense"][..],
            "invalid client address",
        ),
        (&["ls", "--blocking-for", "xyz"][..], "invalid duration"),
        (
            &["kill", "--exclude-client", "10.0.0.0/33", "-y"][..],
            "invalid client address",
        ),
    ] {
        let (code, out, err) = run(&sb, args)?;
        ensure!(
            code == 2 && err.contains(says),
            "{args:?}: exit {code}\n{out}\n{err}"
        );
    }
    Ok(())
}

/// A session in a REPEATABLE READ transaction that has taken its snapshot.
async fn snapshot(sb: &Sandbox) -> Result<sim::Session> {
    let s = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    s.client()
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await?;
    Ok(s)
}

/// Uses up transaction ids, so that what comes next is younger.
async fn burn_xids(admin: &tokio_postgres::Client) -> Result<()> {
    for _ in 0..3 {
        admin
            .batch_execute("SELECT pg_catalog.txid_current()")
            .await?;
    }
    Ok(())
}

fn xmin_age(doc: &Value, pid: i32) -> Option<i64> {
    doc["sessions"]
        .as_array()?
        .iter()
        .find(|s| s["pid"].as_i64() == Some(i64::from(pid)))?["xmin_age"]
        .as_i64()
}

async fn holding_xmin_picks_the_oldest_snapshot(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let old = snapshot(&sb).await?;
    burn_xids(&admin).await?;
    let young = snapshot(&sb).await?;
    let idle = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;

    let (every, doc, _) = listed(&sb, &["ls", "--user", roles::PLAIN])?;
    ensure!(every.len() == 3, "{doc}");
    let (o, y) = (xmin_age(&doc, old.pid()), xmin_age(&doc, young.pid()));
    ensure!(
        matches!((o, y), (Some(o), Some(y)) if o > y && y >= 0),
        "xmin ages old {o:?}, young {y:?}: {doc}"
    );
    ensure!(
        xmin_age(&doc, idle.pid()).is_none(),
        "an idle session has no xmin: {doc}"
    );

    let (got, doc, err) = listed(&sb, &["ls", "--holding-xmin"])?;
    ensure!(got == pids(&[&old]), "{doc}\n{err}");
    ensure!(
        doc["xmin_horizon"]["held_by_sessions"] == true
            && doc["xmin_horizon"]["held_by"]
                .as_array()
                .is_some_and(Vec::is_empty),
        "{doc}"
    );
    ensure!(!err.contains("xmin horizon"), "nothing else to say: {err}");

    let (code, out, err) = run(&sb, &["kill", "--holding-xmin", "-y"])?;
    ensure!(code == 0, "exit {code}: {out}\n{err}");
    ensure!(
        old.wait_ended(Duration::from_secs(10))
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01"),
        "the old snapshot survived:\n{out}"
    );
    ensure!(young.is_connected() && idle.is_connected(), "{out}");
    // Now the younger one holds the horizon.
    let (got, doc, err) = listed(&sb, &["ls", "--holding-xmin"])?;
    ensure!(got == pids(&[&young]), "{doc}\n{err}");
    Ok(())
}

async fn holding_xmin_says_what_else_holds_the_horizon(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default().logical_wal())?;
    let admin = sb.admin("postgres").await?;
    let idle = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;

    // A prepared transaction is the oldest: no session is listed, and pgkill says why.
    let preparer = sim::prepared(&sb.config("postgres", roles::PLAIN), "pgkill-gid", None).await?;
    burn_xids(&admin).await?;
    let (got, doc, err) = listed(&sb, &["ls", "--holding-xmin"])?;
    ensure!(got.is_empty(), "{doc}");
    ensure!(
        err.contains("prepared transaction \"pgkill-gid\"")
            && err.contains("no client session has a snapshot"),
        "stderr: {err}"
    );
    let held = &doc["xmin_horizon"]["held_by"];
    ensure!(
        held[0]["kind"] == "prepared_transaction" && held[0]["name"] == "pgkill-gid",
        "{doc}"
    );
    ensure!(doc["xmin_horizon"]["held_by_sessions"] == false, "{doc}");
    let (code, out, err) = run(&sb, &["kill", "--holding-xmin", "-y", "--json"])?;
    ensure!(
        code == 1 && err.contains("pgkill-gid"),
        "kill: exit {code}: {err}"
    );
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(
        doc["xmin_horizon"]["held_by"][0]["name"] == "pgkill-gid"
            && doc["plan"].as_array().is_some_and(Vec::is_empty),
        "{doc}"
    );
    ensure!(idle.is_connected() && preparer.is_connected());
    // A role without pg_read_all_stats is told the same.
    let (code, out, err) = support::run(support::pgkill(
        &sb,
        roles::SIGNALLER,
        &["ls", "--holding-xmin"],
    ))?;
    ensure!(
        code == 1 && err.contains("pgkill-gid"),
        "as {}: exit {code}\n{out}\n{err}",
        roles::SIGNALLER
    );

    // A snapshot taken now starts at the prepared transaction's xid: both hold the horizon.
    let reader = snapshot(&sb).await?;
    let (got, _, err) = listed(&sb, &["ls", "--holding-xmin"])?;
    ensure!(got == pids(&[&reader]), "stderr: {err}");
    ensure!(
        err.contains("pgkill-gid") && err.contains("client session(s) listed"),
        "stderr: {err}"
    );
    reader.client().batch_execute("COMMIT").await?;
    admin
        .batch_execute("ROLLBACK PREPARED 'pgkill-gid'")
        .await?;

    // A logical replication slot's catalog_xmin.
    admin
        .batch_execute(
            "SELECT pg_catalog.pg_create_logical_replication_slot('pgkill_hold', 'test_decoding')",
        )
        .await?;
    burn_xids(&admin).await?;
    let (got, doc, err) = listed(&sb, &["ls", "--holding-xmin"])?;
    ensure!(got.is_empty(), "{doc}");
    ensure!(
        err.contains("replication slot \"pgkill_hold\""),
        "stderr: {err}"
    );
    ensure!(
        doc["xmin_horizon"]["held_by"][0]["kind"] == "replication_slot",
        "{doc}"
    );
    // Without --holding-xmin nothing is said.
    let (code, _, err) = run(&sb, &["ls"])?;
    ensure!(code == 0 && !err.contains("xmin"), "{err}");
    admin
        .batch_execute("SELECT pg_catalog.pg_drop_replication_slot('pgkill_hold')")
        .await?;
    Ok(())
}

/// A snapshot on a standby with `hot_standby_feedback` holds the primary's horizon
/// through its walsender: `ls --holding-xmin` on the primary names the standby.
async fn holding_xmin_names_a_standby_s_feedback(pg: Installation) -> Result<()> {
    let primary = Sandbox::start(&pg, &Options::default())?;
    let standby = primary.start_standby(
        &Options::default()
            .setting("hot_standby_feedback", "on")
            .setting("wal_receiver_status_interval", "1s"),
    )?;
    let admin = primary.admin("postgres").await?;
    let reader = snapshot(&standby).await?;
    burn_xids(&admin).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (got, doc, err) = listed(&primary, &["ls", "--holding-xmin"])?;
        let held = &doc["xmin_horizon"]["held_by"];
        if held[0]["kind"] == "standby" {
            ensure!(got.is_empty(), "{doc}");
            ensure!(
                err.contains("hot_standby_feedback") && held[0]["pid"].is_i64(),
                "{err}\n{doc}"
            );
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the standby's feedback never showed: {doc}\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(reader);
    Ok(())
}

async fn blocking_for_waits_for_the_waiters_clock(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE hot (id int); GRANT ALL ON hot TO {}",
            roles::PLAIN
        ))
        .await?;
    let chain = sim::lock_chain(&sb.config("postgres", roles::PLAIN), "hot", 1).await?;
    let bystander = sim::idle_in_transaction(&sb.config("postgres", roles::PLAIN), None).await?;

    let (got, _, err) = listed(&sb, &["ls", "--blocking-for", "1h"])?;
    ensure!(got.is_empty(), "nobody has waited an hour: {got:?} {err}");
    let (code, out, err) = run(&sb, &["kill", "--blocking-for", "1h", "-y"])?;
    ensure!(code == 1, "exit {code}: {out}\n{err}");
    ensure!(chain.holder.is_connected());

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (got, _, err) = listed(&sb, &["ls", "--blocking-for", "1s"])?;
    ensure!(
        got == pids(&[&chain.holder]),
        "the holder (pid {}), not its waiter or a bystander: {got:?} {err}",
        chain.holder.pid()
    );
    let (got, _, _) = listed(&sb, &["ls", "--blocking-for", "1h"])?;
    ensure!(got.is_empty());
    let (code, out, err) = run(&sb, &["kill", "--blocking-for", "1s", "--dry-run"])?;
    ensure!(
        code == 0 && out.contains("waited on for") && out.contains("Dry run"),
        "exit {code}: {out}\n{err}"
    );
    let (code, out, err) = run(&sb, &["kill", "--blocking-for", "1s", "-y"])?;
    ensure!(code == 0, "exit {code}: {out}\n{err}");
    ensure!(
        chain
            .holder
            .wait_ended(Duration::from_secs(10))
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01"),
        "{out}"
    );
    ensure!(
        chain.waiters[0]
            .wait_statement(Duration::from_secs(10))
            .await
            == sim::Statement::Completed,
        "the waiter is still blocked"
    );
    ensure!(bystander.is_connected());
    Ok(())
}

//! pgkill on a streaming standby, through the real binary on every PostgreSQL version
//! (issue 10, "standbys are real"): `ls` says the server is a standby (table header and
//! `server.in_recovery` in JSON), `kill`, `cancel` and `free-slot` work there, and `drain`,
//! `drop`, `rename` and `unfence` refuse before changing anything (exit 2), saying that
//! the primary must do it.

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::sim::Statement;
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        ls_says_standby_or_primary,
        kill_cancel_and_free_slot_work_on_a_standby,
        database_commands_refuse_on_a_standby,
    ]);
}

const WAIT: Duration = Duration::from_secs(10);

/// A primary with database `app` (and role `pooled`, at most one connection), and its
/// standby.
async fn primary_and_standby(pg: &Installation) -> Result<(Sandbox, Sandbox)> {
    let primary = Sandbox::start(pg, &Options::default())?;
    primary.create_database("app", None).await?;
    primary
        .create_role("pooled", "LOGIN CONNECTION LIMIT 1")
        .await?;
    let standby = primary.start_standby(&Options::default())?;
    Ok((primary, standby))
}

fn pids(doc: &Value) -> Vec<i64> {
    doc["sessions"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["pid"].as_i64()).collect())
        .unwrap_or_default()
}

async fn ls_says_standby_or_primary(pg: Installation) -> Result<()> {
    let (primary, standby) = primary_and_standby(&pg).await?;
    let on_standby = sim::idle(&standby.config("app", roles::PLAIN)).await?;
    let on_primary = sim::idle(&primary.config("app", roles::PLAIN)).await?;

    let (code, out, err) = support::run(support::pgkill(
        &standby,
        roles::ADMIN,
        &["ls", "--db", "app", "--json"],
    ))?;
    ensure!(code == 0, "exit {code}: {err}");
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(doc["server"]["in_recovery"] == true, "{doc}");
    ensure!(
        pids(&doc) == vec![i64::from(on_standby.pid())],
        "the standby's session is not (the only one) listed: {doc}"
    );
    let (code, out, err) = support::run(support::pgkill(&standby, roles::ADMIN, &["ls"]))?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(
        out.starts_with("Server: standby (in recovery, read-only)")
            && out.contains(&on_standby.pid().to_string()),
        "the table does not say standby:\n{out}"
    );

    let (code, out, err) = support::run(support::pgkill(
        &primary,
        roles::ADMIN,
        &["ls", "--db", "app", "--json"],
    ))?;
    ensure!(code == 0, "exit {code}: {err}");
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(doc["server"]["in_recovery"] == false, "{doc}");
    ensure!(
        pids(&doc) == vec![i64::from(on_primary.pid())],
        "the primary's session is not (the only one) listed: {doc}"
    );
    let (code, out, err) = support::run(support::pgkill(&primary, roles::ADMIN, &["ls"]))?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(
        !out.contains("standby"),
        "the primary's table says standby:\n{out}"
    );
    Ok(())
}

async fn kill_cancel_and_free_slot_work_on_a_standby(pg: Installation) -> Result<()> {
    let (primary, standby) = primary_and_standby(&pg).await?;
    let victim = sim::idle(&standby.config("app", roles::PLAIN)).await?;
    let bystander = sim::idle(&primary.config("app", roles::PLAIN)).await?;
    let (code, out, err) = support::run(support::pgkill(
        &standby,
        roles::ADMIN,
        &["kill", "--db", "app", "-y"],
    ))?;
    ensure!(code == 0, "exit {code}: {out}\n{err}");
    let ended = victim.wait_ended(WAIT).await;
    ensure!(
        ended.and_then(|e| e.sqlstate).as_deref() == Some("57P01"),
        "the standby's session survived kill --db app:\n{out}\n{err}"
    );
    ensure!(
        bystander
            .wait_ended(Duration::from_millis(200))
            .await
            .is_none(),
        "kill on the standby ended a session on the primary"
    );

    let report = sim::active(
        &standby.config("app", roles::PLAIN),
        Duration::from_secs(60),
    )
    .await?;
    let (code, out, err) = support::run(support::pgkill(
        &standby,
        roles::ADMIN,
        &["cancel", "--query", "pg_sleep", "-y"],
    ))?;
    ensure!(code == 0, "cancel exit {code}: {out}\n{err}");
    match report.wait_statement(WAIT).await {
        Statement::Failed(e) => ensure!(e.sqlstate.as_deref() == Some("57014"), "{e:?}"),
        other => return Err(anyhow!("the long query on the standby: {other:?}")),
    }
    ensure!(report.is_connected(), "cancel ended the session");

    let pooled = sim::idle(&standby.config("postgres", "pooled")).await?;
    let (code, out, err) = support::run(support::pgkill(
        &standby,
        roles::ADMIN,
        &["free-slot", "pooled", "-y", "--json"],
    ))?;
    ensure!(code == 0, "free-slot exit {code}: {out}\n{err}");
    let ended = pooled.wait_ended(WAIT).await;
    ensure!(
        ended.and_then(|e| e.sqlstate).as_deref() == Some("57P01"),
        "free-slot on the standby did not end the role's session:\n{out}\n{err}"
    );
    Ok(())
}

/// `datallowconn` of `app` and whether `app_renamed` exists, as `sb` sees them.
async fn databases_as_seen_by(sb: &Sandbox) -> Result<(bool, bool)> {
    let client = sb.admin("postgres").await?;
    let allow: bool = client
        .query_opt(
            "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = 'app'",
            &[],
        )
        .await?
        .ok_or_else(|| anyhow!("database app is gone on port {}", sb.port()))?
        .get(0);
    let renamed = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'app_renamed'",
            &[],
        )
        .await?
        .is_some();
    Ok((allow, renamed))
}

async fn database_commands_refuse_on_a_standby(pg: Installation) -> Result<()> {
    let (primary, standby) = primary_and_standby(&pg).await?;
    let on_standby = sim::idle(&standby.config("app", roles::PLAIN)).await?;
    for args in [
        &["drain", "app", "-y"][..],
        &["drop", "app", "-y"],
        &["rename", "app", "app_renamed", "-y"],
        &["unfence", "app"],
        &["drain", "app", "-y", "--json"],
    ] {
        let (code, out, err) = support::run(support::pgkill(&standby, roles::ADMIN, args))?;
        ensure!(
            code == 2
                && err.contains("nothing was changed")
                && err.contains("standby")
                && err.contains(&format!("{} app on the primary", args[0])),
            "{args:?} on the standby: exit {code}\n{out}\n{err}"
        );
        if args.contains(&"--json") {
            let doc: Value = serde_json::from_str(&out)?;
            ensure!(
                doc["server"]["in_recovery"] == true
                    && doc["preflight"]["refusals"][0]
                        .as_str()
                        .is_some_and(|r| r.contains("on the primary")),
                "{doc}"
            );
        }
        for sb in [&primary, &standby] {
            let (allow, renamed) = databases_as_seen_by(sb).await?;
            ensure!(
                allow && !renamed,
                "{args:?} on the standby changed app (port {}): datallowconn {allow}, renamed {renamed}",
                sb.port()
            );
        }
        ensure!(
            on_standby
                .wait_ended(Duration::from_millis(100))
                .await
                .is_none(),
            "{args:?} on the standby ended a session there"
        );
    }
    // Where the database really is changed: on the primary, which the standby replays.
    let (code, out, err) = support::run(support::pgkill(
        &primary,
        roles::ADMIN,
        &["rename", "app", "app_renamed", "-y"],
    ))?;
    ensure!(
        code == 0,
        "rename on the primary: exit {code}\n{out}\n{err}"
    );
    let began = std::time::Instant::now();
    while databases_as_seen_by(&standby).await.is_ok() {
        ensure!(
            began.elapsed() < Duration::from_secs(30),
            "the standby never replayed the rename"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = standby.admin("postgres").await?;
    ensure!(
        client
            .query_opt(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'app_renamed'",
                &[],
            )
            .await?
            .is_some(),
        "app is gone on the standby but app_renamed is not there"
    );
    Ok(())
}

//! The real `pgkill` binary against real servers, on every PostgreSQL version: output
//! shapes, exit codes, the non-TTY refusal, and one clear line for each kind of bad input.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::sim::{self, Statement};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};
use serde_json::Value;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        ls_prints_table_json_and_csv,
        kill_refuses_without_terminal_or_yes,
        dry_run_changes_nothing,
        kill_reports_outcomes_as_json,
        cancel_keeps_sessions,
        partial_failure_exits_3,
        closed_pipe_is_not_an_error,
        asks_on_a_terminal_and_obeys_the_answer,
        free_slot_lets_a_new_login_in,
        bad_input_is_one_line_and_exit_2,
    ]);
}

const WAIT: Duration = Duration::from_secs(10);

mod support;

use support::{pgkill, run};

fn no_panic(stderr: &str) -> Result<()> {
    ensure!(
        !stderr.contains("panicked")
            && !stderr.contains("RUST_BACKTRACE")
            && !stderr.contains("stack backtrace"),
        "stderr shows a panic: {stderr}"
    );
    Ok(())
}

async fn ls_prints_table_json_and_csv(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let idle = sim::idle(&sb.config("app", roles::PLAIN)).await?;
    let active = sim::active(&sb.config("app", roles::PLAIN), Duration::from_secs(60)).await?;

    let (code, out, err) = run(pgkill(&sb, roles::ADMIN, &["ls", "--db", "app"]))?;
    ensure!(code == 0, "exit {code}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines[0].trim_start().starts_with("pid ") && lines[0].contains("| query"),
        "{out}"
    );
    ensure!(
        lines[1].starts_with("---") && lines[1].contains("-+-"),
        "{out}"
    );
    ensure!(lines.last() == Some(&"(2 rows)"), "{out}");
    ensure!(
        out.contains("pg_sleep") && out.contains(&idle.pid().to_string()),
        "{out}"
    );

    let (code, out, err) = run(pgkill(&sb, roles::ADMIN, &["ls", "--db", "app", "--json"]))?;
    ensure!(code == 0, "exit {code}: {err}");
    let doc: Value = serde_json::from_str(&out).context("ls --json is one JSON document")?;
    ensure!(doc["server"]["version"]
        .as_str()
        .is_some_and(|v| v.starts_with(&format!("{}.", pg.version.major))));
    ensure!(doc["server"]["superuser"] == Value::Bool(true));
    let sessions = doc["sessions"]
        .as_array()
        .ok_or_else(|| anyhow!("no sessions array: {doc}"))?;
    ensure!(sessions.len() == 2);
    let keys: BTreeSet<&str> = sessions[0]
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let want: BTreeSet<&str> = [
        "kind",
        "pid",
        "backend_start",
        "database",
        "user",
        "application_name",
        "client_addr",
        "client_hostname",
        "client_port",
        "state",
        "wait_event_type",
        "wait_event",
        "backend_type",
        "xact_start",
        "query_start",
        "state_change",
        "backend_age_s",
        "xact_age_s",
        "query_age_s",
        "state_age_s",
        "query",
        "superuser",
        "blocked_by",
        "blocking",
        "can_signal",
        "xmin_age",
    ]
    .into_iter()
    .collect();
    ensure!(keys == want, "keys {keys:?}");
    ensure!(
        sessions.iter().all(|s| s["kind"] == "backend"),
        "rows without a pooler are backends: {doc}"
    );
    let a = sessions
        .iter()
        .find(|s| s["pid"] == active.pid())
        .ok_or_else(|| anyhow!("active session missing: {out}"))?;
    ensure!(
        a["state"] == "active" && a["wait_event"] == "PgSleep" && a["client_addr"] == "127.0.0.1"
    );
    ensure!(a["query_age_s"].as_f64().is_some_and(|s| s >= 0.0) && a["backend_age_s"].is_f64());
    let start = a["backend_start"]
        .as_str()
        .ok_or_else(|| anyhow!("no backend_start"))?;
    ensure!(
        start.ends_with('Z') && start.contains('T'),
        "RFC 3339 UTC: {start}"
    );
    let i = sessions
        .iter()
        .find(|s| s["pid"] == idle.pid())
        .ok_or_else(|| anyhow!("idle missing"))?;
    ensure!(i["query_age_s"].is_null() && i["xact_start"].is_null());

    let (code, out, _) = run(pgkill(&sb, roles::ADMIN, &["ls", "--db", "app", "--csv"]))?;
    ensure!(code == 0);
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines[0].starts_with("pid,backend_start,database,user,") && lines.len() == 3,
        "{out}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{},", active.pid())) && l.contains(",active,")),
        "{out}"
    );

    // Nothing matched: exit 1.
    let (code, out, _) = run(pgkill(&sb, roles::ADMIN, &["ls", "--db", "nothing-here"]))?;
    ensure!(code == 1 && out.contains("(0 rows)"), "exit {code}: {out}");
    Ok(())
}

async fn kill_refuses_without_terminal_or_yes(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let victim = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    for action in ["kill", "cancel"] {
        let (code, out, err) = run(pgkill(&sb, roles::ADMIN, &[action, "--user", roles::PLAIN]))?;
        ensure!(code == 2, "{action}: exit {code}");
        ensure!(
            err.contains("-y") && err.contains("--dry-run") && err.lines().count() == 1,
            "{err}"
        );
        ensure!(out.is_empty(), "{out}");
        no_panic(&err)?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(victim.is_connected(), "a refused kill touched the session");
    Ok(())
}

async fn dry_run_changes_nothing(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let victim = sim::idle_in_transaction(&sb.config("postgres", roles::PLAIN), None).await?;
    let (code, out, err) = run(pgkill(
        &sb,
        roles::ADMIN,
        &["kill", "--state", "idle-in-transaction", "--dry-run"],
    ))?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(
        out.contains(&victim.pid().to_string()) && out.contains("state=idle in transaction"),
        "{out}"
    );
    ensure!(out.contains("nothing was changed"), "{out}");
    let (code, out, _) = run(pgkill(
        &sb,
        roles::ADMIN,
        &[
            "kill",
            "--state",
            "idle-in-transaction",
            "--dry-run",
            "--json",
        ],
    ))?;
    ensure!(code == 0);
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(doc["dry_run"] == Value::Bool(true) && doc["action"] == "terminate");
    ensure!(
        doc["plan"][0]["pid"] == victim.pid()
            && doc["outcomes"].as_array().is_some_and(|o| o.is_empty())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(victim.is_connected());
    Ok(())
}

async fn kill_reports_outcomes_as_json(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let a = sim::idle(&sb.config("app", roles::PLAIN)).await?;
    let b = sim::active(&sb.config("app", roles::OWNER), Duration::from_secs(60)).await?;
    let bystander = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let (code, out, err) = run(pgkill(
        &sb,
        roles::ADMIN,
        &["kill", "--db", "app", "-y", "--json"],
    ))?;
    ensure!(code == 0, "exit {code}: {err}\n{out}");
    let doc: Value = serde_json::from_str(&out)?;
    let outcomes = doc["outcomes"]
        .as_array()
        .ok_or_else(|| anyhow!("no outcomes: {doc}"))?;
    let mut pids: Vec<i64> = outcomes.iter().filter_map(|o| o["pid"].as_i64()).collect();
    pids.sort_unstable();
    let mut want = vec![i64::from(a.pid()), i64::from(b.pid())];
    want.sort_unstable();
    ensure!(pids == want, "{pids:?}");
    for o in outcomes {
        ensure!(
            o["outcome"] == "terminated" && o["detail"].is_string(),
            "{o}"
        );
    }
    for s in [&a, &b] {
        ensure!(s.wait_ended(WAIT).await.and_then(|e| e.sqlstate).as_deref() == Some("57P01"));
    }
    ensure!(bystander.is_connected());
    // Nothing left to kill: exit 1 and an empty outcome list.
    let (code, out, _) = run(pgkill(
        &sb,
        roles::ADMIN,
        &["kill", "--db", "app", "-y", "--json"],
    ))?;
    ensure!(code == 1, "exit {code}");
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(doc["outcomes"].as_array().is_some_and(|o| o.is_empty()));
    Ok(())
}

async fn cancel_keeps_sessions(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let busy = sim::active(
        &sb.config("postgres", roles::PLAIN),
        Duration::from_secs(60),
    )
    .await?;
    let (code, out, err) = run(pgkill(
        &sb,
        roles::ADMIN,
        &["cancel", "--query", "pg_sleep", "-y"],
    ))?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(out.contains("cancelled"), "{out}");
    match busy.wait_statement(WAIT).await {
        Statement::Failed(e) => ensure!(e.sqlstate.as_deref() == Some("57014"), "{e:?}"),
        other => return Err(anyhow!("statement {other:?}")),
    }
    ensure!(busy.is_connected());
    Ok(())
}

async fn partial_failure_exits_3(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("mixed", None).await?;
    let plain = sim::idle(&sb.config("mixed", roles::PLAIN)).await?;
    let su = sim::idle(&sb.config("mixed", roles::SUPERUSER)).await?;
    let (code, out, err) = run(pgkill(
        &sb,
        roles::SIGNALLER,
        &["kill", "--db", "mixed", "-y"],
    ))?;
    ensure!(code == 3, "exit {code}: {err}\n{out}");
    ensure!(
        out.contains("not_permitted")
            && out.contains("only a superuser")
            && out.contains("terminated"),
        "{out}"
    );
    ensure!(plain.wait_ended(WAIT).await.is_some() && su.is_connected());
    Ok(())
}

async fn closed_pipe_is_not_an_error(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(sim::idle(&sb.config("postgres", roles::PLAIN)).await?);
    }
    for format in [None, Some("--json"), Some("--csv")] {
        let mut cmd = pgkill(&sb, roles::ADMIN, &["ls"]);
        cmd.args(format)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        drop(child.stdout.take()); // like `pgkill ls | head -0`: the reader is gone
        let out = child.wait_with_output()?;
        let err = String::from_utf8(out.stderr)?;
        ensure!(
            out.status.code() == Some(0),
            "{format:?}: {} {err}",
            out.status
        );
        ensure!(err.is_empty(), "{format:?}: {err}");
    }
    Ok(())
}

async fn bad_input_is_one_line_and_exit_2(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let one_line_exit_2 =
        |args: &[&str], role: &str, env: &[(&str, &str)], want: &str| -> Result<()> {
            let mut cmd = pgkill(&sb, role, args);
            for (k, v) in env {
                cmd.env(k, v);
            }
            let (code, _, err) = run(cmd)?;
            ensure!(code == 2, "{args:?}: exit {code}: {err}");
            no_panic(&err)?;
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            ensure!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
            ensure!(
                first.starts_with("pgkill:") || first.starts_with("error:"),
                "{args:?}: {err}"
            );
            Ok(())
        };
    // The password from PGPASSWORD (which wins over the password file, as in libpq).
    let admin_password = sb.password(roles::ADMIN).unwrap_or_default();
    let pw = [("PGPASSWORD", admin_password.as_str())];
    one_line_exit_2(
        &["ls", "--idle-for", "5x"],
        roles::ADMIN,
        &pw,
        "invalid duration",
    )?;
    one_line_exit_2(&["top"], roles::ADMIN, &pw, "needs a terminal")?;
    one_line_exit_2(
        &["ls", "--client", "300.1.1.1/8"],
        roles::ADMIN,
        &pw,
        "invalid client address",
    )?;
    one_line_exit_2(
        &["ls", "--state", "sleeping"],
        roles::ADMIN,
        &pw,
        "unknown state",
    )?;
    one_line_exit_2(
        &["ls", "--query", "("],
        roles::ADMIN,
        &pw,
        "invalid regular expression",
    )?;
    one_line_exit_2(
        &["--maintenance-db", "no_such_db", "ls"],
        roles::ADMIN,
        &pw,
        "no_such_db",
    )?;
    one_line_exit_2(
        &["ls"],
        roles::ADMIN,
        &[("PGPASSWORD", "wrong")],
        "password authentication failed",
    )?;
    // The wrong password itself is never echoed.
    let (_, out, err) = {
        let mut cmd = pgkill(&sb, roles::ADMIN, &["ls"]);
        cmd.env("PGPASSWORD", "s3cret-wrong-pw");
        run(cmd)?
    };
    ensure!(
        !out.contains("s3cret-wrong-pw") && !err.contains("s3cret-wrong-pw"),
        "{err}"
    );
    // Unreachable server: a closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &closed.to_string(),
        "-U",
        "postgres",
        "ls",
    ])
    .stdin(Stdio::null());
    let (code, _, err) = run(cmd)?;
    ensure!(
        code == 2 && err.contains(&closed.to_string()),
        "exit {code}: {err}"
    );
    no_panic(&err)?;
    Ok(())
}

/// Runs pgkill on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_terminal(sb: &Sandbox, args: &[&str], answer: &str) -> Result<(i32, String)> {
    let cmd = support::pgkill(sb, roles::ADMIN, args);
    let (code, out) = support::on_terminal(&cmd, answer)?;
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

async fn asks_on_a_terminal_and_obeys_the_answer(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let victim = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let (code, out) = on_terminal(&sb, &["kill", "--user", roles::PLAIN], "n\n")?;
    ensure!(out.contains("Terminate 1 session(s)? [y/N]"), "{out}");
    ensure!(
        code == 2 && out.contains("Nothing was changed."),
        "exit {code}: {out}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(victim.is_connected(), "a declined kill touched the session");
    let (code, out) = on_terminal(&sb, &["kill", "--user", roles::PLAIN], "y\n")?;
    ensure!(
        code == 0 && out.contains("terminated"),
        "exit {code}: {out}"
    );
    ensure!(
        victim
            .wait_ended(WAIT)
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01")
    );
    Ok(())
}

async fn free_slot_lets_a_new_login_in(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!("ALTER ROLE {} CONNECTION LIMIT 2", roles::PLAIN))
        .await?;
    let cfg = sb.config("postgres", roles::PLAIN);
    let longest_idle = sim::idle(&cfg).await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = sim::idle_in_transaction(&cfg, None).await?;
    let refused = sim::idle(&cfg)
        .await
        .err()
        .ok_or_else(|| anyhow!("a third login got in"))?;
    let code = match &refused {
        pgkill_sandbox::Error::Sql { source, .. } => source.code().map(|c| c.code().to_owned()),
        _ => None,
    };
    ensure!(code.as_deref() == Some("53300"), "{refused:?}");

    let (code, out, err) = run(pgkill(
        &sb,
        roles::ADMIN,
        &["free-slot", roles::PLAIN, "-y"],
    ))?;
    ensure!(code == 0, "exit {code}: {out}{err}");
    ensure!(
        out.contains("limit 2") && out.contains("terminated"),
        "{out}"
    );
    ensure!(
        longest_idle
            .wait_ended(WAIT)
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01")
    );
    ensure!(
        busy.is_connected(),
        "a session inside a transaction was ended"
    );
    let _newcomer = sim::idle(&cfg)
        .await
        .context("the new login still does not fit")?;
    // Nothing idle left to free: exit 1.
    let (code, out, _) = run(pgkill(
        &sb,
        roles::ADMIN,
        &["free-slot", roles::PLAIN, "-y"],
    ))?;
    ensure!(code == 0 || code == 1, "exit {code}: {out}");
    Ok(())
}

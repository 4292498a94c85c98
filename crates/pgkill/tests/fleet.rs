//! `--target` / `--targets`: `ls`, `kill`, `cancel`, `drain`, `unfence`, `drop` and
//! `rename` on several servers at once, of mixed versions (each case runs three servers:
//! its own version and the next two of those selected), through the real binary.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgkill_sandbox::sim::PoolOptions;
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;
use tokio_postgres::Client;

mod support;

use support::{conninfo, customise, db_row, wait_fenced, DbRow};

fn main() {
    pgkill_sandbox::matrix::main_with(
        cases![
            ls_and_kill_across_servers,
            a_server_that_is_down_is_reported_while_the_others_act,
            targets_file_names_and_csv,
            drain_and_unfence_across_servers_restore_each_exactly,
            drop_across_servers_under_pools_and_a_failure_on_one,
            rename_across_servers_keeps_settings,
            free_slot_across_servers,
            bad_input_changes_nothing_anywhere,
            interrupt_restores_every_server,
            a_standby_target_refuses_while_the_primary_is_drained,
        ],
        vec![pgkill_sandbox::matrix::Mixed {
            name: "six_servers_of_mixed_versions",
            versions: &[10, 12, 14, 16, 17, 18],
            run: |pgs| Box::pin(six_servers_of_mixed_versions(pgs)),
        }],
    );
}

/// Three servers: `pg` and the next two versions of those selected (cycling).
fn three(pg: &Installation) -> Result<Vec<Sandbox>> {
    let (selected, _) = pgkill_sandbox::matrix::selected_versions();
    let at = selected
        .iter()
        .position(|i| i.version.major == pg.version.major)
        .unwrap_or(0);
    (0..3)
        .map(|k| {
            let install = &selected[(at + k) % selected.len()];
            Sandbox::start(install, &Options::default()).map_err(Into::into)
        })
        .collect()
}

/// `pgkill --target A --target B ... ARGS` with a clean environment, not run yet.
fn command(targets: &[String], args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    for t in targets {
        cmd.args(["--target", t]);
    }
    cmd.args(args).stdin(std::process::Stdio::null());
    cmd
}

/// [`command`], run to the end.
fn pgkill(targets: &[String], args: &[&str]) -> Result<(i32, String, String)> {
    support::run(command(targets, args))
}

/// Whether the table in `out` begins with a `target` column.
fn target_column(out: &str) -> bool {
    out.lines()
        .next()
        .is_some_and(|l| l.trim_start().starts_with("target"))
}

/// Whether a row of `sb` in the table in `out` says `what`.
fn row_says(out: &str, sb: &Sandbox, what: &str) -> bool {
    out.lines()
        .any(|l| l.trim_start().starts_with(&name(sb)) && l.contains(what))
}

/// The `targets` array of a `--json` document.
fn targets_of(out: &str) -> Result<Vec<Value>> {
    let doc: Value = serde_json::from_str(out).with_context(|| out.to_owned())?;
    Ok(doc["targets"].as_array().cloned().unwrap_or_default())
}

/// The pids of a target's `sessions` in a `--json` document.
fn pids_of(doc: &Value) -> Vec<i64> {
    doc["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["pid"].as_i64())
        .collect()
}

/// Every one of `victims` ends, told 57P01 (terminated).
async fn all_terminated(victims: &[sim::Session]) -> Result<()> {
    for v in victims {
        let ended = v
            .wait_ended(Duration::from_secs(10))
            .await
            .context("a victim survived")?;
        ensure!(ended.sqlstate.as_deref() == Some("57P01"), "{ended:?}");
    }
    Ok(())
}

/// `ls --db x` lists each server's sessions of x under that server's name, one document
/// per target; `kill --db x -y` ends exactly those (57P01) on every server and leaves the
/// sessions of other databases; no password appears anywhere.
async fn ls_and_kill_across_servers(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let mut victims = Vec::new();
    let mut bystanders = Vec::new();
    for sb in &servers {
        sb.create_database("x", None).await?;
        victims.push(sim::idle(&sb.config("x", roles::PLAIN)).await?);
        bystanders.push(sim::idle(&sb.config("postgres", roles::PLAIN)).await?);
    }
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    let (code, out, err) = pgkill(&targets, &["ls", "--db", "x", "--json"])?;
    ensure!(code == 0, "ls: exit {code}\n{out}\n{err}");
    let docs = targets_of(&out)?;
    ensure!(docs.len() == 3, "{out}");
    for ((doc, sb), victim) in docs.iter().zip(&servers).zip(&victims) {
        let name = format!("{}:{}", sb.host(), sb.port());
        ensure!(doc["target"] == name.as_str(), "target name: {doc}");
        ensure!(doc["server"]["port"] == sb.port(), "{doc}");
        let pids = pids_of(doc);
        ensure!(pids == [i64::from(victim.pid())], "{name}: {pids:?}");
    }
    let (code, out, err) = pgkill(&targets, &["ls", "--db", "x"])?;
    ensure!(
        code == 0 && target_column(&out) && out.contains("(3 target(s) listed, 0 failed)"),
        "table: exit {code}\n{out}\n{err}"
    );
    for t in &servers {
        let secret = t.password(roles::ADMIN).unwrap_or_default();
        ensure!(!secret.is_empty() && !out.contains(&secret) && !err.contains(&secret));
    }
    let (code, out, err) = pgkill(&targets, &["kill", "--db", "x", "-y", "--json"])?;
    ensure!(code == 0, "kill: exit {code}\n{out}\n{err}");
    let docs = targets_of(&out)?;
    for doc in &docs {
        let outcomes = doc["outcomes"].as_array().cloned().unwrap_or_default();
        ensure!(
            outcomes.len() == 1 && outcomes[0]["outcome"] == "terminated",
            "{doc}"
        );
    }
    all_terminated(&victims).await?;
    ensure!(
        bystanders.iter().all(|b| b.is_connected()),
        "a session of another database was ended"
    );
    // Nothing left: exit 1 everywhere.
    let (code, out, err) = pgkill(&targets, &["kill", "--db", "x", "-y"])?;
    ensure!(
        code == 1 && out.contains("No session matched on any target."),
        "second kill: exit {code}\n{out}\n{err}"
    );
    Ok(())
}

/// A server that is down is reported with its error (in the JSON too) while the others
/// are listed and acted on: exit 3; every server down: exit 2.
async fn a_server_that_is_down_is_reported_while_the_others_act(pg: Installation) -> Result<()> {
    let mut servers = three(&pg)?;
    let mut victims = Vec::new();
    for sb in &servers[..2] {
        victims.push(sim::idle(&sb.config("postgres", roles::PLAIN)).await?);
    }
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    let down = servers.pop().context("three servers")?;
    drop(down);
    let (code, out, err) = pgkill(&targets, &["ls", "--user", roles::PLAIN, "--json"])?;
    ensure!(code == 3, "ls: exit {code}\n{out}\n{err}");
    let docs = targets_of(&out)?;
    ensure!(
        docs[2]["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
            && docs[0]["sessions"].as_array().is_some_and(|s| s.len() == 1)
            && docs[1]["sessions"].as_array().is_some_and(|s| s.len() == 1),
        "{out}"
    );
    ensure!(
        err.contains("pgkill: target "),
        "no word on the failed target: {err}"
    );
    let (code, out, err) = pgkill(&targets, &["kill", "--user", roles::PLAIN, "-y"])?;
    ensure!(code == 3, "kill: exit {code}\n{out}\n{err}");
    for v in &victims {
        ensure!(
            v.wait_ended(Duration::from_secs(10)).await.is_some(),
            "a server that is up was not acted on"
        );
    }
    let (code, out, err) = pgkill(&targets[2..], &["ls"])?;
    let nobody = "host=127.0.0.1 port=1 user=nobody connect_timeout=2".to_owned();
    let (code2, out2, err2) = pgkill(&[targets[2].clone(), nobody], &["ls"])?;
    ensure!(
        code == 2 && code2 == 2,
        "every target down: exit {code} / {code2}\n{out}\n{err}\n{out2}\n{err2}"
    );
    Ok(())
}

/// `--targets FILE` names the servers; CSV carries a `target` field; a file with an
/// unknown key, or two targets of one name, is refused (exit 2) before connecting.
async fn targets_file_names_and_csv(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let dir = tempfile::tempdir()?;
    let mut text = String::new();
    for (i, sb) in servers.iter().enumerate() {
        text.push_str(&format!(
            "[[target]]\nname = \"shard-{i}\"\nconninfo = \"{}\"\n\n",
            conninfo(sb)
        ));
    }
    let file = dir.path().join("targets.toml");
    std::fs::write(&file, &text)?;
    let path = file.display().to_string();
    let (code, out, err) = pgkill(&[], &["--targets", &path, "ls", "--all-backends", "--csv"])?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    let mut lines = out.lines();
    ensure!(
        lines.next().is_some_and(|h| h.starts_with("target,pid,")),
        "{out}"
    );
    for i in 0..3 {
        ensure!(
            out.lines().any(|l| l.starts_with(&format!("shard-{i},"))),
            "shard-{i} has no row:\n{out}"
        );
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[target]]\nname = \"a\"\nconninfo = \"\"\nhots = 1\n",
    )?;
    let (code, _, err) = pgkill(&[], &["--targets", &bad.display().to_string(), "ls"])?;
    ensure!(
        code == 2 && err.contains("hots"),
        "unknown key: exit {code} {err}"
    );
    std::fs::write(
        &bad,
        format!("{text}[[target]]\nname = \"shard-0\"\nconninfo = \"host=x\"\n"),
    )?;
    let (code, _, err) = pgkill(&[], &["--targets", &bad.display().to_string(), "ls"])?;
    ensure!(
        code == 2 && err.contains("two targets are called \"shard-0\""),
        "duplicate: exit {code} {err}"
    );
    // `top` takes the targets (and, without a terminal, says it needs one); `watch`
    // reads its targets from its policy.
    let (code, _, err) = pgkill(&[], &["--targets", &path, "top"])?;
    ensure!(
        code == 2 && err.contains("needs a terminal"),
        "top with targets: exit {code} {err}"
    );
    let (code, _, err) = pgkill(
        &[],
        &["--targets", &path, "watch", "--policy", &path, "--check"],
    )?;
    ensure!(
        code == 2 && err.contains("works on one server so far"),
        "watch with targets: exit {code} {err}"
    );
    Ok(())
}

/// `host:port`, the name a `--target` without a service goes by.
fn name(sb: &Sandbox) -> String {
    format!("{}:{}", sb.host(), sb.port())
}

/// Database `db` on every server, with settings of its own to restore; its rows.
async fn everywhere(servers: &[Sandbox], db: &str) -> Result<Vec<(Client, DbRow)>> {
    let mut all = Vec::new();
    for sb in servers {
        let admin = sb.admin("postgres").await?;
        sb.create_database(db, None).await?;
        customise(&admin, db).await?;
        let row = db_row(&admin, db).await?.context("no database")?;
        all.push((admin, row));
    }
    Ok(all)
}

/// `drain x -y` ends x's sessions on every server (57P01) and leaves x fenced there, each
/// under its own name in the JSON; `unfence x` then restores each server's settings
/// exactly; `drain x -y --then-unfence` does both in one go (a table with a `target`
/// column, exit 0).
async fn drain_and_unfence_across_servers_restore_each_exactly(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let admins = everywhere(&servers, "x").await?;
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    for round in 0..2 {
        let mut victims = Vec::new();
        for sb in &servers {
            victims.push(sim::idle(&sb.config("x", roles::PLAIN)).await?);
            victims.push(sim::idle_in_transaction(&sb.config("x", roles::SUPERUSER), None).await?);
        }
        let (code, out, err) = if round == 0 {
            pgkill(&targets, &["drain", "x", "-y", "--json"])?
        } else {
            pgkill(&targets, &["drain", "x", "-y", "--then-unfence"])?
        };
        ensure!(
            code == 0,
            "drain (round {round}): exit {code}\n{out}\n{err}"
        );
        all_terminated(&victims).await?;
        if round == 0 {
            let docs = targets_of(&out)?;
            ensure!(docs.len() == 3, "{out}");
            for ((doc, sb), (admin, before)) in docs.iter().zip(&servers).zip(&admins) {
                ensure!(
                    doc["target"] == name(sb).as_str()
                        && doc["server"]["port"] == sb.port()
                        && doc["action"] == "drain"
                        && doc["result"].is_object()
                        && doc.get("error").is_none(),
                    "{doc}"
                );
                let now = db_row(admin, "x").await?.context("x is gone")?;
                ensure!(
                    !now.0 && now.1 == before.1 && now.2 == before.2,
                    "{}: not fenced as it should be: {now:?}",
                    name(sb)
                );
            }
            // Every command notes each server's fenced databases under its name.
            let (code, out, err) = pgkill(&targets, &["ls"])?;
            for sb in &servers {
                let note = format!(
                    "pgkill: target {}: note: database x is fenced (no new connections) since",
                    name(sb)
                );
                ensure!(
                    err.contains(&note),
                    "ls: exit {code}, no {note:?} in\n{err}\n{out}"
                );
            }
            let (code, out, err) = pgkill(&targets, &["unfence", "x"])?;
            ensure!(
                code == 0
                    && target_column(&out)
                    && servers.iter().all(|sb| row_says(&out, sb, "Unfenced")),
                "unfence: exit {code}\n{out}\n{err}"
            );
            ensure!(
                !err.contains("is fenced"),
                "unfence notes the fence it is lifting:\n{err}"
            );
        } else {
            ensure!(
                out.lines().any(|l| l.trim_start().starts_with("target")),
                "no target column: {out}"
            );
            for sb in &servers {
                ensure!(
                    out.contains(&format!("Target {}:", name(sb)))
                        && row_says(&out, sb, "Drained x"),
                    "{} missing:\n{out}",
                    name(sb)
                );
            }
        }
        for (sb, (admin, before)) in servers.iter().zip(&admins) {
            ensure!(
                db_row(admin, "x").await?.as_ref() == Some(before),
                "{}: x's settings not exactly restored (round {round})",
                name(sb)
            );
        }
    }
    Ok(())
}

/// Database `db` no longer exists on `sb`.
async fn gone(admin: &Client, db: &str, sb: &Sandbox) -> Result<()> {
    ensure!(
        db_row(admin, db).await?.is_none(),
        "{}: {db} still exists",
        name(sb)
    );
    Ok(())
}

/// A drop of `db` that failed on server `kept` alone: exit 3, stderr says `says` under
/// that target's name, its `db` is exactly as it was, and the others' are gone.
async fn failed_on_one(
    servers: &[Sandbox],
    admins: &[(Client, DbRow)],
    db: &str,
    kept: usize,
    (code, out, err): (i32, String, String),
    says: &str,
) -> Result<()> {
    ensure!(code == 3, "drop {db}: exit {code}\n{out}\n{err}");
    let line = format!("pgkill: target {}: {says}", name(&servers[kept]));
    ensure!(err.contains(&line), "no {line:?} in\n{err}");
    for (i, (sb, (admin, before))) in servers.iter().zip(admins).enumerate() {
        if i == kept {
            let now = db_row(admin, db).await?;
            ensure!(
                now.as_ref() == Some(before),
                "{}: {db} not as it was: {now:?}",
                name(sb)
            );
        } else {
            gone(admin, db, sb).await?;
        }
    }
    Ok(())
}

fn pool_options() -> PoolOptions {
    PoolOptions {
        clients: 20,
        reconnect_delay: Duration::from_millis(1),
    }
}

/// `drop x -y` succeeds on three servers while a pool of superusers reconnects to x on
/// each. Then a prepared transaction in y on one server makes that server's preflight
/// refuse: it is reported under its name and its y is left exactly as it was, while the
/// other two are dropped (exit 3). Last, a failure while carrying out (a transaction
/// holding x's catalog row, so the fence runs into `--statement-timeout`) puts back that
/// server's database alone.
async fn drop_across_servers_under_pools_and_a_failure_on_one(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    let admins = everywhere(&servers, "x").await?;
    let mut pools = Vec::new();
    for sb in &servers {
        let pool = sim::pool(&sb.config("x", roles::SUPERUSER), pool_options()).await?;
        ensure!(
            pool.wait_connected(5, Duration::from_secs(10)).await,
            "pool never connected"
        );
        pools.push(pool);
    }
    let (code, out, err) = pgkill(&targets, &["drop", "x", "-y"])?;
    ensure!(code == 0, "drop x: exit {code}\n{out}\n{err}");
    for (sb, (admin, _)) in servers.iter().zip(&admins) {
        gone(admin, "x", sb).await?;
        ensure!(
            row_says(&out, sb, "Dropped x"),
            "{}: no result row\n{out}",
            name(sb)
        );
    }
    for pool in pools.drain(..) {
        pool.stop().await;
    }

    let admins = everywhere(&servers, "y").await?;
    let _prep = sim::prepared(&servers[2].config("y", roles::ADMIN), "pay-7", None).await?;
    for sb in &servers[..2] {
        pools.push(sim::pool(&sb.config("y", roles::PLAIN), pool_options()).await?);
    }
    let run = pgkill(&targets, &["drop", "y", "-y", "--json"])?;
    let docs = targets_of(&run.1)?;
    ensure!(
        docs[2]["target"] == name(&servers[2]).as_str()
            && docs[2]["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("pay-7") && m.contains("nothing was changed"))
            && docs[0]["result"].is_object()
            && docs[1]["result"].is_object(),
        "{}",
        run.1
    );
    failed_on_one(&servers, &admins, "y", 2, run, "refusing to drop y").await?;
    for pool in pools.drain(..) {
        pool.stop().await;
    }

    let admins = everywhere(&servers, "z").await?;
    // An open transaction that updated z's row in pg_database: the fence's ALTER DATABASE
    // on that server waits for it until the time limit of changes (60s at least) stops
    // the wait, and that server's run fails while the other two drop z.
    let holder = servers[1].admin("postgres").await?;
    holder
        .batch_execute("BEGIN; ALTER DATABASE z CONNECTION LIMIT 70")
        .await?;
    let run = pgkill(&targets, &["drop", "z", "-y"])?;
    holder.batch_execute("ROLLBACK").await?;
    failed_on_one(&servers, &admins, "z", 1, run, "drop z failed").await?;
    Ok(())
}

/// `rename a b -y` renames a on every server, keeping each one's settings; a second run
/// finds no `a` anywhere: every target fails, exit 2.
async fn rename_across_servers_keeps_settings(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    let admins = everywhere(&servers, "a").await?;
    let _user = sim::idle(&servers[0].config("a", roles::PLAIN)).await?;
    let (code, out, err) = pgkill(&targets, &["rename", "a", "b", "-y"])?;
    ensure!(code == 0, "rename: exit {code}\n{out}\n{err}");
    for (sb, (admin, before)) in servers.iter().zip(&admins) {
        gone(admin, "a", sb).await?;
        ensure!(
            db_row(admin, "b").await?.as_ref() == Some(before),
            "{}: b's settings differ from a's",
            name(sb)
        );
    }
    let (code, out, err) = pgkill(&targets, &["rename", "a", "b", "-y"])?;
    ensure!(
        code == 2 && err.matches("does not exist").count() >= 3,
        "second rename: exit {code}\n{out}\n{err}"
    );
    Ok(())
}

/// `--json` without -y or --dry-run, a name no server can have, and a template database
/// on every server are refused with a message, exit 2, and nothing changes anywhere;
/// `--dry-run` shows every target's preflight and changes nothing (exit 0).
async fn bad_input_changes_nothing_anywhere(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    let admins = everywhere(&servers, "t").await?;
    let (code, _, err) = pgkill(&targets, &["drop", "t", "--json"])?;
    ensure!(code == 2 && err.contains("needs -y"), "exit {code}: {err}");
    let long = "n".repeat(200);
    let (code, _, err) = pgkill(&targets, &["drain", &long, "-y"])?;
    ensure!(
        code == 2 && err.contains("pgkill: target "),
        "exit {code}: {err}"
    );
    let (code, out, err) = pgkill(&targets, &["drop", "t", "--dry-run"])?;
    ensure!(
        code == 0
            && out.contains("Dry run: nothing was changed.")
            && servers
                .iter()
                .all(|sb| out.contains(&format!("Target {}:", name(sb)))),
        "dry run: exit {code}\n{out}\n{err}"
    );
    // One question for every target; "n" changes nothing anywhere.
    let (code, shown) = support::on_terminal(&command(&targets, &["drop", "t"]), "n\n")?;
    let shown = String::from_utf8_lossy(&shown);
    ensure!(
        code == 2
            && shown.matches("[y/N]").count() == 1
            && shown.contains("Drop t on 3 target(s)")
            && shown.contains("Nothing was changed."),
        "declined: exit {code}\n{shown}"
    );
    for (admin, before) in &admins {
        ensure!(
            db_row(admin, "t").await?.as_ref() == Some(before),
            "a declined drop changed t"
        );
    }
    for (admin, _) in &admins {
        admin
            .batch_execute("ALTER DATABASE t IS_TEMPLATE true")
            .await?;
    }
    let mut rows = Vec::new();
    for (admin, _) in &admins {
        rows.push(db_row(admin, "t").await?);
    }
    let (code, out, err) = pgkill(&targets, &["drop", "t", "-y"])?;
    ensure!(
        code == 2 && err.matches("--allow-template").count() >= 3,
        "template: exit {code}\n{out}\n{err}"
    );
    for ((admin, _), row) in admins.iter().zip(&rows) {
        ensure!(
            &db_row(admin, "t").await? == row,
            "a refused drop changed t"
        );
    }
    Ok(())
}

/// Ctrl-C while two servers are being drained (a transaction holds each in its grace
/// period): pgkill stops both and each database's settings are restored exactly (exit 2).
async fn interrupt_restores_every_server(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let two = &servers[..2];
    let targets: Vec<String> = two.iter().map(conninfo).collect();
    let admins = everywhere(two, "calm").await?;
    let mut open = Vec::new();
    for sb in two {
        open.push(sim::idle_in_transaction(&sb.config("calm", roles::PLAIN), None).await?);
    }
    // Both at once, then one at a time (`--parallel 1`: the second has not begun when
    // the signal comes, and is left untouched).
    for parallel in ["16", "1"] {
        let child = command(
            &targets,
            &[
                "--parallel",
                parallel,
                "drain",
                "calm",
                "--grace",
                "60s",
                "-y",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
        let fenced = if parallel == "1" {
            &admins[..1]
        } else {
            &admins[..]
        };
        for (admin, _) in fenced {
            wait_fenced(admin, "calm").await?;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGINT,
        )?;
        let out = child.wait_with_output()?;
        let err = String::from_utf8(out.stderr)?;
        ensure!(out.status.code() == Some(2), "{} {err}", out.status);
        for (i, (sb, (admin, before))) in two.iter().zip(&admins).enumerate() {
            ensure!(
                db_row(admin, "calm").await?.as_ref() == Some(before),
                "{}: calm not restored after Ctrl-C (--parallel {parallel})",
                name(sb)
            );
            let said = if parallel == "1" && i == 1 {
                format!("pgkill: target {}: interrupted before it began", name(sb))
            } else {
                format!(
                    "pgkill: target {}: drain calm failed: interrupted",
                    name(sb)
                )
            };
            ensure!(err.contains(&said), "no {said:?} in\n{err}");
        }
        ensure!(
            open.iter().all(|o| o.is_connected()),
            "a transaction was ended"
        );
    }
    Ok(())
}

/// `free-slot ROLE -y` on three servers where the role is at its limit: on each, the
/// session idle the longest ends (57P01), the one inside a transaction stays, and a new
/// login fits (exit 0, one document per target); with nothing idle left anywhere, exit 1.
async fn free_slot_across_servers(pg: Installation) -> Result<()> {
    let servers = three(&pg)?;
    let targets: Vec<String> = servers.iter().map(conninfo).collect();
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    for sb in &servers {
        sb.admin("postgres")
            .await?
            .batch_execute(&format!("ALTER ROLE {} CONNECTION LIMIT 2", roles::PLAIN))
            .await?;
        let cfg = sb.config("postgres", roles::PLAIN);
        idle.push(sim::idle(&cfg).await?);
        busy.push(sim::idle_in_transaction(&cfg, None).await?);
        ensure!(sim::idle(&cfg).await.is_err(), "a third login got in");
    }
    let (code, out, err) = pgkill(&targets, &["free-slot", roles::PLAIN, "-y", "--json"])?;
    ensure!(code == 0, "free-slot: exit {code}\n{out}\n{err}");
    let docs = targets_of(&out)?;
    ensure!(docs.len() == 3, "{out}");
    for (doc, sb) in docs.iter().zip(&servers) {
        let outcomes = doc["outcomes"].as_array().cloned().unwrap_or_default();
        ensure!(
            doc["target"] == name(sb).as_str()
                && doc["connection_limit"] == 2
                && outcomes.len() == 1
                && outcomes[0]["outcome"] == "terminated",
            "{doc}"
        );
    }
    all_terminated(&idle).await?;
    ensure!(
        busy.iter().all(|b| b.is_connected()),
        "a transaction was ended"
    );
    for sb in &servers {
        let newcomer = sim::idle(&sb.config("postgres", roles::PLAIN))
            .await
            .context("the new login still does not fit")?;
        drop(newcomer);
        // Gone again: only the transaction is left, and it is not idle.
        let admin = sb.admin("postgres").await?;
        support::wait_sessions(&admin, "usename", roles::PLAIN, 1).await?;
    }
    let (code, out, err) = pgkill(&targets, &["free-slot", roles::PLAIN, "-y"])?;
    ensure!(
        code == 1 && out.contains("No idle session of") && out.contains("on any target"),
        "nothing idle: exit {code}\n{out}\n{err}"
    );
    Ok(())
}

/// With a primary and its standby as targets, the standby refuses `drain` with the reason
/// (nothing changed there) while the primary is drained and, with --then-unfence, put
/// back exactly: exit 3.
async fn a_standby_target_refuses_while_the_primary_is_drained(pg: Installation) -> Result<()> {
    let primary = Sandbox::start(&pg, &Options::default())?;
    let admin = primary.admin("postgres").await?;
    primary.create_database("app", None).await?;
    customise(&admin, "app").await?;
    let before = db_row(&admin, "app").await?.context("no app")?;
    let standby = primary.start_standby(&Options::default())?;
    let victim = sim::idle(&primary.config("app", roles::PLAIN)).await?;
    let reader = sim::idle(&standby.config("app", roles::PLAIN)).await?;
    let targets = [conninfo(&standby), conninfo(&primary)];
    let (code, out, err) = pgkill(&targets, &["drain", "app", "-y", "--then-unfence"])?;
    ensure!(code == 3, "exit {code}\n{out}\n{err}");
    ensure!(
        err.contains(&format!(
            "pgkill: target {}: refusing to drain app",
            name(&standby)
        )) && err.contains("standby"),
        "{err}"
    );
    ensure!(row_says(&out, &primary, "Drained app"), "{out}");
    all_terminated(std::slice::from_ref(&victim)).await?;
    ensure!(
        db_row(&admin, "app").await?.as_ref() == Some(&before),
        "app not put back on the primary"
    );
    ensure!(reader.is_connected(), "a session on the standby was ended");
    Ok(())
}

/// Issue 14's fleet in one run: six servers of mixed versions (10, 12, 14, 16, 17 and 18
/// when selected), two of them named through a service file (`service=NAME`, the target's
/// name). `ls --db x` lists each server's session of x under its target with its own
/// version; `kill --db x -y` ends exactly those (57P01) and leaves the other databases'
/// sessions; then, while `drain x --then-unfence` waits out its grace period on every
/// server, one server is stopped: it is reported with its error, the five others are
/// drained and put back exactly (exit 3).
async fn six_servers_of_mixed_versions(pgs: Vec<Installation>) -> Result<()> {
    ensure!(pgs.len() == 6, "six servers wanted, got {}", pgs.len());
    let mut servers = Vec::new();
    for pg in &pgs {
        servers.push(Sandbox::start(pg, &Options::default())?);
    }
    let dir = tempfile::tempdir()?;
    let services = dir.path().join("pg_service.conf");
    let mut text = String::new();
    for (i, sb) in servers.iter().enumerate().take(2) {
        text.push_str(&format!(
            "[shard-{i}]\nhost={}\nport={}\nuser={}\npassword={}\ndbname=postgres\n\n",
            sb.host(),
            sb.port(),
            roles::ADMIN,
            sb.password(roles::ADMIN).unwrap_or_default()
        ));
    }
    std::fs::write(&services, text)?;
    // (name, --target) of each server.
    let (names, targets): (Vec<String>, Vec<String>) = servers
        .iter()
        .enumerate()
        .map(|(i, sb)| {
            if i < 2 {
                (format!("shard-{i}"), format!("service=shard-{i}"))
            } else {
                (name(sb), conninfo(sb))
            }
        })
        .unzip();
    let run = |args: &[&str]| {
        let mut cmd = command(&targets, args);
        cmd.env("PGSERVICEFILE", &services);
        support::run(cmd)
    };
    let admins = everywhere(&servers, "x").await?;
    let mut victims = Vec::new();
    let mut bystanders = Vec::new();
    for sb in &servers {
        victims.push(sim::idle(&sb.config("x", roles::PLAIN)).await?);
        bystanders.push(sim::idle(&sb.config("postgres", roles::PLAIN)).await?);
    }
    let (code, out, err) = run(&["ls", "--db", "x", "--json"])?;
    ensure!(code == 0, "ls: exit {code}\n{out}\n{err}");
    let docs = targets_of(&out)?;
    ensure!(docs.len() == 6, "{out}");
    for (((doc, sb), victim), name) in docs.iter().zip(&servers).zip(&victims).zip(&names) {
        let version = doc["server"]["version"].as_str().unwrap_or_default();
        ensure!(
            doc["target"] == name.as_str()
                && doc["server"]["port"] == sb.port()
                && version.starts_with(&format!("{}.", sb.version().major)),
            "{name}: {doc}"
        );
        let pids = pids_of(doc);
        ensure!(pids == [i64::from(victim.pid())], "{name}: {pids:?}");
    }
    let (code, out, err) = run(&["kill", "--db", "x", "-y"])?;
    ensure!(
        code == 0
            && out.contains("Plan: terminate 6 session(s) on 6 target(s)")
            && names.iter().all(|n| out
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{n} ")) && l.contains("terminated"))),
        "kill: exit {code}\n{out}\n{err}"
    );
    all_terminated(&victims).await?;
    ensure!(
        bystanders.iter().all(|b| b.is_connected()),
        "a session of another database was ended"
    );
    // An open transaction in x on each server holds every drain in its grace period.
    let mut open = Vec::new();
    for sb in &servers {
        open.push(sim::idle_in_transaction(&sb.config("x", roles::PLAIN), None).await?);
    }
    let mut cmd = command(
        &targets,
        &["drain", "x", "--grace", "5s", "--then-unfence", "-y"],
    );
    cmd.env("PGSERVICEFILE", &services)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    for (admin, _) in &admins {
        wait_fenced(admin, "x").await?;
    }
    let stopped = servers.pop().context("six servers")?;
    let stopped_name = names[5].clone();
    stopped.stop();
    let out = child.wait_with_output()?;
    let (stdout, stderr) = (
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    );
    ensure!(
        out.status.code() == Some(3),
        "drain with a server stopped: {}\n{stdout}\n{stderr}",
        out.status
    );
    ensure!(
        stderr.contains(&format!("pgkill: target {stopped_name}: ")),
        "the stopped server is not named:\n{stderr}"
    );
    all_terminated(&open[..5]).await?;
    for ((sb, (admin, before)), name) in servers.iter().zip(&admins).zip(&names) {
        ensure!(
            db_row(admin, "x").await?.as_ref() == Some(before),
            "{name} ({}): x not drained and put back exactly",
            sb.version().major
        );
    }
    Ok(())
}

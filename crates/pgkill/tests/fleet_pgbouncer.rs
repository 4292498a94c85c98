//! A PgBouncer per target (issue 14): the `pgbouncer = [...]` key of a `[[target]]` table
//! in `--targets FILE` makes every command see and act through that server's poolers
//! alone, as `--pgbouncer` does on one server, through the real binary, with a real
//! PgBouncer 1.24.1 in transaction pooling in front of one of two servers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgkill_sandbox::{
    cases, roles, Bouncer, BouncerOptions, BouncerVersion, Installation, Options, PoolMode, Sandbox,
};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

mod support;
#[path = "support/tmux.rs"]
mod tmux;

use support::{conninfo, console, customise, db_row, shop_is_paused, works};

fn main() {
    pgkill_sandbox::matrix::main(cases![
        ls_and_kill_through_the_pooler_of_one_target,
        drain_and_unfence_pause_and_resume_the_pooler_of_one_target,
        drop_disables_and_kills_at_the_pooler_of_one_target,
        cancel_and_free_slot_through_the_pooler_of_one_target,
        an_unreachable_pooler_fails_its_target_alone,
        pgbouncer_on_the_command_line_with_several_targets_is_refused,
        top_over_two_targets_ends_an_application_at_its_targets_pooler,
    ]);
}

/// Two servers: `pooled` (shop_db behind a PgBouncer 1.24.1 in transaction pooling,
/// alias `shop`) and `plain` (its own shop_db, no pooler).
struct Two {
    pooled: Sandbox,
    plain: Sandbox,
    bouncer: Bouncer,
}

impl Two {
    async fn start(pg: &Installation) -> Result<Two> {
        let pooled = Sandbox::start(pg, &Options::default())?;
        let plain = Sandbox::start(pg, &Options::default())?;
        for sb in [&pooled, &plain] {
            sb.create_database("shop_db", None).await?;
        }
        let mut options = BouncerOptions::new(BouncerVersion::V1_24_1, PoolMode::Transaction)
            .database("shop", "shop_db");
        options.default_pool_size = 2;
        let bouncer = Bouncer::start(&pooled, &options)?;
        Ok(Two {
            pooled,
            plain,
            bouncer,
        })
    }

    /// A targets file naming both, the pooled one with `pgbouncer = [CONSOLE]`.
    fn targets_file(&self, dir: &tempfile::TempDir, console: &str) -> Result<String> {
        let path = dir.path().join("targets.toml");
        std::fs::write(
            &path,
            format!(
                "[[target]]\nname = \"pooled\"\nconninfo = \"{}\"\npgbouncer = [\"{console}\"]\n\n[[target]]\nname = \"plain\"\nconninfo = \"{}\"\n",
                conninfo(&self.pooled),
                conninfo(&self.plain)
            ),
        )?;
        Ok(path.display().to_string())
    }
}

/// `pgkill ARGS` with a clean environment.
fn pgkill(args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    cmd.args(args).stdin(std::process::Stdio::null());
    support::run(cmd)
}

/// The `targets` entry called `name` of a `--json` document.
fn target<'a>(doc: &'a Value, name: &str) -> Option<&'a Value> {
    doc["targets"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == name)
}

/// An application connection through the pooler (alias `shop`) called `name`.
async fn app(bouncer: &Bouncer, name: &str) -> Result<Client> {
    let mut config = bouncer.config("shop", roles::PLAIN);
    config.application_name(name);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("{name} through the pooler"))?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    Ok(client)
}

/// A session straight to `sb`'s shop_db called `name`.
async fn direct(sb: &Sandbox, name: &str) -> Result<Client> {
    let mut config = sb.config("shop_db", roles::PLAIN);
    config.application_name(name);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await?;
    Ok(client)
}

/// The application names behind a pooler in a target's `ls --json` document (rows with a
/// `pooler.client`), and the other rows' application names.
fn names(doc: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut behind, mut plain) = (BTreeSet::new(), BTreeSet::new());
    for row in doc["sessions"].as_array().into_iter().flatten() {
        if let Some(name) = row["pooler"]["client"]["application_name"].as_str() {
            behind.insert(name.to_owned());
        } else if row["pooler"].is_null() {
            if let Some(name) = row["application_name"].as_str() {
                plain.insert(name.to_owned());
            }
        }
    }
    (behind, plain)
}

/// `ls --json` over both targets shows, under `pooled`, the four applications behind its
/// pooler (pooled rows of shop_db, transaction mode) and under `plain` its own sessions,
/// no pooler there; `kill --app web-2` ends web-2 at `pooled`'s pooler (KILL_CLIENT,
/// verified: its next query fails) while the other applications and `plain`'s sessions
/// go on (nothing matched there). With one `--target`, `--pgbouncer` is that target's.
async fn ls_and_kill_through_the_pooler_of_one_target(pg: Installation) -> Result<()> {
    let two = Two::start(&pg).await?;
    let mut apps = Vec::new();
    for i in 0..4 {
        apps.push(app(&two.bouncer, &format!("web-{i}")).await?);
    }
    let batches = [
        direct(&two.plain, "batch-1").await?,
        direct(&two.plain, "batch-2").await?,
    ];
    let dir = tempfile::tempdir()?;
    let file = two.targets_file(&dir, &console(&two.pooled, &two.bouncer))?;

    let (code, out, err) = pgkill(&["--targets", &file, "ls", "--db", "shop_db", "--json"])?;
    ensure!(code == 0, "ls: exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let pooled = target(&doc, "pooled").context("no target pooled")?;
    let (behind, _) = names(pooled);
    let want: BTreeSet<String> = (0..4).map(|i| format!("web-{i}")).collect();
    ensure!(
        behind == want,
        "pooled: applications behind the pooler {behind:?}\n{doc}"
    );
    ensure!(
        pooled["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] == "pooled")
            .all(|r| r["database"] == "shop_db" && r["pooler"]["pool_mode"] == "transaction"),
        "{pooled}"
    );
    let plain = target(&doc, "plain").context("no target plain")?;
    let (behind, direct_names) = names(plain);
    ensure!(
        behind.is_empty()
            && direct_names == BTreeSet::from(["batch-1".to_owned(), "batch-2".to_owned()])
            && plain["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|r| r["pooler"].is_null()),
        "plain: {plain}"
    );
    // The table for people says which target's pooler it looked through.
    let (code, table, err) = pgkill(&["--targets", &file, "ls", "--db", "shop_db"])?;
    ensure!(
        code == 0
            && table
                .lines()
                .any(|l| l.starts_with("Target pooled: Pooler: PgBouncer 1.24"))
            && table.lines().any(|l| l.trim_start().starts_with("pooled")
                && l.contains("web-3")
                && l.contains("via pgbouncer (transaction)")),
        "ls: exit {code}\n{table}\n{err}"
    );

    let (code, out, err) = pgkill(&["--targets", &file, "kill", "--app", "web-2", "-y", "--json"])?;
    ensure!(code == 0, "kill: exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let pooled = target(&doc, "pooled").context("no target pooled")?;
    let ended = pooled["pooler_outcomes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        ended.len() == 1
            && ended[0]["outcome"] == "terminated"
            && ended[0]["client"]["application_name"] == "web-2",
        "pooled: {pooled}\n{err}"
    );
    let plain = target(&doc, "plain").context("no target plain")?;
    ensure!(
        plain["outcomes"].as_array().is_some_and(Vec::is_empty)
            && plain.get("pooler_outcomes").is_none(),
        "plain: {plain}"
    );
    ensure!(
        err.contains("target pooled: warning: PgBouncer 1.24.1") && err.contains("CVE-2026-6667"),
        "no warning about KILL_CLIENT on 1.24.1 for its target: {err}"
    );
    ensure!(!works(&apps[2]).await, "web-2 still works after its kill");
    for (i, a) in apps.iter().enumerate().filter(|(i, _)| *i != 2) {
        ensure!(works(a).await, "web-{i} was hit by the kill of web-2");
    }
    for b in &batches {
        ensure!(works(b).await, "a session of target plain was hit");
    }
    ensure!(
        !out.contains(&two.pooled.password(roles::ADMIN).unwrap_or_default())
            && !err.contains(&two.pooled.password(roles::ADMIN).unwrap_or_default()),
        "a password was shown"
    );

    // One --target: --pgbouncer is that server's.
    let (code, out, err) = pgkill(&[
        "--target",
        &conninfo(&two.pooled),
        "--pgbouncer",
        &console(&two.pooled, &two.bouncer),
        "ls",
        "--db",
        "shop_db",
        "--json",
    ])?;
    ensure!(code == 0, "ls with one --target: exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let (behind, _) = names(&doc["targets"][0]);
    let want: BTreeSet<String> = [0, 1, 3].iter().map(|i| format!("web-{i}")).collect();
    ensure!(
        behind == want,
        "one --target: behind the pooler {behind:?}\n{doc}"
    );
    Ok(())
}

/// An application querying through the pooler every 20 ms until stopped: how many
/// queries worked and the errors it saw.
fn querying(
    client: Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut errors) = (0, Vec::new());
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match client.simple_query("SELECT 1").await {
                Ok(_) => ok += 1,
                Err(e) => {
                    errors.push(
                        e.code()
                            .map_or_else(|| e.to_string(), |c| c.code().to_owned()),
                    );
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, errors)
    })
}

/// `drain shop_db --grace 5s --then-unfence` over both targets: `pooled`'s alias is
/// paused first and resumed afterwards (its application sees no error: its queries
/// queue meanwhile), `plain` is drained without a pooler (its session ended); shop_db's
/// settings exactly as before on both. A drain that keeps the fence leaves the alias
/// paused until `unfence` over both targets resumes it.
async fn drain_and_unfence_pause_and_resume_the_pooler_of_one_target(
    pg: Installation,
) -> Result<()> {
    let two = Two::start(&pg).await?;
    let admins = [
        two.pooled.admin("postgres").await?,
        two.plain.admin("postgres").await?,
    ];
    let mut before = Vec::new();
    for a in &admins {
        customise(a, "shop_db").await?;
        before.push(db_row(a, "shop_db").await?);
    }
    let dir = tempfile::tempdir()?;
    let file = two.targets_file(&dir, &console(&two.pooled, &two.bouncer))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = querying(app(&two.bouncer, "web").await?, stop.clone());
    let plain_session = direct(&two.plain, "batch").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (code, out, err) = pgkill(&[
        "--targets",
        &file,
        "drain",
        "shop_db",
        "--grace",
        "5s",
        "--then-unfence",
        "-y",
        "--json",
    ])?;
    ensure!(code == 0, "drain: exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let pooled = target(&doc, "pooled").context("no target pooled")?;
    let at_pooler = &pooled["result"]["pooler"];
    let says = |key: &str| {
        at_pooler[key]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0].as_str().is_some_and(|s| s.starts_with("shop (")))
    };
    ensure!(says("paused") && says("resumed"), "pooled: {pooled}\n{err}");
    let plain = target(&doc, "plain").context("no target plain")?;
    ensure!(
        plain["result"].is_object() && plain["result"].get("pooler").is_none(),
        "plain: {plain}"
    );
    ensure!(
        !works(&plain_session).await,
        "plain's session survived the drain"
    );
    ensure!(!shop_is_paused(&two.bouncer).await?, "shop is still paused");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, errors) = running.await?;
    ensure!(
        errors.is_empty() && ok > 5,
        "the application behind the pooler saw errors {errors:?} ({ok} queries worked)"
    );
    for (a, was) in admins.iter().zip(&before) {
        ensure!(
            db_row(a, "shop_db").await? == *was,
            "shop_db's settings changed"
        );
    }

    // Held: the alias stays paused until unfence over both targets.
    let (code, out, err) = pgkill(&[
        "--targets",
        &file,
        "drain",
        "shop_db",
        "--grace",
        "2s",
        "-y",
    ])?;
    ensure!(
        code == 0 && out.contains("Paused at PgBouncer: shop ("),
        "held drain: exit {code}\n{out}\n{err}"
    );
    ensure!(
        shop_is_paused(&two.bouncer).await?,
        "shop not paused after a held drain"
    );
    for a in &admins {
        ensure!(
            db_row(a, "shop_db").await?.is_some_and(|r| !r.0),
            "shop_db not fenced after a held drain"
        );
    }
    let (code, out, err) = pgkill(&["--targets", &file, "unfence", "shop_db"])?;
    ensure!(
        code == 0 && out.contains("Resumed at PgBouncer: shop ("),
        "unfence: exit {code}\n{out}\n{err}"
    );
    ensure!(
        !shop_is_paused(&two.bouncer).await?,
        "shop still paused after unfence"
    );
    for (a, was) in admins.iter().zip(&before) {
        ensure!(
            db_row(a, "shop_db").await? == *was,
            "shop_db's settings not restored by unfence"
        );
    }
    let web = app(&two.bouncer, "web-after").await?;
    ensure!(
        works(&web).await,
        "no application gets through after unfence"
    );
    Ok(())
}

/// Whether database `name` exists on `sb`.
async fn exists(sb: &Sandbox, name: &str) -> Result<bool> {
    Ok(sb
        .admin("postgres")
        .await?
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .is_some())
}

/// `drop shop_db` over both targets: at `pooled`'s pooler the alias is disabled and its
/// connections dropped first (the application's connection is closed there, told the
/// database is gone) and pgkill says which `[databases]` entry to remove; `plain` has no
/// pooler; shop_db is gone from both.
async fn drop_disables_and_kills_at_the_pooler_of_one_target(pg: Installation) -> Result<()> {
    let two = Two::start(&pg).await?;
    let web = app(&two.bouncer, "web").await?;
    let batch = direct(&two.plain, "batch").await?;
    let dir = tempfile::tempdir()?;
    let file = two.targets_file(&dir, &console(&two.pooled, &two.bouncer))?;
    let (code, out, err) = pgkill(&["--targets", &file, "drop", "shop_db", "-y"])?;
    let row = |name: &str, what: &str| {
        out.lines()
            .any(|l| l.trim_start().starts_with(name) && l.contains(what))
    };
    ensure!(
        code == 0
            && out.contains("  PgBouncer at host=127.0.0.1 port=")
            && row("pooled", "Disabled and dropped at PgBouncer: shop (")
            && row("pooled", "Remove these [databases] entries")
            && row("pooled", "Dropped shop_db")
            && row("plain", "Dropped shop_db")
            && !row("plain", "PgBouncer"),
        "drop: exit {code}\n{out}\n{err}"
    );
    ensure!(
        !works(&web).await,
        "the application's connection survived the drop"
    );
    ensure!(!works(&batch).await, "plain's session survived the drop");
    ensure!(
        !exists(&two.pooled, "shop_db").await? && !exists(&two.plain, "shop_db").await?,
        "shop_db was not dropped everywhere"
    );
    Ok(())
}

/// `cancel --app report` over both targets cancels the statement of the application
/// behind `pooled`'s pooler (it sees 57014 and keeps its connection) and nothing on
/// `plain`; `free-slot plain_role --count 2` ends, on `pooled`, the two pool server
/// connections that serve no application (ending them ends nobody's connection) before
/// the role's own session, and on `plain` the role's two idle sessions.
async fn cancel_and_free_slot_through_the_pooler_of_one_target(pg: Installation) -> Result<()> {
    let two = Two::start(&pg).await?;
    let dir = tempfile::tempdir()?;
    let file = two.targets_file(&dir, &console(&two.pooled, &two.bouncer))?;
    let report = app(&two.bouncer, "report").await?;
    let query = tokio::spawn(async move {
        let r = report.simple_query("SELECT pg_sleep(30)").await.map(drop);
        (r, report)
    });
    let admin = two.pooled.admin("postgres").await?;
    let began = std::time::Instant::now();
    while admin
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = 'shop_db' AND state = 'active'",
            &[],
        )
        .await?
        .get::<_, i64>(0)
        < 1
    {
        ensure!(began.elapsed() < Duration::from_secs(10), "the statement never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out, err) = pgkill(&[
        "--targets",
        &file,
        "cancel",
        "--app",
        "report",
        "-y",
        "--json",
    ])?;
    let doc: Value =
        serde_json::from_str(&out).with_context(|| format!("exit {code}\n{out}\n{err}"))?;
    ensure!(
        code == 0
            && target(&doc, "pooled").is_some_and(|t| t["outcomes"]
                .as_array()
                .is_some_and(|o| o.len() == 1 && o[0]["outcome"] == "cancelled"))
            && target(&doc, "plain")
                .is_some_and(|t| t["outcomes"].as_array().is_some_and(Vec::is_empty)),
        "cancel: exit {code}\n{doc}\n{err}"
    );
    let (result, report) = query.await?;
    let sqlstate = result
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_owned()));
    ensure!(
        sqlstate.as_deref() == Some("57014"),
        "report saw {sqlstate:?}"
    );
    ensure!(
        works(&report).await,
        "report lost its connection to a cancel"
    );

    // Two pool server connections of the role, each serving nobody once idle.
    let apps = [
        app(&two.bouncer, "web-0").await?,
        app(&two.bouncer, "web-1").await?,
    ];
    let sleep = "SELECT pg_sleep(0.3)";
    let (a, b) = tokio::join!(apps[0].simple_query(sleep), apps[1].simple_query(sleep));
    a?;
    b?;
    let own = direct(&two.pooled, "own").await?;
    let plain = [
        direct(&two.plain, "p-0").await?,
        direct(&two.plain, "p-1").await?,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, out, err) = pgkill(&[
        "--targets",
        &file,
        "free-slot",
        roles::PLAIN,
        "--count",
        "2",
        "-y",
    ])?;
    ensure!(
        code == 0
            && out
                .lines()
                .filter(|l| l.trim_start().starts_with("pooled")
                    && l.contains("serving no application"))
                .count()
                == 2,
        "free-slot: exit {code}\n{out}\n{err}"
    );
    ensure!(
        works(&own).await,
        "the role's own session on pooled was ended first"
    );
    for p in &plain {
        ensure!(!works(p).await, "a session of the role on plain was left");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, a) in apps.iter().enumerate() {
        ensure!(works(a).await, "application web-{i} lost its connection");
    }
    Ok(())
}

/// A `pgbouncer` key naming a console where nothing listens: that target fails with the
/// error the single server gives (`--pgbouncer` on it alone), the other acts, exit 3;
/// `drain` leaves the target with the dead pooler untouched and drains the other.
async fn an_unreachable_pooler_fails_its_target_alone(pg: Installation) -> Result<()> {
    let two = Two::start(&pg).await?;
    let dead = "host=127.0.0.1 port=1 user=postgres connect_timeout=2";
    let dir = tempfile::tempdir()?;
    let file = two.targets_file(&dir, dead)?;
    // What the one server says with that pooler (no target: the single-server path).
    let (code, _, single) = pgkill(&["--pgbouncer", dead, &conninfo(&two.pooled), "ls"])?;
    let single = single
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("pgkill: "))
        .filter(|m| code == 2 && !m.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("exit {code}: {single}"))?;
    let victim = direct(&two.plain, "victim").await?;
    let bystander = direct(&two.pooled, "victim").await?;

    let (code, out, err) = pgkill(&["--targets", &file, "ls", "--json"])?;
    let doc: Value = serde_json::from_str(&out).with_context(|| format!("{out}\n{err}"))?;
    let message = target(&doc, "pooled").and_then(|t| t["error"]["message"].as_str());
    ensure!(
        code == 3
            && message.is_some_and(|m| m.contains(&single))
            && target(&doc, "plain").is_some_and(|t| t["sessions"].is_array()),
        "ls: exit {code}, wanted the pooled target's error to say {single:?}\n{out}\n{err}"
    );

    let (code, out, err) = pgkill(&[
        "--targets",
        &file,
        "kill",
        "--app",
        "victim",
        "-y",
        "--json",
    ])?;
    let doc: Value = serde_json::from_str(&out).with_context(|| format!("{out}\n{err}"))?;
    ensure!(
        code == 3
            && target(&doc, "pooled")
                .and_then(|t| t["error"]["message"].as_str())
                .is_some_and(|m| m.contains(&single))
            && target(&doc, "plain").is_some_and(|t| t["outcomes"][0]["outcome"] == "terminated")
            && err.contains("target pooled:"),
        "kill: exit {code}\n{out}\n{err}"
    );
    ensure!(!works(&victim).await, "plain's victim survived");
    ensure!(
        works(&bystander).await,
        "the target whose pooler is down was acted on"
    );

    let admins = [
        two.pooled.admin("postgres").await?,
        two.plain.admin("postgres").await?,
    ];
    let before = db_row(&admins[0], "shop_db").await?;
    let (code, out, err) = pgkill(&["--targets", &file, "drain", "shop_db", "-y"])?;
    ensure!(
        code == 3
            && out.contains("Target pooled: left untouched:")
            && err.contains(&format!("target pooled: {single}")),
        "drain: exit {code}\n{out}\n{err}"
    );
    ensure!(
        db_row(&admins[0], "shop_db").await? == before,
        "the target whose pooler is down was changed"
    );
    ensure!(
        works(&bystander).await,
        "the pooled target's session was ended"
    );
    ensure!(
        db_row(&admins[1], "shop_db").await?.is_some_and(|r| !r.0),
        "plain's shop_db was not drained"
    );
    let (code, out, err) = pgkill(&["--target", &conninfo(&two.plain), "unfence", "shop_db"])?;
    ensure!(code == 0, "unfence: exit {code}\n{out}\n{err}");
    Ok(())
}

/// `--pgbouncer` (or `PGKILL_PGBOUNCER`) with two `--target`s: which server is it in front
/// of? Refused before anything (exit 2), pointing to the `pgbouncer` key of
/// `--targets FILE`; nothing ended (`top` too). `top` over several targets takes each
/// target's pooler key, checked before the screen.
async fn pgbouncer_on_the_command_line_with_several_targets_is_refused(
    pg: Installation,
) -> Result<()> {
    let two = Two::start(&pg).await?;
    let apps = [
        app(&two.bouncer, "web").await?,
        direct(&two.plain, "web").await?,
    ];
    let console = console(&two.pooled, &two.bouncer);
    let (a, b) = (conninfo(&two.pooled), conninfo(&two.plain));
    // Ambiguous for every command: which server is the pooler in front of?
    for command in [&["kill", "--app", "web", "-y"][..], &["top"]] {
        let mut args = vec!["--target", &a, "--target", &b, "--pgbouncer", &console];
        args.extend(command);
        let (code, out, err) = pgkill(&args)?;
        ensure!(
            code == 2
                && out.is_empty()
                && err.contains(
                    "--pgbouncer names a PgBouncer in front of one server, and 2 targets are given"
                )
                && err.contains(
                    "`pgbouncer = [\"CONNINFO\", ...]` key of its [[target]] table in --targets FILE"
                ),
            "{command:?}: exit {code}\n{out}\n{err}"
        );
    }
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    cmd.env("PGKILL_PGBOUNCER", &console)
        .args(["--target", &a, "--target", &b, "kill", "--app", "web", "-y"])
        .stdin(std::process::Stdio::null());
    let (code, out, err) = support::run(cmd)?;
    ensure!(
        code == 2
            && out.is_empty()
            && err.contains("PGKILL_PGBOUNCER names a PgBouncer")
            && err.contains("--targets FILE"),
        "PGKILL_PGBOUNCER: exit {code}\n{out}\n{err}"
    );
    for a in &apps {
        ensure!(works(a).await, "a refused kill ended a session");
    }
    let dir = tempfile::tempdir()?;
    // One target with a pgbouncer key, and --pgbouncer too: which is it?
    let one = dir.path().join("one.toml");
    std::fs::write(
        &one,
        format!("[[target]]\nname = \"pooled\"\nconninfo = \"{a}\"\npgbouncer = [\"{console}\"]\n"),
    )?;
    let one = one.display().to_string();
    let (code, out, err) = pgkill(&["--targets", &one, "--pgbouncer", &console, "ls"])?;
    ensure!(
        code == 2
            && out.is_empty()
            && err.contains("--pgbouncer and the pgbouncer key of target \"pooled\""),
        "both: exit {code}\n{out}\n{err}"
    );
    // top takes each target's pooler key: one that cannot be reached is a plain error
    // before any screen (`before` is a targets file's text put ahead of that target).
    let dead_pooler = |file: &str, before: &str| -> Result<(i32, String, String)> {
        let path = dir.path().join(file);
        std::fs::write(
            &path,
            format!(
                "{before}[[target]]\nname = \"pooled\"\nconninfo = \"{a}\"\npgbouncer = [\"host=127.0.0.1 port=1 user=postgres connect_timeout=2\"]\n"
            ),
        )?;
        pgkill(&["--targets", &path.display().to_string(), "top"])
    };
    let (code, out, err) = dead_pooler("dead.toml", "")?;
    ensure!(
        code == 2
            && out.is_empty()
            && err.contains("PgBouncer host=127.0.0.1 port=1: cannot connect"),
        "top, one target with a dead pooler: exit {code}\n{out}\n{err}"
    );
    // top over two targets: the pgbouncer key is each target's (a dead one is a plain
    // error naming its target; a live one gets as far as wanting a terminal).
    let (code, out, err) = dead_pooler(
        "dead-of-two.toml",
        &format!("[[target]]\nname = \"plain\"\nconninfo = \"{b}\"\n\n"),
    )?;
    ensure!(
        code == 2
            && out.is_empty()
            && err.contains("target pooled: ")
            && err.contains("PgBouncer host=127.0.0.1 port=1: cannot connect"),
        "top, two targets, one with a dead pooler: exit {code}\n{out}\n{err}"
    );
    let file = two.targets_file(&dir, &console)?;
    let (code, out, err) = pgkill(&["--targets", &file, "top"])?;
    ensure!(
        code == 2
            && out.is_empty()
            && err.contains("pgkill top needs a terminal")
            && !err.contains("poolers"),
        "top, two targets, one behind a pooler: exit {code}\n{out}\n{err}"
    );
    ensure!(
        !err.contains(&two.pooled.password(roles::ADMIN).unwrap_or_default()),
        "a password was shown: {err}"
    );
    Ok(())
}

/// `pgkill --targets FILE top` over two servers, one behind a real PgBouncer (transaction
/// pooling) named by its target's `pgbouncer` key: the pooled application's connection
/// is a row under that target, `k` ends it at that target's pooler (the application
/// sees its connection closed), and nobody else is touched, on either server.
async fn top_over_two_targets_ends_an_application_at_its_targets_pooler(
    pg: Installation,
) -> Result<()> {
    let two = Two::start(&pg).await?;
    let victim = app(&two.bouncer, "web-pooled").await?;
    let kept = app(&two.bouncer, "web-kept").await?;
    let beside = direct(&two.pooled, "beside-pooled").await?;
    let plain = direct(&two.plain, "web-plain").await?;
    let dir = tempfile::tempdir()?;
    let file = two.targets_file(&dir, &console(&two.pooled, &two.bouncer))?;
    let tmux = tmux::Tmux {
        socket: format!(
            "pgkill-fleet-pgbouncer-top-{}-{}",
            std::process::id(),
            pg.version.major
        ),
    };
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD TERM=xterm {} --targets {} top; echo PGKILL_TOP_EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_pgkill"),
        file
    );
    tmux.start_sized(&line, 220, 40)?;
    // Both servers' rows, and the pooler's line under its target's name.
    tmux.wait_for("web-plain").await?;
    let screen = tmux
        .wait_for(&format!(
            "pooled: PgBouncer 1.24.1 at host={}",
            two.bouncer.host()
        ))
        .await?;
    let first = |l: &str| l.split_whitespace().next().map(str::to_owned);
    ensure!(
        screen.lines().any(|l| l.contains("web-pooled")
            && l.contains("(pooled)")
            && first(l).as_deref() == Some("pooled")),
        "the pooled application is not a row under its target:\n{screen}"
    );
    ensure!(
        screen
            .lines()
            .any(|l| l.contains("web-plain") && first(l).as_deref() == Some("plain")),
        "the plain server's session is not under its target:\n{screen}"
    );
    tmux.keys(&["/", "app:web-pooled", "Enter"])?;
    tmux.wait_for("shown 1/").await?;
    tmux.keys(&["k"])?;
    let dialog = tmux.wait_for("y: yes").await?;
    ensure!(
        dialog.contains("Terminate 1 session(s)?")
            && dialog.contains("ended at the pooler (KILL_CLIENT)")
            && dialog.contains("pooled: web-pooled@127.0.0.1"),
        "the confirmation does not name the application at its target's pooler:\n{dialog}"
    );
    tmux.keys(&["y"])?;
    let screen = tmux.wait_for("terminated at the pooler").await?;
    ensure!(
        screen.contains("pooled web-pooled@127.0.0.1"),
        "the outcome does not say whose pooler:\n{screen}"
    );
    let began = std::time::Instant::now();
    while works(&victim).await {
        ensure!(
            began.elapsed() < Duration::from_secs(5),
            "web-pooled was not ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, c) in [
        ("web-kept", &kept),
        ("beside-pooled", &beside),
        ("web-plain", &plain),
    ] {
        ensure!(works(c).await, "{name} was hit");
    }
    tmux.keys(&["Escape", "q"])?;
    let screen = tmux.wait_for("PGKILL_TOP_EXIT=").await?;
    ensure!(screen.contains("PGKILL_TOP_EXIT=0"), "{screen}");
    Ok(())
}

//! `--target` / `--targets`: `ls`, `kill` and `cancel` on several servers at once, of
//! mixed versions (each case runs three servers: its own version and the next two of
//! those selected), through the real binary.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        ls_and_kill_across_servers,
        a_server_that_is_down_is_reported_while_the_others_act,
        targets_file_names_and_csv,
    ]);
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

/// A connection string for the bootstrap superuser of `sb` (its password in it: pgkill
/// never shows one).
fn conninfo(sb: &Sandbox) -> String {
    format!(
        "host={} port={} user={} password={} dbname=postgres",
        sb.host(),
        sb.port(),
        roles::ADMIN,
        sb.password(roles::ADMIN).unwrap_or_default()
    )
}

/// `pgkill --target A --target B ... ARGS` with a clean environment.
fn pgkill(targets: &[String], args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    for t in targets {
        cmd.args(["--target", t]);
    }
    cmd.args(args).stdin(std::process::Stdio::null());
    support::run(cmd)
}

/// The `targets` array of a `--json` document.
fn targets_of(out: &str) -> Result<Vec<Value>> {
    let doc: Value = serde_json::from_str(out).with_context(|| out.to_owned())?;
    Ok(doc["targets"].as_array().cloned().unwrap_or_default())
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
        let pids: Vec<i64> = doc["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["pid"].as_i64())
            .collect();
        ensure!(pids == [i64::from(victim.pid())], "{name}: {pids:?}");
    }
    let (code, out, err) = pgkill(&targets, &["ls", "--db", "x"])?;
    ensure!(
        code == 0
            && out
                .lines()
                .next()
                .is_some_and(|l| l.trim_start().starts_with("target"))
            && out.contains("(3 target(s) listed, 0 failed)"),
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
    for v in &victims {
        let ended = v
            .wait_ended(Duration::from_secs(10))
            .await
            .context("a victim survived")?;
        ensure!(ended.sqlstate.as_deref() == Some("57P01"), "{ended:?}");
    }
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
    let (code, _, err) = pgkill(&[], &["--targets", &path, "drop", "x", "-y"])?;
    ensure!(
        code == 2 && err.contains("works on one server so far"),
        "drop with targets: exit {code} {err}"
    );
    Ok(())
}

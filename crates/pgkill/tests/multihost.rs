//! Connection strings naming several servers, through the real binary on every PostgreSQL
//! version (issue 10): as libpq, pgkill moves on when a host is down or answers 57P03,
//! picks the server `target_session_attrs` asks for out of a primary and its standby
//! (every value, `PGTARGETSESSIONATTRS` too), spreads over hosts with
//! `load_balance_hosts=random`, and says which server it reached: `server.host`/`port`
//! in JSON and a line on stderr. On a standby reached that way, the database commands
//! refuse and name the primary the same string reaches with `read-write`; `top` shows the
//! standby and works there.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;

mod support;
#[path = "support/tmux.rs"]
mod tmux;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        a_host_that_is_down_is_skipped,
        a_host_not_accepting_connections_is_skipped,
        target_session_attrs_pick_the_primary_or_the_standby,
        load_balance_hosts_random_reaches_every_host,
        database_commands_on_a_standby_name_the_primary,
        top_on_a_standby,
    ]);
}

/// A password file with the lines of every sandbox given (each has its own port), 0600,
/// removed with the returned guard.
fn passfile(sandboxes: &[&Sandbox]) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pgpass");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    for sb in sandboxes {
        file.write_all(&std::fs::read(sb.passfile())?)?;
    }
    Ok((dir, path))
}

/// `pgkill CONNINFO ARGS…` as the bootstrap superuser with the password file `pass`.
fn pgkill(conninfo: &str, pass: &PathBuf, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    cmd.env("PGPASSFILE", pass)
        .env("PGUSER", roles::ADMIN)
        .arg(conninfo)
        .args(args)
        .stdin(std::process::Stdio::null());
    cmd
}

/// A loopback port nothing listens on.
fn down_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `ls --json` and returns the port of the server it reports, its `in_recovery`,
/// and stderr.
fn reached(mut cmd: Command) -> Result<(u16, bool, String)> {
    cmd.args(["ls", "--json"]);
    let (code, out, err) = support::run(cmd)?;
    ensure!(code <= 1, "exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out).with_context(|| format!("{out}\n{err}"))?;
    let port = doc["server"]["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| anyhow!("no server.port: {doc}"))?;
    ensure!(
        doc["server"]["host"] == "127.0.0.1",
        "server.host is not the loopback address: {doc}"
    );
    let standby = doc["server"]["in_recovery"]
        .as_bool()
        .ok_or_else(|| anyhow!("no server.in_recovery: {doc}"))?;
    Ok((port, standby, err))
}

fn hosts(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "host={} port={}",
        vec!["127.0.0.1"; ports.len()].join(","),
        ports.join(",")
    )
}

async fn a_host_that_is_down_is_skipped(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let (_dir, pass) = passfile(&[&sb])?;
    let down = down_port()?;
    let p = sb.port();
    for conninfo in [
        hosts(&[down, p]),
        format!("postgresql://127.0.0.1:{down},127.0.0.1:{p}/postgres"),
    ] {
        let (port, _, err) = reached(pgkill(&conninfo, &pass, &[]))?;
        ensure!(port == p, "{conninfo}: reached port {port}\n{err}");
        ensure!(
            err.contains(&format!("connected to host=127.0.0.1 port={p} "))
                && err.contains("(server 2 of 2 given)"),
            "{conninfo}: stderr does not say which server was reached:\n{err}"
        );
    }
    // PGHOST and PGPORT lists.
    let mut cmd = pgkill("dbname=postgres", &pass, &[]);
    cmd.env("PGHOST", "127.0.0.1,127.0.0.1")
        .env("PGPORT", format!("{down},{p}"));
    let (port, _, err) = reached(cmd)?;
    ensure!(port == p, "PGHOST/PGPORT lists: reached port {port}\n{err}");
    // The table output says it too.
    let (code, out, err) = support::run({
        let mut c = pgkill(&hosts(&[down, p]), &pass, &[]);
        c.arg("ls");
        c
    })?;
    ensure!(
        code <= 1 && err.contains("(server 2 of 2 given)"),
        "exit {code}\n{out}\n{err}"
    );
    // -W asks once, before the first host, and the answer serves the host reached.
    let mut cmd = pgkill(&hosts(&[down, p]), &pass, &["-W", "ls"]);
    cmd.env("PGPASSFILE", "/nonexistent");
    let password = sb
        .password(roles::ADMIN)
        .ok_or_else(|| anyhow!("no admin password"))?;
    let (code, screen) = support::on_terminal(&cmd, &format!("{password}\n"))?;
    let screen = String::from_utf8_lossy(&screen);
    ensure!(
        code <= 1 && screen.matches("Password for user").count() == 1,
        "-W with the first host down: exit {code}\n{screen}"
    );
    // All down: one error naming each host, exit 2.
    let other = down_port()?;
    let (code, out, err) = support::run({
        let mut c = pgkill(&hosts(&[down, other]), &pass, &[]);
        c.arg("ls");
        c
    })?;
    ensure!(
        code == 2
            && err.contains("could not connect to any of the 2 servers given")
            && err.contains(&format!("port={down}"))
            && err.contains(&format!("port={other}")),
        "exit {code}\n{out}\n{err}"
    );
    Ok(())
}

/// A server in smart shutdown (SIGTERM, a session still open) answers new connections with
/// 57P03, as one that is starting up does: pgkill moves on to the next host.
async fn a_host_not_accepting_connections_is_skipped(pg: Installation) -> Result<()> {
    let closing = Sandbox::start(&pg, &Options::default())?;
    let good = Sandbox::start(&pg, &Options::default())?;
    let (_dir, pass) = passfile(&[&closing, &good])?;
    let holder = sim::idle(&closing.config("postgres", roles::PLAIN)).await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(closing.postmaster_pid())?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let began = Instant::now();
    loop {
        match closing.admin("postgres").await {
            Err(e) if format!("{e:#}").contains("57P03") => break,
            Err(e) if format!("{e:?}").contains("E57P03") => break,
            other => {
                let last = match other {
                    Ok(_) => "a connection".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                ensure!(
                    began.elapsed() < Duration::from_secs(10),
                    "the closing server never answered 57P03; last: {last}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let conninfo = hosts(&[closing.port(), good.port()]);
    let (port, _, err) = reached(pgkill(&conninfo, &pass, &[]))?;
    ensure!(
        port == good.port(),
        "reached port {port}, not the server accepting connections\n{err}"
    );
    ensure!(
        err.contains("(server 2 of 2 given)"),
        "stderr does not say which server was reached:\n{err}"
    );
    // Alone, the closing server is an error that says why.
    let (code, out, err) = support::run({
        let mut c = pgkill(&hosts(&[closing.port()]), &pass, &[]);
        c.arg("ls");
        c
    })?;
    ensure!(
        code == 2 && err.contains("the database system is shutting down"),
        "exit {code}\n{out}\n{err}"
    );
    drop(holder);
    Ok(())
}

/// A primary with database `app`, and its standby.
async fn primary_and_standby(pg: &Installation) -> Result<(Sandbox, Sandbox)> {
    let primary = Sandbox::start(pg, &Options::default())?;
    primary.create_database("app", None).await?;
    let standby = primary.start_standby(&Options::default())?;
    Ok((primary, standby))
}

async fn target_session_attrs_pick_the_primary_or_the_standby(pg: Installation) -> Result<()> {
    let (primary, standby) = primary_and_standby(&pg).await?;
    let (_dir, pass) = passfile(&[&primary, &standby])?;
    let (p, s) = (primary.port(), standby.port());
    let down = down_port()?;
    for (order, attrs, want) in [
        (&[s, p][..], "any", s),
        (&[s, p], "read-write", p),
        (&[p, s], "read-only", s),
        (&[s, p], "primary", p),
        (&[p, s], "standby", s),
        (&[p, s], "prefer-standby", s),
        (&[p, down], "prefer-standby", p),
        (&[down, s, p], "read-write", p),
    ] {
        let conninfo = format!("{} target_session_attrs={attrs}", hosts(order));
        let (port, in_recovery, err) = reached(pgkill(&conninfo, &pass, &[]))?;
        ensure!(
            port == want && in_recovery == (want == s),
            "{conninfo}: reached port {port} (in recovery: {in_recovery}), wanted {want}\n{err}"
        );
        ensure!(
            (attrs == "any" || err.contains(&format!("target_session_attrs={attrs}")))
                && err.contains(&format!("connected to host=127.0.0.1 port={want} ")),
            "{conninfo}: stderr does not say which server was reached:\n{err}"
        );
        // The same from the environment.
        let mut cmd = pgkill(&hosts(order), &pass, &[]);
        cmd.env("PGTARGETSESSIONATTRS", attrs);
        let (port, _, err) = reached(cmd)?;
        ensure!(
            port == want,
            "PGTARGETSESSIONATTRS={attrs} {order:?}: reached {port}, wanted {want}\n{err}"
        );
    }
    // No server of the kind asked for: an error naming each server and why, exit 2.
    let conninfo = format!("{} target_session_attrs=standby", hosts(&[p, down]));
    let (code, out, err) = support::run({
        let mut c = pgkill(&conninfo, &pass, &[]);
        c.arg("ls");
        c
    })?;
    ensure!(
        code == 2
            && err.contains("with target_session_attrs=standby")
            && err.contains(&format!(
                "port={p} user={} dbname=postgres: server is not in hot standby mode",
                roles::ADMIN
            ))
            && err.contains(&format!("port={down}")),
        "exit {code}\n{out}\n{err}"
    );
    Ok(())
}

async fn load_balance_hosts_random_reaches_every_host(pg: Installation) -> Result<()> {
    let a = Sandbox::start(&pg, &Options::default())?;
    let b = Sandbox::start(&pg, &Options::default())?;
    let (_dir, pass) = passfile(&[&a, &b])?;
    let conninfo = format!("{} load_balance_hosts=random", hosts(&[a.port(), b.port()]));
    let mut seen = BTreeSet::new();
    // The chance that 30 random orders all start with the same host is 2^-29.
    for _ in 0..30 {
        let (port, _, err) = reached(pgkill(&conninfo, &pass, &[]))?;
        ensure!(
            err.contains("load_balance_hosts=random"),
            "stderr does not say the order was random:\n{err}"
        );
        seen.insert(port);
    }
    ensure!(
        seen == BTreeSet::from([a.port(), b.port()]),
        "load_balance_hosts=random only ever reached {seen:?}"
    );
    // Without it, always the first.
    for _ in 0..3 {
        let (port, _, err) = reached(pgkill(&hosts(&[a.port(), b.port()]), &pass, &[]))?;
        ensure!(
            port == a.port(),
            "reached {port}, not the first host\n{err}"
        );
    }
    Ok(())
}

async fn database_commands_on_a_standby_name_the_primary(pg: Installation) -> Result<()> {
    let (primary, standby) = primary_and_standby(&pg).await?;
    let (_dir, pass) = passfile(&[&primary, &standby])?;
    let conninfo = hosts(&[standby.port(), primary.port()]);
    for args in [
        &["drain", "app", "-y"][..],
        &["drop", "app", "-y"],
        &["rename", "app", "app2", "-y"],
        &["unfence", "app"],
    ] {
        let (code, out, err) = support::run(pgkill(&conninfo, &pass, args))?;
        ensure!(
            code == 2
                && err.contains("nothing was changed")
                && err.contains(&format!("{} app on the primary", args[0]))
                && err.contains(&format!(
                    "with target_session_attrs=read-write this connection string reaches the primary: host=127.0.0.1 port={} ",
                    primary.port()
                )),
            "{args:?} through {conninfo}: exit {code}\n{out}\n{err}"
        );
        let admin = primary.admin("postgres").await?;
        let allow: Option<bool> = admin
            .query_opt(
                "SELECT datallowconn FROM pg_catalog.pg_database WHERE datname = 'app'",
                &[],
            )
            .await?
            .map(|r| r.get(0));
        ensure!(
            allow == Some(true),
            "{args:?} changed app on the primary: {allow:?}"
        );
    }
    // With read-write the same string reaches the primary, where drain works.
    let conninfo = format!("{conninfo} target_session_attrs=read-write");
    let (code, out, err) = support::run(pgkill(&conninfo, &pass, &["drain", "app", "-y"]))?;
    ensure!(
        code == 0,
        "drain through {conninfo}: exit {code}\n{out}\n{err}"
    );
    let (code, out, err) = support::run(pgkill(&conninfo, &pass, &["unfence", "app"]))?;
    ensure!(
        code == 0,
        "unfence through {conninfo}: exit {code}\n{out}\n{err}"
    );
    Ok(())
}

/// `top` reached through a multi-host string with `target_session_attrs=standby`, the
/// password typed at the prompt (no password file): the header names the standby's host
/// and port and says standby (the view's own connection reuses the typed password); a long
/// query there is terminated from the view (the session gets 57P01).
async fn top_on_a_standby(pg: Installation) -> Result<()> {
    let (primary, standby) = primary_and_standby(&pg).await?;
    let password = primary
        .password(roles::ADMIN)
        .ok_or_else(|| anyhow!("no admin password"))?;
    let long = sim::running(&standby.config("app", roles::PLAIN), "SELECT pg_sleep(120)").await?;
    let tmux = tmux::Tmux {
        socket: format!(
            "pgkill-multihost-{}-{}",
            std::process::id(),
            pg.version.major
        ),
    };
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGDATABASE -u PGPASSWORD TERM=xterm PGPASSFILE=/nonexistent PGUSER={} {} '{} target_session_attrs=standby' top; echo PGKILL_TOP_EXIT=$?; sleep 60",
        roles::ADMIN,
        env!("CARGO_BIN_EXE_pgkill"),
        hosts(&[primary.port(), standby.port()]),
    );
    tmux.start(&line)?;
    tmux.wait_for("Password for user").await?;
    tmux.keys(&["-l", &password])?;
    tmux.keys(&["Enter"])?;
    let header = format!("127.0.0.1:{} · PG {}", standby.port(), pg.version.major);
    let screen = tmux.wait_for(&header).await?;
    let top_line = screen
        .lines()
        .find(|l| l.contains(&header))
        .unwrap_or_default();
    ensure!(
        top_line.starts_with("pgkill top · ") && top_line.contains(" standby · up "),
        "the header does not say standby:\n{screen}"
    );
    tmux.keys(&["/", &format!("pid:{}", long.pid()), "Enter"])?;
    tmux.wait_for("shown 1/").await?;
    tmux.keys(&["a", "k"])?;
    tmux.wait_for("Terminate 1 session(s)?").await?;
    tmux.keys(&["y"])?;
    let ended = long
        .wait_ended(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("the standby's long query survived top's terminate"))?;
    ensure!(ended.sqlstate.as_deref() == Some("57P01"), "{ended:?}");
    tmux.keys(&["q"])?;
    let screen = tmux.wait_for("PGKILL_TOP_EXIT=").await?;
    ensure!(screen.contains("PGKILL_TOP_EXIT=0"), "{screen}");
    Ok(())
}

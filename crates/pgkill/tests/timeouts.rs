//! pgkill's statements run under `--statement-timeout`, and Ctrl-C cancels the statement
//! in flight on the server (issue 8, finding 10: `ls --query '^((a+)\2)+;$'` against a
//! session whose last query was a run of `a`s ran for 15 s, and went on running on the
//! server after pgkill was interrupted), on every PostgreSQL version, in the clear and
//! over TLS.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};
use tokio_postgres::Client;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        catastrophic_regex_runs_into_the_statement_timeout,
        interrupt_cancels_the_statement_in_flight,
        interrupt_cancels_over_tls,
    ]);
}

/// A back-reference pattern that takes the server's regex engine time exponential in the
/// length of a run of `a`s that it cannot match (an odd number of them).
const CATASTROPHIC: &str = r"^((a+)\2)+;$";

/// A session whose last query text is 55 `a`s and `;` (a syntax error, but
/// `pg_stat_activity` shows it all the same): matching CATASTROPHIC against it takes
/// minutes.
async fn victim(sb: &Sandbox) -> Result<Client> {
    let client = sb.connect("postgres", roles::PLAIN).await?;
    let text = format!("{};", "a".repeat(55));
    ensure!(
        client.batch_execute(&text).await.is_err(),
        "{text} was accepted"
    );
    Ok(client)
}

/// Backends of pgkill that are running a statement.
async fn pgkill_running(admin: &Client) -> Result<Vec<i32>> {
    Ok(admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgkill' AND state = 'active'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Waits up to `within` until no backend of pgkill runs a statement.
async fn none_running(admin: &Client, within: Duration) -> Result<()> {
    let began = Instant::now();
    loop {
        let running = pgkill_running(admin).await?;
        if running.is_empty() {
            return Ok(());
        }
        ensure!(
            began.elapsed() < within,
            "pgkill's statement is still running on the server (pids {running:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Result<i32> {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return status
                .code()
                .ok_or_else(|| anyhow!("pgkill died by a signal: {status}"));
        }
        if began.elapsed() > within {
            let _ = child.kill();
            anyhow::bail!("pgkill did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn catastrophic_regex_runs_into_the_statement_timeout(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let _victim = victim(&sb).await?;
    for args in [
        vec!["ls", "--query", CATASTROPHIC],
        vec!["kill", "--query", CATASTROPHIC, "--dry-run"],
    ] {
        let mut full = vec!["--statement-timeout", "1s"];
        full.extend(&args);
        let began = Instant::now();
        let (code, out, err) = support::run(support::pgkill(&sb, roles::ADMIN, &full))?;
        ensure!(
            began.elapsed() < Duration::from_secs(12),
            "{args:?} took {:?}",
            began.elapsed()
        );
        ensure!(code == 2, "{args:?}: exit {code}\n{out}\n{err}");
        ensure!(
            err.contains("--statement-timeout 1s") && !err.contains("panicked"),
            "{args:?}: the message does not name the timeout:\n{err}"
        );
        none_running(&admin, Duration::from_secs(5)).await?;
    }
    Ok(())
}

/// Starts `ls --query CATASTROPHIC --statement-timeout 60s` (with `env` added), waits
/// until the server runs its statement, sends SIGINT, and checks that pgkill exits
/// promptly with code 2 and that the server stopped the statement. Returns pgkill's
/// backend pid.
async fn interrupt_ls(sb: &Sandbox, admin: &Client, env: &[(&str, &str)]) -> Result<i32> {
    let mut cmd = support::pgkill(
        sb,
        roles::ADMIN,
        &["ls", "--query", CATASTROPHIC, "--statement-timeout", "60s"],
    );
    cmd.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let began = Instant::now();
    let backend = loop {
        if let Some(pid) = pgkill_running(admin).await?.first() {
            break *pid;
        }
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            anyhow::bail!(
                "pgkill ended ({status}) before its statement was seen running: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ensure!(
            began.elapsed() < Duration::from_secs(20),
            "pgkill's statement never showed up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let it run a little: the regex is being matched, not the statement being parsed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let code = wait_exit(&mut child, Duration::from_secs(10))?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(code == 2, "exit {code}: {err}");
    ensure!(err.contains("interrupted"), "{err}");
    // Without the cancel request the server would match the regex for minutes more.
    none_running(admin, Duration::from_secs(5)).await?;
    Ok(backend)
}

async fn interrupt_cancels_the_statement_in_flight(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let _victim = victim(&sb).await?;
    interrupt_ls(&sb, &admin, &[]).await?;
    Ok(())
}

/// The cancel request goes over TLS like the connection (with `sslmode=require` the
/// client library refuses to send it in the clear).
async fn interrupt_cancels_over_tls(pg: Installation) -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let options = Options::default()
        .setting("ssl", "on")
        .data_file("server.crt", cert.cert.pem(), 0o600)
        .data_file("server.key", cert.signing_key.serialize_pem(), 0o600);
    let sb = Sandbox::start(&pg, &options)?;
    let admin = sb.admin("postgres").await?;
    let _victim = victim(&sb).await?;
    let (tx, mut rx) = tokio::sync::oneshot::channel::<bool>();
    // Whether pgkill's connection used TLS, seen while its statement runs.
    let watcher = {
        let admin = sb.admin("postgres").await?;
        tokio::spawn(async move {
            loop {
                let rows = admin
                    .query(
                        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                         WHERE a.application_name = 'pgkill' AND a.state = 'active'",
                        &[],
                    )
                    .await;
                if let Ok(rows) = rows {
                    if let Some(r) = rows.first() {
                        let _ = tx.send(r.get(0));
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    interrupt_ls(&sb, &admin, &[("PGSSLMODE", "require")]).await?;
    watcher.abort();
    ensure!(
        rx.try_recv() == Ok(true),
        "pgkill's connection did not use TLS"
    );
    Ok(())
}

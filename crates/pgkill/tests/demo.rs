//! `pgkill demo` on the real binary, on every PostgreSQL version: it serves a `shop`
//! database with the promised sessions, reports a session that gets terminated, and on
//! Ctrl-C stops its server and removes everything.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgkill_sandbox::{cases, Installation};
use tokio::sync::mpsc::UnboundedReceiver;

fn main() {
    pgkill_sandbox::matrix::main(cases![demo_serves_sessions_and_cleans_up]);
}

/// Reads the demo's stdout lines on a thread, so the test can wait with a timeout.
fn lines_of(stdout: std::process::ChildStdout) -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn wait_for_line(
    rx: &mut UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| anyhow!("demo output ended or stalled; so far:\n{}", seen.join("\n")))?;
        seen.push(line.clone());
        if want(&line) {
            return Ok(line);
        }
    }
}

async fn demo_serves_sessions_and_cleans_up(pg: Installation) -> Result<()> {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_pgkill"))
        .args(["demo", "--pg-version", &pg.version.major.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting pgkill demo")?;
    let mut rx = lines_of(demo.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    let mut seen = Vec::new();
    let result = async {
        let running = wait_for_line(&mut rx, &mut seen, |l| {
            l.contains(" is running on 127.0.0.1:")
        })
        .await?;
        let port: u16 = running
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("no port in {running:?}"))?
            .parse()?;
        let data_dir = PathBuf::from(
            running
                .split("(data in ")
                .nth(1)
                .and_then(|r| r.strip_suffix(")."))
                .ok_or_else(|| anyhow!("no data dir in {running:?}"))?,
        );
        wait_for_line(&mut rx, &mut seen, |l| l == "Ready.").await?;
        ensure!(
            seen.iter()
                .any(|l| l.contains(&format!("psql -h 127.0.0.1 -p {port} -U postgres shop"))),
            "no psql hint:\n{}",
            seen.join("\n")
        );
        ensure!(
            seen.iter()
                .any(|l| l.contains(&format!("pgkill -h 127.0.0.1 -p {port}"))),
            "no pgkill hint"
        );

        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("shop")
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to the demo server")?;
        tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT application_name, state, coalesce(wait_event_type, '') FROM pg_stat_activity
                 WHERE datname = 'shop' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        let count = |app: &str, state: &str, wait: Option<&str>| {
            rows.iter()
                .filter(|r| {
                    r.get::<_, String>(0) == app
                        && r.get::<_, Option<String>>(1).as_deref() == Some(state)
                })
                .filter(|r| wait.is_none_or(|w| r.get::<_, String>(2) == w))
                .count()
        };
        ensure!(
            count("shop-web", "idle", None) == 3,
            "idle sessions: {rows:?}"
        );
        ensure!(count("shop-worker", "idle in transaction", None) == 2);
        ensure!(count("nightly-report", "active", None) == 1);
        ensure!(
            count("shop-migrations", "idle in transaction", None) == 1,
            "lock holder"
        );
        ensure!(
            count("shop-migrations", "active", Some("Lock")) == 2,
            "lock waiters"
        );
        ensure!(count("shop-pool", "idle", None) == 5, "pool");
        let waiting: i64 = client
            .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
            .await?
            .get(0);
        ensure!(waiting >= 2, "waiters wait on locks");

        // Terminating a session is reported by the demo with the SQLSTATE its client saw.
        let pid: i32 = client
            .query_one(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'shop-web' LIMIT 1",
                &[],
            )
            .await?
            .get(0);
        client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await?;
        wait_for_line(&mut rx, &mut seen, |l| {
            l.contains(&format!("session {pid} ")) && l.contains("57P01")
        })
        .await?;
        drop(client);

        kill(Pid::from_raw(demo.id() as i32), Signal::SIGINT)?;
        wait_for_line(&mut rx, &mut seen, |l| l == "Done.").await?;
        let status = demo.wait()?;
        ensure!(status.success(), "demo exited with {status}");
        ensure!(!data_dir.exists(), "{} left behind", data_dir.display());
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = demo.kill();
        let _ = demo.wait();
    }
    result
}

//! What the tests of the real binary share: running it against a sandbox in a clean
//! environment, and waiting for sessions a test dropped to leave.
#![allow(dead_code)] // each test binary uses a part

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tokio_postgres::Client;

/// `pgkill -h HOST -p PORT -U ROLE ARGS…`, free of the developer's `PG*` variables and
/// `~/.pgpass`, without colours, with no terminal on stdin.
pub fn pgkill(host: &str, port: u16, role: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", std::env::temp_dir().join("pgkill-cli-test-home"))
        .env("NO_COLOR", "1")
        .args(["-h", host, "-p", &port.to_string(), "-U", role])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to the end: exit code, stdout, stderr.
pub fn run(mut cmd: Command) -> Result<(i32, String, String)> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().context("running pgkill")?;
    let code = status
        .code()
        .ok_or_else(|| anyhow!("pgkill died by a signal: {status}"))?;
    Ok((code, String::from_utf8(stdout)?, String::from_utf8(stderr)?))
}

/// Waits until the sessions of `db` that a test dropped have left.
pub async fn wait_no_sessions(admin: &Client, db: &str) -> Result<()> {
    let began = Instant::now();
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await?
        .get::<_, i64>(0)
        > 0
    {
        ensure!(
            began.elapsed() < Duration::from_secs(10),
            "sessions of {db} did not leave"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

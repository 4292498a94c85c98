//! `pgkill top` end to end in tmux, every PostgreSQL version: the password is asked for
//! once, before the full screen; when the server later refuses it (the role's password
//! changed and top has to reconnect), the screen says "authentication failed; restart
//! top" instead of prompting under the view, and top stops trying to log in.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pgkill_sandbox::{cases, Installation, Options, Sandbox};

#[path = "support/tmux.rs"]
mod tmux;
use tmux::Tmux;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        reconnect_after_a_password_change_neither_prompts_nor_retries
    ]);
}

const ROLE: &str = "pgkill_top";

/// How many failed logins of [`ROLE`] the server has logged.
fn failed_logins(sb: &Sandbox) -> Result<usize> {
    let log = std::fs::read_to_string(sb.log_file())?;
    Ok(log
        .matches(&format!(
            "password authentication failed for user \"{ROLE}\""
        ))
        .count())
}

async fn reconnect_after_a_password_change_neither_prompts_nor_retries(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD {}",
            pgkill_core::quote_literal("first-Pw")?
        ))
        .await?;
    // TCP logins of the role need its password, whatever the sandbox's rules say.
    let hba = sb.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba)?;
    std::fs::write(
        &hba,
        format!("host all {ROLE} 127.0.0.1/32 scram-sha-256\n{rules}"),
    )?;
    admin
        .batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .await?;
    let began = Instant::now();
    loop {
        let mut probe = tokio_postgres::Config::new();
        probe
            .host(sb.host())
            .port(sb.port())
            .user(ROLE)
            .dbname("postgres");
        match probe.connect(tokio_postgres::NoTls).await {
            // No password given: refused client-side once the server asks for one.
            Err(e) if e.as_db_error().is_none() => break,
            _ => {}
        }
        ensure!(
            began.elapsed() < Duration::from_secs(10),
            "the pg_hba.conf rule never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let home = tempfile::tempdir()?;
    let tmux = Tmux {
        socket: format!(
            "pgkill-top-auth-{}-{}",
            std::process::id(),
            pg.version.major
        ),
    };
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD -u PGPASSFILE HOME={} TERM=xterm {} -h {} -p {} -U {ROLE} -W top -i 200ms; echo PGKILL_TOP_EXIT=$?; sleep 60",
        home.path().display(),
        env!("CARGO_BIN_EXE_pgkill"),
        sb.host(),
        sb.port(),
    );
    tmux.start(&line)?;
    // -W: asked once, on the plain terminal, before the view.
    tmux.wait_for(&format!("Password for user {ROLE}")).await?;
    tmux.keys(&["-l", "first-Pw"])?;
    tmux.keys(&["Enter"])?;
    tmux.wait_for(&format!("PG {}.", pg.version.major)).await?;

    // The password changes and top's session is ended: it has to log in again.
    admin
        .batch_execute(&format!(
            "ALTER ROLE {ROLE} PASSWORD {}",
            pgkill_core::quote_literal("second-Pw")?
        ))
        .await?;
    let before = failed_logins(&sb)?;
    admin
        .execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1",
            &[&ROLE],
        )
        .await?;
    let screen = tmux
        .wait_for("authentication failed; restart top")
        .await
        .context("after the password changed")?;
    ensure!(
        !screen.contains("Password for user"),
        "top prompted under its view:\n{screen}"
    );
    // Many refresh intervals and more than the first reconnect backoff later, still one
    // failed login: it does not keep trying the old password.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = failed_logins(&sb)? - before;
    ensure!(
        failed == 1,
        "{failed} failed logins after the password changed"
    );
    let screen = tmux.screen()?;
    ensure!(
        screen.contains("authentication failed; restart top")
            && !screen.contains("Password for user"),
        "{screen}"
    );

    tmux.keys(&["q"])?;
    let screen = tmux.wait_for("PGKILL_TOP_EXIT=").await?;
    ensure!(screen.contains("PGKILL_TOP_EXIT=0"), "{screen}");
    Ok(())
}

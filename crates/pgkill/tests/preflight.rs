//! What the preflight of the database commands catches, through the real binary on every
//! PostgreSQL version: input the act step would fail on is refused before anything is
//! fenced or signalled (issue 9, defect 3), and the messages say what to do (defect 8).

use std::time::Duration;

use anyhow::{ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use tokio_postgres::Client;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        rename_to_a_bad_name_changes_nothing,
        a_too_long_name_never_reaches_another_object,
        drop_of_the_maintenance_database_suggests_another,
        each_command_has_only_its_own_flags,
    ]);
}

fn run(sb: &Sandbox, args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = support::pgkill(sb, roles::ADMIN, args);
    cmd.env(
        "PGKILL_STATE_DIR",
        std::env::temp_dir().join("pgkill-preflight-unused"),
    );
    support::run(cmd)
}

async fn allow_connections(admin: &Client, name: &str) -> Result<Option<bool>> {
    Ok(admin
        .query_opt(
            "SELECT datallowconn FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
}

async fn rename_to_a_bad_name_changes_nothing(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    sb.create_database("a", None).await?;
    sb.create_database("b", None).await?;
    let app = sim::idle_in_transaction(&sb.config("a", roles::PLAIN), None).await?;
    let too_long = "n".repeat(64);
    for (new, why) in [
        ("", "empty"),
        (too_long.as_str(), "64 bytes"),
        ("a", "already called"),
        ("b", "already exists"),
    ] {
        let (code, out, err) = run(&sb, &["rename", "a", new, "-y"])?;
        ensure!(
            code == 2 && err.contains("nothing was changed") && err.contains(why),
            "rename a {new:?}: exit {code}\n{out}\n{err}"
        );
        ensure!(
            allow_connections(&admin, "a").await? == Some(true),
            "a was fenced"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure!(
        app.is_connected(),
        "a refused rename ended the application's session: {:?}",
        app.ended()
    );
    Ok(())
}

async fn a_too_long_name_never_reaches_another_object(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    // A name type keeps 63 bytes: a longer name compared as `name` would match this one.
    let kept = "d".repeat(63);
    sb.create_database(&kept, None).await?;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN",
            pgkill_core::quote_ident(&kept)?
        ))
        .await?;
    let longer = format!("{kept}xyz");
    for args in [
        vec!["drop", longer.as_str(), "-y"],
        vec!["drain", longer.as_str(), "-y"],
        vec!["unfence", longer.as_str()],
        vec!["free-slot", longer.as_str(), "-y"],
    ] {
        let (code, out, err) = run(&sb, &args)?;
        ensure!(
            code == 2 && err.contains("66 bytes") && err.contains("at most 63"),
            "{args:?}: exit {code}\n{out}\n{err}"
        );
    }
    ensure!(allow_connections(&admin, &kept).await? == Some(true));
    let (code, _, err) = run(&sb, &["free-slot", roles::PLAIN, "-n", "0", "-y"])?;
    ensure!(
        code == 2 && err.contains("--count"),
        "free-slot -n 0: exit {code}: {err}"
    );
    Ok(())
}

async fn drop_of_the_maintenance_database_suggests_another(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let (code, _, err) = run(&sb, &["drop", "postgres", "--dry-run"])?;
    ensure!(
        code == 2 && err.contains("--maintenance-db") && err.contains("e.g. template1"),
        "exit {code}: {err}"
    );
    ensure!(!err.contains("e.g. postgres"), "{err}");
    Ok(())
}

async fn each_command_has_only_its_own_flags(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let (_, cancel, _) = run(&sb, &["cancel", "--help"])?;
    let (_, kill, _) = run(&sb, &["kill", "--help"])?;
    ensure!(!cancel.contains("--timeout"), "cancel --help:\n{cancel}");
    ensure!(kill.contains("--timeout"), "kill --help:\n{kill}");
    let (code, _, err) = run(&sb, &["cancel", "--timeout", "1s", "-y"])?;
    ensure!(code == 2 && err.contains("--timeout"), "exit {code}: {err}");
    Ok(())
}

//! What pgkill selects, through the real binary on every PostgreSQL version: no client can
//! hide from it by calling itself `pgkill` (issue 9, defect 9), and free-slot tells the
//! truth when a refilling pool takes the slot it freed. (That pgkill's own
//! connections stay out of its listings is checked by the property test of `pgkill-pg`,
//! which compares every listing with an independent evaluation.)

use std::time::Duration;

use anyhow::{ensure, Result};
use pgkill_sandbox::sim::PoolOptions;
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        a_client_named_pgkill_is_not_immune,
        free_slot_says_when_a_pool_took_the_slot,
    ]);
}

async fn a_client_named_pgkill_is_not_immune(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let mut config = sb.config("app", roles::PLAIN);
    config.application_name("pgkill");
    let hiding = sim::idle(&config).await?;
    let plain = sim::idle(&sb.config("app", roles::PLAIN)).await?;
    let run = |args: &[&str]| support::run(support::pgkill(&sb, roles::ADMIN, args));
    let (code, out, err) = run(&["ls", "--db", "app", "--csv"])?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(
        out.contains(&hiding.pid().to_string()) && out.contains(&plain.pid().to_string()),
        "a session named pgkill is not listed:\n{out}"
    );
    let (code, out, err) = run(&["kill", "--db", "app", "-y"])?;
    ensure!(code == 0, "exit {code}: {out}\n{err}");
    for s in [&hiding, &plain] {
        let ended = s.wait_ended(Duration::from_secs(10)).await;
        ensure!(
            ended.and_then(|e| e.sqlstate).as_deref() == Some("57P01"),
            "pid {} ({}) survived kill --db app:\n{out}",
            s.pid(),
            s.kind()
        );
    }
    Ok(())
}

async fn free_slot_says_when_a_pool_took_the_slot(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_role("pooled", "LOGIN CONNECTION LIMIT 3").await?;
    let pool = sim::pool(
        &sb.config("postgres", "pooled"),
        PoolOptions {
            clients: 3,
            reconnect_delay: Duration::from_millis(1),
        },
    )
    .await?;
    ensure!(
        pool.wait_connected(3, Duration::from_secs(10)).await,
        "{:?}",
        pool.stats()
    );
    let (code, out, err) = support::run(support::pgkill(
        &sb,
        roles::ADMIN,
        &["free-slot", "pooled", "-y", "--json"],
    ))?;
    ensure!(
        code == 3,
        "the pool took the slot back, yet exit {code}:\n{out}\n{err}"
    );
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(
        doc["full_again"] == true && doc["connection_limit"] == 3,
        "{doc}"
    );
    let arrivals = doc["reconnected"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no reconnected list: {doc}"))?;
    ensure!(!arrivals.is_empty(), "{doc}");
    ensure!(
        arrivals[0]["application_name"].is_string() && arrivals[0]["client_addr"] == "127.0.0.1",
        "{doc}"
    );
    ensure!(doc["outcomes"][0]["outcome"] == "terminated", "{doc}");
    // The same in words.
    let (code, out, _) = support::run(support::pgkill(
        &sb,
        roles::ADMIN,
        &["free-slot", "pooled", "-y"],
    ))?;
    ensure!(
        code == 3
            && out.contains("logged in while free-slot ran")
            && out.contains("at its connection limit again"),
        "exit {code}:\n{out}"
    );
    pool.stop().await;
    Ok(())
}

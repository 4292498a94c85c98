//! What pgkill selects, through the real binary on every PostgreSQL version: no client can
//! hide from it by calling itself `pgkill` (issue 9, defect 9). (That pgkill's own
//! connections stay out of its listings is checked by the property test of `pgkill-pg`,
//! which compares every listing with an independent evaluation.)

use std::time::Duration;

use anyhow::{ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![a_client_named_pgkill_is_not_immune]);
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

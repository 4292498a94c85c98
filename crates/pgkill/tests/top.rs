//! `pgkill top` end to end in tmux against real servers, every PostgreSQL version:
//! filter to a database, select its sessions, terminate, confirm; exactly those sessions
//! are gone; when the server goes away the screen says so; `q` leaves with the terminal
//! restored.

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};

#[path = "support/tmux.rs"]
mod tmux;
use tmux::Tmux;

fn main() {
    pgkill_sandbox::matrix::main(cases![filter_select_terminate_and_quit]);
}

async fn filter_select_terminate_and_quit(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("victims", None).await?;
    sb.create_database("others", None).await?;
    let mut victims = Vec::new();
    for _ in 0..3 {
        victims.push(sim::idle(&sb.config("victims", roles::PLAIN)).await?);
    }
    let bystanders = [
        sim::idle(&sb.config("others", roles::PLAIN)).await?,
        sim::idle(&sb.config("others", roles::PLAIN)).await?,
    ];

    let tmux = Tmux {
        socket: format!("pgkill-top-{}-{}", std::process::id(), pg.version.major),
    };
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE TERM=xterm {} -h {} -p {} -U {} top; echo PGKILL_TOP_EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_pgkill"),
        sb.host(),
        sb.port(),
        roles::ADMIN
    );
    tmux.start(&line)?;
    tmux.wait_for(&format!("PG {}.", pg.version.major)).await?;
    tmux.keys(&["/", "db:victims", "Enter"])?;
    tmux.wait_for("shown 3/").await?;
    tmux.keys(&["a", "k"])?;
    let dialog = tmux.wait_for("Terminate 3 session(s)?").await?;
    for v in &victims {
        ensure!(
            dialog.contains(&v.pid().to_string()),
            "dialog lacks {}:\n{dialog}",
            v.pid()
        );
    }
    tmux.keys(&["y"])?;
    tmux.wait_for("last action:").await?;
    for v in &victims {
        let e = v
            .wait_ended(Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow!("{} survived", v.pid()))?;
        ensure!(e.sqlstate.as_deref() == Some("57P01"), "{e:?}");
    }
    let admin = sb.admin("postgres").await?;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'victims'",
            &[],
        )
        .await?
        .get(0);
    ensure!(left == 0, "{left} sessions left in victims");
    for b in &bystanders {
        ensure!(b.is_connected(), "bystander {} was hit", b.pid());
    }
    // The server goes away: the screen says so (and keeps trying), and q still leaves cleanly.
    drop(admin);
    drop(victims);
    drop(bystanders);
    sb.stop();
    tmux.wait_for("DISCONNECTED").await?;
    tmux.keys(&["q"])?;
    let screen = tmux.wait_for("PGKILL_TOP_EXIT=").await?;
    ensure!(screen.contains("PGKILL_TOP_EXIT=0"), "{screen}");
    let alternate = tmux.cmd(&["display-message", "-p", "-t", "top", "#{alternate_on}"])?;
    ensure!(
        alternate.trim() == "0",
        "the terminal was left on the alternate screen"
    );
    ensure!(
        !screen.contains("pgkill top ·"),
        "the view was left on screen:\n{screen}"
    );
    Ok(())
}

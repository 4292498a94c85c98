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
    pgkill_sandbox::matrix::main(cases![
        filter_select_terminate_and_quit,
        a_selected_row_that_stops_matching_is_not_signalled,
        the_confirmation_names_protected_sessions_and_bang_includes_them,
    ]);
}

/// `pgkill top ARGS` as the bootstrap superuser in a tmux of the test's own, once it shows
/// the server.
async fn start_top(sb: &Sandbox, name: &str, args: &str) -> Result<Tmux> {
    let tmux = Tmux {
        socket: format!(
            "pgkill-top-{name}-{}-{}",
            std::process::id(),
            sb.version().major
        ),
    };
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD TERM=xterm PGPASSFILE={} {} -h {} -p {} -U {} top {args}; echo PGKILL_TOP_EXIT=$?; sleep 60",
        sb.passfile().display(),
        env!("CARGO_BIN_EXE_pgkill"),
        sb.host(),
        sb.port(),
        roles::ADMIN
    );
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &line,
    ])?;
    tmux.wait_for(&format!("PG {}.", sb.version().major))
        .await?;
    Ok(tmux)
}

/// Regression (issue 9, defect 4): with `state:idle` typed, two idle sessions selected,
/// one starts a query before `k`, `y`: only the one still idle is terminated.
async fn a_selected_row_that_stops_matching_is_not_signalled(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let stays = sim::idle(&sb.config("app", roles::PLAIN)).await?;
    let wakes = sim::idle(&sb.config("app", roles::PLAIN)).await?;
    let tmux = start_top(&sb, "rematch", "-i 60s").await?;
    tmux.keys(&["/", "db:app state:idle", "Enter"])?;
    tmux.wait_for("shown 2/").await?;
    tmux.keys(&["a"])?;
    tmux.wait_for("select (2)").await?;
    // The refresh interval is long: the screen still shows both as idle when one of
    // them starts a query.
    let busy = wakes.client().batch_execute("SELECT pg_sleep(30)");
    tokio::pin!(busy);
    let admin = sb.admin("postgres").await?;
    let rest = async {
        let began = std::time::Instant::now();
        while admin
            .query_one(
                "SELECT state FROM pg_stat_activity WHERE pid = $1",
                &[&wakes.pid()],
            )
            .await?
            .get::<_, Option<String>>(0)
            .as_deref()
            != Some("active")
        {
            ensure!(began.elapsed() < Duration::from_secs(10), "never active");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tmux.keys(&["k"])?;
        tmux.wait_for("Terminate 2 session(s)?").await?;
        tmux.keys(&["y"])?;
        tmux.wait_for("last action:").await?;
        ensure!(
            stays
                .wait_ended(Duration::from_secs(10))
                .await
                .and_then(|e| e.sqlstate)
                .as_deref()
                == Some("57P01"),
            "the idle session was not terminated"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(
            wakes.is_connected(),
            "the session that started a query was terminated: {:?}",
            wakes.ended()
        );
        Ok::<_, anyhow::Error>(())
    };
    tokio::select! {
        r = rest => r?,
        r = &mut busy => anyhow::bail!("the query ended early: {r:?}"),
    }
    tmux.keys(&["q"])?;
    Ok(())
}

/// Regression (issue 9, defect 5): the question says which selected sessions will be
/// refused, and `!` includes protected superuser sessions for this one action.
async fn the_confirmation_names_protected_sessions_and_bang_includes_them(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("ops", None).await?;
    let supers = [
        sim::idle(&sb.config("ops", roles::SUPERUSER)).await?,
        sim::idle(&sb.config("ops", roles::SUPERUSER)).await?,
    ];
    let plain = sim::idle(&sb.config("ops", roles::PLAIN)).await?;
    let tmux = start_top(&sb, "bang", "").await?;
    tmux.keys(&["/", "db:ops", "Enter"])?;
    tmux.wait_for("shown 3/").await?;
    tmux.keys(&["a", "k"])?;
    let dialog = tmux.wait_for("Terminate 1 session(s)?").await?;
    ensure!(
        dialog.contains("2 will NOT be signalled") && dialog.contains("protected by default"),
        "{dialog}"
    );
    tmux.keys(&["!"])?;
    tmux.wait_for("Terminate 3 session(s)?").await?;
    tmux.keys(&["y"])?;
    tmux.wait_for("last action:").await?;
    for s in supers.iter().chain([&plain]) {
        ensure!(
            s.wait_ended(Duration::from_secs(10))
                .await
                .and_then(|e| e.sqlstate)
                .as_deref()
                == Some("57P01"),
            "{} was not terminated",
            s.pid()
        );
    }
    tmux.keys(&["q"])?;
    Ok(())
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

    let tmux = start_top(&sb, "filter", "").await?;
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

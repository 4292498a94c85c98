//! `pgkill top` end to end in tmux against real servers, every PostgreSQL version:
//! filter to a database, select its sessions, terminate, confirm; exactly those sessions
//! are gone; when the server goes away the screen says so; `q` leaves with the terminal
//! restored.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};

fn main() {
    pgkill_sandbox::matrix::main(cases![filter_select_terminate_and_quit]);
}

/// A tmux server of this test's own (so parallel tests do not meet).
struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String> {
        self.cmd(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.cmd(&args).map(drop)
    }

    async fn wait_for(&self, what: &str) -> Result<String> {
        let began = Instant::now();
        loop {
            let screen = self.screen()?;
            if screen.contains(what) {
                return Ok(screen);
            }
            ensure!(
                began.elapsed() < Duration::from_secs(20),
                "screen never showed {what:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
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
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD TERM=xterm PGPASSFILE={} {} -h {} -p {} -U {} top; echo PGKILL_TOP_EXIT=$?; sleep 60",
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
        "120",
        "-y",
        "30",
        &line,
    ])?;
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

//! `pgkill top` end to end in tmux against real servers, every PostgreSQL version:
//! filter to a database, select its sessions, terminate, confirm; exactly those sessions
//! are gone; when the server goes away the screen says so; `q` leaves with the terminal
//! restored.

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};

mod support;
#[path = "support/tmux.rs"]
mod tmux;
use tmux::Tmux;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        filter_select_terminate_and_quit,
        a_selected_row_that_stops_matching_is_not_signalled,
        the_confirmation_names_protected_sessions_and_bang_includes_them,
        the_whole_lock_chain_shows_and_proceeds_when_its_root_is_terminated,
        a_changed_interval_takes_effect_at_once,
        record_appends_refreshes_and_the_action_with_its_outcome,
        chosen_columns_show_and_a_bad_list_is_exit_2,
        every_kind_shows_progress_and_workers_under_their_leader,
        the_health_header_shows_a_streaming_standby_and_its_lag,
        three_targets_merge_filter_by_target_and_terminate_on_one,
        top_over_targets_refuses_pgbouncer_and_every_target_it_cannot_reach,
        a_target_down_at_start_shows_disconnected_then_its_sessions_when_it_starts,
        the_blocking_tree_over_two_targets_terminates_the_root_on_its_server,
        the_health_header_over_two_targets_names_each,
        a_target_refusing_the_login_at_start_is_shown_and_not_tried_again,
    ]);
}

/// `pgkill top ARGS` as the bootstrap superuser in a tmux of the test's own, once it shows
/// the server.
async fn start_top(sb: &Sandbox, name: &str, args: &str) -> Result<Tmux> {
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD TERM=xterm PGPASSFILE={} {} -h {} -p {} -U {} top {args}; echo PGKILL_TOP_EXIT=$?; sleep 60",
        sb.passfile().display(),
        env!("CARGO_BIN_EXE_pgkill"),
        sb.host(),
        sb.port(),
        roles::ADMIN
    );
    let tmux = tmux_running(&format!("{name}-{}", sb.version().major), &line)?;
    tmux.wait_for(&format!("PG {}.", sb.version().major))
        .await?;
    Ok(tmux)
}

/// `line` (a shell command) in a tmux of the test's own, 160×40, session `top`.
fn tmux_running(name: &str, line: &str) -> Result<Tmux> {
    let tmux = Tmux {
        socket: format!("pgkill-top-{name}-{}", std::process::id()),
    };
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        line,
    ])?;
    Ok(tmux)
}

/// In a new database `chain` of `sb`: a reader idle in transaction on `orders`, an
/// `ALTER TABLE` queued behind it and `readers` readers queued behind the DDL, once all
/// of them wait.
async fn lock_chain(
    sb: &Sandbox,
    readers: usize,
) -> Result<(sim::Session, sim::Session, Vec<sim::Session>)> {
    sb.create_database("chain", Some(roles::PLAIN)).await?;
    let config = sb.config("chain", roles::PLAIN);
    let reader = sim::idle_in_transaction(
        &config,
        Some("CREATE TABLE orders (id int); COMMIT; BEGIN; SELECT count(*) FROM orders"),
    )
    .await?;
    let ddl = sim::running(&config, "ALTER TABLE orders ADD COLUMN note text").await?;
    let mut api = Vec::new();
    for _ in 0..readers {
        api.push(sim::running(&config, "SELECT count(*) FROM orders").await?);
    }
    let admin = sb.admin("postgres").await?;
    let began = std::time::Instant::now();
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'chain' AND wait_event_type = 'Lock'",
                &[],
            )
            .await?
            .get(0);
        if usize::try_from(waiting)? == readers + 1 {
            return Ok((reader, ddl, api));
        }
        ensure!(
            began.elapsed() < Duration::from_secs(10),
            "{waiting} waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The root of a lock chain was terminated (57P01) and every one of its `waiters`'
/// statements then completed.
async fn root_ended_and_chain_proceeded(
    root: &sim::Session,
    waiters: &[&sim::Session],
) -> Result<()> {
    ensure!(
        root.wait_ended(Duration::from_secs(10))
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01"),
        "the root was not terminated"
    );
    for s in waiters {
        let done = s.wait_statement(Duration::from_secs(10)).await;
        ensure!(
            matches!(done, sim::Statement::Completed),
            "{} did not proceed: {done:?}",
            s.pid()
        );
    }
    Ok(())
}

/// Issue 15, defect 1: a reader idle in transaction, an `ALTER TABLE` queued behind it
/// and three readers queued behind the DDL: `b` shows all three levels (the readers
/// under the DDL, drawn `├─`/`└─`, with the lock mode and the table), the root counts
/// all four; terminating the root lets the whole chain through.
async fn the_whole_lock_chain_shows_and_proceeds_when_its_root_is_terminated(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let (reader, ddl, api) = lock_chain(&sb, 3).await?;
    // Connected to the chain's database: relations are named there.
    let tmux = start_top(&sb, "chain", "-i 500ms --maintenance-db chain").await?;
    tmux.keys(&["/", "db:chain", "Enter"])?;
    tmux.wait_for("shown 5/").await?;
    tmux.keys(&["b"])?;
    tmux.wait_for("blocks 4").await?;
    // The whole tree, checked on one complete frame (a capture can catch a redraw
    // half way).
    let whole = |tree: &str| -> std::result::Result<(), String> {
        let root = format!("> {} {}", reader.pid(), roles::PLAIN);
        if !tree.contains(&root) {
            return Err(format!("the reader is not the root:\n{tree}"));
        }
        if !(tree.contains(&format!("└─ {} ", ddl.pid()))
            && tree.contains("for AccessExclusiveLock on public.orders"))
        {
            return Err(format!("the DDL is not under the reader:\n{tree}"));
        }
        for (i, a) in api.iter().enumerate() {
            let branch = if i + 1 == api.len() {
                "└─"
            } else {
                "├─"
            };
            if !tree.lines().any(|l| {
                l.contains(&format!("   {branch} {} ", a.pid()))
                    && l.contains("for AccessShareLock on public.orders")
            }) {
                return Err(format!(
                    "{} is not under the DDL as {branch}:\n{tree}",
                    a.pid()
                ));
            }
        }
        Ok(())
    };
    let began = std::time::Instant::now();
    let tree = loop {
        let screen = tmux.screen()?;
        match whole(&screen) {
            Ok(()) => break screen,
            Err(e) if began.elapsed() > Duration::from_secs(10) => anyhow::bail!(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    ensure!(!tree.contains("waiting 1m"), "{tree}");
    tmux.keys(&["k"])?;
    tmux.wait_for("Terminate 1 session(s)?").await?;
    tmux.keys(&["y"])?;
    let waiters: Vec<&sim::Session> = std::iter::once(&ddl).chain(&api).collect();
    root_ended_and_chain_proceeded(&reader, &waiters).await?;
    tmux.wait_for(&format!("last action: {} terminated", reader.pid()))
        .await?;
    tmux.keys(&["b"])?;
    tmux.wait_for("No session is waiting").await?;
    tmux.keys(&["q"])?;
    Ok(())
}

/// Issue 15, defect 2 (and the health header's statements on every version): `+` up to a minute, `-` down to 250 ms, `+ +` to 1 s: the next
/// refresh comes within the new interval (it used to wait out the minute), and nothing
/// says stale.
async fn a_changed_interval_takes_effect_at_once(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("tick", None).await?;
    let tmux = start_top(&sb, "tick", "").await?;
    tmux.keys(&["/", "db:tick", "Enter"])?;
    tmux.wait_for("shown 0/").await?;
    // The health header is read on every version (rates from the second refresh on).
    let header = tmux.wait_for("cache hit").await?;
    ensure!(
        header.contains("xact/s ")
            && header.contains("oldest xact -")
            && header.contains("autovacuum ")
            && header.contains("standbys: none"),
        "{header}"
    );
    for _ in 0..6 {
        tmux.keys(&["+"])?;
    }
    tmux.wait_for("refresh 1m00s").await?;
    for _ in 0..8 {
        tmux.keys(&["-"])?;
    }
    tmux.wait_for("refresh 250ms").await?;
    tmux.keys(&["+", "+"])?;
    tmux.wait_for("refresh 1s").await?;
    let began = std::time::Instant::now();
    let newcomer = sim::idle(&sb.config("tick", roles::PLAIN)).await?;
    let screen = tmux.wait_for("shown 1/").await?;
    ensure!(
        began.elapsed() < Duration::from_secs(4),
        "the new session showed only after {:?}:\n{screen}",
        began.elapsed()
    );
    ensure!(screen.contains(&newcomer.pid().to_string()), "{screen}");
    ensure!(!screen.contains("STALE"), "{screen}");
    tmux.keys(&["q"])?;
    Ok(())
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

/// Issue 15, recording: `top --record FILE` appends a JSON line per refresh (the rows,
/// with the victim's query) and one for the action (who, the signal, the sessions and
/// each outcome); the file is private (0600), and a symlink at FILE is refused (exit 2)
/// without writing through it.
async fn record_appends_refreshes_and_the_action_with_its_outcome(pg: Installation) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("victims", None).await?;
    let victim = sim::idle(&sb.config("victims", roles::PLAIN)).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("top.jsonl");

    // A symlink at FILE: refused before the screen, nothing written through it.
    let aim = dir.path().join("aim");
    std::fs::write(&aim, "")?;
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&aim, &link)?;
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"))
        .args(["-h", sb.host(), "-U", roles::ADMIN, "-p"])
        .arg(sb.port().to_string())
        .arg("top")
        .arg("--record")
        .arg(&link)
        .env("PGPASSFILE", sb.passfile())
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .env_remove("PGUSER")
        .output()?;
    ensure!(refused.status.code() == Some(2), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    ensure!(said.contains("symbolic link"), "{said}");
    ensure!(
        std::fs::read(&aim)?.is_empty(),
        "written through the symlink"
    );

    let tmux = start_top(&sb, "record", &format!("--record {}", file.display())).await?;
    tmux.keys(&["/", "db:victims", "Enter"])?;
    tmux.wait_for("shown 1/").await?;
    tmux.keys(&["a", "k"])?;
    tmux.wait_for("Terminate 1 session(s)?").await?;
    tmux.keys(&["y"])?;
    tmux.wait_for("last action:").await?;
    victim
        .wait_ended(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("{} survived", victim.pid()))?;
    tmux.keys(&["q"])?;
    tmux.wait_for("PGKILL_TOP_EXIT=0").await?;

    let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "mode {mode:o}");
    let text = std::fs::read_to_string(&file)?;
    let lines = text
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?;
    let pid = i64::from(victim.pid());
    let refreshes: Vec<_> = lines.iter().filter(|l| l["type"] == "refresh").collect();
    ensure!(
        refreshes.iter().any(|l| l["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["pid"] == pid && r["db"] == "victims"))),
        "no refresh line shows {pid}:\n{text}"
    );
    let actions: Vec<_> = lines.iter().filter(|l| l["type"] == "action").collect();
    ensure!(actions.len() == 1, "{text}");
    let action = actions[0];
    ensure!(action["signal"] == "terminate", "{action}");
    ensure!(action["role"] == roles::ADMIN, "{action}");
    ensure!(
        action["os_user"].as_str().is_some_and(|u| !u.is_empty()),
        "{action}"
    );
    ensure!(action["sessions"][0]["pid"] == pid, "{action}");
    ensure!(action["sessions"][0]["query"].is_string(), "{action}");
    ensure!(action["outcomes"][0]["pid"] == pid, "{action}");
    ensure!(action["outcomes"][0]["outcome"] == "terminated", "{action}");
    ensure!(!text.contains("password"), "{text}");
    Ok(())
}

/// `--columns`: an unknown name is one clear line and exit 2 (before any screen); a good
/// list shows only those columns, and `C` on pid shows every column again.
async fn chosen_columns_show_and_a_bad_list_is_exit_2(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"))
        .args(["top", "--columns", "pid,bogus"])
        .output()?;
    ensure!(bad.status.code() == Some(2), "{bad:?}");
    let said = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        said.contains("unknown column \"bogus\"") && said.contains("blocked-by"),
        "{said}"
    );
    ensure!(!said.contains("panicked"), "{said}");

    let tmux = start_top(&sb, "columns", "--columns pid,user,blocked-by,query").await?;
    let screen = tmux.wait_for("blocked by").await?;
    ensure!(
        !screen.contains("database") && !screen.contains("in state"),
        "{screen}"
    );
    tmux.keys(&["C"])?;
    tmux.wait_for("in state").await?;
    tmux.keys(&["q"])?;
    tmux.wait_for("PGKILL_TOP_EXIT=0").await?;
    Ok(())
}

/// Issue 15, every session kind: with `A`, a VACUUM (slowed down by its cost delay)
/// shows its `pg_stat_progress_vacuum` phase in the query column and its numbers in the
/// details, and (PostgreSQL 13+, where `leader_pid` exists) a parallel query's workers
/// are listed right under their leader, each saying whose worker it is.
async fn every_kind_shows_progress_and_workers_under_their_leader(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("kinds", Some(roles::PLAIN)).await?;
    let plain = sb.config("kinds", roles::PLAIN);
    let admin = sb.admin("kinds").await?;
    admin
        .batch_execute(
            "CREATE TABLE big (id int, pad text) WITH (autovacuum_enabled = false);
             INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g;
             ANALYZE big;
             GRANT SELECT ON big TO sandbox_plain;",
        )
        .await?;
    // Each page read sleeps 100 ms: the VACUUM scans the heap for minutes.
    let mut slow = sb.config("kinds", roles::ADMIN);
    slow.options("-c vacuum_cost_delay=100 -c vacuum_cost_limit=1");
    let vacuum = sim::running(&slow, "VACUUM big").await?;
    let mut parallel = plain.clone();
    parallel.options(
        "-c max_parallel_workers_per_gather=2 -c parallel_setup_cost=0 -c parallel_tuple_cost=0 -c min_parallel_table_scan_size=0",
    );
    let leader = sim::running(
        &parallel,
        "SELECT count(*) FROM big WHERE pg_sleep(0.2) IS NOT NULL",
    )
    .await?;
    let tmux = start_top(&sb, "kinds", "-i 500ms").await?;
    let progress = "[VACUUM scanning heap".to_owned();
    tmux.keys(&["A"])?;
    tmux.wait_for(&progress).await?;
    let vacuum_row = tmux
        .screen()?
        .lines()
        .find(|l| l.contains(&progress))
        .map(str::to_owned)
        .unwrap_or_default();
    ensure!(
        vacuum_row.contains(&vacuum.pid().to_string()) && vacuum_row.contains("VACUUM big"),
        "{vacuum_row}"
    );
    if pg.version.major >= 13 {
        // Youngest first: unless grouped, the workers (started after their leader)
        // would come before it.
        tmux.keys(&["S"])?;
        let worker = format!("└─ worker of {}: ", leader.pid());
        // Both workers, each on the line after the leader's or after the other worker's.
        let grouped = |screen: &str| -> std::result::Result<(), String> {
            let lines: Vec<&str> = screen.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.contains(&format!(" {} ", leader.pid())) && !l.contains(&worker))
                .ok_or_else(|| format!("no leader row:\n{screen}"))?;
            let under = lines[at + 1..]
                .iter()
                .take_while(|l| l.contains(&worker))
                .count();
            if under == 2 {
                Ok(())
            } else {
                Err(format!("{under} worker(s) under the leader:\n{screen}"))
            }
        };
        let began = std::time::Instant::now();
        loop {
            let screen = tmux.screen()?;
            match grouped(&screen) {
                Ok(()) => break,
                Err(e) if began.elapsed() > Duration::from_secs(10) => anyhow::bail!(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    } else {
        // Before 13 the server does not say whose worker a worker is: they are listed
        // as backends of their own.
        tmux.wait_for(if pg.version.major >= 11 {
            "parallel worker"
        } else {
            "background worker"
        })
        .await?;
    }
    // The details of the VACUUM: its progress with the numbers behind the percentage.
    tmux.keys(&["/", &format!("pid:{}", vacuum.pid()), "Enter"])?;
    tmux.wait_for("shown 1/").await?;
    tmux.keys(&["Enter"])?;
    let details = tmux.wait_for("progress     VACUUM scanning heap").await?;
    ensure!(
        details
            .lines()
            .any(|l| l.contains("progress     VACUUM scanning heap") && l.contains(" of ")),
        "{details}"
    );
    tmux.keys(&["Escape", "q"])?;
    drop(leader);
    drop(vacuum);
    Ok(())
}

/// Issue 15, the health header's replication line (read from `pg_stat_get_wal_senders()`
/// in the refresh's one statement): on a primary with a streaming standby it names the
/// standby, says it streams and shows its lag and the bytes it has yet to replay; on the
/// standby itself, none streams from there.
async fn the_health_header_shows_a_streaming_standby_and_its_lag(pg: Installation) -> Result<()> {
    let primary = Sandbox::start(&pg, &Options::default())?;
    let standby = primary.start_standby(&Options::default())?;
    let admin = primary.admin("postgres").await?;
    let began = std::time::Instant::now();
    let name: String = loop {
        if let Some(row) = admin
            .query_opt(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await?
        {
            break row.get(0);
        }
        ensure!(
            began.elapsed() < Duration::from_secs(20),
            "the standby does not stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tmux = start_top(&primary, "standby-primary", "-i 500ms").await?;
    let screen = tmux.wait_for(&format!("standbys: {name} ")).await?;
    let line = screen
        .lines()
        .find(|l| l.contains("standbys: "))
        .unwrap_or_default()
        .to_owned();
    ensure!(
        line.contains(" streaming lag ") && line.contains(" behind)"),
        "{line}"
    );
    tmux.keys(&["q"])?;
    let tmux = start_top(&standby, "standby-standby", "-i 500ms").await?;
    tmux.wait_for("standbys: none streaming from here").await?;
    tmux.keys(&["q"])?;
    Ok(())
}

/// `pg` and the next versions of those selected (cycling), `n` servers in all.
fn mixed(pg: &Installation, n: usize) -> Result<Vec<Sandbox>> {
    let (selected, _) = pgkill_sandbox::matrix::selected_versions();
    let first = selected
        .iter()
        .position(|i| i.version.major == pg.version.major)
        .unwrap_or(0);
    selected
        .iter()
        .cycle()
        .skip(first)
        .take(n)
        .map(|i| Sandbox::start(i, &Options::default()).map_err(Into::into))
        .collect()
}

/// Issue 14, `top` across targets: three servers of mixed versions in one table, each
/// session under its server's name (`host:port`); `/target:NAME` shows that server's
/// alone; terminating the session selected there ends exactly it (57P01) while the
/// same role's sessions of the same database on the other servers live on; a server
/// that stops is said to be disconnected while the others keep refreshing.
async fn three_targets_merge_filter_by_target_and_terminate_on_one(pg: Installation) -> Result<()> {
    let mut servers = mixed(&pg, 3)?;
    let mut victims = Vec::new();
    for sb in &servers {
        sb.create_database("app", None).await?;
        victims.push(sim::idle(&sb.config("app", roles::PLAIN)).await?);
    }
    let names: Vec<String> = servers
        .iter()
        .map(|sb| format!("{}:{}", sb.host(), sb.port()))
        .collect();
    let targets: String = servers
        .iter()
        .map(|sb| format!("--target '{}' ", support::conninfo(sb)))
        .collect();
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD -u PGPASSFILE TERM=xterm {} {targets} top -i 500ms; echo PGKILL_TOP_EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_pgkill"),
    );
    let tmux = tmux_running(&format!("fleet-{}", pg.version.major), &line)?;
    tmux.wait_for("3 targets ·").await?;
    tmux.keys(&["/", "db:app", "Enter"])?;
    // Every server's session under its own name, on one frame.
    let began = std::time::Instant::now();
    loop {
        let screen = tmux.screen()?;
        let all = screen.contains("shown 3/")
            && names
                .iter()
                .zip(&victims)
                .all(|(n, v)| row(&screen, n, v.pid()));
        if all {
            ensure!(
                screen.contains("target") && !screen.contains("disconnected"),
                "{screen}"
            );
            break;
        }
        ensure!(
            began.elapsed() < Duration::from_secs(20),
            "not every server's session shows under its name:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One server's rows only.
    tmux.keys(&["/", &format!(" target:{}", names[1]), "Enter"])?;
    let screen = tmux.wait_for("shown 1/").await?;
    ensure!(row(&screen, &names[1], victims[1].pid()), "{screen}");
    for i in [0, 2] {
        ensure!(
            !row(&screen, &names[i], victims[i].pid()),
            "{} shows:\n{screen}",
            names[i]
        );
    }
    tmux.keys(&[" ", "k"])?;
    let dialog = tmux.wait_for("Terminate 1 session(s)?").await?;
    ensure!(
        dialog.contains(&format!("{}: {} ", names[1], victims[1].pid())),
        "the confirmation does not name the server and session:\n{dialog}"
    );
    tmux.keys(&["y"])?;
    let ended = victims[1]
        .wait_ended(Duration::from_secs(10))
        .await
        .ok_or_else(|| anyhow!("{} on {} survived", victims[1].pid(), names[1]))?;
    ensure!(ended.sqlstate.as_deref() == Some("57P01"), "{ended:?}");
    tmux.wait_for(&format!(
        "last action: {} {} terminated",
        names[1],
        victims[1].pid()
    ))
    .await?;
    for i in [0, 2] {
        ensure!(
            victims[i].is_connected(),
            "{} on {} was hit",
            victims[i].pid(),
            names[i]
        );
        let admin = servers[i].admin("postgres").await?;
        let alive: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND pid = $1",
                &[&victims[i].pid()],
            )
            .await?
            .get(0);
        ensure!(alive == 1, "{} is gone from {}", victims[i].pid(), names[i]);
    }
    // The third server stops: it is said to be disconnected, the first one's session
    // still shows and refreshes.
    drop(victims.pop());
    servers
        .pop()
        .ok_or_else(|| anyhow!("three servers"))?
        .stop();
    tmux.wait_for(&format!("{}: disconnected (retrying)", names[2]))
        .await?;
    tmux.keys(&["/", "C-u", "db:app", "Enter"])?;
    let screen = tmux.wait_for("shown 1/").await?;
    ensure!(row(&screen, &names[0], victims[0].pid()), "{screen}");
    let again = sim::idle(&servers[0].config("app", roles::PLAIN)).await?;
    let screen = tmux.wait_for("shown 2/").await?;
    ensure!(row(&screen, &names[0], again.pid()), "{screen}");
    quits(&tmux).await
}

/// `top` over several targets, refused before any screen (exit 2): with `--pgbouncer`
/// (a pooler stands in front of one server), and when no target can be reached at
/// start (each named), or the one given cannot; one that can be reached is enough
/// (see `a_target_down_at_start_...`).
async fn top_over_targets_refuses_pgbouncer_and_every_target_it_cannot_reach(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let good = support::conninfo(&sb);
    // Nothing listens on ports 1 and 2.
    let down = "host=127.0.0.1 port=1 user=nobody connect_timeout=2";
    let down2 = "host=127.0.0.1 port=2 user=nobody connect_timeout=2";
    let run = |targets: &[&str], extra: &[&str]| -> Result<(Option<i32>, String)> {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkill"));
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGKILL_PGBOUNCER",
        ] {
            cmd.env_remove(var);
        }
        for t in targets {
            cmd.args(["--target", t]);
        }
        let out = cmd
            .args(extra)
            .arg("top")
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (code, err) = run(&[&good, down], &["--pgbouncer", "host=127.0.0.1 port=2"])?;
    ensure!(
        code == Some(2) && err.contains("--pgbouncer"),
        "{code:?} {err}"
    );
    let (code, err) = run(&[down, down2], &[])?;
    ensure!(
        code == Some(2)
            && err.contains("no target could be connected to")
            && err.contains("target 127.0.0.1:1")
            && err.contains("target 127.0.0.1:2"),
        "{code:?} {err}"
    );
    let (code, err) = run(&[down], &[])?;
    ensure!(
        code == Some(2) && err.contains("target 127.0.0.1:1"),
        "{code:?} {err}"
    );
    // One reachable target is enough to start: here the terminal is what is missing.
    let (code, err) = run(&[&good, down], &[])?;
    ensure!(
        code == Some(2) && err.contains("needs a terminal") && !err.contains("127.0.0.1:1"),
        "{code:?} {err}"
    );
    ensure!(
        !err.contains(&sb.password(roles::ADMIN).unwrap_or_default()),
        "{err}"
    );
    Ok(())
}

/// `pgkill ARGS top ARGS` with no libpq environment, in a tmux of the test's own.
fn fleet_top(name: &str, args: &str, top_args: &str) -> Result<Tmux> {
    let line = format!(
        "env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD -u PGPASSFILE TERM=xterm {} {args} top {top_args}; echo PGKILL_TOP_EXIT=$?; sleep 60",
        env!("CARGO_BIN_EXE_pgkill"),
    );
    tmux_running(name, &line)
}

/// Waits (up to `secs`) until `ok` holds for one whole screen; returns it.
async fn screen_until(tmux: &Tmux, secs: u64, ok: impl Fn(&str) -> bool) -> Result<String> {
    let began = std::time::Instant::now();
    loop {
        let screen = tmux.screen()?;
        if ok(&screen) {
            return Ok(screen);
        }
        ensure!(
            began.elapsed() < Duration::from_secs(secs),
            "the screen never got there:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `q` leaves `top` (started by [`fleet_top`] or [`tmux_running`]) with exit 0.
async fn quits(tmux: &Tmux) -> Result<()> {
    tmux.keys(&["q"])?;
    let screen = tmux.wait_for("PGKILL_TOP_EXIT=").await?;
    ensure!(screen.contains("PGKILL_TOP_EXIT=0"), "{screen}");
    Ok(())
}

/// Whether a line of `screen` shows server `name`'s session `pid`.
fn row(screen: &str, name: &str, pid: i32) -> bool {
    screen
        .lines()
        .any(|l| l.contains(name) && l.contains(&format!(" {pid} ")))
}

/// Issue 14, limit 1: `--targets FILE` with three servers, the third not running when
/// `top` starts: `top` starts anyway, the two others' sessions show while the third is
/// `disconnected (retrying)`; once it is started its session appears in the same table.
/// (It is reached over a Unix socket directory of the test's own, where its socket is
/// linked once it runs, with peer authentication: no password to set in a race with
/// the reconnects.)
async fn a_target_down_at_start_shows_disconnected_then_its_sessions_when_it_starts(
    pg: Installation,
) -> Result<()> {
    let servers = mixed(&pg, 2)?;
    let mut victims = Vec::new();
    for sb in &servers {
        sb.create_database("app", None).await?;
        victims.push(sim::idle(&sb.config("app", roles::PLAIN)).await?);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let sockets = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("targets.toml");
    let names = ["primary-eu", "primary-us", "late-starter"];
    let conninfos = [
        support::conninfo(&servers[0]),
        support::conninfo(&servers[1]),
        format!(
            "host={} port={port} user={} dbname=postgres connect_timeout=2",
            sockets.path().display(),
            roles::ADMIN
        ),
    ];
    let text: String = names
        .iter()
        .zip(&conninfos)
        .map(|(n, c)| format!("[[target]]\nname = \"{n}\"\nconninfo = \"{c}\"\n\n"))
        .collect();
    std::fs::write(&file, text)?;
    let tmux = fleet_top(
        &format!("late-{}", pg.version.major),
        &format!("--targets {}", file.display()),
        "-i 500ms",
    )?;
    tmux.wait_for("late-starter: disconnected (retrying)")
        .await?;
    tmux.keys(&["/", "db:app", "Enter"])?;
    let screen = screen_until(&tmux, 20, |s| {
        s.contains("shown 2/")
            && row(s, names[0], victims[0].pid())
            && row(s, names[1], victims[1].pid())
    })
    .await?;
    ensure!(
        screen.contains("late-starter: disconnected (retrying)"),
        "{screen}"
    );
    // Now it starts.
    let late = Sandbox::start(&pg, &Options::default().port(port))?;
    let socket = format!(".s.PGSQL.{port}");
    std::os::unix::fs::symlink(
        late.socket_dir().join(&socket),
        sockets.path().join(&socket),
    )?;
    late.create_database("app", None).await?;
    let third = sim::idle(&late.config("app", roles::PLAIN)).await?;
    // Its backoff is at most 30 s.
    let screen = screen_until(&tmux, 45, |s| {
        s.contains("shown 3/") && row(s, names[2], third.pid()) && !s.contains("disconnected")
    })
    .await?;
    ensure!(row(&screen, names[0], victims[0].pid()), "{screen}");
    quits(&tmux).await
}

/// Issue 14, limit 2 (and 5): a lock chain on the second of two servers: `b` shows it
/// under that server's name (a reader idle in transaction, the `ALTER TABLE` queued
/// behind it, a reader queued behind that); `k` on the root names the server in the
/// confirmation and terminates it there (57P01), and the chain proceeds: the waiters'
/// statements complete. `--record` writes each server's refreshes and the action with
/// its `target`.
async fn the_blocking_tree_over_two_targets_terminates_the_root_on_its_server(
    pg: Installation,
) -> Result<()> {
    let servers = mixed(&pg, 2)?;
    let calm = sim::idle(&servers[0].config("postgres", roles::PLAIN)).await?;
    let (reader, ddl, mut api) = lock_chain(&servers[1], 1).await?;
    let api = api.pop().ok_or_else(|| anyhow!("one reader"))?;
    let names: Vec<String> = servers
        .iter()
        .map(|sb| format!("{}:{}", sb.host(), sb.port()))
        .collect();
    let dir = tempfile::tempdir()?;
    let record = dir.path().join("top.jsonl");
    let targets: String = servers
        .iter()
        .map(|sb| format!("--target '{}' ", support::conninfo(sb)))
        .collect();
    let tmux = fleet_top(
        &format!("fleet-chain-{}", pg.version.major),
        &targets,
        &format!("-i 500ms --record {}", record.display()),
    )?;
    tmux.wait_for("2 targets ·").await?;
    tmux.wait_for(&format!(" {} ", calm.pid())).await?;
    tmux.keys(&["b"])?;
    let root = format!("> {}: {} {}", names[1], reader.pid(), roles::PLAIN);
    let tree = screen_until(&tmux, 15, |s| {
        s.contains(&root)
            && s.contains("blocks 2")
            && s.contains(&format!("└─ {} ", ddl.pid()))
            && s.contains(&format!("   └─ {} ", api.pid()))
    })
    .await?;
    ensure!(!tree.contains(&format!("{}: ", names[0])), "{tree}");
    tmux.keys(&["k"])?;
    let dialog = tmux.wait_for("Terminate 1 session(s)?").await?;
    ensure!(
        dialog.contains(&format!("{}: {} ", names[1], reader.pid())),
        "the confirmation does not name the server and session:\n{dialog}"
    );
    tmux.keys(&["y"])?;
    root_ended_and_chain_proceeded(&reader, &[&ddl, &api]).await?;
    ensure!(calm.is_connected(), "the other server's session was hit");
    tmux.wait_for(&format!(
        "last action: {} {} terminated",
        names[1],
        reader.pid()
    ))
    .await?;
    tmux.keys(&["b"])?;
    tmux.wait_for("No session is waiting").await?;
    // The first q leaves the tree, the second top.
    tmux.keys(&["q"])?;
    tmux.wait_for("target").await?;
    tmux.keys(&["q"])?;
    tmux.wait_for("PGKILL_TOP_EXIT=0").await?;
    // Every line of the record says its server.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&record)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    for name in &names {
        ensure!(
            lines.iter().any(|l| l["type"] == "refresh"
                && l["target"] == name.as_str()
                && l["rows"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["target"] == name.as_str()))),
            "no refresh of {name} in the record"
        );
    }
    let action = lines
        .iter()
        .find(|l| l["type"] == "action")
        .ok_or_else(|| anyhow!("no action recorded"))?;
    ensure!(
        action["target"] == names[1].as_str()
            && action["outcomes"][0]["pid"] == reader.pid()
            && action["outcomes"][0]["outcome"] == "terminated"
            && action["outcomes"][0]["target"] == names[1].as_str(),
        "{action}"
    );
    Ok(())
}

/// Issue 14, limit 3: the health header over two targets: a line over both (`health
/// of 2:`), then one line per server, named, with its own figures.
async fn the_health_header_over_two_targets_names_each(pg: Installation) -> Result<()> {
    let servers = mixed(&pg, 2)?;
    let names: Vec<String> = servers
        .iter()
        .map(|sb| format!("{}:{}", sb.host(), sb.port()))
        .collect();
    let targets: String = servers
        .iter()
        .map(|sb| format!("--target '{}' ", support::conninfo(sb)))
        .collect();
    let tmux = fleet_top(
        &format!("fleet-health-{}", pg.version.major),
        &targets,
        "-i 500ms",
    )?;
    let screen = screen_until(&tmux, 20, |s| {
        s.contains("health of 2: xact/s ")
            && !s.contains("xact/s …")
            && names.iter().all(|n| {
                s.lines().any(|l| {
                    l.starts_with(n.as_str())
                        && l.contains("xact/s ")
                        && l.contains(" · oldest xact ")
                })
            })
    })
    .await?;
    // Rates come from each server's two readings (not the "…" of the first).
    ensure!(screen.contains("hit "), "{screen}");
    tmux.keys(&["H"])?;
    screen_until(&tmux, 10, |s| !s.contains("health of 2")).await?;
    quits(&tmux).await
}

/// Issue 14, limit 1: a target whose login is refused at start (a wrong password,
/// 28P01) does not stop `top` over several targets: it is named with
/// `authentication failed`, the other's sessions show, and no other login is tried
/// with that password (the server logs one failure, seconds of refreshes later).
async fn a_target_refusing_the_login_at_start_is_shown_and_not_tried_again(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let victim = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let failed = || -> Result<usize> {
        Ok(std::fs::read_to_string(sb.log_file())?
            .matches(&format!(
                "password authentication failed for user \"{}\"",
                roles::ADMIN
            ))
            .count())
    };
    let before = failed()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("targets.toml");
    std::fs::write(
        &file,
        format!(
            "[[target]]\nname = \"good\"\nconninfo = \"{}\"\n\n[[target]]\nname = \"wrong-password\"\nconninfo = \"host={} port={} user={} password=not-it dbname=postgres\"\n",
            support::conninfo(&sb),
            sb.host(),
            sb.port(),
            roles::ADMIN
        ),
    )?;
    let tmux = fleet_top(
        &format!("refused-{}", pg.version.major),
        &format!("--targets {}", file.display()),
        "-i 200ms",
    )?;
    screen_until(&tmux, 20, |s| {
        s.contains("wrong-password: authentication failed (restart top)")
            && row(s, "good", victim.pid())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let screen = tmux.screen()?;
    ensure!(
        screen.contains("wrong-password: authentication failed (restart top)")
            && !screen.contains("Password for user"),
        "{screen}"
    );
    let logins = failed()? - before;
    ensure!(
        logins == 1,
        "{logins} failed logins with the wrong password"
    );
    quits(&tmux).await
}

//! Listing and signalling sessions against real servers, on every PostgreSQL version:
//! the right sessions end (and their clients see 57P01 / 57014), nothing else is touched,
//! refusals are reported with their reason, and a stale plan never hits a reused pid.

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use pgkill_core::plan::{exit_code, OutcomeKind};
use pgkill_core::planner::Signal;
use pgkill_core::{Filter, State};
use pgkill_pg::sessions::{self, Capabilities};
use pgkill_sandbox::sim::{self, Statement};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};
use tokio_postgres::Client;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        kill_db_ends_only_that_database,
        cancel_ends_statement_and_keeps_session,
        signaller_cannot_touch_superuser_sessions,
        superusers_protected_unless_included,
        stale_plan_never_hits_reused_pid,
        killing_blocking_root_releases_waiters,
        plain_role_lists_others_as_unknown,
        filters_select_exactly,
        top_keeps_its_refresh_prepared_across_reconnects,
    ]);
}

const WAIT: Duration = Duration::from_secs(10);

/// pgkill's own connection as `role` (application_name pgkill, as the CLI sets it).
async fn pgkill_as(sb: &Sandbox, role: &str) -> Result<(Client, Capabilities)> {
    let mut config = sb.config("postgres", role);
    config.application_name("pgkill");
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let caps = sessions::capabilities(&client).await?;
    Ok((client, caps))
}

async fn present(admin: &Client, pid: i32) -> Result<bool> {
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await?
        .get(0);
    Ok(n == 1)
}

async fn kill(
    client: &Client,
    caps: &Capabilities,
    filter: &Filter,
    signal: Signal,
) -> Result<Vec<pgkill_core::plan::Outcome>> {
    let plan = sessions::plan(client, caps, filter, signal).await?;
    Ok(sessions::execute(client, caps, filter, &plan, Duration::from_secs(5)).await?)
}

async fn kill_db_ends_only_that_database(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("target", None).await?;
    sb.create_database("other", None).await?;
    {
        // Set up as a superuser, then leave: a superuser session would be a (protected) target.
        let t = sb.admin("target").await?;
        t.batch_execute(&format!(
            "CREATE TABLE t (v text); GRANT ALL ON t TO {}",
            roles::PLAIN
        ))
        .await?;
    }
    let admin = sb.admin("postgres").await?;
    let began = std::time::Instant::now();
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'target'",
            &[],
        )
        .await?
        .get::<_, i64>(0)
        > 0
    {
        ensure!(began.elapsed() < WAIT, "set-up session did not leave");
    }
    let cfg = sb.config("target", roles::PLAIN);
    let idle = sim::idle(&cfg).await?;
    let in_tx =
        sim::idle_in_transaction(&cfg, Some("INSERT INTO t VALUES ('uncommitted')")).await?;
    let active = sim::active(&cfg, Duration::from_secs(60)).await?;
    let bystander = sim::idle(&sb.config("other", roles::PLAIN)).await?;
    let background: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    ensure!(!background.is_empty());

    let (me, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    let filter = Filter {
        databases: vec!["target".into()],
        ..Filter::default()
    };
    let outcomes = kill(&me, &caps, &filter, Signal::Terminate).await?;
    let mut pids: Vec<i32> = outcomes.iter().map(|o| o.pid).collect();
    pids.sort_unstable();
    let mut want = vec![idle.pid(), in_tx.pid(), active.pid()];
    want.sort_unstable();
    ensure!(pids == want, "targets {pids:?}, expected {want:?}");
    ensure!(
        outcomes
            .iter()
            .all(|o| o.outcome == OutcomeKind::Terminated),
        "{outcomes:?}"
    );
    ensure!(exit_code(&outcomes) == 0);
    for s in [&idle, &in_tx, &active] {
        let e = s
            .wait_ended(WAIT)
            .await
            .ok_or_else(|| anyhow!("{} did not end", s.pid()))?;
        ensure!(
            e.sqlstate.as_deref() == Some("57P01"),
            "{} saw {e:?}",
            s.kind()
        );
        ensure!(!present(&admin, s.pid()).await?, "{} still listed", s.pid());
    }
    // Nothing left: a second run matches nothing (exit 1).
    let again = kill(&me, &caps, &filter, Signal::Terminate).await?;
    ensure!(again.is_empty() && exit_code(&again) == 1, "{again:?}");
    let rows: i64 = sb
        .admin("target")
        .await?
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    ensure!(rows == 0, "the rolled-back insert is visible");
    ensure!(bystander.is_connected() && present(&admin, bystander.pid()).await?);
    ensure!(
        me.simple_query("SELECT 1").await.is_ok(),
        "pgkill's own connection was hit"
    );
    for pid in background {
        ensure!(
            present(&admin, pid).await?,
            "background process {pid} was hit"
        );
    }
    Ok(())
}

async fn cancel_ends_statement_and_keeps_session(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let active = sim::active(
        &sb.config("postgres", roles::PLAIN),
        Duration::from_secs(60),
    )
    .await?;
    let idle = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let (me, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    let filter = Filter {
        states: vec![State::Active],
        users: vec![roles::PLAIN.into()],
        ..Filter::default()
    };
    let outcomes = kill(&me, &caps, &filter, Signal::Cancel).await?;
    ensure!(
        outcomes.len() == 1 && outcomes[0].pid == active.pid(),
        "{outcomes:?}"
    );
    ensure!(outcomes[0].outcome == OutcomeKind::Cancelled);
    match active.wait_statement(WAIT).await {
        Statement::Failed(e) => ensure!(e.sqlstate.as_deref() == Some("57014"), "{e:?}"),
        other => return Err(anyhow!("statement: {other:?}")),
    }
    ensure!(active.is_connected() && idle.is_connected());
    Ok(())
}

async fn signaller_cannot_touch_superuser_sessions(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("mixed", None).await?;
    let plain = sim::idle(&sb.config("mixed", roles::PLAIN)).await?;
    let owner = sim::idle(&sb.config("mixed", roles::OWNER)).await?;
    let su = sim::idle(&sb.config("mixed", roles::SUPERUSER)).await?;
    let (me, caps) = pgkill_as(&sb, roles::SIGNALLER).await?;
    ensure!(!caps.caller.superuser && caps.caller.signal_backend);
    let filter = Filter {
        databases: vec!["mixed".into()],
        include_superusers: true,
        ..Filter::default()
    };
    let outcomes = kill(&me, &caps, &filter, Signal::Terminate).await?;
    ensure!(outcomes.len() == 3, "{outcomes:?}");
    for o in &outcomes {
        if o.pid == su.pid() {
            ensure!(o.outcome == OutcomeKind::NotPermitted, "{o:?}");
            ensure!(o.detail.contains("only a superuser"), "{}", o.detail);
        } else {
            ensure!(o.outcome == OutcomeKind::Terminated, "{o:?}");
        }
    }
    ensure!(exit_code(&outcomes) == 3);
    for s in [&plain, &owner] {
        ensure!(s.wait_ended(WAIT).await.and_then(|e| e.sqlstate).as_deref() == Some("57P01"));
    }
    ensure!(su.is_connected());
    Ok(())
}

async fn superusers_protected_unless_included(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let su = sim::idle(&sb.config("postgres", roles::SUPERUSER)).await?;
    let (me, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    let filter = Filter {
        users: vec![roles::SUPERUSER.into()],
        ..Filter::default()
    };
    let outcomes = kill(&me, &caps, &filter, Signal::Terminate).await?;
    ensure!(
        outcomes.len() == 1 && outcomes[0].outcome == OutcomeKind::NotPermitted,
        "{outcomes:?}"
    );
    ensure!(outcomes[0].detail.contains("--include-superusers"));
    ensure!(su.is_connected());
    let included = Filter {
        include_superusers: true,
        ..filter
    };
    let outcomes = kill(&me, &caps, &included, Signal::Terminate).await?;
    ensure!(
        outcomes.len() == 1 && outcomes[0].outcome == OutcomeKind::Terminated,
        "{outcomes:?}"
    );
    ensure!(
        su.wait_ended(WAIT)
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01")
    );
    Ok(())
}

async fn stale_plan_never_hits_reused_pid(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let mut cfg = sb.config("postgres", roles::PLAIN);
    cfg.application_name("victim");
    let victim = sim::idle(&cfg).await?;
    let (me, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    let filter = Filter {
        apps: vec!["victim".into()],
        ..Filter::default()
    };
    let plan = sessions::plan(&me, &caps, &filter, Signal::Terminate).await?;
    ensure!(plan.targets.len() == 1);
    // The target ends by itself; new sessions arrive, with the same application name, and
    // (as far as the kernel allows) the same pid: the stale plan must hit none of them.
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&victim.pid()])
        .await?;
    victim.wait_ended(WAIT).await;
    let mut newcomers = Vec::new();
    for _ in 0..5 {
        newcomers.push(sim::idle(&cfg).await?);
    }
    let outcomes = sessions::execute(&me, &caps, &filter, &plan, Duration::from_secs(5)).await?;
    ensure!(
        outcomes.len() == 1 && outcomes[0].outcome == OutcomeKind::AlreadyGone,
        "{outcomes:?}"
    );
    for n in &newcomers {
        ensure!(n.is_connected(), "newcomer {} was hit", n.pid());
    }
    // The kernel rarely hands out the same pid again within a test, so make the reuse
    // happen: the stale plan's target now carries a live newcomer's pid (with the old
    // session's backend start, as a plan made before the reuse would).
    let mut reused = plan.clone();
    let newcomer = &newcomers[0];
    reused.targets[0].session.pid = newcomer.pid();
    let outcomes = sessions::execute(&me, &caps, &filter, &reused, Duration::from_secs(5)).await?;
    ensure!(
        outcomes.len() == 1 && outcomes[0].outcome == OutcomeKind::AlreadyGone,
        "{outcomes:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        newcomer.is_connected(),
        "the session that reused the pid was hit"
    );
    Ok(())
}

async fn killing_blocking_root_releases_waiters(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE hot (id int); GRANT ALL ON hot TO {}",
            roles::PLAIN
        ))
        .await?;
    let chain = sim::lock_chain(&sb.config("postgres", roles::PLAIN), "hot", 3).await?;
    let bystander = sim::idle_in_transaction(&sb.config("postgres", roles::PLAIN), None).await?;
    let (me, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    let filter = Filter {
        blocking: true,
        ..Filter::default()
    };
    let outcomes = kill(&me, &caps, &filter, Signal::Terminate).await?;
    ensure!(
        outcomes.len() == 1 && outcomes[0].pid == chain.holder.pid(),
        "{outcomes:?}"
    );
    for w in &chain.waiters {
        ensure!(
            w.wait_statement(WAIT).await == Statement::Completed,
            "waiter {} still blocked",
            w.pid()
        );
    }
    ensure!(bystander.is_connected());
    Ok(())
}

async fn plain_role_lists_others_as_unknown(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let other = sim::active(
        &sb.config("postgres", roles::OWNER),
        Duration::from_secs(60),
    )
    .await?;
    let mine = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let (me, caps) = pgkill_as(&sb, roles::PLAIN).await?;
    let list = sessions::list(&me, &caps, &Filter::default()).await?;
    let o = list
        .iter()
        .find(|s| s.pid == other.pid())
        .ok_or_else(|| anyhow!("other role's session not listed"))?;
    ensure!(o.user.as_deref() == Some(roles::OWNER) && o.database.as_deref() == Some("postgres"));
    ensure!(
        o.state.is_none() && o.visible_query().is_none() && o.client_addr.is_none(),
        "{o:?}"
    );
    ensure!(!o.can_signal);
    let m = list
        .iter()
        .find(|s| s.pid == mine.pid())
        .ok_or_else(|| anyhow!("own role's session not listed"))?;
    ensure!(m.state.as_deref() == Some("idle") && m.can_signal);
    // Killing everything as a plain role: its own role's session goes, the other is refused.
    let outcomes = kill(&me, &caps, &Filter::default(), Signal::Terminate).await?;
    let of = |pid| outcomes.iter().find(|o| o.pid == pid).map(|o| o.outcome);
    ensure!(
        of(other.pid()) == Some(OutcomeKind::NotPermitted),
        "{outcomes:?}"
    );
    ensure!(
        of(mine.pid()) == Some(OutcomeKind::Terminated),
        "{outcomes:?}"
    );
    ensure!(other.is_connected());
    Ok(())
}

async fn filters_select_exactly(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let with_app = |role: &str, app: &str| {
        let mut c = sb.config("postgres", role);
        c.application_name(app);
        c
    };
    let web1 = sim::idle(&with_app(roles::PLAIN, "web-1")).await?;
    let web2 = sim::idle_in_transaction(&with_app(roles::PLAIN, "web-2"), None).await?;
    let worker = sim::active(&with_app(roles::OWNER, "worker"), Duration::from_secs(60)).await?;
    let mut local_cfg = sb.socket_config("postgres", roles::OWNER);
    local_cfg.application_name("local-tool");
    let local = sim::idle(&local_cfg).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = sim::idle(&with_app(roles::PLAIN, "web-3")).await?;
    let (me, caps) = pgkill_as(&sb, roles::ADMIN).await?;

    let pids = |f: Filter| {
        let me = &me;
        let caps = &caps;
        async move {
            let mut p: Vec<i32> = sessions::list(me, caps, &f)
                .await?
                .iter()
                .map(|s| s.pid)
                .collect();
            p.sort_unstable();
            anyhow::Ok(p)
        }
    };
    let sorted = |mut v: Vec<i32>| {
        v.sort_unstable();
        v
    };
    let all = sorted(vec![
        web1.pid(),
        web2.pid(),
        worker.pid(),
        local.pid(),
        fresh.pid(),
    ]);
    ensure!(pids(Filter::default()).await? == all);
    ensure!(
        pids(Filter {
            users: vec![roles::OWNER.into()],
            ..Filter::default()
        })
        .await?
            == sorted(vec![worker.pid(), local.pid()])
    );
    ensure!(
        pids(Filter {
            apps: vec!["web-*".into()],
            ..Filter::default()
        })
        .await?
            == sorted(vec![web1.pid(), web2.pid(), fresh.pid()])
    );
    ensure!(
        pids(Filter {
            apps: vec!["web-?".into(), "work*".into()],
            users: vec![roles::OWNER.into()],
            ..Filter::default()
        })
        .await?
            == vec![worker.pid()]
    );
    ensure!(
        pids(Filter {
            states: vec![State::IdleInTransaction],
            ..Filter::default()
        })
        .await?
            == vec![web2.pid()]
    );
    ensure!(
        pids(Filter {
            states: vec![State::IdleInTransaction, State::Active],
            ..Filter::default()
        })
        .await?
            == sorted(vec![web2.pid(), worker.pid()])
    );
    ensure!(
        pids(Filter {
            clients: vec!["local".parse()?],
            ..Filter::default()
        })
        .await?
            == vec![local.pid()]
    );
    ensure!(
        pids(Filter {
            clients: vec!["127.0.0.0/8".parse()?],
            ..Filter::default()
        })
        .await?
            == sorted(vec![web1.pid(), web2.pid(), worker.pid(), fresh.pid()])
    );
    ensure!(pids(Filter {
        clients: vec!["10.0.0.0/8".parse()?],
        ..Filter::default()
    })
    .await?
    .is_empty());
    ensure!(
        pids(Filter {
            pids: vec![web1.pid(), 1],
            ..Filter::default()
        })
        .await?
            == vec![web1.pid()]
    );
    ensure!(
        pids(Filter {
            backend_older: Some(Duration::from_secs(1)),
            ..Filter::default()
        })
        .await?
            == sorted(vec![web1.pid(), web2.pid(), worker.pid(), local.pid()])
    );
    ensure!(
        pids(Filter {
            idle_for: Some(Duration::from_secs(1)),
            ..Filter::default()
        })
        .await?
            == sorted(vec![web1.pid(), web2.pid(), local.pid()])
    );
    ensure!(
        pids(Filter {
            xact_older: Some(Duration::from_secs(1)),
            ..Filter::default()
        })
        .await?
            == sorted(vec![web2.pid(), worker.pid()])
    );
    ensure!(
        pids(Filter {
            query_older: Some(Duration::from_secs(1)),
            ..Filter::default()
        })
        .await?
            == vec![worker.pid()]
    );
    ensure!(
        pids(Filter {
            queries: vec!["pg_sleep".into()],
            ..Filter::default()
        })
        .await?
            == vec![worker.pid()]
    );
    ensure!(
        pids(Filter {
            newest: Some(1),
            ..Filter::default()
        })
        .await?
            == vec![fresh.pid()]
    );
    ensure!(
        pids(Filter {
            oldest: Some(2),
            ..Filter::default()
        })
        .await?
            == sorted(vec![web1.pid(), web2.pid()])
    );
    ensure!(
        pids(Filter {
            apps: vec!["web-*".into()],
            newest: Some(2),
            ..Filter::default()
        })
        .await?
            == sorted(vec![web2.pid(), fresh.pid()])
    );
    Ok(())
}

/// How many statements of `top`'s refresh are prepared on `client`'s connection.
async fn refreshes_prepared(client: &Client) -> Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE statement LIKE 'WITH s AS (%'",
            &[],
        )
        .await?
        .get(0))
}

/// `top`'s refresh is prepared once per connection and run again from there; kept
/// across a reconnect (a statement the new connection does not know), it is prepared
/// on the new one and the refresh still lists the sessions; another filter is another
/// statement, and the one before is let go.
async fn top_keeps_its_refresh_prepared_across_reconnects(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let idle = sim::idle(&sb.config("postgres", roles::PLAIN)).await?;
    let kept = pgkill_pg::exec::Prepared::default();
    let every = Filter::default();
    let (first, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    for _ in 0..3 {
        let r = pgkill_pg::top::refresh(&first, &kept, &caps, &every, true).await?;
        ensure!(
            r.sessions.iter().any(|s| s.pid == idle.pid()),
            "the idle session is listed"
        );
    }
    ensure!(
        refreshes_prepared(&first).await? == 1,
        "three refreshes, one prepared statement"
    );
    let (second, caps) = pgkill_as(&sb, roles::ADMIN).await?;
    let r = pgkill_pg::top::refresh(&second, &kept, &caps, &every, true).await?;
    ensure!(
        r.sessions.iter().any(|s| s.pid == idle.pid()),
        "after a reconnect the refresh still lists the idle session"
    );
    ensure!(
        refreshes_prepared(&second).await? == 1,
        "prepared on the new connection"
    );
    let plain = Filter {
        users: vec![roles::PLAIN.to_owned()],
        ..Filter::default()
    };
    let r = pgkill_pg::top::refresh(&second, &kept, &caps, &plain, false).await?;
    ensure!(
        r.sessions
            .iter()
            .all(|s| s.user.as_deref() == Some(roles::PLAIN))
            && r.sessions.iter().any(|s| s.pid == idle.pid()),
        "the new filter's statement lists only {}'s sessions",
        roles::PLAIN
    );
    // The statement before is closed by the time the server answers the next one.
    ensure!(
        refreshes_prepared(&second).await? == 1,
        "the statement of the filter before was let go"
    );
    Ok(())
}

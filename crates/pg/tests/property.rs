//! Property test on real servers, every PostgreSQL version: for random sets of sessions
//! and random filter combinations, `list` returns and `kill` terminates exactly the
//! sessions that an independent evaluation in this test says match.
//!
//! The random seed is printed on failure; set `PGKILL_PROPTEST_SEED` to replay it.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgkill_core::plan::OutcomeKind;
use pgkill_core::planner::Signal;
use pgkill_core::{ClientMatch, Filter, State};
use pgkill_pg::sessions;
use pgkill_sandbox::sim::{self, Session};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio_postgres::Client;

fn main() {
    pgkill_sandbox::matrix::main(cases![random_filters_select_exactly_the_matching_sessions]);
}

const DATABASES: [&str; 2] = ["pa", "pb"];
/// Roles and applications of the random sessions; the last entry of each is the test's
/// own superuser connection (database `postgres`, no application name), which is a
/// client session like the others and is part of the evaluation.
const USERS: [&str; 3] = [roles::PLAIN, roles::OWNER, roles::ADMIN];
const APPS: [&str; 5] = ["web-1", "web-2", "job", "psql", ""];
/// The admin connection as a spec (database index 2 is `postgres`, never filtered on).
const ADMIN_SPEC: Spec = Spec {
    db: 2,
    user: 2,
    app: 4,
    kind: 0,
    local: false,
};
const GLOBS: [&str; 5] = ["web-*", "job", "w?b-1", "*", "ps*l"];

/// What the test asks for when it opens a session; the independent truth.
#[derive(Debug, Clone)]
struct Spec {
    db: usize,
    user: usize,
    app: usize,
    /// 0 idle, 1 idle in transaction, 2 active.
    kind: usize,
    local: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0..2usize, 0..2usize, 0..4usize, 0..3usize, any::<bool>()).prop_map(
        |(db, user, app, kind, local)| Spec {
            db,
            user,
            app,
            kind,
            local,
        },
    )
}

/// A random filter over the dimensions the specs vary in.
#[derive(Debug, Clone)]
struct Pick {
    dbs: Vec<usize>,
    users: Vec<usize>,
    globs: Vec<usize>,
    states: Vec<usize>,
    clients: Vec<usize>, // 0 local, 1 127.0.0.0/8, 2 10.0.0.0/8
    /// `--exclude-db/-user/-app/-client`, of the same values (an exclusion wins).
    excluded: (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>),
    newest: Option<u32>,
    oldest: Option<u32>,
}

fn pick() -> impl Strategy<Value = Pick> {
    (
        prop::collection::vec(0..2usize, 0..=2),
        prop::collection::vec(0..2usize, 0..=2),
        prop::collection::vec(0..5usize, 0..=2),
        prop::collection::vec(0..3usize, 0..=2),
        prop::collection::vec(0..3usize, 0..=2),
        prop::option::weighted(0.2, 1..4u32),
        prop::option::weighted(0.2, 1..4u32),
        (
            prop::collection::vec(0..2usize, 0..=1),
            prop::collection::vec(0..2usize, 0..=1),
            prop::collection::vec(0..5usize, 0..=1),
            prop::collection::vec(0..3usize, 0..=1),
        ),
    )
        .prop_map(
            |(dbs, users, globs, states, clients, newest, oldest, excluded)| Pick {
                dbs,
                users,
                globs,
                states,
                clients,
                excluded,
                // The CLI does not allow both.
                oldest: if newest.is_some() { None } else { oldest },
                newest,
            },
        )
}

impl Pick {
    fn filter(&self) -> Result<Filter> {
        let networks = |list: &[usize]| {
            list.iter()
                .map(|c| ["local", "127.0.0.0/8", "10.0.0.0/8"][*c].parse::<ClientMatch>())
                .collect::<Result<Vec<_>, _>>()
        };
        let clients = networks(&self.clients)?;
        let (ex_dbs, ex_users, ex_globs, ex_clients) = &self.excluded;
        Ok(Filter {
            databases: self.dbs.iter().map(|d| DATABASES[*d].to_owned()).collect(),
            users: self.users.iter().map(|u| USERS[*u].to_owned()).collect(),
            apps: self.globs.iter().map(|g| GLOBS[*g].to_owned()).collect(),
            states: self
                .states
                .iter()
                .map(|s| [State::Idle, State::IdleInTransaction, State::Active][*s])
                .collect(),
            clients,
            exclude_databases: ex_dbs.iter().map(|d| DATABASES[*d].to_owned()).collect(),
            exclude_users: ex_users.iter().map(|u| USERS[*u].to_owned()).collect(),
            exclude_apps: ex_globs.iter().map(|g| GLOBS[*g].to_owned()).collect(),
            exclude_clients: networks(ex_clients)?,
            newest: self.newest,
            oldest: self.oldest,
            ..Filter::default()
        })
    }

    /// The independent evaluation: which of `specs` (in creation order) match.
    fn expected(&self, specs: &[Spec]) -> Vec<usize> {
        let glob = |g: &str, app: &str| match g {
            "web-*" => app.starts_with("web-"),
            "job" => app == "job",
            "w?b-1" => app == "web-1",
            "*" => true, // also the empty name
            "ps*l" => app == "psql",
            _ => false,
        };
        let client = |c: &usize, s: &Spec| match c {
            0 => s.local,
            1 => !s.local,
            _ => false,
        };
        let (ex_dbs, ex_users, ex_globs, ex_clients) = &self.excluded;
        let matching: Vec<usize> = (0..specs.len())
            .filter(|&i| {
                let s = &specs[i];
                let excluded = ex_dbs.contains(&s.db)
                    || ex_users.contains(&s.user)
                    || ex_globs.iter().any(|g| glob(GLOBS[*g], APPS[s.app]))
                    || ex_clients.iter().any(|c| client(c, s));
                (self.dbs.is_empty() || self.dbs.contains(&s.db))
                    && (self.users.is_empty() || self.users.contains(&s.user))
                    && (self.globs.is_empty()
                        || self.globs.iter().any(|g| glob(GLOBS[*g], APPS[s.app])))
                    && (self.states.is_empty() || self.states.contains(&s.kind))
                    && (self.clients.is_empty() || self.clients.iter().any(|c| client(c, s)))
                    && !excluded
            })
            .collect();
        match (self.newest, self.oldest) {
            (Some(n), _) => matching[matching.len().saturating_sub(n as usize)..].to_vec(),
            (_, Some(n)) => matching.into_iter().take(n as usize).collect(),
            _ => matching,
        }
    }
}

async fn open(sb: &Sandbox, s: &Spec) -> Result<Session> {
    let db = DATABASES[s.db];
    let mut config = if s.local {
        sb.socket_config(db, USERS[s.user])
    } else {
        sb.config(db, USERS[s.user])
    };
    config.application_name(APPS[s.app]);
    Ok(match s.kind {
        0 => sim::idle(&config).await?,
        1 => sim::idle_in_transaction(&config, None).await?,
        _ => sim::active(&config, Duration::from_secs(600)).await?,
    })
}

/// Waits until the only client sessions are `known` (and pgkill's own): the
/// simulator's probes and the sandbox's set-up connections leave a moment after use.
async fn settle(admin: &Client, known: &[i32]) -> Result<()> {
    for _ in 0..2000 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'
                   AND pid <> ALL($1) AND pid <> pg_backend_pid()",
                &[&[known, &pgkill_pg::sessions::own_pids()].concat()],
            )
            .await?
            .get(0);
        if n == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("other sessions did not leave")
}

async fn random_filters_select_exactly_the_matching_sessions(pg: Installation) -> Result<()> {
    let seed: u64 = match std::env::var("PGKILL_PROPTEST_SEED") {
        Ok(s) => s.parse().context("PGKILL_PROPTEST_SEED must be a number")?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let result = run_rounds(&pg, &mut runner).await;
    result.with_context(|| format!("PGKILL_PROPTEST_SEED={seed}"))
}

async fn present(admin: &Client) -> Result<bool> {
    Ok(admin.simple_query("SELECT 1").await.is_ok())
}

async fn run_rounds(pg: &Installation, runner: &mut TestRunner) -> Result<()> {
    let sb = Sandbox::start(pg, &Options::default())?;
    for db in DATABASES {
        sb.create_database(db, None).await?;
    }
    let admin = sb.admin("postgres").await?;
    // The test's own superuser connection is listed too (it is a client session).
    let admin_pid: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let mut config = sb.config("postgres", roles::ADMIN);
    config.application_name("pgkill");
    let (me, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // As `pgkill_pg::connect` does for every connection pgkill opens.
    sessions::register_own(&me).await?;
    let caps = sessions::capabilities(&me).await?;
    let new = |runner: &mut TestRunner,
               strategy: &dyn Fn() -> BoxedStrategy<Vec<Spec>>|
     -> Result<Vec<Spec>> {
        Ok(strategy()
            .new_tree(runner)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .current())
    };
    let specs_strategy = || prop::collection::vec(spec(), 6..=12).boxed();

    for round in 0..4 {
        let specs = new(runner, &specs_strategy)?;
        let mut opened = Vec::with_capacity(specs.len());
        for s in &specs {
            opened.push(open(&sb, s).await?);
        }
        // Index i of `all`/`pids` is session i; the admin connection is the oldest.
        let all: Vec<Spec> = std::iter::once(ADMIN_SPEC)
            .chain(specs.iter().cloned())
            .collect();
        let pids: Vec<i32> = std::iter::once(admin_pid)
            .chain(opened.iter().map(Session::pid))
            .collect();
        settle(&admin, &pids).await?;

        // Listing: many random filters against the same sessions.
        for _ in 0..25 {
            let p = pick()
                .new_tree(runner)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .current();
            let want: BTreeSet<i32> = p.expected(&all).iter().map(|i| pids[*i]).collect();
            let got: BTreeSet<i32> = sessions::list(&me, &caps, &p.filter()?)
                .await?
                .iter()
                .map(|s| s.pid)
                .collect();
            ensure!(
                got == want,
                "round {round}: {p:?} over {specs:?}: listed {got:?}, expected {want:?}"
            );
        }

        // Signalling: one random filter, then exactly the expected sessions are gone.
        let p = pick()
            .new_tree(runner)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .current();
        let filter = p.filter()?;
        let matched: BTreeSet<i32> = p.expected(&all).iter().map(|i| pids[*i]).collect();
        let want: BTreeSet<i32> = matched
            .iter()
            .copied()
            .filter(|pid| *pid != admin_pid)
            .collect();
        let plan = sessions::plan(&me, &caps, &filter, Signal::Terminate).await?;
        let outcomes =
            sessions::execute(&me, &caps, &filter, &plan, Duration::from_secs(5)).await?;
        let terminated: BTreeSet<i32> = outcomes
            .iter()
            .filter(|o| o.outcome == OutcomeKind::Terminated)
            .map(|o| o.pid)
            .collect();
        ensure!(
            terminated == want,
            "round {round}: kill {p:?} over {specs:?}: terminated {terminated:?}, expected {want:?}"
        );
        // The test's own superuser connection, when it matches, is reported, not signalled.
        let refused: Vec<_> = outcomes
            .iter()
            .filter(|o| o.outcome != OutcomeKind::Terminated)
            .collect();
        ensure!(
            refused.iter().map(|o| o.pid).collect::<Vec<_>>()
                == matched
                    .iter()
                    .copied()
                    .filter(|pid| *pid == admin_pid)
                    .collect::<Vec<_>>(),
            "round {round}: refused {refused:?}"
        );
        ensure!(refused
            .iter()
            .all(|o| o.outcome == OutcomeKind::NotPermitted));
        ensure!(
            present(&admin).await?,
            "the refused admin connection was hit"
        );
        for s in &opened {
            if want.contains(&s.pid()) {
                let e = s.wait_ended(Duration::from_secs(10)).await;
                ensure!(
                    e.as_ref().and_then(|e| e.sqlstate.as_deref()) == Some("57P01"),
                    "{}: {e:?}",
                    s.pid()
                );
            } else {
                ensure!(
                    s.is_connected(),
                    "round {round}: {} was hit by {p:?}",
                    s.pid()
                );
            }
        }
        drop(opened);
        // Dropped clients of running statements leave their backends sleeping (a backend
        // notices a closed client only when it next talks to it): end them all.
        let began = std::time::Instant::now();
        loop {
            let n: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = ANY($1)",
                    &[&DATABASES.to_vec()],
                )
                .await?
                .get(0);
            if n == 0 {
                break;
            }
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "sessions of round {round} did not leave"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

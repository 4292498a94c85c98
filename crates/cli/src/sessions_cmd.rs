//! `pgkill ls`, `pgkill kill` and `pgkill cancel`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use pgkill_core::plan::{exit_code, Outcome};
use pgkill_core::planner::Signal;
use pgkill_pg::connect::Settings;
use pgkill_pg::sessions::{self, Capabilities};
use serde::Serialize;

use crate::args::{ConnArgs, FilterArgs};
use crate::conn::Connected;
use crate::inflight::{self, Signals};
use crate::output::{self, ServerJson};
use crate::Outcome as Exit;

/// Arguments of `pgkill ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// Print one JSON document.
    #[arg(long, conflicts_with = "csv", help_heading = "Options")]
    pub(crate) json: bool,
    /// Print CSV with a header line.
    #[arg(long, help_heading = "Options")]
    pub(crate) csv: bool,
    /// Not only client sessions: also walsenders, autovacuum and other background processes.
    #[arg(long = "all-backends", help_heading = "Options")]
    pub(crate) all_backends: bool,
}

/// Arguments of `pgkill kill` and `pgkill cancel`.
#[derive(Debug, clap::Args)]
pub struct SignalArgs {
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes", help_heading = "Options")]
    pub(crate) yes: bool,
    /// Print the plan and change nothing.
    #[arg(long = "dry-run", help_heading = "Options")]
    pub(crate) dry_run: bool,
    /// Print one JSON document (the plan and each session's outcome).
    #[arg(long, help_heading = "Options")]
    pub(crate) json: bool,
    /// Also act on walsenders and background processes (deliberate use only).
    #[arg(long = "all-backends", help_heading = "Options")]
    pub(crate) all_backends: bool,
}

/// Arguments of `pgkill kill`: those of `cancel`, and how long to wait.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub(crate) signal: SignalArgs,
    /// How long to wait for terminated sessions to be gone.
    #[arg(long, value_name = "DUR", default_value = "5s", help_heading = "Options", value_parser = |s: &str| pgkill_core::parse_duration(s).map_err(|e| e.to_string()))]
    pub(crate) timeout: Duration,
}

pub(crate) fn width() -> Option<usize> {
    if std::io::stdout().is_terminal() {
        terminal_size::terminal_size().map(|(w, _)| w.0 as usize)
    } else {
        None
    }
}

pub(crate) fn server_json(caps: &Capabilities, settings: &Settings) -> ServerJson {
    ServerJson {
        host: settings.host.to_string(),
        port: settings.port,
        version: caps.version.to_string(),
        user: caps.caller.user.clone(),
        superuser: caps.caller.superuser,
        in_recovery: caps.in_recovery,
    }
}

/// `pgkill ls`.
pub async fn ls(
    conn_args: &ConnArgs,
    conninfo: Option<&str>,
    args: &LsArgs,
) -> anyhow::Result<Exit> {
    let filter = args.filters.to_filter(args.all_backends);
    let connected = inflight::connect(conn_args, conninfo).await?;
    let mut signals = Signals::listen()?;
    let (poolers, _) = connected.poolers.clone();
    inflight::guard(&connected, &mut signals, async {
        list_sessions(&connected, args, &filter, &poolers).await
    })
    .await
}

async fn list_sessions(
    connected: &Connected,
    args: &LsArgs,
    filter: &pgkill_core::Filter,
    poolers: &[String],
) -> anyhow::Result<Exit> {
    let client = &connected.client;
    let caps = sessions::capabilities(client).await?;
    let Through {
        states: poolers,
        list,
        pooled,
        ..
    } = list_through(client, &caps, filter, poolers).await?;
    let horizon = say_what_holds_xmin(client, &caps, filter).await?;
    if args.json || args.csv {
        // Data for scripts: exact (JSON escapes what a terminal must not see itself;
        // CSV is escaped only on a terminal).
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        if args.json {
            output::sessions_json(
                &mut out,
                &server_json(&caps, &connected.settings),
                &list,
                &pooled,
                horizon.as_ref(),
            )?;
        } else {
            output::sessions_csv(&mut out, &list, &pooled, output::stdout_is_terminal())?;
        }
        out.flush()?;
    } else {
        let mut out = output::for_people();
        if caps.in_recovery {
            writeln!(out, "{}", output::STANDBY_HEADER)?;
        }
        for p in &poolers {
            writeln!(out, "{}", pooler_line(p))?;
        }
        if output::colour_stdout() {
            output::sessions_table(out.unescaped(), &list, &pooled, width(), true)?;
        } else {
            output::sessions_table(&mut out, &list, &pooled, width(), false)?;
        }
        if !caps.read_all_stats && !caps.caller.superuser && list.iter().any(|s| s.state.is_none())
        {
            writeln!(
                out,
                "(? = not visible to role {}: grant it pg_read_all_stats to see every session's details)",
                caps.caller.user
            )?;
        }
        out.flush()?;
    }
    Ok(if list.is_empty() && pooled.is_empty() {
        Exit::NothingMatched
    } else {
        Exit::Ok
    })
}

/// The line above `ls`'s table about a pooler it looked through.
pub(crate) fn pooler_line(p: &pgkill_core::pooler::PoolerState) -> String {
    format!(
        "Pooler: PgBouncer {} at {} (default pool_mode {}): {} application connection(s), {} server connection(s)",
        p.version,
        p.name,
        p.pool_mode,
        p.clients.len(),
        p.servers.len()
    )
}

/// With `--holding-xmin`: reads what holds the server's xmin horizon and, when it is not
/// (only) client sessions, says so on stderr, so that an empty selection never hides the
/// cause (see `pgkill_core::horizon`).
async fn say_what_holds_xmin(
    client: &tokio_postgres::Client,
    caps: &Capabilities,
    filter: &pgkill_core::Filter,
) -> anyhow::Result<Option<pgkill_core::horizon::XminHorizon>> {
    if !filter.holding_xmin {
        return Ok(None);
    }
    let horizon = sessions::xmin_horizon(client, caps).await?;
    if let Some(text) = horizon.describe() {
        eprintln!("pgkill: {}", pgkill_core::printable(&text));
    }
    Ok(Some(horizon))
}

/// Reads every pooler named (`--pgbouncer`, `PGKILL_PGBOUNCER`). One that cannot be
/// reached or read stops the command (exit 2): a listing without it would miss
/// applications.
async fn read_poolers(
    conninfos: &[String],
) -> anyhow::Result<
    Vec<(
        pgkill_pg::pgbouncer::Pooler,
        pgkill_core::pooler::PoolerState,
    )>,
> {
    // A few poolers at most: read one after the other.
    let mut states = Vec::new();
    for c in conninfos {
        let pooler = pgkill_pg::pgbouncer::Pooler::resolve(c, &pgkill_pg::connect::SystemEnv)
            .map_err(|e| crate::UsageError(e.to_string()))?;
        let console = pooler
            .connect()
            .await
            .map_err(|e| crate::UsageError(e.to_string()))?;
        let state = pooler
            .read(&console)
            .await
            .map_err(|e| crate::UsageError(e.to_string()))?;
        states.push((pooler, state));
    }
    Ok(states)
}

fn states_of(
    poolers: &[(
        pgkill_pg::pgbouncer::Pooler,
        pgkill_core::pooler::PoolerState,
    )],
) -> Vec<pgkill_core::pooler::PoolerState> {
    poolers.iter().map(|(_, s)| s.clone()).collect()
}

/// One server's sessions as seen through its poolers (none named: straight from the
/// server, no pooler): what `ls`, `kill`, `cancel` and `free-slot` work on.
pub(crate) struct Through {
    /// The poolers, to act at.
    pub poolers: Vec<pgkill_pg::pgbouncer::Pooler>,
    /// What each pooler showed.
    pub states: Vec<pgkill_core::pooler::PoolerState>,
    /// The backends the filter selects (each linked to the application it serves).
    pub list: Vec<pgkill_core::Session>,
    /// The poolers' application connections no backend serves right now.
    pub pooled: Vec<pgkill_core::pooler::Pooled>,
}

/// Lists the sessions `filter` selects on one server through the poolers `conninfos`
/// names (each read first, see [`read_poolers`]); without poolers, as `ls` lists them.
pub(crate) async fn list_through(
    client: &tokio_postgres::Client,
    caps: &Capabilities,
    filter: &pgkill_core::Filter,
    conninfos: &[String],
) -> anyhow::Result<Through> {
    if conninfos.is_empty() {
        return Ok(Through {
            poolers: Vec::new(),
            states: Vec::new(),
            list: sessions::list(client, caps, filter).await?,
            pooled: Vec::new(),
        });
    }
    let read = read_poolers(conninfos).await?;
    let states = states_of(&read);
    let poolers = read.into_iter().map(|(p, _)| p).collect();
    let (list, pooled) = pgkill_pg::pgbouncer::list_through(client, caps, filter, &states).await?;
    Ok(Through {
        poolers,
        states,
        list,
        pooled,
    })
}

/// A `kill`/`cancel` planned on one server (nothing changed yet): straight, or through
/// the server's poolers, as `pgkill kill`/`cancel` plans it on one server.
pub(crate) enum SignalPlan {
    /// No pooler: the backends the filter selects.
    Direct(pgkill_core::plan::Plan),
    /// `kill` through poolers (see [`kill_through_poolers`]).
    Kill {
        plan: pgkill_pg::through::KillPlan,
        poolers: Vec<pgkill_pg::pgbouncer::Pooler>,
        states: Vec<pgkill_core::pooler::PoolerState>,
    },
    /// `cancel` through poolers (see [`cancel_through_poolers`]).
    Cancel {
        plan: pgkill_pg::through::CancelPlan,
        poolers: Vec<pgkill_pg::pgbouncer::Pooler>,
    },
}

impl SignalPlan {
    /// Plans `signal` on one server, through its poolers (`connected.poolers`) if any.
    pub(crate) async fn build(
        connected: &Connected,
        caps: &Capabilities,
        filter: &pgkill_core::Filter,
        signal: Signal,
    ) -> anyhow::Result<SignalPlan> {
        let client = &connected.client;
        let (conninfos, _) = &connected.poolers;
        if conninfos.is_empty() {
            return Ok(SignalPlan::Direct(
                sessions::plan(client, caps, filter, signal).await?,
            ));
        }
        let through = list_through(client, caps, filter, conninfos).await?;
        Ok(match signal {
            Signal::Terminate => SignalPlan::Kill {
                plan: pgkill_pg::through::KillPlan::build(
                    client,
                    caps,
                    filter,
                    through.list,
                    through.pooled,
                    &through.states,
                )
                .await?,
                poolers: through.poolers,
                states: through.states,
            },
            Signal::Cancel => SignalPlan::Cancel {
                plan: pgkill_pg::through::CancelPlan::build(
                    &caps.caller,
                    filter,
                    through.list,
                    &through.pooled,
                ),
                poolers: through.poolers,
            },
        })
    }

    /// The backends of the plan (for showing).
    pub(crate) fn backends(&self) -> pgkill_core::plan::Plan {
        match self {
            SignalPlan::Direct(plan) => plan.clone(),
            SignalPlan::Kill { plan, .. } => plan.backends(),
            SignalPlan::Cancel { plan, .. } => plan.backends(),
        }
    }

    /// The application connections ended at a pooler (or refused there, with why).
    pub(crate) fn at_pooler(&self) -> &[pgkill_core::pooler::AppTarget] {
        match self {
            SignalPlan::Kill { plan, .. } => &plan.at_pooler,
            _ => &[],
        }
    }

    /// How many sessions (or application connections) are acted on.
    pub(crate) fn count(&self) -> usize {
        match self {
            SignalPlan::Direct(plan) => plan.to_signal().count(),
            SignalPlan::Kill { plan, .. } => plan.acting(),
            SignalPlan::Cancel { plan, .. } => plan.count(),
        }
    }

    /// How many were selected, refused ones included.
    pub(crate) fn listed(&self) -> usize {
        self.backends().targets.len() + self.at_pooler().len()
    }

    /// What to warn about before acting (see `KillPlan::warnings`).
    pub(crate) fn warnings(&self) -> Vec<String> {
        match self {
            SignalPlan::Kill { plan, states, .. } => plan.warnings(states),
            _ => Vec::new(),
        }
    }

    /// Carries the plan out, through the same re-checking statements and pooler
    /// commands as on one server: the backends' outcomes, and the applications' at the
    /// poolers.
    pub(crate) async fn execute(
        &self,
        client: &tokio_postgres::Client,
        caps: &Capabilities,
        filter: &pgkill_core::Filter,
        timeout: Duration,
    ) -> pgkill_pg::Result<(Vec<Outcome>, Vec<pgkill_core::pooler::AppOutcome>)> {
        match self {
            SignalPlan::Direct(plan) => Ok((
                sessions::execute(client, caps, filter, plan, timeout).await?,
                Vec::new(),
            )),
            SignalPlan::Kill { plan, poolers, .. } => {
                plan.execute(client, caps, filter, poolers, timeout).await
            }
            SignalPlan::Cancel { plan, poolers } => Ok((
                plan.execute(client, caps, filter, poolers).await?,
                Vec::new(),
            )),
        }
    }

    /// The exit code of this server's part after carrying it out.
    pub(crate) fn code(
        &self,
        outcomes: &[Outcome],
        apps: &[pgkill_core::pooler::AppOutcome],
    ) -> Exit {
        match self {
            SignalPlan::Kill { .. } => through_code(outcomes, apps),
            _ => Exit::from_code(exit_code(outcomes)),
        }
    }
}

/// The exit code of `kill` through poolers: 3 when a backend or an application was not
/// ended, else 0.
fn through_code(outcomes: &[Outcome], apps: &[pgkill_core::pooler::AppOutcome]) -> Exit {
    let failed = outcomes.iter().any(|o| o.outcome.is_failure())
        || apps.iter().any(|a| a.outcome.is_failure());
    if failed {
        Exit::Partial
    } else {
        Exit::Ok
    }
}

/// One server's `kill`/`cancel` document (as `--json` prints it), for `--target`.
pub(crate) fn signal_doc(
    caps: &Capabilities,
    settings: &Settings,
    action: &'static str,
    dry_run: bool,
    plan: &SignalPlan,
    outcomes: &[Outcome],
    apps: &[pgkill_core::pooler::AppOutcome],
) -> Result<serde_json::Value, String> {
    let backends = plan.backends();
    serde_json::to_value(SignalDoc {
        server: server_json(caps, settings),
        action,
        dry_run,
        plan: plan_entries(&backends),
        outcomes,
        pooler_plan: plan.at_pooler(),
        pooler_outcomes: apps,
        xmin_horizon: None,
    })
    .map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct SignalDoc<'a> {
    server: ServerJson,
    action: &'static str,
    dry_run: bool,
    plan: Vec<PlanEntry<'a>>,
    outcomes: &'a [Outcome],
    /// With `--pgbouncer`: application connections ended at the pooler.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pooler_plan: &'a [pgkill_core::pooler::AppTarget],
    /// What happened to them, verified at the pooler.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pooler_outcomes: &'a [pgkill_core::pooler::AppOutcome],
    /// With `--holding-xmin`: the horizon and what holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    xmin_horizon: Option<&'a pgkill_core::horizon::XminHorizon>,
}

#[derive(Serialize)]
struct PlanEntry<'a> {
    pid: i32,
    backend_start: Option<String>,
    user: Option<&'a str>,
    database: Option<&'a str>,
    reason: &'a str,
    refused: Option<&'a str>,
}

fn plan_entries(plan: &pgkill_core::plan::Plan) -> Vec<PlanEntry<'_>> {
    plan.targets
        .iter()
        .map(|t| PlanEntry {
            pid: t.session.pid,
            backend_start: t.session.backend_start.map(rfc3339),
            user: t.session.user.as_deref(),
            database: t.session.database.as_deref(),
            reason: &t.reason,
            refused: t.refused.as_deref(),
        })
        .collect()
}

fn rfc3339(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `pgkill kill` / `pgkill cancel`.
pub async fn signal(
    conn_args: &ConnArgs,
    conninfo: Option<&str>,
    args: &SignalArgs,
    signal: Signal,
    timeout: Duration,
) -> anyhow::Result<Exit> {
    let filter = args.filters.to_filter(args.all_backends);
    let action = match signal {
        Signal::Terminate => "terminate",
        Signal::Cancel => "cancel",
    };
    // Refuse before touching anything when nobody can confirm.
    crate::confirm::ensure_possible(
        args.yes,
        args.dry_run,
        &format!("{action} sessions"),
        Some("plan"),
    )?;
    let connected = inflight::connect(conn_args, conninfo).await?;
    let mut signals = Signals::listen()?;
    let (poolers, _) = connected.poolers.clone();
    inflight::guard(&connected, &mut signals, async {
        match signal {
            _ if poolers.is_empty() => {
                signal_sessions(&connected, args, &filter, signal, action, timeout).await
            }
            Signal::Terminate => {
                kill_through_poolers(&connected, args, &filter, timeout, &poolers).await
            }
            Signal::Cancel => cancel_through_poolers(&connected, args, &filter, &poolers).await,
        }
    })
    .await
}

/// `cancel --pgbouncer`: cancels the statements of the backends the filters select, an
/// application behind a pooler selected by the application's name and address. Right
/// before the signal, each pooler backend must still be linked to the application it was
/// listed with (a transaction-pooled backend serves whichever application comes next
/// once its statement is over). Pooled application connections run no statement: they
/// are named and left alone.
async fn cancel_through_poolers(
    connected: &Connected,
    args: &SignalArgs,
    filter: &pgkill_core::Filter,
    conninfos: &[String],
) -> anyhow::Result<Exit> {
    let client = &connected.client;
    let caps = sessions::capabilities(client).await?;
    let Through {
        poolers,
        list,
        pooled,
        ..
    } = list_through(client, &caps, filter, conninfos).await?;
    let horizon = say_what_holds_xmin(client, &caps, filter).await?;
    let plan = pgkill_pg::through::CancelPlan::build(&caps.caller, filter, list, &pooled);
    let mut out = output::for_people();
    let count = plan.count();
    if !args.json {
        if plan.direct.targets.is_empty() && plan.linked.targets.is_empty() {
            writeln!(out, "No session matched.")?;
        } else {
            writeln!(
                out,
                "Plan: cancel the running statement of {count} session(s) on PostgreSQL {} as {}:",
                caps.version, caps.caller.user
            )?;
            output::plan_table(&mut out, &plan.backends(), width())?;
        }
        if plan.pooled > 0 {
            writeln!(
                out,
                "({} application connection(s) at the pooler hold no backend and run no statement: nothing to cancel)",
                plan.pooled
            )?;
        }
    }
    let backends = plan.backends();
    let doc = |outcomes: &[Outcome], dry_run: bool, out: &mut dyn Write| -> anyhow::Result<()> {
        let d = SignalDoc {
            server: server_json(&caps, &connected.settings),
            action: "cancel",
            dry_run,
            plan: plan_entries(&backends),
            outcomes,
            pooler_plan: &[],
            pooler_outcomes: &[],
            xmin_horizon: horizon.as_ref(),
        };
        output::json(out, &d)?;
        Ok(())
    };
    if count == 0 || args.dry_run {
        if args.json {
            doc(&[], args.dry_run, &mut out)?;
        } else if args.dry_run && count > 0 {
            writeln!(out, "Dry run: nothing was changed.")?;
        }
        out.flush()?;
        return Ok(if count == 0 {
            Exit::NothingMatched
        } else {
            Exit::Ok
        });
    }
    if !args.yes
        && !crate::confirm::ask(
            &mut out,
            &format!("Cancel the running statement of {count} session(s)?"),
        )
        .await?
    {
        return Ok(Exit::Error);
    }
    let outcomes = plan.execute(client, &caps, filter, &poolers).await?;
    if args.json {
        doc(&outcomes, false, &mut out)?;
    } else {
        output::outcomes_table(&mut out, &outcomes, width())?;
    }
    out.flush()?;
    Ok(Exit::from_code(exit_code(&outcomes)))
}

/// `kill --pgbouncer`: ends the application connections the filters select, wherever
/// they are (see `pgkill_core::pooler::split_for_kill`): backends no pooler owns and
/// session-pooled ones through the server's signalling path (re-checked there), the rest
/// at the pooler (`KILL_CLIENT`), each verified gone from the pooler's `SHOW CLIENTS`.
async fn kill_through_poolers(
    connected: &Connected,
    args: &SignalArgs,
    filter: &pgkill_core::Filter,
    timeout: Duration,
    conninfos: &[String],
) -> anyhow::Result<Exit> {
    let client = &connected.client;
    let caps = sessions::capabilities(client).await?;
    let Through {
        poolers,
        states,
        list,
        pooled,
    } = list_through(client, &caps, filter, conninfos).await?;
    let horizon = say_what_holds_xmin(client, &caps, filter).await?;
    let plan =
        pgkill_pg::through::KillPlan::build(client, &caps, filter, list, pooled, &states).await?;
    let acting = plan.acting();
    let mut out = output::for_people();
    let nothing = plan.is_empty();
    let backends = plan.backends();
    if !args.json {
        if nothing {
            writeln!(out, "No session matched.")?;
        } else {
            writeln!(
                out,
                "Plan: terminate {acting} application connection(s) on PostgreSQL {} as {}:",
                caps.version, caps.caller.user
            )?;
            if !backends.targets.is_empty() {
                output::plan_table(&mut out, &backends, width())?;
            }
            if !plan.at_pooler.is_empty() {
                writeln!(out, "At the pooler:")?;
                output::app_targets_table(&mut out, &plan.at_pooler, width())?;
            }
        }
        if plan.idle_pool_connections > 0 {
            writeln!(
                out,
                "({} pooler server connection(s) serving no application right now left alone: ending them ends no application)",
                plan.idle_pool_connections
            )?;
        }
    }
    let doc = |outcomes: &[Outcome],
               apps: &[pgkill_core::pooler::AppOutcome],
               dry_run: bool,
               out: &mut dyn Write|
     -> anyhow::Result<()> {
        let d = SignalDoc {
            server: server_json(&caps, &connected.settings),
            action: "terminate",
            dry_run,
            plan: plan_entries(&backends),
            outcomes,
            pooler_plan: &plan.at_pooler,
            pooler_outcomes: apps,
            xmin_horizon: horizon.as_ref(),
        };
        output::json(out, &d)?;
        Ok(())
    };
    if nothing {
        if args.json {
            doc(&[], &[], args.dry_run, &mut out)?;
        }
        out.flush()?;
        return Ok(Exit::NothingMatched);
    }
    if args.dry_run {
        if args.json {
            doc(&[], &[], true, &mut out)?;
        } else {
            writeln!(out, "Dry run: nothing was changed.")?;
        }
        out.flush()?;
        return Ok(Exit::Ok);
    }
    if !args.yes
        && !crate::confirm::ask(
            &mut out,
            &format!("Terminate {acting} application connection(s)?"),
        )
        .await?
    {
        return Ok(Exit::Error);
    }
    for warning in plan.warnings(&states) {
        eprintln!("pgkill: warning: {warning}");
    }
    let (outcomes, apps) = plan
        .execute(client, &caps, filter, &poolers, timeout)
        .await?;
    if args.json {
        doc(&outcomes, &apps, false, &mut out)?;
    } else {
        if !outcomes.is_empty() {
            output::outcomes_table(&mut out, &outcomes, width())?;
        }
        if !apps.is_empty() {
            writeln!(out, "At the pooler:")?;
            output::app_outcomes_table(&mut out, &apps, width())?;
        }
    }
    out.flush()?;
    Ok(through_code(&outcomes, &apps))
}

async fn signal_sessions(
    connected: &Connected,
    args: &SignalArgs,
    filter: &pgkill_core::Filter,
    signal: Signal,
    action: &'static str,
    timeout: Duration,
) -> anyhow::Result<Exit> {
    let client = &connected.client;
    let caps = sessions::capabilities(client).await?;
    let plan = sessions::plan(client, &caps, filter, signal).await?;
    let horizon = say_what_holds_xmin(client, &caps, filter).await?;
    let mut out = output::for_people();

    let doc = |outcomes: &[Outcome], dry_run: bool, out: &mut dyn Write| -> anyhow::Result<()> {
        let entries = plan_entries(&plan);
        let d = SignalDoc {
            server: server_json(&caps, &connected.settings),
            action,
            dry_run,
            plan: entries,
            outcomes,
            pooler_plan: &[],
            pooler_outcomes: &[],
            xmin_horizon: horizon.as_ref(),
        };
        output::json(out, &d)?;
        Ok(())
    };

    if plan.targets.is_empty() {
        if args.json {
            doc(&[], args.dry_run, &mut out)?;
        } else {
            writeln!(out, "No session matched.")?;
        }
        out.flush()?;
        return Ok(Exit::NothingMatched);
    }
    if !args.json {
        writeln!(
            out,
            "Plan: {action} {} session(s) on PostgreSQL {} as {}:",
            plan.to_signal().count(),
            caps.version,
            caps.caller.user
        )?;
        output::plan_table(&mut out, &plan, width())?;
    }
    if args.dry_run {
        if args.json {
            doc(&[], true, &mut out)?;
        } else {
            writeln!(out, "Dry run: nothing was changed.")?;
        }
        out.flush()?;
        return Ok(Exit::Ok);
    }
    if !args.yes {
        let verb = match signal {
            Signal::Terminate => "Terminate",
            Signal::Cancel => "Cancel the running statement of",
        };
        if !crate::confirm::ask(
            &mut out,
            &format!("{verb} {} session(s)?", plan.to_signal().count()),
        )
        .await?
        {
            return Ok(Exit::Error);
        }
    }
    let outcomes = sessions::execute(client, &caps, filter, &plan, timeout).await?;
    if args.json {
        doc(&outcomes, false, &mut out)?;
    } else {
        output::outcomes_table(&mut out, &outcomes, width())?;
    }
    out.flush()?;
    Ok(Exit::from_code(exit_code(&outcomes)))
}

/// Arguments of `pgkill free-slot`.
#[derive(Debug, clap::Args)]
pub struct FreeSlotArgs {
    /// The role at its connection limit.
    #[arg(value_name = "ROLE")]
    role: String,
    /// How many sessions to end (the ones idle the longest).
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes")]
    yes: bool,
    /// Also end sessions of a superuser role.
    #[arg(long = "include-superusers")]
    include_superusers: bool,
    /// Print one JSON document (plan, outcomes, sessions that reconnected meanwhile);
    /// needs -y.
    #[arg(long)]
    json: bool,
}

/// How long free-slot watches, after ending sessions, for the role's pool to log in again
/// (and take the freed slot before the user's own login can).
const RECONNECT_WATCH: Duration = Duration::from_millis(500);

/// A session of the role that logged in while free-slot ran (a pool refilling).
#[derive(Serialize)]
struct Arrival<'a> {
    pid: i32,
    backend_start: Option<String>,
    application_name: Option<&'a str>,
    client_addr: Option<String>,
}

#[derive(Serialize)]
struct FreeSlotDoc<'a> {
    server: ServerJson,
    action: &'static str,
    role: &'a str,
    /// `rolconnlimit` (-1: none).
    connection_limit: i32,
    sessions_before: usize,
    plan: Vec<PlanEntry<'a>>,
    outcomes: &'a [Outcome],
    /// Sessions of the role that logged in while free-slot ran: they may have taken the
    /// freed slot.
    reconnected: Vec<Arrival<'a>>,
    sessions_after: usize,
    /// The role is at its connection limit again (exit 3).
    full_again: bool,
}

/// `pgkill free-slot ROLE`: ends the role's sessions that have been idle the longest so
/// that a new login of the role fits under its connection limit.
pub async fn free_slot(
    conn_args: &ConnArgs,
    conninfo: Option<&str>,
    args: &FreeSlotArgs,
) -> anyhow::Result<Exit> {
    args.check()?;
    let connected = inflight::connect(conn_args, conninfo).await?;
    let mut signals = Signals::listen()?;
    inflight::guard(&connected, &mut signals, async {
        end_idle_sessions(&connected, args).await
    })
    .await
}

impl FreeSlotArgs {
    /// `--json` needs -y, and someone must be able to confirm: refused before connecting.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.json && !self.yes {
            anyhow::bail!(crate::UsageError(
                "free-slot --json needs -y: a question would mix with the JSON".into()
            ));
        }
        crate::confirm::ensure_possible(self.yes, false, "end sessions", None)
    }

    /// `--json`.
    pub fn json(&self) -> bool {
        self.json
    }

    /// `-y`.
    pub fn yes(&self) -> bool {
        self.yes
    }

    /// The role.
    pub fn role(&self) -> &str {
        &self.role
    }
}

async fn end_idle_sessions(connected: &Connected, args: &FreeSlotArgs) -> anyhow::Result<Exit> {
    let slot = plan_free_slot(connected, args).await?;
    let mut out = output::for_people();
    if !args.json {
        tell_role(&mut out, args, &slot)?;
        if slot.plan.targets.is_empty() {
            writeln!(out, "No idle session of {} to end.", args.role)?;
            out.flush()?;
            return Ok(Exit::NothingMatched);
        }
        output::plan_table(&mut out, &slot.plan, width())?;
    }
    if !args.yes
        && !crate::confirm::ask(
            &mut out,
            &format!("Terminate {} session(s)?", slot.plan.to_signal().count()),
        )
        .await?
    {
        return Ok(Exit::Error);
    }
    let freed = carry_out_free_slot(connected, &slot).await?;
    if args.json {
        output::json(&mut out, &free_slot_doc(connected, args, &slot, &freed))?;
        out.flush()?;
        return Ok(freed.code);
    }
    output::outcomes_table(&mut out, &freed.outcomes, width())?;
    tell_freed(&mut out, args, &slot, &freed)?;
    out.flush()?;
    Ok(freed.code)
}

/// Which of a role's sessions free-slot would end on one server, and what it saw.
pub struct SlotPlan {
    caps: Capabilities,
    /// `rolconnlimit` (-1: none).
    limit: i32,
    filter: pgkill_core::Filter,
    /// The role's sessions before.
    before: usize,
    /// The server's clock when they were read.
    began: Option<chrono::DateTime<chrono::Utc>>,
    /// The idle sessions to end.
    pub plan: pgkill_core::plan::Plan,
    /// Idle backends of transaction pools serving an application, left alone.
    left_alone: usize,
}

/// Reads the role's limit and sessions on one server and plans which to end (nothing is
/// changed).
pub async fn plan_free_slot(
    connected: &Connected,
    args: &FreeSlotArgs,
) -> anyhow::Result<SlotPlan> {
    let client = &connected.client;
    let caps = sessions::capabilities(client).await?;
    if let Err(why) = pgkill_core::database::check_name("role", &args.role, caps.max_name_bytes) {
        anyhow::bail!(crate::UsageError(why));
    }
    let limit: Option<i32> = pgkill_pg::exec::query_opt(
        client,
        &pgkill_core::database::role_connection_limit(&args.role),
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    let Some(limit) = limit else {
        anyhow::bail!(crate::UsageError(format!(
            "role {:?} does not exist",
            args.role
        )));
    };
    let filter = pgkill_core::Filter {
        users: vec![args.role.clone()],
        include_superusers: args.include_superusers,
        ..pgkill_core::Filter::default()
    };
    // Behind poolers: which backends are their server connections, and whom they serve.
    let all = list_through(client, &caps, &filter, &connected.poolers.0)
        .await?
        .list;
    let before = all.len();
    // The server's clock when the role's sessions were read: a session that starts after
    // it logged in while free-slot ran.
    let began = all.iter().map(|s| s.now).min();
    // Idle the longest first: those are the ones a pool can best spare; behind a pooler
    // its server connections serving nobody before anything else.
    let (mut idle, left_alone) = pgkill_core::pooler::spare_first(
        all.into_iter()
            .filter(|s| s.state.as_deref() == Some("idle"))
            .collect(),
    );
    idle.truncate(args.count as usize);
    let mut plan = pgkill_core::plan::Plan::build(Signal::Terminate, idle, &filter, &caps.caller);
    for t in &mut plan.targets {
        if let Some(link) = &t.session.pooler {
            t.reason = match &link.client {
                None => format!(
                    "a server connection of PgBouncer at {} serving no application (ending it ends nobody's connection)",
                    link.pooler
                ),
                Some(c) => format!(
                    "session pooling at PgBouncer {}: ends application {}",
                    link.pooler,
                    c.application_name.as_deref().unwrap_or("?")
                ),
            };
        }
    }
    Ok(SlotPlan {
        caps,
        limit,
        filter,
        before,
        began,
        plan,
        left_alone: left_alone.len(),
    })
}

/// The role's sessions and limit, and the pool backends left alone, for people.
pub fn tell_role(out: &mut dyn Write, args: &FreeSlotArgs, slot: &SlotPlan) -> std::io::Result<()> {
    let limit_text = if slot.limit < 0 {
        "no limit".to_owned()
    } else {
        format!("limit {}", slot.limit)
    };
    writeln!(
        out,
        "Role {} has {} session(s) ({limit_text}).",
        args.role, slot.before
    )?;
    if slot.left_alone > 0 {
        writeln!(
            out,
            "({} idle backend(s) of transaction pools serving an application right now left alone: ending one would hit whichever application it serves next)",
            slot.left_alone
        )?;
    }
    Ok(())
}

/// What free-slot did on one server.
pub struct Freed {
    /// Per session ended.
    pub outcomes: Vec<Outcome>,
    /// The role's sessions afterwards.
    after: Vec<pgkill_core::Session>,
    /// The role is at its connection limit again.
    full_again: bool,
    /// The exit code of this server's part.
    pub code: Exit,
}

/// Ends the planned sessions on one server, then watches a moment for the role's pool to
/// take the freed slot back.
pub async fn carry_out_free_slot(connected: &Connected, slot: &SlotPlan) -> anyhow::Result<Freed> {
    let client = &connected.client;
    let (caps, filter, plan, limit) = (&slot.caps, &slot.filter, &slot.plan, slot.limit);
    let outcomes = if plan.targets.is_empty() {
        Vec::new()
    } else {
        sessions::execute(client, caps, filter, plan, Duration::from_secs(5)).await?
    };
    // A pool that refills can take the freed slot before the user's own login: watch a
    // moment for the role's sessions to come back, and say so.
    let watch_until = tokio::time::Instant::now() + RECONNECT_WATCH;
    let after = loop {
        let now = sessions::list(client, caps, filter).await?;
        let full = limit >= 0 && now.len() >= usize::try_from(limit).unwrap_or(0);
        if plan.targets.is_empty() || full || tokio::time::Instant::now() >= watch_until {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let full_again = limit >= 0 && after.len() >= usize::try_from(limit).unwrap_or(0);
    let code = if plan.targets.is_empty() {
        Exit::NothingMatched
    } else if full_again {
        Exit::Partial
    } else {
        Exit::from_code(exit_code(&outcomes))
    };
    Ok(Freed {
        outcomes,
        after,
        full_again,
        code,
    })
}

impl Freed {
    /// The sessions of the role that logged in while free-slot ran (a pool refilling).
    fn arrived<'a>(&'a self, slot: &SlotPlan) -> Vec<&'a pgkill_core::Session> {
        self.after
            .iter()
            .filter(|s| match (slot.began, s.backend_start) {
                (Some(began), Some(start)) => start > began,
                _ => false,
            })
            .collect()
    }
}

/// The `--json` document of free-slot on one server.
pub fn free_slot_doc<'a>(
    connected: &Connected,
    args: &'a FreeSlotArgs,
    slot: &'a SlotPlan,
    freed: &'a Freed,
) -> impl Serialize + 'a {
    FreeSlotDoc {
        server: server_json(&slot.caps, &connected.settings),
        action: "free_slot",
        role: &args.role,
        connection_limit: slot.limit,
        sessions_before: slot.before,
        plan: plan_entries(&slot.plan),
        outcomes: &freed.outcomes,
        reconnected: freed
            .arrived(slot)
            .iter()
            .map(|s| Arrival {
                pid: s.pid,
                backend_start: s.backend_start.map(rfc3339),
                application_name: s.application_name.as_deref(),
                client_addr: s.client_addr.map(|a| a.to_string()),
            })
            .collect(),
        sessions_after: freed.after.len(),
        full_again: freed.full_again,
    }
}

/// After the outcomes: who logged in meanwhile, and whether the role is full again.
pub fn tell_freed(
    out: &mut dyn Write,
    args: &FreeSlotArgs,
    slot: &SlotPlan,
    freed: &Freed,
) -> std::io::Result<()> {
    let arrived = freed.arrived(slot);
    if !arrived.is_empty() {
        let who: Vec<String> = arrived
            .iter()
            .map(|s| {
                format!(
                    "pid {} ({} from {})",
                    s.pid,
                    s.application_name
                        .as_deref()
                        .filter(|a| !a.is_empty())
                        .unwrap_or("no application name"),
                    s.client_addr
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "the local socket".into())
                )
            })
            .collect();
        writeln!(
            out,
            "{} session(s) of {} logged in while free-slot ran: {}. A pool may have taken the freed slot(s).",
            arrived.len(),
            args.role,
            who.join(", ")
        )?;
    }
    if freed.full_again {
        writeln!(
            out,
            "{} is at its connection limit again ({}/{}): the freed slot(s) were taken.",
            args.role,
            freed.after.len(),
            slot.limit
        )?;
    }
    Ok(())
}

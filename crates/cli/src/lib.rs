//! pgkill's command-line front-end: argument parsing, dispatch and exit codes.
//!
//! Exit codes (the CLI contract): 0 acted on or listed at least one session, 1 nothing
//! matched, 2 error (bad input, connection, privilege, a statement that ran into
//! `--statement-timeout`, or Ctrl-C / SIGTERM, after cancelling the statement in flight on
//! the server), 3 partial failure.

mod args;
mod confirm;
mod conn;
mod database_cmd;
mod database_json;
mod demo;
mod fences;
mod fleet;
mod inflight;
mod manual;
mod output;
mod sessions_cmd;

use clap::{Parser, Subcommand};
use pgkill_core::planner::Signal;

/// Exit code for errors (bad input, connection failures, refused privileges).
pub const EXIT_ERROR: i32 = 2;

/// How a command ended, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0: acted on (or listed) at least one session.
    Ok,
    /// 1: nothing matched.
    NothingMatched,
    /// 2: error.
    Error,
    /// 3: some targets could not be signalled or did not go away.
    Partial,
}

impl Outcome {
    fn code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::NothingMatched => 1,
            Outcome::Error => EXIT_ERROR,
            Outcome::Partial => 3,
        }
    }

    pub(crate) fn from_code(code: i32) -> Outcome {
        match code {
            0 => Outcome::Ok,
            1 => Outcome::NothingMatched,
            3 => Outcome::Partial,
            _ => Outcome::Error,
        }
    }
}

/// A mistake in what the user asked for (exit 2, message only).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Get people out of PostgreSQL databases safely.
#[derive(Debug, Parser)]
#[command(name = "pgkill", version, long_about = None, disable_help_flag = true)]
pub struct Cli {
    #[command(flatten)]
    conn: args::ConnArgs,
    /// A libpq connection string (`host=… port=…`) or URI (`postgresql://…`).
    #[arg(value_name = "CONNINFO")]
    conninfo: Option<String>,
    /// Print help.
    #[arg(long = "help", action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List sessions (client sessions by default).
    Ls(sessions_cmd::LsArgs),
    /// Terminate the matching sessions, verified.
    Kill(sessions_cmd::KillArgs),
    /// Cancel the running statement of the matching sessions.
    Cancel(sessions_cmd::SignalArgs),
    /// Fence a database and end its sessions (letting transactions finish within --grace).
    Drain(database_cmd::DrainArgs),
    /// Restore the connection settings of a database pgkill fenced.
    Unfence(database_cmd::UnfenceArgs),
    /// Drop a database, beating reconnecting pools; restores it on any failure.
    Drop(database_cmd::DropArgs),
    /// Rename a database, beating reconnecting pools; keeps its settings.
    Rename(database_cmd::RenameArgs),
    /// End the sessions of a role that have been idle the longest, so a new login fits
    /// under the role's connection limit.
    FreeSlot(sessions_cmd::FreeSlotArgs),
    /// Watch sessions live; filter, select, cancel and terminate them.
    Top(TopArgs),
    /// Enforce a policy file: end sessions by rule, with an audit log and metrics.
    Watch(WatchArgs),
    /// Start a throw-away local PostgreSQL full of realistic sessions to practise on.
    Demo(demo::DemoArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(manual::CompletionsArgs),
    /// Print the manual page (roff) on stdout: `pgkill man | man -l -`.
    Man(manual::ManArgs),
}

impl Command {
    /// The command's name on the command line.
    fn name(&self) -> &'static str {
        match self {
            Command::Ls(_) => "ls",
            Command::Kill(_) => "kill",
            Command::Cancel(_) => "cancel",
            Command::Drain(_) => "drain",
            Command::Unfence(_) => "unfence",
            Command::Drop(_) => "drop",
            Command::Rename(_) => "rename",
            Command::FreeSlot(_) => "free-slot",
            Command::Top(_) => "top",
            Command::Watch(_) => "watch",
            Command::Demo(_) => "demo",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }
}

/// Runs pgkill with the process's arguments and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_tracing();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        // Generated from the definition above: no connection, no environment.
        Command::Completions(args) => manual::completions(&args, &mut std::io::stdout().lock())
            .map(|()| 0)
            .map_err(Into::into),
        Command::Man(_) => manual::man(&mut std::io::stdout().lock())
            .map(|()| 0)
            .map_err(Into::into),
        command => run_async(cli.conn, cli.conninfo, command),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            // Server text (names, the server's own messages) is in there: escaped.
            eprintln!("pgkill: {}", pgkill_core::printable(&describe(&e)));
            EXIT_ERROR
        }
    }
}

fn run_async(
    conn: args::ConnArgs,
    conninfo: Option<String>,
    command: Command,
) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let conninfo = conninfo.as_deref();
    let limit = conn.statement_timeout;
    if !matches!(
        command,
        Command::Ls(_)
            | Command::Kill(_)
            | Command::Cancel(_)
            | Command::Drain(_)
            | Command::Drop(_)
            | Command::Rename(_)
            | Command::Unfence(_)
            | Command::Top(_)
            | Command::FreeSlot(_)
    ) {
        // The commands that work on a server of the user's take its poolers; `demo`
        // starts a server of its own, with none in front of it.
        if let (p, false) = conn.poolers() {
            if !p.is_empty() {
                return Err(UsageError(format!(
                    "--pgbouncer is taken by every command but `watch` (not yet) and `demo` (it starts a server of its own): run `pgkill {}` without it",
                    command.name()
                ))
                .into());
            }
        }
    }
    // Several servers: `--target` / `--targets` (see `fleet`).
    let targets = fleet::targets(&conn)?;
    if let (Command::Top(a), false) = (&command, targets.is_empty()) {
        // `top` merges the targets into one live table (see `top_fleet`); the refusals
        // `fleet::check` makes of the one-shot commands' options apply to it alike.
        fleet::check(&conn, "ls", &targets)?;
        if conninfo.is_some() {
            anyhow::bail!(UsageError(
                "a connection string and --target/--targets together: give that server as a --target too".into()
            ));
        }
        let outcome = runtime.block_on(top_fleet(&conn, &targets, a));
        return Ok(outcome?.code());
    }
    if !targets.is_empty() {
        fleet::check(&conn, command.name(), &targets)?;
        if conninfo.is_some() {
            anyhow::bail!(UsageError(
                "a connection string and --target/--targets together: give that server as a --target too".into()
            ));
        }
        // This machine's old fence records, once (each server's fences are noted under
        // its name as it is reached).
        for line in fences::local_notes() {
            eprintln!("pgkill: {line}");
        }
        let outcome = runtime.block_on(async {
            match &command {
                Command::Ls(a) => fleet::ls(&conn, &targets, a).await,
                Command::Kill(a) => {
                    fleet::signal(&conn, &targets, &a.signal, Signal::Terminate, a.timeout).await
                }
                Command::Cancel(a) => {
                    fleet::signal(
                        &conn,
                        &targets,
                        a,
                        Signal::Cancel,
                        std::time::Duration::ZERO,
                    )
                    .await
                }
                Command::Drain(a) => fleet::database(&conn, &targets, &a.job()).await,
                Command::Drop(a) => fleet::database(&conn, &targets, &a.job()).await,
                Command::Rename(a) => fleet::database(&conn, &targets, &a.job()).await,
                Command::Unfence(a) => fleet::unfence(&conn, &targets, a).await,
                Command::FreeSlot(a) => fleet::free_slot(&conn, &targets, a).await,
                _ => Ok(Outcome::Error),
            }
        });
        let outcome = outcome.map_err(|e| inflight::timed_out(&e, limit).unwrap_or(e))?;
        return Ok(outcome.code());
    }
    let outcome = runtime.block_on(async {
        match &command {
            Command::Ls(a) => sessions_cmd::ls(&conn, conninfo, a).await,
            Command::Kill(a) => {
                sessions_cmd::signal(&conn, conninfo, &a.signal, Signal::Terminate, a.timeout).await
            }
            Command::Cancel(a) => {
                // Cancelling leaves the session: there is nothing to wait for.
                sessions_cmd::signal(
                    &conn,
                    conninfo,
                    a,
                    Signal::Cancel,
                    std::time::Duration::ZERO,
                )
                .await
            }
            Command::Drain(a) => database_cmd::run(&conn, conninfo, &a.job()).await,
            Command::Drop(a) => database_cmd::run(&conn, conninfo, &a.job()).await,
            Command::Rename(a) => database_cmd::run(&conn, conninfo, &a.job()).await,
            Command::Unfence(a) => database_cmd::unfence(&conn, conninfo, a).await,
            Command::FreeSlot(a) => sessions_cmd::free_slot(&conn, conninfo, a).await,
            Command::Top(a) => top(&conn, conninfo, a).await,
            Command::Watch(a) => watch(&conn, conninfo, a).await,
            Command::Demo(_) | Command::Completions(_) | Command::Man(_) => Ok(Outcome::Error),
        }
    });
    // A statement the server cancelled without pgkill asking ran into the time limit.
    let outcome = outcome.map_err(|e| inflight::timed_out(&e, limit).unwrap_or(e))?;
    Ok(outcome.code())
}

/// Arguments of `pgkill top`.
#[derive(Debug, clap::Args)]
struct TopArgs {
    #[command(flatten)]
    filters: args::FilterArgs,
    /// Refresh interval.
    #[arg(short = 'i', long = "interval", value_name = "DUR", default_value = "1s", help_heading = "Options",
          value_parser = |s: &str| pgkill_core::parse_duration(s).map_err(|e| e.to_string()))]
    interval: std::time::Duration,
    /// Append each refresh's rows and every action taken (who, when, which sessions and
    /// queries, the outcome) to FILE as JSON lines; created private (0600), never
    /// written through a symbolic link.
    #[arg(long = "record", value_name = "FILE", help_heading = "Options")]
    record: Option<std::path::PathBuf>,
    /// The columns to show, comma-separated (pid and query are always shown): target
    /// (with several --target), pid, user,
    /// database, state, in-state, wait, xact, blocked-by, application, client,
    /// xmin-age, backend-type, query. `C` hides or shows columns on screen.
    #[arg(long = "columns", value_name = "LIST", help_heading = "Options",
          value_parser = |s: &str| pgkill_tui::Column::hidden_by(s).map(HiddenColumns))]
    columns: Option<HiddenColumns>,
}

/// The columns `--columns` leaves out (one value: clap would take a `Vec` as repeats).
#[derive(Debug, Clone)]
struct HiddenColumns(Vec<pgkill_tui::Column>);

/// The OS user running pgkill, for `top --record` (the login name, else the uid).
fn os_user() -> String {
    use std::os::unix::fs::MetadataExt;
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid {}", m.uid()),
            Err(_) => "unknown".into(),
        })
}

/// `top --record FILE`, opened first: a symlink or an unwritable path is bad input
/// (exit 2).
fn open_record(args: &TopArgs) -> anyhow::Result<Option<pgkill_tui::Recorder>> {
    Ok(match &args.record {
        Some(path) => Some(pgkill_tui::Recorder::new(
            pgkill_watch::audit::open_private(path)
                .map_err(|e| UsageError(format!("--record: {e}")))?,
            os_user(),
        )),
        None => None,
    })
}

async fn top(
    conn_args: &args::ConnArgs,
    conninfo: Option<&str>,
    args: &TopArgs,
) -> anyhow::Result<Outcome> {
    let record = open_record(args)?;
    // Connect once first, before the full screen: a wrong password or host is a plain
    // error, and the password is asked for (if at all) here, once. Reconnects reuse it.
    let connected = inflight::connect(conn_args, conninfo).await?;
    let poolers = usable_poolers(&connected.poolers.0).await?;
    let settings = connected.settings;
    let target = settings.host_port();
    let statement_timeout = conn_args.statement_timeout;
    let connector: pgkill_tui::Connector = Box::new(move || {
        let settings = settings.clone();
        Box::pin(async move { conn::reconnect(&settings).await })
    });
    pgkill_tui::run(
        vec![pgkill_tui::Target {
            name: target,
            connect: connector,
            at_start: pgkill_tui::ConnState::Connected,
            poolers,
        }],
        args.filters.to_filter(false),
        args.interval,
        statement_timeout,
        pgkill_tui::Options {
            record,
            hidden_columns: args.columns.clone().map(|h| h.0).unwrap_or_default(),
        },
    )
    .await?;
    Ok(Outcome::Ok)
}

/// The poolers `top` looks through, checked before the full screen: one that cannot be
/// reached or read is a plain error.
async fn usable_poolers(conninfos: &[String]) -> anyhow::Result<Vec<pgkill_pg::pgbouncer::Pooler>> {
    let mut poolers = Vec::new();
    for c in conninfos {
        let pooler = pgkill_pg::pgbouncer::Pooler::resolve(c, &pgkill_pg::connect::SystemEnv)
            .map_err(|e| UsageError(e.to_string()))?;
        let console = pooler
            .connect()
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        pooler
            .read(&console)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        poolers.push(pooler);
    }
    Ok(poolers)
}

/// `pgkill --target A --target B … top`: one live table over every target. Each target
/// is connected to once first, before the full screen and never asking for a password
/// (several prompts would mix). With several, one that cannot be reached is shown
/// disconnected and retried with backoff (its rows appear when it answers), one that
/// refuses the login is shown with that error and not tried again; only when every
/// target fails (or the one given does) is it a plain error naming each. Afterwards
/// each reconnects on its own, and one that goes away is shown disconnected while the
/// others keep refreshing. Each target's `pgbouncer` key is its own poolers (read by
/// its task, its pooled rows under its name); `--pgbouncer` with several targets is
/// refused before this (which server would it be in front of?).
async fn top_fleet(
    conn_args: &args::ConnArgs,
    targets: &[fleet::Target],
    args: &TopArgs,
) -> anyhow::Result<Outcome> {
    use pgkill_tui::ConnState;
    // Each target's poolers (its `pgbouncer` key), checked before the screen: one that
    // cannot be reached or read is a plain error naming its target.
    let mut poolers = Vec::new();
    for t in targets {
        poolers.push(usable_poolers(&t.pgbouncer).await.map_err(|e| {
            if targets.len() > 1 {
                anyhow::Error::new(UsageError(format!("target {}: {e:#}", t.name)))
            } else {
                e
            }
        })?);
    }
    let record = open_record(args)?;
    // A connection string that cannot be understood is bad input, whatever the others.
    let mut requested = Vec::new();
    for t in targets {
        requested.push(
            conn::resolved(conn_args, Some(&t.conninfo))
                .map_err(|e| e.context(format!("target {}", t.name)))?,
        );
    }
    let connected = futures_util::future::join_all(requested.iter().map(|settings| async move {
        pgkill_pg::connect::connect_reusable(settings, &pgkill_pg::connect::NoPrompt).await
    }))
    .await;
    let mut shown = Vec::new();
    let mut failures = Vec::new();
    for (((t, requested), c), poolers) in targets.iter().zip(requested).zip(connected).zip(poolers)
    {
        let (settings, at_start) = match c {
            Ok((_client, _task, settled)) => (settled, ConnState::Connected),
            Err(e) => {
                let text = format!("target {}: {e}", t.name);
                failures.push(text.clone());
                let state = if login_refused(&e) {
                    ConnState::AuthFailed(text)
                } else {
                    ConnState::Lost(text)
                };
                (requested, state)
            }
        };
        let connect: pgkill_tui::Connector = Box::new(move || {
            let settings = settings.clone();
            Box::pin(async move { conn::reconnect(&settings).await })
        });
        shown.push(pgkill_tui::Target {
            name: t.name.clone(),
            connect,
            at_start,
            poolers,
        });
    }
    if failures.len() == targets.len() {
        anyhow::bail!(if failures.len() == 1 {
            failures.remove(0)
        } else {
            format!("no target could be connected to: {}", failures.join("; "))
        });
    }
    pgkill_tui::run(
        shown,
        args.filters.to_filter(false),
        args.interval,
        conn_args.statement_timeout,
        pgkill_tui::Options {
            record,
            hidden_columns: args.columns.clone().map(|h| h.0).unwrap_or_default(),
        },
    )
    .await?;
    Ok(Outcome::Ok)
}

/// Whether connecting failed because the server refused the login (a wrong or missing
/// password, SQLSTATE 28P01; pg_hba.conf or NOLOGIN, 28000): trying again with the same
/// settings cannot help.
fn login_refused(e: &pgkill_pg::connect::ConnectError) -> bool {
    e.is_authentication_failure()
        || matches!(e, pgkill_pg::connect::ConnectError::AuthRejected { .. })
}

/// Arguments of `pgkill watch`.
#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// The policy file (TOML; see the README's "pgkill watch").
    #[arg(long = "policy", value_name = "FILE")]
    policy: std::path::PathBuf,
    /// Act on nothing; audit what would have been done (`"decision": "dry_run"`).
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// One evaluation pass over every target, then exit (exit codes as `kill`).
    #[arg(long = "once")]
    once: bool,
    /// Check the policy and that every target connects with the privileges it needs;
    /// exit 0, or 2 listing every problem.
    #[arg(long = "check")]
    check: bool,
    /// Serve /metrics (Prometheus) and /healthz here: a port (loopback), or an address
    /// and port such as 127.0.0.1:9898 (only an address written out listens beyond
    /// loopback).
    #[arg(long = "metrics", value_name = "ADDR")]
    metrics: Option<String>,
    /// Append the audit log (JSON lines) to this file (created 0600, never through a
    /// symlink, reopened on SIGHUP) instead of stdout.
    #[arg(long = "audit", value_name = "FILE")]
    audit: Option<std::path::PathBuf>,
}

async fn watch(
    conn_args: &args::ConnArgs,
    conninfo: Option<&str>,
    args: &WatchArgs,
) -> anyhow::Result<Outcome> {
    let metrics = match &args.metrics {
        Some(text) => Some(
            pgkill_watch::metrics::check_address(text).map_err(|e| UsageError(e.to_string()))?,
        ),
        None => None,
    };
    let options = pgkill_watch::Options {
        policy: args.policy.clone(),
        dry_run: args.dry_run,
        once: args.once,
        check: args.check,
        metrics,
        audit: args.audit.clone(),
        default_target: pgkill_pg::connect::ConnectArgs {
            host: conn_args.host.clone(),
            port: conn_args.port.clone(),
            user: conn_args.user.clone(),
            // A daemon never prompts: the password comes from .pgpass or PGPASSWORD.
            force_password_prompt: false,
            maintenance_db: conn_args.maintenance_db.clone(),
            conninfo: conninfo.map(str::to_owned),
        },
        statement_timeout: conn_args.statement_timeout,
    };
    Ok(Outcome::from_code(pgkill_watch::run(options).await?))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    // Writers wrap the I/O error (serde_json, csv): look through every cause.
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(BrokenPipe)
    })
}

/// One line: the error and its causes, without a backtrace.
fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        // A server error already says the server's message, its SQLSTATE and what to do:
        // the driver's own wording below it would only repeat it.
        if cause.downcast_ref::<pgkill_pg::Error>().is_some() {
            break;
        }
    }
    parts.join(": ")
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGKILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Log lines can hold server text (notices): escaped like every other message.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| output::Escaped::new(std::io::stderr()))
        .try_init();
}

//! `pgkill drop`, `rename`, `drain` and `unfence`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use pgkill_core::database::{Operation, Resolve};
use pgkill_core::fence::{FenceState, RestorePlan};
use pgkill_core::format_duration;
use pgkill_pg::connect::SystemEnv;
use pgkill_pg::databases::{self, Preflight, Progress, Request};
use pgkill_pg::sessions;

use crate::args::ConnArgs;
use crate::database_json::{OpDoc, ResultJson};
use crate::fences::describe;
use crate::inflight::{self, Signals};
use crate::{conn, fences, Outcome as Exit, UsageError};

fn duration(s: &str) -> Result<Duration, String> {
    pgkill_core::parse_duration(s).map_err(|e| e.to_string())
}

/// Options shared by drop, rename and drain.
#[derive(Debug, Clone, clap::Args)]
pub struct OpArgs {
    /// Let open transactions finish for this long (each session is ended as soon as it is
    /// outside a transaction), then end the rest.
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = duration)]
    grace: Duration,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long = "yes")]
    yes: bool,
    /// Print the preflight and change nothing.
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Roll back the database's prepared transactions (their changes are LOST).
    #[arg(long = "rollback-prepared")]
    rollback_prepared: bool,
    /// End logical replication from the database (walsenders, e.g. pg_recvlogical or a
    /// subscriber's): refused without it.
    #[arg(long = "terminate-walsenders")]
    terminate_walsenders: bool,
    /// Clear the template flag of a template database first.
    #[arg(long = "allow-template")]
    allow_template: bool,
    /// Print one JSON document (preflight, steps, sessions ended, restore) instead of
    /// text; needs -y or --dry-run.
    #[arg(long)]
    json: bool,
}

/// `pgkill drop DB`.
#[derive(Debug, clap::Args)]
pub struct DropArgs {
    /// The database to drop.
    #[arg(value_name = "DB")]
    pub(crate) db: String,
    #[command(flatten)]
    pub(crate) op: OpArgs,
}

/// `pgkill rename OLD NEW`.
#[derive(Debug, clap::Args)]
pub struct RenameArgs {
    /// The database to rename.
    #[arg(value_name = "OLD")]
    pub(crate) old: String,
    /// Its new name.
    #[arg(value_name = "NEW")]
    pub(crate) new: String,
    /// With --pgbouncer: resume the paused aliases once renamed (only once their
    /// [databases] entries lead to NEW; by default they stay paused, and pgkill says which
    /// entries to change).
    #[arg(long = "resume")]
    pub(crate) resume: bool,
    #[command(flatten)]
    pub(crate) op: OpArgs,
}

/// `pgkill drain DB`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The database to drain.
    #[arg(value_name = "DB")]
    pub(crate) db: String,
    /// Allow connections again once drained (default: leave it fenced until `pgkill unfence`).
    #[arg(long = "then-unfence")]
    pub(crate) then_unfence: bool,
    #[command(flatten)]
    pub(crate) op: OpArgs,
}

impl DropArgs {
    /// What the command line asks for.
    pub fn job(&self) -> Job<'_> {
        Job {
            op: Operation::Drop,
            name: &self.db,
            new_name: None,
            args: &self.op,
            then_unfence: false,
        }
    }
}

impl RenameArgs {
    /// What the command line asks for (`then_unfence` is --resume).
    pub fn job(&self) -> Job<'_> {
        Job {
            op: Operation::Rename,
            name: &self.old,
            new_name: Some(&self.new),
            args: &self.op,
            then_unfence: self.resume,
        }
    }
}

impl DrainArgs {
    /// What the command line asks for.
    pub fn job(&self) -> Job<'_> {
        Job {
            op: Operation::Drain,
            name: &self.db,
            new_name: None,
            args: &self.op,
            then_unfence: self.then_unfence,
        }
    }
}

/// `pgkill unfence DB`.
#[derive(Debug, clap::Args)]
pub struct UnfenceArgs {
    /// The database to restore.
    #[arg(value_name = "DB")]
    pub(crate) db: String,
    /// Print one JSON document (the record found, the restore) instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What one `drop`, `rename` or `drain` is asked to do: the command line's part, the same
/// on every server it runs on.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The operation.
    pub op: Operation,
    /// The database.
    pub name: &'a str,
    /// The new name (rename).
    pub new_name: Option<&'a str>,
    /// Its options.
    pub args: &'a OpArgs,
    /// `drain --then-unfence`, or rename's `--resume`.
    pub then_unfence: bool,
}

impl Job<'_> {
    /// `drop`, `rename` or `drain`.
    pub fn verb(&self) -> &'static str {
        match self.op {
            Operation::Drop => "drop",
            Operation::Rename => "rename",
            Operation::Drain => "drain",
        }
    }

    /// Whether `--json` and the confirmation go together (a question would mix with the
    /// JSON), and whether anyone can confirm: refused before connecting (exit 2).
    pub fn check(&self) -> anyhow::Result<()> {
        let (args, verb) = (self.args, self.verb());
        if args.json && !args.yes && !args.dry_run {
            anyhow::bail!(UsageError(format!(
                "{verb} --json needs -y (or --dry-run): a question would mix with the JSON"
            )));
        }
        crate::confirm::ensure_possible(
            args.yes,
            args.dry_run,
            &format!("{verb} {}", self.name),
            Some("preflight"),
        )
    }

    fn resolve(&self) -> Resolve {
        Resolve {
            rollback_prepared: self.args.rollback_prepared,
            terminate_walsenders: self.args.terminate_walsenders,
            allow_template: self.args.allow_template,
        }
    }

    /// The request `databases::run` carries out on one server.
    pub fn request(&self, poolers: Vec<pgkill_pg::pgbouncer::PoolerPlan>) -> Request {
        Request {
            op: self.op,
            name: self.name.to_owned(),
            new_name: self.new_name.map(str::to_owned),
            grace: self.args.grace,
            resolve: self.resolve(),
            then_unfence: self.op == Operation::Drain && self.then_unfence,
            deadline: Duration::from_secs(60),
            poolers,
            // `then_unfence` is rename's --resume (see lib.rs).
            resume: self.op == Operation::Rename && self.then_unfence,
        }
    }

    /// `--json`.
    pub fn json(&self) -> bool {
        self.args.json
    }

    /// `--dry-run`.
    pub fn dry_run(&self) -> bool {
        self.args.dry_run
    }

    /// `-y`.
    pub fn yes(&self) -> bool {
        self.args.yes
    }

    /// What the one confirmation asks about, after the preflights of several servers
    /// (each printed above it): on which of them, and the prepared transactions lost.
    pub fn question_on(&self, targets: &[&str], prepared: usize) -> String {
        format!(
            "{} {} on {} target(s) ({})?{}",
            capitalised(self.verb()),
            self.name,
            targets.len(),
            targets.join(", "),
            self.prepared_warning(prepared)
        )
    }

    /// The JSON document of this job on one server, with what the preflight found.
    pub fn doc<'a>(
        &'a self,
        caps: &sessions::Capabilities,
        connected: &conn::Connected,
        pre: &'a Preflight,
    ) -> OpDoc<'a> {
        OpDoc::new(
            caps,
            &connected.settings,
            self.verb(),
            self.name,
            self.new_name,
            self.args.dry_run,
            Some(pre),
        )
    }

    /// The JSON document after carrying out: what was done, or why it failed.
    pub fn outcome_doc<'a>(
        &'a self,
        caps: &sessions::Capabilities,
        connected: &conn::Connected,
        pre: &'a Preflight,
        result: &'a pgkill_pg::Result<databases::Report>,
    ) -> OpDoc<'a> {
        let mut d = self.doc(caps, connected, pre);
        match result {
            Ok(report) => d.result = Some(ResultJson::of(self.op, self.then_unfence, report)),
            Err(e) => d.error = Some(e.to_string()),
        }
        d
    }

    /// What the confirmation asks about, after the preflight of one server.
    pub fn question(&self, pre: &Preflight) -> String {
        let mut question = format!(
            "{} {}? {}.",
            capitalised(self.verb()),
            self.name,
            capitalised(&pre.ending.describe())
        );
        question.push_str(&self.prepared_warning(pre.blockers.prepared.len()));
        question
    }

    /// The warning the confirmation adds when prepared transactions are rolled back.
    pub fn prepared_warning(&self, prepared: usize) -> String {
        if self.args.rollback_prepared && prepared > 0 {
            format!(" This ROLLS BACK {prepared} prepared transaction(s): their changes are lost.")
        } else {
            String::new()
        }
    }
}

/// One server's look before anything changes: what it can do, the legacy records of
/// older pgkill versions adopted (each line said through `tell`), and the preflight.
pub async fn examine(
    connected: &conn::Connected,
    job: &Job<'_>,
    tell: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<(sessions::Capabilities, Preflight)> {
    let client = &connected.client;
    let caps = sessions::capabilities(client).await?;
    // A standby cannot take a record (it is read-only); the preflight refuses there.
    if !caps.in_recovery {
        for line in fences::adopt_legacy(client, &connected.server, job.name).await? {
            tell(&line);
        }
    }
    let pre =
        databases::preflight(client, &caps, job.op, job.name, job.new_name, job.resolve()).await?;
    Ok((caps, pre))
}

/// Why the preflight refuses the job on this server (nothing was changed), as the error
/// to report; `None` when it may go ahead.
pub async fn refusal(
    connected: &conn::Connected,
    caps: &sessions::Capabilities,
    pre: &Preflight,
    job: &Job<'_>,
) -> Option<anyhow::Error> {
    if pre.refusals.is_empty() {
        return None;
    }
    let mut refusals = pre.refusals.clone();
    if caps.in_recovery {
        refusals.extend(conn::primary_hint(connected).await);
    }
    Some(
        UsageError(format!(
            "refusing to {} {}; nothing was changed:\n  - {}",
            job.verb(),
            job.name,
            refusals.join("\n  - ")
        ))
        .into(),
    )
}

/// The progress line of a drain (`\r… session(s) left`), for a terminal.
pub fn progress_line(p: Progress) -> String {
    format!(
        "\r{} session(s) left, {} in a transaction, {} of grace left   ",
        p.sessions,
        p.in_transaction,
        format_duration(p.grace_left)
    )
}

/// Carries out `req` on one server whose preflight passed, through `databases::run`
/// (fence, drain, act; on failure or `interrupt`, the database is put back as it was).
pub async fn carry_out(
    connected: &conn::Connected,
    caps: &sessions::Capabilities,
    pre: &Preflight,
    req: &Request,
    show: &(dyn Fn(Progress) + Sync),
    interrupt: databases::Interrupt<'_>,
) -> pgkill_pg::Result<databases::Report> {
    // The settings carry `--statement-timeout` as a startup option.
    let settings = connected.settings.clone();
    let connect_to = move |db: String| {
        let s = settings.clone();
        Box::pin(async move { conn::connect_to(&s, db).await })
            as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
    };
    databases::run(
        &connected.client,
        caps,
        pre,
        req,
        &connect_to,
        show,
        interrupt,
    )
    .await
}

/// The error to report when carrying out failed: what happened, and how the database was
/// left (`run` has put it back as it was before, or says why it could not).
pub fn failure(
    job: &Job<'_>,
    pre: &Preflight,
    req: &Request,
    e: pgkill_pg::Error,
    statement_timeout: Duration,
) -> anyhow::Error {
    let (verb, name, op) = (job.verb(), job.name, job.op);
    match e {
        e @ (pgkill_pg::Error::StillFenced { .. } | pgkill_pg::Error::PoolersLeft { .. }) => {
            anyhow::anyhow!("{verb} {name} failed: {e}")
        }
        e => anyhow::anyhow!(
            "{verb} {name} failed: {e}{}; {}{}",
            if matches!(e, pgkill_pg::Error::Cancelled(_)) {
                format!(" ({})", inflight::timeout_hint(statement_timeout))
            } else {
                String::new()
            },
            if pre.fence().is_some() {
                "it stays fenced as it was before"
            } else {
                "the database's settings were restored"
            },
            if req.poolers.is_empty() {
                ""
            } else if op == Operation::Drop {
                ", and its aliases at PgBouncer enabled and resumed"
            } else {
                ", and its aliases at PgBouncer resumed"
            }
        ),
    }
}

/// Before anything changes on one server: every pooler in front of it
/// (`connected.poolers`) must answer, let this user pause, and say which of its aliases
/// lead to the database (an error otherwise: nothing has changed yet). The plans, and a
/// line for people per pooler saying what will be done there.
pub async fn poolers_for(
    connected: &conn::Connected,
    job: &Job<'_>,
) -> anyhow::Result<(Vec<pgkill_pg::pgbouncer::PoolerPlan>, Vec<String>)> {
    let (op, name, then_unfence) = (job.op, job.name, job.then_unfence);
    let (pooler_args, _) = &connected.poolers;
    if pooler_args.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let server =
        pgkill_pg::pgbouncer::server_identity(&connected.client, &connected.settings).await?;
    let poolers = pooler_plans(pooler_args, name, &server).await?;
    let lines = poolers
        .iter()
        .map(|plan| {
            let aliases = if plan.aliases.is_empty() {
                "nothing (no alias leads to this database)".to_owned()
            } else {
                plan.aliases.join(", ")
            };
            let what = match op {
                Operation::Drain if then_unfence => format!("will pause {aliases} first (queries queue there while {name} is drained), and resume them when it is unfenced"),
                Operation::Drain => format!("will pause {aliases} first (queries queue there while {name} is drained), and resume them at `pgkill unfence`"),
                Operation::Rename if then_unfence => format!("will pause {aliases} first, and resume them once renamed (--resume)"),
                Operation::Rename => format!("will pause {aliases} first; they stay paused until their [databases] entries lead to the new name"),
                Operation::Drop => format!("will disable {aliases} and drop their connections (DISABLE, KILL) first"),
            };
            format!("PgBouncer at {}: {what}", plan.pooler.name)
        })
        .collect();
    Ok((poolers, lines))
}

/// Runs drop / rename / drain on one server.
pub async fn run(
    conn_args: &ConnArgs,
    conninfo: Option<&str>,
    job: &Job<'_>,
) -> anyhow::Result<Exit> {
    let args = job.args;
    let verb = job.verb();
    job.check()?;
    let connected = inflight::connect(conn_args, conninfo).await?;
    let (poolers, lines) = poolers_for(&connected, job).await?;
    for line in lines {
        writeln!(crate::output::lines_for_people(), "{line}")?;
    }
    let mut signals = Signals::listen()?;
    let mut out = crate::output::lines_for_people();
    // Until the go-ahead nothing is changed: Ctrl-C only cancels the statement in flight.
    let ready = inflight::guard(&connected, &mut signals, async {
        let mut tell = |line: &str| eprintln!("pgkill: {}", pgkill_core::printable(line));
        let (caps, pre) = examine(&connected, job, &mut tell).await?;
        if args.json {
            if !pre.refusals.is_empty() || args.dry_run {
                crate::output::json(&mut out, &job.doc(&caps, &connected, &pre))?;
            }
        } else {
            print_preflight(&mut out, &pre, verb)?;
        }
        if let Some(refused) = refusal(&connected, &caps, &pre, job).await {
            out.flush()?;
            return Err(refused);
        }
        if args.dry_run {
            if !args.json {
                writeln!(out, "Dry run: nothing was changed.")?;
            }
            return Ok(Err(Exit::Ok));
        }
        if !args.yes && !crate::confirm::ask(&mut out, &job.question(&pre)).await? {
            return Ok(Err(Exit::Error));
        }
        Ok(Ok((caps, pre)))
    })
    .await?;
    let (caps, pre) = match ready {
        Ok(ready) => ready,
        Err(exit) => return Ok(exit),
    };
    let req = job.request(poolers);
    let tty = std::io::stderr().is_terminal();
    let show = move |p: Progress| {
        if tty {
            eprint!("{}", progress_line(p));
        }
    };
    let connected_ref = &connected;
    let interrupt = async move {
        let why = signals.recv().await;
        // Stop what the server is doing for us (a DROP waiting on sessions) first.
        inflight::cancel(connected_ref).await;
        why.to_owned()
    };
    tokio::pin!(interrupt);
    let result = carry_out(&connected, &caps, &pre, &req, &show, interrupt.as_mut()).await;
    if tty {
        eprintln!();
    }
    if args.json {
        crate::output::json(&mut out, &job.outcome_doc(&caps, &connected, &pre, &result))?;
        out.flush()?;
    }
    let report = match result {
        Ok(report) if args.json => {
            drop(report);
            return Ok(Exit::Ok);
        }
        Ok(report) => report,
        Err(e) => return Err(failure(job, &pre, &req, e, conn_args.statement_timeout)),
    };
    tell_report(&mut out, job, &report)?;
    out.flush()?;
    Ok(Exit::Ok)
}

/// What was done on one server, for people (text after a success).
pub fn tell_report(
    out: &mut dyn Write,
    job: &Job<'_>,
    report: &databases::Report,
) -> std::io::Result<()> {
    let (op, name, new_name) = (job.op, job.name, job.new_name);
    if !report.paused.is_empty() {
        writeln!(
            out,
            "{} at PgBouncer: {} in {:.1}s{}.",
            if op == Operation::Drop {
                "Disabled and dropped"
            } else {
                "Paused"
            },
            report
                .paused
                .iter()
                .map(|(p, a)| format!("{a} ({p})"))
                .collect::<Vec<_>>()
                .join(", "),
            report.pause_took.unwrap_or_default().as_secs_f64(),
            if op == Operation::Drop {
                " (applications are told the database is gone instead of retrying logins)"
            } else {
                " (applications' queries queued there instead of failing)"
            }
        )?;
    }
    if !report.ended_at_pooler.is_empty() {
        writeln!(
            out,
            "Ended at PgBouncer, still in a transaction when --grace ran out: {}.",
            report.ended_at_pooler.join("; ")
        )?;
    }
    if !report.resumed.is_empty() {
        writeln!(
            out,
            "Resumed at PgBouncer: {}.",
            report
                .resumed
                .iter()
                .map(|(p, a)| format!("{a} ({p})"))
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    let done_at: Vec<String> = report
        .paused
        .iter()
        .map(|(p, a)| format!("{a} (PgBouncer at {p})"))
        .collect();
    match op {
        Operation::Drop if !done_at.is_empty() => writeln!(
            out,
            "Remove these [databases] entries, which lead to the dropped database, and RELOAD each PgBouncer (they are disabled meanwhile): {}.",
            done_at.join(", ")
        )?,
        Operation::Rename if !done_at.is_empty() && report.resumed.is_empty() => writeln!(
            out,
            "Point these [databases] entries at {} and RELOAD each PgBouncer, then RESUME them on its console (they stay paused until then): {}.",
            new_name.unwrap_or_default(),
            done_at.join(", ")
        )?,
        _ => {}
    }
    for problem in &report.pooler_problems {
        eprintln!(
            "pgkill: warning: {} (run `pgkill unfence {}` to retry)",
            pgkill_core::printable(problem),
            fences::shell_word(name)
        );
    }
    if !report.prepared_rolled_back.is_empty() {
        writeln!(
            out,
            "Rolled back prepared transaction(s): {}",
            report.prepared_rolled_back.join(", ")
        )?;
    }
    let ended = format!(
        "{} session(s) ended ({} outside a transaction during the grace period, {} terminated; {} open transaction(s) rolled back)",
        report.ended_idle + report.terminated,
        report.ended_idle,
        report.terminated,
        report.rolled_back
    );
    match op {
        Operation::Drop => writeln!(
            out,
            "Dropped {name}: {ended}, {} attempt(s).",
            report.attempts
        )?,
        Operation::Rename => {
            let new = new_name.unwrap_or_default();
            let after = match &report.already_fenced {
                Some(r) => format!(
                    "{new} stays fenced as {name} was ({}) until `pgkill unfence {}`",
                    describe(r),
                    fences::shell_word(new)
                ),
                None => report
                    .restored
                    .as_ref()
                    .map(|p| describe_restore(new, p))
                    .unwrap_or_default(),
            };
            writeln!(
                out,
                "Renamed {name} to {new}: {ended}, {} attempt(s); {after}.",
                report.attempts
            )?
        }
        Operation::Drain if report.left_fenced => {
            if let Some(r) = &report.already_fenced {
                writeln!(out, "{name} was already fenced ({}): drained it again, keeping the settings recorded then.", describe(r))?;
            }
            writeln!(
                out,
                "Drained {name}: {ended}. It stays fenced (no new connections) until `pgkill unfence {}`.",
                fences::shell_word(name)
            )?
        }
        Operation::Drain => writeln!(
            out,
            "Drained {name}: {ended}; {}.",
            report
                .restored
                .as_ref()
                .map(|p| describe_restore(name, p))
                .unwrap_or_default()
        )?,
    }
    Ok(())
}

fn capitalised(verb: &str) -> String {
    let mut c = verb.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn describe_restore(name: &str, plan: &RestorePlan) -> String {
    let mut s = if plan.gone {
        format!("{name} no longer exists, nothing to restore")
    } else if plan.is_noop() {
        format!("{name}'s settings were already as they were")
    } else {
        format!("{name}'s connection settings restored")
    };
    for change in &plan.foreign_changes {
        s.push_str(&format!(" (left alone: {change})"));
    }
    s
}

pub fn print_preflight(out: &mut dyn Write, pre: &Preflight, verb: &str) -> std::io::Result<()> {
    let s = &pre.info.settings;
    writeln!(
        out,
        "Preflight for {verb} {:?} (oid {}, owner {}): allow_connections={}, connection_limit={}, template={}, privileges={}",
        pre.info.name,
        pre.info.oid,
        pre.info.owner,
        s.allow_connections,
        s.connection_limit,
        s.is_template,
        s.acl.as_ref().map(|a| a.join(",")).unwrap_or_else(|| "default".into())
    )?;
    writeln!(out, "  {}", pre.ending.describe())?;
    for p in &pre.blockers.prepared {
        writeln!(
            out,
            "  prepared transaction {:?} (owner {}, prepared {})",
            p.gid, p.owner, p.prepared
        )?;
    }
    for slot in &pre.blockers.slots {
        writeln!(
            out,
            "  logical slot {} ({})",
            slot.name,
            match slot.active_pid {
                Some(pid) if slot.active => format!("in use by walsender pid {pid}"),
                _ => "inactive: dropped with the database".into(),
            }
        )?;
    }
    match &pre.blockers.subscriptions {
        Some(subs) => {
            for sub in subs {
                writeln!(out, "  subscription {sub}")?;
            }
        }
        None => writeln!(out, "  subscriptions: not visible to you (superuser only)")?,
    }
    Ok(())
}

/// `pgkill unfence DB`: restores the settings recorded when DB was first fenced, from
/// the record on the server (whichever machine fenced it).
pub async fn unfence(
    conn_args: &ConnArgs,
    conninfo: Option<&str>,
    args: &UnfenceArgs,
) -> anyhow::Result<Exit> {
    let connected = conn::connect_quietly(conn_args, conninfo).await?;
    conn::tell(&connected.settings);
    let mut signals = Signals::listen()?;
    let mut out = crate::output::lines_for_people();
    let mut tell = |line: &str| eprintln!("pgkill: {}", pgkill_core::printable(line));
    inflight::guard(
        &connected,
        &mut signals,
        unfence_on(&connected, args, &mut out, &mut tell, true),
    )
    .await
}

/// `unfence` on one server, writing what it did (text, or the JSON document) to `out`,
/// and the adopted legacy records through `tell`; `notice`: also say on stderr which
/// other databases of the server are fenced.
pub async fn unfence_on(
    connected: &conn::Connected,
    args: &UnfenceArgs,
    out: &mut dyn Write,
    tell: &mut dyn FnMut(&str),
    notice: bool,
) -> anyhow::Result<Exit> {
    let client = &connected.client;
    let db = &args.db;
    let caps = sessions::capabilities(client).await?;
    if let Err(why) = pgkill_core::database::check_name("database", db, caps.max_name_bytes) {
        anyhow::bail!(UsageError(why));
    }
    if caps.in_recovery {
        let mut refusals = vec![format!(
            "the server is a standby (in recovery, read-only): unfence {db} on the primary, which the standby then replays"
        )];
        refusals.extend(conn::primary_hint(connected).await);
        anyhow::bail!(UsageError(format!(
            "refusing to unfence {db}; nothing was changed:\n  - {}",
            refusals.join("\n  - ")
        )));
    }
    for line in fences::adopt_legacy(client, &connected.server, db).await? {
        tell(&line);
    }
    if notice {
        fences::notice(client, Some(db)).await;
    }
    let Some(info) = databases::info(client, db).await? else {
        anyhow::bail!(UsageError(format!("database {db:?} does not exist")));
    };
    let record = match info.comment.as_deref().and_then(pgkill_core::fence::FenceRecord::from_comment) {
        None if args.json => {
            let mut d = OpDoc::new(&caps, &connected.settings, "unfence", db, None, false, None);
            d.result = Some(ResultJson::unfence(None, None, !info.settings.allow_connections));
            crate::output::json(out, &d)?;
            return Ok(Exit::Ok);
        }
        None => {
            write!(out, "No pgkill fence of {db:?} is recorded: nothing to do.")?;
            if !info.settings.allow_connections {
                write!(out, " (It does not allow connections, but pgkill did not fence it: ALTER DATABASE … ALLOW_CONNECTIONS true lets clients in.)")?;
            }
            writeln!(out)?;
            return Ok(Exit::Ok);
        }
        Some(Err(e)) => anyhow::bail!(UsageError(format!(
            "{db:?} has a pgkill fence record that cannot be read ({e}); its comment (psql: \\l+ {db}) holds what it said: restore the settings by hand, then COMMENT ON DATABASE … IS NULL"
        ))),
        Some(Ok(r)) => r,
    };
    if record.state == FenceState::InProgress
        && databases::liveness(&record.by) == databases::Liveness::Running
    {
        anyhow::bail!(UsageError(format!(
            "{db:?} is fenced by pgkill pid {}, which is still running `pgkill {}`: stop it (Ctrl-C restores the settings) instead",
            record.by.pid,
            match record.operation {
                Operation::Drop => "drop",
                Operation::Rename => "rename",
                Operation::Drain => "drain",
            }
        )));
    }
    let plan = databases::restore(client, info.oid, &record).await?;
    // The server first, then the poolers: queued applications then find the database
    // open (no failed login, no login backoff at the pooler).
    let (pooler_args, _) = connected.poolers.clone();
    let mut resumed = Vec::new();
    let mut problems = Vec::new();
    for fence in &record.poolers {
        let given = pooler_args
            .iter()
            .filter_map(|c| pgkill_pg::pgbouncer::Pooler::resolve(c, &SystemEnv).ok())
            .find(|p| p.is_at(fence));
        let pooler = match given {
            Some(p) => p,
            None => match pgkill_pg::pgbouncer::Pooler::of_fence(fence, &SystemEnv) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(e.to_string());
                    continue;
                }
            },
        };
        let failed = pgkill_pg::pgbouncer::resume(&pooler, &fence.aliases).await;
        if failed.is_empty() {
            resumed.push(format!("{} ({})", fence.aliases.join(", "), pooler.name));
        }
        problems.extend(failed);
    }
    if args.json {
        let mut d = OpDoc::new(&caps, &connected.settings, "unfence", db, None, false, None);
        d.result = Some(ResultJson::unfence(Some(&record), Some(&plan), false));
        crate::output::json(out, &d)?;
    } else {
        writeln!(
            out,
            "Unfenced: {} (it was fenced {}).",
            describe_restore(db, &plan),
            describe(&record)
        )?;
        if !resumed.is_empty() {
            writeln!(out, "Resumed at PgBouncer: {}.", resumed.join("; "))?;
        }
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "{db} is unfenced on the server, but aliases pgkill paused could not be resumed:\n  - {}\nrun `pgkill unfence {}` again (with --pgbouncer CONNINFO for the console's password), or RESUME them on the console",
            problems.join("\n  - "),
            fences::shell_word(db)
        );
    }
    Ok(Exit::Ok)
}

/// The aliases of `name` to pause at each pooler of `conninfos`, after checking that the
/// console answers, is PgBouncer and lets this user pause (exit 2 otherwise: nothing has
/// changed yet).
async fn pooler_plans(
    conninfos: &[String],
    name: &str,
    server: &pgkill_core::pooler::ServerIdentity,
) -> anyhow::Result<Vec<pgkill_pg::pgbouncer::PoolerPlan>> {
    let mut plans = Vec::new();
    for c in conninfos {
        let pooler = pgkill_pg::pgbouncer::Pooler::resolve(c, &SystemEnv)
            .map_err(|e| UsageError(format!("{e}; nothing was changed")))?;
        let console = pooler
            .connect()
            .await
            .map_err(|e| UsageError(format!("{e}; nothing was changed")))?;
        let state = pooler
            .read(&console)
            .await
            .map_err(|e| UsageError(format!("{e}; nothing was changed")))?;
        pooler.check_admin(&console).await.map_err(|e| {
            UsageError(format!(
                "{e}: the console's user must be in PgBouncer's admin_users to pause {name}; nothing was changed"
            ))
        })?;
        let (aliases, elsewhere) =
            pgkill_pg::pgbouncer::aliases_of(&pooler, &state, name, server).await;
        for e in &elsewhere {
            eprintln!(
                "pgkill: note: PgBouncer at {}: alias {e} is taken to lead to another server and is left alone",
                pooler.name
            );
        }
        for a in &aliases {
            pgkill_pg::pgbouncer::check_alias(a)
                .map_err(|e| UsageError(format!("{e}; nothing was changed")))?;
        }
        plans.push(pgkill_pg::pgbouncer::PoolerPlan {
            pooler,
            version: state.version,
            aliases,
        });
    }
    Ok(plans)
}

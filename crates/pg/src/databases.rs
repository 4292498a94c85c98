//! The executor for database operations: preflight, fence, drain, drop / rename, and
//! restore. A fence and its record (see [`pgkill_core::fence`]) are written in one
//! transaction on the server, and undone exactly (only what pgkill changed, only if nobody
//! changed it since) on any failure or interruption, from the record this process holds.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pgkill_core::database::{
    self as plan, Blockers, DbInfo, DbSettings, Ending, Operation, PreparedXact, Resolve, Slot,
    Walsender,
};
use pgkill_core::fence::{self, FenceRecord, FenceState, Holder, RestorePlan, UnreadableRecord};
use pgkill_core::quote_literal;
use tokio_postgres::{Client, Row};

use crate::exec::{batch, query, query_opt};
use crate::sessions::Capabilities;
use crate::{Error, Result};

/// Opens a connection to another database of the same server (to resolve prepared
/// transactions from inside their database).
pub type ConnectTo<'a> =
    &'a (dyn Fn(String) -> Pin<Box<dyn Future<Output = Result<Client>> + Send>> + Sync);

/// What was found before acting.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The database.
    pub info: DbInfo,
    /// What keeps it busy.
    pub blockers: Blockers,
    /// The sessions connected to it now, all of which the operation ends.
    pub ending: Ending,
    /// Why the operation cannot go ahead (empty when it can).
    pub refusals: Vec<String>,
}

impl Preflight {
    /// The fence record the database already has (a drain left it fenced, or a pgkill
    /// died holding it), if any.
    pub fn fence(&self) -> Option<Result<FenceRecord, UnreadableRecord>> {
        self.info
            .comment
            .as_deref()
            .and_then(FenceRecord::from_comment)
    }
}

fn settings_from(row: &Row) -> Result<DbInfo> {
    let oid: i64 = row.try_get("oid")?;
    Ok(DbInfo {
        oid: u32::try_from(oid).map_err(|_| Error::Protocol("database oid out of range"))?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        settings: DbSettings {
            allow_connections: row.try_get("datallowconn")?,
            connection_limit: row.try_get("datconnlimit")?,
            acl: row.try_get("acl")?,
            is_template: row.try_get("datistemplate")?,
        },
        comment: row.try_get("comment")?,
    })
}

/// Reads database `name`, if it exists.
pub async fn info(client: &Client, name: &str) -> Result<Option<DbInfo>> {
    query(client, &plan::db_info(name))
        .await?
        .first()
        .map(settings_from)
        .transpose()
}

/// Reads database `oid`, if it exists.
pub async fn info_by_oid(client: &Client, oid: u32) -> Result<Option<DbInfo>> {
    query(client, &plan::db_info_by_oid(oid))
        .await?
        .first()
        .map(settings_from)
        .transpose()
}

async fn count(client: &Client, oid: u32) -> Result<i64> {
    let rows = query(client, &plan::count_sessions(oid)).await?;
    Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(0))
}

/// Why nothing can be changed on a standby: the primary must do it (and the standby
/// replays it).
pub fn standby_refusal(op: Operation, name: &str) -> String {
    let verb = match op {
        Operation::Drop => "drop",
        Operation::Rename => "rename",
        Operation::Drain => "drain",
    };
    format!(
        "the server is a standby (in recovery, read-only): {verb} {name} on the primary, which the standby then replays"
    )
}

/// Checks everything before anything is changed.
pub async fn preflight(
    client: &Client,
    caps: &Capabilities,
    op: Operation,
    name: &str,
    new_name: Option<&str>,
    resolve: Resolve,
) -> Result<Preflight> {
    plan::check_name("database", name, caps.max_name_bytes).map_err(|e| Error::Refused(vec![e]))?;
    let standby = caps.in_recovery.then(|| standby_refusal(op, name));
    let Some(info) = info(client, name).await? else {
        let mut refusals: Vec<String> = standby.into_iter().collect();
        refusals.push(format!("database {name:?} does not exist"));
        return Err(Error::Refused(refusals));
    };
    let (prepared_q, slots_q) = plan::blockers(name);
    let prepared = query(client, &prepared_q)
        .await?
        .iter()
        .map(|r| {
            Ok(PreparedXact {
                gid: r.try_get(0)?,
                owner: r.try_get(1)?,
                prepared: r.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let slots = query(client, &slots_q)
        .await?
        .iter()
        .map(|r| {
            Ok(Slot {
                name: r.try_get(0)?,
                active: r.try_get(1)?,
                active_pid: r.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let subscriptions = match query(client, &plan::subscriptions(info.oid)).await {
        Ok(rows) => Some(
            rows.iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<Vec<String>, _>>()?,
        ),
        Err(Error::PermissionDenied(_)) => None,
        Err(e) => return Err(e),
    };
    let blockers = Blockers {
        prepared,
        slots,
        subscriptions,
    };
    let connected: String = query_opt(client, &plan::current_database())
        .await?
        .ok_or(Error::Protocol("current_database() returned no row"))?
        .try_get(0)?;
    let ending = ending(client, info.oid).await?;
    let mut refusals: Vec<String> = standby.into_iter().collect();
    refusals.extend(plan::refusals(
        op, &info, &blockers, &ending, resolve, &connected,
    ));
    if !caps.caller.superuser && info.owner != caps.caller.user {
        refusals.push(format!(
            "only the owner of {name} ({}) or a superuser may {}; you are {}",
            info.owner,
            match op {
                Operation::Drop => "drop it",
                Operation::Rename => "rename it",
                Operation::Drain => "fence it",
            },
            caps.caller.user
        ));
    }
    if let Some(new) = new_name {
        let bad = plan::rename_refusals(name, new, caps.max_name_bytes);
        if bad.is_empty() && self::info(client, new).await?.is_some() {
            refusals.push(format!("a database named {new:?} already exists"));
        }
        refusals.extend(bad);
        let createdb: bool = query_opt(client, &plan::caller_can_create_databases())
            .await?
            .map(|r| r.try_get(0))
            .transpose()?
            .unwrap_or(false);
        if !createdb {
            refusals.push(format!(
                "renaming a database needs the CREATEDB privilege, which {} lacks",
                caps.caller.user
            ));
        }
    }
    if !caps.caller.superuser {
        // Sessions left running would make DROP / RENAME fail after the fence went up.
        let rows = query(client, &plan::unsignallable_sessions(info.oid)).await?;
        if !rows.is_empty() {
            let supers = rows.iter().filter(|r| r.get::<_, bool>(1)).count();
            let mut users: Vec<String> = rows
                .iter()
                .filter_map(|r| r.get::<_, Option<String>>(0))
                .collect();
            users.sort();
            users.dedup();
            refusals.push(format!(
                "{} session(s) connected to {name} belong to roles you ({}) cannot signal: {}{}. Ask a superuser, or end them first",
                rows.len(),
                caps.caller.user,
                users.join(", "),
                if supers > 0 { format!(" ({supers} superuser session(s): only a superuser can end them)") } else { String::new() }
            ));
        }
    }
    if let Some(Err(e)) = info.comment.as_deref().and_then(FenceRecord::from_comment) {
        refusals.push(format!(
            "{name} has a pgkill fence record that cannot be read ({e}): its comment holds it; restore the settings it names by hand, then COMMENT ON DATABASE … IS NULL"
        ));
    }
    Ok(Preflight {
        info,
        blockers,
        ending,
        refusals,
    })
}

/// Who ending every session of database `oid` ends.
async fn ending(client: &Client, oid: u32) -> Result<Ending> {
    let mut ending = Ending::default();
    for row in query(client, &plan::sessions_to_end(oid)).await? {
        let (pid, superuser, walsender): (i32, bool, bool) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        ending.sessions += 1;
        if walsender {
            ending.walsenders.push(Walsender {
                pid,
                slot: row.try_get(3)?,
            });
        } else if superuser {
            ending.superuser += 1;
        }
    }
    Ok(ending)
}

/// Progress of a drain, for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Sessions still connected.
    pub sessions: i64,
    /// Of those, inside a transaction.
    pub in_transaction: i64,
    /// Grace time left.
    pub grace_left: Duration,
}

/// The request.
#[derive(Debug, Clone)]
pub struct Request {
    /// What to do.
    pub op: Operation,
    /// The database.
    pub name: String,
    /// The new name (rename).
    pub new_name: Option<String>,
    /// Let transactions finish for this long (sessions are ended as soon as they are
    /// outside a transaction), then end the rest.
    pub grace: Duration,
    /// Blockers to resolve deliberately.
    pub resolve: Resolve,
    /// `drain --then-unfence`.
    pub then_unfence: bool,
    /// How long to keep retrying DROP / RENAME against sessions that keep arriving.
    pub deadline: Duration,
    /// `--pgbouncer`: the aliases of the database at each pooler, paused first (`drain`,
    /// `rename`) or disabled and killed (`drop`).
    pub poolers: Vec<crate::pgbouncer::PoolerPlan>,
    /// `rename --resume`: resume the aliases once renamed (they still lead to the old
    /// name until their `[databases]` entries are changed).
    pub resume: bool,
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Sessions terminated while draining.
    pub terminated: i64,
    /// Of those, sessions whose open transaction was rolled back.
    pub rolled_back: i64,
    /// Sessions ended during the grace period outside a transaction.
    pub ended_idle: i64,
    /// DROP / RENAME attempts.
    pub attempts: u32,
    /// Whether pgkill fenced the database (not an invalid one, which is only dropped).
    pub fenced: bool,
    /// Prepared transactions rolled back (`--rollback-prepared`).
    pub prepared_rolled_back: Vec<String>,
    /// The fence the database already had when the operation began (it stays up after
    /// a rename, and a second drain keeps its original settings).
    pub already_fenced: Option<FenceRecord>,
    /// Whether the database is left fenced (a drain without --then-unfence, or an
    /// operation on a database that was already fenced).
    pub left_fenced: bool,
    /// Restoration done at the end (rename, --then-unfence).
    pub restored: Option<RestorePlan>,
    /// Aliases paused at each pooler (`--pgbouncer`): `(pooler, alias)`.
    pub paused: Vec<(String, String)>,
    /// Aliases resumed at the end (`--then-unfence`, or on failure).
    pub resumed: Vec<(String, String)>,
    /// How long the pausing took (the applications' queries queued from its start).
    pub pause_took: Option<Duration>,
    /// Application connections ended at a pooler because their transactions outlasted
    /// `--grace` (so that the pause could complete).
    pub ended_at_pooler: Vec<String>,
    /// Resumes that failed (the aliases stay paused: `pgkill unfence` retries them).
    pub pooler_problems: Vec<String>,
    /// Pids terminated so far (a session signalled again while it exits counts once).
    signalled: std::collections::BTreeSet<i32>,
}

/// Something that, when it completes, interrupts an operation (Ctrl-C, SIGTERM) with the
/// reason it gives.
pub type Interrupt<'a> = Pin<&'a mut (dyn Future<Output = String> + Send)>;

/// This pgkill process, as a fence record names its holder.
pub fn this_holder(role: &str) -> Holder {
    Holder {
        host: host_name(),
        pid: std::process::id(),
        os_user: nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| nix::unistd::geteuid().to_string()),
        role: role.to_owned(),
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Whether the pgkill that holds a fence is still at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// This very process.
    ThisProcess,
    /// A pgkill process on this machine.
    Running,
    /// It ran on this machine and is gone.
    Gone,
    /// It ran on another machine: pgkill cannot tell.
    OtherMachine,
}

/// Checks the holder of a fence: on this machine, by its pid, and that the process with
/// that pid is a pgkill (a pid can be reused).
pub fn liveness(by: &Holder) -> Liveness {
    if by.host != host_name() {
        return Liveness::OtherMachine;
    }
    if by.pid == std::process::id() {
        return Liveness::ThisProcess;
    }
    match std::fs::read_to_string(format!("/proc/{}/comm", by.pid)) {
        Ok(comm) if comm.trim_end() == "pgkill" => Liveness::Running,
        _ => Liveness::Gone,
    }
}

/// Carries out `req` after a passed `pre`flight: fence (settings and record in one
/// transaction), drain, act. On failure or `interrupt`, puts the database back as it was
/// before (from the record this process holds, not from anything it reads back) and
/// returns the error.
pub async fn run(
    client: &Client,
    caps: &Capabilities,
    pre: &Preflight,
    req: &Request,
    connect_to: ConnectTo<'_>,
    progress: &(dyn Fn(Progress) + Sync),
    interrupt: Interrupt<'_>,
) -> Result<Report> {
    let mut report = Report::default();
    let info = &pre.info;
    // Prepared transactions can only be finished from inside their database, so before
    // the fence shuts the door.
    if req.resolve.rollback_prepared && !pre.blockers.prepared.is_empty() {
        let inside = connect_to(info.name.clone()).await?;
        for p in &pre.blockers.prepared {
            batch(
                &inside,
                &format!("ROLLBACK PREPARED {}", quote_literal(&p.gid)?),
            )
            .await?;
            report.prepared_rolled_back.push(p.gid.clone());
        }
    }
    // An invalid database (an interrupted DROP) accepts no connections and no ALTER:
    // there is nothing to fence or restore, only the DROP to finish.
    if info.is_invalid() && req.op == Operation::Drop {
        report.attempts = 1;
        batch(client, &plan::drop_database(caps.version, &info.name)?).await?;
        return Ok(report);
    }
    // The preflight refuses a record it cannot read.
    let prior = pre.fence().and_then(|r| r.ok());
    let mut fenced = match &prior {
        Some(p) => p.fenced.clone(),
        None => info.settings.clone(),
    };
    fenced.allow_connections = false;
    if req.resolve.allow_template {
        fenced.is_template = false;
    }
    let record = FenceRecord::take(
        info,
        prior.as_ref(),
        fenced,
        req.op,
        this_holder(&caps.caller.user),
        chrono::Utc::now(),
    );
    let mut record = record;
    // The aliases this operation pauses, on top of those an earlier drain paused (they
    // are still paused: not paused again).
    let mut to_pause: Vec<crate::pgbouncer::PoolerPlan> = Vec::new();
    for plan in &req.poolers {
        let mut fence = plan.fence();
        let already: Vec<String> = record
            .poolers
            .iter()
            .filter(|f| f.host == fence.host && f.port == fence.port)
            .flat_map(|f| f.aliases.clone())
            .collect();
        fence.aliases.retain(|a| !already.contains(a));
        if fence.aliases.is_empty() {
            continue;
        }
        to_pause.push(crate::pgbouncer::PoolerPlan {
            pooler: plan.pooler.clone(),
            version: plan.version,
            aliases: fence.aliases.clone(),
        });
        fence.disabled = req.op == Operation::Drop;
        match record
            .poolers
            .iter_mut()
            .find(|f| f.host == fence.host && f.port == fence.port)
        {
            Some(f) => f.aliases.extend(fence.aliases),
            None => record.poolers.push(fence),
        }
    }
    // Built first: a statement that cannot be written must not leave a fence behind.
    let statement = match req.op {
        Operation::Drain => None,
        Operation::Drop => Some(plan::drop_database(caps.version, &info.name)?),
        Operation::Rename => Some(plan::rename_database(
            &info.name,
            req.new_name.as_deref().unwrap_or(&info.name),
        )?),
    };
    if !to_pause.is_empty() {
        // The journal first: the record names the aliases before the first PAUSE, so
        // that `unfence` resumes them whatever happens to this process.
        batch(client, &fence::record_statement(&info.name, &record)?).await?;
        let began = std::time::Instant::now();
        let crate::pgbouncer::Paused {
            aliases: paused,
            mut ended,
            error,
        } = match req.op {
            Operation::Drop => crate::pgbouncer::disable_and_kill(&to_pause).await,
            _ => crate::pgbouncer::pause_all(&to_pause, req.grace).await,
        };
        report.pause_took = Some(began.elapsed());
        report.ended_at_pooler.append(&mut ended);
        for (plan, aliases) in to_pause.iter().zip(&paused) {
            for a in aliases {
                report.paused.push((plan.pooler.name.clone(), a.clone()));
            }
        }
        if let Some(e) = error {
            let problems = resume_paused(&to_pause, &paused, &mut report).await;
            let put = put_back(client, info.oid, &record, prior.as_ref()).await;
            return match put {
                Ok(_) if !problems.is_empty() => Err(Error::PoolersLeft {
                    name: info.name.clone(),
                    error: e.to_string(),
                    problems,
                }),
                Ok(_) => Err(Error::Refused(vec![e.to_string()])),
                Err(restore_error) => Err(Error::StillFenced {
                    name: info.name.clone(),
                    error: e.to_string(),
                    restore: restore_error.to_string(),
                }),
            };
        }
    }
    batch(
        client,
        &fence::fence_statements(&info.name, &info.settings, &record)?,
    )
    .await?;
    report.fenced = true;
    report.already_fenced = prior.clone();
    let outcome = tokio::select! {
        r = drain_and_act(client, pre, req, statement.as_deref(), &mut report, progress) => r,
        why = interrupt => Err(Error::Refused(vec![why])),
    };
    let finished = match outcome {
        Ok(()) => match req.op {
            Operation::Drop => Ok(()),
            Operation::Drain if !req.then_unfence => {
                let held = FenceRecord {
                    state: FenceState::Held,
                    ..record.clone()
                };
                batch(client, &fence::record_statement(&info.name, &held)?).await?;
                report.left_fenced = true;
                Ok(())
            }
            Operation::Drain => {
                report.restored = Some(restore(client, info.oid, &record).await?);
                let all: Vec<Vec<String>> = to_pause.iter().map(|p| p.aliases.clone()).collect();
                let mut problems = resume_paused(&to_pause, &all, &mut report).await;
                report.pooler_problems.append(&mut problems);
                Ok(())
            }
            Operation::Rename => {
                report.left_fenced = prior.is_some();
                report.restored = Some(put_back(client, info.oid, &record, prior.as_ref()).await?);
                if req.resume {
                    let all: Vec<Vec<String>> =
                        to_pause.iter().map(|p| p.aliases.clone()).collect();
                    let mut problems = resume_paused(&to_pause, &all, &mut report).await;
                    report.pooler_problems.append(&mut problems);
                }
                Ok(())
            }
        },
        Err(e) => Err(e),
    };
    match finished {
        Ok(()) => Ok(report),
        Err(e) => match put_back(client, info.oid, &record, prior.as_ref()).await {
            Ok(_) if !to_pause.is_empty() => {
                let all: Vec<Vec<String>> = to_pause.iter().map(|p| p.aliases.clone()).collect();
                let problems = resume_paused(&to_pause, &all, &mut report).await;
                if problems.is_empty() {
                    Err(e)
                } else {
                    Err(Error::PoolersLeft {
                        name: info.name.clone(),
                        error: e.to_string(),
                        problems,
                    })
                }
            }
            Ok(_) => Err(e),
            Err(restore_error) => Err(Error::StillFenced {
                name: info.name.clone(),
                error: e.to_string(),
                restore: restore_error.to_string(),
            }),
        },
    }
}

/// Resumes, at each pooler of `plans`, the aliases `paused[i]`; returns what failed.
async fn resume_paused(
    plans: &[crate::pgbouncer::PoolerPlan],
    paused: &[Vec<String>],
    report: &mut Report,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (plan, aliases) in plans.iter().zip(paused) {
        if aliases.is_empty() {
            continue;
        }
        let failed = crate::pgbouncer::resume(&plan.pooler, aliases).await;
        if failed.is_empty() {
            for a in aliases {
                report.resumed.push((plan.pooler.name.clone(), a.clone()));
            }
        }
        problems.extend(failed);
    }
    problems
}

/// Puts the database back as it was before this operation: its earlier fence (settings and
/// record) if it had one, else its original settings.
async fn put_back(
    client: &Client,
    oid: u32,
    record: &FenceRecord,
    prior: Option<&FenceRecord>,
) -> Result<RestorePlan> {
    match prior {
        Some(p) => {
            let to_prior = FenceRecord {
                original: p.fenced.clone(),
                original_comment: Some(p.to_comment()),
                ..record.clone()
            };
            restore(client, oid, &to_prior).await
        }
        None => restore(client, oid, record).await,
    }
}

async fn drain_and_act(
    client: &Client,
    pre: &Preflight,
    req: &Request,
    statement: Option<&str>,
    report: &mut Report,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<()> {
    let info = &pre.info;
    drain(client, info.oid, req.grace, report, progress).await?;
    let Some(statement) = statement else {
        return Ok(());
    };
    let started = tokio::time::Instant::now();
    // Sessions that passed the connection checks before the fence can still arrive;
    // end them and try again until the statement goes through.
    loop {
        report.attempts += 1;
        match batch(client, statement).await {
            Ok(()) => return Ok(()),
            Err(Error::ObjectInUse(_)) if started.elapsed() < req.deadline => {
                terminate_all(client, info.oid, report).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Terminates every session of database `oid` and counts each session once, however
/// often it is signalled while it takes to exit.
async fn terminate_all(client: &Client, oid: u32, report: &mut Report) -> Result<()> {
    let Some(row) = query_opt(client, &plan::terminate_all(oid)).await? else {
        return Ok(());
    };
    let signalled: Vec<i32> = row.try_get::<_, Option<Vec<i32>>>(0)?.unwrap_or_default();
    let in_transaction: Vec<i32> = row.try_get::<_, Option<Vec<i32>>>(1)?.unwrap_or_default();
    for pid in signalled {
        if report.signalled.insert(pid) {
            report.terminated += 1;
            if in_transaction.contains(&pid) {
                report.rolled_back += 1;
            }
        }
    }
    Ok(())
}

/// Pauses between polls: fast right after a fence or a terminate, where a few milliseconds
/// win races against reconnecting clients and show sessions gone at once; then slower
/// while only waiting for transactions to finish (at most 10 polls, and so 10 progress
/// redraws, a second).
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_millis(100);

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }

    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Self::MOST);
        now
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Self::FIRST)
    }
}

/// Ends every session of database `oid`: during `grace`, each one as soon as it is
/// outside a transaction; then all that are left, until none is connected.
async fn drain(
    client: &Client,
    oid: u32,
    grace: Duration,
    report: &mut Report,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<()> {
    let began = tokio::time::Instant::now();
    let mut pause = Backoff::default();
    while began.elapsed() < grace {
        let row = query_opt(client, &plan::end_idle_sessions(oid))
            .await?
            .ok_or(Error::Protocol("counting sessions returned no row"))?;
        let (ended, left, in_tx): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        report.ended_idle += ended;
        progress(Progress {
            sessions: left - ended,
            in_transaction: in_tx,
            grace_left: grace.saturating_sub(began.elapsed()),
        });
        if left - ended == 0 {
            break;
        }
        if ended > 0 {
            pause.reset();
        }
        tokio::time::sleep(pause.next().min(grace.saturating_sub(began.elapsed()))).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Backoff::default();
    loop {
        terminate_all(client, oid, report).await?;
        let left = count(client, oid).await?;
        progress(Progress {
            sessions: left,
            in_transaction: 0,
            grace_left: Duration::ZERO,
        });
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Refused(vec![format!(
                "{left} session(s) did not go away within 30s of being terminated"
            )]));
        }
        tokio::time::sleep(pause.next()).await;
    }
}

/// Restores what `record` says pgkill changed (if nobody changed it since) on the
/// database with OID `oid` (whatever its name now), and replaces the record with the
/// comment it kept, all in one transaction.
///
/// Tried again if a statement of it is cancelled: the cancel request sent on Ctrl-C for
/// the statement in flight can reach the server after that statement has finished, and
/// hit the restore instead. Restoring twice is harmless (the plan is made anew each time).
pub async fn restore(client: &Client, oid: u32, record: &FenceRecord) -> Result<RestorePlan> {
    let mut tries = 0;
    loop {
        match restore_once(client, oid, record).await {
            Err(Error::Cancelled(_)) if tries < 3 => tries += 1,
            done => return done,
        }
    }
}

async fn restore_once(client: &Client, oid: u32, record: &FenceRecord) -> Result<RestorePlan> {
    let current = info_by_oid(client, oid).await?;
    let step = fence::restore_plan(record, current.as_ref());
    if let Some(info) = &current {
        if let Some(sql) = fence::restore_statements(&info.name, &step)? {
            batch(client, &sql).await?;
        }
    }
    Ok(step)
}

/// The server's `system_identifier` (which cluster this is), when the caller may read it.
pub async fn system_identifier(client: &Client) -> Option<String> {
    query_opt(client, &plan::system_identifier())
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get(0).ok())
}

/// A database with a fence record on this server.
#[derive(Debug, Clone)]
pub struct Fenced {
    /// The database as it is now.
    pub info: DbInfo,
    /// Its record (or why it cannot be read).
    pub record: std::result::Result<FenceRecord, UnreadableRecord>,
}

/// Every database of the server that has a fence record.
pub async fn fences(client: &Client) -> Result<Vec<Fenced>> {
    let mut out = Vec::new();
    for row in query(client, &plan::fenced_databases()).await? {
        let info = settings_from(&row)?;
        if let Some(record) = info.comment.as_deref().and_then(FenceRecord::from_comment) {
            out.push(Fenced { info, record });
        }
    }
    Ok(out)
}

//! The executor for database operations: preflight, fence, drain, drop / rename, and
//! restore. Every change to a database is recorded in the [`Journal`] first and undone
//! exactly (only what pgkill changed, only if nobody changed it since) on any failure.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pgkill_core::database::{
    self as plan, Blockers, DbInfo, DbSettings, FenceRecord, Operation, PreparedXact, Resolve,
    RestorePlan, Slot,
};
use pgkill_core::{quote_ident, quote_literal};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Row};

use crate::journal::Journal;
use crate::sessions::{query, Capabilities};
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
    /// Client sessions connected to it now.
    pub sessions: i64,
    /// Why the operation cannot go ahead (empty when it can).
    pub refusals: Vec<String>,
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

/// Checks everything before anything is changed.
pub async fn preflight(
    client: &Client,
    caps: &Capabilities,
    op: Operation,
    name: &str,
    new_name: Option<&str>,
    resolve: Resolve,
) -> Result<Preflight> {
    // The names go into utility statements: one that cannot be quoted (a NUL byte) is
    // refused before anything is looked up or changed.
    quote_ident(name)?;
    if let Some(new) = new_name {
        quote_ident(new)?;
    }
    let info = info(client, name)
        .await?
        .ok_or_else(|| Error::Refused(vec![format!("database {name:?} does not exist")]))?;
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
    let connected: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .try_get(0)?;
    let mut refusals = plan::refusals(op, &info, &blockers, resolve, &connected);
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
        if self::info(client, new).await?.is_some() {
            refusals.push(format!("a database named {new:?} already exists"));
        }
        let createdb: bool = client
            .query_one(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await?
            .try_get(0)?;
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
    let sessions = count(client, info.oid).await?;
    Ok(Preflight {
        info,
        blockers,
        sessions,
        refusals,
    })
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
    /// `host:port` of the server, for the journal.
    pub server: String,
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
    /// Prepared transactions rolled back (`--rollback-prepared`).
    pub prepared_rolled_back: Vec<String>,
    /// Whether the database is left fenced (drain without --then-unfence).
    pub left_fenced: bool,
    /// Restoration done at the end (rename, --then-unfence).
    pub restored: Option<RestorePlan>,
}

/// Carries out `req` after a passed `pre`flight: fence, drain, act; on failure restores
/// the database's settings and returns the error.
pub async fn run(
    client: &Client,
    caps: &Capabilities,
    journal: &Journal,
    pre: &Preflight,
    req: &Request,
    connect_to: ConnectTo<'_>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report> {
    let mut report = Report::default();
    let info = &pre.info;
    // Prepared transactions can only be finished from inside their database, so before
    // the fence shuts the door.
    if req.resolve.rollback_prepared && !pre.blockers.prepared.is_empty() {
        let inside = connect_to(info.name.clone()).await?;
        for p in &pre.blockers.prepared {
            inside
                .batch_execute(&format!("ROLLBACK PREPARED {}", quote_literal(&p.gid)?))
                .await?;
            report.prepared_rolled_back.push(p.gid.clone());
        }
    }
    // An invalid database (an interrupted DROP) accepts no connections and no ALTER:
    // there is nothing to fence or restore, only the DROP to finish.
    if info.is_invalid() && req.op == Operation::Drop {
        report.attempts = 1;
        client
            .batch_execute(&plan::drop_database(caps.version, &info.name)?)
            .await?;
        return Ok(report);
    }
    let mut fenced = info.settings.clone();
    fenced.allow_connections = false;
    if req.resolve.allow_template {
        fenced.is_template = false;
    }
    let record = FenceRecord {
        server: req.server.clone(),
        system_identifier: system_identifier(client).await,
        oid: info.oid,
        name: info.name.clone(),
        original: info.settings.clone(),
        fenced: fenced.clone(),
        operation: req.op,
        pid: std::process::id(),
        at: chrono::Utc::now(),
    };
    journal.write(&record)?;
    let outcome = fence_and_act(client, caps, pre, req, &fenced, &mut report, progress).await;
    match outcome {
        Ok(()) => {
            match req.op {
                Operation::Drop => journal.remove(&record)?,
                Operation::Rename => {
                    report.restored = Some(restore(client, journal, &record).await?)
                }
                Operation::Drain if req.then_unfence => {
                    report.restored = Some(restore(client, journal, &record).await?)
                }
                Operation::Drain => report.left_fenced = true,
            }
            Ok(report)
        }
        Err(e) => match restore(client, journal, &record).await {
            Ok(_) => Err(e),
            // Say both: what failed, and that the fence is still up (the journal keeps it).
            Err(restore_error) => Err(Error::Refused(vec![
                e.to_string(),
                format!(
                    "restoring {}'s settings failed too ({restore_error}): it may still be fenced; run `pgkill unfence {}`",
                    info.name, info.name
                ),
            ])),
        },
    }
}

async fn system_identifier(client: &Client) -> Option<String> {
    client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
        .ok()
        .and_then(|r| r.try_get(0).ok())
}

async fn fence_and_act(
    client: &Client,
    caps: &Capabilities,
    pre: &Preflight,
    req: &Request,
    fenced: &DbSettings,
    report: &mut Report,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<()> {
    let info = &pre.info;
    // Built first: a statement that cannot be written must not leave a fence behind.
    let statement = match req.op {
        Operation::Drain => None,
        Operation::Drop => Some(plan::drop_database(caps.version, &info.name)?),
        Operation::Rename => Some(plan::rename_database(
            &info.name,
            req.new_name.as_deref().unwrap_or(&info.name),
        )?),
    };
    if fenced.is_template != info.settings.is_template {
        client
            .batch_execute(&plan::clear_template(&info.name)?)
            .await?;
    }
    if info.settings.allow_connections {
        client
            .batch_execute(&plan::set_allow_connections(&info.name, false)?)
            .await?;
    }
    drain(client, info.oid, req.grace, report, progress).await?;
    let Some(statement) = statement else {
        return Ok(());
    };
    let started = tokio::time::Instant::now();
    // Sessions that passed the connection checks before the fence can still arrive;
    // end them and try again until the statement goes through.
    loop {
        report.attempts += 1;
        match client.batch_execute(&statement).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.code() == Some(&SqlState::OBJECT_IN_USE)
                    && started.elapsed() < req.deadline =>
            {
                let rows = query(client, &plan::terminate_all(info.oid)).await?;
                if let Some(row) = rows.first() {
                    report.terminated += row.try_get::<_, i64>(0)?;
                    report.rolled_back += row.try_get::<_, i64>(1)?;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => return Err(e.into()),
        }
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
    let oid8 = i64::from(oid);
    let began = tokio::time::Instant::now();
    while began.elapsed() < grace {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE xact_start IS NULL AND pg_terminate_backend(pid))::int8,
                        count(*)::int8, count(*) FILTER (WHERE xact_start IS NOT NULL)::int8
                 FROM pg_stat_activity WHERE datid = $1::int8::oid AND pid <> pg_backend_pid()",
                &[&oid8],
            )
            .await?;
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows = query(client, &plan::terminate_all(oid)).await?;
        if let Some(row) = rows.first() {
            report.terminated += row.try_get::<_, i64>(0)?;
            report.rolled_back += row.try_get::<_, i64>(1)?;
        }
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
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Restores what `record` says pgkill changed (if nobody changed it since), on the
/// database with the record's OID (whatever its name now), and removes the record.
pub async fn restore(
    client: &Client,
    journal: &Journal,
    record: &FenceRecord,
) -> Result<RestorePlan> {
    let current = info_by_oid(client, record.oid).await?;
    let step = plan::restore_plan(record, current.as_ref().map(|i| &i.settings));
    if let Some(info) = &current {
        if let Some(template) = step.is_template {
            client
                .batch_execute(&format!(
                    "ALTER DATABASE {} IS_TEMPLATE {template}",
                    quote_ident(&info.name)?
                ))
                .await?;
        }
        if let Some(allow) = step.allow_connections {
            client
                .batch_execute(&plan::set_allow_connections(&info.name, allow)?)
                .await?;
        }
    }
    journal.remove(record)?;
    Ok(step)
}

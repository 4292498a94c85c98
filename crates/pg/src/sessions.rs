//! The executor for sessions: reads what the caller may do, lists sessions, and carries
//! out a [`Plan`] (signal in one re-checking statement, then verify each target).

use std::net::IpAddr;
use std::time::Duration;

use pgkill_core::plan::{Caller, Outcome, OutcomeKind, Plan, Target};
use pgkill_core::planner::{self, Identity, Signal};
use pgkill_core::{Filter, ServerVersion, Session};
use tokio_postgres::{Client, Row};

pub use crate::exec::query;
use crate::{Error, Result};

/// What the server is and what the connected role may do, read once per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The server version.
    pub version: ServerVersion,
    /// The role and its signalling privileges.
    pub caller: Caller,
    /// Whether the role can read every session's details (`pg_read_all_stats`).
    pub read_all_stats: bool,
    /// The longest database or role name the server takes, in bytes
    /// (`max_identifier_length`).
    pub max_name_bytes: usize,
    /// Whether the server is a standby (`pg_is_in_recovery()`): sessions can be listed
    /// and signalled there, but databases can only be changed on the primary.
    pub in_recovery: bool,
    /// The backend pids of every connection this pgkill process opened: protected from
    /// listing and signalling.
    pub own_pids: Vec<i32>,
}

/// Which server a backend pid belongs to: its postmaster's start time (microseconds since
/// the epoch) and its `port`, the same whether reached over TCP or a socket. Two servers
/// with the same port started in the same microsecond would share one.
pub type ServerKey = (i64, i32);

/// The SQL that reads a [`ServerKey`] (two columns).
pub const SERVER_KEY_SQL: &str =
    "(extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::int8, \
     pg_catalog.current_setting('port')::int4";

/// Backend pids of the connections this process opened, with their servers (see
/// [`own_pids_on`]).
static OWN_PIDS: std::sync::Mutex<Vec<(ServerKey, i32)>> = std::sync::Mutex::new(Vec::new());

/// Records the backend pid of a connection pgkill opened to server `key` (`connect`
/// does, for each).
pub fn register_own_pid(key: ServerKey, pid: i32) {
    if let Ok(mut pids) = OWN_PIDS.lock() {
        if !pids.contains(&(key, pid)) {
            pids.push((key, pid));
        }
    }
}

/// Registers `client`'s own backend as pgkill's (for connections not opened through
/// `connect`).
pub async fn register_own(client: &Client) -> Result<()> {
    let sql = format!("SELECT {SERVER_KEY_SQL}, pg_catalog.pg_backend_pid()");
    let row = client.query_typed_one(&sql, &[]).await?;
    register_own_pid((row.try_get(0)?, row.try_get(1)?), row.try_get(2)?);
    Ok(())
}

/// The backend pids of the connections this process opened to server `key`, so that
/// pgkill never lists or signals its own sessions. (By pid, never by
/// `application_name`, which any client can set to hide from pgkill; and per server, so
/// that a session on one server is never hidden by the pid of pgkill's connection to
/// another.)
pub fn own_pids_on(key: ServerKey) -> Vec<i32> {
    OWN_PIDS
        .lock()
        .map(|p| {
            p.iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, pid)| *pid)
                .collect()
        })
        .unwrap_or_default()
}

/// The backend pids of every connection this process opened, to any server.
pub fn own_pids() -> Vec<i32> {
    OWN_PIDS
        .lock()
        .map(|p| p.iter().map(|(_, pid)| *pid).collect())
        .unwrap_or_default()
}

/// Reads the server version and the caller's privileges.
pub async fn capabilities(client: &Client) -> Result<Capabilities> {
    let rows = query(client, &planner::capabilities()).await?;
    let row = rows
        .first()
        .ok_or(Error::Protocol("capabilities query returned no row"))?;
    let num: i32 = row.try_get(0)?;
    let version = ServerVersion::from_num(num as u32).map_err(Error::Version)?;
    Ok(Capabilities {
        version,
        caller: Caller {
            user: row.try_get(1)?,
            superuser: row.try_get::<_, Option<bool>>(2)?.unwrap_or(false),
            signal_backend: row.try_get(3)?,
        },
        read_all_stats: row.try_get(4)?,
        max_name_bytes: usize::try_from(row.try_get::<_, i32>(5)?).unwrap_or(63),
        in_recovery: row.try_get(6)?,
        own_pids: own_pids_on((row.try_get(7)?, row.try_get(8)?)),
    })
}

/// Where each column of a session listing ([`planner::list_sessions`] and the
/// statements built on it) is in its rows: found by name once per statement, then
/// read by position (by name it is a search of every row's columns for each field).
pub(crate) struct SessionColumns {
    pub(crate) pid: usize,
    backend_start: usize,
    database: usize,
    user: usize,
    application_name: usize,
    client_addr: usize,
    client_hostname: usize,
    client_port: usize,
    state: usize,
    wait_event_type: usize,
    wait_event: usize,
    backend_type: usize,
    xact_start: usize,
    query_start: usize,
    state_change: usize,
    query: usize,
    leader_pid: usize,
    superuser: usize,
    blocked_by: usize,
    blocking: usize,
    xmin_age: usize,
    holds_xmin: usize,
    waited_on_since: usize,
    can_signal: usize,
    now: usize,
}

impl SessionColumns {
    /// The positions in `row` (any row of the statement: they all have its columns).
    pub(crate) fn of(row: &Row) -> Result<SessionColumns> {
        let at = |name: &str| {
            row.columns()
                .iter()
                .position(|c| c.name() == name)
                .ok_or(Error::Protocol(
                    "a session listing lacks one of its columns",
                ))
        };
        Ok(SessionColumns {
            pid: at("pid")?,
            backend_start: at("backend_start")?,
            database: at("datname")?,
            user: at("usename")?,
            application_name: at("application_name")?,
            client_addr: at("client_addr")?,
            client_hostname: at("client_hostname")?,
            client_port: at("client_port")?,
            state: at("state")?,
            wait_event_type: at("wait_event_type")?,
            wait_event: at("wait_event")?,
            backend_type: at("backend_type")?,
            xact_start: at("xact_start")?,
            query_start: at("query_start")?,
            state_change: at("state_change")?,
            query: at("query")?,
            leader_pid: at("leader_pid")?,
            superuser: at("rolsuper")?,
            blocked_by: at("blocked_by")?,
            blocking: at("blocking")?,
            xmin_age: at("xmin_age")?,
            holds_xmin: at("holds_xmin")?,
            waited_on_since: at("waited_on_since")?,
            can_signal: at("can_signal")?,
            now: at("now")?,
        })
    }
}

/// Reads one row of [`planner::list_sessions`], its columns at `at`.
pub(crate) fn session_from_row(row: &Row, at: &SessionColumns) -> Result<Session> {
    let addr: Option<String> = row.try_get(at.client_addr)?;
    Ok(Session {
        pid: row.try_get(at.pid)?,
        backend_start: row.try_get(at.backend_start)?,
        database: row.try_get(at.database)?,
        user: row.try_get(at.user)?,
        application_name: row.try_get(at.application_name)?,
        client_addr: addr.and_then(|a| a.parse::<IpAddr>().ok()),
        client_hostname: row.try_get(at.client_hostname)?,
        client_port: row.try_get(at.client_port)?,
        state: row.try_get(at.state)?,
        wait_event_type: row.try_get(at.wait_event_type)?,
        wait_event: row.try_get(at.wait_event)?,
        backend_type: row.try_get(at.backend_type)?,
        xact_start: row.try_get(at.xact_start)?,
        query_start: row.try_get(at.query_start)?,
        state_change: row.try_get(at.state_change)?,
        query: row.try_get(at.query)?,
        leader_pid: row.try_get(at.leader_pid)?,
        superuser: row.try_get(at.superuser)?,
        blocked_by: row
            .try_get::<_, Option<Vec<i32>>>(at.blocked_by)?
            .unwrap_or_default(),
        blocking: row.try_get(at.blocking)?,
        xmin_age: row.try_get(at.xmin_age)?,
        holds_xmin: row
            .try_get::<_, Option<bool>>(at.holds_xmin)?
            .unwrap_or(false),
        waited_on_since: row.try_get(at.waited_on_since)?,
        can_signal: row
            .try_get::<_, Option<bool>>(at.can_signal)?
            .unwrap_or(false),
        pooler: None,
        now: row.try_get(at.now)?,
    })
}

/// Lists the sessions matching `filter` (with `--newest/--oldest` applied), oldest first.
pub async fn list(client: &Client, caps: &Capabilities, filter: &Filter) -> Result<Vec<Session>> {
    let rows = query(
        client,
        &planner::list_sessions(caps.version, filter, &caps.own_pids),
    )
    .await?;
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let at = SessionColumns::of(first)?;
    let sessions = rows
        .iter()
        .map(|row| session_from_row(row, &at))
        .collect::<Result<Vec<_>>>()?;
    Ok(filter.limit(sessions))
}

/// One evaluation of several rules ([`rule_matches`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleMatches {
    /// Each session some rule matches, with the index of the first rule that matches it,
    /// oldest first.
    pub sessions: Vec<(usize, Session)>,
    /// The client sessions by state (`unknown` when hidden), pgkill's own left out.
    pub states: Vec<(String, i64)>,
}

/// Lists, in one statement, the sessions matched by any of `rules` (each taken by the
/// first rule that matches it), and counts the client sessions by state.
pub async fn rule_matches(
    client: &Client,
    caps: &Capabilities,
    rules: &[&Filter],
) -> Result<RuleMatches> {
    let rows = query(
        client,
        &planner::rule_matches(caps.version, rules, &caps.own_pids),
    )
    .await?;
    let mut out = RuleMatches::default();
    if let Some(first) = rows.first() {
        let states: Vec<String> = first
            .try_get::<_, Option<Vec<String>>>("count_states")?
            .unwrap_or_default();
        let counts: Vec<i64> = first
            .try_get::<_, Option<Vec<i64>>>("counts")?
            .unwrap_or_default();
        out.states = states.into_iter().zip(counts).collect();
    }
    let Some(at) = rows.first().map(SessionColumns::of).transpose()? else {
        return Ok(out);
    };
    for row in &rows {
        let Some(rule) = row.try_get::<_, Option<i32>>("rule")? else {
            continue; // the row that only carries the counts
        };
        let rule = usize::try_from(rule).map_err(|_| Error::Protocol("negative rule index"))?;
        if rule >= rules.len() {
            return Err(Error::Protocol("rule index out of range"));
        }
        out.sessions.push((rule, session_from_row(row, &at)?));
    }
    Ok(out)
}

/// What holds the server's xmin horizon back (`--holding-xmin`'s report).
pub async fn xmin_horizon(
    client: &Client,
    caps: &Capabilities,
) -> Result<pgkill_core::horizon::XminHorizon> {
    let rows = query(client, &planner::xmin_holders(caps.version, &caps.own_pids)).await?;
    let holders = rows
        .iter()
        .map(|r| {
            Ok(pgkill_core::horizon::XminHolder {
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
                database: r.try_get("database")?,
                pid: r.try_get("pid")?,
                age: r.try_get("age")?,
                detail: r.try_get("detail")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(pgkill_core::horizon::XminHorizon::from_holders(holders))
}

/// The lock each of the waiting sessions `pids` asked for and has not got (one
/// statement over `pg_locks`, only for those pids; nothing is read when none waits).
pub async fn lock_waits(
    client: &Client,
    caps: &Capabilities,
    pids: &[i32],
) -> Result<Vec<pgkill_core::LockWait>> {
    if pids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = query(client, &planner::lock_waits(caps.version, pids)).await?;
    rows.iter()
        .map(|r| {
            let nsp: Option<String> = r.try_get("nspname")?;
            let rel: Option<String> = r.try_get("relname")?;
            Ok(pgkill_core::LockWait {
                pid: r.try_get("pid")?,
                locktype: r
                    .try_get::<_, Option<String>>("locktype")?
                    .unwrap_or_default(),
                mode: r.try_get::<_, Option<String>>("mode")?.unwrap_or_default(),
                database: r.try_get("database")?,
                relation_oid: r.try_get("relid")?,
                relation: nsp.zip(rel),
                since: r.try_get("waitstart")?,
            })
        })
        .collect()
}

/// Builds the plan for `signal` over the sessions matching `filter`.
pub async fn plan(
    client: &Client,
    caps: &Capabilities,
    filter: &Filter,
    signal: Signal,
) -> Result<Plan> {
    let sessions = list(client, caps, filter).await?;
    Ok(Plan::build(signal, sessions, filter, &caps.caller))
}

/// Carries out `plan`: signals every target that still matches `filter` (same pid and
/// backend start) in one statement, then, for terminations, waits up to `timeout` until
/// each is really gone. Returns one outcome per target, in plan order.
pub async fn execute(
    client: &Client,
    caps: &Capabilities,
    filter: &Filter,
    plan: &Plan,
    timeout: Duration,
) -> Result<Vec<Outcome>> {
    let wanted: Vec<&Target> = plan.to_signal().collect();
    let identities: Vec<Identity> = wanted.iter().map(|t| t.identity()).collect();
    let mut signalled: Vec<(i32, Option<bool>, bool)> = Vec::new(); // pid, signal result, allowed
    if !identities.is_empty() {
        let q = planner::signal(
            caps.version,
            filter,
            plan.signal,
            &identities,
            &caps.own_pids,
        );
        let rows = match query(client, &q).await {
            Ok(rows) => rows,
            // A privilege changed between plan and signal: fall back to one at a time so
            // that one refusal does not stop the others.
            Err(Error::PermissionDenied(_)) => {
                let mut rows = Vec::new();
                for id in &identities {
                    let one = planner::signal(
                        caps.version,
                        filter,
                        plan.signal,
                        std::slice::from_ref(id),
                        &caps.own_pids,
                    );
                    match query(client, &one).await {
                        Ok(mut r) => rows.append(&mut r),
                        Err(Error::PermissionDenied(_)) => signalled.push((id.pid, None, false)),
                        Err(e) => return Err(e),
                    }
                }
                rows
            }
            Err(e) => return Err(e),
        };
        for row in rows {
            let pid: i32 = row.try_get(0)?;
            let allowed: Option<bool> = row.try_get(1)?;
            let result: Option<bool> = row.try_get(2)?;
            signalled.push((pid, result, allowed.unwrap_or(false)));
        }
    }

    // Verify terminations: poll (autocommit, so each poll sees a fresh snapshot) until
    // every terminated target has left pg_stat_activity or the timeout runs out.
    //
    // Deliberately not PostgreSQL 14's `pg_terminate_backend(pid, timeout)`: inside the
    // signalling statement it waits for each target before signalling the next (a
    // thousand sessions end one after another instead of together), and calling it
    // again afterwards to wait would send a second SIGTERM to a pid that may by then
    // belong to a new session. Polling by identity works the same on every version.
    let mut still: Vec<i32> = Vec::new();
    if plan.signal == Signal::Terminate {
        let sent: Vec<Identity> = identities
            .iter()
            .filter(|id| {
                signalled
                    .iter()
                    .any(|(p, r, _)| *p == id.pid && *r == Some(true))
            })
            .cloned()
            .collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if sent.is_empty() {
                break;
            }
            let rows = query(client, &planner::still_present(&sent)).await?;
            still = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            if still.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    // Targets the signalling statement did not return either ended or no longer match
    // the selection (a session that started a query after `--state idle` chose it): say
    // which.
    let unmatched: Vec<Identity> = identities
        .iter()
        .filter(|id| !signalled.iter().any(|(p, _, _)| *p == id.pid))
        .cloned()
        .collect();
    let still_there: Vec<i32> = if unmatched.is_empty() {
        Vec::new()
    } else {
        query(client, &planner::still_present(&unmatched))
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<std::result::Result<_, _>>()?
    };
    let outcomes = plan
        .targets
        .iter()
        .map(|t| {
            if let Some(why) = &t.refused {
                return Outcome::new(t, OutcomeKind::NotPermitted, why.clone());
            }
            let pid = t.session.pid;
            match signalled.iter().find(|(p, _, _)| *p == pid) {
                None if still_there.contains(&pid) => Outcome::new(
                    t,
                    OutcomeKind::AlreadyGone,
                    "no longer matches the selection: not signalled",
                ),
                None => Outcome::new(t, OutcomeKind::AlreadyGone, "ended before the signal"),
                Some((_, _, false)) => Outcome::new(
                    t,
                    OutcomeKind::NotPermitted,
                    "the server refused: you lack the privileges to signal it",
                ),
                Some((_, Some(false), true)) | Some((_, None, true)) => Outcome::new(
                    t,
                    OutcomeKind::AlreadyGone,
                    "the process was gone when signalled",
                ),
                Some((_, Some(true), true)) => match plan.signal {
                    Signal::Cancel => Outcome::new(
                        t,
                        OutcomeKind::Cancelled,
                        "running statement cancelled; the session stays",
                    ),
                    Signal::Terminate if still.contains(&pid) => Outcome::new(
                        t,
                        OutcomeKind::StillAlive,
                        format!(
                            "signalled but still present after {}",
                            pgkill_core::format_duration(timeout)
                        ),
                    ),
                    Signal::Terminate => Outcome::new(t, OutcomeKind::Terminated, "session ended"),
                },
            }
        })
        .collect();
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgkill's own pid on one server hides nobody on another (several targets at once).
    #[test]
    fn own_pids_are_per_server() {
        let (a, b) = ((1_700_000_000_000_000, 5432), (1_700_000_000_000_000, 5433));
        register_own_pid(a, 4242);
        register_own_pid(a, 4243);
        register_own_pid(b, 77);
        assert_eq!(own_pids_on(a), [4242, 4243]);
        assert_eq!(own_pids_on(b), [77]);
        assert!(own_pids_on((1, 5432)).is_empty());
        assert!(own_pids().contains(&77) && own_pids().contains(&4242));
    }
}

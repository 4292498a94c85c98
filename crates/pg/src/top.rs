//! What `pgkill top` reads at each refresh: the sessions, what `pg_stat_progress_*`
//! says of them, and the server's readings for the header, in one statement that reads
//! `pg_stat_activity` once ([`planner::top_refresh`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgkill_core::filter::Filter;
use pgkill_core::planner;
use pgkill_core::Session;
use tokio_postgres::{Client, Row};

use crate::exec::{prepared, query_opt, Prepared};
use crate::sessions::{session_from_row, Capabilities, SessionColumns};
use crate::{Error, Result};

/// A command's progress (`pg_stat_progress_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// `VACUUM`, `CREATE INDEX`, `CLUSTER`, `ANALYZE`, `BASE_BACKUP`, `COPY FROM`, …
    pub command: String,
    /// Its phase (`scanning heap`, …; a COPY's type: `FILE`, `PIPE`, …).
    pub phase: Option<String>,
    /// Blocks (bytes for a base backup or a COPY) done.
    pub done: Option<i64>,
    /// Of how many (unknown: `None` or 0).
    pub total: Option<i64>,
}

impl Progress {
    /// `done` as a share of `total`, when both are known.
    pub fn fraction(&self) -> Option<f64> {
        match (self.done, self.total) {
            (Some(d), Some(t)) if t > 0 => Some((d as f64 / t as f64).clamp(0.0, 1.0)),
            _ => None,
        }
    }

    /// In a few words: `VACUUM scanning heap 42%`.
    pub fn describe(&self) -> String {
        let mut s = self.command.clone();
        if let Some(p) = &self.phase {
            s.push(' ');
            s.push_str(p);
        }
        if let Some(f) = self.fraction() {
            s.push_str(&format!(" {:.0}%", f * 100.0));
        }
        s
    }
}

/// A standby streaming from the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Standby {
    /// `application_name`.
    pub name: String,
    /// Its address.
    pub addr: Option<String>,
    /// `streaming`, `catchup`, …
    pub state: Option<String>,
    /// `replay_lag`.
    pub lag: Option<Duration>,
    /// WAL bytes it has yet to replay.
    pub behind: Option<i64>,
}

/// The health header's readings of one refresh (rates come from two of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// The server's clock when read.
    pub at: DateTime<Utc>,
    /// Commits, summed over databases.
    pub commits: i64,
    /// Rollbacks.
    pub rollbacks: i64,
    /// Blocks found in shared buffers.
    pub blks_hit: i64,
    /// Blocks read from outside.
    pub blks_read: i64,
    /// Temporary files written.
    pub temp_files: i64,
    /// Bytes of temporary files written.
    pub temp_bytes: i64,
    /// The oldest client transaction's age (pgkill's own left out).
    pub oldest_xact: Option<Duration>,
    /// Autovacuum workers running.
    pub autovacuum: i64,
    /// `autovacuum_max_workers`.
    pub autovacuum_max: i64,
    /// Each standby streaming from the server.
    pub standbys: Vec<Standby>,
}

/// The server's readings of one refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Readings {
    /// `max_connections`.
    pub max_connections: i64,
    /// All backends connected (clients and others).
    pub connections: i64,
    /// Time since the postmaster started.
    pub uptime: Duration,
    /// The health header's (when asked for).
    pub counters: Option<Counters>,
}

/// One refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Refresh {
    /// The sessions matching the filter (`--newest/--oldest` applied), oldest first.
    pub sessions: Vec<Session>,
    /// What `pg_stat_progress_*` says of them, by pid.
    pub progress: BTreeMap<i32, Progress>,
    /// The server's readings.
    pub readings: Readings,
}

fn seconds(s: Option<f64>) -> Option<Duration> {
    s.map(|s| Duration::from_secs_f64(s.max(0.0)))
}

/// Reads the readings' columns of a row of [`planner::top_refresh`] or
/// [`planner::top_readings`] (by name).
fn readings_from_row(row: &Row, health: bool) -> Result<Readings> {
    let counters = if health {
        let count = |c: &str| -> Result<i64> { Ok(row.try_get::<_, Option<i64>>(c)?.unwrap_or(0)) };
        let array = |c: &str| -> Result<Vec<Option<String>>> {
            Ok(row
                .try_get::<_, Option<Vec<Option<String>>>>(c)?
                .unwrap_or_default())
        };
        let names = array("standby_names")?;
        let addrs = array("standby_addrs")?;
        let states = array("standby_states")?;
        let lags: Vec<Option<f64>> = row
            .try_get::<_, Option<Vec<Option<f64>>>>("standby_lags")?
            .unwrap_or_default();
        let behind: Vec<Option<i64>> = row
            .try_get::<_, Option<Vec<Option<i64>>>>("standby_behind")?
            .unwrap_or_default();
        if [addrs.len(), states.len(), lags.len(), behind.len()]
            .iter()
            .any(|n| *n != names.len())
        {
            return Err(Error::Protocol("the standbys' arrays differ in length"));
        }
        let standbys = (0..names.len())
            .map(|i| Standby {
                name: names[i].clone().unwrap_or_default(),
                addr: addrs[i].clone(),
                state: states[i].clone(),
                lag: seconds(lags[i]),
                behind: behind[i],
            })
            .collect();
        Some(Counters {
            at: row.try_get("health_at")?,
            commits: count("commits")?,
            rollbacks: count("rollbacks")?,
            blks_hit: count("blks_hit")?,
            blks_read: count("blks_read")?,
            temp_files: count("temp_files")?,
            temp_bytes: count("temp_bytes")?,
            oldest_xact: seconds(row.try_get("oldest_xact")?),
            autovacuum: count("autovacuum")?,
            autovacuum_max: count("autovacuum_max")?,
            standbys,
        })
    } else {
        None
    };
    Ok(Readings {
        max_connections: row.try_get("max_connections")?,
        connections: row.try_get("connections")?,
        uptime: seconds(row.try_get("uptime")?).unwrap_or_default(),
        counters,
    })
}

/// One refresh of `top`: the sessions matching `filter` with their progress, and the
/// server's readings (the health header's with `health`), in one statement.
pub async fn refresh(
    client: &Client,
    kept: &Prepared,
    caps: &Capabilities,
    filter: &Filter,
    health: bool,
) -> Result<Refresh> {
    let rows = prepared(
        client,
        kept,
        &planner::top_refresh(caps.version, filter, &caps.own_pids, health),
    )
    .await?;
    let Some(first) = rows.first() else {
        return Err(Error::Protocol("top's refresh returned no readings"));
    };
    let at = SessionColumns::of(first)?;
    let column = |name: &str| {
        first
            .columns()
            .iter()
            .position(|c| c.name() == name)
            .ok_or(Error::Protocol("top's refresh lacks one of its columns"))
    };
    let (max_connections, command) = (column("max_connections")?, column("progress_command")?);
    let mut readings = None;
    for row in &rows {
        if row.try_get::<_, Option<i64>>(max_connections)?.is_some() {
            readings = Some(readings_from_row(row, health)?);
            break;
        }
    }
    let readings = readings.ok_or(Error::Protocol("top's refresh returned no readings"))?;
    let mut sessions = Vec::with_capacity(rows.len());
    let mut progress = BTreeMap::new();
    for row in &rows {
        let Some(pid) = row.try_get::<_, Option<i32>>(at.pid)? else {
            continue; // the row that only carries the readings: nothing matched
        };
        if let Some(command) = row.try_get::<_, Option<String>>(command)? {
            progress.insert(
                pid,
                Progress {
                    command,
                    phase: row.try_get("progress_phase")?,
                    done: row.try_get("progress_done")?,
                    total: row.try_get("progress_total")?,
                },
            );
        }
        sessions.push(session_from_row(row, &at)?);
    }
    // Oldest first (hidden start times last), as `sessions::list` returns them
    // (`--newest/--oldest` count on it).
    sessions.sort_by_key(|s| (s.backend_start.is_none(), s.backend_start, s.pid));
    let sessions = filter.limit(sessions);
    progress.retain(|pid, _| sessions.iter().any(|s| s.pid == *pid));
    Ok(Refresh {
        sessions,
        progress,
        readings,
    })
}

/// The server's readings alone (the sessions are listed another way: through PgBouncer).
pub async fn readings(client: &Client, health: bool) -> Result<Readings> {
    let row = query_opt(client, &planner::top_readings(health))
        .await?
        .ok_or(Error::Protocol("top's readings returned no row"))?;
    readings_from_row(&row, health)
}

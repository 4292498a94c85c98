//! The one place pgkill's statements are sent from, so that what every statement must be
//! (schema-qualified calls, see [`pgkill_core::sql`]) is checked where they all pass: in
//! debug builds, so the integration tests check every statement that really runs, on
//! every server version.
//!
//! It is also where the two classes of statements get their time limits. Every
//! connection runs under a `statement_timeout` ([`set_statement_timeout`]; the CLI's
//! `--statement-timeout`, 5 s by default): reads, plans, signalling and the short polls of
//! the drain and verification loops ([`query`]), whose loops have deadlines of their own.
//! Database changes ([`batch`]: `ALTER DATABASE`, `DROP DATABASE`, `ROLLBACK PREPARED`)
//! wait by design (DROP and RENAME wait up to ~5 s for other sessions before failing with
//! 55006, which pgkill retries), so each runs under at least [`CHANGE_TIMEOUT_FLOOR`]
//! instead, and the session's limit is put back after it. No limit (0) stays no limit.

use std::time::Duration;

use pgkill_core::planner::{self, Param, Query};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use crate::Result;

/// In debug builds, stops a statement that calls a function not qualified with
/// `pg_catalog.` before it reaches the server.
fn check(sql: &str) {
    if cfg!(debug_assertions) {
        let calls = pgkill_core::sql::unqualified_calls(sql);
        debug_assert!(
            calls.is_empty(),
            "unqualified function call(s) {calls:?} in:\n{sql}"
        );
    }
}

/// `q`'s parameters, boxed with the types they are sent as.
fn bind(q: &Query) -> Vec<(Box<dyn ToSql + Sync + Send>, Type)> {
    q.params
        .iter()
        .map(|p| -> (Box<dyn ToSql + Sync + Send>, Type) {
            match p {
                Param::TextArray(v) => (Box::new(v.clone()), Type::TEXT_ARRAY),
                Param::OptTextArray(v) => (Box::new(v.clone()), Type::TEXT_ARRAY),
                Param::IntArray(v) => (Box::new(v.clone()), Type::INT4_ARRAY),
                Param::TimestampArray(v) => (Box::new(v.clone()), Type::TIMESTAMPTZ_ARRAY),
                Param::Float(v) => (Box::new(*v), Type::FLOAT8),
                Param::Text(v) => (Box::new(v.clone()), Type::TEXT),
                Param::Int8(v) => (Box::new(*v), Type::INT8),
                Param::Bool(v) => (Box::new(*v), Type::BOOL),
            }
        })
        .collect()
}

/// Runs `q` with its bound parameters, as one unnamed statement with the parameter types
/// given (`query_typed`): one round trip, and no named prepared statement that could
/// collide with another client's on a connection a pooler (PgBouncer in transaction
/// mode) shares.
pub async fn query(client: &Client, q: &Query) -> Result<Vec<Row>> {
    check(&q.sql);
    let boxed = bind(q);
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = boxed
        .iter()
        .map(|(b, t)| (b.as_ref() as &(dyn ToSql + Sync), t.clone()))
        .collect();
    Ok(client.query_typed(q.sql.as_str(), &typed).await?)
}

/// The one statement a long-lived connection runs over and over (`top`'s refresh),
/// kept prepared on it: the server parses and plans it once, not at every refresh
/// (for `top`'s refresh at 1,000 sessions, planning is about a quarter of its time).
/// Another statement replaces it (and the server lets the old one go). One per
/// connection: a statement prepared on one is unknown to the next, which [`prepared`]
/// notices and mends.
#[derive(Debug, Default)]
pub struct Prepared(tokio::sync::Mutex<Option<(String, Statement)>>);

impl Prepared {
    /// Forgets the statement (the connection it was prepared on is gone).
    pub async fn clear(&self) {
        *self.0.lock().await = None;
    }
}

/// Runs `q` as [`query`] does, through the statement `kept` holds if it is `q`'s, else
/// prepared now and kept. A statement the server no longer knows (26000: prepared on
/// another connection, or lost behind a pooler pgkill did not recognise) is prepared
/// once more; if that fails too, `q` runs unnamed.
pub async fn prepared(client: &Client, kept: &Prepared, q: &Query) -> Result<Vec<Row>> {
    check(&q.sql);
    let boxed = bind(q);
    let values: Vec<&(dyn ToSql + Sync)> = boxed
        .iter()
        .map(|(b, _)| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let mut slot = kept.0.lock().await;
    for _ in 0..2 {
        let statement = match slot.as_ref() {
            Some((sql, statement)) if *sql == q.sql => statement.clone(),
            _ => {
                let types: Vec<Type> = boxed.iter().map(|(_, t)| t.clone()).collect();
                let statement = client.prepare_typed(&q.sql, &types).await?;
                *slot = Some((q.sql.clone(), statement.clone()));
                statement
            }
        };
        match client.query(&statement, &values).await {
            Ok(rows) => return Ok(rows),
            Err(e) if e.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME) => *slot = None,
            Err(e) => {
                *slot = None;
                return Err(e.into());
            }
        }
    }
    drop(slot);
    query(client, q).await
}

/// Runs `q` and returns its first row, if any.
pub async fn query_opt(client: &Client, q: &Query) -> Result<Option<Row>> {
    Ok(query(client, q).await?.into_iter().next())
}

/// The least time a database change ([`batch`]) may run: well past the server's own
/// ~5 s wait for other sessions to leave, so the time limit never stands in for it.
pub const CHANGE_TIMEOUT_FLOOR: Duration = Duration::from_secs(60);

/// `d` in whole milliseconds, as `statement_timeout` takes it (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sets the connection's `statement_timeout` (zero: no limit): every statement after
/// this runs under it.
pub async fn set_statement_timeout(client: &Client, limit: Duration) -> Result<()> {
    query(client, &planner::set_statement_timeout(millis(limit))).await?;
    Ok(())
}

/// Runs a database change without parameters (utility statements such as `ALTER
/// DATABASE`, which take none) through the simple query protocol, under at least
/// [`CHANGE_TIMEOUT_FLOOR`] of statement time; the connection's own limit is set back
/// afterwards.
pub async fn batch(client: &Client, sql: &str) -> Result<()> {
    check(sql);
    let before: Option<String> = query_opt(
        client,
        &planner::raise_statement_timeout(millis(CHANGE_TIMEOUT_FLOOR)),
    )
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    let result = client.batch_execute(sql).await;
    let restored = match before.and_then(|ms| ms.parse::<u64>().ok()) {
        Some(ms) => query(client, &planner::set_statement_timeout(ms))
            .await
            .map(drop),
        None => Ok(()),
    };
    // The change's own error first: it is what the caller must hear about.
    result?;
    restored
}

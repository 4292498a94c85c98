//! The one place pgkill's statements are sent from, so that what every statement must be
//! (schema-qualified calls, see [`pgkill_core::sql`]) is checked where they all pass: in
//! debug builds, so the integration tests check every statement that really runs, on
//! every server version.

use pgkill_core::planner::{Param, Query};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

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

/// Runs `q` with its bound parameters.
pub async fn query(client: &Client, q: &Query) -> Result<Vec<Row>> {
    check(&q.sql);
    let boxed: Vec<Box<dyn ToSql + Sync + Send>> = q
        .params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                Param::TextArray(v) => Box::new(v.clone()),
                Param::OptTextArray(v) => Box::new(v.clone()),
                Param::IntArray(v) => Box::new(v.clone()),
                Param::TimestampArray(v) => Box::new(v.clone()),
                Param::Float(v) => Box::new(*v),
                Param::Text(v) => Box::new(v.clone()),
                Param::Int8(v) => Box::new(*v),
                Param::Bool(v) => Box::new(*v),
            }
        })
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = boxed
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    Ok(client.query(q.sql.as_str(), &refs).await?)
}

/// Runs `q` and returns its first row, if any.
pub async fn query_opt(client: &Client, q: &Query) -> Result<Option<Row>> {
    Ok(query(client, q).await?.into_iter().next())
}

/// Runs a statement without parameters (utility statements such as `ALTER DATABASE`,
/// which take none) through the simple query protocol.
pub async fn batch(client: &Client, sql: &str) -> Result<()> {
    check(sql);
    Ok(client.batch_execute(sql).await?)
}

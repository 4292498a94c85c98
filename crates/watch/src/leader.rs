//! High availability without double action: on each target, the watcher holding a
//! session-level advisory lock acts; another watcher with the same policy stands by
//! (`pgkill_leader 0`) and takes the lock within one interval of the leader's connection
//! going away (the server releases a session-level lock when its session ends, also
//! when the leader is killed). PostgreSQL itself is the coordinator.
//!
//! The key is the first 8 bytes (big-endian, as a signed `bigint`) of
//! `SHA-256("pgkill watch leader:" + policy name)`, taken with
//! `pg_try_advisory_lock(key)`: the one-argument (bigint) form, so it never collides with
//! a two-argument (int, int) lock of an application. It is logged at start and shown by
//! `--check`, for `SELECT * FROM pg_locks WHERE locktype = 'advisory'`.

use pgkill_core::planner::{Param, Query};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// The advisory lock key for a policy name.
pub fn key(policy_name: &str) -> i64 {
    let digest = Sha256::digest(format!("pgkill watch leader:{policy_name}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Tries to take the leader lock on this connection; true when it holds it.
pub async fn try_lead(client: &Client, key: i64) -> pgkill_pg::Result<bool> {
    let q = Query {
        sql: "SELECT pg_catalog.pg_try_advisory_lock($1::pg_catalog.int8)".to_owned(),
        params: vec![Param::Int8(key)],
    };
    let rows = pgkill_pg::exec::query(client, &q).await?;
    Ok(match rows.first() {
        Some(row) => row.try_get::<_, bool>(0)?,
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_differ_by_name() {
        assert_eq!(key("a"), key("a"));
        assert_ne!(key("a"), key("b"));
        // Documented derivation, pinned so that two versions of pgkill agree.
        let d = Sha256::digest(b"pgkill watch leader:pgkill-watch");
        assert_eq!(
            key("pgkill-watch"),
            i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        );
    }
}

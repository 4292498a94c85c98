//! What holds the server's xmin horizon back, for `--holding-xmin`.
//!
//! `--holding-xmin` selects the client sessions whose snapshot or transaction id *is*
//! the server's horizon (the oldest xmin of any backend, replication slot or prepared
//! transaction; ties all selected). When something that is not a client session is
//! older, no session is selected (ending one would not let vacuum go further), and this
//! module says what holds the horizon instead, so that an empty listing never hides the
//! cause: a replication slot, a prepared transaction, a standby's `hot_standby_feedback`
//! or a non-client backend. Holders as old as the oldest session are named too.

use serde::Serialize;

/// One thing with an xmin: a row of [`crate::planner::xmin_holders`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XminHolder {
    /// `replication_slot`, `prepared_transaction`, `standby`, `backend` or `session`.
    pub kind: String,
    /// Slot name, gid, the standby's application_name, the backend type, or the
    /// session's role.
    pub name: Option<String>,
    /// Its database, when it has one.
    pub database: Option<String>,
    /// Its process (a slot's active pid, a walsender, a backend).
    pub pid: Option<i32>,
    /// Transaction ids behind the current one.
    pub age: i32,
    /// A slot's `xmin` or `catalog_xmin`, a prepared transaction's owner, a standby's
    /// address, a session's application_name.
    pub detail: Option<String>,
}

/// The horizon and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XminHorizon {
    /// The horizon's age (transaction ids behind the current one); `None` when nothing
    /// has an xmin.
    pub age: Option<i32>,
    /// Whether client sessions hold it (the oldest of them is at the horizon): those are
    /// the ones `--holding-xmin` selects.
    pub held_by_sessions: bool,
    /// What else holds it (at the horizon, or as old as the oldest client session).
    pub held_by: Vec<XminHolder>,
    /// The oldest client session with an xmin, whether it holds the horizon or not.
    pub oldest_session: Option<XminHolder>,
}

impl XminHorizon {
    /// Sorts the rows of [`crate::planner::xmin_holders`] out.
    pub fn from_holders(rows: Vec<XminHolder>) -> XminHorizon {
        let age = rows.iter().map(|h| h.age).max();
        let (sessions, others): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|h| h.kind == "session");
        let oldest_session = sessions.into_iter().max_by_key(|h| h.age);
        let held_by_sessions = oldest_session.as_ref().map(|s| s.age) == age && age.is_some();
        // Holders at least as old as the oldest session: they keep the horizon there
        // even if every session ends.
        let floor = oldest_session.as_ref().map_or(age, |s| Some(s.age));
        let mut held_by: Vec<XminHolder> = others
            .into_iter()
            .filter(|h| floor.is_some_and(|f| h.age >= f))
            .collect();
        held_by.sort_by(|a, b| b.age.cmp(&a.age).then(a.kind.cmp(&b.kind)));
        XminHorizon {
            age,
            held_by_sessions,
            held_by,
            oldest_session,
        }
    }

    /// What to tell people beside the sessions listed: `None` when client sessions alone
    /// hold the horizon (the listing says it all).
    pub fn describe(&self) -> Option<String> {
        let Some(age) = self.age else {
            return Some(
                "nothing holds the xmin horizon back: no backend, replication slot or prepared transaction has an xmin".into(),
            );
        };
        if self.held_by.is_empty() {
            return None;
        }
        let holders: Vec<String> = self.held_by.iter().map(describe_holder).collect();
        let mut text = format!(
            "the xmin horizon ({age} transaction ids behind) is held by {}",
            holders.join("; ")
        );
        match &self.oldest_session {
            Some(_) if self.held_by_sessions => {
                text.push_str("; and by the client session(s) listed");
            }
            Some(s) => text.push_str(&format!(
                "; no client session holds it (the oldest, pid {}, is {} transaction ids behind): ending sessions would not let vacuum go further",
                s.pid.unwrap_or(0),
                s.age
            )),
            None => text.push_str("; no client session has a snapshot or transaction id"),
        }
        Some(text)
    }
}

fn describe_holder(h: &XminHolder) -> String {
    let name = h.name.as_deref().unwrap_or("?");
    let db = h
        .database
        .as_deref()
        .map_or_else(String::new, |d| format!(", database {d}"));
    let age = h.age;
    match h.kind.as_str() {
        "replication_slot" => format!(
            "replication slot {name:?} ({}{db}, {}; {age} behind): let its consumer catch up, or drop it with pg_drop_replication_slot if nothing uses it",
            h.detail.as_deref().unwrap_or("xmin"),
            h.pid
                .map_or_else(|| "inactive".to_owned(), |p| format!("active pid {p}"))
        ),
        "prepared_transaction" => format!(
            "prepared transaction {name:?} (owner {}{db}; {age} behind): COMMIT PREPARED or ROLLBACK PREPARED it from that database",
            h.detail.as_deref().unwrap_or("?")
        ),
        "standby" => format!(
            "a standby's hot_standby_feedback (application_name {name:?}, client {}, walsender pid {}; {age} behind)",
            h.detail.as_deref().unwrap_or("local"),
            h.pid.unwrap_or(0)
        ),
        _ => format!(
            "{name} (pid {}{db}; {age} behind), not a client session",
            h.pid.unwrap_or(0)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(kind: &str, name: &str, age: i32) -> XminHolder {
        XminHolder {
            kind: kind.into(),
            name: Some(name.into()),
            database: Some("shop".into()),
            pid: Some(42),
            age,
            detail: None,
        }
    }

    #[test]
    fn sessions_alone_at_the_horizon_need_no_words() {
        let h = XminHorizon::from_holders(vec![
            holder("session", "app", 10),
            holder("backend", "autovacuum worker", 3),
        ]);
        assert_eq!(h.age, Some(10));
        assert!(h.held_by_sessions && h.held_by.is_empty());
        assert_eq!(h.describe(), None);
    }

    #[test]
    fn an_older_prepared_transaction_is_named_and_no_session_holds_it() {
        let h = XminHorizon::from_holders(vec![
            holder("session", "app", 5),
            holder("prepared_transaction", "gid-1", 9),
            holder("replication_slot", "s", 2),
        ]);
        assert_eq!(h.age, Some(9));
        assert!(!h.held_by_sessions);
        assert_eq!(h.held_by.len(), 1, "the younger slot does not hold it");
        let text = h.describe().unwrap();
        assert!(
            text.contains("prepared transaction \"gid-1\"")
                && text.contains("no client session holds it")
                && text.contains("pid 42, is 5"),
            "{text}"
        );
    }

    #[test]
    fn a_tie_names_both_and_sessions_hold_it_too() {
        let h = XminHorizon::from_holders(vec![
            holder("session", "app", 7),
            holder("replication_slot", "s", 7),
        ]);
        assert!(h.held_by_sessions);
        let text = h.describe().unwrap();
        assert!(
            text.contains("replication slot \"s\"") && text.contains("client session(s) listed"),
            "{text}"
        );
    }

    #[test]
    fn without_sessions_or_anything() {
        let h = XminHorizon::from_holders(vec![holder("standby", "walreceiver", 4)]);
        assert!(!h.held_by_sessions && h.oldest_session.is_none());
        let text = h.describe().unwrap();
        assert!(
            text.contains("hot_standby_feedback") && text.contains("no client session has"),
            "{text}"
        );
        let none = XminHorizon::from_holders(Vec::new());
        assert_eq!(none.age, None);
        assert!(none.describe().unwrap().contains("nothing holds"));
    }
}

//! The session model: one row of `pg_stat_activity` as pgkill understands it.
//!
//! Fields the caller may not see (least privilege) are `None` and shown as unknown;
//! a NULL `backend_type` is "unknown", never "not a client".

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// `query` as the server shows it to roles without the privilege to see it.
pub const INSUFFICIENT_PRIVILEGE: &str = "<insufficient privilege>";

/// One server process as seen in `pg_stat_activity`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    /// Process id.
    pub pid: i32,
    /// When the backend started; with `pid` it identifies the session (pids are reused).
    pub backend_start: Option<DateTime<Utc>>,
    /// Database name.
    pub database: Option<String>,
    /// Role name.
    pub user: Option<String>,
    /// `application_name`.
    pub application_name: Option<String>,
    /// Client address (`None` for Unix sockets and for hidden rows).
    pub client_addr: Option<IpAddr>,
    /// Client host name (only with `log_hostname`).
    pub client_hostname: Option<String>,
    /// Client port (`-1` for Unix sockets).
    pub client_port: Option<i32>,
    /// `state` (`active`, `idle`, …).
    pub state: Option<String>,
    /// `wait_event_type`.
    pub wait_event_type: Option<String>,
    /// `wait_event`.
    pub wait_event: Option<String>,
    /// `backend_type` (`client backend`, `walsender`, …).
    pub backend_type: Option<String>,
    /// Start of the open transaction.
    pub xact_start: Option<DateTime<Utc>>,
    /// Start of the current or last statement.
    pub query_start: Option<DateTime<Utc>>,
    /// Last change of `state`.
    pub state_change: Option<DateTime<Utc>>,
    /// Query text (`None` when hidden).
    pub query: Option<String>,
    /// Leader of a parallel worker (PostgreSQL 13+).
    pub leader_pid: Option<i32>,
    /// Whether the session's role is a superuser (`None`: role-less process).
    pub superuser: Option<bool>,
    /// Pids this session waits for (only computed for sessions waiting on a lock).
    pub blocked_by: Vec<i32>,
    /// How many sessions wait for this one.
    pub blocking: i32,
    /// Transaction ids between the oldest of `backend_xmin`/`backend_xid` and the
    /// current one (`age()`), when the session has either.
    pub xmin_age: Option<i32>,
    /// Whether that is the server's xmin horizon (nothing else is older): the session
    /// holds back vacuum (`--holding-xmin`).
    pub holds_xmin: bool,
    /// The earliest `state_change` of the sessions waiting on this one's locks: they have
    /// waited since then (`--blocking-for`).
    pub waited_on_since: Option<DateTime<Utc>>,
    /// Whether the caller may signal this session.
    pub can_signal: bool,
    /// The pooler whose server connection this backend is, and the application using it
    /// right now (`--pgbouncer`; `None` otherwise).
    pub pooler: Option<crate::pooler::PoolerLink>,
    /// The server's clock when the row was read (ages are relative to it).
    #[serde(skip)]
    pub now: DateTime<Utc>,
}

impl Session {
    /// Whether this is (or may be, when hidden) a client session.
    pub fn is_client(&self) -> bool {
        match self.backend_type.as_deref() {
            Some(t) => t == "client backend",
            None => self.user.is_some() && self.database.is_some() && self.leader_pid.is_none(),
        }
    }

    fn age(&self, at: Option<DateTime<Utc>>) -> Option<Duration> {
        at.and_then(|at| self.now.signed_duration_since(at).to_std().ok())
    }

    /// Time since the backend started.
    pub fn backend_age(&self) -> Option<Duration> {
        self.age(self.backend_start)
    }
    /// Time since the transaction started.
    pub fn xact_age(&self) -> Option<Duration> {
        self.age(self.xact_start)
    }
    /// Time since the current statement started (only while active).
    pub fn query_age(&self) -> Option<Duration> {
        if self.state.as_deref() == Some("active") {
            self.age(self.query_start)
        } else {
            None
        }
    }
    /// Time in the current state.
    pub fn state_age(&self) -> Option<Duration> {
        self.age(self.state_change)
    }

    /// Where the client is, for people: `10.1.2.3`, `local` (Unix socket) or `?` (hidden).
    pub fn client_text(&self) -> String {
        match (self.client_addr, self.client_port) {
            (Some(a), _) => a.to_string(),
            (None, Some(-1)) => "local".into(),
            _ => "?".into(),
        }
    }

    /// What it waits for, for people: `Lock:relation`, empty when nothing, `?` when hidden.
    pub fn wait_text(&self) -> String {
        match (&self.wait_event_type, &self.wait_event) {
            (Some(t), Some(e)) => format!("{t}:{e}"),
            _ if self.state.is_none() => "?".into(),
            _ => String::new(),
        }
    }

    /// The query text, or `None` when the caller may not see it.
    pub fn visible_query(&self) -> Option<&str> {
        self.query
            .as_deref()
            .filter(|q| *q != INSUFFICIENT_PRIVILEGE)
    }
}

/// The lock a waiting session asked for and has not got (`pg_locks`, ungranted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockWait {
    /// The waiting session.
    pub pid: i32,
    /// `relation`, `transactionid`, `tuple`, `advisory`, …
    pub locktype: String,
    /// `AccessExclusiveLock`, `ShareLock`, …
    pub mode: String,
    /// The database of the locked object, if it has one.
    pub database: Option<String>,
    /// The locked relation's oid, if the lock is on one.
    pub relation_oid: Option<i64>,
    /// The relation's schema and name, when it is in the database pgkill is connected to.
    pub relation: Option<(String, String)>,
    /// Since when it waits (`pg_locks.waitstart`, PostgreSQL 14+).
    pub since: Option<DateTime<Utc>>,
}

impl LockWait {
    /// What it waits for, for people: `AccessExclusiveLock on public.t`, `ShareLock on a
    /// transaction (a row another transaction changed)`.
    pub fn describe(&self) -> String {
        let on = match (&self.relation, self.locktype.as_str()) {
            (Some((n, r)), "relation") => format!("{n}.{r}"),
            (Some((n, r)), kind) => format!("a {kind} of {n}.{r}"),
            (None, "transactionid") => "a transaction (a row it changed)".into(),
            // In another database than pgkill's: only its oid can be known from here.
            (None, kind) if self.relation_oid.is_some() => format!(
                "a {kind} (oid {}) in database {}",
                self.relation_oid.unwrap_or_default(),
                self.database.as_deref().unwrap_or("?")
            ),
            (None, kind) => match &self.database {
                Some(db) => format!("a {kind} in database {db}"),
                None => format!("a {kind}"),
            },
        };
        format!("{} on {on}", self.mode)
    }
}

#[cfg(test)]
impl Session {
    /// An idle client session (role `app`, database `shop`, application `web`, over a
    /// Unix socket), read 5 minutes after it connected, for tests.
    pub(crate) fn example(pid: i32) -> Session {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        Session {
            pid,
            backend_start: Some(at),
            database: Some("shop".into()),
            user: Some("app".into()),
            application_name: Some("web".into()),
            client_addr: None,
            client_hostname: None,
            client_port: Some(-1),
            state: Some("idle".into()),
            wait_event_type: None,
            wait_event: None,
            backend_type: Some("client backend".into()),
            xact_start: None,
            query_start: None,
            state_change: Some(at),
            query: Some("SELECT 1".into()),
            leader_pid: None,
            superuser: Some(false),
            blocked_by: vec![],
            blocking: 0,
            xmin_age: None,
            holds_xmin: false,
            waited_on_since: None,
            can_signal: true,
            pooler: None,
            now: at + chrono::Duration::seconds(300),
        }
    }
}

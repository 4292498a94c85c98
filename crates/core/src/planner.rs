//! Turns a request plus a server version into SQL. The only place that branches on the
//! server version.
//!
//! Every value is a bound parameter ([`Param`]); the statements are fixed text plus
//! `$n` placeholders. The selection is one SQL predicate used twice: to list sessions,
//! and again inside the statement that signals them, together with each target's
//! `(pid, backend_start)`, so a session that changed or a reused pid is never hit.

use chrono::{DateTime, Utc};

use crate::filter::{glob_to_regex, ClientMatch, Filter, IDLE_STATES};
use crate::version::ServerVersion;

/// A bound parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `text[]`.
    TextArray(Vec<String>),
    /// `text[]` with NULL elements.
    OptTextArray(Vec<Option<String>>),
    /// `int4[]`.
    IntArray(Vec<i32>),
    /// `timestamptz[]` (elements may be NULL).
    TimestampArray(Vec<Option<DateTime<Utc>>>),
    /// `float8` (durations in seconds).
    Float(f64),
    /// `text`.
    Text(String),
    /// `int8`.
    Int8(i64),
    /// `bool`.
    Bool(bool),
}

/// A statement with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// SQL text with `$1…$n` placeholders.
    pub sql: String,
    /// Values for the placeholders, in order.
    pub params: Vec<Param>,
}

/// How to signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `pg_cancel_backend`: cancel the running statement.
    Cancel,
    /// `pg_terminate_backend`: end the session.
    Terminate,
}

impl Signal {
    fn function(self) -> &'static str {
        match self {
            Signal::Cancel => "pg_catalog.pg_cancel_backend",
            Signal::Terminate => "pg_catalog.pg_terminate_backend",
        }
    }
}

/// Builds the predicate and its parameters, numbering placeholders from `first`.
struct Predicate {
    clauses: Vec<String>,
    params: Vec<Param>,
    first: usize,
}

impl Predicate {
    fn new(first: usize) -> Self {
        Predicate {
            clauses: Vec::new(),
            params: Vec::new(),
            first,
        }
    }
    fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("${}", self.first + self.params.len() - 1)
    }
    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "true".into()
        } else {
            self.clauses.join("\n   AND ")
        }
    }
}

/// Whether the caller may signal the row `s` (joined with `pg_roles r`), as the server
/// decides: superusers signal anything; nobody else signals a superuser's backend or a
/// role-less process; others need the privileges of the session's role or
/// `pg_signal_backend`.
pub(crate) const CAN_SIGNAL: &str =
    "(CASE WHEN (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN true
      WHEN r.rolsuper OR s.usesysid IS NULL THEN false
      ELSE pg_catalog.pg_has_role(s.usesysid, 'USAGE'::text)
        OR pg_catalog.pg_has_role('pg_signal_backend'::name, 'USAGE'::text) END)";

/// Pids that some session waiting on a lock waits for (`pg_blocking_pids` is only
/// called for sessions that wait on a lock).
const BLOCKERS: &str = "SELECT b.pid, pg_catalog.count(*)::int AS waiters
  FROM pg_catalog.pg_stat_activity w, pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
  WHERE w.wait_event_type = 'Lock'::text
  GROUP BY b.pid";

fn predicate(v: ServerVersion, f: &Filter, own: &[i32], first: usize) -> Predicate {
    let mut p = Predicate::new(first);
    // Never pgkill's own connections: known by their backend pids, never by a name any
    // client can choose (other pgkill processes' sessions are sessions like any other).
    p.clauses
        .push("s.pid <> pg_catalog.pg_backend_pid()".into());
    if !own.is_empty() {
        let x = p.bind(Param::IntArray(own.to_vec()));
        p.clauses.push(format!("s.pid <> ALL({x}::int[])"));
    }
    add_filter(&mut p, v, f);
    p
}

/// Adds the clauses of `f` (and of the filters it holds in `also`) to `p`.
fn add_filter(p: &mut Predicate, v: ServerVersion, f: &Filter) {
    if !f.all_backends {
        let leader = if v.major >= 13 {
            " AND s.leader_pid IS NULL"
        } else {
            ""
        };
        p.clauses.push(format!(
            "(s.backend_type = 'client backend'::text OR (s.backend_type IS NULL AND s.usesysid IS NOT NULL AND s.datid IS NOT NULL{leader}))"
        ));
    }
    if !f.databases.is_empty() {
        let x = p.bind(Param::TextArray(f.databases.clone()));
        p.clauses
            .push(format!("s.datname::text = ANY({x}::text[])"));
    }
    if !f.users.is_empty() {
        let x = p.bind(Param::TextArray(f.users.clone()));
        p.clauses
            .push(format!("s.usename::text = ANY({x}::text[])"));
    }
    if !f.apps.is_empty() {
        let x = p.bind(Param::TextArray(
            f.apps.iter().map(|g| glob_to_regex(g)).collect(),
        ));
        p.clauses
            .push(format!("s.application_name ~ ANY({x}::text[])"));
    }
    if !f.clients.is_empty() {
        let nets: Vec<String> = f
            .clients
            .iter()
            .filter_map(|c| match c {
                ClientMatch::Net(n) => Some(n.to_string()),
                ClientMatch::Local => None,
            })
            .collect();
        let mut alternatives = Vec::new();
        if !nets.is_empty() {
            let x = p.bind(Param::TextArray(nets));
            alternatives.push(format!("s.client_addr <<= ANY({x}::text[]::inet[])"));
        }
        if f.clients.contains(&ClientMatch::Local) {
            alternatives.push("(s.client_addr IS NULL AND s.client_port = -1)".into());
        }
        p.clauses.push(format!("({})", alternatives.join(" OR ")));
    }
    if !f.states.is_empty() {
        let x = p.bind(Param::TextArray(
            f.states
                .iter()
                .map(|s| s.server_name().to_owned())
                .collect(),
        ));
        p.clauses.push(format!("s.state = ANY({x}::text[])"));
    }
    if !f.pids.is_empty() {
        let x = p.bind(Param::IntArray(f.pids.clone()));
        p.clauses.push(format!("s.pid = ANY({x}::int[])"));
    }
    let older = |p: &mut Predicate, column: &str, d: std::time::Duration| {
        let x = p.bind(Param::Float(d.as_secs_f64()));
        format!("{column} <= pg_catalog.clock_timestamp() - {x}::float8 * interval '1 second'")
    };
    if let Some(d) = f.idle_for {
        let x = p.bind(Param::TextArray(
            IDLE_STATES.iter().map(|s| (*s).to_owned()).collect(),
        ));
        let age = older(p, "s.state_change", d);
        p.clauses
            .push(format!("s.state = ANY({x}::text[]) AND {age}"));
    }
    if let Some(d) = f.xact_older {
        let age = older(p, "s.xact_start", d);
        p.clauses.push(age);
    }
    if let Some(d) = f.query_older {
        let age = older(p, "s.query_start", d);
        p.clauses
            .push(format!("s.state = 'active'::text AND {age}"));
    }
    if let Some(d) = f.backend_older {
        let age = older(p, "s.backend_start", d);
        p.clauses.push(age);
    }
    if !f.queries.is_empty() {
        let x = p.bind(Param::TextArray(f.queries.clone()));
        p.clauses.push(format!("s.query ~ ANY({x}::text[])"));
    }
    if f.blocking {
        p.clauses.push(format!(
            "s.pid IN (SELECT pid FROM ({BLOCKERS}) AS blockers)"
        ));
    }
    for also in &f.also {
        add_filter(p, v, also);
    }
}

/// Lists the sessions matching `filter` (before `--newest/--oldest`, which the caller
/// applies to the ordered result), with the columns `pgkill_pg::sessions` reads by name.
pub fn list_sessions(v: ServerVersion, filter: &Filter, own: &[i32]) -> Query {
    let pred = predicate(v, filter, own, 1);
    let leader = if v.major >= 13 {
        "s.leader_pid"
    } else {
        "NULL::int"
    };
    // `s` reads pg_stat_activity once (a CTE used twice is materialized on every
    // version); `waits` calls pg_blocking_pids once per session waiting on a lock, and
    // both who a session waits for and how many wait for it come from it, counted over
    // all sessions, not only the selected ones.
    let sql = format!(
        "WITH s AS (SELECT * FROM pg_catalog.pg_stat_activity), waits AS (
  SELECT w.pid, pg_catalog.pg_blocking_pids(w.pid) AS blockers
  FROM s w WHERE w.wait_event_type = 'Lock'::text
), blockers AS (
  SELECT b.pid, pg_catalog.count(*)::int AS waiters
  FROM waits, pg_catalog.unnest(waits.blockers) AS b(pid) GROUP BY b.pid
)
SELECT s.pid, s.backend_start, s.datname::text AS datname, s.usename::text AS usename,
       s.application_name, pg_catalog.host(s.client_addr) AS client_addr, s.client_hostname,
       s.client_port, s.state, s.wait_event_type, s.wait_event, s.backend_type,
       s.xact_start, s.query_start, s.state_change, s.query, {leader} AS leader_pid,
       r.rolsuper, wt.blockers AS blocked_by, coalesce(bl.waiters, 0) AS blocking,
       {CAN_SIGNAL} AS can_signal, pg_catalog.clock_timestamp() AS now
FROM s
LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.usesysid
LEFT JOIN waits wt ON wt.pid = s.pid
LEFT JOIN blockers bl ON bl.pid = s.pid
WHERE {where_}
ORDER BY s.backend_start, s.pid",
        where_ = pred.sql()
    );
    Query {
        sql,
        params: pred.params,
    }
}

/// The identity of a target session. `backend_start` distinguishes a reused pid; it is
/// hidden from roles without the privileges of the session's role, and then the role and
/// database (fixed for a backend's life) are what is re-checked besides the selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Process id.
    pub pid: i32,
    /// Backend start, when visible.
    pub backend_start: Option<DateTime<Utc>>,
    /// Role name.
    pub user: Option<String>,
    /// Database name.
    pub database: Option<String>,
}

fn identity_params(targets: &[Identity]) -> Vec<Param> {
    vec![
        Param::IntArray(targets.iter().map(|t| t.pid).collect()),
        Param::TimestampArray(targets.iter().map(|t| t.backend_start).collect()),
        Param::OptTextArray(targets.iter().map(|t| t.user.clone()).collect()),
        Param::OptTextArray(targets.iter().map(|t| t.database.clone()).collect()),
    ]
}

/// Joins `pg_stat_activity s` with the targets of `$1..$4` on their identity.
/// (The several-array `unnest` of FROM is grammar that only exists unqualified; `ROWS
/// FROM` with one qualified `unnest` per array is the same thing.)
const JOIN_TARGETS: &str = "JOIN ROWS FROM (pg_catalog.unnest($1::int[]), pg_catalog.unnest($2::timestamptz[]),
                pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[])) AS t(pid, backend_start, usename, datname)
    ON t.pid = s.pid AND t.backend_start IS NOT DISTINCT FROM s.backend_start
   AND t.usename IS NOT DISTINCT FROM s.usename::text AND t.datname IS NOT DISTINCT FROM s.datname::text";

/// Signals the targets that still match `filter` and that the caller may signal, in one
/// statement. Returns one row per target still present and matching: `pid, allowed
/// (bool), signalled (bool or NULL when not allowed), superuser (bool)`. Superuser
/// sessions are only signalled when `include_superusers`.
pub fn signal(
    v: ServerVersion,
    filter: &Filter,
    signal: Signal,
    targets: &[Identity],
    own: &[i32],
) -> Query {
    let mut params = identity_params(targets);
    params.push(Param::Bool(filter.include_superusers));
    let pred = predicate(v, filter, own, 6);
    params.extend(pred.params.iter().cloned());
    let sql = format!(
        "WITH c AS (
  SELECT s.pid, {CAN_SIGNAL} AND (NOT coalesce(r.rolsuper, false) OR $5::bool) AS allowed,
         coalesce(r.rolsuper, false) AS superuser
  FROM pg_catalog.pg_stat_activity s
  {JOIN_TARGETS}
  LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.usesysid
  WHERE {where_}
)
SELECT pid, allowed, CASE WHEN allowed THEN {func}(pid) END AS signalled, superuser FROM c",
        where_ = pred.sql(),
        func = signal.function()
    );
    Query { sql, params }
}

/// Which of the targets are still present (same identity): polled after terminating
/// until none is left. Run in autocommit so each poll sees a fresh snapshot.
pub fn still_present(targets: &[Identity]) -> Query {
    Query {
        sql: format!("SELECT s.pid FROM pg_catalog.pg_stat_activity s\n{JOIN_TARGETS}"),
        params: identity_params(targets),
    }
}

/// What the caller is and may do, read once per connection.
pub fn capabilities() -> Query {
    Query {
        sql:
            "SELECT pg_catalog.current_setting('server_version_num'::text)::int, current_user::text,
       (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user),
       pg_catalog.pg_has_role('pg_signal_backend'::name, 'USAGE'::text),
       pg_catalog.pg_has_role('pg_read_all_stats'::name, 'USAGE'::text),
       pg_catalog.current_setting('max_identifier_length'::text)::int,
       pg_catalog.pg_is_in_recovery()"
                .into(),
        params: Vec::new(),
    }
}

/// What `top`'s header shows of the server: `max_connections`, backends connected, and
/// seconds since the server started. Counts backend ids only: counting rows of
/// `pg_stat_activity` would read the whole view (query texts, role and database names) a
/// second time per refresh.
pub fn server_summary() -> Query {
    Query {
        sql: "SELECT pg_catalog.current_setting('max_connections'::text)::int8,
       (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_get_backend_idset())::int8,
       extract(epoch FROM pg_catalog.now() - pg_catalog.pg_postmaster_start_time())::float8"
            .into(),
        params: Vec::new(),
    }
}

/// Which of the roles `names` are superusers (for the protection of application
/// connections behind a pooler, which have no backend row to say so).
pub fn superusers_among(names: Vec<String>) -> Query {
    Query {
        sql: "SELECT r.rolname::text FROM pg_catalog.pg_roles r
 WHERE r.rolsuper AND r.rolname::text = ANY ($1::text[])"
            .into(),
        params: vec![Param::TextArray(names)],
    }
}

/// How poolers know this server ([`crate::pooler::ServerIdentity`]): the address and port
/// pgkill's connection came in on, `listen_addresses`, and every client's address and port
/// (one row per TCP client; at least pgkill's own when it came over TCP).
pub fn server_identity() -> Query {
    Query {
        sql: "SELECT pg_catalog.host(pg_catalog.inet_server_addr()), pg_catalog.inet_server_port(),
 pg_catalog.current_setting('listen_addresses'),
 pg_catalog.host(a.client_addr), a.client_port
 FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_stat_activity a ON a.client_port > 0"
            .into(),
        params: vec![],
    }
}

/// Sets this session's `statement_timeout` to `ms` milliseconds (0: no limit).
pub fn set_statement_timeout(ms: u64) -> Query {
    Query {
        sql: "SELECT pg_catalog.set_config('statement_timeout'::text, $1::text, false)".into(),
        params: vec![Param::Text(ms.to_string())],
    }
}

/// Raises this session's `statement_timeout` to at least `floor_ms` milliseconds (no
/// limit stays no limit) and returns what it was, in milliseconds, to set it back with
/// [`set_statement_timeout`].
pub fn raise_statement_timeout(floor_ms: u64) -> Query {
    Query {
        sql: "SELECT s.setting, pg_catalog.set_config('statement_timeout'::text,
       CASE WHEN s.setting::int8 = 0 THEN '0'::text ELSE greatest(s.setting::int8, $1::int8)::text END,
       false)
FROM pg_catalog.pg_settings s WHERE s.name = 'statement_timeout'::text"
            .into(),
        params: vec![Param::Int8(i64::try_from(floor_ms).unwrap_or(i64::MAX))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::State;
    use std::time::Duration;

    fn v(major: u32) -> ServerVersion {
        ServerVersion { major, minor: 0 }
    }

    #[test]
    fn empty_filter_lists_client_backends_but_not_pgkills_own() {
        let q = list_sessions(v(15), &Filter::default(), &[]);
        assert!(q.params.is_empty());
        assert!(q.sql.contains("s.pid <> pg_catalog.pg_backend_pid()"));
        assert!(
            !q.sql.contains("application_name IS DISTINCT"),
            "a client could hide by its name"
        );
        let own = list_sessions(v(15), &Filter::default(), &[4242]);
        assert!(own.sql.contains("s.pid <> ALL($1::int[])"));
        assert_eq!(own.params, vec![Param::IntArray(vec![4242])]);
        assert!(q.sql.contains("s.backend_type = 'client backend'"));
        assert!(q.sql.contains("s.leader_pid IS NULL"));
        let all = list_sessions(
            v(15),
            &Filter {
                all_backends: true,
                ..Filter::default()
            },
            &[],
        );
        assert!(!all.sql.contains("'client backend'"));
    }

    #[test]
    fn leader_pid_only_from_13() {
        // The column only exists from 13; before that it is a NULL placeholder.
        let v12 = list_sessions(v(12), &Filter::default(), &[]).sql;
        assert!(!v12.contains("s.leader_pid") && v12.contains("NULL::int AS leader_pid"));
        assert!(list_sessions(v(13), &Filter::default(), &[])
            .sql
            .contains("s.leader_pid"));
    }

    #[test]
    fn every_value_is_bound() {
        let f = Filter {
            databases: vec!["shop'; DROP DATABASE x; --".into()],
            ..every_filter()
        };
        let q = list_sessions(v(10), &f, &[]);
        assert!(!q.sql.contains("DROP DATABASE"));
        assert!(!q.sql.contains("bob") && !q.sql.contains("web-") && !q.sql.contains("10.0.0.0"));
        assert_eq!(q.params.len(), 12);
        for i in 1..=12 {
            assert!(q.sql.contains(&format!("${i}")), "placeholder ${i} unused");
        }
        assert!(!q.sql.contains("$13"));
        assert_eq!(
            q.params[0],
            Param::TextArray(vec!["shop'; DROP DATABASE x; --".into()])
        );
        assert_eq!(q.params[2], Param::TextArray(vec![r"^web\-.*$".into()]));
        assert_eq!(q.params[3], Param::TextArray(vec!["10.0.0.0/8".into()]));
        assert!(q
            .sql
            .contains("(s.client_addr IS NULL AND s.client_port = -1)"));
        assert!(q.sql.contains("pg_blocking_pids"));
    }

    /// Every filter at once, so that every clause the planner can write is in the SQL.
    fn every_filter() -> Filter {
        Filter {
            databases: vec!["shop".into()],
            users: vec!["bob".into()],
            apps: vec!["web-*".into()],
            clients: vec!["10.0.0.0/8".parse().unwrap(), ClientMatch::Local],
            states: vec![State::IdleInTransaction],
            pids: vec![42],
            idle_for: Some(Duration::from_secs(600)),
            xact_older: Some(Duration::from_secs(300)),
            query_older: Some(Duration::from_secs(30)),
            backend_older: Some(Duration::from_secs(3600)),
            queries: vec!["^UPDATE".into()],
            blocking: true,
            ..Filter::default()
        }
    }

    /// Every statement the planner builds, for every supported version.
    pub(crate) fn every_statement() -> Vec<String> {
        let id = Identity {
            pid: 7,
            backend_start: None,
            user: None,
            database: None,
        };
        let mut all = vec![
            capabilities().sql,
            server_summary().sql,
            set_statement_timeout(5000).sql,
            raise_statement_timeout(60_000).sql,
            still_present(std::slice::from_ref(&id)).sql,
            superusers_among(vec!["a".into()]).sql,
            server_identity().sql,
        ];
        for major in 10..=18 {
            for f in [Filter::default(), every_filter()] {
                all.push(list_sessions(v(major), &f, &[1, 2]).sql);
                for s in [Signal::Cancel, Signal::Terminate] {
                    all.push(signal(v(major), &f, s, std::slice::from_ref(&id), &[1]).sql);
                }
            }
        }
        all
    }

    #[test]
    fn every_function_call_is_schema_qualified() {
        for sql in every_statement() {
            assert_eq!(
                crate::sql::unqualified_calls(&sql),
                Vec::<String>::new(),
                "in:\n{sql}"
            );
        }
    }

    #[test]
    fn filters_held_in_also_are_rechecked_too() {
        let f = Filter {
            databases: vec!["shop".into()],
            ..Filter::default()
        }
        .and(Filter {
            states: vec![State::Idle],
            all_backends: true,
            ..Filter::default()
        })
        .and(Filter::query_contains("a.b"));
        let q = signal(v(15), &f, Signal::Terminate, &[], &[9]);
        assert!(
            q.sql.contains("s.datname::text = ANY($7::text[])"),
            "{}",
            q.sql
        );
        assert!(q.sql.contains("s.state = ANY($8::text[])"), "{}", q.sql);
        assert!(q.sql.contains("s.query ~ ANY($9::text[])"), "{}", q.sql);
        assert_eq!(q.params[8], Param::TextArray(vec![r"(?i)a\.b".into()]));
        assert_eq!(q.params.len(), 9);
    }

    #[test]
    fn signal_rechecks_selection_and_identity() {
        let f = Filter {
            databases: vec!["shop".into()],
            ..Filter::default()
        };
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_000);
        let id = |pid| Identity {
            pid,
            backend_start: at,
            user: Some("u".into()),
            database: Some("shop".into()),
        };
        let q = signal(v(15), &f, Signal::Terminate, &[id(7), id(8)], &[]);
        assert_eq!(q.params[0], Param::IntArray(vec![7, 8]));
        assert_eq!(q.params[1], Param::TimestampArray(vec![at, at]));
        assert_eq!(q.params[4], Param::Bool(false));
        assert_eq!(q.params[5], Param::TextArray(vec!["shop".into()]));
        assert!(q
            .sql
            .contains("t.backend_start IS NOT DISTINCT FROM s.backend_start"));
        assert!(q.sql.contains("s.datname::text = ANY($6::text[])"));
        assert!(q.sql.contains("pg_catalog.pg_terminate_backend(pid)"));
        let c = signal(v(15), &f, Signal::Cancel, &[id(7)], &[]);
        assert!(
            c.sql.contains("pg_catalog.pg_cancel_backend(pid)")
                && !c.sql.contains("pg_terminate_backend")
        );
    }
}

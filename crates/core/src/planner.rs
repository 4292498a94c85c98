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
    /// The placeholder of pgkill's own pids (`int[]`), when there are any.
    own: Option<String>,
    /// Where subqueries read pg_stat_activity: the view, or the statement's CTE of it
    /// (reading the view again would build every backend's row again).
    activity: &'static str,
}

impl Predicate {
    fn new(first: usize, activity: &'static str) -> Self {
        Predicate {
            clauses: Vec::new(),
            params: Vec::new(),
            first,
            own: None,
            activity,
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

/// Whether the caller may signal the row `s`, whose role is a superuser when
/// `superuser` (`r.rolsuper` joined with `pg_roles r`, or [`SUPERUSER`]), as the server
/// decides: superusers signal anything; nobody else signals a superuser's backend or a
/// role-less process; others need the privileges of the session's role or
/// `pg_signal_backend`.
pub(crate) fn can_signal(superuser: &str) -> String {
    format!(
        "(CASE WHEN (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN true
      WHEN {superuser} OR s.usesysid IS NULL THEN false
      ELSE pg_catalog.pg_has_role(s.usesysid, 'USAGE'::text)
        OR pg_catalog.pg_has_role('pg_signal_backend'::name, 'USAGE'::text) END)"
    )
}

/// Whether the row `s` is a superuser's backend, without a join: the superusers' oids
/// are read once per statement (the CTE `supers` of a [`Listing`]), and a listing of a
/// thousand sessions does not pass each of them through a join with `pg_roles`. NULL
/// for a role-less process, false for a role that no longer exists.
const SUPERUSER: &str = "(s.usesysid = ANY ((SELECT supers.oids FROM supers)::oid[]))";

/// Pids that some session waiting on a lock waits for, read from `activity`
/// (pg_stat_activity, or a CTE of it); `pg_blocking_pids` is only called for sessions
/// that wait on a lock.
fn blockers(activity: &str) -> String {
    format!(
        "SELECT b.pid, pg_catalog.count(*)::int AS waiters
  FROM {activity} w, pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
  WHERE w.wait_event_type = 'Lock'::text
  GROUP BY b.pid"
    )
}

/// How many transaction ids the snapshot or transaction id of the backend `alias` is
/// behind the current one (`age(xid)` exists on every version; NULL when it has neither).
fn xmin_age(alias: &str) -> String {
    format!("greatest(pg_catalog.age({alias}.backend_xmin), pg_catalog.age({alias}.backend_xid))")
}

/// The server's xmin horizon as an age: the oldest snapshot or transaction id of any
/// backend but pgkill's own (read from `activity`: the view, or a CTE of it), any
/// replication slot (`xmin`, `catalog_xmin`) and any prepared transaction. (A standby's
/// `hot_standby_feedback` is its walsender's `backend_xmin`, or its slot's `xmin`.)
fn horizon_age(activity: &str, own: Option<&str>) -> String {
    let own = own.map_or_else(String::new, |x| format!(" AND a.pid <> ALL({x}::int[])"));
    format!(
        "(SELECT pg_catalog.max(h.age) FROM (
    SELECT {a} AS age FROM {activity} a WHERE a.pid <> pg_catalog.pg_backend_pid(){own}
    UNION ALL SELECT greatest(pg_catalog.age(l.xmin), pg_catalog.age(l.catalog_xmin)) FROM pg_catalog.pg_replication_slots l
    UNION ALL SELECT pg_catalog.age(x.transaction) FROM pg_catalog.pg_prepared_xacts x) AS h)",
        a = xmin_age("a")
    )
}

/// Whether the row `alias` of pg_stat_activity is (or, hidden, may be) a client session.
fn client_backend(v: ServerVersion, alias: &str) -> String {
    let leader = if v.major >= 13 {
        format!(" AND {alias}.leader_pid IS NULL")
    } else {
        String::new()
    };
    format!(
        "({alias}.backend_type = 'client backend'::text OR ({alias}.backend_type IS NULL AND {alias}.usesysid IS NOT NULL AND {alias}.datid IS NOT NULL{leader}))"
    )
}

/// The SQL alternatives matching `clients` for the row `s`, binding the networks.
fn client_alternatives(p: &mut Predicate, clients: &[ClientMatch]) -> String {
    let nets: Vec<String> = clients
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
    if clients.contains(&ClientMatch::Local) {
        alternatives.push("(s.client_addr IS NULL AND s.client_port = -1)".into());
    }
    format!("({})", alternatives.join(" OR "))
}

/// The selection of `f` for the row `s`, placeholders numbered from `first`; subqueries
/// read pg_stat_activity from `activity` (see [`Predicate`]).
fn predicate(
    v: ServerVersion,
    f: &Filter,
    own: &[i32],
    first: usize,
    activity: &'static str,
) -> Predicate {
    let mut p = Predicate::new(first, activity);
    // Never pgkill's own connections: known by their backend pids, never by a name any
    // client can choose (other pgkill processes' sessions are sessions like any other).
    p.clauses
        .push("s.pid <> pg_catalog.pg_backend_pid()".into());
    if !own.is_empty() {
        let x = p.bind(Param::IntArray(own.to_vec()));
        p.clauses.push(format!("s.pid <> ALL({x}::int[])"));
        p.own = Some(x);
    }
    add_filter(&mut p, v, f);
    p
}

/// Adds `EXPR ANY($n::text[])` with `values` bound, unless there are none; for an
/// exclusion, its negation that keeps rows without a value (`IS NOT TRUE`).
fn any_text(p: &mut Predicate, expr: &str, values: &[String], exclude: bool) {
    if values.is_empty() {
        return;
    }
    let x = p.bind(Param::TextArray(values.to_vec()));
    let test = format!("{expr} ANY({x}::text[])");
    p.clauses.push(if exclude {
        format!("({test}) IS NOT TRUE")
    } else {
        test
    });
}

/// Application-name globs as the regular expressions the server matches.
fn globs(globs: &[String]) -> Vec<String> {
    globs.iter().map(|g| glob_to_regex(g)).collect()
}

/// Adds the clauses of `f` (and of the filters it holds in `also`) to `p`.
fn add_filter(p: &mut Predicate, v: ServerVersion, f: &Filter) {
    if !f.all_backends {
        p.clauses.push(client_backend(v, "s"));
    }
    any_text(p, "s.datname::text =", &f.databases, false);
    any_text(p, "s.usename::text =", &f.users, false);
    // Regular expressions cost the most per row: they are tested after the cheap
    // comparisons (a rule's `AND`s are evaluated in order and stop at the first false;
    // `pgkill watch` decides its rules over every session at each pass). Their
    // parameters keep their numbers.
    let cheap = p.clauses.len();
    any_text(p, "s.application_name ~", &globs(&f.apps), false);
    let costly: Vec<String> = p.clauses.drain(cheap..).collect();
    if !f.clients.is_empty() {
        let alternatives = client_alternatives(p, &f.clients);
        p.clauses.push(alternatives);
    }
    let states: Vec<String> = f
        .states
        .iter()
        .map(|s| s.server_name().to_owned())
        .collect();
    any_text(p, "s.state =", &states, false);
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
    p.clauses.extend(costly);
    if !f.queries.is_empty() {
        let x = p.bind(Param::TextArray(f.queries.clone()));
        p.clauses.push(format!("s.query ~ ANY({x}::text[])"));
    }
    if f.blocking {
        p.clauses.push(format!(
            "s.pid IN (SELECT pid FROM ({}) AS blockers)",
            blockers(p.activity)
        ));
    }
    if f.waiting {
        p.clauses.push("s.wait_event_type = 'Lock'::text".into());
    }
    if let Some(d) = f.blocking_for {
        // Only waiters that have waited that long get pg_blocking_pids called for them.
        let waited = older(p, "w.state_change", d);
        p.clauses.push(format!(
            "s.pid IN (SELECT b.pid
  FROM {} w, pg_catalog.unnest(pg_catalog.pg_blocking_pids(w.pid)) AS b(pid)
  WHERE w.wait_event_type = 'Lock'::text AND {waited})",
            p.activity
        ));
    }
    if f.holding_xmin {
        let horizon = horizon_age(p.activity, p.own.as_deref());
        p.clauses.push(format!("{} >= {horizon}", xmin_age("s")));
    }
    // Exclusions win: a session they name is out whatever else matches (`IS NOT TRUE`:
    // a row without a database, role or application is not excluded by them).
    any_text(p, "s.datname::text =", &f.exclude_databases, true);
    any_text(p, "s.usename::text =", &f.exclude_users, true);
    any_text(p, "s.application_name ~", &globs(&f.exclude_apps), true);
    if !f.exclude_clients.is_empty() {
        // A row whose client columns are hidden from the caller may be in an excluded
        // network: it is excluded too.
        let alternatives = client_alternatives(p, &f.exclude_clients);
        p.clauses.push(format!(
            "NOT (s.backend_type IS NULL AND s.client_port IS NULL) AND {alternatives} IS NOT TRUE"
        ));
    }
    for also in &f.also {
        add_filter(p, v, also);
    }
}

/// Lists the sessions matching `filter` (before `--newest/--oldest`, which the caller
/// applies to the ordered result), with the columns `pgkill_pg::sessions` reads by name.
pub fn list_sessions(v: ServerVersion, filter: &Filter, own: &[i32]) -> Query {
    let pred = predicate(v, filter, own, 1, "s");
    let listing = Listing::new(v, pred.own.as_deref(), "", "", None);
    let sql = format!(
        "WITH {}\n{}\nWHERE {}\nORDER BY s.backend_start, s.pid",
        listing.ctes,
        listing.select,
        pred.sql()
    );
    Query {
        sql,
        params: pred.params,
    }
}

/// A session listing in two parts: the common table expressions (`s`, pg_stat_activity
/// read once, then what the columns need) and the `SELECT … FROM s …` of the columns
/// `pgkill_pg::sessions` reads by name, without its `WHERE`.
struct Listing {
    ctes: String,
    select: String,
}

impl Listing {
    /// `own` is the placeholder of pgkill's own pids (left out of the xmin horizon);
    /// `extra` more columns (`, expr AS name…`), `join` more of `FROM` (` JOIN …`);
    /// `progress`, the rows of [`progress`] to give each session (`top`): its columns
    /// are then `lk.progress_*`.
    fn new(
        v: ServerVersion,
        own: Option<&str>,
        extra: &str,
        join: &str,
        progress: Option<&str>,
    ) -> Listing {
        let leader = if v.major >= 13 {
            "s.leader_pid"
        } else {
            "NULL::int"
        };
        let horizon = horizon_age("s", own);
        let age = xmin_age("s");
        let can_signal = can_signal(SUPERUSER);
        // What only a few sessions have (who they wait for, how many wait for them, the
        // progress of what they run) is gathered into one relation by pid, joined to
        // the sessions once: every join is one more pass over each listed row, and the
        // planner, misled by pg_stat_activity's estimate, hashes the sessions' side.
        let (progress_cte, extras) = match progress {
            None => (String::new(), "locks"),
            Some(rows) => (
                format!(
                    ", progress AS (
{rows}
), extras AS (
  SELECT coalesce(l.pid, p.pid) AS pid, l.blockers, l.waiters, l.waited_on_since,
         p.progress_command, p.progress_phase, p.progress_done, p.progress_total
  FROM locks l FULL JOIN progress p ON p.pid = l.pid
)"
                ),
                "extras",
            ),
        };
        // `s` reads pg_stat_activity once (a CTE used twice is materialized on every
        // version); `waits` calls pg_blocking_pids once per session waiting on a lock,
        // and both who a session waits for and how many wait for it come from it,
        // counted over all sessions, not only the selected ones. The horizon is a value
        // (an init plan), not a join.
        let ctes = format!(
            "s AS (SELECT * FROM pg_catalog.pg_stat_activity), waits AS (
  SELECT w.pid, w.state_change, pg_catalog.pg_blocking_pids(w.pid) AS blockers
  FROM s w WHERE w.wait_event_type = 'Lock'::text
), blockers AS (
  SELECT b.pid, pg_catalog.count(*)::int AS waiters, pg_catalog.min(waits.state_change) AS waited_on_since
  FROM waits, pg_catalog.unnest(waits.blockers) AS b(pid) GROUP BY b.pid
), locks AS (
  SELECT coalesce(wt.pid, bl.pid) AS pid, wt.blockers, bl.waiters, bl.waited_on_since
  FROM waits wt FULL JOIN blockers bl ON bl.pid = wt.pid
){progress_cte}, horizon AS (SELECT {horizon} AS age), supers AS (
  SELECT coalesce(pg_catalog.array_agg(su.oid), '{{}}'::oid[]) AS oids
  FROM pg_catalog.pg_roles su WHERE su.rolsuper
)"
        );
        let select = format!(
            "SELECT s.pid, s.backend_start, s.datname::text AS datname, s.usename::text AS usename,
       s.application_name, pg_catalog.host(s.client_addr) AS client_addr, s.client_hostname,
       s.client_port, s.state, s.wait_event_type, s.wait_event, s.backend_type,
       s.xact_start, s.query_start, s.state_change, s.query, {leader} AS leader_pid,
       {SUPERUSER} AS rolsuper, lk.blockers AS blocked_by, coalesce(lk.waiters, 0) AS blocking,
       lk.waited_on_since, {age} AS xmin_age,
       coalesce({age} >= (SELECT horizon.age FROM horizon), false) AS holds_xmin,
       {can_signal} AS can_signal, pg_catalog.clock_timestamp() AS now{extra}
FROM s{join}
LEFT JOIN {extras} lk ON lk.pid = s.pid"
        );
        Listing { ctes, select }
    }
}

/// One evaluation of `pgkill watch`'s rules, in one statement: the sessions some rule
/// matches, each with `rule`, the index in `rules` of the first rule that matches it
/// (the columns of [`list_sessions`] besides); and on every row (also on the one row
/// with every session column NULL when nothing matches) `count_states` and `counts`:
/// the client sessions by state (`unknown` when the state is hidden), pgkill's own left
/// out. pg_stat_activity is read once, so the counts and the matches are one snapshot.
pub fn rule_matches(v: ServerVersion, rules: &[&Filter], own: &[i32]) -> Query {
    let mut params = Vec::new();
    let mut cases = Vec::new();
    let mut own_at = None;
    for (i, rule) in rules.iter().enumerate() {
        let pred = predicate(v, rule, own, params.len() + 1, "s");
        own_at = own_at.or(pred.own.clone());
        cases.push(format!("WHEN {} THEN {i}", pred.sql()));
        params.extend(pred.params);
    }
    let own_out = own_at
        .as_deref()
        .map_or_else(String::new, |x| format!(" AND c.pid <> ALL({x}::int[])"));
    let rule = if cases.is_empty() {
        "NULL::int".to_owned()
    } else {
        format!("CASE {} END", cases.join("\n  "))
    };
    // The rules are decided first, on pg_stat_activity's own columns; the listing's
    // columns are then computed only for the sessions some rule matched.
    let listing = Listing::new(
        v,
        own_at.as_deref(),
        ", matched.rule",
        " JOIN matched ON matched.pid = s.pid",
        None,
    );
    let sql = format!(
        "WITH {ctes}, matched AS (
  SELECT r.pid, r.rule FROM (SELECT s.pid, {rule} AS rule FROM s) AS r WHERE r.rule IS NOT NULL
), listed AS (
{select}
), counts AS (
  SELECT pg_catalog.array_agg(n.state) AS count_states, pg_catalog.array_agg(n.n) AS counts
  FROM (SELECT coalesce(c.state, 'unknown'::text) AS state, pg_catalog.count(*)::int8 AS n
        FROM s c
        WHERE coalesce(c.backend_type, 'client backend'::text) = 'client backend'::text
          AND c.pid <> pg_catalog.pg_backend_pid(){own_out}
        GROUP BY 1) AS n
)
SELECT counts.count_states, counts.counts, m.*
FROM counts LEFT JOIN listed AS m ON true
ORDER BY m.backend_start, m.pid",
        ctes = listing.ctes,
        select = listing.select,
    );
    Query { sql, params }
}

/// What holds the server's xmin horizon back, for `--holding-xmin`'s report (see
/// [`crate::horizon`]): every replication slot, prepared transaction, standby (a
/// walsender with a feedback xmin) and other non-client backend with an xmin, and the
/// oldest client session. Columns `kind, name, database, pid, age, detail`; pgkill's
/// own connections are left out.
pub fn xmin_holders(v: ServerVersion, own: &[i32]) -> Query {
    let mut params = Vec::new();
    let mut not_own = String::from("a.pid <> pg_catalog.pg_backend_pid()");
    if !own.is_empty() {
        params.push(Param::IntArray(own.to_vec()));
        not_own.push_str(" AND a.pid <> ALL($1::int[])");
    }
    let age = xmin_age("a");
    let client = client_backend(v, "a");
    // A parallel worker shares its leader's snapshot: the leader is the one to name.
    let not_a_worker = if v.major >= 13 {
        " AND a.leader_pid IS NULL"
    } else {
        ""
    };
    let sql = format!(
        "SELECT h.kind, h.name, h.database, h.pid, h.age, h.detail FROM (
  SELECT 'replication_slot'::text AS kind, l.slot_name::text AS name, l.database::text AS database,
         l.active_pid AS pid, greatest(pg_catalog.age(l.xmin), pg_catalog.age(l.catalog_xmin)) AS age,
         CASE WHEN l.xmin IS NULL THEN 'catalog_xmin'::text ELSE 'xmin'::text END AS detail
  FROM pg_catalog.pg_replication_slots l
  UNION ALL
  SELECT 'prepared_transaction'::text, x.gid, x.database::text, NULL::int, pg_catalog.age(x.transaction),
         x.owner::text
  FROM pg_catalog.pg_prepared_xacts x
  UNION ALL
  SELECT 'standby'::text, r.application_name, NULL::text, r.pid, pg_catalog.age(r.backend_xmin),
         pg_catalog.host(r.client_addr)
  FROM pg_catalog.pg_stat_replication r
  UNION ALL
  SELECT 'backend'::text, a.backend_type, a.datname::text, a.pid, {age}, NULL::text
  FROM pg_catalog.pg_stat_activity a
  WHERE {not_own} AND NOT {client} AND a.backend_type IS DISTINCT FROM 'walsender'::text{not_a_worker}
  UNION ALL
  (SELECT 'session'::text, a.usename::text, a.datname::text, a.pid, {age}, a.application_name
   FROM pg_catalog.pg_stat_activity a
   WHERE {not_own} AND {client} AND {age} IS NOT NULL
   ORDER BY 5 DESC, a.pid LIMIT 1)
) AS h
WHERE h.age IS NOT NULL
ORDER BY h.age DESC, h.kind, h.name"
    );
    Query { sql, params }
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
    let pred = predicate(v, filter, own, 6, "pg_catalog.pg_stat_activity");
    params.extend(pred.params.iter().cloned());
    let sql = format!(
        "WITH c AS (
  SELECT s.pid, {can_signal} AND (NOT coalesce(r.rolsuper, false) OR $5::bool) AS allowed,
         coalesce(r.rolsuper, false) AS superuser
  FROM pg_catalog.pg_stat_activity s
  {JOIN_TARGETS}
  LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.usesysid
  WHERE {where_}
)
SELECT pid, allowed, CASE WHEN allowed THEN {func}(pid) END AS signalled, superuser FROM c",
        where_ = pred.sql(),
        func = signal.function(),
        can_signal = can_signal("r.rolsuper"),
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
       pg_catalog.pg_is_in_recovery(),
       (extract(epoch FROM pg_catalog.pg_postmaster_start_time()) * 1000000)::int8,
       pg_catalog.current_setting('port'::text)::int4"
                .into(),
        params: Vec::new(),
    }
}

/// The lock each of the sessions `pids` waits for (`top`'s blocking tree): one row per
/// waiter with `pid, locktype, mode, database, relid, nspname, relname, waitstart`. Only the
/// waiters' ungranted locks are read. The relation is named only when it is in the
/// database pgkill is connected to (`pg_class` is per database: an oid from another
/// database could name an unrelated table here). `waitstart` exists from PostgreSQL 14;
/// before, it is NULL (the caller falls back to the waiter's `state_change`).
pub fn lock_waits(v: ServerVersion, pids: &[i32]) -> Query {
    let waitstart = if v.major >= 14 {
        "l.waitstart"
    } else {
        "NULL::timestamptz"
    };
    let sql = format!(
        "SELECT DISTINCT ON (l.pid) l.pid, l.locktype, l.mode, d.datname::text AS database,
       l.relation::int8 AS relid, n.nspname::text AS nspname, c.relname::text AS relname, {waitstart} AS waitstart
FROM pg_catalog.pg_locks l
LEFT JOIN pg_catalog.pg_database d ON d.oid = l.database
LEFT JOIN pg_catalog.pg_class c ON c.oid = l.relation
  AND l.database = (SELECT o.oid FROM pg_catalog.pg_database o WHERE o.datname = pg_catalog.current_database())
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE NOT l.granted AND l.pid = ANY($1::int[])
ORDER BY l.pid"
    );
    Query {
        sql,
        params: vec![Param::IntArray(pids.to_vec())],
    }
}

/// What `top` reads of the server at each refresh besides the sessions, as CTEs over
/// `s` (the statement's one read of pg_stat_activity) and the columns they give:
///
/// - always `max_connections`, `connections` (backends, from `s`) and `uptime` (seconds
///   since the server started);
/// - with `health`, the health header's readings, from cheap views: the cumulative
///   counters of `pg_stat_database` summed over databases (`commits, rollbacks,
///   blks_hit, blks_read, temp_files, temp_bytes`: `top` turns two refreshes into
///   rates), the oldest client transaction's age in seconds (`oldest_xact`, not counting
///   pgkill's), the autovacuum workers running and `autovacuum_max_workers`
///   (`autovacuum`, `autovacuum_max`), the server's clock (`health_at`), and each
///   standby streaming from this server as arrays in one order (`standby_names`,
///   `standby_addrs`, `standby_states`, `standby_lags`: `replay_lag` in seconds,
///   `standby_behind`: bytes of WAL yet to replay, NULL on a standby). The standbys come
///   from `pg_stat_get_wal_senders()` joined with `s`, which is what
///   `pg_stat_replication` is, without building every backend's row again.
struct Readings {
    ctes: String,
    columns: &'static str,
    from: &'static str,
}

impl Readings {
    fn new(health: bool) -> Readings {
        let mut ctes = String::from(
            "summary AS (
  SELECT pg_catalog.current_setting('max_connections'::text)::int8 AS max_connections,
         (SELECT pg_catalog.count(*) FROM s)::int8 AS connections,
         extract(epoch FROM pg_catalog.now() - pg_catalog.pg_postmaster_start_time())::float8 AS uptime
)",
        );
        if !health {
            return Readings {
                ctes,
                columns: "summary.*",
                from: "summary",
            };
        }
        ctes.push_str(
            ", health AS (
  SELECT d.commits, d.rollbacks, d.blks_hit, d.blks_read, d.temp_files, d.temp_bytes,
         a.oldest_xact, a.autovacuum,
         pg_catalog.current_setting('autovacuum_max_workers'::text)::int8 AS autovacuum_max,
         pg_catalog.clock_timestamp() AS health_at
  FROM (SELECT pg_catalog.sum(x.xact_commit)::int8 AS commits, pg_catalog.sum(x.xact_rollback)::int8 AS rollbacks,
               pg_catalog.sum(x.blks_hit)::int8 AS blks_hit, pg_catalog.sum(x.blks_read)::int8 AS blks_read,
               pg_catalog.sum(x.temp_files)::int8 AS temp_files, pg_catalog.sum(x.temp_bytes)::int8 AS temp_bytes
        FROM pg_catalog.pg_stat_database x) AS d,
       (SELECT extract(epoch FROM pg_catalog.max(pg_catalog.clock_timestamp() - x.xact_start)
                       FILTER (WHERE x.backend_type = 'client backend'::text
                                 AND x.pid <> pg_catalog.pg_backend_pid()))::float8 AS oldest_xact,
               pg_catalog.count(*) FILTER (WHERE x.backend_type = 'autovacuum worker'::text)::int8 AS autovacuum
        FROM s x) AS a
), standbys AS (
  SELECT pg_catalog.array_agg(r.name ORDER BY r.name, r.pid) AS standby_names,
         pg_catalog.array_agg(r.addr ORDER BY r.name, r.pid) AS standby_addrs,
         pg_catalog.array_agg(r.state ORDER BY r.name, r.pid) AS standby_states,
         pg_catalog.array_agg(r.lag ORDER BY r.name, r.pid) AS standby_lags,
         pg_catalog.array_agg(r.behind ORDER BY r.name, r.pid) AS standby_behind
  FROM (SELECT w.pid, x.application_name AS name, pg_catalog.host(x.client_addr) AS addr, w.state,
               extract(epoch FROM w.replay_lag)::float8 AS lag,
               CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                    ELSE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), w.replay_lsn)::int8 END AS behind
        FROM pg_catalog.pg_stat_get_wal_senders() AS w JOIN s x ON x.pid = w.pid) AS r
)",
        );
        Readings {
            ctes,
            columns: "summary.*, health.*, standbys.*",
            from: "summary CROSS JOIN health CROSS JOIN standbys",
        }
    }
}

/// The commands `pg_stat_progress_*` reports on, for `top`: `pid, progress_command,
/// progress_phase, progress_done, progress_total` (blocks, or bytes for a base backup
/// and COPY; `total` NULL or 0 when unknown). VACUUM from 10, CREATE INDEX and CLUSTER
/// from 12, ANALYZE and BASE_BACKUP from 13, COPY from 14.
fn progress(v: ServerVersion) -> String {
    // (from which major version, the view's rows in the columns above)
    const VIEWS: [(u32, &str); 6] = [
        (
            10,
            "SELECT p.pid, 'VACUUM'::text AS progress_command, p.phase AS progress_phase,
       p.heap_blks_scanned::int8 AS progress_done, p.heap_blks_total::int8 AS progress_total
FROM pg_catalog.pg_stat_progress_vacuum p",
        ),
        (
            12,
            "SELECT p.pid, p.command, p.phase, p.blocks_done::int8, p.blocks_total::int8
FROM pg_catalog.pg_stat_progress_create_index p",
        ),
        (
            12,
            "SELECT p.pid, p.command, p.phase, p.heap_blks_scanned::int8, p.heap_blks_total::int8
FROM pg_catalog.pg_stat_progress_cluster p",
        ),
        (
            13,
            "SELECT p.pid, 'ANALYZE'::text, p.phase, p.sample_blks_scanned::int8, p.sample_blks_total::int8
FROM pg_catalog.pg_stat_progress_analyze p",
        ),
        (
            13,
            "SELECT p.pid, 'BASE_BACKUP'::text, p.phase, p.backup_streamed::int8, p.backup_total::int8
FROM pg_catalog.pg_stat_progress_basebackup p",
        ),
        (
            14,
            "SELECT p.pid, p.command, p.type, p.bytes_processed::int8, p.bytes_total::int8
FROM pg_catalog.pg_stat_progress_copy p",
        ),
    ];
    VIEWS
        .iter()
        .filter(|(from, _)| v.major >= *from)
        .map(|(_, sql)| *sql)
        .collect::<Vec<_>>()
        .join("\nUNION ALL\n")
}

/// One refresh of `top`, in one statement that reads pg_stat_activity once: the sessions
/// matching `filter` (the columns of [`list_sessions`], in no order: `top` sorts them
/// itself, and sorting a thousand wide rows is a tenth of the statement), each with what
/// `pg_stat_progress_*` says of it (see [`progress`]), and on one row (the one with a
/// non-NULL `max_connections`; every session column NULL on it when nothing matches)
/// the server's readings (see [`Readings`]).
pub fn top_refresh(v: ServerVersion, filter: &Filter, own: &[i32], health: bool) -> Query {
    let pred = predicate(v, filter, own, 1, "s");
    let listing = Listing::new(
        v,
        pred.own.as_deref(),
        ", lk.progress_command, lk.progress_phase, lk.progress_done, lk.progress_total",
        "",
        Some(&progress(v)),
    );
    let readings = Readings::new(health);
    // The readings ride on one row only (the lowest pid's, or a row of their own when
    // nothing matches): repeated on every row they would cost more to send than to
    // read. Picking that row is one more pass over the listed rows, no sort or hash.
    let sql = format!(
        "WITH {ctes}, {readings}, listed AS (
{select}
WHERE {pred}
), readings AS (SELECT {columns} FROM {from})
SELECT r.*, m.*
FROM (SELECT 1) AS one LEFT JOIN listed AS m ON true
LEFT JOIN readings AS r ON m.pid IS NOT DISTINCT FROM (SELECT pg_catalog.min(f.pid) FROM listed AS f)",
        ctes = listing.ctes,
        readings = readings.ctes,
        select = listing.select,
        pred = pred.sql(),
        columns = readings.columns,
        from = readings.from,
    );
    Query {
        sql,
        params: pred.params,
    }
}

/// The server's readings of [`top_refresh`] alone (when the sessions are listed another
/// way: through PgBouncer): one row.
pub fn top_readings(health: bool) -> Query {
    let readings = Readings::new(health);
    Query {
        sql: format!(
            "WITH s AS (SELECT * FROM pg_catalog.pg_stat_activity), {}\nSELECT {} FROM {}",
            readings.ctes, readings.columns, readings.from
        ),
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
        assert_eq!(q.params.len(), 17);
        for i in 1..=17 {
            assert!(q.sql.contains(&format!("${i}")), "placeholder ${i} unused");
        }
        assert!(!q.sql.contains("$18"));
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
            blocking_for: Some(Duration::from_secs(1)),
            holding_xmin: true,
            exclude_databases: vec!["postgres".into()],
            exclude_users: vec!["batch".into()],
            exclude_apps: vec!["cron-*".into()],
            exclude_clients: vec!["192.168.0.0/16".parse().unwrap(), ClientMatch::Local],
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
            top_readings(false).sql,
            top_readings(true).sql,
            set_statement_timeout(5000).sql,
            raise_statement_timeout(60_000).sql,
            still_present(std::slice::from_ref(&id)).sql,
            superusers_among(vec!["a".into()]).sql,
            server_identity().sql,
        ];
        for major in 10..=18 {
            all.push(xmin_holders(v(major), &[]).sql);
            all.push(lock_waits(v(major), &[1, 2]).sql);
            all.push(xmin_holders(v(major), &[1, 2]).sql);
            all.push(rule_matches(v(major), &[&Filter::default(), &every_filter()], &[1, 2]).sql);
            all.push(rule_matches(v(major), &[], &[]).sql);
            all.push(top_refresh(v(major), &every_filter(), &[1, 2], true).sql);
            all.push(top_refresh(v(major), &Filter::default(), &[], false).sql);
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
    fn lock_waits_reads_waitstart_from_14_only() {
        assert!(lock_waits(v(13), &[1])
            .sql
            .contains("NULL::timestamptz AS waitstart"));
        assert!(lock_waits(v(14), &[1])
            .sql
            .contains("l.waitstart AS waitstart"));
        let q = lock_waits(v(18), &[3, 4]);
        assert!(q.sql.contains("NOT l.granted AND l.pid = ANY($1::int[])"));
        assert_eq!(q.params, vec![Param::IntArray(vec![3, 4])]);
    }

    #[test]
    fn top_refresh_reads_pg_stat_activity_once_with_each_versions_progress_views() {
        for major in 10..=18 {
            for health in [false, true] {
                let q = top_refresh(v(major), &every_filter(), &[1, 2], health);
                assert_eq!(
                    q.sql.matches("pg_catalog.pg_stat_activity").count(),
                    1,
                    "{major}: {}",
                    q.sql
                );
                assert!(!q.sql.contains("pg_stat_replication"), "{}", q.sql);
                assert_eq!(q.sql.contains("pg_stat_get_wal_senders"), health);
                assert_eq!(q.sql.contains("pg_stat_database"), health);
                // The same values as the listing, in the same order.
                assert_eq!(
                    q.params,
                    list_sessions(v(major), &every_filter(), &[1, 2]).params
                );
            }
            let sql = top_refresh(v(major), &Filter::default(), &[], false).sql;
            for (view, from) in [
                ("vacuum", 10),
                ("create_index", 12),
                ("cluster", 12),
                ("analyze", 13),
                ("basebackup", 13),
                ("copy", 14),
            ] {
                assert_eq!(
                    sql.contains(&format!("pg_catalog.pg_stat_progress_{view} ")),
                    major >= from,
                    "{major} {view}"
                );
            }
        }
        let readings = top_readings(true).sql;
        assert_eq!(readings.matches("pg_catalog.pg_stat_activity").count(), 1);
    }

    #[test]
    fn rule_matches_numbers_each_rules_values_and_keeps_their_order() {
        let a = Filter {
            databases: vec!["a".into()],
            ..Filter::default()
        };
        let b = Filter {
            users: vec!["u".into()],
            ..Filter::default()
        };
        let q = rule_matches(v(15), &[&a, &b], &[9]);
        assert_eq!(
            q.params,
            vec![
                Param::IntArray(vec![9]),
                Param::TextArray(vec!["a".into()]),
                Param::IntArray(vec![9]),
                Param::TextArray(vec!["u".into()]),
            ]
        );
        let first = q.sql.find("s.datname::text = ANY($2::text[])").unwrap();
        let second = q.sql.find("s.usename::text = ANY($4::text[])").unwrap();
        assert!(first < second, "{}", q.sql);
        assert!(q.sql.contains("THEN 0") && q.sql.contains("THEN 1"));
        // Only rows some rule matches, and pgkill's own left out of the counts.
        assert!(q.sql.contains("WHERE r.rule IS NOT NULL"));
        assert!(q.sql.contains("c.pid <> ALL($1::int[])"));
        // pg_stat_activity is read once.
        assert_eq!(q.sql.matches("pg_catalog.pg_stat_activity").count(), 1);
        assert_eq!(rule_matches(v(15), &[], &[]).params, vec![]);
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
    fn the_waiting_word_is_checked_on_the_server_too() {
        let f = Filter {
            waiting: true,
            ..Filter::default()
        };
        let clause = "s.wait_event_type = 'Lock'::text";
        assert!(list_sessions(v(10), &f, &[]).sql.contains(clause));
        // The signalling statement re-checks it: a session no longer waiting is not hit.
        assert!(signal(v(18), &f, Signal::Terminate, &[], &[])
            .sql
            .contains(clause));
        assert!(!list_sessions(v(18), &Filter::default(), &[])
            .sql
            .contains(clause));
    }

    #[test]
    fn exclusions_are_on_the_server_and_win() {
        let f = Filter {
            databases: vec!["shop".into()],
            exclude_databases: vec!["shop".into()],
            exclude_users: vec!["u".into()],
            exclude_apps: vec!["web-*".into()],
            exclude_clients: vec!["10.0.0.0/8".parse().unwrap()],
            ..Filter::default()
        };
        let q = list_sessions(v(15), &f, &[]);
        assert!(
            q.sql.contains("s.datname::text = ANY($1::text[])"),
            "{}",
            q.sql
        );
        assert!(q
            .sql
            .contains("(s.datname::text = ANY($2::text[])) IS NOT TRUE"));
        assert!(q
            .sql
            .contains("(s.usename::text = ANY($3::text[])) IS NOT TRUE"));
        assert!(q
            .sql
            .contains("(s.application_name ~ ANY($4::text[])) IS NOT TRUE"));
        assert!(q.sql.contains(
            "NOT (s.backend_type IS NULL AND s.client_port IS NULL) AND (s.client_addr <<= ANY($5::text[]::inet[])) IS NOT TRUE"
        ));
        assert_eq!(q.params[3], Param::TextArray(vec![r"^web\-.*$".into()]));
        // The signalling statement re-checks them.
        let sig = signal(v(15), &f, Signal::Terminate, &[], &[]);
        assert!(sig
            .sql
            .contains("(s.usename::text = ANY($8::text[])) IS NOT TRUE"));
    }

    #[test]
    fn blocking_for_calls_pg_blocking_pids_only_for_long_lock_waiters() {
        let f = Filter {
            blocking_for: Some(Duration::from_millis(1500)),
            ..Filter::default()
        };
        for major in [10, 18] {
            let q = signal(v(major), &f, Signal::Terminate, &[], &[]);
            assert!(
                q.sql.contains(
                    "WHERE w.wait_event_type = 'Lock'::text AND w.state_change <= pg_catalog.clock_timestamp() - $6::float8 * interval '1 second')"
                ),
                "{}",
                q.sql
            );
            assert_eq!(q.params[5], Param::Float(1.5));
        }
        let listed = list_sessions(v(12), &f, &[]).sql;
        assert!(listed.contains("pg_catalog.min(waits.state_change) AS waited_on_since"));
    }

    #[test]
    fn holding_xmin_compares_with_every_holder_but_pgkill() {
        let f = Filter {
            holding_xmin: true,
            ..Filter::default()
        };
        let q = list_sessions(v(10), &f, &[77]);
        let age = "greatest(pg_catalog.age(s.backend_xmin), pg_catalog.age(s.backend_xid))";
        assert!(
            q.sql
                .contains(&format!("{age} >= (SELECT pg_catalog.max(h.age)")),
            "{}",
            q.sql
        );
        assert!(q.sql.contains("FROM pg_catalog.pg_replication_slots l"));
        assert!(q
            .sql
            .contains("pg_catalog.age(x.transaction) FROM pg_catalog.pg_prepared_xacts x"));
        assert!(q
            .sql
            .contains("a.pid <> pg_catalog.pg_backend_pid() AND a.pid <> ALL($1::int[])"));
        assert!(q.sql.contains(&format!("{age} AS xmin_age")));
        // The re-check inside the signalling statement does the same.
        let sig = signal(v(18), &f, Signal::Cancel, &[], &[77]);
        assert!(sig
            .sql
            .contains(&format!("{age} >= (SELECT pg_catalog.max(h.age)")));
        assert!(sig.sql.contains("a.pid <> ALL($6::int[])"), "{}", sig.sql);
    }

    #[test]
    fn xmin_holders_per_version() {
        let v10 = xmin_holders(v(10), &[]);
        let v18 = xmin_holders(v(18), &[5]);
        assert!(v10.params.is_empty() && !v10.sql.contains("$1"));
        assert_eq!(v18.params, vec![Param::IntArray(vec![5])]);
        // leader_pid (13+) tells parallel workers from client sessions, and leaves them out
        // of the other backends (their leader is named).
        assert!(!v10.sql.contains("leader_pid"));
        assert!(v18
            .sql
            .contains("'walsender'::text AND a.leader_pid IS NULL"));
        for q in [&v10.sql, &v18.sql] {
            for kind in [
                "replication_slot",
                "prepared_transaction",
                "standby",
                "backend",
                "session",
            ] {
                assert!(q.contains(&format!("'{kind}'::text")), "{kind}");
            }
            assert!(q.contains("pg_catalog.age(r.backend_xmin)"));
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

//! The policy file (TOML): what `pgkill watch` enforces, parsed into the same
//! [`Filter`]s the CLI builds from its flags, so the server evaluates a rule exactly as it
//! evaluates `pgkill kill` with the same filters (and re-checks it inside the statement
//! that signals).
//!
//! Unknown keys are errors that name their line (`deny_unknown_fields`); values that do
//! not parse (durations, states, networks, actions) too. Checks across keys (an
//! `escalate_after` without `cancel-then-terminate`, a rule that matches everything, two
//! rules of one name) are collected, so `--check` lists every one of them at once.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use pgkill_core::{parse_duration, ClientMatch, Filter, State};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

/// The policy name used when the file names none (it keys the HA advisory lock).
pub const DEFAULT_NAME: &str = "pgkill-watch";
/// The evaluation period when the file sets none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Query text kept in an audit line when the file sets nothing.
pub const DEFAULT_AUDIT_QUERY_CHARS: usize = 1000;

/// What a rule does to the sessions it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `pg_cancel_backend`: cancel the running statement.
    Cancel,
    /// `pg_terminate_backend`: end the session (verified).
    Terminate,
    /// Cancel first; terminate if the session still matches `escalate_after` later.
    CancelThenTerminate,
}

impl Action {
    /// The policy file's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Terminate => "terminate",
            Action::CancelThenTerminate => "cancel-then-terminate",
        }
    }
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name (audit lines and metric labels carry it).
    pub name: String,
    /// Which sessions it is about: its `match`, `include_superusers`, and `[protect]` as
    /// exclusions (so protection is re-checked inside the signalling statement too).
    pub filter: Filter,
    /// What it does.
    pub action: Action,
    /// For `cancel-then-terminate`: how long after the cancel a session that still
    /// matches is terminated.
    pub escalate_after: Option<Duration>,
    /// At most this many actions of this rule per minute and target.
    pub max_per_minute: Option<u32>,
    /// This rule only audits what it would do.
    pub dry_run: bool,
}

/// One `[[target]]`: a server to watch.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Its name (audit lines and metric labels carry it).
    pub name: String,
    /// Any conninfo string, URI or service (passwords come from `.pgpass`/`PGPASSWORD`).
    pub conninfo: String,
}

impl fmt::Debug for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The conninfo could hold a password (refused by the checks, but never printed).
        f.debug_struct("TargetSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `[protect]`: never acted on, whatever a rule says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protect {
    /// Roles.
    pub users: Vec<String>,
    /// `application_name` globs.
    pub apps: Vec<String>,
    /// Databases.
    pub databases: Vec<String>,
    /// Client networks (or `local`).
    pub clients: Vec<ClientMatch>,
}

/// A parsed and checked policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `name`: keys the leader lock (see [`crate::leader`]).
    pub name: String,
    /// `interval`: evaluation period per target.
    pub interval: Duration,
    /// `audit_query_chars`: query text kept in audit lines (characters).
    pub audit_query_chars: usize,
    /// `[protect]`.
    pub protect: Protect,
    /// `[limits] max_actions_per_minute`: per target, over all rules.
    pub max_actions_per_minute: Option<u32>,
    /// `[[rule]]`, in order: a session is acted on by the first that matches it.
    pub rules: Vec<Rule>,
    /// `[[target]]`; empty: the server of the command line.
    pub targets: Vec<TargetSpec>,
}

/// Why a policy was refused: every problem found, each naming its line where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct PolicyError {
    /// One line per problem.
    pub problems: Vec<String>,
}

/// A duration as the CLI takes it (`500ms`, `30s`, `5m`).
#[derive(Debug, Clone, Copy)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Dur).map_err(de::Error::custom)
    }
}

/// One value or a list of them (`app = "x"` or `app = ["x", "y"]`), each read with
/// `FromStr`.
#[derive(Debug, Clone)]
struct Items<T>(Vec<T>);

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items(Vec::new())
    }
}

impl<'de, T> Deserialize<'de> for Items<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T> Visitor<'de> for V<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Items<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map(|t| Items(vec![t])).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s.parse().map_err(de::Error::custom)?);
                }
                Ok(Items(out))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<String>,
    interval: Option<Dur>,
    audit_query_chars: Option<usize>,
    #[serde(default)]
    protect: RawProtect,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    #[serde(default)]
    users: Items<String>,
    #[serde(default)]
    apps: Items<String>,
    #[serde(default)]
    databases: Items<String>,
    #[serde(default)]
    clients: Items<ClientMatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_actions_per_minute: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    #[serde(rename = "match")]
    matches: RawMatch,
    action: Action,
    escalate_after: Option<Dur>,
    max_per_minute: Option<u32>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    include_superusers: bool,
}

/// Every CLI filter, by its flag's name with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    db: Items<String>,
    #[serde(default)]
    user: Items<String>,
    #[serde(default)]
    app: Items<String>,
    #[serde(default)]
    client: Items<ClientMatch>,
    #[serde(default)]
    state: Items<State>,
    idle_for: Option<Dur>,
    xact_older: Option<Dur>,
    query_older: Option<Dur>,
    backend_older: Option<Dur>,
    #[serde(default)]
    query: Items<String>,
    #[serde(default)]
    blocking: bool,
    blocking_for: Option<Dur>,
    #[serde(default)]
    holding_xmin: bool,
    #[serde(default)]
    exclude_db: Items<String>,
    #[serde(default)]
    exclude_user: Items<String>,
    #[serde(default)]
    exclude_app: Items<String>,
    #[serde(default)]
    exclude_client: Items<ClientMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: Spanned<String>,
    conninfo: String,
}

impl RawMatch {
    fn to_filter(&self, protect: &Protect, include_superusers: bool) -> Filter {
        let mut filter = Filter {
            databases: self.db.0.clone(),
            users: self.user.0.clone(),
            apps: self.app.0.clone(),
            clients: self.client.0.clone(),
            states: self.state.0.clone(),
            idle_for: self.idle_for.map(|d| d.0),
            xact_older: self.xact_older.map(|d| d.0),
            query_older: self.query_older.map(|d| d.0),
            backend_older: self.backend_older.map(|d| d.0),
            queries: self.query.0.clone(),
            blocking: self.blocking,
            blocking_for: self.blocking_for.map(|d| d.0),
            holding_xmin: self.holding_xmin,
            exclude_databases: self.exclude_db.0.clone(),
            exclude_users: self.exclude_user.0.clone(),
            exclude_apps: self.exclude_app.0.clone(),
            exclude_clients: self.exclude_client.0.clone(),
            include_superusers,
            ..Filter::default()
        };
        filter.exclude_users.extend(protect.users.iter().cloned());
        filter.exclude_apps.extend(protect.apps.iter().cloned());
        filter
            .exclude_databases
            .extend(protect.databases.iter().cloned());
        filter
            .exclude_clients
            .extend(protect.clients.iter().cloned());
        filter
    }

    /// Whether nothing narrows the selection (exclusions alone leave "every session").
    fn selects_everything(&self) -> bool {
        self.db.0.is_empty()
            && self.user.0.is_empty()
            && self.app.0.is_empty()
            && self.client.0.is_empty()
            && self.state.0.is_empty()
            && self.idle_for.is_none()
            && self.xact_older.is_none()
            && self.query_older.is_none()
            && self.backend_older.is_none()
            && self.query.0.is_empty()
            && !self.blocking
            && self.blocking_for.is_none()
            && !self.holding_xmin
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Whether a conninfo string or URI carries a password (`password=`, `user:pw@`).
fn has_password(conninfo: &str) -> bool {
    let text = conninfo.trim();
    if let Some(rest) = text
        .strip_prefix("postgresql://")
        .or_else(|| text.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let userinfo = authority.rsplit_once('@').map(|(u, _)| u).unwrap_or("");
        return userinfo.contains(':') || text.contains("password=");
    }
    text.split_whitespace().any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("password"))
    }) || text.contains("password =")
}

impl Policy {
    /// The rules' filters, in order.
    pub fn filters(&self) -> Vec<&Filter> {
        self.rules.iter().map(|r| &r.filter).collect()
    }

    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError {
            problems: vec![e.to_string().trim_end().to_owned()],
        })?;
        let mut problems = Vec::new();
        let protect = Protect {
            users: raw.protect.users.0,
            apps: raw.protect.apps.0,
            databases: raw.protect.databases.0,
            clients: raw.protect.clients.0,
        };
        let interval = raw.interval.map_or(DEFAULT_INTERVAL, |d| d.0);
        if interval.is_zero() {
            problems.push("interval: must be more than 0".to_owned());
        }
        if raw.limits.max_actions_per_minute == Some(0) {
            problems.push(
                "[limits] max_actions_per_minute = 0 would never act: use dry_run = true on the rules instead"
                    .to_owned(),
            );
        }
        if raw.rules.is_empty() {
            problems.push("the policy has no [[rule]]: there is nothing to enforce".to_owned());
        }
        let mut rules: Vec<Rule> = Vec::new();
        for r in &raw.rules {
            let line = line_of(text, r.name.span().start);
            let name = r.name.get_ref().clone();
            let at = format!("line {line}: rule {name:?}");
            if name.trim().is_empty() {
                problems.push(format!("line {line}: a rule needs a name"));
            }
            if rules.iter().any(|o| o.name == name) {
                problems.push(format!("{at}: another rule has this name"));
            }
            if r.matches.selects_everything() {
                problems.push(format!(
                    "{at}: its match selects every client session; say which (e.g. state, idle_for, app)"
                ));
            }
            match (r.action, r.escalate_after) {
                (Action::CancelThenTerminate, None) => problems.push(format!(
                    "{at}: action cancel-then-terminate needs escalate_after (e.g. \"30s\")"
                )),
                (Action::Cancel | Action::Terminate, Some(_)) => problems.push(format!(
                    "{at}: escalate_after only goes with action = \"cancel-then-terminate\""
                )),
                _ => {}
            }
            if r.max_per_minute == Some(0) {
                problems.push(format!(
                    "{at}: max_per_minute = 0 would never act: use dry_run = true instead"
                ));
            }
            rules.push(Rule {
                name,
                filter: r.matches.to_filter(&protect, r.include_superusers),
                action: r.action,
                escalate_after: r.escalate_after.map(|d| d.0),
                max_per_minute: r.max_per_minute,
                dry_run: r.dry_run,
            });
        }
        let mut targets: Vec<TargetSpec> = Vec::new();
        for t in &raw.targets {
            let line = line_of(text, t.name.span().start);
            let name = t.name.get_ref().clone();
            if name.trim().is_empty() {
                problems.push(format!("line {line}: a target needs a name"));
            }
            if targets.iter().any(|o| o.name == name) {
                problems.push(format!(
                    "line {line}: target {name:?}: another target has this name"
                ));
            }
            if has_password(&t.conninfo) {
                problems.push(format!(
                    "line {line}: target {name:?}: its conninfo holds a password; put it in ~/.pgpass (or PGPASSFILE, PGPASSWORD), never in the policy"
                ));
            }
            targets.push(TargetSpec {
                name,
                conninfo: t.conninfo.clone(),
            });
        }
        if !problems.is_empty() {
            return Err(PolicyError { problems });
        }
        Ok(Policy {
            name: raw.name.unwrap_or_else(|| DEFAULT_NAME.to_owned()),
            interval,
            audit_query_chars: raw.audit_query_chars.unwrap_or(DEFAULT_AUDIT_QUERY_CHARS),
            protect,
            max_actions_per_minute: raw.limits.max_actions_per_minute,
            rules,
            targets,
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            problems: vec![format!("cannot read {}: {e}", path.display())],
        })?;
        Policy::parse(&text).map_err(|e| PolicyError {
            problems: e
                .problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
interval = "2s"
audit_query_chars = 100
[protect]
users = ["replicator"]
apps = ["pg_dump*", "psql"]
clients = ["10.9.0.0/16"]
[limits]
max_actions_per_minute = 60
[[rule]]
name = "idle-in-transaction"
match = { state = ["idle-in-transaction"], idle_for = "5m", exclude_app = ["batch-*"] }
action = "terminate"
[[rule]]
name = "runaway-report"
match = { app = "metabase*", query_older = "30m" }
action = "cancel-then-terminate"
escalate_after = "30s"
max_per_minute = 5
dry_run = true
[[rule]]
name = "lock-root"
match = { blocking_for = "30s" }
action = "terminate"
include_superusers = true
[[target]]
name = "orders-primary"
conninfo = "service=orders"
"#;

    #[test]
    fn the_sample_parses_into_filters() {
        let p = Policy::parse(SAMPLE).unwrap();
        assert_eq!(p.name, DEFAULT_NAME);
        assert_eq!(p.interval, Duration::from_secs(2));
        assert_eq!(p.audit_query_chars, 100);
        assert_eq!(p.max_actions_per_minute, Some(60));
        assert_eq!(p.rules.len(), 3);
        let r = &p.rules[0];
        assert_eq!(r.action, Action::Terminate);
        assert_eq!(r.filter.states, vec![State::IdleInTransaction]);
        assert_eq!(r.filter.idle_for, Some(Duration::from_secs(300)));
        // [protect] joins every rule's exclusions: re-checked when signalling.
        assert_eq!(r.filter.exclude_apps, vec!["batch-*", "pg_dump*", "psql"]);
        assert_eq!(r.filter.exclude_users, vec!["replicator"]);
        assert_eq!(
            r.filter.exclude_clients,
            vec!["10.9.0.0/16".parse::<ClientMatch>().unwrap()]
        );
        assert!(!r.filter.include_superusers);
        let r = &p.rules[1];
        assert_eq!(r.filter.apps, vec!["metabase*"]);
        assert_eq!(r.action, Action::CancelThenTerminate);
        assert_eq!(r.escalate_after, Some(Duration::from_secs(30)));
        assert_eq!(r.max_per_minute, Some(5));
        assert!(r.dry_run);
        let r = &p.rules[2];
        assert_eq!(r.filter.blocking_for, Some(Duration::from_secs(30)));
        assert!(r.filter.include_superusers);
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].conninfo, "service=orders");
    }

    #[test]
    fn every_filter_key_maps() {
        let p = Policy::parse(
            r#"name = "n"
[[rule]]
name = "all"
action = "cancel"
match = { db = ["a", "b"], user = "u", app = "x*", client = "local", state = "active", idle_for = "1s", xact_older = "2s", query_older = "3s", backend_older = "4s", query = "^SELECT", blocking = true, blocking_for = "5s", holding_xmin = true, exclude_db = "d", exclude_user = "eu", exclude_app = "ea", exclude_client = "127.0.0.1" }
"#,
        )
        .unwrap();
        let f = &p.rules[0].filter;
        assert_eq!(p.name, "n");
        assert_eq!(f.databases, vec!["a", "b"]);
        assert_eq!(f.users, vec!["u"]);
        assert_eq!(f.clients, vec![ClientMatch::Local]);
        assert_eq!(f.states, vec![State::Active]);
        assert_eq!(f.xact_older, Some(Duration::from_secs(2)));
        assert_eq!(f.query_older, Some(Duration::from_secs(3)));
        assert_eq!(f.backend_older, Some(Duration::from_secs(4)));
        assert_eq!(f.queries, vec!["^SELECT"]);
        assert!(f.blocking && f.holding_xmin);
        assert_eq!(f.exclude_databases, vec!["d"]);
        assert_eq!(f.exclude_clients.len(), 1);
        assert!(!f.all_backends);
    }

    fn problems(text: &str) -> Vec<String> {
        Policy::parse(text).unwrap_err().problems
    }

    #[test]
    fn unknown_keys_name_their_line() {
        let p = problems(
            "interval = \"1s\"\n[[rule]]\nname = \"x\"\naction = \"terminate\"\nmatch = { state = \"idle\" }\nmax_per_minut = 3\n",
        );
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("line 6") && p[0].contains("max_per_minut"),
            "{p:?}"
        );
        let p = problems(
            "[[rule]]\nname = \"x\"\naction = \"terminate\"\nmatch = { stat = \"idle\" }\n",
        );
        assert!(p[0].contains("line 4") && p[0].contains("stat"), "{p:?}");
        let p = problems("intervall = \"1s\"\n");
        assert!(
            p[0].contains("line 1") && p[0].contains("intervall"),
            "{p:?}"
        );
    }

    #[test]
    fn bad_values_name_their_line() {
        let p = problems(
            "[[rule]]\nname = \"x\"\naction = \"terminate\"\nmatch = { idle_for = \"5 minutes\" }\n",
        );
        assert!(
            p[0].contains("line 4") && p[0].contains("invalid duration"),
            "{p:?}"
        );
        let p =
            problems("[[rule]]\nname = \"x\"\naction = \"kill\"\nmatch = { state = \"idle\" }\n");
        assert!(p[0].contains("line 3") && p[0].contains("kill"), "{p:?}");
        let p = problems(
            "[[rule]]\nname = \"x\"\naction = \"cancel\"\nmatch = { state = \"sleeping\" }\n",
        );
        assert!(p[0].contains("unknown state"), "{p:?}");
        let p = problems("[protect]\nclients = [\"10.0.0.0/33\"]\n");
        assert!(
            p[0].contains("line 2") && p[0].contains("invalid client"),
            "{p:?}"
        );
        let p = problems("[[rule]]\nname = \"x\"\naction = \"cancel\"\n");
        assert!(p[0].contains("match"), "{p:?}");
    }

    #[test]
    fn cross_checks_are_all_listed() {
        let p = problems(
            r#"interval = "0"
[[rule]]
name = "a"
action = "cancel-then-terminate"
match = { state = "active" }
[[rule]]
name = "a"
action = "terminate"
escalate_after = "1s"
match = { exclude_user = "x" }
max_per_minute = 0
[[target]]
name = "t"
conninfo = "host=x password=secret"
[[target]]
name = "u"
conninfo = "postgresql://me:secret@db/postgres"
"#,
        );
        let all = p.join("\n");
        assert!(all.contains("interval"), "{all}");
        assert!(
            all.contains("line 3: rule \"a\": action cancel-then-terminate needs escalate_after"),
            "{all}"
        );
        assert!(
            all.contains("line 7: rule \"a\": another rule has this name"),
            "{all}"
        );
        assert!(all.contains("escalate_after only goes with"), "{all}");
        assert!(all.contains("selects every client session"), "{all}");
        assert!(all.contains("max_per_minute = 0"), "{all}");
        assert!(
            all.contains("line 13: target \"t\": its conninfo holds a password"),
            "{all}"
        );
        assert!(
            all.contains("line 16: target \"u\": its conninfo holds a password"),
            "{all}"
        );
        assert!(!all.contains("secret"), "{all}");
        assert_eq!(p.len(), 8, "{all}");
    }

    #[test]
    fn the_shipped_sample_parses() {
        let p = Policy::parse(include_str!("../../../packaging/policy.toml")).unwrap();
        assert_eq!(p.rules.len(), 3);
        assert!(p.targets.is_empty());
        assert_eq!(p.protect.apps, vec!["pg_dump*", "pg_basebackup", "psql"]);
    }

    #[test]
    fn no_rules_is_a_problem() {
        assert!(problems("interval = \"1s\"\n")[0].contains("no [[rule]]"));
    }

    #[test]
    fn passwords_are_recognised() {
        assert!(has_password("host=a password=x"));
        assert!(has_password("postgres://u:p@h/db"));
        assert!(has_password("postgresql://h/db?password=x"));
        assert!(!has_password("postgresql://u@h:5432/db"));
        assert!(!has_password("service=orders"));
        assert!(!has_password("host=a passfile=/x"));
    }
}

//! Destructive work as a value: who would be signalled and why, printed by `--dry-run`,
//! confirmed, executed, then reported per session.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::duration::format_duration;
use crate::filter::Filter;
use crate::planner::{Identity, Signal};
use crate::session::Session;

/// Who is asking, as far as signalling goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The role pgkill is connected as.
    pub user: String,
    /// Whether it is a superuser.
    pub superuser: bool,
    /// Whether it has the privileges of `pg_signal_backend`.
    pub signal_backend: bool,
}

/// One session in a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// The session as listed.
    pub session: Session,
    /// Why it matched, for people.
    pub reason: String,
    /// Why it will not be signalled, if so.
    pub refused: Option<String>,
}

impl Target {
    /// The session's identity (pids are reused).
    pub fn identity(&self) -> Identity {
        Identity {
            pid: self.session.pid,
            backend_start: self.session.backend_start,
            user: self.session.user.clone(),
            database: self.session.database.clone(),
        }
    }
}

/// A plan: the matching sessions and what will happen to each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Cancel or terminate.
    #[serde(serialize_with = "serialize_signal")]
    pub signal: Signal,
    /// Every matching session, including those that will be refused (never silently dropped).
    pub targets: Vec<Target>,
}

fn serialize_signal<S: serde::Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(match s {
        Signal::Cancel => "cancel",
        Signal::Terminate => "terminate",
    })
}

impl Plan {
    /// Builds the plan from the listed sessions (already filtered and limited).
    pub fn build(signal: Signal, sessions: Vec<Session>, filter: &Filter, caller: &Caller) -> Plan {
        let targets = sessions
            .into_iter()
            .map(|session| {
                let refused = refusal(&session, filter, caller);
                let reason = reason(&session, filter);
                Target {
                    session,
                    reason,
                    refused,
                }
            })
            .collect();
        Plan { signal, targets }
    }

    /// Targets that will be signalled.
    pub fn to_signal(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| t.refused.is_none())
    }
}

/// Why the caller will not signal `s`, if it will not.
pub fn refusal(s: &Session, filter: &Filter, caller: &Caller) -> Option<String> {
    let who = s.user.as_deref().unwrap_or("?");
    if s.superuser == Some(true) {
        if !caller.superuser {
            return Some(format!(
                "session of superuser {who}: only a superuser can signal it (you are {}{})",
                caller.user,
                if caller.signal_backend {
                    ", a member of pg_signal_backend"
                } else {
                    ""
                }
            ));
        }
        if !filter.include_superusers {
            return Some(format!(
                "session of superuser {who}: protected by default; pass --include-superusers to signal it"
            ));
        }
    }
    if s.superuser.is_none() && !caller.superuser {
        return Some(
            "process without a role (e.g. autovacuum): only a superuser can signal it".into(),
        );
    }
    if !s.can_signal {
        return Some(format!(
            "you ({}) lack the privileges of role {who}: be a member of it or of pg_signal_backend",
            caller.user
        ));
    }
    None
}

fn reason(s: &Session, f: &Filter) -> String {
    let mut why = Vec::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    if !f.databases.is_empty() {
        why.push(format!("db={}", opt(&s.database)));
    }
    if !f.users.is_empty() {
        why.push(format!("user={}", opt(&s.user)));
    }
    if !f.apps.is_empty() {
        why.push(format!("app={}", opt(&s.application_name)));
    }
    if !f.clients.is_empty() {
        why.push(match s.client_addr {
            Some(a) => format!("client={a}"),
            None => "client=local".into(),
        });
    }
    if !f.states.is_empty() {
        why.push(format!("state={}", opt(&s.state)));
    }
    if !f.pids.is_empty() {
        why.push(format!("pid={}", s.pid));
    }
    let age = |label: &str, d: Option<std::time::Duration>| {
        format!(
            "{label} {}",
            d.map(format_duration).unwrap_or_else(|| "?".into())
        )
    };
    if f.idle_for.is_some() {
        why.push(age("idle for", s.state_age()));
    }
    if f.xact_older.is_some() {
        why.push(age("transaction open for", s.xact_age()));
    }
    if f.query_older.is_some() {
        why.push(age("query running for", s.query_age()));
    }
    if f.backend_older.is_some() {
        why.push(age("connected for", s.backend_age()));
    }
    if !f.queries.is_empty() {
        why.push("query matches".into());
    }
    if f.blocking {
        why.push(format!("blocks {} session(s)", s.blocking));
    }
    if f.waiting {
        why.push("waits on a lock".into());
    }
    if f.blocking_for.is_some() {
        why.push(age(
            "waited on for",
            s.waited_on_since
                .and_then(|at| s.now.signed_duration_since(at).to_std().ok()),
        ));
    }
    if f.holding_xmin {
        why.push(format!(
            "holds the xmin horizon ({} transaction ids behind)",
            s.xmin_age.map_or_else(|| "?".to_owned(), |a| a.to_string())
        ));
    }
    if f.newest.is_some() {
        why.push("among the newest".into());
    }
    if f.oldest.is_some() {
        why.push("among the oldest".into());
    }
    if why.is_empty() {
        why.push("every client session matches (no filter)".into());
    }
    why.join(", ")
}

/// What happened to one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The session is gone after `pg_terminate_backend`.
    Terminated,
    /// Its running statement was cancelled.
    Cancelled,
    /// It had already ended (or no longer matched) when the signal was sent.
    AlreadyGone,
    /// The caller may not signal it.
    NotPermitted,
    /// Signalled, but still there when the timeout ran out.
    StillAlive,
}

impl OutcomeKind {
    /// The contract's name (`already_gone`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Terminated => "terminated",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::AlreadyGone => "already_gone",
            OutcomeKind::NotPermitted => "not_permitted",
            OutcomeKind::StillAlive => "still_alive",
        }
    }

    /// Whether this counts as a failure for the exit code (3 = partial).
    pub fn is_failure(self) -> bool {
        matches!(self, OutcomeKind::NotPermitted | OutcomeKind::StillAlive)
    }
}

/// The outcome for one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Process id.
    pub pid: i32,
    /// Backend start (identity).
    pub backend_start: Option<DateTime<Utc>>,
    /// Database.
    pub database: Option<String>,
    /// Role.
    pub user: Option<String>,
    /// Application.
    pub application_name: Option<String>,
    /// What happened.
    pub outcome: OutcomeKind,
    /// Details for people.
    pub detail: String,
}

impl Outcome {
    /// An outcome for a target.
    pub fn new(t: &Target, outcome: OutcomeKind, detail: impl Into<String>) -> Outcome {
        Outcome {
            pid: t.session.pid,
            backend_start: t.session.backend_start,
            database: t.session.database.clone(),
            user: t.session.user.clone(),
            application_name: t.session.application_name.clone(),
            outcome,
            detail: detail.into(),
        }
    }
}

/// The exit code for a finished command, per the CLI contract: 0 acted on at least one,
/// 1 nothing matched, 3 some targets could not be signalled or did not go away.
pub fn exit_code(outcomes: &[Outcome]) -> i32 {
    if outcomes.is_empty() {
        1
    } else if outcomes.iter().any(|o| o.outcome.is_failure()) {
        3
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, superuser: Option<bool>, can_signal: bool) -> Session {
        Session {
            superuser,
            can_signal,
            ..Session::example(pid)
        }
    }

    fn caller(superuser: bool, signal_backend: bool) -> Caller {
        Caller {
            user: "me".into(),
            superuser,
            signal_backend,
        }
    }

    #[test]
    fn superusers_are_protected_and_reported() {
        let f = Filter::default();
        let su = session(1, Some(true), true);
        let r = refusal(&su, &f, &caller(true, true)).unwrap();
        assert!(r.contains("--include-superusers"), "{r}");
        let included = Filter {
            include_superusers: true,
            ..Filter::default()
        };
        assert_eq!(refusal(&su, &included, &caller(true, true)), None);
        let r = refusal(
            &session(1, Some(true), false),
            &included,
            &caller(false, true),
        )
        .unwrap();
        assert!(
            r.contains("only a superuser") && r.contains("pg_signal_backend"),
            "{r}"
        );
    }

    #[test]
    fn lacking_privileges_is_explained() {
        let r = refusal(
            &session(1, Some(false), false),
            &Filter::default(),
            &caller(false, false),
        )
        .unwrap();
        assert!(r.contains("pg_signal_backend"), "{r}");
        assert_eq!(
            refusal(
                &session(1, Some(false), true),
                &Filter::default(),
                &caller(false, false)
            ),
            None
        );
    }

    #[test]
    fn plan_keeps_refused_targets() {
        let sessions = vec![session(1, Some(false), true), session(2, Some(true), false)];
        let plan = Plan::build(
            Signal::Terminate,
            sessions,
            &Filter::default(),
            &caller(false, true),
        );
        assert_eq!(plan.targets.len(), 2);
        assert_eq!(
            plan.to_signal().map(|t| t.session.pid).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn reasons_name_the_filters() {
        let f = Filter {
            databases: vec!["shop".into()],
            idle_for: Some(std::time::Duration::from_secs(60)),
            ..Filter::default()
        };
        let plan = Plan::build(
            Signal::Terminate,
            vec![session(1, Some(false), true)],
            &f,
            &caller(true, true),
        );
        assert_eq!(plan.targets[0].reason, "db=shop, idle for 5m00s");
    }

    #[test]
    fn exit_codes() {
        let t = Target {
            session: session(1, Some(false), true),
            reason: String::new(),
            refused: None,
        };
        assert_eq!(exit_code(&[]), 1);
        assert_eq!(
            exit_code(&[Outcome::new(&t, OutcomeKind::Terminated, "")]),
            0
        );
        assert_eq!(
            exit_code(&[Outcome::new(&t, OutcomeKind::AlreadyGone, "")]),
            0
        );
        assert_eq!(
            exit_code(&[
                Outcome::new(&t, OutcomeKind::Terminated, ""),
                Outcome::new(&t, OutcomeKind::NotPermitted, "")
            ]),
            3
        );
        assert_eq!(
            exit_code(&[Outcome::new(&t, OutcomeKind::StillAlive, "")]),
            3
        );
    }
}

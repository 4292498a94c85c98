//! Cancelling and terminating through poolers: the one path that `kill --pgbouncer`,
//! `cancel --pgbouncer` and `top --pgbouncer` share. A listing that went through the
//! poolers ([`crate::pgbouncer::list_through`]) is planned here and carried out here, with
//! the same protections and re-checks as [`crate::sessions::execute`]: backends no
//! pooler owns are re-checked in the signalling statement against the caller's filter;
//! pooler backends against what the server can evaluate behind a pooler
//! ([`crate::pgbouncer::on_the_server`]); applications ended at the pooler are looked up
//! again right before `KILL_CLIENT` and verified gone from `SHOW CLIENTS`.

use std::collections::BTreeSet;
use std::time::Duration;

use pgkill_core::plan::{Caller, Outcome, OutcomeKind, Plan};
use pgkill_core::planner::{self, Signal};
use pgkill_core::pooler::{split_for_kill, AppEnd, AppOutcome, AppTarget, Pooled, PoolerState};
use pgkill_core::{Filter, Session};
use tokio_postgres::Client;

use crate::pgbouncer::{on_the_server, Pooler, PoolerError};
use crate::sessions::{self, Capabilities};
use crate::{exec, Result};

/// Reads every pooler, one after the other (a few at most). The first that cannot be
/// reached or read stops the reading: a listing without it would miss applications.
pub async fn read_all(poolers: &[Pooler]) -> std::result::Result<Vec<PoolerState>, PoolerError> {
    let mut states = Vec::new();
    for p in poolers {
        let console = p.connect().await?;
        states.push(p.read(&console).await?);
    }
    Ok(states)
}

/// The roles of the applications behind the poolers in a listing (`sessions` linked to
/// one, and `pooled`) that are superusers.
pub async fn superusers_behind(
    client: &Client,
    sessions: &[Session],
    pooled: &[Pooled],
) -> Result<BTreeSet<String>> {
    let users: Vec<String> = sessions
        .iter()
        .filter_map(|s| s.pooler.as_ref()?.client.as_ref().map(|c| c.user.clone()))
        .chain(pooled.iter().map(|p| p.client.user.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if users.is_empty() {
        return Ok(BTreeSet::new());
    }
    exec::query(client, &planner::superusers_among(users))
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(Into::into))
        .collect()
}

/// What terminating a listing that went through poolers does to each application.
#[derive(Debug, Clone)]
pub struct KillPlan {
    /// Backends no pooler owns: signalled as `pgkill kill` signals any backend.
    pub direct: Plan,
    /// Backends of session pools linked to an application: terminating one ends that
    /// application (the pooler closes it).
    pub session_pooled: Plan,
    /// Applications ended at the pooler (`KILL_CLIENT`), or refused with the reason.
    pub at_pooler: Vec<AppTarget>,
    /// Pool server connections serving nobody right now, left alone.
    pub idle_pool_connections: usize,
    behind: Filter,
}

impl KillPlan {
    /// Plans terminating `sessions` and `pooled` (a listing through the poolers `states`,
    /// selected by `filter`). Superusers' applications behind a pooler are protected as
    /// their backends are, unless `filter.include_superusers`.
    pub async fn build(
        client: &Client,
        caps: &Capabilities,
        filter: &Filter,
        sessions: Vec<Session>,
        pooled: Vec<Pooled>,
        states: &[PoolerState],
    ) -> Result<KillPlan> {
        let supers = superusers_behind(client, &sessions, &pooled).await?;
        Ok(KillPlan::new(
            &caps.caller,
            filter,
            sessions,
            pooled,
            states,
            &supers,
        ))
    }

    /// [`KillPlan::build`] given which of the applications' roles are superusers
    /// (`superusers`, from [`superusers_behind`]): what `top` shows before asking.
    pub fn new(
        caller: &Caller,
        filter: &Filter,
        sessions: Vec<Session>,
        pooled: Vec<Pooled>,
        states: &[PoolerState],
        superusers: &BTreeSet<String>,
    ) -> KillPlan {
        let mut split = split_for_kill(sessions, pooled, states);
        if !filter.include_superusers {
            for t in split.at_pooler.iter_mut().filter(|t| t.refused.is_none()) {
                if superusers.contains(&t.client.user) {
                    t.refused = Some(format!(
                        "role {} is a superuser: protected (--include-superusers to include it)",
                        t.client.user
                    ));
                }
            }
        }
        let behind = on_the_server(filter);
        KillPlan {
            direct: Plan::build(Signal::Terminate, split.direct, filter, caller),
            session_pooled: Plan::build(Signal::Terminate, split.session_pooled, &behind, caller),
            at_pooler: split.at_pooler,
            idle_pool_connections: split.idle_pool_connections,
            behind,
        }
    }

    /// How many application connections will be ended (refused ones not counted).
    pub fn acting(&self) -> usize {
        self.direct.to_signal().count()
            + self.session_pooled.to_signal().count()
            + self
                .at_pooler
                .iter()
                .filter(|t| t.refused.is_none())
                .count()
    }

    /// Nothing was selected at all (not even refused targets).
    pub fn is_empty(&self) -> bool {
        self.direct.targets.is_empty()
            && self.session_pooled.targets.is_empty()
            && self.at_pooler.is_empty()
    }

    /// The backends of the plan, direct and session-pooled, in one plan (for showing).
    pub fn backends(&self) -> Plan {
        let mut plan = self.direct.clone();
        plan.targets
            .extend(self.session_pooled.targets.iter().cloned());
        plan
    }

    /// Warnings to show before acting: a pooler whose `KILL_CLIENT` is open to
    /// `stats_users` (CVE-2026-6667) when this plan uses it.
    pub fn warnings(&self, states: &[PoolerState]) -> Vec<String> {
        let killing = self
            .at_pooler
            .iter()
            .any(|t| t.refused.is_none() && t.end == AppEnd::KillClient);
        states
            .iter()
            .filter(|st| killing && st.version.kill_client_open_to_stats_users())
            .map(|st| {
                format!(
                    "PgBouncer {} at {} lets stats_users run KILL_CLIENT too (CVE-2026-6667, fixed in 1.25.2): upgrade it",
                    st.version, st.name
                )
            })
            .collect()
    }

    /// Carries the plan out: the backends through the re-checking statement (`filter`
    /// for direct ones), then the applications at their poolers, each verified gone
    /// from the pooler's `SHOW CLIENTS` within `timeout` (session-pooled ones too, once
    /// their backend is gone).
    pub async fn execute(
        &self,
        client: &Client,
        caps: &Capabilities,
        filter: &Filter,
        poolers: &[Pooler],
        timeout: Duration,
    ) -> Result<(Vec<Outcome>, Vec<AppOutcome>)> {
        let mut outcomes = sessions::execute(client, caps, filter, &self.direct, timeout).await?;
        let via_backend =
            sessions::execute(client, caps, &self.behind, &self.session_pooled, timeout).await?;
        let mut at_pooler = self.at_pooler.clone();
        for (o, t) in via_backend.iter().zip(self.session_pooled.to_signal()) {
            if o.outcome != OutcomeKind::Terminated {
                continue;
            }
            let Some(link) = &t.session.pooler else {
                continue;
            };
            let Some(c) = &link.client else {
                continue;
            };
            at_pooler.push(AppTarget {
                pooler: link.pooler.clone(),
                version: link.version.clone(),
                pool_mode: link.pool_mode.clone(),
                alias: link.alias.clone(),
                database: t.session.database.clone().unwrap_or_default(),
                client: c.clone(),
                backend: Some(t.session.pid),
                end: AppEnd::TerminateBackend,
                refused: None,
            });
        }
        outcomes.extend(via_backend);
        let apps = crate::pgbouncer::end_clients(poolers, &at_pooler, timeout).await;
        Ok((outcomes, apps))
    }
}

/// What cancelling a listing that went through poolers does: the statements of the
/// backends, an application behind a pooler selected by its own name and address.
#[derive(Debug, Clone)]
pub struct CancelPlan {
    /// Backends no pooler owns.
    pub direct: Plan,
    /// Pooler backends serving an application right now.
    pub linked: Plan,
    /// Application connections holding no backend: no statement to cancel.
    pub pooled: usize,
    /// Pool server connections serving nobody right now, left alone.
    pub idle_pool_connections: usize,
    relaxed: Filter,
}

impl CancelPlan {
    /// Plans cancelling `sessions` (pooler backends serving nobody are left out: they
    /// run nobody's statement); `pooled` are only counted.
    pub fn build(
        caller: &Caller,
        filter: &Filter,
        sessions: Vec<Session>,
        pooled: &[Pooled],
    ) -> CancelPlan {
        let (serving, idle): (Vec<_>, Vec<_>) = sessions
            .into_iter()
            .partition(|s| s.pooler.as_ref().is_none_or(|l| l.client.is_some()));
        let (behind_pooler, direct): (Vec<_>, Vec<_>) =
            serving.into_iter().partition(|s| s.pooler.is_some());
        let relaxed = on_the_server(filter);
        CancelPlan {
            direct: Plan::build(Signal::Cancel, direct, filter, caller),
            linked: Plan::build(Signal::Cancel, behind_pooler, &relaxed, caller),
            pooled: pooled.len(),
            idle_pool_connections: idle.len(),
            relaxed,
        }
    }

    /// How many statements will be cancelled.
    pub fn count(&self) -> usize {
        self.direct.to_signal().count() + self.linked.to_signal().count()
    }

    /// Every backend target, in one plan (for showing).
    pub fn backends(&self) -> Plan {
        let mut plan = self.direct.clone();
        plan.targets.extend(self.linked.targets.iter().cloned());
        plan
    }

    /// Cancels: direct backends through the re-checking statement with `filter`; pooler
    /// backends only if, read again right before, each still serves the application it
    /// was listed with (a transaction-pooled backend serves whichever application comes
    /// next once its statement is over), else `already_gone`, not signalled.
    pub async fn execute(
        &self,
        client: &Client,
        caps: &Capabilities,
        filter: &Filter,
        poolers: &[Pooler],
    ) -> Result<Vec<Outcome>> {
        let mut outcomes =
            sessions::execute(client, caps, filter, &self.direct, Duration::ZERO).await?;
        if self.linked.targets.is_empty() {
            return Ok(outcomes);
        }
        let again = read_all(poolers)
            .await
            .map_err(|e| crate::Error::Refused(vec![e.to_string()]))?;
        let mut still = self.linked.clone();
        let mut moved = Vec::new();
        still.targets.retain(|t| {
            let Some(link) = &t.session.pooler else {
                return true;
            };
            let same = again.iter().filter(|p| p.name == link.pooler).any(|p| {
                p.server_at(t.session.client_addr, t.session.client_port)
                    .and_then(|server| p.client_of(server))
                    .zip(link.client.as_ref())
                    .is_some_and(|(now, then)| {
                        now.ptr == then.ptr && now.port == then.port && now.addr == then.addr
                    })
            });
            if !same && t.refused.is_none() {
                moved.push(Outcome::new(
                    t,
                    OutcomeKind::AlreadyGone,
                    "its backend now serves another application (or none): not signalled",
                ));
            }
            same
        });
        outcomes
            .extend(sessions::execute(client, caps, &self.relaxed, &still, Duration::ZERO).await?);
        outcomes.extend(moved);
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgkill_core::pooler::{PoolConnection, PoolerLink, PoolerVersion};

    const POOLER: &str = "host=p port=6432";

    fn client(ptr: &str, user: &str, id: Option<i64>) -> PoolConnection {
        PoolConnection {
            id,
            ptr: ptr.into(),
            link: None,
            user: user.into(),
            database: "shop".into(),
            state: "active".into(),
            addr: Some("10.0.0.7".parse().unwrap()),
            port: Some(50_000),
            local_addr: None,
            local_port: None,
            remote_pid: None,
            application_name: Some(format!("{user}-app")),
            connect_time: None,
        }
    }

    fn session(pid: i32, link: Option<(&str, Option<PoolConnection>)>) -> Session {
        Session {
            pid,
            backend_start: None,
            database: Some("shop".into()),
            user: Some("app".into()),
            application_name: None,
            client_addr: None,
            client_hostname: None,
            client_port: Some(40_000 + pid),
            state: Some("idle".into()),
            wait_event_type: None,
            wait_event: None,
            backend_type: Some("client backend".into()),
            xact_start: None,
            query_start: None,
            state_change: None,
            query: None,
            leader_pid: None,
            superuser: Some(false),
            blocked_by: vec![],
            blocking: 0,
            xmin_age: None,
            holds_xmin: false,
            waited_on_since: None,
            can_signal: true,
            pooler: link.map(|(mode, client)| PoolerLink {
                pooler: POOLER.into(),
                version: "1.24.1".into(),
                pool_mode: mode.into(),
                alias: "shop".into(),
                client,
                remote_pid: None,
            }),
            now: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }
    }

    fn pooled(ptr: &str, user: &str, id: Option<i64>) -> Pooled {
        Pooled {
            pooler: POOLER.into(),
            version: "1.24.1".into(),
            pool_mode: "transaction".into(),
            alias: "shop".into(),
            database: "shop".into(),
            state: "idle".into(),
            client: client(ptr, user, id),
        }
    }

    fn state(version: PoolerVersion) -> PoolerState {
        PoolerState {
            name: POOLER.into(),
            version,
            pool_mode: "transaction".into(),
            databases: vec![],
            clients: vec![],
            servers: vec![],
        }
    }

    fn listing() -> (Vec<Session>, Vec<Pooled>) {
        (
            vec![
                session(1, None),
                session(2, Some(("session", Some(client("c2", "app", Some(2)))))),
                session(3, Some(("transaction", Some(client("c3", "app", Some(3)))))),
                session(4, Some(("transaction", None))),
            ],
            vec![pooled("c5", "app", Some(5)), pooled("c6", "admin", Some(6))],
        )
    }

    fn dba() -> Caller {
        Caller {
            user: "dba".into(),
            superuser: true,
            signal_backend: true,
        }
    }

    /// `kill --pgbouncer` and `top` decide alike: a backend no pooler owns and a
    /// session-pooled one are terminated, a transaction-pooled application and a pooled
    /// one are ended at the pooler (never their backend), a pool connection serving nobody
    /// is left alone, and a superuser's application is protected unless asked.
    #[test]
    fn kill_ends_each_application_where_it_is() {
        let (sessions, pooled) = listing();
        let supers = BTreeSet::from(["admin".to_owned()]);
        let states = [state(PoolerVersion::new(1, 24, 1))];
        let plan = KillPlan::new(
            &dba(),
            &Filter::default(),
            sessions.clone(),
            pooled.clone(),
            &states,
            &supers,
        );
        let pids = |p: &Plan| p.to_signal().map(|t| t.session.pid).collect::<Vec<_>>();
        assert_eq!(pids(&plan.direct), [1]);
        assert_eq!(pids(&plan.session_pooled), [2]);
        assert_eq!(plan.idle_pool_connections, 1);
        let at: Vec<(&str, Option<i32>, bool)> = plan
            .at_pooler
            .iter()
            .map(|t| (t.client.ptr.as_str(), t.backend, t.refused.is_none()))
            .collect();
        assert_eq!(
            at,
            [
                ("c3", Some(3), true),
                ("c5", None, true),
                ("c6", None, false)
            ]
        );
        assert!(plan.at_pooler[2]
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("superuser")));
        assert_eq!(plan.acting(), 4);
        assert!(plan
            .warnings(&states)
            .iter()
            .any(|w| w.contains("CVE-2026-6667")));

        let everyone = Filter {
            include_superusers: true,
            ..Filter::default()
        };
        let plan = KillPlan::new(
            &dba(),
            &everyone,
            sessions.clone(),
            pooled.clone(),
            &states,
            &supers,
        );
        assert_eq!(plan.acting(), 5);

        // PgBouncer 1.18 cannot end one application in transaction pooling.
        let old = [state(PoolerVersion::new(1, 18, 0))];
        let plan = KillPlan::new(&dba(), &everyone, sessions, pooled, &old, &supers);
        assert!(plan.at_pooler.iter().all(|t| t
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("KILL_CLIENT needs PgBouncer 1.24"))));
        assert_eq!(plan.acting(), 2);
        assert!(plan.warnings(&old).is_empty());
    }

    /// Cancelling: backends serving an application (or no pooler's) are cancelled; pool
    /// connections serving nobody and pooled connections have no statement of anyone's.
    #[test]
    fn cancel_reaches_only_statements_of_applications() {
        let (sessions, pooled) = listing();
        let plan = CancelPlan::build(&dba(), &Filter::default(), sessions, &pooled);
        let pids: Vec<i32> = plan.backends().to_signal().map(|t| t.session.pid).collect();
        assert_eq!(pids, [1, 2, 3]);
        assert_eq!(
            (plan.count(), plan.pooled, plan.idle_pool_connections),
            (3, 2, 1)
        );
    }
}

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

use pgkill_core::plan::{Outcome, OutcomeKind, Plan};
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
        let mut split = split_for_kill(sessions, pooled, states);
        let users: Vec<String> = split
            .at_pooler
            .iter()
            .map(|t| t.client.user.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !users.is_empty() && !filter.include_superusers {
            let supers: Vec<String> = exec::query(client, &planner::superusers_among(users))
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            for t in split.at_pooler.iter_mut().filter(|t| t.refused.is_none()) {
                if supers.contains(&t.client.user) {
                    t.refused = Some(format!(
                        "role {} is a superuser: protected (--include-superusers to include it)",
                        t.client.user
                    ));
                }
            }
        }
        let behind = on_the_server(filter);
        Ok(KillPlan {
            direct: Plan::build(Signal::Terminate, split.direct, filter, &caps.caller),
            session_pooled: Plan::build(
                Signal::Terminate,
                split.session_pooled,
                &behind,
                &caps.caller,
            ),
            at_pooler: split.at_pooler,
            idle_pool_connections: split.idle_pool_connections,
            behind,
        })
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
    relaxed: Filter,
}

impl CancelPlan {
    /// Plans cancelling `sessions` (pooler backends serving nobody are left out: they
    /// run nobody's statement); `pooled` are only counted.
    pub fn build(
        caps: &Capabilities,
        filter: &Filter,
        sessions: Vec<Session>,
        pooled: &[Pooled],
    ) -> CancelPlan {
        let (behind_pooler, direct): (Vec<_>, Vec<_>) = sessions
            .into_iter()
            .filter(|s| s.pooler.as_ref().is_none_or(|l| l.client.is_some()))
            .partition(|s| s.pooler.is_some());
        let relaxed = on_the_server(filter);
        CancelPlan {
            direct: Plan::build(Signal::Cancel, direct, filter, &caps.caller),
            linked: Plan::build(Signal::Cancel, behind_pooler, &relaxed, &caps.caller),
            pooled: pooled.len(),
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

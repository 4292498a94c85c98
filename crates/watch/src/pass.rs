//! One evaluation pass over one target: the rules in order, each listing the sessions it
//! matches (on the server, with the planner's SQL), a session taken by the first rule
//! that matches it; then the decisions of [`TargetState`], and the signals through the
//! one shared path (`pgkill_pg::sessions::execute`: targets by `(pid, backend_start)`,
//! the rule's filter re-checked inside the signalling statement, terminations verified).
//! Every decision is audited, and each audit line is written before the next action.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgkill_core::plan::{self, OutcomeKind, Plan};
use pgkill_core::planner::Signal;
use pgkill_core::{Session, State};
use pgkill_pg::sessions::{self, Capabilities};
use tokio_postgres::Client;

use crate::audit::{About, Audit, Origin, Record};
use crate::metrics::{ActionLabels, Metrics, RuleLabels, StateLabels};
use crate::policy::{Action, Policy, Rule};
use crate::rules::{Decision, Key, TargetState};

/// How long a terminated session may take to go away before it is `still_alive`.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a pass needs besides the connection.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The target's name.
    pub target: &'a str,
    /// `--dry-run`: act on nothing.
    pub dry_run: bool,
    /// Where decisions are written.
    pub audit: &'a Audit,
    /// Counters.
    pub metrics: &'a Metrics,
    /// This daemon.
    pub origin: &'a Origin,
}

/// What a pass did, for `--once`'s exit code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Sessions some rule matched.
    pub matched: usize,
    /// Signalled, or already gone when signalled.
    pub acted: usize,
    /// Would have been signalled (dry run).
    pub dry_run: usize,
    /// Refused (protected superuser, privileges), rate-limited, or signalled without
    /// the effect (`not_permitted`, `still_alive`).
    pub failed: usize,
}

impl Report {
    /// Adds another target's report.
    pub fn add(&mut self, other: Report) {
        self.matched += other.matched;
        self.acted += other.acted;
        self.dry_run += other.dry_run;
        self.failed += other.failed;
    }

    /// The exit code as `kill`'s: 0 acted on at least one (or would have, in a dry run)
    /// and nothing failed, 1 nothing matched, 3 something matched that could not be
    /// acted on.
    pub fn exit_code(&self) -> i32 {
        if self.matched == 0 {
            1
        } else if self.failed > 0 {
            3
        } else {
            0
        }
    }
}

fn signal_name(signal: Signal) -> &'static str {
    match signal {
        Signal::Cancel => "cancel",
        Signal::Terminate => "terminate",
    }
}

/// What a rule does first to a session (for decisions taken before any signal).
fn first_action(rule: &Rule) -> &'static str {
    match rule.action {
        Action::Cancel | Action::CancelThenTerminate => "cancel",
        Action::Terminate => "terminate",
    }
}

fn count(metrics: &Metrics, target: &str, rule: &str, action: &str, outcome: &str, dry: bool) {
    metrics
        .actions
        .get_or_create(&ActionLabels {
            target: target.to_owned(),
            rule: rule.to_owned(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            dry_run: dry.to_string(),
        })
        .inc();
}

fn write(audit: &Audit, record: &Record) -> anyhow::Result<()> {
    audit
        .write(record)
        .map_err(|e| anyhow::anyhow!("cannot write the audit log: {e}"))
}

/// Runs one pass of `policy` over the target `client` is connected to.
pub async fn evaluate(
    client: &Client,
    caps: &Capabilities,
    policy: &Policy,
    state: &mut TargetState,
    cx: Context<'_>,
) -> anyhow::Result<Report> {
    let now = Instant::now();
    let mut report = Report::default();
    let mut claimed: HashSet<Key> = HashSet::new();
    let matches = sessions::rule_matches(client, caps, &policy.filters()).await?;
    count_sessions(&matches.states, cx);
    let mut by_rule: Vec<Vec<Session>> = vec![Vec::new(); policy.rules.len()];
    for (i, s) in matches.sessions {
        by_rule[i].push(s);
    }
    for (rule, listed) in policy.rules.iter().zip(by_rule) {
        let about = About {
            origin: cx.origin,
            policy: &policy.name,
            target: cx.target,
            rule: &rule.name,
            query_chars: policy.audit_query_chars,
        };
        let dry = cx.dry_run || rule.dry_run;
        let mut cancel: Vec<Session> = Vec::new();
        let mut terminate: Vec<(Session, bool)> = Vec::new();
        for s in listed {
            let key = (s.pid, s.backend_start);
            claimed.insert(key);
            report.matched += 1;
            if let Some(why) = plan::refusal(&s, &rule.filter, &caps.caller) {
                report.failed += 1;
                if state.first_note(key, &rule.name, "refused") {
                    let action = first_action(rule);
                    write(
                        cx.audit,
                        &Record::new(about, &s, action, "refused", Some("not_permitted"), why),
                    )?;
                    count(cx.metrics, cx.target, &rule.name, action, "refused", dry);
                }
                continue;
            }
            if dry && state.noted(key, &rule.name, "dry_run") {
                // Already said what it would do; a real run would have done it by now.
                report.dry_run += 1;
                continue;
            }
            match state.decide(policy, rule, key, now) {
                Decision::Wait => {}
                Decision::RateLimited(why) => {
                    report.failed += 1;
                    cx.metrics
                        .rate_limited
                        .get_or_create(&RuleLabels {
                            target: cx.target.to_owned(),
                            rule: rule.name.clone(),
                        })
                        .inc();
                    if state.first_note(key, &rule.name, "rate_limited") {
                        let action = first_action(rule);
                        write(
                            cx.audit,
                            &Record::new(
                                about,
                                &s,
                                action,
                                "rate_limited",
                                None,
                                format!("skipped: {why}"),
                            ),
                        )?;
                        count(
                            cx.metrics,
                            cx.target,
                            &rule.name,
                            action,
                            "rate_limited",
                            dry,
                        );
                    }
                }
                Decision::Act { signal, escalation } if dry => {
                    report.dry_run += 1;
                    let action = signal_name(signal);
                    let mut record = Record::new(
                        about,
                        &s,
                        action,
                        "dry_run",
                        None,
                        format!("would {action}: {}", why(&s, rule)),
                    );
                    record.escalation = escalation;
                    write(cx.audit, &record)?;
                    count(cx.metrics, cx.target, &rule.name, action, "dry_run", true);
                    state.signalled(rule, key, signal, now);
                    if signal == Signal::Terminate || rule.action == Action::Cancel {
                        state.first_note(key, &rule.name, "dry_run");
                    }
                }
                Decision::Act {
                    signal: Signal::Cancel,
                    ..
                } => cancel.push(s),
                Decision::Act {
                    signal: Signal::Terminate,
                    escalation,
                } => terminate.push((s, escalation)),
            }
        }
        if !cancel.is_empty() {
            let batch = cancel.into_iter().map(|s| (s, false)).collect();
            act(
                client,
                caps,
                rule,
                Signal::Cancel,
                batch,
                state,
                about,
                cx,
                now,
                &mut report,
            )
            .await?;
        }
        if !terminate.is_empty() {
            act(
                client,
                caps,
                rule,
                Signal::Terminate,
                terminate,
                state,
                about,
                cx,
                now,
                &mut report,
            )
            .await?;
        }
    }
    state.retain(&claimed);
    Ok(report)
}

/// A standby's pass: the leader's evaluation statement, for `pgkill_sessions` only;
/// nothing is signalled or audited.
pub async fn stand_by(
    client: &Client,
    caps: &Capabilities,
    policy: &Policy,
    cx: Context<'_>,
) -> anyhow::Result<()> {
    let matches = sessions::rule_matches(client, caps, &policy.filters()).await?;
    count_sessions(&matches.states, cx);
    Ok(())
}

fn why(s: &Session, rule: &Rule) -> String {
    let plan = Plan::build(
        Signal::Cancel,
        vec![s.clone()],
        &rule.filter,
        &pgkill_core::plan::Caller {
            user: String::new(),
            superuser: true,
            signal_backend: true,
        },
    );
    plan.targets
        .first()
        .map(|t| t.reason.clone())
        .unwrap_or_default()
}

/// Signals `batch` through the shared path and audits each outcome.
#[allow(clippy::too_many_arguments)]
async fn act(
    client: &Client,
    caps: &Capabilities,
    rule: &Rule,
    signal: Signal,
    batch: Vec<(Session, bool)>,
    state: &mut TargetState,
    about: About<'_>,
    cx: Context<'_>,
    now: Instant,
    report: &mut Report,
) -> anyhow::Result<()> {
    let escalations: HashSet<Key> = batch
        .iter()
        .filter(|(_, e)| *e)
        .map(|(s, _)| (s.pid, s.backend_start))
        .collect();
    let plan = Plan::build(
        signal,
        batch.into_iter().map(|(s, _)| s).collect(),
        &rule.filter,
        &caps.caller,
    );
    let action = signal_name(signal);
    let outcomes = match sessions::execute(client, caps, &rule.filter, &plan, VERIFY_TIMEOUT).await
    {
        Ok(o) => o,
        Err(e) => {
            for t in &plan.targets {
                report.failed += 1;
                write(
                    cx.audit,
                    &Record::new(
                        about,
                        &t.session,
                        action,
                        "failed",
                        None,
                        format!(
                            "the signalling statement failed (the signal may have been sent): {e}"
                        ),
                    ),
                )?;
                count(cx.metrics, cx.target, &rule.name, action, "failed", false);
            }
            return Err(e.into());
        }
    };
    for (t, o) in plan.targets.iter().zip(outcomes) {
        let key = (t.session.pid, t.session.backend_start);
        let failed = o.outcome.is_failure();
        if failed {
            report.failed += 1;
        } else {
            report.acted += 1;
        }
        if matches!(o.outcome, OutcomeKind::Cancelled | OutcomeKind::Terminated) {
            state.signalled(rule, key, signal, now);
        }
        let mut record = Record::new(
            about,
            &t.session,
            action,
            if failed { "failed" } else { "acted" },
            Some(o.outcome.as_str()),
            format!("{}; matched: {}", o.detail, t.reason),
        );
        record.escalation = escalations.contains(&key);
        write(cx.audit, &record)?;
        count(
            cx.metrics,
            cx.target,
            &rule.name,
            action,
            o.outcome.as_str(),
            false,
        );
    }
    Ok(())
}

/// `pgkill_sessions{target,state}`: client sessions by state, from the evaluation.
pub fn count_sessions(states: &[(String, i64)], cx: Context<'_>) {
    let mut names: Vec<String> = State::ALL
        .iter()
        .map(|s| s.server_name().to_owned())
        .collect();
    names.push("unknown".to_owned());
    for name in &names {
        cx.metrics
            .sessions
            .get_or_create(&StateLabels {
                target: cx.target.to_owned(),
                state: name.clone(),
            })
            .set(0);
    }
    for (state, n) in states {
        cx.metrics
            .sessions
            .get_or_create(&StateLabels {
                target: cx.target.to_owned(),
                state: state.clone(),
            })
            .set(*n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_kill() {
        let r = Report::default();
        assert_eq!(r.exit_code(), 1);
        let r = Report {
            matched: 2,
            acted: 2,
            ..Report::default()
        };
        assert_eq!(r.exit_code(), 0);
        let r = Report {
            matched: 2,
            dry_run: 2,
            ..Report::default()
        };
        assert_eq!(r.exit_code(), 0);
        let mut r = Report {
            matched: 2,
            acted: 1,
            failed: 1,
            ..Report::default()
        };
        assert_eq!(r.exit_code(), 3);
        r.add(Report {
            matched: 1,
            acted: 1,
            ..Report::default()
        });
        assert_eq!(r.matched, 3);
    }
}

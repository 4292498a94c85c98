//! `--json` of `drop`, `rename`, `drain` and `unfence`: one document with what the
//! preflight found (settings before, blockers, who would be ended, refusals), the steps
//! taken, the sessions ended and how, the attempts, and how the database was left or
//! restored. Same conventions as `kill --json`: a `server` part, snake_case keys, times
//! in RFC 3339.

use pgkill_core::database::{Blockers, DbSettings, Ending, Operation};
use pgkill_core::fence::{FenceRecord, RestorePlan};
use pgkill_pg::databases::{Preflight, Report};
use serde::Serialize;

use crate::output::ServerJson;

/// The document.
#[derive(Debug, Serialize)]
pub struct OpDoc<'a> {
    /// Server and role.
    pub server: ServerJson,
    /// `drop`, `rename`, `drain` or `unfence`.
    pub action: &'static str,
    /// The database.
    pub database: &'a str,
    /// The new name (rename).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_name: Option<&'a str>,
    /// `--dry-run`: nothing was changed.
    pub dry_run: bool,
    /// What was found before acting (absent for `unfence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightJson<'a>>,
    /// What was done (absent on a refusal, a dry run or a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultJson<'a>>,
    /// Why the operation failed (the database was put back as it was, unless this says
    /// otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<'a> OpDoc<'a> {
    /// The document of `action` on `database`, with what the preflight found.
    pub fn new(
        caps: &pgkill_pg::sessions::Capabilities,
        settings: &pgkill_pg::connect::Settings,
        action: &'static str,
        database: &'a str,
        new_name: Option<&'a str>,
        dry_run: bool,
        preflight: Option<&'a Preflight>,
    ) -> OpDoc<'a> {
        OpDoc {
            server: crate::sessions_cmd::server_json(caps, settings),
            action,
            database,
            new_name,
            dry_run,
            preflight: preflight.map(PreflightJson::of),
            result: None,
            error: None,
        }
    }
}

/// The preflight part.
#[derive(Debug, Serialize)]
pub struct PreflightJson<'a> {
    /// Database OID.
    pub oid: u32,
    /// Owner role.
    pub owner: &'a str,
    /// Settings before anything was changed.
    pub settings: &'a DbSettings,
    /// The fence record the database already had, if any.
    pub fence: Option<FenceRecord>,
    /// Who ending every session ends.
    pub ending: &'a Ending,
    /// Prepared transactions, logical slots, subscriptions.
    pub blockers: &'a Blockers,
    /// Why the operation cannot go ahead (empty when it can).
    pub refusals: &'a [String],
}

impl<'a> PreflightJson<'a> {
    /// From a preflight.
    pub fn of(pre: &'a Preflight) -> Self {
        PreflightJson {
            oid: pre.info.oid,
            owner: &pre.info.owner,
            settings: &pre.info.settings,
            fence: pre.fence().and_then(|r| r.ok()),
            ending: &pre.ending,
            blockers: &pre.blockers,
            refusals: &pre.refusals,
        }
    }
}

/// What was done.
#[derive(Debug, Serialize)]
pub struct ResultJson<'a> {
    /// In order: `rolled_back_prepared`, `fenced`, `drained`, then `dropped`, `renamed`,
    /// `left_fenced` or `unfenced`.
    pub steps: Vec<&'static str>,
    /// Sessions ended.
    pub sessions_ended: EndedJson,
    /// DROP / RENAME attempts.
    pub attempts: u32,
    /// Prepared transactions rolled back (`--rollback-prepared`).
    pub prepared_rolled_back: &'a [String],
    /// The fence the database already had (a second drain keeps its settings; a rename
    /// keeps it under the new name).
    pub already_fenced: Option<&'a FenceRecord>,
    /// Whether the database is left fenced.
    pub left_fenced: bool,
    /// What restoring did (rename, `--then-unfence`, `unfence`).
    pub restore: Option<RestoreJson<'a>>,
    /// `--pgbouncer`: what was done at the poolers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooler: Option<PoolerJson>,
}

/// What a database command did at the poolers (`alias (pooler)` each).
#[derive(Debug, Serialize)]
pub struct PoolerJson {
    /// Aliases paused (`drain`, `rename`) or disabled and killed (`drop`).
    pub paused: Vec<String>,
    /// Aliases resumed.
    pub resumed: Vec<String>,
    /// Application connections ended at a pooler because their transactions outlasted
    /// `--grace`.
    pub ended: Vec<String>,
    /// How long pausing took, in seconds.
    pub pause_s: Option<f64>,
    /// What could not be undone (the aliases stay paused: `pgkill unfence` retries).
    pub problems: Vec<String>,
}

/// Sessions ended, and how.
#[derive(Debug, Serialize)]
pub struct EndedJson {
    /// All of them.
    pub total: i64,
    /// Ended as soon as they were outside a transaction, during the grace period.
    pub after_their_transaction: i64,
    /// Terminated (after the grace period, or arriving late).
    pub terminated: i64,
    /// Of the terminated, sessions whose open transaction was rolled back.
    pub transactions_rolled_back: i64,
}

/// What a restore did.
#[derive(Debug, Serialize)]
pub struct RestoreJson<'a> {
    /// The database no longer exists.
    pub gone: bool,
    /// `ALLOW_CONNECTIONS` was set to this.
    pub allow_connections: Option<bool>,
    /// `IS_TEMPLATE` was set to this.
    pub is_template: Option<bool>,
    /// The fence record was replaced by the database's own comment.
    pub record_removed: bool,
    /// Changes someone else made meanwhile, left as they are.
    pub left_alone: &'a [String],
}

impl<'a> RestoreJson<'a> {
    /// From a restore plan (as carried out).
    pub fn of(plan: &'a RestorePlan) -> Self {
        RestoreJson {
            gone: plan.gone,
            allow_connections: plan.allow_connections,
            is_template: plan.is_template,
            record_removed: plan.comment.is_some(),
            left_alone: &plan.foreign_changes,
        }
    }
}

impl<'a> ResultJson<'a> {
    /// What `unfence` did: restored `record` as `plan` says, or found no record (the
    /// database may still refuse connections for reasons of its own).
    pub fn unfence(
        record: Option<&'a FenceRecord>,
        plan: Option<&'a RestorePlan>,
        still_fenced: bool,
    ) -> Self {
        ResultJson {
            steps: if plan.is_some() {
                vec!["unfenced"]
            } else {
                Vec::new()
            },
            sessions_ended: EndedJson {
                total: 0,
                after_their_transaction: 0,
                terminated: 0,
                transactions_rolled_back: 0,
            },
            attempts: 0,
            prepared_rolled_back: &[],
            already_fenced: record,
            left_fenced: still_fenced,
            restore: plan.map(RestoreJson::of),
            pooler: None,
        }
    }

    /// From the report of a finished operation.
    pub fn of(op: Operation, then_unfence: bool, report: &'a Report) -> Self {
        let mut steps = Vec::new();
        if !report.prepared_rolled_back.is_empty() {
            steps.push("rolled_back_prepared");
        }
        // An invalid database is dropped without a fence (there is nothing to fence).
        if report.fenced {
            steps.extend(["fenced", "drained"]);
        }
        steps.push(match op {
            Operation::Drop => "dropped",
            Operation::Rename => "renamed",
            Operation::Drain if then_unfence => "unfenced",
            Operation::Drain => "left_fenced",
        });
        if op == Operation::Rename {
            steps.push(if report.left_fenced {
                "left_fenced"
            } else {
                "unfenced"
            });
        }
        ResultJson {
            steps,
            sessions_ended: EndedJson {
                total: report.ended_idle + report.terminated,
                after_their_transaction: report.ended_idle,
                terminated: report.terminated,
                transactions_rolled_back: report.rolled_back,
            },
            attempts: report.attempts,
            prepared_rolled_back: &report.prepared_rolled_back,
            already_fenced: report.already_fenced.as_ref(),
            left_fenced: report.left_fenced,
            restore: report.restored.as_ref().map(RestoreJson::of),
            pooler: (!report.paused.is_empty() || !report.pooler_problems.is_empty()).then(|| {
                let each = |v: &[(String, String)]| {
                    v.iter()
                        .map(|(p, a)| format!("{a} ({p})"))
                        .collect::<Vec<_>>()
                };
                PoolerJson {
                    paused: each(&report.paused),
                    resumed: each(&report.resumed),
                    ended: report.ended_at_pooler.clone(),
                    pause_s: report
                        .pause_took
                        .map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0),
                    problems: report.pooler_problems.clone(),
                }
            }),
        }
    }
}

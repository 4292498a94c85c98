//! Many servers at once: `--target CONNINFO` (repeatable) and `--targets FILE` name the
//! servers, and `ls`, `kill`, `cancel`, `free-slot`, `drain`, `unfence`, `drop` and
//! `rename` run on all of them, `--parallel N` at a time (`top` over several servers is
//! `pgkill_tui::run` with one connection per target; `watch` and `demo` refuse
//! several targets here).
//!
//! Each server is worked on exactly as a single one is (the same plan, re-checking
//! statement and verification, per server; for the database commands the same
//! `databases::preflight` and `databases::run` as `database_cmd`, with the fence record,
//! the standby refusal and the restore on failure of each server); what changes is the
//! output (a first column `target`, a `target` CSV field, `{"targets": [...]}` in JSON),
//! one plan and one confirmation for all servers, and the exit code: 0 acted on (or
//! listed) at least one session and no server failed, 1 nothing matched anywhere, 3 a
//! server failed or was partly done while others worked, 2 every server failed.
//!
//! A target's poolers (the `pgbouncer` key of its `[[target]]` table, or `--pgbouncer`
//! with one target) ride on its connection (`Connected::poolers`), so the single-server
//! code sees and acts through them on that server alone: `sessions_cmd::list_through`
//! and `SignalPlan` for `ls`/`kill`/`cancel`/`free-slot`, `database_cmd::poolers_for`
//! for the pauses of `drain`/`drop`/`rename`, `unfence_on` for the resumes.
//!
//! A server whose preflight refuses (or that cannot be reached) is shown with the reason
//! and left untouched while the others go ahead, as `kill` goes ahead on the servers it
//! reaches: the plan says which are skipped before the one confirmation. Ctrl-C or
//! SIGTERM is heard once ([`Stop`]) and reaches every server's work: before anything
//! changed it only stops (exit 2); while carrying out, each server cancels its statement
//! in flight and `databases::run` restores its database. With several servers the drain
//! progress line on a terminal is one line for all of them (the sums).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use pgkill_core::plan::Outcome;
use pgkill_core::planner::Signal;
use pgkill_pg::connect::{self, NoPrompt, SystemEnv};
use pgkill_pg::sessions::{self, Capabilities};
use serde::Deserialize;

use pgkill_pg::databases::{self, Preflight, Progress, Request};

use crate::args::ConnArgs;
use crate::conn::{self, Connected};
use crate::database_cmd::{self, Job, UnfenceArgs};
use crate::fences;
use crate::inflight::{self, Signals};
use crate::output;
use crate::sessions_cmd::{self, FreeSlotArgs, LsArgs, SignalArgs};
use crate::{Outcome as Exit, UsageError};

/// A server to work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What the output calls it: the `name` in the targets file, else the service name,
    /// else `host:port`.
    pub name: String,
    /// How to connect (may hold a password: never shown).
    pub conninfo: String,
    /// The PgBouncer admin consoles in front of this server (the `pgbouncer` key of its
    /// `[[target]]` table; with one target, `--pgbouncer`): every command sees and acts
    /// through them on this server, as `--pgbouncer` does on one server.
    pub pgbouncer: Vec<String>,
}

/// `--targets FILE`: `[[target]]` tables, as in `pgkill watch`'s policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetsFile {
    #[serde(default)]
    target: Vec<TargetEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetEntry {
    name: String,
    conninfo: String,
    /// PgBouncer admin consoles in front of this server (connection strings, as
    /// `--pgbouncer` takes them).
    #[serde(default)]
    pgbouncer: Vec<String>,
}

/// The servers `--target` and `--targets` name (none: the one server of the command
/// line, as always), each with the poolers in front of it. `--pgbouncer` (or
/// `PGKILL_PGBOUNCER`) belongs to one server: with exactly one target it is that
/// target's; with several it is refused (which server is it in front of?), pointing to
/// the `pgbouncer` key of `--targets FILE`.
pub fn targets(args: &ConnArgs) -> anyhow::Result<Vec<Target>> {
    let mut all = Vec::new();
    for conninfo in &args.targets {
        all.push(Target {
            name: name_of(args, conninfo)?,
            conninfo: conninfo.clone(),
            pgbouncer: Vec::new(),
        });
    }
    if let Some(path) = &args.targets_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("--targets {}: {e}", path.display())))?;
        let file: TargetsFile = toml::from_str(&text)
            .map_err(|e| UsageError(format!("--targets {}: {e}", path.display())))?;
        for t in file.target {
            if let Some(empty) = t.pgbouncer.iter().find(|c| c.trim().is_empty()) {
                anyhow::bail!(UsageError(format!(
                    "--targets {}: target {:?}: pgbouncer = [{empty:?}] names no console: give each PgBouncer admin console's connection string",
                    path.display(),
                    t.name
                )));
            }
            all.push(Target {
                name: t.name,
                conninfo: t.conninfo,
                pgbouncer: t.pgbouncer,
            });
        }
    }
    let (given, from_env) = args.poolers();
    if !given.is_empty() {
        let option = if from_env {
            "PGKILL_PGBOUNCER"
        } else {
            "--pgbouncer"
        };
        match all.as_mut_slice() {
            [] => {}
            [one] if one.pgbouncer.is_empty() => one.pgbouncer = given,
            [one] => anyhow::bail!(UsageError(format!(
                "{option} and the pgbouncer key of target {:?} in --targets both name poolers in front of it: give them in one place",
                one.name
            ))),
            several => anyhow::bail!(UsageError(format!(
                "{option} names a PgBouncer in front of one server, and {} targets are given: say which server each pooler is in front of with the `pgbouncer = [\"CONNINFO\", ...]` key of its [[target]] table in --targets FILE",
                several.len()
            ))),
        }
    }
    for (i, t) in all.iter().enumerate() {
        if all[..i].iter().any(|o| o.name == t.name) {
            anyhow::bail!(UsageError(format!(
                "two targets are called {:?}: give them names of their own in --targets",
                t.name
            )));
        }
    }
    Ok(all)
}

/// The service name of `conninfo` if it names one, else the `host:port` it resolves to
/// (with `-h`/`-p` and the environment as defaults). A connection string that cannot be
/// read is a usage error.
fn name_of(args: &ConnArgs, conninfo: &str) -> anyhow::Result<String> {
    let settings = connect::resolve(&conn::connect_args(args, Some(conninfo)), &SystemEnv)
        .map_err(|e| UsageError(format!("--target: {e}")))?;
    Ok(service_of(conninfo).unwrap_or_else(|| settings.host_port()))
}

/// The `service=NAME` of a connection string (`key=value` words, or a URI's query).
fn service_of(conninfo: &str) -> Option<String> {
    let words: Vec<&str> = match conninfo.split_once('?') {
        Some((_, query)) if conninfo.contains("://") => query.split('&').collect(),
        _ => conninfo.split_whitespace().collect(),
    };
    words
        .iter()
        .filter_map(|w| w.strip_prefix("service="))
        .map(|v| v.trim_matches('\'').to_owned())
        .find(|v| !v.is_empty())
}

/// What may be combined with several targets: refused up front, before connecting
/// anywhere (exit 2).
pub fn check(args: &ConnArgs, command: &str, targets: &[Target]) -> anyhow::Result<()> {
    if !matches!(
        command,
        "ls" | "kill" | "cancel" | "drain" | "unfence" | "drop" | "rename" | "free-slot"
    ) {
        anyhow::bail!(UsageError(format!(
            "`pgkill {command}` works on one server so far: --target/--targets are taken by every command but watch (its policy names its targets) and demo"
        )));
    }
    if args.password_prompt && targets.len() > 1 {
        anyhow::bail!(UsageError(
            "-W asks for one server's password: with several targets give the passwords in .pgpass or PGPASSWORD".into()
        ));
    }
    Ok(())
}

/// Runs `work` on every target, `parallel` at a time, and yields the results in the
/// targets' order as they are ready. A target's error (it is down, refuses the login,
/// times out) is its own: the others go on.
fn each<'a, T, F, Fut>(
    targets: &'a [Target],
    parallel: u16,
    work: F,
) -> impl stream::Stream<Item = Result<T, String>> + 'a
where
    F: Fn(&'a Target) -> Fut + 'a,
    Fut: Future<Output = anyhow::Result<T>> + 'a,
    T: 'a,
{
    stream::iter(targets.iter().map(work))
        .buffered(usize::from(parallel))
        .map(|r| r.map_err(|e| pgkill_core::printable(&format!("{e:#}")).into_owned()))
}

/// [`each`], all results at once.
async fn on_each<'a, T, F, Fut>(
    targets: &'a [Target],
    parallel: u16,
    work: F,
) -> Vec<Result<T, String>>
where
    F: Fn(&'a Target) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + 'a,
{
    stream::iter(targets.iter().map(work))
        .buffered(usize::from(parallel))
        .map(|r| r.map_err(|e| pgkill_core::printable(&format!("{e:#}")).into_owned()))
        .collect()
        .await
}

/// Connects to one target (see [`connect_only`]) and reads what it can do.
async fn connect_to(args: &ConnArgs, target: &Target) -> anyhow::Result<(Connected, Capabilities)> {
    let connected = connect_only(args, target, None).await?;
    let caps = sessions::capabilities(&connected.client).await?;
    Ok((connected, caps))
}

/// Says on stderr which targets failed and why.
fn tell_failures<T>(targets: &[Target], results: &[Result<T, String>]) {
    for (t, r) in targets.iter().zip(results) {
        if let Err(e) = r {
            eprintln!("pgkill: target {}: {e}", pgkill_core::printable(&t.name));
        }
    }
}

/// The exit code over all targets, from each one's (a failed target is `Error`).
fn combined(per_target: &[Exit]) -> Exit {
    let failed = per_target.iter().filter(|e| **e == Exit::Error).count();
    if failed == per_target.len() {
        Exit::Error
    } else if failed > 0 || per_target.contains(&Exit::Partial) {
        Exit::Partial
    } else if per_target.contains(&Exit::Ok) {
        Exit::Ok
    } else {
        Exit::NothingMatched
    }
}

/// Flushes what was written and combines the targets' exit codes.
fn finish(out: &mut dyn Write, codes: &[Exit]) -> anyhow::Result<Exit> {
    out.flush()?;
    Ok(combined(codes))
}

/// `{"targets": [{"target": NAME, ...the single-server document...}, {"target": NAME,
/// "error": {"message": ...}}]}`.
fn targets_json(
    out: &mut dyn Write,
    targets: &[Target],
    docs: Vec<Result<serde_json::Value, String>>,
) -> anyhow::Result<()> {
    let items: Vec<serde_json::Value> = targets
        .iter()
        .zip(docs)
        .map(|(t, d)| {
            let mut item = serde_json::Map::new();
            item.insert("target".into(), t.name.clone().into());
            match d {
                Ok(serde_json::Value::Object(doc)) => item.extend(doc),
                Ok(other) => {
                    item.insert("document".into(), other);
                }
                Err(e) => {
                    item.insert("error".into(), serde_json::json!({ "message": e }));
                }
            }
            serde_json::Value::Object(item)
        })
        .collect();
    output::json(out, &serde_json::json!({ "targets": items }))?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM while `work` runs; then stops with exit 2 (every statement
/// pgkill sends runs under `--statement-timeout`, so the servers stop them too).
async fn interruptible<T>(work: impl Future<Output = T>) -> anyhow::Result<T> {
    let mut signals = Signals::listen()?;
    tokio::select! {
        r = work => Ok(r),
        why = signals.recv() => Err(UsageError(format!("{why}: stopped on every target")).into()),
    }
}

/// `pgkill --target … ls`.
pub async fn ls(args: &ConnArgs, targets: &[Target], ls: &LsArgs) -> anyhow::Result<Exit> {
    let filter = ls.filters.to_filter(ls.all_backends);
    let list_on = |t| {
        let filter = &filter;
        async move {
            let (connected, caps) = connect_to(args, t).await?;
            let through =
                sessions_cmd::list_through(&connected.client, &caps, filter, &connected.poolers.0)
                    .await?;
            Ok((
                sessions_cmd::server_json(&caps, &connected.settings),
                through,
            ))
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if ls.json {
        // Each target's document is written as soon as it and those before it are
        // ready, straight from its sessions, which are then let go: only the targets
        // still in flight are held.
        #[derive(serde::Serialize)]
        struct Item<'a> {
            target: &'a str,
            #[serde(flatten)]
            doc: Option<output::SessionsDoc<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<serde_json::Value>,
        }
        let codes = interruptible(async {
            let mut doc = output::JsonTargets::start(&mut out)?;
            let mut codes = Vec::with_capacity(targets.len());
            let mut results = std::pin::pin!(each(targets, args.parallel, list_on));
            for t in targets {
                let Some(r) = results.next().await else {
                    break;
                };
                codes.push(listed_code(&r));
                let item = match &r {
                    Ok((server, through)) => Item {
                        target: &t.name,
                        doc: Some(output::sessions_doc(
                            server,
                            &through.list,
                            &through.pooled,
                            None,
                        )),
                        error: None,
                    },
                    Err(e) => {
                        eprintln!("pgkill: target {}: {e}", pgkill_core::printable(&t.name));
                        Item {
                            target: &t.name,
                            doc: None,
                            error: Some(serde_json::json!({ "message": e })),
                        }
                    }
                };
                doc.item(&item)?;
            }
            doc.end()?;
            anyhow::Ok(codes)
        })
        .await??;
        return finish(&mut out, &codes);
    }
    let results = interruptible(on_each(targets, args.parallel, list_on)).await?;
    tell_failures(targets, &results);
    let codes: Vec<Exit> = results.iter().map(listed_code).collect();
    if ls.csv {
        let per: Vec<(
            &str,
            &[pgkill_core::Session],
            &[pgkill_core::pooler::Pooled],
        )> = targets
            .iter()
            .zip(&results)
            .filter_map(|(t, r)| {
                r.as_ref().ok().map(|(_, through)| {
                    (
                        t.name.as_str(),
                        through.list.as_slice(),
                        through.pooled.as_slice(),
                    )
                })
            })
            .collect();
        output::per_target_sessions_csv(&mut out, &per, output::stdout_is_terminal())?;
    } else {
        let mut people = output::for_people();
        for (t, r) in targets.iter().zip(&results) {
            for p in r.iter().flat_map(|(_, through)| &through.states) {
                writeln!(
                    people,
                    "Target {}: {}",
                    t.name,
                    sessions_cmd::pooler_line(p)
                )?;
            }
        }
        let per = per_target(targets, &results, |r| {
            r.as_ref()
                .ok()
                .map(|(_, through)| output::session_rows(&through.list, &through.pooled))
        });
        output::per_target_table(
            &mut people,
            &output::SESSION_HEADER,
            &per,
            sessions_cmd::width(),
        )?;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        writeln!(
            people,
            "({} target(s) listed, {} failed)",
            ok,
            targets.len() - ok
        )?;
        people.flush()?;
    }
    finish(&mut out, &codes)
}

/// A target's exit code for `ls`: what it listed, or its failure.
fn listed_code<S>(r: &Result<(S, sessions_cmd::Through), String>) -> Exit {
    match r {
        Ok((_, t)) if !t.list.is_empty() || !t.pooled.is_empty() => Exit::Ok,
        Ok(_) => Exit::NothingMatched,
        Err(_) => Exit::Error,
    }
}

/// One target's part of `kill`/`cancel`: its connection, what it can do and its plan.
struct Planned {
    connected: Connected,
    caps: Capabilities,
    plan: sessions_cmd::SignalPlan,
}

/// `pgkill --target … kill` / `cancel`: every target's plan is made first (concurrently),
/// shown as one, confirmed once, then carried out on each target through the same
/// re-checking statement as on one server.
pub async fn signal(
    args: &ConnArgs,
    targets: &[Target],
    sig: &SignalArgs,
    signal: Signal,
    timeout: Duration,
) -> anyhow::Result<Exit> {
    let filter = sig.filters.to_filter(sig.all_backends);
    let action = match signal {
        Signal::Terminate => "terminate",
        Signal::Cancel => "cancel",
    };
    crate::confirm::ensure_possible(
        sig.yes,
        sig.dry_run,
        &format!("{action} sessions"),
        Some("plan"),
    )?;
    let planned = interruptible(on_each(targets, args.parallel, |t| {
        let filter = &filter;
        async move {
            let (connected, caps) = connect_to(args, t).await?;
            let plan = sessions_cmd::SignalPlan::build(&connected, &caps, filter, signal).await?;
            Ok(Planned {
                connected,
                caps,
                plan,
            })
        }
    }))
    .await?;
    tell_failures(targets, &planned);
    let count: usize = planned.iter().flatten().map(|p| p.plan.count()).sum();
    let listed: usize = planned.iter().flatten().map(|p| p.plan.listed()).sum();
    let mut out = output::for_people();
    let docs = |outcomes: &[Option<Result<Done, String>>], dry_run: bool| {
        planned
            .iter()
            .zip(outcomes)
            .map(|(p, o)| {
                let p = p.as_ref().map_err(Clone::clone)?;
                let (outcomes, apps) = match o {
                    Some(Ok((outcomes, apps))) => (outcomes.as_slice(), apps.as_slice()),
                    Some(Err(e)) => return Err(e.clone()),
                    None => (&[][..], &[][..]),
                };
                sessions_cmd::signal_doc(
                    &p.caps,
                    &p.connected.settings,
                    action,
                    dry_run,
                    &p.plan,
                    outcomes,
                    apps,
                )
            })
            .collect::<Vec<_>>()
    };
    let nothing: Vec<Option<Result<Done, String>>> = planned.iter().map(|_| None).collect();
    if !sig.json {
        if listed == 0 {
            writeln!(out, "No session matched on any target.")?;
        } else {
            writeln!(
                out,
                "Plan: {action} {count} session(s) on {} target(s):",
                planned
                    .iter()
                    .filter(|p| p.as_ref().is_ok_and(|p| p.plan.listed() > 0))
                    .count()
            )?;
            let per = per_target(targets, &planned, |p| {
                p.as_ref()
                    .ok()
                    .map(|p| output::plan_rows(&p.plan.backends()))
                    .filter(|rows| !rows.is_empty())
            });
            if !per.is_empty() {
                output::per_target_table(
                    &mut out,
                    &output::PLAN_HEADER,
                    &per,
                    sessions_cmd::width(),
                )?;
            }
            let per = per_target(targets, &planned, |p| {
                p.as_ref()
                    .ok()
                    .map(|p| output::app_target_rows(p.plan.at_pooler()))
                    .filter(|rows| !rows.is_empty())
            });
            at_the_poolers(&mut out, &output::APP_TARGET_HEADER, &per)?;
        }
    }
    let plan_codes: Vec<Exit> = planned
        .iter()
        .map(|p| match p {
            Ok(p) if p.plan.listed() == 0 => Exit::NothingMatched,
            Ok(_) => Exit::Ok,
            Err(_) => Exit::Error,
        })
        .collect();
    if listed == 0 || sig.dry_run {
        if sig.json {
            targets_json(&mut out, targets, docs(&nothing, sig.dry_run))?;
        } else if sig.dry_run && listed > 0 {
            writeln!(out, "Dry run: nothing was changed.")?;
        }
        out.flush()?;
        return Ok(combined(&plan_codes));
    }
    if !sig.yes {
        let verb = match signal {
            Signal::Terminate => "Terminate",
            Signal::Cancel => "Cancel the running statement of",
        };
        if !crate::confirm::ask(
            &mut out,
            &format!("{verb} {count} session(s) on these targets?"),
        )
        .await?
        {
            return Ok(Exit::Error);
        }
    }
    for (t, p) in targets.iter().zip(&planned) {
        for warning in p.iter().flat_map(|p| p.plan.warnings()) {
            say(t, &format!("warning: {warning}"));
        }
    }
    let filter = &filter;
    let outcomes: Vec<Option<Result<Done, String>>> = interruptible(
        stream::iter(planned.iter().map(|p| async move {
            let p = p.as_ref().ok()?;
            if p.plan.listed() == 0 {
                return Some(Ok((Vec::new(), Vec::new())));
            }
            Some(
                p.plan
                    .execute(&p.connected.client, &p.caps, filter, timeout)
                    .await
                    .map_err(|e| pgkill_core::printable(&e.to_string()).into_owned()),
            )
        }))
        .buffered(usize::from(args.parallel))
        .collect::<Vec<_>>(),
    )
    .await?;
    for (t, o) in targets.iter().zip(&outcomes) {
        if let Some(Err(e)) = o {
            eprintln!("pgkill: target {}: {e}", pgkill_core::printable(&t.name));
        }
    }
    let codes: Vec<Exit> = outcomes
        .iter()
        .zip(&plan_codes)
        .zip(&planned)
        .map(|((o, code), p)| match (o, p) {
            (None | Some(Err(_)), _) | (_, Err(_)) => Exit::Error,
            (Some(Ok(_)), _) if *code == Exit::NothingMatched => Exit::NothingMatched,
            (Some(Ok((outcomes, apps))), Ok(p)) => p.plan.code(outcomes, apps),
        })
        .collect();
    if sig.json {
        targets_json(&mut out, targets, docs(&outcomes, false))?;
    } else {
        let per = per_target(targets, &outcomes, |o| match o {
            Some(Ok((outcomes, _))) if !outcomes.is_empty() => Some(output::outcome_rows(outcomes)),
            _ => None,
        });
        let at_poolers = per_target(targets, &outcomes, |o| match o {
            Some(Ok((_, apps))) if !apps.is_empty() => Some(output::app_outcome_rows(apps)),
            _ => None,
        });
        if !per.is_empty() || at_poolers.is_empty() {
            output::per_target_table(
                &mut out,
                &output::OUTCOME_HEADER,
                &per,
                sessions_cmd::width(),
            )?;
        }
        at_the_poolers(&mut out, &output::APP_OUTCOME_HEADER, &at_poolers)?;
    }
    finish(&mut out, &codes)
}

/// The rows of the targets' application connections at their poolers (planned or
/// ended) under `At the poolers:`, when there are any.
fn at_the_poolers(
    out: &mut dyn Write,
    header: &[&str],
    per: &[(&str, Vec<Vec<String>>)],
) -> std::io::Result<()> {
    if per.is_empty() {
        return Ok(());
    }
    writeln!(out, "At the poolers:")?;
    output::per_target_table(out, header, per, sessions_cmd::width())
}

/// What `kill`/`cancel` did on one target: each backend's outcome, and each
/// application's at the poolers.
type Done = (Vec<Outcome>, Vec<pgkill_core::pooler::AppOutcome>);

/// Ctrl-C or SIGTERM, heard once for every target: each target's work watches it (and a
/// database command restores its own database when it fires).
struct Stop {
    heard: tokio::sync::watch::Receiver<Option<&'static str>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Stop {
    fn listen() -> anyhow::Result<Stop> {
        let mut signals = Signals::listen()?;
        let (tell, heard) = tokio::sync::watch::channel(None);
        let listener = tokio::spawn(async move {
            let why = signals.recv().await;
            let _ = tell.send(Some(why));
        });
        Ok(Stop { heard, listener })
    }

    /// The signal, if it has come.
    fn heard(&self) -> Option<&'static str> {
        *self.heard.borrow()
    }

    /// Waits for the signal (returns at once when it has come already).
    async fn wait(&self) -> &'static str {
        let mut heard = self.heard.clone();
        loop {
            if let Some(why) = *heard.borrow_and_update() {
                return why;
            }
            if heard.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `work` (that changes nothing) unless the signal comes first: then exit 2.
    async fn until<T>(&self, work: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::select! {
            r = work => Ok(r),
            why = self.wait() => Err(UsageError(format!("{why}: stopped on every target; nothing was changed")).into()),
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Connects to one target: its connection string over the command line's defaults, never
/// asking for a password (several prompts at once would mix). The connection carries the
/// target's own poolers, so the single-server code that takes `connected.poolers` sees
/// through them on this server alone.
async fn connect_only(
    args: &ConnArgs,
    target: &Target,
    except: Option<&str>,
) -> anyhow::Result<Connected> {
    let mut connected = conn::connect_with(args, Some(&target.conninfo), &NoPrompt).await?;
    connected.poolers = (target.pgbouncer.clone(), false);
    for warning in &connected.settings.warnings {
        say(target, &format!("warning: {warning}"));
    }
    // What one server's commands say of its fenced databases, under the target's name.
    for line in fences::server_notes(&connected.client, except).await {
        say(target, &line);
    }
    Ok(connected)
}

/// Starts listening for Ctrl-C / SIGTERM, then connects to every target (`--parallel` at
/// a time) and runs `work` on each connection, unless the signal comes first (exit 2:
/// this is for work that changes nothing). The listener goes on for what follows.
/// `except`: the database not to note as fenced (the one `unfence` restores).
async fn connected_each<'a, T, F, Fut>(
    args: &'a ConnArgs,
    targets: &'a [Target],
    except: Option<&'a str>,
    work: &'a F,
) -> anyhow::Result<(Stop, Vec<Result<T, String>>)>
where
    F: Fn(&'a Target, Connected) -> Fut,
    Fut: Future<Output = anyhow::Result<T>> + 'a,
{
    let stop = Stop::listen()?;
    let results = stop
        .until(on_each(targets, args.parallel, |t| async move {
            let connected = connect_only(args, t, except).await?;
            work(t, connected).await
        }))
        .await?;
    Ok((stop, results))
}

/// A line on stderr about one target.
fn say(target: &Target, line: &str) {
    eprintln!(
        "pgkill: target {}: {}",
        pgkill_core::printable(&target.name),
        pgkill_core::printable(line)
    );
}

/// An error as one target's message.
fn message(e: &anyhow::Error) -> String {
    pgkill_core::printable(&format!("{e:#}")).into_owned()
}

/// `doc` with `"error": {"message": ...}` added: the target was left untouched, or its
/// operation failed (and its database was put back).
fn with_error(doc: impl serde::Serialize, message: &str) -> Result<serde_json::Value, String> {
    let mut doc = to_json(doc)?;
    if let serde_json::Value::Object(map) = &mut doc {
        map.insert("error".into(), serde_json::json!({ "message": message }));
    }
    Ok(doc)
}

/// Any document as JSON, or why it cannot be.
fn to_json(doc: impl serde::Serialize) -> Result<serde_json::Value, String> {
    serde_json::to_value(doc).map_err(|e| e.to_string())
}

/// The rows `rows_of` gives for each target's result (none: the target is left out),
/// each under the target's name, for [`output::per_target_table`].
fn per_target<'a, T>(
    targets: &'a [Target],
    results: &'a [T],
    rows_of: impl Fn(&'a T) -> Option<Vec<Vec<String>>>,
) -> Vec<(&'a str, Vec<Vec<String>>)> {
    targets
        .iter()
        .zip(results)
        .filter_map(|(t, r)| rows_of(r).map(|rows| (t.name.as_str(), rows)))
        .collect()
}

/// Each line of `text` (one target's, for people) after `Target NAME: `.
fn lines_of(out: &mut dyn Write, target: &Target, text: &[u8]) -> std::io::Result<()> {
    for line in String::from_utf8_lossy(text).lines() {
        writeln!(out, "Target {}: {line}", target.name)?;
    }
    Ok(())
}

/// Each line of `text` as a row of one column.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines().map(|l| vec![l.to_owned()]).collect()
}

/// One target's look before a database command: its connection, its preflight, and why
/// the preflight refuses there (the target is then left untouched).
struct Examined {
    connected: Connected,
    caps: Capabilities,
    pre: Preflight,
    /// What to pause (or disable and kill) at the target's poolers first.
    poolers: Vec<pgkill_pg::pgbouncer::PoolerPlan>,
    /// The preflight for people.
    text: String,
    refused: Option<String>,
}

/// `pgkill --target … drain|drop|rename`: every target's preflight first (concurrently,
/// shown in the targets' order), one confirmation, then on every target whose preflight
/// passed, concurrently, the same `databases::run` as on one server (its own fence
/// record, its own restore on failure). A target that refuses or cannot be reached is
/// reported and left untouched; the others go ahead. Ctrl-C / SIGTERM stops every
/// target: each cancels its statement in flight and restores its database.
pub async fn database(args: &ConnArgs, targets: &[Target], job: &Job<'_>) -> anyhow::Result<Exit> {
    job.check()?;
    let stop = Stop::listen()?;
    let verb = job.verb();
    let examined = stop
        .until(on_each(targets, args.parallel, |t| async move {
            let connected = connect_only(args, t, None).await?;
            let (poolers, lines) = database_cmd::poolers_for(&connected, job).await?;
            let mut tell = |line: &str| say(t, line);
            let (caps, pre) = database_cmd::examine(&connected, job, &mut tell).await?;
            let mut text = Vec::new();
            for line in lines {
                writeln!(text, "{line}")?;
            }
            database_cmd::print_preflight(&mut text, &pre, verb)?;
            let refused = database_cmd::refusal(&connected, &caps, &pre, job)
                .await
                .map(|e| message(&e));
            Ok(Examined {
                connected,
                caps,
                pre,
                poolers,
                text: String::from_utf8_lossy(&text).into_owned(),
                refused,
            })
        }))
        .await?;
    tell_failures(targets, &examined);
    for (t, e) in targets.iter().zip(&examined) {
        if let Ok(Examined {
            refused: Some(why), ..
        }) = e
        {
            say(t, why);
        }
    }
    let ready = |e: &Result<Examined, String>| e.as_ref().is_ok_and(|e| e.refused.is_none());
    let mut out = output::for_people();
    if !job.json() {
        for (t, e) in targets.iter().zip(&examined) {
            match e {
                Ok(e) => {
                    writeln!(out, "Target {}:", t.name)?;
                    for line in e.text.lines() {
                        writeln!(out, "  {line}")?;
                    }
                    if let Some(why) = &e.refused {
                        writeln!(out, "  Left untouched: {}", why.replace('\n', "\n  "))?;
                    }
                }
                Err(why) => writeln!(out, "Target {}: left untouched: {why}", t.name)?,
            }
        }
    }
    let planned: Vec<Exit> = examined
        .iter()
        .map(|e| if ready(e) { Exit::Ok } else { Exit::Error })
        .collect();
    let chosen: Vec<&str> = targets
        .iter()
        .zip(&examined)
        .filter(|(_, e)| ready(e))
        .map(|(t, _)| t.name.as_str())
        .collect();
    if chosen.is_empty() || job.dry_run() {
        if job.json() {
            let docs = examined
                .iter()
                .map(|e| {
                    let e = e.as_ref().map_err(Clone::clone)?;
                    let doc = job.doc(&e.caps, &e.connected, &e.pre);
                    match &e.refused {
                        Some(why) => with_error(doc, why),
                        None => to_json(doc),
                    }
                })
                .collect();
            targets_json(&mut out, targets, docs)?;
        } else if chosen.is_empty() {
            writeln!(
                out,
                "No target to {verb} {} on: nothing was changed.",
                job.name
            )?;
        } else {
            writeln!(out, "Dry run: nothing was changed.")?;
        }
        out.flush()?;
        return Ok(combined(&planned));
    }
    if !job.yes() {
        let prepared = examined
            .iter()
            .filter(|e| ready(e))
            .flatten()
            .map(|e| e.pre.blockers.prepared.len())
            .sum();
        let question = job.question_on(&chosen, prepared);
        if !stop
            .until(crate::confirm::ask(&mut out, &question))
            .await??
        {
            return Ok(Exit::Error);
        }
    }
    // One progress line for all targets: the sum of what is left on each.
    let tty = std::io::stderr().is_terminal();
    let progress: std::sync::Mutex<Vec<Option<Progress>>> =
        std::sync::Mutex::new(vec![None; targets.len()]);
    let shown = std::sync::atomic::AtomicBool::new(false);
    let show_all = |i: usize, p: Option<Progress>| {
        let Ok(mut all) = progress.lock() else {
            return;
        };
        all[i] = p;
        if tty && p.is_some() {
            let seen = all.iter().flatten();
            let sum = seen.fold(
                Progress {
                    sessions: 0,
                    in_transaction: 0,
                    grace_left: Duration::ZERO,
                },
                |s, p| Progress {
                    sessions: s.sessions + p.sessions,
                    in_transaction: s.in_transaction + p.in_transaction,
                    grace_left: s.grace_left.max(p.grace_left),
                },
            );
            eprint!("{}", database_cmd::progress_line(sum));
            shown.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let (stop, show_all) = (&stop, &show_all);
    let done: Vec<Option<(Request, Result<databases::Report, String>)>> =
        stream::iter(examined.iter().enumerate().map(|(i, e)| async move {
            let e = e.as_ref().ok().filter(|e| e.refused.is_none())?;
            let req = job.request(e.poolers.clone());
            if let Some(why) = stop.heard() {
                return Some((
                    req,
                    Err(format!("{why} before it began: nothing was changed")),
                ));
            }
            let show = move |p: Progress| show_all(i, Some(p));
            let connected = &e.connected;
            let interrupt = async move {
                let why = stop.wait().await;
                // Stop what the server is doing for us (a DROP waiting on sessions) first.
                inflight::cancel(connected).await;
                why.to_owned()
            };
            tokio::pin!(interrupt);
            let result = database_cmd::carry_out(
                connected,
                &e.caps,
                &e.pre,
                &req,
                &show,
                interrupt.as_mut(),
            )
            .await;
            show_all(i, None);
            let result = result.map_err(|err| {
                message(&database_cmd::failure(
                    job,
                    &e.pre,
                    &req,
                    err,
                    args.statement_timeout,
                ))
            });
            Some((req, result))
        }))
        .buffered(usize::from(args.parallel))
        .collect()
        .await;
    if shown.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!();
    }
    let codes: Vec<Exit> = done
        .iter()
        .map(|d| match d {
            Some((_, Ok(_))) => Exit::Ok,
            _ => Exit::Error,
        })
        .collect();
    for (t, d) in targets.iter().zip(&done) {
        if let Some((_, Err(why))) = d {
            say(t, why);
        }
    }
    if job.json() {
        let docs = examined
            .iter()
            .zip(&done)
            .map(|(e, d)| {
                let e = e.as_ref().map_err(Clone::clone)?;
                match (d, &e.refused) {
                    (_, Some(why)) => with_error(job.doc(&e.caps, &e.connected, &e.pre), why),
                    (Some((_, Err(why))), None) => {
                        with_error(job.doc(&e.caps, &e.connected, &e.pre), why)
                    }
                    (Some((_, Ok(report))), None) => {
                        let result = Ok(report.clone());
                        to_json(job.outcome_doc(&e.caps, &e.connected, &e.pre, &result))
                    }
                    (None, None) => Err("not carried out".into()),
                }
            })
            .collect();
        targets_json(&mut out, targets, docs)?;
    } else {
        let mut per: Vec<(&str, Vec<Vec<String>>)> = Vec::new();
        for ((t, e), d) in targets.iter().zip(&examined).zip(&done) {
            let text = match (e, d) {
                (Err(why), _) => format!("left untouched: {why}"),
                (
                    Ok(Examined {
                        refused: Some(_), ..
                    }),
                    _,
                ) => "left untouched: its preflight refuses (see above)".to_owned(),
                (Ok(_), Some((_, Err(why)))) => why.clone(),
                (Ok(_), Some((_, Ok(report)))) => {
                    let mut text = Vec::new();
                    database_cmd::tell_report(&mut text, job, report)?;
                    String::from_utf8_lossy(&text).into_owned()
                }
                (Ok(_), None) => "not carried out".to_owned(),
            };
            per.push((t.name.as_str(), rows(&text)));
        }
        output::per_target_table(&mut out, &["result"], &per, None)?;
        let ok = codes.iter().filter(|c| **c == Exit::Ok).count();
        writeln!(
            out,
            "({ok} of {} target(s) done, {} failed or left untouched)",
            targets.len(),
            targets.len() - ok
        )?;
    }
    finish(&mut out, &codes)
}

/// `pgkill --target … unfence DB`: the same restore as on one server, on every target
/// concurrently; a target where it fails (or that cannot be reached) is reported while
/// the others are unfenced.
pub async fn unfence(
    args: &ConnArgs,
    targets: &[Target],
    unfence: &UnfenceArgs,
) -> anyhow::Result<Exit> {
    let except = Some(unfence.db.as_str());
    let (_stop, results) = connected_each(args, targets, except, &|t, connected| async move {
        let mut text = Vec::new();
        let mut tell = |line: &str| say(t, line);
        let code =
            database_cmd::unfence_on(&connected, unfence, &mut text, &mut tell, false).await?;
        Ok((code, text))
    })
    .await?;
    tell_failures(targets, &results);
    let codes: Vec<Exit> = results
        .iter()
        .map(|r| r.as_ref().map_or(Exit::Error, |(code, _)| *code))
        .collect();
    let mut out = output::for_people();
    if unfence.json {
        let docs = results
            .into_iter()
            .map(|r| {
                let (_, text) = r?;
                serde_json::from_slice(&text).map_err(|e| e.to_string())
            })
            .collect();
        targets_json(&mut out, targets, docs)?;
    } else {
        let per = per_target(targets, &results, |r| {
            Some(rows(&match r {
                Ok((_, text)) => String::from_utf8_lossy(text).into_owned(),
                Err(why) => format!("failed: {why}"),
            }))
        });
        output::per_target_table(&mut out, &["result"], &per, None)?;
    }
    finish(&mut out, &codes)
}

/// `pgkill --target … free-slot ROLE`: every target's plan first (the role's sessions and
/// limit there, the idle sessions to end), one table and one confirmation, then the same
/// ending and watching for a pool that takes the slot back as on one server, on every
/// target concurrently.
pub async fn free_slot(
    args: &ConnArgs,
    targets: &[Target],
    slot_args: &FreeSlotArgs,
) -> anyhow::Result<Exit> {
    slot_args.check()?;
    let (stop, planned) = connected_each(args, targets, None, &|_, connected| async move {
        let slot = sessions_cmd::plan_free_slot(&connected, slot_args).await?;
        Ok((connected, slot))
    })
    .await?;
    tell_failures(targets, &planned);
    let count: usize = planned
        .iter()
        .flatten()
        .map(|(_, s)| s.plan.to_signal().count())
        .sum();
    let listed: usize = planned
        .iter()
        .flatten()
        .map(|(_, s)| s.plan.targets.len())
        .sum();
    let mut out = output::for_people();
    if !slot_args.json() {
        for (t, p) in targets.iter().zip(&planned) {
            if let Ok((_, slot)) = p {
                let mut text = Vec::new();
                sessions_cmd::tell_role(&mut text, slot_args, slot)?;
                lines_of(&mut out, t, &text)?;
            }
        }
        if listed == 0 {
            writeln!(
                out,
                "No idle session of {} to end on any target.",
                slot_args.role()
            )?;
            out.flush()?;
            return Ok(combined(
                &planned
                    .iter()
                    .map(|p| {
                        if p.is_ok() {
                            Exit::NothingMatched
                        } else {
                            Exit::Error
                        }
                    })
                    .collect::<Vec<_>>(),
            ));
        }
        let per = per_target(targets, &planned, |p| {
            p.as_ref().ok().map(|(_, s)| output::plan_rows(&s.plan))
        });
        output::per_target_table(&mut out, &output::PLAN_HEADER, &per, sessions_cmd::width())?;
    }
    if !slot_args.yes()
        && !stop
            .until(crate::confirm::ask(
                &mut out,
                &format!("Terminate {count} session(s) on these targets?"),
            ))
            .await??
    {
        return Ok(Exit::Error);
    }
    let freed: Vec<Result<sessions_cmd::Freed, String>> = stop
        .until(
            stream::iter(planned.iter().map(|p| async move {
                let (connected, slot) = p.as_ref().map_err(Clone::clone)?;
                sessions_cmd::carry_out_free_slot(connected, slot)
                    .await
                    .map_err(|e| message(&e))
            }))
            .buffered(usize::from(args.parallel))
            .collect::<Vec<_>>(),
        )
        .await?;
    for (t, (p, f)) in targets.iter().zip(planned.iter().zip(&freed)) {
        if let (Ok(_), Err(why)) = (p, f) {
            say(t, why);
        }
    }
    let codes: Vec<Exit> = freed
        .iter()
        .map(|f| f.as_ref().map_or(Exit::Error, |f| f.code))
        .collect();
    if slot_args.json() {
        let docs = planned
            .iter()
            .zip(&freed)
            .map(|(p, f)| {
                let (connected, slot) = p.as_ref().map_err(Clone::clone)?;
                let freed = f.as_ref().map_err(Clone::clone)?;
                to_json(sessions_cmd::free_slot_doc(
                    connected, slot_args, slot, freed,
                ))
            })
            .collect();
        targets_json(&mut out, targets, docs)?;
    } else {
        let per = per_target(targets, &freed, |f| {
            f.as_ref()
                .ok()
                .filter(|f| !f.outcomes.is_empty())
                .map(|f| output::outcome_rows(&f.outcomes))
        });
        output::per_target_table(
            &mut out,
            &output::OUTCOME_HEADER,
            &per,
            sessions_cmd::width(),
        )?;
        for (t, (p, f)) in targets.iter().zip(planned.iter().zip(&freed)) {
            if let (Ok((_, slot)), Ok(freed)) = (p, f) {
                let mut text = Vec::new();
                sessions_cmd::tell_freed(&mut text, slot_args, slot, freed)?;
                lines_of(&mut out, t, &text)?;
            }
        }
    }
    finish(&mut out, &codes)
}

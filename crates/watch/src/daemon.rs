//! The daemon: `--check`, `--once`, and the loop. Each target is its own task with its
//! own connection (libpq conventions, `application_name=pgkill`, never a prompt), its
//! statement timeout and a reconnect backoff; a target that is down is reported
//! (stderr, `pgkill_target_up 0`) and never stops the others. SIGHUP re-reads the policy
//! (one that does not validate is rejected, logged and counted; the old one keeps
//! running) and reopens the audit file; SIGTERM/SIGINT let every target finish the pass
//! in flight, then the daemon exits 0 (audit lines are flushed as they are written).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pgkill_pg::connect::{self, ConnectArgs, NoPrompt, Settings, SystemEnv};
use pgkill_pg::sessions::{self, Capabilities};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::audit::{Audit, Origin};
use crate::leader;
use crate::metrics::{Metrics, ResultLabels};
use crate::pass::{self, Context, Report};
use crate::policy::Policy;
use crate::rules::TargetState;

/// The longest wait between two connection attempts to a target that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The first wait.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--policy FILE`.
    pub policy: PathBuf,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--once`.
    pub once: bool,
    /// `--check`.
    pub check: bool,
    /// `--metrics ADDR`, checked.
    pub metrics: Option<std::net::SocketAddr>,
    /// `--audit FILE`.
    pub audit: Option<PathBuf>,
    /// The server of the command line (`[CONN]`), watched when the policy has no
    /// `[[target]]`.
    pub default_target: ConnectArgs,
    /// `--statement-timeout`.
    pub statement_timeout: Duration,
}

/// A target ready to connect to.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    /// What it was made from (its conninfo; empty for the command line's server): a
    /// reload restarts a target whose conninfo changed.
    source: String,
    settings: Settings,
}

fn say(text: &str) {
    eprintln!("pgkill watch: {}", pgkill_core::printable(text));
}

fn resolve(args: &ConnectArgs, limit: Duration) -> Result<Settings, String> {
    let mut settings = connect::resolve(args, &SystemEnv).map_err(|e| e.to_string())?;
    // As the CLI does: the time limit is a startup option, in force from the first
    // statement and on every reconnect.
    let option = format!("-c statement_timeout={}", pgkill_pg::exec::millis(limit));
    settings.options = Some(match settings.options.take() {
        Some(o) if !o.trim().is_empty() => format!("{o} {option}"),
        _ => option,
    });
    for w in &settings.warnings {
        say(&format!("warning: {w}"));
    }
    Ok(settings)
}

fn targets(policy: &Policy, opts: &Options) -> Result<Vec<Target>, Vec<String>> {
    if policy.targets.is_empty() {
        let settings = resolve(&opts.default_target, opts.statement_timeout)
            .map_err(|e| vec![format!("the server of the command line: {e}")])?;
        let name = match &settings.host {
            connect::Host::Tcp(h) => format!("{h}:{}", settings.port),
            connect::Host::Socket(d) => format!("{}:{}", d.display(), settings.port),
        };
        return Ok(vec![Target {
            name,
            source: String::new(),
            settings,
        }]);
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for t in &policy.targets {
        let args = ConnectArgs {
            conninfo: Some(t.conninfo.clone()),
            ..ConnectArgs::default()
        };
        match resolve(&args, opts.statement_timeout) {
            Ok(settings) => out.push(Target {
                name: t.name.clone(),
                source: t.conninfo.clone(),
                settings,
            }),
            Err(e) => problems.push(format!("target {:?}: {e}", t.name)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

async fn open(target: &Target) -> anyhow::Result<(Client, Capabilities)> {
    let (client, _task) = connect::connect(&target.settings, &NoPrompt).await?;
    let caps = sessions::capabilities(&client).await?;
    Ok((client, caps))
}

/// What the role may do, as a problem when it cannot do the job.
fn privilege_problem(caps: &Capabilities) -> Option<String> {
    let c = &caps.caller;
    if c.superuser {
        return None;
    }
    let mut missing = Vec::new();
    if !c.signal_backend {
        missing.push("pg_signal_backend (to signal other roles' sessions)");
    }
    if !caps.read_all_stats {
        missing.push("pg_read_all_stats (to see other roles' states, ages and queries)");
    }
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "role {} is not a superuser and lacks {}: GRANT {} TO {}",
            c.user,
            missing.join(" and "),
            if c.signal_backend {
                "pg_read_all_stats"
            } else if caps.read_all_stats {
                "pg_signal_backend"
            } else {
                "pg_signal_backend, pg_read_all_stats"
            },
            pgkill_core::quote_ident(&c.user).unwrap_or_else(|_| c.user.clone())
        ))
    }
}

/// Runs `pgkill watch` and returns the exit code.
pub async fn run(opts: Options) -> anyhow::Result<i32> {
    let policy = match Policy::load(&opts.policy) {
        Ok(p) => p,
        Err(e) => {
            for p in &e.problems {
                say(p);
            }
            return Ok(2);
        }
    };
    let targets = match targets(&policy, &opts) {
        Ok(t) => t,
        Err(problems) => {
            for p in &problems {
                say(p);
            }
            return Ok(2);
        }
    };
    if opts.check {
        return Ok(check(&policy, &targets).await);
    }
    let audit = match Audit::open(opts.audit.as_deref()) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            say(&format!("--audit: {e}"));
            return Ok(2);
        }
    };
    let metrics = Arc::new(Metrics::new());
    let origin = Arc::new(Origin::here());
    if opts.once {
        return Ok(once(&policy, &targets, &opts, &audit, &metrics, &origin).await);
    }
    daemon(policy, targets, opts, audit, metrics, origin).await
}

async fn check(policy: &Policy, targets: &[Target]) -> i32 {
    let mut problems = Vec::new();
    let checks = targets.iter().map(|t| async move { (t, open(t).await) });
    for (t, result) in join_all(checks).await {
        match result {
            Ok((_client, caps)) => {
                let role = if caps.caller.superuser {
                    "superuser".to_owned()
                } else {
                    format!(
                        "pg_signal_backend: {}, pg_read_all_stats: {}",
                        caps.caller.signal_backend, caps.read_all_stats
                    )
                };
                println!(
                    "target {:?}: connected to PostgreSQL {} as {} ({role}){}",
                    pgkill_core::printable(&t.name),
                    caps.version,
                    pgkill_core::printable(&caps.caller.user),
                    if caps.in_recovery { ", a standby" } else { "" }
                );
                if let Some(p) = privilege_problem(&caps) {
                    problems.push(format!("target {:?}: {p}", t.name));
                }
            }
            Err(e) => problems.push(format!("target {:?}: cannot connect: {e:#}", t.name)),
        }
    }
    println!(
        "policy {:?}: {} rule(s), {} target(s), interval {}, leader lock key {}",
        pgkill_core::printable(&policy.name),
        policy.rules.len(),
        targets.len(),
        pgkill_core::format_duration(policy.interval),
        leader::key(&policy.name)
    );
    for p in &problems {
        say(p);
    }
    if problems.is_empty() {
        println!("policy OK");
        0
    } else {
        2
    }
}

async fn once(
    policy: &Policy,
    targets: &[Target],
    opts: &Options,
    audit: &Audit,
    metrics: &Metrics,
    origin: &Origin,
) -> i32 {
    let runs = targets.iter().map(|t| async move {
        let (client, mut caps) = open(t).await?;
        caps.own_pids = sessions::own_pids();
        let mut state = TargetState::default();
        let cx = Context {
            target: &t.name,
            dry_run: opts.dry_run,
            audit,
            metrics,
            origin,
        };
        pass::evaluate(&client, &caps, policy, &mut state, cx).await
    });
    let mut total = Report::default();
    let mut errors = 0;
    let results = join_all(runs).await;
    let n = results.len();
    for (t, r) in targets.iter().zip(results) {
        match r {
            Ok(report) => total.add(report),
            Err(e) => {
                errors += 1;
                say(&format!("target {:?}: {e:#}", t.name));
            }
        }
    }
    match (errors, total.exit_code()) {
        (0, code) => code,
        (e, _) if e == n => 2,
        _ => 3,
    }
}

/// What every target task shares.
struct Shared {
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    origin: Arc<Origin>,
    dry_run: bool,
}

async fn daemon(
    policy: Policy,
    targets: Vec<Target>,
    opts: Options,
    audit: Arc<Audit>,
    metrics: Arc<Metrics>,
    origin: Arc<Origin>,
) -> anyhow::Result<i32> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = match opts.metrics {
        Some(addr) => {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    say(&format!("--metrics {addr}: cannot listen: {e}"));
                    return Ok(2);
                }
            };
            if !addr.ip().is_loopback() {
                say(&format!(
                    "warning: metrics listen on {addr}, beyond this machine (as --metrics asked)"
                ));
            }
            say(&format!(
                "metrics on http://{}/metrics",
                listener.local_addr().unwrap_or(addr)
            ));
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
            )))
        }
        None => None,
    };
    say(&format!(
        "watching {} target(s) with policy {:?} ({} rule(s), every {}, leader lock key {}){}",
        targets.len(),
        policy.name,
        policy.rules.len(),
        pgkill_core::format_duration(policy.interval),
        leader::key(&policy.name),
        if opts.dry_run { ", dry run" } else { "" }
    ));
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy));
    let shared = Arc::new(Shared {
        audit: audit.clone(),
        metrics: metrics.clone(),
        origin,
        dry_run: opts.dry_run,
    });
    let start = |t: Target| {
        let (stop, stop_rx) = watch::channel(false);
        let name = t.name.clone();
        let source = t.source.clone();
        let handle = tokio::spawn(watch_target(t, shared.clone(), policy_rx.clone(), stop_rx));
        Running {
            name,
            source,
            stop,
            handle,
        }
    };
    let mut running: Vec<Running> = targets.into_iter().map(start).collect();
    let mut stopping: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let Some(new_targets) = reload(&opts, &policy_tx, &audit, &metrics) else {
                    continue;
                };
                // Targets that went or changed stop (after the pass in flight); new ones start.
                let (keep, gone): (Vec<Running>, Vec<Running>) = running
                    .into_iter()
                    .partition(|r| new_targets.iter().any(|t| t.name == r.name && t.source == r.source));
                for r in gone {
                    say(&format!("SIGHUP: target {:?} is no longer watched", r.name));
                    let _ = r.stop.send(true);
                    stopping.push(r.handle);
                }
                running = keep;
                for t in new_targets {
                    if !running.iter().any(|r| r.name == t.name && r.source == t.source) {
                        say(&format!("SIGHUP: watching target {:?}", t.name));
                        running.push(start(t));
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    say("stopping: finishing the actions in flight");
    for r in &running {
        let _ = r.stop.send(true);
    }
    for h in running.into_iter().map(|r| r.handle).chain(stopping) {
        let _ = h.await;
    }
    if let Some(s) = server {
        s.abort();
    }
    say("stopped");
    Ok(0)
}

/// A target's task and how to stop it.
struct Running {
    name: String,
    source: String,
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

/// SIGHUP: reopens the audit file and re-reads the policy. A policy that validates (and
/// whose targets resolve) replaces the running one; its targets are returned. Otherwise
/// the old one stays, and `None`.
fn reload(
    opts: &Options,
    policy_tx: &watch::Sender<Arc<Policy>>,
    audit: &Audit,
    metrics: &Metrics,
) -> Option<Vec<Target>> {
    if let Err(e) = audit.reopen() {
        say(&format!("SIGHUP: cannot reopen the audit log: {e}"));
    }
    let count = |result: &str| {
        metrics
            .reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    };
    let loaded = Policy::load(&opts.policy)
        .map_err(|e| e.problems)
        .and_then(|new| targets(&new, opts).map(|t| (new, t)));
    match loaded {
        Ok((new, new_targets)) => {
            let old = policy_tx.borrow().clone();
            if new.name != old.name {
                say("SIGHUP: the policy name changed: the leader lock keeps the old key until the daemon restarts");
            }
            say(&format!(
                "SIGHUP: policy reloaded ({} rule(s), {} target(s), every {})",
                new.rules.len(),
                new_targets.len(),
                pgkill_core::format_duration(new.interval)
            ));
            let _ = policy_tx.send(Arc::new(new));
            count("ok");
            Some(new_targets)
        }
        Err(problems) => {
            say("SIGHUP: the policy was rejected, the previous one keeps running:");
            for p in &problems {
                say(p);
            }
            count("error");
            None
        }
    }
}

/// Waits `d`, or less if asked to stop (true) or the policy changes.
async fn pause(
    d: Duration,
    stop: &mut watch::Receiver<bool>,
    policy: &mut watch::Receiver<Arc<Policy>>,
) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
        _ = policy.changed() => *stop.borrow(),
    }
}

async fn watch_target(
    target: Target,
    shared: Arc<Shared>,
    mut policy_rx: watch::Receiver<Arc<Policy>>,
    mut stop: watch::Receiver<bool>,
) {
    let labels = Metrics::target(&target.name);
    let m = &shared.metrics;
    let mut state = TargetState::default();
    let mut backoff = FIRST_BACKOFF;
    let key = leader::key(&policy_rx.borrow().name);
    'connect: while !*stop.borrow() {
        let opened = tokio::select! {
            r = open(&target) => r,
            _ = stop.changed() => break,
        };
        let (client, mut caps) = match opened {
            Ok(c) => c,
            Err(e) => {
                m.target_up.get_or_create(&labels).set(0);
                m.leader.get_or_create(&labels).set(0);
                m.evaluation_errors.get_or_create(&labels).inc();
                say(&format!(
                    "target {:?}: cannot connect (next try in {}): {e:#}",
                    target.name,
                    pgkill_core::format_duration(backoff)
                ));
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if pause(wait, &mut stop, &mut policy_rx).await {
                    break;
                }
                continue;
            }
        };
        backoff = FIRST_BACKOFF;
        m.target_up.get_or_create(&labels).set(1);
        say(&format!(
            "target {:?}: connected to PostgreSQL {} as {}",
            target.name, caps.version, caps.caller.user
        ));
        if let Some(p) = privilege_problem(&caps) {
            say(&format!("target {:?}: warning: {p}", target.name));
        }
        let mut leading = false;
        loop {
            let policy = policy_rx.borrow_and_update().clone();
            let began = Instant::now();
            let result: anyhow::Result<()> = async {
                if !leading {
                    leading = leader::try_lead(&client, key).await?;
                    m.leader.get_or_create(&labels).set(i64::from(leading));
                    if leading {
                        say(&format!("target {:?}: leading (lock {key})", target.name));
                    }
                }
                caps.own_pids = sessions::own_pids();
                let cx = Context {
                    target: &target.name,
                    dry_run: shared.dry_run,
                    audit: &shared.audit,
                    metrics: m,
                    origin: &shared.origin,
                };
                if leading {
                    pass::evaluate(&client, &caps, &policy, &mut state, cx).await?;
                } else {
                    // Standing by: the same evaluation (one statement) for the session
                    // gauges, acting on nothing; decisions are the leader's.
                    pass::stand_by(&client, &caps, &policy, cx).await?;
                }
                m.evaluation_seconds
                    .get_or_create(&labels)
                    .observe(began.elapsed().as_secs_f64());
                Ok(())
            }
            .await;
            if let Err(e) = result {
                m.evaluation_errors.get_or_create(&labels).inc();
                say(&format!(
                    "target {:?}: evaluation failed: {e:#}",
                    target.name
                ));
                if client.is_closed() {
                    m.target_up.get_or_create(&labels).set(0);
                    m.leader.get_or_create(&labels).set(0);
                    continue 'connect;
                }
            }
            let wait = policy.interval.saturating_sub(began.elapsed());
            if pause(wait, &mut stop, &mut policy_rx).await {
                break 'connect;
            }
        }
    }
    m.target_up.get_or_create(&labels).set(0);
    m.leader.get_or_create(&labels).set(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_problems_say_what_to_grant() {
        let caps = |superuser, signal_backend, read_all_stats| Capabilities {
            version: pgkill_core::ServerVersion::from_num(150000).unwrap(),
            caller: pgkill_core::plan::Caller {
                user: "watcher".into(),
                superuser,
                signal_backend,
            },
            read_all_stats,
            max_name_bytes: 63,
            in_recovery: false,
            own_pids: vec![],
        };
        assert_eq!(privilege_problem(&caps(true, false, false)), None);
        assert_eq!(privilege_problem(&caps(false, true, true)), None);
        let p = privilege_problem(&caps(false, false, true)).unwrap();
        assert!(p.contains("GRANT pg_signal_backend TO \"watcher\""), "{p}");
        let p = privilege_problem(&caps(false, false, false)).unwrap();
        assert!(
            p.contains("GRANT pg_signal_backend, pg_read_all_stats"),
            "{p}"
        );
    }
}

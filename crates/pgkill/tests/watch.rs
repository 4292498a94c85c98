//! `pgkill watch` through the real binary on every PostgreSQL version: rules end the
//! right sessions (the victims see 57P01) and leave protected and excluded ones, dry runs
//! change nothing, rate limits skip, cancel-then-terminate escalates, a `blocking_for`
//! rule ends the lock root and its waiter proceeds, `--check` names the line of a
//! mistake, audit lines carry their fields; and the daemon as a process: SIGHUP with a
//! valid and a broken policy, SIGTERM, `/metrics` over HTTP, two watchers of which
//! exactly one acts.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::sim::Statement;
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        an_idle_in_transaction_rule_ends_the_right_session,
        a_dry_run_changes_nothing_and_audits,
        the_rate_limit_skips_and_audits,
        cancel_then_terminate_escalates,
        a_blocking_for_rule_ends_the_lock_root,
        check_names_the_line_and_the_target_problems,
        the_daemon_reloads_on_sighup_and_stops_on_sigterm,
        two_watchers_exactly_one_acts,
        a_target_down_never_stops_the_others_and_a_lost_connection_comes_back,
        sighup_changes_the_targets,
        a_session_belongs_to_the_first_rule_that_matches_it,
    ]);
}

fn write_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn text(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("not UTF-8: {}", p.display()))
}

/// Every audit line, parsed (a line that is not JSON fails the test).
fn audit_lines(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("audit line {l:?}")))
        .collect()
}

fn with(lines: &[Value], key: &str, value: &str) -> Vec<Value> {
    lines.iter().filter(|l| l[key] == value).cloned().collect()
}

/// The fields every decision line carries.
fn check_fields(line: &Value) -> Result<()> {
    for k in [
        "time",
        "host",
        "daemon_pid",
        "policy",
        "target",
        "rule",
        "action",
        "decision",
        "detail",
        "dry_run",
        "pid",
        "backend_start",
        "user",
        "database",
        "application",
        "client",
        "state",
        "backend_age_s",
        "wait",
        "query",
    ] {
        ensure!(line.get(k).is_some(), "audit line without {k}: {line}");
    }
    ensure!(
        line["pid"].is_i64() && line["backend_age_s"].is_f64(),
        "{line}"
    );
    Ok(())
}

/// `pgkill watch ARGS…` as the sandbox's superuser, to the end.
fn watch(sb: &Sandbox, args: &[&str]) -> Result<(i32, String, String)> {
    let mut all = vec!["watch"];
    all.extend_from_slice(args);
    support::run(support::pgkill(sb, roles::ADMIN, &all))
}

/// `pgkill watch --policy POLICY --once --audit AUDIT`: exit code, stdout, stderr.
fn once(sb: &Sandbox, policy: &Path, audit: &Path) -> Result<(i32, String, String)> {
    watch(
        sb,
        &["--policy", text(policy)?, "--once", "--audit", text(audit)?],
    )
}

/// The SQLSTATE `s` saw when it ended (within 10 s), if it did.
async fn ended_with(s: &sim::Session) -> Option<String> {
    s.wait_ended(Duration::from_secs(10))
        .await
        .and_then(|e| e.sqlstate)
}

/// A `[[target]]` entry for the sandbox, logging in as `role` with its password file.
fn target_entry(sb: &Sandbox, name: &str, role: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nconninfo = \"host={} port={} user={role} passfile={}\"\n",
        sb.host(),
        sb.port(),
        sb.passfile().display()
    )
}

fn config(sb: &Sandbox, db: &str, role: &str, app: &str) -> tokio_postgres::Config {
    let mut c = sb.config(db, role);
    c.application_name(app);
    c
}

async fn eventually(timeout: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<bool> {
    let began = Instant::now();
    loop {
        if f()? {
            return Ok(true);
        }
        if began.elapsed() > timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pgkill watch` running as a daemon, its stderr in a file.
struct Daemon {
    child: Child,
    stderr: PathBuf,
}

impl Daemon {
    fn start(sb: &Sandbox, dir: &Path, name: &str, args: &[&str]) -> Result<Daemon> {
        let mut all = vec!["watch"];
        all.extend_from_slice(args);
        let mut cmd = support::pgkill(sb, roles::ADMIN, &all);
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?);
        Ok(Daemon {
            child: cmd.spawn()?,
            stderr,
        })
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// SIGTERM, then the exit code (within 20 s).
    async fn stop(&mut self) -> Result<i32> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return status
                    .code()
                    .ok_or_else(|| anyhow!("died by a signal: {status}"));
            }
            ensure!(
                began.elapsed() < Duration::from_secs(20),
                "did not stop on SIGTERM:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `GET path` over plain HTTP/1.1: status line and body.
fn http_get(port: u16, path: &str) -> Result<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response: {resp:?}"))?;
    Ok((
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    ))
}

/// The value of the metric line that starts with `prefix` (0 when absent).
fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const IDLE_IN_TRANSACTION: &str = r#"
[protect]
apps = ["psql"]
[[rule]]
name = "idle-in-transaction"
match = { db = "app", state = ["idle-in-transaction"], exclude_app = ["batch-*"] }
action = "terminate"
"#;

async fn an_idle_in_transaction_rule_ends_the_right_session(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let victim = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    let protected =
        sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "psql"), None).await?;
    let excluded =
        sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "batch-7"), None).await?;
    let idle = sim::idle(&config(&sb, "app", roles::PLAIN, "web")).await?;
    let dir = tempfile::tempdir()?;
    let policy = write_file(dir.path(), "policy.toml", IDLE_IN_TRANSACTION)?;
    let audit = dir.path().join("audit.log");
    let (code, out, err) = once(&sb, &policy, &audit)?;
    ensure!(code == 0, "exit {code}:\n{out}\n{err}");
    ensure!(
        ended_with(&victim).await.as_deref() == Some("57P01"),
        "the idle-in-transaction session survived"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (s, why) in [
        (&protected, "[protect] apps"),
        (&excluded, "exclude_app"),
        (&idle, "an idle session"),
    ] {
        ensure!(s.is_connected(), "{why} was ended: {:?}", s.ended());
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&audit)?.permissions().mode();
    ensure!(mode & 0o777 == 0o600, "audit log mode {mode:o}");
    let lines = audit_lines(&audit)?;
    ensure!(lines.len() == 1, "{lines:?}");
    let l = &lines[0];
    check_fields(l)?;
    ensure!(
        l["decision"] == "acted"
            && l["outcome"] == "terminated"
            && l["action"] == "terminate"
            && l["rule"] == "idle-in-transaction"
            && l["pid"] == victim.pid()
            && l["application"] == "web"
            && l["database"] == "app"
            && l["state"] == "idle in transaction"
            && l["dry_run"] == false,
        "{l}"
    );
    // Nothing matches any more: exit 1, as `kill`.
    let (code, _, err) = once(&sb, &policy, &audit)?;
    ensure!(code == 1, "exit {code}: {err}");
    Ok(())
}

async fn a_dry_run_changes_nothing_and_audits(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let victim = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    let dir = tempfile::tempdir()?;
    let policy = write_file(dir.path(), "policy.toml", IDLE_IN_TRANSACTION)?;
    // Without --audit the lines go to stdout.
    let (code, out, err) = watch(&sb, &["--policy", text(&policy)?, "--once", "--dry-run"])?;
    ensure!(code == 0, "exit {code}:\n{out}\n{err}");
    let lines: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    ensure!(lines.len() == 1, "{out}");
    check_fields(&lines[0])?;
    ensure!(
        lines[0]["decision"] == "dry_run"
            && lines[0]["dry_run"] == true
            && lines[0]["pid"] == victim.pid()
            && lines[0]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("would terminate")),
        "{out}"
    );
    // A rule's own dry_run likewise.
    let rule_dry = IDLE_IN_TRANSACTION.replace(
        "action = \"terminate\"",
        "action = \"terminate\"\ndry_run = true",
    );
    let policy = write_file(dir.path(), "rule-dry.toml", &rule_dry)?;
    let (code, out, err) = watch(&sb, &["--policy", text(&policy)?, "--once"])?;
    ensure!(
        code == 0 && out.contains("\"dry_run\""),
        "exit {code}:\n{out}\n{err}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        victim.is_connected(),
        "a dry run ended {:?}",
        victim.ended()
    );
    Ok(())
}

async fn the_rate_limit_skips_and_audits(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let mut victims = Vec::new();
    for _ in 0..3 {
        victims
            .push(sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?);
    }
    // A superuser's session: protected by default, refused and audited.
    let superuser =
        sim::idle_in_transaction(&config(&sb, "app", roles::SUPERUSER, "web"), None).await?;
    let dir = tempfile::tempdir()?;
    let policy = write_file(
        dir.path(),
        "policy.toml",
        &IDLE_IN_TRANSACTION.replace(
            "action = \"terminate\"",
            "action = \"terminate\"\nmax_per_minute = 1",
        ),
    )?;
    let audit = dir.path().join("audit.log");
    let (code, out, err) = once(&sb, &policy, &audit)?;
    // Some matched sessions were not acted on: exit 3, as `kill` with refusals.
    ensure!(code == 3, "exit {code}:\n{out}\n{err}");
    let lines = audit_lines(&audit)?;
    for l in &lines {
        check_fields(l)?;
    }
    let acted = with(&lines, "decision", "acted");
    let limited = with(&lines, "decision", "rate_limited");
    let refused = with(&lines, "decision", "refused");
    ensure!(
        acted.len() == 1 && limited.len() == 2 && refused.len() == 1,
        "{lines:#?}"
    );
    ensure!(
        limited[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("max_per_minute = 1")),
        "{lines:#?}"
    );
    ensure!(
        refused[0]["pid"] == superuser.pid() && refused[0]["outcome"] == "not_permitted",
        "{lines:#?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive = victims.iter().filter(|v| v.is_connected()).count();
    ensure!(alive == 2, "{alive} of 3 left, expected 2");
    ensure!(
        superuser.is_connected(),
        "the superuser's session was ended"
    );
    Ok(())
}

async fn cancel_then_terminate_escalates(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let dir = tempfile::tempdir()?;
    // Cancelling an idle transaction does not end it: the rule escalates.
    let policy = write_file(
        dir.path(),
        "policy.toml",
        r#"interval = "200ms"
[[rule]]
name = "stuck"
match = { db = "app", state = "idle-in-transaction" }
action = "cancel-then-terminate"
escalate_after = "1s"
"#,
    )?;
    let audit = dir.path().join("audit.log");
    let victim = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    let mut daemon = Daemon::start(
        &sb,
        dir.path(),
        "watch",
        &["--policy", text(&policy)?, "--audit", text(&audit)?],
    )?;
    let ended = victim.wait_ended(Duration::from_secs(20)).await;
    ensure!(
        ended.and_then(|e| e.sqlstate).as_deref() == Some("57P01"),
        "not terminated:\n{}",
        daemon.stderr()
    );
    let code = daemon.stop().await?;
    ensure!(code == 0, "exit {code}:\n{}", daemon.stderr());
    let lines = audit_lines(&audit)?;
    let mine: Vec<&Value> = lines.iter().filter(|l| l["pid"] == victim.pid()).collect();
    ensure!(mine.len() == 2, "{lines:#?}");
    ensure!(
        mine[0]["action"] == "cancel" && mine[0]["outcome"] == "cancelled",
        "{lines:#?}"
    );
    ensure!(
        mine[1]["action"] == "terminate"
            && mine[1]["outcome"] == "terminated"
            && mine[1]["escalation"] == true,
        "{lines:#?}"
    );
    Ok(())
}

async fn a_blocking_for_rule_ends_the_lock_root(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", Some(roles::PLAIN)).await?;
    let chain = sim::lock_chain(&sb.config("app", roles::PLAIN), "t", 1).await?;
    let dir = tempfile::tempdir()?;
    let policy = write_file(
        dir.path(),
        "policy.toml",
        r#"[[rule]]
name = "lock-root"
match = { db = "app", blocking_for = "300ms" }
action = "terminate"
"#,
    )?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let audit = dir.path().join("audit.log");
    let (code, out, err) = once(&sb, &policy, &audit)?;
    ensure!(code == 0, "exit {code}:\n{out}\n{err}");
    ensure!(
        ended_with(&chain.holder).await.as_deref() == Some("57P01"),
        "the lock root survived"
    );
    let waiter = &chain.waiters[0];
    let done = waiter.wait_statement(Duration::from_secs(10)).await;
    ensure!(done == Statement::Completed, "the waiter: {done:?}");
    ensure!(waiter.is_connected(), "the waiter was ended");
    let lines = audit_lines(&audit)?;
    ensure!(
        lines.len() == 1 && lines[0]["pid"] == chain.holder.pid(),
        "{lines:#?}"
    );
    Ok(())
}

async fn check_names_the_line_and_the_target_problems(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let dir = tempfile::tempdir()?;
    let good = write_file(dir.path(), "good.toml", IDLE_IN_TRANSACTION)?;
    let (code, out, err) = watch(&sb, &["--policy", text(&good)?, "--check"])?;
    ensure!(
        code == 0 && out.contains("policy OK") && out.contains("superuser"),
        "exit {code}:\n{out}\n{err}"
    );
    // A typo on line 6.
    let broken = write_file(
        dir.path(),
        "broken.toml",
        "interval = \"1s\"\n[[rule]]\nname = \"x\"\naction = \"terminate\"\nmatch = { state = \"idle\" }\nmax_per_minut = 3\n",
    )?;
    let (code, out, err) = watch(&sb, &["--policy", text(&broken)?, "--check"])?;
    ensure!(
        code == 2 && err.contains("line 6") && err.contains("max_per_minut"),
        "exit {code}:\n{out}\n{err}"
    );
    ensure!(!err.contains("panicked"), "{err}");
    // Several mistakes at once: every one listed.
    let broken = write_file(
        dir.path(),
        "broken2.toml",
        "[[rule]]\nname = \"a\"\naction = \"cancel-then-terminate\"\nmatch = { state = \"idle\" }\n[[rule]]\nname = \"a\"\naction = \"cancel\"\nmatch = { exclude_db = \"x\" }\n",
    )?;
    let (code, _, err) = watch(&sb, &["--policy", text(&broken)?, "--check"])?;
    ensure!(
        code == 2
            && err
                .contains("line 2: rule \"a\": action cancel-then-terminate needs escalate_after")
            && err.contains("line 6: rule \"a\": another rule has this name")
            && err.contains("selects every client session"),
        "exit {code}:\n{err}"
    );
    // A password in the policy is refused, and never echoed.
    let secret = write_file(
        dir.path(),
        "secret.toml",
        &format!("{IDLE_IN_TRANSACTION}[[target]]\nname = \"s\"\nconninfo = \"host=127.0.0.1 password=hunter2\"\n"),
    )?;
    let (code, out, err) = watch(&sb, &["--policy", text(&secret)?, "--check"])?;
    ensure!(
        code == 2 && err.contains("holds a password") && !format!("{out}{err}").contains("hunter2"),
        "exit {code}:\n{out}\n{err}"
    );
    // Targets: one that works, one with a plain role lacking privileges, one down.
    let down = free_port()?;
    let targets = format!(
        "{IDLE_IN_TRANSACTION}{}{}[[target]]\nname = \"down\"\nconninfo = \"host=127.0.0.1 port={down} user=postgres connect_timeout=2\"\n",
        target_entry(&sb, "ok", roles::ADMIN),
        target_entry(&sb, "weak", roles::PLAIN),
    );
    let targets = write_file(dir.path(), "targets.toml", &targets)?;
    let (code, out, err) = watch(&sb, &["--policy", text(&targets)?, "--check"])?;
    ensure!(
        code == 2
            && out.contains("target \"ok\": connected")
            && err.contains("target \"weak\"")
            && err.contains("GRANT pg_signal_backend")
            && err.contains("target \"down\": cannot connect"),
        "exit {code}:\n{out}\n{err}"
    );
    Ok(())
}

async fn the_daemon_reloads_on_sighup_and_stops_on_sigterm(pg: Installation) -> Result<()> {
    use nix::sys::signal::Signal::SIGHUP;
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let dir = tempfile::tempdir()?;
    let rule = |app: &str| {
        format!(
            "interval = \"200ms\"\n[[rule]]\nname = \"end-{app}\"\nmatch = {{ db = \"app\", app = \"{app}\", state = \"idle-in-transaction\" }}\naction = \"terminate\"\n"
        )
    };
    let policy = write_file(dir.path(), "policy.toml", &rule("first"))?;
    let audit = dir.path().join("audit.log");
    let port = free_port()?;
    let mut daemon = Daemon::start(
        &sb,
        dir.path(),
        "watch",
        &[
            "--policy",
            text(&policy)?,
            "--audit",
            text(&audit)?,
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ],
    )?;
    let scrape = || -> Result<String> {
        let (status, body) = http_get(port, "/metrics")?;
        ensure!(status.contains("200"), "{status}");
        Ok(body)
    };
    ensure!(
        eventually(Duration::from_secs(10), || Ok(
            http_get(port, "/healthz").is_ok_and(|(s, b)| s.contains("200") && b.contains("ok"))
        ))
        .await?,
        "no /healthz:\n{}",
        daemon.stderr()
    );
    let first = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "first"), None).await?;
    let second =
        sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "second"), None).await?;
    ensure!(
        first
            .wait_ended(Duration::from_secs(10))
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01"),
        "first survived:\n{}",
        daemon.stderr()
    );
    let terminated = "pgkill_actions_total{target=";
    // The counter moves once the termination is verified, right after the victim sees it.
    ensure!(
        eventually(Duration::from_secs(10), || Ok(metric(
            &scrape()?,
            terminated
        ) >= 1.0))
        .await?,
        "{}",
        scrape()?
    );
    let body = scrape()?;
    ensure!(
        metric(&body, terminated) >= 1.0
            && body.contains("outcome=\"terminated\"")
            && body.contains("pgkill_target_up{target=")
            && metric(&body, "pgkill_leader{") == 1.0
            && body.contains("pgkill_evaluation_duration_seconds_count")
            && body.contains("pgkill_build_info"),
        "{body}"
    );
    ensure!(!body.contains("pid=") && !body.contains("query="), "{body}");
    // A broken policy is rejected; the old one keeps running.
    std::fs::write(&policy, "[[rule]]\nname = \"x\"\nbogus = 1\n")?;
    daemon.signal(SIGHUP)?;
    ensure!(
        eventually(Duration::from_secs(10), || Ok(daemon
            .stderr()
            .contains("rejected")))
        .await?,
        "{}",
        daemon.stderr()
    );
    let again = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "first"), None).await?;
    ensure!(
        again.wait_ended(Duration::from_secs(10)).await.is_some(),
        "the old policy stopped after a broken reload:\n{}",
        daemon.stderr()
    );
    ensure!(second.is_connected(), "second ended under the first policy");
    let body = scrape()?;
    ensure!(
        metric(&body, "pgkill_policy_reloads_total{result=\"error\"}") == 1.0,
        "{body}"
    );
    // A valid one applies.
    std::fs::write(&policy, rule("second"))?;
    daemon.signal(SIGHUP)?;
    ensure!(
        second
            .wait_ended(Duration::from_secs(10))
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01"),
        "the reloaded policy did not act:\n{}",
        daemon.stderr()
    );
    ensure!(
        eventually(Duration::from_secs(10), || {
            let body = scrape()?;
            Ok(
                metric(&body, "pgkill_policy_reloads_total{result=\"ok\"}") == 1.0
                    && metric(&body, terminated) >= 3.0,
            )
        })
        .await?,
        "{}",
        scrape()?
    );
    let code = daemon.stop().await?;
    ensure!(code == 0, "exit {code}:\n{}", daemon.stderr());
    let lines = audit_lines(&audit)?;
    let acted = with(&lines, "decision", "acted");
    ensure!(acted.len() == 3, "{lines:#?}");
    for l in &lines {
        check_fields(l)?;
    }
    ensure!(!daemon.stderr().contains("panicked"), "{}", daemon.stderr());
    Ok(())
}

async fn two_watchers_exactly_one_acts(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let dir = tempfile::tempdir()?;
    let policy = write_file(
        dir.path(),
        "policy.toml",
        &format!("name = \"ha\"\ninterval = \"1s\"\n{IDLE_IN_TRANSACTION}"),
    )?;
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut a = Daemon::start(
        &sb,
        dir.path(),
        "a",
        &["--policy", text(&policy)?, "--audit", text(&logs[0])?],
    )?;
    // The first to take the lock leads: give it the time to start.
    ensure!(
        eventually(Duration::from_secs(10), || Ok(a
            .stderr()
            .contains("leading")))
        .await?,
        "{}",
        a.stderr()
    );
    let mut b = Daemon::start(
        &sb,
        dir.path(),
        "b",
        &["--policy", text(&policy)?, "--audit", text(&logs[1])?],
    )?;
    ensure!(
        eventually(Duration::from_secs(10), || Ok(b
            .stderr()
            .contains("connected")))
        .await?,
        "{}",
        b.stderr()
    );
    let mut victims = Vec::new();
    for _ in 0..3 {
        victims
            .push(sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?);
    }
    for v in &victims {
        ensure!(
            v.wait_ended(Duration::from_secs(10)).await.is_some(),
            "not ended:\n{}\n{}",
            a.stderr(),
            b.stderr()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (la, lb) = (audit_lines(&logs[0])?, audit_lines(&logs[1])?);
    ensure!(
        with(&la, "decision", "acted").len() == 3 && lb.is_empty(),
        "a: {la:#?}\nb: {lb:#?}"
    );
    ensure!(!b.stderr().contains("leading"), "{}", b.stderr());
    // The leader dies (kill -9): the other takes over within 2 intervals of the
    // server's releasing the dead leader's lock.
    let admin = sb.admin("postgres").await?;
    let holder = |admin: tokio_postgres::Client| async move {
        let row = admin
            .query_one(
                "SELECT pg_catalog.max(pid) FROM pg_catalog.pg_locks
                  WHERE locktype = 'advisory' AND granted",
                &[],
            )
            .await?;
        Ok::<_, anyhow::Error>((admin, row.get::<_, Option<i32>>(0)))
    };
    let (admin, leader) = holder(admin).await?;
    let leader = leader.ok_or_else(|| anyhow!("nobody holds the leader lock"))?;
    a.child.kill()?;
    a.child.wait()?;
    let mut admin = admin;
    let released = loop {
        let (back, now) = holder(admin).await?;
        admin = back;
        if now != Some(leader) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    ensure!(
        eventually(Duration::from_secs(10), || Ok(b
            .stderr()
            .contains("leading")))
        .await?,
        "no hand-over:\n{}",
        b.stderr()
    );
    let took = released.elapsed();
    ensure!(
        took <= Duration::from_secs(2),
        "the standby took over {took:?} after the leader's lock was released (interval 1 s):\n{}",
        b.stderr()
    );
    let late = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    ensure!(
        late.wait_ended(Duration::from_secs(10)).await.is_some(),
        "{}",
        b.stderr()
    );
    let code = b.stop().await?;
    ensure!(code == 0, "exit {code}:\n{}", b.stderr());
    let lb = audit_lines(&logs[1])?;
    ensure!(lb.len() == 1 && lb[0]["pid"] == late.pid(), "b: {lb:#?}");
    Ok(())
}

async fn a_target_down_never_stops_the_others_and_a_lost_connection_comes_back(
    pg: Installation,
) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let dir = tempfile::tempdir()?;
    let down = free_port()?;
    let policy = write_file(
        dir.path(),
        "policy.toml",
        &format!(
            "interval = \"200ms\"\n{IDLE_IN_TRANSACTION}[[target]]\nname = \"down\"\nconninfo = \"host=127.0.0.1 port={down} user=postgres connect_timeout=1\"\n{}",
            target_entry(&sb, "up", roles::ADMIN),
        ),
    )?;
    let audit = dir.path().join("audit.log");
    let metrics = free_port()?;
    let mut daemon = Daemon::start(
        &sb,
        dir.path(),
        "watch",
        &[
            "--policy",
            text(&policy)?,
            "--audit",
            text(&audit)?,
            "--metrics",
            &metrics.to_string(),
        ],
    )?;
    let first = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    ensure!(
        ended_with(&first).await.as_deref() == Some("57P01"),
        "the target that is up was not served:\n{}",
        daemon.stderr()
    );
    let up = |body: &str, target: &str| {
        metric(body, &format!("pgkill_target_up{{target=\"{target}\"}}"))
    };
    ensure!(
        eventually(Duration::from_secs(10), || {
            let (_, body) = http_get(metrics, "/metrics")?;
            Ok(up(&body, "up") == 1.0
                && up(&body, "down") == 0.0
                && metric(&body, "pgkill_evaluation_errors_total{target=\"down\"}") >= 1.0)
        })
        .await?,
        "{}",
        http_get(metrics, "/metrics")?.1
    );
    ensure!(
        daemon.stderr().contains("target \"down\": cannot connect"),
        "{}",
        daemon.stderr()
    );
    // Its pass is over (the termination verified and audited) before its connection is
    // ended under it: otherwise that pass fails mid-way and is audited as `failed`.
    ensure!(
        eventually(Duration::from_secs(10), || Ok(with(
            &audit_lines(&audit)?,
            "decision",
            "acted"
        )
        .len()
            == 1))
        .await?,
        "{}",
        daemon.stderr()
    );
    // The daemon's connection is ended under it: it connects again and goes on.
    let admin = sb.admin("postgres").await?;
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE application_name = 'pgkill' AND pid <> pg_backend_pid()",
            &[],
        )
        .await?;
    ensure!(!ended.is_empty(), "no daemon connection to end");
    // Once it is back (a session created while its pass was failing could be signalled
    // by a statement whose answer never came: audited as `failed`, not `acted`).
    ensure!(
        eventually(Duration::from_secs(15), || Ok(daemon
            .stderr()
            .matches("target \"up\": leading")
            .count()
            >= 2))
        .await?,
        "{}",
        daemon.stderr()
    );
    let second = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    ensure!(
        second
            .wait_ended(Duration::from_secs(15))
            .await
            .and_then(|e| e.sqlstate)
            .as_deref()
            == Some("57P01"),
        "not served after losing its connection:\n{}",
        daemon.stderr()
    );
    let code = daemon.stop().await?;
    ensure!(code == 0, "exit {code}:\n{}", daemon.stderr());
    let acted = with(&audit_lines(&audit)?, "decision", "acted");
    ensure!(
        acted.len() == 2 && acted.iter().all(|l| l["target"] == "up"),
        "first {} second {}: {:?}\n{}",
        first.pid(),
        second.pid(),
        audit_lines(&audit)?
            .iter()
            .map(|l| format!("{} {} {}", l["pid"], l["decision"], l["detail"]))
            .collect::<Vec<_>>(),
        daemon.stderr()
    );
    Ok(())
}

async fn sighup_changes_the_targets(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let dir = tempfile::tempdir()?;
    let with_target = |name: &str| {
        format!(
            "interval = \"200ms\"\n{IDLE_IN_TRANSACTION}{}",
            target_entry(&sb, name, roles::ADMIN)
        )
    };
    let policy = write_file(dir.path(), "policy.toml", &with_target("one"))?;
    let audit = dir.path().join("audit.log");
    let mut daemon = Daemon::start(
        &sb,
        dir.path(),
        "watch",
        &["--policy", text(&policy)?, "--audit", text(&audit)?],
    )?;
    ensure!(
        eventually(Duration::from_secs(10), || Ok(daemon
            .stderr()
            .contains("target \"one\": leading")))
        .await?,
        "{}",
        daemon.stderr()
    );
    std::fs::write(&policy, with_target("two"))?;
    daemon.signal(nix::sys::signal::Signal::SIGHUP)?;
    ensure!(
        eventually(Duration::from_secs(10), || {
            let e = daemon.stderr();
            Ok(e.contains("target \"one\" is no longer watched")
                && e.contains("target \"two\": leading"))
        })
        .await?,
        "{}",
        daemon.stderr()
    );
    let victim = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web"), None).await?;
    ensure!(
        ended_with(&victim).await.as_deref() == Some("57P01"),
        "{}",
        daemon.stderr()
    );
    let code = daemon.stop().await?;
    ensure!(code == 0, "exit {code}:\n{}", daemon.stderr());
    let lines = audit_lines(&audit)?;
    ensure!(
        lines.len() == 1 && lines[0]["target"] == "two",
        "{lines:#?}"
    );
    Ok(())
}

async fn a_session_belongs_to_the_first_rule_that_matches_it(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let web = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "web-1"), None).await?;
    let api = sim::idle_in_transaction(&config(&sb, "app", roles::PLAIN, "api"), None).await?;
    let idle = sim::idle(&config(&sb, "app", roles::PLAIN, "web-2")).await?;
    let dir = tempfile::tempdir()?;
    // `web-1` matches both rules: the first, which only audits, takes it, so the second
    // never terminates it; `api` matches only the second.
    let policy = write_file(
        dir.path(),
        "policy.toml",
        r#"
[[rule]]
name = "web-first"
match = { app = ["web-*"], state = ["idle-in-transaction"] }
action = "terminate"
dry_run = true
[[rule]]
name = "any-idle-in-transaction"
match = { db = "app", state = ["idle-in-transaction"] }
action = "terminate"
"#,
    )?;
    let audit = dir.path().join("audit.log");
    let (code, out, err) = once(&sb, &policy, &audit)?;
    ensure!(code == 0, "exit {code}:\n{out}\n{err}");
    ensure!(
        ended_with(&api).await.as_deref() == Some("57P01"),
        "the second rule did not end api"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(web.is_connected(), "web-1 was ended: {:?}", web.ended());
    ensure!(idle.is_connected(), "an idle session was ended");
    let lines = audit_lines(&audit)?;
    ensure!(lines.len() == 2, "{lines:#?}");
    for l in &lines {
        check_fields(l)?;
    }
    let by_pid = |pid: i32| lines.iter().find(|l| l["pid"] == pid);
    let w = by_pid(web.pid()).ok_or_else(|| anyhow!("no line for web-1: {lines:#?}"))?;
    ensure!(
        w["rule"] == "web-first" && w["decision"] == "dry_run" && w["dry_run"] == true,
        "{w}"
    );
    let a = by_pid(api.pid()).ok_or_else(|| anyhow!("no line for api: {lines:#?}"))?;
    ensure!(
        a["rule"] == "any-idle-in-transaction" && a["outcome"] == "terminated",
        "{a}"
    );
    Ok(())
}

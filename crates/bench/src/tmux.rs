//! Running a terminal program (`pgkill top`, pg_activity) in its own detached tmux
//! server and measuring it, and reading what a role ran from `pg_stat_statements`.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a tool may take to quit after `q`.
const QUIT_LIMIT: Duration = Duration::from_secs(10);

/// Runs `command` in its own tmux server (a `width`x`height` pane) for `seconds`,
/// samples its CPU time (its process and descendants, plus the children it reaped) and
/// peak RSS (`VmHWM`, the largest of them) just before quitting it with `q`. Problems
/// that do not stop the run (an empty screen, a slow quit) go to `problems`.
pub fn run_in_tmux(
    name: &str,
    command: &str,
    (width, height): (u16, u16),
    seconds: u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<(Duration, u64)> {
    let socket = format!("pgkill-bench-{}-{name}", std::process::id());
    let tmux = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut cmd = Command::new("tmux");
        cmd.arg("-L").arg(&socket).args(args);
        without_pg_env(&mut cmd).output().context("running tmux")
    };
    let (w, h) = (width.to_string(), height.to_string());
    let out = tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-x",
        &w,
        "-y",
        &h,
        command,
        ";",
        // Keep the pane (and its last screen) when the tool exits early.
        "set-option",
        "-g",
        "remain-on-exit",
        "on",
    ])?;
    anyhow::ensure!(
        out.status.success(),
        "tmux new-session for {name} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let result = measure_pane(&tmux, name, seconds, problems);
    let _ = tmux(&["kill-server"]);
    result
}

/// `s` quoted for a POSIX shell (the command line tmux runs).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Removes every `PG*` variable from `cmd`'s environment: only the connection settings
/// given on its command line count.
pub fn without_pg_env(cmd: &mut Command) -> &mut Command {
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("PG") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// One statement a role ran, from `pg_stat_statements`.
#[derive(Debug, Clone)]
pub struct Statement {
    /// `calls`.
    pub calls: i64,
    /// `total_exec_time` (`total_time` on 12 and older), in milliseconds.
    pub ms: f64,
    /// The text, whitespace collapsed, cut to 100 characters.
    pub query: String,
    /// Whether it reads `pg_stat_activity`.
    pub on_activity: bool,
    /// Whether the whole text contains `marker` (see [`statements_of`]).
    pub marked: bool,
}

/// The statements `role` ran since the last `pg_stat_statements_reset()`, the most
/// expensive first; `marked` says which contain `marker`.
pub fn statements_of(
    rt: &tokio::runtime::Runtime,
    own: &tokio_postgres::Client,
    role: &str,
    marker: &str,
) -> anyhow::Result<Vec<Statement>> {
    let rows = rt
        .block_on(own.query(
            "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s \
             JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 ORDER BY 2 DESC",
            &[&role],
        ))
        .or_else(|_| {
            rt.block_on(own.query(
                "SELECT s.calls, s.total_time, s.query FROM pg_stat_statements s \
                 JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 ORDER BY 2 DESC",
                &[&role],
            ))
        })
        .context("reading pg_stat_statements")?;
    Ok(rows
        .iter()
        .map(|r| {
            let query: String = r.get(2);
            let short: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
            Statement {
                calls: r.get(0),
                ms: r.get(1),
                on_activity: query.contains("pg_stat_activity"),
                marked: !marker.is_empty() && query.contains(marker),
                query: short.chars().take(100).collect(),
            }
        })
        .collect())
}

type Tmux<'a> = dyn Fn(&[&str]) -> anyhow::Result<std::process::Output> + 'a;

/// Waits `seconds`, samples the tool's CPU time and peak RSS, then quits it.
fn measure_pane(
    tmux: &Tmux<'_>,
    name: &str,
    seconds: u64,
    problems: &mut Vec<String>,
) -> anyhow::Result<(Duration, u64)> {
    let out = tmux(&["list-panes", "-F", "#{pane_pid}"])?;
    let pane_pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("pane pid of {name}"))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let dead = tmux(&["list-panes", "-F", "#{pane_dead}"])?;
    let screen = tmux(&["capture-pane", "-p"])?;
    let screen = String::from_utf8_lossy(&screen.stdout).into_owned();
    anyhow::ensure!(
        String::from_utf8_lossy(&dead.stdout).trim() != "1",
        "{name} exited before the end of the run; its screen:\n{screen}"
    );
    // The tool: the pane's process, or its only child when the pane runs a shell.
    let tool = match comm(pane_pid).as_deref() {
        Some("sh" | "bash" | "dash") => descendants(pane_pid).first().copied().unwrap_or(pane_pid),
        _ => pane_pid,
    };
    let mut cpu_ticks = 0u64;
    let mut rss_kib = 0u64;
    for (i, pid) in std::iter::once(tool).chain(descendants(tool)).enumerate() {
        let (own_ticks, reaped_ticks) = cpu_ticks_of(pid)?;
        cpu_ticks += own_ticks + if i == 0 { reaped_ticks } else { 0 };
        rss_kib = rss_kib.max(hwm_kib(pid)?);
    }
    if screen.trim().is_empty() {
        problems.push(format!("{name}: empty screen at the end of the run"));
    }
    tmux(&["send-keys", "q"])?;
    let began = Instant::now();
    loop {
        let dead = tmux(&["list-panes", "-F", "#{pane_dead}"])?;
        if !dead.status.success() || String::from_utf8_lossy(&dead.stdout).trim() == "1" {
            break;
        }
        if began.elapsed() > QUIT_LIMIT {
            problems.push(format!("{name} did not quit within {QUIT_LIMIT:?} of `q`"));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((Duration::from_secs_f64(cpu_ticks as f64 / hz), rss_kib))
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Fields of `/proc/PID/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/PID/stat")?;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// (utime + stime, cutime + cstime) in clock ticks.
pub fn cpu_ticks_of(pid: u32) -> anyhow::Result<(u64, u64)> {
    let f = stat_fields(pid)?;
    // utime=14, stime=15, cutime=16, cstime=17 (1-based) → indexes 11..=14.
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok((get(11) + get(12), get(13) + get(14)))
}

pub fn hwm_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

/// Every live descendant of `root` (children first).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(f) = stat_fields(pid) {
            // ppid is field 4 → index 1.
            if let Some(&ppid) = f.get(1) {
                parent_of.insert(pid, ppid as u32);
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        let mut kids: Vec<u32> = parent_of
            .iter()
            .filter(|(_, &pp)| pp == p)
            .map(|(&c, _)| c)
            .collect();
        kids.sort_unstable();
        found.extend(kids);
        i += 1;
    }
    found.remove(0);
    found
}

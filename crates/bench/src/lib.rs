//! Shared helpers of pgkill's benchmark programs (`src/bin/*`).
//!
//! Benchmarks are programs that print figures, run side by side with their baseline in
//! the same run; they are never timed assertions inside tests.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

pub mod tmux;

/// Median of a set of durations (zero when empty).
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

/// Milliseconds with one decimal, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The first argument that turns a benchmark binary into the launcher [`measure`] runs
/// programs through. A binary using [`measure`] calls [`launcher_main`] first in `main`.
pub const LAUNCHER_ARG: &str = "--pgkill-bench-launcher";

/// One measured run of a program.
#[derive(Debug, Clone)]
pub struct Measured {
    /// From just before the program was spawned until it exited.
    pub wall: Duration,
    /// How it exited.
    pub status: ExitStatus,
    /// Its peak resident set size in KiB (`ru_maxrss`).
    pub max_rss_kib: u64,
    /// The CPU time it used, user and system (`ru_utime + ru_stime`).
    pub cpu: Duration,
    /// Bytes it wrote to stdout.
    pub stdout_bytes: u64,
    /// Lines it wrote to stdout.
    pub stdout_lines: u64,
    /// What it wrote to stderr (the first 64 KiB).
    pub stderr: String,
}

impl Measured {
    /// Peak RSS in megabytes (10^6 bytes).
    pub fn max_rss_mb(&self) -> f64 {
        self.max_rss_kib as f64 * 1024.0 / 1e6
    }
}

/// Ends a benchmark: each of `problems` printed, then an error saying how many `what`
/// (`"problem(s) during the run"`) when there were any (a non-zero exit: a run that did not
/// do its job), else Ok.
pub fn end(problems: &[String], what: &str) -> anyhow::Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    for p in problems {
        println!("problem: {p}");
    }
    anyhow::bail!("{} {what}", problems.len())
}

/// Runs `cmd` (program, arguments, environment and directory are taken from it; stdin is
/// empty, stdout is drained through a pipe and counted) and measures its wall time and
/// peak RSS. Killed after `limit`.
///
/// Peak RSS cannot be read correctly from this process, so the program is started by a
/// small launcher (this same binary, see [`launcher_main`]) that reports it:
///
/// - a child's `ru_maxrss` (from `wait4`) starts at the RSS of the process that spawned
///   it: `exec` folds the high-water mark of the replaced address space (the parent's
///   copy after `fork`, or the parent's very own with `posix_spawn`'s `CLONE_VM`) into
///   the child's figure. A benchmark holding a thousand connections would inflate every
///   child's figure to its own size; the launcher is a fresh, small process;
/// - `getrusage(RUSAGE_CHILDREN)` is a maximum over every child ever reaped, so it cannot
///   be split per child by differences;
/// - sampling `/proc/PID/status` (`VmHWM`) misses a peak just before exit, and the
///   figure is gone once the process has exited.
///
/// The launcher times the program from just before spawning it until it exits (its own
/// start-up is not counted) and takes `ru_maxrss` from `wait4` on it.
pub fn measure(cmd: &Command, limit: Duration) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let report = tempfile::NamedTempFile::new().context("creating a report file")?;
    let mut launcher = Command::new(&exe);
    launcher
        .arg(LAUNCHER_ARG)
        .arg(report.path())
        .arg(limit.as_millis().to_string())
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (name, value) in cmd.get_envs() {
        match value {
            Some(v) => launcher.env(name, v),
            None => launcher.env_remove(name),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        launcher.current_dir(dir);
    }
    launcher
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = launcher
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let counter = std::thread::spawn(move || {
        let (mut bytes, mut lines) = (0u64, 0u64);
        if let Some(mut out) = stdout {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                bytes += n as u64;
                lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
            }
        }
        (bytes, lines)
    });
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(err) = stderr {
            let _ = err.take(64 * 1024).read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let launcher_status = child.wait().context("waiting for the launcher")?;
    let (stdout_bytes, stdout_lines) = counter.join().unwrap_or_default();
    let stderr = errors.join().unwrap_or_default();
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().collect();
    let (wall, status, max_rss_kib, cpu) = match fields[..] {
        [wall, status, rss, cpu] => (
            Duration::from_nanos(wall.parse().context("launcher report")?),
            std::os::unix::process::ExitStatusExt::from_raw(
                status.parse().context("launcher report")?,
            ),
            rss.parse().context("launcher report")?,
            Duration::from_micros(cpu.parse().context("launcher report")?),
        ),
        _ => anyhow::bail!(
            "running {program} through the launcher failed ({launcher_status}): {}",
            stderr.trim()
        ),
    };
    Ok(Measured {
        wall,
        status,
        max_rss_kib,
        cpu,
        stdout_bytes,
        stdout_lines,
        stderr,
    })
}

/// When this process was started as [`measure`]'s launcher, runs the program it was
/// given and returns the exit code for this process; `None` otherwise (a normal run).
pub fn launcher_main() -> Option<i32> {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == LAUNCHER_ARG) != Some(true) {
        return None;
    }
    Some(match launch(&args[2..]) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("launcher: {e:#}");
            2
        }
    })
}

/// `REPORT LIMIT_MS -- PROGRAM ARGS…`: runs the program with this process's stdout and
/// stderr, then writes `wall_ns raw_wait_status max_rss_kib cpu_us` to REPORT.
fn launch(args: &[OsString]) -> anyhow::Result<()> {
    let [report, limit, dashes, program, rest @ ..] = args else {
        anyhow::bail!("usage: {LAUNCHER_ARG} REPORT LIMIT_MS -- PROGRAM [ARGS...]");
    };
    anyhow::ensure!(dashes == "--", "expected `--` before the program");
    let report = PathBuf::from(report);
    let limit = Duration::from_millis(
        limit
            .to_str()
            .and_then(|s| s.parse().ok())
            .context("LIMIT_MS must be a whole number")?,
    );
    let began = Instant::now();
    let child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let pid = child.id() as libc::pid_t;

    // Kill the program if it overruns. `reaped` guards against signalling a pid that was
    // already reaped (and could have been reused): the program is waited for without
    // reaping first, and only reaped while the flag is set under the lock.
    let reaped = Arc::new(Mutex::new(false));
    let (done, done_rx) = mpsc::channel::<()>();
    let watchdog = {
        let reaped = Arc::clone(&reaped);
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(limit) {
                let reaped = reaped.lock().unwrap_or_else(|p| p.into_inner());
                if !*reaped {
                    // SAFETY: plain syscall; `pid` is our unreaped child (guarded above).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        })
    };
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child without reaping it (WNOWAIT).
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("waiting for the program");
        }
    }
    let wall = began.elapsed();
    let (status, rusage) = {
        let mut flag = reaped.lock().unwrap_or_else(|p| p.into_inner());
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value; wait4 writes into it.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: reaps our own child, which has exited (it does not block).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if r != pid {
            return Err(std::io::Error::last_os_error()).context("reaping the program");
        }
        *flag = true;
        (status, rusage)
    };
    drop(child); // already reaped: std's `Child` neither waits nor kills on drop
    let _ = done.send(());
    let _ = watchdog.join();
    let micros = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    let cpu_us = micros(rusage.ru_utime) + micros(rusage.ru_stime);
    // Linux reports ru_maxrss in KiB.
    std::fs::write(
        &report,
        format!(
            "{} {} {} {}\n",
            wall.as_nanos(),
            status,
            rusage.ru_maxrss,
            cpu_us
        ),
    )
    .with_context(|| format!("writing {}", report.display()))
}

/// pgkill's release binary: `--pgkill`, else beside this benchmark (`target/release`).
pub fn find_pgkill(explicit: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the benchmark binary")?
            .with_file_name("pgkill"),
    };
    anyhow::ensure!(
        path.is_file(),
        "pgkill binary not found at {}: build it first with `cargo build --release -p pgkill` (or pass --pgkill PATH)",
        path.display()
    );
    if path.parent().and_then(std::path::Path::file_name) == Some("debug".as_ref()) {
        eprintln!(
            "warning: {} is a debug build; run with --release for figures that mean something",
            path.display()
        );
    }
    Ok(path)
}

/// psql: `--psql`, else the installation's own, else the newest of the distribution's
/// (`/usr/lib/postgresql/*/bin`; not `/usr/bin/psql`, a Perl wrapper that would add its
/// start-up to every run), else `psql` on `PATH`.
pub fn find_psql(
    explicit: Option<&Path>,
    inst: &pgkill_sandbox::Installation,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let own = inst.program("psql");
    if own.is_file() {
        return Ok(own);
    }
    let mut system: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let psql = e.path().join("bin/psql");
            psql.is_file().then_some((major, psql))
        })
        .collect();
    system.sort();
    if let Some((_, psql)) = system.pop() {
        return Ok(psql);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("psql"))
        .find(|p| p.is_file())
        .context("psql not found: install the PostgreSQL client or pass --psql PATH")
}

/// The trimmed stdout of `cmd` (e.g. a program's `--version`).
pub fn output_of(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Starts `n` sandbox servers of `inst` with `options`, `parallel` at a time, sorted by
/// port (so that names and order are the same from run to run of one setup).
pub fn start_sandboxes(
    inst: &pgkill_sandbox::Installation,
    options: &pgkill_sandbox::Options,
    n: usize,
    parallel: usize,
) -> anyhow::Result<Vec<pgkill_sandbox::Sandbox>> {
    use pgkill_sandbox::Sandbox;
    use std::sync::atomic::{AtomicUsize, Ordering};
    anyhow::ensure!(n > 0, "no servers to start");
    let first = Sandbox::start(inst, options).context("starting the first server")?;
    let rest = n - 1;
    let next = AtomicUsize::new(0);
    let started: Mutex<Vec<Sandbox>> = Mutex::new(Vec::with_capacity(rest));
    let failed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1).min(rest) {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < rest {
                    match Sandbox::start(inst, options) {
                        Ok(sb) => started.lock().unwrap_or_else(|p| p.into_inner()).push(sb),
                        Err(e) => failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{e:#}")),
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut all = vec![first];
    all.extend(started.into_inner().unwrap_or_else(|p| p.into_inner()));
    if let Some(e) = failed.first() {
        anyhow::bail!(
            "{} of {n} servers did not start; the first: {e}",
            failed.len()
        );
    }
    all.sort_by_key(Sandbox::port);
    Ok(all)
}

/// A mix of client sessions (see [`open_mix`]).
#[derive(Debug, Clone)]
pub struct Mix {
    /// How many.
    pub sessions: usize,
    /// One in this many holds an open transaction (idle in transaction); 0: none.
    pub in_transaction_every: usize,
    /// One in this many runs `pg_sleep` for `sleep`; 0: none.
    pub active_every: usize,
    /// How long the active ones sleep.
    pub sleep: Duration,
}

/// Sessions opened at once by [`open_mix`].
const OPEN_BATCH: usize = 100;

/// Opens `mix` with `config` and application name `app`, [`OPEN_BATCH`] at a time; the
/// rest of the sessions are idle.
pub fn open_mix(
    rt: &tokio::runtime::Runtime,
    config: &tokio_postgres::Config,
    app: &str,
    mix: &Mix,
) -> anyhow::Result<Vec<pgkill_sandbox::sim::Session>> {
    use pgkill_sandbox::sim;
    let mut config = config.clone();
    config.application_name(app);
    let (every_tx, every_active) = (mix.in_transaction_every, mix.active_every);
    rt.block_on(async {
        let mut sessions = Vec::with_capacity(mix.sessions);
        for first in (0..mix.sessions).step_by(OPEN_BATCH) {
            let mut batch = tokio::task::JoinSet::new();
            for i in first..(first + OPEN_BATCH).min(mix.sessions) {
                let config = config.clone();
                let sleep = mix.sleep;
                batch.spawn(async move {
                    if every_active > 0 && i % every_active == 0 {
                        sim::active(&config, sleep).await
                    } else if every_tx > 0 && i % every_tx == every_tx - 1 {
                        sim::idle_in_transaction(&config, None).await
                    } else {
                        sim::idle(&config).await
                    }
                });
            }
            while let Some(session) = batch.join_next().await {
                sessions.push(session.context("opening a session")??);
            }
        }
        anyhow::Ok(sessions)
    })
}

/// Creates database `db` and `pg_stat_statements` on `sb` (started with it in
/// `shared_preload_libraries`), and returns the benchmark's own connection: as
/// `sandbox_superuser`, so that the tools' statements (as `postgres`) can be told
/// apart in pg_stat_statements.
pub fn with_stat_statements(
    rt: &tokio::runtime::Runtime,
    sb: &pgkill_sandbox::Sandbox,
    db: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    rt.block_on(async {
        sb.create_database(db, None).await?;
        let admin = sb.admin("postgres").await?;
        admin
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .context("CREATE EXTENSION pg_stat_statements")?;
        drop(admin);
        anyhow::Ok(
            sb.connect("postgres", pgkill_sandbox::roles::SUPERUSER)
                .await?,
        )
    })
}

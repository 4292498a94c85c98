//! `pgkill demo` on the real binary, on every PostgreSQL version: it serves a `shop`
//! database with the promised sessions, reports a session that gets terminated, and on
//! Ctrl-C stops its server and removes everything; and nobody but the OS user who runs it
//! can get in (issue 8, finding 2: another local user logged in as superuser and ran
//! programs as the server's OS user).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgkill_sandbox::{cases, roles, Installation};
use tokio::sync::mpsc::UnboundedReceiver;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        demo_serves_sessions_and_cleans_up,
        second_os_user_cannot_enter_the_demo,
        suggested_commands_work_when_pasted,
    ]);
}

/// Reads the demo's stdout lines on a thread, so the test can wait with a timeout.
fn lines_of(stdout: std::process::ChildStdout) -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `pgkill demo`, killed when dropped unless it was stopped.
struct Demo {
    child: Child,
    rx: UnboundedReceiver<String>,
    seen: Vec<String>,
    port: u16,
    data_dir: PathBuf,
    /// The variables of the printed `export` line.
    env: BTreeMap<String, String>,
}

impl Demo {
    /// Starts the demo and reads its instructions up to `Ready.`.
    async fn start(pg: &Installation) -> Result<Demo> {
        Demo::start_with(pg, Command::new(env!("CARGO_BIN_EXE_pgkill"))).await
    }

    /// [`Demo::start`] with `cmd` (the binary, maybe with an environment of its own).
    async fn start_with(pg: &Installation, mut cmd: Command) -> Result<Demo> {
        let mut child = cmd
            .args(["demo", "--pg-version", &pg.version.major.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting pgkill demo")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"));
        let mut demo = Demo {
            rx: lines_of(stdout?),
            child,
            seen: Vec::new(),
            port: 0,
            data_dir: PathBuf::new(),
            env: BTreeMap::new(),
        };
        let running = demo
            .wait_for_line(|l| l.contains(" is running on 127.0.0.1:"))
            .await?;
        demo.port = running
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("no port in {running:?}"))?
            .parse()?;
        demo.data_dir = PathBuf::from(
            running
                .split("(data in ")
                .nth(1)
                .and_then(|r| r.strip_suffix(")."))
                .ok_or_else(|| anyhow!("no data dir in {running:?}"))?,
        );
        demo.wait_for_line(|l| l == "Ready.").await?;
        let export = demo
            .seen
            .iter()
            .find_map(|l| l.trim().strip_prefix("export "))
            .ok_or_else(|| anyhow!("no export line:\n{}", demo.seen.join("\n")))?;
        demo.env = export
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Ok(demo)
    }

    async fn wait_for_line(&mut self, want: impl Fn(&str) -> bool) -> Result<String> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| {
                    anyhow!(
                        "demo output ended or stalled; so far:\n{}",
                        self.seen.join("\n")
                    )
                })?;
            self.seen.push(line.clone());
            if want(&line) {
                return Ok(line);
            }
        }
    }

    fn printed(&self, text: &str) -> bool {
        self.seen.iter().any(|l| l.contains(text))
    }

    fn passfile(&self) -> Result<PathBuf> {
        self.env
            .get("PGPASSFILE")
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("the export line has no PGPASSFILE: {:?}", self.env))
    }

    /// `role`'s password for TCP, as the demo's own user reads it from the password file.
    fn password(&self, role: &str) -> Result<String> {
        let text = std::fs::read_to_string(self.passfile()?)?;
        let prefix = format!("127.0.0.1:{}:*:{role}:", self.port);
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no password for {role} in the password file"))
    }

    /// Ctrl-C: the demo stops its server, removes everything and exits 0.
    async fn stop(mut self) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT)?;
        self.wait_for_line(|l| l == "Done.").await?;
        let status = self.child.wait()?;
        ensure!(status.success(), "demo exited with {status}");
        ensure!(
            !self.data_dir.exists(),
            "{} left behind",
            self.data_dir.display()
        );
        let passfile = self.passfile()?;
        ensure!(!passfile.exists(), "{} left behind", passfile.display());
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn demo_serves_sessions_and_cleans_up(pg: Installation) -> Result<()> {
    let mut demo = Demo::start(&pg).await?;
    let port = demo.port;
    {
        let passfile = demo.passfile()?;
        ensure!(
            demo.env.get("PGHOST").map(String::as_str) == Some("127.0.0.1")
                && demo.env.get("PGPORT") == Some(&port.to_string())
                && demo.env.get("PGUSER").map(String::as_str) == Some(roles::ADMIN),
            "export line: {:?}",
            demo.env
        );
        ensure!(
            demo.printed(&format!(
                "PGPASSFILE={} psql -h 127.0.0.1 -p {port} -U postgres shop",
                passfile.display()
            )),
            "no psql hint:\n{}",
            demo.seen.join("\n")
        );
        ensure!(demo.printed("pgkill ls --db shop"), "no pgkill hint");

        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password(demo.password(roles::ADMIN)?)
            .dbname("shop")
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to the demo server")?;
        tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT application_name, state, coalesce(wait_event_type, '') FROM pg_stat_activity
                 WHERE datname = 'shop' AND pid <> pg_backend_pid()",
                &[],
            )
            .await?;
        let count = |app: &str, state: &str, wait: Option<&str>| {
            rows.iter()
                .filter(|r| {
                    r.get::<_, String>(0) == app
                        && r.get::<_, Option<String>>(1).as_deref() == Some(state)
                })
                .filter(|r| wait.is_none_or(|w| r.get::<_, String>(2) == w))
                .count()
        };
        ensure!(
            count("shop-web", "idle", None) == 3,
            "idle sessions: {rows:?}"
        );
        ensure!(count("shop-worker", "idle in transaction", None) == 2);
        ensure!(count("nightly-report", "active", None) == 1);
        ensure!(
            count("shop-migrations", "idle in transaction", None) == 1,
            "lock holder"
        );
        ensure!(
            count("shop-migrations", "active", Some("Lock")) == 2,
            "lock waiters"
        );
        ensure!(count("shop-pool", "idle", None) == 5, "pool");
        let waiting: i64 = client
            .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
            .await?
            .get(0);
        ensure!(waiting >= 2, "waiters wait on locks");

        // Terminating a session is reported by the demo with the SQLSTATE its client saw.
        let pid: i32 = client
            .query_one(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'shop-web' LIMIT 1",
                &[],
            )
            .await?
            .get(0);
        client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await?;
        demo.wait_for_line(|l| l.contains(&format!("session {pid} ")) && l.contains("57P01"))
            .await?;
    }
    demo.stop().await
}

/// `psql -w -X` with only `env` (no terminal, never a prompt), as `user` (`None`: us).
fn psql(user: Option<&nix::unistd::User>, env: &[(&str, String)], args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(support::client_program("psql")?);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["-w", "-X", "-At"])
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null());
    if let Some(user) = user {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    Ok(cmd.output()?)
}

/// Checks that a psql run failed (exit 2, nothing on stdout) with `want` in its message.
fn refused(out: &Output, want: &str, what: &str) -> Result<()> {
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && out.stdout.is_empty(),
        "{what}: psql got in ({}): {}{err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        err.contains(want),
        "{what}: expected {want:?}, psql said: {err}"
    );
    Ok(())
}

/// Issue 8, finding 2: as another OS user (`nobody`) nothing gets into a running demo:
/// not over TCP without a password or with the old public one, not over the Unix socket,
/// not by reading the password file; the demo's own user gets in with what it printed.
async fn second_os_user_cannot_enter_the_demo(pg: Installation) -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "this test acts as a second OS user (nobody) against the demo and needs root; \
         run the suite as root (CI does)"
    );
    let nobody = nix::unistd::User::from_name("nobody")?
        .ok_or_else(|| anyhow!("there is no OS user nobody to act as"))?;
    let demo = Demo::start(&pg).await?;
    let port = demo.port.to_string();
    let passfile = demo.passfile()?;
    let socket_dir = demo
        .data_dir
        .parent()
        .ok_or_else(|| anyhow!("no socket directory"))?
        .display()
        .to_string();
    let select = ["-d", "postgres", "-c", "SELECT 1"];
    let tcp = |role: &str| {
        vec![
            ("PGHOST", "127.0.0.1".to_owned()),
            ("PGPORT", port.clone()),
            ("PGUSER", role.to_owned()),
        ]
    };

    for role in roles::ALL {
        // No password over TCP: the server asks for one (no trust).
        let out = psql(Some(&nobody), &tcp(role), &select)?;
        refused(
            &out,
            "no password supplied",
            &format!("{role} without a password"),
        )?;
        // The old public password.
        let mut env = tcp(role);
        env.push(("PGPASSWORD", format!("{role}-password")));
        let out = psql(Some(&nobody), &env, &select)?;
        refused(
            &out,
            &format!("password authentication failed for user \"{role}\""),
            &format!("{role} with the old password"),
        )?;
    }
    // The Unix socket: its directory is closed to other users.
    let env = vec![
        ("PGHOST", socket_dir.clone()),
        ("PGPORT", port.clone()),
        ("PGUSER", roles::ADMIN.to_owned()),
    ];
    let out = psql(Some(&nobody), &env, &select)?;
    refused(&out, "Permission denied", "the Unix socket")?;
    // The password file: unreadable, also through libpq.
    let read = Command::new("cat")
        .arg(&passfile)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()?;
    ensure!(
        !read.status.success()
            && read.stdout.is_empty()
            && String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "nobody read the password file: {:?}",
        read
    );
    let mut env = tcp(roles::ADMIN);
    env.push(("PGPASSFILE", passfile.display().to_string()));
    let out = psql(Some(&nobody), &env, &select)?;
    refused(
        &out,
        "no password supplied",
        "the demo's password file as nobody",
    )?;

    // The demo's own user, with exactly what the demo printed.
    let printed: Vec<(&str, String)> = demo
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let out = psql(
        None,
        &printed,
        &["-d", "shop", "-c", "SELECT pg_catalog.current_user()"],
    )?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == roles::ADMIN,
        "the demo's own user with the printed PGPASSFILE: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And pgkill, the same way.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    let out = cmd
        .envs(printed.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["ls", "--db", "shop", "--json"])
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.code() == Some(0),
        "pgkill with the printed environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo.stop().await
}

/// Issue 12: the commands the demo suggests work when pasted into a shell (with the
/// printed `export`), whether or not `pgkill` is on `PATH`: they name the running binary
/// unless `PATH` finds that very binary.
async fn suggested_commands_work_when_pasted(pg: Installation) -> Result<()> {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_pgkill")).canonicalize()?;
    // A PATH with a link named pgkill to this binary, and one with no pgkill at all.
    let bin = tempfile::tempdir()?;
    std::os::unix::fs::symlink(&exe, bin.path().join("pgkill"))?;
    let with_link = format!("{}:/usr/bin:/bin", bin.path().display());
    for (path, program) in [
        ("/usr/bin:/bin".to_owned(), exe.display().to_string()),
        (with_link, "pgkill".to_owned()),
    ] {
        let mut cmd = Command::new(&exe);
        support::clean_env(&mut cmd);
        cmd.env("PATH", &path);
        let demo = Demo::start_with(&pg, cmd).await?;
        let suggested: Vec<&str> = demo
            .seen
            .iter()
            .filter_map(|l| l.trim().strip_prefix(&format!("{program} ")))
            .collect();
        ensure!(
            suggested.iter().any(|l| l.starts_with("ls --db shop"))
                && suggested.iter().any(|l| l.starts_with("top --db shop")),
            "with PATH={path} the suggestions should call {program}:\n{}",
            demo.seen.join("\n")
        );
        // The ones that run without a terminal, pasted as printed (after the export).
        let mut pasted = 0;
        for line in &demo.seen {
            let line = line.trim();
            if !(line.starts_with(&format!("{program} ls "))
                || (line.starts_with(&format!("{program} kill ")) && line.ends_with("--dry-run")))
            {
                continue;
            }
            let mut sh = Command::new("sh");
            support::clean_env(&mut sh);
            sh.env("PATH", &path)
                .envs(&demo.env)
                .args(["-c", line])
                .stdin(Stdio::null());
            let (code, out, err) = support::run(sh)?;
            ensure!(
                code == 0 && out.contains(" | "),
                "pasting `{line}` with PATH={path}: exit {code}\n{out}{err}"
            );
            pasted += 1;
        }
        ensure!(pasted >= 2, "pasted only {pasted} suggestions");
        demo.stop().await?;
    }
    Ok(())
}

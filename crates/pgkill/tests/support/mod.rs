//! What the tests of the real binary share: running it against a sandbox in a clean
//! environment (the sandbox's password file is how it logs in, as for any libpq client),
//! finding the PostgreSQL client programs, and waiting for sessions a test dropped to
//! leave.
#![allow(dead_code)] // each test binary uses a part

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_sandbox::{roles, Bouncer, Sandbox};
use tokio_postgres::Client;

/// Where and how to reach a sandbox: what [`pgkill`] needs, kept apart from the
/// [`Sandbox`] by tests that outlive borrowing it.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub passfile: PathBuf,
}

impl Target {
    pub fn of(sb: &Sandbox) -> Target {
        Target {
            host: sb.host().to_owned(),
            port: sb.port(),
            passfile: sb.passfile().to_path_buf(),
        }
    }
}

/// `pgkill -h HOST -p PORT -U ROLE ARGS…` against the sandbox with its password file
/// (`PGPASSFILE`), free of the developer's other `PG*` variables and `~/.pgpass`, without
/// colours, with no terminal on stdin.
pub fn pgkill(sb: &Sandbox, role: &str, args: &[&str]) -> Command {
    pgkill_at(&Target::of(sb), role, args)
}

/// [`pgkill`] for a [`Target`].
pub fn pgkill_at(target: &Target, role: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    clean_env(&mut cmd);
    cmd.env("PGPASSFILE", &target.passfile)
        .args([
            "-h",
            &target.host,
            "-p",
            &target.port.to_string(),
            "-U",
            role,
        ])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Removes the developer's `PG*` variables, points `HOME` at an empty directory (no
/// `~/.pgpass`) and turns colours off.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", std::env::temp_dir().join("pgkill-cli-test-home"))
        .env("NO_COLOR", "1");
}

/// A PostgreSQL client program (`psql`, `pg_recvlogical`) from the distribution: a
/// client works with every server version.
pub fn client_program(name: &str) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(Path::new("/usr/bin").join(name));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        anyhow!("{name} not found: install the PostgreSQL client programs (apt-get install postgresql-client)")
    })
}

/// Runs `cmd` to the end: exit code, stdout, stderr.
pub fn run(mut cmd: Command) -> Result<(i32, String, String)> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().context("running pgkill")?;
    let code = status
        .code()
        .ok_or_else(|| anyhow!("pgkill died by a signal: {status}"))?;
    Ok((code, String::from_utf8(stdout)?, String::from_utf8(stderr)?))
}

/// Waits until the sessions of `db` that a test dropped have left.
pub async fn wait_no_sessions(admin: &Client, db: &str) -> Result<()> {
    wait_sessions(admin, "datname", db, 0).await
}

/// Waits until at most `n` sessions have `column` (`datname`, `usename`) = `value`.
pub async fn wait_sessions(admin: &Client, column: &str, value: &str, n: i64) -> Result<()> {
    let began = Instant::now();
    let query = format!("SELECT count(*) FROM pg_stat_activity WHERE {column} = $1");
    while admin.query_one(&query, &[&value]).await?.get::<_, i64>(0) > n {
        ensure!(
            began.elapsed() < Duration::from_secs(10),
            "sessions with {column} {value} did not leave"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn shell_quote(arg: &OsStr) -> Result<String> {
    let arg = std::str::from_utf8(arg.as_bytes())?;
    Ok(format!("'{}'", arg.replace('\'', r"'\''")))
}

/// Runs `cmd` (as [`pgkill`] built it: program, arguments, environment) on a
/// pseudo-terminal with util-linux `script`, typing `answer`: stdout and stderr both go
/// to the terminal. Returns the exit code and what the terminal showed, with the
/// terminal's `\r\n` turned back into `\n` (any other `\r` stays).
pub fn on_terminal(cmd: &Command, answer: &str) -> Result<(i32, Vec<u8>)> {
    use std::io::Write;
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(shell_quote)
        .collect::<Result<Vec<_>>>()?
        .join(" ");
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => script.env(key, v),
            None => script.env_remove(key),
        };
    }
    let mut child = script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `script` (util-linux) to give pgkill a terminal")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(answer.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    Ok((out.status.code().unwrap_or(-1), text.into_bytes()))
}

/// `pg_recvlogical -h HOST -p PORT -U ROLE -d DB --slot SLOT --start -f /dev/null`
/// against the sandbox with its password file, silent (a client program: the
/// distribution's works with every server version).
pub fn recvlogical(sb: &Sandbox, role: &str, db: &str, slot: &str) -> Result<Command> {
    let mut cmd = Command::new(client_program("pg_recvlogical")?);
    clean_env(&mut cmd);
    cmd.env("PGPASSFILE", sb.passfile())
        .args([
            "-h",
            sb.host(),
            "-p",
            &sb.port().to_string(),
            "-U",
            role,
            "-d",
            db,
        ])
        .args(["--slot", slot, "--start", "-f", "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(cmd)
}

/// Everything pgkill records about a database and must restore exactly:
/// `allow_connections`, connection limit, privileges, template flag, and the comment
/// (which holds pgkill's fence record while it is fenced).
pub type DbRow = (bool, i32, Option<Vec<String>>, bool, Option<String>);

/// The [`DbRow`] of database `name`, if it exists.
pub async fn db_row(admin: &Client, name: &str) -> Result<Option<DbRow>> {
    Ok(admin
        .query_opt(
            "SELECT datallowconn, datconnlimit, datacl::text[], datistemplate,
                    shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await?
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))))
}

/// Waits until database `name` refuses connections (a pgkill running in the background
/// has fenced it).
pub async fn wait_fenced(admin: &Client, name: &str) -> Result<()> {
    let began = Instant::now();
    while db_row(admin, name).await?.is_some_and(|r| r.0) {
        ensure!(began.elapsed() < Duration::from_secs(20), "never fenced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Custom settings that must survive: a connection limit, CONNECT revoked from PUBLIC and
/// granted to one role, a comment.
pub async fn customise(admin: &Client, name: &str) -> Result<()> {
    let q = pgkill_core::quote_ident(name)?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {q} CONNECTION LIMIT 70; REVOKE CONNECT ON DATABASE {q} FROM PUBLIC;
             GRANT CONNECT ON DATABASE {q} TO {}; GRANT CONNECT, TEMP ON DATABASE {q} TO {};
             COMMENT ON DATABASE {q} IS 'the team''s data'",
            pgkill_sandbox::roles::PLAIN,
            pgkill_sandbox::roles::SUPERUSER
        ))
        .await?;
    Ok(())
}

/// A connection string for the bootstrap superuser of `sb` (its password in it: pgkill
/// never shows one).
pub fn conninfo(sb: &Sandbox) -> String {
    format!(
        "host={} port={} user={} password={} dbname=postgres",
        sb.host(),
        sb.port(),
        roles::ADMIN,
        sb.password(roles::ADMIN).unwrap_or_default()
    )
}

/// The admin console of `bouncer` (in front of `sb`) for the bootstrap superuser, its
/// password in it.
pub fn console(sb: &Sandbox, bouncer: &Bouncer) -> String {
    format!(
        "host={} port={} user={} password={}",
        bouncer.host(),
        bouncer.port(),
        roles::ADMIN,
        sb.password(roles::ADMIN).unwrap_or_default()
    )
}

/// Whether a connection still works (a query, through the pooler for an application).
pub async fn works(client: &Client) -> bool {
    client.simple_query("SELECT 1").await.is_ok()
}

/// Whether alias `shop` is paused at `bouncer`.
pub async fn shop_is_paused(bouncer: &Bouncer) -> Result<bool> {
    Ok(shop_state(bouncer).await?.0)
}

/// The state of alias `shop` at `bouncer`: (paused, disabled).
pub async fn shop_state(bouncer: &Bouncer) -> Result<(bool, bool)> {
    let row = bouncer
        .admin(roles::ADMIN)
        .await?
        .simple_query("SHOW DATABASES")
        .await?
        .into_iter()
        .find(|r| r.get("name") == Some("shop"))
        .ok_or_else(|| anyhow!("no alias shop"))?;
    Ok((
        row.get("paused") == Some("1"),
        row.get("disabled") == Some("1"),
    ))
}

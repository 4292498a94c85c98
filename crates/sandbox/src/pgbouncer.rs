//! A real PgBouncer in front of a sandbox server.
//!
//! pgkill's pooler support is about how PgBouncer really behaves (its console, its pool
//! modes, what its clients see when backends go), so the tests run the real program:
//! [`Bouncer::start`] runs `pgbouncer` (1.18, the distribution's, or 1.24.1, built from
//! Debian trixie's source, both installed by `scripts/fetch-pgbouncer`) as the OS user
//! that runs the sandbox's servers, on a free loopback port, with its ini, auth file,
//! log, pid file and Unix socket in a private (0700) directory of its own. Clients log in
//! with SCRAM-SHA-256 and the sandbox's passwords (the auth file holds them), and
//! PgBouncer logs in to the server over loopback TCP with the same passwords. Dropping a
//! [`Bouncer`] (also while a test panics) stops it (immediate shutdown, then SIGKILL) and
//! removes its directory.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use crate::runas::RunAs;
use crate::server::{free_port, log_tail, write_new};
use crate::{roles, Error, Result, Sandbox};

const DIR_PREFIX: &str = "pgkill-bouncer-";
const INI: &str = "pgbouncer.ini";
const AUTH_FILE: &str = "userlist.txt";
const LOG: &str = "pgbouncer.log";
const PID_FILE: &str = "pgbouncer.pid";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// The PgBouncer versions the sandbox runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BouncerVersion {
    /// 1.18, Debian bookworm's package.
    V1_18,
    /// 1.24.1, built from Debian trixie's source package.
    V1_24_1,
}

impl BouncerVersion {
    /// Every version, oldest first.
    pub const ALL: [BouncerVersion; 2] = [BouncerVersion::V1_18, BouncerVersion::V1_24_1];

    /// The version as `scripts/fetch-pgbouncer` and the cache name it: `1.18`, `1.24.1`.
    pub fn as_str(self) -> &'static str {
        match self {
            BouncerVersion::V1_18 => "1.18",
            BouncerVersion::V1_24_1 => "1.24.1",
        }
    }

    /// The signal that makes it shut down at once, closing every connection: SIGTERM up
    /// to 1.22; from 1.23 SIGTERM waits for every client to leave and SIGQUIT is the
    /// immediate shutdown.
    pub(crate) fn immediate_shutdown_signal(self) -> Signal {
        match self {
            BouncerVersion::V1_18 => Signal::SIGTERM,
            BouncerVersion::V1_24_1 => Signal::SIGQUIT,
        }
    }

    /// Whether `reported` (`x.y.z` from `pgbouncer --version`) is this version: any
    /// 1.18.z for 1.18, exactly 1.24.1 for 1.24.1.
    pub fn matches(self, reported: &str) -> bool {
        match self {
            BouncerVersion::V1_18 => reported == "1.18" || reported.starts_with("1.18."),
            BouncerVersion::V1_24_1 => reported == "1.24.1",
        }
    }
}

impl fmt::Display for BouncerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `pool_mode`: when a server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// When the client disconnects.
    Session,
    /// At the end of each transaction.
    Transaction,
    /// After each statement (multi-statement transactions are refused).
    Statement,
}

impl PoolMode {
    /// The setting's value.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of one [`Bouncer`].
#[derive(Debug, Clone)]
pub struct BouncerOptions {
    /// Which PgBouncer runs.
    pub version: BouncerVersion,
    /// `pool_mode`.
    pub pool_mode: PoolMode,
    /// `[databases]`: alias → the server's database name. Empty: one wildcard entry
    /// (`* = host=127.0.0.1 port=<sandbox port>`), every database under its own name.
    pub databases: Vec<(String, String)>,
    /// More `[databases]` entries that name a host of their own: alias, host (an address,
    /// a name or a socket directory; the sandbox's port), the server's database name.
    pub databases_at: Vec<(String, String, String)>,
    /// `default_pool_size`.
    pub default_pool_size: u32,
    /// `max_client_conn`.
    pub max_client_conn: u32,
    /// `server_login_retry`: how long PgBouncer waits after a failed server login.
    pub server_login_retry: Duration,
    /// `query_wait_timeout`: how long a client may wait for a server connection.
    pub query_wait_timeout: Duration,
    /// `admin_users`: sandbox roles that may run every console command.
    pub admin_users: Vec<String>,
    /// `stats_users`: sandbox roles that may only run the console's `SHOW` commands.
    pub stats_users: Vec<String>,
    /// `ignore_startup_parameters`: startup parameters PgBouncer accepts and drops
    /// (`extra_float_digits` by default, which psql and JDBC send).
    pub ignore_startup_parameters: Vec<String>,
    /// Where its directory goes; `None`: inside the sandbox's server directory (private
    /// to the servers' OS user), so that what a killed test leaves behind is swept with
    /// its sandbox.
    pub dir: Option<PathBuf>,
}

impl BouncerOptions {
    /// `version` in `pool_mode`, every database by its own name, pools of 20,
    /// `max_client_conn` 200, `server_login_retry` 1 s (tests should not wait 15 s after a
    /// failed login), `query_wait_timeout` 120 s (PgBouncer's default), the bootstrap
    /// superuser as the only admin user and no stats users.
    pub fn new(version: BouncerVersion, pool_mode: PoolMode) -> BouncerOptions {
        BouncerOptions {
            version,
            pool_mode,
            databases: Vec::new(),
            databases_at: Vec::new(),
            default_pool_size: 20,
            max_client_conn: 200,
            server_login_retry: Duration::from_secs(1),
            query_wait_timeout: Duration::from_secs(120),
            admin_users: vec![roles::ADMIN.to_owned()],
            stats_users: Vec::new(),
            ignore_startup_parameters: vec!["extra_float_digits".to_owned()],
            dir: None,
        }
    }

    /// Also accepts and drops startup parameter `name` (e.g. `options`, as many
    /// deployments configure so that clients sending it can log in).
    pub fn ignore_startup_parameter(mut self, name: &str) -> Self {
        self.ignore_startup_parameters.push(name.to_owned());
        self
    }

    /// Adds a `[databases]` entry: `alias` leads to the server's database `dbname`.
    pub fn database(mut self, alias: &str, dbname: &str) -> Self {
        self.databases.push((alias.to_owned(), dbname.to_owned()));
        self
    }

    /// Adds a `[databases]` entry leading to `dbname` at `host` (the sandbox's port): an
    /// address the sandbox's server does not listen on stands for another server.
    pub fn database_at(mut self, alias: &str, host: &str, dbname: &str) -> Self {
        self.databases_at
            .push((alias.to_owned(), host.to_owned(), dbname.to_owned()));
        self
    }

    /// Adds `role` to `admin_users`.
    pub fn admin_user(mut self, role: &str) -> Self {
        self.admin_users.push(role.to_owned());
        self
    }

    /// Adds `role` to `stats_users`.
    pub fn stats_user(mut self, role: &str) -> Self {
        self.stats_users.push(role.to_owned());
        self
    }
}

/// Where `pgbouncer` binaries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BouncerBinary {
    /// The version it is.
    pub version: BouncerVersion,
    /// What `pgbouncer --version` reports (`1.18.0`).
    pub reported: String,
    /// The executable.
    pub path: PathBuf,
}

/// The project's cache filled by `scripts/fetch-pgbouncer`: `$PGKILL_PGBOUNCER_CACHE`, or
/// `.cache/pgbouncer` at the root of the source tree this crate was built from.
pub fn bouncer_cache_dir() -> PathBuf {
    match std::env::var_os("PGKILL_PGBOUNCER_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/pgbouncer"),
    }
}

impl BouncerBinary {
    /// The binary of `version`: the first of `$PGKILL_PGBOUNCER_BIN` (`:`-separated
    /// `pgbouncer` executables, or directories holding one) that reports that version,
    /// else the project cache's `<version>/bin/pgbouncer`. Missing is an error that says
    /// how to install it, never a reason to skip.
    pub fn find(version: BouncerVersion) -> Result<BouncerBinary> {
        let explicit = std::env::var_os("PGKILL_PGBOUNCER_BIN").unwrap_or_default();
        find_in(version, &explicit, &bouncer_cache_dir())
    }
}

/// [`BouncerBinary::find`] with the override list and the cache given.
fn find_in(
    version: BouncerVersion,
    explicit: &std::ffi::OsStr,
    cache: &Path,
) -> Result<BouncerBinary> {
    let cached = cache.join(version.as_str()).join("bin").join("pgbouncer");
    let explicit = std::env::split_paths(explicit)
        .filter(|p| !p.as_os_str().is_empty())
        .map(|entry| {
            if entry.is_dir() {
                entry.join("pgbouncer")
            } else {
                entry
            }
        });
    for path in explicit.chain(std::iter::once(cached)) {
        if let Some(reported) = reported_version(&path) {
            if version.matches(&reported) {
                return Ok(BouncerBinary {
                    version,
                    reported,
                    path,
                });
            }
        }
    }
    Err(Error::MissingBouncer {
        version: version.as_str().to_owned(),
        cache: cache.display().to_string(),
    })
}

/// `x.y.z` of `PgBouncer x.y.z`, the first line of `pgbouncer --version`.
fn reported_version(path: &Path) -> Option<String> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    first
        .strip_prefix("PgBouncer ")
        .map(|v| v.trim().to_owned())
}

/// A running PgBouncer in front of one sandbox server, listening on 127.0.0.1 only.
///
/// Drop it before its sandbox: its directory is inside the sandbox's (unless
/// [`BouncerOptions::dir`] says otherwise), and its server is the sandbox's.
///
/// Its clients log in with the sandbox's roles and passwords (SCRAM-SHA-256), as do its
/// server connections. Dropping it stops the process (immediate shutdown: SIGTERM on
/// 1.18, SIGQUIT on 1.24.1, whose SIGTERM waits for the clients to leave; then
/// SIGKILL after 10 s) and deletes its directory, also while a panicking test unwinds;
/// if the whole process dies, the kernel sends it the same signal (parent-death signal).
pub struct Bouncer {
    binary: BouncerBinary,
    port: u16,
    pid: u32,
    passwords: BTreeMap<String, String>,
    keeper: Option<Keeper>,
    // Declared after the keeper: removed once it has stopped PgBouncer.
    dir: Option<tempfile::TempDir>,
}

impl fmt::Debug for Bouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bouncer")
            .field("version", &self.binary.reported)
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("dir", &self.dir.as_ref().map(|d| d.path().to_path_buf()))
            .finish_non_exhaustive()
    }
}

impl Bouncer {
    /// Starts PgBouncer in front of `sandbox` with `options`, returning once it accepts
    /// connections on its port.
    ///
    /// The auth file holds every role `sandbox` knows the password of at this moment
    /// (roles created later cannot log in through this bouncer). Blocking, like
    /// [`Sandbox::start`].
    pub fn start(sandbox: &Sandbox, options: &BouncerOptions) -> Result<Bouncer> {
        let binary = BouncerBinary::find(options.version)?;
        let run_as = RunAs::detect()?;
        let passwords = sandbox.role_passwords();
        for role in options.admin_users.iter().chain(&options.stats_users) {
            if !passwords.contains_key(role) {
                return Err(Error::Program {
                    program: "pgbouncer".into(),
                    detail: format!("{role:?} is not a role of the sandbox (no password known)"),
                });
            }
        }
        if let Some((alias, _)) = options.databases.iter().find(|(a, _)| !is_plain_name(a)) {
            return Err(Error::Program {
                program: "pgbouncer".into(),
                detail: format!(
                    "database alias {alias:?}: use letters, digits and _ only (written into the ini unquoted)"
                ),
            });
        }
        let root = options
            .dir
            .clone()
            .unwrap_or_else(|| sandbox.socket_dir().to_path_buf());
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&root)
            .map_err(Error::io("create PgBouncer directory in", &root))?;
        write_new(
            &dir.path().join(AUTH_FILE),
            auth_file_text(&passwords).as_bytes(),
        )?;

        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let ini = dir.path().join(INI);
            let _ = std::fs::remove_file(&ini);
            write_new(
                &ini,
                ini_text(dir.path(), port, sandbox.port(), options).as_bytes(),
            )?;
            run_as.chown_tree(dir.path())?;
            match launch(&binary, &run_as, dir.path(), port) {
                Ok((keeper, pid)) => {
                    tracing::debug!(version = %binary.reported, port, "pgbouncer ready");
                    return Ok(Bouncer {
                        binary,
                        port,
                        pid,
                        passwords,
                        keeper: Some(keeper),
                        dir: Some(dir),
                    });
                }
                Err(Launch::PortTaken(e)) => last_error = Some(e),
                Err(Launch::Failed(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Program {
            program: "pgbouncer".into(),
            detail: "could not find a free port".into(),
        }))
    }

    /// The loopback TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Which PgBouncer this is.
    pub fn version(&self) -> BouncerVersion {
        self.binary.version
    }

    /// What its `--version` reports (`1.18.0`, `1.24.1`).
    pub fn reported_version(&self) -> &str {
        &self.binary.reported
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its private directory (ini, auth file, log, pid file, Unix socket).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Its log (what it writes to stderr).
    pub fn log_file(&self) -> PathBuf {
        self.dir().join(LOG)
    }

    /// Connection settings for `role` on database (alias) `db` through the pooler, with
    /// the role's password.
    pub fn config(&self, db: &str, role: &str) -> Config {
        let mut config = Config::new();
        config
            .host(self.host())
            .port(self.port)
            .user(role)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = self.passwords.get(role) {
            config.password(password);
        }
        config
    }

    /// Connects as `role` to `db` through the pooler; the connection is driven by a task
    /// on the current runtime.
    pub async fn connect(&self, db: &str, role: &str) -> Result<Client> {
        crate::server::connect(&self.config(db, role)).await
    }

    /// Logs in to the admin console (database `pgbouncer`) as `role`.
    pub async fn admin(&self, role: &str) -> Result<Console> {
        let client = self.connect("pgbouncer", role).await?;
        Ok(Console { client })
    }

    /// Stops PgBouncer and removes its directory now (dropping does the same).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.keeper.take());
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!(dir = %path.display(), "could not remove PgBouncer directory: {e}");
            }
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client of PgBouncer's admin console. The console speaks only the simple query
/// protocol, so everything goes through [`Console::simple_query`].
#[derive(Debug)]
pub struct Console {
    client: Client,
}

/// One row of a console `SHOW`, by column name (columns differ between versions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRow {
    columns: Vec<(String, Option<String>)>,
}

impl ConsoleRow {
    /// The value of `column`; `None` when it is NULL or the version has no such column.
    pub fn get(&self, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .and_then(|(_, value)| value.as_deref())
    }

    /// Whether this version's output has `column`.
    pub fn has(&self, column: &str) -> bool {
        self.columns.iter().any(|(name, _)| name == column)
    }

    /// The column names, in order.
    pub fn column_names(&self) -> impl Iterator<Item = &str> {
        self.columns.iter().map(|(name, _)| name.as_str())
    }
}

impl Console {
    /// Runs `sql` (e.g. `SHOW CLIENTS`, `PAUSE app`) and returns the rows it gave.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<ConsoleRow>> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(Error::sql(format!("PgBouncer console: {sql}")))?;
        Ok(messages
            .into_iter()
            .filter_map(|message| match message {
                SimpleQueryMessage::Row(row) => Some(ConsoleRow {
                    columns: row
                        .columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                        .collect(),
                }),
                _ => None,
            })
            .collect())
    }

    /// The underlying client (simple queries only).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// A name the ini takes as it is: ASCII letters, digits, `_`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The auth file: `"role" "password"` per line, `"` doubled.
fn auth_file_text(passwords: &BTreeMap<String, String>) -> String {
    passwords
        .iter()
        .map(|(role, password)| format!("{} {}\n", auth_quoted(role), auth_quoted(password)))
        .collect()
}

fn auth_quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// A value of a `[databases]` connection string, single-quoted.
fn connstr_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Seconds as PgBouncer reads them (it takes fractions).
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

fn ini_text(dir: &Path, port: u16, server_port: u16, options: &BouncerOptions) -> String {
    let server = format!("host=127.0.0.1 port={server_port}");
    let mut text = String::from("; written by pgkill-sandbox\n[databases]\n");
    if options.databases.is_empty() {
        text.push_str(&format!("* = {server}\n"));
    }
    for (alias, dbname) in &options.databases {
        text.push_str(&format!(
            "{alias} = {server} dbname={}\n",
            connstr_value(dbname)
        ));
    }
    for (alias, host, dbname) in &options.databases_at {
        text.push_str(&format!(
            "{alias} = host={} port={server_port} dbname={}\n",
            connstr_value(host),
            connstr_value(dbname)
        ));
    }
    let settings: Vec<(&str, String)> = vec![
        ("listen_addr", "127.0.0.1".into()),
        ("listen_port", port.to_string()),
        ("unix_socket_dir", dir.display().to_string()),
        ("auth_type", "scram-sha-256".into()),
        ("auth_file", dir.join(AUTH_FILE).display().to_string()),
        ("pidfile", dir.join(PID_FILE).display().to_string()),
        ("pool_mode", options.pool_mode.as_str().into()),
        ("default_pool_size", options.default_pool_size.to_string()),
        ("max_client_conn", options.max_client_conn.to_string()),
        ("server_login_retry", seconds(options.server_login_retry)),
        ("query_wait_timeout", seconds(options.query_wait_timeout)),
        ("admin_users", options.admin_users.join(",")),
        ("stats_users", options.stats_users.join(",")),
        // PgBouncer refuses unknown startup parameters otherwise.
        (
            "ignore_startup_parameters",
            options.ignore_startup_parameters.join(","),
        ),
        ("server_tls_sslmode", "disable".into()),
    ];
    text.push_str("\n[pgbouncer]\n");
    for (name, value) in settings {
        text.push_str(&format!("{name} = {value}\n"));
    }
    text
}

#[derive(Debug)]
struct Keeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Launch {
    PortTaken(Error),
    Failed(Error),
}

/// Launches PgBouncer from a keeper thread (its parent-death signal then fires when the
/// bouncer is dropped or the process dies, not when whichever thread called `start`
/// ends) and waits until it listens on `port`.
fn launch(
    binary: &BouncerBinary,
    run_as: &RunAs,
    dir: &Path,
    port: u16,
) -> std::result::Result<(Keeper, u32), Launch> {
    let log_path = dir.join(LOG);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Launch::Failed(Error::io("open", &log_path)(e)))?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| Launch::Failed(Error::io("open", &log_path)(e)))?;
    // The log is the server user's to append to when we are root.
    run_as.chown_tree(&log_path).map_err(Launch::Failed)?;

    let mut cmd = Command::new(&binary.path);
    cmd.arg(dir.join(INI))
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    run_as.apply(&mut cmd);
    let immediate = binary.version.immediate_shutdown_signal();
    // SAFETY: the closure only calls async-signal-safe functions (prctl).
    unsafe {
        cmd.pre_exec(move || {
            // Applied after setuid by std, so it survives the credential change.
            nix::sys::prctl::set_pdeathsig(immediate).map_err(std::io::Error::from)?;
            Ok(())
        });
    }

    let (started_tx, started_rx) = mpsc::channel::<std::io::Result<u32>>();
    let (exited_tx, exited_rx) = mpsc::channel::<()>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("pgbouncer-{port}"))
        .spawn(move || keep(cmd, immediate, started_tx, exited_tx, stop_rx))
        .map_err(|e| Launch::Failed(Error::io("spawn keeper thread for", dir)(e)))?;
    let keeper = Keeper {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let program_err = |detail: String| Error::Program {
        program: "pgbouncer".into(),
        detail,
    };
    let pid = match started_rx.recv() {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => {
            return Err(Launch::Failed(program_err(format!(
                "cannot run {}: {e} (it must be executable by {})",
                binary.path.display(),
                run_as.describe()
            ))))
        }
        Err(_) => return Err(Launch::Failed(program_err("keeper thread died".into()))),
    };

    // Ready: it logged that it listens on our port (so the port is its, not somebody
    // else's) and a TCP connection there is accepted.
    let listening = format!("listening on 127.0.0.1:{port}");
    let began = Instant::now();
    loop {
        if exited_rx.try_recv().is_ok() {
            let tail = log_tail(&log_path, log_offset);
            let err = program_err(format!("exited while starting; its log says:\n{tail}"));
            drop(keeper);
            return Err(if tail.contains("Address already in use") {
                Launch::PortTaken(err)
            } else {
                Launch::Failed(err)
            });
        }
        if log_tail(&log_path, log_offset).contains(&listening)
            && TcpStream::connect_timeout(
                &(Ipv4Addr::LOCALHOST, port).into(),
                Duration::from_secs(1),
            )
            .is_ok()
        {
            return Ok((keeper, pid));
        }
        if began.elapsed() > READY_TIMEOUT {
            let tail = log_tail(&log_path, log_offset);
            drop(keeper);
            return Err(Launch::Failed(Error::BouncerNotReady {
                seconds: READY_TIMEOUT.as_secs(),
                log: log_path,
                tail,
            }));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Body of the keeper thread: owns PgBouncer until told to stop (or until the sender is
/// dropped), then stops it.
fn keep(
    cmd: Command,
    immediate: Signal,
    started: mpsc::Sender<std::io::Result<u32>>,
    exited: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
) {
    crate::server::keep_child(cmd, started, exited, stop, |child| {
        shut_down(child, immediate)
    });
}

/// `immediate` (PgBouncer's immediate shutdown), then SIGKILL if it is still there.
fn shut_down(child: &mut Child, immediate: Signal) {
    crate::server::stop_child(
        child,
        "pgbouncer",
        &[
            (immediate, TERM_TIMEOUT),
            (Signal::SIGKILL, Duration::from_secs(5)),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_match_what_pgbouncer_reports() {
        assert!(BouncerVersion::V1_18.matches("1.18.0"));
        assert!(BouncerVersion::V1_18.matches("1.18"));
        assert!(!BouncerVersion::V1_18.matches("1.180.0"));
        assert!(!BouncerVersion::V1_18.matches("1.24.1"));
        assert!(BouncerVersion::V1_24_1.matches("1.24.1"));
        assert!(!BouncerVersion::V1_24_1.matches("1.24.10"));
    }

    #[test]
    fn ini_lists_databases_and_users() {
        let options = BouncerOptions::new(BouncerVersion::V1_18, PoolMode::Transaction)
            .database("app", "it's")
            .stats_user(roles::PLAIN);
        let text = ini_text(Path::new("/d"), 6000, 5432, &options);
        assert!(text.contains("\napp = host=127.0.0.1 port=5432 dbname='it\\'s'\n"));
        assert!(!text.contains("* ="));
        assert!(text.contains("listen_port = 6000\n"));
        assert!(text.contains("pool_mode = transaction\n"));
        assert!(text.contains("server_login_retry = 1\n"));
        assert!(text.contains("admin_users = postgres\n"));
        assert!(text.contains("stats_users = sandbox_plain\n"));
        let wildcard = ini_text(
            Path::new("/d"),
            6000,
            5432,
            &BouncerOptions::new(BouncerVersion::V1_18, PoolMode::Session),
        );
        assert!(wildcard.contains("\n* = host=127.0.0.1 port=5432\n"));
    }

    /// A stand-in `pgbouncer` that reports `version`, in a directory of its own.
    fn fake_bouncer(version: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgbouncer");
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho 'PgBouncer {version}'\necho 'libevent 2.1.12-stable'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn missing_version_names_the_fetch_script() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_in(BouncerVersion::V1_24_1, "".as_ref(), empty.path()).unwrap_err();
        assert!(matches!(err, Error::MissingBouncer { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("scripts/fetch-pgbouncer 1.24.1"),
            "{message}"
        );
        assert!(
            message.contains(&empty.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn override_comes_first_and_must_be_the_version() {
        let cache = tempfile::tempdir().unwrap();
        let cached = cache.path().join("1.18").join("bin");
        std::fs::create_dir_all(&cached).unwrap();
        let cached_fake = fake_bouncer("1.18.0");
        std::fs::copy(
            cached_fake.path().join("pgbouncer"),
            cached.join("pgbouncer"),
        )
        .unwrap();
        let other = fake_bouncer("1.24.1");
        let wanted = fake_bouncer("1.18.3");
        // A directory and a file path; the one of another version is passed over.
        let list =
            std::env::join_paths([other.path().to_path_buf(), wanted.path().join("pgbouncer")])
                .unwrap();
        let found = find_in(BouncerVersion::V1_18, &list, cache.path()).unwrap();
        assert_eq!(found.reported, "1.18.3");
        assert_eq!(found.path, wanted.path().join("pgbouncer"));
        // Without an override of that version, the cache's.
        let found = find_in(
            BouncerVersion::V1_18,
            other.path().as_os_str(),
            cache.path(),
        )
        .unwrap();
        assert_eq!(found.path, cached.join("pgbouncer"));
        let found = find_in(BouncerVersion::V1_24_1, &list, cache.path()).unwrap();
        assert_eq!(found.path, other.path().join("pgbouncer"));
    }

    #[test]
    fn auth_file_quotes_doubled() {
        let mut passwords = BTreeMap::new();
        passwords.insert("a\"b".to_owned(), "p\"w".to_owned());
        assert_eq!(auth_file_text(&passwords), "\"a\"\"b\" \"p\"\"w\"\n");
    }
}

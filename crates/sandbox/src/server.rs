//! One throw-away PostgreSQL server, that only the OS user who started it can enter.
//!
//! A sandbox is two private directories side by side in the sandbox root:
//!
//! - `pgkill-sandbox-XXXXXX`, the *client directory*, owned by the effective user who
//!   started the sandbox (mode 0700): `owner.pid` (the process that owns the sandbox),
//!   `server.pid` (the postmaster it started) and `pgpass`, the password file (0600) that
//!   hands every role's password to that user's clients (`psql`, `pgkill`, the tests);
//! - `pgkill-sandbox-XXXXXX.server`, the *server directory*, owned by the OS user that
//!   runs the server (the same user, or `postgres` when we are root; mode 0700): the data
//!   directory, the Unix socket (0700) and the log.
//!
//! Authentication never trusts anybody: every role gets a fresh random password per
//! sandbox, stored as SCRAM, and `pg_hba.conf` asks for it on loopback TCP and on the
//! socket; only the OS user who started the sandbox may use `peer` over the socket, as
//! the template's roles. That is how the sandbox sets the passwords right after the
//! server is ready: one connection over the socket as `postgres` (peer), one `ALTER ROLE
//! … PASSWORD` per role. The template's roles have no password, so nobody can log in
//! before that.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use pgkill_core::ServerVersion;
use tokio_postgres::{Client, Config, NoTls};

use crate::runas::RunAs;
use crate::{roles, template, Error, Installation, Result};

/// Every sandbox's client directory is this prefix and [`RANDOM_CHARS`] letters or digits.
const DIR_PREFIX: &str = "pgkill-sandbox-";
const RANDOM_CHARS: usize = 6;
/// The server directory is the client directory's name and this suffix.
const SERVER_SUFFIX: &str = ".server";
/// In the client directory: the pid of the process that owns the sandbox.
const OWNER_FILE: &str = "owner.pid";
/// In the client directory: the pid of the postmaster the sandbox started.
const SERVER_PID_FILE: &str = "server.pid";
/// In the client directory: the password file.
const PASSFILE: &str = "pgpass";
/// The `pg_ident.conf` map that lets the sandbox's own OS user in by `peer`.
const IDENT_MAP: &str = "pgkill";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// Settings of one sandbox server.
#[derive(Debug, Clone)]
pub struct Options {
    /// `max_connections` (up to ~1,200 for the benchmarks).
    pub max_connections: u32,
    /// `max_prepared_transactions` (0 disables `PREPARE TRANSACTION`).
    pub max_prepared_transactions: u32,
    /// `wal_level=logical`, needed for logical replication slots.
    pub logical_wal: bool,
    /// Any other server settings, passed as `-c name=value`.
    pub settings: Vec<(String, String)>,
    /// Files written into the data directory before the server starts (name relative to
    /// the data directory, contents, Unix mode), e.g. `server.crt`/`server.key` for TLS
    /// tests together with the setting `ssl=on`.
    pub data_files: Vec<(String, Vec<u8>, u32)>,
    /// Where the sandbox's directories go (and which directory its start sweeps);
    /// `None`: `$PGKILL_SANDBOX_DIR`, else `/dev/shm`, else the temp directory.
    pub sandbox_dir: Option<PathBuf>,
    /// The loopback port to listen on; `None`: a free one. A given port is tried once
    /// (for a test that names a server's address before starting it).
    pub port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 100,
            max_prepared_transactions: 10,
            logical_wal: false,
            settings: Vec::new(),
            data_files: Vec::new(),
            sandbox_dir: None,
            port: None,
        }
    }
}

impl Options {
    /// Sets `max_connections`.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }
    /// Enables `wal_level=logical`.
    pub fn logical_wal(mut self) -> Self {
        self.logical_wal = true;
        self
    }
    /// Writes a file into the data directory before the server starts.
    pub fn data_file(mut self, name: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.data_files
            .push((name.to_owned(), contents.into(), mode));
        self
    }
    /// Puts the sandbox's directories in `dir` instead of the default sandbox root.
    pub fn sandbox_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sandbox_dir = Some(dir.into());
        self
    }
    /// Listens on `port` (tried once) instead of a free port.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }
    /// Adds a server setting.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// How long starting a sandbox took.
#[derive(Debug, Clone, Copy)]
pub struct StartTiming {
    /// Building the version's template (`initdb` + roles), when it was not cached yet.
    pub template_build: Option<Duration>,
    /// Copying the template into the sandbox.
    pub copy: Duration,
    /// From launching `postgres` until it accepted connections.
    pub start: Duration,
    /// Giving every role its password and writing the password file (after `start`).
    pub passwords: Duration,
    /// Everything, from the call to `start` until ready.
    pub total: Duration,
}

/// A running throw-away PostgreSQL server on a loopback port.
///
/// Only the OS user who started it can log in: every role has a random password of
/// this sandbox's ([`Sandbox::password`]), written to a private password file
/// ([`Sandbox::passfile`]) for that user's clients; [`Sandbox::config`] and friends carry
/// it. Dropping the sandbox stops the server (fast shutdown, then immediate, then kill)
/// and deletes its directories; this also happens while a panicking test unwinds. If the
/// whole process dies, the server gets `SIGQUIT` from the kernel (parent-death signal)
/// and the next sandbox the same user starts on this machine removes what was left.
#[derive(Debug)]
pub struct Sandbox {
    installation: Installation,
    port: u16,
    postmaster_pid: u32,
    timing: StartTiming,
    passfile: PathBuf,
    passwords: Passwords,
    keeper: Option<Keeper>,
    // Declared after the keeper: removed once it has stopped the server.
    server_dir: Option<tempfile::TempDir>,
    client_dir: Option<tempfile::TempDir>,
}

/// The password of each role; never shown by `Debug`.
struct Passwords(Mutex<BTreeMap<String, String>>);

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Passwords").field("roles", &roles).finish()
    }
}

impl Passwords {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding the lock cannot leave the map half-updated.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Debug)]
struct Keeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Starts a server of `installation` with `options`, returning once it accepts
    /// connections and every role has its password.
    ///
    /// Blocking; call it before spawning work on a runtime, or from `spawn_blocking`.
    pub fn start(installation: &Installation, options: &Options) -> Result<Sandbox> {
        let began = Instant::now();
        let run_as = RunAs::detect()?;
        let root = options.sandbox_dir.clone().unwrap_or_else(sandbox_root);
        sweep_stale_dirs(&run_as, &root);
        let (template, template_build) = template::ensure(installation, &run_as)?;
        let os_user = effective_user_name()?;

        let (client_dir, server_dir) = private_dirs(&root)?;
        let copy_began = Instant::now();
        let data = server_dir.path().join("data");
        template::copy_data_dir(&template, &data)?;
        write_hba(&data, &os_user)?;
        write_data_files(&data, options)?;
        run_as.chown_tree(server_dir.path())?;
        let copy = copy_began.elapsed();

        let started =
            launch_on_a_free_port(installation, &run_as, &client_dir, &server_dir, options)?;
        let mut sandbox = Sandbox {
            installation: installation.clone(),
            port: started.port,
            postmaster_pid: started.postmaster_pid,
            timing: StartTiming {
                template_build,
                copy,
                start: started.took,
                passwords: Duration::ZERO,
                total: Duration::ZERO,
            },
            passfile: client_dir.path().join(PASSFILE),
            passwords: Passwords(Mutex::new(BTreeMap::new())),
            keeper: Some(started.keeper),
            server_dir: Some(server_dir),
            client_dir: Some(client_dir),
        };
        // Dropping `sandbox` on an error stops the server again.
        let passwords_began = Instant::now();
        sandbox.set_template_passwords()?;
        sandbox.timing.passwords = passwords_began.elapsed();
        sandbox.timing.total = began.elapsed();
        tracing::debug!(version = %installation.version, port = sandbox.port, timing = ?sandbox.timing, "sandbox ready");
        Ok(sandbox)
    }

    /// Starts a streaming standby of this (running) sandbox, returning once it accepts
    /// read-only connections (`pg_is_in_recovery()` is true there).
    ///
    /// The npm server packages carry no `pg_basebackup`, so the standby's data directory
    /// is an online backup taken by hand: `pg_start_backup`/`pg_backup_start` in
    /// non-exclusive mode on one connection, a copy of the data directory (with `pg_wal`,
    /// without `postmaster.pid`/`postmaster.opts`), then `pg_stop_backup`/`pg_backup_stop`,
    /// whose label text becomes the copy's `backup_label`. The copy then streams from the
    /// primary as `postgres` over loopback TCP (`primary_conninfo` with that role's
    /// password): `standby.signal` and `postgresql.auto.conf` from PostgreSQL 12,
    /// `recovery.conf` before. The standby has its own port, socket, directories and
    /// password file (the roles and their passwords are the primary's at the time of the
    /// copy), and is torn down like any sandbox. `options` must keep `max_connections`
    /// and `max_prepared_transactions` at least the primary's (hot standby requires it).
    ///
    /// Blocking, like [`Sandbox::start`].
    pub fn start_standby(&self, options: &Options) -> Result<Sandbox> {
        let began = Instant::now();
        let run_as = RunAs::detect()?;
        let root = options.sandbox_dir.clone().unwrap_or_else(sandbox_root);
        let primary_password = self.password(roles::ADMIN).ok_or_else(|| Error::Program {
            program: "sandbox".into(),
            detail: "the primary has no password for its admin role".into(),
        })?;

        let (client_dir, server_dir) = private_dirs(&root)?;
        let copy_began = Instant::now();
        let data = server_dir.path().join("data");
        self.base_backup(&data)?;
        let conninfo = format!(
            "host={} port={} user={} password={} application_name=pgkill-sandbox-standby",
            self.host(),
            self.port,
            conninfo_value(roles::ADMIN),
            conninfo_value(&primary_password)
        );
        if self.version().major >= 12 {
            write_new(&data.join("standby.signal"), b"")?;
            let auto = data.join("postgresql.auto.conf");
            let mut file = File::options()
                .append(true)
                .create(true)
                .open(&auto)
                .map_err(Error::io("open", &auto))?;
            file.write_all(format!("primary_conninfo = {}\n", conf_value(&conninfo)).as_bytes())
                .map_err(Error::io("write", &auto))?;
        } else {
            write_new(
                &data.join("recovery.conf"),
                format!(
                    "standby_mode = 'on'\nprimary_conninfo = {}\n",
                    conf_value(&conninfo)
                )
                .as_bytes(),
            )?;
        }
        write_data_files(&data, options)?;
        run_as.chown_tree(server_dir.path())?;
        let copy = copy_began.elapsed();

        let started = launch_on_a_free_port(
            &self.installation,
            &run_as,
            &client_dir,
            &server_dir,
            options,
        )?;
        let sandbox = Sandbox {
            installation: self.installation.clone(),
            port: started.port,
            postmaster_pid: started.postmaster_pid,
            timing: StartTiming {
                template_build: None,
                copy,
                start: started.took,
                passwords: Duration::ZERO,
                total: began.elapsed(),
            },
            passfile: client_dir.path().join(PASSFILE),
            passwords: Passwords(Mutex::new(self.passwords.lock().clone())),
            keeper: Some(started.keeper),
            server_dir: Some(server_dir),
            client_dir: Some(client_dir),
        };
        // Dropping `sandbox` on an error stops the server again.
        sandbox.write_passfile()?;
        tracing::debug!(version = %self.installation.version, port = sandbox.port, primary = self.port, "standby ready");
        Ok(sandbox)
    }

    /// An online backup of this server's data directory into `dest` (see
    /// [`Sandbox::start_standby`]), on one connection of a runtime of its own.
    fn base_backup(&self, dest: &Path) -> Result<()> {
        let config = self.config("postgres", roles::ADMIN);
        let src = self.data_dir();
        let (start_sql, stop_sql) = if self.version().major >= 15 {
            (
                "SELECT pg_catalog.pg_backup_start('pgkill-sandbox-standby', true)::text",
                "SELECT labelfile FROM pg_catalog.pg_backup_stop(false)",
            )
        } else {
            (
                "SELECT pg_catalog.pg_start_backup('pgkill-sandbox-standby', true, false)::text",
                "SELECT labelfile FROM pg_catalog.pg_stop_backup(false, false)",
            )
        };
        on_own_runtime("taking the standby's backup", || async {
            let client = connect(&config).await?;
            client
                .query_one(start_sql, &[])
                .await
                .map_err(Error::sql("starting a backup for the standby"))?;
            let copied = copy_live_data_dir(&src, dest);
            let row = client
                .query_one(stop_sql, &[])
                .await
                .map_err(Error::sql("stopping the backup for the standby"))?;
            copied?;
            let label: String = row.get(0);
            write_new(&dest.join("backup_label"), label.as_bytes())
        })
    }

    /// Gives every role of the template a fresh password, over the Unix socket as the
    /// bootstrap superuser (`peer`: the socket is ours alone), then writes the password file.
    fn set_template_passwords(&self) -> Result<()> {
        let mut fresh = BTreeMap::new();
        for role in roles::ALL {
            fresh.insert(role.to_owned(), roles::fresh_password()?);
        }
        let sql = roles::set_passwords_sql(fresh.iter().map(|(r, p)| (r.as_str(), p.as_str())))?;
        let mut config = Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user(roles::ADMIN)
            .dbname("postgres")
            .application_name("pgkill-sandbox")
            .connect_timeout(Duration::from_secs(10));
        on_own_runtime("setting the passwords", || async {
            let (client, connection) = config.connect(NoTls).await.map_err(Error::sql(
                "setting the sandbox's passwords (peer authentication over its Unix socket)",
            ))?;
            let connection = tokio::spawn(connection);
            client
                .batch_execute(&sql)
                .await
                .map_err(Error::sql("setting the sandbox's passwords"))?;
            drop(client);
            let _ = connection.await;
            Ok(())
        })?;
        self.passwords.lock().extend(fresh);
        self.write_passfile()
    }

    /// Rewrites the password file from the known passwords: a new file (`O_EXCL`, 0600)
    /// renamed over the old one, in the private client directory.
    fn write_passfile(&self) -> Result<()> {
        let text = passfile_text(self.port, self.socket_dir(), &self.passwords.lock());
        let dir = self.passfile.parent().unwrap_or(Path::new("/nonexistent"));
        let mut file = tempfile::NamedTempFile::new_in(dir)
            .map_err(Error::io("create a password file in", dir))?;
        file.write_all(text.as_bytes())
            .map_err(Error::io("write", file.path().to_path_buf()))?;
        file.persist(&self.passfile)
            .map_err(|e| Error::io("write", &self.passfile)(e.error))?;
        Ok(())
    }

    /// The server's version.
    pub fn version(&self) -> ServerVersion {
        self.installation.version
    }

    /// The binaries this server runs.
    pub fn installation(&self) -> &Installation {
        &self.installation
    }

    /// The loopback TCP port (the Unix socket in [`Sandbox::socket_dir`] uses it too).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The loopback address the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The directory holding the server's Unix socket (mode 0700, owned by the server's
    /// OS user).
    pub fn socket_dir(&self) -> &Path {
        self.server_dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.socket_dir().join("data")
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.socket_dir().join("server.log")
    }

    /// The password file (libpq's format, mode 0600, in a directory of mode 0700 owned by
    /// the OS user who started the sandbox) with every role's password for this server,
    /// over TCP (`127.0.0.1`, `localhost`) and over the socket. Give it to clients as
    /// `PGPASSFILE` or `passfile=`.
    pub fn passfile(&self) -> &Path {
        &self.passfile
    }

    /// The password of `role` in this sandbox (the template's roles, and those made with
    /// [`Sandbox::create_role`]); `None` for a role the sandbox did not make.
    pub fn password(&self, role: &str) -> Option<String> {
        self.passwords.lock().get(role).cloned()
    }

    /// Every role this sandbox knows the password of, with it (for a pooler's auth file).
    pub(crate) fn role_passwords(&self) -> BTreeMap<String, String> {
        self.passwords.lock().clone()
    }

    /// What a client program needs in its environment to log in to this server as any
    /// of its roles: `PGHOST`, `PGPORT` and `PGPASSFILE` (add `PGUSER` or `-U`).
    pub fn client_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.host().to_owned()),
            ("PGPORT", self.port.to_string()),
            ("PGPASSFILE", self.passfile.display().to_string()),
        ]
    }

    /// Process id of the postmaster.
    pub fn postmaster_pid(&self) -> u32 {
        self.postmaster_pid
    }

    /// How long starting took.
    pub fn timing(&self) -> StartTiming {
        self.timing
    }

    /// Connection settings for `role` on database `db`, over TCP on loopback, with the
    /// role's password.
    pub fn config(&self, db: &str, role: &str) -> Config {
        let mut config = self.config_without_host(db, role);
        config.host(self.host());
        config
    }

    /// Connection settings over the Unix socket (sessions show `client_addr` NULL), with
    /// the role's password.
    pub fn socket_config(&self, db: &str, role: &str) -> Config {
        let mut config = self.config_without_host(db, role);
        config.host_path(self.socket_dir());
        config
    }

    fn config_without_host(&self, db: &str, role: &str) -> Config {
        let mut config = Config::new();
        config
            .port(self.port)
            .user(role)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = self.password(role) {
            config.password(password);
        }
        config
    }

    /// Connects as `role` to `db`; the connection is driven by a task on the current runtime.
    pub async fn connect(&self, db: &str, role: &str) -> Result<Client> {
        connect(&self.config(db, role)).await
    }

    /// Connects as the bootstrap superuser to `db`.
    pub async fn admin(&self, db: &str) -> Result<Client> {
        self.connect(db, roles::ADMIN).await
    }

    /// Creates database `name` (owned by `owner`, or the admin role).
    pub async fn create_database(&self, name: &str, owner: Option<&str>) -> Result<()> {
        let admin = self.admin("postgres").await?;
        let mut sql = format!("CREATE DATABASE {}", pgkill_core::quote_ident(name)?);
        if let Some(owner) = owner {
            sql.push_str(&format!(" OWNER {}", pgkill_core::quote_ident(owner)?));
        }
        admin
            .batch_execute(&sql)
            .await
            .map_err(Error::sql(format!("creating database {name}")))
    }

    /// Creates role `name` with `attributes` (SQL role options such as `LOGIN CREATEDB`,
    /// written by the caller) and a fresh password of this sandbox's, which
    /// [`Sandbox::config`] and the password file then carry.
    pub async fn create_role(&self, name: &str, attributes: &str) -> Result<()> {
        let password = roles::fresh_password()?;
        let admin = self.admin("postgres").await?;
        admin
            .batch_execute(&format!(
                "CREATE ROLE {} {attributes} PASSWORD {}",
                pgkill_core::quote_ident(name)?,
                pgkill_core::quote_literal(&roles::scram_secret(&password)?)?
            ))
            .await
            .map_err(Error::sql(format!("creating role {name}")))?;
        self.passwords.lock().insert(name.to_owned(), password);
        self.write_passfile()
    }

    /// A libpq connection string for `role` on `db` over TCP; the password comes from
    /// [`Sandbox::passfile`] (`passfile=`), so it never shows in a command line.
    pub fn conninfo(&self, db: &str, role: &str) -> String {
        format!(
            "host={} port={} user={} dbname={} passfile={}",
            self.host(),
            self.port,
            conninfo_value(role),
            conninfo_value(db),
            conninfo_value(&self.passfile.display().to_string())
        )
    }

    /// Stops the server and removes its directories now (dropping does the same).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // The keeper stops the server when dropped; only then are the directories removed.
        drop(self.keeper.take());
        for dir in [self.server_dir.take(), self.client_dir.take()]
            .into_iter()
            .flatten()
        {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!(dir = %path.display(), "could not remove sandbox directory: {e}");
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Connects with `config` and drives the connection on a background task.
pub(crate) async fn connect(config: &Config) -> Result<Client> {
    let (client, connection) = config.connect(NoTls).await.map_err(Error::sql(format!(
        "connecting to {:?} as {:?}",
        config.get_dbname().unwrap_or_default(),
        config.get_user().unwrap_or_default()
    )))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The name of the effective user, whom `peer` authentication lets in.
fn effective_user_name() -> Result<String> {
    let uid = Uid::effective();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => Ok(user.name),
        Ok(None) => Err(Error::RunAs(format!(
            "uid {uid} has no user name, which peer authentication over the sandbox's socket needs"
        ))),
        Err(e) => Err(Error::RunAs(format!("looking up uid {uid}: {e}"))),
    }
}

/// Creates `path` with `contents`: a new file (never an existing one, never through a
/// symlink), mode 0600.
pub(crate) fn write_new(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(o_nofollow())
        .open(path)
        .map_err(Error::io("create", path))?;
    file.write_all(contents).map_err(Error::io("write", path))
}

fn o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// Reads a small file of ours, never through a symlink.
fn read_own_file(path: &Path) -> Option<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(o_nofollow())
        .open(path)
        .ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    Some(text)
}

fn server_dir_name(client_dir: &Path) -> String {
    let name = client_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name}{SERVER_SUFFIX}")
}

/// The password file's lines: every role, over TCP by address and by name, and over the
/// socket (libpq matches a socket connection by its directory).
fn passfile_text(port: u16, socket_dir: &Path, passwords: &BTreeMap<String, String>) -> String {
    let socket = socket_dir.display().to_string();
    let mut text = String::new();
    for (role, password) in passwords {
        for host in ["127.0.0.1", "localhost", socket.as_str()] {
            text.push_str(&format!(
                "{}:{port}:*:{}:{}\n",
                passfile_field(host),
                passfile_field(role),
                passfile_field(password)
            ));
        }
    }
    text
}

/// A field of a password file: `:` and `\` escaped with `\`.
fn passfile_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// A conninfo value, quoted when it has to be.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\', '=']) {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs the future `work` makes on a runtime of its own, on a thread of its own, and
/// waits for it: [`Sandbox::start`] is blocking and may be called from inside a runtime,
/// which cannot be blocked on.
fn on_own_runtime<T, F>(what: &str, work: impl FnOnce() -> F + Send) -> Result<T>
where
    T: Send,
    F: std::future::Future<Output = Result<T>>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::Program {
                        program: "tokio".into(),
                        detail: format!("cannot start a runtime: {e}"),
                    })?;
                runtime.block_on(work())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Program {
                    program: "sandbox".into(),
                    detail: format!("the thread {what} panicked"),
                })
            })
    })
}

/// A sandbox's two private (0700) directories, in `root`: the client directory (the
/// invoking user's: owner record, server record, password file) and the server
/// directory beside it (handed to the server's OS user: data, socket, log).
fn private_dirs(root: &Path) -> Result<(tempfile::TempDir, tempfile::TempDir)> {
    let private = std::fs::Permissions::from_mode(0o700);
    let client_dir = tempfile::Builder::new()
        .prefix(DIR_PREFIX)
        .rand_bytes(RANDOM_CHARS)
        .permissions(private.clone())
        .tempdir_in(root)
        .map_err(Error::io("create sandbox directory in", root))?;
    write_new(
        &client_dir.path().join(OWNER_FILE),
        std::process::id().to_string().as_bytes(),
    )?;
    let server_dir = tempfile::Builder::new()
        .prefix(&server_dir_name(client_dir.path()))
        .rand_bytes(0)
        .permissions(private)
        .tempdir_in(root)
        .map_err(Error::io("create sandbox server directory in", root))?;
    Ok((client_dir, server_dir))
}

/// Writes [`Options::data_files`] into the data directory `data`.
fn write_data_files(data: &Path, options: &Options) -> Result<()> {
    for (name, contents, mode) in &options.data_files {
        let path = data.join(name);
        std::fs::write(&path, contents).map_err(Error::io("write", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode))
            .map_err(Error::io("chmod", &path))?;
    }
    Ok(())
}

/// A server that [`launch_on_a_free_port`] started.
struct Started {
    keeper: Keeper,
    postmaster_pid: u32,
    port: u16,
    /// From launch to accepting connections.
    took: Duration,
}

/// Launches the server of `server_dir` on a free loopback port, trying another port
/// when the chosen one was taken meanwhile.
fn launch_on_a_free_port(
    installation: &Installation,
    run_as: &RunAs,
    client_dir: &tempfile::TempDir,
    server_dir: &tempfile::TempDir,
    options: &Options,
) -> Result<Started> {
    let mut last_error = None;
    let attempts = if options.port.is_some() {
        1
    } else {
        PORT_ATTEMPTS
    };
    for _ in 0..attempts {
        let port = match options.port {
            Some(p) => p,
            None => free_port()?,
        };
        let began = Instant::now();
        let record = client_dir.path().join(SERVER_PID_FILE);
        match launch(
            installation,
            run_as,
            server_dir.path(),
            &record,
            port,
            options,
        ) {
            Ok((keeper, postmaster_pid)) => {
                return Ok(Started {
                    keeper,
                    postmaster_pid,
                    port,
                    took: began.elapsed(),
                })
            }
            Err(Launch::PortTaken(e)) => last_error = Some(e),
            Err(Launch::Failed(e)) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::Program {
        program: "postgres".into(),
        detail: "could not find a free port".into(),
    }))
}

enum Launch {
    PortTaken(Error),
    Failed(Error),
}

pub(crate) fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::io("bind", "127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("bind", "127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// Writes `pg_hba.conf` and `pg_ident.conf`: never `trust`. The OS user who started the
/// sandbox (`os_user`) may be any of the template's roles over the Unix socket (`peer`),
/// which only that user and the server's OS user can reach; every other login, and every
/// role made later, gives its password (SCRAM) on the socket and on loopback TCP.
fn write_hba(data: &Path, os_user: &str) -> Result<()> {
    let roles = roles::ALL.map(hba_token).join(",");
    let hba = format!(
        "# written by pgkill-sandbox: a password (SCRAM) for every login, except the\n\
         # sandbox's own OS user over the Unix socket (peer, map {IDENT_MAP} in pg_ident.conf)\n\
         local all {roles} peer map={IDENT_MAP}\n\
         local replication {roles} peer map={IDENT_MAP}\n\
         local all all scram-sha-256\n\
         local replication all scram-sha-256\n\
         host all all 127.0.0.1/32 scram-sha-256\n\
         host all all ::1/128 scram-sha-256\n\
         host replication all 127.0.0.1/32 scram-sha-256\n\
         host replication all ::1/128 scram-sha-256\n"
    );
    let mut ident = String::from("# written by pgkill-sandbox\n");
    for role in roles::ALL {
        ident.push_str(&format!(
            "{IDENT_MAP} {} {}\n",
            hba_token(os_user),
            hba_token(role)
        ));
    }
    for (name, text) in [("pg_hba.conf", hba), ("pg_ident.conf", ident)] {
        let path = data.join(name);
        std::fs::write(&path, text).map_err(Error::io("write", &path))?;
    }
    Ok(())
}

/// A value of `postgresql.conf`/`recovery.conf`: single-quoted, quotes doubled.
fn conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Copies the data directory of a running server (during a backup) to `dest`: files
/// that vanish meanwhile are skipped, as are `postmaster.pid` and `postmaster.opts`.
fn copy_live_data_dir(src: &Path, dest: &Path) -> Result<()> {
    let meta = std::fs::metadata(src).map_err(Error::io("stat", src))?;
    std::fs::DirBuilder::new()
        .mode(meta.mode() & 0o777)
        .create(dest)
        .map_err(Error::io("create", dest))?;
    for entry in std::fs::read_dir(src).map_err(Error::io("read directory", src))? {
        let entry = entry.map_err(Error::io("read directory", src))?;
        let name = entry.file_name();
        if name == "postmaster.pid" || name == "postmaster.opts" {
            continue;
        }
        let from = entry.path();
        let to = dest.join(&name);
        let kind = match entry.file_type() {
            Ok(kind) => kind,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", &from)(e)),
        };
        if kind.is_dir() {
            copy_live_data_dir(&from, &to)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&from).map_err(Error::io("read link", &from))?;
            std::os::unix::fs::symlink(&link, &to).map_err(Error::io("create link", &to))?;
        } else {
            match std::fs::copy(&from, &to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_file(&to);
                }
                Err(e) => return Err(Error::io("copy to", &to)(e)),
            }
        }
    }
    Ok(())
}

/// A quoted token of `pg_hba.conf`/`pg_ident.conf` (never a keyword such as `all`).
fn hba_token(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn server_args(dir: &Path, port: u16, options: &Options) -> Vec<String> {
    let mut settings: Vec<(String, String)> = vec![
        ("listen_addresses".into(), "127.0.0.1".into()),
        ("port".into(), port.to_string()),
        ("unix_socket_directories".into(), dir.display().to_string()),
        // Only the server's OS user (and root) may even reach the socket.
        ("unix_socket_permissions".into(), "0700".into()),
        // 10-13 default to md5: passwords set later (ALTER ROLE … PASSWORD) are SCRAM too.
        ("password_encryption".into(), "scram-sha-256".into()),
        (
            "max_connections".into(),
            options.max_connections.to_string(),
        ),
        (
            "max_prepared_transactions".into(),
            options.max_prepared_transactions.to_string(),
        ),
        (
            "wal_level".into(),
            if options.logical_wal {
                "logical"
            } else {
                "replica"
            }
            .into(),
        ),
        ("shared_buffers".into(), "16MB".into()),
        ("fsync".into(), "off".into()),
        ("full_page_writes".into(), "off".into()),
        ("logging_collector".into(), "off".into()),
        ("log_min_messages".into(), "warning".into()),
    ];
    settings.extend(options.settings.iter().cloned());
    let mut args = vec!["-D".to_owned(), dir.join("data").display().to_string()];
    for (name, value) in settings {
        args.push("-c".into());
        args.push(format!("{name}={value}"));
    }
    args
}

/// Launches the postmaster from a keeper thread and waits until it is ready.
///
/// The postmaster is a child of the keeper thread, which lives exactly as long as the
/// sandbox: its parent-death signal fires when the sandbox stops or the process dies,
/// never because some unrelated thread that called `start` went away.
fn launch(
    inst: &Installation,
    run_as: &RunAs,
    dir: &Path,
    record: &Path,
    port: u16,
    options: &Options,
) -> std::result::Result<(Keeper, u32), Launch> {
    let log_path = dir.join("server.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Launch::Failed(Error::io("open", &log_path)(e)))?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log_err = log
        .try_clone()
        .map_err(|e| Launch::Failed(Error::io("open", &log_path)(e)))?;

    let mut cmd = Command::new(inst.program("postgres"));
    cmd.args(server_args(dir, port, options))
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    run_as.apply(&mut cmd);
    // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid).
    unsafe {
        cmd.pre_exec(|| {
            // Applied after setuid by std, so it survives the credential change.
            nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).map_err(std::io::Error::from)?;
            Ok(())
        });
    }

    let (started_tx, started_rx) = mpsc::channel::<std::io::Result<u32>>();
    let (exited_tx, exited_rx) = mpsc::channel::<()>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("pg-sandbox-{port}"))
        .spawn(move || keep(cmd, started_tx, exited_tx, stop_rx))
        .map_err(|e| Launch::Failed(Error::io("spawn keeper thread for", dir)(e)))?;
    let keeper = Keeper {
        stop: Some(stop_tx),
        thread: Some(thread),
    };

    let program_err = |detail: String| Error::Program {
        program: "postgres".into(),
        detail,
    };
    let pid = match started_rx.recv() {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => {
            return Err(Launch::Failed(program_err(format!(
                "cannot run {}: {e} (it must be executable by {})",
                inst.program("postgres").display(),
                run_as.describe()
            ))))
        }
        Err(_) => return Err(Launch::Failed(program_err("keeper thread died".into()))),
    };
    // Written before anything else can fail, so that a sweep finds the server we started.
    let _ = std::fs::remove_file(record);
    write_new(record, pid.to_string().as_bytes()).map_err(Launch::Failed)?;

    let began = Instant::now();
    let pid_file = dir.join("data").join("postmaster.pid");
    loop {
        if exited_rx.try_recv().is_ok() {
            let tail = log_tail(&log_path, log_offset);
            let err = program_err(format!("exited while starting; its log says:\n{tail}"));
            drop(keeper);
            return Err(
                if tail.contains("could not bind")
                    || tail.contains("could not create any TCP/IP sockets")
                {
                    Launch::PortTaken(err)
                } else {
                    Launch::Failed(err)
                },
            );
        }
        // "ready" is written once the server accepts connections, on every socket (the
        // sockets are opened long before): the passwords are set over one right away.
        if postmaster_ready(&pid_file) {
            return Ok((keeper, pid));
        }
        if began.elapsed() > READY_TIMEOUT {
            let tail = log_tail(&log_path, log_offset);
            drop(keeper);
            return Err(Launch::Failed(Error::NotReady {
                seconds: READY_TIMEOUT.as_secs(),
                log: log_path,
                tail,
            }));
        }
        // Reading the small file is cheap; a coarser poll would add to every start.
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Body of the keeper thread: owns the postmaster until told to stop (or until the
/// sender is dropped), then shuts it down.
fn keep(
    cmd: Command,
    started: mpsc::Sender<std::io::Result<u32>>,
    exited: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
) {
    keep_child(cmd, started, exited, stop, shut_down);
}

/// Body of a keeper thread of a server the sandbox runs (postmaster, PgBouncer): spawns
/// `cmd`, says its pid on `started` (or why it did not start), watches for it dying alone
/// (then says so on `exited`) until told to stop or the sender is dropped, then stops it
/// with `shut_down`.
pub(crate) fn keep_child(
    mut cmd: Command,
    started: mpsc::Sender<std::io::Result<u32>>,
    exited: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
    shut_down: impl FnOnce(&mut Child),
) {
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(child.id()));
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(20)) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            let _ = exited.send(());
            return;
        }
    }
    shut_down(&mut child);
}

/// Fast shutdown (SIGINT); if that hangs, immediate shutdown (SIGQUIT); then SIGKILL.
fn shut_down(child: &mut Child) {
    stop_child(
        child,
        "postmaster",
        &[
            (Signal::SIGINT, FAST_SHUTDOWN_TIMEOUT),
            (Signal::SIGQUIT, Duration::from_secs(5)),
            (Signal::SIGKILL, Duration::from_secs(5)),
        ],
    );
}

/// Stops `child` (a server the sandbox runs, named `what` in the log): each signal in
/// turn, waiting up to its patience for the process to exit, then reaps it.
pub(crate) fn stop_child(child: &mut Child, what: &str, steps: &[(Signal, Duration)]) {
    let pid = Pid::from_raw(child.id() as i32);
    for &(signal, patience) in steps {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(pid, signal);
        let began = Instant::now();
        while began.elapsed() < patience {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(pid = pid.as_raw(), ?signal, what, "did not stop in time");
    }
    let _ = child.wait();
}

/// PostgreSQL 10+ writes its state into line 8 of `postmaster.pid`; `ready` means it
/// accepts connections, `standby` that a hot standby accepts read-only ones (these are
/// what `pg_ctl -w` waits for).
fn postmaster_ready(pid_file: &Path) -> bool {
    let Ok(file) = File::open(pid_file) else {
        return false;
    };
    BufReader::new(file)
        .lines()
        .nth(7)
        .and_then(|l| l.ok())
        .is_some_and(|l| matches!(l.trim(), "ready" | "standby"))
}

pub(crate) fn log_tail(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Where sandbox directories go: `$PGKILL_SANDBOX_DIR`, else `/dev/shm` when it is a
/// writable directory (a server on tmpfs starts faster and its copy of the template
/// costs no disk writes), else the system temp directory.
pub(crate) fn sandbox_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGKILL_SANDBOX_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if nix::unistd::access(
        shm,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok()
    {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

/// Removes the sandboxes of ours whose owning process is gone (it was killed before it
/// could clean up), stopping a server of theirs that still runs.
///
/// "Ours" is decided without trusting anything another user can write: a client
/// directory named like ours, a real directory (not a symlink) owned by the effective
/// user and private to it; its server directory a real directory owned by the OS user
/// that runs our servers (the effective user, or `postgres` when we are root); and the
/// only process ever signalled is the postmaster recorded in our client directory, and
/// only while its command line runs exactly that server directory's data directory.
/// A directory planted by anybody else, or naming somebody else's server, is left alone.
fn sweep_stale_dirs(run_as: &RunAs, root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let euid = Uid::effective().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_client_dir_name(name) {
            continue;
        }
        let dir = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != euid || meta.mode() & 0o077 != 0 {
            continue;
        }
        let Some(owner) = read_own_file(&dir.join(OWNER_FILE)).and_then(|t| parse_pid(&t)) else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let server_dir = root.join(format!("{name}{SERVER_SUFFIX}"));
        let server_dir_ours = std::fs::symlink_metadata(&server_dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == run_as.uid());
        if server_dir_ours {
            if let Some(pid) = read_own_file(&dir.join(SERVER_PID_FILE)).and_then(|t| parse_pid(&t))
            {
                stop_stale_postmaster(pid, &server_dir.join("data"), run_as.uid());
            }
            tracing::debug!(dir = %server_dir.display(), "removing stale sandbox directory");
            let _ = std::fs::remove_dir_all(&server_dir);
        }
        tracing::debug!(dir = %dir.display(), "removing stale sandbox directory");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `pgkill-sandbox-` and exactly [`RANDOM_CHARS`] letters or digits.
fn is_client_dir_name(name: &str) -> bool {
    name.strip_prefix(DIR_PREFIX).is_some_and(|rest| {
        rest.len() == RANDOM_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// SIGQUITs `pid` if it is a postmaster of `server_uid` running the data directory
/// `data` (its `-D` argument, exactly), and waits a little for it to go.
fn stop_stale_postmaster(pid: u32, data: &Path, server_uid: u32) {
    if !runs_data_dir(pid, data, server_uid) {
        return;
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
    let began = Instant::now();
    while process_alive(pid) && began.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` belongs to `uid` and was started with `-D data`.
fn runs_data_dir(pid: u32, data: &Path, uid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !std::fs::metadata(&proc_dir).is_ok_and(|m| m.uid() == uid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_dir.join("cmdline")) else {
        return false;
    };
    let want = data.as_os_str().as_encoded_bytes();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|pair| pair[0] == b"-D" && pair[1] == want)
}

fn parse_pid(text: &str) -> Option<u32> {
    text.lines().next()?.trim().parse().ok()
}

//! One throw-away PostgreSQL server.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pgkill_core::ServerVersion;
use tokio_postgres::{Client, Config, NoTls};

use crate::runas::RunAs;
use crate::{roles, template, Error, Installation, Result};

const DIR_PREFIX: &str = "pgkill-sandbox-";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// How TCP clients authenticate. Unix-socket clients are always trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// Any role connects without a password.
    #[default]
    Trust,
    /// TCP clients must give the role's password (see [`roles::password`]).
    Password,
}

/// Settings of one sandbox server.
#[derive(Debug, Clone)]
pub struct Options {
    /// `max_connections` (up to ~1,200 for the benchmarks).
    pub max_connections: u32,
    /// `max_prepared_transactions` (0 disables `PREPARE TRANSACTION`).
    pub max_prepared_transactions: u32,
    /// `wal_level=logical`, needed for logical replication slots.
    pub logical_wal: bool,
    /// How TCP clients authenticate.
    pub auth: Auth,
    /// Any other server settings, passed as `-c name=value`.
    pub settings: Vec<(String, String)>,
    /// Files written into the data directory before the server starts (name relative to
    /// the data directory, contents, Unix mode), e.g. `server.crt`/`server.key` for TLS
    /// tests together with the setting `ssl=on`.
    pub data_files: Vec<(String, Vec<u8>, u32)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 100,
            max_prepared_transactions: 10,
            logical_wal: false,
            auth: Auth::Trust,
            settings: Vec::new(),
            data_files: Vec::new(),
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
    /// Sets how TCP clients authenticate.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    /// Writes a file into the data directory before the server starts.
    pub fn data_file(mut self, name: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.data_files
            .push((name.to_owned(), contents.into(), mode));
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
    /// Everything, from the call to `start` until ready.
    pub total: Duration,
}

/// A running throw-away PostgreSQL server on a loopback port.
///
/// Dropping it stops the server (fast shutdown, then immediate, then kill) and deletes
/// its directory; this also happens while a panicking test unwinds. If the whole process
/// dies, the server gets `SIGQUIT` from the kernel (parent-death signal) and the next
/// sandbox started on this machine removes the directory left behind.
#[derive(Debug)]
pub struct Sandbox {
    installation: Installation,
    port: u16,
    postmaster_pid: u32,
    timing: StartTiming,
    keeper: Option<Keeper>,
    // Declared last: removed after the keeper has stopped the server.
    dir: Option<tempfile::TempDir>,
}

#[derive(Debug)]
struct Keeper {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sandbox {
    /// Starts a server of `installation` with `options`, returning once it accepts connections.
    ///
    /// Blocking; call it before spawning work on a runtime, or from `spawn_blocking`.
    pub fn start(installation: &Installation, options: &Options) -> Result<Sandbox> {
        let began = Instant::now();
        sweep_stale_dirs();
        let run_as = RunAs::detect()?;
        let (template, template_build) = template::ensure(installation, &run_as)?;

        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in(sandbox_root())
            .map_err(Error::io("create sandbox directory in", sandbox_root()))?;
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .map_err(Error::io("write", dir.path().join("owner.pid")))?;
        let copy_began = Instant::now();
        let data = dir.path().join("data");
        template::copy_data_dir(&template, &data)?;
        write_hba(&data, options.auth)?;
        for (name, contents, mode) in &options.data_files {
            let path = data.join(name);
            std::fs::write(&path, contents).map_err(Error::io("write", &path))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                .map_err(Error::io("chmod", &path))?;
        }
        run_as.chown_tree(dir.path())?;
        let copy = copy_began.elapsed();

        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let start_began = Instant::now();
            match launch(installation, &run_as, dir.path(), port, options) {
                Ok((keeper, postmaster_pid)) => {
                    let timing = StartTiming {
                        template_build,
                        copy,
                        start: start_began.elapsed(),
                        total: began.elapsed(),
                    };
                    tracing::debug!(version = %installation.version, port, ?timing, "sandbox ready");
                    return Ok(Sandbox {
                        installation: installation.clone(),
                        port,
                        postmaster_pid,
                        timing,
                        keeper: Some(keeper),
                        dir: Some(dir),
                    });
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

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir
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

    /// Process id of the postmaster.
    pub fn postmaster_pid(&self) -> u32 {
        self.postmaster_pid
    }

    /// How long starting took.
    pub fn timing(&self) -> StartTiming {
        self.timing
    }

    /// Connection settings for `role` on database `db`, over TCP on loopback.
    pub fn config(&self, db: &str, role: &str) -> Config {
        let mut config = self.config_without_host(db, role);
        config.host(self.host());
        config
    }

    /// Connection settings over the Unix socket (sessions show `client_addr` NULL).
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
            .password(roles::password(role))
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
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

    /// A libpq connection string for `role` on `db` (no password: sandboxes trust loopback
    /// unless started with [`Auth::Password`]).
    pub fn conninfo(&self, db: &str, role: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host(),
            self.port,
            role,
            db
        )
    }

    /// Stops the server and removes its directory now (dropping does the same).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // The keeper stops the server when dropped; only then is the directory removed.
        drop(self.keeper.take());
        if let Some(dir) = self.dir.take() {
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

enum Launch {
    PortTaken(Error),
    Failed(Error),
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(Error::io("bind", "127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("bind", "127.0.0.1:0"))?
        .port();
    Ok(port)
}

fn write_hba(data: &Path, auth: Auth) -> Result<()> {
    let host = match auth {
        Auth::Trust => "trust",
        Auth::Password => "md5",
    };
    let hba = format!(
        "# written by pgkill-sandbox\n\
         local all all trust\n\
         local replication all trust\n\
         host all all 127.0.0.1/32 {host}\n\
         host all all ::1/128 {host}\n\
         host replication all 127.0.0.1/32 {host}\n\
         host replication all ::1/128 {host}\n"
    );
    let path = data.join("pg_hba.conf");
    std::fs::write(&path, hba).map_err(Error::io("write", &path))
}

fn server_args(dir: &Path, port: u16, options: &Options) -> Vec<String> {
    let mut settings: Vec<(String, String)> = vec![
        ("listen_addresses".into(), "127.0.0.1".into()),
        ("port".into(), port.to_string()),
        ("unix_socket_directories".into(), dir.display().to_string()),
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
        if postmaster_ready(&pid_file) && TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
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
        std::thread::sleep(Duration::from_millis(5));
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
    mut cmd: Command,
    started: mpsc::Sender<std::io::Result<u32>>,
    exited: mpsc::Sender<()>,
    stop: mpsc::Receiver<()>,
) {
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let _ = started.send(Ok(child.id()));
    // Until told to stop (or the sandbox is dropped), watch for the server dying alone.
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
    let pid = Pid::from_raw(child.id() as i32);
    for (signal, patience) in [
        (Signal::SIGINT, FAST_SHUTDOWN_TIMEOUT),
        (Signal::SIGQUIT, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(pid, signal);
        let began = Instant::now();
        while began.elapsed() < patience {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(
            pid = pid.as_raw(),
            ?signal,
            "postmaster did not stop in time"
        );
    }
    let _ = child.wait();
}

/// PostgreSQL 10+ writes its state into line 8 of `postmaster.pid`; `ready` means it
/// accepts connections (this is what `pg_ctl -w` waits for).
fn postmaster_ready(pid_file: &Path) -> bool {
    let Ok(file) = File::open(pid_file) else {
        return false;
    };
    BufReader::new(file)
        .lines()
        .nth(7)
        .and_then(|l| l.ok())
        .is_some_and(|l| l.trim() == "ready")
}

fn log_tail(path: &Path, offset: u64) -> String {
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
fn sandbox_root() -> PathBuf {
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

/// Removes sandbox directories whose owning process is gone (it was killed before it
/// could clean up), stopping any server still running in them.
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(sandbox_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(DIR_PREFIX) || name.starts_with("pgkill-sandbox-cache") {
            continue;
        }
        let dir = entry.path();
        let Some(owner) = read_pid(&dir.join("owner.pid")) else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        if let Some(postmaster) = read_pid(&dir.join("data").join("postmaster.pid")) {
            let is_postgres = std::fs::read_to_string(format!("/proc/{postmaster}/cmdline"))
                .is_ok_and(|c| c.contains(&dir.display().to_string()));
            if is_postgres && process_alive(postmaster) {
                let _ = kill(Pid::from_raw(postmaster as i32), Signal::SIGQUIT);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        tracing::debug!(dir = %dir.display(), "removing stale sandbox directory");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

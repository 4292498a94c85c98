//! Opening the connection: TLS per `sslmode`, the password prompt, and errors that say
//! what to do.

use std::io::{self, IsTerminal};

use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{ConnectError, Result};
use super::require_auth::StartupScanner;
use super::stream::{self, Socket, Watched, WatchedTls};
use super::tls;
use super::{
    ChannelBinding, Host, Password, PasswordSource, Settings, SslMode, TargetSessionAttrs,
    APPLICATION_NAME,
};

/// The task driving a connection; it ends when the [`Client`] is dropped or the server
/// closes the connection, with the error that closed it, if any.
pub type ConnectionTask = JoinHandle<std::result::Result<(), tokio_postgres::Error>>;

/// Asks the user for a password.
pub trait PasswordPrompt: Send + Sync {
    /// Whether asking is possible (stdin is a terminal). Asked before prompting because
    /// the server wanted a password; `-W` prompts without asking this.
    fn can_prompt(&self) -> bool;
    /// Shows `message` and reads a password without echoing it.
    fn prompt(&self, message: &str) -> io::Result<Password>;
}

/// Prompts on the terminal (`/dev/tty`) without echo, via `rpassword`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TerminalPrompt;

impl PasswordPrompt for TerminalPrompt {
    fn can_prompt(&self) -> bool {
        io::stdin().is_terminal()
    }

    fn prompt(&self, message: &str) -> io::Result<Password> {
        rpassword::prompt_password(message).map(Password::new)
    }
}

/// Never prompts (scripts, the daemon, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPrompt;

impl PasswordPrompt for NoPrompt {
    fn can_prompt(&self) -> bool {
        false
    }

    fn prompt(&self, _message: &str) -> io::Result<Password> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no terminal to ask for the password on",
        ))
    }
}

/// Connects with `settings` as `application_name=pgkill` and spawns the connection onto
/// the current tokio runtime.
///
/// Prompts for the password first with `-W`; otherwise only when the server asks for a
/// password pgkill does not have and [`PasswordPrompt::can_prompt`] (then it retries
/// once). When nobody named the database and `postgres` does not exist, it tries
/// `template1`, like `dropdb`. Prompting blocks the calling thread while the user types.
pub async fn connect(
    settings: &Settings,
    prompt: &dyn PasswordPrompt,
) -> Result<(Client, ConnectionTask)> {
    let (client, task, _) = connect_reusable(settings, prompt).await?;
    Ok((client, task))
}

/// Like [`connect`], and also returns the settings that worked, for connecting again
/// without asking anything: the password typed at the prompt (and `-W` cleared), the
/// database actually reached (`template1` when the default `postgres` is missing), and
/// the one server reached when the connection string named several (so that a
/// reconnect never lands on another server unseen).
///
/// With several hosts (`host=a,b port=1,2`), as libpq: each is tried in order (in a
/// random order with `load_balance_hosts=random`); pgkill moves on to the next when one
/// cannot be reached, times out (`connect_timeout` is per host) or answers 57P03 (not
/// accepting connections yet), and when the server reached is not of the kind
/// `target_session_attrs` asks for (`prefer-standby`: a standby, else any server on a
/// second round). Any other failure (a wrong password, a missing database, TLS refused)
/// ends the attempt at once, as in libpq.
pub async fn connect_reusable(
    settings: &Settings,
    prompt: &dyn PasswordPrompt,
) -> Result<(Client, ConnectionTask, Settings)> {
    if settings.endpoints.len() <= 1 && settings.target_session_attrs == TargetSessionAttrs::Any {
        let (client, task, settled, kind) = connect_one(settings, prompt).await?;
        crate::sessions::register_own_pid(kind.server, kind.pid);
        return Ok((client, task, settled));
    }
    let mut order: Vec<usize> = (0..settings.endpoints.len()).collect();
    if settings.load_balance_hosts {
        shuffle(&mut order);
    }
    let rounds = match settings.target_session_attrs {
        TargetSessionAttrs::PreferStandby => {
            vec![TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
        }
        other => vec![other],
    };
    let mut attempts = Vec::new();
    // `-W` asks once, before the first host, for every host (as psql does).
    let forced = match settings.force_password_prompt {
        true => Some(
            prompt
                .prompt(&format!("Password for user {}: ", settings.user))
                .map_err(|source| ConnectError::Prompt { source })?,
        ),
        false => None,
    };
    let mut typed = forced.clone();
    let second_round = rounds.len() > 1;
    for want in rounds {
        let round = if second_round && want == TargetSessionAttrs::Any {
            " (second round, any server)"
        } else {
            ""
        };
        for &i in &order {
            let mut one = settings.for_endpoint(i);
            one.force_password_prompt = false;
            if one.password.is_none() || forced.is_some() {
                if let Some(p) = &typed {
                    one.password = Some(p.clone());
                    one.password_source = Some(PasswordSource::Prompt);
                }
            }
            match connect_one(&one, prompt).await {
                Ok((client, task, settled, kind)) => {
                    if settled.password_source == Some(PasswordSource::Prompt) {
                        typed.clone_from(&settled.password);
                    }
                    if let Some(why) = kind.mismatch(want) {
                        attempts.push(format!("{}{round}: {why}", one.describe()));
                        drop(client);
                        continue;
                    }
                    crate::sessions::register_own_pid(kind.server, kind.pid);
                    return Ok((client, task, settled));
                }
                Err(e) if moves_on(&e) => attempts.push(format!("{e}{round}")),
                Err(e) => return Err(e),
            }
        }
    }
    Err(ConnectError::NoHostSuitable {
        hosts: settings.endpoints.len(),
        target_session_attrs: settings.target_session_attrs,
        attempts,
    })
}

/// The failures after which libpq tries the next host: the server cannot be reached (or
/// the name resolved), does not answer in time, or answers 57P03.
fn moves_on(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::Unreachable { .. }
            | ConnectError::Timeout { .. }
            | ConnectError::NotAcceptingConnections { .. }
    )
}

/// Shuffles the hosts for `load_balance_hosts=random` (Fisher-Yates; the order stays as
/// given if the system has no randomness to offer).
fn shuffle<T>(order: &mut [T]) {
    let mut bytes = vec![0u8; order.len() * 8];
    if getrandom::fill(&mut bytes).is_err() {
        return;
    }
    for i in (1..order.len()).rev() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        let j = (u64::from_le_bytes(word) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

/// What kind of server a connection reached, read with the `search_path` check at no
/// extra round trip: for `target_session_attrs`.
#[derive(Debug, Clone, Copy)]
struct Kind {
    /// `transaction_read_only` is on.
    read_only: bool,
    /// `pg_is_in_recovery()`.
    in_recovery: bool,
    /// The session's backend pid: registered as pgkill's own only once the connection is
    /// kept (a server of the wrong kind is dropped).
    pid: i32,
    /// The address connected to over TCP (a name may have several).
    addr: Option<std::net::IpAddr>,
    /// Which server it is (see [`crate::sessions::ServerKey`]).
    server: crate::sessions::ServerKey,
}

impl Kind {
    /// Why this server is not what `want` asks for, in libpq's words; `None` if it is.
    fn mismatch(self, want: TargetSessionAttrs) -> Option<&'static str> {
        match want {
            TargetSessionAttrs::Any => None,
            TargetSessionAttrs::ReadWrite if self.read_only => Some("session is read-only"),
            TargetSessionAttrs::ReadOnly if !self.read_only => Some("session is not read-only"),
            TargetSessionAttrs::Primary if self.in_recovery => {
                Some("server is in hot standby mode")
            }
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby
                if !self.in_recovery =>
            {
                Some("server is not in hot standby mode")
            }
            _ => None,
        }
    }
}

/// Connects to the one server `settings` names.
async fn connect_one(
    settings: &Settings,
    prompt: &dyn PasswordPrompt,
) -> Result<(Client, ConnectionTask, Settings, Kind)> {
    let ask = || {
        prompt
            .prompt(&format!("Password for user {}: ", settings.user))
            .map_err(|source| ConnectError::Prompt { source })
    };
    let mut password = settings.password.clone();
    let mut source = settings.password_source.clone();
    let mut prompted = false;
    if settings.force_password_prompt {
        password = Some(ask()?);
        source = Some(PasswordSource::Prompt);
        prompted = true;
    }
    let mut dbname = settings.dbname.clone();
    let mut first_missing_db: Option<ConnectError> = None;
    loop {
        let failure = match attempt(settings, &dbname, password.as_ref()).await {
            Ok((client, task, kind)) => {
                let mut settled = settings.clone();
                settled.force_password_prompt = false;
                settled.password = password;
                settled.password_source = source;
                if dbname != settled.dbname {
                    settled.dbname = dbname;
                    settled.dbname_is_default = false;
                }
                // A host name may have several addresses: connect again to the one
                // reached (the name stays for TLS verification).
                if let (Host::Tcp(name), None, Some(addr)) =
                    (&settled.host, settled.hostaddr, kind.addr)
                {
                    if name.parse::<std::net::IpAddr>().is_err() {
                        settled.hostaddr = Some(addr);
                    }
                }
                settled.endpoints = vec![super::Endpoint {
                    host: settled.host.clone(),
                    hostaddr: settled.hostaddr,
                    port: settled.port,
                    password: settled.password.clone(),
                    password_source: settled.password_source.clone(),
                    password_file_ignored: settled.password_file_ignored.clone(),
                }];
                return Ok((client, task, settled, kind));
            }
            Err(f) => f,
        };
        match failure {
            Failure::Setup(e) => return Err(e),
            Failure::Timeout => {
                return Err(ConnectError::Timeout {
                    target: settings.describe_with_dbname(&dbname),
                    seconds: settings.connect_timeout.map_or(0, |t| t.as_secs()),
                })
            }
            Failure::Socket(e) => return Err(unreachable(e, settings, &dbname)),
            Failure::Client(e) if password.is_none() && is_password_missing(&e) => {
                if prompted || !prompt.can_prompt() {
                    return Err(ConnectError::PasswordRequired {
                        user: settings.user.clone(),
                        target: settings.describe_with_dbname(&dbname),
                        ignored: settings.password_file_ignored.clone(),
                    });
                }
                password = Some(ask()?);
                source = Some(PasswordSource::Prompt);
                prompted = true;
            }
            Failure::OptionsDropped => {
                let target = settings.describe_with_dbname(&dbname);
                return Err(match pgbouncer_version(settings, password.as_ref()).await {
                    Some(version) => ConnectError::Pooler {
                        target,
                        version,
                        console: console_conninfo(settings),
                    },
                    None => ConnectError::OptionsDropped { target },
                });
            }
            Failure::Client(e) if e.code() == Some(&SqlState::PROTOCOL_VIOLATION) => {
                // PgBouncer refuses `options` at startup unless told to ignore it, and its
                // admin console refuses the extended query protocol: both 08P01.
                if let Some(version) = pgbouncer_version(settings, password.as_ref()).await {
                    return Err(ConnectError::Pooler {
                        target: settings.describe_with_dbname(&dbname),
                        version,
                        console: console_conninfo(settings),
                    });
                }
                return Err(classify(e, settings, &dbname, source.as_ref()));
            }
            Failure::Client(e) => {
                let missing_db = e.code() == Some(&SqlState::INVALID_CATALOG_NAME);
                let error = classify(e, settings, &dbname, source.as_ref());
                if let Some(first) = first_missing_db {
                    // template1 did not work either: report why postgres did not.
                    return Err(if missing_db { first } else { error });
                }
                if missing_db && settings.dbname_is_default && dbname == super::DEFAULT_DATABASE {
                    first_missing_db = Some(error);
                    dbname = "template1".to_owned();
                    continue;
                }
                return Err(error);
            }
        }
    }
}

enum Failure {
    Setup(ConnectError),
    Timeout,
    /// The session does not have the startup options pgkill sent (a pooler dropped them).
    OptionsDropped,
    /// Opening the socket failed.
    Socket(io::Error),
    Client(tokio_postgres::Error),
}

/// One connection attempt, bounded by `connect_timeout` as a whole (socket, TLS and
/// authentication), like libpq.
///
/// pgkill opens the socket itself and hands it to tokio-postgres (`connect_raw`): to
/// check the server's OS user (`requirepeer`) and to watch the startup messages
/// (`require_auth`, see `stream.rs`).
async fn attempt(
    settings: &Settings,
    dbname: &str,
    password: Option<&Password>,
) -> std::result::Result<(Client, ConnectionTask, Kind), Failure> {
    let mut config = base_config(settings, dbname, password);
    // Last, so that it wins over any search_path in the user's own options.
    config.options(pinned_options(settings.options.as_deref()));
    bounded(settings, async {
        let (client, task, addr) = open(settings, &mut config).await?;
        let mut kind = pin_search_path(&client).await?;
        kind.addr = addr;
        Ok((client, task, kind))
    })
    .await
}

/// The connection parameters every connection of pgkill's shares.
fn base_config(settings: &Settings, dbname: &str, password: Option<&Password>) -> Config {
    let mut config = Config::new();
    config
        .user(&settings.user)
        .dbname(dbname)
        .application_name(APPLICATION_NAME)
        .channel_binding(match settings.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
    if let Some(p) = password {
        config.password(p.expose());
    }
    config
}

/// Opens the socket and logs in with `config`: TLS per `sslmode`, `requirepeer` and
/// `require_auth` checked.
async fn open(
    settings: &Settings,
    config: &mut Config,
) -> std::result::Result<(Client, ConnectionTask, Option<std::net::IpAddr>), Failure> {
    let verify = if settings.is_unix_socket() {
        None
    } else {
        tls::verification(settings.ssl_mode, &settings.root_certs)
    };
    config.ssl_mode(match (verify, settings.ssl_mode) {
        (None, _) => tokio_postgres::config::SslMode::Disable,
        (Some(_), SslMode::Allow | SslMode::Prefer) => tokio_postgres::config::SslMode::Prefer,
        (Some(_), _) => tokio_postgres::config::SslMode::Require,
    });
    let tls_config = match verify {
        Some(v) => Some(tls::client_config(v, settings).map_err(Failure::Setup)?),
        None => None,
    };
    let socket = open_socket(settings).await?;
    let addr = match &socket {
        Socket::Tcp(stream) => stream.peer_addr().ok().map(|a| a.ip()),
        Socket::Unix(_) => None,
    };
    // The plain socket's watcher reads the SSLRequest's answer first when one is sent
    // (tokio-postgres sends it for every mode but Disable); under TLS the decrypted
    // stream gets a watcher of its own.
    let scanner = |ssl_request| {
        settings
            .require_auth
            .clone()
            .map(|policy| StartupScanner::new(policy, ssl_request))
    };
    let raw = Watched::new(socket, scanner(tls_config.is_some()));
    let connected = match (tls_config, &settings.host) {
        (Some(c), Host::Tcp(host)) => {
            let Ok(tls) = MakeTlsConnect::<Watched<Socket>>::make_tls_connect(
                &mut MakeRustlsConnect::new(c),
                host,
            );
            let (client, connection) = config
                .connect_raw(raw, WatchedTls::new(tls, scanner(false)))
                .await
                .map_err(Failure::Client)?;
            (client, tokio::spawn(connection))
        }
        _ => {
            let (client, connection) = config
                .connect_raw(raw, NoTls)
                .await
                .map_err(Failure::Client)?;
            (client, tokio::spawn(connection))
        }
    };
    Ok((connected.0, connected.1, addr))
}

/// Runs `connecting` within `connect_timeout`, like libpq (socket, TLS and
/// authentication as a whole).
async fn bounded<T>(
    settings: &Settings,
    connecting: impl std::future::Future<Output = std::result::Result<T, Failure>>,
) -> std::result::Result<T, Failure> {
    let result = match settings.connect_timeout {
        Some(t) => tokio::time::timeout(t, connecting)
            .await
            .map_err(|_| Failure::Timeout)?,
        None => connecting.await,
    };
    result.map_err(|f| match f {
        Failure::Client(e)
            if io_error(&e).is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) =>
        {
            Failure::Timeout
        }
        Failure::Socket(e) if e.kind() == io::ErrorKind::TimedOut => Failure::Timeout,
        other => other,
    })
}

/// Connects to a PgBouncer admin console (`settings.dbname`, normally `pgbouncer`): no
/// startup options (the console takes none) and no `search_path` check (it runs no SQL,
/// only its own commands, over the simple query protocol), within `connect_timeout`. It
/// never prompts: a console that wants a password pgkill does not have is an error.
pub async fn connect_console(settings: &Settings) -> Result<(Client, ConnectionTask)> {
    let password = settings.password.as_ref();
    let mut config = base_config(settings, &settings.dbname, password);
    match bounded(settings, open(settings, &mut config)).await {
        Ok((client, task, _)) => Ok((client, task)),
        Err(Failure::Setup(e)) => Err(e),
        Err(Failure::Timeout) => Err(ConnectError::Timeout {
            target: settings.describe(),
            seconds: settings.connect_timeout.map_or(0, |t| t.as_secs()),
        }),
        Err(Failure::Socket(e)) => Err(unreachable(e, settings, &settings.dbname)),
        Err(Failure::Client(e)) if password.is_none() && is_password_missing(&e) => {
            Err(ConnectError::PasswordRequired {
                user: settings.user.clone(),
                target: settings.describe(),
                ignored: settings.password_file_ignored.clone(),
            })
        }
        Err(Failure::Client(e)) => Err(classify(
            e,
            settings,
            &settings.dbname,
            settings.password_source.as_ref(),
        )),
        Err(Failure::OptionsDropped) => Err(ConnectError::OptionsDropped {
            target: settings.describe(),
        }),
    }
}

/// `host=… port=… user=… dbname=pgbouncer`: the admin console of the pooler at
/// `settings`, as `--pgbouncer` takes it (no password).
fn console_conninfo(settings: &Settings) -> String {
    let mut s = settings.describe_with_dbname("pgbouncer");
    if let Some(addr) = settings.hostaddr {
        // describe() shows hostaddr; keep only what a user would type.
        s = s.replace(&format!(" hostaddr={addr}"), "");
    }
    s
}

/// Whether the server at `settings` is a PgBouncer, and which version: its admin console
/// (database `pgbouncer`, the simple query protocol) answers `SHOW VERSION` with
/// `PgBouncer 1.x.y`. Asked only after a connection went wrong in a way a pooler explains
/// (startup options dropped or refused, 08P01), with the same user and password, within
/// `connect_timeout`. `None` when it is not (or does not let this user ask).
async fn pgbouncer_version(settings: &Settings, password: Option<&Password>) -> Option<String> {
    use tokio_postgres::SimpleQueryMessage;
    let mut config = base_config(settings, "pgbouncer", password);
    let asked = bounded(settings, async {
        let (client, _task, _) = open(settings, &mut config).await?;
        client
            .simple_query("SHOW VERSION")
            .await
            .map_err(Failure::Client)
    })
    .await
    .ok()?;
    asked.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row
            .try_get(0)
            .ok()
            .flatten()
            .filter(|v| v.starts_with("PgBouncer"))
            .map(str::to_owned),
        _ => None,
    })
}

/// Asks the server to cancel the statement running on the connection `token` came from,
/// over a new connection made with `settings` (TLS per `sslmode`, `requirepeer` checked),
/// bounded by `connect_timeout`. Use this, not `CancelToken::cancel_query`: pgkill opens
/// its sockets itself, so tokio-postgres's token does not know where the server is.
pub async fn cancel(settings: &Settings, token: &tokio_postgres::CancelToken) -> Result<()> {
    let target = settings.describe();
    let verify = if settings.is_unix_socket() {
        None
    } else {
        tls::verification(settings.ssl_mode, &settings.root_certs)
    };
    let tls_config = match verify {
        Some(v) => Some(tls::client_config(v, settings)?),
        None => None,
    };
    let sending = async {
        let socket = open_socket(settings).await?;
        match (tls_config, &settings.host) {
            (Some(c), Host::Tcp(host)) => {
                let Ok(tls) = MakeTlsConnect::<Socket>::make_tls_connect(
                    &mut MakeRustlsConnect::new(c),
                    host,
                );
                token.cancel_query_raw(socket, tls).await
            }
            _ => token.cancel_query_raw(socket, NoTls).await,
        }
        .map_err(Failure::Client)
    };
    let result = match settings.connect_timeout {
        Some(t) => tokio::time::timeout(t, sending)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => sending.await,
    };
    result.map_err(|f| match f {
        Failure::Setup(e) => e,
        Failure::Timeout => ConnectError::Timeout {
            target: target.clone(),
            seconds: settings.connect_timeout.map_or(0, |t| t.as_secs()),
        },
        Failure::Socket(e) => unreachable(e, settings, &settings.dbname),
        Failure::Client(e) => ConnectError::Client {
            target: target.clone(),
            reason: chain(&e),
            source: e,
        },
        // Not a state a cancel request reaches (it never logs in).
        Failure::OptionsDropped => ConnectError::OptionsDropped {
            target: target.clone(),
        },
    })
}

/// Opens the socket `settings` name (`hostaddr` skips the name lookup) and, on a Unix
/// socket, checks `requirepeer`. libpq ignores `requirepeer` over TCP, and so does pgkill.
async fn open_socket(settings: &Settings) -> std::result::Result<Socket, Failure> {
    match &settings.host {
        Host::Tcp(host) => {
            let mut addrs = match settings.hostaddr {
                Some(addr) => vec![addr],
                None => stream::lookup(host, settings.port)
                    .await
                    .map_err(Failure::Socket)?,
            };
            // libpq 16+ shuffles a name's addresses too.
            if settings.load_balance_hosts {
                shuffle(&mut addrs);
            }
            stream::connect_tcp(&addrs, settings.port)
                .await
                .map_err(Failure::Socket)
        }
        Host::Socket(dir) => {
            let path = stream::socket_path(dir, settings.port);
            let socket = stream::connect_unix(&path).await.map_err(Failure::Socket)?;
            if let Some(expected) = &settings.require_peer {
                let actual = match stream::peer_user(&socket) {
                    Ok(Some(Ok(name))) if name == *expected => return Ok(socket),
                    Ok(Some(Ok(name))) => format!("\"{name}\""),
                    Ok(Some(Err(uid))) => format!("with uid {uid}, which has no user name here"),
                    Ok(None) => return Ok(socket),
                    Err(source) => {
                        return Err(Failure::Setup(ConnectError::PeerUnknown {
                            socket: path,
                            source,
                        }))
                    }
                };
                return Err(Failure::Setup(ConnectError::PeerMismatch {
                    socket: path,
                    expected: expected.clone(),
                    actual,
                }));
            }
            Ok(socket)
        }
    }
}

/// The socket could not be opened: nothing listening, no such socket, unknown host.
fn unreachable(e: io::Error, settings: &Settings, dbname: &str) -> ConnectError {
    let hint = match &settings.host {
        Host::Tcp(h) => format!(
            "on host \"{h}\" and accepting TCP/IP connections on port {}",
            settings.port
        ),
        Host::Socket(dir) => format!(
            "locally and accepting connections on Unix socket \"{}\"",
            stream::socket_path(dir, settings.port).display()
        ),
    };
    ConnectError::Unreachable {
        target: settings.describe_with_dbname(dbname),
        reason: e.to_string(),
        hint,
        source: e,
    }
}

/// The `search_path` of every pgkill session: nothing a database role can create objects
/// in (functions and operators are never looked up in `pg_temp`).
pub const SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// The startup `options` pgkill sends: the user's, then the pinned `search_path`.
fn pinned_options(user: Option<&str>) -> String {
    let pin = format!("-c search_path={}", SEARCH_PATH.replace(' ', ""));
    match user {
        Some(o) if !o.trim().is_empty() => format!("{o} {pin}"),
        _ => pin,
    }
}

/// Checks that the session's `search_path` is the pinned one (a server-side setting
/// cannot override a startup option; a pooler may drop it, and then pgkill stops), and
/// reads the backend pid (see [`Kind::pid`]) and what kind of server this is. The statements call only qualified functions and no operator,
/// so they are safe whatever `search_path` is.
async fn pin_search_path(client: &Client) -> std::result::Result<Kind, Failure> {
    let read = format!(
        "SELECT pg_catalog.current_setting('search_path'), pg_catalog.pg_backend_pid(), \
         pg_catalog.current_setting('transaction_read_only'), pg_catalog.pg_is_in_recovery(), {}",
        crate::sessions::SERVER_KEY_SQL
    );
    let is_pinned = |path: String| path.replace(' ', "") == SEARCH_PATH.replace(' ', "");
    // Unnamed statements (`query_typed`), as everywhere: nothing left prepared on a
    // connection a pooler may share.
    let read = async {
        let row = client.query_typed_one(&read, &[]).await?;
        let path: String = row.try_get(0)?;
        let pid: i32 = row.try_get(1)?;
        let kind = Kind {
            read_only: row.try_get::<_, String>(2)? == "on",
            in_recovery: row.try_get(3)?,
            pid,
            addr: None,
            server: (row.try_get(4)?, row.try_get(5)?),
        };
        Ok::<_, tokio_postgres::Error>((path, kind))
    };
    let (path, kind) = read.await.map_err(Failure::Client)?;
    if !is_pinned(path) {
        // PostgreSQL always applies a startup option: something in between (a pooler
        // with `ignore_startup_parameters = options`) dropped it. Setting it now would
        // change a pooled server connection other clients share: refuse instead.
        return Err(Failure::OptionsDropped);
    }
    Ok(kind)
}

/// Whether tokio-postgres gave up because the server asked for a password and none was
/// configured. tokio-postgres has no public error kind for this: it reports a
/// configuration error (`Display` "invalid configuration") whose cause is the text
/// "password missing" (`connect_raw.rs`, 0.7). Checked on both, and only when we gave no
/// password; the integration tests pin this against the real library.
pub(crate) fn is_password_missing(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    e.as_db_error().is_none()
        && e.to_string() == "invalid configuration"
        && e.source()
            .is_some_and(|s| s.to_string() == "password missing")
}

/// Whether tokio-postgres failed in the TLS step (its `Display` names only the kind).
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "error performing TLS handshake"
}

fn io_error(e: &tokio_postgres::Error) -> Option<&io::Error> {
    use std::error::Error as _;
    e.source().and_then(|s| s.downcast_ref::<io::Error>())
}

/// The error's text with its causes, for errors without a better message.
fn chain(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Turns a failed connection into an error that says what to do. Server errors are
/// matched on SQLSTATE.
fn classify(
    e: tokio_postgres::Error,
    settings: &Settings,
    dbname: &str,
    password_source: Option<&PasswordSource>,
) -> ConnectError {
    let target = settings.describe_with_dbname(dbname);
    if let Some(r) = std::error::Error::source(&e).and_then(stream::refusal) {
        return ConnectError::AuthMethodRefused {
            target,
            requirement: r.requirement.clone(),
            reason: r.reason.clone(),
        };
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code().clone();
        let message = db.message().to_owned();
        return match code {
            c if c == SqlState::INVALID_PASSWORD => ConnectError::BadPassword {
                user: settings.user.clone(),
                target,
                from: password_source.map(ToString::to_string),
                source: e,
            },
            c if c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => ConnectError::AuthRejected {
                user: settings.user.clone(),
                target,
                message,
                source: e,
            },
            c if c == SqlState::INVALID_CATALOG_NAME => ConnectError::NoSuchDatabase {
                dbname: dbname.to_owned(),
                target,
                source: e,
            },
            c if c == SqlState::TOO_MANY_CONNECTIONS => ConnectError::TooManyConnections {
                target,
                message,
                source: e,
            },
            c if c == SqlState::CANNOT_CONNECT_NOW => ConnectError::NotAcceptingConnections {
                target,
                message,
                source: e,
            },
            c => ConnectError::Server {
                target,
                code: c.code().to_owned(),
                message,
                source: e,
            },
        };
    }
    if is_tls_failure(&e) {
        use std::error::Error as _;
        let mode = settings.ssl_mode;
        if let Some(r) = e.source().and_then(tls::rustls_error) {
            let reason = tls::explain(r, settings);
            return ConnectError::Tls {
                target,
                mode,
                reason,
                source: e,
            };
        }
        if let Some(io) = io_error(&e) {
            let reason = format!(
                "the TLS handshake was interrupted ({io}): the server may not speak TLS on this \
                 port, or something in between closed the connection"
            );
            return ConnectError::Tls {
                target,
                mode,
                reason,
                source: e,
            };
        }
        // tokio-postgres's own TLS errors: the server answered "no" to the TLS request.
        return ConnectError::TlsRefused {
            target,
            mode,
            source: e,
        };
    }
    if e.is_closed() {
        return ConnectError::Closed { target, source: e };
    }
    ConnectError::Client {
        target,
        reason: chain(&e),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn connect_future_can_be_spawned() {
        let settings = crate::connect::resolve(
            &crate::connect::ConnectArgs::default(),
            &crate::connect::MemoryEnv::new().user("u"),
        )
        .unwrap();
        let future = connect(&settings, &NoPrompt);
        assert_send(&future);
    }

    #[test]
    fn no_prompt_never_prompts() {
        assert!(!NoPrompt.can_prompt());
        assert!(NoPrompt.prompt("Password: ").is_err());
    }
}

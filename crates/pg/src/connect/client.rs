//! Opening the connection: TLS per `sslmode`, the password prompt, and errors that say
//! what to do.

use std::io::{self, IsTerminal};

use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::{ConnectError, Result};
use super::tls;
use super::{ChannelBinding, Host, Password, PasswordSource, Settings, SslMode, APPLICATION_NAME};

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
            Ok(connected) => return Ok(connected),
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
            Failure::Client(e) if password.is_none() && is_password_missing(&e) => {
                if prompted || !prompt.can_prompt() {
                    return Err(ConnectError::PasswordRequired {
                        user: settings.user.clone(),
                        target: settings.describe_with_dbname(&dbname),
                    });
                }
                password = Some(ask()?);
                source = Some(PasswordSource::Prompt);
                prompted = true;
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
    Client(tokio_postgres::Error),
}

/// One connection attempt, bounded by `connect_timeout` as a whole (socket, TLS and
/// authentication), like libpq.
async fn attempt(
    settings: &Settings,
    dbname: &str,
    password: Option<&Password>,
) -> std::result::Result<(Client, ConnectionTask), Failure> {
    let mut config = Config::new();
    match &settings.host {
        Host::Tcp(h) => config.host(h),
        Host::Socket(dir) => config.host_path(dir),
    };
    if let Some(addr) = settings.hostaddr {
        config.hostaddr(addr);
    }
    config
        .port(settings.port)
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
    if let Some(t) = settings.connect_timeout {
        config.connect_timeout(t);
    }
    // Last, so that it wins over any search_path in the user's own options.
    config.options(pinned_options(settings.options.as_deref()));
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
        Some(v) => Some(tls::client_config(v, &settings.root_certs).map_err(Failure::Setup)?),
        None => None,
    };

    let connecting = async {
        match tls_config {
            None => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok::<_, tokio_postgres::Error>((client, tokio::spawn(connection)))
            }
            Some(c) => {
                let (client, connection) = config.connect(MakeRustlsConnect::new(c)).await?;
                Ok((client, tokio::spawn(connection)))
            }
        }
    };
    let connecting = async {
        let (client, task) = connecting.await?;
        pin_search_path(&client).await?;
        Ok((client, task))
    };
    let result = match settings.connect_timeout {
        Some(t) => tokio::time::timeout(t, connecting)
            .await
            .map_err(|_| Failure::Timeout)?,
        None => connecting.await,
    };
    result.map_err(|e| {
        if io_error(&e).is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
            Failure::Timeout
        } else {
            Failure::Client(e)
        }
    })
}

/// Asks the server to cancel the statement running on the connection `token` came from
/// (Ctrl-C), over TLS exactly when that connection could have used it (the same
/// `sslmode` and certificates as [`connect`]), in the clear otherwise (Unix sockets,
/// `sslmode=disable`). The server answers nothing: `Ok` means the request was sent.
pub async fn cancel(settings: &Settings, token: &CancelToken) -> Result<()> {
    let verify = if settings.is_unix_socket() {
        None
    } else {
        tls::verification(settings.ssl_mode, &settings.root_certs)
    };
    let sent = match verify {
        None => token.cancel_query(NoTls).await,
        Some(v) => {
            let config = tls::client_config(v, &settings.root_certs)?;
            token.cancel_query(MakeRustlsConnect::new(config)).await
        }
    };
    sent.map_err(|e| ConnectError::Client {
        target: settings.describe(),
        reason: chain(&e),
        source: e,
    })
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

/// Checks that the session's `search_path` is the pinned one and pins it if not (a
/// server-side setting cannot override a startup option, but a proxy may drop the option),
/// and records the connection's backend pid as one of pgkill's own. The statements call
/// only qualified functions and no operator, so they are safe whatever `search_path` is.
async fn pin_search_path(client: &Client) -> std::result::Result<(), tokio_postgres::Error> {
    let read = "SELECT pg_catalog.current_setting('search_path'), pg_catalog.pg_backend_pid()";
    let is_pinned = |path: String| path.replace(' ', "") == SEARCH_PATH.replace(' ', "");
    let row = client.query_one(read, &[]).await?;
    crate::sessions::register_own_pid(row.try_get(1)?);
    if is_pinned(row.try_get(0)?) {
        return Ok(());
    }
    client
        .query_one(
            "SELECT pg_catalog.set_config('search_path', $1, false)",
            &[&SEARCH_PATH],
        )
        .await?;
    Ok(())
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
        let host = settings.host.to_string();
        let mode = settings.ssl_mode;
        if let Some(r) = e.source().and_then(tls::rustls_error) {
            let reason = tls::explain(r, mode, &host, &settings.root_certs);
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
    if let Some(io) = io_error(&e) {
        let reason = io.to_string();
        let hint = match &settings.host {
            Host::Tcp(h) => format!(
                "on host \"{h}\" and accepting TCP/IP connections on port {}",
                settings.port
            ),
            Host::Socket(dir) => format!(
                "locally and accepting connections on Unix socket \"{}\"",
                dir.join(format!(".s.PGSQL.{}", settings.port)).display()
            ),
        };
        return ConnectError::Unreachable {
            target,
            reason,
            hint,
            source: e,
        };
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

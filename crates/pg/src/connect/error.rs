//! Why pgkill could not connect, in words that say what to do.
//!
//! Server errors are matched on SQLSTATE, never on message text. No message ever holds a
//! password: connection targets are shown with [`super::Settings::describe`], and parse
//! errors never quote values.

use std::io;
use std::path::PathBuf;

/// Result alias of the `connect` module.
pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// A failure resolving connection settings or connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string or URI could not be read.
    #[error("invalid connection string: {detail}")]
    InvalidConninfo {
        /// What is wrong (never quotes a value).
        detail: String,
    },
    /// A keyword libpq does not know.
    #[error("invalid connection option \"{name}\" in the {place}: not a libpq keyword (see the libpq documentation, \"Parameter Key Words\")")]
    UnknownOption {
        /// The keyword.
        name: String,
        /// Where it was: `connection string`, `URI` or `service file`.
        place: String,
    },
    /// A libpq keyword pgkill refuses rather than silently ignore.
    #[error("connection option \"{name}\" is not supported: {why}; remove it")]
    UnsupportedOption {
        /// The keyword.
        name: String,
        /// Why.
        why: String,
    },
    /// An option with a value pgkill cannot use.
    #[error("invalid value {value:?} for connection option \"{name}\": {expected}")]
    InvalidValue {
        /// The keyword.
        name: String,
        /// The value given (never a password).
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// Bad `sslmode`.
    #[error("invalid sslmode {value:?}: use one of disable, allow, prefer, require, verify-ca, verify-full")]
    InvalidSslMode {
        /// The value given.
        value: String,
    },
    /// None of several hosts could be used (each was down, not accepting connections yet, or
    /// not the kind `target_session_attrs` asks for).
    #[error("{}", no_host_suitable(*hosts, *target_session_attrs, attempts))]
    NoHostSuitable {
        /// How many hosts were named.
        hosts: usize,
        /// What kind of server was asked for.
        target_session_attrs: super::TargetSessionAttrs,
        /// Each host tried and why it did not do.
        attempts: Vec<String>,
    },
    /// The server is a PgBouncer, not PostgreSQL.
    #[error("the server at {target} is {version}, a connection pooler, not PostgreSQL: connect pgkill to the PostgreSQL server behind it (the pooler's [databases] section, or SHOW DATABASES on its admin console, says where) and name the pooler with --pgbouncer '{console}' to see and steer the applications behind it")]
    Pooler {
        /// Where.
        target: String,
        /// `PgBouncer 1.18.0`.
        version: String,
        /// The pooler's admin console, as `--pgbouncer` takes it (no password).
        console: String,
    },
    /// The session lacks the startup options pgkill sent (`search_path`,
    /// `statement_timeout`): something between pgkill and PostgreSQL dropped them.
    #[error("the connection to {target} lost pgkill's startup options (the pinned search_path): something between pgkill and PostgreSQL, such as a connection pooler with ignore_startup_parameters = options, dropped them; pgkill will not change settings on a connection that may be shared: connect it to the PostgreSQL server itself")]
    OptionsDropped {
        /// Where.
        target: String,
    },
    /// Host, hostaddr and port lists of different lengths (libpq's wording).
    #[error("{}", count_mismatch(what, *given, *hosts))]
    HostCountMismatch {
        /// `port numbers` or `hostaddr values`.
        what: &'static str,
        /// How many of them were given.
        given: usize,
        /// How many hosts.
        hosts: usize,
    },
    /// The service named by `service=` or `PGSERVICE` is in no service file.
    #[error(
        "definition of service \"{name}\" not found (looked in {})",
        display_paths(searched)
    )]
    ServiceNotFound {
        /// The service name.
        name: String,
        /// The files searched, in order.
        searched: Vec<PathBuf>,
    },
    /// A service file exists but cannot be read.
    #[error("cannot read service file \"{}\": {source}", path.display())]
    ServiceFileUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A service file line pgkill cannot read.
    #[error("syntax error in service file \"{}\", line {line}: {detail}", path.display())]
    ServiceFileSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// No user given and the OS user name is unknown.
    #[error("cannot tell which PostgreSQL user to connect as: the OS user name is unknown; give -U USER (or PGUSER)")]
    NoUser,
    /// The TLS root certificate file named by `sslrootcert` cannot be read.
    #[error("cannot read the TLS root certificate file \"{}\" (sslrootcert): {source}", path.display())]
    RootCertUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The root certificate file holds no usable certificate.
    #[error("the TLS root certificate file \"{}\" (sslrootcert) holds no usable certificate: {detail}; it must contain PEM \"BEGIN CERTIFICATE\" blocks", path.display())]
    RootCertInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// `verify-ca`/`verify-full` without a CA to verify against.
    #[error("sslmode={mode} needs the CA certificate that signed the server's certificate, but \"{}\" does not exist: give sslrootcert=FILE (or PGSSLROOTCERT; sslrootcert=system for the system's CAs), or use sslmode=require to encrypt without verifying", path.display())]
    RootCertMissing {
        /// The sslmode asked for.
        mode: super::SslMode,
        /// The file that was expected.
        path: PathBuf,
    },
    /// `sslrootcert=system` with a weaker explicit sslmode (libpq refuses it too).
    #[error("sslmode={mode} may not be used with sslrootcert=system: use sslmode=verify-full (the default with sslrootcert=system)")]
    WeakSslModeWithSystemRoots {
        /// The sslmode given.
        mode: super::SslMode,
    },
    /// The system's CA certificates could not be loaded (`sslrootcert=system`).
    #[error("sslrootcert=system: could not load the system's CA certificates: {detail}")]
    SystemRoots {
        /// What went wrong.
        detail: String,
    },
    /// Building the TLS configuration failed (should not happen).
    #[error("cannot set up TLS: {detail}")]
    TlsSetup {
        /// What went wrong.
        detail: String,
    },
    /// 28P01: wrong password.
    #[error("password authentication failed for user \"{user}\" at {target}{}: check the password, ~/.pgpass or PGPASSWORD", from.as_ref().map(|f| format!(" (the password came from {f})")).unwrap_or_default())]
    BadPassword {
        /// The role.
        user: String,
        /// Where, as [`super::Settings::describe`] says it.
        target: String,
        /// Where the password came from, when known.
        from: Option<String>,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// The server wants a password and there is none (no TTY to ask on).
    #[error("the server at {target} asks for a password for user \"{user}\" and none was given{}", match ignored { Some(why) => format!(": the {why}"), None => ": set PGPASSWORD, add a line to ~/.pgpass (host:port:database:user:password, mode 0600), or run on a terminal with -W".to_owned() })]
    PasswordRequired {
        /// The role.
        user: String,
        /// Where.
        target: String,
        /// Why the password file was ignored, if it was.
        ignored: Option<String>,
    },
    /// Reading the password from the terminal failed.
    #[error("cannot read the password from the terminal: {source}")]
    Prompt {
        /// Why.
        source: io::Error,
    },
    /// 28000: `pg_hba.conf` rejects the connection, or the role does not exist or cannot
    /// log in.
    #[error("the server at {target} refused the connection: {message}: check that role \"{user}\" exists and has LOGIN, and that the server's pg_hba.conf allows this user, database and client address")]
    AuthRejected {
        /// The role.
        user: String,
        /// Where.
        target: String,
        /// The server's message.
        message: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// 3D000: the database to connect to does not exist.
    #[error("database \"{dbname}\" does not exist at {target}: use --maintenance-db to pick another database to connect to")]
    NoSuchDatabase {
        /// The database.
        dbname: String,
        /// Where.
        target: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// 53300: no connection slot free.
    #[error("the server at {target} has no free connection slot: {message}: wait for sessions to end, raise max_connections (or the role's or database's CONNECTION LIMIT), or connect as a superuser, which has reserved slots")]
    TooManyConnections {
        /// Where.
        target: String,
        /// The server's message.
        message: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// 57P03: starting up, shutting down or in recovery without hot standby.
    #[error("the server at {target} is not accepting connections right now: {message}: it is starting up, shutting down or recovering; try again shortly")]
    NotAcceptingConnections {
        /// Where.
        target: String,
        /// The server's message.
        message: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// Any other error the server reported while connecting.
    #[error("the server at {target} refused the connection: {message} (SQLSTATE {code})")]
    Server {
        /// Where.
        target: String,
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// Nothing answered: connection refused, no such socket, no route, unknown host name.
    #[error("cannot connect to the server at {target}: {reason}: is the server running {hint}?")]
    Unreachable {
        /// Where.
        target: String,
        /// The OS's reason.
        reason: String,
        /// Where it should be listening.
        hint: String,
        /// The OS's error.
        source: io::Error,
    },
    /// `require_auth`: the server asked for an authentication pgkill may not answer (or
    /// for none at all); pgkill hung up before answering.
    #[error("refused to log in to the server at {target}: {reason}, but require_auth={requirement} does not allow it (nothing was sent in answer): connect to a server whose pg_hba.conf uses an allowed method, or change require_auth (PGREQUIREAUTH)")]
    AuthMethodRefused {
        /// Where.
        target: String,
        /// The `require_auth` value.
        requirement: String,
        /// What the server asked for, in libpq's words.
        reason: String,
    },
    /// `requirepeer`: the process behind the Unix socket runs as another OS user.
    #[error("requirepeer specifies \"{expected}\", but the server process behind \"{}\" runs as OS user {actual}: this socket may belong to another server; connect to the right socket (-h DIR -p PORT) or fix requirepeer (PGREQUIREPEER)", socket.display())]
    PeerMismatch {
        /// The socket file.
        socket: PathBuf,
        /// The user `requirepeer` names.
        expected: String,
        /// The user found (quoted name, or `with uid N`).
        actual: String,
    },
    /// `requirepeer`: the server process's OS user could not be found out.
    #[error("requirepeer is set, but the OS user of the server process behind \"{}\" cannot be determined: {source}", socket.display())]
    PeerUnknown {
        /// The socket file.
        socket: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `sslcrl`/`sslcrldir` cannot be read.
    #[error("cannot read the certificate revocation list \"{}\" ({keyword}): {source}; fix the path, or remove {keyword} to connect without revocation checks", path.display())]
    CrlUnreadable {
        /// `sslcrl` or `sslcrldir`.
        keyword: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A revocation list pgkill cannot use.
    #[error(
        "unusable certificate revocation list {}: {detail}",
        display_paths(paths)
    )]
    CrlInvalid {
        /// The files (or the directory) it came from.
        paths: Vec<PathBuf>,
        /// What is wrong.
        detail: String,
    },
    /// `ssl_min_protocol_version` above `ssl_max_protocol_version`.
    #[error("invalid TLS protocol version range: ssl_min_protocol_version={min} is above ssl_max_protocol_version={max}")]
    TlsVersionRange {
        /// The minimum given.
        min: super::TlsVersion,
        /// The maximum given.
        max: super::TlsVersion,
    },
    /// `ssl_max_protocol_version` below TLS 1.2: rustls cannot speak it.
    #[error("ssl_max_protocol_version={max} cannot be met: pgkill speaks only TLSv1.2 and TLSv1.3; raise ssl_max_protocol_version (PGSSLMAXPROTOCOLVERSION) to TLSv1.2 or later")]
    TlsVersionUnsupported {
        /// The maximum given.
        max: super::TlsVersion,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("timed out after {seconds} s connecting to the server at {target}: is the server running and reachable (no firewall dropping packets)? If it is just slow, raise connect_timeout (PGCONNECT_TIMEOUT)")]
    Timeout {
        /// Where.
        target: String,
        /// The timeout.
        seconds: u64,
    },
    /// The server closed the connection during startup.
    #[error("the server at {target} closed the connection unexpectedly while connecting: is a PostgreSQL server listening on that port? Its log may say more")]
    Closed {
        /// Where.
        target: String,
        /// The client's error.
        source: tokio_postgres::Error,
    },
    /// sslmode asks for TLS and the server does not offer it.
    #[error("the server at {target} does not accept TLS connections, but sslmode={mode} requires TLS: enable ssl on the server, or use sslmode=prefer (or disable) to connect without encryption")]
    TlsRefused {
        /// Where.
        target: String,
        /// The sslmode.
        mode: super::SslMode,
        /// The client's error.
        source: tokio_postgres::Error,
    },
    /// The TLS handshake failed: the certificate could not be verified, or another TLS
    /// problem.
    #[error("TLS with the server at {target} failed (sslmode={mode}): {reason}")]
    Tls {
        /// Where.
        target: String,
        /// The sslmode.
        mode: super::SslMode,
        /// What went wrong and what to do.
        reason: String,
        /// The client's error.
        source: tokio_postgres::Error,
    },
    /// Anything else the client library reported.
    #[error("cannot connect to the server at {target}: {reason}")]
    Client {
        /// Where.
        target: String,
        /// What the client library said, with its causes.
        reason: String,
        /// The client's error.
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether logging in failed in a way that trying again with the same settings cannot
    /// fix: a wrong password, a password the server wants and pgkill does not have, or an
    /// authentication `require_auth` refuses.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            ConnectError::BadPassword { .. }
                | ConnectError::PasswordRequired { .. }
                | ConnectError::AuthMethodRefused { .. }
        )
    }
}

fn count_mismatch(what: &str, given: usize, hosts: usize) -> String {
    if what == "hostaddr values" {
        format!("could not match {hosts} host names to {given} hostaddr values: give one hostaddr per host (an empty entry looks the name up)")
    } else {
        format!("could not match {given} {what} to {hosts} hosts: give one port for all hosts or one per host")
    }
}

fn no_host_suitable(hosts: usize, want: super::TargetSessionAttrs, attempts: &[String]) -> String {
    let mut s = if hosts == 1 {
        "could not connect to the server given".to_owned()
    } else {
        format!("could not connect to any of the {hosts} servers given")
    };
    if want != super::TargetSessionAttrs::Any {
        s.push_str(&format!(" with target_session_attrs={want}"));
    }
    s.push(':');
    for a in attempts {
        s.push_str("\n  - ");
        s.push_str(a);
    }
    s
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

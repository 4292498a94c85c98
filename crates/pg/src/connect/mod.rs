//! Connecting the way libpq tools do: `-h -p -U -W --maintenance-db`, a connection string
//! or URI, `pg_service.conf`, the `PG*` environment variables, `~/.pgpass`, and TLS up to
//! `sslmode=verify-full`.
//!
//! Two steps, so the rules are unit-tested without a server:
//!
//! 1. [`resolve`] turns [`ConnectArgs`] (what the CLI parsed) and an [`Env`] (environment
//!    variables and files; [`SystemEnv`] in real use) into [`Settings`]. It does no
//!    network I/O. Each setting comes from the first of: the connection string or URI;
//!    explicit flags (as in psql, which passes `-h -p -U` before the connection string,
//!    whose values override them); the service-file entry (`service=` or `PGSERVICE`;
//!    `PGSERVICE=""` is a service that is not found); the `PG*` environment variables;
//!    the defaults. An empty `host`, `hostaddr`, `port`, `user`, `password`, `passfile`,
//!    `dbname` or `options` in the connection string or the service file stands
//!    for the default and hides the environment, as in libpq (an empty flag, `-h ''`, is no
//!    flag, as in psql); other empty values count
//!    as unset. `hostaddr` always means TCP to that address, even with `-h /socket/dir`.
//!    The deprecated `requiressl=1` (connection string or URI) is stored as
//!    `sslmode=require` (`requiressl=0` as `prefer`; the later of the two wins);
//!    `PGREQUIRESSL=1` means `sslmode=require` when no `sslmode`/`PGSSLMODE` is given. Defaults: host = the Unix-socket directory
//!    `/var/run/postgresql` if it exists, else `/tmp`; port 5432; user = the OS user;
//!    database = `postgres` (like `dropdb`, pgkill connects to a maintenance database,
//!    not to one named after the user); sslmode `prefer`; connect_timeout 10 s. With no
//!    password given, `~/.pgpass` (or `passfile`/`PGPASSFILE`) is searched as libpq
//!    does: on `host` if given, else `hostaddr`, and the port, as text; the default
//!    socket directory (or no host) as `localhost`, any other socket directory as its
//!    path. A file that is ignored (group/world access, not a plain file) is named again
//!    when the server then asks for a password.
//! 2. [`connect`] opens the connection, prompting for a password with `-W`, or when the
//!    server asks for one that pgkill does not have and stdin is a terminal.
//!
//! `application_name` is always [`APPLICATION_NAME`] (`pgkill`), whatever `PGAPPNAME` or
//! the connection string say, so that a DBA can tell what a session is. pgkill protects
//! its own sessions by their backend pids (see `sessions::own_pids`), never by this name,
//! which any client can take.
//!
//! Protections the user can ask for, as in libpq: `require_auth` (the authentication
//! requests pgkill may answer; checked on the server's startup messages before
//! tokio-postgres answers them), `requirepeer` (the OS user of the server process behind a
//! Unix socket), `sslcrl`/`sslcrldir` (revoked server certificates are refused whenever
//! the certificate is verified), `ssl_min_protocol_version`/`ssl_max_protocol_version`
//! and `channel_binding`; each also from its `PG*` variable. To do the first two, pgkill
//! opens the socket itself and hands it to tokio-postgres; cancel requests therefore go
//! through [`cancel`], which opens theirs the same way.
//!
//! Several hosts (`host=a,b port=1,2`, URI host lists, `PGHOST` lists), `hostaddr` lists,
//! `target_session_attrs` and `load_balance_hosts` work as in libpq: see
//! [`connect_reusable`]. `.pgpass` is matched per host.
//!
//! Differences from libpq worth knowing: `allow` behaves like
//! `prefer`; `prefer` never verifies certificates; a handshake failure under `prefer` is
//! an error (libpq retries without TLS); only TLS 1.2 and 1.3 (a maximum below
//! TLSv1.2 is refused); a `sslcrl`/`sslcrldir` that was named but cannot be read, or
//! holds no list, is an error (libpq silently checks nothing); `require_auth` may allow
//! `gss`, `sspi` or `oauth`, but pgkill cannot perform them, so such a server is still
//! refused; options that would weaken security if silently ignored (client
//! certificates, GSSAPI, ...) are refused in a connection string and warned about in the
//! environment; an empty value of a keyword other than those above (e.g. `sslmode=''`,
//! an error in libpq) counts as unset, and so does an empty `PG*` variable; with no
//! database named, pgkill connects to `postgres` (libpq: the user name), which is also
//! the database `.pgpass` is matched on; an unknown keyword in a service file is named
//! (libpq: "syntax error"). `requiressl` in a service file is a syntax error in both.
//!
//! Reconnecting (as `pgkill top` does) should reuse what the first connection settled
//! ([`connect_reusable`]): the password typed at the prompt is never asked for again.

mod client;
mod conninfo;
mod env;
mod error;
mod pgpass;
mod require_auth;
mod resolve;
mod service;
mod stream;
mod tls;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

pub use client::{
    cancel, connect, connect_console, connect_reusable, ConnectionTask, NoPrompt, PasswordPrompt,
    TerminalPrompt,
};
pub use env::{Env, FileInfo, MemoryEnv, SystemEnv};
pub use error::{ConnectError, Result};
pub use require_auth::RequireAuth;
pub use resolve::resolve;

/// Quotes a value for a `key=value` connection string when it needs it, as libpq reads it.
pub fn quote_conninfo_value(value: &str) -> String {
    conninfo::quote_value(value)
}

/// The `application_name` of every connection pgkill opens. Not configurable (not even by
/// `PGAPPNAME`): a DBA looking at `pg_stat_activity` can tell pgkill's sessions.
pub const APPLICATION_NAME: &str = "pgkill";

/// The default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database pgkill connects to when none is given (like `dropdb`).
pub const DEFAULT_DATABASE: &str = "postgres";

/// The connection options of the command line, as parsed (plain data).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConnectArgs {
    /// `-h HOST`: a host name, an IP address, or a Unix-socket directory (`/...`).
    pub host: Option<String>,
    /// `-p PORT`.
    pub port: Option<String>,
    /// `-U USER`.
    pub user: Option<String>,
    /// `-W`: ask for the password before connecting.
    pub force_password_prompt: bool,
    /// `--maintenance-db DB`: the database to connect to.
    pub maintenance_db: Option<String>,
    /// The positional connection string: `key=value ...`, a `postgres://` or
    /// `postgresql://` URI, or a plain database name. May hold a password.
    pub conninfo: Option<String>,
}

impl fmt::Debug for ConnectArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectArgs")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("force_password_prompt", &self.force_password_prompt)
            .field("maintenance_db", &self.maintenance_db)
            // May contain a password.
            .field(
                "conninfo",
                &self.conninfo.as_ref().map(|_| format_args!("<hidden>")),
            )
            .finish()
    }
}

/// A password. Its `Debug` never shows it and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Password(password.into())
    }
    /// The password itself, to hand to the server and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<hidden>)")
    }
}

/// Where the password came from (said when the server rejects it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// The connection string or URI.
    ConnectionString,
    /// A service-file entry.
    ServiceFile(PathBuf),
    /// `PGPASSWORD`.
    Environment,
    /// The password file (`~/.pgpass`, `PGPASSFILE`, `passfile`).
    PasswordFile(PathBuf),
    /// Typed at the prompt.
    Prompt,
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::ConnectionString => f.write_str("the connection string"),
            PasswordSource::ServiceFile(p) => write!(f, "service file \"{}\"", p.display()),
            PasswordSource::Environment => f.write_str("PGPASSWORD"),
            PasswordSource::PasswordFile(p) => write!(f, "password file \"{}\"", p.display()),
            PasswordSource::Prompt => f.write_str("the prompt"),
        }
    }
}

/// Where the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address (TCP).
    Tcp(String),
    /// A directory holding the server's Unix socket `.s.PGSQL.<port>`.
    Socket(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Socket(p) => write!(f, "{}", p.display()),
        }
    }
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// Treated like `prefer` (libpq tries without TLS first; pgkill tries TLS first).
    Allow,
    /// TLS if the server offers it, without verifying the certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS always; the certificate is verified against the root certificate only if one
    /// is available (`sslrootcert` or `~/.postgresql/root.crt`), like libpq.
    Require,
    /// TLS; the certificate must chain to a trusted root; the host name is not checked.
    VerifyCa,
    /// TLS; the certificate must chain to a trusted root and name the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether this mode verifies certificates whatever files exist.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ConnectError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(ConnectError::InvalidSslMode {
                    value: s.to_owned(),
                })
            }
        })
    }
}

/// libpq's `channel_binding` (SCRAM over TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Never.
    Disable,
    /// When the server supports it.
    #[default]
    Prefer,
    /// Always: refuse servers (or authentication methods) without it.
    Require,
}

/// The certificates a server's certificate is verified against.
#[derive(Clone, Default)]
pub enum RootCerts {
    /// None available: no verification possible.
    #[default]
    None,
    /// Read from a PEM file (`sslrootcert` or `~/.postgresql/root.crt`).
    File {
        /// The file.
        path: PathBuf,
        /// Its certificates (DER).
        certs: Vec<CertificateDer<'static>>,
    },
    /// The operating system's trusted CAs (`sslrootcert=system`).
    System,
}

impl fmt::Debug for RootCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCerts::None => f.write_str("None"),
            RootCerts::File { path, certs } => f
                .debug_struct("File")
                .field("path", path)
                .field("certs", &certs.len())
                .finish(),
            RootCerts::System => f.write_str("System"),
        }
    }
}

/// A TLS protocol version, as libpq's `ssl_min_protocol_version` and
/// `ssl_max_protocol_version` name them. pgkill (rustls) speaks only TLS 1.2 and 1.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// `TLSv1` (1.0).
    Tls1_0,
    /// `TLSv1.1`.
    Tls1_1,
    /// `TLSv1.2`: libpq's default minimum.
    Tls1_2,
    /// `TLSv1.3`.
    Tls1_3,
}

impl TlsVersion {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls1_0 => "TLSv1",
            TlsVersion::Tls1_1 => "TLSv1.1",
            TlsVersion::Tls1_2 => "TLSv1.2",
            TlsVersion::Tls1_3 => "TLSv1.3",
        }
    }

    /// Parses libpq's spelling, ignoring case as libpq does.
    pub fn parse(s: &str) -> Option<TlsVersion> {
        [
            TlsVersion::Tls1_0,
            TlsVersion::Tls1_1,
            TlsVersion::Tls1_2,
            TlsVersion::Tls1_3,
        ]
        .into_iter()
        .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Certificate revocation lists (`sslcrl`, `sslcrldir`, `~/.postgresql/root.crl`):
/// checked whenever the server's certificate is verified, like libpq.
#[derive(Clone, Default)]
pub struct Crls {
    /// The files they were read from.
    pub paths: Vec<PathBuf>,
    /// The lists (DER).
    pub lists: Vec<CertificateRevocationListDer<'static>>,
}

impl fmt::Debug for Crls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crls")
            .field("paths", &self.paths)
            .field("lists", &self.lists.len())
            .finish()
    }
}

/// One of the servers a connection string names (`host=a,b port=1,2`), with the password
/// that goes with it (`.pgpass` is matched per host, as in libpq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where the server is.
    pub host: Host,
    /// `hostaddr` for this host.
    pub hostaddr: Option<IpAddr>,
    /// TCP port (also names the Unix socket).
    pub port: u16,
    /// The password for this host, if one was found before connecting.
    pub password: Option<Password>,
    /// Where [`Endpoint::password`] came from.
    pub password_source: Option<PasswordSource>,
    /// Why the password file was not read, said if this host then asks for a password.
    pub password_file_ignored: Option<String>,
}

/// libpq's `target_session_attrs`: which kind of server a connection must reach; hosts
/// that are not of that kind are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// Any server.
    #[default]
    Any,
    /// One that accepts writes (`transaction_read_only` is off).
    ReadWrite,
    /// One that does not (`transaction_read_only` is on).
    ReadOnly,
    /// A server that is not in recovery.
    Primary,
    /// A server in recovery (a standby).
    Standby,
    /// A standby if one is reachable, else any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    /// Parses the libpq spelling.
    pub fn parse(s: &str) -> Option<TargetSessionAttrs> {
        [
            TargetSessionAttrs::Any,
            TargetSessionAttrs::ReadWrite,
            TargetSessionAttrs::ReadOnly,
            TargetSessionAttrs::Primary,
            TargetSessionAttrs::Standby,
            TargetSessionAttrs::PreferStandby,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resolved connection settings: what [`connect`] uses. `Debug` and `Display` never show
/// the password.
///
/// `host`, `hostaddr`, `port` and the password fields are those of the first of
/// [`Settings::endpoints`] as resolved, and of the server reached in the settings that
/// [`connect_reusable`] returns (which then name only that server).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the server is.
    pub host: Host,
    /// `hostaddr`: the IP address to connect to, skipping name lookup (`host` is then
    /// still the name for TLS verification and `.pgpass`).
    pub hostaddr: Option<IpAddr>,
    /// TCP port (also names the Unix socket).
    pub port: u16,
    /// The role to log in as.
    pub user: String,
    /// The password, if one was found before connecting.
    pub password: Option<Password>,
    /// Where [`Settings::password`] came from.
    pub password_source: Option<PasswordSource>,
    /// Why the password file was not read (group or world access, not a plain file),
    /// said again if the server then asks for a password pgkill does not have.
    pub password_file_ignored: Option<String>,
    /// The database to connect to.
    pub dbname: String,
    /// True when nobody named the database: [`connect`] then falls back to `template1` if
    /// `postgres` does not exist (like `dropdb`).
    pub dbname_is_default: bool,
    /// TLS mode (not used on Unix sockets).
    pub ssl_mode: SslMode,
    /// Certificates to verify the server's against.
    pub root_certs: RootCerts,
    /// Revocation lists checked when verifying the server's certificate.
    pub crls: Crls,
    /// `ssl_min_protocol_version` (libpq's default: TLSv1.2).
    pub ssl_min_protocol_version: TlsVersion,
    /// `ssl_max_protocol_version` (`None`: no upper bound).
    pub ssl_max_protocol_version: Option<TlsVersion>,
    /// `require_auth`: the authentication requests pgkill may answer (`None`: any).
    pub require_auth: Option<RequireAuth>,
    /// `requirepeer`: the OS user the server must run as, checked on Unix sockets only.
    pub require_peer: Option<String>,
    /// Give up connecting after this long (`None`: wait forever).
    pub connect_timeout: Option<Duration>,
    /// `options`/`PGOPTIONS`: server settings for the session (`-c name=value`).
    pub options: Option<String>,
    /// `channel_binding`.
    pub channel_binding: ChannelBinding,
    /// `-W`: ask for the password before connecting.
    pub force_password_prompt: bool,
    /// Things the user should hear about (e.g. a `.pgpass` others can read, an ignored
    /// environment variable). The front-end prints them.
    pub warnings: Vec<String>,
    /// Every server named, in the order given (at least one; the first is the one in
    /// `host`/`port` above).
    pub endpoints: Vec<Endpoint>,
    /// `target_session_attrs`.
    pub target_session_attrs: TargetSessionAttrs,
    /// `load_balance_hosts=random`: try the hosts in a random order.
    pub load_balance_hosts: bool,
    /// How many servers the connection string named, and which of them (0-based) these
    /// settings are for: set on the settings [`connect_reusable`] returns, `None` when
    /// only one was named.
    pub reached: Option<(usize, usize)>,
}

impl Settings {
    /// Where pgkill connects, for messages: `host=/var/run/postgresql port=5432 user=bob
    /// dbname=postgres`. Never contains the password.
    pub fn describe(&self) -> String {
        self.describe_with_dbname(&self.dbname)
    }

    pub(crate) fn describe_with_dbname(&self, dbname: &str) -> String {
        use conninfo::quote_value as q;
        let mut s = format!("host={}", q(&self.host.to_string()));
        if let Some(addr) = self.hostaddr {
            s.push_str(&format!(" hostaddr={addr}"));
        }
        s.push_str(&format!(
            " port={} user={} dbname={}",
            self.port,
            q(&self.user),
            q(dbname)
        ));
        s
    }

    /// Whether the connection is over a Unix socket (never TLS).
    pub fn is_unix_socket(&self) -> bool {
        matches!(self.host, Host::Socket(_))
    }

    /// These settings for one of [`Settings::endpoints`] only.
    pub fn for_endpoint(&self, index: usize) -> Settings {
        let e = &self.endpoints[index];
        let mut s = self.clone();
        s.host = e.host.clone();
        s.hostaddr = e.hostaddr;
        s.port = e.port;
        s.password = e.password.clone();
        s.password_source = e.password_source.clone();
        s.password_file_ignored = e.password_file_ignored.clone();
        s.endpoints = vec![e.clone()];
        s.reached = Some((self.endpoints.len(), index));
        s
    }

    /// `host:port` of the server these settings are for.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

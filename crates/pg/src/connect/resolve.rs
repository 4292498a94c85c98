//! From command-line options, connection string, service file, environment and defaults
//! to [`Settings`]: pure apart from reading files through [`Env`].

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use super::conninfo::{self, Params, Support, KEYWORDS};
use super::env::Env;
use super::error::{ConnectError, Result};
use super::tls::{self, Verify};
use super::{
    pgpass, service, ChannelBinding, ConnectArgs, Crls, Endpoint, Host, Password, PasswordSource,
    RequireAuth, RootCerts, Settings, SslMode, TargetSessionAttrs, TlsVersion,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DATABASE,
};

/// Unix-socket directories tried when no host is given, as Debian's libpq (first) and
/// upstream libpq (second) default to.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

/// Which layer a value came from, best first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Conninfo,
    Flag,
    Service(PathBuf),
    Env(&'static str),
}

struct Layers<'a> {
    flags: Params,
    conninfo: Params,
    service: Option<(PathBuf, Params)>,
    env: &'a dyn Env,
}

/// Keywords whose empty value in the connection string or the service file
/// stands for the built-in default and hides the layers below (libpq fills a keyword
/// from the environment only when nothing set it, and treats these empty values as the
/// default). For every other keyword an empty value counts as unset.
const EMPTY_IS_DEFAULT: [&str; 8] = [
    "host", "hostaddr", "port", "user", "password", "passfile", "dbname", "options",
];

impl Layers<'_> {
    /// The value of `key` from the best layer that has one: the connection string, then
    /// the flags (psql passes `-h -p -U -d` before the connection string, which
    /// overrides them), the service file, the environment. Never empty.
    fn get(&self, key: &str) -> Option<(String, Origin)> {
        let blocks = EMPTY_IS_DEFAULT.contains(&key);
        let service = self
            .service
            .as_ref()
            .map(|(path, params)| (params, Origin::Service(path.clone())));
        let layers = [
            Some((&self.conninfo, Origin::Conninfo)),
            Some((&self.flags, Origin::Flag)),
            service,
        ];
        for (params, origin) in layers.into_iter().flatten() {
            match params.get(key) {
                Some(v) if !v.is_empty() => return Some((v.clone(), origin)),
                Some(_) if blocks => return None,
                _ => {}
            }
        }
        let var = conninfo::keyword(key)?.env?;
        let v = self.env.var(var).filter(|v| !v.is_empty())?;
        Some((v, Origin::Env(var)))
    }
}

fn invalid(name: &str, value: &str, expected: &str) -> ConnectError {
    ConnectError::InvalidValue {
        name: name.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

/// Resolves the connection settings from the command line (`args`) and the machine
/// (`env`): connection string/URI > flags > service file > `PG*` variables > defaults.
/// See the [module documentation](super) for the details.
pub fn resolve(args: &ConnectArgs, env: &dyn Env) -> Result<Settings> {
    let mut warnings = Vec::new();

    let mut flags = Params::new();
    for (key, value) in [
        ("host", &args.host),
        ("port", &args.port),
        ("user", &args.user),
        ("dbname", &args.maintenance_db),
    ] {
        // An empty flag is no flag: psql hands its flags to libpq as a keyword array,
        // whose empty values libpq skips (`conninfo_array_parse`), so `-h ''` leaves
        // PGHOST in force.
        if let Some(v) = value.as_ref().filter(|v| !v.is_empty()) {
            flags.insert(key.to_owned(), v.clone());
        }
    }
    let conninfo = match &args.conninfo {
        Some(s) => conninfo::parse(s)?,
        None => Params::new(),
    };
    let from_conninfo_or_env = |key: &str, var: &str| {
        conninfo
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .or_else(|| env.var(var).filter(|v| !v.is_empty()))
    };
    // libpq looks up even an empty service name (`PGSERVICE=""`): not found.
    let service_name = conninfo
        .get("service")
        .cloned()
        .or_else(|| env.var("PGSERVICE"));
    let service = match service_name {
        Some(name) => {
            let file = from_conninfo_or_env("servicefile", "PGSERVICEFILE");
            Some(service::find(&name, file.as_deref(), env)?)
        }
        None => None,
    };
    let layers = Layers {
        flags,
        conninfo,
        service,
        env,
    };

    check_values(&layers, &mut warnings)?;

    let user = match layers.get("user") {
        Some((u, _)) => u,
        None => env.os_user().ok_or(ConnectError::NoUser)?,
    };
    let (dbname, dbname_is_default) = match layers.get("dbname") {
        Some((d, _)) => (d, false),
        None => (DEFAULT_DATABASE.to_owned(), true),
    };

    // Hosts, addresses and ports: comma-separated lists, as libpq's connectOptions2.
    let list = |key: &str| -> Option<Vec<String>> {
        layers
            .get(key)
            .map(|(v, _)| v.split(',').map(str::to_owned).collect())
    };
    let hosts = list("host");
    let hostaddrs = list("hostaddr");
    let count = match (&hosts, &hostaddrs) {
        (Some(h), Some(a)) if h.len() != a.len() => {
            return Err(ConnectError::HostCountMismatch {
                what: "hostaddr values",
                given: a.len(),
                hosts: h.len(),
            })
        }
        (Some(h), _) => h.len(),
        (None, Some(a)) => a.len(),
        (None, None) => 1,
    };
    let ports = match list("port") {
        None => vec![String::new(); count],
        Some(p) if p.len() == 1 => vec![p[0].clone(); count],
        Some(p) if p.len() == count => p,
        Some(p) => {
            return Err(ConnectError::HostCountMismatch {
                what: "port numbers",
                given: p.len(),
                hosts: count,
            })
        }
    };
    let given_password = layers.get("password").map(|(p, origin)| {
        let source = match origin {
            Origin::Flag | Origin::Conninfo => PasswordSource::ConnectionString,
            Origin::Service(path) => PasswordSource::ServiceFile(path),
            Origin::Env(_) => PasswordSource::Environment,
        };
        (Password::new(p), source)
    });
    let passfile = match layers.get("passfile") {
        Some((f, _)) => Some(PathBuf::from(f)),
        None => env.home_dir().map(|h| h.join(".pgpass")),
    };
    let default_dir = default_socket_dir(env);
    let mut endpoints = Vec::with_capacity(count);
    for (i, port_text) in ports.iter().enumerate() {
        let host_text = hosts
            .as_ref()
            .map(|h| h[i].clone())
            .filter(|h| !h.is_empty());
        let addr_text = hostaddrs
            .as_ref()
            .map(|a| a[i].clone())
            .filter(|a| !a.is_empty());
        let mut resolved = endpoint(host_text, addr_text, port_text, &default_dir)?;
        let endpoint = &mut resolved.endpoint;
        match &given_password {
            Some((p, source)) => {
                endpoint.password = Some(p.clone());
                endpoint.password_source = Some(source.clone());
            }
            None => {
                let key = pgpass::Key {
                    host: &resolved.pgpass_host,
                    port: &resolved.pgpass_port,
                    dbname: &dbname,
                    user: &user,
                };
                let warned = warnings.len();
                let found = passfile.as_ref().and_then(|f| {
                    pgpass::lookup(f, key, env, &mut warnings)
                        .filter(|p| !p.is_empty())
                        .map(|p| (p, f.clone()))
                });
                if warnings.len() > warned {
                    endpoint.password_file_ignored = warnings.last().cloned();
                    // Said once, however many hosts look the file up.
                    if warnings[..warned].contains(&warnings[warned]) {
                        warnings.truncate(warned);
                    }
                }
                if let Some((p, f)) = found {
                    endpoint.password = Some(Password::new(p));
                    endpoint.password_source = Some(PasswordSource::PasswordFile(f));
                }
            }
        }
        endpoints.push(resolved.endpoint);
    }
    let target_session_attrs = match layers.get("target_session_attrs") {
        Some((v, _)) => TargetSessionAttrs::parse(&v).ok_or_else(|| {
            invalid(
                "target_session_attrs",
                &v,
                "one of any, read-write, read-only, primary, standby, prefer-standby",
            )
        })?,
        None => TargetSessionAttrs::Any,
    };
    let load_balance_hosts = match layers.get("load_balance_hosts") {
        Some((v, _)) => match v.as_str() {
            "disable" => false,
            "random" => true,
            _ => return Err(invalid("load_balance_hosts", &v, "disable or random")),
        },
        None => false,
    };
    let first = endpoints[0].clone();

    // TLS.
    let sslrootcert = layers.get("sslrootcert");
    let ssl_mode = match layers.get("sslmode") {
        Some((m, _)) => {
            let mode: SslMode = m.parse()?;
            if sslrootcert.as_ref().is_some_and(|(r, _)| r == "system")
                && mode != SslMode::VerifyFull
            {
                return Err(ConnectError::WeakSslModeWithSystemRoots { mode });
            }
            mode
        }
        None if sslrootcert.as_ref().is_some_and(|(r, _)| r == "system") => SslMode::VerifyFull,
        // The deprecated PGREQUIRESSL: a value starting with 1 is sslmode=require, below
        // PGSSLMODE (libpq's `conninfo_add_defaults`).
        None if env.var("PGREQUIRESSL").is_some_and(|v| v.starts_with('1')) => SslMode::Require,
        None => SslMode::Prefer,
    };
    let any_tcp = endpoints.iter().any(|e| matches!(e.host, Host::Tcp(_)));
    let root_certs = if any_tcp {
        root_certs(ssl_mode, sslrootcert.map(|(r, _)| r), env)?
    } else {
        RootCerts::None
    };

    let tls_possible = any_tcp && ssl_mode != SslMode::Disable;
    let (ssl_min_protocol_version, ssl_max_protocol_version) = tls_versions(&layers, tls_possible)?;
    let crls = match tls::verification(ssl_mode, &root_certs) {
        Some(Verify::Chain | Verify::Full) if tls_possible => crls(&layers, env)?,
        _ => Crls::default(),
    };
    let require_auth = match layers.get("require_auth") {
        Some((v, _)) => Some(RequireAuth::parse(&v)?),
        None => None,
    };

    let connect_timeout = match layers.get("connect_timeout") {
        Some((v, _)) => parse_connect_timeout(&v)?,
        None => Some(DEFAULT_CONNECT_TIMEOUT),
    };
    let channel_binding = match layers.get("channel_binding") {
        Some((v, _)) => match v.as_str() {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            _ => return Err(invalid("channel_binding", &v, "disable, prefer or require")),
        },
        None => ChannelBinding::Prefer,
    };
    if let Some((name, origin)) = layers.get("application_name") {
        if !matches!(origin, Origin::Env(_)) && name != super::APPLICATION_NAME {
            warnings.push(format!(
                "application_name={} ignored: pgkill always connects as application_name={} \
                 so that it can recognise its own sessions",
                conninfo::quote_value(&name),
                super::APPLICATION_NAME
            ));
        }
    }

    Ok(Settings {
        host: first.host,
        hostaddr: first.hostaddr,
        port: first.port,
        user,
        password: first.password,
        password_source: first.password_source,
        password_file_ignored: first.password_file_ignored,
        dbname,
        dbname_is_default,
        ssl_mode,
        root_certs,
        crls,
        ssl_min_protocol_version,
        ssl_max_protocol_version,
        require_auth,
        require_peer: layers.get("requirepeer").map(|(v, _)| v),
        connect_timeout,
        options: layers.get("options").map(|(o, _)| o),
        channel_binding,
        force_password_prompt: args.force_password_prompt,
        warnings,
        endpoints,
        target_session_attrs,
        load_balance_hosts,
        reached: None,
    })
}

/// One host of the lists, before its password is looked up, with the texts `.pgpass` is
/// matched on.
struct Resolved {
    endpoint: Endpoint,
    pgpass_host: String,
    pgpass_port: String,
}

/// One entry of the host, hostaddr and port lists (each may be empty: the default). As
/// libpq: hostaddr, wherever it came from, means TCP to that address (even with a socket
/// directory as host); `.pgpass` is matched on host if given, else on hostaddr, as text;
/// the default socket directory (or no host) as `localhost`, any other socket directory
/// as its path; the port as text.
fn endpoint(
    host: Option<String>,
    addr: Option<String>,
    port: &str,
    default_dir: &Path,
) -> Result<Resolved> {
    let pgpass_host = match host.as_ref().or(addr.as_ref()) {
        None => "localhost".to_owned(),
        Some(h) if Path::new(h).as_os_str() == default_dir.as_os_str() => "localhost".to_owned(),
        Some(h) => h.clone(),
    };
    let mut hostaddr = match &addr {
        Some(v) => Some(
            v.trim()
                .parse::<IpAddr>()
                .map_err(|_| invalid("hostaddr", v, "an IPv4 or IPv6 address"))?,
        ),
        None => None,
    };
    let mut host = match host {
        Some(h) if h.starts_with('/') => Host::Socket(PathBuf::from(h)),
        Some(h) if h.starts_with('@') => {
            return Err(invalid(
                "host",
                &h,
                "a host name, an IP address or a Unix-socket directory \
                 (abstract Unix sockets are not supported)",
            ))
        }
        Some(h) => Host::Tcp(h),
        None => match hostaddr.take() {
            Some(addr) => Host::Tcp(addr.to_string()),
            None => Host::Socket(default_dir.to_path_buf()),
        },
    };
    if let (Host::Socket(_), Some(addr)) = (&host, hostaddr) {
        // hostaddr means TCP; a socket directory has no name to verify or look up.
        host = Host::Tcp(addr.to_string());
        hostaddr = None;
    }
    let (port, pgpass_port) = if port.is_empty() {
        (5432, "5432".to_owned())
    } else {
        let number = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid("port", port, "a TCP port number from 1 to 65535"))?;
        (number, port.to_owned())
    };
    Ok(Resolved {
        endpoint: Endpoint {
            host,
            hostaddr,
            port,
            password: None,
            password_source: None,
            password_file_ignored: None,
        },
        pgpass_host,
        pgpass_port,
    })
}

/// `ssl_min_protocol_version` (default TLSv1.2, like libpq) and
/// `ssl_max_protocol_version`. A range without TLS 1.2 or 1.3 cannot be met by rustls:
/// refused when TLS may be used, rather than connecting some other way.
fn tls_versions(
    layers: &Layers<'_>,
    tls_possible: bool,
) -> Result<(TlsVersion, Option<TlsVersion>)> {
    let parse = |name: &str| {
        layers
            .get(name)
            .map(|(v, _)| {
                TlsVersion::parse(&v)
                    .ok_or_else(|| invalid(name, &v, "one of TLSv1, TLSv1.1, TLSv1.2, TLSv1.3"))
            })
            .transpose()
    };
    let min = parse("ssl_min_protocol_version")?.unwrap_or(TlsVersion::Tls1_2);
    let max = parse("ssl_max_protocol_version")?;
    if let Some(max) = max {
        if min > max {
            return Err(ConnectError::TlsVersionRange { min, max });
        }
        if tls_possible && tls::protocol_versions(min, Some(max)).is_empty() {
            return Err(ConnectError::TlsVersionUnsupported { max });
        }
    }
    Ok((min, max))
}

/// The revocation lists, read when the server's certificate will be verified (libpq
/// loads them only then): `sslcrl` (a PEM file) and `sslcrldir` (a directory prepared by
/// `openssl rehash`: the files `HASH.rN`), else `~/.postgresql/root.crl` if it exists.
/// Unlike libpq, a list that was named but cannot be read is an error, not silently no
/// revocation checking.
fn crls(layers: &Layers<'_>, env: &dyn Env) -> Result<Crls> {
    let mut crls = Crls::default();
    let file = layers.get("sslcrl").map(|(f, _)| PathBuf::from(f));
    let dir = layers.get("sslcrldir").map(|(d, _)| PathBuf::from(d));
    if let Some(path) = &file {
        read_crl(path, "sslcrl", env, &mut crls)?;
    }
    if let Some(dir) = &dir {
        let entries = env
            .list_dir(dir)
            .map_err(|source| ConnectError::CrlUnreadable {
                keyword: "sslcrldir",
                path: dir.clone(),
                source,
            })?;
        let mut names: Vec<PathBuf> = entries
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_hashed_crl_name)
            })
            .collect();
        names.sort();
        if names.is_empty() {
            return Err(ConnectError::CrlInvalid {
                paths: vec![dir.clone()],
                detail: "the directory (sslcrldir) holds no revocation list files named HASH.rN; \
                         prepare it with `openssl rehash DIR`"
                    .into(),
            });
        }
        for path in &names {
            read_crl(path, "sslcrldir", env, &mut crls)?;
        }
    }
    if file.is_none() && dir.is_none() {
        if let Some(home) = env.home_dir() {
            let path = home.join(".postgresql").join("root.crl");
            if env.file_info(&path).is_ok() {
                read_crl(&path, "sslcrl", env, &mut crls)?;
            }
        }
    }
    Ok(crls)
}

/// `openssl rehash` names a CRL `<8 hex digits>.r<N>`.
fn is_hashed_crl_name(name: &str) -> bool {
    let Some((hash, n)) = name.split_once(".r") else {
        return false;
    };
    hash.len() == 8
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

fn read_crl(path: &Path, keyword: &'static str, env: &dyn Env, crls: &mut Crls) -> Result<()> {
    let bytes = env
        .read_file(path)
        .map_err(|source| ConnectError::CrlUnreadable {
            keyword,
            path: path.to_path_buf(),
            source,
        })?;
    let invalid = |detail: String| ConnectError::CrlInvalid {
        paths: vec![path.to_path_buf()],
        detail,
    };
    let lists = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if lists.is_empty() {
        return Err(invalid(
            "no revocation list found; it must contain PEM \"BEGIN X509 CRL\" blocks".into(),
        ));
    }
    crls.paths.push(path.to_path_buf());
    crls.lists.extend(lists);
    Ok(())
}

/// `/var/run/postgresql` if it is a directory, else `/tmp`.
fn default_socket_dir(env: &dyn Env) -> PathBuf {
    DEFAULT_SOCKET_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| env.file_info(d).is_ok_and(|i| i.is_dir))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIRS[1]))
}

/// libpq: whole seconds; zero or negative waits forever; 1 counts as 2.
fn parse_connect_timeout(v: &str) -> Result<Option<Duration>> {
    let secs: i64 = v.trim().parse().map_err(|_| {
        invalid(
            "connect_timeout",
            v,
            "whole seconds, e.g. 10 (0 waits forever)",
        )
    })?;
    Ok(match secs {
        s if s <= 0 => None,
        1 => Some(Duration::from_secs(2)),
        s => Some(Duration::from_secs(s.unsigned_abs())),
    })
}

/// Keywords pgkill accepts only with some values; and `PG*` variables of keywords pgkill
/// does not support. Refused in a connection string or service file; ignored with a
/// warning in the environment (a variable set for other tools should not stop pgkill).
fn check_values(layers: &Layers<'_>, warnings: &mut Vec<String>) -> Result<()> {
    for k in KEYWORDS {
        if let (Support::Unsupported(why), Some(var)) = (k.support, k.env) {
            if layers.env.var(var).is_some_and(|v| !v.is_empty()) {
                warnings.push(format!("{var} is set but ignored: {why}"));
            }
        }
    }
    // (keyword, accepted values, valid values pgkill refuses, why)
    let checks: [(&str, &[&str], &[&str], &str); 3] = [
        (
            "gssencmode",
            &["disable", "prefer"],
            &["require"],
            "pgkill does not support GSSAPI encryption",
        ),
        (
            "sslnegotiation",
            &["postgres"],
            &["direct"],
            "pgkill uses the standard PostgreSQL TLS negotiation",
        ),
        (
            "sslcertmode",
            &["disable", "allow"],
            &["require"],
            "pgkill does not support TLS client certificates yet",
        ),
    ];
    for (name, accepted, refused, why) in checks {
        let Some((value, origin)) = layers.get(name) else {
            continue;
        };
        if accepted.contains(&value.as_str()) {
            continue;
        }
        if !refused.contains(&value.as_str()) {
            let mut all: Vec<&str> = accepted.to_vec();
            all.extend_from_slice(refused);
            return Err(invalid(name, &value, &format!("one of {}", all.join(", "))));
        }
        match origin {
            Origin::Env(var) => {
                warnings.push(format!("{var}={value} is set but ignored: {why}"));
            }
            _ => {
                return Err(ConnectError::UnsupportedOption {
                    name: format!("{name}={value}"),
                    why: why.to_owned(),
                })
            }
        }
    }
    Ok(())
}

/// The root certificates for `mode`: `sslrootcert` (a file, or `system`), else
/// `~/.postgresql/root.crt`. Needed for `verify-ca`/`verify-full`; used by `require`
/// when present (like libpq); not read for the modes that never verify.
fn root_certs(mode: SslMode, sslrootcert: Option<String>, env: &dyn Env) -> Result<RootCerts> {
    if matches!(mode, SslMode::Disable | SslMode::Allow | SslMode::Prefer) {
        return Ok(RootCerts::None);
    }
    let path = match sslrootcert {
        Some(r) if r == "system" => return Ok(RootCerts::System),
        Some(r) => PathBuf::from(r),
        None => match env.home_dir() {
            Some(home) => home.join(".postgresql").join("root.crt"),
            None if mode.verifies() => {
                return Err(ConnectError::RootCertMissing {
                    mode,
                    path: PathBuf::from("~/.postgresql/root.crt"),
                })
            }
            None => return Ok(RootCerts::None),
        },
    };
    match env.read_file(&path) {
        Ok(bytes) => Ok(RootCerts::File {
            certs: parse_pem(&path, &bytes)?,
            path,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if mode.verifies() {
                Err(ConnectError::RootCertMissing { mode, path })
            } else {
                Ok(RootCerts::None)
            }
        }
        Err(source) => Err(ConnectError::RootCertUnreadable { path, source }),
    }
}

fn parse_pem(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ConnectError::RootCertInvalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ConnectError::RootCertInvalid {
            path: path.to_path_buf(),
            detail: "no certificate found".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::MemoryEnv;

    fn base_env() -> MemoryEnv {
        MemoryEnv::new().user("osuser").home("/home/osuser")
    }

    fn args() -> ConnectArgs {
        ConnectArgs::default()
    }

    fn conn(s: &str) -> ConnectArgs {
        ConnectArgs {
            conninfo: Some(s.to_owned()),
            ..ConnectArgs::default()
        }
    }

    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn defaults() {
        let s = resolve(&args(), &base_env()).unwrap();
        assert_eq!(s.host, Host::Socket("/tmp".into()));
        assert_eq!(s.port, 5432);
        assert_eq!(s.user, "osuser");
        assert_eq!(s.dbname, "postgres");
        assert!(s.dbname_is_default);
        assert_eq!(s.ssl_mode, SslMode::Prefer);
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(s.password, None);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(
            s.describe(),
            "host=/tmp port=5432 user=osuser dbname=postgres"
        );
        // Debian's socket directory when it exists.
        let s = resolve(&args(), &base_env().dir("/var/run/postgresql")).unwrap();
        assert_eq!(s.host, Host::Socket("/var/run/postgresql".into()));
    }

    #[test]
    fn no_os_user_and_no_user_given() {
        let e = resolve(&args(), &MemoryEnv::new()).unwrap_err();
        assert!(matches!(e, ConnectError::NoUser), "{e:?}");
        let s = resolve(
            &ConnectArgs {
                user: Some("bob".into()),
                ..args()
            },
            &MemoryEnv::new(),
        )
        .unwrap();
        assert_eq!(s.user, "bob");
    }

    #[test]
    fn precedence_flags_conninfo_service_env_default() {
        let env = base_env()
            .var("PGHOST", "env-host")
            .var("PGPORT", "1001")
            .var("PGUSER", "env-user")
            .var("PGDATABASE", "env-db")
            .var("PGSERVICE", "svc")
            .file(
                "/home/osuser/.pg_service.conf",
                "[svc]\nhost=svc-host\nport=1002\nuser=svc-user\ndbname=svc-db\n",
                0o600,
            );
        // Environment only (service not consulted for keys absent from it).
        let only_env = base_env()
            .var("PGHOST", "env-host")
            .var("PGPORT", "1001")
            .var("PGUSER", "env-user")
            .var("PGDATABASE", "env-db");
        let s = resolve(&args(), &only_env).unwrap();
        assert_eq!(
            (s.host, s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("env-host".into()), 1001, "env-user", "env-db")
        );
        assert!(!s.dbname_is_default);
        // The service beats the environment.
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(
            (s.host, s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("svc-host".into()), 1002, "svc-user", "svc-db")
        );
        // The connection string beats the service.
        let s = resolve(&conn("host=ci-host port=1003 user=ci-user"), &env).unwrap();
        assert_eq!(
            (s.host, s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("ci-host".into()), 1003, "ci-user", "svc-db")
        );
        // As in psql, the connection string beats the flags (psql passes -h -p -U -d
        // before it); flags beat the service and the environment.
        let a = ConnectArgs {
            host: Some("flag-host".into()),
            port: Some("1004".into()),
            user: Some("flag-user".into()),
            maintenance_db: Some("flag-db".into()),
            conninfo: Some("postgresql://uri-user@uri-host:1005/uri-db".into()),
            force_password_prompt: true,
        };
        let s = resolve(&a, &env).unwrap();
        assert_eq!(
            (s.host, s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("uri-host".into()), 1005, "uri-user", "uri-db")
        );
        assert!(s.force_password_prompt);
        let a = ConnectArgs {
            conninfo: Some("postgresql://uri-host".into()),
            ..a
        };
        let s = resolve(&a, &env).unwrap();
        assert_eq!(
            (s.host, s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("uri-host".into()), 1004, "flag-user", "flag-db")
        );
        // A URI's parts beat the environment.
        let s = resolve(
            &conn("postgresql://uri-user@uri-host:1005/uri-db"),
            &only_env,
        )
        .unwrap();
        assert_eq!(
            (s.host, s.port, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("uri-host".into()), 1005, "uri-user", "uri-db")
        );
    }

    #[test]
    fn service_named_in_the_connection_string() {
        let env = base_env().var("PGSERVICE", "from-env").file(
            "/home/osuser/.pg_service.conf",
            "[from-env]\nhost=a\n[from-conninfo]\nhost=b\nsslmode=disable\n",
            0o600,
        );
        let s = resolve(&conn("service=from-conninfo"), &env).unwrap();
        assert_eq!(s.host, Host::Tcp("b".into()));
        assert_eq!(s.ssl_mode, SslMode::Disable);
        let e = resolve(&conn("service=nope"), &env).unwrap_err();
        assert!(matches!(e, ConnectError::ServiceNotFound { .. }), "{e:?}");
        // servicefile= and PGSERVICEFILE pick the user's file.
        let env = base_env().var("PGSERVICEFILE", "/srv/pg.conf").file(
            "/srv/pg.conf",
            "[s]\nport=7000\n",
            0o644,
        );
        assert_eq!(resolve(&conn("service=s"), &env).unwrap().port, 7000);
    }

    #[test]
    fn plain_database_name_as_the_positional() {
        let s = resolve(&conn("shop"), &base_env()).unwrap();
        assert_eq!(s.dbname, "shop");
        assert!(!s.dbname_is_default);
    }

    #[test]
    fn hosts_sockets_and_hostaddr() {
        let s = resolve(&conn("host=/run/pg port=6000"), &base_env()).unwrap();
        assert_eq!(s.host, Host::Socket("/run/pg".into()));
        assert!(s.is_unix_socket());
        let s = resolve(&conn("hostaddr=10.0.0.1"), &base_env()).unwrap();
        assert_eq!((s.host, s.hostaddr), (Host::Tcp("10.0.0.1".into()), None));
        let s = resolve(&conn("host=db.example.com hostaddr=10.0.0.1"), &base_env()).unwrap();
        assert_eq!(s.host, Host::Tcp("db.example.com".into()));
        assert_eq!(s.hostaddr, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            s.describe(),
            "host=db.example.com hostaddr=10.0.0.1 port=5432 user=osuser dbname=postgres"
        );
        // As libpq: PGHOSTADDR is used with -h (the name for TLS and .pgpass) ...
        let env = base_env().var("PGHOSTADDR", "10.0.0.9");
        let a = ConnectArgs {
            host: Some("flag-host".into()),
            ..args()
        };
        let s = resolve(&a, &env).unwrap();
        assert_eq!(
            (s.host, s.hostaddr),
            (
                Host::Tcp("flag-host".into()),
                Some("10.0.0.9".parse().unwrap())
            )
        );
        // ... and with -h /socket/dir it means TCP to the address.
        let a = ConnectArgs {
            host: Some("/socket/dir".into()),
            ..args()
        };
        let s = resolve(&a, &env).unwrap();
        assert_eq!((s.host, s.hostaddr), (Host::Tcp("10.0.0.9".into()), None));
        let e = resolve(&conn("hostaddr=not-an-ip"), &base_env()).unwrap_err();
        assert!(e.to_string().contains("hostaddr"), "{e}");
        let e = resolve(&conn("host=@abstract"), &base_env()).unwrap_err();
        assert!(e.to_string().contains("abstract"), "{e}");
    }

    fn hosts_of(s: &Settings) -> Vec<(Host, Option<IpAddr>, u16)> {
        s.endpoints
            .iter()
            .map(|e| (e.host.clone(), e.hostaddr, e.port))
            .collect()
    }

    #[test]
    fn several_hosts_as_in_libpq() {
        let tcp = |h: &str, p| (Host::Tcp(h.to_owned()), None, p);
        let socket = |d: &str, p| (Host::Socket(PathBuf::from(d)), None, p);
        let s = resolve(&conn("host=a,b port=1,2"), &base_env()).unwrap();
        assert_eq!(hosts_of(&s), [tcp("a", 1), tcp("b", 2)]);
        assert_eq!((s.host.to_string(), s.port), ("a".to_owned(), 1));
        // One port for all hosts; empty entries are the defaults.
        let s = resolve(&conn("host=a,,/sock port=7"), &base_env()).unwrap();
        assert_eq!(
            hosts_of(&s),
            [tcp("a", 7), socket("/tmp", 7), socket("/sock", 7)]
        );
        let s = resolve(&conn("host=a,b port=,9"), &base_env()).unwrap();
        assert_eq!(hosts_of(&s), [tcp("a", 5432), tcp("b", 9)]);
        // URIs, with IPv6 and a host without a port.
        let s = resolve(&conn("postgresql://a:1,[::1]:2,c/db"), &base_env()).unwrap();
        assert_eq!(hosts_of(&s), [tcp("a", 1), tcp("::1", 2), tcp("c", 5432)]);
        assert_eq!(s.dbname, "db");
        // PGHOST/PGPORT lists, and hostaddr lists paired with host lists.
        let env = base_env().var("PGHOST", "x,y").var("PGPORT", "3,4");
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(hosts_of(&s), [tcp("x", 3), tcp("y", 4)]);
        let s = resolve(&conn("host=a,b hostaddr=10.0.0.1,"), &base_env()).unwrap();
        assert_eq!(
            hosts_of(&s),
            [
                (
                    Host::Tcp("a".into()),
                    Some("10.0.0.1".parse().unwrap()),
                    5432
                ),
                tcp("b", 5432)
            ]
        );
        // Counts that do not match, in libpq's words.
        let e = resolve(&conn("host=a,b,c port=1,2"), &base_env()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "could not match 2 port numbers to 3 hosts: give one port for all hosts or one per host"
        );
        let e = resolve(&conn("host=a,b hostaddr=10.0.0.1"), &base_env()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "could not match 2 host names to 1 hostaddr values: give one hostaddr per host (an empty entry looks the name up)"
        );
        let e = resolve(&conn("host=a,b port=1,x"), &base_env()).unwrap_err();
        assert!(
            matches!(&e, ConnectError::InvalidValue { name, .. } if name == "port"),
            "{e:?}"
        );
    }

    #[test]
    fn pgpass_is_matched_per_host() {
        let env = base_env().file(
            "/home/osuser/.pgpass",
            "a:1:*:*:pa\nb:2:*:*:pb\nlocalhost:5432:*:*:pl\n",
            0o600,
        );
        let s = resolve(&conn("host=a,b,c,/tmp port=1,2,3,5432"), &env).unwrap();
        let passwords: Vec<Option<&str>> = s
            .endpoints
            .iter()
            .map(|e| e.password.as_ref().map(Password::expose))
            .collect();
        assert_eq!(passwords, [Some("pa"), Some("pb"), None, Some("pl")]);
        // A password given applies to every host.
        let s = resolve(&conn("host=a,b password=given"), &env).unwrap();
        assert!(s
            .endpoints
            .iter()
            .all(|e| e.password.as_ref().map(Password::expose) == Some("given")));
    }

    #[test]
    fn target_session_attrs_and_load_balance_hosts() {
        for (v, want) in [
            ("any", TargetSessionAttrs::Any),
            ("read-write", TargetSessionAttrs::ReadWrite),
            ("read-only", TargetSessionAttrs::ReadOnly),
            ("primary", TargetSessionAttrs::Primary),
            ("standby", TargetSessionAttrs::Standby),
            ("prefer-standby", TargetSessionAttrs::PreferStandby),
        ] {
            let s = resolve(&conn(&format!("target_session_attrs={v}")), &base_env()).unwrap();
            assert_eq!(s.target_session_attrs, want);
            let env = base_env().var("PGTARGETSESSIONATTRS", v);
            assert_eq!(resolve(&args(), &env).unwrap().target_session_attrs, want);
        }
        let e = resolve(&conn("target_session_attrs=master"), &base_env()).unwrap_err();
        assert!(
            matches!(&e, ConnectError::InvalidValue { name, .. } if name == "target_session_attrs"),
            "{e:?}"
        );
        assert!(!resolve(&args(), &base_env()).unwrap().load_balance_hosts);
        assert!(
            resolve(&conn("load_balance_hosts=random"), &base_env())
                .unwrap()
                .load_balance_hosts
        );
        let env = base_env().var("PGLOADBALANCEHOSTS", "random");
        assert!(resolve(&args(), &env).unwrap().load_balance_hosts);
        let e = resolve(&conn("load_balance_hosts=sometimes"), &base_env()).unwrap_err();
        assert!(
            matches!(&e, ConnectError::InvalidValue { name, .. } if name == "load_balance_hosts"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_ports() {
        for p in ["0", "65536", "abc", "-1"] {
            let a = ConnectArgs {
                port: Some(p.into()),
                ..args()
            };
            let e = resolve(&a, &base_env()).unwrap_err();
            assert!(
                matches!(&e, ConnectError::InvalidValue { name, .. } if name == "port"),
                "{p}: {e:?}"
            );
        }
    }

    #[test]
    fn empty_values_block_the_environment_as_in_libpq() {
        let env = base_env()
            .var("PGHOST", "env-host")
            .var("PGUSER", "env-user")
            .var("PGPORT", "1001")
            .var("PGDATABASE", "env-db")
            .var("PGPASSWORD", "env-pw");
        // Nothing empty: the environment applies.
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(
            (s.host.clone(), s.user.as_str()),
            (Host::Tcp("env-host".into()), "env-user")
        );
        // Empty in the connection string or a URI query: the built-in default.
        for c in [
            "host='' user='' port='' dbname='' password=''",
            "postgresql:///?host=&user=&port=&dbname=&password=",
        ] {
            let s = resolve(&conn(c), &env).unwrap();
            assert_eq!(s.host, Host::Socket("/tmp".into()), "{c}");
            assert_eq!(s.user, "osuser", "{c}");
            assert_eq!(s.port, 5432, "{c}");
            assert_eq!(s.dbname, "postgres", "{c}");
            assert_eq!(s.password, None, "{c}");
        }
        // An empty flag is no flag (as in psql): the environment applies.
        let a = ConnectArgs {
            host: Some(String::new()),
            port: Some(String::new()),
            user: Some(String::new()),
            maintenance_db: Some(String::new()),
            ..args()
        };
        let s = resolve(&a, &env).unwrap();
        assert_eq!(
            (s.host, s.user.as_str(), s.dbname.as_str()),
            (Host::Tcp("env-host".into()), "env-user", "env-db")
        );
        // Empty in the service file: the same.
        let env = env.var("PGSERVICE", "s").file(
            "/home/osuser/.pg_service.conf",
            "[s]\nhost=\nuser=\n",
            0o600,
        );
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(
            (s.host, s.user.as_str()),
            (Host::Socket("/tmp".into()), "osuser")
        );
        // Other keywords: empty is unset (an empty sslmode does not hide PGSSLMODE).
        let env = base_env().var("PGSSLMODE", "verify-full");
        let e = resolve(&conn("host=h sslmode="), &env).map(|s| s.ssl_mode);
        assert!(matches!(e, Ok(SslMode::VerifyFull) | Err(_)), "{e:?}");
    }

    #[test]
    fn an_empty_service_name_is_not_found() {
        let env = base_env().var("PGSERVICE", "");
        let e = resolve(&args(), &env).unwrap_err();
        assert!(
            matches!(&e, ConnectError::ServiceNotFound { name, .. } if name.is_empty()),
            "{e:?}"
        );
        let e = resolve(&conn("service= host=h"), &base_env()).unwrap_err();
        assert!(matches!(e, ConnectError::ServiceNotFound { .. }), "{e:?}");
    }

    #[test]
    fn requiressl_as_in_libpq() {
        let mode = |c: &str, env: MemoryEnv| resolve(&conn(c), &env).unwrap().ssl_mode;
        // The keyword, in a connection string and a URI; the later of it and sslmode wins.
        assert_eq!(mode("host=h requiressl=1", base_env()), SslMode::Require);
        assert_eq!(mode("host=h requiressl=10", base_env()), SslMode::Require);
        assert_eq!(mode("host=h requiressl=0", base_env()), SslMode::Prefer);
        assert_eq!(mode("host=h requiressl=yes", base_env()), SslMode::Prefer);
        assert_eq!(
            mode("host=h requiressl=1 sslmode=prefer", base_env()),
            SslMode::Prefer
        );
        assert_eq!(
            mode("host=h sslmode=disable requiressl=1", base_env()),
            SslMode::Require
        );
        assert_eq!(
            mode("postgresql://h/db?requiressl=1", base_env()),
            SslMode::Require
        );
        assert_eq!(
            mode("postgresql://h/db?requiressl=1&sslmode=disable", base_env()),
            SslMode::Disable
        );
        // The keyword hides PGSSLMODE (it is stored as sslmode).
        let env = base_env().var("PGSSLMODE", "require");
        assert_eq!(mode("host=h requiressl=0", env), SslMode::Prefer);
        // PGREQUIRESSL: a value starting with 1, below PGSSLMODE and sslmode.
        let env = || base_env().var("PGREQUIRESSL", "1");
        assert_eq!(mode("host=h", env()), SslMode::Require);
        assert_eq!(mode("host=h sslmode=prefer", env()), SslMode::Prefer);
        assert_eq!(
            mode("host=h", env().var("PGSSLMODE", "allow")),
            SslMode::Allow
        );
        assert_eq!(
            mode("host=h", base_env().var("PGREQUIRESSL", "0")),
            SslMode::Prefer
        );
        // Not a service-file keyword (libpq: syntax error).
        let env = base_env().file(
            "/home/osuser/.pg_service.conf",
            "[s]\nrequiressl=1\n",
            0o600,
        );
        let e = resolve(&conn("service=s"), &env).unwrap_err();
        assert!(
            matches!(e, ConnectError::ServiceFileSyntax { line: 2, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn connect_timeouts() {
        let t = |v: &str| {
            resolve(&conn(&format!("connect_timeout={v}")), &base_env()).map(|s| s.connect_timeout)
        };
        assert_eq!(t("30").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(t("1").unwrap(), Some(Duration::from_secs(2)));
        assert_eq!(t("0").unwrap(), None);
        assert_eq!(t("-5").unwrap(), None);
        assert!(t("1.5").is_err());
        let env = base_env().var("PGCONNECT_TIMEOUT", "3");
        assert_eq!(
            resolve(&args(), &env).unwrap().connect_timeout,
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn sslmodes() {
        for (v, m) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Allow),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            assert_eq!(v.parse::<SslMode>().unwrap(), m);
            assert_eq!(m.to_string(), v);
        }
        for bad in ["", "Require", "verify_full", "on", "true"] {
            let e = bad.parse::<SslMode>().unwrap_err();
            assert!(matches!(e, ConnectError::InvalidSslMode { .. }));
            assert!(e.to_string().contains("verify-full"), "{e}");
        }
        let e = resolve(&args(), &base_env().var("PGSSLMODE", "bogus")).unwrap_err();
        assert!(e.to_string().contains("invalid sslmode \"bogus\""), "{e}");
        let s = resolve(&args(), &base_env().var("PGSSLMODE", "require")).unwrap();
        assert_eq!(s.ssl_mode, SslMode::Require);
        assert!(matches!(s.root_certs, RootCerts::None));
    }

    #[test]
    fn root_certificates() {
        let tcp = "host=db ";
        // verify-* need a CA.
        let e = resolve(&conn(&format!("{tcp}sslmode=verify-full")), &base_env()).unwrap_err();
        assert!(
            matches!(&e, ConnectError::RootCertMissing { path, .. }
                if path == Path::new("/home/osuser/.postgresql/root.crt")),
            "{e:?}"
        );
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        // The default file is used when present, also by require.
        let env = base_env().file("/home/osuser/.postgresql/root.crt", CA_PEM, 0o644);
        for mode in ["require", "verify-ca", "verify-full"] {
            let s = resolve(&conn(&format!("{tcp}sslmode={mode}")), &env).unwrap();
            assert!(
                matches!(&s.root_certs, RootCerts::File { certs, .. } if certs.len() == 1),
                "{mode}: {:?}",
                s.root_certs
            );
        }
        // An explicit file.
        let env = base_env().file("/etc/ca.pem", CA_PEM, 0o644);
        let s = resolve(
            &conn(&format!("{tcp}sslmode=verify-ca sslrootcert=/etc/ca.pem")),
            &env,
        )
        .unwrap();
        assert!(matches!(s.root_certs, RootCerts::File { .. }));
        // Missing explicit file: an error for verify-*, no verification for require.
        let e = resolve(
            &conn(&format!("{tcp}sslmode=verify-ca sslrootcert=/nope.pem")),
            &env,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nope.pem"), "{e}");
        let s = resolve(
            &conn(&format!("{tcp}sslmode=require sslrootcert=/nope.pem")),
            &env,
        )
        .unwrap();
        assert!(matches!(s.root_certs, RootCerts::None));
        // Unreadable (here: a directory) and not PEM.
        let env = base_env()
            .dir("/etc/ca-dir")
            .file("/etc/garbage.pem", "hello", 0o644);
        let e = resolve(
            &conn(&format!("{tcp}sslmode=verify-full sslrootcert=/etc/ca-dir")),
            &env,
        )
        .unwrap_err();
        assert!(
            matches!(e, ConnectError::RootCertUnreadable { .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("cannot read the TLS root certificate file \"/etc/ca-dir\""),
            "{e}"
        );
        let e = resolve(
            &conn(&format!(
                "{tcp}sslmode=verify-full sslrootcert=/etc/garbage.pem"
            )),
            &env,
        )
        .unwrap_err();
        assert!(matches!(e, ConnectError::RootCertInvalid { .. }), "{e:?}");
        // Modes that never verify do not read anything.
        let s = resolve(
            &conn(&format!("{tcp}sslmode=prefer sslrootcert=/etc/ca-dir")),
            &env,
        )
        .unwrap();
        assert!(matches!(s.root_certs, RootCerts::None));
        // Unix sockets never use TLS, so verify-full needs no CA there.
        let s = resolve(&conn("host=/tmp sslmode=verify-full"), &base_env()).unwrap();
        assert!(matches!(s.root_certs, RootCerts::None));
    }

    #[test]
    fn system_roots() {
        let s = resolve(&conn("host=db sslrootcert=system"), &base_env()).unwrap();
        assert_eq!(s.ssl_mode, SslMode::VerifyFull);
        assert!(matches!(s.root_certs, RootCerts::System));
        let e = resolve(
            &conn("host=db sslrootcert=system sslmode=require"),
            &base_env(),
        )
        .unwrap_err();
        assert!(
            matches!(e, ConnectError::WeakSslModeWithSystemRoots { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn password_from_conninfo_env_service_and_pgpass() {
        let s = resolve(
            &conn("password=from-ci"),
            &base_env().var("PGPASSWORD", "from-env"),
        )
        .unwrap();
        assert_eq!(s.password.unwrap().expose(), "from-ci");
        assert_eq!(s.password_source, Some(PasswordSource::ConnectionString));
        let env = base_env().var("PGPASSWORD", "from-env").file(
            "/home/osuser/.pgpass",
            "*:*:*:*:from-pgpass\n",
            0o600,
        );
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "from-env");
        assert_eq!(s.password_source, Some(PasswordSource::Environment));
        let env = base_env().file("/home/osuser/.pgpass", "*:*:*:*:from-pgpass\n", 0o600);
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "from-pgpass");
        assert_eq!(
            s.password_source,
            Some(PasswordSource::PasswordFile("/home/osuser/.pgpass".into()))
        );
        let env = base_env().file(
            "/home/osuser/.pg_service.conf",
            "[s]\npassword=svc\n",
            0o600,
        );
        let s = resolve(&conn("service=s"), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "svc");
    }

    #[test]
    fn pgpass_matches_sockets_ports_and_addresses_as_libpq() {
        let pgpass = "\
/some/dir:5432:*:*:by-dir
localhost:062431:*:*:port-text
0\\:0\\:0\\:0\\:0\\:0\\:0\\:1:5432:*:*:long-v6
named:5432:*:*:by-name
localhost:5432:*:*:localhost
";
        let env = base_env().file("/home/osuser/.pgpass", pgpass, 0o600);
        let pw = |c: &str, env: &MemoryEnv| {
            resolve(&conn(c), env)
                .unwrap()
                .password
                .map(|p| p.expose().to_owned())
        };
        // A socket directory other than the default: its path text.
        assert_eq!(pw("host=/some/dir", &env).as_deref(), Some("by-dir"));
        assert_eq!(pw("host=/some/dir/", &env), None);
        assert_eq!(pw("host=/other", &env), None);
        // The default directory (as resolved: /var/run/postgresql when it exists).
        assert_eq!(pw("host=/tmp", &env).as_deref(), Some("localhost"));
        let debian =
            base_env()
                .dir("/var/run/postgresql")
                .file("/home/osuser/.pgpass", pgpass, 0o600);
        assert_eq!(
            pw("host=/var/run/postgresql", &debian).as_deref(),
            Some("localhost")
        );
        assert_eq!(pw("", &debian).as_deref(), Some("localhost"));
        assert_eq!(pw("host=/tmp", &debian), None);
        // The port as given.
        assert_eq!(
            pw("host=/tmp port=062431", &env).as_deref(),
            Some("port-text")
        );
        // hostaddr alone: its text as given; with host: host.
        assert_eq!(
            pw("hostaddr=0:0:0:0:0:0:0:1", &env).as_deref(),
            Some("long-v6")
        );
        assert_eq!(pw("hostaddr=::1", &env), None);
        assert_eq!(
            pw("host=named hostaddr=10.0.0.1", &env).as_deref(),
            Some("by-name")
        );
        // A socket directory with hostaddr (TCP to the address): still the directory.
        assert_eq!(
            pw("host=/some/dir hostaddr=127.0.0.1", &env).as_deref(),
            Some("by-dir")
        );
    }

    #[test]
    fn an_ignored_pgpass_is_remembered_for_the_error() {
        let env = base_env().file("/home/osuser/.pgpass", "*:*:*:*:pw\n", 0o644);
        let s = resolve(&conn("host=h"), &env).unwrap();
        assert_eq!(s.password, None);
        let why = s.password_file_ignored.clone().unwrap();
        assert!(
            why.contains("/home/osuser/.pgpass") && why.contains("0644"),
            "{why}"
        );
        let e = ConnectError::PasswordRequired {
            user: s.user.clone(),
            target: s.describe(),
            ignored: s.password_file_ignored.clone(),
        };
        let text = e.to_string();
        assert!(
            text.contains("group or world access") && text.contains("chmod 0600"),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");
        let env = base_env().dir("/home/osuser/.pgpass");
        let s = resolve(&conn("host=h"), &env).unwrap();
        assert!(s
            .password_file_ignored
            .unwrap()
            .contains("not a plain file"));
        let s = resolve(&conn("host=h"), &base_env()).unwrap();
        assert_eq!(s.password_file_ignored, None);
    }

    #[test]
    fn pgpass_matching_uses_the_resolved_settings() {
        let pgpass = "\
localhost:5432:postgres:osuser:socket-default
db.example.com:6432:shop:bob:shop-pw
10.0.0.1:5432:*:bob:by-address
";
        let env = base_env().file("/home/osuser/.pgpass", pgpass, 0o600);
        // The default Unix-socket directory matches as "localhost" ...
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "socket-default");
        let s = resolve(&conn("host=/tmp"), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "socket-default");
        // ... any other directory does not.
        let s = resolve(&conn("host=/some/dir"), &env).unwrap();
        assert_eq!(s.password, None);
        let s = resolve(&conn("postgresql://bob@db.example.com:6432/shop"), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "shop-pw");
        // Port and database must match too.
        let s = resolve(&conn("postgresql://bob@db.example.com:6432/other"), &env).unwrap();
        assert_eq!(s.password, None);
        let s = resolve(&conn("postgresql://bob@db.example.com/shop"), &env).unwrap();
        assert_eq!(s.password, None);
        // --maintenance-db is what is matched (the connection string names none).
        let a = ConnectArgs {
            maintenance_db: Some("shop".into()),
            ..conn("postgresql://bob@db.example.com:6432")
        };
        assert_eq!(
            resolve(&a, &env).unwrap().password.unwrap().expose(),
            "shop-pw"
        );
        // hostaddr when there is no host.
        let s = resolve(&conn("hostaddr=10.0.0.1 user=bob"), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "by-address");
        // PGPASSFILE and passfile= pick another file.
        let env = env.file("/srv/pass", "*:*:*:*:other-file\n", 0o600);
        let s = resolve(&args(), &env.clone().var("PGPASSFILE", "/srv/pass")).unwrap();
        assert_eq!(s.password.unwrap().expose(), "other-file");
        let s = resolve(&conn("passfile=/srv/pass"), &env).unwrap();
        assert_eq!(s.password.unwrap().expose(), "other-file");
    }

    #[test]
    fn readable_pgpass_is_ignored_with_a_warning() {
        let env = base_env().file("/home/osuser/.pgpass", "*:*:*:*:pw\n", 0o644);
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.password, None);
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("/home/osuser/.pgpass"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn application_name_is_always_pgkill() {
        let s = resolve(&conn("application_name=mine"), &base_env()).unwrap();
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("application_name=mine ignored"),
            "{:?}",
            s.warnings
        );
        // PGAPPNAME is ignored silently (it is often set for every tool).
        let s = resolve(&args(), &base_env().var("PGAPPNAME", "mine")).unwrap();
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn unsupported_settings() {
        let e = resolve(&conn("gssencmode=require"), &base_env()).unwrap_err();
        assert!(matches!(e, ConnectError::UnsupportedOption { .. }), "{e:?}");
        let e = resolve(&conn("gssencmode=sometimes"), &base_env()).unwrap_err();
        assert!(matches!(e, ConnectError::InvalidValue { .. }), "{e:?}");
        assert!(resolve(
            &conn("gssencmode=disable target_session_attrs=any"),
            &base_env()
        )
        .is_ok());
        // From the environment: warnings, not errors.
        let env = base_env()
            .var("PGSSLCERT", "/c.crt")
            .var("PGGSSENCMODE", "require");
        let s = resolve(&args(), &env).unwrap();
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(s
            .warnings
            .iter()
            .any(|w| w.starts_with("PGSSLCERT is set but ignored")));
        assert!(s
            .warnings
            .iter()
            .any(|w| w.starts_with("PGGSSENCMODE=require")));
    }

    #[test]
    fn security_settings_from_the_environment_are_used_not_ignored() {
        let env = base_env()
            .var("PGREQUIREAUTH", "scram-sha-256")
            .var("PGREQUIREPEER", "postgres")
            .var("PGSSLMINPROTOCOLVERSION", "TLSv1.3")
            .var("PGSSLMAXPROTOCOLVERSION", "tlsv1.3")
            .var("PGSSLCRL", "/nonexistent.crl");
        let s = resolve(&args(), &env).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(s.require_auth.unwrap().to_string(), "scram-sha-256");
        assert_eq!(s.require_peer.as_deref(), Some("postgres"));
        assert_eq!(s.ssl_min_protocol_version, TlsVersion::Tls1_3);
        assert_eq!(s.ssl_max_protocol_version, Some(TlsVersion::Tls1_3));
        // The connection string wins over the environment.
        let s = resolve(&conn("require_auth=!password requirepeer=pg"), &env).unwrap();
        assert_eq!(s.require_auth.unwrap().to_string(), "!password");
        assert_eq!(s.require_peer.as_deref(), Some("pg"));
        // Bad values are errors, from either place.
        for bad in [
            conn("require_auth=scram-sha-256,!md5"),
            conn("require_auth=trust"),
        ] {
            let e = resolve(&bad, &base_env()).unwrap_err();
            assert!(
                matches!(&e, ConnectError::InvalidValue { name, .. } if name == "require_auth"),
                "{e:?}"
            );
        }
        let e = resolve(
            &args(),
            &base_env().var("PGREQUIREAUTH", "password,password"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("given more than once"), "{e}");
    }

    #[test]
    fn tls_protocol_versions() {
        let v = |c: &str| resolve(&conn(c), &base_env());
        let s = v("host=db").unwrap();
        assert_eq!(
            (s.ssl_min_protocol_version, s.ssl_max_protocol_version),
            (TlsVersion::Tls1_2, None),
            "libpq's default minimum"
        );
        let s =
            v("host=db ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.2").unwrap();
        assert_eq!(
            (s.ssl_min_protocol_version, s.ssl_max_protocol_version),
            (TlsVersion::Tls1_0, Some(TlsVersion::Tls1_2))
        );
        for bad in ["TLSv1.4", "SSLv3", "1.2", "tls1.2"] {
            let e = v(&format!("host=db ssl_min_protocol_version={bad}")).unwrap_err();
            assert!(
                matches!(&e, ConnectError::InvalidValue { name, .. } if name == "ssl_min_protocol_version"),
                "{bad}: {e:?}"
            );
            assert!(e.to_string().contains("TLSv1.3"), "{e}");
        }
        let e = v("host=db ssl_max_protocol_version=TLS").unwrap_err();
        assert!(
            matches!(&e, ConnectError::InvalidValue { name, .. } if name == "ssl_max_protocol_version")
        );
        let e = v("host=db ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2")
            .unwrap_err();
        assert!(matches!(e, ConnectError::TlsVersionRange { .. }), "{e:?}");
        assert!(e.to_string().contains("TLSv1.3 is above"), "{e}");
        // Like libpq, the default minimum (TLSv1.2) makes a lower maximum alone a bad range.
        let e = v("host=db ssl_max_protocol_version=TLSv1.1").unwrap_err();
        assert!(matches!(e, ConnectError::TlsVersionRange { .. }), "{e:?}");
        // Below TLS 1.2 rustls cannot go: refused wherever TLS may be used...
        for c in [
            "host=db ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1",
            "host=db sslmode=require ssl_min_protocol_version=tlsv1 ssl_max_protocol_version=TLSv1",
        ] {
            let e = v(c).unwrap_err();
            assert!(
                matches!(e, ConnectError::TlsVersionUnsupported { .. }),
                "{c}: {e:?}"
            );
            assert!(e.to_string().contains("cannot be met"), "{e}");
        }
        // ...and irrelevant where it is not.
        let low = "ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1";
        assert!(v(&format!("host=db sslmode=disable {low}")).is_ok());
        assert!(v(&format!("host=/tmp {low}")).is_ok());
    }

    #[test]
    fn revocation_lists() {
        let (ca, _, crl) = super::super::tls::tests::pki("CA", &[1]);
        let env = base_env()
            .file("/ca.crt", ca, 0o644)
            .file("/one.crl", crl.clone(), 0o644)
            .file("/garbage.crl", "hello", 0o644)
            .dir("/crls")
            .file("/crls/0a1b2c3d.r0", crl.clone(), 0o644)
            .file("/crls/0a1b2c3d.r1", crl.clone(), 0o644)
            .file("/crls/README", "not a CRL", 0o644)
            .dir("/empty");
        let r = |c: &str| resolve(&conn(&format!("host=db sslrootcert=/ca.crt {c}")), &env);
        let s = r("sslmode=verify-full sslcrl=/one.crl").unwrap();
        assert_eq!((s.crls.paths.len(), s.crls.lists.len()), (1, 1));
        // The hashed files of a directory, not the others.
        let s = r("sslmode=verify-ca sslcrldir=/crls").unwrap();
        assert_eq!(
            s.crls.paths,
            vec![
                PathBuf::from("/crls/0a1b2c3d.r0"),
                PathBuf::from("/crls/0a1b2c3d.r1")
            ]
        );
        // Both.
        let s = r("sslmode=verify-ca sslcrl=/one.crl sslcrldir=/crls").unwrap();
        assert_eq!(s.crls.lists.len(), 3);
        // require with a root certificate verifies, so it checks revocation too.
        assert_eq!(
            r("sslmode=require sslcrl=/one.crl")
                .unwrap()
                .crls
                .lists
                .len(),
            1
        );
        // Modes that do not verify never read them (as libpq).
        let s = r("sslmode=prefer sslcrl=/nope.crl").unwrap();
        assert!(s.crls.lists.is_empty());
        let s = resolve(
            &conn("host=/tmp sslmode=verify-full sslcrl=/nope.crl"),
            &env,
        )
        .unwrap();
        assert!(s.crls.lists.is_empty());
        // Named but missing, unreadable or empty: an error, never no checking.
        let e = r("sslmode=verify-full sslcrl=/nope.crl").unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::CrlUnreadable {
                    keyword: "sslcrl",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("\"/nope.crl\""), "{e}");
        let e = r("sslmode=verify-full sslcrldir=/nope").unwrap_err();
        assert!(
            matches!(
                e,
                ConnectError::CrlUnreadable {
                    keyword: "sslcrldir",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = r("sslmode=verify-full sslcrldir=/empty").unwrap_err();
        assert!(matches!(e, ConnectError::CrlInvalid { .. }), "{e:?}");
        assert!(e.to_string().contains("openssl rehash"), "{e}");
        let e = r("sslmode=verify-full sslcrl=/garbage.crl").unwrap_err();
        assert!(matches!(e, ConnectError::CrlInvalid { .. }), "{e:?}");
        // The default ~/.postgresql/root.crl, when it exists.
        assert!(r("sslmode=verify-full").unwrap().crls.lists.is_empty());
        let env = env.file("/home/osuser/.postgresql/root.crl", crl, 0o644);
        let s = resolve(
            &conn("host=db sslrootcert=/ca.crt sslmode=verify-full"),
            &env,
        )
        .unwrap();
        assert_eq!(
            s.crls.paths,
            vec![PathBuf::from("/home/osuser/.postgresql/root.crl")]
        );
        assert!(is_hashed_crl_name("deadbeef.r12"));
        for bad in [
            "deadbeef.0",
            "deadbee.r0",
            "deadbeefX.r0",
            "deadbeef.r",
            "xyzxyzxy.r0",
        ] {
            assert!(!is_hashed_crl_name(bad), "{bad}");
        }
    }

    #[test]
    fn options_and_channel_binding() {
        let s = resolve(
            &conn("options='-c statement_timeout=5s' channel_binding=require"),
            &base_env(),
        )
        .unwrap();
        assert_eq!(s.options.as_deref(), Some("-c statement_timeout=5s"));
        assert_eq!(s.channel_binding, ChannelBinding::Require);
        assert!(resolve(&conn("channel_binding=maybe"), &base_env()).is_err());
    }

    #[test]
    fn password_never_shown() {
        let secret = "Sup3r-S3cret";
        let env = base_env().var("PGPASSWORD", secret);
        let a = conn(&format!("postgresql://bob:{secret}@db.example.com/shop"));
        assert!(!format!("{a:?}").contains(secret), "{a:?}");
        for s in [resolve(&a, &env).unwrap(), resolve(&args(), &env).unwrap()] {
            assert_eq!(s.password.as_ref().unwrap().expose(), secret);
            for shown in [
                format!("{s:?}"),
                format!("{s:#?}"),
                s.describe(),
                s.to_string(),
            ] {
                assert!(!shown.contains(secret), "{shown}");
            }
            assert!(format!("{s:?}").contains("Password(<hidden>)"));
        }
        // Errors after the password was parsed do not show it either.
        for bad in [
            format!("postgresql://bob:{secret}@db/shop?sslmode=bogus"),
            format!("postgresql://bob:{secret}@db:99999/shop"),
            format!("postgresql://bob:{secret}@db/shop?sslcert=x"),
            format!("password={secret} host=a,b port=1,2,3"),
            format!("password={secret} {secret}"),
        ] {
            let e = resolve(&conn(&bad), &base_env()).unwrap_err();
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }
}

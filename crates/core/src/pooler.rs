//! PgBouncer as pgkill sees it: what its admin console's `SHOW` commands say (parsed by
//! column name, since columns were added and moved across versions), and how its
//! connections line up with the server's sessions. Pure: the console is read by
//! `pgkill_pg::pgbouncer`.
//!
//! A server backend belongs to a pooler when its client address and port
//! (`pg_stat_activity.client_addr/client_port`) are one of the pooler's server
//! connections' `local_addr/local_port` (`SHOW SERVERS`). The application using it right
//! now is the client whose `link` is that server's `ptr` (`SHOW CLIENTS`). Application
//! connections linked to no server are sessions of their own, without a backend.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

/// One row of a `SHOW` command: column name to value (`None`: NULL).
pub type ShowRow = BTreeMap<String, Option<String>>;

/// A PgBouncer version, from `SHOW VERSION` (`PgBouncer 1.24.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PoolerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl PoolerVersion {
    /// Reads `PgBouncer 1.24.1` (anything after the numbers, such as `/bouncer` or a build
    /// note, is ignored). `None` if the text is not PgBouncer's.
    pub fn parse(text: &str) -> Option<PoolerVersion> {
        let rest = text.trim().strip_prefix("PgBouncer")?.trim_start();
        let numbers: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = numbers.split('.').map(|p| p.parse::<u32>().ok());
        let major = parts.next()??;
        let minor = parts.next()??;
        let patch = parts.next().flatten().unwrap_or(0);
        Some(PoolerVersion {
            major,
            minor,
            patch,
        })
    }

    /// Whether `KILL_CLIENT` exists (1.24+).
    pub fn has_kill_client(self) -> bool {
        self >= PoolerVersion::new(1, 24, 0)
    }

    /// Whether `KILL_CLIENT` is open to `stats_users` (1.24.0 to 1.25.1, CVE-2026-6667).
    pub fn kill_client_open_to_stats_users(self) -> bool {
        self.has_kill_client() && self < PoolerVersion::new(1, 25, 2)
    }

    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> PoolerVersion {
        PoolerVersion {
            major,
            minor,
            patch,
        }
    }
}

impl fmt::Display for PoolerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

fn text(row: &ShowRow, column: &str) -> Option<String> {
    row.get(column).cloned().flatten().filter(|v| !v.is_empty())
}

fn number<T: std::str::FromStr>(row: &ShowRow, column: &str) -> Option<T> {
    text(row, column).and_then(|v| v.trim().parse().ok())
}

fn flag(row: &ShowRow, column: &str) -> bool {
    number::<i64>(row, column).is_some_and(|n| n != 0)
}

/// A connection the pooler has with an application (`SHOW CLIENTS`) or with the server
/// (`SHOW SERVERS`): the two share their columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolConnection {
    /// `id` (1.24+): stable, what `KILL_CLIENT` takes.
    pub id: Option<i64>,
    /// `ptr`: the pooler's handle for the connection (reused after it closes).
    pub ptr: String,
    /// `link`: the `ptr` of the connection it is paired with right now, if any.
    pub link: Option<String>,
    /// `user`.
    pub user: String,
    /// `database`: the pooler's database name (an alias of the server's).
    pub database: String,
    /// `state`: `active`, `idle`, `used`, `waiting`, ...
    pub state: String,
    /// `addr`: the other end (the application, or the server).
    pub addr: Option<IpAddr>,
    /// `port`.
    pub port: Option<i32>,
    /// `local_addr`: the pooler's end.
    pub local_addr: Option<IpAddr>,
    /// `local_port`.
    pub local_port: Option<i32>,
    /// `remote_pid`: for server connections over TCP the backend's pid.
    pub remote_pid: Option<i32>,
    /// `application_name` (1.18+).
    pub application_name: Option<String>,
    /// `connect_time` as the pooler prints it (its local time).
    pub connect_time: Option<String>,
}

impl PoolConnection {
    /// Reads one `SHOW CLIENTS` or `SHOW SERVERS` row by column name.
    pub fn from_row(row: &ShowRow) -> PoolConnection {
        let addr = |column: &str| text(row, column).and_then(|a| a.parse().ok());
        PoolConnection {
            id: number(row, "id"),
            ptr: text(row, "ptr").unwrap_or_default(),
            link: text(row, "link"),
            user: text(row, "user").unwrap_or_default(),
            database: text(row, "database").unwrap_or_default(),
            state: text(row, "state").unwrap_or_default(),
            addr: addr("addr"),
            port: number(row, "port"),
            local_addr: addr("local_addr"),
            local_port: number(row, "local_port"),
            remote_pid: number(row, "remote_pid"),
            application_name: text(row, "application_name"),
            connect_time: text(row, "connect_time"),
        }
    }
}

/// A `[databases]` entry (`SHOW DATABASES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolDatabase {
    /// `name`: the alias applications connect to.
    pub name: String,
    /// `host`: the server (`None`: the pooler's default, a Unix socket).
    pub host: Option<String>,
    /// `port`.
    pub port: Option<u16>,
    /// `database`: the server's database name.
    pub database: String,
    /// `pool_mode` of this entry (`None`: the pooler's default).
    pub pool_mode: Option<String>,
    /// `paused`.
    pub paused: bool,
    /// `disabled`.
    pub disabled: bool,
}

impl PoolDatabase {
    /// Reads one `SHOW DATABASES` row by column name.
    pub fn from_row(row: &ShowRow) -> PoolDatabase {
        let name = text(row, "name").unwrap_or_default();
        PoolDatabase {
            database: text(row, "database").unwrap_or_else(|| name.clone()),
            name,
            host: text(row, "host"),
            port: number(row, "port"),
            pool_mode: text(row, "pool_mode"),
            paused: flag(row, "paused"),
            disabled: flag(row, "disabled"),
        }
    }
}

/// What one pooler's console said, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolerState {
    /// How the user named it (`host=… port=…`), for messages.
    pub name: String,
    /// Its version.
    pub version: PoolerVersion,
    /// The default `pool_mode` (`SHOW CONFIG`).
    pub pool_mode: String,
    /// `SHOW DATABASES`.
    pub databases: Vec<PoolDatabase>,
    /// `SHOW CLIENTS`.
    pub clients: Vec<PoolConnection>,
    /// `SHOW SERVERS`.
    pub servers: Vec<PoolConnection>,
}

impl PoolerState {
    /// The pool mode of alias `name`.
    pub fn pool_mode_of(&self, alias: &str) -> String {
        self.databases
            .iter()
            .find(|d| d.name == alias)
            .and_then(|d| d.pool_mode.clone())
            .unwrap_or_else(|| self.pool_mode.clone())
    }

    /// The server's database name behind alias `name` (the alias itself if unknown).
    pub fn server_database(&self, alias: &str) -> String {
        self.databases
            .iter()
            .find(|d| d.name == alias)
            .map_or_else(|| alias.to_owned(), |d| d.database.clone())
    }

    /// The pooler's server connection whose pooler-side end is `addr:port` (a backend's
    /// `client_addr/client_port`).
    pub fn server_at(&self, addr: Option<IpAddr>, port: Option<i32>) -> Option<&PoolConnection> {
        let (addr, port) = (addr?, port?);
        self.servers
            .iter()
            .find(|s| s.local_addr == Some(addr) && s.local_port == Some(port))
    }

    /// The application connection linked to server connection `server` right now.
    pub fn client_of(&self, server: &PoolConnection) -> Option<&PoolConnection> {
        self.clients
            .iter()
            .find(|c| c.link.is_some() && c.link.as_deref() == Some(server.ptr.as_str()))
    }

    /// Application connections linked to no server connection of this pooler.
    pub fn unlinked_clients(&self) -> impl Iterator<Item = &PoolConnection> {
        self.clients.iter().filter(|c| {
            c.link
                .as_deref()
                .is_none_or(|l| !self.servers.iter().any(|s| s.ptr == l))
        })
    }
}

/// What pgkill knows about the application behind a session that goes through a pooler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolerLink {
    /// The pooler (`host=… port=…`).
    pub pooler: String,
    /// Its version.
    pub version: String,
    /// The pool mode: `session`, `transaction` or `statement`.
    pub pool_mode: String,
    /// The pooler's database name (alias).
    pub alias: String,
    /// The application connection, when one is linked (a server connection idle in the
    /// pool has none).
    pub client: Option<PoolConnection>,
    /// The backend's pid as the pooler reports it (`remote_pid`), for server connections.
    pub remote_pid: Option<i32>,
}

/// An application connection of a pooler that holds no server connection right now: a
/// session of its own, without a backend (kind `pooled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pooled {
    /// The pooler (`host=… port=…`).
    pub pooler: String,
    /// Its version.
    pub version: String,
    /// The pool mode of its database.
    pub pool_mode: String,
    /// The pooler's database name (alias).
    pub alias: String,
    /// The server's database name behind the alias.
    pub database: String,
    /// `idle` (logged in, between transactions) or `waiting` (for a server connection).
    pub state: String,
    /// The connection itself.
    pub client: PoolConnection,
}

impl Pooled {
    /// This connection as a session row without a backend, for evaluating filters: pid
    /// `-1` (no `--pid` matches it), no times (no age filter matches it), state `idle`.
    pub fn as_session(&self, now: chrono::DateTime<chrono::Utc>) -> crate::Session {
        crate::Session {
            pid: -1,
            backend_start: None,
            database: Some(self.database.clone()),
            user: Some(self.client.user.clone()),
            application_name: self.client.application_name.clone(),
            client_addr: self.client.addr,
            client_hostname: None,
            client_port: self.client.port,
            state: Some(self.state.clone()),
            wait_event_type: None,
            wait_event: None,
            backend_type: Some("client backend".to_owned()),
            xact_start: None,
            query_start: None,
            state_change: None,
            query: None,
            leader_pid: None,
            superuser: None,
            blocked_by: Vec::new(),
            blocking: 0,
            xmin_age: None,
            holds_xmin: false,
            waited_on_since: None,
            can_signal: false,
            pooler: None,
            now,
        }
    }
}

/// Orders a role's idle sessions for `free-slot` behind poolers: first the poolers'
/// server connections serving no application (ending one ends nobody's connection; the
/// pooler opens another when it needs one), then sessions no pooler owns and session-pooled
/// backends of idle applications (ending one ends that application), each idle the longest
/// first. A backend of a transaction or statement pool linked to an application right now
/// is never chosen (it serves whichever application comes next): those are returned apart.
pub fn spare_first(idle: Vec<crate::Session>) -> (Vec<crate::Session>, Vec<crate::Session>) {
    let (mut spare, left): (Vec<_>, Vec<_>) = idle.into_iter().partition(|s| {
        s.pooler
            .as_ref()
            .is_none_or(|l| l.client.is_none() || l.pool_mode == "session")
    });
    spare.sort_by_key(|s| {
        let serves_nobody = s.pooler.as_ref().is_some_and(|l| l.client.is_none());
        (!serves_nobody, s.state_change, s.pid)
    });
    (spare, left)
}

/// How a server is known to the poolers in front of it, for telling which `[databases]`
/// entries lead to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerIdentity {
    /// Its port.
    pub port: u16,
    /// Addresses it is reached at: the one pgkill's connection came in on, the addresses
    /// of the host name pgkill connected to, loopback when pgkill came over a socket.
    pub addrs: Vec<IpAddr>,
    /// Its clients' addresses and ports: a pooler's server connection from one of them is
    /// a connection to this server.
    pub clients: Vec<(IpAddr, i32)>,
    /// Its `listen_addresses`, entry by entry (`*`, `localhost`, addresses).
    pub listen_addresses: Vec<String>,
}

impl ServerIdentity {
    /// Whether a client on the server's own machine reaches this server at loopback
    /// address `a`: it is the address pgkill came in on, or the server listens there.
    fn listens_on_loopback(&self, a: &IpAddr) -> bool {
        self.addrs.contains(a)
            || self.listen_addresses.iter().any(|l| match l.as_str() {
                "*" => true,
                "0.0.0.0" => a.is_ipv4(),
                "::" => a.is_ipv6(),
                "localhost" => {
                    *a == IpAddr::from([127, 0, 0, 1])
                        || *a == IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
                }
                other => other.parse::<IpAddr>().is_ok_and(|l| l == *a),
            })
    }
}

/// Where a `[databases]` entry's `host` leads, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryHost {
    /// A Unix socket directory (or none: PgBouncer's default socket) on the pooler's
    /// machine.
    Socket,
    /// A host name or address, and the addresses it resolves to.
    Tcp(String, Vec<IpAddr>),
}

/// Whether `[databases]` entry `db` of `state` leads to `server`: `Ok` with how that is
/// known, or `Err` with why it is not taken to. `pooler_addrs` are the addresses of the
/// pooler's own machine as pgkill reached it (the console's host): an entry on loopback or
/// a Unix socket leads to this server only if the pooler runs on the server's machine.
///
/// In order: a different port is another server; a server connection of the entry that
/// is one of the server's clients proves it (whatever its host is called); else the
/// entry's host must be one of the server's addresses (or a socket or loopback address of
/// a pooler on the server's machine).
pub fn leads_here(
    state: &PoolerState,
    db: &PoolDatabase,
    host: &EntryHost,
    server: &ServerIdentity,
    pooler_addrs: &[IpAddr],
) -> Result<&'static str, String> {
    if let Some(port) = db.port.filter(|p| *p != server.port) {
        return Err(format!(
            "its port {port} is not this server's ({})",
            server.port
        ));
    }
    let connected = state
        .servers
        .iter()
        .filter(|c| c.database == db.name)
        .any(|c| {
            c.local_addr
                .zip(c.local_port)
                .is_some_and(|pair| server.clients.contains(&pair))
        });
    if connected {
        return Ok("its server connections are this server's clients");
    }
    let on_the_servers_machine = pooler_addrs.iter().any(|a| {
        server.addrs.contains(a)
            || (a.is_loopback() && server.addrs.iter().any(IpAddr::is_loopback))
    });
    match host {
        EntryHost::Socket if on_the_servers_machine => {
            Ok("a Unix socket of the pooler, which runs on this server's machine")
        }
        EntryHost::Socket => Err(
            "it leads to a Unix socket of the pooler's machine, which is not known to be this server's"
                .to_owned(),
        ),
        EntryHost::Tcp(_, addrs)
            if addrs.iter().any(|a| {
                server.addrs.contains(a)
                    || (a.is_loopback() && on_the_servers_machine && server.listens_on_loopback(a))
            }) =>
        {
            Ok("its host is this server's address")
        }
        EntryHost::Tcp(name, addrs) if addrs.is_empty() => {
            Err(format!("its host {name} does not resolve here"))
        }
        EntryHost::Tcp(name, addrs) => Err(format!(
            "its host {name} ({}) is not one of this server's addresses ({})",
            join_addrs(addrs),
            join_addrs(&server.addrs)
        )),
    }
}

fn join_addrs(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none known".to_owned();
    }
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s` with the application behind its pooler in place of the pooler (its name, address
/// and port), when an application is linked to it right now.
pub fn as_seen_by_the_application(s: &crate::Session) -> crate::Session {
    let mut seen = s.clone();
    if let Some(c) = s.pooler.as_ref().and_then(|p| p.client.as_ref()) {
        seen.application_name.clone_from(&c.application_name);
        seen.client_addr = c.addr;
        seen.client_port = c.port;
    }
    seen
}

/// Attaches the poolers' view to `sessions` (see the module documentation) and returns
/// the application connections that no backend serves right now.
pub fn attach(sessions: &mut [crate::Session], poolers: &[PoolerState]) -> Vec<Pooled> {
    let mut served: Vec<(usize, &str)> = Vec::new();
    for s in sessions.iter_mut() {
        for (i, p) in poolers.iter().enumerate() {
            let Some(server) = p.server_at(s.client_addr, s.client_port) else {
                continue;
            };
            let linked = p.client_of(server);
            if let Some(c) = linked {
                served.push((i, c.ptr.as_str()));
            }
            let client = linked.cloned();
            s.pooler = Some(PoolerLink {
                pooler: p.name.clone(),
                version: p.version.to_string(),
                pool_mode: p.pool_mode_of(&server.database),
                alias: server.database.clone(),
                client,
                remote_pid: server.remote_pid,
            });
            break;
        }
    }
    let mut pooled = Vec::new();
    for (i, p) in poolers.iter().enumerate() {
        for c in &p.clients {
            if served.iter().any(|(j, ptr)| *j == i && *ptr == c.ptr) {
                continue;
            }
            pooled.push(Pooled {
                pooler: p.name.clone(),
                version: p.version.to_string(),
                pool_mode: p.pool_mode_of(&c.database),
                alias: c.database.clone(),
                database: p.server_database(&c.database),
                state: if c.state.starts_with("waiting") {
                    "waiting".to_owned()
                } else {
                    "idle".to_owned()
                },
                client: c.clone(),
            });
        }
    }
    pooled
}

/// How `kill` ends an application connection behind a pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AppEnd {
    /// Session pooling: its backend is terminated (through the server's signalling path)
    /// and the pooler then closes the application's connection.
    TerminateBackend,
    /// `KILL_CLIENT id` at the pooler (PgBouncer 1.24+).
    KillClient,
}

/// An application connection behind a pooler that `kill` selected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppTarget {
    /// The pooler (`host=… port=…`).
    pub pooler: String,
    /// Its version.
    pub version: String,
    /// The pool mode.
    pub pool_mode: String,
    /// The pooler's database name.
    pub alias: String,
    /// The server's database name.
    pub database: String,
    /// The application connection.
    pub client: PoolConnection,
    /// The backend it is linked to right now, if any.
    pub backend: Option<i32>,
    /// How it is ended.
    pub end: AppEnd,
    /// Why it will not be ended, if so.
    pub refused: Option<String>,
}

/// What happened to an [`AppTarget`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppOutcome {
    /// The pooler.
    pub pooler: String,
    /// The connection (`id`, address, port, name as listed).
    pub client: PoolConnection,
    /// The backend it was linked to, if any.
    pub backend: Option<i32>,
    /// What happened (`terminated`: gone from the pooler's `SHOW CLIENTS`).
    #[serde(serialize_with = "outcome_name")]
    pub outcome: crate::plan::OutcomeKind,
    /// Details for people.
    pub detail: String,
}

fn outcome_name<S: serde::Serializer>(
    k: &crate::plan::OutcomeKind,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// What `kill` does with a listing that went through poolers.
#[derive(Debug, Clone, Default)]
pub struct KillSplit {
    /// Backends no pooler owns: the server's signalling path, with every filter.
    pub direct: Vec<crate::Session>,
    /// Backends of session pools, each the one application linked to it: the server's
    /// signalling path (its `--app`/`--client` were matched on the application, so they
    /// are not re-checked on the backend), then verified at the pooler.
    pub session_pooled: Vec<crate::Session>,
    /// Application connections ended at the pooler (or refused there).
    pub at_pooler: Vec<AppTarget>,
    /// Server connections of pools that serve no application right now: left alone.
    pub idle_pool_connections: usize,
}

/// Sorts a listing that went through poolers for `kill`: a session-pooled application
/// is ended by terminating its backend; in transaction or statement pooling a backend
/// serves whichever application comes next, so the application is ended at the pooler
/// (`KILL_CLIENT`, PgBouncer 1.24+; refused with the reason on older versions) and its
/// backend is never signalled.
pub fn split_for_kill(
    sessions: Vec<crate::Session>,
    pooled: Vec<Pooled>,
    poolers: &[PoolerState],
) -> KillSplit {
    let mut split = KillSplit::default();
    let version_of = |name: &str| poolers.iter().find(|p| p.name == name).map(|p| p.version);
    let at_pooler = |pooler: &str,
                     version: &str,
                     mode: &str,
                     alias: &str,
                     database: &str,
                     client: PoolConnection,
                     backend: Option<i32>| {
        let v = version_of(pooler);
        let refused = match v {
            Some(v) if v.has_kill_client() && client.id.is_some() => None,
            _ => Some(format!(
                "PgBouncer {version} cannot end one application connection in {mode} pooling (KILL_CLIENT needs PgBouncer 1.24): nothing was done to it; `pgkill drain --pgbouncer` pauses the whole database instead"
            )),
        };
        AppTarget {
            pooler: pooler.to_owned(),
            version: version.to_owned(),
            pool_mode: mode.to_owned(),
            alias: alias.to_owned(),
            database: database.to_owned(),
            client,
            backend,
            end: AppEnd::KillClient,
            refused,
        }
    };
    for s in sessions {
        let Some(link) = s.pooler.clone() else {
            split.direct.push(s);
            continue;
        };
        match link.client {
            None => split.idle_pool_connections += 1,
            Some(_) if link.pool_mode == "session" => split.session_pooled.push(s),
            Some(client) => {
                let database = s.database.clone().unwrap_or_default();
                split.at_pooler.push(at_pooler(
                    &link.pooler,
                    &link.version,
                    &link.pool_mode,
                    &link.alias,
                    &database,
                    client,
                    Some(s.pid),
                ));
            }
        }
    }
    for p in pooled {
        split.at_pooler.push(at_pooler(
            &p.pooler,
            &p.version,
            &p.pool_mode,
            &p.alias,
            &p.database,
            p.client,
            None,
        ));
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> ShowRow {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn versions() {
        assert_eq!(
            PoolerVersion::parse("PgBouncer 1.18.0"),
            Some(PoolerVersion::new(1, 18, 0))
        );
        assert_eq!(
            PoolerVersion::parse("PgBouncer 1.24.1/bouncer"),
            Some(PoolerVersion::new(1, 24, 1))
        );
        assert_eq!(
            PoolerVersion::parse("PgBouncer 1.9"),
            Some(PoolerVersion::new(1, 9, 0))
        );
        assert_eq!(PoolerVersion::parse("PostgreSQL 15.2"), None);
        assert_eq!(PoolerVersion::parse("PgBouncer x"), None);
        let v = |s| PoolerVersion::parse(s).unwrap();
        assert!(!v("PgBouncer 1.18.0").has_kill_client());
        assert!(v("PgBouncer 1.24.0").kill_client_open_to_stats_users());
        assert!(v("PgBouncer 1.25.1").kill_client_open_to_stats_users());
        assert!(!v("PgBouncer 1.25.2").kill_client_open_to_stats_users());
        assert!(v("PgBouncer 1.25.2").has_kill_client());
        assert_eq!(v("PgBouncer 1.24.1").to_string(), "1.24.1");
    }

    #[test]
    fn rows_are_read_by_column_name_whatever_the_version() {
        // 1.18: no `replication`, no `id`; 1.24: both, `replication` fourth.
        let old = row(&[
            ("type", Some("C")),
            ("user", Some("app")),
            ("database", Some("shop")),
            ("state", Some("active")),
            ("addr", Some("10.0.0.7")),
            ("port", Some("50123")),
            ("local_addr", Some("127.0.0.1")),
            ("local_port", Some("6432")),
            ("ptr", Some("0x55d0c1")),
            ("link", Some("")),
            ("remote_pid", Some("0")),
            ("application_name", Some("web-1")),
        ]);
        let c = PoolConnection::from_row(&old);
        assert_eq!(c.id, None);
        assert_eq!(c.link, None);
        assert_eq!(c.addr, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(c.port, Some(50123));
        assert_eq!(c.application_name.as_deref(), Some("web-1"));
        let mut new = old.clone();
        new.insert("replication".into(), Some("none".into()));
        new.insert("id".into(), Some("17".into()));
        new.insert("link".into(), Some("0x55d0ff".into()));
        let c = PoolConnection::from_row(&new);
        assert_eq!((c.id, c.link.as_deref()), (Some(17), Some("0x55d0ff")));
        // Unix-socket clients have no address.
        let mut unix = old;
        unix.insert("addr".into(), Some("unix".into()));
        assert_eq!(PoolConnection::from_row(&unix).addr, None);
    }

    #[test]
    fn databases_map_aliases_and_modes() {
        let state = PoolerState {
            name: "host=127.0.0.1 port=6432".into(),
            version: PoolerVersion::new(1, 18, 0),
            pool_mode: "session".into(),
            databases: vec![
                PoolDatabase::from_row(&row(&[
                    ("name", Some("app")),
                    ("host", Some("127.0.0.1")),
                    ("port", Some("5432")),
                    ("database", Some("app_db")),
                    ("pool_mode", Some("transaction")),
                    ("paused", Some("1")),
                    ("disabled", Some("0")),
                ])),
                PoolDatabase::from_row(&row(&[
                    ("name", Some("other")),
                    ("database", Some("other")),
                    ("pool_mode", None),
                ])),
            ],
            clients: vec![],
            servers: vec![],
        };
        assert_eq!(state.server_database("app"), "app_db");
        assert_eq!(state.pool_mode_of("app"), "transaction");
        assert_eq!(state.pool_mode_of("other"), "session");
        assert!(state.databases[0].paused && !state.databases[0].disabled);
        assert_eq!(state.databases[0].port, Some(5432));
    }

    #[test]
    fn servers_and_clients_line_up() {
        let conn = |ptr: &str, link: &str, local: &str, port: &str| {
            PoolConnection::from_row(&row(&[
                ("ptr", Some(ptr)),
                ("link", Some(link)),
                ("local_addr", Some(local)),
                ("local_port", Some(port)),
                ("database", Some("app")),
                ("user", Some("u")),
                ("state", Some("active")),
            ]))
        };
        let state = PoolerState {
            name: "p".into(),
            version: PoolerVersion::new(1, 24, 1),
            pool_mode: "transaction".into(),
            databases: vec![],
            clients: vec![
                conn("c1", "s1", "127.0.0.1", "6432"),
                conn("c2", "", "127.0.0.1", "6432"),
                conn("c3", "gone", "127.0.0.1", "6432"),
            ],
            servers: vec![
                conn("s1", "c1", "127.0.0.1", "40001"),
                conn("s2", "", "127.0.0.1", "40002"),
            ],
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let s1 = state.server_at(Some(lo), Some(40001)).unwrap();
        assert_eq!(state.client_of(s1).map(|c| c.ptr.as_str()), Some("c1"));
        let s2 = state.server_at(Some(lo), Some(40002)).unwrap();
        assert_eq!(state.client_of(s2), None);
        assert_eq!(state.server_at(Some(lo), Some(40003)), None);
        assert_eq!(state.server_at(None, Some(-1)), None);
        let unlinked: Vec<&str> = state.unlinked_clients().map(|c| c.ptr.as_str()).collect();
        assert_eq!(unlinked, ["c2", "c3"]);
    }

    #[test]
    fn entries_lead_here_by_connection_or_by_address() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "10.0.0.5".parse().unwrap();
        let entry = |name: &str, port: u16| PoolDatabase {
            name: name.into(),
            host: None,
            port: Some(port),
            database: "shop".into(),
            pool_mode: None,
            paused: false,
            disabled: false,
        };
        let server_conn = |alias: &str, local_port: i32| {
            PoolConnection::from_row(&row(&[
                ("ptr", Some("s1")),
                ("database", Some(alias)),
                ("user", Some("u")),
                ("state", Some("idle")),
                ("local_addr", Some("10.0.0.9")),
                ("local_port", Some(&local_port.to_string())),
            ]))
        };
        let state = PoolerState {
            name: "p".into(),
            version: PoolerVersion::new(1, 24, 1),
            pool_mode: "transaction".into(),
            databases: vec![],
            clients: vec![],
            servers: vec![server_conn("busy", 40001)],
        };
        let server = ServerIdentity {
            port: 5432,
            addrs: vec![far],
            clients: vec![("10.0.0.9".parse().unwrap(), 40001)],
            listen_addresses: vec!["*".into()],
        };
        let tcp = |name: &str, addrs: &[IpAddr]| EntryHost::Tcp(name.into(), addrs.to_vec());
        let here = |db: &PoolDatabase, host: &EntryHost, pooler: &[IpAddr]| {
            leads_here(&state, db, host, &server, pooler)
        };
        // Another port: another server, whatever else.
        assert!(here(&entry("busy", 5433), &tcp("db1", &[far]), &[])
            .is_err_and(|e| e.contains("port 5433")));
        // A server connection that is one of the server's clients proves it, under any name.
        assert!(here(&entry("busy", 5432), &tcp("db-alias", &[]), &[]).is_ok());
        // Else the host's addresses decide.
        assert!(here(&entry("idle", 5432), &tcp("db1", &[far]), &[]).is_ok());
        assert!(here(
            &entry("idle", 5432),
            &tcp("db2", &["10.0.0.6".parse().unwrap()]),
            &[]
        )
        .is_err_and(|e| e.contains("not one of this server's addresses")));
        assert!(here(&entry("idle", 5432), &tcp("gone", &[]), &[])
            .is_err_and(|e| e.contains("does not resolve")));
        // Loopback and sockets are the pooler's machine: this server's only if the pooler
        // runs there.
        assert!(here(&entry("idle", 5432), &EntryHost::Socket, &[lo]).is_err());
        assert!(here(&entry("idle", 5432), &tcp("localhost", &[lo]), &[lo]).is_err());
        assert!(here(&entry("idle", 5432), &EntryHost::Socket, &[far]).is_ok());
        assert!(here(&entry("idle", 5432), &tcp("localhost", &[lo]), &[far]).is_ok());
        let local = ServerIdentity {
            addrs: vec![lo],
            listen_addresses: vec!["127.0.0.1".into()],
            ..server.clone()
        };
        assert!(leads_here(
            &state,
            &entry("idle", 5432),
            &EntryHost::Socket,
            &local,
            &[lo]
        )
        .is_ok());
        let lo2: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(
            leads_here(
                &state,
                &entry("idle", 5432),
                &tcp("127.0.0.2", &[lo2]),
                &local,
                &[lo]
            )
            .is_err(),
            "the server listens on 127.0.0.1 only: 127.0.0.2:5432 is another server"
        );
        let everywhere = ServerIdentity {
            listen_addresses: vec!["*".into()],
            ..local.clone()
        };
        assert!(leads_here(
            &state,
            &entry("idle", 5432),
            &tcp("127.0.0.2", &[lo2]),
            &everywhere,
            &[lo]
        )
        .is_ok());
    }

    #[test]
    fn free_slot_spares_what_serves_nobody_first() {
        let at = |secs| chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0);
        let session = |pid: i32, mode: Option<&str>, linked: bool, since: i64| {
            let mut s = crate::Session::example(pid);
            s.state_change = at(since);
            s.pooler = mode.map(|m| PoolerLink {
                pooler: "p".into(),
                version: "1.24.1".into(),
                pool_mode: m.into(),
                alias: "shop".into(),
                client: linked.then(|| PoolConnection::from_row(&row(&[("ptr", Some("c"))]))),
                remote_pid: None,
            });
            s
        };
        let (spare, left) = spare_first(vec![
            session(1, None, false, 0),
            session(2, Some("transaction"), false, 50),
            session(3, Some("session"), true, -10),
            session(4, Some("transaction"), true, -20),
            session(5, Some("session"), false, 10),
        ]);
        let pids = |v: &[crate::Session]| v.iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(
            pids(&spare),
            [5, 2, 3, 1],
            "serving nobody first, then idle the longest first"
        );
        assert_eq!(
            pids(&left),
            [4],
            "a transaction pool's linked backend is never chosen"
        );
    }
}

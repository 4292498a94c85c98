//! PgBouncer admin consoles (`--pgbouncer CONNINFO`): connecting as libpq would (the
//! database defaults to `pgbouncer`), reading `SHOW VERSION`, `SHOW CONFIG`,
//! `SHOW DATABASES`, `SHOW CLIENTS` and `SHOW SERVERS` over the simple query protocol (the
//! only one the console speaks), by column name, into [`PoolerState`]; and attaching what
//! they say to the server's sessions ([`attach`]).

use pgkill_core::fence::PoolerFence;
use pgkill_core::plan::OutcomeKind;
use pgkill_core::pooler::{
    leads_here, AppEnd, AppOutcome, AppTarget, EntryHost, PoolConnection, PoolDatabase, Pooled,
    PoolerState, PoolerVersion, ServerIdentity, ShowRow,
};
use pgkill_core::{Filter, Session};
use std::net::IpAddr;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::connect::{self, ConnectArgs, Env, Settings};

/// A pooler's console, as the user named it.
#[derive(Debug, Clone)]
pub struct Pooler {
    /// Resolved connection settings (database `pgbouncer` unless named).
    pub settings: Settings,
    /// `host=… port=…`, for messages.
    pub name: String,
}

/// Why a pooler could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PoolerError {
    /// Its connection string or the connection failed.
    #[error("PgBouncer {name}: {source}")]
    Connect {
        /// Which pooler.
        name: String,
        /// Why.
        source: connect::ConnectError,
    },
    /// A console command failed.
    #[error("PgBouncer {name}: {command} failed: {message}")]
    Command {
        /// Which pooler.
        name: String,
        /// The command.
        command: &'static str,
        /// The console's message.
        message: String,
    },
    /// It does not answer as PgBouncer does.
    #[error("{name} does not answer SHOW VERSION as a PgBouncer admin console (it said {said:?}): --pgbouncer names PgBouncer's admin console (database pgbouncer)")]
    NotPgBouncer {
        /// Which pooler.
        name: String,
        /// What it said.
        said: String,
    },
}

impl Pooler {
    /// Resolves `conninfo` as libpq would (environment and files included), with the
    /// database `pgbouncer` when none is named.
    pub fn resolve(conninfo: &str, env: &dyn Env) -> Result<Pooler, PoolerError> {
        let mut settings = connect::resolve(
            &ConnectArgs {
                conninfo: Some(conninfo.to_owned()),
                ..ConnectArgs::default()
            },
            env,
        )
        .map_err(|source| PoolerError::Connect {
            name: conninfo_for_messages(conninfo),
            source,
        })?;
        if settings.dbname_is_default {
            settings.dbname = "pgbouncer".to_owned();
            settings.dbname_is_default = false;
        }
        let name = format!("host={} port={}", settings.host, settings.port);
        Ok(Pooler { settings, name })
    }

    /// Connects to the console.
    pub async fn connect(&self) -> Result<Client, PoolerError> {
        let (client, _task) = connect::connect_console(&self.settings)
            .await
            .map_err(|source| PoolerError::Connect {
                name: self.name.clone(),
                source,
            })?;
        Ok(client)
    }

    /// Reads everything pgkill uses from the console, on one connection.
    pub async fn read(&self, client: &Client) -> Result<PoolerState, PoolerError> {
        let version_rows = self.show(client, "SHOW VERSION").await?;
        let said = version_rows
            .first()
            .and_then(|r| r.get("version").cloned().flatten())
            .unwrap_or_default();
        let version = PoolerVersion::parse(&said).ok_or_else(|| PoolerError::NotPgBouncer {
            name: self.name.clone(),
            said: said.clone(),
        })?;
        let config = self.show(client, "SHOW CONFIG").await?;
        let pool_mode = config
            .iter()
            .find(|r| r.get("key").cloned().flatten().as_deref() == Some("pool_mode"))
            .and_then(|r| r.get("value").cloned().flatten())
            .unwrap_or_else(|| "session".to_owned());
        let databases = self
            .show(client, "SHOW DATABASES")
            .await?
            .iter()
            .map(PoolDatabase::from_row)
            .collect();
        let clients = self
            .show(client, "SHOW CLIENTS")
            .await?
            .iter()
            .map(PoolConnection::from_row)
            // The console's own connections (pgkill's among them) are no application's.
            .filter(|c| c.database != "pgbouncer")
            .collect();
        let servers = self
            .show(client, "SHOW SERVERS")
            .await?
            .iter()
            .map(PoolConnection::from_row)
            .collect();
        Ok(PoolerState {
            name: self.name.clone(),
            version,
            pool_mode,
            databases,
            clients,
            servers,
        })
    }

    async fn show(
        &self,
        client: &Client,
        command: &'static str,
    ) -> Result<Vec<ShowRow>, PoolerError> {
        let messages = client
            .simple_query(command)
            .await
            .map_err(|e| PoolerError::Command {
                name: self.name.clone(),
                command,
                message: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            })?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }
}

/// What `drain` does at one pooler: pause these aliases of the database.
#[derive(Debug, Clone)]
pub struct PoolerPlan {
    /// The pooler's console.
    pub pooler: Pooler,
    /// Its version (for `KILL_CLIENT`).
    pub version: PoolerVersion,
    /// Its aliases of the database (`SHOW DATABASES` entries whose `database` it is).
    pub aliases: Vec<String>,
}

impl PoolerPlan {
    /// The part of the fence record that says what to resume, and where.
    pub fn fence(&self) -> PoolerFence {
        PoolerFence {
            host: self.pooler.settings.host.to_string(),
            port: self.pooler.settings.port,
            user: self.pooler.settings.user.clone(),
            dbname: self.pooler.settings.dbname.clone(),
            aliases: self.aliases.clone(),
            disabled: false,
        }
    }
}

/// How poolers know the server `client` is connected to (reached with `settings`): see
/// [`pgkill_core::pooler::ServerIdentity`].
pub async fn server_identity(
    client: &Client,
    settings: &Settings,
) -> crate::Result<ServerIdentity> {
    let rows = crate::exec::query(client, &pgkill_core::planner::server_identity()).await?;
    let mut server = ServerIdentity {
        port: settings.port,
        ..ServerIdentity::default()
    };
    let parse = |v: Option<String>| v.and_then(|a| a.parse::<IpAddr>().ok());
    for row in &rows {
        if let Some(a) = parse(row.try_get(0)?) {
            if !server.addrs.contains(&a) {
                server.addrs.push(a);
            }
        }
        if let Some(p) = row.try_get::<_, Option<i32>>(1)? {
            server.port = u16::try_from(p).unwrap_or(server.port);
        }
        let listen: Option<String> = row.try_get(2)?;
        server.listen_addresses = listen
            .unwrap_or_default()
            .split(',')
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        if let (Some(a), Some(p)) = (parse(row.try_get(3)?), row.try_get::<_, Option<i32>>(4)?) {
            server.clients.push((a, p));
        }
    }
    let (reached, socket) = addresses_of(&settings.host, settings.hostaddr, settings.port).await;
    for a in reached {
        if !server.addrs.contains(&a) {
            server.addrs.push(a);
        }
    }
    // Over a Unix socket pgkill is on the server's machine: its loopback is the server's.
    if socket && !server.addrs.iter().any(IpAddr::is_loopback) {
        server.addrs.push(IpAddr::from([127, 0, 0, 1]));
    }
    Ok(server)
}

/// The addresses `host` (with `hostaddr`, when given) resolves to, and whether it is a
/// Unix socket directory.
async fn addresses_of(
    host: &connect::Host,
    hostaddr: Option<IpAddr>,
    port: u16,
) -> (Vec<IpAddr>, bool) {
    let name = match host {
        connect::Host::Socket(_) => return (Vec::new(), true),
        connect::Host::Tcp(name) => name,
    };
    let mut addrs: Vec<IpAddr> = hostaddr.into_iter().collect();
    if let Ok(found) = tokio::net::lookup_host((name.as_str(), port)).await {
        for a in found.map(|s| s.ip()) {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
    }
    (addrs, false)
}

/// The aliases of `database` at `pooler` (whose state is `state`): `[databases]` entries
/// that lead to it on `server` (see [`pgkill_core::pooler::leads_here`]), not the console
/// itself; and, for entries naming `database` that are taken to lead to another server,
/// why (for a note: pgkill leaves them alone).
pub async fn aliases_of(
    pooler: &Pooler,
    state: &PoolerState,
    database: &str,
    server: &ServerIdentity,
) -> (Vec<String>, Vec<String>) {
    let (pooler_addrs, _) = addresses_of(
        &pooler.settings.host,
        pooler.settings.hostaddr,
        pooler.settings.port,
    )
    .await;
    let mut ours = Vec::new();
    let mut elsewhere = Vec::new();
    for db in state
        .databases
        .iter()
        .filter(|d| d.name != "pgbouncer" && d.database == database)
    {
        let host = match db.host.as_deref() {
            None | Some("") => EntryHost::Socket,
            Some(h) if h.starts_with('/') || h.starts_with('@') => EntryHost::Socket,
            Some(h) => {
                let (addrs, _) = addresses_of(
                    &connect::Host::Tcp(h.to_owned()),
                    None,
                    db.port.unwrap_or(server.port),
                )
                .await;
                EntryHost::Tcp(h.to_owned(), addrs)
            }
        };
        match leads_here(state, db, &host, server, &pooler_addrs) {
            Ok(_) => ours.push(db.name.clone()),
            Err(why) => elsewhere.push(format!("{} ({why})", db.name)),
        }
    }
    (ours, elsewhere)
}

/// Whether PgBouncer's console can be given `name` as a command argument as it is: it
/// takes database names as bare words.
pub fn check_alias(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        Ok(())
    } else {
        Err(format!(
            "PgBouncer database {name:?}: pgkill pauses and resumes only names of letters, digits, '_', '-' and '.'"
        ))
    }
}

impl Pooler {
    /// The console at `fence`'s address, as the fence record names it (the password is
    /// found as libpq would: `PGPASSWORD`, `~/.pgpass`).
    pub fn of_fence(fence: &PoolerFence, env: &dyn Env) -> Result<Pooler, PoolerError> {
        let q = crate::connect::quote_conninfo_value;
        Pooler::resolve(
            &format!(
                "host={} port={} user={} dbname={}",
                q(&fence.host),
                fence.port,
                q(&fence.user),
                q(&fence.dbname)
            ),
            env,
        )
    }

    /// Whether these settings name the console at `fence`'s address.
    pub fn is_at(&self, fence: &PoolerFence) -> bool {
        self.settings.host.to_string() == fence.host && self.settings.port == fence.port
    }

    /// `SHOW CLIENTS`.
    async fn clients(&self, client: &Client) -> Result<Vec<PoolConnection>, PoolerError> {
        Ok(self
            .show(client, "SHOW CLIENTS")
            .await?
            .iter()
            .map(PoolConnection::from_row)
            .collect())
    }

    /// Checks that the console lets this user change things (`admin_users`): `SHOW FDS`
    /// is refused to everyone else.
    pub async fn check_admin(&self, client: &Client) -> Result<(), PoolerError> {
        self.show(client, "SHOW FDS").await.map(drop)
    }

    /// Runs a console command that changes something (`PAUSE shop`, `RESUME shop`).
    pub async fn command(
        &self,
        client: &Client,
        command: &'static str,
        alias: &str,
    ) -> Result<(), PoolerError> {
        check_alias(alias).map_err(|message| PoolerError::Command {
            name: self.name.clone(),
            command,
            message,
        })?;
        client
            .simple_query(&format!("{command} {alias}"))
            .await
            .map_err(|e| PoolerError::Command {
                name: self.name.clone(),
                command,
                message: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            })?;
        Ok(())
    }
}

/// What [`pause_all`] did.
#[derive(Debug, Default)]
pub struct Paused {
    /// Per plan, the aliases paused.
    pub aliases: Vec<Vec<String>>,
    /// Application connections ended at the pooler because their transactions outlasted
    /// `--grace` (`KILL_CLIENT`, 1.24+), one line each.
    pub ended: Vec<String>,
    /// Why not every alias paused.
    pub error: Option<PoolerError>,
}

/// The least time a `PAUSE` is given, whatever `--grace` says.
pub const PAUSE_FLOOR: std::time::Duration = std::time::Duration::from_secs(2);

impl Paused {
    fn for_plans(plans: &[PoolerPlan]) -> Paused {
        Paused {
            aliases: vec![Vec::new(); plans.len()],
            ..Paused::default()
        }
    }
}

/// How long a `PAUSE` may still take once the transactions that held it up were ended.
const PAUSE_AFTER_KILL: std::time::Duration = std::time::Duration::from_secs(10);

/// Pauses every alias of `plans`, each pooler on a console connection of its own, within
/// `limit` (at least [`PAUSE_FLOOR`]) in all (`PAUSE` returns once the alias's server connections are released:
/// transactions finish, new queries queue at the pooler). When `limit` runs out, the
/// application connections still holding a server connection of the alias (in a
/// transaction) are ended at the pooler (`KILL_CLIENT`, PgBouncer 1.24+) and the `PAUSE`
/// completes; on older versions, or if it still does not, the pending `PAUSE` is
/// abandoned by closing its connection (a `RESUME` would leave it hanging, PgBouncer
/// issue 715), the alias is counted as paused (PgBouncer keeps it so: the caller resumes
/// it) and the error says why.
pub async fn pause_all(plans: &[PoolerPlan], limit: std::time::Duration) -> Paused {
    // Even with no grace (rename's default) a PAUSE needs its round trip, and the
    // statements under way their end.
    let limit = limit.max(PAUSE_FLOOR);
    let mut result = Paused::for_plans(plans);
    let deadline = tokio::time::Instant::now() + limit;
    for (i, plan) in plans.iter().enumerate() {
        let client = match plan.pooler.connect().await {
            Ok(c) => c,
            Err(e) => {
                result.error = Some(e);
                return result;
            }
        };
        for alias in &plan.aliases {
            let done = {
                let pause = plan.pooler.command(&client, "PAUSE", alias);
                tokio::pin!(pause);
                match tokio::time::timeout_at(deadline, &mut pause).await {
                    Ok(r) => Some(r),
                    Err(_) if plan.version.has_kill_client() => {
                        match end_holders(&plan.pooler, alias).await {
                            Ok(mut ended) => result.ended.append(&mut ended),
                            Err(e) => {
                                result.error = Some(e);
                                return result;
                            }
                        }
                        tokio::time::timeout(PAUSE_AFTER_KILL, &mut pause)
                            .await
                            .ok()
                    }
                    Err(_) => None,
                }
            };
            match done {
                Some(Ok(())) => result.aliases[i].push(alias.clone()),
                Some(Err(e)) => {
                    result.error = Some(e);
                    return result;
                }
                None => {
                    // Abandon the pending PAUSE by closing its connection, and let the
                    // pooler see that before the caller resumes the alias (which stays
                    // paused): a RESUME while the PAUSE is pending would leave it hanging.
                    drop(client);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    result.aliases[i].push(alias.clone());
                    result.error = Some(PoolerError::Command {
                        name: plan.pooler.name.clone(),
                        command: "PAUSE",
                        message: format!(
                            "{alias} did not pause within {}s (--grace, at least {}s): its transactions did not finish{} (the PAUSE was abandoned)",
                            limit.as_secs(),
                            PAUSE_FLOOR.as_secs(),
                            if plan.version.has_kill_client() {
                                ""
                            } else {
                                ", and PgBouncer 1.18 cannot end one application connection (KILL_CLIENT needs 1.24)"
                            }
                        ),
                    });
                    return result;
                }
            }
        }
    }
    result
}

/// Ends at the pooler the application connections of `alias` that hold a server
/// connection right now, on a console connection of its own; one line per connection.
async fn end_holders(pooler: &Pooler, alias: &str) -> Result<Vec<String>, PoolerError> {
    let console = pooler.connect().await?;
    let holders: Vec<PoolConnection> = pooler
        .clients(&console)
        .await?
        .into_iter()
        .filter(|c| c.database == alias && c.link.is_some())
        .collect();
    let mut ended = Vec::new();
    for c in holders {
        let Some(id) = c.id else { continue };
        console
            .simple_query(&format!("KILL_CLIENT {id}"))
            .await
            .map_err(|e| PoolerError::Command {
                name: pooler.name.clone(),
                command: "KILL_CLIENT",
                message: e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned()),
            })?;
        ended.push(format!(
            "{} ({}:{}, {}) at {}",
            c.application_name.as_deref().unwrap_or("?"),
            c.addr.map_or_else(|| "local".to_owned(), |a| a.to_string()),
            c.port.unwrap_or(0),
            c.user,
            pooler.name
        ));
    }
    Ok(ended)
}

/// Puts `aliases` at `pooler` back in service: `ENABLE` for those `SHOW DATABASES` says
/// are disabled, `RESUME` for those it says are paused (one that is neither, say because
/// the pgkill that paused it died while its `PAUSE` was pending, needs nothing); returns
/// a line per alias that could not be put back.
pub async fn resume(pooler: &Pooler, aliases: &[String]) -> Vec<String> {
    let client = match pooler.connect().await {
        Ok(c) => c,
        Err(e) => {
            return vec![format!(
                "could not resume {} at {}: {e}",
                aliases.join(", "),
                pooler.name
            )]
        }
    };
    let now: Vec<PoolDatabase> = match pooler.show(&client, "SHOW DATABASES").await {
        Ok(rows) => rows.iter().map(PoolDatabase::from_row).collect(),
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    for d in now.iter().filter(|d| aliases.contains(&d.name)) {
        if d.disabled {
            if let Err(e) = pooler.command(&client, "ENABLE", &d.name).await {
                problems.push(e.to_string());
            }
        }
        if d.paused {
            if let Err(e) = pooler.command(&client, "RESUME", &d.name).await {
                problems.push(e.to_string());
            }
        }
    }
    problems
}

/// For `drop`: refuses new logins to every alias of `plans` (`DISABLE`) and drops their
/// application and server connections at once (`KILL`, which leaves them paused).
/// Returns, per plan, the aliases done, and the error if not all were.
pub async fn disable_and_kill(plans: &[PoolerPlan]) -> Paused {
    let mut result = Paused::for_plans(plans);
    for (i, plan) in plans.iter().enumerate() {
        let client = match plan.pooler.connect().await {
            Ok(c) => c,
            Err(e) => {
                result.error = Some(e);
                return result;
            }
        };
        for alias in &plan.aliases {
            // Counted first: whatever of it got done is undone on failure.
            result.aliases[i].push(alias.clone());
            for command in ["DISABLE", "KILL"] {
                if let Err(e) = plan.pooler.command(&client, command, alias).await {
                    result.error = Some(e);
                    return result;
                }
            }
        }
    }
    result
}

/// Ends the application connections `targets` at their poolers (`KILL_CLIENT id`), and
/// verifies, for every target, that the pooler no longer lists it (`SHOW CLIENTS`) within
/// `timeout`. Targets whose backend the caller terminated (session pooling) are only
/// verified. Right before `KILL_CLIENT` the client is looked up again by its id (ids are
/// never reused) and must still have the address and port it was listed with; otherwise
/// it is `already_gone`. Refused targets are reported `not_permitted` untouched.
pub async fn end_clients(
    poolers: &[Pooler],
    targets: &[AppTarget],
    timeout: std::time::Duration,
) -> Vec<AppOutcome> {
    let outcome = |t: &AppTarget, kind: OutcomeKind, detail: String| AppOutcome {
        pooler: t.pooler.clone(),
        client: t.client.clone(),
        backend: t.backend,
        outcome: kind,
        detail,
    };
    let same = |a: &PoolConnection, b: &PoolConnection| match (a.id, b.id) {
        (Some(x), Some(y)) => x == y && a.addr == b.addr && a.port == b.port,
        _ => a.ptr == b.ptr && a.addr == b.addr && a.port == b.port,
    };
    let mut outcomes = Vec::new();
    for pooler in poolers {
        let mine: Vec<&AppTarget> = targets.iter().filter(|t| t.pooler == pooler.name).collect();
        if mine.is_empty() {
            continue;
        }
        let console = match pooler.connect().await {
            Ok(c) => c,
            Err(e) => {
                for t in mine {
                    outcomes.push(outcome(t, OutcomeKind::NotPermitted, e.to_string()));
                }
                continue;
            }
        };
        let mut sent = Vec::new();
        for t in &mine {
            if let Some(why) = &t.refused {
                outcomes.push(outcome(t, OutcomeKind::NotPermitted, why.clone()));
                continue;
            }
            match t.end {
                AppEnd::TerminateBackend => sent.push(*t),
                AppEnd::KillClient => {
                    let now = match pooler.clients(&console).await {
                        Ok(c) => c,
                        Err(e) => {
                            outcomes.push(outcome(t, OutcomeKind::NotPermitted, e.to_string()));
                            continue;
                        }
                    };
                    let (Some(id), true) = (t.client.id, now.iter().any(|c| same(c, &t.client)))
                    else {
                        outcomes.push(outcome(
                            t,
                            OutcomeKind::AlreadyGone,
                            "no longer connected to the pooler".to_owned(),
                        ));
                        continue;
                    };
                    match console.simple_query(&format!("KILL_CLIENT {id}")).await {
                        Ok(_) => sent.push(*t),
                        Err(e) => outcomes.push(outcome(
                            t,
                            OutcomeKind::NotPermitted,
                            format!(
                                "KILL_CLIENT {id} failed: {}",
                                e.as_db_error()
                                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                            ),
                        )),
                    }
                }
            }
        }
        // Verify at the pooler: each target must leave SHOW CLIENTS.
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting: Vec<&AppTarget> = sent;
        loop {
            let now = pooler.clients(&console).await.unwrap_or_default();
            waiting.retain(|t| {
                let gone = !now.iter().any(|c| same(c, &t.client));
                if gone {
                    outcomes.push(outcome(
                        t,
                        OutcomeKind::Terminated,
                        match t.end {
                            AppEnd::KillClient => "ended at the pooler (KILL_CLIENT); gone from its SHOW CLIENTS".to_owned(),
                            AppEnd::TerminateBackend => "its backend was terminated and the pooler closed it; gone from its SHOW CLIENTS".to_owned(),
                        },
                    ));
                }
                !gone
            });
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for t in waiting {
            outcomes.push(outcome(
                t,
                OutcomeKind::StillAlive,
                format!(
                    "still in the pooler's SHOW CLIENTS after {}s",
                    timeout.as_secs()
                ),
            ));
        }
    }
    outcomes
}

/// A connection string for messages: a URI or `key=value` text without any password.
fn conninfo_for_messages(conninfo: &str) -> String {
    if conninfo.contains("password") || conninfo.contains('@') {
        "(the connection string given)".to_owned()
    } else {
        conninfo.to_owned()
    }
}

/// Splits `PGKILL_PGBOUNCER` into connection strings: URIs separated by white space, and
/// `key=value` strings, a new one starting where a keyword comes again (`host=a port=1
/// host=b port=2` is two poolers).
pub fn split_conninfos(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        let is_uri = word.starts_with("postgresql://") || word.starts_with("postgres://");
        let key = word.split_once('=').map(|(k, _)| k.trim().to_owned());
        let repeats = key.as_ref().is_some_and(|k| keys.contains(k));
        match out.last_mut() {
            Some(last) if !is_uri && !repeats && !keys.is_empty() => {
                last.push(' ');
                last.push_str(word);
            }
            _ => {
                out.push(word.to_owned());
                keys.clear();
            }
        }
        if is_uri {
            keys.clear();
        } else if let Some(k) = key {
            keys.push(k);
        }
    }
    out
}

/// What of `filter` the server evaluates when poolers are named: all but `--app`,
/// `--client`, `--exclude-app` and `--exclude-client` (a pooler backend's own name and
/// address are the pooler's, the application's are at the pooler) and `--newest`/`--oldest` (applied after those).
pub fn on_the_server(filter: &Filter) -> Filter {
    Filter {
        apps: Vec::new(),
        clients: Vec::new(),
        exclude_apps: Vec::new(),
        exclude_clients: Vec::new(),
        newest: None,
        oldest: None,
        ..filter.clone()
    }
}

/// The sessions matching `filter` as [`crate::sessions::list`] returns them, with what
/// the poolers say attached (each backend that is one of a pooler's server connections
/// gets its [`pgkill_core::pooler::PoolerLink`]), and the poolers' application
/// connections that no backend serves right now.
///
/// `--app` and `--client` select on the application behind the pooler (its name and its
/// address), so they are evaluated here, after the poolers' view is attached, and so are
/// `--newest`/`--oldest`; the server evaluates the rest. Pooled connections match the
/// filters they have values for (database, user, application, client, state `idle`);
/// filters on pids, ages, query text or locks need a backend, and select none of them.
pub async fn list_through(
    client: &Client,
    caps: &crate::sessions::Capabilities,
    filter: &Filter,
    poolers: &[PoolerState],
) -> crate::Result<(Vec<Session>, Vec<Pooled>)> {
    let mut sessions = crate::sessions::list(client, caps, &on_the_server(filter)).await?;
    let pooled = pgkill_core::pooler::attach(&mut sessions, poolers);
    let behind = Filter {
        apps: filter.apps.clone(),
        clients: filter.clients.clone(),
        exclude_apps: filter.exclude_apps.clone(),
        exclude_clients: filter.exclude_clients.clone(),
        all_backends: true,
        ..Filter::default()
    };
    sessions.retain(|s| behind.matches_row(&pgkill_core::pooler::as_seen_by_the_application(s)));
    let sessions = filter.limit(sessions);
    let now = sessions.first().map_or_else(chrono::Utc::now, |s| s.now);
    let pooled = pooled
        .into_iter()
        .filter(|p| {
            filter.queries.is_empty()
                && filter.newest.is_none()
                && filter.oldest.is_none()
                && filter.matches_row(&p.as_session(now))
        })
        .collect();
    Ok((sessions, pooled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgkill_pgbouncer_lists() {
        assert_eq!(
            split_conninfos("host=a port=6432 host=b port=6433"),
            ["host=a port=6432", "host=b port=6433"]
        );
        assert_eq!(
            split_conninfos("postgresql://a:6432/pgbouncer  postgres://b/pgbouncer"),
            ["postgresql://a:6432/pgbouncer", "postgres://b/pgbouncer"]
        );
        assert_eq!(
            split_conninfos("host=a user=admin postgresql://b/pgbouncer port=1"),
            ["host=a user=admin", "postgresql://b/pgbouncer", "port=1"]
        );
        assert!(split_conninfos("  ").is_empty());
    }
}

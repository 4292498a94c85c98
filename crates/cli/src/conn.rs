//! Connecting for the commands that talk to a server, as libpq tools do (see
//! `pgkill_pg::connect`), and the fence notice every such command gives.

use pgkill_pg::connect::{
    self, ConnectArgs, Host, NoPrompt, PasswordSource, Settings, SystemEnv, TargetSessionAttrs,
    TerminalPrompt,
};
use tokio_postgres::Client;

use crate::args::ConnArgs;

/// A connection and what it was made with.
pub struct Connected {
    /// The connection (`application_name=pgkill`).
    pub client: Client,
    /// The settings that worked, the password included (typed at the prompt, or from
    /// `PGPASSWORD`/`.pgpass`): to reach another database of the same server, or to
    /// reconnect, without asking again.
    pub settings: Settings,
    /// The settings as resolved before connecting: every host the connection string
    /// named (to say where the primary is when a standby was reached).
    pub requested: Settings,
    /// The poolers of the command line (`--pgbouncer`, `PGKILL_PGBOUNCER`), and whether
    /// they came from the environment.
    pub poolers: (Vec<String>, bool),
    /// `host:port`, how the local fence records of older pgkill versions name the server.
    pub server: String,
}

impl std::fmt::Debug for Connected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connected")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Connects as the arguments, the `PG*` environment, `~/.pgpass` and service files say,
/// asking for the password on the terminal when needed. Warnings (e.g. an ignored
/// world-readable `.pgpass`) go to stderr, and so does a note for every database of this
/// server that pgkill has fenced (see [`crate::fences`]).
pub async fn connect(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Connected> {
    let connected = connect_quietly(args, conninfo).await?;
    tell(&connected.settings);
    crate::fences::notice(&connected.client, None).await;
    Ok(connected)
}

/// Says on stderr what the user should hear about a connection: its warnings (an ignored
/// world-readable `.pgpass`, ...), and which server was reached when the connection string
/// named several or asked for a kind of server (`target_session_attrs`).
pub fn tell(settings: &Settings) {
    for warning in &settings.warnings {
        eprintln!("pgkill: warning: {}", pgkill_core::printable(warning));
    }
    if let Some(line) = reached(settings) {
        eprintln!("pgkill: {}", pgkill_core::printable(&line));
    }
}

/// `connected to host=b port=5433 user=… dbname=… (server 2 of 2 given, …)` for settings
/// a connection settled with several hosts or a `target_session_attrs`; `None` otherwise.
pub fn reached(settings: &Settings) -> Option<String> {
    let (hosts, index) = settings.reached?;
    let want = settings.target_session_attrs;
    if hosts < 2 && want == TargetSessionAttrs::Any {
        return None;
    }
    let mut why = format!("server {} of {hosts} given", index + 1);
    if want != TargetSessionAttrs::Any {
        why.push_str(&format!(", target_session_attrs={want}"));
    }
    if settings.load_balance_hosts {
        why.push_str(", load_balance_hosts=random");
    }
    Some(format!("connected to {} ({why})", settings.describe()))
}

/// On a standby reached through a connection string with several hosts: where
/// `target_session_attrs=read-write` would take the same string (the primary, which must
/// run database commands), found by connecting there without asking for anything.
/// `None` when only one host was named.
pub async fn primary_hint(connected: &Connected) -> Option<String> {
    let given = &connected.requested;
    if given.endpoints.len() < 2 {
        return None;
    }
    let mut s = given.clone();
    s.target_session_attrs = TargetSessionAttrs::ReadWrite;
    s.load_balance_hosts = false;
    s.force_password_prompt = false;
    if connected.settings.password_source == Some(PasswordSource::Prompt) {
        // `-W` serves every host; a password typed when asked, the hosts without one.
        let forced = given.force_password_prompt;
        for e in s
            .endpoints
            .iter_mut()
            .filter(|e| forced || e.password.is_none())
        {
            e.password.clone_from(&connected.settings.password);
            e.password_source = Some(PasswordSource::Prompt);
        }
    }
    Some(match connect::connect_reusable(&s, &NoPrompt).await {
        Ok((_client, _task, settled)) => format!(
            "with target_session_attrs=read-write this connection string reaches the primary: {}",
            settled.describe()
        ),
        Err(e) => format!(
            "with target_session_attrs=read-write no host of this connection string can be used now: {e}"
        ),
    })
}

/// The command line's connection options and `conninfo`, as libpq-style arguments.
pub fn connect_args(args: &ConnArgs, conninfo: Option<&str>) -> ConnectArgs {
    ConnectArgs {
        host: args.host.clone(),
        port: args.port.clone(),
        user: args.user.clone(),
        force_password_prompt: args.password_prompt,
        maintenance_db: args.maintenance_db.clone(),
        conninfo: conninfo.map(str::to_owned),
    }
}

/// Connects like [`connect`] without printing anything.
pub async fn connect_quietly(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Connected> {
    connect_with(args, conninfo, &TerminalPrompt).await
}

/// [`connect_quietly`], asking for a password (when the server wants one that was not
/// found) with `prompt`.
pub async fn connect_with(
    args: &ConnArgs,
    conninfo: Option<&str>,
    prompt: &dyn connect::PasswordPrompt,
) -> anyhow::Result<Connected> {
    let settings = resolved(args, conninfo)?;
    let requested = settings.clone();
    let (client, _task, settings) = connect::connect_reusable(&settings, prompt).await?;
    let server = server_name(&settings);
    Ok(Connected {
        client,
        settings,
        requested,
        poolers: args.poolers(),
        server,
    })
}

/// The settings the arguments, the `PG*` environment and service files give, before
/// connecting (`--statement-timeout` included): what [`connect_with`] connects with, and
/// what `top` over several targets retries a target with that it could not reach at
/// start.
pub fn resolved(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Settings> {
    let mut settings = connect::resolve(&connect_args(args, conninfo), &SystemEnv)?;
    // `--statement-timeout` as a startup option: in force from the first statement, on
    // every connection made with these settings (reconnects, other databases), at no
    // round trip of its own.
    let limit = format!(
        "-c statement_timeout={}",
        pgkill_pg::exec::millis(args.statement_timeout)
    );
    settings.options = Some(match settings.options.take() {
        Some(o) if !o.trim().is_empty() => format!("{o} {limit}"),
        _ => limit,
    });
    Ok(settings)
}

/// Connects again with the settings a [`connect`] settled, never asking anything: for
/// reconnecting under a full-screen view, where a prompt would fight the key reader. The
/// password obtained at start is reused; a login that fails is an error to show.
pub async fn reconnect(settings: &Settings) -> anyhow::Result<Client> {
    let (client, _task) = connect::connect(settings, &NoPrompt).await?;
    Ok(client)
}

/// Connects to database `db` with the same settings.
pub async fn connect_to(settings: &Settings, db: String) -> pgkill_pg::Result<Client> {
    let mut s = settings.clone();
    s.dbname = db;
    let (client, _task) = connect::connect(&s, &TerminalPrompt)
        .await
        .map_err(|e| pgkill_pg::Error::Refused(vec![e.to_string()]))?;
    Ok(client)
}

fn server_name(s: &Settings) -> String {
    match &s.host {
        Host::Tcp(h) => format!("{h}:{}", s.port),
        Host::Socket(dir) => format!("{}:{}", dir.display(), s.port),
    }
}

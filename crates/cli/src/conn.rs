//! Connecting for the commands that talk to a server, as libpq tools do (see
//! `pgkill_pg::connect`), and the fence notice every such command gives.

use pgkill_pg::connect::{self, ConnectArgs, Host, NoPrompt, Settings, SystemEnv, TerminalPrompt};
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
    for warning in &connected.settings.warnings {
        eprintln!("pgkill: warning: {}", pgkill_core::printable(warning));
    }
    crate::fences::notice(&connected.client, None).await;
    Ok(connected)
}

/// Connects like [`connect`] without printing anything.
pub async fn connect_quietly(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Connected> {
    let connect_args = ConnectArgs {
        host: args.host.clone(),
        port: args.port.clone(),
        user: args.user.clone(),
        force_password_prompt: args.password_prompt,
        maintenance_db: args.maintenance_db.clone(),
        conninfo: conninfo.map(str::to_owned),
    };
    let mut settings = connect::resolve(&connect_args, &SystemEnv)?;
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
    let (client, _task, settings) = connect::connect_reusable(&settings, &TerminalPrompt).await?;
    let server = server_name(&settings);
    Ok(Connected {
        client,
        settings,
        server,
    })
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

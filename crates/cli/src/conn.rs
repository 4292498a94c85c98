//! Connecting for the session commands, as libpq tools do (see `pgkill_pg::connect`).

use pgkill_pg::connect::{self, ConnectArgs, SystemEnv, TerminalPrompt};
use tokio_postgres::Client;

use crate::args::ConnArgs;

/// Connects as the arguments, the `PG*` environment, `~/.pgpass` and service files say,
/// with `application_name=pgkill`. Warnings (e.g. an ignored world-readable `.pgpass`)
/// go to stderr.
pub async fn connect(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Client> {
    let connect_args = ConnectArgs {
        host: args.host.clone(),
        port: args.port.clone(),
        user: args.user.clone(),
        force_password_prompt: args.password_prompt,
        maintenance_db: args.maintenance_db.clone(),
        conninfo: conninfo.map(str::to_owned),
    };
    let settings = connect::resolve(&connect_args, &SystemEnv)?;
    for warning in &settings.warnings {
        eprintln!("pgkill: warning: {warning}");
    }
    let (client, _task) = connect::connect(&settings, &TerminalPrompt).await?;
    Ok(client)
}

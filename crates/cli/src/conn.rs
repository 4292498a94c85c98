//! Connecting for the session commands.

use anyhow::Context;
use tokio_postgres::{Client, Config, NoTls};

use crate::args::ConnArgs;

/// Connects as the arguments and the libpq environment say, with `application_name=pgkill`.
pub async fn connect(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Client> {
    let mut config: Config = match conninfo {
        Some(c) => c
            .parse()
            .map_err(|e| crate::UsageError(format!("invalid connection string: {e}")))?,
        None => Config::new(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(h) = args.host.clone().or_else(|| env("PGHOST")) {
        config.host(&h);
    } else if config.get_hosts().is_empty() {
        config.host(if std::path::Path::new("/var/run/postgresql").is_dir() {
            "/var/run/postgresql"
        } else {
            "/tmp"
        });
    }
    if let Some(p) = args.port.clone().or_else(|| env("PGPORT")) {
        let port: u16 = p
            .parse()
            .map_err(|_| crate::UsageError(format!("invalid port {p:?}")))?;
        config.port(port);
    }
    if let Some(u) = args.user.clone().or_else(|| env("PGUSER")) {
        config.user(&u);
    } else if config.get_user().is_none() {
        config.user(std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
    }
    if let Some(pw) = env("PGPASSWORD") {
        if config.get_password().is_none() {
            config.password(pw);
        }
    }
    if let Some(db) = args.maintenance_db.clone() {
        config.dbname(&db);
    } else if config.get_dbname().is_none() {
        config.dbname(env("PGDATABASE").unwrap_or_else(|| "postgres".into()));
    }
    config.application_name("pgkill");
    config.connect_timeout(std::time::Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await.with_context(|| {
        format!(
            "cannot connect to {}:{} as {}",
            args.host.clone().unwrap_or_default(),
            config.get_ports().first().copied().unwrap_or(5432),
            config.get_user().unwrap_or("?")
        )
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

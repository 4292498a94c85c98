//! libpq parity against real servers of every version, with the system's `psql` as the
//! oracle where it can be: `requiressl`/`PGREQUIRESSL` refuse a server without TLS before
//! any password is sent, and `.pgpass` matches a non-default Unix-socket directory by its
//! path (not as `localhost`), and a group-readable one is named when it was ignored.
//!
//! Each test puts its own `pg_hba.conf` rules first for its own role and sets the role's
//! password itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgkill_pg::connect::{self, ConnectArgs, ConnectError, MemoryEnv, Settings};
use pgkill_sandbox::{cases, Installation, Options, Sandbox};
use tokio_postgres::Client;

#[path = "support/recorder.rs"]
mod recorder;
use recorder::recorder;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        requiressl_refuses_a_server_without_tls_before_the_password,
        pgpass_on_a_non_default_socket_directory,
    ]);
}

const ROLE: &str = "pgkill_parity";
const PASSWORD: &str = "Parity-pw-3c9d";

struct Server {
    sb: Sandbox,
    admin: Client,
    hba: String,
}

async fn server(pg: &Installation) -> Result<Server> {
    let sb = Sandbox::start(pg, &Options::default().setting("log_connections", "on"))?;
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD {}",
            pgkill_core::quote_literal(PASSWORD)?
        ))
        .await
        .context("creating the test role")?;
    let hba = std::fs::read_to_string(sb.data_dir().join("pg_hba.conf"))?;
    Ok(Server { sb, admin, hba })
}

impl Server {
    /// Puts `rules` first in `pg_hba.conf`, reloads, and waits until a login of [`ROLE`]
    /// without a password is refused both ways (the rules ask for one).
    async fn hba(&self, rules: &[&str]) -> Result<()> {
        let path = self.sb.data_dir().join("pg_hba.conf");
        std::fs::write(&path, format!("{}\n{}", rules.join("\n"), self.hba))?;
        self.admin
            .batch_execute("SELECT pg_catalog.pg_reload_conf()")
            .await?;
        let began = Instant::now();
        let dir = self.sb.socket_dir().display().to_string();
        let port = self.sb.port();
        loop {
            let tcp = psql(
                &format!("host=127.0.0.1 port={port} user={ROLE} sslmode=disable"),
                &[],
            )?;
            let unix = psql(&format!("host={dir} port={port} user={ROLE}"), &[])?;
            if tcp.is_err() && unix.is_err() {
                return Ok(());
            }
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "the server never applied the pg_hba.conf rules {rules:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether the system's libpq (`psql`) connects with `conninfo` and only `vars` as its
/// environment (else what it said): the oracle.
fn psql(conninfo: &str, vars: &[(&str, &str)]) -> Result<std::result::Result<(), String>> {
    let mut cmd = Command::new("psql");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent-pgkill-parity-home");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = cmd
        .args(["-X", "-w", "-q", "-t", "-c", "SELECT 1", conninfo])
        .output()
        .context("running psql (the libpq oracle; install postgresql-client)")?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// Resolves `conninfo` with only `vars` as the environment, no home directory, and the
/// real file system.
fn settings(conninfo: &str, vars: &[(&str, &str)]) -> Result<Settings, ConnectError> {
    let env = vars.iter().fold(
        MemoryEnv::new().user("pgkill-test-os-user").real_files(),
        |env, (k, v)| env.var(k, v),
    );
    connect::resolve(
        &ConnectArgs {
            conninfo: Some(conninfo.to_owned()),
            ..ConnectArgs::default()
        },
        &env,
    )
}

async fn pgkill(conninfo: &str, vars: &[(&str, &str)]) -> Result<(), ConnectError> {
    let s = settings(conninfo, vars)?;
    let (client, _task) = connect::connect(&s, &connect::NoPrompt).await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| ConnectError::TlsSetup {
            detail: e.to_string(),
        })?;
    Ok(())
}

/// The SSLRequest packet: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

async fn requiressl_refuses_a_server_without_tls_before_the_password(
    pg: Installation,
) -> Result<()> {
    let s = server(&pg).await?;
    // Cleartext password over TCP: a password sent would be visible to the recorder.
    s.hba(&[&format!("host all {ROLE} 127.0.0.1/32 password")])
        .await?;
    let pw = [("PGPASSWORD", PASSWORD)];
    let with_pw = |extra: &[(&'static str, &'static str)]| {
        let mut v = pw.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let refused: &[(String, Vec<(&str, &str)>)] = &[
        (format!("user={ROLE} requiressl=1"), with_pw(&[])),
        (
            format!("user={ROLE} sslmode=disable requiressl=1"),
            with_pw(&[]),
        ),
        (format!("user={ROLE}"), with_pw(&[("PGREQUIRESSL", "1")])),
        (
            format!("user={ROLE} requiressl=1"),
            with_pw(&[("PGSSLMODE", "disable")]),
        ),
    ];
    for (extra, vars) in refused {
        let proxy = recorder(s.sb.port()).await?;
        let conninfo = format!("host=127.0.0.1 port={} {extra}", proxy.port);
        let uri_like = conninfo.clone();
        match pgkill(&conninfo, vars).await {
            Ok(()) => bail!("pgkill connected with {conninfo} {vars:?} to a server without TLS"),
            Err(e) => {
                let text = e.to_string();
                ensure!(!text.contains(PASSWORD), "{text}");
            }
        }
        {
            let sent = proxy.sent.lock().unwrap();
            ensure!(
                sent.as_slice() == SSL_REQUEST,
                "{conninfo} {vars:?}: pgkill sent more than an SSLRequest ({} bytes)",
                sent.len()
            );
        }
        ensure!(
            psql(&uri_like, vars)?.is_err(),
            "psql connected with {uri_like} {vars:?}: the oracle disagrees"
        );
    }
    // The URI spelling.
    let proxy = recorder(s.sb.port()).await?;
    let uri = format!(
        "postgresql://{ROLE}@127.0.0.1:{}/postgres?requiressl=1",
        proxy.port
    );
    ensure!(
        pgkill(&uri, &pw).await.is_err(),
        "pgkill connected with {uri}"
    );
    ensure!(proxy.sent.lock().unwrap().as_slice() == SSL_REQUEST);
    ensure!(psql(&uri, &pw)?.is_err(), "psql connected with {uri}");

    // Where libpq goes ahead without TLS, so does pgkill (the later keyword wins;
    // PGSSLMODE beats PGREQUIRESSL; requiressl=0 hides PGSSLMODE).
    let allowed: &[(String, Vec<(&str, &str)>)] = &[
        (
            format!("user={ROLE} requiressl=1 sslmode=prefer"),
            with_pw(&[]),
        ),
        (
            format!("user={ROLE} requiressl=0"),
            with_pw(&[("PGSSLMODE", "require")]),
        ),
        (
            format!("user={ROLE}"),
            with_pw(&[("PGREQUIRESSL", "1"), ("PGSSLMODE", "prefer")]),
        ),
        (format!("user={ROLE}"), with_pw(&[("PGREQUIRESSL", "0")])),
    ];
    for (extra, vars) in allowed {
        let conninfo = format!(
            "host=127.0.0.1 port={} dbname=postgres {extra}",
            s.sb.port()
        );
        psql(&conninfo, vars)?.map_err(|e| anyhow!("psql: {conninfo} {vars:?}: {e}"))?;
        pgkill(&conninfo, vars)
            .await
            .map_err(|e| anyhow!("pgkill: {conninfo} {vars:?}: {e}"))?;
    }
    Ok(())
}

/// Escapes `:` and `\` for a `.pgpass` field.
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

async fn pgpass_on_a_non_default_socket_directory(pg: Installation) -> Result<()> {
    let s = server(&pg).await?;
    s.hba(&[
        &format!("local all {ROLE} scram-sha-256"),
        &format!("host all {ROLE} 127.0.0.1/32 scram-sha-256"),
    ])
    .await?;
    let dir = s.sb.socket_dir().display().to_string();
    let port = s.sb.port();
    let files = tempfile::Builder::new()
        .prefix("pgkill-parity-")
        .tempdir()?;
    let passfile = files.path().join("pgpass");
    let passfile_text = passfile.display().to_string();
    let write = |text: &str, mode: u32| -> Result<()> {
        std::fs::write(&passfile, text)?;
        std::fs::set_permissions(
            &passfile,
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )?;
        Ok(())
    };
    let vars = [("PGPASSFILE", passfile_text.as_str())];
    let socket = format!("host={dir} port={port} user={ROLE} dbname=postgres");

    // The directory's path: both find the line and connect.
    write(
        &format!(
            "{}:{port}:*:{ROLE}:{}\n",
            pgpass_field(&dir),
            pgpass_field(PASSWORD)
        ),
        0o600,
    )?;
    psql(&socket, &vars)?.map_err(|e| anyhow!("psql with the path line: {e}"))?;
    pgkill(&socket, &vars)
        .await
        .map_err(|e| anyhow!("pgkill with the path line: {e}"))?;
    // The port is compared as text: 0-padded, neither matches.
    write(
        &format!(
            "{}:0{port}:*:{ROLE}:{}\n",
            pgpass_field(&dir),
            pgpass_field(PASSWORD)
        ),
        0o600,
    )?;
    ensure!(
        psql(&socket, &vars)?.is_err(),
        "psql matched a 0-padded port"
    );
    let e = pgkill(&socket, &vars)
        .await
        .err()
        .context("pgkill matched a 0-padded port")?;
    ensure!(matches!(e, ConnectError::PasswordRequired { .. }), "{e:?}");

    // A localhost line: not for a non-default socket directory, in either.
    write(&format!("localhost:{port}:*:{ROLE}:{PASSWORD}\n"), 0o600)?;
    ensure!(
        psql(&socket, &vars)?.is_err(),
        "psql used the localhost line for {dir}"
    );
    let e = pgkill(&socket, &vars)
        .await
        .err()
        .context("pgkill used the localhost line for a non-default socket directory")?;
    ensure!(matches!(e, ConnectError::PasswordRequired { .. }), "{e:?}");
    // ... but for TCP to localhost, both do.
    let tcp = format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={ROLE} dbname=postgres sslmode=disable"
    );
    psql(&tcp, &vars)?.map_err(|e| anyhow!("psql over TCP with the localhost line: {e}"))?;
    pgkill(&tcp, &vars)
        .await
        .map_err(|e| anyhow!("pgkill over TCP with the localhost line: {e}"))?;

    // Readable by the group: ignored by both; pgkill's error says so and why.
    write(
        &format!("{}:{port}:*:{ROLE}:{PASSWORD}\n", pgpass_field(&dir)),
        0o640,
    )?;
    ensure!(
        psql(&socket, &vars)?.is_err(),
        "psql used a group-readable file"
    );
    let e = pgkill(&socket, &vars)
        .await
        .err()
        .context("pgkill used a group-readable password file")?;
    let text = e.to_string();
    ensure!(
        matches!(e, ConnectError::PasswordRequired { .. })
            && text.contains(&passfile_text)
            && text.contains("group or world access")
            && !text.contains(PASSWORD),
        "{text}"
    );
    Ok(())
}

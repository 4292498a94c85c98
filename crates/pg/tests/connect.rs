//! `pgkill_pg::connect` against real servers of every version: flags, URIs, `.pgpass`,
//! the password prompt, the errors users meet (wrong password, unknown database, nothing
//! listening, slow server) and TLS in every `sslmode`, with certificates made at test time.
//!
//! Sandboxes ask every TCP client for its role's password (their own OS user logs in by
//! `peer` over the Unix socket): tests about something else give it the sandbox's password
//! file through `PGPASSFILE` ([`with_passfile`]), as a user of `pgkill demo` would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgkill_pg::connect::{
    self, ConnectArgs, ConnectError, Env, FileInfo, Host, Password, PasswordPrompt, PasswordSource,
    Settings, SystemEnv,
};
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};
use tokio_postgres::Client;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        connects_with_flags,
        connects_with_uri_and_conninfo,
        connects_over_the_unix_socket,
        application_name_is_always_pgkill,
        password_from_pgpass_file,
        readable_pgpass_is_ignored,
        wrong_password_is_28p01_without_the_password,
        password_prompt_only_when_needed,
        unknown_database_is_3d000,
        default_database_falls_back_to_template1,
        nothing_listening_is_a_clear_error,
        silent_server_times_out,
        tls_in_every_sslmode,
        require_tls_from_a_server_without_tls,
    ]);
}

/// Environment variables from a map, files from the real file system, and a home
/// directory of the test's choosing: the test does not depend on the caller's `PG*`
/// variables or `~/.pgpass`, but reads real files with real permissions.
struct TestEnv {
    vars: BTreeMap<String, String>,
    home: PathBuf,
}

impl TestEnv {
    fn new(home: &Path) -> Self {
        TestEnv {
            vars: BTreeMap::new(),
            home: home.to_path_buf(),
        }
    }
    fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }
}

/// The environment of [`TestEnv::new`] plus `PGPASSFILE` naming the sandbox's password file.
fn with_passfile(home: &Path, sb: &Sandbox) -> TestEnv {
    TestEnv::new(home).var("PGPASSFILE", &sb.passfile().display().to_string())
}

/// The password of `role` in `sb`.
fn password_of(sb: &Sandbox, role: &str) -> Result<String> {
    sb.password(role)
        .ok_or_else(|| anyhow!("the sandbox has no password for {role}"))
}

impl Env for TestEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        Some(self.home.clone())
    }
    fn os_user(&self) -> Option<String> {
        Some("pgkill-test-os-user".into())
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        SystemEnv.read_file(path)
    }
    fn file_info(&self, path: &Path) -> io::Result<FileInfo> {
        SystemEnv.file_info(path)
    }
}

/// A prompt that answers with a fixed password and counts how often it was asked.
struct FakePrompt {
    answer: String,
    terminal: bool,
    asked: AtomicUsize,
}

impl FakePrompt {
    fn new(answer: &str, terminal: bool) -> Self {
        FakePrompt {
            answer: answer.into(),
            terminal,
            asked: AtomicUsize::new(0),
        }
    }
    fn asked(&self) -> usize {
        self.asked.load(Ordering::SeqCst)
    }
}

impl PasswordPrompt for FakePrompt {
    fn can_prompt(&self) -> bool {
        self.terminal
    }
    fn prompt(&self, _message: &str) -> io::Result<Password> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(Password::new(self.answer.clone()))
    }
}

fn flags(sb: &Sandbox, role: &str, db: &str) -> ConnectArgs {
    ConnectArgs {
        host: Some(sb.host().into()),
        port: Some(sb.port().to_string()),
        user: Some(role.into()),
        maintenance_db: Some(db.into()),
        ..ConnectArgs::default()
    }
}

fn conninfo(s: &str) -> ConnectArgs {
    ConnectArgs {
        conninfo: Some(s.into()),
        ..ConnectArgs::default()
    }
}

fn home() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("pgkill-connect-home-")
        .tempdir()?)
}

async fn open(settings: &Settings) -> Result<Client, ConnectError> {
    let (client, _task) = connect::connect(settings, &connect::NoPrompt).await?;
    Ok(client)
}

/// `(current_user, current_database, application_name, ssl)` of the client's session, as
/// the server (pg_stat_activity, pg_stat_ssl) sees it from an admin connection.
async fn session_of(sb: &Sandbox, client: &Client) -> Result<(String, String, String, bool)> {
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let admin = sb.admin("postgres").await?;
    let row = admin
        .query_one(
            "SELECT a.usename::text, a.datname::text, a.application_name, s.ssl
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.pid = $1",
            &[&pid],
        )
        .await
        .context("pg_stat_activity/pg_stat_ssl")?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
}

fn expect_err<T>(r: Result<T, ConnectError>, what: &str) -> Result<ConnectError> {
    match r {
        Ok(_) => bail!("{what}: connected, expected an error"),
        Err(e) => Ok(e),
    }
}

/// Every way an error is shown must leave the password out.
fn ensure_hidden(e: &ConnectError, secret: &str) -> Result<()> {
    let mut shown = vec![e.to_string(), format!("{e:?}")];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        shown.push(s.to_string());
        shown.push(format!("{s:?}"));
        source = s.source();
    }
    for s in shown {
        ensure!(!s.contains(secret), "the password shows in {s:?}");
    }
    Ok(())
}

async fn connects_with_flags(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let settings = connect::resolve(
        &flags(&sb, roles::PLAIN, "postgres"),
        &with_passfile(h.path(), &sb),
    )?;
    ensure!(settings.host == Host::Tcp("127.0.0.1".into()));
    ensure!(
        settings.describe()
            == format!(
                "host=127.0.0.1 port={} user={} dbname=postgres",
                sb.port(),
                roles::PLAIN
            ),
        "{}",
        settings.describe()
    );
    let client = open(&settings).await?;
    let (user, db, app, _) = session_of(&sb, &client).await?;
    ensure!((user.as_str(), db.as_str(), app.as_str()) == (roles::PLAIN, "postgres", "pgkill"));

    // Flags beat the environment.
    let env = with_passfile(h.path(), &sb)
        .var("PGHOST", "/nonexistent")
        .var("PGPORT", "1")
        .var("PGUSER", "nobody")
        .var("PGDATABASE", "nothing");
    let settings = connect::resolve(&flags(&sb, roles::OWNER, "template1"), &env)?;
    let client = open(&settings).await?;
    let (user, db, _, _) = session_of(&sb, &client).await?;
    ensure!((user.as_str(), db.as_str()) == (roles::OWNER, "template1"));
    Ok(())
}

async fn connects_with_uri_and_conninfo(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("shop", None).await?;
    let h = home()?;
    let env = with_passfile(h.path(), &sb);
    for (args, want_user, want_db) in [
        (
            conninfo(&format!(
                "postgresql://{}@127.0.0.1:{}/shop?sslmode=disable",
                roles::SIGNALLER,
                sb.port()
            )),
            roles::SIGNALLER,
            "shop",
        ),
        (
            conninfo(&format!(
                "postgres://127.0.0.1:{}/?user={}",
                sb.port(),
                roles::PLAIN
            )),
            roles::PLAIN,
            "postgres",
        ),
        (
            conninfo(&sb.conninfo("shop", roles::OWNER)),
            roles::OWNER,
            "shop",
        ),
        // As in psql, the URI's database beats --maintenance-db ...
        (
            ConnectArgs {
                maintenance_db: Some("template1".into()),
                ..conninfo(&format!(
                    "postgresql://{}@127.0.0.1:{}/shop",
                    roles::PLAIN,
                    sb.port()
                ))
            },
            roles::PLAIN,
            "shop",
        ),
        // ... which applies when the URI names none.
        (
            ConnectArgs {
                maintenance_db: Some("template1".into()),
                ..conninfo(&format!(
                    "postgresql://{}@127.0.0.1:{}",
                    roles::PLAIN,
                    sb.port()
                ))
            },
            roles::PLAIN,
            "template1",
        ),
    ] {
        let settings = connect::resolve(&args, &env)?;
        let client = open(&settings).await.with_context(|| settings.describe())?;
        let (user, db, app, _) = session_of(&sb, &client).await?;
        ensure!(
            (user.as_str(), db.as_str(), app.as_str()) == (want_user, want_db, "pgkill"),
            "{args:?}: got {user} {db} {app}"
        );
    }
    // Through a service file and PGSERVICE.
    let services = h.path().join(".pg_service.conf");
    std::fs::write(
        &services,
        format!(
            "[sandbox]\nhost=127.0.0.1\nport={}\nuser={}\ndbname=shop\n",
            sb.port(),
            roles::SIGNALLER
        ),
    )?;
    let env = with_passfile(h.path(), &sb).var("PGSERVICE", "sandbox");
    let settings = connect::resolve(&ConnectArgs::default(), &env)?;
    let client = open(&settings).await?;
    let (user, db, _, _) = session_of(&sb, &client).await?;
    ensure!((user.as_str(), db.as_str()) == (roles::SIGNALLER, "shop"));
    Ok(())
}

async fn connects_over_the_unix_socket(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    // PGHOST names the socket directory; sslmode=verify-full does not matter on a socket.
    // (No password: the sandbox's own OS user logs in by peer over its socket.)
    let env = TestEnv::new(h.path())
        .var("PGHOST", &sb.socket_dir().display().to_string())
        .var("PGPORT", &sb.port().to_string())
        .var("PGUSER", roles::PLAIN)
        .var("PGSSLMODE", "verify-full");
    let settings = connect::resolve(&ConnectArgs::default(), &env)?;
    ensure!(settings.is_unix_socket());
    let client = open(&settings).await?;
    let (user, _, _, ssl) = session_of(&sb, &client).await?;
    ensure!(user == roles::PLAIN && !ssl);
    let addr: Option<String> = client
        .query_one(
            "SELECT client_addr::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    ensure!(
        addr.is_none(),
        "a socket session has no client address: {addr:?}"
    );
    Ok(())
}

async fn application_name_is_always_pgkill(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let env = with_passfile(h.path(), &sb).var("PGAPPNAME", "from-env");
    for args in [
        flags(&sb, roles::PLAIN, "postgres"),
        conninfo(&format!(
            "host=127.0.0.1 port={} user={} application_name=mine",
            sb.port(),
            roles::PLAIN
        )),
        conninfo(&format!(
            "postgresql://{}@127.0.0.1:{}/postgres?application_name=mine",
            roles::PLAIN,
            sb.port()
        )),
    ] {
        let settings = connect::resolve(&args, &env)?;
        let client = open(&settings).await?;
        let (_, _, app, _) = session_of(&sb, &client).await?;
        ensure!(app == "pgkill", "{args:?}: application_name {app:?}");
        let shown: String = client.query_one("SHOW application_name", &[]).await?.get(0);
        ensure!(shown == "pgkill", "SHOW application_name: {shown}");
    }
    Ok(())
}

fn write_pgpass(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

async fn password_from_pgpass_file(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let pgpass = h.path().join(".pgpass");
    // Escapes and wildcards on the way to the right line.
    write_pgpass(
        &pgpass,
        &format!(
            "# comment\n\
             127.0.0.1:{port}:shop:{plain}:other-database\\:no\n\
             127.0.0.1:1:*:{plain}:wrong-port\n\
             localhost:{port}:*:{plain}:wrong-host\n\
             127.0.0.1:{port}:*:{plain}:{pw}\n\
             *:*:*:*:fallback-that-is-wrong\n",
            port = sb.port(),
            plain = roles::PLAIN,
            pw = password_of(&sb, roles::PLAIN)?,
        ),
        0o600,
    )?;
    let settings = connect::resolve(
        &flags(&sb, roles::PLAIN, "postgres"),
        &TestEnv::new(h.path()),
    )?;
    ensure!(
        settings.password_source == Some(PasswordSource::PasswordFile(pgpass.clone())),
        "{:?}",
        settings.password_source
    );
    ensure!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    let client = open(&settings).await?;
    let (user, _, app, _) = session_of(&sb, &client).await?;
    ensure!(user == roles::PLAIN && app == "pgkill");

    // PGPASSFILE names another file; a password with ':' and '\' in it, escaped.
    let admin = sb.admin("postgres").await?;
    admin
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            roles::SIGNALLER,
            pgkill_core::quote_literal(r"we:ird\pw")?
        ))
        .await?;
    let other = h.path().join("other-pgpass");
    write_pgpass(
        &other,
        &format!(
            "localhost:*:*:*:nope\n127.0.0.1:*:*:{}:we\\:ird\\\\pw\n",
            roles::SIGNALLER
        ),
        0o600,
    )?;
    let env = TestEnv::new(h.path()).var("PGPASSFILE", &other.display().to_string());
    let settings = connect::resolve(&flags(&sb, roles::SIGNALLER, "postgres"), &env)?;
    let client = open(&settings).await?;
    let (user, _, _, _) = session_of(&sb, &client).await?;
    ensure!(user == roles::SIGNALLER);
    Ok(())
}

async fn readable_pgpass_is_ignored(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let pgpass = h.path().join(".pgpass");
    write_pgpass(
        &pgpass,
        &format!("*:*:*:*:{}\n", password_of(&sb, roles::PLAIN)?),
        0o644,
    )?;
    let settings = connect::resolve(
        &flags(&sb, roles::PLAIN, "postgres"),
        &TestEnv::new(h.path()),
    )?;
    ensure!(settings.password.is_none());
    ensure!(
        settings.warnings.len() == 1 && settings.warnings[0].contains("group or world access"),
        "{:?}",
        settings.warnings
    );
    let e = expect_err(open(&settings).await, "group-readable .pgpass")?;
    ensure!(matches!(e, ConnectError::PasswordRequired { .. }), "{e:?}");
    Ok(())
}

async fn wrong_password_is_28p01_without_the_password(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let secret = "Not-The-Password-42";
    // From PGPASSWORD, from a URI and from .pgpass: each error says where it came from.
    let pgpass = h.path().join(".pgpass");
    write_pgpass(&pgpass, &format!("*:*:*:*:{secret}\n"), 0o600)?;
    let cases = [
        (
            flags(&sb, roles::PLAIN, "postgres"),
            TestEnv::new(h.path()).var("PGPASSWORD", secret),
            "PGPASSWORD",
        ),
        (
            conninfo(&format!(
                "postgresql://{}:{secret}@127.0.0.1:{}/postgres",
                roles::PLAIN,
                sb.port()
            )),
            TestEnv::new(h.path()),
            "the connection string",
        ),
        (
            flags(&sb, roles::PLAIN, "postgres"),
            TestEnv::new(h.path()),
            ".pgpass",
        ),
    ];
    for (args, env, from) in cases {
        let settings = connect::resolve(&args, &env)?;
        let e = expect_err(open(&settings).await, "wrong password")?;
        let ConnectError::BadPassword { source, .. } = &e else {
            bail!("expected BadPassword, got {e:?}");
        };
        ensure!(
            source.code() == Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{source:?}"
        );
        let msg = e.to_string();
        ensure!(
            msg.contains(&format!(
                "password authentication failed for user \"{}\"",
                roles::PLAIN
            )) && msg.contains("~/.pgpass or PGPASSWORD")
                && msg.contains(from),
            "{msg}"
        );
        ensure_hidden(&e, secret)?;
        ensure!(!format!("{settings:?}").contains(secret));
    }
    Ok(())
}

async fn password_prompt_only_when_needed(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let right = password_of(&sb, roles::PLAIN)?;
    let h = home()?;
    let env = TestEnv::new(h.path());
    let settings = connect::resolve(&flags(&sb, roles::PLAIN, "postgres"), &env)?;
    ensure!(settings.password.is_none());

    // No terminal: a clear error (this is how tokio-postgres's "password missing" is
    // recognised, against the real library).
    let no_tty = FakePrompt::new(&right, false);
    let e = expect_err(
        connect::connect(&settings, &no_tty).await.map(|_| ()),
        "no password, no terminal",
    )?;
    ensure!(matches!(e, ConnectError::PasswordRequired { .. }), "{e:?}");
    ensure!(e.to_string().contains("PGPASSWORD"), "{e}");
    ensure!(no_tty.asked() == 0);

    // A terminal: asked once, then connected.
    let tty = FakePrompt::new(&right, true);
    let (client, _task) = connect::connect(&settings, &tty).await?;
    ensure!(tty.asked() == 1);
    let (user, _, _, _) = session_of(&sb, &client).await?;
    ensure!(user == roles::PLAIN);

    // A wrong answer at the prompt: 28P01, saying the password came from the prompt.
    let wrong = FakePrompt::new("typo", true);
    let e = expect_err(
        connect::connect(&settings, &wrong).await.map(|_| ()),
        "wrong typed password",
    )?;
    ensure!(matches!(e, ConnectError::BadPassword { .. }), "{e:?}");
    ensure!(e.to_string().contains("the prompt"), "{e}");
    ensure!(wrong.asked() == 1, "asked {} times", wrong.asked());

    // -W asks first even when a password is known, and the typed one is used.
    let mut args = flags(&sb, roles::PLAIN, "postgres");
    args.force_password_prompt = true;
    let settings = connect::resolve(&args, &TestEnv::new(h.path()).var("PGPASSWORD", "stale"))?;
    let tty = FakePrompt::new(&right, false);
    connect::connect(&settings, &tty).await?;
    ensure!(tty.asked() == 1);

    // Peer over the Unix socket (the sandbox's own OS user): no password wanted, none asked.
    let env = TestEnv::new(h.path()).var("PGHOST", &sb.socket_dir().display().to_string());
    let settings = connect::resolve(
        &ConnectArgs {
            port: Some(sb.port().to_string()),
            user: Some(roles::PLAIN.into()),
            ..ConnectArgs::default()
        },
        &env,
    )?;
    let tty = FakePrompt::new("unused", true);
    connect::connect(&settings, &tty).await?;
    ensure!(tty.asked() == 0);
    Ok(())
}

async fn unknown_database_is_3d000(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let settings = connect::resolve(
        &flags(&sb, roles::PLAIN, "no_such_db"),
        &with_passfile(h.path(), &sb),
    )?;
    let e = expect_err(open(&settings).await, "unknown database")?;
    let ConnectError::NoSuchDatabase { dbname, source, .. } = &e else {
        bail!("expected NoSuchDatabase, got {e:?}");
    };
    ensure!(dbname == "no_such_db");
    ensure!(source.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME));
    let msg = e.to_string();
    ensure!(
        msg.contains("database \"no_such_db\" does not exist")
            && msg.contains("use --maintenance-db to pick another database"),
        "{msg}"
    );
    Ok(())
}

async fn default_database_falls_back_to_template1(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("template1").await?;
    admin.batch_execute("DROP DATABASE postgres").await?;
    let h = home()?;
    let mut args = flags(&sb, roles::PLAIN, "x");
    args.maintenance_db = None;
    let settings = connect::resolve(&args, &with_passfile(h.path(), &sb))?;
    ensure!(settings.dbname == "postgres" && settings.dbname_is_default);
    let (client, _task) = connect::connect(&settings, &connect::NoPrompt).await?;
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    ensure!(db == "template1", "connected to {db}");
    // Asked for by name: no fallback.
    let settings = connect::resolve(
        &flags(&sb, roles::PLAIN, "postgres"),
        &with_passfile(h.path(), &sb),
    )?;
    let e = expect_err(open(&settings).await, "postgres asked for by name")?;
    ensure!(matches!(e, ConnectError::NoSuchDatabase { .. }), "{e:?}");
    Ok(())
}

fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn nothing_listening_is_a_clear_error(pg: Installation) -> Result<()> {
    let _ = pg;
    let h = home()?;
    let env = TestEnv::new(h.path());
    let port = closed_port()?;
    let settings = connect::resolve(
        &conninfo(&format!("host=127.0.0.1 port={port} user=someone")),
        &env,
    )?;
    let e = expect_err(open(&settings).await, "closed port")?;
    ensure!(matches!(e, ConnectError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    ensure!(
        msg.contains(&format!("host=127.0.0.1 port={port}"))
            && msg.contains("is the server running")
            && msg.to_lowercase().contains("connection refused"),
        "{msg}"
    );
    // A socket directory with no server in it.
    let settings = connect::resolve(
        &conninfo(&format!(
            "host={} port={port} user=someone",
            h.path().display()
        )),
        &env,
    )?;
    let e = expect_err(open(&settings).await, "no socket")?;
    ensure!(matches!(e, ConnectError::Unreachable { .. }), "{e:?}");
    let msg = e.to_string();
    ensure!(
        msg.contains(&format!(".s.PGSQL.{port}")) && msg.contains("is the server running"),
        "{msg}"
    );
    Ok(())
}

async fn silent_server_times_out(pg: Installation) -> Result<()> {
    let _ = pg;
    // Accepts TCP connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let h = home()?;
    let settings = connect::resolve(
        &conninfo(&format!(
            "host=127.0.0.1 port={port} user=someone connect_timeout=2 sslmode=disable"
        )),
        &TestEnv::new(h.path()),
    )?;
    let began = Instant::now();
    let e = expect_err(open(&settings).await, "silent server")?;
    let took = began.elapsed();
    holder.abort();
    ensure!(
        matches!(e, ConnectError::Timeout { seconds: 2, .. }),
        "{e:?}"
    );
    ensure!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    ensure!(e.to_string().contains("timed out after 2 s"), "{e}");
    Ok(())
}

/// A CA and a server certificate for `localhost` and `127.0.0.1` signed by it.
struct TestPki {
    ca_pem: String,
    server_cert_pem: String,
    server_key_pem: String,
}

fn make_pki(ca_name: &str) -> Result<TestPki> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_cert = params.signed_by(&server_key, &issuer)?;
    Ok(TestPki {
        ca_pem: ca_cert.pem(),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}

/// Starts a sandbox with TLS on; `None` when this build of PostgreSQL has no TLS support
/// (it refuses to start with ssl=on).
fn start_with_tls(pg: &Installation, pki: &TestPki) -> Result<Option<Sandbox>> {
    let options = Options::default()
        .setting("ssl", "on")
        .data_file("server.crt", pki.server_cert_pem.clone(), 0o600)
        .data_file("server.key", pki.server_key_pem.clone(), 0o600);
    match Sandbox::start(pg, &options) {
        Ok(sb) => Ok(Some(sb)),
        Err(e) if format!("{e:#}").contains("SSL is not supported by this build") => Ok(None),
        Err(e) => Err(anyhow!(e).context("starting a sandbox with ssl=on")),
    }
}

async fn tls_in_every_sslmode(pg: Installation) -> Result<()> {
    let pki = make_pki("pgkill test CA")?;
    let other = make_pki("some other CA")?;
    let h = home()?;
    let ca = h.path().join("ca.crt");
    let other_ca = h.path().join("other-ca.crt");
    std::fs::write(&ca, &pki.ca_pem)?;
    std::fs::write(&other_ca, &other.ca_pem)?;

    let Some(sb) = start_with_tls(&pg, &pki)? else {
        // No TLS in this build: say so loudly through the error pgkill gives users.
        let sb = Sandbox::start(&pg, &Options::default())?;
        let settings = connect::resolve(
            &conninfo(&format!(
                "host=127.0.0.1 port={} user=postgres sslmode=require",
                sb.port()
            )),
            &TestEnv::new(h.path()),
        )?;
        let e = expect_err(open(&settings).await, "require without TLS support")?;
        ensure!(matches!(e, ConnectError::TlsRefused { .. }), "{e:?}");
        bail!(
            "PostgreSQL {} was built without TLS support: {e}",
            pg.version
        );
    };
    if pg.version.major >= 14 {
        let admin = sb.admin("postgres").await?;
        let lib: String = admin.query_one("SHOW ssl_library", &[]).await?.get(0);
        ensure!(lib == "OpenSSL", "ssl_library {lib}");
    }
    // PGPASSWORD: some hosts below (wrong-name.invalid) are in no password file.
    let env = TestEnv::new(h.path()).var("PGPASSWORD", &password_of(&sb, roles::PLAIN)?);
    let port = sb.port();
    let try_mode = |extra: String| {
        let env = &env;
        async move {
            let settings = connect::resolve(
                &conninfo(&format!("port={port} user={} {extra}", roles::PLAIN)),
                env,
            )
            .map_err(|e| anyhow!(e))?;
            Ok::<_, anyhow::Error>(open(&settings).await)
        }
    };

    // Modes that connect, and whether the session is encrypted.
    for (extra, want_ssl) in [
        ("host=127.0.0.1 sslmode=disable".to_owned(), false),
        ("host=127.0.0.1 sslmode=allow".to_owned(), true),
        ("host=127.0.0.1 sslmode=prefer".to_owned(), true),
        ("host=127.0.0.1".to_owned(), true),
        ("host=127.0.0.1 sslmode=require".to_owned(), true),
        // require with a root certificate verifies the chain (like libpq), not the name.
        (
            format!(
                "host=127.0.0.1 sslmode=require sslrootcert={}",
                ca.display()
            ),
            true,
        ),
        (
            format!(
                "host=127.0.0.1 sslmode=verify-ca sslrootcert={}",
                ca.display()
            ),
            true,
        ),
        (
            format!(
                "host=wrong-name.invalid hostaddr=127.0.0.1 sslmode=verify-ca sslrootcert={}",
                ca.display()
            ),
            true,
        ),
        (
            format!(
                "host=localhost sslmode=verify-full sslrootcert={}",
                ca.display()
            ),
            true,
        ),
        (
            format!(
                "host=127.0.0.1 sslmode=verify-full sslrootcert={}",
                ca.display()
            ),
            true,
        ),
    ] {
        let client = try_mode(extra.clone())
            .await?
            .map_err(|e| anyhow!("{extra}: {e}"))?;
        let (_, _, app, ssl) = session_of(&sb, &client).await?;
        ensure!(ssl == want_ssl, "{extra}: ssl = {ssl}");
        ensure!(app == "pgkill");
    }

    // The default root certificate ~/.postgresql/root.crt is used by verify-full.
    std::fs::create_dir_all(h.path().join(".postgresql"))?;
    std::fs::copy(&ca, h.path().join(".postgresql/root.crt"))?;
    let client = try_mode("host=localhost sslmode=verify-full".into()).await??;
    ensure!(session_of(&sb, &client).await?.3);
    std::fs::remove_file(h.path().join(".postgresql/root.crt"))?;

    // Failures, each with a message that says what to do.
    let e = expect_err(
        try_mode(format!(
            "host=localhost sslmode=verify-full sslrootcert={}",
            other_ca.display()
        ))
        .await?,
        "verify-full against another CA",
    )?;
    ensure!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
    let msg = e.to_string();
    ensure!(
        msg.contains("not signed by a CA in sslrootcert")
            && msg.contains(&other_ca.display().to_string()),
        "{msg}"
    );
    let e = expect_err(
        try_mode(format!(
            "host=localhost sslmode=require sslrootcert={}",
            other_ca.display()
        ))
        .await?,
        "require with another CA's root certificate",
    )?;
    ensure!(e.to_string().contains("not signed by a CA"), "{e}");
    let e = expect_err(
        try_mode(format!(
            "host=wrong-name.invalid hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await?,
        "verify-full with a name not in the certificate",
    )?;
    ensure!(
        e.to_string()
            .contains("not valid for host \"wrong-name.invalid\""),
        "{e}"
    );
    // verify-full without any CA file: refused before connecting.
    let e = connect::resolve(
        &conninfo(&format!("host=localhost port={port} sslmode=verify-full")),
        &env,
    )
    .err()
    .ok_or_else(|| anyhow!("verify-full without a CA resolved"))?;
    ensure!(matches!(e, ConnectError::RootCertMissing { .. }), "{e:?}");
    // An unreadable sslrootcert.
    let e = connect::resolve(
        &conninfo(&format!(
            "host=localhost port={port} sslmode=verify-ca sslrootcert={}",
            h.path().display()
        )),
        &env,
    )
    .err()
    .ok_or_else(|| anyhow!("a directory as sslrootcert resolved"))?;
    ensure!(
        matches!(e, ConnectError::RootCertUnreadable { .. }),
        "{e:?}"
    );

    // With a password in the connection string over TLS (SCRAM with channel binding on 11+).
    drop(sb);
    let options = Options::default()
        .setting("ssl", "on")
        .data_file("server.crt", pki.server_cert_pem.clone(), 0o600)
        .data_file("server.key", pki.server_key_pem.clone(), 0o600);
    let sb = Sandbox::start(&pg, &options)?;
    let settings = connect::resolve(
        &conninfo(&format!(
            "host=localhost port={} user={} password={} sslmode=verify-full sslrootcert={}",
            sb.port(),
            roles::PLAIN,
            password_of(&sb, roles::PLAIN)?,
            ca.display()
        )),
        &TestEnv::new(h.path()),
    )?;
    let client = open(&settings).await?;
    ensure!(session_of(&sb, &client).await?.3);
    Ok(())
}

async fn require_tls_from_a_server_without_tls(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let h = home()?;
    let env = with_passfile(h.path(), &sb);
    let base = format!("host=127.0.0.1 port={} user={}", sb.port(), roles::PLAIN);
    let settings = connect::resolve(&conninfo(&format!("{base} sslmode=require")), &env)?;
    let e = expect_err(open(&settings).await, "require, server without TLS")?;
    ensure!(matches!(e, ConnectError::TlsRefused { .. }), "{e:?}");
    ensure!(
        e.to_string().contains("does not accept TLS") && e.to_string().contains("sslmode=require"),
        "{e}"
    );
    // prefer falls back to an unencrypted session.
    let settings = connect::resolve(&conninfo(&format!("{base} sslmode=prefer")), &env)?;
    let client = open(&settings).await?;
    ensure!(!session_of(&sb, &client).await?.3);
    Ok(())
}

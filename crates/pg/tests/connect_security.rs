//! The connection options that protect the user, against real servers of every version:
//! `require_auth` (the client refuses authentication requests it was not allowed to
//! answer, before answering), `requirepeer` (the server process's OS user on a Unix
//! socket), `sslcrl`/`sslcrldir` (a revoked server certificate is refused) and
//! `ssl_min/max_protocol_version`; and, since pgkill opens its sockets itself for these,
//! that cancel requests still reach the server.
//!
//! Each test writes its own `pg_hba.conf` rules for its own role (first, so they win over
//! whatever the sandbox configured) and sets the role's password itself; it does not
//! depend on how the sandbox authenticates. Where the system's libpq (`psql`) supports an
//! option, its verdict is checked too: pgkill must agree with it, except where a
//! difference is kept on purpose (listed at the case).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use pgkill_pg::connect::{self, ConnectArgs, ConnectError, MemoryEnv, Settings};
use pgkill_sandbox::{cases, Installation, Options, Sandbox};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

#[path = "support/recorder.rs"]
mod recorder;
use recorder::{options_dropper, recorder};

fn main() {
    pgkill_sandbox::matrix::main(cases![
        require_auth_refuses_cleartext_before_sending_the_password,
        require_auth_against_scram,
        require_auth_none_against_trust,
        require_auth_under_tls,
        requirepeer_checks_the_server_process_user,
        sslcrl_refuses_a_revoked_server_certificate,
        tls_protocol_version_bounds,
        cancel_goes_through_the_same_kind_of_socket,
        a_proxy_that_drops_the_startup_options_is_refused,
    ]);
}

/// The role every test logs in as, with a password the test sets.
const ROLE: &str = "pgkill_sec";
const PASSWORD: &str = "Sec-pw-7b1e";

/// A sandbox, and an admin connection opened before any `pg_hba.conf` change (so it does
/// not depend on the rules the test writes).
struct Server {
    sb: Sandbox,
    admin: Client,
    hba: String,
}

async fn server(pg: &Installation, options: Options) -> Result<Server> {
    let sb = Sandbox::start(pg, &options.setting("log_connections", "on"))?;
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

/// The first authentication request code a server sends a new connection of [`ROLE`]
/// (0 trust, 3 cleartext, 10 SASL), from a bare startup packet: an oracle that owes
/// nothing to the code under test.
async fn first_request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> Result<u32> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for part in ["user", ROLE, "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    s.write_all(&packet).await?;
    let mut header = [0u8; 9];
    s.read_exact(&mut header).await?;
    ensure!(
        header[0] == b'R',
        "the server answered {:?}",
        header[0] as char
    );
    Ok(u32::from_be_bytes([
        header[5], header[6], header[7], header[8],
    ]))
}

impl Server {
    /// Puts `rules` first in `pg_hba.conf`, reloads, and waits until new TCP connections
    /// (and Unix-socket ones, when `socket_code` is given) get the expected first request.
    async fn hba(&self, rules: &[&str], tcp_code: u32, socket_code: Option<u32>) -> Result<()> {
        let path = self.sb.data_dir().join("pg_hba.conf");
        std::fs::write(&path, format!("{}\n{}", rules.join("\n"), self.hba))?;
        self.admin
            .batch_execute("SELECT pg_catalog.pg_reload_conf()")
            .await?;
        let began = Instant::now();
        loop {
            let tcp = tokio::net::TcpStream::connect((self.sb.host(), self.sb.port())).await?;
            let tcp_ok = first_request(tcp).await.ok() == Some(tcp_code);
            let socket_ok = match socket_code {
                None => true,
                Some(code) => {
                    let s = tokio::net::UnixStream::connect(self.socket()).await?;
                    first_request(s).await.ok() == Some(code)
                }
            };
            if tcp_ok && socket_ok {
                return Ok(());
            }
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "the server never applied the pg_hba.conf rules {rules:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// [`Server::hba`] with one rule: TCP logins of [`ROLE`] use `method`, whose first
    /// request is `code`.
    async fn tcp_method(&self, method: &str, code: u32) -> Result<()> {
        self.hba(
            &[&format!("host all {ROLE} 127.0.0.1/32 {method}")],
            code,
            None,
        )
        .await
    }

    fn socket(&self) -> PathBuf {
        self.sb
            .socket_dir()
            .join(format!(".s.PGSQL.{}", self.sb.port()))
    }

    /// How many sessions of [`ROLE`] the server's log says were let in.
    fn authorized(&self) -> Result<usize> {
        let log = std::fs::read_to_string(self.sb.log_file())?;
        Ok(log
            .matches(&format!("connection authorized: user={ROLE} "))
            .count())
    }

    /// Waits until the log shows `n` sessions of [`ROLE`] let in, then checks it is not more.
    async fn wait_authorized(&self, n: usize) -> Result<()> {
        let began = Instant::now();
        while self.authorized()? < n && began.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = self.authorized()?;
        ensure!(
            got == n,
            "the log shows {got} sessions of {ROLE} let in, expected {n}"
        );
        Ok(())
    }

    /// `key=value` settings reaching this server over TCP as [`ROLE`].
    fn tcp(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={ROLE} dbname=postgres password={PASSWORD} {extra}",
            self.sb.port()
        )
    }
}

/// Resolves `conninfo` with only `vars` as the environment (not the caller's `PG*`),
/// no home directory, and the real file system (the files a test writes).
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

async fn open(conninfo: &str, vars: &[(&str, &str)]) -> Result<Client, ConnectError> {
    let s = settings(conninfo, vars)?;
    let (client, _task) = connect::connect(&s, &connect::NoPrompt).await?;
    Ok(client)
}

async fn refused(conninfo: &str, vars: &[(&str, &str)], why: &str) -> Result<ConnectError> {
    match open(conninfo, vars).await {
        Ok(_) => bail!("{conninfo}: connected, expected it refused because {why}"),
        Err(e) => Ok(e),
    }
}

/// Asserts `e` is a `require_auth` refusal saying `reason`, and leaves out the password.
fn auth_refusal(e: &ConnectError, reason: &str) -> Result<()> {
    ensure!(
        matches!(e, ConnectError::AuthMethodRefused { .. }),
        "expected a require_auth refusal, got {e:?}"
    );
    let text = e.to_string();
    ensure!(text.contains(reason), "{text}");
    ensure!(!text.contains(PASSWORD) && !format!("{e:?}").contains(PASSWORD));
    Ok(())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn require_auth_refuses_cleartext_before_sending_the_password(
    pg: Installation,
) -> Result<()> {
    let s = server(&pg, Options::default()).await?;
    s.tcp_method("password", 3).await?;
    let proxy = recorder(s.sb.port()).await?;
    let via_proxy = |extra: &str| {
        format!(
            "host=127.0.0.1 port={} user={ROLE} password={PASSWORD} sslmode=disable {extra}",
            proxy.port
        )
    };
    let before = s.authorized()?;

    // The finding: a server asking for a cleartext password got it.
    for (how, vars) in [
        (via_proxy("require_auth=scram-sha-256"), vec![]),
        (via_proxy(""), vec![("PGREQUIREAUTH", "scram-sha-256")]),
        (via_proxy("require_auth=md5"), vec![]),
        (via_proxy("require_auth=none"), vec![]),
        (via_proxy("require_auth=!password"), vec![]),
        (
            via_proxy("require_auth=!password,!md5,!scram-sha-256"),
            vec![],
        ),
    ] {
        let e = refused(&how, &vars, "the server asks for a cleartext password").await?;
        auth_refusal(
            &e,
            "the server requested a cleartext password, but require_auth=",
        )?;
    }
    let e = refused(&via_proxy("require_auth=scram-sha-256"), &[], "cleartext").await?;
    ensure!(
        e.to_string().contains(
            "requested a cleartext password, but require_auth=scram-sha-256 does not allow it"
        ),
        "{e}"
    );
    ensure!(
        !contains(&proxy.sent.lock().unwrap(), PASSWORD),
        "the password went over the wire"
    );

    // Allowed: it connects, and the recorder does see the password then (it is a working
    // oracle); the log shows this session only, so none of the refused ones got in.
    for allowed in [
        "require_auth=password",
        "require_auth=!none",
        "require_auth=scram-sha-256,password,md5",
        "require_auth=!md5",
    ] {
        open(&via_proxy(allowed), &[])
            .await
            .map_err(|e| anyhow!("{allowed}: {e}"))?;
    }
    ensure!(contains(&proxy.sent.lock().unwrap(), PASSWORD));
    s.wait_authorized(before + 4).await?;
    Ok(())
}

/// Over TCP without TLS: connects with each `require_auth` value of `allowed` and is
/// refused with each of `refusing`, for the reason given.
async fn require_auth_verdicts(
    s: &Server,
    allowed: &[&str],
    refusing: &[(&str, &str)],
) -> Result<()> {
    for value in allowed {
        open(
            &s.tcp(&format!("sslmode=disable require_auth={value}")),
            &[],
        )
        .await
        .map_err(|e| anyhow!("require_auth={value}: {e}"))?;
    }
    for (value, reason) in refusing {
        let e = refused(
            &s.tcp(&format!("sslmode=disable require_auth={value}")),
            &[],
            reason,
        )
        .await?;
        auth_refusal(&e, reason)?;
    }
    Ok(())
}

async fn require_auth_against_scram(pg: Installation) -> Result<()> {
    let s = server(&pg, Options::default()).await?;
    s.tcp_method("scram-sha-256", 10).await?;
    let before = s.authorized()?;
    let sasl = "the server requested SASL authentication";
    let scram = "the server requested SCRAM-SHA-256 authentication";
    require_auth_verdicts(
        &s,
        &[
            "scram-sha-256",
            "!password",
            "!none",
            "password,scram-sha-256,md5",
            "!md5,!gss,!sspi",
        ],
        &[
            (
                "password",
                "the server requested SASL authentication (SCRAM-SHA-256",
            ),
            ("md5", sasl),
            ("none", sasl),
            ("!scram-sha-256", scram),
            ("!password,!md5,!scram-sha-256", scram),
        ],
    )
    .await?;
    s.wait_authorized(before + 5).await?;
    Ok(())
}

async fn require_auth_none_against_trust(pg: Installation) -> Result<()> {
    let s = server(&pg, Options::default()).await?;
    s.tcp_method("trust", 0).await?;
    // Unset (an empty value) allows anything.
    open(&s.tcp("sslmode=disable require_auth="), &[]).await?;
    let skipped = "the server let pgkill in without any authentication";
    require_auth_verdicts(
        &s,
        &["none", "!password", "!scram-sha-256", "none,scram-sha-256"],
        &[
            ("!none", skipped),
            ("scram-sha-256", skipped),
            ("password", skipped),
            ("password,scram-sha-256", skipped),
        ],
    )
    .await?;
    // Bad values are refused before connecting, with the rule that was broken.
    for (bad, why) in [
        ("scram-sha-256,!md5", "cannot be mixed"),
        ("password,password", "given more than once"),
        ("trust", "unknown method \"trust\""),
    ] {
        let e = settings(&s.tcp(&format!("require_auth={bad}")), &[])
            .err()
            .ok_or_else(|| anyhow!("{bad} resolved"))?;
        ensure!(
            matches!(e, ConnectError::InvalidValue { .. }) && e.to_string().contains(why),
            "{bad}: {e}"
        );
    }
    Ok(())
}

/// A CA, a server certificate for `localhost`/`127.0.0.1` with serial number 4711, and
/// CRLs by that CA: one revoking 4711, one revoking another serial.
struct Pki {
    ca: String,
    cert: String,
    key: String,
    revoking: String,
    not_revoking: String,
}

fn pki() -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
        ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
        RevokedCertParams, SerialNumber,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pgkill security test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.serial_number = Some(SerialNumber::from(4711u64));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let crl = |serial: u64| -> Result<String> {
        Ok(CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)?
        .pem()?)
    };
    Ok(Pki {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
        revoking: crl(4711)?,
        not_revoking: crl(1)?,
    })
}

fn tls_options(pki: &Pki) -> Options {
    Options::default()
        .setting("ssl", "on")
        .data_file("server.crt", pki.cert.clone(), 0o600)
        .data_file("server.key", pki.key.clone(), 0o600)
}

/// Whether the system's libpq (`psql`) connects with `conninfo` (else what it said): the
/// oracle.
fn libpq(conninfo: &str, home: &Path) -> Result<std::result::Result<(), String>> {
    let out = Command::new("psql")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .args(["-X", "-w", "-q", "-t", "-c", "SELECT 1", conninfo])
        .output()
        .context("running psql (the libpq oracle; install postgresql-client)")?;
    Ok(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// libpq connects with `conninfo` too.
fn libpq_connects(conninfo: &str, home: &Path) -> Result<()> {
    libpq(conninfo, home)?.map_err(|e| anyhow!("libpq refused {conninfo}: {e}"))
}

/// libpq refuses `conninfo` too.
fn libpq_refuses(conninfo: &str, home: &Path) -> Result<()> {
    ensure!(
        libpq(conninfo, home)?.is_err(),
        "libpq connected with {conninfo}"
    );
    Ok(())
}

/// A directory the server's OS user may read: test files pgkill and psql read.
fn files() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("pgkill-sec-").tempdir()?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok(dir)
}

async fn session_ssl(s: &Server, client: &Client) -> Result<Option<String>> {
    let pid: i32 = client
        .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
        .await?
        .get(0);
    let row = s
        .admin
        .query_one(
            "SELECT version FROM pg_catalog.pg_stat_ssl WHERE pid = $1 AND ssl",
            &[&pid],
        )
        .await;
    Ok(row.ok().map(|r| r.get(0)))
}

async fn require_auth_under_tls(pg: Installation) -> Result<()> {
    let pki = pki()?;
    let dir = files()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca)?;
    let s = server(&pg, tls_options(&pki)).await?;
    let tls = |extra: &str| {
        s.tcp(&format!(
            "host=localhost sslmode=verify-full sslrootcert={} {extra}",
            ca.display()
        ))
    };
    // Under TLS the watcher reads the decrypted stream.
    s.tcp_method("password", 3).await?;
    let before = s.authorized()?;
    let e = refused(
        &tls("require_auth=scram-sha-256"),
        &[],
        "cleartext over TLS",
    )
    .await?;
    auth_refusal(&e, "requested a cleartext password")?;
    let client = open(&tls("require_auth=password"), &[]).await?;
    ensure!(session_ssl(&s, &client).await?.is_some(), "not encrypted");
    // channel_binding=require refuses a cleartext request that require_auth allows (as
    // libpq), again before sending the password.
    let e = refused(
        &tls("require_auth=password channel_binding=require"),
        &[],
        "no channel binding",
    )
    .await?;
    ensure!(e.to_string().contains("channel binding"), "{e}");
    s.wait_authorized(before + 1).await?;

    // SCRAM with channel binding (SCRAM-SHA-256-PLUS, PostgreSQL 11+).
    s.tcp_method("scram-sha-256", 10).await?;
    let bound = open(
        &tls("require_auth=scram-sha-256 channel_binding=require"),
        &[],
    )
    .await;
    if pg.version.major >= 11 {
        bound.map_err(|e| anyhow!("SCRAM with channel binding over TLS: {e}"))?;
    } else {
        ensure!(
            bound.is_err(),
            "PostgreSQL 10 has no channel binding, yet it connected"
        );
    }
    let e = refused(&tls("require_auth=password"), &[], "SCRAM over TLS").await?;
    auth_refusal(&e, "requested SASL authentication")?;
    Ok(())
}

/// The OS user running the server (the owner of its data directory).
fn server_os_user(sb: &Sandbox) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(sb.data_dir())?.uid();
    Ok(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))?
            .ok_or_else(|| anyhow!("uid {uid} has no name"))?
            .name,
    )
}

async fn requirepeer_checks_the_server_process_user(pg: Installation) -> Result<()> {
    let s = server(&pg, Options::default()).await?;
    s.hba(
        &[
            &format!("local all {ROLE} scram-sha-256"),
            &format!("host all {ROLE} 127.0.0.1/32 scram-sha-256"),
        ],
        10,
        Some(10),
    )
    .await?;
    let owner = server_os_user(&s.sb)?;
    let home = files()?;
    let socket = |extra: &str| {
        format!(
            "host={} port={} user={ROLE} dbname=postgres password={PASSWORD} {extra}",
            s.sb.socket_dir().display(),
            s.sb.port()
        )
    };
    for how in [socket(&format!("requirepeer={owner}"))] {
        open(&how, &[]).await.map_err(|e| anyhow!("{how}: {e}"))?;
        libpq_connects(&how, home.path())?;
    }
    open(&socket(""), &[("PGREQUIREPEER", &owner)]).await?;
    for wrong in ["someone-else", "root-not"] {
        let how = socket(&format!("requirepeer={wrong}"));
        let e = refused(&how, &[], "the server runs as another user").await?;
        ensure!(matches!(e, ConnectError::PeerMismatch { .. }), "{e:?}");
        let text = e.to_string();
        ensure!(
            text.contains(&format!("requirepeer specifies \"{wrong}\""))
                && text.contains(&format!("runs as OS user \"{owner}\"")),
            "{text}"
        );
        libpq_refuses(&how, home.path())?;
    }
    let e = refused(
        &socket(""),
        &[("PGREQUIREPEER", "someone-else")],
        "PGREQUIREPEER",
    )
    .await?;
    ensure!(matches!(e, ConnectError::PeerMismatch { .. }), "{e:?}");
    // Over TCP requirepeer means nothing (libpq ignores it there too).
    let how = s.tcp("sslmode=disable requirepeer=someone-else");
    open(&how, &[]).await.map_err(|e| anyhow!("{how}: {e}"))?;
    libpq_connects(&how, home.path())?;
    Ok(())
}

async fn sslcrl_refuses_a_revoked_server_certificate(pg: Installation) -> Result<()> {
    let pki = pki()?;
    let dir = files()?;
    let home = files()?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        Ok(p)
    };
    let ca = write("ca.crt", &pki.ca)?;
    let revoking = write("revoking.crl", &pki.revoking)?;
    let not_revoking = write("not-revoking.crl", &pki.not_revoking)?;
    let crldir = dir.path().join("crls");
    std::fs::create_dir(&crldir)?;
    std::fs::write(crldir.join("1a2b3c4d.r0"), &pki.revoking)?;

    let s = server(&pg, tls_options(&pki)).await?;
    s.tcp_method("scram-sha-256", 10).await?;
    let with = |mode: &str, extra: &str| {
        s.tcp(&format!(
            "host=localhost sslmode={mode} sslrootcert={} {extra}",
            ca.display()
        ))
    };
    for mode in ["verify-full", "verify-ca"] {
        let how = with(mode, &format!("sslcrl={}", revoking.display()));
        let e = refused(&how, &[], "the server's certificate is revoked").await?;
        ensure!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
        ensure!(
            e.to_string().contains("certificate has been revoked"),
            "{e}"
        );
        libpq_refuses(&how, home.path())?;

        let how = with(mode, &format!("sslcrl={}", not_revoking.display()));
        let client = open(&how, &[]).await.map_err(|e| anyhow!("{how}: {e}"))?;
        ensure!(session_ssl(&s, &client).await?.is_some());
        libpq_connects(&how, home.path())?;
    }
    // The environment variable and a CRL directory work the same.
    let revoking_text = revoking.display().to_string();
    let e = refused(
        &with("verify-full", ""),
        &[("PGSSLCRL", &revoking_text)],
        "PGSSLCRL",
    )
    .await?;
    ensure!(e.to_string().contains("revoked"), "{e}");
    let e = refused(
        &with("verify-full", &format!("sslcrldir={}", crldir.display())),
        &[],
        "sslcrldir",
    )
    .await?;
    ensure!(e.to_string().contains("revoked"), "{e}");
    // Without verification there is nothing to check revocation against (as libpq).
    let how = s.tcp(&format!(
        "host=localhost sslmode=require sslcrl={}",
        revoking.display()
    ));
    open(&how, &[]).await.map_err(|e| anyhow!("{how}: {e}"))?;
    libpq_connects(&how, home.path())?;
    // Kept on purpose: libpq ignores a CRL file that does not exist; pgkill refuses.
    let how = with("verify-full", "sslcrl=/nonexistent/root.crl");
    let e = settings(&how, &[])
        .err()
        .ok_or_else(|| anyhow!("a missing sslcrl resolved"))?;
    ensure!(matches!(e, ConnectError::CrlUnreadable { .. }), "{e:?}");
    libpq_connects(&how, home.path()).context("libpq changed: it now refuses a missing CRL")?;
    Ok(())
}

/// A TLS endpoint that answers the SSLRequest like PostgreSQL and speaks TLS 1.2 only:
/// for servers without `ssl_max_protocol_version` (10, 11).
fn tls12_only_endpoint(pki: &Pki) -> Result<u16> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(pki.cert.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(pki.key.as_bytes())?;
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?,
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // One connection (the client under test does not retry), on a thread of its own.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok((mut tcp, _)) = listener.accept() else {
            return;
        };
        let mut request = [0u8; 8];
        if tcp.read_exact(&mut request).is_ok() && tcp.write_all(b"S").is_ok() {
            if let Ok(mut conn) = rustls::ServerConnection::new(config) {
                let _ = conn.complete_io(&mut tcp);
            }
        }
    });
    Ok(port)
}

async fn tls_protocol_version_bounds(pg: Installation) -> Result<()> {
    let pki = pki()?;
    let dir = files()?;
    let home = files()?;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca)?;
    let s = server(&pg, tls_options(&pki)).await?;
    s.tcp_method("scram-sha-256", 10).await?;
    let tls = |s: &Server, extra: &str| {
        s.tcp(&format!(
            "host=localhost sslmode=verify-full sslrootcert={} {extra}",
            ca.display()
        ))
    };
    // Each bound is honoured (the server's view of the session says which version).
    for (extra, vars, want) in [
        ("ssl_min_protocol_version=TLSv1.3", vec![], "TLSv1.3"),
        ("", vec![("PGSSLMINPROTOCOLVERSION", "TLSv1.3")], "TLSv1.3"),
        ("ssl_max_protocol_version=TLSv1.2", vec![], "TLSv1.2"),
        ("", vec![("PGSSLMAXPROTOCOLVERSION", "tlsv1.2")], "TLSv1.2"),
        (
            "ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.2",
            vec![],
            "TLSv1.2",
        ),
    ] {
        let client = open(&tls(&s, extra), &vars)
            .await
            .map_err(|e| anyhow!("{extra} {vars:?}: {e}"))?;
        let got = session_ssl(&s, &client).await?;
        ensure!(got.as_deref() == Some(want), "{extra} {vars:?}: {got:?}");
    }
    let how = tls(&s, "ssl_min_protocol_version=TLSv1.3");
    libpq_connects(&how, home.path())?;
    // Values that cannot be met or make no sense are refused before connecting.
    for (bad, want) in [
        (
            "ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.1",
            "cannot be met",
        ),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "range",
        ),
        ("ssl_min_protocol_version=TLSv2", "ssl_min_protocol_version"),
    ] {
        let e = settings(&tls(&s, bad), &[])
            .err()
            .ok_or_else(|| anyhow!("{bad} resolved"))?;
        ensure!(e.to_string().contains(want), "{bad}: {e}");
    }
    drop(s);

    // A server that stops at TLS 1.2, and a client that starts at 1.3.
    let refusal = if pg.version.major >= 12 {
        let s = server(
            &pg,
            tls_options(&pki).setting("ssl_max_protocol_version", "TLSv1.2"),
        )
        .await?;
        s.tcp_method("scram-sha-256", 10).await?;
        let client = open(&tls(&s, ""), &[]).await?;
        ensure!(session_ssl(&s, &client).await?.as_deref() == Some("TLSv1.2"));
        let how = tls(&s, "ssl_min_protocol_version=TLSv1.3");
        libpq_refuses(&how, home.path())?;
        refused(&how, &[], "the server stops at TLS 1.2").await?
    } else {
        // No ssl_max_protocol_version before PostgreSQL 12: a TLS 1.2-only endpoint.
        let port = tls12_only_endpoint(&pki)?;
        let how = format!(
            "host=localhost port={port} user={ROLE} sslmode=verify-full sslrootcert={} ssl_min_protocol_version=TLSv1.3",
            ca.display()
        );
        refused(&how, &[], "the endpoint stops at TLS 1.2").await?
    };
    ensure!(matches!(refusal, ConnectError::Tls { .. }), "{refusal:?}");
    ensure!(
        refusal.to_string().contains("no TLS version in common")
            && refusal
                .to_string()
                .contains("ssl_min_protocol_version=TLSv1.3"),
        "{refusal}"
    );
    Ok(())
}

/// A statement of a pgkill connection is cancelled through `connect::cancel`, over TLS and
/// over the Unix socket (with `requirepeer`).
async fn cancel_goes_through_the_same_kind_of_socket(pg: Installation) -> Result<()> {
    let pki = pki()?;
    let s = server(&pg, tls_options(&pki)).await?;
    s.hba(
        &[
            &format!("local all {ROLE} scram-sha-256"),
            &format!("host all {ROLE} 127.0.0.1/32 scram-sha-256"),
        ],
        10,
        Some(10),
    )
    .await?;
    let owner = server_os_user(&s.sb)?;
    let socket = format!(
        "host={} port={} user={ROLE} dbname=postgres password={PASSWORD} requirepeer={owner}",
        s.sb.socket_dir().display(),
        s.sb.port()
    );
    for how in [s.tcp("sslmode=require"), socket] {
        let settings = settings(&how, &[])?;
        let (client, _task) = connect::connect(&settings, &connect::NoPrompt).await?;
        let token = client.cancel_token();
        let sleeping =
            tokio::spawn(
                async move { client.batch_execute("SELECT pg_catalog.pg_sleep(30)").await },
            );
        // Cancel until it lands (the statement may not have started yet).
        let began = Instant::now();
        while !sleeping.is_finished() {
            connect::cancel(&settings, &token).await?;
            ensure!(
                began.elapsed() < Duration::from_secs(10),
                "{how}: never cancelled"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let e = sleeping
            .await?
            .err()
            .ok_or_else(|| anyhow!("{how}: pg_sleep finished"))?;
        ensure!(
            e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{how}: {e}"
        );
    }
    Ok(())
}

/// A pooler that drops pgkill's startup options (PgBouncer with
/// `ignore_startup_parameters = options`) would have pgkill run without its pinned
/// `search_path`, and setting it afterwards would change a server connection other
/// clients share: pgkill refuses such a connection, and says why. The proxy is a working
/// oracle: the same connection string straight to the server works.
async fn a_proxy_that_drops_the_startup_options_is_refused(pg: Installation) -> Result<()> {
    let s = server(&pg, Options::default()).await?;
    let proxy = options_dropper(s.sb.port()).await?;
    let through = |port: u16| {
        format!("host=127.0.0.1 port={port} user={ROLE} password={PASSWORD} sslmode=disable")
    };
    let e = refused(
        &through(proxy.port),
        &[],
        "the startup options were dropped",
    )
    .await?;
    ensure!(
        matches!(e, ConnectError::OptionsDropped { .. }),
        "expected OptionsDropped, got {e:?}"
    );
    ensure!(
        e.to_string().contains("lost pgkill's startup options")
            && e.to_string().contains("connection pooler"),
        "{e}"
    );
    ensure!(
        !contains(&proxy.sent.lock().unwrap(), "-c search_path"),
        "the proxy let the options through, so it proves nothing"
    );
    let direct = open(&through(s.sb.port()), &[]).await?;
    let path: String = direct.query_one("SHOW search_path", &[]).await?.get(0);
    ensure!(
        path.replace(' ', "") == "pg_catalog,pg_temp",
        "search_path {path:?}"
    );
    Ok(())
}

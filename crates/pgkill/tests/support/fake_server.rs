//! A fake PostgreSQL server that records what clients send while they resolve where and
//! how to connect: which endpoint they reached, in what order, whether an SSLRequest came
//! first, the user and database of the startup packet, and the password (if any). It
//! never lets anyone in, so a run of `psql` and a run of `pgkill` over the same inputs
//! can be compared connection by connection.
//!
//! Endpoints: TCP on `127.0.0.1` or `[::1]` (free ports picked at run time), Unix sockets
//! `DIR/.s.PGSQL.PORT` in a private temporary directory or in the default socket
//! directory `/var/run/postgresql`. Each behaves as [`Behaviour`] says.
#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Where an endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// TCP on 127.0.0.1, a free port.
    Tcp4,
    /// TCP on [::1], a free port.
    Tcp6,
    /// A Unix socket in a temporary directory of its own.
    Socket,
    /// A Unix socket in the default socket directory, `/var/run/postgresql`.
    DefaultSocket,
}

/// What an endpoint does with a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers SSLRequest/GSSENCRequest with 'N', asks for a cleartext password after the
    /// startup packet, records the answer, then fails with FATAL 28P01.
    Password,
    /// Fails with FATAL 57P03 ("the database system is starting up") after the startup
    /// packet.
    StartingUp,
    /// Nothing listens (a port that was bound and released; a socket directory without a
    /// socket).
    Down,
}

/// The default Unix-socket directory of Debian's libpq (and pgkill).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// One connection as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    /// The endpoint's label.
    pub endpoint: String,
    /// Whether the client asked for TLS (an SSLRequest) before its startup packet. A
    /// GSSENCRequest before it does not count either way: the server says 'N' to both.
    pub ssl_request: bool,
    /// `user` of the startup packet (none if the client sent none).
    pub user: Option<String>,
    /// `database` of the startup packet.
    pub database: Option<String>,
    /// The password message's contents (none if the client sent none).
    pub password: Option<String>,
    /// A connection of [`FakeServer::take`]'s own (never returned).
    marker: bool,
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} user={} db={} password={}",
            self.endpoint,
            if self.ssl_request { " +ssl" } else { "" },
            self.user.as_deref().unwrap_or("-"),
            self.database.as_deref().unwrap_or("-"),
            self.password.as_deref().unwrap_or("-"),
        )
    }
}

/// An endpoint as started: where it is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub label: String,
    pub listen: Listen,
    pub behaviour: Behaviour,
    /// The TCP port, or the number in the socket file's name.
    pub port: u16,
    /// The socket directory (Unix sockets only).
    pub dir: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    /// Connections still being served.
    active: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    idle: Condvar,
}

/// A running set of endpoints. Dropping it stops them and removes their socket files.
pub struct FakeServer {
    pub endpoints: Vec<Endpoint>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    socket_files: Vec<PathBuf>,
    _dirs: Vec<tempfile::TempDir>,
}

/// A port nobody listens on now: bound on `ip`, then released.
fn free_port(ip: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

impl FakeServer {
    /// Starts the endpoints `specs` (label, where, behaviour) on `rt`.
    pub fn start(rt: &Runtime, specs: &[(&str, Listen, Behaviour)]) -> Result<FakeServer> {
        let _guard = rt.enter();
        let shared = Arc::new(Shared::default());
        let mut server = FakeServer {
            endpoints: Vec::new(),
            shared: shared.clone(),
            tasks: Vec::new(),
            socket_files: Vec::new(),
            _dirs: Vec::new(),
        };
        for &(label, listen, behaviour) in specs {
            let mut endpoint = Endpoint {
                label: label.to_owned(),
                listen,
                behaviour,
                port: 0,
                dir: None,
            };
            match listen {
                Listen::Tcp4 | Listen::Tcp6 => {
                    let ip = if listen == Listen::Tcp4 {
                        "127.0.0.1"
                    } else {
                        "::1"
                    };
                    if behaviour == Behaviour::Down {
                        endpoint.port = free_port(ip)?;
                    } else {
                        let std_listener = std::net::TcpListener::bind((ip, 0))
                            .with_context(|| format!("binding {ip}:0 for endpoint {label}"))?;
                        std_listener.set_nonblocking(true)?;
                        endpoint.port = std_listener.local_addr()?.port();
                        let listener = tokio::net::TcpListener::from_std(std_listener)?;
                        let (shared, label) = (shared.clone(), label.to_owned());
                        server.tasks.push(tokio::spawn(async move {
                            while let Ok((stream, _)) = listener.accept().await {
                                serve(stream, label.clone(), behaviour, shared.clone());
                            }
                        }));
                    }
                }
                Listen::Socket | Listen::DefaultSocket => {
                    let dir = if listen == Listen::Socket {
                        let d = tempfile::Builder::new()
                            .prefix("pgkill-diff-sock-")
                            .tempdir()?;
                        let p = d.path().to_path_buf();
                        server._dirs.push(d);
                        p
                    } else {
                        PathBuf::from(DEFAULT_SOCKET_DIR)
                    };
                    // A number no socket in the directory has yet.
                    let (port, file) = loop {
                        let port = free_port("127.0.0.1")?;
                        let file = dir.join(format!(".s.PGSQL.{port}"));
                        if !file.exists() {
                            break (port, file);
                        }
                    };
                    endpoint.port = port;
                    endpoint.dir = Some(dir.clone());
                    if behaviour != Behaviour::Down {
                        let listener = tokio::net::UnixListener::bind(&file).map_err(|e| {
                            anyhow!(
                                "cannot listen on the Unix socket {} for endpoint {label}: {e}{}",
                                file.display(),
                                if listen == Listen::DefaultSocket {
                                    " (the differential test needs to bind in the default \
                                     socket directory /var/run/postgresql, as libpq and \
                                     pgkill look there when no host is given: run it as \
                                     root or as a member of the directory's group, and \
                                     create the directory if it is missing)"
                                } else {
                                    ""
                                }
                            )
                        })?;
                        server.socket_files.push(file);
                        let (shared, label) = (shared.clone(), label.to_owned());
                        server.tasks.push(tokio::spawn(async move {
                            while let Ok((stream, _)) = listener.accept().await {
                                serve(stream, label.clone(), behaviour, shared.clone());
                            }
                        }));
                    }
                }
            }
            server.endpoints.push(endpoint);
        }
        Ok(server)
    }

    /// The endpoint labelled `label`.
    pub fn endpoint(&self, label: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.label == label)
    }

    /// Waits until every connection a client made so far has been accepted and served to
    /// its end, then returns the records in arrival order and forgets them. A connection
    /// can still wait in a listener's backlog after the client has exited: a marker
    /// connection of this server's own goes to the back of each listener's queue, and
    /// once every marker has been accepted, so has everything before it.
    pub fn take(&self, within: Duration) -> Result<Vec<Record>> {
        let mut markers = 0;
        let mut held = Vec::new();
        let packet = [&8u32.to_be_bytes()[..], &MARKER.to_be_bytes()[..]].concat();
        for e in &self.endpoints {
            if e.behaviour == Behaviour::Down {
                continue;
            }
            use std::io::Write as _;
            match (e.listen, &e.dir) {
                (Listen::Tcp4 | Listen::Tcp6, _) => {
                    let ip = if e.listen == Listen::Tcp4 {
                        "127.0.0.1"
                    } else {
                        "::1"
                    };
                    let mut c = std::net::TcpStream::connect((ip, e.port))?;
                    c.write_all(&packet)?;
                    held.push(Box::new(c) as Box<dyn std::any::Any>);
                }
                (_, Some(dir)) => {
                    let mut c = std::os::unix::net::UnixStream::connect(socket_file(dir, e.port))?;
                    c.write_all(&packet)?;
                    held.push(Box::new(c) as Box<dyn std::any::Any>);
                }
                (_, None) => continue,
            }
            markers += 1;
        }
        let state = self.shared.state.lock().map_err(|_| anyhow!("poisoned"))?;
        let (mut state, timeout) = self
            .shared
            .idle
            .wait_timeout_while(state, within, |s| {
                s.active > 0 || s.records.iter().filter(|r| r.marker).count() < markers
            })
            .map_err(|_| anyhow!("poisoned"))?;
        drop(held);
        if timeout.timed_out() {
            bail!(
                "{} connection(s) still open {within:?} after the client ended",
                state.active
            );
        }
        let mut records = std::mem::take(&mut state.records);
        records.retain(|r| !r.marker);
        Ok(records)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for f in &self.socket_files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// The socket file of a Unix-socket endpoint.
pub fn socket_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

fn serve<S>(stream: S, label: String, behaviour: Behaviour, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let index = {
        let Ok(mut state) = shared.state.lock() else {
            return;
        };
        state.active += 1;
        state.records.push(Record {
            endpoint: label,
            ssl_request: false,
            user: None,
            database: None,
            password: None,
            marker: false,
        });
        state.records.len() - 1
    };
    tokio::spawn(async move {
        let _ = conversation(stream, behaviour, &shared, index).await;
        if let Ok(mut state) = shared.state.lock() {
            state.active -= 1;
        }
        shared.idle.notify_all();
    });
}

fn update(shared: &Shared, index: usize, f: impl FnOnce(&mut Record)) {
    if let Ok(mut state) = shared.state.lock() {
        if let Some(r) = state.records.get_mut(index) {
            f(r);
        }
    }
}

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const PROTOCOL_3: u32 = 196_608;
/// The request code of [`FakeServer::take`]'s marker connections (no client sends it).
const MARKER: u32 = 0x7067_6b6c;

async fn conversation<S>(
    mut s: S,
    behaviour: Behaviour,
    shared: &Shared,
    index: usize,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let params = loop {
        let len = s.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            bail!("bad packet length {len}");
        }
        let code = s.read_u32().await?;
        let mut body = vec![0; len - 8];
        s.read_exact(&mut body).await?;
        match code {
            MARKER => {
                update(shared, index, |r| r.marker = true);
                return Ok(());
            }
            SSL_REQUEST | GSSENC_REQUEST => {
                if code == SSL_REQUEST {
                    update(shared, index, |r| r.ssl_request = true);
                }
                s.write_all(b"N").await?;
            }
            PROTOCOL_3 => break body,
            other => bail!("unexpected startup code {other}"),
        }
    };
    let mut fields = params.split(|b| *b == 0).map(String::from_utf8_lossy);
    let (mut user, mut database) = (None, None);
    while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
        match k.as_ref() {
            "user" => user = Some(v.into_owned()),
            "database" => database = Some(v.into_owned()),
            _ => {}
        }
    }
    update(shared, index, |r| {
        r.user = user.clone();
        r.database = database;
    });
    match behaviour {
        Behaviour::Password => {
            // AuthenticationCleartextPassword.
            s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
            let tag = s.read_u8().await?;
            let len = s.read_u32().await? as usize;
            if tag != b'p' || !(4..=10_000).contains(&len) {
                bail!("expected a password message");
            }
            let mut body = vec![0; len - 4];
            s.read_exact(&mut body).await?;
            let password =
                String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned();
            update(shared, index, |r| r.password = Some(password));
            let message = format!(
                "password authentication failed for user \"{}\"",
                user.as_deref().unwrap_or("")
            );
            s.write_all(&error_response("28P01", &message)).await?;
        }
        Behaviour::StartingUp => {
            s.write_all(&error_response(
                "57P03",
                "the database system is starting up",
            ))
            .await?;
        }
        Behaviour::Down => {}
    }
    s.flush().await?;
    Ok(())
}

fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&u32::try_from(fields.len() + 4).unwrap_or(0).to_be_bytes());
    out.extend(fields);
    out
}

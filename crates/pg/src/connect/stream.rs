//! The socket under a connection, opened by pgkill itself rather than by tokio-postgres:
//! so that the server's OS user can be checked on a Unix socket (`requirepeer`) and the
//! server's startup messages can be read before tokio-postgres answers them
//! (`require_auth`, see [`super::require_auth`]).
//!
//! The watcher must see the messages in plain text: on the socket when there is no TLS,
//! on the decrypted stream when there is (the socket then carries ciphertext after the
//! one-byte `S` answer to the SSLRequest). [`Watched`] wraps either, and [`WatchedTls`]
//! wraps the rustls connector so that the stream it returns is watched too.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

use super::require_auth::{Refusal, StartupScanner};

/// A connected TCP or Unix-domain socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `ip`s (in order, like libpq's address list) or to the Unix socket
/// `dir/.s.PGSQL.port`. The caller bounds the time taken (`connect_timeout`).
pub(crate) async fn connect_tcp(addrs: &[IpAddr], port: u16) -> io::Result<Socket> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    for ip in addrs {
        match TcpStream::connect(SocketAddr::new(*ip, port)).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                // tokio-postgres's default: keepalives on, with the system's timings.
                socket2::SockRef::from(&stream).set_keepalive(true)?;
                return Ok(Socket::Tcp(stream));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The addresses of `host` (an IP address, or a name to look up).
pub(crate) async fn lookup(host: &str, port: u16) -> io::Result<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    Ok(tokio::net::lookup_host((host, port))
        .await?
        .map(|a| a.ip())
        .collect())
}

/// The socket file of a server's Unix socket in `dir`.
pub(crate) fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

/// Connects to the Unix socket `path`.
pub(crate) async fn connect_unix(path: &Path) -> io::Result<Socket> {
    Ok(Socket::Unix(UnixStream::connect(path).await?))
}

/// The OS user the process at the other end of a Unix socket runs as: its name, or
/// `Err(uid)` when the user database has no name for it.
pub(crate) fn peer_user(socket: &Socket) -> io::Result<Option<std::result::Result<String, u32>>> {
    let Socket::Unix(stream) = socket else {
        return Ok(None);
    };
    let uid = stream.peer_cred()?.uid();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    Ok(Some(name.ok_or(uid)))
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A stream whose incoming bytes pass a [`StartupScanner`] first (none: passed through).
/// A refused request fails the read that carries it, so tokio-postgres never sees it.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    scanner: Option<StartupScanner>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, scanner: Option<StartupScanner>) -> Self {
        Watched { inner, scanner }
    }
}

/// The `io::Error` a refused read fails with; [`refusal`] finds it again.
fn refused(r: Refusal) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, r)
}

/// The [`Refusal`] behind an error tokio-postgres reports, if a watcher refused.
pub(crate) fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<Refusal>()) {
                return Some(r);
            }
        }
        current = e.source();
    }
    None
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(r) = this.scanner.as_ref().and_then(StartupScanner::refusal) {
            return Poll::Ready(Err(refused(r)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(scanner) = &mut this.scanner {
            if let Err(r) = scanner.feed(&buf.filled()[before..]) {
                // Take the bytes back: the client must not see (and answer) the request.
                buf.filled_mut()[before..].fill(0);
                buf.set_filled(before);
                return Poll::Ready(Err(refused(r)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Watched<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

/// A TLS connector whose streams are [`Watched`] (the decrypted messages are checked).
#[derive(Debug)]
pub(crate) struct WatchedTls<C> {
    inner: C,
    scanner: Option<StartupScanner>,
}

impl<C> WatchedTls<C> {
    pub(crate) fn new(inner: C, scanner: Option<StartupScanner>) -> Self {
        WatchedTls { inner, scanner }
    }
}

impl<S, C> TlsConnect<S> for WatchedTls<C>
where
    C: TlsConnect<S>,
    C::Future: Unpin,
{
    type Stream = Watched<C::Stream>;
    type Error = C::Error;
    type Future = WatchedTlsFuture<C::Future>;

    fn connect(self, stream: S) -> Self::Future {
        WatchedTlsFuture {
            inner: self.inner.connect(stream),
            scanner: self.scanner,
        }
    }
}

/// The handshake of [`WatchedTls`].
#[derive(Debug)]
pub(crate) struct WatchedTlsFuture<F> {
    inner: F,
    scanner: Option<StartupScanner>,
}

impl<F, T, E> Future for WatchedTlsFuture<F>
where
    F: Future<Output = std::result::Result<T, E>> + Unpin,
{
    type Output = std::result::Result<Watched<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let stream = ready!(Pin::new(&mut this.inner).poll(cx))?;
        Poll::Ready(Ok(Watched::new(stream, this.scanner.take())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::require_auth::RequireAuth;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_refused_request_never_reaches_the_reader() {
        let (mut server, client) = tokio::io::duplex(64);
        let scanner = StartupScanner::new(RequireAuth::parse("scram-sha-256").unwrap(), false);
        let mut watched = Watched::new(client, Some(scanner));
        // AuthenticationCleartextPassword.
        server
            .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let e = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let r = refusal(&e).unwrap();
        assert!(r.reason.contains("cleartext password"), "{r}");
        assert_eq!(buf, [0u8; 16], "nothing was handed over");
        assert!(
            watched.read(&mut buf).await.is_err(),
            "and it stays refused"
        );
    }

    #[tokio::test]
    async fn allowed_messages_pass_unchanged() {
        let (mut server, client) = tokio::io::duplex(64);
        let scanner = StartupScanner::new(RequireAuth::parse("password").unwrap(), false);
        let mut watched = Watched::new(client, Some(scanner));
        let msgs = [b'R', 0, 0, 0, 8, 0, 0, 0, 3, b'R', 0, 0, 0, 8, 0, 0, 0, 0];
        server.write_all(&msgs).await.unwrap();
        let mut buf = [0u8; 18];
        watched.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msgs);
    }
}

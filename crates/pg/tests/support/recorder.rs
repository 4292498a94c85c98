//! A TCP proxy that records every byte clients send to a server (included by the
//! connection tests with `#[path = "support/recorder.rs"] mod recorder;`): to prove what a
//! client did or did not put on the wire (a password, an SSLRequest).
#![allow(dead_code)] // each test binary uses a part

use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP proxy to `port` that records every byte clients send.
pub struct Recorder {
    /// The port the proxy listens on (127.0.0.1).
    pub port: u16,
    /// Everything clients sent, in order.
    pub sent: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a proxy to the server on 127.0.0.1:`port`.
pub async fn recorder(port: u16) -> Result<Recorder> {
    proxy(port, false).await
}

/// Starts a proxy to the server on 127.0.0.1:`port` that removes the `options` parameter
/// from each startup packet, as a pooler with `ignore_startup_parameters = options`
/// does (clients must not use TLS through it: it reads the startup packet in the clear).
pub async fn options_dropper(port: u16) -> Result<Recorder> {
    proxy(port, true).await
}

/// A startup packet (length included) without its `options` parameter.
fn without_options(packet: &[u8]) -> Vec<u8> {
    let mut body = packet[4..8].to_vec();
    let mut parts = packet[8..].split(|b| *b == 0);
    while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
        if key.is_empty() {
            break;
        }
        if key != b"options" {
            for part in [key, value] {
                body.extend_from_slice(part);
                body.push(0);
            }
        }
    }
    body.push(0);
    let mut out = u32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    out
}

async fn proxy(port: u16, drop_options: bool) -> Result<Recorder> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?.port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    if drop_options {
                        let mut len = [0u8; 4];
                        if cr.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let n = u32::from_be_bytes(len) as usize;
                        let mut packet = len.to_vec();
                        packet.resize(n, 0);
                        if cr.read_exact(&mut packet[4..]).await.is_err() {
                            return;
                        }
                        let packet = without_options(&packet);
                        log.lock().unwrap().extend_from_slice(&packet);
                        if sw.write_all(&packet).await.is_err() {
                            return;
                        }
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = cr.read(&mut buf).await {
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(Recorder {
        port: local,
        sent,
        task,
    })
}

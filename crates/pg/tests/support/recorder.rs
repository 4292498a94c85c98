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

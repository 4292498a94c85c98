//! The statement in flight: how long it may run, and what Ctrl-C does to it.
//!
//! A `--query` regular expression can take the server minutes per row (a back-reference
//! pattern against a long query text), and a process that exits does not stop a
//! statement the server is running. So every connection pgkill opens runs under
//! `--statement-timeout` (see `pgkill_pg::exec` for the statement classes), and
//! SIGINT/SIGTERM send a PostgreSQL cancel request (over the connection's TLS settings)
//! for whatever is running before pgkill exits with code 2: the server stops the
//! statement instead of finishing it for nobody. The database commands keep their own
//! handling of both signals (restore the settings, then exit) and cancel the same way.
//!
//! The handlers are installed only once connected, so that Ctrl-C at a password prompt
//! still simply ends pgkill.

use std::future::Future;
use std::time::Duration;

use pgkill_pg::connect;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::args::ConnArgs;
use crate::conn::{self, Connected};
use crate::UsageError;

/// How long sending the cancel request may take before pgkill exits anyway.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// Connects like [`conn::connect`] (whose connections run under `--statement-timeout`
/// from their first statement).
pub async fn connect(args: &ConnArgs, conninfo: Option<&str>) -> anyhow::Result<Connected> {
    conn::connect(args, conninfo).await
}

/// SIGINT and SIGTERM, listened to from the moment this is made.
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts listening (from now on neither signal ends the process by itself).
    pub fn listen() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for either; says which.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupted",
            _ = self.terminate.recv() => "terminated",
        }
    }
}

/// Sends a cancel request for the statement running on `connected`'s connection, if any
/// (nothing happens to an idle connection), waiting at most a few seconds.
pub async fn cancel(connected: &Connected) {
    let token = connected.client.cancel_token();
    match tokio::time::timeout(CANCEL_WAIT, connect::cancel(&connected.settings, &token)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!(
            "pgkill: warning: {}",
            pgkill_core::printable(&format!("could not cancel the running statement: {e}"))
        ),
        Err(_) => eprintln!("pgkill: warning: cancelling the running statement timed out"),
    }
}

/// Runs `work` on `connected`; if SIGINT or SIGTERM comes first, cancels the statement
/// in flight and fails (exit 2).
pub async fn guard<T>(
    connected: &Connected,
    signals: &mut Signals,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        why = signals.recv() => {
            cancel(connected).await;
            Err(UsageError(format!("{why}: the statement in flight, if any, was cancelled on the server")).into())
        }
    }
}

/// What to say about a statement the server cancelled (57014) when pgkill did not ask it
/// to: it ran into the statement timeout (or someone cancelled it).
pub fn timeout_hint(limit: Duration) -> String {
    format!(
        "it ran longer than --statement-timeout {} (or someone cancelled it): raise --statement-timeout (0 = no limit) or narrow the selection",
        pgkill_core::format_duration(limit)
    )
}

/// When `e` is a statement the server cancelled (57014) without pgkill asking it to, the
/// error to report instead: it names the time limit and how to change it.
pub fn timed_out(e: &anyhow::Error, limit: Duration) -> Option<anyhow::Error> {
    let server = e
        .chain()
        .find_map(|c| match c.downcast_ref::<pgkill_pg::Error>() {
            Some(pgkill_pg::Error::Cancelled(pg)) => Some(
                pg.as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| pg.to_string()),
            ),
            _ => None,
        })?;
    Some(
        UsageError(format!(
            "the server cancelled pgkill's statement ({server}): {}",
            timeout_hint(limit)
        ))
        .into(),
    )
}

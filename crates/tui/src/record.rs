//! `pgkill top --record FILE`: each refresh's rows and every action taken, appended as
//! JSON lines (one `write` per line, flushed at once) for a post-mortem of "who was
//! blocking at 03:12". The file is opened by the caller (private, never through a
//! symlink); nothing written comes from a connection string, so no password can appear.

use std::fs::File;
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use pgkill_core::plan::Outcome;
use pgkill_core::planner::Signal;
use pgkill_core::pooler::AppOutcome;
use pgkill_core::Session;
use serde_json::{json, Value};

/// Where `top` records, and who is recording.
#[derive(Debug)]
pub struct Recorder {
    file: File,
    os_user: String,
}

/// Seconds from `since` to `now` (`null` when unknown).
fn age(now: DateTime<Utc>, since: Option<DateTime<Utc>>) -> Option<f64> {
    since.map(|t| (now - t).num_milliseconds() as f64 / 1000.0)
}

/// The client as `ls` names it: an address, `local` for a Unix socket, `null` when hidden.
fn client(s: &Session) -> Option<String> {
    match (s.client_addr, s.client_port) {
        (Some(a), Some(p)) if p >= 0 => Some(format!("{a}:{p}")),
        (Some(a), _) => Some(a.to_string()),
        (None, Some(-1)) => Some("local".into()),
        (None, _) => None,
    }
}

fn row(now: DateTime<Utc>, s: &Session) -> Value {
    json!({
        "pid": s.pid,
        "backend_start": s.backend_start,
        "user": s.user,
        "db": s.database,
        "app": s.application_name,
        "client": client(s),
        "state": s.state,
        "wait": match (&s.wait_event_type, &s.wait_event) {
            (Some(t), Some(e)) => Some(format!("{t}:{e}")),
            (t, e) => t.clone().or_else(|| e.clone()),
        },
        "blocked_by": s.blocked_by,
        "blocking": s.blocking,
        "ages": {
            "backend": age(now, s.backend_start),
            "xact": age(now, s.xact_start),
            "query": age(now, s.query_start),
            "state": age(now, s.state_change),
        },
        "query": s.query,
    })
}

impl Recorder {
    /// Records to `file` (already opened for appending) as `os_user`.
    pub fn new(file: File, os_user: String) -> Recorder {
        Recorder { file, os_user }
    }

    fn line(&mut self, value: &Value) -> io::Result<()> {
        let mut text = serde_json::to_string(value)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }

    /// One line for a refresh: every session read (before the view's filter).
    pub fn refresh(&mut self, sessions: &[Session]) -> io::Result<()> {
        let now = Utc::now();
        self.line(&json!({
            "type": "refresh",
            "time": now,
            "rows": sessions.iter().map(|s| row(now, s)).collect::<Vec<_>>(),
        }))
    }

    /// One line for an action: who (the OS user and the role), which sessions with their
    /// query, the signal, and each session's outcome (or the error).
    pub fn action(
        &mut self,
        role: Option<&str>,
        signal: Signal,
        targets: &[Session],
        result: &Result<(Vec<Outcome>, Vec<AppOutcome>), String>,
    ) -> io::Result<()> {
        let now = Utc::now();
        let (outcomes, error) = match result {
            Ok((outcomes, apps)) => (
                outcomes
                    .iter()
                    .map(|o| {
                        json!({
                            "pid": o.pid,
                            "backend_start": o.backend_start,
                            "outcome": o.outcome.as_str(),
                            "detail": o.detail,
                        })
                    })
                    .chain(apps.iter().map(|a| json!({ "pooled": a })))
                    .collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.as_str())),
        };
        self.line(&json!({
            "type": "action",
            "time": now,
            "os_user": self.os_user,
            "role": role,
            "signal": match signal {
                Signal::Cancel => "cancel",
                Signal::Terminate => "terminate",
            },
            "sessions": targets.iter().map(|s| row(now, s)).collect::<Vec<_>>(),
            "outcomes": outcomes,
            "error": error,
        }))
    }
}

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

/// `value` (an object) with `"target": target` added, when there is a target.
fn on(target: Option<&str>, mut value: Value) -> Value {
    if let (Some(t), Some(map)) = (target, value.as_object_mut()) {
        map.insert("target".into(), Value::from(t));
    }
    value
}

/// `line` with its `"target"` (see [`on`]), in place.
fn on_line<'a>(target: Option<&str>, line: &'a mut Value) -> &'a Value {
    if let (Some(t), Some(map)) = (target, line.as_object_mut()) {
        map.insert("target".into(), Value::from(t));
    }
    line
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

    /// One line for a refresh: every session read (before the view's filter). With
    /// several targets, `target` names the server (the line's and each row's
    /// `"target"`).
    pub fn refresh(&mut self, target: Option<&str>, sessions: &[Session]) -> io::Result<()> {
        let now = Utc::now();
        let mut line = json!({
            "type": "refresh",
            "time": now,
            "rows": sessions.iter().map(|s| on(target, row(now, s))).collect::<Vec<_>>(),
        });
        self.line(on_line(target, &mut line))
    }

    /// One line for an action: who (the OS user and the role), which sessions with their
    /// query, the signal, and each session's outcome (or the error).
    pub fn action(
        &mut self,
        target: Option<&str>,
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
        let mut line = json!({
            "type": "action",
            "time": now,
            "os_user": self.os_user,
            "role": role,
            "signal": match signal {
                Signal::Cancel => "cancel",
                Signal::Terminate => "terminate",
            },
            "sessions": targets.iter().map(|s| on(target, row(now, s))).collect::<Vec<_>>(),
            "outcomes": outcomes.into_iter().map(|o| on(target, o)).collect::<Vec<_>>(),
            "error": error,
        });
        self.line(on_line(target, &mut line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32) -> Session {
        crate::app::tests::session(pid, "shop", "web", "idle", 5)
    }

    #[test]
    fn with_several_targets_every_line_and_row_names_its_server() {
        let path = std::env::temp_dir().join(format!("pgkill-record-{}.jsonl", std::process::id()));
        let file = File::create(&path).unwrap();
        let mut r = Recorder::new(file, "dba".into());
        r.refresh(Some("db-b:5432"), &[session(7), session(8)])
            .unwrap();
        r.refresh(None, &[session(9)]).unwrap();
        r.action(
            Some("db-b:5432"),
            Some("postgres"),
            Signal::Terminate,
            &[session(7)],
            &Ok((
                vec![Outcome {
                    pid: 7,
                    backend_start: None,
                    database: None,
                    user: None,
                    application_name: None,
                    outcome: pgkill_core::plan::OutcomeKind::Terminated,
                    detail: "gone".into(),
                }],
                Vec::new(),
            )),
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["target"], "db-b:5432");
        assert!(lines[0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["target"] == "db-b:5432"));
        // One server: as before, no target anywhere.
        assert!(lines[1].get("target").is_none() && lines[1]["rows"][0].get("target").is_none());
        assert_eq!(lines[2]["target"], "db-b:5432");
        assert_eq!(lines[2]["role"], "postgres");
        assert_eq!(lines[2]["sessions"][0]["target"], "db-b:5432");
        assert_eq!(lines[2]["outcomes"][0]["target"], "db-b:5432");
        assert_eq!(lines[2]["outcomes"][0]["outcome"], "terminated");
    }
}

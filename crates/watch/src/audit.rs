//! The audit log: one JSON line per decision (acted, dry_run, rate_limited, refused,
//! failed), written with one `write` and flushed before the daemon takes its next action
//! (no lossy buffer). To a file given with `--audit` (created private, 0600, never
//! through a symlink: `O_NOFOLLOW`; reopened on SIGHUP for logrotate), else to stdout.
//! Nothing in a line comes from a connection string: no password can appear.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgkill_core::Session;
use serde::Serialize;

/// One decision about one session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// When (UTC).
    pub time: DateTime<Utc>,
    /// The machine the daemon runs on.
    pub host: String,
    /// The daemon's process id.
    pub daemon_pid: u32,
    /// The policy's `name`.
    pub policy: String,
    /// The target's name.
    pub target: String,
    /// The rule's name.
    pub rule: String,
    /// `cancel` or `terminate`.
    pub action: &'static str,
    /// `acted`, `dry_run`, `rate_limited`, `refused` or `failed`.
    pub decision: &'static str,
    /// For `acted`/`failed`: the session's outcome (`terminated`, `cancelled`,
    /// `already_gone`, `not_permitted`, `still_alive`); `null` otherwise.
    pub outcome: Option<&'static str>,
    /// Why, for people.
    pub detail: String,
    /// Whether nothing was signalled because of a dry run (`--dry-run` or the rule's).
    pub dry_run: bool,
    /// Whether this terminate follows a cancel that did not help.
    pub escalation: bool,
    /// The session.
    pub pid: i32,
    /// Its start (with `pid`, its identity).
    pub backend_start: Option<DateTime<Utc>>,
    /// Its role.
    pub user: Option<String>,
    /// Its database.
    pub database: Option<String>,
    /// Its `application_name`.
    pub application: Option<String>,
    /// Its client address (`local` for a Unix socket, `null` when hidden).
    pub client: Option<String>,
    /// Its state.
    pub state: Option<String>,
    /// Seconds since the backend started.
    pub backend_age_s: Option<f64>,
    /// Seconds since its transaction started.
    pub xact_age_s: Option<f64>,
    /// Seconds its statement has been running (only while active).
    pub query_age_s: Option<f64>,
    /// Seconds in its state.
    pub state_age_s: Option<f64>,
    /// What it waits for (`Lock:relation`), `null` when nothing.
    pub wait: Option<String>,
    /// Its query, cut to `audit_query_chars` characters (`null` when hidden).
    pub query: Option<String>,
    /// Whether the query was cut.
    pub query_truncated: bool,
}

/// What every record of one daemon shares.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The machine's host name.
    pub host: String,
    /// The daemon's pid.
    pub pid: u32,
}

impl Origin {
    /// This process on this machine.
    pub fn here() -> Origin {
        Origin {
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
            pid: std::process::id(),
        }
    }
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// The what-and-who of a record; the caller fills in the decision.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    /// The daemon.
    pub origin: &'a Origin,
    /// The policy's name.
    pub policy: &'a str,
    /// The target's name.
    pub target: &'a str,
    /// The rule's name.
    pub rule: &'a str,
    /// `audit_query_chars`.
    pub query_chars: usize,
}

impl Record {
    /// A record of `decision` about `session`.
    pub fn new(
        about: About<'_>,
        session: &Session,
        action: &'static str,
        decision: &'static str,
        outcome: Option<&'static str>,
        detail: impl Into<String>,
    ) -> Record {
        let (query, query_truncated) = match session.visible_query() {
            Some(q) if q.chars().count() > about.query_chars => {
                (Some(q.chars().take(about.query_chars).collect()), true)
            }
            Some(q) => (Some(q.to_owned()), false),
            None => (None, false),
        };
        let wait = match (&session.wait_event_type, &session.wait_event) {
            (Some(t), Some(e)) => Some(format!("{t}:{e}")),
            _ => None,
        };
        let client = match session.client_text().as_str() {
            "?" => None,
            c => Some(c.to_owned()),
        };
        Record {
            time: Utc::now(),
            host: about.origin.host.clone(),
            daemon_pid: about.origin.pid,
            policy: about.policy.to_owned(),
            target: about.target.to_owned(),
            rule: about.rule.to_owned(),
            action,
            decision,
            outcome,
            detail: detail.into(),
            dry_run: decision == "dry_run",
            escalation: false,
            pid: session.pid,
            backend_start: session.backend_start,
            user: session.user.clone(),
            database: session.database.clone(),
            application: session.application_name.clone(),
            client,
            state: session.state.clone(),
            backend_age_s: secs(session.backend_age()),
            xact_age_s: secs(session.xact_age()),
            query_age_s: secs(session.query_age()),
            state_age_s: secs(session.state_age()),
            wait,
            query,
            query_truncated,
        }
    }
}

enum Sink {
    Stdout,
    File(File),
}

/// Where the lines go; shared by every target's task.
pub struct Audit {
    path: Option<PathBuf>,
    sink: Mutex<Sink>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").field("path", &self.path).finish()
    }
}

/// Opens `path` for appending: created 0600 if missing, refused if it is a symlink
/// (`O_NOFOLLOW`) or not a regular file. Also `top --record`'s file.
pub fn open_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::new(
                    e.kind(),
                    format!("{} is a symbolic link: refused", path.display()),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            "audit log {} is readable or writable by others (mode {:o}); the daemon keeps appending to it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    Ok(file)
}

impl Audit {
    /// The audit log at `path`, or stdout.
    pub fn open(path: Option<&Path>) -> io::Result<Audit> {
        let sink = match path {
            Some(p) => Sink::File(open_private(p)?),
            None => Sink::Stdout,
        };
        Ok(Audit {
            path: path.map(Path::to_path_buf),
            sink: Mutex::new(sink),
        })
    }

    /// Opens the file again (after logrotate moved it away); stdout stays stdout.
    pub fn reopen(&self) -> io::Result<()> {
        if let Some(p) = &self.path {
            let file = open_private(p)?;
            let mut sink = self.sink.lock().map_err(|_| io::Error::other("poisoned"))?;
            *sink = Sink::File(file);
        }
        Ok(())
    }

    /// Writes one record as one line and flushes it.
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut sink = self.sink.lock().map_err(|_| io::Error::other("poisoned"))?;
        match &mut *sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            Sink::File(f) => {
                f.write_all(&line)?;
                f.flush()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn record() -> Record {
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let session = Session {
            pid: 7,
            backend_start: Some(at),
            database: Some("shop".into()),
            user: Some("app".into()),
            application_name: Some("web".into()),
            client_addr: None,
            client_hostname: None,
            client_port: Some(-1),
            state: Some("idle in transaction".into()),
            wait_event_type: Some("Client".into()),
            wait_event: Some("ClientRead".into()),
            backend_type: Some("client backend".into()),
            xact_start: Some(at),
            query_start: Some(at),
            state_change: Some(at),
            query: Some("SELECT 'ééééé'".into()),
            leader_pid: None,
            superuser: Some(false),
            blocked_by: vec![],
            blocking: 0,
            xmin_age: None,
            holds_xmin: false,
            waited_on_since: None,
            can_signal: true,
            pooler: None,
            now: at + chrono::Duration::milliseconds(90_500),
        };
        let origin = Origin {
            host: "h".into(),
            pid: 1,
        };
        Record::new(
            About {
                origin: &origin,
                policy: "p",
                target: "t",
                rule: "r",
                query_chars: 10,
            },
            &session,
            "terminate",
            "dry_run",
            None,
            "would terminate",
        )
    }

    #[test]
    fn records_carry_the_fields() {
        let v = serde_json::to_value(record()).unwrap();
        assert_eq!(v["decision"], "dry_run");
        assert_eq!(v["dry_run"], true);
        assert_eq!(v["client"], "local");
        assert_eq!(v["wait"], "Client:ClientRead");
        assert_eq!(v["state_age_s"], 90.5);
        assert_eq!(v["query_age_s"], serde_json::Value::Null);
        // Cut by characters, not bytes.
        assert_eq!(v["query"], "SELECT 'éé");
        assert_eq!(v["query_truncated"], true);
        for k in [
            "time",
            "host",
            "daemon_pid",
            "target",
            "rule",
            "action",
            "pid",
            "backend_start",
            "user",
            "database",
            "application",
        ] {
            assert!(!v[k].is_null(), "{k} missing: {v}");
        }
    }

    #[test]
    fn the_file_is_private_and_never_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(Some(&path)).unwrap();
        audit.write(&record()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // logrotate moves it away; SIGHUP reopens a new one.
        std::fs::rename(&path, dir.path().join("audit.log.1")).unwrap();
        audit.reopen().unwrap();
        audit.write(&record()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &link).unwrap();
        let e = Audit::open(Some(&link)).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!dir.path().join("elsewhere").exists());
    }
}

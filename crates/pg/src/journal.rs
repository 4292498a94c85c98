//! The durable record of fences: one JSON file per fenced database, written and fsynced
//! before pgkill changes the database, removed once its settings are restored (or the
//! database is gone). If pgkill dies meanwhile, the record says what to restore.
//!
//! Location: `$PGKILL_STATE_DIR`, else `$XDG_STATE_HOME/pgkill/fences`, else
//! `~/.local/state/pgkill/fences`.

use std::io::Write;
use std::path::{Path, PathBuf};

use pgkill_core::database::FenceRecord;

/// A failure reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// No place for the journal could be found.
    #[error(
        "cannot find a state directory for pgkill's fence journal: set PGKILL_STATE_DIR or HOME"
    )]
    NoDirectory,
    /// A file operation failed.
    #[error("fence journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record could not be read.
    #[error("fence journal {path}: unreadable record: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The fence journal directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal at its default place (see the module docs).
    pub fn open_default() -> Result<Journal, JournalError> {
        let dir = match std::env::var_os("PGKILL_STATE_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d).join("pgkill").join("fences"),
                None => PathBuf::from(std::env::var_os("HOME").ok_or(JournalError::NoDirectory)?)
                    .join(".local/state/pgkill/fences"),
            },
        };
        Ok(Journal { dir })
    }

    /// A journal in `dir` (tests).
    pub fn at(dir: impl Into<PathBuf>) -> Journal {
        Journal { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, record: &FenceRecord) -> PathBuf {
        let server: String = record
            .server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{server}-{}.json", record.oid))
    }

    /// Writes `record` durably: to a temporary file, fsynced, renamed into place, and the
    /// directory fsynced, so that after a crash the record is either whole or absent.
    pub fn write(&self, record: &FenceRecord) -> Result<PathBuf, JournalError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.path_of(record);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|source| JournalError::Corrupt {
            path: path.clone(),
            source,
        })?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(&text).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(path)
    }

    /// Removes the record (durably). Removing a missing record is not an error.
    pub fn remove(&self, record: &FenceRecord) -> Result<(), JournalError> {
        let path = self.path_of(record);
        match std::fs::remove_file(&path) {
            Ok(()) => std::fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every record in the journal.
    pub fn records(&self) -> Result<Vec<FenceRecord>, JournalError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io(&self.dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(io(&path))?;
            out.push(
                serde_json::from_slice(&text).map_err(|source| JournalError::Corrupt {
                    path: path.clone(),
                    source,
                })?,
            );
        }
        out.sort_by_key(|r: &FenceRecord| r.at);
        Ok(out)
    }

    /// Records of `server` whose pgkill process is gone.
    pub fn stale(&self, server: &str) -> Result<Vec<FenceRecord>, JournalError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|r| r.server == server && !process_alive(r.pid))
            .collect())
    }
}

/// Whether a process exists (a pgkill that still holds its fence).
pub fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgkill_core::database::{DbSettings, Operation};

    fn record(oid: u32, pid: u32) -> FenceRecord {
        let s = DbSettings {
            allow_connections: true,
            connection_limit: -1,
            acl: None,
            is_template: false,
        };
        FenceRecord {
            server: "127.0.0.1:5432".into(),
            system_identifier: None,
            oid,
            name: "shop".into(),
            original: s.clone(),
            fenced: DbSettings {
                allow_connections: false,
                ..s
            },
            operation: Operation::Drop,
            pid,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::at(dir.path().join("fences"));
        assert!(j.records().unwrap().is_empty());
        let r = record(42, std::process::id());
        let path = j.write(&r).unwrap();
        assert!(path.ends_with("127.0.0.1_5432-42.json"));
        assert_eq!(j.records().unwrap(), vec![r.clone()]);
        assert!(
            j.stale("127.0.0.1:5432").unwrap().is_empty(),
            "our own record is not stale"
        );
        let dead = record(43, u32::MAX - 1);
        j.write(&dead).unwrap();
        assert_eq!(j.stale("127.0.0.1:5432").unwrap(), vec![dead.clone()]);
        assert!(j.stale("other:1").unwrap().is_empty());
        j.remove(&r).unwrap();
        j.remove(&r).unwrap();
        assert_eq!(j.records().unwrap(), vec![dead]);
    }
}

//! Fence records left on disk by older pgkill versions, which kept one JSON file per fenced
//! database in a local state directory (`$PGKILL_STATE_DIR`, else
//! `$XDG_STATE_HOME/pgkill/fences`, else `~/.local/state/pgkill/fences`). pgkill now keeps
//! the record on the server (see [`pgkill_core::fence`]) and writes no local file; this
//! module only reads the old files so that `unfence` can adopt them.
//!
//! The directory and its files are read with suspicion, since a state directory may be
//! one another user can write to (`sudo -E` with a user's `XDG_STATE_HOME`): a directory
//! that is a symlink, not owned by the effective user, or writable by group or others is
//! ignored; files are opened without following symlinks, must be regular files owned by
//! the effective user, and an unreadable one is reported by name and skipped, never a
//! reason to stop.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use pgkill_core::database::{DbSettings, Operation};
use serde::Deserialize;

/// The largest record file read (a real one is well under 1 KiB).
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// A record as older pgkill versions wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LegacyRecord {
    /// Which server: `host:port` as pgkill connected.
    pub server: String,
    /// The server's `system_identifier`, when it could be read.
    pub system_identifier: Option<String>,
    /// Database OID.
    pub oid: u32,
    /// Database name when fenced.
    pub name: String,
    /// What the database's settings were.
    pub original: DbSettings,
    /// What pgkill set.
    pub fenced: DbSettings,
    /// The operation in progress.
    pub operation: Operation,
    /// The pgkill process that held the fence.
    pub pid: u32,
    /// When it was fenced.
    pub at: DateTime<Utc>,
}

/// What a look at the old journal found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Readable records, with their files.
    pub records: Vec<(PathBuf, LegacyRecord)>,
    /// What was ignored and why (one line each, naming the file or directory).
    pub skipped: Vec<String>,
}

/// The old journal's directory.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// The journal at its default place (see the module docs), if one can be named.
    pub fn open_default() -> Option<Journal> {
        let dir = match std::env::var_os("PGKILL_STATE_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d),
            None => match std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
                Some(d) => PathBuf::from(d).join("pgkill").join("fences"),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state/pgkill/fences"),
            },
        };
        Some(Journal { dir })
    }

    /// A journal in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Journal {
        Journal { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every record that can be trusted (see the module docs).
    pub fn scan(&self) -> Scan {
        let mut scan = Scan::default();
        let dir = self.dir.display();
        let meta = match std::fs::symlink_metadata(&self.dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return scan,
            Err(e) => {
                scan.skipped
                    .push(format!("fence journal directory {dir}: {e}"));
                return scan;
            }
        };
        let euid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() {
            scan.skipped.push(format!(
                "ignoring fence journal {dir}: not a directory (a symlink?)"
            ));
            return scan;
        }
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            scan.skipped.push(format!(
                "ignoring fence journal directory {dir}: it must be owned by you (uid {euid}) and writable by nobody else (it is uid {}, mode {:o})",
                meta.uid(),
                meta.mode() & 0o7777
            ));
            return scan;
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                scan.skipped
                    .push(format!("fence journal directory {dir}: {e}"));
                return scan;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("json"))
            .collect();
        paths.sort();
        for path in paths {
            match read_record(&path, euid) {
                Ok(r) => scan.records.push((path, r)),
                Err(why) => scan.skipped.push(format!(
                    "skipping fence journal file {}: {why}",
                    path.display()
                )),
            }
        }
        scan
    }

    /// Removes a record file once its fence is on the server or restored. Removing a
    /// missing file is not an error (`unlink` removes a symlink itself, never its target).
    pub fn remove(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn read_record(path: &Path, euid: u32) -> Result<LegacyRecord, String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nofollow())
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.uid() != euid {
        return Err(format!("not a regular file owned by uid {euid}"));
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(format!("larger than {MAX_RECORD_BYTES} bytes"));
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text).map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("unreadable record: {e}"))
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const RECORD: &str = r#"{"server":"127.0.0.1:5432","system_identifier":"7","oid":42,"name":"shop",
      "original":{"allow_connections":true,"connection_limit":-1,"acl":null,"is_template":false},
      "fenced":{"allow_connections":false,"connection_limit":-1,"acl":null,"is_template":false},
      "operation":"drain","pid":1,"at":"2026-01-01T00:00:00Z"}"#;

    fn private_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn reads_records_and_skips_junk_by_name() {
        let d = private_dir();
        std::fs::write(d.path().join("a.json"), RECORD).unwrap();
        std::fs::write(d.path().join("junk.json"), "{not json").unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link.json")).unwrap();
        let scan = Journal::at(d.path()).scan();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.records[0].1.oid, 42);
        assert_eq!(scan.skipped.len(), 2, "{:?}", scan.skipped);
        assert!(scan.skipped.iter().any(|s| s.contains("junk.json")));
        assert!(scan.skipped.iter().any(|s| s.contains("link.json")));
    }

    #[test]
    fn a_directory_others_can_write_is_ignored() {
        let d = private_dir();
        std::fs::write(d.path().join("a.json"), RECORD).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let scan = Journal::at(d.path()).scan();
        assert!(scan.records.is_empty());
        assert!(
            scan.skipped[0].contains("writable by nobody else"),
            "{scan:?}"
        );
        let link = d.path().join("link");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        let scan = Journal::at(&link).scan();
        assert!(scan.records.is_empty() && scan.skipped[0].contains("not a directory"));
        assert!(Journal::at(d.path().join("missing"))
            .scan()
            .skipped
            .is_empty());
    }
}

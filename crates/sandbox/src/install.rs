//! Finding PostgreSQL server binaries and their major versions.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pgkill_core::ServerVersion;

use crate::{Error, Result};

/// Where an installation was found, in search order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `$PGKILL_PG_BIN` (one directory, or several separated by `:`).
    Explicit,
    /// The project's cache filled by `scripts/fetch-postgres` (`$PGKILL_PG_CACHE`).
    ProjectCache,
    /// The distribution's `/usr/lib/postgresql/*/bin`.
    System,
    /// A directory on `PATH`.
    Path,
}

/// One set of PostgreSQL server binaries (`postgres`, `initdb`) of a known version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The server version, read from `postgres --version`.
    pub version: ServerVersion,
    /// Directory holding `postgres` and `initdb`.
    pub bin_dir: PathBuf,
    /// Where it was found.
    pub source: Source,
}

impl fmt::Display for Installation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PostgreSQL {} ({})",
            self.version,
            self.bin_dir.display()
        )
    }
}

/// The project's cache of fetched server binaries: `$PGKILL_PG_CACHE`, or `.cache/postgres`
/// at the root of the source tree this crate was built from.
pub fn project_cache_dir() -> PathBuf {
    match std::env::var_os("PGKILL_PG_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/postgres"),
    }
}

impl Installation {
    /// Every usable installation, one per major version (the first found in search order:
    /// explicit, project cache, system, `PATH`), sorted by version.
    pub fn discover() -> Vec<Installation> {
        let mut by_major: BTreeMap<u32, Installation> = BTreeMap::new();
        for (source, dir) in candidate_dirs() {
            if by_major.values().any(|i| same_dir(&i.bin_dir, &dir)) {
                continue;
            }
            if let Some(inst) = Installation::probe(&dir, source) {
                if inst.version.is_supported() {
                    by_major.entry(inst.version.major).or_insert(inst);
                }
            }
        }
        by_major.into_values().collect()
    }

    /// The installation of one major version.
    pub fn for_major(major: u32) -> Result<Installation> {
        Installation::discover()
            .into_iter()
            .find(|i| i.version.major == major)
            .ok_or_else(|| Error::MissingVersion {
                major,
                cache: project_cache_dir().display().to_string(),
            })
    }

    /// The newest installation available.
    pub fn newest() -> Result<Installation> {
        Installation::discover()
            .pop()
            .ok_or_else(|| Error::NoServer {
                cache: project_cache_dir().display().to_string(),
            })
    }

    /// Reads the version of the binaries in `dir`, if it holds a working `postgres` and `initdb`.
    pub fn probe(dir: &Path, source: Source) -> Option<Installation> {
        let postgres = dir.join("postgres");
        if !postgres.is_file() || !dir.join("initdb").is_file() {
            return None;
        }
        let out = Command::new(&postgres).arg("--version").output().ok()?;
        if !out.status.success() {
            tracing::debug!(dir = %dir.display(), "postgres --version failed");
            return None;
        }
        let version = ServerVersion::parse_text(&String::from_utf8_lossy(&out.stdout)).ok()?;
        Some(Installation {
            version,
            bin_dir: dir.to_path_buf(),
            source,
        })
    }

    /// Path of one of this installation's programs.
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Directories to look in, in search order.
fn candidate_dirs() -> Vec<(Source, PathBuf)> {
    let mut dirs = Vec::new();
    if let Some(explicit) = std::env::var_os("PGKILL_PG_BIN") {
        dirs.extend(std::env::split_paths(&explicit).map(|d| (Source::Explicit, d)));
    }
    let cache = project_cache_dir();
    dirs.extend(
        sorted_subdirs(&cache)
            .into_iter()
            .map(|d| (Source::ProjectCache, d.join("bin"))),
    );
    dirs.extend(
        sorted_subdirs(Path::new("/usr/lib/postgresql"))
            .into_iter()
            .map(|d| (Source::System, d.join("bin"))),
    );
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path).map(|d| (Source::Path, d)));
    }
    dirs
}

fn sorted_subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    dirs
}

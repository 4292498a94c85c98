//! What resolving connection settings reads from the machine: environment variables,
//! the OS user, the home directory and a few files (`.pgpass`, `pg_service.conf`, the
//! TLS root certificate). Behind a trait so the precedence rules are tested with a fake.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

/// What [`Env::file_info`] reports about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// A regular file (after following symbolic links).
    pub is_file: bool,
    /// A directory (after following symbolic links).
    pub is_dir: bool,
    /// The Unix permission bits (e.g. `0o600`).
    pub mode: u32,
}

/// The machine as connection settings see it.
pub trait Env {
    /// An environment variable (`None` when unset or not valid UTF-8).
    fn var(&self, name: &str) -> Option<String>;
    /// The home directory (`~`), where `.pgpass`, `.pg_service.conf` and
    /// `.postgresql/root.crt` live.
    fn home_dir(&self) -> Option<PathBuf>;
    /// The name of the OS user running pgkill: the default PostgreSQL user, as in libpq.
    fn os_user(&self) -> Option<String>;
    /// The whole contents of a file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Type and permissions of a path.
    fn file_info(&self, path: &Path) -> io::Result<FileInfo>;
    /// The entries of a directory (`sslcrldir`), as full paths in no particular order.
    /// The default lists the real file system.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect()
    }
}

/// The real environment, files and user of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnv;

impl Env for SystemEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    /// `$HOME` when set, else the user's home from the password database (like libpq).
    fn home_dir(&self) -> Option<PathBuf> {
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            return Some(PathBuf::from(home));
        }
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    }

    /// The effective user's name from the password database (libpq does the same; it does
    /// not look at `$USER`).
    fn os_user(&self) -> Option<String> {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn file_info(&self, path: &Path) -> io::Result<FileInfo> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)?;
        Ok(FileInfo {
            is_file: meta.is_file(),
            is_dir: meta.is_dir(),
            mode: meta.permissions().mode() & 0o7777,
        })
    }
}

/// An environment held in memory, for tests (here and in front-ends): variables, a home
/// directory, a user name, files with modes and directories, or the real file system
/// ([`MemoryEnv::real_files`]).
#[derive(Debug, Clone, Default)]
pub struct MemoryEnv {
    vars: BTreeMap<String, String>,
    home: Option<PathBuf>,
    user: Option<String>,
    files: BTreeMap<PathBuf, (Vec<u8>, u32)>,
    dirs: Vec<PathBuf>,
    real_files: bool,
}

impl MemoryEnv {
    /// An empty environment: no variables, no files, no home, no user.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets an environment variable.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_owned(), value.to_owned());
        self
    }
    /// Sets the home directory.
    pub fn home(mut self, dir: impl Into<PathBuf>) -> Self {
        self.home = Some(dir.into());
        self
    }
    /// Sets the OS user name.
    pub fn user(mut self, name: &str) -> Self {
        self.user = Some(name.to_owned());
        self
    }
    /// Adds a regular file with contents and Unix mode.
    pub fn file(
        mut self,
        path: impl Into<PathBuf>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Self {
        self.files.insert(path.into(), (contents.into(), mode));
        self
    }
    /// Adds a directory.
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.dirs.push(path.into());
        self
    }
    /// Reads files and directories from the real file system instead (variables, home
    /// and user stay in memory): for tests with files a server must read too.
    pub fn real_files(mut self) -> Self {
        self.real_files = true;
        self
    }
}

impl Env for MemoryEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }
    fn home_dir(&self) -> Option<PathBuf> {
        self.home.clone()
    }
    fn os_user(&self) -> Option<String> {
        self.user.clone()
    }
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        if self.real_files {
            return SystemEnv.read_file(path);
        }
        match self.files.get(path) {
            Some((contents, _)) => Ok(contents.clone()),
            None if self.dirs.iter().any(|d| d == path) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a directory",
            )),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
        }
    }
    fn file_info(&self, path: &Path) -> io::Result<FileInfo> {
        if self.real_files {
            return SystemEnv.file_info(path);
        }
        if let Some((_, mode)) = self.files.get(path) {
            return Ok(FileInfo {
                is_file: true,
                is_dir: false,
                mode: *mode,
            });
        }
        if self.dirs.iter().any(|d| d == path) {
            return Ok(FileInfo {
                is_file: false,
                is_dir: true,
                mode: 0o755,
            });
        }
        Err(io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        if self.real_files {
            return SystemEnv.list_dir(path);
        }
        if !self.dirs.iter().any(|d| d == path) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(self
            .files
            .keys()
            .chain(&self.dirs)
            .filter(|p| p.parent() == Some(path))
            .cloned()
            .collect())
    }
}

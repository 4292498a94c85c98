//! Running server programs as an unprivileged OS user when we are root.
//!
//! PostgreSQL refuses to run as root, and CI runs as root. Then `initdb` and `postgres`
//! run as the OS user `postgres` (or `$PGKILL_SANDBOX_USER`); when no such user exists,
//! a system user `pgkill-sandbox` is created once.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::unistd::{Gid, Uid, User};

use crate::{Error, Result};

const FALLBACK_USER: &str = "pgkill-sandbox";

/// Who runs the server programs.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    /// `None` when we are not root and simply run them as ourselves.
    user: Option<(Uid, Gid, String)>,
}

impl RunAs {
    /// Works out who runs the servers, creating the fallback user if needed.
    pub(crate) fn detect() -> Result<RunAs> {
        if !Uid::effective().is_root() {
            return Ok(RunAs { user: None });
        }
        let wanted = std::env::var("PGKILL_SANDBOX_USER")
            .ok()
            .filter(|u| !u.is_empty());
        let names: Vec<String> = match &wanted {
            Some(name) => vec![name.clone()],
            None => vec!["postgres".to_owned(), FALLBACK_USER.to_owned()],
        };
        for name in &names {
            if let Some(user) = lookup(name)? {
                return Ok(RunAs { user: Some(user) });
            }
        }
        if wanted.is_some() {
            return Err(Error::RunAs(format!(
                "PGKILL_SANDBOX_USER={} does not exist",
                names[0]
            )));
        }
        let status = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                FALLBACK_USER,
            ])
            .status()
            .map_err(|e| Error::RunAs(format!("useradd {FALLBACK_USER}: {e}")))?;
        if !status.success() {
            return Err(Error::RunAs(format!(
                "useradd {FALLBACK_USER} exited with {status}"
            )));
        }
        lookup(FALLBACK_USER)?
            .map(|user| RunAs { user: Some(user) })
            .ok_or_else(|| Error::RunAs(format!("created {FALLBACK_USER} but cannot find it")))
    }

    /// Makes `cmd` run as this user.
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid, name)) = &self.user {
            cmd.uid(uid.as_raw())
                .gid(gid.as_raw())
                .env("USER", name)
                .env("LOGNAME", name);
        }
    }

    /// Gives `path` (and everything below it) to this user.
    pub(crate) fn chown_tree(&self, path: &Path) -> Result<()> {
        let Some((uid, gid, _)) = &self.user else {
            return Ok(());
        };
        chown_recursive(path, uid.as_raw(), gid.as_raw())
    }

    /// The uid the server programs run as (ours when we are not root).
    pub(crate) fn uid(&self) -> u32 {
        match &self.user {
            Some((uid, _, _)) => uid.as_raw(),
            None => Uid::effective().as_raw(),
        }
    }

    /// The OS user name, for messages.
    pub(crate) fn describe(&self) -> String {
        match &self.user {
            Some((_, _, name)) => format!("OS user {name}"),
            None => "the current OS user".to_owned(),
        }
    }
}

fn lookup(name: &str) -> Result<Option<(Uid, Gid, String)>> {
    let user =
        User::from_name(name).map_err(|e| Error::RunAs(format!("looking up {name}: {e}")))?;
    Ok(user.map(|u| (u.uid, u.gid, u.name)))
}

fn chown_recursive(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(Error::io("chown", path))?;
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("stat", path))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(Error::io("read directory", path))? {
            let entry = entry.map_err(Error::io("read directory", path))?;
            chown_recursive(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

//! A cached, freshly `initdb`-ed data directory per server version.
//!
//! `initdb` costs around a second; copying its result costs a few tens of milliseconds.
//! The first sandbox of a version builds the template (initdb, then the sandbox roles in
//! single-user mode) in a private staging directory, copies it into the cache and renames
//! it into place, so concurrent test processes never see a half-built template; every
//! later sandbox copies it.
//!
//! The cache and every template in it belong to the effective user and are private
//! (0700): a template is what every later sandbox trusts, so nobody else may change it,
//! not even the unprivileged OS user that runs the servers when we are root (it builds
//! the template in a directory of its own, which is then copied).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::runas::RunAs;
use crate::{roles, Error, Installation, Result};

/// Bump when the template's contents change, so that old caches are not reused.
const TEMPLATE_REV: u32 = 2;

/// Where templates are kept: `$PGKILL_SANDBOX_CACHE`, or a per-user directory in the
/// system temp directory; either way a directory of the effective user's, mode 0700.
fn cache_root() -> Result<PathBuf> {
    let dir = match std::env::var_os("PGKILL_SANDBOX_CACHE").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let euid = nix::unistd::Uid::effective().as_raw();
            std::env::temp_dir().join(format!("pgkill-sandbox-cache-{euid}"))
        }
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create", &dir)(e)),
    }
    private_dir(&dir, "remove it or set PGKILL_SANDBOX_CACHE")?;
    Ok(dir)
}

/// Checks that `dir` is a real directory (not a symlink) owned by the effective user, and
/// makes it private (0700) if it is not yet (caches made by older versions were 0755).
pub(crate) fn private_dir(dir: &Path, advice: &str) -> Result<()> {
    let euid = nix::unistd::Uid::effective().as_raw();
    let meta = std::fs::symlink_metadata(dir).map_err(Error::io("stat", dir))?;
    if !meta.is_dir() || meta.uid() != euid {
        return Err(Error::Unsafe {
            path: dir.to_path_buf(),
            reason: format!("not a directory owned by uid {euid}; {advice}"),
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io("chmod 0700", dir))?;
    }
    Ok(())
}

fn template_key(inst: &Installation) -> Result<String> {
    let mut h = DefaultHasher::new();
    TEMPLATE_REV.hash(&mut h);
    inst.bin_dir.hash(&mut h);
    roles::template_sql()?.hash(&mut h);
    Ok(format!("{}-{:016x}", inst.version, h.finish()))
}

/// Returns the template data directory for `inst`, building it first if needed, and how
/// long the build took (`None` when it was already cached).
pub(crate) fn ensure(inst: &Installation, run_as: &RunAs) -> Result<(PathBuf, Option<Duration>)> {
    let root = cache_root()?;
    let target = root.join(template_key(inst)?);
    if target.join("PG_VERSION").is_file() {
        return Ok((target, None));
    }
    let started = Instant::now();
    // initdb runs as the server's OS user, in a private directory of that user's.
    let build = tempfile::Builder::new()
        .prefix("pgkill-sandbox-initdb-")
        .tempdir_in(crate::server::sandbox_root())
        .map_err(Error::io(
            "create build directory in",
            crate::server::sandbox_root(),
        ))?;
    run_as.chown_tree(build.path())?;
    let data = build.path().join("data");

    let mut initdb = Command::new(inst.program("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            roles::ADMIN,
            "--no-locale",
            "-E",
            "UTF8",
            // Every sandbox writes its own pg_hba.conf; the template lets nobody in.
            "-A",
            "reject",
            "--no-sync",
        ])
        .current_dir(build.path());
    run(run_as, initdb, None, "initdb")?;

    let mut single = Command::new(inst.program("postgres"));
    single
        .arg("--single")
        .arg("-D")
        .arg(&data)
        .args(["-F", "-c", "log_min_messages=warning", "postgres"])
        .current_dir(build.path());
    let output = run(
        run_as,
        single,
        Some(roles::template_sql()?),
        "postgres --single",
    )?;
    if output.contains("ERROR:") || output.contains("FATAL:") {
        return Err(Error::Program {
            program: "postgres --single".into(),
            detail: output,
        });
    }

    // Copied (not moved) into the cache, so that the template belongs to us.
    let staging = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(&root)
        .map_err(Error::io("create staging directory in", &root))?;
    let copy = staging.path().join("data");
    copy_data_dir(&data, &copy)?;
    match std::fs::rename(&copy, &target) {
        Ok(()) => {}
        // Another process finished first; use its template and drop ours with `staging`.
        Err(_) if target.join("PG_VERSION").is_file() => {}
        Err(e) => return Err(Error::io("move template to", &target)(e)),
    }
    Ok((target, Some(started.elapsed())))
}

/// Runs a server program as `run_as`, feeding `stdin`, and returns its combined output.
fn run(run_as: &RunAs, mut cmd: Command, stdin: Option<String>, name: &str) -> Result<String> {
    run_as.apply(&mut cmd);
    cmd.env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fail = |detail: String| Error::Program {
        program: name.to_owned(),
        detail,
    };
    let mut child = cmd.spawn().map_err(|e| {
        fail(format!(
            "cannot run {}: {e} (it must be executable by {})",
            cmd.get_program().to_string_lossy(),
            run_as.describe()
        ))
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing its input: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(fail(format!("exited with {}:\n{text}", out.status)));
    }
    Ok(text)
}

/// Copies the template data directory to `dest`, keeping permissions (PostgreSQL
/// insists on a data directory of mode 0700 or 0750).
pub(crate) fn copy_data_dir(src: &Path, dest: &Path) -> Result<()> {
    let meta = std::fs::metadata(src).map_err(Error::io("stat", src))?;
    std::fs::DirBuilder::new()
        .mode(meta.mode() & 0o777)
        .create(dest)
        .map_err(Error::io("create", dest))?;
    for entry in std::fs::read_dir(src).map_err(Error::io("read directory", src))? {
        let entry = entry.map_err(Error::io("read directory", src))?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let kind = entry.file_type().map_err(Error::io("stat", &from))?;
        if kind.is_dir() {
            copy_data_dir(&from, &to)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&from).map_err(Error::io("read link", &from))?;
            std::os::unix::fs::symlink(&link, &to).map_err(Error::io("create link", &to))?;
        } else {
            std::fs::copy(&from, &to).map_err(Error::io("copy to", &to))?;
        }
    }
    Ok(())
}

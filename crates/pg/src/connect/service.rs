//! Connection service files (`pg_service.conf`), as libpq reads them.
//!
//! A service is picked with `service=NAME` in the connection string or `PGSERVICE`. It is
//! looked up in the user's file (`servicefile=`/`PGSERVICEFILE`, else
//! `~/.pg_service.conf`) and then in the system-wide one
//! (`$PGSYSCONFDIR/pg_service.conf`, else `/etc/postgresql-common/pg_service.conf`, where
//! Debian's and Ubuntu's libpq look); the first file that has the service wins. Its
//! settings rank below the connection string and above the `PG*` variables.

use std::io;
use std::path::{Path, PathBuf};

use super::conninfo::{self, Params};
use super::env::Env;
use super::error::{ConnectError, Result};

/// Where the system-wide service file is when `PGSYSCONFDIR` is not set.
pub(crate) const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The files to search for a service, in order.
pub(crate) fn candidate_files(servicefile: Option<&str>, env: &dyn Env) -> Vec<PathBuf> {
    let mut files = Vec::new();
    match servicefile {
        Some(f) => files.push(PathBuf::from(f)),
        None => {
            if let Some(home) = env.home_dir() {
                files.push(home.join(".pg_service.conf"));
            }
        }
    }
    let sysconfdir = env
        .var("PGSYSCONFDIR")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| DEFAULT_SYSCONFDIR.to_owned());
    files.push(Path::new(&sysconfdir).join("pg_service.conf"));
    files
}

/// Finds service `name`: the file it came from and its settings.
pub(crate) fn find(
    name: &str,
    servicefile: Option<&str>,
    env: &dyn Env,
) -> Result<(PathBuf, Params)> {
    let searched = candidate_files(servicefile, env);
    for path in &searched {
        let bytes = match env.read_file(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(ConnectError::ServiceFileUnreadable {
                    path: path.clone(),
                    source,
                })
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        if let Some(params) = parse(&text, name, path)? {
            return Ok((path.clone(), params));
        }
    }
    Err(ConnectError::ServiceNotFound {
        name: name.to_owned(),
        searched,
    })
}

/// The settings of section `[name]` in a service file's text, or `None` when the file
/// has no such section. As libpq's `parseServiceFile`: each line is trimmed; empty lines
/// and lines starting with `#` are skipped; a line starting with `[` opens a section, and
/// it is `name`'s when `[name]` begins the line (whatever follows the `]`, e.g. a
/// comment); the next `[` line ends it. Only the lines of `name`'s section are read, as
/// `keyword=value` with nothing trimmed around the `=`; within it the first setting of a
/// keyword wins (libpq never overrides a setting). Everything outside it is ignored.
pub(crate) fn parse(text: &str, name: &str, path: &Path) -> Result<Option<Params>> {
    let mut found = false;
    let mut params = Params::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |detail: String| ConnectError::ServiceFileSyntax {
            path: path.to_path_buf(),
            line: index + 1,
            detail,
        };
        if let Some(section) = line.strip_prefix('[') {
            if found {
                break;
            }
            found = section
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(']'));
            continue;
        }
        if !found {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(syntax("expected keyword=value".into()));
        };
        if key == "service" || key == "servicefile" {
            return Err(syntax(format!(
                "\"{key}\" inside a service: nested service specifications are not supported"
            )));
        }
        conninfo::check_keyword(key, "service file").map_err(|e| match e {
            ConnectError::UnknownOption { name, .. } => {
                let trimmed = name.trim();
                if trimmed != name && conninfo::keyword(trimmed).is_some() {
                    syntax(format!(
                        "no spaces are allowed before \"=\" (write {trimmed}=...)"
                    ))
                } else {
                    syntax(format!("unknown keyword \"{name}\""))
                }
            }
            other => other,
        })?;
        params
            .entry(key.to_owned())
            .or_insert_with(|| value.to_owned());
    }
    Ok(found.then_some(params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::env::MemoryEnv;

    const FILE: &str = "\
# comment
[other]
host=elsewhere

[shop]
  host=db.example.com
port=6432
dbname=shop
# a comment inside
user=bob
host=ignored-second-host

[later]
host=later
";

    #[test]
    fn reads_the_named_section() {
        let p = parse(FILE, "shop", Path::new("f")).unwrap().unwrap();
        assert_eq!(p["host"], "db.example.com");
        assert_eq!(p["port"], "6432");
        assert_eq!(p["dbname"], "shop");
        assert_eq!(p["user"], "bob");
        assert_eq!(p.len(), 4);
        assert!(parse(FILE, "missing", Path::new("f")).unwrap().is_none());
        assert_eq!(
            parse(FILE, "later", Path::new("f")).unwrap().unwrap()["host"],
            "later"
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = parse("[s]\nhost\n", "s", Path::new("/x/pg_service.conf")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/x/pg_service.conf") && msg.contains("line 2"),
            "{msg}"
        );
        let e = parse("[s]\ncolour=blue\n", "s", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("unknown keyword \"colour\""), "{e}");
        let e = parse("[s]\nservice=t\n", "s", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
        let e = parse("[s]\nsslkey=/k\n", "s", Path::new("f")).unwrap_err();
        assert!(matches!(e, ConnectError::UnsupportedOption { .. }), "{e:?}");
        // Errors in other sections do not matter.
        assert!(parse("[t]\nbogus\n[s]\nhost=h\n", "s", Path::new("f"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn accepts_and_refuses_what_libpq_does() {
        let f = Path::new("f");
        let host = |text: &str| parse(text, "s1", f).map(|p| p.map(|p| p.get("host").cloned()));
        // A comment after the header; a stray "[other" or garbage outside the section.
        assert_eq!(
            host("[s1] # main\nhost=h\n").unwrap(),
            Some(Some("h".into()))
        );
        assert_eq!(
            host("[other\nbogus\n[s1]\nhost=h\n").unwrap(),
            Some(Some("h".into()))
        );
        assert_eq!(
            host("garbage\n[s1]\nhost=h\n[t]\nbad\n").unwrap(),
            Some(Some("h".into()))
        );
        // "[s1x]" is another service; any "[" line ends the section, "[s1" too.
        assert_eq!(host("[s1x]\nhost=x\n").unwrap(), None);
        assert_eq!(host("[s1]\n[s1\nhost=h\n").unwrap(), Some(None));
        assert_eq!(host("[s1]\n[s1]\nhost=h\n").unwrap(), Some(None));
        // Only the line is trimmed, not the value.
        assert_eq!(
            host("[s1]\n  host= h  \n").unwrap(),
            Some(Some(" h".into()))
        );
        // Spaces before "=", unknown keywords, a line without "=": the line number.
        for (text, line) in [
            ("[s1]\ndbname = x\n", 2),
            ("[s1]\nhost=h\n\nbogus=1\n", 4),
            ("[s1]\n=x\n", 2),
            ("# c\n[s1]\nhost\n", 3),
        ] {
            let e = host(text).unwrap_err();
            assert!(
                matches!(e, ConnectError::ServiceFileSyntax { line: l, .. } if l == line),
                "{text:?}: {e:?}"
            );
        }
        let e = host("[s1]\ndbname = x\n").unwrap_err().to_string();
        assert!(e.contains("no spaces"), "{e}");
    }

    #[test]
    fn user_file_then_system_file() {
        let env = MemoryEnv::new()
            .home("/home/bob")
            .var("PGSYSCONFDIR", "/etc/pg")
            .file("/home/bob/.pg_service.conf", "[a]\nhost=user-a\n", 0o600)
            .file(
                "/etc/pg/pg_service.conf",
                "[a]\nhost=sys-a\n[b]\nhost=sys-b\n",
                0o644,
            );
        let (path, p) = find("a", None, &env).unwrap();
        assert_eq!(
            (path.as_path(), p["host"].as_str()),
            (Path::new("/home/bob/.pg_service.conf"), "user-a")
        );
        let (path, p) = find("b", None, &env).unwrap();
        assert_eq!(
            (path.as_path(), p["host"].as_str()),
            (Path::new("/etc/pg/pg_service.conf"), "sys-b")
        );
        let e = find("c", None, &env).unwrap_err().to_string();
        assert!(
            e.contains("service \"c\"")
                && e.contains("/home/bob/.pg_service.conf")
                && e.contains("/etc/pg/pg_service.conf"),
            "{e}"
        );
    }

    #[test]
    fn explicit_service_file_replaces_the_users() {
        let env = MemoryEnv::new()
            .home("/home/bob")
            .file("/home/bob/.pg_service.conf", "[a]\nhost=user-a\n", 0o600)
            .file("/srv/services.conf", "[a]\nhost=explicit-a\n", 0o600);
        let (_, p) = find("a", Some("/srv/services.conf"), &env).unwrap();
        assert_eq!(p["host"], "explicit-a");
        assert_eq!(
            candidate_files(None, &env),
            vec![
                PathBuf::from("/home/bob/.pg_service.conf"),
                PathBuf::from("/etc/postgresql-common/pg_service.conf")
            ]
        );
    }
}

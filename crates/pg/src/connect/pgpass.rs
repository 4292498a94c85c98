//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), as libpq reads it.
//!
//! Lines are `hostname:port:database:username:password`; `#` starts a comment line; a
//! field that is exactly `*` matches anything; `\:` and `\\` stand for `:` and `\`. The
//! first matching line wins. A file that others can read is ignored with a warning, like
//! libpq does, so a password that leaked to the group is not silently used.

use std::path::Path;

use super::env::Env;

/// What to look up: libpq matches Unix-socket hosts as `localhost`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: &'a str,
    pub(crate) dbname: &'a str,
    pub(crate) user: &'a str,
}

/// Looks `key` up in the password file at `path`. A missing or unreadable file is no
/// password; one that is not a regular file, or that the group or others may access, is
/// no password plus a warning.
pub(crate) fn lookup(
    path: &Path,
    key: Key<'_>,
    env: &dyn Env,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let info = env.file_info(path).ok()?;
    if !info.is_file {
        warnings.push(format!(
            "password file \"{}\" is not a plain file; ignoring it",
            path.display()
        ));
        return None;
    }
    if info.mode & 0o077 != 0 {
        warnings.push(format!(
            "password file \"{}\" has group or world access (mode {:04o}); ignoring it: \
             permissions should be u=rw (0600) or less (run `chmod 0600 {}`)",
            path.display(),
            info.mode,
            path.display()
        ));
        return None;
    }
    let bytes = env.read_file(path).ok()?;
    find(&String::from_utf8_lossy(&bytes), key)
}

/// The password of the first line of `text` matching `key`, matched as libpq's
/// `passwordFromFile` does: field by field from the start of the line, so that an
/// unescaped `:` inside a field matches a `:` in the value (user `a:b` matches the line
/// `*:*:*:a:b:pw`, password `pw`); the password ends at the next unescaped `:`.
pub(crate) fn find(text: &str, key: Key<'_>) -> Option<String> {
    let wanted = [key.host, key.port, key.dbname, key.user];
    for line in text.lines() {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = wanted
            .iter()
            .try_fold(line, |rest, want| match_field(rest, want))
        {
            return Some(password(rest));
        }
    }
    None
}

/// Whether the field at the start of `rest` matches `want` (libpq's
/// `pwdfMatchesString`): a field that is exactly `*` matches anything; otherwise the
/// line's characters, with `\` escaping the next one, must equal `want`'s and then be
/// followed by an unescaped `:`. Returns what follows that `:`.
fn match_field<'a>(rest: &'a str, want: &str) -> Option<&'a str> {
    if let Some(after) = rest.strip_prefix("*:") {
        return Some(after);
    }
    let mut line = rest.char_indices();
    let mut want = want.chars();
    let mut next = want.next();
    while let Some((i, c)) = line.next() {
        let (c, escaped) = if c == '\\' {
            (line.next()?.1, true)
        } else {
            (c, false)
        };
        if c == ':' && !escaped && next.is_none() {
            return Some(&rest[i + 1..]);
        }
        if next != Some(c) {
            return None;
        }
        next = want.next();
    }
    None
}

/// The password field: up to the next unescaped `:`, escapes removed (a `\` at the very
/// end stays).
fn password(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::env::MemoryEnv;

    fn key<'a>(host: &'a str, port: &'a str, dbname: &'a str, user: &'a str) -> Key<'a> {
        Key {
            host,
            port,
            dbname,
            user,
        }
    }

    #[test]
    fn first_matching_line_wins() {
        let text = "\
# host:port:db:user:password
db1:5432:shop:bob:first
db1:5432:shop:bob:second
db1:*:*:bob:any-port-any-db
*:*:*:*:fallback
";
        assert_eq!(
            find(text, key("db1", "5432", "shop", "bob")).as_deref(),
            Some("first")
        );
        assert_eq!(
            find(text, key("db1", "6000", "other", "bob")).as_deref(),
            Some("any-port-any-db")
        );
        assert_eq!(
            find(text, key("db2", "5432", "shop", "amy")).as_deref(),
            Some("fallback")
        );
    }

    #[test]
    fn no_match_without_a_matching_line() {
        let text = "db1:5432:shop:bob:pw\n";
        assert_eq!(find(text, key("db1", "5432", "shop", "amy")), None);
        assert_eq!(find(text, key("db1", "5433", "shop", "bob")), None);
        assert_eq!(find(text, key("DB1", "5432", "shop", "bob")), None);
        // Too few fields never match.
        assert_eq!(find("*:*:*:*\n", key("a", "1", "b", "c")), None);
    }

    #[test]
    fn escapes() {
        // A ':' and a '\' in the password, and one in the user name.
        let text = r"h:5432:db:we\:ird:pa\:ss\\word";
        assert_eq!(
            find(text, key("h", "5432", "db", "we:ird")).as_deref(),
            Some(r"pa:ss\word")
        );
        // An escaped '*' is a literal star, not a wildcard.
        let text = r"h:5432:\*:bob:star-db";
        assert_eq!(
            find(text, key("h", "5432", "*", "bob")).as_deref(),
            Some("star-db")
        );
        assert_eq!(find(text, key("h", "5432", "shop", "bob")), None);
        // A '*' inside a field is literal too.
        assert_eq!(find("h*:*:*:*:pw", key("host", "1", "d", "u")), None);
        // An unescaped ':' inside a field matches a ':' in the value, as in libpq (the
        // first line is found for user "a:b", before the escaped one).
        let text = "*:*:*:a:b:unescaped\n*:*:*:a\\:b:escaped\n";
        assert_eq!(
            find(text, key("h", "1", "d", "a:b")).as_deref(),
            Some("unescaped")
        );
        assert_eq!(find(text, key("h", "1", "d", "a")).as_deref(), Some("b"));
        // A lone '\' at the end of the password stays.
        assert_eq!(
            find(r"h:1:d:u:pw\", key("h", "1", "d", "u")).as_deref(),
            Some(r"pw\")
        );
        // Text after an unescaped ':' past the password is ignored.
        assert_eq!(
            find("h:1:d:u:pw:extra", key("h", "1", "d", "u")).as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn comments_and_windows_line_ends() {
        let text = "#h:1:d:u:commented\r\nh:1:d:u:pw\r\n";
        assert_eq!(find(text, key("h", "1", "d", "u")).as_deref(), Some("pw"));
    }

    #[test]
    fn group_or_world_access_is_ignored_with_a_warning() {
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610] {
            let env = MemoryEnv::new().file("/h/.pgpass", "*:*:*:*:pw\n", mode);
            let mut warnings = Vec::new();
            let got = lookup(
                Path::new("/h/.pgpass"),
                key("h", "1", "d", "u"),
                &env,
                &mut warnings,
            );
            assert_eq!(got, None, "mode {mode:o}");
            assert_eq!(warnings.len(), 1);
            assert!(
                warnings[0].contains("group or world access"),
                "{}",
                warnings[0]
            );
            assert!(!warnings[0].contains("pw\n"));
        }
        for mode in [0o600, 0o400] {
            let env = MemoryEnv::new().file("/h/.pgpass", "*:*:*:*:pw\n", mode);
            let mut warnings = Vec::new();
            let got = lookup(
                Path::new("/h/.pgpass"),
                key("h", "1", "d", "u"),
                &env,
                &mut warnings,
            );
            assert_eq!(got.as_deref(), Some("pw"), "mode {mode:o}");
            assert!(warnings.is_empty());
        }
    }

    #[test]
    fn missing_file_or_directory() {
        let env = MemoryEnv::new().dir("/h/.pgpass");
        let mut warnings = Vec::new();
        assert_eq!(
            lookup(
                Path::new("/h/.pgpass"),
                key("h", "1", "d", "u"),
                &env,
                &mut warnings
            ),
            None
        );
        assert!(warnings[0].contains("not a plain file"), "{warnings:?}");
        let mut warnings = Vec::new();
        assert_eq!(
            lookup(
                Path::new("/nope"),
                key("h", "1", "d", "u"),
                &env,
                &mut warnings
            ),
            None
        );
        assert!(warnings.is_empty());
    }
}

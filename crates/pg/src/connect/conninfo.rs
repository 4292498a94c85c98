//! libpq connection strings: `key=value` lists and `postgres://` URIs, and the keywords
//! pgkill knows.
//!
//! Our own parser rather than `tokio_postgres::Config::from_str`: that one rejects
//! keywords such as `service`, `sslrootcert` and `passfile`, and loses which keywords were
//! given, which pgkill's precedence (connection string > flags > service > environment)
//! needs. Parse errors never quote values: a connection string may hold a password.

use std::collections::BTreeMap;

use super::error::{ConnectError, Result};

/// Keyword → value, as given (empty values included).
pub(crate) type Params = BTreeMap<String, String>;

/// What pgkill does with a libpq keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Support {
    /// Used.
    Used,
    /// Accepted and ignored: it does not change how pgkill connects in any way that
    /// matters (e.g. keepalives on a short-lived admin connection).
    Ignored,
    /// Refused with this reason: silently ignoring it would weaken security or connect
    /// somewhere else than asked.
    Unsupported(&'static str),
}

/// A libpq keyword, its environment variable and what pgkill does with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keyword {
    pub(crate) name: &'static str,
    pub(crate) env: Option<&'static str>,
    pub(crate) support: Support,
}

const fn kw(name: &'static str, env: Option<&'static str>, support: Support) -> Keyword {
    Keyword { name, env, support }
}

const CLIENT_CERT: Support =
    Support::Unsupported("pgkill does not support TLS client certificates yet");
const GSS: Support = Support::Unsupported("pgkill does not support GSSAPI/Kerberos");

/// Every libpq keyword up to PostgreSQL 18.
pub(crate) const KEYWORDS: &[Keyword] = &[
    kw("host", Some("PGHOST"), Support::Used),
    kw("hostaddr", Some("PGHOSTADDR"), Support::Used),
    kw("port", Some("PGPORT"), Support::Used),
    kw("user", Some("PGUSER"), Support::Used),
    kw("password", Some("PGPASSWORD"), Support::Used),
    kw("passfile", Some("PGPASSFILE"), Support::Used),
    kw("dbname", Some("PGDATABASE"), Support::Used),
    kw("service", Some("PGSERVICE"), Support::Used),
    kw("servicefile", Some("PGSERVICEFILE"), Support::Used),
    kw("sslmode", Some("PGSSLMODE"), Support::Used),
    kw("sslrootcert", Some("PGSSLROOTCERT"), Support::Used),
    kw("connect_timeout", Some("PGCONNECT_TIMEOUT"), Support::Used),
    kw("options", Some("PGOPTIONS"), Support::Used),
    kw("channel_binding", Some("PGCHANNELBINDING"), Support::Used),
    // Read, but pgkill always connects as `pgkill` (see `APPLICATION_NAME`).
    kw("application_name", Some("PGAPPNAME"), Support::Used),
    kw("fallback_application_name", None, Support::Ignored),
    // Checked per value in `resolve` (some values are fine, others refused).
    kw("gssencmode", Some("PGGSSENCMODE"), Support::Used),
    kw("sslnegotiation", Some("PGSSLNEGOTIATION"), Support::Used),
    kw(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Support::Used,
    ),
    kw("sslcertmode", Some("PGSSLCERTMODE"), Support::Used),
    kw(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Support::Used,
    ),
    // tokio-postgres always speaks UTF-8; keepalives are on by default.
    kw(
        "client_encoding",
        Some("PGCLIENTENCODING"),
        Support::Ignored,
    ),
    kw("keepalives", None, Support::Ignored),
    kw("keepalives_idle", None, Support::Ignored),
    kw("keepalives_interval", None, Support::Ignored),
    kw("keepalives_count", None, Support::Ignored),
    kw("tcp_user_timeout", None, Support::Ignored),
    kw("sslcompression", None, Support::Ignored),
    kw("sslsni", Some("PGSSLSNI"), Support::Ignored),
    kw("sslcert", Some("PGSSLCERT"), CLIENT_CERT),
    kw("sslkey", Some("PGSSLKEY"), CLIENT_CERT),
    kw("sslpassword", None, CLIENT_CERT),
    kw("sslcrl", Some("PGSSLCRL"), Support::Used),
    kw("sslcrldir", Some("PGSSLCRLDIR"), Support::Used),
    kw(
        "sslkeylogfile",
        None,
        Support::Unsupported("pgkill does not write TLS key logs"),
    ),
    kw(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Support::Used,
    ),
    kw(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Support::Used,
    ),
    kw("requirepeer", Some("PGREQUIREPEER"), Support::Used),
    kw("require_auth", Some("PGREQUIREAUTH"), Support::Used),
    kw("krbsrvname", Some("PGKRBSRVNAME"), GSS),
    kw("gsslib", Some("PGGSSLIB"), GSS),
    kw("gssdelegation", Some("PGGSSDELEGATION"), GSS),
    kw(
        "replication",
        None,
        Support::Unsupported("pgkill does not open replication connections"),
    ),
    kw(
        "min_protocol_version",
        Some("PGMINPROTOCOLVERSION"),
        Support::Unsupported("pgkill speaks protocol 3.0 only"),
    ),
    kw(
        "max_protocol_version",
        Some("PGMAXPROTOCOLVERSION"),
        Support::Unsupported("pgkill speaks protocol 3.0 only"),
    ),
    kw(
        "oauth_issuer",
        None,
        Support::Unsupported("pgkill does not support OAuth"),
    ),
    kw(
        "oauth_client_id",
        None,
        Support::Unsupported("pgkill does not support OAuth"),
    ),
    kw(
        "oauth_client_secret",
        None,
        Support::Unsupported("pgkill does not support OAuth"),
    ),
    kw(
        "oauth_scope",
        None,
        Support::Unsupported("pgkill does not support OAuth"),
    ),
];

/// The keyword named `name`, if libpq has one.
pub(crate) fn keyword(name: &str) -> Option<&'static Keyword> {
    KEYWORDS.iter().find(|k| k.name == name)
}

/// Checks a keyword found in a connection string or service file: unknown keywords are
/// an error (like libpq), and so are keywords pgkill refuses.
pub(crate) fn check_keyword(name: &str, place: &str) -> Result<()> {
    match keyword(name) {
        None => Err(ConnectError::UnknownOption {
            name: name.to_owned(),
            place: place.to_owned(),
        }),
        Some(Keyword {
            support: Support::Unsupported(why),
            ..
        }) => Err(ConnectError::UnsupportedOption {
            name: name.to_owned(),
            why: (*why).to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

/// Whether `s` is a URI (`postgresql://` or `postgres://`), as libpq decides.
fn uri_rest(s: &str) -> Option<&str> {
    s.strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
}

/// Parses what the user gave as the connection string: a URI, a `key=value` list, or
/// (like libpq's `dbname` expansion) a plain database name.
pub(crate) fn parse(s: &str) -> Result<Params> {
    if let Some(rest) = uri_rest(s) {
        parse_uri(rest)
    } else if s.contains('=') {
        parse_keywords(s)
    } else {
        let mut params = Params::new();
        params.insert("dbname".into(), s.to_owned());
        Ok(params)
    }
}

/// libpq's deprecated `requiressl` keyword, translated where it is stored (as libpq's
/// `conninfo_storeval` does): a value starting with `1` is `sslmode=require`, any other
/// `sslmode=prefer`; whichever of it and `sslmode` comes later wins. Not a keyword of
/// service files (libpq calls it a syntax error there).
fn requiressl(name: &str, value: &str) -> Option<&'static str> {
    (name == "requiressl").then(|| {
        if value.starts_with('1') {
            "require"
        } else {
            "prefer"
        }
    })
}

fn bad(detail: impl Into<String>) -> ConnectError {
    ConnectError::InvalidConninfo {
        detail: detail.into(),
    }
}

/// `key = value` pairs separated by whitespace; values may be single-quoted; a backslash
/// escapes the next character (libpq's `conninfo_parse`). A later keyword wins.
fn parse_keywords(s: &str) -> Result<Params> {
    let mut params = Params::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        while i < n && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= n || chars[i] != '=' {
            // Do not quote the word: it might be a password typed in the wrong place.
            return Err(bad(format!(
                "expected keyword=value, found a word without \"=\" at character {}",
                start + 1
            )));
        }
        if name.is_empty() {
            return Err(bad(format!(
                "\"=\" without a keyword before it at character {}",
                i + 1
            )));
        }
        i += 1;
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < n && chars[i] == '\'' {
            i += 1;
            loop {
                if i >= n {
                    return Err(bad(format!(
                        "unterminated quoted value of \"{name}\" (a ' is missing)"
                    )));
                }
                match chars[i] {
                    '\\' => {
                        i += 1;
                        if i < n {
                            value.push(chars[i]);
                            i += 1;
                        }
                    }
                    '\'' => {
                        i += 1;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < n && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                    if i < n {
                        value.push(chars[i]);
                        i += 1;
                    }
                } else {
                    value.push(chars[i]);
                    i += 1;
                }
            }
        }
        if let Some(mode) = requiressl(&name, &value) {
            params.insert("sslmode".into(), mode.into());
            continue;
        }
        check_keyword(&name, "connection string")?;
        params.insert(name, value);
    }
    Ok(params)
}

/// `postgresql://[user[:password]@][host][:port][/dbname][?key=value&...]`, percent-encoded
/// (libpq's `conninfo_uri_parse_options`). Query parameters override the parts before.
fn parse_uri(rest: &str) -> Result<Params> {
    let mut params = Params::new();
    let mut s = rest;

    // User info: everything before an '@' that comes before any '/'.
    let authority_end = s.find(['@', '/']).unwrap_or(s.len());
    if s[authority_end..].starts_with('@') {
        let userinfo = &s[..authority_end];
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        let user = decode(user, "user name")?;
        if !user.is_empty() {
            params.insert("user".into(), user);
        }
        if let Some(p) = password {
            let p = decode(p, "password")?;
            if !p.is_empty() {
                params.insert("password".into(), p);
            }
        }
        s = &s[authority_end + 1..];
    }

    // Hosts and ports: `host[:port][,host[:port]...]`, gathered into comma-separated
    // lists as libpq does (a host without a port leaves an empty entry: the default).
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    loop {
        let host;
        if let Some(inner) = s.strip_prefix('[') {
            let Some(close) = inner.find(']') else {
                return Err(bad("the IPv6 host address in the URI has no closing \"]\""));
            };
            if close == 0 {
                return Err(bad("empty IPv6 host address \"[]\" in the URI"));
            }
            host = decode(&inner[..close], "host")?;
            s = &inner[close + 1..];
            if !(s.is_empty() || s.starts_with([':', '/', '?', ','])) {
                return Err(bad(
                    "unexpected character after the IPv6 host address in the URI",
                ));
            }
        } else {
            let end = s.find([':', '/', '?', ',']).unwrap_or(s.len());
            host = decode(&s[..end], "host")?;
            s = &s[end..];
        }
        hosts.push(host);
        let mut port = String::new();
        if let Some(after) = s.strip_prefix(':') {
            let end = after.find(['/', '?', ',']).unwrap_or(after.len());
            port = decode(&after[..end], "port")?;
            s = &after[end..];
        }
        ports.push(port);
        match s.strip_prefix(',') {
            Some(rest) => s = rest,
            None => break,
        }
    }
    let hosts = hosts.join(",");
    if !hosts.is_empty() {
        params.insert("host".into(), hosts);
    }
    let ports = ports.join(",");
    if !ports.is_empty() {
        params.insert("port".into(), ports);
    }

    // Database.
    if let Some(after) = s.strip_prefix('/') {
        let end = after.find('?').unwrap_or(after.len());
        let dbname = decode(&after[..end], "database name")?;
        if !dbname.is_empty() {
            params.insert("dbname".into(), dbname);
        }
        s = &after[end..];
    }

    // Query parameters.
    if let Some(query) = s.strip_prefix('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(bad(
                    "a URI query parameter has no \"=\" (expected key=value)",
                ));
            };
            let key = decode(key, "query parameter name")?;
            let value = decode(value, "query parameter value")?;
            // libpq's JDBC-compatible spelling.
            if key == "ssl" && value == "true" {
                params.insert("sslmode".into(), "require".into());
                continue;
            }
            if let Some(mode) = requiressl(&key, &value) {
                params.insert("sslmode".into(), mode.into());
                continue;
            }
            check_keyword(&key, "URI")?;
            params.insert(key, value);
        }
    } else if !s.is_empty() {
        return Err(bad("unexpected text after the host and port in the URI"));
    }
    Ok(params)
}

/// Percent-decoding as libpq does it (`+` stays `+`; `%00` is refused).
fn decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(0) => {
                    return Err(bad(format!(
                        "the URI's {what} contains %00, which is not allowed"
                    )))
                }
                Some(b) => out.push(b),
                None => {
                    return Err(bad(format!(
                    "invalid percent-encoding in the URI's {what} (expected % and two hex digits)"
                )))
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| bad(format!("the URI's {what} is not valid UTF-8 once decoded")))
}

/// Quotes a value for a `key=value` connection string when it needs it (empty, spaces,
/// quotes or backslashes), as libpq would read it back.
pub(crate) fn quote_value(value: &str) -> String {
    if !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn keyword_value_lists() {
        assert_eq!(
            parse("host=db1 port=5433 user=bob dbname=shop").unwrap(),
            p(&[
                ("host", "db1"),
                ("port", "5433"),
                ("user", "bob"),
                ("dbname", "shop")
            ])
        );
        // Spaces around '=', tabs, newlines.
        assert_eq!(
            parse("  host = db1\tport\n=\n5433  ").unwrap(),
            p(&[("host", "db1"), ("port", "5433")])
        );
        // A later keyword wins.
        assert_eq!(parse("host=a host=b").unwrap(), p(&[("host", "b")]));
    }

    #[test]
    fn quoting_and_escapes() {
        assert_eq!(
            parse(r"dbname='my db' password='it\'s' user=a\ b host=''").unwrap(),
            p(&[
                ("dbname", "my db"),
                ("password", "it's"),
                ("user", "a b"),
                ("host", "")
            ])
        );
        assert_eq!(
            parse(r"password='back\\slash'").unwrap(),
            p(&[("password", r"back\slash")])
        );
        // No space needed after a closing quote.
        assert_eq!(
            parse("dbname='x'user=y").unwrap(),
            p(&[("dbname", "x"), ("user", "y")])
        );
    }

    #[test]
    fn quote_value_round_trips() {
        for v in ["plain", "", "my db", "it's", r"a\b", "tab\there"] {
            let s = format!("dbname={}", quote_value(v));
            assert_eq!(parse(&s).unwrap()["dbname"], v, "{s}");
        }
        assert_eq!(quote_value("plain"), "plain");
        assert_eq!(quote_value("my db"), "'my db'");
    }

    #[test]
    fn keyword_errors_never_quote_values() {
        let e = parse("host=x s3cret").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("without \"=\""), "{e}");
        let e = parse("password='s3cret").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("unterminated"), "{e}");
        let e = parse("=s3cret").unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn unknown_and_unsupported_keywords() {
        let e = parse("host=x colour=blue").unwrap_err();
        assert!(
            matches!(&e, ConnectError::UnknownOption { name, .. } if name == "colour"),
            "{e:?}"
        );
        let e = parse("sslcert=/x.crt").unwrap_err();
        assert!(
            matches!(&e, ConnectError::UnsupportedOption { name, .. } if name == "sslcert"),
            "{e:?}"
        );
        assert!(e.to_string().contains("client certificates"), "{e}");
        // Harmless ones are accepted.
        assert!(parse("keepalives=1 sslsni=1 fallback_application_name=x").is_ok());
    }

    #[test]
    fn plain_database_name() {
        assert_eq!(parse("shop").unwrap(), p(&[("dbname", "shop")]));
    }

    #[test]
    fn uris() {
        assert_eq!(parse("postgresql://").unwrap(), p(&[]));
        assert_eq!(
            parse("postgres://localhost").unwrap(),
            p(&[("host", "localhost")])
        );
        assert_eq!(
            parse("postgresql://localhost:5433").unwrap(),
            p(&[("host", "localhost"), ("port", "5433")])
        );
        assert_eq!(
            parse("postgresql://localhost/mydb").unwrap(),
            p(&[("host", "localhost"), ("dbname", "mydb")])
        );
        assert_eq!(
            parse("postgresql://user@localhost").unwrap(),
            p(&[("user", "user"), ("host", "localhost")])
        );
        assert_eq!(
            parse("postgresql://user:s%40cret@localhost").unwrap(),
            p(&[
                ("user", "user"),
                ("password", "s@cret"),
                ("host", "localhost")
            ])
        );
        assert_eq!(
            parse("postgresql://other@localhost/otherdb?connect_timeout=10&sslmode=verify-full")
                .unwrap(),
            p(&[
                ("user", "other"),
                ("host", "localhost"),
                ("dbname", "otherdb"),
                ("connect_timeout", "10"),
                ("sslmode", "verify-full")
            ])
        );
        assert_eq!(
            parse("postgresql://[2001:db8::1234]:6000/database").unwrap(),
            p(&[
                ("host", "2001:db8::1234"),
                ("port", "6000"),
                ("dbname", "database")
            ])
        );
        // Host lists (a host without a port leaves an empty port entry), with IPv6 in
        // brackets percent-decoded like every other part.
        assert_eq!(
            parse("postgresql://a:1,[fe80::1%25eth0],c:3/db").unwrap(),
            p(&[
                ("host", "a,fe80::1%eth0,c"),
                ("port", "1,,3"),
                ("dbname", "db")
            ])
        );
        assert_eq!(
            parse("postgresql:///dbname?host=/var/lib/postgresql").unwrap(),
            p(&[("dbname", "dbname"), ("host", "/var/lib/postgresql")])
        );
        assert_eq!(
            parse("postgresql://%2Fvar%2Flib%2Fpostgresql/dbname").unwrap(),
            p(&[("host", "/var/lib/postgresql"), ("dbname", "dbname")])
        );
        // Query parameters override the parts before; `ssl=true` is sslmode=require.
        assert_eq!(
            parse("postgresql://a/db1?dbname=db2&ssl=true").unwrap(),
            p(&[("host", "a"), ("dbname", "db2"), ("sslmode", "require")])
        );
        // '+' is not a space.
        assert_eq!(parse("postgresql:///a+b").unwrap(), p(&[("dbname", "a+b")]));
        // An '@' in the password must be encoded; one in the query is fine.
        assert_eq!(
            parse("postgresql://h/db?user=a@b").unwrap(),
            p(&[("host", "h"), ("dbname", "db"), ("user", "a@b")])
        );
    }

    #[test]
    fn uri_errors() {
        for (uri, want) in [
            ("postgresql://[::1/db", "closing"),
            ("postgresql://[]/db", "empty IPv6"),
            ("postgresql://[::1]x/db", "after the IPv6"),
            ("postgresql://h/db?colour=blue", "colour"),
            ("postgresql://h/db?sslmode", "no \"=\""),
            ("postgresql://h/%zz", "percent-encoding"),
            ("postgresql://h/a%00b", "%00"),
            ("postgresql://h/%ff", "UTF-8"),
        ] {
            let e = parse(uri).unwrap_err().to_string();
            assert!(e.contains(want), "{uri}: {e}");
        }
    }

    #[test]
    fn uri_errors_never_quote_the_password() {
        let e = parse("postgresql://u:s3cret%zz@h/db")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let e = parse("postgresql://u:s3cret@h/db?colour=1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(!format!("{e:?}").contains("s3cret"), "{e:?}");
    }

    #[test]
    fn every_keyword_is_listed_once() {
        for (i, k) in KEYWORDS.iter().enumerate() {
            assert!(
                KEYWORDS[i + 1..].iter().all(|o| o.name != k.name),
                "{} twice",
                k.name
            );
        }
    }
}

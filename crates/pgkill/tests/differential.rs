//! pgkill against psql (the system's libpq) over the same connection inputs, with a fake
//! server recording what each client sent: which endpoint in what order, whether an
//! SSLRequest came first, user, database and password. The cases cover libpq's own URI
//! regression list (`src/interfaces/libpq/test/regress.in`, rewritten to point at the fake
//! endpoints), conninfo quoting, the `PG*` variables, precedence, `.pgpass`, service
//! files, `requiressl`, multi-host and bad input.
//!
//! libpq is the oracle. Every difference kept on purpose is listed in the README section
//! "Where pgkill connects differently from psql" with its reason; the test fails when the
//! set of differing cases is not exactly that list. pgkill connects to `postgres` when no
//! database is named and libpq to the user's name: a documented difference normalised
//! away here (pgkill's `postgres` counts as the user name unless the case names a
//! database). Needs no PostgreSQL server, only `psql`, and fails (never skips) without it.
//!
//! `PGKILL_DIFF_ONLY=TEXT` runs only the cases whose id contains TEXT (the exact-list
//! check then covers only those); `PGKILL_DIFF_VERBOSE=1` prints what both clients did
//! in every case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

#[path = "support/fake_server.rs"]
mod fake_server;
mod support;

use fake_server::{Behaviour, FakeServer, Listen, Record, DEFAULT_SOCKET_DIR};

use Behaviour::{Down, Password, StartingUp};
use Listen::{DefaultSocket, Socket, Tcp4, Tcp6};

/// How long one client run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The README section listing the accepted differences.
const SECTION: &str = "## Where pgkill connects differently from psql";

type Ep = (&'static str, Listen, Behaviour);

/// One input, given to both clients.
#[derive(Debug, Clone)]
struct Case {
    id: &'static str,
    endpoints: Vec<Ep>,
    /// The positional connection string or URI.
    conninfo: Option<String>,
    /// `-h/-p/-U` flags, the same for both.
    flags: Vec<String>,
    /// psql's `-d`, pgkill's `--maintenance-db`.
    db_flag: Option<String>,
    env: Vec<(String, String)>,
    /// (path, contents, mode); directories when contents is `None`.
    files: Vec<(String, Option<String>, u32)>,
    /// Whether the case names the database (else pgkill's default `postgres` is taken
    /// for libpq's default, the user name).
    db_named: bool,
}

/// A case with one endpoint `A`: TCP on 127.0.0.1 asking for a password.
fn case(id: &'static str) -> Case {
    Case {
        id,
        endpoints: vec![("A", Tcp4, Password)],
        conninfo: None,
        flags: Vec::new(),
        db_flag: None,
        env: Vec::new(),
        files: Vec::new(),
        db_named: false,
    }
}

impl Case {
    fn eps(mut self, eps: &[Ep]) -> Self {
        self.endpoints = eps.to_vec();
        self
    }
    fn conn(mut self, s: &str) -> Self {
        self.conninfo = Some(s.to_owned());
        self
    }
    fn flags(mut self, f: &[&str]) -> Self {
        self.flags.extend(f.iter().map(|s| (*s).to_owned()));
        self
    }
    fn db(mut self, d: &str) -> Self {
        self.db_flag = Some(d.to_owned());
        self.db_named = true;
        self
    }
    fn named(mut self) -> Self {
        self.db_named = true;
        self
    }
    fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
    fn file(mut self, path: &str, text: &str, mode: u32) -> Self {
        self.files
            .push((path.to_owned(), Some(text.to_owned()), mode));
        self
    }
    fn dir(mut self, path: &str) -> Self {
        self.files.push((path.to_owned(), None, 0o755));
        self
    }
    fn pgpass(self, text: &str) -> Self {
        self.file("{HOME}/.pgpass", text, 0o600)
    }
    fn svcfile(self, text: &str) -> Self {
        self.env("PGSERVICEFILE", "{TMP}/svc.conf")
            .file("{TMP}/svc.conf", text, 0o644)
    }
}

/// The endpoint sets most cases use.
const ALL: [Ep; 4] = [
    ("A", Tcp4, Password),
    ("B", Tcp6, Password),
    ("S", Socket, Password),
    ("D", DefaultSocket, Password),
];

/// libpq's URI regression list, one case per URI, rewritten to the fake endpoints: `host`
/// is 127.0.0.1 (A), `[::1]` and the documentation address are [::1] (B), socket
/// directories are S's, `/var/lib/postgresql` is the default socket directory (D), port
/// 12345 is the endpoint's port; URIs without a port get it from `PGPORT`. Parse errors
/// stay as they are.
fn uri_cases() -> Vec<Case> {
    let u = |id, uri: &str, pgport: Option<&str>| {
        let c = case(id).eps(&ALL).conn(uri);
        match pgport {
            Some(p) => c.env("PGPORT", p),
            None => c,
        }
    };
    let a = Some("{A}");
    let b = Some("{B}");
    let d = Some("{D}");
    vec![
        u(
            "uri-user-password-host-port-db",
            "postgresql://uri-user:secret@127.0.0.1:{A}/db",
            None,
        )
        .named(),
        u(
            "uri-user-host-port-db",
            "postgresql://uri-user@127.0.0.1:{A}/db",
            None,
        )
        .named(),
        u("uri-user-host-db", "postgresql://uri-user@127.0.0.1/db", a).named(),
        u("uri-host-port-db", "postgresql://127.0.0.1:{A}/db", None).named(),
        u("uri-host-db", "postgresql://127.0.0.1/db", a).named(),
        u(
            "uri-user-host-port-slash",
            "postgresql://uri-user@127.0.0.1:{A}/",
            None,
        ),
        u("uri-user-host-slash", "postgresql://uri-user@127.0.0.1/", a),
        u("uri-user-only", "postgresql://uri-user@", d),
        u("uri-host-port-slash", "postgresql://127.0.0.1:{A}/", None),
        u("uri-host-port", "postgresql://127.0.0.1:{A}", None),
        u("uri-localhost-db", "postgresql://localhost/db", a).named(),
        u("uri-host-slash", "postgresql://127.0.0.1/", a),
        u("uri-host", "postgresql://127.0.0.1", a),
        u("uri-empty", "postgresql://", d),
        u("uri-hostaddr-only", "postgresql://?hostaddr=127.0.0.1", a),
        u(
            "uri-host-and-hostaddr",
            "postgresql://example.com?hostaddr=127.0.0.1",
            a,
        ),
        u("uri-percent-encoded-host", "postgresql://%3127.0.0.1/", a),
        u(
            "uri-query-user",
            "postgresql://127.0.0.1/db?user=uri-user",
            a,
        )
        .named(),
        u(
            "uri-query-user-port",
            "postgresql://127.0.0.1/db?user=uri-user&port={A}",
            None,
        )
        .named(),
        u(
            "uri-query-encoded-key",
            "postgresql://127.0.0.1/db?u%73er=someotheruser&port={A}",
            None,
        )
        .named(),
        u(
            "uri-query-unknown-encoded-key",
            "postgresql://127.0.0.1/db?u%7aer=someotheruser&port={A}",
            None,
        ),
        u(
            "uri-port-query-user",
            "postgresql://127.0.0.1:{A}?user=uri-user",
            None,
        ),
        u(
            "uri-query-user-no-slash",
            "postgresql://127.0.0.1?user=uri-user",
            a,
        ),
        u("uri-empty-query", "postgresql://127.0.0.1?", a),
        u("uri-ipv6-port-db", "postgresql://[::1]:{B}/db", None).named(),
        u("uri-ipv6-db", "postgresql://[::1]/db", b).named(),
        u("uri-ipv6-slash", "postgresql://[::1]/", b),
        u("uri-ipv6-invalid", "postgresql://[200z:db8::1234]/", a),
        u("uri-ipv6", "postgresql://[::1]", b),
        u("uri-postgres-empty", "postgres://", d),
        u("uri-postgres-slash", "postgres:///", d),
        u("uri-postgres-db", "postgres:///db", d).named(),
        u("uri-user-no-host-db", "postgres://uri-user@/db", d).named(),
        u(
            "uri-query-host-socket",
            "postgres://?host={S.dir}",
            Some("{S}"),
        ),
        u("uri-query-unknown-empty", "postgresql://127.0.0.1?uzer=", a),
        u("uri-wrong-scheme", "postgre://", d).named(),
        u("uri-ipv6-unclosed", "postgres://[::1", a),
        u("uri-ipv6-empty", "postgres://[]", a),
        u("uri-ipv6-trailing", "postgres://[::1]z", a),
        u("uri-query-no-equals", "postgresql://127.0.0.1?zzz", a),
        u(
            "uri-query-two-no-equals",
            "postgresql://127.0.0.1?value1&value2",
            a,
        ),
        u(
            "uri-query-two-equals",
            "postgresql://127.0.0.1?key=key=value",
            a,
        ),
        u(
            "uri-bad-percent-query",
            "postgres://127.0.0.1?dbname=%XXfoo",
            a,
        ),
        u("uri-percent-zero", "postgresql://a%00b", a),
        u("uri-percent-zz", "postgresql://%zz", a),
        u("uri-percent-short", "postgresql://%1", a),
        u("uri-percent-alone", "postgresql://%", a),
        u("uri-empty-user", "postgres://@127.0.0.1", a),
        u("uri-empty-port", "postgres://127.0.0.1:/", a),
        u("uri-port-only", "postgres://:{D}/", None),
        u(
            "uri-missing-socket-dir",
            "postgres://otheruser@?host=/no/such/directory",
            a,
        ),
        u(
            "uri-missing-socket-dir-slash",
            "postgres://otheruser@/?host=/no/such/directory",
            a,
        ),
        u(
            "uri-missing-socket-path-port",
            "postgres://otheruser@:12345?host=/no/such/socket/path",
            None,
        ),
        u(
            "uri-user-port-db-socket",
            "postgres://otheruser@:{S}/db?host={S.dir}",
            None,
        )
        .named(),
        u(
            "uri-port-db-socket",
            "postgres://:{S}/db?host={S.dir}",
            None,
        )
        .named(),
        u("uri-port-socket", "postgres://:{S}?host={S.dir}", None),
        u(
            "uri-encoded-socket-dir",
            "postgres://%2Fvar%2Frun%2Fpostgresql/dbname",
            d,
        )
        .named(),
    ]
}

fn quoting_cases() -> Vec<Case> {
    vec![
        case("quote-single-quotes").conn("host='127.0.0.1' port='{A}' user='my user'"),
        case("quote-escaped-quote").conn(r"host=127.0.0.1 port={A} password='it\'s'"),
        case("quote-backslash-unquoted")
            .conn(r"host=127.0.0.1 port={A} user=a\ b password=back\\slash"),
        case("quote-backslashes-quoted").conn(r"host=127.0.0.1 port={A} password='a\\b\'c d'"),
        case("quote-trailing-backslash").conn(r"host=127.0.0.1 port={A} password=abc\"),
        case("quote-spaces-around-equals").conn("host = 127.0.0.1  port =  {A}   user= spaced"),
        case("quote-tabs-newlines").conn("host=127.0.0.1\tport={A}\nuser=tabbed\n"),
        case("quote-no-space-after-quote")
            .conn("host=127.0.0.1 port={A} dbname='x'user=y")
            .named(),
        case("quote-later-keyword-wins").conn("host=/nonexistent host=127.0.0.1 port=1 port={A}"),
        case("quote-database-with-space")
            .conn("host=127.0.0.1 port={A} dbname='my db'")
            .named(),
        case("quote-unicode").conn("host=127.0.0.1 port={A} user='jöhn' password='pässword'"),
        case("quote-unterminated").conn("host=127.0.0.1 port={A} user='bob"),
        case("quote-missing-equals").conn("host 127.0.0.1 port={A}"),
        case("quote-no-equals-is-a-database-name")
            .conn("host 127.0.0.1")
            .eps(&ALL)
            .env("PGPORT", "{D}")
            .named(),
        case("quote-equals-without-keyword").conn("=127.0.0.1 port={A}"),
        case("quote-unknown-keyword").conn("host=127.0.0.1 port={A} colour=blue"),
        case("quote-plain-database-name")
            .conn("mydb")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "{A}")
            .named(),
    ]
}

fn env_cases() -> Vec<Case> {
    let tcp = |id| case(id).env("PGHOST", "127.0.0.1").env("PGPORT", "{A}");
    vec![
        tcp("env-pghost-pgport"),
        case("env-pghost-socket-dir")
            .eps(&ALL)
            .env("PGHOST", "{S.dir}")
            .env("PGPORT", "{S}"),
        case("env-pgport-default-socket")
            .eps(&ALL)
            .env("PGPORT", "{D}"),
        case("env-pghost-empty")
            .eps(&ALL)
            .env("PGHOST", "")
            .env("PGPORT", "{D}"),
        case("env-pghostaddr")
            .env("PGHOSTADDR", "127.0.0.1")
            .env("PGPORT", "{A}"),
        case("env-pghostaddr-beats-socket-host")
            .eps(&ALL)
            .env("PGHOST", "{S.dir}")
            .env("PGHOSTADDR", "127.0.0.1")
            .env("PGPORT", "{A}"),
        tcp("env-pguser").env("PGUSER", "envuser"),
        tcp("env-pgpassword").env("PGPASSWORD", "envpw"),
        tcp("env-pgpassfile").env("PGPASSFILE", "{TMP}/pw").file(
            "{TMP}/pw",
            "*:*:*:*:from-pgpassfile\n",
            0o600,
        ),
        tcp("env-pgdatabase").env("PGDATABASE", "envdb").named(),
        tcp("env-pgsslmode-disable").env("PGSSLMODE", "disable"),
        tcp("env-pgsslmode-prefer")
            .env("PGSSLMODE", "prefer")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgsslmode-require")
            .env("PGSSLMODE", "require")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgsslmode-allow")
            .env("PGSSLMODE", "allow")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgsslmode-verify-full")
            .env("PGSSLMODE", "verify-full")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgsslmode-bogus").env("PGSSLMODE", "bogus"),
        tcp("env-pgrequiressl-1")
            .env("PGREQUIRESSL", "1")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgrequiressl-0")
            .env("PGREQUIRESSL", "0")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgrequiressl-below-pgsslmode")
            .env("PGREQUIRESSL", "1")
            .env("PGSSLMODE", "prefer")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgconnect-timeout").env("PGCONNECT_TIMEOUT", "5"),
        tcp("env-pgconnect-timeout-bogus").env("PGCONNECT_TIMEOUT", "soon"),
        tcp("env-pgtargetsessionattrs-any").env("PGTARGETSESSIONATTRS", "any"),
        tcp("env-pgtargetsessionattrs-read-write")
            .env("PGTARGETSESSIONATTRS", "read-write")
            .env("PGPASSWORD", "pw"),
        tcp("env-pgloadbalancehosts-disable").env("PGLOADBALANCEHOSTS", "disable"),
        tcp("env-pgappname-pgoptions-pgclientencoding")
            .env("PGAPPNAME", "someapp")
            .env("PGOPTIONS", "-c work_mem=64MB")
            .env("PGCLIENTENCODING", "LATIN1"),
        tcp("env-pgchannelbinding-require")
            .env("PGCHANNELBINDING", "require")
            .env("PGPASSWORD", "pw"),
        tcp("env-pggssencmode-disable").env("PGGSSENCMODE", "disable"),
        tcp("env-pgkrbsrvname-pgsslcert")
            .env("PGKRBSRVNAME", "krb")
            .env("PGSSLCERT", "{TMP}/none.crt"),
        tcp("env-pgsslrootcert-with-prefer").env("PGSSLROOTCERT", "{TMP}/none.crt"),
        tcp("env-pgrequireauth-md5")
            .env("PGREQUIREAUTH", "md5")
            .env("PGPASSWORD", "pw"),
        case("env-pgrequirepeer-mismatch")
            .eps(&ALL)
            .env("PGHOST", "{S.dir}")
            .env("PGPORT", "{S}")
            .env("PGREQUIREPEER", "postgres"),
        case("env-pgrequirepeer-match")
            .eps(&ALL)
            .env("PGHOST", "{S.dir}")
            .env("PGPORT", "{S}")
            .env("PGREQUIREPEER", "root"),
        tcp("env-pgsslnegotiation-postgres").env("PGSSLNEGOTIATION", "postgres"),
        tcp("env-pgsslnegotiation-direct").env("PGSSLNEGOTIATION", "direct"),
        tcp("env-pgsslcertmode-disable").env("PGSSLCERTMODE", "disable"),
        tcp("env-pgsslsni-pgsslkey")
            .env("PGSSLSNI", "0")
            .env("PGSSLKEY", "{TMP}/none.key"),
        tcp("env-pgsslcrl-pgsslcrldir-unused-without-verify")
            .env("PGSSLCRL", "{TMP}/none.crl")
            .env("PGSSLCRLDIR", "{TMP}/nocrls"),
        tcp("env-pgssl-protocol-versions")
            .env("PGSSLMINPROTOCOLVERSION", "TLSv1.2")
            .env("PGSSLMAXPROTOCOLVERSION", "TLSv1.3"),
        tcp("env-pgssl-protocol-range-inverted")
            .env("PGSSLMINPROTOCOLVERSION", "TLSv1.3")
            .env("PGSSLMAXPROTOCOLVERSION", "TLSv1.2"),
        tcp("env-pgsslminprotocolversion-bogus").env("PGSSLMINPROTOCOLVERSION", "TLSv9"),
        tcp("env-pggsslib-pggssdelegation")
            .env("PGGSSLIB", "gssapi")
            .env("PGGSSDELEGATION", "1"),
        tcp("env-pgminmaxprotocolversion")
            .env("PGMINPROTOCOLVERSION", "3.0")
            .env("PGMAXPROTOCOLVERSION", "3.0"),
        tcp("env-pgport-text").env("PGPORT", "abc"),
        tcp("env-pgport-zero").env("PGPORT", "0"),
    ]
}

fn precedence_cases() -> Vec<Case> {
    vec![
        case("prec-conninfo-beats-flags")
            .flags(&["-h", "/nonexistent", "-p", "1", "-U", "flaguser"])
            .conn("host=127.0.0.1 port={A} user=ciuser"),
        case("prec-uri-beats-flags")
            .flags(&["-h", "/nonexistent", "-U", "flaguser"])
            .conn("postgresql://uriuser@127.0.0.1:{A}"),
        case("prec-flags-beat-env")
            .flags(&["-h", "127.0.0.1", "-p", "{A}", "-U", "flaguser"])
            .env("PGHOST", "/nonexistent")
            .env("PGPORT", "1")
            .env("PGUSER", "envuser"),
        case("prec-conninfo-beats-env")
            .conn("host=127.0.0.1 port={A} user=ciuser")
            .env("PGHOST", "/nonexistent")
            .env("PGPORT", "1")
            .env("PGUSER", "envuser"),
        case("prec-db-flag")
            .flags(&["-h", "127.0.0.1", "-p", "{A}"])
            .db("flagdb"),
        case("prec-db-flag-beats-pgdatabase")
            .flags(&["-h", "127.0.0.1", "-p", "{A}"])
            .db("flagdb")
            .env("PGDATABASE", "envdb"),
        case("prec-empty-host-blocks-pghost")
            .eps(&ALL)
            .conn("host='' port={D}")
            .env("PGHOST", "127.0.0.1"),
        // The default port 5432 has no socket in S's directory: reaching S would mean
        // PGPORT was used.
        case("prec-empty-port-blocks-pgport")
            .eps(&ALL)
            .conn("host={S.dir} port=''")
            .env("PGPORT", "{S}"),
        case("prec-empty-user-blocks-pguser")
            .conn("host=127.0.0.1 port={A} user=''")
            .env("PGUSER", "envuser"),
        case("prec-empty-password-blocks-pgpassword")
            .conn("host=127.0.0.1 port={A} password=''")
            .env("PGPASSWORD", "envpw"),
        case("prec-empty-password-still-reads-pgpass")
            .conn("host=127.0.0.1 port={A} password=''")
            .env("PGPASSWORD", "envpw")
            .pgpass("*:*:*:*:from-pgpass\n"),
        case("prec-empty-dbname-blocks-pgdatabase")
            .conn("host=127.0.0.1 port={A} dbname=''")
            .env("PGDATABASE", "envdb"),
        case("prec-empty-host-flag")
            .flags(&["-h", "", "-p", "{A}"])
            .env("PGHOST", "127.0.0.1"),
        case("prec-empty-user-flag")
            .flags(&["-h", "127.0.0.1", "-p", "{A}", "-U", ""])
            .env("PGUSER", "envuser"),
        case("prec-port-flag-text").flags(&["-h", "127.0.0.1", "-p", "abc"]),
        case("prec-socket-dir-flag")
            .eps(&ALL)
            .flags(&["-h", "{S.dir}", "-p", "{S}", "-U", "flaguser"]),
        case("prec-conninfo-port-beats-flag")
            .flags(&["-p", "1"])
            .conn("host=127.0.0.1 port={A}"),
        case("prec-uri-port-beats-pgport")
            .conn("postgresql://127.0.0.1:{A}")
            .env("PGPORT", "1"),
        case("prec-db-flag-and-pgpass")
            .flags(&["-h", "127.0.0.1", "-p", "{A}"])
            .db("shop")
            .pgpass("*:*:postgres:*:no\n*:*:shop:*:for-shop\n"),
        case("prec-hostaddr-with-unresolvable-name")
            .conn("host=no-such-host.invalid hostaddr=127.0.0.1 port={A}")
            .pgpass("127.0.0.1:*:*:*:by-addr\nno-such-host.invalid:*:*:*:by-name\n"),
        case("prec-conninfo-host-with-pghostaddr")
            .conn("host=no-such-host.invalid port={A}")
            .env("PGHOSTADDR", "127.0.0.1"),
        case("prec-localhost-name").conn("host=localhost port={A}"),
    ]
}

fn pgpass_cases() -> Vec<Case> {
    let tcp = |id| case(id).conn("host=127.0.0.1 port={A}");
    vec![
        tcp("pgpass-exact-line").pgpass("127.0.0.1:{A}:*:root:pw-exact\n"),
        tcp("pgpass-wildcards").pgpass("*:*:*:*:pw-any\n"),
        tcp("pgpass-first-match-wins").pgpass("*:*:*:*:first\n127.0.0.1:{A}:*:root:second\n"),
        tcp("pgpass-skips-other-hosts").pgpass("otherhost:*:*:*:no\n127.0.0.1:{A}:*:*:yes\n"),
        tcp("pgpass-escaped-password").pgpass("*:*:*:*:pa\\:ss\\\\w\n"),
        case("pgpass-escaped-user")
            .conn("host=127.0.0.1 port={A} user='a:b'")
            .pgpass("*:*:*:a:b:wrong\n*:*:*:a\\:b:pw-ab\n"),
        tcp("pgpass-unescaped-colon-ends-password").pgpass("*:*:*:*:a:b\n"),
        tcp("pgpass-port-compared-as-text").pgpass("127.0.0.1:0{A}:*:*:padded\n"),
        tcp("pgpass-star-inside-field-is-literal").pgpass("127.0.0.*:*:*:*:glob\n"),
        tcp("pgpass-escaped-star-is-literal").pgpass("\\*:*:*:*:star\n"),
        case("pgpass-socket-dir-by-path")
            .eps(&ALL)
            .conn("host={S.dir} port={S}")
            .pgpass("localhost:*:*:*:by-localhost\n{S.dir}:{S}:*:*:by-path\n"),
        case("pgpass-socket-dir-not-localhost")
            .eps(&ALL)
            .conn("host={S.dir} port={S}")
            .pgpass("localhost:{S}:*:*:by-localhost\n"),
        case("pgpass-default-socket-is-localhost")
            .eps(&ALL)
            .env("PGPORT", "{D}")
            .pgpass("localhost:{D}:*:*:default-dir\n"),
        case("pgpass-default-socket-explicit")
            .eps(&ALL)
            .conn("host=/var/run/postgresql port={D}")
            .pgpass("/var/run/postgresql:*:*:*:by-path\nlocalhost:{D}:*:*:by-localhost\n"),
        tcp("pgpass-group-readable-ignored").file("{HOME}/.pgpass", "*:*:*:*:leaked\n", 0o640),
        tcp("pgpass-world-readable-ignored").file("{HOME}/.pgpass", "*:*:*:*:leaked\n", 0o604),
        tcp("pgpass-owner-read-only").file("{HOME}/.pgpass", "*:*:*:*:read-only\n", 0o400),
        case("pgpass-database-field")
            .conn("host=127.0.0.1 port={A} dbname=shop")
            .named()
            .pgpass("*:*:other:*:no\n*:*:shop:*:yes\n"),
        tcp("pgpass-default-database").pgpass("*:*:root:*:user-db\n*:*:*:*:fallback\n"),
        tcp("pgpass-user-field")
            .env("PGUSER", "bob")
            .pgpass("*:*:*:alice:no\n*:*:*:bob:yes\n"),
        tcp("pgpass-pgpassfile")
            .env("PGPASSFILE", "{TMP}/pw")
            .file("{TMP}/pw", "*:*:*:*:elsewhere\n", 0o600)
            .pgpass("*:*:*:*:home\n"),
        case("pgpass-passfile-keyword")
            .conn("host=127.0.0.1 port={A} passfile={TMP}/pw")
            .env("PGPASSFILE", "{TMP}/other")
            .file("{TMP}/pw", "*:*:*:*:keyword\n", 0o600)
            .file("{TMP}/other", "*:*:*:*:env\n", 0o600),
        tcp("pgpass-pgpassword-beats-file")
            .env("PGPASSWORD", "envpw")
            .pgpass("*:*:*:*:file\n"),
        case("pgpass-uri-password-beats-file")
            .conn("postgresql://root:uripw@127.0.0.1:{A}")
            .pgpass("*:*:*:*:file\n"),
        tcp("pgpass-comments-and-blank-lines").pgpass("# a comment\n\n*:*:*:*:after\n"),
        tcp("pgpass-short-line-ignored").pgpass("127.0.0.1:{A}:*\n*:*:*:*:ok\n"),
        tcp("pgpass-crlf-line-ending").pgpass("*:*:*:*:crlf\r\n"),
        tcp("pgpass-empty-first-match").pgpass("*:*:*:*:\n*:*:*:*:second\n"),
        case("pgpass-hostaddr-only")
            .conn("hostaddr=127.0.0.1 port={A}")
            .pgpass("localhost:*:*:*:by-name\n127.0.0.1:{A}:*:*:by-addr\n"),
        case("pgpass-host-beats-hostaddr")
            .conn("host=localhost hostaddr=127.0.0.1 port={A}")
            .pgpass("127.0.0.1:*:*:*:by-addr\nlocalhost:*:*:*:by-name\n"),
        tcp("pgpass-is-a-directory")
            .env("PGPASSFILE", "{TMP}/pwdir")
            .dir("{TMP}/pwdir"),
        tcp("pgpass-missing-file").env("PGPASSFILE", "{TMP}/none"),
    ]
}

fn service_cases() -> Vec<Case> {
    let svc = "[svc]\nhost=127.0.0.1\nport={A}\nuser=svcuser\n";
    let s = |id| case(id).env("PGSERVICE", "svc");
    vec![
        s("svc-pgservicefile").svcfile(svc),
        case("svc-conninfo-service")
            .conn("service=svc")
            .svcfile(svc),
        case("svc-conninfo-servicefile")
            .conn("service=svc servicefile={TMP}/svc.conf")
            .file("{TMP}/svc.conf", svc, 0o644),
        s("svc-home-file").file("{HOME}/.pg_service.conf", svc, 0o644),
        s("svc-pgsysconfdir").env("PGSYSCONFDIR", "{TMP}/sys").file(
            "{TMP}/sys/pg_service.conf",
            svc,
            0o644,
        ),
        s("svc-home-beats-system")
            .env("PGSYSCONFDIR", "{TMP}/sys")
            .file(
                "{TMP}/sys/pg_service.conf",
                "[svc]\nhost=127.0.0.1\nport={A}\nuser=sysuser\n",
                0o644,
            )
            .file(
                "{HOME}/.pg_service.conf",
                "[svc]\nhost=127.0.0.1\nport={A}\nuser=homeuser\n",
                0o644,
            ),
        s("svc-falls-back-to-system")
            .env("PGSYSCONFDIR", "{TMP}/sys")
            .file(
                "{TMP}/sys/pg_service.conf",
                "[svc]\nhost=127.0.0.1\nport={A}\nuser=sysuser\n",
                0o644,
            )
            .file(
                "{HOME}/.pg_service.conf",
                "[other]\nhost=127.0.0.1\nport={A}\nuser=homeuser\n",
                0o644,
            ),
        s("svc-pgservicefile-replaces-home")
            .svcfile("[svc]\nhost=127.0.0.1\nport={A}\nuser=fileuser\n")
            .file(
                "{HOME}/.pg_service.conf",
                "[svc]\nhost=127.0.0.1\nport={A}\nuser=homeuser\n",
                0o644,
            ),
        s("svc-header-with-comment")
            .svcfile("[svc] # the shop\nhost=127.0.0.1\nport={A}\nuser=svcuser\n"),
        s("svc-stray-bracket-ends-section")
            .svcfile("[svc]\nhost=127.0.0.1\nport={A}\n[other\nuser=after\n"),
        s("svc-stray-bracket-before")
            .svcfile("[other\nuser=before\n[svc]\nhost=127.0.0.1\nport={A}\n"),
        s("svc-name-prefix-not-matched")
            .svcfile("[svcx]\nuser=wrong\n[svc]\nhost=127.0.0.1\nport={A}\nuser=svcuser\n"),
        s("svc-other-section-ignored")
            .svcfile("[other]\nuser=other\npassword=other\n[svc]\nhost=127.0.0.1\nport={A}\n"),
        s("svc-whitespace-trimmed")
            .svcfile("  [svc]  \n  host=127.0.0.1\n\tport={A}  \n\n# c\n  user=svcuser\n"),
        case("svc-conninfo-beats-service")
            .conn("service=svc user=ciuser")
            .svcfile(svc),
        s("svc-service-beats-env")
            .env("PGUSER", "envuser")
            .env("PGPORT", "1")
            .svcfile(svc),
        s("svc-flag-beats-service")
            .flags(&["-U", "flaguser"])
            .svcfile(svc),
        s("svc-not-found").svcfile("[other]\nhost=127.0.0.1\n"),
        s("svc-syntax-error").svcfile("[svc]\nhost=127.0.0.1\noops\n"),
        s("svc-spaces-around-equals").svcfile("[svc]\nhost = 127.0.0.1\nport={A}\n"),
        s("svc-unknown-keyword").svcfile("[svc]\nhost=127.0.0.1\ncolour=blue\n"),
        s("svc-requiressl-in-file").svcfile("[svc]\nhost=127.0.0.1\nport={A}\nrequiressl=1\n"),
        s("svc-first-setting-wins")
            .svcfile("[svc]\nhost=127.0.0.1\nport={A}\nuser=first\nuser=second\n"),
        s("svc-password").svcfile("[svc]\nhost=127.0.0.1\nport={A}\npassword=svcpw\n"),
        s("svc-dbname")
            .named()
            .svcfile("[svc]\nhost=127.0.0.1\nport={A}\ndbname=svcdb\n"),
        s("svc-socket-dir")
            .eps(&ALL)
            .svcfile("[svc]\nhost={S.dir}\nport={S}\n"),
        s("svc-sslmode-require")
            .svcfile("[svc]\nhost=127.0.0.1\nport={A}\nsslmode=require\npassword=pw\n"),
        case("svc-empty-pgservice")
            .env("PGSERVICE", "")
            .svcfile(svc),
        s("svc-pgsysconfdir-without-file").env("PGSYSCONFDIR", "{TMP}/nowhere"),
    ]
}

fn ssl_cases() -> Vec<Case> {
    let c = |id, extra: &str| {
        case(id)
            .conn(&format!("host=127.0.0.1 port={{A}} {extra}"))
            .env("PGPASSWORD", "pw")
    };
    vec![
        c("ssl-prefer-default", ""),
        c("ssl-disable", "sslmode=disable"),
        c("ssl-require-refused", "sslmode=require"),
        c("ssl-allow", "sslmode=allow"),
        c("ssl-requiressl", "requiressl=1"),
        c("ssl-requiressl-then-prefer", "requiressl=1 sslmode=prefer"),
        c(
            "ssl-disable-then-requiressl",
            "sslmode=disable requiressl=1",
        ),
        c("ssl-requiressl-0-hides-pgsslmode", "requiressl=0").env("PGSSLMODE", "require"),
        c("ssl-requiressl-beats-pgsslmode", "requiressl=1").env("PGSSLMODE", "disable"),
        case("ssl-uri-requiressl")
            .conn("postgresql://127.0.0.1:{A}/?requiressl=1")
            .env("PGPASSWORD", "pw"),
        case("ssl-uri-ssl-true")
            .conn("postgresql://127.0.0.1:{A}/?ssl=true")
            .env("PGPASSWORD", "pw"),
        case("ssl-require-on-socket")
            .eps(&ALL)
            .conn("host={S.dir} port={S} sslmode=require")
            .env("PGPASSWORD", "pw"),
        c("ssl-verify-full-without-root-cert", "sslmode=verify-full"),
        c("ssl-gssencmode-require", "gssencmode=require"),
    ]
}

fn multi_host_cases() -> Vec<Case> {
    let two = "host=127.0.0.1,127.0.0.1 port={A},{B}";
    let tcp2 = |a, b| [("A", Tcp4, a), ("B", Tcp4, b)];
    vec![
        case("multi-first-down")
            .eps(&tcp2(Down, Password))
            .conn(two),
        case("multi-first-starting-up")
            .eps(&tcp2(StartingUp, Password))
            .conn(two),
        case("multi-auth-failure-stops")
            .eps(&tcp2(Password, Password))
            .conn(two)
            .env("PGPASSWORD", "pw"),
        case("multi-all-down").eps(&tcp2(Down, Down)).conn(two),
        case("multi-port-count-mismatch")
            .eps(&tcp2(Password, Password))
            .conn("host=127.0.0.1,127.0.0.1,127.0.0.1 port={A},{B}"),
        case("multi-uri")
            .eps(&tcp2(Down, Password))
            .conn("postgresql://127.0.0.1:{A},127.0.0.1:{B}/db")
            .named(),
        case("multi-pghost-list")
            .eps(&tcp2(StartingUp, Password))
            .env("PGHOST", "127.0.0.1,127.0.0.1")
            .env("PGPORT", "{A},{B}"),
        case("multi-hostaddr-list")
            .eps(&tcp2(Down, Password))
            .conn("hostaddr=127.0.0.1,127.0.0.1 port={A},{B}"),
        case("multi-target-session-attrs-any")
            .eps(&tcp2(StartingUp, Password))
            .conn("host=127.0.0.1,127.0.0.1 port={A},{B} target_session_attrs=any"),
        case("multi-require-ssl-stops")
            .eps(&tcp2(Password, Password))
            .conn("host=127.0.0.1,127.0.0.1 port={A},{B} sslmode=require")
            .env("PGPASSWORD", "pw"),
        case("multi-socket-then-tcp")
            .eps(&[("S", Socket, Down), ("A", Tcp4, Password)])
            .conn("host={S.dir},127.0.0.1 port={S},{A}"),
        case("multi-empty-host-is-default-socket")
            .eps(&[("D", DefaultSocket, StartingUp), ("A", Tcp4, Password)])
            .conn("host=,127.0.0.1 port={D},{A}"),
        case("multi-pgpass-per-host")
            .eps(&tcp2(StartingUp, Password))
            .conn(two)
            .pgpass("127.0.0.1:{A}:*:*:for-a\n127.0.0.1:{B}:*:*:for-b\n"),
        case("multi-ipv4-then-ipv6")
            .eps(&[("A", Tcp4, Down), ("B", Tcp6, Password)])
            .conn("host=127.0.0.1,::1 port={A},{B}"),
    ]
}

fn bad_input_cases() -> Vec<Case> {
    let c = |id, extra: &str| case(id).conn(&format!("host=127.0.0.1 port={{A}} {extra}"));
    vec![
        case("bad-port-text").conn("host=127.0.0.1 port=abc"),
        case("bad-port-too-big").conn("host=127.0.0.1 port=70000"),
        c("bad-sslmode", "sslmode=bogus"),
        case("bad-hostaddr").conn("hostaddr=not-an-ip port={A}"),
        c("bad-connect-timeout", "connect_timeout=abc"),
        c("bad-channel-binding", "channel_binding=bogus"),
        c("bad-gssencmode", "gssencmode=bogus"),
        c("bad-target-session-attrs", "target_session_attrs=bogus"),
        case("bad-uri-percent").conn("postgresql://127.0.0.1:{A}/%zz"),
        case("bad-uri-unknown-parameter").conn("postgresql://127.0.0.1:{A}?colour=blue"),
        case("bad-abstract-socket").conn("host=@pgkill-diff port={A}"),
        c("bad-sslcert", "sslcert={TMP}/client.crt"),
        c("bad-replication", "replication=database"),
        c(
            "bad-load-balance-hosts-keyword",
            "load_balance_hosts=disable",
        ),
        c("bad-require-auth-keyword", "require_auth=password").env("PGPASSWORD", "pw"),
    ]
}

fn all_cases() -> Vec<Case> {
    [
        uri_cases(),
        quoting_cases(),
        env_cases(),
        precedence_cases(),
        pgpass_cases(),
        service_cases(),
        ssl_cases(),
        multi_host_cases(),
        bad_input_cases(),
    ]
    .concat()
}

/// What one client did with a case.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    /// The connections the server saw, in order.
    contacts: Vec<Record>,
    /// Whether the client gave up before trying to reach any endpoint.
    rejected: bool,
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rejected {
            return write!(f, "rejected before any contact");
        }
        if self.contacts.is_empty() {
            return write!(f, "tried, reached no endpoint");
        }
        let list: Vec<String> = self.contacts.iter().map(ToString::to_string).collect();
        write!(f, "{}", list.join(" | "))
    }
}

struct Run {
    code: i32,
    stderr: String,
}

struct Placeholders {
    values: Vec<(String, String)>,
}

impl Placeholders {
    fn apply(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for (k, v) in &self.values {
            out = out.replace(k, v);
        }
        out
    }
}

/// Runs `cmd` with a time limit; stdin is not a terminal.
fn run_limited(mut cmd: Command, what: &str) -> Result<Run> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CLIENT_TIMEOUT) {
        Ok(out) => out?,
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            bail!("{what} did not finish within {CLIENT_TIMEOUT:?}");
        }
    };
    let code = out
        .status
        .code()
        .ok_or_else(|| anyhow!("{what} died by a signal: {}", out.status))?;
    Ok(Run {
        code,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// What a failed run's message says about whether a server was tried.
fn psql_tried(stderr: &str) -> bool {
    stderr.contains("connection to server") || stderr.contains("could not translate host name")
}

fn pgkill_tried(stderr: &str) -> bool {
    stderr.contains("server at host=") || stderr.contains("server behind")
}

struct Outcome {
    psql: Observed,
    pgkill: Observed,
    psql_stderr: String,
    pgkill_stderr: String,
    /// Problems with pgkill's behaviour whatever libpq does.
    problems: Vec<String>,
}

fn run_case(rt: &tokio::runtime::Runtime, psql: &Path, c: &Case) -> Result<Outcome> {
    let tmp = tempfile::Builder::new().prefix("pgkill-diff-").tempdir()?;
    let home = tmp.path().join("home");
    std::fs::create_dir(&home)?;
    let server = FakeServer::start(rt, &c.endpoints)?;
    let mut values = Vec::new();
    for e in &server.endpoints {
        if let Some(dir) = &e.dir {
            values.push((format!("{{{}.dir}}", e.label), dir.display().to_string()));
        }
        values.push((format!("{{{}}}", e.label), e.port.to_string()));
    }
    values.push(("{HOME}".into(), home.display().to_string()));
    values.push(("{TMP}".into(), tmp.path().display().to_string()));
    let ph = Placeholders { values };

    for (path, text, mode) in &c.files {
        let path = PathBuf::from(ph.apply(path));
        match text {
            Some(text) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, ph.apply(text))?;
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(*mode),
                )?;
            }
            None => std::fs::create_dir_all(&path)?,
        }
    }
    let prepare = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("NO_COLOR", "1");
        for (k, v) in &c.env {
            cmd.env(k, ph.apply(v));
        }
    };
    let flags: Vec<String> = c.flags.iter().map(|f| ph.apply(f)).collect();
    let conninfo = c.conninfo.as_deref().map(|s| ph.apply(s));

    let mut cmd = Command::new(psql);
    prepare(&mut cmd);
    cmd.args(["-X", "-w", "-c", "SELECT 1"]).args(&flags);
    if let Some(db) = &c.db_flag {
        cmd.args(["-d", db]);
    }
    if let Some(ci) = &conninfo {
        cmd.arg(ci);
    }
    let p = run_limited(cmd, "psql")?;
    let psql_contacts = server.take(Duration::from_secs(10))?;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    prepare(&mut cmd);
    cmd.args(&flags);
    if let Some(db) = &c.db_flag {
        cmd.args(["--maintenance-db", db]);
    }
    if let Some(ci) = &conninfo {
        cmd.arg(ci);
    }
    cmd.arg("ls");
    let k = run_limited(cmd, "pgkill")?;
    let mut pgkill_contacts = server.take(Duration::from_secs(10))?;
    drop(server);

    if !c.db_named {
        for r in &mut pgkill_contacts {
            if r.database.as_deref() == Some("postgres") {
                r.database = r.user.clone();
            }
        }
    }
    let psql_obs = Observed {
        rejected: psql_contacts.is_empty() && !psql_tried(&p.stderr),
        contacts: psql_contacts,
    };
    let pgkill_obs = Observed {
        rejected: pgkill_contacts.is_empty() && !pgkill_tried(&k.stderr),
        contacts: pgkill_contacts,
    };
    let mut problems = Vec::new();
    if p.code == 0 {
        problems.push("psql connected to the fake server".to_owned());
    }
    if k.code != 2 {
        problems.push(format!("pgkill exited {} (want 2)", k.code));
    }
    if k.stderr.contains("panicked") || k.stderr.contains("RUST_BACKTRACE") {
        problems.push("pgkill panicked".to_owned());
    }
    if pgkill_obs.rejected && k.stderr.lines().count() != 1 {
        problems.push(format!(
            "bad input must be one line on stderr, pgkill wrote {}",
            k.stderr.lines().count()
        ));
    }
    for r in psql_obs.contacts.iter().chain(&pgkill_obs.contacts) {
        if let Some(pw) = r.password.as_deref().filter(|pw| pw.len() > 3) {
            if k.stderr.contains(pw) {
                problems.push("pgkill printed the password".to_owned());
            }
        }
    }
    Ok(Outcome {
        psql: psql_obs,
        pgkill: pgkill_obs,
        psql_stderr: p.stderr,
        pgkill_stderr: k.stderr,
        problems,
    })
}

/// The case ids listed in the README section (bullets starting with an id in backticks),
/// with the sub-heading each is under.
fn listed_differences(readme: &str) -> Result<BTreeMap<String, String>> {
    let start = readme
        .find(SECTION)
        .ok_or_else(|| anyhow!("README.md has no section \"{SECTION}\""))?;
    let body = &readme[start + SECTION.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    let mut listed = BTreeMap::new();
    let mut heading = String::new();
    for line in body[..end].lines() {
        if let Some(h) = line.strip_prefix("### ") {
            heading = h.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("- `") {
            let id = rest
                .split('`')
                .next()
                .ok_or_else(|| anyhow!("bad bullet: {line}"))?;
            if listed.insert(id.to_owned(), heading.clone()).is_some() {
                bail!("{id} is listed twice in the README");
            }
        }
    }
    Ok(listed)
}

/// One trial for the whole comparison (the exact-list check needs every case), run
/// through libtest-mimic so that `cargo nextest` and `cargo test` can list and run it.
fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let trial = libtest_mimic::Trial::test("pgkill_connects_where_psql_does", || {
        run().map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
    });
    libtest_mimic::run(&args, vec![trial]).exit()
}

fn run() -> Result<()> {
    let psql = support::client_program("psql").context(
        "the differential test runs psql (libpq) as the oracle and cannot do without it",
    )?;
    let version = Command::new(&psql)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", psql.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    if !Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        bail!(
            "{DEFAULT_SOCKET_DIR} does not exist: the differential test listens there (the \
             default socket directory of libpq and pgkill); create it (mkdir -p \
             {DEFAULT_SOCKET_DIR}) and run the test as a user who may write there"
        );
    }
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .with_context(|| format!("reading {}", readme_path.display()))?;
    let listed = listed_differences(&readme)?;

    let cases = all_cases();
    let mut ids = BTreeSet::new();
    for c in &cases {
        if !ids.insert(c.id) {
            bail!("case id {} is used twice", c.id);
        }
    }
    let only = std::env::var("PGKILL_DIFF_ONLY").ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    let verbose = std::env::var_os("PGKILL_DIFF_VERBOSE").is_some();
    let mut failures = Vec::new();
    let mut differing = BTreeSet::new();
    let mut agreeing = 0;
    let mut ran = 0;
    for c in &cases {
        if only.as_deref().is_some_and(|o| !c.id.contains(o)) {
            continue;
        }
        ran += 1;
        let o = run_case(&rt, &psql, c).with_context(|| format!("case {}", c.id))?;
        let differs = o.psql != o.pgkill;
        if differs {
            differing.insert(c.id);
        } else {
            agreeing += 1;
        }
        let listed_here = listed.contains_key(c.id);
        let detail = || {
            format!(
                "    input:  {}\n    psql:   {}\n            {}\n    pgkill: {}\n            {}",
                describe(c),
                o.psql,
                o.psql_stderr.trim().replace('\n', "\n            "),
                o.pgkill,
                o.pgkill_stderr.trim().replace('\n', "\n            "),
            )
        };
        if verbose {
            println!(
                "{} {}\n{}",
                if differs { "DIFF" } else { "same" },
                c.id,
                detail()
            );
        }
        if differs && !listed_here {
            failures.push(format!(
                "`{}` differs and is not listed in the README:\n{}",
                c.id,
                detail()
            ));
        } else if !differs && listed_here {
            failures.push(format!(
                "`{}` is listed in the README as a difference but both now agree: remove it from the list\n{}",
                c.id,
                detail()
            ));
        }
        for p in &o.problems {
            failures.push(format!("`{}`: {p}\n{}", c.id, detail()));
        }
    }
    if only.is_none() {
        for id in listed.keys() {
            if !ids.contains(id.as_str()) {
                failures.push(format!("README lists `{id}`, which is no case"));
            }
        }
    }
    println!(
        "differential ({version}): {ran} cases, {agreeing} agree, {} differ as listed in README.md",
        differing.len()
    );
    if failures.is_empty() {
        return Ok(());
    }
    bail!(
        "{} unexpected result(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    )
}

fn describe(c: &Case) -> String {
    let mut parts = Vec::new();
    for (k, v) in &c.env {
        parts.push(format!("{k}={v:?}"));
    }
    for (path, text, mode) in &c.files {
        match text {
            Some(t) => parts.push(format!("{path} ({mode:o}) = {t:?}")),
            None => parts.push(format!("{path}/")),
        }
    }
    parts.extend(c.flags.iter().map(|f| format!("{f:?}")));
    if let Some(db) = &c.db_flag {
        parts.push(format!("-d/--maintenance-db {db:?}"));
    }
    if let Some(ci) = &c.conninfo {
        parts.push(format!("{ci:?}"));
    }
    let eps: Vec<String> = c
        .endpoints
        .iter()
        .map(|(l, w, b)| format!("{l}={w:?}/{b:?}"))
        .collect();
    format!("[{}] {}", eps.join(" "), parts.join(" "))
}

//! Which sessions a command is about: the filters of the CLI contract.
//!
//! Repeated filters of one kind are OR-ed, different kinds AND-ed. A [`Filter`] is plain
//! data; the planner turns it into SQL evaluated on the server (so the signalling
//! statement can re-check it), and [`Filter::matches_row`] evaluates the same rules in
//! process (used by `top` and by tests as an independent check).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::session::Session;

/// A client-address filter: a network (`10.0.0.0/8`, `::1/128`, a bare address) or
/// `local` for Unix-socket sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// Sessions connected over a Unix socket.
    Local,
    /// Sessions whose client address is inside this network.
    Net(ipnet::IpNet),
}

/// A client filter that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid client address {0:?}: use an address or network such as 10.0.0.0/8, 192.168.1.7, ::1/128, or `local` for Unix-socket sessions")]
pub struct ClientMatchError(pub String);

impl FromStr for ClientMatch {
    type Err = ClientMatchError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        if text.eq_ignore_ascii_case("local") {
            return Ok(ClientMatch::Local);
        }
        if let Ok(net) = text.parse::<ipnet::IpNet>() {
            return Ok(ClientMatch::Net(net.trunc()));
        }
        match text.parse::<IpAddr>() {
            Ok(addr) => Ok(ClientMatch::Net(ipnet::IpNet::from(addr))),
            Err(_) => Err(ClientMatchError(s.to_owned())),
        }
    }
}

impl ClientMatch {
    /// Whether a session with this client address / port matches.
    pub fn matches(&self, addr: Option<IpAddr>, port: Option<i32>) -> bool {
        match self {
            ClientMatch::Local => addr.is_none() && port == Some(-1),
            ClientMatch::Net(net) => addr.is_some_and(|a| net.contains(&a)),
        }
    }
}

/// A session state as the CLI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// `active`: running a statement.
    Active,
    /// `idle`: waiting for a command.
    Idle,
    /// `idle in transaction`.
    IdleInTransaction,
    /// `idle in transaction (aborted)`.
    IdleInTransactionAborted,
    /// `fastpath function call`.
    Fastpath,
    /// `disabled` (track_activities off).
    Disabled,
    /// `starting` (PostgreSQL 18: still connecting).
    Starting,
}

impl State {
    /// Every state, for help texts.
    pub const ALL: [State; 7] = [
        State::Active,
        State::Idle,
        State::IdleInTransaction,
        State::IdleInTransactionAborted,
        State::Fastpath,
        State::Disabled,
        State::Starting,
    ];

    /// The CLI name (`idle-in-transaction`).
    pub fn cli_name(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Idle => "idle",
            State::IdleInTransaction => "idle-in-transaction",
            State::IdleInTransactionAborted => "idle-in-transaction-aborted",
            State::Fastpath => "fastpath",
            State::Disabled => "disabled",
            State::Starting => "starting",
        }
    }

    /// The value of `pg_stat_activity.state`.
    pub fn server_name(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Idle => "idle",
            State::IdleInTransaction => "idle in transaction",
            State::IdleInTransactionAborted => "idle in transaction (aborted)",
            State::Fastpath => "fastpath function call",
            State::Disabled => "disabled",
            State::Starting => "starting",
        }
    }
}

/// A state name that is not one of [`State::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}: use one of active, idle, idle-in-transaction, idle-in-transaction-aborted, fastpath, disabled, starting")]
pub struct StateError(pub String);

impl FromStr for State {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        let norm = norm.replace("(aborted)", "aborted");
        State::ALL
            .into_iter()
            .find(|st| st.cli_name() == norm || st.server_name() == s.trim())
            .ok_or_else(|| StateError(s.to_owned()))
    }
}

/// Translates a shell-style glob (`*`, `?`) into an anchored POSIX regular expression
/// that PostgreSQL's `~` evaluates the same way (every other character is literal).
pub fn glob_to_regex(glob: &str) -> String {
    let mut re = String::with_capacity(glob.len() + 2);
    re.push('^');
    for ch in glob.chars() {
        match ch {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c if c.is_ascii_alphanumeric() || !c.is_ascii() || c == ' ' || c == '_' => re.push(c),
            c => {
                re.push('\\');
                re.push(c);
            }
        }
    }
    re.push('$');
    re
}

/// Matches a glob against text in process (same rules as [`glob_to_regex`]).
pub fn glob_matches(glob: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let p: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

/// The selection of a command. Empty means "every client session".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// `--db`: database names.
    pub databases: Vec<String>,
    /// `--user`: role names.
    pub users: Vec<String>,
    /// `--app`: application_name globs.
    pub apps: Vec<String>,
    /// `--client`: client networks or `local`.
    pub clients: Vec<ClientMatch>,
    /// `--state`.
    pub states: Vec<State>,
    /// `--pid`.
    pub pids: Vec<i32>,
    /// `--idle-for`: not running a statement (idle, or idle in a transaction) for at least this long.
    pub idle_for: Option<Duration>,
    /// `--xact-older`: transaction open for at least this long.
    pub xact_older: Option<Duration>,
    /// `--query-older`: statement running for at least this long.
    pub query_older: Option<Duration>,
    /// `--backend-older`: connected for at least this long.
    pub backend_older: Option<Duration>,
    /// `--query`: regular expressions (PostgreSQL's syntax) on the query text.
    pub queries: Vec<String>,
    /// `--blocking`: sessions that others wait for.
    pub blocking: bool,
    /// `top`'s `waiting` word: sessions waiting on a lock (`wait_event_type = 'Lock'`).
    pub waiting: bool,
    /// `--blocking-for`: sessions on whose locks some session has been waiting for at
    /// least this long (the waiter's time since its `state_change`: its waiting statement
    /// started then, and it waits on a lock).
    pub blocking_for: Option<Duration>,
    /// `--holding-xmin`: sessions whose snapshot (`backend_xmin`) or transaction id
    /// (`backend_xid`) is the server's xmin horizon: nothing else (no other backend,
    /// replication slot or prepared transaction) is older.
    pub holding_xmin: bool,
    /// `--exclude-db`: never sessions of these databases (wins over every inclusion).
    pub exclude_databases: Vec<String>,
    /// `--exclude-user`: never sessions of these roles.
    pub exclude_users: Vec<String>,
    /// `--exclude-app`: never sessions whose application_name matches one of these globs.
    pub exclude_apps: Vec<String>,
    /// `--exclude-client`: never sessions from these networks (or `local`), nor sessions
    /// whose client address the caller may not see (they may be in one of them).
    pub exclude_clients: Vec<ClientMatch>,
    /// `--newest N`.
    pub newest: Option<u32>,
    /// `--oldest N`.
    pub oldest: Option<u32>,
    /// `--include-superusers`: signal sessions of superusers too (protected by default).
    pub include_superusers: bool,
    /// `--all-backends`: not only client backends (walsenders, workers, …).
    pub all_backends: bool,
    /// Further filters that must match too (AND): e.g. what a `top` user typed on top of
    /// the command line's filters. Re-checked with the rest inside the statement that
    /// signals (their `--newest/--oldest` are not: those pick from a listing).
    pub also: Vec<Filter>,
}

/// States in which a session is not running a statement (for `--idle-for`).
pub const IDLE_STATES: [&str; 3] = [
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
];

impl Filter {
    /// Evaluates the per-row filters in process, against `now` (the server's clock).
    /// `--newest/--oldest` are set-level and applied by [`Filter::limit`]; `--blocking`
    /// uses the session's `blocking` count, `--blocking-for` its `waited_on_since` and
    /// `--holding-xmin` its `holds_xmin`, all computed by the server (a row without a
    /// backend, such as a pooler's application connection, has none and matches neither). `queries` (PostgreSQL regular expressions) are
    /// not evaluated here: only the server evaluates them exactly.
    pub fn matches_row(&self, s: &Session) -> bool {
        let older = |at: Option<chrono::DateTime<chrono::Utc>>, d: Option<Duration>| match d {
            None => true,
            Some(d) => at.is_some_and(|at| {
                s.now
                    .signed_duration_since(at)
                    .to_std()
                    .is_ok_and(|age| age >= d)
            }),
        };
        let any = |list: &[String], v: &Option<String>| {
            list.is_empty() || v.as_ref().is_some_and(|v| list.contains(v))
        };
        (self.all_backends || s.is_client())
            && any(&self.databases, &s.database)
            && any(&self.users, &s.user)
            && (self.apps.is_empty()
                || s.application_name
                    .as_deref()
                    .is_some_and(|a| self.apps.iter().any(|g| glob_matches(g, a))))
            && (self.clients.is_empty()
                || self
                    .clients
                    .iter()
                    .any(|c| c.matches(s.client_addr, s.client_port)))
            && (self.states.is_empty()
                || s.state
                    .as_deref()
                    .is_some_and(|st| self.states.iter().any(|w| w.server_name() == st)))
            && (self.pids.is_empty() || self.pids.contains(&s.pid))
            && (self.idle_for.is_none()
                || (s
                    .state
                    .as_deref()
                    .is_some_and(|st| IDLE_STATES.contains(&st))
                    && older(s.state_change, self.idle_for)))
            && older(s.xact_start, self.xact_older)
            && (self.query_older.is_none()
                || (s.state.as_deref() == Some("active") && older(s.query_start, self.query_older)))
            && older(s.backend_start, self.backend_older)
            && (!self.blocking || s.blocking > 0)
            && (!self.waiting || s.wait_event_type.as_deref() == Some("Lock"))
            && (self.blocking_for.is_none() || older(s.waited_on_since, self.blocking_for))
            && (!self.holding_xmin || s.holds_xmin)
            && !self.excludes(s)
            && self.also.iter().all(|f| f.matches_row(s))
    }

    /// Whether one of the exclusions (`--exclude-*`) rules `s` out.
    pub fn excludes(&self, s: &Session) -> bool {
        let listed =
            |list: &[String], v: &Option<String>| v.as_ref().is_some_and(|v| list.contains(v));
        // A session whose client columns are hidden (no backend type, no port) may be
        // in an excluded network: it is excluded too.
        let hidden_client = s.backend_type.is_none() && s.client_port.is_none();
        listed(&self.exclude_databases, &s.database)
            || listed(&self.exclude_users, &s.user)
            || s.application_name
                .as_deref()
                .is_some_and(|a| self.exclude_apps.iter().any(|g| glob_matches(g, a)))
            || (!self.exclude_clients.is_empty()
                && (hidden_client
                    || self
                        .exclude_clients
                        .iter()
                        .any(|c| c.matches(s.client_addr, s.client_port))))
    }

    /// This filter, and `other` too.
    pub fn and(mut self, other: Filter) -> Filter {
        self.also.push(other);
        self
    }

    /// Sessions whose query text contains `text`, ignoring case (as `top`'s `q:` words
    /// match): for the server, a case-insensitive regular expression matching it literally.
    pub fn query_contains(text: &str) -> Filter {
        let mut re = String::from("(?i)");
        for c in text.chars() {
            // In PostgreSQL's regular expressions a backslash before a character that is
            // not alphanumeric makes it literal.
            if !c.is_alphanumeric() {
                re.push('\\');
            }
            re.push(c);
        }
        Filter {
            queries: vec![re],
            all_backends: true,
            ..Filter::default()
        }
    }

    /// Applies `--newest/--oldest` to sessions already filtered, keeping backend-start order.
    pub fn limit(&self, mut sessions: Vec<Session>) -> Vec<Session> {
        sessions.sort_by_key(|s| (s.backend_start, s.pid));
        if let Some(n) = self.oldest {
            sessions.truncate(n as usize);
        }
        if let Some(n) = self.newest {
            let n = n as usize;
            if sessions.len() > n {
                sessions.drain(..sessions.len() - n);
            }
        }
        sessions
    }
}

/// The keys of `top`'s filter language, for help texts and error messages.
pub const FILTER_KEYS: &str = "db, user, app, client, state, pid, idle, xact, query-age, backend, blocking-for, q; -db, -user, -app, -client exclude; or the words `blocking`, `waiting`, `holding-xmin`";

/// Parses the filter language of `pgkill top` (the CLI flags as `key:value` words):
/// `db:shop user:app app:web-* client:10.0.0.0/8 state:idle-in-transaction pid:42
/// idle:5m xact:5m query-age:30s backend:1h blocking-for:30s q:TEXT blocking
/// waiting holding-xmin`, and the exclusions `-db:NAME -user:ROLE -app:GLOB -client:CIDR`
/// (`--exclude-*`: an exclusion wins over every inclusion). Words of one key are OR-ed,
/// different keys AND-ed, as on the command line. `q:` values are returned separately:
/// the live view matches them as case-insensitive substrings of the query text.
pub fn parse_words(text: &str) -> Result<(Filter, Vec<String>), String> {
    let mut f = Filter::default();
    let mut contains = Vec::new();
    for word in text.split_whitespace() {
        match word {
            "blocking" => {
                f.blocking = true;
                continue;
            }
            "waiting" => {
                f.waiting = true;
                continue;
            }
            "holding-xmin" => {
                f.holding_xmin = true;
                continue;
            }
            _ => {}
        }
        let (key, value) = word
            .split_once(':')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| format!("{word:?}: use key:value ({FILTER_KEYS})"))?;
        let dur = |v: &str| crate::duration::parse_duration(v).map_err(|e| e.to_string());
        let client = |v: &str| v.parse().map_err(|e: ClientMatchError| e.to_string());
        match key {
            "db" => f.databases.push(value.to_owned()),
            "user" => f.users.push(value.to_owned()),
            "app" => f.apps.push(value.to_owned()),
            "client" => f.clients.push(client(value)?),
            "-db" => f.exclude_databases.push(value.to_owned()),
            "-user" => f.exclude_users.push(value.to_owned()),
            "-app" => f.exclude_apps.push(value.to_owned()),
            "-client" => f.exclude_clients.push(client(value)?),
            "state" => f
                .states
                .push(value.parse().map_err(|e: StateError| e.to_string())?),
            "pid" => f.pids.push(
                value
                    .parse()
                    .map_err(|_| format!("pid:{value}: not a process id"))?,
            ),
            "idle" => f.idle_for = Some(dur(value)?),
            "xact" => f.xact_older = Some(dur(value)?),
            "query-age" => f.query_older = Some(dur(value)?),
            "backend" => f.backend_older = Some(dur(value)?),
            "blocking-for" => f.blocking_for = Some(dur(value)?),
            "q" => contains.push(value.to_lowercase()),
            other => return Err(format!("unknown filter key {other:?}: use {FILTER_KEYS}")),
        }
    }
    Ok((f, contains))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_words() {
        let (f, q) = parse_words(
            "db:shop db:other state:idle-in-transaction user:app idle:5m q:UPDATE blocking",
        )
        .unwrap();
        assert_eq!(f.databases, ["shop", "other"]);
        assert_eq!(f.states, [State::IdleInTransaction]);
        assert_eq!(f.users, ["app"]);
        assert_eq!(f.idle_for, Some(Duration::from_secs(300)));
        assert!(f.blocking);
        assert_eq!(q, ["update"]);
        assert_eq!(parse_words("").unwrap().0, Filter::default());
        for bad in [
            "db:",
            "shop",
            "state:sleeping",
            "idle:5x",
            "colour:red",
            "pid:x",
            "client:300.1.1.1",
        ] {
            assert!(parse_words(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_waiting_word_selects_sessions_waiting_on_a_lock() {
        let (f, q) = parse_words("waiting db:shop").unwrap();
        assert!(f.waiting && !f.blocking && q.is_empty());
        assert_eq!(f.databases, ["shop"]);
        assert!(parse_words("waiting:yes").is_err());
        let mut s = row();
        s.database = Some("shop".into());
        assert!(!f.matches_row(&s), "not waiting");
        s.wait_event_type = Some("IO".into());
        assert!(!f.matches_row(&s), "waiting, but not on a lock");
        s.wait_event_type = Some("Lock".into());
        assert!(f.matches_row(&s));
        s.database = Some("other".into());
        assert!(!f.matches_row(&s), "the other words still apply");
    }

    #[test]
    fn filter_words_for_exclusions_xmin_and_blocking_for() {
        let (f, _) = parse_words(
            "db:shop -db:other -user:batch -app:cron-* -client:10.0.0.0/8 -client:local blocking-for:30s holding-xmin",
        )
        .unwrap();
        assert_eq!(f.databases, ["shop"]);
        assert_eq!(f.exclude_databases, ["other"]);
        assert_eq!(f.exclude_users, ["batch"]);
        assert_eq!(f.exclude_apps, ["cron-*"]);
        assert_eq!(
            f.exclude_clients,
            [
                ClientMatch::Net("10.0.0.0/8".parse().unwrap()),
                ClientMatch::Local
            ]
        );
        assert_eq!(f.blocking_for, Some(Duration::from_secs(30)));
        assert!(f.holding_xmin && !f.blocking && !f.waiting);
        for bad in [
            "-db:",
            "-client:nonsense",
            "blocking-for:xyz",
            "-colour:red",
            "xmin",
        ] {
            let e = parse_words(bad).expect_err(bad);
            if !bad.starts_with("-client") && !bad.starts_with("blocking-for") {
                assert!(
                    e.contains("-db") && e.contains("holding-xmin") && e.contains("blocking-for"),
                    "the error lists the keys: {e}"
                );
            }
        }
    }

    fn row() -> Session {
        let example = Session::example(7);
        Session {
            application_name: Some("cron-nightly".into()),
            client_addr: Some("10.1.2.3".parse().unwrap()),
            client_port: Some(5000),
            ..example
        }
    }

    #[test]
    fn an_exclusion_wins_over_an_inclusion() {
        let s = row();
        let f = |text: &str| parse_words(text).unwrap().0;
        assert!(f("db:shop").matches_row(&s));
        for text in [
            "db:shop -db:shop",
            "user:app -user:app",
            "app:cron-* -app:cron-n*",
            "client:10.0.0.0/8 -client:10.1.0.0/16",
            "pid:7 -db:shop",
        ] {
            assert!(!f(text).matches_row(&s), "{text}");
        }
        for text in [
            "-db:other",
            "-user:other",
            "-app:web-*",
            "-client:local",
            "-client:11.0.0.0/8",
        ] {
            assert!(f(text).matches_row(&s), "{text}");
        }
        // A row whose client columns are hidden may be in the excluded network.
        let hidden = Session {
            backend_type: None,
            client_addr: None,
            client_port: None,
            state: None,
            ..row()
        };
        assert!(f("user:app").matches_row(&hidden));
        assert!(!f("-client:192.168.0.0/16").matches_row(&hidden));
        // A background process has no database, role or application: never excluded by them.
        let worker = Session {
            database: None,
            user: None,
            application_name: None,
            backend_type: Some("autovacuum worker".into()),
            client_addr: None,
            client_port: None,
            ..row()
        };
        let all = |text: &str| Filter {
            all_backends: true,
            ..f(text)
        };
        assert!(all("-db:shop -user:app -app:* -client:local").matches_row(&worker));
    }

    #[test]
    fn holding_xmin_and_blocking_for_use_what_the_server_computed() {
        let f = |text: &str| parse_words(text).unwrap().0;
        let mut s = row();
        assert!(!f("holding-xmin").matches_row(&s));
        assert!(!f("blocking-for:1s").matches_row(&s));
        s.holds_xmin = true;
        s.xmin_age = Some(12);
        assert!(f("holding-xmin").matches_row(&s));
        // Waited on since 30 s before the server's clock.
        s.waited_on_since = Some(s.now - chrono::Duration::seconds(30));
        assert!(f("blocking-for:30s").matches_row(&s));
        assert!(f("blocking-for:1s").matches_row(&s));
        assert!(!f("blocking-for:31s").matches_row(&s));
        assert!(!f("blocking-for:1h").matches_row(&s));
    }

    #[test]
    fn client_matches() {
        let net: ClientMatch = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net, ClientMatch::Net("10.0.0.0/8".parse().unwrap()));
        assert!(net.matches(Some("10.200.0.1".parse().unwrap()), Some(5000)));
        assert!(!net.matches(Some("11.0.0.1".parse().unwrap()), Some(5000)));
        assert!(!net.matches(None, Some(-1)));
        let one: ClientMatch = "127.0.0.1".parse().unwrap();
        assert!(one.matches(Some("127.0.0.1".parse().unwrap()), Some(1)));
        let v6: ClientMatch = "::1/128".parse().unwrap();
        assert!(v6.matches(Some("::1".parse().unwrap()), Some(1)));
        assert!(!v6.matches(Some("127.0.0.1".parse().unwrap()), Some(1)));
        let local: ClientMatch = "LOCAL".parse().unwrap();
        assert!(local.matches(None, Some(-1)));
        assert!(
            !local.matches(None, None),
            "no address and no port is a background process or hidden"
        );
        for bad in ["300.1.1.1/8", "10.0.0.0/33", "abc", "", "10.0.0.0/"] {
            assert!(bad.parse::<ClientMatch>().is_err(), "{bad}");
        }
    }

    #[test]
    fn states() {
        assert_eq!("idle-in-transaction".parse(), Ok(State::IdleInTransaction));
        assert_eq!("idle in transaction".parse(), Ok(State::IdleInTransaction));
        assert_eq!("IDLE_IN_TRANSACTION".parse(), Ok(State::IdleInTransaction));
        assert_eq!(
            "idle in transaction (aborted)".parse(),
            Ok(State::IdleInTransactionAborted)
        );
        assert_eq!("active".parse(), Ok(State::Active));
        assert!("sleeping".parse::<State>().is_err());
        for st in State::ALL {
            assert_eq!(st.cli_name().parse(), Ok(st));
            assert_eq!(st.server_name().parse(), Ok(st));
        }
    }

    #[test]
    fn globs() {
        assert_eq!(glob_to_regex("shop-*"), r"^shop\-.*$");
        assert_eq!(glob_to_regex("a.b?"), r"^a\.b.$");
        assert_eq!(glob_to_regex("x(1)|[y]"), r"^x\(1\)\|\[y\]$");
        assert!(glob_matches("shop-*", "shop-web"));
        assert!(glob_matches("shop-*", "shop-"));
        assert!(!glob_matches("shop-*", "shop"));
        assert!(glob_matches("?sql", "psql"));
        assert!(!glob_matches("?sql", "sql"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("日本*", "日本語"));
    }
}

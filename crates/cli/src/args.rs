//! Command-line arguments shared by the session commands: connection and filters.

use std::time::Duration;

use pgkill_core::{parse_duration, ClientMatch, Filter, State};

/// How to connect, as libpq tools do (see `pgkill_pg::connect`), and how long pgkill's
/// statements may run there.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Database server host or socket directory.
    #[arg(short = 'h', long = "host", global = true, value_name = "HOST")]
    pub host: Option<String>,
    /// Database server port.
    #[arg(short = 'p', long = "port", global = true, value_name = "PORT")]
    pub port: Option<String>,
    /// Role to connect as.
    #[arg(short = 'U', long = "username", global = true, value_name = "USER")]
    pub user: Option<String>,
    /// Always prompt for the password.
    #[arg(short = 'W', long = "password", global = true)]
    pub password_prompt: bool,
    /// Database pgkill connects to (default: postgres).
    #[arg(long = "maintenance-db", global = true, value_name = "DB")]
    pub maintenance_db: Option<String>,
    /// Cancel any statement of pgkill's that runs longer (0: no limit). Database changes
    /// (ALTER/DROP DATABASE, which wait for other sessions) get at least 60s.
    #[arg(long = "statement-timeout", global = true, value_name = "DUR", default_value = "5s",
          value_parser = duration)]
    pub statement_timeout: Duration,
    /// A PgBouncer admin console in front of this server (a connection string; database
    /// `pgbouncer` unless named; repeat for several poolers; default: PGKILL_PGBOUNCER).
    /// `ls` then shows the applications behind the pooler. With several targets, give
    /// each server its own in the `pgbouncer` key of its `[[target]]` in `--targets FILE`.
    #[arg(long = "pgbouncer", global = true, value_name = "CONNINFO")]
    pub pgbouncer: Vec<String>,
    /// A server to work on (a connection string, URI or `service=NAME`; repeat for several:
    /// `ls`, `kill` and `cancel` run on all of them at once). `-h`/`-p`/`-U` and the PG*
    /// variables are the defaults each one falls back on.
    #[arg(long = "target", global = true, value_name = "CONNINFO")]
    pub targets: Vec<String>,
    /// Servers to work on, from a TOML file of `[[target]]` tables (`name`, `conninfo`,
    /// optionally `pgbouncer = ["CONNINFO", ...]`: the poolers in front of that server).
    #[arg(long = "targets", global = true, value_name = "FILE")]
    pub targets_file: Option<std::path::PathBuf>,
    /// How many of the targets are worked on at a time.
    #[arg(long = "parallel", global = true, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub parallel: u16,
}

impl ConnArgs {
    /// The poolers named: `--pgbouncer`, else `PGKILL_PGBOUNCER` (connection strings
    /// separated by white space; see `pgkill_pg::pgbouncer::split_conninfos`), and whether
    /// they came from the environment.
    pub fn poolers(&self) -> (Vec<String>, bool) {
        if !self.pgbouncer.is_empty() {
            return (self.pgbouncer.clone(), false);
        }
        match std::env::var("PGKILL_PGBOUNCER") {
            Ok(v) if !v.trim().is_empty() => (pgkill_pg::pgbouncer::split_conninfos(&v), true),
            _ => (Vec::new(), false),
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn client(s: &str) -> Result<ClientMatch, String> {
    s.parse()
        .map_err(|e: pgkill_core::filter::ClientMatchError| e.to_string())
}

fn state(s: &str) -> Result<State, String> {
    s.parse()
        .map_err(|e: pgkill_core::filter::StateError| e.to_string())
}

/// Which sessions (repeated filters of one kind are OR-ed, different kinds AND-ed).
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Filters")]
pub struct FilterArgs {
    /// Sessions of this database.
    #[arg(long = "db", value_name = "NAME")]
    pub databases: Vec<String>,
    /// Sessions of this role.
    #[arg(long = "user", value_name = "ROLE")]
    pub users: Vec<String>,
    /// Sessions whose application_name matches this glob (`*`, `?`).
    #[arg(long = "app", value_name = "GLOB")]
    pub apps: Vec<String>,
    /// Sessions from this address or network (CIDR), or `local` for Unix sockets.
    #[arg(long = "client", value_name = "CIDR", value_parser = client)]
    pub clients: Vec<ClientMatch>,
    /// Sessions in this state: active, idle, idle-in-transaction, idle-in-transaction-aborted, fastpath, disabled, starting.
    #[arg(long = "state", value_name = "STATE", value_parser = state)]
    pub states: Vec<State>,
    /// This process id.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<i32>,
    /// Not running a statement (idle or idle in transaction) for at least DUR.
    #[arg(long = "idle-for", value_name = "DUR", value_parser = duration)]
    pub idle_for: Option<Duration>,
    /// Transaction open for at least DUR.
    #[arg(long = "xact-older", value_name = "DUR", value_parser = duration)]
    pub xact_older: Option<Duration>,
    /// Statement running for at least DUR.
    #[arg(long = "query-older", value_name = "DUR", value_parser = duration)]
    pub query_older: Option<Duration>,
    /// Connected for at least DUR.
    #[arg(long = "backend-older", value_name = "DUR", value_parser = duration)]
    pub backend_older: Option<Duration>,
    /// Query text matches this regular expression (PostgreSQL syntax).
    #[arg(long = "query", value_name = "REGEX")]
    pub queries: Vec<String>,
    /// Sessions that other sessions wait for (lock holders).
    #[arg(long = "blocking")]
    pub blocking: bool,
    /// Sessions on whose locks another session has been waiting for at least DUR (since
    /// the waiting statement started).
    #[arg(long = "blocking-for", value_name = "DUR", value_parser = duration)]
    pub blocking_for: Option<Duration>,
    /// Sessions whose snapshot or transaction id is the server's xmin horizon (holding
    /// back vacuum); when something else holds it (a replication slot, a prepared
    /// transaction, a standby's feedback), pgkill says what.
    #[arg(long = "holding-xmin")]
    pub holding_xmin: bool,
    /// Never sessions of this database (an exclusion wins over every inclusion).
    #[arg(long = "exclude-db", value_name = "NAME")]
    pub exclude_databases: Vec<String>,
    /// Never sessions of this role.
    #[arg(long = "exclude-user", value_name = "ROLE")]
    pub exclude_users: Vec<String>,
    /// Never sessions whose application_name matches this glob.
    #[arg(long = "exclude-app", value_name = "GLOB")]
    pub exclude_apps: Vec<String>,
    /// Never sessions from this address or network, or `local` (nor those whose address
    /// is hidden from you).
    #[arg(long = "exclude-client", value_name = "CIDR", value_parser = client)]
    pub exclude_clients: Vec<ClientMatch>,
    /// Only the N most recently connected of the matching sessions.
    #[arg(long = "newest", value_name = "N", conflicts_with = "oldest")]
    pub newest: Option<u32>,
    /// Only the N longest connected of the matching sessions.
    #[arg(long = "oldest", value_name = "N")]
    pub oldest: Option<u32>,
    /// Also signal sessions of superusers (protected by default).
    #[arg(long = "include-superusers")]
    pub include_superusers: bool,
}

impl FilterArgs {
    /// The filter these arguments describe.
    pub fn to_filter(&self, all_backends: bool) -> Filter {
        Filter {
            databases: self.databases.clone(),
            users: self.users.clone(),
            apps: self.apps.clone(),
            clients: self.clients.clone(),
            states: self.states.clone(),
            pids: self.pids.clone(),
            idle_for: self.idle_for,
            xact_older: self.xact_older,
            query_older: self.query_older,
            backend_older: self.backend_older,
            queries: self.queries.clone(),
            blocking: self.blocking,
            // Only `top`'s filter words have it (not in the CLI contract).
            waiting: false,
            blocking_for: self.blocking_for,
            holding_xmin: self.holding_xmin,
            exclude_databases: self.exclude_databases.clone(),
            exclude_users: self.exclude_users.clone(),
            exclude_apps: self.exclude_apps.clone(),
            exclude_clients: self.exclude_clients.clone(),
            newest: self.newest,
            oldest: self.oldest,
            include_superusers: self.include_superusers,
            all_backends,
            also: Vec::new(),
        }
    }
}

//! Errors from talking to PostgreSQL, with the SQLSTATEs users meet named.

use tokio_postgres::error::SqlState;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure talking to PostgreSQL. Matched on SQLSTATE, never on message text (the
/// wording changes between server versions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 42501: the role lacks a privilege.
    #[error("permission denied: {}", db_message(.0))]
    PermissionDenied(#[source] tokio_postgres::Error),
    /// 55006: the object is in use (e.g. other sessions are connected to the database).
    #[error("object in use: {}", db_message(.0))]
    ObjectInUse(#[source] tokio_postgres::Error),
    /// 3D000: no such database.
    #[error("no such database: {}", db_message(.0))]
    NoSuchDatabase(#[source] tokio_postgres::Error),
    /// 57014: the statement was cancelled (or hit statement_timeout).
    #[error("statement cancelled: {}", db_message(.0))]
    Cancelled(#[source] tokio_postgres::Error),
    /// 57P01: the session was terminated by an administrator.
    #[error("session terminated: {}", db_message(.0))]
    Terminated(#[source] tokio_postgres::Error),
    /// 2201B: a `--query` pattern is not a valid regular expression.
    #[error("invalid regular expression in --query: {}", .0.as_db_error().map(|d| d.message()).unwrap_or("rejected by the server"))]
    InvalidRegex(tokio_postgres::Error),
    /// The request cannot go ahead; nothing was changed (or everything was restored).
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
    /// An operation failed and putting the database back failed too: it is still fenced,
    /// and its record on the server says how it was.
    #[error("{error}\nrestoring {name}'s settings failed too ({restore}): it is still fenced and its record says how it was; run `pgkill unfence {name}`")]
    StillFenced {
        /// The database.
        name: String,
        /// What failed.
        error: String,
        /// Why restoring failed.
        restore: String,
    },
    /// An operation failed and the database was put back, but some aliases at a pooler
    /// could not be (they stay paused or disabled there).
    #[error("{error}\n{name}'s settings were restored, but at PgBouncer: {}; ENABLE/RESUME them in its admin console", .problems.join("; "))]
    PoolersLeft {
        /// The database.
        name: String,
        /// What failed.
        error: String,
        /// What could not be put back, pooler by pooler.
        problems: Vec<String>,
    },
    /// The server is older than pgkill supports.
    #[error(transparent)]
    Version(pgkill_core::VersionError),
    /// A name that cannot be written into SQL (it holds a NUL byte).
    #[error(transparent)]
    Name(#[from] pgkill_core::QuoteError),
    /// The server answered something pgkill did not expect.
    #[error("unexpected answer from the server: {0}")]
    Protocol(&'static str),
    /// Anything else: the server's message, its SQLSTATE, and what to do where known.
    #[error("{}", server_error(.0))]
    Other(#[source] tokio_postgres::Error),
}

/// Names and advice for the SQLSTATEs users meet (POSTGRES.md, "Errors users meet").
fn sqlstate_name(code: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match code {
        "25006" => ("read_only_sql_transaction", Some("this server is a standby (read-only): run the command against the primary")),
        "25001" => ("active_sql_transaction", None),
        "53300" => ("too_many_connections", Some("the server, role or database is at its connection limit: `pgkill free-slot ROLE` ends idle sessions of a role")),
        "28000" => ("invalid_authorization_specification", None),
        "28P01" => ("invalid_password", None),
        "42809" => ("wrong_object_type", Some("a template database: pass --allow-template")),
        "0A000" => ("feature_not_supported", None),
        "22023" => ("invalid_parameter_value", None),
        "42P07" | "42P04" => ("duplicate_object", Some("choose another name")),
        "42622" => ("name_too_long", Some("names are at most 63 bytes")),
        "42602" => ("invalid_name", None),
        "55000" => ("object_not_in_prerequisite_state", None),
        "55P03" => ("lock_not_available", None),
        "57P05" => ("idle_session_timeout", None),
        "25P03" => ("idle_in_transaction_session_timeout", None),
        "57P01" => ("admin_shutdown", None),
        "08006" => ("connection_failure", None),
        _ => return None,
    })
}

/// `message (detail) [SQLSTATE code name]: advice`, or the client's own text when the
/// error did not come from the server.
fn server_error(e: &tokio_postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        return match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        };
    };
    let code = db.code().code();
    let named = sqlstate_name(code);
    let mut text = format!("{} [SQLSTATE {code}", db_message(e));
    if let Some((name, _)) = named {
        text.push_str(&format!(" {name}"));
    }
    text.push(']');
    if let Some(hint) = db.hint() {
        text.push_str(&format!("; hint: {hint}"));
    }
    if let Some((_, Some(advice))) = named {
        text.push_str(&format!(": {advice}"));
    }
    text
}

/// The server's message (and detail) of a database error, else the client's text.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => Error::PermissionDenied(e),
            Some(c) if *c == SqlState::OBJECT_IN_USE => Error::ObjectInUse(e),
            Some(c) if *c == SqlState::INVALID_CATALOG_NAME => Error::NoSuchDatabase(e),
            Some(c) if *c == SqlState::QUERY_CANCELED => Error::Cancelled(e),
            Some(c) if *c == SqlState::ADMIN_SHUTDOWN => Error::Terminated(e),
            Some(c) if *c == SqlState::INVALID_REGULAR_EXPRESSION => Error::InvalidRegex(e),
            _ => Error::Other(e),
        }
    }
}

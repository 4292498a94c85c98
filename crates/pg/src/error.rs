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
    /// The fence journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The server is older than pgkill supports.
    #[error(transparent)]
    Version(pgkill_core::VersionError),
    /// A name that cannot be written into SQL (it holds a NUL byte).
    #[error(transparent)]
    Name(#[from] pgkill_core::QuoteError),
    /// The server answered something pgkill did not expect.
    #[error("unexpected answer from the server: {0}")]
    Protocol(&'static str),
    /// Anything else.
    #[error(transparent)]
    Other(tokio_postgres::Error),
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

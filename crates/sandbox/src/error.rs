//! Errors of the sandbox.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while finding, starting or using a sandbox server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No PostgreSQL server binaries were found at all.
    #[error(
        "no PostgreSQL server binaries found (looked in $PGKILL_PG_BIN, {cache}, \
         /usr/lib/postgresql/*/bin and PATH).\n\
         To get every supported version (10-18) run `scripts/fetch-postgres`, \
         or install one with `apt-get install postgresql`, \
         or point PGKILL_PG_BIN at a directory holding `postgres` and `initdb`."
    )]
    NoServer {
        /// The project cache directory that was searched.
        cache: String,
    },
    /// A major version that was asked for is not installed.
    #[error(
        "PostgreSQL {major} server binaries not found. Run `scripts/fetch-postgres {major}` \
         (fetches into {cache}) or set PGKILL_PG_BIN to its bin directory."
    )]
    MissingVersion {
        /// The major version asked for.
        major: u32,
        /// The project cache directory.
        cache: String,
    },
    /// A PgBouncer version that was asked for is not installed.
    #[error(
        "PgBouncer {version} not found. Run `scripts/fetch-pgbouncer {version}` \
         (installs into {cache}) or set PGKILL_PGBOUNCER_BIN to its pgbouncer binary."
    )]
    MissingBouncer {
        /// The version asked for.
        version: String,
        /// The project cache directory.
        cache: String,
    },
    /// PgBouncer did not start listening.
    #[error("PgBouncer did not start within {seconds}s; its log ({log}) ends with:\n{tail}")]
    BouncerNotReady {
        /// How long we waited.
        seconds: u64,
        /// Where its log is.
        log: PathBuf,
        /// Last lines of its log.
        tail: String,
    },
    /// A program (initdb, postgres) could not be run or failed.
    #[error("{program} failed: {detail}")]
    Program {
        /// The program that failed.
        program: String,
        /// Its output or the reason.
        detail: String,
    },
    /// The server did not become ready.
    #[error("PostgreSQL did not start within {seconds}s; its log ({log}) ends with:\n{tail}")]
    NotReady {
        /// How long we waited.
        seconds: u64,
        /// Where the server log is.
        log: PathBuf,
        /// Last lines of the server log.
        tail: String,
    },
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The unprivileged OS user to run servers as could not be set up.
    #[error("cannot run PostgreSQL as root and could not use an unprivileged user: {0}")]
    RunAs(String),
    /// The operating system's random number generator failed.
    #[error("cannot make a random password: {0}")]
    Random(String),
    /// A directory or file is not what the sandbox made, so it is not touched.
    #[error("{path} is not safe to use: {reason}")]
    Unsafe {
        /// The path refused.
        path: PathBuf,
        /// Why (owner, mode, symlink).
        reason: String,
    },
    /// A name or string that cannot be written into SQL.
    #[error(transparent)]
    Quote(#[from] pgkill_core::QuoteError),
    /// A SQL command against the sandbox failed.
    #[error("{context}: {source}")]
    Sql {
        /// What was being done.
        context: String,
        /// The client error.
        source: tokio_postgres::Error,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        move |source| Error::Sql { context, source }
    }
}

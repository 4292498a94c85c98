//! pgkill's PostgreSQL-facing library: the one place that talks to servers.
//!
//! Front-ends build requests with `pgkill-core` and hand them here; this crate connects,
//! detects what the server and the caller can do, runs the planned SQL and maps the
//! SQLSTATEs users meet to named errors.

pub mod connect;
pub mod databases;
pub mod error;
pub mod exec;
pub mod journal;
pub mod pgbouncer;
pub mod sessions;
pub mod through;
pub mod top;

pub use error::{Error, Result};

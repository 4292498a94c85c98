//! pgkill's pure core.
//!
//! Everything here is plain data and pure functions: no sockets, no files, no clocks.
//! The PostgreSQL-facing crate (`pgkill-pg`), the front-ends and the sandbox build on it,
//! and it is unit-tested exhaustively because every destructive decision starts here.

pub mod quote;
pub mod version;

pub use quote::{quote_ident, quote_literal};
pub use version::{ServerVersion, VersionError};

//! pgkill's pure core.
//!
//! Everything here is plain data and pure functions: no sockets, no files, no clocks.
//! The PostgreSQL-facing crate (`pgkill-pg`), the front-ends and the sandbox build on it,
//! and it is unit-tested exhaustively because every destructive decision starts here.

pub mod database;
pub mod duration;
pub mod fence;
pub mod filter;
pub mod horizon;
pub mod plan;
pub mod planner;
pub mod pooler;
pub mod printable;
pub mod quote;
pub mod session;
pub mod sql;
pub mod version;

pub use duration::{format_duration, parse_duration};
pub use filter::{ClientMatch, Filter, State};
pub use printable::printable;
pub use quote::{quote_ident, quote_literal, QuoteError};
pub use session::{LockWait, Session};
pub use version::{ServerVersion, VersionError};

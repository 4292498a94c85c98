//! Throw-away PostgreSQL servers and simulated client sessions.
//!
//! Everything pgkill does is about real server behaviour, so its demo, its integration
//! tests and its benchmarks all run against real servers started here:
//!
//! - [`Installation`] finds server binaries of every major version 10–18 (an explicit
//!   directory, the project's fetched cache, the distribution's, `PATH`);
//! - [`Sandbox`] runs `initdb` (once per version, then from a cached template) and
//!   `postgres` on a free loopback port, as an unprivileged OS user when the caller is
//!   root, with a fresh random password per role that only the caller's OS user gets
//!   (a private password file), and stops it and removes its directories when dropped,
//!   also during a panic;
//! - [`sim`] opens real client sessions of named kinds (idle, idle in transaction,
//!   active, lock chains, prepared transactions, committing writers, reconnecting pools)
//!   and records how each one ended;
//! - [`Bouncer`] runs a real PgBouncer (1.18 or 1.24.1, from `scripts/fetch-pgbouncer`)
//!   in front of a sandbox, in session, transaction or statement mode;
//! - [`matrix`] runs a test suite once per installed major version.

mod error;
mod install;
pub mod matrix;
mod pgbouncer;
pub mod roles;
mod runas;
mod server;
pub mod sim;
mod template;

pub use error::{Error, Result};
pub use install::{Installation, Source};
pub use pgbouncer::{
    bouncer_cache_dir, Bouncer, BouncerBinary, BouncerOptions, BouncerVersion, Console, ConsoleRow,
    PoolMode,
};
pub use server::{process_alive, Options, Sandbox, StartTiming};

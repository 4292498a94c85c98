//! `pgkill watch`: a policy daemon. The policy file parses into the same [`Filter`]s the
//! CLI builds ([`policy`]); which session each rule acts on, rate limits and escalation
//! are plain state ([`rules`]); one evaluation pass per target signals through the one
//! shared path, `pgkill_pg::sessions::execute` ([`pass`]); the audit log, the metrics
//! server and the daemon loop sit at the edge.
//!
//! [`Filter`]: pgkill_core::Filter

pub mod audit;
pub mod daemon;
pub mod leader;
pub mod metrics;
pub mod pass;
pub mod policy;
pub mod rules;

pub use daemon::{run, Options};

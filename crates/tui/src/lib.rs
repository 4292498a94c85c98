//! `pgkill top`: a live view of sessions to find and end the right ones.
//!
//! Built as plain-data state ([`App`]), a pure [`update`] that turns an [`Event`] into
//! [`Effect`]s, a [`view`] that only draws, and one loop ([`run`]) over terminal
//! events, a refresh tick and database results.

mod app;
mod columns;
mod record;
mod run;
mod view;

pub use app::{
    update, App, Column, ConnState, Effect, Event, Key, Mode, ServerInfo, Snapshot, SortKey,
    TargetState,
};
pub use record::Recorder;
pub use run::{run, Connector, Options, Target};
pub use view::view;

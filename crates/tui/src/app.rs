//! The state of `pgkill top` and the pure function that updates it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use pgkill_core::filter::parse_words;
use pgkill_core::plan::{Caller, Outcome, Plan};
use pgkill_core::planner::Signal;
use pgkill_core::pooler::{AppOutcome, AppTarget, Pooled, PoolerState};
use pgkill_core::{Filter, LockWait, Session};
use pgkill_pg::through::{CancelPlan, KillPlan};

pub use crate::columns::Column;

/// How many refreshes the history graph keeps.
pub const HISTORY: usize = 120;
const MIN_INTERVAL: Duration = Duration::from_millis(250);
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// What the header shows about the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `15.18`.
    pub version: String,
    /// Time since the postmaster started.
    pub uptime: Duration,
    /// All backends connected (clients and others).
    pub connections: i64,
    /// `max_connections`.
    pub max_connections: i64,
    /// The server is a standby (`pg_is_in_recovery()`).
    pub in_recovery: bool,
}

/// The server's cumulative counters and gauges for the health header, read at one
/// refresh (rates come from two of them).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The refresh's counters and gauges.
    pub counters: Counters,
    /// The xmin horizon's age and what holds it, in a few words.
    pub xmin: Option<(i32, String)>,
}

pub use pgkill_pg::top::{Counters, Progress};

/// Rates between two health readings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rates {
    /// Commits per second.
    pub commits: f64,
    /// Rollbacks per second.
    pub rollbacks: f64,
    /// Share of block reads found in shared buffers over the interval (`None`: no reads).
    pub cache_hit: Option<f64>,
    /// Temporary files per second.
    pub temp_files: f64,
    /// Temporary bytes per second.
    pub temp_bytes: f64,
}

impl Rates {
    /// The rates from `before` to `now` (`None` when the clock did not move forward or a
    /// counter went back: statistics were reset).
    pub fn between(before: &Health, now: &Health) -> Option<Rates> {
        let (before, now) = (&before.counters, &now.counters);
        let secs = (now.at - before.at).to_std().ok()?.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let d = |a: i64, b: i64| (b >= a).then(|| (b - a) as f64);
        let hit = d(before.blks_hit, now.blks_hit)?;
        let read = d(before.blks_read, now.blks_read)?;
        Some(Rates {
            commits: d(before.commits, now.commits)? / secs,
            rollbacks: d(before.rollbacks, now.rollbacks)? / secs,
            cache_hit: (hit + read > 0.0).then(|| hit / (hit + read)),
            temp_files: d(before.temp_files, now.temp_files)? / secs,
            temp_bytes: d(before.temp_bytes, now.temp_bytes)? / secs,
        })
    }
}

/// One refresh's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Server facts.
    pub server: ServerInfo,
    /// Sessions matching the command-line filters.
    pub sessions: Vec<Session>,
    /// The lock each waiting session asked for (for the blocking tree).
    pub locks: Vec<LockWait>,
    /// What `pg_stat_progress_*` says of the sessions, by pid (VACUUM, CREATE INDEX, …).
    pub progress: BTreeMap<i32, Progress>,
    /// The health header's readings (when it is shown).
    pub health: Option<Box<Health>>,
    /// Who pgkill is connected as (what it may signal).
    pub caller: Caller,
    /// Whether that role sees every session's details (`pg_read_all_stats`).
    pub read_all_stats: bool,
    /// `--pgbouncer`: each pooler, one line (`PgBouncer 1.24.1 at …: …`).
    pub poolers: Vec<String>,
    /// `--pgbouncer`: the application connections holding no backend (rows of their own).
    pub pooled: Vec<Pooled>,
    /// `--pgbouncer`: what each pooler said (versions and pool modes decide how an
    /// application is ended).
    pub pooler_states: Vec<PoolerState>,
    /// `--pgbouncer`: the roles of the applications behind the poolers that are
    /// superusers (protected as their backends are).
    pub pooler_superusers: BTreeSet<String>,
}

/// One server of `pgkill --target A --target B … top`: its name, whether it answers, and
/// what its last refresh said.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetState {
    /// What the command line or the targets file calls it.
    pub name: String,
    /// Whether its refreshes succeed (each target reconnects on its own).
    pub conn: ConnState,
    /// Its last refresh (`None` before the first and while it is disconnected: its rows
    /// are gone from the table then).
    pub snapshot: Option<Snapshot>,
    /// Its last health reading (when the health header is shown).
    pub health: Option<Health>,
    /// Its rates between its last two health readings.
    pub rates: Option<Rates>,
}

impl TargetState {
    /// A server called `name`, in state `conn`, not refreshed yet.
    pub fn new(name: String, conn: ConnState) -> TargetState {
        TargetState {
            name,
            conn,
            snapshot: None,
            health: None,
            rates: None,
        }
    }
}

/// What identifies a row across refreshes: a backend by its server (the index into
/// [`App::fleet`], 0 with one server) and pid; an application
/// connection at a pooler that holds no backend by the server the pooler is in front of,
/// the pooler, its handle there (`id` from PgBouncer 1.24, else `ptr`) and its address
/// and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowKey {
    /// A backend: its server (index into [`App::fleet`]; 0 with one server) and pid.
    Backend(usize, i32),
    /// An application connection at a pooler, holding no backend.
    Pooled {
        /// The server behind the pooler (index into [`App::fleet`]; 0 with one server).
        target: usize,
        /// The pooler (`host=… port=…`).
        pooler: String,
        /// Its `id` (1.24+).
        id: Option<i64>,
        /// Its `ptr`.
        ptr: String,
        /// The application's address and port.
        addr: Option<std::net::IpAddr>,
        /// The application's port.
        port: Option<i32>,
    },
}

impl RowKey {
    /// The key of a pooled application connection at a pooler in front of server
    /// `target`.
    pub fn of_pooled(target: usize, p: &Pooled) -> RowKey {
        RowKey::Pooled {
            target,
            pooler: p.pooler.clone(),
            id: p.client.id,
            ptr: p.client.ptr.clone(),
            addr: p.client.addr,
            port: p.client.port,
        }
    }
}

/// A row of the table: a backend, or an application connection at a pooler that holds
/// no backend (listed after the backends).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Row<'a> {
    /// A backend, with its server (index into [`App::fleet`]; 0 with one server).
    Backend(usize, &'a Session),
    /// An application connection at a pooler, with the server the pooler is in front of
    /// (index into [`App::fleet`]; 0 with one server).
    Pooled(usize, &'a Pooled),
}

impl Row<'_> {
    /// What identifies it across refreshes.
    pub fn key(&self) -> RowKey {
        match self {
            Row::Backend(target, s) => RowKey::Backend(*target, s.pid),
            Row::Pooled(target, p) => RowKey::of_pooled(*target, p),
        }
    }
}

/// What confirming an action would do: the decisions `pgkill kill`/`cancel` make (with
/// `--pgbouncer` too), shown before the answer.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The backends: signalled, or refused with the reason.
    pub backends: Plan,
    /// Applications ended at their pooler (`KILL_CLIENT`), or refused with the reason.
    pub at_pooler: Vec<AppTarget>,
    /// What is left alone and why (no row of its own).
    pub left_alone: Vec<String>,
    /// The server of each of `backends.targets` (index into [`App::fleet`]).
    pub origins: Vec<usize>,
    /// The server behind the pooler of each of `at_pooler` (index into [`App::fleet`]).
    pub at_pooler_origins: Vec<usize>,
}

impl Decision {
    /// How many backends are signalled and applications ended.
    pub fn acting(&self) -> usize {
        self.backends.to_signal().count()
            + self
                .at_pooler
                .iter()
                .filter(|t| t.refused.is_none())
                .count()
    }
}

/// A key press, reduced to what the view uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Arrow left.
    Left,
    /// Arrow right.
    Right,
    /// Home.
    Home,
    /// End.
    End,
    /// Page up.
    PageUp,
    /// Page down.
    PageDown,
    /// F1 (help).
    F1,
    /// A letter with Control held (`Ctrl-U`, `Ctrl-W`, …; `Ctrl-C` quits).
    Ctrl(char),
}

/// Something that happened.
// One event a refresh or a key press, moved once: boxing the snapshot saves nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key press.
    Key(Key),
    /// The refresh interval elapsed.
    Tick,
    /// The terminal has this size (at start and on every resize): the table's columns
    /// and the page size follow it.
    Resize {
        /// Columns.
        width: u16,
        /// Lines.
        height: u16,
    },
    /// A refresh finished (or failed: the server went away).
    Snapshot(Result<Snapshot, String>),
    /// Reconnecting failed to log in (wrong password now, say): trying again with the
    /// same settings cannot help, and `top` never asks for a password on its screen.
    AuthFailed(String),
    /// A cancel / terminate finished: what happened to each backend, and to each
    /// application ended at a pooler.
    Outcomes(Result<(Vec<Outcome>, Vec<AppOutcome>), String>),
    /// With several targets: `event` (a refresh, a failed login or an action's outcomes)
    /// came from this server (index into [`App::fleet`]).
    From {
        /// The server.
        target: usize,
        /// What it sent.
        event: Box<Event>,
    },
}

/// Something the loop must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Read sessions again.
    Refresh,
    /// Cancel or terminate these sessions (verified, as `pgkill kill` does: through the
    /// same re-checking statement, with the command line's filters and `filter`).
    Signal {
        /// The server they are on (index into [`App::fleet`]; 0 with one server): one
        /// effect per server, each sent to that server's connection.
        target: usize,
        /// Cancel or terminate.
        signal: Signal,
        /// The sessions as they were shown when confirmed.
        targets: Vec<Session>,
        /// The application connections at a pooler holding no backend, as shown.
        pooled: Vec<Pooled>,
        /// The filter typed in the view when they were selected: a session that no
        /// longer matches it is not signalled.
        filter: Box<Filter>,
        /// Signal protected superuser sessions too (`!` in the confirmation).
        include_superusers: bool,
    },
    /// Put `text` on the terminal's clipboard (OSC 52).
    Copy(String),
    /// Leave.
    Quit,
}

/// Which screen the keys act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The session table.
    Normal,
    /// Typing a filter; the previous text is kept to go back to on Esc.
    Filtering {
        /// The filter text before editing.
        previous: String,
    },
    /// Asking before signalling these rows.
    Confirm {
        /// Cancel or terminate.
        signal: Signal,
        /// The targets.
        rows: Vec<RowKey>,
        /// `!` pressed: include protected superuser sessions in this action.
        include_superusers: bool,
    },
    /// Details of one row.
    Detail(RowKey),
    /// Who blocks whom; the cursor moves over the lines of the tree.
    Blocking {
        /// Index into [`App::blocking_tree`].
        cursor: usize,
    },
    /// Key help, scrolled down by `scroll` lines.
    Help {
        /// Lines scrolled past.
        scroll: usize,
    },
}

/// What the table is sorted by: one of its columns (see [`Column`]).
pub type SortKey = Column;

/// One line of the blocking tree: a session, how deep it is, and how it is drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLine {
    /// The session's server (index into [`App::fleet`]; 0 with one server).
    pub target: usize,
    /// The session.
    pub pid: i32,
    /// 0 for a root.
    pub depth: usize,
    /// The branches drawn before it (`│   ├─ `).
    pub prefix: String,
    /// The other sessions it waits for too (it stands under each of them).
    pub also_waits_for: Vec<i32>,
    /// For a root: how many sessions wait for it, directly or down the chain.
    pub total: usize,
}

/// Whether the database connection works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Refreshes succeed.
    Connected,
    /// The last refresh failed; the loop reconnects with backoff.
    Lost(String),
    /// Logging in again failed; no more attempts (restart `top` to log in anew).
    AuthFailed(String),
}

/// Counts per state at one refresh, for the history graph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// `active`.
    pub active: u64,
    /// `idle`.
    pub idle: u64,
    /// `idle in transaction`.
    pub idle_in_transaction: u64,
    /// `idle in transaction (aborted)`: a failed statement, waiting for a ROLLBACK.
    pub aborted: u64,
    /// Waiting on a lock.
    pub waiting: u64,
}

/// The whole state of the view: plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// The server pgkill is connected to (`host:port`), for the header.
    pub target: Option<String>,
    /// With several targets (`--target A --target B`): each server, in the command
    /// line's order; empty with one server. The table then merges their rows
    /// (`sessions`, with `origins`).
    pub fleet: Vec<TargetState>,
    /// The server of each of `sessions` (index into `fleet`; all 0 with one server).
    pub origins: Vec<usize>,
    /// `target:NAME` words of the filter: only these servers' rows are shown (never
    /// sent to a server).
    pub target_filter: Vec<String>,
    /// The server of each of `outcomes` (with several targets).
    pub outcome_targets: Vec<usize>,
    /// `--pgbouncer`: a line per pooler, from the last refresh.
    pub poolers: Vec<String>,
    /// Server facts from the last refresh.
    pub server: Option<ServerInfo>,
    /// Sessions from the last refresh.
    pub sessions: Vec<Session>,
    /// The lock each waiting session asked for, from the last refresh.
    pub locks: Vec<LockWait>,
    /// What `pg_stat_progress_*` said of the sessions at the last refresh, by pid.
    pub progress: BTreeMap<i32, Progress>,
    /// Show the health header (`H`).
    pub show_health: bool,
    /// Wrap queries over several lines in the list (`v`).
    pub wrap: bool,
    /// Lines the details pane is scrolled past.
    pub detail_scroll: usize,
    /// Columns not shown (`--columns`, `C`).
    pub hidden: Vec<Column>,
    /// List every kind of backend (autovacuum, walsenders, parallel and background
    /// workers), not only client sessions (`A`); they are shown, never signalled.
    pub all_kinds: bool,
    /// The last health reading.
    pub health: Option<Health>,
    /// Rates between the last two health readings.
    pub rates: Option<Rates>,
    /// `--pgbouncer`: application connections holding no backend, from the last refresh
    /// (with several targets, every server's).
    pub pooled: Vec<Pooled>,
    /// The server behind the pooler of each of `pooled` (index into `fleet`; all 0 with
    /// one server).
    pub pooled_origins: Vec<usize>,
    /// `--pgbouncer`: what each pooler said at the last refresh (with one server; with
    /// several each target's are in its snapshot, see [`App::pooler_states_of`]).
    pub pooler_states: Vec<PoolerState>,
    /// `--pgbouncer`: the applications' roles that are superusers.
    pub pooler_superusers: BTreeSet<String>,
    /// The filter being typed or applied (`/`).
    pub filter_text: String,
    /// Where the cursor is in the filter text, in characters.
    pub filter_cursor: usize,
    /// Why the filter text is not understood, if so (the last good filter stays applied).
    pub filter_error: Option<String>,
    /// The last filter text that was understood: what the table shows.
    pub applied_filter: String,
    filter: Filter,
    contains: Vec<String>,
    /// The screen.
    pub mode: Mode,
    /// Selected rows.
    pub selected: BTreeSet<RowKey>,
    /// Row of the cursor in the visible list.
    pub cursor: usize,
    /// Sort column.
    pub sort: SortKey,
    /// Sort descending (largest ages first).
    pub descending: bool,
    /// Refreshing paused.
    pub paused: bool,
    /// Refresh interval.
    pub interval: Duration,
    /// Connection state.
    pub conn: ConnState,
    /// Counts per state, oldest first.
    pub history: VecDeque<Counts>,
    /// Outcomes of the last action.
    pub outcomes: Vec<Outcome>,
    /// Outcomes of the last action at the poolers.
    pub app_outcomes: Vec<AppOutcome>,
    /// The server behind the pooler of each of `app_outcomes` (with several targets).
    pub app_outcome_targets: Vec<usize>,
    /// The last action failed as a whole.
    pub action_error: Option<String>,
    /// Draw with colours (off with `NO_COLOR`).
    pub color: bool,
    /// Who pgkill is connected as (from the last refresh).
    pub caller: Option<Caller>,
    /// Whether that role sees every session's details (`pg_read_all_stats`).
    pub read_all_stats: bool,
    /// `top --include-superusers`: superuser sessions may be signalled all along.
    pub include_superusers: bool,
    /// Something to tell the user in the footer (e.g. selected rows the filter now hides
    /// were unselected).
    pub note: Option<String>,
    /// The terminal's size (columns, lines).
    pub size: (u16, u16),
    /// How long ago the shown data was read (set by the loop before each draw): older
    /// than two intervals, the header says the data is stale.
    pub data_age: Option<Duration>,
    /// The local time zone's offset, for times in the details (UTC in tests).
    pub utc_offset: chrono::FixedOffset,
}

impl App {
    /// A fresh view refreshing every `interval`.
    pub fn new(interval: Duration) -> App {
        App {
            target: None,
            fleet: Vec::new(),
            origins: Vec::new(),
            target_filter: Vec::new(),
            outcome_targets: Vec::new(),
            app_outcome_targets: Vec::new(),
            poolers: Vec::new(),
            server: None,
            sessions: Vec::new(),
            locks: Vec::new(),
            progress: BTreeMap::new(),
            show_health: true,
            wrap: false,
            hidden: Vec::new(),
            detail_scroll: 0,
            all_kinds: false,
            health: None,
            rates: None,
            pooled: Vec::new(),
            pooled_origins: Vec::new(),
            pooler_states: Vec::new(),
            pooler_superusers: BTreeSet::new(),
            filter_text: String::new(),
            filter_cursor: 0,
            filter_error: None,
            applied_filter: String::new(),
            // What the server listed decides the kinds of backend (`A`).
            filter: Filter {
                all_backends: true,
                ..Filter::default()
            },
            contains: Vec::new(),
            mode: Mode::Normal,
            selected: BTreeSet::new(),
            cursor: 0,
            sort: Column::StateAge,
            descending: true,
            paused: false,
            interval,
            conn: ConnState::Connected,
            history: VecDeque::new(),
            outcomes: Vec::new(),
            app_outcomes: Vec::new(),
            action_error: None,
            color: true,
            caller: None,
            read_all_stats: true,
            include_superusers: false,
            note: None,
            size: (120, 40),
            data_age: None,
            utc_offset: chrono::Offset::fix(&chrono::Utc),
        }
    }

    /// The columns the table shows at the current width.
    pub fn columns(&self) -> Vec<Column> {
        crate::columns::layout(self.size.0, &self.hidden, self.longest_target_name())
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    /// Whether the data on screen is older than two refresh intervals (and refreshing
    /// is not paused).
    pub fn stale(&self) -> bool {
        !self.paused && self.data_age.is_some_and(|a| a > self.interval * 2)
    }

    /// The lines inside the body's border (what the header, graph and status leave).
    pub fn body_height(&self) -> usize {
        let (_, height) = self.size;
        let (header, graph) = (self.header_lines(), graph_height(height));
        usize::from(height.saturating_sub(header + graph + 3 + 2)).max(1)
    }

    /// How many lines the header takes: two, the privilege doctor's, and the health
    /// header's (with one server two or three; with several a line of the figures over
    /// all of them, then one line per server, capped, see [`App::fleet_health_shown`]);
    /// with several, a line per pooler too (one server's are on the second line).
    pub fn header_lines(&self) -> u16 {
        let (width, _) = self.size;
        let doctor = u16::from(self.doctor().is_some());
        if self.several_targets() {
            let (shown, more) = self.fleet_health_shown();
            let health = if self.show_health && !shown.is_empty() {
                1 + shown.len() + usize::from(more > 0)
            } else {
                0
            };
            let poolers = u16::try_from(self.poolers.len()).unwrap_or(u16::MAX);
            return (2 + doctor + poolers)
                .saturating_add(u16::try_from(health).unwrap_or(u16::MAX));
        }
        header_height(self.show_health && self.health.is_some(), width) + doctor
    }

    /// With several targets, the servers whose health line the header shows (indexes
    /// into `fleet`, in the command line's order: those with a reading) and how many
    /// more have one but no room: at most a sixth of the screen's lines go to them
    /// (at least one), the last of those then saying `+N more`.
    pub fn fleet_health_shown(&self) -> (Vec<usize>, usize) {
        let with: Vec<usize> = self
            .fleet
            .iter()
            .enumerate()
            .filter(|(_, t)| t.health.is_some())
            .map(|(i, _)| i)
            .collect();
        let room = usize::from(self.size.1 / 6).max(1);
        if with.len() <= room {
            return (with, 0);
        }
        let shown = room.saturating_sub(1);
        let more = with.len() - shown;
        (with.into_iter().take(shown).collect(), more)
    }

    /// How many table rows fit on a page.
    pub fn page(&self) -> usize {
        self.body_height()
    }

    /// The privilege doctor: when the role cannot see some sessions' details or may not
    /// signal some sessions, which grant would fix it.
    pub fn doctor(&self) -> Option<String> {
        let caller = self.caller.as_ref()?;
        if caller.superuser {
            return None;
        }
        let hidden = self.sessions.iter().filter(|s| s.state.is_none()).count();
        let refused = self.sessions.iter().filter(|s| !s.can_signal).count();
        let mut says = Vec::new();
        if hidden > 0 && !self.read_all_stats {
            says.push(format!(
                "{hidden} session(s) hide their details from {}: GRANT pg_read_all_stats (or pg_monitor) TO it",
                caller.user
            ));
        }
        if refused > 0 {
            let supers = self
                .sessions
                .iter()
                .filter(|s| !s.can_signal && s.superuser == Some(true))
                .count();
            if caller.signal_backend {
                says.push(format!(
                    "{refused} session(s) may not be signalled: {supers} are superusers' (only a superuser may)"
                ));
            } else {
                says.push(format!(
                    "{refused} session(s) may not be signalled by {}: GRANT pg_signal_backend TO it (superusers' sessions: only a superuser, {supers} here)",
                    caller.user
                ));
            }
        }
        (!says.is_empty()).then(|| says.join(" · "))
    }

    /// Whether the view merges several servers (`--target A --target B … top`).
    pub fn several_targets(&self) -> bool {
        self.fleet.len() > 1
    }

    /// With several targets, the longest target name as the screen shows it (escaped),
    /// in characters: the target column's width follows it. `None` with one server.
    pub fn longest_target_name(&self) -> Option<usize> {
        self.several_targets().then(|| {
            self.fleet
                .iter()
                .map(|t| pgkill_core::printable(&t.name).chars().count())
                .max()
                .unwrap_or(0)
        })
    }

    /// The name of server `target` (index into `fleet`; with one server, `target`).
    pub fn target_name(&self, target: usize) -> &str {
        match self.fleet.get(target) {
            Some(t) => &t.name,
            None => self.target.as_deref().unwrap_or(""),
        }
    }

    /// The lock `pid` on server `target` waits for, if it waits for one.
    pub fn lock_of(&self, target: usize, pid: i32) -> Option<&LockWait> {
        match self.fleet.get(target) {
            Some(t) => t.snapshot.as_ref()?.locks.iter().find(|l| l.pid == pid),
            None => self.locks.iter().find(|l| l.pid == pid),
        }
    }

    /// What `pg_stat_progress_*` said of `pid` on server `target`.
    pub fn progress_of(&self, target: usize, pid: i32) -> Option<&Progress> {
        match self.fleet.get(target) {
            Some(t) => t.snapshot.as_ref()?.progress.get(&pid),
            None => self.progress.get(&pid),
        }
    }

    /// Who pgkill is connected to server `target` as.
    pub fn caller_of(&self, target: usize) -> Option<&Caller> {
        match self.fleet.get(target) {
            Some(t) => t.snapshot.as_ref().map(|s| &s.caller),
            None => self.caller.as_ref(),
        }
    }

    /// What the poolers in front of server `target` said at its last refresh.
    pub fn pooler_states_of(&self, target: usize) -> &[PoolerState] {
        match self.fleet.get(target) {
            Some(t) => t.snapshot.as_ref().map_or(&[], |s| &s.pooler_states),
            None => &self.pooler_states,
        }
    }

    /// The roles of the applications behind the poolers of server `target` that are
    /// superusers there.
    pub fn pooler_superusers_of(&self, target: usize) -> &BTreeSet<String> {
        static NONE: BTreeSet<String> = BTreeSet::new();
        match self.fleet.get(target) {
            Some(t) => t.snapshot.as_ref().map_or(&NONE, |s| &s.pooler_superusers),
            None => &self.pooler_superusers,
        }
    }

    /// The merged table of several servers from each one's last refresh: the rows of the
    /// connected ones (a disconnected server's rows are gone), each with its server.
    fn merge_fleet(&mut self) {
        self.sessions.clear();
        self.origins.clear();
        self.locks.clear();
        self.progress.clear();
        self.pooled.clear();
        self.pooled_origins.clear();
        self.poolers.clear();
        for (i, t) in self.fleet.iter().enumerate() {
            if let Some(snap) = &t.snapshot {
                self.sessions.extend(snap.sessions.iter().cloned());
                self.origins
                    .extend(std::iter::repeat_n(i, snap.sessions.len()));
                // Each server's poolers: their application connections holding no
                // backend are rows under that server, their lines say whose they are.
                self.pooled.extend(snap.pooled.iter().cloned());
                self.pooled_origins
                    .extend(std::iter::repeat_n(i, snap.pooled.len()));
                self.poolers
                    .extend(snap.poolers.iter().map(|l| format!("{}: {l}", t.name)));
            }
        }
        let mut connected = self.fleet.iter().filter_map(|t| t.snapshot.as_ref());
        // The privilege doctor and `!` go by the first server that answers.
        if let Some(first) = connected.next() {
            self.caller = Some(first.caller.clone());
            self.read_all_stats = first.read_all_stats;
        }
        // `!` only where pgkill is a superuser on every server shown.
        if self
            .fleet
            .iter()
            .filter_map(|t| t.snapshot.as_ref())
            .any(|s| !s.caller.superuser)
        {
            if let Some(c) = self.caller.as_mut() {
                c.superuser = false;
            }
        }
    }

    /// The filter typed in the view, as the server evaluates it (`q:` words as
    /// case-insensitive literal matches of the query text).
    pub fn typed_filter(&self) -> Filter {
        self.contains.iter().fold(self.filter.clone(), |f, word| {
            f.and(Filter::query_contains(word))
        })
    }

    /// What confirming `signal` of `rows` would do: who is signalled or ended at a
    /// pooler, who is refused and why (the decisions `pgkill kill`/`cancel` make).
    pub fn plan(&self, signal: Signal, rows: &[RowKey], include_superusers: bool) -> Decision {
        let (origins, sessions): (Vec<usize>, Vec<Session>) = rows
            .iter()
            .filter_map(|k| match k {
                RowKey::Backend(target, pid) => {
                    self.session(*target, *pid).map(|s| (*target, s.clone()))
                }
                RowKey::Pooled { .. } => None,
            })
            .unzip();
        let pooled: Vec<(usize, Pooled)> = rows
            .iter()
            .filter_map(|k| match k {
                RowKey::Pooled { target, .. } => self.pooled_row(k).map(|p| (*target, p.clone())),
                RowKey::Backend(..) => None,
            })
            .collect();
        let filter = Filter {
            include_superusers: include_superusers || self.include_superusers,
            ..Filter::default()
        };
        let nobody = Caller {
            user: String::new(),
            superuser: false,
            signal_backend: false,
        };
        let mut decision = Decision {
            backends: Plan {
                signal,
                targets: Vec::new(),
            },
            at_pooler: Vec::new(),
            left_alone: Vec::new(),
            origins: Vec::new(),
            at_pooler_origins: Vec::new(),
        };
        // Each server's part is decided with who pgkill is on that server and the
        // poolers in front of it.
        let servers: BTreeSet<usize> = origins
            .iter()
            .copied()
            .chain(pooled.iter().map(|(t, _)| *t))
            .collect();
        for target in servers {
            let group: Vec<Session> = sessions
                .iter()
                .zip(&origins)
                .filter(|(_, o)| **o == target)
                .map(|(s, _)| s.clone())
                .collect();
            let group_pooled: Vec<Pooled> = pooled
                .iter()
                .filter(|(t, _)| *t == target)
                .map(|(_, p)| p.clone())
                .collect();
            let caller = self.caller_of(target).unwrap_or(&nobody);
            let states = self.pooler_states_of(target);
            let (backends, at_pooler, left_alone) = if states.is_empty() && group_pooled.is_empty()
            {
                let mut plan = Plan::build(signal, group, &filter, caller);
                // `A` lists other backends; signalling them stays the CLI's, with
                // `--all-backends`.
                for t in &mut plan.targets {
                    if t.refused.is_none() && !t.session.is_client() {
                        t.refused = Some(format!(
                            "not a client session ({}): top signals client sessions only; pgkill kill --all-backends --pid {} does",
                            t.session.backend_type.as_deref().unwrap_or("?"),
                            t.session.pid
                        ));
                    }
                }
                (plan, Vec::new(), Vec::new())
            } else {
                self.plan_through_poolers(signal, target, caller, &filter, group, group_pooled)
            };
            decision
                .origins
                .extend(std::iter::repeat_n(target, backends.targets.len()));
            decision.backends.targets.extend(backends.targets);
            decision
                .at_pooler_origins
                .extend(std::iter::repeat_n(target, at_pooler.len()));
            decision.at_pooler.extend(at_pooler);
            let named = |l: String| {
                if self.several_targets() {
                    format!("{}: {l}", self.target_name(target))
                } else {
                    l
                }
            };
            decision
                .left_alone
                .extend(left_alone.into_iter().map(named));
        }
        decision
    }

    /// Server `target`'s part of an action when poolers are in front of it: the
    /// decisions `pgkill kill --pgbouncer`/`cancel --pgbouncer` make (the backends, the
    /// applications ended at the pooler, what is left alone).
    fn plan_through_poolers(
        &self,
        signal: Signal,
        target: usize,
        caller: &Caller,
        filter: &Filter,
        sessions: Vec<Session>,
        pooled: Vec<Pooled>,
    ) -> (Plan, Vec<AppTarget>, Vec<String>) {
        let idle = |n: usize| {
            (n > 0).then(|| {
                format!("{n} pooler server connection(s) serving no application: left alone")
            })
        };
        match signal {
            Signal::Terminate => {
                let kill = KillPlan::new(
                    caller,
                    filter,
                    sessions,
                    pooled,
                    self.pooler_states_of(target),
                    self.pooler_superusers_of(target),
                );
                let backends = kill.backends();
                (
                    backends,
                    kill.at_pooler,
                    idle(kill.idle_pool_connections).into_iter().collect(),
                )
            }
            Signal::Cancel => {
                let cancel = CancelPlan::build(caller, filter, sessions, &pooled);
                let mut left_alone: Vec<String> =
                    idle(cancel.idle_pool_connections).into_iter().collect();
                if cancel.pooled > 0 {
                    left_alone.push(format!(
                        "{} application connection(s) at the pooler hold no backend and run no statement: nothing to cancel",
                        cancel.pooled
                    ));
                }
                (cancel.backends(), Vec::new(), left_alone)
            }
        }
    }

    /// Whether `!` can include protected superuser sessions (the caller may signal them).
    pub fn may_include_superusers(&self) -> bool {
        self.caller.as_ref().is_some_and(|c| c.superuser) && !self.include_superusers
    }

    /// Keeps the selection within what the table shows: a selected row the filter now
    /// hides (or that stopped matching it) is unselected, and the footer says so.
    fn prune_selection(&mut self) {
        // While a filter is being typed the table shows each half-typed state; the
        // selection is kept to what the filter shows once it is entered.
        if matches!(self.mode, Mode::Filtering { .. }) {
            return;
        }
        let shown: BTreeSet<RowKey> = self.visible().iter().map(Row::key).collect();
        let before = self.selected.len();
        self.selected.retain(|p| shown.contains(p));
        let hidden = before - self.selected.len();
        if hidden > 0 {
            self.note = Some(format!(
                "{hidden} selected session(s) no longer shown were unselected"
            ));
        }
    }

    /// Refuses an action while the filter text is not understood (the table then shows
    /// the last valid filter, which is not what the user is typing).
    fn filter_blocks_action(&mut self) -> bool {
        if self.filter_error.is_some() {
            self.note = Some(
                "the filter is not understood: the table still shows the last valid filter; fix the filter (/) before selecting or signalling".into(),
            );
            true
        } else {
            false
        }
    }

    /// The rows shown: the sessions filtered and sorted, then the application
    /// connections at poolers that hold no backend (filtered as `ls --pgbouncer` does:
    /// filters that need a backend select none of them).
    pub fn visible(&self) -> Vec<Row<'_>> {
        let origin = |i: usize| self.origins.get(i).copied().unwrap_or(0);
        let shown_target = |t: usize| {
            self.target_filter.is_empty()
                || self
                    .target_filter
                    .iter()
                    .any(|name| name == self.target_name(t))
        };
        let rows: Vec<(usize, &Session)> = self
            .sessions
            .iter()
            .enumerate()
            .map(|(i, s)| (origin(i), s))
            .filter(|(t, _)| shown_target(*t))
            .filter(|(_, s)| match &s.pooler {
                // Behind a pooler `app:` and `client:` are the application's, as in `ls`.
                Some(_) => self
                    .filter
                    .matches_row(&pgkill_core::pooler::as_seen_by_the_application(s)),
                None => self.filter.matches_row(s),
            })
            .filter(|(_, s)| {
                self.contains.iter().all(|needle| {
                    s.visible_query()
                        .is_some_and(|q| q.to_lowercase().contains(needle.as_str()))
                })
            })
            .collect();
        let key = self.sort;
        // An age is worked out once per row, not at each of the sort's comparisons
        // (at 1,000 sessions that was a sixth of `top`'s time).
        let age = |s: &Session| match key {
            Column::StateAge => s.state_age(),
            Column::Xact => s.xact_age(),
            _ => None,
        };
        let mut keyed: Vec<(Option<std::time::Duration>, (usize, &Session))> =
            rows.into_iter().map(|(t, s)| (age(s), (t, s))).collect();
        keyed.sort_by(|(age_a, (ta, a)), (age_b, (tb, b))| {
            let ord = match key {
                Column::Target => self.target_name(*ta).cmp(self.target_name(*tb)),
                Column::StateAge | Column::Xact => age_a.cmp(age_b),
                Column::Pid => a.pid.cmp(&b.pid),
                Column::User => a.user.cmp(&b.user),
                Column::Database => a.database.cmp(&b.database),
                Column::State => a.state.cmp(&b.state),
                Column::Wait => shown_wait(a).cmp(&shown_wait(b)),
                Column::BlockedBy => a.blocked_by.cmp(&b.blocked_by),
                Column::Application => a.application_name.cmp(&b.application_name),
                Column::Client => {
                    (a.client_addr, a.client_port).cmp(&(b.client_addr, b.client_port))
                }
                Column::Query => a.visible_query().cmp(&b.visible_query()),
                Column::XminAge => a.xmin_age.cmp(&b.xmin_age),
                Column::BackendType => a.backend_type.cmp(&b.backend_type),
            };
            let ord = if self.descending { ord.reverse() } else { ord };
            ord.then(a.pid.cmp(&b.pid)).then(ta.cmp(tb))
        });
        let mut rows: Vec<(usize, &Session)> = keyed.into_iter().map(|(_, row)| row).collect();
        // Each pooled row is under the server its pooler is in front of.
        let mut pooled: Vec<(usize, &Pooled)> = if self.contains.is_empty() {
            let now = self
                .sessions
                .first()
                .map_or_else(chrono::Utc::now, |s| s.now);
            self.pooled_with_origins()
                .filter(|(t, _)| shown_target(*t))
                .filter(|(_, p)| self.filter.matches_row(&p.as_session(now)))
                .collect()
        } else {
            // `q:` needs a query: pooled connections run none.
            Vec::new()
        };
        pooled.sort_by(|(ta, a), (tb, b)| {
            (ta, &a.pooler, &a.database, &a.client.user, a.client.port).cmp(&(
                tb,
                &b.pooler,
                &b.database,
                &b.client.user,
                b.client.port,
            ))
        });
        under_their_leaders(&mut rows);
        rows.into_iter()
            .map(|(t, s)| Row::Backend(t, s))
            .chain(pooled.into_iter().map(|(t, p)| Row::Pooled(t, p)))
            .collect()
    }

    /// The row under the cursor.
    pub fn current(&self) -> Option<Row<'_>> {
        self.visible().get(self.cursor).copied()
    }

    /// The session with this pid on server `target` (index into `fleet`; 0 with one
    /// server).
    pub fn session(&self, target: usize, pid: i32) -> Option<&Session> {
        self.sessions
            .iter()
            .enumerate()
            .find(|(i, s)| s.pid == pid && self.origins.get(*i).copied().unwrap_or(0) == target)
            .map(|(_, s)| s)
    }

    /// The pooled application connection with this key.
    pub fn pooled_row(&self, key: &RowKey) -> Option<&Pooled> {
        self.pooled_with_origins()
            .find(|(t, p)| RowKey::of_pooled(*t, p) == *key)
            .map(|(_, p)| p)
    }

    /// The pooled application connections with the server behind their pooler (index
    /// into `fleet`; 0 with one server).
    fn pooled_with_origins(&self) -> impl Iterator<Item = (usize, &Pooled)> {
        self.pooled
            .iter()
            .enumerate()
            .map(|(i, p)| (self.pooled_origins.get(i).copied().unwrap_or(0), p))
    }

    /// Whether the row with this key is in the last refresh.
    pub fn present(&self, key: &RowKey) -> bool {
        match key {
            RowKey::Backend(target, pid) => self.session(*target, *pid).is_some(),
            RowKey::Pooled { .. } => self.pooled_row(key).is_some(),
        }
    }

    /// The sessions with their servers (index into `fleet`; 0 with one server).
    fn with_origins(&self) -> impl Iterator<Item = (usize, &Session)> {
        self.sessions
            .iter()
            .enumerate()
            .map(|(i, s)| (self.origins.get(i).copied().unwrap_or(0), s))
    }

    /// Sessions that block others but wait for nobody shown here: the roots of the
    /// blocking tree, each with its server, those blocking the most sessions (down the
    /// whole chain) first, over every server. Lock chains never cross servers: a pid
    /// names a session of its own server only.
    pub fn blocking_roots(&self) -> Vec<(usize, &Session)> {
        let listed = |target: usize, pid: &i32| self.session(target, *pid).is_some();
        let mut roots: Vec<(usize, usize, &Session)> = self
            .with_origins()
            .filter(|(t, s)| s.blocking > 0 && !s.blocked_by.iter().any(|p| listed(*t, p)))
            .map(|(t, s)| (self.blocked_behind(t, s.pid), t, s))
            .collect();
        roots.sort_by_key(|(n, t, s)| (std::cmp::Reverse(*n), *t, s.pid));
        roots.into_iter().map(|(_, t, s)| (t, s)).collect()
    }

    /// How many sessions of server `target` wait for `pid`, directly or behind another
    /// waiter.
    pub fn blocked_behind(&self, target: usize, pid: i32) -> usize {
        let mut seen = BTreeSet::from([pid]);
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            for w in self.waiting_for(target, p) {
                if seen.insert(w.pid) {
                    todo.push(w.pid);
                }
            }
        }
        seen.len() - 1
    }

    /// The blocking tree, line by line: each root, then the sessions waiting for it and
    /// those waiting for them, at every level. A session waiting for several stands
    /// under each of them (and says so); a cycle (a deadlock about to be detected) is
    /// cut where it comes round. With several targets each server's chains are built
    /// apart (by server and pid) and the roots of all of them ranked together.
    pub fn blocking_tree(&self) -> Vec<TreeLine> {
        fn walk(
            app: &App,
            target: usize,
            pid: i32,
            prefix: &str,
            path: &mut Vec<i32>,
            out: &mut Vec<TreeLine>,
        ) {
            let children = app.waiting_for(target, pid);
            for (i, w) in children.iter().enumerate() {
                if path.contains(&w.pid) {
                    continue;
                }
                let last = i + 1 == children.len();
                out.push(TreeLine {
                    target,
                    pid: w.pid,
                    depth: path.len(),
                    prefix: format!("{prefix}{}", if last { "└─ " } else { "├─ " }),
                    also_waits_for: w.blocked_by.iter().copied().filter(|b| *b != pid).collect(),
                    total: 0,
                });
                path.push(w.pid);
                let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
                walk(app, target, w.pid, &deeper, path, out);
                path.pop();
            }
        }
        let mut out = Vec::new();
        let mut roots: Vec<(usize, i32)> = self
            .blocking_roots()
            .iter()
            .map(|(t, s)| (*t, s.pid))
            .collect();
        // Sessions waiting in a circle have no root: the first of them stands for one.
        let mut circles: Vec<(usize, i32)> = self
            .with_origins()
            .filter(|(t, s)| !s.blocked_by.is_empty() && !self.waiting_for(*t, s.pid).is_empty())
            .map(|(t, s)| (t, s.pid))
            .collect();
        circles.sort_unstable();
        let mut i = 0;
        loop {
            let (target, root) = if let Some(r) = roots.get(i) {
                *r
            } else if let Some(c) = circles
                .iter()
                .find(|(t, c)| !out.iter().any(|l: &TreeLine| l.target == *t && l.pid == *c))
            {
                roots.push(*c);
                *c
            } else {
                break;
            };
            i += 1;
            let total = self.blocked_behind(target, root);
            if total == 0 {
                continue;
            }
            out.push(TreeLine {
                target,
                pid: root,
                depth: 0,
                prefix: String::new(),
                also_waits_for: self
                    .session(target, root)
                    .map(|s| s.blocked_by.clone())
                    .unwrap_or_default(),
                total,
            });
            let mut path = vec![root];
            walk(self, target, root, "", &mut path, &mut out);
        }
        out
    }

    /// Sessions of server `target` waiting for `pid`.
    pub fn waiting_for(&self, target: usize, pid: i32) -> Vec<&Session> {
        self.with_origins()
            .filter(|(t, s)| *t == target && s.blocked_by.contains(&pid))
            .map(|(_, s)| s)
            .collect()
    }

    fn apply_filter_text(&mut self) {
        self.filter_cursor = self.filter_cursor.min(self.filter_text.chars().count());
        // `target:NAME` picks servers of the merged table: the view's alone, never part
        // of the filter a server evaluates.
        let (targets, words): (Vec<&str>, Vec<&str>) = self
            .filter_text
            .split_whitespace()
            .partition(|w| w.starts_with("target:"));
        let targets: Vec<String> = targets
            .iter()
            .filter_map(|w| w.strip_prefix("target:"))
            .map(str::to_owned)
            .collect();
        let parsed = match targets.iter().find(|t| t.is_empty()) {
            Some(_) => Err("\"target:\": use target:NAME (a name the header shows)".to_owned()),
            None => parse_words(&words.join(" ")),
        };
        match parsed {
            Ok((filter, contains)) => {
                self.filter = Filter {
                    all_backends: true,
                    ..filter
                };
                self.contains = contains;
                self.target_filter = targets;
                self.filter_error = None;
                self.applied_filter = self.filter_text.clone();
            }
            Err(e) => self.filter_error = Some(e),
        }
        self.cursor = 0;
    }

    fn clamp_cursor(&mut self) {
        let n = self.visible().len();
        self.cursor = self.cursor.min(n.saturating_sub(1));
    }

    fn targets(&self) -> Vec<RowKey> {
        if self.selected.is_empty() {
            self.current().map(|r| vec![r.key()]).unwrap_or_default()
        } else {
            self.selected.iter().cloned().collect()
        }
    }
}

/// Moves each parallel worker (`leader_pid` another session's, PostgreSQL 13+) to just
/// after its leader, in pid order, when its leader is listed; the others keep their
/// place in the sort.
fn under_their_leaders(rows: &mut Vec<(usize, &Session)>) {
    let leaders: BTreeSet<(usize, i32)> = rows.iter().map(|(t, s)| (*t, s.pid)).collect();
    let is_worker = |(t, s): &(usize, &Session)| {
        s.leader_pid
            .is_some_and(|l| l != s.pid && leaders.contains(&(*t, l)))
    };
    if !rows.iter().any(is_worker) {
        return;
    }
    let mut workers: Vec<(usize, &Session)> = rows.iter().copied().filter(is_worker).collect();
    workers.sort_by_key(|(t, s)| (*t, s.pid));
    let others: Vec<(usize, &Session)> = rows.iter().copied().filter(|r| !is_worker(r)).collect();
    rows.clear();
    for (t, s) in others {
        rows.push((t, s));
        rows.extend(
            workers
                .iter()
                .filter(|(wt, w)| *wt == t && w.leader_pid == Some(s.pid)),
        );
    }
}

/// How many lines the header takes on a screen `width` wide: two, and the health
/// header's two (wide screens) or three.
pub fn header_height(show_health: bool, width: u16) -> u16 {
    match (show_health, width >= 160) {
        (false, _) => 2,
        (true, true) => 4,
        (true, false) => 5,
    }
}

/// The history graph's lines: none on a screen under 20 lines (the body needs them).
pub fn graph_height(height: u16) -> u16 {
    if height >= 20 {
        3
    } else {
        0
    }
}

/// Where ↑ ↓ j PgUp PgDn Home End move a scrolled pane (`page` lines a page), never past
/// `last`; other keys leave it where it is.
fn scroll_with(key: Key, at: usize, page: usize, last: usize) -> usize {
    match key {
        Key::Up => at.saturating_sub(1),
        Key::Down | Key::Char('j') => at + 1,
        Key::PageUp => at.saturating_sub(page),
        Key::PageDown => at + page,
        Key::Home => 0,
        Key::End => last,
        _ => at,
    }
    .min(last)
}

/// Applies `event` to `app` and says what the loop must do. Pure: no I/O, no clock.
pub fn update(app: &mut App, event: Event) -> Vec<Effect> {
    match event {
        Event::Tick => {
            if app.paused {
                vec![]
            } else {
                vec![Effect::Refresh]
            }
        }
        Event::Resize { width, height } => {
            app.size = (width, height);
            // Sorting follows what is on screen.
            if !app.columns().contains(&app.sort) {
                app.sort = Column::Pid;
            }
            vec![]
        }
        Event::Snapshot(Ok(snapshot)) => {
            app.conn = ConnState::Connected;
            app.history.push_back(counts(&snapshot.sessions));
            while app.history.len() > HISTORY {
                app.history.pop_front();
            }
            app.server = Some(snapshot.server);
            app.poolers = snapshot.poolers;
            app.sessions = snapshot.sessions;
            app.locks = snapshot.locks;
            app.progress = snapshot.progress;
            if let Some(now) = snapshot.health {
                if let Some(before) = &app.health {
                    app.rates = Rates::between(before, &now).or(app.rates);
                }
                app.health = Some(*now);
            }
            app.pooled = snapshot.pooled;
            app.pooler_states = snapshot.pooler_states;
            app.pooler_superusers = snapshot.pooler_superusers;
            app.caller = Some(snapshot.caller);
            app.read_all_stats = snapshot.read_all_stats;
            // Rows that ended go quietly; rows that stopped matching the filter are said.
            let selected = std::mem::take(&mut app.selected);
            app.selected = selected.into_iter().filter(|k| app.present(k)).collect();
            app.prune_selection();
            app.clamp_cursor();
            vec![]
        }
        Event::Snapshot(Err(e)) => {
            app.conn = ConnState::Lost(e);
            vec![]
        }
        Event::AuthFailed(e) => {
            app.conn = ConnState::AuthFailed(e);
            vec![]
        }
        Event::Outcomes(result) => {
            match result {
                Ok((outcomes, app_outcomes)) => {
                    for o in &outcomes {
                        app.selected.remove(&RowKey::Backend(0, o.pid));
                    }
                    unselect_ended(&mut app.selected, 0, &app_outcomes);
                    app.outcomes = outcomes;
                    app.app_outcomes = app_outcomes;
                    app.action_error = None;
                }
                Err(e) => app.action_error = Some(e),
            }
            vec![Effect::Refresh]
        }
        Event::From { target, event } => from_target(app, target, *event),
        Event::Key(key) => on_key(app, key),
    }
}

/// Unselects the rows of server `target` that an action ended at its poolers: the
/// application connections and the backends they held.
fn unselect_ended(selected: &mut BTreeSet<RowKey>, target: usize, ended: &[AppOutcome]) {
    for o in ended {
        selected.retain(|k| match k {
            RowKey::Pooled {
                target: t,
                pooler,
                ptr,
                port,
                ..
            } => {
                !(*t == target
                    && *pooler == o.pooler
                    && *ptr == o.client.ptr
                    && *port == o.client.port)
            }
            RowKey::Backend(t, pid) => !(*t == target && o.backend == Some(*pid)),
        });
    }
}

/// What server `target` of several sent: its refresh replaces its rows in the merged
/// table (a failed one takes them away and the header says it is disconnected, while
/// the others' rows stay); an action's outcomes are added to the last action's.
fn from_target(app: &mut App, target: usize, event: Event) -> Vec<Effect> {
    let Some(t) = app.fleet.get_mut(target) else {
        return vec![];
    };
    match event {
        Event::Snapshot(Ok(mut snapshot)) => {
            t.conn = ConnState::Connected;
            // Each server's rates come from its own two readings.
            if let Some(now) = snapshot.health.take() {
                if let Some(before) = &t.health {
                    t.rates = Rates::between(before, &now).or(t.rates);
                }
                t.health = Some(*now);
            }
            t.snapshot = Some(snapshot);
        }
        Event::Snapshot(Err(e)) => {
            t.conn = ConnState::Lost(e);
            t.snapshot = None;
            t.health = None;
            t.rates = None;
        }
        Event::AuthFailed(e) => {
            t.conn = ConnState::AuthFailed(e);
            t.snapshot = None;
            t.health = None;
            t.rates = None;
        }
        Event::Outcomes(result) => {
            match result {
                Ok((outcomes, app_outcomes)) => {
                    for o in &outcomes {
                        app.selected.remove(&RowKey::Backend(target, o.pid));
                    }
                    unselect_ended(&mut app.selected, target, &app_outcomes);
                    app.outcome_targets
                        .extend(std::iter::repeat_n(target, outcomes.len()));
                    app.outcomes.extend(outcomes);
                    app.app_outcome_targets
                        .extend(std::iter::repeat_n(target, app_outcomes.len()));
                    app.app_outcomes.extend(app_outcomes);
                }
                Err(e) => {
                    let e = format!("{}: {e}", app.target_name(target));
                    app.action_error = Some(match app.action_error.take() {
                        Some(before) => format!("{before} · {e}"),
                        None => e,
                    });
                }
            }
            return vec![Effect::Refresh];
        }
        // Only refreshes, failed logins and outcomes come from a server.
        _ => return vec![],
    }
    app.merge_fleet();
    // The graph follows the first server's refreshes (one point a refresh round).
    if app.fleet.iter().position(|t| t.snapshot.is_some()) == Some(target) {
        app.history.push_back(counts(&app.sessions));
        while app.history.len() > HISTORY {
            app.history.pop_front();
        }
    }
    let selected = std::mem::take(&mut app.selected);
    app.selected = selected.into_iter().filter(|k| app.present(k)).collect();
    app.prune_selection();
    app.clamp_cursor();
    vec![]
}

/// `y`: copies the full query of `pid` (as written, line breaks kept); `Y`: its pid.
fn copy(app: &mut App, target: usize, pid: i32, just_the_pid: bool) -> Vec<Effect> {
    let Some(s) = app.session(target, pid) else {
        return vec![];
    };
    if just_the_pid {
        app.note = Some(format!("copied pid {pid} to the clipboard (OSC 52)"));
        return vec![Effect::Copy(pid.to_string())];
    }
    match s.visible_query().map(str::to_owned) {
        Some(q) => {
            app.note = Some(format!(
                "copied the query of {pid} ({} characters) to the clipboard (OSC 52: if nothing arrives, the terminal does not allow it)",
                q.chars().count()
            ));
            vec![Effect::Copy(q)]
        }
        None => {
            app.note = Some(format!(
                "the query of {pid} is hidden from you (needs pg_read_all_stats): nothing copied"
            ));
            vec![]
        }
    }
}

/// What the wait column shows: empty unless the session waits on something other than
/// its client (`Client:ClientRead` on an idle session is no news).
pub fn shown_wait(s: &Session) -> String {
    if s.wait_event_type.as_deref() == Some("Client")
        && s.wait_event.as_deref() == Some("ClientRead")
    {
        String::new()
    } else {
        s.wait_text()
    }
}

/// Edits the filter line as a shell does: characters go in at the cursor; Backspace,
/// Left/Right/Home/End, Ctrl-U (everything before the cursor), Ctrl-W (the word before
/// it), Ctrl-A/Ctrl-E (start/end), Ctrl-K (everything after it). Returns whether the key
/// was one of these.
fn edit_line(text: &mut String, cursor: &mut usize, key: Key) -> bool {
    let mut chars: Vec<char> = text.chars().collect();
    let at = (*cursor).min(chars.len());
    let at = match key {
        Key::Char(c) => {
            chars.insert(at, c);
            at + 1
        }
        Key::Backspace if at > 0 => {
            chars.remove(at - 1);
            at - 1
        }
        Key::Backspace => at,
        Key::Left => at.saturating_sub(1),
        Key::Right => (at + 1).min(chars.len()),
        Key::Home | Key::Ctrl('a') => 0,
        Key::End | Key::Ctrl('e') => chars.len(),
        Key::Ctrl('u') => {
            chars.drain(..at);
            0
        }
        Key::Ctrl('k') => {
            chars.truncate(at);
            at
        }
        Key::Ctrl('w') => {
            let mut from = at;
            while from > 0 && chars[from - 1] == ' ' {
                from -= 1;
            }
            while from > 0 && chars[from - 1] != ' ' {
                from -= 1;
            }
            chars.drain(from..at);
            from
        }
        _ => return false,
    };
    *text = chars.into_iter().collect();
    *cursor = at;
    true
}

fn on_key(app: &mut App, key: Key) -> Vec<Effect> {
    if key == Key::Ctrl('c') {
        return vec![Effect::Quit];
    }
    match app.mode.clone() {
        Mode::Filtering { previous } => {
            match key {
                Key::Enter => app.mode = Mode::Normal,
                Key::Esc => {
                    app.filter_text = previous;
                    app.filter_cursor = app.filter_text.chars().count();
                    app.mode = Mode::Normal;
                }
                _ => {
                    if !edit_line(&mut app.filter_text, &mut app.filter_cursor, key) {
                        return vec![];
                    }
                }
            }
            // Filter as you type.
            app.apply_filter_text();
            app.prune_selection();
            vec![]
        }
        Mode::Confirm {
            signal,
            rows,
            include_superusers,
        } => match key {
            Key::Char('y') | Key::Char('Y') => {
                app.mode = Mode::Normal;
                // One action per server, each through that server's connection.
                let mut by_target: BTreeMap<usize, Vec<Session>> = BTreeMap::new();
                for k in &rows {
                    if let RowKey::Backend(target, pid) = k {
                        if let Some(s) = app.session(*target, *pid).filter(|s| s.is_client()) {
                            by_target.entry(*target).or_default().push(s.clone());
                        }
                    }
                }
                // Each pooled row goes to the server its pooler is in front of.
                let mut pooled: BTreeMap<usize, Vec<Pooled>> = BTreeMap::new();
                for k in &rows {
                    if let (RowKey::Pooled { target, .. }, Some(p)) = (k, app.pooled_row(k)) {
                        pooled.entry(*target).or_default().push(p.clone());
                        by_target.entry(*target).or_default();
                    }
                }
                if app.several_targets() && !by_target.is_empty() {
                    // The outcomes of every server's part make up the last action.
                    app.outcomes.clear();
                    app.outcome_targets.clear();
                    app.app_outcomes.clear();
                    app.app_outcome_targets.clear();
                    app.action_error = None;
                }
                let filter = app.typed_filter();
                let include_superusers = include_superusers || app.include_superusers;
                by_target
                    .into_iter()
                    .map(|(target, targets)| Effect::Signal {
                        target,
                        signal,
                        targets,
                        pooled: pooled.remove(&target).unwrap_or_default(),
                        filter: Box::new(filter.clone()),
                        include_superusers,
                    })
                    .collect()
            }
            Key::Char('!') if app.may_include_superusers() => {
                app.mode = Mode::Confirm {
                    signal,
                    rows,
                    include_superusers: !include_superusers,
                };
                vec![]
            }
            // Enter means no: a `k` typed by reflex (vi's "up") and then Enter signals
            // nothing.
            Key::Char('n') | Key::Char('N') | Key::Esc | Key::Char('q') | Key::Enter => {
                app.mode = Mode::Normal;
                vec![]
            }
            _ => vec![],
        },
        Mode::Help { scroll } => {
            let (_, last) = crate::view::help_lines(app.size.0, app.body_height());
            let scroll = match key {
                Key::Esc | Key::Enter | Key::Char('q' | '?' | 'h') | Key::F1 => {
                    app.mode = Mode::Normal;
                    return vec![];
                }
                Key::Char(' ') => scroll_with(Key::Down, scroll, app.page(), last),
                key => scroll_with(key, scroll, app.page(), last),
            };
            app.mode = Mode::Help { scroll };
            vec![]
        }
        Mode::Detail(row) => {
            if matches!(key, Key::Esc | Key::Enter | Key::Char('q' | '?') | Key::F1) {
                app.mode = Mode::Normal;
            }
            let last = match row {
                RowKey::Backend(target, pid) => crate::view::detail_lines(app, target, pid)
                    .map_or(0, |l| l.len().saturating_sub(1)),
                _ => 0,
            };
            app.detail_scroll = scroll_with(key, app.detail_scroll, app.page(), last);
            match (key, row) {
                (Key::Char(c @ ('y' | 'Y')), RowKey::Backend(target, pid)) => {
                    copy(app, target, pid, c == 'Y')
                }
                _ => vec![],
            }
        }
        Mode::Blocking { cursor } => {
            let tree = app.blocking_tree();
            let last = tree.len().saturating_sub(1);
            let cursor = match key {
                Key::Esc | Key::Char('q' | 'b') => {
                    app.mode = Mode::Normal;
                    return vec![];
                }
                Key::Up => cursor.saturating_sub(1),
                Key::Down | Key::Char('j') => cursor + 1,
                Key::PageUp => cursor.saturating_sub(app.page()),
                Key::PageDown => cursor + app.page(),
                Key::Home => 0,
                Key::End => last,
                Key::Char(c @ ('k' | 'c')) => {
                    if let Some(line) = tree.get(cursor) {
                        app.mode = Mode::Confirm {
                            signal: if c == 'k' {
                                Signal::Terminate
                            } else {
                                Signal::Cancel
                            },
                            rows: vec![RowKey::Backend(line.target, line.pid)],
                            include_superusers: false,
                        };
                    }
                    return vec![];
                }
                Key::Enter => {
                    if let Some(line) = tree.get(cursor) {
                        app.mode = Mode::Detail(RowKey::Backend(line.target, line.pid));
                        app.detail_scroll = 0;
                    }
                    return vec![];
                }
                _ => cursor,
            };
            app.mode = Mode::Blocking {
                cursor: cursor.min(last),
            };
            vec![]
        }
        Mode::Normal => normal_key(app, key),
    }
}

fn normal_key(app: &mut App, key: Key) -> Vec<Effect> {
    match key {
        Key::Char('q') => return vec![Effect::Quit],
        Key::Char('/') => {
            app.mode = Mode::Filtering {
                previous: app.filter_text.clone(),
            };
            app.filter_cursor = app.filter_text.chars().count();
        }
        Key::Char('s') => {
            // Only the columns on screen.
            let shown = app.columns();
            let i = shown.iter().position(|c| *c == app.sort);
            app.sort = match i {
                Some(i) => shown[(i + 1) % shown.len()],
                None => shown.first().copied().unwrap_or(Column::Pid),
            };
            app.cursor = 0;
        }
        Key::Char('C') => {
            // Hide the column sorted on (sorting moves to the next one shown); on one
            // that cannot be hidden, show every column again.
            if app.sort.hideable() {
                let shown = app.columns();
                let next = shown
                    .iter()
                    .position(|c| *c == app.sort)
                    .and_then(|i| shown.get(i + 1))
                    .copied()
                    .unwrap_or(Column::Pid);
                app.hidden.push(app.sort);
                app.sort = next;
            } else {
                app.hidden.clear();
            }
            app.cursor = 0;
        }
        Key::Char('S') => app.descending = !app.descending,
        Key::Up => app.cursor = app.cursor.saturating_sub(1),
        Key::Down | Key::Char('j') => {
            app.cursor += 1;
            app.clamp_cursor();
        }
        Key::PageUp => app.cursor = app.cursor.saturating_sub(app.page()),
        Key::PageDown => {
            app.cursor += app.page();
            app.clamp_cursor();
        }
        Key::Home => app.cursor = 0,
        Key::End => {
            app.cursor = usize::MAX;
            app.clamp_cursor();
        }
        // Space selects the row and moves down, so that several rows are selected by
        // holding it.
        Key::Char(' ') => {
            if let Some(key) = app.current().map(|r| r.key()) {
                if !app.selected.remove(&key) {
                    app.selected.insert(key);
                }
                app.cursor += 1;
                app.clamp_cursor();
            }
        }
        Key::Char('a') if !app.filter_blocks_action() => {
            let keys: Vec<RowKey> = app.visible().iter().map(Row::key).collect();
            app.selected.extend(keys);
        }
        Key::Esc => {
            app.selected.clear();
            app.outcomes.clear();
            app.app_outcomes.clear();
            app.app_outcome_targets.clear();
            app.action_error = None;
            app.note = None;
        }
        Key::Char('c') | Key::Char('k') if !app.filter_blocks_action() => {
            let rows = app.targets();
            if !rows.is_empty() {
                let signal = if key == Key::Char('c') {
                    Signal::Cancel
                } else {
                    Signal::Terminate
                };
                app.mode = Mode::Confirm {
                    signal,
                    rows,
                    include_superusers: false,
                };
            }
        }
        Key::Enter => {
            if let Some(key) = app.current().map(|r| r.key()) {
                app.mode = Mode::Detail(key);
                app.detail_scroll = 0;
            }
        }
        Key::Char('b') => app.mode = Mode::Blocking { cursor: 0 },
        Key::Char('p') => {
            app.paused = !app.paused;
            if !app.paused {
                return vec![Effect::Refresh];
            }
        }
        // A new interval takes effect at once (the loop restarts its timer).
        Key::Char('+') => {
            app.interval = (app.interval * 2).min(MAX_INTERVAL);
            return vec![Effect::Refresh];
        }
        Key::Char('-') => {
            app.interval = (app.interval / 2).max(MIN_INTERVAL);
            return vec![Effect::Refresh];
        }
        Key::Char('?' | 'h') | Key::F1 => app.mode = Mode::Help { scroll: 0 },
        Key::Char(c @ ('y' | 'Y')) => {
            if let Some(Row::Backend(target, s)) = app.current() {
                let pid = s.pid;
                return copy(app, target, pid, c == 'Y');
            }
        }
        Key::Char('v') => app.wrap = !app.wrap,
        Key::Char('A') => {
            app.all_kinds = !app.all_kinds;
            app.note = Some(if app.all_kinds {
                "every kind of backend listed (autovacuum, walsenders, parallel and background workers): top signals client sessions only (pgkill kill --all-backends signals the others)".into()
            } else {
                "client sessions only".into()
            });
            return vec![Effect::Refresh];
        }
        Key::Char('H') => {
            app.show_health = !app.show_health;
            if app.show_health {
                // Rates need two readings from now on.
                app.health = None;
                app.rates = None;
                for t in &mut app.fleet {
                    t.health = None;
                    t.rates = None;
                }
                return vec![Effect::Refresh];
            }
        }
        _ => {}
    }
    vec![]
}

fn counts(sessions: &[Session]) -> Counts {
    let mut c = Counts::default();
    for s in sessions {
        match s.state.as_deref() {
            Some("active") => c.active += 1,
            Some("idle") => c.idle += 1,
            Some("idle in transaction") => c.idle_in_transaction += 1,
            Some("idle in transaction (aborted)") => c.aborted += 1,
            _ => {}
        }
        if s.wait_event_type.as_deref() == Some("Lock") {
            c.waiting += 1;
        }
    }
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::{DateTime, Utc};

    pub(crate) fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0)
    }

    pub(crate) fn session(pid: i32, db: &str, user: &str, state: &str, age: i64) -> Session {
        Session {
            pid,
            backend_start: at(-age),
            database: Some(db.into()),
            user: Some(user.into()),
            application_name: Some(format!("{user}-app")),
            client_addr: Some("10.1.2.3".parse().unwrap()),
            client_hostname: None,
            client_port: Some(5000 + pid),
            state: Some(state.into()),
            wait_event_type: (state == "active").then(|| "Timeout".into()),
            wait_event: (state == "active").then(|| "PgSleep".into()),
            backend_type: Some("client backend".into()),
            xact_start: (state != "idle").then(|| at(-age / 2)).flatten(),
            query_start: at(-age / 3),
            state_change: at(-age / 3),
            query: Some(format!("SELECT {pid} /* {state} */")),
            leader_pid: None,
            superuser: Some(false),
            blocked_by: vec![],
            blocking: 0,
            xmin_age: None,
            holds_xmin: false,
            waited_on_since: None,
            can_signal: true,
            pooler: None,
            now: at(0).unwrap_or_default(),
        }
    }

    pub(crate) fn sample() -> Snapshot {
        let mut holder = session(101, "shop", "migrations", "idle in transaction", 600);
        holder.blocking = 2;
        // Its waiters' statements started 40 s ago; its snapshot is the horizon.
        holder.waited_on_since = at(-40);
        holder.xmin_age = Some(50);
        holder.holds_xmin = true;
        let mut w1 = session(102, "shop", "web", "active", 120);
        w1.wait_event_type = Some("Lock".into());
        w1.wait_event = Some("relation".into());
        w1.blocked_by = vec![101];
        let mut w2 = w1.clone();
        w2.pid = 103;
        w2.backend_start = at(-90);
        Snapshot {
            locks: Vec::new(),
            progress: BTreeMap::new(),
            health: None,
            poolers: Vec::new(),
            pooled: Vec::new(),
            pooler_states: Vec::new(),
            pooler_superusers: BTreeSet::new(),
            server: ServerInfo {
                version: "15.18".into(),
                uptime: Duration::from_secs(3 * 3600 + 125),
                connections: 12,
                max_connections: 100,
                in_recovery: false,
            },
            caller: Caller {
                user: "postgres".into(),
                superuser: true,
                signal_backend: false,
            },
            read_all_stats: true,
            sessions: vec![
                holder,
                w1,
                w2,
                session(104, "shop", "web", "idle", 3000),
                session(105, "reports", "analyst", "active", 45),
                session(106, "shop", "worker", "idle in transaction", 30),
            ],
        }
    }

    /// The pids of backend rows, in order.
    fn pids<'a>(rows: impl IntoIterator<Item = &'a RowKey>) -> Vec<i32> {
        rows.into_iter()
            .filter_map(|k| match k {
                RowKey::Backend(_, pid) => Some(*pid),
                RowKey::Pooled { .. } => None,
            })
            .collect()
    }

    /// The pid of a backend row.
    fn pid(row: Row<'_>) -> i32 {
        match row {
            Row::Backend(_, s) => s.pid,
            Row::Pooled(..) => -1,
        }
    }

    pub(crate) fn loaded() -> App {
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(sample())));
        app
    }

    pub(crate) fn keys_for_tests(app: &mut App, keys: &str) -> Vec<Effect> {
        keys.chars()
            .flat_map(|c| update(app, Event::Key(Key::Char(c))))
            .collect()
    }

    fn keys(app: &mut App, k: &str) -> Vec<Effect> {
        keys_for_tests(app, k)
    }

    #[test]
    fn tick_refreshes_unless_paused() {
        let mut app = loaded();
        assert_eq!(update(&mut app, Event::Tick), vec![Effect::Refresh]);
        assert!(keys(&mut app, "p").is_empty());
        assert!(app.paused);
        assert!(update(&mut app, Event::Tick).is_empty());
        assert_eq!(
            keys(&mut app, "p"),
            vec![Effect::Refresh],
            "unpausing refreshes at once"
        );
    }

    #[test]
    fn q_quits() {
        assert_eq!(keys(&mut loaded(), "q"), vec![Effect::Quit]);
    }

    #[test]
    fn filter_as_you_type_and_escape_restores() {
        let mut app = loaded();
        keys(&mut app, "/db:reports");
        assert!(matches!(app.mode, Mode::Filtering { .. }));
        assert_eq!(
            app.visible().into_iter().map(pid).collect::<Vec<_>>(),
            vec![105]
        );
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.filter_text, "db:reports");
        keys(&mut app, "/ x");
        assert!(app.filter_error.is_some(), "a bad word is reported");
        assert_eq!(app.visible().len(), 1, "the last good filter stays applied");
        update(&mut app, Event::Key(Key::Esc));
        assert_eq!(app.filter_text, "db:reports");
        assert!(app.filter_error.is_none());
        keys(&mut app, "/");
        for _ in 0..20 {
            update(&mut app, Event::Key(Key::Backspace));
        }
        keys(&mut app, "state:idle-in-transaction user:worker");
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(
            app.visible().into_iter().map(pid).collect::<Vec<_>>(),
            vec![106]
        );
        keys(&mut app, "/");
        for _ in 0..60 {
            update(&mut app, Event::Key(Key::Backspace));
        }
        keys(&mut app, "q:pid");
        assert_eq!(
            app.visible().len(),
            0,
            "q: matches query text, case-insensitively"
        );
        for _ in 0..3 {
            update(&mut app, Event::Key(Key::Backspace));
        }
        keys(&mut app, "select 104");
        assert!(
            app.filter_error.is_some(),
            "`select` is not a key:value word"
        );
    }

    #[test]
    fn sort_cycles_and_reverses() {
        let mut app = loaded();
        update(
            &mut app,
            Event::Resize {
                width: 200,
                height: 50,
            },
        );
        assert_eq!(
            pid(app.visible()[0]),
            104,
            "longest in its state first (a shown column)"
        );
        keys(&mut app, "S");
        assert_eq!(pid(app.visible()[0]), 106);
        // `s` goes through the columns on screen only, and every one of them.
        let shown = app.columns();
        assert!(shown.contains(&Column::Application) && shown.contains(&Column::Wait));
        let mut seen = vec![app.sort];
        for _ in 1..shown.len() {
            keys(&mut app, "s");
            seen.push(app.sort);
        }
        seen.sort();
        let mut all = shown.clone();
        all.sort();
        assert_eq!(seen, all);
        keys(&mut app, "s");
        assert_eq!(app.sort, Column::StateAge, "and round again");
        while app.sort != Column::Pid {
            keys(&mut app, "s");
        }
        assert_eq!(pid(app.visible()[0]), 101, "ascending still");
        keys(&mut app, "S");
        assert_eq!(pid(app.visible()[0]), 106);
        // At 80 columns fewer columns are shown: sorting by one that went away falls
        // back to one on screen.
        while app.sort != Column::Application {
            keys(&mut app, "s");
        }
        update(
            &mut app,
            Event::Resize {
                width: 80,
                height: 24,
            },
        );
        assert!(!app.columns().contains(&Column::Application));
        assert_eq!(app.sort, Column::Pid);
        keys(&mut app, "s");
        assert!(app.columns().contains(&app.sort));
    }

    pub(crate) fn resize(app: &mut App, width: u16, height: u16) {
        update(app, Event::Resize { width, height });
    }

    #[test]
    fn capital_c_hides_the_sorted_column_and_s_skips_it() {
        let mut app = loaded();
        resize(&mut app, 200, 50);
        while app.sort != Column::Wait {
            keys(&mut app, "s");
        }
        keys(&mut app, "C");
        assert_eq!(app.hidden, [Column::Wait]);
        assert!(!app.columns().contains(&Column::Wait));
        assert_eq!(
            app.sort,
            Column::Xact,
            "sorting moves to the next one shown"
        );
        keys(&mut app, "C");
        assert_eq!(app.hidden, [Column::Wait, Column::Xact]);
        // `s` cycles through the shown columns only.
        let shown = app.columns();
        for _ in 0..2 * shown.len() {
            keys(&mut app, "s");
            assert!(shown.contains(&app.sort), "{:?}", app.sort);
        }
        // On pid (never hidden): every column again.
        while app.sort != Column::Pid {
            keys(&mut app, "s");
        }
        keys(&mut app, "C");
        assert!(app.hidden.is_empty());
        assert!(app.columns().contains(&Column::Wait));
        // Hiding the sort column that `--columns` left out: falls back on resize.
        let mut app = loaded();
        app.hidden = Column::hidden_by("pid,user,query").unwrap_or_default();
        resize(&mut app, 120, 40);
        assert_eq!(app.columns(), [Column::Pid, Column::User, Column::Query]);
        assert!(app.columns().contains(&app.sort));
    }

    #[test]
    fn select_confirm_and_signal() {
        let mut app = loaded();
        keys(&mut app, "  ");
        assert_eq!(app.selected.len(), 2);
        assert!(keys(&mut app, "k").is_empty());
        let Mode::Confirm { signal, rows, .. } = app.mode.clone() else {
            panic!("{:?}", app.mode)
        };
        assert_eq!(signal, Signal::Terminate);
        assert_eq!(rows.len(), 2);
        let effects = keys(&mut app, "y");
        assert_eq!(app.mode, Mode::Normal);
        match &effects[..] {
            [Effect::Signal {
                signal: Signal::Terminate,
                targets,
                include_superusers: false,
                ..
            }] => {
                assert_eq!(
                    targets.iter().map(|t| t.pid).collect::<Vec<_>>(),
                    pids(&rows)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn confirmation_can_be_declined() {
        let mut app = loaded();
        keys(&mut app, "c");
        assert!(matches!(
            app.mode,
            Mode::Confirm {
                signal: Signal::Cancel,
                ..
            }
        ));
        assert!(keys(&mut app, "n").is_empty());
        assert_eq!(app.mode, Mode::Normal);
        keys(&mut app, "k");
        assert!(update(&mut app, Event::Key(Key::Esc)).is_empty());
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn select_all_and_clear() {
        let mut app = loaded();
        keys(&mut app, "/db:shop");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, "a");
        assert_eq!(app.selected.len(), 5);
        update(&mut app, Event::Key(Key::Esc));
        assert!(app.selected.is_empty());
    }

    #[test]
    fn detail_help_and_blocking_tree() {
        let mut app = loaded();
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(app.mode, Mode::Detail(RowKey::Backend(0, 104)));
        update(&mut app, Event::Key(Key::Esc));
        keys(&mut app, "?");
        assert_eq!(app.mode, Mode::Help { scroll: 0 });
        keys(&mut app, "q");
        assert_eq!(app.mode, Mode::Normal, "q leaves help, it does not quit");
        keys(&mut app, "b");
        assert_eq!(
            app.blocking_roots()
                .iter()
                .map(|(_, s)| s.pid)
                .collect::<Vec<_>>(),
            vec![101]
        );
        keys(&mut app, "k");
        assert_eq!(
            app.mode,
            Mode::Confirm {
                signal: Signal::Terminate,
                rows: vec![RowKey::Backend(0, 101)],
                include_superusers: false,
            }
        );
    }

    #[test]
    fn typed_exclusions_blocking_for_and_holding_xmin() {
        let shown = |text: &str| {
            let mut app = loaded();
            keys(&mut app, &format!("/{text}"));
            update(&mut app, Event::Key(Key::Enter));
            assert!(app.filter_error.is_none(), "{text}: {:?}", app.filter_error);
            app.visible().into_iter().map(pid).collect::<Vec<_>>()
        };
        assert_eq!(shown("blocking-for:30s"), [101]);
        assert_eq!(shown("blocking-for:1m"), Vec::<i32>::new());
        assert_eq!(shown("holding-xmin"), [101]);
        assert_eq!(shown("holding-xmin -user:migrations"), Vec::<i32>::new());
        // `waiting`: the two sessions queued on the holder's lock, not the holder.
        assert_eq!(shown("waiting"), [102, 103]);
        assert_eq!(shown("waiting pid:103"), [103]);
        assert_eq!(shown("waiting user:migrations"), Vec::<i32>::new());
        let app = loaded();
        let not_web: Vec<i32> = app
            .visible()
            .into_iter()
            .filter(|r| matches!(r, Row::Backend(_, s) if s.user.as_deref() != Some("web")))
            .map(pid)
            .collect();
        let without_web = shown("-user:web");
        assert!(without_web.contains(&101) && !without_web.contains(&102));
        assert_eq!(without_web, not_web);
        assert_eq!(shown("user:web -user:web"), Vec::<i32>::new());
        // The signal re-checks them on the server.
        let mut app = loaded();
        keys(&mut app, "/blocking-for:30s -app:x*");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, "a");
        keys(&mut app, "k");
        match &keys(&mut app, "y")[..] {
            [Effect::Signal { filter, .. }] => {
                assert_eq!(filter.blocking_for, Some(Duration::from_secs(30)));
                assert_eq!(filter.exclude_apps, ["x*"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_signal_carries_the_filter_the_rows_were_selected_with() {
        // Regression (issue 9, defect 4): `state:idle`, `a`, one session starts a query,
        // `k`, `y`: the signalling statement must re-check `state:idle`.
        let mut app = loaded();
        keys(&mut app, "/state:idle q:select");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, "a");
        assert_eq!(pids(&app.selected), vec![104]);
        keys(&mut app, "k");
        match &keys(&mut app, "y")[..] {
            [Effect::Signal { filter, .. }] => {
                assert_eq!(filter.states, vec![pgkill_core::State::Idle]);
                assert_eq!(
                    filter.also,
                    vec![Filter::query_contains("select")],
                    "q: words are re-checked by the server too"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_selection_never_reaches_rows_the_filter_hides() {
        let mut app = loaded();
        keys(&mut app, "a");
        assert_eq!(app.selected.len(), 6);
        keys(&mut app, "/db:reports");
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(pids(&app.selected), vec![105]);
        assert!(
            app.note
                .as_deref()
                .is_some_and(|n| n.contains("5 selected")),
            "{:?}",
            app.note
        );
        keys(&mut app, "k");
        let Mode::Confirm { rows, .. } = app.mode.clone() else {
            panic!("{:?}", app.mode)
        };
        assert_eq!(
            pids(&rows),
            vec![105],
            "the question only names rows on screen"
        );
        // A row that stops matching at a refresh leaves the selection too.
        update(&mut app, Event::Key(Key::Esc));
        keys(&mut app, "/state:active");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, "a");
        let mut later = sample();
        later.sessions[4].state = Some("idle".into()); // 105 finished its query
        update(&mut app, Event::Snapshot(Ok(later)));
        assert!(
            !app.selected.contains(&RowKey::Backend(0, 105)),
            "{:?}",
            app.selected
        );
    }

    #[test]
    fn an_invalid_filter_shows_the_last_valid_one_and_blocks_actions() {
        let mut app = loaded();
        keys(&mut app, "/db:reports");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, "/ foo:bar");
        update(&mut app, Event::Key(Key::Enter));
        assert!(app.filter_error.is_some());
        assert_eq!(app.applied_filter.trim(), "db:reports");
        assert_eq!(app.visible().len(), 1, "still what db:reports showed");
        assert!(keys(&mut app, "a").is_empty() && app.selected.is_empty());
        assert!(keys(&mut app, "k").is_empty());
        assert_eq!(
            app.mode,
            Mode::Normal,
            "no confirmation while the filter is broken"
        );
        assert!(app
            .note
            .as_deref()
            .is_some_and(|n| n.contains("not understood")));
        // From an empty filter a broken one must not turn into "every session" actions.
        let mut fresh = loaded();
        keys(&mut fresh, "/foo:bar");
        update(&mut fresh, Event::Key(Key::Enter));
        assert!(keys(&mut fresh, "ak").is_empty());
        assert!(fresh.selected.is_empty() && fresh.mode == Mode::Normal);
    }

    #[test]
    fn the_confirmation_names_refusals_and_bang_includes_superusers() {
        // Regression (issue 9, defect 5): selected superuser sessions were promised and
        // then came back not_permitted.
        let mut snap = sample();
        snap.sessions[3].superuser = Some(true); // 104
        snap.sessions[5].superuser = Some(true); // 106
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap.clone())));
        keys(&mut app, "/db:shop");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, "ak");
        let plan = |app: &App| match &app.mode {
            Mode::Confirm {
                signal,
                rows,
                include_superusers,
            } => app.plan(*signal, rows, *include_superusers).backends,
            other => panic!("{other:?}"),
        };
        let p = plan(&app);
        assert_eq!(p.to_signal().count(), 3);
        let refused: Vec<i32> = p
            .targets
            .iter()
            .filter(|t| {
                t.refused
                    .as_deref()
                    .is_some_and(|r| r.contains("protected"))
            })
            .map(|t| t.session.pid)
            .collect();
        assert_eq!(refused, vec![104, 106]);
        keys(&mut app, "!");
        assert_eq!(plan(&app).to_signal().count(), 5, "! includes them");
        match &keys(&mut app, "y")[..] {
            [Effect::Signal {
                include_superusers: true,
                targets,
                ..
            }] => assert_eq!(targets.len(), 5),
            other => panic!("{other:?}"),
        }
        // A caller who may not signal superusers gets no `!`.
        snap.caller.superuser = false;
        let mut plain = App::new(Duration::from_secs(1));
        update(&mut plain, Event::Snapshot(Ok(snap)));
        keys(&mut plain, "/db:shop");
        update(&mut plain, Event::Key(Key::Enter));
        keys(&mut plain, "ak!");
        assert_eq!(plan(&plain).to_signal().count(), 3);
        assert!(plan(&plain).targets.iter().any(|t| t
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("only a superuser"))));
    }

    fn press(app: &mut App, ks: &[Key]) {
        for k in ks {
            update(app, Event::Key(*k));
        }
    }

    #[test]
    fn the_filter_line_edits_like_a_shell() {
        let mut app = loaded();
        keys(&mut app, "/db:shop user:web");
        press(&mut app, &[Key::Ctrl('w')]);
        assert_eq!(app.filter_text, "db:shop ");
        keys(&mut app, "user:worker");
        assert_eq!(app.visible().len(), 1, "filtered as typed: 106");
        press(&mut app, &[Key::Home]);
        keys(&mut app, "-");
        assert_eq!(app.filter_text, "-db:shop user:worker");
        press(&mut app, &[Key::Right, Key::Right, Key::Backspace]);
        assert_eq!(app.filter_text, "-d:shop user:worker");
        press(&mut app, &[Key::Left, Key::Left]);
        assert_eq!(app.filter_cursor, 0);
        press(&mut app, &[Key::Left]);
        assert_eq!(app.filter_cursor, 0, "no further than the start");
        press(&mut app, &[Key::End]);
        assert_eq!(app.filter_cursor, app.filter_text.chars().count());
        press(&mut app, &[Key::Left; 6]);
        press(&mut app, &[Key::Ctrl('u')]);
        assert_eq!(app.filter_text, "worker", "Ctrl-U clears before the cursor");
        assert!(
            !app.filter_text.contains('u') || app.filter_text == "worker",
            "Ctrl-U is no literal u"
        );
        press(&mut app, &[Key::End, Key::Ctrl('u')]);
        assert_eq!(app.filter_text, "");
        keys(&mut app, "db:reports");
        press(&mut app, &[Key::Enter]);
        assert_eq!(app.mode, Mode::Normal);
        assert_eq!(app.applied_filter, "db:reports");
        // Esc puts back the filter from before editing.
        keys(&mut app, "/");
        press(&mut app, &[Key::Ctrl('u'), Key::Esc]);
        assert_eq!(app.filter_text, "db:reports");
        // Ctrl-C quits from anywhere, even while typing.
        keys(&mut app, "/");
        assert_eq!(
            update(&mut app, Event::Key(Key::Ctrl('c'))),
            vec![Effect::Quit]
        );
    }

    #[test]
    fn page_keys_home_end_j_and_help_keys() {
        let mut snap = sample();
        for i in 0..40 {
            snap.sessions
                .push(session(300 + i, "shop", "web", "idle", 10 + i64::from(i)));
        }
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        update(
            &mut app,
            Event::Resize {
                width: 80,
                height: 24,
            },
        );
        let n = app.visible().len();
        keys(&mut app, "j");
        assert_eq!(app.cursor, 1, "j moves down");
        press(&mut app, &[Key::PageDown]);
        assert_eq!(app.cursor, 1 + app.page());
        press(&mut app, &[Key::PageUp, Key::PageUp]);
        assert_eq!(app.cursor, 0);
        press(&mut app, &[Key::End]);
        assert_eq!(app.cursor, n - 1);
        press(&mut app, &[Key::PageDown]);
        assert_eq!(app.cursor, n - 1);
        press(&mut app, &[Key::Home]);
        assert_eq!(app.cursor, 0);
        // Space selects and moves down (documented in the help).
        keys(&mut app, " ");
        assert_eq!((app.selected.len(), app.cursor), (1, 1));
        for open in [Key::F1, Key::Char('h'), Key::Char('?')] {
            press(&mut app, &[open]);
            assert_eq!(app.mode, Mode::Help { scroll: 0 }, "{open:?}");
            press(&mut app, &[Key::Down, Key::PageDown]);
            assert!(matches!(app.mode, Mode::Help { scroll } if scroll > 1));
            press(&mut app, &[Key::Home]);
            assert_eq!(app.mode, Mode::Help { scroll: 0 });
            press(&mut app, &[Key::Esc]);
            assert_eq!(app.mode, Mode::Normal);
        }
    }

    #[test]
    fn y_copies_the_query_and_capital_y_the_pid() {
        let mut snap = sample();
        snap.sessions[3].query = Some("SELECT 1\n-- two lines".into());
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        assert_eq!(
            app.current().map(|r| r.key()),
            Some(RowKey::Backend(0, 104))
        );
        assert_eq!(
            keys(&mut app, "y"),
            vec![Effect::Copy("SELECT 1\n-- two lines".into())]
        );
        assert_eq!(keys(&mut app, "Y"), vec![Effect::Copy("104".into())]);
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(keys(&mut app, "Y"), vec![Effect::Copy("104".into())]);
        assert_eq!(app.mode, Mode::Detail(RowKey::Backend(0, 104)));
        // A hidden query is not copied, and the note says why.
        let mut snap = sample();
        snap.sessions[3].query = Some(pgkill_core::session::INSUFFICIENT_PRIVILEGE.into());
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        assert!(keys(&mut app, "y").is_empty());
        assert!(app
            .note
            .as_deref()
            .is_some_and(|n| n.contains("pg_read_all_stats")));
    }

    #[test]
    fn the_privilege_doctor_names_the_grant() {
        let mut snap = sample();
        snap.caller = Caller {
            user: "bob".into(),
            superuser: false,
            signal_backend: false,
        };
        snap.read_all_stats = false;
        snap.sessions[3].state = None;
        snap.sessions[3].can_signal = false;
        snap.sessions[4].can_signal = false;
        snap.sessions[4].superuser = Some(true);
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap.clone())));
        let doctor = app.doctor().unwrap_or_default();
        assert!(
            doctor.contains("1 session(s) hide their details from bob: GRANT pg_read_all_stats"),
            "{doctor}"
        );
        assert!(
            doctor.contains("2 session(s) may not be signalled by bob: GRANT pg_signal_backend"),
            "{doctor}"
        );
        snap.caller.signal_backend = true;
        snap.read_all_stats = true;
        update(&mut app, Event::Snapshot(Ok(snap.clone())));
        let doctor = app.doctor().unwrap_or_default();
        assert!(
            !doctor.contains("pg_read_all_stats") && doctor.contains("1 are superusers'"),
            "{doctor}"
        );
        snap.caller.superuser = true;
        update(&mut app, Event::Snapshot(Ok(snap)));
        assert_eq!(app.doctor(), None);
    }

    #[test]
    fn parallel_workers_come_right_after_their_leader_whatever_the_sort() {
        let mut snap = sample();
        let mut leader = session(300, "shop", "app", "active", 50);
        leader.query = Some("SELECT count(*) FROM big".into());
        let mut workers = Vec::new();
        for pid in [302, 301] {
            let mut w = session(pid, "shop", "app", "active", 1);
            w.backend_type = Some("parallel worker".into());
            w.leader_pid = Some(300);
            workers.push(w);
        }
        // A worker whose leader is not listed keeps its place.
        let mut orphan = session(400, "shop", "app", "active", 2);
        orphan.leader_pid = Some(399);
        snap.sessions.extend([leader, orphan]);
        snap.sessions.extend(workers);
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        let order = |app: &App| -> Vec<i32> {
            app.visible()
                .iter()
                .filter_map(|r| match r {
                    Row::Backend(_, s) => Some(s.pid),
                    Row::Pooled(..) => None,
                })
                .collect()
        };
        for _ in 0..2 {
            let pids = order(&app);
            let at = pids
                .iter()
                .position(|p| *p == 300)
                .expect("the leader is listed");
            assert_eq!(&pids[at..at + 3], &[300, 301, 302], "{pids:?}");
            assert!(pids.contains(&400), "{pids:?}");
            // Youngest first: the workers would sort before their leader.
            keys(&mut app, "S");
        }
    }

    #[test]
    fn capital_a_lists_every_kind_and_signals_clients_only() {
        let mut snap = sample();
        let mut av = session(150, "shop", "postgres", "active", 30);
        av.backend_type = Some("autovacuum worker".into());
        av.query = Some("autovacuum: VACUUM public.orders (to prevent wraparound)".into());
        snap.sessions.push(av);
        let mut app = App::new(Duration::from_secs(1));
        assert_eq!(keys(&mut app, "A"), vec![Effect::Refresh]);
        assert!(app.all_kinds);
        update(&mut app, Event::Snapshot(Ok(snap)));
        keys(&mut app, "ak");
        let Mode::Confirm { signal, rows, .. } = app.mode.clone() else {
            panic!("{:?}", app.mode)
        };
        let plan = app.plan(signal, &rows, false).backends;
        assert!(plan
            .targets
            .iter()
            .any(|t| t.session.pid == 150 && t.refused.as_deref().is_some_and(|r| !r.is_empty())));
        match &keys(&mut app, "y")[..] {
            [Effect::Signal { targets, .. }] => {
                assert!(targets.iter().all(|t| t.pid != 150));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(keys(&mut app, "A"), vec![Effect::Refresh]);
        assert!(!app.all_kinds);
    }

    #[test]
    fn enter_in_the_question_means_no() {
        let mut app = loaded();
        keys(&mut app, "k");
        assert!(matches!(app.mode, Mode::Confirm { .. }));
        assert!(update(&mut app, Event::Key(Key::Enter)).is_empty());
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn aborted_transactions_are_counted_apart() {
        let mut snap = sample();
        snap.sessions[5].state = Some("idle in transaction (aborted)".into());
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        let c = app.history.back().copied().unwrap_or_default();
        assert_eq!((c.idle_in_transaction, c.aborted), (1, 1));
    }

    #[test]
    fn a_new_interval_refreshes_at_once_and_old_data_is_stale() {
        let mut app = loaded();
        for _ in 0..10 {
            assert_eq!(keys(&mut app, "+"), vec![Effect::Refresh]);
        }
        assert_eq!(app.interval, MAX_INTERVAL);
        assert_eq!(keys(&mut app, "-"), vec![Effect::Refresh]);
        app.interval = Duration::from_secs(1);
        app.data_age = Some(Duration::from_millis(1500));
        assert!(!app.stale());
        app.data_age = Some(Duration::from_millis(2500));
        assert!(app.stale());
        keys(&mut app, "p");
        assert!(!app.stale(), "paused data is not stale");
    }

    #[test]
    fn the_blocking_tree_survives_a_cycle_and_blockers_not_shown() {
        let mut snap = sample();
        // 102 and 103 wait for each other (a deadlock the server is about to break),
        // 105 waits for a session the command-line filter hides.
        snap.sessions[1].blocked_by = vec![103];
        snap.sessions[2].blocked_by = vec![102];
        snap.sessions[1].blocking = 1;
        snap.sessions[2].blocking = 1;
        snap.sessions[4].blocked_by = vec![999];
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        let tree: Vec<(i32, usize)> = app
            .blocking_tree()
            .iter()
            .map(|l| (l.pid, l.depth))
            .collect();
        assert_eq!(
            tree,
            [(102, 0), (103, 1)],
            "the circle once, cut where it closes"
        );
        keys(&mut app, "b");
        press(
            &mut app,
            &[Key::Down, Key::End, Key::PageUp, Key::Char('k')],
        );
        assert_eq!(
            app.mode,
            Mode::Confirm {
                signal: Signal::Terminate,
                rows: vec![RowKey::Backend(0, 102)],
                include_superusers: false
            }
        );
    }

    #[test]
    fn interval_and_disconnect() {
        let mut app = loaded();
        keys(&mut app, "+");
        assert_eq!(app.interval, Duration::from_secs(2));
        keys(&mut app, "----");
        assert_eq!(app.interval, MIN_INTERVAL);
        update(&mut app, Event::Snapshot(Err("connection refused".into())));
        assert_eq!(app.conn, ConnState::Lost("connection refused".into()));
        assert_eq!(app.sessions.len(), 6, "the last picture stays");
        update(&mut app, Event::Snapshot(Ok(sample())));
        assert_eq!(app.conn, ConnState::Connected);
        assert_eq!(app.history.len(), 2);
    }

    #[test]
    fn outcomes_clear_selection_and_refresh() {
        let mut app = loaded();
        keys(&mut app, " ");
        let pid = pids(&app.selected)[0];
        let t = pgkill_core::plan::Target {
            session: app.session(0, pid).unwrap().clone(),
            reason: String::new(),
            refused: None,
        };
        let o = Outcome::new(
            &t,
            pgkill_core::plan::OutcomeKind::Terminated,
            "session ended",
        );
        assert_eq!(
            update(&mut app, Event::Outcomes(Ok((vec![o], Vec::new())))),
            vec![Effect::Refresh]
        );
        assert!(app.selected.is_empty());
        assert_eq!(app.outcomes.len(), 1);
    }

    /// A pooler in front of `sample()`: PgBouncer `version` in transaction pooling,
    /// backend 106 serving application `web-tx`, backend 104 serving nobody, and two
    /// application connections holding no backend: `web-idle` and a superuser's `ops`.
    pub(crate) fn behind_a_pooler(version: pgkill_core::pooler::PoolerVersion) -> Snapshot {
        use pgkill_core::pooler::{PoolConnection, PoolerLink};
        let pooler = "host=127.0.0.1 port=6432";
        let conn = |id: i64, user: &str, app: &str, port: i32| PoolConnection {
            id: version.has_kill_client().then_some(id),
            ptr: format!("0x{id:x}"),
            link: None,
            user: user.into(),
            database: "shop".into(),
            state: "idle".into(),
            addr: Some("10.0.0.9".parse().unwrap()),
            port: Some(port),
            local_addr: None,
            local_port: None,
            remote_pid: None,
            application_name: Some(app.into()),
            connect_time: None,
        };
        let link = |client: Option<PoolConnection>| PoolerLink {
            pooler: pooler.into(),
            version: version.to_string(),
            pool_mode: "transaction".into(),
            alias: "shop".into(),
            client,
            remote_pid: None,
        };
        let pooled = |c: PoolConnection| Pooled {
            pooler: pooler.into(),
            version: version.to_string(),
            pool_mode: "transaction".into(),
            alias: "shop".into(),
            database: "shop".into(),
            state: "idle".into(),
            client: c,
        };
        let mut snap = sample();
        snap.sessions[5].pooler = Some(link(Some(conn(1, "worker", "web-tx", 50001))));
        snap.sessions[3].pooler = Some(link(None));
        snap.pooled = vec![
            pooled(conn(2, "web", "web-idle", 50002)),
            pooled(conn(3, "ops", "ops", 50003)),
        ];
        snap.pooler_states = vec![PoolerState {
            name: pooler.into(),
            version,
            pool_mode: "transaction".into(),
            databases: vec![],
            clients: vec![],
            servers: vec![],
        }];
        snap.pooler_superusers = BTreeSet::from(["ops".to_owned()]);
        snap
    }

    fn confirm_plan(app: &App) -> Decision {
        match &app.mode {
            Mode::Confirm {
                signal,
                rows,
                include_superusers,
            } => app.plan(*signal, rows, *include_superusers),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pooled_connections_are_rows_that_filters_select_like_ls() {
        let mut app = App::new(Duration::from_secs(1));
        let v = pgkill_core::pooler::PoolerVersion::new(1, 24, 1);
        update(&mut app, Event::Snapshot(Ok(behind_a_pooler(v))));
        let rows = app.visible();
        assert_eq!(rows.len(), 8, "6 backends, then 2 pooled connections");
        assert!(
            matches!(rows[6], Row::Pooled(_, p) if p.client.application_name.as_deref() == Some("ops"))
        );
        keys(&mut app, "/app:web-*");
        update(&mut app, Event::Key(Key::Enter));
        let names: Vec<&str> = app
            .visible()
            .iter()
            .filter_map(|r| match r {
                Row::Pooled(_, p) => p.client.application_name.as_deref(),
                Row::Backend(..) => None,
            })
            .collect();
        assert_eq!(names, ["web-idle"]);
        // Filters that need a backend select no pooled connection.
        for needs_a_backend in ["pid:104", "idle:1s", "q:select"] {
            keys(&mut app, "/");
            for _ in 0..20 {
                update(&mut app, Event::Key(Key::Backspace));
            }
            keys(&mut app, needs_a_backend);
            update(&mut app, Event::Key(Key::Enter));
            assert!(
                app.visible().iter().all(|r| matches!(r, Row::Backend(..))),
                "{needs_a_backend}"
            );
        }
    }

    #[test]
    fn terminating_behind_a_pooler_ends_applications_where_they_are() {
        let v = pgkill_core::pooler::PoolerVersion::new(1, 24, 1);
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(behind_a_pooler(v))));
        // Everything: the web-tx application is ended at the pooler (not its backend
        // 106), the pooled web-idle too; the pool connection 104 is left alone; ops is a
        // superuser's.
        keys(&mut app, "ak");
        let d = confirm_plan(&app);
        let backends: Vec<i32> = d.backends.to_signal().map(|t| t.session.pid).collect();
        assert_eq!(backends, [101, 102, 103, 105]);
        let ended: Vec<(&str, bool)> = d
            .at_pooler
            .iter()
            .map(|t| {
                (
                    t.client.application_name.as_deref().unwrap_or("?"),
                    t.refused.is_none(),
                )
            })
            .collect();
        assert_eq!(
            ended,
            [("web-tx", true), ("web-idle", true), ("ops", false)]
        );
        assert!(d
            .left_alone
            .iter()
            .any(|l| l.contains("1 pooler server connection")));
        assert_eq!(d.acting(), 6);
        keys(&mut app, "!");
        assert_eq!(
            confirm_plan(&app).acting(),
            7,
            "! includes the superuser's ops"
        );
        match &keys(&mut app, "y")[..] {
            [Effect::Signal {
                signal: Signal::Terminate,
                targets,
                pooled,
                include_superusers: true,
                ..
            }] => {
                assert_eq!(targets.len(), 6);
                assert_eq!(pooled.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // Cancelling: pooled connections run no statement; 104 serves nobody.
        keys(&mut app, "c");
        let d = confirm_plan(&app);
        assert!(d.at_pooler.is_empty());
        assert_eq!(d.backends.to_signal().count(), 5);
        assert!(d.left_alone.iter().any(|l| l.contains("nothing to cancel")));

        // PgBouncer 1.18 cannot end one application in transaction pooling.
        let mut old = App::new(Duration::from_secs(1));
        let v = pgkill_core::pooler::PoolerVersion::new(1, 18, 0);
        update(&mut old, Event::Snapshot(Ok(behind_a_pooler(v))));
        keys(&mut old, "/app:web-tx app:web-idle");
        update(&mut old, Event::Key(Key::Enter));
        keys(&mut old, "ak");
        let d = confirm_plan(&old);
        assert_eq!(d.acting(), 0);
        assert!(d.at_pooler.iter().all(|t| t
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("KILL_CLIENT needs PgBouncer 1.24"))));
    }

    #[test]
    fn a_pooled_row_stays_selected_while_it_is_there() {
        let v = pgkill_core::pooler::PoolerVersion::new(1, 24, 1);
        let mut app = App::new(Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(behind_a_pooler(v))));
        keys(&mut app, "/app:web-idle");
        update(&mut app, Event::Key(Key::Enter));
        keys(&mut app, " ");
        assert_eq!(app.selected.len(), 1);
        update(&mut app, Event::Snapshot(Ok(behind_a_pooler(v))));
        assert_eq!(
            app.selected.len(),
            1,
            "the same connection at the next refresh"
        );
        let mut later = behind_a_pooler(v);
        later.pooled.retain(|p| p.client.user != "web");
        update(&mut app, Event::Snapshot(Ok(later)));
        assert!(app.selected.is_empty(), "it closed");
    }

    /// `--targets FILE` with two servers, each behind its own PgBouncer 1.24.1 that
    /// happens to list the same connections (same console address, ids and ports):
    /// `behind_a_pooler` on both, `ops` a superuser on db-a only.
    pub(crate) fn two_behind_poolers() -> App {
        let v = pgkill_core::pooler::PoolerVersion::new(1, 24, 1);
        let mut app = fleet_of(&["db-a", "db-b"]);
        let mut a = behind_a_pooler(v);
        a.poolers = vec!["PgBouncer 1.24.1 at host=127.0.0.1 port=6432 (transaction): 3 application connection(s), 2 holding no backend (listed after the backends)".into()];
        let mut b = a.clone();
        b.pooler_superusers.clear();
        update(&mut app, from(0, Event::Snapshot(Ok(a))));
        update(&mut app, from(1, Event::Snapshot(Ok(b))));
        app
    }

    #[test]
    fn pooled_rows_of_two_targets_are_rows_of_each() {
        let app = two_behind_poolers();
        let pooled: Vec<RowKey> = keys_of(&app)
            .into_iter()
            .filter(|k| matches!(k, RowKey::Pooled { .. }))
            .collect();
        assert_eq!(pooled.len(), 4, "two per server: {pooled:?}");
        let targets: BTreeSet<usize> = pooled
            .iter()
            .filter_map(|k| match k {
                RowKey::Pooled { target, .. } => Some(*target),
                RowKey::Backend(..) => None,
            })
            .collect();
        assert_eq!(targets, BTreeSet::from([0, 1]));
        assert_eq!(
            pooled.iter().collect::<BTreeSet<_>>().len(),
            4,
            "the same connection behind each server is two keys"
        );
        for k in &pooled {
            assert!(app.present(k) && app.pooled_row(k).is_some(), "{k:?}");
        }
        // The header names each server's pooler.
        assert_eq!(app.poolers.len(), 2);
        assert!(
            app.poolers[0].starts_with("db-a: PgBouncer 1.24.1"),
            "{:?}",
            app.poolers
        );
        assert!(
            app.poolers[1].starts_with("db-b: PgBouncer 1.24.1"),
            "{:?}",
            app.poolers
        );
        // `target:` selects a server's pooled rows too.
        let mut app = app;
        keys(&mut app, "/target:db-b");
        update(&mut app, Event::Key(Key::Enter));
        assert!(
            app.visible().iter().all(|r| match r {
                Row::Pooled(t, _) | Row::Backend(t, _) => *t == 1,
            }),
            "db-a's rows are hidden"
        );
        assert_eq!(
            app.visible()
                .iter()
                .filter(|r| matches!(r, Row::Pooled(..)))
                .count(),
            2
        );
    }

    #[test]
    fn ending_a_pooled_row_goes_to_its_target_only() {
        let mut app = two_behind_poolers();
        // db-b's web-idle (the same connection as db-a's, as far as the pooler says).
        let key = keys_of(&app)
            .into_iter()
            .find(|k| {
                matches!(k, RowKey::Pooled { target: 1, .. })
                    && app
                        .pooled_row(k)
                        .is_some_and(|p| p.client.application_name.as_deref() == Some("web-idle"))
            })
            .expect("db-b's web-idle");
        cursor_to(&mut app, &key);
        keys(&mut app, " ");
        assert_eq!(app.selected, BTreeSet::from([key.clone()]));
        keys(&mut app, "k");
        let d = confirm_plan(&app);
        assert_eq!(d.at_pooler.len(), 1);
        assert_eq!(d.at_pooler_origins, [1]);
        assert!(d.at_pooler[0].refused.is_none());
        assert_eq!(d.backends.targets.len(), 0);
        let ended = match &keys(&mut app, "y")[..] {
            [Effect::Signal {
                target: 1,
                signal: Signal::Terminate,
                targets,
                pooled,
                ..
            }] => {
                assert!(targets.is_empty());
                assert_eq!(pooled.len(), 1);
                assert_eq!(
                    pooled[0].client.application_name.as_deref(),
                    Some("web-idle")
                );
                pooled[0].clone()
            }
            other => panic!("{other:?}"),
        };
        // Its outcome unselects db-b's row, not db-a's, and says whose it was.
        keys(&mut app, "a");
        let before = app.selected.len();
        update(
            &mut app,
            from(
                1,
                Event::Outcomes(Ok((
                    Vec::new(),
                    vec![AppOutcome {
                        pooler: ended.pooler.clone(),
                        client: ended.client.clone(),
                        backend: None,
                        outcome: pgkill_core::plan::OutcomeKind::Terminated,
                        detail: "gone from SHOW CLIENTS".into(),
                    }],
                ))),
            ),
        );
        assert_eq!(app.selected.len(), before - 1);
        assert!(!app.selected.contains(&key));
        assert!(app
            .selected
            .iter()
            .any(|k| matches!(k, RowKey::Pooled { target: 0, .. })));
        assert_eq!(app.app_outcomes.len(), 1);
        assert_eq!(app.app_outcome_targets, [1]);
    }

    #[test]
    fn each_target_decides_its_pooled_rows_with_its_own_facts() {
        let mut app = two_behind_poolers();
        // Everything on both servers: each server's backends and applications go to
        // that server; ops is a superuser's on db-a only.
        keys(&mut app, "ak");
        let d = confirm_plan(&app);
        let ended: Vec<(usize, &str, bool)> = d
            .at_pooler
            .iter()
            .zip(&d.at_pooler_origins)
            .map(|(t, o)| {
                (
                    *o,
                    t.client.application_name.as_deref().unwrap_or("?"),
                    t.refused.is_none(),
                )
            })
            .collect();
        assert_eq!(
            ended,
            [
                (0, "web-tx", true),
                (0, "web-idle", true),
                (0, "ops", false),
                (1, "web-tx", true),
                (1, "web-idle", true),
                (1, "ops", true),
            ]
        );
        let backends: Vec<(usize, i32)> = d
            .backends
            .targets
            .iter()
            .zip(&d.origins)
            .filter(|(t, _)| t.refused.is_none())
            .map(|(t, o)| (*o, t.session.pid))
            .collect();
        assert_eq!(
            backends,
            [
                (0, 101),
                (0, 102),
                (0, 103),
                (0, 105),
                (1, 101),
                (1, 102),
                (1, 103),
                (1, 105)
            ]
        );
        assert_eq!(d.left_alone.len(), 2, "{:?}", d.left_alone);
        assert!(d.left_alone[0].starts_with("db-a: 1 pooler server connection"));
        let sent: Vec<(usize, usize, usize)> = keys(&mut app, "y")
            .into_iter()
            .filter_map(|e| match e {
                Effect::Signal {
                    target,
                    targets,
                    pooled,
                    ..
                } => Some((target, targets.len(), pooled.len())),
                _ => None,
            })
            .collect();
        assert_eq!(sent, [(0, 6, 2), (1, 6, 2)]);
    }

    /// `--target db-a:5432 --target db-b:5432 --target db-c:5432`, none refreshed yet.
    pub(crate) fn fleet_of(names: &[&str]) -> App {
        let mut app = App::new(Duration::from_secs(1));
        app.fleet = names
            .iter()
            .map(|n| TargetState::new((*n).into(), ConnState::Connected))
            .collect();
        app
    }

    pub(crate) fn from(target: usize, event: Event) -> Event {
        Event::From {
            target,
            event: Box::new(event),
        }
    }

    /// Two servers with a session of the same pid (4242) each, and a third server.
    pub(crate) fn fleet() -> App {
        let mut app = fleet_of(&["db-a:5432", "db-b:5432", "db-c:5432"]);
        let mut a = sample();
        a.sessions = vec![
            session(4242, "shop", "web", "active", 60),
            session(7, "shop", "analyst", "idle", 10),
        ];
        let mut b = sample();
        b.sessions = vec![session(4242, "shop", "web", "active", 30)];
        b.server.connections = 8;
        b.server.max_connections = 200;
        let mut c = sample();
        c.sessions = vec![session(99, "reports", "etl", "idle in transaction", 300)];
        for (i, snap) in [a, b, c].into_iter().enumerate() {
            update(&mut app, from(i, Event::Snapshot(Ok(snap))));
        }
        app
    }

    fn keys_of(app: &App) -> Vec<RowKey> {
        app.visible().iter().map(Row::key).collect()
    }

    fn cursor_to(app: &mut App, key: &RowKey) {
        update(app, Event::Key(Key::Home));
        while app.current().map(|r| r.key()).as_ref() != Some(key) {
            let before = app.cursor;
            update(app, Event::Key(Key::Down));
            assert_ne!(before, app.cursor, "{key:?} is not shown");
        }
    }

    #[test]
    fn the_same_pid_on_two_targets_is_two_rows() {
        let app = fleet();
        let keys = keys_of(&app);
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(keys.contains(&RowKey::Backend(0, 4242)));
        assert!(keys.contains(&RowKey::Backend(1, 4242)));
        assert_eq!(
            app.session(1, 4242).and_then(|s| s.backend_start),
            at(-30),
            "each target's own session"
        );
        assert_eq!(app.session(0, 4242).and_then(|s| s.backend_start), at(-60));
        assert!(app.columns().first() == Some(&Column::Target));
        // With one server there is no target column.
        assert!(!loaded().columns().contains(&Column::Target));
    }

    #[test]
    fn terminating_a_selected_row_signals_its_target_only() {
        let mut app = fleet();
        cursor_to(&mut app, &RowKey::Backend(1, 4242));
        keys_for_tests(&mut app, " ");
        assert_eq!(
            app.selected,
            BTreeSet::from([RowKey::Backend(1, 4242)]),
            "the other server's 4242 is not selected"
        );
        let effects = keys_for_tests(&mut app, "ky");
        match effects.as_slice() {
            [Effect::Signal {
                target: 1,
                signal: Signal::Terminate,
                targets,
                pooled,
                ..
            }] => {
                assert_eq!(targets.len(), 1);
                assert_eq!(targets[0].pid, 4242);
                assert_eq!(targets[0].backend_start, at(-30), "db-b's session");
                assert!(pooled.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_selection_over_targets_is_one_signal_per_target_and_outcomes_combine() {
        let mut app = fleet();
        keys_for_tests(&mut app, "a");
        let effects = keys_for_tests(&mut app, "cy");
        let sent: Vec<(usize, Vec<i32>)> = effects
            .iter()
            .map(|e| match e {
                Effect::Signal {
                    target,
                    signal: Signal::Cancel,
                    targets,
                    ..
                } => (*target, targets.iter().map(|s| s.pid).collect()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            sent,
            vec![(0, vec![7, 4242]), (1, vec![4242]), (2, vec![99])],
            "grouped by server, each pid under its own"
        );
        let outcome = |pid: i32| Outcome {
            pid,
            backend_start: None,
            database: None,
            user: None,
            application_name: None,
            outcome: pgkill_core::plan::OutcomeKind::Cancelled,
            detail: String::new(),
        };
        let e = update(
            &mut app,
            from(1, Event::Outcomes(Ok((vec![outcome(4242)], vec![])))),
        );
        assert_eq!(e, vec![Effect::Refresh]);
        assert!(!app.selected.contains(&RowKey::Backend(1, 4242)));
        assert!(
            app.selected.contains(&RowKey::Backend(0, 4242)),
            "db-a's 4242 stays selected until db-a answers"
        );
        update(
            &mut app,
            from(0, Event::Outcomes(Ok((vec![outcome(4242)], vec![])))),
        );
        update(
            &mut app,
            from(2, Event::Outcomes(Err("permission denied".into()))),
        );
        assert_eq!(app.outcome_targets, vec![1, 0]);
        assert_eq!(app.outcomes.len(), 2);
        assert_eq!(
            app.action_error.as_deref(),
            Some("db-c:5432: permission denied")
        );
    }

    #[test]
    fn target_filter_shows_one_server_and_is_not_sent_to_any() {
        let mut app = fleet();
        keys_for_tests(&mut app, "/target:db-b:5432 user:web");
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(app.filter_error, None);
        assert_eq!(keys_of(&app), vec![RowKey::Backend(1, 4242)]);
        // What a server re-checks has no trace of the target word.
        let mut plain = fleet();
        keys_for_tests(&mut plain, "/user:web");
        update(&mut plain, Event::Key(Key::Enter));
        assert_eq!(app.typed_filter(), plain.typed_filter());
        // Several target words: either server.
        keys_for_tests(&mut app, "/");
        update(&mut app, Event::Key(Key::Ctrl('u')));
        keys_for_tests(&mut app, "target:db-c:5432 target:db-a:5432");
        update(&mut app, Event::Key(Key::Enter));
        let keys = keys_of(&app);
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(!keys.contains(&RowKey::Backend(1, 4242)));
        // An empty name is not understood (the last good filter stays).
        keys_for_tests(&mut app, "/ target:");
        update(&mut app, Event::Key(Key::Enter));
        assert!(app.filter_error.is_some());
        // An unknown name shows nothing.
        let mut none = fleet();
        keys_for_tests(&mut none, "/target:db-z:1");
        update(&mut none, Event::Key(Key::Enter));
        assert!(none.visible().is_empty());
    }

    #[test]
    fn a_disconnected_target_keeps_the_others_rows() {
        let mut app = fleet();
        keys_for_tests(&mut app, "a");
        update(
            &mut app,
            from(0, Event::Snapshot(Err("connection refused".into()))),
        );
        assert_eq!(
            app.fleet[0].conn,
            ConnState::Lost("connection refused".into())
        );
        assert_eq!(app.conn, ConnState::Connected, "the others still refresh");
        let keys = keys_of(&app);
        assert_eq!(
            keys,
            vec![RowKey::Backend(2, 99), RowKey::Backend(1, 4242)]
                .into_iter()
                .filter(|k| keys.contains(k))
                .collect::<Vec<_>>()
        );
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| !matches!(k, RowKey::Backend(0, _))));
        assert!(
            app.selected
                .iter()
                .all(|k| !matches!(k, RowKey::Backend(0, _))),
            "its rows are unselected"
        );
        assert_eq!(app.selected.len(), 2);
        // The others go on refreshing; it comes back when it answers again.
        let mut b = sample();
        b.sessions = vec![session(5, "shop", "web", "idle", 5)];
        update(&mut app, from(1, Event::Snapshot(Ok(b))));
        assert!(app.session(1, 5).is_some() && app.session(1, 4242).is_none());
        update(&mut app, from(0, Event::Snapshot(Ok(sample()))));
        assert_eq!(app.fleet[0].conn, ConnState::Connected);
        assert!(app.session(0, 101).is_some());
    }

    /// Lock chains on two servers whose pids collide: on db-a 100 holds what 200
    /// waits for; on db-b 300 holds what 200 waits for, and 400 waits for that 200
    /// (db-b's 100 blocks nobody).
    pub(crate) fn two_chains() -> App {
        let mut app = fleet_of(&["db-a:5432", "db-b:5432"]);
        let waiter = |pid: i32, on: i32| {
            let mut s = session(pid, "shop", "web", "active", 20);
            s.blocked_by = vec![on];
            s.wait_event_type = Some("Lock".into());
            s.wait_event = Some("relation".into());
            s
        };
        let holder = |pid: i32, blocking: i32| {
            let mut s = session(pid, "shop", "migrations", "idle in transaction", 600);
            s.blocking = blocking;
            s
        };
        let mut a = sample();
        a.sessions = vec![holder(100, 1), waiter(200, 100)];
        a.locks = Vec::new();
        let mut b = sample();
        let mut b200 = waiter(200, 300);
        b200.blocking = 1;
        b.sessions = vec![
            session(100, "shop", "web", "idle", 5),
            holder(300, 2),
            b200,
            waiter(400, 200),
        ];
        b.locks = Vec::new();
        for (i, snap) in [a, b].into_iter().enumerate() {
            update(&mut app, from(i, Event::Snapshot(Ok(snap))));
        }
        app
    }

    #[test]
    fn the_blocking_tree_over_targets_keys_by_server_and_pid() {
        let mut app = two_chains();
        keys_for_tests(&mut app, "b");
        assert_eq!(app.mode, Mode::Blocking { cursor: 0 });
        let tree: Vec<(usize, i32, usize, usize)> = app
            .blocking_tree()
            .iter()
            .map(|l| (l.target, l.pid, l.depth, l.total))
            .collect();
        // db-b's root blocks two (across all, it comes first); db-a's 200 has no 400
        // under it, though db-b's 200 has.
        assert_eq!(
            tree,
            [
                (1, 300, 0, 2),
                (1, 200, 1, 0),
                (1, 400, 2, 0),
                (0, 100, 0, 1),
                (0, 200, 1, 0)
            ]
        );
        // Terminating a root goes to its server alone.
        keys_for_tests(&mut app, "k");
        assert_eq!(
            app.mode,
            Mode::Confirm {
                signal: Signal::Terminate,
                rows: vec![RowKey::Backend(1, 300)],
                include_superusers: false,
            }
        );
        let effects = keys_for_tests(&mut app, "y");
        let [Effect::Signal {
            target, targets, ..
        }] = &effects[..]
        else {
            panic!("{effects:?}");
        };
        let got: Vec<i32> = targets.iter().map(|s| s.pid).collect();
        assert_eq!((*target, got), (1, vec![300]));
        // db-a's root, and its details are db-a's session.
        keys_for_tests(&mut app, "b");
        for _ in 0..3 {
            update(&mut app, Event::Key(Key::Down));
        }
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(app.mode, Mode::Detail(RowKey::Backend(0, 100)));
        update(&mut app, Event::Key(Key::Esc));
        keys_for_tests(&mut app, "b");
        update(&mut app, Event::Key(Key::End));
        keys_for_tests(&mut app, "c");
        let effects = keys_for_tests(&mut app, "y");
        assert!(
            matches!(&effects[..], [Effect::Signal { target: 0, signal: Signal::Cancel, targets, .. }] if targets.len() == 1 && targets[0].pid == 200 && targets[0].blocked_by == [100]),
            "{effects:?}"
        );
    }

    /// Health readings of server `target` (cumulative counters at `secs`).
    fn reading(secs: i64, commits: i64, hit: i64, read: i64, oldest: u64) -> Box<Health> {
        Box::new(Health {
            counters: Counters {
                at: at(secs).unwrap(),
                commits,
                rollbacks: 0,
                blks_hit: hit,
                blks_read: read,
                temp_files: 0,
                temp_bytes: 0,
                oldest_xact: Some(Duration::from_secs(oldest)),
                autovacuum: 0,
                autovacuum_max: 3,
                standbys: Vec::new(),
            },
            xmin: None,
        })
    }

    #[test]
    fn each_target_has_its_health_and_rates_and_the_header_grows_with_them_up_to_a_cap() {
        let mut app = fleet_of(&["db-a:5432", "db-b:5432", "db-c:5432"]);
        update(
            &mut app,
            Event::Resize {
                width: 120,
                height: 40,
            },
        );
        assert_eq!(app.header_lines(), 2, "no reading yet");
        for (i, commits) in [(0, 100), (1, 1000)] {
            let mut snap = sample();
            snap.health = Some(reading(0, 0, 0, 0, 10));
            update(&mut app, from(i, Event::Snapshot(Ok(snap.clone()))));
            snap.health = Some(reading(2, commits, 90, 10, 20));
            update(&mut app, from(i, Event::Snapshot(Ok(snap))));
        }
        let rates = |app: &App, i: usize| app.fleet[i].rates.map(|r| r.commits);
        assert_eq!((rates(&app, 0), rates(&app, 1)), (Some(50.0), Some(500.0)));
        assert!(app.fleet[2].health.is_none());
        // A line over all, then one per server with a reading.
        assert_eq!(app.fleet_health_shown(), (vec![0, 1], 0));
        assert_eq!(app.header_lines(), 2 + 1 + 2);
        // A server that goes away takes its reading with it.
        update(&mut app, from(1, Event::Snapshot(Err("gone".into()))));
        assert_eq!(app.fleet_health_shown(), (vec![0], 0));
        // On 24 lines four lines go to the servers: three and `+N more`.
        let mut many = fleet_of(&["a", "b", "c", "d", "e", "f"]);
        update(
            &mut many,
            Event::Resize {
                width: 80,
                height: 24,
            },
        );
        for i in 0..6 {
            let mut snap = sample();
            snap.health = Some(reading(0, 0, 0, 0, 10));
            update(&mut many, from(i, Event::Snapshot(Ok(snap))));
        }
        assert_eq!(many.fleet_health_shown(), (vec![0, 1, 2], 3));
        assert_eq!(many.header_lines(), 2 + 1 + 4);
        // `H` hides it (the body gets the lines back), and on again it reads anew.
        keys_for_tests(&mut many, "H");
        assert_eq!(many.header_lines(), 2);
        let effects = keys_for_tests(&mut many, "H");
        assert_eq!(effects, [Effect::Refresh]);
        assert!(many
            .fleet
            .iter()
            .all(|t| t.health.is_none() && t.rates.is_none()));
    }

    #[test]
    fn s_sorts_on_the_target_column_and_each_server_plans_with_its_own_role() {
        let mut app = fleet();
        while app.sort != Column::Target {
            keys_for_tests(&mut app, "s");
        }
        keys_for_tests(&mut app, "S");
        let order: Vec<usize> = app
            .visible()
            .iter()
            .map(|r| match r {
                Row::Backend(t, _) => *t,
                Row::Pooled(..) => usize::MAX,
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert!(!app.descending);
        assert_eq!(order, sorted, "by target name, ascending");
        // On db-b pgkill is a plain role: a superuser's session there is refused, and `!`
        // is not offered while one server would refuse it.
        let mut b = sample();
        let mut su = session(4242, "shop", "postgres", "active", 30);
        su.superuser = Some(true);
        b.sessions = vec![su];
        b.caller = Caller {
            user: "ops".into(),
            superuser: false,
            signal_backend: true,
        };
        update(&mut app, from(1, Event::Snapshot(Ok(b))));
        let decision = app.plan(
            Signal::Terminate,
            &[RowKey::Backend(0, 4242), RowKey::Backend(1, 4242)],
            true,
        );
        let refused: Vec<(usize, Option<&str>)> = decision
            .backends
            .targets
            .iter()
            .zip(&decision.origins)
            .map(|(t, o)| (*o, t.refused.as_deref()))
            .collect();
        assert_eq!(refused.len(), 2);
        assert!(refused[0] == (0, None), "{refused:?}");
        assert!(refused[1].0 == 1 && refused[1].1.is_some(), "{refused:?}");
        assert!(!app.may_include_superusers());
    }
}

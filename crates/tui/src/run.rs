//! The one loop of `pgkill top`: terminal events, the refresh tick and database results
//! go through [`update`]; its effects are carried out here and by the database task.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pgkill_core::horizon::XminHorizon;
use pgkill_core::plan::{Outcome, Plan};
use pgkill_core::planner::Signal;
use pgkill_core::pooler::{AppOutcome, Pooled, PoolerState};
use pgkill_core::{Filter, Session};
use pgkill_pg::connect::ConnectError;
use pgkill_pg::pgbouncer::Pooler;
use pgkill_pg::sessions::{self, Capabilities};
use pgkill_pg::through::{superusers_behind, CancelPlan, KillPlan};
use ratatui::crossterm::event::{
    self as ct, Event as CtEvent, KeyCode, KeyEventKind, KeyModifiers,
};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::app::{update, App, ConnState, Effect, Event, Health, Key, ServerInfo, Snapshot};
use crate::record::Recorder;
use crate::view::view;

/// Opens a connection to the server (called again to reconnect). It must never prompt:
/// the terminal belongs to the view (reuse the password the first connection used).
pub type Connector =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<Client>> + Send>> + Send + Sync>;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the health header reads the xmin horizon's holders.
const HORIZON_EVERY: Duration = Duration::from_secs(10);

/// A server `pgkill top` shows: what to call it and how to connect to it.
pub struct Target {
    /// Its name (the header's with one server; the `target` column's with several).
    pub name: String,
    /// Opens a connection to it (again, to reconnect).
    pub connect: Connector,
    /// How connecting to it before the screen went: [`ConnState::Connected`], or (with
    /// several targets) [`ConnState::Lost`] for one that could not be reached (retried
    /// with backoff, its rows appear when it answers) or [`ConnState::AuthFailed`] for
    /// one that refused the login (shown as its error, never tried again).
    pub at_start: ConnState,
    /// The PgBouncer consoles in front of it (`--pgbouncer`, or its `pgbouncer` key in
    /// `--targets FILE`), checked before the screen: its rows are joined to their
    /// applications, and its actions go through them.
    pub poolers: Vec<Pooler>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("name", &self.name).finish()
    }
}

/// What `pgkill top` starts with beyond the connection and the filter.
#[derive(Debug, Default)]
pub struct Options {
    /// `--record FILE`: where refreshes and actions are appended.
    pub record: Option<Recorder>,
    /// The columns `--columns` leaves out.
    pub hidden_columns: Vec<crate::app::Column>,
}

enum Request {
    /// Read sessions again (and the health header's views when it is shown).
    Refresh {
        health: bool,
        /// Every kind of backend, not only client sessions (`A`).
        all_kinds: bool,
    },
    /// Signal the sessions shown (and end the pooled application connections shown),
    /// re-checking the typed filter; with protected superuser sessions too when asked.
    Signal(Signal, Vec<Session>, Vec<Pooled>, Box<Filter>, bool),
}

/// Runs `pgkill top` until `q`: takes over the terminal and always gives it back (also
/// on error or panic). Every statement runs under `statement_timeout` (a slow server
/// shows an error, it does not pile refreshes up).
///
/// With several `targets` each one has a database task of its own (its connection,
/// refreshes, reconnects and backoff), all refreshing at once; their results come to
/// the loop as [`Event::From`], and each action goes to the task of its server; a
/// target that could not be reached at start is retried as one that went away. With
/// `--record` every line says its server. Each target's poolers are read by its own
/// task, and actions on its pooled rows go to it.
pub async fn run(
    targets: Vec<Target>,
    filter: Filter,
    interval: Duration,
    statement_timeout: Duration,
    options: Options,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    anyhow::ensure!(
        std::io::stdout().is_terminal() && std::io::stdin().is_terminal(),
        "pgkill top needs a terminal; for scripts use `pgkill ls --json`"
    );
    let several = targets.len() > 1;
    anyhow::ensure!(!targets.is_empty(), "pgkill top needs a server");
    let mut app = App::new(interval);
    app.hidden = options.hidden_columns;
    let mut record = options.record;
    if several {
        app.fleet = targets
            .iter()
            .map(|t| crate::app::TargetState::new(t.name.clone(), t.at_start.clone()))
            .collect();
    } else {
        app.target = targets.first().map(|t| t.name.clone());
    }
    app.include_superusers = filter.include_superusers;
    app.color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut req_txs = Vec::new();
    let mut tasks = Vec::new();
    for (i, t) in targets.into_iter().enumerate() {
        let (req_tx, req_rx) = mpsc::unbounded_channel::<Request>();
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let refused = match t.at_start {
            ConnState::AuthFailed(e) => Some(e),
            _ => None,
        };
        tasks.push(tokio::spawn(database_task(
            t.connect,
            refused,
            statement_timeout,
            filter.clone(),
            t.poolers,
            req_rx,
            tx,
        )));
        // Says which server an event is from (with several).
        let ev_tx = ev_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let event = if several {
                    Event::From {
                        target: i,
                        event: Box::new(event),
                    }
                } else {
                    event
                };
                if ev_tx.send(event).is_err() {
                    return;
                }
            }
        }));
        req_txs.push(req_tx);
    }
    let refresh = |app: &App| Request::Refresh {
        health: app.show_health,
        all_kinds: app.all_kinds,
    };

    // Terminal events are read on a thread of their own (crossterm's read blocks).
    let (key_tx, mut key_rx) = mpsc::unbounded_channel::<Option<Event>>();
    std::thread::spawn(move || loop {
        match ct::read() {
            Ok(CtEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                let key = match k.code {
                    KeyCode::Char(c) if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        Some(Key::Ctrl(c.to_ascii_lowercase()))
                    }
                    KeyCode::Char(c) => Some(Key::Char(c)),
                    KeyCode::Left => Some(Key::Left),
                    KeyCode::Right => Some(Key::Right),
                    KeyCode::Home => Some(Key::Home),
                    KeyCode::End => Some(Key::End),
                    KeyCode::PageUp => Some(Key::PageUp),
                    KeyCode::PageDown => Some(Key::PageDown),
                    KeyCode::F(1) => Some(Key::F1),
                    KeyCode::Enter => Some(Key::Enter),
                    KeyCode::Esc => Some(Key::Esc),
                    KeyCode::Backspace => Some(Key::Backspace),
                    KeyCode::Up => Some(Key::Up),
                    KeyCode::Down => Some(Key::Down),
                    _ => None,
                };
                if let Some(key) = key {
                    if key_tx.send(Some(Event::Key(key))).is_err() {
                        return;
                    }
                }
            }
            Ok(CtEvent::Resize(width, height)) => {
                if key_tx.send(Some(Event::Resize { width, height })).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    });

    // Also installs a panic hook that gives the terminal back before the message.
    let mut terminal = ratatui::try_init()?;
    app.utc_offset = *chrono::Local::now().offset();
    if let Ok(size) = terminal.size() {
        update(
            &mut app,
            Event::Resize {
                width: size.width,
                height: size.height,
            },
        );
    }
    let result = async {
        for tx in &req_txs {
            let _ = tx.send(refresh(&app));
        }
        // Per server: at most one refresh at a time.
        let mut in_flight = vec![true; req_txs.len()];
        let mut next_tick = tokio::time::Instant::now() + app.interval;
        // When the data on screen was read: older than two intervals, it is marked stale.
        let mut last_data = tokio::time::Instant::now();
        // Redraw at least this often, so that "stale" shows while nothing else happens.
        let redraw = Duration::from_millis(500);
        // The action sent to each server and not yet answered, for `--record` (one at a
        // time per server).
        let mut pending: Vec<Option<(Signal, Vec<Session>)>> =
            (0..req_txs.len()).map(|_| None).collect();
        loop {
            app.data_age = Some(last_data.elapsed());
            terminal.draw(|f| view(&app, f))?;
            let interval = app.interval;
            let event = tokio::select! {
                key = key_rx.recv() => match key {
                    Some(Some(ev)) => ev,
                    Some(None) => continue,
                    None => return Ok(()),
                },
                ev = ev_rx.recv() => match ev {
                    Some(ev) => {
                        let (from, inner) = match &ev {
                            Event::From { target, event } => (*target, &**event),
                            ev => (0, ev),
                        };
                        if matches!(inner, Event::Snapshot(_) | Event::AuthFailed(_)) {
                            if let Some(f) = in_flight.get_mut(from) {
                                *f = false;
                            }
                        }
                        if matches!(inner, Event::Snapshot(Ok(_))) {
                            last_data = tokio::time::Instant::now();
                        }
                        if let Some(r) = record.as_mut() {
                            write_record(r, &app, &mut pending, &ev)?;
                        }
                        ev
                    }
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick = tokio::time::Instant::now() + app.interval;
                    Event::Tick
                },
                _ = tokio::time::sleep(redraw) => continue,
            };
            let effects = update(&mut app, event);
            // A changed interval takes effect at once: the timer is restarted with it
            // (waiting out the old one froze the screen for up to a minute).
            if app.interval != interval {
                next_tick = tokio::time::Instant::now() + app.interval;
            }
            for effect in effects {
                match effect {
                    Effect::Quit => return Ok(()),
                    Effect::Copy(text) => {
                        use std::io::Write;
                        // Base64 inside the sequence: the text itself never reaches
                        // the terminal.
                        let mut out = std::io::stdout();
                        let _ = write!(out, "{}", osc52(&text));
                        let _ = out.flush();
                    }
                    // At most one refresh at a time: a slow server is not piled on (nor
                    // holds up the others).
                    Effect::Refresh => {
                        for (tx, busy) in req_txs.iter().zip(in_flight.iter_mut()) {
                            if !*busy {
                                *busy = true;
                                let _ = tx.send(refresh(&app));
                            }
                        }
                    }
                    Effect::Signal {
                        target,
                        signal,
                        targets,
                        pooled,
                        filter,
                        include_superusers,
                    } => {
                        if let (true, Some(p)) = (record.is_some(), pending.get_mut(target)) {
                            *p = Some((signal, targets.clone()));
                        }
                        if let Some(tx) = req_txs.get(target) {
                            let _ = tx.send(Request::Signal(
                                signal,
                                targets,
                                pooled,
                                filter,
                                include_superusers,
                            ));
                        }
                    }
                }
            }
        }
    }
    .await;
    ratatui::restore();
    for task in tasks {
        task.abort();
    }
    result
}

/// Appends what `ev` brings to the record: a refresh's rows, or the outcome of the
/// action sent (with several targets, each line names the server it is about).
fn write_record(
    record: &mut Recorder,
    app: &App,
    pending: &mut [Option<(Signal, Vec<Session>)>],
    ev: &Event,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let (target, ev) = match ev {
        Event::From { target, event } => (*target, &**event),
        ev => (0, ev),
    };
    let name = app.several_targets().then(|| app.target_name(target));
    match ev {
        Event::Snapshot(Ok(snap)) => record.refresh(name, &snap.sessions),
        Event::Outcomes(result) => match pending.get_mut(target).and_then(Option::take) {
            Some((signal, targets)) => record.action(
                name,
                app.caller_of(target).map(|c| c.user.as_str()),
                signal,
                &targets,
                result,
            ),
            None => Ok(()),
        },
        _ => Ok(()),
    }
    .context("writing the --record file")
}

async fn database_task(
    connect: Connector,
    refused: Option<String>,
    statement_timeout: Duration,
    filter: Filter,
    poolers: Vec<Pooler>,
    mut requests: mpsc::UnboundedReceiver<Request>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut conn: Option<(Client, Capabilities)> = None;
    // The refresh statement, kept prepared on `conn`.
    let kept = pgkill_pg::exec::Prepared::default();
    // One console connection per pooler, kept across refreshes (opened again when lost).
    let mut consoles: Vec<Option<Client>> = poolers.iter().map(|_| None).collect();
    // What the poolers said at the last refresh: their versions and pool modes decide
    // how an application is ended.
    let mut states: Vec<PoolerState> = Vec::new();
    let mut backoff = Duration::from_millis(500);
    let mut retry_at = tokio::time::Instant::now();
    // Once logging in again fails, it stays failed: the same password will not start
    // working, and asking for another on this screen would fight the key reader.
    // (Also when the login before the screen was refused.)
    let mut auth_failed: Option<String> = refused;
    // The xmin horizon's holders, read at most every HORIZON_EVERY (the costliest of the
    // health header's statements, and the horizon moves slowly).
    let mut horizon: Option<(tokio::time::Instant, XminHorizon)> = None;
    while let Some(request) = requests.recv().await {
        if let Some(e) = &auth_failed {
            if events.send(Event::AuthFailed(e.clone())).is_err() {
                return;
            }
            continue;
        }
        if conn.is_none() && tokio::time::Instant::now() >= retry_at {
            match open(&connect, statement_timeout).await {
                Ok(c) => {
                    conn = Some(c);
                    kept.clear().await;
                    backoff = Duration::from_millis(500);
                }
                Err(e) if is_authentication_failure(&e) => {
                    let text = format!("{e:#}");
                    auth_failed = Some(text.clone());
                    let _ = events.send(Event::AuthFailed(text));
                    continue;
                }
                Err(e) => {
                    retry_at = tokio::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    let _ = events.send(Event::Snapshot(Err(format!("{e:#}"))));
                    continue;
                }
            }
        }
        let Some((client, caps)) = &conn else {
            let _ = events.send(Event::Snapshot(Err("not connected (retrying)".into())));
            continue;
        };
        let event = match request {
            Request::Refresh { health, all_kinds } => Event::Snapshot(
                snapshot(
                    client,
                    &kept,
                    caps,
                    // Listing only: signalling keeps the command line's filter.
                    &Filter {
                        all_backends: filter.all_backends || all_kinds,
                        ..filter.clone()
                    },
                    &poolers,
                    &mut consoles,
                    health.then_some(&mut horizon),
                )
                .await
                .inspect(|s| states.clone_from(&s.pooler_states))
                .map_err(|e| format!("{e:#}")),
            ),
            Request::Signal(signal, targets, pooled, typed, include_superusers) => {
                // The same path as `pgkill kill`: the command line's filters and the one
                // typed in the view are both re-checked inside the signalling statement.
                let filter = Filter {
                    include_superusers: filter.include_superusers || include_superusers,
                    ..filter.clone()
                }
                .and(*typed);
                Event::Outcomes(
                    signal_rows(
                        client, caps, &filter, signal, targets, pooled, &poolers, &states,
                    )
                    .await
                    .map_err(|e| e.to_string()),
                )
            }
        };
        if client.is_closed() {
            conn = None;
        }
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Signals what the view confirmed, through the path `pgkill kill`/`cancel` use: without
/// poolers the re-checking statement; with `--pgbouncer` the same plans as `kill
/// --pgbouncer` (applications of transaction pools ended at the pooler, verified gone
/// there) and `cancel --pgbouncer` (a pooler backend must still serve the application
/// shown).
#[allow(clippy::too_many_arguments)]
async fn signal_rows(
    client: &Client,
    caps: &Capabilities,
    filter: &Filter,
    signal: Signal,
    targets: Vec<Session>,
    pooled: Vec<Pooled>,
    poolers: &[Pooler],
    states: &[PoolerState],
) -> pgkill_pg::Result<(Vec<Outcome>, Vec<AppOutcome>)> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    if poolers.is_empty() {
        let plan = Plan::build(signal, targets, filter, &caps.caller);
        return Ok((
            sessions::execute(client, caps, filter, &plan, TIMEOUT).await?,
            Vec::new(),
        ));
    }
    match signal {
        Signal::Terminate => {
            let plan = KillPlan::build(client, caps, filter, targets, pooled, states).await?;
            plan.execute(client, caps, filter, poolers, TIMEOUT).await
        }
        Signal::Cancel => {
            let plan = CancelPlan::build(&caps.caller, filter, targets, &pooled);
            Ok((
                plan.execute(client, caps, filter, poolers).await?,
                Vec::new(),
            ))
        }
    }
}

/// The OSC 52 sequence that puts `text` on the terminal's clipboard (base64-encoded,
/// so no byte of `text` is sent to the terminal as it is).
fn osc52(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(text.len().div_ceil(3) * 4);
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    format!("\x1b]52;c;{b64}\x07")
}

/// Whether connecting failed to log in in a way retrying cannot fix (see
/// [`ConnectError::is_authentication_failure`]).
fn is_authentication_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<ConnectError>()
            .is_some_and(ConnectError::is_authentication_failure)
    })
}

async fn open(
    connect: &Connector,
    statement_timeout: Duration,
) -> anyhow::Result<(Client, Capabilities)> {
    let client = connect().await?;
    pgkill_pg::exec::set_statement_timeout(&client, statement_timeout).await?;
    let caps = sessions::capabilities(&client).await?;
    Ok((client, caps))
}

async fn snapshot(
    client: &Client,
    kept: &pgkill_pg::exec::Prepared,
    caps: &Capabilities,
    filter: &Filter,
    poolers: &[Pooler],
    consoles: &mut [Option<Client>],
    with_health: Option<&mut Option<(tokio::time::Instant, XminHorizon)>>,
) -> anyhow::Result<Snapshot> {
    let mut lines = Vec::new();
    let mut pooled = Vec::new();
    let mut pooler_states = Vec::new();
    let mut superusers = std::collections::BTreeSet::new();
    let (sessions, progress, readings) = if poolers.is_empty() {
        let r = pgkill_pg::top::refresh(client, kept, caps, filter, with_health.is_some()).await?;
        (r.sessions, r.progress, r.readings)
    } else {
        let mut states = Vec::new();
        for (p, console) in poolers.iter().zip(consoles.iter_mut()) {
            if console.as_ref().is_none_or(Client::is_closed) {
                *console = Some(p.connect().await?);
            }
            let Some(open) = console.as_ref() else {
                continue;
            };
            match p.read(open).await {
                Ok(state) => states.push(state),
                Err(e) => {
                    // Opened again at the next refresh.
                    *console = None;
                    return Err(e.into());
                }
            }
        }
        let (sessions, listed) =
            pgkill_pg::pgbouncer::list_through(client, caps, filter, &states).await?;
        pooled = listed;
        superusers = superusers_behind(client, &sessions, &pooled).await?;
        for st in &states {
            let without = pooled.iter().filter(|p| p.pooler == st.name).count();
            lines.push(format!(
                "PgBouncer {} at {} ({}): {} application connection(s), {without} holding no backend (listed after the backends)",
                st.version,
                st.name,
                st.pool_mode,
                st.clients.len()
            ));
        }
        pooler_states = states;
        let readings = pgkill_pg::top::readings(client, with_health.is_some()).await?;
        (sessions, Default::default(), readings)
    };
    let health = match (with_health, readings.counters) {
        (Some(horizon), Some(counters)) => {
            Some(Box::new(health(client, caps, counters, horizon).await?))
        }
        _ => None,
    };
    Ok(Snapshot {
        health,
        poolers: lines,
        pooled,
        pooler_states,
        pooler_superusers: superusers,
        caller: caps.caller.clone(),
        read_all_stats: caps.read_all_stats,
        server: ServerInfo {
            version: caps.version.to_string(),
            max_connections: readings.max_connections,
            connections: readings.connections,
            uptime: readings.uptime,
            in_recovery: caps.in_recovery,
        },
        progress,
        locks: {
            let waiting: Vec<i32> = sessions
                .iter()
                .filter(|s| !s.blocked_by.is_empty())
                .map(|s| s.pid)
                .collect();
            sessions::lock_waits(client, caps, &waiting).await?
        },
        sessions,
    })
}

/// The health header: the refresh's counters (see [`pgkill_pg::top::Counters`]) and
/// the xmin horizon's holders (what `--holding-xmin` reports), read at most every
/// [`HORIZON_EVERY`], under the connection's statement timeout.
async fn health(
    client: &Client,
    caps: &Capabilities,
    counters: pgkill_pg::top::Counters,
    cached: &mut Option<(tokio::time::Instant, XminHorizon)>,
) -> anyhow::Result<Health> {
    let fresh = cached
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < HORIZON_EVERY);
    if !fresh {
        *cached = Some((
            tokio::time::Instant::now(),
            sessions::xmin_horizon(client, caps).await?,
        ));
    }
    let Some((_, horizon)) = cached.as_ref() else {
        anyhow::bail!("the xmin horizon was not read");
    };
    let xmin = horizon.age.map(|age| {
        let who = match (horizon.held_by.first(), &horizon.oldest_session) {
            (Some(h), _) => format!(
                "{} {}",
                h.kind.replace('_', " "),
                h.name.as_deref().unwrap_or("?")
            ),
            (None, Some(s)) => format!(
                "session {} ({})",
                s.pid.unwrap_or(0),
                s.name.as_deref().unwrap_or("?")
            ),
            (None, None) => "?".into(),
        };
        (age, who)
    });
    Ok(Health { counters, xmin })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A connector that fails every time with `error`, counting the attempts.
    fn failing(error: fn() -> ConnectError) -> (Connector, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let connector: Connector = Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Err(anyhow::Error::new(error()).context("reconnecting")) })
        });
        (connector, calls)
    }

    async fn refreshes(connector: Connector, n: usize) -> Vec<Event> {
        refreshes_after(connector, None, n).await
    }

    /// `n` refreshes of a task whose login before the screen was `refused` (or not).
    async fn refreshes_after(
        connector: Connector,
        refused: Option<String>,
        n: usize,
    ) -> Vec<Event> {
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(database_task(
            connector,
            refused,
            Duration::from_secs(5),
            Filter::default(),
            Vec::new(),
            req_rx,
            ev_tx,
        ));
        let mut events = Vec::new();
        for _ in 0..n {
            req_tx
                .send(Request::Refresh {
                    health: true,
                    all_kinds: false,
                })
                .unwrap();
            events.push(ev_rx.recv().await.unwrap());
        }
        task.abort();
        events
    }

    #[test]
    fn osc52_is_base64_and_nothing_else() {
        assert_eq!(osc52(""), "\x1b]52;c;\x07");
        assert_eq!(osc52("f"), "\x1b]52;c;Zg==\x07");
        assert_eq!(osc52("fo"), "\x1b]52;c;Zm8=\x07");
        assert_eq!(osc52("foo"), "\x1b]52;c;Zm9v\x07");
        assert_eq!(osc52("SELECT 1\n"), "\x1b]52;c;U0VMRUNUIDEK\x07");
        let hostile = osc52("\x1b]0;pwned\x07");
        assert!(!hostile[7..hostile.len() - 1]
            .chars()
            .any(|c| c.is_control()));
    }

    #[tokio::test]
    async fn a_failed_login_is_said_and_not_retried() {
        for error in [
            (|| ConnectError::PasswordRequired {
                user: "bob".into(),
                target: "host=db".into(),
                ignored: None,
            }) as fn() -> ConnectError,
            || ConnectError::AuthMethodRefused {
                target: "host=db".into(),
                requirement: "scram-sha-256".into(),
                reason: "the server requested a cleartext password".into(),
            },
        ] {
            let (connector, calls) = failing(error);
            let events = refreshes(connector, 5).await;
            assert_eq!(
                calls.load(Ordering::SeqCst),
                1,
                "logged in once, never again"
            );
            for e in events {
                let Event::AuthFailed(text) = e else {
                    panic!("{e:?}");
                };
                assert!(text.contains("reconnecting"), "{text}");
            }
        }
    }

    #[tokio::test]
    async fn a_login_refused_before_the_screen_is_never_tried_again() {
        let (connector, calls) = failing(|| ConnectError::PasswordRequired {
            user: "bob".into(),
            target: "host=db".into(),
            ignored: None,
        });
        let events = refreshes_after(connector, Some("target db: refused".into()), 4).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no login tried");
        assert!(
            events
                .iter()
                .all(|e| matches!(e, Event::AuthFailed(t) if t == "target db: refused")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn other_failures_are_retried() {
        let (connector, calls) = failing(|| ConnectError::Unreachable {
            target: "host=db".into(),
            reason: "connection refused".into(),
            hint: "on host db".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        let events = refreshes(connector, 2).await;
        assert!(
            events.iter().all(|e| matches!(e, Event::Snapshot(Err(_)))),
            "{events:?}"
        );
        // The second refresh came before the backoff was over; a later one tries again.
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}

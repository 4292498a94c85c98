//! Rendering sessions, plans and outcomes: psql-like tables for people, JSON and CSV for
//! scripts. Unknown values (least privilege) are shown as `?` in tables and `null` in JSON.
//!
//! Everything written for people goes through [`Escaped`] (stdout) or
//! [`pgkill_core::printable`] (stderr), so no control sequence the server hands pgkill
//! (in a role name, a query, an error message) reaches the terminal; JSON is always exact
//! data with those characters as `\u` escapes; CSV is exact on a pipe and escaped on a
//! terminal. The one exception is `ls`'s table in colour ([`sessions_table`]): it escapes
//! every cell itself, so that its only control sequences are pgkill's own colours.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use pgkill_core::plan::{Outcome, Plan};
use pgkill_core::printable::{is_unsafe, printable};
use pgkill_core::{format_duration, Session};
use serde::Serialize;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// One session as scripts see it: stable keys, times in RFC 3339, durations in seconds.
#[derive(Debug, Serialize)]
pub struct SessionJson<'a> {
    /// `backend` (a server process) or `pooled` (an application connection of a pooler
    /// that holds no server connection right now; no pid).
    kind: &'static str,
    pid: Option<i32>,
    backend_start: Option<String>,
    database: Option<&'a str>,
    user: Option<&'a str>,
    application_name: Option<&'a str>,
    client_addr: Option<String>,
    client_hostname: Option<&'a str>,
    client_port: Option<i32>,
    state: Option<&'a str>,
    wait_event_type: Option<&'a str>,
    wait_event: Option<&'a str>,
    backend_type: Option<&'a str>,
    xact_start: Option<String>,
    query_start: Option<String>,
    state_change: Option<String>,
    backend_age_s: Option<f64>,
    xact_age_s: Option<f64>,
    query_age_s: Option<f64>,
    state_age_s: Option<f64>,
    query: Option<&'a str>,
    superuser: Option<bool>,
    blocked_by: &'a [i32],
    blocking: i32,
    /// Transaction ids its snapshot or transaction id is behind the current one.
    xmin_age: Option<i32>,
    can_signal: bool,
    /// With `--pgbouncer`: the pooler and the application behind it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pooler: Option<PoolerJson<'a>>,
}

/// The `pooler` object of a session row.
#[derive(Debug, Serialize)]
struct PoolerJson<'a> {
    pooler: &'a str,
    version: &'a str,
    pool_mode: &'a str,
    alias: &'a str,
    /// The application connection linked right now (`null`: a server connection idle in
    /// the pool).
    client: Option<&'a pgkill_core::pooler::PoolConnection>,
    remote_pid: Option<i32>,
}

impl<'a> From<&'a pgkill_core::pooler::Pooled> for SessionJson<'a> {
    fn from(p: &'a pgkill_core::pooler::Pooled) -> Self {
        SessionJson {
            kind: "pooled",
            pid: None,
            backend_start: None,
            database: Some(&p.database),
            user: Some(&p.client.user),
            application_name: p.client.application_name.as_deref(),
            client_addr: p.client.addr.map(|a| a.to_string()),
            client_hostname: None,
            client_port: p.client.port,
            state: Some(&p.state),
            wait_event_type: None,
            wait_event: None,
            backend_type: None,
            xact_start: None,
            query_start: None,
            state_change: None,
            backend_age_s: None,
            xact_age_s: None,
            query_age_s: None,
            state_age_s: None,
            query: None,
            superuser: None,
            blocked_by: &[],
            blocking: 0,
            xmin_age: None,
            can_signal: false,
            pooler: Some(PoolerJson {
                pooler: &p.pooler,
                version: &p.version,
                pool_mode: &p.pool_mode,
                alias: &p.alias,
                client: Some(&p.client),
                remote_pid: None,
            }),
        }
    }
}

fn rfc3339(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
}

impl<'a> From<&'a Session> for SessionJson<'a> {
    fn from(s: &'a Session) -> Self {
        SessionJson {
            kind: "backend",
            pid: Some(s.pid),
            backend_start: rfc3339(s.backend_start),
            database: s.database.as_deref(),
            user: s.user.as_deref(),
            application_name: s.application_name.as_deref(),
            client_addr: s.client_addr.map(|a| a.to_string()),
            client_hostname: s.client_hostname.as_deref(),
            client_port: s.client_port,
            state: s.state.as_deref(),
            wait_event_type: s.wait_event_type.as_deref(),
            wait_event: s.wait_event.as_deref(),
            backend_type: s.backend_type.as_deref(),
            xact_start: rfc3339(s.xact_start),
            query_start: rfc3339(s.query_start),
            state_change: rfc3339(s.state_change),
            backend_age_s: secs(s.backend_age()),
            xact_age_s: secs(s.xact_age()),
            query_age_s: secs(s.query_age()),
            state_age_s: secs(s.state_age()),
            query: s.visible_query(),
            superuser: s.superuser,
            blocked_by: &s.blocked_by,
            blocking: s.blocking,
            xmin_age: s.xmin_age,
            can_signal: s.can_signal,
            pooler: s.pooler.as_ref().map(|l| PoolerJson {
                pooler: &l.pooler,
                version: &l.version,
                pool_mode: &l.pool_mode,
                alias: &l.alias,
                client: l.client.as_ref(),
                remote_pid: l.remote_pid,
            }),
        }
    }
}

fn unknown(v: Option<&str>) -> String {
    v.map(str::to_owned).unwrap_or_else(|| "?".into())
}

fn client_text(s: &Session) -> String {
    // With the port: several sessions from one address are told apart by it.
    match (s.client_addr, s.client_port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => s.client_text(),
    }
}

fn age(d: Option<Duration>) -> String {
    d.map(format_duration).unwrap_or_default()
}

/// A psql-like aligned table; the last column is cut to fit `width` (if any).
pub fn table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    width: Option<usize>,
) -> io::Result<()> {
    painted_table(out, header, rows, width, &|_, _| None)
}

/// How [`painted_table`] colours a cell: `paint(row, column)`, `None` for plain text.
type Paint<'a> = &'a dyn Fn(usize, usize) -> Option<anstyle::Style>;

/// [`table`] with some cells in colour. The widths are those of the text shown, so the
/// colours do not move the columns; every cell is shown escaped ([`one_line`]), so the
/// only control sequences in the output are the colours'.
fn painted_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    width: Option<usize>,
    paint: Paint<'_>,
) -> io::Result<()> {
    let n = header.len();
    // Widths of the cells as shown: escaped, on one line.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| one_line(cell)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(n) {
            widths[i] = widths[i].max(cell.width());
        }
    }
    if let Some(total) = width {
        // Separators, the leading space and the separator line's trailing dash.
        let fixed: usize = widths[..n - 1].iter().sum::<usize>() + 3 * (n - 1) + 2;
        widths[n - 1] = widths[n - 1].min(total.saturating_sub(fixed).max(header[n - 1].width()));
    }
    let line = |cells: Vec<String>, styles: &dyn Fn(usize) -> Option<anstyle::Style>| {
        let mut s = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i > 0 {
                s.push_str(" | ");
            } else {
                s.push(' ');
            }
            let cell = truncate(&cell, widths[i]);
            let pad = widths[i].saturating_sub(cell.width());
            match styles(i) {
                Some(style) => s.push_str(&format!("{style}{cell}{style:#}")),
                None => s.push_str(&cell),
            }
            if i + 1 < n {
                s.push_str(&" ".repeat(pad));
            }
        }
        s
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| (*h).to_owned()).collect(), &|_| None)
    )?;
    let sep: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "-{}-", sep.join("-+-"))?;
    for (r, row) in rows.iter().enumerate() {
        writeln!(out, "{}", line(row.clone(), &|c| paint(r, c)))?;
    }
    writeln!(
        out,
        "({} {})",
        rows.len(),
        if rows.len() == 1 { "row" } else { "rows" }
    )
}

/// `s` on one line as shown: line breaks and tabs become spaces, other control
/// characters visible escapes ([`printable`]).
fn one_line(s: &str) -> String {
    printable(&s.replace(['\r', '\n', '\t'], " ")).into_owned()
}

/// Cuts `s` to `max` display columns, ending with `…` when cut; shown [`one_line`].
pub fn truncate(s: &str, max: usize) -> String {
    let flat = one_line(s);
    if flat.width() <= max {
        return flat;
    }
    let mut out = String::new();
    let mut used = 0;
    for c in flat.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
}

/// The columns of [`sessions_table`].
pub const SESSION_HEADER: [&str; 11] = [
    "pid",
    "user",
    "database",
    "application",
    "client",
    "state",
    "wait",
    "connected",
    "xact",
    "query age",
    "query",
];

fn session_row(s: &Session) -> Vec<String> {
    let wait = s.wait_text();
    let (application, client) = match &s.pooler {
        Some(l) => match &l.client {
            Some(c) => (
                unknown(c.application_name.as_deref()),
                format!("{} via pgbouncer ({})", pooled_client_text(c), l.pool_mode),
            ),
            None => (
                unknown(s.application_name.as_deref()),
                format!("pgbouncer pool ({}), no client", l.pool_mode),
            ),
        },
        None => (unknown(s.application_name.as_deref()), client_text(s)),
    };
    vec![
        s.pid.to_string(),
        unknown(s.user.as_deref()),
        unknown(s.database.as_deref()),
        application,
        client,
        unknown(s.state.as_deref()),
        wait,
        age(s.backend_age()),
        age(s.xact_age()),
        age(s.query_age()),
        s.visible_query()
            .map(str::to_owned)
            .unwrap_or_else(|| "?".into()),
    ]
}

fn pooled_client_text(c: &pgkill_core::pooler::PoolConnection) -> String {
    match (c.addr, c.port) {
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => "local".to_owned(),
    }
}

/// An application connection of a pooler that no backend serves right now.
fn pooled_row(p: &pgkill_core::pooler::Pooled) -> Vec<String> {
    vec![
        "-".to_owned(),
        p.client.user.clone(),
        p.database.clone(),
        unknown(p.client.application_name.as_deref()),
        format!(
            "{} via pgbouncer ({})",
            pooled_client_text(&p.client),
            p.pool_mode
        ),
        p.state.clone(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        match p.state.as_str() {
            "waiting" => "(waiting for a server connection)".to_owned(),
            _ => "(pooled: no server connection right now)".to_owned(),
        },
    ]
}

/// Sessions as a table, then the pooled application connections without a backend;
/// with `colour`, their states in the colours of `top` (see [`state_style`]).
///
/// The table is printable by construction (every cell is escaped): with `colour` it may
/// go to the terminal without [`Escaped`], which would show the colours as `\x1b[…`.
/// The rows of [`sessions_table`] (without colour).
pub fn session_rows(
    sessions: &[Session],
    pooled: &[pgkill_core::pooler::Pooled],
) -> Vec<Vec<String>> {
    sessions
        .iter()
        .map(session_row)
        .chain(pooled.iter().map(pooled_row))
        .collect()
}

pub fn sessions_table(
    out: &mut dyn Write,
    sessions: &[Session],
    pooled: &[pgkill_core::pooler::Pooled],
    width: Option<usize>,
    colour: bool,
) -> io::Result<()> {
    let rows = session_rows(sessions, pooled);
    if !colour {
        return table(out, &SESSION_HEADER, &rows, width);
    }
    let column = |name: &str| SESSION_HEADER.iter().position(|h| *h == name);
    let (state, wait) = (column("state"), column("wait"));
    // Per row: the state's colour, and whether the session waits on a lock (then its
    // wait is in that colour too).
    let tones: Vec<(Option<anstyle::Style>, bool)> = sessions
        .iter()
        .map(|s| {
            let lock = s.wait_event_type.as_deref() == Some("Lock");
            (state_style(s.state.as_deref(), lock), lock)
        })
        .chain(
            pooled
                .iter()
                .map(|p| (state_style(Some(&p.state), false), false)),
        )
        .collect();
    painted_table(out, &SESSION_HEADER, &rows, width, &|r, c| {
        let (style, lock) = tones[r];
        if Some(c) == state || (lock && Some(c) == wait) {
            style
        } else {
            None
        }
    })
}

/// The colour of a session's state, as `top` shows it: active green, idle in
/// transaction (also aborted) yellow; waiting red (on a lock, as `top` counts waiters,
/// or a pooled application waiting for a server connection).
fn state_style(state: Option<&str>, waits_on_a_lock: bool) -> Option<anstyle::Style> {
    use anstyle::AnsiColor::{Green, Red, Yellow};
    let colour = match state {
        _ if waits_on_a_lock => Red,
        Some("waiting") => Red,
        Some("active") => Green,
        Some(s) if s.starts_with("idle in transaction") => Yellow,
        _ => return None,
    };
    Some(anstyle::Style::new().fg_color(Some(colour.into())))
}

/// Whether what is written for people on standard output may be coloured: a terminal,
/// and neither `NO_COLOR` (any non-empty value) nor `TERM=dumb` nor `CLICOLOR=0` says no
/// (`CLICOLOR_FORCE` says yes even on a pipe); as anstream decides for clap's help.
pub fn colour_stdout() -> bool {
    anstream::AutoStream::choice(&io::stdout()) != anstream::ColorChoice::Never
}

/// Sessions as one JSON document (the pooled application connections after the
/// backends, `kind` telling them apart).
pub fn sessions_json(
    out: &mut dyn Write,
    server: &ServerJson,
    sessions: &[Session],
    pooled: &[pgkill_core::pooler::Pooled],
    horizon: Option<&pgkill_core::horizon::XminHorizon>,
) -> io::Result<()> {
    json(out, &sessions_doc(server, sessions, pooled, horizon))
}

/// `ls --json`'s document.
#[derive(Serialize)]
pub struct SessionsDoc<'a> {
    server: &'a ServerJson,
    sessions: Vec<SessionJson<'a>>,
    /// With `--holding-xmin`: the horizon and what holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    xmin_horizon: Option<&'a pgkill_core::horizon::XminHorizon>,
}

/// The document [`sessions_json`] prints.
pub fn sessions_doc<'a>(
    server: &'a ServerJson,
    sessions: &'a [Session],
    pooled: &'a [pgkill_core::pooler::Pooled],
    horizon: Option<&'a pgkill_core::horizon::XminHorizon>,
) -> SessionsDoc<'a> {
    SessionsDoc {
        server,
        sessions: rows_json(sessions, pooled),
        xmin_horizon: horizon,
    }
}

fn rows_json<'a>(
    sessions: &'a [Session],
    pooled: &'a [pgkill_core::pooler::Pooled],
) -> Vec<SessionJson<'a>> {
    sessions
        .iter()
        .map(SessionJson::from)
        .chain(pooled.iter().map(SessionJson::from))
        .collect()
}

/// `value` as one pretty JSON document and a newline. serde_json escapes the C0 controls;
/// the other characters [`printable`] escapes (DEL, C1, bidirectional overrides) are
/// written as `\u` escapes too: the same JSON value, safe on a terminal.
pub fn json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(json_error)?;
    write_escaped_json(out, &text, "")?;
    out.write_all(b"\n")
}

/// Writes pretty JSON `text`, each line after the first indented by `indent`, with the
/// characters a terminal would act on escaped. Outside strings JSON text is ASCII
/// punctuation and whitespace: escaping any char of the text is escaping it inside a
/// string. Written run by run (no second copy of a large document).
fn write_escaped_json(out: &mut dyn Write, text: &str, indent: &str) -> io::Result<()> {
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if is_unsafe(c) {
            out.write_all(&text.as_bytes()[start..at])?;
            write!(out, "\\u{:04x}", u32::from(c))?;
            start = at + c.len_utf8();
        } else if c == '\n' && !indent.is_empty() {
            out.write_all(&text.as_bytes()[start..=at])?;
            out.write_all(indent.as_bytes())?;
            start = at + 1;
        }
    }
    out.write_all(&text.as_bytes()[start..])
}

/// `{"targets": [ITEM, ...]}` written one item at a time, as each is ready, so that only
/// the items not yet written are held (the same text as [`json`] of the whole document).
pub struct JsonTargets<'a> {
    out: &'a mut dyn Write,
    items: usize,
}

impl<'a> JsonTargets<'a> {
    /// Starts the document.
    pub fn start(out: &'a mut dyn Write) -> io::Result<Self> {
        out.write_all(b"{\n  \"targets\": [")?;
        Ok(JsonTargets { out, items: 0 })
    }

    /// Writes the next item.
    pub fn item(&mut self, value: &impl Serialize) -> io::Result<()> {
        let text = serde_json::to_string_pretty(value).map_err(json_error)?;
        self.out.write_all(if self.items == 0 {
            b"\n    "
        } else {
            b",\n    "
        })?;
        self.items += 1;
        write_escaped_json(self.out, &text, "    ")
    }

    /// Ends the document.
    pub fn end(self) -> io::Result<()> {
        if self.items == 0 {
            self.out.write_all(b"]\n}\n")
        } else {
            self.out.write_all(b"\n  ]\n}\n")
        }
    }
}

/// Keeps the I/O error kind (a closed pipe must stay recognisable) of a JSON write.
fn json_error(e: serde_json::Error) -> io::Error {
    match e.io_error_kind() {
        Some(kind) => io::Error::new(kind, e),
        None => io::Error::other(e),
    }
}

/// Keeps the I/O error kind of a CSV write.
fn csv_error(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(io) => io,
        other => io::Error::other(format!("{other:?}")),
    }
}

/// Sessions as CSV with a header line (a subset of the JSON keys, scalar ones only):
/// exact data, except that on a `terminal` control characters are shown escaped.
pub fn sessions_csv(
    out: &mut dyn Write,
    sessions: &[Session],
    pooled: &[pgkill_core::pooler::Pooled],
    terminal: bool,
) -> io::Result<()> {
    let rows: Vec<(Option<&str>, SessionJson<'_>)> = rows_json(sessions, pooled)
        .into_iter()
        .map(|r| (None, r))
        .collect();
    csv_out(out, &rows, false, terminal)
}

/// [`sessions_csv`] for several servers: a first field `target` names each row's.
pub fn per_target_sessions_csv(
    out: &mut dyn Write,
    per_target: &[(&str, &[Session], &[pgkill_core::pooler::Pooled])],
    terminal: bool,
) -> io::Result<()> {
    let rows: Vec<(Option<&str>, SessionJson<'_>)> = per_target
        .iter()
        .flat_map(|(name, sessions, pooled)| {
            rows_json(sessions, pooled)
                .into_iter()
                .map(move |r| (Some(*name), r))
        })
        .collect();
    csv_out(out, &rows, true, terminal)
}

fn csv_out(
    out: &mut dyn Write,
    rows: &[(Option<&str>, SessionJson<'_>)],
    with_target: bool,
    terminal: bool,
) -> io::Result<()> {
    if terminal {
        let mut escaped = Escaped::new(out);
        write_csv(&mut escaped, rows, with_target)?;
        return escaped.flush();
    }
    write_csv(out, rows, with_target)
}

fn write_csv(
    out: &mut dyn Write,
    rows: &[(Option<&str>, SessionJson<'_>)],
    with_target: bool,
) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let header = [
        "pid",
        "backend_start",
        "database",
        "user",
        "application_name",
        "client_addr",
        "client_port",
        "state",
        "wait_event_type",
        "wait_event",
        "backend_type",
        "xact_start",
        "query_start",
        "state_change",
        "backend_age_s",
        "xact_age_s",
        "query_age_s",
        "state_age_s",
        "query",
    ];
    let first = with_target.then_some("target");
    w.write_record(first.iter().chain(header.iter()))
        .map_err(csv_error)?;
    // The values are the JSON document's, so both formats always agree.
    for (target, row) in rows {
        let json = serde_json::to_value(row).map_err(io::Error::other)?;
        let cell = |key: &str| match &json[key] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let name = with_target.then(|| target.unwrap_or_default().to_owned());
        w.write_record(name.into_iter().chain(header.iter().map(|key| cell(key))))
            .map_err(csv_error)?;
    }
    w.flush()
}

/// A writer for text people read: whatever passes through is written with every
/// control character escaped by [`printable`] (a UTF-8 sequence split between two writes
/// is put back together first; bytes that are not UTF-8 are written as `\xNN`).
#[derive(Debug)]
pub struct Escaped<W: Write> {
    inner: W,
    /// The start of a UTF-8 sequence whose end has not been written yet.
    pending: Vec<u8>,
}

impl<W: Write> Escaped<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Escaped {
            inner,
            pending: Vec::new(),
        }
    }

    /// The writer underneath, for text that is printable by construction and carries
    /// pgkill's own colours (a [`sessions_table`] in colour): those would be escaped here.
    pub fn unescaped(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Writes `bytes` escaped; returns how many were consumed (all but an unfinished UTF-8
/// sequence at the end).
fn write_escaped(inner: &mut dyn Write, bytes: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < bytes.len() {
        let (valid, bad) = match std::str::from_utf8(&bytes[at..]) {
            Ok(s) => (s, None),
            Err(e) => (
                // Valid up to there, by the error's own account.
                std::str::from_utf8(&bytes[at..at + e.valid_up_to()]).unwrap_or_default(),
                Some(e.error_len()),
            ),
        };
        inner.write_all(printable(valid).as_bytes())?;
        at += valid.len();
        match bad {
            None => break,
            Some(None) => return Ok(at),
            Some(Some(n)) => {
                for b in &bytes[at..at + n] {
                    write!(inner, "\\x{b:02x}")?;
                }
                at += n;
            }
        }
    }
    Ok(bytes.len())
}

impl<W: Write> Write for Escaped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            let used = write_escaped(&mut self.inner, buf)?;
            self.pending.extend_from_slice(&buf[used..]);
        } else {
            self.pending.extend_from_slice(buf);
            let used = write_escaped(&mut self.inner, &self.pending)?;
            self.pending.drain(..used);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for Escaped<W> {
    fn drop(&mut self) {
        // An unfinished sequence at the very end is not UTF-8: show its bytes.
        for b in std::mem::take(&mut self.pending) {
            let _ = write!(self.inner, "\\x{b:02x}");
        }
    }
}

/// Standard output for people: buffered (for tables of many rows) and escaped.
pub fn for_people() -> Escaped<io::BufWriter<io::StdoutLock<'static>>> {
    Escaped::new(io::BufWriter::new(io::stdout().lock()))
}

/// Standard output for people, each line shown as soon as it is written (for commands
/// that report while they wait), escaped.
pub fn lines_for_people() -> Escaped<io::StdoutLock<'static>> {
    Escaped::new(io::stdout().lock())
}

/// Whether standard output is a terminal (CSV is then escaped too).
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// The server part of JSON documents.
#[derive(Debug, Serialize)]
pub struct ServerJson {
    /// The server reached: a host name, an IP address or a Unix-socket directory (with
    /// several hosts in the connection string, the one that was used).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Server version (`15.18`).
    pub version: String,
    /// The role pgkill connected as.
    pub user: String,
    /// Whether that role is a superuser.
    pub superuser: bool,
    /// Whether the server is a standby (`pg_is_in_recovery()`).
    pub in_recovery: bool,
}

/// The line above `ls`'s table when the server is a standby (a primary gets none).
pub const STANDBY_HEADER: &str =
    "Server: standby (in recovery, read-only): sessions can be listed and signalled here; drain, drop, rename and unfence must run on the primary.";

/// A plan as a table: who would be signalled, why, and who would be refused.
pub fn plan_table(out: &mut dyn Write, plan: &Plan, width: Option<usize>) -> io::Result<()> {
    table(out, &PLAN_HEADER, &plan_rows(plan), width)
}

/// The columns of [`plan_table`].
pub const PLAN_HEADER: [&str; 6] = ["pid", "user", "database", "application", "state", "why"];

/// The rows of [`plan_table`].
pub fn plan_rows(plan: &Plan) -> Vec<Vec<String>> {
    plan.targets
        .iter()
        .map(|t| {
            let s = &t.session;
            vec![
                s.pid.to_string(),
                unknown(s.user.as_deref()),
                unknown(s.database.as_deref()),
                unknown(s.application_name.as_deref()),
                unknown(s.state.as_deref()),
                match &t.refused {
                    Some(why) => format!("SKIP: {why}"),
                    None => t.reason.clone(),
                },
            ]
        })
        .collect()
}

/// Rows of several servers in one table: a first column `target` names each row's.
pub fn per_target_table(
    out: &mut dyn Write,
    header: &[&str],
    per_target: &[(&str, Vec<Vec<String>>)],
    width: Option<usize>,
) -> io::Result<()> {
    let header: Vec<&str> = std::iter::once("target")
        .chain(header.iter().copied())
        .collect();
    let rows: Vec<Vec<String>> = per_target
        .iter()
        .flat_map(|(name, rows)| {
            rows.iter().map(move |r| {
                std::iter::once((*name).to_owned())
                    .chain(r.iter().cloned())
                    .collect()
            })
        })
        .collect();
    table(out, &header, &rows, width)
}

/// Application connections `kill` ends at a pooler, as a table.
pub fn app_targets_table(
    out: &mut dyn Write,
    targets: &[pgkill_core::pooler::AppTarget],
    width: Option<usize>,
) -> io::Result<()> {
    table(out, &APP_TARGET_HEADER, &app_target_rows(targets), width)
}

/// The columns of [`app_targets_table`].
pub const APP_TARGET_HEADER: [&str; 6] = [
    "client id",
    "user",
    "database",
    "application",
    "client",
    "how",
];

/// The rows of [`app_targets_table`].
pub fn app_target_rows(targets: &[pgkill_core::pooler::AppTarget]) -> Vec<Vec<String>> {
    targets
        .iter()
        .map(|t| {
            vec![
                t.client
                    .id
                    .map_or_else(|| "?".to_owned(), |i| i.to_string()),
                t.client.user.clone(),
                t.database.clone(),
                unknown(t.client.application_name.as_deref()),
                format!(
                    "{} via pgbouncer ({})",
                    pooled_client_text(&t.client),
                    t.pool_mode
                ),
                match &t.refused {
                    Some(why) => format!("SKIP: {why}"),
                    None => format!("KILL_CLIENT at {}", t.pooler),
                },
            ]
        })
        .collect()
}

/// What happened to the application connections at a pooler, as a table.
pub fn app_outcomes_table(
    out: &mut dyn Write,
    outcomes: &[pgkill_core::pooler::AppOutcome],
    width: Option<usize>,
) -> io::Result<()> {
    table(out, &APP_OUTCOME_HEADER, &app_outcome_rows(outcomes), width)
}

/// The columns of [`app_outcomes_table`].
pub const APP_OUTCOME_HEADER: [&str; 6] = [
    "client id",
    "user",
    "application",
    "client",
    "outcome",
    "detail",
];

/// The rows of [`app_outcomes_table`].
pub fn app_outcome_rows(outcomes: &[pgkill_core::pooler::AppOutcome]) -> Vec<Vec<String>> {
    outcomes
        .iter()
        .map(|o| {
            vec![
                o.client
                    .id
                    .map_or_else(|| "?".to_owned(), |i| i.to_string()),
                o.client.user.clone(),
                unknown(o.client.application_name.as_deref()),
                pooled_client_text(&o.client),
                o.outcome.as_str().to_owned(),
                o.detail.clone(),
            ]
        })
        .collect()
}

/// Outcomes as a table.
pub fn outcomes_table(
    out: &mut dyn Write,
    outcomes: &[Outcome],
    width: Option<usize>,
) -> io::Result<()> {
    table(out, &OUTCOME_HEADER, &outcome_rows(outcomes), width)
}

/// The columns of [`outcomes_table`].
pub const OUTCOME_HEADER: [&str; 6] = [
    "pid",
    "user",
    "database",
    "application",
    "outcome",
    "detail",
];

/// The rows of [`outcomes_table`].
pub fn outcome_rows(outcomes: &[Outcome]) -> Vec<Vec<String>> {
    outcomes
        .iter()
        .map(|o| {
            vec![
                o.pid.to_string(),
                unknown(o.user.as_deref()),
                unknown(o.database.as_deref()),
                unknown(o.application_name.as_deref()),
                o.outcome.as_str().to_owned(),
                o.detail.clone(),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_written_one_by_one_are_the_whole_documents_text() {
        let items = [
            serde_json::json!({"target": "a", "sessions": [{"pid": 1, "query": "SELECT 1\n\u{1b}[2J"}]}),
            serde_json::json!({"target": "b", "error": {"message": "down"}}),
            serde_json::json!({"target": "c", "sessions": []}),
        ];
        for n in 0..=items.len() {
            let mut whole = Vec::new();
            json(&mut whole, &serde_json::json!({ "targets": items[..n] })).unwrap();
            let mut streamed = Vec::new();
            let mut doc = JsonTargets::start(&mut streamed).unwrap();
            for item in &items[..n] {
                doc.item(item).unwrap();
            }
            doc.end().unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(whole).unwrap()
            );
        }
    }

    #[test]
    fn table_is_aligned_and_cut_to_width() {
        let mut out = Vec::new();
        let rows = vec![
            vec![
                "1".into(),
                "alice".into(),
                "SELECT * FROM a_rather_long_table_name WHERE x = 1".into(),
            ],
            vec!["12345".into(), "bo".into(), "SELECT 1".into()],
        ];
        table(&mut out, &["pid", "user", "query"], &rows, Some(30)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], " pid   | user  | query");
        assert_eq!(lines[1], "-------+-------+--------------");
        assert_eq!(lines[2], " 1     | alice | SELECT * FR…");
        assert_eq!(lines[3], " 12345 | bo    | SELECT 1");
        assert_eq!(lines[4], "(2 rows)");
        assert!(lines.iter().all(|l| l.width() <= 30), "{lines:?}");
        // A cell is as wide as it is shown: escaped names are not cut to their raw width.
        let mut out = Vec::new();
        let rows = vec![vec!["1".into(), "x\x1b]0;t\x07".into()]];
        table(&mut out, &["pid", "user"], &rows, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().nth(2),
            Some(" 1   | x\\x1b]0;t\\x07"),
            "{text}"
        );
    }

    #[test]
    fn painted_cells_keep_the_columns_and_only_the_colours_are_escapes() {
        let rows = vec![
            vec!["1".into(), "active".into(), "x\x1b[2Jy".into()],
            vec!["22".into(), "idle".into(), "SELECT 1".into()],
        ];
        let green = anstyle::Style::new().fg_color(Some(anstyle::AnsiColor::Green.into()));
        let paint = |r: usize, c: usize| (r == 0 && c == 1).then_some(green);
        let (mut plain, mut painted) = (Vec::new(), Vec::new());
        table(&mut plain, &["pid", "state", "query"], &rows, None).unwrap();
        painted_table(
            &mut painted,
            &["pid", "state", "query"],
            &rows,
            None,
            &paint,
        )
        .unwrap();
        let painted = String::from_utf8(painted).unwrap();
        assert_eq!(
            painted.lines().nth(2),
            Some(" 1   | \x1b[32mactive\x1b[0m | x\\x1b[2Jy"),
            "{painted}"
        );
        // Without the colours it is the plain table, column for column.
        assert_eq!(
            painted.replace("\x1b[32m", "").replace("\x1b[0m", ""),
            String::from_utf8(plain).unwrap()
        );
        assert_eq!(painted.matches('\x1b').count(), 2, "{painted:?}");
    }

    #[test]
    fn states_have_the_colours_of_top() {
        use anstyle::AnsiColor::{Green, Red, Yellow};
        let fg = |state: Option<&str>, lock: bool| {
            state_style(state, lock).and_then(|s| s.get_fg_color())
        };
        assert_eq!(fg(Some("active"), false), Some(Green.into()));
        assert_eq!(fg(Some("idle in transaction"), false), Some(Yellow.into()));
        assert_eq!(
            fg(Some("idle in transaction (aborted)"), false),
            Some(Yellow.into())
        );
        assert_eq!(fg(Some("active"), true), Some(Red.into()));
        assert_eq!(fg(Some("waiting"), false), Some(Red.into()));
        assert_eq!(fg(Some("idle"), false), None);
        assert_eq!(fg(None, false), None);
    }

    #[test]
    fn truncate_handles_wide_and_control_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("a\nb", 5), "a b");
        assert_eq!(truncate("日本語テキスト", 7), "日本語…");
        assert_eq!(truncate("a\r\nb\x1b[2J", 20), "a  b\\x1b[2J");
        assert_eq!(truncate("x\u{9b}31m", 20), "x\\u{9b}31m");
    }

    fn escaped(chunks: &[&[u8]]) -> String {
        let mut out = Vec::new();
        {
            let mut w = Escaped::new(&mut out);
            for c in chunks {
                w.write_all(c).unwrap();
            }
            w.flush().unwrap();
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaped_writer_escapes_controls_also_split_between_writes() {
        assert_eq!(escaped(&[b"plain \xc3\xbc\n"]), "plain ü\n");
        assert_eq!(
            escaped(&[b"x\x1b]0;pwned\x07\tend"]),
            "x\\x1b]0;pwned\\x07\tend"
        );
        // U+009B (CSI) is C2 9B in UTF-8: split between two writes it is still seen.
        assert_eq!(escaped(&[b"a\xc2", b"\x9b31m"]), "a\\u{9b}31m");
        assert_eq!(escaped(&[b"\xe6", b"\x97", b"\xa5!"]), "日!");
        // Not UTF-8 at all, and an unfinished sequence at the end.
        assert_eq!(escaped(&[b"a\xffb"]), "a\\xffb");
        assert_eq!(escaped(&[b"a\xc2"]), "a\\xc2");
    }

    #[test]
    fn json_is_exact_data_without_raw_controls() {
        let value = serde_json::json!({"name": "x\u{1b}]0;pwned\u{7}\u{9b}31m\u{7f}\u{202e}"});
        let mut out = Vec::new();
        json(&mut out, &value).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text
                .chars()
                .any(|c| is_unsafe(c) || (c.is_control() && c != '\n')),
            "{text:?}"
        );
        assert!(
            text.contains("\\u009b") && text.contains("\\u007f"),
            "{text}"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }
}

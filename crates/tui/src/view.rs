//! Drawing `pgkill top`: a pure function of the state onto a frame (no I/O).
//!
//! Every text from the server (names, queries, error messages) is shown through
//! [`line`], the one-line form of [`pgkill_core::printable`]: ratatui drops control
//! characters, but a name that contained an ESC must show that it did.

use pgkill_core::planner::Signal;
use pgkill_core::{format_duration, Session};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap};
use ratatui::Frame;

use crate::app::{shown_wait, App, Column, ConnState, Mode, RowKey};

fn style(app: &App, color: Color) -> Style {
    if app.color {
        Style::default().fg(color)
    } else {
        Style::default()
    }
}

fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

fn age(d: Option<std::time::Duration>) -> String {
    d.map(format_duration).unwrap_or_default()
}

fn unknown(v: Option<&str>) -> String {
    line(v.unwrap_or("?"))
}

/// Server text on one line: line breaks and tabs as spaces, other control characters as
/// visible escapes.
fn line(s: &str) -> String {
    pgkill_core::printable(&s.replace(['\r', '\n', '\t'], " ")).into_owned()
}

/// `text` in at most `width` characters: a longer one is cut and ends with `…`.
fn cut(text: &str, width: u16) -> String {
    let width = usize::from(width);
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Draws the whole screen.
pub fn view(app: &App, frame: &mut Frame) {
    let area = frame.area();
    let [header, graph, body, status] = Layout::vertical([
        Constraint::Length(app.header_lines()),
        Constraint::Length(crate::app::graph_height(area.height)),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(area);
    draw_header(app, frame, header);
    draw_graph(app, frame, graph);
    match &app.mode {
        Mode::Detail(RowKey::Backend(target, pid)) => draw_detail(app, frame, body, *target, *pid),
        Mode::Detail(key) => draw_pooled_detail(app, frame, body, key),
        Mode::Blocking { cursor } => draw_blocking(app, frame, body, *cursor),
        Mode::Help { scroll } => draw_help(frame, body, *scroll),
        _ => draw_table(app, frame, body),
    }
    draw_status(app, frame, status);
    if let Mode::Confirm {
        signal,
        rows,
        include_superusers,
    } = &app.mode
    {
        draw_confirm(app, frame, body, *signal, rows, *include_superusers);
    }
}

/// The first header line with several targets: how many, the connections summed over
/// those that answer, and which do not.
fn fleet_header(app: &App) -> Vec<Span<'static>> {
    let up: Vec<&crate::app::ServerInfo> = app
        .fleet
        .iter()
        .filter_map(|t| t.snapshot.as_ref().map(|s| &s.server))
        .collect();
    let mut first = vec![
        Span::styled("pgkill top", bold()),
        Span::raw(format!(
            " · {} targets · {}/{} conns",
            app.fleet.len(),
            up.iter().map(|s| s.connections).sum::<i64>(),
            up.iter().map(|s| s.max_connections).sum::<i64>(),
        )),
    ];
    // Which servers do not answer, before what a narrow screen may cut.
    for t in &app.fleet {
        let why = match (&t.conn, &t.snapshot) {
            (ConnState::Lost(_), _) => "disconnected (retrying)",
            (ConnState::AuthFailed(_), _) => "authentication failed (restart top)",
            (ConnState::Connected, None) => "connecting…",
            (ConnState::Connected, Some(_)) => continue,
        };
        first.push(Span::styled(
            format!(" · {}: {why}", line(&t.name)),
            style(app, Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    first.push(Span::raw(format!(
        " · refresh {} · sort {}{}{}",
        format_duration(app.interval),
        app.sort.label(),
        if app.descending { "▼" } else { "▲" },
        if app.paused { " · PAUSED" } else { "" }
    )));
    first
}

fn draw_header(app: &App, frame: &mut Frame, area: Rect) {
    let mut first = vec![Span::styled("pgkill top", bold())];
    if let Some(target) = &app.target {
        first.push(Span::raw(format!(" · {}", line(target))));
    }
    match &app.server {
        _ if app.several_targets() => first = fleet_header(app),
        Some(s) => first.push(Span::raw(format!(
            " · PG {}{} · up {} · {}/{} conns · refresh {} · sort {}{}{}",
            s.version,
            if s.in_recovery { " standby" } else { "" },
            format_duration(s.uptime),
            s.connections,
            s.max_connections,
            format_duration(app.interval),
            app.sort.label(),
            if app.descending { "▼" } else { "▲" },
            if app.paused { " · PAUSED" } else { "" }
        ))),
        None => first.push(Span::raw(" · connecting…")),
    }
    if app.stale() && app.conn == ConnState::Connected {
        first.push(Span::styled(
            format!(
                " · STALE: data {} old",
                format_duration(app.data_age.unwrap_or_default())
            ),
            style(app, Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    if app.include_superusers {
        first.push(Span::styled(
            " · SUPERUSERS INCLUDED",
            style(app, Color::Red).add_modifier(Modifier::BOLD),
        ));
    }
    let second = match &app.conn {
        ConnState::Lost(e) => Line::from(Span::styled(
            format!(
                "DISCONNECTED: {} (reconnecting; showing the last refresh)",
                line(e)
            ),
            style(app, Color::Red).add_modifier(Modifier::BOLD),
        )),
        ConnState::AuthFailed(e) => Line::from(Span::styled(
            format!("DISCONNECTED: authentication failed; restart top ({e})"),
            style(app, Color::Red).add_modifier(Modifier::BOLD),
        )),
        ConnState::Connected => {
            let c = app.history.back().copied().unwrap_or_default();
            // Shorter words where the line is narrow.
            let word = |narrow: &'static str, wide: &'static str| {
                if area.width < 100 {
                    narrow
                } else {
                    wide
                }
            };
            Line::from(vec![
                Span::styled(format!("active {}", c.active), style(app, Color::Green)),
                Span::raw(format!("  idle {}", c.idle)),
                Span::styled(
                    format!(
                        "  {} {}",
                        word("idle in tx", "idle in transaction"),
                        c.idle_in_transaction
                    ),
                    style(app, Color::Yellow),
                ),
                Span::styled(
                    format!(
                        "  {} {}",
                        word("aborted tx", "idle in transaction (aborted)"),
                        c.aborted
                    ),
                    style(app, Color::Red),
                ),
                Span::styled(
                    format!("  {} {}", word("lock waits", "waiting on locks"), c.waiting),
                    style(app, Color::Red),
                ),
                Span::raw(format!(
                    "  shown {}/{}",
                    app.visible().len(),
                    app.sessions.len() + app.pooled.len()
                )),
                // With several targets each server's poolers have lines of their own.
                Span::raw(if app.several_targets() {
                    String::new()
                } else {
                    app.poolers
                        .iter()
                        .map(|p| format!("  · {}", line(p)))
                        .collect::<String>()
                }),
            ])
        }
    };
    let mut lines = vec![Line::from(first), second];
    if app.several_targets() {
        // `NAME: PgBouncer … at …`, the target's name first.
        lines.extend(app.poolers.iter().map(|p| Line::from(line(p))));
    }
    if let Some(doctor) = app.doctor() {
        lines.push(Line::from(Span::styled(
            format!("privileges: {}", line(&doctor)),
            style(app, Color::Yellow),
        )));
    }
    if app.several_targets() {
        if app.show_health {
            lines.extend(fleet_health_lines(app));
        }
    } else if app.show_health && app.health.is_some() {
        lines.extend(health_lines(app, area.width >= 160));
    }
    frame.render_widget(Paragraph::new(lines), area);
}

/// `1.2 MB`, `340 kB`, `12 B`.
fn bytes(n: f64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n.max(0.0);
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", units[u])
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A rate with one decimal under 100, none from 100.
fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The health header over several targets (`H` hides it): a line of the figures over
/// every server that answers (rates summed, the worst cache hit, oldest transaction,
/// xmin horizon age and standby lag, each with its server), then a compact line per
/// server (as many as [`App::fleet_health_shown`] leaves room for, then `+N more`).
fn fleet_health_lines(app: &App) -> Vec<Line<'static>> {
    let (shown, more) = app.fleet_health_shown();
    if shown.is_empty() {
        return Vec::new();
    }
    let read: Vec<(&str, &crate::app::Health, Option<&crate::app::Rates>)> = app
        .fleet
        .iter()
        .filter_map(|t| {
            t.health
                .as_ref()
                .map(|h| (t.name.as_str(), h, t.rates.as_ref()))
        })
        .collect();
    let lag = |h: &crate::app::Health| h.counters.standbys.iter().filter_map(|s| s.lag).max();
    // The worst of a figure over the servers, with whose it is.
    fn worst<T: PartialOrd + Copy>(
        read: &[(&str, &crate::app::Health, Option<&crate::app::Rates>)],
        f: impl Fn(&crate::app::Health, Option<&crate::app::Rates>) -> Option<T>,
        lowest: bool,
    ) -> Option<(T, String)> {
        let mut best: Option<(T, String)> = None;
        for (name, h, r) in read {
            if let Some(v) = f(h, *r) {
                let better = best
                    .as_ref()
                    .is_none_or(|(b, _)| if lowest { v < *b } else { v > *b });
                if better {
                    best = Some((v, cut(&line(name), 16)));
                }
            }
        }
        best
    }
    let rated: Vec<&crate::app::Rates> = read.iter().filter_map(|(_, _, r)| *r).collect();
    let mut all = format!(
        "health of {}: xact/s {}",
        read.len(),
        if rated.is_empty() {
            "…".to_owned()
        } else {
            rate(rated.iter().map(|r| r.commits + r.rollbacks).sum())
        },
    );
    if let Some((d, on)) = worst(&read, |h, _| h.counters.oldest_xact, false) {
        all.push_str(&format!(" · oldest xact {} ({on})", format_duration(d)));
    }
    if let Some((age, on)) = worst(&read, |h, _| h.xmin.as_ref().map(|(a, _)| *a), false) {
        all.push_str(&format!(" · xmin age {age} ({on})"));
    }
    if let Some((d, on)) = worst(&read, |h, _| lag(h), false) {
        all.push_str(&format!(" · lag {} ({on})", format_duration(d)));
    }
    if let Some((hit, on)) = worst(&read, |_, r| r.and_then(|r| r.cache_hit), true) {
        all.push_str(&format!(" · cache hit {:.1}% ({on})", hit * 100.0));
    }
    if !rated.is_empty() {
        all.push_str(&format!(
            " · rollback/s {}",
            rate(rated.iter().map(|r| r.rollbacks).sum())
        ));
    }
    let mut lines = vec![Line::from(Span::styled(all, bold()))];
    let width = app
        .longest_target_name()
        .unwrap_or(0)
        .min(crate::columns::target_cap(app.size.0));
    for i in shown {
        let Some(t) = app.fleet.get(i) else { continue };
        let Some(h) = &t.health else { continue };
        let c = &h.counters;
        let name = cut(&line(&t.name), u16::try_from(width).unwrap_or(u16::MAX));
        let mut text = format!("{name:<width$} ");
        // The figures that say trouble first: a narrow screen cuts the line's end.
        text.push_str(&format!(
            "xact/s {} · oldest xact {} · xmin age {} · lag {}",
            t.rates
                .as_ref()
                .map_or_else(|| "…".to_owned(), |r| rate(r.commits + r.rollbacks)),
            c.oldest_xact
                .map_or_else(|| "-".to_owned(), format_duration),
            h.xmin
                .as_ref()
                .map_or_else(|| "-".to_owned(), |(a, _)| a.to_string()),
            match lag(h) {
                Some(d) => format_duration(d),
                None if c.standbys.is_empty() => "no standby".into(),
                None => "-".into(),
            }
        ));
        if let Some(r) = &t.rates {
            text.push_str(&format!(
                " · hit {} · rb/s {} · temp {}/s",
                r.cache_hit
                    .map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", c * 100.0)),
                rate(r.rollbacks),
                bytes(r.temp_bytes)
            ));
        }
        text.push_str(&format!(" · av {}/{}", c.autovacuum, c.autovacuum_max));
        lines.push(Line::from(text));
    }
    if more > 0 {
        lines.push(Line::from(Span::styled(
            format!("+{more} more servers (the first line has the worst figures of all)"),
            style(app, Color::DarkGray),
        )));
    }
    lines
}

/// The health header (`H` hides it): rates between the last two refreshes, the oldest
/// transaction, the xmin horizon and its holder, autovacuum, and each standby's lag.
fn health_lines(app: &App, wide: bool) -> Vec<Line<'static>> {
    let Some(h) = &app.health else {
        return vec![Line::from(Span::styled(
            "health: reading… (H hides it)",
            style(app, Color::DarkGray),
        ))];
    };
    let rate = |v: f64| {
        if v >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    let mut first = Vec::new();
    match &app.rates {
        Some(r) => {
            first.push(Span::raw(format!(
                "xact/s {} · rollback/s ",
                rate(r.commits + r.rollbacks)
            )));
            first.push(Span::styled(
                rate(r.rollbacks),
                if r.rollbacks > 0.0 {
                    style(app, Color::Yellow)
                } else {
                    Style::default()
                },
            ));
            first.push(Span::raw(format!(
                " · cache hit {} · temp {}/s ({} files/s)",
                r.cache_hit
                    .map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", c * 100.0)),
                bytes(r.temp_bytes),
                rate(r.temp_files)
            )));
        }
        None => first.push(Span::raw("xact/s … (two refreshes needed)")),
    }
    let mut second = Vec::new();
    second.push(Span::raw(format!(
        "{}oldest xact {}",
        if wide { " · " } else { "" },
        h.counters
            .oldest_xact
            .map_or_else(|| "-".to_owned(), pgkill_core::format_duration)
    )));
    second.push(Span::raw(match &h.xmin {
        Some((age, who)) => format!(" · xmin age {age} ({})", line(who)),
        None => " · xmin age -".into(),
    }));
    second.push(Span::styled(
        format!(
            " · autovacuum {}/{}",
            h.counters.autovacuum, h.counters.autovacuum_max
        ),
        if h.counters.autovacuum_max > 0 && h.counters.autovacuum >= h.counters.autovacuum_max {
            style(app, Color::Yellow)
        } else {
            Style::default()
        },
    ));
    let standbys = if h.counters.standbys.is_empty() {
        "standbys: none streaming from here".to_owned()
    } else {
        let each: Vec<String> = h
            .counters
            .standbys
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} lag {}{}",
                    line(&s.name),
                    line(s.addr.as_deref().unwrap_or("local")),
                    line(s.state.as_deref().unwrap_or("?")),
                    s.lag
                        .map_or_else(|| "-".to_owned(), pgkill_core::format_duration),
                    s.behind
                        .map(|b| format!(" ({} behind)", bytes(b as f64)))
                        .unwrap_or_default()
                )
            })
            .collect();
        format!("standbys: {}", each.join(" · "))
    };
    if wide {
        first.extend(second);
        vec![Line::from(first), Line::from(standbys)]
    } else {
        vec![Line::from(first), Line::from(second), Line::from(standbys)]
    }
}

fn draw_graph(app: &App, frame: &mut Frame, area: Rect) {
    // Sessions doing something (active or holding a transaction) per refresh.
    let data: Vec<u64> = app
        .history
        .iter()
        .map(|c| c.active + c.idle_in_transaction)
        .collect();
    let start = data
        .len()
        .saturating_sub(area.width.saturating_sub(2) as usize);
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::LEFT | Borders::RIGHT)
                    .title("busy sessions"),
            )
            .data(&data[start..])
            .style(style(app, Color::Cyan)),
        area,
    );
}

/// The state as the table shows it: `idle in transaction (aborted)` told apart from a
/// healthy one, in fewer letters where the column is narrow.
fn state_text(state: Option<&str>, narrow: bool) -> String {
    match (state, narrow) {
        (Some("idle in transaction"), true) => "idle in tx".into(),
        (Some("idle in transaction (aborted)"), true) => "aborted tx".into(),
        (Some("idle in transaction (aborted)"), false) => "idle in tx (aborted)".into(),
        (Some("fastpath function call"), _) => "fastpath".into(),
        (s, _) => unknown(s),
    }
}

fn state_style(app: &App, state: Option<&str>) -> Style {
    match state {
        Some("active") => style(app, Color::Green),
        Some("idle in transaction (aborted)") => style(app, Color::Red),
        Some(st) if st.starts_with("idle in transaction") => style(app, Color::Yellow),
        _ => Style::default(),
    }
}

fn session_cells(
    app: &App,
    target: usize,
    s: &Session,
    columns: &[(Column, u16)],
) -> Vec<Cell<'static>> {
    let mark = if app.selected.contains(&RowKey::Backend(target, s.pid)) {
        "*"
    } else {
        " "
    };
    let mut cells = vec![Cell::from(mark)];
    for (column, width) in columns {
        cells.push(match column {
            // From the command line or the targets file: escaped like server text.
            Column::Target => Cell::from(cut(&line(app.target_name(target)), *width)),
            Column::Pid => Cell::from(s.pid.to_string()),
            Column::User => Cell::from(unknown(s.user.as_deref())),
            Column::Database => Cell::from(unknown(s.database.as_deref())),
            Column::State => Cell::from(state_text(s.state.as_deref(), *width < 19))
                .style(state_style(app, s.state.as_deref())),
            Column::StateAge => Cell::from(age(s.state_age())),
            Column::Wait => Cell::from(line(&shown_wait(s))),
            Column::Xact => Cell::from(age(s.xact_age())),
            Column::BlockedBy => Cell::from(
                s.blocked_by
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            // Behind a pooler: the application linked to the backend right now.
            Column::Application => Cell::from(match s.pooler.as_ref().map(|l| &l.client) {
                Some(Some(c)) => unknown(c.application_name.as_deref()),
                _ => unknown(s.application_name.as_deref()),
            }),
            // `pgb:`: through PgBouncer (the header says which, and its pool mode).
            Column::Client => Cell::from(match s.pooler.as_ref().map(|l| &l.client) {
                Some(Some(c)) => line(&format!(
                    "pgb:{}",
                    c.addr.map_or_else(|| "local".to_owned(), |a| a.to_string())
                )),
                Some(None) => "pgb:(pool)".to_owned(),
                None => line(&s.client_text()),
            }),
            Column::Query => Cell::from(query_text(app, target, s)),
            Column::XminAge => Cell::from(s.xmin_age.map(|a| a.to_string()).unwrap_or_default())
                .style(if s.holds_xmin {
                    style(app, Color::Yellow)
                } else {
                    Style::default()
                }),
            Column::BackendType => Cell::from(unknown(s.backend_type.as_deref())),
        });
    }
    cells
}

/// The query column of a session: its query on one line, after what the row is when
/// that is not plain from the query (`A` lists these): a parallel worker says whose
/// (`└─ worker of 4242:`), a command `pg_stat_progress_*` reports on says how far it is
/// (`[VACUUM scanning heap 42%]`), and an autovacuum run to prevent wraparound says so
/// first (`[wraparound]`; at the query's end it would be cut off).
fn query_text(app: &App, target: usize, s: &Session) -> String {
    let mut text = String::new();
    if let Some(leader) = s.leader_pid.filter(|l| *l != s.pid) {
        text.push_str(&format!("└─ worker of {leader}: "));
    }
    let query = s.visible_query().unwrap_or("?");
    if s.backend_type.as_deref() == Some("autovacuum worker")
        && query.contains("(to prevent wraparound)")
    {
        text.push_str("[wraparound] ");
    }
    if let Some(p) = app.progress_of(target, s.pid) {
        text.push_str(&format!("[{}] ", line(&p.describe())));
    }
    text.push_str(&one_line(query));
    text
}

/// A query on one line: runs of white space (line breaks too) collapsed to one space.
fn one_line(q: &str) -> String {
    line(&q.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// An application connection at a pooler holding no backend: no pid, no times; its
/// client is the application itself (`pgb:` says it is behind PgBouncer).
fn pooled_cells(
    app: &App,
    target: usize,
    p: &pgkill_core::pooler::Pooled,
    columns: &[(Column, u16)],
) -> Vec<Cell<'static>> {
    let mark = if app.selected.contains(&RowKey::of_pooled(target, p)) {
        "*"
    } else {
        " "
    };
    let mut cells = vec![Cell::from(mark)];
    for (column, width) in columns {
        cells.push(match column {
            // The server the pooler is in front of.
            Column::Target => Cell::from(cut(&line(app.target_name(target)), *width)),
            Column::Pid => Cell::from("-"),
            Column::User => Cell::from(line(&p.client.user)),
            Column::Database => Cell::from(line(&p.database)),
            Column::State => {
                Cell::from(line(&format!("{} (pooled)", p.state))).style(style(app, Color::Cyan))
            }
            Column::Wait => Cell::from(if p.state == "waiting" { "pooler" } else { "" }),
            Column::Application => Cell::from(unknown(p.client.application_name.as_deref())),
            // As for a pooler backend's application: the port is in the details (Enter).
            Column::Client => Cell::from(line(
                &p.client
                    .addr
                    .map_or_else(|| "pgb:local".to_owned(), |a| format!("pgb:{a}")),
            )),
            Column::Query => Cell::from(line(&format!(
                "(no backend: {} pooling at {})",
                p.pool_mode, p.pooler
            ))),
            Column::BackendType => Cell::from("pooled"),
            Column::StateAge | Column::Xact | Column::BlockedBy | Column::XminAge => Cell::from(""),
        });
    }
    cells
}

fn draw_table(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.visible();
    let columns = crate::columns::layout(area.width, &app.hidden, app.longest_target_name());
    let height = area.height.saturating_sub(1) as usize;
    // `v`: the query over several lines (at most a third of the table), white space
    // collapsed; else one line.
    let query_width = columns.last().map_or(10, |(_, w)| usize::from(*w).max(10));
    let most = (height / 3).max(1);
    let wrapped: Vec<Option<Vec<String>>> = rows
        .iter()
        .map(|r| match r {
            crate::app::Row::Backend(target, s) if app.wrap => {
                let mut lines = wrap_words(&query_text(app, *target, s), query_width);
                if lines.len() > most {
                    lines.truncate(most);
                    if let Some(last) = lines.last_mut() {
                        last.push('…');
                    }
                }
                Some(lines)
            }
            _ => None,
        })
        .collect();
    let tall = |i: usize| wrapped[i].as_ref().map_or(1, |l| l.len().max(1));
    // Keep the cursor on screen: the first row shown is the earliest from which the
    // cursor's row still fits.
    let mut first = app.cursor.min(rows.len().saturating_sub(1));
    let mut used = if rows.is_empty() { 0 } else { tall(first) };
    while first > 0 && used + tall(first - 1) <= height {
        first -= 1;
        used += tall(first);
    }
    let mut room = height;
    let body: Vec<Row> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take_while(|(i, _)| {
            let fits = tall(*i) <= room;
            room = room.saturating_sub(tall(*i));
            fits
        })
        .map(|(i, s)| {
            let mut cells = match s {
                crate::app::Row::Backend(target, s) => session_cells(app, *target, s, &columns),
                crate::app::Row::Pooled(target, p) => pooled_cells(app, *target, p, &columns),
            };
            let mut row_height = 1;
            if let (Some(lines), Some(last)) = (&wrapped[i], cells.last_mut()) {
                row_height = lines.len().max(1);
                *last = Cell::from(ratatui::text::Text::from(
                    lines
                        .iter()
                        .map(|l| Line::from(l.clone()))
                        .collect::<Vec<_>>(),
                ));
            }
            let row = Row::new(cells).height(u16::try_from(row_height).unwrap_or(1));
            if i == app.cursor {
                row.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let header = Row::new(
        std::iter::once(Cell::from("")).chain(columns.iter().map(|(c, w)| {
            let label = c.label();
            // The order mark only where it fits: a header never runs into the next.
            Cell::from(
                if *c == app.sort && usize::from(*w) > label.chars().count() {
                    format!("{label}{}", if app.descending { "▼" } else { "▲" })
                } else {
                    label.to_owned()
                },
            )
        })),
    )
    .style(bold());
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(1))
        .chain(columns.iter().map(|(c, w)| {
            if *c == Column::Query {
                Constraint::Min(*w)
            } else {
                Constraint::Length(*w)
            }
        }))
        .collect();
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        area,
    );
}

/// Why a field is empty for a plain role: the server hides other roles' details.
const HIDDEN: &str = "hidden*";

fn draw_detail(app: &App, frame: &mut Frame, area: Rect, target: usize, pid: i32) {
    let Some(lines) = detail_lines(app, target, pid) else {
        frame.render_widget(
            Paragraph::new(format!("session {pid} is gone")).block(Block::bordered()),
            area,
        );
        return;
    };
    // Scrolled with ↑ ↓ PgUp PgDn Home End; never past the last line.
    let scroll = app.detail_scroll.min(lines.len().saturating_sub(1));
    let title = if scroll > 0 {
        format!("session {pid} (Esc: back) · from line {}", scroll + 1)
    } else {
        format!("session {pid} (Esc: back)")
    };
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((u16::try_from(scroll).unwrap_or(u16::MAX), 0))
            .block(Block::bordered().title(title)),
        area,
    );
}

/// The details pane's lines for `pid` (the query with its own line breaks), `None` when
/// the session is gone.
pub(crate) fn detail_lines(app: &App, target: usize, pid: i32) -> Option<Vec<Line<'static>>> {
    let s = app.session(target, pid)?;
    let hidden = s.state.is_none();
    // Local time first (what the person reading knows), UTC after it (what logs say).
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| match v {
        Some(t) => format!(
            "{} ({} UTC)",
            t.with_timezone(&app.utc_offset)
                .format("%Y-%m-%d %H:%M:%S %:z"),
            t.format("%H:%M:%S")
        ),
        None if hidden => HIDDEN.into(),
        None => "-".into(),
    };
    let since =
        |at: Option<chrono::DateTime<chrono::Utc>>, d: Option<std::time::Duration>| match (at, d) {
            (Some(_), Some(d)) => format!("{}, {} ago", t(at), format_duration(d)),
            _ => t(at),
        };
    let waits: Vec<String> = app
        .waiting_for(target, pid)
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    let client = match (s.client_addr, s.client_port, &s.client_hostname) {
        (Some(a), p, h) => format!(
            "{a}{}{}",
            p.map(|p| format!(":{p}")).unwrap_or_default(),
            h.as_deref()
                .map(|h| format!(" ({})", line(h)))
                .unwrap_or_default()
        ),
        (None, Some(-1), _) => "local (Unix socket)".into(),
        (None, _, _) if hidden => HIDDEN.into(),
        (None, _, _) => "-".into(),
    };
    let or_hidden = |v: Option<&str>| {
        if hidden {
            HIDDEN.to_owned()
        } else {
            unknown(v)
        }
    };
    let mut lines = Vec::new();
    if app.several_targets() {
        lines.push(Line::from(format!(
            "target {}",
            line(app.target_name(target))
        )));
    }
    lines.extend([
        Line::from(format!(
            "pid {}  user {}  database {}  application {}",
            s.pid,
            unknown(s.user.as_deref()),
            unknown(s.database.as_deref()),
            unknown(s.application_name.as_deref())
        )),
        Line::from(format!(
            "client {client}  backend {}",
            or_hidden(s.backend_type.as_deref())
        )),
        Line::from(format!(
            "state {}  wait {}",
            or_hidden(s.state.as_deref()),
            match (&s.wait_event_type, &s.wait_event) {
                (Some(t), Some(e)) => line(&format!("{t}:{e}")),
                _ if hidden => HIDDEN.into(),
                _ => "none".into(),
            },
        )),
        Line::from(format!(
            "connected    {}",
            since(s.backend_start, s.backend_age())
        )),
        Line::from(format!(
            "transaction  {}",
            since(s.xact_start, s.xact_age())
        )),
        Line::from(format!("query start  {}", since(s.query_start, None))),
        Line::from(format!(
            "state since  {}",
            since(s.state_change, s.state_age())
        )),
    ]);
    if let Some(l) = app.lock_of(target, pid) {
        lines.push(Line::from(format!("waits for    {}", line(&l.describe()))));
    }
    if let Some(p) = app.progress_of(target, pid) {
        let of = match (p.done, p.total) {
            (Some(d), Some(t)) if t > 0 => format!(" ({d} of {t})"),
            _ => String::new(),
        };
        lines.push(Line::from(format!(
            "progress     {}{of}",
            line(&p.describe())
        )));
    }
    if let Some(leader) = s.leader_pid.filter(|l| *l != pid) {
        lines.push(Line::from(format!("parallel worker of {leader}")));
    }
    let workers: Vec<String> = app
        .sessions
        .iter()
        .filter(|w| w.leader_pid == Some(pid) && w.pid != pid)
        .map(|w| w.pid.to_string())
        .collect();
    if !workers.is_empty() {
        lines.push(Line::from(format!(
            "parallel workers: {}",
            workers.join(", ")
        )));
    }
    lines.push(Line::from(format!(
        "blocked by: {}   blocks: {}",
        if s.blocked_by.is_empty() {
            "nobody".into()
        } else {
            s.blocked_by
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        if waits.is_empty() {
            "nobody".into()
        } else {
            waits.join(", ")
        }
    )));
    if hidden {
        lines.push(Line::from(Span::styled(
            "* hidden: another role's session, whose details the server shows only to roles with pg_read_all_stats (or pg_monitor): a superuser can GRANT it to your role.",
            style(app, Color::Yellow),
        )));
    }
    lines.push(Line::from(""));
    // The full query, line by line as it was written.
    let query = s
        .visible_query()
        .unwrap_or("(query hidden: another role's session; needs pg_read_all_stats)");
    lines.extend(
        query
            .lines()
            .map(|l| Line::from(pgkill_core::printable(&l.replace('\t', "    ")).into_owned())),
    );
    Some(lines)
}

fn draw_blocking(app: &App, frame: &mut Frame, area: Rect, cursor: usize) {
    let tree = app.blocking_tree();
    let mut lines = Vec::new();
    if tree.is_empty() {
        lines.push(Line::from(
            "No session is waiting for a lock held by another.",
        ));
    }
    // Keep the cursor on screen.
    let height = area.height.saturating_sub(2) as usize;
    let first = cursor.saturating_sub(height.saturating_sub(1));
    for (i, node) in tree.iter().enumerate().skip(first).take(height) {
        let Some(s) = app.session(node.target, node.pid) else {
            continue;
        };
        let mark = if i == cursor { "> " } else { "  " };
        // With several targets each root says its server (its chain is all there).
        let on = if app.several_targets() {
            format!("{}: ", line(app.target_name(node.target)))
        } else {
            String::new()
        };
        let query = one_line(s.visible_query().unwrap_or("?"));
        let text = if node.depth == 0 {
            let xact = age(s.xact_age());
            format!(
                "{mark}{on}{} {} {} xact {} · blocks {} · {}",
                s.pid,
                unknown(s.user.as_deref()),
                unknown(s.state.as_deref()),
                if xact.is_empty() { "-".into() } else { xact },
                node.total,
                query
            )
        } else {
            let lock = app.lock_of(node.target, s.pid);
            // Since when: pg_locks.waitstart (14+), else the waiter's state change.
            let since = lock.and_then(|l| l.since).or(s.state_change);
            let waited = since
                .and_then(|at| s.now.signed_duration_since(at).to_std().ok())
                .map(format_duration)
                .unwrap_or_else(|| "?".into());
            let what = lock.map_or_else(|| "a lock".to_owned(), |l| line(&l.describe()));
            let also = if node.also_waits_for.is_empty() {
                String::new()
            } else {
                format!(
                    " [also waits for {}]",
                    node.also_waits_for
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!(
                "{mark}{}{} {} waiting {waited} for {what}{also} · its query: {query}",
                node.prefix,
                s.pid,
                unknown(s.user.as_deref()),
            )
        };
        lines.push(Line::from(Span::styled(
            text,
            if i == cursor {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            },
        )));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(
            "blocking tree, roots blocking the most first (↑↓ move · k terminate · c cancel · Enter details · Esc back)",
        )),
        area,
    );
}

/// The help screen's lines (scrolled with ↑ ↓ PgUp PgDn Home End on small screens).
pub const HELP: &[&str] = &[
    "q quit · ? h F1 help (↑ ↓ PgUp PgDn Home End scroll it; Esc back)",
    "/ filter as you type: db:NAME user:ROLE app:GLOB client:CIDR|local state:STATE pid:N idle:DUR xact:DUR query-age:DUR backend:DUR q:TEXT blocking waiting blocking-for:DUR holding-xmin target:NAME; exclude: -db:NAME -user:ROLE -app:GLOB -client:CIDR|local (an exclusion always wins; same kinds OR-ed, others AND-ed; waiting: sessions waiting on a lock; holding-xmin: the sessions that are the xmin horizon; target:NAME: with several --target, that server's rows, as the header and the target column name it)",
    "  editing: ← → Home End move · Backspace · Ctrl-U clear before the cursor · Ctrl-W delete a word · Ctrl-K clear after · Enter keep · Esc back to the previous filter",
    "s / S sort by the next column on screen / reverse the order · C hide the sorted column (on pid or query: show every column again; --columns LIST at start)",
    "↑ ↓ (or j) move · PgUp PgDn page · Home End first / last row",
    "space select the row and move down · a select all shown · Esc clear selection",
    "c cancel · k terminate (the selection, or the row under the cursor), asked first: y yes · n, Esc or Enter no · ! include protected superuser sessions",
    "Enter details (↑ ↓ PgUp PgDn Home End scroll them; y copies the query) · b blocking tree (every level; k terminates the line under the cursor)",
    "y copy the full query (in the list or the details) to the clipboard · Y its pid (OSC 52: the terminal must allow it)",
    "A every kind of backend too (autovacuum, marked [wraparound] when it runs to prevent wraparound; walsenders; parallel workers right under their leader, PostgreSQL 13+), listed only: top signals client sessions only. A command pg_stat_progress_* reports on (VACUUM, CREATE INDEX, CLUSTER, ANALYZE, BASE_BACKUP, COPY) shows its phase and how far it is, [VACUUM scanning heap 42%], before its query",
    "v wrap queries over several lines in the list (white space collapsed) · one line again",
    "H health header on / off (xact/s, rollbacks, cache hit, temp, oldest xact, xmin horizon, autovacuum, standbys); with several --target a line over all of them (rates summed; the worst cache hit, oldest xact, xmin age and standby lag, each with its server), then one line per server (as many as a sixth of the screen holds, then +N more)",
    "with several --target: b builds each server's lock chains apart (a pid is a session of its own server) and ranks every root by how many it blocks; each root names its server, and k / c on a line go to that server only",
    "p pause · + / - refresh interval (at once; STALE in the header: data over two intervals old)",
    "--pgbouncer (with several targets, each [[target]]'s pgbouncer key): connections holding no backend are rows of their own (pid -), after the backends, under the server their pooler is in front of; k ends an application where it is (its backend in session pooling, else KILL_CLIENT at the pooler, PgBouncer 1.24+), as `pgkill kill --pgbouncer` does",
];

fn draw_pooled_detail(app: &App, frame: &mut Frame, area: Rect, key: &RowKey) {
    let Some(p) = app.pooled_row(key) else {
        frame.render_widget(
            Paragraph::new("this application connection is gone (or holds a backend now)")
                .block(Block::bordered()),
            area,
        );
        return;
    };
    let c = &p.client;
    let server = match key {
        RowKey::Pooled { target, .. } if app.several_targets() => {
            format!("target {}: ", line(app.target_name(*target)))
        }
        _ => String::new(),
    };
    let lines = vec![
        Line::from(format!(
            "{server}application connection at PgBouncer {} at {} ({} pooling), holding no backend",
            line(&p.version),
            line(&p.pooler),
            line(&p.pool_mode)
        )),
        Line::from(format!(
            "user {}  database {} (alias {})  application {}",
            line(&c.user),
            line(&p.database),
            line(&p.alias),
            unknown(c.application_name.as_deref())
        )),
        Line::from(format!(
            "client {}:{}  state {}  connected {}  id {}",
            c.addr.map_or_else(|| "local".to_owned(), |a| a.to_string()),
            c.port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            line(&p.state),
            unknown(c.connect_time.as_deref()),
            c.id.map_or_else(|| "- (PgBouncer before 1.24)".to_owned(), |i| i.to_string())
        )),
        Line::from(""),
        Line::from("k ends it at the pooler (KILL_CLIENT, PgBouncer 1.24+); it runs no statement to cancel"),
    ];
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title("pooled connection (Esc: back)")),
        area,
    );
}

/// The help's lines wrapped to a screen `width` columns wide (inside its border), and
/// how far it can be scrolled on a screen `height` lines high.
pub fn help_lines(width: u16, room: usize) -> (Vec<String>, usize) {
    let inner = usize::from(width.saturating_sub(2)).max(20);
    let lines: Vec<String> = HELP
        .iter()
        .flat_map(|l| {
            let indent = l.len() - l.trim_start().len();
            let mut wrapped = wrap_words(l.trim_start(), inner - indent - 2);
            for (i, w) in wrapped.iter_mut().enumerate() {
                let pad = if i == 0 { indent } else { indent + 2 };
                *w = format!("{}{w}", " ".repeat(pad));
            }
            wrapped
        })
        .collect();
    let room = room.max(1);
    let last = lines.len().saturating_sub(room);
    (lines, last)
}

fn draw_help(frame: &mut Frame, area: Rect, scroll: usize) {
    let room = area.height.saturating_sub(2) as usize;
    let (all, _) = help_lines(area.width, room);
    let scroll = scroll.min(all.len().saturating_sub(room));
    let lines: Vec<Line> = all
        .iter()
        .skip(scroll)
        .take(room)
        .map(|l| Line::from(l.clone()))
        .collect();
    let more = if scroll + room < all.len() {
        format!(
            " · lines {}-{} of {}, ↓ PgDn for more",
            scroll + 1,
            scroll + room,
            all.len()
        )
    } else if scroll > 0 {
        format!(" · lines {}-{} of {}", scroll + 1, all.len(), all.len())
    } else {
        String::new()
    };
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!("keys (Esc: back){more}"))),
        area,
    );
}

fn draw_status(app: &App, frame: &mut Frame, area: Rect) {
    // The filter in effect, always (its own line: an action's outcome never hides it).
    let applied = if app.applied_filter.trim().is_empty() {
        "none (every session)".to_owned()
    } else {
        line(app.applied_filter.trim())
    };
    let filter = if let Mode::Filtering { .. } = app.mode {
        let chars: Vec<char> = app.filter_text.chars().collect();
        let at = app.filter_cursor.min(chars.len());
        let before: String = chars[..at].iter().collect();
        let under: String = chars.get(at).map_or(" ".into(), |c| c.to_string());
        let after: String = chars
            .get(at + 1..)
            .map_or(String::new(), |r| r.iter().collect());
        let mut spans = vec![
            Span::styled("filter: ", bold()),
            Span::raw(line(&before)),
            Span::styled(
                line(&under),
                Style::default().add_modifier(Modifier::REVERSED),
            ),
            Span::raw(line(&after)),
        ];
        if let Some(e) = &app.filter_error {
            spans.push(Span::styled(
                format!("  applying: {applied} · not understood: {}", line(e)),
                style(app, Color::Red),
            ));
        }
        Line::from(spans)
    } else if let Some(e) = &app.filter_error {
        Line::from(Span::styled(
            format!(
                "filter \"{}\" not understood, applying: {applied} · {}",
                line(&app.filter_text),
                line(e)
            ),
            style(app, Color::Red),
        ))
    } else if !app.applied_filter.trim().is_empty() {
        Line::from(format!("filter: {applied}"))
    } else {
        Line::from(Span::styled(
            "filter: none (every session) · / to type one",
            style(app, Color::DarkGray),
        ))
    };
    let news = if let Some(note) = &app.note {
        Line::from(Span::styled(line(note), style(app, Color::Yellow)))
    } else if let Some(e) = &app.action_error {
        Line::from(Span::styled(
            format!("action failed: {}", line(e)),
            style(app, Color::Red),
        ))
    } else if !app.outcomes.is_empty() || !app.app_outcomes.is_empty() {
        let parts: Vec<String> = app
            .outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| match app.outcome_targets.get(i) {
                Some(t) if app.several_targets() => format!(
                    "{} {} {}",
                    line(app.target_name(*t)),
                    o.pid,
                    o.outcome.as_str()
                ),
                _ => format!("{} {}", o.pid, o.outcome.as_str()),
            })
            .chain(app.app_outcomes.iter().enumerate().map(|(i, o)| {
                let on = match app.app_outcome_targets.get(i) {
                    Some(t) if app.several_targets() => format!("{} ", line(app.target_name(*t))),
                    _ => String::new(),
                };
                format!(
                    "{on}{} {} at the pooler",
                    line(&app_name(&o.client)),
                    o.outcome.as_str()
                )
            }))
            .collect();
        Line::from(format!("last action: {}", parts.join(", ")))
    } else if let Some((t, why)) = app.fleet.iter().find_map(|t| match &t.conn {
        ConnState::Lost(e) | ConnState::AuthFailed(e) => Some((t, e)),
        ConnState::Connected => None,
    }) {
        // With several targets, why the first that does not answer does not (the
        // header names each).
        Line::from(Span::styled(
            format!("{}: {}", line(&t.name), line(why)),
            style(app, Color::Red),
        ))
    } else {
        Line::from("")
    };
    let keys = Line::from(Span::styled(
        format!(
            "q quit  / filter  s/S sort  space select ({})  c cancel  k terminate  Enter details  b blocking  p pause  ? help",
            app.selected.len()
        ),
        style(app, Color::DarkGray),
    ));
    frame.render_widget(Paragraph::new(vec![filter, news, keys]), area);
}

/// `text` in lines of at most `width` characters, broken at spaces (a longer word is a
/// line of its own).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split(' ') {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// An application connection as people know it: its name and address.
fn app_name(c: &pgkill_core::pooler::PoolConnection) -> String {
    format!(
        "{}@{}:{}",
        c.application_name.as_deref().unwrap_or("?"),
        c.addr.map_or_else(|| "local".to_owned(), |a| a.to_string()),
        c.port.map_or_else(|| "-".to_owned(), |p| p.to_string())
    )
}

/// The question names what will happen to each selected session before the answer: who
/// is signalled, and who is refused and why (the decisions `pgkill kill` makes).
fn draw_confirm(
    app: &App,
    frame: &mut Frame,
    area: Rect,
    signal: Signal,
    rows: &[RowKey],
    include_superusers: bool,
) {
    let verb = match signal {
        Signal::Terminate => "Terminate",
        Signal::Cancel => "Cancel the running statement of",
    };
    let decision = app.plan(signal, rows, include_superusers);
    let plan = &decision.backends;
    let go = decision.acting();
    let refused: Vec<_> = plan
        .targets
        .iter()
        .filter(|t| t.refused.is_some())
        .collect();
    // With several targets each application says the server behind its pooler.
    let apps_refused: Vec<_> = decision
        .at_pooler
        .iter()
        .zip(&decision.at_pooler_origins)
        .filter(|(t, _)| t.refused.is_some())
        .collect();
    let mut lines = vec![Line::from(Span::styled(
        format!("{verb} {go} session(s)?"),
        bold(),
    ))];
    let room = area.height.saturating_sub(8) as usize;
    let describe = |s: &pgkill_core::Session| {
        format!(
            "{} {} {} {} {}",
            s.pid,
            unknown(s.user.as_deref()),
            unknown(s.database.as_deref()),
            unknown(s.state.as_deref()),
            line(s.visible_query().unwrap_or("?"))
        )
    };
    let describe_app = |t: &pgkill_core::pooler::AppTarget, server: usize| {
        let on = if app.several_targets() {
            format!("{}: ", line(app.target_name(server)))
        } else {
            String::new()
        };
        format!(
            "{on}{} {} {} ({} pooling)",
            line(&app_name(&t.client)),
            line(&t.client.user),
            line(&t.database),
            line(&t.pool_mode)
        )
    };
    // With several targets each session says its server.
    let on = |i: usize| match decision.origins.get(i) {
        Some(t) if app.several_targets() => format!("{}: ", line(app.target_name(*t))),
        _ => String::new(),
    };
    for (i, t) in plan
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.refused.is_none())
        .take(room)
    {
        lines.push(Line::from(format!("{}{}", on(i), describe(&t.session))));
    }
    let ending: Vec<_> = decision
        .at_pooler
        .iter()
        .zip(&decision.at_pooler_origins)
        .filter(|(t, _)| t.refused.is_none())
        .collect();
    if !ending.is_empty() {
        lines.push(Line::from(
            "ended at the pooler (KILL_CLIENT), verified gone there:",
        ));
        for (t, server) in ending
            .iter()
            .take(room.saturating_sub(plan.to_signal().count()).max(2))
        {
            lines.push(Line::from(format!("  {}", describe_app(t, **server))));
        }
    }
    if go > room {
        lines.push(Line::from("…"));
    }
    let gone = rows.iter().filter(|k| !app.present(k)).count();
    if gone > 0 {
        lines.push(Line::from(format!(
            "{gone} selected session(s) ended already"
        )));
    }
    for why in &decision.left_alone {
        lines.push(Line::from(line(why)));
    }
    if !refused.is_empty() || !apps_refused.is_empty() {
        lines.push(Line::from(Span::styled(
            format!(
                "{} will NOT be signalled:",
                refused.len() + apps_refused.len()
            ),
            style(app, Color::Yellow).add_modifier(Modifier::BOLD),
        )));
        for (i, t) in plan
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.refused.is_some())
            .take(room.saturating_sub(go).max(2))
        {
            lines.push(Line::from(format!(
                "{}{} {}: {}",
                on(i),
                t.session.pid,
                unknown(t.session.user.as_deref()),
                line(t.refused.as_deref().unwrap_or_default())
            )));
        }
        // The reasons at a pooler are long (what would work instead): wrapped, indented.
        let inner = area.width.saturating_sub(8).min(96) as usize;
        for (t, server) in apps_refused.iter().take(room.saturating_sub(go).max(2)) {
            lines.push(Line::from(format!("{}:", describe_app(t, **server))));
            let why = line(t.refused.as_deref().unwrap_or_default());
            lines.extend(
                wrap_words(&why, inner)
                    .into_iter()
                    .map(|l| Line::from(format!("  {l}"))),
            );
        }
    }
    let protected = refused
        .iter()
        .filter(|t| t.session.superuser == Some(true))
        .count()
        + apps_refused
            .iter()
            .filter(|(t, server)| app.pooler_superusers_of(**server).contains(&t.client.user))
            .count();
    if include_superusers {
        lines.push(Line::from(Span::styled(
            "including superuser sessions in this action (! to leave them out)",
            style(app, Color::Red),
        )));
    } else if protected > 0 && app.may_include_superusers() {
        lines.push(Line::from(format!(
            "! includes the {protected} protected superuser session(s) in this action"
        )));
    }
    lines.push(Line::from(""));
    lines.push(Line::from(if go == 0 {
        "nothing to signal: n / Esc to go back"
    } else {
        "y: yes   n / Esc / Enter: no"
    }));
    // The question and the answer always show: what does not fit between them is cut.
    let fits = usize::from(area.height.saturating_sub(2));
    if lines.len() > fits && fits >= 4 {
        let tail = lines.split_off(lines.len() - 2);
        lines.truncate(fits - 3);
        lines.push(Line::from("… (more than fits: a larger window shows all)"));
        lines.extend(tail);
    }
    let width = area.width.saturating_sub(4).min(100);
    let height = (lines.len() as u16 + 2).min(area.height);
    let dialog = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, dialog);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("confirm")),
        dialog,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::tests::{keys_for_tests, loaded};
    use crate::app::{update, Event, Key};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn help_names_every_key_of_the_filter_language() {
        let help = HELP.join(" ");
        let keys = pgkill_core::filter::FILTER_KEYS
            .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
            .map(|k| k.trim_matches('`'))
            .filter(|k| !k.is_empty() && !["exclude", "or", "the", "words"].contains(k));
        for key in keys {
            let word = if ["blocking", "waiting", "holding-xmin"].contains(&key) {
                format!(" {key}")
            } else {
                format!("{key}:")
            };
            assert!(help.contains(&word), "the help does not name {word:?}");
            // Every key the help names is understood.
            let example = if word.ends_with(':') {
                let value = match key.trim_start_matches('-') {
                    "client" => "local",
                    "state" => "idle",
                    "pid" => "1",
                    "idle" | "xact" | "query-age" | "backend" | "blocking-for" => "1s",
                    _ => "x",
                };
                format!("{word}{value}")
            } else {
                key.to_owned()
            };
            assert!(
                pgkill_core::filter::parse_words(&example).is_ok(),
                "{example}"
            );
        }
    }

    fn render(app: &App, w: u16, h: u16) -> String {
        let mut app = app.clone();
        update(
            &mut app,
            Event::Resize {
                width: w,
                height: h,
            },
        );
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| view(&app, f)).unwrap();
        terminal.backend().to_string()
    }

    /// At 80×24, 120×40 and 200×50.
    fn both(name: &str, app: &App) {
        insta::assert_snapshot!(format!("{name}_80x24"), render(app, 80, 24));
        insta::assert_snapshot!(format!("{name}_120x40"), render(app, 120, 40));
        insta::assert_snapshot!(format!("{name}_200x50"), render(app, 200, 50));
    }

    /// A three-level chain with a double blocker: 201 and 202 (idle in transaction)
    /// both hold a lock 203's ALTER TABLE waits for; 204 and 205 queue behind 203; 206
    /// waits for 205's row.
    pub(crate) fn lock_chain() -> App {
        use crate::app::tests::{at, sample, session};
        use pgkill_core::LockWait;
        let mut snap = sample();
        let mut r1 = session(201, "shop", "reader", "idle in transaction", 900);
        r1.query = Some("SELECT *\n  FROM orders\n -- for the report".into());
        let mut r2 = session(202, "shop", "reader", "idle in transaction", 800);
        r2.query = Some("SELECT count(*) FROM orders".into());
        let mut ddl = session(203, "shop", "migrations", "active", 120);
        ddl.query = Some("ALTER TABLE orders ADD COLUMN note text".into());
        ddl.blocked_by = vec![201, 202];
        let waiter = |pid: i32, blocked_by: Vec<i32>, q: &str| {
            let mut w = session(pid, "shop", "api", "active", 60);
            w.wait_event_type = Some("Lock".into());
            w.wait_event = Some("relation".into());
            w.blocked_by = blocked_by;
            w.query = Some(q.into());
            w
        };
        ddl.wait_event_type = Some("Lock".into());
        ddl.wait_event = Some("relation".into());
        let mut api0 = waiter(204, vec![203], "SELECT * FROM orders WHERE id = $1");
        api0.state_change = at(-50);
        let mut api1 = waiter(205, vec![203], "UPDATE orders SET n = n + 1 WHERE id = 7");
        api1.blocking = 1;
        let mut api2 = waiter(206, vec![205], "UPDATE orders SET n = 0 WHERE id = 7");
        api2.wait_event = Some("transactionid".into());
        r1.blocking = 1;
        r2.blocking = 1;
        ddl.blocking = 2;
        snap.sessions = vec![r1, r2, ddl, api0, api1, api2];
        snap.health = None;
        let rel = |pid: i32, mode: &str, since: i64| LockWait {
            pid,
            locktype: "relation".into(),
            mode: mode.into(),
            database: Some("shop".into()),
            relation_oid: Some(16384),
            relation: Some(("public".into(), "orders".into())),
            since: at(since),
        };
        snap.locks = vec![
            rel(203, "AccessExclusiveLock", -64),
            rel(204, "AccessShareLock", -50),
            rel(205, "RowExclusiveLock", -40),
            LockWait {
                pid: 206,
                locktype: "transactionid".into(),
                mode: "ShareLock".into(),
                database: None,
                relation_oid: None,
                relation: None,
                since: None,
            },
        ];
        let mut app = App::new(std::time::Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        app
    }

    #[test]
    fn three_level_lock_tree_with_a_double_blocker() {
        let mut app = lock_chain();
        let tree: Vec<(i32, usize, String)> = app
            .blocking_tree()
            .into_iter()
            .map(|l| (l.pid, l.depth, l.prefix))
            .collect();
        assert_eq!(
            tree,
            [
                (201, 0, "".into()),
                (203, 1, "└─ ".into()),
                (204, 2, "   ├─ ".into()),
                (205, 2, "   └─ ".into()),
                (206, 3, "      └─ ".into()),
                (202, 0, "".into()),
                (203, 1, "└─ ".into()),
                (204, 2, "   ├─ ".into()),
                (205, 2, "   └─ ".into()),
                (206, 3, "      └─ ".into()),
            ]
        );
        assert_eq!(app.blocking_tree()[0].total, 4);
        assert_eq!(app.blocking_tree()[1].also_waits_for, [202]);
        keys_for_tests(&mut app, "b");
        both("lock_tree", &app);
        let screen = render(&app, 200, 50);
        assert!(
            screen.contains(
                "waiting 1m04s for AccessExclusiveLock on public.orders [also waits for 202]"
            ),
            "{screen}"
        );
        assert!(screen.contains("blocks 4"), "{screen}");
        // Terminate the root under the cursor, or any line of the tree.
        update(&mut app, Event::Key(Key::Down));
        keys_for_tests(&mut app, "k");
        assert_eq!(
            app.mode,
            Mode::Confirm {
                signal: pgkill_core::planner::Signal::Terminate,
                rows: vec![RowKey::Backend(0, 203)],
                include_superusers: false,
            }
        );
        update(&mut app, Event::Key(Key::Enter));
        assert_eq!(app.mode, Mode::Normal, "Enter in the question means no");
    }

    #[test]
    fn default_view() {
        both("default", &loaded());
        // Wide enough for the xmin age and backend type columns too.
        let wide = render(&loaded(), 300, 20);
        assert!(
            wide.contains("xmin age") && wide.contains("backend type"),
            "{wide}"
        );
        insta::assert_snapshot!("default_300x20", wide);
    }

    #[test]
    fn behind_a_pooler() {
        let mut snap =
            crate::app::tests::behind_a_pooler(pgkill_core::pooler::PoolerVersion::new(1, 24, 1));
        snap.poolers = vec!["PgBouncer 1.24.1 at host=127.0.0.1 port=6432 (transaction): 3 application connection(s), 2 holding no backend (listed after the backends)".into()];
        let mut app = App::new(std::time::Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        both("pooler", &app);
        keys_for_tests(&mut app, "ak");
        both("pooler_confirm", &app);
    }

    #[test]
    fn long_reasons_wrap_at_spaces() {
        assert_eq!(
            wrap_words("one two three four", 9),
            ["one two", "three", "four"]
        );
        assert_eq!(
            wrap_words("averyveryverylongword x", 5),
            ["averyveryverylongword", "x"]
        );
        assert!(wrap_words("", 5).is_empty());
    }

    #[test]
    fn filtered_view() {
        let mut app = loaded();
        keys_for_tests(&mut app, "/db:shop state:active");
        update(&mut app, Event::Key(Key::Enter));
        both("filtered", &app);
    }

    #[test]
    fn selection_and_confirmation() {
        let mut app = loaded();
        keys_for_tests(&mut app, "  k");
        both("confirm", &app);
    }

    #[test]
    fn the_confirmation_says_who_is_refused_and_superusers_included_shows() {
        let mut app = loaded();
        let mut snap = crate::app::tests::sample();
        snap.sessions[3].superuser = Some(true); // 104
        update(&mut app, Event::Snapshot(Ok(snap)));
        keys_for_tests(&mut app, "ak");
        let screen = render(&app, 200, 50);
        assert!(screen.contains("Terminate 5 session(s)?"), "{screen}");
        assert!(screen.contains("1 will NOT be signalled"), "{screen}");
        assert!(
            screen.contains("! includes the 1 protected superuser"),
            "{screen}"
        );
        keys_for_tests(&mut app, "!");
        let screen = render(&app, 200, 50);
        assert!(screen.contains("Terminate 6 session(s)?"), "{screen}");
        assert!(screen.contains("including superuser sessions"), "{screen}");
        assert!(!render(&app, 200, 50).contains("SUPERUSERS INCLUDED"));
        app.include_superusers = true;
        assert!(render(&app, 200, 50).contains("SUPERUSERS INCLUDED"));
    }

    #[test]
    fn detail_pane() {
        let mut app = loaded();
        keys_for_tests(&mut app, "s");
        keys_for_tests(&mut app, "SSS");
        update(&mut app, Event::Key(Key::Down));
        update(&mut app, Event::Key(Key::Enter));
        both("detail", &app);
    }

    #[test]
    fn details_of_a_multi_line_query_and_of_a_hidden_session() {
        let mut app = lock_chain();
        while app.current().map(|r| r.key()) != Some(RowKey::Backend(0, 201)) {
            update(&mut app, Event::Key(Key::Down));
        }
        update(&mut app, Event::Key(Key::Enter));
        let screen = render(&app, 120, 40);
        assert!(screen.contains("│SELECT *  "), "{screen}");
        assert!(screen.contains("│  FROM orders"), "{screen}");
        assert!(screen.contains("│ -- for the report"), "{screen}");
        app.utc_offset = chrono::FixedOffset::east_opt(3600).unwrap();
        let screen = render(&app, 120, 40);
        assert!(screen.contains("+01:00 ("), "local time and UTC: {screen}");
        // Another role's session, seen by a plain role: every hidden field says why.
        let mut snap = crate::app::tests::sample();
        let s = &mut snap.sessions[3];
        s.state = None;
        s.backend_start = None;
        s.xact_start = None;
        s.query_start = None;
        s.state_change = None;
        s.client_addr = None;
        s.client_port = None;
        s.wait_event_type = None;
        s.wait_event = None;
        s.backend_type = None;
        s.query = Some(pgkill_core::session::INSUFFICIENT_PRIVILEGE.into());
        let mut app = App::new(std::time::Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        while app.current().map(|r| r.key()) != Some(RowKey::Backend(0, 104)) {
            update(&mut app, Event::Key(Key::Down));
        }
        update(&mut app, Event::Key(Key::Enter));
        both("detail_hidden", &app);
        // The privilege doctor in the header says which grant shows them.
        let mut plain = crate::app::tests::sample();
        plain.caller.superuser = false;
        plain.read_all_stats = false;
        plain.sessions[3].state = None;
        let mut app = App::new(std::time::Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(plain)));
        both("privilege_notice", &app);
    }

    /// Two health readings a second apart on a primary with a standby.
    fn healthy() -> App {
        use crate::app::{Counters, Health};
        use pgkill_pg::top::Standby;
        let mut app = loaded();
        let reading = |secs: i64, commits: i64, rollbacks: i64, hit: i64, read: i64| Health {
            counters: Counters {
                at: crate::app::tests::at(secs).unwrap(),
                commits,
                rollbacks,
                blks_hit: hit,
                blks_read: read,
                temp_files: secs,
                temp_bytes: secs * 2_500_000,
                oldest_xact: Some(std::time::Duration::from_secs(300)),
                autovacuum: 1,
                autovacuum_max: 3,
                standbys: vec![Standby {
                    name: "replica1".into(),
                    addr: Some("10.0.0.2".into()),
                    state: Some("streaming".into()),
                    lag: Some(std::time::Duration::from_millis(1500)),
                    behind: Some(123_456),
                }],
            },
            xmin: Some((50, "session 101 (migrations)".into())),
        };
        let mut snap = crate::app::tests::sample();
        snap.health = Some(Box::new(reading(0, 1000, 10, 9000, 1000)));
        update(&mut app, Event::Snapshot(Ok(snap.clone())));
        snap.health = Some(Box::new(reading(2, 1400, 14, 9990, 1010)));
        update(&mut app, Event::Snapshot(Ok(snap)));
        app
    }

    #[test]
    fn the_health_header() {
        let mut app = healthy();
        let r = app.rates.unwrap();
        assert_eq!((r.commits, r.rollbacks), (200.0, 2.0));
        assert_eq!(r.cache_hit, Some(0.99));
        both("health", &app);
        let screen = render(&app, 200, 50);
        assert!(screen.contains("xact/s 202 · rollback/s 2.0 · cache hit 99.0% · temp 2.5 MB/s (1.0 files/s) · oldest xact 5m00s · xmin age 50 (session 101 (migrations)) · autovacuum 1/3"), "{screen}");
        assert!(
            screen.contains("standbys: replica1 10.0.0.2 streaming lag 1s (123.5 kB behind)"),
            "{screen}"
        );
        // H hides it (and the refresh stops reading it); showing it again refreshes.
        assert!(keys_for_tests(&mut app, "H").is_empty());
        assert!(!render(&app, 200, 50).contains("xact/s"));
        assert_eq!(
            keys_for_tests(&mut app, "H"),
            vec![crate::app::Effect::Refresh]
        );
        assert!(app.rates.is_none(), "new rates from two new readings");
    }

    #[test]
    fn help_scrolls_on_a_small_screen() {
        let mut app = loaded();
        update(
            &mut app,
            Event::Resize {
                width: 80,
                height: 15,
            },
        );
        keys_for_tests(&mut app, "?");
        let top = render(&app, 80, 15);
        assert!(top.contains("↓ PgDn for more"), "{top}");
        update(&mut app, Event::Key(Key::End));
        let bottom = render(&app, 80, 15);
        assert!(bottom.contains("PgBouncer 1.24+"), "{bottom}");
        insta::assert_snapshot!("help_80x15_end", bottom);
        update(&mut app, Event::Key(Key::F1));
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn the_filter_stays_visible_after_an_action_and_when_broken() {
        let mut app = loaded();
        keys_for_tests(&mut app, "/db:shop");
        update(&mut app, Event::Key(Key::Enter));
        let t = pgkill_core::plan::Target {
            session: app.session(0, 104).unwrap().clone(),
            reason: String::new(),
            refused: None,
        };
        let o = pgkill_core::plan::Outcome::new(
            &t,
            pgkill_core::plan::OutcomeKind::Terminated,
            "session ended",
        );
        update(&mut app, Event::Outcomes(Ok((vec![o], Vec::new()))));
        let screen = render(&app, 80, 24);
        assert!(screen.contains("filter: db:shop"), "{screen}");
        assert!(screen.contains("last action: 104 terminated"), "{screen}");
        keys_for_tests(&mut app, "/ foo:bar");
        update(&mut app, Event::Key(Key::Enter));
        let screen = render(&app, 120, 40);
        assert!(
            screen.contains(
                "filter \"db:shop foo:bar\" not understood, applying: db:shop · unknown filter key"
            ),
            "{screen}"
        );
        insta::assert_snapshot!("broken_filter_120x40", screen);
    }

    #[test]
    fn wrap_mode() {
        let mut app = lock_chain();
        let mut snap = crate::app::tests::sample();
        snap.sessions[3].query = Some(
            "SELECT o.id,\n       o.customer_id, o.total, o.created_at, o.note\n  FROM orders o\n  JOIN customers c ON c.id = o.customer_id\n WHERE o.created_at > now() - interval '1 day'\n ORDER BY o.created_at DESC".into(),
        );
        update(&mut app, Event::Snapshot(Ok(snap)));
        assert!(!app.wrap);
        keys_for_tests(&mut app, "v");
        assert!(app.wrap);
        both("wrap", &app);
        let screen = render(&app, 80, 24);
        assert!(
            screen.contains("JOIN"),
            "the rest of the query on the next lines: {screen}"
        );
        keys_for_tests(&mut app, "v");
        assert!(!app.wrap);
    }

    /// Details keep the query's own lines and scroll: End shows the last line, Home the
    /// first again.
    #[test]
    fn progress_wraparound_and_workers_say_so_in_the_query_column() {
        let mut snap = crate::app::tests::sample();
        let mut av = crate::app::tests::session(150, "shop", "postgres", "active", 30);
        av.backend_type = Some("autovacuum worker".into());
        av.query = Some("autovacuum: VACUUM public.orders (to prevent wraparound)".into());
        let mut worker = crate::app::tests::session(151, "shop", "app", "active", 1);
        worker.backend_type = Some("parallel worker".into());
        worker.leader_pid = Some(150);
        snap.sessions.extend([av, worker]);
        snap.progress.insert(
            150,
            crate::app::Progress {
                command: "VACUUM".into(),
                phase: Some("scanning heap".into()),
                done: Some(420),
                total: Some(1000),
            },
        );
        let mut app = App::new(std::time::Duration::from_secs(1));
        update(&mut app, Event::Key(Key::Char('A')));
        update(&mut app, Event::Snapshot(Ok(snap)));
        let screen = render(&app, 200, 50);
        assert!(
            screen.contains("[wraparound] [VACUUM scanning heap 42%] autovacuum: VAC"),
            "{screen}"
        );
        assert!(screen.contains("└─ worker of 150: "), "{screen}");
        let details = detail_lines(&app, 0, 150)
            .unwrap_or_default()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            details.contains("progress     VACUUM scanning heap 42% (420 of 1000)")
                && details.contains("parallel workers: 151"),
            "{details}"
        );
    }

    #[test]
    fn details_scroll_over_a_long_query() {
        let mut snap = crate::app::tests::sample();
        snap.sessions[3].query = Some(
            (1..=40)
                .map(|i| format!("-- line {i}"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let mut app = crate::app::App::new(std::time::Duration::from_secs(1));
        update(&mut app, Event::Snapshot(Ok(snap)));
        crate::app::tests::resize(&mut app, 80, 24);
        while app.current().map(|r| r.key()) != Some(crate::app::RowKey::Backend(0, 104)) {
            update(&mut app, Event::Key(Key::Down));
        }
        update(&mut app, Event::Key(Key::Enter));
        let top = render(&app, 80, 24);
        assert!(
            top.contains("-- line 1 ") && !top.contains("-- line 40"),
            "{top}"
        );
        update(&mut app, Event::Key(Key::Down));
        assert_eq!(app.detail_scroll, 1);
        update(&mut app, Event::Key(Key::End));
        let end = render(&app, 80, 24);
        assert!(
            end.contains("-- line 40") && end.contains("from line"),
            "{end}"
        );
        for _ in 0..5 {
            update(&mut app, Event::Key(Key::Down));
        }
        let last = app.detail_scroll;
        update(&mut app, Event::Key(Key::Up));
        assert_eq!(app.detail_scroll, last - 1, "never scrolled past the end");
        update(&mut app, Event::Key(Key::Home));
        assert_eq!(app.detail_scroll, 0);
        update(&mut app, Event::Key(Key::Esc));
        assert_eq!(app.mode, crate::app::Mode::Normal);
    }

    /// `--columns pid,user,state,blocked-by,query`: only those, the query taking the rest.
    #[test]
    fn chosen_columns() {
        let mut app = loaded();
        app.hidden =
            crate::app::Column::hidden_by("pid,user,state,blocked-by,query").unwrap_or_default();
        both("columns", &app);
    }

    #[test]
    fn blocking_tree() {
        let mut app = loaded();
        keys_for_tests(&mut app, "b");
        both("blocking", &app);
    }

    /// A role named `x ESC ]0;pwned BEL` rewrote terminal titles through pgkill: every
    /// view shows such names as visible escapes (ratatui alone would silently drop the
    /// control characters and show `x]0;pwned`).
    #[test]
    fn hostile_names_show_escaped_in_every_view() {
        let hostile = "x\x1b]0;pwned\x07";
        let mut app = loaded();
        let mut snapshot = crate::app::tests::sample();
        for s in &mut snapshot.sessions {
            s.user = Some(hostile.into());
            s.database = Some("db\u{9b}31m".into());
            s.application_name = Some("app\x1b[2J".into());
            s.query = Some(format!("SELECT 1\n-- {hostile}"));
        }
        update(&mut app, Event::Snapshot(Ok(snapshot)));
        let mut screens = vec![render(&app, 200, 50)];
        update(&mut app, Event::Key(Key::Enter));
        screens.push(render(&app, 200, 50));
        update(&mut app, Event::Key(Key::Esc));
        keys_for_tests(&mut app, "b");
        screens.push(render(&app, 200, 50));
        update(&mut app, Event::Key(Key::Esc));
        keys_for_tests(&mut app, " k");
        screens.push(render(&app, 200, 50));
        update(&mut app, Event::Key(Key::Esc));
        update(
            &mut app,
            Event::Snapshot(Err(format!("role {hostile} is gone"))),
        );
        screens.push(render(&app, 200, 50));
        for screen in &screens {
            assert!(screen.contains("x\\x1b]0;pwned\\x07"), "{screen}");
            assert!(
                !screen.chars().any(|c| c.is_control() && c != '\n'),
                "{screen:?}"
            );
        }
        assert!(screens[0].contains("db\\u{9b}31m") && screens[0].contains("app\\x1b[2J"));
    }

    #[test]
    fn disconnected() {
        let mut app = loaded();
        update(
            &mut app,
            Event::Snapshot(Err("server closed the connection unexpectedly".into())),
        );
        both("disconnected", &app);
    }

    #[test]
    fn authentication_failed() {
        let mut app = loaded();
        update(
            &mut app,
            Event::AuthFailed("password authentication failed for user \"bob\"".into()),
        );
        both("authentication_failed", &app);
    }

    #[test]
    fn several_targets_merged_with_one_disconnected() {
        use crate::app::tests::{fleet, from};
        let mut app = fleet();
        update(
            &mut app,
            from(2, Event::Snapshot(Err("connection refused".into()))),
        );
        let screen = render(&app, 120, 40);
        assert!(screen.contains("3 targets · 20/300 conns"), "{screen}");
        assert!(
            screen.contains("db-c:5432: disconnected (retrying)"),
            "{screen}"
        );
        insta::assert_snapshot!("several_targets_120x40", screen);
        // The confirmation names each session's server.
        keys_for_tests(&mut app, "ak");
        insta::assert_snapshot!("several_targets_confirm_120x40", render(&app, 120, 40));
    }

    #[test]
    fn several_targets_behind_poolers() {
        use crate::app::tests::two_behind_poolers;
        let mut app = two_behind_poolers();
        let screen = render(&app, 200, 50);
        for name in ["db-a", "db-b"] {
            assert!(
                screen.contains(&format!("{name}: PgBouncer 1.24.1 at host=127.0.0.1")),
                "{screen}"
            );
            assert!(
                screen
                    .lines()
                    .any(|l| l.starts_with(&format!("\"  {name} "))
                        && l.contains("web-idle")
                        && l.contains("(pooled)")),
                "{name}'s pooled row: {screen}"
            );
        }
        insta::assert_snapshot!("several_targets_poolers_200x50", screen);
        // The confirmation names the server behind each application's pooler.
        keys_for_tests(&mut app, "ak");
        let dialog = render(&app, 200, 50);
        assert!(dialog.contains("db-b: web-idle@10.0.0.9:50002"), "{dialog}");
        insta::assert_snapshot!("several_targets_poolers_confirm_200x50", dialog);
    }

    #[test]
    fn hostile_target_names_show_escaped() {
        use crate::app::tests::{fleet, from};
        let mut app = fleet();
        app.fleet[1].name = "evil\u{1b}]0;pwned\u{7}".into();
        update(
            &mut app,
            from(1, Event::Snapshot(Err("connection refused".into()))),
        );
        keys_for_tests(&mut app, "/target:x");
        for screen in [render(&app, 120, 40), render(&app, 200, 50)] {
            assert!(
                !screen.contains('\u{1b}') && !screen.contains('\u{7}'),
                "{screen}"
            );
            assert!(screen.contains("evil"), "{screen}");
        }
    }

    /// Two servers with health readings (two refreshes each: rates), a third that
    /// answers nothing.
    fn fleet_with_health() -> App {
        use crate::app::tests::{at, fleet, from, sample};
        use crate::app::{Counters, Health};
        use pgkill_pg::top::Standby;
        let mut app = fleet();
        app.fleet[1].name = "reporting-replica-eu-west-1.internal:5432".into();
        let reading = |secs: i64, commits: i64, hit: i64, oldest: u64, lag: Option<u64>| Health {
            counters: Counters {
                at: at(secs).unwrap(),
                commits,
                rollbacks: commits / 100,
                blks_hit: hit,
                blks_read: hit / 9,
                temp_files: 0,
                temp_bytes: secs * 1_000_000,
                oldest_xact: Some(std::time::Duration::from_secs(oldest)),
                autovacuum: 1,
                autovacuum_max: 3,
                standbys: lag
                    .map(|l| Standby {
                        name: "replica1".into(),
                        addr: Some("10.0.0.2".into()),
                        state: Some("streaming".into()),
                        lag: Some(std::time::Duration::from_millis(l)),
                        behind: Some(123_456),
                    })
                    .into_iter()
                    .collect(),
            },
            xmin: Some((
                i32::try_from(oldest).unwrap_or(0),
                "session 101 (migrations)".into(),
            )),
        };
        for (i, (commits, hit, oldest, lag)) in
            [(400, 99_000, 300, Some(1500)), (60, 9_000, 3600, None)]
                .into_iter()
                .enumerate()
        {
            let mut snap = crate::app::tests::sample();
            snap.sessions = app.fleet[i]
                .snapshot
                .clone()
                .unwrap_or_else(sample)
                .sessions;
            snap.health = Some(Box::new(reading(0, 0, 0, oldest, lag)));
            update(&mut app, from(i, Event::Snapshot(Ok(snap.clone()))));
            snap.health = Some(Box::new(reading(2, commits, hit, oldest, lag)));
            update(&mut app, from(i, Event::Snapshot(Ok(snap))));
        }
        update(
            &mut app,
            from(2, Event::Snapshot(Err("connection refused".into()))),
        );
        app
    }

    #[test]
    fn several_targets_with_the_health_header() {
        let app = fleet_with_health();
        for (w, h) in [(120, 40), (80, 24)] {
            let screen = render(&app, w, h);
            // A line over all the servers, with the worst of each figure and whose.
            assert!(screen.contains("health of 2: xact/s 232"), "{screen}");
            assert!(
                screen.contains("oldest xact 1h00m (reporting-repli…)"),
                "{screen}"
            );
            // One line per server that answers, each named.
            let named = |n: &str| {
                screen
                    .lines()
                    .any(|l| l.contains(n) && l.contains("xact/s"))
            };
            assert!(named("db-a:5432") && named("reporting-"), "{screen}");
            insta::assert_snapshot!(format!("several_targets_health_{w}x{h}"), screen);
        }
        // The target column is as wide as the longest name up to its cap, its header
        // whole.
        let screen = render(&app, 120, 40);
        let header = screen
            .lines()
            .find(|l| l.starts_with("\"  target "))
            .unwrap_or_default();
        assert!(header.contains("target                   pid"), "{screen}");
        assert!(screen.contains("reporting-replica-eu-we… "), "{screen}");
    }

    #[test]
    fn several_targets_blocking_tree() {
        let mut app = crate::app::tests::two_chains();
        keys_for_tests(&mut app, "b");
        for (w, h) in [(120, 40), (80, 24)] {
            let screen = render(&app, w, h);
            assert!(screen.contains("> db-b:5432: 300 migrations"), "{screen}");
            assert!(screen.contains("  db-a:5432: 100 migrations"), "{screen}");
            insta::assert_snapshot!(format!("several_targets_blocking_{w}x{h}"), screen);
        }
    }
}

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

use crate::app::{App, ConnState, Mode, RowKey};

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

/// Draws the whole screen.
pub fn view(app: &App, frame: &mut Frame) {
    let [header, graph, body, status] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(2),
    ])
    .areas(frame.area());
    draw_header(app, frame, header);
    draw_graph(app, frame, graph);
    match &app.mode {
        Mode::Detail(RowKey::Backend(pid)) => draw_detail(app, frame, body, *pid),
        Mode::Detail(key) => draw_pooled_detail(app, frame, body, key),
        Mode::Blocking { cursor } => draw_blocking(app, frame, body, *cursor),
        Mode::Help => draw_help(frame, body),
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

fn draw_header(app: &App, frame: &mut Frame, area: Rect) {
    let mut first = vec![Span::styled("pgkill top", bold())];
    if let Some(target) = &app.target {
        first.push(Span::raw(format!(" · {}", line(target))));
    }
    match &app.server {
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
            Line::from(vec![
                Span::styled(format!("active {}", c.active), style(app, Color::Green)),
                Span::raw(format!("  idle {}", c.idle)),
                Span::styled(
                    format!("  idle in transaction {}", c.idle_in_transaction),
                    style(app, Color::Yellow),
                ),
                Span::styled(
                    format!("  waiting on locks {}", c.waiting),
                    style(app, Color::Red),
                ),
                Span::raw(format!(
                    "  shown {}/{}",
                    app.visible().len(),
                    app.sessions.len() + app.pooled.len()
                )),
                Span::raw(
                    app.poolers
                        .iter()
                        .map(|p| format!("  · {}", line(p)))
                        .collect::<String>(),
                ),
            ])
        }
    };
    frame.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
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

fn session_cells(app: &App, s: &Session) -> Vec<Cell<'static>> {
    let mark = if app.selected.contains(&RowKey::Backend(s.pid)) {
        "*"
    } else {
        " "
    };
    let state = unknown(s.state.as_deref());
    let state_style = match state.as_str() {
        "active" => style(app, Color::Green),
        st if st.starts_with("idle in transaction") => style(app, Color::Yellow),
        _ => Style::default(),
    };
    let wait = line(&s.wait_text());
    // Behind a pooler: the application linked to the backend right now.
    let (application, client) = match &s.pooler {
        Some(link) => match &link.client {
            // `pgb:`: through PgBouncer (the header says which, and its pool mode).
            Some(c) => (
                unknown(c.application_name.as_deref()),
                line(&format!(
                    "pgb:{}",
                    c.addr.map_or_else(|| "local".to_owned(), |a| a.to_string())
                )),
            ),
            None => (
                unknown(s.application_name.as_deref()),
                "pgb:(pool)".to_owned(),
            ),
        },
        None => (
            unknown(s.application_name.as_deref()),
            line(&s.client_text()),
        ),
    };
    vec![
        Cell::from(mark),
        Cell::from(s.pid.to_string()),
        Cell::from(unknown(s.user.as_deref())),
        Cell::from(unknown(s.database.as_deref())),
        Cell::from(application),
        Cell::from(client),
        Cell::from(state).style(state_style),
        Cell::from(wait),
        Cell::from(age(s.xact_age())),
        Cell::from(age(s.query_age().or(s.state_age()))),
        Cell::from(line(s.visible_query().unwrap_or("?"))),
    ]
}

/// An application connection at a pooler holding no backend: no pid, no times; its
/// client is the application itself (`pgb:` says it is behind PgBouncer).
fn pooled_cells(app: &App, p: &pgkill_core::pooler::Pooled) -> Vec<Cell<'static>> {
    let mark = if app.selected.contains(&RowKey::of_pooled(p)) {
        "*"
    } else {
        " "
    };
    // As for a pooler backend's application: the port is in the details (Enter).
    let client = p
        .client
        .addr
        .map_or_else(|| "pgb:local".to_owned(), |a| format!("pgb:{a}"));
    vec![
        Cell::from(mark),
        Cell::from("-"),
        Cell::from(line(&p.client.user)),
        Cell::from(line(&p.database)),
        Cell::from(unknown(p.client.application_name.as_deref())),
        Cell::from(line(&client)),
        Cell::from(line(&format!("{} (pooled)", p.state))).style(style(app, Color::Cyan)),
        Cell::from(if p.state == "waiting" { "pooler" } else { "" }),
        Cell::from(""),
        Cell::from(""),
        Cell::from(line(&format!(
            "(no backend: {} pooling at {})",
            p.pool_mode, p.pooler
        ))),
    ]
}

fn draw_table(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.visible();
    let height = area.height.saturating_sub(1) as usize;
    // Keep the cursor on screen.
    let first = app.cursor.saturating_sub(height.saturating_sub(1));
    let body: Vec<Row> = rows
        .iter()
        .enumerate()
        .skip(first)
        .take(height)
        .map(|(i, s)| {
            let row = Row::new(match s {
                crate::app::Row::Backend(s) => session_cells(app, s),
                crate::app::Row::Pooled(p) => pooled_cells(app, p),
            });
            if i == app.cursor {
                row.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let sorted = |label: &str| {
        if label == app.sort.label() {
            format!("{label}{}", if app.descending { "▼" } else { "▲" })
        } else {
            label.to_owned()
        }
    };
    let header = Row::new(
        [
            "",
            "pid",
            "user",
            "database",
            "application",
            "client",
            "state",
            "wait",
            "xact",
            "query age",
            "query",
        ]
        .map(|h| Cell::from(sorted(h))),
    )
    .style(bold());
    let wide = area.width >= 120;
    let widths = [
        Constraint::Length(1),
        Constraint::Length(7),
        Constraint::Length(if wide { 14 } else { 9 }),
        Constraint::Length(if wide { 12 } else { 8 }),
        Constraint::Length(if wide { 16 } else { 0 }),
        Constraint::Length(if wide { 15 } else { 0 }),
        Constraint::Length(if wide { 19 } else { 10 }),
        Constraint::Length(if wide { 16 } else { 0 }),
        Constraint::Length(7),
        Constraint::Length(if wide { 9 } else { 6 }),
        Constraint::Min(10),
    ];
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        area,
    );
}

fn draw_detail(app: &App, frame: &mut Frame, area: Rect, pid: i32) {
    let Some(s) = app.session(pid) else {
        frame.render_widget(
            Paragraph::new(format!("session {pid} is gone")).block(Block::bordered()),
            area,
        );
        return;
    };
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into())
    };
    let waits: Vec<String> = app
        .waiting_for(pid)
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    let mut lines = vec![
        Line::from(format!(
            "pid {}  user {}  database {}  application {}",
            s.pid,
            unknown(s.user.as_deref()),
            unknown(s.database.as_deref()),
            unknown(s.application_name.as_deref())
        )),
        Line::from(format!(
            "state {}  wait {}  backend {}",
            unknown(s.state.as_deref()),
            match (&s.wait_event_type, &s.wait_event) {
                (Some(t), Some(e)) => line(&format!("{t}:{e}")),
                _ if s.state.is_none() => "?".into(),
                _ => "none".into(),
            },
            unknown(s.backend_type.as_deref())
        )),
        Line::from(format!(
            "connected {} ({})  transaction {}  query {}  state since {}",
            t(s.backend_start),
            age(s.backend_age()),
            t(s.xact_start),
            t(s.query_start),
            t(s.state_change)
        )),
        Line::from(format!(
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
        )),
        Line::from(""),
    ];
    // The full query, line by line as it was written.
    let query = s.visible_query().unwrap_or("(query not visible to you)");
    lines.extend(
        query
            .split('\n')
            .map(|l| Line::from(pgkill_core::printable(&l.replace('\t', "    ")).into_owned())),
    );
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(format!("session {pid} (Esc: back)"))),
        area,
    );
}

fn draw_blocking(app: &App, frame: &mut Frame, area: Rect, cursor: usize) {
    let roots = app.blocking_roots();
    let mut lines = Vec::new();
    if roots.is_empty() {
        lines.push(Line::from(
            "No session is waiting for a lock held by another.",
        ));
    }
    for (i, root) in roots.iter().enumerate() {
        let mark = if i == cursor { "> " } else { "  " };
        lines.push(Line::from(Span::styled(
            format!(
                "{mark}{} {} {} {} — blocks {}: {}",
                root.pid,
                unknown(root.user.as_deref()),
                unknown(root.state.as_deref()),
                age(root.xact_age()),
                root.blocking,
                line(root.visible_query().unwrap_or("?"))
            ),
            if i == cursor {
                Style::default().add_modifier(Modifier::REVERSED)
            } else {
                Style::default()
            },
        )));
        for w in app.waiting_for(root.pid) {
            lines.push(Line::from(format!(
                "    └─ {} {} waiting {} on {}",
                w.pid,
                unknown(w.user.as_deref()),
                age(w.state_age()),
                line(w.visible_query().unwrap_or("?"))
            )));
        }
    }
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered().title("blocking tree (k: terminate the selected root, Esc: back)"),
        ),
        area,
    );
}

const HELP: &[&str] = &[
    "q quit · ? help",
    "/ filter as you type: db:NAME user:ROLE app:GLOB client:CIDR|local state:STATE pid:N",
    "  idle:DUR xact:DUR query-age:DUR backend:DUR q:TEXT blocking blocking-for:DUR holding-xmin",
    "  exclude: -db:NAME -user:ROLE -app:GLOB -client:CIDR|local  (an exclusion always wins;",
    "  same kinds OR-ed, others AND-ed; holding-xmin: the sessions that are the xmin horizon)",
    "s / S sort column / order · ↑ ↓ move",
    "space select · a select all shown · Esc clear selection",
    "c cancel · k terminate (the selection, or the row under the cursor), after confirmation",
    "Enter details · b blocking tree · p pause · + / - refresh interval",
    "--pgbouncer: connections holding no backend are rows of their own (pid -), after the",
    "  backends; k ends an application where it is (its backend in session pooling, else",
    "  KILL_CLIENT at the pooler, PgBouncer 1.24+), as `pgkill kill --pgbouncer` does",
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
    let lines = vec![
        Line::from(format!(
            "application connection at PgBouncer {} at {} ({} pooling), holding no backend",
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

fn draw_help(frame: &mut Frame, area: Rect) {
    let lines: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title("keys (Esc: back)")),
        area,
    );
}

fn draw_status(app: &App, frame: &mut Frame, area: Rect) {
    let first = if let Mode::Filtering { .. } = app.mode {
        let mut spans = vec![
            Span::styled("filter: ", bold()),
            Span::raw(line(&app.filter_text)),
            Span::raw("█"),
        ];
        if app.filter_error.is_some() {
            spans.push(Span::styled(
                "  (not understood yet: showing the last valid filter)",
                style(app, Color::Red),
            ));
        }
        Line::from(spans)
    } else if let Some(e) = &app.filter_error {
        Line::from(Span::styled(
            format!(
                "filter not understood: {} — showing the last valid filter ({})",
                line(e),
                if app.applied_filter.is_empty() {
                    "none: every session".to_owned()
                } else {
                    line(&app.applied_filter)
                }
            ),
            style(app, Color::Red),
        ))
    } else if let Some(note) = &app.note {
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
            .map(|o| format!("{} {}", o.pid, o.outcome.as_str()))
            .chain(app.app_outcomes.iter().map(|o| {
                format!(
                    "{} {} at the pooler",
                    line(&app_name(&o.client)),
                    o.outcome.as_str()
                )
            }))
            .collect();
        Line::from(format!("last action: {}", parts.join(", ")))
    } else if !app.filter_text.is_empty() {
        Line::from(format!("filter: {}", line(&app.filter_text)))
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
    frame.render_widget(Paragraph::new(vec![first, keys]), area);
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
    let apps_refused: Vec<_> = decision
        .at_pooler
        .iter()
        .filter(|t| t.refused.is_some())
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
    let describe_app = |t: &pgkill_core::pooler::AppTarget| {
        format!(
            "{} {} {} ({} pooling)",
            line(&app_name(&t.client)),
            line(&t.client.user),
            line(&t.database),
            line(&t.pool_mode)
        )
    };
    for t in plan.to_signal().take(room) {
        lines.push(Line::from(describe(&t.session)));
    }
    let ending: Vec<_> = decision
        .at_pooler
        .iter()
        .filter(|t| t.refused.is_none())
        .collect();
    if !ending.is_empty() {
        lines.push(Line::from(
            "ended at the pooler (KILL_CLIENT), verified gone there:",
        ));
        for t in ending
            .iter()
            .take(room.saturating_sub(plan.to_signal().count()).max(2))
        {
            lines.push(Line::from(format!("  {}", describe_app(t))));
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
        for t in refused.iter().take(room.saturating_sub(go).max(2)) {
            lines.push(Line::from(format!(
                "{} {}: {}",
                t.session.pid,
                unknown(t.session.user.as_deref()),
                line(t.refused.as_deref().unwrap_or_default())
            )));
        }
        // The reasons at a pooler are long (what would work instead): wrapped, indented.
        let inner = area.width.saturating_sub(8).min(96) as usize;
        for t in apps_refused.iter().take(room.saturating_sub(go).max(2)) {
            lines.push(Line::from(format!("{}:", describe_app(t))));
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
            .filter(|t| app.pooler_superusers.contains(&t.client.user))
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
        "y: yes   n / Esc: no"
    }));
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
            let word = if ["blocking", "holding-xmin"].contains(&key) {
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
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| view(app, f)).unwrap();
        terminal.backend().to_string()
    }

    fn both(name: &str, app: &App) {
        insta::assert_snapshot!(format!("{name}_80x24"), render(app, 80, 24));
        insta::assert_snapshot!(format!("{name}_160x48"), render(app, 160, 48));
    }

    #[test]
    fn default_view() {
        both("default", &loaded());
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
        let screen = render(&app, 160, 48);
        assert!(screen.contains("Terminate 5 session(s)?"), "{screen}");
        assert!(screen.contains("1 will NOT be signalled"), "{screen}");
        assert!(
            screen.contains("! includes the 1 protected superuser"),
            "{screen}"
        );
        keys_for_tests(&mut app, "!");
        let screen = render(&app, 160, 48);
        assert!(screen.contains("Terminate 6 session(s)?"), "{screen}");
        assert!(screen.contains("including superuser sessions"), "{screen}");
        assert!(!render(&app, 160, 48).contains("SUPERUSERS INCLUDED"));
        app.include_superusers = true;
        assert!(render(&app, 160, 48).contains("SUPERUSERS INCLUDED"));
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
        let mut screens = vec![render(&app, 160, 48)];
        update(&mut app, Event::Key(Key::Enter));
        screens.push(render(&app, 160, 48));
        update(&mut app, Event::Key(Key::Esc));
        keys_for_tests(&mut app, "b");
        screens.push(render(&app, 160, 48));
        update(&mut app, Event::Key(Key::Esc));
        keys_for_tests(&mut app, " k");
        screens.push(render(&app, 160, 48));
        update(&mut app, Event::Key(Key::Esc));
        update(
            &mut app,
            Event::Snapshot(Err(format!("role {hostile} is gone"))),
        );
        screens.push(render(&app, 160, 48));
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
}

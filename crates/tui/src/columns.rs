//! Which columns the session table shows at a given width, and how wide each is.
//!
//! pid, user, database and state come first, always; the query takes what is left, and
//! the other columns join (in order of use) only while the query keeps a fair share of
//! the width. Every column is at least as wide as its header, so headers never run into
//! each other. The update function uses the same layout, so that `s` cycles only
//! through the columns on screen.

/// A column of the session table (each one can be sorted on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    /// The server the row is on (shown only with several targets).
    Target,
    /// Process id.
    Pid,
    /// Role.
    User,
    /// Database.
    Database,
    /// `state` (aborted transactions told apart).
    State,
    /// Time in the current state (for an active session, the running statement's age).
    StateAge,
    /// What it waits for (empty unless it waits on something else than the client).
    Wait,
    /// Transaction age.
    Xact,
    /// The sessions it waits for.
    BlockedBy,
    /// `application_name`.
    Application,
    /// Client address.
    Client,
    /// Transaction ids behind the current one of the session's snapshot or xid.
    XminAge,
    /// `backend_type`.
    BackendType,
    /// The query text.
    Query,
}

/// Every column, in screen order.
pub const ALL: [Column; 14] = [
    Column::Target,
    Column::Pid,
    Column::User,
    Column::Database,
    Column::State,
    Column::StateAge,
    Column::Wait,
    Column::Xact,
    Column::BlockedBy,
    Column::Application,
    Column::Client,
    Column::XminAge,
    Column::BackendType,
    Column::Query,
];

impl Column {
    /// Whether the column can be hidden (`--columns`, `C`): all but pid and the query.
    pub fn hideable(self) -> bool {
        !matches!(self, Column::Pid | Column::Query)
    }

    /// The name `--columns` takes: the header with `-` for spaces (`blocked-by`).
    pub fn name(self) -> String {
        self.label().replace(' ', "-")
    }

    /// The columns to hide for `--columns LIST` (comma-separated names; pid and the
    /// query are always shown).
    pub fn hidden_by(list: &str) -> Result<Vec<Column>, String> {
        let mut shown = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let c = ALL.into_iter().find(|c| c.name() == word).ok_or_else(|| {
                let names: Vec<String> = ALL.iter().map(|c| c.name()).collect();
                format!("unknown column {word:?}: use {}", names.join(", "))
            })?;
            shown.push(c);
        }
        if shown.is_empty() {
            return Err(
                "no column named: use a comma-separated list such as pid,user,state,query".into(),
            );
        }
        Ok(ALL
            .into_iter()
            .filter(|c| c.hideable() && !shown.contains(c))
            .collect())
    }

    /// The header.
    pub fn label(self) -> &'static str {
        match self {
            Column::Target => "target",
            Column::Pid => "pid",
            Column::User => "user",
            Column::Database => "database",
            Column::State => "state",
            Column::StateAge => "in state",
            Column::Wait => "wait",
            Column::Xact => "xact",
            Column::BlockedBy => "blocked by",
            Column::Application => "application",
            Column::Client => "client",
            Column::XminAge => "xmin age",
            Column::BackendType => "backend type",
            Column::Query => "query",
        }
    }
}

/// The columns shown at `width` terminal columns, in screen order, each with its width
/// (the query's is what is left). One column of spacing separates them, and one column
/// before the first is the selection mark. `hidden` columns are left out (their width
/// goes to the query). With several targets, `target` is the longest target name (in
/// characters): the target column comes first (unless hidden), as wide as that name up
/// to [`target_cap`] and never narrower than its header; with one server (`None`) it is
/// never shown.
pub fn layout(width: u16, hidden: &[Column], target: Option<usize>) -> Vec<(Column, u16)> {
    let w = usize::from(width);
    let (user, database, state) = match w {
        0..=99 => (9, 9, 10),
        100..=159 => (10, 10, 20),
        _ => (14, 14, 20),
    };
    let mut shown = Vec::new();
    if let Some(longest) = target {
        let header = Column::Target.label().len();
        shown.push((Column::Target, longest.clamp(header, target_cap(width))));
    }
    shown.extend([
        (Column::Pid, 7),
        (Column::User, user),
        (Column::Database, database),
        (Column::State, state),
    ]);
    shown.retain(|(c, _)| !hidden.contains(c));
    // Selection mark and the spaces between columns.
    let used = |cols: &[(Column, usize)]| 2 + cols.iter().map(|(_, w)| w + 1).sum::<usize>();
    let query_floor = (w * 3 / 10).max(24);
    let optional = [
        (Column::StateAge, 8),
        (Column::Wait, if w >= 160 { 17 } else { 13 }),
        (Column::Xact, 7),
        (Column::BlockedBy, 10),
        (Column::Application, if w >= 180 { 16 } else { 12 }),
        (Column::Client, 15),
        (Column::XminAge, 8),
        (Column::BackendType, 14),
    ];
    for col in optional.into_iter().filter(|(c, _)| !hidden.contains(c)) {
        let mut with = shown.clone();
        with.push(col);
        if w.saturating_sub(used(&with)) >= query_floor {
            shown = with;
        }
    }
    // Screen order: the optional columns in a fixed order after state.
    shown.sort_by_key(|(c, _)| *c);
    let query = w.saturating_sub(used(&shown)).max(5);
    shown.push((Column::Query, query));
    shown
        .into_iter()
        .map(|(c, w)| (c, u16::try_from(w).unwrap_or(u16::MAX)))
        .collect()
}

/// The widest the target column gets on a screen `width` wide: a fifth of it, between
/// 14 and 32 columns (a longer name is cut with `…`; the details name it whole).
pub fn target_cap(width: u16) -> usize {
    (usize::from(width) / 5).clamp(14, 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_takes_what_is_left_and_headers_fit() {
        for width in [40u16, 60, 80, 100, 120, 160, 200, 300] {
            let cols = layout(width, &[], None);
            let names: Vec<Column> = cols.iter().map(|(c, _)| *c).collect();
            assert_eq!(
                &names[..4],
                [Column::Pid, Column::User, Column::Database, Column::State],
                "{width}"
            );
            assert_eq!(names.last(), Some(&Column::Query));
            for (c, w) in &cols {
                assert!(usize::from(*w) >= c.label().len(), "{width}: {c:?} {w}");
            }
            let total: u16 = 1 + cols.iter().map(|(_, w)| w + 1).sum::<u16>();
            assert!(total <= width.max(46), "{width}: {total}");
        }
        let query = |w: u16| layout(w, &[], None).last().map(|(_, q)| *q).unwrap_or(0);
        assert!(query(120) >= 36, "{}", query(120));
        assert!(query(80) >= 24);
        assert!(layout(200, &[], None).len() > layout(120, &[], None).len());
        assert!(layout(120, &[], None).len() > layout(80, &[], None).len());
        let wide: Vec<Column> = layout(300, &[], None).into_iter().map(|(c, _)| c).collect();
        assert!(wide.contains(&Column::XminAge) && wide.contains(&Column::BackendType));
    }

    #[test]
    fn columns_option_names_what_is_shown() {
        let hidden = Column::hidden_by("pid,user,blocked-by,query").unwrap();
        assert!(hidden.contains(&Column::Database) && hidden.contains(&Column::State));
        assert!(!hidden.contains(&Column::BlockedBy) && !hidden.contains(&Column::Pid));
        let names: Vec<Column> = layout(200, &hidden, None)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(
            names,
            [Column::Pid, Column::User, Column::BlockedBy, Column::Query]
        );
        // pid and the query are always there.
        assert!(Column::hidden_by("user")
            .unwrap()
            .iter()
            .all(|c| c.hideable()));
        for bad in ["", ",", "pid,bogus", "blocked by"] {
            let e = Column::hidden_by(bad).unwrap_err();
            assert!(e.contains("pid") && e.contains("query"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_target_column_follows_the_longest_name_up_to_a_cap() {
        let target = |width: u16, longest: usize| {
            layout(width, &[], Some(longest))
                .into_iter()
                .find(|(c, _)| *c == Column::Target)
                .map(|(_, w)| usize::from(w))
        };
        // Never narrower than its header, as wide as the longest name...
        assert_eq!(target(120, 2), Some(6));
        assert_eq!(target(120, 17), Some(17));
        assert_eq!(target(80, 15), Some(15));
        // ...up to a fifth of the screen (at least 14, at most 32).
        assert_eq!(target(80, 40), Some(16));
        assert_eq!(target(120, 40), Some(24));
        assert_eq!(target(300, 40), Some(32));
        assert_eq!(target(40, 40), Some(14));
        // The other headers keep their room: every column at least as wide as its header.
        for width in [80u16, 120, 200] {
            for longest in [1, 14, 20, 40, 100] {
                let cols = layout(width, &[], Some(longest));
                assert_eq!(cols[0].0, Column::Target);
                for (c, w) in &cols {
                    assert!(
                        usize::from(*w) >= c.label().len(),
                        "{width} {longest}: {c:?}"
                    );
                }
                let total: u16 = 1 + cols.iter().map(|(_, w)| w + 1).sum::<u16>();
                assert!(total <= width, "{width} {longest}: {total}");
            }
        }
    }
}

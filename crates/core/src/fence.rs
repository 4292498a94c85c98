//! The fence record: what pgkill must put back when it lets clients into a database again.
//!
//! It lives on the server, with the database it describes, as the database's comment
//! (`COMMENT ON DATABASE … IS 'pgkill fence: {json}'`), written in the same transaction as
//! `ALLOW_CONNECTIONS false`. So there is exactly one record per database by construction:
//! it follows the database's OID through a rename, goes away with a `DROP`, is replicated to
//! standbys, and every pgkill on any machine sees it (a colleague's `unfence` included).
//! The database's own comment is kept in the record and put back with the settings.
//!
//! Why the comment and not a database-level setting (`ALTER DATABASE … SET pgkill.fence`):
//! only superusers may set a placeholder parameter that way (checked on 10, 15 and 18:
//! "permission denied to set parameter"), and a database's owner may fence it too. A
//! comment is writable by exactly the roles that may fence (the owner and superusers), and
//! what a record restores (`ALLOW_CONNECTIONS`, `IS_TEMPLATE`, the comment) is what those
//! roles may change anyway, so a forged record gives nobody anything.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::database::{DbInfo, DbSettings, Operation};
use crate::quote::{quote_ident, quote_literal, QuoteError};

/// What a fence record's comment starts with.
pub const COMMENT_PREFIX: &str = "pgkill fence: ";

/// Where a fence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceState {
    /// An operation is under way (if its pgkill is gone, it died mid-way).
    InProgress,
    /// A finished `drain` left the database fenced on purpose, until `pgkill unfence`.
    Held,
}

/// Who holds a fence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The machine pgkill ran on (its host name).
    pub host: String,
    /// The pgkill process.
    pub pid: u32,
    /// The OS user it ran as.
    pub os_user: String,
    /// The database role it connected as.
    pub role: String,
}

/// The record of a fence (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// The database's name when it was first fenced.
    pub name: String,
    /// Its settings before the first fence: what `unfence` restores.
    pub original: DbSettings,
    /// Its comment before the first fence.
    pub original_comment: Option<String>,
    /// What pgkill set (`ALLOW_CONNECTIONS false`, maybe `IS_TEMPLATE false`).
    pub fenced: DbSettings,
    /// The operation that holds (or last held) the fence.
    pub operation: Operation,
    /// Whether that operation is under way or finished and left the fence up.
    pub state: FenceState,
    /// Who holds it.
    pub by: Holder,
    /// When the database was first fenced.
    pub since: DateTime<Utc>,
    /// When `operation` took the fence.
    pub at: DateTime<Utc>,
    /// PgBouncer aliases of the database that pgkill paused (`drain --pgbouncer`): what
    /// `unfence` resumes. Written before the first `PAUSE`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub poolers: Vec<PoolerFence>,
}

/// The aliases of the database pgkill paused at one PgBouncer, and where that pooler's
/// admin console is (no password: `unfence` finds it as libpq would).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolerFence {
    /// The console's host (a name, an address or a Unix-socket directory).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The admin user.
    pub user: String,
    /// The console's database (`pgbouncer`).
    pub dbname: String,
    /// The aliases paused.
    pub aliases: Vec<String>,
    /// Whether they were also disabled and their connections killed (`drop`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// A comment that says it is a fence record but cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable pgkill fence record: {0}")]
pub struct UnreadableRecord(pub String);

impl FenceRecord {
    /// The record as the database's comment.
    pub fn to_comment(&self) -> String {
        // Serializing plain data to a string cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        format!("{COMMENT_PREFIX}{json}")
    }

    /// Reads a database's comment: `None` when it is not a fence record.
    pub fn from_comment(comment: &str) -> Option<Result<FenceRecord, UnreadableRecord>> {
        let json = comment.strip_prefix(COMMENT_PREFIX)?;
        Some(serde_json::from_str(json).map_err(|e| UnreadableRecord(e.to_string())))
    }

    /// The record for `operation` taking the fence of `info` at `now`: a database that is
    /// already fenced (`prior`) keeps the settings, comment and time of its first fence.
    pub fn take(
        info: &DbInfo,
        prior: Option<&FenceRecord>,
        fenced: DbSettings,
        operation: Operation,
        by: Holder,
        now: DateTime<Utc>,
    ) -> FenceRecord {
        match prior {
            Some(p) => FenceRecord {
                fenced,
                operation,
                state: FenceState::InProgress,
                by,
                at: now,
                ..p.clone()
            },
            None => FenceRecord {
                name: info.name.clone(),
                original: info.settings.clone(),
                original_comment: info.comment.clone(),
                fenced,
                operation,
                state: FenceState::InProgress,
                by,
                since: now,
                at: now,
                poolers: Vec::new(),
            },
        }
    }
}

/// The one transaction that fences database `name` (a multi-statement simple query runs
/// as one transaction): the record, then the settings from `from` to `record.fenced`.
pub fn fence_statements(
    name: &str,
    from: &DbSettings,
    record: &FenceRecord,
) -> Result<String, QuoteError> {
    let db = quote_ident(name)?;
    let mut sql = vec![format!(
        "COMMENT ON DATABASE {db} IS {}",
        quote_literal(&record.to_comment())?
    )];
    if from.is_template != record.fenced.is_template {
        sql.push(format!(
            "ALTER DATABASE {db} IS_TEMPLATE {}",
            record.fenced.is_template
        ));
    }
    if from.allow_connections != record.fenced.allow_connections {
        sql.push(format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS {}",
            record.fenced.allow_connections
        ));
    }
    Ok(sql.join(";\n"))
}

/// Replaces database `name`'s record (e.g. a finished drain marks it held).
pub fn record_statement(name: &str, record: &FenceRecord) -> Result<String, QuoteError> {
    Ok(format!(
        "COMMENT ON DATABASE {} IS {}",
        quote_ident(name)?,
        quote_literal(&record.to_comment())?
    ))
}

/// What restoring a fence does, decided from the database's current state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// The database no longer exists (it was dropped): nothing to restore.
    pub gone: bool,
    /// Set `ALLOW_CONNECTIONS` to this.
    pub allow_connections: Option<bool>,
    /// Set `IS_TEMPLATE` to this.
    pub is_template: Option<bool>,
    /// Put this comment back (`Some(None)`: no comment); `None`: leave the comment.
    pub comment: Option<Option<String>>,
    /// Changes someone else made since the fence, left as they are.
    pub foreign_changes: Vec<String>,
}

impl RestorePlan {
    /// Whether no setting changes (the record may still be removed).
    pub fn is_noop(&self) -> bool {
        self.allow_connections.is_none() && self.is_template.is_none()
    }
}

/// Decides how to restore `record` given the database's `current` state: each setting
/// pgkill changed goes back to its original value only if it still has the value pgkill
/// set; a setting someone else changed since is left alone and reported. The record (the
/// comment) is replaced by the original comment if it is still a pgkill record.
pub fn restore_plan(record: &FenceRecord, current: Option<&DbInfo>) -> RestorePlan {
    let Some(info) = current else {
        return RestorePlan {
            gone: true,
            ..RestorePlan::default()
        };
    };
    let now = &info.settings;
    let mut plan = RestorePlan::default();
    let mut field = |label: &str, original: bool, fenced: bool, now: bool| -> Option<bool> {
        if original == fenced || now == original {
            None
        } else if now == fenced {
            Some(original)
        } else {
            plan.foreign_changes
                .push(format!("{label} was changed by someone else"));
            None
        }
    };
    let allow = field(
        "ALLOW_CONNECTIONS",
        record.original.allow_connections,
        record.fenced.allow_connections,
        now.allow_connections,
    );
    let template = field(
        "IS_TEMPLATE",
        record.original.is_template,
        record.fenced.is_template,
        now.is_template,
    );
    plan.allow_connections = allow;
    plan.is_template = template;
    if now.connection_limit != record.original.connection_limit {
        plan.foreign_changes.push(format!(
            "connection limit is {} (was {} when fenced)",
            now.connection_limit, record.original.connection_limit
        ));
    }
    if now.acl != record.original.acl {
        plan.foreign_changes.push(format!(
            "privileges are {:?} (were {:?} when fenced)",
            now.acl, record.original.acl
        ));
    }
    let is_record = info
        .comment
        .as_deref()
        .is_some_and(|c| c.starts_with(COMMENT_PREFIX));
    if is_record {
        plan.comment = Some(record.original_comment.clone());
    } else {
        plan.foreign_changes
            .push("the comment was changed by someone else".into());
    }
    plan
}

/// The one transaction that carries out `plan` on database `name`.
pub fn restore_statements(name: &str, plan: &RestorePlan) -> Result<Option<String>, QuoteError> {
    let db = quote_ident(name)?;
    let mut sql = Vec::new();
    if let Some(template) = plan.is_template {
        sql.push(format!("ALTER DATABASE {db} IS_TEMPLATE {template}"));
    }
    if let Some(allow) = plan.allow_connections {
        sql.push(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {allow}"));
    }
    if let Some(comment) = &plan.comment {
        sql.push(format!(
            "COMMENT ON DATABASE {db} IS {}",
            match comment {
                Some(c) => quote_literal(c)?,
                None => "NULL".into(),
            }
        ));
    }
    Ok((!sql.is_empty()).then(|| sql.join(";\n")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::tests::settings;

    fn info(allow: bool, comment: Option<&str>) -> DbInfo {
        DbInfo {
            oid: 1,
            name: "shop".into(),
            owner: "o".into(),
            settings: settings(allow),
            comment: comment.map(str::to_owned),
        }
    }

    fn holder(pid: u32) -> Holder {
        Holder {
            host: "h".into(),
            pid,
            os_user: "u".into(),
            role: "r".into(),
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }

    fn record() -> FenceRecord {
        FenceRecord::take(
            &info(true, Some("the shop's data")),
            None,
            settings(false),
            Operation::Drain,
            holder(1),
            at(0),
        )
    }

    #[test]
    fn a_record_survives_its_comment_and_other_comments_are_not_records() {
        let mut r = record();
        r.name = "it's a \"name\" \\ with\nnewline \u{1b}]0;x".into();
        let c = r.to_comment();
        assert!(c.starts_with(COMMENT_PREFIX));
        assert_eq!(FenceRecord::from_comment(&c), Some(Ok(r)));
        assert_eq!(FenceRecord::from_comment("the shop's data"), None);
        assert!(matches!(
            FenceRecord::from_comment("pgkill fence: {not json"),
            Some(Err(_))
        ));
    }

    #[test]
    fn pooler_aliases_are_part_of_the_record_and_older_records_still_read() {
        let mut r = record();
        let plain = r.to_comment();
        assert!(!plain.contains("poolers"), "{plain}");
        assert_eq!(FenceRecord::from_comment(&plain), Some(Ok(r.clone())));
        r.poolers.push(PoolerFence {
            host: "127.0.0.1".into(),
            port: 6432,
            user: "admin".into(),
            dbname: "pgbouncer".into(),
            aliases: vec!["shop".into(), "shop_ro".into()],
            disabled: false,
        });
        assert_eq!(FenceRecord::from_comment(&r.to_comment()), Some(Ok(r)));
    }

    #[test]
    fn a_second_fence_keeps_the_first_ones_original_settings() {
        let first = record();
        let fenced_now = info(false, Some(&first.to_comment()));
        let second = FenceRecord::take(
            &fenced_now,
            Some(&first),
            settings(false),
            Operation::Rename,
            holder(2),
            at(60),
        );
        assert_eq!(second.original, settings(true));
        assert_eq!(second.original_comment.as_deref(), Some("the shop's data"));
        assert_eq!((second.since, second.at), (at(0), at(60)));
        assert_eq!((second.operation, second.by.pid), (Operation::Rename, 2));
    }

    #[test]
    fn restore_decisions() {
        let r = record();
        let ours = Some(r.to_comment());
        let fenced = |allow, comment: &Option<String>| DbInfo {
            comment: comment.clone(),
            ..info(allow, None)
        };
        assert!(restore_plan(&r, None).gone);
        let p = restore_plan(&r, Some(&fenced(false, &ours)));
        assert_eq!(p.allow_connections, Some(true));
        assert_eq!(p.comment, Some(Some("the shop's data".into())));
        assert!(p.foreign_changes.is_empty() && p.is_template.is_none());
        assert!(
            restore_plan(&r, Some(&fenced(true, &ours))).is_noop(),
            "already restored"
        );
        let mut limited = fenced(false, &ours);
        limited.settings.connection_limit = 5;
        let p = restore_plan(&r, Some(&limited));
        assert_eq!(p.allow_connections, Some(true));
        assert!(
            p.foreign_changes[0].contains("connection limit is 5"),
            "{p:?}"
        );
        // A comment someone wrote over the record is theirs to keep.
        let p = restore_plan(&r, Some(&fenced(false, &Some("mine".into()))));
        assert_eq!(p.comment, None);
        assert!(p.foreign_changes[0].contains("comment"), "{p:?}");
        // The template flag pgkill cleared goes back.
        let mut r2 = record();
        r2.original.is_template = true;
        let p = restore_plan(&r2, Some(&fenced(false, &ours)));
        assert_eq!(
            (p.allow_connections, p.is_template),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn statements_are_one_transaction_with_quoted_names() {
        let r = record();
        let sql = fence_statements("a\"b", &settings(true), &r).unwrap();
        let lines: Vec<&str> = sql.lines().collect();
        assert!(lines[0].starts_with("COMMENT ON DATABASE \"a\"\"b\" IS 'pgkill fence: {"));
        assert_eq!(
            lines.last().copied(),
            Some("ALTER DATABASE \"a\"\"b\" ALLOW_CONNECTIONS false")
        );
        let plan = restore_plan(&r, Some(&info(false, Some(&r.to_comment()))));
        assert_eq!(
            restore_statements("x", &plan).unwrap().as_deref(),
            Some("ALTER DATABASE \"x\" ALLOW_CONNECTIONS true;\nCOMMENT ON DATABASE \"x\" IS 'the shop''s data'")
        );
        assert_eq!(restore_statements("x", &RestorePlan::default()), Ok(None));
        assert!(fence_statements("a\0b", &settings(true), &r).is_err());
        for sql in [sql, record_statement("x", &r).unwrap()] {
            assert!(crate::sql::unqualified_calls(&sql).is_empty(), "{sql}");
        }
    }
}

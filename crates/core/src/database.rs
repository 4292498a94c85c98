//! Database operations as plain data: what a database's connection settings are, what
//! keeps it busy, the fence record pgkill keeps while it has a database fenced, and the
//! SQL for each step (the statements that take a database name quote it through
//! [`quote_ident`]; everything else is bound).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::planner::{Param, Query};
use crate::quote::{quote_ident, QuoteError};
use crate::version::ServerVersion;

/// A database's connection settings, recorded before pgkill changes anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSettings {
    /// `datallowconn`.
    pub allow_connections: bool,
    /// `datconnlimit` (-1 unlimited; -2 marks an invalid database on 15.x+/backpatched).
    pub connection_limit: i32,
    /// `datacl` as text (`None` = default privileges).
    pub acl: Option<Vec<String>>,
    /// `datistemplate`.
    pub is_template: bool,
}

/// A database as pgkill sees it before acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbInfo {
    /// OID (stable across a rename).
    pub oid: u32,
    /// Name.
    pub name: String,
    /// Owner role.
    pub owner: String,
    /// Connection settings.
    pub settings: DbSettings,
}

impl DbInfo {
    /// An interrupted `DROP DATABASE` leaves `datconnlimit = -2`: only DROP works on it.
    pub fn is_invalid(&self) -> bool {
        self.settings.connection_limit == -2
    }
}

/// A prepared transaction of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreparedXact {
    /// Global transaction id.
    pub gid: String,
    /// Owner role.
    pub owner: String,
    /// When it was prepared.
    pub prepared: DateTime<Utc>,
}

/// A logical replication slot of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// Slot name.
    pub name: String,
    /// Whether a walsender is using it.
    pub active: bool,
    /// That walsender's pid.
    pub active_pid: Option<i32>,
}

/// What stands in the way of dropping or renaming a database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Blockers {
    /// Prepared transactions (survive terminating sessions; block DROP and RENAME).
    pub prepared: Vec<PreparedXact>,
    /// Logical replication slots.
    pub slots: Vec<Slot>,
    /// Subscriptions (names), `None` when the caller may not read them.
    pub subscriptions: Option<Vec<String>>,
}

/// Options that resolve blockers deliberately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resolve {
    /// `--rollback-prepared`: roll back the database's prepared transactions (data loss).
    pub rollback_prepared: bool,
    /// `--terminate-walsenders`: terminate walsenders using the database's slots.
    pub terminate_walsenders: bool,
    /// `--allow-template`: clear the template flag first.
    pub allow_template: bool,
}

/// Why an operation is refused before anything is changed.
pub fn refusals(
    op: Operation,
    info: &DbInfo,
    blockers: &Blockers,
    resolve: Resolve,
    connected_db: &str,
) -> Vec<String> {
    let mut why = Vec::new();
    let name = &info.name;
    if connected_db == name {
        why.push(format!(
            "pgkill is connected to {name} itself: use --maintenance-db to connect to another database (e.g. postgres)"
        ));
    }
    if info.settings.is_template && !resolve.allow_template && op != Operation::Drain {
        why.push(format!(
            "{name} is a template database: pass --allow-template to clear the flag first"
        ));
    }
    if info.is_invalid() && op != Operation::Drop {
        why.push(format!("{name} is invalid (an interrupted DROP DATABASE): the only thing left to do is `pgkill drop {name}`"));
    }
    if op != Operation::Drain {
        if !blockers.prepared.is_empty() && !resolve.rollback_prepared {
            let gids: Vec<String> = blockers
                .prepared
                .iter()
                .map(|p| format!("{:?} (owner {}, prepared {})", p.gid, p.owner, p.prepared))
                .collect();
            why.push(format!(
                "{} prepared transaction(s) in {name} survive any termination: {}. COMMIT PREPARED or ROLLBACK PREPARED them from inside {name}, or pass --rollback-prepared (their changes are lost)",
                gids.len(),
                gids.join(", ")
            ));
        }
        let active: Vec<&Slot> = blockers.slots.iter().filter(|s| s.active).collect();
        if !active.is_empty() && !resolve.terminate_walsenders {
            let names: Vec<String> = active
                .iter()
                .map(|s| {
                    format!(
                        "{} (walsender pid {})",
                        s.name,
                        s.active_pid
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "?".into())
                    )
                })
                .collect();
            why.push(format!(
                "logical replication slot(s) of {name} are in use: {}. Stop the consumer, or pass --terminate-walsenders",
                names.join(", ")
            ));
        }
        if let Some(subs) = &blockers.subscriptions {
            if !subs.is_empty() {
                why.push(format!(
                    "{name} has subscription(s) {}: from inside {name} run ALTER SUBSCRIPTION … DISABLE, ALTER SUBSCRIPTION … SET (slot_name = NONE) and DROP SUBSCRIPTION first",
                    subs.join(", ")
                ));
            }
        }
    }
    why
}

/// The database operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// `pgkill drop`.
    Drop,
    /// `pgkill rename`.
    Rename,
    /// `pgkill drain`.
    Drain,
}

/// The durable record of a fence, written (and fsynced) before the database is changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceRecord {
    /// Which server: `host:port` as pgkill connected.
    pub server: String,
    /// The server's `system_identifier`, when the caller may read it.
    pub system_identifier: Option<String>,
    /// Database OID (survives a rename).
    pub oid: u32,
    /// Database name when fenced.
    pub name: String,
    /// What the database's settings were.
    pub original: DbSettings,
    /// What pgkill set (`ALLOW_CONNECTIONS false`).
    pub fenced: DbSettings,
    /// The operation in progress.
    pub operation: Operation,
    /// The pgkill process holding the fence.
    pub pid: u32,
    /// When it was fenced.
    pub at: DateTime<Utc>,
}

/// What restoring a fence does, decided from the database's current settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePlan {
    /// The database no longer exists (it was dropped): nothing to restore.
    pub gone: bool,
    /// Set `ALLOW_CONNECTIONS` to this.
    pub allow_connections: Option<bool>,
    /// Set `IS_TEMPLATE` to this.
    pub is_template: Option<bool>,
    /// Changes someone else made since the fence, left as they are.
    pub foreign_changes: Vec<String>,
}

impl RestorePlan {
    /// Whether there is nothing to change.
    pub fn is_noop(&self) -> bool {
        self.allow_connections.is_none() && self.is_template.is_none()
    }
}

/// Decides how to restore `record` given the database's `current` settings: each setting
/// pgkill changed goes back to its original value only if it still has the value pgkill
/// set; a setting someone else changed since is left alone and reported.
pub fn restore_plan(record: &FenceRecord, current: Option<&DbSettings>) -> RestorePlan {
    let Some(now) = current else {
        return RestorePlan {
            gone: true,
            ..RestorePlan::default()
        };
    };
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
    plan
}

/// Reads a database's settings by name.
pub fn db_info(name: &str) -> Query {
    Query {
        sql: "SELECT d.oid::int8 AS oid, d.datname::text AS name, pg_get_userbyid(d.datdba)::text AS owner,
       d.datallowconn, d.datconnlimit, d.datacl::text[] AS acl, d.datistemplate
FROM pg_database d WHERE d.datname = $1"
            .into(),
        params: vec![Param::Text(name.to_owned())],
    }
}

/// Reads a database's settings by OID (for restoring after a rename).
pub fn db_info_by_oid(oid: u32) -> Query {
    Query {
        sql: "SELECT d.oid::int8 AS oid, d.datname::text AS name, pg_get_userbyid(d.datdba)::text AS owner,
       d.datallowconn, d.datconnlimit, d.datacl::text[] AS acl, d.datistemplate
FROM pg_database d WHERE d.oid = $1::int8::oid"
            .into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// The database's prepared transactions and logical slots.
pub fn blockers(name: &str) -> (Query, Query) {
    (
        Query {
            sql: "SELECT gid, owner::text, prepared FROM pg_prepared_xacts WHERE database = $1 ORDER BY prepared".into(),
            params: vec![Param::Text(name.to_owned())],
        },
        Query {
            sql: "SELECT slot_name::text, active, active_pid FROM pg_replication_slots
WHERE database = $1 AND slot_type = 'logical' ORDER BY slot_name"
                .into(),
            params: vec![Param::Text(name.to_owned())],
        },
    )
}

/// Subscriptions of the database (readable by superusers).
pub fn subscriptions(oid: u32) -> Query {
    Query {
        sql: "SELECT subname::text FROM pg_subscription WHERE subdbid = $1::int8::oid ORDER BY subname".into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// `ALTER DATABASE … ALLOW_CONNECTIONS …` (utility statements take no parameters).
pub fn set_allow_connections(name: &str, allow: bool) -> Result<String, QuoteError> {
    Ok(format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS {allow}",
        quote_ident(name)?
    ))
}

/// `ALTER DATABASE … IS_TEMPLATE false`.
pub fn clear_template(name: &str) -> Result<String, QuoteError> {
    Ok(format!(
        "ALTER DATABASE {} IS_TEMPLATE false",
        quote_ident(name)?
    ))
}

/// `DROP DATABASE`, with `FORCE` where the server has it (13+).
pub fn drop_database(v: ServerVersion, name: &str) -> Result<String, QuoteError> {
    let name = quote_ident(name)?;
    Ok(if v.major >= 13 {
        format!("DROP DATABASE {name} WITH (FORCE)")
    } else {
        format!("DROP DATABASE {name}")
    })
}

/// `ALTER DATABASE … RENAME TO …`.
pub fn rename_database(old: &str, new: &str) -> Result<String, QuoteError> {
    Ok(format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(old)?,
        quote_ident(new)?
    ))
}

/// Terminates every session of database `oid` except pgkill's own; returns how many
/// were signalled and how many of those were inside a transaction.
pub fn terminate_all(oid: u32) -> Query {
    Query {
        sql: "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int8 AS signalled,
       count(*) FILTER (WHERE xact_start IS NOT NULL)::int8 AS in_transaction
FROM pg_stat_activity WHERE datid = $1::int8::oid AND pid <> pg_backend_pid()"
            .into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// Sessions of database `oid` the caller may not signal: `usename`, whether superuser.
pub fn unsignallable_sessions(oid: u32) -> Query {
    Query {
        sql: format!(
            "SELECT s.usename::text, coalesce(r.rolsuper, false)
FROM pg_stat_activity s LEFT JOIN pg_roles r ON r.oid = s.usesysid
WHERE s.datid = $1::int8::oid AND s.pid <> pg_backend_pid() AND NOT {}",
            crate::planner::CAN_SIGNAL
        ),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// How many backends are connected to database `oid` (besides pgkill's own).
pub fn count_sessions(oid: u32) -> Query {
    Query {
        sql: "SELECT count(*)::int8 FROM pg_stat_activity WHERE datid = $1::int8::oid AND pid <> pg_backend_pid()".into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow: bool) -> DbSettings {
        DbSettings {
            allow_connections: allow,
            connection_limit: -1,
            acl: Some(vec!["=Tc/o".into(), "o=CTc/o".into()]),
            is_template: false,
        }
    }

    fn record() -> FenceRecord {
        FenceRecord {
            server: "h:5432".into(),
            system_identifier: None,
            oid: 1,
            name: "shop".into(),
            original: settings(true),
            fenced: settings(false),
            operation: Operation::Drain,
            pid: 1,
            at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn restore_decisions() {
        let r = record();
        assert!(restore_plan(&r, None).gone);
        let p = restore_plan(&r, Some(&settings(false)));
        assert_eq!(p.allow_connections, Some(true));
        assert!(p.foreign_changes.is_empty() && p.is_template.is_none());
        assert!(
            restore_plan(&r, Some(&settings(true))).is_noop(),
            "already restored"
        );
        let mut limited = settings(false);
        limited.connection_limit = 5;
        let p = restore_plan(&r, Some(&limited));
        assert_eq!(p.allow_connections, Some(true));
        assert!(
            p.foreign_changes[0].contains("connection limit is 5"),
            "{p:?}"
        );
        // The template flag pgkill cleared goes back; one someone re-set is left alone.
        let mut r2 = record();
        r2.original.is_template = true;
        let p = restore_plan(&r2, Some(&settings(false)));
        assert_eq!(
            (p.allow_connections, p.is_template),
            (Some(true), Some(true))
        );
    }

    #[test]
    fn statements_quote_names() {
        let v = |major| ServerVersion { major, minor: 0 };
        assert_eq!(
            drop_database(v(13), r#"a"b; x"#).unwrap(),
            r#"DROP DATABASE "a""b; x" WITH (FORCE)"#
        );
        assert_eq!(
            drop_database(v(12), "Shop").unwrap(),
            r#"DROP DATABASE "Shop""#
        );
        assert_eq!(
            rename_database("a", "b c").unwrap(),
            r#"ALTER DATABASE "a" RENAME TO "b c""#
        );
        assert_eq!(
            set_allow_connections("x", false).unwrap(),
            r#"ALTER DATABASE "x" ALLOW_CONNECTIONS false"#
        );
        assert_eq!(
            clear_template("x").unwrap(),
            r#"ALTER DATABASE "x" IS_TEMPLATE false"#
        );
    }

    #[test]
    fn names_with_a_nul_byte_make_no_statement() {
        let v = ServerVersion {
            major: 16,
            minor: 0,
        };
        let nul = QuoteError::NulInIdentifier {
            name: "sh\0op".into(),
        };
        assert_eq!(drop_database(v, "sh\0op"), Err(nul.clone()));
        assert_eq!(rename_database("sh\0op", "b"), Err(nul.clone()));
        assert_eq!(rename_database("a", "sh\0op"), Err(nul.clone()));
        assert_eq!(set_allow_connections("sh\0op", true), Err(nul.clone()));
        assert_eq!(clear_template("sh\0op"), Err(nul));
    }

    #[test]
    fn refusals_name_the_way_out() {
        let info = DbInfo {
            oid: 1,
            name: "shop".into(),
            owner: "o".into(),
            settings: settings(true),
        };
        let mut b = Blockers::default();
        assert!(refusals(Operation::Drop, &info, &b, Resolve::default(), "postgres").is_empty());
        assert!(
            refusals(Operation::Drop, &info, &b, Resolve::default(), "shop")[0]
                .contains("--maintenance-db")
        );
        b.prepared.push(PreparedXact {
            gid: "g1".into(),
            owner: "o".into(),
            prepared: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        });
        let r = refusals(Operation::Drop, &info, &b, Resolve::default(), "postgres");
        assert!(
            r[0].contains("\"g1\"") && r[0].contains("--rollback-prepared"),
            "{r:?}"
        );
        assert!(refusals(
            Operation::Drop,
            &info,
            &b,
            Resolve {
                rollback_prepared: true,
                ..Resolve::default()
            },
            "postgres"
        )
        .is_empty());
        assert!(
            refusals(Operation::Drain, &info, &b, Resolve::default(), "postgres").is_empty(),
            "drain does not care"
        );
        b.slots.push(Slot {
            name: "s".into(),
            active: true,
            active_pid: Some(42),
        });
        let r = refusals(
            Operation::Rename,
            &info,
            &b,
            Resolve {
                rollback_prepared: true,
                ..Resolve::default()
            },
            "postgres",
        );
        assert!(
            r[0].contains("walsender pid 42") && r[0].contains("--terminate-walsenders"),
            "{r:?}"
        );
    }
}

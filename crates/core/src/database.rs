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
    /// The database's comment (while pgkill holds a fence, its record: see
    /// [`crate::fence`]).
    pub comment: Option<String>,
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

/// A walsender (a logical replication connection, e.g. `pg_recvlogical` or a
/// subscriber's) connected to the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Walsender {
    /// Its pid.
    pub pid: i32,
    /// The slot it streams from, if it is streaming.
    pub slot: Option<String>,
}

/// What ending every session of the database ends: said in every preflight and in the
/// question before anything is done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ending {
    /// Backends connected to the database, besides pgkill's own.
    pub sessions: i64,
    /// Of those, sessions of superusers (walsenders not counted here).
    pub superuser: i64,
    /// Of those, walsenders.
    pub walsenders: Vec<Walsender>,
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

impl Ending {
    /// `12 sessions will be ended (2 superuser sessions, 1 walsender of slot s1)`.
    pub fn describe(&self) -> String {
        if self.sessions == 0 {
            return "no session is connected".into();
        }
        let n = usize::try_from(self.sessions).unwrap_or_default();
        let mut text = format!("{} will be ended", count(n, "session"));
        let mut parts = Vec::new();
        if self.superuser > 0 {
            let k = usize::try_from(self.superuser).unwrap_or_default();
            parts.push(count(k, "superuser session"));
        }
        if !self.walsenders.is_empty() {
            let mut part = count(self.walsenders.len(), "walsender");
            let slots: Vec<&str> = self
                .walsenders
                .iter()
                .filter_map(|w| w.slot.as_deref())
                .collect();
            match slots.len() {
                0 => {}
                1 => part.push_str(&format!(" of slot {}", slots[0])),
                _ => part.push_str(&format!(" of slots {}", slots.join(", "))),
            }
            parts.push(part);
        }
        if !parts.is_empty() {
            text.push_str(&format!(" ({})", parts.join(", ")));
        }
        text
    }
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

/// Checks a database or role name the way the server will before pgkill looks it up or
/// acts on it: a name longer than the server's `max_identifier_length` (63 bytes unless
/// built otherwise) would be silently truncated by a `name` comparison and could match
/// another object.
pub fn check_name(kind: &str, name: &str, max_bytes: usize) -> Result<(), String> {
    if name.is_empty() {
        Err(format!("the {kind} name is empty"))
    } else if name.contains('\0') {
        Err(format!("the {kind} name {name:?} contains a NUL byte"))
    } else if name.len() > max_bytes {
        Err(format!(
            "the {kind} name {name:?} is {} bytes long: PostgreSQL names are at most {max_bytes} bytes on this server",
            name.len()
        ))
    } else {
        Ok(())
    }
}

/// Why renaming `old` to `new` is refused (checked before anything is changed; that the
/// new name is free is checked against the server).
pub fn rename_refusals(old: &str, new: &str, max_bytes: usize) -> Vec<String> {
    match check_name("new database", new, max_bytes) {
        Err(why) => vec![why],
        Ok(()) if new == old => vec![format!("{old:?} is already called that")],
        Ok(()) => Vec::new(),
    }
}

/// Why an operation is refused before anything is changed. Every operation ends every
/// session of the database, so each refuses to end logical replication (an active slot,
/// a walsender) unless `--terminate-walsenders`.
pub fn refusals(
    op: Operation,
    info: &DbInfo,
    blockers: &Blockers,
    ending: &Ending,
    resolve: Resolve,
    connected_db: &str,
) -> Vec<String> {
    let mut why = Vec::new();
    let name = &info.name;
    if connected_db == name {
        why.push(format!(
            "pgkill is connected to {name} itself: use --maintenance-db to connect to another database (e.g. {})",
            if name == "postgres" { "template1" } else { "postgres" }
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
        if let Some(subs) = &blockers.subscriptions {
            if !subs.is_empty() {
                why.push(format!(
                    "{name} has subscription(s) {}: from inside {name} run ALTER SUBSCRIPTION … DISABLE, ALTER SUBSCRIPTION … SET (slot_name = NONE) and DROP SUBSCRIPTION first",
                    subs.join(", ")
                ));
            }
        }
    }
    let active: Vec<&Slot> = blockers.slots.iter().filter(|s| s.active).collect();
    let slotless: Vec<&Walsender> = ending
        .walsenders
        .iter()
        .filter(|w| !active.iter().any(|s| s.active_pid == Some(w.pid)))
        .collect();
    if (!active.is_empty() || !slotless.is_empty()) && !resolve.terminate_walsenders {
        let mut names: Vec<String> = active
            .iter()
            .map(|s| {
                format!(
                    "slot {} (walsender pid {})",
                    s.name,
                    s.active_pid
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "?".into())
                )
            })
            .collect();
        names.extend(slotless.iter().map(|w| format!("walsender pid {}", w.pid)));
        why.push(format!(
            "logical replication from {name} is in progress: {}. Stop the consumer (pg_recvlogical, a subscriber), or pass --terminate-walsenders to end it",
            names.join(", ")
        ));
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

/// The columns `pgkill_pg::databases` reads (by name) of `pg_database d`.
const DB_INFO: &str = "SELECT d.oid::int8 AS oid, d.datname::text AS name,
       pg_catalog.pg_get_userbyid(d.datdba)::text AS owner,
       d.datallowconn, d.datconnlimit, d.datacl::text[] AS acl, d.datistemplate,
       pg_catalog.shobj_description(d.oid, 'pg_database'::name) AS comment
FROM pg_catalog.pg_database d";

/// Reads a database's settings by name.
pub fn db_info(name: &str) -> Query {
    Query {
        sql: format!("{DB_INFO} WHERE d.datname = $1::name"),
        params: vec![Param::Text(name.to_owned())],
    }
}

/// Every database whose comment is a fence record (see [`crate::fence`]). Only databases
/// that refuse connections are looked at: a fenced one always does, and the comment is
/// only read for those (this runs before every command).
pub fn fenced_databases() -> Query {
    Query {
        sql: format!(
            "{DB_INFO} WHERE NOT d.datallowconn
  AND pg_catalog.strpos(pg_catalog.shobj_description(d.oid, 'pg_database'::name), $1::text) = 1 ORDER BY d.datname"
        ),
        params: vec![Param::Text(crate::fence::COMMENT_PREFIX.to_owned())],
    }
}

/// Reads a database's settings by OID (for restoring after a rename).
pub fn db_info_by_oid(oid: u32) -> Query {
    Query {
        sql: format!("{DB_INFO} WHERE d.oid = $1::int8::oid"),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// The database's prepared transactions and logical slots.
pub fn blockers(name: &str) -> (Query, Query) {
    (
        Query {
            sql: "SELECT gid, owner::text, prepared FROM pg_catalog.pg_prepared_xacts WHERE database = $1::name ORDER BY prepared".into(),
            params: vec![Param::Text(name.to_owned())],
        },
        Query {
            sql: "SELECT slot_name::text, active, active_pid FROM pg_catalog.pg_replication_slots
WHERE database = $1::name AND slot_type = 'logical'::text ORDER BY slot_name"
                .into(),
            params: vec![Param::Text(name.to_owned())],
        },
    )
}

/// Subscriptions of the database (readable by superusers).
pub fn subscriptions(oid: u32) -> Query {
    Query {
        sql: "SELECT subname::text FROM pg_catalog.pg_subscription WHERE subdbid = $1::int8::oid ORDER BY subname".into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
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

/// Terminates every session of database `oid` except pgkill's own; returns the pids it
/// signalled and the pids that were inside a transaction (`int[]`, either may be NULL).
/// (The signal sits in an aggregate's `FILTER`, which sees only the rows `WHERE` kept.)
pub fn terminate_all(oid: u32) -> Query {
    Query {
        sql: "SELECT pg_catalog.array_agg(pid) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) AS signalled,
       pg_catalog.array_agg(pid) FILTER (WHERE xact_start IS NOT NULL) AS in_transaction
FROM pg_catalog.pg_stat_activity WHERE datid = $1::int8::oid AND pid <> pg_catalog.pg_backend_pid()"
            .into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// Sessions of database `oid` the caller may not signal: `usename`, whether superuser.
pub fn unsignallable_sessions(oid: u32) -> Query {
    Query {
        sql: format!(
            "SELECT s.usename::text, coalesce(r.rolsuper, false)
FROM pg_catalog.pg_stat_activity s LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.usesysid
WHERE s.datid = $1::int8::oid AND s.pid <> pg_catalog.pg_backend_pid() AND NOT {}",
            crate::planner::can_signal("r.rolsuper")
        ),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// Every backend connected to database `oid` besides pgkill's own, as [`Ending`] counts
/// them: `pid`, whether of a superuser, whether a walsender, the slot it uses.
pub fn sessions_to_end(oid: u32) -> Query {
    Query {
        sql: "SELECT a.pid, coalesce(r.rolsuper, false) AS superuser,
       coalesce(a.backend_type = 'walsender'::text, false) AS walsender, sl.slot_name::text AS slot
FROM pg_catalog.pg_stat_activity a
LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid
LEFT JOIN pg_catalog.pg_replication_slots sl ON sl.active_pid = a.pid
WHERE a.datid = $1::int8::oid AND a.pid <> pg_catalog.pg_backend_pid()
ORDER BY a.pid"
            .into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// How many backends are connected to database `oid` (besides pgkill's own).
pub fn count_sessions(oid: u32) -> Query {
    Query {
        sql: "SELECT pg_catalog.count(*)::int8 FROM pg_catalog.pg_stat_activity WHERE datid = $1::int8::oid AND pid <> pg_catalog.pg_backend_pid()".into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// Ends each session of database `oid` that is outside a transaction (during a grace
/// period); returns how many were signalled, how many are connected, and how many of
/// those are inside a transaction.
pub fn end_idle_sessions(oid: u32) -> Query {
    Query {
        sql: "SELECT pg_catalog.count(*) FILTER (WHERE xact_start IS NULL AND pg_catalog.pg_terminate_backend(pid))::int8,
       pg_catalog.count(*)::int8, pg_catalog.count(*) FILTER (WHERE xact_start IS NOT NULL)::int8
FROM pg_catalog.pg_stat_activity WHERE datid = $1::int8::oid AND pid <> pg_catalog.pg_backend_pid()"
            .into(),
        params: vec![Param::Int8(i64::from(oid))],
    }
}

/// The database pgkill is connected to.
pub fn current_database() -> Query {
    Query {
        sql: "SELECT pg_catalog.current_database()::text".into(),
        params: Vec::new(),
    }
}

/// Whether the caller may create (and so rename) databases.
pub fn caller_can_create_databases() -> Query {
    Query {
        sql: "SELECT rolcreatedb OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user"
            .into(),
        params: Vec::new(),
    }
}

/// The server's `system_identifier` as text (identifies the cluster across renames of
/// hosts and ports, and tells a primary from an unrelated server).
pub fn system_identifier() -> Query {
    Query {
        sql: "SELECT system_identifier::text FROM pg_catalog.pg_control_system()".into(),
        params: Vec::new(),
    }
}

/// A role's connection limit (`rolconnlimit`, -1 for none); no row when the role does not
/// exist.
pub fn role_connection_limit(role: &str) -> Query {
    Query {
        sql: "SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = $1::name".into(),
        params: vec![Param::Text(role.to_owned())],
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Settings with custom privileges.
    pub(crate) fn settings(allow: bool) -> DbSettings {
        DbSettings {
            allow_connections: allow,
            connection_limit: -1,
            acl: Some(vec!["=Tc/o".into(), "o=CTc/o".into()]),
            is_template: false,
        }
    }

    #[test]
    fn every_function_call_is_schema_qualified() {
        let v = |major| ServerVersion { major, minor: 0 };
        let (prepared, slots) = blockers("shop");
        let mut all = vec![
            db_info("shop").sql,
            db_info_by_oid(1).sql,
            fenced_databases().sql,
            prepared.sql,
            slots.sql,
            subscriptions(1).sql,
            terminate_all(1).sql,
            unsignallable_sessions(1).sql,
            count_sessions(1).sql,
            sessions_to_end(1).sql,
            end_idle_sessions(1).sql,
            current_database().sql,
            caller_can_create_databases().sql,
            system_identifier().sql,
            role_connection_limit("r").sql,
            rename_database("a", "b").unwrap(),
        ];
        all.extend((10..=18).map(|m| drop_database(v(m), "x").unwrap()));
        for sql in all {
            assert_eq!(
                crate::sql::unqualified_calls(&sql),
                Vec::<String>::new(),
                "in:\n{sql}"
            );
        }
    }

    #[test]
    fn names_are_checked_as_the_server_would() {
        assert!(check_name("database", "shop", 63).is_ok());
        assert!(
            check_name("database", &"é".repeat(31), 63).is_ok(),
            "62 bytes"
        );
        let long = check_name("database", &"é".repeat(32), 63).unwrap_err();
        assert!(
            long.contains("64 bytes") && long.contains("at most 63"),
            "{long}"
        );
        assert!(check_name("role", "", 63).unwrap_err().contains("empty"));
        assert!(check_name("role", "a\0b", 63).unwrap_err().contains("NUL"));
        assert_eq!(rename_refusals("a", "b", 63), Vec::<String>::new());
        assert!(rename_refusals("a", "", 63)[0].contains("empty"));
        assert!(rename_refusals("a", "a", 63)[0].contains("already called"));
        assert!(rename_refusals("a", &"x".repeat(64), 63)[0].contains("64 bytes"));
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
        assert!(drop_database(v(16), "sh\0op").is_err());
        assert!(rename_database("a", "sh\0op").is_err());
    }

    #[test]
    fn refusals_name_the_way_out() {
        let info = DbInfo {
            oid: 1,
            name: "shop".into(),
            owner: "o".into(),
            settings: settings(true),
            comment: None,
        };
        let mut b = Blockers::default();
        let none = Ending::default();
        assert!(refusals(
            Operation::Drop,
            &info,
            &b,
            &none,
            Resolve::default(),
            "postgres"
        )
        .is_empty());
        assert!(refusals(
            Operation::Drop,
            &info,
            &b,
            &none,
            Resolve::default(),
            "shop"
        )[0]
        .contains("--maintenance-db"));
        b.prepared.push(PreparedXact {
            gid: "g1".into(),
            owner: "o".into(),
            prepared: DateTime::from_timestamp(0, 0).unwrap_or_default(),
        });
        let r = refusals(
            Operation::Drop,
            &info,
            &b,
            &none,
            Resolve::default(),
            "postgres",
        );
        assert!(
            r[0].contains("\"g1\"") && r[0].contains("--rollback-prepared"),
            "{r:?}"
        );
        assert!(refusals(
            Operation::Drop,
            &info,
            &b,
            &none,
            Resolve {
                rollback_prepared: true,
                ..Resolve::default()
            },
            "postgres"
        )
        .is_empty());
        assert!(
            refusals(
                Operation::Drain,
                &info,
                &b,
                &none,
                Resolve::default(),
                "postgres"
            )
            .is_empty(),
            "drain does not care"
        );
        b.slots.push(Slot {
            name: "s".into(),
            active: true,
            active_pid: Some(42),
        });
        let ending = Ending {
            sessions: 3,
            superuser: 1,
            walsenders: vec![
                Walsender {
                    pid: 42,
                    slot: Some("s".into()),
                },
                Walsender {
                    pid: 43,
                    slot: None,
                },
            ],
        };
        // Every operation, drain too, refuses to end replication unless told to.
        for op in [Operation::Drop, Operation::Rename, Operation::Drain] {
            let r = refusals(
                op,
                &info,
                &b,
                &ending,
                Resolve {
                    rollback_prepared: true,
                    ..Resolve::default()
                },
                "postgres",
            );
            assert_eq!(r.len(), 1, "{op:?}: {r:?}");
            assert!(
                r[0].contains("slot s (walsender pid 42)")
                    && r[0].contains("walsender pid 43")
                    && !r[0].contains("slot s (walsender pid 42), slot")
                    && r[0].contains("--terminate-walsenders"),
                "{r:?}"
            );
            let allowed = Resolve {
                rollback_prepared: true,
                terminate_walsenders: true,
                ..Resolve::default()
            };
            assert!(refusals(op, &info, &b, &ending, allowed, "postgres").is_empty());
        }
        // A walsender without an active slot is refused all the same.
        b.slots.clear();
        let r = refusals(
            Operation::Drain,
            &info,
            &b,
            &ending,
            Resolve::default(),
            "postgres",
        );
        assert!(
            r[0].contains("walsender pid 42") && r[0].contains("walsender pid 43"),
            "{r:?}"
        );
    }

    #[test]
    fn ending_names_superusers_and_walsenders() {
        let mut e = Ending::default();
        assert_eq!(e.describe(), "no session is connected");
        e.sessions = 1;
        assert_eq!(e.describe(), "1 session will be ended");
        e.sessions = 12;
        e.superuser = 2;
        e.walsenders.push(Walsender {
            pid: 7,
            slot: Some("s1".into()),
        });
        assert_eq!(
            e.describe(),
            "12 sessions will be ended (2 superuser sessions, 1 walsender of slot s1)"
        );
        e.superuser = 0;
        e.walsenders.push(Walsender { pid: 8, slot: None });
        e.walsenders.push(Walsender {
            pid: 9,
            slot: Some("s2".into()),
        });
        assert_eq!(
            e.describe(),
            "12 sessions will be ended (3 walsenders of slots s1, s2)"
        );
    }
}

//! What the CLI says about fences: the note every command gives for each database of the
//! server that pgkill has fenced (a deliberate drain is a short note; a pgkill that died
//! holding a fence is a warning), how a record is described, and adopting the local
//! records older pgkill versions left on disk into server records.

use pgkill_core::database::DbSettings;
use pgkill_core::fence::{self, FenceRecord, FenceState, Holder};
use pgkill_pg::databases::{self, Liveness};
use pgkill_pg::journal::Journal;
use tokio_postgres::Client;

/// "since 2026-12-01 14:03:07 UTC by `pgkill drain` (pid 4242 on db-admin, OS user alice,
/// role postgres)".
pub fn describe(r: &FenceRecord) -> String {
    let mut who = format!("pid {} on {}", r.by.pid, r.by.host.escape_debug());
    if !r.by.os_user.is_empty() {
        who.push_str(&format!(", OS user {}", r.by.os_user.escape_debug()));
    }
    if !r.by.role.is_empty() {
        who.push_str(&format!(", role {}", r.by.role.escape_debug()));
    }
    format!(
        "since {} by `pgkill {}` ({who})",
        r.since.format("%Y-%m-%d %H:%M:%S UTC"),
        verb(r.operation),
    )
}

fn verb(op: pgkill_core::database::Operation) -> &'static str {
    use pgkill_core::database::Operation::*;
    match op {
        Drop => "drop",
        Rename => "rename",
        Drain => "drain",
    }
}

/// Prints a line to stderr for every fenced database of the server but `except` (the one
/// `unfence` is about to restore), and for local records an older pgkill left. Failing to
/// read them is not an error for the command that was asked for.
pub async fn notice(client: &Client, except: Option<&str>) {
    for line in server_notes(client, except).await {
        eprintln!("pgkill: {line}");
    }
    for line in local_notes() {
        eprintln!("pgkill: {line}");
    }
}

/// What [`notice`] says of the server's fenced databases (but `except`), a line each
/// (`note: …` or `warning: …`); nothing when they cannot be read.
pub async fn server_notes(client: &Client, except: Option<&str>) -> Vec<String> {
    let Ok(fenced) = databases::fences(client).await else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for f in fenced {
        let name = &f.info.name;
        if Some(name.as_str()) == except {
            continue;
        }
        let quoted = shell_word(name);
        let line = match f.record {
            Err(e) => format!(
                "warning: database {quoted} has a pgkill fence record that cannot be read ({e}); its comment holds it"
            ),
            Ok(r) => match (r.state, databases::liveness(&r.by)) {
                (_, Liveness::ThisProcess) => continue,
                (FenceState::Held, _) => format!(
                    "note: database {quoted} is fenced (no new connections) {}; `pgkill unfence {quoted}` lets clients in again",
                    describe(&r)
                ),
                (FenceState::InProgress, Liveness::Running) => format!(
                    "note: database {quoted} is being worked on: fenced {}",
                    describe(&r)
                ),
                (FenceState::InProgress, Liveness::Gone) => format!(
                    "warning: database {quoted} was left fenced (connections disallowed) by a pgkill that is gone: fenced {}; run `pgkill unfence {quoted}` to restore its settings",
                    describe(&r)
                ),
                (FenceState::InProgress, Liveness::OtherMachine) => format!(
                    "warning: database {quoted} is fenced {}, on another machine; if that pgkill is no longer running, `pgkill unfence {quoted}` restores its settings",
                    describe(&r)
                ),
            },
        };
        lines.push(line);
    }
    lines
}

/// What [`notice`] says of this machine's records older pgkill versions left (and of
/// files in the journal it skipped), a line each.
pub fn local_notes() -> Vec<String> {
    let Some(journal) = Journal::open_default() else {
        return Vec::new();
    };
    let scan = journal.scan();
    let mut lines: Vec<String> = scan
        .skipped
        .iter()
        .map(|skipped| format!("warning: {skipped}"))
        .collect();
    for (path, r) in &scan.records {
        lines.push(format!(
            "note: {} holds a fence of database {:?} on {:?} written by an older pgkill: `pgkill unfence {:?}` on that server adopts and restores it",
            path.display(),
            r.name,
            r.server,
            r.name
        ));
    }
    lines
}

/// Adopts the local records older pgkill versions left for database `name` on this server:
/// a record becomes the database's server record (then `unfence`, `drain`, … work on it
/// as on any other) and its file is removed. A record is adopted only on the cluster and
/// the database it was taken on (same system identifier where both are known, same OID and
/// name, and the database still fenced as the record says); otherwise it is left where it
/// is and the reason is returned. Returns one message per record looked at.
pub async fn adopt_legacy(
    client: &Client,
    server: &str,
    name: &str,
) -> pgkill_pg::Result<Vec<String>> {
    let Some(journal) = Journal::open_default() else {
        return Ok(Vec::new());
    };
    let scan = journal.scan();
    let mut said: Vec<String> = scan.skipped.clone();
    let ours: Vec<_> = scan
        .records
        .into_iter()
        .filter(|(_, r)| r.name == name)
        .collect();
    if ours.is_empty() {
        return Ok(said);
    }
    let sysid = databases::system_identifier(client).await;
    let current = databases::info(client, name).await?;
    for (path, r) in ours {
        let file = path.display();
        let refuse = |why: String| format!("not adopting {file}: {why}");
        let why = match (&r.system_identifier, &sysid) {
            (Some(theirs), Some(here)) if theirs != here => Some(format!(
                "it was taken on the cluster with system identifier {theirs}, and this server is {here}"
            )),
            (None, _) | (_, None) if r.server != server => Some(format!(
                "it was taken on {:?}, and this is {server:?} (and the cluster cannot be compared)",
                r.server
            )),
            _ => None,
        };
        if let Some(why) = why {
            said.push(refuse(why));
            continue;
        }
        let Some(info) = current
            .as_ref()
            .filter(|i| i.oid == r.oid && i.name == r.name)
        else {
            if r.name == name {
                said.push(refuse(format!(
                    "database {name:?} is not the one it names (oid {})",
                    r.oid
                )));
            }
            continue;
        };
        if info
            .comment
            .as_deref()
            .and_then(FenceRecord::from_comment)
            .is_some()
        {
            said.push(refuse(format!(
                "{name:?} already has a fence record on the server"
            )));
            continue;
        }
        if !still_fenced(&info.settings, &r.fenced) {
            journal
                .remove(&path)
                .map_err(|e| pgkill_pg::Error::Refused(vec![format!("{file}: {e}")]))?;
            said.push(format!(
                "removed {file}: {name:?} is no longer fenced as it says"
            ));
            continue;
        }
        let record = FenceRecord {
            name: r.name.clone(),
            original: r.original.clone(),
            original_comment: info.comment.clone(),
            fenced: r.fenced.clone(),
            operation: r.operation,
            state: FenceState::InProgress,
            by: Holder {
                host: databases::this_holder("").host,
                pid: r.pid,
                os_user: String::new(),
                role: String::new(),
            },
            since: r.at,
            at: r.at,
            poolers: Vec::new(),
        };
        let sql = fence::record_statement(name, &record).map_err(pgkill_pg::Error::Name)?;
        pgkill_pg::exec::batch(client, &sql).await?;
        journal
            .remove(&path)
            .map_err(|e| pgkill_pg::Error::Refused(vec![format!("{file}: {e}")]))?;
        said.push(format!(
            "adopted {file}: the fence of {name:?} is now recorded on the server"
        ));
    }
    Ok(said)
}

/// `name` as one word to paste into a shell: as it is when plain, else single-quoted; a
/// name with control characters is shown escaped (it cannot be pasted as it is anyway).
pub fn shell_word(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-+@%:/".contains(c))
    {
        name.to_owned()
    } else if name.chars().any(char::is_control) {
        format!("{name:?}")
    } else {
        format!("'{}'", name.replace('\'', r"'\''"))
    }
}

fn still_fenced(now: &DbSettings, fenced: &DbSettings) -> bool {
    now.allow_connections == fenced.allow_connections && now.is_template == fenced.is_template
}

//! Terminal escapes from the server never reach the terminal (issue 8, finding 6), on
//! every PostgreSQL version: a role named `x ESC ]0;title BEL` rewrote the terminal's
//! title through `drop --dry-run`. Names of roles, a database, a prepared transaction and
//! a subscription, a query text and the server's own error message carry ESC, BEL, CSI,
//! OSC and C1 controls (slot names cannot hold them, and the server itself turns them
//! into `?` in application names); every
//! output for people, on a pipe and on a terminal, shows them escaped, while `--json` and
//! `--csv` to a pipe keep them exact.

use std::process::Command;

use anyhow::{anyhow, ensure, Context, Result};
use pgkill_core::quote_ident;
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};

mod support;

use support::on_terminal;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        server_text_is_escaped_for_people_and_exact_for_scripts,
        refusals_and_server_errors_are_escaped,
    ]);
}

/// A non-superuser owner (CREATEDB) with OSC and BEL in its name.
const OWNER: &str = "x\x1b]0;pwned\x07";
/// A superuser with C1 CSI and an ESC CSI sequence in its name.
const SUPER: &str = "su\u{9b}31m\x1b[2J";
const DB: &str = "shop\x1b]0;pwned\x1b\\\u{85}";
const GID: &str = "gid\x1b]0;pwned\x07";
const SUB: &str = "sub\x1b[31m\u{9b}0m";
/// The server shows it as `app?]2;pwned??`: set anyway, in case a version does not.
const APP: &str = "app\x1b]2;pwned\x07\x7f";
const QUERY_MARK: &str = "q\x1b]0;pwned\x07\u{9b}1m";

/// The first character of `text` a terminal must not be given raw, if any: a C0 control
/// other than newline and tab, DEL, or a C1 control. Output that is not UTF-8 fails too.
fn raw_control(text: &[u8]) -> Result<Option<char>> {
    let text = std::str::from_utf8(text).context("output is not UTF-8")?;
    Ok(text.chars().find(|&c| {
        (u32::from(c) < 0x20 && c != '\n' && c != '\t')
            || c == '\x7f'
            || ('\u{80}'..='\u{9f}').contains(&c)
    }))
}

fn ensure_clean(what: &str, text: &[u8]) -> Result<()> {
    if let Some(c) = raw_control(text)? {
        anyhow::bail!(
            "{what}: raw {c:?} reached the output:\n{}",
            String::from_utf8_lossy(text)
        );
    }
    Ok(())
}

fn pgkill(sb: &Sandbox, state: &tempfile::TempDir, role: &str, args: &[&str]) -> Command {
    let mut cmd = support::pgkill(sb, role, args);
    cmd.env("PGKILL_STATE_DIR", state.path());
    cmd
}

/// The hostile objects: roles, a database with non-default privileges owned by one, a
/// prepared transaction, a subscription, and a superuser session with a hostile
/// application name and query text connected to the database.
async fn hostile_server(sb: &Sandbox) -> Result<sim::Session> {
    let admin = sb.admin("postgres").await?;
    let (sup, db) = (quote_ident(SUPER)?, quote_ident(DB)?);
    sb.create_role(OWNER, "LOGIN CREATEDB").await?;
    sb.create_role(SUPER, "LOGIN SUPERUSER").await?;
    sb.create_database(DB, Some(OWNER)).await?;
    admin
        .batch_execute(&format!(
            "REVOKE CONNECT ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {sup}"
        ))
        .await?;
    let inside = sb.admin(DB).await?;
    inside
        .batch_execute(&format!(
            "CREATE SUBSCRIPTION {} CONNECTION 'host=127.0.0.1 dbname=nowhere' PUBLICATION p WITH (connect = false)",
            quote_ident(SUB)?
        ))
        .await?;
    drop(inside);
    let prepared = sim::prepared(&sb.config(DB, OWNER), GID, None).await?;
    drop(prepared);
    let mut config = sb.config(DB, SUPER);
    config.application_name(APP);
    let session = sim::idle(&config).await?;
    session
        .client()
        .batch_execute(&format!("SELECT 1 /* {QUERY_MARK} */"))
        .await?;
    Ok(session)
}

async fn server_text_is_escaped_for_people_and_exact_for_scripts(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let state = tempfile::tempdir()?;
    let _session = hostile_server(&sb).await?;
    let run = |role: &str, args: &[&str]| pgkill(&sb, &state, role, args);

    // The table, on a pipe and on a terminal.
    let (code, out, err) = support::run(run(roles::ADMIN, &["ls", "--user", SUPER]))?;
    ensure!(code == 0, "ls: exit {code}\n{out}\n{err}");
    ensure_clean("ls on a pipe", out.as_bytes())?;
    ensure_clean("ls on a pipe (stderr)", err.as_bytes())?;
    ensure!(
        out.contains(r"su\u{9b}31m\x1b[2J") && out.contains(r"shop\x1b]0;pwned\x1b\\u{85}"),
        "names not shown escaped:\n{out}"
    );
    let (code, out) = on_terminal(&run(roles::ADMIN, &["ls", "--user", SUPER]), "")?;
    ensure!(
        code == 0,
        "ls on a terminal: exit {code}\n{}",
        String::from_utf8_lossy(&out)
    );
    ensure_clean("ls on a terminal", &out)?;

    // CSV: escaped on a terminal, exact on a pipe.
    let (code, out) = on_terminal(&run(roles::ADMIN, &["ls", "--user", SUPER, "--csv"]), "")?;
    ensure!(code == 0, "ls --csv on a terminal: exit {code}");
    ensure_clean("ls --csv on a terminal", &out)?;
    let (code, out, err) = support::run(run(roles::ADMIN, &["ls", "--user", SUPER, "--csv"]))?;
    ensure!(code == 0, "ls --csv: exit {code}\n{err}");
    for exact in [SUPER, DB, QUERY_MARK] {
        ensure!(
            out.contains(exact),
            "--csv to a pipe lost {exact:?}:\n{out:?}"
        );
    }

    // JSON: the exact names, and nothing raw for a terminal either.
    let (code, out, err) = support::run(run(roles::ADMIN, &["ls", "--user", SUPER, "--json"]))?;
    ensure!(code == 0, "ls --json: exit {code}\n{err}");
    ensure_clean("ls --json", out.as_bytes())?;
    let doc: serde_json::Value = serde_json::from_str(&out)?;
    let s = doc["sessions"]
        .as_array()
        .and_then(|s| s.first())
        .ok_or_else(|| anyhow!("no session in {out}"))?;
    ensure!(s["user"] == SUPER && s["database"] == DB, "{s}");
    ensure!(
        s["query"].as_str().is_some_and(|q| q.contains(QUERY_MARK)),
        "{s}"
    );

    // The plan of kill.
    let (code, out, err) = support::run(run(
        roles::ADMIN,
        &["kill", "--user", SUPER, "--include-superusers", "--dry-run"],
    ))?;
    ensure!(code == 0, "kill --dry-run: exit {code}\n{out}\n{err}");
    ensure_clean("kill --dry-run", out.as_bytes())?;
    ensure!(out.contains(r"su\u{9b}31m\x1b[2J"), "{out}");

    // The preflight of drop names the owner, the privileges, the prepared transaction
    // and the subscription: on a pipe and on a terminal.
    let args = ["drop", DB, "--dry-run"];
    let (code, out, err) = support::run(run(roles::ADMIN, &args))?;
    ensure!(code == 2, "drop --dry-run: exit {code}\n{out}\n{err}");
    ensure_clean("drop --dry-run (stdout)", out.as_bytes())?;
    ensure_clean("drop --dry-run (stderr)", err.as_bytes())?;
    // (The transaction id is quoted: `"gid\u{1b}]0;pwned\u{7}"`.)
    for shown in [
        r"owner x\x1b]0;pwned\x07",
        r"gid\u{1b}]0;pwned",
        r"sub\x1b[31m\u{9b}0m",
    ] {
        ensure!(
            out.contains(shown) || err.contains(shown),
            "{shown} not shown:\n{out}\n{err}"
        );
    }
    ensure!(
        out.contains(r#""su\u{9b}31m\x1b[2J"=c/"#),
        "privileges:\n{out}"
    );
    let (code, out) = on_terminal(&run(roles::ADMIN, &args), "")?;
    ensure!(
        code == 2,
        "drop --dry-run on a terminal: exit {code}\n{}",
        String::from_utf8_lossy(&out)
    );
    ensure_clean("drop --dry-run on a terminal", &out)?;
    Ok(())
}

async fn refusals_and_server_errors_are_escaped(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let state = tempfile::tempdir()?;
    let _session = hostile_server(&sb).await?;
    let run = |role: &str, args: &[&str]| pgkill(&sb, &state, role, args);

    // Refused for the prepared transaction (gid, owner) and the subscription.
    let (code, out, err) = support::run(run(roles::ADMIN, &["drop", DB, "-y"]))?;
    ensure!(
        code == 2 && err.contains("nothing was changed"),
        "exit {code}\n{out}\n{err}"
    );
    ensure_clean("refusal (stdout)", out.as_bytes())?;
    ensure_clean("refusal (stderr)", err.as_bytes())?;
    ensure!(
        err.contains(r"gid\u{1b}]0;pwned")
            && err.contains(r"owner x\x1b]0;pwned\x07")
            && err.contains(r"sub\x1b[31m\u{9b}0m"),
        "{err}"
    );
    // The owner may not end the superuser's session: the roles it cannot signal.
    let (code, out, err) = support::run(run(OWNER, &["drain", DB, "-y"]))?;
    ensure!(code == 2, "exit {code}\n{out}\n{err}");
    ensure_clean("cannot signal (stdout)", out.as_bytes())?;
    ensure_clean("cannot signal (stderr)", err.as_bytes())?;
    ensure!(err.contains(r"su\u{9b}31m\x1b[2J"), "{err}");
    // Not the owner: the owner is named.
    let (code, out, err) = support::run(run(roles::PLAIN, &["rename", DB, "other", "-y"]))?;
    ensure!(code == 2, "exit {code}\n{out}\n{err}");
    ensure_clean("not the owner (stderr)", err.as_bytes())?;
    ensure!(err.contains(r"x\x1b]0;pwned\x07"), "{err}");
    // The same on a terminal.
    let (code, out) = on_terminal(&run(roles::ADMIN, &["drop", DB, "-y"]), "")?;
    ensure!(code == 2, "exit {code}\n{}", String::from_utf8_lossy(&out));
    ensure_clean("refusal on a terminal", &out)?;
    // The server's own message quotes the name (database "…" does not exist).
    let (code, out, err) = support::run(run(
        roles::ADMIN,
        &["--maintenance-db", "gone\x1b]0;pwned\x07", "ls"],
    ))?;
    ensure!(code == 2, "exit {code}\n{out}\n{err}");
    ensure_clean("server error (stderr)", err.as_bytes())?;
    ensure!(err.contains("pwned"), "{err}");
    Ok(())
}

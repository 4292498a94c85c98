//! Colours in `pgkill ls` on the real binary, on every PostgreSQL version (issue 12): on
//! a terminal the states are coloured as in `top` (active green, idle in transaction
//! yellow, waiting on a lock red) without moving the columns, and server text is still
//! shown escaped; `NO_COLOR`, a pipe, `--json` and `--csv` get no colour at all.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pgkill_sandbox::sim;
use pgkill_sandbox::{cases, roles, Installation, Options, Sandbox};

mod support;

use support::{on_terminal, pgkill, run};

fn main() {
    pgkill_sandbox::matrix::main(cases![ls_colours_states_on_a_terminal_only]);
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const RESET: &str = "\x1b[0m";

/// `pgkill ls ARGS…` as [`pgkill`] builds it, but with colours allowed (no `NO_COLOR`)
/// on a terminal that says it has them.
fn ls_allowing_colour(sb: &Sandbox, args: &[&str]) -> Command {
    let mut cmd = pgkill(sb, roles::ADMIN, &[&["ls", "--db", "app"], args].concat());
    cmd.env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("TERM", "xterm-256color");
    cmd
}

fn text_on_terminal(cmd: &Command) -> Result<String> {
    let (code, shown) = on_terminal(cmd, "")?;
    let shown = String::from_utf8(shown)?;
    ensure!(code == 0, "exit {code}: {shown}");
    Ok(shown)
}

async fn ls_colours_states_on_a_terminal_only(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    sb.create_database("app", None).await?;
    let config = sb.config("app", roles::PLAIN);
    let active = sim::active(&config, Duration::from_secs(120)).await?;
    let idle_in_xact = sim::idle_in_transaction(&config, Some("SELECT 1")).await?;
    let chain = sim::lock_chain(&sb.config("app", roles::SUPERUSER), "t", 1).await?;
    let _idle = sim::idle(&config).await?;
    // Server text with a control sequence: escaped also when the table is in colour.
    let _hostile = sim::running(&config, "SELECT pg_sleep(120) /* x\x1b]0;pwned\x07 */").await?;

    // A terminal: each state in its colour, the rest plain.
    let shown = text_on_terminal(&ls_allowing_colour(&sb, &[]))?;
    let row = |pid: i32| {
        shown
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{pid} ")))
            .unwrap_or_default()
            .to_owned()
    };
    ensure!(
        row(active.pid()).contains(&format!("{GREEN}active{RESET}")),
        "active is not green:\n{shown:?}"
    );
    ensure!(
        row(idle_in_xact.pid()).contains(&format!("{YELLOW}idle in transaction{RESET}")),
        "idle in transaction is not yellow:\n{shown:?}"
    );
    let waiter = row(chain.waiters[0].pid());
    ensure!(
        waiter.contains(&format!("{RED}active{RESET}")) && waiter.contains(&format!("{RED}Lock:")),
        "the lock waiter is not red:\n{shown:?}"
    );
    ensure!(
        row(chain.holder.pid()).contains(&format!("{YELLOW}idle in transaction{RESET}")),
        "the lock holder (idle in transaction) is not yellow:\n{shown:?}"
    );
    // The colours do not move the columns: without them every line's separators stand
    // where the header's do.
    let plain = shown
        .replace(GREEN, "")
        .replace(YELLOW, "")
        .replace(RED, "")
        .replace(RESET, "");
    ensure!(!plain.contains('\x1b'), "other escapes: {shown:?}");
    ensure!(
        plain.contains("x\\x1b]0;pwned\\x07") && !plain.contains('\x07'),
        "the query is not shown escaped: {shown:?}"
    );
    let bars = |l: &str| -> Vec<usize> {
        l.char_indices()
            .filter(|(_, c)| *c == '|')
            .map(|(i, _)| i)
            .collect()
    };
    let lines: Vec<&str> = plain.lines().filter(|l| l.contains(" | ")).collect();
    ensure!(lines.len() >= 6, "{plain}");
    for l in &lines[1..] {
        // Positions in characters, up to the state column (the cells before it are ASCII).
        ensure!(
            bars(l)[..6] == bars(lines[0])[..6],
            "columns moved:\n{}\n{l}",
            lines[0]
        );
    }

    // NO_COLOR (any non-empty value) on a terminal: the same table, no escape.
    let mut no_colour = ls_allowing_colour(&sb, &[]);
    no_colour.env("NO_COLOR", "1");
    let shown = text_on_terminal(&no_colour)?;
    ensure!(
        !shown.contains('\x1b') && shown.contains("idle in transaction"),
        "NO_COLOR=1 on a terminal: {shown:?}"
    );
    // An empty NO_COLOR does not disable colours (no-color.org).
    let mut empty = ls_allowing_colour(&sb, &[]);
    empty.env("NO_COLOR", "");
    ensure!(
        text_on_terminal(&empty)?.contains(GREEN),
        "NO_COLOR= disabled colours"
    );

    // A pipe: no escape, even with colours allowed.
    let (code, out, err) = run(ls_allowing_colour(&sb, &[]))?;
    ensure!(code == 0, "exit {code}: {err}");
    ensure!(
        !out.contains('\x1b') && out.contains("idle in transaction"),
        "on a pipe: {out:?}"
    );

    // Data for scripts is never coloured, also on a terminal.
    for format in ["--json", "--csv"] {
        let shown = text_on_terminal(&ls_allowing_colour(&sb, &[format]))?;
        ensure!(
            !shown.contains('\x1b') && shown.contains("idle in transaction"),
            "{format} on a terminal: {shown:?}"
        );
    }
    Ok(())
}

//! Confirmation of destructive commands: asked on the terminal unless `-y`; refused up
//! front (exit 2, nothing touched) when there is no terminal to ask on.

use std::io::{IsTerminal, Write};

use anyhow::Context;

use crate::UsageError;

/// Fails unless someone can confirm `what`: `-y` was given, nothing will change
/// (`dry_run`), or stdin is a terminal. `dry_run_shows` names what `--dry-run` prints,
/// for commands that have it.
pub fn ensure_possible(
    yes: bool,
    dry_run: bool,
    what: &str,
    dry_run_shows: Option<&str>,
) -> anyhow::Result<()> {
    if yes || dry_run || std::io::stdin().is_terminal() {
        return Ok(());
    }
    let hint = dry_run_shows
        .map(|s| format!(", or --dry-run to only see the {s}"))
        .unwrap_or_default();
    anyhow::bail!(UsageError(format!(
        "refusing to {what} without confirmation: no terminal to ask on. Pass -y to proceed{hint}"
    )))
}

/// Asks `question` on the terminal after flushing `out`; on anything but yes, says that
/// nothing was changed and returns false. The answer is read on a thread of its own, so
/// that the caller's signal handling (Ctrl-C while asked) keeps working meanwhile.
pub async fn ask(out: &mut dyn Write, question: &str) -> anyhow::Result<bool> {
    out.flush()?;
    eprint!("{} [y/N] ", pgkill_core::printable(question));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        let read = std::io::stdin().read_line(&mut answer).map(|_| answer);
        let _ = tx.send(read);
    });
    let answer = rx
        .await
        .context("reading the answer")?
        .context("reading the answer")?;
    let yes = matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES");
    if !yes {
        writeln!(out, "Nothing was changed.")?;
        out.flush()?;
    }
    Ok(yes)
}

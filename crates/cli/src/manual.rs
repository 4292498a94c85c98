//! `pgkill completions SHELL` and `pgkill man`: shell completions and the manual page,
//! generated from the clap definition itself, so they can never disagree with the
//! commands and flags pgkill accepts. Neither connects to anything.

use std::io::{self, Write};

use clap::CommandFactory;

/// Arguments of `pgkill completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

/// The shells pgkill writes completions for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Arguments of `pgkill man` (none).
#[derive(Debug, clap::Args)]
pub struct ManArgs {}

/// Writes the completion script for `args.shell` to `out`.
pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = crate::Cli::command();
    // clap_complete writes to a `dyn Write` without reporting errors: render into memory
    // first, so that a closed pipe is seen (and is not an error, as everywhere).
    let mut script = Vec::new();
    clap_complete::generate(args.shell.generator(), &mut cmd, "pgkill", &mut script);
    out.write_all(&script)?;
    out.flush()
}

/// Writes the manual page, pgkill(1), as roff: the global options first, then a
/// subsection per command with its synopsis and its options (each command's own flags;
/// the global ones are those of the top).
pub fn man(out: &mut dyn Write) -> io::Result<()> {
    let top = crate::Cli::command();
    let page = clap_mangen::Man::new(top.clone());
    let mut roff = Vec::new();
    page.render_title(&mut roff)?;
    page.render_name_section(&mut roff)?;
    page.render_synopsis_section(&mut roff)?;
    page.render_description_section(&mut roff)?;
    page.render_options_section(&mut roff)?;
    roff.extend_from_slice(b".SH COMMANDS\n");
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("pgkill {}", sub.get_name());
        // The command alone (not built under the top, so without the global options,
        // and without clap's own `-h`: pgkill's `-h` is the host).
        let sub = sub.clone().bin_name(name.clone()).disable_help_flag(true);
        let sub_page = clap_mangen::Man::new(sub);
        let mut section = roff::Roff::new();
        section.control("SS", [name.as_str()]);
        section.to_writer(&mut roff)?;
        let mut part = Vec::new();
        sub_page.render_description_section(&mut part)?;
        sub_page.render_synopsis_section(&mut part)?;
        sub_page.render_options_section(&mut part)?;
        roff.extend_from_slice(&subsection_body(&part));
    }
    exit_status().to_writer(&mut roff)?;
    page.render_version_section(&mut roff)?;
    out.write_all(&roff)?;
    out.flush()
}

/// The EXIT STATUS section: the codes of the CLI contract (see the crate's docs).
fn exit_status() -> roff::Roff {
    let mut roff = roff::Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "acted on (or listed) at least one session"),
        ("1", "nothing matched"),
        (
            "2",
            "error: bad input, connection, privilege for the whole request, a statement that ran into --statement-timeout, Ctrl-C or SIGTERM",
        ),
        (
            "3",
            "partial failure: some targets could not be signalled or did not go away",
        ),
    ] {
        roff.control("TP", []).text([roff::roman(code)]).text([roff::roman(meaning)]);
    }
    roff
}

/// A command's sections as the body of its subsection: their `.SH` headings become
/// paragraphs with a bold title (`Options`, `Filters`), DESCRIPTION and SYNOPSIS
/// headings go (the subsection's title already names the command).
fn subsection_body(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut body = String::new();
    for line in text.lines() {
        match line.strip_prefix(".SH ") {
            Some("DESCRIPTION") => {}
            Some("SYNOPSIS") => body.push_str(".PP\n"),
            Some(heading) => {
                let heading = heading.trim_matches('"');
                let mut title = heading.to_lowercase();
                if let Some(first) = title.get(..1).map(str::to_uppercase) {
                    title.replace_range(..1, &first);
                }
                body.push_str(&format!(".PP\n\\fB{title}:\\fR\n"));
            }
            None => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsection_headings_become_bold_paragraphs() {
        let body = subsection_body(
            b".SH DESCRIPTION\nList sessions.\n.SH SYNOPSIS\n\\fBpgkill ls\\fR\n.SH OPTIONS\n.TP\n.SH FILTERS\n",
        );
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "List sessions.\n.PP\n\\fBpgkill ls\\fR\n.PP\n\\fBOptions:\\fR\n.TP\n.PP\n\\fBFilters:\\fR\n"
        );
    }
}

//! `pgkill completions` and `pgkill man` on the real binary: the scripts are valid for
//! their shells, the manual page names every command and every long flag of each (taken
//! from the clap definition itself, so this test cannot go stale) and `man` renders it
//! without a warning; neither needs (or tries) a connection.

use std::io::Write;
use std::process::{Command, Stdio};

use clap::CommandFactory;

mod support;

/// `pgkill ARGS…` with no terminal and a connection that could never work (a reserved
/// TEST-NET address, port 1): these commands must not try it.
fn pgkill(args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkill"));
    support::clean_env(&mut cmd);
    cmd.env("PGHOST", "192.0.2.1")
        .env("PGPORT", "1")
        .env("PGCONNECT_TIMEOUT", "30")
        .args(args)
        .stdin(Stdio::null());
    support::run(cmd)
}

/// The command names of the CLI (clap's own `help` aside).
fn command_names() -> Vec<String> {
    pgkill_cli::Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect()
}

#[test]
fn bash_completions_pass_bash_n() {
    let (code, script, err) = pgkill(&["completions", "bash"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &script).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "bash -n rejects the completions: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for name in command_names() {
        assert!(script.contains(&name), "bash completions lack {name}");
    }
}

#[test]
fn zsh_and_fish_completions_name_every_command() {
    for shell in ["zsh", "fish"] {
        let (code, script, err) = pgkill(&["completions", shell]).unwrap();
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(!script.trim().is_empty(), "{shell}: empty");
        for name in command_names() {
            assert!(script.contains(&name), "{shell} completions lack {name}");
        }
    }
    let (_, zsh, _) = pgkill(&["completions", "zsh"]).unwrap();
    assert!(zsh.starts_with("#compdef pgkill"), "{zsh}");
}

#[test]
fn unknown_shell_is_exit_2_with_the_choices() {
    let (code, out, err) = pgkill(&["completions", "nosuchshell"]).unwrap();
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("invalid value 'nosuchshell'") && err.contains("bash, zsh, fish"),
        "{err}"
    );
}

/// `--flag` as it stands in roff (`\-\-flag`, every dash escaped).
fn roff_flag(long: &str) -> String {
    format!("\\fB\\-\\-{}\\fR", long.replace('-', "\\-"))
}

#[test]
fn man_page_names_every_command_and_its_long_flags() {
    let (code, page, err) = pgkill(&["man"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "not roff"
    );
    // The global options, in the page's first part.
    let (top, commands) = page
        .split_once("\n.SH COMMANDS\n")
        .expect("a COMMANDS section");
    let cli = pgkill_cli::Cli::command();
    for arg in cli.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(top.contains(&roff_flag(long)), "global --{long} missing");
        }
    }
    // One subsection per command, with each of its flags.
    let sections: Vec<&str> = commands.split("\n.SS ").collect();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        let title = format!("\"pgkill {name}\"");
        let section = sections
            .iter()
            .find(|s| s.starts_with(&title) || s.starts_with(&format!(".SS {title}")))
            .unwrap_or_else(|| panic!("no subsection for `pgkill {name}`:\n{page}"));
        for arg in sub.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(
                    section.contains(&roff_flag(long)),
                    "`pgkill {name}`: --{long} missing from its subsection"
                );
            }
        }
    }
}

#[test]
fn man_renders_the_page_without_warnings() {
    let Ok(which) = Command::new("sh").args(["-c", "command -v man"]).output() else {
        panic!("cannot run sh");
    };
    assert!(
        which.status.success(),
        "`man` is not installed: this test renders pgkill's manual page with it. \
         Install man-db (`apt-get install man-db`; .ci/run does) and run it again."
    );
    let (code, page, err) = pgkill(&["man"]).unwrap();
    assert_eq!(code, 0, "{err}");
    // `man -l -`, as the README says, with groff's warnings on.
    let mut man = Command::new("man")
        .args(["--warnings", "-l", "-"])
        .env("MANWIDTH", "80")
        .env_remove("MAN_KEEP_FORMATTING")
        .env_remove("MANPAGER")
        .env("PAGER", "cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    man.stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = man.wait_with_output().unwrap();
    let (text, warnings) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "man -l failed: {warnings}");
    assert!(warnings.trim().is_empty(), "man -l warns:\n{warnings}");
    assert!(
        text.contains("NAME") && text.contains("pgkill - Get people out of PostgreSQL"),
        "{text}"
    );
    for name in command_names() {
        assert!(
            text.contains(&format!("pgkill {name}\n")),
            "rendered page lacks pgkill {name}"
        );
    }
}

//! pgkill's command-line front-end: argument parsing, dispatch and exit codes.
//!
//! Exit codes (the CLI contract): 0 acted on or listed at least one session, 1 nothing
//! matched, 2 error (bad input, connection, privilege), 3 partial failure.

mod demo;

use clap::{Parser, Subcommand};

/// Exit code for errors (bad input, connection failures, refused privileges).
pub const EXIT_ERROR: i32 = 2;

/// Get people out of PostgreSQL databases safely.
#[derive(Debug, Parser)]
#[command(name = "pgkill", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a throw-away local PostgreSQL full of realistic sessions to practise on.
    Demo(demo::DemoArgs),
}

/// Runs pgkill with the process's arguments and returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_tracing();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgkill: {e:#}");
            EXIT_ERROR
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGKILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

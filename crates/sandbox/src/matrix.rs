//! Runs a suite of integration tests once per PostgreSQL major version.
//!
//! A test binary with `harness = false` calls [`main`] with its cases; every case becomes
//! one test per version, named `case::pgNN`, so `cargo test` and `cargo nextest` run and
//! report them per version (nextest runs each in its own process, in parallel).
//!
//! Which versions: `$PGKILL_TEST_VERSIONS` = `all` (every supported major, 10–18) or a
//! list such as `12,15,18`; unset means every version installed here. A version that is
//! asked for but missing, or no PostgreSQL at all, is a failing test whose message says
//! how to get one: never a silent skip.

use std::future::Future;
use std::pin::Pin;

use libtest_mimic::{Arguments, Failed, Trial};
use pgkill_core::version::{NEWEST_SUPPORTED, OLDEST_SUPPORTED};

use crate::install::project_cache_dir;
use crate::Installation;

/// The future a case returns.
pub type CaseFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One integration test, run once per version.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The test's name.
    pub name: &'static str,
    /// The test body, given the installation to test.
    pub run: fn(Installation) -> CaseFuture,
}

/// One integration test run once with servers of several versions at a time.
#[derive(Debug, Clone, Copy)]
pub struct Mixed {
    /// The test's name.
    pub name: &'static str,
    /// The majors it wants, one server each; those not selected are replaced by the
    /// selected ones, in turn (the test's name says which it got).
    pub versions: &'static [u32],
    /// The test body, given one installation per server.
    pub run: fn(Vec<Installation>) -> CaseFuture,
}

/// Builds a list of [`Case`]s from `async fn name(pg: Installation) -> anyhow::Result<()>`.
#[macro_export]
macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$($crate::matrix::Case {
            name: stringify!($name),
            run: |pg| Box::pin($name(pg)),
        }),*]
    };
}

/// The versions to test, and the messages of versions asked for but missing.
pub fn selected_versions() -> (Vec<Installation>, Vec<(String, String)>) {
    let found = Installation::discover();
    let cache = project_cache_dir();
    let wanted = std::env::var("PGKILL_TEST_VERSIONS").unwrap_or_default();
    let wanted = wanted.trim();
    let fetch_hint = |what: &str| {
        format!(
            "{what}: run `scripts/fetch-postgres` (fetches PostgreSQL 10-18 into {}), or install one \
             (`apt-get install postgresql`), or set PGKILL_PG_BIN to a directory with `postgres` and `initdb`",
            cache.display()
        )
    };
    if wanted.is_empty() {
        if found.is_empty() {
            return (
                found,
                vec![(
                    "no_postgres_found".into(),
                    fetch_hint("no PostgreSQL server binaries found"),
                )],
            );
        }
        return (found, Vec::new());
    }
    let majors: Vec<u32> = if wanted == "all" {
        (OLDEST_SUPPORTED..=NEWEST_SUPPORTED).collect()
    } else {
        let mut majors = Vec::new();
        for part in wanted.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse() {
                Ok(m) => majors.push(m),
                Err(_) => {
                    return (
                        Vec::new(),
                        vec![(
                            "bad_PGKILL_TEST_VERSIONS".into(),
                            format!("cannot read {part:?}: use `all` or e.g. `12,15,18`"),
                        )],
                    )
                }
            }
        }
        majors
    };
    let mut selected = Vec::new();
    let mut missing = Vec::new();
    for major in majors {
        match found.iter().find(|i| i.version.major == major) {
            Some(inst) => selected.push(inst.clone()),
            None => missing.push((
                format!("missing_postgres::pg{major}"),
                fetch_hint(&format!(
                    "PostgreSQL {major} was asked for (PGKILL_TEST_VERSIONS) but is not installed"
                )),
            )),
        }
    }
    (selected, missing)
}

/// Runs `cases` on every selected version and exits with the harness's status.
pub fn main(cases: Vec<Case>) -> ! {
    main_with(cases, Vec::new())
}

/// The installations of a [`Mixed`] test: each wanted major if selected, else the
/// selected ones in turn (none when nothing is selected).
pub fn mixed_versions(wanted: &[u32], selected: &[Installation]) -> Vec<Installation> {
    let mut others = selected
        .iter()
        .filter(|i| !wanted.contains(&i.version.major))
        .chain(selected.iter())
        .cycle();
    wanted
        .iter()
        .filter_map(|m| {
            selected
                .iter()
                .find(|i| i.version.major == *m)
                .or_else(|| others.next())
                .cloned()
        })
        .collect()
}

/// [`main`], with tests that each run once over servers of several versions, named
/// `name::pg10+12+…` after the versions they got.
pub fn main_with(cases: Vec<Case>, mixed: Vec<Mixed>) -> ! {
    let args = Arguments::from_args();
    crate::sim::raise_fd_limit();
    let (versions, missing) = selected_versions();
    let mut trials = Vec::new();
    for (name, message) in missing {
        trials.push(Trial::test(name, move || Err(Failed::from(message))));
    }
    for case in &cases {
        for inst in &versions {
            let (case, inst) = (*case, inst.clone());
            let name = format!("{}::pg{}", case.name, inst.version.major);
            trials.push(Trial::test(name, move || run_case(case, inst)));
        }
    }
    if !versions.is_empty() {
        for m in mixed {
            let got = mixed_versions(m.versions, &versions);
            let majors: Vec<String> = got.iter().map(|i| i.version.major.to_string()).collect();
            let name = format!("{}::pg{}", m.name, majors.join("+"));
            trials.push(Trial::test(name, move || run_future((m.run)(got))));
        }
    }
    libtest_mimic::run(&args, trials).exit()
}

fn run_case(case: Case, inst: Installation) -> Result<(), Failed> {
    run_future((case.run)(inst))
}

fn run_future(future: CaseFuture) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("cannot start a tokio runtime: {e}")))?;
    let result = runtime.block_on(future);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result.map_err(|e| Failed::from(format!("{e:#}")))
}

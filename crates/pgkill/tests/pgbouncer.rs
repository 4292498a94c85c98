//! pgkill and PgBouncer, through the real binary against real PgBouncer processes (1.18
//! and 1.24.1, session and transaction pooling) in front of every PostgreSQL version
//! (issue 11). Pointed at the pooler's port by mistake, pgkill says in one line that
//! this is PgBouncer (and its version), not PostgreSQL, and exits 2, whether the pooler
//! refuses pgkill's startup options, drops them (`ignore_startup_parameters = options`),
//! or is its admin console; and it never changes a setting on a pooled server
//! connection.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use anyhow::{ensure, Result};
use pgkill_sandbox::{
    cases, roles, Bouncer, BouncerOptions, BouncerVersion, Installation, Options, PoolMode, Sandbox,
};

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![pointed_at_pgbouncer_it_says_so]);
}

async fn pointed_at_pgbouncer_it_says_so(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    for version in BouncerVersion::ALL {
        for mode in [PoolMode::Session, PoolMode::Transaction] {
            for ignore_options in [false, true] {
                let mut options = BouncerOptions::new(version, mode);
                options.default_pool_size = 1;
                if ignore_options {
                    options = options.ignore_startup_parameter("options");
                }
                let bouncer = Bouncer::start(&sb, &options)?;
                let through = support::Target {
                    host: bouncer.host().to_owned(),
                    port: bouncer.port(),
                    passfile: sb.passfile().to_path_buf(),
                };
                // The sandbox's password file names the server's port: give the password.
                let password = sb.password(roles::ADMIN).unwrap_or_default();
                for db in ["postgres", "pgbouncer"] {
                    let mut cmd =
                        support::pgkill_at(&through, roles::ADMIN, &["--maintenance-db", db, "ls"]);
                    cmd.env("PGPASSWORD", &password);
                    let (code, out, err) = support::run(cmd)?;
                    let case = format!(
                        "PgBouncer {} {mode:?}, ignore options {ignore_options}, dbname={db}",
                        version.as_str()
                    );
                    ensure!(
                        code == 2
                            && out.is_empty()
                            && err.lines().count() == 1
                            && err
                                .contains(&format!("is PgBouncer {}", bouncer.reported_version()))
                            && err.contains("a connection pooler, not PostgreSQL"),
                        "{case}: exit {code}\n{out}\n{err}"
                    );
                }
                // Nothing pgkill sent changed a pooled server connection: an
                // application through the pooler (one server connection per pool, so
                // the very one pgkill's statements ran on) finds the server's defaults.
                let app = bouncer.connect("postgres", roles::ADMIN).await?;
                let path: String = app.query_one("SHOW search_path", &[]).await?.get(0);
                let timeout: String = app.query_one("SHOW statement_timeout", &[]).await?.get(0);
                ensure!(
                    path == "\"$user\", public" && timeout == "0",
                    "PgBouncer {} {mode:?}: a pooled server connection has search_path {path:?}, statement_timeout {timeout:?}",
                    version.as_str()
                );
            }
        }
    }
    Ok(())
}

//! `pgkill demo`: a throw-away PostgreSQL full of realistic sessions to practise on.
//!
//! Starts a sandbox server (the newest version installed), creates a `shop` database with
//! a few application roles, opens the kinds of sessions DBAs meet (idle, idle in
//! transaction, a long report, a lock chain behind a migration, a reconnecting pool of
//! superuser clients), prints how to connect and what to try, reports each session that
//! gets ended, and cleans everything up on Ctrl-C.
//!
//! Only the user who runs the demo can log in: every role has a random password of this
//! demo's, in a password file only that user can read, which is what the printed
//! instructions (and the demo's own sessions) use.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use pgkill_core::quote_ident;
use pgkill_sandbox::sim::{self, PoolOptions, Session};
use pgkill_sandbox::{roles, Installation, Options, Sandbox};

/// Arguments of `pgkill demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// PostgreSQL major version to run (default: the newest installed).
    #[arg(long = "pg-version", value_name = "MAJOR")]
    pg_version: Option<u32>,
}

const DB: &str = "shop";
/// Application roles of the demo shop, each with its own application_name.
const APP_ROLES: [&str; 4] = ["shop_web", "shop_worker", "reporting", "migrations"];

/// Runs the demo until Ctrl-C or SIGTERM.
pub fn run(args: DemoArgs) -> anyhow::Result<i32> {
    let installation = match args.pg_version {
        Some(major) => Installation::for_major(major)?,
        None => Installation::newest()?,
    };
    println!("Starting a throw-away {installation} ...");
    let options = Options::default().logical_wal();
    let sandbox = Sandbox::start(&installation, &options).context("starting the demo server")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(&sandbox));
    runtime.shutdown_timeout(Duration::from_secs(2));
    println!(
        "Stopping the demo server and removing {} ...",
        sandbox.socket_dir().display()
    );
    sandbox.stop();
    println!("Done.");
    result.map(|()| 0)
}

struct DemoSession {
    label: String,
    session: Session,
    reported: bool,
}

async fn serve(sandbox: &Sandbox) -> anyhow::Result<()> {
    setup_database(sandbox).await?;
    let config = |role: &str, app: &str| {
        let mut c = sandbox.config(DB, role);
        c.application_name(app);
        c
    };

    let mut sessions = Vec::new();
    let mut add = |label: &str, session: Session| {
        sessions.push(DemoSession {
            label: label.to_owned(),
            session,
            reported: false,
        })
    };
    for _ in 0..3 {
        add(
            "idle web session",
            sim::idle(&config("shop_web", "shop-web")).await?,
        );
    }
    add(
        "worker idle in transaction (holds a row lock)",
        sim::idle_in_transaction(
            &config("shop_worker", "shop-worker"),
            Some("UPDATE orders SET status = 'packing' WHERE id = 1"),
        )
        .await?,
    );
    add(
        "worker idle in transaction",
        sim::idle_in_transaction(
            &config("shop_worker", "shop-worker"),
            Some("SELECT count(*) FROM orders"),
        )
        .await?,
    );
    add(
        "long report query",
        sim::running(
            &config("reporting", "nightly-report"),
            "SELECT sum(total), pg_sleep(86400) FROM orders /* nightly revenue report */",
        )
        .await?,
    );
    let chain = sim::lock_chain(&config("migrations", "shop-migrations"), "customers", 2).await?;
    add("migration holding a lock on customers", chain.holder);
    for waiter in chain.waiters {
        add("query waiting for the migration's lock", waiter);
    }
    let pool = sim::pool(
        &config(roles::SUPERUSER, "shop-pool"),
        PoolOptions {
            clients: 5,
            reconnect_delay: Duration::from_millis(1),
        },
    )
    .await?;

    print_instructions(sandbox, &sessions);

    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let mut last_pool = pool.stats();
    // Both listeners are created once, before the loop: a `ctrl_c()` future made anew in
    // every iteration would miss a SIGINT that arrives while a tick is being handled.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => {
                for s in sessions.iter_mut().filter(|s| !s.reported) {
                    if let Some(ending) = s.session.ended() {
                        s.reported = true;
                        println!(
                            "demo: session {} ({}) ended: {} {}",
                            s.session.pid(),
                            s.label,
                            ending.sqlstate.as_deref().unwrap_or("-"),
                            ending.message
                        );
                    }
                }
                let now = pool.stats();
                if now.connects != last_pool.connects || now.refused != last_pool.refused {
                    println!(
                        "demo: pool: {} connected, {} connections so far, lost {:?}, refused {:?}",
                        now.connected, now.connects, now.ended, now.refused
                    );
                    last_pool = now;
                }
                let _ = std::io::stdout().flush();
            }
        }
    }
    println!();
    pool.stop().await;
    drop(sessions);
    Ok(())
}

async fn setup_database(sandbox: &Sandbox) -> anyhow::Result<()> {
    for role in APP_ROLES {
        sandbox
            .create_role(role, "LOGIN")
            .await
            .with_context(|| format!("creating role {role}"))?;
    }
    sandbox.create_database(DB, None).await?;
    let shop = sandbox.admin(DB).await?;
    shop.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, total numeric, status text);
         INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 100) g;
         INSERT INTO orders SELECT g, 1 + g % 100, round((random() * 200)::numeric, 2), 'new' FROM generate_series(1, 1000) g;",
    )
    .await
    .context("creating the shop tables")?;
    for role in APP_ROLES {
        shop.batch_execute(&format!(
            "GRANT ALL ON ALL TABLES IN SCHEMA public TO {r}; GRANT CREATE, USAGE ON SCHEMA public TO {r}",
            r = quote_ident(role)?
        ))
        .await
        .with_context(|| format!("granting {role} access"))?;
    }
    Ok(())
}

/// How the printed commands call pgkill: `pgkill` when that is what `PATH` finds, else
/// the path of the binary that is running (quoted for the shell if it needs it), so that
/// every suggestion works when pasted.
fn program() -> String {
    let running = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|p| on_path("pgkill", &p));
    invocation(running.as_deref(), on_path.as_deref())
}

/// The first executable file `name` in the directories of `path` (as a shell looks).
fn on_path(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `pgkill` if `on_path` is the `running` binary itself, else `running`'s path for a
/// shell (plain `pgkill` if even that is unknown).
fn invocation(running: Option<&Path>, on_path: Option<&Path>) -> String {
    let Some(running) = running else {
        return "pgkill".to_owned();
    };
    let same = |p: &Path| match (p.canonicalize(), running.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if on_path.is_some_and(same) {
        return "pgkill".to_owned();
    }
    let text = running.to_string_lossy();
    // Only a NUL cannot be quoted, and no path holds one.
    shlex::try_quote(&text)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| text.into_owned())
}

fn print_instructions(sandbox: &Sandbox, sessions: &[DemoSession]) {
    let (host, port) = (sandbox.host(), sandbox.port());
    let passfile = sandbox.passfile().display();
    let admin = roles::ADMIN;
    let pgkill = program();
    println!();
    println!(
        "PostgreSQL {} is running on {host}:{port} (data in {}).",
        sandbox.version(),
        sandbox.data_dir().display()
    );
    println!("Database `{DB}` has these sessions:");
    for s in sessions {
        println!("  pid {:>6}  {}", s.session.pid(), s.label);
    }
    println!("  and a pool of 5 superuser clients (application_name shop-pool) that reconnect within 1 ms.");
    println!();
    println!("Connect (every role has a random password, in a file only you can read):");
    println!("  export PGHOST={host} PGPORT={port} PGUSER={admin} PGPASSFILE={passfile}");
    println!("  psql {DB}");
    println!("or in one line:");
    println!("  PGPASSFILE={passfile} psql -h {host} -p {port} -U {admin} {DB}");
    println!();
    println!("Try (after the export above):");
    println!("  psql -c \"SELECT pid, usename, application_name, state, query FROM pg_stat_activity WHERE datname = '{DB}'\"");
    println!("  {pgkill} ls --db {DB}");
    println!("  {pgkill} kill --db {DB} --state idle-in-transaction --dry-run");
    println!("  {pgkill} kill --db {DB} --blocking");
    println!("  {pgkill} top --db {DB}");
    println!("  {pgkill} drop {DB}      # beats the reconnecting pool");
    println!();
    println!(
        "Sessions that get ended are reported below. Press Ctrl-C to stop and remove everything."
    );
    println!("Ready.");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_name_the_running_binary_unless_path_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("pgkill");
        std::fs::write(&exe, "").unwrap();
        let exe = exe.canonicalize().unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "").unwrap();
        // PATH finds this very binary (also through a link): plain `pgkill`.
        assert_eq!(invocation(Some(&exe), Some(&exe)), "pgkill");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        assert_eq!(invocation(Some(&exe), Some(&link)), "pgkill");
        // Another pgkill, or none: the path, quoted when the shell needs it.
        let shown = exe.display().to_string();
        assert_eq!(invocation(Some(&exe), Some(&other)), shown);
        assert_eq!(invocation(Some(&exe), None), shown);
        assert_eq!(
            invocation(Some(Path::new("/opt/my tools/pgkill")), None),
            "'/opt/my tools/pgkill'"
        );
        assert_eq!(
            invocation(Some(Path::new("/opt/it's/pgkill")), None),
            "\"/opt/it's/pgkill\""
        );
        assert_eq!(invocation(None, None), "pgkill");
    }

    #[test]
    fn path_lookup_takes_the_first_executable() {
        use std::os::unix::fs::PermissionsExt;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let not_executable = a.path().join("pgkill");
        std::fs::write(&not_executable, "").unwrap();
        let executable = b.path().join("pgkill");
        std::fs::write(&executable, "").unwrap();
        std::fs::set_permissions(&executable, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(on_path("pgkill", &path), Some(executable));
        assert_eq!(on_path("pgkill", std::ffi::OsStr::new("")), None);
    }
}

//! Regression tests for a privilege escalation (issue 8, finding 1): a role that can create
//! functions or operators where pgkill's sessions look them up must never get them run
//! with the privileges of the superuser running pgkill. Every command of the binary runs
//! against a maintenance database laid with traps; afterwards no trap has fired and the
//! attacker is still not a superuser. A control on an ordinary (unpinned) superuser
//! session shows that each trap does fire there, so the tests can fail.
//!
//! Who can lay traps in `postgres`'s `public` schema: on 10–14 any role (PUBLIC has CREATE
//! there), on 15+ the database's owner. The owner can also set the database's
//! `search_path` to put `public` before `pg_catalog`, which makes even exact-signature
//! copies of catalog functions and operators win.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use tokio_postgres::Client;

mod support;

fn main() {
    pgkill_sandbox::matrix::main(cases![
        better_matching_public_functions_never_run_as_the_caller,
        a_database_search_path_cannot_redirect_pgkill,
    ]);
}

/// Catalog functions pgkill calls, as copies with signatures that match pgkill's calls
/// better than (or exactly like) `pg_catalog`'s: `(name, argument types, result type,
/// what the copy returns)`.
const SHADOWS: &[(&str, &str, &str, &str)] = &[
    // Untyped literals match (text, text) exactly: the reported escalation.
    ("pg_has_role", "text, text", "boolean", "true"),
    ("pg_has_role", "name, text", "boolean", "true"),
    ("pg_has_role", "oid, text", "boolean", "true"),
    (
        "current_setting",
        "text",
        "text",
        "pg_catalog.current_setting($1)",
    ),
    (
        "pg_backend_pid",
        "",
        "integer",
        "pg_catalog.pg_backend_pid()",
    ),
    ("pg_terminate_backend", "integer", "boolean", "false"),
    ("pg_cancel_backend", "integer", "boolean", "false"),
    (
        "pg_blocking_pids",
        "integer",
        "integer[]",
        "'{}'::integer[]",
    ),
    (
        "clock_timestamp",
        "",
        "timestamptz",
        "pg_catalog.clock_timestamp()",
    ),
    (
        "current_database",
        "",
        "name",
        "pg_catalog.current_database()",
    ),
    (
        "pg_get_userbyid",
        "oid",
        "name",
        "pg_catalog.pg_get_userbyid($1)",
    ),
    ("host", "inet", "text", "pg_catalog.host($1)"),
];

/// Operators pgkill's statements use, for the attack that also moves `search_path`.
const OPERATORS: &[(&str, &str, &str)] = &[
    ("=", "name", "name"),
    ("=", "text", "text"),
    ("=", "integer", "integer"),
    ("=", "name", "text"),
    ("<>", "integer", "integer"),
    ("~", "text", "text"),
];

/// Lays the traps as `attacker` in `postgres`: each shadow records its name in
/// `public.trap` and makes the attacker a superuser, if it ever runs as one.
async fn lay_traps(sb: &Sandbox, attacker: &str, operators: bool) -> Result<()> {
    let c = sb.connect("postgres", attacker).await?;
    let who = pgkill_core::quote_ident(attacker)?;
    let mut sql = String::from(
        "CREATE TABLE public.trap (hit text);
         GRANT INSERT, SELECT ON public.trap TO PUBLIC;\n",
    );
    let body = |label: &str, result: &str| -> Result<String> {
        Ok(format!(
            "AS $$ INSERT INTO public.trap VALUES ({} || ' by ' || pg_catalog.current_setting('application_name') || ': ' || pg_catalog.current_query()); ALTER ROLE {who} SUPERUSER; SELECT {result} $$",
            pgkill_core::quote_literal(label)?
        ))
    };
    for (name, args, returns, result) in SHADOWS {
        sql.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {returns} LANGUAGE sql {};\n",
            body(&format!("{name}({args})"), result)?
        ));
    }
    if operators {
        for (i, (op, left, right)) in OPERATORS.iter().enumerate() {
            // Compare as text: name = text has no catalog function before 12.
            let compare = "pg_catalog.texteq($1::pg_catalog.text, $2::pg_catalog.text)";
            sql.push_str(&format!(
                "CREATE FUNCTION public.trap_op{i}({left}, {right}) RETURNS boolean LANGUAGE sql {};
                 CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, PROCEDURE = public.trap_op{i});\n",
                body(
                    &format!("operator {op}({left}, {right})"),
                    &match *op {
                        "<>" => format!("NOT {compare}"),
                        "~" => "pg_catalog.textregexeq($1::pg_catalog.text, $2::pg_catalog.text)".to_owned(),
                        _ => compare.to_owned(),
                    }
                )?
            ));
        }
    }
    c.batch_execute(&sql).await?;
    Ok(())
}

/// What the traps caught: the functions that ran, and whether the attacker got superuser.
async fn caught(admin: &Client, attacker: &str) -> Result<(Vec<String>, bool)> {
    // This test's own queries must not walk into the traps either.
    admin
        .batch_execute("SET search_path = pg_catalog, pg_temp")
        .await?;
    let hits = admin
        .query("SELECT DISTINCT hit FROM public.trap ORDER BY 1", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let superuser = admin
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&attacker],
        )
        .await?
        .get(0);
    Ok((hits, superuser))
}

/// Shows that the traps work: a plain superuser session (no pinned search_path) calling
/// what pgkill used to call unqualified runs the attacker's code. Then clears the traps'
/// record and the attacker's superuser again.
async fn control(sb: &Sandbox, attacker: &str, probe: &str) -> Result<()> {
    let admin = sb.admin("postgres").await?;
    admin.batch_execute(probe).await?;
    let (hits, superuser) = caught(&admin, attacker).await?;
    ensure!(
        !hits.is_empty() && superuser,
        "control: the traps did not fire on an unpinned session ({hits:?}, superuser {superuser})"
    );
    admin
        .batch_execute(&format!(
            "TRUNCATE public.trap; ALTER ROLE {} NOSUPERUSER",
            pgkill_core::quote_ident(attacker)?
        ))
        .await?;
    Ok(())
}

/// Sessions for the commands to work on, in a database `victim` (made before the traps:
/// the simulator's own probe connects to `postgres`).
struct Victims {
    idle: sim::Session,
    _chain: sim::LockChain,
}

async fn victims(sb: &Sandbox) -> Result<Victims> {
    sb.create_database("victim", None).await?;
    Ok(Victims {
        idle: sim::idle(&sb.config("victim", roles::PLAIN)).await?,
        _chain: sim::lock_chain(&sb.config("victim", roles::SUPERUSER), "t", 1).await?,
    })
}

/// Runs every command of the binary as the bootstrap superuser against `postgres`, each
/// doing its real work on the database `victim` (sessions ended, fenced, renamed, dropped).
async fn every_command(sb: &Sandbox, victims: Victims) -> Result<()> {
    let state = tempfile::tempdir()?;
    let run = |args: &[&str]| -> Result<(i32, String, String)> {
        let mut cmd: Command = support::pgkill(sb, roles::ADMIN, args);
        cmd.env("PGKILL_STATE_DIR", state.path());
        support::run(cmd)
    };
    let expect = |args: &[&str], code: i32| -> Result<String> {
        let (got, out, err) = run(args)?;
        ensure!(
            got == code,
            "{args:?}: exit {got}, not {code}\n{out}\n{err}"
        );
        Ok(out)
    };
    let plain = sb.config("victim", roles::PLAIN);
    let idle = &victims.idle;

    expect(&["ls"], 0)?;
    expect(&["ls", "--json"], 0)?;
    expect(&["ls", "--csv", "--all-backends"], 0)?;
    expect(&["ls", "--blocking", "--include-superusers"], 0)?;
    // Every filter at once (nothing matches all of them).
    expect(
        &[
            "ls",
            "--db",
            "victim",
            "--user",
            "nobody",
            "--app",
            "a*",
            "--client",
            "127.0.0.1/32",
            "--client",
            "local",
            "--state",
            "idle",
            "--pid",
            "1",
            "--idle-for",
            "1s",
            "--xact-older",
            "1s",
            "--query-older",
            "1s",
            "--backend-older",
            "1s",
            "--query",
            "x",
            "--blocking",
        ],
        1,
    )?;
    expect(
        &["cancel", "--db", "victim", "--user", roles::PLAIN, "-y"],
        0,
    )?;
    let out = expect(&["kill", "--pid", &idle.pid().to_string(), "-y"], 0)?;
    ensure!(
        idle.wait_ended(Duration::from_secs(5)).await.is_some(),
        "kill did not end the session: {out}"
    );
    let spare = sim::idle(&plain).await?;
    expect(&["free-slot", roles::PLAIN, "-y"], 0)?;
    ensure!(spare.wait_ended(Duration::from_secs(5)).await.is_some());
    expect(&["drain", "victim", "-y"], 0)?;
    expect(&["unfence", "victim"], 0)?;
    expect(&["rename", "victim", "victim2", "-y"], 0)?;
    expect(&["drop", "victim2", "--dry-run"], 0)?;
    expect(&["drop", "victim2", "-y"], 0)?;
    Ok(())
}

async fn better_matching_public_functions_never_run_as_the_caller(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let victims = victims(&sb).await?;
    // On 15+ only the database's owner may create in public.
    let attacker = if sb.version().major >= 15 {
        admin
            .batch_execute(&format!(
                "ALTER DATABASE postgres OWNER TO {}",
                roles::OWNER
            ))
            .await?;
        roles::OWNER
    } else {
        roles::PLAIN
    };
    lay_traps(&sb, attacker, false).await?;
    // What pgkill's capability check used to say.
    control(
        &sb,
        attacker,
        "SELECT pg_has_role('pg_signal_backend', 'USAGE')",
    )
    .await?;
    every_command(&sb, victims).await?;
    let (hits, superuser) = caught(&admin, attacker).await?;
    ensure!(
        hits.is_empty() && !superuser,
        "pgkill ran the attacker's functions {hits:?} (attacker superuser: {superuser})"
    );
    Ok(())
}

async fn a_database_search_path_cannot_redirect_pgkill(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let victims = victims(&sb).await?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE postgres OWNER TO {}",
            roles::OWNER
        ))
        .await?;
    lay_traps(&sb, roles::OWNER, true).await?;
    sb.connect("postgres", roles::OWNER)
        .await?
        .batch_execute("ALTER DATABASE postgres SET search_path = public, pg_catalog")
        .await?;
    // With public first, even exact copies of catalog functions and operators win.
    control(
        &sb,
        roles::OWNER,
        "SELECT pg_backend_pid() FROM pg_catalog.pg_roles WHERE rolname = current_user",
    )
    .await?;
    every_command(&sb, victims).await?;
    let admin = sb.admin("postgres").await?;
    let (hits, superuser) = caught(&admin, roles::OWNER).await?;
    ensure!(
        hits.is_empty() && !superuser,
        "pgkill ran the attacker's functions {hits:?} (attacker superuser: {superuser})"
    );
    Ok(())
}

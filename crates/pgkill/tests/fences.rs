//! The fence record on the server, through the real binary on every PostgreSQL version:
//! a database is never left locked out with no record (a second drain, a drain then a
//! rename, a colleague's `unfence` from another machine), a deliberate fence is a note and
//! a dead pgkill's fence a warning, and the local state directory of older versions can
//! neither break recovery nor be used to make pgkill write or restore what it should not
//! (issue 8 findings 3–5, issue 9 defects 1, 2 and 6); and a drain waiting for
//! transactions polls gently (issue 9, defect 7).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use pgkill_sandbox::{cases, roles, sim, Installation, Options, Sandbox};
use serde_json::Value;
use tokio_postgres::Client;

mod support;

use support::{db_row, wait_fenced, DbRow};

fn main() {
    pgkill_sandbox::matrix::main(cases![
        drain_twice_then_unfence_restores_the_original,
        drain_then_rename_keeps_the_fence_under_the_new_name,
        unfence_from_another_machine_restores_the_fence,
        a_planned_fence_is_a_note_and_a_dead_ones_a_warning,
        junk_in_the_state_directory_does_not_break_recovery,
        no_local_file_is_written_and_symlinks_are_not_followed,
        a_legacy_record_is_adopted_only_on_its_cluster,
        drain_waits_for_transactions_without_hammering_the_server,
        database_commands_speak_json,
    ]);
}

/// The binary against one sandbox with a state directory (and HOME) of its own: a
/// "machine".
struct Machine {
    home: tempfile::TempDir,
    target: support::Target,
}

impl Machine {
    fn new(sb: &Sandbox) -> Result<Machine> {
        let home = tempfile::tempdir()?;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))?;
        Ok(Machine {
            home,
            target: support::Target::of(sb),
        })
    }

    fn state(&self) -> std::path::PathBuf {
        self.home.path().join("state")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = support::pgkill_at(&self.target, roles::ADMIN, args);
        cmd.env("HOME", self.home.path())
            .env("PGKILL_STATE_DIR", self.state());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<(i32, String, String)> {
        support::run(self.cmd(args))
    }

    fn ok(&self, args: &[&str]) -> Result<(String, String)> {
        let (code, out, err) = self.run(args)?;
        ensure!(code == 0, "{args:?}: exit {code}\n{out}\n{err}");
        Ok((out, err))
    }
}

/// A database with settings of its own to restore.
async fn database(sb: &Sandbox, admin: &Client, name: &str) -> Result<DbRow> {
    sb.create_database(name, None).await?;
    let q = pgkill_core::quote_ident(name)?;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {q} CONNECTION LIMIT 70; REVOKE CONNECT ON DATABASE {q} FROM PUBLIC;
             GRANT CONNECT ON DATABASE {q} TO {}; COMMENT ON DATABASE {q} IS 'orders, since 2019'",
            roles::PLAIN
        ))
        .await?;
    db_row(admin, name)
        .await?
        .ok_or_else(|| anyhow!("no database {name}"))
}

async fn drain_twice_then_unfence_restores_the_original(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "shop").await?;
    let m = Machine::new(&sb)?;
    m.ok(&["drain", "shop", "-y"])?;
    let (out, _) = m.ok(&["drain", "shop", "-y"])?;
    ensure!(
        out.contains("already fenced (since") && out.contains("`pgkill drain`"),
        "the second drain does not say the database was already fenced:\n{out}"
    );
    let fenced = db_row(&admin, "shop").await?;
    ensure!(
        fenced.as_ref().is_some_and(|r| !r.0),
        "not fenced: {fenced:?}"
    );
    let (out, _) = m.ok(&["unfence", "shop"])?;
    ensure!(out.contains("restored"), "{out}");
    ensure!(
        db_row(&admin, "shop").await? == Some(before),
        "settings not exactly as before the first drain"
    );
    Ok(())
}

async fn drain_then_rename_keeps_the_fence_under_the_new_name(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "a").await?;
    let m = Machine::new(&sb)?;
    m.ok(&["drain", "a", "-y"])?;
    let (out, _) = m.ok(&["rename", "a", "b", "-y"])?;
    ensure!(out.contains("b stays fenced"), "{out}");
    let b = db_row(&admin, "b").await?.ok_or_else(|| anyhow!("no b"))?;
    ensure!(!b.0, "b is not fenced after the rename: {b:?}");
    let (code, _, err) = m.run(&["unfence", "a"])?;
    ensure!(code == 2 && err.contains("does not exist"), "{code} {err}");
    let (out, _) = m.ok(&["unfence", "b"])?;
    ensure!(out.contains("restored"), "{out}");
    ensure!(
        db_row(&admin, "b").await? == Some(before),
        "b's settings are not those a had before the drain"
    );
    Ok(())
}

async fn unfence_from_another_machine_restores_the_fence(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "shop").await?;
    let laptop = Machine::new(&sb)?;
    let colleague = Machine::new(&sb)?;
    laptop.ok(&["drain", "shop", "-y"])?;
    // The laptop dies with the drain half done: its record says so, from another host.
    admin
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('COMMENT ON DATABASE shop IS %L',
               replace(replace(shobj_description((SELECT oid FROM pg_database WHERE datname = 'shop'), 'pg_database'),
                 '\"state\":\"held\"', '\"state\":\"in_progress\"'),
                 '\"host\":\"', '\"host\":\"dead-laptop-')); END $$",
        )
        .await?;
    let (_, err) = colleague.ok(&["ls"])?;
    ensure!(
        err.contains("warning") && err.contains("another machine") && err.contains("dead-laptop-"),
        "{err}"
    );
    let (out, _) = colleague.ok(&["unfence", "shop"])?;
    ensure!(out.contains("restored"), "{out}");
    ensure!(db_row(&admin, "shop").await? == Some(before));
    let (_, err) = laptop.ok(&["ls"])?;
    ensure!(!err.contains("shop"), "a fence is still reported: {err}");
    Ok(())
}

async fn a_planned_fence_is_a_note_and_a_dead_ones_a_warning(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "busy").await?;
    let m = Machine::new(&sb)?;
    m.ok(&["drain", "busy", "-y"])?;
    let (_, err) = m.ok(&["ls"])?;
    ensure!(
        err.contains("note: database busy is fenced")
            && err.contains("by `pgkill drain`")
            && !err.contains("warning"),
        "a finished drain reads like a crash:\n{err}"
    );
    let (out, err) = m.ok(&["unfence", "busy"])?;
    ensure!(
        !format!("{out}{err}").contains("run `pgkill unfence"),
        "unfence tells the user to run unfence:\n{out}{err}"
    );
    let (_, err) = m.ok(&["ls"])?;
    ensure!(!err.contains("busy"), "{err}");
    // A drain killed mid-way is a warning.
    let _open = sim::idle_in_transaction(&sb.config("busy", roles::PLAIN), None).await?;
    let mut child = m
        .cmd(&["drain", "busy", "--grace", "60s", "-y"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_fenced(&admin, "busy").await?;
    child.kill()?;
    child.wait()?;
    let (_, err) = m.ok(&["ls"])?;
    ensure!(
        err.contains("warning") && err.contains("gone") && err.contains("pgkill unfence busy"),
        "{err}"
    );
    m.ok(&["unfence", "busy"])?;
    ensure!(db_row(&admin, "busy").await? == Some(before));
    Ok(())
}

fn private_dir(path: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

async fn junk_in_the_state_directory_does_not_break_recovery(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "calm").await?;
    let held = database(&sb, &admin, "held").await?;
    let m = Machine::new(&sb)?;
    private_dir(&m.state())?;
    std::fs::write(m.state().join("junk.json"), "{ this is not a record")?;
    m.ok(&["drain", "held", "-y"])?;
    // Ctrl-C during drop --grace restores from what pgkill holds.
    let _open = sim::idle_in_transaction(&sb.config("calm", roles::PLAIN), None).await?;
    let child = m
        .cmd(&["drop", "calm", "--grace", "60s", "-y"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_fenced(&admin, "calm").await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let out = child.wait_with_output()?;
    let err = String::from_utf8(out.stderr)?;
    ensure!(
        out.status.code() == Some(2) && err.contains("interrupted") && err.contains("restored"),
        "{err}"
    );
    ensure!(db_row(&admin, "calm").await? == Some(before));
    // The junk is named and skipped; the real fence is still reported and unfenced.
    let (_, err) = m.ok(&["ls"])?;
    ensure!(
        err.contains("junk.json") && err.contains("database held is fenced"),
        "{err}"
    );
    m.ok(&["unfence", "held"])?;
    ensure!(db_row(&admin, "held").await? == Some(held));
    Ok(())
}

async fn no_local_file_is_written_and_symlinks_are_not_followed(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "shop").await?;
    let oid: u32 = admin
        .query_one("SELECT oid FROM pg_database WHERE datname = 'shop'", &[])
        .await?
        .get(0);
    let m = Machine::new(&sb)?;
    private_dir(&m.state())?;
    // A root-only file, and links where older versions wrote their temporary files.
    let secret = m.home.path().join("secret");
    std::fs::write(&secret, "root only")?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let server = format!(
        "{}_{}",
        m.target.host.replace(['/', ':'], "_"),
        m.target.port
    );
    for name in [
        format!("{server}-{oid}.json.tmp"),
        format!("{server}-{oid}.json"),
    ] {
        std::os::unix::fs::symlink(&secret, m.state().join(name))?;
    }
    let listing = || -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(m.state())?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        Ok(names)
    };
    let planted = listing()?;
    m.ok(&["drain", "shop", "-y"])?;
    m.ok(&["unfence", "shop"])?;
    ensure!(
        std::fs::read_to_string(&secret)? == "root only",
        "the target was written"
    );
    ensure!(
        listing()? == planted,
        "pgkill wrote into the state directory"
    );
    ensure!(db_row(&admin, "shop").await? == Some(before));
    // A state directory others can write is not read at all.
    std::fs::set_permissions(m.state(), std::fs::Permissions::from_mode(0o777))?;
    let (_, err) = m.ok(&["ls"])?;
    ensure!(err.contains("writable by nobody else"), "{err}");
    Ok(())
}

/// A fence record as pgkill 0.1 wrote it to its local journal.
fn legacy_record(server: &str, sysid: &str, oid: u32, name: &str) -> String {
    format!(
        r#"{{"server":"{server}","system_identifier":"{sysid}","oid":{oid},"name":"{name}",
  "original":{{"allow_connections":true,"connection_limit":-1,"acl":null,"is_template":false}},
  "fenced":{{"allow_connections":false,"connection_limit":-1,"acl":null,"is_template":false}},
  "operation":"drain","pid":999999,"at":"2026-11-30T12:00:00Z"}}"#
    )
}

async fn a_legacy_record_is_adopted_only_on_its_cluster(pg: Installation) -> Result<()> {
    let a = Sandbox::start(&pg, &Options::default())?;
    let b = Sandbox::start(&pg, &Options::default())?;
    let (admin_a, admin_b) = (a.admin("postgres").await?, b.admin("postgres").await?);
    let mut oids = Vec::new();
    let mut sysids = Vec::new();
    for (sb, admin) in [(&a, &admin_a), (&b, &admin_b)] {
        sb.create_database("x", None).await?;
        admin
            .batch_execute("ALTER DATABASE x ALLOW_CONNECTIONS false")
            .await?;
        let row = admin
            .query_one(
                "SELECT d.oid, c.system_identifier::text FROM pg_database d, pg_control_system() c WHERE d.datname = 'x'",
                &[],
            )
            .await?;
        oids.push(row.get::<_, u32>(0));
        sysids.push(row.get::<_, String>(1));
    }
    // The record was taken on another cluster, but names the address where B now answers
    // (a proxy whose backend changed). (Sandboxes are copies of one template and share
    // its system identifier, so the other cluster's is made up.)
    let elsewhere = format!("{}0", sysids[1]);
    let on_b = Machine::new(&b)?;
    private_dir(&on_b.state())?;
    let file = on_b.state().join("old.json");
    let b_server = format!("{}:{}", b.host(), b.port());
    std::fs::write(&file, legacy_record(&b_server, &elsewhere, oids[1], "x"))?;
    let (out, err) = on_b.ok(&["unfence", "x"])?;
    ensure!(
        err.contains("not adopting") && err.contains(&elsewhere) && out.contains("nothing to do"),
        "{out}\n{err}"
    );
    ensure!(
        db_row(&admin_b, "x").await?.is_some_and(|r| !r.0),
        "B's x was changed by a record taken on another cluster"
    );
    ensure!(file.exists(), "the record was deleted");
    // On A, its own cluster, the same record is adopted and restored.
    let on_a = Machine::new(&a)?;
    private_dir(&on_a.state())?;
    let a_server = format!("{}:{}", a.host(), a.port());
    let file = on_a.state().join("old.json");
    std::fs::write(&file, legacy_record(&a_server, &sysids[0], oids[0], "x"))?;
    let (out, err) = on_a.ok(&["unfence", "x"])?;
    ensure!(
        err.contains("adopted") && out.contains("restored"),
        "{out}\n{err}"
    );
    ensure!(db_row(&admin_a, "x")
        .await?
        .is_some_and(|r| r.0 && r.4.is_none()));
    ensure!(!file.exists(), "the adopted record's file is still there");
    Ok(())
}

async fn drain_waits_for_transactions_without_hammering_the_server(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default().setting("log_statement", "all"))?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "slow").await?;
    // Open for the whole grace period: the drain can only wait.
    let open = sim::idle_in_transaction(&sb.config("slow", roles::PLAIN), None).await?;
    let m = Machine::new(&sb)?;
    let grace = 3;
    let (out, _) = m.ok(&[
        "drain",
        "slow",
        "--grace",
        &format!("{grace}s"),
        "--then-unfence",
        "-y",
    ])?;
    ensure!(out.contains("1 open transaction(s) rolled back"), "{out}");
    ensure!(open.wait_ended(Duration::from_secs(5)).await.is_some());
    // Each poll of the grace period is one statement (and one progress redraw).
    let log = std::fs::read_to_string(sb.log_file())?;
    let polls = log
        .lines()
        .filter(|l| l.contains("xact_start IS NULL AND pg_catalog.pg_terminate_backend"))
        .count();
    // 10 a second, and the few fast ones right after the fence.
    ensure!(
        (grace * 5..=grace * 10 + 6).contains(&polls),
        "{polls} polls in a {grace} s grace period"
    );
    ensure!(db_row(&admin, "slow").await? == Some(before));
    Ok(())
}

async fn database_commands_speak_json(pg: Installation) -> Result<()> {
    let sb = Sandbox::start(&pg, &Options::default())?;
    let admin = sb.admin("postgres").await?;
    let before = database(&sb, &admin, "shop").await?;
    let _idle = sim::idle(&sb.config("shop", roles::PLAIN)).await?;
    let m = Machine::new(&sb)?;
    let json = |args: &[&str]| -> Result<(i32, Value)> {
        let (code, out, err) = m.run(args)?;
        let doc = serde_json::from_str(&out)
            .map_err(|e| anyhow!("{args:?}: not one JSON document ({e}):\n{out}\n{err}"))?;
        Ok((code, doc))
    };
    let (code, d) = json(&["drop", "shop", "--dry-run", "--json"])?;
    ensure!(
        code == 0 && d["dry_run"] == true && d["result"].is_null(),
        "{d}"
    );
    ensure!(
        d["preflight"]["settings"]["connection_limit"] == 70
            && d["preflight"]["ending"]["sessions"] == 1
            && d["preflight"]["refusals"]
                .as_array()
                .is_some_and(Vec::is_empty),
        "{d}"
    );
    let (code, d) = json(&["drain", "shop", "-y", "--json"])?;
    ensure!(
        code == 0 && d["action"] == "drain" && d["database"] == "shop",
        "{d}"
    );
    ensure!(
        d["result"]["steps"] == serde_json::json!(["fenced", "drained", "left_fenced"])
            && d["result"]["sessions_ended"]["total"] == 1
            && d["result"]["left_fenced"] == true,
        "{d}"
    );
    let (code, d) = json(&["unfence", "shop", "--json"])?;
    ensure!(
        code == 0
            && d["result"]["steps"] == serde_json::json!(["unfenced"])
            && d["result"]["restore"]["allow_connections"] == true
            && d["result"]["restore"]["record_removed"] == true
            && d["result"]["already_fenced"]["operation"] == "drain",
        "{d}"
    );
    ensure!(db_row(&admin, "shop").await? == Some(before));
    let (code, d) = json(&["rename", "shop", "store", "-y", "--json"])?;
    ensure!(
        code == 0
            && d["new_name"] == "store"
            && d["result"]["steps"]
                == serde_json::json!(["fenced", "drained", "renamed", "unfenced"])
            && d["result"]["attempts"] == 1,
        "{d}"
    );
    admin
        .batch_execute("ALTER DATABASE store IS_TEMPLATE true")
        .await?;
    let (code, d) = json(&["drop", "store", "-y", "--json"])?;
    ensure!(
        code == 2
            && d["preflight"]["refusals"][0]
                .as_str()
                .is_some_and(|r| r.contains("template")),
        "{d}"
    );
    let (code, d) = json(&["drop", "store", "-y", "--allow-template", "--json"])?;
    ensure!(
        code == 0 && d["result"]["steps"] == serde_json::json!(["fenced", "drained", "dropped"]),
        "{d}"
    );
    ensure!(db_row(&admin, "store").await?.is_none());
    let (code, _, err) = m.run(&["drain", "x", "--json"])?;
    ensure!(code == 2 && err.contains("needs -y"), "{code} {err}");
    Ok(())
}

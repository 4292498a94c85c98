//! Simulated client sessions: real connections of named kinds that remember how they ended.
//!
//! Every kind is a real `tokio-postgres` connection doing what applications do: sitting
//! idle, holding a transaction open, running a long statement, holding a lock others wait
//! for, leaving a prepared transaction, committing short transactions in a loop, or
//! reconnecting like a pool within a millisecond of losing its connection. Each records
//! the SQLSTATE it was ended with (57P01 terminated, 57014 cancelled, 3D000, …), which is
//! what pgkill's tests assert on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgkill_core::{quote_ident, quote_literal};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, Config, NoTls};

use crate::{Error, Result};

/// How long helpers wait for a simulated session to reach the state they promise.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How a connection or statement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The SQLSTATE the server sent (`57P01`, `57014`, …); `None` when the connection
    /// simply closed or failed below the protocol.
    pub sqlstate: Option<String>,
    /// The message, for diagnostics.
    pub message: String,
    /// The error's severity (`FATAL` ends the session).
    pub severity: Option<String>,
}

impl Ending {
    fn from_error(e: &tokio_postgres::Error) -> Ending {
        let db = e.as_db_error();
        Ending {
            sqlstate: e.code().map(|c| c.code().to_owned()),
            message: db
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
            severity: db.map(|d| d.severity().to_owned()),
        }
    }

    fn closed() -> Ending {
        Ending {
            sqlstate: None,
            message: "connection closed".into(),
            severity: None,
        }
    }

    fn is_fatal(&self) -> bool {
        matches!(self.severity.as_deref(), Some("FATAL") | Some("PANIC"))
    }
}

/// The state of a statement a session was asked to run in the background.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Statement {
    /// The session runs no background statement.
    #[default]
    None,
    /// Sent and not answered yet.
    Running,
    /// Finished successfully.
    Completed,
    /// Failed (cancelled, terminated, …).
    Failed(Ending),
}

#[derive(Debug, Clone, Default)]
struct Record {
    connection: Option<Ending>,
    statement: Statement,
}

/// One simulated client session.
#[derive(Debug)]
pub struct Session {
    kind: &'static str,
    pid: i32,
    client: Arc<Client>,
    record: watch::Receiver<Record>,
    tasks: Vec<JoinHandle<()>>,
}

impl Session {
    /// Opens a connection and starts recording how it ends.
    async fn open(kind: &'static str, config: &Config) -> Result<(Session, watch::Sender<Record>)> {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(Error::sql(format!("simulated {kind} session connecting")))?;
        let (tx, rx) = watch::channel(Record::default());
        let conn_tx = tx.clone();
        let conn_task = tokio::spawn(async move {
            let ending = match connection.await {
                Ok(()) => Ending::closed(),
                Err(e) => Ending::from_error(&e),
            };
            conn_tx.send_modify(|r| r.connection = Some(ending));
        });
        // A simple query: a prepared one would leave a `Close` in flight (see `client`).
        let pid = client
            .simple_query("SELECT pg_catalog.pg_backend_pid()")
            .await
            .map_err(Error::sql(format!(
                "simulated {kind} session reading its pid"
            )))?
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse::<i32>().ok(),
                _ => None,
            })
            .ok_or_else(|| Error::Program {
                program: "simulator".into(),
                detail: "pg_catalog.pg_backend_pid() returned no row".into(),
            })?;
        let session = Session {
            kind,
            pid,
            client: Arc::new(client),
            record: rx,
            tasks: vec![conn_task],
        };
        Ok((session, tx))
    }

    /// Runs `sql` in the background on this session, recording its outcome.
    fn spawn_statement(&mut self, tx: watch::Sender<Record>, sql: String) {
        tx.send_modify(|r| r.statement = Statement::Running);
        let client = Arc::clone(&self.client);
        self.tasks.push(tokio::spawn(async move {
            let outcome = match client.batch_execute(&sql).await {
                Ok(()) => Statement::Completed,
                Err(e) => Statement::Failed(Ending::from_error(&e)),
            };
            tx.send_modify(|r| r.statement = outcome);
        }));
    }

    /// The session's kind (`idle`, `active`, …).
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The backend's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The connection, to run more SQL on this very session.
    ///
    /// Prefer simple queries (`batch_execute`, `simple_query`) or statements prepared once:
    /// a statement prepared per call is closed when dropped, and a `FATAL` that arrives
    /// while that `Close` is in flight is swallowed by it (the session then shows as
    /// closed without a SQLSTATE).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How the session ended, once it has: the fatal error of its statement if it had one
    /// running, else what the connection received (an idle session that is terminated
    /// receives `FATAL 57P01` unprompted). `None` while it is connected.
    pub fn ended(&self) -> Option<Ending> {
        let record = self.record.borrow();
        let connection = record.connection.clone()?;
        match &record.statement {
            Statement::Failed(e) if e.is_fatal() => Some(e.clone()),
            Statement::Running => None,
            _ => Some(connection),
        }
    }

    /// The SQLSTATE the session was ended with, if it ended with one.
    pub fn ended_sqlstate(&self) -> Option<String> {
        self.ended().and_then(|e| e.sqlstate)
    }

    /// Whether the session's connection is still open.
    pub fn is_connected(&self) -> bool {
        self.record.borrow().connection.is_none()
    }

    /// Waits until the session has ended (or `timeout` passes) and says how.
    pub async fn wait_ended(&self, timeout: Duration) -> Option<Ending> {
        let mut rx = self.record.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ending) = self.ended() {
                return Some(ending);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// The state of the background statement.
    pub fn statement(&self) -> Statement {
        self.record.borrow().statement.clone()
    }

    /// Waits until the background statement has finished (or `timeout` passes).
    pub async fn wait_statement(&self, timeout: Duration) -> Statement {
        let mut rx = self.record.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.statement();
            if !matches!(now, Statement::Running) {
                return now;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return self.statement();
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// An idle session: connected, doing nothing (state `idle`).
pub async fn idle(config: &Config) -> Result<Session> {
    Ok(Session::open("idle", config).await?.0)
}

/// A session with an open transaction, idle (state `idle in transaction`). `statement`
/// runs inside the transaction first (e.g. an `INSERT` whose rows must vanish on rollback).
pub async fn idle_in_transaction(config: &Config, statement: Option<&str>) -> Result<Session> {
    let (session, _) = Session::open("idle in transaction", config).await?;
    let sql = format!("BEGIN; {}", statement.unwrap_or(""));
    session
        .client
        .batch_execute(&sql)
        .await
        .map_err(Error::sql("simulated session opening a transaction"))?;
    Ok(session)
}

/// A session running `sql` (state `active`) until it finishes or is ended. Returns once
/// the server shows it active.
pub async fn running(config: &Config, sql: &str) -> Result<Session> {
    let (mut session, tx) = Session::open("active", config).await?;
    session.spawn_statement(tx, sql.to_owned());
    wait_until(config, &[session.pid], "state = 'active'").await?;
    Ok(session)
}

/// A session running `SELECT pg_sleep(…)` for `duration` (state `active`).
pub async fn active(config: &Config, duration: Duration) -> Result<Session> {
    running(
        config,
        &format!("SELECT pg_sleep({})", duration.as_secs_f64()),
    )
    .await
}

/// A lock holder and sessions waiting for its lock.
#[derive(Debug)]
pub struct LockChain {
    /// Holds `ACCESS EXCLUSIVE` on the table inside an open transaction (idle in transaction).
    pub holder: Session,
    /// Each runs `SELECT count(*)` on the table and waits (wait event type `Lock`).
    pub waiters: Vec<Session>,
    /// The table (created if absent).
    pub table: String,
}

/// Builds a lock chain on `table`: one holder, `waiters` sessions blocked behind it.
/// Returns once every waiter is waiting on the lock.
pub async fn lock_chain(config: &Config, table: &str, waiters: usize) -> Result<LockChain> {
    let lock = format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        quote_ident(table)?
    );
    let (holder, _) = Session::open("lock holder", config).await?;
    // Separate statements: in one multi-statement query, BEGIN would pull the CREATE
    // into the transaction and the waiters would not see the table.
    create_table(&holder.client, table, "id int").await?;
    holder
        .client
        .batch_execute(&format!("BEGIN; {lock}"))
        .await
        .map_err(Error::sql("simulated lock holder"))?;
    let mut blocked = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        let (mut waiter, tx) = Session::open("lock waiter", config).await?;
        waiter.kind = "lock waiter";
        waiter.spawn_statement(tx, format!("SELECT count(*) FROM {}", quote_ident(table)?));
        blocked.push(waiter);
    }
    let pids: Vec<i32> = blocked.iter().map(|w| w.pid).collect();
    wait_until(config, &pids, "wait_event_type = 'Lock'").await?;
    Ok(LockChain {
        holder,
        waiters: blocked,
        table: table.to_owned(),
    })
}

/// A session that left a prepared transaction `gid` behind (the session itself is idle;
/// the prepared transaction survives it). `statement` runs inside the transaction first.
/// Needs `max_prepared_transactions > 0`.
pub async fn prepared(config: &Config, gid: &str, statement: Option<&str>) -> Result<Session> {
    let (mut session, _) = Session::open("prepared", config).await?;
    session.kind = "prepared";
    let sql = format!(
        "BEGIN; SELECT txid_current(); {}; PREPARE TRANSACTION {}",
        statement.unwrap_or("SELECT 1"),
        quote_literal(gid)?
    );
    session
        .client
        .batch_execute(&sql)
        .await
        .map_err(Error::sql("simulated session preparing a transaction"))?;
    Ok(session)
}

/// Creates `table` unless it exists (`CREATE TABLE IF NOT EXISTS` would demand the
/// CREATE privilege on the schema even when the table is there, which plain roles lack
/// on PostgreSQL 15+).
async fn create_table(client: &Client, table: &str, columns: &str) -> Result<()> {
    let quoted = quote_ident(table)?;
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&quoted])
        .await
        .map_err(Error::sql(format!("looking up table {table}")))?
        .get(0);
    if exists.is_none() {
        client
            .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {quoted} ({columns})"))
            .await
            .map_err(Error::sql(format!("creating table {table}")))?;
    }
    Ok(())
}

/// Waits until every pid in `pids` satisfies `condition` in `pg_stat_activity`.
async fn wait_until(config: &Config, pids: &[i32], condition: &str) -> Result<()> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut probe_config = config.clone();
    probe_config.application_name("pgkill-sim-probe");
    // From the `postgres` database: the probe's backend exits a moment after it is
    // dropped, and must not show up among the sessions of the database under test.
    probe_config.dbname("postgres");
    let probe = crate::server::connect(&probe_config).await?;
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND {condition}");
    let probe_query = probe
        .prepare(&sql)
        .await
        .map_err(Error::sql("preparing the pg_stat_activity probe"))?;
    let began = Instant::now();
    let pids = pids.to_vec();
    loop {
        let n: i64 = probe
            .query_one(&probe_query, &[&pids])
            .await
            .map_err(Error::sql("probing pg_stat_activity"))?
            .get(0);
        if n as usize == pids.len() {
            return Ok(());
        }
        if began.elapsed() > SETTLE_TIMEOUT {
            return Err(Error::Program {
                program: "simulator".into(),
                detail: format!(
                    "sessions {pids:?} did not reach `{condition}` within {SETTLE_TIMEOUT:?}"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Options of a [`committing_writer`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// The table written to (created if absent: `writer int, seq bigint, primary key`).
    pub table: String,
    /// How long each transaction stays open before `COMMIT` (`pg_sleep` inside it).
    pub transaction_time: Duration,
    /// Pause between transactions (the session is `idle` then).
    pub pause: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            table: "sim_writes".into(),
            transaction_time: Duration::from_millis(200),
            pause: Duration::from_millis(20),
        }
    }
}

/// What a committing writer has seen.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    /// Sequence numbers whose `COMMIT` the server acknowledged: each must be in the table.
    pub acknowledged: Vec<i64>,
    /// The transaction that failed, when it started, and how. A failure in `COMMIT`
    /// itself leaves the outcome unknown, so `failed_in_commit` says so.
    pub failed: Option<FailedTransaction>,
}

/// A writer transaction that did not commit.
#[derive(Debug, Clone)]
pub struct FailedTransaction {
    /// Its sequence number.
    pub seq: i64,
    /// When it began (compare with when a fence was raised).
    pub began: Instant,
    /// How it ended.
    pub ending: Ending,
    /// Whether the error came in reply to `COMMIT` (outcome unknown to the client).
    pub failed_in_commit: bool,
}

/// A session committing short transactions in a loop until ended or stopped.
#[derive(Debug)]
pub struct Writer {
    /// The writer's id (the `writer` column of its rows).
    pub id: i32,
    pid: i32,
    log: Arc<Mutex<WriterLog>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

static NEXT_WRITER: AtomicI32 = AtomicI32::new(1);

/// Starts a committing writer: `BEGIN; INSERT …; pg_sleep(transaction_time); COMMIT`,
/// pause, repeat; it stops at the first error (e.g. when terminated).
pub async fn committing_writer(config: &Config, options: WriterOptions) -> Result<Writer> {
    let (session, _) = Session::open("committing writer", config).await?;
    let table = quote_ident(&options.table)?;
    create_table(
        &session.client,
        &options.table,
        "writer int, seq bigint, at timestamptz DEFAULT now(), PRIMARY KEY (writer, seq)",
    )
    .await?;
    let id = NEXT_WRITER.fetch_add(1, Ordering::Relaxed);
    let log = Arc::new(Mutex::new(WriterLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let pid = session.pid;
    // Prepared once and kept for the session's life: a statement prepared per call is
    // closed when dropped, and a FATAL arriving while that `Close` is in flight would be
    // swallowed instead of being recorded as how the writer ended.
    let insert = session
        .client
        .prepare(&format!(
            "INSERT INTO {table} (writer, seq) VALUES ($1, $2)"
        ))
        .await
        .map_err(Error::sql("simulated writer preparing its insert"))?;
    let pause = session
        .client
        .prepare("SELECT pg_sleep($1::float8)")
        .await
        .map_err(Error::sql("simulated writer preparing its pause"))?;
    let task = {
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        let sleep = options.transaction_time.as_secs_f64();
        tokio::spawn(async move {
            let client = &session.client;
            let mut seq: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let began = Instant::now();
                let mut in_commit = false;
                let result = async {
                    client.batch_execute("BEGIN").await?;
                    client.execute(&insert, &[&id, &seq]).await?;
                    client.execute(&pause, &[&sleep]).await?;
                    in_commit = true;
                    client.batch_execute("COMMIT").await
                }
                .await;
                let failed = {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    match result {
                        Ok(()) => {
                            log.acknowledged.push(seq);
                            false
                        }
                        Err(e) => {
                            log.failed = Some(FailedTransaction {
                                seq,
                                began,
                                ending: Ending::from_error(&e),
                                failed_in_commit: in_commit,
                            });
                            true
                        }
                    }
                };
                if failed {
                    break;
                }
                tokio::time::sleep(options.pause).await;
            }
            drop(session);
        })
    };
    Ok(Writer {
        id,
        pid,
        log,
        stop,
        task,
    })
}

impl Writer {
    /// The backend's process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A copy of what the writer has seen so far.
    pub fn log(&self) -> WriterLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the writer has stopped (ended by the server, or asked to stop).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Asks the writer to stop after its current transaction and waits for it.
    pub async fn stop(mut self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        let _ = (&mut self.task).await;
        self.log()
    }

    /// Waits until the writer has stopped by itself (or `timeout` passes).
    pub async fn wait_finished(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, &mut self.task).await.is_ok()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options of a reconnecting [`pool`].
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// How many clients the pool keeps connected.
    pub clients: usize,
    /// How long a client waits before reconnecting after losing its connection or
    /// failing to connect.
    pub reconnect_delay: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            clients: 10,
            reconnect_delay: Duration::from_millis(1),
        }
    }
}

/// Counters of a reconnecting pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Successful connections so far.
    pub connects: u64,
    /// Clients connected right now.
    pub connected: usize,
    /// Connections lost, by the SQLSTATE that ended them (`closed` when none was sent).
    pub ended: BTreeMap<String, u64>,
    /// Connection attempts refused, by SQLSTATE (`3D000`, `55000`, `53300`, …;
    /// `io` when no SQLSTATE).
    pub refused: BTreeMap<String, u64>,
}

/// A pool of clients that reconnect as soon as they lose their connection.
#[derive(Debug)]
pub struct Pool {
    stats: Arc<Mutex<PoolStats>>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts a pool of `options.clients` clients that reconnect within
/// `options.reconnect_delay` of losing their connection, as connection pools do.
/// Returns once all of them are connected.
pub async fn pool(config: &Config, options: PoolOptions) -> Result<Pool> {
    raise_fd_limit();
    let stats = Arc::new(Mutex::new(PoolStats::default()));
    let tasks = (0..options.clients)
        .map(|_| {
            let (config, stats, delay) =
                (config.clone(), Arc::clone(&stats), options.reconnect_delay);
            tokio::spawn(async move { pool_client(config, stats, delay).await })
        })
        .collect();
    let pool = Pool { stats, tasks };
    if !pool.wait_connected(options.clients, SETTLE_TIMEOUT).await {
        return Err(Error::Program {
            program: "simulator".into(),
            detail: format!(
                "pool did not connect its {} clients: {:?}",
                options.clients,
                pool.stats()
            ),
        });
    }
    Ok(pool)
}

async fn pool_client(config: Config, stats: Arc<Mutex<PoolStats>>, delay: Duration) {
    let update =
        |f: &dyn Fn(&mut PoolStats)| f(&mut stats.lock().unwrap_or_else(|p| p.into_inner()));
    loop {
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                update(&|s| {
                    s.connects += 1;
                    s.connected += 1;
                });
                let key = match connection.await {
                    Ok(()) => "closed".to_owned(),
                    Err(e) => e
                        .code()
                        .map(|c| c.code().to_owned())
                        .unwrap_or_else(|| "closed".into()),
                };
                drop(client);
                update(&|s| {
                    s.connected -= 1;
                    *s.ended.entry(key.clone()).or_default() += 1;
                });
            }
            Err(e) => {
                let key = e
                    .code()
                    .map(|c| c.code().to_owned())
                    .unwrap_or_else(|| "io".into());
                update(&|s| *s.refused.entry(key.clone()).or_default() += 1);
            }
        }
        tokio::time::sleep(delay).await;
    }
}

impl Pool {
    /// A copy of the pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until at least `n` clients are connected at once.
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.connected >= n).await
    }

    /// Waits until `condition` holds for the counters (polling every millisecond).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        condition: impl Fn(&PoolStats) -> bool,
    ) -> bool {
        let began = Instant::now();
        loop {
            if condition(&self.stats()) {
                return true;
            }
            if began.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops every client (their connections close) and returns the final counters.
    pub async fn stop(mut self) -> PoolStats {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.stats()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Raises this process's open-file limit to its hard limit: a thousand simulated
/// sessions need a thousand sockets.
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

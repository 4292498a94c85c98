"""A Python application of the kind pgkill's users run, for the tests in ../apps.rs.

Either a psycopg_pool.ConnectionPool or a SQLAlchemy engine (QueuePool over psycopg 3),
configured as their users typically do, with several worker threads committing short
transactions (INSERT INTO writes (writer, seq), then COMMIT) until told to stop, and
retrying after an error as real applications do (a short pause, then the next
transaction on whatever connection the pool hands out).

    python pool_app.py --kind psycopg_pool|sqlalchemy --host H --port P --dbname D \
        --user U --application-name NAME [--pool-size N] [--workers W] [--writer-base B] \
        [--prepare-threshold none|default|N]

The password comes from the environment (PGPASSWORD), as libpq takes it.

Standard input is the control channel: each line "status" is answered with one JSON line
(commits so far, errors by SQLSTATE, client ports); end of input (or SIGTERM) stops the
workers, and the program prints one last JSON line with "final": true and every
acknowledged commit as [writer, seq], the errors counted by SQLSTATE (psycopg's
e.sqlstate, or the exception's class name when there is none, e.g. a connection that
broke without a message), and the longest time one transaction took from its start to
its acknowledged COMMIT (the stall an application saw).
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time

import psycopg
import psycopg_pool
import sqlalchemy

# psycopg 3 prepares a statement on the server after `prepare_threshold` executions (5 by
# default) and reuses it by name. Behind PgBouncer in transaction mode the next
# transaction may run on another server connection, where that name does not exist
# (26000, or 42P05 when a name is prepared twice): before PgBouncer 1.21, which tracks
# protocol-level prepared statements (max_prepared_statements, 200 by default from 1.22),
# users must turn preparing off with prepare_threshold=None, as psycopg's documentation
# tells them to. --prepare-threshold picks: "none" (the default here, what a 1.18 user
# sets), "default" (psycopg's own, what a 1.22+ user keeps) or a number.
def prepare_threshold(value):
    if value == "none":
        return {"prepare_threshold": None}
    if value == "default":
        return {}
    return {"prepare_threshold": int(value)}


INSERT = "INSERT INTO writes (writer, seq) VALUES (%s, %s)"

# How long a worker waits after an error before its next transaction (applications
# retry, but not in a busy loop), and between two transactions (some work of its own).
RETRY_DELAY = 0.1
THINK_TIME = 0.005


def sqlstate(error):
    """The SQLSTATE an error carries (through SQLAlchemy's wrapper), else its class."""
    original = getattr(error, "orig", None)
    if isinstance(original, BaseException):
        error = original
    code = getattr(error, "sqlstate", None)
    return code or type(error).__name__


def local_port(connection):
    """The client port of a psycopg connection's socket."""
    try:
        fd = connection.pgconn.socket
        with socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as s:
            return s.getsockname()[1]
    except (OSError, psycopg.Error):
        return None


class State:
    """What the workers saw, shared between them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acknowledged = []
        self.errors = {}
        self.last_errors = []
        self.longest_wait = 0.0
        self.ports = set()
        # The pool's own figures (psycopg_pool's get_stats(): connections opened, failed
        # attempts, connections lost...; SQLAlchemy's pool status line).
        self.pool_stats = dict

    def ack(self, writer, seq, took):
        with self.lock:
            self.acknowledged.append((writer, seq))
            self.longest_wait = max(self.longest_wait, took)

    def error(self, error):
        code = sqlstate(error)
        with self.lock:
            self.errors[code] = self.errors.get(code, 0) + 1
            self.last_errors = (self.last_errors + [f"{code}: {error}".strip()])[-5:]

    def connected(self, connection):
        port = local_port(connection)
        if port is not None:
            with self.lock:
                self.ports.add(port)

    def report(self, final=False):
        with self.lock:
            doc = {
                "commits": len(self.acknowledged),
                "errors": dict(self.errors),
                "last_errors": list(self.last_errors),
                "longest_wait_ms": round(self.longest_wait * 1000, 1),
                "ports": sorted(self.ports),
            }
            if final:
                doc["final"] = True
                doc["acknowledged"] = [list(a) for a in self.acknowledged]
        doc["pool"] = self.pool_stats()
        return json.dumps(doc)


def psycopg_pool_app(args, state):
    """A ConnectionPool of a fixed size, as the psycopg documentation sets one up."""
    conninfo = psycopg.conninfo.make_conninfo(
        host=args.host, port=args.port, dbname=args.dbname, user=args.user
    )
    pool = psycopg_pool.ConnectionPool(
        conninfo,
        min_size=args.pool_size,
        max_size=args.pool_size,
        kwargs={"application_name": args.application_name, **args.prepare},
        configure=state.connected,
        name=args.application_name,
        open=False,
    )
    pool.open(wait=True, timeout=30)
    state.pool_stats = pool.get_stats

    def transaction(writer, seq):
        with pool.connection() as conn:
            conn.execute(INSERT, (writer, seq))
            conn.commit()

    return transaction, pool.close


def sqlalchemy_app(args, state):
    """An engine as a web application creates one: a QueuePool with pre-ping."""
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg",
        username=args.user,
        host=args.host,
        port=args.port,
        database=args.dbname,
    )
    engine = sqlalchemy.create_engine(
        url,
        pool_size=args.pool_size,
        pool_pre_ping=True,
        connect_args={"application_name": args.application_name, **args.prepare},
    )
    sqlalchemy.event.listen(engine, "connect", lambda dbapi, _record: state.connected(dbapi))
    insert = sqlalchemy.text("INSERT INTO writes (writer, seq) VALUES (:writer, :seq)")
    state.pool_stats = lambda: {"status": engine.pool.status()}
    # Connect once now, as an application does at start-up.
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT 1"))

    def transaction(writer, seq):
        with engine.begin() as conn:
            conn.execute(insert, {"writer": writer, "seq": seq})

    return transaction, engine.dispose


def worker(transaction, writer, state):
    seq = 0
    while not state.stop.is_set():
        # A new number for every attempt: a COMMIT whose answer was lost may still have
        # happened, and must not collide with the retry.
        seq += 1
        began = time.monotonic()
        try:
            transaction(writer, seq)
        except Exception as e:  # what the application would log and retry after
            if state.stop.is_set():
                break
            state.error(e)
            state.stop.wait(RETRY_DELAY)
            continue
        state.ack(writer, seq, time.monotonic() - began)
        state.stop.wait(THINK_TIME)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["psycopg_pool", "sqlalchemy"], required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--application-name", required=True)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--writer-base", type=int, default=0)
    parser.add_argument("--prepare-threshold", dest="prepare", type=prepare_threshold,
                        default=prepare_threshold("none"))
    args = parser.parse_args()

    state = State()
    out = threading.Lock()

    def say(line):
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    signal.signal(signal.SIGTERM, lambda *_: state.stop.set())

    start = psycopg_pool_app if args.kind == "psycopg_pool" else sqlalchemy_app
    transaction, close = start(args, state)

    def control():
        for line in sys.stdin:
            if line.strip() == "status":
                say(state.report())
        state.stop.set()

    threading.Thread(target=control, daemon=True).start()
    workers = [
        threading.Thread(target=worker, args=(transaction, args.writer_base + i, state))
        for i in range(args.workers)
    ]
    for t in workers:
        t.start()
    say(json.dumps({"ready": True, "pid": os.getpid()}))
    while not state.stop.wait(0.2):
        pass
    # Closing the pool first wakes workers waiting for a connection (PoolClosed).
    closer = threading.Thread(target=close, daemon=True)
    closer.start()
    for t in workers:
        t.join(timeout=30)
    closer.join(timeout=10)
    say(state.report(final=True))


if __name__ == "__main__":
    main()

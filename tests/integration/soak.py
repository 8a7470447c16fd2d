"""Randomized fault schedules over random small migration sets, and the checks that must hold after each.

A seed decides everything: the migration set (transactional files and `-- migrate:no-transaction` files with named
CONCURRENTLY index builds and drops), two or three CLI appliers with their options, and the faults (SIGKILL, SIGSTOP
then SIGCONT or SIGKILL, pg_terminate_backend, a server restart, lock holders on the tables, duplicate rows that make a
unique index fail). After each phase the faults are undone and `apply` (or `rollback`) runs until it succeeds; then the
ledger must match the catalog, no invalid index may be left unexplained, and every claim an applier's error made about
the database must have been true of the database when that applier exited.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.options import RunOptions
from components.engine.snapshot import generate
from devtools import localpg
from tests.conftest import REPO
from tests.dbs import drop_database
from tests.integration.reliability import SOAK as TALLY

ROWS = 3000
DUP_ID = 1_000_001  # rows the "duplicates" fault inserts; recovery deletes ids >= this
PHASE_LIMIT_S = 30.0  # a phase's appliers are killed after this


# ---- the generated migration set ----------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """What a statement leaves behind: a table, a column (`table.col`) or an index, present or gone."""

    kind: str  # table | column | index
    name: str
    present: bool = True


@dataclass(frozen=True)
class Stmt:
    text: str
    effect: Effect | None = None


@dataclass
class Mig:
    version: str
    name: str
    transactional: bool
    ups: list[Stmt]
    down_transactional: bool
    downs: list[Stmt]
    unique_on_k: bool = False  # fails while soak_a holds duplicate k values

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"

    def statements(self, direction: str) -> list[Stmt]:
        return self.ups if direction == "up" else self.downs

    def write(self, directory: Path) -> None:
        head = "" if self.transactional else "-- migrate:no-transaction\n"
        (directory / f"{self.label}.sql").write_text(head + "".join(s.text + ";\n" for s in self.ups))
        head = "" if self.down_transactional else "-- migrate:no-transaction\n"
        (directory / f"{self.label}.down.sql").write_text(head + "".join(s.text + ";\n" for s in self.downs))


def _sleep(rng: random.Random, version: int, j: int) -> Stmt:
    """A statement that widens the window in which a fault lands mid-migration; its text is unique in the set."""
    return Stmt(f"SELECT pg_sleep(0.{rng.randint(5, 25):02d}{version:02d}{j})")


def generate_set(rng: random.Random) -> list[Mig]:
    """A base table with rows, then two to four migrations of random kinds, each with a down file."""
    migs = [
        Mig(
            "0001",
            "base",
            True,
            [
                Stmt("CREATE TABLE soak_a (id int PRIMARY KEY, k int NOT NULL, note text)", Effect("table", "soak_a")),
                Stmt(f"INSERT INTO soak_a (id, k, note) SELECT g, g, 'row ' || g FROM generate_series(1, {ROWS}) g"),
            ],
            True,
            [Stmt("DROP TABLE soak_a", Effect("table", "soak_a", False))],
        )
    ]
    plain: list[tuple[str, str]] = []  # indexes on soak_a that a later migration may drop concurrently: (name, "[UNIQUE ]INDEX ... (col)")
    for n in range(2, 2 + rng.randint(2, 4)):
        v = f"{n:04d}"
        kind = rng.choice(["table", "column", "unique_tx", "cic", "cic", "cic_multi", "drop_index"])
        if kind == "drop_index" and not plain:
            kind = "cic"
        if kind == "table":
            t = f"soak_t{n}"
            ups = [
                Stmt(f"CREATE TABLE {t} (id int PRIMARY KEY, a_id int)", Effect("table", t)),
                Stmt(f"CREATE INDEX idx_{t}_a ON {t} (a_id)", Effect("index", f"idx_{t}_a")),
            ]
            if rng.random() < 0.6:
                ups.insert(1, _sleep(rng, n, 1))
            migs.append(Mig(v, f"table_{n}", True, ups, True, [Stmt(f"DROP TABLE {t}", Effect("table", t, False))]))
        elif kind == "column":
            c = f"c{n}"
            ups = [Stmt(f"ALTER TABLE soak_a ADD COLUMN {c} int", Effect("column", f"soak_a.{c}"))]
            if rng.random() < 0.6:
                ups.append(_sleep(rng, n, 1))
            downs = [Stmt(f"ALTER TABLE soak_a DROP COLUMN {c}", Effect("column", f"soak_a.{c}", False))]
            migs.append(Mig(v, f"column_{n}", True, ups, True, downs))
        elif kind == "unique_tx":
            i = f"uq_k_{n}"
            ups = [_sleep(rng, n, 1), Stmt(f"CREATE UNIQUE INDEX {i} ON soak_a (k)", Effect("index", i))]
            migs.append(Mig(v, f"unique_{n}", True, ups, True, [Stmt(f"DROP INDEX {i}", Effect("index", i, False))], unique_on_k=True))
            plain.append((i, f"UNIQUE INDEX CONCURRENTLY {i} ON soak_a (k)"))
        elif kind in ("cic", "cic_multi"):
            unique = rng.random() < 0.5
            i = f"idx_cc_{n}"
            ups, downs = [], []
            col = "k" if unique else rng.choice(["k", "note"])
            if kind == "cic_multi":
                c = f"c{n}"
                ups.append(Stmt(f"ALTER TABLE soak_a ADD COLUMN {c} int", Effect("column", f"soak_a.{c}")))
                downs.append(Stmt(f"ALTER TABLE soak_a DROP COLUMN {c}", Effect("column", f"soak_a.{c}", False)))
                if not unique:
                    col = c
            ups.append(
                Stmt(f"CREATE {'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {i} ON soak_a ({col})", Effect("index", i)),
            )
            if rng.random() < 0.5:
                ups.append(_sleep(rng, n, 2))
            downs.insert(0, Stmt(f"DROP INDEX CONCURRENTLY {i}", Effect("index", i, False)))
            migs.append(Mig(v, f"{'unique_' if unique else ''}concurrent_{n}", False, ups, False, downs, unique_on_k=unique))
            if col in ("k", "note"):
                plain.append((i, f"{'UNIQUE ' if unique else ''}INDEX CONCURRENTLY {i} ON soak_a ({col})"))
        else:
            i, definition = plain.pop(rng.randrange(len(plain)))
            ups = [Stmt(f"DROP INDEX CONCURRENTLY {i}", Effect("index", i, False))]
            downs = [Stmt(f"CREATE {definition}", Effect("index", i))]  # exactly as it was: the down is verified against the snapshot
            migs.append(Mig(v, f"drop_{i}", False, ups, False, downs))
    return migs


# ---- the schedule -------------------------------------------------------------------------------

SIGNAL_FAULTS = ("sigkill", "sigstop_cont", "sigstop_kill")


@dataclass(frozen=True)
class Fault:
    kind: str  # sigkill | sigstop_cont | sigstop_kill | terminate | restart | hold_read | hold_write | duplicates
    at: float  # seconds after the phase starts (for a trigger: the latest moment)
    trigger: str | None = None  # fire when an applier's backend runs the statement starting with this text
    hold: float = 0.0  # SIGSTOP or lock holding time


@dataclass(frozen=True)
class Applier:
    delay: float
    lock_wait_ms: int
    lock_timeout_ms: int
    ddl_retries: int


@dataclass(frozen=True)
class Phase:
    command: str  # apply | rollback
    target: str
    appliers: tuple[Applier, ...]
    faults: tuple[Fault, ...]


@dataclass
class Schedule:
    seed: int
    migs: list[Mig]
    base: str
    phases: list[Phase]

    def describe(self) -> str:
        lines = [f"seed {self.seed}: base {self.base}"]
        for m in self.migs:
            lines.append(f"  {m.label} ({'tx' if m.transactional else 'no-tx'}): " + "; ".join(s.text for s in m.ups))
        for p in self.phases:
            lines.append(f"  phase {p.command} --to {p.target}: appliers {p.appliers}")
            lines += [f"    fault {f}" for f in p.faults]
        return "\n".join(lines)


def make_schedule(seed: int, *, restart_ok: bool = True) -> Schedule:
    rng = random.Random(seed)
    migs = generate_set(rng)
    latest = int(migs[-1].version)
    base = rng.randint(1, max(1, latest - 2))
    target = rng.randint(base + 1, latest)
    phases = [_phase(rng, migs, "apply", base, target, restart_ok)]
    if rng.random() < 0.35:
        phases.append(_phase(rng, migs, "rollback", target, rng.randint(1, target - 1), restart_ok))
    return Schedule(seed, migs, f"{base:04d}", phases)


def _phase(rng: random.Random, migs: list[Mig], command: str, start: int, target: int, restart_ok: bool) -> Phase:
    up = command == "apply"
    running = [m for m in migs if (start < int(m.version) <= target if up else target < int(m.version) <= start)]
    texts = [s.text for m in running for s in m.statements("up" if up else "down")]
    appliers = tuple(
        Applier(
            delay=0.0 if i == 0 else rng.uniform(0.0, 0.8),
            lock_wait_ms=rng.choice([700, 2500, 15000]),
            lock_timeout_ms=rng.choice([150, 1000]),
            ddl_retries=rng.choice([0, 2, 5]),
        )
        for i in range(rng.choice([2, 2, 3]))
    )
    faults: list[Fault] = []
    unique_pending = up and any(m.unique_on_k for m in running) and not any(m.unique_on_k for m in migs if int(m.version) <= start)
    if unique_pending and rng.random() < 0.6:
        faults.append(Fault("duplicates", 0.0))
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice([*SIGNAL_FAULTS, "sigkill", "terminate", "terminate", "hold_read", "hold_write", "restart"])
        if kind == "restart" and (not restart_ok or any(f.kind == "restart" for f in faults) or rng.random() < 0.5):
            kind = "terminate"
        trigger = rng.choice(texts)[:40] if kind in (*SIGNAL_FAULTS, "terminate") and texts and rng.random() < 0.6 else None
        faults.append(Fault(kind, rng.uniform(0.0, 0.9), trigger, rng.uniform(0.3, 3.0)))
    return Phase(command, f"{target:04d}", appliers, tuple(sorted(faults, key=lambda f: f.at)))


# ---- observing the database ---------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    ledger: dict[str, tuple[str, int, str, str]]  # version -> (status, statements_done, applied_by, direction)
    tables: frozenset[str]
    columns: frozenset[str]
    indexes: dict[str, bool]  # name -> valid

    def holds(self, e: Effect) -> bool:
        if e.kind == "table":
            return (e.name in self.tables) == e.present
        if e.kind == "column":
            return (e.name in self.columns) == e.present
        return self.indexes.get(e.name) is True if e.present else e.name not in self.indexes

    @property
    def invalid(self) -> set[str]:
        return {i for i, ok in self.indexes.items() if not ok}

    @property
    def current(self) -> int:
        return max((int(v) for v, r in self.ledger.items() if r[0] == "applied"), default=0)


def observe(db: ConnectionSettings) -> Observation:
    with db.connect() as conn:
        rows = (
            conn.execute("SELECT version, status, statements_done, applied_by, direction FROM migration_ledger.applied").fetchall()
            if _ledger_exists(conn)
            else []
        )
        tables = conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'").fetchall()
        columns = conn.execute(
            "SELECT c.relname || '.' || a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped"
        ).fetchall()
        indexes = conn.execute(
            "SELECT c.relname, x.indisvalid FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
            " WHERE c.relnamespace = 'public'::regnamespace"
        ).fetchall()
    return Observation(
        {str(r[0]): (str(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows},
        frozenset(r[0] for r in tables),
        frozenset(r[0] for r in columns),
        {str(r[0]): bool(r[1]) for r in indexes},
    )


def _ledger_exists(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('migration_ledger.applied') IS NOT NULL").fetchone()
    return bool(row and row[0])


def observe_retrying(db: ConnectionSettings, seconds: float = 15.0) -> Observation | None:
    """An observation, retried while the server restarts; None if it never answered."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return observe(db)
        except psycopg.Error:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)


# ---- claims in what the appliers printed ---------------------------------------------------------

LABEL = r"(?P<v>\d{4})_\w+ \((?P<dir>up|down)\)"


@dataclass(frozen=True)
class Claim:
    kind: str
    version: str = ""
    direction: str = ""
    count: int = 0
    names: tuple[str, ...] = ()
    text: str = ""


def parse_claims(stdout: str, stderr: str) -> list[Claim]:
    """What an applier's final words claim about the database."""
    claims: list[Claim] = []
    for line in stdout.splitlines():
        m = re.match(r"(?:applied|rolled back) [\d, ]+; now at (\d{4}|none)|nothing to (?:apply|roll back): at version (\d{4}|none)", line)
        if m:
            at = m.group(1) or m.group(2)
            claims.append(Claim("now_at", "0000" if at == "none" else at, text=line))
    for line in stderr.splitlines():
        if not line.startswith("error: "):
            continue
        text = line[len("error: ") :].split(" Fix: ")[0]
        if m := re.search(LABEL + r".*(?:the migration was rolled back|nothing of this migration was committed)", text, re.IGNORECASE):
            claims.append(Claim("rolled_back", m["v"], m["dir"], text=text))
        if m := re.search(
            LABEL + r" runs outside a transaction, so nothing was rolled back: statements 1-(?P<k>\d+) of \d+ completed", text
        ):
            claims.append(Claim("completed", m["v"], m["dir"], int(m["k"]), text=text))
        if m := re.search(LABEL + r": the catalog after .* all (?P<k>\d+) statements completed and stay committed", text):
            claims.append(Claim("completed", m["v"], m["dir"], int(m["k"]), text=text))
        if m := re.search(
            LABEL + r" runs outside a transaction, so nothing was rolled back: statement .*no statement before it had completed", text
        ):
            claims.append(Claim("none_completed", m["v"], m["dir"], text=text))
        if m := re.search(r"(?P<v>\d{4})_\w+ \((?P<dir>up|down), outside a transaction\) was interrupted after statement (?P<k>\d+)", text):
            claims.append(Claim("interrupted_at", m["v"], m["dir"], int(m["k"]), text=text))
        if m := re.search(r"The database now holds (.*?)\. The ledger", text):
            held = m.group(1)
            if held == "no invalid index":
                claims.append(Claim("no_invalid_index", text=text))
            elif held.startswith("invalid index"):
                claims.append(Claim("invalid_index", names=tuple(re.findall(r"invalid index \w+\.(\w+) on", held)), text=text))
        if "Nothing was written" in text:
            claims.append(Claim("nothing_written", text=text))
    return claims


def judge(claim: Claim, obs: Observation, who: str, migs: dict[str, Mig], *, strict: bool) -> str | None:
    """Why `claim` is false of `obs`, or None. Without `strict`, only what no other applier could have changed since."""
    row = obs.ledger.get(claim.version)
    mine = row is not None and f"({who}@" in row[2]
    if claim.kind == "rolled_back":
        if claim.direction == "up" and mine and row is not None and row[0] == "applied":
            return f"{claim.version} is in the ledger, written by this very applier"
        if not strict:
            return None
        m = migs[claim.version]
        if claim.direction == "up":
            if row is not None:
                return f"the ledger holds {claim.version} ({row[0]})"
            done = [s.effect for s in m.ups if s.effect and obs.holds(s.effect)]
        else:
            if row is None or row[0] != "applied":
                return f"the ledger no longer holds {claim.version} as applied ({row})"
            done = [s.effect for s in m.downs if s.effect and obs.holds(s.effect)]
        return f"statements of it took effect: {done}" if done else None
    if claim.kind == "completed":
        m = migs[claim.version]
        missing = [s.effect for s in m.statements(claim.direction)[: claim.count] if s.effect and not obs.holds(s.effect)]
        if missing:
            return f"effects of statements 1-{claim.count} are missing: {missing}"
        if claim.direction == "up":
            ok = row is not None and (row[0] == "applied" or (row[3] == "up" and row[1] >= claim.count))
        else:
            ok = row is None or (row[3] == "down" and row[1] >= claim.count)
        return None if ok else f"the ledger row of {claim.version} is {row}, not interrupted after statement {claim.count}"
    if claim.kind in ("none_completed", "interrupted_at"):
        k = claim.count
        if row is None and claim.direction == "up":
            return f"the ledger has no row for {claim.version}"
        if not strict:
            return None
        if row is None or row[0] != "started" or row[1] != k:
            return f"the ledger row of {claim.version} is {row}, not 'started' after statement {k}"
        nxt = migs[claim.version].statements(claim.direction)[k : k + 1]
        if nxt and nxt[0].effect and obs.holds(nxt[0].effect):
            return f"statement {k + 1} took effect ({nxt[0].effect})"
        return None
    if claim.kind == "invalid_index":
        wrong = [n for n in claim.names if obs.indexes.get(n) is not False]
        return f"not invalid indexes: {wrong}" if strict and wrong else None
    if claim.kind == "no_invalid_index":
        return f"invalid indexes exist: {sorted(obs.invalid)}" if strict and obs.invalid else None
    if claim.kind == "nothing_written":
        written = sorted(v for v, r in obs.ledger.items() if f"({who}@" in r[2])
        return f"ledger rows written by this applier: {written}" if written else None
    if claim.kind == "now_at":
        if not strict:
            return None
        return (
            None
            if obs.current == int(claim.version) and not any(r[0] == "started" for r in obs.ledger.values())
            else (f"the ledger is at {obs.current:04d} ({obs.ledger})")
        )
    return None


# ---- running a schedule ---------------------------------------------------------------------------


def _local_ports(pid: int) -> set[int]:
    """Local TCP ports of a process's sockets (matched against pg_stat_activity.client_port)."""
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        ports = set()
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                parts = line.split()
                if parts[9] in inodes:
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        return ports
    except OSError:
        return set()


@dataclass
class Proc:
    n: int
    who: str
    popen: subprocess.Popen[str]
    started: float
    stopped_until: float | None = None
    kill_after_stop: bool = False
    ended: float | None = None
    out: str = ""
    err: str = ""


@dataclass
class Result:
    failures: list[str] = field(default_factory=list)
    reported_invalid: set[str] = field(default_factory=set)
    seen_invalid: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)  # what each applier printed last, for the failure report


class Runner:
    """Runs one schedule on a dedicated cluster (it may be restarted) in a fresh database."""

    def __init__(self, cluster: localpg.Cluster, schedule: Schedule, workdir: Path) -> None:
        self.cluster = cluster
        self.s = schedule
        self.admin = ConnectionSettings(
            port=cluster.port,
            dbname="wishlist",
            user=localpg.ADMIN_USER,
            password=cluster.admin_password,
            sslmode="disable",
            connect_timeout=5,
        )
        self.set_dir = workdir / "soak"
        self.db = self.admin.with_database(f"soak_{schedule.seed % 10**9}_{os.getpid()}")
        # The observer and the lock holders are not appliers: another application_name keeps them apart.
        self.obs_db = replace(self.db, application_name="soak-observer")
        self.migs = {m.version: m for m in schedule.migs}
        self.result = Result()

    def run(self) -> Result:
        from psycopg import sql

        self.set_dir.mkdir(parents=True, exist_ok=True)
        for m in self.s.migs:
            m.write(self.set_dir)
        generate(self.admin, self.set_dir)
        self.mset = migset.load(self.set_dir)
        drop_database(self.admin, self.db.dbname)
        with self.admin.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db.dbname)))
        try:
            Engine(self.db, self.mset).apply(self.s.base)
            for i, phase in enumerate(self.s.phases):
                self._phase(i, phase)
                if self.result.failures:
                    break
        finally:
            if not self.cluster.running():
                self.cluster.start()
            drop_database(self.admin, self.db.dbname)
        TALLY["schedules run"] += 1
        TALLY["failures found"] += len(self.result.failures)
        return self.result

    def fail(self, text: str) -> None:
        self.result.failures.append(text)

    # -- one phase: appliers and faults, then recovery and the invariants

    def _phase(self, index: int, phase: Phase) -> None:
        t0 = time.monotonic()
        procs: list[Proc] = []
        pending = list(phase.faults)
        holders: list[tuple[psycopg.Connection[Any], float]] = []
        watcher: psycopg.Connection[Any] | None = None
        if any(f.kind == "duplicates" for f in pending):
            with self.obs_db.connect() as conn:
                conn.execute("INSERT INTO soak_a (id, k, note) VALUES (%s, 1, 'duplicate'), (%s, 2, 'duplicate')", (DUP_ID, DUP_ID + 1))
            TALLY["fault: duplicate rows (unique index fails)"] += 1
            pending = [f for f in pending if f.kind != "duplicates"]
        to_start = list(enumerate(phase.appliers))
        while time.monotonic() - t0 < PHASE_LIMIT_S:
            now = time.monotonic() - t0
            for n, a in [x for x in to_start if x[1].delay <= now]:
                procs.append(self._start(index, n, phase, a))
                to_start.remove((n, a))
            if watcher is None or watcher.closed or watcher.broken:
                watcher = self._connect()
            activity = self._activity(watcher)
            for f in [f for f in pending if self._due(f, now, activity)]:
                pending.remove(f)
                self._fire(f, procs, activity, holders)
                if f.kind == "restart":
                    watcher = None
            self._signals(procs)
            for conn, until in list(holders):
                if now >= until:
                    _close(conn)
                    holders.remove((conn, until))
            for p in procs:
                if p.ended is None and p.popen.poll() is not None:
                    self._exited(p, procs)
            if not to_start and all(p.ended is not None for p in procs):
                break
            time.sleep(0.02)
        TALLY["faults not fired (appliers done first)"] += len(pending)
        for p in procs:  # recovery: leftovers killed, holders gone, the injected cause removed
            if p.ended is None:
                p.popen.kill()
                p.popen.communicate()
                p.ended = time.monotonic()
        for conn, _ in holders:
            _close(conn)
        if watcher is not None:
            _close(watcher)
        if not self.cluster.running():
            self.cluster.start()
        self._recover(phase)

    def _start(self, index: int, n: int, phase: Phase, a: Applier) -> Proc:
        who = f"soak{self.s.seed}p{index}a{n}"
        dsn = f"host=127.0.0.1 port={self.db.port} dbname={self.db.dbname} user={self.db.user} sslmode=disable"
        env = {**os.environ, "PGPASSWORD": self.db.password or "", "LOGNAME": who, "USER": who}
        cmd = [sys.executable, "-m", "components.migrate", phase.command, "--to", phase.target, "--dsn", dsn, "--set", str(self.set_dir)]
        cmd += ["--lock-wait", str(a.lock_wait_ms), "--lock-timeout", str(a.lock_timeout_ms), "--ddl-retries", str(a.ddl_retries)]
        popen = subprocess.Popen(cmd, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        TALLY["applier processes started"] += 1
        return Proc(n, who, popen, time.monotonic())

    def _connect(self) -> psycopg.Connection[Any] | None:
        try:
            return self.obs_db.connect(autocommit=True)
        except Exception:
            return None

    def _activity(self, watcher: psycopg.Connection[Any] | None) -> list[tuple[int, int, str, bool]]:
        """Applier backends: (pid, client_port, query, active), and invalid indexes seen mid-run."""
        if watcher is None:
            return []
        try:
            rows = watcher.execute(
                "SELECT pid, coalesce(client_port, -1), query, state = 'active' FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = 'wishlist-migrate'"
            ).fetchall()
            invalid = watcher.execute(
                "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
                " WHERE c.relnamespace = 'public'::regnamespace AND NOT x.indisvalid"
            ).fetchall()
        except psycopg.Error:
            _close(watcher)
            return []
        self.result.seen_invalid |= {r[0] for r in invalid}
        return [(int(r[0]), int(r[1]), str(r[2]), bool(r[3])) for r in rows]

    @staticmethod
    def _due(f: Fault, now: float, activity: list[tuple[int, int, str, bool]]) -> bool:
        if f.trigger is None:
            return now >= f.at
        seen = any(active and " ".join(q.split()).startswith(f.trigger) for _, _, q, active in activity)
        return seen or now >= f.at + 3.0  # a statement never seen: the fault lands at a random moment instead

    def _fire(
        self, f: Fault, procs: list[Proc], activity: list[tuple[int, int, str, bool]], holders: list[tuple[psycopg.Connection[Any], float]]
    ) -> None:
        alive = [p for p in procs if p.ended is None and p.popen.poll() is None and p.stopped_until is None]
        running = [(pid, port) for pid, port, q, a in activity if a and f.trigger and " ".join(q.split()).startswith(f.trigger)]
        where = "at statement" if running else "at a random moment"
        if f.kind in SIGNAL_FAULTS:
            victim = None
            if running:
                victim = next((p for p in alive if running[0][1] in _local_ports(p.popen.pid)), None)
            victim = victim or (random.Random(f.at).choice(alive) if alive else None)
            if victim is None:
                return
            if f.kind == "sigkill":
                victim.popen.send_signal(signal.SIGKILL)
            else:
                victim.popen.send_signal(signal.SIGSTOP)
                victim.stopped_until = time.monotonic() + f.hold
                victim.kill_after_stop = f.kind == "sigstop_kill"
            TALLY[f"fault: {f.kind} {where}"] += 1
        elif f.kind == "terminate":
            targets = [pid for pid, _ in running] or [pid for pid, _, _, a in activity if a] or [pid for pid, _, _, _ in activity]
            if not targets:
                return
            with self.obs_db.connect() as conn:  # the admin role may end backends of its own role
                conn.execute("SELECT pg_terminate_backend(%s)", (targets[0],))
            TALLY[f"fault: pg_terminate_backend {where}"] += 1
        elif f.kind == "restart":
            self.cluster.stop("fast")
            self.cluster.start()
            TALLY["fault: server restart (pg_ctl stop -m fast, start)"] += 1
        elif f.kind in ("hold_read", "hold_write"):
            try:
                conn = self.obs_db.connect(autocommit=False)
                if f.kind == "hold_read":
                    conn.execute("SELECT count(*) FROM soak_a")
                else:
                    conn.execute("UPDATE soak_a SET note = note WHERE id = %s", (1 + int(f.hold * 1000) % ROWS,))
            except psycopg.Error:
                return
            holders.append((conn, time.monotonic() + f.hold))
            TALLY[f"fault: lock holder ({'reader' if f.kind == 'hold_read' else 'writer'}) on soak_a"] += 1

    @staticmethod
    def _signals(procs: list[Proc]) -> None:
        for p in procs:
            if p.stopped_until is not None and time.monotonic() >= p.stopped_until:
                p.popen.send_signal(signal.SIGKILL if p.kill_after_stop else signal.SIGCONT)
                p.stopped_until = None

    def _exited(self, p: Proc, procs: list[Proc]) -> None:
        """Right after an applier exits: read the database, then judge what it claimed."""
        out, err = p.popen.communicate()
        p.out, p.err = out, err
        last = (err.strip().splitlines() or [""])[-1] if p.popen.returncode else (out.strip().splitlines() or [""])[-1]
        self.result.log.append(f"  applier {p.who}: exit {p.popen.returncode}: {last[:400]}")
        obs = observe_retrying(self.obs_db)
        p.ended = time.monotonic()
        others = any(q is not p and (q.ended is None or p.ended - q.ended < 1.0) for q in procs)
        claims = parse_claims(out, err) if p.popen.returncode in (0, 1) else []
        if p.popen.returncode == 1 and not any(c.kind != "now_at" for c in claims):
            TALLY["errors with no claim about the database"] += 1
        if obs is None:
            TALLY["claims not checked (database unreachable)"] += len(claims)
            return
        for c in claims:
            if c.kind == "invalid_index":
                self.result.reported_invalid |= set(c.names)
            why = judge(c, obs, p.who, self.migs, strict=not others)
            TALLY[f"claim checked: {c.kind} ({'strict' if not others else 'monotone'})"] += 1
            if why:
                TALLY["false claims"] += 1
                self.fail(f"applier {p.who} (exit {p.popen.returncode}) claimed [{c.kind}] {c.text!r}, but {why}")

    def _recover(self, phase: Phase) -> None:
        with contextlib.suppress(psycopg.Error), self.obs_db.connect() as conn:
            conn.execute("DELETE FROM soak_a WHERE id >= %s", (DUP_ID,))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # a killed applier's backend notices within client_connection_check_interval
            rows = observe_backends(self.obs_db)
            if rows == 0:
                break
            time.sleep(0.1)
        errors: list[str] = []
        for _ in range(4):
            engine = Engine(self.db, self.mset, RunOptions(lock_wait_ms=15_000))
            try:
                if phase.command == "apply":
                    engine.apply(phase.target)
                else:
                    engine.rollback(phase.target)
                break
            except Exception as exc:
                errors.append(str(exc))
                time.sleep(0.5)
        else:
            self.fail(f"{phase.command} --to {phase.target} did not succeed after recovery: {errors}")
            return
        TALLY["recoveries"] += 1
        report = Engine(self.db, self.mset).verify()
        if not report.ok:
            self.fail(f"after {phase.command} --to {phase.target}: the catalog does not match the ledger: {report.as_dict()}")
        obs = observe(self.obs_db)
        want = {f"{v:04d}" for v in range(1, int(phase.target) + 1)}
        statuses = {v: r[0] for v, r in obs.ledger.items()}
        if set(statuses) != want or set(statuses.values()) != {"applied"}:
            self.fail(
                f"after {phase.command} --to {phase.target}: the ledger is {sorted(statuses.items())}, expected {sorted(want)} applied"
            )
        left = {i for i in self.result.seen_invalid if i in obs.invalid and i not in self.result.reported_invalid}
        if left | (obs.invalid - self.result.seen_invalid):
            self.fail(f"invalid indexes left unexplained after recovery: {sorted(left | obs.invalid)}")


def observe_backends(db: ConnectionSettings) -> int:
    try:
        with db.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'wishlist-migrate'"
            ).fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else 0


def _close(conn: psycopg.Connection[Any]) -> None:
    with contextlib.suppress(Exception):  # already broken by a restart or a terminate
        conn.close()

"""Benchmarks against floors measured in the same run on the same local PostgreSQL: `python -m bench` (make bench).

Every figure is a median over repeated runs, with min and max, next to its floor and the ratio. Results go to
stdout and to bench/results/latest.md. Nothing here is a test: no timing is asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from psycopg import sql

from bench.measure import COUNTS, GOALS, fmt, goal, timed
from bench.trips import counting_round_trips
from components.engine import catalog as cat
from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.snapshot import generate, replay
from devtools import localpg

REPO = Path(__file__).resolve().parent.parent
APP_SET = REPO / "migrations" / "app"
OUT: list[str] = []


def say_goals() -> None:
    say("\n## Issue #14 goals, against floors measured in this run\n")
    say("| goal | floor | floor ms | measured ms | ratio | target | met |\n|---|---|---|---|---|---|---|")
    for name, floor_name, floor, measured, target in GOALS:
        ratio = measured / floor
        say(
            f"| {name} | {floor_name} | {floor:.1f} | {measured:.1f} | {ratio:.2f}x | <= {target}x | {'yes' if ratio <= target else 'no'} |"
        )
    for name, count, most in COUNTS:
        say(f"| {name} | | | {count} round trips | | <= {most} | {'yes' if count <= most else 'no'} |")


def say(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def row(name: str, samples: list[float], floor: list[float] | None = None, extra: str = "") -> None:
    ratio = f"{statistics.median(samples) / statistics.median(floor):6.2f}x" if floor else "      "
    say(f"| {name:<58} | {fmt(samples)} | {ratio} | {extra} |")


class Bench:
    def __init__(self, repeat: int) -> None:
        self.repeat = repeat
        self.root = Path(tempfile.mkdtemp(prefix="wishlist-bench-pg-"))
        self.cluster = localpg.init_cluster(self.root, localpg.free_port(), secrets.token_hex(12))
        self.admin = ConnectionSettings(
            port=self.cluster.port, dbname="wishlist", user=localpg.ADMIN_USER, password=self.cluster.admin_password, sslmode="disable"
        )
        self.psql = str(localpg.pg_bindir() / "psql")
        self.env = {**os.environ, "PGPASSWORD": self.cluster.admin_password}

    def close(self) -> None:
        self.cluster.destroy()

    def new_db(self) -> ConnectionSettings:
        name = f"b_{secrets.token_hex(4)}"
        with self.admin.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.admin.with_database(name)

    def dsn(self, db: ConnectionSettings) -> str:
        return f"host=127.0.0.1 port={db.port} dbname={db.dbname} user={db.user} sslmode=disable"

    def run_psql(self, db: ConnectionSettings, *args: str) -> None:
        subprocess.run(
            [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(db), *args], env=self.env, check=True, stdout=subprocess.DEVNULL
        )

    def python(self, db: ConnectionSettings, module: str, *args: str) -> None:
        subprocess.run([sys.executable, "-m", module, self.dsn(db), *args], cwd=REPO, env=self.env, check=True, stdout=subprocess.DEVNULL)

    def cli(self, db: ConnectionSettings, *args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "components.migrate", *args, "--quiet", "--dsn", self.dsn(db)],
            cwd=REPO,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    # 1
    def apply(self) -> None:
        say("\n## 1. Apply the wishlist migration to a fresh database\n")
        say("| what | median (min, max) | ratio to floor | notes |\n|---|---|---|---|")
        mset = migset.load(APP_SET)
        dbs: list[ConnectionSettings] = []

        def fresh() -> None:
            dbs.append(self.new_db())

        floor = timed(lambda: self.run_psql(dbs[-1], "-1", "-f", str(APP_SET / "0007_wishlist_items.sql")), self.repeat, fresh)
        row("floor: psql -1 -f 0007_wishlist_items.sql (process)", floor)
        engine = timed(lambda: Engine(dbs[-1], mset).apply(), self.repeat, fresh)
        bare_file = str(APP_SET / "0007_wishlist_items.sql")
        bare = timed(lambda: self.python(dbs[-1], "bench.bare_runner", bare_file), self.repeat, fresh)
        cli = timed(lambda: self.cli(dbs[-1], "apply"), self.repeat, fresh)
        fresh()
        with counting_round_trips(dbs[-1]) as trips:
            Engine(trips.settings, mset).apply()
            fresh_trips = trips.count()
            trips.reset()
            Engine(trips.settings, mset).apply()
            idle_trips = trips.count()
        with dbs[-1].connect(search_path="public") as conn:
            intro = timed(lambda: cat.introspect(conn, "public"), self.repeat * 3)
        row("engine.apply() in-process (connect, ledger, lock, verify x2)", engine, floor, f"{fresh_trips} round trips after connecting")
        idle = timed(lambda: Engine(dbs[-1], mset).apply(), self.repeat)
        row("engine.apply() in-process, nothing to do", idle, None, f"{idle_trips} round trips after connecting")
        COUNTS.extend([("fresh apply of the wishlist migration", fresh_trips, 12), ("apply with nothing to do", idle_trips, 2)])
        row("floor 2: bare psycopg runner (process: lock, ledger, SQL in one transaction)", bare)
        row("python -m components.migrate apply (process)", cli, bare, "ratio to floor 2; includes Python + psycopg start-up")
        goal("one migration, whole process", "bare psycopg runner", bare, cli, 1.1)
        row("  of which: one catalog introspection", intro, None, "twice per apply: the pre-check, the step's verification")
        py = timed(lambda: subprocess.run([sys.executable, "-c", "import psycopg"], check=True), self.repeat)
        row("  of which: python -c 'import psycopg' (process start)", py)

    # 2 and 3
    def idle(self) -> None:
        say("\n## 2-3. Nothing to do, and verify, on an up-to-date database\n")
        say("| what | median (min, max) | ratio to floor | notes |\n|---|---|---|---|")
        from components.schema_migration import SchemaMigrationProvider
        from devtools.provider_props import provider_inputs

        db = self.new_db()
        mset = migset.load(APP_SET)
        Engine(db, mset).apply()
        floor_in = timed(lambda: _connect_select(db), self.repeat * 3)
        row("floor: psycopg connect + SELECT 1 (in-process)", floor_in)
        for name, fn in (
            ("engine.status()", lambda: Engine(db, mset).status()),
            ("engine.plan()", lambda: Engine(db, mset).plan(mset.latest)),
            ("engine.verify()", lambda: Engine(db, mset).verify()),
        ):
            row(name, timed(fn, self.repeat * 3), floor_in, f"{self.trips_of(db, name, mset)} round trip(s) after connect")
        props = provider_inputs(db, mset, stack="bench/dev")
        provider = SchemaMigrationProvider()
        outs = provider.create(props).outs
        for name, fn in (
            ("provider.diff() (preview)", lambda: provider.diff("x", outs, props)),
            ("provider.read() (refresh)", lambda: provider.read("x", outs)),
        ):
            row(name, timed(fn, self.repeat * 3), floor_in, "1 connection")
        floor_p = timed(lambda: self.run_psql(db, "-c", "SELECT version, checksum FROM migration_ledger.applied"), self.repeat)
        row("floor: psql -c 'SELECT ... FROM migration_ledger.applied' (process)", floor_p)
        row("python -m components.migrate status (process)", timed(lambda: self.cli(db, "status"), self.repeat), floor_p)
        row("python -m components.migrate plan (process)", timed(lambda: self.cli(db, "plan"), self.repeat), floor_p)
        row("python -m components.migrate verify (process)", timed(lambda: self.cli(db, "verify"), self.repeat), floor_p)

    def trips_of(self, db: ConnectionSettings, name: str, mset: migset.MigrationSet) -> int:
        """Round trips of one engine read-only call, through the counting proxy."""
        with counting_round_trips(db) as trips:
            engine = Engine(trips.settings, mset)
            {"engine.status()": engine.status, "engine.plan()": lambda: engine.plan(mset.latest), "engine.verify()": engine.verify}[name]()
            return trips.count()

    # 4
    def growth(self, sizes: list[int]) -> None:
        say("\n## 4. Growth: sets of N small synthetic migrations (a table and an index each)\n")
        say("| what | median (min, max) | ratio to floor | notes |\n|---|---|---|---|")
        per: dict[int, float] = {}
        for n in sizes:
            set_dir = Path(tempfile.mkdtemp(prefix=f"bench-set-{n}-")) / "app"
            set_dir.mkdir()
            for i in range(1, n + 1):
                (set_dir / f"{i:04d}_t{i}.sql").write_text(
                    f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);\nCREATE INDEX t{i}_v ON t{i} (v);\n"
                )
            t0 = time.perf_counter()
            generate(self.admin, set_dir)
            snap = [(time.perf_counter() - t0) * 1000]
            mset = migset.load(set_dir)
            whole = set_dir.parent / "all.sql"
            whole.write_text("".join(f"BEGIN;\n{(set_dir / f'{i:04d}_t{i}.sql').read_text()}COMMIT;\n" for i in range(1, n + 1)))
            reps = max(1, self.repeat // (1 if n <= 100 else 3))
            dbs: list[ConnectionSettings] = []
            fresh = lambda: dbs.append(self.new_db())  # noqa: E731
            floor = timed(lambda: self.run_psql(dbs[-1], "-f", str(whole)), reps, fresh)
            apply = timed(lambda: Engine(dbs[-1], mset).apply(), reps, fresh)
            per[n] = statistics.median(apply) / n
            row(f"N={n}: floor psql -f (one transaction per file)", floor)
            growth = f"; {per[n] / per[sizes[0]]:.2f}x the per-migration cost at N={sizes[0]}" if n != sizes[0] else ""
            row(f"N={n}: engine.apply() (lock, verify after each)", apply, floor, f"per migration {per[n]:.1f} ms{growth}")
            if n == 1000:
                goal("N=1,000 apply, verified after each", "psql, one transaction per file", floor, apply, 1.5)
                goal("cost per migration at N=1,000", f"per migration at N={sizes[0]}", [per[sizes[0]]], [per[n]], 1.2)
            plan = timed(lambda: Engine(dbs[-1], mset).plan(mset.latest), self.repeat)
            row(f"N={n}: engine.plan() up to date (set loaded)", plan, None, "")
            load = timed(lambda: migset.load(set_dir), max(1, reps))
            row(f"N={n}: migset.load() (files, journal, {n} snapshots, every file parsed: check)", load)
            lazy = timed(lambda: migset.load(set_dir, parse=False), max(1, reps))
            row(f"N={n}: migset.load(parse=False) (what apply, the program and the provider load)", lazy)
            check = timed(lambda: replay(self.admin, migset.load(set_dir)), 1 if n > 100 else reps)
            row(f"N={n}: check (load, replay on a throwaway database)", check, None, "")
            row(f"N={n}: snapshot generation from nothing (no meta/ yet: each version read whole)", snap, None, "run once")
            (set_dir / f"{n + 1:04d}_t{n + 1}.sql").write_text(f"CREATE TABLE t{n + 1} (id int PRIMARY KEY);\n")
            t0 = time.perf_counter()
            generate(self.admin, set_dir)
            one_more = [(time.perf_counter() - t0) * 1000]
            row(f"N={n}: snapshot after adding one version (meta/ reused: {n} proven, 1 read whole)", one_more, None, "run once")
            (set_dir / f"{n + 1:04d}_t{n + 1}.sql").unlink()
            generate(self.admin, set_dir)  # back to the N versions the rows below measure
            if n == sizes[-1]:
                rss = self.cli_peak_rss(self.new_db(), set_dir)
                row(f"N={n}: python -m components.migrate apply (process)", [rss[0]], floor, f"peak RSS {rss[1] / 1024:.0f} MiB")
                prov = self.peak_rss(["bench.provider_run", self.dsn(self.new_db()), str(set_dir)])
                row(f"N={n}: dynamic provider create + diff (process)", [prov[0]], floor, f"peak RSS {prov[1] / 1024:.0f} MiB")
            shutil.rmtree(set_dir.parent, ignore_errors=True)

    def cli_peak_rss(self, db: ConnectionSettings, set_dir: Path) -> tuple[float, int]:
        """Wall time (ms) and peak RSS (KiB) of one CLI apply."""
        return self.peak_rss(["components.migrate", "apply", "--set", str(set_dir), "--quiet", "--dsn", self.dsn(db)])

    def peak_rss(self, module_args: list[str]) -> tuple[float, int]:
        """Wall time (ms) and peak RSS (KiB, the process's own VmHWM: see bench/peak.py) of `python -m MODULE ARGS`."""
        out = Path(tempfile.mkstemp(prefix="wishlist-bench-peak-")[1])
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "bench.peak", str(out), *module_args],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        wall = (time.perf_counter() - t0) * 1000
        try:
            return wall, int(out.read_text())
        finally:
            out.unlink()

    # 5
    def latency(self, rows: int) -> None:
        say(f"\n## 5. User-scoped queries on {rows:,} rows over ~1,000 users (after ANALYZE)\n")
        say("| query | p50 | p95 | plan |\n|---|---|---|---|")
        db = self.new_db()
        Engine(db, migset.load(APP_SET)).apply()
        with db.connect() as conn:
            conn.execute(
                "INSERT INTO wishlist_items (user_id, title, store, priority, sort_order)"
                " SELECT 'user-' || (i %% 1000), 'set ' || i, (ARRAY['LEGO','Barweer','Cata','BrickLink','Other'])[1 + i %% 5]::wishlist_store,"
                " i %% 6, i FROM generate_series(1, %s) AS i",
                (rows,),
            )
            conn.execute("ANALYZE wishlist_items")
            queries = {
                "by sort order, LIMIT 20": "SELECT * FROM wishlist_items WHERE user_id = %s ORDER BY sort_order LIMIT 20",
                "by store": "SELECT * FROM wishlist_items WHERE user_id = %s AND store = 'LEGO'",
                "by priority": "SELECT * FROM wishlist_items WHERE user_id = %s AND priority = 3",
                "by store and priority": "SELECT * FROM wishlist_items WHERE user_id = %s AND store = 'Cata' AND priority = 2",
            }
            for name, query in queries.items():
                samples = []
                for i in range(200):
                    t0 = time.perf_counter()
                    conn.execute(query, (f"user-{i * 7 % 1000}",)).fetchall()
                    samples.append((time.perf_counter() - t0) * 1000)
                samples.sort()
                plan = conn.execute("EXPLAIN (FORMAT JSON) " + query, ("user-7",)).fetchone()[0][0]["Plan"]  # type: ignore[index]
                say(f"| {name} | {samples[len(samples) // 2]:.2f} ms | {samples[int(len(samples) * 0.95)]:.2f} ms | {_plan_brief(plan)} |")

    # 6
    def locks(self, rows: int) -> None:
        say(f"\n## 6. Building an index on {rows:,} rows while a writer inserts: longest blocked write\n")
        say("| how | build time | longest write | writes during build |\n|---|---|---|---|")
        for concurrently in (False, True):
            db = self.new_db()
            Engine(db, migset.load(APP_SET)).apply()
            with db.connect() as conn:
                conn.execute(
                    "INSERT INTO wishlist_items (user_id, title, store) SELECT 'user-' || (i %% 1000), 'set ' || i, 'LEGO'"
                    " FROM generate_series(1, %s) i",
                    (rows,),
                )
            stop = threading.Event()
            worst: list[float] = []

            def writer(db: ConnectionSettings = db) -> None:
                with db.connect() as w:
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        w.execute("INSERT INTO wishlist_items (user_id, title, store) VALUES ('w', 'x', 'LEGO')")
                        worst.append((time.perf_counter() - t0) * 1000)
                        time.sleep(0.01)

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(0.3)
            worst.clear()
            with db.connect() as conn:
                t0 = time.perf_counter()
                conn.execute(f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}idx_bench_title ON wishlist_items (title)")
                build = (time.perf_counter() - t0) * 1000
            stop.set()
            thread.join()
            how = "CREATE INDEX CONCURRENTLY (-- migrate:no-transaction)" if concurrently else "CREATE INDEX (in a transaction)"
            say(f"| {how} | {build:.0f} ms | {max(worst):.0f} ms | {len(worst)} |")

    # 7
    def end_to_end(self) -> None:
        say("\n## 7. End to end: pulumi preview / up with nothing to do on the dev stack\n")
        from bench.e2e import run_e2e

        for line in run_e2e(self, self.repeat):
            say(line)

    # 8
    def daily_loop(self) -> None:
        say("\n## 8. The migration loop of the README: make migration, make snapshot, make check, make preview\n")
        from bench.loop import run_loop

        for line in run_loop(self.repeat):
            say(line)


def _connect_select(db: ConnectionSettings) -> None:
    with db.connect() as conn:
        conn.execute("SELECT 1").fetchone()


def _plan_brief(plan: dict[str, Any]) -> str:
    nodes = []

    def walk(p: dict[str, Any]) -> None:
        nodes.append(p["Node Type"] + (f" {p['Index Name']}" if p.get("Index Name") else ""))
        for c in p.get("Plans", []):
            walk(c)

    walk(plan)
    return " → ".join(nodes)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (a smoke run)")
    parser.add_argument("--only", default="1,2,4,5,6,7,8", help="comma-separated sections")
    args = parser.parse_args()
    repeat = 3 if args.quick else args.repeat
    only = set(args.only.split(","))
    bench = Bench(repeat)
    try:
        server = bench.cluster.superuser_psql("SHOW server_version").strip()
        say("# wishlist-infra benchmarks\n")
        say(
            f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, PostgreSQL {server} "
            f"(local, fsync off), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; repeat {repeat}."
        )
        if "1" in only:
            bench.apply()
        if "2" in only:
            bench.idle()
        if "4" in only:
            bench.growth([10, 100] if args.quick else [10, 100, 1000])
        if "5" in only:
            bench.latency(100_000)
            if not args.quick:
                bench.latency(1_000_000)
        if "6" in only:
            bench.locks(200_000 if args.quick else 1_000_000)
        if "7" in only:
            bench.end_to_end()
        if "8" in only:
            bench.daily_loop()
        if GOALS:
            say_goals()
    finally:
        bench.close()
    out = REPO / "bench" / "results" / "latest.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(OUT) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

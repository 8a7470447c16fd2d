"""Files are parsed when a run needs them: the pending ones, before anything runs; an up-to-date run parses nothing.

The SQL parser (pglast) costs tens of milliseconds to import and the whole set's parse grows with its length. The
Pulumi program, the provider's diff and the CLI's run commands load the set without parsing it; the plan parses every
file it is about to run, so a bad file is still refused before any file runs, whichever command found it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.engine import migset
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import SetError, TransactionControl
from components.engine.snapshot import generate
from tests.conftest import REPO
from tests.integration.test_engine_safety import cli_process
from tests.integration.test_wishlist_items_migration import ledger_rows, q

GOOD = "CREATE TABLE a (id int);\n"
BAD = {
    "commit": ("CREATE TABLE b (id int);\nCOMMIT;\nCREATE TABLE c (id int);\n", TransactionControl, r"0009_bad\.sql line 2: `COMMIT`"),
    "syntax": ("CREATE TABLE b (id int);\nCREATE TABLE c (id int,);\n", SetError, r"0009_bad\.sql line 2: syntax error"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_file_behind_good_ones_is_refused_before_any_of_them_runs(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path, kind: str
) -> None:
    text, error, match = BAD[kind]
    (set_copy / "0008_good.sql").write_text(GOOD)
    (set_copy / "0009_bad.sql").write_text("CREATE TABLE b (id int);\n")
    generate(admin, set_copy)  # both have a snapshot and a trace; then 0009 goes bad, its journal entry edited to match
    (set_copy / "0009_bad.sql").write_text(text)
    journal = json.loads((set_copy / "meta/_journal.json").read_text())
    journal["entries"][-1]["up"]["sha256"] = migset.sha256_hex(text.encode())
    (set_copy / "meta/_journal.json").write_text(json.dumps(journal))
    lazy = migset.load(set_copy, parse=False)  # what the CLI and the provider load: no file parsed yet
    for run in (lambda: Engine(fresh_db, lazy).plan(lazy.latest), lambda: Engine(fresh_db, lazy).apply()):
        with pytest.raises(error, match=match):
            run()
    proc = cli_process(fresh_db, "apply", set_dir=set_copy)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"{set_copy / '0009_bad.sql'} line 2" in err, err
    assert q(fresh_db, "SELECT to_regclass('wishlist_items'), to_regclass('a')") == [(None, None)]  # 0007 and 0008 did not run
    assert ledger_rows(fresh_db) == []


def test_an_up_to_date_run_does_not_load_the_sql_parser(fresh_db: ConnectionSettings) -> None:
    """status, verify and apply with nothing to do on an up-to-date database: no file is parsed, pglast is not imported."""
    Engine(fresh_db, migset.load(migset.Path(REPO / "migrations/app"))).apply()
    dsn = f"host={fresh_db.host} port={fresh_db.port} dbname={fresh_db.dbname} user={fresh_db.user} password={fresh_db.password} sslmode=disable"
    code = (
        "import sys, contextlib, io\nimport components.migrate as m\n"
        "for cmd in ('status', 'verify', 'apply'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        f"        assert m.main([cmd, '--quiet', '--dsn', {dsn!r}]) == 0, cmd\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] == 'pglast'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True, capture_output=True, timeout=120)
    assert out.returncode == 0, out
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_a_bad_down_file_behind_a_good_one_is_refused_before_either_rollback_runs(
    fresh_db: ConnectionSettings, admin: ConnectionSettings, set_copy: Path
) -> None:
    """Rolling back 0009 then 0008: a COMMIT in 0008's down file is refused before 0009's down runs."""
    (set_copy / "0008_a.sql").write_text(GOOD)
    (set_copy / "0008_a.down.sql").write_text("DROP TABLE a;\n")
    (set_copy / "0009_b.sql").write_text("CREATE TABLE b (id int);\n")
    (set_copy / "0009_b.down.sql").write_text("DROP TABLE b;\n")
    generate(admin, set_copy)
    Engine(fresh_db, migset.load(set_copy)).apply()
    bad = "DROP TABLE a;\nCOMMIT;\n"
    (set_copy / "0008_a.down.sql").write_text(bad)
    journal = json.loads((set_copy / "meta/_journal.json").read_text())
    journal["entries"][-2]["down"]["sha256"] = migset.sha256_hex(bad.encode())
    (set_copy / "meta/_journal.json").write_text(json.dumps(journal))
    lazy = migset.load(set_copy, parse=False)
    with pytest.raises(TransactionControl, match=r"0008_a\.down\.sql line 2: `COMMIT`"):
        Engine(fresh_db, lazy).migrate_to("0007", allow_rollback=True)
    proc = cli_process(fresh_db, "rollback", "--to", "0007", set_dir=set_copy)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and f"{set_copy / '0008_a.down.sql'} line 2" in err, err
    assert q(fresh_db, "SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NOT NULL") == [(True, True)]
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008", "0009"]

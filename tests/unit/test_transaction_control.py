"""The engine owns transactions: a file with transaction control is refused when the set is loaded (pure, no database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.engine import migset
from components.engine.errors import SetError, TransactionControl
from tests.conftest import REPO

GOOD = "CREATE TABLE a (id int);\n"


def make_set(root: Path, files: dict[str, str]) -> Path:
    """A set directory holding `files` and a journal for them (empty snapshots: nothing here reads them)."""
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    migset.write_meta(root, "public", {f.version: {} for f in migset.scan(root)})
    return root


@pytest.mark.parametrize(
    ("files", "bad_file", "line", "statement"),
    [
        ({"0001_a.sql": "CREATE TABLE a (id int);\n\nCOMMIT;\nCREATE TABLE b (id int);\n"}, "0001_a.sql", 3, "COMMIT"),
        ({"0001_a.sql": "-- migrate:no-transaction\nBEGIN;\nCREATE INDEX CONCURRENTLY i ON t (c);\n"}, "0001_a.sql", 2, "BEGIN"),
        ({"0001_a.sql": GOOD, "0001_a.down.sql": "SAVEPOINT s;\nDROP TABLE a;\nRELEASE s;\n"}, "0001_a.down.sql", 1, "SAVEPOINT s"),
        ({"0001_a.sql": GOOD, "0002_b.sql": "SELECT 1;\r\n  end ;\r\n"}, "0002_b.sql", 2, "end"),
        ({"0001_a.sql": "\ufeffPREPARE TRANSACTION 'x';\n"}, "0001_a.sql", 1, "PREPARE TRANSACTION 'x'"),
    ],
)
def test_transaction_control_is_refused_at_load(tmp_path: Path, files: dict[str, str], bad_file: str, line: int, statement: str) -> None:
    set_dir = make_set(tmp_path / "set", files)
    with pytest.raises(TransactionControl) as err:
        migset.load(set_dir)
    message = str(err.value)
    assert f"{set_dir / bad_file} line {line}: `{statement}`" in message, message
    assert isinstance(err.value, SetError) and "Fix:" in message and "-- migrate:no-transaction" in message


def test_a_syntax_error_is_refused_at_load_naming_the_file(tmp_path: Path) -> None:
    set_dir = make_set(tmp_path / "set", {"0001_a.sql": "CREATE TABLE a (id int);\nCREATE TABLE b (id int,);\n"})
    with pytest.raises(SetError, match=r"0001_a\.sql line 2: syntax error at or near"):
        migset.load(set_dir)


def test_cli_check_refuses_transaction_control_in_one_line(tmp_path: Path) -> None:
    set_dir = make_set(tmp_path / "set", {"0001_a.sql": "CREATE TABLE a (id int);\nCOMMIT;\nSELECT 1 / 0;\n"})
    proc = subprocess.run(
        [sys.executable, "-m", "components.migrate", "check", "--set", str(set_dir)], cwd=REPO, text=True, capture_output=True, timeout=60
    )
    assert proc.returncode == 1, proc
    assert proc.stderr.startswith(f"error: {set_dir / '0001_a.sql'} line 2: `COMMIT`") and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""

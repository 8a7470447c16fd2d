"""`migrate new`: the next free version, up and down files, and the set's naming rule (files only, no database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.engine import migset
from components.engine.authoring import down_skeleton, from_drizzle, new_migration
from components.engine.errors import SetError
from tests.conftest import REPO

DRIZZLE = (
    "CREATE TYPE \"public\".\"alert_kind\" AS ENUM('price', 'stock');--> statement-breakpoint\n"
    'CREATE TABLE "price_alerts" (\n\t"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,\n'
    '\t"item_id" uuid NOT NULL,\n\t"kind" "alert_kind" DEFAULT \'price\' NOT NULL\n);\n--> statement-breakpoint\n'
    'CREATE SEQUENCE "alert_seq";--> statement-breakpoint\n'
    'ALTER TABLE "price_alerts" ADD CONSTRAINT "price_alerts_item_fk" FOREIGN KEY ("item_id") '
    'REFERENCES "public"."wishlist_items"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint\n'
    'CREATE INDEX "price_alerts_item_idx" ON "price_alerts" USING btree ("item_id");'
)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "components.migrate", *args], cwd=REPO, text=True, capture_output=True, timeout=60)


def test_new_writes_the_next_version_with_headers(set_copy: Path) -> None:
    up, down = new_migration(set_copy, "wishlist_price_alerts")
    assert (up.name, down.name) == ("0008_wishlist_price_alerts.sql", "0008_wishlist_price_alerts.down.sql")
    assert up.read_text().startswith("-- 0008_wishlist_price_alerts") and "-- migrate:no-transaction" in up.read_text()
    assert "undo" in down.read_text().lower()
    assert migset.header_markers(up.read_text()) == {} and migset.header_markers(down.read_text()) == {}  # comments, not markers
    assert [f.version for f in migset.scan(set_copy)] == ["0007", "0008"]
    with pytest.raises(SetError, match=r"0008_wishlist_price_alerts\.sql already exists"):
        new_migration(set_copy, "wishlist_price_alerts", version="0008")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Price-Alerts", "'P', '-', 'A'"),
        ("0008_price_alerts", "without its version"),
        ("", "empty"),
        ("price alerts", "' '"),
        ("alerts.down", "'.'"),
    ],
)
def test_new_refuses_names_the_naming_rule_refuses(set_copy: Path, name: str, reason: str) -> None:
    with pytest.raises(SetError) as err:
        new_migration(set_copy, name)
    assert reason in str(err.value) and "Fix:" in str(err.value), err.value
    assert [f.version for f in migset.scan(set_copy)] == ["0007"]


def test_new_on_a_set_with_a_gap_names_the_missing_version(set_copy: Path) -> None:
    (set_copy / "0009_later.sql").write_text("SELECT 1;\n")
    with pytest.raises(SetError, match=r"versions jump from 0007 to 0009: 0008 is missing") as err:
        new_migration(set_copy, "next")
    assert "0009_later.sql" in str(err.value)


def test_new_on_a_set_with_a_duplicate_version_names_both_files(set_copy: Path) -> None:
    (set_copy / "0007_again.sql").write_text("SELECT 1;\n")
    with pytest.raises(SetError, match=r"version 0007 is used twice: 0007_again.sql and 0007_wishlist_items.sql"):
        new_migration(set_copy, "next")


def test_new_on_an_empty_set_starts_at_0001(tmp_path: Path) -> None:
    up, _ = new_migration(tmp_path, "first")
    assert up.name == "0001_first.sql"


def test_cli_new_and_its_refusal(set_copy: Path) -> None:
    ok = run_cli("new", "price_alerts", "--set", str(set_copy))
    assert ok.returncode == 0, ok.stderr
    assert "0008_price_alerts.sql" in ok.stdout and "make snapshot" in ok.stdout
    bad = run_cli("new", "Price-Alerts", "--set", str(set_copy))
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, bad.stderr


def test_from_drizzle_strips_breakpoints_and_keeps_every_other_byte() -> None:
    up = from_drizzle(DRIZZLE)
    assert "statement-breakpoint" not in up
    assert up == DRIZZLE.replace("--> statement-breakpoint", "")


def test_down_skeleton_lists_created_objects_in_reverse_and_is_marked_unreviewed() -> None:
    down = down_skeleton(from_drizzle(DRIZZLE), "0008_price_alerts.sql")
    assert "unreviewed" in migset.header_markers(down)
    drops = [line for line in down.splitlines() if line.startswith("DROP")]
    assert drops == [
        'DROP INDEX "price_alerts_item_idx";',
        'DROP SEQUENCE "alert_seq";',
        'DROP TABLE "price_alerts";',
        'DROP TYPE "public"."alert_kind";',
    ]


def test_cli_new_from_drizzle_writes_both_files(set_copy: Path, tmp_path: Path) -> None:
    src = tmp_path / "0000_brave_alerts.sql"
    src.write_bytes(DRIZZLE.encode())
    proc = run_cli("new", "price_alerts", "--from-drizzle", str(src), "--set", str(set_copy))
    assert proc.returncode == 0, proc.stderr
    assert (set_copy / "0008_price_alerts.sql").read_bytes() == DRIZZLE.replace("--> statement-breakpoint", "").encode()
    assert "DROP TABLE" in (set_copy / "0008_price_alerts.down.sql").read_text()
    assert "review" in proc.stdout


def test_cli_new_from_a_missing_drizzle_file_says_so(set_copy: Path, tmp_path: Path) -> None:
    proc = run_cli("new", "price_alerts", "--from-drizzle", str(tmp_path / "nope.sql"), "--set", str(set_copy))
    assert proc.returncode == 1 and "nope.sql" in proc.stderr and "Fix:" in proc.stderr, proc.stderr
    assert not (set_copy / "0008_price_alerts.sql").exists()


def test_check_refuses_an_unreviewed_down_skeleton(tmp_path: Path) -> None:
    set_dir = tmp_path / "set"
    set_dir.mkdir()
    (set_dir / "0001_a.sql").write_text("CREATE TABLE a (id int);\n")
    (set_dir / "0001_a.down.sql").write_text(down_skeleton("CREATE TABLE a (id int);\n", "0001_a.sql"))
    migset.write_meta(set_dir, "public", {"0001": {}})
    proc = run_cli("check", "--offline", "--set", str(set_dir))
    assert proc.returncode == 1, proc
    assert "0001_a.down.sql" in proc.stderr and "migrate:unreviewed" in proc.stderr and "Fix:" in proc.stderr, proc.stderr


def test_from_drizzle_removes_only_breakpoint_comments_and_keeps_a_bom() -> None:
    text = "\ufeffCREATE TABLE a (x text DEFAULT '--> statement-breakpoint', y text DEFAULT 'é');--> statement-breakpoint\r\nCREATE INDEX i ON a (x);\n"
    up = from_drizzle(text)
    assert up == text.replace(";--> statement-breakpoint\r\n", ";\r\n")
    assert "DROP TABLE" in down_skeleton(up, "0008_x.sql")  # the BOM does not break the parser either


def test_a_name_too_long_for_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SetError, match="keep it to 60"):
        new_migration(tmp_path, "x" * 260)

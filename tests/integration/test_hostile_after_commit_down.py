"""Breaking review, round 19 (issue #14: the read after COMMIT).

1. The read after COMMIT also runs for a rollback (down) step, and its message says "the ledger records the version as
   applied": after a down step the ledger no longer lists the version at all. The message is false of the database
   (its fix, "roll back to the version before and apply again", also reads as if the step were an up).
Held (probed, not kept): after the read after COMMIT stops an up step, verify reports the difference and apply again
refuses with the drift, not applying 0010.
Failed on a11b0f8; fixed: the message says what the ledger holds for the step's direction.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.engine import migset, runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_after_commit import _TRUNCATE_REFILL_IN_A_ROUND
from tests.integration.test_hostile_migrations import _relations, _write
from tests.integration.test_scoped_verify import BASE
from tests.integration.test_wishlist_items_migration import ledger_rows


def _swap_down(set_copy: Path, version: str, text: str) -> migset.MigrationSet:
    path = set_copy / f"{version}_step.down.sql"
    path.write_text(text)
    journal_path = set_copy / "meta/_journal.json"
    journal = json.loads(journal_path.read_text())
    for entry in journal["entries"]:
        if entry["version"] == version:
            entry["down"]["sha256"] = migset.sha256_hex(path.read_bytes())
    journal_path.write_text(json.dumps(journal, indent=2, sort_keys=True) + "\n")
    return migset.load(set_copy)


def test_read_after_commit_of_a_down_step_claims_the_version_is_applied(
    fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 10**9)
    (set_copy / "0009_step.down.sql").write_text("DROP TABLE b;\n")
    mset = _write(set_copy, admin, {"0008": BASE["0008"], "0009": BASE["0009"]})
    Engine(fresh_db, mset).apply("0009")
    mset = _swap_down(set_copy, "0009", "DROP TABLE b;\n" + _TRUNCATE_REFILL_IN_A_ROUND)
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).rollback("0008")
    message = str(failure.value)
    versions = [r[0] for r in ledger_rows(fresh_db)]
    assert "evil" in _relations(fresh_db) and "0009" not in versions, (versions, message)
    # the message must be true of the database: 0009 is not recorded as applied any more
    assert "records the version as applied" not in message, message

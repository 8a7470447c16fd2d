"""User code that runs after the migration's statements, in the step's transaction: a trigger on the ledger (the engine's
own row fires it) and a deferred constraint trigger (SET CONSTRAINTS ALL IMMEDIATE fires it). Both ran after the check
of the engine's prepared statements and before the EXECUTE of its verifying read, so either could replace that read
with one returning the expected catalog (issue #14, found while cutting the per-step cost of the check; both tests
failed on the code before the fix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.engine import runner
from components.engine.connection import ConnectionSettings
from components.engine.engine import Engine
from components.engine.errors import MigrationError
from tests.integration.test_hostile_migrations import _relations
from tests.integration.test_scoped_verify import BASE, _set
from tests.integration.test_wishlist_items_migration import ledger_rows

# Replaces statement `name` (prepared by the engine at an earlier step on this connection) with one returning what the
# honest read returns now, then creates table evil. In the ledger schema, so that the honest read does not see it.
_FORGER = """
CREATE FUNCTION migration_ledger.forge() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE q text; j json;
BEGIN
  SELECT regexp_replace(statement, '^PREPARE \\S+ AS ', '') INTO q FROM pg_prepared_statements WHERE name = '{name}';
  IF q IS NULL THEN RAISE EXCEPTION 'the engine did not prepare {name} before 0009 ran'; END IF;
  EXECUTE replace(q, '$1', quote_literal('public')) INTO j;
  CREATE TABLE public.evil (id int);
  EXECUTE 'DEALLOCATE {name}';
  EXECUTE format('PREPARE {name}(text) AS SELECT %L::json', j);
  RETURN NULL;
END $f$;
"""

_TRIGGERS = {
    "on the ledger": "CREATE TRIGGER forge AFTER INSERT ON migration_ledger.applied FOR EACH ROW EXECUTE FUNCTION migration_ledger.forge();\n",
    "deferred": (
        "CREATE TABLE migration_ledger.q (id int);\n"
        "CREATE CONSTRAINT TRIGGER forge AFTER INSERT ON migration_ledger.q DEFERRABLE INITIALLY DEFERRED\n"
        "  FOR EACH ROW EXECUTE FUNCTION migration_ledger.forge();\n"
        "INSERT INTO migration_ledger.q VALUES (1);\n"
    ),
}


@pytest.mark.parametrize("how", sorted(_TRIGGERS))
def test_a_trigger_that_replaces_the_engines_read_after_the_statements_is_caught(
    how: str, fresh_db: ConnectionSettings, set_copy: Path, admin: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "SCOPED_FROM", 10**9)  # middle steps read the whole schema: wishlist_verifiable
    mset = _set(set_copy, admin, BASE["0009"] + _FORGER.format(name="wishlist_verifiable") + _TRIGGERS[how])
    with pytest.raises(MigrationError) as failure:
        Engine(fresh_db, mset).apply()
    message = str(failure.value)
    assert "0009" in message and "rolled back" in message, message
    assert [r[0] for r in ledger_rows(fresh_db)] == ["0007", "0008"]
    assert "evil" not in _relations(fresh_db)

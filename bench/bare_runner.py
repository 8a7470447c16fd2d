"""The floor for one migration as a whole process: a bare psycopg runner (lock, ledger, the SQL in one transaction).

What a hand-written runner does and nothing more: no checksum, no snapshot, no verification, no lint. Usage:
`python -m bench.bare_runner DSN FILE`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import psycopg


def main(dsn: str, path: str) -> None:
    text = Path(path).read_text()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(42)")
        conn.execute("CREATE TABLE IF NOT EXISTS bare_ledger (version text PRIMARY KEY, applied_at timestamptz DEFAULT now())")
        version = Path(path).name[:4]
        if conn.execute("SELECT 1 FROM bare_ledger WHERE version = %s", (version,)).fetchone() is None:
            with conn.transaction():
                conn.execute(text.encode())  # no parameters: the whole file in one simple query
                conn.execute("INSERT INTO bare_ledger (version) VALUES (%s)", (version,))
        conn.execute("SELECT pg_advisory_unlock(42)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

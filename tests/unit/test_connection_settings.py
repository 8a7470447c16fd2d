"""ConnectionSettings hands libpq exactly the TLS settings it was given (no I/O: psycopg.connect is replaced)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from components.engine.connection import PINNED, ConnectionSettings


def _connect_kwargs(monkeypatch: pytest.MonkeyPatch, settings: ConnectionSettings) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    class _Info:
        def parameter_status(self, name: str) -> str | None:
            return dict(PINNED).get(name)  # as a server that took the pinned settings reports them

    class _Connection:
        info = _Info()

    def fake_connect(**kwargs: Any) -> object:
        seen.update(kwargs)
        return _Connection()

    monkeypatch.setattr(psycopg, "connect", fake_connect)
    settings.connect()
    return seen


def test_sslrootcert_is_passed_to_libpq_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = _connect_kwargs(monkeypatch, ConnectionSettings(sslmode="verify-full", sslrootcert="certs/rds-ca-bundle.pem"))
    assert kwargs["sslmode"] == "verify-full" and kwargs["sslrootcert"] == "certs/rds-ca-bundle.pem"


def test_no_sslrootcert_leaves_libpq_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = _connect_kwargs(monkeypatch, ConnectionSettings(sslmode="disable"))
    assert "sslrootcert" not in kwargs and kwargs["sslmode"] == "disable"


def test_passwords_in_sql_text_are_masked() -> None:
    """Statements and other sessions' queries appear in messages: a role password in them must not."""
    from components.engine.connection import mask_dsn

    for text in (
        "CREATE ROLE app LOGIN PASSWORD 'Sup3r''secret' VALID UNTIL 'infinity'",
        "alter role app with password   E'Sup3r''secret'",
        "ALTER ROLE app PASSWORD 'Sup3r''secr",  # cut short by a length limit
        "host=db password=Sup3r'secret user=x",
        "postgresql://u:Sup3r@secret@127.0.0.1:1/db",
        "host=db password=Sup3r\\ secret user=x",
        "ALTER ROLE app PASSWORD $$Sup3r secret$$",
        "ALTER ROLE app PASSWORD E'Sup3r\\'secret' LOGIN",
    ):
        masked = mask_dsn(text)
        assert "Sup3r" not in masked and "secret" not in masked and "***" in masked, masked
    assert mask_dsn("SELECT 'no secret here'") == "SELECT 'no secret here'"

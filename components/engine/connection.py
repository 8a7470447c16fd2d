"""Connection settings for the engine: parsed from a DSN or PG* variables, never printed with the password."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .errors import ConnectFailed

if TYPE_CHECKING:
    import psycopg

DEFAULT_CONNECT_TIMEOUT = 10
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)\S*@")  # greedy: a password may itself hold '@'

_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:\\.|\S)+)", re.IGNORECASE)
# SQL text shown in messages (a statement, another session's query): CREATE/ALTER ROLE ... PASSWORD '...'.
_MENTIONS_PASSWORD = re.compile(r"password", re.IGNORECASE)
# Comments (kept, so that a quote inside one does not start a literal), dollar-quoted strings, quoted literals (E'',
# U&'', B'', X'', N''; unterminated ones run to the end).
_SQL_TOKENS = re.compile(r"/\*.*?\*/|--[^\n]*|\$(\w*)\$.*?(?:\$\1\$|$)|(?:[EeBbXxNn]|[Uu]&)?'(?:[^'\\]|\\.|'')*'?", re.S)
_PASSWORD_SQL = re.compile(r"(\bpassword\s+)(E'(?:[^'\\]|\\.|'')*'?|'(?:[^']|'')*'?|\$(\w*)\$.*?(?:\$\3\$|$))", re.IGNORECASE)


def mask_dsn(text: str) -> str:
    """Replace any password in DSN-looking text by ***; in SQL text that mentions a password anywhere, every string
    literal (a password may reach PASSWORD through format(), quote_literal() or a comment in between)."""
    masked = _PASSWORD_SQL.sub(r"\1'***'", _PASSWORD_KV.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", text)))
    if _MENTIONS_PASSWORD.search(masked):
        masked = _SQL_TOKENS.sub(lambda m: m.group(0) if m.group(0).startswith(("/*", "--")) else "'***'", masked)
    return masked


# What constants parse under and definitions print under, pinned for every session of the engine (as pg_dump pins
# its own): a database default (ALTER DATABASE ... SET TimeZone), a role default or the operator's PGTZ/PGDATESTYLE
# would otherwise change what a migration's `'2024-01-01'::timestamptz` means and how the catalog read prints it.
PINNED = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("standard_conforming_strings", "on"),
    ("quote_all_identifiers", "off"),
    ("xmloption", "content"),
    ("lc_monetary", "C"),
    # how a statement's text and constants are read
    ("client_encoding", "UTF8"),
    ("array_nulls", "on"),
    ("timezone_abbreviations", "Default"),
    ("transform_null_equals", "off"),
    ("backslash_quote", "safe_encoding"),
    ("xmlbinary", "base64"),
    ("default_table_access_method", "heap"),
)
_REPORTED = ("TimeZone", "DateStyle", "IntervalStyle", "standard_conforming_strings", "client_encoding")


def pin_settings(*, local: bool) -> str:
    """One statement that sets PINNED for the transaction (`local`) or the session, each setting only where it differs
    (a setting's text equal to the pinned value is that value; setting it again costs a parse, and the abbreviations
    file a read). The search_path is the caller's: RESET ALL returns it, SET LOCAL search_path TO DEFAULT in a
    transaction (see catalog.RESET_PRINT_SETTINGS)."""
    values = ", ".join(f"('{name}', '{value}')" for name, value in PINNED)
    flag = "true" if local else "false"
    return (
        f"SELECT pg_catalog.set_config(v.name, v.value, {flag}) FROM (VALUES {values}) v(name, value)"
        " WHERE NOT pg_catalog.current_setting(v.name) OPERATOR(pg_catalog.=) v.value"
    )


PIN_SESSION = pin_settings(local=False)


@dataclass(frozen=True)
class ConnectionSettings:
    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = "postgres"
    user: str = "postgres"
    password: str | None = field(default=None, repr=False)
    sslmode: str = "prefer"
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    application_name: str = "wishlist-migrate"
    sslrootcert: str | None = None  # CA bundle for verify-ca/verify-full (AWS: the RDS CA bundle)

    @classmethod
    def from_dsn(cls, dsn: str | None, env: Mapping[str, str] | None = None) -> ConnectionSettings:
        """Parse a libpq DSN (URL or key=value); unset parts come from PG* variables."""
        from psycopg.conninfo import conninfo_to_dict

        env = os.environ if env is None else env
        try:
            parts: dict[str, Any] = conninfo_to_dict(dsn or "")
        except Exception as exc:  # psycopg.ProgrammingError: message may echo the DSN
            raise ConnectFailed(
                f"invalid DSN {mask_dsn(dsn or '')!r}: {mask_dsn(str(exc))}.",
                "use postgresql://USER@HOST:PORT/DBNAME or 'host=... port=... dbname=... user=...'.",
            ) from None

        def pick(key: str, var: str, default: str | None) -> str | None:
            value = parts.get(key)
            if value not in (None, ""):
                return str(value)
            return env.get(var) or default

        port_text = pick("port", "PGPORT", "5432") or "5432"
        timeout_text = pick("connect_timeout", "PGCONNECT_TIMEOUT", str(DEFAULT_CONNECT_TIMEOUT))
        try:
            port = int(port_text)
            timeout = int(timeout_text or DEFAULT_CONNECT_TIMEOUT)
        except ValueError:
            raise ConnectFailed(
                f"invalid port {port_text!r} or connect_timeout {timeout_text!r}.",
                "both must be whole numbers.",
            ) from None
        return cls(
            host=pick("host", "PGHOST", "127.0.0.1") or "127.0.0.1",
            port=port,
            dbname=pick("dbname", "PGDATABASE", None) or pick("user", "PGUSER", "postgres") or "postgres",
            user=pick("user", "PGUSER", "postgres") or "postgres",
            password=pick("password", "PGPASSWORD", None),
            sslmode=pick("sslmode", "PGSSLMODE", "prefer") or "prefer",
            connect_timeout=max(1, timeout),
        )

    def with_database(self, dbname: str) -> ConnectionSettings:
        return replace(self, dbname=dbname)

    def describe(self) -> str:
        """Where this connects, without the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def connect(self, *, autocommit: bool = True, search_path: str | None = None) -> psycopg.Connection[Any]:
        """Open a connection with the settings definitions print and constants parse under pinned (PINNED); failures
        become ConnectFailed with the password masked."""
        import psycopg

        # Quoted as an identifier, with spaces and backslashes escaped for libpq's options syntax.
        quoted = None if search_path is None else '"' + search_path.replace('"', '""') + '"'
        pinned = {**dict(PINNED), **({} if quoted is None else {"search_path": quoted})}
        options = " ".join("-c " + f"{name}={value}".replace("\\", "\\\\").replace(" ", "\\ ") for name, value in pinned.items())
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "sslmode": self.sslmode,
            "connect_timeout": self.connect_timeout,
            "application_name": self.application_name,
        }
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslrootcert is not None:
            kwargs["sslrootcert"] = self.sslrootcert
        if options:
            kwargs["options"] = options
        try:
            conn = psycopg.connect(autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if self.password:
                message = message.replace(self.password, "***")
            full = str(exc)
            raise ConnectFailed(
                f"cannot connect to {self.describe()}: {mask_dsn(message)}.",
                "check host, port, user and password (PGPASSWORD or the stack secret), and that the server is running and reachable.",
                refused="FATAL:" in full,  # libpq's wording when the server answered (login, database, limits), not the network
            ) from None
        # libpq sends PGTZ and PGDATESTYLE from the environment after the options, and they win: the server reports
        # both (and IntervalStyle) when the session starts, so pinning them again costs a round trip only then.
        if any(conn.info.parameter_status(name) not in (value, None) for name, value in PINNED if name in _REPORTED):
            conn.execute(PIN_SESSION)
        return conn

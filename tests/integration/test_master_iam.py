"""MasterIamLogin against a real PostgreSQL: the grant uses the password read at run time; refresh never connects."""

from __future__ import annotations

import pytest

from components import master_iam
from components.engine.connection import ConnectionSettings


def test_grant_reads_the_current_password_and_is_idempotent(fresh_db: ConnectionSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    with fresh_db.connect() as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'rds_iam'").fetchone() is None:
            conn.execute("CREATE ROLE rds_iam NOLOGIN")  # stands in for RDS's role
        conn.execute("REVOKE rds_iam FROM CURRENT_USER")
    reads: list[str] = []
    monkeypatch.setattr(master_iam, "current_password", lambda arn, region: reads.append(arn) or str(fresh_db.password))
    props = {
        "host": fresh_db.host,
        "port": fresh_db.port,
        "database": fresh_db.dbname,
        "user": fresh_db.user,
        "secret_arn": "arn:secret",
        "region": "us-east-1",
        "sslmode": "disable",
        "sslrootcert": None,
    }
    master_iam.MasterIamLoginProvider().create(props)
    master_iam.MasterIamLoginProvider().update("id", props, props)  # already a member: no second GRANT, no error
    assert reads == ["arn:secret", "arn:secret"]
    with fresh_db.connect() as conn:
        assert conn.execute("SELECT pg_has_role(current_user, 'rds_iam', 'member')").fetchone() == (True,)
        conn.execute("REVOKE rds_iam FROM CURRENT_USER")


def test_refresh_never_connects() -> None:
    props = {"host": "127.0.0.1", "port": 1, "database": "x", "user": "u", "secret_arn": "a", "region": "r", "sslmode": "disable"}
    assert master_iam.MasterIamLoginProvider().read("id", props).outs == props

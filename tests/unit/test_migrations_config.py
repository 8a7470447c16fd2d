"""wishlist:migrations is validated once, and each error names the key that holds the bad value."""

from __future__ import annotations

import pytest

from components.config import ConfigError, MigrationsConfig


@pytest.mark.parametrize(
    ("raw", "environment", "key"),
    [
        ({"statementTimeoutMs": -1}, "dev", "migrations.statementTimeoutMs"),
        ({"lockWaitMs": -5}, "dev", "migrations.lockWaitMs"),
        ({"lockWaitMs": 10**12}, "staging", "migrations.lockWaitMs"),
        ({"lockTimeoutMs": 10**9}, "staging", "migrations.lockTimeoutMs"),
        ({"ddlRetries": 99}, "dev", "migrations.ddlRetries"),
        ({"requireAppliedIn": ""}, "prod", "migrations.requireAppliedIn"),
        ({"requireAppliedIn": "prod"}, "prod", "migrations.requireAppliedIn"),
        ({"destroyDropsSchema": True}, "staging", "migrations.destroyDropsSchema"),
        ({"allowRollback": True}, "prod", "migrations.allowRollback"),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, object], environment: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MigrationsConfig.parse(raw, environment, "wishlist-infra/x")
    assert err.value.key == key, str(err.value)


def test_the_options_carry_the_stack_rules() -> None:
    cfg = MigrationsConfig.parse({"lockTimeoutMs": 500, "ddlRetries": 3}, "prod", "wishlist-infra/prod")
    assert (cfg.options.lock_timeout_ms, cfg.options.ddl_retries, cfg.options.strict_lint) == (500, 3, True)
    assert cfg.options.stack == "wishlist-infra/prod" and cfg.require_applied_in == "staging"

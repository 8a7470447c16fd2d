"""Unit fixtures: each stack file's program, run once under mocks and shared by the tests that only read it."""

from __future__ import annotations

import pytest

from tests.unit.pulumi_mocks import Program, run_program


@pytest.fixture(scope="session")
def programs() -> dict[str, Program]:
    return {stack: run_program(stack) for stack in ("dev", "staging", "prod")}

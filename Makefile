# The two commands a newcomer needs: `make up` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := . ./scripts/env.sh &&
STACK ?= dev

.PHONY: setup db-up db-down up preview destroy migration snapshot check test test-unit test-integration test-e2e lint bench soak

setup:            ## install everything (PostgreSQL, venv, pulumi tools); seconds when already there
	@[ -n "$${WISHLIST_SKIP_SETUP:-}" ] || bash scripts/setup.sh   # skipped by tests that run `make` in a copy of the project

db-up: setup      ## start the dev stack's local PostgreSQL on 127.0.0.1:55432
	@$(ENV) python -m devtools.localpg up

db-down:          ## stop it (data is kept outside the repo)
	@$(ENV) python -m devtools.localpg down

up: db-up         ## pulumi up on the dev stack: roles, grants and the applied, verified migration
	@$(ENV) pulumi stack select --create $(STACK) --non-interactive && pulumi up --stack $(STACK) --yes

preview: db-up    ## what pulumi up would do on the dev stack (pending migrations, drift)
	@$(ENV) pulumi preview --stack $(STACK) --diff

destroy: db-up    ## destroy the dev stack (rolls the schema back: dev allows it)
	@$(ENV) pulumi destroy --stack $(STACK) --yes

migration:        ## the next migration's up and down files: make migration NAME=add_price_alerts [DRIZZLE=drizzle/0003_x.sql]
	@$(ENV) python -m components.migrate new "$(NAME)" $(if $(DRIZZLE),--from-drizzle "$(DRIZZLE)")

snapshot:         ## apply the set to a throwaway database on the dev cluster (started if needed) and write migrations/app/meta/
	@$(ENV) python -m components.migrate snapshot

check:            ## the set matches its journal and snapshots, replayed on a throwaway database of the dev cluster
	@$(ENV) python -m components.migrate check

lint: setup
	@$(ENV) ruff check . && ruff format --check components devtools tests bench __main__.py && mypy

test: setup lint  ## the whole suite: unit, integration (real PostgreSQL), end-to-end (real pulumi CLI)
	@$(ENV) python -m pytest tests -p no:cacheprovider $(PYTEST_ARGS)

test-unit: setup
	@$(ENV) python -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	@$(ENV) python -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup
	@$(ENV) python -m pytest tests/e2e $(PYTEST_ARGS)

soak: setup       ## the fault suite with more repetitions, then random fault schedules for at most 5 minutes
	@$(ENV) if [ -n "$${WISHLIST_SOAK_SEED:-}" ]; then \
	  python -m pytest tests/integration/test_fault_soak.py -k schedule -p no:cacheprovider $(PYTEST_ARGS); \
	else WISHLIST_SOAK=1 python -m pytest tests/integration -k fault -p no:cacheprovider $(PYTEST_ARGS); fi

bench: setup      ## benchmarks against raw psql; writes bench/results/latest.md
	@$(ENV) python -m bench

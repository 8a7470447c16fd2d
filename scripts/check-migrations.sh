#!/usr/bin/env bash
# The pre-commit hook (.pre-commit-config.yaml), also usable by hand: `bash scripts/check-migrations.sh [FILE...]`.
# Versions in the journal of $WISHLIST_APPLIED_REF (default main, the branch that deploys) count as applied.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
. ./scripts/env.sh
exec python -m components.migrate check --applied-ref "${WISHLIST_APPLIED_REF:-main}" --strict-lint "$@"

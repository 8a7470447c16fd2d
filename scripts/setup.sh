#!/usr/bin/env bash
# One script installs everything the project needs; cheap when all is already there.
#   - PostgreSQL server (Debian's package) if missing
#   - the Python virtualenv from requirements.lock (outside the repo)
#   - pulumi, its Python language host and pulumi-resource-postgresql, built from Go modules
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

stage() { printf '[setup] %-28s %s\n' "$1" "$2" >&2; }
t0=$SECONDS

# 1. PostgreSQL server binaries.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  stage postgresql "installing Debian's postgresql (server not found)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  # Debian starts a cluster on 5432; the project runs its own, so stop that one.
  $SUDO pg_ctlcluster --help >/dev/null 2>&1 && for c in /etc/postgresql/*/main; do
    [ -d "$c" ] && $SUDO pg_ctlcluster "$(basename "$(dirname "$c")")" main stop || true; done
fi
stage postgresql "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -1) ($((SECONDS - t0)) s)"

# 2. Python virtualenv, rebuilt only when requirements.lock changes.
t1=$SECONDS
PY="$(command -v "python$PYTHON_MINOR" || command -v python3)"
"$PY" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$PYTHON_MINOR'.split('.'))), sys.version" \
  || { echo "setup: Python $PYTHON_MINOR is required (found $("$PY" --version))" >&2; exit 1; }
want="$(sha256sum "$REPO_ROOT/requirements.lock" | cut -c1-64)"
if [ "$(cat "$VENV/.lock-sha256" 2>/dev/null)" != "$want" ]; then
  stage venv "creating $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r "$REPO_ROOT/requirements.lock"
  "$VENV/bin/pip" check >/dev/null
  echo "$want" > "$VENV/.lock-sha256"
fi
stage venv "$VENV ($((SECONDS - t1)) s)"

# 3. Pulumi CLI, language host and postgresql provider from Go modules.
t2=$SECONDS
bash "$REPO_ROOT/scripts/build-pulumi-tools.sh"
stage pulumi-tools "$PULUMI_BIN ($((SECONDS - t2)) s)"
stage total "$((SECONDS - t0)) s"

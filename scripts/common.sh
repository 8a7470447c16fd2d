# Shared paths for the scripts; sourced, not run. Everything built or downloaded lives outside the repo.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../versions.env
. "$REPO_ROOT/versions.env"
PULUMI_VERSION=$(sed -n 's/^pulumi==//p' "$REPO_ROOT/requirements.lock")
export WISHLIST_CACHE="${WISHLIST_CACHE:-$HOME/.cache/wishlist-infra}"
VENV="$WISHLIST_CACHE/venv-py$PYTHON_MINOR"
PULUMI_BIN="$WISHLIST_CACHE/pulumi-$PULUMI_VERSION/bin"

#!/usr/bin/env bash
# Build the Pulumi CLI, our own Python language host (+ the two shims from the
# Pulumi SDK module) and pulumi-resource-postgresql from Go modules only (Go module proxy; no GitHub,
# no get.pulumi.com), and install the provider into a project-local PULUMI_HOME.
#
# Idempotent and cheap when everything is present: each step is skipped when
# its output exists and its stamp matches the pins in versions.env.
#
#   scripts/build-pulumi-tools.sh               build what is missing or stale
#   scripts/build-pulumi-tools.sh --print-env   print the env lines to eval
#
# Layout (all outside the git tree):
#   $WISHLIST_CACHE/go/mod, go/build           GOMODCACHE, GOCACHE
#   $WISHLIST_CACHE/pulumi-$PULUMI_VERSION/bin  pulumi, pulumi-language-python,
#                                               pulumi-language-python-exec,
#                                               pulumi-resource-pulumi-python
#   $WISHLIST_CACHE/pulumi-$PULUMI_VERSION/provider/pulumi-resource-postgresql
#       (not in bin/: a provider found on $PATH wins over the PULUMI_HOME plugin,
#        whatever its version, and the engine warns about it on every run)
#   $WISHLIST_CACHE/pulumi-home                 PULUMI_HOME (plugin cache)
#   $WISHLIST_CACHE/build/                      scratch build trees
#
# Wrapper modules (committed): tools/pulumi, tools/pulumi-language-python (our
# own language host: the official one's module is not on the reachable proxy),
# tools/pulumi-postgresql.
# All versions come from versions.env. Background: pulumi-offline-build.md
# (Route B) in the shared docs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../versions.env
. "$ROOT/versions.env"
# The CLI and the plugin are built at the versions of the Python packages: one pin each, in requirements.lock.
PULUMI_VERSION=$(sed -n 's/^pulumi==//p' "$ROOT/requirements.lock")
PULUMI_POSTGRESQL_VERSION=$(sed -n 's/^pulumi_postgresql==//p' "$ROOT/requirements.lock")

WISHLIST_CACHE=${WISHLIST_CACHE:-$HOME/.cache/wishlist-infra}
# Go from the image (/usr/local/go) when the caller's PATH lacks it.
command -v go >/dev/null 2>&1 || { [ -x /usr/local/go/bin/go ] && PATH="/usr/local/go/bin:$PATH"; }
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-modcacherw GOTOOLCHAIN=local
export GOMODCACHE=$WISHLIST_CACHE/go/mod GOCACHE=$WISHLIST_CACHE/go/build

BIN=$WISHLIST_CACHE/pulumi-$PULUMI_VERSION/bin
PROVIDER_DIR=$WISHLIST_CACHE/pulumi-$PULUMI_VERSION/provider
BUILD=$WISHLIST_CACHE/build
export PULUMI_HOME=$WISHLIST_CACHE/pulumi-home
export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true

TAGS=osusergo,grpcnotrace
CLI_LD="-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_VERSION"

M_PKG=github.com/pulumi/pulumi/pkg/v3
M_SDK=github.com/pulumi/pulumi/sdk/v3
M_CLIP=github.com/atotto/clipboard
M_CLIP_FORK=github.com/tgummerer/clipboard

log() { printf '[build-pulumi-tools] %s\n' "$*" >&2; }
die() { printf '[build-pulumi-tools] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

# timed LABEL CMD...: run CMD (set -e applies inside), print its wall time to stderr.
timed() {
    local label=$1 t0
    shift
    t0=$(now)
    "$@"
    log "$(printf '%-44s %8ss' "$label" "$(since "$t0")")"
}

# Any failing command ends the script with a message naming it (set -E: in functions too).
set -E
trap 'rc=$?; printf "[build-pulumi-tools] ERROR: command failed (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2; exit $rc' ERR

# Version that a go.mod requires for a module ("" if none).
modreq() { awk -v m="$2" '($1=="require" && $2==m){print $3} ($1==m){print $2}' "$1" | head -n1; }

# Hash of everything that goes into a build: rebuild when any of it changes.
stamp_of() { { printf '%s\n' "$@"; go version; } | sha256sum | cut -c1-16; }

check_pins() {
    local v missing=()
    for v in PULUMI_VERSION PULUMI_CLIPBOARD_REPLACE_VERSION \
             PULUMI_POSTGRESQL_VERSION PULUMI_TERRAFORM_BRIDGE_VERSION PULUMI_POSTGRESQL_PULUMI_SDK_VERSION \
             TF_PROVIDER_POSTGRESQL_VERSION TF_PLUGIN_SDK_REPLACE_VERSION GO_MIN_VERSION; do
        [ -n "${!v:-}" ] || missing+=("$v")
    done
    [ ${#missing[@]} = 0 ] || die "pins missing or empty in versions.env: ${missing[*]} (see the comments there)"
    command -v go >/dev/null || die "go not found on PATH (need Go >= $GO_MIN_VERSION)"
    local have
    have=$(go env GOVERSION)
    have=${have#go}
    [ "$(printf '%s\n%s\n' "$GO_MIN_VERSION" "$have" | sort -V | head -n1)" = "$GO_MIN_VERSION" ] ||
        die "Go $have is older than GO_MIN_VERSION=$GO_MIN_VERSION"
}

# ---------------------------------------------------------------------------
# 1. pulumi, built straight from the committed wrapper module tools/pulumi.
# 2. pulumi-language-python (our own host, tools/pulumi-language-python) +
#    the exec shim and the dynamic-provider shim from the sdk/v3 module zip.
# ---------------------------------------------------------------------------
W_CLI=$ROOT/tools/pulumi
W_LANG=$ROOT/tools/pulumi-language-python

# wrapper_in_sync DIR MODULE...: DIR/go.mod requires every MODULE at v$PULUMI_VERSION
# and DIR/go.sum has its checksum.
wrapper_in_sync() {
    local dir=$1 m
    shift
    for m in "$@"; do
        if [ "$(modreq "$dir/go.mod" "$m")" != "v$PULUMI_VERSION" ] ||
           ! grep -q "^$m v$PULUMI_VERSION h1:" "$dir/go.sum" 2>/dev/null; then
            return 1
        fi
    done
    return 0
}

# update_wrapper DIR EDIT-FLAG...: apply `go mod edit EDIT-FLAG...` + `go mod tidy`
# to a copy of wrapper DIR; the repo files change only if that succeeds.
update_wrapper() {
    local dir=$1 tmp
    shift
    log "${dir#"$ROOT"/}/go.mod does not match versions.env: updating it (commit go.mod + go.sum)"
    tmp=$BUILD/sync-${dir##*/}
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cp "$dir/go.mod" "$tmp/"
    if [ -f "$dir/go.sum" ]; then cp "$dir/go.sum" "$tmp/"; fi
    if compgen -G "$dir/*.go" >/dev/null; then cp "$dir"/*.go "$tmp/"; fi
    (cd "$tmp" && go mod edit "$@" && go mod tidy) ||
        die "could not resolve the modules of ${dir#"$ROOT"/} at v$PULUMI_VERSION via GOPROXY=$(go env GOPROXY) (go's error above; '403 Forbidden ... not available' = the proxy does not serve that module version)"
    cp "$tmp/go.mod" "$tmp/go.sum" "$dir/"
    rm -rf "$tmp"
}

cli_sync_wrapper() {
    # pkg/v3's own replace is repeated in the wrapper (replaces in dependencies are ignored).
    if grep -Eq "^(replace)?[[:space:]]*$M_CLIP => $M_CLIP_FORK $PULUMI_CLIPBOARD_REPLACE_VERSION\$" "$W_CLI/go.mod" &&
       wrapper_in_sync "$W_CLI" $M_PKG $M_SDK; then
        return 0
    fi
    update_wrapper "$W_CLI" -replace "$M_CLIP=$M_CLIP_FORK@$PULUMI_CLIPBOARD_REPLACE_VERSION" \
        -require "$M_PKG@v$PULUMI_VERSION" -require "$M_SDK@v$PULUMI_VERSION"
}

lang_sync_wrapper() {
    if wrapper_in_sync "$W_LANG" $M_SDK; then
        return 0
    fi
    update_wrapper "$W_LANG" -require "$M_SDK@v$PULUMI_VERSION"
}

go_build_cli() { # OUT
    (cd "$W_CLI" && go build -trimpath -tags "$TAGS" -ldflags "$CLI_LD" -o "$1" "$M_PKG/cmd/pulumi")
}

go_build_lang() { # OUT
    (cd "$W_LANG" && go build -trimpath -tags "$TAGS" -ldflags "$CLI_LD" -o "$1" .)
}

cli_stamp() {
    stamp_of cli "$PULUMI_VERSION" "$TAGS" "$CLI_LD" "$(cat "$W_CLI/go.mod" "$W_CLI/go.sum" 2>/dev/null | sha256sum)"
}

lang_stamp() {
    stamp_of lang "$PULUMI_VERSION" "$TAGS" "$CLI_LD" \
        "$(cat "$W_LANG/go.mod" "$W_LANG/go.sum" "$W_LANG"/*.go 2>/dev/null | sha256sum)"
}

cli_step() {
    local stampfile=$BIN/.pulumi.stamp have="" got
    if [ -x "$BIN/pulumi" ]; then have=$("$BIN/pulumi" version 2>/dev/null || true); fi
    if [ "$have" = "v$PULUMI_VERSION" ] && [ "$(cat "$stampfile" 2>/dev/null)" = "$(cli_stamp)" ]; then
        log "pulumi $have: up to date in $BIN"
        return 0
    fi
    mkdir -p "$BIN" "$BUILD"
    timed "check tools/pulumi" cli_sync_wrapper
    timed "download pulumi modules" bash -c "cd '$W_CLI' && go mod download $M_PKG $M_SDK"
    timed "go build pulumi" go_build_cli "$BIN/pulumi.tmp"
    mv -f "$BIN/pulumi.tmp" "$BIN/pulumi"
    got=$("$BIN/pulumi" version)
    [ "$got" = "v$PULUMI_VERSION" ] || die "$BIN/pulumi version prints '$got', expected v$PULUMI_VERSION"
    cli_stamp >"$stampfile"
}

lang_step() {
    local stampfile=$BIN/.pulumi-language-python.stamp have="" got sdk
    if [ -x "$BIN/pulumi-language-python" ]; then
        have=$("$BIN/pulumi-language-python" -version 2>/dev/null || true)
    fi
    if [ "$have" = "v$PULUMI_VERSION" ] && [ -x "$BIN/pulumi-language-python-exec" ] &&
       [ -x "$BIN/pulumi-resource-pulumi-python" ] &&
       [ "$(cat "$stampfile" 2>/dev/null)" = "$(lang_stamp)" ]; then
        log "pulumi-language-python $have (+ shims): up to date in $BIN"
        return 0
    fi
    mkdir -p "$BIN" "$BUILD"
    timed "check tools/pulumi-language-python" lang_sync_wrapper
    timed "go build pulumi-language-python" go_build_lang "$BIN/pulumi-language-python.tmp"
    sdk=$(cd "$W_LANG" && go list -m -f '{{.Dir}}' "$M_SDK")
    # Module zips keep no file modes; the bundled-plugin lookup needs u+x.
    install -m 0755 "$sdk/python/cmd/pulumi-language-python-exec" "$BIN/pulumi-language-python-exec"
    install -m 0755 "$sdk/python/dist/pulumi-resource-pulumi-python" "$BIN/pulumi-resource-pulumi-python"
    mv -f "$BIN/pulumi-language-python.tmp" "$BIN/pulumi-language-python"
    got=$("$BIN/pulumi-language-python" -version)
    [ "$got" = "v$PULUMI_VERSION" ] ||
        die "$BIN/pulumi-language-python -version prints '$got', expected v$PULUMI_VERSION"
    rm -f "$BIN/.pulumi-tools.stamp" # stamp of the old combined step
    lang_stamp >"$stampfile"
}

# ---------------------------------------------------------------------------
# 3. pulumi-resource-postgresql, from our own bridge wrapper tools/pulumi-postgresql
#    (pulumi-terraform-bridge + cyrilgdn/terraform-provider-postgresql; mapping in
#    its provider/ package). Built in a scratch copy of the wrapper ($B_PROV):
#      a) go build ./cmd/pulumi-tfgen-postgresql (same mapping, same stamp)
#      b) run it: the Pulumi schema, "version" = PULUMI_POSTGRESQL_VERSION,
#         docs from the upstream module's website/docs -> schema-embed.json
#      c) go build . (embeds schema-embed.json), stamped with -X.
#    The repo holds only go.mod, go.sum and the .go files.
# ---------------------------------------------------------------------------
W_PROV=$ROOT/tools/pulumi-postgresql
B_PROV=$BUILD/pulumi-postgresql
PROV_BIN=$PROVIDER_DIR/pulumi-resource-postgresql
PLUGIN_BIN=$PULUMI_HOME/plugins/resource-postgresql-v$PULUMI_POSTGRESQL_VERSION/pulumi-resource-postgresql
PROV_LD="-s -w -X local/pulumi-resource-postgresql/version.Version=$PULUMI_POSTGRESQL_VERSION"
M_BRIDGE=github.com/pulumi/pulumi-terraform-bridge/v3
M_UP=github.com/terraform-providers/terraform-provider-postgresql # the module line of upstream's go.mod
M_UP_SRC=github.com/cyrilgdn/terraform-provider-postgresql        # where upstream is published
M_TFSDK=github.com/hashicorp/terraform-plugin-sdk/v2
M_TFSDK_FORK=github.com/pulumi/terraform-plugin-sdk/v2

# prov_in_sync DIR: DIR/go.mod requires/replaces exactly the pins and DIR/go.sum has their sums.
prov_in_sync() {
    local gm=$1/go.mod sum=$1/go.sum
    [ "$(modreq "$gm" $M_BRIDGE)" = "$PULUMI_TERRAFORM_BRIDGE_VERSION" ] &&
        [ "$(modreq "$gm" $M_PKG)" = "$PULUMI_POSTGRESQL_PULUMI_SDK_VERSION" ] &&
        [ "$(modreq "$gm" $M_SDK)" = "$PULUMI_POSTGRESQL_PULUMI_SDK_VERSION" ] &&
        [ "$(modreq "$gm" $M_UP)" = "$TF_PROVIDER_POSTGRESQL_VERSION" ] &&
        grep -Eq "^(replace)?[[:space:]]*$M_UP => $M_UP_SRC $TF_PROVIDER_POSTGRESQL_VERSION\$" "$gm" &&
        grep -Eq "^(replace)?[[:space:]]*$M_TFSDK => $M_TFSDK_FORK $TF_PLUGIN_SDK_REPLACE_VERSION\$" "$gm" &&
        grep -q "^$M_BRIDGE $PULUMI_TERRAFORM_BRIDGE_VERSION h1:" "$sum" 2>/dev/null &&
        grep -q "^$M_PKG $PULUMI_POSTGRESQL_PULUMI_SDK_VERSION h1:" "$sum" &&
        grep -q "^$M_UP_SRC $TF_PROVIDER_POSTGRESQL_VERSION h1:" "$sum" &&
        grep -q "^$M_TFSDK_FORK $TF_PLUGIN_SDK_REPLACE_VERSION h1:" "$sum"
}

# Keep tools/pulumi-postgresql/go.mod + go.sum in line with versions.env: edit +
# tidy a full copy (tidy needs every package); the repo files change only if
# that succeeds (then commit them).
prov_sync_wrapper() {
    if prov_in_sync "$W_PROV"; then return 0; fi
    log "tools/pulumi-postgresql/go.mod does not match versions.env: updating it (commit go.mod + go.sum)"
    local tmp=$BUILD/sync-pulumi-postgresql
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cp -r "$W_PROV/." "$tmp/"
    (cd "$tmp" && go mod edit \
        -require "$M_BRIDGE@$PULUMI_TERRAFORM_BRIDGE_VERSION" \
        -require "$M_PKG@$PULUMI_POSTGRESQL_PULUMI_SDK_VERSION" \
        -require "$M_SDK@$PULUMI_POSTGRESQL_PULUMI_SDK_VERSION" \
        -require "$M_UP@$TF_PROVIDER_POSTGRESQL_VERSION" \
        -replace "$M_UP=$M_UP_SRC@$TF_PROVIDER_POSTGRESQL_VERSION" \
        -replace "$M_TFSDK=$M_TFSDK_FORK@$TF_PLUGIN_SDK_REPLACE_VERSION" &&
        go mod tidy) ||
        die "could not resolve tools/pulumi-postgresql's modules via GOPROXY=$(go env GOPROXY) (go's error above; '403 Forbidden ... not available' = the proxy does not serve that module version)"
    # MVS may lift a pin (e.g. the bridge asking for a newer pkg/v3): say so rather than loop.
    prov_in_sync "$tmp" ||
        die "after go mod tidy, $tmp/go.mod no longer matches the pins in versions.env (a dependency needs a newer version?): $(cd "$tmp" && go list -m $M_BRIDGE $M_PKG $M_SDK $M_UP | tr '\n' ' ')"
    cp "$tmp/go.mod" "$tmp/go.sum" "$W_PROV/"
    rm -rf "$tmp"
}

prov_prepare() {
    rm -rf "$B_PROV"
    mkdir -p "$B_PROV"
    cp -r "$W_PROV/." "$B_PROV/"
    rm -f "$B_PROV/schema-embed.json"
    (cd "$B_PROV" && go mod download $M_BRIDGE $M_PKG $M_SDK $M_UP) ||
        die "go mod download failed in $B_PROV (go's error above)"
}

prov_build_tfgen() {
    (cd "$B_PROV" && go build -trimpath -ldflags "$PROV_LD" -o "$B_PROV/bin/pulumi-tfgen-postgresql" \
        ./cmd/pulumi-tfgen-postgresql)
}

prov_schema() {
    local up
    up=$(cd "$B_PROV" && go list -m -f '{{.Dir}}' $M_UP)
    [ -d "$up/website/docs" ] || die "no website/docs in the upstream module dir '$up' ($M_UP => $M_UP_SRC)"
    "$B_PROV/bin/pulumi-tfgen-postgresql" -upstream "$up" -out "$B_PROV/schema-embed.json"
    grep -q "\"version\": \"$PULUMI_POSTGRESQL_VERSION\"" "$B_PROV/schema-embed.json" ||
        die "$B_PROV/schema-embed.json lacks \"version\": \"$PULUMI_POSTGRESQL_VERSION\""
}

go_build_prov() {
    (cd "$B_PROV" && go build -trimpath -ldflags "$PROV_LD" -o "$PROV_BIN.tmp" .)
}

prov_stamp() {
    stamp_of prov "$PULUMI_POSTGRESQL_VERSION" "$PULUMI_TERRAFORM_BRIDGE_VERSION" \
        "$PULUMI_POSTGRESQL_PULUMI_SDK_VERSION" "$TF_PROVIDER_POSTGRESQL_VERSION" \
        "$TF_PLUGIN_SDK_REPLACE_VERSION" "$PROV_LD" \
        "$(cd "$W_PROV" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)"
}

# Into PULUMI_HOME with the CLI; without it, the same layout by hand
# (plugins/resource-postgresql-vX.Y.Z/pulumi-resource-postgresql).
prov_install() {
    if [ -x "$BIN/pulumi" ]; then
        "$BIN/pulumi" plugin install resource postgresql "$PULUMI_POSTGRESQL_VERSION" \
            --file "$PROV_BIN" --reinstall
    else
        log "no $BIN/pulumi yet: copying the plugin into $PULUMI_HOME by hand"
        rm -rf "${PLUGIN_BIN%/*}" "${PLUGIN_BIN%/*}.partial" "${PLUGIN_BIN%/*}.lock"
        mkdir -p "${PLUGIN_BIN%/*}"
        install -m 0755 "$PROV_BIN" "$PLUGIN_BIN"
    fi
}

prov_step() {
    local stampfile=$PROVIDER_DIR/.pulumi-resource-postgresql.stamp got
    if [ -x "$PROV_BIN" ] && [ "$(cat "$stampfile" 2>/dev/null)" = "$(prov_stamp)" ]; then
        log "pulumi-resource-postgresql $PULUMI_POSTGRESQL_VERSION: up to date in $PROVIDER_DIR"
    else
        mkdir -p "$PROVIDER_DIR" "$BUILD"
        timed "check tools/pulumi-postgresql" prov_sync_wrapper
        timed "prepare provider build tree" prov_prepare
        timed "go build pulumi-tfgen-postgresql" prov_build_tfgen
        timed "generate schema-embed.json" prov_schema
        timed "go build pulumi-resource-postgresql" go_build_prov
        got=$("$PROV_BIN.tmp" -version)
        [ "$got" = "$PULUMI_POSTGRESQL_VERSION" ] ||
            die "$PROV_BIN.tmp -version prints '$got', expected $PULUMI_POSTGRESQL_VERSION"
        mv -f "$PROV_BIN.tmp" "$PROV_BIN"
        prov_stamp >"$stampfile"
    fi

    if [ -x "$PLUGIN_BIN" ] && cmp -s "$PROV_BIN" "$PLUGIN_BIN" && [ ! -e "${PLUGIN_BIN%/*}.partial" ]; then
        log "plugin resource postgresql $PULUMI_POSTGRESQL_VERSION: installed in $PULUMI_HOME"
        return 0
    fi
    timed "install plugin resource postgresql" prov_install
}

# ---------------------------------------------------------------------------
case "${1:-}" in
--print-env)
    printf 'export PATH=%q:"$PATH"\n' "$BIN"
    printf 'export PULUMI_HOME=%q\n' "$PULUMI_HOME"
    printf 'export PULUMI_SKIP_UPDATE_CHECK=true PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true\n'
    exit 0 ;;
"") ;;
*) die "usage: $0 [--print-env]" ;;
esac

T_ALL=$(now)
check_pins
cli_step
lang_step
prov_step
log "$(printf '%-44s %8ss' "total" "$(since "$T_ALL")")"
log "BIN=$BIN"
log "PULUMI_HOME=$PULUMI_HOME"

#!/usr/bin/env bash
# Install the real `opencode` ACP agent, repo-local, for the opencode test suite and benchmark.
#
#   scripts/install-opencode.sh            # installs into <repo>/.opencode (gitignored)
#   OPENCODE_PREFIX=/some/dir scripts/install-opencode.sh
#
# Idempotent: re-running with the right version already in place does nothing but print the
# binary's path. Needs node + npm and access to the npm registry (the only network use).
#
# Two things are installed:
#   1. npm `opencode-ai@$OPENCODE_VERSION` into $PREFIX (binary: $PREFIX/node_modules/.bin/opencode);
#   2. `@opencode-ai/plugin@$OPENCODE_VERSION` into $PREFIX/config/opencode, a template of
#      opencode's config dir ($XDG_CONFIG_HOME/opencode). opencode runs a background
#      `npm install @opencode-ai/plugin@<its version>` into each config dir at every start unless
#      that dir already has node_modules/ and a package-lock.json listing it; tests copy this
#      template into each private XDG_CONFIG_HOME so opencode never touches the network.
# The last line of output is the binary's absolute path.
set -euo pipefail

OPENCODE_VERSION="${OPENCODE_VERSION:-1.18.33}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${OPENCODE_PREFIX:-$repo_root/.opencode}"
config_dir="$prefix/config/opencode"
bin="$prefix/node_modules/.bin/opencode"

log() { printf 'install-opencode: %s\n' "$*" >&2; }

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool not found: install Node.js (>= 18) with npm first (Debian: apt-get install nodejs npm)"
        exit 1
    fi
done

mkdir -p "$prefix" "$config_dir"
# Keep npm from walking up to the repository's own package.json (there is none, but be explicit)
# and from writing anything outside $prefix.
[ -f "$prefix/package.json" ] || printf '{"private": true}\n' >"$prefix/package.json"
[ -f "$config_dir/package.json" ] || printf '{"private": true}\n' >"$config_dir/package.json"

# opencode-ai's postinstall script links the platform binary into place: never skip it.
npm_quiet=(--no-audit --no-fund --no-update-notifier --loglevel=error --ignore-scripts=false)

installed_version() {
    # The version of an npm package installed under $1 (empty when absent).
    local pkg_json="$1/node_modules/$2/package.json"
    [ -f "$pkg_json" ] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version || "")' "$pkg_json"
}

if [ -x "$bin" ] && [ "$(installed_version "$prefix" opencode-ai)" = "$OPENCODE_VERSION" ] \
    && [ "$("$bin" --version 2>/dev/null)" = "$OPENCODE_VERSION" ]; then
    log "opencode-ai@$OPENCODE_VERSION already installed"
else
    log "installing opencode-ai@$OPENCODE_VERSION into $prefix"
    npm install --prefix "$prefix" "${npm_quiet[@]}" --save-exact "opencode-ai@$OPENCODE_VERSION" >&2
    # The npm package's bin is a node launcher that picks the platform package; make sure the
    # platform binary actually runs here.
    got="$("$bin" --version 2>/dev/null || true)"
    if [ "$got" != "$OPENCODE_VERSION" ]; then
        log "installed, but '$bin --version' printed '$got' (expected $OPENCODE_VERSION);"
        log "opencode-ai ships prebuilt binaries for linux/darwin/windows on x64/arm64 only"
        exit 1
    fi
fi

if [ -f "$config_dir/package-lock.json" ] \
    && [ "$(installed_version "$config_dir" @opencode-ai/plugin)" = "$OPENCODE_VERSION" ]; then
    log "@opencode-ai/plugin@$OPENCODE_VERSION already installed in $config_dir"
else
    log "installing @opencode-ai/plugin@$OPENCODE_VERSION into $config_dir"
    npm install --prefix "$config_dir" "${npm_quiet[@]}" --save-exact \
        "@opencode-ai/plugin@$OPENCODE_VERSION" >&2
fi

log "size: $(du -sh "$prefix" | cut -f1) in $prefix"
printf '%s\n' "$bin"

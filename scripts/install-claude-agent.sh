#!/usr/bin/env bash
# Install the real `claude-agent-acp` ACP agent, repo-local, for the claude test suite and benchmark.
#
#   scripts/install-claude-agent.sh             # installs into <repo>/.claude-agent (gitignored)
#   CLAUDE_AGENT_PREFIX=/some/dir scripts/install-claude-agent.sh
#
# Idempotent: re-running with the right version already in place does nothing but print the
# binary's path. Needs node (>= 18) + npm and access to the npm registry (the only network use).
#
# npm `@zed-industries/claude-agent-acp@$CLAUDE_AGENT_VERSION` brings, pinned by its own exact
# dependency, `@anthropic-ai/claude-agent-sdk`, whose `cli.js` is the Claude Code CLI the agent
# starts (one per ACP session). Nothing else is downloaded, at install or at run time: the tests
# point ANTHROPIC_BASE_URL at a local fake Messages API (tests/claude/fake_anthropic.py) and
# switch off the CLI's other traffic (see tests/claude/harness.py).
# The last line of output is the binary's absolute path.
set -euo pipefail

CLAUDE_AGENT_VERSION="${CLAUDE_AGENT_VERSION:-0.23.1}"
SDK_VERSION="0.2.83"  # what claude-agent-acp@0.23.1 pins; checked below
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="${CLAUDE_AGENT_PREFIX:-$repo_root/.claude-agent}"
bin="$prefix/node_modules/.bin/claude-agent-acp"

log() { printf 'install-claude-agent: %s\n' "$*" >&2; }

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool not found: install Node.js (>= 18) with npm first (Debian: apt-get install nodejs npm)"
        exit 1
    fi
done

mkdir -p "$prefix"
# Keep npm from walking up to a package.json above $prefix and from writing outside it.
[ -f "$prefix/package.json" ] || printf '{"private": true}\n' >"$prefix/package.json"

installed_version() {
    # The version of an npm package installed under $1 (empty when absent).
    local pkg_json="$1/node_modules/$2/package.json"
    [ -f "$pkg_json" ] || return 0
    node -e 'process.stdout.write(require(process.argv[1]).version || "")' "$pkg_json"
}

if [ -x "$bin" ] && [ "$(installed_version "$prefix" @zed-industries/claude-agent-acp)" = "$CLAUDE_AGENT_VERSION" ]; then
    log "@zed-industries/claude-agent-acp@$CLAUDE_AGENT_VERSION already installed"
else
    log "installing @zed-industries/claude-agent-acp@$CLAUDE_AGENT_VERSION into $prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --no-update-notifier --loglevel=error \
        --save-exact "@zed-industries/claude-agent-acp@$CLAUDE_AGENT_VERSION" >&2
fi

sdk="$(installed_version "$prefix" @anthropic-ai/claude-agent-sdk)"
if [ "$CLAUDE_AGENT_VERSION" = "0.23.1" ] && [ "$sdk" != "$SDK_VERSION" ]; then
    log "expected @anthropic-ai/claude-agent-sdk@$SDK_VERSION beside claude-agent-acp, found '$sdk'"
    exit 1
fi
if [ ! -f "$prefix/node_modules/@anthropic-ai/claude-agent-sdk/cli.js" ]; then
    log "the Claude Code CLI (claude-agent-sdk/cli.js) is missing from $prefix"
    exit 1
fi

log "size: $(du -sh "$prefix" | cut -f1) in $prefix (claude-agent-sdk $sdk)"
printf '%s\n' "$bin"

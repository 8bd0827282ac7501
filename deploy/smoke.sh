#!/usr/bin/env bash
# Container smoke test: build the image, run it as a sidecar, drive it from the host.
#
#   deploy/smoke.sh            (from the repository, after `make .venv/.installed`)
#
# 1. picks docker or podman (SMOKE_ENGINE to choose), whichever exists and answers; with
#    neither, or one that cannot build or run a container here, it says why and exits 0
#    (skipped);
# 2. builds the image (Dockerfile, unchanged);
# 3. runs it as the sidecar: the socket directory and the database on host directories
#    (bind mounts owned by the image's uid 10001), the bundled fake agent;
# 4. waits for `acp-proxy health` inside the container, then drives two turns on two new
#    connections from the host through `acp-proxy attach`, and checks that one agent served
#    both; runs `acp-proxy health` from the host;
# 5. starts a long turn, stops the container (`stop -t 40`) while it streams, and checks the
#    turn got its full response, the proxy logged the drain, and the container exited 0.
#
# Needs root on the host (to chown the bind mounts to 10001 and to connect to the 0600 socket
# owned by 10001), or SMOKE_SOCKET_UID matching your uid. Knobs:
#   SMOKE_ENGINE          docker | podman (default: the first that answers)
#   SMOKE_ENGINE_ARGS     global engine flags, e.g. "--runtime runc"
#   SMOKE_RUN_ARGS        extra `run` flags, e.g. "--ulimit nofile=1024:1024"
#   SMOKE_BUILD_ARGS      extra `build` flags, e.g. "--build-arg PYTHON_IMAGE=localhost/py:3.11"
#   SMOKE_KEEP=1          keep the container and directories for inspection
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${SMOKE_PYTHON:-$repo/.venv/bin/python}"
image="acp-proxy:smoke"
name="acp-proxy-smoke-$$"

say() { printf 'smoke: %s\n' "$*" >&2; }
skip() { say "SKIPPED: $*"; exit 0; }
fail() { say "FAILED: $*"; exit 1; }

[ -x "$python" ] || fail "no $python: run \`make .venv/.installed\` first (or set SMOKE_PYTHON)"

engine=""
for candidate in ${SMOKE_ENGINE:-docker podman}; do
    if command -v "$candidate" >/dev/null 2>&1; then
        # shellcheck disable=SC2086
        if timeout 30 "$candidate" ${SMOKE_ENGINE_ARGS:-} info >/dev/null 2>&1; then
            engine="$candidate"
            break
        fi
        say "$candidate is installed but does not answer ($candidate info failed)"
    fi
done
[ -n "$engine" ] || skip "no working container engine (docker or podman)"
# shellcheck disable=SC2206
e=("$engine" ${SMOKE_ENGINE_ARGS:-})
# shellcheck disable=SC2206
run_args=(${SMOKE_RUN_ARGS:-})
say "engine: ${e[*]}"

tmp="$(mktemp -d /tmp/acp-smoke.XXXXXX)"
cleanup() {
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        say "kept: container $name, directory $tmp"
        return
    fi
    "${e[@]}" rm -f "$name" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

say "building $image"
# shellcheck disable=SC2086
if ! "${e[@]}" build ${SMOKE_BUILD_ARGS:-} -t "$image" "$repo" >"$tmp/build.log" 2>&1; then
    tail -5 "$tmp/build.log" >&2
    if grep -qiE "pull|registry|no such host|manifest unknown|name resolution" "$tmp/build.log"; then
        skip "the base image cannot be pulled here (no registry access); give a local one with SMOKE_BUILD_ARGS=\"--build-arg PYTHON_IMAGE=...\""
    fi
    fail "the image did not build (log above)"
fi

if ! "${e[@]}" run --rm "${run_args[@]}" --entrypoint acp-proxy "$image" --version \
    >"$tmp/probe.log" 2>&1; then
    cat "$tmp/probe.log" >&2
    skip "$engine built the image but cannot run a container here (see above; SMOKE_ENGINE_ARGS / SMOKE_RUN_ARGS may help)"
fi
say "image runs: $(cat "$tmp/probe.log")"

# The sidecar's two volumes as host directories, owned by the image's user.
mkdir -p "$tmp/run" "$tmp/state"
chown 10001:10001 "$tmp/run" "$tmp/state" 2>/dev/null \
    || chmod 0777 "$tmp/run" "$tmp/state"
socket="$tmp/run/proxy.sock"

"${e[@]}" run -d --name "$name" "${run_args[@]}" --stop-timeout 40 \
    -v "$tmp/run:/run/acp" -v "$tmp/state:/var/lib/acp-proxy" \
    "$image" >/dev/null
say "container $name started"

healthy=""
for _ in $(seq 1 150); do  # bounded: 30 s
    if "${e[@]}" exec "$name" acp-proxy health >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 0.2
done
[ -n "$healthy" ] || { "${e[@]}" logs "$name" >&2 || true; fail "never healthy within 30 s"; }
echo "ok    acp-proxy health inside the container"

"$python" "$repo/deploy/smoke_client.py" turns "$socket" || fail "two turns from the host"
"$python" -m acp_proxy health --socket "$socket" || fail "health from the host"
echo "ok    acp-proxy health from the host"

status=$("$python" -m acp_proxy status --socket "$socket" --json)
echo "$status" | "$python" -c 'import json,sys; s=json.load(sys.stdin); print("ok    status:", s["sessions"], "agents", [(a["role"], a["rss_bytes"] >> 20) for a in s["agents"]])'

stop=("${e[@]}" stop -t 40 "$name")
"$python" "$repo/deploy/smoke_client.py" drain "$socket" "${stop[@]}" || fail "drain"
exit_code=$("${e[@]}" inspect -f '{{.State.ExitCode}}' "$name")
[ "$exit_code" = 0 ] || fail "the container exited $exit_code"
echo "ok    the container exited 0"
"${e[@]}" logs "$name" 2>&1 | grep -q '"serve.drained"' || fail "no serve.drained in the logs"
drained=$("${e[@]}" logs "$name" 2>&1 | grep '"serve.drained"')
echo "ok    drain logged: $drained"
[ ! -e "$socket" ] || fail "the socket was not removed"
echo "ok    socket removed"
mode=$(stat -c %a "$tmp/state/sessions.db")
echo "ok    sessions.db mode $mode (umask 0027)"
[ "$mode" = 640 ] || fail "sessions.db mode $mode, expected 640"
say "PASSED"

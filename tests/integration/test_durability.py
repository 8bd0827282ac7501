"""Crash durability: ``kill -9`` of the proxy loses nothing a client has received.

The proxy delivers a ``session/update`` only after its SQLite commit, so whatever a client saw
before the proxy died is in the store: a new proxy on the same database replays it, in order,
as the start of the session's history (it may replay more: events committed but not yet
delivered when the proxy died). The turn the kill cut short has an unknown outcome: it is
stored as ``unknown`` once the session is used again and never sent to an agent again.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import secrets
import signal
import sqlite3
import struct
import termios
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio

#: ``ACP_PROXY_DURABILITY_SEED=<n>`` replays the trials of a failed run.
SEED_ENV = "ACP_PROXY_DURABILITY_SEED"
TRIALS = 20
#: Trials run side by side (each with its own proxies and database).
PARALLEL_TRIALS = 2
TRIAL_LIMIT_S = 12.0
#: Short turns usually end before the kill, long ones are usually cut mid-stream.
TURN_CHUNKS = (10, 400)
CHUNK_DELAY_S = 0.001
MAX_KILL_DELAY_S = 0.4
#: PostgreSQL: how long the killed proxy's session leases outlive it.
LEASE_TTL_S = 1.0


# -- helpers -------------------------------------------------------------------------------


def _answer(c: AcpClient, ident: int) -> dict[str, Any] | None:
    """The answer to request ``ident`` if the client received one."""
    return next((m for m in c.messages if m.get("id") == ident and "method" not in m), None)


async def _fake_state(c: AcpClient, sid: str) -> dict[str, Any]:
    """The fake agent's ``_fake/state`` for session ``sid``: its pid and its one session."""
    state = (await c.request("_fake/state", {"sessionId": sid})).unwrap("_fake/state")
    (session,) = state["sessions"].values()
    return {"pid": state["pid"], **session}


async def _load(c: AcpClient, sid: str, cwd: Path) -> list[dict[str, Any]]:
    """``session/load`` (must succeed); returns the replayed ``session/update`` params.

    On PostgreSQL the killed proxy's lease on the session must expire first: the load is
    retried while the answer is ``session_owned_elsewhere`` (bounded by the trial's limit).
    """
    while True:
        params = {"sessionId": sid, "cwd": str(cwd), "mcpServers": []}
        loaded = await c.request("session/load", params)
        if (loaded.error or {}).get("data", {}).get("kind") != "session_owned_elsewhere":
            break
        await trio.sleep(0.1)
    assert loaded.error is None, loaded.error
    return [n["params"] for n in loaded.notifications if n["method"] == "session/update"]


def _agent_side(replay: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A replay without the ``user_message_chunk``s (the client sent those itself)."""
    return [u for u in replay if u["update"]["sessionUpdate"] != "user_message_chunk"]


def _turn_outcomes(db: str, sid: str) -> list[tuple[int, str]]:
    return db_rows(db, "SELECT seq, outcome FROM turns WHERE session_id = ? ORDER BY seq", sid)


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name; None once the pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _process(pid: int) -> tuple[int, str]:
    """A process identity that survives pid reuse: its pid and its start time."""
    fields = _stat(pid)
    return pid, fields[19] if fields else ""


def _running(process: tuple[int, str]) -> bool:
    """True while the process lives (a zombie nobody reaps counts as gone)."""
    pid, started = process
    if not Path("/proc/self/stat").exists():  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def _children(pid: int) -> set[tuple[int, str]]:
    """The child processes of ``pid`` (a proxy's agents and warm spares); empty without /proc."""
    found = set()
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            found.add((int(entry.name), fields[19]))
    return found


async def _kill_9(p: ProxyHandle, *clients: AcpClient) -> None:
    """SIGKILL the proxy, reap it, and let each client read up to the end of its stream."""
    p.kill(signal.SIGKILL)
    await p.process.wait()
    assert p.process.returncode == -signal.SIGKILL
    await eventually(lambda: all(c.closed for c in clients), within_s=5)


async def _agents_exit(agents: set[tuple[int, str]], what: str) -> None:
    """The agents of a killed proxy exit on their own: their stdin closed with the proxy."""
    try:
        await eventually(lambda: not any(_running(a) for a in agents), within_s=5)
    except trio.TooSlowError:
        left = sorted(pid for pid, started in agents if _running((pid, started)))
        pytest.fail(f"{what}: agents {left} outlived their proxy")


def _master_seed() -> int:
    return int(os.environ.get(SEED_ENV) or secrets.randbits(32))


# -- kill -9 at random points ----------------------------------------------------------------


@dataclass
class Seen:
    """What one client saw of its session before the proxy was killed."""

    sid: str
    received: list[dict[str, Any]]  #: the session/update params, in order
    answered: bool  #: the prompt's response arrived: the turn was over
    turn_updates: int  #: updates of the streaming turn among ``received``

    @property
    def stage(self) -> str:
        """Where the kill fell, as seen by this client."""
        if self.answered:
            return "after the turn"
        return "mid-stream" if self.turn_updates else "before any chunk"


@dataclass(frozen=True)
class Trial:
    """One kill: two sessions stream ``chunks`` updates each; the proxy dies after ``delay``."""

    number: int
    chunks: tuple[int, int]
    delay: float
    directory: Path
    label: str  #: the seed and parameters, to replay a failure
    db: str  #: a SQLite file, or a fresh PostgreSQL database

    @property
    def proxy_args(self) -> tuple[str, ...]:
        # Replicas: the killed proxy's leases must expire before the next one takes over.
        return ("--lease-ttl-s", str(LEASE_TTL_S)) if self.db.startswith("postgres") else ()

    @property
    def agent_args(self) -> tuple[str, ...]:
        return ("--state-dir", str(self.directory / "agent-state"))


def _draw_trials(master: int, tmp: Path, new_db: Callable[[int], str]) -> list[Trial]:
    """The trials of seed ``master``; every fifth one kills at once (before any update)."""
    rng = random.Random(master)
    trials = []
    for number in range(TRIALS):
        chunks = (rng.choice(TURN_CHUNKS), rng.choice(TURN_CHUNKS))
        delay = 0.0 if number % 5 == 0 else rng.uniform(0, MAX_KILL_DELAY_S)
        label = (
            f"{SEED_ENV}={master} trial {number}: chunks={list(chunks)}, "
            f"kill after {delay * 1000:.0f} ms"
        )
        trials.append(Trial(number, chunks, delay, tmp / f"t{number}", label, new_db(number)))
    return trials


async def _run_until_killed(trial: Trial) -> tuple[list[Seen], set[tuple[int, str]]]:
    """Two sessions on two connections stream a turn each; kill -9 the proxy after the delay.

    Returns what each client received and the proxy's agent processes (see :func:`_process`).
    """
    cwd = str(trial.directory)
    async with (
        proxy(
            trial.directory / "first", *trial.agent_args, db=trial.db, extra_args=trial.proxy_args
        ) as p,
        client(p) as c1,
        client(p) as c2,
    ):
        clients = (c1, c2)
        sids = [await c.new_session(cwd) for c in clients]
        agents = {
            _process((await _fake_state(c, sid))["pid"])
            for c, sid in zip(clients, sids, strict=True)
        }
        agents |= _children(p.pid)  # the warm spare too (scanned now: a scan takes a few ms)
        before = [len(c.updates(sid)) for c, sid in zip(clients, sids, strict=True)]
        idents = [
            await c.start_prompt(sid, f'fake:{{"chunks": {n}, "chunk_delay": {CHUNK_DELAY_S}}}')
            for c, sid, n in zip(clients, sids, trial.chunks, strict=True)
        ]
        await trio.sleep(trial.delay)
        await _kill_9(p, *clients)
        seen = [
            Seen(sid, c.updates(sid), _answer(c, ident) is not None, len(c.updates(sid)) - n)
            for c, sid, ident, n in zip(clients, sids, idents, before, strict=True)
        ]
    for s, c, ident in zip(seen, clients, idents, strict=True):
        if s.answered:
            assert _answer(c, ident).get("error") is None, (trial.label, _answer(c, ident))
    return seen, agents


async def _check_restored(trial: Trial, seen: list[Seen]) -> None:
    """A new proxy on the same database loads each session and continues it.

    The replay starts with exactly what the client had received; the turn cut by the kill is
    settled (``completed`` if its end was committed, else ``unknown``); the restored agent holds
    the turns it had finished and answers a new prompt.
    """
    what, db = trial.label, trial.db
    second = trial.directory / "second"
    async with proxy(second, *trial.agent_args, db=db, extra_args=trial.proxy_args) as p:
        for s in seen:
            async with client(p) as c:
                replay = _agent_side(await _load(c, s.sid, trial.directory))
                assert replay[: len(s.received)] == s.received, (
                    f"{what}: the replay of {s.sid} does not start with the {len(s.received)} "
                    f"updates the client received ({s.stage})"
                )
                # In a thread: on PostgreSQL the read is a subprocess (asyncpg needs asyncio),
                # which must not stall the other trial sharing this event loop.
                outcomes = dict(await trio.to_thread.run_sync(_turn_outcomes, db, s.sid))
                assert set(outcomes.values()) <= {"completed", "unknown"}, (what, outcomes)
                if s.answered:
                    assert outcomes == {1: "completed"}, (what, outcomes)
                held = (await _fake_state(c, s.sid))["turns"]
                completed = list(outcomes.values()).count("completed")
                assert completed <= held <= len(outcomes), (what, outcomes, held)
                reply = await c.prompt(s.sid, "still there?")
                assert reply.error is None, (what, reply.error)
                assert f"holds {held} earlier turns" in summary(reply.updates()), what


async def _run_trial(trial: Trial, limiter: trio.CapacityLimiter, stages: Counter[str]) -> None:
    """Kill, check that the old agents exit, restart and check every session; bounded."""
    async with limiter:
        # On PostgreSQL the killed proxy's leases must expire before the restore (a bounded
        # wait of at most the lease ttl per session).
        limit = TRIAL_LIMIT_S + (2 * LEASE_TTL_S if trial.proxy_args else 0)
        with trio.fail_after(limit):
            seen, agents = await _run_until_killed(trial)
            await _agents_exit(agents, trial.label)
            await _check_restored(trial, seen)
    stages.update(s.stage for s in seen)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_kill_9_at_random_points_loses_no_received_event(
    tmp: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Kill -9 before, during or after streaming: every update a client received survives.

    Each trial gets a fresh database (a SQLite file, or a PostgreSQL database on the test
    server); after the kill, the old agents exit (their stdin closed with the proxy) and a new
    proxy restores both sessions from the store and the agents' state. Trials run
    ``PARALLEL_TRIALS`` at a time: each has its own proxies and database.
    """
    if backend == "postgresql":
        server = request.getfixturevalue("pg_server")

        def new_db(number: int) -> str:
            name = f"durability_{secrets.token_hex(4)}_{number}"
            return str(server.create_database(name))

    else:

        def new_db(number: int) -> str:
            return str(tmp / f"t{number}" / "sessions.db")

    master = _master_seed()
    stages: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(PARALLEL_TRIALS)
    async with trio.open_nursery() as nursery:
        for trial in _draw_trials(master, tmp, new_db):
            nursery.start_soon(_run_trial, trial, limiter, stages)
    assert set(stages) == {"before any chunk", "mid-stream", "after the turn"}, (
        f"{SEED_ENV}={master}: the kills did not cover every stage: {dict(stages)}"
    )


# -- the turn cut by the kill ----------------------------------------------------------------


@pytest.mark.parametrize("first_use", ["session/load", "session/prompt"])
async def test_turn_cut_by_kill_is_unknown_after_restart_and_never_resent(
    tmp: Path, first_use: str
) -> None:
    """The turn running at kill -9 is stored ``unknown`` when the session is used again.

    A restart restores nothing eagerly: the turn stays ``running`` in the store until the
    session is loaded or prompted. The restored agent never receives the cut prompt again: it
    holds only the turns that were completed, and runs nothing until the next prompt.
    """
    state_dir = tmp / "agent-state"
    agent_args = ("--state-dir", str(state_dir))
    db = str(tmp / "sessions.db")
    async with proxy(tmp / "first", *agent_args, db=db) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        assert (await c.prompt(sid, "first")).error is None
        since = len(c.messages)
        await c.start_prompt(sid, 'fake:{"hang": true} the turn cut by the kill')
        await c.wait_for(
            lambda m: (
                m.get("params", {}).get("update", {}).get("sessionUpdate") == "agent_message_chunk"
            ),
            since=since,
        )
        await _kill_9(p, c)
    assert _turn_outcomes(db, sid) == [(1, "completed"), (2, "running")]

    async with proxy(tmp / "second", *agent_args, db=db) as p, client(p) as c:
        assert _turn_outcomes(db, sid) == [(1, "completed"), (2, "running")]
        if first_use == "session/load":
            await _load(c, sid, tmp)
            assert _turn_outcomes(db, sid) == [(1, "completed"), (2, "unknown")]
            restored = await _fake_state(c, sid)
            assert (restored["turns"], restored["running"]) == (1, False)
        reply = await c.prompt(sid, "after the restart")
        assert reply.error is None, reply.error
        text = summary(reply.updates())
        assert "[fake] turn 2; context holds 1 earlier turns" in text
        assert reply.result["_meta"]["acp-proxy"]["bytes_upstream"] < 200  # nothing re-sent
        assert _turn_outcomes(db, sid) == [(1, "completed"), (2, "unknown"), (3, "completed")]
        upstream = db_rows(db, "SELECT upstream_session_id FROM sessions WHERE id = ?", sid)[0][0]
    kept = (state_dir / f"{upstream}.json").read_text()
    assert "first" in kept and "after the restart" in kept
    assert "the turn cut by the kill" not in kept


def unread_agent_output(proxy_pid: int) -> int:
    """Bytes the proxy's agent processes have written to stdout that the proxy has not read.

    ``/proc/PID/fd/1`` of an agent opens its stdout pipe; ``FIONREAD`` counts what waits in it.
    """
    children = Path(f"/proc/{proxy_pid}/task/{proxy_pid}/children").read_text().split()
    total = 0
    for child in children:
        fd = os.open(f"/proc/{child}/fd/1", os.O_RDONLY | os.O_NONBLOCK)
        try:
            total += struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        finally:
            os.close(fd)
    return total


async def test_database_locked_by_another_process_delays_delivery_only(tmp: Path) -> None:
    """While another process holds SQLite's write lock (``acp-proxy sessions delete`` may),
    nothing uncommitted reaches the client; once the lock is released every update arrives,
    in order, equal to what is stored, and the conversation goes on."""
    chunks = 40
    async with proxy(tmp, "--thoughts", "0", "--tool-calls", "0") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "warm")
        other = sqlite3.connect(p.db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            before = len(c.updates(sid))
            done = tmp / "agent-sent-everything"
            directive = {"chunks": chunks, "chunk_delay": 0.005, "done_file": str(done)}
            ident = await c.start_prompt(sid, "fake:" + json.dumps(directive))
            # The agent creates `done` once it has written the turn's last line (its response);
            # then the proxy has read all of it once no agent's stdout pipe holds a byte.
            await eventually(done.exists)
            await eventually(lambda: unread_agent_output(p.process.pid) == 0)
            assert len(c.updates(sid)) == before, "an update was delivered before its commit"
            assert not any(m.get("id") == ident for m in c.messages), "answered before commit"
            other.execute("COMMIT")
            reply = await c.wait_reply(ident)
        finally:
            other.close()
        assert reply.result["stopReason"] == "end_turn"
        live = [u["update"] for u in c.updates(sid)[before:]]
        texts = [u["content"]["text"] for u in live if u["sessionUpdate"] == "agent_message_chunk"]
        assert len(texts) == chunks + 1 and "[fake] turn 2" in texts[-1]
        sql = (
            "SELECT payload FROM events WHERE session_id = ? AND turn = 2"
            " AND kind != 'user_message_chunk' ORDER BY seq"  # the prompt: not echoed live
        )
        stored = [row[0] for row in db_rows(p.db, sql, sid)]
        assert [json.loads(s)["update"] for s in stored] == live
        assert "holds 2 earlier turns" in summary((await c.prompt(sid, "after")).updates())


async def test_a_store_that_cannot_commit_does_not_stop_the_conversation(tmp: Path) -> None:
    """Documented trade-off: when a commit fails (here: another process holds the write lock
    past the busy timeout) the updates are still delivered and `store.commit_failed` is
    logged; the recording has that gap, and later turns are recorded again."""
    async with proxy(tmp, "--thoughts", "0", "--tool-calls", "0") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "one")
        other = sqlite3.connect(p.db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with trio.fail_after(30):
                reply = await c.prompt(sid, "two")  # waits out the 5 s busy timeout
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert reply.result["stopReason"] == "end_turn"
        assert "[fake] turn 2" in summary(reply.updates())
        assert any(e["event"] == "store.commit_failed" for e in p.logs())
        reply = await c.prompt(sid, "three")
        assert "holds 2 earlier turns" in summary(reply.updates())
        recorded = db_rows(p.db, "SELECT count(*) FROM events WHERE turn = 3")[0][0]
        assert recorded == len(reply.updates()) + 1  # + the user's prompt block
        # A load replays what was recorded, across the gap turn 2 left in the seqs.
        stored = db_rows(p.db, "SELECT count(*) FROM events WHERE session_id = ?", sid)[0][0]
        async with client(p) as late:
            params = {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            loaded = await late.request("session/load", params)
        assert len(loaded.updates()) == stored

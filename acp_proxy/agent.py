"""One agent process: spawn, pipes, request correlation, termination.

The agent runs in its own process group (so the whole tree can be signalled) under the proxy's
task group, never under a client's: a client leaving does not end it. Its stdout is read in
chunks; every chunk's messages form one :class:`Batch`: the handler decides synchronously what
each message means (store writes, deliveries), the batch's writes are committed, then the
deliveries run in arrival order. So an event reaches a client only once it is in the store.

Stopping an agent never drops what it already said: :meth:`AgentProcess.stop` closes stdin and
signals the process group, while its stdout is still read to the end and every committed batch
is delivered; a request still unanswered when the process has gone gets the documented
``agent_exited`` error. The process group is signalled whether or not the process the proxy
started is still alive (a wrapper script that died leaves the real agent in that group).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

import anyio
from anyio.abc import Process, TaskStatus
from msgspec import Raw

from store import PendingCommit, SessionStore, StaleLeaseError, StoreError

from .agent_calls import AgentCalls
from .batch import AgentError, AgentExited, Batch, ExitInfo, LineSink, ReplyCallback
from .held_sessions import close_sessions, noting_reply
from .logs import get_logger
from .outbox import Outbox, OutboxFull
from .pipe import PipeWriter
from .process_group import read_stderr_tail, stop_group
from .protocol import (
    AGENT_EXITED,
    EMPTY,
    METHOD_NOT_FOUND,
    Call,
    ErrorResponse,
    LineBuffer,
    Oversize,
    ProtocolError,
    Request,
    RequestId,
    Response,
    SessionUpdate,
    decode_message,
    decode_update_line,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    error_payload,
)

__all__ = [
    "AgentError",
    "AgentExited",
    "AgentHandler",
    "AgentProcess",
    "Batch",
    "ExitInfo",
    "LineSink",
    "ReplyCallback",
]

#: Decided-but-undelivered output batches per agent (each at most one 64 KiB read).
PIPELINE_BATCHES: Final = 8
STDERR_TAIL_LINES: Final = 20  #: lines of agent stderr kept for error reports


class AgentHandler(Protocol):
    """Decides what the agent's calls mean. Synchronous: it only fills the batch."""

    def on_agent_message(self, agent: AgentProcess, msg: Call, batch: Batch) -> None:
        """A request or notification from the agent."""

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        """A ``session/update`` notification (decoded by the fast path)."""

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        """The agent process ended (pending requests were already failed)."""


class _UnboundHandler:
    """A spare agent has no session: nothing it says can reach a client."""

    def on_agent_message(self, agent: AgentProcess, msg: Call, batch: Batch) -> None:
        if isinstance(msg, Request):
            agent.send_error(msg.id, METHOD_NOT_FOUND, f"{msg.method}: no session is bound")
        else:
            agent.log.debug("agent.notification_dropped", method=msg.method)

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        agent.log.debug("agent.notification_dropped", method="session/update")

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        pass


UNBOUND: Final = _UnboundHandler()


class AgentProcess(AgentCalls):
    """A spawned ACP agent and its stdio connection."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: str | None,
        env: dict[str, str] | None,
        store: SessionStore,
        max_line_bytes: int,
        kill_grace_s: float,
        stdin_limit_bytes: int = 1 << 62,
    ) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.env = env
        self.handler: AgentHandler = UNBOUND
        #: started or authenticated for one client: never handed out as a spare
        self.scoped = False
        self._store = store
        # Decided batches waiting for their commit, then delivery. Bounded: reading goes on
        # while SQLite commits (the writer groups what queues meanwhile), but never runs more
        # than PIPELINE_BATCHES reads ahead of the client.
        self._decided_send, self._decided_receive = anyio.create_memory_object_stream[
            tuple[PendingCommit | None, Batch]
        ](PIPELINE_BATCHES)
        self._undelivered = 0  # batches sent to _deliver_decided and not delivered yet
        self._max_line_bytes = max_line_bytes
        self._kill_grace_s = kill_grace_s
        self._next_id = 0
        self._pending: dict[int, tuple[str, ReplyCallback]] = {}
        self._read_scope = anyio.CancelScope()
        self._stop_requested = anyio.Event()
        self._stdout_done = anyio.Event()
        self._stopping = False
        # Senders wait while more than stdin_limit_bytes are queued (budget.py); one more
        # line may still come from each, so an agent that leaves this much unread is stuck.
        self.stdin_limit_bytes = stdin_limit_bytes
        self.outbox = Outbox(limit_bytes=stdin_limit_bytes + max_line_bytes)
        self._stdin: PipeWriter | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.on_stderr: Callable[[AgentProcess, str], None] = lambda agent, line: None
        self.process: Process | None = None
        self.pid: int | None = None
        self.spawned_at = 0.0
        self.first_message_at: float | None = None
        self.initialize_result: dict[str, Any] = {}
        self.exit_info: ExitInfo | None = None
        self.exited = anyio.Event()
        #: called (synchronously) once the process has ended, after its pending requests
        #: were failed: how the pool learns that a slot is free
        self.exit_callbacks: list[Callable[[AgentProcess], None]] = []
        #: the agent's own ids of the sessions this process holds (closed before it is stopped)
        self.held_sessions: set[str] = set()
        self.log = get_logger(component="agent")

    # -- life cycle --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[AgentProcess]) -> None:
        """Spawn the process, pump its pipes until it ends, then clean up.

        Started with ``task_group.start``: returns control once the process exists.

        Raises:
            OSError: the command could not be started (not found, not executable, bad cwd).
        """
        self.spawned_at = time.monotonic()
        stdin_read, stdin_write = os.pipe()  # the write end is ours: see pipe.py
        try:
            process = await anyio.open_process(
                self.command,
                stdin=stdin_read,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # own process group: the whole tree can be signalled
            )
        except BaseException:
            os.close(stdin_write)
            raise
        finally:
            os.close(stdin_read)
        self._stdin = PipeWriter(stdin_write)
        self.outbox.direct = self._stdin.write_nowait
        self.process, self.pid = process, process.pid
        self.log = self.log.bind(agent_pid=process.pid)
        self.log.info("agent.spawned", command=self.command, cwd=self.cwd)
        task_status.started(self)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._drain_stderr)
                tg.start_soon(self._write_stdin)
                tg.start_soon(self._stop_when_asked)
                async with anyio.create_task_group() as pipeline:
                    pipeline.start_soon(self._deliver_decided)
                    async with self._decided_send:
                        with self._read_scope:
                            await self._read_stdout()
                # stdout ended and everything read was delivered
                tg.cancel_scope.cancel()
        except Exception:
            # A bug met while serving this agent ends this agent (its session can be
            # restored), not the proxy and every other conversation.
            self.log.exception("agent.handler_crashed")
        finally:
            with anyio.CancelScope(shield=True):
                await self._terminate()
                await self._on_exit()

    def stop(self) -> None:
        """Ask the process to end (stdin closed, then signals to its group); returns at once.

        What it writes until then is still read, recorded and delivered."""
        self._stopping = True
        self._stop_requested.set()

    async def _stop_when_asked(self) -> None:
        await self._stop_requested.wait()
        await self._end_process()
        # The group is gone, so stdout ends now, unless a process that left the group still
        # holds the pipe: then stop reading (what was read is delivered all the same).
        with anyio.move_on_after(self._kill_grace_s):
            await self._stdout_done.wait()
        self._read_scope.cancel()

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buffer = LineBuffer(self._max_line_bytes)
        try:
            async for data in self.process.stdout:
                await self._process(buffer.feed(data))
            await self._process(buffer.feed(b""))
        finally:
            self._stdout_done.set()

    async def _process(self, lines: list[bytes | Oversize]) -> None:
        if not lines:
            return
        batch = Batch()
        well_formed = False
        for line in lines:
            if isinstance(line, Oversize):
                self.log.warning("agent.line_too_long", limit=self._max_line_bytes)
                continue
            update = decode_update_line(line)
            if update is not None:  # the hot path: most lines of a turn
                # (self.handler is read per line: a reply in this batch may bind the agent)
                self.handler.on_session_update(self, update, batch)
                well_formed = True
                continue
            try:
                msg = decode_message(line)
            except ProtocolError as exc:
                self.log.warning("agent.malformed_line", error=exc.message, line=line[:200])
                ident = exc.data if isinstance(exc.data, int | str) else None
                self.send_error(ident, exc.code, exc.message)
                continue
            well_formed = True
            if isinstance(msg, Response | ErrorResponse):
                entry = self._pending.pop(msg.id, None) if isinstance(msg.id, int) else None
                if entry is None:
                    self.log.warning("agent.unexpected_response", id=msg.id)
                else:
                    entry[1](msg, batch)
            else:
                self.handler.on_agent_message(self, msg, batch)
        if self.first_message_at is None and well_formed:
            self.first_message_at = time.monotonic()
        # Submitted now (commit order = decision order) and delivered once committed: an
        # update reaches a client only when it is in the store. The store usually commits a
        # batch at once (idle writer): then, with nothing older waiting, it is delivered here,
        # without the hop to _deliver_decided.
        pending = self._submit(batch)
        if not self._undelivered and (pending is None or pending.finished):
            self._deliver(pending, batch)
        else:
            self._undelivered += 1
            # Decided (and maybe committed): it must reach the pipeline even if reading is
            # being cancelled, or committed output would never be delivered.
            with anyio.CancelScope(shield=True):
                await self._decided_send.send((pending, batch))

    async def feed(self, lines: list[bytes]) -> None:
        """Handle ``lines`` as if the agent had just written them (what it said about a
        session before that session had a conversation: see ``preopen.py``)."""
        await self._process(list(lines))

    def _submit(self, batch: Batch) -> PendingCommit | None:
        if not batch.ops:
            return None
        try:
            return self._store.submit(batch.ops)
        except StoreError:  # the store failing must not silence the conversation
            self.log.exception("store.commit_failed", ops=len(batch.ops))
            return None

    async def _deliver_decided(self) -> None:
        async with self._decided_receive:
            async for pending, batch in self._decided_receive:
                await self._deliver_when_committed(pending, batch)
                self._undelivered -= 1

    async def _deliver_when_committed(self, pending: PendingCommit | None, batch: Batch) -> None:
        if pending is not None:
            await pending.wait()
        self._deliver(pending, batch)

    def _deliver(self, pending: PendingCommit | None, batch: Batch) -> None:
        """Run a committed (or failed to commit: logged) batch's deliveries in order."""
        if pending is not None and pending.error is not None:
            self.log.error("store.commit_failed", ops=len(batch.ops), error=str(pending.error))
            if isinstance(pending.error, StaleLeaseError):
                return  # another replica owns the session now: what it records is the truth
        for deliver in batch.deliveries:
            deliver()

    async def _write_stdin(self) -> None:
        assert self._stdin is not None
        try:
            await self.outbox.run(self._stdin)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.log.info("agent.stdin_closed")

    async def _drain_stderr(self) -> None:
        # A full stderr pipe blocks the agent (acp-notes §11.10): always drain it.
        assert self.process is not None and self.process.stderr is not None
        buffer = LineBuffer(64 * 1024)
        async for data in self.process.stderr:
            for line in buffer.feed(data):
                if isinstance(line, bytes):
                    text = line.decode(errors="replace")
                    self.stderr_tail.append(text)
                    self.log.debug("agent.stderr", line=text)
                    self.on_stderr(self, text)  # relayed to the turn's bridge (stderr_relay)

    async def _end_process(self) -> None:
        """Close stdin, then SIGTERM and SIGKILL the process group, ``kill_grace_s`` apart,
        until nothing of it is left. Idempotent; safe to run twice at once."""
        process = self.process
        if process is None:
            return
        # Closing the sessions and the exit after EOF share one grace: SIGTERM comes no later.
        grace_ends = anyio.current_time() + self._kill_grace_s
        if not self._stdout_done.is_set():  # still read: the answers can come
            await close_sessions(self, self._kill_grace_s)
        self.outbox.close()
        if self._stdin is not None:
            await self._stdin.aclose()  # closing stdin is ACP's shutdown signal (transports.mdx)
        if process.returncode is None:
            with anyio.move_on_after(max(0.0, grace_ends - anyio.current_time())):
                await process.wait()
        await stop_group(process, self._kill_grace_s)

    async def _terminate(self) -> None:
        await self._end_process()
        if self.process is not None:
            await read_stderr_tail(self.process, self.stderr_tail)

    async def _on_exit(self) -> None:
        assert self.process is not None
        self.exit_info = ExitInfo(self.process.returncode, list(self.stderr_tail))
        self.log.info("agent.exited", returncode=self.process.returncode)
        batch = Batch()
        synthetic_error = Raw(
            error_payload(AGENT_EXITED, self.exit_info.describe(), self.exit_info.as_data())
        )
        pending, self._pending = self._pending, {}
        for ident, (_method, callback) in pending.items():
            reply = ErrorResponse(ident, synthetic_error, AGENT_EXITED, self.exit_info.describe())
            callback(reply, batch)
        self.handler.on_agent_exit(self, batch)
        self.exited.set()
        for on_exit in self.exit_callbacks:
            on_exit(self)
        await self._deliver_when_committed(self._submit(batch), batch)

    # -- sending -----------------------------------------------------------------------------

    def send_request(self, method: str, params: Raw | bytes, on_reply: ReplyCallback) -> int:
        """Send a request with a fresh proxy-allocated id; ``on_reply`` gets the answer."""
        self._next_id += 1
        ident = self._next_id
        if self.exit_info is not None:
            # Sent after the exit was handled (a session closed while a request for it waited
            # for a restore): nothing would ever answer it, so it fails now.
            self._fail_late(ident, method, on_reply)
            return ident
        self._pending[ident] = (method, noting_reply(self.held_sessions, method, params, on_reply))
        self._send(encode_request(ident, method, params))
        return ident

    def pending_methods(self) -> list[str]:
        """The methods of the proxy's requests not answered yet."""
        return [method for method, _on_reply in self._pending.values()]

    def _fail_late(self, ident: int, method: str, on_reply: ReplyCallback) -> None:
        assert self.exit_info is not None
        self.log.info("agent.request_after_exit", method=method)
        batch = Batch()
        error = Raw(
            error_payload(AGENT_EXITED, self.exit_info.describe(), self.exit_info.as_data())
        )
        on_reply(ErrorResponse(ident, error, AGENT_EXITED, self.exit_info.describe()), batch)
        self._deliver(self._submit(batch), batch)

    def send_notification(self, method: str, params: Raw | bytes = EMPTY) -> None:
        """Send a notification."""
        self._send(encode_notification(method, params))

    def send_response(self, ident: RequestId, result: Raw | bytes) -> None:
        """Answer one of the agent's requests."""
        self._send(encode_response(ident, result))

    def send_error(
        self, ident: RequestId, code: int, message: str, data: object = None, *, raw: Raw = EMPTY
    ) -> None:
        """Answer one of the agent's requests with an error."""
        self._send(encode_error(ident, code, message, data, raw=raw))

    def _send(self, line: bytes) -> None:
        try:
            self.outbox.send_nowait(line)
        except OutboxFull as exc:
            # Its pending requests fail as for any exit; the session is restored on next use.
            self.log.error("agent.stdin_stuck", error=str(exc), hint="the agent stopped reading")
            self.stop()

    def forget_request(self, ident: int) -> None:
        """Drop the callback of a request whose answer no longer matters."""
        self._pending.pop(ident, None)

    @property
    def stopping_stdin_closed(self) -> bool:
        """Nothing can be sent to the agent any more (its stdin queue is closed)."""
        return self.outbox.closed

    @property
    def alive(self) -> bool:
        """True until the process has ended."""
        return self.process is not None and not self._stopping and not self.exited.is_set()

    @property
    def undelivered(self) -> int:
        """Batches of output decided and waiting for their commit or delivery."""
        return self._undelivered

    @property
    def pending_requests(self) -> int:
        """Requests sent to the agent and not answered yet."""
        return len(self._pending)

    @property
    def cli_ready_ms(self) -> float:
        """Spawn → first well-formed message from the agent."""
        if self.first_message_at is None:
            return 0.0
        return (self.first_message_at - self.spawned_at) * 1000

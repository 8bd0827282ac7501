"""One conversation: its agent, its attached client, its turn, its recorded stream.

Theory of operation
-------------------
A :class:`Session` is the :class:`~acp_proxy.agent.AgentHandler` of the one agent process
that serves it (one process per conversation). Everything the agent says is decided here,
synchronously, into a :class:`~acp_proxy.agent.Batch`:

* ``session/update``: ``sessionId`` rewritten to the proxy's id (only the outer object is
  re-encoded; ``update`` stays raw), appended to the store with the next sequence number, and
  delivered to the attached client once committed.
* agent → client requests (permission, ``fs/*``, ``terminal/*``, elicitation, ``_`` ext):
  sent to the attached client with a fresh client-side id; with no client attached they get
  the configured answer at once, never left pending (a pending request hangs the agent).
* answers to requests the proxy forwarded: routed back to the asking client's original id.

A client ``session/load`` replays the stored events with ``seq <= delivered_seq`` and holds
live lines until the replay and the response are written, so nothing is lost or doubled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from msgspec import Raw

from store import (
    FinishTurn,
    SessionRecord,
    StartTurn,
    UpdateSession,
    append_event,
)

from .agent import AgentProcess, Batch
from .logs import get_logger
from .pool import SetupTimings
from .protocol import (
    AGENT_EXITED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MALFORMED_JSON,
    ErrorResponse,
    Message,
    Notification,
    Request,
    RequestId,
    Response,
    SessionUpdate,
    as_valid_utf8,
    decode_update_params,
    encode_notification,
    get_str,
    object_members,
    rewrite_members,
    update_kind,
)

if TYPE_CHECKING:
    from .client import ClientConnection
    from .proxy import Proxy

__all__ = ["STATE_KINDS", "ForwardedRequest", "Session", "Turn"]

_encoder: Final = msgspec.json.Encoder()
_any_decoder: Final = msgspec.json.Decoder()
_blocks_decoder: Final = msgspec.json.Decoder(list[Raw])
#: Events read and sent per page of a replay: bounds memory and lets other sessions run
#: between pages (a 100 000-event load is ~50 pages).
REPLAY_PAGE_EVENTS: Final = 2000
_CANCELLED: Final = b'{"outcome":{"outcome":"cancelled"}}'
_UPDATE_LINE_PREFIX: Final = b'{"jsonrpc":"2.0","method":"session/update","params":'


#: Updates that describe session state, not conversation: repeated copies are not recorded.
STATE_KINDS: Final = frozenset(
    {"available_commands_update", "current_mode_update", "config_option_update"}
)
#: Agent updates that count as the model's first token.
_TOKEN_KINDS: Final = frozenset({"agent_message_chunk", "agent_thought_chunk"})


@dataclass
class Turn:
    """A ``session/prompt`` in flight."""

    seq: int
    client: ClientConnection
    client_id: RequestId
    received_at: float  #: monotonic, prompt read from the client
    started_wall: float  #: epoch seconds
    agent: str  #: ``warm`` | ``cold`` | ``restored:<rung>``
    queue_ms: float = 0.0
    cli_ready_ms: float = 0.0
    session_init_ms: float = 0.0
    forwarded_at: float = 0.0
    first_token_at: float | None = None
    agent_request_id: int = 0
    bytes_upstream: int = 0
    updates: int = 0
    user_last_seq: int = 0  #: the user's blocks are events up to here


@dataclass
class ForwardedRequest:
    """An agent → client request waiting for the client's answer."""

    agent: AgentProcess
    agent_id: RequestId
    method: str
    params: Raw
    client: ClientConnection
    client_id: int


@dataclass(eq=False)
class Session:
    """A conversation known to the proxy."""

    proxy: Proxy
    record: SessionRecord
    last_seq: int = 0  #: highest event sequence number allocated
    delivered_seq: int = 0  #: highest event sequence number delivered (so: committed)
    turn_seq: int = 0
    agent: AgentProcess | None = None
    #: an agent being stopped (evicted); a restore waits for it to be gone
    retiring: AgentProcess | None = None
    upstream_id: str | None = None
    client: ClientConnection | None = None
    turn: Turn | None = None
    held: list[tuple[int, bytes]] | None = None
    held_skip_upto: int = 0  #: held events with seq <= this were already replayed
    forwarded: dict[tuple[int, int], ForwardedRequest] = field(default_factory=dict)
    setup: SetupTimings | None = None
    #: while true, the agent's session/update are a replay of what the store already holds
    draining: bool = False
    drained: int = 0  #: updates the agent replayed while draining (logged by the restore)
    #: history block for the first prompt after a restore onto a brand new agent session
    seed: dict[str, Any] | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    #: per-process environment values the agent runs with (``Config.per_process_env``)
    env: dict[str, str] = field(default_factory=dict)
    #: last recorded update of each state kind (raw), to skip repeats after a restore
    last_state: dict[str, bytes] = field(default_factory=dict)
    #: from a restore to the next prompt: identical state repeats are not recorded
    quiet_state: bool = False
    turns_completed: int = 0
    updates_recorded: int = 0
    created_mono: float = field(default_factory=time.monotonic)
    #: monotonic time of the last client request or agent output: what idle eviction reads
    last_active: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.log = get_logger(session_id=self.record.id)
        self._payload_prefix = b'{"sessionId":' + _encoder.encode(self.record.id) + b',"update":'

    @property
    def id(self) -> str:
        """The proxy's session id."""
        return self.record.id

    def retire_agent(self) -> AgentProcess | None:
        """Stop this session's agent. The session is not live from this moment: a request
        arriving while the process shuts down restores the conversation, once the old
        process has exited (some agents lock a session to one process)."""
        agent, self.agent = self.agent, None
        if agent is not None:
            self.retiring = agent
            agent.stop()
        return agent

    def touch(self) -> None:
        """Record activity (idle eviction counts only real work)."""
        self.last_active = time.monotonic()

    @property
    def evictable(self) -> bool:
        """Live, idle: no turn, nothing pending either way, no restore in progress."""
        agent = self.agent
        return (
            self.live
            and agent is not None
            and self.turn is None
            and agent.pending_requests == 0
            and not self.forwarded
            and not self.lock.locked()
        )

    @property
    def live(self) -> bool:
        """True while an agent process holds this conversation."""
        return self.agent is not None and self.agent.alive and self.upstream_id is not None

    # -- AgentHandler ------------------------------------------------------------------------

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        """Record and deliver one ``session/update`` (the hot path: every streamed chunk)."""
        if self.draining:
            self.drained += 1
            return
        # The outer object is rebuilt from a per-session prefix; ``update`` stays as it came.
        update = bytes(params.update)
        meta = b',"_meta":' + bytes(params.meta) if params.meta else b""
        self._record_update(self._payload_prefix + update + meta + b"}", update, batch)

    def on_agent_message(self, agent: AgentProcess, msg: Message, batch: Batch) -> None:
        """Decide what one agent request or notification means."""
        if isinstance(msg, Request):
            batch.deliveries.append(lambda: self._forward_agent_request(agent, msg))
            return
        assert isinstance(msg, Notification)
        if msg.method == "session/update":
            fast = decode_update_params(msg.params)
            if fast is not None:
                self.on_session_update(agent, fast, batch)
            elif not self.draining:
                self._record_unusual_update(msg.params, batch)
            else:
                self.drained += 1
        elif msg.method == "$/cancel_request":
            batch.deliveries.append(lambda: self._forward_agent_cancel(agent, msg.params))
        else:
            payload = self._to_client_params(msg.params)
            batch.add_line(self, 0, encode_notification(msg.method, payload))

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        """The agent ended: its pending requests failed already; answer its requests to us."""
        for key, fwd in list(self.forwarded.items()):
            if fwd.agent is agent:
                del self.forwarded[key]
        if self.agent is agent:
            self.agent = None
            self.log.info("session.agent_gone", exit=agent.exit_info and agent.exit_info.as_data())

    # -- agent → client ----------------------------------------------------------------------

    def _record_unusual_update(self, params: Raw, batch: Batch) -> None:
        """A ``session/update`` with members beyond sessionId/update/_meta: rewrite the
        sessionId member by member, keep the rest."""
        try:
            members = object_members(params)
        except Exception:
            self.log.warning("agent.bad_update_params")
            return
        update = members.get("update")
        payload = rewrite_members(members, sessionId=self.id)
        self._record_update(payload, bytes(update) if update is not None else None, batch)

    def _record_update(self, payload: bytes, update: bytes | None, batch: Batch) -> None:
        self.last_active = time.monotonic()
        kind = update_kind(update, validated=True) if update is not None else ""
        line = _UPDATE_LINE_PREFIX + payload + b"}\n"
        if kind in STATE_KINDS and update is not None:
            if self.quiet_state and self.last_state.get(kind) == update:
                # Agents repeat their state after a load/resume (opencode: the commands, after
                # every restore): an identical repeat then is not part of the conversation.
                batch.add_line(self, 0, line)
                return
            self.last_state[kind] = update
        self.last_seq += 1
        seq = self.last_seq
        turn = self.turn
        # The batch's consecutive events of one turn become one stored run.
        append_event(batch.ops, self.id, seq, turn.seq if turn else 0, kind, payload)
        self.updates_recorded += 1
        if turn is not None:
            turn.updates += 1
            if turn.first_token_at is None and kind in _TOKEN_KINDS:
                turn.first_token_at = time.monotonic()
        if kind in ("current_mode_update", "config_option_update", "session_info_update"):
            assert update is not None
            self._apply_state_update(kind, update, batch)
        batch.add_line(self, seq, line)

    def _apply_state_update(self, kind: str, update: bytes, batch: Batch) -> None:
        try:
            body = _any_decoder.decode(update)
        except MALFORMED_JSON:
            return
        if not isinstance(body, dict):
            return
        if kind == "current_mode_update" and isinstance(body.get("currentModeId"), str):
            self.set_current_mode(body["currentModeId"], batch.ops)
        elif kind == "config_option_update" and isinstance(body.get("configOptions"), list):
            self.set_config_options(_encoder.encode(body["configOptions"]), batch.ops)
        elif kind == "session_info_update" and "title" in body:
            title = body["title"] if isinstance(body["title"], str) else None
            self.record = msgspec.structs.replace(self.record, title=title)
            batch.ops.append(UpdateSession(self.id, time.time(), title=title))

    def set_current_mode(self, mode_id: str, ops: list[Any]) -> None:
        """Remember the session's current mode (re-applied when the agent is restored)."""
        modes = _any_decoder.decode(self.record.modes) if self.record.modes else {}
        if not isinstance(modes, dict):
            modes = {}
        modes["currentModeId"] = mode_id
        raw = _encoder.encode(modes)
        self.record = msgspec.structs.replace(self.record, modes=raw)
        ops.append(UpdateSession(self.id, time.time(), modes=raw))

    def set_config_options(self, raw: bytes, ops: list[Any]) -> None:
        """Remember the session's config options (complete set, as the agent sent it)."""
        self.record = msgspec.structs.replace(self.record, config_options=raw)
        ops.append(UpdateSession(self.id, time.time(), config_options=raw))

    def deliver_lines(self, items: list[tuple[int, bytes]]) -> None:
        """Send committed ``(seq, line)`` items (seq 0: not recorded) to the client, in order:
        one write for the run, or held while a replay or a session set-up is in progress."""
        for seq, _line in reversed(items):
            if seq:
                self.delivered_seq = seq
                break
        if self.held is not None:
            self.held.extend(items)
        elif self.client is not None:
            self.client.send_nowait(items[0][1] if len(items) == 1 else _join_lines(items))

    def _to_client_params(self, params: Raw) -> bytes | Raw:
        try:
            members = object_members(params)
        except Exception:
            return params
        if "sessionId" in members:
            return rewrite_members(members, sessionId=self.id)
        return params

    def _forward_agent_request(self, agent: AgentProcess, msg: Request) -> None:
        client = self.client
        if client is None or client.closed:
            self._answer_unattached(agent, msg.id, msg.method, msg.params)
            return
        params = self._to_client_params(msg.params)

        def on_client_reply(reply: Response | ErrorResponse) -> None:
            fwd = self.forwarded.pop((id(client), client_id), None)
            if fwd is None:  # already answered by the proxy (cancel, detach)
                return
            if isinstance(reply, Response):
                agent.send_response(msg.id, reply.result)
            else:
                agent.send_error(msg.id, reply.code, reply.message, raw=reply.error)

        client_id = client.send_request(msg.method, params, on_client_reply)
        self.forwarded[(id(client), client_id)] = ForwardedRequest(
            agent, msg.id, msg.method, msg.params, client, client_id
        )

    def _forward_agent_cancel(self, agent: AgentProcess, params: Raw) -> None:
        # $/cancel_request is hop-scoped (acp-notes §7.4): translate the agent's id to ours.
        try:
            target = _any_decoder.decode(params).get("requestId")
        except (*MALFORMED_JSON, AttributeError):
            return
        for fwd in self.forwarded.values():
            if fwd.agent is agent and fwd.agent_id == target:
                fwd.client.send_notification("$/cancel_request", {"requestId": fwd.client_id})
                return

    def _answer_unattached(
        self, agent: AgentProcess, ident: RequestId, method: str, params: Raw
    ) -> None:
        if method == "session/request_permission":
            agent.send_response(ident, self._unattached_permission(params))
            self.log.info("permission.answered_unattached", method=method)
            return
        agent.send_error(
            ident,
            INTERNAL_ERROR,
            f"{method}: no client is attached to session {self.id}, so nobody can serve it; "
            "the proxy advertises no fs/terminal capability",
            {"kind": "no_client_attached", "sessionId": self.id},
        )

    def _unattached_permission(self, params: Raw) -> bytes:
        policy = self.proxy.config.unattached_permission
        if policy == "cancelled":
            return _CANCELLED
        try:
            options = _any_decoder.decode(params).get("options") or []
        except (*MALFORMED_JSON, AttributeError):
            options = []
        for option in options:
            if isinstance(option, dict) and str(option.get("kind", "")).startswith(policy):
                return _encoder.encode(
                    {"outcome": {"outcome": "selected", "optionId": option.get("optionId")}}
                )
        return _CANCELLED

    def answer_forwarded(self, predicate: Callable[[ForwardedRequest], bool]) -> int:
        """Answer matching forwarded requests on the client's behalf; returns how many.

        Permission requests get ``cancelled`` (mandatory after ``session/cancel``); others get
        the unattached answer.
        """
        count = 0
        for key, fwd in list(self.forwarded.items()):
            if not predicate(fwd):
                continue
            del self.forwarded[key]
            count += 1
            if fwd.method == "session/request_permission":
                fwd.agent.send_response(fwd.agent_id, _CANCELLED)
            else:
                self._answer_unattached(fwd.agent, fwd.agent_id, fwd.method, fwd.params)
        return count

    # -- clients -----------------------------------------------------------------------------

    def attach(self, client: ClientConnection) -> None:
        """Make ``client`` the one that receives this session's live output."""
        self.touch()
        previous = self.client
        if previous is client:
            return
        if previous is not None:
            previous.sessions.discard(self)
        self.client = client
        client.sessions.add(self)

    def detach(self, client: ClientConnection) -> None:
        """``client`` went away: answer what it owed the agent; apply the disconnect policy."""
        if self.client is client:
            self.client = None
        self.answer_forwarded(lambda fwd: fwd.client is client)
        turn = self.turn
        if (
            turn is not None
            and turn.client is client
            and self.proxy.config.on_client_disconnect == "cancel"
        ):
            self.cancel_turn()

    async def replay_to(self, client: ClientConnection, *, replay: bool) -> None:
        """Attach ``client``; if ``replay``, send the recorded history first (session/load)."""
        self.attach(client)
        if not replay:
            return
        # Every event up to delivered_seq is committed (delivery follows the commit, and the
        # store commits in allocation order); later ones arrive live and are held meanwhile.
        upto = self.delivered_seq
        self.held, self.held_skip_upto = [], upto
        try:
            after = 0
            while after < upto:  # bounded: every page advances `after`, or the loop ends
                page = await self.proxy.store.event_page(
                    self.id, after_seq=after, upto_seq=upto, limit=REPLAY_PAGE_EVENTS
                )
                if not page:
                    break
                client.send_nowait(
                    b"".join(
                        b'{"jsonrpc":"2.0","method":"session/update","params":'
                        + as_valid_utf8(p)  # rows stored before lines were checked
                        + b"}\n"
                        for _seq, p in page
                    )
                )
                after = page[-1][0]
        except BaseException:
            self.release_held()
            raise

    def release_held(self) -> None:
        """Send lines held during a replay or a session set-up, then go live."""
        held, self.held = self.held, None
        skip, self.held_skip_upto = self.held_skip_upto, 0
        if held and self.client is not None:
            self.client.send_nowait(b"".join(line for seq, line in held if seq == 0 or seq > skip))

    # -- turns -------------------------------------------------------------------------------

    def begin_turn(self, client: ClientConnection, req: Request, received_at: float) -> list[Any]:
        """Start a turn: returns the store writes (turn row, the user's blocks as events).

        Raises:
            LocalProtocolError: ``prompt`` is missing or not an array.
        """
        from .protocol import LocalProtocolError

        members = object_members(req.params)
        prompt = members.get("prompt")
        try:
            blocks = _blocks_decoder.decode(prompt) if prompt is not None else None
        except MALFORMED_JSON:
            blocks = None
        if prompt is None or blocks is None:
            raise LocalProtocolError(
                'Invalid params: session/prompt needs a "prompt" array of content blocks',
                INVALID_PARAMS,
            )
        self.attach(client)
        self.quiet_state = False
        self.turn_seq += 1
        setup = self.setup or SetupTimings()
        self.setup = None
        turn = Turn(
            self.turn_seq,
            client,
            req.id,
            received_at,
            time.time(),
            setup.agent,
            cli_ready_ms=setup.cli_ready_ms,
            session_init_ms=setup.session_init_ms,
        )
        self.turn = turn
        ops: list[Any] = [StartTurn(self.id, turn.seq, turn.started_wall, bytes(prompt))]
        sid = _encoder.encode(self.id)
        for block in blocks:
            # The user's prompt is part of the conversation a later load replays (acp-notes
            # §3.3): stored as the user_message_chunk an agent would replay.
            payload = (
                b'{"sessionId":'
                + sid
                + b',"update":{"sessionUpdate":"user_message_chunk","content":'
                + bytes(block)
                + b"}}"
            )
            self.last_seq += 1
            append_event(ops, self.id, self.last_seq, turn.seq, "user_message_chunk", payload)
        turn.user_last_seq = self.last_seq
        ops.append(UpdateSession(self.id, turn.started_wall))
        return ops

    def forward_prompt(self, req: Request) -> int:
        """Send the prompt of the current turn to the agent; returns its last user event."""
        turn, agent = self.turn, self.agent
        assert turn is not None and agent is not None and self.upstream_id is not None
        members = object_members(req.params)
        changes: dict[str, Any] = {"sessionId": self.upstream_id}
        if self.seed is not None:
            # Sent once: the agent keeps it in its own context from now on.
            blocks = _blocks_decoder.decode(members["prompt"])
            changes["prompt"] = [self.seed, *blocks]
            self.seed = None
        params = rewrite_members(members, **changes)
        turn.forwarded_at = time.monotonic()
        turn.queue_ms = (turn.forwarded_at - turn.received_at) * 1000
        turn.bytes_upstream = len(params)
        turn.agent_request_id = agent.send_request("session/prompt", params, self._on_prompt_reply)
        turn.client.inflight[turn.client_id] = (agent, turn.agent_request_id)
        return turn.user_last_seq

    def mark_delivered(self, seq: int) -> None:
        """Events up to ``seq`` are committed and the client has them (the user's own blocks
        count as delivered without being sent back): a load from now on replays them."""
        self.delivered_seq = max(self.delivered_seq, seq)

    def cancel_turn(self) -> None:
        """``session/cancel``: reaches the agent at once; pending permissions get cancelled."""
        agent = self.agent
        if agent is not None and agent.alive and self.upstream_id is not None:
            agent.send_notification(
                "session/cancel", _encoder.encode({"sessionId": self.upstream_id})
            )
        self.answer_forwarded(lambda fwd: fwd.method == "session/request_permission")

    def _on_prompt_reply(self, reply: Response | ErrorResponse, batch: Batch) -> None:
        turn = self.turn
        if turn is None:
            return
        self.turn = None
        now = self.last_active = time.monotonic()
        turn.client.inflight.pop(turn.client_id, None)
        stop_reason: str | None = None
        usage: bytes | None = None
        members: dict[str, Raw] = {}
        if isinstance(reply, Response):
            try:
                members = object_members(reply.result) if bytes(reply.result) != b"null" else {}
            except Exception:
                members = {}
            stop_reason = get_str(members, "stopReason")
            usage = bytes(members["usage"]) if "usage" in members else None
            outcome = "cancelled" if stop_reason == "cancelled" else "completed"
        else:
            outcome = "unknown" if reply.code == AGENT_EXITED else "error"
        timings = self._timings(turn, now)
        batch.ops.append(
            FinishTurn(
                self.id,
                turn.seq,
                time.time(),
                stop_reason,
                outcome,
                _encoder.encode(timings),
                usage,
            )
        )
        self.turns_completed += 1
        self.log.info(
            "turn.finished",
            outcome=outcome,
            stop_reason=stop_reason,
            updates=turn.updates,
            **timings,
        )
        client = turn.client
        if isinstance(reply, Response):
            meta = object_members(members["_meta"]) if "_meta" in members else {}
            meta["acp-proxy"] = Raw(_encoder.encode(timings))
            result = rewrite_members(members, _meta=Raw(_encoder.encode(meta)))
            batch.deliveries.append(lambda: client.send_response(turn.client_id, result))
        elif reply.code == AGENT_EXITED:
            data = _any_decoder.decode(reply.error).get("data") or {}
            data.update({"turnOutcome": "unknown", "sessionId": self.id, "turn": turn.seq})
            message = (
                f"{reply.message} during turn {turn.seq}; the turn's outcome is unknown and it "
                "will not be re-sent; the next prompt restores the session"
            )
            batch.deliveries.append(
                lambda: client.send_error(turn.client_id, AGENT_EXITED, message, data)
            )
        else:
            batch.deliveries.append(
                lambda: client.send_error(
                    turn.client_id, reply.code, reply.message, raw=reply.error
                )
            )

    def _timings(self, turn: Turn, now: float) -> dict[str, Any]:
        first = turn.first_token_at
        return {
            "turn": turn.seq,
            "agent": turn.agent,
            "queue_ms": round(turn.queue_ms, 3),
            "cli_ready_ms": round(turn.cli_ready_ms, 3),
            "session_init_ms": round(turn.session_init_ms, 3),
            "model_first_token_ms": round((first - turn.forwarded_at) * 1000, 3) if first else None,
            "ttft_ms": round((first - turn.received_at) * 1000, 3) if first else None,
            "total_ms": round((now - turn.received_at) * 1000, 3),
            "bytes_upstream": turn.bytes_upstream,
        }


def _join_lines(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join([line for _seq, line in items])

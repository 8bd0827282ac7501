"""One conversation: its lifecycle, its agent, its attached clients, its turn, its stream.

A :class:`Session` is the :class:`~acp_proxy.agent.AgentHandler` of the agent process that
serves it. Everything the agent says is decided here, synchronously, into a
:class:`~acp_proxy.agent.Batch`:

* ``session/update``: ``sessionId`` rewritten to the proxy's id (only the outer object is
  re-encoded; ``update`` stays raw), appended to the store with the next sequence number, and
  delivered to **every** attached client once committed;
* agent → client requests: sent to the client of the running turn (else the one attached
  last), or answered for nobody (``forwarding.py``); their answers routed back.

Its state is a :class:`~acp_proxy.lifecycle.Lifecycle`; the moves that take I/O (binding an
agent, closing, deleting) are made by the session's owner task (``owner.py``) only. What is
delivered was committed, and what was committed is delivered: a state update identical to the
last one of its kind is neither recorded nor delivered (every client has it already).

A ``session/load`` replays the stored events up to ``delivered_seq`` and holds that client's
live lines until its replay and response are written: nothing is lost or doubled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import msgspec
from msgspec import Raw

from store import (
    FinishTurn,
    SessionRecord,
    SessionStore,
    StartTurn,
    UpdateSession,
    append_event,
)

from .agent import AgentProcess, Batch
from .config import Config
from .forwarding import ForwardedRequest, Forwarding, with_session_id
from .lifecycle import Event, Lifecycle, State
from .logs import get_logger
from .peer import Attachment, Audience, Peer
from .pool import SetupTimings
from .protocol import (
    RESOURCE_NOT_FOUND,
    Call,
    ErrorResponse,
    LocalProtocolError,
    Notification,
    Request,
    Response,
    SessionUpdate,
    as_valid_utf8,
    decode_update_params,
    encode_notification,
    object_members,
    rewrite_members,
    update_kind,
)
from .record_state import apply_state_update, with_config_options, with_current_mode
from .turn import (
    Turn,
    answer_prompt,
    prompt_blocks,
    turn_outcome,
    turn_timings,
    user_message_payloads,
)

__all__ = ["STATE_KINDS", "Session"]

_encoder: Final = msgspec.json.Encoder()
_blocks_decoder: Final = msgspec.json.Decoder(list[Raw])
_UPDATE_LINE_PREFIX: Final = b'{"jsonrpc":"2.0","method":"session/update","params":'


#: Updates that describe session state, not conversation: repeated copies are not recorded.
STATE_KINDS: Final = frozenset(
    {"available_commands_update", "current_mode_update", "config_option_update"}
)
#: Agent updates that count as the model's first token.
_TOKEN_KINDS: Final = frozenset({"agent_message_chunk", "agent_thought_chunk"})


@dataclass(eq=False)
class Session:
    """A conversation known to the proxy."""

    config: Config
    store: SessionStore
    record: SessionRecord
    last_seq: int = 0  #: highest event sequence number allocated
    delivered_seq: int = 0  #: highest event sequence number delivered (so: committed)
    turn_seq: int = 0
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    agent: AgentProcess | None = None
    upstream_id: str | None = None
    #: clients receiving the live stream, in the order they attached
    audience: Audience = field(default_factory=Audience)
    turn: Turn | None = None
    setup: SetupTimings | None = None
    #: while true, the agent's session/update are a replay of what the store already holds
    draining: bool = False
    drained: int = 0  #: updates the agent replayed while draining (logged by the restore)
    #: history block for the first prompt after a restore onto a brand new agent session
    seed: dict[str, Any] | None = None
    #: per-process environment values the agent runs with (``Config.per_process_env``)
    env: dict[str, str] = field(default_factory=dict)
    #: last recorded update of each state kind (raw): an identical repeat is dropped
    last_state: dict[str, bytes] = field(default_factory=dict)
    #: prompts waiting for the running turn (FIFO), each woken when it may go
    prompt_queue: deque[anyio.Event] = field(default_factory=deque)
    #: bumped by session/cancel: queued prompts from before it are answered cancelled
    cancel_generation: int = 0
    #: called when the session becomes idle (a waiter for an agent slot may evict it now)
    on_idle: Callable[[], None] = lambda: None
    #: called with each turn's outcome and timings (the metrics)
    observe_turn: Callable[[str, dict[str, Any]], None] = lambda outcome, timings: None
    #: the session leaves its agent process; True if it stopped (the pool's ``leave``)
    release_agent: Callable[[Session, AgentProcess], bool] = lambda session, agent: _stop(agent)
    turns_completed: int = 0
    updates_recorded: int = 0
    created_mono: float = field(default_factory=time.monotonic)
    #: monotonic time of the last client request or agent output: what idle eviction reads
    last_active: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.log = get_logger(session_id=self.record.id)
        #: agent → client requests waiting for a client's answer
        self.forwarded = Forwarding(self.record.id, self.config)
        self._payload_prefix = b'{"sessionId":' + _encoder.encode(self.record.id) + b',"update":'

    @property
    def id(self) -> str:
        """The proxy's session id."""
        return self.record.id

    @property
    def state(self) -> State:
        """Where the conversation is (see ``lifecycle.py``)."""
        return self.lifecycle.state

    @property
    def live(self) -> bool:
        """True while an agent process holds this conversation."""
        return self.lifecycle.live

    @property
    def evictable(self) -> bool:
        """Live and idle: no turn, no prompt waiting, nothing pending either way."""
        agent = self.agent
        return (
            self.lifecycle.state is State.LIVE
            and agent is not None
            and agent.pending_requests == 0
            and not self.forwarded
            and not self.prompt_queue
        )

    @property
    def _cancel_on_leave(self) -> bool:
        return self.config.on_client_disconnect == "cancel"

    def touch(self) -> None:
        """Record activity (idle eviction counts only real work)."""
        self.last_active = time.monotonic()

    def retire(self, reason: str) -> AgentProcess | None:
        """Stop this session's agent (one synchronous step: nothing can interleave).

        Output the agent already wrote is still recorded and delivered; the session is bound
        again (restored) on next use, once the old process has exited."""
        agent = self.agent
        if agent is None or not self.lifecycle.allows(Event.RETIRE):
            return None
        self.lifecycle.handle(Event.RETIRE)
        stopped = self.release_agent(self, agent)
        self.log.info(
            "session.retired" if reason in ("closed", "env_changed") else "session.evicted",
            reason=reason,
            idle_s=round(time.monotonic() - self.last_active, 3),
            agent_pid=agent.pid,
            agent_stopped=stopped,
        )
        if not stopped:  # the process stays for the conversations it shares: this one left
            self.on_agent_exit(agent, Batch())
        return agent

    def require_not_deleted(self) -> None:
        """Raise -32002 for a deleted session (nothing may revive it)."""
        if self.lifecycle.deleted:
            raise LocalProtocolError(
                f"Resource not found: session {self.id} was deleted",
                RESOURCE_NOT_FOUND,
                {"sessionId": self.id},
            )

    # -- AgentHandler ------------------------------------------------------------------------

    def on_session_update(self, agent: AgentProcess, params: SessionUpdate, batch: Batch) -> None:
        """Record and deliver one ``session/update`` (the hot path: every streamed chunk)."""
        if self.draining:
            self.drained += 1
            return
        if self.lifecycle.deleted:
            return  # a deleted conversation records nothing more
        # The outer object is rebuilt from a per-session prefix; ``update`` stays as it came.
        update = bytes(params.update)
        meta = b',"_meta":' + bytes(params.meta) if params.meta else b""
        self._record_update(self._payload_prefix + update + meta + b"}", update, batch)

    def on_agent_message(self, agent: AgentProcess, msg: Call, batch: Batch) -> None:
        """Decide what one agent request or notification means."""
        if isinstance(msg, Request):
            batch.deliveries.append(lambda: self._forward_agent_request(agent, msg))
            return
        if self.lifecycle.deleted:
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
            batch.deliveries.append(lambda: self.forwarded.forward_cancel(agent, msg.params))
        else:
            payload = with_session_id(msg.params, self.id)
            batch.add_line(self, 0, encode_notification(msg.method, payload))

    def on_agent_exit(self, agent: AgentProcess, batch: Batch) -> None:
        """The agent ended: its pending requests failed already; answer its requests to us."""
        self.forwarded.forget_agent(agent)
        if self.agent is agent:
            self.agent = None
            self.seed = None
            if self.lifecycle.allows(Event.AGENT_GONE):
                self.lifecycle.handle(Event.AGENT_GONE)
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
            if self.last_state.get(kind) == update:
                # Agents repeat their state (opencode: the commands, after every load or
                # resume): an identical repeat says nothing new and every client has it
                # already, so it is neither recorded nor delivered, whenever it comes.
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
        change = apply_state_update(self.record, kind, update)
        if change is not None:
            self.record, op = change
            batch.ops.append(op)

    def set_current_mode(self, mode_id: str, ops: list[Any]) -> None:
        """Remember the session's current mode (re-applied when the agent is restored)."""
        self.record, op = with_current_mode(self.record, mode_id)
        ops.append(op)

    def set_config_options(self, raw: bytes, ops: list[Any]) -> None:
        """Remember the session's config options (complete set, as the agent sent it)."""
        self.record, op = with_config_options(self.record, raw)
        ops.append(op)

    def deliver_lines(self, items: list[tuple[int, bytes]]) -> None:
        """Send committed ``(seq, line)`` items (seq 0: not recorded) to every attached
        client, in order (the agent's batch delivery)."""
        for seq, _line in reversed(items):
            if seq:
                self.delivered_seq = seq
                break
        self.audience.deliver(items, self.turn)

    def _forward_agent_request(self, agent: AgentProcess, msg: Request) -> None:
        client = None if self.lifecycle.deleted else self._requests_go_to()
        params = with_session_id(msg.params, self.id) if client is not None else msg.params
        self.forwarded.forward(agent, msg, client, params)

    def answer_forwarded(self, predicate: Callable[[ForwardedRequest], bool]) -> int:
        """Answer matching agent → client requests on the client's behalf."""
        return self.forwarded.answer(predicate)

    def _requests_go_to(self) -> Peer | None:
        """Who answers the agent's requests: the running turn's client, else the last one."""
        return self.audience.last_open(self.turn.client if self.turn else None)

    # -- clients -----------------------------------------------------------------------------

    def attach(self, client: Peer, *, hold: bool = False) -> Attachment:
        """Add ``client`` to those receiving the live stream (``hold``: keep its lines until
        :meth:`release_held`, e.g. until it has the answer that names the session)."""
        self.touch()
        return self.audience.add(client, self, hold=hold)

    def detach(self, client: Peer) -> None:
        """``client`` went away: answer what it owed the agent; apply the disconnect policy."""
        self.audience.remove(client, self)
        self.answer_forwarded(lambda fwd: fwd.client is client)
        if self.turn is not None and self.turn.client is client and self._cancel_on_leave:
            self.cancel_turn()

    async def replay_to(self, client: Peer, *, replay: bool) -> None:
        """Attach ``client``; if ``replay``, send the recorded history first (session/load).

        Every event up to ``delivered_seq`` is committed (delivery follows the commit, and the
        store commits in allocation order); later ones arrive live and are held meanwhile,
        for this client only."""
        if not replay:
            self.attach(client)
            return
        self.touch()

        async def read(after: int, upto: int, limit: int) -> list[tuple[int, bytes]]:
            page = await self.store.event_page(self.id, after_seq=after, upto_seq=upto, limit=limit)
            # Rows stored before client lines were checked may hold invalid UTF-8: repaired.
            return [(seq, as_valid_utf8(payload)) for seq, payload in page]

        await self.audience.replay(client, self, self.delivered_seq, read)

    def release_held(self, client: Peer) -> None:
        """Send ``client`` the lines held during its replay or session set-up; go live."""
        self.audience.release_held(client)

    # -- turns -------------------------------------------------------------------------------

    def begin_turn(self, client: Peer, req: Request, received_at: float) -> list[Any]:
        """Start a turn (LIVE → IN_TURN): returns the store writes (turn row, the user's
        blocks as events). :meth:`forward_prompt` sends it, with no await in between.

        Raises:
            LocalProtocolError: ``prompt`` is missing or not an array.
            IllegalTransition: the session is not live and idle (a bug in the caller).
        """
        prompt, blocks = prompt_blocks(req.params)
        self.lifecycle.handle(Event.PROMPT)
        self.attach(client)
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
        for payload in user_message_payloads(self.id, blocks):
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

    def abort_turn(self) -> None:
        """The turn begun could not be sent (its start could not be queued in the store)."""
        self.turn = None
        self.lifecycle.handle(Event.TURN_ENDED)
        self._turn_over()

    def _turn_over(self) -> None:
        if self.prompt_queue:
            self.prompt_queue[0].set()  # the next queued prompt may go
        else:
            self.on_idle()

    def mark_delivered(self, seq: int) -> None:
        """Events up to ``seq`` are committed and the client has them (the user's own blocks
        count as delivered without being sent back): a load from now on replays them."""
        self.delivered_seq = max(self.delivered_seq, seq)

    def cancel_turn(self) -> None:
        """``session/cancel``: reaches the agent at once; pending permissions get cancelled;
        prompts queued behind the turn are answered ``cancelled`` without running."""
        self.cancel_generation += 1
        for waiter in self.prompt_queue:
            waiter.set()
        agent = self.agent
        if agent is not None and agent.alive and self.upstream_id is not None:
            agent.send_notification(
                "session/cancel", _encoder.encode({"sessionId": self.upstream_id})
            )
        self.answer_forwarded(lambda fwd: fwd.method == "session/request_permission")

    def abandon_turn(self) -> tuple[Turn, list[Any]] | None:
        """End the running turn without waiting for its answer (the proxy is stopping): the
        agent gets ``session/cancel`` and its late answer is ignored. Returns the turn and its
        store write (outcome ``cancelled``); answering the client is the caller's."""
        turn = self.turn
        if turn is None:
            return None
        self.cancel_turn()
        if self.agent is not None:
            self.agent.forget_request(turn.agent_request_id)
        _timings, finish = self._end_turn(turn, "cancelled", "proxy_stopping", None)
        return turn, [finish]

    def _end_turn(
        self, turn: Turn, outcome: str, stop_reason: str | None, usage: bytes | None
    ) -> tuple[dict[str, Any], FinishTurn]:
        """IN_TURN → LIVE, the canonical ``turn.finished`` line, and the turn's store write."""
        self.turn, turn.end_seq = None, self.last_seq
        if self.lifecycle.allows(Event.TURN_ENDED):
            self.lifecycle.handle(Event.TURN_ENDED)
        now = self.last_active = time.monotonic()
        turn.client.inflight.pop(turn.client_id, None)
        timings = turn_timings(turn, now)
        self.turns_completed += 1
        self.log.info(
            "turn.finished",
            outcome=outcome,
            stop_reason=stop_reason,
            updates=turn.updates,
            **timings,
        )
        self.observe_turn(outcome, timings)
        encoded = _encoder.encode(timings)
        return timings, FinishTurn(
            self.id, turn.seq, time.time(), stop_reason, outcome, encoded, usage
        )

    def _on_prompt_reply(self, reply: Response | ErrorResponse, batch: Batch) -> None:
        turn = self.turn
        if turn is None:
            return
        read = turn_outcome(reply)
        timings, finish = self._end_turn(turn, read.outcome, read.stop_reason, read.usage)
        batch.ops.append(finish)
        batch.deliveries.append(self._turn_over)
        batch.deliveries.append(answer_prompt(self.id, turn, reply, read, timings))


def _stop(agent: AgentProcess) -> bool:
    agent.stop()
    return True

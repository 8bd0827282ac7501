"""What a session needs of a connected client, and the clients attached to a session.

``client.ClientConnection`` is the real client; sessions see it only through :class:`Peer`,
so nothing below the client layer imports it. :class:`Audience` sends a session's committed
lines to every attached client, holding them for a client whose replay is being written, and
keeping from a muted client the lines of the turn it is muted for (:meth:`Audience.mute`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from msgspec import Raw

from .agent import AgentProcess
from .protocol import EMPTY, ErrorResponse, RequestId, Response

__all__ = ["Attachment", "Audience", "ClientReply", "Peer", "TurnSpan"]

_UPDATE_LINE_PREFIX: Final = b'{"jsonrpc":"2.0","method":"session/update","params":'
#: Events read and sent per page of a replay: bounds memory and lets other sessions run
#: between pages (a 100 000-event load is ~50 pages).
REPLAY_PAGE_EVENTS: Final = 2000
#: Reads one page of stored events: ``(after_seq, upto_seq, limit) → [(seq, payload)]``.
PageReader = Callable[[int, int, int], Awaitable[list[tuple[int, bytes]]]]

#: Called with a client's answer to a request the proxy sent it.
ClientReply = Callable[[Response | ErrorResponse], None]


class Peer(Protocol):
    """A connected ACP client."""

    number: int
    #: client request id → (agent, agent-side id), to translate ``$/cancel_request``
    inflight: dict[RequestId, tuple[AgentProcess, int]]
    #: the sessions this client is attached to (detached when it goes)
    sessions: set[Any]
    #: relay the agent's stderr during turns (``_acp-proxy/stderr``): asked by ``attach``
    wants_stderr: bool

    @property
    def closed(self) -> bool:
        """The connection is going away."""
        ...

    def send_nowait(self, data: bytes) -> None:
        """Queue bytes for the client."""

    def send_response(self, ident: RequestId, result: Raw | bytes | Any) -> None:
        """Answer one of the client's requests."""

    def send_error(
        self, ident: RequestId, code: int, message: str, data: object = None, *, raw: Raw = EMPTY
    ) -> None:
        """Answer one of the client's requests with an error."""

    def send_notification(self, method: str, params: Raw | bytes | Any) -> None:
        """Send a notification."""

    def send_request(self, method: str, params: Raw | bytes, on_reply: ClientReply) -> int:
        """Send a request; ``on_reply`` gets the answer."""


class TurnSpan(Protocol):
    """A turn, as far as muting a client for it goes (``turn.Turn``)."""

    #: the session's last event seq when the turn ended (0: running, or never sent)
    end_seq: int


@dataclass
class Attachment:
    """One client receiving a session's live stream."""

    #: lines held while this client's replay (or the session/new answer) is being written
    held: list[tuple[int, bytes]] | None = None
    held_skip_upto: int = 0  #: held events with seq <= this were already replayed
    #: another client's turn, running when this client attached, whose lines it must not get
    muted: TurnSpan | None = None

    def unmuted(self, items: list[tuple[int, bytes]], current: object) -> list[tuple[int, bytes]]:
        """What of ``items`` a muted client gets: the muted turn's events (``0 < seq <=
        end_seq``, including those delivered after it ended), and while it runs every
        event, are dropped; unrecorded lines (seq 0) pass. Unmuted at the first later event."""
        turn = self.muted
        assert turn is not None
        if not turn.end_seq:
            if turn is current:
                return [item for item in items if not item[0]]
            self.muted = None  # it ended before it was sent: nothing of it to keep back
            return items
        kept = [item for item in items if not item[0] or item[0] > turn.end_seq]
        if any(seq for seq, _line in kept):
            self.muted = None
        return kept


class Audience:
    """The clients receiving one session's live stream, in the order they attached (the
    last one answers the agent's requests when no turn is running)."""

    def __init__(self) -> None:
        self.attachments: dict[Peer, Attachment] = {}

    def __contains__(self, client: Peer) -> bool:
        return client in self.attachments

    def add(self, client: Peer, owner: object, *, hold: bool = False) -> Attachment:
        """Attach ``client`` (``hold``: keep its lines until :meth:`release_held`)."""
        attachment = self.attachments.get(client)
        if attachment is None:
            attachment = self.attachments[client] = Attachment()
            client.sessions.add(owner)
        else:  # most recent last
            self.attachments[client] = self.attachments.pop(client)
        if hold and attachment.held is None:
            attachment.held, attachment.held_skip_upto = [], 0
        return attachment

    def remove(self, client: Peer, owner: object) -> None:
        """``client`` no longer receives the stream."""
        self.attachments.pop(client, None)
        client.sessions.discard(owner)

    def mute(self, client: Peer, turn: TurnSpan) -> None:
        """Keep ``turn``'s lines (another client's, running) from ``client``, attached."""
        self.attachments[client].muted = turn

    def hears(self, client: Peer, current: object) -> bool:
        """Whether ``client`` gets what comes during ``current``, the running turn."""
        attachment = self.attachments.get(client)
        if attachment is None:
            return False
        return attachment.muted is None or attachment.muted is not current

    def deliver(self, items: list[tuple[int, bytes]], current: object = None) -> None:
        """Send committed ``(seq, line)`` items to every client, one write for the run, or
        hold them for a client whose replay is being written (``current``: the running turn,
        if any, for muted clients)."""
        data: bytes | None = None
        for peer, attachment in list(self.attachments.items()):
            if attachment.held is not None:
                attachment.held.extend(items)
            elif attachment.muted is not None:
                kept = attachment.unmuted(items, current)
                if kept:
                    peer.send_nowait(b"".join(line for _seq, line in kept))
            else:
                if data is None:
                    data = items[0][1] if len(items) == 1 else b"".join(i[1] for i in items)
                peer.send_nowait(data)

    def last_open(self, preferred: Peer | None = None) -> Peer | None:
        """``preferred`` if attached and open, else the open client attached last."""
        if preferred is not None and preferred in self.attachments and not preferred.closed:
            return preferred
        for peer in reversed(self.attachments):
            if not peer.closed:
                return peer
        return None

    async def replay(self, client: Peer, owner: object, upto: int, read: PageReader) -> None:
        """Attach ``client`` and send it the stored events up to ``upto``; live lines that
        come meanwhile are held for it (see :meth:`release_held`)."""
        attachment = self.add(client, owner)
        attachment.held, attachment.held_skip_upto = [], upto
        try:
            after = 0
            while after < upto:  # bounded: every page advances `after`, or the loop ends
                page = await read(after, upto, REPLAY_PAGE_EVENTS)
                if not page:
                    break
                client.send_nowait(b"".join(_UPDATE_LINE_PREFIX + p + b"}\n" for _s, p in page))
                after = page[-1][0]
        except BaseException:
            self.release_held(client)
            raise

    def release_held(self, client: Peer) -> None:
        """Send ``client`` the lines held during its replay or session set-up; go live."""
        attachment = self.attachments.get(client)
        if attachment is None or attachment.held is None:
            return
        held, attachment.held = attachment.held, None
        skip, attachment.held_skip_upto = attachment.held_skip_upto, 0
        if held:
            client.send_nowait(b"".join(line for seq, line in held if seq == 0 or seq > skip))

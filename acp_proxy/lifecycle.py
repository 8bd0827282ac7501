"""A conversation's lifecycle as data: states, events, one transition table. No I/O.

Theory of operation
-------------------
Modelled on h11's ``_state.py``: every legal move is one row of :data:`TRANSITIONS`, an
illegal one raises :class:`IllegalTransition` and leaves the state as it was. The session's
owner task (``owner.py``) is the only code that moves a session between states that take
I/O (binding an agent, stopping it, deleting); moves that are a single synchronous step (a
prompt starting, its answer arriving, the agent's process ending) happen where the proxy learns
of them, with nothing awaited in between.

::

    UNBOUND ──bind──► BINDING ──bound──► LIVE ──prompt──► IN_TURN
       ▲                 │                 ▲ ◄──turn_ended──┘ │
       │            bind_failed            │                  │
       └─────────────────┘                 │                  │
       ▲                          retire (LIVE or IN_TURN) ───┤
       └──agent_gone── RETIRING ◄──────────┘                  │
       └──agent_gone──────────────────────────────────────────┘
    any state ──delete──► DELETED (terminal; late agent events are absorbed)

``live`` (an agent holds the conversation) and ``evictable`` (live and idle) are lookups, not
flags someone must remember to clear.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["TRANSITIONS", "Event", "IllegalTransition", "Lifecycle", "State"]


class State(enum.Enum):
    """Where a conversation is."""

    #: No agent process holds it: known from the store, bound again on first use.
    UNBOUND = "unbound"
    #: Its owner is taking an agent and binding the conversation to it (new or restore).
    BINDING = "binding"
    #: An agent process holds it and no prompt is running.
    LIVE = "live"
    #: A prompt is running on its agent.
    IN_TURN = "in_turn"
    #: Its agent is being stopped (evicted, closed, restarted for a new environment).
    RETIRING = "retiring"
    #: Deleted: nothing can bring it back.
    DELETED = "deleted"


class Event(enum.Enum):
    """What can happen to a conversation."""

    BIND = "bind"  #: the owner starts binding an agent
    BOUND = "bound"  #: the agent holds the conversation
    BIND_FAILED = "bind_failed"  #: no agent could be bound (its process is stopped)
    PROMPT = "prompt"  #: a prompt was forwarded to the agent
    TURN_ENDED = "turn_ended"  #: the prompt's answer arrived (or can no longer come)
    RETIRE = "retire"  #: the owner stops the agent
    AGENT_GONE = "agent_gone"  #: the agent process ended
    DELETE = "delete"  #: the conversation is deleted


_S, _E = State, Event

#: ``(state, event) → next state``: every legal move, and nothing else.
TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (_S.UNBOUND, _E.BIND): _S.BINDING,
    (_S.BINDING, _E.BOUND): _S.LIVE,
    (_S.BINDING, _E.BIND_FAILED): _S.UNBOUND,
    # The process being bound ended: the bind itself fails right after (its call errs).
    (_S.BINDING, _E.AGENT_GONE): _S.BINDING,
    (_S.LIVE, _E.PROMPT): _S.IN_TURN,
    (_S.IN_TURN, _E.TURN_ENDED): _S.LIVE,
    (_S.LIVE, _E.RETIRE): _S.RETIRING,
    (_S.IN_TURN, _E.RETIRE): _S.RETIRING,
    (_S.LIVE, _E.AGENT_GONE): _S.UNBOUND,
    (_S.IN_TURN, _E.AGENT_GONE): _S.UNBOUND,
    (_S.RETIRING, _E.AGENT_GONE): _S.UNBOUND,
    # A turn's answer that arrives while its agent is being stopped is still delivered.
    (_S.RETIRING, _E.TURN_ENDED): _S.RETIRING,
    (_S.UNBOUND, _E.TURN_ENDED): _S.UNBOUND,
    **{(state, _E.DELETE): _S.DELETED for state in State},
    # What a deleted conversation's agent still says is absorbed, never acted on.
    (_S.DELETED, _E.AGENT_GONE): _S.DELETED,
    (_S.DELETED, _E.TURN_ENDED): _S.DELETED,
}

_LIVE: Final = frozenset({State.LIVE, State.IN_TURN})


class IllegalTransition(Exception):
    """An event that is not legal in the current state (a bug in the caller)."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"event {event.value!r} is not legal in state {state.value!r}")
        self.state = state
        self.event = event


class Lifecycle:
    """One conversation's state."""

    __slots__ = ("state",)

    def __init__(self, state: State = State.UNBOUND) -> None:
        self.state = state

    def handle(self, event: Event) -> State:
        """Apply ``event``; returns the new state.

        Raises:
            IllegalTransition: the event is not legal now; the state is unchanged.
        """
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise IllegalTransition(self.state, event) from None
        return self.state

    def allows(self, event: Event) -> bool:
        """Whether ``event`` is legal now."""
        return (self.state, event) in TRANSITIONS

    @property
    def live(self) -> bool:
        """An agent process holds the conversation (with or without a turn)."""
        return self.state in _LIVE

    @property
    def in_turn(self) -> bool:
        """A prompt is running."""
        return self.state is State.IN_TURN

    @property
    def deleted(self) -> bool:
        """Deleted for good."""
        return self.state is State.DELETED

    def __repr__(self) -> str:
        return f"Lifecycle({self.state.value})"

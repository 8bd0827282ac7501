"""The session lifecycle: one table, illegal moves refused with the state unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acp_proxy.lifecycle import TRANSITIONS, Event, IllegalTransition, Lifecycle, State


class TestTransitions:
    def test_a_conversation_goes_round(self) -> None:
        """new → bound → turn → idle → retired → gone → restored → deleted."""
        life = Lifecycle()
        for event, state in [
            (Event.BIND, State.BINDING),
            (Event.BOUND, State.LIVE),
            (Event.PROMPT, State.IN_TURN),
            (Event.TURN_ENDED, State.LIVE),
            (Event.RETIRE, State.RETIRING),
            (Event.AGENT_GONE, State.UNBOUND),
            (Event.BIND, State.BINDING),
            (Event.BOUND, State.LIVE),
            (Event.DELETE, State.DELETED),
        ]:
            assert life.handle(event) is state

    @pytest.mark.parametrize("state", list(State))
    @pytest.mark.parametrize("event", list(Event))
    def test_every_pair_is_in_the_table_or_refused_unchanged(
        self, state: State, event: Event
    ) -> None:
        """A move not in the table raises and leaves the state as it was (h11's rule)."""
        life = Lifecycle(state)
        if (state, event) in TRANSITIONS:
            assert life.handle(event) is TRANSITIONS[state, event]
        else:
            with pytest.raises(IllegalTransition):
                life.handle(event)
            assert life.state is state

    def test_live_is_a_lookup(self) -> None:
        """Only LIVE and IN_TURN are live; nothing else can claim to be."""
        assert {s for s in State if Lifecycle(s).live} == {State.LIVE, State.IN_TURN}

    def test_deleted_is_terminal(self) -> None:
        """Nothing brings a deleted conversation back; late agent events are absorbed."""
        life = Lifecycle(State.DELETED)
        for event in (Event.BIND, Event.PROMPT, Event.BOUND, Event.RETIRE):
            with pytest.raises(IllegalTransition):
                life.handle(event)
        assert life.handle(Event.AGENT_GONE) is State.DELETED
        assert life.handle(Event.TURN_ENDED) is State.DELETED

    def test_a_prompt_needs_an_idle_live_agent(self) -> None:
        """No prompt while unbound, binding, in a turn or retiring."""
        for state in (State.UNBOUND, State.BINDING, State.IN_TURN, State.RETIRING):
            assert not Lifecycle(state).allows(Event.PROMPT)


@given(st.lists(st.sampled_from(list(Event)), max_size=60))
def test_any_sequence_stays_in_the_table(events: list[Event]) -> None:
    """Whatever happens, the state is always one the table reaches, and never half-bound:
    BINDING is left only by BOUND, BIND_FAILED or DELETE."""
    life = Lifecycle()
    for event in events:
        before = life.state
        if life.allows(event):
            after = life.handle(event)
            assert after is TRANSITIONS[before, event]
            if before is State.BINDING and after is not State.BINDING:
                assert event in (Event.BOUND, Event.BIND_FAILED, Event.DELETE)
        else:
            with pytest.raises(IllegalTransition):
                life.handle(event)
            assert life.state is before

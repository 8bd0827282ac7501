"""Folding a ``session/update`` stream: :mod:`acp_proxy.transcript` (pure, property-based).

The strategies below generate realistic ACP update streams (messages streamed in chunks, tool
calls and their updates, plans, session state, unknown kinds, ``_meta`` everywhere); the
integration test ``tests/integration/test_replay_property.py`` reuses them.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from acp_proxy.transcript import CONVERSATION_KINDS, SEED_HEADER, coalesce, fold, seed_block

# No example database: keep the tests free of file I/O.
SETTINGS = settings(max_examples=500, deadline=None, database=None)

CHUNK_KINDS = ("user_message_chunk", "agent_message_chunk", "agent_thought_chunk")
STATE_KINDS = (
    "available_commands_update",
    "current_mode_update",
    "usage_update",
    "session_info_update",
)
UNKNOWN_KINDS = ("compaction_update", "x_custom", "_vendor.example/event")
TOOL_CALL_IDS = ("call_1", "call_2", "call_3")
#: Ids of tool calls the stream never announces (a tool_call_update for them is kept as is).
UNKNOWN_TOOL_CALL_IDS = ("call_9",)
_ABSENT = object()

# --- strategies --------------------------------------------------------------------------------

#: Message text: short, with a few awkward characters (newlines, non-BMP, U+2028, NUL).
texts = st.text(max_size=6) | st.sampled_from(["hello", " world", "\n", "é🚀", "a\u2028b", "\x00"])
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
#: Object keys, including ones with a meaning elsewhere in ACP (they must not be interpreted).
json_keys = (
    st.sampled_from(["type", "text", "content", "messageId", "toolCallId", "sessionId", "_meta"])
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=3)
metas = st.dictionaries(
    st.sampled_from(["acp-proxy", "x.example/trace", "claudeCode"]) | texts,
    json_values,
    max_size=3,
)

plain_text_blocks = st.fixed_dictionaries({"type": st.just("text"), "text": texts})
rich_text_blocks = st.fixed_dictionaries(
    {"type": st.just("text"), "text": texts},
    optional={"annotations": st.just({"audience": ["user"], "priority": 1}), "_meta": metas},
)
image_blocks = st.fixed_dictionaries(
    {
        "type": st.just("image"),
        "data": st.sampled_from(["iVBORw0KGgo=", "R0lGODlh"]),
        "mimeType": st.sampled_from(["image/png", "image/gif"]),
    }
)
resource_link_blocks = st.fixed_dictionaries(
    {
        "type": st.just("resource_link"),
        "uri": st.sampled_from(["file:///tmp/a.py", "https://example.com/x"]),
        "name": texts,
    },
    optional={"mimeType": st.just("text/x-python"), "_meta": metas},
)
#: Mostly plain text, as agents stream it; sometimes anything else a content block can be.
content_blocks = st.one_of(
    plain_text_blocks,
    plain_text_blocks,
    plain_text_blocks,
    plain_text_blocks,
    rich_text_blocks,
    image_blocks,
    resource_link_blocks,
)
#: A chunk's messageId: absent (older agents), null, or one of a few ids.
message_ids = st.sampled_from([_ABSENT, _ABSENT, None, "msg_1", "msg_2"])


@st.composite
def chunks(draw: st.DrawFn, kind: str, message_id: Any) -> dict[str, Any]:
    """One ``*_chunk`` update of ``kind`` (``_ABSENT``: no messageId key)."""
    update: dict[str, Any] = {"sessionUpdate": kind}
    if message_id is not _ABSENT:
        update["messageId"] = message_id
    update["content"] = draw(content_blocks)
    extra = draw(st.sampled_from([None, None, None, None, "_meta", "x_extra"]))
    if extra == "_meta":
        update["_meta"] = draw(metas)
    elif extra == "x_extra":
        update["x_extra"] = draw(json_values)
    return update


#: One message streamed as 1..4 chunks of one kind and messageId.
messages = st.tuples(st.sampled_from(CHUNK_KINDS), message_ids).flatmap(
    lambda km: st.lists(chunks(*km), min_size=1, max_size=4)
)
tool_statuses = st.sampled_from(["pending", "in_progress", "completed", "failed"])
tool_contents = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.just("content"), "content": content_blocks}),
        st.fixed_dictionaries(
            {
                "type": st.just("diff"),
                "path": st.sampled_from(["/tmp/a.py", "/tmp/b.md"]),
                "oldText": st.none() | texts,
                "newText": texts,
            }
        ),
        st.fixed_dictionaries({"type": st.just("terminal"), "terminalId": st.just("term_1")}),
    ),
    max_size=2,
)
locations = st.lists(
    st.fixed_dictionaries(
        {"path": st.sampled_from(["/tmp/a.py", "/tmp/b.md"])},
        optional={"line": st.integers(min_value=0, max_value=500)},
    ),
    max_size=2,
)
#: Fields a tool call has, and a tool_call_update may change (any subset).
tool_fields = {
    "title": texts,
    "kind": st.sampled_from(["read", "edit", "execute", "search", "other"]),
    "status": tool_statuses,
    "rawInput": json_objects,
    "rawOutput": json_objects,
    "content": tool_contents,
    "locations": locations,
    "_meta": metas,
}
tool_calls = st.fixed_dictionaries(
    {
        "sessionUpdate": st.just("tool_call"),
        "toolCallId": st.sampled_from(TOOL_CALL_IDS),
        "title": texts,
    },
    optional={k: v for k, v in tool_fields.items() if k not in ("title", "rawOutput")},
)
tool_call_updates = st.fixed_dictionaries(
    {
        "sessionUpdate": st.just("tool_call_update"),
        "toolCallId": st.sampled_from(TOOL_CALL_IDS + UNKNOWN_TOOL_CALL_IDS),
    },
    optional=tool_fields,
)
plans = st.fixed_dictionaries(
    {
        "sessionUpdate": st.just("plan"),
        "entries": st.lists(
            st.fixed_dictionaries(
                {
                    "content": texts,
                    "priority": st.sampled_from(["high", "medium", "low"]),
                    "status": st.sampled_from(["pending", "in_progress", "completed"]),
                }
            ),
            max_size=3,
        ),
    },
    optional={"_meta": metas},
)
state_updates = st.one_of(
    st.fixed_dictionaries(
        {
            "sessionUpdate": st.just("available_commands_update"),
            "availableCommands": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["init", "review"]), "description": texts},
                    optional={"input": st.just({"hint": "what to review"})},
                ),
                max_size=2,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "sessionUpdate": st.just("current_mode_update"),
            "currentModeId": st.sampled_from(["build", "plan"]),
        }
    ),
    st.fixed_dictionaries(
        {
            "sessionUpdate": st.just("usage_update"),
            "used": st.integers(min_value=0, max_value=200_000),
            "size": st.integers(min_value=0, max_value=200_000),
        },
        optional={"cost": st.just({"amount": 0.25, "currency": "USD"})},
    ),
    st.fixed_dictionaries(
        {"sessionUpdate": st.just("session_info_update"), "title": st.none() | texts},
        optional={"updatedAt": st.just("2025-01-01T00:00:00Z"), "_meta": metas},
    ),
)


@st.composite
def unknown_updates(draw: st.DrawFn) -> dict[str, Any]:
    """An update of a kind this proxy does not know, with arbitrary fields."""
    update: dict[str, Any] = {"sessionUpdate": draw(st.sampled_from(UNKNOWN_KINDS))}
    for key, value in draw(json_objects).items():
        if key != "sessionUpdate":
            update[key] = value
    return update


#: Any update but a message chunk.
other_updates = st.one_of(tool_calls, tool_call_updates, plans, state_updates, unknown_updates())


def streams(max_segments: int = 12) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A ``session/update`` stream: messages (runs of chunks) and other updates, interleaved."""
    segments = messages | other_updates.map(lambda update: [update])
    return st.lists(segments, max_size=max_segments).map(
        lambda parts: [update for part in parts for update in part]
    )


# --- helpers -----------------------------------------------------------------------------------


def enc(value: Any) -> str:
    """JSON text, key order included (so "unchanged" means same keys, order and values)."""
    return json.dumps(value, ensure_ascii=False)


def is_plain_chunk(update: dict[str, Any]) -> bool:
    """A chunk a folding client joins: only kind, messageId and a bare text block."""
    content = update.get("content")
    return (
        update.get("sessionUpdate") in CHUNK_KINDS
        and set(update) <= {"sessionUpdate", "messageId", "content"}
        and isinstance(content, dict)
        and set(content) == {"type", "text"}
        and content["type"] == "text"
    )


def kept_verbatim(update: dict[str, Any]) -> bool:
    """Updates coalesce must leave exactly as they are, in place: state, unknown, rich chunks."""
    kind = update.get("sessionUpdate")
    return kind not in CONVERSATION_KINDS or (kind in CHUNK_KINDS and not is_plain_chunk(update))


def orphan_updates(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """tool_call_updates whose toolCallId no earlier tool_call announced."""
    known: set[Any] = set()
    orphans = []
    for update in stream:
        if update.get("sessionUpdate") == "tool_call":
            known.add(update.get("toolCallId"))
        elif update.get("sessionUpdate") == "tool_call_update" and (
            update.get("toolCallId") not in known
        ):
            orphans.append(update)
    return orphans


def all_metas(value: Any) -> list[Any]:
    """Every ``_meta`` value inside ``value`` (dicts, lists, tuples, fold's text items)."""
    found: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "_meta":
                found.append(item)
            found.extend(all_metas(item))
    elif isinstance(value, list | tuple):
        for item in value:
            found.extend(all_metas(item))
    return found


# --- properties --------------------------------------------------------------------------------


@SETTINGS
@given(streams())
def test_coalesced_stream_folds_to_the_same_transcript(stream: list[dict[str, Any]]) -> None:
    """What a folding client shows is the same for the raw and the coalesced stream."""
    assert fold(coalesce(stream)) == fold(stream)


@SETTINGS
@given(streams())
def test_coalesce_is_idempotent_and_never_lengthens(stream: list[dict[str, Any]]) -> None:
    """Coalescing twice changes nothing more; a coalesced stream is never longer."""
    once = coalesce(stream)
    assert enc(coalesce(once)) == enc(once)
    assert len(once) <= len(stream)


@SETTINGS
@given(streams(), st.booleans())
def test_nothing_mutates_its_input(stream: list[dict[str, Any]], thoughts: bool) -> None:
    """coalesce, fold and seed_block leave the caller's updates alone (deep copies inside)."""
    before = enc(stream)
    coalesce(stream)
    fold(stream)
    seed_block("sess_1", stream, include_thoughts=thoughts)
    assert enc(stream) == before
    # Nor does the caller's later use of the result reach back into the input.
    for update in coalesce(stream):
        update.clear()
    assert enc(stream) == before


@SETTINGS
@given(streams())
def test_unknown_kinds_and_meta_pass_through_unchanged(stream: list[dict[str, Any]]) -> None:
    """Unknown and state kinds, rich chunks and orphan tool updates are kept verbatim, in order.

    Every ``_meta`` a folding client still holds is in the output as it was: all of them except
    those of plans a later plan replaced and of tool-call fields a later update replaced (a
    client drops those too).
    """
    out = coalesce(stream)
    assert [enc(u) for u in out if kept_verbatim(u)] == [enc(u) for u in stream if kept_verbatim(u)]
    unknown = [u for u in stream if u.get("sessionUpdate") not in CONVERSATION_KINDS]
    assert [enc(u) for u in out if u.get("sessionUpdate") not in CONVERSATION_KINDS] == [
        enc(u) for u in unknown
    ]
    assert [enc(u) for u in out if u.get("sessionUpdate") == "tool_call_update"] == [
        enc(u) for u in orphan_updates(stream)
    ]
    plans_in = [u for u in stream if u.get("sessionUpdate") == "plan"]
    assert [enc(u) for u in out if u.get("sessionUpdate") == "plan"] == [
        enc(u) for u in plans_in[-1:]
    ]
    assert Counter(map(enc, all_metas(out))) == Counter(map(enc, all_metas(fold(stream))))
    # Every _meta outside plans and announced tool calls survives, each one.
    tools = ("plan", "tool_call", "tool_call_update")
    rest = [u for u in stream if u.get("sessionUpdate") not in tools] + orphan_updates(stream)
    assert Counter(map(enc, all_metas(rest))) <= Counter(map(enc, all_metas(out)))


@SETTINGS
@given(streams(), st.booleans(), st.sampled_from(["sess_1", "0123456789abcdef"]))
def test_seed_block_is_the_coalesced_conversation(
    stream: list[dict[str, Any]], include_thoughts: bool, session_id: str
) -> None:
    """None without conversation updates; else header, instructions, JSON lines, closing tag."""
    wanted = CONVERSATION_KINDS - (set() if include_thoughts else {"agent_thought_chunk"})
    conversation = [u for u in stream if u.get("sessionUpdate") in wanted]
    block = seed_block(session_id, stream, include_thoughts=include_thoughts)
    if not conversation:
        assert block is None
        return
    assert block is not None
    assert set(block) == {"type", "text"} and block["type"] == "text"
    expected = coalesce(conversation)
    lines = block["text"].split("\n")
    assert lines[0] == (
        f'{SEED_HEADER} version="1" session="{session_id}" updates="{len(expected)}">'
    )
    assert lines[1] and not lines[1].startswith("{")
    assert lines[-1] == "</acp-proxy:history>"
    assert [enc(json.loads(line)) for line in lines[2:-1]] == [enc(u) for u in expected]


# --- the folding rules, one example each -------------------------------------------------------


def chunk(kind: str, text: str, message_id: Any = _ABSENT, **extra: Any) -> dict[str, Any]:
    update: dict[str, Any] = {"sessionUpdate": kind}
    if message_id is not _ABSENT:
        update["messageId"] = message_id
    update["content"] = {"type": "text", "text": text}
    return {**update, **extra}


AGENT, USER, THOUGHT = CHUNK_KINDS[1], CHUNK_KINDS[0], CHUNK_KINDS[2]


def test_chunks_join_only_within_one_kind_and_message_id() -> None:
    stream = [
        chunk(AGENT, "Hel", "m1"),
        chunk(AGENT, "lo", "m1"),
        chunk(AGENT, "!", "m2"),  # another message
        chunk(THOUGHT, "hmm", "m2"),  # another kind
        chunk(THOUGHT, "...", "m2"),
        chunk(USER, "a"),  # no messageId: joins with no messageId ...
        chunk(USER, "b", None),  # ... and with an explicit null (both read as "no id")
        chunk(USER, "c", "m3"),
    ]
    assert coalesce(stream) == [
        chunk(AGENT, "Hello", "m1"),
        chunk(AGENT, "!", "m2"),
        chunk(THOUGHT, "hmm...", "m2"),
        chunk(USER, "ab"),
        chunk(USER, "c", "m3"),
    ]


def test_only_plain_text_chunks_join() -> None:
    """A chunk with anything besides a bare text block is kept as it is and splits the text."""
    meta = chunk(AGENT, "b", "m1", _meta={"x": 1})
    annotated = {"sessionUpdate": AGENT, "messageId": "m1", "content": {**meta["content"], "z": 0}}
    image = {"sessionUpdate": AGENT, "messageId": "m1", "content": {"type": "image", "data": "x"}}
    stream = [chunk(AGENT, "a", "m1"), meta, chunk(AGENT, "c", "m1"), annotated, image]
    stream += [chunk(AGENT, "d", "m1"), chunk(AGENT, "e", "m1")]
    assert coalesce(stream) == [*stream[:5], chunk(AGENT, "de", "m1")]


def test_tool_call_update_patches_the_call_in_place() -> None:
    """Only the fields sent change; content and locations are replaced, not appended to."""
    call = {
        "sessionUpdate": "tool_call",
        "toolCallId": "t1",
        "title": "Read a.py",
        "status": "pending",
        "content": [{"type": "content", "content": {"type": "text", "text": "old"}}],
        "locations": [{"path": "/a.py"}],
    }
    new_content = [{"type": "content", "content": {"type": "text", "text": "new"}}]
    stream = [
        call,
        chunk(AGENT, "reading", "m1"),
        {"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "in_progress"},
        chunk(AGENT, "...", "m1"),  # the update did not split the message
        {
            "sessionUpdate": "tool_call_update",
            "toolCallId": "t1",
            "status": "completed",
            "content": new_content,
            "locations": [],
            "rawOutput": {"ok": True},
        },
    ]
    patched = {
        **call,
        "status": "completed",
        "content": new_content,
        "locations": [],
        "rawOutput": {"ok": True},
    }
    assert coalesce(stream) == [patched, chunk(AGENT, "reading...", "m1")]
    assert fold(stream) == fold(coalesce(stream))


def test_only_the_last_plan_is_kept_where_it_was_sent() -> None:
    def plan(step: str) -> dict[str, Any]:
        entry = {"content": step, "priority": "high", "status": "pending"}
        return {"sessionUpdate": "plan", "entries": [entry]}

    stream = [
        plan("one"),
        chunk(AGENT, "a", "m1"),
        plan("two"),  # does not split the message (a client shows the plan apart)
        chunk(AGENT, "b", "m1"),
        chunk(USER, "next"),
    ]
    assert coalesce(stream) == [chunk(AGENT, "ab", "m1"), plan("two"), chunk(USER, "next")]
    assert fold(stream)[-1] == ("plan", plan("two"))


def test_update_for_an_unknown_tool_call_keeps_its_update() -> None:
    """No tool_call announced the id (yet): the update stays, and a later call does not eat it."""
    orphan = {"sessionUpdate": "tool_call_update", "toolCallId": "t9", "status": "failed"}
    call = {"sessionUpdate": "tool_call", "toolCallId": "t9", "title": "late"}
    assert coalesce([orphan, call]) == [orphan, call]


def test_state_and_unknown_kinds_stay_in_place_and_split_messages() -> None:
    custom = {"sessionUpdate": "x_custom", "content": {"type": "text", "text": "x"}, "_meta": {}}
    mode = {"sessionUpdate": "current_mode_update", "currentModeId": "plan"}
    malformed = {"content": {"type": "text", "text": "no kind"}}
    stream = [chunk(AGENT, "a"), custom, chunk(AGENT, "b"), mode, malformed, chunk(AGENT, "c")]
    assert coalesce(stream) == stream
    assert coalesce([]) == []


def test_seed_block_format() -> None:
    stream = [
        {"sessionUpdate": "available_commands_update", "availableCommands": []},
        chunk(USER, "hi ", None),
        chunk(USER, "there", None),
        chunk(THOUGHT, "thinking", "m1"),
        chunk(AGENT, "Hello", "m2"),
        {"sessionUpdate": "usage_update", "used": 1, "size": 2},
    ]
    block = seed_block("s1", stream)
    assert block == {
        "type": "text",
        "text": "\n".join(
            [
                '<acp-proxy:history version="1" session="s1" updates="2">',
                "The conversation so far, restored by acp-proxy into a new agent session: one "
                "recorded ACP session/update per line, in order. Continue it; the user's new "
                "message follows.",
                '{"sessionUpdate":"user_message_chunk","messageId":null,'
                '"content":{"type":"text","text":"hi there"}}',
                '{"sessionUpdate":"agent_message_chunk","messageId":"m2",'
                '"content":{"type":"text","text":"Hello"}}',
                "</acp-proxy:history>",
            ]
        ),
    }
    with_thoughts = seed_block("s1", stream, include_thoughts=True)
    assert with_thoughts is not None and '"thinking"' in with_thoughts["text"]
    assert seed_block("s1", [stream[0], stream[3], stream[5]]) is None
    assert seed_block("s1", []) is None


def test_untrusted_shapes_do_not_crash_folding() -> None:
    """Unhashable tool call ids and non-object updates (a recorded stream is untrusted input)
    are kept as they are instead of raising."""
    stream: list[Any] = [
        {"sessionUpdate": "tool_call", "toolCallId": {"a": 1}, "title": "x"},
        {"sessionUpdate": "tool_call_update", "toolCallId": {"a": 1}, "status": "completed"},
        "oops",
        5,
    ]
    out = coalesce(stream)
    assert out == [
        {"sessionUpdate": "tool_call", "toolCallId": {"a": 1}, "title": "x", "status": "completed"},
        "oops",
        5,
    ]
    assert fold(out) == fold(stream)


def test_seed_keeps_each_update_on_one_line_whatever_the_text() -> None:
    """U+2028, U+2029 and U+0085 are escaped, so every splitter sees one update per line."""
    text = "a\u2028b\u2029c\u0085d\ne"
    block = seed_block(
        "s", [{"sessionUpdate": "user_message_chunk", "content": {"type": "text", "text": text}}]
    )
    assert block is not None
    lines = block["text"].splitlines()
    assert len(lines) == 4
    assert json.loads(lines[2])["content"]["text"] == text

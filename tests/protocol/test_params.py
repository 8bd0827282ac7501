"""Unit tests of payload field access: object_members, get_str, rewrite_members, update_kind."""

from __future__ import annotations

import json

import pytest
from msgspec import Raw

from acp_proxy.protocol import (
    EMPTY,
    INVALID_PARAMS,
    RemoteProtocolError,
    get_str,
    object_members,
    rewrite_members,
    update_kind,
)

#: A params object whose nested member has odd spacing, escapes and key order.
NESTED = b'{"z" :  [1,2 ,3], "a":{ }, "u":"\\u00e9", "big":123456789012345678901234567890}'
PARAMS = b'{"sessionId":"old","payload": ' + NESTED + b' ,"n":1}'


def members_of(**raw: bytes) -> dict[str, Raw]:
    """A members dict built from raw JSON bytes."""
    return {key: Raw(value) for key, value in raw.items()}


# --- object_members ----------------------------------------------------------------------------


def test_object_members_splits_top_level_only() -> None:
    """Each top-level member comes back as its own raw bytes; nesting is not decoded."""
    members = object_members(PARAMS)
    assert list(members) == ["sessionId", "payload", "n"]
    assert bytes(members["sessionId"]) == b'"old"'
    assert bytes(members["payload"]) == NESTED
    assert bytes(members["n"]) == b"1"


def test_object_members_accepts_raw() -> None:
    """A Raw argument is read like bytes."""
    assert object_members(Raw(b'{"a":[1]}')) == {"a": Raw(b"[1]")}


@pytest.mark.parametrize("empty", [EMPTY, b"", Raw(b"")])
def test_object_members_of_absent_params_is_empty(empty: Raw | bytes) -> None:
    """Absent params (empty bytes) give an empty dict rather than an error."""
    assert object_members(empty) == {}


def test_object_members_of_empty_object() -> None:
    """An empty JSON object gives an empty dict."""
    assert object_members(b"{}") == {}


@pytest.mark.parametrize(
    "raw", [b"[]", b"[1]", b"1", b'"s"', b"null", b"true", b"{", b"not json", b'{"a":1} x']
)
def test_object_members_of_non_object_raises(raw: bytes) -> None:
    """Anything but one JSON object raises RemoteProtocolError -32602."""
    with pytest.raises(RemoteProtocolError) as info:
        object_members(raw)
    assert info.value.code == INVALID_PARAMS
    assert info.value.message.startswith("Invalid params")


# --- get_str -----------------------------------------------------------------------------------


def test_get_str_reads_a_string_member() -> None:
    """A string member is returned decoded, escapes resolved."""
    members = members_of(s=b'"a\\"b\\u00e9\\n"', plain=b'"x"')
    assert get_str(members, "s") == 'a"bé\n'
    assert get_str(members, "plain") == "x"


def test_get_str_keeps_the_empty_string() -> None:
    """An empty string member is returned as "", not as None."""
    assert get_str(members_of(s=b'""'), "s") == ""


@pytest.mark.parametrize("raw", [b"null", b"1", b"1.5", b"true", b"[]", b'["x"]', b'{"s":"x"}'])
def test_get_str_of_non_string_is_none(raw: bytes) -> None:
    """A null or non-string member reads as None."""
    assert get_str(members_of(s=raw), "s") is None


def test_get_str_of_absent_member_is_none() -> None:
    """A missing member reads as None."""
    assert get_str(members_of(other=b'"x"'), "s") is None
    assert get_str({}, "s") is None


def test_get_str_of_decoded_params() -> None:
    """get_str works on the members object_members returns."""
    members = object_members(PARAMS)
    assert get_str(members, "sessionId") == "old"
    assert get_str(members, "payload") is None


# --- rewrite_members ---------------------------------------------------------------------------


def test_rewrite_replaces_one_member_leaving_others_byte_identical() -> None:
    """Replacing one member keeps its position and copies every other member's bytes as is."""
    out = rewrite_members(object_members(PARAMS), sessionId="new")
    assert out == b'{"sessionId":"new","payload":' + NESTED + b',"n":1}'
    assert bytes(object_members(out)["payload"]) == NESTED


def test_rewrite_adds_a_new_member_at_the_end() -> None:
    """A member that was not there is appended after the existing ones."""
    out = rewrite_members(members_of(a=b"1"), sessionId="s")
    assert out == b'{"a":1,"sessionId":"s"}'


def test_rewrite_none_removes_a_member() -> None:
    """A change of None removes that member."""
    out = rewrite_members(object_members(PARAMS), sessionId=None)
    assert out == b'{"payload":' + NESTED + b',"n":1}'


def test_rewrite_none_of_absent_member_is_a_no_op() -> None:
    """Removing a member that is not there changes nothing."""
    assert rewrite_members(members_of(a=b"1"), gone=None) == b'{"a":1}'


def test_rewrite_embeds_raw_values_verbatim() -> None:
    """A Raw change is embedded byte for byte, not re-encoded."""
    raw = Raw(b'{ "k" : [1 , 2], "j":"\\u00e9" }')
    out = rewrite_members(members_of(a=b"1"), a=raw)
    assert out == b'{"a":' + bytes(raw) + b"}"


def test_rewrite_raw_null_sets_json_null() -> None:
    """Raw(b"null") writes a JSON null, unlike None which removes the member."""
    assert rewrite_members(members_of(a=b"1"), a=Raw(b"null")) == b'{"a":null}'


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (False, b"false"),
        (0, b"0"),
        ("", b'""'),
        ([1, "x"], b'[1,"x"]'),
        ({"k": None}, b'{"k":null}'),
        ("é🚀", '"é🚀"'.encode()),
        (2**64, b"18446744073709551616"),
    ],
)
def test_rewrite_encodes_plain_values(value: object, encoded: bytes) -> None:
    """Non-Raw values are JSON-encoded; falsy values other than None are kept."""
    assert rewrite_members({}, v=value) == b'{"v":' + encoded + b"}"


def test_rewrite_several_changes_at_once() -> None:
    """Several changes apply together: replace, remove and add."""
    out = rewrite_members(members_of(a=b"1", b=b"2", c=b"3"), a="x", b=None, d=4)
    assert out == b'{"a":"x","c":3,"d":4}'


def test_rewrite_without_changes_reencodes_only_the_outer_object() -> None:
    """With no changes the outer object is compacted and each member is copied unchanged."""
    assert rewrite_members(object_members(PARAMS)) == (
        b'{"sessionId":"old","payload":' + NESTED + b',"n":1}'
    )


def test_rewrite_does_not_mutate_its_input() -> None:
    """The members dict passed in is left unchanged."""
    members = members_of(a=b"1", b=b"2")
    rewrite_members(members, a="x", b=None)
    assert members == members_of(a=b"1", b=b"2")


def test_rewrite_output_is_valid_json() -> None:
    """The rewritten bytes parse as the expected JSON object."""
    out = rewrite_members(object_members(PARAMS), sessionId="é")
    assert json.loads(out) == {
        "sessionId": "é",
        "payload": json.loads(NESTED),
        "n": 1,
    }


# --- update_kind -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["agent_message_chunk", "user_message_chunk", "tool_call", "tool_call_update", "plan"],
)
def test_update_kind_known(kind: str) -> None:
    """The sessionUpdate discriminator of a known update kind is returned."""
    update = b'{"sessionUpdate":"' + kind.encode() + b'","content":{"type":"text","text":"hi"}}'
    assert update_kind(update) == kind


def test_update_kind_unknown_is_returned_as_is() -> None:
    """An update kind the proxy does not know is still reported, not rejected."""
    assert update_kind(b'{"content":[],"sessionUpdate":"future_kind_v9"}') == "future_kind_v9"


def test_update_kind_accepts_raw() -> None:
    """A Raw update is read like bytes."""
    assert update_kind(Raw(b'{"sessionUpdate":"plan"}')) == "plan"


@pytest.mark.parametrize(
    "update",
    [
        b"{}",
        b'{"content":{}}',
        b'{"sessionUpdate":null}',
        b'{"sessionUpdate":1}',
        b'{"sessionUpdate":["plan"]}',
        b"[]",
        b'"plan"',
        b"null",
        b"{",
        b"",
        EMPTY,
    ],
)
def test_update_kind_malformed_is_empty(update: Raw | bytes) -> None:
    """An absent, non-string or unparseable discriminator reads as ""."""
    assert update_kind(update) == ""


# --- malformed input in payload fields ---------------------------------------------------------


def test_object_members_invalid_utf8_key_raises_invalid_params() -> None:
    """Params with an invalid UTF-8 key raise RemoteProtocolError -32602."""
    with pytest.raises(RemoteProtocolError):
        object_members(b'{"\xff":1}')


def test_get_str_invalid_utf8_is_none() -> None:
    """A string member with invalid UTF-8 reads as None."""
    assert get_str(members_of(s=b'"\xff"'), "s") is None


def test_update_kind_invalid_utf8_is_empty() -> None:
    """A discriminator with invalid UTF-8 reads as ""."""
    assert update_kind(b'{"sessionUpdate":"\xff"}') == ""


def test_object_members_deeply_nested_member_raises_invalid_params() -> None:
    """A member nested deeper than msgspec can skip raises RemoteProtocolError, not a crash."""
    with pytest.raises(RemoteProtocolError):
        object_members(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")

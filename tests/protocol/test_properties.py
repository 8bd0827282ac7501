"""Property-based (Hypothesis) tests of the protocol core: decoding, round trips, framing."""

from __future__ import annotations

import itertools
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st
from msgspec import Raw

from acp_proxy.protocol import (
    OVERSIZE,
    ErrorResponse,
    LineBuffer,
    Notification,
    Oversize,
    RemoteProtocolError,
    Request,
    RequestId,
    Response,
    decode_message,
    decode_update_line,
    decode_update_params,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    get_str,
    object_members,
    rewrite_members,
    update_kind,
)

# No example database: keep the tests free of file I/O.
SETTINGS = settings(max_examples=300, deadline=None, database=None)

# --- strategies --------------------------------------------------------------------------------

short_text = st.text(max_size=10)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text
)
#: Object keys: the ones the proxy rewrites, plus arbitrary text.
json_keys = st.sampled_from(["sessionId", "_meta", "content"]) | short_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=3),
    max_leaves=5,
)
json_objects = st.dictionaries(json_keys, json_values, max_size=5)
json_structured = json_objects | st.lists(json_values, max_size=5)
request_ids = st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1) | short_text
methods = short_text | st.sampled_from(["session/prompt", "session/update", "_x/é🚀"])


@st.composite
def json_bytes(draw: st.DrawFn, values: st.SearchStrategy[object]) -> bytes:
    """A JSON document for a value, in one of several spellings (never with a newline)."""
    value = draw(values)
    separators = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " :  "), ("\t,", ":")]))
    ensure_ascii = draw(st.booleans())
    return json.dumps(value, separators=separators, ensure_ascii=ensure_ascii).encode()


@st.composite
def valid_lines(draw: st.DrawFn) -> bytes:
    """An encoded, valid JSON-RPC message of any kind."""
    ident = draw(request_ids)
    kind = draw(st.sampled_from(["request", "notification", "response", "error"]))
    if kind == "request":
        return encode_request(ident, draw(methods), draw(json_bytes(json_structured)))
    if kind == "notification":
        return encode_notification(draw(methods), draw(json_bytes(json_structured)))
    if kind == "response":
        return encode_response(ident, draw(json_bytes(json_values)))
    return encode_error(ident, draw(st.integers(-(2**63), 2**63 - 1)), draw(st.text()))


@st.composite
def mangled_lines(draw: st.DrawFn, junk: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with a slice of its bytes replaced by ``junk`` (or cut out)."""
    line = draw(valid_lines())
    start = draw(st.integers(0, len(line)))
    end = draw(st.integers(start, len(line)))
    return line[:start] + draw(junk) + line[end:]


@st.composite
def mangled_utf8_lines(draw: st.DrawFn) -> bytes:
    """A valid message with a slice of its characters replaced by JSON-ish text."""
    line = draw(valid_lines()).decode()
    start = draw(st.integers(0, len(line)))
    end = draw(st.integers(start, len(line)))
    return (line[:start] + draw(utf8_junk) + line[end:]).encode()


utf8_junk = st.text(alphabet=st.sampled_from('{}[]":,0123456789.-eE \\nultrfaséé\u2028🚀'))
any_junk_bytes = st.binary(max_size=8)


def assert_decodes_or_rejects(line: bytes) -> None:
    """``line`` either decodes to a Message or raises RemoteProtocolError (with a known code)."""
    try:
        msg: object = decode_message(line)
    except RemoteProtocolError as exc:
        msg = exc
    if isinstance(msg, RemoteProtocolError):
        assert msg.code in (-32700, -32600)
        assert msg.data is None or isinstance(msg.data, int | str)
    else:
        assert isinstance(msg, Request | Notification | Response | ErrorResponse)


# --- (1) decode_message never fails in an unexpected way ---------------------------------------


@SETTINGS
@given(
    st.one_of(
        utf8_junk.map(str.encode),
        st.text().map(str.encode),
        json_bytes(json_values),
        valid_lines(),
        mangled_utf8_lines(),
    )
)
def test_decode_utf8_input_returns_message_or_remote_error(line: bytes) -> None:
    """Any well-formed UTF-8 input decodes to a Message or raises RemoteProtocolError."""
    assert_decodes_or_rejects(line)


@SETTINGS
@given(st.one_of(st.binary(), valid_lines(), mangled_lines(any_junk_bytes)))
@example(b'{"jsonrpc":"2.0","id":1,"method":"\xff"}')
def test_decode_any_bytes_returns_message_or_remote_error(line: bytes) -> None:
    """Any bytes at all decode to a Message or raise RemoteProtocolError, nothing else."""
    assert_decodes_or_rejects(line)


# --- (2) encode_* then decode_message is the identity ------------------------------------------


@SETTINGS
@given(request_ids, methods, st.none() | json_bytes(json_structured))
def test_request_round_trip(ident: RequestId, method: str, params: bytes | None) -> None:
    """encode_request then decode_message gives back the same id, method and params bytes."""
    out = encode_request(ident, method) if params is None else encode_request(ident, method, params)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert decode_message(out) == Request(ident, method, Raw(params or b""))


@SETTINGS
@given(methods, st.none() | json_bytes(json_structured))
def test_notification_round_trip(method: str, params: bytes | None) -> None:
    """encode_notification then decode_message gives back the same method and params bytes."""
    out = encode_notification(method) if params is None else encode_notification(method, params)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert decode_message(out) == Notification(method, Raw(params or b""))


@SETTINGS
@given(request_ids, json_bytes(json_values))
def test_response_round_trip(ident: RequestId, result: bytes) -> None:
    """encode_response then decode_message gives back the same id and result bytes."""
    out = encode_response(ident, result)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    assert decode_message(out) == Response(ident, Raw(result))


@SETTINGS
@given(request_ids, st.integers(-(2**63), 2**63 - 1), st.text(), json_values)
def test_error_round_trip(ident: RequestId, code: int, message: str, data: object) -> None:
    """encode_error then decode_message gives back the same id, code, message and data."""
    out = encode_error(ident, code, message, data)
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    msg = decode_message(out)
    assert isinstance(msg, ErrorResponse)
    assert (msg.id, msg.code, msg.message) == (ident, code, message)
    expected: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        expected["data"] = data
    assert json.loads(bytes(msg.error)) == expected


# --- (3) LineBuffer output does not depend on chunking -----------------------------------------


def feed_chunks(chunks: list[bytes], max_line_bytes: int) -> list[bytes | Oversize]:
    """Feed ``chunks`` to a fresh buffer (checking it stays bounded), then end the input."""
    buf = LineBuffer(max_line_bytes)
    out: list[bytes | Oversize] = []
    for chunk in chunks:
        if chunk:
            out.extend(buf.feed(chunk))
            # A pending CR may be half of a CRLF, so it does not count against the limit.
            assert buf.buffered <= max_line_bytes + 1
    out.extend(buf.feed(b""))
    return out


@st.composite
def framed_input(draw: st.DrawFn) -> tuple[list[bytes], bool, int, list[bytes]]:
    """Lines without LF, whether the last is terminated, a limit, and a chunking of the data."""
    limit = draw(st.integers(1, 12))
    line = st.binary(max_size=16) | st.text(alphabet=" \r\tab{}é", max_size=16).map(str.encode)
    line = line.map(lambda b: b.replace(b"\n", b""))
    lines = draw(st.lists(line, max_size=8))
    terminated = draw(st.booleans())
    data = b"\n".join(lines) + (b"\n" if terminated and lines else b"")
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    return lines, terminated, limit, chunks


@SETTINGS
@given(framed_input())
def test_line_buffer_is_chunking_independent(
    case: tuple[list[bytes], bool, int, list[bytes]],
) -> None:
    """Any chunking yields the same lines as one feed: the non-blank lines, CR-stripped."""
    lines, _terminated, limit, chunks = case
    data = b"".join(chunks)
    whole = feed_chunks([data], limit)
    assert feed_chunks(chunks, limit) == whole
    expected: list[bytes | Oversize] = []
    for line in lines:
        stripped = line.removesuffix(b"\r")
        if len(stripped) > limit:
            expected.append(OVERSIZE)
        elif stripped.strip():
            expected.append(stripped)
    assert whole == expected
    for item in whole:
        assert item is OVERSIZE or (isinstance(item, bytes) and len(item) <= limit)


# --- (4) rewrite_members only touches the rewritten member -------------------------------------


@SETTINGS
@given(json_bytes(json_objects), st.none() | short_text)
def test_rewrite_session_id_changes_only_that_member(params: bytes, session_id: str | None) -> None:
    """Rewriting sessionId yields the same object with only sessionId replaced (None: removed)."""
    members = object_members(params)
    out = rewrite_members(members, sessionId=session_id)
    expected = json.loads(params)
    if session_id is None:
        expected.pop("sessionId", None)
    else:
        expected["sessionId"] = session_id
    assert list(json.loads(out).items()) == list(expected.items())
    rewritten = object_members(out)
    assert get_str(rewritten, "sessionId") == session_id
    for key, raw in members.items():
        if key != "sessionId":
            assert bytes(rewritten[key]) == bytes(raw)


# --- the session/update fast path ---------------------------------------------------------------

update_kinds = st.sampled_from(["agent_message_chunk", "plan", "tool_call"]) | st.text(max_size=8)


@st.composite
def update_objects(draw: st.DrawFn) -> bytes:
    """An ACP update object's JSON, ``sessionUpdate`` first or not, any spelling of it."""
    kind = draw(update_kinds)
    rest = draw(st.dictionaries(json_keys, json_values, max_size=3))
    rest.pop("sessionUpdate", None)
    items = [("sessionUpdate", kind), *rest.items()]
    if draw(st.booleans()):
        items.reverse()
    if draw(st.booleans()):
        return json.dumps(dict(items), ensure_ascii=draw(st.booleans())).encode()
    return json.dumps(dict(items), separators=(",", ":"), ensure_ascii=False).encode()


@SETTINGS
@given(update_objects())
@example(b'{"sessionUpdate":"a\\"b"}')
@example(b'{"sessionUpdate":"\\u00e9t\\u00e9"}')
@example(b'{"sessionUpdate":""}')
def test_update_kind_fast_path_agrees_with_decoding(update: bytes) -> None:
    """Reading the kind from the bytes gives what decoding gives, for valid JSON."""
    assert update_kind(update, validated=True) == update_kind(update)


@st.composite
def update_lines(draw: st.DrawFn) -> bytes:
    """A ``session/update`` line, usually in the agents' shape, sometimes not."""
    params: dict[str, object] = {
        "sessionId": draw(short_text),
        "update": json.loads(draw(update_objects())),
    }
    if draw(st.booleans()):
        params["_meta"] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        params[draw(json_keys)] = draw(json_values)  # maybe an extra member
    envelope: dict[str, object] = {"jsonrpc": "2.0", "method": "session/update"}
    if draw(st.integers(0, 4)) == 0:
        envelope["id"] = draw(st.integers(0, 9))  # a request, not a notification
    envelope["params"] = params
    if draw(st.integers(0, 4)) == 0:
        envelope = dict(reversed(envelope.items()))
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


@SETTINGS
@given(update_lines())
def test_update_fast_path_means_what_decode_message_means(line: bytes) -> None:
    """When the fast path takes a line, it reads exactly what the general decoder reads."""
    fast = decode_update_line(line)
    if fast is None:
        return
    msg = decode_message(line)
    assert isinstance(msg, Notification) and msg.method == "session/update"
    members = object_members(msg.params)
    assert set(members) <= {"sessionId", "update", "_meta"}
    assert get_str(members, "sessionId") == fast.sessionId
    assert bytes(members["update"]) == bytes(fast.update)
    assert bytes(members.get("_meta", b"")) == bytes(fast.meta)
    assert decode_update_params(msg.params) == fast


def test_update_fast_path_takes_the_usual_shape() -> None:
    """The shape agents write goes through the fast path; other shapes do not."""
    line = (
        b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s",'
        b'"update":{"sessionUpdate":"plan","entries":[]},"_meta":{"k":1}}}'
    )
    fast = decode_update_line(line)
    assert fast is not None and fast.sessionId == "s" and bytes(fast.meta) == b'{"k":1}'
    assert decode_update_line(line.replace(b'"_meta"', b'"other"')) is None
    assert decode_update_line(line.replace(b'"method"', b'"id":1,"method"')) is None
    assert decode_update_line(line.replace(b'"2.0"', b'"1.0"')) is None
    assert decode_update_line(line[:-1]) is None  # malformed: decode_message reports it

"""Unit tests of the JSON-RPC envelope (decode, classify, encode) and the protocol errors."""

from __future__ import annotations

import json

import pytest
from msgspec import Raw

from acp_proxy.protocol import (
    EMPTY,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorResponse,
    LocalProtocolError,
    Notification,
    ProtocolError,
    RemoteProtocolError,
    Request,
    RequestId,
    Response,
    decode_message,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    error_payload,
)


def decode_error(line: bytes) -> RemoteProtocolError:
    """Decode ``line``, expecting it to be rejected, and return the error."""
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(line)
    return info.value


def assert_one_line(out: bytes) -> None:
    """``out`` is exactly one NDJSON line: a single newline, at the end."""
    assert out.endswith(b"\n")
    assert out.count(b"\n") == 1


# --- classification ----------------------------------------------------------------------------


def test_request_with_params() -> None:
    """A message with method and id is a Request carrying its raw params."""
    msg = decode_message(b'{"jsonrpc":"2.0","id":1,"method":"session/new","params":{"cwd":"/"}}')
    assert msg == Request(1, "session/new", Raw(b'{"cwd":"/"}'))


def test_notification_with_params() -> None:
    """A message with a method and no id is a Notification."""
    msg = decode_message(b'{"jsonrpc":"2.0","method":"session/cancel","params":{"s":"x"}}')
    assert msg == Notification("session/cancel", Raw(b'{"s":"x"}'))


def test_response() -> None:
    """A message with an id and a result is a Response carrying the raw result."""
    msg = decode_message(b'{"jsonrpc":"2.0","id":"r1","result":{"ok":true}}')
    assert msg == Response("r1", Raw(b'{"ok":true}'))


def test_error_response_decodes_code_and_message() -> None:
    """A message with an id and an error is an ErrorResponse with code and message read out."""
    msg = decode_message(b'{"jsonrpc":"2.0","id":4,"error":{"code":-32601,"message":"nope"}}')
    assert isinstance(msg, ErrorResponse)
    assert (msg.id, msg.code, msg.message) == (4, -32601, "nope")


def test_error_response_keeps_raw_error_byte_for_byte() -> None:
    """The raw error object, data and odd spacing included, is kept exactly as received."""
    error = b'{ "message" : "boom",  "code":-32000, "data": {"z":1, "a":[1 ,2]}, "x":null}'
    msg = decode_message(b'{"jsonrpc":"2.0","id":4,"error":' + error + b"}")
    assert isinstance(msg, ErrorResponse)
    assert bytes(msg.error) == error
    assert (msg.code, msg.message) == (-32000, "boom")


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        (b"7", 7),
        (b"0", 0),
        (b"-3", -3),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b'"abc"', "abc"),
        (b'""', ""),
        (b'"\\u00e9\\n"', "é\n"),
        (b"null", None),
    ],
)
def test_id_kinds_are_kept(raw_id: bytes, expected: RequestId) -> None:
    """Integer, string and null ids are returned with their JSON type intact."""
    request = decode_message(b'{"jsonrpc":"2.0","id":' + raw_id + b',"method":"m"}')
    response = decode_message(b'{"jsonrpc":"2.0","id":' + raw_id + b',"result":1}')
    assert isinstance(request, Request) and isinstance(response, Response)
    assert request.id == expected and type(request.id) is type(expected)
    assert response.id == expected and type(response.id) is type(expected)


def test_null_id_with_method_is_a_request_not_a_notification() -> None:
    """``"id": null`` is present, so the message is a Request, unlike an absent id."""
    assert decode_message(b'{"jsonrpc":"2.0","id":null,"method":"m"}') == Request(None, "m")
    assert decode_message(b'{"jsonrpc":"2.0","method":"m"}') == Notification("m")


def test_absent_params_are_empty() -> None:
    """Without params the message carries EMPTY, which is falsy and has no bytes."""
    request = decode_message(b'{"jsonrpc":"2.0","id":1,"method":"m"}')
    notification = decode_message(b'{"jsonrpc":"2.0","method":"m"}')
    assert isinstance(request, Request) and isinstance(notification, Notification)
    for params in (request.params, notification.params):
        assert params == EMPTY
        assert not params
        assert bytes(params) == b""


@pytest.mark.parametrize("params", [b"{}", b"[]", b"[1,2]", b'{"a":{"b":[]}}'])
def test_present_params_are_kept(params: bytes) -> None:
    """Present params (object or array, even empty) are kept as raw bytes and are truthy."""
    msg = decode_message(b'{"jsonrpc":"2.0","id":1,"method":"m","params":' + params + b"}")
    assert isinstance(msg, Request)
    assert msg.params and bytes(msg.params) == params


def test_params_raw_excludes_surrounding_whitespace() -> None:
    """Whitespace around the params value is not part of its raw bytes."""
    msg = decode_message(b'{"jsonrpc":"2.0","method":"m","params" :   {"b": 1, "a":2}  }')
    assert isinstance(msg, Notification)
    assert bytes(msg.params) == b'{"b": 1, "a":2}'


def test_null_result_is_a_response_with_raw_null() -> None:
    """``"result": null`` is a Response whose result is Raw(b"null"), not an absent result."""
    msg = decode_message(b'{"jsonrpc":"2.0","id":2,"result":null}')
    assert msg == Response(2, Raw(b"null"))
    assert isinstance(msg, Response) and msg.result


@pytest.mark.parametrize("result", [b"false", b"0", b'""', b"[]", b"{}"])
def test_falsy_json_results_are_responses(result: bytes) -> None:
    """Falsy JSON results are still results, kept verbatim."""
    msg = decode_message(b'{"jsonrpc":"2.0","id":2,"result":' + result + b"}")
    assert msg == Response(2, Raw(result))


def test_member_order_and_unknown_members_do_not_matter() -> None:
    """Members may come in any order and unknown top-level members are ignored."""
    msg = decode_message(b'{"params":[1],"x":{"y":2},"method":"m","id":"i","jsonrpc":"2.0"}')
    assert msg == Request("i", "m", Raw(b"[1]"))


def test_whitespace_around_the_message_is_allowed() -> None:
    """Leading and trailing JSON whitespace does not make a line invalid."""
    msg = decode_message(b' \t{"jsonrpc":"2.0","method":"m"}  ')
    assert msg == Notification("m")


# --- parse errors (-32700) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"{",
        b"nul",
        b'{"jsonrpc":}',
        b'{"jsonrpc":"2.0","method":"m"',
        b'{"jsonrpc":"2.0","method":"m"}x',
        b'{"jsonrpc":"2.0","method":"m"}{"jsonrpc":"2.0","method":"m"}',
        b"{'jsonrpc':'2.0'}",
    ],
)
def test_invalid_json_is_parse_error(line: bytes) -> None:
    """Bytes that are not one complete JSON value raise -32700 with no id."""
    exc = decode_error(line)
    assert exc.code == PARSE_ERROR
    assert exc.data is None
    assert exc.message.startswith("Parse error")


@pytest.mark.parametrize(
    "line",
    [
        b"\xff",
        b'\xff{"jsonrpc":"2.0","method":"m"}',
        b'{"jsonrpc":"2.0","method":"m"\xff}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","method":"m"}',
    ],
)
def test_invalid_utf8_outside_strings_is_parse_error(line: bytes) -> None:
    """Stray non-UTF-8 bytes (or a BOM) between JSON tokens raise -32700."""
    assert decode_error(line).code == PARSE_ERROR


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"\xff"}',
        b'{"jsonrpc":"2.0","id":"\xff","method":"m"}',
        b'{"jsonrpc":"2.\xff","id":1,"method":"m"}',
        b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"\xff"}}',
        # Inside members kept raw (forwarded and stored as they are): msgspec never looks.
        b'{"jsonrpc":"2.0","id":1,"method":"session/prompt","params":{"p":"\xff"}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"text":"\xc3"}}',
        b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":'
        b'{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"\xed\xa0\x80"}}}}',
    ],
)
def test_invalid_utf8_inside_strings_is_parse_error(line: bytes) -> None:
    """Invalid UTF-8 inside a decoded string member raises RemoteProtocolError -32700."""
    assert decode_error(line).code == PARSE_ERROR


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"m","params":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"jsonrpc":"2.0","x":' + b"[" * 100_000 + b"}",
    ],
)
def test_deeply_nested_json_is_a_protocol_error(line: bytes) -> None:
    """Pathologically nested JSON is rejected with a RemoteProtocolError, not a crash."""
    assert decode_error(line).code in (PARSE_ERROR, INVALID_REQUEST)


# --- invalid requests (-32600) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"[]",
        b'[{"jsonrpc":"2.0","method":"m"}]',
        b"1",
        b"1.5",
        b'"2.0"',
        b"null",
        b"true",
    ],
)
def test_valid_json_that_is_not_an_object_is_invalid_request(line: bytes) -> None:
    """A JSON value other than an object (batches included) raises -32600 with no id."""
    exc = decode_error(line)
    assert exc.code == INVALID_REQUEST
    assert exc.data is None
    assert exc.message.startswith("Invalid request")


@pytest.mark.parametrize(
    ("line", "ident"),
    [
        # Wrong or missing jsonrpc version, with a readable id.
        (b'{"jsonrpc":"1.0","id":7,"method":"m"}', 7),
        (b'{"id":"s","method":"m"}', "s"),
        (b'{"jsonrpc":"2.0 ","id":null,"method":"m"}', None),
        # A method together with a result or an error.
        (b'{"jsonrpc":"2.0","id":"abc","method":"m","result":1}', "abc"),
        (b'{"jsonrpc":"2.0","id":5,"method":"m","error":{"code":1,"message":"x"}}', 5),
        (b'{"jsonrpc":"2.0","method":"m","result":null}', None),
        # Both a result and an error.
        (b'{"jsonrpc":"2.0","id":3,"result":1,"error":{"code":1,"message":"x"}}', 3),
        # params neither object nor array.
        (b'{"jsonrpc":"2.0","id":8,"method":"m","params":1}', 8),
        (b'{"jsonrpc":"2.0","id":8,"method":"m","params":"x"}', 8),
        (b'{"jsonrpc":"2.0","id":8,"method":"m","params":null}', 8),
        (b'{"jsonrpc":"2.0","id":8,"method":"m","params":true}', 8),
        (b'{"jsonrpc":"2.0","method":"m","params":"x"}', None),
        # Malformed error objects.
        (b'{"jsonrpc":"2.0","id":9,"error":{"message":"no code"}}', 9),
        (b'{"jsonrpc":"2.0","id":9,"error":{"code":1}}', 9),
        (b'{"jsonrpc":"2.0","id":9,"error":{"code":1.5,"message":"x"}}', 9),
        (b'{"jsonrpc":"2.0","id":9,"error":{"code":"1","message":"x"}}', 9),
        (b'{"jsonrpc":"2.0","id":9,"error":"boom"}', 9),
        (b'{"jsonrpc":"2.0","id":9,"error":null}', 9),
        # A response with neither result nor error.
        (b'{"jsonrpc":"2.0","id":10}', 10),
    ],
)
def test_invalid_request_carries_the_readable_id(line: bytes, ident: RequestId) -> None:
    """Well-formed JSON that breaks JSON-RPC raises -32600 with the readable id in ``data``."""
    exc = decode_error(line)
    assert exc.code == INVALID_REQUEST
    assert exc.data == ident and type(exc.data) is type(ident)
    assert exc.message.startswith("Invalid request")


@pytest.mark.parametrize(
    "line",
    [
        # Missing both method and id.
        b'{"jsonrpc":"2.0"}',
        b'{"jsonrpc":"2.0","result":1}',
        b'{"jsonrpc":"2.0","params":{}}',
        # Ids that are not string, integer or null cannot be read.
        b'{"jsonrpc":"2.0","id":1.5,"method":"m"}',
        b'{"jsonrpc":"2.0","id":1.0,"method":"m"}',
        b'{"jsonrpc":"2.0","id":1e3,"result":1}',
        b'{"jsonrpc":"2.0","id":true,"method":"m"}',
        b'{"jsonrpc":"2.0","id":[1],"method":"m"}',
        b'{"jsonrpc":"2.0","id":{},"method":"m"}',
        # Envelope members of the wrong JSON type.
        b'{"jsonrpc":"2.0","method":7}',
        b'{"jsonrpc":2.0,"method":"m"}',
    ],
)
def test_invalid_request_without_readable_id(line: bytes) -> None:
    """An invalid message whose id cannot be read raises -32600 with ``data`` None."""
    exc = decode_error(line)
    assert exc.code == INVALID_REQUEST
    assert exc.data is None


def test_decode_errors_are_remote_protocol_errors() -> None:
    """A peer's bad message is the peer's fault: a RemoteProtocolError, never Local."""
    exc = decode_error(b"[]")
    assert isinstance(exc, ProtocolError)
    assert not isinstance(exc, LocalProtocolError)


# --- encoders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ident", [1, 0, -1, 2**63 - 1, -(2**63), "a", "", "é\n\u2028🚀", None])
def test_encode_request_round_trip(ident: RequestId) -> None:
    """An encoded request is one line that decodes back to the same Request."""
    out = encode_request(ident, "session/prompt", b'{"b": 1, "a":2}')
    assert_one_line(out)
    assert decode_message(out) == Request(ident, "session/prompt", Raw(b'{"b": 1, "a":2}'))


def test_encode_request_without_params_omits_the_member() -> None:
    """Without params the request has no params member at all."""
    out = encode_request(3, "m")
    assert out == b'{"jsonrpc":"2.0","id":3,"method":"m"}\n'
    assert decode_message(out) == Request(3, "m", EMPTY)


def test_encode_request_embeds_params_verbatim() -> None:
    """Params bytes (spacing, key order, escapes) appear unchanged in the output."""
    params = b'{"b": 1,  "a":2, "u":"\\u00e9", "n":123456789012345678901234567890}'
    out = encode_request("x", "m", Raw(params))
    assert out == b'{"jsonrpc":"2.0","id":"x","method":"m","params":' + params + b"}\n"


def test_encode_notification_round_trip() -> None:
    """An encoded notification is one line that decodes back to the same Notification."""
    out = encode_notification("session/update", b'[1, {"k" : "v"}]')
    assert_one_line(out)
    assert out == b'{"jsonrpc":"2.0","method":"session/update","params":[1, {"k" : "v"}]}\n'
    assert decode_message(out) == Notification("session/update", Raw(b'[1, {"k" : "v"}]'))


def test_encode_notification_without_params() -> None:
    """Without params the notification is just jsonrpc and method."""
    out = encode_notification("m")
    assert out == b'{"jsonrpc":"2.0","method":"m"}\n'
    assert decode_message(out) == Notification("m")


def test_unicode_method_and_id_round_trip() -> None:
    """Non-ASCII methods and ids survive encoding and decoding, with JSON escapes as needed."""
    method = 'naïve/会话 🚀 "quoted" \\ \n\t\u2028'
    out = encode_request(method, method, Raw(b"{}"))
    assert_one_line(out)
    assert decode_message(out) == Request(method, method, Raw(b"{}"))
    out = encode_notification(method)
    assert_one_line(out)
    assert decode_message(out) == Notification(method)


@pytest.mark.parametrize("result", [b"null", b"false", b"0", b'{"b": 1, "a":2}', b'"\\u00e9"'])
def test_encode_response_round_trip(result: bytes) -> None:
    """An encoded response embeds the result verbatim and decodes back to the same Response."""
    out = encode_response(12, result)
    assert_one_line(out)
    assert out == b'{"jsonrpc":"2.0","id":12,"result":' + result + b"}\n"
    assert decode_message(out) == Response(12, Raw(result))


def test_encode_response_accepts_raw() -> None:
    """A Raw result is embedded exactly like bytes."""
    assert encode_response("r", Raw(b"[1 ,2]")) == encode_response("r", b"[1 ,2]")


def test_large_integers_preserved_verbatim() -> None:
    """Integers beyond 64 bits inside params and results are never re-encoded."""
    big = b"123456789012345678901234567890123456789"
    request = decode_message(encode_request(1, "m", b"[" + big + b"]"))
    response = decode_message(encode_response(1, big))
    assert isinstance(request, Request) and bytes(request.params) == b"[" + big + b"]"
    assert isinstance(response, Response) and bytes(response.result) == big


def test_encode_error_round_trip() -> None:
    """An encoded error decodes back to an ErrorResponse with the same id, code and message."""
    out = encode_error("q", -32601, "Method not found: é", data={"method": "x"})
    assert_one_line(out)
    msg = decode_message(out)
    assert isinstance(msg, ErrorResponse)
    assert (msg.id, msg.code, msg.message) == ("q", -32601, "Method not found: é")
    assert json.loads(bytes(msg.error)) == {
        "code": -32601,
        "message": "Method not found: é",
        "data": {"method": "x"},
    }


def test_encode_error_with_null_id() -> None:
    """An error for an unreadable request is answered with id null."""
    out = encode_error(None, PARSE_ERROR, "Parse error")
    assert out == b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}\n'
    msg = decode_message(out)
    assert isinstance(msg, ErrorResponse) and msg.id is None


def test_encode_error_forwards_raw_error_verbatim() -> None:
    """With ``raw`` the existing error object is embedded unchanged, ignoring code and message."""
    raw = b'{ "code" : -32000, "message":"agent said no", "data":[1 ,2] }'
    out = encode_error(5, 0, "ignored", raw=Raw(raw))
    assert out == b'{"jsonrpc":"2.0","id":5,"error":' + raw + b"}\n"
    msg = decode_message(out)
    assert isinstance(msg, ErrorResponse)
    assert bytes(msg.error) == raw
    assert (msg.code, msg.message) == (-32000, "agent said no")


def test_decoded_error_response_re_encodes_byte_for_byte() -> None:
    """Forwarding a decoded ErrorResponse with its raw error reproduces the original line."""
    line = b'{"jsonrpc":"2.0","id":"z","error":{"message":"m", "code":-1,"data":{"b":1,"a":2}}}\n'
    msg = decode_message(line)
    assert isinstance(msg, ErrorResponse)
    assert encode_error(msg.id, msg.code, msg.message, raw=msg.error) == line


def test_error_payload_without_data() -> None:
    """Without data the error object has just code and message, in that order."""
    assert error_payload(-32600, "bad") == b'{"code":-32600,"message":"bad"}'


@pytest.mark.parametrize(("data", "encoded"), [(0, b"0"), (False, b"false"), ("", b'""')])
def test_error_payload_keeps_falsy_data(data: object, encoded: bytes) -> None:
    """Only None omits ``data``; other falsy values are included."""
    assert error_payload(1, "m", data) == b'{"code":1,"message":"m","data":' + encoded + b"}"


# --- the error hierarchy -----------------------------------------------------------------------


def test_protocol_error_is_abstract() -> None:
    """Instantiating ProtocolError itself raises TypeError."""
    with pytest.raises(TypeError, match="abstract"):
        ProtocolError("x")


@pytest.mark.parametrize("cls", [LocalProtocolError, RemoteProtocolError])
def test_subclass_defaults(cls: type[ProtocolError]) -> None:
    """A subclass defaults to code -32600 and no data, and exposes its message."""
    exc = cls("what happened")
    assert isinstance(exc, ProtocolError) and isinstance(exc, Exception)
    assert exc.code == INVALID_REQUEST
    assert exc.data is None
    assert exc.message == "what happened" == str(exc)


@pytest.mark.parametrize("cls", [LocalProtocolError, RemoteProtocolError])
def test_subclass_carries_code_and_data(cls: type[ProtocolError]) -> None:
    """Code and data given to a subclass are kept, positionally or by keyword."""
    positional = cls("m", PARSE_ERROR, {"id": 1})
    keyword = cls("m", code=-32010, data="busy")
    assert (positional.code, positional.data) == (PARSE_ERROR, {"id": 1})
    assert (keyword.code, keyword.data) == (-32010, "busy")


def test_local_and_remote_are_distinct() -> None:
    """Local and remote errors are siblings, so callers can catch them separately."""
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)
    with pytest.raises(RemoteProtocolError):
        raise RemoteProtocolError("peer")
    with pytest.raises(ProtocolError):
        raise LocalProtocolError("us")


def test_update_fast_path_leaves_invalid_utf8_to_the_full_decode() -> None:
    """A session/update line with invalid UTF-8 inside its raw update is not taken as valid."""
    from acp_proxy.protocol import decode_update_line

    line = (
        b'{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":'
        b'{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"\xff"}}}}'
    )
    assert decode_update_line(line) is None
    assert decode_update_line(line.replace(b"\xff", "é".encode())) is not None
    assert decode_error(line).code == PARSE_ERROR

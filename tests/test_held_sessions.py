"""Which sessions an agent process holds, learnt from requests and answers (pure)."""

from __future__ import annotations

import json

from msgspec import Raw

from acp_proxy.held_sessions import note_reply, noting_reply
from acp_proxy.protocol import ErrorResponse, Response


def _raw(value: object) -> bytes:
    return json.dumps(value).encode()


def test_new_and_fork_name_the_session_in_their_result() -> None:
    held: set[str] = set()
    note_reply(held, "session/new", _raw({"cwd": "/w"}), _raw({"sessionId": "a"}))
    note_reply(held, "session/fork", _raw({"sessionId": "a"}), _raw({"sessionId": "b"}))
    assert held == {"a", "b"}


def test_load_and_resume_name_it_in_their_params_and_close_releases_it() -> None:
    held: set[str] = set()
    note_reply(held, "session/load", _raw({"sessionId": "a"}), b"null")
    note_reply(held, "session/resume", _raw({"sessionId": "b"}), _raw({}))
    note_reply(held, "session/close", _raw({"sessionId": "a"}), _raw({}))
    assert held == {"b"}


def test_other_methods_and_malformed_payloads_change_nothing() -> None:
    held = {"a"}
    note_reply(held, "session/prompt", _raw({"sessionId": "z"}), _raw({}))
    note_reply(held, "session/new", _raw({}), b"[1, 2]")
    note_reply(held, "session/new", _raw({}), _raw({"sessionId": 7}))
    note_reply(held, "session/load", b"not json", b"{}")
    assert held == {"a"}


def test_noting_reply_notes_only_successful_answers() -> None:
    held: set[str] = set()
    got: list[object] = []
    params = _raw({"sessionId": "a"})
    callback = noting_reply(held, "session/resume", params, lambda reply, batch: got.append(reply))
    failed = ErrorResponse(1, Raw(b'{"code":-32002,"message":"nope"}'), -32002, "nope")
    callback(failed, None)
    assert held == set() and got == [failed]
    callback(Response(2, Raw(b"{}")), None)
    assert held == {"a"} and len(got) == 2
    untracked = lambda reply, batch: None  # noqa: E731
    assert noting_reply(held, "session/prompt", params, untracked) is untracked

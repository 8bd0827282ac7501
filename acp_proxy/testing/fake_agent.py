"""A real stdio ACP agent with scripted, knob-controlled behaviour (for tests, demo and benchmarks).

Run it as ``python -m acp_proxy.testing.fake_agent [options]``. It speaks ACP v1: newline-delimited
JSON-RPC 2.0 on stdin/stdout (one compact JSON object per line, nothing else on stdout; diagnostics
go to stderr). Requests are handled concurrently, the output of one turn is strictly ordered, and
the process exits 0 as soon as stdin reaches EOF (running turns are abandoned, not finished).

Process knobs (command line; those marked * are per-turn defaults, see below):
  --startup-delay S        sleep S seconds at start, before reading stdin (0)
  --session-init-delay S   delay of session/new, session/load and session/resume (0)
  --first-token-delay S  * delay between receiving a prompt and its first update (0)
  --chunk-delay S        * delay between two consecutive session/update of a turn (0)
  --chunks N             * agent_message_chunk count, besides the final summary chunk (3)
  --chunk-size B         * bytes of filler text per thought/message chunk (24)
  --thoughts N           * agent_thought_chunk count, sent before the message chunks (1)
  --tool-calls N         * fake "read" tool calls: tool_call, in_progress, completed (1)
  --plan                 * emit a 2-entry ``plan`` update at the start of the turn
  --permission           * ask session/request_permission before each tool call
  --fs-read PATH         * ask the client fs/read_text_file PATH during the turn
  --crash-after N        * os._exit(3) after N session/update notifications of a turn
  --hang                 * send the updates, then never finish the turn until cancelled
  --no-load / --no-resume  do not advertise loadSession / sessionCapabilities.resume
  --exit-at-start CODE     print one stderr line and exit with CODE at once
  --refuse-new             answer every session/new with a -32603 error
  --stderr-lines N         write N log lines to stderr at startup (0)
  --hold-on-eof            at stdin EOF, keep running while any session is open or being
                           opened (until a signal), as claude-agent-acp does; close them
                           first to let it exit
  --ignore-close           never answer session/close (and keep the session open)
  --state-dir DIR          persist sessions as DIR/<sessionId>.json (after session/new and every
                           turn) so another process can session/load or session/resume them

Per-turn overrides: when the first prompt block is a text block ``fake:{json object}`` (trailing
text allowed), its keys override the * knobs for that turn: chunks, chunk_size, thoughts,
tool_calls, plan, permission, fs_read, crash_after, hang, first_token_delay, chunk_delay,
``pause_after`` + ``pause_until`` (after that many message chunks, wait until the file named by
``pause_until`` exists: at most 60 s, then go on; a test's handle on "mid-turn"), ``shell`` (a
command run at the start of the turn through non-interactive ``/bin/bash -c``, like opencode's
bash tool, so ``$BASH_ENV`` is read; the summary ends ``; shell=<its stdout>``), ``stderr`` (a
line written to stderr at the start of the turn), ``done_file``
(created once the prompt's response is written: the agent has sent the whole turn), and
``text``, which replaces the filler of the message chunks (split into ``chunks`` pieces). The
key ``script`` (an array of SessionUpdate objects) makes the turn emit those updates verbatim, in
order, instead of its plan, thoughts, tool calls and message chunks; the summary chunk follows.
The block still counts as the user's message. Unknown keys or bad values answer -32602.

Turn sequence: plan? -> thoughts -> per tool call [permission request?, tool_call, updates] -> fs
request? -> message chunks -> (hang?) -> summary chunk -> ``{"stopReason":"end_turn","usage":...}``.
The summary reads ``[fake] turn {n}; context holds {k} earlier turns; mode=..; model=..; pid=..;
last user message: ..`` plus ``; permission=selected:once`` (one outcome per tool call, joined by
``,``; ``selected:once|always`` allows, any other answer fails the call) and ``; fs=ok:<20 chars>``
or ``; fs=error:<code>``. Cancelled turns (session/cancel, ``$/cancel_request`` for the prompt id,
or a ``cancelled`` permission outcome) answer ``{"stopReason":"cancelled"}``, send
``$/cancel_request`` for their unanswered requests to the client, and are not recorded in history.

A prompt whose first block is acp-proxy's ``<acp-proxy:history …>`` seed (the last rung of its
restore ladder) gives a new session its earlier turns: one per user message in the block.

Extension: ``_fake/state {sessionId?, all?}`` -> ``{pid, initializeCount, sessions: {id: {turns,
cwd, mode, model, running, boundWith}}, env: {FAKE_*, OPEN_DESIGN_* variables}, envNames: [every
variable name], authenticated: [params of each authenticate call]}`` (the sessions: the one
named, or every session of the process with ``all: true``); ``boundWith`` holds the
``mcpServers``/``additionalDirectories`` of the last new/load/resume in this process.
``authenticate`` answers ``{}`` and records its params (``methodId: "reject"`` is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import secrets
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

from .fake_state import load_session, open_stdin, parse_args, save_session
from .fake_turn import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    MODELS,
    MODES,
    NOT_FOUND,
    PARSE_ERROR,
    REQUEST_CANCELLED,
    Handler,
    Knobs,
    RpcError,
    Session,
    Turn,
    _binding,
    _commands_update,
    _is_seed,
    _sid,
    _turns_from_seed,
)


class Agent:
    """The JSON-RPC endpoint: reads stdin, dispatches, writes stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.knobs = Knobs(
            chunks=args.chunks,
            chunk_size=args.chunk_size,
            thoughts=args.thoughts,
            tool_calls=args.tool_calls,
            plan=args.plan,
            permission=args.permission,
            fs_read=args.fs_read,
            crash_after=args.crash_after,
            hang=args.hang,
            first_token_delay=args.first_token_delay,
            chunk_delay=args.chunk_delay,
        )
        self.sessions: dict[str, Session] = {}
        self.opening = 0  #: session/new requests being answered (--hold-on-eof holds them)
        self.initialize_count = 0
        self.authenticated: list[Any] = []
        self.next_id = 0
        self.calls: dict[str, asyncio.Future[dict[str, Any]]] = {}  # our requests, by str(id)
        self.inflight: dict[Any, asyncio.Task[None]] = {}  # client requests being handled
        self.turns: dict[Any, Turn] = {}  # running turns by prompt request id
        self.out = sys.stdout.buffer
        self.handlers: dict[str, Handler] = {
            "initialize": self.initialize,
            "authenticate": self.authenticate,
            "session/new": self.session_new,
            "session/load": self.session_load,
            "session/resume": self.session_resume,
            "session/close": self.session_close,
            "session/list": self.session_list,
            "session/set_mode": self.set_mode,
            "session/set_config_option": self.set_config,
            "session/set_model": self.set_model,
            "session/prompt": self.prompt,
            "_fake/state": self.fake_state,
        }
        if args.state_dir:
            os.makedirs(args.state_dir, exist_ok=True)

    # ---- output -------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        try:
            self.out.write(msgspec.json.encode(message) + b"\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # the client is gone: nothing left to do
            os._exit(0)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def reply_error(self, rid: Any, code: int, message: str, data: Any = None) -> None:
        error: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            error["data"] = data
        self.send({"jsonrpc": "2.0", "id": rid, "error": error})

    def start_call(self, method: str, params: dict[str, Any]) -> tuple[int, asyncio.Future[Any]]:
        rid, self.next_id = self.next_id, self.next_id + 1
        future = asyncio.get_running_loop().create_future()
        self.calls[str(rid)] = future
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return rid, future

    def forget_call(self, rid: Any) -> None:
        future = self.calls.pop(str(rid), None)
        if future is not None and not future.done():
            future.cancel()

    # ---- input --------------------------------------------------------------------------------
    async def serve(self) -> None:
        reader = await open_stdin()
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # longer than LINE_LIMIT
                self.reply_error(None, PARSE_ERROR, "Parse error: line too long")
                continue
            if not line:
                sys.stderr.flush()
                if self.args.hold_on_eof:
                    while self.opening:  # noqa: ASYNC110 (a session being opened is held too)
                        await asyncio.sleep(0.01)
                    if self.sessions:
                        await asyncio.Event().wait()  # ends with a signal only
                os._exit(0)  # EOF: finish nothing
            if line.strip():
                self.dispatch(line)
                await asyncio.sleep(0)  # let a new request's task register itself (e.g. its turn)

    def dispatch(self, line: bytes) -> None:
        try:
            msg = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            self.reply_error(None, PARSE_ERROR, "Parse error", str(exc))
            return
        rid = msg.get("id") if isinstance(msg, dict) else None
        if not isinstance(msg, dict) or not isinstance(rid, str | int | float | None):
            self.reply_error(None, INVALID_REQUEST, "Invalid Request")
            return
        method = msg.get("method")
        if method is None and "id" in msg and ("result" in msg or "error" in msg):
            future = self.calls.pop(str(rid), None)
            if future is not None and not future.done():
                future.set_result(msg)
            return
        params = msg.get("params")
        params = {} if params is None else params
        if not isinstance(method, str):
            self.reply_error(rid, INVALID_REQUEST, "Invalid Request")
        elif "id" not in msg:
            self.on_notification(method, params)
        elif not isinstance(params, dict):
            self.reply_error(rid, INVALID_PARAMS, "Invalid params: expected an object")
        elif method == "session/cancel":
            self.on_notification(method, params)
            self.send({"jsonrpc": "2.0", "id": rid, "result": {}})
        else:
            task = asyncio.get_running_loop().create_task(self.handle(rid, method, params))
            self.inflight[rid] = task

    def on_notification(self, method: str, params: Any) -> None:
        if not isinstance(params, dict):
            return
        if method == "session/cancel":
            session = self.sessions.get(_sid(params))
            if session is not None and session.turn is not None:
                session.turn.cancel()
        elif method == "$/cancel_request":
            rid = params.get("requestId")
            if not isinstance(rid, str | int | float | None):
                return
            if rid in self.turns:
                self.turns[rid].cancel()
            elif rid in self.inflight:
                self.inflight[rid].cancel()
        # any other notification is ignored

    async def handle(self, rid: Any, method: str, params: dict[str, Any]) -> None:
        try:
            handler = self.handlers.get(method)
            if (
                handler is None
                or (method == "session/load" and self.args.no_load)
                or (method == "session/resume" and self.args.no_resume)
            ):
                raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": method})
            result = await handler(params, rid)
            after: list[dict[str, Any] | Callable[[], object]] = []
            if isinstance(result, tuple):
                result, after = result
            self.send({"jsonrpc": "2.0", "id": rid, "result": result})
            for message in after:  # messages to send, or actions to take, after the response
                if callable(message):
                    message()
                else:
                    self.send(message)
        except RpcError as exc:
            self.reply_error(rid, exc.code, exc.message, exc.data)
        except asyncio.CancelledError:
            self.reply_error(rid, REQUEST_CANCELLED, "Request cancelled")
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.reply_error(rid, INTERNAL_ERROR, f"Internal error: {exc}")
        finally:
            if self.inflight.get(rid) is asyncio.current_task():
                del self.inflight[rid]

    # ---- sessions -----------------------------------------------------------------------------
    def _session(self, params: dict[str, Any]) -> Session:
        session = self.sessions.get(_sid(params))
        if session is None:
            raise RpcError(NOT_FOUND, "Resource not found", {"sessionId": params.get("sessionId")})
        return session

    @staticmethod
    def _cwd(params: dict[str, Any]) -> str:
        cwd = params.get("cwd")
        if not isinstance(cwd, str) or not os.path.isabs(cwd):
            raise RpcError(INVALID_PARAMS, "Invalid params: cwd must be an absolute path")
        if not isinstance(params.get("mcpServers", []), list):
            raise RpcError(INVALID_PARAMS, "Invalid params: mcpServers must be an array")
        return cwd

    def save(self, session: Session) -> None:
        save_session(self.args.state_dir, session)

    def _restore(self, session_id: Any) -> Session | None:
        if session_id in self.sessions:
            return self.sessions[session_id]
        return load_session(self.args.state_dir, session_id)

    async def _init_delay(self) -> None:
        if self.args.session_init_delay > 0:
            await asyncio.sleep(self.args.session_init_delay)

    async def initialize(self, params: dict[str, Any], rid: Any) -> Any:
        self.initialize_count += 1
        session_caps: dict[str, Any] = {"close": {}, "list": {}}
        if not self.args.no_resume:
            session_caps = {"resume": {}, **session_caps}
        return {
            "protocolVersion": 1,
            "agentCapabilities": {
                "loadSession": not self.args.no_load,
                "promptCapabilities": {"image": True, "embeddedContext": True},
                "mcpCapabilities": {"http": True, "sse": False},
                "sessionCapabilities": session_caps,
            },
            "authMethods": [],
            "agentInfo": {"name": "fake-agent", "version": "1.0.0"},
        }

    async def session_new(self, params: dict[str, Any], rid: Any) -> Any:
        cwd = self._cwd(params)
        self.opening += 1
        try:
            await self._init_delay()
        finally:
            self.opening -= 1
        if self.args.refuse_new:
            raise RpcError(INTERNAL_ERROR, "session/new refused (--refuse-new)")
        session = Session(id="fake_" + secrets.token_hex(8), cwd=cwd)
        session.bound_with = _binding(params)
        self.sessions[session.id] = session
        self.save(session)
        return {"sessionId": session.id, **session.setup()}, [_commands_update(session.id)]

    async def session_load(self, params: dict[str, Any], rid: Any, replay: bool = True) -> Any:
        cwd = self._cwd(params)
        await self._init_delay()
        session = self._restore(params.get("sessionId"))
        if session is None:
            raise RpcError(NOT_FOUND, "Resource not found", {"sessionId": params.get("sessionId")})
        session.cwd = cwd
        session.bound_with = _binding(params)
        self.sessions[session.id] = session
        for turn in session.turns if replay else ():
            for kind, text, mid in (
                ("user_message_chunk", turn["user"], turn.get("userMessageId")),
                ("agent_message_chunk", turn["summary"], turn.get("messageId")),
            ):
                self.notify(
                    "session/update",
                    {
                        "sessionId": session.id,
                        "update": {
                            "sessionUpdate": kind,
                            "messageId": mid,
                            "content": {"type": "text", "text": text},
                        },
                    },
                )
        # Like opencode: the available commands again after every load or resume.
        return session.setup(), [_commands_update(session.id)]

    async def session_resume(self, params: dict[str, Any], rid: Any) -> Any:
        return await self.session_load(params, rid, replay=False)

    async def session_close(self, params: dict[str, Any], rid: Any) -> Any:
        if self.args.ignore_close:
            await asyncio.Event().wait()  # never answered
        session = self.sessions.pop(_sid(params), None)
        if session is not None and session.turn is not None:
            session.turn.cancel()
        return {}

    async def session_list(self, params: dict[str, Any], rid: Any) -> Any:
        cwd = params.get("cwd")  # sessions of this process only (persisted ones are not listed)
        return {
            "sessions": [
                {"sessionId": s.id, "cwd": s.cwd}
                for s in self.sessions.values()
                if cwd is None or s.cwd == cwd
            ]
        }

    async def set_mode(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        if params.get("modeId") not in {m["id"] for m in MODES}:
            raise RpcError(INVALID_PARAMS, f"Invalid params: unknown mode {params.get('modeId')!r}")
        session.mode = params["modeId"]
        self.save(session)
        self.notify(
            "session/update",
            {
                "sessionId": session.id,
                "update": {"sessionUpdate": "current_mode_update", "currentModeId": session.mode},
            },
        )
        return {}

    async def set_config(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        if params.get("configId") != "model":
            raise RpcError(INVALID_PARAMS, f"unknown config option {params.get('configId')!r}")
        if params.get("value") not in {m["value"] for m in MODELS}:
            raise RpcError(INVALID_PARAMS, f"unknown model {params.get('value')!r}")
        session.model = params["value"]
        self.save(session)
        return {"configOptions": session.setup()["configOptions"]}

    async def set_model(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        if not isinstance(params.get("modelId"), str):
            raise RpcError(INVALID_PARAMS, "Invalid params: modelId must be a string")
        session.model = params["modelId"]
        self.save(session)
        return {}

    async def prompt(self, params: dict[str, Any], rid: Any) -> Any:
        session = self._session(params)
        blocks = params.get("prompt")
        if not isinstance(blocks, list):
            raise RpcError(INVALID_PARAMS, "Invalid params: prompt must be an array")
        if session.turn is not None:
            raise RpcError(INVALID_REQUEST, "a prompt is already running on this session")
        if blocks and _is_seed(blocks[0]):
            # acp-proxy restored this conversation into a new session: take the history.
            if not session.turns:
                session.turns = _turns_from_seed(blocks[0]["text"])
            blocks = blocks[1:]
        knobs = self.knobs
        first = blocks[0] if blocks else None
        if (
            isinstance(first, dict)
            and first.get("type") == "text"
            and str(first.get("text", "")).startswith("fake:")
        ):
            try:
                directive, _ = json.JSONDecoder().raw_decode(first["text"][5:].lstrip())
            except ValueError as exc:
                raise RpcError(INVALID_PARAMS, f"bad fake directive: {exc}") from None
            if not isinstance(directive, dict):
                raise RpcError(INVALID_PARAMS, "bad fake directive: expected a JSON object")
            knobs = knobs.override(directive)
        turn = Turn(self, session, knobs, blocks)
        session.turn, self.turns[rid] = turn, turn
        try:
            result = await turn.run()
        finally:
            session.turn = None
            self.turns.pop(rid, None)
        if knobs.done_file is not None:
            return result, [pathlib.Path(knobs.done_file).touch]
        return result

    async def authenticate(self, params: dict[str, Any], rid: Any) -> Any:
        if params.get("methodId") == "reject":
            raise RpcError(-32000, "authentication refused")
        self.authenticated.append(params)
        return {}

    async def fake_state(self, params: dict[str, Any], rid: Any) -> Any:
        wanted = params.get("sessionId")
        return {
            "pid": os.getpid(),
            "initializeCount": self.initialize_count,
            "authenticated": self.authenticated,
            "envNames": sorted(os.environ),
            "sessions": {
                s.id: {
                    "turns": len(s.turns),
                    "cwd": s.cwd,
                    "mode": s.mode,
                    "model": s.model,
                    "running": s.turn is not None,
                    "boundWith": s.bound_with,
                }
                for s in self.sessions.values()
                if wanted in (None, s.id) or params.get("all") is True
            },
            "env": {k: v for k, v in os.environ.items() if k.startswith(("FAKE_", "OPEN_DESIGN_"))},
        }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.exit_at_start is not None:
        sys.stderr.write("fake-agent: exiting at start as asked\n")
        sys.stderr.flush()
        sys.exit(args.exit_at_start)
    for i in range(args.stderr_lines):
        sys.stderr.write(f"fake-agent: log line {i + 1} of {args.stderr_lines}\n")
    sys.stderr.flush()
    if args.startup_delay > 0:
        time.sleep(args.startup_delay)
    asyncio.run(Agent(args).serve())


if __name__ == "__main__":
    main()

"""How deeply a JSON text nests, checked without recursion. No I/O.

A client line nested ~600 deep (in ``_meta``, say) is valid JSON and passes the envelope
decoder, which keeps ``params`` as raw bytes; stored, it made every later restore of its
conversation fail (``RecursionError`` in the transcript's ``deepcopy``). Legitimate ACP
messages nest a few dozen levels at most: `MAX_NESTING_DEPTH` is far above that and far
below what Python's recursion limit (1000 frames) lets a recursive walk reach.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_NESTING_DEPTH", "exceeds_depth"]

#: Arrays and objects nested inside each other, the envelope's own object included.
MAX_NESTING_DEPTH: Final = 128

#: A JSON string (escapes included), in the unrolled form that runs in C without
#: backtracking: brackets inside strings are not nesting.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
#: One layer: every innermost empty pair, in a single left-to-right scan (two chained
#: ``replace`` calls would also remove a pair the first one made adjacent: two layers).
_INNERMOST: Final = re.compile(rb"\[\]|\{\}")


def exceeds_depth(text: bytes, limit: int = MAX_NESTING_DEPTH) -> bool:
    """True when the JSON ``text`` nests arrays/objects deeper than ``limit``.

    Linear-time C scans only: lines with fewer than ``limit`` brackets in all (nearly every
    line) are answered by two ``count`` calls; otherwise strings are removed, the brackets
    kept, and each pass deletes the innermost empty pairs: after ``limit`` passes only
    brackets more than ``limit`` deep are left. Meant for valid JSON; for invalid JSON the
    answer is a best effort (the decoder rejects such text anyway).
    """
    if text.count(b"{") + text.count(b"[") <= limit:
        return False
    brackets = _STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = _INNERMOST.sub(b"", brackets)
        if not shorter:
            return False
        if len(shorter) == len(brackets):
            return False  # unbalanced leftovers: not nesting the decoder would accept
        brackets = shorter
    return True

"""NDJSON framing with a byte limit, without I/O.

ACP over stdio (``docs/protocol/v1/transports.mdx``) sends one JSON-RPC message per line,
delimited by ``\\n``, with no embedded newlines. :class:`LineBuffer` is fed whatever bytes the
transport produced and hands back complete lines. A line longer than ``max_line_bytes`` is
discarded up to its newline and reported once as :data:`OVERSIZE`, so the shell can answer an
error and carry on with the next line instead of buffering without bound.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_LINE_BYTES", "OVERSIZE", "LineBuffer", "Oversize"]

#: Agents send multi-MB lines (diffs, tool output, base64 images); asyncio's 64 KiB default
#: StreamReader limit breaks them (acp-notes §11.10). 64 MiB bounds memory per connection while
#: staying far above anything an agent sends in practice.
DEFAULT_MAX_LINE_BYTES: Final = 64 * 1024 * 1024


class Oversize:
    """Marker for a line that exceeded the limit and was dropped."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERSIZE"


OVERSIZE: Final = Oversize()


class LineBuffer:
    """Accumulate bytes and split them into lines.

    ``feed(b"")`` means end of input: a trailing line without a newline is returned then
    (a peer that exits after its last message may not terminate it).
    """

    __slots__ = ("_buf", "_discarding", "_eof", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False
        self._eof = False

    def feed(self, data: bytes) -> list[bytes | Oversize]:
        """Add ``data`` and return every complete line (without ``\\n`` / ``\\r\\n``).

        Empty lines are skipped. Returns :data:`OVERSIZE` in place of a line that was too long.
        """
        if self._eof:
            raise RuntimeError("feed() after end of input")
        out: list[bytes | Oversize] = []
        if not data:
            self._eof = True
            if self._buf and not self._discarding:
                self._emit(bytes(self._buf), out)
            self._buf.clear()
            return out
        buf = self._buf
        first = data.find(b"\n")
        if first >= 0:
            # The line in progress ends here; the rest splits in C (one copy per line).
            head = data[:first]
            if self._discarding:
                self._discarding = False
            else:
                self._emit(bytes(buf) + head if buf else head, out)
            buf.clear()
            lines = data[first + 1 :].split(b"\n")
            data = lines.pop()  # after the last newline: the next line in progress
            for line in lines:
                self._emit(line, out)
        if not self._discarding:
            buf += data
        # A pending "\r" may still be half of a CRLF: it does not count against the limit.
        if len(buf) - buf.endswith(b"\r") > self.max_line_bytes:
            if not self._discarding:
                out.append(OVERSIZE)
                self._discarding = True
            buf.clear()
        return out

    def _emit(self, line: bytes, out: list[bytes | Oversize]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            out.append(OVERSIZE)
        elif line and not line.isspace():
            out.append(line)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a newline."""
        return len(self._buf)

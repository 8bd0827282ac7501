"""Unit tests of the NDJSON framing (:class:`LineBuffer`): pure, synchronous, no I/O."""

from __future__ import annotations

import pytest

from acp_proxy.protocol import DEFAULT_MAX_LINE_BYTES, OVERSIZE, LineBuffer, Oversize

Line = bytes | Oversize


def feed_chunks(chunks: list[bytes], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> list[Line]:
    """Feed ``chunks`` (empty ones skipped) to a fresh buffer, then end the input."""
    buf = LineBuffer(max_line_bytes)
    out: list[Line] = []
    for chunk in chunks:
        if chunk:
            out.extend(buf.feed(chunk))
    out.extend(buf.feed(b""))
    return out


def assert_framing(
    data: bytes, expected: list[Line], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> None:
    """Check ``data`` frames to ``expected`` whole, byte by byte, and split at every point."""
    whole = feed_chunks([data], max_line_bytes)
    assert whole == expected, "fed all at once"
    bytewise = feed_chunks([data[i : i + 1] for i in range(len(data))], max_line_bytes)
    assert bytewise == expected, "fed one byte at a time"
    for cut in range(1, len(data)):
        # The first chunk ends with partial data that the second chunk completes.
        split = feed_chunks([data[:cut], data[cut:]], max_line_bytes)
        assert split == expected, f"split at byte {cut}"


# --- plain lines -------------------------------------------------------------------------------


def test_single_terminated_line() -> None:
    """A newline-terminated line is returned without its newline."""
    assert_framing(b'{"a":1}\n', [b'{"a":1}'])


def test_several_lines_in_order() -> None:
    """Several lines come back in the order they were sent."""
    assert_framing(b"one\ntwo\nthree\n", [b"one", b"two", b"three"])


def test_crlf_is_stripped() -> None:
    """A CRLF terminator is removed entirely, not just its LF."""
    assert_framing(b"one\r\ntwo\r\n", [b"one", b"two"])


def test_only_one_trailing_cr_is_stripped() -> None:
    """Only the single CR before the LF is part of the terminator."""
    assert_framing(b"a\r\r\n", [b"a\r"])


def test_cr_inside_a_line_is_kept() -> None:
    """A CR that is not right before the LF stays in the line."""
    assert_framing(b"a\rb\n", [b"a\rb"])


def test_empty_and_blank_lines_are_skipped() -> None:
    """Empty lines and whitespace-only lines produce nothing."""
    assert_framing(b"\n\r\n  \n\t\r\nx\n\n", [b"x"])


def test_only_newlines_yield_nothing() -> None:
    """Input made only of line terminators yields no lines at all."""
    assert_framing(b"\n\n\r\n", [])


def test_no_input_yields_nothing() -> None:
    """Ending the input straight away yields no lines."""
    assert feed_chunks([]) == []


def test_surrounding_whitespace_is_kept_on_non_blank_lines() -> None:
    """A non-blank line is returned as sent, leading and trailing spaces included."""
    assert_framing(b"  x \n", [b"  x "])


def test_final_unterminated_line_is_returned_at_eof() -> None:
    """A last line without a newline is returned when the input ends."""
    assert_framing(b"one\ntwo", [b"one", b"two"])


def test_final_unterminated_line_with_cr_is_stripped_at_eof() -> None:
    """A last line ending in CR (peer exited mid-CRLF) loses that CR at end of input."""
    assert_framing(b"one\r\ntwo\r", [b"one", b"two"])


def test_final_unterminated_blank_line_is_skipped_at_eof() -> None:
    """A whitespace-only tail at end of input produces nothing."""
    assert_framing(b"one\n  ", [b"one"])


def test_partial_line_is_held_until_its_newline() -> None:
    """An incomplete line is buffered, not returned, until its newline arrives."""
    buf = LineBuffer()
    assert buf.feed(b"hel") == []
    assert buf.buffered == 3
    assert buf.feed(b"lo\nwor") == [b"hello"]
    assert buf.buffered == 3
    assert buf.feed(b"ld\n") == [b"world"]
    assert buf.buffered == 0


def test_non_ascii_bytes_pass_through() -> None:
    """Lines are bytes: UTF-8 and even invalid UTF-8 come back untouched."""
    assert_framing("é🚀\n".encode() + b"\xff\xfe\n", ["é🚀".encode(), b"\xff\xfe"])


# --- the byte limit ----------------------------------------------------------------------------


def test_line_exactly_at_limit_is_accepted() -> None:
    """A line of exactly ``max_line_bytes`` bytes is returned whole."""
    assert_framing(b"abcd\nxy\n", [b"abcd", b"xy"], max_line_bytes=4)


def test_unterminated_line_exactly_at_limit_is_accepted_at_eof() -> None:
    """A final line of exactly the limit without a newline is returned at end of input."""
    assert_framing(b"xy\nabcd", [b"xy", b"abcd"], max_line_bytes=4)


def test_line_one_byte_over_limit_is_oversize() -> None:
    """A line one byte longer than the limit is replaced by OVERSIZE."""
    assert_framing(b"abcde\n", [OVERSIZE], max_line_bytes=4)


def test_oversize_reported_once_and_following_lines_parsed() -> None:
    """A long line yields a single OVERSIZE and the lines around it still come through."""
    data = b"ok1\n" + b"x" * 50 + b"\nok2\r\nok3\n"
    assert_framing(data, [b"ok1", OVERSIZE, b"ok2", b"ok3"], max_line_bytes=8)


def test_consecutive_oversize_lines_each_reported() -> None:
    """Two long lines in a row give two OVERSIZE markers, one per line."""
    data = b"y" * 20 + b"\n" + b"z" * 20 + b"\nok\n"
    assert_framing(data, [OVERSIZE, OVERSIZE, b"ok"], max_line_bytes=8)


def test_unterminated_oversize_tail_reported_once() -> None:
    """A long final line without a newline gives one OVERSIZE and nothing else."""
    assert_framing(b"ok\n" + b"w" * 30, [b"ok", OVERSIZE], max_line_bytes=8)


def test_oversize_across_many_feeds_discards_without_buffering() -> None:
    """A long line spread over many feeds is reported once and never buffered past the limit."""
    buf = LineBuffer(max_line_bytes=10)
    out: list[Line] = []
    for _ in range(100):
        out.extend(buf.feed(b"abcdef"))
        assert buf.buffered <= 10
    assert out == [OVERSIZE]
    assert buf.feed(b"tail\nnext\n") == [b"next"]
    assert buf.feed(b"") == []


def test_oversize_is_reported_before_its_newline_arrives() -> None:
    """OVERSIZE is returned as soon as the partial line passes the limit."""
    buf = LineBuffer(max_line_bytes=4)
    assert buf.feed(b"abcd") == []
    assert buf.feed(b"e") == [OVERSIZE]
    assert buf.feed(b"fgh") == []
    assert buf.feed(b"\nok\n") == [b"ok"]


def test_discarded_tail_at_eof_is_not_reported_again() -> None:
    """Input ending in the middle of a discarded line yields no second OVERSIZE."""
    buf = LineBuffer(max_line_bytes=4)
    assert buf.feed(b"abcdefgh") == [OVERSIZE]
    assert buf.feed(b"ij") == []
    assert buf.feed(b"") == []


def test_oversize_marker_is_a_singleton_with_readable_repr() -> None:
    """OVERSIZE is the one Oversize instance and prints as its name."""
    assert isinstance(OVERSIZE, Oversize)
    assert repr(OVERSIZE) == "OVERSIZE"
    out = feed_chunks([b"x" * 9], max_line_bytes=4)
    assert len(out) == 1 and out[0] is OVERSIZE


def test_crlf_line_exactly_at_limit_is_accepted_however_chunked() -> None:
    """A CRLF line whose content is exactly the limit is accepted however it is chunked."""
    assert_framing(b"abcd\r\nxy\n", [b"abcd", b"xy"], max_line_bytes=4)


# --- construction and end of input -------------------------------------------------------------


def test_default_limit() -> None:
    """Without an argument the limit is DEFAULT_MAX_LINE_BYTES (64 MiB)."""
    assert LineBuffer().max_line_bytes == DEFAULT_MAX_LINE_BYTES == 64 * 1024 * 1024


@pytest.mark.parametrize("limit", [0, -1])
def test_non_positive_limit_rejected(limit: int) -> None:
    """A limit below one byte is refused with ValueError."""
    with pytest.raises(ValueError, match="positive"):
        LineBuffer(limit)


@pytest.mark.parametrize("data", [b"more\n", b""])
def test_feed_after_eof_raises(data: bytes) -> None:
    """Feeding anything, even another EOF, after the end of input raises RuntimeError."""
    buf = LineBuffer()
    assert buf.feed(b"last") == []
    assert buf.feed(b"") == [b"last"]
    with pytest.raises(RuntimeError, match="after end of input"):
        buf.feed(data)


def test_eof_clears_the_buffer() -> None:
    """After end of input nothing is left buffered."""
    buf = LineBuffer()
    buf.feed(b"partial")
    buf.feed(b"")
    assert buf.buffered == 0

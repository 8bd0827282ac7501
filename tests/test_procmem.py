"""Process-tree memory from /proc: parsing and tree walking (pure), and this process."""

from __future__ import annotations

import os

from acp_proxy.procmem import (
    ProcStat,
    parse_stat,
    pss_bytes,
    read_procs,
    tree_pss_bytes,
    tree_rss_bytes,
)


def test_parse_stat_with_spaces_and_parens_in_the_name() -> None:
    """The command name is everything up to the *last* paren."""
    fields = " ".join(str(n) for n in range(3, 53))  # fields 3..52
    line = f"42 (a (weird) name) S {fields.split(' ', 1)[1]}"
    stat = parse_stat(line)
    assert stat is not None
    assert stat.pid == 42
    assert stat.ppid == 4  # field 4
    assert stat.session == 6  # field 6
    assert stat.rss_bytes == 24 * os.sysconf("SC_PAGE_SIZE")  # field 24, in pages


def test_parse_stat_rejects_garbage() -> None:
    """A line that is not a stat line gives None, not an exception."""
    assert parse_stat("") is None
    assert parse_stat("12 (x) S 1") is None


def test_tree_counts_descendants_and_session_orphans_once() -> None:
    """A tree is the root, its descendants, and processes left in its session; a process is
    never counted twice."""
    procs = [
        ProcStat(1, 0, 1, 1),
        ProcStat(100, 1, 100, 10),  # agent A
        ProcStat(101, 100, 100, 20),  # its child
        ProcStat(102, 101, 102, 40),  # grandchild that called setsid
        ProcStat(103, 1, 100, 80),  # orphan reparented to init, still in A's session
        ProcStat(200, 1, 200, 1000),  # agent B
    ]
    assert tree_rss_bytes([100, 200, 999], procs) == {100: 150, 200: 1000, 999: 0}


def test_this_process_has_resident_memory() -> None:
    """Reading the real /proc finds this process with a plausible RSS."""
    me = tree_rss_bytes([os.getpid()], read_procs())[os.getpid()]
    assert 1 << 20 < me < 4 << 30


def test_pss_of_this_process_is_at_most_its_rss() -> None:
    """PSS divides shared pages: never above RSS; a tree falls back to RSS when unreadable."""
    procs = read_procs()
    me = os.getpid()
    pss = tree_pss_bytes([me], procs)[me]
    rss = tree_rss_bytes([me], procs)[me]
    assert 0 < pss <= rss
    assert pss_bytes(1 << 30) is None  # no such process

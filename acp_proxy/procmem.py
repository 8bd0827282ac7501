"""Resident memory of process trees, read from ``/proc`` (Linux; empty elsewhere).

An agent runs in its own session and process group (``start_new_session``), and spawns
children of its own (opencode starts language servers, MCP servers): what it costs is the
whole tree. A tree here is every descendant by parent pid, plus every process still in the
agent's session (children orphaned to init stay in it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = [
    "ProcStat",
    "parse_stat",
    "pss_bytes",
    "read_procs",
    "tree_pids",
    "tree_pss_bytes",
    "tree_rss_bytes",
]

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ProcStat(NamedTuple):
    """The fields of ``/proc/PID/stat`` a tree needs."""

    pid: int
    ppid: int
    session: int
    rss_bytes: int


def parse_stat(text: str) -> ProcStat | None:
    """Parse one ``/proc/PID/stat`` line (the command name may hold spaces and parens)."""
    head, sep, rest = text.rpartition(")")
    if not sep:
        return None
    try:
        pid = int(head.split("(", 1)[0])
        fields = rest.split()
        # fields[0] is field 3 (state) of proc(5): ppid is 4, session 6, rss (pages) 24.
        return ProcStat(pid, int(fields[1]), int(fields[3]), int(fields[21]) * _PAGE_SIZE)
    except (ValueError, IndexError):
        return None


def read_procs(proc: str = "/proc") -> list[ProcStat]:
    """Every process visible in ``proc`` (processes that end while being read are skipped)."""
    out: list[ProcStat] = []
    try:
        names = os.listdir(proc)
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat") as f:
                stat = parse_stat(f.read())
        except OSError:
            continue
        if stat is not None:
            out.append(stat)
    return out


def tree_pids(roots: Iterable[int], procs: list[ProcStat]) -> dict[int, list[int]]:
    """The pids of each root's tree (empty for a root that is gone). A process counted in
    one tree is not counted again in another."""
    children: dict[int, list[ProcStat]] = {}
    by_session: dict[int, list[ProcStat]] = {}
    by_pid = {p.pid: p for p in procs}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
        by_session.setdefault(p.session, []).append(p)
    seen: set[int] = set()
    result: dict[int, list[int]] = {}
    for root in roots:
        pids: list[int] = []
        stack = [by_pid[root]] if root in by_pid else []
        stack.extend(by_session.get(root, []))
        while stack:  # bounded: each process is visited at most once
            p = stack.pop()
            if p.pid in seen:
                continue
            seen.add(p.pid)
            pids.append(p.pid)
            stack.extend(children.get(p.pid, []))
        result[root] = pids
    return result


def tree_rss_bytes(roots: Iterable[int], procs: list[ProcStat]) -> dict[int, int]:
    """Resident bytes of each root's tree (0 for a root that is gone), per :func:`tree_pids`.

    RSS counts pages shared between processes (an agent binary's code) once per process: an
    upper bound of what the trees cost together.
    """
    rss = {p.pid: p.rss_bytes for p in procs}
    return {root: sum(rss[pid] for pid in pids) for root, pids in tree_pids(roots, procs).items()}


def pss_bytes(pid: int, proc: str = "/proc") -> int | None:
    """Proportional set size of one process (``smaps_rollup``), or None when unreadable
    (another user's process, a kernel without it, a process that has ended)."""
    try:
        with open(f"{proc}/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def tree_pss_bytes(roots: Iterable[int], procs: list[ProcStat]) -> dict[int, int]:
    """Memory of each root's tree, per process PSS where readable, else its RSS.

    PSS splits a page shared by several processes (the agent binary's code, a runtime that
    several agents map) between them: summed over trees it is what they cost together."""
    rss = {p.pid: p.rss_bytes for p in procs}
    out: dict[int, int] = {}
    for root, pids in tree_pids(roots, procs).items():
        total = 0
        for pid in pids:
            pss = pss_bytes(pid)
            total += rss[pid] if pss is None else pss
        out[root] = total
    return out

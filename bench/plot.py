"""Figures for BENCHMARKS.md: time-to-first-token distributions drawn as a PNG.

matplotlib is a bench-only dependency (``pip install -e '.[bench]'``); without it the figure is
skipped with a message and the benchmark's table is still written.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ttft_png"]


def ttft_png(path: Path, series: Mapping[str, Sequence[float]], title: str, note: str = "") -> bool:
    """Draw each series (seconds) as points plus a box, one row each, on a log time axis.

    Returns whether the file was written.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"figure {path} skipped: matplotlib is not installed (bench extra)", file=sys.stderr)
        return False
    labels = list(series)
    data = [[v * 1000 for v in series[label]] for label in labels]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * len(labels)), dpi=120)
    ax.boxplot(data, vert=False, widths=0.5, showfliers=False, medianprops={"color": "black"})
    for row, values in enumerate(data, start=1):
        # Deterministic jitter: the points of a row spread evenly around it.
        n = max(len(values), 1)
        offsets = [(-0.15 + 0.3 * i / max(n - 1, 1)) for i in range(n)]
        ax.scatter(values, [row + o for o in offsets], s=18, alpha=0.7, zorder=3)
        median = sorted(values)[len(values) // 2]
        ax.annotate(
            f"median {median:,.0f} ms",
            (median, row + 0.32),
            ha="center",
            fontsize=8,
        )
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (ms, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return True

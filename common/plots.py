"""Plots that more than one layer draws: one drawing for ``fedshield evaluate`` and the
auditor's report, so that the two never disagree about what a confusion matrix shows.

matplotlib is imported inside each function (with the file-only Agg backend), so that
importing this module costs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO


def plot_confusion(
    classes: list[str] | tuple[str, ...],
    confusion: list[list[int]],
    target: str | Path | BinaryIO,
    title: str = "",
    fmt: str | None = None,
) -> None:
    """Draw a confusion matrix: counts in the cells, colours by share of the true class.

    Rows are true classes, columns predicted ones, names on both axes; cell text and tick
    labels shrink with the class count so that ~20 classes stay readable. ``target`` is a
    path (format from its suffix) or a binary file object (pass ``fmt``, e.g. "png").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(max(4.5, 0.5 * k + 2.5), 14.0)
    cell_font = 10 if k <= 8 else 8 if k <= 14 else 6
    tick_font = 10 if k <= 8 else 8
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=[str(c) for c in classes], fontsize=tick_font)
    ax.set_yticks(range(k), labels=[str(c) for c in classes], fontsize=tick_font)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=cell_font,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class (row)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(target, format=fmt, dpi=120)
    plt.close(fig)

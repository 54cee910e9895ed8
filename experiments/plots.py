"""Plots shared by the experiment jobs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use)."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    return plt


def pred_vs_measured(path: str, pred: np.ndarray, true: np.ndarray, title: str) -> None:
    """Scatter of predicted vs measured latency with the identity line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    ax.scatter(true, pred, s=3, alpha=0.5)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], 'k--', lw=0.8)
    ax.set_xlabel('measured latency (ms)')
    ax.set_ylabel('predicted latency (ms)')
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

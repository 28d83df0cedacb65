"""One figure style for the whole book (serif fonts, colour-blind-safe palette) and figure saving.

Every chapter and the ``figures`` CLI call :func:`set_style` and :func:`save_figure`, so the book
and the command line draw identical figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

from .paths import figures_dir

__all__ = ["PALETTE", "set_style", "save_figure"]

#: Okabe-Ito colour-blind-safe palette.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def set_style() -> None:
    """Apply the book's matplotlib style (idempotent)."""
    mpl.rcParams.update({
        "font.family": "serif",
        "font.serif": ["DejaVu Serif"],
        "mathtext.fontset": "dejavuserif",
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "figure.dpi": 100,
        "savefig.dpi": 300,
        "savefig.bbox": "tight",
        "legend.frameon": False,
        "font.size": 10,
    })


def save_figure(fig: plt.Figure, name: str, out_dir: str | Path | None = None,
                formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save ``fig`` as ``<out_dir>/<name>.<fmt>`` (300 dpi) for each format; returns the paths."""
    out = figures_dir(out_dir)
    paths = []
    for fmt in formats:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=300)
        paths.append(p)
    return paths

"""One figure style for the whole book (serif fonts, colour-blind-safe palette) and figure saving.

Every chapter and the ``figures`` CLI call :func:`set_style` and :func:`save_figure`, so the book
and the command line draw identical figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from ..paths import figures_dir

__all__ = ["PALETTE", "SCHEDULE_LABELS", "SCHEDULE_STYLES", "DATA_COLUMNS", "set_style",
           "save_figure", "figure_data", "write_figure_data"]

#: Okabe-Ito colour-blind-safe palette, ordered so that neighbours differ in hue (orange comes
#: after sky blue, far from vermillion) and without its yellow, which does not show on white.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#000000"]

#: Reader-facing names of the schedules (code names are for the API).
SCHEDULE_LABELS = {"exp": "exponential (paper)", "step": "step", "constant": "constant (no annealing)",
                   "linear_beta": r"linear in $\beta$", "linear_temperature": "linear in temperature"}

#: One colour and dash pattern per schedule, the same in every figure.
SCHEDULE_STYLES = {"exp": dict(color="#0072B2", ls="-"), "step": dict(color="#D55E00", ls="--"),
                   "constant": dict(color="#000000", ls=":"),
                   "linear_beta": dict(color="#009E73", ls="-."),
                   "linear_temperature": dict(color="#CC79A7", ls=(0, (5, 1, 1, 1, 1, 1)))}


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
        "legend.fontsize": 10,
        "font.size": 11,
        "image.cmap": "viridis",
    })
    _retina_inline()


def _retina_inline() -> None:
    """In a notebook, render inline figures with twice the pixels at their nominal size (sharp
    on high-resolution screens: the browser test requires 2x the displayed width)."""
    if not _in_notebook():
        return
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats("retina")


DATA_COLUMNS = ("panel", "x_label", "y_label", "series", "kind", "x", "y", "y_low", "y_high",
                "row", "col", "value", "x_category", "y_category")


def _label(artist) -> str:
    lab = str(artist.get_label() or "")
    return "" if lab.startswith("_") else lab


def _tick_names(ticks, labels) -> dict[float, str]:
    """Tick position -> its label text, for axes whose ticks name categories (heat maps)."""
    return {round(float(t), 9): lab.get_text() for t, lab in zip(ticks, labels) if lab.get_text()}


def figure_data(fig: plt.Figure) -> list[dict]:
    """The numbers a figure draws, as tidy rows (keys :data:`DATA_COLUMNS`), read back from the
    figure's artists so that the CSV always matches the picture.

    Lines give ``kind="line"`` points (x, y); scatter plots ``"point"``; error bars ``"interval"``
    (x, y_low, y_high); filled bands ``"band"`` (their outline, x, y); images and heat maps
    ``"cell"`` (row, col, value, with the cell centre as x, y, and the tick labels at that
    centre, e.g. the beta_i and t0 of a seaborn heat map, as ``x_category``, ``y_category``).
    ``panel`` is the axes title (or its index) and ``series`` the legend label, when there is one.
    """
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection, QuadMesh

    rows = []
    for i, ax in enumerate(fig.axes):
        base = {"panel": ax.get_title() or f"panel {i + 1}", "x_label": ax.get_xlabel(),
                "y_label": ax.get_ylabel()}
        for line in ax.get_lines():
            x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
            if x.size == 2 and (line.get_transform() != ax.transData):
                continue          # reference lines (axvline / axhline) in axes coordinates
            for xv, yv in zip(x, y):
                rows.append({**base, "series": _label(line), "kind": "line", "x": xv, "y": yv})
        for coll in ax.collections:
            lab = _label(coll)
            if isinstance(coll, QuadMesh):
                xnames = _tick_names(ax.get_xticks(), ax.get_xticklabels())
                ynames = _tick_names(ax.get_yticks(), ax.get_yticklabels())
                coords = np.asarray(coll.get_coordinates(), float)     # (M + 1, N + 1, 2)
                arr = np.ma.filled(np.ma.asarray(coll.get_array(), float), np.nan).reshape(
                    coords.shape[0] - 1, coords.shape[1] - 1)
                for r in range(arr.shape[0]):
                    for c in range(arr.shape[1]):
                        xc, yc = coords[r:r + 2, c:c + 2].reshape(-1, 2).mean(0)
                        rows.append({**base, "series": lab, "kind": "cell", "row": r, "col": c,
                                     "x": xc, "y": yc, "value": arr[r, c],
                                     "x_category": xnames.get(round(float(xc), 9), ""),
                                     "y_category": ynames.get(round(float(yc), 9), "")})
            elif isinstance(coll, LineCollection):
                for seg in coll.get_segments():
                    seg = np.asarray(seg, float)
                    if len(seg) == 2 and seg[0, 0] == seg[1, 0]:
                        lo, hi = sorted(seg[:, 1])
                        rows.append({**base, "series": lab, "kind": "interval", "x": seg[0, 0],
                                     "y_low": lo, "y_high": hi})
            elif isinstance(coll, PolyCollection):
                for path in coll.get_paths():
                    for xv, yv in np.asarray(path.vertices, float):
                        rows.append({**base, "series": lab, "kind": "band", "x": xv, "y": yv})
            elif isinstance(coll, PathCollection):
                for xv, yv in np.asarray(coll.get_offsets(), float):
                    rows.append({**base, "series": lab, "kind": "point", "x": xv, "y": yv})
        for im in ax.get_images():
            arr = np.ma.filled(np.asarray(im.get_array(), float), np.nan)
            for r in range(arr.shape[0]):
                for c in range(arr.shape[1]):
                    rows.append({**base, "series": _label(im), "kind": "cell", "row": r,
                                 "col": c, "value": arr[r, c]})
    return rows


def write_figure_data(fig: plt.Figure, path: str | Path) -> Path:
    """Write :func:`figure_data` of ``fig`` as a CSV file at ``path``; returns the path."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(DATA_COLUMNS))
        w.writeheader()
        for row in figure_data(fig):
            w.writerow({k: (f"{v:.9g}" if isinstance(v, (float, np.floating)) else v)
                        for k, v in row.items()})
    return path


#: Where chapters put each figure's CSV for the page's download link (next to the notebooks, so
#: that ``{download}`` finds it; not tracked by git).
PAGE_DATA_DIR = "_figure_data"


def save_figure(fig: plt.Figure, name: str, out_dir: str | Path | None = None,
                formats: tuple[str, ...] = ("png", "pdf"), data: bool = True) -> list[Path]:
    """Save ``fig`` as ``<out_dir>/<name>.<fmt>`` (300 dpi) for each format and, with ``data``,
    the numbers it draws as ``<out_dir>/<name>.csv`` (:func:`figure_data`) -- also copied to
    ``notebooks/_figure_data/`` for the download link under the figure in the book. Returns the
    paths written to ``out_dir``."""
    import shutil

    from ..paths import repo_root

    out = figures_dir(out_dir)
    paths = []
    for fmt in formats:
        p = out / f"{name}.{fmt}"
        fig.savefig(p, dpi=300)
        paths.append(p)
    if data:
        csv_path = write_figure_data(fig, out / f"{name}.csv")
        paths.append(csv_path)
        if _in_notebook():        # a chapter being executed: the page links to this copy
            page = repo_root() / "notebooks" / PAGE_DATA_DIR
            page.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(csv_path, page / csv_path.name)
    return paths


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None

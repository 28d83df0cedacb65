"""Tables of the book's pages: a theory-against-Monte-Carlo agreement summary and a Markdown
renderer with reader-facing column names.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..metrics import z_scores

__all__ = ["TABLE_COLUMNS", "agreement_table", "markdown_table"]


def agreement_table(arrays: dict, theories: dict[str, np.ndarray], mask=None) -> list[dict]:
    """Mean and max |Delta p| (absolute and in binomial-SE units) of each theory over the grid.

    Args:
      arrays: output of :func:`summary_arrays`.
      theories: name -> predicted probabilities, shape (n_beta, n_t0).
      mask: optional boolean (n_beta, n_t0) selecting the cells to include.
    """
    n_ok = arrays["n_runs"] - arrays["n_failed"]
    rows = []
    for name, p_th in theories.items():
        sel = np.ones_like(n_ok, bool) if mask is None else np.asarray(mask, bool)
        if not sel.any():                  # nothing selected (e.g. a tiny preset): no numbers
            rows.append({"theory": name, "cells": 0, "mean_abs_dp": math.nan,
                         "max_abs_dp": math.nan, "mean_z": math.nan, "max_z": math.nan,
                         "frac_within_2se": math.nan})
            continue
        z = z_scores(arrays["n_collapsed"], n_ok, p_th)[sel]
        d = np.abs(arrays["p_collapse"] - p_th)[sel]
        rows.append({"theory": name, "cells": int(sel.sum()), "mean_abs_dp": float(d.mean()),
                     "max_abs_dp": float(d.max()), "mean_z": float(z.mean()),
                     "max_z": float(z.max()), "frac_within_2se": float(np.mean(z <= 2))})
    return rows


#: Reader-facing column names (and number formats) of the tables of chapters 3 and 4; keys not
#: listed keep their name and the default format.
TABLE_COLUMNS = {
    "theory": ("theory", None), "cells": ("cells", "{:d}"),
    "mean_abs_dp": (r"mean $\lvert\Delta p\rvert$", "{:.3f}"),
    "max_abs_dp": (r"max $\lvert\Delta p\rvert$", "{:.3f}"),
    "mean_z": ("mean $z$ (SE)", "{:.2f}"), "max_z": ("max $z$ (SE)", "{:.1f}"),
    "frac_within_2se": ("within 2 SE", "{:.0%}"),
    "log10(beta_i R^2)": (r"$\log_{10}\beta_iR^2$", "{:g}"), "t0": ("$t_0$", "{:g}"),
    "fast": ("reduced: collapsed", None), "exact": ("exact: collapsed", None),
    "fast 95% CI": ("reduced: 95% CI", None), "exact 95% CI": ("exact: 95% CI", None),
    "|dp|": (r"$\lvert\Delta p\rvert$", "{:.3f}"),
    "|dp|/SE": (r"$\lvert\Delta p\rvert$ / SE", "{:.2f}"),
    "B": ("$B$", "{:g}"), "steps after t0": ("steps after $t_0$", "{:g}"),
    "p_collapse": (r"$P_{\rm collapse}$", "{:.2f}"), "ci_low": ("95% CI low", "{:.2f}"),
    "ci_high": ("95% CI high", "{:.2f}"), "closed form": ("closed form", "{:.3f}"),
    "ODE-propagated": ("ODE-propagated", "{:.3f}"),
}


def markdown_table(rows: Sequence[dict], digits: int = 3,
                   columns: dict[str, tuple[str, str | None]] | None = None) -> str:
    """Render a list of dicts (same keys) as a Markdown table.

    Args:
      rows: the table rows.
      digits: decimals of floats without a format of their own; a float with an integral value
        is printed as an integer (``200``, not ``200.000``).
      columns: key -> (header, format such as ``"{:.2f}"`` or ``None``), added to (and
        overriding) :data:`TABLE_COLUMNS`; keys listed in neither keep their name.
    """
    if not rows:
        return ""
    columns = {**TABLE_COLUMNS, **(columns or {})}
    cols = list(rows[0].keys())

    def fmt(v, spec=None):
        if isinstance(v, (bool, np.bool_)):
            return str(bool(v))
        if spec is not None and isinstance(v, (int, float, np.integer, np.floating)):
            if spec == "{:d}":
                v = int(v)
            return spec.format(v)
        if isinstance(v, (float, np.floating)):
            v = float(v)
            return f"{int(v)}" if v.is_integer() and abs(v) < 1e15 else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")       # a pipe inside a cell would split it

    def head(c):
        return columns.get(c, (c, None))[0].replace("|", "\\|")

    lines = ["| " + " | ".join(head(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c], columns.get(c, (c, None))[1]) for c in cols) + " |"
              for r in rows]
    return "\n".join(lines)

"""Cell statistics of a grid (metrics), the pages' tables (figures.tables) and chapter 3's plots."""

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from annealvi_lib.metrics import summary_arrays, z_scores
from annealvi_lib.figures.tables import agreement_table, markdown_table
from annealvi_lib.figures.ch3 import plot_heatmap, plot_slices, plot_vs_rate
from annealvi_lib.experiments.grid import summarise_cell


def _summary():
    rows = []
    for b, t, k in [(0.01, 100.0, 30), (0.01, 200.0, 10), (0.1, 100.0, 50), (0.1, 200.0, 45)]:
        collapsed = np.arange(60) < k
        rows.append(summarise_cell(b, t, collapsed, np.zeros(60, bool)))
    return rows


def test_summary_arrays_layout():
    A = summary_arrays(_summary())
    assert A["beta_is"].tolist() == [0.01, 0.1] and A["t0s"].tolist() == [100.0, 200.0]
    assert A["n_collapsed"].tolist() == [[30, 10], [50, 45]]
    assert np.all(A["ci_low"] <= A["p_collapse"]) and np.all(A["p_collapse"] <= A["ci_high"])


def test_z_scores_and_agreement():
    # z uses the smoothed p~ = (k+1)/(n+2): k=30, n=60 -> p~ = 0.5, SE = sqrt(0.25/60)
    assert float(z_scores(30, 60, 0.6)) == pytest.approx(0.1 / np.sqrt(0.25 / 60))
    A = summary_arrays(_summary())
    exact = A["p_collapse"].copy()
    rows = agreement_table(A, {"exact": exact, "off": np.clip(exact + 0.2, 0, 1)})
    assert rows[0]["max_z"] == 0.0 and rows[0]["frac_within_2se"] == 1.0
    assert rows[1]["mean_abs_dp"] > 0.1
    masked = agreement_table(A, {"exact": exact}, mask=np.array([[True, False], [False, False]]))
    assert masked[0]["cells"] == 1


def test_markdown_table():
    text = markdown_table([{"a": 1, "b": 0.12345}, {"a": 2, "b": 1.0}], digits=2)
    assert text.splitlines()[0] == "| a | b |"
    assert "| 1 | 0.12 |" in text and len(text.splitlines()) == 4
    assert "| 2 | 1 |" in text               # an integral float prints as an integer


def test_markdown_table_reader_headers_and_formats():
    rows = [{"log10(beta_i R^2)": -3.0, "t0": 200.0, "frac_within_2se": 0.406, "|dp|": 0.1234,
             "note": "a|b"}]
    head, _, row = markdown_table(rows).splitlines()
    assert "log10(beta_i" not in head and r"$\log_{10}\beta_iR^2$" in head
    assert "|dp|" not in head and r"\lvert\Delta p\rvert" in head    # no bare pipes in math
    assert row == r"| -3 | 200 | 41% | 0.123 | a\|b |"


def test_plots_draw():
    A = summary_arrays(_summary())
    fig = plot_heatmap(A, iso_fn=lambda b, t: np.clip(b * 5 + t / 400, 0, 1), R=3.0)
    assert fig.axes
    fig = plot_slices(A, {"theory": A["p_collapse"]}, ncols=2)
    assert len(fig.axes) == 2
    # split at beta_c: one panel per side, every row in the legend once
    b = A["beta_is"]
    fig = plot_vs_rate(A, R=3.0, beta_c=float(b.mean()))
    assert len(fig.axes) == 2 and len(fig.legends[0].get_texts()) == b.size
    fig = plot_vs_rate(A, {"curve": (np.array([1.01, 1.1]), np.array([0.2, 0.8]))})
    assert fig.axes[0].get_xscale() == "log"


def test_agreement_table_with_no_selected_cell_reports_no_numbers():
    A = summary_arrays(_summary())
    (row,) = agreement_table(A, {"t": A["p_collapse"]}, mask=np.zeros((2, 2), bool))
    assert row["cells"] == 0 and np.isnan(row["mean_z"]) and np.isnan(row["max_abs_dp"])

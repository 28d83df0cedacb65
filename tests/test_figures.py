"""Figure registry and the opening experiment's on-disk cache."""

import dataclasses

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from annealvi_lib.figures import registry as figures
from annealvi_lib.experiments import ch1_mode_collapse as opening
from annealvi_lib.figures import ch1 as F
from annealvi_lib.config import DemoConfig, Problem, get_preset

CH1 = {"ch1_tempered_marginals", "ch1_schedules", "ch1_opening_marginals", "ch1_variances",
       "ch1_final_overlaps"}
# a tiny opening experiment (seconds): the cache logic does not depend on the sizes
TINY = DemoConfig(problem=Problem(d=8, batch=8), n_iter_vanilla=5, n_iter_annealed=12, t0=8.0)


def test_registry_has_chapter_1_figures():
    reg = figures.registry()
    assert CH1 <= set(reg)
    for name in CH1:
        assert reg[name].chapter == 1 and reg[name].description
    chapters = [s.chapter for s in reg.values()]
    assert chapters == sorted(chapters)


@pytest.mark.parametrize("name, chapter", [("fig1", 1), ("ch2_x", 1), ("ch1_a-b", 1), ("ch1_x", 0)])
def test_register_rejects_bad_names(name, chapter):
    with pytest.raises(ValueError, match="name|chapter"):
        figures.register(name, chapter, "d")


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        figures.register("ch1_schedules", 1, "again")(lambda preset: None)


def test_select_globs_and_unknown_names():
    assert {s.name for s in figures.select(["ch1_*"])} == CH1
    assert [s.name for s in figures.select(["ch1_schedules"])] == ["ch1_schedules"]
    assert len(figures.select([])) == len(figures.registry())
    with pytest.raises(ValueError, match="unknown figure"):
        figures.select(["ch9_nothing"])


def test_cache_roundtrip_and_reuse(tmp_path, monkeypatch):
    runs = opening.cached_opening_experiment(TINY, n_seeds=2, cache=tmp_path)
    path = opening.opening_cache_path(TINY, 2, tmp_path)
    assert path.exists() and path.parent == tmp_path / "opening"
    assert not list(path.parent.glob("*.tmp.npz"))          # atomic write left no temp file

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(opening, "run_opening_experiment", boom)
    again = opening.cached_opening_experiment(TINY, n_seeds=2, cache=tmp_path)
    assert list(again) == list(runs) == list(opening.ARMS)
    for name in runs:
        for a, b in zip(runs[name].traj, again[name].traj):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(runs[name].collapsed, again[name].collapsed)
        assert again[name].label == runs[name].label


def test_cache_key_covers_config_and_seeds(tmp_path):
    base = opening.opening_cache_path(TINY, 2, tmp_path)
    assert opening.opening_cache_path(TINY, 3, tmp_path) != base
    assert opening.opening_cache_path(dataclasses.replace(TINY, t0=9.0), 2, tmp_path) != base
    assert opening.opening_cache_path(dataclasses.replace(TINY, seed=1), 2, tmp_path) != base
    assert opening.opening_cache_path(TINY, 2, tmp_path) == base


def test_corrupt_cache_is_recomputed(tmp_path):
    ref = opening.cached_opening_experiment(TINY, n_seeds=2, cache=tmp_path)
    path = opening.opening_cache_path(TINY, 2, tmp_path)
    path.write_bytes(b"not an npz file")
    redone = opening.cached_opening_experiment(TINY, n_seeds=2, cache=tmp_path)
    np.testing.assert_array_equal(redone["annealed"].traj.s, ref["annealed"].traj.s)
    with np.load(path) as z:                                  # and the file was rewritten
        assert "annealed.traj.s" in z.files


def test_cached_equals_direct_run(tmp_path):
    direct = opening.run_opening_experiment(TINY, n_seeds=2)
    cached = opening.cached_opening_experiment(TINY, n_seeds=2, cache=tmp_path)
    for name in direct:
        np.testing.assert_array_equal(direct[name].traj.m1, cached[name].traj.m1)


def test_every_chapter_1_figure_renders_and_saves(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("ANNEALVI_CACHE", str(tmp_path / "cache"))
    preset = dataclasses.replace(get_preset("quick"), demo=TINY)
    for name in sorted(CH1):
        fig = figures.render(name, preset)
        assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes if ax.get_visible()
                   and ax.has_data() and ax.get_subplotspec().is_last_row()
                   and ax.get_subplotspec().is_first_col()), name
        matplotlib.pyplot.close(fig)
        paths = figures.save(name, preset, tmp_path / "out")
        assert sorted(p.suffix for p in paths) == [".csv", ".pdf", ".png"]
        csv_text = next(p for p in paths if p.suffix == ".csv").read_text().splitlines()
        assert csv_text[0].startswith("panel,x_label,y_label,series,kind") and len(csv_text) > 2
        png = next(p for p in paths if p.suffix == ".png")
        dpi = Image.open(png).info["dpi"]
        assert dpi[0] == pytest.approx(300, abs=1)
        assert next(p for p in paths if p.suffix == ".pdf").read_bytes()[:5] == b"%PDF-"


def test_representative_runs_are_chosen_by_their_median_overlap():
    """Chapter 1 shows, per arm, the run whose final s is the arm's median (failed runs out)."""
    from types import SimpleNamespace

    def arm(final_s, failed):
        s = np.zeros((len(final_s), 3))
        s[:, -1] = final_s
        return SimpleNamespace(traj=SimpleNamespace(s=s), failed=np.asarray(failed))

    runs = {"a": arm([0.9, -0.9, 0.5, np.nan], [False, False, False, True]),
            "b": arm([-0.8, -0.7, 0.6, -0.9], [False] * 4)}
    assert opening.representative_seeds(runs) == {"a": 2, "b": 0}


def test_figure_data_reads_back_what_is_drawn(tmp_path):
    """The CSV beside each figure holds the plotted numbers: lines, points, error bars, bands
    and heat-map cells, with the panel title, axis labels and legend labels."""
    import csv

    from annealvi_lib.figures.style import figure_data, write_figure_data

    fig, (a, b) = matplotlib.pyplot.subplots(1, 2)
    a.plot([1, 2, 3], [4, 5, 6], label="curve")
    a.scatter([0.5], [0.25], label="dots")
    a.errorbar([1.0], [0.5], yerr=[[0.1], [0.2]], fmt="o", label="mc")
    a.fill_between([0, 1], [0, 0], [1, 1], alpha=0.2, label="band")
    a.axvline(2.0)                                  # a reference line: not data
    a.set_title("left")
    a.set_xlabel("t")
    b.pcolormesh(np.array([[1.0, 2.0], [3.0, 4.0]]))
    rows = figure_data(fig)
    line = [(r["x"], r["y"]) for r in rows if r["kind"] == "line" and r["series"] == "curve"]
    assert line == [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)]
    assert all(r["panel"] == "left" and r["x_label"] == "t" for r in rows if r["series"] == "curve")
    assert [(r["x"], r["y"]) for r in rows if r["kind"] == "point" and r["series"] == "dots"] \
        == [(0.5, 0.25)]
    (iv,) = [r for r in rows if r["kind"] == "interval"]
    assert iv["x"] == 1.0 and iv["y_low"] == pytest.approx(0.4) and iv["y_high"] == pytest.approx(0.7)
    assert any(r["kind"] == "band" and r["series"] == "band" for r in rows)
    cells = sorted((r["row"], r["col"], r["value"]) for r in rows if r["kind"] == "cell")
    assert cells == [(0, 0, 1.0), (0, 1, 2.0), (1, 0, 3.0), (1, 1, 4.0)]
    assert not any(r["kind"] == "line" and r["x"] == 2.0 and r["series"] == "" for r in rows)
    path = write_figure_data(fig, tmp_path / "f.csv")
    back = list(csv.DictReader(open(path)))
    assert len(back) == len(rows)
    matplotlib.pyplot.close(fig)


def test_figure_data_names_heat_map_cells_by_their_tick_labels():
    """A seaborn heat map's CSV says which beta_i and t0 each cell is, not only its index."""
    import seaborn as sns

    from annealvi_lib.figures.style import figure_data

    fig, ax = matplotlib.pyplot.subplots()
    sns.heatmap(np.array([[0.1, 0.2], [0.3, 0.4]]), xticklabels=["100", "200"],
                yticklabels=["0.5", "0.05"], ax=ax)
    cells = {(r["y_category"], r["x_category"]): r["value"] for r in figure_data(fig)
             if r["kind"] == "cell" and r["x_category"]}
    assert cells == {("0.5", "100"): 0.1, ("0.5", "200"): 0.2, ("0.05", "100"): 0.3,
                     ("0.05", "200"): 0.4}
    matplotlib.pyplot.close(fig)


def _arm_with_final_s(final_s):
    from types import SimpleNamespace

    s = np.zeros((len(final_s), 3))
    s[:, -1] = final_s
    return SimpleNamespace(traj=SimpleNamespace(s=s), failed=np.zeros(len(final_s), bool))


def test_outcome_counts_separate_settled_from_undecided_runs():
    """Settled: |s| >= 0.9; in between a run is undecided, whatever its sign."""
    c = opening.outcome_counts(_arm_with_final_s([0.95, -0.99, 0.3, -0.2, np.nan]))
    assert (c["collapsed"], c["covered"], c["undecided"], c["failed"]) == (1, 1, 2, 1)
    assert c["sign_collapsed"] == 2 and c["n"] == 4


def test_final_overlap_swarm_places_every_run():
    """Settled runs pile up at s = +-1; the swarm must still draw every one of them (seaborn
    warns when it cannot place a point, which this test turns into an error)."""
    import warnings

    runs = {name: _arm_with_final_s(np.r_[np.full(15, -1.0), [0.98]]) for name in
            ("vanilla", "covering", "annealed")}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fig = F.plot_final_overlaps(runs, {"annealed": 0})
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert drawn >= 3 * 16
    matplotlib.pyplot.close(fig)

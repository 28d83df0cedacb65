"""Chapter 2's study module: error-law fit, lag estimate, on-disk cache and registered figures."""

import dataclasses
import math

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from annealvi_lib.figures import registry as figures
from annealvi_lib.experiments import ch2_summary_statistics as S
from annealvi_lib.config import OdeCheckConfig, Problem, get_preset

CH2 = {"ch2_f_g_asymptotics", "ch2_validation", "ch2_error_scaling"}
# a tiny validation run (a few compilations, no real computation): the cache logic does not
# depend on the sizes
TINY = OdeCheckConfig(problem=Problem(d=8, batch=8), t0=8.0, n_iter=12, dims=(8, 16),
                      batches=(8, 32), n_seeds=2, scan_t0=8.0, scan_n_iter=10, scan_batch=32,
                      scan_d=8, lag_t0s=(5.0, 20.0), lag_d=8, lag_batch=8)


def test_registry_has_chapter_2_figures():
    reg = figures.registry()
    assert CH2 <= set(reg)
    assert all(reg[n].chapter == 2 and reg[n].description for n in CH2)


def test_fit_error_law_recovers_an_exact_sqrt_law():
    """Errors exactly 0.2 sqrt(d/B) at every point: slopes +1/2 and -1/2, constant 0.2."""
    pts = S._scan_points(TINY)
    e = np.array([[0.2 * math.sqrt(d / B)] * TINY.n_seeds for d, B in pts])
    law = S.fit_error_law(S.ScanResult(np.array(pts), 2 * e, e), TINY)
    assert law.slope_d == pytest.approx(0.5, abs=1e-9)
    assert law.slope_b == pytest.approx(-0.5, abs=1e-9)
    assert law.const == pytest.approx(0.2, rel=1e-9)


def test_scan_points_are_distinct_and_cover_both_scans():
    C = dataclasses.replace(TINY, scan_d=8, dims=(8, 16), scan_batch=32, batches=(8, 32))
    pts = S._scan_points(C)
    assert len(pts) == len(set(pts)) == 3                    # (8, 32) is in both scans
    assert set(S.d_series(C)) | set(S.b_series(C)) == set(pts)


def test_lag_estimate():
    """Steady state of dl/dtau = r - (1 - r) l: r/(1 - r) below r = 1, none above."""
    est = S.lag_estimate([0.0, 0.2, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(est[:3], [0.0, 0.25, 1.0])
    assert np.all(np.isinf(est[3:]))


def test_cache_roundtrip_reuse_and_key(tmp_path, monkeypatch):
    val = S.validation_run(TINY, cache=tmp_path)
    path = S.cache_path("validation", TINY, tmp_path)
    assert path.exists() and path.parent == tmp_path / "ode_check"
    assert not list(path.parent.glob("*.tmp.npz"))          # atomic write left no temp file
    assert val.sim.shape == (6, TINY.n_iter + 1) and val.errors.shape == (3,)
    # the ODEs start at the simulation's own initial statistics
    np.testing.assert_allclose(val.ode5n[:3, 0], val.sim[:3, 0], atol=1e-6)

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setitem(S._EXPERIMENTS, "validation", boom)
    again = S.validation_run(TINY, cache=tmp_path)
    for a, b in zip(val, again):
        np.testing.assert_array_equal(a, b)
    # the key covers the configuration and the experiment
    assert S.cache_path("validation", dataclasses.replace(TINY, seed=1), tmp_path) != path
    assert S.cache_path("lag", TINY, tmp_path) != path
    with pytest.raises(ValueError, match="kind"):
        S.cache_path("nothing", TINY, tmp_path)
    # a corrupt file is recomputed (here: by the patched function, which raises)
    path.write_bytes(b"not an npz file")
    with pytest.raises(AssertionError, match="recomputed"):
        S.validation_run(TINY, cache=tmp_path)


def test_chapter_2_figures_render(tmp_path, monkeypatch):
    """The analytic figure renders from the preset, the validation figure from a cached tiny
    run (labelled axes, legends)."""
    monkeypatch.setenv("ANNEALVI_CACHE", str(tmp_path / "cache"))
    preset = dataclasses.replace(get_preset("quick"), ode_check=TINY)
    for name in ("ch2_f_g_asymptotics", "ch2_validation"):
        fig = figures.render(name, preset)
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_legend() is not None, name
        matplotlib.pyplot.close(fig)
    paths = figures.save("ch2_f_g_asymptotics", preset, tmp_path / "out")
    assert sorted(p.suffix for p in paths) == [".csv", ".pdf", ".png"]

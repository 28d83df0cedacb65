"""Chapter 4's evidence: the flow's capacity bound, the archived grid and side studies (schema,
configuration, regeneration from the printed command's code path), the interval rules behind
the conclusions table, and the fixed block width that makes a subset of a cell reproduce it."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from annealvi_lib import archive
from annealvi_lib.models import realnvp as rn
from annealvi_lib.models import realnvp_training as rtrain
from annealvi_lib.experiments import ch4_realnvp as S
from annealvi_lib.experiments import ch4_verdicts as V
from annealvi_lib.config import RealNVPGridConfig, get_preset
from annealvi_lib.metrics import difference_interval

BOOK = get_preset("book").realnvp_grid


# ----------------------------------------------------------------------------- capacity

def test_capacity_counts_the_layers_that_move_each_coordinate():
    cap = rn.flow_capacity(rn.FlowSpec(d=8, n_layers=4, width=4, depth=1))
    assert cap.moves.tolist() == [2] * 8
    assert cap.max_log_scale == 2.0 and cap.max_log_det == 16.0     # n_layers d / 2
    odd = rn.flow_capacity(rn.FlowSpec(d=5, n_layers=3, width=4, depth=1))
    # layers 0 and 2 move the odd coordinates, layer 1 the even ones
    assert odd.moves.tolist() == [1, 2, 1, 2, 1] and odd.max_log_scale == 1.0
    assert odd.max_log_det == 7.0


def test_capacity_bound_holds_for_a_flow_driven_to_saturation():
    """The bound is a property of the implementation: a flow with huge output weights (every
    tanh saturated) has |log det| below n_layers d / 2."""
    spec = rn.FlowSpec(d=6, n_layers=4, width=16, depth=1, out_init_scale=200.0, norm="none")
    p = rn.init_params(jax.random.key(3), spec)
    z = jax.random.normal(jax.random.key(4), (256, 6))
    _, logdet = rn.forward(spec, p, z)
    cap = rn.flow_capacity(spec)
    assert float(np.max(np.abs(logdet))) <= cap.max_log_det
    # saturated tanh: log-scales near +-1 (their signs differ, so they partly cancel)
    assert float(np.max(np.abs(logdet))) >= 0.5 * cap.max_log_det


def test_tempered_need_and_table():
    assert rn.tempered_log_scale(1.0) == 0.0
    assert np.isclose(rn.tempered_log_scale(1 / 90), 0.5 * np.log(90))
    rows = rn.capacity_table(rn.FlowSpec(d=8, n_layers=4, width=4, depth=1), [1 / 90, 0.5])
    assert not rows[0]["ok"] and rows[0]["margin"] < 0        # the old book flow: 2 < 2.25
    assert rows[1]["ok"] and np.isclose(rows[0]["need_log_det"], 8 * 0.5 * np.log(90))


@pytest.mark.parametrize("preset", ["quick", "book", "paper"])
def test_every_row_of_every_preset_is_representable(preset):
    cfg = get_preset(preset).realnvp_grid
    rows = rn.capacity_table(rn.spec_from_config(cfg), cfg.beta_is)
    assert all(r["ok"] for r in rows), rows


def test_flow_macs_equals_the_dense_weights():
    for spec in (rn.FlowSpec(d=8, n_layers=8, width=32, depth=2),
                 rn.FlowSpec(d=7, n_layers=3, width=5, depth=3)):
        p = rn.init_params(jax.random.key(0), spec)
        weights = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(p) if x.ndim == 2)
        assert rn.flow_macs(spec) == weights


def test_torch_initialisation_matches_pytorch_linear_defaults():
    spec = rn.FlowSpec(d=64, n_layers=2, width=256, depth=2, init="torch")
    p = rn.init_params(jax.random.key(1), spec)
    layer = p["layers"][0]["scale_net"]["hidden"][1]       # a 256 -> 256 hidden layer
    w, b = np.asarray(layer["kernel"][...]), np.asarray(layer["bias"][...])
    bound = 1 / np.sqrt(256)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # uniform(+-bound): variance bound^2 / 3; 65536 weights give the std to ~0.3 %
    assert abs(w.std() / (bound / np.sqrt(3)) - 1) < 0.02
    assert np.abs(b).max() > 0.5 * bound                      # biases are not zero
    with pytest.raises(ValueError, match="init"):
        rn.FlowSpec(d=4, init="xavier")


# ------------------------------------------------------------------- intervals and verdicts

def test_newcombe_interval_reproduces_the_published_example():
    # Newcombe (1998), Stat. Med. 17:873, table II example (a): 56/70 - 48/80, method 10
    d, lo, hi = difference_interval(56, 70, 48, 80)
    assert np.isclose(d, 0.2) and np.isclose(lo, 0.0524, atol=5e-4) and np.isclose(hi, 0.3339, atol=5e-4)
    d, lo, hi = difference_interval(0, 10, 0, 20)            # both zero: an interval around 0
    assert d == 0 and lo < 0 < hi


def _runs(cells: dict) -> list[dict]:
    """Run rows with k collapsed of n at each cell (std 1.0 collapsed, 2.5 not)."""
    out = []
    for (b, t), (k, n) in cells.items():
        for r in range(n):
            out.append({"beta_i": b, "t0": t, "replicate": r, "failed": 0.0,
                        "proj_std": 1.0 if r < k else 2.5, "mass_plus": 0.99 if r < k else 0.8})
    return out


ROLES = {"vanilla": (1.0, 2000.0), "short": (0.0351364184463, 500.0),
         "long": (0.0351364184463, 2000.0), "above": (0.351364184463, 2000.0)}


def test_trend_roles_of_the_book_cells():
    from annealvi_lib.theory.collapse import critical_beta

    assert V.trend_roles(BOOK.trend_cells, critical_beta(BOOK.R, BOOK.w_star)) == ROLES
    with pytest.raises(ValueError, match="trend_cells"):
        V.trend_roles([(1.0, 100.0)], 0.07)


@pytest.mark.parametrize("counts, want", [
    # collapse without annealing, slower annealing helps, a start above beta_c barely helps
    ({"vanilla": (140, 150), "short": (120, 150), "long": (30, 150), "above": (135, 150)},
     {"no_annealing": "supported", "slower": "supported", "near_bc": "supported"}),
    # the opposite of each claim, beyond its interval
    ({"vanilla": (10, 150), "short": (30, 150), "long": (120, 150), "above": (5, 150)},
     {"no_annealing": "contradicted", "slower": "contradicted", "near_bc": "supported"}),
    ({"vanilla": (150, 150), "short": (75, 150), "long": (75, 150), "above": (20, 150)},
     {"no_annealing": "supported", "slower": "not resolved", "near_bc": "contradicted"}),
    # too few runs to decide anything
    ({"vanilla": (3, 5), "short": (3, 5), "long": (2, 5), "above": (2, 5)},
     {"no_annealing": "not resolved", "slower": "not resolved", "near_bc": "not resolved"}),
])
def test_cell_verdicts_follow_the_intervals(counts, want):
    runs = _runs({ROLES[k]: v for k, v in counts.items()})
    got = V.verdicts_from_cells(V.cell_counts(runs, V.CRITERIA[1], 0.8), ROLES)
    assert {k: v["verdict"] for k, v in got.items()} == want


def test_grid_verdicts_follow_the_intervals():
    B = [0.01, 0.03, 0.1, 0.5, 1.0]
    T = [100.0, 200.0, 400.0]
    # a sweet spot at 0.03, the hottest start far worse; rates matched within hot rows differ
    p = {0.01: 0.9, 0.03: 0.1, 0.1: 0.8, 0.5: 0.9, 1.0: 1.0}
    counts = {(b, t): (int(round(p[b] * 150)), 150) for b in B for t in T}
    v = V.verdicts_from_grid(counts, B, T, beta_c=0.07, hot_fraction=0.5)
    assert v["sweet_spot"]["verdict"] == "supported"
    assert v["very_hot"]["verdict"] == "supported"
    assert v["rate_only"]["verdict"] in ("contradicted", "not tested")
    flat = {(b, t): (75, 150) for b in B for t in T}
    v = V.verdicts_from_grid(flat, B, T, beta_c=0.07, hot_fraction=0.5)
    assert v["sweet_spot"]["verdict"] == "not resolved"
    assert v["very_hot"]["verdict"] == "not resolved"


def test_criteria_classify_by_std_and_by_light_side_mass():
    runs = [{"failed": 0.0, "proj_std": 1.5, "mass_plus": 0.95},
            {"failed": 0.0, "proj_std": 1.7, "mass_plus": 0.75},
            {"failed": 1.0, "proj_std": float("nan"), "mass_plus": float("nan")},
            {"failed": 0.0, "proj_std": 2.5, "mass_plus": 0.02}]     # collapsed on the light mode
    assert V.collapsed_by(runs, V.CRITERIA[0], 0.8).tolist() == [False, False, False, False]
    assert V.collapsed_by(runs, V.CRITERIA[1], 0.8).tolist() == [True, False, False, False]
    assert V.collapsed_by(runs, V.CRITERIA[2], 0.8).tolist() == [True, True, False, False]
    assert V.collapsed_by(runs, V.CRITERIA[3], 0.8).tolist() == [True, False, False, True]


# ------------------------------------------------------------ one program per configuration

TINY = RealNVPGridConfig(d=4, width=8, depth=1, n_layers=2, batch=16, log10_beta_9=(0.5,),
                         include_beta_one=False, t0s=(5.0,), n_seeds=5, n_iter_extra=3,
                         n_eval=64, seed_chunk=2)


def test_a_subset_of_replicates_reproduces_the_cell():
    b = TINY.beta_is[0]
    full = rtrain.run_realnvp_cell(TINY, b, 5.0, np.arange(5), 0)
    part = rtrain.run_realnvp_cell(TINY, b, 5.0, np.array([0, 3]), 0)
    for f in ("proj_std", "mass_plus", "kl", "ess"):
        assert np.array_equal(np.asarray(part[f]), np.asarray(full[f])[[0, 3]]), f


def test_blocks_spread_over_devices_give_the_same_runs():
    """Four host devices (XLA's forced device count) run the blocks concurrently; the per-run
    statistics are those of one device."""
    code = ("import numpy as np, jax, json\n"
            "from annealvi_lib.models import realnvp_training as rtrain\n"
            "from annealvi_lib.config import RealNVPGridConfig\n"
            f"TINY = RealNVPGridConfig(**{dataclasses.asdict(TINY)!r})\n"
            "assert len(jax.local_devices()) == 4\n"
            "r = rtrain.run_realnvp_cell(TINY, TINY.beta_is[0], 5.0, np.arange(5), 0)\n"
            "print(json.dumps([float(x) for x in r['proj_std']]))\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    multi = json.loads(out.stdout.strip().splitlines()[-1])
    one = rtrain.run_realnvp_cell(TINY, TINY.beta_is[0], 5.0, np.arange(5), 0)
    assert np.array_equal(np.asarray(multi), np.asarray(one["proj_std"]))


# ------------------------------------------------------------------------------- archives

def _grid_archive():
    got = archive.read_archive(archive.data_dir(S.GRID_ARCHIVE))
    assert got is not None, ("the archive is missing: python -m annealvi_lib realnvp-archive "
                             "grid --preset book --out data/realnvp_grid")
    return got


def test_archived_grid_is_the_book_preset_grid():
    tables, prov = _grid_archive()
    assert prov["config"] == S.grid_archive_config(BOOK)
    assert prov["config_hash"] == archive.config_digest(prov["config"])
    assert prov["command"].startswith("python -m annealvi_lib realnvp-archive grid --preset book")
    for key in ("commit", "date", "machine", "runtime_s", "library_version"):
        assert prov[key]
    cells, runs = tables["realnvp_cells.csv"], tables["realnvp_runs.csv"]
    assert {(float(r["beta_i"]), float(r["t0"])) for r in cells} == \
        {(b, t) for b in BOOK.beta_is for t in BOOK.t0s}
    assert len(runs) == len(cells) * BOOK.n_seeds
    assert set(runs[0]) == {"beta_i", "t0", "replicate", "collapsed", "failed", "proj_std",
                            "proj_mean", "mass_plus", "ess", "kl"}
    for r in cells:
        mine = [q for q in runs if (q["beta_i"], q["t0"]) == (r["beta_i"], r["t0"])]
        assert sorted(int(q["replicate"]) for q in mine) == list(range(BOOK.n_seeds))
        assert sum(int(q["collapsed"]) for q in mine) == int(r["n_collapsed"])
        # the paper's criterion, recomputed from the archived statistic
        assert sum(float(q["proj_std"]) < 1.6 and not int(q["failed"]) for q in mine) == \
            int(r["n_collapsed"])
    # the capacity check holds for every row of the archive
    spec = rn.spec_from_config(RealNVPGridConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                                                    for k, v in prov["config"]["realnvp_grid"].items()}))
    assert all(r["ok"] for r in rn.capacity_table(spec, prov["config"]["beta_is"]))


def test_regenerating_archived_replicates_gives_the_same_rows():
    """What ``realnvp-archive grid`` (or ``grid realnvp --seeds 2``) computes for the first
    replicates of a cell: the archived rows, bit for bit (same keys, same compiled program)."""
    tables, prov = _grid_archive()
    b, t0 = min(BOOK.beta_is), min(BOOK.t0s)
    again = rtrain.run_realnvp_cell(BOOK, b, t0, np.arange(2), BOOK.seed)
    arch = sorted((r for r in tables["realnvp_runs.csv"]
                   if float(r["beta_i"]) == b and float(r["t0"]) == t0
                   and int(r["replicate"]) < 2), key=lambda r: int(r["replicate"]))
    if archive.same_machine(prov):
        for f in ("proj_std", "proj_mean", "mass_plus", "ess", "kl"):
            assert np.asarray(again[f], float).tolist() == [float(r[f]) for r in arch], f
    else:
        # another CPU compiles another program (rounding differs and 400 Adam steps amplify
        # it): the classification must agree and the statistic stay close
        assert np.asarray(again["collapsed"]).tolist() == [int(float(r["collapsed"])) for r in arch]
        np.testing.assert_allclose(np.asarray(again["proj_std"], float),
                                   [float(r["proj_std"]) for r in arch], rtol=0.1)


def test_archived_side_studies_match_the_book_preset():
    got = archive.read_archive(archive.data_dir(S.STUDIES_ARCHIVE))
    assert got is not None, "the archive is missing: python -m annealvi_lib realnvp-archive studies"
    tables, prov = got
    grid_cells = S._numeric_rows(_grid_archive()[0]["realnvp_cells.csv"])
    cells = S.compare_cells(grid_cells)
    assert prov["config"] == S.studies_config(BOOK, cells)
    assert prov["command"].startswith("python -m annealvi_lib realnvp-archive studies --preset book")
    trend = tables["trend_runs.csv"]
    assert {int(r["d"]) for r in trend} == set(BOOK.trend_dims)
    assert len(trend) == len(BOOK.trend_dims) * len(BOOK.trend_cells) * BOOK.trend_seeds
    comp = tables["compare_runs.csv"]
    assert {r["arm"] for r in comp} == {a for a, _, _ in S.COMPARE_ARMS}
    assert len(comp) == len(S.COMPARE_ARMS) * len(cells) * BOOK.compare_seeds
    # the trend at the grid's own d reproduces the grid's runs (same configuration and keys)
    grid_runs = {(r["beta_i"], r["t0"], r["replicate"]): r["proj_std"]
                 for r in _grid_archive()[0]["realnvp_runs.csv"]}
    same = [r for r in trend if int(r["d"]) == BOOK.d]
    assert same and all(grid_runs[(r["beta_i"], r["t0"], r["replicate"])] == r["proj_std"]
                        for r in same)


def test_realnvp_archive_cli_rejects_bad_workers(tmp_path):
    from annealvi_lib.cli import main

    assert main(["realnvp-archive", "grid", "--preset", "quick", "--out", str(tmp_path),
                 "--workers", "0"]) == 2

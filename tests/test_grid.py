"""Grid runner and CLI: columns, caching/resume, shards, corrupt cache, exit codes."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from annealvi_lib.config import get_preset
from annealvi_lib.experiments.grid import GRID_COLUMNS, ID_COLUMNS, grid_id, parse_shard, run_grid
from annealvi_lib.experiments.grid_csv import merge_grid_csvs, read_grid_csv, write_grid_csv

CFG = dataclasses.replace(get_preset("quick").gmm_grid, n_seeds=6, n_iter_extra=10,
                          t0s=(20.0, 40.0))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    res = run_grid("gmm", CFG, cache=out / "cache", progress=False)
    grid_csv, runs_csv = write_grid_csv(res, out, "gmm")
    return res, grid_csv.read_text(), runs_csv.read_text()


def test_columns_and_counts(reference):
    res, grid_text, runs_text = reference
    assert grid_text.splitlines()[0] == ",".join(GRID_COLUMNS + ID_COLUMNS)
    assert len(res.summary) == len(CFG.beta_is) * len(CFG.t0s)
    for row in res.summary:
        assert row["n_runs"] == CFG.n_seeds
        assert row["ci_low"] <= row["p_collapse"] <= row["ci_high"]
    assert len(runs_text.splitlines()) == 1 + CFG.n_seeds * len(res.summary)


def test_interrupted_run_resumes_to_same_csv(reference, tmp_path):
    # an "interrupted" run: only half of the cells reached the cache; then a full run
    cache = tmp_path / "cache"
    run_grid("gmm", CFG, shard=(0, 2), cache=cache, progress=False)
    res = run_grid("gmm", CFG, cache=cache, progress=False)
    grid_csv, runs_csv = write_grid_csv(res, tmp_path, "gmm")
    assert grid_csv.read_text() == reference[1]
    assert runs_csv.read_text() == reference[2]


def test_corrupt_cache_file_is_redone(reference, tmp_path):
    cache = tmp_path / "cache"
    run_grid("gmm", CFG, cache=cache, progress=False)
    files = sorted(cache.rglob("cell_*.npz"))
    files[0].write_bytes(b"not an npz file")
    res = run_grid("gmm", CFG, cache=cache, progress=False)
    grid_csv, _ = write_grid_csv(res, tmp_path, "gmm")
    assert grid_csv.read_text() == reference[1]


def test_shards_merged_are_byte_identical(reference, tmp_path):
    # shards 0/2 and 1/2 (separate caches), merged: the same files, byte for byte
    grids, runs = [], []
    for k in range(2):
        res = run_grid("gmm", CFG, shard=(k, 2), cache=tmp_path / f"c{k}", progress=False)
        g, r = write_grid_csv(res, tmp_path / f"s{k}", "gmm")
        grids.append(g)
        runs.append(r)
    assert merge_grid_csvs(grids, tmp_path / "g.csv").read_text() == reference[1]
    assert merge_grid_csvs(runs, tmp_path / "r.csv").read_text() == reference[2]


def test_cell_file_under_another_name_is_recomputed(reference, tmp_path):
    cache = tmp_path / "cache"
    run_grid("gmm", CFG, cache=cache, progress=False)
    files = sorted(cache.rglob("cell_*.npz"))
    files[1].write_bytes(files[0].read_bytes())     # another cell's results under this name
    res = run_grid("gmm", CFG, cache=cache, progress=False)
    grid_csv, runs_csv = write_grid_csv(res, tmp_path, "gmm")
    assert grid_csv.read_text() == reference[1]
    assert runs_csv.read_text() == reference[2]


def test_shards_merge_to_unsharded(reference, tmp_path):
    paths = []
    for k in range(3):
        res = run_grid("gmm", CFG, shard=(k, 3), cache=tmp_path / f"c{k}", progress=False)
        paths.append(write_grid_csv(res, tmp_path / f"s{k}", "gmm")[0])
    merged = merge_grid_csvs(paths, tmp_path / "merged.csv")
    a, b = read_grid_csv(merged), read_grid_csv_from_text(reference[1], tmp_path)
    for c in GRID_COLUMNS + ID_COLUMNS:
        np.testing.assert_array_equal(a[c], b[c])


def read_grid_csv_from_text(text, tmp_path):
    p = tmp_path / "ref_grid.csv"
    p.write_text(text)
    return read_grid_csv(p)


@pytest.mark.parametrize("text", ["1", "2/2", "-1/3", "a/b", "1/0"])
def test_bad_shard(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "annealvi_lib", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("args, option", [
    (["grid", "gmm", "--preset", "huge"], "--preset"),
    (["grid", "gmm", "--beta-i", "0"], "--beta-i"),
    (["grid", "gmm", "--t0", "-1"], "--t0"),
    (["grid", "gmm", "--shard", "x"], "--shard"),
    (["grid", "gmm", "--seeds", "0"], "--seeds"),
    (["grid", "realnvp", "--sampler", "fast"], "--sampler"),
])
def test_cli_bad_arguments_exit_2(args, option):
    proc = _cli(*args)
    assert proc.returncode == 2
    assert option in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_help_lists_defaults():
    proc = _cli("grid", "--help")
    assert proc.returncode == 0
    for opt in ("--preset", "--beta-i", "--t0", "--seeds", "--batch", "--n-iter-extra", "--sampler",
                "--shard", "--out", "--cache-dir"):
        assert opt in proc.stdout
    assert "default" in proc.stdout


def test_cli_writes_csv(tmp_path):
    proc = _cli("grid", "gmm", "--preset", "quick", "--beta-i", "0.01", "--t0", "20", "--seeds", "4",
                "--n-iter-extra", "5", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    g = read_grid_csv(tmp_path / "gmm_grid.csv")
    assert g["n_runs"].tolist() == [4.0] and g["beta_i"][0] == pytest.approx(0.01)
    assert (tmp_path / "gmm_runs.csv").exists()


def test_worker_processes_give_identical_results(reference, tmp_path):
    res = run_grid("gmm", CFG, cache=tmp_path / "cache", progress=False, workers=2)
    grid_csv, runs_csv = write_grid_csv(res, tmp_path, "gmm")
    assert grid_csv.read_text() == reference[1]
    assert runs_csv.read_text() == reference[2]


@pytest.mark.parametrize("study", ["exact", "realnvp"])
def test_exact_sampler_and_realnvp_identical_across_workers_and_shards(study, tmp_path):
    """Per-run values bit for bit: in-process, 2 workers, and shards 0/2 + 1/2 merged."""
    if study == "exact":
        cfg = dataclasses.replace(CFG, n_seeds=3, log10_beta_r2=(-2.0,), t0s=(10.0, 15.0),
                                  sampler="exact")
        name = "gmm"
    else:
        cfg = dataclasses.replace(get_preset("quick").realnvp_grid, t0s=(10.0, 12.0),
                                  n_seeds=3, seed_chunk=2, n_iter_extra=3)
        name = "realnvp"
    whole = write_grid_csv(run_grid(name, cfg, cache=tmp_path / "a", progress=False),
                           tmp_path / "a", name)[1].read_text()
    workers = write_grid_csv(run_grid(name, cfg, cache=tmp_path / "b", progress=False,
                                      workers=2), tmp_path / "b", name)[1].read_text()
    shards = [write_grid_csv(run_grid(name, cfg, shard=(k, 2), cache=tmp_path / f"s{k}",
                                      progress=False), tmp_path / f"s{k}", name)[1]
              for k in range(2)]
    assert workers == whole
    assert merge_grid_csvs(shards, tmp_path / "m.csv").read_text() == whole


def test_grid_id_depends_on_sampling():
    """Two configurations differing only in the sampling protocol have different grid ids (so
    different cache folders); the same configuration keeps its id."""
    cat = dataclasses.replace(CFG, problem=dataclasses.replace(CFG.problem,
                                                               sampling="categorical"))
    assert grid_id("gmm", CFG, 0) == grid_id("gmm", dataclasses.replace(CFG), 0)
    assert grid_id("gmm", cat, 0) != grid_id("gmm", CFG, 0)

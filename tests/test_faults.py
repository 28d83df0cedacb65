"""Bad input and faults: every case exits with a one-line message (2 for user errors, 1 for I/O
faults) and no traceback; the library validates what the CLI validates; diverged runs are
counted as failed; a worker never outlives a stopped grid run."""

import csv
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from annealvi_lib import cli
from annealvi_lib.experiments import grid as G
from annealvi_lib.experiments import grid_cache as GC
from annealvi_lib.config import (DemoConfig, GMMGridConfig, OdeCheckConfig, Problem,
                                 RealNVPGridConfig, get_preset)
from annealvi_lib.experiments.grid import GridResult, run_grid, summarise_cell
from annealvi_lib.experiments.grid_csv import merge_grid_csvs, write_grid_csv

QUICK = get_preset("quick")
TINY = dataclasses.replace(QUICK.gmm_grid, n_seeds=3, n_iter_extra=5, t0s=(10.0,),
                           log10_beta_r2=(-2.0,))
TINY_ARGS = ["--preset", "quick", "--seeds", "3", "--t0", "10", "--n-iter-extra", "5",
             "--beta-i", "0.01", "--no-progress"]


def _main(capsys, *argv):
    """Run the CLI in-process; returns (exit code, stderr). An uncaught exception fails the
    test (that would be a traceback for the user)."""
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _one_line_error(err, option):
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert len(lines) == 1, err
    assert option in lines[0], err
    assert "Traceback" not in err


# ------------------------------------------------------------------ user errors: exit 2

@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


@pytest.mark.parametrize("case", ["out_is_file", "out_under_file", "cache_is_file", "seed_2_63",
                                  "seed_negative", "extra_huge", "t0_huge", "t0_1e300",
                                  "seeds_huge", "batch_zero", "workers_zero"])
def test_grid_bad_arguments_exit_2(case, a_file, tmp_path, capsys):
    argv, option = {
        "out_is_file": (["--out", str(a_file)], "--out"),
        "out_under_file": (["--out", str(a_file / "sub")], "--out"),
        "cache_is_file": (["--cache-dir", str(a_file)], "--cache-dir"),
        "seed_2_63": (["--seed", str(2**63)], "--seed"),
        "seed_negative": (["--seed", "-1"], "--seed"),
        "extra_huge": (["--n-iter-extra", str(10**12)], "--n-iter-extra"),
        "t0_huge": (["--t0", "1e9"], "--t0"),
        "t0_1e300": (["--t0", "1e300"], "--t0"),
        "seeds_huge": (["--seeds", str(10**9)], "--seeds"),
        "batch_zero": (["--batch", "0"], "--batch"),
        "workers_zero": (["--workers", "0"], "--workers"),
    }[case]
    base = ["grid", "gmm", *TINY_ARGS, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path)]
    code, err = _main(capsys, *base, *argv)   # later options override the defaults above
    assert code == 2
    _one_line_error(err, option)
    assert not (tmp_path / "c").exists()      # refused before any computation


def _fake_csv(path, study="gmm", grid_id="aaaa_seed0_n3", beta=0.01, extra_col=False):
    row = {**summarise_cell(beta, 10.0, [True, False, False], [False] * 3), "study": study,
           "grid_id": grid_id}
    cols = G.GRID_COLUMNS + G.ID_COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cols) + (["other"] if extra_col else []))
        w.writeheader()
        w.writerow({**row, **({"other": 1} if extra_col else {})})
    return path


@pytest.mark.parametrize("case", ["directory", "missing", "other_columns", "out_is_dir",
                                  "other_study", "other_config", "not_annealvi"])
def test_merge_bad_inputs_exit_2(case, tmp_path, capsys):
    a = _fake_csv(tmp_path / "a.csv")
    out = tmp_path / "m.csv"
    inputs = {
        "directory": [str(a), str(tmp_path)],
        "missing": [str(a), str(tmp_path / "nope.csv")],
        "other_columns": [str(a), str(_fake_csv(tmp_path / "b.csv", extra_col=True, beta=0.1))],
        "out_is_dir": [str(a)],
        "other_study": [str(a), str(_fake_csv(tmp_path / "b.csv", study="realnvp", beta=0.1))],
        "other_config": [str(a), str(_fake_csv(tmp_path / "b.csv", grid_id="bbbb_seed0_n3",
                                               beta=0.1))],
        "not_annealvi": [str(a), str(tmp_path / "c.csv")],
    }[case]
    (tmp_path / "c.csv").write_text("x,y\n1,2\n")
    if case == "out_is_dir":
        out = tmp_path
    code, err = _main(capsys, "merge", *inputs, "--out", str(out))
    assert code == 2
    _one_line_error(err, "--out" if case == "out_is_dir" else "inputs")


def test_merge_same_experiment(tmp_path, capsys):
    a = _fake_csv(tmp_path / "a.csv", beta=0.1)
    b = _fake_csv(tmp_path / "b.csv", beta=0.01)
    code, err = _main(capsys, "merge", str(a), str(b), "--out", str(tmp_path / "m.csv"))
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [float(r["beta_i"]) for r in rows] == [0.01, 0.1]


def test_subprocess_exit_code_and_single_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "annealvi_lib", "grid", "gmm", "--seed",
                           str(2**63)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--seed" in proc.stderr


# ------------------------------------------------------------------ I/O faults: exit 1

def test_unwritable_cache_is_a_clean_error(tmp_path, capsys):
    # /proc accepts no new folders, even for root (CI runs as root, so chmod would not do)
    code, err = _main(capsys, "grid", "gmm", *TINY_ARGS, "--cache-dir", "/proc/annealvi-cache",
                      "--out", str(tmp_path))
    assert code == 1
    _one_line_error(err, "cache")


def test_read_only_cache_with_every_cell_cached_still_writes_csvs(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = run_grid("gmm", TINY, cache=cache, progress=False)

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(cache))

    # nothing may be written into the cache now (a read-only cache)
    monkeypatch.setattr(GC, "save_npz_atomic", refuse)
    monkeypatch.setattr(G, "_check_writable", refuse)
    again = run_grid("gmm", TINY, cache=cache, progress=False)
    assert again == first
    write_grid_csv(again, tmp_path / "out", "gmm")
    # and with a missing cell the same cache gives a CacheError naming it
    with pytest.raises(OSError, match="Permission denied"):
        run_grid("gmm", dataclasses.replace(TINY, t0s=(12.0,)), cache=cache, progress=False)


def test_overshooting_runs_are_failed_and_the_cli_warns(tmp_path, capsys, monkeypatch):
    # lr = 3: the JKO update overshoots and every run leaves the physical variance range at
    # some step (some end back in range: only the whole trajectory tells)
    cfg = dataclasses.replace(TINY, problem=dataclasses.replace(TINY.problem, lr=3.0), n_seeds=4,
                              t0s=(50.0,), n_iter_extra=30)
    res = run_grid("gmm", cfg, cache=tmp_path, progress=False)
    assert res.summary[0]["n_failed"] == 4 and res.summary[0]["n_collapsed"] == 0
    assert math.isnan(res.summary[0]["p_collapse"])
    assert all(r["var_min"] < 1e-2 or r["var_max"] > 1e3 for r in res.runs)
    # a stable learning rate: no run fails
    ok = run_grid("gmm", dataclasses.replace(cfg, problem=TINY.problem), cache=tmp_path,
                  progress=False)
    assert ok.summary[0]["n_failed"] == 0
    # the CLI says so when a grid has failed runs
    quick = get_preset("quick")
    hot = dataclasses.replace(quick, gmm_grid=dataclasses.replace(
        quick.gmm_grid, problem=dataclasses.replace(quick.gmm_grid.problem, lr=3.0)))
    monkeypatch.setattr(cli, "get_preset", lambda name: hot)
    code, err = _main(capsys, "grid", "gmm", *TINY_ARGS, "--t0", "50", "--n-iter-extra", "30",
                      "--cache-dir",
                      str(tmp_path / "c"), "--out", str(tmp_path))
    assert code == 0
    assert "warning: 3 run(s) in 1 cell(s) diverged" in err


# ------------------------------------------------------------------ library validation

@pytest.mark.parametrize("cells, match", [([(0.0, 50.0)], "beta_i"), ([(0.01, -5.0)], "t0"),
                                          ([(2.0, 50.0)], "beta_i"), ([(0.01, 1e9)], "t0"),
                                          ([(0.01,)], "cells"), ([], "cells"),
                                          ([(float("nan"), 50.0)], "beta_i")])
def test_run_grid_validates_cells(cells, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        run_grid("gmm", TINY, cells=cells, cache=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("shard", [(0, 0), (1, 1), (-1, 2), (2, 2), (0.5, 2), "0/2", (0,)])
def test_run_grid_validates_shard(shard, tmp_path):
    with pytest.raises(ValueError, match="shard"):
        run_grid("gmm", TINY, shard=shard, cache=tmp_path, progress=False)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "0"])
def test_run_grid_validates_master_seed(seed, tmp_path):
    with pytest.raises(ValueError, match="seed"):
        run_grid("gmm", TINY, master_seed=seed, cache=tmp_path, progress=False)


@pytest.mark.parametrize("cls, changes, match", [
    (GMMGridConfig, dict(seed=-1), "seed"),
    (GMMGridConfig, dict(seed=1.5), "seed"),
    (GMMGridConfig, dict(seed=2**63), "seed"),
    (GMMGridConfig, dict(t0s=()), "t0s"),
    (GMMGridConfig, dict(t0s="100"), "t0s"),
    (GMMGridConfig, dict(t0s=(1e9,)), "t0s"),
    (GMMGridConfig, dict(n_seeds=2.5), "n_seeds"),
    (GMMGridConfig, dict(n_seeds=True), "n_seeds"),
    (GMMGridConfig, dict(n_iter_extra=10**12), "n_iter_extra"),
    (GMMGridConfig, dict(log10_beta_r2=(1.5,)), "beta_i"),
    (GMMGridConfig, dict(log10_beta_r2=(float("inf"),)), "log10_beta_r2"),
    (GMMGridConfig, dict(sampler="slow"), "sampler"),
    (GMMGridConfig, dict(validation_cells=((0.0,),)), "validation_cells"),
    (GMMGridConfig, dict(problem="big"), "problem"),
    (RealNVPGridConfig, dict(include_beta_one="no"), "include_beta_one"),
    (RealNVPGridConfig, dict(out_init_scale=float("inf")), "out_init_scale"),
    (RealNVPGridConfig, dict(out_init_scale=-0.1), "out_init_scale"),
    (RealNVPGridConfig, dict(t0s=(10.5,)), "t0s"),
    (RealNVPGridConfig, dict(log10_beta_9=(), include_beta_one=False), "log10_beta_9"),
    (RealNVPGridConfig, dict(width=0), "width"),
    (Problem, dict(d=1), "d"),
    (Problem, dict(batch=2.5), "batch"),
    (DemoConfig, dict(seed=-3), "seed"),
    (OdeCheckConfig, dict(dims="64"), "dims"),
])
def test_config_classes_validate_every_field(cls, changes, match):
    with pytest.raises(ValueError, match=match):
        cls(**changes)


def test_config_classes_normalise_types():
    cfg = GMMGridConfig(n_seeds=4.0, seed=np.int64(3), t0s=[100, 200], log10_beta_r2=[-1, 0])
    assert type(cfg.n_seeds) is int and cfg.n_seeds == 4
    assert type(cfg.seed) is int and cfg.t0s == (100.0, 200.0)
    assert all(type(t) is float for t in cfg.t0s) and isinstance(cfg.log10_beta_r2, tuple)
    assert hash(cfg) == hash(GMMGridConfig(n_seeds=4, seed=3, t0s=(100.0, 200.0),
                                           log10_beta_r2=(-1.0, 0.0)))


def test_csv_carries_the_beta_asked_for(tmp_path, capsys):
    code, err = _main(capsys, "grid", "gmm", *TINY_ARGS, "--cache-dir", str(tmp_path / "c"),
                      "--out", str(tmp_path))
    assert code == 0, err
    text = (tmp_path / "gmm_grid.csv").read_text().splitlines()
    assert text[1].startswith("0.01,10.0,3,")


# ------------------------------------------------------------------ diverged runs

def test_realnvp_divergence_limits_flag_blown_up_runs():
    from annealvi_lib.metrics import divergence_limits, run_summary

    rng = np.random.default_rng(0)
    proj = rng.normal(size=(3, 256)) * np.array([[2.6], [1.0], [1e4]])
    log_w = -rng.random((3, 256)) * np.array([[2.0], [2.0], [1e8]])
    out = run_summary(proj, log_w, **divergence_limits(8, 3.0, 0.8))
    assert out["failed"].tolist() == [False, False, True]
    assert out["collapsed"].tolist() == [False, True, False]
    assert np.isnan(out["proj_std"][2])


# ------------------------------------------------------------------ signals

def _children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] != "Z":
                    kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_stops_the_workers(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "annealvi_lib", "grid", "gmm", "--preset",
                             "quick", "--seeds", "64", "--t0", "2000,3000", "--workers", "2",
                             "--no-progress", "--cache-dir", str(tmp_path / "c"), "--out",
                             str(tmp_path)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        kids = []
        # wait for both workers (spawned interpreters running spawn_main; the multiprocessing
        # resource tracker, if any, is a child too but not a worker)
        while time.time() < deadline and len(kids) < 2:
            time.sleep(0.2)
            kids = [k for k in _children(proc.pid) if b"spawn_main" in _cmdline(k)]
        assert len(kids) >= 2, "workers did not start"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline and any(os.path.exists(f"/proc/{k}") and
                                              _children_state(k) != "Z" for k in kids):
            time.sleep(0.5)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and _children_state(k) != "Z"]
        assert not alive, f"worker processes {alive} outlived the stopped run"
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def _children_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


# ------------------------------------------------------------------ found by a fresh-eyes review

@pytest.mark.parametrize("argv, option", [
    (["--t0", "10,10.0000000000001"], "--t0"),
    (["--t0", "10,10"], "--t0"),
    (["--beta-i", "0.01,0.01"], "--beta-i"),
    (["--beta-i", "1e-300"], "--beta-i"),
])
def test_duplicate_or_tiny_cells_exit_2(argv, option, tmp_path, capsys):
    code, err = _main(capsys, "grid", "gmm", *TINY_ARGS, *argv, "--cache-dir",
                      str(tmp_path / "c"), "--out", str(tmp_path))
    assert code == 2
    _one_line_error(err, option)


def test_run_grid_refuses_duplicate_cells_and_wrong_config(tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        run_grid("gmm", TINY, cells=[(0.01, 10.0), (0.01, 10.0000000000001)], cache=tmp_path)
    with pytest.raises(ValueError, match="cfg must be a RealNVPGridConfig"):
        run_grid("realnvp", TINY, cache=tmp_path)
    with pytest.raises(ValueError, match="cfg must be a GMMGridConfig"):
        run_grid("gmm", None, cache=tmp_path)


def test_csv_order_does_not_depend_on_the_order_of_the_cells(tmp_path):
    cfg = dataclasses.replace(TINY, log10_beta_r2=(0.0, -2.0), t0s=(12.0, 10.0))
    back = dataclasses.replace(TINY, log10_beta_r2=(-2.0, 0.0), t0s=(10.0, 12.0))
    a = write_grid_csv(run_grid("gmm", cfg, cache=tmp_path / "c", progress=False),
                       tmp_path / "a", "gmm")
    b = write_grid_csv(run_grid("gmm", back, cache=tmp_path / "c", progress=False),
                       tmp_path / "b", "gmm")
    assert [x.read_bytes() for x in a] == [x.read_bytes() for x in b]
    umask = os.umask(0)
    os.umask(umask)
    assert all((x.stat().st_mode & 0o777) == (0o666 & ~umask) for x in a)


def test_empty_shard_writes_both_files(tmp_path):
    res = run_grid("gmm", TINY, shard=(1, 2), cache=tmp_path / "c", progress=False)
    assert res.summary == [] and res.runs == []
    stale = tmp_path / "gmm_runs.csv"
    stale.write_text("old")
    g, r = write_grid_csv(res, tmp_path, "gmm")
    assert g.read_text().count("\n") == 1 and r.read_text().startswith("beta_i,t0,replicate")


@pytest.mark.parametrize("case", ["binary", "extra_field"])
def test_merge_unreadable_rows_name_the_file(case, tmp_path, capsys):
    a = _fake_csv(tmp_path / "a.csv")
    b = tmp_path / "b.csv"
    if case == "binary":
        b.write_bytes(b"\xff\xfe\x00bad")
    else:
        b.write_text(a.read_text().rstrip("\n") + ",extra\n")
    code, err = _main(capsys, "merge", str(a), str(b), "--out", str(tmp_path / "m.csv"))
    assert code == 2
    _one_line_error(err, "b.csv")


def test_unwritable_out_fails_before_computing(tmp_path, capsys):
    code, err = _main(capsys, "grid", "gmm", *TINY_ARGS, "--cache-dir", str(tmp_path / "c"),
                      "--out", "/proc/annealvi-out")
    assert code == 1
    _one_line_error(err, "--out")
    assert not (tmp_path / "c").exists()


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""

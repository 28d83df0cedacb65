"""One small cell of every grid and experiment of the book, computed at fixed seeds, and every
preset's configuration.

The values in ``tests/data/golden_cells.json`` and ``tests/data/golden_presets.json`` were written
by this file at the commit recorded in their provenance (b0412be, *before* the library was
reorganised into subpackages, issue 15); ``tests/test_layout.py`` recomputes them with the
current code. Only the import lines of this file may change when modules move; the
computations must not.

Regenerate both (only when a change of numbers or presets is intended, and say so in the
commit)::

    .venv/bin/python tests/golden_cells.py --write
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "data" / "golden_cells.json"
GOLDEN_PRESETS = HERE / "data" / "golden_presets.json"


def presets() -> dict:
    """Every preset as plain JSON data (``dataclasses.asdict``, keys sorted)."""
    from annealvi_lib.config import PRESET_NAMES, get_preset

    return json.loads(json.dumps({n: dataclasses.asdict(get_preset(n)) for n in PRESET_NAMES},
                                 sort_keys=True, default=str))


def compute() -> dict[str, dict[str, list]]:
    """name -> {field: list of numbers} for one cell of each grid (quick sizes, few seeds)."""
    from annealvi_lib.config import get_preset
    from annealvi_lib.experiments.grid import run_grid
    from annealvi_lib.experiments import ch1_mode_collapse as ch1
    from annealvi_lib.experiments import ch2_summary_statistics as ch2

    P = get_preset("quick")
    G, N, D, O = P.gmm_grid, P.realnvp_grid, P.demo, P.ode_check
    out: dict[str, dict[str, list]] = {}

    def runs(res, fields):
        return {f: [float(r[f]) for r in res.runs] for f in fields}

    gmm_fields = ("collapsed", "failed", "m1", "m2", "s", "var1", "var2")
    with tempfile.TemporaryDirectory() as cache:
        one = dataclasses.replace(G, log10_beta_r2=(-2.0,), t0s=(50.0,), n_seeds=4)
        # chapter 3's grid (fast sampler), the exact sampler, chapter 5's step family and
        # the batch scan's categorical sampling
        out["ch3_gmm_fast"] = runs(run_grid("gmm", one, cache=cache, progress=False), gmm_fields)
        out["ch3_gmm_exact"] = runs(run_grid("gmm", one, sampler="exact", cache=cache,
                                             progress=False), gmm_fields)
        out["ch5_gmm_step"] = runs(run_grid("gmm", dataclasses.replace(one, schedule="step"),
                                            cache=cache, progress=False), gmm_fields)
        cat = dataclasses.replace(one, problem=dataclasses.replace(
            one.problem, batch=32, sampling="categorical"))
        out["ch3_bscan_categorical"] = runs(run_grid("gmm", cat, cache=cache, progress=False),
                                            gmm_fields)
        # chapter 4's RealNVP grid: one annealed cell, two runs
        nvp = dataclasses.replace(N, log10_beta_9=(-1.0,), include_beta_one=False, t0s=(20.0,))
        res = run_grid("realnvp", nvp, cache=cache, progress=False)
        out["ch4_realnvp"] = runs(res, [k for k in res.runs[0] if k not in ("beta_i", "t0")
                                        and isinstance(res.runs[0][k], (int, float, np.number))])
    # chapter 2: one simulated run against the three ODEs
    val = ch2._validation(O)
    out["ch2_validation"] = {"sim": val.sim[:, ::20].ravel().tolist(),
                             "ode3": val.ode3[:, ::20].ravel().tolist(),
                             "ode5n": val.ode5n[:, ::20].ravel().tolist(),
                             "errors": val.errors.tolist()}
    # chapter 1: the three arms of the opening experiment, two seeds each
    arms = ch1.run_opening_experiment(D, n_seeds=2)
    out["ch1_opening"] = {name: np.asarray(run.traj.s)[:, ::20].ravel().tolist()
                          for name, run in arms.items()}
    return out


def compare(got: dict, want: dict, rtol: float = 1e-3, atol: float = 1e-4) -> list[str]:
    """Differences between two results of :func:`compute`, one line each (empty: the same)."""
    bad = []
    for name in want:
        if name not in got:
            bad.append(f"{name}: missing")
            continue
        for field, ref in want[name].items():
            a, b = np.asarray(got[name].get(field, []), float), np.asarray(ref, float)
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
                bad.append(f"{name}.{field}: {a[:4]} vs {b[:4]}")
    return bad


def main() -> int:
    if "--write" not in sys.argv:
        print(__doc__)
        return 2
    t = time.time()
    values = compute()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "annealvi_lib"],
                           capture_output=True, text=True, cwd=HERE).stdout.strip()
    prov = {"command": ".venv/bin/python tests/golden_cells.py --write",
            "commit": commit + ("+uncommitted library changes" if dirty else ""),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
            "runtime_s": round(time.time() - t, 1)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"provenance": prov, "values": values}, indent=1) + "\n")
    GOLDEN_PRESETS.write_text(json.dumps({"provenance": prov, "presets": presets()}, indent=1,
                                         sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} and {GOLDEN_PRESETS} in {prov['runtime_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

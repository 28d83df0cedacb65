"""Throughput of the GMM-student samplers (seed-steps per second), DESIGN section 6.

Measures, at the paper's d = 512 (compile excluded, ``block_until_ready``):

* the reduced O(B + d) sampler (``annealvi_lib.reduced``) at B = 1024 (and 8192), vmapped over
  seeds, and through the grid entry point ``simulate_reduced_betas`` (chunks of 64 runs);
* the exact O(B d) sampler (``annealvi_lib.student``) at B = 1024 and 8192, vmapped over seeds;
* the exact sampler as a plain per-seed Python loop over a jitted step (the naive baseline);
* the exact sampler with the PRNG implementations threefry2x32 / rbg / unsafe_rbg.

and projects the paper grid (64 cells x 100 seeds x (t0 + 100) steps = 3.52M seed-steps).
Keep it short: the machine is shared. Usage::

    python benchmarks/bench_gmm.py [--out results/bench_gmm.json] [--d 512] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from annealvi_lib import reduced as rd
from annealvi_lib import student as st
from annealvi_lib.schedules import Schedule
from annealvi_lib.targets import make_target

#: seed-steps of the paper grid: 8 beta_i x 100 seeds x sum over t0 = 100..800 of (t0 + 100)
PAPER_GRID_SEED_STEPS = 8 * 100 * sum(t0 + 100 for t0 in range(100, 801, 100))


def _time(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs after one warm-up (compile) call."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def _keys(n: int, impl: str = "threefry2x32"):
    ks = jax.random.split(jax.random.key(0, impl=impl), 2 * n)
    return ks[:n], ks[n:]


def bench_vmapped(kind: str, d: int, batch: int, n_seeds: int, n_iter: int, repeats: int,
                  impl: str = "threefry2x32") -> dict:
    target = make_target(d, 3.0, 0.8)
    sched = Schedule("exp", 0.01, 100.0)
    hyper = st.Hyper(0.05, batch)
    ik, nk = _keys(n_seeds, impl)
    if kind == "reduced_betas":      # the grid-runner entry point: traced schedule, chunked vmap
        betas = sched(jnp.arange(n_iter + 1))
        fn = lambda: rd.simulate_reduced_betas(ik, nk, target, betas, hyper, record=False,
                                               chunk=64)[0]
    else:
        sim = rd.simulate_reduced_seeds if kind == "reduced" else st.simulate_seeds
        fn = lambda: sim(ik, nk, target, sched, n_iter, hyper, record=False)[0]
    dt = _time(fn, repeats)
    rate = n_seeds * n_iter / dt
    return dict(sampler=kind, mode="vmap", d=d, batch=batch, n_seeds=n_seeds, n_iter=n_iter,
                key_impl=impl, seconds=dt, seed_steps_per_s=rate,
                paper_grid_minutes=PAPER_GRID_SEED_STEPS / rate / 60.0)


def bench_loop(d: int, batch: int, n_seeds: int, n_iter: int, repeats: int) -> dict:
    """Plain per-seed Python loop: one jitted exact step per call, seeds one after the other."""
    target = make_target(d, 3.0, 0.8)
    hyper = st.Hyper(0.05, batch)
    sched = Schedule("exp", 0.01, 100.0)
    step = jax.jit(lambda s, k, b: st.jko_step(s, k, target, b, hyper)[0])
    betas = [float(b) for b in sched(jnp.arange(n_iter))]
    ik, nk = _keys(n_seeds)

    def run():
        out = []
        for i in range(n_seeds):
            state = st.init_student(ik[i], d, 3.0, 1.0 / betas[0])
            for t, k in enumerate(jax.random.split(nk[i], n_iter)):
                state = step(state, k, betas[t])
            out.append(state.mu)
        return out

    dt = _time(run, repeats)
    rate = n_seeds * n_iter / dt
    return dict(sampler="exact", mode="python_loop", d=d, batch=batch, n_seeds=n_seeds,
                n_iter=n_iter, key_impl="threefry2x32", seconds=dt, seed_steps_per_s=rate,
                paper_grid_minutes=PAPER_GRID_SEED_STEPS / rate / 60.0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench_gmm.json")
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    d, rep = args.d, args.repeats
    rows = []

    def add(row):
        rows.append(row)
        print(f"{row['sampler']:13s} {row['mode']:11s} B={row['batch']:5d} S={row['n_seeds']:4d} "
              f"{row['key_impl']:12s} {row['seed_steps_per_s']:10.1f} seed-steps/s  "
              f"(paper grid {row['paper_grid_minutes']:8.1f} min)", flush=True)

    add(bench_vmapped("reduced", d, 1024, 64, 100, rep))
    add(bench_vmapped("reduced", d, 1024, 256, 50, rep))
    add(bench_vmapped("reduced_betas", d, 1024, 256, 50, rep))
    add(bench_vmapped("reduced", d, 8192, 32, 20, rep))
    # the exact sampler is memory-bound: one seed per compiled scan is fastest (measured
    # 2.7 ms/seed-step at S=1 against 5.8 at S=8), so show the scaling with S
    for n_seeds in (1, 2, 8):
        add(bench_vmapped("exact", d, 1024, n_seeds, 20, rep))
    for impl in ("rbg", "unsafe_rbg"):
        add(bench_vmapped("exact", d, 1024, 8, 10, rep, impl=impl))
    for n_seeds in (1, 4):
        add(bench_vmapped("exact", d, 8192, n_seeds, 4, rep))
    add(bench_loop(d, 1024, 2, 10, rep))
    add(bench_loop(d, 8192, 1, 4, rep))
    result = dict(
        d=d, paper_grid_seed_steps=PAPER_GRID_SEED_STEPS, rows=rows,
        machine=dict(platform=platform.platform(), cpu_count=os.cpu_count(),
                     jax=jax.__version__, devices=[str(x) for x in jax.devices()],
                     load_average=os.getloadavg()),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""Throughput of the GMM-student samplers (seed-steps per second), DESIGN section 6.

Measures, at the paper's d = 512 (compile excluded, ``block_until_ready``):

* the reduced O(B + d) sampler (``annealvi_lib.models.reduced``) at B = 1024 (and 8192), vmapped over
  seeds, and through the grid entry point ``simulate_reduced_betas`` (``reduced.LANES`` runs per
  call);
* the reduced sampler side by side with the one landed before it (``LANDED_COMMIT``, imported
  from git), at 2048 and 8192 samples per step, stratified and categorical, in interleaved
  rounds (median of the per-round ratios), and where its time goes (``profile_reduced``);
* the exact O(B d) sampler (``annealvi_lib.models.student``) at B = 1024 and 8192, vmapped over seeds;
* the exact sampler as a plain per-seed Python loop over a jitted step (the naive baseline);
* the exact sampler with the PRNG implementations threefry2x32 / rbg / unsafe_rbg.

and projects the paper grid (64 cells x 100 seeds x (t0 + 100) steps = 3.52M seed-steps).
Keep it short: the machine is shared. Usage::

    python benchmarks/bench_gmm.py [--out results/bench_gmm.json] [--d 512] [--repeats 2]
        [--versions-out results/bench_reduced_versions.json] [--only-versions] [--rounds 3]

The landed-vs-new comparison is meant for one single-threaded process on one core, as the grid's
workers run: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0 python ...``; the JSON
records the flags and the cores it was allowed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from annealvi_lib.models import reduced as rd
from annealvi_lib.models import reduced_grads as rgrad
from annealvi_lib.models import reduced_noise as rnoise
from annealvi_lib._rng import fast_threefry
from annealvi_lib.models import student as st
from annealvi_lib.models.schedules import Schedule
from annealvi_lib.models.targets import make_target

#: The reduced sampler before the issue-12 rewrite (erfinv normals, per-sample labels,
#: per-output reductions, 64 runs per call): kept callable for the side-by-side comparison.
LANDED_COMMIT = "a28601a"
#: Runs per call of the landed sampler in the grid runner (seeding.lanes(100, 64)).
LANDED_GRID_WIDTH = 50

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
        fn = lambda: rd.simulate_reduced_betas(ik, nk, target, betas, hyper, record=False)[0]
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


def landed_reduced():
    """``annealvi_lib/reduced.py`` as of :data:`LANDED_COMMIT` (before the subpackages), imported
    as a module of ``annealvi_lib.models`` (its relative imports resolve to today's modules, whose
    used names are unchanged; those of the top-level plumbing get one more dot); ``None`` when git
    or the commit is not available."""
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "show", f"{LANDED_COMMIT}:annealvi_lib/reduced.py"],
                             cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    src = re.sub(r"^from \.(_rng|_validate|seeding|config) import", r"from ..\1 import", src,
                 flags=re.M)
    spec = importlib.util.spec_from_loader("annealvi_lib.models._landed_reduced", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "annealvi_lib.models"
    exec(compile(src, f"reduced.py@{LANDED_COMMIT}", "exec"), mod.__dict__)
    return mod


def _version_runner(version: str, landed, hyper, target, betas):
    """jit(vmap) of whole runs through the grid's entry point of each version."""
    def one(key):
        k_init, k_noise = jax.random.split(key)
        mod = landed if version == "landed" else rd
        state0 = mod.init_reduced(k_init, target, 1.0 / betas[0])
        if version == "landed":
            return st.run_with_range(landed.reduced_step, k_noise, state0, target, betas,
                                     hyper)[0].m
        return rd.run_with_range(k_noise, state0, target, betas, hyper)[0].m

    return jax.jit(jax.vmap(one))


def bench_versions(d: int, rounds: int, n_seeds: int = 200, n_iter: int = 50) -> list[dict]:
    """Landed against new reduced sampler, side by side: for each protocol and total samples per
    step N in {2048, 8192}, the landed sampler at its grid width (LANDED_GRID_WIDTH runs per
    call) and at 4, the new one at ``reduced.LANES``; ``rounds`` interleaved rounds of
    ``n_seeds`` runs x ``n_iter`` steps each; rows give the median rate and, for the new
    sampler, the median over rounds of its paired ratio to each landed variant."""
    landed = landed_reduced()
    if landed is None:
        print(f"landed sampler ({LANDED_COMMIT}) not available (no git history): skipped")
        return []
    target = make_target(d, 3.0, 0.8)
    betas = Schedule("exp", 0.01, 100.0)(jnp.arange(n_iter + 1))
    rows = []
    for total in (2048, 8192):
        for sampling in ("stratified", "categorical"):
            batch = total if sampling == "categorical" else total // 2
            hyper = st.Hyper(0.05, batch, sampling)
            variants = {("landed", LANDED_GRID_WIDTH): None, ("landed", 4): None,
                        ("new", rd.LANES): None}
            fns = {v: _version_runner(v[0], landed, hyper, target, betas) for v in variants}
            keys = jax.random.split(jax.random.key(0), n_seeds)
            times = {v: [] for v in variants}

            def run(v):
                width = v[1]
                out = None
                for start in range(0, n_seeds - width + 1, width):
                    out = fns[v](keys[start:start + width])
                return out

            with fast_threefry():
                for v in variants:                          # compile
                    jax.block_until_ready(run(v))
                for rnd in range(rounds):
                    # alternate the order of the variants from round to round
                    for v in (list(variants) if rnd % 2 == 0 else list(variants)[::-1]):
                        t = time.perf_counter()
                        jax.block_until_ready(run(v))
                        times[v].append(time.perf_counter() - t)
            done = {v: (n_seeds // v[1]) * v[1] * n_iter for v in variants}
            rates = {v: [done[v] / t for t in times[v]] for v in variants}
            new = ("new", rd.LANES)
            for v in variants:
                row = dict(sampler="reduced", mode=f"{v[0]}_w{v[1]}", version=v[0],
                           commit=LANDED_COMMIT if v[0] == "landed" else "HEAD", d=d,
                           batch=batch, sampling=sampling, total_samples=total,
                           n_seeds=n_seeds, n_iter=n_iter, runs_per_call=v[1],
                           key_impl="threefry2x32", rounds=rounds,
                           seed_steps_per_s=statistics.median(rates[v]),
                           us_per_seed_step=1e6 / statistics.median(rates[v]),
                           paper_grid_minutes=PAPER_GRID_SEED_STEPS
                           / statistics.median(rates[v]) / 60.0)
                if v == new:
                    for ref in variants:
                        if ref[0] == "landed":
                            row[f"ratio_vs_landed_w{ref[1]}"] = statistics.median(
                                a / b for a, b in zip(rates[new], rates[ref]))
                rows.append(row)
    return rows


def profile_reduced(d: int, total: int = 8192, width: int | None = None,
                    repeats: int = 20) -> list[dict]:
    """Where a step of the new reduced sampler spends its time, at ``total`` samples per step
    (stratified), ``width`` runs vmapped (default ``reduced.LANES``): the threefry bits alone,
    the full noise draw (bits, Box-Muller, Wilson-Hilferty, count), the 6 x 8 sums on a drawn
    noise, and a whole step inside the runner; plus the limit the generator sets (one 32-bit word
    per normal) and the bytes a step moves."""
    width = width or rd.LANES
    target = make_target(d, 3.0, 0.8)
    hyper = st.Hyper(0.05, total // 2)
    n = rnoise.n_samples(hyper)
    n_words = 3 * n + 4 + -(-n // 32)      # as reduced.draw_step_noise draws them
    keys = jax.random.split(jax.random.key(1), width)
    mu = rgrad.span_coords(jnp.array([0.3, -0.2]), jnp.array(0.1), 3.0)
    var = jnp.array([1.1, 0.9])
    noise = jax.vmap(lambda k: rnoise.draw_step_noise(k, hyper, d))(keys)

    def timed(fn, arg):
        f = jax.jit(fn)
        with fast_threefry():
            jax.block_until_ready(f(arg))
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(f(arg))
                best = min(best, time.perf_counter() - t)
        return best / width * 1e6

    def total(tree):      # every output element is used, so nothing can be skipped by XLA
        return sum(jnp.sum(a.astype(jnp.float32)) for a in jax.tree.leaves(tree))

    parts = {
        "threefry_bits": timed(jax.vmap(lambda k: total(
            jax.random.bits(k, (n_words,), jnp.uint32) >> 16)), keys),
        "draw_step_noise (includes the bits)": timed(jax.vmap(lambda k: total(
            rnoise.draw_step_noise(k, hyper, d))), keys),
        "noise_sums (on a drawn noise)": timed(jax.vmap(lambda nz: rgrad.noise_sums(
            mu, var, nz, 3.0, 0.8, d)), noise),
    }
    n_iter = 50
    betas = Schedule("exp", 0.01, 100.0)(jnp.arange(n_iter + 1))
    runner = _version_runner("new", None, hyper, target, betas)
    parts["full_step"] = timed(runner, keys) / n_iter
    # cost per value of the transcendental functions a normal transform could use (4N values)
    per_value = {}
    for name, fn in (("erf_inv", jax.lax.erf_inv), ("sin", jnp.sin), ("cos", jnp.cos),
                     ("log", jnp.log), ("uniform only", lambda u: u)):
        per_value[name] = timed(jax.vmap(lambda k, fn=fn: jnp.sum(fn(jax.random.uniform(
            k, (4 * n,), minval=0.01, maxval=0.99)))), keys) / (4 * n) * 1e3      # ns
    # runs per compiled call (the runner's width): seed-steps per second at 2 .. 50
    width_rates = {}
    for w in (2, 4, 8, 16, 50):
        kw = jax.random.split(jax.random.key(2), w)
        width_rates[w] = 1e6 / (timed(runner, kw) * width / w / n_iter)
    words_per_s = n_words / (parts["threefry_bits"] * 1e-6)
    # an estimate, not a measurement: per sample, 3 words written and read; 4 noise floats
    # (z, r^2) written and read; the product's 4 left and 12 right rows written and read
    bytes_moved = n * 4 * (2 * 3 + 2 * 4 + 2 * 4 + 2 * 12)
    rows = [dict(sampler="reduced", mode="profile", part=k, d=d, batch=hyper.batch,
                 sampling="stratified", total_samples=n, n_seeds=width, key_impl="threefry2x32",
                 us_per_seed_step=v, share_of_step=v / parts["full_step"]) for k, v in parts.items()]
    rows += [dict(sampler="reduced", mode="per_value", part=k, d=d, total_samples=n,
                  n_seeds=width, ns_per_value=v - per_value["uniform only"])
             for k, v in per_value.items() if k != "uniform only"]
    rows += [dict(sampler="reduced", mode="width", part=f"{w} runs per call", d=d,
                  batch=hyper.batch, sampling="stratified", total_samples=n, runs_per_call=w,
                  n_seeds=w, seed_steps_per_s=r, paper_grid_minutes=PAPER_GRID_SEED_STEPS / r / 60.0)
             for w, r in width_rates.items()]
    rows.append(dict(sampler="reduced", mode="limit", part="generator", d=d, batch=hyper.batch,
                     sampling="stratified", total_samples=n, n_seeds=width,
                     key_impl="threefry2x32", words_per_s=words_per_s,
                     normals_per_s=words_per_s * 4 / 3,      # 4 normals from 3 words
                     us_per_seed_step=parts["threefry_bits"],
                     bytes_per_seed_step_estimate=bytes_moved,
                     gbytes_per_s=bytes_moved / (parts["full_step"] * 1e-6) / 1e9))
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench_gmm.json")
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the landed-vs-new comparison")
    parser.add_argument("--only-versions", action="store_true",
                        help="only the landed-vs-new comparison and the profile")
    parser.add_argument("--versions-out", default="results/bench_reduced_versions.json",
                        help="where the landed-vs-new comparison and the profile go")
    args = parser.parse_args(argv)
    d, rep = args.d, args.repeats
    rows = []

    def add(row):
        rows.append(row)
        if "seed_steps_per_s" not in row:
            value = row.get("us_per_seed_step", row.get("ns_per_value"))
            unit = "us/seed-step" if "us_per_seed_step" in row else "ns/value"
            print(f"{row['sampler']:13s} {row['mode']:11s} {row['part']:36s} {value:8.2f} {unit}",
                  flush=True)
            return
        print(f"{row['sampler']:13s} {row['mode']:11s} B={row['batch']:5d} S={row['n_seeds']:4d} "
              f"{row.get('sampling', 'stratified'):11s} {row['seed_steps_per_s']:10.1f} "
              f"seed-steps/s  (paper grid {row['paper_grid_minutes']:8.1f} min)"
              + "".join(f"  {k}={v:.2f}" for k, v in row.items() if k.startswith("ratio")),
              flush=True)

    for row in bench_versions(d, args.rounds):
        add(row)
    for row in profile_reduced(d):
        add(row)
    versions = _write(args.versions_out, d, rows)
    if args.only_versions:
        return versions
    rows = []
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
    return _write(args.out, d, rows)


def _commit() -> str:
    """HEAD, marked when the library or this benchmark has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "annealvi_lib",
                                "benchmarks/bench_gmm.py"], cwd=root, capture_output=True,
                               text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+uncommitted changes" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _write(path, d, rows) -> dict:
    result = dict(
        d=d, paper_grid_seed_steps=PAPER_GRID_SEED_STEPS, rows=rows, commit=_commit(),
        machine=dict(platform=platform.platform(), cpu=_cpu_model(), cpu_count=os.cpu_count(),
                     cores_used=len(os.sched_getaffinity(0)),
                     xla_flags=os.environ.get("XLA_FLAGS", ""),
                     jax=jax.__version__, devices=[str(x) for x in jax.devices()],
                     load_average=os.getloadavg()),
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

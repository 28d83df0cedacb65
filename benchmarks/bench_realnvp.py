"""Throughput of RealNVP training (seed-steps per second) against the number of vmapped seeds.

Times the compiled training scan (``realnvp._chunk_jit``: sampling, loss, gradient, Adam) for a
few steps, after one warm-up call (compile time excluded), at the active ``book`` preset
architecture and at the paper architecture (d=128, width 512, 8 layers, 3 hidden layers,
batch 1024). The S = 1 row is the cost of a plain per-seed loop.

    python benchmarks/bench_realnvp.py [--out results/bench_realnvp.json] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp

from annealvi_lib.models import realnvp as rn
from annealvi_lib.models import realnvp_training as rtrain
from annealvi_lib.config import get_preset
from annealvi_lib.models.targets import log_partition, log_prob


def bench(cfg, seeds: int, steps: int, repeats: int) -> dict:
    """Seed-steps/s of ``steps`` annealed training steps for ``seeds`` vmapped flows."""
    spec = rn.spec_from_config(cfg)
    target = rtrain.grid_target(cfg, 0)
    keys = jax.random.split(jax.random.key(0), seeds)
    params, opt, k_noise, _ = rtrain._init_jit(keys, spec=spec, lr=cfg.lr)
    kw = dict(spec=spec, sched_name="exp", n_steps=steps, batch=cfg.batch, lr=cfg.lr,
              logp=log_prob, log_z=log_partition)
    args = (jnp.int32(10**6), target, target.mu_star, jnp.float32(0.1), jnp.float32(100.0))

    def call(p, o, start):
        return rtrain._chunk_jit(p, o, k_noise, jnp.int32(start), *args, **kw)

    t = time.perf_counter()
    params, opt, rec = call(params, opt, 0)             # compile + warm up
    jax.block_until_ready(rec)
    compile_s = time.perf_counter() - t
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        params, opt, rec = call(params, opt, (r + 1) * steps)
        jax.block_until_ready((params, rec))
        times.append(time.perf_counter() - t)
    best = min(times)
    return {"seeds": seeds, "steps": steps, "best_s": best, "compile_s": compile_s,
            "seed_steps_per_s": seeds * steps / best, "ms_per_seed_step": 1e3 * best / (seeds * steps)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/bench_realnvp.json")
    ap.add_argument("--seeds", default="1,2,4,8", help="vmapped seed counts (book architecture)")
    ap.add_argument("--paper-seeds", default="1,2,4,8", help="seed counts at paper architecture")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (book architecture)")
    ap.add_argument("--paper-steps", type=int, default=2, help="timed steps (paper architecture)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args(argv)
    book = get_preset("book").realnvp_grid
    paper = get_preset("paper").realnvp_grid
    rows = []
    for name, cfg, seeds, steps in (("book", book, a.seeds, a.steps),
                                    ("paper", paper, a.paper_seeds, a.paper_steps)):
        for s in (int(v) for v in seeds.split(",") if v):
            r = bench(cfg, s, steps, a.repeats)
            r.update(arch=name, d=cfg.d, width=cfg.width, n_layers=cfg.n_layers,
                     depth=cfg.depth, batch=cfg.batch)
            rows.append(r)
            print(f"{name:5s} d={cfg.d:<4d} width={cfg.width:<4d} L={cfg.n_layers} B={cfg.batch:<5d}"
                  f" seeds={s:<2d} {r['seed_steps_per_s']:10.1f} seed-steps/s "
                  f"({r['ms_per_seed_step']:8.2f} ms/seed-step, compile {r['compile_s']:.1f} s)",
                  flush=True)
    info = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    print("wrote", a.out)


if __name__ == "__main__":
    main()

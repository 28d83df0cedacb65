"""Deterministic per-run PRNG keys derived from (master seed, cell, replicate).

A run's key never depends on how runs are chunked, sharded or ordered: it is
``fold_in(fold_in(key(master_seed), cell_id(cell)), replicate)``, where ``cell_id`` is a stable
31-bit hash of the cell's parameters (so adding cells to a grid never changes existing ones).
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["cell_id", "run_keys", "lanes", "padded_blocks"]


def cell_id(*values) -> int:
    """Stable 31-bit integer identifying a grid cell from its parameter values.

    Floats are formatted with 12 significant digits so that ``0.1 + 0.2`` and ``0.3`` agree.
    """
    parts = []
    for v in values:
        if isinstance(v, (float, np.floating)):
            parts.append(f"{float(v):.12g}")
        else:
            parts.append(str(v))
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_keys(master_seed: int, cell: tuple, replicates) -> jax.Array:
    """Typed PRNG keys for the given replicate indices of one cell.

    Args:
      master_seed: the experiment's master seed (int).
      cell: tuple of the cell's parameter values, e.g. ``(beta_i, t0)``.
      replicates: integer array of replicate indices, shape (n,).
    Returns:
      keys of shape (n,).
    """
    base = jax.random.fold_in(jax.random.key(int(master_seed)), cell_id(*cell))
    reps = jnp.asarray(np.asarray(replicates, dtype=np.int64).astype(np.uint32))
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(reps)


def lanes(n_seeds: int, max_lanes: int) -> int:
    """Runs per compiled call: the fewest blocks of at most ``max_lanes`` runs that hold
    ``n_seeds``, balanced (100 seeds, 64 lanes -> 2 blocks of 50). A function of the
    configuration only, so every run of a grid uses one program shape."""
    n_blocks = -(-n_seeds // max_lanes)
    return -(-n_seeds // n_blocks)


def padded_blocks(n: int, width: int):
    """Cover runs ``0 .. n-1`` with blocks of exactly ``width`` indices, the last one padded by
    repeating ``n - 1``: yields ``(idx, keep)`` with ``idx`` of shape (width,) and ``keep`` the
    number of leading entries that are real runs. Every block has the same shape, so one
    compiled program serves all of them."""
    for start in range(0, n, width):
        yield np.arange(start, start + width).clip(max=n - 1), min(width, n - start)

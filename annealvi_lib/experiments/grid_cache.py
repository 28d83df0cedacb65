"""The grid runner's on-disk cache of cells: one ``.npz`` per cell, written atomically with its
identity (study, grid id, beta_i, t0, seeds), so that a file copied over another cell's name or
from another grid is recomputed rather than reused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..cache import load_npz, probe_writable, save_npz_atomic
from ..seeding import cell_id

__all__ = ["CacheError"]


class CacheError(OSError):
    """The results cache cannot be written (read-only, a file in the way, ...)."""


def _cell_path(root: Path, cell) -> Path:
    return root / f"cell_{cell_id(*cell):010d}.npz"


def _cell_identity(study: str, root: Path, cell, n_seeds: int) -> dict:
    """What a cell file must say about itself: a file copied over another cell's name, or from
    another grid, does not match and is recomputed."""
    return {"_study": np.array(study), "_grid_id": np.array(root.name),
            "_beta_i": np.array(float(cell[0])), "_t0": np.array(float(cell[1])),
            "_n_seeds": np.array(int(n_seeds))}


def _load_cell(path: Path, identity: dict, fields: Iterable[str]):
    """Load a cached cell; ``None`` if missing, unreadable, inconsistent or of another identity
    (then it is redone)."""
    data = load_npz(path)
    if data is None:
        return None
    n_seeds = int(identity["_n_seeds"])
    if not set(fields) <= set(data) or any(data[k].shape != (n_seeds,) for k in fields):
        return None
    if any(k not in data or data[k].shape != () or data[k].item() != v.item()
           for k, v in identity.items()):
        return None
    return {k: data[k] for k in fields}


def _save_cell(path: Path, data: dict, identity: dict) -> None:
    """Atomic write of a cell with its identity: a reader never sees a half-written file."""
    try:
        save_npz_atomic(path, {**{k: np.asarray(v) for k, v in data.items()}, **identity})
    except OSError as exc:
        raise CacheError(f"cannot write the results cache {path.parent}: "
                         f"{exc.strerror or exc}") from None


def _check_writable(root: Path) -> None:
    """Fail before any computation when the cache folder cannot be created or written."""
    try:
        probe_writable(root)
    except OSError as exc:
        raise CacheError(f"cannot write the results cache {root}: {exc.strerror or exc} "
                         "(choose another --cache-dir or $ANNEALVI_CACHE)") from None

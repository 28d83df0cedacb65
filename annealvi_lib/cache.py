"""On-disk result cache helpers: atomic ``.npz`` writes and source hashes for cache keys."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["save_npz_atomic", "load_npz", "source_hash", "file_mode", "probe_writable"]


def save_npz_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write ``data`` (name -> array) to ``path`` atomically: a temporary file in the same folder
    is renamed over the target, so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.fchmod(fd, file_mode())        # an ordinary file's mode, not mkstemp's 0600
    os.close(fd)
    try:
        np.savez(tmp, **data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def file_mode() -> int:
    """The mode a newly created file gets (0666 less the umask), for atomic writes that go
    through ``mkstemp`` (which creates 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def probe_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and write (then remove) a temporary file in it; raises
    ``OSError`` when that is impossible, so that a run fails before computing anything."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def load_npz(path: str | os.PathLike) -> dict | None:
    """All arrays of an ``.npz`` file, or ``None`` if it is missing or unreadable (a corrupt cache
    file is then recomputed by the caller)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except Exception:
        return None


def source_hash(*module_files: str) -> str:
    """Short hash of library source files (names relative to the package folder), so that cached
    results are recomputed after a code change even without a version bump."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in module_files:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:12]

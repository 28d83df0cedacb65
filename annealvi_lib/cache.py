"""On-disk result cache helpers: atomic ``.npz`` writes and source hashes for cache keys."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["save_npz_atomic", "load_npz", "source_hash", "file_mode", "probe_writable",
           "location_free", "SUBPACKAGES"]


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


#: the package's subpackages (a relative import naming one of them is a location, not code)
SUBPACKAGES = ("models", "theory", "experiments", "figures")
_RELATIVE_IMPORT = re.compile(r"^([ \t]*)from (\.+)([\w.]*) import ", re.M)
_DOTTED_LOCATION = re.compile(r"\bannealvi_lib\.(?:" + "|".join(SUBPACKAGES) + r")\.(?=\w)")


def location_free(source: str) -> str:
    """A module's source with its relative imports written as if every module sat in one flat
    package: ``from ..models.schedules import Schedule`` becomes ``from .schedules import
    Schedule`` and ``from ..theory import collapse`` becomes ``from . import collapse``; dotted
    names in docstrings and messages lose their subpackage (``annealvi_lib.models.schedules`` ->
    ``annealvi_lib.schedules``).

    What is imported (module leaf names, names and aliases) is kept, only where it lives is
    dropped, so that moving a file between subpackages leaves its cache keys unchanged while
    any change of code, or of which module or name is imported, changes them. Module leaf names
    are unique in the package (checked by the test suite), so the flat form is unambiguous. For
    a module written in the flat form (the layout before the subpackages) this is the identity.
    """
    def flat(m: re.Match) -> str:
        leaf = m.group(3).rsplit(".", 1)[-1]
        if leaf in SUBPACKAGES:
            leaf = ""
        return f"{m.group(1)}from .{leaf} import "

    return _DOTTED_LOCATION.sub("annealvi_lib.", _RELATIVE_IMPORT.sub(flat, source))


def source_hash(*module_files: str, functions=(), extra: str = "") -> str:
    """Short hash of library source, so that cached results are recomputed after a code change
    even without a version bump.

    Args:
      module_files: paths relative to the package folder, e.g. ``"models/student.py"``.
      functions: functions whose own source is hashed too (e.g. the one that computes a cached
        result, when its module is not listed whole). Only functions: ``inspect.getsource`` of a
        class parses its module with ``ast``, which on CPython 3.11 is not safe while another
        thread (e.g. IPython compiling a cell) uses the parser.
      extra: any further text the results depend on (e.g. the names of a result's fields).

    The hash covers each file's and function's :func:`location_free` text, in the order given:
    editing the code of a listed module invalidates the cache; moving it to another subpackage
    (and updating the imports that name it) does not. The file *names* are not hashed, for the
    same reason.
    """
    import inspect

    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in module_files:
        h.update(location_free((here / name).read_text()).encode())
    for fn in functions:
        h.update(location_free(inspect.getsource(fn)).encode())
    h.update(extra.encode())
    return h.hexdigest()[:12]

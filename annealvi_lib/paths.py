"""Where results and figures live.

* results cache: ``$ANNEALVI_CACHE`` if set, else ``<repo>/results`` (gitignored);
* figures: ``$ANNEALVI_FIGURES`` if set, else ``<repo>/figures`` (gitignored).

``<repo>`` is the folder holding the installed (editable) package, so notebooks running from
``notebooks/`` and the CLI running anywhere write to the same places.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "cache_dir", "figures_dir", "load_benchmark"]


def repo_root() -> Path:
    """The repository root (parent of the ``annealvi_lib`` package folder)."""
    return Path(__file__).resolve().parents[1]


def cache_dir(override: str | os.PathLike | None = None, create: bool = True) -> Path:
    """Results cache folder: ``override``, ``$ANNEALVI_CACHE`` or ``<repo>/results`` (created if
    missing, unless ``create=False``)."""
    return _folder(override, "ANNEALVI_CACHE", "results", create)


def figures_dir(override: str | os.PathLike | None = None, create: bool = True) -> Path:
    """Figure output folder: ``override``, ``$ANNEALVI_FIGURES`` or ``<repo>/figures`` (created if
    missing, unless ``create=False``)."""
    return _folder(override, "ANNEALVI_FIGURES", "figures", create)


def _folder(override, env: str, default: str, create: bool) -> Path:
    path = Path(override or os.environ.get(env) or repo_root() / default)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def load_benchmark(name: str) -> tuple[dict, str] | None:
    """A benchmark's JSON (``name`` e.g. ``"bench_gmm"``): ``<cache>/<name>.json`` (fresh, this
    machine, written by ``make bench``) if present, else the measurements committed in
    ``benchmarks/reference/`` (the reference CPU) or ``benchmarks/measured/`` (another machine,
    named in the file); an unreadable file is skipped. Returns ``(data, source path relative
    to the repo)`` or ``None``."""
    import json

    for path in (cache_dir() / f"{name}.json",
                 repo_root() / "benchmarks" / "reference" / f"{name}.json",
                 repo_root() / "benchmarks" / "measured" / f"{name}.json"):
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):   # unreadable: fall back to the next candidate
                continue
            try:
                source = str(path.relative_to(repo_root()))
            except ValueError:
                source = str(path)
            return data, source
    return None

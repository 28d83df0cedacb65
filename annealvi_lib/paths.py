"""Where results and figures live.

* results cache: ``$ANNEALVI_CACHE`` if set, else ``<repo>/results`` (gitignored);
* figures: ``$ANNEALVI_FIGURES`` if set, else ``<repo>/figures`` (gitignored).

``<repo>`` is the folder holding the installed (editable) package, so notebooks running from
``notebooks/`` and the CLI running anywhere write to the same places.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "cache_dir", "figures_dir"]


def repo_root() -> Path:
    """The repository root (parent of the ``annealvi_lib`` package folder)."""
    return Path(__file__).resolve().parents[1]


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Results cache folder (created if missing): ``override``, ``$ANNEALVI_CACHE`` or ``<repo>/results``."""
    path = Path(override or os.environ.get("ANNEALVI_CACHE") or repo_root() / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(override: str | os.PathLike | None = None) -> Path:
    """Figure output folder (created if missing): ``override``, ``$ANNEALVI_FIGURES`` or ``<repo>/figures``."""
    path = Path(override or os.environ.get("ANNEALVI_FIGURES") or repo_root() / "figures")
    path.mkdir(parents=True, exist_ok=True)
    return path

"""Registry of the book's figures, so that any of them can be regenerated from the command line.

Each book figure is produced by one function ``fn(preset) -> matplotlib.figure.Figure`` that
reads cached results when present and computes them otherwise; the chapter notebooks call the
same plotting functions, so the CLI and the book draw identical figures. A chapter registers a
figure with one decorator::

    @register("ch3_heatmap", chapter=3, description="collapse probability over (beta_i, t0)")
    def _ch3_heatmap(preset):
        result = run_grid("gmm", preset.gmm_grid, progress=None)   # cached on disk
        return plot_heatmap(result)

``python -m annealvi_lib figures [NAME ...] [--preset P] [--out DIR] [--list]`` saves each one
as PDF and 300-dpi PNG with :func:`annealvi_lib.figures.style.save_figure`.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import Preset

__all__ = ["FigureSpec", "register", "registry", "get", "select", "render", "save"]


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: its file name (``chNN_*``), chapter number, one-line description and
    the function ``fn(preset) -> Figure`` that draws it."""

    name: str
    chapter: int
    description: str
    fn: Callable[[Preset], object]


# Populated when the chapter modules (_CHAPTER_MODULES) are imported, by their @register
# decorators; read-only afterwards.
_REGISTRY: dict[str, FigureSpec] = {}


def register(name: str, chapter: int, description: str):
    """Decorator registering ``fn(preset) -> Figure`` as the book figure ``name``.

    Args:
      name: figure file name without extension, starting with the chapter prefix ``chNN_``.
      chapter: chapter number (>= 1).
      description: one line shown by ``figures --list``.
    Raises ValueError for a malformed or duplicate name.
    """
    if not (isinstance(chapter, int) and chapter >= 1):
        raise ValueError(f"chapter must be an integer >= 1, got {chapter!r}")
    if not name.startswith(f"ch{chapter}_") or not name.replace("_", "").isalnum():
        raise ValueError(f"name must look like 'ch{chapter}_<word>' (letters, digits, _), got {name!r}")

    def deco(fn):
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"name: figure {name!r} is already registered")
        _REGISTRY[name] = FigureSpec(name, chapter, description, fn)
        return fn

    return deco


def registry() -> dict[str, FigureSpec]:
    """All registered figures, sorted by chapter then name."""
    _load_chapter_modules()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].chapter, kv[0])))


def get(name: str) -> FigureSpec:
    """The figure called ``name``; ValueError listing the known names otherwise."""
    reg = registry()
    if name not in reg:
        raise ValueError(f"NAME: unknown figure {name!r}; known: {', '.join(reg)}")
    return reg[name]


def select(patterns: list[str] | tuple[str, ...] = ()) -> list[FigureSpec]:
    """Figures matching any of ``patterns`` (exact names or shell globs such as ``ch1_*``);
    all figures when ``patterns`` is empty. An unmatched pattern raises ValueError."""
    reg = registry()
    if not patterns:
        return list(reg.values())
    out: dict[str, FigureSpec] = {}
    for pat in patterns:
        hits = [n for n in reg if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            get(pat)   # raises with the list of known names
        for n in hits:
            out[n] = reg[n]
    return list(out.values())


def render(name: str, preset: Preset):
    """Draw the figure ``name`` at ``preset`` (book style); returns the matplotlib Figure."""
    from .style import set_style

    set_style()
    return get(name).fn(preset)


def save(name: str, preset: Preset, out_dir: str | os.PathLike | None = None) -> list[Path]:
    """Draw ``name`` and save it as PNG (300 dpi), PDF and the CSV of its data into ``out_dir``;
    returns the paths."""
    import matplotlib.pyplot as plt

    from .style import save_figure

    fig = render(name, preset)
    try:
        return save_figure(fig, name, out_dir)
    finally:
        plt.close(fig)


def _load_chapter_modules() -> None:
    """Import the modules that register figures of later chapters, when they provide any.

    A chapter module registers its figures at import time with :func:`register`; listing it
    here is the only other change needed. Missing modules are skipped (chapters in progress).
    """
    import importlib

    for mod in _CHAPTER_MODULES:
        try:
            importlib.import_module(f"annealvi_lib.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"annealvi_lib.{mod}":
                raise


#: modules (names relative to the package) that define the ``@register``-ed figures, one per chapter
_CHAPTER_MODULES: tuple[str, ...] = ("figures.ch1", "figures.ch2", "figures.ch3", "figures.ch4",
                                     "figures.ch5")

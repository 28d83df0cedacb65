"""Shared pytest fixtures. The whole suite runs at the ``quick`` preset, and writes figures and
cached results to temporary folders so that it never touches the book's own outputs."""

import os
import tempfile

import pytest

os.environ["ANNEALVI_PRESET"] = "quick"
os.environ.setdefault("ANNEALVI_FIGURES", tempfile.mkdtemp(prefix="annealvi-fig-"))
os.environ.setdefault("ANNEALVI_CACHE", tempfile.mkdtemp(prefix="annealvi-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root():
    from annealvi_lib.paths import repo_root as _root

    return _root()

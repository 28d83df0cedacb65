"""Shared pytest fixtures. The whole suite runs at the ``quick`` preset, and writes figures and
cached results to temporary folders so that it never touches the book's own outputs."""

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ["ANNEALVI_PRESET"] = "quick"
os.environ.setdefault("ANNEALVI_FIGURES", tempfile.mkdtemp(prefix="annealvi-fig-"))
os.environ.setdefault("ANNEALVI_CACHE", tempfile.mkdtemp(prefix="annealvi-cache-"))
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root():
    from annealvi_lib.paths import repo_root as _root

    return _root()


@dataclass(frozen=True)
class BuiltBook:
    """A built site: ``html`` folder, the build's exit status and log, and whether it was reused
    from ``$ANNEALVI_BUILT_HTML`` instead of built by this session."""

    html: Path
    returncode: int
    log: str
    prebuilt: bool


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BuiltBook:
    """The book built ONCE per pytest session at the quick preset (shared by test_book.py and
    test_browser.py). Set ``ANNEALVI_BUILT_HTML=<build>/html`` to reuse an existing build."""
    given = os.environ.get("ANNEALVI_BUILT_HTML")
    if given:
        html = Path(given).resolve()
        if not (html / "index.html").exists():
            pytest.fail(f"ANNEALVI_BUILT_HTML={given} has no index.html")
        return BuiltBook(html, 0, "", True)
    build = tmp_path_factory.mktemp("book") / "_build"
    env = dict(os.environ, ANNEALVI_PRESET="quick")
    # the kernels must use matplotlib's inline backend: with MPLBACKEND=Agg (set above for the
    # test process) a glued Figure has no image/png and the pages would have no figures
    env.pop("MPLBACKEND", None)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py"),
                           "--build-dir", str(build)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3000)
    return BuiltBook(build / "html", proc.returncode, proc.stdout[-4000:] + proc.stderr[-4000:],
                     False)

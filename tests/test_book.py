"""Every chapter executes at the quick preset, and the book builds (warnings are errors)."""

import os
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.md"))


@pytest.mark.slow
@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_executes_at_quick_preset(path):
    nb = jupytext.read(path)
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.slow
def test_book_builds_at_quick_preset(tmp_path):
    build = tmp_path / "_build"
    env = dict(os.environ, ANNEALVI_PRESET="quick")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_book.py"),
                           "--build-dir", str(build)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    html = build / "html"
    assert (html / "index.html").exists()
    for chapter in CHAPTERS:
        page = html / "notebooks" / f"{chapter.stem}.html"
        assert page.exists(), page
        assert "<img" in page.read_text(), f"{page.name} has no figure"
    assert (html / "book" / "reproducing.html").exists()

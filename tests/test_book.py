"""Every chapter executes at the quick preset, and the book builds (warnings are errors)."""

import re
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
def test_book_builds_at_quick_preset(built_book):
    # the build itself runs once per session in the `built_book` fixture (tests/conftest.py)
    assert built_book.returncode == 0, built_book.log
    html = built_book.html
    assert (html / "index.html").exists()
    for chapter in CHAPTERS:
        page = html / "notebooks" / f"{chapter.stem}.html"
        assert page.exists(), page
        assert "<img" in page.read_text(), f"{page.name} has no figure"
    assert (html / "book" / "reproducing.html").exists()


@pytest.mark.slow
def test_chapters_offer_ipynb_and_md_downloads(built_book):
    assert built_book.returncode == 0, built_book.log
    html = built_book.html
    for chapter in CHAPTERS:
        text = (html / "notebooks" / f"{chapter.stem}.html").read_text()
        for suffix in (".ipynb", ".md"):
            href = f"_sources/notebooks/{chapter.stem}{suffix}"
            assert href in text, f"{chapter.stem}: no download link to {suffix}"
            assert (html / href).exists(), href


@pytest.mark.slow
def test_site_references_no_external_scripts_or_styles(built_book):
    """Offline site: no <script src> / <link href> / CSS url() leaves the site (MathJax is
    vendored by scripts/vendor_assets.py); the browser test checks actual requests."""
    assert built_book.returncode == 0, built_book.log
    html = built_book.html
    pat = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["'](?:https?:)?//""",
                     re.I)
    offenders = []
    for page in html.rglob("*.html"):
        text = page.read_text(errors="replace")
        if pat.search(text) or "THEBE_JS_URL" in text:
            offenders.append(str(page.relative_to(html)))
    assert not offenders, offenders
    assert (html / "mathjax" / "tex-mml-chtml.js").exists()

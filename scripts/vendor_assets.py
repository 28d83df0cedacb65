"""Vendor the book's third-party web assets so that the built site works offline.

MathJax 3 comes from a pinned PyPI wheel (``django-static-mathjax``, which ships the official
MathJax 3.2.2 ``es5`` distribution), fetched with ``pip download`` (no install), checked against
its SHA-256 and unpacked into ``book/_vendor/mathjax/`` (gitignored). Idempotent: a stamp file
records what was unpacked, and a second call does nothing. For a machine without network, point
``ANNEALVI_MATHJAX_WHEEL`` at a downloaded copy of the wheel.

The folder is deliberately *not* under ``_static/`` (Jupyter Book would inject every JS file
found there into every page). This module is also a Sphinx extension (listed under
``sphinx.local_extensions`` in ``_config.yml``) that

* copies ``book/_vendor/`` into the HTML root with ``html_extra_path`` (so ``_build/html/mathjax/``),
* points ``mathjax_path`` at that copy with a page-relative URL (works over ``file://`` too),
* drops sphinx-thebe's scripts, whose only purpose is to fetch thebe from a CDN on demand
  (the book has no live-code launch button),
* adds the executed ``.ipynb`` to each chapter's download menu (next to the ``.md`` source).

Usage: ``python scripts/vendor_assets.py [--force]`` (``scripts/build_book.py`` calls it).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "book" / "_vendor"
MATHJAX_DIR = VENDOR / "mathjax"

MATHJAX_PACKAGE = "django-static-mathjax"
MATHJAX_PACKAGE_VERSION = "3.2.2.1"          # ships MathJax 3.2.2
MATHJAX_VERSION = "3.2.2"
MATHJAX_WHEEL = "django_static_mathjax-3.2.2.1-py3-none-any.whl"
MATHJAX_WHEEL_SHA256 = "05ad109fd9e5d9d380c76389689b7f523e9ccb7f7a85c1eb962c7564eac7601d"
MATHJAX_ENTRY = "tex-mml-chtml.js"           # Sphinx's default MathJax 3 component
_PREFIX = "mathjax/static/mathjax/es5/"
# what the tex-mml-chtml component can load at run time: TeX extensions (autoload), the CHTML
# fonts, the menu and the accessibility tools (incl. the speech-rule engine); SVG output and
# the other combined components are never requested
_KEEP_DIRS = ("input/", "output/chtml/", "ui/", "a11y/", "adaptors/", "sre/")
_KEEP_FILES = (MATHJAX_ENTRY, "output/chtml.js", "core.js", "loader.js", "startup.js")
_STAMP = ".vendored"

__all__ = ["ensure_mathjax", "mathjax_ready", "setup"]


def _stamp_text() -> str:
    return f"{MATHJAX_PACKAGE}=={MATHJAX_PACKAGE_VERSION} sha256={MATHJAX_WHEEL_SHA256}\n"


def mathjax_ready(dest: Path = MATHJAX_DIR) -> bool:
    """True when ``dest`` holds the pinned MathJax (stamp matches and the entry script exists)."""
    stamp = dest / _STAMP
    return (stamp.exists() and stamp.read_text() == _stamp_text()
            and (dest / MATHJAX_ENTRY).exists())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_wheel(tmp: Path) -> Path:
    """The pinned wheel: from ``$ANNEALVI_MATHJAX_WHEEL`` if set, else ``pip download``."""
    local = os.environ.get("ANNEALVI_MATHJAX_WHEEL")
    if local:
        return Path(local)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(tmp),
           f"{MATHJAX_PACKAGE}=={MATHJAX_PACKAGE_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = tmp / MATHJAX_WHEEL
    if proc.returncode != 0 or not wheel.exists():
        raise RuntimeError(
            f"could not download {MATHJAX_PACKAGE}=={MATHJAX_PACKAGE_VERSION} from PyPI "
            f"(needed to vendor MathJax); set ANNEALVI_MATHJAX_WHEEL to a local copy of "
            f"{MATHJAX_WHEEL}.\n{proc.stderr.strip()[-2000:]}")
    return wheel


def ensure_mathjax(dest: Path = MATHJAX_DIR, force: bool = False, quiet: bool = False) -> Path:
    """Unpack the pinned MathJax into ``dest`` unless it is already there; returns ``dest``.

    The wheel's SHA-256 is checked; the unpacked tree replaces ``dest`` atomically (rename), so
    an interrupted call leaves either the old tree or none, never half of one.
    """
    dest = Path(dest)
    if mathjax_ready(dest) and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".mathjax-") as tmpdir:
        tmp = Path(tmpdir)
        wheel = _fetch_wheel(tmp)
        digest = _sha256(wheel)
        if digest != MATHJAX_WHEEL_SHA256:
            raise RuntimeError(f"{wheel}: SHA-256 {digest} does not match the pinned "
                               f"{MATHJAX_WHEEL_SHA256}")
        staging = tmp / "mathjax"
        n = 0
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(_PREFIX):
                    continue
                rel = info.filename[len(_PREFIX):]
                if not (rel in _KEEP_FILES or rel.startswith(_KEEP_DIRS)):
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                n += 1
        if not (staging / MATHJAX_ENTRY).exists():
            raise RuntimeError(f"{wheel} has no {_PREFIX}{MATHJAX_ENTRY}")
        (staging / _STAMP).write_text(_stamp_text())
        old = tmp / "old"
        if dest.exists():
            dest.rename(old)
        staging.rename(dest)
    if not quiet:
        print(f"[vendor_assets] MathJax {MATHJAX_VERSION}: {n} files in {dest}")
    return dest


# --------------------------------------------------------------------------------------------
# Sphinx extension
# --------------------------------------------------------------------------------------------

def _config_inited(app, config) -> None:
    ensure_mathjax(quiet=True)
    extra = [str(p) for p in config.html_extra_path]
    if str(VENDOR) not in extra:
        config.html_extra_path = [*config.html_extra_path, str(VENDOR)]
    # add_js_file() prefixes relative paths with "_static/"; step out of it to the copy that
    # html_extra_path puts at the HTML root. Sphinx writes it page-relative ("../_static/../
    # mathjax/..." in a subfolder), so it resolves over http:// and file:// alike.
    config.mathjax_path = f"../mathjax/{MATHJAX_ENTRY}"


def _drop_cdn_scripts(app, pagename, templatename, context, doctree) -> None:
    """Remove sphinx-thebe's loader and its inline config naming the thebe CDN URL."""
    scripts = context.get("script_files")
    if not scripts:
        return
    keep = []
    for js in scripts:
        filename = str(getattr(js, "filename", js) or "")
        body = str(getattr(js, "attributes", {}).get("body", ""))
        if "sphinx-thebe" in filename or "THEBE_JS_URL" in body:
            continue
        keep.append(js)
    context["script_files"] = keep


def _add_ipynb_download(app, pagename, templatename, context, doctree) -> None:
    """Offer the executed notebook of a MyST-notebook page in the download menu.

    sphinx-book-theme adds the ``.ipynb`` entry only when a launch button (Binder, ...) is
    configured; this book has none, so do the same copy here: myst-nb's executed notebook
    ``<build>/jupyter_execute/<page>.ipynb`` goes next to the ``.md`` source in ``_sources/``.
    Runs before the theme's header-button handler (priority 501).
    """
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return
    if not str(context.get("sourcename", "")).endswith((".md", ".md.txt")):
        return
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.exists():
        return
    copy = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, copy)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    """Sphinx entry point (see the module docstring)."""
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _add_ipynb_download, priority=450)
    # run after sphinx.ext.mathjax and sphinx-thebe have added their scripts
    app.connect("html-page-context", _drop_cdn_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def main() -> int:
    ap = argparse.ArgumentParser(description="Vendor MathJax for the offline book.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--force", action="store_true", help="fetch and unpack even if present")
    args = ap.parse_args()
    try:
        ensure_mathjax(force=args.force)
    except RuntimeError as exc:
        print(f"[vendor_assets] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

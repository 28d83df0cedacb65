"""Build the book: invalidate the execution cache when the library or preset changed, then run
``jupyter-book build -W --keep-going`` so that any notebook error or Sphinx warning fails.
Before building, the third-party web assets (MathJax) are vendored by ``scripts/vendor_assets.py``
so that the site needs no network when read.

myst-nb's execution cache keys on notebook code only; the results also depend on
``annealvi_lib`` and on ``ANNEALVI_PRESET``. We hash both into ``<build>/.exec_key`` and clear the
cache when the key changes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def library_key() -> str:
    """Hash of every library source file plus the active preset."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "annealvi_lib").rglob("*.py")):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    h.update(os.environ.get("ANNEALVI_PRESET", "book").encode())
    return h.hexdigest()[:16]


def site_key() -> str:
    """Hash of the site's static files and configuration: when they change every page must be
    written again (Sphinx alone sees no outdated page), but nothing needs re-executing."""
    h = hashlib.sha256()
    files = sorted((ROOT / "_static").rglob("*")) + [ROOT / "_config.yml", ROOT / "_toc.yml"]
    for path in files:
        if path.is_file():
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build-dir", default="_build", help="output folder (default: _build)")
    args = ap.parse_args()
    build = Path(args.build_dir)
    if not build.is_absolute():
        build = ROOT / build
    build.mkdir(parents=True, exist_ok=True)
    # vendored web assets (MathJax) so that the site works offline; idempotent
    sys.path.insert(0, str(ROOT / "scripts"))
    import vendor_assets

    try:
        vendor_assets.ensure_mathjax()
    except RuntimeError as exc:
        print(f"[build_book] error: {exc}", file=sys.stderr)
        return 1
    key_file = build / ".exec_key"
    key = library_key()
    cache = build / ".jupyter_cache"
    changed = not key_file.exists() or key_file.read_text() != key
    if changed and cache.exists():
        print(f"[build_book] library or preset changed: clearing {cache}")
        shutil.rmtree(cache)
    # a per-build config whose execution cache lives inside this build folder, so that a
    # quick-preset build elsewhere (the test suite) never touches the main cache
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["cache"] = str(cache)
    # jupyter-book resolves local-extension paths against the config file's folder: make them
    # absolute, since the generated config lives in the build folder
    local_ext = config.get("sphinx", {}).get("local_extensions") or {}
    for name, path in local_ext.items():
        local_ext[name] = str((ROOT / path).resolve())
    generated = build / "_config.generated.yml"
    generated.write_text(yaml.safe_dump(config, sort_keys=False))
    jb = Path(sys.executable).with_name("jupyter-book")
    # --path-output is the folder that will contain _build; the cache path in _config.yml is
    # relative to the book root, so pass it explicitly to keep cache and key side by side
    cmd = [str(jb), "build", str(ROOT), "--path-output", str(build.parent), "-W", "--keep-going",
           "--config", str(generated)]
    site_file = build / ".site_key"
    site = site_key()
    site_changed = not site_file.exists() or site_file.read_text() != site
    if changed or site_changed:
        # Sphinx re-reads only pages whose source changed: with a new library or preset every
        # page must be re-read (and so re-executed), or it would keep its stale outputs; with
        # new static files or configuration every page is written again from the cached outputs
        cmd.append("--all")
    env = dict(os.environ)
    print("[build_book]", " ".join(cmd), f"(ANNEALVI_PRESET={env.get('ANNEALVI_PRESET', 'book')})")
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc == 0:
        key_file.write_text(key)
        site_file.write_text(site)
    return rc


if __name__ == "__main__":
    sys.exit(main())

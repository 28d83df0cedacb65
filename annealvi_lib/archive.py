"""Archived results under ``<repo>/data/``: CSV tables written by this code only, with the
provenance that lets a reader regenerate and check them.

An archive is a folder holding one or more CSV files and ``provenance.json`` with the full
configuration, its hash, the library version, the git commit, the date, the machine, the runtime
and the one command that regenerates the folder. :func:`read_archive` returns the tables and the
provenance; a chapter compares ``provenance["config"]`` with the configuration it claims before
using the numbers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from . import __version__
from .paths import repo_root

__all__ = ["data_dir", "config_digest", "json_roundtrip", "current_commit", "same_machine",
           "write_archive", "read_archive"]


def data_dir(name: str) -> Path:
    """``<repo>/data/<name>`` (not created)."""
    return repo_root() / "data" / name


def config_digest(config: dict) -> str:
    """Short SHA-256 of a JSON-serialisable configuration (keys sorted)."""
    payload = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def json_roundtrip(obj):
    """``obj`` as it comes back from JSON (tuples -> lists), for comparing with an archive's
    ``provenance["config"]``."""
    return json.loads(json.dumps(obj, default=str))


def current_commit() -> str:
    """The git commit of the checkout, with ``+uncommitted library changes`` when files under
    ``annealvi_lib/`` differ from it (take it *before* a computation starts: the code that ran
    is the code of that moment)."""
    return _commit()


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=10)
        # only the library decides the results: edits elsewhere (docs, benchmarks) do not count
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal",
                                "--", "annealvi_lib"], cwd=repo_root(), capture_output=True,
                               text=True, timeout=10)
        head = out.stdout.strip() or "unknown"
        return head + ("+uncommitted library changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def same_machine(provenance: dict) -> bool:
    """Whether this machine is the one that wrote the archive (same CPU model and core count):
    only there is a recomputation expected to be bit-identical (XLA compiles for the CPU it
    runs on, so another CPU may round differently)."""
    return provenance.get("machine") == _machine()


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs"


def write_archive(folder: str | os.PathLike, tables: dict[str, list[dict]], config: dict,
                  runtime_s: float, command: str, commit: str | None = None) -> Path:
    """Write ``tables`` (file name -> rows with identical keys) as CSV files and
    ``provenance.json`` into ``folder`` (created); returns the folder. ``commit``: the
    :func:`current_commit` taken when the computation started (default: now, before anything is
    written -- the archive's own files would mark the tree as changed)."""
    folder = Path(folder)
    commit = _commit() if commit is None else commit
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        if not rows:
            raise ValueError(f"table {name!r} has no rows")
        with open(folder / name, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    prov = {"config": config, "config_hash": config_digest(config), "library_version": __version__,
            "commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": _machine(), "runtime_s": round(float(runtime_s), 1), "command": command,
            "files": sorted(tables)}
    (folder / "provenance.json").write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    return folder


def read_archive(folder: str | os.PathLike) -> tuple[dict[str, list[dict]], dict] | None:
    """The tables (values as strings) and the provenance of an archive, or ``None`` if the
    folder has no readable ``provenance.json``."""
    folder = Path(folder)
    try:
        prov = json.loads((folder / "provenance.json").read_text())
        tables = {}
        for name in prov["files"]:
            with open(folder / name, newline="") as fh:
                tables[name] = list(csv.DictReader(fh))
    except (OSError, ValueError, KeyError):
        return None
    return tables, prov

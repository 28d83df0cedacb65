"""The grid runner's CSV files: ``<study>_grid.csv`` (one row per cell) and ``<study>_runs.csv``
(one row per run), written in a canonical order so that a grid, its shards merged
(:func:`merge_grid_csvs`) and the same cells run in another order give the same bytes.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..cache import file_mode
from .grid import GMM_RUN_FIELDS, GRID_COLUMNS, ID_COLUMNS, GridResult

__all__ = ["write_grid_csv", "read_grid_csv", "merge_grid_csvs"]


def write_grid_csv(result: GridResult, out_dir: str | os.PathLike, study: str) -> tuple[Path, Path]:
    """Write ``<study>_grid.csv`` and ``<study>_runs.csv`` into ``out_dir``; returns both paths.

    Raises ``OSError`` when ``out_dir`` cannot be created or written (the CLI reports it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid_path = out / f"{study}_grid.csv"
    runs_path = out / f"{study}_runs.csv"
    # canonical order (by beta_i, t0, replicate), the order merge_grid_csvs writes: a grid, its
    # shards merged, and the same cells given in another order give the same bytes
    order = lambda r: (float(r["beta_i"]), float(r["t0"]), int(r.get("replicate", -1)))
    _write_rows(grid_path, GRID_COLUMNS + ID_COLUMNS, sorted(result.summary, key=order))
    if result.runs:
        run_cols = tuple(result.runs[0].keys())
    else:                     # an empty shard still writes both files (no stale runs CSV)
        from ..models.realnvp_training import REALNVP_RUN_FIELDS

        fields = GMM_RUN_FIELDS if study == "gmm" else REALNVP_RUN_FIELDS
        run_cols = ("beta_i", "t0", "replicate", *fields, *ID_COLUMNS)
    _write_rows(runs_path, run_cols, sorted(result.runs, key=order))
    return grid_path, runs_path


def _write_rows(path: Path, columns, rows) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.csv")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(columns))
            w.writeheader()
            for row in rows:
                w.writerow({k: (repr(float(v)) if isinstance(v, float) else v)
                            for k, v in row.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_grid_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``*_grid.csv`` into a dict of column arrays (numbers as floats; the identity
    columns, when present, as strings)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or tuple(rows[0].keys())[:len(GRID_COLUMNS)] != GRID_COLUMNS:
        raise ValueError(f"{path} is not a grid CSV with columns {','.join(GRID_COLUMNS)}")
    out = {c: np.array([float(r[c]) for r in rows]) for c in GRID_COLUMNS}
    for c in ID_COLUMNS:
        if c in rows[0]:
            out[c] = np.array([r[c] for r in rows])
    return out


def merge_grid_csvs(paths: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Merge shard CSVs (``*_grid.csv`` or ``*_runs.csv``) into one, sorted by cell.

    Every input must have the same columns, including the identity columns ``study`` and
    ``grid_id`` with one common value (files of different studies or configurations are
    refused). Identical duplicate rows are kept once; conflicting rows for the same cell raise.
    """
    rows, header, ident = {}, None, None
    if not paths:
        raise ValueError("no CSV files to merge")
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ValueError(f"inputs: {p} is not a file")
        try:
            with open(p, newline="") as fh:
                text = fh.read()
        except UnicodeDecodeError:
            raise ValueError(f"inputs: {p} is not a text CSV file") from None
        reader = csv.DictReader(text.splitlines())
        fields = reader.fieldnames or []
        if not (set(("beta_i", "t0") + ID_COLUMNS) <= set(fields)):
            raise ValueError(f"inputs: {p} is not a grid or runs CSV written by annealvi "
                             f"(needs columns beta_i, t0, {', '.join(ID_COLUMNS)})")
        if header is None:
            header = fields
        elif fields != header:
            raise ValueError(f"inputs: {p} has columns {','.join(fields)}, expected "
                             f"{','.join(header)}")
        for r in reader:
            if None in r or None in r.values():
                raise ValueError(f"inputs: {p} line {reader.line_num} has "
                                 f"{'more' if None in r else 'fewer'} fields than its header")
            this = tuple(r[c] for c in ID_COLUMNS)
            if ident is None:
                ident = this
            elif this != ident:
                raise ValueError(f"inputs: {p} is from another experiment (study, grid_id) "
                                 f"= {this}, expected {ident}")
            try:
                key = (float(r["beta_i"]), float(r["t0"]), int(r.get("replicate") or -1))
            except ValueError:
                raise ValueError(f"inputs: {p} has a malformed row {r}") from None
            if key in rows and rows[key] != r:
                raise ValueError(f"inputs: conflicting rows for cell {key} in {p}")
            rows[key] = r
    out = Path(out_path)
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_rows(out, header, [rows[k] for k in sorted(rows)])
    return out

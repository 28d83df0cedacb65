"""Chapter 5's archive: every table of the chapter computed in one run (about 20 minutes on 2
cores), written to ``data/schedule_design`` with its provenance
(``python -m annealvi_lib design-archive``) and read back by the book when its configuration
matches the preset's.
"""

from __future__ import annotations

import dataclasses
import time

from ..config import DesignConfig
from .ch5_recommend import recommend_table
from .ch5_schedule_design import dimension_table, family_table, target_table, theory_scan

__all__ = ["DESIGN_ARCHIVE", "design_config", "run_design", "write_design_archive", "load_design"]


DESIGN_ARCHIVE = "schedule_design"


_TABLES = ("scan.csv", "families.csv", "dimensions.csv", "targets.csv", "recommend.csv")


_TEXT = ("family", "schedule", "status", "asked")


def design_config(cfg: DesignConfig) -> dict:
    """What the chapter's numbers depend on (compared with an archive's provenance)."""
    from ..archive import json_roundtrip

    return json_roundtrip({"design": dataclasses.asdict(cfg)})


def run_design(cfg: DesignConfig, workers: int = 1, cache=None,
               progress: bool | None = None) -> dict[str, list[dict]]:
    """Every table of chapter 5 (Monte Carlo through the cached grid runner)."""
    scan = theory_scan(cfg)
    return {"scan.csv": scan,
            "families.csv": family_table(cfg, scan, workers, cache, progress),
            "dimensions.csv": dimension_table(cfg, workers, cache, progress),
            "targets.csv": target_table(cfg, workers, cache, progress),
            "recommend.csv": recommend_table(cfg, workers, cache, progress)}


def write_design_archive(cfg: DesignConfig, folder, workers: int = 1, command: str = "",
                         progress: bool | None = None):
    """Compute chapter 5 from scratch (a fresh results cache) and archive it in ``folder``."""
    import tempfile

    from ..archive import current_commit, write_archive

    commit = current_commit()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="annealvi_design_") as fresh:
        tables = run_design(cfg, workers=workers, cache=fresh, progress=progress)
    return write_archive(folder, tables, design_config(cfg), time.perf_counter() - t, command,
                         commit)


def _numeric(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        q = {}
        for k, v in r.items():
            if k in _TEXT:
                q[k] = v
            elif isinstance(v, str) and v in ("True", "False"):
                q[k] = v == "True"
            else:
                q[k] = float(v)
        out.append(q)
    return out


def load_design(cfg: DesignConfig, workers: int = 1, cache=None, progress: bool | None = None):
    """``(tables, provenance or None)``: from ``data/DESIGN_ARCHIVE`` when it holds this
    configuration, else computed (Monte Carlo cached per cell)."""
    from ..archive import data_dir, read_archive

    got = read_archive(data_dir(DESIGN_ARCHIVE))
    if got is not None and got[1]["config"] == design_config(cfg):
        tables, prov = got
    else:
        tables, prov = run_design(cfg, workers, cache, progress), None
    return {k: _numeric(v) for k, v in tables.items()}, prov

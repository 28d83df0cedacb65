"""The results archive: round trip, provenance, and the archived batch-size scan's schema and
configuration (the one chapter 3 claims)."""

import json

import pytest

from annealvi_lib import archive
from annealvi_lib.experiments import ch3_collapse_probability as S
from annealvi_lib.experiments import ch3_finite_batch as FB
from annealvi_lib.config import get_preset


def test_round_trip_and_provenance(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    cfg = {"n": 3, "t0s": [1.0, 2.0]}
    archive.write_archive(tmp_path, {"t.csv": rows}, cfg, 12.34, "python -m something")
    tables, prov = archive.read_archive(tmp_path)
    assert tables["t.csv"] == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
    for key in ("config", "config_hash", "library_version", "commit", "date", "machine",
                "runtime_s", "command", "files"):
        assert key in prov
    assert prov["config"] == cfg and prov["config_hash"] == archive.config_digest(cfg)
    assert archive.read_archive(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="no rows"):
        archive.write_archive(tmp_path, {"e.csv": []}, cfg, 1.0, "x")


def test_archived_batch_scan_matches_the_book_preset():
    """``data/bscan_hottest_row`` holds the book preset's scan: its configuration is the one the
    chapter compares with, every (batch, sampling, t0) point is present with the preset's
    number of seeds, and the per-run table agrees with the per-point counts."""
    got = archive.read_archive(archive.data_dir(FB.BSCAN_ARCHIVE))
    assert got is not None, "the archive is missing: python -m annealvi_lib batch-scan --preset book"
    tables, prov = got
    G = get_preset("book").gmm_grid
    assert prov["config"] == archive.json_roundtrip(FB.batch_scan_config(G))
    assert prov["config_hash"] == archive.config_digest(prov["config"])
    assert prov["command"].startswith("python -m annealvi_lib batch-scan --preset book")
    points, runs = tables["bscan_points.csv"], tables["bscan_runs.csv"]
    want = {(B, s, t0) for B, s in FB.batch_scan_settings(G) for t0 in G.bscan_t0s}
    assert {(int(r["batch"]), r["sampling"], float(r["t0"])) for r in points} == want
    for r in points:
        assert int(r["n_runs"]) == G.bscan_seeds
        assert 0.0 <= float(r["ci_low"]) <= float(r["p_collapse"]) <= float(r["ci_high"]) <= 1.0
        mine = [q for q in runs if (q["batch"], q["sampling"], q["t0"])
                == (r["batch"], r["sampling"], r["t0"])]
        assert len(mine) == G.bscan_seeds
        assert sum(int(q["collapsed"]) for q in mine) == int(r["n_collapsed"])
    json.dumps(prov)                                   # provenance is plain JSON

"""Command line: help texts, exit status 2 with a one-line message naming the option, and the
``figures`` subcommand (the grid/merge basics are in test_grid.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from annealvi_lib.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "annealvi_lib", *args], capture_output=True,
                          text=True, timeout=600, **kw)


def _exit_code(argv, capsys):
    """Run ``main(argv)`` in-process; returns (status, stderr). argparse errors exit via SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_top_level_help_lists_subcommands():
    text = build_parser().format_help()
    for cmd in ("grid", "merge", "figures"):
        assert cmd in text


def test_every_option_of_every_subcommand_shows_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        text = p.format_help()
        formatter = p._get_formatter()
        for action in p._actions:
            if action.dest == "help" or action.required or (not action.option_strings
                                                             and action.nargs != "*"):
                continue
            assert (action.option_strings or [action.metavar])[-1] in text, (name, action.dest)
            # the help as printed (``%(default)s`` substituted), so the template's own
            # "%(default)s" is not mistaken for a second "(default ...)"
            shown = formatter._expand_help(action)
            assert "(default" in shown, (name, action.dest, shown)
            assert shown.count("(default") == 1, (name, action.dest, shown)


def test_figures_help_via_module():
    proc = _cli("figures", "--help")
    assert proc.returncode == 0
    for opt in ("--preset", "--out", "--cache-dir", "--list", "--no-progress"):
        assert opt in proc.stdout
    assert "default: book" in proc.stdout


@pytest.mark.parametrize("argv, option", [
    (["figures", "--preset", "huge"], "--preset"),
    (["figures", "ch9_nope"], "NAME"),
    (["figures", "--list", "ch9_*"], "NAME"),
    (["grid", "gmm", "--beta-i", "1.5"], "--beta-i"),
    (["grid", "gmm", "--beta-i", "nan"], "--beta-i"),
    (["grid", "gmm", "--t0", "0"], "--t0"),
    (["grid", "gmm", "--t0", "10,x"], "--t0"),
    (["grid", "gmm", "--batch", "0"], "--batch"),
    (["grid", "gmm", "--sampling", "bogus"], "--sampling"),
    (["grid", "realnvp", "--sampling", "categorical"], "--sampling"),
    (["grid", "gmm", "--n-iter-extra", "-1"], "--n-iter-extra"),
    (["grid", "gmm", "--seed", "-3"], "--seed"),
    (["grid", "gmm", "--shard", "3/3"], "--shard"),
    (["grid", "gmm", "--shard", "1/0"], "--shard"),
    (["grid", "lasso"], "study"),
    (["merge", "no_such_file.csv", "--out", "x.csv"], "inputs"),
    (["merge", "a.csv"], "--out"),
    (["nonsense"], "command"),
    (["theory", "--out", "x", "--batch", "0"], "--batch"),
    (["theory", "--out", "x", "--sampling", "bogus"], "--sampling"),
    (["theory", "--out", "x", "--samples", "0"], "--samples"),
    (["theory", "--preset", "huge", "--out", "x"], "--preset"),
    (["theory"], "--out"),
    (["batch-scan", "--out", "x", "--workers", "0"], "--workers"),
])
def test_bad_arguments_exit_2_with_one_line(argv, option, capsys):
    code, err = _exit_code(argv, capsys)
    assert code == 2, (argv, err)
    assert option in err
    assert len(err.strip().splitlines()) == 1, err


def test_figures_list_names_every_figure_saved_by_the_notebooks():
    proc = _cli("figures", "--list")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    saved = set()
    for nb in [*(ROOT / "notebooks").glob("*.md"), ROOT / "book" / "intro.md"]:
        saved |= set(re.findall(r"""save_figure\(\s*[\w.\[\]"']+\s*,\s*["']([\w-]+)["']""",
                                nb.read_text()))
    assert saved, "no save_figure(...) call found in the notebooks"
    assert saved <= listed, f"figures saved by notebooks but unknown to the CLI: {saved - listed}"
    for line in proc.stdout.splitlines():
        assert re.match(r"^ch\d+_\w+\s+chapter \d+\s+\S", line), line


def test_figures_writes_pdf_and_png_and_reports_cache(tmp_path):
    out, cache = tmp_path / "figs", tmp_path / "cache"
    proc = _cli("figures", "ch1_schedules", "ch1_tempered_marginals", "--preset", "quick",
                "--out", str(out), "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    for name in ("ch1_schedules", "ch1_tempered_marginals"):
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # the data beside the picture: one tidy row per plotted point
        rows = (out / f"{name}.csv").read_text().splitlines()
        assert rows[0].startswith("panel,x_label,y_label,series,kind,x,y") and len(rows) > 10
    assert f"cache: {cache.resolve()}" in proc.stderr
    # not attached to a terminal: no progress bar (tqdm would draw with carriage returns)
    assert "\r" not in proc.stderr and "figure/s" not in proc.stderr


def test_figures_glob_selects_chapter(tmp_path, capsys):
    code = main(["figures", "--list", "ch1_*"])
    assert code == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names and all(n.startswith("ch1_") for n in names)


def test_categorical_grid_runs_with_its_own_grid_id(tmp_path, capsys):
    """``grid gmm --sampling categorical`` at tiny size: it runs, states its protocol, and its
    grid id differs from the stratified grid's (separate cache folders)."""
    from annealvi_lib.experiments.grid_csv import read_grid_csv

    ids = {}
    for sampling in ("stratified", "categorical"):
        out = tmp_path / sampling
        code, err = _exit_code(["grid", "gmm", "--preset", "quick", "--beta-i", "0.01", "--t0",
                                "10", "--seeds", "3", "--n-iter-extra", "2", "--batch", "16",
                                "--sampling", sampling, "--out", str(out), "--cache-dir",
                                str(tmp_path / "cache"), "--no-progress"], capsys)
        assert code == 0, err
        per = "per component" if sampling == "stratified" else "in total"
        assert f"{sampling} sampling (B = 16 {per})" in err
        g = read_grid_csv(out / "gmm_grid.csv")
        assert g["n_runs"].tolist() == [3.0]
        ids[sampling] = g["grid_id"][0]
    assert ids["stratified"] != ids["categorical"]
    assert len(list((tmp_path / "cache" / "gmm").iterdir())) == 2


def test_theory_writes_the_grid_csv(tmp_path, capsys):
    """``theory`` writes one row per cell of the preset's grid with the documented columns,
    probabilities in [0, 1]."""
    import csv

    from annealvi_lib.config import get_preset

    code, err = _exit_code(["theory", "--preset", "quick", "--samples", "64",
                            "--out", str(tmp_path)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "theory_grid.csv")))
    G = get_preset("quick").gmm_grid
    assert len(rows) == len(G.beta_is) * len(G.t0s)
    assert list(rows[0]) == ["beta_i", "t0", "p_closed", "p_closed_corrected", "p_ode",
                             "p_stochastic"]
    cells = {(float(r["beta_i"]), float(r["t0"])) for r in rows}
    assert cells == {(b, t) for b in G.beta_is for t in G.t0s}
    for r in rows:
        for k in ("p_closed", "p_closed_corrected", "p_ode", "p_stochastic"):
            assert 0.0 <= float(r[k]) <= 1.0

"""Command line: ``python -m annealvi_lib {grid,merge,figures,theory,batch-scan,realnvp-archive,
recommend,design-archive} ...``.

Bad arguments exit with status 2 and a one-line message naming the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from .config import FAMILIES, PRESET_NAMES, SAMPLINGS, get_preset

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: ...)" to every option's help unless the help already states it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text:
            return text
        return super()._get_help_string(action)


def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    return vals


def _archive_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by the commands that run and archive a study."""
    parser.add_argument("--preset", default="book", choices=PRESET_NAMES, help="size preset")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    fmt = _DefaultsFormatter
    ap = _Parser(prog="python -m annealvi_lib", formatter_class=fmt,
                 description="annealvi: reproduce the book's Monte-Carlo grids and figures.",
                 epilog="Run 'python -m annealvi_lib COMMAND --help' for the options of a "
                        "command and their defaults. Results are cached in $ANNEALVI_CACHE "
                        "(default: <repo>/results) or --cache-dir; the size preset is one of "
                        f"{', '.join(PRESET_NAMES)}.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("grid", formatter_class=fmt,
                       help="run a collapse-probability grid over (beta_i, t0)",
                       description="Run a Monte-Carlo collapse grid and write <study>_grid.csv "
                                   "and <study>_runs.csv; cells are cached and resumable.")
    g.add_argument("study", choices=["gmm", "realnvp"], help="which student")
    g.add_argument("--preset", default="book", choices=PRESET_NAMES, help="size preset")
    g.add_argument("--beta-i", type=_floats, default=None,
                   help="initial inverse temperatures, comma-separated, each in (0, 1] "
                        "(default: the preset's grid)")
    g.add_argument("--t0", type=_floats, default=None,
                   help="annealing times in steps, comma-separated, each > 0 (default: preset)")
    g.add_argument("--seeds", type=int, default=None, help="replicates per cell (default: preset)")
    g.add_argument("--batch", type=int, default=None,
                   help="Monte-Carlo batch B (GMM: samples per component with --sampling "
                        "stratified, samples in total with --sampling categorical; RealNVP: flow "
                        "samples per step) (default: preset)")
    g.add_argument("--n-iter-extra", type=int, default=None,
                   help="steps after t0: each run has n_iter = t0 + this (default: preset)")
    g.add_argument("--sampler", choices=["exact", "fast"], default=None,
                   help="GMM sampler: O(B d) exact or O(B + d) fast (default: preset's, fast)")
    g.add_argument("--sampling", choices=SAMPLINGS, default=None,
                   help="GMM Monte-Carlo protocol: B samples from each component (stratified) or "
                        "B in total with labels drawn from the weights (categorical, the official "
                        "code's) (default: preset's; categorical for paper, stratified otherwise)")
    g.add_argument("--seed", type=int, default=None, help="master seed (default: preset's, 0)")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="run only cells i with i %% N == K (0 <= K < N), for job arrays")
    g.add_argument("--out", default=".", help="output folder for the CSV files")
    g.add_argument("--cache-dir", default=None,
                   help="results cache folder (default: $ANNEALVI_CACHE or <repo>/results)")
    g.add_argument("--workers", type=int, default=1,
                   help="local worker processes, each pinned to one CPU core with single-threaded "
                        "XLA (on a 2-core CPU, 2 workers are faster than 1 process using both)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    m = sub.add_parser("merge", formatter_class=fmt, help="merge shard CSVs into one",
                       description="Merge *_grid.csv (or *_runs.csv) files from --shard runs.")
    m.add_argument("inputs", nargs="+", help="CSV files to merge")
    m.add_argument("--out", required=True, help="merged CSV path")

    f = sub.add_parser("figures", formatter_class=fmt, help="regenerate the book's figures",
                       description="Regenerate book figures as PDF and 300-dpi PNG, from cached "
                                   "results when present, computing them otherwise.")
    f.add_argument("names", nargs="*", metavar="NAME",
                   help="figure names or globs such as 'ch1_*' (default: all; see --list)")
    f.add_argument("--preset", default="book", choices=PRESET_NAMES, help="size preset")
    f.add_argument("--out", default=None,
                   help="output folder (default: $ANNEALVI_FIGURES or <repo>/figures)")
    f.add_argument("--cache-dir", default=None,
                   help="results cache folder (default: $ANNEALVI_CACHE or <repo>/results)")
    f.add_argument("--list", action="store_true", help="list the figure names with their chapter")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    t = sub.add_parser("theory", formatter_class=fmt,
                       help="the collapse-probability theories on a preset's GMM grid",
                       description="Write DIR/theory_grid.csv with columns beta_i, t0, p_closed "
                                   "(the paper's formula, derived alpha), p_closed_corrected "
                                   "(with the sqrt(2) growth and the variance lag), p_ode "
                                   "(ODE-propagated) and p_stochastic (finite-batch theory) for "
                                   "the cells of 'grid gmm' at the same preset.")
    t.add_argument("--preset", default="book", choices=PRESET_NAMES, help="size preset")
    t.add_argument("--batch", type=int, default=None,
                   help="batch B of the finite-batch theory (per component with --sampling "
                        "stratified, in total with categorical) (default: preset)")
    t.add_argument("--sampling", choices=SAMPLINGS, default=None,
                   help="sampling protocol of the finite-batch theory (default: preset's)")
    t.add_argument("--samples", type=int, default=None,
                   help="initial conditions per cell of the ODE-propagated and finite-batch "
                        "theories (default: preset)")
    t.add_argument("--seed", type=int, default=1, help="PRNG seed of the theories")
    t.add_argument("--out", required=True, help="output folder")

    b = sub.add_parser("batch-scan", formatter_class=fmt,
                       help="Monte-Carlo batch-size scan on the hottest row (archived)",
                       description="Run the batch-size scan of chapter 3 (the preset's bscan_* "
                                   "settings, both sampling protocols at the grid's batch) and "
                                   "write bscan_points.csv, bscan_runs.csv and provenance.json "
                                   "into --out (the book reads data/bscan_hottest_row).")
    _archive_options(b)

    r = sub.add_parser("realnvp-archive", formatter_class=fmt,
                       help="run and archive chapter 4's RealNVP grid or side studies",
                       description="'grid': run the preset's RealNVP grid from scratch and write "
                                   "realnvp_cells.csv, realnvp_runs.csv and provenance.json into "
                                   "--out (the book reads data/realnvp_grid). 'studies': the "
                                   "dimension trend and the normalisation / initialisation "
                                   "comparisons (the book reads data/realnvp_studies; their "
                                   "cells are chosen from the grid, archived or cached).")
    r.add_argument("part", choices=["grid", "studies"], help="what to run")
    _archive_options(r)

    c = sub.add_parser("recommend", formatter_class=fmt,
                       help="recommend an annealing schedule for a target collapse probability",
                       description="A short schedule (the shortest on the search grid of t0, to "
                                   "within an eighth of a rung) whose collapse probability, "
                                   "predicted by the finite-batch theory of chapter 3, is at most "
                                   "--p (two standard errors of margin); prints every theory's prediction "
                                   "and, with --verify N, N Monte-Carlo runs of the reduced "
                                   "sampler with a 95 % Wilson interval. A --p that no schedule "
                                   "up to --max-t0 reaches prints the best achievable one and "
                                   "exits with status 2.")
    c.add_argument("--d", type=int, required=True, help="dimension (>= 33)")
    c.add_argument("--R", type=float, required=True, help="mode distance (> 0)")
    c.add_argument("--w-star", type=float, required=True, help="heavy-mode weight in (0.5, 1)")
    c.add_argument("--p", type=float, required=True, help="target collapse probability in (0, 1)")
    c.add_argument("--schedule", default="exp",
                   choices=list(FAMILIES) + ["best"],
                   help="schedule family ('best': the best of the four)")
    c.add_argument("--batch", type=int, default=1024,
                   help="Monte-Carlo batch B (samples per component, stratified)")
    c.add_argument("--lr", type=float, default=0.05, help="learning rate eta (> 0)")
    c.add_argument("--max-t0", type=float, default=6400.0,
                   help="longest annealing time considered (steps, >= 25)")
    c.add_argument("--n-iter-extra", type=int, default=500,
                   help="steps at beta = 1 after t0 before a run is classified (>= 0; long "
                        "enough for the runs to settle)")
    c.add_argument("--verify", type=int, default=None, metavar="N",
                   help="check with N Monte-Carlo runs (default: no check)")
    c.add_argument("--seed", type=int, default=0, help="master seed of the theory and the check")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--workers", type=int, default=1, help="local worker processes")

    a = sub.add_parser("design-archive", formatter_class=fmt,
                       help="run and archive chapter 5 (schedule design)",
                       description="Run chapter 5's theory scans and Monte Carlo (families, "
                                   "dimensions, targets, recommender checks) from scratch and "
                                   "write them with provenance.json into --out (the book reads "
                                   "data/schedule_design).")
    _archive_options(a)
    return ap


def _grid_config(args):
    """The preset's grid configuration with the command-line options applied; every option is
    checked here, with its command-line name, before any computation."""
    from ._validate import (MAX_SEED, MAX_SEEDS, MAX_STEPS, check_float_range,
                            check_int_at_least, check_int_range)

    preset = get_preset(args.preset)
    cfg = preset.gmm_grid if args.study == "gmm" else preset.realnvp_grid
    changes = {}
    if args.beta_i is not None:
        from .config import MIN_GRID_BETA

        for b in args.beta_i:
            check_float_range("--beta-i values", b, MIN_GRID_BETA, 1)
        if len({f"{b:.12g}" for b in args.beta_i}) != len(args.beta_i):
            raise ValueError(f"--beta-i values must be distinct, got {args.beta_i}")
        if args.study == "gmm":
            changes["log10_beta_r2"] = tuple(math.log10(b * cfg.problem.R**2) for b in args.beta_i)
        else:
            changes["log10_beta_9"] = tuple(math.log10(b * 9.0) for b in args.beta_i if b < 1)
            changes["include_beta_one"] = any(b == 1 for b in args.beta_i)
    if args.t0 is not None:
        for t in args.t0:
            check_float_range("--t0 values", t, 0, MAX_STEPS, lo_open=True, unit=" steps")
            if args.study == "realnvp" and not float(t).is_integer():
                raise ValueError(f"--t0 values must be whole numbers of steps for realnvp, "
                                 f"got {t!r}")
        if len({f"{t:.12g}" for t in args.t0}) != len(args.t0):
            raise ValueError(f"--t0 values must be distinct, got {args.t0}")
        changes["t0s"] = tuple(args.t0)
    if args.seeds is not None:
        changes["n_seeds"] = check_int_range("--seeds", args.seeds, 1, MAX_SEEDS)
    if args.n_iter_extra is not None:
        changes["n_iter_extra"] = check_int_range("--n-iter-extra", args.n_iter_extra, 0,
                                                  MAX_STEPS)
    if args.seed is not None:
        changes["seed"] = check_int_range("--seed", args.seed, 0, MAX_SEED)
    if args.batch is not None:
        batch = check_int_range("--batch", args.batch, 1, 10**6)
        if args.study == "gmm":
            changes["problem"] = dataclasses.replace(cfg.problem, batch=batch)
        else:
            changes["batch"] = batch
    if args.sampling is not None:
        if args.study != "gmm":
            raise ValueError("--sampling applies to the gmm study only")
        changes["problem"] = dataclasses.replace(changes.get("problem", cfg.problem),
                                                 sampling=args.sampling)
    if args.sampler is not None:
        if args.study != "gmm":
            raise ValueError("--sampler applies to the gmm study only")
        changes["sampler"] = args.sampler
    longest = max(changes.get("t0s", cfg.t0s))
    extra = changes.get("n_iter_extra", cfg.n_iter_extra)
    if int(round(longest)) + extra > MAX_STEPS:
        raise ValueError(f"--t0 + --n-iter-extra must be at most {MAX_STEPS} steps, got "
                         f"{longest:g} + {extra}")
    check_int_at_least("--workers", args.workers, 1)
    return dataclasses.replace(cfg, **changes)


def _check_out_dir(option: str, path: str, writable: bool = False) -> Path:
    """A folder that exists or can be created: not a file, not under a file (exit 2); with
    ``writable``, also created and probed now, so that an unwritable folder fails before any
    computation (exit 1, an I/O fault)."""
    from .cache import probe_writable

    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = "is a file" if q == p else f"lies under the file {q}"
                raise ValueError(f"{option}: {p} {where}; give a folder")
            break
    if writable:
        try:
            probe_writable(p)
        except OSError as exc:
            raise OSError(f"{option}: cannot write to {p}: {exc.strerror or exc}") from None
    return p


def _cmd_grid(args) -> int:
    from .experiments.grid import parse_shard, run_grid
    from .experiments.grid_csv import write_grid_csv
    from .paths import cache_dir

    if args.workers < 1:
        raise ValueError(f"--workers must be an integer >= 1, got {args.workers}")
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        raise ValueError(f"--shard: {exc}") from None
    cfg = _grid_config(args)
    out = _check_out_dir("--out", args.out, writable=True)
    cache = _check_out_dir("--cache-dir" if args.cache_dir else "$ANNEALVI_CACHE",
                           cache_dir(args.cache_dir, create=False))
    if args.study == "gmm":
        p = cfg.problem
        per = "per component" if p.sampling == "stratified" else "in total"
        sampling = f", {p.sampling} sampling (B = {p.batch} {per})"
    else:
        sampling = ""
    print(f"[annealvi] {args.study} grid, preset {args.preset}, {len(cfg.beta_is)} x "
          f"{len(cfg.t0s)} cells x {cfg.n_seeds} seeds{sampling}; cache: {cache}",
          file=sys.stderr)
    result = run_grid(args.study, cfg, shard=shard, cache=cache, workers=args.workers,
                      progress=False if args.no_progress else None)
    grid_csv, runs_csv = write_grid_csv(result, out, args.study)
    n_failed = sum(r["n_failed"] for r in result.summary)
    if n_failed:
        cells = sum(1 for r in result.summary if r["n_failed"])
        print(f"[annealvi] warning: {n_failed} run(s) in {cells} cell(s) diverged (non-finite or "
              "out-of-range statistics); they are counted in n_failed and left out of "
              "p_collapse", file=sys.stderr)
    print(f"[annealvi] wrote {grid_csv} and {runs_csv}", file=sys.stderr)
    return 0


def _cmd_merge(args) -> int:
    from .experiments.grid_csv import merge_grid_csvs

    for p in args.inputs:
        if not Path(p).exists():
            raise ValueError(f"inputs: no such file {p}")
        if not Path(p).is_file():
            raise ValueError(f"inputs: {p} is not a file")
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; give a file name")
    _check_out_dir("--out", str(out.parent), writable=True)
    out = merge_grid_csvs(args.inputs, out)
    print(f"[annealvi] wrote {out}", file=sys.stderr)
    return 0


def _cmd_figures(args) -> int:
    import os

    from .figures import registry as figures
    from .paths import cache_dir, figures_dir

    if args.list:
        specs = figures.select(args.names)
        width = max(len(s.name) for s in specs)
        for s in specs:
            print(f"{s.name:<{width}}  chapter {s.chapter}  {s.description}")
        return 0
    specs = figures.select(args.names)   # validates every name before any computation
    preset = get_preset(args.preset)
    _check_out_dir("--out" if args.out else "$ANNEALVI_FIGURES", figures_dir(args.out, create=False),
                   writable=True)
    if args.cache_dir is not None:
        _check_out_dir("--cache-dir", args.cache_dir)
    # figure functions read the cache through paths.cache_dir(); the flag overrides it for this
    # process only
    if args.cache_dir is not None:
        os.environ["ANNEALVI_CACHE"] = str(Path(args.cache_dir).resolve())
    cache = cache_dir()
    out = figures_dir(args.out)
    print(f"[annealvi] {len(specs)} figure(s), preset {args.preset}; cache: {cache}; out: {out}",
          file=sys.stderr)
    from tqdm.auto import tqdm

    bar = tqdm(specs, unit="figure", disable=True if args.no_progress else None)
    for spec in bar:
        bar.set_description(spec.name)
        paths = figures.save(spec.name, preset, out)
        print(f"[annealvi] wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def _cmd_theory(args) -> int:
    import csv

    from ._validate import MAX_SEED, check_int_range
    from .experiments.ch3_collapse_probability import THEORY_COLUMNS, theory_grid, theory_rows

    G = get_preset(args.preset).gmm_grid
    if args.batch is not None:
        check_int_range("--batch", args.batch, 1, 10**9)
    if args.samples is not None:
        n = check_int_range("--samples", args.samples, 1, 10**7)
        G = dataclasses.replace(G, ode_samples=n, stochastic_samples=n)
    seed = check_int_range("--seed", args.seed, 0, MAX_SEED)
    out = _check_out_dir("--out", args.out, writable=True)
    p = G.problem
    sampling = args.sampling or p.sampling
    batch = args.batch or p.batch
    print(f"[annealvi] theories on the {args.preset} grid: {len(G.beta_is)} x {len(G.t0s)} cells, "
          f"finite-batch theory at B = {batch} ({sampling}), {G.stochastic_samples} runs per cell",
          file=sys.stderr)
    T = theory_grid(G, seed=seed, batch=batch, sampling=sampling)
    path = out / "theory_grid.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(THEORY_COLUMNS))
        w.writeheader()
        for row in theory_rows(T):
            w.writerow({k: f"{v:.12g}" for k, v in row.items()})
    print(f"[annealvi] wrote {path} (ODE {T.ode_seconds:.1f} s, finite-batch {T.stoch_seconds:.1f} s)",
          file=sys.stderr)
    return 0


def _run_archive(args, config_of, header, write) -> int:
    """The archive commands: check the options, print what will run, write the archive with the
    command that regenerates it recorded in its provenance."""
    from ._validate import check_int_at_least

    check_int_at_least("--workers", args.workers, 1)
    cfg = config_of(get_preset(args.preset))
    out = _check_out_dir("--out", args.out, writable=True)
    print(f"[annealvi] {header(cfg)}", file=sys.stderr)
    part = f" {args.part}" if getattr(args, "part", None) else ""
    command = (f"python -m annealvi_lib {args.command}{part} --preset {args.preset} "
               f"--out {args.out} --workers {args.workers}")
    folder = write(cfg, out, workers=args.workers, command=command,
                   progress=False if args.no_progress else None)
    print(f"[annealvi] wrote {folder}", file=sys.stderr)
    return 0


def _cmd_batch_scan(args) -> int:
    from .experiments.ch3_finite_batch import batch_scan_settings, write_batch_scan

    def header(G):
        pts = ", ".join(f"{B} {s}" for B, s in batch_scan_settings(G))
        return (f"batch scan, preset {args.preset}: log10(beta_i R^2) = {G.bscan_log10:g}, "
                f"t0 in {G.bscan_t0s}, B in [{pts}], {G.bscan_seeds} seeds per point")

    return _run_archive(args, lambda p: p.gmm_grid, header, write_batch_scan)


def _cmd_realnvp_archive(args) -> int:
    from .experiments.ch4_realnvp import write_grid_archive, write_studies_archive

    def header(cfg):
        if args.part == "grid":
            return (f"RealNVP grid, preset {args.preset}: d = {cfg.d}, "
                    f"{len(cfg.beta_is)} x {len(cfg.t0s)} cells x {cfg.n_seeds} seeds")
        return (f"RealNVP side studies, preset {args.preset}: trend d in {cfg.trend_dims} "
                f"({len(cfg.trend_cells)} cells x {cfg.trend_seeds} seeds), comparisons "
                f"({cfg.compare_seeds} runs per arm)")

    write = write_grid_archive if args.part == "grid" else write_studies_archive
    return _run_archive(args, lambda p: p.realnvp_grid, header, write)


def _cmd_design_archive(args) -> int:
    from .experiments.ch5_archive import write_design_archive

    def header(cfg):
        return (f"schedule design, preset {args.preset}: {len(cfg.families)} families x "
                f"{len(cfg.budgets)} budgets, d in {cfg.dims}, {len(cfg.targets)} targets, "
                f"{len(cfg.recommend_settings)} recommender checks")

    return _run_archive(args, lambda p: p.design, header, write_design_archive)


def _check_recommend_args(args) -> None:
    """Every option of ``recommend`` with its command-line name and allowed range (exit 2)."""
    from ._validate import (MAX_SEED, check_float_range, check_int_at_least, check_int_range,
                            check_open_unit, check_positive)

    check_int_at_least("--d", args.d, 33)
    check_positive("--R", args.R)
    check_float_range("--w-star", args.w_star, 0.5, 1, lo_open=True, hi_open=True)
    check_open_unit("--p", args.p)
    check_int_range("--batch", args.batch, 1, 10**6)
    check_positive("--lr", args.lr)
    check_float_range("--max-t0", args.max_t0, 25, 10**5, unit=" steps")
    if args.verify is not None:
        check_int_range("--verify", args.verify, 1, 10**5)
    check_int_range("--n-iter-extra", args.n_iter_extra, 0, 10**5)
    check_int_range("--seed", args.seed, 0, MAX_SEED)
    check_int_at_least("--workers", args.workers, 1)


def _cmd_recommend(args) -> int:
    import json

    from .figures.style import SCHEDULE_LABELS
    from .experiments.ch5_schedule_design import BEST_THEORY
    from .experiments.ch5_recommend import recommend, verify

    _check_recommend_args(args)
    say = None if args.json else (lambda m: print(f"[annealvi] finite-batch theory: {m}",
                                                  file=sys.stderr, flush=True))
    rec = recommend(args.p, d=args.d, R=args.R, w_star=args.w_star, schedule=args.schedule,
                    batch=args.batch, lr=args.lr, max_t0=args.max_t0, seed=args.seed,
                    n_iter_extra=args.n_iter_extra, progress=say)
    out = {"status": rec.status, "schedule": rec.schedule, "beta_i": rec.beta_i, "t0": rec.t0,
           "n_iter": rec.n_iter, "p_target": rec.p_target, "p_predicted": rec.p_predicted,
           "p_predicted_se": {BEST_THEORY: rec.p_se},
           "p_undecided": {BEST_THEORY: rec.undecided}, "p_vanilla": rec.p_vanilla}
    if args.verify is not None:
        mc = verify(rec, args.verify, seed=args.seed, workers=args.workers, progress=False)
        out.update({k: mc[k] for k in ("p_mc", "ci_low", "ci_high", "n_runs", "n_failed")})
        out["undecided_mc"] = mc["undecided"]
    if args.json:
        print(json.dumps(out))
    else:
        label = SCHEDULE_LABELS.get(rec.schedule, rec.schedule).replace("$\\beta$", "beta")
        if rec.status == "not_needed":
            print(f"no annealing needed: without annealing the predicted collapse probability "
                  f"is {rec.p_vanilla:.3f} <= p = {rec.p_target:g} (n_iter = {rec.n_iter} steps "
                  "at beta = 1)")
        else:
            head = ("recommended" if rec.status == "anneal" else
                    "best achievable (p not reached)")
            print(f"{head}: {label} schedule from beta_i = {rec.beta_i:.4g} over t0 = {rec.t0} "
                  f"steps (n_iter = {rec.n_iter} steps in total)")
        print(f"predicted collapse probability (target p = {rec.p_target:g}):")
        for name, v in rec.p_predicted.items():
            extra = (f" +- {rec.p_se:.3f} (chooses the schedule)" if name == BEST_THEORY else "")
            print(f"  {name:<24s} {v:.3f}{extra}")
        if rec.status != "not_needed":
            print(f"without annealing (finite-batch theory): {rec.p_vanilla:.3f}")
        if args.verify is not None:
            print(f"Monte Carlo ({out['n_runs']} runs, reduced sampler): P = {out['p_mc']:.3f} "
                  f"[{out['ci_low']:.3f}, {out['ci_high']:.3f}] (95 % Wilson), "
                  f"{out['n_failed']} failed, {out['undecided_mc']:.0%} not settled when stopped")
    if rec.status == "unreachable":
        print(f"python -m annealvi_lib recommend: error: --p = {args.p:g} is below what any "
              f"{args.schedule} schedule with t0 <= {args.max_t0:g} reaches (best achievable "
              f"{rec.p_predicted[BEST_THEORY]:.3f}, printed above); raise --p or --max-t0",
              file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"grid": _cmd_grid, "merge": _cmd_merge, "figures": _cmd_figures,
               "theory": _cmd_theory, "batch-scan": _cmd_batch_scan,
               "realnvp-archive": _cmd_realnvp_archive, "recommend": _cmd_recommend,
               "design-archive": _cmd_design_archive}[args.command]
    try:
        return handler(args)
    except ValueError as exc:          # a user error: bad option or input file
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:             # an I/O fault: unwritable cache or output folder, ...
        what = f"{exc.strerror}: {exc.filename}" if exc.filename and exc.strerror else str(exc)
        print(f"{parser.prog} {args.command}: error: {what}", file=sys.stderr)
        return 1
    except RuntimeError as exc:        # e.g. a worker process that died
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted (cached cells are kept; rerun to "
              "resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

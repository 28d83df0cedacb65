"""The library's layout (issue 15): numbers unchanged by the reorganisation, an import graph
that goes only downwards through the layers, cache keys that ignore where a module lives, and a
package docstring that maps every chapter to its code."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import annealvi_lib
from annealvi_lib.cache import SUBPACKAGES, location_free, source_hash

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "annealvi_lib"

#: the layers from the bottom; a module may import only from its own layer or lower ones
LAYERS = ("plumbing", "models", "theory", "experiments", "figures", "cli")


def _modules() -> dict[str, Path]:
    """dotted name (relative to the package, e.g. ``models.student``) -> file."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    head = module.split(".")[0]
    if head in SUBPACKAGES:
        return LAYERS.index(head)
    return LAYERS.index("cli") if head in ("cli", "__main__") else 0


def _imports(module: str, path: Path) -> set[str]:
    """Package modules imported by ``module`` (top-level and local imports alike)."""
    pkg_parts = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    mods = set(_modules())
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg_parts[:len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
            stem = base + (node.module.split(".") if node.module else [])
            for alias in node.names:
                cand = ".".join(stem + [alias.name])
                out.add(cand if cand in mods else ".".join(stem))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("annealvi_lib"):
            stem = node.module.split(".")[1:]
            for alias in node.names:
                cand = ".".join(stem + [alias.name])
                out.add(cand if cand in mods else ".".join(stem))
    return {m for m in out if m in mods and m != module}


def _graph() -> dict[str, set[str]]:
    """module -> the package modules it imports."""
    return {m: _imports(m, p) for m, p in _modules().items()}


def test_golden_cells_unchanged():
    """One small cell of every grid and experiment (chapters 1-5), recomputed with the current
    code, equals the values written before the reorganisation. Tolerance rtol 1e-3: the same
    seeds and the same program give the same numbers up to the last bits of float32 arithmetic,
    which another CPU may round differently; any change of keys, order or algorithm moves these
    numbers by O(1)."""
    import golden_cells

    stored = json.loads(golden_cells.GOLDEN.read_text())
    assert stored["provenance"]["commit"]          # written by golden_cells.py, with provenance
    bad = golden_cells.compare(golden_cells.compute(), stored["values"])
    assert not bad, "\n".join(bad)


def test_presets_unchanged():
    """Every preset's configuration equals the one before the reorganisation (the config
    classes now share their annealing fields; values, names and defaults must not move)."""
    import golden_cells

    stored = json.loads(golden_cells.GOLDEN_PRESETS.read_text())
    assert golden_cells.presets() == stored["presets"]


def test_cache_keys_cover_the_code_a_study_runs():
    """A grid's cache key hashes every model module its runs import (transitively), so that no
    edit of the sampler's code can reuse stale results."""
    from annealvi_lib.experiments import grid

    graph = _graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    entry = {"gmm": ("models.student", "models.reduced"), "realnvp": ("models.realnvp",)}
    for study, roots in entry.items():
        used = set().union(*(reach(r) for r in roots))
        hashed = {f[:-3].replace("/", ".") for f in grid._SOURCES[study]}
        # configuration and validation modules enter through the configuration's hash
        need = {m for m in used if m not in ("config", "_validate", "paths", "cache")}
        assert need <= hashed, f"{study}: {sorted(need - hashed)} not in the cache key"


def test_golden_compare_detects_a_change():
    want = {"a": {"x": [0.1, 0.2], "flag": [0.0, 1.0]}}
    assert not __import__("golden_cells").compare({"a": {"x": [0.1, 0.2], "flag": [0.0, 1.0]}}, want)
    assert __import__("golden_cells").compare({"a": {"x": [0.1, 0.21], "flag": [0.0, 1.0]}}, want)
    assert __import__("golden_cells").compare({"a": {"x": [0.1, 0.2], "flag": [1.0, 1.0]}}, want)
    assert __import__("golden_cells").compare({}, want)


def test_imports_go_down_the_layers_and_have_no_cycles():
    graph = _graph()
    upward = [f"{m} -> {d}" for m, deps in graph.items() for d in deps
              if _layer(d) > _layer(m)]
    assert not upward, "upward imports: " + ", ".join(upward)
    # no cycles (depth-first search)
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, d]))
            if not state.get(d):
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_module_leaf_names_are_unique():
    """location_free() keeps only a module's leaf name: it must identify the module."""
    leaves = [m.split(".")[-1] for m in _modules() if m and not m.endswith("__main__")]
    leaves = [x for x in leaves if x not in SUBPACKAGES]
    assert len(leaves) == len(set(leaves)), sorted(x for x in leaves if leaves.count(x) > 1)


def test_location_free_ignores_only_where_modules_live():
    flat = ("from . import __version__\nfrom .schedules import Schedule\n"
            "from . import collapse as C\n    from .student import init_student\n"
            '"""see annealvi_lib.schedules.Schedule"""\nx = 1\n')
    moved = ("from .. import __version__\nfrom ..models.schedules import Schedule\n"
             "from ..theory import collapse as C\n    from ..models.student import init_student\n"
             '"""see annealvi_lib.models.schedules.Schedule"""\nx = 1\n')
    assert location_free(flat) == flat          # the old flat layout: unchanged
    assert location_free(moved) == flat         # moved: same key
    # what is imported, and the code, still count
    assert location_free(moved.replace("import Schedule", "import Constant")) != flat
    assert location_free(moved.replace("collapse as C", "guidance as C")) != flat
    assert location_free(moved.replace("x = 1", "x = 2")) != flat


def test_source_hash_is_that_of_the_location_free_text(tmp_path):
    import hashlib

    text = (PKG / "models" / "schedules.py").read_text()
    want = hashlib.sha256(location_free(text).encode()).hexdigest()[:12]
    assert source_hash("models/schedules.py") == want


def _chapter_table(doc: str) -> dict[int, list[str]]:
    """chapter -> every ````name```` of its rows in the package docstring's table."""
    rows: dict[int, list[str]] = {}
    body = doc.split("library modules it uses")[1].split("\n\n")[0]
    ch = None
    for line in body.splitlines():
        if line.startswith("==="):
            continue
        if line[:1].isdigit():
            ch = int(line.split()[0])
        if ch is not None:
            rows.setdefault(ch, []).extend(re.findall(r"``([\w.]+)``", line))
    return rows


def test_package_docstring_maps_every_chapter():
    """The package docstring's table gives each chapter its notebook, its computation modules
    (all ``experiments.chN_*`` ones), its figure module and the library modules it uses: every
    module its code imports from ``models``, ``theory``, ``metrics`` and the grid runner is
    listed, and every listed name exists."""
    mods = _modules()
    graph = _graph()
    table = _chapter_table(annealvi_lib.__doc__)
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("0*.md"))
    assert sorted(table) == list(range(1, len(notebooks) + 1))
    for ch, names in table.items():
        assert names[0] == notebooks[ch - 1]
        listed = set(names[1:])
        assert listed <= set(mods), listed - set(mods)
        own = {m for m in mods if m.startswith(f"experiments.ch{ch}_")} | {f"figures.ch{ch}"}
        assert own <= listed, own - listed
        used = set().union(*(graph[m] for m in own)) - own
        used = {d for d in used if d.split(".")[0] in ("models", "theory")
                or d in ("metrics", "experiments.grid")}
        assert used <= listed, f"chapter {ch} also uses {sorted(used - listed)}"


#: modules allowed above the limit because they hold one concept (see CONTRIBUTING.md)
ONE_CONCEPT = {
    "config": "the presets: one frozen dataclass per experiment, validated in its constructor",
    "theory.collapse": "the closed form, with its derivation (about 65 lines) in the docstring",
    "theory.ode": "f, g and the ODE of the summary statistics with its integrators",
}
MAX_LINES = 560


def test_no_module_is_much_longer_than_500_lines():
    """Every module stays under ~500 lines (MAX_LINES) unless it is listed in ONE_CONCEPT, and
    the listed ones stay under 650."""
    lines = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    over = {m: n for m, n in lines.items() if n > MAX_LINES and m not in ONE_CONCEPT}
    assert not over, over
    assert all(lines[m] <= 650 for m in ONE_CONCEPT), {m: lines[m] for m in ONE_CONCEPT}


def test_no_library_module_is_ignored_by_git():
    """Every module of the package is committable: an ignore pattern meant for an output folder
    (``figures/``, ``results/``) must not also match a folder of the package."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    paths = [str(p.relative_to(ROOT)) for p in _modules().values()]
    out = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.stdout.strip() == "", f"ignored by .gitignore: {out.stdout.split()}"

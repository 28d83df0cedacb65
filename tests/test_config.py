import tomllib

import pytest
import yaml

from annealvi_lib.config import (PRESET_NAMES, GMMGridConfig, Problem, RealNVPGridConfig,
                                 active_preset, get_preset)


def test_presets_build_and_paper_matches_design():
    for name in PRESET_NAMES:
        assert get_preset(name).name == name
    p = get_preset("paper")
    g = p.gmm_grid
    assert (g.problem.d, g.problem.R, g.problem.w_star, g.problem.lr) == (512, 3.0, 0.8, 0.05)
    assert len(g.beta_is) == 8 and len(g.t0s) == 8 and g.n_seeds >= 100
    assert g.beta_is[0] == pytest.approx(1e-3 / 9)
    # the official code's sampling protocol: 8192 samples in total, categorical labels
    assert (g.problem.sampling, g.problem.batch) == ("categorical", 8192)
    r = p.realnvp_grid
    assert (r.d, r.n_layers, r.width, r.depth, r.batch, r.lr, r.n_seeds) == (128, 8, 512, 3, 1024, 1e-3, 200)
    assert r.t0s == tuple(float(t) for t in range(200, 2001, 200))
    assert r.beta_is[-1] == 1.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(d=1), "d"), (dict(R=0.0), "R"), (dict(w_star=1.0), "w_star"), (dict(lr=float("nan")), "lr"),
    (dict(batch=0), "batch"), (dict(sampling="x"), "sampling"),
])
def test_problem_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Problem(**kwargs)


def test_only_the_paper_grid_samples_categorically():
    """The paper preset's GMM grid follows the official protocol; everything else (the book,
    quick, and the paper's other GMM experiments) stays stratified."""
    from annealvi_lib.models.student import SAMPLINGS

    assert SAMPLINGS == ("stratified", "categorical") and Problem().sampling == "stratified"
    for name in PRESET_NAMES:
        p = get_preset(name)
        for cfg in (p.demo, p.ode_check, p.gmm_grid):
            want = "categorical" if (name, cfg) == ("paper", p.gmm_grid) else "stratified"
            assert cfg.problem.sampling == want, (name, type(cfg).__name__)


def test_grid_validation():
    with pytest.raises(ValueError, match="t0"):
        GMMGridConfig(t0s=(100.0, -1.0))
    with pytest.raises(ValueError, match="beta_i"):
        GMMGridConfig(log10_beta_r2=(1.5,))          # 10**1.5 / 9 > 1
    with pytest.raises(ValueError, match="sampler"):
        GMMGridConfig(sampler="magic")
    with pytest.raises(ValueError, match="n_seeds"):
        RealNVPGridConfig(n_seeds=0)


def test_unknown_preset(monkeypatch):
    with pytest.raises(ValueError, match="preset"):
        get_preset("huge")
    monkeypatch.setenv("ANNEALVI_PRESET", "nope")
    with pytest.raises(ValueError, match="preset"):
        active_preset()


def test_environment_yml_mirrors_pyproject_pins(repo_root):
    py = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    pins = set(py["dependencies"])
    for extra in py["optional-dependencies"].values():
        pins |= set(extra)
    env = yaml.safe_load((repo_root / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = {p for p in pip_list if not p.startswith("-e")}
    assert conda_pins == pins
    assert "python=3.11" in env["dependencies"]


def _norm(name):
    return name.split("[")[0].strip().lower().replace("_", "-").replace(".", "-")


def test_lock_pins_every_package_at_pyproject_versions(repo_root):
    """requirements.lock (make lock) holds every direct pin of pyproject at the same version,
    every entry is exact (==) and hashed, and the Makefile installs from it."""
    import re

    text = (repo_root / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", text, flags=re.M)
    locked = {}
    for name, version in entries:
        locked.setdefault(_norm(name), set()).add(version)
    assert len(locked) > 100        # the transitive closure, not only the direct pins
    blocks = [b for b in re.split(r"\n(?=[A-Za-z0-9])", text) if re.match(r"[A-Za-z0-9]", b)]
    assert all("--hash=sha256:" in b for b in blocks)
    py = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    pins = list(py["dependencies"])
    for extra in py["optional-dependencies"].values():
        pins += extra
    for pin in pins:
        name, version = pin.split("==")
        assert locked.get(_norm(name)) == {version}, pin
    make = (repo_root / "Makefile").read_text()
    assert "--require-hashes --no-deps -r $(LOCK)" in make and "LOCK := requirements.lock" in make


def test_project_is_citeable(repo_root):
    cff = yaml.safe_load((repo_root / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert "2602.12923" in str(cff["preferred-citation"])
    assert "MIT License" in (repo_root / "LICENSE").read_text()
    py = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert py["license"] == "MIT" and cff["version"] == py["version"]
    cite = (repo_root / "book" / "cite.md").read_text()
    assert "@article{fogliani2026annealing" in cite and "@software{annealvi2026" in cite
    assert "book/cite" in (repo_root / "_toc.yml").read_text()

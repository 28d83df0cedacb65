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
    r = p.realnvp_grid
    assert (r.d, r.n_layers, r.width, r.depth, r.batch, r.lr, r.n_seeds) == (128, 8, 512, 3, 1024, 1e-3, 200)
    assert r.t0s == tuple(float(t) for t in range(200, 2001, 200))
    assert r.beta_is[-1] == 1.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(d=1), "d"), (dict(R=0.0), "R"), (dict(w_star=1.0), "w_star"), (dict(lr=float("nan")), "lr"),
    (dict(batch=0), "batch"),
])
def test_problem_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Problem(**kwargs)


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

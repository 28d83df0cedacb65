import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from annealvi_lib.models.targets import log_partition, log_prob, make_target, sample


def _grid_integral_2d(t, beta, lim, n=1201):
    """Brute-force trapezoid integral of pi^beta over the square [-lim, lim]^2 (vectorised)."""
    g = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = jnp.asarray(np.stack([xx, yy], -1), dtype=jnp.float32)
    vals = np.exp(beta * np.asarray(log_prob(t, pts), dtype=float))
    return integrate.trapezoid(integrate.trapezoid(vals, g, axis=1), g)


def test_density_integrates_to_one_2d():
    t = make_target(2, R=1.5, w_star=0.7, mu_star=jnp.array([0.6, 0.8]))
    assert _grid_integral_2d(t, 1.0, 10.0) == pytest.approx(1.0, abs=1e-4)


def test_samples_moments():
    # mean = (2w*-1) R mu*; Var along mu* = 1 + R^2 (1 - (2w*-1)^2); orthogonal variance 1.
    d, R, w = 8, 3.0, 0.8
    t = make_target(d, R, w, key=jax.random.key(3))
    n = 200_000
    x = np.asarray(sample(t, jax.random.key(0), n))
    proj = x @ np.asarray(t.mu_star)
    mean_th = (2 * w - 1) * R
    var_th = 1 + R**2 * (1 - (2 * w - 1) ** 2)
    se_mean = math.sqrt(var_th / n)
    assert abs(proj.mean() - mean_th) < 5 * se_mean
    # variance of the sample variance ~ (m4 - var^2)/n; 5 sigma with a generous kurtosis bound
    assert abs(proj.var() - var_th) < 5 * math.sqrt(3 * var_th**2 / n)
    perp = x - np.outer(proj, np.asarray(t.mu_star))
    assert abs(np.mean(np.sum(perp**2, 1)) / (d - 1) - 1.0) < 5 * math.sqrt(2 / ((d - 1) * n))


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.05, 0.003])
def test_log_partition_1d_brute_force(beta):
    # d = 2 (the smallest valid d): brute-force 2-D integral of pi^beta on a dense grid;
    # float32 log-densities limit the agreement to ~1e-4 in log Z.
    t = make_target(2, R=3.0, w_star=0.8)
    lim = 3.0 + 14 / math.sqrt(beta)
    val = _grid_integral_2d(t, beta, lim, n=2001)
    assert float(log_partition(t, beta)) == pytest.approx(math.log(val), abs=5e-4)


def test_log_partition_is_zero_at_beta_one_and_validates():
    t = make_target(64, 3.0, 0.8)
    assert abs(float(log_partition(t, 1.0))) < 1e-5
    with pytest.raises(ValueError, match="d"):
        make_target(1)
    with pytest.raises(ValueError, match="w_star"):
        make_target(4, 3.0, 1.0)
    with pytest.raises(ValueError, match="R"):
        make_target(4, -1.0, 0.5)

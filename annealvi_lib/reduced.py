"""Reduced O(B + d)-per-step sampler of the GMM student: the same Markov chain on the summary
statistics ``(m1, m2, s, var1, var2)`` as the exact sampler of :mod:`annealvi_lib.student`,
without d-dimensional vectors.

Why it is possible
------------------
The stratified loss ``L_hat = sum_k w_k mean_b [beta U(x_kb) + log q(x_kb)]`` with
``x_kb = mu_k + sigma_k z_kb`` sees a sample only through ``<x, mu*>``, ``<x, mu_j>`` and ``|x|^2``.
Let ``P`` be the 3-dimensional span of ``{mu*, mu1, mu2}`` and ``D = d - 3`` the dimension of its
complement. Write ``z_kb = z_span + z_perp`` with ``z_span`` the 3 coordinates in an orthonormal
basis of ``P`` (three i.i.d. standard normals, exactly) and ``z_perp = r n`` with
``r^2 ~ chi^2_D`` and ``n`` uniform on the unit sphere of the complement, independent of
``(z_span, r)``. Then

* the loss value, the variance gradient ``dL/dvar_k`` and the in-span gradient ``g_j`` (the
  projection of ``grad_{mu_j} L`` on ``P``) are functions of ``(z_span, r^2)`` only;
* the perpendicular part of the gradient is ``v_j = sum_kb a_{j,kb} z_perp_kb`` with scalar
  coefficients ``a`` that are functions of ``(z_span, r^2)`` too. Reference route
  (:func:`reduced_loss`, :func:`reduced_grads`, automatic differentiation): give ``mu_j`` a
  perpendicular part ``p_j`` (zero at the current state) and write
  ``c_{j,kb} = <p_j, z_perp_kb>``; to first order ``|x_kb|^2 += 2 sigma_k c_{k,kb}``,
  ``<x_kb, mu_j> += sigma_k c_{j,kb}``, so that ``a_{j,kb} = dL/dc_{j,kb}`` at ``c = 0`` and
  ``grad_{p_j} L = sum_kb a_{j,kb} z_perp_kb``. The sampler uses the equivalent closed form
  :func:`reduced_grads_fast` (no autodiff; ~3x faster); tests check both against the exact
  sampler's gradients with shared noise.

After a step the new means lie in ``P + span{v1, v2}`` (5 dimensions), and the new statistics
depend on ``(v1, v2)`` only through their 2x2 Gram matrix. Given ``C_{j,kb} = a_{j,kb} r_kb``,
``v = sum_kb C_kb n_kb`` with independent uniform unit vectors ``n_kb``, so
``E[Gram] = S = C C^T`` exactly. We sample the Gram as ``Wishart_2(D, S/D)`` (Bartlett
decomposition, O(1)), which is the exact law when the unit vectors are replaced by Gaussian
vectors of covariance ``I/D``: its mean is exactly ``S`` and its fluctuation has the correct
covariance up to a relative error O(1/B) (the Wishart also lets the diagonal terms
``|C_kb|^2 |n_kb|^2`` fluctuate, whereas for unit vectors they are fixed). Exactly:
``Var G_00 = (2/D)(S_00^2 - sum_b C_0b^4)`` for unit vectors against ``2 S_00^2/D`` for the
Wishart, i.e. a relative excess ``sum_b C_0b^4 / S_00^2 ~ 1/(2B)`` (similarly for ``G_01``).

Everything else is exact in law: the Markov chain on the statistics is the exact sampler's
chain (the loss is invariant under rotations fixing ``mu*``, so the statistics are a Markov
chain) up to (i) the Wishart approximation above and (ii) the Wilson-Hilferty approximation of
``chi^2_D`` used when ``D >= 30`` (relative error of the mean ``(2/(9D))^3 < 1e-5``, skewness
exact at leading order; jax.random.gamma costs ~15 normals per variate on CPU). For ``D < 30``
we use ``jax.random.gamma`` (exact).

Throughput (benchmarks/bench_gmm.py, d = 512, B = 1024, 2 shared CPU cores): ~1e4 seed-steps/s
against ~50-120 for the exact sampler; the paper grid (3.5M seed-steps) takes ~6 min.

Cost per step: 8B + 3 normals and O(B) arithmetic, against 2Bd normals and O(B d) for the exact
sampler. The statistics are validated against the exact sampler in ``tests/test_reduced.py``
(per-sample gradients identical with shared noise; one-step update moments; collapse rates).

Categorical protocol
--------------------
With ``Hyper(sampling="categorical")`` (the official code's protocol) the ``B`` samples are
drawn from q *in total*: labels ``k_b ~ Categorical(w)``
(:func:`~annealvi_lib.student.sample_labels`, from ``split(key)[0]`` as in the exact sampler, so
one step key gives both samplers the same labels), ``x_b = mu_{k_b} + sigma_{k_b} z_b``,
per-sample weight ``1/B``. The
reduction above holds sample by sample, whatever the label: :func:`reduced_grads_labels` is the
same closed form with one array of B samples, each carrying its one-hot label (stratified
sampling is the special case of labels ``[0]*B + [1]*B`` and weights ``1/(2B)``; tested), and
``S = C C^T`` with ``C_{j,b} = a_{j,b} r_b``. Same O(B) cost per sample (4B + 3 normals and B
uniforms per step for B samples in total, so B = 2048 in total costs about what B = 1024 per
component does), and exact in the same sense: the labels, span coordinates and ``r^2`` have
exactly their law, and the only approximations are again the Wishart Gram and Wilson-Hilferty.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._rng import fast_threefry
from ._validate import check_int_at_least, check_positive
from .seeding import lanes, padded_blocks
from .schedules import Schedule
from .student import WEIGHTS, Hyper, Trajectory, init_student, sample_labels, summary_stats
from .targets import Target, log_partition, make_target

__all__ = [
    "ReducedState",
    "MIN_DIM",
    "reduced_from_student",
    "init_reduced",
    "span_coords",
    "reduced_loss",
    "reduced_grads",
    "reduced_grads_fast",
    "reduced_grads_labels",
    "sample_chi2",
    "perp_factor",
    "reduced_update",
    "reduced_step",
    "gradient_noise_draws",
    "simulate_reduced",
    "simulate_reduced_seeds",
    "simulate_reduced_betas",
]

_LOG_2PI = math.log(2.0 * math.pi)
#: Smallest dimension accepted (the complement of the 3-d span needs D = d - 3 >= 2 for Bartlett).
MIN_DIM = 5
#: Wilson-Hilferty is used for chi^2_D when D >= this threshold, jax.random.gamma otherwise.
_WH_MIN_DOF = 30


class ReducedState(NamedTuple):
    """Summary statistics of the student (pytree).

    Attributes:
      m: overlaps ``<mu_k, mu*>/R``, shape (2,).
      s: overlap ``<mu1, mu2>/R^2``, shape ().
      var: variances ``sigma_k^2``, shape (2,).
    """

    m: jax.Array
    s: jax.Array
    var: jax.Array


def reduced_from_student(state, target: Target) -> ReducedState:
    """Statistics of a full :class:`~annealvi_lib.student.StudentState` (mu shape (2, d))."""
    m1, m2, s = summary_stats(state, target)
    return ReducedState(m=jnp.stack([m1, m2]), s=s, var=state.var)


def init_reduced(init_key: jax.Array, target: Target, var0: float) -> ReducedState:
    """Initial statistics with exactly the law of the exact sampler's initialisation.

    Literally :func:`~annealvi_lib.student.init_student` followed by
    :func:`~annealvi_lib.student.summary_stats` (O(d) once per run), so that the same
    ``init_key`` gives the same ``(m1, m2, s)`` in both samplers.
    """
    return reduced_from_student(init_student(init_key, target.d, target.R, var0), target)


def span_coords(m, s, R):
    """Means in an orthonormal basis ``(mu*, e2, e3)`` of span{mu*, mu1, mu2}.

    ``mu1 = R (m1, q1, 0)``, ``mu2 = R (m2, c, t)`` with ``q1 = sqrt(1 - m1^2)``,
    ``c = (s - m1 m2)/q1`` and ``t = sqrt(1 - m2^2 - c^2)`` (the Cholesky factor of the Gram matrix
    of ``(mu*, mu1/R, mu2/R)``). Degenerate cases (``mu1 || mu*``, or ``mu2`` in the plane of
    ``mu*, mu1``) are completed with an arbitrary orthonormal direction (c = 0, t clipped at 0):
    the sampler only needs *some* 3-d subspace containing the means and ``mu*``.

    Args:
      m: shape (2,); s: shape (); R: norm of the means.
    Returns:
      array of shape (2, 3).
    """
    m1, m2 = m[0], m[1]
    q1 = jnp.sqrt(jnp.maximum(1.0 - m1 * m1, 0.0))
    lim2 = jnp.sqrt(jnp.maximum(1.0 - m2 * m2, 0.0))
    safe_q1 = jnp.where(q1 > 1e-6, q1, 1.0)
    c = jnp.where(q1 > 1e-6, (s - m1 * m2) / safe_q1, 0.0)
    c = jnp.clip(c, -lim2, lim2)
    t = jnp.sqrt(jnp.maximum(1.0 - m2 * m2 - c * c, 0.0))
    zero = jnp.zeros_like(m1)
    return R * jnp.stack([jnp.stack([m1, q1, zero]), jnp.stack([m2, c, t])])


def reduced_loss(mu, var, c, zs, r2, beta, R, w_star, d):
    """The stratified loss ``L_hat`` written in the reduced features (first order in ``c``).

    Args:
      mu: means in span coordinates, shape (2, 3) (first coordinate along mu*).
      var: variances, shape (2,).
      c: auxiliary perpendicular couplings ``c[j, k, b] = <p_j, z_perp_kb>``, shape (2, 2, B);
        evaluate at zero, differentiate to get the perpendicular gradient coefficients.
      zs: in-span noise coordinates, shape (2, B, 3).
      r2: squared norms of the perpendicular noise, shape (2, B) (chi^2_{d-3}).
      beta: inverse temperature; R, w_star: target parameters; d: full dimension.
    Returns:
      scalar loss, equal sample by sample to :func:`~annealvi_lib.student.mc_loss` with the
      corresponding d-dimensional noise.
    """
    sig = jnp.sqrt(var)
    xs = mu[:, None, :] + sig[:, None, None] * zs                 # (k, b, 3)
    perp = var[:, None] * r2                                        # (k, b): sigma_k^2 r^2
    ck = jnp.stack([c[0, 0], c[1, 1]])                              # (k, b): c_{k, kb}
    xsq = jnp.sum(xs * xs, -1) + perp + 2.0 * sig[:, None] * ck     # |x|^2
    proj = xs[..., 0]                                               # <x, mu*>
    log_mix = jnp.logaddexp(jnp.log(w_star) + R * proj, jnp.log1p(-w_star) - R * proj)
    u = 0.5 * d * _LOG_2PI + 0.5 * xsq + 0.5 * R * R - log_mix     # U(x)
    diff = xs[None, :, :, :] - mu[:, None, None, :]                 # (j, k, b, 3)
    dsq = (jnp.sum(diff * diff, -1) + perp[None]
           + 2.0 * sig[None, :, None] * (ck[None] - c))             # |x_kb - mu_j|^2
    logw = jnp.log(jnp.asarray(WEIGHTS))
    comp = (logw[:, None, None] - 0.5 * d * (_LOG_2PI + jnp.log(var))[:, None, None]
            - 0.5 * dsq / var[:, None, None])
    log_q = jax.nn.logsumexp(comp, axis=0)                          # (k, b)
    per_sample = beta * u + log_q
    return jnp.sum(jnp.asarray(WEIGHTS) * jnp.mean(per_sample, axis=-1))


def reduced_grads(mu, var, zs, r2, beta, R, w_star, d):
    """Loss and its exact reduced gradients at one state.

    Returns:
      ``(loss, g_mu (2, 3), g_var (2,), a (2, 2, B))``: the in-span gradient of each mean, the
      variance gradient, and the perpendicular-gradient coefficients ``a[j, k, b]`` such that the
      perpendicular part of ``grad_{mu_j} L`` is ``sum_{k,b} a[j, k, b] z_perp_kb``.
    """
    c0 = jnp.zeros((2,) + r2.shape, dtype=zs.dtype)
    loss, (g_mu, g_var, a) = jax.value_and_grad(reduced_loss, argnums=(0, 1, 2))(
        mu, var, c0, zs, r2, beta, R, w_star, d)
    return loss, g_mu, g_var, a


def _fast_grads_soa(mu, var, zs, r2, beta, R, w_star, d):
    """Closed-form version of :func:`reduced_grads` (same numbers, ~3x faster: no autodiff).

    With responsibilities ``rho_j(x)`` of the student, ``h = tanh(R <x, mu*> + kappa)``,
    ``kappa = ln(w*/(1-w*))/2`` and ``A = beta - sum_j rho_j/var_j``, a sample's loss term
    ``l = beta U + log q`` has ``grad_x l = A x - beta R h mu* + sum_j rho_j mu_j/var_j`` and
    ``grad_{mu_j} l = rho_j (x - mu_j)/var_j`` (explicit dependence); the perpendicular part of
    ``grad_x l`` is ``A sigma_k z_perp``, hence ``a_{j,kb} = (w_k/B) sigma_k (delta_jk A +
    rho_j/var_j)``; the variance gradient adds ``grad_x l . z/(2 sigma_k)`` (component k) and
    ``rho_j (-d/(2 var_j) + |x - mu_j|^2/(2 var_j^2))``.

    Args:
      mu (2, 3), var (2,), zs (3, 2, B) (structure of arrays), r2 (2, B); scalars as in
      :func:`reduced_loss`.
    Returns:
      ``(loss, g_mu (2, 3), g_var (2,), a (2, 2, B), S (2, 2))`` with ``S = C C^T``,
      ``C_{j,kb} = a_{j,kb} r_kb``.
    """
    w = WEIGHTS[0]                                    # equal fixed weights 1/2
    B = r2.shape[-1]
    sig = jnp.sqrt(var)
    mu_t = mu.T                                       # (3, j)
    x = mu_t[:, :, None] + sig[None, :, None] * zs    # (3, k, B)
    perp = var[:, None] * r2                          # (k, B)
    diffs = [x - mu_t[:, j, None, None] for j in range(2)]
    dsq = [jnp.sum(df * df, 0) + perp for j, df in enumerate(diffs)]
    comp = [-0.5 * d * jnp.log(var[j]) - 0.5 * dsq[j] / var[j] for j in range(2)]
    rho0 = jax.nn.sigmoid(comp[0] - comp[1])
    rho = [rho0, 1.0 - rho0]
    kappa = 0.5 * (jnp.log(w_star) - jnp.log1p(-w_star))
    proj = x[0]
    h = jnp.tanh(R * proj + kappa)
    A = beta - rho[0] / var[0] - rho[1] / var[1]
    grad_x = (A[None] * x + (rho[0] / var[0])[None] * mu_t[:, 0, None, None]
              + (rho[1] / var[1])[None] * mu_t[:, 1, None, None])
    grad_x = grad_x.at[0].add(-beta * R * h)
    cw = w / B
    g_mu, g_var, a_rows = [], [], []
    for j in range(2):
        explicit = (rho[j] / var[j])[None] * diffs[j]                       # (3, k, B)
        g_mu.append(cw * (jnp.sum(grad_x[:, j], -1) + jnp.sum(explicit, (1, 2))))
        through_x = jnp.sum(grad_x[:, j] * zs[:, j], 0) / (2.0 * sig[j]) + 0.5 * A[j] * r2[j]
        explicit_v = rho[j] * (0.5 * dsq[j] / var[j] ** 2 - 0.5 * d / var[j])
        g_var.append(cw * (jnp.sum(through_x) + jnp.sum(explicit_v)))
        own = jnp.zeros_like(A).at[j].set(A[j])
        a_rows.append(cw * sig[:, None] * (own + rho[j] / var[j]))          # (k, B)
    a = jnp.stack(a_rows)
    ar = (a * jnp.sqrt(r2)[None]).reshape(2, -1)
    S = ar @ ar.T
    log_mix = jnp.logaddexp(jnp.log(w_star) + R * proj, jnp.log1p(-w_star) - R * proj)
    u = 0.5 * d * _LOG_2PI + 0.5 * (jnp.sum(x * x, 0) + perp) + 0.5 * R * R - log_mix
    log_q = math.log(w) - 0.5 * d * _LOG_2PI + jnp.logaddexp(comp[0], comp[1])
    loss = cw * jnp.sum(beta * u + log_q)
    return loss, jnp.stack(g_mu), jnp.stack(g_var), a, S


def reduced_grads_fast(mu, var, zs, r2, beta, R, w_star, d):
    """Closed-form :func:`reduced_grads` (used by the sampler); same arguments and returns,
    plus ``S = C C^T`` (2, 2) as a fifth output."""
    return _fast_grads_soa(mu, var, jnp.moveaxis(zs, -1, 0), r2, beta, R, w_star, d)


def _fast_grads_labels(mu, var, zs, r2, onehot, weight, beta, R, w_star, d):
    """Closed-form reduced loss and gradients for samples with arbitrary component labels.

    The per-sample algebra of :func:`_fast_grads_soa` with the sample index ``b`` running over
    one array of samples, sample ``b`` drawn from component ``k_b``:
    ``x_b = mu_{k_b} + sigma_{k_b} z_b`` and ``L = sum_b weight_b [beta U(x_b) + log q(x_b)]``.

    Args:
      mu: means in span coordinates, shape (2, 3); var: variances, shape (2,).
      zs: in-span noise coordinates, shape (3, B) (structure of arrays).
      r2: squared norms of the perpendicular noise, shape (B,) (chi^2_{d-3}).
      onehot: labels as one-hot floats, shape (2, B) (``onehot[k, b] = 1[k_b = k]``).
      weight: per-sample weight, scalar or shape (B,) (``1/B`` for the categorical protocol).
      beta, R, w_star, d: as in :func:`reduced_loss`.
    Returns:
      ``(loss, g_mu (2, 3), g_var (2,), a (2, B), S (2, 2))``: the perpendicular gradient of
      ``mu_j`` is ``sum_b a[j, b] z_perp_b``, and ``S = C C^T`` with ``C_{j,b} = a_{j,b} r_b``.
    """
    w = WEIGHTS[0]                                    # equal fixed weights 1/2
    sig = jnp.sqrt(var)
    mu_t = mu.T                                       # (3, j)
    sig_b = sig @ onehot                              # (B,) sigma_{k_b}
    x = mu_t @ onehot + sig_b[None] * zs              # (3, B)
    perp = (var @ onehot) * r2                        # (B,) sigma_{k_b}^2 r_b^2
    diffs = [x - mu_t[:, j, None] for j in range(2)]
    dsq = [jnp.sum(df * df, 0) + perp for df in diffs]
    comp = [-0.5 * d * jnp.log(var[j]) - 0.5 * dsq[j] / var[j] for j in range(2)]
    rho0 = jax.nn.sigmoid(comp[0] - comp[1])
    rho = [rho0, 1.0 - rho0]
    kappa = 0.5 * (jnp.log(w_star) - jnp.log1p(-w_star))
    proj = x[0]
    h = jnp.tanh(R * proj + kappa)
    A = beta - rho[0] / var[0] - rho[1] / var[1]      # (B,)
    grad_x = (A[None] * x + (rho[0] / var[0])[None] * mu_t[:, 0, None]
              + (rho[1] / var[1])[None] * mu_t[:, 1, None])
    grad_x = grad_x.at[0].add(-beta * R * h)          # (3, B) gradient of the per-sample loss
    wt = jnp.broadcast_to(jnp.asarray(weight, x.dtype), r2.shape)
    gz = jnp.sum(grad_x * zs, 0)                      # (B,) <grad_x, z_b>
    g_mu, g_var, a_rows = [], [], []
    for j in range(2):
        own = onehot[j]                               # samples drawn from component j
        explicit = (rho[j] / var[j])[None] * diffs[j]                        # (3, B)
        g_mu.append(jnp.sum(wt[None] * (own[None] * grad_x + explicit), -1))
        through_x = own * (gz / (2.0 * sig[j]) + 0.5 * A * r2)
        explicit_v = rho[j] * (0.5 * dsq[j] / var[j] ** 2 - 0.5 * d / var[j])
        g_var.append(jnp.sum(wt * (through_x + explicit_v)))
        a_rows.append(wt * sig_b * (own * A + rho[j] / var[j]))              # (B,)
    a = jnp.stack(a_rows)
    ar = a * jnp.sqrt(r2)[None]
    S = ar @ ar.T
    log_mix = jnp.logaddexp(jnp.log(w_star) + R * proj, jnp.log1p(-w_star) - R * proj)
    u = 0.5 * d * _LOG_2PI + 0.5 * (jnp.sum(x * x, 0) + perp) + 0.5 * R * R - log_mix
    log_q = math.log(w) - 0.5 * d * _LOG_2PI + jnp.logaddexp(comp[0], comp[1])
    loss = jnp.sum(wt * (beta * u + log_q))
    return loss, jnp.stack(g_mu), jnp.stack(g_var), a, S


def reduced_grads_labels(mu, var, zs, r2, labels, beta, R, w_star, d, weight=None):
    """Closed-form reduced loss and gradients of the categorical protocol (labelled samples).

    Sample by sample equal to :func:`~annealvi_lib.student.mc_loss_categorical` and its
    gradients with the corresponding d-dimensional noise (``z_b`` split into its span
    coordinates and the squared norm of its perpendicular part).

    Args:
      mu: means in span coordinates, shape (2, 3); var: variances, shape (2,).
      zs: in-span noise coordinates, shape (B, 3).
      r2: squared norms of the perpendicular noise, shape (B,).
      labels: component labels in {0, 1}, integer array of shape (B,).
      beta, R, w_star, d: as in :func:`reduced_loss` (``d`` static under jit).
      weight: per-sample weight, scalar or shape (B,); default ``1/B`` (the categorical mean).
    Returns:
      ``(loss, g_mu (2, 3), g_var (2,), a (2, B), S (2, 2))``, ``S = C C^T`` with
      ``C_{j,b} = a_{j,b} r_b``.
    """
    onehot = jax.nn.one_hot(labels, 2, axis=0, dtype=jnp.result_type(var))
    if weight is None:
        weight = 1.0 / r2.shape[-1]
    return _fast_grads_labels(mu, var, jnp.moveaxis(zs, -1, 0), r2, onehot, weight, beta, R,
                              w_star, d)


def sample_chi2(key: jax.Array, dof: int, shape: tuple):
    """``chi^2_dof`` variates: Wilson-Hilferty for ``dof >= 30`` (fast), gamma otherwise (exact).

    Wilson-Hilferty: ``dof (1 - a + xi sqrt(a))^3`` with ``a = 2/(9 dof)``, ``xi ~ N(0, 1)``;
    relative bias of the mean ``a^3``.
    """
    if dof >= _WH_MIN_DOF:
        a = 2.0 / (9.0 * dof)
        y = 1.0 - a + jax.random.normal(key, shape) * math.sqrt(a)
        return dof * y * y * y
    return 2.0 * jax.random.gamma(key, 0.5 * dof, shape)


def _wh(xi, dof: int):
    """Wilson-Hilferty transform of given standard normals (``dof >= _WH_MIN_DOF``)."""
    a = 2.0 / (9.0 * dof)
    y = 1.0 - a + xi * math.sqrt(a)
    return dof * y * y * y


def perp_factor(S, bartlett):
    """Lower-triangular 2x2 factor ``V`` with ``V V^T ~ Wishart_2(D, S/D)``.

    Args:
      S: 2x2 positive semi-definite matrix ``C C^T``.
      bartlett: ``(sqrt(chi^2_D), N(0,1), sqrt(chi^2_{D-1}))`` divided by ``sqrt(D)``, shape (3,).
    Returns:
      V of shape (2, 2); row j are the coordinates of ``v_j`` in an orthonormal basis of the
      plane of ``(v1, v2)`` in the complement of the span.
    """
    l11 = jnp.sqrt(jnp.maximum(S[0, 0], 0.0))
    safe = jnp.where(l11 > 0, l11, 1.0)
    l21 = jnp.where(l11 > 0, S[0, 1] / safe, 0.0)
    l22 = jnp.sqrt(jnp.maximum(S[1, 1] - l21 * l21, 0.0))
    a11, a21, a22 = bartlett[0], bartlett[1], bartlett[2]
    zero = jnp.zeros_like(l11)
    return jnp.stack([jnp.stack([l11 * a11, zero]),
                      jnp.stack([l21 * a11 + l22 * a21, l22 * a22])])


def reduced_update(state: ReducedState, mu, g_mu, g_var, V, beta, lr, d) -> ReducedState:
    """JKO/Bures update of the statistics given the gradients (DESIGN section 3).

    ``mu_j <- mu_j - (lr/beta) (g_j, v_j)`` in the 5-d space span + plane of ``(v1, v2)`` (the
    row ``V[j]`` are ``v_j``'s coordinates), renormalised to norm R (so only directions matter);
    ``var_k <- var_k (1 - 2 lr/(beta d) dL/dvar_k)^2``.
    """
    step = lr / beta
    u = jnp.concatenate([mu - step * g_mu, -step * V], axis=-1)     # (2, 5)
    norm = jnp.sqrt(jnp.sum(u * u, -1))
    m = u[:, 0] / norm
    s = jnp.dot(u[0], u[1]) / (norm[0] * norm[1])
    var = state.var * (1.0 - (2.0 * lr / (beta * d)) * g_var) ** 2
    return ReducedState(m=m, s=s, var=var)


def _draw_noise(key, shape: tuple, d: int):
    """Span coordinates (3, *shape), ``r^2`` (*shape) and Bartlett factors (3,) of one step for
    ``prod(shape)`` samples: one block of normals (Wilson-Hilferty ``chi^2`` when
    ``D = d - 3 >= 30``), exact gamma draws otherwise."""
    D = d - 3
    n = math.prod(shape)
    if D >= _WH_MIN_DOF:
        xi = jax.random.normal(key, (4 * n + 3,))
        zs = xi[: 3 * n].reshape((3,) + shape)
        r2 = _wh(xi[3 * n: 4 * n].reshape(shape), D)
        tail = xi[4 * n:]
        chi_d, chi_d1 = _wh(tail[0], D), _wh(tail[2], D - 1)
        bart = jnp.stack([jnp.sqrt(chi_d), tail[1], jnp.sqrt(chi_d1)]) / math.sqrt(D)
        return zs, r2, bart
    k1, k2, k3, k4 = jax.random.split(key, 4)
    zs = jax.random.normal(k1, (3,) + shape)
    r2 = 2.0 * jax.random.gamma(k2, 0.5 * D, shape)
    g = 2.0 * jax.random.gamma(k3, jnp.array([0.5 * D, 0.5 * (D - 1)]))
    bart = jnp.stack([jnp.sqrt(g[0]), jax.random.normal(k4, ()), jnp.sqrt(g[1])]) / math.sqrt(D)
    return zs, r2, bart


def _draw(key, batch: int, d: int):
    """All noise of one stratified step: span coordinates (3, 2, B), r^2 (2, B), Bartlett
    factors (3,)."""
    return _draw_noise(key, (2, batch), d)


def _draw_categorical(key, batch: int, d: int):
    """All noise of one categorical step: labels as one-hot floats (2, B), span coordinates
    (3, B), r^2 (B,), Bartlett factors (3,). The labels come from ``split(key)[0]`` with
    :func:`~annealvi_lib.student.sample_labels`, as in the exact sampler's categorical step."""
    k_lab, k_noise = jax.random.split(key)
    onehot = jax.nn.one_hot(sample_labels(k_lab, batch), 2, axis=0, dtype=jnp.float32)
    return (onehot,) + _draw_noise(k_noise, (batch,), d)


def _loss_grads(mu, var, key, beta, target: Target, hyper: Hyper):
    """Draw one step's noise by ``hyper.sampling`` (static) and return
    ``(loss, g_mu, g_var, S, bartlett)``."""
    d = target.d
    if hyper.sampling == "categorical":
        onehot, zs, r2, bart = _draw_categorical(key, hyper.batch, d)
        loss, g_mu, g_var, _, S = _fast_grads_labels(mu, var, zs, r2, onehot, 1.0 / hyper.batch,
                                                     beta, target.R, target.w_star, d)
        return loss, g_mu, g_var, S, bart
    zs, r2, bart = _draw(key, hyper.batch, d)
    loss, g_mu, g_var, _, S = _fast_grads_soa(mu, var, zs, r2, beta, target.R, target.w_star, d)
    return loss, g_mu, g_var, S, bart


def gradient_noise_draws(key: jax.Array, m, s, var, beta, R: float, w_star: float, d: int,
                         hyper: Hyper, n_draws: int):
    """Independent gradient evaluations of the reduced sampler at one fixed state (no update),
    for measuring the Monte-Carlo gradient's moments.

    Args:
      key: PRNG key. m: (m1, m2); s: overlap; var: (v1, v2); beta: inverse temperature.
      R, w_star, d: target. hyper: batch and sampling protocol. n_draws: evaluations (>= 2).
    Returns:
      ``(g_mu, S)``: in-span gradients of shape (n_draws, 2, 3) (first coordinate along mu*,
      second along the in-plane axis of mu1) and the perpendicular Gram matrices ``S = C C^T``
      (n_draws, 2, 2), whose expectation is D times the per-direction covariance.
    """
    n_draws = check_int_at_least("n_draws", n_draws, 2)
    check_int_at_least("d", d, MIN_DIM)
    target = make_target(d, R, w_star)
    mu = span_coords(jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32), R)
    var = jnp.asarray(var, jnp.float32)

    def one(k):
        _, g_mu, _, S, _ = _loss_grads(mu, var, k, beta, target, hyper)
        return g_mu, S

    with fast_threefry():
        g, S = jax.jit(jax.vmap(one))(jax.random.split(key, n_draws))
    return np.asarray(g, float), np.asarray(S, float)


def reduced_step(state: ReducedState, key: jax.Array, target: Target, beta, hyper: Hyper):
    """One stochastic JKO step on the statistics; returns ``(new_state, loss)`` (loss = L_hat).

    ``hyper.sampling`` (static) chooses the protocol: stratified (B samples per component,
    :func:`_draw`) or categorical (B samples in total with drawn labels).
    """
    d = target.d
    mu = span_coords(state.m, state.s, target.R)
    loss, g_mu, g_var, S, bart = _loss_grads(mu, state.var, key, beta, target, hyper)
    V = perp_factor(S, bart)
    return reduced_update(state, mu, g_mu, g_var, V, beta, hyper.lr, d), loss


def _run(key, state0, target, betas, hyper: Hyper, record: bool):
    """Scan of reduced steps over a traced array of inverse temperatures ``betas`` (n_iter + 1,)."""
    n_iter = betas.shape[-1] - 1
    log_z = log_partition(target, betas) if record else jnp.zeros_like(betas)
    keys = jax.random.split(key, n_iter + 1)

    def body(state, xs):
        k, beta, lz = xs
        new, loss = reduced_step(state, k, target, beta, hyper)
        if not record:
            return new, None
        return new, (state.m[0], state.m[1], state.s, state.var[0], state.var[1], loss + lz)

    final, rec = jax.lax.scan(body, state0, (keys[:-1], betas[:-1], log_z[:-1]))
    if not record:
        return final, None
    # last point: statistics of the final state and a KL estimate from one more batch
    mu = span_coords(final.m, final.s, target.R)
    kl_last = _loss_grads(mu, final.var, keys[-1], betas[-1], target, hyper)[0] + log_z[-1]
    last = (final.m[0], final.m[1], final.s, final.var[0], final.var[1], kl_last)
    cols = [jnp.concatenate([r, jnp.atleast_1d(v)]) for r, v in zip(rec, last)]
    traj = Trajectory(m1=cols[0], m2=cols[1], s=cols[2], var1=cols[3], var2=cols[4],
                      beta=betas, kl=cols[5])
    return final, traj


def _simulate_reduced(key, state0, target, schedule: Schedule, n_iter: int, hyper: Hyper,
                      record: bool):
    return _run(key, state0, target, schedule(jnp.arange(n_iter + 1)), hyper, record)


_simulate_reduced_jit = jax.jit(
    _simulate_reduced, static_argnames=("schedule", "n_iter", "hyper", "record"))


def _check_dim(target: Target) -> None:
    check_int_at_least("d", target.d, MIN_DIM)


def simulate_reduced(key: jax.Array, state0: ReducedState, target: Target, schedule: Schedule,
                     n_iter: int, hyper: Hyper = Hyper(), record: bool = True):
    """Run ``n_iter`` reduced JKO steps along ``schedule`` (``lax.scan`` under ``jit``).

    Same contract as :func:`annealvi_lib.student.simulate`, on the statistics.

    Args:
      key: PRNG key for the Monte-Carlo noise of this run.
      state0: initial :class:`ReducedState` (e.g. from :func:`init_reduced`).
      target: the :class:`~annealvi_lib.targets.Target` (d >= 5; only d, R, w_star are used).
      schedule: a :class:`~annealvi_lib.schedules.Schedule`; step t uses beta = schedule(t).
      n_iter: number of steps (integer >= 0).
      hyper: learning rate, batch B and sampling protocol (B per component when stratified,
        in total when categorical).
      record: also return a :class:`~annealvi_lib.student.Trajectory` (length n_iter + 1; entry
        t = state before step t; ``kl`` = loss + exact log Z_beta).
    Returns:
      ``(final ReducedState, trajectory_or_None)``.
    """
    _check_dim(target)
    n_iter = check_int_at_least("n_iter", n_iter, 0)
    with fast_threefry():
        return _simulate_reduced_jit(key, state0, target, schedule, n_iter, hyper, record)


def _simulate_betas(init_keys, noise_keys, target, betas, var0, hyper, record):
    def one(ki, kn, b, v0):
        return _run(kn, init_reduced(ki, target, v0), target, b, hyper, record)

    return jax.vmap(one)(init_keys, noise_keys, betas, var0)


_simulate_betas_jit = jax.jit(_simulate_betas, static_argnames=("hyper", "record"))


def simulate_reduced_betas(init_keys, noise_keys, target: Target, betas, hyper: Hyper = Hyper(),
                           var0=None, record: bool = True, chunk: int | None = 64):
    """Batched reduced runs with *per-run* temperature paths (one compilation per ``n_iter``).

    The schedule enters as a traced array, so runs of different cells (different ``beta_i``,
    ``t0``, schedule shapes) with the same number of steps share one compiled program and one
    vmapped batch: flatten (cells x seeds) into the leading axis. This is the entry point for
    grid runners; :func:`simulate_reduced_seeds` (static schedule) is the convenience wrapper.

    Args:
      init_keys, noise_keys: keys of shape (S,).
      target: the :class:`~annealvi_lib.targets.Target` (d >= 5).
      betas: inverse temperatures at steps 0..n_iter, shape (n_iter + 1,) (shared) or
        (S, n_iter + 1) (per run), values in (0, 1]; e.g. ``schedule(jnp.arange(n_iter + 1))``.
      hyper: learning rate, batch B and sampling protocol (static; B per component when
        stratified, in total when categorical).
      var0: initial variances, scalar or shape (S,), > 0; default ``1 / betas[..., 0]``.
      record: also return trajectories (arrays of shape (S, n_iter + 1)).
      chunk: most runs per compiled call (>= 1; None: all S at once). The runs are processed
        as a loop over calls of one width, ``seeding.lanes(S, chunk)`` (the last call padded by
        repeating its last run, then dropped), so that all runs go through one compiled program
        and a run's numbers depend only on its inputs, its position and that width.
        Smaller calls keep the per-step working set in cache (64 measured ~1.3x faster than one
        vmap over 256 runs on 2 CPU cores).
    Returns:
      ``(final ReducedState, trajectories_or_None)`` with leading axis S.
    """
    if chunk is not None:
        chunk = check_int_at_least("chunk", chunk, 1)
    _check_dim(target)
    n_seeds = int(np.shape(init_keys)[0])
    if np.shape(noise_keys)[:1] != (n_seeds,):
        raise ValueError(f"noise_keys must have leading size {n_seeds} like init_keys, "
                         f"got shape {np.shape(noise_keys)}")
    b = np.asarray(betas, dtype=np.float32)
    if b.ndim not in (1, 2) or b.shape[-1] < 1 or (b.ndim == 2 and b.shape[0] != n_seeds):
        raise ValueError(f"betas must have shape (n_iter + 1,) or ({n_seeds}, n_iter + 1), "
                         f"got {b.shape}")
    if not np.all(np.isfinite(b)) or np.any((b <= 0) | (b > 1)):
        raise ValueError("betas must lie in (0, 1]")
    b = np.broadcast_to(b, (n_seeds, b.shape[-1]))
    v = 1.0 / b[:, 0] if var0 is None else np.broadcast_to(
        np.asarray(var0, dtype=np.float32), (n_seeds,))
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError("var0 must be > 0 and finite")
    width = n_seeds if chunk is None else lanes(n_seeds, chunk)
    b = np.ascontiguousarray(b)
    v = np.asarray(v, np.float32)
    parts = []
    for idx, keep in padded_blocks(n_seeds, width):
        with fast_threefry():
            out = _simulate_betas_jit(init_keys[idx], noise_keys[idx], target,
                                      jnp.asarray(b[idx]), jnp.asarray(v[idx]), hyper, record)
        parts.append(jax.tree.map(lambda a: a[:keep], out))
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _simulate_reduced_seeds(init_keys, noise_keys, target, schedule, n_iter, hyper, var0,
                            record):
    def one(ki, kn):
        state0 = init_reduced(ki, target, var0)
        return _simulate_reduced(kn, state0, target, schedule, n_iter, hyper, record)

    return jax.vmap(one)(init_keys, noise_keys)


_simulate_reduced_seeds_jit = jax.jit(
    _simulate_reduced_seeds, static_argnames=("schedule", "n_iter", "hyper", "var0", "record"))


def simulate_reduced_seeds(init_keys, noise_keys, target: Target, schedule: Schedule,
                           n_iter: int, hyper: Hyper = Hyper(), var0: float | None = None,
                           record: bool = True):
    """Many independent reduced runs at once (``vmap`` over seeds), mirroring
    :func:`annealvi_lib.student.simulate_seeds`.

    The initial statistics come from :func:`init_reduced` with the same ``init_keys``, so they
    are *identical* (to float round-off) to those of ``student.simulate_seeds`` with the same
    keys; the noise keys drive a different (reduced) noise, so trajectories agree in law, not
    path by path. The schedule is static (one compilation per schedule); for grids use
    :func:`simulate_reduced_betas`.

    Args:
      init_keys, noise_keys: keys of shape (S,), e.g. from :func:`~annealvi_lib.student.seed_keys`.
      var0: initial variance (default ``1 / beta(0)``, the paper's choice).
    Returns:
      ``(final ReducedState, trajectories)`` with a leading seed axis of size S. Classify with
      :func:`~annealvi_lib.student.classify_collapse` on ``final.s`` (non-finite -> failed).
    """
    _check_dim(target)
    n_iter = check_int_at_least("n_iter", n_iter, 0)
    if var0 is None:
        var0 = 1.0 / float(schedule(0))
    var0 = check_positive("var0", var0)
    with fast_threefry():
        return _simulate_reduced_seeds_jit(init_keys, noise_keys, target, schedule, n_iter, hyper,
                                           float(var0), record)

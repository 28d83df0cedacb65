"""Reduced O(B + d)-per-step sampler of the GMM student: the same Markov chain on the summary
statistics ``(m1, m2, s, var1, var2)`` as the exact sampler of :mod:`annealvi_lib.models.student`,
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
  ``grad_{p_j} L = sum_kb a_{j,kb} z_perp_kb``. Equivalent closed forms: per sample,
  :func:`reduced_grads_fast` and :func:`reduced_grads_labels` (no autodiff), and, as the
  sampler computes it, through sample sums (:func:`noise_sums`, :func:`grads_from_sums`);
  tests check them against each other and against the exact sampler's gradients with shared
  noise.

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

How a step is drawn and computed
--------------------------------
All of a step's noise comes from one block of threefry bits (:func:`draw_step_noise`): per
sample, two Box-Muller pairs (:func:`normal_pairs`; the angle without ``sin``/``cos`` calls) give
the three span coordinates and the normal of the Wilson-Hilferty ``chi^2_D``; the samples are
ordered by component (the first ``n0``), so the categorical protocol needs only the count
``n0 ~ Binomial(N, 1/2)``, the popcount of ``N`` random bits. The gradients are then linear in
30 sample sums, computed as one 4 x 12 matrix product of per-sample features over the samples
(:func:`noise_sums`, :func:`grads_from_sums`; 18 of its 48 entries are not needed, and half of
the right factor is zeros, but one product is cheaper than separate reductions, each of which
XLA would fuse with, and so re-evaluate, the per-sample nonlinearities). The runners draw each
step's noise one scan iteration ahead (:func:`run_with_range`), and run :data:`LANES` runs per
compiled call.

Cost per step: ``3N + 4 + N/32`` random words and O(N) arithmetic for ``N`` samples, against
``N d`` normals and O(N d) for the exact sampler. Where the time goes, the limit set by the
random-number generator, and the comparison with the previous implementation (normals by
``erfinv``, per-sample labels, per-output reductions): ``benchmarks/bench_gmm.py``, reported on
the book's reproducing page. The statistics are validated against the exact sampler in
``tests/test_reduced.py`` (per-sample gradients identical with shared noise; the sums against
the per-sample closed form; one-step update moments; collapse rates) and in chapter 3.

Categorical protocol
--------------------
With ``Hyper(sampling="categorical")`` (the official code's protocol) the ``B`` samples are
drawn from q *in total*: labels ``k_b ~ Categorical(w)`` with the student's equal weights,
``x_b = mu_{k_b} + sigma_{k_b} z_b``, per-sample weight ``1/B``. The reduction above holds
sample by sample, whatever the label: :func:`reduced_grads_labels` is the same closed form with
one array of B samples, each carrying its one-hot label (stratified sampling is the special case
of labels ``[0]*B + [1]*B`` and weights ``1/(2B)``; tested). As the loss is a sum over samples,
only the number of samples of each component matters: the sampler draws that count (a
``Binomial(B, 1/2)``) and orders the samples by component, which has exactly the law of labels
drawn one by one. Exact in the same sense as the stratified protocol: the only approximations
are the Wishart Gram and Wilson-Hilferty, besides the float32-level discretisation of the
normals (:func:`normal_pairs`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._rng import fast_threefry
from .._validate import check_int_at_least, check_positive
from ..seeding import lanes, padded_blocks
from .schedules import Schedule
from .student import WEIGHTS, Hyper, Trajectory, init_student, summary_stats
from .targets import Target, log_partition

__all__ = [
    "ReducedState",
    "MIN_DIM",
    "LANES",
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
    "NORMAL_TAIL",
    "StepNoise",
    "n_samples",
    "normal_pairs",
    "draw_step_noise",
    "noise_sums",
    "grads_from_sums",
    "step_loss",
    "apply_noise",
    "reduced_step",
    "run_with_range",
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
#: Runs per compiled call of the runners: small calls keep a step's working set small
#: (``benchmarks/bench_gmm.py`` measures the current sampler at 2, 4, 8, 16 and 50 runs per call,
#: ``profile_reduced``; 4 was the fastest on the 2-core machines it ran on).
LANES = 4


def _half_log_odds(w_star):
    """``kappa = ln(w*/(1-w*))/2``: the target's mixture term is ``tanh(R <x, mu*> + kappa)``."""
    return 0.5 * (jnp.log(w_star) - jnp.log1p(-w_star))


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
    """Statistics of a full :class:`~annealvi_lib.models.student.StudentState` (mu shape (2, d))."""
    m1, m2, s = summary_stats(state, target)
    return ReducedState(m=jnp.stack([m1, m2]), s=s, var=state.var)


def init_reduced(init_key: jax.Array, target: Target, var0: float) -> ReducedState:
    """Initial statistics with exactly the law of the exact sampler's initialisation.

    Literally :func:`~annealvi_lib.models.student.init_student` followed by
    :func:`~annealvi_lib.models.student.summary_stats` (O(d) once per run), so that the same
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
      scalar loss, equal sample by sample to :func:`~annealvi_lib.models.student.mc_loss` with the
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
    kappa = _half_log_odds(w_star)
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
    kappa = _half_log_odds(w_star)
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

    Sample by sample equal to :func:`~annealvi_lib.models.student.mc_loss_categorical` and its
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


# --------------------------------------------------------------------------------------------
# the sampler's noise: one step's randomness drawn from counter-based bits
# --------------------------------------------------------------------------------------------

#: Largest |z| a Box-Muller pair can produce from 24-bit uniforms: sqrt(2 * 24 ln 2) ~ 5.77
#: (a radius beyond it has probability 2^-24 per pair; ``jax.random.normal`` truncates at ~5.4).
NORMAL_TAIL = math.sqrt(48.0 * math.log(2.0))


class StepNoise(NamedTuple):
    """All the randomness of one reduced step (pytree), for ``N`` samples in total.

    Attributes:
      z: span coordinates of the samples' standard normals, shape (3, N).
      r2: squared norms of their perpendicular parts, ``chi^2_{d-3}``, shape (N,).
      n0: number of samples from component 0 (int32, shape ()): samples ``0 .. n0-1`` belong to
        component 0, the rest to component 1 (``N/2`` when stratified, ``Binomial(N, 1/2)``
        when categorical).
      bartlett: ``(sqrt(chi^2_D), N(0,1), sqrt(chi^2_{D-1})) / sqrt(D)`` for the Wishart Gram,
        shape (3,).
    """

    z: jax.Array
    r2: jax.Array
    n0: jax.Array
    bartlett: jax.Array


def n_samples(hyper: Hyper) -> int:
    """Samples per step: ``B`` in total (categorical) or ``B`` per component (stratified)."""
    return hyper.batch if hyper.sampling == "categorical" else 2 * hyper.batch


def _flip(x, bit):
    """``x * (-1)**bit`` by the sign bit (``bit`` uint32 in {0, 1})."""
    xb = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(xb ^ (bit << 31), jnp.float32)


def normal_pairs(bits_radius, angle24):
    """Two independent standard normals per (radius word, 24-bit angle word) (Box-Muller).

    The radius is ``sqrt(-2 ln u)`` with ``u = (k + 1) / 2^24``, ``k`` the top 24 bits of
    ``bits_radius`` (exact in float32). The angle is uniform on the circle, built without
    ``sin``/``cos`` calls (expensive on XLA's CPU backend; ``profile_reduced`` in
    ``benchmarks/bench_gmm.py`` times them): ``phi = (j + 1/2) (pi/4) 2^-21`` with ``j`` bits
    3..23 of ``angle24`` (the midpoints of 2^21 equal cells of [0, pi/4)) gives
    ``(cos phi, sin phi)`` by Taylor polynomials (truncation < 3e-8, below float32 round-off),
    and its three low bits swap the two coordinates and flip their signs: the eight images of
    the octant under the reflections of the square, so the angle is uniform on 2^24 equally
    spaced, equally likely points of the circle (midpoints: no point is an image twice). Not
    exactly Gaussian only through this 2^-24 / 2^-21 discretisation, float32 rounding and the
    radius cut at :data:`NORMAL_TAIL` (probability 2^-24 per pair).

    Args:
      bits_radius: uint32 array; angle24: uint32 array of the same shape, values < 2^24.
    Returns:
      two float32 arrays of that shape.
    """
    u = ((bits_radius >> 8) + 1).astype(jnp.float32) * (2.0 ** -24)
    rad = jnp.sqrt(-2.0 * jnp.log(u))
    phi = (math.pi / 4.0 * 2.0 ** -21) * ((angle24 >> 3).astype(jnp.float32) + 0.5)
    p2 = phi * phi
    c = 1.0 + p2 * (-1 / 2 + p2 * (1 / 24 + p2 * (-1 / 720 + p2 * (1 / 40320))))
    s = phi * (1.0 + p2 * (-1 / 6 + p2 * (1 / 120 + p2 * (-1 / 5040 + p2 * (1 / 362880)))))
    swap = (angle24 & 1) == 1
    a, b = jnp.where(swap, s, c), jnp.where(swap, c, s)
    return (_flip(rad * a, (angle24 >> 1) & 1), _flip(rad * b, (angle24 >> 2) & 1))


def _popcount_binomial(words, n: int):
    """``Binomial(n, 1/2)`` as the number of set bits among the first ``n`` bits of ``words``."""
    extra = 32 * words.shape[-1] - n
    if extra:
        words = words.at[-1].set(words[-1] >> extra)
    return jnp.sum(jax.lax.population_count(words).astype(jnp.int32))


def draw_step_noise(key: jax.Array, hyper: Hyper, d: int) -> StepNoise:
    """All the noise of one reduced step from one block of threefry bits.

    ``3 N + 4 + ceil(N/32)`` uint32 words: two Box-Muller pairs from three words per sample
    (three span coordinates and the normal of the Wilson-Hilferty ``chi^2_{d-3}``; when
    ``d - 4 < 30`` exact gamma draws instead, from a key split off before the bits), one pair
    and a half for the Bartlett factors, and ``N`` bits whose popcount is the categorical protocol's component count. The
    labels of the categorical protocol are i.i.d. Bernoulli(1/2) (equal student weights) and the
    loss is a sum over samples, so only their count matters: the samples are ordered with
    component 0 first. Same law as labels drawn one by one.

    Args:
      key: PRNG key of the step. hyper: batch and sampling protocol (static). d: dimension.
    Returns:
      a :class:`StepNoise` with ``N =`` :func:`n_samples` ``(hyper)``.
    """
    n = n_samples(hyper)
    D = d - 3
    n_words = -(-n // 32)
    # Wilson-Hilferty for chi^2_D and chi^2_{D-1} when both dofs reach the threshold; otherwise
    # exact gamma draws from a key of their own (the bits then come from the other half of a split)
    use_wh = D - 1 >= _WH_MIN_DOF
    if not use_wh:
        key, k_gamma = jax.random.split(key)
    bits = jax.random.bits(key, (3 * n + 4 + n_words,), jnp.uint32)
    w = bits[: 3 * n].reshape(3, n)
    # two normal pairs from three words: 24-bit radii from w0, w1; 24-bit angles from the
    # halves of w2 completed by the low bytes of w0, w1
    z0, z1 = normal_pairs(w[0], ((w[2] >> 16) << 8) | (w[0] & 0xFF))
    z2, xi = normal_pairs(w[1], ((w[2] & 0xFFFF) << 8) | (w[1] & 0xFF))
    off = 3 * n
    t0, t1 = normal_pairs(bits[off], bits[off + 1] & 0xFFFFFF)
    t2, _ = normal_pairs(bits[off + 2], bits[off + 3] & 0xFFFFFF)
    if use_wh:
        r2 = _wh(xi, D)
        chi = jnp.stack([_wh(t0, D), _wh(t2, D - 1)])
    else:
        k_r2, k_chi = jax.random.split(k_gamma)
        r2 = 2.0 * jax.random.gamma(k_r2, 0.5 * D, (n,))
        chi = 2.0 * jax.random.gamma(k_chi, jnp.array([0.5 * D, 0.5 * (D - 1)]))
    bart = jnp.stack([jnp.sqrt(chi[0]), t1, jnp.sqrt(chi[1])]) / math.sqrt(D)
    if hyper.sampling == "categorical":
        n0 = _popcount_binomial(bits[off + 4:], n)
    else:
        n0 = jnp.asarray(n // 2, jnp.int32)
    return StepNoise(z=jnp.stack([z0, z1, z2]), r2=r2, n0=n0, bartlett=bart)


def _per_sample(mu, var, noise: StepNoise, R, w_star, d):
    """Per-sample quantities shared by the gradient sums and the loss: the component mask, the
    responsibility of component 0, ``<x, mu*>`` and the ``log q`` mixture terms."""
    z0, z1, z2 = noise.z[0], noise.z[1], noise.z[2]
    n = noise.r2.shape[-1]
    own0 = jnp.arange(n) < noise.n0
    v0, v1 = var[0], var[1]
    sig = jnp.sqrt(var)
    dmu = mu[0] - mu[1]
    dd = jnp.dot(dmu, dmu)
    zz = z0 * z0 + z1 * z1 + z2 * z2
    q = zz + noise.r2                                   # |z|^2 of the full d-dim normal
    pz = dmu[0] * z0 + dmu[1] * z1 + dmu[2] * z2        # <mu1 - mu2, z> in the span
    # log q_own - log q_other: own |x - mu_k|^2 = var_k q, other = |dmu|^2 +- 2 sig_k pz + var_k q
    lo0 = (-0.5 * d * jnp.log(v0 / v1) + 0.5 * dd / v1 - 0.5 * q
           + (sig[0] * pz + 0.5 * v0 * q) / v1)
    lo1 = (-0.5 * d * jnp.log(v1 / v0) + 0.5 * dd / v0 - 0.5 * q
           + (-sig[1] * pz + 0.5 * v1 * q) / v0)
    lo = jnp.where(own0, lo0, lo1)
    rho_own = jax.nn.sigmoid(lo)
    rho = jnp.where(own0, rho_own, 1.0 - rho_own)      # responsibility of component 0
    proj = jnp.where(own0, mu[0, 0], mu[1, 0]) + jnp.where(own0, sig[0], sig[1]) * z0
    return own0, rho, proj, zz, lo


def noise_sums(mu, var, noise: StepNoise, R, w_star, d):
    """The sample sums from which the step's gradients follow in closed form.

    ``M[k, p, q] = sum over the samples b of component k of L_p(b) Q_q(b)``, with
    ``L = (1, rho, rho^2, h)`` (``rho``: responsibility of component 0;
    ``h = tanh(R <x, mu*> + kappa)``) and ``Q = (1, z_1, z_2, z_3, |z_span|^2, r^2)``; see
    :func:`grads_from_sums`. Computed as one matrix product ``L (o Q, (1-o) Q)^T`` over the
    samples (``o``: the sample is from component 0): each per-sample nonlinearity is one row of
    the left factor, evaluated once per row instead of once per output.

    Returns:
      array of shape (2, 4, 6).
    """
    own0, rho, proj, zz, _ = _per_sample(mu, var, noise, R, w_star, d)
    h = jnp.tanh(R * proj + _half_log_odds(w_star))
    o = own0.astype(noise.r2.dtype)
    ones = jnp.ones_like(zz)
    base = jnp.stack([ones, noise.z[0], noise.z[1], noise.z[2], zz, noise.r2])     # (6, N)
    left = jnp.stack([ones, rho, rho * rho, h])                                    # (4, N)
    right = jnp.concatenate([o * base, (1.0 - o) * base])                          # (12, N)
    T = jax.lax.dot_general(left, right, (((1,), (1,)), ((), ())))                 # (4, 12)
    return jnp.stack([T[:, :6], T[:, 6:]])


def grads_from_sums(M, mu, var, beta, R, d, n: int):
    """In-span gradients, variance gradients and perpendicular Gram of one step from the sums of
    :func:`noise_sums`, shape (2, 4, 6) (``n`` samples, per-sample weight ``1/n``).

    The per-sample algebra of :func:`_fast_grads_labels` summed term by term: with
    ``A = beta - rho/var_0 - (1-rho)/var_1 = a0 - a1 rho`` every sum over samples of a
    component is a combination of the sums ``sum_c rho^k Q``; for a component-0 sample
    ``C_0 = sig_0 r (a0 + rho/var_1)``, ``C_1 = sig_0 r (1-rho)/var_1``, for a component-1
    sample ``C_0 = sig_1 r rho/var_0``, ``C_1 = sig_1 r (beta - rho/var_0)``. Tested against the
    per-sample form.

    Returns:
      ``(g_mu (2, 3), g_var (2,), S (2, 2))``.
    """
    M = M / n
    v0, v1 = var[0], var[1]
    sig = jnp.sqrt(var)
    dmu = mu[0] - mu[1]
    dd = jnp.dot(dmu, dmu)
    a0 = beta - 1.0 / v1
    a1 = 1.0 / v0 - 1.0 / v1
    e0 = jnp.array([1.0, 0.0, 0.0], M.dtype)
    # per component k: plain sums (row 0), rho-weighted (row 1), rho^2-weighted (row 2), h (row 3)
    cnt, Z, zz, r2 = M[:, 0, 0], M[:, 0, 1:4], M[:, 0, 4], M[:, 0, 5]
    cnt_r, Z_r, zz_r, r2_r = M[:, 1, 0], M[:, 1, 1:4], M[:, 1, 4], M[:, 1, 5]
    r2_rr = M[:, 2, 5]
    h_sum, hz_sum = M[:, 3, 0], M[:, 3, 1]
    g_mu, g_var = [], []
    for k in range(2):          # sums over the samples of component k
        mk, sk = mu[k], sig[k]
        SA = a0 * cnt[k] - a1 * cnt_r[k]                    # sum A
        SAz = a0 * Z[k] - a1 * Z_r[k]                       # sum A z
        # sum of grad_x l = A x + (rho/v0) mu0 + ((1-rho)/v1) mu1 - beta R h mu*
        g_mu.append(mk * SA + sk * SAz + mu[0] / v0 * cnt_r[k] + mu[1] / v1 * (cnt[k] - cnt_r[k])
                    - beta * R * e0 * h_sum[k])
        # sum of <grad_x l, z> and of A r^2
        gz = (a0 * jnp.dot(mk, Z[k]) - a1 * jnp.dot(mk, Z_r[k]) + sk * (a0 * zz[k] - a1 * zz_r[k])
              + jnp.dot(mu[0], Z_r[k]) / v0 + jnp.dot(mu[1], Z[k] - Z_r[k]) / v1
              - beta * R * hz_sum[k])
        g_var.append(gz / (2.0 * sk) + 0.5 * (a0 * r2[k] - a1 * r2_r[k]))
    # explicit dependence on mu_j: (1/v_j) sum rho_j (x - mu_j)
    ex0 = (sig[0] * Z_r[0] - dmu * cnt_r[1] + sig[1] * Z_r[1]) / v0
    ex1 = (dmu * (cnt[0] - cnt_r[0]) + sig[0] * (Z[0] - Z_r[0]) + sig[1] * (Z[1] - Z_r[1])) / v1
    g_mu = jnp.stack(g_mu) + jnp.stack([ex0, ex1])
    # explicit dependence on var_j: sum rho_j (|x - mu_j|^2 / (2 v_j^2) - d / (2 v_j))
    q, q_r = [zz[k] + r2[k] for k in range(2)], [zz_r[k] + r2_r[k] for k in range(2)]
    rho_dsq0 = (v0 * q_r[0] + dd * cnt_r[1] - 2.0 * sig[1] * jnp.dot(dmu, Z_r[1]) + v1 * q_r[1])
    rhob_dsq1 = (dd * (cnt[0] - cnt_r[0]) + 2.0 * sig[0] * jnp.dot(dmu, Z[0] - Z_r[0])
                 + v0 * (q[0] - q_r[0]) + v1 * (q[1] - q_r[1]))
    rho_sum = cnt_r[0] + cnt_r[1]
    ev0 = 0.5 * rho_dsq0 / v0 ** 2 - 0.5 * d / v0 * rho_sum
    ev1 = 0.5 * rhob_dsq1 / v1 ** 2 - 0.5 * d / v1 * (cnt[0] + cnt[1] - rho_sum)
    g_var = jnp.stack(g_var) + jnp.stack([ev0, ev1])
    # S = C C^T (weights 1/n in C: one more 1/n)
    S00 = (v0 * (a0 * a0 * r2[0] + 2.0 * a0 / v1 * r2_r[0] + r2_rr[0] / v1 ** 2)
           + v1 * r2_rr[1] / v0 ** 2)
    S01 = (v0 / v1 * (a0 * (r2[0] - r2_r[0]) + (r2_r[0] - r2_rr[0]) / v1)
           + v1 / v0 * (beta * r2_r[1] - r2_rr[1] / v0))
    S11 = (v0 / v1 ** 2 * (r2[0] - 2.0 * r2_r[0] + r2_rr[0])
           + v1 * (beta * beta * r2[1] - 2.0 * beta / v0 * r2_r[1] + r2_rr[1] / v0 ** 2))
    S = jnp.stack([jnp.stack([S00, S01]), jnp.stack([S01, S11])]) / n
    return g_mu, g_var, S


def step_loss(mu, var, noise: StepNoise, beta, R, w_star, d):
    """The Monte-Carlo loss ``L_hat`` of one step's noise (mean over the samples of
    ``beta U(x) + log q(x)``); used for the recorded KL estimate only."""
    own0, _, proj, zz, lo = _per_sample(mu, var, noise, R, w_star, d)
    v_own = jnp.where(own0, var[0], var[1])
    m_own = jnp.where(own0[None], mu[0][:, None], mu[1][:, None])          # (3, N)
    x = m_own + jnp.sqrt(v_own)[None] * noise.z
    xsq = jnp.sum(x * x, 0) + v_own * noise.r2
    log_mix = jnp.logaddexp(jnp.log(w_star) + R * proj, jnp.log1p(-w_star) - R * proj)
    u = 0.5 * d * _LOG_2PI + 0.5 * xsq + 0.5 * R * R - log_mix
    # log q = log(w q_own + w q_other) = log w + log q_own + log(1 + e^{-lo}), q_own at |x-mu_k|^2
    log_q_own = -0.5 * d * (_LOG_2PI + jnp.log(v_own)) - 0.5 * (zz + noise.r2)
    log_q = math.log(WEIGHTS[0]) + log_q_own + jax.nn.softplus(-lo)
    return jnp.mean(beta * u + log_q)


def apply_noise(state: ReducedState, noise: StepNoise, target: Target, beta, hyper: Hyper):
    """One stochastic JKO step on the statistics with the given noise; returns
    ``(new_state, loss)`` (loss = ``L_hat``, dead code unless used)."""
    d = target.d
    mu = span_coords(state.m, state.s, target.R)
    M = noise_sums(mu, state.var, noise, target.R, target.w_star, d)
    g_mu, g_var, S = grads_from_sums(M, mu, state.var, beta, target.R, d, noise.r2.shape[-1])
    V = perp_factor(S, noise.bartlett)
    loss = step_loss(mu, state.var, noise, beta, target.R, target.w_star, d)
    return reduced_update(state, mu, g_mu, g_var, V, beta, hyper.lr, d), loss


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
    mu = span_coords(jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32), R)
    var = jnp.asarray(var, jnp.float32)

    def one(k):
        noise = draw_step_noise(k, hyper, d)
        M = noise_sums(mu, var, noise, R, w_star, d)
        g_mu, _, S = grads_from_sums(M, mu, var, beta, R, d, noise.r2.shape[-1])
        return g_mu, S

    with fast_threefry():
        g, S = jax.jit(jax.vmap(one))(jax.random.split(key, n_draws))
    return np.asarray(g, float), np.asarray(S, float)


def reduced_step(state: ReducedState, key: jax.Array, target: Target, beta, hyper: Hyper):
    """One stochastic JKO step on the statistics; returns ``(new_state, loss)`` (loss = L_hat).

    ``hyper.sampling`` (static) chooses the protocol: stratified (B samples per component) or
    categorical (B samples in total, the component count drawn). The runners
    (:func:`run_with_range`, :func:`simulate_reduced` ...) apply the same map with the same
    keys, drawing each step's noise one scan iteration ahead (see :func:`_scan_steps`).
    """
    return apply_noise(state, draw_step_noise(key, hyper, target.d), target, beta, hyper)


def run_with_range(key: jax.Array, state0: ReducedState, target: Target, betas, hyper: Hyper):
    """Final state of ``n_iter = len(betas) - 1`` reduced steps and the range of the variances
    visited (the grid runner's entry point; the reduced twin of
    :func:`annealvi_lib.models.student.run_with_range`, with the same keys: step t uses key t of
    ``split(key, n_iter + 1)``).

    Each step's noise is drawn one scan iteration ahead and carried: crossing the loop boundary,
    it is materialised once, whereas drawn inside the step its Box-Muller transform is fused into,
    and recomputed by, each consumer of the samples (slower). Same map, same keys as repeated
    :func:`reduced_step`.

    Returns:
      ``(final_state, var_min, var_max)`` (NaN extremes when any step produced NaN).
    """
    n_iter = betas.shape[-1] - 1
    keys = jax.random.split(key, n_iter + 1)

    def body(carry, xs):
        state, noise, lo, hi = carry
        k_next, beta = xs
        new, _ = apply_noise(state, noise, target, beta, hyper)
        return (new, draw_step_noise(k_next, hyper, target.d), jnp.minimum(lo, new.var.min()),
                jnp.maximum(hi, new.var.max())), None

    init = (state0, draw_step_noise(keys[0], hyper, target.d), state0.var.min(),
            state0.var.max())
    (final, _, lo, hi), _ = jax.lax.scan(body, init, (keys[1:], betas[:-1]))
    return final, lo, hi


def _run(key, state0, target, betas, hyper: Hyper, record: bool):
    """Scan of reduced steps over a traced array of inverse temperatures ``betas`` (n_iter + 1,);
    noise drawn one iteration ahead as in :func:`run_with_range` (same keys)."""
    n_iter = betas.shape[-1] - 1
    log_z = log_partition(target, betas) if record else jnp.zeros_like(betas)
    keys = jax.random.split(key, n_iter + 1)

    def body(carry, xs):
        state, noise = carry
        k_next, beta, lz = xs
        new, loss = apply_noise(state, noise, target, beta, hyper)
        nxt = draw_step_noise(k_next, hyper, target.d)
        if not record:
            return (new, nxt), None
        return (new, nxt), (state.m[0], state.m[1], state.s, state.var[0], state.var[1],
                            loss + lz)

    init = (state0, draw_step_noise(keys[0], hyper, target.d))
    (final, last_noise), rec = jax.lax.scan(body, init, (keys[1:], betas[:-1], log_z[:-1]))
    if not record:
        return final, None
    # last point: statistics of the final state and a KL estimate from the noise of the last key
    mu = span_coords(final.m, final.s, target.R)
    kl_last = step_loss(mu, final.var, last_noise, betas[-1], target.R, target.w_star,
                        target.d) + log_z[-1]
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

    Same contract as :func:`annealvi_lib.models.student.simulate`, on the statistics.

    Args:
      key: PRNG key for the Monte-Carlo noise of this run.
      state0: initial :class:`ReducedState` (e.g. from :func:`init_reduced`).
      target: the :class:`~annealvi_lib.models.targets.Target` (d >= 5; only d, R, w_star are used).
      schedule: a :class:`~annealvi_lib.models.schedules.Schedule`; step t uses beta = schedule(t).
      n_iter: number of steps (integer >= 0).
      hyper: learning rate, batch B and sampling protocol (B per component when stratified,
        in total when categorical).
      record: also return a :class:`~annealvi_lib.models.student.Trajectory` (length n_iter + 1; entry
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
                           var0=None, record: bool = True, chunk: int | None = LANES):
    """Batched reduced runs with *per-run* temperature paths (one compilation per ``n_iter``).

    The schedule enters as a traced array, so runs of different cells (different ``beta_i``,
    ``t0``, schedule shapes) with the same number of steps share one compiled program and one
    vmapped batch: flatten (cells x seeds) into the leading axis. This is the entry point for
    grid runners; :func:`simulate_reduced_seeds` (static schedule) is the convenience wrapper.

    Args:
      init_keys, noise_keys: keys of shape (S,).
      target: the :class:`~annealvi_lib.models.targets.Target` (d >= 5).
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
        Small calls keep the per-step working set in cache (see :data:`LANES`).
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
    :func:`annealvi_lib.models.student.simulate_seeds`.

    The initial statistics come from :func:`init_reduced` with the same ``init_keys``, so they
    are *identical* (to float round-off) to those of ``student.simulate_seeds`` with the same
    keys; the noise keys drive a different (reduced) noise, so trajectories agree in law, not
    path by path. The schedule is static (one compilation per schedule); for grids use
    :func:`simulate_reduced_betas`.

    Args:
      init_keys, noise_keys: keys of shape (S,), e.g. from :func:`~annealvi_lib.models.student.seed_keys`.
      var0: initial variance (default ``1 / beta(0)``, the paper's choice).
    Returns:
      ``(final ReducedState, trajectories)`` with a leading seed axis of size S. Classify with
      :func:`~annealvi_lib.models.student.classify_collapse` on ``final.s`` (non-finite -> failed).
    """
    _check_dim(target)
    n_iter = check_int_at_least("n_iter", n_iter, 0)
    if var0 is None:
        var0 = 1.0 / float(schedule(0))
    var0 = check_positive("var0", var0)
    with fast_threefry():
        return _simulate_reduced_seeds_jit(init_keys, noise_keys, target, schedule, n_iter, hyper,
                                           float(var0), record)

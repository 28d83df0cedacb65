"""The reduced sampler's loss and gradients as functions of the span coordinates and
``r^2 = |z_perp|^2`` of each sample (see :mod:`annealvi_lib.models.reduced` for the
reduction): the automatic-differentiation reference (:func:`reduced_loss`,
:func:`reduced_grads`), the per-sample closed forms (:func:`reduced_grads_fast`,
:func:`reduced_grads_labels`) and the sampler's route through 30 sample sums
(:func:`noise_sums`, :func:`grads_from_sums`), all checked against each other by the tests.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .reduced_noise import StepNoise
from .student import WEIGHTS

__all__ = ["span_coords", "reduced_loss", "reduced_grads", "reduced_grads_fast",
           "reduced_grads_labels", "noise_sums", "grads_from_sums", "step_loss"]


_LOG_2PI = math.log(2.0 * math.pi)


def _half_log_odds(w_star):
    """``kappa = ln(w*/(1-w*))/2``: the target's mixture term is ``tanh(R <x, mu*> + kappa)``."""
    return 0.5 * (jnp.log(w_star) - jnp.log1p(-w_star))


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

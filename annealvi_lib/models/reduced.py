"""Reduced O(B + d)-per-step sampler of the GMM student: the same Markov chain on the summary
statistics ``(m1, m2, s, var1, var2)`` as the exact sampler of :mod:`annealvi_lib.models.student`,
without d-dimensional vectors.

This module holds the state, the update and the runners; the loss and gradients are in
:mod:`annealvi_lib.models.reduced_grads` (:func:`reduced_loss`, :func:`reduced_grads`,
:func:`reduced_grads_fast`, :func:`reduced_grads_labels`, :func:`noise_sums`,
:func:`grads_from_sums`) and the step's noise in :mod:`annealvi_lib.models.reduced_noise`
(:func:`draw_step_noise`, :func:`normal_pairs`).

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

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._rng import fast_threefry
from .._validate import check_int_at_least
from ..seeding import lanes, padded_blocks
from .schedules import Schedule
from .reduced_grads import grads_from_sums, noise_sums, span_coords, step_loss
from .reduced_noise import StepNoise, draw_step_noise
from .student import (Hyper, init_student, run_seeds, scan_trajectory, seeds_program,
                      summary_stats)
from .targets import Target, log_partition

__all__ = [
    "ReducedState",
    "MIN_DIM",
    "LANES",
    "reduced_from_student",
    "init_reduced",
    "perp_factor",
    "reduced_update",
    "apply_noise",
    "reduced_step",
    "run_with_range",
    "gradient_noise_draws",
    "simulate_reduced",
    "simulate_reduced_seeds",
    "simulate_reduced_betas",
]

#: Smallest dimension accepted (the complement of the 3-d span needs D = d - 3 >= 2 for Bartlett).
MIN_DIM = 5
#: Runs per compiled call of the runners: small calls keep a step's working set small
#: (``benchmarks/bench_gmm.py`` measures the current sampler at 2, 4, 8, 16 and 50 runs per call,
#: ``profile_reduced``; 4 was the fastest on the 2-core machines it ran on).
LANES = 4


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
    return final, scan_trajectory(rec, last, betas)


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


_simulate_reduced_seeds_jit = seeds_program(init_reduced, _simulate_reduced)


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
    return run_seeds(_simulate_reduced_seeds_jit, init_keys, noise_keys, target, schedule, n_iter,
                     hyper, var0, record)

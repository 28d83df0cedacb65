"""Two-component isotropic Gaussian-mixture student and its JKO/Bures update (exact sampler).

The student is ``q = w1 N(mu1, var1 I) + w2 N(mu2, var2 I)`` with fixed weights
``w1 = w2 = 1/2``, means on the sphere of radius R, and trainable variances.
Its state is a :class:`StudentState` pytree; :func:`jko_step` is a pure function
``(state, key) -> state``; :func:`simulate` runs a whole schedule with ``lax.scan`` under
``jit`` and records the summary statistics, and :func:`simulate_seeds` vmaps it over seeds.

The loss is the reparameterised Monte-Carlo estimate of ``KL(q || pi_beta) - log Z_beta``,
stratified over the fixed mixture weights: ``B`` samples are drawn from *each* component,

    L_hat = sum_k w_k mean_b [ beta U(x_kb) + log q(x_kb) ],   x_kb = mu_k + sigma_k z_kb.

The official code's protocol, ``Hyper(sampling="categorical")``, instead draws ``B`` samples
from q *in total*: component labels ``k_b ~ Categorical(w)`` (:func:`sample_labels`), then

    L_hat = mean_b [ beta U(x_b) + log q(x_b) ],   x_b = mu_{k_b} + sigma_{k_b} z_b

(:func:`mc_loss_categorical`). Both are unbiased estimates of the same loss and have the same
expected gradient; their noise differs (at equal B the categorical batch is half as large, and
its per-component sample counts fluctuate).

This "exact" sampler draws the full ``(2, B, d)`` (or ``(B, d)``) noise: O(B d) per step. The
O(B + d) reduced sampler lives in :mod:`annealvi_lib.models.reduced`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._rng import fast_threefry
from .._validate import check_choice, check_int_at_least, check_positive
from ..config import SAMPLINGS  # ("stratified", "categorical"): the protocols of Hyper.sampling
from .schedules import Schedule
from .targets import Target, log_partition, potential

__all__ = [
    "WEIGHTS",
    "SAMPLINGS",
    "StudentState",
    "Trajectory",
    "Hyper",
    "init_student",
    "mixture_log_prob",
    "mc_loss",
    "sample_labels",
    "mc_loss_categorical",
    "jko_update",
    "jko_step",
    "summary_stats",
    "simulate",
    "simulate_seeds",
    "seeds_program",
    "run_seeds",
    "scan_trajectory",
    "seed_keys",
    "classify_collapse",
    "run_with_range",
    "variance_limit",
    "VAR_MIN",
]

#: Fixed mixture weights of the student (w1, w2).
WEIGHTS = (0.5, 0.5)
_LOG_2PI = math.log(2.0 * math.pi)


class StudentState(NamedTuple):
    """Student parameters (pytree).

    Attributes:
      mu: component means, shape (2, d), each of norm R.
      var: component variances sigma_k^2, shape (2,).
    """

    mu: jax.Array
    var: jax.Array


class Trajectory(NamedTuple):
    """Recorded summary statistics at steps 0..n_iter (arrays of shape (..., n_iter + 1)).

    ``m1, m2`` overlaps of the means with mu* (over R), ``s`` overlap of the means (over R^2),
    ``var1, var2`` the variances, ``beta`` the inverse temperature used at that step, ``kl`` the
    Monte-Carlo estimate of KL(q || pi_beta) (training batch plus exact log Z_beta).
    """

    m1: jax.Array
    m2: jax.Array
    s: jax.Array
    var1: jax.Array
    var2: jax.Array
    beta: jax.Array
    kl: jax.Array


@dataclass(frozen=True)
class Hyper:
    """Optimisation hyper-parameters (validated, hashable).

    Attributes:
      lr: learning rate eta of the JKO step (> 0); continuous time is tau = lr * t.
      batch: Monte-Carlo batch B (integer >= 1): samples *per mixture component* with
        ``sampling="stratified"``, samples *in total* with ``sampling="categorical"``.
      sampling: the protocol of the loss estimate, one of :data:`SAMPLINGS`: ``"stratified"``
        (B samples from each component, :func:`mc_loss`) or ``"categorical"`` (the official
        code's: B samples from q with labels drawn from the weights, :func:`mc_loss_categorical`).
    """

    lr: float = 0.05
    batch: int = 1024
    sampling: str = "stratified"

    def __post_init__(self):
        object.__setattr__(self, "lr", check_positive("lr", self.lr))
        object.__setattr__(self, "batch", check_int_at_least("batch", self.batch, 1))
        object.__setattr__(self, "sampling", check_choice("sampling", self.sampling, SAMPLINGS))


def init_student(key: jax.Array, d: int, R: float, var0: float) -> StudentState:
    """Random initialisation: i.i.d. Gaussian means rescaled to norm R, both variances ``var0``.

    Args:
      key: PRNG key.
      d: dimension (>= 2).
      R: norm of the means (> 0).
      var0: initial variance (> 0); the paper uses ``1 / beta_i``.
    """
    g = jax.random.normal(key, (2, d))
    mu = R * g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    return StudentState(mu=mu, var=jnp.full((2,), var0, dtype=jnp.float32))


def mixture_log_prob(state: StudentState, x):
    """``log q(x)`` for x of shape (..., d); returns shape (...)."""
    d = x.shape[-1]
    sq = (jnp.sum(x * x, -1)[..., None] - 2.0 * x @ state.mu.T
          + jnp.sum(state.mu * state.mu, -1))                      # (..., 2) |x - mu_j|^2
    comp = (jnp.log(jnp.asarray(WEIGHTS)) - 0.5 * d * (_LOG_2PI + jnp.log(state.var))
            - 0.5 * sq / state.var)
    return jax.nn.logsumexp(comp, axis=-1)


def mc_loss(state: StudentState, target: Target, beta, z):
    """Stratified reparameterised loss ``L_hat`` (KL to pi_beta minus log Z_beta).

    Args:
      state: student parameters.
      target: the two-mode target.
      beta: inverse temperature (scalar).
      z: standard normal noise, shape (2, B, d).
    Returns:
      scalar loss.
    """
    x = state.mu[:, None, :] + jnp.sqrt(state.var)[:, None, None] * z
    per_sample = beta * potential(target, x) + mixture_log_prob(state, x)   # (2, B)
    return jnp.sum(jnp.asarray(WEIGHTS) * jnp.mean(per_sample, axis=-1))


def sample_labels(key: jax.Array, batch: int):
    """Component labels ``k_b ~ Categorical(WEIGHTS)`` for the categorical protocol.

    For the two components, ``k_b = 1[u_b >= w1]`` with ``u_b`` uniform on [0, 1) (one uniform
    per sample). Both samplers draw their labels with this function.

    Args:
      key: PRNG key.
      batch: number of samples B (static).
    Returns:
      int32 array of shape (B,) with values in {0, 1}.
    """
    return (jax.random.uniform(key, (batch,)) >= WEIGHTS[0]).astype(jnp.int32)


def mc_loss_categorical(state: StudentState, target: Target, beta, z, labels):
    """Categorical reparameterised loss ``L_hat`` (KL to pi_beta minus log Z_beta), the official
    code's protocol: ``mean_b [beta U(x_b) + log q(x_b)]``, ``x_b = mu_{k_b} + sigma_{k_b} z_b``.

    Args:
      state: student parameters.
      target: the two-mode target.
      beta: inverse temperature (scalar).
      z: standard normal noise, shape (B, d).
      labels: component labels ``k_b`` in {0, 1}, integer array of shape (B,) (e.g. from
        :func:`sample_labels`).
    Returns:
      scalar loss.
    """
    x = state.mu[labels] + jnp.sqrt(state.var)[labels][:, None] * z
    per_sample = beta * potential(target, x) + mixture_log_prob(state, x)   # (B,)
    return jnp.mean(per_sample)


def _categorical_noise(key: jax.Array, batch: int, d: int):
    """Noise of one categorical step: ``(z (B, d), labels (B,))`` from ``split(key)``."""
    k_lab, k_z = jax.random.split(key)
    return jax.random.normal(k_z, (batch, d)), sample_labels(k_lab, batch)


def jko_update(state: StudentState, grads: StudentState, beta, lr, R) -> StudentState:
    """Apply the JKO/Bures update of DESIGN section 3 given loss gradients.

    ``mu_k <- mu_k - (lr/beta) dL/dmu_k``; ``var_k <- var_k (1 - 2 lr/(beta d) dL/dvar_k)^2``;
    then ``mu_k <- R mu_k / |mu_k|`` (the spherical constraint).
    """
    d = state.mu.shape[-1]
    mu = state.mu - (lr / beta) * grads.mu
    mu = R * mu / jnp.linalg.norm(mu, axis=-1, keepdims=True)
    var = state.var * (1.0 - (2.0 * lr / (beta * d)) * grads.var) ** 2
    return StudentState(mu=mu, var=var)


def jko_step(state: StudentState, key: jax.Array, target: Target, beta, hyper: Hyper):
    """One stochastic JKO step with fresh noise; returns ``(new_state, loss)``.

    ``hyper.sampling`` (static) chooses the loss: stratified, noise ``normal(key, (2, B, d))``; or
    categorical, labels and noise ``(B, d)`` from ``split(key)`` (:func:`sample_labels`).
    """
    if hyper.sampling == "categorical":
        z, labels = _categorical_noise(key, hyper.batch, state.mu.shape[-1])
        loss, grads = jax.value_and_grad(mc_loss_categorical)(state, target, beta, z, labels)
        return jko_update(state, grads, beta, hyper.lr, target.R), loss
    z = jax.random.normal(key, (2, hyper.batch, state.mu.shape[-1]))
    loss, grads = jax.value_and_grad(mc_loss)(state, target, beta, z)
    return jko_update(state, grads, beta, hyper.lr, target.R), loss


def summary_stats(state: StudentState, target: Target):
    """``(m1, m2, s)``: ``<mu_k, mu*>/R`` and ``<mu1, mu2>/R^2``."""
    R = target.R
    m = state.mu @ target.mu_star / R
    s = jnp.dot(state.mu[0], state.mu[1]) / R**2
    return m[0], m[1], s


def _simulate(key, state0, target, schedule: Schedule, n_iter: int, hyper: Hyper, record: bool):
    steps = jnp.arange(n_iter + 1)
    betas = schedule(steps)
    log_z = log_partition(target, betas) if record else jnp.zeros_like(betas)
    keys = jax.random.split(key, n_iter + 1)

    def body(state, xs):
        k, beta, lz = xs
        new, loss = jko_step(state, k, target, beta, hyper)
        if not record:
            return new, None
        m1, m2, s = summary_stats(state, target)
        return new, (m1, m2, s, state.var[0], state.var[1], loss + lz)

    final, rec = jax.lax.scan(body, state0, (keys[:-1], betas[:-1], log_z[:-1]))
    if not record:
        return final, None
    # the last recorded point: statistics of the final state and a KL estimate from one more batch
    if hyper.sampling == "categorical":
        z, labels = _categorical_noise(keys[-1], hyper.batch, target.d)
        kl_last = mc_loss_categorical(final, target, betas[-1], z, labels) + log_z[-1]
    else:
        z = jax.random.normal(keys[-1], (2, hyper.batch, target.d))
        kl_last = mc_loss(final, target, betas[-1], z) + log_z[-1]
    m1, m2, s = summary_stats(final, target)
    return final, scan_trajectory(rec, (m1, m2, s, final.var[0], final.var[1], kl_last), betas)


def scan_trajectory(rec, last, betas) -> Trajectory:
    """The :class:`Trajectory` of a run from its scan's per-step records ``rec`` = (m1, m2, s,
    var1, var2, kl) before each step (arrays of length n_iter) and ``last``, the same six values
    of the final state: entry t is the state before step t, the last one the final state."""
    cols = [jnp.concatenate([r, jnp.atleast_1d(v)]) for r, v in zip(rec, last)]
    return Trajectory(m1=cols[0], m2=cols[1], s=cols[2], var1=cols[3], var2=cols[4],
                      beta=betas, kl=cols[5])


def run_with_range(step, key, state0, target, betas, hyper: Hyper):
    """Final state of ``n_iter = len(betas) - 1`` steps and the range of the variances visited.

    ``step(state, key, target, beta, hyper) -> (new_state, loss)`` is :func:`jko_step` (the
    reduced sampler has its own runner with the same keys,
    :func:`annealvi_lib.models.reduced.run_with_range`).
    The noise keys are those of :func:`simulate` (``split(key, n_iter + 1)[:-1]``), so the final
    state is the one ``simulate(..., record=False)`` returns. Used by the grid runner to count
    runs that left the physical range at any step (an oscillating blow-up can end in range).

    Returns:
      ``(final_state, var_min, var_max)``; the extremes include the initial variances and are
      NaN when any step produced NaN.
    """
    n_iter = betas.shape[-1] - 1
    keys = jax.random.split(key, n_iter + 1)

    def body(carry, xs):
        state, lo, hi = carry
        k, beta = xs
        new, _ = step(state, k, target, beta, hyper)
        return (new, jnp.minimum(lo, new.var.min()), jnp.maximum(hi, new.var.max())), None

    init = (state0, state0.var.min(), state0.var.max())
    (final, lo, hi), _ = jax.lax.scan(body, init, (keys[:-1], betas[:-1]))
    return final, lo, hi


def simulate(key: jax.Array, state0: StudentState, target: Target, schedule: Schedule,
             n_iter: int, hyper: Hyper = Hyper(), record: bool = True):
    """Run ``n_iter`` JKO steps along ``schedule``, jit-compiled with ``lax.scan``.

    Args:
      key: PRNG key for the Monte-Carlo noise of this run.
      state0: initial :class:`StudentState` (mu shape (2, d)).
      target: the :class:`Target`.
      schedule: a :class:`Schedule` giving beta(t) at step t = 0, 1, ...
      n_iter: number of steps (integer >= 0).
      hyper: learning rate, batch size and sampling protocol (static).
      record: if True also return a :class:`Trajectory` of the statistics at every step.
    Returns:
      ``(final_state, trajectory_or_None)``.
    """
    n_iter = check_int_at_least("n_iter", n_iter, 0)
    with fast_threefry():
        return _simulate_jit(key, state0, target, schedule, n_iter, hyper, record)


_simulate_jit = jax.jit(_simulate, static_argnames=("schedule", "n_iter", "hyper", "record"))


def seed_keys(master_seed: int, n_seeds: int, offset: int = 0):
    """Per-replicate keys ``fold_in(key(master_seed), offset + r)``: independent of batching.

    Returns a pair ``(init_keys, noise_keys)``, each of shape (n_seeds,) (typed keys).
    """
    base = jax.random.key(master_seed)
    idx = jnp.arange(offset, offset + n_seeds)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(idx)
    both = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
    return both[:, 0], both[:, 1]


def simulate_seeds(init_keys, noise_keys, target: Target, schedule: Schedule, n_iter: int,
                   hyper: Hyper = Hyper(), var0: float | None = None, record: bool = True):
    """Many independent runs at once: ``vmap`` of :func:`simulate` over seeds.

    Args:
      init_keys, noise_keys: keys of shape (S,), e.g. from :func:`seed_keys`.
      var0: initial variance (default ``1 / beta(0)``, the paper's choice).
    Returns:
      ``(final_states, trajectories)`` with a leading seed axis of size S.
    """
    return run_seeds(_simulate_seeds_jit, init_keys, noise_keys, target, schedule, n_iter, hyper,
                     var0, record)


def seeds_program(init, simulate_one):
    """The jit-compiled ``vmap`` over seeds of one sampler's run:
    ``simulate_one(noise_key, init(init_key, target, var0), target, schedule, n_iter, hyper,
    record)`` (the exact sampler's and the reduced one's, with the same keys)."""
    def many(init_keys, noise_keys, target, schedule, n_iter, hyper, var0, record):
        def one(ki, kn):
            return simulate_one(kn, init(ki, target, var0), target, schedule, n_iter, hyper,
                                record)

        return jax.vmap(one)(init_keys, noise_keys)

    return jax.jit(many, static_argnames=("schedule", "n_iter", "hyper", "var0", "record"))


def run_seeds(program, init_keys, noise_keys, target: Target, schedule: Schedule, n_iter: int,
              hyper: Hyper, var0: float | None, record: bool):
    """Check the arguments of a seeds runner (``n_iter >= 0``, ``var0 > 0``, default
    ``1 / beta(0)``) and run ``program`` (from :func:`seeds_program`)."""
    n_iter = check_int_at_least("n_iter", n_iter, 0)
    if var0 is None:
        var0 = 1.0 / float(schedule(0))
    var0 = check_positive("var0", var0)
    with fast_threefry():
        return program(init_keys, noise_keys, target, schedule, n_iter, hyper, float(var0),
                       record)


_simulate_seeds_jit = seeds_program(lambda key, target, var0: init_student(key, target.d,
                                                                            target.R, var0),
                                    _simulate)


#: A student variance below this is outside any physically possible range: every tempered
#: target has modes of variance 1/beta >= 1 and the reverse-KL optimum of a component is no
#: narrower than the mode it covers; only an unstable update (too large a learning rate) gets
#: 100x below that.
VAR_MIN = 1e-2
#: Factor over the widest tempered target a variance may reach before the run counts as
#: diverged: see :func:`variance_limit`.
VAR_FACTOR = 10.0


def variance_limit(beta_min, R):
    """Largest student variance a run that never goes hotter than ``beta_min`` can reach before
    it counts as *diverged*: ``VAR_FACTOR * (1 + R^2) / beta_min``.

    The tempered target pi_beta has per-coordinate variance at most ``(1 + R^2)/beta`` (its
    axis variance; the other coordinates have ``1/beta``) and the student starts at
    ``1/beta_i``; a stable run shrinks its variances as beta grows. A factor of 100 above the
    widest target is far outside what any stable run reaches (tests: the largest final variance
    of the book grid is below ``1/beta_i``), while the JKO update at too large a learning rate
    blows up geometrically (1e4 to 1e19 after a few steps at lr = 3).
    """
    return VAR_FACTOR * (1.0 + np.asarray(R, np.float64) ** 2) / np.asarray(beta_min, np.float64)


def classify_collapse(s_final, var1=None, var2=None, var_max=None):
    """Classify final states: returns ``(collapsed, failed)`` boolean arrays.

    A run is *failed* (diverged) when its final ``s`` is not finite, or -- when the final
    variances are given -- when a variance is not finite, below :data:`VAR_MIN` or above
    ``var_max`` (e.g. :func:`variance_limit`). A failed run is neither collapsed nor not
    collapsed. Otherwise it is *collapsed* when ``s > 0`` (both means on the same mode; ``s``
    near -1 means both modes are covered).

    Args:
      s_final: final overlaps, shape (...).
      var1, var2: final variances, same shape (optional, both or neither).
      var_max: upper limit of a physical variance, scalar or shape (...) (default: no limit).
    """
    s = jnp.asarray(s_final)
    failed = ~jnp.isfinite(s)
    if (var1 is None) != (var2 is None):
        raise ValueError("give both var1 and var2, or neither")
    if var1 is not None:
        hi = jnp.inf if var_max is None else jnp.asarray(var_max)
        for v in (jnp.asarray(var1), jnp.asarray(var2)):
            failed = failed | ~jnp.isfinite(v) | (v < VAR_MIN) | (v > hi)
    collapsed = jnp.where(failed, False, s > 0)
    return collapsed, failed

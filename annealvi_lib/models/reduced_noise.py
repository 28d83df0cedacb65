"""How one step of the reduced sampler draws its noise (see :mod:`annealvi_lib.models.reduced`
for the reduction it serves): per sample, the three span coordinates and ``chi^2_D`` of the
perpendicular part from one block of counter-based threefry bits, two Box-Muller pairs per
sample (:func:`normal_pairs`), Wilson-Hilferty for ``chi^2_D`` when ``D >= 30`` (``gamma``
below), and the categorical protocol's component count as a popcount of random bits.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .student import Hyper

__all__ = ["sample_chi2", "NORMAL_TAIL", "StepNoise", "n_samples", "normal_pairs",
           "draw_step_noise"]


#: Wilson-Hilferty is used for chi^2_D when D >= this threshold, jax.random.gamma otherwise.
_WH_MIN_DOF = 30


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

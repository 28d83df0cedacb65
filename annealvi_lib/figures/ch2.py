"""Chapter 2's figures: f and g against their high-temperature expansions, one annealed run
against the three ODEs, and the error scaling with d and B.

Each ``plot_*`` function takes results of :mod:`annealvi_lib.experiments.ch2_summary_statistics`
and returns a matplotlib figure; the ``@register``-ed functions draw the book's figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..config import OdeCheckConfig, Preset
from ..experiments.ch2_summary_statistics import (ErrorLaw, ScanResult, ValidationResult,
                                                  b_series, d_series, error_scan, fit_error_law,
                                                  validation_run)
from ..theory import ode as th
from .registry import register

__all__ = ["plot_f_g_asymptotics", "plot_validation", "plot_error_scaling"]


def plot_f_g_asymptotics(R: float, w_star: float, us=None):
    """f and |g| against the component std u, with the high-temperature expansions (dotted)."""
    import matplotlib.pyplot as plt

    us = np.logspace(0, 3, 60) if us is None else np.asarray(us, float)
    s0s, m0s = (-1.0, 0.0, 0.8), (-0.5, 0.0, 0.5)

    @jax.jit
    def curves(u):
        s = jnp.asarray(s0s)[:, None]
        m = jnp.asarray(m0s)[:, None]
        return (th.f(s, R=R, u=u), th.f_large_u(s, R=R, u=u),
                th.g(m, R=R, u=u, w_star=w_star), th.g_large_u(m, R=R, u=u, w_star=w_star))

    fv, fa, gv, ga = (np.asarray(a) for a in curves(jnp.asarray(us, jnp.float32)))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, s0 in enumerate(s0s):
        ax[0].semilogx(us, fv[i], label=f"$f$, $s={s0:g}$")
        ax[0].semilogx(us, fa[i], "k:", lw=1, label="large-$u$ expansion" if i == 0 else None)
    ax[0].axhline(0.25, color="gray", ls="--", lw=1, label="$w_1w_2$")
    ax[0].set(xlabel="component std $u=1/\\sqrt{\\beta}$", ylabel="$f(s)$", ylim=(0, 0.3),
              title="entropy repulsion")
    ax[0].legend(fontsize=9)
    for i, m0 in enumerate(m0s):
        ax[1].loglog(us, np.abs(gv[i]), label=f"$|g|$, $m={m0:g}$")
        ax[1].loglog(us, np.abs(ga[i]), "k:", lw=1, label="large-$u$ expansion" if i == 0 else None)
    ax[1].set(xlabel="component std $u=1/\\sqrt{\\beta}$", ylabel="$|g(m)|$",
              title="mode attraction")
    ax[1].legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_validation(val: ValidationResult, C: OdeCheckConfig):
    """Overlaps of the validation run against the 3-statistic ODE and the corrected
    5-statistic map (left); the variances against 1/beta (right)."""
    import matplotlib.pyplot as plt

    p = C.problem
    tau = p.lr * np.arange(C.n_iter + 1)
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    names = {"m1": "$m_1$", "m2": "$m_2$", "s": "$s$"}
    for k, c in (("m1", "C0"), ("m2", "C1"), ("s", "C2")):
        ax[0].plot(tau, val.stat("sim", k), c, lw=2.5, alpha=0.45, label=f"{names[k]} simulation")
        ax[0].plot(tau, val.stat("ode3", k), c, ls="--", lw=1)
        ax[0].plot(tau, val.stat("ode5n", k), "k:", lw=1)
    ax[0].plot([], [], color="0.45", ls="--", lw=1, label="3-stat ODE (dashed, colour of its statistic)")
    ax[0].plot([], [], "k:", lw=1, label="5-stat + finite-B")
    ax[0].set(xlabel=r"$\tau=\eta t$", ylabel="overlap", ylim=(-1.05, 1.05),
              title=f"$d={p.d}$, $B={p.batch}$, exp schedule")
    # legends below the panels, off the data
    ax[0].legend(fontsize=9, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    # the lag beta sigma^2 - 1 on a linear axis: on a log axis of sigma^2 every curve hides
    # under 1/beta (the 3-statistic ODE has no lag by construction: its line is the zero)
    beta = val.stat("sim", "beta")
    ax[1].plot(tau, beta * val.stat("sim", "var1") - 1, color="C0", lw=3.0, alpha=0.5,
               label=r"$\sigma_1^2$ simulation")
    ax[1].plot(tau, beta * val.stat("sim", "var2") - 1, color="C1", lw=1.4, ls="--",
               label=r"$\sigma_2^2$ simulation")
    ax[1].plot(tau, val.stat("ode5", "beta") * val.stat("ode5", "var1") - 1, "k:", lw=1.6,
               label=r"$\sigma^2$, 5-stat ODE")
    ax[1].axhline(0.0, color="C3", ls="-.", lw=1, label="3-stat ODE ($\\sigma^2=1/\\beta$)")
    ax[1].set(xlabel=r"$\tau=\eta t$", ylabel=r"lag $\beta\sigma_k^2-1$",
              title="variance lags the temperature")
    ax[1].legend(fontsize=9, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    return fig


def plot_error_scaling(scan: ScanResult, C: OdeCheckConfig, law: ErrorLaw | None = None):
    """Seed-mean sup-norm error (+- standard error) against d at fixed B and against B at fixed
    d, for both theories, with the fitted ``const sqrt(d/B)`` (dotted)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    law = fit_error_law(scan, C) if law is None else law
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    panels = ((ax[0], d_series(C), 0, f"dimension $d$ ($B={C.scan_batch}$)"),
              (ax[1], b_series(C), 1, f"batch $B$ per component ($d={C.scan_d}$)"))
    for a, series, col, xlabel in panels:
        x = np.array([pt[col] for pt in series], float)
        for which, name, mk in (("e3", "3-stat ODE", "s--"), ("e5", "5-stat + finite-B", "o-")):
            e = scan.series(which, series)
            se = e.std(1, ddof=1) / np.sqrt(e.shape[1]) if e.shape[1] > 1 else None
            a.errorbar(x, e.mean(1), yerr=se, fmt=mk, capsize=3, label=name)
        dB = np.array([pt[0] / pt[1] for pt in series], float)
        a.plot(x, law.const * np.sqrt(dB), "k:", label=rf"${law.const:.2f}\sqrt{{d/B}}$")
        a.set(xscale="log", yscale="log", xlabel=xlabel,
              ylabel="sup-norm error (mean over seeds)")
        a.set_xticks(x, [f"{v:g}" for v in x])              # label the scanned values only
        a.xaxis.set_minor_formatter(NullFormatter())
    handles, labels = ax[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9, frameon=False)   # off the data
    return fig


@register("ch2_f_g_asymptotics", chapter=2,
          description="f and |g| against the component std, with high-temperature expansions")
def fig_f_g_asymptotics(preset: Preset):
    p = preset.ode_check.problem
    return plot_f_g_asymptotics(p.R, p.w_star)


@register("ch2_validation", chapter=2,
          description="one annealed run against the 3- and 5-statistic theories")
def fig_validation(preset: Preset):
    C = preset.ode_check
    return plot_validation(validation_run(C), C)


@register("ch2_error_scaling", chapter=2,
          description="simulation-vs-ODE error against d and B, with the fitted sqrt(d/B) law")
def fig_error_scaling(preset: Preset):
    C = preset.ode_check
    return plot_error_scaling(error_scan(C, progress=False), C)

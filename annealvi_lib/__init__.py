"""annealvi_lib: executable companion to "Annealing in variational inference mitigates mode
collapse: A theoretical study on Gaussian mixtures" (Fogliani, Loureiro, Gabrie, 2026).

The package is layered; a module imports only from its own layer or from layers listed before it
here (checked by ``tests/test_layout.py``):

1. plumbing, at the top level: ``config`` (presets), ``paths``, ``cache``, ``archive``
   (committed results under ``data/``), ``seeding`` (run keys), ``_rng``, ``_validate``
   (one-line errors for bad input) and ``metrics`` (collapse criteria, Wilson and Newcombe
   intervals, undecided runs);
2. ``models``: the target (``models.targets``), the annealing schedules (``models.schedules``),
   the exact GMM student (``models.student``), its O(B + d) reduced sampler
   (``models.reduced``, with its gradients in ``models.reduced_grads`` and its noise in
   ``models.reduced_noise``) and the RealNVP flow (``models.realnvp``, trained by
   ``models.realnvp_training``);
3. ``theory``: f, g and the ODE of the summary statistics (``theory.ode``), the collapse
   probabilities (closed form in ``theory.collapse``, ODE-propagated and finite-batch in
   ``theory.propagated``) and chapter 3's closed-form schedule advice (``theory.guidance``);
4. ``experiments``: the cached, parallel grid runner (``experiments.grid``, its cell cache in
   ``experiments.grid_cache``, its CSV files in ``experiments.grid_csv``) and the computations
   of each chapter, in modules named after it;
5. ``figures``: the house style (``figures.style``), the figure registry
   (``figures.registry``), the pages' tables (``figures.tables``) and one module of plots and
   registered figures per chapter;
6. ``cli``: ``python -m annealvi_lib`` (grids, archives, figures, recommender).

Chapters, their notebooks and the code behind them (computation in ``experiments``, plots
and registered figures in ``figures``):

===  =====================================  ========================================  ============================================
ch   notebook (in ``notebooks/``)           computation, figures                      library modules it uses
===  =====================================  ========================================  ============================================
1    ``01_mode_collapse_and_annealing.md``  ``experiments.ch1_mode_collapse``         ``models.targets`` ``models.schedules``
                                            ``figures.ch1``                           ``models.student`` ``metrics``
2    ``02_summary_statistics_ode.md``       ``experiments.ch2_summary_statistics``    ``models.targets`` ``models.schedules``
                                            ``figures.ch2``                           ``models.student`` ``theory.ode``
3    ``03_collapse_probability.md``         ``experiments.ch3_collapse_probability``  ``experiments.grid`` ``models.student``
                                            ``experiments.ch3_finite_batch``          ``models.reduced`` ``models.schedules``
                                            ``figures.ch3``                           ``theory.ode`` ``theory.collapse``
                                                                                      ``theory.propagated`` ``metrics``
4    ``04_realnvp.md``                      ``experiments.ch4_realnvp``               ``experiments.grid`` ``models.realnvp``
                                            ``experiments.ch4_verdicts``              ``models.realnvp_training``
                                            ``figures.ch4``                           ``models.schedules`` ``theory.collapse``
                                                                                      ``metrics``
5    ``05_schedule_design.md``              ``experiments.ch5_schedule_design``       ``experiments.grid`` ``models.schedules``
                                            ``experiments.ch5_recommend``             ``theory.collapse`` ``theory.propagated``
                                            ``experiments.ch5_archive``               ``metrics``
                                            ``figures.ch5``
===  =====================================  ========================================  ============================================

Cached results are keyed by the configuration and by the *location-free* source of the modules a
computation runs (:func:`annealvi_lib.cache.location_free`): editing that code recomputes them,
moving a module between subpackages does not. See ``CONTRIBUTING.md``.
"""

__version__ = "0.1.0"

"""annealvi_lib: executable companion to "Annealing in variational inference mitigates mode
collapse: A theoretical study on Gaussian mixtures" (Fogliani, Loureiro, Gabrie, 2026)."""

__version__ = "0.1.0"

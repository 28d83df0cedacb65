"""The models: the two-mode target (:mod:`.targets`), the annealing schedules (:mod:`.schedules`),
the exact GMM student (:mod:`.student`), its O(B + d) reduced sampler (:mod:`.reduced`, with
:mod:`.reduced_grads` and :mod:`.reduced_noise`) and the RealNVP flow (:mod:`.realnvp`, trained
by :mod:`.realnvp_training`)."""

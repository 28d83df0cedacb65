"""The theory: f, g and the ODE of the summary statistics (:mod:`.ode`), the closed-form collapse
probability and the critical temperature (:mod:`.collapse`), the ODE-propagated and finite-batch
collapse probabilities (:mod:`.propagated`) and chapter 3's closed-form advice (:mod:`.guidance`)."""

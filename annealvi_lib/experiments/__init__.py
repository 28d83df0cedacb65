"""The experiments: the cached, parallel grid runner (:mod:`.grid`, its cell cache in
:mod:`.grid_cache`, its CSV files in :mod:`.grid_csv`) and the computations of each chapter, in
modules named ``chN_<topic>`` after it (the package docstring of :mod:`annealvi_lib` maps
chapters to modules)."""

"""The presentation: the house style (:mod:`.style`), the registry of the book's figures
(:mod:`.registry`, ``python -m annealvi_lib figures``), the pages' tables (:mod:`.tables`) and one
module of plots and registered figures per chapter (:mod:`.ch1` ... :mod:`.ch5`)."""

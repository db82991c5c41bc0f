"""One module per paper, each the paper's whole "room" over the paper-agnostic core: its
recipes (registered in :data:`advlib.recipes.RECIPES`), its reported numbers as data, its
budget, its analyses and its claims (functions from a run's numbers to verdicts).

The core (``advlib.data``, ``models``, ``losses``, ``attacks``, ``train``, ``evaluate``, the
caches, ``experiment``, ``profiles``, ``plots``, ``cli``) never imports this package.
Import a paper's module to register its recipes: ``import advlib.papers.mtd``.
"""

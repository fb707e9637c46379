"""Attack maths on arrays: no file I/O, no argparse.

- ``lira``: LiRA (Carlini et al. 2022), offline/online, global variance, leave-one-out.
- ``rmia``: RMIA (Zarifzadeh et al. 2024), offline/online.
- ``baselines``: loss, confidence, modified entropy, per-point calibrated scores.
- ``classifier``: Shokri-style attack model on shadow outputs.
- ``stacked``: a logistic regression over several attacks' scores, fitted out of fold.
- ``auto``: per scenario, the line-up attack with the best leave-one-out TPR@10%FPR on the train
  models, and an honest (split-half) estimate of that choice's score.
- ``folds``: a scenario with some shadows held out (for ``auto`` and ``stacked``).
- ``suite``: all of them behind one interface, and the ``--compare`` line-up.
- ``stats``, ``checks``: the shared per-point IN/OUT statistics (leave-one-out) and input checks.
"""

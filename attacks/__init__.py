"""Attack maths on arrays: no file I/O, no argparse.

- ``lira``: LiRA (Carlini et al. 2022), offline/online, global variance, leave-one-out.
- ``rmia``: RMIA (Zarifzadeh et al. 2024), offline/online.
- ``baselines``: loss, confidence, modified entropy, per-point calibrated scores.
- ``classifier``: Shokri-style attack model on shadow outputs.
- ``suite``: all of them behind one interface, and the ``--compare`` line-up.
- ``stats``, ``checks``: the shared per-point IN/OUT statistics (leave-one-out) and input checks.
"""

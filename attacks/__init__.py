"""Membership-inference attacks on MICO challenge models.

- :mod:`attacks.lira`: LiRA (Carlini et al. 2022), offline/online, global
  variance, leave-one-out, on cached logit-scaled signals.
"""

"""Model production: MICO model folders trained from seeds, the offline synthetic challenge and
extra shadow models. Sits above ``models/`` (architectures, recipe, trainers) and ``challenges/``
(format, splits, layout)."""

"""Every random stream of a study, derived from the one seed of the config.

A training's epoch e draws its shuffle, augmentation, dropout masks and Keras' global seed from
(seed, e, salt); a tuning trial from (seed, trial, TRIAL). Each use has its own salt, so two uses
of the same (seed, epoch) never share a stream, and nothing depends on what ran before: a resumed
training or search draws what an unbroken one would have.
"""

from __future__ import annotations

import numpy as np

# Salts that keep the random streams of different uses of one (seed, epoch) apart.
SHUFFLE, AUGMENT, VALIDATION, WEIGHTS, DROPOUT, TRIAL, MIX = 1, 2, 3, 4, 5, 6, 7


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that depends on every part (seed, epoch, salt, ...), well mixed."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]) >> 1

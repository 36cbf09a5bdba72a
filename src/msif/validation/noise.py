"""Retraining noise floors: how precisely retraining lands, and how far apart two equally valid trainings land.

``warm``: the run's own retraining procedure on the *full* set from a perturbed warm start; ``seed``: a cold
start from another seed's initialisation. The floor of a kind is the RMS change of the test losses.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

NOISE_KINDS = ("warm", "seed")


def noise_seed(seed: int, kind: str, scenario: str, rep: int) -> int:
    """The seed of one noise-floor retrain: distinct per (run seed, kind, scenario, rep), never the run's own."""
    tag = [NOISE_KINDS.index(kind), zlib.crc32(scenario.encode())]
    return int(np.random.SeedSequence([seed, rep, 7, *tag]).generate_state(1)[0] % 2**31)


def noise_floors(noise: pd.DataFrame) -> dict[str, float]:
    """RMS change of the test losses over the noise-floor retrains of each kind (NaN where there are none)."""
    kinds = noise["kind"] if "kind" in noise else pd.Series("warm", index=noise.index)
    return {k: float(np.sqrt(np.mean(noise.loc[kinds == k, "actual"] ** 2))) if (kinds == k).any() else float("nan")
            for k in NOISE_KINDS}

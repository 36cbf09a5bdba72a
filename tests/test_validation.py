"""Removal sets, LDS and bootstrap intervals on synthetic numbers with known answers."""

import numpy as np
import pytest
import torch

from msif.validation import (
    batches,
    bootstrap_interval,
    correlations,
    lds,
    lds_predictions,
    lds_subsets,
    predicted_effects,
    removal_sets,
)


def test_removal_sets_rank_by_score_and_random_is_seeded():
    scores = torch.tensor([[0.5, -0.2, 0.9, 0.0, -0.7, 0.1]])
    sets = {s["set_id"]: s for s in removal_sets(scores, [2], ["top", "bottom", "random"], seed=3)}
    assert sets["t0-top-k2"]["members"] == [0, 2]
    assert sets["t0-bottom-k2"]["members"] == [1, 4]
    again = {s["set_id"]: s for s in removal_sets(scores, [2], ["random"], seed=3)}
    assert again["t0-random-k2"]["members"] == sets["t0-random-k2"]["members"]
    assert predicted_effects(scores, [sets["t0-top-k2"]])[0] == pytest.approx(1.4)
    with pytest.raises(ValueError, match="k=7 exceeds the pretraining set size 6"):
        removal_sets(scores, [7], ["top"], seed=0)


def test_batches_cover_every_set_once():
    b = batches(25, 12)
    assert b == [list(range(12)), list(range(12, 24)), [24]]


def test_lds_is_one_for_a_perfect_linear_model_and_minus_one_reversed():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    subsets = lds_subsets(40, 0.5, 30, seed=1)
    assert all(len(s) == 20 for s in subsets) and len({tuple(s) for s in subsets}) == 30
    pred = lds_predictions(scores, subsets)
    removed = [sorted(set(range(40)) - set(s)) for s in subsets]
    assert pred[4, 2] == pytest.approx(float(scores[2, removed[4]].sum()))
    assert lds(pred, pred)[0] == pytest.approx(1.0)
    assert lds(pred, -pred)[0] == pytest.approx(-1.0)
    noisy = pred + np.random.default_rng(0).normal(0, 10 * pred.std(), pred.shape)
    assert abs(lds(pred, noisy)[0]) < 0.5


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + 0.5 * rng.normal(size=200)
    r = correlations(x, y)["pearson"]
    lo, hi = bootstrap_interval(lambda idx: correlations(x[idx], y[idx])["pearson"], 200, 500, seed=0)
    assert lo < r < hi and hi - lo < 0.2
    assert correlations(x, 2.5 * x)["slope"] == pytest.approx(2.5)

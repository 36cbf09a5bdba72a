"""Removal sets, LDS and bootstrap intervals on synthetic numbers with known answers."""

import numpy as np
import pytest
import torch

from msif.validation.metrics import (
    batches,
    bootstrap_interval,
    bootstrap_lds,
    bootstrap_pearson,
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


def _seed_tables(seeds=(0, 1), n_sets=30, n_sub=20, n_test=3):
    """Per-seed leave-k-out, LDS and summary tables with a known relation: actual = 2 × predicted (+ noise on seed 1)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    lko, lds_rows, summary = [], [], []
    for seed in seeds:
        pred = rng.normal(size=n_sets)
        act = 2 * pred + (0.5 * rng.normal(size=n_sets) if seed else 0)
        lko.append(pd.DataFrame({"scenario": "fixed", "solver": "exact", "method": "multi_stage", "seed": seed,
                                 "predicted": pred, "actual": act}))
        p = rng.normal(size=(n_sub, n_test))
        a = p if seed == 0 else -p  # LDS +1 on seed 0, -1 on seed 1: pooled mean 0
        lds_rows.append(pd.DataFrame({"scenario": "fixed", "method": "multi_stage", "solver": "exact", "seed": seed,
                                      "subset_id": np.repeat(np.arange(n_sub), n_test), "test_id": np.tile(np.arange(n_test), n_sub),
                                      "predicted": p.reshape(-1), "actual": a.reshape(-1)}))
        summary.append({"scenario": "fixed", "solver": "exact", "pearson": 0.0, "spearman": 0.0, "n_sets": n_sets,
                        "noise_floor": 1e-3 * (1 + seed), "noise_floor_seed": 1e-2, "method": "multi_stage", "seed": seed,
                        "lds": 0.0, "pearson_lo": 0.0, "pearson_hi": 0.0, "lds_lo": 0.0, "lds_hi": 0.0, "slope": 0.0})
    return pd.concat(lko), pd.concat(lds_rows), pd.DataFrame(summary)


def test_pooled_summary_pools_the_sets_and_tests_of_every_seed():
    from msif.validation.metrics import pooled_summary

    lko, lds_table, per_seed = _seed_tables()
    out = pooled_summary(lko, lds_table, per_seed, n_boot=200, seed=0)
    assert list(out.seed) == ["0", "1", "all"] and list(out.columns) == list(per_seed.columns)
    pooled = out.iloc[-1]
    c = correlations(lko.predicted.to_numpy(), lko.actual.to_numpy())
    assert pooled.n_sets == 60 and pooled.pearson == pytest.approx(c["pearson"]) and pooled.slope == pytest.approx(c["slope"])
    assert 1.9 < pooled.slope < 2.1 and pooled.pearson_lo <= pooled.pearson <= pooled.pearson_hi
    assert pooled.lds == pytest.approx(0.0, abs=1e-12)  # +1 on seed 0 and −1 on seed 1, per test example
    assert -1 <= pooled.lds_lo < -0.3 and 0.3 < pooled.lds_hi <= 1  # resampled over the 6 (seed, test) pairs
    assert pooled.noise_floor == pytest.approx(np.sqrt((1e-6 + 4e-6) / 2)) and pooled.noise_floor_seed == pytest.approx(1e-2)


def test_lds_leaves_out_a_diverged_subset_of_that_test_only():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(20, 2))
    act = pred.copy()
    act[3, 0] = np.nan  # subset 3 diverged: test 0's correlation uses the other 19 subsets
    mean, per_test = lds(pred, act)
    assert per_test == pytest.approx([1.0, 1.0]) and mean == pytest.approx(1.0)


def test_vectorised_bootstraps_equal_the_generic_one():
    """bootstrap_pearson / bootstrap_lds draw the same resamples as bootstrap_interval and give the same interval
    (ties from resampling included), and fall back to it where a flagged NaN row is present."""
    rng = np.random.default_rng(3)
    pred = rng.normal(size=40)
    act = pred + rng.normal(size=40)
    generic = bootstrap_interval(lambda idx: correlations(pred[idx], act[idx])["pearson"], 40, 300, 7)
    assert bootstrap_pearson(pred, act, 300, 7) == pytest.approx(generic, abs=1e-12)
    p = rng.normal(size=(25, 4))
    a = p + rng.normal(size=(25, 4))
    generic = bootstrap_interval(lambda idx: lds(p[idx], a[idx])[0], 25, 300, 7)
    assert bootstrap_lds(p, a, 300, 7) == pytest.approx(generic, abs=1e-12)
    a[2, 1] = np.nan
    generic = bootstrap_interval(lambda idx: lds(p[idx], a[idx])[0], 25, 300, 7)
    assert bootstrap_lds(p, a, 300, 7) == pytest.approx(generic, abs=1e-12)

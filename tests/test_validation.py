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
    lds_against_its_sampling_distribution(pred)


def _spearman_by_hand(p: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Spearman per column (no ties): Pearson correlation of the ranks along the subsets axis."""
    rp, ra = p.argsort(0).argsort(0).astype(float), a.argsort(0).argsort(0).astype(float)
    rp, ra = rp - rp.mean(0), ra - ra.mean(0)
    return (rp * ra).sum(0) / np.sqrt((rp**2).sum(0) * (ra**2).sum(0))


def lds_against_its_sampling_distribution(pred: np.ndarray) -> None:
    """LDS of predictions ``pred`` (30 subsets × 3 tests) against simulated actuals with a known answer (fixed seed).

    - Every draw: lds() equals the by-hand Spearman per test (across subsets) and its mean, to 1e-12.
    - Null (actual independent of pred), K = 2000 draws: Spearman's ρ over n = 30 pairs has mean 0 and variance
      1/(n − 1) exactly, so the LDS (mean of 3 tests) has sd 1/√(3·29) = 0.107: the simulated mean must be within
      4·0.107/√K = 0.0096 of 0 and the sd within 10% of 0.107 (its own sampling error is 1/√(2K) = 1.6%).
      Correlating across tests instead of subsets gives sd √(1/2)/√30 = 0.129 (+20%); pred with itself gives 1.
    - Signal: fresh normal predictions x (30 × 3) and actual = x + noise of equal variance, so per test ρ = 1/√2 and,
      for normal pairs, E[r_s] = 6/(π(n+1)) · (asin ρ + (n − 2) asin(ρ/2)) = 0.6717 exactly (Moran 1948; n = 30);
      K = 1000 draws: the mean LDS within 4 standard errors of it (the SE from the draws, ≈ 0.002). A sign flip gives
      −0.67. (Fresh x each draw: with x held fixed the expectation is that of x's own configuration, not the formula's.)
    """
    n = pred.shape[0]
    rng = np.random.default_rng(0)
    null = []
    for _ in range(2000):
        actual = rng.normal(size=pred.shape)
        mean, per_test = lds(pred, actual)
        by_hand = _spearman_by_hand(pred, actual)
        assert np.allclose(per_test, by_hand, rtol=0, atol=1e-12) and abs(mean - by_hand.mean()) <= 1e-12
        null.append(mean)
    null = np.array(null)
    sd0 = 1 / np.sqrt(pred.shape[1] * (n - 1))
    assert abs(null.mean()) <= 4 * sd0 / np.sqrt(len(null)), null.mean()
    assert abs(null.std(ddof=1) / sd0 - 1) <= 0.1, (null.std(ddof=1), sd0)
    rho = 1 / np.sqrt(2)
    expected = 6 / (np.pi * (n + 1)) * (np.arcsin(rho) + (n - 2) * np.arcsin(rho / 2))
    signal = []
    for _ in range(1000):
        x = rng.normal(size=pred.shape)
        signal.append(lds(x, x + rng.normal(size=pred.shape))[0])
    signal = np.array(signal)
    se = signal.std(ddof=1) / np.sqrt(len(signal))
    assert abs(signal.mean() - expected) <= 4 * se, (signal.mean(), expected, se)


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + 0.5 * rng.normal(size=200)
    r = correlations(x, y)["pearson"]
    lo, hi = bootstrap_interval(lambda idx: correlations(x[idx], y[idx])["pearson"], 200, 500, seed=0)
    # the sampling sd of Pearson's r for normal pairs: (1 − ρ²)/√n; here ρ = 1/√1.25, n = 200: 0.0141, so a 95%
    # interval is 2·1.96·0.0141 = 0.055 wide; the bootstrap's width must be within 20% of that
    width = 2 * 1.96 * (1 - 1 / 1.25) / np.sqrt(200)
    assert lo < r < hi and abs((hi - lo) / width - 1) <= 0.2, (hi - lo, width)
    assert correlations(x, 2.5 * x)["slope"] == pytest.approx(2.5)


def test_bootstrap_pearson_interval_covers_the_true_correlation_95_percent_of_the_time():
    """300 independent data sets of 200 normal pairs with ρ = 1/√1.25 (fixed seed): the 95% percentile interval holds ρ in
    a fraction within 4 binomial sd (√(0.95·0.05/300) = 0.0126) of 0.95, allowing the percentile bootstrap's known
    slight under-coverage for a correlation: [0.90, 1.0); its mean width within 15% of 2·1.96·(1 − ρ²)/√n = 0.055.
    Too narrow (e.g. no resampling, one draw reused) or too wide (e.g. x and y resampled apart: r ≈ 0) fails."""
    rng = np.random.default_rng(1)
    rho = 1 / np.sqrt(1.25)
    hits, widths = 0, []
    for rep in range(300):
        x = rng.normal(size=200)
        y = x + 0.5 * rng.normal(size=200)
        lo, hi = bootstrap_pearson(x, y, 500, seed=rep)
        hits += lo <= rho <= hi
        widths.append(hi - lo)
    assert 0.90 <= hits / 300 < 1.0, hits
    assert abs(np.mean(widths) / (2 * 1.96 * (1 - rho**2) / np.sqrt(200)) - 1) <= 0.15, np.mean(widths)


def _seed_tables(seeds=(0, 1), n_sets=30, n_sub=20, n_test=3):
    """Per-seed leave-k-out, LDS and summary tables with a known relation: actual = 2 × predicted (+ noise on seed 1)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    lko, lds_rows, summary = [], [], []
    for seed in seeds:
        pred = rng.normal(size=n_sets)
        act = 2 * pred + (0.5 * rng.normal(size=n_sets) if seed else 0)
        lko.append(pd.DataFrame({"scenario": "fixed", "solver": "exact", "method": "multi_stage", "seed": seed,
                                 "test_id": np.arange(n_sets) % n_test, "predicted": pred, "actual": act}))
        p = rng.normal(size=(n_sub, n_test))
        a = p if seed == 0 else -p  # LDS +1 on seed 0, -1 on seed 1: pooled mean 0
        lds_rows.append(pd.DataFrame({"scenario": "fixed", "method": "multi_stage", "solver": "exact", "seed": seed,
                                      "subset_id": np.repeat(np.arange(n_sub), n_test), "test_id": np.tile(np.arange(n_test), n_sub),
                                      "predicted": p.reshape(-1), "actual": a.reshape(-1), "actual_cold": p.reshape(-1)}))
        summary.append({"scenario": "fixed", "solver": "exact", "pearson": 0.0, "spearman": 0.0, "n_sets": n_sets,
                        "noise_floor": 1e-3 * (1 + seed), "noise_floor_seed": 1e-2, "method": "multi_stage", "seed": seed,
                        "lds_warm": 0.0, "pearson_lo": 0.0, "pearson_hi": 0.0, "lds_warm_lo": 0.0, "lds_warm_hi": 0.0, "slope": 0.0,
                        "lds_cold": 1.0, "lds_cold_lo": 1.0, "lds_cold_hi": 1.0, "pearson_lo_iid_sets": 0.0, "pearson_hi_iid_sets": 0.0})
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
    assert pooled.lds_warm == pytest.approx(0.0, abs=1e-12)  # +1 on seed 0 and −1 on seed 1, per test example
    assert -1 <= pooled.lds_warm_lo < -0.3 and 0.3 < pooled.lds_warm_hi <= 1  # resampled over the 6 (seed, test) pairs
    assert pooled.lds_cold == pooled.lds_cold_lo == pooled.lds_cold_hi == pytest.approx(1.0)  # actual_cold = predicted
    # leave-k-out intervals resample the 6 (seed, test) pairs, the old ones the 60 sets: at least as wide here
    assert pooled.pearson_lo_iid_sets <= pooled.pearson <= pooled.pearson_hi_iid_sets
    assert pooled.pearson_hi - pooled.pearson_lo > pooled.pearson_hi_iid_sets - pooled.pearson_lo_iid_sets
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

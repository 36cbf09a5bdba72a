"""Leave-k-out validation (method.md): removal sets, predicted vs actual effects, correlations.

For each scored test example t the pretraining set is ranked by ``score[t, i]``; the sets are its
top-k (most helpful: removal predicted to raise the loss), bottom-k (most harmful) and a random k,
for every k. The predicted effect of a set S is ``Σ_{i∈S} score[t, i]`` (first order, additive); the
actual effect comes from retraining both stages without S.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from scipy import stats

SELECTIONS = ("top", "bottom", "random")


def set_id(test_index: int, selection: str, k: int) -> str:
    return f"t{test_index}-{selection}-k{k}"


def removal_sets(scores: torch.Tensor, ks: list[int], selections: list[str], seed: int) -> list[dict]:
    """All leave-k-out sets for scores (n_test, n): dicts with set_id, test_index, selection, k, members.

    Random sets draw from a generator seeded by (seed, test_index, k), independent of other sets.
    """
    n_test, n = scores.shape
    if max(ks) > n:
        raise ValueError(f"validation.ks: k={max(ks)} exceeds the pretraining set size {n}")
    out = []
    for t in range(n_test):
        order = torch.argsort(scores[t].cpu(), descending=True, stable=True)
        for selection in selections:
            for k in ks:
                if selection == "top":
                    members = order[:k]
                elif selection == "bottom":
                    members = order[-k:]
                elif selection == "random":
                    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, t, k]).generate_state(1)[0]))
                    members = torch.randperm(n, generator=gen)[:k]
                else:
                    raise ValueError(f"validation.selections: {selection!r} not in {list(SELECTIONS)}")
                out.append({"set_id": set_id(t, selection, k), "test_index": t, "selection": selection, "k": k,
                            "members": sorted(members.tolist())})
    return out


def batches(n_sets: int, sets_per_job: int) -> list[list[int]]:
    """Indices of removal sets for each retraining job (the workflow's fan-out)."""
    return [list(range(i, min(i + sets_per_job, n_sets))) for i in range(0, n_sets, sets_per_job)]


def predicted_effects(scores: torch.Tensor, sets: list[dict]) -> np.ndarray:
    """``Δ̂f_t(S) = Σ_{i∈S} score[t, i]`` for each set (its own test example t)."""
    return np.array([float(scores[s["test_index"], s["members"]].sum()) for s in sets])


def correlations(predicted: np.ndarray, actual: np.ndarray) -> dict:
    """Pearson and Spearman of predicted vs actual, plus the fitted slope actual ≈ slope · predicted."""

    ok = np.isfinite(predicted) & np.isfinite(actual)  # a diverged retraining (actual NaN) stays in the table, flagged
    predicted, actual = np.asarray(predicted)[ok], np.asarray(actual)[ok]
    if len(predicted) < 3 or np.std(predicted) == 0 or np.std(actual) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "slope": float("nan")}
    slope = float(np.dot(predicted, actual) / np.dot(predicted, predicted))
    return {"pearson": float(stats.pearsonr(predicted, actual)[0]), "spearman": float(stats.spearmanr(predicted, actual)[0]),
            "slope": slope}


def lds_subsets(n: int, fraction: float, n_subsets: int, seed: int) -> list[list[int]]:
    """Random subsets S_j holding ``fraction`` of the n pretraining examples (sorted row indices), seeded."""
    size = max(1, round(fraction * n))
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 4242]).generate_state(1)[0]))
    return [sorted(torch.randperm(n, generator=gen)[:size].tolist()) for _ in range(n_subsets)]


def lds_cold_seed(seed: int, subset: int, rep: int) -> int:
    """The initialisation seed of cold-start LDS retrain ``rep`` of subset ``subset`` (validation.lds.cold_seeds).

    ``SeedSequence([seed, subset, rep, 4243]).generate_state(1)[0] mod 2³¹``: one fresh initialisation per (run seed,
    subset, rep), the same in every scenario (so the scenarios' pretraining on a subset is the same training) and
    independent of the job that computes it, so reruns are bit-identical; tag 4243 keeps it apart from the subsets'
    own draw (4242) and the noise floors' seeds (tag 7).
    """
    return int(np.random.SeedSequence([seed, subset, rep, 4243]).generate_state(1)[0] % 2**31)


def lds_predictions(scores: torch.Tensor, subsets: list[list[int]]) -> np.ndarray:
    """Predicted change of each test loss when training on S_j only: ``Σ_{i∉S_j} score[t, i]``; (n_subsets, n_test)."""
    total = scores.sum(1)
    return np.stack([(total - scores[:, s].sum(1)).cpu().numpy() for s in subsets])


def lds(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, np.ndarray]:
    """Linear datamodeling score (Park et al. 2023): Spearman across subsets, per test, averaged over tests.

    ``predicted`` and ``actual`` are (n_subsets, n_test); returns (mean, per-test correlations). A subset
    whose retraining diverged (actual NaN, its rows flagged) is left out of that test's correlation.
    """

    def spearman(p, a):
        ok = np.isfinite(p) & np.isfinite(a)
        return stats.spearmanr(p[ok], a[ok])[0] if ok.sum() >= 3 else float("nan")

    per_test = np.array([spearman(predicted[:, t], actual[:, t]) for t in range(predicted.shape[1])])
    return float(np.nanmean(per_test)), per_test


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair (along the last axis); NaN where a row is constant."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def bootstrap_pearson(predicted: np.ndarray, actual: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """:func:`bootstrap_interval` of the Pearson correlation, all resamples at once (the same resamples and interval)."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if not (np.isfinite(predicted).all() and np.isfinite(actual).all()):  # flagged NaN rows: the per-resample filter
        return bootstrap_interval(lambda idx: correlations(predicted[idx], actual[idx])["pearson"], len(predicted), n_boot, seed, level)
    idx = _resamples(len(predicted), n_boot, seed)
    r = _rowwise_pearson(predicted[idx], actual[idx])
    return _quantiles(np.where(idx.shape[1] >= 3, r, np.nan), level)


def bootstrap_lds(predicted: np.ndarray, actual: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """:func:`bootstrap_interval` of :func:`lds` over resampled subsets (rows), all resamples at once."""

    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if not (np.isfinite(predicted).all() and np.isfinite(actual).all()):
        return bootstrap_interval(lambda idx: lds(predicted[idx], actual[idx])[0], len(predicted), n_boot, seed, level)
    idx = _resamples(len(predicted), n_boot, seed)  # (B, n_subsets)
    rp = stats.rankdata(predicted[idx], axis=1)  # (B, n_subsets, n_test): Spearman = Pearson of ranks
    ra = stats.rankdata(actual[idx], axis=1)
    per_test = _rowwise_pearson(np.moveaxis(rp, 1, -1), np.moveaxis(ra, 1, -1))  # (B, n_test)
    with warnings.catch_warnings():  # a resample where every test is constant: mean of nothing is NaN, dropped
        warnings.simplefilter("ignore", RuntimeWarning)
        return _quantiles(np.nanmean(per_test, axis=1), level)


def cluster_counts(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each cluster is drawn in each resample: (n_boot, n_clusters), rows summing to n_clusters.

    Resample b draws ``n_clusters`` clusters with replacement (``default_rng(seed).integers``, one row per
    resample); an item then enters resample b with the count of its cluster.
    """
    idx = np.random.default_rng(seed).integers(0, n_clusters, (n_boot, n_clusters))
    counts = np.zeros((n_boot, n_clusters))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    return counts


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson of (x, y) with each item repeated ``w`` times, per row of w (n_boot, n); NaN where one side is constant.

    ``r = Σ w (x−x̄)(y−ȳ) / √(Σ w (x−x̄)² · Σ w (y−ȳ)²)`` with the w-weighted means x̄, ȳ.
    """
    total = w.sum(-1, keepdims=True)
    dx = x - (w * x).sum(-1, keepdims=True) / total
    dy = y - (w * y).sum(-1, keepdims=True) / total
    sxx, syy, sxy = (w * dx * dx).sum(-1), (w * dy * dy).sum(-1), (w * dx * dy).sum(-1)
    scale = np.maximum(np.abs(x).max(), np.abs(y).max()) if len(x) else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):  # constant sides (zero spread up to rounding): NaN, as correlations()
        r = sxy / np.sqrt(sxx * syy)
    tiny = 1e-24 * total[:, 0] * scale**2
    return np.where((sxx > tiny) & (syy > tiny), r, np.nan)


def _weighted_midranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Ranks of x when item i is repeated ``w[b, i]`` times (ties, within and across items, get their mid rank), per row b.

    For the tie group g of x (in ascending order) of total weight ``W_g``: ``rank_g = Σ_{h<g} W_h + (W_g + 1)/2``,
    which is what ``scipy.stats.rankdata`` gives each copy in the expanded sample.
    """
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    group = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
    wg = np.add.reduceat(w[:, order], starts, axis=1)
    rank_g = np.cumsum(wg, axis=1) - wg + (wg + 1) / 2
    out = np.empty_like(w, dtype=float)
    out[:, order] = rank_g[:, group]
    return out


def bootstrap_clustered(predicted: np.ndarray, actual: np.ndarray, clusters, n_boot: int, seed: int,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Cluster bootstrap intervals of :func:`correlations` (Pearson, Spearman, slope): resample whole clusters.

    The removal sets of one test example are not independent (its top-k sets are nested, ``order[:k]``, and
    share its quirks), so the resampled unit is the cluster (a test example; pooled: a (seed, test example)
    pair), never the set. Resample b draws the clusters with replacement (:func:`cluster_counts`) and
    computes, on every set of the drawn clusters (repeated as often as its cluster is drawn), Pearson,
    Spearman (Pearson of mid ranks) and ``slope = Σ x y / Σ x²``; the interval is the percentile interval
    of those values (NaN with a single cluster). Sets with a non-finite predicted or actual effect are left out
    first, as in :func:`correlations`. With few clusters a percentile interval of a correlation under-covers
    even so (docs/validation.md: about 0.77 for 95 % with 10 test examples); with 2 it is degenerate. Returns ``{"pearson": (lo, hi), "spearman": (lo, hi), "slope": (lo, hi)}``.
    """
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    ok = np.isfinite(predicted) & np.isfinite(actual)
    x, y = predicted[ok], actual[ok]
    _, codes = np.unique(np.asarray(clusters)[ok], return_inverse=True)
    nan = (float("nan"), float("nan"))
    if len(x) < 3 or n_boot <= 0 or codes.max() < 1:  # one cluster: nothing to resample
        return {"pearson": nan, "spearman": nan, "slope": nan}
    w = cluster_counts(int(codes.max()) + 1, n_boot, seed)[:, codes]  # (n_boot, n_sets)
    enough = w.sum(1) >= 3
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where((w * x * x).sum(1) > 0, (w * x * y).sum(1) / (w * x * x).sum(1), np.nan)
    out = {"pearson": _weighted_pearson(x, y, w),
           "spearman": _weighted_pearson(_weighted_midranks(x, w), _weighted_midranks(y, w), w), "slope": slope}
    return {k: _quantiles(np.where(enough, v, np.nan), level) for k, v in out.items()}


def bootstrap_cluster_mean(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Cluster bootstrap interval of ``nanmean(values)``, one value per cluster: the LDS over test examples.

    ``values`` are the per-test LDS correlations (pooled: per (seed, test example) pair); resample b draws the
    test examples with replacement (:func:`cluster_counts`) and takes the mean of the finite drawn values,
    ``Σ_c n_bc v_c / Σ_c n_bc [v_c finite]``. The subsets are shared by every test example, and each per-test
    correlation already carries the subsets' sampling noise; the interval answers: how much does the LDS
    depend on which test examples were scored?
    """
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    if ok.sum() < 2 or n_boot <= 0:  # one test example: nothing to resample
        return float("nan"), float("nan")
    counts = cluster_counts(len(v), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts * np.where(ok, v, 0.0)).sum(1) / (counts * ok).sum(1)
    return _quantiles(means, level)


def _resamples(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """The index draws of :func:`bootstrap_interval`, as one (n_boot, n_items) array."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n_items, n_items) for _ in range(n_boot)])


def bootstrap_interval(stat, n_items: int, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over items resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n_items, n_items)) for _ in range(n_boot)]
    values = np.asarray([v for v in values if np.isfinite(v)])
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _pooled_lds(d: pd.DataFrame, column: str) -> np.ndarray:
    """The per-(seed, test example) LDS correlations of one method's LDS rows, ``column`` the actual effects."""
    if column not in d or not d[column].notna().any():
        return np.array([])
    return np.concatenate([lds(t.pivot(index="subset_id", columns="test_id", values="predicted").to_numpy(),
                               t.pivot(index="subset_id", columns="test_id", values=column).to_numpy())[1]
                           for _, t in d.groupby("seed")])


def pooled_summary(lko, lds_table, per_seed, n_boot: int, seed: int):
    """Per-seed summary rows followed by one pooled row per (scenario, method, solver) with ``seed = "all"``.

    Pooled leave-k-out: Pearson/Spearman/slope over the removal sets of every seed, with intervals over resampled
    (seed, test example) pairs (:func:`bootstrap_clustered`; the old interval over sets as ``pearson_lo_iid_sets``/
    ``_hi_iid_sets``). Pooled LDS (``lds_warm`` from the LDS table's ``actual``, ``lds_cold`` from its
    ``actual_cold``): the mean of the per-(seed, test) Spearman correlations, interval over resampled (seed, test)
    pairs (:func:`bootstrap_cluster_mean`). Noise floors: RMS over seeds of the per-seed floors. ``pearson_same_basin``
    and ``n_other_basin``: Pearson over the pooled sets not flagged ``other_basin``, and how many were.
    """

    rows = []
    keys = ["scenario", "method", "solver"]
    nan = float("nan")
    for (scenario, method, solver), g in per_seed.groupby(keys, sort=False):
        sel = (lko.scenario == scenario) & (lko.method == method) & (lko.solver == solver)
        pred, act = lko.loc[sel, "predicted"].to_numpy(), lko.loc[sel, "actual"].to_numpy()
        pairs = (lko.loc[sel, "seed"].astype(str) + ":" + lko.loc[sel, "test_id"].astype(str)).to_numpy()
        c = correlations(pred, act)
        ci = bootstrap_clustered(pred, act, pairs, n_boot, seed)
        lo, hi = bootstrap_pearson(pred, act, n_boot, seed)
        row = {**{k: v for k, v in zip(keys, (scenario, method, solver), strict=True)}, "seed": "all",
               "pearson": c["pearson"], "spearman": c["spearman"], "slope": c["slope"], "n_sets": int(sel.sum()),
               **{f"{m}_{end}": ci[m][i] for m in ci for i, end in enumerate(("lo", "hi"))},
               "pearson_lo_iid_sets": lo, "pearson_hi_iid_sets": hi, "lds_warm_lo_iid_subsets": nan, "lds_warm_hi_iid_subsets": nan}
        if "other_basin" in lko:  # the basin check (msif.validation.basins): Pearson without the rows that left the basin
            other = lko.loc[sel, "other_basin"].astype(bool).to_numpy()
            row["pearson_same_basin"] = correlations(pred[~other], act[~other])["pearson"]
            row["n_other_basin"] = int(other.sum())
        for col in (c for c in g.columns if c.endswith("_accuracy")):
            row[col] = float(g[col].mean())
        for col in ("noise_floor", "noise_floor_seed"):
            if col in g:
                row[col] = float(np.sqrt(np.nanmean(g[col].to_numpy(float) ** 2))) if g[col].notna().any() else float("nan")
        d = lds_table[(lds_table.scenario == scenario) & (lds_table.method == method) & (lds_table.solver == solver)]
        for kind, column in (("warm", "actual"), ("cold", "actual_cold")):
            per_test = _pooled_lds(d, column)
            row[f"lds_{kind}"] = float(np.nanmean(per_test)) if np.isfinite(per_test).any() else nan
            row[f"lds_{kind}_lo"], row[f"lds_{kind}_hi"] = bootstrap_cluster_mean(per_test, n_boot, seed) if len(per_test) else (nan, nan)
        rows.append(row)
    out = pd.concat([per_seed.astype({"seed": str}), pd.DataFrame(rows)], ignore_index=True)
    return out[list(per_seed.columns)]

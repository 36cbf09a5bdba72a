"""Leave-k-out validation (method.md): removal sets, predicted vs actual effects, correlations.

For each scored test example t the pretraining set is ranked by ``score[t, i]``; the sets are its
top-k (most helpful: removal predicted to raise the loss), bottom-k (most harmful) and a random k,
for every k. The predicted effect of a set S is ``Σ_{i∈S} score[t, i]`` (first order, additive); the
actual effect comes from retraining both stages without S.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

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
    from scipy import stats

    if len(predicted) < 3 or np.std(predicted) == 0 or np.std(actual) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "slope": float("nan")}
    slope = float(np.dot(predicted, actual) / np.dot(predicted, predicted))
    return {"pearson": float(stats.pearsonr(predicted, actual)[0]), "spearman": float(stats.spearmanr(predicted, actual)[0]),
            "slope": slope}


def summarise(leave_k_out: pd.DataFrame, noise_floor: dict[str, float]) -> pd.DataFrame:
    """One row per (scenario, solver): correlations over all removal sets and the scenario's noise floor."""
    rows = []
    for (scenario, solver), g in leave_k_out.groupby(["scenario", "solver"], sort=True):
        c = correlations(g["predicted"].to_numpy(), g["actual"].to_numpy())
        rows.append({"scenario": scenario, "solver": solver, "pearson": c["pearson"], "spearman": c["spearman"],
                     "n_sets": len(g), "noise_floor": noise_floor.get(scenario, float("nan")), "slope": c["slope"]})
    return pd.DataFrame(rows, columns=["scenario", "solver", "pearson", "spearman", "n_sets", "noise_floor", "slope"])

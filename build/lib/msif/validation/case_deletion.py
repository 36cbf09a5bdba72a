"""Case deletion (Yeh et al. 2022): delete each method's top-k proponents (or opponents) of a test example,
retrain the SGD classifier, and measure how the test example's prediction moves.

For test example x_t with predicted class ĉ_t (of the checkpointed run), a deletion set S and a seed s:

    Δp(S, s)    = p_ĉ(x_t; θ_s(without S)) − p_ĉ(x_t; θ_s(all))
    Δloss(S, s) = −log p_ĉ(x_t; θ_s(without S)) + log p_ĉ(x_t; θ_s(all))

each retrained from the same start and batch order (seed s) with and without S, so seed noise cancels
in the pair. Scores rank proponents first (method.md's sign): deleting the top-k should lower p_ĉ
(Δp < 0, Δloss > 0) and deleting the bottom-k (opponents) raise it; random-k sets are the noise floor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from msif.experiments.text import TextModel
from msif.influence.tracin import losses, sgd
from msif.task.data import Split

SELECTIONS = ("top", "bottom")


def deletion_sets(scores: dict[str, torch.Tensor], ks: list[int], seed: int) -> list[dict]:
    """Every (test, method, selection, k) deletion set, plus a seeded random k per test and k.

    ``scores`` maps a method to its (n_test, m) matrix, larger = stronger proponent.
    """
    sets = []
    n_test, m = next(iter(scores.values())).shape
    rng = np.random.default_rng([seed, 11])
    for t in range(n_test):
        for method, s in scores.items():
            order = torch.argsort(s[t], descending=True, stable=True).tolist()
            for k in ks:
                sets.append({"test_index": t, "method": method, "selection": "top", "k": k, "members": order[:k]})
                sets.append({"test_index": t, "method": method, "selection": "bottom", "k": k, "members": order[::-1][:k]})
        for k in ks:
            sets.append({"test_index": t, "method": "random", "selection": "random", "k": k,
                         "members": sorted(rng.choice(m, size=k, replace=False).tolist())})
    for i, s in enumerate(sets):
        s["set_id"] = f"t{s['test_index']}-{s['method']}-{s['selection']}-k{s['k']}"
        assert s["set_id"] not in {x["set_id"] for x in sets[:i]}
    return sets


def predicted_class_probs(model: TextModel, params: torch.Tensor, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """``p_ĉ(x; θ)`` for one parameter vector (n,) or a stack of them (R, n)."""
    def one(p):
        return torch.exp(-losses(model, p, x, cls))

    return one(params) if params.ndim == 1 else torch.stack([one(p) for p in params])


def retrain(model: TextModel, params0: torch.Tensor, train: Split, test_x: torch.Tensor, cls: torch.Tensor, sets: list[dict],
            sgd_args: dict, seed: int, chunk: int = 256) -> pd.DataFrame:
    """Retrain with every deletion set (vmap, ``chunk`` models at a time) and without any, all under ``seed``;
    one row per set with Δp and Δloss of its test example's predicted class (see module docstring)."""
    m = len(train)
    base, _ = sgd(model, params0, train, seed=seed, **sgd_args)
    p_base = predicted_class_probs(model, base, test_x, cls)
    rows = []
    for start in range(0, len(sets), chunk):
        part = sets[start : start + chunk]
        w = torch.ones(len(part), m, dtype=params0.dtype, device=params0.device)
        for r, s in enumerate(part):
            w[r, s["members"]] = 0.0
        final, _ = sgd(model, params0, train, seed=seed, weights=w, **sgd_args)
        probs = predicted_class_probs(model, final, test_x, cls)
        for r, s in enumerate(part):
            t = s["test_index"]
            p_new, p_old = float(probs[r, t]), float(p_base[t])
            rows.append({"set_id": s["set_id"], "test_index": t, "method": s["method"], "selection": s["selection"], "k": s["k"],
                         "seed": seed, "prob_base": p_old, "delta_prob": p_new - p_old, "delta_loss": float(np.log(p_old) - np.log(p_new))})
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean (and standard error over test examples) of Δp and Δloss per method, selection and k; seeds averaged first."""
    per_test = table.groupby(["method", "selection", "k", "test_index"], as_index=False)[["delta_prob", "delta_loss"]].mean()
    g = per_test.groupby(["method", "selection", "k"])
    out = g[["delta_prob", "delta_loss"]].mean()
    se = g[["delta_prob", "delta_loss"]].sem().add_suffix("_se")
    out = out.join(se).join(g.size().rename("n_tests")).reset_index()
    return out.sort_values(["selection", "k", "delta_prob"]).reset_index(drop=True)

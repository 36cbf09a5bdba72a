"""One seed's validation tables: every method's predicted effects against the retrained actual effects.

Leave-k-out rows (one per removal set, method and solver), the summary (Pearson, Spearman, slope and their
bootstrap intervals over test examples, the warm- and cold-start LDS, both noise floors) and the LDS table (one
row per subset and test example).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from msif.validation.metrics import (
    bootstrap_cluster_mean,
    bootstrap_clustered,
    bootstrap_lds,
    bootstrap_pearson,
    correlations,
    lds,
    lds_predictions,
    predicted_effects,
)
from msif.validation.noise import noise_floors

LDS_COLUMNS = ["scenario", "method", "subset_id", "test_id", "predicted", "actual", "solver", "seed", "actual_cold"]
NAN = float("nan")


@dataclass
class ScenarioInputs:
    """What one scenario's comparison reads: (method, solver) → (scores, test_ids), the removal sets, and the
    retraining, noise-floor and LDS tables (the LDS table is ``None`` without LDS; ``lds_cold``, the cold-start
    retrains of rule ``lds_cold``, ``None`` without them)."""

    methods: dict
    sets: list[dict]
    retrain: pd.DataFrame
    noise: pd.DataFrame
    lds: pd.DataFrame | None
    lds_cold: pd.DataFrame | None = None
    set_predictions: dict = field(default_factory=dict)  # (method, solver) → (PerSet, test_ids): methods that predict each set


@dataclass
class PerSet:
    """A method's predictions made per removal set rather than summed from scores (``multi_stage_group``): ``sets`` the
    predicted Δ test loss of each removal set (in the order of the sets), ``lds`` (n_subsets, n_test) each LDS subset's."""

    sets: np.ndarray
    lds: np.ndarray | None = None


def set_effects(scores, sets: list[dict]) -> np.ndarray:
    """Each set's predicted effect: summed scores (:func:`predicted_effects`), or a :class:`PerSet`'s own."""
    return np.asarray(scores.sets) if isinstance(scores, PerSet) else predicted_effects(scores, sets)


def subset_effects(scores, subsets: list[list[int]]) -> np.ndarray:
    """Each LDS subset's predicted effects (n_subsets, n_test): :func:`lds_predictions`, or a :class:`PerSet`'s own."""
    return np.asarray(scores.lds) if isinstance(scores, PerSet) else lds_predictions(scores, subsets)


def read_csvs(paths: list[str]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p) for p in paths])


def leave_k_out_rows(scenario: str, method: str, solver: str, scores, test_ids, sets: list[dict], actual: np.ndarray,
                     seed: int, other_basin: np.ndarray | None = None) -> pd.DataFrame:
    """``predicted = Σ_{i∈S} score[t, i]`` beside the actual Δ test loss of every removal set S, and whether its
    retraining landed in another basin (``other_basin``, :mod:`msif.validation.basins`; False where not checked)."""
    return pd.DataFrame({
        "scenario": scenario, "solver": solver, "test_id": [int(test_ids[s["test_index"]]) for s in sets],
        "selection": [s["selection"] for s in sets], "k": [s["k"] for s in sets],
        "predicted": set_effects(scores, sets), "actual": actual, "method": method, "seed": seed,
        "other_basin": np.zeros(len(sets), bool) if other_basin is None else np.asarray(other_basin, bool),
    })


def lds_rows(scenario: str, method: str, solver: str, test_ids, lds_pred: np.ndarray, lds_actual: np.ndarray, seed: int,
             lds_cold: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (subset, test example): predicted, ``actual`` (warm start) and ``actual_cold`` (the mean over the
    cold seeds; NaN without cold-start retrains)."""
    n_subsets = lds_pred.shape[0]
    return pd.DataFrame({
        "scenario": scenario, "method": method, "subset_id": np.repeat(np.arange(n_subsets), lds_pred.shape[1]),
        "test_id": np.tile([int(t) for t in test_ids], n_subsets), "predicted": lds_pred.reshape(-1),
        "actual": lds_actual.reshape(-1), "solver": solver, "seed": seed,
        "actual_cold": np.full(lds_pred.size, np.nan) if lds_cold is None else lds_cold.reshape(-1),
    })


def cold_actual(cold: pd.DataFrame) -> np.ndarray:
    """The cold-start actual effects (n_subsets, n_test): per subset and test example, the mean of the changed test loss
    over the cold seeds that converged, ``(1/C) Σ_c [f_t(θ_{S_j, c}) − f_t(θ)]`` (NaN where every seed diverged)."""
    return cold.groupby(["subset_id", "test_index"])["actual"].mean().unstack("test_index").sort_index().to_numpy()


def lds_columns(kind: str, pred: np.ndarray, actual: np.ndarray, n_boot: int, seed: int) -> dict:
    """``lds_<kind>`` (:func:`lds`) with its interval over resampled test examples (:func:`bootstrap_cluster_mean` of
    the per-test correlations), ``lds_<kind>_lo``/``_hi``."""
    value, per_test = lds(pred, actual)
    lo, hi = bootstrap_cluster_mean(per_test, n_boot, seed)
    return {f"lds_{kind}": value, f"lds_{kind}_lo": lo, f"lds_{kind}_hi": hi}


def summary_row(scenario: str, method: str, solver: str, pred: np.ndarray, actual: np.ndarray, floors: dict, n_boot: int,
                seed: int, clusters: np.ndarray, other_basin: np.ndarray | None = None) -> dict:
    """Pearson, Spearman and slope of predicted against actual, each with its bootstrap interval over the test examples
    (``clusters``: the test example of each set; :func:`bootstrap_clustered`), and the old interval on Pearson over
    sets resampled as if independent (``pearson_lo_iid_sets``/``_hi_iid_sets``, :func:`bootstrap_pearson`: kept for one
    release, too narrow). ``pearson_same_basin``: Pearson over the sets whose retraining stayed in the basin the
    influence function describes (``other_basin`` False), ``n_other_basin`` how many did not (:func:`same_basin_columns`).
    The LDS columns are NaN here; :func:`compare_tables` fills them."""
    c = correlations(pred, actual)
    ci = bootstrap_clustered(pred, actual, clusters, n_boot, seed)
    lo, hi = bootstrap_pearson(pred, actual, n_boot, seed)
    return {"scenario": scenario, "solver": solver, "pearson": c["pearson"], "spearman": c["spearman"], "n_sets": len(pred),
            "noise_floor": floors["warm"], "noise_floor_seed": floors["seed"], "method": method, "seed": seed, "lds_warm": NAN,
            "pearson_lo": ci["pearson"][0], "pearson_hi": ci["pearson"][1], "lds_warm_lo": NAN, "lds_warm_hi": NAN,
            "slope": c["slope"], "spearman_lo": ci["spearman"][0], "spearman_hi": ci["spearman"][1], "slope_lo": ci["slope"][0],
            "slope_hi": ci["slope"][1], "lds_cold": NAN, "lds_cold_lo": NAN, "lds_cold_hi": NAN, "pearson_lo_iid_sets": lo,
            "pearson_hi_iid_sets": hi, "lds_warm_lo_iid_subsets": NAN, "lds_warm_hi_iid_subsets": NAN,
            **same_basin_columns(pred, actual, other_basin)}


def same_basin_columns(pred: np.ndarray, actual: np.ndarray, other_basin: np.ndarray | None) -> dict:
    """``pearson_same_basin`` (:func:`correlations` over the sets not flagged ``other_basin``) and ``n_other_basin``."""
    other = np.zeros(len(pred), bool) if other_basin is None else np.asarray(other_basin, bool)
    return {"pearson_same_basin": correlations(np.asarray(pred)[~other], np.asarray(actual)[~other])["pearson"],
            "n_other_basin": int(other.sum())}


def compare_tables(inputs: dict[str, ScenarioInputs], subsets: list[list[int]] | None, n_boot: int, seed: int):
    """(leave-k-out rows, summary, LDS rows) over every scenario, method and solver."""
    frames, lds_frames, summary_rows = [], [], []
    for scenario, inp in inputs.items():
        by_set = inp.retrain.set_index("set_id").loc[[s["set_id"] for s in inp.sets]]
        actual = by_set["actual"].to_numpy()
        other = by_set["other_basin"].to_numpy(bool) if "other_basin" in by_set else None
        floors = noise_floors(inp.noise)
        lds_actual = lds_cold = None
        if subsets is not None:
            lds_actual = inp.lds.pivot(index="subset_id", columns="test_index", values="actual").sort_index().to_numpy()
            if inp.lds_cold is not None and len(inp.lds_cold):
                lds_cold = cold_actual(inp.lds_cold)
        for (method, solver), (scores, test_ids) in {**inp.methods, **inp.set_predictions}.items():
            frames.append(leave_k_out_rows(scenario, method, solver, scores, test_ids, inp.sets, actual, seed, other))
            row = summary_row(scenario, method, solver, frames[-1]["predicted"].to_numpy(), actual, floors, n_boot, seed,
                              clusters=frames[-1]["test_id"].to_numpy(), other_basin=other)
            if lds_actual is not None:
                lds_pred = subset_effects(scores, subsets)
                row.update(lds_columns("warm", lds_pred, lds_actual, n_boot, seed))
                row["lds_warm_lo_iid_subsets"], row["lds_warm_hi_iid_subsets"] = bootstrap_lds(lds_pred, lds_actual, n_boot, seed)
                if lds_cold is not None:
                    row.update(lds_columns("cold", lds_pred, lds_cold, n_boot, seed))
                lds_frames.append(lds_rows(scenario, method, solver, test_ids, lds_pred, lds_actual, seed, lds_cold))
            summary_rows.append(row)
    lds_table = pd.concat(lds_frames, ignore_index=True) if lds_frames else pd.DataFrame(columns=LDS_COLUMNS)
    return pd.concat(frames, ignore_index=True), pd.DataFrame(summary_rows), lds_table


ACCURACY_COLUMNS = ["pt_train_accuracy", "pt_test_accuracy", "ft_train_accuracy", "ft_test_accuracy", "scratch_test_accuracy"]


def with_accuracy(summary: pd.DataFrame, pretrain: dict, finetune: dict[str, dict], scratch: dict | None = None) -> pd.DataFrame:
    """The summary with the accuracy of the models it explains: the pretrained model (every row) and each scenario's
    finetuned model (its rows); ``pretrain``/``finetune[scenario]``/``scratch`` hold ``{"train": ..., "test": ...}``;
    ``scratch``: the same architecture trained on the finetuning data alone (``steps.train.scratch_accuracy``), the
    yardstick of ``ft_test_accuracy``."""
    nan = float("nan")
    out = summary.assign(pt_train_accuracy=pretrain.get("train", nan), pt_test_accuracy=pretrain.get("test", nan),
                         scratch_test_accuracy=(scratch or {}).get("test", nan))
    for split in ("train", "test"):
        out[f"ft_{split}_accuracy"] = [finetune.get(s, {}).get(split, nan) for s in out.scenario]
    return out

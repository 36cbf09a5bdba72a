"""Paper-ready tables of a run: the pooled validation summary per scenario (and α) × method × solver.

``results/<run>/tables/summary.csv`` holds the numbers; ``paper_table.md`` is the same as a markdown
table a user can paste (the report shows it too). Scenario ``updated@α`` rows carry their α.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from msif import io


def _alpha(scenario: str, default: float) -> float:
    kind, _, own = scenario.partition("@")
    return float("nan") if kind == "fixed" else float(own) if own else default


def paper_summary(summary: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """The pooled rows (``seed = all``; the only seed's rows for a one-seed run), with the scenario's α, sorted."""
    seeds = summary["seed"].astype(str)
    rows = summary[seeds == "all"] if (seeds == "all").any() else summary
    out = rows.assign(alpha=[_alpha(s, alpha) for s in rows.scenario], n_seeds=max(1, (seeds != "all").sum() // max(1, len(rows))))
    order = ["scenario", "alpha", "method", "solver", "pearson", "pearson_lo", "pearson_hi", "pearson_same_basin", "n_other_basin", "spearman", "spearman_lo", "spearman_hi",
             "lds_warm", "lds_warm_lo", "lds_warm_hi", "lds_cold", "lds_cold_lo", "lds_cold_hi", "slope", "slope_lo", "slope_hi",
             "noise_floor", "noise_floor_seed", "n_sets", "n_seeds", "pt_test_accuracy", "ft_test_accuracy",
             "scratch_test_accuracy", "pearson_lo_iid_sets", "pearson_hi_iid_sets"]
    out = out[[c for c in order if c in out]]
    kind = out.scenario.str.partition("@")[0]
    return out.assign(_k=kind, _m=out.method != "multi_stage").sort_values(["_k", "alpha", "_m", "method", "solver"]).drop(
        columns=["_k", "_m"]).reset_index(drop=True)


# methods whose scores are predicted changes of the test loss, so that actual ≈ slope · predicted means something
SIZED = ("multi_stage", "multi_stage_group", "single_stage")


def markdown(table: pd.DataFrame) -> str:
    """A markdown table: Pearson and the warm- and cold-start LDS with their 95% intervals (over test examples) in one cell each,
    beside the accuracy of the models explained."""
    def ci(v, lo, hi):
        return "—" if not np.isfinite(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{v:.3f}"

    def acc(r, col):
        v = getattr(r, col, float("nan"))
        return f"{v:.3f}" if np.isfinite(v) else "—"

    head = ["scenario", "α", "method", "solver", "Pearson [95% CI]", "Spearman", "LDS warm [95% CI]", "LDS cold [95% CI]", "slope", "sets",
            "pretrain test acc.", "finetune test acc.", "from-scratch test acc."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.itertuples():
        cells = [r.scenario.partition("@")[0], "—" if not np.isfinite(r.alpha) else f"{r.alpha:g}", r.method, r.solver,
                 ci(r.pearson, r.pearson_lo, r.pearson_hi), f"{r.spearman:.3f}", ci(r.lds_warm, r.lds_warm_lo, r.lds_warm_hi),
                 ci(*(getattr(r, c, float("nan")) for c in ("lds_cold", "lds_cold_lo", "lds_cold_hi"))),
                 f"{r.slope:.2f}" if r.method in SIZED else "—", str(int(r.n_sets)),
                 acc(r, "pt_test_accuracy"), acc(r, "ft_test_accuracy"), acc(r, "scratch_test_accuracy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(summary_path: str, alpha: float, csv_out: str, md_out: str) -> None:
    """``tables/summary.csv`` and ``tables/paper_table.md`` from the run's pooled ``validation/summary.csv``."""
    table = paper_summary(pd.read_csv(summary_path, dtype={"seed": str}), alpha)
    io.write_text(csv_out, table.to_csv(index=False))
    io.write_text(md_out, markdown(table))


def group_cost(sidecars: list[tuple[str, str, str]]) -> pd.DataFrame:
    """``multi_stage_group``'s cost per set beside a first-order test column's, a row per (scenario, seed, sidecar path of
    rule ``group_predictions``' ``group.pt.json``): both measured in the same job on the same factorisations (``cost``),
    the Newton steps per set (both stages) and how many line searches failed. Numbers to 3 significant digits."""
    def rounded(value: float) -> float:
        return float(f"{value:.3g}")

    rows = []
    for scenario, seed, path in sidecars:
        meta = io.read_json(path)
        cost, failed = meta.get("cost", {}), meta.get("line_search_failed", {})
        if "ratio" not in cost:
            continue
        rows.append({"scenario": scenario, "seed": seed, "ms per set": rounded(1e3 * cost["seconds_per_set"]),
                     "ms per first-order test column": rounded(1e3 * cost["first_order_seconds_per_test"]),
                     "ratio": rounded(cost["ratio"]), "Newton steps per set": rounded(cost.get("newton_steps_per_set", float("nan"))),
                     "line search failed (sets, LDS subsets)": f"{failed.get('sets', '—')}, {failed.get('lds_subsets', '—')}"})
    return pd.DataFrame(rows)

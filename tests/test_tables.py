"""Paper tables: pooled rows, the scenario's α, and a markdown table with intervals."""

import numpy as np
import pandas as pd

from msif.report.tables import markdown, paper_summary


def _summary(seeds):
    rows = []
    for seed in seeds:
        for scenario in ("updated@1", "fixed", "updated"):
            for method in ("random", "multi_stage"):
                rows.append({"scenario": scenario, "solver": "exact" if method == "multi_stage" else "none", "pearson": 0.9,
                             "spearman": 0.8, "n_sets": 12, "noise_floor": 1e-9, "noise_floor_seed": np.nan, "method": method,
                             "seed": seed, "lds_warm": 0.5, "pearson_lo": 0.85, "pearson_hi": 0.95, "lds_warm_lo": 0.4,
                             "lds_warm_hi": 0.6, "slope": 1.5, "lds_cold": 0.3 if method == "multi_stage" else np.nan,
                             "lds_cold_lo": 0.1, "lds_cold_hi": 0.45})
    return pd.DataFrame(rows)


def test_paper_summary_keeps_pooled_rows_with_alpha_and_markdown_has_intervals():
    table = paper_summary(_summary(["0", "1", "all"]), alpha=0.1)
    assert len(table) == 6 and list(table.n_seeds.unique()) == [2]
    assert list(table.scenario) == ["fixed", "fixed", "updated", "updated", "updated@1", "updated@1"]  # multi_stage first
    assert list(table.method[:2]) == ["multi_stage", "random"]
    assert np.isnan(table.alpha[0]) and list(table.alpha[2:]) == [0.1, 0.1, 1.0, 1.0]
    md = markdown(table).splitlines()
    assert md[0].startswith("| scenario | α | method |") and len(md) == 2 + 6
    assert md[2] == ("| fixed | — | multi_stage | exact | 0.900 [0.850, 0.950] | 0.800 | 0.500 [0.400, 0.600] | 0.300 [0.100, 0.450] "
                     "| 1.50 | 12 | — | — | — |")
    assert md[-1].startswith("| updated | 1 | random | none |") and md[-1].endswith("| — | — | 12 | — | — | — |")  # no cold LDS, no accuracy


def test_the_group_method_gets_its_slope_and_baselines_none():
    summary = _summary(["all"])
    group = summary[summary.method == "multi_stage"].assign(method="multi_stage_group", slope=1.12)
    md = markdown(paper_summary(pd.concat([summary, group], ignore_index=True), alpha=0.1)).splitlines()
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line.split("|")[9].strip() for line in md[2:]}
    assert rows[("fixed", "—", "multi_stage_group")] == "1.12" and rows[("fixed", "—", "multi_stage")] == "1.50"
    assert rows[("fixed", "—", "random")] == "—"


def test_one_seed_run_keeps_its_rows():
    table = paper_summary(_summary(["3"]), alpha=0.1)
    assert len(table) == 6 and list(table.n_seeds.unique()) == [1]


def test_additivity_table_reports_relative_error_per_k_and_per_test_pearson():
    import re

    from msif.report.page import additivity_tables

    rows = []
    for t in (1, 2):
        for sel in ("top", "bottom", "random"):
            for k in (2, 10):
                pred = (1.0 if sel == "top" else -1.0) * k * t
                rows.append({"scenario": "fixed", "solver": "exact", "test_id": t, "selection": sel, "k": k, "predicted": pred,
                             "actual": pred * (1 + 0.1 * k) if sel != "random" else 0.3, "seed": 0})
    html = additivity_tables(pd.DataFrame(rows))
    cells = re.findall(r"<td>([^<]*)</td>", html)
    rel = [0.2 / 1.2, 1.0 / 2.0]  # |a − p| / |a| with a = p (1 + 0.1 k), k = 2 and 10
    assert [float(c) for c in cells[:2]] == [float(f"{r:.4g}") for r in rel]
    assert "<td class='l'>2</td>" in html  # two test examples summarised

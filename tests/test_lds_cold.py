"""Cold-start LDS (validation.lds.cold_seeds, rule lds_cold) beside the warm-start LDS.

- cold_actual averages the cold seeds per (subset, test example), leaving a diverged seed out; two seeds whose
  errors cancel give the exact effect back (LDS 1), where each seed alone does not.
- lds_cold_seed: one documented, deterministic seed per (run seed, subset, rep), the same in every scenario.
- On the tiny run (cold_seeds: 2): every subset was trained twice from the seeds the rule names, to the LDS
  tolerance; rerunning the step in-process reproduces the workflow's CSV bit for bit; the summary's ``lds_cold`` of
  every method is the LDS of its predictions against the seed-averaged cold effects (lds.csv ``actual_cold``),
  beside ``lds_warm`` from the warm retrains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import inprocess
from conftest import TINY
from msif.validation.compare import cold_actual
from msif.validation.metrics import lds, lds_cold_seed


def test_cold_actual_is_the_mean_over_seeds_that_converged():
    rng = np.random.default_rng(0)
    effect = rng.normal(size=(12, 3))  # (subsets, tests)
    err = rng.normal(size=effect.shape)
    rows = [pd.DataFrame({"subset_id": np.repeat(np.arange(12), 3), "test_index": np.tile(np.arange(3), 12), "rep": rep,
                          "actual": (effect + sign * err).reshape(-1)}) for rep, sign in ((0, 1.0), (1, -1.0))]
    cold = pd.concat(rows, ignore_index=True)
    np.testing.assert_allclose(cold_actual(cold), effect, rtol=0, atol=1e-15)
    assert lds(effect, cold_actual(cold))[0] == pytest.approx(1.0)
    assert lds(effect, effect + err)[0] < 0.9  # one seed alone: its error is in the ground truth
    cold.loc[(cold.rep == 1) & (cold.subset_id == 4), "actual"] = np.nan  # rep 1 of subset 4 diverged
    np.testing.assert_allclose(cold_actual(cold)[4], effect[4] + err[4], rtol=0, atol=1e-15)


def test_cold_seeds_are_deterministic_distinct_and_apart_from_the_noise_seeds():
    from msif.validation.noise import noise_seed

    seeds = {lds_cold_seed(0, j, rep) for j in range(50) for rep in range(3)}
    assert len(seeds) == 150 and lds_cold_seed(0, 7, 1) == lds_cold_seed(0, 7, 1) != lds_cold_seed(1, 7, 1)
    assert all(0 <= s < 2**31 for s in seeds) and not seeds & {noise_seed(0, k, s, 0) for k in ("warm", "seed") for s in ("fixed", "updated")}


def test_tiny_run_cold_lds_rows_summary_and_rerun(tiny_run, tmp_path):
    from msif.steps import validation as validation_steps

    cfg = inprocess.load_config(TINY)
    v = cfg["validation"]["lds"]
    assert v["cold_seeds"] == 2
    res = tiny_run / "results/tiny"
    run = res / "seed0/validation"
    subsets = run / "lds_subsets.json"
    rows = pd.read_csv(run / "fixed/lds_cold/batch0.csv")
    n_test = cfg["influence"]["n_test"]
    assert len(rows) == v["n_subsets"] * 2 * n_test and (rows.flag == "ok").all()
    assert (rows.pretrain_grad_norm <= v["grad_tol"]).all() and (rows.finetune_grad_norm <= v["grad_tol"]).all()
    assert all(r.init_seed == lds_cold_seed(0, r.subset_id, r.rep) for r in rows.itertuples())

    p = inprocess.paths(tiny_run, cfg)
    out = tmp_path / "batch0.csv"
    with inprocess.as_job("lds_cold"):
        validation_steps.lds_cold(cfg, "fixed", 0, str(p["data"]), str(p["pretrain"]), str(p["finetune"]("fixed")), str(subsets),
                                  str(out))
    again = pd.read_csv(out)
    assert (again.actual.to_numpy() == rows.actual.to_numpy()).all()  # bit for bit: the seeds do not depend on the job

    summary = pd.read_csv(run / "summary.csv")
    table = pd.read_csv(run / "lds.csv")
    assert summary.lds_cold.notna().all() and summary.lds_warm.notna().all()
    for scenario in cfg["scenarios"]:
        cold = cold_actual(pd.read_csv(run / f"{scenario}/lds_cold/batch0.csv"))
        for r in summary[summary.scenario == scenario].itertuples():
            d = table[(table.scenario == scenario) & (table.method == r.method) & (table.solver == r.solver)]
            pred = d.pivot(index="subset_id", columns="test_id", values="predicted").sort_index().to_numpy()
            np.testing.assert_array_equal(d.pivot(index="subset_id", columns="test_id", values="actual_cold").sort_index().to_numpy(), cold)
            assert r.lds_cold == pytest.approx(lds(pred, cold)[0], abs=1e-12), (scenario, r.method)
            assert r.lds_cold_lo <= r.lds_cold <= r.lds_cold_hi

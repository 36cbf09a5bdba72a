"""Retraining's two methods (``retraining.method``) on the tiny float64 problem: the same minimum, the same stopping rule.

- ``lbfgs`` (L-BFGS, then Newton polishing) now takes its gradients and Hessian-vector products by plain autograd;
  it lands where the ``torch.func`` implementation it replaces landed (an oracle kept here), to ~1e-12;
- ``newton`` (Newton–PCG from the warm start, spectral preconditioner, guard) lands where ``lbfgs`` does, to 1e-9 in
  the actual removal effects, with ``‖∇‖₂ ≤ grad_tol`` in both stages; where its guard trips, the result is exactly
  ``lbfgs``'s from the same start;
- neither imports ``torch._dynamo`` (the 2–4 s a process's first ``torch.func`` transform costs);
- the workflow steps record how each set was solved, and the noise floor of a scenario is one job whose rows do
  not depend on which job computes them.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch.func import grad

import inprocess
from msif import io
from msif.core.products import hvp
from msif.core.solvers import cg
from msif.steps import validation as validation_steps
from msif.steps.common import load_stages
from msif.task import training
from msif.task.objectives import PretrainObjective
from msif.task.training import (
    ANOTHER_MINIMUM,
    Minimum,
    NewtonPath,
    SpectralPreconditioner,
    guard_reason,
    lbfgs,
    minimize,
    minimize_from_warm_start,
    newton_minimize,
    value_grad_hvp,
)
from msif.validation import retraining
from msif.validation.retraining import Preconditioners, retrain_both_stages

TINY = inprocess.load_config(".test/config/config.yaml")
N = TINY["data"]["n_pretrain"]
SETS = [[0, 1], [3, 7, 11, 19, 25], list(range(0, N, 5)), list(range(1, N, 2))]  # k = 2, 5, 12, 30 of n = 60 (k = 15, every 4th, hands Newton over to L-BFGS in B: negative curvature)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Data, pretraining and both scenarios' finetuning of the tiny config, trained by the workflow's own steps."""
    return inprocess.run_training(TINY, tmp_path_factory.mktemp("methods"))


def stages(p, scenario):
    return load_stages(TINY, scenario, str(p["data"]), str(p["pretrain"]), str(p["finetune"](scenario)))


def reduced(pt: PretrainObjective, removed: list[int]) -> PretrainObjective:
    weights = torch.ones(pt.n, dtype=torch.float64)
    weights[removed] = 0.0
    return PretrainObjective(pt.model, pt.data, pt.l2, weights)


# ---------------------------------------------------------------------------------------------------------
# lbfgs: plain autograd lands where the torch.func implementation did


def torch_func_minimize(fun, x0: torch.Tensor, grad_tol: float, max_iter: int = 5000, newton_steps: int = 8) -> torch.Tensor:
    """The L-BFGS path as it was (msif 0.1 before this change): polishing and the final gradient by ``torch.func``."""
    x, _ = lbfgs(fun, x0, grad_tol / x0.numel() ** 0.5, max_iter)
    g_fun = grad(fun)
    g = g_fun(x)
    for _ in range(newton_steps):
        if g.norm() <= grad_tol:
            break
        sol = cg(hvp(fun, x), -g, tol=1e-12, max_iter=4 * x.numel())
        if sol.info["negative_curvature"]:
            break
        t = 1.0
        while t > 1e-4:
            x_new = x + t * sol.x
            g_new = g_fun(x_new)
            if g_new.norm() < g.norm():
                break
            t /= 2
        else:
            break
        x, g = x_new, g_new
    return x


@pytest.mark.parametrize("grad_tol", [1e-8, 1e-12])  # 1e-12: L-BFGS stalls above it, so polishing has work to do
def test_lbfgs_path_lands_where_the_torch_func_one_did(tiny, grad_tol):
    _, pt, ptp, _, _ = stages(tiny, "updated")
    for removed in SETS[1:3]:
        fun = reduced(pt, removed)
        old = torch_func_minimize(fun, ptp, grad_tol)
        new = minimize(fun, ptp, grad_tol=grad_tol)
        assert new.method == "lbfgs" and new.grad_norm <= 10 * grad_tol
        torch.testing.assert_close(new.params, old, rtol=0, atol=1e-10)


def test_value_grad_hvp_is_the_hessian(tiny):
    _, pt, ptp, _, _ = stages(tiny, "fixed")
    fun = reduced(pt, SETS[1])
    value, g, matvec = value_grad_hvp(fun, ptp)
    v = torch.randn(ptp.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(matvec(v), hvp(fun, ptp)(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, grad(fun)(ptp), rtol=1e-12, atol=1e-14)
    assert float(value) == pytest.approx(float(fun(ptp)), rel=1e-14)


# ---------------------------------------------------------------------------------------------------------
# newton: the same minimum as lbfgs, the same stopping rule


@pytest.mark.parametrize("scenario", ["fixed", "updated"])
def test_newton_retraining_lands_where_lbfgs_does_and_meets_the_stopping_rule(tiny, scenario):
    exp, pt, ptp, ft, ftp = stages(tiny, scenario)
    base, tol = retraining.test_losses(ft, ftp, exp.test), 1e-11  # both paths to 1e-11: their own errors ≪ the 1e-9 compared
    precond = Preconditioners.of(pt, ptp, ft, ftp)
    with inprocess.as_job("retrain"):
        for removed in SETS:
            old = retrain_both_stages(pt, ptp, ft, ftp, exp.test, removed, tol, 5000)
            new = retrain_both_stages(pt, ptp, ft, ftp, exp.test, removed, tol, 5000, precond=precond)
            assert old.pretrain["method"] == old.finetune["method"] == "lbfgs"
            assert new.pretrain["method"] == new.finetune["method"] == "newton", (new.pretrain["guard"], new.finetune["guard"])
            assert new.pretrain["grad_norm"] <= tol and new.finetune["grad_norm"] <= tol
            actual_old, actual_new = old.test_losses - base, new.test_losses - base
            assert actual_old.abs().max() > 1e-4  # the sets do move the test losses
            torch.testing.assert_close(actual_new, actual_old, rtol=0, atol=1e-9)


def test_newton_minimize_stops_only_below_grad_tol(tiny):
    _, pt, ptp, _, _ = stages(tiny, "fixed")
    fun = reduced(pt, SETS[2])
    precond = SpectralPreconditioner.of(pt, ptp)
    for tol in (1e-6, 1e-9, 1e-12):
        res, path = newton_minimize(fun, ptp, tol, precond)
        _, g, _ = value_grad_hvp(fun, res.params)
        assert float(g.norm()) <= tol and res.grad_norm == pytest.approx(float(g.norm()), rel=1e-12)
        assert res.newton_steps >= 1 and res.cg_iterations >= res.newton_steps
        assert path.first_step > 0 and path.displacement > 0


def test_spectral_preconditioner_is_the_inverse_when_lanczos_spans_the_space(tiny):
    _, _, _, ft, ftp = stages(tiny, "fixed")  # Θ: p_ft ≤ 200 Lanczos steps, so every eigenpair is kept
    m = SpectralPreconditioner.of(ft, ftp, iters=200)
    _, _, hv = value_grad_hvp(ft, ftp)
    b = torch.randn(ftp.numel(), dtype=ftp.dtype, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m(hv(b)), b, rtol=0, atol=1e-8 * float(b.norm()))


def test_newton_gives_up_on_a_non_finite_objective_and_on_an_unbounded_one():
    def fun(x):
        return (x**2).sum() + torch.log(1 - x[0])  # NaN for x₀ > 1

    res, path = newton_minimize(fun, torch.tensor([2.0, 1.0], dtype=torch.float64), 1e-10)
    assert res is None and path.stopped == "non-finite objective or gradient"
    res, path = newton_minimize(lambda x: -(x**2).sum(), torch.tensor([0.5, 1.0], dtype=torch.float64), 1e-10, max_steps=5)
    assert res is None and path.stopped == "no convergence in 5 Newton steps" and path.negative_curvature
    res, path = newton_minimize(lambda x: -(x**2).sum(), torch.tensor([0.5, 1.0], dtype=torch.float64), 1e-10, convex_only=True)
    assert res is None and path.stopped == "negative curvature at Newton step 0" and path.steps == 0


# ---------------------------------------------------------------------------------------------------------
# The guard


def test_guard_reasons():
    calm = NewtonPath(first_step=0.1, displacement=0.15, backtracked=False, negative_curvature=False)
    assert guard_reason(calm) == ""
    assert "landed 2.50x" in guard_reason(NewtonPath(0.1, 0.25, False, False))
    assert "negative curvature" in guard_reason(NewtonPath(0.1, 0.1, False, True))
    assert "shortened a step" in guard_reason(NewtonPath(0.1, 0.1, True, False))


def test_a_tripped_guard_returns_exactly_the_lbfgs_result_from_the_same_start(tiny):
    _, pt, ptp, _, _ = stages(tiny, "updated")
    fun, tol = reduced(pt, SETS[1]), TINY["retraining"]["grad_tol"]
    tripped = minimize_from_warm_start(fun, ptp, tol, 5000, precond=SpectralPreconditioner.of(pt, ptp), guard_ratio=0.0)
    plain = minimize(fun, ptp, grad_tol=tol, max_iter=5000)
    assert tripped.method == "lbfgs" and "first-order step" in tripped.guard
    assert torch.equal(tripped.params, plain.params)
    assert tripped.newton_gap < ANOTHER_MINIMUM  # both in one minimum: no flag


def test_a_failed_newton_solve_falls_back_to_lbfgs(tiny, monkeypatch):
    _, pt, ptp, _, _ = stages(tiny, "fixed")
    fun, tol = reduced(pt, SETS[1]), TINY["retraining"]["grad_tol"]
    monkeypatch.setattr(training, "newton_minimize", lambda *a, **k: (None, NewtonPath(stopped="newton failed")))
    res = minimize_from_warm_start(fun, ptp, tol, 5000)
    assert res.method == "lbfgs" and res.guard == "newton failed" and math.isnan(res.newton_gap)
    assert torch.equal(res.params, minimize(fun, ptp, grad_tol=tol, max_iter=5000).params)


def test_two_minima_are_flagged_on_the_row():
    from types import SimpleNamespace

    res = SimpleNamespace(pretrain={"newton_gap": 0.7, "grad_norm": 1e-9}, finetune={"newton_gap": 1e-6, "grad_norm": 1e-9})
    problems = validation_steps.landing_problems("t1-bottom-k40", res)
    assert len(problems) == 1 and "pretraining has two minima" in problems[0]


# ---------------------------------------------------------------------------------------------------------
# No torch._dynamo in a retraining process


DYNAMO_PROBE = """
import sys
import torch
torch.set_num_threads(1)
import inprocess
from msif.steps.common import load_stages
from msif.validation.retraining import Preconditioners, retrain_both_stages
config = inprocess.load_config(".test/config/config.yaml")
data, pretrain, finetune = sys.argv[1:4]
for scenario in ("fixed", "updated"):
    exp, pt, ptp, ft, ftp = load_stages(config, scenario, data, pretrain, finetune.format(scenario))
    retrain_both_stages(pt, ptp, ft, ftp, exp.test, [0, 1, 2], 1e-10, 5000)
    retrain_both_stages(pt, ptp, ft, ftp, exp.test, [0, 1, 2], 1e-10, 5000, precond=Preconditioners.of(pt, ptp, ft, ftp))
print("dynamo imported" if "torch._dynamo" in sys.modules else "no dynamo")
"""


def test_retraining_never_imports_dynamo(tiny):
    finetune = str(tiny["finetune"]("SCENARIO")).replace("SCENARIO", "{}")
    path = [str(inprocess.ROOT / "src"), str(inprocess.ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}  # this tree's msif, as pytest imports it
    proc = subprocess.run([sys.executable, "-c", DYNAMO_PROBE, str(tiny["data"]), str(tiny["pretrain"]), finetune],
                          capture_output=True, text=True, cwd=inprocess.ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "no dynamo"


# ---------------------------------------------------------------------------------------------------------
# The steps: method columns, one noise job per scenario


def write_sets(p, scenario: str, path) -> dict:
    sets = [{"set_id": f"t0-x-k{len(m)}", "test_index": 0, "selection": "random", "k": len(m), "members": m} for m in SETS[:2]]
    spec = {"sets": sets, "batches": [[0, 1]]}
    io.write_json(path, spec)
    return spec


@pytest.mark.parametrize("method", ["newton", "lbfgs"])
def test_retrain_rows_say_how_each_stage_was_solved(tiny, tmp_path, method):
    cfg = {**TINY, "retraining": {**TINY["retraining"], "method": method}}
    write_sets(tiny, "updated", tmp_path / "sets.json")
    out = tmp_path / "batch0.csv"
    with inprocess.as_job("retrain"):
        validation_steps.retrain(cfg, "updated", 0, str(tiny["data"]), str(tiny["pretrain"]), str(tiny["finetune"]("updated")),
                                 str(tmp_path / "sets.json"), str(out))
    rows = pd.read_csv(out)
    for stage in ("pretrain", "finetune"):
        assert (rows[f"{stage}_method"] == method).all()
        assert {f"{stage}_lbfgs_iterations", f"{stage}_newton_steps", f"{stage}_cg_iterations", f"{stage}_guard"} <= set(rows.columns)
        assert (rows[f"{stage}_grad_norm"] <= TINY["retraining"]["grad_tol"] * 100).all()
    assert (rows.flag == "ok").all() and list(rows.columns)[-1] == "flag"


def test_one_noise_job_per_scenario_gives_the_rows_of_one_job_per_rep(tiny, tmp_path):
    cfg = {**TINY, "validation": {**TINY["validation"], "noise_repeats": 2, "seed_noise_repeats": 1}}
    args = (str(tiny["data"]), str(tiny["pretrain"]), str(tiny["finetune"]("fixed")))
    with inprocess.as_job("noise_floor"):
        validation_steps.noise_floor(cfg, "fixed", *args, str(tmp_path / "all.csv"))
        one = [validation_steps.noise_floor(cfg, "fixed", *args, str(tmp_path / f"{k}{r}.csv"), reps=[(k, r)]) or
               pd.read_csv(tmp_path / f"{k}{r}.csv") for k, r in [("warm", 1), ("seed", 0)]]
    rows = pd.read_csv(tmp_path / "all.csv")
    assert list(zip(rows.kind, rows.rep, strict=True)) == [(k, r) for k, r in [("warm", 0), ("warm", 1), ("seed", 0)]
                                                          for _ in range(TINY["influence"]["n_test"])]
    for part in one:
        mine = rows[(rows.kind == part.kind[0]) & (rows.rep == part.rep[0])].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, part, check_exact=True)  # bit for bit: each rep has its own seed
    warm = rows[rows.kind == "warm"]
    assert (warm.pretrain_method == "newton").all() and warm.actual.abs().max() < 1e-8  # a warm restart lands back
    assert (rows.flag == "ok").all()


def test_minimum_summary_keys():
    m = Minimum(torch.zeros(2), 0.0, 0.0, 3, 1)
    assert set(validation_steps.SOLVE_COLUMNS) <= set(m.summary())

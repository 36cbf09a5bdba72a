"""The damped-Newton group estimator (msif.influence.group) against exact retraining of both stages (method.md, "Group removals")."""

from itertools import pairwise

import numpy as np
import pandas as pd
import pytest
import torch
from torch.func import hessian

import inprocess
from msif.influence.group import GroupEstimator
from msif.influence.multi_stage import multi_stage_influence
from msif.task.objectives import FinetuneObjective, PretrainObjective, finetune_losses
from oracles import finetuned, newton_minimize, tiny_problem

SCENARIOS = {"fixed": 0.0, "updated": 0.5}
SET = [0, 3, 7, 11]  # 4 of the 24 pretraining examples
EPSILONS = (0.01, 0.02, 0.04, 0.08)  # the set's weight removed: c_i = 1 − ε for i in SET


@pytest.fixture(scope="module")
def problem():
    """The tiny float64 problem, each scenario's finetuned optimum and its estimators (2 Newton steps, and 30)."""
    data, model, pt, pt_params, theta0 = tiny_problem()
    h_pt = hessian(pt)(pt_params)
    out = {}
    for scenario, alpha in SCENARIOS.items():
        ft, ft_params = finetuned(model, data, pt_params[: model.w_spec.numel], theta0, scenario, alpha)
        h_ft = hessian(ft)(ft_params)
        solves = (lambda b: torch.linalg.solve(h_pt, b)), (lambda b, h=h_ft: torch.linalg.solve(h, b))
        est = {k: GroupEstimator(pt, pt_params, ft, ft_params, data.finetune_test, *solves, steps=k) for k in (2, 30)}
        out[scenario] = (ft, ft_params, est)
    return data, model, pt, pt_params, out


def actual_effects(problem, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact retraining of both stages with pretraining weights c (dense Newton from the warm starts, to 1e-13), per
    scenario: Δ test losses against the trained optima."""
    data, model, pt, pt_params, fts = problem
    w_pt = newton_minimize(PretrainObjective(model, data.pretrain, pt.l2, weights), pt_params)[: model.w_spec.numel]
    out = {}
    for scenario, (ft, ft_params, _) in fts.items():
        obj = FinetuneObjective(model, data.finetune, ft.l2, w_pt, scenario, ft.alpha)
        start = ft_params if scenario == "fixed" else torch.cat([ft_params[: ft.p_theta], w_pt + ft_params[ft.p_theta :] - ft.w_pt])
        new, old = obj.split(newton_minimize(obj, start)), ft.split(ft_params)
        test = data.finetune_test
        out[scenario] = finetune_losses(model, new[1], new[0], test.x, test.y) - finetune_losses(model, old[1], old[0], test.x, test.y)
    return out


def log_log_slope(eps, err) -> float:
    return float(np.polyfit(np.log(eps), np.log(err), 1)[0])


def test_group_error_is_third_order_where_first_order_is_second(problem):
    """Remove weight ε of a 4-example set (c_i = 1 − ε), ε = 0.01 … 0.08, and retrain both stages exactly: first order's
    error of the Δ test loss shrinks as ε² (relative to the effect: ε), the 2-step estimator's at least as ε³ (relative:
    ε²), in both scenarios. Log-log slopes of the largest error over the 3 test examples; measured: first order 2.08
    (relative 0.95), group 3.29–3.30 (relative 2.20) in both scenarios; at ε = 0.01 the group error is 0.0015–0.0016 ×
    first order's."""
    data, _, pt, pt_params, fts = problem
    n = len(data.pretrain)
    errors = {s: {"first": [], "group": [], "rel_first": [], "rel_group": []} for s in fts}
    for eps in EPSILONS:
        weights = torch.ones(n, dtype=torch.float64)
        weights[SET] = 1 - eps
        actual = actual_effects(problem, weights)
        for scenario, (ft, ft_params, est) in fts.items():
            scores = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test).scores
            first = eps * scores[:, SET].sum(1)  # the first-order (additive) prediction at weight ε
            group = est[2].predict(weights[None])[0].delta
            for name, pred in (("first", first), ("group", group)):
                err = pred - actual[scenario]
                errors[scenario][name].append(float(err.abs().max()))
                errors[scenario]["rel_" + name].append(float((err / actual[scenario]).abs().max()))
    for scenario, e in errors.items():
        slopes = {k: log_log_slope(EPSILONS, v) for k, v in e.items()}
        assert 1.8 < slopes["first"] < 2.4 and 0.8 < slopes["rel_first"] < 1.4, (scenario, slopes, e)
        assert 2.8 < slopes["group"] < 3.6 and 1.8 < slopes["rel_group"] < 2.6, (scenario, slopes, e)
        assert e["group"][0] < 0.01 * e["first"][0], (scenario, e)


def test_more_newton_steps_converge_to_retraining(problem):
    """Removing one example outright (ε = 1): allowed 30 Newton steps per stage, the estimator stops once converged (the
    preconditioned gradient below 1e-12 of the first; measured after 7 pretraining steps) on the retrained optimum of both
    stages (Δ test loss to 1e-10; measured 1.2e-14, 1.4e-14), where 2 steps are off by more than 1e-6 (measured 8.5e-5,
    1.3e-4): the iteration's fixed point is retraining itself. ``remove(S)`` is ``predict`` with ``c_S = 0``."""
    data = problem[0]
    weights = torch.ones(len(data.pretrain), dtype=torch.float64)
    weights[0] = 0.0
    actual = actual_effects(problem, weights)
    for scenario, (_, _, est) in problem[4].items():
        pred = est[30].remove([[0]])[0]
        assert pred.descended and len(pred.pretrain_steps) < 30 and len(pred.finetune_steps) < 30, (scenario, pred)
        torch.testing.assert_close(pred.delta, actual[scenario], rtol=0, atol=1e-10)
        assert float((est[2].remove([[0]])[0].delta - actual[scenario]).abs().max()) > 1e-6
        torch.testing.assert_close(est[30].predict(weights[None])[0].delta, pred.delta, rtol=0, atol=0)


def test_the_line_search_keeps_every_step_a_descent(problem, monkeypatch):
    """Removing 3 of the 24 pretraining examples outright, where plain Newton from the trained point does not converge
    (the test oracle fails there): the pretraining stage's tilted objective Φ = L' − ∇L(x̂)ᵀx falls at every one of 8
    steps, and some steps are shortened (more loss evaluations than steps). With the line search off (every full step
    taken) Φ rises at some step (measured: at step 3)."""
    from torch.func import grad

    from msif.influence import group

    data, model, pt, pt_params, fts = problem
    solve = fts["fixed"][2][2].solve_pt
    weights = torch.ones(len(data.pretrain), dtype=torch.float64)
    weights[[0, 1, 2]] = 0.0
    reweighted = PretrainObjective(model, data.pretrain, pt.l2, weights)
    objective = lambda x, c: PretrainObjective(model, data.pretrain, pt.l2, c)(x)  # noqa: E731
    residual = grad(pt)(pt_params)

    def phis() -> tuple[list[float], group.NewtonPaths]:
        paths = [group.newton_pcg(objective, pt_params, weights[None], residual, solve, j, 3) for j in range(1, 9)]
        return [float(reweighted(p.x[0]) - residual @ p.x[0]) for p in paths], paths[-1]

    values, path = phis()
    assert all(b < a for a, b in pairwise(values)), values
    assert not path.failed[0] and path.losses[0] > len(path.norms[0]) + 1, path
    monkeypatch.setattr(group, "ARMIJO", -float("inf"))
    undamped, _ = phis()
    assert any(b > a for a, b in pairwise(undamped)), undamped


def test_a_newton_direction_of_nearly_flat_curvature_is_cut_back(monkeypatch):
    """Φ = ½ xᵀ diag(1, 1e-6) x from x = (1, 1e6) (gradient (1, 1)), the identity as preconditioner: the Newton step
    (1, 1e6) is 7e5 chord steps long, and it is what PCG's second iterate reaches without the cut. With it, PCG stops
    before an iterate longer than REACH = 10 chord steps, and the step taken is its first iterate (norm 2√2)."""
    from msif.influence import group

    a = torch.tensor([1.0, 1e-6], dtype=torch.float64)
    x0 = torch.tensor([1.0, 1e6], dtype=torch.float64)
    objective = lambda x, c: 0.5 * (a * x * x).sum()  # noqa: E731
    chord, zero = 2**0.5, torch.zeros(2, dtype=torch.float64)
    step = lambda: group.newton_pcg(objective, x0, zero[None], zero, lambda b: b, 1, 2).norms[0][0]  # noqa: E731
    assert step() <= group.REACH * chord, step()
    monkeypatch.setattr(group, "REACH", float("inf"))
    assert step() > 1e5 * chord, step()


def test_sets_in_one_batch_are_predicted_as_alone(problem):
    """The estimator runs its sets in lockstep (vmap), each with its own decisions — convergence, PCG stops, step
    lengths: five sets of different sizes in one batch give each set's prediction alone (to 1e-12) and its step count."""
    sets = [[0], [3], [0, 3, 7, 11], [1, 2, 5, 8, 13, 21], []]
    for _, _, est in problem[4].values():
        together = est[30].remove(sets)
        for members, pred in zip(sets, together, strict=True):
            alone = est[30].remove([members])[0]
            torch.testing.assert_close(pred.delta, alone.delta, rtol=0, atol=1e-12)
            assert len(pred.pretrain_steps) == len(alone.pretrain_steps) and pred.gradients == alone.gradients, members


def test_empty_set_predicts_zero(problem):
    """The trained point's residual gradient is subtracted: removing nothing predicts no change, to round-off (the
    batched gradient at the trained point differs from the residual's by round-off: steps below 1e-12)."""
    for _, _, est in problem[4].values():
        pred = est[2].remove([[]])[0]
        assert float(pred.delta.abs().max()) < 1e-14 and max(pred.pretrain_steps + pred.finetune_steps, default=0) < 1e-12


def test_group_needs_the_exact_reference_solver():
    """At scale (no dense factorisation) every chord step would be a full iterative solve per set: a config error."""
    from inprocess import load_config
    from msif.config import check_config
    from msif.errors import ConfigError

    cfg = load_config(".test/config/config.yaml")
    assert cfg["influence"]["group"] == {"enabled": True, "steps": 10, "cg_iters": 2, "tol": 0.01}
    check_config(cfg)
    cfg["validation"]["reference_solver"] = "cg"
    with pytest.raises(ConfigError, match=r"influence\.group\.enabled=true needs validation\.reference_solver 'exact', not 'cg'"):
        check_config(cfg)
    cfg["influence"]["group"]["enabled"] = False
    check_config(cfg)


@pytest.mark.workflow
def test_tiny_run_scores_the_group_method_beside_first_order(tiny_run):
    """The tiny workflow's own retraining (both scenarios, the sets first order chose): multi_stage_group has a row per
    set beside first order's; in both scenarios its Pearson and LDS are higher, its slope nearer 1 and its median
    |actual/predicted − 1| at the smallest k (2) smaller (measured A: Pearson 0.9998 vs 0.987, slope 1.01 vs 1.69, LDS
    1.00 vs 0.77, error 0.002 vs 0.60; B: 0.99999 vs 0.967, 1.007 vs 1.69, 1.00 vs 0.68, 0.014 vs 0.32). Cost per set
    ≤ 10× a first-order score's test column (measured 2.3×, 2.8×), at most 10 gradients per stage and set."""
    from msif import io

    res = tiny_run / "results/tiny"
    lko = pd.read_csv(res / "validation/leave_k_out.csv")
    lko = lko[lko.solver == "exact"]
    summary = pd.read_csv(res / "validation/summary.csv").set_index(["scenario", "method", "solver"])
    small = lambda rows: float((rows.actual / rows.predicted - 1).abs()[rows.k == rows.k.min()].median())  # noqa: E731
    for scenario in SCENARIOS:
        first, group = (lko[(lko.scenario == scenario) & (lko.method == m)] for m in ("multi_stage", "multi_stage_group"))
        assert len(group) == len(first) == 12
        assert (group[["test_id", "selection", "k", "actual"]].to_numpy() == first[["test_id", "selection", "k", "actual"]].to_numpy()).all()
        assert small(group) < small(first), (scenario, small(group), small(first))
        first_row, group_row = (summary.loc[(scenario, m, "exact")] for m in ("multi_stage", "multi_stage_group"))
        assert group_row.pearson > first_row.pearson and abs(group_row.slope - 1) < abs(first_row.slope - 1), (group_row, first_row)
        assert group_row.lds_warm > first_row.lds_warm, (group_row.lds_warm, first_row.lds_warm)
        meta = io.load_meta(res / f"seed0/influence/{scenario}/group.pt")
        assert meta["cost"]["ratio"] <= 10 and meta["cost"]["gradients_per_set"] <= 2 * 10, meta["cost"]
    page = (res / "report.html").read_text()
    assert "<i>multi_stage_group</i> is not a baseline" in page  # the report says what the extra row is
    assert "What multi_stage_group costs" in page and page.count("<td class='l'>fixed</td><td class='l'>0</td>") == 1  # its cost per set


@pytest.mark.workflow
def test_a_failed_line_search_falls_back_to_first_order(tiny_run, tmp_path, monkeypatch):
    """Rule group_predictions' step on the tiny run's trained stages, with the estimator made to report a failed line
    search wherever more than half of the pretraining set is removed: removing 2 of the 60 examples the Newton
    prediction is used; removing 58, the set (or LDS subset: 2 kept) is predicted by the summed first-order scores of
    the reference solver (method.md, Group removals), and the Newton prediction is kept beside it."""
    from msif import io
    from msif.steps import group as step

    class Failing(step.GroupEstimator):
        def _predict(self, weights):
            preds = super()._predict(weights)
            for pred, row in zip(preds, weights, strict=True):
                pred.descended = bool(row.sum() > len(row) / 2)
            return preds

    monkeypatch.setattr(step, "GroupEstimator", Failing)
    config, res = inprocess.load_config(".test/config/config.yaml"), tiny_run / "results/tiny/seed0"
    sets = [{"test_index": 0, "selection": "random", "k": len(m), "members": m} for m in ([0, 1], list(range(58)))]
    io.write_json(tmp_path / "sets.json", {"sets": sets})
    io.write_json(tmp_path / "subsets.json", {"subsets": [list(range(2, 60)), [58, 59]]})
    for scenario in SCENARIOS:
        scores_path = res / f"influence/{scenario}/exact/scores.pt"
        step.group_predictions(config, scenario, str(res / "data/splits.pt"), str(res / "train/pretrain.pt"),
                               str(res / f"train/finetune_{scenario}.pt"), str(res / "influence/pretrain_hessian.pt"),
                               str(tmp_path / "sets.json"), str(tmp_path / "subsets.json"), str(tmp_path / "group.pt"),
                               scores_path=str(scores_path))
        art, scores = io.load_tensors(tmp_path / "group.pt"), io.load_tensors(scores_path)["scores"]
        meta = io.load_meta(tmp_path / "group.pt")
        assert meta["fallback"] == "first_order" and meta["line_search_failed"] == {"sets": 1, "lds_subsets": 1}
        assert art["set_descended"].tolist() == [True, False] and art["lds_descended"].tolist() == [True, False]
        assert float(art["sets"][0]) == float(art["sets_newton"][0])  # the Newton prediction where it descended
        assert float(art["sets"][1]) == pytest.approx(float(scores[0, :58].sum()), rel=1e-12)  # first order where not
        assert float(art["sets"][1]) != pytest.approx(float(art["sets_newton"][1]), rel=1e-3)
        torch.testing.assert_close(art["lds"][0], art["lds_newton"][0], rtol=0, atol=0)
        torch.testing.assert_close(art["lds"][1], scores[:, :58].sum(1), rtol=1e-12, atol=1e-15)


def test_compare_scores_per_set_predictions_like_summed_scores():
    """compare_tables: a method given per set (PerSet, as multi_stage_group is) whose predictions equal the summed scores
    gets the very rows of the scores it equals — the same sets, actual effects, Pearson, slope and LDS."""
    from msif.validation import metrics
    from msif.validation.compare import PerSet, ScenarioInputs, compare_tables

    gen = torch.Generator().manual_seed(0)
    scores, test_ids = torch.randn(3, 20, generator=gen, dtype=torch.float64), torch.tensor([7, 8, 9])
    sets = metrics.removal_sets(scores, [2, 4], ["top", "bottom", "random"], seed=0)
    subsets = metrics.lds_subsets(20, 0.5, 10, seed=0)
    rng = np.random.default_rng(0)
    retrain = pd.DataFrame({"set_id": [s["set_id"] for s in sets], "actual": rng.normal(size=len(sets))})
    lds = pd.DataFrame([{"subset_id": j, "test_index": t, "actual": rng.normal()} for j in range(10) for t in range(3)])
    noise = pd.DataFrame({"kind": "warm", "actual": rng.normal(size=6)})
    per_set = PerSet(metrics.predicted_effects(scores, sets), metrics.lds_predictions(scores, subsets))
    inp = ScenarioInputs({("multi_stage", "exact"): (scores, test_ids)}, sets, retrain, noise, lds,
                         set_predictions={("multi_stage_group", "exact"): (per_set, test_ids)})
    lko, summary, lds_table = compare_tables({"fixed": inp}, subsets, n_boot=50, seed=0)
    first, group = (lko[lko.method == m].drop(columns="method").reset_index(drop=True) for m in ("multi_stage", "multi_stage_group"))
    pd.testing.assert_frame_equal(first, group)
    rows = summary.set_index("method")
    for col in ("pearson", "spearman", "slope", "lds_warm", "n_sets"):
        assert rows.loc["multi_stage", col] == rows.loc["multi_stage_group", col], col
    assert len(lds_table[lds_table.method == "multi_stage_group"]) == 30

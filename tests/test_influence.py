"""Multi-stage influence against finite-difference retraining of both stages (method.md)."""

import pytest
import torch

from msif.influence.multi_stage import multi_stage_influence
from oracles import finetuned, finite_difference_upweight_all, retrained_test_losses, tiny_problem


@pytest.fixture(scope="module")
def problem():
    return tiny_problem()


SCENARIOS = {"fixed": 0.0, "updated": 0.5}
FD_FLOOR = 1e-8  # |FD − I_up| floor of the oracle in I_up units at ε = 1e-6: measured ≤ 3.4e-9 (oracles.finite_difference_upweight_all)


@pytest.fixture(scope="module")
def finite_differences(problem):
    """Both scenarios' finetuned optimum and the central-difference I_up of every pretraining example, (n_test, n) each."""
    data, model, _, pt_params, theta0 = problem
    fts = {s: finetuned(model, data, pt_params[: model.w_spec.numel], theta0, s, a) for s, a in SCENARIOS.items()}
    return fts, finite_difference_upweight_all(model, data, pt_params, fts, eps=1e-6)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scores_match_finite_difference_retraining(problem, finite_differences, scenario):
    """Every pretraining example (24) × test example (3): −n · score = I_up = the central difference of both stages'
    retraining, to 1e-5 relative on each entry's own scale — the 5–6 significant digits of method.md. An entry whose
    |I_up| is under FD_FLOOR / 1e-5 = 1e-3 is checked absolutely (≤ FD_FLOOR); on this problem the smallest |I_up| is
    2.2e-3, so every entry is checked relatively (measured: ≤ 1e-7)."""
    data, _, pt, pt_params, _ = problem
    fts, fd = finite_differences
    ft, ft_params = fts[scenario]
    result = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test, solver="exact")
    n = len(data.pretrain)
    assert result.scores.shape == (len(data.finetune_test), n) == fd[scenario].shape
    predicted_upweight = -n * result.scores
    error = (predicted_upweight - fd[scenario]).abs()
    allowed = torch.clamp(1e-5 * predicted_upweight.abs(), min=FD_FLOOR)
    bad = torch.nonzero(error > allowed).tolist()
    assert not bad, [(t, i, float(predicted_upweight[t, i]), float(fd[scenario][t, i])) for t, i in bad]


def test_updated_tends_to_fixed_as_alpha_grows(problem):
    """Scenario B with α → ∞ pins W to W_pt: its scores tend to Scenario A's (method.md)."""
    data, model, pt, pt_params, theta0 = problem
    w_pt = pt_params[: model.w_spec.numel]
    ft_a, params_a = finetuned(model, data, w_pt, theta0, "fixed", 0.0)
    fixed = multi_stage_influence(pt, pt_params, ft_a, params_a, data.finetune_test).scores
    gaps = []
    for alpha in (1e1, 1e3, 1e5):
        ft_b, params_b = finetuned(model, data, w_pt, theta0, "updated", alpha)
        updated = multi_stage_influence(pt, pt_params, ft_b, params_b, data.finetune_test).scores
        gaps.append(float((updated - fixed).norm() / fixed.norm()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3, gaps


def test_removing_top_proponent_raises_test_loss():
    """The sign convention: the highest score is a proponent, and removing it raises the test loss.

    With n = 100 one removal is a small perturbation, so first order holds (with n = 24 an outlier's
    removal already leaves the linear regime).
    """
    data, model, pt, pt_params, theta0 = tiny_problem(seed=1, n=100)
    ft, ft_params = finetuned(model, data, pt_params[: model.w_spec.numel], theta0, "fixed", 0.0)
    scores = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test).scores
    base = retrained_test_losses(model, data, pt_params, ft_params, torch.ones(len(data.pretrain), dtype=torch.float64), "fixed", 0.0)
    for t in range(scores.shape[0]):
        for i, sign in ((int(scores[t].argmax()), 1), (int(scores[t].argmin()), -1)):
            weights = torch.ones(len(data.pretrain), dtype=torch.float64)
            weights[i] = 0.0
            actual = retrained_test_losses(model, data, pt_params, ft_params, weights, "fixed", 0.0)[t] - base[t]
            assert sign * actual > 0, (t, i, float(actual))
            assert 0.5 < float(actual / scores[t, i]) < 2.0

"""Multi-stage influence against finite-difference retraining of both stages (method.md)."""

import pytest
import torch

from msif.influence.multi_stage import multi_stage_influence
from oracles import finetuned, finite_difference_upweight, retrained_test_losses, tiny_problem


@pytest.fixture(scope="module")
def problem():
    return tiny_problem()


@pytest.mark.parametrize("scenario,alpha", [("fixed", 0.0), ("updated", 0.5)])
def test_scores_match_finite_difference_retraining(problem, scenario, alpha):
    data, model, pt, pt_params, theta0 = problem
    ft, ft_params = finetuned(model, data, pt_params[: model.w_spec.numel], theta0, scenario, alpha)
    result = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test, solver="exact")
    n = len(data.pretrain)
    assert result.scores.shape == (len(data.finetune_test), n)
    for i in (0, 5, 11):
        fd = finite_difference_upweight(model, data, pt_params, ft_params, i, scenario, alpha)
        predicted_upweight = -n * result.scores[:, i]
        rel = (predicted_upweight - fd).abs().max() / fd.abs().max()
        assert rel <= 1e-4, (i, predicted_upweight, fd)


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

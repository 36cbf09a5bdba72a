"""Baselines against dense, by-hand computations on the tiny float64 problem."""

import torch
from torch.func import grad, hessian

from msif.influence.baselines import baseline_scores
from msif.task.objectives import finetune_losses, pretrain_losses
from oracles import finetuned, tiny_problem


def test_baselines_match_dense_formulas():
    data, model, pt, pt_params, theta0 = tiny_problem()
    ft, ft_params = finetuned(model, data, pt_params[: model.w_spec.numel], theta0, "fixed", 0.0)
    test = data.finetune_test
    out = baseline_scores(pt, pt_params, ft, ft_params, test, "exact", 0.0, None, seed=0)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (len(test), pt.n) for k in ("single_stage", "grad_dot", "representation", "random")}
    p_w = model.w_spec.numel
    h = hessian(pt)(pt_params)
    for t in range(len(test)):
        g_w = grad(lambda w, t=t: finetune_losses(model, w, ft_params, test.x[t : t + 1], test.y[t : t + 1])[0])(pt_params[:p_w])
        g = torch.cat([g_w, torch.zeros(pt_params.numel() - p_w, dtype=g_w.dtype)])
        s = torch.linalg.solve(h, g)
        for i in (0, 7):
            gl = grad(lambda p, i=i: pretrain_losses(model, p[:p_w], p[p_w:], data.pretrain.x[i : i + 1], data.pretrain.y[i : i + 1])[0])(pt_params)
            torch.testing.assert_close(out["single_stage"][t, i], s @ gl / pt.n, rtol=1e-8, atol=1e-12)
            torch.testing.assert_close(out["grad_dot"][t, i], g @ gl / pt.n, rtol=1e-10, atol=1e-14)
    assert out["representation"].abs().max() <= 1 + 1e-12
    again = baseline_scores(pt, pt_params, ft, ft_params, test, "exact", 0.0, None, seed=0)
    assert torch.equal(again["random"], out["random"])

"""The reconstruction pretraining objective (pretrain.objective: reconstruct): U decodes the body's
features back to the inputs under the mean squared error. Every piece influence needs — the stage
decomposition, the GGN (output Hessian 2/d·I), EK-FAC, per-example gradient dot products and the
multi-stage scores — against the same dense and finite-difference oracles as the classifier's."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import hessian, jacrev

import inprocess
from msif.config import ConfigError, check_config
from msif.core.ekfac import EKFAC
from msif.core.products import dense_matrix
from msif.experiments.registry import Experiment
from msif.influence.multi_stage import multi_stage_influence
from msif.influence.scoring import upweight_influence, upweight_influence_jvp
from msif.task.models import mlp_model, squared_error
from msif.task.objectives import FinetuneObjective, PretrainObjective, finetune_losses, stage_of
from oracles import CPU, DT, dense_ggn, finetuned, newton_minimize, tiny_problem
from test_shards import looped_upweight
from test_solvers import check_ekfac_against_dense_ggn


@pytest.fixture(scope="module")
def tiny_config():
    return inprocess.load_config(".test/config/config.yaml")  # defaults filled in, as the workflow does


@pytest.fixture(scope="module")
def problem():
    return tiny_problem(objective="reconstruct")


def with_objective(config: dict, objective: str, **changes) -> dict:
    return {**config, **changes, "pretrain": {**config["pretrain"], "objective": objective}}


def test_the_head_decodes_the_inputs_and_the_loss_is_the_mean_squared_error(problem):
    data, model, pt, pt_params, _ = problem
    w, u = pt.split(pt_params)
    out = model.pt_logits(w, u, data.pretrain.x)
    assert out.shape == data.pretrain.x.shape
    by_hand = ((out - data.pretrain.x) ** 2).mean(1).mean() + 0.5 * pt.l2 * pt_params.pow(2).sum()
    torch.testing.assert_close(pt(pt_params), by_hand, rtol=1e-14, atol=1e-14)
    z = torch.randn(2, 5, dtype=DT)
    h = hessian(lambda z_: squared_error(z_, torch.zeros_like(z_)).sum())(z).reshape(10, 10)
    torch.testing.assert_close(h, torch.eye(10, dtype=DT) * 2 / 5)
    factors = stage_of(pt).output_hessian_factors(out[:3], data.pretrain.x[:3])  # what EK-FAC uses: L_i L_iᵀ = 2/d I
    torch.testing.assert_close(factors @ factors.transpose(1, 2), torch.eye(4, dtype=DT).expand(3, 4, 4) * 2 / 4)
    with pytest.raises(ValueError, match=r"pretrain.objective='denoise': allowed \['classify', 'reconstruct'\]"):
        mlp_model(4, [3], 2, 3, pretrain_objective="denoise")


def test_pretraining_accuracy_is_nan_for_a_reconstruction(problem):
    data, _, pt, pt_params, _ = problem
    assert math.isnan(pt.accuracy(pt_params, data.pretrain)) and math.isnan(pt.accuracy(pt_params, data.pretrain_test))
    classifier = mlp_model(4, [3], 2, 3)  # the classifier keeps its accuracy
    w, u, _ = classifier.init_params(0, DT, CPU)
    assert 0.0 <= PretrainObjective(classifier, data.pretrain, pt.l2).accuracy(torch.cat([w, u]), data.pretrain) <= 1.0


def test_stage_decomposition_hessian_and_ggn_equal_the_dense_oracles(problem):
    _, _, pt, x, _ = problem
    st = stage_of(pt)
    torch.testing.assert_close(st(x), pt(x), rtol=1e-14, atol=1e-14)
    p = x.numel()
    torch.testing.assert_close(dense_matrix(st.matvec(x, "hessian"), p, x), hessian(pt)(x), rtol=1e-10, atol=1e-12)
    g = dense_ggn(pt, x)
    torch.testing.assert_close(dense_matrix(st.matvec(x, "ggn"), p, x), g, rtol=1e-10, atol=1e-12)
    # the GGN of the squared error by hand: 2/(n d) Σ_i J_iᵀ J_i + λ I
    jac = jacrev(lambda q: pt.model.pt_logits(*pt.split(q), pt.data.x).reshape(-1))(x)
    torch.testing.assert_close(g, 2 / jac.shape[0] * jac.T @ jac + pt.l2 * torch.eye(p, dtype=DT), rtol=1e-10, atol=1e-12)


def test_ekfac_eigenvalues_are_the_dense_ggn_in_the_kronecker_basis(problem):
    _, _, pt, x, _ = problem
    fit = EKFAC.fit(stage_of(pt), x, batch_size=7)
    assert fit.info["layers"] == ["body.0", "pt_head"]
    check_ekfac_against_dense_ggn(pt, x, fit, lambda name: pt.l2)


def test_per_example_dot_products_equal_the_looped_oracle(problem):
    _, _, pt, x, _ = problem
    s = torch.randn(x.numel(), 17, dtype=DT, generator=torch.Generator().manual_seed(2))
    oracle = looped_upweight(pt, x, s)
    for method in ("layers", "vmap", "jvp", "auto"):
        torch.testing.assert_close(upweight_influence(pt, x, s, 7, method=method), oracle, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(upweight_influence_jvp(pt, x, s[:, :3], 7), oracle[:3], rtol=1e-12, atol=1e-14)


def test_scores_match_finite_difference_retraining(problem):
    """method.md's agreement (5-6 significant digits) with a reconstruction pretraining stage, both scenarios:
    z_i's weight raised by ±ε, both stages re-optimised by the dense Newton oracle from their optima."""
    data, model, pt, pt_params, theta0 = problem
    n, p_w, eps = len(data.pretrain), model.w_spec.numel, 1e-5
    assert torch.linalg.eigvalsh(hessian(pt)(pt_params))[0] > 0
    stages = {s: finetuned(model, data, pt_params[:p_w], theta0, s, a) for s, a in (("fixed", 0.0), ("updated", 0.5))}
    for i in (0, 11):
        losses = []
        for sign in (1, -1):
            c = torch.ones(n, dtype=DT)
            c[i] += sign * eps * n
            w_pt = newton_minimize(PretrainObjective(model, data.pretrain, pt.l2, c), pt_params)[:p_w]
            out = {}
            for s, (ft, ft_params) in stages.items():
                obj = FinetuneObjective(model, data.finetune, ft.l2, w_pt, ft.scenario, ft.alpha)
                start = ft_params if s == "fixed" else torch.cat([ft_params[: ft.p_theta], w_pt])
                theta, w = obj.split(newton_minimize(obj, start))
                out[s] = finetune_losses(model, w, theta, data.finetune_test.x, data.finetune_test.y)
            losses.append(out)
        for s, (ft, ft_params) in stages.items():
            fd = (losses[0][s] - losses[1][s]) / (2 * eps)
            scores = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test, solver="exact").scores
            rel = (-n * scores[:, i] - fd).abs().max() / fd.abs().max()
            assert rel <= 1e-4, (s, i, -n * scores[:, i], fd)


def test_experiment_builds_the_autoencoder_from_the_config(tiny_config):
    exp = Experiment.from_config(with_objective(tiny_config, "reconstruct"))
    assert exp.model.pt_head.out_features == exp.data.pretrain.x.shape[1] == 64
    w, u, _ = exp.init_params()
    assert exp.model.pt_logits(w, u, exp.data.pretrain.x[:3]).shape == (3, 64)
    assert math.isnan(PretrainObjective(exp.model, exp.data.pretrain, 0.05).accuracy(torch.cat([w, u]), exp.data.pretrain))
    classify = Experiment.from_config(with_objective(tiny_config, "classify"))
    assert classify.model.pt_head.out_features == 7  # the tiny config's seven pretraining classes
    no_block = {k: v for k, v in tiny_config.items() if k != "pretrain"}  # a plug-in's config may have no pretrain block
    assert Experiment.from_config(no_block, data=exp.data).model.pt_head.out_features == 7


def test_reconstruct_is_refused_where_the_experiment_has_its_own_objective(tiny_config):
    check_config(with_objective(tiny_config, "reconstruct"))
    for experiment in ("text", "fashion_mnist"):
        with pytest.raises(ConfigError, match=r"pretrain.objective='reconstruct': only the MLP experiments"):
            check_config(with_objective(tiny_config, "reconstruct", experiment=experiment))

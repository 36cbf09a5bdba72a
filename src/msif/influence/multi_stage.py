"""Multi-stage influence (Chen et al. 2020), stage-wise, as method.md computes it.

For test losses ``f_t`` of the finetuned model and pretraining examples ``z_i``:

    Scenario "fixed"   (W fixed while finetuning):
        v = H_ft⁻¹ ∇_Θ f                                   finetune_ihvp
        g = ∇_W f − ∇_W (∇_Θ L_ft(Θ; W) · v)               cross_stage_vector
    Scenario "updated" (W finetuned with α/2‖W − W_pt‖²):
        v = H̃_ft⁻¹ ∇_{Θ,W} f,   H̃_ft = ∇²_{Θ,W} L_ft + α diag(0, I)   finetune_ihvp
        g = α [v]_W                                        cross_stage_vector
    Both:
        s = H_pt⁻¹ [g; 0]                                  pretrain_ihvp
        I_up(z_i, x_t) = −sᵀ ∇l(z_i)                       upweight_influence
        score[t, i] = −I_up / n = sᵀ ∇l(z_i) / n           removal_effect

Right-hand sides are stacked: one column per test example, so every solve handles all tests at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.func import grad, vmap

from msif.arguments import SolveArguments, stage_solvers
from msif.core.products import check_finite
from msif.core.solvers import Eigh, Solve
from msif.influence.scoring import upweight_influence
from msif.influence.stage_solve import stage_solve
from msif.task.data import Split
from msif.task.objectives import FinetuneObjective, PretrainObjective, finetune_losses

log = logging.getLogger(__name__)


def test_loss_grads(ft: FinetuneObjective, params: torch.Tensor, test: Split) -> torch.Tensor:
    """``∇_x f_t`` for every test example, w.r.t. the finetuning variables ``x``; shape (p_ft, n_test)."""

    def one(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        theta, w = ft.split(p)
        return finetune_losses(ft.model, w, theta, x[None], y[None])[0]

    return vmap(grad(one), in_dims=(None, 0, 0), out_dims=1)(params, test.x, test.y)


def finetune_ihvp(ft: FinetuneObjective, params: torch.Tensor, test: Split, solver: str,
                  args: SolveArguments | None = None, eigh: Eigh | None = None) -> Solve:
    """``v = (H_ft + λI)⁻¹ ∇f`` (fixed: over Θ) or ``(H̃_ft + λI)⁻¹ ∇_{Θ,W} f`` (updated), all tests at once.

    ``solver``: a name of ``msif.arguments.SOLVERS`` or ``<finetune>+<pretrain>`` (this stage uses the
    first); ``args``: damping, curvature and solver options (:class:`msif.arguments.SolveArguments`); ``eigh``: a
    prebuilt dense factorisation for the exact solver.
    """
    rhs = test_loss_grads(ft, params, test)
    check_finite("test-loss gradients ∇f", rhs, labels=test.ids, label_name="test example ids")
    return stage_solve(ft, params, rhs, stage_solvers(solver)[0], args, eigh=eigh)


def cross_stage_vector(ft: FinetuneObjective, params: torch.Tensor, test: Split, v: torch.Tensor) -> torch.Tensor:
    """``g = d f / d W_pt`` for every test example, shape (p_W, n_test).

    fixed:   ``g = ∇_W f − ∇_W (∇_Θ L_ft(Θ; W) · v)`` (one mixed second derivative, double backprop);
    updated: ``g = α [v]_W``.
    """
    if ft.scenario == "updated":
        return ft.alpha * v[ft.p_theta :]
    theta, w = params, ft.w_pt

    def test_loss(w_: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return finetune_losses(ft.model, w_, theta, x[None], y[None])[0]

    direct = vmap(grad(test_loss), in_dims=(None, 0, 0), out_dims=1)(w, test.x, test.y)

    def mixed(w_: torch.Tensor, v_col: torch.Tensor) -> torch.Tensor:
        return grad(ft.loss, argnums=0)(theta, w_) @ v_col

    indirect = vmap(grad(mixed), in_dims=(None, 1), out_dims=1)(w, v)
    return direct - indirect


def pretrain_ihvp(pt: PretrainObjective, params: torch.Tensor, g: torch.Tensor, solver: str,
                  args: SolveArguments | None = None, eigh: Eigh | None = None) -> Solve:
    """``s = (H_pt + λI)⁻¹ [g; 0]``: the W-block right-hand side padded with zeros on the U block (solver as in finetune_ihvp, the second)."""
    rhs = torch.cat([g, torch.zeros(params.numel() - g.shape[0], g.shape[1], dtype=g.dtype, device=g.device)])
    return stage_solve(pt, params, rhs, stage_solvers(solver)[1], args, eigh=eigh)


def removal_effect(upweight: torch.Tensor, n: int) -> torch.Tensor:
    """The one conversion of the sign convention: removing z_i is ε = −1/n, so ``score = −I_up / n``."""
    return -upweight / n


@dataclass
class MultiStageResult:
    scores: torch.Tensor
    finetune: Solve
    pretrain: Solve
    cross_stage: torch.Tensor


def multi_stage_influence(pt: PretrainObjective, pt_params: torch.Tensor, ft: FinetuneObjective, ft_params: torch.Tensor,
                          test: Split, solver: str = "exact", args: SolveArguments | None = None,
                          batch_size: int = 256) -> MultiStageResult:
    """All stages in one call: scores (n_test, n_pretrain) in the removal-effect convention.

    ``args``: damping, curvature and solver options (default: no damping, the Hessian, each solver's defaults).
    """
    v = finetune_ihvp(ft, ft_params, test, solver, args)
    g = cross_stage_vector(ft, ft_params, test, v.x)
    s = pretrain_ihvp(pt, pt_params, g, solver, args)
    scores = removal_effect(upweight_influence(pt, pt_params, s.x, batch_size), pt.n)
    return MultiStageResult(scores, v, s, g)

"""Retraining both stages without a set of pretraining examples — the ground truth scores predict.

Protocol (method.md, "Validation"): warm start from the trained optimum, same seed and data order
(training is full batch and deterministic), pretraining objective with the removed examples' weights
set to 0 (the denominator stays n: exactly the ε = −1/n per example that a score predicts), L-BFGS
to ``grad_tol`` then Newton polishing; then finetune again from the finetuned optimum with the new
``W_pt``. The retrained test losses minus the original ones are the *actual* removal effects.

``retraining.method: newton`` solves each stage by Newton–PCG from the same warm start to the same
stopping rule (:func:`msif.task.training.minimize_from_warm_start`), preconditioned by the Ritz pairs of
each stage's Hessian at the trained optimum (:class:`Preconditioners`, built once per job), and hands a
stage back to the L-BFGS protocol wherever its guard trips.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msif.task.data import Split
from msif.task.objectives import FinetuneObjective, PretrainObjective, test_losses
from msif.task.training import SpectralPreconditioner, minimize, minimize_from_warm_start

METHODS = ("lbfgs", "newton")


@dataclass
class Retrained:
    test_losses: torch.Tensor
    pretrain: dict
    finetune: dict


@dataclass
class Preconditioners:
    """One :class:`SpectralPreconditioner` per stage, built once at the trained optima and shared by every set of a job."""

    pretrain: SpectralPreconditioner
    finetune: SpectralPreconditioner

    @classmethod
    def of(cls, pt: PretrainObjective, pt_params: torch.Tensor, ft: FinetuneObjective, ft_params: torch.Tensor,
           iters: int = 200) -> Preconditioners:
        """Lanczos (``iters`` Hessian-vector products) on ``∇²L_pt(θ_pt)`` and ``∇²L_ft(θ_ft; W_pt)``."""
        return cls(SpectralPreconditioner.of(pt, pt_params, iters), SpectralPreconditioner.of(ft, ft_params, iters))


def retrain_both_stages(pt: PretrainObjective, pt_params: torch.Tensor, ft: FinetuneObjective, ft_params: torch.Tensor,
                        test: Split, removed: list[int], grad_tol: float, max_iter: int, start_noise: float = 0.0,
                        generator: torch.Generator | None = None, newton_steps: int = 8,
                        precond: Preconditioners | None = None) -> Retrained:
    """Retrain pretraining without ``removed`` (row indices), then finetuning; return the new test losses.

    ``start_noise`` > 0 perturbs the warm starts by Gaussian noise of that scale (noise-floor runs);
    ``newton_steps``: Newton polishing steps after each L-BFGS (``training.newton_steps``); ``precond``:
    solve each stage by Newton–PCG from the warm start (``retraining.method: newton``), L-BFGS where it fails or
    its guard trips; without it, L-BFGS then Newton polishing. Both stop at ``‖∇‖₂ ≤ grad_tol``.
    """
    weights = torch.ones(pt.n, dtype=pt_params.dtype, device=pt_params.device)
    if removed:
        weights[torch.as_tensor(removed, device=weights.device)] = 0.0
    reduced = PretrainObjective(pt.model, pt.data, pt.l2, weights)

    def start(x: torch.Tensor) -> torch.Tensor:
        if not start_noise:
            return x
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + start_noise * noise

    def solve(fun, x0: torch.Tensor, m: SpectralPreconditioner | None):
        if precond is None:
            return minimize(fun, x0, grad_tol=grad_tol, max_iter=max_iter, newton_steps=newton_steps)
        return minimize_from_warm_start(fun, x0, grad_tol, max_iter, newton_steps, m)

    new_pt = solve(reduced, start(pt_params), precond and precond.pretrain)
    w_pt = new_pt.params[: pt.p_w]
    new_ft_obj = FinetuneObjective(ft.model, ft.data, ft.l2, w_pt, ft.scenario, ft.alpha)
    warm = ft_params
    if ft.scenario == "updated":  # keep the finetuned displacement W_ft − W_pt, re-anchored at the new W_pt
        warm = torch.cat([ft_params[: ft.p_theta], w_pt + (ft_params[ft.p_theta :] - ft.w_pt)])
    new_ft = solve(new_ft_obj, start(warm), precond and precond.finetune)
    return Retrained(test_losses(new_ft_obj, new_ft.params, test).detach(), new_pt.summary(), new_ft.summary())


def retrain_from_scratch(pt: PretrainObjective, ft: FinetuneObjective, init: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                         test: Split, grad_tol: float, max_iter: int, newton_steps: int = 8,
                         removed: list[int] | None = None) -> Retrained:
    """Train both stages from a fresh initialisation ``init = (w, u, θ)``, on the full data or without ``removed``.

    Full data: the cold-start noise floor (method.md, "Retraining noise floor ... under another seed"): the
    same objectives as the run, another seed's starting point, so the test losses show how far apart two
    equally valid trainings land — the spread a removal effect has to exceed to mean anything. With
    ``removed`` (row indices, weighted 0 with the denominator kept at n, as in :func:`retrain_both_stages`):
    one cold-start LDS retrain (validation.md, ``lds_cold``), ``min L_pt(w, u; 1_{i∉removed})`` from ``(w, u)``,
    then ``min L_ft(θ[, W]; W_pt)`` from ``θ``.
    """
    w, u, theta = init
    if removed:
        weights = torch.ones(pt.n, dtype=w.dtype, device=w.device)
        weights[torch.as_tensor(removed, device=weights.device)] = 0.0
        pt = PretrainObjective(pt.model, pt.data, pt.l2, weights)
    new_pt = minimize(pt, torch.cat([w, u]), grad_tol=grad_tol, max_iter=max_iter, newton_steps=newton_steps)
    w_pt = new_pt.params[: pt.p_w]
    new_ft_obj = FinetuneObjective(ft.model, ft.data, ft.l2, w_pt, ft.scenario, ft.alpha)
    new_ft = minimize(new_ft_obj, new_ft_obj.initial(theta), grad_tol=grad_tol, max_iter=max_iter, newton_steps=newton_steps)
    return Retrained(test_losses(new_ft_obj, new_ft.params, test).detach(), new_pt.summary(), new_ft.summary())

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

import math
from dataclasses import dataclass

import torch

from msif.task.data import Split
from msif.task.objectives import FinetuneObjective, PretrainObjective, test_losses
from msif.task.training import SpectralPreconditioner, minimize, minimize_from_warm_start
from msif.validation.basins import Basins, landing

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
                        precond: Preconditioners | None = None, basins: Basins | None = None,
                        continuation_steps: int = 0) -> Retrained:
    """Retrain pretraining without ``removed`` (row indices), then finetuning; return the new test losses.

    ``start_noise`` > 0 perturbs the warm starts by Gaussian noise of that scale (noise-floor runs);
    ``newton_steps``: Newton polishing steps after each L-BFGS (``training.newton_steps``); ``precond``:
    solve each stage by Newton–PCG from the warm start (``retraining.method: newton``), L-BFGS where it fails or
    its guard trips; without it, L-BFGS then Newton polishing. Both stop at ``‖∇‖₂ ≤ grad_tol``.

    ``continuation_steps`` N ≥ 2 (``retraining.continuation_steps``): the removed examples' weight goes 1 → 0 in N
    warm-started steps, ``c_j = 1 − j/N``; at each weight both stages are solved from the previous weight's optima
    (finetuning re-anchored at each new ``W_pt``), so retraining follows the branch of minima the derivative describes
    as far as it exists. Each stage's summary is its last solve's, with the iterations of all N summed. 0 or 1: one jump.

    ``basins``: record each stage's landing against its first-order step from the one-jump warm start
    (:func:`msif.validation.basins.landing`: ``displacement``, ``first_order``, ``basin_ratio`` in the summaries).
    """
    def start(x: torch.Tensor) -> torch.Tensor:
        if not start_noise:
            return x
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + start_noise * noise

    def solve(fun, x0: torch.Tensor, m: SpectralPreconditioner | None):
        if precond is None:
            return minimize(fun, x0, grad_tol=grad_tol, max_iter=max_iter, newton_steps=newton_steps)
        return minimize_from_warm_start(fun, x0, grad_tol, max_iter, newton_steps, m)

    def finetune_objective(w_pt: torch.Tensor) -> FinetuneObjective:
        return FinetuneObjective(ft.model, ft.data, ft.l2, w_pt, ft.scenario, ft.alpha)

    pt_warm, reduced = start(pt_params), _reweighted(pt, removed, 0.0, pt_params)
    if removed and continuation_steps >= 2:
        new_pt, new_ft, new_ft_obj, step_ratios = _continuation(pt, pt_warm, ft, start(ft_params), removed, continuation_steps,
                                                                solve, precond, finetune_objective, basins)
    else:
        step_ratios = {}
        new_pt = solve(reduced, pt_warm, precond and precond.pretrain)
        new_ft_obj = finetune_objective(new_pt.params[: pt.p_w])
        new_ft = solve(new_ft_obj, start(_reanchored(ft, ft_params, ft.w_pt, new_pt.params[: pt.p_w])), precond and precond.finetune)
    out = Retrained(test_losses(new_ft_obj, new_ft.params, test).detach(), new_pt.summary(), new_ft.summary())
    if basins is not None:  # the one-jump warm starts: where the first-order prediction starts from
        ft_warm = _reanchored(ft, ft_params, ft.w_pt, new_pt.params[: pt.p_w])
        out.pretrain.update(landing(basins.pretrain, reduced, pt_warm, new_pt.params))
        out.finetune.update(landing(basins.finetune, new_ft_obj, ft_warm, new_ft.params))
        for stage, info in (("pretrain", out.pretrain), ("finetune", out.finetune)):
            info["step_ratio"] = step_ratios.get(stage, math.nan)
    return out


def _reweighted(pt: PretrainObjective, removed: list[int], weight: float, like: torch.Tensor) -> PretrainObjective:
    """The pretraining objective with the ``removed`` rows weighted ``weight`` (the denominator stays n); weights of
    ``like``'s dtype and device."""
    weights = torch.ones(pt.n, dtype=like.dtype, device=like.device)
    if removed:
        weights[torch.as_tensor(removed, device=weights.device)] = weight
    return PretrainObjective(pt.model, pt.data, pt.l2, weights)


def _reanchored(ft: FinetuneObjective, x: torch.Tensor, w_old: torch.Tensor, w_pt: torch.Tensor) -> torch.Tensor:
    """Scenario B's warm start at a new ``W_pt``: keep the finetuned displacement ``W_ft − W_old``, re-anchored at
    ``w_pt``; scenario A's finetuning variables do not hold W."""
    if ft.scenario != "updated":
        return x
    return torch.cat([x[: ft.p_theta], w_pt + (x[ft.p_theta :] - w_old)])


def _continuation(pt, pt_start, ft, ft_start, removed, steps, solve, precond, finetune_objective, basins):
    """Both stages at the removed examples' weights ``c_j = 1 − j/N``, j = 1 … N, each from the last optima; with
    ``basins``, each stage's largest step ratio ``max_j ‖x_j − x_{j−1}‖ / ‖H₀⁻¹∇L_{c_j}(x_{j−1})‖`` (a fold: one
    step far beyond its first-order step)."""
    x_pt, x_ft, w_old = pt_start, ft_start, ft.w_pt
    infos, ratios = [], {"pretrain": [], "finetune": []}
    for j in range(1, steps + 1):
        fun = _reweighted(pt, removed, 1.0 - j / steps, x_pt)
        new_pt = solve(fun, x_pt, precond and precond.pretrain)
        w_pt = new_pt.params[: pt.p_w]
        new_ft_obj = finetune_objective(w_pt)
        warm = _reanchored(ft, x_ft, w_old, w_pt)
        new_ft = solve(new_ft_obj, warm, precond and precond.finetune)
        if basins is not None:
            ratios["pretrain"].append(landing(basins.pretrain, fun, x_pt, new_pt.params)["basin_ratio"])
            ratios["finetune"].append(landing(basins.finetune, new_ft_obj, warm, new_ft.params)["basin_ratio"])
        infos.append((new_pt, new_ft))
        x_pt, x_ft, w_old = new_pt.params, new_ft.params, w_pt
    for k, (pt_min, ft_min) in enumerate(infos[:-1]):
        for last, one in ((new_pt, pt_min), (new_ft, ft_min)):
            last.lbfgs_iterations += one.lbfgs_iterations
            last.newton_steps += one.newton_steps
            last.cg_iterations += one.cg_iterations
            if one.guard:
                last.guard = f"step {k + 1}/{steps}: {one.guard}" + (f"; {last.guard}" if last.guard else "")
    return new_pt, new_ft, new_ft_obj, {stage: max(r, default=math.nan) for stage, r in ratios.items()}


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

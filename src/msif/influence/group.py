"""Group removals beyond first order: chord-Newton steps through both stages (method.md, "Group removals").

For pretraining weights ``c`` (``c_i = 0`` for a removed ``z_i``, the denominator stays n), each stage's
reweighted optimum is approached from the trained optimum ``x̂`` by chord-Newton steps that reuse the
trained optimum's curvature ``C`` (already factorised for the first-order scores):

    x_0 = x̂,   x_{j+1} = x_j − (C + λI)⁻¹ (∇L'(x_j) − ∇L(x̂))                     j = 0 .. steps−1

(``L'`` the stage's new objective, ``∇L(x̂)`` the trained point's residual gradient, so the empty set
predicts 0); a step not shorter than the one before is rejected and the stage stops (:func:`chord_newton`).
Pretraining: ``L' = L_pt`` with weights ``c``; finetuning: ``L' = L_ft`` anchored at the predicted ``W_pt'``
(scenario A: ``W = W_pt'`` inside the loss; B: the proximal term re-anchored at ``W_pt'``). The predicted
removal effect is the test loss evaluated exactly at the predicted finetuned parameters:
``Δ̂f_t(S) = f_t(x_steps; W_pt') − f_t(x̂_ft; W_pt)``. One step carries first order's O(ε²) error; each
further step multiplies it by O(ε) (``‖C − ∇²L'‖ = O(ε)`` along the path, with C the exact Hessian and
λ = 0), so two steps leave O(ε³), and the iteration converges to retraining itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad

from msif.task.data import Split
from msif.task.objectives import FinetuneObjective, PretrainObjective, test_losses

Solver = Callable[[torch.Tensor], torch.Tensor]  # b ↦ (C + λI)⁻¹ b, one stage's factorised curvature


@dataclass
class Chord:
    """One stage's chord-Newton result: ``x``, the norms of the accepted steps, whether a step was rejected, and how many
    gradients (= solves) it took (a rejected step's included)."""

    x: torch.Tensor
    norms: list[float]
    rejected: bool
    evaluations: int


def chord_newton(objective: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, residual: torch.Tensor, solve: Solver,
                 steps: int) -> Chord:
    """``x_{j+1} = x_j − solve(∇objective(x_j) − residual)`` from ``x0``, at most ``steps`` times, safeguarded: a step not
    shorter than the one before (above round-off, 1e-10 of the first) is rejected and the iteration stops at ``x_j`` — it
    does not contract, so it is outside the chord's convergence region. Near ``x0`` (small ε) every step contracts by
    O(ε), so the safeguard never acts there and the error orders of method.md are unchanged."""
    x, norms = x0, []
    for j in range(steps):
        step = solve((grad(objective)(x) - residual)[:, None])[:, 0]
        norm = float(step.norm())
        if norms and norm >= norms[-1] and norm > 1e-10 * norms[0]:
            return Chord(x.detach(), norms, True, j + 1)
        x = x - step
        norms.append(norm)
    return Chord(x.detach(), norms, False, steps)


@dataclass
class GroupPrediction:
    """One set's prediction: ``delta`` (n_test,) = predicted Δ test loss; each stage's accepted step norms; ``gradients``
    full-batch gradients and ``solves`` curvature solves it took; ``contracting``: no stage rejected a step (a chord that
    does not contract is far from its fixed point, retraining: the removal left the chord's convergence region)."""

    delta: torch.Tensor
    pretrain_steps: list[float]
    finetune_steps: list[float]
    gradients: int
    solves: int
    seconds: float
    contracting: bool


class GroupEstimator:
    """The chord-Newton group estimator of one (pretraining, scenario): built once, then :meth:`predict` per set.

    ``solve_pt`` / ``solve_ft``: ``b ↦ (C + λI)⁻¹ b`` at the trained optima (pretraining over ``(W, U)``, finetuning
    over ``Θ`` or ``(Θ, W)``); ``steps``: chord steps per stage (2: second order; more converge to retraining).
    """

    def __init__(self, pt: PretrainObjective, pt_params: torch.Tensor, ft: FinetuneObjective, ft_params: torch.Tensor,
                 test: Split, solve_pt: Solver, solve_ft: Solver, steps: int = 2):
        if steps < 1:
            raise ValueError(f"steps={steps}: allowed >= 1 (2 gives second order)")
        self.pt, self.pt_params, self.ft, self.ft_params, self.test = pt, pt_params, ft, ft_params, test
        self.solve_pt, self.solve_ft, self.steps = solve_pt, solve_ft, steps
        self.pt_residual = grad(pt)(pt_params).detach()
        self.ft_residual = grad(ft)(ft_params).detach()
        self.base = test_losses(ft, ft_params, test).detach()

    def predict(self, weights: torch.Tensor) -> GroupPrediction:
        """Predicted Δ test losses when pretraining reweights its examples by ``weights`` (0 = removed, denominator n)."""
        t0 = time.perf_counter()
        pt, ft = self.pt, self.ft
        reweighted = PretrainObjective(pt.model, pt.data, pt.l2, weights.to(self.pt_params))
        a = chord_newton(reweighted, self.pt_params, self.pt_residual, self.solve_pt, self.steps)
        new_ft = FinetuneObjective(ft.model, ft.data, ft.l2, a.x[: pt.p_w], ft.scenario, ft.alpha)
        b = chord_newton(new_ft, self.ft_params, self.ft_residual, self.solve_ft, self.steps)
        with torch.no_grad():
            delta = test_losses(new_ft, b.x, self.test) - self.base
        n = a.evaluations + b.evaluations
        return GroupPrediction(delta, a.norms, b.norms, n, n, time.perf_counter() - t0, not (a.rejected or b.rejected))

    def remove(self, members: list[int]) -> GroupPrediction:
        """:meth:`predict` for removing the pretraining rows ``members`` (``c_i = 0``)."""
        weights = torch.ones(self.pt.n, dtype=self.pt_params.dtype, device=self.pt_params.device)
        if members:
            weights[torch.as_tensor(members, device=weights.device)] = 0.0
        return self.predict(weights)

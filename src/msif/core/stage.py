"""The curvature of each stage's objective as operators for the solvers in :mod:`msif.core.solvers`.

A :class:`Stage` writes an objective of :mod:`msif.task.objectives` (:func:`msif.task.objectives.stage_of`) as

    L(θ) = 1/N Σ_i c_i ℓ(z_i(θ), y_i) + r(θ),      z_i = the model's outputs (logits) on example i,

(``c_i = 1`` unless examples are reweighted; ``r`` the L2 / proximal term, a separable quadratic) and
the parameter blocks θ consists of (which module templates, at which offsets). From it come the
curvature ``matvec`` (``influence.curvature``: the true Hessian, or the generalised Gauss–Newton
``1/N Σ c_i J_iᵀ ∇²ℓ J_i + ∇²r``), mini-batch products for LiSSA, and the EK-FAC fit
(:mod:`msif.core.ekfac`); :func:`msif.influence.stage_solve.stage_solve` builds what a solver needs.

    pretraining            θ = (W, U):  N = n, r = λ_pt/2 ‖θ‖²
    finetuning, fixed      θ = Θ:       N = m, r = λ_ft/2 ‖Θ‖²              (W = W_pt, a constant)
    finetuning, updated    θ = (Θ, W):  N = m, r = λ_ft/2 ‖Θ‖² + α/2 ‖W − W_pt‖²
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vmap

from msif.arguments import CURVATURES
from msif.core.params import ParamSpec
from msif.core.products import Matvec, MinibatchSampler, ggn_matvec, hvp


@dataclass(frozen=True)
class Block:
    """One module template whose parameters sit at ``offset`` of the stage's flat vector."""

    name: str
    module: nn.Module
    spec: ParamSpec
    offset: int


@dataclass
class Stage:
    """``L(θ) = 1/N Σ_i c_i loss(outputs(θ, x)_i, y_i) + reg(θ)`` with its parameter blocks."""

    objective: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    weights: torch.Tensor | None
    denominator: int
    outputs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reg: Callable[[torch.Tensor], torch.Tensor]
    blocks: tuple[Block, ...]

    @property
    def n(self) -> int:
        return len(self.y)

    def example_weights(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``c_i / N`` for the examples ``idx`` (all by default): each example's weight in the mean."""
        n = self.n if idx is None else len(idx)
        c = torch.ones(n, dtype=self.x.dtype, device=self.x.device) if self.weights is None else (
            self.weights if idx is None else self.weights[idx])
        return c / self.denominator

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """``L(θ)`` recomputed from the decomposition (a test checks it equals the objective)."""
        return (self.example_weights() * self.loss(self.outputs(params, self.x), self.y)).sum() + self.reg(params)

    def _parts(self, idx: torch.Tensor | None):
        """(outputs as a function of θ, weighted loss as a function of the outputs) on ``idx`` (all by default).

        On a mini-batch of b examples the weights are ``c_i / b``: an unbiased estimate of the mean.
        """
        x, y = (self.x, self.y) if idx is None else (self.x[idx], self.y[idx])
        w = self.example_weights(idx) * (1.0 if idx is None else self.denominator / len(idx))
        return (lambda p: self.outputs(p, x)), (lambda z: (w * self.loss(z, y)).sum())

    def matvec(self, params: torch.Tensor, curvature: str = "hessian", idx: torch.Tensor | None = None) -> Matvec:
        """The curvature (``hessian`` or ``ggn``) of the objective, on all examples or on the mini-batch ``idx``."""
        if curvature not in CURVATURES:
            raise ValueError(f"influence.curvature={curvature!r}: allowed {list(CURVATURES)}")
        outputs, outer = self._parts(idx)
        if curvature == "hessian":
            fun = self.objective if idx is None else (lambda p: outer(outputs(p)) + self.reg(p))
            return hvp(fun, params)
        return ggn_matvec(outputs, outer, params, extra=self.reg)

    def sampler(self, params: torch.Tensor, curvature: str, batch_size: int) -> MinibatchSampler:
        """Curvature products on uniformly drawn mini-batches of ``batch_size`` examples (without replacement)."""
        b = min(batch_size, self.n)

        def draw(gen: torch.Generator) -> Matvec:
            idx = torch.randperm(self.n, generator=gen)[:b].to(self.x.device)
            return self.matvec(params, curvature, idx)

        return MinibatchSampler(draw, b / self.n)

    def reg_diagonal(self, params: torch.Tensor) -> torch.Tensor:
        """``diag ∇²r`` (r is a separable quadratic, so ``∇²r · 1`` is its diagonal)."""
        return hvp(self.reg, params)(torch.ones_like(params))

    def output_hessian_factors(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``L_i`` with ``L_i L_iᵀ = ∇²_z loss(z_i, y_i)`` for every example, shape (n, C, C).

        From the eigendecomposition of each output Hessian, negative eigenvalues clipped to 0 (a
        convex loss such as cross-entropy has none; then ``Σ_k L_ik L_ikᵀ`` is its exact Hessian).
        """

        def one(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self.loss(zi[None], yi[None])[0]

        h = vmap(torch.func.hessian(one))(z.detach(), y)
        e, v = torch.linalg.eigh(0.5 * (h + h.transpose(1, 2)))
        return v * e.clamp_min(0).sqrt()[:, None, :]



"""The curvature of each stage's objective as operators for the solvers in :mod:`msif.curvature`.

A :class:`Stage` writes an objective of :mod:`msif.objectives` as

    L(θ) = 1/N Σ_i c_i ℓ(z_i(θ), y_i) + r(θ),      z_i = the model's outputs (logits) on example i,

(``c_i = 1`` unless examples are reweighted; ``r`` the L2 / proximal term, a separable quadratic) and
the parameter blocks θ consists of (which module templates, at which offsets). From it come the
curvature ``matvec`` (``influence.curvature``: the true Hessian, or the generalised Gauss–Newton
``1/N Σ c_i J_iᵀ ∇²ℓ J_i + ∇²r``), mini-batch products for LiSSA, and the EK-FAC fit
(:mod:`msif.kfac`). :func:`stage_solve` is what ``finetune_ihvp`` and ``pretrain_ihvp`` call.

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

from msif.curvature import CURVATURES, Eigh, Matvec, MinibatchSampler, Solve, ggn_matvec, hvp, solve
from msif.models import ParamSpec
from msif.objectives import FinetuneObjective, PretrainObjective


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

    @classmethod
    def of(cls, objective) -> Stage:
        """The decomposition of a :class:`PretrainObjective` or :class:`FinetuneObjective`."""
        if isinstance(objective, PretrainObjective):
            model, pt = objective.model, objective
            return cls(pt, pt.data.x, pt.data.y, pt.weights, pt.n, lambda p, x: model.pt_logits(*pt.split(p), x), model.pt_loss,
                       lambda p: 0.5 * pt.l2 * p.pow(2).sum(),
                       (Block("body", model.body, model.w_spec, 0), Block("pt_head", model.pt_head, model.u_spec, pt.p_w)))
        if isinstance(objective, FinetuneObjective):
            model, ft = objective.model, objective

            def outputs(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
                theta, w = ft.split(p)
                return model.ft_logits(w, theta, x)

            def reg(p: torch.Tensor) -> torch.Tensor:
                theta, w = ft.split(p)
                out = 0.5 * ft.l2 * theta.pow(2).sum()
                return out + 0.5 * ft.alpha * (w - ft.w_pt).pow(2).sum() if ft.scenario == "updated" else out

            blocks = [Block("ft_head", model.ft_head, model.theta_spec, 0)]
            if ft.scenario == "updated":
                blocks.append(Block("body", model.body, model.w_spec, ft.p_theta))
            return cls(ft, ft.data.x, ft.data.y, None, len(ft.data), outputs, model.ft_loss, reg, tuple(blocks))
        raise TypeError(f"no curvature decomposition for {type(objective).__name__}: allowed PretrainObjective, FinetuneObjective")

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


def stage_solve(objective, params: torch.Tensor, rhs: torch.Tensor, solver: str, damping: float, options: dict | None = None,
                eigh: Eigh | None = None) -> Solve:
    """``(C + λI)⁻¹ rhs`` for one stage, C its curvature (``options['curvature']``: hessian | ggn).

    ``options`` is the ``influence`` config block: ``curvature`` and one block per solver
    (``cg``, ``lissa``, ``arnoldi``, ``ekfac``, ``pcg``; missing keys take the schema's defaults). Builds
    only what the solver needs: the curvature matvec (every solver, for the residual), mini-batch
    products (``lissa``), an EK-FAC fit (``ekfac``, and ``pcg``'s preconditioner; fitted on this stage's Linear/Conv2d layers).
    """
    from msif.curvature import EKFACOptions, LissaOptions, PCGOptions, options_of

    options = options or {}
    curvature = options.get("curvature", "hessian")
    stage = Stage.of(objective)
    matvec = stage.matvec(params, curvature)
    block = dict(options.get(solver) or {})
    sampler, ekfac = None, None
    if solver == "lissa":
        o = options_of(LissaOptions, block)
        sampler = stage.sampler(params, curvature, o.batch_size) if o.batch_size is not None else None
    if solver in ("ekfac", "pcg"):
        from msif.kfac import EKFAC

        o = options_of(EKFACOptions if solver == "ekfac" else PCGOptions, block)
        ekfac = EKFAC.fit(stage, params, batch_size=o.batch_size)
    out = solve(solver, matvec, rhs, damping, block, eigh=eigh, sampler=sampler, ekfac=ekfac,
                lanczos_iters=options.get("lanczos_iters"))  # influence.lanczos_iters: not a schema key; 0 skips (bench)
    out.info["curvature"] = curvature
    return out

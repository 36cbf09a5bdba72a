"""Did a retraining land where the influence function looks? The basin check of every leave-k-out retraining.

An influence function is the derivative of the optimum at the trained point: it describes the branch of minima
through θ₀. Per stage, it predicts the displacement of a removal by the first-order step from the warm start,

    d₀ = −H₀⁻¹ ∇L_S(θ_warm),

``H₀`` the stage's Hessian at its trained optimum (the Hessian the scores invert), ``L_S`` the stage's objective
without the removed examples (finetuning: with the retrained ``W_pt``) and ``θ_warm`` the warm start retraining
begins from. A retraining that stays on that branch lands ``‖θ_new − θ_warm‖ ≈ ‖d₀‖`` away (up to the second-order
terms, a few tens of percent for large k); one that jumps past a fold to another minimum lands several times farther
(method.md, "Folds in scenario B": ``‖ΔW_ft‖`` 0.15 → 0.95). The ratio

    basin_ratio = ‖θ_new − θ_warm‖ / ‖d₀‖

is recorded per stage, and a row whose ratio exceeds ``validation.basin_ratio`` in either stage is flagged
``other_basin``: kept, never dropped, and left out of ``pearson_same_basin`` only.

``d₀`` is one preconditioned CG solve per stage (:func:`msif.task.training.pcg` on Hessian-vector products at the
trained optimum, built once per job, preconditioned by the stage's :class:`SpectralPreconditioner`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from msif.task.training import SpectralPreconditioner, gradient, pcg, value_grad_hvp
from msif.validation.health import OK, flag

log = logging.getLogger("msif")

# validation.basin_ratio's default: a stage that lands this many times farther than its first-order step has left the
# branch of minima the derivative describes. Measured on the default config (docs/validation.md, "Basin check").
BASIN_RATIO = 3.0
STAGES = (("pretrain", "pretraining"), ("finetune", "finetuning"))


@dataclass
class StageCurvature:
    """``v ↦ H₀ v`` of one stage at its trained optimum, and the preconditioner of its PCG solves."""

    matvec: Callable[[torch.Tensor], torch.Tensor]
    precond: Callable[[torch.Tensor], torch.Tensor]
    p: int

    @classmethod
    def of(cls, fun: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, precond: SpectralPreconditioner | None = None,
           iters: int = 200) -> StageCurvature:
        """``∇²fun(x)`` (its graph built once) and ``precond`` (else the Ritz pairs of ``iters`` Lanczos steps)."""
        return cls(value_grad_hvp(fun, x)[2], precond or SpectralPreconditioner.of(fun, x, iters), x.numel())

    def first_order_step(self, fun: Callable[[torch.Tensor], torch.Tensor], x_warm: torch.Tensor, tol: float = 1e-6) -> float:
        """``‖H₀⁻¹ ∇fun(x_warm)‖`` by PCG to relative residual ``tol`` (at most ``min(10p, 1000)`` iterations; on the default
        config the spectral preconditioner gets there in ≤ 12); NaN where ``H₀`` met negative curvature (a saddle: no
        first-order prediction)."""
        g = gradient(fun, x_warm)
        if float(g.norm()) == 0.0:
            return 0.0
        d, _, negative = pcg(self.matvec, -g, self.precond, tol, min(10 * self.p, 1000))
        return math.nan if negative else float(d.norm())


@dataclass
class Basins:
    """The curvature of both stages at the trained optima: what :func:`landing` compares each retraining with."""

    pretrain: StageCurvature
    finetune: StageCurvature

    @classmethod
    def of(cls, pt, pt_params: torch.Tensor, ft, ft_params: torch.Tensor, pretrain_precond: SpectralPreconditioner | None = None,
           finetune_precond: SpectralPreconditioner | None = None) -> Basins:
        """Both stages' ``H₀`` (objectives ``pt`` at ``pt_params``, ``ft`` at ``ft_params``); the preconditioners of
        ``retraining.method: newton`` where given, else built here."""
        return cls(StageCurvature.of(pt, pt_params, pretrain_precond), StageCurvature.of(ft, ft_params, finetune_precond))


def landing(curvature: StageCurvature, fun: Callable[[torch.Tensor], torch.Tensor], x_warm: torch.Tensor,
            x_new: torch.Tensor) -> dict:
    """``displacement = ‖x_new − x_warm‖``, ``first_order = ‖H₀⁻¹ ∇fun(x_warm)‖`` and their ratio ``basin_ratio``
    (NaN where the first-order step is 0 or undefined)."""
    moved = float((x_new - x_warm).norm())
    first = curvature.first_order_step(fun, x_warm)
    ratio = moved / first if first > 0 else math.nan
    return {"displacement": moved, "first_order": first, "basin_ratio": ratio}


BASIN_COLUMNS = ("displacement", "first_order", "basin_ratio", "step_ratio")


def basin_columns(pretrain: dict, finetune: dict) -> dict:
    """``<stage>_<key>`` for the keys of :data:`BASIN_COLUMNS` (NaN where a stage was not checked)."""
    return {f"{stage}_{k}": info.get(k, math.nan) for stage, info in (("pretrain", pretrain), ("finetune", finetune))
            for k in BASIN_COLUMNS}


def basin_problems(name: str, pretrain: dict, finetune: dict, threshold: float) -> list[str]:
    """One problem per stage whose ``basin_ratio`` (one jump) or ``step_ratio`` (the largest of a continuation's steps)
    exceeds ``threshold`` (``validation.basin_ratio``)."""
    out = []
    for (_, stage), info in zip(STAGES, (pretrain, finetune), strict=True):
        ratio, step = info.get("basin_ratio", math.nan), info.get("step_ratio", math.nan)
        if ratio > threshold:
            out.append(f"retrain {name}: {stage} landed in another basin ({ratio:.1f} x the first-order displacement "
                       f"{info['first_order']:.2e}; validation.basin_ratio {threshold:g})")
        elif step > threshold:
            out.append(f"retrain {name}: {stage} landed in another basin (a continuation step moved {step:.1f} x its "
                       f"first-order step; validation.basin_ratio {threshold:g})")
    for p in out:
        log.warning("problem: %s", p)
    return out


def flag_basins(retrain, threshold: float):
    """The retrain table with ``other_basin`` (a stage's ``basin_ratio`` or ``step_ratio`` > ``threshold``) and the basin problems
    (:func:`basin_problems`) joined to its ``flag``; rows without the ratio columns (older tables) are not flagged."""
    out = retrain.reset_index(drop=True).copy()
    nan = math.nan
    problems = [basin_problems(r["set_id"], *({k: r.get(f"{stage}_{k}", nan) for k in ("basin_ratio", "first_order", "step_ratio")}
                                              for stage, _ in STAGES), threshold) for r in out.to_dict("records")]
    out["other_basin"] = [bool(p) for p in problems]
    old = out["flag"] if "flag" in out else [OK] * len(out)
    out["flag"] = [flag(([] if f == OK else [f]) + p) for f, p in zip(old, problems, strict=True)]
    return out

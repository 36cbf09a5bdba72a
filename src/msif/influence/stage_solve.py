"""One stage's inverse-curvature solve: build the curvature operator the solver needs and call it.

``finetune_ihvp`` and ``pretrain_ihvp`` (:mod:`msif.influence.multi_stage`) call :func:`stage_solve`.
"""

from __future__ import annotations

import torch

from msif.arguments import SolveArguments
from msif.core.ekfac import EKFAC
from msif.core.solvers import Eigh, Solve, solve
from msif.task.objectives import stage_of


def stage_solve(objective, params: torch.Tensor, rhs: torch.Tensor, solver: str, args: SolveArguments | None = None,
                eigh: Eigh | None = None) -> Solve:
    """``(C + λI)⁻¹ rhs`` for one stage, C its curvature (``args.curvature``: hessian | ggn), λ = ``args.damping``.

    Builds only what the solver needs: the curvature matvec (every solver, for the residual), mini-batch
    products (``lissa``), an EK-FAC fit (``ekfac``, and ``pcg``'s preconditioner; fitted on this stage's
    Linear/Conv2d layers).
    """
    args = args or SolveArguments()
    stage = stage_of(objective)
    matvec = stage.matvec(params, args.curvature)
    options = args.options(solver)
    sampler = ekfac = None
    if solver == "lissa" and options.batch_size is not None:
        sampler = stage.sampler(params, args.curvature, options.batch_size)
    if solver in ("ekfac", "pcg"):
        ekfac = EKFAC.fit(stage, params, batch_size=options.batch_size)
    out = solve(solver, matvec, rhs, args.damping, options, eigh=eigh, sampler=sampler, ekfac=ekfac, lanczos_iters=args.lanczos_iters)
    out.info["curvature"] = args.curvature
    return out

"""One stage's inverse-curvature solve: build the curvature operator the solver needs and call it.

``finetune_ihvp`` and ``pretrain_ihvp`` call :func:`stage_solve`.
"""

from __future__ import annotations

import torch

from msif.arguments import EKFACOptions, LissaOptions, PCGOptions, options_of
from msif.core.ekfac import EKFAC
from msif.core.solvers import Eigh, Solve, solve
from msif.task.objectives import stage_of


def stage_solve(objective, params: torch.Tensor, rhs: torch.Tensor, solver: str, damping: float, options: dict | None = None,
                eigh: Eigh | None = None) -> Solve:
    """``(C + λI)⁻¹ rhs`` for one stage, C its curvature (``options['curvature']``: hessian | ggn).

    ``options`` is the ``influence`` config block: ``curvature`` and one block per solver
    (``cg``, ``lissa``, ``arnoldi``, ``ekfac``, ``pcg``; missing keys take the schema's defaults). Builds
    only what the solver needs: the curvature matvec (every solver, for the residual), mini-batch
    products (``lissa``), an EK-FAC fit (``ekfac``, and ``pcg``'s preconditioner; fitted on this stage's Linear/Conv2d layers).
    """

    options = options or {}
    curvature = options.get("curvature", "hessian")
    stage = stage_of(objective)
    matvec = stage.matvec(params, curvature)
    block = dict(options.get(solver) or {})
    sampler, ekfac = None, None
    if solver == "lissa":
        o = options_of(LissaOptions, block)
        sampler = stage.sampler(params, curvature, o.batch_size) if o.batch_size is not None else None
    if solver in ("ekfac", "pcg"):

        o = options_of(EKFACOptions if solver == "ekfac" else PCGOptions, block)
        ekfac = EKFAC.fit(stage, params, batch_size=o.batch_size)
    out = solve(solver, matvec, rhs, damping, block, eigh=eigh, sampler=sampler, ekfac=ekfac,
                lanczos_iters=options.get("lanczos_iters"))  # influence.lanczos_iters: not a schema key; 0 skips (bench)
    out.info["curvature"] = curvature
    return out

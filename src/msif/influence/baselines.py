"""Baselines scored under the same validation as multi-stage influence: what does the multi-stage chain buy?

Each returns a (n_test, n_pretrain) matrix where larger means "more helpful" (a proponent), like a
removal-effect score; only the multi-stage and single-stage ones are in test-loss units.

- ``single_stage``: influence through the pretraining Hessian that ignores how finetuning responds to
  W — the finetuned head is treated as frozen: ``g = ∇_W f`` instead of the cross-stage vector, then
  ``score = [H_pt⁻¹ [g; 0]]ᵀ ∇l(z_i) / n``.
- ``grad_dot``: no Hessian at all: ``score = [g; 0]ᵀ ∇l(z_i) / n`` with ``g = ∇_W f``.
- ``representation``: cosine similarity of the pretrained body's features of x_t and z_i.
- ``random``: seeded Gaussian scores (the floor every method must beat).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from msif.arguments import SolveArguments
from msif.core.solvers import Eigh
from msif.influence.multi_stage import pretrain_ihvp, removal_effect
from msif.influence.scoring import upweight_influence
from msif.task.data import Split
from msif.task.objectives import FinetuneObjective, PretrainObjective, finetune_losses

METHODS = ("single_stage", "grad_dot", "representation", "random")


def direct_w_gradient(ft: FinetuneObjective, params: torch.Tensor, test: Split) -> torch.Tensor:
    """``∇_W f_t`` at the finetuned parameters, the head held fixed; shape (p_W, n_test)."""
    theta, w = ft.split(params)

    def loss(w_: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return finetune_losses(ft.model, w_, theta, x[None], y[None])[0]

    return vmap(grad(loss), in_dims=(None, 0, 0), out_dims=1)(w, test.x, test.y)


def _pad(g: torch.Tensor, p: int) -> torch.Tensor:
    return torch.cat([g, torch.zeros(p - g.shape[0], g.shape[1], dtype=g.dtype, device=g.device)])


def baseline_scores(pt: PretrainObjective, pt_params: torch.Tensor, ft: FinetuneObjective, ft_params: torch.Tensor, test: Split,
                    solver: str, args: SolveArguments, seed: int, batch_size: int = 256,
                    eigh: Eigh | None = None) -> dict[str, torch.Tensor]:
    """All baselines' score matrices, shape (n_test, n_pretrain) each; ``solver``/``args`` as for pretrain_ihvp."""
    g_w = direct_w_gradient(ft, ft_params, test)
    s = pretrain_ihvp(pt, pt_params, g_w, solver, args, eigh=eigh).x
    g = _pad(g_w, pt_params.numel())
    out = {
        "single_stage": removal_effect(upweight_influence(pt, pt_params, s, batch_size), pt.n),
        "grad_dot": removal_effect(upweight_influence(pt, pt_params, g, batch_size), pt.n),
    }
    w_pt = pt_params[: pt.p_w]
    feats_test = pt.model.representation(w_pt, test.x)
    feats_pt = pt.model.representation(w_pt, pt.data.x)
    out["representation"] = F.cosine_similarity(feats_test[:, None, :], feats_pt[None, :, :], dim=-1)
    gen = torch.Generator().manual_seed(seed)
    out["random"] = torch.randn(len(test), pt.n, generator=gen, dtype=pt_params.dtype).to(pt_params.device)
    return {k: v.detach() for k, v in out.items()}

"""The captum adapter of ``python -m msif.bench.peers``: NaiveInfluenceFunction, ArnoldiInfluenceFunction, TracInCP.

captum differentiates a *summed* loss: ``hessian_reg = n·δ`` (:func:`msif.bench.peers.align.peer_damping`),
and its scores come out ``summed`` (the 1/n is already in them).
"""

from __future__ import annotations

from pathlib import Path

import torch

from msif.bench.peers.align import PeerProblem, peer_damping
from msif.bench.peers.common import Settings, loader, require

METHODS = ("exact", "arnoldi", "tracin")
HOOK_BASED = ("tracin",)  # per-example gradients from module hooks (sample_wise_grads_per_batch): they cannot see W_ft


class _Loss(torch.nn.Module):
    """A loss module with the ``reduction`` attribute captum inspects."""

    def __init__(self, pb: PeerProblem, reduction: str):
        super().__init__()
        self.pb, self.reduction = pb, reduction

    def forward(self, out, y):
        return self.pb.loss(self.reduction)(out, y)


def _checkpoint(pb: PeerProblem, tmp: Path) -> str:
    path = str(tmp / f"{pb.name}.pt")
    torch.save(pb.model.state_dict(), path)
    return path


def _load(model, path):
    model.load_state_dict(torch.load(path, weights_only=True))
    return 1.0  # learning rate (TracInCP)


def run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    """(raw scores, scale, layout, damping passed, notes) of one method (:mod:`msif.bench.peers.align` reads them)."""
    ci = require("captum").influence
    n, p = pb.n, sum(q.numel() for q in pb.model.parameters())
    reg = peer_damping("captum", method, pb.delta, n)
    ckpt = _checkpoint(pb, tmp)
    train = loader(pb.x_train, pb.y_train, n)
    common = dict(checkpoint=ckpt, checkpoints_load_func=_load, loss_fn=_Loss(pb, "none"), batch_size=n)
    if method == "exact":
        inf = ci.NaiveInfluenceFunction(pb.model, train, projection_dim=p, hessian_reg=reg, hessian_inverse_tol=0.0, **common)
    elif method == "arnoldi":
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        inf = ArnoldiInfluenceFunction(pb.model, train, projection_dim=s.arnoldi_rank, arnoldi_dim=s.arnoldi_iters, hessian_reg=reg,
                                       hessian_inverse_tol=0.0, seed=s.seed, **common)
    elif method == "tracin":
        inf = ci.TracInCP(pb.model, train, checkpoints=[ckpt], checkpoints_load_func=_load, loss_fn=_Loss(pb, "sum"),
                          batch_size=n, sample_wise_grads_per_batch=True)
        raw = inf.influence((pb.x_query, pb.y_query))
        return raw, "grad_dot", "test_train", float("nan"), "one checkpoint (the trained point), lr 1"
    else:
        raise NotImplementedError
    raw = inf.influence((pb.x_query, pb.y_query))
    return raw, "summed", "test_train", reg, f"per-example losses summed, hessian_reg = n·δ = {reg:g}"

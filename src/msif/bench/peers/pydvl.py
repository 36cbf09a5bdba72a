"""The pyDVL adapter of ``python -m msif.bench.peers``: Direct, CG, LiSSA, Arnoldi and EK-FAC influence.

pyDVL returns (n_test, n_train) on the *mean* loss (``inner``), its ``regularization`` being δ itself.
"""

from __future__ import annotations

from pathlib import Path

from msif.bench.peers.align import PeerProblem, peer_damping
from msif.bench.peers.common import Settings, loader, require

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac")
HOOK_BASED = ("ekfac",)  # per-example gradients from module hooks: they cannot see W_ft


def _model(pb: PeerProblem, s: Settings, method: str, reg: float):
    """The unfitted pyDVL influence model of a method, the batch size it is fitted with, and its note."""
    from pydvl.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence, EkfacInfluence, LissaInfluence

    loss, note = pb.loss("mean"), f"mean loss, regularization δ = {reg:g}"
    if method == "exact":
        return DirectInfluence(pb.model, loss, regularization=reg), pb.n, note
    if method == "cg":
        return (CgInfluence(pb.model, loss, regularization=reg, rtol=s.cg_tol, atol=0.0, maxiter=s.cg_max_iter, warn_on_max_iteration=False,
                            solve_simultaneously=True), pb.n, note + ", block CG (solve_simultaneously)")
    if method == "lissa":
        return (LissaInfluence(pb.model, loss, regularization=reg, maxiter=s.lissa_depth, scale=s.lissa_scale, rtol=1e-12,
                               warn_on_max_iteration=False), s.lissa_batch, note + f", batches of {s.lissa_batch}")
    if method == "arnoldi":
        return ArnoldiInfluence(pb.model, loss, regularization=reg, rank=s.arnoldi_rank, krylov_dimension=s.arnoldi_iters), pb.n, note
    if method == "ekfac":
        if pb.model.theta is not None:
            raise NotImplementedError("pyDVL's EkfacInfluence fixes the loss to cross-entropy over the whole output: "
                                      "it cannot express the finetuned test loss")
        return (EkfacInfluence(pb.model, update_diagonal=True, hessian_regularization=reg), s.ekfac_batch,
                f"hessian_regularization δ = {reg:g}, update_diagonal")
    raise NotImplementedError


def run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    """(raw scores, scale, layout, damping passed, notes) of one method (:mod:`msif.bench.peers.align` reads them)."""
    require("pydvl")
    reg = peer_damping("pydvl", method, pb.delta, pb.n)
    model, batch, note = _model(pb, s, method, reg)
    model = model.fit(loader(pb.x_train, pb.y_train, batch))
    raw = model.influences(pb.x_query, pb.y_query, pb.x_train, pb.y_train)
    return raw, "inner", "test_train", reg, note

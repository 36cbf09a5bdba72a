"""The dattri adapter of ``python -m msif.bench.peers``: its influence-function attributors, TracIn and TRAK.

dattri returns (n_train, n_test) on the *mean* loss (``inner``); its LiSSA takes ``damping = δ / scaling``
(:func:`msif.bench.peers.align.peer_damping`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.func import functional_call

from msif.bench.peers.align import PeerProblem, peer_damping
from msif.bench.peers.common import Settings, loader, require, trak_dim

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin", "trak")
HOOK_BASED = ("ekfac",)  # per-example gradients from module hooks: they cannot see W_ft


def _task(pb: PeerProblem, method: str = "loss"):
    """dattri's AttributionTask on the problem's routed loss (TRAK: the margin), and the loss function itself."""
    from dattri.task import AttributionTask

    model, loss, sample_dim = pb.model, pb.loss("mean"), pb.x_train.dim() - 1

    def f(params, data):
        x, y = data
        x, y = x.to(pb.x_train.dtype), y.long()  # dattri's LiSSA hands batches over as float32
        if x.dim() == sample_dim:
            x, y = x[None], y[None]
        return loss(functional_call(model, params, (x,)), y)

    def margin(params, data):  # TRAK's output function: log p/(1−p) of the true class, routed like the loss
        x, y = data
        if x.dim() == sample_dim:
            x, y = x[None], y[None]
        return -f(params, (x, y)) - torch.log1p(-torch.exp(-f(params, (x, y))))

    def load(m, ckpt):  # the checkpoint holds (W, U) only; the buffers (Θ, W_ft − W_pt) stay as they are
        m.load_state_dict(ckpt, strict=False)
        return m

    params = {k: v for k, v in model.state_dict().items() if k in dict(model.named_parameters())}
    return AttributionTask(loss_func=margin if method == "trak" else f, model=model, checkpoints=params, checkpoints_load_func=load), f


def _influence_function(task, pb: PeerProblem, s: Settings, method: str, reg: float):
    """One of dattri's influence-function attributors, and its note."""
    from dattri.algorithm import influence_function as dif

    note = f"mean loss, δ = {pb.delta:g}"
    if method == "exact":
        return dif.IFAttributorExplicit(task, device="cpu", regularization=reg), note
    if method == "cg":
        iters = s.cg_iters.get(pb.name, s.cg_max_iter)
        return (dif.IFAttributorCG(task, device="cpu", regularization=reg, max_iter=iters, tol=s.cg_tol),
                note + f", max_iter {iters} = the iterations of msif's one-CG-per-column (dattri's CG has no stopping rule)")
    if method == "lissa":
        return (dif.IFAttributorLiSSA(task, device="cpu", batch_size=s.lissa_batch, recursion_depth=s.lissa_depth, damping=reg,
                                      scaling=s.lissa_scale), f"damping = δ/scaling = {reg:g}, one query per batch (memory)")
    if method == "arnoldi":
        return dif.IFAttributorArnoldi(task, device="cpu", proj_dim=s.arnoldi_rank, max_iter=s.arnoldi_iters, regularization=reg), note
    if method == "ekfac":
        return dif.IFAttributorEKFAC(task, device="cpu", damping=reg), note + ", empirical Fisher (the loss's own labels)"
    raise NotImplementedError


def _attribution_method(task, loss_f, pb: PeerProblem, s: Settings, method: str):
    """dattri's TracIn or TRAK attributor, and its note."""
    if method == "tracin":
        from dattri.algorithm.tracin import TracInAttributor

        att = TracInAttributor(task, weight_list=torch.ones(1, dtype=torch.float64), normalized_grad=False, device="cpu")
        return att, "one checkpoint (the trained point), lr 1"
    from dattri.algorithm.trak import TRAKAttributor

    def correct_probability(params, data):  # p of the true class: exp(−loss), routed like the loss
        return torch.exp(-loss_f(params, data))

    k = trak_dim(s, pb.n)
    att = TRAKAttributor(task, correct_probability, projector_kwargs={"proj_dim": k, "device": "cpu"}, device="cpu")
    return att, f"one checkpoint, proj_dim {k}, margin output"


def run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    """(raw scores, scale, layout, damping passed, notes) of one method (:mod:`msif.bench.peers.align` reads them)."""
    require("dattri")
    if method not in METHODS:
        raise NotImplementedError
    task, loss_f = _task(pb, method)
    if method in ("tracin", "trak"):
        att, note = _attribution_method(task, loss_f, pb, s, method)
        reg = float("nan")
    else:
        reg = peer_damping("dattri", method, pb.delta, pb.n, s.lissa_scale)
        att, note = _influence_function(task, pb, s, method, reg)
    # dattri vmaps LiSSA over a test batch, each query with its own sampled recursion (20 at once need > 20 GB): one query per batch
    train, query = loader(pb.x_train, pb.y_train, pb.n), loader(pb.x_query, pb.y_query, 1 if method == "lissa" else len(pb.y_query))
    return attribute(att, method, train, query), score_scale(method), "train_test", reg, note


def attribute(att, method: str, train, query):
    """dattri's raw (n_train, n_query) attribution of ``query`` against ``train``: TracIn attributes directly, TRAK
    caches the training set then attributes the queries alone, the influence functions cache then attribute both."""
    if method == "tracin":
        return att.attribute(train, query)
    att.cache(train)
    return att.attribute(query) if method == "trak" else att.attribute(train, query)


def score_scale(method: str) -> str:
    """How :func:`to_removal_effect` reads dattri's raw scores of ``method``."""
    return {"tracin": "grad_dot", "trak": "trak"}.get(method, "inner")

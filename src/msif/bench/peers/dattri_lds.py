"""dattri's attributors on the models of the LDS protocol (:mod:`msif.bench.lds_protocol`), aligned to msif's convention.

The models there are plain classifiers (logistic regression, dattri's MLP), not msif's two-stage model: a
:class:`msif.bench.peers.align.PeerProblem` holds one with ``c_pt`` = its number of classes, so the
routed loss is the plain cross-entropy, and the adapter of :mod:`msif.bench.peers.dattri` builds dattri's
task and attributors from it. Loaders as dattri's own MNIST benchmark (``experiments/benchmark_result.py``):
but every loader is one batch (the Hessian cached on the whole training set, all training and all test examples
scored at once): dattri recomputes the test side's inverse-Hessian transform for every training batch.
Every score comes back as method.md's removal effect, (n_test, n_train), 1/n included
(:func:`msif.bench.peers.align.to_removal_effect`): dattri's influence functions and TracIn give
``∇f_tᵀ (H_mean + δI)⁻¹ ∇l_i`` (TracIn: no inverse) → ``/ n``; TRAK its own units (ranks only).
"""

from __future__ import annotations

import torch
from torch import nn

from msif.bench.peers.align import PeerProblem, to_removal_effect
from msif.bench.peers.common import Settings, default_dtype, loader, require
from msif.bench.peers.dattri import _attribution_method, _influence_function, _task, attribute, score_scale

METHODS = ("exact", "cg", "ekfac", "tracin", "trak")


def run(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], method: str,
        delta: float, settings: Settings) -> tuple[torch.Tensor, str]:
    """dattri's ``method`` on ``model`` (eval mode): scores (n_test, n_train) as removal effects, and a note.

    ``delta``: the damping dattri adds to the Hessian of the mean loss (the model's L2 term plus msif's damping:
    :func:`msif.bench.peers.align.total_damping`); ``settings.cg_max_iter``: dattri's CG iterations (it has no
    stopping rule); ``settings.trak_proj_dim``: TRAK's projection (capped at n/2).
    """
    require("dattri")
    if method not in METHODS:
        raise NotImplementedError(f"dattri method {method!r}: allowed {list(METHODS)}")
    (x, y), (xq, yq) = train, test
    n_classes = int(model(x[:1]).shape[-1])
    pb = PeerProblem("lds", model.eval(), x, y, xq, yq, delta, n_classes)
    with default_dtype(x.dtype):
        task, loss_f = _task(pb, method)
        if method in ("tracin", "trak"):
            att, note = _attribution_method(task, loss_f, pb, settings, method)
        else:
            att, note = _influence_function(task, pb, settings, method, delta)
            if method == "cg":
                note = f"mean loss, δ = {delta:g}, max_iter {settings.cg_max_iter} (dattri's CG has no stopping rule)"
        raw = attribute(att, method, loader(x, y, len(y)), loader(xq, yq, len(yq)))
    return to_removal_effect(torch.as_tensor(raw), len(y), score_scale(method), "train_test"), note

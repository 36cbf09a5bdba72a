"""The TRAK adapter (the ``traker`` package, imported as ``trak``) of ``python -m msif.bench.peers``.

A random-projection, margin-output score in its own units (``trak``: compare ranks only), (n_train, n_test).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from msif.bench.peers.align import PeerProblem
from msif.bench.peers.common import Settings, require, trak_dim

METHODS = ("trak",)
HOOK_BASED = ()


def run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    """(raw scores, scale, layout, damping passed, notes) of one method (:mod:`msif.bench.peers.align` reads them)."""
    require("traker")
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    if method not in METHODS:
        raise NotImplementedError
    if pb.model.theta is not None:
        raise NotImplementedError("traker's image_classification task scores its own margin over the whole output: "
                                  "it cannot express the finetuned test loss")
    p, k = sum(q.numel() for q in pb.model.parameters()), trak_dim(s, pb.n)
    proj = BasicProjector(grad_dim=p, proj_dim=k, seed=s.seed, proj_type=ProjectionType.rademacher, device="cpu", dtype=torch.float64)
    proj.free_memory = lambda: None  # traker 0.3.2 frees BasicProjector's matrix after featurizing, then needs it to score
    tr = TRAKer(model=pb.model, task="image_classification", train_set_size=pb.n, save_dir=str(tmp / "trak"), device="cpu",
                proj_dim=k, use_half_precision=False, projector=proj, logging_level=logging.ERROR)
    sd = pb.model.state_dict()
    tr.load_checkpoint(sd, model_id=0)
    tr.featurize(batch=(pb.x_train, pb.y_train), num_samples=pb.n)
    tr.finalize_features()
    tr.start_scoring_checkpoint(exp_name="q", checkpoint=sd, model_id=0, num_targets=len(pb.y_query))
    tr.score(batch=(pb.x_query, pb.y_query), num_samples=len(pb.y_query))
    raw = torch.as_tensor(np.asarray(tr.finalize_scores(exp_name="q")))
    return raw, "trak", "train_test", float("nan"), f"one checkpoint, proj_dim {k}, margin output, BasicProjector (CPU)"

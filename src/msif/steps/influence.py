"""Steps of ``workflow/rules/influence.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import logging
import time

import torch

import msif
from msif import io
from msif.core.solvers import Eigh
from msif.influence import multi_stage
from msif.influence.multi_stage import cross_stage_vector, removal_effect
from msif.influence.scoring import merge_shards, shard_rows, upweight_influence
from msif.steps.common import (
    check_curvature,
    check_solve,
    experiment,
    finetune_args,
    load_stages,
    named,
    scores_args,
    solve_args,
    solve_arguments,
    train_args,
)
from msif.task.objectives import stage_of
from msif.validation import health

log = logging.getLogger("msif")



def finetune_ihvp(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, finetune_path: str, out: str) -> None:
    """Step 1 of method.md: ``v = (H_ft + λI)⁻¹ ∇f`` for all scored test examples."""
    exp, _, _, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    with named(f"finetune_ihvp[{scenario},{solver}]"):
        sol = multi_stage.finetune_ihvp(ft, ft_params, exp.test, solver, solve_arguments(config))
    problems = check_solve(f"finetune_ihvp[{scenario},{solver}]", sol, config)
    io.save_tensors(out, {"v": sol.x, "residual": sol.residual}, args=solve_args(config, scenario, solver),
                    solve=sol.summary(), problems=health.upstream(finetune_path) + problems)


def pretrain_hessian(config: dict, data_path: str, pretrain_path: str, out: str) -> None:
    """The dense pretraining Hessian's eigendecomposition (exact solver only; shared by both scenarios)."""
    exp = experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, train_args(config))["params"].to(exp.device)
    t0 = time.perf_counter()
    curvature = config["influence"].get("curvature", "hessian")  # the dense matrix of the configured curvature (hessian | ggn)
    eigh = Eigh.of(stage_of(exp.pretrain_objective()).matvec(pt_params, curvature), pt_params.numel(), pt_params)
    log.info("pretrain_hessian: p=%d, eigenvalues [%.3e, %.3e], %.1fs", pt_params.numel(), eigh.values[0], eigh.values[-1],
             time.perf_counter() - t0)
    check_curvature("pretrain_hessian", float(eigh.values[0]), config["influence"]["damping"])
    problems = health.curvature_problems("pretrain_hessian", float(eigh.values[0]), config["influence"]["damping"])
    io.save_tensors(out, {"values": eigh.values, "vectors": eigh.vectors}, args=train_args(config),
                    min_eigenvalue=float(eigh.values[0]), max_eigenvalue=float(eigh.values[-1]), curvature=curvature,
                    problems=health.upstream(pretrain_path) + problems)


def pretrain_ihvp(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, finetune_path: str,
                      finetune_ihvp_path: str, hessian_path: str | None, out: str) -> None:
    """Steps 2–3 of method.md: ``g`` = cross_stage_vector, then ``s = (H_pt + λI)⁻¹ [g; 0]``."""
    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    v = io.load_tensors(finetune_ihvp_path, solve_args(config, scenario, solver))["v"].to(exp.device)
    g = cross_stage_vector(ft, ft_params, exp.test, v)
    eigh = None
    if hessian_path:
        h = io.load_tensors(hessian_path, train_args(config), device=exp.device)
        eigh = Eigh(h["values"], h["vectors"])
    with named(f"pretrain_ihvp[{scenario},{solver}]"):
        sol = multi_stage.pretrain_ihvp(pt, pt_params, g, solver, solve_arguments(config), eigh=eigh)
    problems = check_solve(f"pretrain_ihvp[{scenario},{solver}]", sol, config)
    io.save_tensors(out, {"s": sol.x, "g": g, "residual": sol.residual}, args=solve_args(config, scenario, solver),
                    solve=sol.summary(), problems=health.upstream(finetune_ihvp_path, hessian_path) + problems)


def scores_shard(config: dict, scenario: str, solver: str, data_path: str, pretrain_path: str, pretrain_ihvp_path: str, out: str,
               shard: int | None = None) -> None:
    """Step 4: ``score[t, i] = sᵀ∇l(z_i) / n`` (removal effect), streamed over pretraining batches.

    With ``shard`` (0..influence.shards-1): only that shard's pretraining rows (:func:`msif.influence.scoring.shard_rows`),
    saved with their ``rows``; :func:`scores` joins the shards into the full matrix.
    """
    exp = experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, train_args(config))["params"].to(exp.device)
    s = io.load_tensors(pretrain_ihvp_path, {**finetune_args(config, scenario), "solver": solver})["s"].to(exp.device)
    pt = exp.pretrain_objective()
    batch_size = config["influence"]["batch_size"]
    rows = slice(0, pt.n) if shard is None else shard_rows(pt.n, batch_size, config["influence"].get("shards", 1), shard)
    name = f"scores[{scenario},{solver}]" + ("" if shard is None else f" shard {shard} (rows {rows.start}..{rows.stop})")
    t0 = time.perf_counter()
    scores = removal_effect(upweight_influence(pt, pt_params, s, batch_size, rows,
                                               query_rank=config["influence"].get("query_rank")), pt.n)
    pretrain_ids = exp.data.pretrain.ids[rows]
    bad = ~torch.isfinite(scores).all(dim=0)
    if bad.any():
        raise RuntimeError(f"{name}: non-finite values for pretraining example ids "
                           f"{pretrain_ids[bad.cpu()][:20].tolist()} ({int(bad.sum())} of {len(bad)})")
    log.info("%s: shape %s in %.2fs", name, tuple(scores.shape), time.perf_counter() - t0)
    extra = {} if shard is None else {"rows": torch.tensor([rows.start, rows.stop])}
    io.save_tensors(out, {"scores": scores, "test_ids": exp.test.ids, "pretrain_ids": pretrain_ids, **extra},
                    args=scores_args(config, scenario, solver), convention=msif.SCORE_CONVENTION,
                    problems=health.upstream(pretrain_ihvp_path))


def scores(config: dict, scenario: str, solver: str, shard_paths: list[str], out: str) -> None:
    """Join the shards of :func:`scores_shard` into the (n_test, n_pretrain) matrix, bitwise the unsharded one."""

    args = scores_args(config, scenario, solver)
    parts = [io.load_tensors(p, args) for p in shard_paths]
    test_ids = parts[0]["test_ids"]
    if any(not torch.equal(p["test_ids"], test_ids) for p in parts):
        raise ValueError(f"scores[{scenario},{solver}]: the shards were computed for different test examples")
    n = sum(p["scores"].shape[1] for p in parts)
    as_rows = lambda p: slice(int(p["rows"][0]), int(p["rows"][1]))  # noqa: E731
    scores = merge_shards([(as_rows(p), p["scores"]) for p in parts], n)
    pretrain_ids = merge_shards([(as_rows(p), p["pretrain_ids"][None]) for p in parts], n)[0]
    log.info("scores[%s,%s]: %d shards merged, shape %s", scenario, solver, len(parts), tuple(scores.shape))
    io.save_tensors(out, {"scores": scores, "test_ids": test_ids, "pretrain_ids": pretrain_ids}, args=args,
                    convention=msif.SCORE_CONVENTION, problems=health.upstream(*shard_paths))

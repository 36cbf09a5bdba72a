"""Steps of ``workflow/rules/group.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import logging
import time

import torch

from msif import io
from msif.core.solvers import Eigh
from msif.influence import multi_stage
from msif.influence.group import GroupEstimator
from msif.influence.scoring import upweight_influence
from msif.steps.common import finetune_args, load_stages, solve_arguments, train_args
from msif.task.objectives import stage_of
from msif.validation import health, metrics

log = logging.getLogger("msif")


def group_args(config: dict, scenario: str) -> dict:
    """What the group predictions depend on: the finetuned optimum's arguments, the solve settings and ``influence.group``."""
    inf = config["influence"]
    return {**finetune_args(config, scenario), "influence": {k: inf[k] for k in ("n_test", "damping", "curvature", "group")}}


def first_order_seconds(pt, pt_params, ft, ft_params, test, pt_eigh: Eigh, ft_eigh: Eigh, args, batch_size: int) -> float:
    """Wall time of the first-order scores of every test example with the same factorisations (method.md steps 1–4),
    the second of two runs (the first pays one-time costs: the transforms' tracing, allocations)."""
    for _ in range(2):
        t0 = time.perf_counter()
        v = multi_stage.finetune_ihvp(ft, ft_params, test, "exact", args, eigh=ft_eigh)
        g = multi_stage.cross_stage_vector(ft, ft_params, test, v.x)
        s = multi_stage.pretrain_ihvp(pt, pt_params, g, "exact", args, eigh=pt_eigh)
        upweight_influence(pt, pt_params, s.x, batch_size)
    return time.perf_counter() - t0


def group_predictions(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str, hessian_path: str,
                      sets_path: str, lds_subsets_path: str | None, out: str, scores_path: str | None = None) -> None:
    """``multi_stage_group``'s predicted Δ test loss for every removal set (its own test example) and every LDS subset (every
    test example): :class:`msif.influence.group.GroupEstimator` with the pretraining eigendecomposition (rule
    ``pretrain_hessian``) and the finetuning stage's, built here once, as the Newton steps' preconditioners. The sidecar
    records the cost per set beside a first-order score's (``cost``) and how many sets had a line search fail
    (``line_search_failed``).

    With ``scores_path`` (the reference solver's first-order scores), a set or subset whose line search failed falls back
    to first order, ``Σ_{i∈S} score[t, i]`` (method.md, Group removals): a stage stopped short of its optimum is no
    estimate of retraining. ``sets``/``lds`` hold the predictions used, ``sets_newton``/``lds_newton`` the Newton steps' own."""
    exp, pt, pt_params, ft, ft_params = load_stages(config, scenario, data_path, pretrain_path, finetune_path)
    inf = config["influence"]
    args, group = solve_arguments(config), inf["group"]
    steps, cg_iters = group["steps"], group["cg_iters"]
    h = io.load_tensors(hessian_path, train_args(config), device=exp.device)
    pt_eigh = Eigh(h["values"], h["vectors"])
    t0 = time.perf_counter()
    ft_eigh = Eigh.of(stage_of(ft).matvec(ft_params, args.curvature), ft_params.numel(), ft_params)
    ft_factor_seconds = time.perf_counter() - t0
    first = first_order_seconds(pt, pt_params, ft, ft_params, exp.test, pt_eigh, ft_eigh, args, inf["batch_size"])
    est = GroupEstimator(pt, pt_params, ft, ft_params, exp.test, pt_eigh.preconditioner(args.damping),
                         ft_eigh.preconditioner(args.damping), steps=steps, cg_iters=cg_iters, tol=group["tol"])
    sets = io.read_json(sets_path)["sets"]
    preds = est.remove([s["members"] for s in sets])
    set_pred = torch.tensor([float(p.delta[s["test_index"]]) for p, s in zip(preds, sets, strict=True)], dtype=torch.float64)
    subsets = io.read_json(lds_subsets_path)["subsets"] if lds_subsets_path else []
    lds_preds = est.remove([sorted(set(range(pt.n)) - set(kept)) for kept in subsets])
    lds_pred = torch.stack([p.delta for p in lds_preds]) if lds_preds else torch.zeros(0, len(exp.test), dtype=torch.float64)
    set_descended = torch.tensor([p.descended for p in preds], dtype=torch.bool)
    lds_descended = torch.tensor([p.descended for p in lds_preds], dtype=torch.bool)
    set_newton, lds_newton = set_pred.clone(), lds_pred.clone()
    if scores_path:  # first order where a line search failed: the very predictions compare gives multi_stage
        scores = io.load_tensors(scores_path, finetune_args(config, scenario))["scores"]
        first_sets = torch.as_tensor(metrics.predicted_effects(scores, sets), dtype=set_pred.dtype)
        set_pred = torch.where(set_descended, set_pred, first_sets)
        if lds_preds:
            first_lds = torch.as_tensor(metrics.lds_predictions(scores, subsets), dtype=lds_pred.dtype)
            lds_pred = torch.where(lds_descended[:, None], lds_pred, first_lds)
    n_sets = max(len(preds), 1)
    per_set = sum(p.seconds for p in preds) / n_sets
    cost = {"seconds_per_set": per_set, "first_order_seconds_per_test": first / len(exp.test),
            "ratio": per_set / (first / len(exp.test)), "finetune_factor_seconds": ft_factor_seconds, "steps": steps,
            "cg_iters": cg_iters, "tol": group["tol"],
            "newton_steps_per_set": sum(len(p.pretrain_steps) + len(p.finetune_steps) for p in preds) / n_sets}
    for what in ("gradients", "hvps", "solves"):
        cost[f"{what}_per_set"] = sum(getattr(p, what) for p in preds) / n_sets
    failed = {"sets": sum(not p.descended for p in preds), "lds_subsets": sum(not p.descended for p in lds_preds)}
    log.info("group_predictions[%s]: %d sets, %d LDS subsets, at most %d Newton steps (%d PCG iterations) per stage; %.2e s per set "
             "against %.2e s per first-order test column (x%.2g); line searches failed: %s", scenario, len(sets),
             len(lds_preds), steps, cg_iters, per_set, cost["first_order_seconds_per_test"], cost["ratio"], failed)
    if failed["sets"] or failed["lds_subsets"]:
        log.warning("group_predictions[%s]: a line search found no decrease for %s: those stages stopped short of their "
                    "optimum; %s", scenario, failed,
                    "they fall back to first order" if scores_path else "their predictions stop at the last accepted step")
    io.save_tensors(out, {"sets": set_pred, "lds": lds_pred, "test_ids": exp.test.ids, "set_descended": set_descended,
                          "lds_descended": lds_descended, "sets_newton": set_newton, "lds_newton": lds_newton},
                    args=group_args(config, scenario), cost=cost, line_search_failed=failed,
                    fallback="first_order" if scores_path else "none",
                    convention="removal effect: predicted f_t(without S) - f_t(all), per set (its test) and per LDS subset (every test)",
                    problems=health.upstream(finetune_path, hessian_path))

"""Numerical problems, never silent: logged, recorded in every sidecar downstream, flagged on table rows.

A *problem* is one sentence naming the step and what went wrong: a stage whose training stopped
above its gradient tolerance, a trained point that is a saddle, a solve whose residual exceeds
``influence.max_residual`` or that did not converge or met negative curvature, a retrained removal
set that diverged. Each step writes its inputs' problems plus its own under ``problems`` in its
sidecar, so the scores' sidecar lists everything upstream of them. The validation tables carry a
``flag`` column — ``ok``, or the problems joined by ``"; "`` — and the report lists flagged rows.
Rows are never dropped: a diverged retraining keeps its row with ``actual`` = NaN.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from msif import io

log = logging.getLogger("msif")

OK = "ok"
# A trained point whose smallest curvature estimate is below -SADDLE_TOL · max(1, |largest|) is a saddle.
SADDLE_TOL = 1e-8
# Training counts as converged up to this factor above its grad_tol (msif.task.training.minimize warns beyond it).
GRAD_SLACK = 100.0


def flag(problems: list[str]) -> str:
    """``ok`` or the problems, joined: the value of a table row's ``flag`` column."""
    return "; ".join(problems) if problems else OK


def _report(problems: list[str]) -> list[str]:
    for p in problems:
        log.warning("problem: %s", p)
    return problems


def training_problems(name: str, info: dict, grad_tol: float) -> list[str]:
    """Problems of one trained stage from :meth:`Minimum.summary` (+ Lanczos eigenvalues where present)."""
    out = []
    g = info["grad_norm"]
    if not g <= GRAD_SLACK * grad_tol:
        out.append(f"{name}: not converged (gradient norm {g:.2e} > {GRAD_SLACK:g} x grad_tol {grad_tol:.0e})")
    lo, hi = info.get("min_eigenvalue_lanczos"), info.get("max_eigenvalue_lanczos", 1.0)
    if lo is not None and lo < -SADDLE_TOL * max(1.0, abs(hi)):
        out.append(f"{name}: saddle point (smallest Hessian eigenvalue {lo:.2e} < 0)")
    return _report(out)


def solve_problems(name: str, summary: dict, max_residual: float, damping: float) -> list[str]:
    """Problems of one inverse-HVP from its :meth:`Solve.summary`."""
    out = []
    r = summary["max_residual"]
    if summary.get("non_finite_columns"):
        out.append(f"{name}: non-finite solution in columns {summary['non_finite_columns'][:20]}")
    elif not r <= max_residual:
        out.append(f"{name}: relative residual {r:.2e} > influence.max_residual {max_residual:.0e}")
    elif summary.get("converged") is False:
        out.append(f"{name}: solver {summary.get('solver', '?')} did not converge")
    lo = summary.get("min_eigenvalue")
    if lo is not None and math.isfinite(lo) and lo + damping <= 0:
        out += curvature_problems(name, lo, damping, report=False)
    elif summary.get("negative_curvature"):
        out.append(f"{name}: negative curvature met (H + λI not positive definite)")
    return _report(out)


def curvature_problems(name: str, min_eigenvalue: float, damping: float, report: bool = True) -> list[str]:
    """``H + λI`` must be positive definite where it is inverted."""
    out = []
    if min_eigenvalue + damping <= 0:
        out.append(f"{name}: H + λI not positive definite (smallest eigenvalue {min_eigenvalue:.2e}, damping {damping:g})")
    return _report(out) if report else out


def retrain_problems(set_id: str, pretrain: dict, finetune: dict, grad_tol: float) -> list[str]:
    """Problems of one retraining of both stages (their :meth:`Minimum.summary`)."""
    out = [f"retrain {set_id}: {stage} not converged (gradient norm {info['grad_norm']:.2e} > {GRAD_SLACK:g} x grad_tol {grad_tol:.0e})"
           for stage, info in (("pretraining", pretrain), ("finetuning", finetune)) if not info["grad_norm"] <= GRAD_SLACK * grad_tol]
    return _report(out)


def upstream(*paths: str | Path | None) -> list[str]:
    """The problems recorded in the sidecars of ``paths`` (in order, without repeats)."""
    out: list[str] = []
    for path in paths:
        if path:
            out += [p for p in io.load_meta(path).get("problems", []) if p not in out]
    return out


def row_flags(lko, retrain_frames, scores_paths: dict[str, dict[str, str]]) -> list[str]:
    """The ``flag`` of every leave-k-out row: its retraining's flag, plus its scores' upstream problems.

    ``lko``: the leave-k-out table (scenario, solver, test_id, selection, k[, method]); ``retrain_frames``:
    the retraining tables (with ``flag`` where written); ``scores_paths``: scenario → solver → scores file.
    Rows of other methods than multi-stage influence (baselines) carry only their retraining's flag.
    """

    key = ["scenario", "test_id", "selection", "k"]
    retrain = pd.concat(list(retrain_frames), ignore_index=True)
    retrain_flag = dict(zip(map(tuple, retrain[key].itertuples(index=False)),
                            retrain["flag"] if "flag" in retrain else [OK] * len(retrain), strict=True))
    solve = {(sc, so): upstream(p) for sc, by_solver in scores_paths.items() for so, p in by_solver.items()}
    out = []
    for row in lko.itertuples(index=False):
        retrained = retrain_flag.get(tuple(getattr(row, k) for k in key), OK)
        problems = [] if retrained == OK else [retrained]
        if getattr(row, "method", "multi_stage") == "multi_stage":
            problems += solve.get((row.scenario, row.solver), [])
        out.append(flag(problems))
    return out

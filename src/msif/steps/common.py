"""What every step shares: the experiment of a job, the arguments an artifact is computed under, checks and logging."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch

from msif import io
from msif.arguments import DATA_KEYS, TRAIN_KEYS, SolveArguments, pick
from msif.core.products import hvp
from msif.core.solvers import lanczos_extremes
from msif.experiments.registry import Experiment
from msif.task.data import TwoStageData
from msif.task.training import TrainingError, minimize
from msif.validation import health

log = logging.getLogger("msif")


def experiment(config: dict, data_path: str) -> Experiment:
    return Experiment.from_config(config, TwoStageData.from_state_dict(io.load_tensors(data_path, data_args(config))))


def data_args(config: dict) -> dict:
    """What the data splits depend on (``msif.arguments.DATA_KEYS``)."""
    return pick(config, DATA_KEYS)


def train_args(config: dict) -> dict:
    """What the pretrained optimum depends on (``msif.arguments.TRAIN_KEYS``)."""
    return pick(config, TRAIN_KEYS)


def finetune_args(config: dict, scenario: str) -> dict:
    return {**train_args(config), "finetune": config["finetune"], "scenario": scenario}


def check_curvature(name: str, min_eig: float, damping: float) -> None:
    if min_eig + damping <= 0:
        log.warning("%s: smallest eigenvalue %.3e (+ damping %.1e) <= 0 — a saddle or too little regularisation; "
                    "influence at this point is unreliable", name, min_eig, damping)
    else:
        log.info("%s: smallest eigenvalue %.3e", name, min_eig)


def newton_steps(config: dict) -> int:
    """``training.newton_steps``: Newton polishing steps after L-BFGS, in training and every retraining (schema default 8)."""
    return config["training"].get("newton_steps", 8)


def minimum(name: str, fun, x0: torch.Tensor, config: dict) -> tuple[torch.Tensor, dict]:
    t0 = time.perf_counter()
    t = config["training"]
    try:
        res = minimize(fun, x0, grad_tol=t["grad_tol"], max_iter=t["max_iter"], newton_steps=newton_steps(config))
    except TrainingError as err:
        raise TrainingError(f"{name}: {err}") from err
    lo, hi = lanczos_extremes(hvp(fun, res.params), res.params.numel(), res.params, iters=t["lanczos_iters"])
    info = {**res.summary(), "min_eigenvalue_lanczos": lo, "max_eigenvalue_lanczos": hi, "seconds": time.perf_counter() - t0}
    log.info("%s: %s", name, info)
    check_curvature(name, lo, 0.0)
    info["problems"] = health.training_problems(name, info, t["grad_tol"])
    return res.params, info


def load_stages(config: dict, scenario: str, data_path: str, pretrain_path: str, finetune_path: str):
    exp = experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, train_args(config))["params"].to(exp.device)
    ft_params = io.load_tensors(finetune_path, finetune_args(config, scenario))["params"].to(exp.device)
    ft = exp.finetune_objective(scenario, pt_params[: exp.model.w_spec.numel])
    return exp, exp.pretrain_objective(), pt_params, ft, ft_params


def solve_arguments(config: dict) -> SolveArguments:
    """The ``influence`` block as :class:`msif.arguments.SolveArguments`: the config stops here."""
    return SolveArguments.from_config(config["influence"])


@contextmanager
def named(name: str):
    """Log which step failed (a solver's own error does not know it), then re-raise."""
    try:
        yield
    except Exception as err:
        log.error("%s failed: %s", name, err)
        raise


def check_solve(name: str, solve, config: dict) -> list[str]:
    summary = solve.summary()
    log.info("%s: %s", name, summary)
    bad = not torch.isfinite(solve.x).all() or summary["max_residual"] > config["influence"]["max_residual"]
    if bad:
        msg = f"{name}: relative residual {summary['max_residual']:.3e} > influence.max_residual or non-finite solution"
        if config["influence"]["fail_on_bad_solve"]:
            raise RuntimeError(msg)
        log.warning(msg)
    check_curvature(name, summary.get("min_eigenvalue", float("nan")), config["influence"]["damping"])
    return health.solve_problems(name, summary, config["influence"]["max_residual"], config["influence"]["damping"])


def solve_args(config: dict, scenario: str, solver: str) -> dict:
    return {**finetune_args(config, scenario), "influence": config["influence"], "solver": solver}


def scores_args(config: dict, scenario: str, solver: str) -> dict:
    """What a score matrix depends on: not ``influence.shards`` (a sharded run gives the same numbers)."""
    influence = {k: v for k, v in config["influence"].items() if k != "shards"}
    return {**finetune_args(config, scenario), "influence": influence, "solver": solver}

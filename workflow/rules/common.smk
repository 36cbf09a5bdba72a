import math
import re

from snakemake.utils import min_version, validate

import msif
from msif.config import check_config

min_version("9.0")


validate(config, schema="../schemas/config.schema.yaml")
check_config(config)

RESULTS = f"results/{config['run']}"
LOGS = f"logs/{config['run']}"
VERSION = msif.__version__
ENV = "../../envs/msif.yaml"


def cfg(*keys):
    """The config keys (dotted paths) each step depends on, as a nested dict (its params).

    Snakemake reruns a job when its params change, so a step sees only what it uses and editing
    another key does not rerun it.
    """
    out = {}
    for key in keys:
        *parents, leaf = key.split(".")
        src, dst = config, out
        for p in parents:
            src, dst = src[p], dst.setdefault(p, {})
        dst[leaf] = src[leaf]
    return out


TRAIN_KEYS = (
    "seed",
    "dtype",
    "device",
    "experiment",
    "plugin",
    "data",
    "model",
    "pretrain",
    "training",
)
FINETUNE_KEYS = TRAIN_KEYS + ("finetune",)
SOLVE_BASE = FINETUNE_KEYS + tuple(
    f"influence.{k}"
    for k in ("n_test", "damping", "max_residual", "fail_on_bad_solve", "curvature")
)
SOLVER_OPTIONS = ("cg", "lissa", "arnoldi", "ekfac")


def solver_keys(solver):
    """Option blocks a solver name uses ('cg+ekfac' uses influence.cg and influence.ekfac)."""
    return tuple(
        f"influence.{s}"
        for s in dict.fromkeys(solver.split("+"))
        if s in SOLVER_OPTIONS
    )


def solve_params(*extra):
    """params for steps with a {solver} wildcard - only that solver's options, so editing another's does not rerun it."""
    return lambda wildcards: cfg(*SOLVE_BASE, *solver_keys(wildcards.solver), *extra)


RETRAIN_KEYS = FINETUNE_KEYS + ("influence.n_test", "retraining")
SET_KEYS = ("seed",) + tuple(
    f"validation.{k}" for k in ("ks", "selections", "sets_per_job")
)


def n_batches():
    v = config["validation"]
    n_sets = config["influence"]["n_test"] * len(v["selections"]) * len(v["ks"])
    return math.ceil(n_sets / v["sets_per_job"])


LDS = config["validation"]["lds"]
BASELINES = config["validation"]["baselines"]


def n_lds_batches():
    return math.ceil(LDS["n_subsets"] / LDS["subsets_per_job"])


def reference_hessian(wildcards):
    """The dense pretraining Hessian, where the reference solver's pretraining part is the exact one."""
    if config["validation"]["reference_solver"].split("+")[-1] == "exact":
        return f"{RESULTS}/influence/pretrain_hessian.pt"
    return []


def hessian_input(wildcards):
    """The dense pretraining Hessian is an input where the pretraining stage's solver is exact ('exact', 'cg+exact')."""
    if wildcards.solver.split("+")[-1] == "exact":
        return f"{RESULTS}/influence/pretrain_hessian.pt"
    return []


def scores_for(scenario):
    return {
        s: f"{RESULTS}/influence/{scenario}/{s}/scores.pt"
        for s in config["influence"]["solvers"]
    }

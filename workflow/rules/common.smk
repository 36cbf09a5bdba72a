import math
import re

from snakemake.utils import min_version, validate

import msif
from msif import arguments
from msif.config import check_config

min_version("9.0")


validate(config, schema="../schemas/config.schema.yaml")
check_config(config)

SEEDS = config["seeds"]


wildcard_constraints:
    scenario="|".join(map(re.escape, config["scenarios"])),
    solver="|".join(map(re.escape, config["influence"]["solvers"])),
    batch=r"\d+",
    shard=r"\d+",
    rep=r"\d+",
    seed=r"\d+",
    kind="warm|seed",


RUN = f"results/{config['run']}"  # what a run delivers: the tables pooled over seeds and the report
RUN_LOGS = f"logs/{config['run']}"
# Everything else is computed once per seed: each seed is a complete replicate of the experiment
# (data split, initialisation, removal sets, LDS subsets). The {seed} wildcard is in every path below.
RESULTS = f"{RUN}/seed{{seed}}"
LOGS = f"{RUN_LOGS}/seed{{seed}}"
VERSION = msif.__version__
ENV = "../../envs/msif.yaml"


def cfg(*keys):
    """The config keys (dotted paths) each step depends on, as a nested dict (its params), for the job's seed.

    Snakemake reruns a job when its params change, so a step sees only what it uses and editing
    another key does not rerun it. ``seed`` is the job's {seed} wildcard: the step sees a config
    for one seed (msif.config.for_seed). Keys are sorted, so the params do not depend on the order
    in which a rule names them.
    """

    def params(wildcards):
        out = {}
        for key in sorted(keys):
            if key == "seed":
                out["seed"] = int(wildcards.seed)
                continue
            *parents, leaf = key.split(".")
            src, dst = config, out
            for p in parents:
                src, dst = src[p], dst.setdefault(p, {})
            dst[leaf] = src[leaf]
        return out

    return params


def at_seed(path):
    """An input function: ``path`` (with a {seed} wildcard) at the job's seed, for paths built outside rule bodies."""
    return lambda wildcards: path.replace("{seed}", wildcards.seed)


# What each step depends on (msif.arguments, shared with the steps' sidecars); device moves where the
# numbers are computed, so it reruns a job too.
TRAIN_KEYS = (*arguments.TRAIN_KEYS, "device")
FINETUNE_KEYS = (*arguments.FINETUNE_KEYS, "device")
SOLVE_BASE = (*arguments.SOLVE_KEYS, "device", "influence.lanczos_iters")


def solve_params(*extra):
    """params for steps with a {solver} wildcard - only that solver's options, so editing another's does not rerun it."""
    return lambda wildcards: cfg(
        *SOLVE_BASE, *arguments.solver_blocks(wildcards.solver), *extra
    )(wildcards)


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
        return f"{RESULTS}/influence/pretrain_hessian.pt".replace(
            "{seed}", wildcards.seed
        )
    return []


def score_shards(wildcards):
    """The influence.shards score shards of one (seed, scenario, solver), merged by rule scores."""
    return [
        f"{RESULTS}/influence/{{scenario}}/{{solver}}/scores_shard{i}.pt".format(
            seed=wildcards.seed, scenario=wildcards.scenario, solver=wildcards.solver
        )
        for i in range(config["influence"]["shards"])
    ]


def hessian_input(wildcards):
    """The dense pretraining Hessian is an input where the pretraining stage's solver is exact ('exact', 'cg+exact')."""
    if wildcards.solver.split("+")[-1] == "exact":
        return f"{RESULTS}/influence/pretrain_hessian.pt".replace(
            "{seed}", wildcards.seed
        )
    return []


def noise_csvs():
    """The noise floor of every scenario (at the job's {seed}), one CSV (one job) each holding all its retrains:
    'warm' = same seed, perturbed warm start (validation.noise_repeats); 'seed' = cold start from another
    seed's initialisation (validation.seed_noise_repeats)."""
    return [f"{RESULTS}/validation/{s}/noise.csv" for s in config["scenarios"]]


# The text experiment's TracIn outputs (workflow/rules/text.smk), shown by the report; none otherwise.
# What the report reads of a text run's TracIn part, in the order msif.steps.report.report takes it.
TRACIN_REPORT = (
    [
        f"{RESULTS}/tracin/scores.pt",
        f"{RESULTS}/tracin/train.pt",
        f"{RESULTS}/tracin/case_deletion_summary.csv",
    ]
    if config["experiment"] == "text"
    else []
)
# The keys the report page shows (editing any other key does not rerun it).
REPORT_CONFIG = {
    k: config[k]
    for k in ("run", "seeds", "experiment", "scenarios", "report", "tracin")
    if k in config
} | {
    "validation": {
        k: config["validation"][k] for k in ("reference_solver", "min_accuracy")
    }
}
TRACIN_TARGETS = (
    [
        f"{RESULTS}/tracin/scores.pt",
        f"{RESULTS}/tracin/train.pt",
        f"{RESULTS}/tracin/case_deletion.csv",
        f"{RESULTS}/tracin/case_deletion_summary.csv",
    ]
    if config["experiment"] == "text"
    else []
)


def scores_for(scenario):
    return {
        s: f"{RESULTS}/influence/{scenario}/{s}/scores.pt"
        for s in config["influence"]["solvers"]
    }

"""The workflow's steps called in-process, in DAG order, at the workflow's paths (``results/<run>/seed<seed>/...``).

Used by the reliability tests: a second, independent run to compare with a Snakemake run bit for bit,
and a cheap way to inject faults into one step. Each step runs as its Snakemake job would: torch
threads and deterministic kernels as ``msif.logs.job`` sets them, and the BLAS/OpenMP thread pools
limited to the rule's ``threads:`` as Snakemake does through ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``
(SciPy's L-BFGS-B and torch's eigendecomposition give other last bits under other thread counts).
``msif.logs.job`` itself is not used: it reconfigures the root logger, taking pytest's log capture away.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from threadpoolctl import threadpool_limits

from msif import io
from msif.config import for_seed, validate_config
from msif.steps import influence as influence_steps
from msif.steps import train as train_steps
from msif.steps import validation as validation_steps

ROOT = Path(__file__).resolve().parents[1]

# The rules' ``threads:`` (workflow/rules/*.smk); the tests run Snakemake with --cores 2.
THREADS = {"pretrain_hessian": 2}


def load_config(path: str | Path) -> dict:
    """A config file as a step of its first seed sees it: validated against the schema (defaults filled in), cross-key
    checked, ``seeds`` replaced by that ``seed`` (msif.config.for_seed)."""
    return for_seed(validate_config(yaml.safe_load((ROOT / path).read_text())))


@contextmanager
def as_job(rule: str):
    """Threads and deterministic kernels of the rule's job, restored afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(THREADS.get(rule, 1))
    torch.use_deterministic_algorithms(True)
    try:
        with threadpool_limits(limits=THREADS.get(rule, 1)):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def paths(root: Path, config: dict) -> dict:
    r = Path(root) / "results" / config["run"] / f"seed{config['seed']}"
    return {
        "data": r / "data/splits.pt",
        "pretrain": r / "train/pretrain.pt",
        "finetune": lambda s: r / f"train/finetune_{s}.pt",
        "hessian": r / "influence/pretrain_hessian.pt",
        "finetune_ihvp": lambda s, so: r / f"influence/{s}/{so}/finetune_ihvp.pt",
        "pretrain_ihvp": lambda s, so: r / f"influence/{s}/{so}/pretrain_ihvp.pt",
        "scores": lambda s, so: r / f"influence/{s}/{so}/scores.pt",
        "sets": lambda s: r / f"validation/{s}/removal_sets.json",
        "retrain": lambda s, b: r / f"validation/{s}/retrain/batch{b}.csv",
        "noise": lambda s: r / f"validation/{s}/noise.csv",
        "leave_k_out": r / "validation/leave_k_out.csv",
        "summary": r / "validation/summary.csv",
    }


def run_training(config: dict, root: Path) -> dict:
    """prepare_data → pretrain → finetune of every scenario, as the rule ``pretrain``'s job would run them; the paths."""
    p = paths(root, config)
    with as_job("pretrain"):
        train_steps.prepare_data(config, str(p["data"]), n_test=config["influence"]["n_test"])
        train_steps.pretrain(config, str(p["data"]), str(p["pretrain"]))
        for s in config["scenarios"]:
            train_steps.finetune(config, s, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)))
    return p


def run_scores(config: dict, root: Path, scenarios: list[str] | None = None) -> dict:
    """prepare_data → pretrain → finetune → finetune_ihvp → (pretrain_hessian) → pretrain_ihvp → scores."""
    p = paths(root, config)
    scenarios = scenarios or config["scenarios"]
    solvers = config["influence"]["solvers"]
    with as_job("prepare_data"):
        train_steps.prepare_data(config, str(p["data"]), n_test=config["influence"]["n_test"])
    with as_job("pretrain"):
        train_steps.pretrain(config, str(p["data"]), str(p["pretrain"]))
    if "exact" in solvers:
        with as_job("pretrain_hessian"):
            influence_steps.pretrain_hessian(config, str(p["data"]), str(p["pretrain"]), str(p["hessian"]))
    for s in scenarios:
        with as_job("finetune"):
            train_steps.finetune(config, s, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)))
        for so in solvers:
            with as_job("finetune_ihvp"):
                influence_steps.finetune_ihvp(config, s, so, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)),
                                        str(p["finetune_ihvp"](s, so)))
            with as_job("pretrain_ihvp"):
                influence_steps.pretrain_ihvp(config, s, so, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)),
                                        str(p["finetune_ihvp"](s, so)), str(p["hessian"]) if so == "exact" else None,
                                        str(p["pretrain_ihvp"](s, so)))
            with as_job("scores"):
                influence_steps.scores_shard(config, s, so, str(p["data"]), str(p["pretrain"]), str(p["pretrain_ihvp"](s, so)),
                                 str(p["scores"](s, so)))
    return p


def run_validation(config: dict, root: Path, scenarios: list[str] | None = None, set_ids: list[str] | None = None) -> dict:
    """removal_sets → retrain (one batch: ``set_ids`` only, if given) → noise_floor → compare, after :func:`run_scores`."""
    p = paths(root, config)
    scenarios = scenarios or config["scenarios"]
    ref = config["validation"]["reference_solver"]
    for s in scenarios:
        with as_job("removal_sets"):
            validation_steps.removal_sets(config, str(p["scores"](s, ref)), str(p["sets"](s)))
        spec = io.read_json(p["sets"](s))
        if set_ids is not None:  # one batch holding just these sets: a cheap partial fan-out
            spec["batches"] = [[i for i, x in enumerate(spec["sets"]) if x["set_id"] in set_ids]]
            io.write_json(p["sets"](s), spec)
        for b in range(len(spec["batches"])):
            with as_job("retrain"):
                validation_steps.retrain(config, s, b, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)), str(p["sets"](s)),
                                  str(p["retrain"](s, b)))
        with as_job("noise_floor"):
            validation_steps.noise_floor(config, s, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)), str(p["noise"](s)))
    if set_ids is None:
        n_batches = {s: len(io.read_json(p["sets"](s))["batches"]) for s in scenarios}
        with as_job("compare"):
            validation_steps.compare(
                config,
                scores_paths={s: {so: str(p["scores"](s, so)) for so in config["influence"]["solvers"]} for s in scenarios},
                sets_paths={s: str(p["sets"](s)) for s in scenarios},
                retrain_paths={s: [str(p["retrain"](s, b)) for b in range(n_batches[s])] for s in scenarios},
                noise_paths={s: [str(p["noise"](s))] for s in scenarios},
                leave_k_out_out=str(p["leave_k_out"]), summary_out=str(p["summary"]),
            )
    return p

"""The SLURM profiles stay in step: slurm-gpu is the slurm profile plus one GPU for every rule that trains or solves.

(Running them against a real SLURM is tests/test_slurm.py's job; these checks need none.)
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

PROFILES = Path(__file__).resolve().parents[1] / "workflow" / "profiles"
RULES = Path(__file__).resolve().parents[1] / "workflow" / "rules"
# the rules that train or solve; cheap ones must not hold a GPU
HEAVY = {"pretrain", "finetune", "finetune_ihvp", "pretrain_hessian", "pretrain_ihvp", "scores", "retrain", "noise_floor"}
CHEAP = {"prepare_data", "removal_sets", "compare", "report"}


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def _rules_declaring_gpu() -> tuple[set[str], set[str]]:
    """(rules whose resources declare ``gpu=``, all other rules) of the workflow."""
    with_gpu, without = set(), set()
    for smk in RULES.glob("*.smk"):
        for rule, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", smk.read_text(), re.MULTILINE):
            (with_gpu if re.search(r"^\s+gpu=", body, re.MULTILINE) else without).add(rule)
    return with_gpu, without


def test_gpu_profile_is_the_slurm_profile_plus_gpus() -> None:
    slurm, gpu = _profile("slurm"), _profile("slurm-gpu")
    per_rule = gpu.pop("set-resources")
    slurm.pop("set-resources", None)
    assert gpu == slurm, "slurm-gpu must differ from slurm only in set-resources (copy the change across)"
    assert all(res == {"gpu": 1} for res in per_rule.values()), per_rule

    with_gpu, without = _rules_declaring_gpu()
    assert HEAVY <= with_gpu, f"rules that train or solve should declare gpu=0 in resources: {sorted(HEAVY - with_gpu)}"
    assert CHEAP <= without
    assert with_gpu <= per_rule.keys(), (
        f"rules declaring gpu but not given one by slurm-gpu: {sorted(with_gpu - per_rule.keys())}"
    )
    assert not per_rule.keys() & without, f"cheap rules given a GPU: {sorted(per_rule.keys() & without)}"

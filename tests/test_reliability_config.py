"""Bad configurations: a table of bad values, each refused at start with the key, the value and what is allowed.

Most rows are checked in-process exactly as ``workflow/rules/common.smk`` does it (Snakemake's
``validate`` against the JSON schema, then :func:`msif.config.check_config`); a few go through a real
``snakemake -n`` to show that no job starts and nothing is created. ``tests/test_config.py`` holds
the original cases (enum, required key, k > n, overlapping classes); this table does not repeat them.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import ROOT, snakemake
from msif.config import check_config
from msif.errors import ConfigError
from msif.experiments.digits import DIGITS_CLASS_COUNTS

SCHEMA = str(ROOT / "workflow/schemas/config.schema.yaml")
TINY = yaml.safe_load((ROOT / ".test/config/config.yaml").read_text())
DELETE = object()


def mutate(base: dict, path: str, value) -> dict:
    cfg = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return cfg


def check(cfg: dict) -> None:
    """What the workflow runs before any job: schema (defaults filled in), then the cross-key rules."""
    cfg = copy.deepcopy(cfg)
    validate(cfg, SCHEMA)
    check_config(cfg)


def names_key(message: str, key: str) -> bool:
    """The dotted key (our own messages) or jsonschema's ``instance['a']['b']`` path (Snakemake's)."""
    instance = "instance" + "".join(f"[{p!r}]" for p in key.split("."))
    return key in message or instance in message


# (key, bad value, regex the message must match: the value and what is allowed). Tiny config as the base:
# n_pretrain 60 of 1,264 examples (classes 0-6), n_finetune 40 of 353 (classes 7, 8), n_test 2.
BAD = [
    ("run", "..", r"'\.\.' does not match '\^\[A-Za-z0-9_\]"),
    ("run", "my run", r"'my run' does not match"),
    ("run", ".hidden", r"'\.hidden' does not match"),
    ("seeds", [-1], r"-1 is less than the minimum of 0"),
    ("seeds", 0, r"0 is not of type 'array'"),
    ("seeds", [0, "1"], r"'1' is not of type 'integer'"),
    ("seeds", [0, 0], r"\[0, 0\] has non-unique elements"),
    ("seeds", [], r"\[\] is too short|\[\] should be non-empty"),
    ("device", "gpu", r"'gpu' does not match '\^\(auto\|cpu\|cuda"),
    ("experiment", "nosuch", r"experiment='nosuch': allowed \['digits'(, '\w+')*\] or 'package\.module:function'"),
    ("experiment", "no_such_module_xyz:plugin", r"module 'no_such_module_xyz' is not importable"),
    ("data.n_pretrain", 1, r"1 is less than the minimum of 2"),
    ("data.n_pretrain", 1263, r"data\.n_pretrain=1263: classes \[0, 1, 2, 3, 4, 5, 6\] have 1264 digits examples; allowed 7\.\.1257"),
    ("data.n_finetune", 352, r"data\.n_finetune=352: classes \[7, 8\] have 353 digits examples; allowed 2\.\.351"),
    ("data.pretrain_classes", [0, 0, 1], r"\[0, 0, 1\] has non-unique elements"),
    ("data.pretrain_classes", [0], r"\[0\] is too short|\[0\] should be non-empty"),
    ("data.pretrain_classes", [0, 12], r"12 is greater than the maximum of 9"),
    ("influence.n_test", 0, r"0 is less than the minimum of 1"),
    ("influence.n_test", 314, r"influence\.n_test=314 exceeds the finetuning test split \(313 examples.*allowed 1\.\.313"),
    ("influence.damping", math.nan, r"influence\.damping=nan: must be a finite number"),
    ("influence.max_residual", 0.0, r"0\.0 is less than or equal to the minimum of 0"),
    ("influence.batch_size", 0, r"0 is less than the minimum of 1"),
    ("influence.fail_on_bad_solve", "yes", r"'yes' is not of type 'boolean'"),
    ("influence.solvers", [], r"\[\] should be non-empty|\[\] is too short"),
    ("influence.dampening", 0.1, r"Additional properties are not allowed \('dampening' was unexpected\)"),
    ("training.grad_tol", math.inf, r"training\.grad_tol=inf: must be a finite number"),
    ("training.grad_tol", DELETE, r"'grad_tol' is a required property"),
    ("training.max_iter", 10.5, r"10\.5 is not of type 'integer'"),
    ("pretrain.l2", "0.01", r"'0\.01' is not of type 'number'"),
    ("finetune.alpha", -0.5, r"-0\.5 is less than the minimum of 0"),
    ("model.activation", "relu", r"'relu' is not one of \['tanh', 'softplus', 'gelu'\]"),
    ("model.hidden", [], r"\[\] should be non-empty|\[\] is too short"),
    ("model.hidden", [0], r"0 is less than the minimum of 1"),
    ("scenarios", [], r"\[\] should be non-empty|\[\] is too short"),
    ("scenarios", ["fixed", "updated@x"], r"'updated@x' does not match"),
    ("scenarios", ["fixed", "updated@0"], r"scenarios: 'updated@0' needs alpha > 0 \(e\.g\. updated@0\.1\)"),
    ("validation.ks", [], r"\[\] should be non-empty|\[\] is too short"),
    ("validation.ks", [0], r"0 is less than the minimum of 1"),
    ("validation.ks", [2, 2], r"\[2, 2\] has non-unique elements"),
    ("validation.selections", ["top", "best"], r"'best' is not one of \['top', 'bottom', 'random'\]"),
    ("validation.sets_per_job", 0, r"0 is less than the minimum of 1"),
    ("validation.noise_repeats", 0, r"0 is less than the minimum of 1"),
    ("report.example_tests", 3, r"report\.example_tests=3: exceeds influence\.n_test=2; allowed 0\.\.2"),
    ("report.top", 61, r"report\.top=61: exceeds data\.n_pretrain=60; allowed 1\.\.60"),
    ("seed", 1, r"Additional properties are not allowed \('seed' was unexpected\)"),  # the old single-seed key: now seeds: [..]
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v!r}" if v is not DELETE else f"{k}:deleted" for k, v, _ in BAD])
def test_bad_config_is_refused_naming_key_value_and_allowed(key, value, message):
    with pytest.raises((WorkflowError, ConfigError)) as err:
        check(mutate(TINY, key, value))
    text = str(err.value)
    assert re.search(message, text), text
    nested_object_error = (value is DELETE or "was unexpected" in message) and "." in key  # reported on the parent
    assert names_key(text, key.rsplit(".", 1)[0] if nested_object_error else key), text


def test_good_configs_pass():
    default = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    for cfg in (TINY, default, mutate(mutate(TINY, "scenarios", ["fixed"]), "finetune.alpha", 0.0),
                mutate(TINY, "influence.n_test", 313), mutate(TINY, "data.n_pretrain", 1257)):
        check(cfg)


def test_digits_class_counts_match_the_data():
    """check_config computes split sizes from these counts without loading the data."""
    import numpy as np
    from sklearn.datasets import load_digits

    assert tuple(np.bincount(load_digits().target).tolist()) == DIGITS_CLASS_COUNTS


# A few rows through the real workflow: the run stops before any job and creates no results/ or logs/.
THROUGH_SNAKEMAKE = [
    ("influence.n_test", 321, r"influence\.n_test=321 exceeds the finetuning test split"),
    ("influence.damping", math.nan, r"influence\.damping=nan: must be a finite number"),
    ("run", "..", r"'\.\.' does not match"),
]


@pytest.mark.parametrize("key,value,message", THROUGH_SNAKEMAKE, ids=[k for k, _, _ in THROUGH_SNAKEMAKE])
def test_bad_config_stops_the_workflow_before_any_job(tmp_path, workflow_dir, key, value, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate(TINY, key, value)))
    proc = snakemake(workflow_dir, "-n", "--configfile", str(bad), timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(message, out), out[-3000:]
    assert not (workflow_dir / "results").exists() and not (workflow_dir / "logs").exists()

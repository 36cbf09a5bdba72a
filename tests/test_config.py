"""Bad configurations fail at start — before any job — naming the key and what is allowed."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import ROOT
from msif.config import check_config
from msif.errors import ConfigError

DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def mutate(path: str, value):
    cfg = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    "path,value,message",
    [
        ("scenarios", ["fixed", "frozen"], r"'frozen' does not match '\^\(fixed\|updated"),
        ("influence.solvers", ["exact", "lissa2"], r"'lissa2' does not match '\^\(exact\|cg\|lissa\|arnoldi\|ekfac\|pcg\)"),
        ("influence", KeyError, r"'influence' is a required property"),
        ("influence.damping", -1.0, r"-1\.0 is less than the minimum of 0"),
        ("dtype", "float16", r"'float16' is not one of \['float64', 'float32'\]"),
        ("validation.ks", [5, 1200], r"validation\.ks=\[5, 1200\]: k=1200 exceeds data\.n_pretrain=1150"),
        ("data.finetune_classes", [6, 7, 8], r"data\.finetune_classes=\[6, 7, 8\]: classes \[6\] are also pretraining classes"),
    ],
)
def test_bad_config_fails_at_start_with_named_key(path, value, message):
    """What the Snakefile runs first (common.smk: the schema, then check_config), in process; that a
    failure there stops Snakemake before any job is test_reliability_config's, through the real workflow."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = mutate(path, value)
    with pytest.raises((WorkflowError, ConfigError)) as err:
        validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))
        check_config(cfg)
    assert re.search(message, str(err.value)), str(err.value)[-3000:]


def test_check_config_rules():
    check_config(DEFAULT)
    with pytest.raises(ConfigError, match=r"finetune\.alpha=0\.0: scenario 'updated' needs alpha > 0"):
        check_config(mutate("finetune.alpha", 0.0))
    with pytest.raises(ConfigError, match=r"validation\.reference_solver='cg': allowed one of influence\.solvers=\['exact'\]"):
        check_config(mutate("validation.reference_solver", "cg") | {"influence": DEFAULT["influence"] | {"solvers": ["exact"]}})


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("config/*.yaml"), ROOT / ".test/config/config.yaml"]))
def test_schema_defaults_fill_no_key_of_another_experiment_into_data_or_model(path):
    """The schema's defaults never add an experiment-specific key to a config's data or model block (it would sit in every
    step's params, and a change of another experiment's default would rerun this one)."""
    from snakemake.utils import validate

    given = yaml.safe_load((ROOT / path).read_text())
    cfg = copy.deepcopy(given)
    validate(cfg, str(ROOT / "workflow/schemas/config.schema.yaml"))
    for block in ("data", "model"):
        assert cfg[block] == given[block], (block, sorted(set(cfg[block]) - set(given[block])))

"""A config: read, validated against the schema shipped with the package, cross-key checks, one seed's view.

The schema (``msif/schemas/config.schema.yaml``, package data) checks each key; :func:`check_config` checks
what a JSON schema cannot express (sizes against the data, keys that must agree).
"""

from __future__ import annotations

import importlib.util
import math

from msif.errors import ConfigError
from msif.experiments.registry import BUILTIN, check_sizes


def check_experiment(name: str) -> None:
    """A built-in experiment name, or ``module:function`` whose module can be found (not imported)."""
    if ":" not in name:
        if name not in BUILTIN:
            raise ConfigError(f"experiment={name!r}: allowed {list(BUILTIN)} or 'package.module:function'")
        return
    module = name.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(f"experiment={name!r}: module {module!r} is not importable (is it installed or on PYTHONPATH?)")


def check_finite(node, path: str = "") -> None:
    """Every number in the config is finite (a JSON schema's bounds let NaN and often Inf through)."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_finite(value, f"{path}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{path}={node}: must be a finite number")


def check_config(config: dict) -> None:
    """Raise :class:`ConfigError` on the first violated cross-key rule."""
    check_finite(config)
    check_experiment(config["experiment"])
    d, v, inf = config["data"], config["validation"], config["influence"]
    overlap = sorted(set(d.get("pretrain_classes", [])) & set(d.get("finetune_classes", [])))
    if overlap and config["experiment"] != "fashion_mnist":  # fashion_mnist: classes of two data sets, overlap allowed
        raise ConfigError(f"data.finetune_classes={d['finetune_classes']}: classes {overlap} are also pretraining classes; "
                          "the two tasks must use disjoint classes")
    too_big = [k for k in v["ks"] if k > d.get("n_pretrain", float("inf"))]
    if too_big:
        raise ConfigError(f"validation.ks={v['ks']}: k={too_big[0]} exceeds data.n_pretrain={d['n_pretrain']}; "
                          f"allowed 1..{d['n_pretrain']}")
    if v["reference_solver"] not in inf["solvers"]:
        raise ConfigError(f"validation.reference_solver={v['reference_solver']!r}: allowed one of influence.solvers={inf['solvers']}")
    if "updated" in config["scenarios"] and not config["finetune"]["alpha"] > 0:
        raise ConfigError(f"finetune.alpha={config['finetune']['alpha']}: scenario 'updated' needs alpha > 0")
    for s in config["scenarios"]:
        if s.startswith("updated@") and not float(s.partition("@")[2]) > 0:
            raise ConfigError(f"scenarios: {s!r} needs alpha > 0 (e.g. updated@0.1)")
    r = config["report"]
    if r["example_tests"] > inf["n_test"]:
        raise ConfigError(f"report.example_tests={r['example_tests']}: exceeds influence.n_test={inf['n_test']}; "
                          f"allowed 0..{inf['n_test']}")
    if r["top"] > d.get("n_pretrain", math.inf):
        raise ConfigError(f"report.top={r['top']}: exceeds data.n_pretrain={d['n_pretrain']}; allowed 1..{d['n_pretrain']}")
    check_sizes(config)
    n_pt, shards = d.get("n_pretrain"), inf.get("shards", 1)
    if n_pt is not None and shards > -(-n_pt // inf["batch_size"]):
        raise ConfigError(f"influence.shards={shards}: the {n_pt} pretraining examples make {-(-n_pt // inf['batch_size'])} batches "
                          f"of influence.batch_size={inf['batch_size']}; allowed 1..{-(-n_pt // inf['batch_size'])}")


def for_seed(config: dict, seed: int | None = None) -> dict:
    """The config of one replicate: a workflow config (``seeds: [...]``) with ``seed`` set, as every step sees it.

    ``seed`` defaults to the first of ``seeds``; a config that already names one ``seed`` is returned as is.
    """
    if "seeds" not in config:
        if "seed" not in config:
            raise ConfigError("config: give seeds: [...] (a list of seeds)")
        return config
    seeds = config["seeds"]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise ConfigError(f"seed={seed}: not one of seeds={seeds}")
    out = {k: v for k, v in config.items() if k != "seeds"}
    out["seed"] = int(seed)
    return out

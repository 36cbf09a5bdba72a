"""Cross-key checks of a config that a JSON schema cannot express; run at workflow start.

Imports nothing heavy (no torch), so the Snakefile parses fast on every cluster job.
"""

from __future__ import annotations

import importlib.util

# Names of the built-in experiment plug-ins (msif.experiment.REGISTRY holds the same names).
BUILTIN_EXPERIMENTS = ("digits",)


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""


def check_experiment(name: str) -> None:
    """A built-in experiment name, or ``module:function`` whose module can be found (not imported)."""
    if ":" not in name:
        if name not in BUILTIN_EXPERIMENTS:
            raise ConfigError(f"experiment={name!r}: allowed {list(BUILTIN_EXPERIMENTS)} or 'package.module:function'")
        return
    module = name.split(":", 1)[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        raise ConfigError(f"experiment={name!r}: module {module!r} is not importable (is it installed or on PYTHONPATH?)")


def check_config(config: dict) -> None:
    """Raise :class:`ConfigError` on the first violated cross-key rule."""
    check_experiment(config["experiment"])
    d, v, inf = config["data"], config["validation"], config["influence"]
    overlap = sorted(set(d.get("pretrain_classes", [])) & set(d.get("finetune_classes", [])))
    if overlap:
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

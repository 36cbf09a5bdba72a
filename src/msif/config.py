"""Cross-key checks of a config that a JSON schema cannot express; run at workflow start."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key, the value and what is allowed."""


def check_config(config: dict) -> None:
    """Raise :class:`ConfigError` on the first violated cross-key rule."""
    d, v, inf = config["data"], config["validation"], config["influence"]
    overlap = sorted(set(d["pretrain_classes"]) & set(d["finetune_classes"]))
    if overlap:
        raise ConfigError(f"data.finetune_classes={d['finetune_classes']}: classes {overlap} are also pretraining classes; "
                          "the two tasks must use disjoint classes")
    too_big = [k for k in v["ks"] if k > d["n_pretrain"]]
    if too_big:
        raise ConfigError(f"validation.ks={v['ks']}: k={too_big[0]} exceeds data.n_pretrain={d['n_pretrain']}; "
                          f"allowed 1..{d['n_pretrain']}")
    if v["reference_solver"] not in inf["solvers"]:
        raise ConfigError(f"validation.reference_solver={v['reference_solver']!r}: allowed one of influence.solvers={inf['solvers']}")
    if "updated" in config["scenarios"] and not config["finetune"]["alpha"] > 0:
        raise ConfigError(f"finetune.alpha={config['finetune']['alpha']}: scenario 'updated' needs alpha > 0")

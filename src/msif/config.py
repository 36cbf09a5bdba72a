"""Cross-key checks of a config that a JSON schema cannot express; run at workflow start.

Imports nothing heavy (no torch), so the Snakefile parses fast on every cluster job.
"""

from __future__ import annotations

import importlib.util
import math

# Names of the built-in experiment plug-ins (msif.experiment.REGISTRY holds the same names).
BUILTIN_EXPERIMENTS = ("digits", "text", "fashion_mnist")

BUILTIN_EXPERIMENTS += ("fashion_classes", "mnist_classes")  # one image data set for both stages (msif.image_classes)

# Examples per class (0..9) of scikit-learn's bundled digits, so split sizes are checked at start
# without loading the data (a test checks these against sklearn).
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


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


def check_digits_sizes(config: dict) -> None:
    """Split sizes of the built-in digits experiment, computed from the class counts (no data loaded)."""
    d, n_test = config["data"], config["influence"]["n_test"]
    sizes = {}
    for stage in ("pretrain", "finetune"):
        classes, n = d[f"{stage}_classes"], d[f"n_{stage}"]
        total = sum(DIGITS_CLASS_COUNTS[c] for c in classes)
        lo, hi = len(classes), total - len(classes)
        if not lo <= n <= hi:
            raise ConfigError(f"data.n_{stage}={n}: classes {classes} have {total} digits examples; allowed {lo}..{hi} "
                              "(every class needs an example in the training and in the test split)")
        sizes[stage] = total - n
    if n_test > sizes["finetune"]:
        raise ConfigError(f"influence.n_test={n_test} exceeds the finetuning test split ({sizes['finetune']} examples: classes "
                          f"{d['finetune_classes']} minus data.n_finetune={d['n_finetune']}); allowed 1..{sizes['finetune']}")


def check_text_sizes(config: dict) -> None:
    """Sizes of the built-in text experiment (``data``) against ``influence`` and its ``tracin`` block."""
    t, tr, n_test = config["data"], config["tracin"], config["influence"]["n_test"]
    if n_test > t["n_finetune_test"]:
        raise ConfigError(f"influence.n_test={n_test} exceeds data.n_finetune_test={t['n_finetune_test']}; allowed 1..{t['n_finetune_test']}")
    if tr["n_test"] > t["n_finetune_test"]:
        raise ConfigError(f"tracin.n_test={tr['n_test']} exceeds data.n_finetune_test={t['n_finetune_test']}; "
                          f"allowed 1..{t['n_finetune_test']}")
    too_big = [k for k in tr["ks"] if k > t["n_finetune"]]
    if too_big:
        raise ConfigError(f"tracin.ks={tr['ks']}: k={too_big[0]} exceeds data.n_finetune={t['n_finetune']}; allowed 1..{t['n_finetune']}")
    if tr["batch_size"] > t["n_finetune"]:
        raise ConfigError(f"tracin.batch_size={tr['batch_size']} exceeds data.n_finetune={t['n_finetune']}; allowed 1..{t['n_finetune']}")


# fashion_mnist: Fashion-MNIST has 6,000 training and 1,000 test images per class; MNIST-5k 500 digits per class.
FASHION_MNIST_PER_CLASS, MNIST5K_PER_CLASS = (6000, 1000), 500


def check_fashion_mnist_sizes(config: dict) -> None:
    """Split sizes of the built-in fashion_mnist experiment, from the class counts (no data loaded)."""
    d, n_test = config["data"], config["influence"]["n_test"]
    for key, per_class, classes in (("n_pretrain", FASHION_MNIST_PER_CLASS[0], d["pretrain_classes"]),
                                    ("n_pretrain_test", FASHION_MNIST_PER_CLASS[1], d["pretrain_classes"])):
        if d[key] > per_class * len(classes):
            raise ConfigError(f"data.{key}={d[key]}: pretrain_classes {classes} have {per_class * len(classes)} Fashion-MNIST "
                              f"images; allowed 1..{per_class * len(classes)}")
    total = MNIST5K_PER_CLASS * len(d["finetune_classes"])
    if not len(d["finetune_classes"]) <= d["n_finetune"] <= total - len(d["finetune_classes"]):
        raise ConfigError(f"data.n_finetune={d['n_finetune']}: finetune_classes {d['finetune_classes']} have {total} MNIST-5k digits; "
                          f"allowed {len(d['finetune_classes'])}..{total - len(d['finetune_classes'])}")
    if n_test > total - d["n_finetune"]:
        raise ConfigError(f"influence.n_test={n_test} exceeds the finetuning test split ({total - d['n_finetune']} MNIST-5k digits); "
                          f"allowed 1..{total - d['n_finetune']}")


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
    if config["experiment"] == "digits":
        check_digits_sizes(config)
    if config["experiment"] == "text":
        check_text_sizes(config)
    if config["experiment"] == "fashion_mnist":
        check_fashion_mnist_sizes(config)
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

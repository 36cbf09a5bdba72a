"""The built-in ``digits`` experiment: scikit-learn's bundled 8×8 digits, two disjoint class sets, an MLP body.
"""

from __future__ import annotations

import numpy as np

from msif.errors import ConfigError
from msif.experiments.plugin import Plugin
from msif.task.data import DataError, TwoStageData, check_inputs, split_by_classes
from msif.task.models import TwoStageModel, mlp_model


def load_digits_two_stage(
    pretrain_classes: list[int], finetune_classes: list[int], n_pretrain: int, n_finetune: int, seed: int
) -> TwoStageData:
    """scikit-learn digits split into a pretraining task and a finetuning task on other classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data.astype(np.float64) / 16.0, digits.target.astype(np.int64)
    check_inputs("digits", x, y)
    overlap = set(pretrain_classes) & set(finetune_classes)
    if overlap:
        raise DataError(f"digits: classes {sorted(overlap)} are in both pretrain_classes and finetune_classes")
    rng = np.random.default_rng(seed)
    pt, pt_test = split_by_classes("digits/pretrain", x, y, pretrain_classes, n_pretrain, rng)
    ft, ft_test = split_by_classes("digits/finetune", x, y, finetune_classes, n_finetune, rng)
    return TwoStageData(pt, pt_test, ft, ft_test)


# Examples per class (0..9) of scikit-learn's bundled digits, so split sizes are checked at start
# without loading the data (a test checks these against sklearn).
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


def check_sizes(config: dict) -> None:
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


def load_data(config: dict) -> TwoStageData:
    d = config["data"]
    return load_digits_two_stage(d["pretrain_classes"], d["finetune_classes"], d["n_pretrain"], d["n_finetune"], config["seed"])


def build_model(config: dict, data: TwoStageData) -> TwoStageModel:
    """The MLP of ``model.hidden`` / ``model.activation`` on flattened inputs, one head per stage's classes;
    under ``pretrain.objective: reconstruct`` the pretraining head decodes the features back to the inputs.
    A config without a pretrain block (a plug-in's) builds the classifier."""
    m = config["model"]
    n_pt, n_ft = int(data.pretrain.y.max()) + 1, int(data.finetune.y.max()) + 1
    return mlp_model(data.pretrain.x[0].numel(), m["hidden"], n_pt, n_ft, m["activation"],
                     config.get("pretrain", {}).get("objective", "classify"))


PLUGIN = Plugin("digits", load_data, build_model, check_sizes)

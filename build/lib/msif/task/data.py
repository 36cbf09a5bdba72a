"""Data for the two stages: disjoint class sets of one data set, fixed seeded splits.

The default experiment uses scikit-learn's bundled 8×8 digits (no download): pretraining
classifies ``pretrain_classes``, finetuning classifies ``finetune_classes``. Inputs are scaled
once (pixel / 16). Every example keeps its row index in the source data set as a stable id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class DataError(ValueError):
    """Bad input data: names the data set and the offending example ids."""


@dataclass
class Split:
    """One split: inputs ``x``, integer labels ``y`` (0..C-1 within the stage) and source ``ids``."""

    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, keep: torch.Tensor) -> Split:
        return Split(self.x[keep], self.y[keep], self.ids[keep])

    def to(self, dtype: torch.dtype, device: torch.device) -> Split:
        return Split(self.x.to(dtype=dtype, device=device), self.y.to(device), self.ids.to(device))


@dataclass
class TwoStageData:
    pretrain: Split
    pretrain_test: Split
    finetune: Split
    finetune_test: Split

    SPLITS = ("pretrain", "pretrain_test", "finetune", "finetune_test")

    def to(self, dtype: torch.dtype, device: torch.device) -> TwoStageData:
        return TwoStageData(*(getattr(self, s).to(dtype, device) for s in self.SPLITS))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{s}.{f}": getattr(getattr(self, s), f) for s in self.SPLITS for f in ("x", "y", "ids")}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> TwoStageData:
        return cls(*(Split(state[f"{s}.x"], state[f"{s}.y"], state[f"{s}.ids"]) for s in cls.SPLITS))


def check_inputs(name: str, x: np.ndarray, y: np.ndarray) -> None:
    """Fail before training on non-finite inputs or mismatched shapes, naming the example ids."""
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} inputs but {len(y)} labels")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        raise DataError(f"{name}: non-finite (NaN/Inf) inputs at example ids {bad[:20].tolist()}")


def _ids(split: Split, mask: torch.Tensor) -> list[int]:
    return split.ids[mask.cpu()][:20].tolist()


def check_split(name: str, split: Split, n_classes: int | None = None) -> None:
    """One split's data before training: matching lengths, finite inputs, integer labels in
    ``0..n_classes-1``, unique ids. :class:`DataError` names the split and the offending example ids."""
    if not len(split.x) == len(split.y) == len(split.ids):
        raise DataError(f"{name}: {len(split.x)} inputs, {len(split.y)} labels and {len(split.ids)} ids; they must match")
    if len(split) == 0:
        raise DataError(f"{name}: no examples")
    if split.x.is_floating_point() or split.x.is_complex():
        bad = ~torch.isfinite(split.x.reshape(len(split), -1)).all(dim=1)
        if bad.any():
            raise DataError(f"{name}: non-finite (NaN/Inf) inputs at example ids {_ids(split, bad)} ({int(bad.sum())} examples)")
    if split.y.is_floating_point() or split.y.dtype == torch.bool:
        raise DataError(f"{name}: labels have dtype {split.y.dtype}; expected integer class indices")
    bad = (split.y < 0) | (split.y >= n_classes) if n_classes is not None else split.y < 0
    if bad.any():
        allowed = f"0..{n_classes - 1}" if n_classes is not None else "0, 1, ..."
        raise DataError(f"{name}: labels {sorted(set(split.y[bad].tolist()))} outside {allowed} at example ids {_ids(split, bad)}")
    uniq, counts = torch.unique(split.ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{name}: duplicate example ids {uniq[counts > 1][:20].tolist()}")


def check_two_stage(name: str, data: TwoStageData) -> None:
    """Every split of both stages (:func:`check_split`), every class present in each training split, and
    one input shape per stage. Runs on any experiment's data before anything is trained."""
    for stage in ("pretrain", "finetune"):
        train, test = getattr(data, stage), getattr(data, f"{stage}_test")
        check_split(f"{name}/{stage}", train)
        n_classes = int(train.y.max()) + 1
        missing = sorted(set(range(n_classes)) - set(train.y.tolist()))
        if missing:
            raise DataError(f"{name}/{stage}: classes {missing} of 0..{n_classes - 1} have no training examples")
        check_split(f"{name}/{stage}_test", test, n_classes)
        if train.x.shape[1:] != test.x.shape[1:]:
            raise DataError(f"{name}: {stage} inputs have shape {tuple(train.x.shape[1:])} but {stage}_test inputs "
                            f"{tuple(test.x.shape[1:])}")
    if data.pretrain.x.shape[1:] != data.finetune.x.shape[1:]:
        raise DataError(f"{name}: pretrain inputs have shape {tuple(data.pretrain.x.shape[1:])} but finetune inputs "
                        f"{tuple(data.finetune.x.shape[1:])}; both stages share the body W")


def split_by_classes(
    name: str, x: np.ndarray, y: np.ndarray, classes: list[int], n_train: int, rng: np.random.Generator
) -> tuple[Split, Split]:
    """Keep ``classes`` (relabelled 0..C-1), shuffle with ``rng``, take ``n_train`` for training, rest test."""
    if not classes:
        raise DataError(f"{name}: the class list is empty")
    missing = [c for c in classes if not np.any(y == c)]
    if missing:
        raise DataError(f"{name}: classes {missing} have no examples (present: {sorted(set(y.tolist()))})")
    idx = np.flatnonzero(np.isin(y, classes))
    idx = idx[rng.permutation(len(idx))]
    if not 0 < n_train < len(idx):
        raise DataError(f"{name}: n_train={n_train} must be in [1, {len(idx) - 1}] (classes {classes} have {len(idx)} examples)")
    relabel = {c: i for i, c in enumerate(classes)}
    labels = np.array([relabel[int(c)] for c in y[idx]])
    parts = []
    for part in (slice(0, n_train), slice(n_train, None)):
        sel = idx[part]
        for c in range(len(classes)):
            if not np.any(labels[part] == c):
                raise DataError(f"{name}: class {classes[c]} is missing from a split; raise n_train or change the seed")
        parts.append(Split(torch.from_numpy(x[sel]), torch.from_numpy(labels[part]), torch.from_numpy(sel)))
    return parts[0], parts[1]



"""Bad data: refused before anything is trained, naming the data set (and split) and the example ids."""

from __future__ import annotations

import copy
import re
import textwrap

import numpy as np
import pytest
import torch

import inprocess
from msif.steps import train as train_steps
from msif.task.data import DataError, Split, TwoStageData, check_inputs, check_two_stage, split_by_classes

TINY = inprocess.load_config(".test/config/config.yaml")  # defaults filled in, as the workflow does


def toy_split(n: int, n_classes: int, start_id: int = 0, dim: int = 3) -> Split:
    x = torch.arange(n * dim, dtype=torch.float64).reshape(n, dim) / (n * dim)
    return Split(x, torch.arange(n) % n_classes, torch.arange(start_id, start_id + n))


def toy_data() -> TwoStageData:
    return TwoStageData(toy_split(12, 3, 0), toy_split(6, 3, 100), toy_split(8, 2, 200), toy_split(4, 2, 300))


def corrupt(split: str, how) -> TwoStageData:
    data = toy_data()
    how(getattr(data, split))
    return data


def set_x(s: Split, rows, value) -> None:
    s.x[rows, 0] = value


def replace(s: Split, **fields) -> None:
    for k, v in fields.items():
        setattr(s, k, v)


# (case, data, regex: the data set/split and the example ids or the shapes)
BAD_TWO_STAGE = [
    ("nan-input", lambda: corrupt("pretrain", lambda s: set_x(s, [2, 5], float("nan"))),
     r"toy/pretrain: non-finite \(NaN/Inf\) inputs at example ids \[2, 5\] \(2 examples\)"),
    ("inf-input-in-test", lambda: corrupt("finetune_test", lambda s: set_x(s, [1], float("inf"))),
     r"toy/finetune_test: non-finite \(NaN/Inf\) inputs at example ids \[301\]"),
    ("lengths-differ", lambda: corrupt("finetune", lambda s: replace(s, ids=s.ids[:-1])),
     r"toy/finetune: 8 inputs, 8 labels and 7 ids; they must match"),
    ("empty-split", lambda: corrupt("pretrain_test", lambda s: replace(s, x=s.x[:0], y=s.y[:0], ids=s.ids[:0])),
     r"toy/pretrain_test: no examples"),
    ("class-missing-from-training", lambda: corrupt("pretrain", lambda s: replace(s, y=torch.where(s.y == 1, 2, s.y))),
     r"toy/pretrain: classes \[1\] of 0\.\.2 have no training examples"),
    ("unseen-class-in-test", lambda: corrupt("finetune_test", lambda s: replace(s, y=torch.tensor([0, 1, 5, 1]))),
     r"toy/finetune_test: labels \[5\] outside 0\.\.1 at example ids \[302\]"),
    ("negative-label", lambda: corrupt("finetune", lambda s: replace(s, y=torch.tensor([0, 1, -1, 1, 0, 1, 0, 1]))),
     r"toy/finetune: labels \[-1\] outside 0, 1, \.\.\. at example ids \[202\]"),
    ("float-labels", lambda: corrupt("pretrain", lambda s: replace(s, y=s.y.double())),
     r"toy/pretrain: labels have dtype torch\.float64; expected integer class indices"),
    ("duplicate-ids", lambda: corrupt("pretrain", lambda s: replace(s, ids=torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 9]))),
     r"toy/pretrain: duplicate example ids \[3, 9\]"),
    ("input-shape-differs-train-test", lambda: corrupt("finetune", lambda s: replace(s, x=torch.zeros(8, 4, dtype=torch.float64))),
     r"toy: finetune inputs have shape \(4,\) but finetune_test inputs \(3,\)"),
    ("input-shapes-differ-across-splits", lambda: TwoStageData(toy_split(12, 3), toy_split(6, 3, 100), toy_split(8, 2, 200, dim=4),
                                                              toy_split(4, 2, 300, dim=4)),
     r"toy: pretrain inputs have shape \(3,\) but finetune inputs \(4,\); both stages share the body W"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in BAD_TWO_STAGE], ids=[c[0] for c in BAD_TWO_STAGE])
def test_bad_two_stage_data_is_refused_naming_split_and_ids(make, message):
    with pytest.raises(DataError, match=message):
        check_two_stage("toy", make())


def test_good_two_stage_data_passes():
    check_two_stage("toy", toy_data())


def test_source_arrays_checked_before_splitting():
    x, y = np.random.default_rng(0).random((10, 4)), np.arange(10) % 2
    x[[4, 7], 1] = np.nan
    with pytest.raises(DataError, match=r"digits: non-finite \(NaN/Inf\) inputs at example ids \[4, 7\]"):
        check_inputs("digits", x, y)
    with pytest.raises(DataError, match=r"digits: 10 inputs but 9 labels"):
        check_inputs("digits", x, y[:9])


def test_split_by_classes_refuses_bad_class_lists():
    x, y, rng = np.zeros((11, 2)), np.array([0] * 10 + [1]), np.random.default_rng(0)
    with pytest.raises(DataError, match=r"digits/pretrain: the class list is empty"):
        split_by_classes("digits/pretrain", x, y, [], 5, rng)
    with pytest.raises(DataError, match=r"digits/pretrain: classes \[7\] have no examples \(present: \[0, 1\]\)"):
        split_by_classes("digits/pretrain", x, y, [0, 7], 5, rng)
    with pytest.raises(DataError, match=r"digits/pretrain: class 1 is missing from a split"):
        split_by_classes("digits/pretrain", x, y, [0, 1], 5, rng)  # class 1 has one example: one split lacks it
    with pytest.raises(DataError, match=r"digits/pretrain: n_train=11 must be in \[1, 10\]"):
        split_by_classes("digits/pretrain", x, y, [0, 1], 11, rng)


def test_plugin_data_with_nan_fails_in_prepare_data_before_training(tmp_path, monkeypatch):
    """A user's plug-in is checked like the built-in data: prepare_data raises, and writes nothing."""
    (tmp_path / "bad_plugin.py").write_text(textwrap.dedent('''
        import torch
        from msif.task.data import Split, TwoStageData
        from msif.experiments.plugin import Plugin
        from msif.experiments.registry import BUILTIN
        from msif.experiments.registry import BUILTIN

        def data(config):
            def split(n, start):
                x = torch.rand(n, 64, generator=torch.Generator().manual_seed(start), dtype=torch.float64)
                return Split(x, torch.arange(n) % 2, torch.arange(start, start + n))
            d = TwoStageData(split(20, 0), split(10, 100), split(20, 200), split(10, 300))
            d.finetune.x[[3, 11], 5] = float("nan")
            return d

        def plugin():
            return Plugin("bad_plugin", data, BUILTIN["digits"].build_model)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = copy.deepcopy(TINY) | {"experiment": "bad_plugin:plugin"}
    out = tmp_path / "results/data/splits.pt"
    with pytest.raises(DataError, match=re.escape("bad_plugin/finetune: non-finite (NaN/Inf) inputs at example ids [203, 211]")):
        train_steps.prepare_data(cfg, str(out))
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_n_test_beyond_a_plugins_test_split_fails_in_prepare_data(tmp_path, monkeypatch):
    """The digits split sizes are checked at start (msif.config); a plug-in's only once its data are loaded."""
    (tmp_path / "small_plugin.py").write_text(textwrap.dedent('''
        import torch
        from msif.task.data import Split, TwoStageData
        from msif.experiments.plugin import Plugin
        from msif.experiments.registry import BUILTIN
        from msif.experiments.registry import BUILTIN

        def data(config):
            def split(n, start):
                x = torch.rand(n, 64, generator=torch.Generator().manual_seed(start), dtype=torch.float64)
                return Split(x, torch.arange(n) % 2, torch.arange(start, start + n))
            return TwoStageData(split(20, 0), split(10, 100), split(20, 200), split(3, 300))

        def plugin():
            return Plugin("small_plugin", data, BUILTIN["digits"].build_model)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = copy.deepcopy(TINY) | {"experiment": "small_plugin:plugin"}
    out = tmp_path / "results/data/splits.pt"
    with pytest.raises(DataError, match=re.escape("influence.n_test=4 exceeds the finetuning test split of experiment "
                                                  "'small_plugin:plugin' (3 examples); allowed 1..3")):
        train_steps.prepare_data(cfg, str(out), n_test=4)
    assert not out.exists()
    train_steps.prepare_data(cfg, str(out), n_test=3)
    assert out.exists()

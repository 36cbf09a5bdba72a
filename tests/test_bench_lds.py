"""``python -m msif.bench.lds_protocol`` (``make bench-lds``): dattri's LDS, the MNIST-5k split, the ground-truth cache,
and the smoke run (seconds; dattri's rows skipped with the reason where dattri is not installed)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT
from msif.bench import lds_protocol as lp
from msif.experiments.datasets import DataMissingError
from msif.validation.metrics import lds, lds_predictions, lds_subsets

CONFIG = str(ROOT / "config/bench/lds-protocol.yaml")


def test_dattri_lds_is_msif_lds_of_the_removal_effect():
    """Σ over S_j against −loss (dattri) ranks as Σ over the complement against +loss (msif): the same LDS, per test."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    subsets = lds_subsets(40, 0.5, 30, seed=1)
    actual = np.stack([-scores[:, s].sum(1).numpy() for s in subsets]) + np.random.default_rng(0).normal(0, 2.0, (30, 6))
    value, per_test = lp.dattri_lds(scores, subsets, actual)
    ours, ours_per_test = lds(lds_predictions(scores, subsets), actual)
    np.testing.assert_allclose(per_test, ours_per_test, atol=1e-12)
    assert value == pytest.approx(ours, abs=1e-12) and 0.3 < value < 0.99  # informative, not perfect
    try:
        from dattri.metric import lds as their_lds
    except ImportError:
        return
    theirs = their_lds(scores.T, (torch.as_tensor(-actual), torch.tensor(subsets)))[0]  # dattri flips the losses itself
    np.testing.assert_allclose(theirs.numpy(), per_test, atol=1e-6)


@pytest.fixture(scope="module")
def data():
    try:
        return lp.split(lp.load_protocol(CONFIG))
    except DataMissingError as err:
        pytest.skip(str(err))


def test_split_is_seeded_stratified_and_balanced_in_every_prefix(data):
    assert len(data["y_train"]) == 4500 and len(data["y_test"]) == 500 and data["x_train"].shape[1] == 14 * 14  # pooled 2×2
    assert not set(data["train_ids"].tolist()) & set(data["test_ids"].tolist())
    assert torch.bincount(data["y_test"]).tolist() == [50] * 10
    assert torch.bincount(data["y_test"][:100]).tolist() == [10] * 10  # the MLP's n_test = 100 prefix
    assert float(data["x_train"].min()) == 0.0 and 0.99 < float(data["x_train"].max()) <= 1.0
    assert torch.equal(lp.split(lp.load_protocol(CONFIG))["test_ids"], data["test_ids"])


def test_config_keys_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config/bench/lds-protocol.yaml").read_text().replace("n_boot:", "n_bootstrap:"))
    with pytest.raises(ValueError, match="n_bootstrap"):
        lp.load_protocol(str(bad))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("lds")
    with warnings.catch_warnings():  # the peers' own deprecations (dattri, torch.jit) where they are installed
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
        df = lp.main(["--smoke", "--out", str(out), "--threads", "1"])
    return out, df


def test_smoke_writes_every_row_and_file(smoke):
    out, df = smoke
    assert (out / "lds_protocol.png").stat().st_size > 10_000 and (out / "lds_protocol.json").exists()
    assert "dattri's published values" in (out / "lds_protocol.md").read_text()
    assert pd.read_csv(out / "lds_protocol.csv").columns.tolist() == lp.COLUMNS
    config = lp.load_protocol(CONFIG, smoke=True)
    expected = {(name, lib, meth) for name, m in config["models"].items() for lib in ("msif", "dattri") for meth in m[lib]}
    assert set(zip(df.model, df.library, df.method, strict=True)) == expected
    msif = df[df.library == "msif"]
    assert msif.lds.between(-1, 1).all() and (msif.lds_lo <= msif.lds + 1e-12).all() and (msif.lds <= msif.lds_hi + 1e-12).all()
    assert (df.n_subsets == 8).all() and (df.n_train == 200).all() and (df.n_test == 20).all()
    mlp = msif[msif.model == "mlp"]  # two full-data models attributed, the LDS their average
    assert (mlp.models == 2).all() and mlp.notes.str.contains("LDS per model").all()
    dattri = df[df.library == "dattri"]
    assert (dattri.lds.notna() | dattri.notes.str.startswith("skipped:")).all()  # run, or skipped with the reason


def test_smoke_cg_reaches_the_exact_scores_lds(smoke):
    """LR: CG run to 1e-8 gives the exact solve's scores, hence the same LDS; an influence function beats grad-dot."""
    lr = smoke[1].query("model == 'lr' and library == 'msif'").set_index("method")
    assert lr.loc["cg", "lds"] == pytest.approx(lr.loc["exact", "lds"], abs=1e-9)
    assert lr.loc["exact", "lds"] > lr.loc["tracin", "lds"]


def test_ground_truth_is_cached(smoke, monkeypatch):
    """A rerun with the same settings retrains nothing: the ground truth comes from <out>/lds_protocol/smoke/."""
    out = smoke[0]
    calls = []
    real = lp.train
    monkeypatch.setattr(lp, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = lp.load_protocol(CONFIG, smoke=True)
    m = config["models"]["lr"]
    subsets, actual = lp.ground_truth("lr", m, config, lp.split(config), out / "lds_protocol" / "smoke" / "lr")
    assert calls == [] and len(subsets) == 8 and actual.shape == (8, 20) and np.isfinite(actual).all()
    m = {**m, "seeds": [5]}  # another seed: another ground truth, retrained
    lp.ground_truth("lr", m, config, lp.split(config), out / "lds_protocol" / "smoke" / "lr")
    assert len(calls) == 8


def test_sgd_training_is_a_function_of_its_seed():
    """The MLP's dropout masks come from the model's seed: the same seed gives the same model whatever ran before."""
    m = lp.load_protocol(CONFIG, smoke=True)["models"]["mlp"]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 12, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    a = lp.ParamSpec.flatten(lp.train(m, x, y, seed=3))
    torch.rand(5)  # the global generator moves on
    assert torch.equal(a, lp.ParamSpec.flatten(lp.train(m, x, y, seed=3)))
    assert not torch.equal(a, lp.ParamSpec.flatten(lp.train(m, x, y, seed=4)))


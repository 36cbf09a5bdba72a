"""``python -m msif.bench.scale --smoke`` (config/scale.yaml shrunk to seconds): the tables it writes and what they must say.

Not a timing test: it checks that the benchmark runs every path (agreement rows for cg, ekfac, pcg and
pcg@k; cost rows with the low-rank query) and that the numbers mean what the columns claim.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from conftest import ROOT
from msif.bench import scale as bench_scale
from msif.experiments import datasets


@pytest.fixture(scope="module")
def scale_config():
    try:
        datasets.fashion_mnist_files("train"), datasets.mnist5k_path()
    except datasets.DataMissingError as err:
        if not os.environ.get("CI"):
            pytest.skip(f"Fashion-MNIST / MNIST-5k not installed and CI unset: {err}")
        raise
    return str(ROOT / "config/scale.yaml")


def test_bench_scale_writes_agreement_and_cost_tables(scale_config, tmp_path):
    out = tmp_path / "bench"
    bench_scale.main(["--config", scale_config, "--smoke", "--out", str(out), "--threads", "1",
                      "--stages", "pretrain", "--solvers", "cg", "ekfac", "pcg", "pcg@1", "cg@1", "--query-ranks", "1", "200"])
    agree = pd.read_csv(out / "scale_solvers.csv")
    assert tuple(agree.columns) == bench_scale.ScaleBench.AGREEMENT_COLUMNS and (agree.reference == "cg").all()
    agree = agree.set_index(["scenario", "solver"])
    for scenario in ("fixed", "updated"):
        assert agree.loc[(scenario, "cg"), "pearson"] > 0.99999 and agree.loc[(scenario, "pcg"), "pearson"] > 0.99999
        assert agree.loc[(scenario, "pcg"), "converged"] and not agree.loc[(scenario, "pcg@1"), "converged"]
        # one Galerkin step on EK-FAC's own directions cannot be worse than EK-FAC (A-norm), nor cost more than t products
        assert agree.loc[(scenario, "pcg@1"), "residual"] < agree.loc[(scenario, "ekfac"), "residual"]
        assert agree.loc[(scenario, "pcg@1"), "hvps"] == 3 and agree.loc[(scenario, "ekfac"), "hvps"] == 0
    cost = pd.read_csv(out / "scale_cost.csv").set_index("n_test")
    assert list(cost.index) == [1, 3] and (cost["n_pretrain"] == 60).all()
    assert (out / "scale_solvers.png").stat().st_size > 10_000 and (out / "scale_cost.json").exists()
    # rank 200 exceeds every layer's min(out, in): the low-rank query is the exact score; rank 1 is not
    assert (cost["scores_rank200_pearson"] > 1 - 1e-9).all()
    assert cost.loc[3, "scores_rank1_pearson"] < 1 - 1e-6
    for col in ("epoch_s", "scores_s", "warm_epochs", "scores_rank1_epochs", "pretrain_hvps"):
        assert (cost[col] >= 0).all(), col

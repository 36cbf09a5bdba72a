"""``python -m msif.bench.solvers --smoke`` (``make bench`` on the default config shrunk to seconds): the tables it
writes and what they must say — above all, CG run to its tolerance gives the exact scores.

Also the benchmarks' shared command line: one seed of the config (``--seed``, default the first of ``seeds``)
and the solver names, all from :data:`msif.arguments.SOLVERS`.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from msif.arguments import SOLVERS
from msif.bench import solvers
from msif.bench.base import STAGES, config_for, solver_spec
from msif.bench.scale import ScaleBench
from msif.bench.solvers import COST_SOLVERS, GGN_SOLVERS, SolversBench
from msif.errors import ConfigError

CONFIG = str(ROOT / "config/config.yaml")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    solvers.main(["--config", CONFIG, "--smoke", "--out", str(out)])
    return out


def test_smoke_writes_every_table_with_its_columns(smoke):
    agree, cost = pd.read_csv(smoke / "solvers.csv"), pd.read_csv(smoke / "cost.csv")
    assert tuple(agree.columns) == SolversBench.AGREEMENT_COLUMNS and tuple(cost.columns) == SolversBench.COST_COLUMNS
    scenarios = config_for(CONFIG)["scenarios"]
    assert len(agree) == len(scenarios) * (len(SOLVERS) * len(STAGES) + len(GGN_SOLVERS))
    assert list(dict.fromkeys(agree.solver)) == list(SOLVERS) and set(agree.curvature) == {"hessian", "ggn"}
    assert list(dict.fromkeys(cost.solver)) == list(COST_SOLVERS) and list(cost.n_test.unique()) == [1, 3]
    meta = json.loads((smoke / "solvers.json").read_text())
    assert meta["seed"] == 0 and meta["smoke"] and meta["dtype"] == "float64" and meta["n_pretrain"] == 60
    assert (smoke / "cost.json").exists() and (smoke / "solvers.png").stat().st_size > 10_000


def test_cg_equals_exact(smoke):
    """``make bench``'s claim: CG (and EK-FAC-preconditioned CG) to tolerance gives the exact scores, in every stage."""
    h = pd.read_csv(smoke / "solvers.csv").query("curvature == 'hessian'")
    for solver in ("exact", "cg", "pcg"):
        rows = h[h.solver == solver]
        assert len(rows) == 6 and (rows.pearson_min >= 0.999).all() and rows.converged.all(), rows
        assert (rows.residual < 1e-8).all() and (rows.top10_overlap == 1).all()
    exact = h[h.solver == "exact"]
    assert (exact.pearson > 1 - 1e-12).all() and (exact.hvps == 0).all() and (exact.fit_seconds > 0).all()
    assert (h[h.solver == "cg"].hvps > 0).all()


def test_cost_rows_add_up(smoke):
    cost = pd.read_csv(smoke / "cost.csv").set_index(["solver", "n_test"])
    parts = cost[["finetune_s", "cross_stage_s", "pretrain_s", "scores_s"]].sum(axis=1)
    pd.testing.assert_series_equal(parts, cost.cold_s, check_names=False)
    assert (cost.warm_s <= cost.cold_s).all() and (cost.epoch_s > 0).all()
    assert (cost.loc["exact", "fit_s"] > 0).all() and (cost.loc["cg", "fit_s"] == 0).all()
    assert (cost.loc["cg", "pretrain_residual"] < 1e-8).all()


def test_one_seed_of_the_config():
    assert config_for(CONFIG)["seed"] == 0 and "seeds" not in config_for(CONFIG)
    assert config_for(CONFIG, seed=2)["seed"] == 2
    with pytest.raises(ConfigError, match="seed=7"):
        config_for(CONFIG, seed=7)
    tiny = config_for(str(ROOT / ".test/config/config.yaml"), smoke=True)
    assert tiny["seed"] == 0 and tiny["dtype"] == "float64" and tiny["data"]["n_pretrain"] == 60


def test_the_config_is_validated_as_the_workflow_validates_it(tmp_path):
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    assert config_for(CONFIG)["training"]["newton_steps"] == 8  # a schema default, filled in
    config["influence"]["solvers"] = ["exact", "newton"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"influence\.solvers"):
        config_for(str(tmp_path / "bad.yaml"))


def test_solver_names_come_from_the_one_list():
    assert SolversBench.DEFAULT_SOLVERS == SOLVERS and "exact" not in ScaleBench.CHOICES
    assert set(ScaleBench.CHOICES) | {"exact"} == set(SOLVERS)
    assert solver_spec("cg@3+ekfac") == [("cg", 3), ("ekfac", None)]
    for bad in ("newton", "ekfac@2", "cg@0", "cg+cg+cg"):
        with pytest.raises(ValueError, match="allowed"):
            solver_spec(bad)
    p = SolversBench.parser("bench", "")
    assert SolversBench.parse(p, ["--solvers", "pcg@2"]).solvers == ["pcg@2"]
    with pytest.raises(SystemExit):
        SolversBench.parse(p, ["--solvers", "cg+exact"])
    with pytest.raises(SystemExit):
        ScaleBench.parse(ScaleBench.parser("scale", ""), ["--solvers", "exact"])
    assert SolversBench.parse(p, []).cost_n_test == [1, 10, 100]
    assert SolversBench.parse(p, ["--smoke"]).cost_n_test == [1, 3]  # --smoke's defaults; a flag given still wins:
    assert SolversBench.parse(SolversBench.parser("bench", ""), ["--smoke", "--cost-n-test", "2"]).cost_n_test == [2]

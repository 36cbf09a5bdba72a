"""The tiny config end to end through Snakemake, then a second run that does nothing."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import snakemake

pytestmark = pytest.mark.workflow

TINY = ".test/config/config.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import copy_workflow

    wd = copy_workflow(tmp_path_factory.mktemp("wf"))
    proc = snakemake(wd, "--configfile", TINY)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return wd


def test_tiny_workflow_writes_the_contract(tiny_run):
    res = tiny_run / "results/tiny"
    lko = pd.read_csv(res / "validation/leave_k_out.csv")
    assert list(lko.columns) == ["scenario", "solver", "test_id", "selection", "k", "predicted", "actual"]
    summary = pd.read_csv(res / "validation/summary.csv")
    assert list(summary.columns)[:6] == ["scenario", "solver", "pearson", "spearman", "n_sets", "noise_floor"]
    assert set(summary.scenario) == {"fixed", "updated"}
    assert (summary.pearson > 0.9).all(), summary
    html = (res / "report.html").read_text()
    assert "Predicted vs actual" in html and "data:image/png;base64," in html


def test_second_run_does_nothing(tiny_run):
    proc = snakemake(tiny_run, "--configfile", TINY, "-n")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_config_edit_reruns_only_dependents(tiny_run, tmp_path):
    import yaml

    cfg = yaml.safe_load((tiny_run / TINY).read_text())
    cfg["validation"]["noise_repeats"] = 3
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    proc = snakemake(tiny_run, "--configfile", str(edited), "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rule in ("noise_floor", "retrain", "compare", "report"):
        assert rule in out
    for rule in ("pretrain ", "finetune ", "scores", "pretrain_hessian"):
        assert rule not in out, out

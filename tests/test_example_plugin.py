"""The example plug-in (examples/conv_digits.py) through the same DAG, end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from conftest import ROOT, copy_workflow

pytestmark = pytest.mark.workflow


def test_example_plugin_runs_through_the_dag(tmp_path):
    wd = copy_workflow(tmp_path)
    shutil.copytree(ROOT / "examples", wd / "examples")
    env = os.environ | {"PYTHONPATH": str(wd / "examples")}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "examples/config.yaml"],
                          cwd=wd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = wd / "results/conv_digits"
    summary = pd.read_csv(res / "validation/summary.csv")
    assert set(summary.scenario) == {"fixed", "updated"} and summary.n_sets.eq(12).all()
    assert (summary.pearson > 0.8).all(), summary
    assert (res / "report.html").stat().st_size > 10_000

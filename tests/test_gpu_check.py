"""``python -m msif.bench.gpu_check`` (``make gpu-check``): the parts that run without a GPU.

The whole check needs CUDA; here: its refusal without one, the targets it builds, the copy of the trained
optima (times kept, so ``--rerun-triggers mtime`` does not retrain) and the agreement it computes.
"""

from __future__ import annotations

import os

import pytest
import torch

from msif import io
from msif.bench import gpu_check


def test_refuses_without_cuda(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--smoke"]) == 2
    assert "no CUDA device visible" in capsys.readouterr().err


def test_one_target_per_seed_scenario_and_solver():
    config = {"seeds": [0, 2], "scenarios": ["fixed", "updated"], "influence": {"solvers": ["exact", "cg"]}}
    targets = gpu_check.score_targets(config, "r")
    assert len(targets) == 8 and len(set(targets)) == 8
    assert "results/r/seed2/influence/updated/cg/scores.pt" in targets


def test_copy_keeps_the_training_and_its_times(tmp_path):
    src, dst = tmp_path / "a" / "results" / "x", tmp_path / "b" / "results" / "y"
    for part in ("data", "train", "influence"):
        (src / "seed0" / part).mkdir(parents=True)
        (src / "seed0" / part / "f.pt").write_text(part)
        os.utime(src / "seed0" / part / "f.pt", (1_000_000, 1_000_000))
    gpu_check.copy_training(src, dst)
    assert sorted(p.name for p in (dst / "seed0").iterdir()) == ["data", "train"]  # never the influence it must recompute
    assert (dst / "seed0" / "train" / "f.pt").stat().st_mtime == 1_000_000


def test_agreement_is_the_relative_frobenius_difference(tmp_path):
    scores = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)
    bump = torch.zeros_like(scores)
    bump[0, 0] = 1e-3 * torch.linalg.norm(scores)
    target = "results/r/seed0/influence/fixed/cg/scores.pt"
    for d, s in (("cpu", scores), ("two", scores + bump)):
        (tmp_path / d / "results/r/seed0/influence/fixed/cg").mkdir(parents=True)
        io.save_tensors(tmp_path / d / target, {"scores": s})
    for tol, ok in ((2e-3, True), (5e-4, False)):
        row = gpu_check.compare_scores(tmp_path / "cpu", tmp_path / "two", [target], [target], tol).iloc[0]
        assert row.rel_err == pytest.approx(1e-3) and row.max_abs_err == pytest.approx(float(bump[0, 0]))
        assert (row.seed, row.scenario, row.solver, bool(row.ok)) == (0, "fixed", "cg", ok)

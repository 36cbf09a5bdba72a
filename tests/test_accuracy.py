"""The accuracy of the models explained stands beside every faithfulness figure: sidecars, summaries, tables, report, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from inprocess import load_config, paths, run_scores
from msif import cli, io
from msif.report.page import accuracy_flags, verdict
from msif.report.tables import markdown, paper_summary
from msif.steps.common import experiment
from msif.task.objectives import accuracy
from msif.validation.compare import ACCURACY_COLUMNS, with_accuracy
from msif.validation.metrics import pooled_summary


def test_accuracy_counts_argmax_hits_and_refuses_non_class_outputs():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.75
    assert np.isnan(accuracy(logits[:, 0], torch.tensor([0, 1, 1, 0])))  # not (N, C) logits
    assert np.isnan(accuracy(logits, torch.tensor([0.0, 1.0, 1.0, 0.0])))  # regression targets


def test_training_steps_record_the_accuracy_the_parameters_give(tmp_path):
    config = load_config(".test/config/config.yaml")
    run_scores(config, tmp_path, scenarios=["fixed"])
    p = paths(tmp_path, config)
    exp = experiment(config, str(p["data"]))
    pt_params = io.load_tensors(p["pretrain"])["params"]
    ft_params = io.load_tensors(p["finetune"]("fixed"))["params"]
    pt = exp.pretrain_objective()
    w, u = pt.split(pt_params)
    expect_pt = float((exp.model.pt_logits(w, u, exp.data.pretrain_test.x).argmax(1) == exp.data.pretrain_test.y).double().mean())
    expect_ft = float((exp.model.ft_logits(w, ft_params, exp.data.finetune_test.x).argmax(1) == exp.data.finetune_test.y).double().mean())
    assert io.load_meta(p["pretrain"])["accuracy"]["test"] == pytest.approx(expect_pt, abs=0)
    assert io.load_meta(p["finetune"]("fixed"))["accuracy"]["test"] == pytest.approx(expect_ft, abs=0)
    assert 0.5 < expect_pt <= 1.0  # two separable digit classes: far above chance


def summary_rows(seed, ft_fixed, ft_updated):
    rows = pd.DataFrame({"scenario": ["fixed", "updated"], "method": "multi_stage", "solver": "exact", "seed": seed,
                         "pearson": [0.95, 0.93], "spearman": [0.9, 0.9], "slope": 1.0, "pearson_lo": 0.9, "pearson_hi": 0.99,
                         "n_sets": 12, "lds_warm": np.nan, "lds_warm_lo": np.nan, "lds_warm_hi": np.nan, "noise_floor": 1e-9,
                         "noise_floor_seed": 1e-3})
    return with_accuracy(rows, {"train": 1.0, "test": 0.99}, {"fixed": {"train": 0.6, "test": ft_fixed},
                                                               "updated": {"train": 0.95, "test": ft_updated}},
                         {"train": 1.0, "test": 0.97})


def test_summary_rows_carry_each_scenarios_accuracy_and_the_pooled_rows_their_mean():
    per_seed = pd.concat([summary_rows(0, 0.50, 0.90), summary_rows(1, 0.60, 0.94)], ignore_index=True)
    assert set(ACCURACY_COLUMNS) <= set(per_seed.columns)
    assert per_seed.loc[per_seed.scenario == "fixed", "ft_test_accuracy"].tolist() == [0.50, 0.60]
    lko = pd.DataFrame({"scenario": ["fixed"] * 3 + ["updated"] * 3, "method": "multi_stage", "solver": "exact",
                        "predicted": [1.0, 2.0, 3.0] * 2, "actual": [1.1, 1.9, 3.2] * 2, "seed": 0, "test_id": [0, 0, 1] * 2})
    pooled = pooled_summary(lko, pd.DataFrame(columns=["scenario", "method", "solver"]), per_seed, n_boot=10, seed=0)
    all_rows = pooled[pooled.seed == "all"].set_index("scenario")
    assert all_rows.loc["fixed", "ft_test_accuracy"] == pytest.approx(0.55)
    assert all_rows.loc["updated", "ft_test_accuracy"] == pytest.approx(0.92)
    assert all_rows.loc["fixed", "pt_test_accuracy"] == pytest.approx(0.99)
    assert (all_rows.scratch_test_accuracy == 0.97).all()
    md = markdown(paper_summary(pooled, alpha=0.5))
    assert "finetune test acc." in md and "| 0.550 |" in md and "| 0.920 |" in md
    assert "from-scratch test acc." in md and "| 0.970 |" in md


def test_the_report_flags_a_model_below_min_accuracy_and_keeps_its_rows():
    summary = summary_rows("0", 0.50, 0.90)
    flags = accuracy_flags(summary, 0.8)
    assert len(flags) == 1 and "0.500, below validation.min_accuracy = 0.8" in flags[0] and "Scenario A" in flags[0]
    page = verdict(summary, [0], 0.8)
    assert "test accuracy 0.990 on the pretraining task" in page and "Scenario A 0.500, Scenario B 0.900" in page
    assert "trained from scratch on the finetuning data: 0.970" in page
    assert "verdict warn" in page  # Pearson ≥ 0.9 alone does not make it a pass
    assert "verdict ok" in verdict(summary_rows("0", 0.85, 0.90), [0], 0.8)


def test_show_top_prints_the_accuracy_of_the_model_explained(tmp_path, capsys):
    scores = torch.tensor([[0.3, -0.1]], dtype=torch.float64)
    io.save_tensors(tmp_path / "r/seed0/influence/fixed/exact/scores.pt",
                    {"scores": scores, "test_ids": torch.tensor([11]), "pretrain_ids": torch.tensor([100, 101])})
    io.save_tensors(tmp_path / "r/seed0/train/finetune_fixed.pt", {"params": torch.zeros(2)}, accuracy={"train": 0.9, "test": 0.875})
    assert cli.main(["show-top", "r", "11", "-k", "1", "--results", str(tmp_path)]) == 0
    assert "accuracy train 0.900, test 0.875" in capsys.readouterr().out
    assert cli.main(["show-top", "r", "11", "-k", "1", "--results", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["finetune_accuracy"] == {"train": 0.9, "test": 0.875}


TINY_MIN_ACCURACY = 0.85  # the tiny config's finetuned models, both scenarios (measured: A 0.885, B 0.984)


def finetuned_accuracy(config: dict, root) -> dict:
    """Train the config's two stages in-process; the finetuned test accuracy per scenario (the sidecars' record)."""
    from msif.steps import train as train_steps

    p = paths(root, config)
    train_steps.prepare_data(config, str(p["data"]), n_test=config["influence"]["n_test"])
    train_steps.pretrain(config, str(p["data"]), str(p["pretrain"]))
    out = {}
    for s in config["scenarios"]:
        train_steps.finetune(config, s, str(p["data"]), str(p["pretrain"]), str(p["finetune"](s)))
        out[s] = io.load_meta(p["finetune"](s))["accuracy"]["test"]
    return out


def test_the_tiny_models_learn_their_task_where_the_old_class_split_did_not(tmp_path, tiny_run):
    """#15: the models explained must work. The tiny run's finetuned models (seven pretraining classes, two new ones)
    clear TINY_MIN_ACCURACY in both scenarios; the old split (pretrain on two classes, finetune on two others) leaves a
    frozen body whose features do not transfer: scenario A at chance."""
    config = load_config(".test/config/config.yaml")
    run = tiny_run / "results" / config["run"] / "seed0" / "train"
    tiny = {s: io.load_meta(run / f"finetune_{s}.pt")["accuracy"]["test"] for s in config["scenarios"]}
    assert min(tiny.values()) >= TINY_MIN_ACCURACY, tiny
    old = dict(config, data=dict(config["data"], pretrain_classes=[0, 1], finetune_classes=[2, 3]))
    before = finetuned_accuracy(old, tmp_path)
    assert before["fixed"] < TINY_MIN_ACCURACY - 0.2, before  # measured 0.506
    assert before["updated"] >= TINY_MIN_ACCURACY  # updating W rescues it: the failure is the frozen features'


def test_the_scratch_reference_learns_the_finetuning_task_without_pretraining(tmp_path):
    """Rule scratch: the same architecture trained on the finetuning data alone, to a minimum (the stopping rule met),
    learns the tiny finetuning task (7 against 8: measured train 1.000, test 0.994), above the old split's frozen body
    (0.506, test_the_tiny_models_learn_their_task_where_the_old_class_split_did_not)."""
    from msif.steps import train as train_steps

    config = load_config(".test/config/config.yaml")
    data, out = tmp_path / "splits.pt", tmp_path / "scratch.json"
    train_steps.prepare_data(config, str(data))
    train_steps.scratch(config, str(data), str(out))
    rec = io.read_json(out)
    assert rec["training"]["grad_norm"] <= config["training"]["grad_tol"], rec["training"]
    assert rec["accuracy"]["train"] == 1.0 and rec["accuracy"]["test"] >= 0.95, rec["accuracy"]

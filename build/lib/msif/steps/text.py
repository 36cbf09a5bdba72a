"""Workflow steps of the text experiment's TracIn part (rules in workflow/rules/text.smk). Never imports Snakemake.

    tracin_train  : SGD finetuning of (E, Θ) from the pretrained E, checkpoints with their learning rates
    tracin_scores : every method's (n_test, n_finetune) scores + TracIn-WE word-level scores
    case_sets     : each method's top/bottom-k deletion sets per test example, plus random ones
    case_retrain  : retrain without every set under one seed (vmapped), Δ predicted-class probability and loss
    case_table    : all seeds joined (case_deletion.csv) and the per-method summary
"""

from __future__ import annotations

import logging
import time

import pandas as pd
import torch

import msif
from msif import io
from msif.experiments.text import vocabulary
from msif.influence import tracin
from msif.influence.tracin import METHODS, Checkpoint, losses, sgd
from msif.steps.common import experiment, train_args
from msif.validation import case_deletion
from msif.validation.case_deletion import deletion_sets, summarize

log = logging.getLogger("msif")


def _tracin_args(config: dict) -> dict:
    return {**train_args(config), "tracin": config["tracin"]}


def _sgd_args(config: dict) -> dict:
    t = config["tracin"]
    return {k: t[k] for k in ("epochs", "batch_size", "lr", "lr_decay", "l2")}


def _start(exp, pretrain_path: str, config: dict, seed: int) -> torch.Tensor:
    """``[E_pt, Θ_0(seed)]``: the pretrained embedding and a seeded classifier head."""
    pt_params = io.load_tensors(pretrain_path, train_args(config))["params"].to(exp.device)
    _, _, theta0 = exp.model.init_params(seed, exp.dtype, exp.device)
    return torch.cat([pt_params[: exp.model.w_spec.numel], theta0])


def _accuracy(exp, params: torch.Tensor) -> float:
    p_e = exp.model.w_spec.numel
    test = exp.data.finetune_test
    return float((exp.model.ft_logits(params[:p_e], params[p_e:], test.x).argmax(1) == test.y).double().mean())


def tracin_train(config: dict, data_path: str, pretrain_path: str, out: str) -> None:
    """SGD finetuning of the whole classifier with checkpoints ``θ_c`` (start of each epoch) and rates ``η_c``."""
    exp = experiment(config, data_path)
    t0 = time.perf_counter()
    params0 = _start(exp, pretrain_path, config, config["seed"])
    final, ckpts = sgd(exp.model, params0, exp.data.finetune, seed=config["seed"], **_sgd_args(config))
    acc = _accuracy(exp, final)
    train_loss = float(losses(exp.model, final, exp.data.finetune.x, exp.data.finetune.y).mean())
    log.info("tracin_train: %d epochs, test accuracy %.3f, train loss %.4f, %.1fs", len(ckpts), acc, train_loss, time.perf_counter() - t0)
    io.save_tensors(out, {"checkpoints": torch.stack([c.params for c in ckpts]), "lrs": torch.tensor([c.lr for c in ckpts]),
                          "final": final}, args=_tracin_args(config), test_accuracy=acc, train_loss=train_loss)


def tracin_scores(config: dict, data_path: str, train_path: str, out: str) -> None:
    """Scores of every method for the first ``tracin.n_test`` test sentences, w.r.t. each one's predicted class."""
    exp = experiment(config, data_path)
    art = io.load_tensors(train_path, _tracin_args(config), device=exp.device)
    ckpts = [Checkpoint(p, float(lr)) for p, lr in zip(art["checkpoints"], art["lrs"], strict=True)]
    final, tr = art["final"], config["tracin"]
    test = exp.data.finetune_test.subset(torch.arange(tr["n_test"], device=exp.device))
    p_e = exp.model.w_spec.numel
    predicted = exp.model.ft_logits(final[:p_e], final[p_e:], test.x).argmax(1)
    t0 = time.perf_counter()
    scores, words = tracin.tracin_scores(exp.model, ckpts, final, exp.data.finetune, test.x, predicted, tr["top_tokens"], tr["l2"],
                                  tr["damping"], word_tests=min(tr["word_tests"], tr["n_test"]))
    log.info("tracin_scores: %s of shape %s in %.1fs", sorted(scores), tuple(scores["tracin"].shape), time.perf_counter() - t0)
    io.save_tensors(out, {**{f"scores.{k}": v for k, v in scores.items()}, "words": words, "predicted": predicted, "test_y": test.y,
                          "test_ids": test.ids, "train_ids": exp.data.finetune.ids},
                    args=_tracin_args(config), methods=list(METHODS), vocab=vocabulary(config),
                    convention="removal effect on the test example's predicted-class loss; positive = proponent (" + msif.SCORE_CONVENTION + ")")


def load_scores(path: str) -> dict[str, torch.Tensor]:
    art = io.load_tensors(path)
    return {k.split(".", 1)[1]: v for k, v in art.items() if k.startswith("scores.")}


def case_deletion_sets(config: dict, scores_path: str, out: str) -> None:
    sets = deletion_sets(load_scores(scores_path), config["tracin"]["ks"], config["seed"])
    io.write_json(out, {"sets": sets})


def case_deletion_retrain(config: dict, seed: int, data_path: str, pretrain_path: str, scores_path: str, sets_path: str, out: str) -> None:
    """Retrain the classifier without every deletion set (and without none) from ``[E_pt, Θ_0(seed)]``, batch order ``seed``."""
    exp = experiment(config, data_path)
    art = io.load_tensors(scores_path)
    test = exp.data.finetune_test.subset(torch.arange(config["tracin"]["n_test"], device=exp.device))
    sets = io.read_json(sets_path)["sets"]
    t0 = time.perf_counter()
    table = case_deletion.retrain(exp.model, _start(exp, pretrain_path, config, seed), exp.data.finetune, test.x, art["predicted"].to(exp.device),
                    sets, _sgd_args(config), seed)
    table.insert(3, "test_id", [int(test.ids[t]) for t in table.test_index])
    log.info("case_retrain seed %d: %d sets in %.1fs", seed, len(sets), time.perf_counter() - t0)
    io.write_text(out, table.to_csv(index=False))


def case_deletion_table(config: dict, paths: list[str], out: str, summary_out: str) -> None:
    table = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    summary = summarize(table)
    log.info("case deletion summary:\n%s", summary.to_string(index=False))
    io.write_text(out, table.to_csv(index=False))
    io.write_text(summary_out, summary.to_csv(index=False))

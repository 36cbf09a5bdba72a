"""Steps of ``workflow/rules/train.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import logging

import torch

from msif import io
from msif.experiments.registry import load_data
from msif.steps.common import data_args, experiment, finetune_args, minimum, train_args
from msif.task.data import DataError
from msif.task.objectives import FinetuneObjective
from msif.task.training import TrainingError
from msif.validation import health

log = logging.getLogger("msif")



def prepare_data(config: dict, out: str, n_test: int | None = None) -> None:
    """Load and check the two stages' data; with ``n_test`` (influence.n_test), check the test split holds it."""
    data = load_data(config)
    sizes = {s: len(getattr(data, s)) for s in data.SPLITS}
    log.info("data %s: %s", config["experiment"], sizes)
    if n_test is not None and n_test > sizes["finetune_test"]:
        raise DataError(f"influence.n_test={n_test} exceeds the finetuning test split of experiment {config['experiment']!r} "
                        f"({sizes['finetune_test']} examples); allowed 1..{sizes['finetune_test']}")
    io.save_tensors(out, data.state_dict(), args=data_args(config), sizes=sizes)


def pretrain(config: dict, data_path: str, out: str) -> None:
    """Pretrain (W, U) from the seeded initialisation to a minimum of L_pt."""
    exp = experiment(config, data_path)
    w, u, _ = exp.init_params()
    pt = exp.pretrain_objective()
    params, info = minimum("pretrain", pt, torch.cat([w, u]), config)
    acc = {"train": pt.accuracy(params, exp.data.pretrain), "test": pt.accuracy(params, exp.data.pretrain_test)}
    log.info("pretrain: accuracy train %.3f, test %.3f", acc["train"], acc["test"])
    io.save_tensors(out, {"params": params}, args=train_args(config), training=info, p_w=exp.model.w_spec.numel,
                    accuracy=acc, problems=info["problems"])


def scratch(config: dict, data_path: str, out: str) -> None:
    """The finetuning task learned without pretraining, the yardstick of a transferred model's accuracy: the same
    architecture (W, Θ) from the seeded initialisation minimises ``1/m Σ_j l(x_j; Θ, W) + λ_ft/2 ‖Θ‖² + λ_pt/2 ‖W‖²``
    on the finetuning data. Writes ``{"accuracy": {"train", "test"}, "training": ...}`` (NaN accuracy where training
    fails: it is a reference, not a result)."""
    exp = experiment(config, data_path)
    acc, info = scratch_accuracy(config, exp)
    io.write_json(out, {"accuracy": acc, "training": info})


def scratch_accuracy(config: dict, exp) -> tuple[dict, dict]:
    """:func:`scratch`'s training: its accuracy ``{"train", "test"}`` and the training summary."""
    w, _, theta = exp.init_params()
    objective = FinetuneObjective(exp.model, exp.data.finetune, config["finetune"]["l2"], torch.zeros_like(w), "updated",
                                  config["pretrain"]["l2"])
    try:
        params, info = minimum("scratch", objective, torch.cat([theta, w]), config)
    except TrainingError as err:
        log.warning("from-scratch reference not trained: %s", err)
        return {"train": float("nan"), "test": float("nan")}, {"error": str(err)}
    acc = {"train": objective.accuracy(params, exp.data.finetune), "test": objective.accuracy(params, exp.data.finetune_test)}
    log.info("from scratch on the finetuning data: accuracy train %.3f, test %.3f", acc["train"], acc["test"])
    return acc, info


def finetune(config: dict, scenario: str, data_path: str, pretrain_path: str, out: str) -> None:
    """Finetune Θ (fixed) or (Θ, W) (updated) from the pretrained W and a seeded head."""
    exp = experiment(config, data_path)
    pt_params = io.load_tensors(pretrain_path, train_args(config))["params"].to(exp.device)
    ft = exp.finetune_objective(scenario, pt_params[: exp.model.w_spec.numel])
    _, _, theta0 = exp.init_params()
    params, info = minimum(f"finetune[{scenario}]", ft, ft.initial(theta0), config)
    acc = {"train": ft.accuracy(params, exp.data.finetune), "test": ft.accuracy(params, exp.data.finetune_test)}
    log.info("finetune[%s]: accuracy train %.3f, test %.3f", scenario, acc["train"], acc["test"])
    io.save_tensors(out, {"params": params}, args=finetune_args(config, scenario), training=info, accuracy=acc,
                    problems=health.upstream(pretrain_path) + info["problems"])

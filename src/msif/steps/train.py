"""Steps of ``workflow/rules/train.smk``: rule X runs ``workflow/scripts/X.py``, which calls ``X`` here."""

from __future__ import annotations

import logging

import torch

from msif import io
from msif.experiments.registry import load_data
from msif.steps.common import data_args, experiment, finetune_args, minimum, train_args
from msif.task.data import DataError
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

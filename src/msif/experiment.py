"""From a validated config (``config/*.yaml``) to data, model and objectives.

The workflow's scripts and the tests build everything through this module, so one config means
one experiment wherever it runs. Config sections are plain dicts (validated by the workflow's JSON
schema before any job starts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msif.data import TwoStageData, load_digits_two_stage
from msif.models import TwoStageModel, mlp_model
from msif.objectives import FinetuneObjective, PretrainObjective

DTYPES = {"float64": torch.float64, "float32": torch.float32}
EXPERIMENTS = ("digits",)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when one is visible (``CUDA_VISIBLE_DEVICES``), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


def load_data(config: dict) -> TwoStageData:
    d = config["data"]
    if d["name"] not in EXPERIMENTS:
        raise ValueError(f"data.name={d['name']!r}: allowed {list(EXPERIMENTS)}")
    return load_digits_two_stage(d["pretrain_classes"], d["finetune_classes"], d["n_pretrain"], d["n_finetune"], config["seed"])


def build_model(config: dict, data: TwoStageData) -> TwoStageModel:
    m = config["model"]
    return mlp_model(data.pretrain.x.shape[1], m["hidden"], len(config["data"]["pretrain_classes"]),
                     len(config["data"]["finetune_classes"]), m["activation"])


@dataclass
class Experiment:
    """Everything a job needs: data on the device, the model, the objectives' hyper-parameters."""

    config: dict
    data: TwoStageData
    model: TwoStageModel
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def from_config(cls, config: dict, data: TwoStageData | None = None) -> Experiment:
        dtype, device = DTYPES[config["dtype"]], resolve_device(config["device"])
        data = data if data is not None else load_data(config)
        return cls(config, data.to(dtype, device), build_model(config, data), dtype, device)

    @property
    def test(self):
        """The scored finetuning test examples: the first ``influence.n_test`` of the test split."""
        n = self.config["influence"]["n_test"]
        return self.data.finetune_test.subset(torch.arange(n, device=self.device))

    def pretrain_objective(self, weights: torch.Tensor | None = None) -> PretrainObjective:
        return PretrainObjective(self.model, self.data.pretrain, self.config["pretrain"]["l2"], weights)

    def finetune_objective(self, scenario: str, w_pt: torch.Tensor) -> FinetuneObjective:
        f = self.config["finetune"]
        return FinetuneObjective(self.model, self.data.finetune, f["l2"], w_pt, scenario, f["alpha"])

    def init_params(self):
        return self.model.init_params(self.config["seed"], self.dtype, self.device)

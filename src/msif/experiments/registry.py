"""From a validated config to data, model and objectives, through the registry of experiments.

An *experiment plug-in* says how to load the two stages' data and how to build the two-stage
model. Built-in ones are registered by name (``experiment: digits``); a user's own is named by
``experiment: "package.module:function"``, where ``function()`` returns a :class:`Plugin`. The
DAG is the same for all. The workflow's steps and the tests build everything through
:meth:`Experiment.from_config`, so one config means one experiment wherever it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from msif.experiments import digits, fashion_mnist, image_classes, text
from msif.experiments.plugin import Plugin, PluginError
from msif.task.data import DataError, TwoStageData, check_two_stage
from msif.task.models import TwoStageModel
from msif.task.objectives import FinetuneObjective, PretrainObjective, parse_scenario

DTYPES = {"float64": torch.float64, "float32": torch.float32}


BUILTIN: dict[str, Plugin] = {p.name: p for p in (digits.PLUGIN, text.PLUGIN, fashion_mnist.PLUGIN, *image_classes.PLUGINS)}


def get_plugin(name: str) -> Plugin:
    """A registered experiment by name, or ``module:function`` returning a :class:`Plugin`."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise PluginError(f"experiment={name!r}: allowed {sorted(BUILTIN)} or 'package.module:function'")
    module_name, func_name = name.split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise PluginError(f"experiment={name!r}: cannot import {func_name!r} from {module_name!r} ({err})") from err
    try:
        plugin = func()
    except Exception as err:
        raise PluginError(f"experiment plug-in {name}() raised {type(err).__name__}: {err}") from err
    if not isinstance(plugin, Plugin):
        raise PluginError(f"experiment plug-in {name}() returned {type(plugin).__name__}; expected msif.Plugin(name, load_data, build_model)")
    return plugin


def check_sizes(config: dict) -> None:
    """The experiment's own size checks (a built-in's, from its class counts; no data loaded); plug-ins have none."""
    plugin = BUILTIN.get(config["experiment"])
    if plugin is not None and plugin.check_sizes is not None:
        plugin.check_sizes(config)


def load_data(config: dict) -> TwoStageData:
    """Load the two stages' data through the configured plug-in, checking what it returned."""
    plugin = get_plugin(config["experiment"])
    try:
        data = plugin.load_data(config)
    except DataError:
        raise
    except Exception as err:
        raise PluginError(f"{plugin.name}.load_data(config) raised {type(err).__name__}: {err}") from err
    if not isinstance(data, TwoStageData):
        raise PluginError(f"{plugin.name}.load_data(config) returned {type(data).__name__}; expected msif.TwoStageData")
    for split in data.SPLITS:
        s = getattr(data, split)
        if not (len(s.x) == len(s.y) == len(s.ids)) or s.y.ndim != 1:
            raise PluginError(f"{plugin.name}.load_data: split {split!r} has x {tuple(s.x.shape)}, y {tuple(s.y.shape)}, "
                              f"ids {tuple(s.ids.shape)}; expected x (N, ...), y (N,), ids (N,)")
    check_two_stage(plugin.name, data)
    return data


def build_model(config: dict, data: TwoStageData) -> TwoStageModel:
    """Build the model through the plug-in and check it maps a batch to (N, C) logits for both heads (the pretraining
    head: to the shape of ``model.pt_target`` when that is not a label, e.g. the inputs of a reconstruction)."""
    plugin = get_plugin(config["experiment"])
    try:
        model = plugin.build_model(config, data)
    except Exception as err:
        raise PluginError(f"{plugin.name}.build_model(config, data) raised {type(err).__name__}: {err}") from err
    if not isinstance(model, TwoStageModel):
        raise PluginError(f"{plugin.name}.build_model returned {type(model).__name__}; expected msif.TwoStageModel")
    x = data.pretrain.x[:2].to(torch.float32)
    model_f = (model.body.float(), model.pt_head.float(), model.ft_head.float())
    try:
        h = model_f[0](x)
        shapes = (tuple(model_f[1](h).shape), tuple(model_f[2](h).shape))
    except Exception as err:
        raise PluginError(f"{plugin.name}.build_model: the model fails on a batch of inputs {tuple(x.shape)}: {err}") from err
    try:
        target = model.pt_target(data.pretrain.x[:2], data.pretrain.y[:2])
    except Exception as err:
        raise PluginError(f"{plugin.name}.build_model: the model's pt_target fails on a batch of inputs {tuple(x.shape)}: {err}") from err
    want_pt = (2, int(data.pretrain.y.max()) + 1) if target.ndim == 1 else tuple(target.shape)  # labels, or a reconstruction
    want = (want_pt, (2, int(data.finetune.y.max()) + 1))
    if shapes != want:
        raise PluginError(f"{plugin.name}.build_model: heads return logits of shapes {shapes} on 2 inputs; expected {want} "
                          "(pretraining classes or the pretraining target's shape, finetuning classes)")
    return model


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when one is visible (``CUDA_VISIBLE_DEVICES``), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


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
        if n > len(self.data.finetune_test):
            raise ValueError(f"influence.n_test={n} exceeds the finetuning test split ({len(self.data.finetune_test)} examples)")
        return self.data.finetune_test.subset(torch.arange(n, device=self.device))

    def pretrain_objective(self, weights: torch.Tensor | None = None) -> PretrainObjective:
        return PretrainObjective(self.model, self.data.pretrain, self.config["pretrain"]["l2"], weights)

    def finetune_objective(self, scenario: str, w_pt: torch.Tensor) -> FinetuneObjective:
        """The finetuning objective of a scenario name: fixed, updated (α = finetune.alpha) or updated@α."""
        f = self.config["finetune"]
        kind, alpha = parse_scenario(scenario, f["alpha"])
        return FinetuneObjective(self.model, self.data.finetune, f["l2"], w_pt, kind, alpha)

    def init_params(self):
        return self.model.init_params(self.config["seed"], self.dtype, self.device)

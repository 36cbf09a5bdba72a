"""From a validated config to data, model and objectives — through a registry of experiments.

An *experiment plug-in* says how to load the two stages' data and how to build the two-stage
model. Built-in ones are registered by name (``experiment: digits``); a user's own is named by
``experiment: "package.module:function"``, where ``function()`` returns a :class:`Plugin`. The
DAG is the same for all. The workflow's steps and the tests build everything through
:meth:`Experiment.from_config`, so one config means one experiment wherever it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from msif import image_classes
from msif.config import BUILTIN_EXPERIMENTS
from msif.data import DataError, TwoStageData, check_two_stage, load_digits_two_stage
from msif.models import TwoStageModel, mlp_model
from msif.objectives import FinetuneObjective, PretrainObjective, parse_scenario

DTYPES = {"float64": torch.float64, "float32": torch.float32}


class PluginError(ValueError):
    """A plug-in could not be found, raised, or returned something of the wrong kind or shape."""


@dataclass(frozen=True)
class Plugin:
    """How an experiment loads its data and builds its model, each from the whole config.

    ``load_data(config) -> TwoStageData`` (inputs of any shape; labels 0..C-1 per stage);
    ``build_model(config, data) -> TwoStageModel`` (body W, pretraining head U, finetuning head Θ).
    """

    name: str
    load_data: Callable[[dict], TwoStageData]
    build_model: Callable[[dict, TwoStageData], TwoStageModel]


def _digits_data(config: dict) -> TwoStageData:
    d = config["data"]
    return load_digits_two_stage(d["pretrain_classes"], d["finetune_classes"], d["n_pretrain"], d["n_finetune"], config["seed"])


def _mlp(config: dict, data: TwoStageData) -> TwoStageModel:
    m = config["model"]
    n_pt, n_ft = int(data.pretrain.y.max()) + 1, int(data.finetune.y.max()) + 1
    return mlp_model(data.pretrain.x[0].numel(), m["hidden"], n_pt, n_ft, m["activation"])


def _text() -> Plugin:
    from msif import text  # reads its data files only when a text experiment runs

    return Plugin("text", text.plugin_data, text.plugin_model)


def _fashion_mnist() -> Plugin:
    from msif import images  # reads its data files only when the experiment runs

    return Plugin("fashion_mnist", images.plugin_data, images.plugin_model)


REGISTRY: dict[str, Plugin] = {"digits": Plugin("digits", _digits_data, _mlp), "text": _text(), "fashion_mnist": _fashion_mnist()}
# Both stages on one image data set, disjoint classes, the digits MLP body (msif.image_classes).
REGISTRY |= {name: Plugin(name, lambda config, name=name: getattr(image_classes, name)(config), _mlp)
             for name in ("fashion_classes", "mnist_classes")}
assert set(REGISTRY) == set(BUILTIN_EXPERIMENTS), "msif.config.BUILTIN_EXPERIMENTS must name every built-in plug-in"


def get_plugin(name: str) -> Plugin:
    """A registered experiment by name, or ``module:function`` returning a :class:`Plugin`."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" not in name:
        raise PluginError(f"experiment={name!r}: allowed {sorted(REGISTRY)} or 'package.module:function'")
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
    """Build the model through the plug-in and check it maps a batch to (N, C) logits for both heads."""
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
    want = ((2, int(data.pretrain.y.max()) + 1), (2, int(data.finetune.y.max()) + 1))
    if shapes != want:
        raise PluginError(f"{plugin.name}.build_model: heads return logits of shapes {shapes} on 2 inputs; expected {want} "
                          "(pretraining classes, finetuning classes)")
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

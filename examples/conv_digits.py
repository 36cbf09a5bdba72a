"""An example experiment plug-in: a small convolutional body on 8×8 digits (not shipped by msif).

Use it through the same DAG as the built-in experiments::

    PYTHONPATH=examples snakemake --cores 2 --configfile examples/config.yaml

``experiment: "conv_digits:plugin"`` in the config names this module and function; ``plugin:``
holds the free-form arguments that ``load_data`` and ``build_model`` read.
"""

from __future__ import annotations

from torch import nn

from msif import Plugin, TwoStageData, TwoStageModel
from msif.experiments.digits import load_digits_two_stage
from msif.task.data import Split


def load_data(config: dict) -> TwoStageData:
    """Pretrain on some digits, finetune on others; inputs as 1×8×8 images."""
    args = config["plugin"]
    data = load_digits_two_stage(args["pretrain_classes"], args["finetune_classes"], args["n_pretrain"], args["n_finetune"], config["seed"])
    as_images = lambda s: Split(s.x.reshape(-1, 1, 8, 8), s.y, s.ids)  # noqa: E731
    return TwoStageData(*(as_images(getattr(data, name)) for name in TwoStageData.SPLITS))


def build_model(config: dict, data: TwoStageData) -> TwoStageModel:
    """Conv(1→c, 3×3) → softplus → flatten → Linear(→width) → softplus; linear heads for both stages."""
    c, width = config["plugin"]["channels"], config["plugin"]["width"]
    body = nn.Sequential(nn.Conv2d(1, c, 3), nn.Softplus(), nn.Flatten(), nn.Linear(c * 6 * 6, width), nn.Softplus())
    n_pt, n_ft = int(data.pretrain.y.max()) + 1, int(data.finetune.y.max()) + 1
    return TwoStageModel(body, nn.Linear(width, n_pt), nn.Linear(width, n_ft))


def plugin() -> Plugin:
    return Plugin("conv_digits", load_data, build_model)
